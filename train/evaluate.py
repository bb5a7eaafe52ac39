"""Evaluation of a trained agent beside the naive, Avellaneda-Stoikov and optimal strategies.

``python -m train.evaluate runs/<name>`` reloads a run and evaluates it again
(``evaluation.json`` in the run folder). Every strategy is simulated with ``mm.simulate`` on the
same key, so all of them see the same mid paths and fill uniforms (common random numbers).

Per strategy: ``mean_reward`` (the environment's episode reward, e.g. ``pnl - phi sum q'^2``)
and ``stderr_reward``, ``mean_pnl``, ``std_pnl``, ``sharpe`` (per episode: mean / std of
terminal PnL across episodes), ``max_drawdown`` (mean over episodes), ``mean_abs_q``
(terminal), ``pct_profitable``; for rules that depend on (t, q) only (naive, A-S, the optimum)
also ``exact_reward`` from ``mm.optimal.evaluate``. The optimality gap
``1 - reward / optimal_reward`` uses the exact optimum ``V = bellman(...).value_at(0, 0)`` and
the paired differences ``D_i = r_i - r_i^opt`` with the optimal table's rollout on the same
episode: ``gap = -mean(D) / V`` with standard error ``std(D) / (sqrt(n) |V|)``, far smaller than
the standard error of either mean.

On a Hawkes market (``arrival_model="hawkes"``) there is no exact optimum (the value depends on
the excitation, which no (t, q) solver models) and no exact evaluation. The reference is then
the **Poisson-optimal table**: ``bellman`` on the Poisson market whose intensity on each side is
the Hawkes stationary mean (``jaxmm.params.hawkes_poisson_reference``), the best known table,
not the optimum. It is simulated on the Hawkes market beside the others (key
``"poisson_optimal_table"``); the result has ``optimal_reward = None``, ``reference_reward`` (the
table's simulated mean reward on the Hawkes market, with its standard error) and, per strategy,
``gap_to_reference = -mean(D) / reference_reward`` from the same paired differences (a
negative gap: better than the table). No ``exact_reward`` is reported.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import jaxmm as mm
from jaxmm import devices as device_lib
from jaxmm import market, optimal, rewards
from jaxmm.env import EnvParams
from jaxmm.params import hawkes_poisson_reference
from jaxmm.results import write_json
from train import checkpoint
from train.config import PPOConfig, market_env
from train.networks import Agent

__all__ = [
    "COLUMNS",
    "benchmark_policies",
    "compare",
    "episode_reward",
    "evaluate_run",
    "format_comparison",
    "is_hawkes",
    "make_progress_evaluator",
    "needs_paths",
    "optimal_solution",
    "plot_training_curve",
    "strategy_stats",
]


def needs_paths(env_params: EnvParams) -> bool:
    """Whether ``episode_reward`` needs the per-step paths (``jaxmm.rewards.needs_paths``)."""
    return rewards.needs_paths(env_params.market, env_params.reward)


def episode_reward(rollout: mm.Rollout, env_params: EnvParams) -> jax.Array:
    """The environment's undiscounted episode reward of every episode, ``f[n]``, price units
    (``jaxmm.rewards.episode_reward``; simulate with ``paths=needs_paths(env_params)``)."""
    return rewards.episode_reward(rollout, env_params.phi, env_params.reward, env_params.market)


REFERENCE_TABLE = "poisson_optimal_table"  # the reference strategy's key on a Hawkes market


def is_hawkes(env_params: EnvParams) -> bool:
    """Whether the environment's market has Hawkes flow (no exact optimum: see the module)."""
    return env_params.market.arrival_model == "hawkes"


