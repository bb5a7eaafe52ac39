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

The execution task (``PPOConfig.task = "execution"``, ``jaxmm.execution``) is evaluated by its
own block (``execution_compare``): PPO, ``twap``, ``closed_form`` (the CJP continuous-time speed
applied at each step) and ``optimal`` (the exact discrete optimum, ``execution.riccati``) on the
same noise; ``exact_reward`` for the three rules of ``(t, q)``; the same statistics, with
``pnl = X_T + q_T (S_T - alpha q_T) - Q0 S0`` and ``mean_abs_q`` the shares left at the end. Its
rewards are costs (``V < 0``), so the gap is ``-mean(D) / |V|`` (positive: worse than optimal).
With the short-term alpha signal (``MarketParams.alpha_model="ou"``) the optimum is
``mm.optimal.bellman_alpha`` on the state (t, q, alpha) (``V = value_at(0, 0, alpha0)``, exact
for the alpha chain on its grid), its table policy (``mm.policies.alpha_table``) is simulated
on the same paths, and the ``exact_reward`` entries come from ``mm.optimal.evaluate_alpha``.
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
from jaxmm import execution, market, optimal, rewards
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
    "exact_reward",
    "execution_compare",
    "execution_stats",
    "format_comparison",
    "is_hawkes",
    "make_progress_evaluator",
    "needs_paths",
    "optimal_solution",
    "plot_training_curve",
    "reference_kind",
    "save_curve_figure",
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
OU_REFERENCE_TABLE = "arithmetic_optimal_table"  # ... and on an Ornstein-Uhlenbeck mid
REFERENCE_NOTES = {
    REFERENCE_TABLE: "the Poisson-optimal table: optimal.bellman on the Poisson market with the "
    "Hawkes stationary mean intensity per side (best known table, not the optimum; there is no "
    "exact optimum under clustering); reference_reward is its simulated mean on the Hawkes "
    "market, reference_solved_value its exact value on the Poisson market it was solved for",
    OU_REFERENCE_TABLE: "the mean-reversion-blind table: optimal.bellman on the arithmetic mid "
    "with the same sigma (best known table, not the optimum; the (t, q) solvers do not model "
    "the mean reversion, whose value depends on S); reference_reward is its simulated mean on "
    "the Ornstein-Uhlenbeck market, reference_solved_value its exact value on the arithmetic "
    "market it was solved for",
}


def is_hawkes(env_params: EnvParams) -> bool:
    """Whether the environment's market has Hawkes flow (no exact optimum: see the module)."""
    return env_params.market.arrival_model == "hawkes"


def reference_kind(env_params: EnvParams) -> str | None:
    """The key of the best known table on a market without an exact optimum (Hawkes flow:
    ``REFERENCE_TABLE``; an Ornstein-Uhlenbeck mid: ``OU_REFERENCE_TABLE``), else None."""
    if is_hawkes(env_params):
        return REFERENCE_TABLE
    if env_params.market.price_model == "ou":
        return OU_REFERENCE_TABLE
    return None


def optimal_solution(
    env_params: EnvParams, n_alpha: int = 41
) -> optimal.QuoteTable | optimal.AlphaQuoteTable:
    """``mm.optimal.bellman`` for the environment's market, reward and action bounds (the
    joint optimum over quotes and market orders when the market has them, ``mo_cost`` set);
    ``bellman_cara`` for the CARA reward (its value is a certainty equivalent); with the alpha
    signal ``mm.optimal.bellman_alpha`` on ``n_alpha`` alpha grid points; on a Hawkes market
    the Poisson-optimal table (``bellman`` on ``hawkes_poisson_reference``: the Poisson market
    with the stationary mean intensity), and on an Ornstein-Uhlenbeck mid ``bellman`` on the
    arithmetic mid: best known tables, not optima."""
    if is_hawkes(env_params):
        reference = hawkes_poisson_reference(env_params.market)
        return optimal.bellman(reference, env_params.phi, reward=env_params.reward)
    if env_params.market.price_model == "ou":  # the best known table: mean reversion ignored
        blind = env_params.market.replace(price_model="arithmetic", ou_rate=None, ou_level=None)
        return optimal.bellman(blind, env_params.phi, reward=env_params.reward)
    if env_params.reward == "cara":
        return optimal.bellman_cara(env_params.market, env_params.phi)
    if env_params.market.alpha_model != "none":
        return optimal.bellman_alpha(
            env_params.market, env_params.phi, reward=env_params.reward, n_alpha=n_alpha
        )
    return optimal.bellman(env_params.market, env_params.phi, reward=env_params.reward)


