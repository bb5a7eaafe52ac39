"""Backtesting on real tapes: calibrate on the morning, replay the afternoon, compare with the
simulator, and sweep Avellaneda-Stoikov over a grid on the whole day.

``python -m experiments.backtest`` writes ``results/backtest/`` (``--out``), for AMZN, AAPL and
GOOG on 2012-06-21 (LOBSTER's free level-1 samples, read from ``--data-dir``; a stock whose
files are absent is skipped with the reason recorded):

1. Calibration on the morning (``--open`` to ``--split``, default 09:30-12:45): ``A`` (per
   second, per side) and ``k`` (per dollar) by maximum likelihood on the market orders' reach
   (``calibrate.tape_records`` + ``calibrate.fit_intensity``) with time-block-robust standard
   errors, and ``sigma`` (dollars per sqrt(second)) by realised volatility of the mid sampled
   every ``--vol-seconds`` (10 s; the signature over 1-300 s is recorded to justify it).
2. Out of sample, the afternoon (``--split`` to ``--close``) replayed with ``backtest.replay``
   for A-S and GLFT at the stated ``--gamma``, the exact Bellman table of the fitted market
   (1-second steps, inventory limit ``--q-max`` quotes, variance-aware reward as in
   ``calibration.close_the_loop``) and the naive symmetric quote at the fitted optimal
   half-spread; conservative queue, ``--quote-size`` shares, requote every second; the A-S row
   again with the probabilistic queue, with ``--latency`` and (GOOG) on the level-10 book.
3. Sim vs replay: the same policies in the fitted market with ``mm.simulate`` (the Bellman
   solve's params), simulated PnL x quote size against the replay's dollars, fills, inventory;
   realised PnL per half-hour block with a block-bootstrap interval and the percentile of the
   realised PnL in the simulated distribution.
4. Sweep: an A-S grid of ``--grid`` x ``--grid`` (gamma, kappa) settings, one
   ``backtest.sweep`` call per stock over the whole day, with per-half-hour PnL (marks).

Files: ``results.json`` (config, seed, environment, every table), ``calibration.csv``,
``signature.csv``, ``out_of_sample.csv``, ``sim_vs_replay.csv``, ``fills_<TICKER>_as.csv``,
``sweep_<TICKER>.csv``, and the figures ``pnl_path.png``, ``markouts.png``,
``inventory_hist.png``, ``sim_pnl.png``, ``sweep_pnl.png``, ``sweep_pnl_per_risk.png``.

From the command line the CPU is split into one host device per core (``jaxmm.devices``), and
the sweeps and simulations use them all (``--devices`` chooses).
"""

from __future__ import annotations

if __name__ == "__main__":  # one CPU device per core, before JAX starts
    from jaxmm.devices import request_host_devices

    request_host_devices()

import argparse
import dataclasses
import math
from pathlib import Path
from typing import Any

import jax
import matplotlib.pyplot as plt
import numpy as np
from scipy import stats

import jaxmm as mm
from experiments.common import (
    Timer,
    add_options,
    check_minimum,
    data_dir,
    finish,
    markdown_table,
    progress,
    save_figure,
    study_parser,
    write_csv,
    write_rows_csv,
)
from jaxmm import backtest, calibrate, lobster
from jaxmm import devices as device_lib
from jaxmm.policies import AvellanedaStoikov

STOCKS = ("amzn", "aapl", "goog")
SIGNATURE_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
STRATEGIES = ("avellaneda_stoikov", "glft", "optimal_bellman", "symmetric")

QUICK = {  # experiments.all --quick: 30 minutes each side of the split, one stock
    "stocks": ["amzn"],
    "open": "12:15",
    "close": "13:15",
    "block_minutes": 10.0,
    "grid": 4,
    "n_episodes": 50,
    "path_episodes": 10,
    "bootstrap": 200,
}


def stock_folder(data_dir: Path, stock: str, level: int = 1) -> Path:
    suffix = "" if level == 1 else f"-level{level}"
    return Path(data_dir) / f"lobster-{stock}-2012-06-21{suffix}"


def parse_args(argv: list[str] | None = None, **options: Any) -> argparse.Namespace:
    parser = study_parser("backtest", __doc__, n_episodes=5_000, min_episodes=10)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=data_dir(),
        help="folder of the lobster-<stock>-2012-06-21 folders",
    )
    parser.add_argument(
        "--stocks", nargs="+", choices=STOCKS, default=list(STOCKS), help="stocks to run"
    )
    add_options(
        parser,
        ("--open", None, "09:30", "calibration (and sweep) start, HH:MM exchange time"),
        ("--split", None, "12:45", "end of calibration, start of replay, HH:MM"),
        ("--close", None, "16:00", "end of replay (and sweep), HH:MM"),
        ("--quote-size", int, 100, "shares per order"),
        ("--q-max", int, 10, "inventory limit, in quotes of QUOTE_SIZE shares"),
        ("--gamma", float, 0.01, "A-S / GLFT risk aversion, per dollar per quote unit"),
        ("--latency", float, 0.05, "latency of the robustness row, seconds"),
        ("--vol-seconds", float, 10.0, "sampling interval for sigma, seconds"),
        ("--block-seconds", float, 300.0, "length of the robust-error time blocks, seconds"),
        ("--depth-step", float, 0.01, "step of the calibration depth grid, dollars"),
        ("--max-depth", float, None, "top of the depth grid, dollars (default: 99%% of the reach)"),
        ("--path-episodes", int, 200, "simulated sessions with paths (inventory)"),
        ("--block-minutes", float, 30.0, "length of the PnL blocks, minutes"),
        ("--bootstrap", int, 10_000, "bootstrap resamples"),
        ("--grid", int, 32, "A-S sweep settings per axis"),
    )
    parser.add_argument(
        "--gamma-range",
        type=float,
        nargs=2,
        default=(1e-4, 0.3),
        help="sweep gamma range (geometric), per dollar per quote unit",
    )
    parser.add_argument(
        "--kappa-range",
        type=float,
        nargs=2,
        default=(3.0, 300.0),
        help="sweep kappa range (geometric), per dollar",
    )
    parser.add_argument("--no-level10", action="store_true", help="skip the GOOG level-10 row")
    device_lib.add_arguments(parser)
    parser.set_defaults(devices=0)  # every device (one per core from the command line)
    args = parser.parse(argv, **options)
    args.device_list = device_lib.from_arguments(parser, args)
    for name in ("open", "split", "close"):
        setattr(args, name, str(getattr(args, name)))
    t_open, t_split, t_close = (
        backtest.parse_time(getattr(args, n)) for n in ("open", "split", "close")
    )
    if not t_open < t_split < t_close:
        parser.error(
            f"need --open < --split < --close, got {args.open}, {args.split}, {args.close}"
        )
    check_minimum(
        parser, args, ("quote_size", "q_max", "gamma", "vol_seconds", "block_seconds", "depth_step")
    )
    if args.grid < 2 or args.path_episodes < 2 or args.bootstrap < 10:
        parser.error("--grid and --path-episodes must be >= 2, --bootstrap >= 10")
    return args


