"""Calibration study: (A, k) and sigma from a real trade tape, and (gamma, kappa) by gradients.

``python -m experiments.calibration`` writes ``results/calibration/``:

- AMZN, NASDAQ, 2012-06-21 (LOBSTER's free level-1 sample, read from ``--data``; the part is
  skipped, with the reason recorded, when the files are absent): the market orders of the tape
  turned into intensity records (``calibrate.tape_records``), the maximum-likelihood ``(A, k)``
  with nominal and time-block-robust standard errors and profile-likelihood intervals, per
  session and per second; realised volatility with a signature plot; the goodness of fit of
  ``A exp(-k delta)`` to the empirical exceedance rates; the inverse calibration by gradients
  against the MLE; and the loop closed: Avellaneda-Stoikov and the exact (Bellman) optimum
  simulated in the calibrated market.
- The homework market: ``(gamma, kappa)`` of A-S tuned by gradients through the relaxed simulator
  for three objectives (mean - lambda variance, per-episode Sharpe, CARA certainty equivalent),
  each measured on the exact simulator against the best cell of a grid search; and the inverse
  calibration of ``(A, k, sigma)`` on simulated data against the MLE.

Files: ``summary.json`` (config, seed, every number), ``exceedance.csv``, ``signature.csv``,
``grid.csv``, ``tuning.csv``, and the figures ``intensity_fit.png``, ``likelihood_surface.png``,
``volatility_signature.png``, ``tuning_heatmap.png``.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np

import jaxmm as mm
from experiments.common import (
    Timer,
    add_options,
    check_minimum,
    data_dir,
    finish,
    progress,
    save_figure,
    study_parser,
    write_csv,
)
from jaxmm import calibrate, lobster, market
from jaxmm.policies import AvellanedaStoikov

SESSION_SECONDS = 23_400.0  # 09:30-16:00
OBJECTIVES = (  # (objective, risk aversion, label)
    ("mean_variance", 0.2, "mean - 0.1 var"),  # risk_aversion a: mean - (a/2) var
    ("sharpe", 0.0, "Sharpe (per episode)"),
    ("cara", 0.1, "CARA CE, a = 0.1"),
)


def default_data_dir() -> Path:
    """``$JAXMM_LOBSTER_DIR``, else the AMZN day in ``common.data_dir()``."""
    env = os.environ.get("JAXMM_LOBSTER_DIR")
    if env:
        return Path(env)
    return data_dir() / "lobster-amzn-2012-06-21"


QUICK = {  # experiments.all --quick
    "grid_size": 3,
    "grid_episodes": 200,
    "tune_iterations": 4,
    "tune_episodes": 64,
    "eval_episodes": 500,
    "inverse_episodes": 8,
    "inverse_iterations": 5,
    "loop_episodes": 20,
    "loop_steps": 200,
}


def parse_args(argv: list[str] | None = None, **options: Any) -> argparse.Namespace:
    parser = study_parser("calibration", __doc__)
    add_options(
        parser,
        ("--data", Path, default_data_dir(), "LOBSTER day folder (its CSV pair or zip)"),
        ("--max-depth", float, 0.20, "depth grid top, dollars"),
        ("--depth-step", float, 0.01, "depth grid step, dollars"),
        ("--block-seconds", float, 300.0, "length of the robust-error time blocks, seconds"),
        ("--vol-seconds", float, 60.0, "sampling interval for sigma, seconds"),
        ("--loop-gamma", float, 0.01, "A-S risk aversion gamma, per dollar"),
        ("--loop-q-max", int, 30, "inventory limit, shares"),
        ("--loop-episodes", int, 10_000, "simulated sessions of the loop"),
        ("--loop-steps", int, 23_400, "steps per session (23,400: one a second)"),
        ("--grid-size", int, 25, "(gamma, kappa) grid cells per axis"),
        ("--grid-episodes", int, 20_000, "simulated sessions per grid cell"),
        ("--tune-iterations", int, 200, "gradient steps of the tuning"),
        ("--tune-episodes", int, 1024, "sessions per gradient step"),
        ("--temperature", float, 0.1, "temperature of the relaxed fills, dimensionless"),
        ("--eval-episodes", int, 100_000, "sessions of the final exact-fill evaluation"),
        ("--inverse-episodes", int, 256, "sessions per inverse-fit step"),
        ("--inverse-iterations", int, 300, "gradient steps of the inverse fit"),
    )
    args = parser.parse(argv, **options)
    positive = (
        "max_depth depth_step block_seconds vol_seconds loop_gamma loop_q_max loop_episodes "
        "loop_steps tune_iterations inverse_episodes inverse_iterations temperature"
    )
    check_minimum(parser, args, positive.split())
    at_least_two = ("grid_size", "grid_episodes", "tune_episodes", "eval_episodes")
    check_minimum(parser, args, at_least_two, 2, strict=False)
    return args


# ------------------------------------------------------------------------------------ AMZN


def fit_summary(fit: calibrate.IntensityFit, session_seconds: float) -> dict[str, Any]:
    """The fit per session and per second (``A`` and its errors scale, ``k`` does not)."""
    out = {}
    for unit, ratio in (("per_session", 1.0), ("per_second", 1.0 / session_seconds)):
        scaled = fit.rescale_time(ratio)
        out[unit] = {
            "A": scaled.A,
            "stderr_A": scaled.stderr_A,
            "stderr_A_robust": scaled.stderr_A_robust,
            "ci_A": scaled.ci_A,
            "ci_A_robust": scaled.ci_A_robust,
        }
    out["k_per_dollar"] = {
        "k": fit.k,
        "stderr_k": fit.stderr_k,
        "stderr_k_robust": fit.stderr_k_robust,
        "ci_k": fit.ci_k,
        "ci_k_robust": fit.ci_k_robust,
    }
    out["loglik"] = fit.loglik
    out["n_fills"] = fit.n_fills
    out["n_records"] = fit.n_records
    out["n_clusters"] = fit.n_clusters
    out["cov_session"] = fit.cov
    out["cov_robust_session"] = fit.cov_robust
    return out


def plot_intensity(rates, fit, gof, path: Path, title: str) -> None:
    depths = np.linspace(0.0, rates.depths.max(), 200)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True, height_ratios=(2, 1))
    top.errorbar(
        rates.depths,
        rates.rate,
        yerr=2 * rates.stderr,
        fmt="o",
        ms=4,
        color="black",
        label="empirical exceedance rate, +-2 robust s.e.",
    )
    top.plot(
        depths,
        fit.A * np.exp(-fit.k * depths),
        color="tab:red",
        label=f"MLE A exp(-k delta): A = {fit.A:.0f}/session, k = {fit.k:.1f}/$",
    )
    top.set(yscale="log", ylabel="fills per session of one quote", title=title)
    top.legend(fontsize=8)
    centres = np.append(0.5 * (gof.edges[:-1] + gof.edges[1:]), gof.edges[-1])
    bottom.bar(centres, gof.residuals, width=0.8 * np.diff(gof.edges).min(), color="tab:blue")
    bottom.axhline(0, color="grey", lw=0.6)
    for level in (-2, 2):
        bottom.axhline(level, color="grey", lw=0.6, ls="--")
    bottom.set(
        xlabel="depth delta from the mid, dollars",
        ylabel="Pearson residual",
        title=f"reach bins: chi2 = {gof.statistic:.0f} on {gof.dof} dof (last bin open-ended)",
    )
    fig.tight_layout()
    save_figure(fig, path)


def _ellipse(centre: np.ndarray, cov: np.ndarray, drop: float) -> np.ndarray:
    """Points of ``(x - c)' cov^-1 (x - c) = 2 drop``: ``f[2, 200]``."""
    angles = np.linspace(0, 2 * np.pi, 200)
    circle = np.stack([np.cos(angles), np.sin(angles)])
    return centre[:, None] + np.linalg.cholesky(cov) @ circle * math.sqrt(2 * drop)


