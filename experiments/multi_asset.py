"""Multi-asset market making: the portfolio A-S rule against quoting each asset alone.

``python -m experiments.multi_asset`` simulates, for 2 assets (sigma = 2, 1) and 3 assets
(sigma = 2, 1.5, 1) with equicorrelated mids (every pair has correlation rho), two rules on the
same paths (common random numbers, ``jaxmm.multi_asset``):

- ``portfolio``: ``portfolio_avellaneda_stoikov(gamma)``, reservation prices
  ``r = S - gamma (T - t) Sigma q`` from the portfolio covariance;
- ``alone``: ``per_asset(avellaneda_stoikov(gamma))``, each asset with its own ``q_i`` and
  ``sigma_i`` (correlation ignored).

Every asset is the homework market (A = 100, k = 1.5, T = 1, 200 steps, linear fills). For each
(number of assets, rho, gamma) it reports both rules' mean terminal portfolio PnL, its std, the
per-episode Sharpe (mean / std across episodes), the mean-variance objective
``E[PnL] - (gamma/2) Var[PnL]``, the inventory risk ``E[sum_t q' Sigma q dt]`` and the penalised
PnL ``E[PnL - (gamma/2) sum_t q' Sigma q dt]``, with standard errors, and the paired differences
``portfolio - alone`` with paired standard errors. Writes ``results/multi_asset/``:
``comparison.csv``, ``summary.json`` (config, seed, table, environment) and
``objective_vs_rho.png`` (both rules' objective and inventory risk against rho, and the paired
differences of the objective and of the Sharpe ratio). ``--quick`` runs 2 assets at rho in
{0, 0.9} only.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import jax
import matplotlib.pyplot as plt
import numpy as np

import jaxmm as mm
from experiments.common import Timer, finish, save_figure, study_parser, write_rows_csv
from jaxmm import multi_asset as ma

SIGMAS = {2: (2.0, 1.0), 3: (2.0, 1.5, 1.0)}
# equicorrelation is positive definite for rho in (-1 / (n - 1), 1)
RHOS = {2: (-0.9, -0.5, 0.0, 0.5, 0.9), 3: (-0.45, 0.0, 0.5, 0.9)}
QUICK_RHOS = {2: (0.0, 0.9)}
GAMMAS = (0.1, 0.5)
STATS = (
    "mean_pnl",
    "std_pnl",
    "sharpe",
    "mean_variance",
    "inventory_variance",
    "penalised_pnl",
    "max_drawdown",
    "mean_abs_q",
    "marketable_share",
)


QUICK = {"quick": True}  # a smoke run


def parse_args(argv: list[str] | None = None, **options: Any) -> argparse.Namespace:
    parser = study_parser("multi_asset", __doc__)
    parser.add_argument(
        "--n-episodes",
        type=int,
        default=None,
        help="simulated sessions per cell (default 20000; quick 2000)",
    )
    parser.add_argument(
        "--gammas",
        type=float,
        nargs="+",
        default=list(GAMMAS),
        help="A-S risk aversions, per price unit",
    )
    parser.add_argument("--quick", action="store_true", help="2 assets, rho in {0, 0.9}")
    args = parser.parse(argv, **options)
    if args.n_episodes is None:
        args.n_episodes = 2000 if args.quick else 20_000
    if args.n_episodes < 10:
        parser.error(f"--n-episodes must be >= 10, got {args.n_episodes}")
    if any(g < 0 for g in args.gammas):
        parser.error(f"--gammas must be >= 0, got {args.gammas}")
    return args


def equicorrelation(n_assets: int, rho: float) -> np.ndarray:
    """``[n, n]`` correlation matrix with unit diagonal and ``rho`` everywhere else."""
    return np.full((n_assets, n_assets), rho) + (1.0 - rho) * np.eye(n_assets)


def cell(n_assets: int, rho: float, gamma: float, *, n_episodes: int, seed: int) -> dict:
    """Both rules on the same ``n_episodes`` paths (``jax.random.key(seed)``): one row of the
    comparison table."""
    params = ma.make_params(
        mm.presets.homework(), equicorrelation(n_assets, rho), sigma=SIGMAS[n_assets]
    )
    key = jax.random.key(seed)
    portfolio = ma.simulate_multi(params, ma.portfolio_avellaneda_stoikov(gamma), key, n_episodes)
    alone = ma.simulate_multi(
        params, ma.per_asset(mm.policies.avellaneda_stoikov(gamma)), key, n_episodes
    )
    row: dict = {"n_assets": n_assets, "rho": rho, "gamma": gamma}
    summaries = {
        "portfolio": ma.summarize_multi(portfolio, gamma),
        "alone": ma.summarize_multi(alone, gamma),
        "difference": ma.paired_difference(portfolio, alone, gamma),
    }
    for prefix, summary in summaries.items():
        for stat in STATS:
            row[f"{prefix}_{stat}"] = summary[stat]
            row[f"{prefix}_{stat}_se"] = summary[f"{stat}_se"]
    return row


def main(argv: list[str] | None = None, **options: Any) -> dict:
    """Run the study; ``options`` override the command line's values (``quick=True``)."""
    args = parse_args(argv, **options)
    args.out.mkdir(parents=True, exist_ok=True)
    grid = QUICK_RHOS if args.quick else RHOS
    rows = []
    with Timer() as timer:
        for n_assets, rhos in grid.items():
            for gamma in args.gammas:
                for rho in rhos:
                    rows.append(
                        cell(n_assets, rho, gamma, n_episodes=args.n_episodes, seed=args.seed)
                    )
    write_rows_csv(args.out / "comparison.csv", rows)
    plot(rows, args.out)
    for r in rows:
        print(
            f"n = {r['n_assets']}, rho = {r['rho']:+.2f}, gamma = {r['gamma']:g}: "
            f"objective portfolio - alone = {r['difference_mean_variance']:+.3f} "
            f"± {r['difference_mean_variance_se']:.3f}, inventory risk "
            f"{r['portfolio_inventory_variance']:.2f} vs {r['alone_inventory_variance']:.2f}, "
            f"mean PnL {r['difference_mean_pnl']:+.3f} ± {r['difference_mean_pnl_se']:.3f}"
        )
    config = {
        **vars(args),
        "out": str(args.out),
        "market_per_asset": mm.presets.homework(),
        "sigmas": {str(n): SIGMAS[n] for n in grid},
        "rhos": {str(n): grid[n] for n in grid},
        "correlation": "equicorrelation: every pair of assets has correlation rho",
        "key": f"jax.random.key({args.seed}) for every cell and both rules",
    }
    definitions = {
        "sharpe": "per episode: mean / std of terminal portfolio PnL across episodes",
        "mean_variance": "E[PnL] - (gamma/2) Var[PnL] of the terminal portfolio PnL",
        "inventory_variance": "E[sum_t q_{t+1}' Sigma q_{t+1} dt], price units^2",
        "penalised_pnl": "E[PnL - (gamma/2) sum_t q_{t+1}' Sigma q_{t+1} dt]",
        "difference": "portfolio - alone on the same paths; paired standard errors",
        "standard_errors": "delta method (influence values), n_episodes i.i.d. episodes",
    }
    return finish(
        args.out,
        "summary",
        {"definitions": definitions, "table": rows},
        config=config,
        seconds=timer.seconds,
    )


