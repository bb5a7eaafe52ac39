"""Clustered order flow: what a Hawkes market costs the Poisson strategies at a fixed mean flow.

``python -m experiments.hawkes`` steps the homework market (sigma 2, k 1.5, 200 steps, exact
Poisson-thinning fills) with self-exciting market orders (``arrival_model="hawkes"``): kernel
decay ``beta = 20`` per time unit (a cluster lasts about 10 steps), two thirds of the excitation
on the same side and one third on the other, for branching ratios ``n = (self + cross) / beta``
in 0, 0.3, 0.6, 0.8. The base intensity is set so that the stepped chain's stationary mean
intensity is 100 per side in every cell (``train.config.with_hawkes_mean_intensity``), and every
session starts at the stationary mean excitation (``hawkes_start="mean"``), so the expected
intensity is 100 at every step: only the clustering changes. (From rest, the default, the flow
would build up over the first ~50 steps at n = 0.8 and average only 74 per side over the
session.)

On the same keys (common random numbers: every strategy sees the same mid path and the same
market-order flow) it compares, under the reward ``pnl - phi sum q'^2`` (phi = 0.01):

- A-S (gamma 0.1, k 1.5);
- the Poisson-optimal table: ``optimal.bellman`` on the Poisson market with intensity 100 per
  side (``jaxmm.params.hawkes_poisson_reference``), the best known (t, q) table -- optimal at
  ``n = 0``, where the study checks its simulated reward against its exact value, and not an
  optimum beyond (no exact optimum is known under clustering);
- unless ``--no-ppo``, a short PPO run that sees the intensity (``features="hawkes"``: the two
  excitations over the base intensity), trained at the largest branching ratio and evaluated
  in every cell.

Each cell reports the mean reward with its standard error and the paired difference to the
table with its (much smaller) paired standard error. Writes ``results/hawkes/``:
``summary.json`` (config, seed, every cell) and ``hawkes.png`` (reward against branching).
"""

from __future__ import annotations

import argparse
import math
import sys
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
    markdown_table,
    save_figure,
    study_parser,
)
from jaxmm import optimal, rewards
from jaxmm.params import (
    hawkes_discrete_branching_ratio,
    hawkes_poisson_reference,
    hawkes_stationary_intensity,
)
from train.config import with_hawkes_mean_intensity

PHI = 0.01
DECAY = 20.0  # per time unit
SELF_SHARE = 2.0 / 3.0  # of the excitation on the same side; the rest on the other side
MEAN_INTENSITY = 100.0  # per side and time unit, held fixed
BRANCHING = (0.0, 0.3, 0.6, 0.8)

QUICK = {"n_episodes": 50, "ppo_timesteps": 4096, "branching": [0.0, 0.6]}


def parse_args(argv: list[str] | None = None, **options: Any) -> argparse.Namespace:
    parser = study_parser("hawkes", __doc__, n_episodes=4000, seed=11)
    add_ppo_arguments(parser, timesteps=200_000)
    parser.add_argument(
        "--branching", type=float, nargs="+", default=list(BRANCHING), help="ratios in [0, 1)"
    )
    args = parser.parse(argv, **options)
    if not args.branching or not all(0 <= n < 1 for n in args.branching):
        parser.error(f"--branching must be ratios in [0, 1), got {args.branching}")
    return args


def hawkes_market(branching: float) -> mm.MarketParams:
    """The homework market with Hawkes flow of branching ratio ``branching`` (decay ``DECAY``,
    ``SELF_SHARE`` of it on the same side) and stationary mean ``MEAN_INTENSITY`` per side."""
    jump = branching * DECAY
    market = mm.presets.homework().replace(
        fill_model="exponential",
        arrival_model="hawkes",
        hawkes_decay=DECAY,
        hawkes_self=SELF_SHARE * jump,
        hawkes_cross=(1.0 - SELF_SHARE) * jump,
        hawkes_start="mean",
    )
    return with_hawkes_mean_intensity(market, MEAN_INTENSITY)


def ppo_agent(branching: float, timesteps: int, agents_dir: Path | None, quick: bool) -> Any:
    """A PPO agent trained (or reused) on ``hawkes_market(branching)`` seeing the intensity."""
    sizes = {"num_seeds": 1, "eval_episodes": 200, "progress_episodes": 100} if quick else {}
    run = agents.trained_run(
        f"ppo_hawkes_n{branching:g}",
        phi=PHI,
        features="hawkes",
        arrival_model="hawkes",
        hawkes_decay=DECAY,
        hawkes_self=SELF_SHARE * branching * DECAY,
        hawkes_cross=(1.0 - SELF_SHARE) * branching * DECAY,
        hawkes_mean_intensity=MEAN_INTENSITY,
        hawkes_start="mean",
        total_timesteps=timesteps,
        seed=0,
        out_dir=agents_dir,
        **sizes,
    )
    return agents.load_policy(run)