def plot_surface(records, fit, block_seconds: float, path: Path) -> dict[str, Any]:
    """Log-likelihood around the MLE: a wide view at the scale of the robust errors (robust
    region and adjusted profile intervals) and a close view at the nominal scale (the
    likelihood's own region and profile intervals)."""
    drop_joint = 0.5 * 5.991  # chi-square(2) 95%: the joint region
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    centre = np.array([fit.A, fit.k])
    views = (
        ("wide: +-4 robust s.e.", fit.stderr_A_robust, fit.stderr_k_robust, True),
        ("close: +-4 nominal s.e.", fit.stderr_A, fit.stderr_k, False),
    )
    for ax, (title, se_A, se_k, robust) in zip(axes, views, strict=True):
        A_grid = np.maximum(fit.A + np.linspace(-4, 4, 61) * se_A, 1e-9)
        k_grid = fit.k + np.linspace(-4, 4, 61) * se_k
        A_mesh, k_mesh = np.meshgrid(A_grid, k_grid)
        loglik = calibrate.intensity_loglik(A_mesh, k_mesh, *records[:3])
        deficit = np.maximum(fit.loglik - loglik, 1e-3)
        mesh = ax.contourf(A_mesh, k_mesh, np.log10(deficit), levels=20, cmap="viridis_r")
        fig.colorbar(mesh, ax=ax, label="log10(max loglik - loglik)")
        ax.contour(A_mesh, k_mesh, deficit, levels=[drop_joint], colors="white", linewidths=1.5)
        ax.plot([], [], color="white", label="likelihood 95% region (nominal)")
        if robust:
            ax.plot(
                *_ellipse(centre, fit.cov_robust, drop_joint),
                color="tab:red",
                lw=1.5,
                label=f"robust 95% region ({block_seconds:g} s blocks)",
            )
        intervals = (fit.ci_A_robust, fit.ci_k_robust) if robust else (fit.ci_A, fit.ci_k)
        for bound in intervals[0]:
            ax.axvline(bound, color="orange", lw=1, ls="--")
        for bound in intervals[1]:
            ax.axhline(bound, color="orange", lw=1, ls="--")
        which = "robust-adjusted" if robust else "nominal"
        ax.plot([], [], color="orange", ls="--", label=f"95% profile intervals ({which})")
        ax.plot(fit.A, fit.k, "w*", ms=12, mec="black", label="MLE")
        ax.set(
            xlabel="A, fills per session at depth 0",
            ylabel="k, per dollar",
            title=title,
            xlim=(A_grid[0], A_grid[-1]),
            ylim=(k_grid[0], k_grid[-1]),
        )
        ax.legend(fontsize=7, loc="upper right")
    fig.suptitle("AMZN 2012-06-21: Poisson log-likelihood of the tape records")
    fig.tight_layout()
    save_figure(fig, path)
    return {"joint_region_loglik_drop": drop_joint, "grid_points_per_view": 61 * 61}


