"""Stress tests: where Avellaneda-Stoikov breaks, and what the exact optimum does there.

``python -m experiments.stress`` runs 1,000 episodes (same keys in every scenario) of A-S
(gamma 0.1, k 1.5), the naive quoter (spread 1.0), the Bellman-optimal table of the baseline
market (phi = 0.01) and the Bellman optimum re-solved for each scenario (it knows the
scenario; an upper reference, not a fair competitor) under:

- ``baseline``: the homework market;
- ``adverse_selection``: the mid jumps 0.02 against the market maker on every fill;
- ``one_sided_flow``: 70% of the flow hits the bid (intensity x1.4 bid, x0.6 ask) while the mid
  drifts down (mu = -2 per session): the market maker buys into a falling market;
- ``volatility_spike``: sigma doubles from step 100 of 200;
- and the sweep ``adverse_selection`` in {0, 0.01, 0.05}.

Then A-S alone (gamma 0.1, k 1.5; same keys) under each extension of the market step,
one at a time on the homework market: ``heston`` (stochastic variance with the baseline's mean,
vol-of-variance 1.5, correlation -0.5), ``jumps`` (10 normal jumps of std 1 per session),
``tick=0.1``, ``fees`` (maker 0.02, taker 0.1 per unit), ``latency=5`` (quotes act 5 steps after
they were computed, at their stale prices), ``order_sizes`` (geometric, mean 2) and
``risk_controls`` (q_max 10, spread floor 1.6, loss limit 5). The exact optimum does not model
these (``optimal.bellman`` refuses them), so only A-S runs there.

Writes ``results/stress/``: ``table.csv`` (scenario x strategy: mean PnL, Sharpe, max drawdown,
mean |q_T|, % profitable, with standard errors), ``summary.json`` (config, seed, the table),
``stress.png`` (Sharpe and mean PnL by scenario) and ``extensions.png`` (A-S under each
extension against the baseline).
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
    grouped_bars,
    markdown_table,
    save_figure,
    study_parser,
    write_rows_csv,
)
from jaxmm import optimal

PHI = 0.01
STATS = ("mean_pnl", "sharpe", "max_drawdown", "mean_abs_q", "pct_profitable")


def scenarios() -> dict[str, mm.MarketParams]:
    base = mm.presets.homework()
    return {
        "baseline": base,
        "adverse_selection": base.replace(adverse_selection=0.02),
        "one_sided_flow": base.replace(bid_intensity_mult=1.4, ask_intensity_mult=0.6, mu=-2.0),
        "volatility_spike": base.replace(vol_switch_step=100, vol_switch_factor=2.0),
        "adverse_selection=0.01": base.replace(adverse_selection=0.01),
        "adverse_selection=0.05": base.replace(adverse_selection=0.05),
    }


def extension_scenarios() -> dict[str, mm.MarketParams]:
    """One market per extension of the step, everything else as in the baseline."""
    base = mm.presets.homework()
    return {
        "heston": base.replace(
            vol_model="heston", v0=1.0, theta_v=1.0, kappa_v=5.0, xi_v=1.5, rho_v=-0.5
        ),
        "jumps": base.replace(
            jump_model="compound_poisson", jump_intensity=10.0, jump_mean=0.0, jump_std=1.0
        ),
        "tick=0.1": base.replace(tick=0.1),
        "fees": base.replace(maker_fee=0.02, taker_fee=0.1),
        "latency=5": base.replace(latency=5),
        "order_sizes": base.replace(order_size="geometric", order_size_mean=2.0),
        "risk_controls": base.replace(q_max=10.0, spread_floor=1.6, loss_limit=5.0),
    }


QUICK = {"n_episodes": 50}  # experiments.all --quick


def parse_args(argv: list[str] | None = None, **options: Any) -> argparse.Namespace:
    return study_parser("stress", __doc__, n_episodes=1000).parse(argv, **options)


def stats_row(scenario: str, strategy: str, summary: dict) -> dict:
    """The table's row: ``STATS`` and their standard errors (NaN where there is none)."""
    row = {"scenario": scenario, "strategy": strategy}
    for stat in STATS:
        row[stat] = summary[stat]
        row[f"{stat}_se"] = summary.get(f"{stat}_se", float("nan"))
    return row


