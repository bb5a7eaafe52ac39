"""State ablation: which observation features does the PPO agent need?

``python -m experiments.ablation`` trains five agents with the same seed and budget (200,000
steps, phi = 0.01), differing only in their observation (``jaxmm.env`` feature sets): ``full``
(inventory, mid change, time left, trailing volatility, A-S spread), ``no_as_spread``,
``no_volatility``, ``inventory_only`` and ``extended`` (full + recent fill rate + PnL). Each
feature set has its own observation width, so the agents train one after the other (seeds of
one configuration train in parallel with ``--num-seeds``). All five are compared on the same
500 fresh episodes: expected reward, fraction of the exact optimum (paired standard error),
mean PnL, per-episode Sharpe, mean |q_T|. Writes ``results/ablation/`` (``table.csv``,
``summary.json``, ``ablation.png``).

Note: in this market the optimum depends on (time, inventory) only, so ``inventory_only``
lacks just the time to go.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import jax
import matplotlib.pyplot as plt
import numpy as np

import jaxmm as mm
from experiments import agents
from experiments.common import (
    Timer,
    add_ppo_arguments,
    finish,
    save_figure,
    study_parser,
    write_rows_csv,
)
from jaxmm import optimal

FEATURE_SETS = ("full", "no_as_spread", "no_volatility", "inventory_only", "extended")
PHI = 0.01


QUICK = {"n_episodes": 50, "ppo_timesteps": 8192}  # experiments.all --quick


def parse_args(argv: list[str] | None = None, **options: Any) -> argparse.Namespace:
    parser = study_parser(
        "ablation", __doc__, n_episodes=500, seed=11, seed_help="test episodes' key"
    )
    add_ppo_arguments(parser, timesteps=200_000, optional=False)
    parser.add_argument("--num-seeds", type=int, default=1, help="PPO seeds per feature set")
    return parser.parse(argv, **options)


def main(argv: list[str] | None = None, *, agents_dir: Path | None = None, **options: Any) -> dict:
    """Run the study; ``options`` override the command line's values (``n_episodes=50``);
    agents train in ``agents_dir`` (default ``experiments.agents.AGENTS_DIR``)."""
    args = parse_args(argv, **options)
    args.out.mkdir(parents=True, exist_ok=True)
    params = mm.presets.homework()
    key = jax.random.key(args.seed)
    solution = optimal.bellman(params, PHI)
    optimum = solution.value_at()
    best = np.asarray(
        mm.simulate(params, mm.policies.table(solution), key, args.n_episodes).reward(PHI),
        np.float64,
    )
    rows = []
    with Timer() as timer:
        for features in FEATURE_SETS:
            run = agents.trained_run(
                f"ablation_{features}_{args.ppo_timesteps}",
                phi=PHI,
                features=features,
                total_timesteps=args.ppo_timesteps,
                num_seeds=args.num_seeds,
                seed=0,
                out_dir=agents_dir,
            )
            rollout = mm.simulate(params, agents.load_policy(run), key, args.n_episodes)
            reward = np.asarray(rollout.reward(PHI), np.float64)
            summary = mm.metrics.summarize(rollout)
            gap = reward - best
            rows.append(
                {
                    "features": features,
                    "mean_reward": float(reward.mean()),
                    "fraction_of_optimum": float(1 + gap.mean() / optimum),
                    "fraction_se": float(gap.std(ddof=1) / math.sqrt(gap.size) / abs(optimum)),
                    "mean_pnl": summary["mean_pnl"],
                    "sharpe": summary["sharpe"],
                    "sharpe_se": summary["sharpe_se"],
                    "mean_abs_q": summary["mean_abs_q"],
                }
            )
    write_rows_csv(args.out / "table.csv", rows)
    plot(rows, args.out / "ablation.png")
    for r in rows:
        print(
            f"{r['features']:15s} {100 * r['fraction_of_optimum']:6.2f}% ± "
            f"{100 * r['fraction_se']:.2f}% of the optimum, Sharpe {r['sharpe']:.2f}"
        )
    return finish(
        args.out,
        "summary",
        {"optimal_reward": optimum, "table": rows},
        config={**vars(args), "phi": PHI, "market": params},
        seconds=timer.seconds,
    )


def plot(rows: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    names = [r["features"] for r in rows]
    ax.bar(
        names,
        [100 * r["fraction_of_optimum"] for r in rows],
        yerr=[100 * r["fraction_se"] for r in rows],
    )
    ax.set(
        xlabel="observation features",
        ylabel="% of the exact optimum's reward",
        title="PPO state ablation (same seed, same budget, same 500 test paths)",
    )
    low = min(100 * r["fraction_of_optimum"] for r in rows)
    ax.set_ylim(max(0.0, low - 5), 101)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