def _alpha0(market_params: Any) -> float:
    return 0.0 if market_params.alpha0 is None else float(market_params.alpha0)


def _optimal_policy_and_reward(
    solution: optimal.QuoteTable | optimal.AlphaQuoteTable, env_params: EnvParams
) -> tuple[Any, float]:
    """The optimal table as a policy and its exact expected episode reward from a flat start
    (``rewards.value_to_reward`` of the solver's value)."""
    if isinstance(solution, optimal.AlphaQuoteTable):
        value = solution.value_at(0, 0, _alpha0(env_params.market))
        return mm.policies.alpha_table(solution), value
    value = rewards.value_to_reward(solution.value_at(0, 0), env_params.reward, env_params.phi)
    return optimal.table_policy(solution), value  # with its market orders, if any


def exact_reward(env_params: EnvParams, policy: Any, solution: Any = None) -> float:
    """The exact expected episode reward of a (t, q)-Markov policy from a flat start:
    ``mm.optimal.evaluate``; ``evaluate_cara`` and the utility of its certainty equivalent for
    the CARA reward; ``evaluate_alpha`` on the solution's alpha grid when ``solution`` is an
    ``AlphaQuoteTable``."""
    market_params, phi, reward = env_params.market, env_params.phi, env_params.reward
    if isinstance(solution, optimal.AlphaQuoteTable):
        exact = optimal.evaluate_alpha(
            market_params, policy, phi, reward=reward, n_alpha=solution.alphas.size
        )
        return exact.value_at(0, 0, _alpha0(market_params))
    if reward == "cara":
        value = optimal.evaluate_cara(market_params, policy, phi).value_at(0, 0)
    else:
        value = optimal.evaluate(market_params, policy, phi, reward=reward).value_at(0, 0)
    return rewards.value_to_reward(value, reward, phi)


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
    solution: optimal.QuoteTable | optimal.AlphaQuoteTable,
    devices: list[jax.Device] | None = None,
) -> dict[str, Any]:
    """Simulate every policy on ``key`` (common random numbers) and compare with the optimum.

    Args:
        env_params: the environment (market, phi, reward) the rewards are computed for.
        policies: name -> jaxmm policy; the optimal table's policy is added as ``"optimal"``.
        key: the evaluation key. n_episodes: episodes per strategy (>= 2).
        solution: ``optimal_solution(env_params)`` (an ``AlphaQuoteTable`` with the alpha
            signal: its table policy reads (t, q, alpha)).
        devices: split the episodes over these devices (``mm.simulate``'s ``devices``).

    Returns:
        ``{"eval": {name: stats}, "optimal_reward": V}``; each stats dict has
        ``optimality_gap`` and ``optimality_gap_stderr`` from paired differences.
    """
    if n_episodes < 2:
        raise ValueError(f"n_episodes = {n_episodes}; allowed: an integer >= 2")
    if reference_kind(env_params) is not None:
        return _compare_with_reference(env_params, policies, key, n_episodes, solution, devices)
    market_params = env_params.market
    optimal_policy, optimal_reward = _optimal_policy_and_reward(solution, env_params)
    policies = {**policies, "optimal": optimal_policy}
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
    for name in ("naive", "avellaneda_stoikov", "glft", "optimal"):
        if name in results:
            results[name]["exact_reward"] = exact_reward(env_params, policies[name], solution)
    if env_params.reward == "cara":
        _certainty_equivalent_gaps(results, episode_rewards, solution.value_at(0, 0), env_params)
    return {"eval": results, "optimal_reward": optimal_reward}


def _certainty_equivalent_gaps(
    results: dict[str, Any], episode_rewards: dict[str, np.ndarray], theta: float, env_params
) -> None:
    """CARA reward: each strategy's certainty equivalent ``CE = -(1/gamma) log(1 - gamma
    mean U)`` and its gap in those terms, ``(CE_opt - CE) / theta`` with ``theta`` the exact
    optimal certainty equivalent (utilities saturate at ``1 / gamma``, so a gap of expected
    utility understates what a strategy gives up). The standard error is the delta method on
    the paired utility differences: ``dCE / dE[U] = exp(gamma CE)``."""
    gamma = env_params.phi
    optimal_ce = rewards.certainty_equivalent(episode_rewards["optimal"].mean(), gamma)
    for name, stats in results.items():
        ce = float(rewards.certainty_equivalent(episode_rewards[name].mean(), gamma))
        difference = episode_rewards[name] - episode_rewards["optimal"]
        stats["certainty_equivalent"] = ce
        stats["utility_gap"] = stats["optimality_gap"]
        stats["utility_gap_stderr"] = stats["optimality_gap_stderr"]
        stats["optimality_gap"] = float((optimal_ce - ce) / theta)
        stats["optimality_gap_stderr"] = float(
            difference.std(ddof=1)
            * math.exp(gamma * theta)
            / (math.sqrt(difference.size) * abs(theta))
        )


