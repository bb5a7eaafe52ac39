"""``experiments.backtest`` at its ``QUICK`` size: the files exist and the JSON is complete."""

import json
import math

import pytest

from experiments import backtest
from experiments.common import data_dir

DATA = backtest.stock_folder(data_dir(), "amzn")
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"LOBSTER sample not found at {DATA}")


def _finite(value, path="") -> None:
    """Every number in a JSON tree is finite (None allowed)."""
    if isinstance(value, dict):
        for key, item in value.items():
            _finite(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _finite(item, f"{path}[{index}]")
    elif isinstance(value, float):
        assert math.isfinite(value), path


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("backtest")
    payload = backtest.main(**backtest.QUICK, out=out)
    return out, payload


def test_files_exist(study):
    out, _ = study
    names = [
        "results.json",
        "calibration.csv",
        "signature.csv",
        "out_of_sample.csv",
        "sim_vs_replay.csv",
        "fills_AMZN_as.csv",
        "sweep_AMZN.csv",
        "pnl_path.png",
        "markouts.png",
        "inventory_hist.png",
        "sim_pnl.png",
        "sweep_pnl.png",
        "sweep_pnl_per_risk.png",
    ]
    for name in names:
        path = out / name
        assert path.is_file() and path.stat().st_size > 0, name


def test_json_keys_and_finite_numbers(study):
    out, payload = study
    data = json.loads((out / "results.json").read_text())
    for key in ("config", "environment", "seconds", "stocks", "tables", "robust_settings"):
        assert key in data, key
    assert data["config"]["seed"] == 0
    amzn = data["stocks"]["AMZN"]
    calib = amzn["calibration"]
    for key in ("A_per_second", "stderr_A_robust", "k_per_dollar", "stderr_k_robust"):
        assert calib[key] > 0, key
    assert calib["sigma_per_sqrt_second"] > 0 and calib["stderr_sigma"] > 0
    oos = amzn["replay"]["out_of_sample"]
    for name in backtest.STRATEGIES:
        row = oos[name]
        assert row["n_decisions"] > 0
        assert set(row["markout_per_share"]) == {"1s", "10s", "60s", "300s"}
        assert row["pnl"] == pytest.approx(row["spread_pnl"] + row["inventory_pnl"] - row["fees"])
    assert "avellaneda_stoikov_probabilistic_queue" in oos
    assert "avellaneda_stoikov_latency_50ms" in oos
    sim = amzn["replay"]["sim_vs_replay"]
    for name in backtest.STRATEGIES:
        row = sim[name]
        assert 0.0 <= row["percentile_of_realised"] <= 100.0
        assert row["sim_bid_fills"] >= 0 and row["sim_mean_abs_q"] >= 0
        assert isinstance(row["explanation"], str)
    sweep = amzn["sweep"]
    n = backtest.QUICK["grid"] ** 2
    assert sweep["n_settings"] == n and sweep["strategy_events_per_second"] > 0
    for name in ("calibration", "out_of_sample", "sim_vs_replay", "sweep"):
        assert data["tables"][name]["rows"], name
    _finite(data["stocks"])
    _finite(data["robust_settings"])
    assert payload["study"] == "backtest"