def volatility_signature(day, intervals: list[float]) -> list[dict[str, float]]:
    times, mids = lobster.mid_path(day)
    rows = []
    for seconds in intervals:
        grid = np.arange(times[0] + seconds, day.end + 1e-9, seconds)
        sampled = np.concatenate([[mids[0]], calibrate.sample_previous_tick(times, mids, grid)])
        estimate = calibrate.realized_volatility(sampled, seconds / SESSION_SECONDS)
        rows.append(
            {
                "interval_seconds": seconds,
                "sigma_per_sqrt_session": estimate.sigma,
                "stderr_per_sqrt_session": estimate.stderr,
                "sigma_per_sqrt_second": estimate.sigma / math.sqrt(SESSION_SECONDS),
                "stderr_per_sqrt_second": estimate.stderr / math.sqrt(SESSION_SECONDS),
                "n_increments": estimate.n_increments,
            }
        )
    return rows


def plot_signature(rows, chosen: float, path: Path) -> None:
    seconds = np.array([r["interval_seconds"] for r in rows])
    sigma = np.array([r["sigma_per_sqrt_session"] for r in rows])
    stderr = np.array([r["stderr_per_sqrt_session"] for r in rows])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.errorbar(seconds, sigma, yerr=2 * stderr, fmt="o-", color="black", capsize=3)
    ax.axvline(chosen, color="tab:red", ls="--", lw=1, label=f"reported: {chosen:g} s")
    ax.set(
        xscale="log",
        xlabel="sampling interval, seconds",
        ylabel="sigma, dollars per sqrt(session)",
        title="AMZN 2012-06-21: realised volatility of the mid (+-2 s.e.)",
    )
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def close_the_loop(
    fit,
    sigma: float,
    s0: float,
    key,
    *,
    gamma: float = 0.01,
    q_max: int = 30,
    n_steps: int = 23_400,
    n_episodes: int = 10_000,
) -> dict[str, Any]:
    """A-S (risk aversion ``gamma``, per dollar) and the exact Bellman optimum in the calibrated
    market (inventory limit ``q_max``, ``n_steps`` a session), on the same ``n_episodes``."""
    params = mm.MarketParams(
        S0=s0,
        sigma=sigma,
        T=1.0,
        A=fit.A,
        k=fit.k,
        q_max=float(q_max),
        n_steps=n_steps,
        fill_model="exponential",
    ).validate()
    phi = gamma / 2.0  # penalty (gamma / 2) sigma^2 dt q^2 per step: CARA(gamma) to first order
    with Timer() as timer:
        solution = mm.optimal.bellman(params, phi, reward="variance", depth_bounds=(-1.0, 2.0))
    strategies = {
        "avellaneda_stoikov": mm.policies.avellaneda_stoikov(gamma),
        "optimal_bellman": mm.policies.table(solution),
    }
    penalty_per_q2 = phi * sigma**2 * float(params.dt)
    out: dict[str, Any] = {
        "market": params,
        "gamma_per_dollar": gamma,
        "phi": phi,
        "reward": "PnL - (gamma/2) sigma^2 dt sum_t q_{t+1}^2 (per session, dollars)",
        "bellman_seconds": timer.seconds,
        "bellman_value_at_start": float(solution.value_at(0, 0)),
        "strategies": {},
    }
    rewards = {}
    for name, policy in strategies.items():
        progress(f"  closing the loop: {name}, {n_episodes:,} sessions")
        rollout = mm.simulate(params, policy, key, n_episodes)
        stats = mm.metrics.summarize(rollout)
        reward = np.asarray(rollout.pnl, np.float64) - penalty_per_q2 * np.asarray(
            rollout.sum_sq_inventory, np.float64
        )
        rewards[name] = reward
        out["strategies"][name] = {
            "mean_reward": float(reward.mean()),
            "stderr_reward": float(reward.std(ddof=1) / math.sqrt(reward.size)),
            **{
                key_: stats[key_]
                for key_ in (
                    "mean_pnl",
                    "mean_pnl_se",
                    "std_pnl",
                    "sharpe",
                    "sharpe_se",
                    "mean_abs_q",
                    "n_fills",
                    "mean_spread",
                    "max_drawdown",
                )
            },
        }
    gap = rewards["optimal_bellman"] - rewards["avellaneda_stoikov"]
    out["optimal_minus_as_reward"] = {
        "mean": float(gap.mean()),
        "stderr_paired": float(gap.std(ddof=1) / math.sqrt(gap.size)),
    }
    return out


