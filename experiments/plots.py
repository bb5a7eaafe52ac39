"""Matplotlib figures of the Monte Carlo study (headless: ``experiments.common`` selects the
Agg backend; files only)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from experiments.common import save_figure
from jaxmm.simulation import Rollout


def _save(fig: plt.Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    return save_figure(fig, path)


def histogram(values: np.ndarray, path: Path, *, title: str, xlabel: str, bins=60) -> Path:
    """Histogram with the mean and the 5th percentile marked."""
    values = np.asarray(values, np.float64)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(values, bins=bins, color="tab:blue", alpha=0.8, label=f"{values.size:,} episodes")
    ax.axvline(values.mean(), color="black", lw=1.5, label=f"mean {values.mean():.3g}")
    p05 = np.quantile(values, 0.05)
    ax.axvline(p05, color="tab:red", ls="--", lw=1.2, label=f"5th percentile {p05:.3g}")
    ax.set(title=title, xlabel=xlabel, ylabel="episodes")
    ax.legend()
    return _save(fig, path)


def sample_paths(rollout: Rollout, path: Path, *, dt: float, n_show: int = 10) -> Path:
    """Mid with bid/ask (first episode), inventory and PnL of ``n_show`` episodes."""
    paths = rollout.paths
    if paths is None:
        raise ValueError("sample_paths needs a rollout simulated with paths=True")
    n_show = min(n_show, paths.mid.shape[0])
    n_steps = paths.bid.shape[1]
    time_levels = np.arange(n_steps + 1) * dt
    time_steps = np.arange(n_steps) * dt
    fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    ax = axes[0]
    ax.plot(time_levels, paths.mid[0], color="black", lw=1.2, label="mid")
    sides = (
        ("bid", paths.bid, paths.bid_fill, "tab:green", "^"),
        ("ask", paths.ask, paths.ask_fill, "tab:red", "v"),
    )
    for side, quotes, fills, colour, marker in sides:
        quotes = np.asarray(quotes[0])
        hits = np.asarray(fills[0]) > 0
        ax.step(time_steps, quotes, where="post", color=colour, lw=0.9, label=side)
        ax.scatter(
            time_steps[hits],
            quotes[hits],
            color=colour,
            s=12,
            marker=marker,
            label=f"{side} filled",
        )
    ax.set(title="Episode 0: mid-price and quotes", ylabel="price")
    ax.legend(loc="upper left", fontsize=7, ncol=5)
    for i in range(n_show):
        axes[1].step(time_levels, paths.inventory[i], where="post", lw=0.9)
        axes[2].plot(time_levels, paths.pnl[i], lw=0.9)
    axes[1].set(title=f"Inventory, {n_show} episodes", ylabel="inventory q")
    axes[2].set(title=f"PnL (mark-to-market), {n_show} episodes", xlabel="time", ylabel="PnL")
    for ax in axes[1:]:
        ax.axhline(0, color="grey", lw=0.6)
    return _save(fig, path)


def quote_skew(
    inventories: np.ndarray,
    depths_by_time: dict[str, tuple[np.ndarray, np.ndarray]],
    times: np.ndarray,
    spread_by_time: np.ndarray,
    path: Path,
    *,
    title: str,
) -> Path:
    """Left: bid/ask depth against inventory at several times; right: spread against time to go.

    ``depths_by_time`` maps a label (e.g. ``"t = 0"``) to ``(bid_depths, ask_depths)`` over
    ``inventories``; ``spread_by_time`` is the total spread at ``times`` (time to go on the x
    axis is ``T - times``).
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = plt.cm.viridis(np.linspace(0, 0.85, len(depths_by_time)))
    for colour, (label, (bid, ask)) in zip(colours, depths_by_time.items(), strict=True):
        left.plot(inventories, bid, color=colour, lw=1.5, label=f"bid depth, {label}")
        left.plot(inventories, ask, color=colour, lw=1.5, ls="--", label=f"ask depth, {label}")
    left.axhline(0, color="grey", lw=0.6)
    left.set(title="Quote depths vs inventory", xlabel="inventory q", ylabel="depth from mid")
    left.legend(fontsize=7)
    time_to_go = times[-1] + (times[1] - times[0]) - times
    right.plot(time_to_go, spread_by_time, color="tab:purple", lw=1.5)
    right.set(
        title="Quoted spread vs time to go",
        xlabel="time to go T - t",
        ylabel="spread (bid depth + ask depth)",
    )
    fig.suptitle(title)
    return _save(fig, path)
