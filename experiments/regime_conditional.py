"""Regime-conditional performance: which strategy does well on which kind of path.

``python -m experiments.regime_conditional`` runs naive (spread 1.0), A-S (gamma 0.1), the
Bellman optimum (phi = 0.01) and the PPO agent (phi = 0.01; skip with ``--no-ppo``) on the same
500 test episodes of the homework market, segments the episodes by their realised mid path and
reports, per regime and strategy, mean terminal PnL, per-episode Sharpe and mean max drawdown:

- ``low_vol`` / ``high_vol``: realised volatility (std of mid increments / sqrt(dt)) in the
  bottom / top quartile of the 500 paths;
- ``trending``: ``|S_T - S_0| > sigma sqrt(T)`` (a move of more than one session sigma);
- ``mean_reverting``: lag-1 autocorrelation of the increments in the bottom quartile;
- ``all``: every episode.

The homework market's increments are i.i.d. Gaussian, so these "regimes" are the luck of the
draw, not different markets: the study shows how much a strategy's result depends on the path.
Writes ``results/regime_conditional/``: ``table.csv``, ``summary.json`` (config, seed, regime
sizes), ``sharpe_by_regime.png`` (grouped bars with 1-SE error bars).
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
    grouped_bars,
    markdown_table,
    save_figure,
    study_parser,
    write_rows_csv,
)
from jaxmm import optimal
from jaxmm.simulation import Paths

PHI = 0.01


QUICK = {"n_episodes": 80, "ppo_timesteps": 8192}  # experiments.all --quick


def parse_args(argv: list[str] | None = None, **options: Any) -> argparse.Namespace:
    parser = study_parser(
        "regime_conditional",
        __doc__,
        n_episodes=500,
        seed=2024,
        min_episodes=None,
        seed_help="test episodes' key",
    )
    add_ppo_arguments(parser)
    args = parser.parse(argv, **options)
    if args.n_episodes < 40:
        parser.error(f"--n-episodes must be >= 40 (quartiles), got {args.n_episodes}")
    return args


def regimes(paths: Paths, params: mm.MarketParams) -> dict:
    """Boolean masks ``[n]`` of the regimes, from the mid paths ``[n, N + 1]``."""
    mid = np.asarray(paths.mid, np.float64)
    increments = np.diff(mid, axis=1)
    realised = increments.std(axis=1, ddof=1) / np.sqrt(float(params.dt))
    centred = increments - increments.mean(axis=1, keepdims=True)
    autocorrelation = (centred[:, 1:] * centred[:, :-1]).sum(axis=1) / (centred**2).sum(axis=1)
    move = np.abs(mid[:, -1] - mid[:, 0])
    low, high = np.quantile(realised, [0.25, 0.75])
    return {
        "all": np.ones(mid.shape[0], bool),
        "low_vol": realised <= low,
        "high_vol": realised >= high,
        "trending": move > float(params.sigma) * np.sqrt(float(params.T)),
        "mean_reverting": autocorrelation <= np.quantile(autocorrelation, 0.25),
    }


def strategies(
    params: mm.MarketParams,
    *,
    ppo: bool = True,
    ppo_timesteps: int = 500_000,
    agents_dir: Path | None = None,
) -> dict:
    rules = {
        "naive": mm.policies.symmetric(0.5),
        "avellaneda_stoikov": mm.policies.avellaneda_stoikov(0.1, float(params.k)),
        "bellman": mm.policies.table(optimal.bellman(params, PHI)),
    }
    if ppo:
        run = agents.trained_run(
            "ppo_phi0.01", phi=PHI, total_timesteps=ppo_timesteps, seed=0, out_dir=agents_dir
        )
        rules["ppo"] = agents.load_policy(run)
    return rules


def stats(pnl: np.ndarray, drawdown: np.ndarray) -> dict:
    ratio, ratio_se = mm.metrics.sharpe(pnl)
    return {
        "n": int(pnl.size),
        "mean_pnl": float(pnl.mean()),
        "mean_pnl_se": float(pnl.std(ddof=1) / np.sqrt(pnl.size)),
        "sharpe": ratio,
        "sharpe_se": ratio_se,
        "max_drawdown": float(drawdown.mean()),
    }


def main(argv: list[str] | None = None, *, agents_dir: Path | None = None, **options: Any) -> dict:
    """Run the study; ``options`` override the command line's values (``n_episodes=80``);
    the agent trains in ``agents_dir`` (default ``experiments.agents.AGENTS_DIR``)."""
    args = parse_args(argv, **options)
    args.out.mkdir(parents=True, exist_ok=True)
    params = mm.presets.homework()
    key = jax.random.key(args.seed)
    rows, masks = [], None
    with Timer() as timer:
        for name, rule in strategies(
            params, ppo=not args.no_ppo, ppo_timesteps=args.ppo_timesteps, agents_dir=agents_dir
        ).items():
            print(f"regime_conditional: {name}", file=sys.stderr)
            rollout = mm.simulate(params, rule, key, args.n_episodes, paths=True)
            if masks is None:
                masks = regimes(rollout.paths, params)
            pnl = np.asarray(rollout.pnl, np.float64)
            drawdown = np.asarray(rollout.max_drawdown, np.float64)
            for regime, mask in masks.items():
                rows.append(
                    {"regime": regime, "strategy": name, **stats(pnl[mask], drawdown[mask])}
                )
    write_rows_csv(args.out / "table.csv", rows)
    plot(rows, args.out / "sharpe_by_regime.png")
    print(format_table(rows))
    return finish(
        args.out,
        "summary",
        {
            "regime_sizes": {regime: int(mask.sum()) for regime, mask in masks.items()},
            "table": rows,
        },
        config={**vars(args), "phi": PHI, "market": params},
        seconds=timer.seconds,
    )


def format_table(rows: list[dict]) -> str:
    return markdown_table(
        ("regime", "strategy", "episodes", "mean PnL", "Sharpe", "mean max drawdown"),
        [
            (
                r["regime"],
                r["strategy"],
                r["n"],
                f"{r['mean_pnl']:.2f} ± {r['mean_pnl_se']:.2f}",
                f"{r['sharpe']:.2f} ± {r['sharpe_se']:.2f}",
                f"{r['max_drawdown']:.2f}",
            )
            for r in rows
        ],
        align="llrrrr",
    )


def plot(rows: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 4.5))
    grouped_bars(ax, rows, "regime", "sharpe")
    ax.set(
        xlabel="regime of the test path",
        ylabel="per-episode Sharpe (mean / std of terminal PnL)",
        title="Sharpe by regime and strategy (1 SE bars)",
    )
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