def _compare_with_reference(
    env_params: EnvParams,
    policies: dict[str, Any],
    key: jax.Array,
    n_episodes: int,
    solution: optimal.QuoteTable,
    devices: list[jax.Device] | None,
) -> dict[str, Any]:
    """``compare`` on a market without an exact optimum: the best known table ``solution`` is
    simulated under its key (``reference_kind``) and every strategy's ``gap_to_reference`` is
    measured against its simulated mean reward (paired differences); no exact values (see the
    module docstring)."""
    kind = reference_kind(env_params)
    policies = {**policies, kind: mm.policies.table(solution)}
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
    reference = results[kind]
    reference_reward = reference["mean_reward"]
    for name, stats in results.items():
        difference = episode_rewards[name] - episode_rewards[kind]
        stats["gap_to_reference"] = float(-difference.mean() / reference_reward)
        stats["gap_to_reference_stderr"] = float(
            difference.std(ddof=1) / (math.sqrt(n_episodes) * abs(reference_reward))
        )
    return {
        "eval": results,
        "optimal_reward": None,
        "reference": kind,
        "reference_reward": reference_reward,
        "reference_reward_stderr": reference["stderr_reward"],
        "reference_solved_value": solution.value_at(0, 0),
        "reference_note": REFERENCE_NOTES[kind],
    }


