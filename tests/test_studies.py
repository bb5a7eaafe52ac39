"""Smoke tests of the studies at a tiny size: files written, numbers finite and consistent."""

import csv
import json

import jax
import numpy as np
import pytest

import jaxmm as mm
from experiments import heatmap, optimal_quotes, stress


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
    assert len(rows) == 6 * 4 and (out / "stress.png").stat().st_size > 0
    assert all(np.isfinite(float(r["mean_pnl"])) for r in rows)
    baseline = next(r for r in payload["table"] if r["scenario"] == "baseline")
    direct = mm.metrics.summarize(
        mm.simulate(
            mm.presets.homework(), mm.policies.avellaneda_stoikov(0.1, 1.5), jax.random.key(0), 30
        )
    )
    assert baseline["mean_pnl"] == pytest.approx(direct["mean_pnl"], rel=1e-6)


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
