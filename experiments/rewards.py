"""Reward design: PPO trained with phi = 0.01 against phi = 0.1.

``python -m experiments.rewards`` trains (or reuses, ``experiments.agents``) the two agents and
reports: their training curves (deterministic-policy reward on fixed evaluation keys against
environment steps, as a fraction of each reward's exact optimum), which converges faster (the
first evaluation reaching 95% of its final fraction of the optimum), and which is more
conservative on the same 1,000 test paths (mean quoted spread, mean |q| over the session, mean
|q_T|, std of terminal PnL). Writes ``results/rewards/`` (``summary.json``, ``table.csv``,
``training_curves.png``, ``behaviour.png``).
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

PHIS = (0.01, 0.1)


QUICK = {"n_episodes": 50, "ppo_timesteps": 8192}  # experiments.all --quick


def parse_args(argv: list[str] | None = None, **options: Any) -> argparse.Namespace:
    parser = study_parser("rewards", __doc__, n_episodes=1000, seed=5)
    add_ppo_arguments(parser, optional=False)
    return parser.parse(argv, **options)


def convergence_step(steps: np.ndarray, fraction: np.ndarray, level: float = 0.95) -> int:
    """First evaluation step at which the curve reaches ``level`` of its final value."""
    target = level * fraction[-1] if fraction[-1] > 0 else fraction[-1]
    reached = np.nonzero(fraction >= target)[0]
    return int(steps[reached[0]]) if reached.size else int(steps[-1])


def main(argv: list[str] | None = None, *, agents_dir: Path | None = None, **options: Any) -> dict:
    """Run the study; ``options`` override the command line's values (``n_episodes=50``);
    agents train in ``agents_dir`` (default ``experiments.agents.AGENTS_DIR``)."""
    args = parse_args(argv, **options)
    args.out.mkdir(parents=True, exist_ok=True)
    params = mm.presets.homework()
    key = jax.random.key(args.seed)
    rows, curves = [], {}
    with Timer() as timer:
        for phi in PHIS:
            run = agents.trained_run(
                f"ppo_phi{phi:g}",
                phi=phi,
                total_timesteps=args.ppo_timesteps,
                seed=0,
                out_dir=agents_dir,
            )
            metrics = json.loads((run / "metrics.json").read_text())
            optimum = optimal.bellman(params, phi).value_at()
            steps = np.array([e["env_steps"] for e in metrics["progress_evals"]])
            fraction = np.array(
                [np.max(e["mean_reward"]) / optimum for e in metrics["progress_evals"]]
            )
            curves[phi] = (steps, fraction)
            rollout = mm.simulate(params, agents.load_policy(run), key, args.n_episodes, paths=True)
            spread = np.asarray(rollout.paths.ask - rollout.paths.bid, np.float64)
            reward = np.asarray(rollout.reward(phi), np.float64)
            rows.append(
                {
                    "phi": phi,
                    "final_fraction_of_optimum": float(fraction[-1]),
                    "steps_to_95pct_of_final": convergence_step(steps, fraction),
                    "test_reward": float(reward.mean()),
                    "test_fraction_of_optimum": float(reward.mean() / optimum),
                    "mean_spread": float(np.nanmean(np.where(np.isfinite(spread), spread, np.nan))),
                    "mean_abs_q_session": float(np.abs(np.asarray(rollout.paths.inventory)).mean()),
                    "mean_abs_q_T": float(np.abs(np.asarray(rollout.inventory)).mean()),
                    "mean_pnl": float(np.asarray(rollout.pnl).mean()),
                    "std_pnl": float(np.asarray(rollout.pnl).std(ddof=1)),
                    "wall_seconds": metrics.get("wall_seconds"),
                }
            )
    write_rows_csv(args.out / "table.csv", rows)
    plot(curves, rows, args.out)
    faster = min(rows, key=lambda r: r["steps_to_95pct_of_final"])["phi"]
    conservative = min(rows, key=lambda r: r["mean_abs_q_session"])["phi"]
    for r in rows:
        print(
            f"phi = {r['phi']:g}: {100 * r['test_fraction_of_optimum']:.1f}% of the optimum, "
            f"95% of final after {r['steps_to_95pct_of_final']:,} steps, mean spread "
            f"{r['mean_spread']:.2f}, mean |q| {r['mean_abs_q_session']:.2f}, "
            f"std PnL {r['std_pnl']:.2f}"
        )
    return finish(
        args.out,
        "summary",
        {
            "table": rows,
            "faster_convergence_phi": faster,
            "more_conservative_phi": conservative,
        },
        config={**vars(args), "market": params},
        seconds=timer.seconds,
    )


def plot(curves: dict, rows: list[dict], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for phi, (steps, fraction) in curves.items():
        ax.plot(steps, 100 * fraction, "o-", label=f"phi = {phi:g}")
    ax.set(
        xlabel="environment steps",
        ylabel="% of the exact optimum (deterministic policy)",
        title="PPO training curves by reward",
        ylim=(0, 105),
    )
    ax.legend()
    fig.tight_layout()
    save_figure(fig, out / "training_curves.png")
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    labels = [f"phi = {r['phi']:g}" for r in rows]
    for ax, stat, title in zip(
        axes,
        ("mean_spread", "mean_abs_q_session", "std_pnl"),
        ("mean quoted spread", "mean |q| over the session", "std of terminal PnL"),
        strict=True,
    ):
        ax.bar(labels, [r[stat] for r in rows], color=["tab:blue", "tab:orange"])
        ax.set(title=title, ylabel=title)
    fig.suptitle("Which reward makes the agent more conservative (same 1,000 test paths)")
    fig.tight_layout()
    save_figure(fig, out / "behaviour.png")


if __name__ == "__main__":
    main()