def amzn_study(
    key,
    *,
    data: Path,
    out: Path,
    max_depth: float,
    depth_step: float,
    block_seconds: float,
    vol_seconds: float,
    inverse_episodes: int,
    inverse_iterations: int,
    loop_gamma: float,
    loop_q_max: int,
    loop_steps: int,
    loop_episodes: int,
) -> dict[str, Any]:
    """The AMZN part: the LOBSTER day in ``data``, files written into ``out``; the flags of the
    same names (``parse_args``) set the depth grid, error blocks, volatility sampling, the
    inverse calibration and the closed loop."""
    day = lobster.read_lobster(data)
    orders = lobster.market_orders(day)
    depths = np.round(np.arange(0.0, max_depth + 1e-9, depth_step), 6)
    fits = fit_tape(day, orders, depths, block_seconds)
    records, fit = fits["records"], fits["fit"]
    rates = calibrate.exceedance_rates(records)
    gof = calibrate.reach_goodness_of_fit(orders.reach, depths, fit.k)
    write_fit_outputs(out, orders, rates, fit, gof)
    surface = plot_surface(records, fit, block_seconds, out / "likelihood_surface.png")
    volatility, chosen = amzn_volatility(day, vol_seconds, out)

    progress("AMZN: inverse calibration by gradients")
    inverse = amzn_inverse(
        rates,
        fit,
        chosen,
        depths.size,
        vol_seconds,
        jax.random.fold_in(key, 1),
        n_episodes=inverse_episodes,
        n_iterations=inverse_iterations,
    )

    progress("AMZN: closing the loop (exact optimum and A-S in the calibrated market)")
    s0 = float(lobster.mid_path(day)[1][0])
    loop = close_the_loop(
        fit,
        volatility["sigma_per_sqrt_session"],
        s0,
        jax.random.fold_in(key, 2),
        gamma=loop_gamma,
        q_max=loop_q_max,
        n_steps=loop_steps,
        n_episodes=loop_episodes,
    )
    return {
        "data": data_summary(day, orders, data),
        "method": {
            "records": "tape_records: per time block and depth, the number of market orders "
            "reaching that depth (reach = side * (worst price - prior mid)); both sides pooled, "
            "exposure 2 x block length",
            "depth_grid_dollars": depths,
            "block_seconds": block_seconds,
            "standard_errors": "nominal: observed Fisher information (assumes independent "
            "records: too small, records share orders and orders cluster); robust: sandwich "
            "over time blocks -- quote these",
        },
        "intensity": fit_summary(fit, day.end - day.start),
        "robust_stderr_by_block_length": fits["sensitivity"],
        "intensity_by_side": fits["sides"],
        "goodness_of_fit": goodness_of_fit_summary(gof, rates, fit, fits["windows"]),
        "likelihood_surface": surface,
        "volatility": volatility,
        "inverse_calibration": inverse,
        "closed_loop": loop,
    }


def fit_tape(day, orders, depths: np.ndarray, block_seconds: float) -> dict[str, Any]:
    """The MLE of ``(A, k)`` on the tape's records (``block_seconds`` blocks), and the same fit
    under other block lengths, per side and on depth grids starting further out."""
    session = day.end - day.start

    def tape(grid: np.ndarray, block: float = block_seconds, side: str = "both"):
        """The tape's records on a depth grid (one call site for every fit below)."""
        return calibrate.tape_records(
            orders.times,
            orders.price,
            orders.mid,
            orders.side,
            grid,
            start=day.start,
            end=day.end,
            block_length=block,
            time_unit=session,
            side=side,
        )

    records = tape(depths)
    fit = calibrate.fit_intensity(*records)
    sensitivity = {}
    for block in (60.0, 300.0, 1800.0):
        other = calibrate.fit_intensity(*tape(depths, block=block))
        sensitivity[f"{block:g}s"] = {
            "stderr_A_robust": other.stderr_A_robust,
            "stderr_k_robust": other.stderr_k_robust,
            "n_clusters": other.n_clusters,
        }
    sides = {}
    for side in ("bid", "ask"):
        side_fit = calibrate.fit_intensity(*tape(depths, side=side))
        sides[side] = {
            "A_per_session": side_fit.A,
            "stderr_A_robust": side_fit.stderr_A_robust,
            "k": side_fit.k,
            "stderr_k_robust": side_fit.stderr_k_robust,
        }
    windows = []  # where does the exponential hold? fits on depth grids starting further out
    for lowest in (0.0, 0.03, 0.05, 0.08):
        grid = depths[depths >= lowest - 1e-9]
        window_fit = calibrate.fit_intensity(*tape(grid))
        window_gof = calibrate.reach_goodness_of_fit(orders.reach, grid, window_fit.k)
        windows.append(
            {
                "lowest_depth": lowest,
                "A_per_session": window_fit.A,
                "stderr_A_robust": window_fit.stderr_A_robust,
                "k": window_fit.k,
                "stderr_k_robust": window_fit.stderr_k_robust,
                "chi2": window_gof.statistic,
                "dof": window_gof.dof,
                "p_value": window_gof.p_value,
            }
        )
    return {
        "records": records,
        "fit": fit,
        "sensitivity": sensitivity,
        "sides": sides,
        "windows": windows,
    }


def write_fit_outputs(out: Path, orders, rates, fit, gof) -> None:
    """``exceedance.csv`` and ``intensity_fit.png``: empirical rates against the fit."""
    write_csv(
        out / "exceedance.csv",
        {
            "depth": rates.depths,
            "rate_per_session": rates.rate,
            "stderr_robust": rates.stderr,
            "fitted_rate": fit.A * np.exp(-fit.k * rates.depths),
            "bin_observed": gof.observed,
            "bin_expected": gof.expected,
            "pearson_residual": gof.residuals,
        },
    )
    title = f"AMZN 2012-06-21: {orders.times.size:,} market orders, both sides pooled"
    plot_intensity(rates, fit, gof, out / "intensity_fit.png", title)


