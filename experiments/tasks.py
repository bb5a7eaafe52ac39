"""The benchmark table of market-making tasks: every strategy's gap to the exact optimum.

``python -m experiments.tasks`` trains one PPO agent per task (``python -m train.ppo`` with the
task's fields, default budget: 500,000 steps, best of 4 seeds) and reads its evaluation: every
strategy simulated on the same fixed evaluation keys (``key(eval_seed)``, ``eval_seed = 1000``,
10,000 episodes, common random numbers), and each one's optimality gap ``1 - reward / V`` to the
task's exact optimum ``V`` with the standard error of the paired differences. The strategies are
PPO, the naive quoter (half-spread 0.5), Avellaneda-Stoikov and GLFT's asymptotic closed form
(both with gamma = 0.1 and the market's k, A, sigma), and the optimum itself
(``jaxmm.optimal.bellman``, or the solver named in the task's row).

A task is a set of ``train.config.PPOConfig`` fields (``TASKS``): the homework at phi 0.01 and
0.1, exponential (Poisson-clock) and power-law fills, the volatility regime switch (variance
reward, sigma doubling at step 100), CARA utility of terminal wealth (gap in certainty
equivalents), the short-term alpha signal (the exact (t, q, alpha) optimum), Hawkes order flow
(no exact optimum: the gaps are to the best known table, the Poisson-optimal one, simulated on
the Hawkes market), limit and market orders (the joint-action optimum) and optimal execution
(PPO against TWAP, the CJP closed form and the exact discrete optimum). ``--tasks`` picks
some.

Agents are trained (and reused while their configuration is unchanged) in ``results/agents/``
through ``experiments.agents``. Writes ``results/tasks/``: ``tasks.json`` (config, seed, every
task's evaluation), ``tasks.csv`` (one row per task and strategy) and ``tasks.png`` (the gaps).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from experiments import agents
from experiments.common import (
    Timer,
    add_ppo_arguments,
    finish,
    markdown_table,
    save_figure,
    study_parser,
    write_rows_csv,
)
from jaxmm.rewards import certainty_equivalent

__all__ = ["STRATEGIES", "TASKS", "Task", "main", "run_task"]


@dataclass(frozen=True)
class Task:
    """One benchmark task: what it is, and the ``PPOConfig`` fields that define it."""

    description: str
    fields: dict[str, Any] = field(default_factory=dict)
    optimum: str = "optimal.bellman"


TASKS: dict[str, Task] = {
    "homework_phi0.01": Task("homework market, reward dPnL - 0.01 q'^2", {"phi": 0.01}),
    "homework_phi0.1": Task("homework market, reward dPnL - 0.1 q'^2", {"phi": 0.1}),
    "exponential_fills": Task(
        "homework, fills 1 - exp(-A e^{-k d} dt) (Poisson clock), phi 0.01",
        {"phi": 0.01, "fill_model": "exponential"},
    ),
    "power_fills": Task(
        "homework, power-law intensity A (1 + k d / 2.5)^-2.5, phi 0.01",
        {"phi": 0.01, "fill_shape": "power", "fill_shape_alpha": 2.5},
    ),
    "regime_switch": Task(
        "sigma 2 -> 4 at step 100, reward dPnL - 0.5 sigma_t^2 dt q'^2",
        {"phi": 0.5, "reward": "variance", "vol_switch_step": 100, "vol_switch_factor": 2.0},
    ),
    "cara": Task(
        "homework, CARA utility of terminal wealth, gamma 0.05 (gap in certainty equivalents)",
        {"phi": 0.05, "reward": "cara"},
        optimum="optimal.bellman_cara; value: its certainty equivalent",
    ),
    "alpha": Task(
        "short-term alpha (zeta 10, eta 15) observed by the agent, phi 0.01",
        {"alpha_model": "ou", "alpha_rate": 10.0, "alpha_vol": 15.0, "features": "alpha"},
        optimum="optimal.bellman_alpha (41 alpha points)",
    ),
    "hawkes": Task(
        "Hawkes flow (beta 20, self 8, cross 4: branching 0.6, mean 100 per side), phi 0.01",
        {
            "arrival_model": "hawkes",
            "hawkes_decay": 20.0,
            "hawkes_self": 8.0,
            "hawkes_cross": 4.0,
            "hawkes_mean_intensity": 100.0,
            "hawkes_start": "mean",
            "features": "hawkes",
        },
        optimum="none known; the best known table: Poisson-optimal",
    ),
    "market_orders": Task(
        "limit and market orders (mo_cost 0.25), phi 0.1",
        {"phi": 0.1, "action_mode": "depths_mo", "mo_cost": 0.25},
        optimum="optimal.bellman (joint action)",
    ),
    "execution": Task(
        "optimal execution: sell 10 shares in 50 steps (CJP ch. 6), rewards are costs",
        {"task": "execution"},
        optimum="execution.riccati (exact discrete)",
    ),
}
STRATEGIES = ("ppo", "avellaneda_stoikov", "glft", "naive", "optimal")
OTHERS = ("twap", "closed_form")  # the execution task's benchmarks
QUICK = {"ppo_timesteps": 4096, "eval_episodes": 200, "tasks": ["homework_phi0.01", "cara"]}
# experiments.all --quick (a smoke run: its numbers mean nothing)


def parse_args(argv: list[str] | None = None, **options: Any) -> argparse.Namespace:
    parser = study_parser("tasks", __doc__, seed=0, seed_help="PPO's master seed")
    add_ppo_arguments(parser, optional=False)
    parser.add_argument(
        "--tasks", nargs="+", choices=tuple(TASKS), default=list(TASKS), help="tasks to run"
    )
    parser.add_argument(
        "--eval-episodes", type=int, default=10_000, help="evaluation episodes per strategy"
    )
    parser.add_argument("--eval-seed", type=int, default=1000, help="the fixed evaluation key")
    args = parser.parse(argv, **options)
    if args.eval_episodes < 2:
        parser.error(f"--eval-episodes {args.eval_episodes}; allowed: an integer >= 2")
    return args


def run_task(
    name: str,
    *,
    ppo_timesteps: int,
    seed: int,
    eval_episodes: int,
    eval_seed: int,
    agents_dir: Path | None = None,
) -> dict[str, Any]:
    """Train (or reuse) the task's agent and return its evaluation (``metrics.json``'s
    ``eval``, ``optimal_reward``, the config) with the wall time of the training run."""
    task = TASKS[name]
    run = agents.trained_run(
        f"task_{name}",
        out_dir=agents_dir,
        total_timesteps=ppo_timesteps,
        seed=seed,
        eval_episodes=eval_episodes,
        eval_seed=eval_seed,
        **task.fields,
    )
    metrics = json.loads((run / "metrics.json").read_text())
    evaluation = metrics["eval"]
    reference = metrics.get("reference")  # a task without an exact optimum (Hawkes)
    if reference is not None:  # gaps to the best known table take the optimum's place
        evaluation = {
            ("optimal" if name == reference else name): {
                **stats,
                "optimality_gap": stats["gap_to_reference"],
                "optimality_gap_stderr": stats["gap_to_reference_stderr"],
            }
            for name, stats in evaluation.items()
        }
    return {
        "task": name,
        "description": task.description,
        "optimum": task.optimum,
        "fields": task.fields,
        "optimal_reward": (
            metrics["optimal_reward"] if reference is None else metrics["reference_reward"]
        ),
        "optimal_value": _shown_value(metrics, task),
        "exact_optimum": reference is None,
        "eval": {s: evaluation[s] for s in (*STRATEGIES, *OTHERS) if s in evaluation},
        "ppo_wall_seconds": metrics.get("wall_seconds"),
        "run": str(run),
    }


def _shown_value(metrics: dict[str, Any], task: Task) -> float:
    """The optimum's value as the table shows it: the expected episode reward, the simulated
    reward of the best known table (Hawkes), or the certainty equivalent (CARA)."""
    if metrics.get("reference") is not None:
        return metrics["reference_reward"]
    if task.fields.get("reward") == "cara":
        return float(certainty_equivalent(metrics["optimal_reward"], task.fields["phi"]))
    return metrics["optimal_reward"]


def rows_of(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per task and strategy: the gap, its standard error and the mean reward."""
    rows = []
    for result in results:
        for strategy, stats in result["eval"].items():
            rows.append(
                {
                    "task": result["task"],
                    "strategy": strategy,
                    "optimal_reward": result["optimal_reward"],
                    "mean_reward": stats["mean_reward"],
                    "stderr_reward": stats["stderr_reward"],
                    "optimality_gap": stats["optimality_gap"],
                    "optimality_gap_stderr": stats["optimality_gap_stderr"],
                }
            )
    return rows