def optimal_solution(env_params: EnvParams) -> optimal.QuoteTable:
    """``mm.optimal.bellman`` for the environment's market, reward and action bounds; on a
    Hawkes market the Poisson-optimal table (``bellman`` on ``hawkes_poisson_reference``: the
    Poisson market with the stationary mean intensity), the best known table, not an optimum."""
    if is_hawkes(env_params):
        reference = hawkes_poisson_reference(env_params.market)
        return optimal.bellman(reference, env_params.phi, reward=env_params.reward)
    return optimal.bellman(env_params.market, env_params.phi, reward=env_params.reward)


def strategy_stats(rollout: mm.Rollout, rewards: np.ndarray) -> dict[str, float]:
    """The per-strategy entry of ``metrics.json`` (with standard errors as ``*_se``)."""
    summary = mm.metrics.summarize(rollout)
    rewards = np.asarray(rewards, np.float64)
    stats = {
        "mean_reward": float(rewards.mean()),
        "stderr_reward": float(rewards.std(ddof=1) / math.sqrt(rewards.size)),
    }
    for name in ("mean_pnl", "std_pnl", "sharpe", "max_drawdown", "mean_abs_q", "pct_profitable"):
        stats[name] = summary[name]
        stats[f"{name}_se"] = summary[f"{name}_se"]
    stats["n_episodes"] = int(rewards.size)
    return stats


def compare(
    env_params: EnvParams,
    policies: dict[str, Any],
    key: jax.Array,
    n_episodes: int,
    solution: optimal.QuoteTable,
    devices: list[jax.Device] | None = None,
) -> dict[str, Any]:
    """Simulate every policy on ``key`` (common random numbers) and compare with the optimum.

    Args:
        env_params: the environment (market, phi, reward) the rewards are computed for.
        policies: name -> jaxmm policy; the optimal table's policy is added as ``"optimal"``.
        key: the evaluation key. n_episodes: episodes per strategy (>= 2).
        solution: ``optimal_solution(env_params)``.
        devices: split the episodes over these devices (``mm.simulate``'s ``devices``).

    Returns:
        ``{"eval": {name: stats}, "optimal_reward": V}``; each stats dict has
        ``optimality_gap`` and ``optimality_gap_stderr`` from paired differences.
    """
    if n_episodes < 2:
        raise ValueError(f"n_episodes = {n_episodes}; allowed: an integer >= 2")
    if is_hawkes(env_params):
        return _compare_with_reference(env_params, policies, key, n_episodes, solution, devices)
    market_params = env_params.market
    policies = {**policies, "optimal": mm.policies.table(solution)}
    optimal_reward = solution.value_at(0, 0)
    episode_rewards = {}
    results: dict[str, dict[str, Any]] = {}
    for name, policy in policies.items():
        rollout = mm.simulate(
            market_params, policy, key, n_episodes, paths=needs_paths(env_params), devices=devices
        )
        episode_rewards[name] = np.asarray(episode_reward(rollout, env_params), np.float64)
        results[name] = strategy_stats(rollout, episode_rewards[name])
    for name, stats in results.items():
        difference = episode_rewards[name] - episode_rewards["optimal"]
        stats["optimality_gap"] = float(-difference.mean() / optimal_reward)
        stats["optimality_gap_stderr"] = float(
            difference.std(ddof=1) / (math.sqrt(n_episodes) * abs(optimal_reward))
        )
    for name in ("naive", "avellaneda_stoikov", "optimal"):
        if name in results:
            exact = optimal.evaluate(
                market_params, policies[name], env_params.phi, reward=env_params.reward
            )
            results[name]["exact_reward"] = exact.value_at(0, 0)
    return {"eval": results, "optimal_reward": optimal_reward}


