"""Monte Carlo study of Avellaneda-Stoikov at the homework parameters.

``python -m experiments.monte_carlo`` simulates 10,000 A-S episodes (gamma = 0.1, k = 1.5) and,
on the same paths (common random numbers), the naive symmetric quoter (spread 1.0); prints the
statistics with standard errors and writes ``results/monte_carlo/``:

- ``summary.json``: config (market, policies, seed, episodes), statistics, timings;
- ``episodes.csv``: per-episode terminal PnL, inventory, drawdown and fills of A-S;
- ``pnl_hist.png``, ``inventory_hist.png``: terminal distributions;
- ``sample_paths.png``: mid with bid/ask, inventory and PnL of 10 episodes;
- ``quote_skew.png``: A-S depths against inventory, and the spread against time to go.

``--stream`` runs in bounded memory (``jaxmm.streaming.simulate_summary``: chunks of episodes
reduced to statistics on the device, one progress line per chunk), for runs such as
``python -m experiments.monte_carlo --episodes 10000000 --stream``: the same statistics (the
quantiles, VaR and CVaR from an exact histogram, to the ``quantile_resolution`` recorded), no
``episodes.csv``; ``pnl_hist.png`` is drawn from the histogram. ``summary.json`` records the
devices, the elapsed time and the peak resident memory of the process in either mode.
``--devices N`` / ``--platform`` split the episodes over N devices (``jaxmm.devices``).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxmm as mm
from experiments import plots
from experiments.common import Timer, finish, save_figure, study_parser, write_csv
from jaxmm import devices as device_lib
from jaxmm import market, streaming

QUICK = {"n_episodes": 200}  # experiments.all --quick


def parse_args(argv: list[str] | None = None, **options: Any) -> argparse.Namespace:
    parser = study_parser(
        "monte_carlo",
        __doc__,
        n_episodes=10_000,
        min_episodes=2,
        episodes_aliases=("--episodes",),
        episodes_help="episodes (default 10000)",
    )
    parser.add_argument(
        "--stream",
        action="store_true",
        help="bounded memory: stream chunks through the statistics (no per-episode outputs)",
    )
    parser.add_argument("--chunk-size", type=int, default=None, help="episodes per chunk")
    parser.add_argument(
        "--n-bins", type=int, default=streaming.DEFAULT_BINS, help="PnL histogram bins (--stream)"
    )
    parser.add_argument(
        "--gamma", type=float, default=0.1, help="A-S risk aversion, per price unit"
    )
    parser.add_argument("--kappa", type=float, default=1.5, help="A-S assumed k, per price unit")
    parser.add_argument(
        "--naive-spread", type=float, default=1.0, help="naive quoter's total spread, price units"
    )
    parser.add_argument("--n-paths", type=int, default=10, help="episodes in the path figure")
    device_lib.add_arguments(parser)
    args = parser.parse(argv, **options)
    if args.n_paths < 1:
        parser.error(f"--n-paths must be >= 1, got {args.n_paths}")
    if args.naive_spread <= 0:
        parser.error(f"--naive-spread must be > 0, got {args.naive_spread}")
    if args.chunk_size is not None and args.chunk_size < 1:
        parser.error(f"--chunk-size must be >= 1, got {args.chunk_size}")
    if not 16 <= args.n_bins <= 2**22:
        parser.error(f"--n-bins must be in [16, 2**22], got {args.n_bins}")
    args.device_list = device_lib.from_arguments(parser, args)
    return args


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MB (Linux reports kB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def plot_streamed_histogram(
    histogram: streaming.Histogram, summary: dict, path: Path, *, title: str
) -> Path:
    """Terminal-PnL histogram of a streamed run (the exact counts, grouped for display)."""
    import matplotlib.pyplot as plt

    edges, counts = histogram.display(200)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.stairs(counts, edges, fill=True, alpha=0.8, label=f"{histogram.n:,} episodes")
    ax.axvline(summary["mean_pnl"], color="black", lw=1.5, label=f"mean {summary['mean_pnl']:.3g}")
    ax.axvline(
        summary["p05_pnl"],
        color="tab:red",
        ls="--",
        lw=1.2,
        label=f"5th percentile {summary['p05_pnl']:.3g}",
    )
    width = edges[1] - edges[0]
    ax.set(title=title, xlabel="terminal PnL", ylabel=f"episodes per bin of {width:.3g}")
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def quote_skew_data(params: mm.MarketParams, policy: mm.policies.AvellanedaStoikov):
    """A-S depths on an inventory grid at three times, and the spread over the session."""
    inventories = np.arange(-10, 11, dtype=np.float32)
    state = market.reset(jax.random.key(0), params)
    depths = {}
    for fraction in (0.0, 0.5, 0.9):
        t_index = round(fraction * params.n_steps)
        obs = state.replace(t=jnp.int32(t_index))
        quotes = jax.vmap(lambda q, obs=obs: policy(obs.replace(inventory=q), params))(
            jnp.asarray(inventories)
        )
        depths[f"t = {t_index * params.dt:.2g}"] = (
            np.asarray(quotes.bid_depth),
            np.asarray(quotes.ask_depth),
        )
    steps = jnp.arange(params.n_steps, dtype=jnp.int32)
    spread = jax.vmap(lambda t: policy.spread(state.replace(t=t), params))(steps)
    return inventories, depths, np.asarray(steps) * params.dt, np.asarray(spread)


def simulate_strategies(params, strategies: dict, key: jax.Array, args: argparse.Namespace):
    """Simulate every strategy on the same key (in memory or streamed, as ``args`` says).
    Returns ``(rollouts, statistics, summaries, seconds)``, dicts keyed by strategy."""
    run = {"chunk_size": args.chunk_size, "devices": args.device_list}
    rollouts, statistics, summaries, seconds = {}, {}, {}, {}
    for name, policy in strategies.items():
        with Timer() as timer:
            if args.stream:
                statistics[name] = streaming.stream_statistics(
                    params, policy, key, args.n_episodes, progress=True, n_bins=args.n_bins, **run
                )
                summaries[name] = statistics[name].summary()
            else:
                rollouts[name] = jax.block_until_ready(
                    mm.simulate(params, policy, key, args.n_episodes, **run)
                )
                summaries[name] = mm.metrics.summarize(rollouts[name])
        seconds[name] = timer.seconds
    return rollouts, statistics, summaries, seconds


def write_figures(
    out: Path,
    params,
    strategies: dict,
    key: jax.Array,
    args: argparse.Namespace,
    rollouts: dict,
    statistics: dict,
    summaries: dict,
) -> None:
    """The episodes CSV (in memory only), PnL and inventory histograms, sample paths and the
    quote skew of A-S into ``out``."""
    # The first n_paths episodes of the same key: the same episodes as in the statistics.
    with_paths = mm.simulate(
        params, strategies["avellaneda_stoikov"], key, args.n_paths, paths=True
    )
    label = f"A-S gamma={args.gamma}, k={args.kappa}"
    if args.stream:
        plot_streamed_histogram(
            statistics["avellaneda_stoikov"].histogram,
            summaries["avellaneda_stoikov"],
            out / "pnl_hist.png",
            title=f"Terminal PnL, {label}",
        )
    else:
        ro = rollouts["avellaneda_stoikov"]
        write_csv(
            out / "episodes.csv",
            {
                "pnl": ro.pnl,
                "inventory": ro.inventory,
                "spread_pnl": ro.spread_pnl,
                "inventory_pnl": ro.inventory_pnl,
                "max_drawdown": ro.max_drawdown,
                "n_bid_fills": ro.n_bid_fills,
                "n_ask_fills": ro.n_ask_fills,
            },
        )
        plots.histogram(
            ro.pnl, out / "pnl_hist.png", title=f"Terminal PnL, {label}", xlabel="terminal PnL"
        )
        plots.histogram(
            ro.inventory,
            out / "inventory_hist.png",
            title=f"Terminal inventory, {label}",
            xlabel="terminal inventory q_T",
            bins=np.arange(ro.inventory.min() - 0.5, ro.inventory.max() + 1.5),
        )
    plots.sample_paths(with_paths, out / "sample_paths.png", dt=params.dt, n_show=args.n_paths)
    inventories, depths, times, spread = quote_skew_data(params, strategies["avellaneda_stoikov"])
    plots.quote_skew(
        inventories, depths, times, spread, out / "quote_skew.png", title=f"Quote skew, {label}"
    )


def main(argv: list[str] | None = None, **options: Any) -> dict:
    """Run the study; ``options`` override the command line's values (``n_episodes=200``)."""
    args = parse_args(argv, **options)
    wall_start = time.perf_counter()
    params = mm.presets.homework()
    strategies = {
        "avellaneda_stoikov": mm.policies.avellaneda_stoikov(args.gamma, k=args.kappa),
        "naive": mm.policies.symmetric(args.naive_spread / 2),
    }
    key = jax.random.key(args.seed)
    mode = "streamed" if args.stream else "in memory"
    print(
        f"Monte Carlo ({mode}): {args.n_episodes:,} episodes x {params.n_steps} steps, "
        f"seed {args.seed}, {device_lib.describe(args.device_list)['devices_used']} device(s)",
        file=sys.stderr,
    )
    rollouts, statistics, summaries, seconds = simulate_strategies(params, strategies, key, args)
    print(mm.metrics.format_table(summaries))
    print("Sharpe is per episode: mean / std of terminal PnL across episodes.")

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    write_figures(out, params, strategies, key, args, rollouts, statistics, summaries)
    notes = {"sharpe": "per episode: mean / std of terminal PnL across episodes"}
    if args.stream:
        notes["quantiles"] = (
            "median, p05, p95, VaR and CVaR from an exact histogram of terminal PnL on the "
            "minimal dyadic grid holding its range (jaxmm.streaming): within "
            "summary[...]['quantile_resolution'] (one bin width) of the exact values; means, "
            "standard deviations and standard errors from exactly merged per-chunk moments"
        )
    elapsed = time.perf_counter() - wall_start
    payload = finish(
        out,
        "summary",
        {
            "study": "monte_carlo",
            "summary": summaries,
            "notes": notes,
            "elapsed_seconds": elapsed,
            "episode_steps_per_second": {
                name: args.n_episodes * params.n_steps / s for name, s in seconds.items()
            },
            "peak_rss_mb": peak_rss_mb(),
            "devices": device_lib.describe(args.device_list),
        },
        config={
            "seed": args.seed,
            "n_episodes": args.n_episodes,
            "mode": "stream" if args.stream else "in_memory",
            "chunk_size": args.chunk_size,
            "n_bins": args.n_bins if args.stream else None,
            "market": params,
            "strategies": {
                "avellaneda_stoikov": {"gamma": args.gamma, "k": args.kappa},
                "naive": {"half_spread": args.naive_spread / 2},
            },
            "noise": "common random numbers: both strategies see the same paths",
        },
        seconds=seconds,
    )
    print(
        f"wrote {out}/ ({payload['elapsed_seconds']:.1f} s, peak RSS "
        f"{payload['peak_rss_mb']:.0f} MB)",
        file=sys.stderr,
    )
    return payload


if __name__ == "__main__":
    main()
