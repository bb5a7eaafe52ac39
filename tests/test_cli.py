"""Every entry point runs end to end at a tiny size and writes files a person can open."""

import json
import subprocess

import pytest

from tests.conftest import run_module


def run(module: str, *args: str) -> subprocess.CompletedProcess:
    return run_module(module, *args, timeout=600)


def test_monte_carlo_cli(tmp_path):
    out = run(
        "experiments.monte_carlo", "--n-episodes", "300", "--seed", "3", "--out", str(tmp_path)
    )
    assert "Sharpe" in out.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["config"]["seed"] == 3 and summary["config"]["n_episodes"] == 300
    assert summary["config"]["market"]["sigma"] == 2.0
    stats = summary["summary"]["avellaneda_stoikov"]
    assert stats["n_episodes"] == 300 and stats["mean_pnl"] > 0
    for name in ("pnl_hist", "inventory_hist", "sample_paths", "quote_skew"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    rows = (tmp_path / "episodes.csv").read_text().strip().splitlines()
    assert rows[0].startswith("pnl,inventory") and len(rows) == 301


def test_monte_carlo_cli_is_reproducible(tmp_path):
    run("experiments.monte_carlo", "--n-episodes", "50", "--out", str(tmp_path / "a"))
    run("experiments.monte_carlo", "--n-episodes", "50", "--out", str(tmp_path / "b"))
    a = (tmp_path / "a" / "episodes.csv").read_text()
    assert a == (tmp_path / "b" / "episodes.csv").read_text()


def test_monte_carlo_cli_rejects_bad_input():
    out = run_module("experiments.monte_carlo", "--n-episodes", "0", check=False)
    assert out.returncode == 2 and "--n-episodes must be >= 2" in out.stderr


def test_benchmark_cli(tmp_path):
    run(
        "experiments.benchmark",
        "--sizes", "500", "--repeats", "1", "--loop-episodes", "5", "--out", str(tmp_path),
        "--parts", "simulate", "solvers",
    )  # fmt: skip
    result = json.loads((tmp_path / "benchmark.json").read_text())
    simulate = result["simulate"]
    impls = {row["implementation"] for row in simulate["rows"]}
    assert {"numpy vectorised", "python loop (per episode)", "jaxmm (1 device)"} <= impls
    assert all(r["vs_numpy_vectorised"] > 0 for r in simulate["ratios"])
    solvers = result["solvers"]
    assert solvers["bellman_seconds"] > 0 and solvers["evaluate_seconds"] > 0
    ok = [r for r in solvers["rows"] if r["status"] == "ok"]
    assert ok and all(r["error_h00"] < 0.05 for r in ok)  # explicit Euler vs the exact solution
    text = (tmp_path / "benchmark.md").read_text()
    assert "| jaxmm" in text and "Bellman optimum" in text


@pytest.mark.slow
def test_benchmark_ppo_part_times_the_default_run(tmp_path):
    """The README's main job, timed as a user runs it, with its gap (about a minute)."""
    run("experiments.benchmark", "--parts", "ppo", "--out", str(tmp_path))
    result = json.loads((tmp_path / "benchmark.json").read_text())["ppo"]
    default = result["default_run"]
    assert default["wall_seconds"] > default["wall_seconds_in_process"] > 0
    assert 0 <= default["optimality_gap"] < 0.03 and default["optimality_gap_stderr"] > 0
    assert [r["num_seeds"] for r in result["rows"]] == [1, 8, 64]
    assert "Default run `python -m train.ppo`" in (tmp_path / "benchmark.md").read_text()
