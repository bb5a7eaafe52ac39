"""Open-loop spread schedules by constraint programming (CP-SAT) against the exact optimum.

``python -m experiments.cp_schedule [--quick]`` (needs the extra ``jaxmm[cp]``) writes
``results/cp_schedule/``:

- ``solves.csv``: one row per sample-average CP-SAT solve (phi, number of scenarios,
  replicate): solver status, wall time, gap, in-sample value, exact out-of-sample value
  (``jaxmm.optimal.evaluate``) and a Monte Carlo estimate on fresh paths with its standard error;
- ``values.csv``: every strategy's exact expected reward and its Monte Carlo mean on the same
  fresh paths (common random numbers), with the paired difference to the Bellman optimum and its
  standard error: Bellman (feedback optimum), Avellaneda-Stoikov (gamma 0.1), the best open-loop
  schedule on the grid (exact, ``jaxmm.schedule.best_open_loop``) and the CP-SAT schedules;
- ``schedules.csv``: the depths per step of every schedule, beside the Bellman and A-S depths at
  ``q = 0``;
- ``schedule_depths.png``, ``values.png``, ``overfitting.png``; ``summary.json`` (config, seeds,
  solver statuses and wall times, environment).

Market: the homework market (sigma 2, A 100 per time unit, k 1.5, linear fills) with 50 steps of
the homework's ``dt = 0.005``, i.e. ``T = 0.25``. Keeping ``dt`` keeps the homework's per-step fill
probability ``0.5 exp(-1.5 delta)``; 50 steps over ``T = 1`` instead would give
``A dt = 2`` and a fill probability capped at 1 for every depth below ``ln 2 / 1.5 = 0.46``: a
riskless round trip each step that no real market offers. At 200 steps (19 levels, 30
scenarios, 186k constraints) CP-SAT was still presolving after 60 s on this 2-core machine;
with the hint it reached in-sample 20.9 against a proven bound of 209: nowhere near a proof.

Seeds and reproducibility: replicate ``r`` samples its scenarios from ``fold_in(key(seed), r)``;
every strategy is evaluated by Monte Carlo on ``fold_in(key(seed), EVAL_STREAM)``, an
independent noise stream. CP-SAT runs on one worker with a deterministic-time limit
(``--deterministic-time``), so the same seed gives the same schedules whatever the machine's
load, unless the wall-clock safety limit (``--time-limit``) stops a solve first.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import jax
import matplotlib.pyplot as plt
import numpy as np

import jaxmm as mm
from experiments.common import (
    Timer,
    finish,
    markdown_table,
    save_figure,
    study_parser,
    write_rows_csv,
)
from jaxmm import optimal, schedule

EVAL_STREAM = 1_000_003  # fold_in index of the evaluation key: disjoint from every replicate
AS_GAMMA = 0.1
# 0.2 .. 1.6 by 0.2 where the optimal depths lie, then wide levels up to Bellman's bound 5 that
# let an open-loop schedule all but stop trading while much of the session is left.
DEFAULT_LEVELS = (0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 2.0, 2.5, 3.0, 4.0, 5.0)


QUICK = {"quick": True}  # a smoke run


def parse_args(argv: list[str] | None = None, **options: Any) -> argparse.Namespace:
    parser = study_parser("cp_schedule", __doc__)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (numbers mean little)")
    parser.add_argument(
        "--n-steps", type=int, default=None, help="steps per session (default 50; quick 12)"
    )
    parser.add_argument(
        "--dt", type=float, default=0.005, help="step length, time units (T = n_steps dt)"
    )
    parser.add_argument(
        "--phis", type=float, nargs="+", default=[0.01, 0.1], help="inventory penalties per step"
    )
    parser.add_argument(
        "--scenarios",
        type=int,
        nargs="+",
        default=None,
        help="numbers of scenarios S of the sample average",
    )
    parser.add_argument("--replicates", type=int, default=None, help="solves per S (default 2)")
    parser.add_argument(
        "--levels", type=float, nargs="+", default=None, help="depth grid (DEFAULT_LEVELS)"
    )
    parser.add_argument(
        "--q-bound", type=int, default=10, help="|q| bound in every scenario, units"
    )
    parser.add_argument(
        "--deterministic-time",
        type=float,
        default=None,
        help="CP-SAT deterministic-time limit per solve (reproducible; default 20, quick 2)",
    )
    parser.add_argument(
        "--time-limit", type=float, default=900.0, help="CP-SAT wall-clock safety limit, s"
    )
    parser.add_argument("--workers", type=int, default=1, help="CP-SAT workers")
    parser.add_argument(
        "--n-episodes", type=int, default=None, help="Monte Carlo episodes (sessions)"
    )
    args = parser.parse(argv, **options)
    defaults = {
        "n_steps": (12, 50),
        "scenarios": ([5, 10], [10, 30, 100]),
        "replicates": (1, 2),
        "deterministic_time": (2.0, 20.0),
        "n_episodes": (2_000, 20_000),
    }
    for name, (quick, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.levels is None:
        args.levels = list(DEFAULT_LEVELS)
    if args.n_steps < 1:
        parser.error(f"--n-steps must be >= 1, got {args.n_steps}")
    if not args.dt > 0:
        parser.error(f"--dt must be > 0, got {args.dt}")
    if args.replicates < 1:
        parser.error(f"--replicates must be >= 1, got {args.replicates}")
    if args.n_episodes < 2:
        parser.error(f"--n-episodes must be >= 2, got {args.n_episodes}")
    if min(args.scenarios) < 1:
        parser.error(f"--scenarios must be >= 1, got {args.scenarios}")
    return args


def market(n_steps: int, dt: float) -> mm.MarketParams:
    """The homework market with ``n_steps`` steps of length ``dt``."""
    return mm.presets.homework().replace(n_steps=n_steps, T=n_steps * dt)


def monte_carlo(params, policies: dict, key, n_episodes: int, phi: float) -> dict[str, np.ndarray]:
    """Episode rewards of each policy on the same paths (common random numbers)."""
    return {
        name: np.asarray(mm.simulate(params, policy, key, n_episodes).reward(phi), np.float64)
        for name, policy in policies.items()
    }


def stderr(x: np.ndarray) -> float:
    return float(x.std(ddof=1) / np.sqrt(x.size))


def run_phi(
    params,
    phi: float,
    eval_key,
    *,
    levels: list[float],
    scenarios: list[int],
    replicates: int,
    seed: int,
    q_bound: int,
    time_limit: float,
    workers: int,
    deterministic_time: float,
    n_episodes: int,
) -> dict:
    """Solve every (S in ``scenarios``, replicate), evaluate everything exactly and on the fresh
    paths of ``eval_key`` (``n_episodes``). Replicate ``r`` samples its scenarios from
    ``fold_in(key(seed), r)``; the other arguments go to ``schedule.solve_schedule``."""
    bellman = optimal.bellman(params, phi)
    best = schedule.best_open_loop(params, phi, levels)
    policies = {
        "bellman": mm.policies.table(bellman),
        f"avellaneda_stoikov(gamma={AS_GAMMA:g})": mm.policies.avellaneda_stoikov(
            AS_GAMMA, float(params.k)
        ),
        "best_open_loop": schedule.schedule(best),
    }
    solves = []
    for n_scenarios in scenarios:
        for replicate in range(replicates):
            key = jax.random.fold_in(jax.random.key(seed), replicate)
            solution = schedule.solve_schedule(
                params,
                phi,
                n_scenarios=n_scenarios,
                levels=levels,
                key=key,
                q_bound=q_bound,
                time_limit=time_limit,
                workers=workers,
                deterministic_time=deterministic_time,
            )
            name = f"cp(S={n_scenarios}, rep={replicate})"
            policies[name] = solution.policy()
            solves.append((name, n_scenarios, replicate, solution))
            print(
                f"  phi = {phi:g} S = {n_scenarios} rep {replicate}: {solution.status} in "
                f"{solution.wall_seconds:.1f} s, in-sample {solution.objective:.3f}, "
                f"gap {solution.gap:.3f}",
                file=sys.stderr,
            )
    exact = {
        name: optimal.evaluate(params, policy, phi).value_at() for name, policy in policies.items()
    }
    rewards = monte_carlo(params, policies, eval_key, n_episodes, phi)
    optimum = exact["bellman"]
    values = []
    for name in policies:
        diff = rewards["bellman"] - rewards[name]
        values.append(
            {
                "phi": phi,
                "strategy": name,
                "exact": exact[name],
                "fraction_of_bellman": exact[name] / optimum,
                "mc_mean": float(rewards[name].mean()),
                "mc_stderr": stderr(rewards[name]),
                "bellman_minus_this_mc": float(diff.mean()),
                "bellman_minus_this_stderr": stderr(diff) if np.any(diff) else 0.0,
                "bellman_minus_this_exact": optimum - exact[name],
            }
        )
    solve_rows = [
        solve_row(phi, n_scenarios, replicate, solution, exact[name], rewards[name])
        for name, n_scenarios, replicate, solution in solves
    ]
    depths = {
        name: optimal.tabulate(policy, params, np.array([0])) for name, policy in policies.items()
    }
    return {
        "values": values,
        "solves": solve_rows,
        "depths": {name: (bid[:, 0], ask[:, 0]) for name, (bid, ask) in depths.items()},
        "solutions": {name: solution.summary() for name, _, _, solution in solves},
    }


def solve_row(
    phi: float, n_scenarios: int, replicate: int, solution, exact: float, rewards: np.ndarray
) -> dict:
    """One row of ``solves.csv``: a CP-SAT solve, its exact value and its Monte Carlo
    ``rewards`` on the fresh paths."""
    return {
        "phi": phi,
        "n_scenarios": n_scenarios,
        "replicate": replicate,
        "status": solution.status,
        "in_sample": solution.objective,
        "in_sample_spread": solution.spread_capture,
        "in_sample_mark_to_market": solution.mark_to_market,
        "in_sample_penalty": solution.penalty,
        "solver_objective": solution.solver_objective,
        "best_bound": solution.best_bound,
        "gap": solution.gap,
        "rounding_bound": solution.rounding_bound,
        "wall_seconds": solution.wall_seconds,
        "build_seconds": solution.build_seconds,
        "max_abs_inventory_in_sample": solution.max_abs_inventory,
        "n_variables": solution.n_variables,
        "n_constraints": solution.n_constraints,
        "out_of_sample_exact": exact,
        "out_of_sample_mc": float(rewards.mean()),
        "out_of_sample_mc_stderr": stderr(rewards),
    }


def _phi_panels(results: dict, height: float) -> tuple[Any, list[tuple[Any, Any]]]:
    """One panel per phi of ``results``, side by side (6.5 x ``height`` inches each):
    ``(fig, [(ax, phi), ...])``."""
    phis = list(results)
    fig, axes = plt.subplots(1, len(phis), figsize=(6.5 * len(phis), height), squeeze=False)
    return fig, list(zip(axes[0], phis, strict=True))


def plot_depths(params, results: dict, path: Path) -> None:
    fig, panels = _phi_panels(results, 4.5)
    times = np.arange(params.n_steps) * float(params.dt)
    for ax, phi in panels:
        depths = results[phi]["depths"]
        for name, (bid, _ask) in depths.items():
            if name.startswith("cp("):
                ax.step(times, bid, where="post", alpha=0.6, linewidth=1, label=name)
        ax.plot(times, depths["best_open_loop"][0], "k--", linewidth=2, label="best open loop")
        ax.plot(times, depths["bellman"][0], "r-", linewidth=2, label="Bellman bid at q = 0")
        name = f"avellaneda_stoikov(gamma={AS_GAMMA:g})"
        ax.plot(times, depths[name][0], "b:", linewidth=2, label="A-S bid at q = 0")
        ax.set(
            title=f"phi = {phi:g}: open-loop schedules vs feedback depths at q = 0",
            xlabel="time (session units)",
            ylabel="half-spread / depth (price units)",
        )
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def plot_values(results: dict, path: Path) -> None:
    fig, panels = _phi_panels(results, 5)
    for ax, phi in panels:
        rows = results[phi]["values"]
        x = np.arange(len(rows))
        means = [row["mc_mean"] for row in rows]
        errors = [2 * row["mc_stderr"] for row in rows]
        ax.bar(
            x, means, yerr=errors, capsize=3, color="lightsteelblue", label="Monte Carlo +- 2 SE"
        )
        ax.plot(x, [row["exact"] for row in rows], "kD", label="exact (optimal.evaluate)")
        ax.set_xticks(x, [row["strategy"] for row in rows], rotation=60, ha="right", fontsize=7)
        ax.set(title=f"phi = {phi:g}: expected episode reward", ylabel="E[pnl - phi sum q^2]")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def plot_overfitting(results: dict, path: Path) -> None:
    fig, panels = _phi_panels(results, 4.5)
    for ax, phi in panels:
        rows = results[phi]["solves"]
        sizes = np.array([row["n_scenarios"] for row in rows])
        ax.plot(sizes, [row["in_sample"] for row in rows], "o", label="in-sample (CP objective)")
        ax.plot(
            sizes, [row["out_of_sample_exact"] for row in rows], "s", label="out-of-sample (exact)"
        )
        lookup = {row["strategy"]: row["exact"] for row in results[phi]["values"]}
        ax.axhline(lookup["bellman"], color="r", label="Bellman optimum (feedback)")
        ax.axhline(lookup["best_open_loop"], color="k", linestyle="--", label="best open loop")
        name = f"avellaneda_stoikov(gamma={AS_GAMMA:g})"
        ax.axhline(lookup[name], color="b", linestyle=":", label="A-S gamma 0.1")
        ax.set_xscale("log")
        ticks = sorted(set(sizes.tolist()))
        ax.set_xticks(ticks, [str(tick) for tick in ticks])
        ax.minorticks_off()
        ax.set(
            title=f"phi = {phi:g}: sample-average schedule, in vs out of sample",
            xlabel="scenarios S",
            ylabel="episode reward",
        )
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None, **options: Any) -> dict:
    """Run the study; ``options`` override the command line's values (``quick=True``)."""
    args = parse_args(argv, **options)
    params = market(args.n_steps, args.dt)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    eval_key = jax.random.fold_in(jax.random.key(args.seed), EVAL_STREAM)
    results = {}
    with Timer() as timer:
        for phi in args.phis:
            results[phi] = run_phi(
                params,
                phi,
                eval_key,
                levels=args.levels,
                scenarios=args.scenarios,
                replicates=args.replicates,
                seed=args.seed,
                q_bound=args.q_bound,
                time_limit=args.time_limit,
                workers=args.workers,
                deterministic_time=args.deterministic_time,
                n_episodes=args.n_episodes,
            )
    values = [row for phi in args.phis for row in results[phi]["values"]]
    solves = [row for phi in args.phis for row in results[phi]["solves"]]
    write_rows_csv(out / "values.csv", values)
    write_rows_csv(out / "solves.csv", solves)
    write_rows_csv(out / "schedules.csv", schedule_rows(params, args.phis, results))
    plot_depths(params, results, out / "schedule_depths.png")
    plot_values(results, out / "values.png")
    plot_overfitting(results, out / "overfitting.png")
    print(format_values(values))
    payload = {
        "values": values,
        "solves": solves,
        "solutions": {f"{phi:g}": results[phi]["solutions"] for phi in args.phis},
        "wall_seconds": timer.seconds,
    }
    config = {**vars(args), "out": str(out), "params": params, "eval_stream": EVAL_STREAM}
    return finish(out, "summary", payload, config=config)