def plot(rows: list[dict], out: Path) -> None:
    sizes = sorted({r["n_assets"] for r in rows})
    gammas = sorted({r["gamma"] for r in rows})
    panels = (
        ("mean_variance", "E[PnL] - (gamma/2) Var[PnL]"),
        ("inventory_variance", "E[sum q' Sigma q dt] (price^2)"),
        ("difference_mean_variance", "objective: portfolio - alone (paired)"),
        ("difference_sharpe", "Sharpe: portfolio - alone (paired)"),
    )
    fig, axes = plt.subplots(
        len(panels),
        len(sizes),
        figsize=(max(6.5, 5.5 * len(sizes)), 3.4 * len(panels)),
        squeeze=False,
    )
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for column, n_assets in enumerate(sizes):
        for row_index, (stat, label) in enumerate(panels):
            ax = axes[row_index, column]
            for g_index, gamma in enumerate(gammas):
                cells = sorted(
                    (r for r in rows if r["n_assets"] == n_assets and r["gamma"] == gamma),
                    key=lambda r: r["rho"],
                )
                rho = [r["rho"] for r in cells]
                colour = colours[g_index % len(colours)]
                if stat.startswith("difference"):
                    ax.errorbar(
                        rho,
                        [r[stat] for r in cells],
                        yerr=[2 * r[f"{stat}_se"] for r in cells],
                        fmt="o-",
                        color=colour,
                        capsize=3,
                        label=f"gamma = {gamma:g} (±2 SE)",
                    )
                    ax.axhline(0.0, color="grey", lw=0.8)
                    continue
                for rule, style in (("portfolio", "o-"), ("alone", "s--")):
                    ax.errorbar(
                        rho,
                        [r[f"{rule}_{stat}"] for r in cells],
                        yerr=[2 * r[f"{rule}_{stat}_se"] for r in cells],
                        fmt=style,
                        color=colour,
                        capsize=3,
                        label=f"{rule}, gamma = {gamma:g}",
                    )
            ax.set(xlabel="correlation rho", ylabel=label, title=f"{n_assets} assets: {label}")
            ax.legend(fontsize=7)
    fig.suptitle("Portfolio A-S vs each asset alone\n(same paths, error bars ±2 SE)")
    fig.tight_layout()
    save_figure(fig, out / "objective_vs_rho.png")


if __name__ == "__main__":
    main()