def _float(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


# ----------------------------------------------------------------------------- calibration


def volatility(day, start: float, end: float, seconds: float):
    """Realised volatility of the mid on ``(start, end]`` sampled every ``seconds``, dollars per
    sqrt(second): the first two-sided mid after ``start``, then previous-tick samples."""
    times, mids = lobster.mid_path(day)
    keep = (times >= start) & (times <= end)
    times, mids = times[keep], mids[keep]
    grid = np.arange(times[0] + seconds, end + 1e-9, seconds)
    sampled = np.concatenate([[mids[0]], calibrate.sample_previous_tick(times, mids, grid)])
    return calibrate.realized_volatility(sampled, seconds)


def calibrate_morning(day, start: float, end: float, args) -> dict[str, Any]:
    """``A`` (per second, per side), ``k`` (per dollar) and ``sigma`` on ``(start, end]``."""
    orders = lobster.market_orders(day)
    inside = (orders.times >= start) & (orders.times < end)
    if args.max_depth is None:
        top = math.ceil(float(np.quantile(orders.reach[inside], 0.99)) / args.depth_step)
        max_depth = max(top, 2) * args.depth_step
    else:
        max_depth = args.max_depth
    depths = np.round(np.arange(0.0, max_depth + 1e-9, args.depth_step), 6)
    records = calibrate.tape_records(
        orders.times,
        orders.price,
        orders.mid,
        orders.side,
        depths,
        start=start,
        end=end,
        block_length=args.block_seconds,
        time_unit=1.0,
    )
    fit = calibrate.fit_intensity(*records)
    vol = volatility(day, start, end, args.vol_seconds)
    signature = []
    for seconds in SIGNATURE_SECONDS:
        if (end - start) / seconds >= 3:
            est = volatility(day, start, end, seconds)
            signature.append(
                {
                    "interval_seconds": seconds,
                    "sigma": est.sigma,
                    "stderr": est.stderr,
                    "n": est.n_increments,
                }
            )
    by_interval = {row["interval_seconds"]: row["sigma"] for row in signature}
    return {
        "window": [start, end],
        "signature_ratio_to_chosen": {f"{h:g}s": v / vol.sigma for h, v in by_interval.items()},
        "n_market_orders": int(inside.sum()),
        "depth_grid_dollars": [float(depths[0]), float(depths[-1]), args.depth_step],
        "A_per_second": fit.A,
        "stderr_A_robust": fit.stderr_A_robust,
        "stderr_A_nominal": fit.stderr_A,
        "ci_A_robust": list(fit.ci_A_robust),
        "k_per_dollar": fit.k,
        "stderr_k_robust": fit.stderr_k_robust,
        "stderr_k_nominal": fit.stderr_k,
        "ci_k_robust": list(fit.ci_k_robust),
        "n_clusters": fit.n_clusters,
        "sigma_per_sqrt_second": vol.sigma,
        "stderr_sigma": vol.stderr,
        "vol_seconds": args.vol_seconds,
        "n_increments": vol.n_increments,
        "signature": signature,
        "optimal_half_spread": float(np.log1p(args.gamma / fit.k) / args.gamma),
    }


# ------------------------------------------------------------------------------ replays


def strategy_rows(result, config: backtest.Config, duration: float) -> dict[str, Any]:
    """One replay's numbers: ``backtest.summary`` plus the fill ratio, the share of time at
    the touch and the inventory statistics in quote units."""
    out = backtest.summary(result, config)
    fills = np.array([result.n_bid_fills, result.n_ask_fills], np.float64)
    posted = np.array([result.bid_posted, result.ask_posted], np.float64)
    out["fill_ratio"] = (fills / np.maximum(posted, 1)).tolist()
    out["touch_share"] = (np.asarray(result.time_at_touch) / duration).tolist()
    out["quoted_share"] = (np.asarray(result.time_quoted) / duration).tolist()
    out["n_fills"] = int(fills.sum())
    out["std_q"] = float(result.std_position) / config.quote_size
    return out


def inventory_path(log, start: float, end: float, quote_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Inventory (quote units) held in each interval between fills, and the interval's length
    (seconds), from a fill log; the first interval starts flat at ``start``."""
    times = np.concatenate([[start], np.asarray(log.time, np.float64), [end]])
    position = np.concatenate([[0.0], np.asarray(log.position, np.float64)])
    return position / quote_size, np.diff(times)


def afternoon_policies(params, gamma: float, calib: dict, bellman_table) -> dict[str, Any]:
    return {
        "avellaneda_stoikov": mm.policies.avellaneda_stoikov(gamma),
        "glft": mm.policies.glft(gamma),
        "optimal_bellman": mm.policies.table(bellman_table),
        "symmetric": mm.policies.symmetric(calib["optimal_half_spread"]),
    }


def block_pnl(marks: np.ndarray, every: int) -> np.ndarray:
    """PnL of consecutive blocks of ``every`` marks (minute marks -> blocks); a shorter last
    block when the marks do not divide evenly."""
    marks = np.asarray(marks, np.float64)
    edges = marks[::every]
    if (marks.size - 1) % every:
        edges = np.append(edges, marks[-1])
    return np.diff(edges)


def bootstrap_mean(values: np.ndarray, n: int, rng: np.random.Generator) -> list[float]:
    """95% percentile interval of the mean of ``values`` (whole blocks resampled)."""
    if values.size < 2:
        return [float(values.mean()), float(values.mean())] if values.size else [None, None]
    draws = rng.choice(values, size=(n, values.size), replace=True).mean(axis=1)
    return np.quantile(draws, [0.025, 0.975]).tolist()


def replay_stock(day, day10, calib: dict, args, key, out: Path) -> dict[str, Any]:
    """Steps 2 and 3 for one stock: the afternoon replays and the simulator beside them."""
    ticker = day.ticker
    t_split, t_close = afternoon_window(args)
    afternoon = backtest.tape(day, t_split, t_close)
    duration = t_close - t_split
    config = afternoon_config(args, t_split, t_close)
    params = fitted_market(afternoon, config, calib, args.q_max)
    phi = args.gamma / 2.0
    progress(f"{ticker}: Bellman solve, {params.n_steps:,} steps, q_max {args.q_max}")
    with Timer() as bellman_timer:
        solution = mm.optimal.bellman(params, phi, reward="variance", depth_bounds=(-1.0, 2.0))
    strategies = afternoon_policies(params, args.gamma, calib, solution)
    rows, results = replay_afternoon(ticker, afternoon, strategies, params, config, duration)
    rows.update(replay_robustness(ticker, afternoon, day10, strategies, params, config, args))
    write_fills(out / f"fills_{ticker}_as.csv", results["avellaneda_stoikov"].log)

    # ---- the simulator in the fitted market (same params as the Bellman solve)
    sims, sim_paths = simulate_strategies(ticker, strategies, params, key, args)
    rng = np.random.default_rng(args.seed)
    comparison = {}
    for name in strategies:
        comparison[name] = compare_sim_replay(
            results[name], sims[name], sim_paths[name], config, args, params, rng
        )
        comparison[name]["explanation"] = explain(comparison[name], rows[name])
    q = args.quote_size
    plots = {
        "marks": config.marks,
        "as_marks": np.asarray(results["avellaneda_stoikov"].marks),
        "markouts": {n: rows[n] for n in strategies},
        "inventory_real": inventory_path(results["avellaneda_stoikov"].log, t_split, t_close, q),
        "inventory_sim": sim_paths["avellaneda_stoikov"]["inventory"],
        "sim_pnl": {n: sims[n]["pnl"] for n in strategies},
        "realised_pnl": {n: float(results[n].pnl) for n in strategies},
    }
    return {
        "afternoon_events": afternoon.n_events,
        "market": params,
        "phi": phi,
        "reward": "PnL - (gamma/2) sigma^2 dt sum_t q_{t+1}^2 (q in quotes, per quote unit)",
        "bellman_seconds": bellman_timer.seconds,
        "bellman_value_at_start_dollars": float(solution.value_at(0, 0)) * q,
        "out_of_sample": rows,
        "sim_vs_replay": comparison,
    }, plots


def afternoon_window(args) -> tuple[float, float]:
    """``(--split, --close)``: the replayed afternoon, seconds after midnight."""
    return backtest.parse_time(args.split), backtest.parse_time(args.close)


def afternoon_config(args, t_split: float, t_close: float) -> backtest.Config:
    """The replay's settings: ``--quote-size`` shares, the ``--q-max`` limit, requote every
    second, conservative queue, PnL marked every minute of ``[t_split, t_close]`` (seconds
    after midnight) and at the close, fills logged."""
    minute_marks = tuple(np.arange(t_split, t_close + 1e-9, 60.0).tolist())
    if minute_marks[-1] < t_close:
        minute_marks = (*minute_marks, t_close)
    return backtest.Config(
        quote_size=args.quote_size,
        max_position=args.q_max * args.quote_size,
        requote=1.0,
        queue="conservative",
        marks=minute_marks,
        log=True,
    )


def fitted_market(afternoon, config: backtest.Config, calib: dict, q_max: int):
    """The simulator's market fitted on the morning (``calib``: sigma per sqrt(second), A per
    second, k per dollar) over the afternoon's clock, exponential fills, ``q_max`` quotes."""
    return backtest.market_params(
        afternoon,
        config,
        sigma=calib["sigma_per_sqrt_second"],
        A=calib["A_per_second"],
        k=calib["k_per_dollar"],
        q_max=q_max,
        fill_model="exponential",
    ).validate()


def replay_afternoon(ticker, afternoon, strategies, params, config, duration: float):
    """Each strategy replayed on the afternoon tape: ``(rows, results)``, the out-of-sample row
    (with its wall-clock ``seconds``) and the ``backtest.replay`` result, by strategy name."""
    rows, results = {}, {}
    for name, policy in strategies.items():
        progress(f"{ticker}: replay {name}")
        with Timer() as timer:
            result = backtest.replay(afternoon, policy, params, config)
        results[name] = result
        rows[name] = {**strategy_rows(result, config, duration), "seconds": timer.seconds}
    return rows, results


def replay_robustness(
    ticker, afternoon, day10, strategies, params, config, args
) -> dict[str, dict[str, Any]]:
    """The A-S robustness rows: the afternoon replayed with the probabilistic queue, with
    ``--latency`` (seconds) and, when ``day10`` is given, on the level-10 book."""
    t_split, t_close = afternoon_window(args)
    duration = t_close - t_split
    rows = {}
    robustness = {
        "probabilistic_queue": dataclasses.replace(config, queue="probabilistic"),
        f"latency_{1000 * args.latency:g}ms": dataclasses.replace(config, latency=args.latency),
    }
    for label, cfg in robustness.items():
        progress(f"{ticker}: replay avellaneda_stoikov, {label}")
        result = backtest.replay(afternoon, strategies["avellaneda_stoikov"], params, cfg)
        rows[f"avellaneda_stoikov_{label}"] = strategy_rows(result, cfg, duration)
    if day10 is not None:
        progress(f"{ticker}: replay avellaneda_stoikov on the level-10 book")
        tape10 = backtest.tape(day10, t_split, t_close)
        result = backtest.replay(tape10, strategies["avellaneda_stoikov"], params, config)
        rows["avellaneda_stoikov_level10"] = strategy_rows(result, config, duration)
    return rows


def write_fills(path: Path, log) -> Path:
    """The fill log's columns (time, row, side, price, size, ahead, position) as a CSV."""
    columns = ("time", "row", "side", "price", "size", "ahead", "position")
    return write_csv(path, {name: getattr(log, name) for name in columns})


def simulate_strategies(ticker, strategies, params, key, args):
    """Each strategy simulated in the fitted market: ``(sims, paths)`` by name, the
    ``--n-episodes`` sessions' PnL (dollars: x ``--quote-size``) and fill counts, and
    ``--path-episodes`` sessions' inventory (quotes) and PnL paths."""
    sim_key, path_key = jax.random.split(key)
    q = args.quote_size
    sims, sim_paths = {}, {}
    for name, policy in strategies.items():
        progress(f"{ticker}: simulate {name}, {args.n_episodes:,} x {params.n_steps:,} steps")
        rollout = mm.simulate(params, policy, sim_key, args.n_episodes, devices=args.device_list)
        sims[name] = {
            "pnl": np.asarray(rollout.pnl, np.float64) * q,
            "spread_pnl": np.asarray(rollout.spread_pnl, np.float64) * q,
            "inventory_pnl": np.asarray(rollout.inventory_pnl, np.float64) * q,
            "n_bid_fills": np.asarray(rollout.n_bid_fills, np.float64),
            "n_ask_fills": np.asarray(rollout.n_ask_fills, np.float64),
        }
        paths = mm.simulate(params, policy, path_key, args.path_episodes, paths=True).paths
        sim_paths[name] = {
            "inventory": np.asarray(paths.inventory, np.float64)[:, 1:],
            "pnl": np.asarray(paths.pnl, np.float64) * q,
        }
    return sims, sim_paths


def compare_sim_replay(real, sim, paths, config, args, params, rng) -> dict[str, Any]:
    """One strategy's realised afternoon (``real``, a replay result) against its simulated
    sessions (``sim``, ``paths`` of ``simulate_strategies``): PnL, fills, inventory and the
    ``--block-minutes`` block PnL with a bootstrap interval (``rng``)."""
    t_split, t_close = afternoon_window(args)
    duration = t_close - t_split
    q = args.quote_size
    per_block = max(1, round(args.block_minutes))
    steps_per_block = round(per_block * 60.0 / float(params.dt))
    marks = np.asarray(real.marks)
    blocks = block_pnl(marks, per_block)
    full = blocks[: int(duration // (per_block * 60.0) + 1e-9)]
    n_full = full.size
    sim_full = np.diff(paths["pnl"][:, ::steps_per_block], axis=1)[:, :n_full]
    realised = float(real.pnl)
    q_real, dt_real = inventory_path(real.log, t_split, t_close, q)
    inv = paths["inventory"]
    return {
        "realised_pnl": realised,
        "realised_pnl_flat": float(real.pnl_flat),
        "sim_mean_pnl": float(sim["pnl"].mean()),
        "sim_se_pnl": float(sim["pnl"].std(ddof=1) / math.sqrt(sim["pnl"].size)),
        "sim_std_pnl": float(sim["pnl"].std(ddof=1)),
        "sim_p05_pnl": float(np.quantile(sim["pnl"], 0.05)),
        "sim_p95_pnl": float(np.quantile(sim["pnl"], 0.95)),
        "percentile_of_realised": float(100.0 * np.mean(sim["pnl"] <= realised)),
        "realised_spread_pnl": float(real.spread_pnl),
        "sim_spread_pnl": float(sim["spread_pnl"].mean()),
        "realised_inventory_pnl": float(real.inventory_pnl),
        "sim_inventory_pnl": float(sim["inventory_pnl"].mean()),
        "realised_bid_fills": int(real.n_bid_fills),
        "realised_ask_fills": int(real.n_ask_fills),
        "sim_bid_fills": float(sim["n_bid_fills"].mean()),
        "sim_ask_fills": float(sim["n_ask_fills"].mean()),
        "fill_rate_ratio": float(
            (real.n_bid_fills + real.n_ask_fills)
            / max(sim["n_bid_fills"].mean() + sim["n_ask_fills"].mean(), 1e-12)
        ),
        "realised_mean_abs_q": float(np.sum(np.abs(q_real) * dt_real) / duration),
        "realised_std_q": float(real.std_position) / q,
        "sim_mean_abs_q": float(np.abs(inv).mean()),
        "sim_std_q": float(inv.std()),
        "block_minutes": per_block,
        "realised_block_pnl": blocks.tolist(),
        "realised_mean_block_pnl": float(full.mean()) if n_full else None,
        "bootstrap_ci_mean_block_pnl": bootstrap_mean(full, args.bootstrap, rng),
        "sim_mean_block_pnl": float(sim_full.mean()) if sim_full.size else None,
        "sim_block_pnl_p05_p95": np.quantile(sim_full, [0.05, 0.95]).tolist()
        if sim_full.size
        else [None, None],
        "percentile_of_realised_mean_block": float(
            100.0 * np.mean(sim_full.mean(axis=1) <= full.mean())
        )
        if n_full and sim_full.size
        else None,
        "realised_markout_60s": _markout_total(real, config, 60.0),
    }


def _markout_total(result, config: backtest.Config, horizon: float) -> float | None:
    horizons = list(config.markout_horizons)
    if horizon not in horizons:
        return None
    return float(np.asarray(result.markouts)[horizons.index(horizon)])


def explain(row: dict[str, Any], real: dict[str, Any]) -> str:
    """The gap between the realised and the simulated PnL, in words, from the numbers."""
    sim_fills = row["sim_bid_fills"] + row["sim_ask_fills"]
    real_fills = row["realised_bid_fills"] + row["realised_ask_fills"]
    markout = row["realised_markout_60s"]
    volume = (real["bid_volume"] or 0) + (real["ask_volume"] or 0)
    per_share = real["markout_per_share"].get("60s")
    text = (
        f"realised PnL {row['realised_pnl']:.0f} $ vs simulated {row['sim_mean_pnl']:.0f} $ "
        f"(percentile {row['percentile_of_realised']:.1f}); fills {real_fills} vs "
        f"{sim_fills:.0f} in the model (ratio {row['fill_rate_ratio']:.2f}: "
    )
    text += (
        "the tape fills less than A exp(-k delta) predicts: quotes wait in the queue behind "
        "displayed size, and the intensity fit counts every order reaching a depth as a fill); "
        if row["fill_rate_ratio"] < 1
        else "the tape fills more than the model predicts); "
    )
    text += (
        f"spread capture {row['realised_spread_pnl']:.0f} $ vs {row['sim_spread_pnl']:.0f} $; "
        f"inventory PnL {row['realised_inventory_pnl']:.0f} $ vs {row['sim_inventory_pnl']:.0f} $"
    )
    if markout is not None and per_share is not None and volume:
        text += (
            f"; adverse selection: the mid moved {per_share:+.4f} $ per share against the fill "
            f"within 60 s ({markout:+.0f} $ over {volume:,} shares), where the model has none "
            "(its mid is independent of its fills)"
        )
    return text + "."


# --------------------------------------------------------------------------------- sweep


def sweep_stock(day, calib: dict, args) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Step 4 for one stock: the (gamma, kappa) grid over the whole window in one sweep."""
    t_open, t_close = backtest.parse_time(args.open), backtest.parse_time(args.close)
    whole = backtest.tape(day, t_open, t_close)
    step = args.block_minutes * 60.0
    marks = tuple(np.arange(t_open, t_close + 1e-9, step).tolist())
    if marks[-1] < t_close:
        marks = (*marks, t_close)
    config = backtest.Config(
        quote_size=args.quote_size,
        max_position=args.q_max * args.quote_size,
        requote=1.0,
        marks=marks,
    )
    params = backtest.market_params(
        whole,
        config,
        sigma=calib["sigma_per_sqrt_second"],
        A=calib["A_per_second"],
        k=calib["k_per_dollar"],
        q_max=args.q_max,
    )
    gammas = np.geomspace(*args.gamma_range, args.grid)
    kappas = np.geomspace(*args.kappa_range, args.grid)
    g, k = np.meshgrid(gammas, kappas, indexing="ij")
    batch = AvellanedaStoikov(gamma=g.ravel(), k=k.ravel(), sigma=np.full(g.size, params.sigma))
    progress(f"{day.ticker}: sweep of {g.size:,} A-S settings over {whole.n_events:,} events")
    with Timer() as timer:
        result = backtest.sweep(whole, batch, params, config, devices=args.device_list)
    n_steps = whole.n_events + int(np.asarray(result.n_decisions)[0])
    pnl = np.asarray(result.pnl, np.float64)
    std = np.asarray(result.std_position, np.float64)
    per_risk = np.where(std > 0, pnl / np.where(std > 0, std, 1.0), np.nan)
    blocks = np.diff(np.asarray(result.marks, np.float64), axis=1)
    grid = {
        "gamma": g.ravel(),
        "kappa": k.ravel(),
        "pnl": pnl,
        "pnl_flat": np.asarray(result.pnl_flat, np.float64),
        "std_position": std,
        "pnl_per_risk": per_risk,
        "n_fills": np.asarray(result.n_bid_fills + result.n_ask_fills, np.float64),
        "blocks": blocks,
    }
    best = int(np.nanargmax(pnl))
    best_risk = int(np.nanargmax(per_risk)) if np.isfinite(per_risk).any() else best
    half_rho = _rank_matrix(blocks.T)
    off = (
        half_rho[~np.eye(half_rho.shape[0], dtype=bool)] if half_rho.shape[0] > 1 else np.array([])
    )
    info = {
        "n_settings": int(g.size),
        "n_events": whole.n_events,
        "n_stream_steps": n_steps,
        "seconds": timer.seconds,
        "strategy_events_per_second": g.size * whole.n_events / timer.seconds,
        "strategy_steps_per_second": g.size * n_steps / timer.seconds,
        "devices": device_lib.describe(args.device_list),
        "gammas": gammas,
        "kappas": kappas,
        "best_pnl": {
            "gamma": float(g.ravel()[best]),
            "kappa": float(k.ravel()[best]),
            "pnl": float(pnl[best]),
        },
        "best_pnl_per_risk": {
            "gamma": float(g.ravel()[best_risk]),
            "kappa": float(k.ravel()[best_risk]),
            "pnl_per_risk": _float(per_risk[best_risk]),
            "pnl": float(pnl[best_risk]),
        },
        "share_profitable": float(np.mean(pnl > 0)),
        "half_hour_rank_correlation_mean": float(np.nanmean(off)) if off.size else None,
        "half_hour_rank_correlation_min": float(np.nanmin(off)) if off.size else None,
        "n_blocks": int(blocks.shape[1]),
        "note": "the whole day, so the morning part is in-sample for the calibrated sigma (the "
        "policy's sigma); gamma and kappa are the grid's",
    }
    return info, grid


def _rank_matrix(rows: np.ndarray) -> np.ndarray:
    """Spearman rank correlation between the rows of ``rows`` ``[m, n]`` (``[m, m]``)."""
    if rows.shape[0] < 2:
        return np.ones((rows.shape[0], rows.shape[0]))
    ranks = np.apply_along_axis(stats.rankdata, 1, rows)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.corrcoef(ranks)


def robust_settings(grids: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """Which settings do well across stocks and across half-hours."""
    names = list(grids)
    if not names:
        return {}
    pnl = np.stack([grids[n]["pnl"] for n in names])
    rho = _rank_matrix(pnl)
    pairs = {
        f"{a}-{b}": _float(rho[i, j])
        for i, a in enumerate(names)
        for j, b in enumerate(names)
        if i < j
    }
    top = np.stack([p >= np.quantile(p, 0.9) for p in pnl])
    everywhere = np.flatnonzero(top.all(axis=0))
    block_top = []
    for n in names:
        blocks = grids[n]["blocks"]
        block_top.append(blocks >= np.quantile(blocks, 0.9, axis=0, keepdims=True))
    share = np.concatenate(block_top, axis=1).mean(axis=1)  # of all (stock, block) cells
    order = np.argsort(-share)[:10]
    g, k = grids[names[0]]["gamma"], grids[names[0]]["kappa"]
    return {
        "stocks": names,
        "rank_correlation_between_stocks": pairs,
        "top_decile_every_stock": [
            {
                "gamma": float(g[i]),
                "kappa": float(k[i]),
                **{n: float(grids[n]["pnl"][i]) for n in names},
            }
            for i in everywhere
        ],
        "top_decile_every_stock_count": int(everywhere.size),
        "top_decile_every_stock_and_block_count": int(
            np.concatenate(block_top, axis=1).all(axis=1).sum()
        ),
        "most_often_top_decile_per_block": [
            {
                "gamma": float(g[i]),
                "kappa": float(k[i]),
                "share_of_blocks_in_top_decile": float(share[i]),
                **{n: float(grids[n]["pnl"][i]) for n in names},
            }
            for i in order
        ],
    }


# --------------------------------------------------------------------------------- figures


def plot_pnl_paths(plots: dict[str, dict], path: Path) -> None:
    fig, axes = plt.subplots(1, len(plots), figsize=(5 * len(plots), 4), squeeze=False)
    for ax, (ticker, p) in zip(axes[0], plots.items(), strict=True):
        hours = (np.asarray(p["marks"]) - 0.0) / 3600.0
        ax.plot(hours, p["as_marks"], color="tab:blue", label="A-S, PnL at mid")
        ax.axhline(0, color="grey", lw=0.6)
        ax.set(xlabel="hour of day", ylabel="dollars", title=f"{ticker}: A-S replay, afternoon")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def plot_markouts(plots: dict[str, dict], horizons: tuple, path: Path) -> None:
    fig, axes = plt.subplots(1, len(plots), figsize=(5 * len(plots), 4), squeeze=False)
    x = np.array([0.1, *horizons])  # capture at the fill, drawn at 0.1 s on the log axis
    for ax, (ticker, p) in zip(axes[0], plots.items(), strict=True):
        for name, row in p["markouts"].items():
            spread = row["spread_per_share"]
            if spread is None:
                continue
            marks = [row["markout_per_share"][f"{h:g}s"] for h in horizons]
            (line,) = ax.plot(x, [spread, *(spread + m for m in marks)], "o-", label=name, ms=4)
            ax.axhline(spread, color=line.get_color(), lw=0.6, ls=":")
        ax.axhline(0, color="grey", lw=0.6)
        ax.set(
            xscale="log",
            xlabel="horizon, seconds",
            ylabel="realised spread, $ per share",
            title=f"{ticker}: spread capture + markout (0.1 s: capture)",
        )
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def plot_inventory(plots: dict[str, dict], path: Path) -> None:
    fig, axes = plt.subplots(1, len(plots), figsize=(5 * len(plots), 4), squeeze=False)
    for ax, (ticker, p) in zip(axes[0], plots.items(), strict=True):
        q, dt = p["inventory_real"]
        sim = p["inventory_sim"].ravel()
        edges = np.arange(min(q.min(), sim.min()) - 0.5, max(q.max(), sim.max()) + 1.5)
        ax.hist(q, bins=edges, weights=dt / dt.sum(), alpha=0.6, label="replay (time share)")
        ax.hist(
            sim, bins=edges, weights=np.full(sim.size, 1 / sim.size), alpha=0.6, label="simulated"
        )
        ax.set(xlabel="inventory, quotes", ylabel="share of time", title=f"{ticker}: A-S inventory")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def plot_sim_pnl(plots: dict[str, dict], path: Path) -> None:
    names = list(STRATEGIES)
    fig, axes = plt.subplots(
        len(plots), len(names), figsize=(4 * len(names), 3 * len(plots)), squeeze=False
    )
    for row, (ticker, p) in zip(axes, plots.items(), strict=True):
        for ax, name in zip(row, names, strict=True):
            ax.hist(p["sim_pnl"][name], bins=50, color="tab:grey")
            ax.axvline(p["realised_pnl"][name], color="tab:red", label="realised")
            ax.set(title=f"{ticker} {name}", xlabel="afternoon PnL, $")
            ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def plot_sweep(grids: dict, infos: dict, field: str, label: str, path: Path) -> None:
    fig, axes = plt.subplots(1, len(grids), figsize=(5.5 * len(grids), 4.5), squeeze=False)
    for ax, (ticker, grid) in zip(axes[0], grids.items(), strict=True):
        info = infos[ticker]
        n = len(info["gammas"])
        values = grid[field].reshape(n, n)
        limit = np.nanmax(np.abs(values)) or 1.0
        mesh = ax.pcolormesh(
            info["kappas"],
            info["gammas"],
            values,
            cmap="RdBu",
            vmin=-limit,
            vmax=limit,
            shading="auto",
        )
        fig.colorbar(mesh, ax=ax, label=label)
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="kappa (A-S assumed k), per $",
            ylabel="gamma",
            title=ticker,
        )
    fig.tight_layout()
    save_figure(fig, path)


# --------------------------------------------------------------------------------- tables


def calibration_table(stocks: dict) -> tuple[list[str], list[list[str]]]:
    header = ["stock", "A /s (robust se)", "k /$ (robust se)", "sigma $/sqrt(s) (se)", "orders"]
    rows = []
    for ticker, s in stocks.items():
        c = s["calibration"]
        rows.append(
            [
                ticker,
                f"{c['A_per_second']:.4f} ({c['stderr_A_robust']:.4f})",
                f"{c['k_per_dollar']:.2f} ({c['stderr_k_robust']:.2f})",
                f"{c['sigma_per_sqrt_second']:.5f} ({c['stderr_sigma']:.5f})",
                c["n_market_orders"],
            ]
        )
    return header, rows


def oos_table(stocks: dict) -> tuple[list[str], list[list[Any]]]:
    header = [
        "stock", "strategy", "PnL mid $", "PnL flat $", "spread $", "inventory $", "fills b/a",
        "fill ratio", "touch b/a", "std q", "markout 1/10/60/300 s $/sh",
    ]  # fmt: skip
    rows = []
    for ticker, s in stocks.items():
        for name, r in s["replay"]["out_of_sample"].items():
            m = r["markout_per_share"]
            rows.append(
                [
                    ticker,
                    name,
                    f"{r['pnl']:.0f}",
                    f"{r['pnl_flat']:.0f}",
                    f"{r['spread_pnl']:.0f}",
                    f"{r['inventory_pnl']:.0f}",
                    f"{r['n_bid_fills']}/{r['n_ask_fills']}",
                    f"{np.mean(r['fill_ratio']):.3f}",
                    f"{r['touch_share'][0]:.2f}/{r['touch_share'][1]:.2f}",
                    f"{r['std_q']:.2f}",
                    "/".join("n/a" if v is None else f"{v:+.3f}" for v in m.values()),
                ]
            )
    return header, rows


def sim_table(stocks: dict) -> tuple[list[str], list[list[Any]]]:
    header = [
        "stock", "strategy", "realised $", "sim mean $ (se)", "sim 5-95%", "pctile",
        "fills real b/a", "fills sim b/a", "mean abs q real/sim", "std q real/sim",
        "block $ real (95% CI)", "block $ sim",
    ]  # fmt: skip
    rows = []
    for ticker, s in stocks.items():
        for name, c in s["replay"]["sim_vs_replay"].items():
            ci = c["bootstrap_ci_mean_block_pnl"]
            rows.append(
                [
                    ticker,
                    name,
                    f"{c['realised_pnl']:.0f}",
                    f"{c['sim_mean_pnl']:.0f} ({c['sim_se_pnl']:.0f})",
                    f"{c['sim_p05_pnl']:.0f}..{c['sim_p95_pnl']:.0f}",
                    f"{c['percentile_of_realised']:.1f}",
                    f"{c['realised_bid_fills']}/{c['realised_ask_fills']}",
                    f"{c['sim_bid_fills']:.0f}/{c['sim_ask_fills']:.0f}",
                    f"{c['realised_mean_abs_q']:.2f}/{c['sim_mean_abs_q']:.2f}",
                    f"{c['realised_std_q']:.2f}/{c['sim_std_q']:.2f}",
                    _block_cell(c["realised_mean_block_pnl"], ci),
                    "n/a" if c["sim_mean_block_pnl"] is None else f"{c['sim_mean_block_pnl']:.0f}",
                ]
            )
    return header, rows


def _block_cell(mean: float | None, ci: list) -> str:
    if mean is None:
        return "n/a"
    if ci[0] is None:
        return f"{mean:.0f}"
    return f"{mean:.0f} ({ci[0]:.0f}..{ci[1]:.0f})"


def sweep_table(stocks: dict) -> tuple[list[str], list[list[Any]]]:
    header = [
        "stock", "settings", "events", "seconds", "strategy-events/s", "best (gamma, kappa): PnL",
        "best PnL/std: (gamma, kappa)", "profitable", "half-hour rank corr",
    ]  # fmt: skip
    rows = []
    for ticker, s in stocks.items():
        w = s["sweep"]
        b, r = w["best_pnl"], w["best_pnl_per_risk"]
        rho = w["half_hour_rank_correlation_mean"]
        rows.append(
            [
                ticker,
                w["n_settings"],
                w["n_events"],
                f"{w['seconds']:.1f}",
                f"{w['strategy_events_per_second']:.3g}",
                f"({b['gamma']:.3g}, {b['kappa']:.3g}): {b['pnl']:.0f}",
                f"({r['gamma']:.3g}, {r['kappa']:.3g})",
                f"{100 * w['share_profitable']:.0f}%",
                "n/a" if rho is None else f"{rho:.2f}",
            ]
        )
    return header, rows


def print_report(payload: dict[str, Any]) -> None:
    stocks = {t: s for t, s in payload["stocks"].items() if "skipped" not in s}
    for ticker, s in payload["stocks"].items():
        if "skipped" in s:
            print(f"{ticker} skipped: {s['skipped']}")
    if not stocks:
        return
    for title, table in (
        ("Calibration (morning)", calibration_table),
        ("Out of sample (afternoon replay)", oos_table),
        ("Sim vs replay (afternoon, dollars)", sim_table),
        ("Sweep (whole day)", sweep_table),
    ):
        print(f"\n### {title}\n")
        print(markdown_table(*table(stocks)))
    robust = payload.get("robust_settings", {})
    if robust:
        print(
            "\nrank correlation of per-setting PnL between stocks: "
            f"{robust['rank_correlation_between_stocks']}"
        )
        print(
            f"settings in the top decile of every stock: {robust['top_decile_every_stock_count']}"
        )


# ------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None, **options: Any) -> dict[str, Any]:
    """Run the study; ``options`` override the command line's values (``grid=4``)."""
    args = parse_args(argv, **options)
    args.out = Path(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    key = jax.random.key(args.seed)
    t_open, t_split = backtest.parse_time(args.open), backtest.parse_time(args.split)
    stocks, plots, grids, infos = {}, {}, {}, {}
    with Timer() as total:
        for index, stock in enumerate(args.stocks):
            folder = stock_folder(args.data_dir, stock)
            try:
                lobster.find_files(folder)
            except FileNotFoundError as error:
                progress(f"{stock}: skipped ({error})")
                stocks[stock.upper()] = {"skipped": str(error)}
                continue
            progress(f"{stock}: reading {folder}")
            day = lobster.read_lobster(folder)
            ticker = day.ticker
            day10 = None
            folder10 = stock_folder(args.data_dir, stock, level=10)
            if stock == "goog" and not args.no_level10 and folder10.is_dir():
                day10 = lobster.read_lobster(folder10)
            calib = calibrate_morning(day, t_open, t_split, args)
            progress(
                f"{ticker}: A = {calib['A_per_second']:.4f}/s, k = {calib['k_per_dollar']:.2f}/$,"
                f" sigma = {calib['sigma_per_sqrt_second']:.5f} $/sqrt(s)"
            )
            replay, plots[ticker] = replay_stock(
                day, day10, calib, args, jax.random.fold_in(key, index), args.out
            )
            infos[ticker], grids[ticker] = sweep_stock(day, calib, args)
            stocks[ticker] = {
                "data": {"folder": str(folder), "events": day.n_events, "date": day.date},
                "calibration": calib,
                "replay": replay,
                "sweep": infos[ticker],
            }
        robust = robust_settings(grids)
        write_outputs(args.out, stocks, plots, grids, infos)
    payload = {
        "study": "backtest",
        "stocks": stocks,
        "robust_settings": robust,
        "tables": {},
        "notes": {
            "units": "dollars; A per second per side of the book, k per dollar, sigma dollars "
            "per sqrt(second); gamma per dollar per quote unit (inventory in quotes of "
            f"{args.quote_size} shares, as the policies see it); simulated PnL per quote unit "
            f"x {args.quote_size} = dollars",
            "symmetric": "fixed depth (1/gamma) ln(1 + gamma/k) each side: the optimal half-"
            "spread of the fitted exponential intensity (A-S's and GLFT's spread term)",
            "blocks": "realised block PnL from the replay's marks; the bootstrap resamples the "
            "whole blocks of the afternoon (a block bootstrap with the block as unit)",
            "sweep_speed": "seconds of the one sweep call, compilation included; strategy-"
            "events = settings x tape events",
        },
    }
    ok = {t: s for t, s in stocks.items() if "skipped" not in s}
    payload["notes"]["volatility"] = volatility_note(ok, args.vol_seconds)
    if ok:
        for name, table in (
            ("calibration", calibration_table),
            ("out_of_sample", oos_table),
            ("sim_vs_replay", sim_table),
            ("sweep", sweep_table),
        ):
            header, rows = table(ok)
            payload["tables"][name] = {"header": header, "rows": rows}
    print_report(payload)
    config = {k: v for k, v in vars(args).items() if k != "device_list"}
    return finish(args.out, "results", payload, config=config, seconds=total.seconds)


def volatility_note(stocks: dict, seconds: float) -> str:
    """Why ``seconds``: the signature (sigma at each sampling interval / sigma at ``seconds``)."""
    parts = []
    for ticker, s in stocks.items():
        ratios = s["calibration"]["signature_ratio_to_chosen"]
        shown = ", ".join(f"{h} {r:.2f}" for h, r in ratios.items())
        parts.append(f"{ticker}: {shown}")
    return (
        f"sigma sampled every {seconds:g} s; signature sigma(h) / sigma({seconds:g} s): "
        + "; ".join(parts)
        + ". Finer sampling is biased by bid-ask bounce where the ratio at 1-2 s exceeds 1; "
        "coarser sampling changes sigma little (within its larger standard error) but has "
        "fewer increments."
    )


def write_outputs(out: Path, stocks: dict, plots: dict, grids: dict, infos: dict) -> None:
    ok = {t: s for t, s in stocks.items() if "skipped" not in s}
    if not ok:
        return
    rows = []
    for ticker, s in ok.items():
        c = s["calibration"]
        rows.append(
            {"stock": ticker, **{k: v for k, v in c.items() if not isinstance(v, list | dict)}}
        )
    write_rows_csv(out / "calibration.csv", rows)
    write_rows_csv(
        out / "signature.csv",
        [{"stock": t, **r} for t, s in ok.items() for r in s["calibration"]["signature"]],
    )
    rows = []
    for ticker, s in ok.items():
        for name, r in s["replay"]["out_of_sample"].items():
            flat = {k: v for k, v in r.items() if not isinstance(v, list | dict)}
            flat.update({f"markout_{h}": v for h, v in r["markout_per_share"].items()})
            for i, side in enumerate(("bid", "ask")):
                for field in ("fill_ratio", "touch_share", "quoted_share", "time_at_touch"):
                    flat[f"{field}_{side}"] = r[field][i]
            rows.append({"stock": ticker, "strategy": name, **flat})
    write_rows_csv(out / "out_of_sample.csv", _same_keys(rows))
    rows = []
    for ticker, s in ok.items():
        for name, c in s["replay"]["sim_vs_replay"].items():
            flat = {k: v for k, v in c.items() if not isinstance(v, list | dict | str)}
            rows.append({"stock": ticker, "strategy": name, **flat})
    write_rows_csv(out / "sim_vs_replay.csv", _same_keys(rows))
    for ticker, grid in grids.items():
        columns = {k: v for k, v in grid.items() if k != "blocks"}
        for j in range(grid["blocks"].shape[1]):
            columns[f"block_{j}"] = grid["blocks"][:, j]
        write_csv(out / f"sweep_{ticker}.csv", columns)
    horizons = backtest.Config().markout_horizons
    plot_pnl_paths(plots, out / "pnl_path.png")
    plot_markouts(plots, horizons, out / "markouts.png")
    plot_inventory(plots, out / "inventory_hist.png")
    plot_sim_pnl(plots, out / "sim_pnl.png")
    plot_sweep(grids, infos, "pnl", "PnL, $", out / "sweep_pnl.png")
    plot_sweep(
        grids,
        infos,
        "pnl_per_risk",
        "PnL / std position, $ per share",
        out / "sweep_pnl_per_risk.png",
    )


def _same_keys(rows: list[dict]) -> list[dict]:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    return [{k: row.get(k) for k in keys} for row in rows]


if __name__ == "__main__":
    main()
