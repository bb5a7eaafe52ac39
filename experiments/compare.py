"""Three strategies and the ceiling: naive, the best A-S cell, PPO and the exact optimum.

``python -m experiments.compare`` runs, on the same 1,000 paths of the homework market:

- ``naive``: symmetric quotes, spread 1.0;
- ``avellaneda_stoikov``: the best (gamma, kappa) cell of the sigma = 2 heatmap
  (``results/heatmap/summary.json`` if present, else the sweep is run here);
- ``ppo``: the better, by per-episode Sharpe on validation keys disjoint from the test paths,
  of the agents trained with phi = 0.01 and phi = 0.1 (``experiments.agents``);
- ``optimal``: the Bellman optimum for phi = 0.01.

Table: mean PnL, per-episode Sharpe, max drawdown, mean |q_T|, % profitable, expected reward
under phi = 0.01 and the optimality gap ``1 - reward / optimal reward`` (paired standard
errors). Figures: equity curves of 10 representative paths (the deciles of the optimum's PnL)
and box plots of terminal PnL. Writes ``results/compare/`` (``table.csv``, ``summary.json``,
``equity_curves.png``, ``pnl_boxplot.png``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import jax
import matplotlib.pyplot as plt
import numpy as np

import jaxmm as mm
from experiments import agents, heatmap
from experiments.common import (
    Timer,
    add_ppo_arguments,
    finish,
    markdown_table,
    save_figure,
    study_parser,
    write_rows_csv,
)

PHI = 0.01
STATS = (
    "mean_pnl",
    "sharpe",
    "max_drawdown",
    "mean_abs_q",
    "pct_profitable",
    "mean_reward",
    "optimality_gap",
)


QUICK = {"n_episodes": 50, "validation_episodes": 50, "ppo_timesteps": 8192}  # all --quick


def parse_args(argv: list[str] | None = None, **options: Any) -> argparse.Namespace:
    parser = study_parser(
        "compare",
        __doc__,
        n_episodes=1000,
        seed=99,
        min_episodes=None,
        seed_help="key of the test paths",
    )
    parser.add_argument(
        "--validation-episodes", type=int, default=2000, help="episodes choosing the PPO agent"
    )
    add_ppo_arguments(parser)
    parser.add_argument(
        "--heatmap",
        type=Path,
        default=Path("results/heatmap/summary.json"),
        help="heatmap summary.json with the best A-S cell (run if absent)",
    )
    args = parser.parse(argv, **options)
    if args.n_episodes < 10 or args.validation_episodes < 10:
        parser.error("--n-episodes and --validation-episodes must be >= 10")
    return args


def best_as_cell(path: Path) -> dict:
    """(gamma, kappa) of the best sigma = 2 heatmap cell, from the study's file or a new run."""
    if path.is_file():
        best = json.loads(path.read_text())["best"]["2.0"]["best"]
    else:
        best = heatmap.best_region(heatmap.sweep(2.0, n_episodes=500, seed=0))["best"]
    return {"gamma": float(best["gamma"]), "kappa": float(best["kappa"])}


def choose_ppo(
    params: mm.MarketParams,
    *,
    seed: int,
    validation_episodes: int,
    ppo_timesteps: int,
    agents_dir: Path | None = None,
) -> tuple[str, object, dict]:
    """The better PPO agent by per-episode Sharpe on validation keys (``seed + 10_000``, not
    the test paths); agents train in ``agents_dir`` (default ``agents.AGENTS_DIR``)."""
    candidates = {}
    for phi in (0.01, 0.1):
        run = agents.trained_run(
            f"ppo_phi{phi:g}", phi=phi, total_timesteps=ppo_timesteps, seed=0, out_dir=agents_dir
        )
        candidates[f"ppo(phi={phi:g})"] = agents.load_policy(run)
    validation_key = jax.random.key(seed + 10_000)
    scores = {
        name: mm.metrics.summarize(
            mm.simulate(params, policy, validation_key, validation_episodes)
        )["sharpe"]
        for name, policy in candidates.items()
    }
    chosen = max(scores, key=scores.get)
    return chosen, candidates[chosen], scores