def schedule_rows(params, phis: list[float], results: dict) -> list[dict]:
    """``schedules.csv``: one row per step, the bid and ask depth of every strategy and phi."""
    rows = []
    for t in range(params.n_steps):
        row = {"step": t, "time": t * float(params.dt)}
        for phi in phis:
            for name, (bid, ask) in results[phi]["depths"].items():
                row[f"phi={phi:g} {name} bid"] = float(bid[t])
                row[f"phi={phi:g} {name} ask"] = float(ask[t])
        rows.append(row)
    return rows


def format_values(values: list[dict]) -> str:
    """Markdown table of exact and Monte Carlo values."""
    header = (
        "phi", "strategy", "exact", "% of Bellman", "MC mean +- SE", "Bellman - this (MC, paired)",
    )  # fmt: skip
    rows = [
        (
            f"{row['phi']:g}",
            row["strategy"],
            f"{row['exact']:.3f}",
            f"{100 * row['fraction_of_bellman']:.1f}%",
            f"{row['mc_mean']:.3f} +- {row['mc_stderr']:.3f}",
            f"{row['bellman_minus_this_mc']:.3f} +- {row['bellman_minus_this_stderr']:.3f}",
        )
        for row in values
    ]
    return markdown_table(header, rows, align="l" * len(header))


if __name__ == "__main__":
    main()
