"""Optimal quotes: A-S, GLFT (closed form and exact), Cartea-Jaimungal and the exact optimum.

``python -m experiments.optimal_quotes`` solves the homework market exactly and writes
``results/optimal_quotes/``:

- ``exact_rewards.csv`` / ``summary.json``: the exact expected episode reward (no Monte Carlo
  noise; ``jaxmm.optimal.evaluate``) of every strategy under the reward ``dPnL - phi q^2`` for
  each ``phi``, and its fraction of the Bellman optimum; a Monte Carlo check of the optimum;
- ``depths_vs_inventory.png``: bid/ask depths at ``t = 0`` against inventory, per ``phi``;
- ``depths_vs_time.png``: bid/ask depths at ``q = +2`` against time, per ``phi``;
- ``fd_convergence.png`` (+ rows in ``summary.json``): the explicit finite-difference scheme
  converging to the matrix-exponential solution at first order in ``dt``;
- ``glft_gap.png``: how far the GLFT closed form is from the exact GLFT quotes over the session;
- ``risk.csv``: Brownian VaR/CVaR of holding an inventory, and empirical terminal-PnL VaR/CVaR
  of each strategy from a Monte Carlo run.

Model-matched risk parameters: the environment's per-step penalty ``phi q^2`` is a running
penalty ``phi / dt`` per time unit (Cartea-Jaimungal), and a CARA or mean-variance investor
with ``(gamma / 2) sigma^2 q^2 = phi / dt`` has ``gamma = 2 phi / (sigma^2 dt)``.
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
    markdown_table,
    save_figure,
    study_parser,
    write_csv,
    write_rows_csv,
)
from jaxmm import optimal

PHIS = (0.0, 0.01, 0.1)
AS_GAMMAS = (0.01, 0.1, 0.5, 1.0, 10.0)
GLFT_GAMMAS = (0.1, 1.0, 10.0)


QUICK = {"n_episodes": 200, "q_max": 6}  # experiments.all --quick


def parse_args(argv: list[str] | None = None, **options: Any) -> argparse.Namespace:
    parser = study_parser(
        "optimal_quotes",
        __doc__,
        n_episodes=20_000,
        min_episodes=2,
        episodes_help="Monte Carlo episodes (sessions)",
    )
    parser.add_argument(
        "--q-max", type=int, default=20, help="inventory bound of the GLFT/CJ tables, units"
    )
    parser.add_argument(
        "--naive-spread", type=float, default=1.0, help="naive quoter's total spread, price units"
    )
    args = parser.parse(argv, **options)
    if args.q_max < 2:
        parser.error(f"--q-max must be >= 2, got {args.q_max}")
    if args.naive_spread <= 0:
        parser.error(f"--naive-spread must be > 0, got {args.naive_spread}")
    return args


def matched_gamma(params: mm.MarketParams, phi: float) -> float:
    """The CARA / mean-variance risk aversion whose running penalty equals ``phi q^2`` a step."""
    return 2.0 * phi / (float(params.sigma) ** 2 * float(params.dt))


def strategies(
    params: mm.MarketParams, phi: float, *, naive_spread: float = 1.0, q_max: int = 20
) -> dict:
    """The compared rules (policies or tables); the phi-dependent ones are matched to ``phi``."""
    sigma, A, k, T = (float(params.sigma), float(params.A), float(params.k), float(params.T))
    rules = {"naive": mm.policies.symmetric(naive_spread / 2)}
    for gamma in AS_GAMMAS:
        rules[f"avellaneda_stoikov(gamma={gamma:g})"] = mm.policies.avellaneda_stoikov(gamma, k)
    for gamma in GLFT_GAMMAS:
        rules[f"glft_asymptotic(gamma={gamma:g})"] = mm.policies.glft(gamma, k, A, sigma)
        rules[f"glft_exact(gamma={gamma:g})"] = optimal.glft(
            sigma, A, k, gamma, q_max, T, n_steps=params.n_steps
        )
    rules["cartea_jaimungal(phi/dt)"] = optimal.cartea_jaimungal(
        A, k, phi / float(params.dt), q_max, T, n_steps=params.n_steps
    )
    return rules


def exact_rewards(
    params: mm.MarketParams, *, naive_spread: float = 1.0, q_max: int = 20
) -> tuple[list[dict], dict]:
    rows, optima = [], {}
    for phi in PHIS:
        best = optimal.bellman(params, phi)
        optima[phi] = best
        optimum = best.value_at()
        wide = optimal.bellman(params, phi, depth_bounds=(-5.0, 5.0))
        rules = {
            **strategies(params, phi, naive_spread=naive_spread, q_max=q_max),
            "bellman": best,
            "bellman(depths in [-5, 5])": wide,
        }
        for name, rule in rules.items():
            value = optimal.evaluate(params, rule, phi).value_at()
            rows.append(
                {"phi": phi, "strategy": name, "exact_reward": value, "fraction": value / optimum}
            )
        print(f"  phi = {phi:g}: optimum {optimum:.4f}", file=sys.stderr)
    return rows, optima


def monte_carlo_check(params, optima, *, seed: int = 0, n_episodes: int = 20_000) -> dict:
    """Simulated reward of each Bellman policy against its exact value (3 standard errors)."""
    out = {}
    for phi, best in optima.items():
        rollout = mm.simulate(params, mm.policies.table(best), jax.random.key(seed), n_episodes)
        reward = np.asarray(rollout.reward(phi), np.float64)
        stderr = reward.std(ddof=1) / np.sqrt(reward.size)
        out[str(phi)] = {
            "exact": best.value_at(),
            "monte_carlo": reward.mean(),
            "stderr": stderr,
            "z": (reward.mean() - best.value_at()) / stderr,
        }
    return out


def fd_convergence(params: mm.MarketParams, phi: float, q_max: int) -> list[dict]:
    A, k, T = float(params.A), float(params.k), float(params.T)
    exact = optimal.cartea_jaimungal(A, k, phi / float(params.dt), q_max, T, n_steps=1)
    rows = []
    for n_steps in (200, 400, 800, 1600, 3200, 6400):
        fd = optimal.cartea_jaimungal_fd(A, k, phi / float(params.dt), q_max, T, n_steps=n_steps)
        rows.append(
            {
                "n_steps": n_steps,
                "dt": T / n_steps,
                "max_value_error_t0": float(np.abs(fd.value[0] - exact.value[0]).max()),
                "max_depth_error_t0": float(
                    np.nanmax(np.abs(fd.bid_depth[0] - exact.bid_depth[0]))
                ),
            }
        )
    return rows


def plot_depths(params, optima, out: Path, *, q_max: int = 20) -> None:
    sigma, A, k, T = (float(params.sigma), float(params.A), float(params.k), float(params.T))
    phis = [phi for phi in PHIS if phi > 0]
    fig_q, axes_q = plt.subplots(1, len(phis), figsize=(6 * len(phis), 4.5), squeeze=False)
    fig_t, axes_t = plt.subplots(1, len(phis), figsize=(6 * len(phis), 4.5), squeeze=False)
    grid = np.arange(-8, 9)
    times = np.arange(params.n_steps) * float(params.dt)
    for ax_q, ax_t, phi in zip(axes_q[0], axes_t[0], phis, strict=True):
        gamma = matched_gamma(params, phi)
        tables = {
            f"A-S (gamma={gamma:g})": mm.policies.avellaneda_stoikov(gamma, k),
            "A-S (gamma=0.1, homework)": mm.policies.avellaneda_stoikov(0.1, k),
            f"GLFT closed form (gamma={gamma:g})": mm.policies.glft(gamma, k, A, sigma),
            f"GLFT exact (gamma={gamma:g})": optimal.glft(
                sigma, A, k, gamma, q_max, T, n_steps=params.n_steps
            ),
            "Bellman optimum": optima[phi],
        }
        for (label, rule), color in zip(tables.items(), plt.cm.tab10.colors, strict=False):
            bids, asks = optimal.tabulate(rule, params, grid)
            ax_q.plot(grid, bids[0], color=color, label=label)
            ax_q.plot(grid, asks[0], color=color, linestyle="--")
            column = int(np.searchsorted(grid, 2))
            ax_t.plot(times, bids[:, column], color=color, label=label)
            ax_t.plot(times, asks[:, column], color=color, linestyle="--")
        ax_q.set(
            title=f"phi = {phi:g}: depths at t = 0 (bid solid, ask dashed)",
            xlabel="inventory q",
            ylabel="depth (price units)",
            ylim=(-1, 5.5),
        )
        ax_t.set(
            title=f"phi = {phi:g}: depths at q = +2 (bid solid, ask dashed)",
            xlabel="time (session units)",
            ylabel="depth (price units)",
            ylim=(-1, 5.5),
        )
        ax_q.legend(fontsize=7)
        ax_t.legend(fontsize=7)
    for fig, name in ((fig_q, "depths_vs_inventory.png"), (fig_t, "depths_vs_time.png")):
        fig.tight_layout()
        save_figure(fig, out / name)


def plot_fd(rows: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 4))
    dts = np.array([row["dt"] for row in rows])
    errors = np.array([row["max_value_error_t0"] for row in rows])
    ax.loglog(dts, errors, "o-", label="explicit FD vs expm")
    ax.loglog(dts, errors[-1] * dts / dts[-1], "k:", label="slope 1")
    ax.set(xlabel="dt", ylabel="max |h_FD(0, q) - h(0, q)|", title="FD scheme convergence")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def plot_glft_gap(params: mm.MarketParams, q_max: int, path: Path) -> dict:
    sigma, A, k = float(params.sigma), float(params.A), float(params.k)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    gaps = {}
    for gamma in GLFT_GAMMAS:
        exact = optimal.glft(sigma, A, k, gamma, q_max, 1.0, n_steps=params.n_steps)
        closed = optimal.glft_asymptotic(sigma, A, k, gamma, q_max, 1.0, n_steps=params.n_steps)
        gap = optimal.quote_gap(closed, exact)
        gaps[f"{gamma:g}"] = {"at_t0": float(gap["bid"][0]), "max": gap["max"]}
        ax.semilogy(exact.times, np.maximum(gap["bid"], 1e-12), label=f"gamma = {gamma:g}")
    ax.set(
        xlabel="time (session units)",
        ylabel="max over q of |closed form - exact| bid",
        title="GLFT closed form vs exact",
    )
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    return gaps


def risk_table(params: mm.MarketParams) -> dict[str, np.ndarray]:
    """Brownian VaR/CVaR of holding 1..5 units for 10 steps (price units, losses positive)."""
    horizon = 10 * float(params.dt)
    positions = np.arange(1, 6)
    columns = {
        "inventory": positions,
        "var95_10_steps": optimal.inventory_var(positions, float(params.sigma), horizon, 0.95),
        "cvar95_10_steps": optimal.inventory_cvar(positions, float(params.sigma), horizon, 0.95),
        "var99_10_steps": optimal.inventory_var(positions, float(params.sigma), horizon, 0.99),
        "cvar99_10_steps": optimal.inventory_cvar(positions, float(params.sigma), horizon, 0.99),
    }
    return columns


def main(argv: list[str] | None = None, **options: Any) -> dict:
    """Run the study; ``options`` override the command line's values (``n_episodes=200``)."""
    args = parse_args(argv, **options)
    params = mm.presets.homework()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    print("Exact optima at the homework parameters", file=sys.stderr)
    with Timer() as solve_timer:
        rows, optima = exact_rewards(params, naive_spread=args.naive_spread, q_max=args.q_max)
    mc = monte_carlo_check(params, optima, seed=args.seed, n_episodes=args.n_episodes)
    fd_rows = fd_convergence(params, 0.01, min(args.q_max, 10))
    plot_depths(params, optima, out, q_max=args.q_max)
    plot_fd(fd_rows, out / "fd_convergence.png")
    glft_gaps = plot_glft_gap(params, args.q_max, out / "glft_gap.png")
    empirical = {}
    key = jax.random.key(args.seed)
    for name, rule in {
        "naive": mm.policies.symmetric(args.naive_spread / 2),
        "avellaneda_stoikov(gamma=0.1)": mm.policies.avellaneda_stoikov(0.1, float(params.k)),
        "bellman(phi=0.01)": mm.policies.table(optima[0.01]),
    }.items():
        summary = mm.metrics.summarize(mm.simulate(params, rule, key, args.n_episodes))
        empirical[name] = {
            stat: summary[stat]
            for stat in ("mean_pnl", "std_pnl", "var_95", "cvar_95", "var_99", "cvar_99")
        }
    write_csv(out / "risk.csv", risk_table(params))
    write_rows_csv(out / "exact_rewards.csv", rows)
    print(format_rewards(rows))
    for phi, check in mc.items():
        print(
            f"phi = {phi}: Bellman exact {check['exact']:.4f}, Monte Carlo "
            f"{check['monte_carlo']:.4f} +- {check['stderr']:.4f} (z = {check['z']:+.2f})"
        )
    return finish(
        out,
        "summary",
        {
            "exact_rewards": rows,
            "bellman_monte_carlo_check": mc,
            "fd_convergence": fd_rows,
            "glft_closed_form_gap": glft_gaps,
            "empirical_pnl_risk": empirical,
            "solve_seconds": solve_timer.seconds,
        },
        config={**vars(args), "params": params, "phis": PHIS},
    )


def format_rewards(rows: list[dict]) -> str:
    """Markdown table: strategies as rows, phi as columns (exact reward, % of optimum)."""
    names = list(dict.fromkeys(row["strategy"] for row in rows))
    lookup = {(row["strategy"], row["phi"]): row for row in rows}
    rows = [
        [name]
        + [
            f"{lookup[name, phi]['exact_reward']:.2f} ({100 * lookup[name, phi]['fraction']:.1f}%)"
            for phi in PHIS
        ]
        for name in names
    ]
    header = ["strategy", *(f"phi = {phi:g}" for phi in PHIS)]
    return markdown_table(header, rows, align="l" * len(header))


if __name__ == "__main__":
    main()