def main(argv: list[str] | None = None, *, agents_dir: Path | None = None, **options: Any) -> dict:
    """Run the study; ``options`` override the command line's values (``n_episodes=50``,
    ``heatmap=Path(...)``); agents train in ``agents_dir`` (default ``agents.AGENTS_DIR``)."""
    from train import evaluate

    args = parse_args(argv, **options)
    args.out.mkdir(parents=True, exist_ok=True)
    env = mm.env.MarketMakingEnv()
    env_params = env.default_params.replace(phi=PHI)
    params = env_params.market
    cell = best_as_cell(args.heatmap)
    rules = {
        "naive": mm.policies.symmetric(0.5),
        "avellaneda_stoikov": mm.policies.avellaneda_stoikov(cell["gamma"], cell["kappa"]),
    }
    choice = {}
    if not args.no_ppo:
        name, policy, scores = choose_ppo(
            params,
            seed=args.seed,
            validation_episodes=args.validation_episodes,
            ppo_timesteps=args.ppo_timesteps,
            agents_dir=agents_dir,
        )
        rules["ppo"] = policy
        choice = {"chosen": name, "validation_sharpe": scores}
    key = jax.random.key(args.seed)
    with Timer() as timer:
        solution = evaluate.optimal_solution(env_params)
        result = evaluate.compare(env_params, rules, key, args.n_episodes, solution)
        rules["optimal"] = mm.policies.table(solution)
        paths = {
            name: mm.simulate(params, rule, key, args.n_episodes, paths=True)
            for name, rule in rules.items()
        }
    rows = []
    for name, stats in result["eval"].items():
        row = {"strategy": name, **{stat: stats[stat] for stat in STATS}}
        row["mean_pnl_se"], row["sharpe_se"] = stats["mean_pnl_se"], stats["sharpe_se"]
        row["optimality_gap_se"] = stats["optimality_gap_stderr"]
        rows.append(row)
    write_rows_csv(args.out / "table.csv", rows)
    plot_equity(paths, float(params.dt), args.out / "equity_curves.png")
    plot_box(paths, args.out / "pnl_boxplot.png")
    print(format_table(rows))
    return finish(
        args.out,
        "summary",
        {
            "ppo_choice": choice,
            "optimal_reward": result["optimal_reward"],
            "table": rows,
            "eval": result["eval"],
        },
        config={**vars(args), "phi": PHI, "as_cell": cell, "market": params},
        seconds=timer.seconds,
    )


def format_table(rows: list[dict]) -> str:
    header = (
        "strategy", "mean PnL", "Sharpe", "max drawdown", "mean abs q_T", "% profitable",
        "reward (phi 0.01)", "optimality gap",
    )  # fmt: skip
    return markdown_table(
        header,
        [
            (
                r["strategy"],
                f"{r['mean_pnl']:.2f} ± {r['mean_pnl_se']:.2f}",
                f"{r['sharpe']:.2f} ± {r['sharpe_se']:.2f}",
                f"{r['max_drawdown']:.2f}",
                f"{r['mean_abs_q']:.2f}",
                f"{r['pct_profitable']:.1f}",
                f"{r['mean_reward']:.2f}",
                f"{100 * r['optimality_gap']:.2f}% ± {100 * r['optimality_gap_se']:.2f}%",
            )
            for r in rows
        ],
    )


def plot_equity(rollouts: dict, dt: float, path: Path) -> None:
    reference = np.asarray(rollouts["optimal"].pnl)
    order = np.argsort(reference)
    picks = order[np.linspace(0, reference.size - 1, 10).astype(int)]
    fig, axes = plt.subplots(2, 5, figsize=(18, 6.5), sharex=True)
    for ax, episode in zip(axes.flat, picks, strict=True):
        for name, rollout in rollouts.items():
            pnl = np.asarray(rollout.paths.pnl[episode])
            ax.plot(np.arange(pnl.size) * dt, pnl, label=name, linewidth=1)
        ax.set_title(f"episode {episode}", fontsize=9)
        ax.set_xlabel("time (session units)")
        ax.set_ylabel("PnL (price units)")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("Equity curves of 10 paths (deciles of the optimum's terminal PnL), same paths")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def plot_box(rollouts: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = list(rollouts)
    ax.boxplot([np.asarray(rollouts[name].pnl) for name in names], showfliers=True)
    ax.set_xticks(range(1, len(names) + 1), names)
    ax.set(ylabel="terminal PnL (price units)", title="Terminal PnL on the same paths")
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