def amzn_volatility(day, vol_seconds: float, out: Path) -> tuple[dict[str, Any], dict]:
    """Realised volatility sampled every ``vol_seconds`` and the signature plot around it
    (``signature.csv``, ``volatility_signature.png``): the payload's ``volatility``, and the
    signature's row at ``vol_seconds``."""
    intervals = [1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0]
    if vol_seconds not in intervals:
        intervals = sorted([*intervals, vol_seconds])
    signature = volatility_signature(day, intervals)
    write_csv(out / "signature.csv", {k: [r[k] for r in signature] for k in signature[0]})
    plot_signature(signature, vol_seconds, out / "volatility_signature.png")
    chosen = next(r for r in signature if r["interval_seconds"] == vol_seconds)
    return {
        "interval_seconds": vol_seconds,
        "sigma_per_sqrt_session": chosen["sigma_per_sqrt_session"],
        "stderr_per_sqrt_session": chosen["stderr_per_sqrt_session"],
        "sigma_per_sqrt_second": chosen["sigma_per_sqrt_second"],
        "stderr_per_sqrt_second": chosen["stderr_per_sqrt_second"],
        "signature": signature,
    }, chosen


def amzn_inverse(
    rates,
    fit,
    chosen: dict[str, float],
    n_depths: int,
    vol_seconds: float,
    key,
    *,
    n_episodes: int,
    n_iterations: int,
) -> dict[str, Any]:
    """``(A, k, sigma)`` by gradients on the tape's moments (``chosen``: the signature's row of
    the volatility used), against the MLE: the payload's ``inverse_calibration``."""
    dt_seconds = 0.02
    steps = n_depths * 50
    sigma = chosen["sigma_per_sqrt_session"]
    template = mm.MarketParams(
        S0=100.0,
        sigma=sigma,
        A=fit.A,
        k=fit.k,
        T=steps * dt_seconds / SESSION_SECONDS,
        n_steps=steps,
        fill_model="exponential",
    )
    estimate = calibrate.VolatilityEstimate(
        sigma,
        chosen["stderr_per_sqrt_session"],
        chosen["n_increments"],
        vol_seconds / SESSION_SECONDS,
    )
    targets = calibrate.moment_targets(rates, estimate)
    inverse = calibrate.fit_market_by_gradient(
        targets, template, key, n_episodes=n_episodes, n_iterations=n_iterations
    )
    return {
        "method": "simulated moments through the relaxed simulator (expected fills), "
        f"dt = {dt_seconds} s, weights 1/stderr^2 of the targets",
        "A_per_session": inverse.A,
        "k": inverse.k,
        "sigma_per_sqrt_session": inverse.sigma,
        "loss": inverse.loss,
        "dof": n_depths + 1 - 3,
        "mle": {"A_per_session": fit.A, "k": fit.k, "sigma_per_sqrt_session": sigma},
        "seconds": inverse.seconds,
    }


def goodness_of_fit_summary(gof, rates, fit, windows: list[dict]) -> dict[str, Any]:
    """The payload's ``goodness_of_fit``: the reach-bin test of the fitted shape, its worst bin,
    and the fits on depth windows (``fit_tape``)."""
    worst = int(np.argmax(np.abs(gof.residuals)))
    return {
        "test": "Pearson chi-square of reach bins vs the fitted exponential shape "
        "(conditional on the number of orders; Wilson-Hilferty p-value)",
        "statistic": gof.statistic,
        "dof": gof.dof,
        "p_value": gof.p_value,
        "worst_bin_lower_edge": float(gof.edges[worst]),
        "worst_residual": float(gof.residuals[worst]),
        "rate_at_depth_0": {"empirical": rates.rate[0], "fitted": fit.A},
        "by_depth_window": windows,
    }


def data_summary(day, orders, data: Path) -> dict[str, Any]:
    """The payload's ``data``: what the LOBSTER day in ``data`` holds."""
    return {
        "path": str(data),
        "ticker": day.ticker,
        "date": day.date,
        "window_seconds_after_midnight": [day.start, day.end],
        "session_seconds": day.end - day.start,
        "n_events": int(day.times.size),
        "n_executions": int(np.isin(day.event_type, lobster.EXECUTIONS).sum()),
        "n_market_orders": int(orders.times.size),
        "n_buy_orders": int((orders.side > 0).sum()),
        "n_hidden_only_orders": int(orders.hidden.sum()),
        "licence": "LOBSTER free sample terms; data not redistributed",
    }


# ---------------------------------------------------------------------------- homework tuning