def main(argv: list[str] | None = None, **options: Any) -> dict:
    """Run the study; ``options`` override the command line's values (``n_episodes=50``)."""
    args = parse_args(argv, **options)
    args.out.mkdir(parents=True, exist_ok=True)
    key = jax.random.key(args.seed)
    baseline_optimum = mm.policies.table(optimal.bellman(mm.presets.homework(), PHI))
    rows = []
    with Timer() as timer:
        for name, params in scenarios().items():
            print(f"stress: {name}", file=sys.stderr)
            rules = {
                "avellaneda_stoikov": mm.policies.avellaneda_stoikov(0.1, 1.5),
                "naive": mm.policies.symmetric(0.5),
                "bellman_baseline": baseline_optimum,
                "bellman_scenario": mm.policies.table(optimal.bellman(params, PHI)),
            }
            for strategy, rule in rules.items():
                summary = mm.metrics.summarize(mm.simulate(params, rule, key, args.n_episodes))
                rows.append(stats_row(name, strategy, summary))
        for name, params in extension_scenarios().items():
            print(f"stress: {name}", file=sys.stderr)
            rule = mm.policies.avellaneda_stoikov(0.1, 1.5)
            summary = mm.metrics.summarize(mm.simulate(params, rule, key, args.n_episodes))
            rows.append(stats_row(name, "avellaneda_stoikov", summary))
    write_rows_csv(args.out / "table.csv", rows)
    original = [row for row in rows if row["scenario"] in scenarios()]
    plot(original, args.out / "stress.png")
    plot_extensions(rows, args.out / "extensions.png")
    print(format_table(rows))
    return finish(
        args.out,
        "summary",
        {"table": rows},
        config={
            **vars(args),
            "phi": PHI,
            "scenarios": scenarios(),
            "extension_scenarios": extension_scenarios(),
        },
        seconds=timer.seconds,
    )


def format_table(rows: list[dict]) -> str:
    header = (
        "scenario", "strategy", "mean PnL", "Sharpe", "max drawdown", "mean abs q_T",
        "% profitable",
    )  # fmt: skip
    return markdown_table(
        header,
        [
            (
                row["scenario"],
                row["strategy"],
                f"{row['mean_pnl']:.2f} ± {row['mean_pnl_se']:.2f}",
                f"{row['sharpe']:.2f} ± {row['sharpe_se']:.2f}",
                f"{row['max_drawdown']:.2f}",
                f"{row['mean_abs_q']:.2f}",
                f"{row['pct_profitable']:.1f}",
            )
            for row in rows
        ],
        align="llrrrrr",
    )


def plot(rows: list[dict], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for ax, stat, label in (
        (axes[0], "sharpe", "per-episode Sharpe"),
        (axes[1], "mean_pnl", "mean terminal PnL"),
    ):
        grouped_bars(ax, rows, "scenario", stat, rotation=20, ha="right", fontsize=8)
        ax.set(ylabel=label, title=f"{label} by scenario (1 SE bars)")
        ax.axhline(0, color="k", linewidth=0.5)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def plot_extensions(rows: list[dict], path: Path) -> None:
    """A-S's Sharpe and mean PnL in the baseline and under each extension (1 SE bars)."""
    names = ["baseline", *extension_scenarios()]
    lookup = {
        row["scenario"]: row
        for row in rows
        if row["strategy"] == "avellaneda_stoikov" and row["scenario"] in names
    }
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    x = np.arange(len(names))
    for ax, stat, label in (
        (axes[0], "sharpe", "per-episode Sharpe"),
        (axes[1], "mean_pnl", "mean terminal PnL"),
    ):
        values = [lookup[name][stat] for name in names]
        errors = [lookup[name][f"{stat}_se"] for name in names]
        ax.bar(x[:1], values[:1], 0.7, yerr=errors[:1], color="tab:gray", label="baseline market")
        ax.bar(x[1:], values[1:], 0.7, yerr=errors[1:], color="tab:blue", label="one extension on")
        ax.axhline(
            lookup["baseline"][stat],
            color="k",
            linewidth=0.8,
            linestyle="--",
            label="baseline level",
        )
        ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
        ax.set(
            xlabel="market extension",
            ylabel=label,
            title=f"A-S (gamma 0.1, k 1.5): {label} by extension (1 SE bars)",
        )
    axes[0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