def benchmark_policies(config: PPOConfig) -> dict[str, Any]:
    """The naive, Avellaneda-Stoikov and GLFT (asymptotic closed form) benchmarks of
    ``config``; A-S and GLFT use the risk aversion ``as_gamma`` and the market's k, A, sigma."""
    return {
        "naive": mm.policies.symmetric(half_spread=config.naive_half_spread),
        "avellaneda_stoikov": mm.policies.avellaneda_stoikov(gamma=config.as_gamma),
        "glft": mm.policies.glft(gamma=config.as_gamma),
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
    if config.task == "execution":
        return _evaluate_execution_run(config, run_dir, n_episodes, eval_seed, seed_index)
    _, env_params = market_env(config)
    policy = checkpoint.load_policy(run_dir, seed_index)
    policies = {"ppo": policy, **benchmark_policies(config)}
    result = compare(
        env_params,
        policies,
        jax.random.key(eval_seed),
        n_episodes,
        optimal_solution(env_params, config.alpha_grid_points),
        devices,
    )
    ppo = result["eval"]["ppo"]
    benchmarks = {
        "naive": {"half_spread": config.naive_half_spread},
        "avellaneda_stoikov": {"gamma": config.as_gamma, "k": "the market's"},
    }
    if reference_kind(env_params) is not None:
        gap = {
            "optimality_gap": None,
            "gap_to_reference": ppo["gap_to_reference"],
            "gap_to_reference_stderr": ppo["gap_to_reference_stderr"],
        }
        noise = (
            "common random numbers: every strategy sees the same paths and the same "
            "market-order flow"
        )
        optimum = {result["reference"]: result["reference_note"]}
    else:
        gap = _optimality_gap(ppo)
        noise = "common random numbers: every strategy sees the same paths"
        optimum = {
            "optimal": (
                "mm.optimal.bellman with the environment's action bounds"
                if config.alpha_model == "none"
                else f"mm.optimal.bellman_alpha on {config.alpha_grid_points} alpha points, "
                "the environment's action bounds"
            )
        }
    settings = {**benchmarks, **optimum, "devices": device_lib.describe(devices)}
    return _run_report(result, gap, (n_episodes, eval_seed, seed_index), noise, settings)


def _optimality_gap(stats: dict[str, Any]) -> dict[str, Any]:
    """The ``optimality_gap`` and its standard error from one strategy's ``stats``."""
    return {
        "optimality_gap": stats["optimality_gap"],
        "optimality_gap_stderr": stats["optimality_gap_stderr"],
    }


def _run_report(
    result: dict[str, Any],
    gap: dict[str, Any],
    run: tuple[int, int, int | None],
    noise: str,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """``evaluate_run``'s payload: the comparison ``result``, the agent's ``gap`` entries and
    an ``evaluation`` record of the settings (``run = (n_episodes, eval_seed, seed_index)``,
    how the strategies share their ``noise``, then the strategy-specific ``settings``)."""
    n_episodes, eval_seed, seed_index = run
    evaluation = {"n_episodes": n_episodes, "eval_seed": eval_seed, "seed_index": seed_index}
    return {**result, **gap, "evaluation": {**evaluation, "noise": noise, **settings}}


def make_progress_evaluator(config: PPOConfig, trainer: Any, env: Any, env_params: EnvParams):
    """``evaluate(states) -> f64[num_seeds]``: the mean episode reward of every seed's
    deterministic policy over ``config.progress_episodes`` episodes on ``key(eval_seed + 1)``.

    ``states`` is a ``TrainState`` stacked over seeds; all seeds run in one compiled program.
    """
    if config.task == "execution":
        return _execution_progress_evaluator(config, trainer, env, env_params)
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


# ----------------------------------------------------------------------------------------------
# The execution task


def execution_stats(rollout: execution.ExecutionRollout) -> dict[str, float]:
    """The per-strategy entry of ``metrics.json`` for the execution task, with standard
    errors as ``*_se``: the reward, and of ``pnl`` its mean, std, per-episode Sharpe (mean /
    std across episodes) and share of positive episodes; ``max_drawdown`` (mean over episodes)
    and ``mean_abs_q`` (shares left at the end, mean)."""
    reward = np.asarray(rollout.reward, np.float64)
    pnl = mm.metrics.Moments.of(np.asarray(rollout.pnl, np.float64))
    n = reward.size
    stats = {
        "mean_reward": float(reward.mean()),
        "stderr_reward": float(reward.std(ddof=1) / math.sqrt(n)),
    }
    share = float(np.mean(np.asarray(rollout.pnl) > 0))
    values = {
        "mean_pnl": pnl.mean_se(),
        "std_pnl": pnl.std_se(),
        "sharpe": pnl.sharpe(),
        "max_drawdown": mm.metrics.Moments.of(np.asarray(rollout.max_drawdown)).mean_se(),
        "mean_abs_q": mm.metrics.Moments.of(
            np.abs(np.asarray(rollout.terminal_inventory))
        ).mean_se(),
        "pct_profitable": (100 * share, 100 * math.sqrt(share * (1 - share) / n)),
    }
    for name, (value, se) in values.items():
        stats[name], stats[f"{name}_se"] = float(value), float(se)
    stats["n_episodes"] = int(n)
    return stats


def execution_compare(
    params: execution.ExecutionParams, policies: dict[str, Any], key: jax.Array, n_episodes: int
) -> dict[str, Any]:
    """Simulate every execution policy on ``key`` (common random numbers) beside TWAP, the
    CJP closed form and the exact discrete optimum.

    Args:
        params: the execution problem. policies: name -> ``(state, params) -> shares``.
        key: the evaluation key. n_episodes: episodes per strategy (>= 2).

    Returns:
        ``{"eval": {name: stats}, "optimal_reward": V}`` with ``V = riccati(params).value``
        (< 0) and, per strategy, ``optimality_gap = -mean(D) / |V|`` and its standard error
        ``std(D) / (sqrt(n) |V|)`` from the paired differences ``D = r - r_opt``; the rules of
        ``(t, q)`` also get ``exact_reward`` (``execution.expected_reward``).
    """
    if n_episodes < 2:
        raise ValueError(f"n_episodes = {n_episodes}; allowed: an integer >= 2")
    solution = execution.riccati(params)
    rules = {
        "twap": execution.Twap(),
        "closed_form": execution.ContinuousSpeed(),
        "optimal": solution.policy(),
    }
    policies = {**policies, **rules}
    optimal_reward = float(solution.value)
    episode_rewards = {}
    results: dict[str, dict[str, Any]] = {}
    for name, policy in policies.items():
        rollout = execution.simulate_execution(params, policy, key, n_episodes)
        episode_rewards[name] = np.asarray(rollout.reward, np.float64)
        results[name] = execution_stats(rollout)
    for name, stats in results.items():
        difference = episode_rewards[name] - episode_rewards["optimal"]
        stats["optimality_gap"] = float(np.mean(-difference) / abs(optimal_reward))
        stats["optimality_gap_stderr"] = float(
            difference.std(ddof=1) / (math.sqrt(n_episodes) * abs(optimal_reward))
        )
    for name, rule in rules.items():
        results[name]["exact_reward"] = float(execution.expected_reward(params, rule))
    return {"eval": results, "optimal_reward": optimal_reward}


def _evaluate_execution_run(
    config: PPOConfig, run_dir: Path, n_episodes: int, eval_seed: int, seed_index: int | None
) -> dict[str, Any]:
    """``evaluate_run`` for the execution task (one device)."""
    _, params = market_env(config)
    policy = checkpoint.load_policy(run_dir, seed_index)
    result = execution_compare(params, {"ppo": policy}, jax.random.key(eval_seed), n_episodes)
    settings = {
        "twap": "sell q / (steps left) each step",
        "closed_form": "the CJP continuous-time speed at the start of each step",
        "optimal": "jaxmm.execution.riccati: the exact optimum of the discrete problem",
        "gap": "-mean(r - r_opt) / |V|: rewards are costs, V < 0",
    }
    return _run_report(
        result,
        _optimality_gap(result["eval"]["ppo"]),
        (n_episodes, eval_seed, seed_index),
        "common random numbers: every strategy sees the same noise",
        settings,
    )


def _execution_progress_evaluator(
    config: PPOConfig, trainer: Any, env: Any, params: execution.ExecutionParams
):
    """``make_progress_evaluator`` for the execution task."""
    key = jax.random.key(config.eval_seed + 1)

    def mean_reward(agent: Agent) -> jax.Array:
        policy = env.as_policy(agent, params)
        rollout = execution.simulate_execution(params, policy, key, config.progress_episodes)
        return jnp.mean(rollout.reward)

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
    if result.get("reference") is not None:
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
    if all("certainty_equivalent" in stats for stats in result["eval"].values()):
        equivalents = ", ".join(
            f"{name} {stats['certainty_equivalent']:.4g}" for name, stats in result["eval"].items()
        )
        lines.append(
            "CARA reward: rewards are utilities U(PnL); the gap is in certainty equivalents "
            f"(Monte Carlo): {equivalents}."
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
    what = (
        "the Poisson-optimal table (best known table, NOT the optimum: no exact optimum under "
        "Hawkes clustering)"
        if result["reference"] == REFERENCE_TABLE
        else "the mean-reversion-blind table (best known table, NOT the optimum: the solvers do "
        "not model the Ornstein-Uhlenbeck mid)"
    )
    lines.append(
        f"* gap to {what}, reward {result['reference_reward']:.4f} ± "
        f"{result['reference_reward_stderr']:.4f} simulated on this market"
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
    if config.get("task") == "execution":
        benchmarks = (("closed_form", "tab:orange"), ("twap", "tab:red"))
    else:
        benchmarks = (("avellaneda_stoikov", "tab:orange"), ("naive", "tab:red"))
    if payload.get("reference") is not None:
        reference = (f"{payload['reference']} (best known)", payload["reference_reward"])
    else:
        reference = ("optimal (exact)", payload["optimal_reward"])
    lines = {reference[0]: (reference[1], "black")}
    for name, colour in benchmarks:
        lines[name] = (payload["eval"][name]["mean_reward"], colour)
    for name, (reward, colour) in lines.items():
        ax.axhline(reward, color=colour, ls="--", lw=1.2, label=f"{name} {reward:.2f}")
        shown.append(np.asarray([reward]))
    values = np.concatenate(shown)
    top = values.max()
    # Early training and a poor benchmark can sit far below the rest: show the upper range.
    bottom = max(values.min(), top - 4 * (top - np.quantile(values, 0.25)) - 1e-6)
    ax.set_ylim(bottom - 0.05 * (top - bottom), top + 0.05 * (top - bottom) + 1e-6)
    save_curve_figure(
        fig,
        ax,
        path,
        xlabel="environment steps per seed",
        ylabel="episode reward",
        title=f"PPO, phi={config['phi']}, reward={config['reward']}",
    )
    return Path(path)


def save_curve_figure(fig: Any, ax: Any, path: Path, **labels: str) -> None:
    """Finish and write a training-curve figure as the runs do: ``ax.set(**labels)`` (axis
    labels, title), the legend at the lower right, a tight layout, ``path`` at 120 dpi; then
    close ``fig``."""
    ax.set(**labels)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