def objective_grid(params, gammas, kappas, key, n_episodes: int) -> np.ndarray:
    """Every objective at every ``(gamma, kappa)`` cell on the same episodes: ``[3, G, K]``."""
    stream = market.stream_key(key)
    episodes = jnp.arange(n_episodes, dtype=jnp.uint32)

    def cell(gamma, kappa):
        pnl = mm.rollout(params, AvellanedaStoikov(gamma=gamma, k=kappa), stream, episodes).pnl
        return jnp.stack([calibrate.objective_value(pnl, name, ra) for name, ra, _ in OBJECTIVES])

    row = jax.jit(jax.vmap(cell, in_axes=(None, 0)))
    kappas = jnp.asarray(kappas, jnp.float32)
    values = []
    for index, gamma in enumerate(gammas):
        values.append(np.asarray(row(jnp.float32(gamma), kappas), np.float64))
        if (index + 1) % max(1, len(gammas) // 5) == 0:
            progress(f"  grid: {index + 1}/{len(gammas)} gamma rows")
    return np.moveaxis(np.stack(values), -1, 0)


def plot_heatmaps(gammas, kappas, grid, tuned, best_cells, path: Path) -> None:
    fig, axes = plt.subplots(1, len(OBJECTIVES), figsize=(6 * len(OBJECTIVES), 5))
    for ax, values, (name, _, label) in zip(axes, grid, OBJECTIVES, strict=True):
        top = values.max()
        floor = np.quantile(values, 0.25)
        mesh = ax.pcolormesh(kappas, gammas, np.clip(values, floor, None), shading="nearest")
        fig.colorbar(mesh, ax=ax, label=label)
        result = tuned[name]
        ax.plot(result.kappas, result.gammas, color="white", lw=1, alpha=0.9, label="Adam path")
        ax.plot(result.kappas[0], result.gammas[0], "o", color="white", mec="black", label="start")
        ax.plot(
            result.kappa,
            result.gamma,
            "X",
            color="tab:red",
            ms=10,
            mec="white",
            label="tuned (averaged)",
        )
        g_best, k_best = best_cells[name]
        ax.plot(
            k_best,
            g_best,
            "*",
            color="gold",
            ms=13,
            mec="black",
            label=f"grid best ({top:.3g} on grid episodes)",
        )
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="kappa (A-S assumed k), per price unit",
            ylabel="gamma",
            title=f"{label}: gradient path over the grid",
        )
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle("Homework market: A-S (gamma, kappa) by gradients through the relaxed simulator")
    fig.tight_layout()
    save_figure(fig, path)


def inverse_on_simulation(key, *, n_episodes: int = 256, n_iterations: int = 300) -> dict[str, Any]:
    """Inverse calibration of ``(A, k, sigma)`` on a simulated dataset, against the MLE
    (``n_iterations`` gradient steps of ``n_episodes`` simulated episodes)."""
    truth = mm.presets.homework().replace(A=140.0, n_steps=240, fill_model="exponential")
    depths = np.linspace(0.0, 2.2, 12)
    design = calibrate.DepthCycle(depths)  # float64 grid: the rates keep it exactly
    observed = mm.simulate(truth, design, key, 400, paths=True)
    records = calibrate.records_from_paths(observed, truth)
    mle = calibrate.fit_intensity(*records, fill_model=truth.fill_model, dt=truth.dt)
    volatility = calibrate.realized_volatility(observed.paths.mid, truth.dt)
    rates = design.rates(observed, truth.dt)
    inverse = calibrate.fit_market_by_gradient(
        calibrate.moment_targets(rates, volatility),
        truth,
        jax.random.fold_in(key, 1),
        n_episodes=n_episodes,
        n_iterations=n_iterations,
    )
    return {
        "truth": {"A": 140.0, "k": 1.5, "sigma": 2.0, "fill_model": "exponential"},
        "data": "400 episodes x 240 steps of the exact simulator, quotes cycling 12 depths",
        "mle": {
            "A": mle.A,
            "stderr_A": mle.stderr_A,
            "k": mle.k,
            "stderr_k": mle.stderr_k,
            "sigma": volatility.sigma,
            "stderr_sigma": volatility.stderr,
        },
        "gradient": {
            "A": inverse.A,
            "k": inverse.k,
            "sigma": inverse.sigma,
            "loss": inverse.loss,
            "dof": depths.size + 1 - 3,
            "seconds": inverse.seconds,
        },
    }


def tuned_against_grid_best(
    params,
    result,
    best_cell: tuple[float, float],
    grid_best_on_grid: float,
    objective: tuple[str, float, str],
    eval_key,
    eval_episodes: int,
) -> dict[str, Any]:
    """The tuned A-S (``result`` of ``calibrate.tune_as``) and the grid's best cell
    ``(gamma, kappa)`` on the same ``eval_episodes`` fresh episodes, for one of ``OBJECTIVES``
    (``grid_best_on_grid``: that cell's value on the grid's episodes): a row of the payload's
    ``objectives``."""
    name, risk_aversion, label = objective
    pnl = {}
    for which, (g, k) in (
        ("tuned", (result.gamma, result.kappa)),
        ("grid_best", best_cell),
    ):
        rollout = mm.simulate(
            params, mm.policies.avellaneda_stoikov(g, k=k), eval_key, eval_episodes
        )
        pnl[which] = np.asarray(rollout.pnl, np.float64)
    value_t, se_t = calibrate.objective_estimate(pnl["tuned"], name, risk_aversion)
    value_g, se_g = calibrate.objective_estimate(pnl["grid_best"], name, risk_aversion)
    gap, gap_se = calibrate.objective_estimate(
        pnl["tuned"], name, risk_aversion, baseline=pnl["grid_best"]
    )
    return {
        "label": label,
        "risk_aversion": risk_aversion,
        "tuned": {
            "gamma": result.gamma,
            "kappa": result.kappa,
            "objective": value_t,
            "stderr": se_t,
        },
        "grid_best": {
            "gamma": best_cell[0],
            "kappa": best_cell[1],
            "objective": value_g,
            "stderr": se_g,
            "objective_on_grid_episodes": grid_best_on_grid,
        },
        "tuned_minus_grid_best": {
            "value": gap,
            "stderr_paired": gap_se,
            "relative": gap / abs(value_g),
        },
        "relaxed_objective_last_iterations": float(result.relaxed_objective[-20:].mean()),
        "tuning_seconds": result.seconds,
    }


