"""Smoke tests of the studies at a tiny size: files written, numbers finite and consistent."""

import csv
import json
import sys

import jax
import numpy as np
import pytest

import jaxmm as mm
from experiments import compare, heatmap, optimal_quotes, regime, regime_conditional, stress


def _rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_heatmap_cells_equal_direct_simulation(tmp_path):
    out = tmp_path / "heatmap"
    heatmap.main(["--n-episodes", "40", "--seed", "3", "--out", str(out)])
    rows = _rows(out / "cells.csv")
    assert len(rows) == 2 * 25 and (out / "sharpe_heatmap.png").stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["seed"] == 3
    cell = next(
        r for r in rows if (float(r["sigma"]), float(r["gamma"]), float(r["kappa"])) == (4, 0.5, 3)
    )
    direct = mm.simulate(
        mm.presets.homework().replace(sigma=4.0),
        mm.policies.avellaneda_stoikov(0.5, 3.0),
        jax.random.key(3),
        40,
    )
    assert float(cell["mean_pnl"]) == pytest.approx(float(np.mean(direct.pnl)), rel=1e-5)
    assert all(np.isfinite(float(r["sharpe"])) for r in rows)


def test_stress_table_and_consistency(tmp_path):
    out = tmp_path / "stress"
    payload = stress.main(["--n-episodes", "30", "--out", str(out)])
    rows = _rows(out / "table.csv")
    assert len(rows) == 6 * 4 + len(stress.extension_scenarios())
    assert (out / "stress.png").stat().st_size > 0 and (out / "extensions.png").stat().st_size > 0
    assert all(np.isfinite(float(r["mean_pnl"])) for r in rows)
    baseline = next(r for r in payload["table"] if r["scenario"] == "baseline")
    direct = mm.metrics.summarize(
        mm.simulate(
            mm.presets.homework(), mm.policies.avellaneda_stoikov(0.1, 1.5), jax.random.key(0), 30
        )
    )
    assert baseline["mean_pnl"] == pytest.approx(direct["mean_pnl"], rel=1e-6)
    latency = next(r for r in payload["table"] if r["scenario"] == "latency=5")
    delayed = mm.simulate(
        stress.extension_scenarios()["latency=5"],
        mm.policies.avellaneda_stoikov(0.1, 1.5),
        jax.random.key(0),
        30,
    )
    assert latency["mean_pnl"] == pytest.approx(float(np.mean(delayed.pnl)), rel=1e-5)


def test_optimal_quotes_study(tmp_path):
    out = tmp_path / "optimal"
    payload = optimal_quotes.main(["--n-episodes", "200", "--q-max", "6", "--out", str(out)])
    for name in (
        "exact_rewards.csv",
        "summary.json",
        "depths_vs_inventory.png",
        "depths_vs_time.png",
        "fd_convergence.png",
        "glft_gap.png",
        "risk.csv",
    ):
        assert (out / name).stat().st_size > 0, name
    rows = payload["exact_rewards"]
    for phi in optimal_quotes.PHIS:
        best = next(r for r in rows if r["phi"] == phi and r["strategy"] == "bellman")
        assert best["fraction"] == pytest.approx(1.0)
        bounded = [r for r in rows if r["phi"] == phi and r["strategy"].startswith("avellaneda")]
        assert all(r["exact_reward"] <= best["exact_reward"] for r in bounded)
    assert all(abs(check["z"]) < 4 for check in payload["bellman_monte_carlo_check"].values())


def test_compare_without_ppo_matches_direct_simulation(tmp_path):
    out = tmp_path / "compare"
    payload = compare.main(["--no-ppo", "--n-episodes", "40", "--seed", "5", "--out", str(out)])
    for name in ("table.csv", "summary.json", "equity_curves.png", "pnl_boxplot.png"):
        assert (out / name).stat().st_size > 0, name
    cell = payload["config"]["as_cell"]
    direct = mm.simulate(
        mm.presets.homework(),
        mm.policies.avellaneda_stoikov(cell["gamma"], cell["kappa"]),
        jax.random.key(5),
        40,
    )
    as_row = next(r for r in payload["table"] if r["strategy"] == "avellaneda_stoikov")
    assert as_row["mean_pnl"] == pytest.approx(float(np.mean(direct.pnl)), rel=1e-6)
    optimal_row = next(r for r in payload["table"] if r["strategy"] == "optimal")
    assert optimal_row["optimality_gap"] == pytest.approx(0.0, abs=1e-12)


def test_regime_studies_without_ppo(tmp_path):
    payload = regime.main(["--no-ppo", "--n-episodes", "30", "--out", str(tmp_path / "r")])
    rows = {r["strategy"]: r for r in payload["table"]}
    assert set(rows) == {"naive", "avellaneda_stoikov", "bellman_penalty", "bellman_variance"}
    assert all(np.isfinite(r["second_half_sharpe"]) for r in rows.values())
    # the variance-aware optimum widens its spread after the switch; A-S cannot know about it
    variance = rows["bellman_variance"]
    assert variance["mean_spread_after"] > variance["mean_spread_before"]
    conditional = regime_conditional.main(
        ["--no-ppo", "--n-episodes", "80", "--out", str(tmp_path / "rc")]
    )
    sizes = conditional["regime_sizes"]
    assert sizes["all"] == 80 and 15 <= sizes["low_vol"] <= 25 and 15 <= sizes["high_vol"] <= 25
    assert (tmp_path / "rc" / "sharpe_by_regime.png").stat().st_size > 0


def test_training_child_echoes_its_output_and_reports_failures(capsys):
    from experiments import agents

    agents.run_child([sys.executable, "-c", "print('start', flush=True)"])
    assert "start" in capsys.readouterr().err  # the child's output is echoed
    with pytest.raises(RuntimeError, match="exit 3"):
        agents.run_child([sys.executable, "-c", "print('last words'); raise SystemExit(3)"])
    assert "last words" in capsys.readouterr().err
