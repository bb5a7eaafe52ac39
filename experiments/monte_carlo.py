"""Monte Carlo study of Avellaneda-Stoikov at the homework parameters.

``python -m experiments.monte_carlo`` simulates 10,000 A-S episodes (gamma = 0.1, k = 1.5) and,
on the same paths (common random numbers), the naive symmetric quoter (spread 1.0); prints the
statistics with standard errors and writes ``results/monte_carlo/``:

- ``summary.json``: config (market, policies, seed, episodes), statistics, timings;
- ``episodes.csv``: per-episode terminal PnL, inventory, drawdown and fills of A-S;
- ``pnl_hist.png``, ``inventory_hist.png``: terminal distributions;
- ``sample_paths.png``: mid with bid/ask, inventory and PnL of 10 episodes;
- ``quote_skew.png``: A-S depths against inventory, and the spread against time to go.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxmm as mm
from experiments.common import Timer, environment, write_csv, write_json
from jaxmm import market, plots


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.monte_carlo", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--n-episodes", type=int, default=10_000, help="episodes (default 10000)")
    parser.add_argument("--gamma", type=float, default=0.1, help="A-S risk aversion")
    parser.add_argument("--kappa", type=float, default=1.5, help="A-S assumed k, per price unit")
    parser.add_argument("--naive-spread", type=float, default=1.0, help="naive total spread")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-paths", type=int, default=10, help="episodes in the path figure")
    parser.add_argument("--out", type=Path, default=Path("results/monte_carlo"))
    args = parser.parse_args(argv)
    if args.n_episodes < 2:
        parser.error(f"--n-episodes must be >= 2, got {args.n_episodes}")
    if args.n_paths < 1:
        parser.error(f"--n-paths must be >= 1, got {args.n_paths}")
    if args.naive_spread <= 0:
        parser.error(f"--naive-spread must be > 0, got {args.naive_spread}")
    return args


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


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    params = mm.presets.homework()
    strategies = {
        "avellaneda_stoikov": mm.policies.avellaneda_stoikov(args.gamma, k=args.kappa),
        "naive": mm.policies.symmetric(args.naive_spread / 2),
    }
    key = jax.random.key(args.seed)
    print(
        f"Monte Carlo: {args.n_episodes:,} episodes x {params.n_steps} steps, seed {args.seed}",
        file=sys.stderr,
    )
    rollouts, seconds = {}, {}
    for name, policy in strategies.items():
        with Timer() as timer:
            rollouts[name] = jax.block_until_ready(
                mm.simulate(params, policy, key, args.n_episodes)
            )
        seconds[name] = timer.seconds
    summaries = {name: mm.metrics.summarize(ro) for name, ro in rollouts.items()}
    print(mm.metrics.format_table(summaries))
    print("Sharpe is per episode: mean / std of terminal PnL across episodes.")

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    # The first n_paths episodes of the same key: the same episodes as in the statistics.
    with_paths = mm.simulate(
        params, strategies["avellaneda_stoikov"], key, args.n_paths, paths=True
    )
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
    label = f"A-S gamma={args.gamma}, k={args.kappa}"
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
    payload = {
        "study": "monte_carlo",
        "config": {
            "seed": args.seed,
            "n_episodes": args.n_episodes,
            "market": params,
            "strategies": {
                "avellaneda_stoikov": {"gamma": args.gamma, "k": args.kappa},
                "naive": {"half_spread": args.naive_spread / 2},
            },
            "noise": "common random numbers: both strategies see the same paths",
        },
        "summary": summaries,
        "notes": {"sharpe": "per episode: mean / std of terminal PnL across episodes"},
        "seconds": seconds,
        "environment": environment(),
    }
    write_json(out / "summary.json", payload)
    print(f"wrote {out}/", file=sys.stderr)
    return payload


if __name__ == "__main__":
    main()