def _compare_with_reference(
    env_params: EnvParams,
    policies: dict[str, Any],
    key: jax.Array,
    n_episodes: int,
    solution: optimal.QuoteTable,
    devices: list[jax.Device] | None,
) -> dict[str, Any]:
    """``compare`` on a Hawkes market: the Poisson-optimal table ``solution`` is simulated as
    ``REFERENCE_TABLE`` and every strategy's ``gap_to_reference`` is measured against its
    simulated mean reward (paired differences); no exact values (see the module docstring)."""
    policies = {**policies, REFERENCE_TABLE: mm.policies.table(solution)}
    episode_rewards = {}
    results: dict[str, dict[str, Any]] = {}
    for name, policy in policies.items():
        rollout = mm.simulate(
            env_params.market,
            policy,
            key,
            n_episodes,
            paths=needs_paths(env_params),
            devices=devices,
        )
        episode_rewards[name] = np.asarray(episode_reward(rollout, env_params), np.float64)
        results[name] = strategy_stats(rollout, episode_rewards[name])
    reference = results[REFERENCE_TABLE]
    reference_reward = reference["mean_reward"]
    for name, stats in results.items():
        difference = episode_rewards[name] - episode_rewards[REFERENCE_TABLE]
        stats["gap_to_reference"] = float(-difference.mean() / reference_reward)
        stats["gap_to_reference_stderr"] = float(
            difference.std(ddof=1) / (math.sqrt(n_episodes) * abs(reference_reward))
        )
    return {
        "eval": results,
        "optimal_reward": None,
        "reference": REFERENCE_TABLE,
        "reference_reward": reference_reward,
        "reference_reward_stderr": reference["stderr_reward"],
        "reference_poisson_value": solution.value_at(0, 0),
        "reference_note": "the Poisson-optimal table: optimal.bellman on the Poisson market "
        "with the Hawkes stationary mean intensity per side (best known table, not the "
        "optimum; there is no exact optimum under clustering); reference_reward is its "
        "simulated mean on the Hawkes market, reference_poisson_value its exact value on the "
        "Poisson market it was solved for",
    }


def benchmark_policies(config: PPOConfig) -> dict[str, Any]:
    """The naive and Avellaneda-Stoikov benchmarks of ``config``."""
    return {
        "naive": mm.policies.symmetric(half_spread=config.naive_half_spread),
        "avellaneda_stoikov": mm.policies.avellaneda_stoikov(gamma=config.as_gamma),
    }


def evaluate_run(
    run_dir: Path,
    n_episodes: int | None = None,
    eval_seed: int | None = None,
    seed_index: int | None = None,
    devices: list[jax.Device] | None = None,
) -> dict[str, Any]:
    """Reload ``run_dir`` and compare its agent with the benchmarks and the optimum.

    Defaults come from the run's config (``eval_episodes``, ``eval_seed``, the selected seed);
    ``devices`` split the evaluation episodes (``mm.simulate``).
    Returns ``{"eval", "optimal_reward", "optimality_gap", "optimality_gap_stderr",
    "evaluation"}`` where the gap is PPO's and ``evaluation`` records the settings.
    """
    config = checkpoint.load_config(run_dir)
    n_episodes = config.eval_episodes if n_episodes is None else n_episodes
    eval_seed = config.eval_seed if eval_seed is None else eval_seed
    _, env_params = market_env(config)
    policy = checkpoint.load_policy(run_dir, seed_index)
    policies = {"ppo": policy, **benchmark_policies(config)}
    result = compare(
        env_params,
        policies,
        jax.random.key(eval_seed),
        n_episodes,
        optimal_solution(env_params),
        devices,
    )
    ppo = result["eval"]["ppo"]
    if is_hawkes(env_params):
        return {
            **result,
            "optimality_gap": None,
            "gap_to_reference": ppo["gap_to_reference"],
            "gap_to_reference_stderr": ppo["gap_to_reference_stderr"],
            "evaluation": {
                "n_episodes": n_episodes,
                "eval_seed": eval_seed,
                "seed_index": seed_index,
                "noise": "common random numbers: every strategy sees the same paths and "
                "the same market-order flow",
                "naive": {"half_spread": config.naive_half_spread},
                "avellaneda_stoikov": {"gamma": config.as_gamma, "k": "the market's"},
                REFERENCE_TABLE: result["reference_note"],
                "devices": device_lib.describe(devices),
            },
        }
    return {
        **result,
        "optimality_gap": ppo["optimality_gap"],
        "optimality_gap_stderr": ppo["optimality_gap_stderr"],
        "evaluation": {
            "n_episodes": n_episodes,
            "eval_seed": eval_seed,
            "seed_index": seed_index,
            "noise": "common random numbers: every strategy sees the same paths",
            "naive": {"half_spread": config.naive_half_spread},
            "avellaneda_stoikov": {"gamma": config.as_gamma, "k": "the market's"},
            "optimal": "mm.optimal.bellman with the environment's action bounds",
            "devices": device_lib.describe(devices),
        },
    }


