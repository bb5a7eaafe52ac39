"""``python -m experiments.all --quick`` end to end: every study, PPO agents included.

One run in a child process (its PPO trainings run in their own watched children, see
``experiments.agents``), then checks of each study's files against direct computation: the
ablation and rewards rows equal a direct ``simulate`` of the saved agents on the same keys, the
optimum is the Bellman value, and the report lists every study with its run time.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxmm as mm
from experiments import ablation, rewards
from experiments import all as all_studies
from jaxmm import optimal
from train.checkpoint import load_policy

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("all")
    done = subprocess.run(
        [sys.executable, "-m", "experiments.all", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def _summary(results: Path, study: str) -> dict:
    return json.loads((results / study / "summary.json").read_text())


def _finite(rows: list[dict], skip: tuple[str, ...] = ()) -> None:
    for row in rows:
        for name, value in row.items():
            if isinstance(value, float) and name not in skip:
                assert np.isfinite(value), (name, row)


def _no_tapes(results) -> bool:
    stocks = json.loads((results / "backtest" / "results.json").read_text())["stocks"]
    return all("skipped" in stock for stock in stocks.values())


def test_every_study_ran_and_the_report_cites_them(results):
    timings = json.loads((results / "timings.json").read_text())
    assert set(timings) == set(all_studies.MODULES)
    assert all(seconds > 0 for seconds in timings.values())
    report = (results / "REPORT.md").read_text()
    assert "When should a market maker use analytics vs. ML?" in report
    assert "not run" not in report
    for study in all_studies.MODULES:
        assert f"`{study}`" in report
        if study == "backtest" and _no_tapes(results):
            continue  # the LOBSTER data is absent: every stock skipped, with its reason
        pngs = list((results / study).glob("*.png"))
        assert pngs and all(p.stat().st_size > 1000 for p in pngs), study


def test_ablation_rows_equal_direct_simulation_of_the_saved_agents(results):
    payload = _summary(results, "ablation")
    config = payload["config"]
    params = mm.presets.homework()
    optimum = optimal.bellman(params, ablation.PHI).value_at()
    assert payload["optimal_reward"] == pytest.approx(optimum, rel=1e-9)
    assert [r["features"] for r in payload["table"]] == list(ablation.FEATURE_SETS)
    _finite(payload["table"])
    key = jax.random.key(config["seed"])
    best = mm.simulate(params, mm.policies.table(optimal.bellman(params, ablation.PHI)), key,
                       config["n_episodes"]).reward(ablation.PHI)  # fmt: skip
    row = payload["table"][0]
    run = results / "agents" / f"ablation_{row['features']}_{config['ppo_timesteps']}"
    reward = mm.simulate(params, load_policy(run), key, config["n_episodes"]).reward(ablation.PHI)
    reward = np.asarray(reward, np.float64)
    assert row["mean_reward"] == pytest.approx(reward.mean(), rel=1e-6)
    gap = reward - np.asarray(best, np.float64)
    assert row["fraction_of_optimum"] == pytest.approx(1 + gap.mean() / optimum, rel=1e-6)


def test_rewards_rows_equal_direct_simulation_and_the_verdicts_follow(results):
    payload = _summary(results, "rewards")
    config = payload["config"]
    rows = payload["table"]
    assert [r["phi"] for r in rows] == list(rewards.PHIS)
    _finite(rows, skip=("wall_seconds",))
    params = mm.presets.homework()
    key = jax.random.key(config["seed"])
    for row in rows:
        run = results / "agents" / f"ppo_phi{row['phi']:g}"
        rollout = mm.simulate(params, load_policy(run), key, config["n_episodes"])
        reward = np.asarray(rollout.reward(row["phi"]), np.float64)
        assert row["test_reward"] == pytest.approx(reward.mean(), rel=1e-6)
        optimum = optimal.bellman(params, row["phi"]).value_at()
        assert row["test_fraction_of_optimum"] == pytest.approx(reward.mean() / optimum, rel=1e-6)
    conservative = min(rows, key=lambda r: r["mean_abs_q_session"])["phi"]
    assert payload["more_conservative_phi"] == conservative


def test_regime_includes_the_randomised_regime_agent(results):
    payload = _summary(results, "regime")
    names = [r["strategy"] for r in payload["table"]]
    assert {"ppo_penalty", "ppo_variance", "ppo_variance_random"} <= set(names)
    config = json.loads((results / "agents" / "ppo_variance_random" / "config.json").read_text())
    assert config["random_regimes"] and config["reward"] == "variance"
    _finite(payload["table"])
