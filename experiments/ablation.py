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

import jax
import matplotlib
import numpy as np

import jaxmm as mm
from experiments import agents
from experiments.common import Timer, environment, write_json, write_rows_csv
from jaxmm import optimal

matplotlib.use("Agg")
import matplotlib.pyplot as plt

FEATURE_SETS = ("full", "no_as_spread", "no_volatility", "inventory_only", "extended")
PHI = 0.01


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.ablation", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--n-episodes", type=int, default=500)
    parser.add_argument("--seed", type=int, default=11, help="test episodes' key")
    parser.add_argument("--ppo-timesteps", type=int, default=200_000)
    parser.add_argument("--num-seeds", type=int, default=1, help="seeds per feature set")
    parser.add_argument("--out", type=Path, default=Path("results/ablation"))
    args = parser.parse_args(argv)
    if args.n_episodes < 10:
        parser.error(f"--n-episodes must be >= 10, got {args.n_episodes}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
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
    payload = {
        "config": {**vars(args), "out": str(args.out), "phi": PHI, "market": params},
        "optimal_reward": optimum,
        "table": rows,
        "seconds": timer.seconds,
        "environment": environment(),
    }
    write_json(args.out / "summary.json", payload)
    for r in rows:
        print(
            f"{r['features']:15s} {100 * r['fraction_of_optimum']:6.2f}% ± "
            f"{100 * r['fraction_se']:.2f}% of the optimum, Sharpe {r['sharpe']:.2f}"
        )
    print(f"results in {args.out}/ ({timer.seconds:.1f} s)")
    return payload


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
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