def make_progress_evaluator(config: PPOConfig, trainer: Any, env: Any, env_params: EnvParams):
    """``evaluate(states) -> f64[num_seeds]``: the mean episode reward of every seed's
    deterministic policy over ``config.progress_episodes`` episodes on ``key(eval_seed + 1)``.

    ``states`` is a ``TrainState`` stacked over seeds; all seeds run in one compiled program.
    """
    market_params = env_params.market
    stream = market.stream_key(jax.random.key(config.eval_seed + 1))
    episodes = jnp.arange(config.progress_episodes, dtype=jnp.uint32)

    def mean_reward(agent: Agent) -> jax.Array:
        policy = env.as_policy(agent, env_params)
        rollout = mm.rollout(market_params, policy, stream, episodes, paths=needs_paths(env_params))
        return jnp.mean(episode_reward(rollout, env_params))

    run = jax.jit(jax.vmap(mean_reward))

    def evaluate(states: Any) -> np.ndarray:
        return np.asarray(run(trainer.agent(states)), np.float64)

    return evaluate


COLUMNS = (
    ("mean_reward", "reward"),
    ("stderr_reward", "± se"),
    ("optimality_gap", "gap"),
    ("optimality_gap_stderr", "± se"),
    ("mean_pnl", "mean PnL"),
    ("std_pnl", "std PnL"),
    ("sharpe", "Sharpe/ep"),
    ("max_drawdown", "max DD"),
    ("mean_abs_q", "mean|q_T|"),
    ("pct_profitable", "% prof."),
)


def format_comparison(result: dict[str, Any]) -> str:
    """A text table of ``result["eval"]`` (one row per strategy) and the optimum (on a Hawkes
    market: the gaps to the Poisson-optimal table, labelled as such)."""
    if result.get("reference") == REFERENCE_TABLE:
        return _format_reference_comparison(result)
    header = f"{'strategy':<20}" + "".join(f"{label:>11}" for _, label in COLUMNS)
    lines = [header, "-" * len(header)]
    for name, stats in result["eval"].items():
        cells = "".join(f"{stats[key]:>11.4g}" for key, _ in COLUMNS)
        lines.append(f"{name:<20}{cells}")
    lines.append(
        f"exact optimal expected reward {result['optimal_reward']:.4f}; PPO optimality gap "
        f"{100 * result['optimality_gap']:.2f}% ± {100 * result['optimality_gap_stderr']:.2f}%"
    )
    lines.append("Sharpe is per episode: mean / std of terminal PnL across episodes.")
    return "\n".join(lines)