def homework_study(
    key,
    *,
    out: Path,
    grid_size: int,
    grid_episodes: int,
    tune_iterations: int,
    tune_episodes: int,
    temperature: float,
    eval_episodes: int,
    inverse_episodes: int,
    inverse_iterations: int,
) -> tuple[dict[str, Any], dict]:
    """The homework part, files written into ``out``: the ``grid_size`` x ``grid_size`` grid
    search, A-S tuned by gradients for each objective and measured against the grid's best cell
    on ``eval_episodes`` fresh episodes, and the inverse calibration on simulated data."""
    params = mm.presets.homework()
    gammas = np.geomspace(0.005, 1.0, grid_size)
    kappas = np.geomspace(0.5, 5.0, grid_size)
    progress(f"homework: grid {grid_size}x{grid_size}, {grid_episodes:,} episodes")
    with Timer() as grid_timer:
        grid = objective_grid(params, gammas, kappas, jax.random.fold_in(key, 10), grid_episodes)
    write_csv(
        out / "grid.csv",
        {
            "gamma": np.repeat(gammas, kappas.size),
            "kappa": np.tile(kappas, gammas.size),
            **{name: values.ravel() for values, (name, _, _) in zip(grid, OBJECTIVES, strict=True)},
        },
    )
    eval_key = jax.random.fold_in(key, 11)  # fresh episodes: no winner's curse from the grid
    tuned, best_cells, rows, trajectories = {}, {}, {}, {}
    for index, (name, risk_aversion, label) in enumerate(OBJECTIVES):
        progress(f"homework: tuning for {label}")
        result = calibrate.tune_as(
            params,
            jax.random.fold_in(key, 20 + index),
            objective=name,
            risk_aversion=risk_aversion,
            gamma=0.1,
            kappa=1.5,
            n_iterations=tune_iterations,
            n_episodes=tune_episodes,
            temperature=temperature,
            progress=lambda i, g, k, v: progress(
                f"  iter {i}: gamma {g:.4f} kappa {k:.3f} relaxed objective {v:.4g}"
            ),
        )
        tuned[name] = result
        cell = np.unravel_index(np.argmax(grid[index]), grid[index].shape)
        best_cells[name] = (float(gammas[cell[0]]), float(kappas[cell[1]]))
        rows[name] = tuned_against_grid_best(
            params,
            result,
            best_cells[name],
            float(grid[index].max()),
            OBJECTIVES[index],
            eval_key,
            eval_episodes,
        )
        trajectories[f"{name}_gamma"] = result.gammas
        trajectories[f"{name}_kappa"] = result.kappas
    write_csv(out / "tuning.csv", trajectories)
    plot_heatmaps(gammas, kappas, grid, tuned, best_cells, out / "tuning_heatmap.png")
    progress("homework: inverse calibration on simulated data")
    inverse = inverse_on_simulation(
        jax.random.fold_in(key, 30),
        n_episodes=inverse_episodes,
        n_iterations=inverse_iterations,
    )
    return {
        "market": params,
        "grid": {
            "gammas": gammas,
            "kappas": kappas,
            "n_episodes": grid_episodes,
            "seconds": grid_timer.seconds,
        },
        "evaluation": f"exact simulator, {eval_episodes:,} fresh episodes shared by the "
        "tuned point and the grid-best cell (paired standard errors)",
        "tuning": {
            "optimizer": "Adam on (log gamma, log kappa), fresh episodes per iteration, "
            "answer = geometric mean of the last 25% of iterates",
            "temperature": temperature,
            "iterations": tune_iterations,
            "episodes_per_iteration": tune_episodes,
        },
        "objectives": rows,
        "inverse_calibration_simulated": inverse,
    }, tuned


