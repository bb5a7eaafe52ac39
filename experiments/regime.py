"""Volatility regime switch: sigma doubles from 2 to 4 at step 100 of 200. Does anyone adapt?

``python -m experiments.regime`` runs on the same 500 paths of the switching market:

- naive (spread 1.0) and A-S (gamma 0.1; it keeps using sigma = 2: it does not adapt);
- ``bellman_penalty``: the exact optimum for ``dPnL - phi q^2`` (phi = 0.01). Under this reward
  the expected reward does not depend on sigma (the fill probabilities do not, and the mid's
  noise has mean zero), so the optimum ignores the switch;
- ``bellman_variance``: the exact optimum for the variance-aware reward
  ``dPnL - phi_v sigma_t^2 dt q^2`` solved with the known schedule (phi_v = 0.5, equal to the
  penalty reward before the switch and four times it after);
- ``ppo_penalty``: PPO trained on the homework market, phi = 0.01 (never saw a switch);
- ``ppo_variance``: PPO trained on the switching market with the variance-aware reward
  (its observation carries trailing volatility);
- ``ppo_variance_random``: PPO trained with the variance-aware reward on randomised regimes
  (``PPOConfig.random_regimes``: each training episode switches with probability 1/2 at a step
  uniform in [20, 180] by a factor log-uniform in [0.5, 3]; the draw is not observed), so it
  has to read the regime from trailing volatility rather than memorise step 100. Skip the
  three agents with ``--no-ppo``.

Reports mean PnL and per-episode Sharpe of each half's PnL, max drawdown within the second half,
and the mean quoted spread and |q| before and after the switch (adaptation = a change of
behaviour at step 100). Writes ``results/regime/``: ``table.csv``, ``summary.json``,
``regime.png`` (mean spread and mean |q| over time per strategy).
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
from jaxmm import optimal

PHI = 0.01
PHI_VARIANCE = 0.5  # phi_v sigma^2 dt = 0.5 * 4 * 0.005 = 0.01 before the switch
SWITCH = 100


QUICK = {"n_episodes": 50, "ppo_timesteps": 8192}  # experiments.all --quick


def parse_args(argv: list[str] | None = None, **options: Any) -> argparse.Namespace:
    parser = study_parser("regime", __doc__, n_episodes=500, seed=7)
    add_ppo_arguments(parser)
    return parser.parse(argv, **options)


def switching_market() -> mm.MarketParams:
    return mm.presets.homework().replace(vol_switch_step=SWITCH, vol_switch_factor=2.0)


def strategies(
    *, ppo: bool = True, ppo_timesteps: int = 500_000, agents_dir: Path | None = None
) -> dict:
    market = switching_market()
    rules = {
        "naive": mm.policies.symmetric(0.5),
        "avellaneda_stoikov": mm.policies.avellaneda_stoikov(0.1, 1.5),
        "bellman_penalty": mm.policies.table(optimal.bellman(market, PHI)),
        "bellman_variance": mm.policies.table(
            optimal.bellman(market, PHI_VARIANCE, reward="variance")
        ),
    }
    if ppo:
        penalty = agents.trained_run(
            "ppo_phi0.01", phi=PHI, total_timesteps=ppo_timesteps, seed=0, out_dir=agents_dir
        )
        variance = agents.trained_run(
            "ppo_variance_switch",
            phi=PHI_VARIANCE,
            reward="variance",
            vol_switch_step=SWITCH,
            vol_switch_factor=2.0,
            total_timesteps=ppo_timesteps,
            seed=0,
            out_dir=agents_dir,
        )
        randomised = agents.trained_run(
            "ppo_variance_random",
            phi=PHI_VARIANCE,
            reward="variance",
            random_regimes=True,
            total_timesteps=ppo_timesteps,
            seed=0,
            out_dir=agents_dir,
        )
        rules["ppo_penalty"] = agents.load_policy(penalty)
        rules["ppo_variance"] = agents.load_policy(variance)
        rules["ppo_variance_random"] = agents.load_policy(randomised)
    return rules


def half_stats(paths) -> dict:
    pnl = np.asarray(paths.pnl, np.float64)
    first, second = pnl[:, SWITCH] - pnl[:, 0], pnl[:, -1] - pnl[:, SWITCH]
    later = pnl[:, SWITCH:]
    drawdown = (np.maximum.accumulate(later, axis=1) - later).max(axis=1)
    spread = np.asarray(paths.ask - paths.bid, np.float64)
    finite = np.isfinite(spread)
    q = np.abs(np.asarray(paths.inventory, np.float64))
    out = {}
    for name, values in (("first_half", first), ("second_half", second)):
        ratio, ratio_se = mm.metrics.sharpe(values)
        out[f"{name}_mean_pnl"] = float(values.mean())
        out[f"{name}_mean_pnl_se"] = float(values.std(ddof=1) / np.sqrt(values.size))
        out[f"{name}_sharpe"] = ratio
        out[f"{name}_sharpe_se"] = ratio_se
    out["second_half_max_drawdown"] = float(drawdown.mean())
    for name, window in (("before", slice(0, SWITCH)), ("after", slice(SWITCH, None))):
        block, ok = spread[:, window], finite[:, window]
        out[f"mean_spread_{name}"] = float(block[ok].mean()) if ok.any() else float("nan")
        out[f"mean_abs_q_{name}"] = float(q[:, window].mean())
    return out


def main(argv: list[str] | None = None, *, agents_dir: Path | None = None, **options: Any) -> dict:
    """Run the study; ``options`` override the command line's values (``n_episodes=50``);
    agents train in ``agents_dir`` (default ``experiments.agents.AGENTS_DIR``)."""
    args = parse_args(argv, **options)
    args.out.mkdir(parents=True, exist_ok=True)
    market = switching_market()
    key = jax.random.key(args.seed)
    rows, curves = [], {}
    with Timer() as timer:
        for name, rule in strategies(
            ppo=not args.no_ppo, ppo_timesteps=args.ppo_timesteps, agents_dir=agents_dir
        ).items():
            print(f"regime: {name}", file=sys.stderr)
            rollout = mm.simulate(market, rule, key, args.n_episodes, paths=True)
            rows.append({"strategy": name, **half_stats(rollout.paths)})
            spread = np.asarray(rollout.paths.ask - rollout.paths.bid, np.float64)
            spread = np.where(np.isfinite(spread), spread, np.nan)
            curves[name] = (
                np.nanmean(spread, axis=0),
                np.abs(np.asarray(rollout.paths.inventory)).mean(axis=0),
            )
    write_rows_csv(args.out / "table.csv", rows)
    plot(curves, float(market.dt), args.out / "regime.png")
    print(format_table(rows))
    return finish(
        args.out,
        "summary",
        {"table": rows},
        config={**vars(args), "phi": PHI, "phi_variance": PHI_VARIANCE, "market": market},
        seconds=timer.seconds,
    )


def format_table(rows: list[dict]) -> str:
    header = (
        "strategy", "PnL 1st half", "PnL 2nd half", "Sharpe 1st", "Sharpe 2nd", "max DD 2nd",
        "spread before / after", "mean abs q before / after",
    )  # fmt: skip
    return markdown_table(
        header,
        [
            (
                r["strategy"],
                f"{r['first_half_mean_pnl']:.2f} ± {r['first_half_mean_pnl_se']:.2f}",
                f"{r['second_half_mean_pnl']:.2f} ± {r['second_half_mean_pnl_se']:.2f}",
                f"{r['first_half_sharpe']:.2f}",
                f"{r['second_half_sharpe']:.2f}",
                f"{r['second_half_max_drawdown']:.2f}",
                f"{r['mean_spread_before']:.2f} / {r['mean_spread_after']:.2f}",
                f"{r['mean_abs_q_before']:.2f} / {r['mean_abs_q_after']:.2f}",
            )
            for r in rows
        ],
    )


def plot(curves: dict, dt: float, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for name, (spread, inventory) in curves.items():
        axes[0].plot(np.arange(spread.size) * dt, spread, label=name)
        axes[1].plot(np.arange(inventory.size) * dt, inventory, label=name)
    for ax, label in ((axes[0], "mean quoted spread (price units)"), (axes[1], "mean |q|")):
        ax.axvline(SWITCH * dt, color="k", linestyle=":", label="sigma 2 -> 4")
        ax.set(xlabel="time (session units)", ylabel=label, title=f"{label} over the session")
    axes[0].set_ylim(0, 6)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