def _format_reference_comparison(result: dict[str, Any]) -> str:
    columns = [
        ("gap_to_reference", "gap*") if key == "optimality_gap" else
        ("gap_to_reference_stderr", "± se") if key == "optimality_gap_stderr" else (key, label)
        for key, label in COLUMNS
    ]  # fmt: skip
    header = f"{'strategy':<22}" + "".join(f"{label:>11}" for _, label in columns)
    lines = [header, "-" * len(header)]
    for name, stats in result["eval"].items():
        cells = "".join(f"{stats[key]:>11.4g}" for key, _ in columns)
        lines.append(f"{name:<22}{cells}")
    lines.append(
        f"* gap to the Poisson-optimal table (best known table, NOT the optimum: no exact "
        f"optimum under Hawkes clustering), reward {result['reference_reward']:.4f} ± "
        f"{result['reference_reward_stderr']:.4f} simulated on the Hawkes market"
    )
    ppo = result["eval"].get("ppo")
    if ppo is not None:
        lines.append(
            f"PPO gap to that table {100 * ppo['gap_to_reference']:.2f}% ± "
            f"{100 * ppo['gap_to_reference_stderr']:.2f}% (negative: better than the table)"
        )
    lines.append("Sharpe is per episode: mean / std of terminal PnL across episodes.")
    return "\n".join(lines)


def plot_training_curve(path: Path, payload: dict[str, Any]) -> Path:
    """Training episode return (stochastic policy, every seed) and the deterministic progress
    evaluations against environment steps, with the benchmarks' rewards as horizontal lines."""
    config = payload["config"]
    history = np.asarray(payload["training_history"]["episode_return"], np.float64)
    steps = np.arange(1, history.shape[1] + 1) * config["num_envs"] * config["num_steps"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for seed, curve in enumerate(history):
        ax.plot(steps, curve, color="tab:blue", alpha=0.35, lw=1, label=None if seed else "train")
    eval_steps = [entry["env_steps"] for entry in payload["progress_evals"]]
    eval_rewards = np.asarray([entry["mean_reward"] for entry in payload["progress_evals"]])
    ax.plot(eval_steps, eval_rewards.mean(axis=1), "o-", color="tab:green", label="eval (mean)")
    shown = [history[np.isfinite(history)], eval_rewards.ravel()]
    if payload.get("reference") == REFERENCE_TABLE:
        reference = ("Poisson-optimal table (best known)", payload["reference_reward"])
    else:
        reference = ("optimal (exact)", payload["optimal_reward"])
    lines = {
        reference[0]: (reference[1], "black"),
        "avellaneda_stoikov": (payload["eval"]["avellaneda_stoikov"]["mean_reward"], "tab:orange"),
        "naive": (payload["eval"]["naive"]["mean_reward"], "tab:red"),
    }
    for name, (reward, colour) in lines.items():
        ax.axhline(reward, color=colour, ls="--", lw=1.2, label=f"{name} {reward:.2f}")
        shown.append(np.asarray([reward]))
    values = np.concatenate(shown)
    top = values.max()
    # Early training and a poor benchmark can sit far below the rest: show the upper range.
    bottom = max(values.min(), top - 4 * (top - np.quantile(values, 0.25)) - 1e-6)
    ax.set_ylim(bottom - 0.05 * (top - bottom), top + 0.05 * (top - bottom) + 1e-6)
    ax.set(
        xlabel="environment steps per seed",
        ylabel="episode reward",
        title=f"PPO, phi={config['phi']}, reward={config['reward']}",
    )
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m train.evaluate",
        description="Reload a PPO run and compare it with naive, A-S and the exact optimum.",
    )
    parser.add_argument("run_dir", type=Path, help="a run folder, e.g. runs/ppo")
    parser.add_argument("--episodes", type=int, help="episodes (default: the run's)")
    parser.add_argument("--eval-seed", type=int, help="evaluation key (default: the run's)")
    parser.add_argument("--seed-index", type=int, help="which seed (default: the selected one)")
    device_lib.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.episodes is not None and args.episodes < 2:
        parser.error(f"--episodes must be >= 2, got {args.episodes}")
    devices = device_lib.from_arguments(parser, args)
    try:
        result = evaluate_run(
            args.run_dir, args.episodes, args.eval_seed, args.seed_index, devices=devices
        )
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    print(format_comparison(result))
    path = write_json(args.run_dir / "evaluation.json", result)
    print(f"wrote {path}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