def print_report(payload: dict[str, Any]) -> None:
    amzn = payload["amzn"]
    if "skipped" in amzn:
        print(f"AMZN part skipped: {amzn['skipped']}")
    else:
        fit, vol = amzn["intensity"], amzn["volatility"]
        s, sec, k = fit["per_session"], fit["per_second"], fit["k_per_dollar"]
        print("AMZN 2012-06-21 (LOBSTER level-1 sample), both sides pooled, per side of the book:")
        print(
            f"  A = {s['A']:.0f} per session  (robust s.e. {s['stderr_A_robust']:.0f}, nominal "
            f"{s['stderr_A']:.0f}; robust 95% profile CI {s['ci_A_robust'][0]:.0f}-"
            f"{s['ci_A_robust'][1]:.0f}) = {sec['A']:.4f} per second (robust s.e. "
            f"{sec['stderr_A_robust']:.4f})"
        )
        print(
            f"  k = {k['k']:.2f} per dollar (robust s.e. {k['stderr_k_robust']:.2f}, nominal "
            f"{k['stderr_k']:.2f}; robust 95% profile CI {k['ci_k_robust'][0]:.2f}-"
            f"{k['ci_k_robust'][1]:.2f}, nominal {k['ci_k'][0]:.2f}-{k['ci_k'][1]:.2f})"
        )
        blocks = ", ".join(
            f"{name} blocks: {row['stderr_A_robust']:.0f} / {row['stderr_k_robust']:.2f}"
            for name, row in amzn["robust_stderr_by_block_length"].items()
        )
        print(
            f"  robust s.e. of A / k by block length: {blocks} (growth = dependence beyond a block)"
        )
        print(
            f"  sigma = {vol['sigma_per_sqrt_session']:.3f} $/sqrt(session) +- "
            f"{vol['stderr_per_sqrt_session']:.3f} = {vol['sigma_per_sqrt_second']:.5f} "
            f"$/sqrt(s) ({vol['interval_seconds']:g} s increments)"
        )
        gof = amzn["goodness_of_fit"]
        print(
            f"  fit of A exp(-k delta): chi2 = {gof['statistic']:.0f} on {gof['dof']} dof, "
            f"p = {gof['p_value']:.2g}; worst bin at {gof['worst_bin_lower_edge']:.3f} $ "
            f"(residual {gof['worst_residual']:.1f})"
        )
        for row in gof["by_depth_window"]:
            print(
                f"    fit on depths >= {row['lowest_depth']:.2f} $: A = {row['A_per_session']:.0f}"
                f" +- {row['stderr_A_robust']:.0f}, k = {row['k']:.1f} +- "
                f"{row['stderr_k_robust']:.1f}; chi2 = {row['chi2']:.1f} on {row['dof']} dof, "
                f"p = {row['p_value']:.2g}"
            )
        inv = amzn["inverse_calibration"]
        print(
            f"  gradient inverse calibration: A = {inv['A_per_session']:.0f}, k = {inv['k']:.2f},"
            f" sigma = {inv['sigma_per_sqrt_session']:.3f} (loss {inv['loss']:.1f} on "
            f"{inv['dof']} dof)"
        )
        loop = amzn["closed_loop"]
        print(f"  calibrated market, gamma = {loop['gamma_per_dollar']}, per session:")
        for name, row in loop["strategies"].items():
            print(
                f"    {name:20s} reward {row['mean_reward']:8.2f} +- {row['stderr_reward']:.2f}"
                f"  PnL {row['mean_pnl']:8.2f} (std {row['std_pnl']:.2f})  "
                f"mean |q_T| {row['mean_abs_q']:.2f}  fills {row['n_fills']:.0f}"
            )
    print("Homework market, A-S tuned by gradients vs the best grid cell (exact simulator):")
    print(
        f"  {'objective':22s} {'tuned (gamma, kappa)':>22s} {'value':>16s} "
        f"{'grid best':>18s} {'value':>16s} {'tuned - best':>18s}"
    )
    for row in payload["homework"]["objectives"].values():
        t, g, d = row["tuned"], row["grid_best"], row["tuned_minus_grid_best"]
        print(
            f"  {row['label']:22s} ({t['gamma']:.4f}, {t['kappa']:.3f}){'':5s}"
            f"{t['objective']:8.3f} +- {t['stderr']:.3f}  ({g['gamma']:.4f}, {g['kappa']:.3f}) "
            f"{g['objective']:8.3f} +- {g['stderr']:.3f}  {d['value']:+.3f} +- "
            f"{d['stderr_paired']:.3f} ({100 * d['relative']:+.2f}%)"
        )


def main(argv: list[str] | None = None, **options: Any) -> dict[str, Any]:
    """Run the study; ``options`` override the command line's values (``grid_size=3``)."""
    args = parse_args(argv, **options)
    args.out.mkdir(parents=True, exist_ok=True)
    key = jax.random.key(args.seed)
    with Timer() as total:
        try:
            lobster.find_files(args.data)
            available = True
        except FileNotFoundError as error:
            available, reason = False, str(error)
        if available:
            progress(f"AMZN: reading {args.data}")
            amzn = amzn_study(
                jax.random.fold_in(key, 1),
                data=args.data,
                out=args.out,
                max_depth=args.max_depth,
                depth_step=args.depth_step,
                block_seconds=args.block_seconds,
                vol_seconds=args.vol_seconds,
                inverse_episodes=args.inverse_episodes,
                inverse_iterations=args.inverse_iterations,
                loop_gamma=args.loop_gamma,
                loop_q_max=args.loop_q_max,
                loop_steps=args.loop_steps,
                loop_episodes=args.loop_episodes,
            )
        else:
            progress(f"AMZN part skipped: {reason}")
            amzn = {"skipped": reason}
        homework, _ = homework_study(
            jax.random.fold_in(key, 2),
            out=args.out,
            grid_size=args.grid_size,
            grid_episodes=args.grid_episodes,
            tune_iterations=args.tune_iterations,
            tune_episodes=args.tune_episodes,
            temperature=args.temperature,
            eval_episodes=args.eval_episodes,
            inverse_episodes=args.inverse_episodes,
            inverse_iterations=args.inverse_iterations,
        )
    payload = {
        "study": "calibration",
        "amzn": amzn,
        "homework": homework,
        "notes": {
            "units": "time unit = one session (6.5 h = 23,400 s); A per session and per second, "
            "k per dollar, sigma dollars per sqrt(session) and per sqrt(second)",
            "sharpe": "per episode: mean / std of terminal PnL across episodes",
        },
    }
    config = {**vars(args), "objectives": OBJECTIVES, "session_seconds": SESSION_SECONDS}
    print_report(payload)
    return finish(args.out, "summary", payload, config=config, seconds=total.seconds)


if __name__ == "__main__":
    main()