def cell(market: mm.MarketParams, policies: dict, key: jax.Array, n_episodes: int) -> dict:
    """Every policy on ``market`` with the same key: reward stats and paired differences to
    the Poisson-optimal table (``"poisson_optimal_table"`` in ``policies``)."""
    episode_rewards, out = {}, {}
    for name, policy in policies.items():
        rollout = mm.simulate(market, policy, key, n_episodes)
        reward = np.asarray(rewards.episode_reward(rollout, PHI, params=market), np.float64)
        episode_rewards[name] = reward
        out[name] = {
            "mean_reward": float(reward.mean()),
            "mean_reward_se": float(reward.std(ddof=1) / math.sqrt(n_episodes)),
            "mean_pnl": float(np.mean(rollout.pnl)),
            "std_pnl": float(np.std(np.asarray(rollout.pnl, np.float64), ddof=1)),
            "mean_fills": float(np.mean(rollout.n_bid_fills + rollout.n_ask_fills)),
        }
    table = episode_rewards["poisson_optimal_table"]
    for name, stats in out.items():
        difference = episode_rewards[name] - table
        stats["minus_table"] = float(difference.mean())
        stats["minus_table_se"] = float(difference.std(ddof=1) / math.sqrt(n_episodes))
    return out


def main(argv: list[str] | None = None, *, agents_dir: Path | None = None, **options: Any) -> dict:
    """Run the study; ``options`` override the command line's values (``n_episodes=50``)."""
    args = parse_args(argv, **options)
    args.out.mkdir(parents=True, exist_ok=True)
    key = jax.random.key(args.seed)
    quick = args.n_episodes < 200  # a smoke run: the agent's own evaluations are tiny too
    with Timer() as timer:
        reference = hawkes_poisson_reference(hawkes_market(max(args.branching)))
        solution = optimal.bellman(reference, PHI)
        policies = {
            "avellaneda_stoikov": mm.policies.avellaneda_stoikov(0.1, 1.5),
            "poisson_optimal_table": mm.policies.table(solution),
        }
        if not args.no_ppo:
            top = max(args.branching)
            policies["ppo_intensity"] = ppo_agent(top, args.ppo_timesteps, agents_dir, quick)
        rows = []
        for branching in args.branching:
            print(f"hawkes: branching {branching}", file=sys.stderr)
            market = hawkes_market(branching)
            bid, ask = hawkes_stationary_intensity(market)
            rows.append(
                {
                    "branching": branching,
                    "discrete_branching": float(hawkes_discrete_branching_ratio(market)),
                    "base_intensity": float(market.A),
                    "stationary_mean_intensity": [float(bid), float(ask)],
                    "strategies": cell(market, policies, key, args.n_episodes),
                }
            )
    table_value = solution.value_at(0, 0)
    plot(rows, args.out / "hawkes.png", table_value)
    print(format_table(rows))
    print(f"Poisson-optimal table: exact value {table_value:.3f} on the Poisson market")
    return finish(
        args.out,
        "summary",
        {
            "cells": rows,
            "poisson_optimal_table_exact_value": table_value,
            "notes": {
                "poisson_optimal_table": "optimal.bellman on the Poisson market with the "
                "Hawkes stationary mean intensity per side: the best known (t, q) table, not "
                "the optimum under clustering (exactly optimal at branching 0)",
                "noise": "common random numbers: every strategy sees the same mid paths and "
                "market-order flow in a cell; minus_table_se is the paired standard error",
                "reward": f"pnl - phi sum_t q_(t+1)^2 with phi = {PHI}",
                "ppo_intensity": "trained at the largest branching ratio, evaluated in every "
                "cell (features 'hawkes': the excitations over the base intensity)",
            },
        },
        config={
            **vars(args),
            "phi": PHI,
            "decay": DECAY,
            "self_share": SELF_SHARE,
            "mean_intensity": MEAN_INTENSITY,
        },
        seconds=timer.seconds,
    )


def format_table(rows: list[dict]) -> str:
    names = list(rows[0]["strategies"])
    header = ("branching", "base A", *[f"{name} reward" for name in names], "A-S - table")
    lines = []
    for row in rows:
        stats = row["strategies"]
        rewards_cells = [
            f"{stats[name]['mean_reward']:.2f} ± {stats[name]['mean_reward_se']:.2f}"
            for name in names
        ]
        gap = stats["avellaneda_stoikov"]
        lines.append(
            (
                f"{row['branching']:g}",
                f"{row['base_intensity']:.1f}",
                *rewards_cells,
                f"{gap['minus_table']:.2f} ± {gap['minus_table_se']:.2f}",
            )
        )
    return markdown_table(header, lines)


def plot(rows: list[dict], path: Path, table_value: float) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    branching = [row["branching"] for row in rows]
    for name in rows[0]["strategies"]:
        mean = np.array([row["strategies"][name]["mean_reward"] for row in rows])
        se = np.array([row["strategies"][name]["mean_reward_se"] for row in rows])
        ax.errorbar(branching, mean, yerr=2 * se, marker="o", capsize=3, label=name)
    ax.axhline(table_value, color="k", ls=":", lw=1, label="table's exact value (Poisson)")
    ax.set(
        xlabel="branching ratio (self + cross) / beta",
        ylabel=f"mean episode reward (phi = {PHI}), ± 2 SE",
        title=f"Hawkes flow at a fixed mean intensity {MEAN_INTENSITY:g} per side",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