def _gap(stats: dict[str, Any] | None) -> str:
    if stats is None:
        return "-"
    return f"{100 * stats['optimality_gap']:.2f}% ± {100 * stats['optimality_gap_stderr']:.2f}%"


def format_table(results: list[dict[str, Any]]) -> str:
    header = (
        "task", "optimum: value (solver)", "PPO gap", "A-S gap", "GLFT gap", "naive gap", "other",
    )  # fmt: skip
    rows = []
    for r in results:
        value = f"{r['optimal_value']:.4g}" + ("" if r["exact_optimum"] else " (simulated)")
        others = "; ".join(f"{s} {_gap(r['eval'][s])}" for s in OTHERS if s in r["eval"])
        rows.append(
            (
                f"`{r['task']}`",
                f"{value} ({r['optimum']})",
                *(_gap(r["eval"].get(s)) for s in ("ppo", "avellaneda_stoikov", "glft", "naive")),
                others or "-",
            )
        )
    return markdown_table(header, rows)


def plot(results: list[dict[str, Any]], path: Path) -> None:
    strategies = ("ppo", "avellaneda_stoikov", "glft")
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(results)), 4.2))
    width = 0.8 / len(strategies)
    x = np.arange(len(results))
    for i, strategy in enumerate(strategies):
        gaps = [100 * r["eval"].get(strategy, {}).get("optimality_gap", np.nan) for r in results]
        errors = [
            100 * r["eval"].get(strategy, {}).get("optimality_gap_stderr", np.nan) for r in results
        ]
        ax.bar(x + (i - 1) * width, gaps, width, yerr=errors, label=strategy, capsize=2)
    ax.set_xticks(x, [r["task"] for r in results], rotation=20, ha="right", fontsize=8)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set(ylabel="optimality gap (%; symlog)", title="gap to the exact optimum per task")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None, *, agents_dir: Path | None = None, **options: Any) -> dict:
    """Run the benchmark; ``options`` override the command line's values."""
    args = parse_args(argv, **options)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    with Timer() as timer:
        for name in args.tasks:
            print(f"tasks: {name}", file=sys.stderr)
            results.append(
                run_task(
                    name,
                    ppo_timesteps=args.ppo_timesteps,
                    seed=args.seed,
                    eval_episodes=args.eval_episodes,
                    eval_seed=args.eval_seed,
                    agents_dir=agents_dir,
                )
            )
    write_rows_csv(args.out / "tasks.csv", rows_of(results))
    plot(results, args.out / "tasks.png")
    print(format_table(results))
    return finish(args.out, "tasks", {"tasks": results}, config=args, seconds=timer.seconds)


if __name__ == "__main__":
    main()
