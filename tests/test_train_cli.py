"""The training entry points end to end at a tiny budget, and the checkpoint round trip."""

import dataclasses
import json
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmm as mm
from tests.conftest import run_module
from train import checkpoint, evaluate
from train.config import PPOConfig, agent_spec, market_env
from train.networks import ObsNorm
from train.ppo import parse_args

ROOT = Path(__file__).resolve().parent.parent
FIELDS = (
    "mean_reward",
    "stderr_reward",
    "mean_pnl",
    "std_pnl",
    "sharpe",
    "max_drawdown",
    "mean_abs_q",
    "pct_profitable",
)


def run(module: str, *args: str) -> subprocess.CompletedProcess:
    return run_module(module, *args, timeout=600)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """Two seeds, four updates each, a 300-episode final comparison."""
    out = tmp_path_factory.mktemp("runs")
    result = run(
        "train.ppo",
        "--total-timesteps", "512", "--num-envs", "16", "--num-steps", "8",
        "--num-seeds", "2", "--num-evals", "2", "--progress-episodes", "20",
        "--eval-episodes", "300", "--seed", "3", "--no-stagger-envs",
        "--name", "smoke", "--out-dir", str(out),
    )  # fmt: skip
    assert "optimality gap" in result.stdout and "steps/s" in result.stderr
    return out / "smoke"


def test_train_cli_writes_config_checkpoint_metrics_and_curve(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config = metrics["config"]
    assert config["seed"] == 3 and config["num_seeds"] == 2 and config["total_timesteps"] == 512
    assert json.loads((run_dir / "config.json").read_text()) == config
    assert (run_dir / "checkpoint.msgpack").stat().st_size > 1_000
    assert (run_dir / "training_curve.png").stat().st_size > 10_000
    assert set(metrics["eval"]) == {"ppo", "naive", "avellaneda_stoikov", "glft", "optimal"}
    for stats in metrics["eval"].values():
        assert all(np.isfinite(stats[name]) for name in FIELDS)
        assert stats["n_episodes"] == 300
    assert metrics["steps_per_second"] > 0 and metrics["wall_seconds"] > 0
    assert metrics["selected_seed"] in (0, 1)
    assert [len(entry["mean_reward"]) for entry in metrics["progress_evals"]] == [2, 2]
    assert np.asarray(metrics["training_history"]["value_loss"]).shape == (2, 4)


def test_train_cli_statistics_agree_with_the_exact_values(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    optimum = metrics["eval"]["optimal"]
    # the Monte Carlo mean of the optimal table agrees with the dynamic programme's value
    assert abs(optimum["mean_reward"] - metrics["optimal_reward"]) < 4 * optimum["stderr_reward"]
    assert optimum["optimality_gap"] == 0.0
    for name in ("naive", "avellaneda_stoikov", "glft"):
        stats = metrics["eval"][name]
        assert abs(stats["mean_reward"] - stats["exact_reward"]) < 4 * stats["stderr_reward"]
    ppo = metrics["eval"]["ppo"]
    assert metrics["optimality_gap"] == ppo["optimality_gap"]
    # paired differences on common random numbers: a smaller error than the plain means'
    assert 0 < ppo["optimality_gap_stderr"] * abs(metrics["optimal_reward"]) < ppo["stderr_reward"]
    assert ppo["optimality_gap"] > -4 * ppo["optimality_gap_stderr"]  # nothing beats the optimum


def test_evaluate_cli_reloads_a_run(run_dir, capsys):
    evaluate.main([str(run_dir), "--episodes", "100", "--eval-seed", "5"])
    assert "avellaneda_stoikov" in capsys.readouterr().out
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    assert evaluation["evaluation"]["n_episodes"] == 100
    assert evaluation["evaluation"]["eval_seed"] == 5
    assert evaluation["eval"]["ppo"]["n_episodes"] == 100


def test_train_cli_rejects_bad_input(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--num-envs", "0"])
    assert exit_info.value.code == 2
    assert "num_envs" in capsys.readouterr().err
    config, _ = parse_args(["--phi", "0.1", "--hidden-sizes", "32", "32", "--no-stagger-envs"])
    assert config == dataclasses.replace(
        PPOConfig(), phi=0.1, hidden_sizes=(32, 32), stagger_envs=False
    )


def test_checkpoint_round_trip_gives_the_same_quotes(tmp_path):
    config = PPOConfig(num_seeds=2, hidden_sizes=(16, 16))
    env, env_params = market_env(config)
    spec = agent_spec(config, env, env_params)
    agents = jax.vmap(spec.init)(jax.random.split(jax.random.key(0), 2))
    # non-trivial observation statistics must be saved too
    obs_norm = ObsNorm(
        mean=jnp.full((2, spec.obs_dim), 0.3),
        var=jnp.full((2, spec.obs_dim), 2.0),
        count=jnp.ones(2),
    )
    agents = agents.replace(obs_norm=obs_norm)
    checkpoint.save(tmp_path, config, agents.params, agents.obs_norm, selected_seed=1)

    # 64 states with varied time, mid, inventory and history
    rng = np.random.default_rng(0)
    n, window = 64, env_params.market.history_window
    states = mm.MarketState(
        t=jnp.asarray(rng.integers(0, 200, n), jnp.int32),
        mid=jnp.asarray(100 + rng.normal(0, 2, n), jnp.float32),
        inventory=jnp.asarray(rng.integers(-5, 6, n), jnp.float32),
        pnl=jnp.asarray(rng.normal(20, 5, n), jnp.float32),
        spread_pnl=jnp.zeros(n),
        inventory_pnl=jnp.zeros(n),
        recent_returns=jnp.asarray(rng.normal(0, 0.14, (n, window)), jnp.float32),
        recent_fills=jnp.asarray(rng.integers(0, 3, (n, window)), jnp.float32),
    )
    quote = jax.jit(jax.vmap(lambda policy, s: policy(s, env_params.market), in_axes=(None, 0)))
    expected = quote(env.as_policy(jax.tree.map(lambda x: x[1], agents), env_params), states)
    loaded = quote(checkpoint.load_policy(tmp_path), states)
    np.testing.assert_array_equal(loaded.bid_depth, expected.bid_depth)
    np.testing.assert_array_equal(loaded.ask_depth, expected.ask_depth)
    first = quote(checkpoint.load_policy(tmp_path, seed_index=0), states)
    assert not np.array_equal(first.bid_depth, expected.bid_depth)


def test_checkpoint_that_does_not_match_its_config_is_rejected(tmp_path):
    config = PPOConfig(hidden_sizes=(16, 16), num_seeds=1)
    env, env_params = market_env(config)
    agent = jax.vmap(agent_spec(config, env, env_params).init)(
        jax.random.split(jax.random.key(0), 1)
    )
    checkpoint.save(tmp_path, config, agent.params, agent.obs_norm, selected_seed=0)
    bigger = dataclasses.replace(config, hidden_sizes=(32, 32))
    (tmp_path / "config.json").write_text(json.dumps(bigger.to_dict()))
    with pytest.raises(ValueError, match="does not match"):
        checkpoint.load_policy(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    with pytest.raises(ValueError, match="seed_index"):
        checkpoint.load_policy(tmp_path, seed_index=1)
