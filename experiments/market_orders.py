"""Market orders as a control: where the exact joint optimum crosses the spread, and what it gains.

``python -m experiments.market_orders`` solves the homework market (inventory limit
``q_max = 20``) exactly with ``mm.optimal.bellman`` twice for each penalty ``phi``: with quotes
only, and with the joint action (quotes x {sell, none, buy} one unit at ``S_t -+ mo_cost``,
``MarketParams.mo_cost``) for several ``mo_cost`` values. It reports

- the exact value ``V_0(0)`` of both, and the value gained by market orders (price units and %);
- the inventory thresholds ``q*(t)`` (``optimal.market_order_thresholds``): the optimum sells
  one unit at every ``q >= q*(t)`` and buys at every ``q <= -q*(t)`` (symmetric market);
- a Monte Carlo check of each joint table in the simulator (``--n-episodes`` episodes on one key,
  mean reward against the exact value, with its standard error) and the mean number of market
  orders per episode (from the inventory path: ``dq - bid_fill + ask_fill``).

``--terminal-penalty a`` adds ``-a q_T^2`` to both optima (and to the simulated reward). Writes
``results/market_orders/``: ``summary.json`` and ``thresholds.png`` (``q*(t)`` over the
session, one panel per ``phi``, one line per ``mo_cost``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import jax
import matplotlib.pyplot as plt
import numpy as np

import jaxmm as mm
from experiments.common import Timer, finish, markdown_table, save_figure, study_parser
from jaxmm import optimal

Q_MAX = 20.0
QUICK = {"n_episodes": 50}  # experiments.all --quick


def parse_args(argv: list[str] | None = None, **options: Any) -> argparse.Namespace:
    parser = study_parser("market_orders", __doc__, n_episodes=2000, seed=0)
    parser.add_argument(
        "--costs", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0], help="mo_cost values"
    )
    parser.add_argument(
        "--phis",
        type=float,
        nargs="+",
        default=[0.01, 0.1],
        help="inventory penalties of the reward, per unit of inventory squared per step",
    )
    parser.add_argument(
        "--impact", type=float, default=0.0, help="mo_permanent_impact (0: none), price units"
    )
    parser.add_argument(
        "--terminal-penalty",
        type=float,
        default=0.0,
        help="liquidation penalty terminal_penalty * q_T^2 of both optima (price units)",
    )
    return parser.parse(argv, **options)


def market(cost: float | None = None, impact: float = 0.0) -> mm.MarketParams:
    """The homework market with ``q_max = Q_MAX``, and market orders at ``cost`` if given."""
    params = mm.presets.homework().replace(q_max=Q_MAX)
    if cost is None:
        return params
    return params.replace(mo_cost=cost, mo_permanent_impact=impact or None)


def market_orders_per_episode(rollout: mm.Rollout) -> np.ndarray:
    """Units of market orders sent in each episode: ``sum |dq - bid_fill + ask_fill|``."""
    paths = rollout.paths
    change = np.diff(np.asarray(paths.inventory, np.float64), axis=1)
    orders = change - np.asarray(paths.bid_fill) + np.asarray(paths.ask_fill)
    return np.abs(orders).sum(axis=1)


def study(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    key = jax.random.key(args.seed)
    rows, curves = [], {}
    for phi in args.phis:
        quotes_only = optimal.bellman(
            market(), phi, terminal_penalty=args.terminal_penalty
        ).value_at(0, 0)
        for cost in args.costs:
            print(f"market_orders: phi={phi} mo_cost={cost}", file=sys.stderr)
            params = market(cost, args.impact)
            solution = optimal.bellman(params, phi, terminal_penalty=args.terminal_penalty)
            value = solution.value_at(0, 0)
            thresholds = optimal.market_order_thresholds(solution)
            rollout = mm.simulate(
                params, optimal.table_policy(solution), key, args.n_episodes, paths=True
            )
            reward = np.asarray(mm.rewards.episode_reward(rollout, phi), np.float64)
            reward -= args.terminal_penalty * np.asarray(rollout.inventory, np.float64) ** 2
            orders = market_orders_per_episode(rollout)
            sell = thresholds["sell"][:-1]
            curves[(phi, cost)] = sell
            rows.append(
                {
                    "phi": phi,
                    "mo_cost": cost,
                    "value_quotes_only": quotes_only,
                    "value_joint": value,
                    "gain": value - quotes_only,
                    "gain_pct": 100.0 * (value - quotes_only) / abs(quotes_only),
                    "threshold_t0": _finite(sell[0]),
                    "threshold_mid": _finite(sell[sell.size // 2]),
                    "threshold_min": _finite(np.nanmin(sell)) if np.isfinite(sell).any() else None,
                    "mc_reward": float(reward.mean()),
                    "mc_reward_se": float(reward.std(ddof=1) / np.sqrt(reward.size)),
                    "mc_market_orders": float(orders.mean()),
                    "mc_market_orders_se": float(orders.std(ddof=1) / np.sqrt(orders.size)),
                    "sell_threshold": [_finite(x) for x in thresholds["sell"]],
                    "buy_threshold": [_finite(x) for x in thresholds["buy"]],
                }
            )
    return rows, curves


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def format_table(rows: list[dict[str, Any]]) -> str:
    header = (
        "phi", "mo_cost", "V quotes only", "V joint", "gain", "gain %", "q*(0)", "q*(T/2)",
        "MC reward ± se", "MOs / episode",
    )  # fmt: skip

    def threshold(x: float | None) -> str:
        return "never" if x is None else f"{x:.0f}"

    return markdown_table(
        header,
        [
            (
                f"{r['phi']:g}",
                f"{r['mo_cost']:g}",
                f"{r['value_quotes_only']:.3f}",
                f"{r['value_joint']:.3f}",
                f"{r['gain']:.3f}",
                f"{r['gain_pct']:.2f}",
                threshold(r["threshold_t0"]),
                threshold(r["threshold_mid"]),
                f"{r['mc_reward']:.2f} ± {r['mc_reward_se']:.2f}",
                f"{r['mc_market_orders']:.2f}",
            )
            for r in rows
        ],
    )


def plot(curves: dict, phis: list[float], costs: list[float], path) -> None:
    dt = float(market().dt)
    fig, axes = plt.subplots(1, len(phis), figsize=(5.5 * len(phis), 4.2), squeeze=False)
    for ax, phi in zip(axes[0], phis, strict=True):
        for cost in costs:
            sell = curves[(phi, cost)]
            ax.step(np.arange(sell.size) * dt, sell, where="post", label=f"mo_cost {cost:g}")
        ax.set(
            xlabel="time (session units)",
            ylabel="sell threshold q*(t) (buy at -q*)",
            title=f"market-order thresholds, phi = {phi:g}",
            ylim=(0, Q_MAX + 0.5),
        )
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None, **options: Any) -> dict:
    """Run the study; ``options`` override the command line's values (``n_episodes=50``)."""
    args = parse_args(argv, **options)
    args.out.mkdir(parents=True, exist_ok=True)
    with Timer() as timer:
        rows, curves = study(args)
    plot(curves, args.phis, args.costs, args.out / "thresholds.png")
    print(format_table(rows))
    return finish(
        args.out,
        "summary",
        {"table": rows},
        config={**vars(args), "q_max": Q_MAX, "market": market()},
        seconds=timer.seconds,
    )


if __name__ == "__main__":
    main()
