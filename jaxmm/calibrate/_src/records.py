"""Intensity records and market statistics from simulations and trade tapes.

- ``FillRecords`` (``f64[n]`` depths in price units, exposure in time units, fill counts, and
  optional ``i64[n]`` cluster labels): what ``fit_intensity(*records)`` fits.
- ``records_from_paths``: per-step records of a simulation (``paths=True``), exposure ``dt``.
- ``tape_records``: a trade tape turned into records: for each time block and depth, the
  exposure and the orders that would have filled a quote there (``jaxmm.lobster`` reads
  LOBSTER files); ``exceedance_rates`` (fills per time unit by depth, with standard errors) and
  ``reach_goodness_of_fit`` (chi-square of the exponential shape on the orders' reaches).
- Volatility: ``realized_volatility`` (``sigma`` in price units per sqrt(time unit), with its
  standard error) and ``sample_previous_tick`` (previous-tick sampling onto a time grid).

Units: those of ``jaxmm.params`` (time in session units unless the caller chooses another time
unit, prices and depths in price units).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any, NamedTuple

import numpy as np

from jaxmm import validation

_NORMAL = NormalDist()


class FillRecords(NamedTuple):
    """Quote-exposure records, ``f64[n]`` each: ``fit_intensity(*records, ...)`` fits them.

    Attributes:
        depths: depth of the quote from the mid, price units.
        exposure: time the quote was exposed, time units.
        fills: number of fills in that time.
        clusters: ``i64[n]`` label of the group of dependent records (records sharing trades or
            a time block), or None when the records are independent.
    """

    depths: np.ndarray
    exposure: np.ndarray
    fills: np.ndarray
    clusters: np.ndarray | None = None


def records_from_paths(rollout: Any, params: Any, side: str = "both") -> FillRecords:
    """Per-step intensity records of a simulation run with ``paths=True``.

    One record per episode, step and quoted side: the depth quoted (``S_t - bid``, ``ask - S_t``),
    exposure ``dt`` and 0 or 1 fill. Sides that could not fill are left out: unquoted sides
    (infinite depth) and the side blocked by the inventory limit (the bid at ``q_t >= q_max``, the
    ask at ``q_t <= -q_max``). Fit with ``fit_intensity(*records, fill_model=params.fill_model,
    dt=params.dt)``; the fit estimates ``A`` times the side's intensity multiplier.

    Args:
        rollout: a ``Rollout`` from ``simulate(..., paths=True)``.
        params: the ``MarketParams`` it was simulated with.
        side: ``"both"`` (pooled; needs equal intensity multipliers), ``"bid"`` or ``"ask"``.
    """
    if rollout.paths is None:
        raise ValueError("records_from_paths needs a rollout simulated with paths=True")
    if side not in ("both", "bid", "ask"):
        raise ValueError(f"side = {side!r}; allowed: 'both', 'bid' or 'ask'")
    bid_mult = np.asarray(params.bid_intensity_mult, np.float64)
    ask_mult = np.asarray(params.ask_intensity_mult, np.float64)
    if side == "both" and not np.array_equal(bid_mult, ask_mult):
        raise ValueError(
            "bid_intensity_mult != ask_intensity_mult: the sides have different intensities; "
            "fit them separately with side='bid' and side='ask'"
        )
    paths = rollout.paths
    mid = np.asarray(paths.mid, np.float64)[:, :-1]
    inventory = np.asarray(paths.inventory, np.float64)[:, :-1]
    q_max = float(params.q_max)
    sides = {
        "bid": (mid - np.asarray(paths.bid, np.float64), paths.bid_fill, inventory < q_max),
        "ask": (np.asarray(paths.ask, np.float64) - mid, paths.ask_fill, inventory > -q_max),
    }
    chosen = ("bid", "ask") if side == "both" else (side,)
    depths, fills = [], []
    for name in chosen:
        depth, fill, open_ = sides[name]
        keep = open_ & np.isfinite(depth)
        depths.append(depth[keep])
        fills.append(np.asarray(fill, np.float64)[keep])
    depths = np.concatenate(depths)
    return FillRecords(depths, np.full(depths.shape, float(params.dt)), np.concatenate(fills))


def tape_records(
    times: Any,
    prices: Any,
    mids: Any,
    sides: Any,
    depths: Any,
    *,
    start: float,
    end: float,
    block_length: float,
    time_unit: float = 1.0,
    side: str = "both",
) -> FillRecords:
    """Intensity records from a trade tape: for each time block and each depth on a grid, the
    exposure of a quote at that depth and the number of market orders that would have filled it.

    A buy market order whose worst price reaches ``mid + delta`` would have lifted an ask quoted at
    depth ``delta``; a sell reaching ``mid - delta`` would have hit a bid there (queue position is
    ignored: a quote at the traded price counts as filled). The ``reach`` of an order is
    ``side * (price - mid)`` with the mid prevailing before it; a record counts the orders of its
    block with ``reach >= delta`` (to within ``1e-9`` price units, so tick-grid ties count).

    The records of one block count the same orders at every depth and trades cluster in time, so
    they are not independent: each record carries its block as ``clusters``, and
    ``fit_intensity(*records)`` then adds the cluster-robust covariance. Point estimates equal
    those of a fit to the whole-session exceedance counts.

    Args:
        times: ``f[n]`` time of each market order (e.g. seconds after midnight).
        prices: ``f[n]`` its worst execution price, price units.
        mids: ``f[n]`` mid prevailing just before it, price units.
        sides: ``[n]`` +1 for buyer-initiated (hits asks), -1 for seller-initiated (hits bids).
        depths: ``f[m]`` depth grid, price units.
        start, end: the observation window, in the units of ``times``; orders outside it are
            ignored.
        block_length: length of the time blocks (the clusters), units of ``times``.
        time_unit: length of the reporting time unit in the units of ``times`` (23,400 for a
            session of 6.5 hours in seconds); exposures are in this unit, so ``A`` is too.
        side: ``"both"`` (bid and ask quotes pooled: exposure ``2 x`` block length), ``"bid"``
            or ``"ask"``.

    Returns:
        ``FillRecords`` ordered block by block, depth by depth (``n_blocks * m`` records).
    """
    times = validation.numeric_array("times", times)
    prices = validation.numeric_array("prices", prices)
    mids = validation.numeric_array("mids", mids)
    sides = validation.numeric_array("sides", sides)
    depths = validation.numeric_array("depths", depths)
    n = times.size
    if not (times.ndim == prices.ndim == mids.ndim == sides.ndim == 1) or not (
        prices.size == mids.size == sides.size == n
    ):
        raise ValueError("times, prices, mids and sides must be 1-D arrays of the same length")
    if not (np.isfinite(prices).all() and np.isfinite(mids).all() and np.isfinite(times).all()):
        raise ValueError("times, prices and mids must be finite (drop orders without a mid)")
    if not np.isin(sides, (-1.0, 1.0)).all():
        raise ValueError("sides must be +1 (buyer-initiated) or -1 (seller-initiated)")
    if depths.ndim != 1 or depths.size < 2 or not np.isfinite(depths).all():
        raise ValueError("depths must be a 1-D grid of at least two finite depths")
    if not (math.isfinite(start) and math.isfinite(end) and end > start):
        raise ValueError(f"start = {start!r}, end = {end!r}; allowed: finite with end > start")
    if not (math.isfinite(block_length) and block_length > 0):
        raise ValueError(f"block_length = {block_length!r}; allowed: > 0")
    if not (math.isfinite(time_unit) and time_unit > 0):
        raise ValueError(f"time_unit = {time_unit!r}; allowed: > 0")
    if side not in ("both", "bid", "ask"):
        raise ValueError(f"side = {side!r}; allowed: 'both', 'bid' or 'ask'")
    n_blocks = math.ceil((end - start) / block_length)
    edges = np.minimum(start + block_length * np.arange(n_blocks + 1), end)
    duration = np.diff(edges) / time_unit
    keep = (times >= start) & (times < end)
    if side != "both":
        keep &= sides == (1.0 if side == "ask" else -1.0)
    block = np.minimum(((times[keep] - start) // block_length).astype(np.int64), n_blocks - 1)
    reach = sides[keep] * (prices[keep] - mids[keep])
    fills = np.stack(
        [np.bincount(block[reach >= d - 1e-9], minlength=n_blocks) for d in depths], axis=1
    ).astype(np.float64)
    exposure = np.repeat(duration * (2.0 if side == "both" else 1.0), depths.size)
    return FillRecords(
        depths=np.tile(depths, n_blocks),
        exposure=exposure,
        fills=fills.ravel(),
        clusters=np.repeat(np.arange(n_blocks), depths.size),
    )


class ExceedanceRates(NamedTuple):
    """Empirical fill rate of a quote at each depth: ``f64[m]`` each.

    ``rate = fills / exposure`` per time unit; ``stderr`` cluster-robust (between clusters) when
    the records have clusters, else Poisson ``sqrt(fills) / exposure``.
    """

    depths: np.ndarray
    rate: np.ndarray
    stderr: np.ndarray
    fills: np.ndarray
    exposure: np.ndarray


def exceedance_rates(records: FillRecords) -> ExceedanceRates:
    """Pool intensity records by depth: the empirical rate ``lambda(delta)`` with its error."""
    depths = validation.numeric_array("depths", records.depths)
    exposure = np.broadcast_to(validation.numeric_array("exposure", records.exposure), depths.shape)
    fills = np.broadcast_to(validation.numeric_array("fills", records.fills), depths.shape)
    grid, at = np.unique(depths, return_inverse=True)
    total_fills = np.bincount(at, weights=fills, minlength=grid.size)
    total_exposure = np.bincount(at, weights=exposure, minlength=grid.size)
    if (total_exposure <= 0).any():
        raise ValueError("every depth needs a positive total exposure")
    rate = total_fills / total_exposure
    if records.clusters is None:
        stderr = np.sqrt(total_fills) / total_exposure
    else:
        labels, cluster = np.unique(np.asarray(records.clusters), return_inverse=True)
        residual = fills - rate[at] * exposure
        per_cluster = np.zeros((labels.size, grid.size))
        np.add.at(per_cluster, (cluster, at), residual)
        correction = labels.size / max(labels.size - 1, 1)
        stderr = np.sqrt((per_cluster**2).sum(axis=0) * correction) / total_exposure
    return ExceedanceRates(grid, rate, stderr, total_fills, total_exposure)


class GoodnessOfFit(NamedTuple):
    """Pearson test of the exponential shape of order reaches on depth bins.

    Attributes:
        statistic: Pearson chi-square ``sum (observed - expected)^2 / expected``.
        dof: degrees of freedom, ``bins - 2`` (the total is conditioned on, ``k`` estimated).
        p_value: upper tail of chi-square(dof) at ``statistic`` (Wilson-Hilferty approximation).
        edges: ``f64[bins]`` lower edge of each bin; the last bin is ``[edges[-1], inf)``.
        observed, expected: ``f64[bins]`` order counts per bin.
        residuals: ``(observed - expected) / sqrt(expected)``: where the shape fails.
    """

    statistic: float
    dof: int
    p_value: float
    edges: np.ndarray
    observed: np.ndarray
    expected: np.ndarray
    residuals: np.ndarray


def _chi2_sf(statistic: float, dof: int) -> float:
    """Upper tail of chi-square(dof) by the Wilson-Hilferty cube-root normal approximation."""
    spread = 2.0 / (9.0 * dof)
    z = ((statistic / dof) ** (1.0 / 3.0) - (1.0 - spread)) / math.sqrt(spread)
    return 1.0 - _NORMAL.cdf(z)


def reach_goodness_of_fit(reaches: Any, edges: Any, k: float) -> GoodnessOfFit:
    """Does ``lambda(delta) = A exp(-k delta)`` have the right shape on these depth bins?

    Under the model the reaches of the orders that pass ``edges[0]`` exceed it by independent
    ``Exponential(k)`` amounts, whatever the arrival times (bursts and intraday seasonality change
    ``A``, not the shape). Conditionally on their number the bin counts are multinomial; this is
    Pearson's test of those counts against the fitted ``k``. Orders below ``edges[0]`` are not
    used. Make the bins wide enough for an expected count of 5 or more in each.

    Args:
        reaches: ``f[n]`` reach of each market order, price units (``side * (price - mid)``).
        edges: ``f[bins]`` increasing lower bin edges, price units.
        k: the fitted decay, per price unit.
    """
    reaches = validation.numeric_array("reaches", reaches)
    edges = validation.numeric_array("edges", edges)
    if edges.ndim != 1 or edges.size < 3 or (np.diff(edges) <= 0).any():
        raise ValueError("edges must be an increasing 1-D grid of at least three depths")
    if not math.isfinite(k):
        raise ValueError(f"k = {k!r}; allowed: finite")
    above = reaches[reaches >= edges[0] - 1e-9]
    if above.size == 0:
        raise ValueError("no reach passes the first edge")
    exceed = np.array([(above >= e - 1e-9).sum() for e in edges], np.float64)
    observed = exceed - np.append(exceed[1:], 0.0)
    survival = np.exp(-k * (edges - edges[0]))
    expected = above.size * (survival - np.append(survival[1:], 0.0))
    residuals = (observed - expected) / np.sqrt(expected)
    statistic = float(np.sum(residuals**2))
    dof = edges.size - 2
    return GoodnessOfFit(
        statistic, dof, _chi2_sf(statistic, dof), edges, observed, expected, residuals
    )


class VolatilityEstimate(NamedTuple):
    """Realised volatility ``sigma`` (price units per sqrt(time unit)) and its standard error."""

    sigma: float
    stderr: float
    n_increments: int
    dt: float


def realized_volatility(mid: Any, dt: float) -> VolatilityEstimate:
    """Realised volatility of mid increments: ``sigma^2 = mean(dS^2) / dt`` (no demeaning: the
    maximum-likelihood estimate of a driftless arithmetic Brownian motion).

    The standard error is the delta method with the sample fourth moment,
    ``se(sigma) = sqrt(var(dS^2) / n) / (2 sigma dt)``, which is ``sigma / sqrt(2n)`` for Gaussian
    increments and stays valid for fat tails; it assumes uncorrelated increments (check a
    signature plot on market data: bid-ask bounce makes fine sampling biased).

    Args:
        mid: ``f[..., n + 1]`` mid levels sampled every ``dt`` along the last axis (several
            episodes or days along leading axes are pooled).
        dt: sampling interval, time units.
    """
    mid = validation.numeric_array("mid", mid)
    if mid.ndim == 0 or mid.shape[-1] < 3:
        raise ValueError("mid needs at least three levels along its last axis")
    if not np.isfinite(mid).all():
        raise ValueError("mid must be finite")
    if not (math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt = {dt!r}; allowed: > 0 (time units)")
    squares = np.diff(mid, axis=-1).ravel() ** 2
    n = squares.size
    variance = squares.mean() / dt
    sigma = math.sqrt(variance)
    se_variance = math.sqrt(squares.var(ddof=1) / n) / dt
    stderr = se_variance / (2.0 * sigma) if sigma > 0 else math.nan
    return VolatilityEstimate(sigma, stderr, n, float(dt))


def sample_previous_tick(times: Any, values: Any, grid: Any) -> np.ndarray:
    """``values`` at each ``grid`` time: the last observation at or before it (``f64[len(grid)]``).

    ``times`` must be non-decreasing and start at or before ``grid[0]``.
    """
    times = validation.numeric_array("times", times)
    values = validation.numeric_array("values", values)
    grid = validation.numeric_array("grid", grid)
    if times.shape != values.shape or times.ndim != 1 or times.size == 0:
        raise ValueError("times and values must be 1-D arrays of the same non-zero length")
    if (np.diff(times) < 0).any():
        raise ValueError("times must be non-decreasing")
    if grid.size and grid.min() < times[0]:
        raise ValueError(f"grid starts at {grid.min()} before the first observation {times[0]}")
    return values[np.searchsorted(times, grid, side="right") - 1]
