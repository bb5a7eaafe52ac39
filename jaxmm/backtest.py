"""Event-driven replay of real order flow: quote into a LOBSTER tape and account every fill.

``tape(day, start, end)`` cuts a window out of a ``lobster.LobsterDay``; ``replay(tape, policy,
params, config)`` runs any jaxmm policy on it in one jitted ``lax.scan`` over the tape's events
and our own actions (decisions, order arrivals, cancels, marks). ``sweep`` runs a batch of
policies (a policy pytree with a leading axis) as one vmapped program, sharded over devices.

Our orders never enter the replayed book: our fills take no liquidity from it, and every later
event of the tape is exactly what it was. That is the standard assumption of tape replay; it
is good for orders small against the displayed depth and optimistic otherwise.

The reference rules (timing, queue on join, the conservative and probabilistic queue models,
full and partial fills, hidden executions, latency, fees, the end of the session) are written
out in the README section "Backtesting on real tapes" and, exactly, in the docstrings below.
An independent plain-Python engine in ``tests/oracles/backtest.py`` follows the same text and
agrees fill by fill.

Units: prices are integers in LOBSTER's unit of $0.0001 inside the engine (``mid2`` is twice
the mid in those units, so it is an integer too); cash is exact integer arithmetic
(units x shares); fees, PnL, markouts and every output are float64 dollars. The replay runs with
64-bit types on (``jax.enable_x64``) whatever the caller's setting; policies see float64
observations.

A policy is called as ``policy(obs, params)``: ``obs`` a ``market.MarketState`` built from the
real book (step index on the policy's grid, mid in dollars, inventory in units of the quote
size, the trailing mid changes between decisions, the PnL so far) and ``params`` the policy's
view of the market (a ``MarketParams``; ``market_params`` makes one for a tape). Depths are in
dollars; a non-finite depth means "do not quote that side". A policy that also sends market
orders (``Quotes.market_order``) is refused: the replay executes limit quotes only.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.sharding import NamedSharding, PartitionSpec

from jaxmm import devices as devices_lib
from jaxmm import policies as policies_lib
from jaxmm import validation
from jaxmm.market import MarketState
from jaxmm.params import MarketParams
from jaxmm.simulation import to_host

__all__ = [
    "QUEUE_MODELS",
    "Config",
    "FillLog",
    "Result",
    "Tape",
    "market_params",
    "parse_time",
    "replay",
    "summary",
    "sweep",
    "tape",
]

QUEUE_MODELS = ("conservative", "probabilistic")
UNIT = 1e-4  # dollars per LOBSTER price unit
_EMPTY_ASK = 9_999_999_999
_EMPTY_BID = -9_999_999_999

# kinds of the replay's steps; at one point in time they run in this order
EVENT, ARRIVAL, DECISION, MARK, END = 0, 1, 2, 3, 4


# ------------------------------------------------------------------------------------ inputs


def parse_time(value: float | str) -> float:
    """Seconds after midnight from a number or ``"HH:MM"`` / ``"HH:MM:SS(.fff)"``."""
    if isinstance(value, str):
        match = re.fullmatch(r"(\d{1,2}):(\d{2})(?::(\d{2}(?:\.\d*)?))?", value.strip())
        if match is None:
            raise ValueError(f"time {value!r}: expected seconds after midnight or 'HH:MM[:SS]'")
        hours, minutes, seconds = match.groups()
        return int(hours) * 3600.0 + int(minutes) * 60.0 + float(seconds or 0.0)
    return float(value)


@dataclasses.dataclass(frozen=True)
class Tape:
    """A window ``(start, end]`` of a LOBSTER day, ready for replay (host NumPy arrays).

    Events are the day's messages with ``start < time <= end``; ``[n]`` arrays. The books are
    ``[n + 1, level]``: row 0 is the book at ``start`` (after the day's last event at or before
    it; empty when there is none) and row ``j + 1`` the book after event ``j``. Prices are
    integer LOBSTER units ($0.0001); an empty level holds ``+-9999999999`` and size 0.

    Attributes:
        ticker, date, level, start, end: the source and the window (seconds after midnight).
        times, event_type, size, price, direction, row: the events (``row``: the 0-based row of
        the message file).
        ask_price, ask_size, bid_price, bid_size: the books, ``[n + 1, level]``.
        mid2: twice the mid after each book row, ``[n + 1]`` (forward-filled over one-sided
        books; 0 before the first two-sided book, where ``has_mid`` is False).
        day_times, day_mid2: the whole day's event times and forward-filled ``mid2``, for
        markouts that look beyond the window.
    """

    ticker: str
    date: str
    level: int
    start: float
    end: float
    times: np.ndarray
    event_type: np.ndarray
    size: np.ndarray
    price: np.ndarray
    direction: np.ndarray
    row: np.ndarray
    ask_price: np.ndarray
    ask_size: np.ndarray
    bid_price: np.ndarray
    bid_size: np.ndarray
    mid2: np.ndarray
    has_mid: np.ndarray
    day_times: np.ndarray
    day_mid2: np.ndarray
    day_has_mid: np.ndarray

    @property
    def n_events(self) -> int:
        return int(self.times.size)

    @property
    def mid(self) -> np.ndarray:
        """Mid after each book row, dollars (NaN before the first two-sided book)."""
        return np.where(self.has_mid, self.mid2 * (UNIT / 2.0), np.nan)


def _forward_mid(ask: np.ndarray, bid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``mid2 = best ask + best bid`` where both sides have a price, carried forward."""
    two_sided = (ask != _EMPTY_ASK) & (bid != _EMPTY_BID)
    last = np.where(two_sided, np.arange(ask.size), -1)
    last = np.maximum.accumulate(last)
    has = last >= 0
    mid2 = np.where(has, (ask + bid)[np.maximum(last, 0)], 0)
    return mid2.astype(np.int64), has


def tape(day: Any, start: float | str | None = None, end: float | str | None = None) -> Tape:
    """The window ``(start, end]`` of ``day`` (a ``lobster.LobsterDay``) as a ``Tape``.

    ``start``/``end`` are seconds after midnight or ``"HH:MM[:SS]"``; they default to the
    file's window. Raises ``ValueError`` when the window is empty or outside the day.
    """
    start = float(day.start) if start is None else parse_time(start)
    end = float(day.end) if end is None else parse_time(end)
    if not end > start:
        raise ValueError(f"tape window: end = {end} must be after start = {start}")
    times = np.asarray(day.times, np.float64)
    if times.size == 0 or start >= times[-1] or end <= day.start:
        raise ValueError(
            f"tape window ({start}, {end}] holds no events of {day.ticker} {day.date} "
            f"(events from {times[0] if times.size else 'none'} to "
            f"{times[-1] if times.size else 'none'})"
        )
    first = int(np.searchsorted(times, start, side="right"))
    last = int(np.searchsorted(times, end, side="right"))
    ask = np.asarray(day.ask_price_units, np.int64)
    bid = np.asarray(day.bid_price_units, np.int64)
    ask_size = np.asarray(day.ask_sizes, np.int64)
    bid_size = np.asarray(day.bid_sizes, np.int64)
    level = ask.shape[1]
    if first == 0:  # no event at or before start: an empty initial book
        book0 = (
            np.full((1, level), _EMPTY_ASK, np.int64),
            np.zeros((1, level), np.int64),
            np.full((1, level), _EMPTY_BID, np.int64),
            np.zeros((1, level), np.int64),
        )
    else:
        book0 = tuple(a[first - 1 : first] for a in (ask, ask_size, bid, bid_size))
    window = slice(first, last)
    columns = (ask, ask_size, bid, bid_size)
    books = [np.concatenate([b0, a[window]]) for b0, a in zip(book0, columns, strict=True)]
    day_mid2, day_has = _forward_mid(ask[:, 0], bid[:, 0])
    mid2, has_mid = _forward_mid(books[0][:, 0], books[2][:, 0])
    if first > 0:  # carry the day's mid into the window when its first book is one-sided
        carry = ~has_mid & day_has[first - 1]
        mid2 = np.where(carry, day_mid2[first - 1], mid2)
        has_mid = has_mid | carry
    return Tape(
        ticker=str(day.ticker),
        date=str(day.date),
        level=int(level),
        start=start,
        end=end,
        times=times[window],
        event_type=np.asarray(day.event_type, np.int64)[window],
        size=np.asarray(day.size, np.float64)[window].round().astype(np.int64),
        price=np.asarray(day.message_price_units, np.int64)[window],
        direction=np.asarray(day.direction, np.int64)[window],
        row=np.arange(first, last, dtype=np.int64),
        ask_price=books[0],
        ask_size=books[1],
        bid_price=books[2],
        bid_size=books[3],
        mid2=mid2,
        has_mid=has_mid,
        day_times=times,
        day_mid2=day_mid2,
        day_has_mid=day_has,
    )


@dataclasses.dataclass(frozen=True)
class Config:
    """How the replay quotes and fills (see the module docstring and the README's rules).

    Attributes:
        quote_size: shares per order (> 0, integer).
        max_position: inventory limit, shares: no bid when ``position + quote_size`` would
            exceed it, no ask when ``position - quote_size`` would fall below ``-max_position``.
        requote: seconds between clock decisions (> latency).
        requote_on_touch: also decide after every event (group of events sharing a timestamp)
            that changes the best bid or ask price.
        latency: seconds from a decision to its new orders reaching the market (>= 0).
        cancel_latency: seconds from a decision to its cancels reaching the market
            (``0 <= cancel_latency <= latency``; default ``latency``).
        keep_unchanged: a side whose new price equals its resting order's keeps that order and
            its queue place (default: every decision re-posts, which resets the queue).
        queue: ``"conservative"`` (only trades at our price advance us; the displayed size
            caps the queue ahead) or ``"probabilistic"`` (cancels advance us too, with
            probability ``f(back) / (f(back) + f(ahead))``, ``f(x) = x ** queue_power``).
        queue_power: the probabilistic model's exponent (> 0).
        partial: fill only the part of a trade at our price beyond the queue ahead (default:
            the whole order fills once the queue ahead is used up).
        tick: price grid, dollars (a multiple of $0.0001).
        maker_fee: dollars per share filled on our resting orders (negative = rebate).
        taker_fee: dollars per share paid by the end-of-session flatten.
        marks: times (seconds after midnight or ``"HH:MM"``) at which the PnL is recorded.
        markout_horizons: seconds after each fill at which its markout is taken.
        log: also return the per-fill log (memory ``O(steps)`` per strategy).
    """

    quote_size: int = 100
    max_position: int = 10**9
    requote: float = 1.0
    requote_on_touch: bool = False
    latency: float = 0.0
    cancel_latency: float | None = None
    keep_unchanged: bool = False
    queue: str = "conservative"
    queue_power: float = 3.0
    partial: bool = False
    tick: float = 0.01
    maker_fee: float = 0.0
    taker_fee: float = 0.0
    marks: tuple = ()
    markout_horizons: tuple = (1.0, 10.0, 60.0, 300.0)
    log: bool = False

    def __post_init__(self):
        for name in ("marks", "markout_horizons"):  # tuples: a Config is a static jit argument
            object.__setattr__(self, name, tuple(getattr(self, name)))
        validation.integer("quote_size", self.quote_size, 1, ">= 1")
        validation.integer("max_position", self.max_position, 0, ">= 0")
        validation.nonnegative("latency", self.latency)
        if self.cancel_latency is not None:
            validation.nonnegative("cancel_latency", self.cancel_latency)
            if self.cancel_latency > self.latency:
                raise ValueError(
                    f"cancel_latency = {self.cancel_latency}; allowed: 0 <= cancel_latency <= "
                    f"latency = {self.latency}"
                )
        if not (math.isfinite(self.requote) and self.requote > self.latency):
            raise ValueError(
                f"requote = {self.requote}; allowed: a finite interval > latency = {self.latency}"
            )
        if self.queue not in QUEUE_MODELS:
            raise ValueError(f"queue = {self.queue!r}; allowed: {QUEUE_MODELS}")
        validation.positive("queue_power", self.queue_power)
        validation.positive("tick", self.tick)
        units = self.tick / UNIT
        if abs(units - round(units)) > 1e-9:
            raise ValueError(f"tick = {self.tick}; allowed: a positive multiple of $0.0001")
        for name in ("maker_fee", "taker_fee"):
            validation.number(name, getattr(self, name), math.isfinite, "finite")
        for h in self.markout_horizons:
            validation.nonnegative("markout_horizons", h)

    @property
    def tick_units(self) -> int:
        return round(self.tick / UNIT)

    @property
    def cancel_delay(self) -> float:
        return self.latency if self.cancel_latency is None else float(self.cancel_latency)


def market_params(
    tape: Tape,
    config: Config,
    *,
    sigma: float = 0.0,
    A: float = 1.0,
    k: float = 1.0,
    q_max: int | None = None,
    **kwargs: Any,
) -> MarketParams:
    """A policy's view of ``tape``: time in seconds, ``T`` the window, one step per clock
    decision, ``S0`` the first mid; ``sigma`` ($ per sqrt(second)), ``A`` (per second) and
    ``k`` (per dollar) from a calibration. ``q_max`` defaults to ``max_position / quote_size``
    (capped at 10**6)."""
    T = tape.end - tape.start
    n_steps = max(1, math.ceil(T / config.requote - 1e-9))
    s0 = float(tape.mid[np.argmax(tape.has_mid)]) if tape.has_mid.any() else 1.0
    if q_max is None:
        q_max = int(min(config.max_position // config.quote_size, 10**6))
    return MarketParams(
        S0=s0, sigma=sigma, T=T, n_steps=n_steps, A=A, k=k, q_max=max(q_max, 1), **kwargs
    )


# ------------------------------------------------------------------------------ the stream


@dataclasses.dataclass(frozen=True)
class _Stream:
    """The replay's steps in order, ``[m]`` each: what kind, which event (or how many events
    have been applied), when, and an index (decision step ``t``, mark slot)."""

    kind: np.ndarray
    pos: np.ndarray
    time: np.ndarray
    index: np.ndarray
    cancel: np.ndarray  # ARRIVAL: a cancel arrives; DECISION: its cancel is immediate
    order: np.ndarray  # ARRIVAL: a new order arrives; DECISION: its order is immediate
    n_marks: int


def _touch_decisions(tape: Tape, config: Config, clock: np.ndarray) -> np.ndarray:
    """Decision times after each timestamp group that changed a best price (see ``Config``)."""
    n = tape.n_events
    if n == 0:
        return np.zeros(0)
    best = np.stack([tape.ask_price[:, 0], tape.bid_price[:, 0]], axis=1)
    last_of_group = np.ones(n, bool)
    last_of_group[:-1] = tape.times[1:] != tape.times[:-1]
    group_end = np.flatnonzero(last_of_group)
    group_start = np.concatenate([[0], group_end[:-1] + 1])
    changed = np.any(best[group_end + 1] != best[group_start], axis=1)
    candidates = tape.times[group_end[changed]]
    candidates = candidates[candidates < tape.end]
    kept = []
    previous = -np.inf
    j = 0
    for when in candidates:
        while j < clock.size and clock[j] <= when:  # clock decisions are always kept
            previous = max(previous, clock[j])
            j += 1
        if j > 0 and clock[j - 1] == when:
            continue  # the clock decision at this time is kept
        upcoming = clock[j] if j < clock.size else np.inf
        if when - previous < config.latency or upcoming - when < config.latency:
            continue
        kept.append(when)
        previous = when
    return np.asarray(kept, np.float64)


def _stream(tape: Tape, config: Config, params: MarketParams) -> _Stream:
    """Merge the tape's events with our decisions, arrivals, marks and the end (host side)."""
    start, end = tape.start, tape.end
    n_clock = max(1, math.ceil((end - start) / config.requote - 1e-9))
    clock = start + np.arange(n_clock) * config.requote
    clock = clock[clock < end]
    decisions = clock
    if config.requote_on_touch:
        decisions = np.sort(np.concatenate([clock, _touch_decisions(tape, config, clock)]))
    marks = np.asarray(sorted(parse_time(m) for m in config.marks), np.float64)
    if marks.size and (marks.min() < start or marks.max() > end):
        raise ValueError(f"marks must lie in the window [{start}, {end}]; got {marks.tolist()}")
    latency, cancel_delay = config.latency, config.cancel_delay
    n_steps = int(params.n_steps)
    t_index = np.minimum(
        np.floor((decisions - start) * n_steps / (end - start) + 1e-9), n_steps - 1
    ).astype(np.int64)

    parts = []  # (time, kind, pos placeholder, index, cancel, order)

    def add(times, kind, index, cancel, order):
        times = np.asarray(times, np.float64)
        k = np.full(times.size, kind)
        parts.append(
            (
                times,
                k,
                np.asarray(index),
                np.broadcast_to(cancel, times.shape),
                np.broadcast_to(order, times.shape),
            )
        )

    add(decisions, DECISION, t_index, cancel_delay == 0.0, latency == 0.0)
    if cancel_delay > 0.0 and cancel_delay == latency:
        arrivals = decisions + latency
        keep = arrivals <= end
        add(arrivals[keep], ARRIVAL, np.zeros(keep.sum(), np.int64), True, True)
    else:
        if cancel_delay > 0.0:
            arrivals = decisions + cancel_delay
            keep = arrivals <= end
            add(arrivals[keep], ARRIVAL, np.zeros(keep.sum(), np.int64), True, False)
        if latency > 0.0:
            arrivals = decisions + latency
            keep = arrivals <= end
            add(arrivals[keep], ARRIVAL, np.zeros(keep.sum(), np.int64), False, True)
    add(marks, MARK, np.arange(marks.size), False, False)
    add([end], END, [0], False, False)
    times = np.concatenate([p[0] for p in parts])
    kinds = np.concatenate([p[1] for p in parts])
    index = np.concatenate([p[2] for p in parts]).astype(np.int64)
    cancel = np.concatenate([p[3] for p in parts]).astype(bool)
    order = np.concatenate([p[4] for p in parts]).astype(bool)
    # within one point: arrivals (cancel before order: one step does both), decisions, marks, end
    # ARRIVAL steps of a cancel-only and an order-only kind at the same time: cancel first
    sub = np.where(kinds == ARRIVAL, np.where(order & ~cancel, 1, 0), 0)
    by = np.lexsort((sub, kinds, times))
    times, kinds, index, cancel, order = (a[by] for a in (times, kinds, index, cancel, order))
    applied = np.searchsorted(tape.times, times, side="right")  # events with time <= t first
    n = tape.n_events
    m = n + times.size
    # position of every step in the merged order: events keep file order; an action goes after
    # the events with time <= its time
    ev_slot = np.arange(n) + np.searchsorted(applied, np.arange(n), side="right")
    act_slot = applied + np.arange(times.size)
    kind = np.empty(m, np.int64)
    pos = np.empty(m, np.int64)
    time = np.empty(m, np.float64)
    idx = np.zeros(m, np.int64)
    cancel_all = np.zeros(m, bool)
    order_all = np.zeros(m, bool)
    kind[ev_slot], pos[ev_slot], time[ev_slot] = EVENT, np.arange(n), tape.times
    kind[act_slot], pos[act_slot], time[act_slot] = kinds, applied, times
    idx[act_slot], cancel_all[act_slot], order_all[act_slot] = index, cancel, order
    return _Stream(kind, pos, time, idx, cancel_all, order_all, marks.size)


# ------------------------------------------------------------------------------ the engine


@struct.dataclass
class _Side:
    """One side's order, in signed units ``y = sgn * price`` (higher is more aggressive)."""

    live: jax.Array  # bool: an order rests in the market
    price: jax.Array  # i64, signed units
    remaining: jax.Array  # i64 shares
    ahead: jax.Array  # i64 shares of displayed queue ahead of us
    pending: jax.Array  # bool: a new order is on its way
    pending_price: jax.Array  # i64, signed units
    cancelling: jax.Array  # bool: a cancel of the resting order is on its way


@struct.dataclass
class _Carry:
    bid: _Side
    ask: _Side
    position: jax.Array  # i64 shares
    cash: jax.Array  # i64 units x shares (fees excluded)
    fees: jax.Array  # f64 dollars
    spread2: jax.Array  # i64 half-units x shares
    inventory2: jax.Array  # i64 half-units x shares
    n_fills: jax.Array  # i64[2] fill records (bid, ask)
    volume: jax.Array  # i64[2] shares filled
    posted: jax.Array  # i64[2] orders that reached the market
    markouts: jax.Array  # f64[H] dollars
    quoted_time: jax.Array  # f64[2] seconds with a live order
    touch_time: jax.Array  # f64[2] seconds with a live order at (or better than) the best
    position_time: jax.Array  # f64: integral of position dt
    position2_time: jax.Array  # f64: integral of position^2 dt
    max_abs_position: jax.Array  # i64
    last_time: jax.Array  # f64
    marks: jax.Array  # f64[n_marks]
    pnl: jax.Array  # f64 at the end, marked at the mid
    pnl_flat: jax.Array  # f64 at the end, flattened at the touch
    recent_returns: jax.Array  # f64[W]
    recent_fills: jax.Array  # f64[W]
    fills_since: jax.Array  # i64 shares since the last decision
    n_decisions: jax.Array  # i64
    last_mid2: jax.Array  # i64 mid2 at the last decision
    last_has_mid: jax.Array  # bool


def _empty_side() -> _Side:
    zero = jnp.zeros((), jnp.int64)
    false = jnp.zeros((), jnp.bool_)
    return _Side(false, zero, zero, zero, false, zero, false)


def _initial(window: int, n_horizons: int, n_marks: int, start: float) -> _Carry:
    i0 = jnp.zeros((), jnp.int64)
    f0 = jnp.zeros((), jnp.float64)
    two = jnp.zeros((2,), jnp.int64)
    return _Carry(
        bid=_empty_side(),
        ask=_empty_side(),
        position=i0,
        cash=i0,
        fees=f0,
        spread2=i0,
        inventory2=i0,
        n_fills=two,
        volume=two,
        posted=two,
        markouts=jnp.zeros((n_horizons,), jnp.float64),
        quoted_time=jnp.zeros((2,), jnp.float64),
        touch_time=jnp.zeros((2,), jnp.float64),
        position_time=f0,
        position2_time=f0,
        max_abs_position=i0,
        last_time=jnp.asarray(start, jnp.float64),
        marks=jnp.zeros((n_marks,), jnp.float64),
        pnl=f0,
        pnl_flat=f0,
        recent_returns=jnp.zeros((window,), jnp.float64),
        recent_fills=jnp.zeros((window,), jnp.float64),
        fills_since=i0,
        n_decisions=i0,
        last_mid2=i0,
        last_has_mid=jnp.zeros((), jnp.bool_),
    )


@struct.dataclass
class _Book:
    """One book row in signed units per side: ``[L]`` prices (empty = ``_EMPTY_BID``) and sizes;
    index 0 is the bid side (``sgn = +1``), 1 the ask side (``sgn = -1``)."""

    price: jax.Array  # i64[2, L]
    size: jax.Array  # i64[2, L]


def _book(data: dict, row: jax.Array) -> _Book:
    return _Book(price=data["book_price"][row], size=data["book_size"][row])


def _displayed(book: _Book, side: int, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Is signed price ``y`` displayed on ``side``, and the size there."""
    prices, sizes = book.price[side], book.size[side]
    match = (prices == y) & (prices != _EMPTY_BID)
    return jnp.any(match), jnp.sum(jnp.where(match, sizes, 0))


def _join_queue(book: _Book, side: int, y: jax.Array) -> jax.Array:
    shown, size = _displayed(book, side, y)
    return jnp.where(shown, size, 0)


def _cap(book: _Book, side: int, y: jax.Array, ahead: jax.Array) -> jax.Array:
    """The displayed size caps the queue ahead (rule 3 of the fills)."""
    prices = book.price[side]
    shown, size = _displayed(book, side, y)
    best = prices[0]
    empty = best == _EMPTY_BID
    full = prices[-1] != _EMPTY_BID
    hidden_deep = full & (y < prices[-1])
    cleared = jnp.where(hidden_deep, ahead, 0)
    capped = jnp.where(shown, jnp.minimum(ahead, size), cleared)
    return jnp.where(empty | (y > best), 0, capped)


def _fill_side(
    order: _Side,
    side: int,
    ev: dict,
    before: _Book,
    after: _Book,
    config: Config,
) -> tuple[_Side, jax.Array, jax.Array]:
    """Apply one tape event to one side's order; returns the order, shares filled and the
    queue ahead as the event met it."""
    sgn = 1 - 2 * side
    y = order.price
    signed_price = sgn * ev["price"]
    volume = ev["size"]
    trade = ev["trade"] & (ev["direction"] == sgn) & order.live
    through = trade & (signed_price < y)
    at = trade & (ev["price"] == sgn * y)
    reaches = at & (volume > order.ahead)
    if config.partial:
        part = jnp.minimum(order.remaining, volume - order.ahead)
        qty = jnp.where(through, order.remaining, jnp.where(reaches, part, 0))
    else:
        qty = jnp.where(through | reaches, order.remaining, 0)
    met = order.ahead
    ahead = jnp.where(at, jnp.maximum(order.ahead - volume, 0), order.ahead)
    remaining = order.remaining - qty
    live = order.live & (remaining > 0)
    if config.queue == "probabilistic":
        cancel = ev["cancel"] & (ev["direction"] == sgn) & (ev["price"] == sgn * y) & live
        _, prev = _displayed(before, side, y)
        back = jnp.maximum(prev - ahead, 0).astype(jnp.float64)
        front = ahead.astype(jnp.float64)
        f_back, f_front = back**config.queue_power, front**config.queue_power
        p = f_back / jnp.where(ahead > 0, f_back + f_front, 1.0)
        delta = volume.astype(jnp.float64)
        est = front - (1.0 - p) * delta + jnp.minimum(back - p * delta, 0.0)
        advanced = jnp.maximum(jnp.ceil(est - 1e-9), 0.0).astype(jnp.int64)
        ahead = jnp.where(cancel & (ahead > 0), advanced, ahead)
    ahead = jnp.where(live, _cap(after, side, y, ahead), ahead)
    opposite = after.price[1 - side, 0]
    crossed = live & (opposite != _EMPTY_BID) & (-opposite <= y)
    qty = qty + jnp.where(crossed, remaining, 0)
    remaining = jnp.where(crossed, 0, remaining)
    live = live & ~crossed
    return order.replace(live=live, remaining=remaining, ahead=ahead), qty, met


def _pnl(carry: _Carry, mid2: jax.Array) -> jax.Array:
    """Mark-to-market PnL, dollars: ``cash + position * mid - fees``."""
    return (2 * carry.cash + carry.position * mid2).astype(jnp.float64) * (UNIT / 2) - carry.fees


def _event(carry: _Carry, x: dict, data: dict, config: Config):
    j = x["pos"]
    ev = {
        "price": data["price"][j],
        "size": data["size"][j],
        "direction": data["direction"][j],
        "trade": data["trade"][j],
        "cancel": data["cancel"][j],
    }
    before, after = _book(data, j), _book(data, j + 1)
    mid_before, mid_after = data["mid2"][j], data["mid2"][j + 1]
    future = data["future_mid2"][j]
    position, cash, fees, spread2 = carry.position, carry.cash, carry.fees, carry.spread2
    n_fills, volume, markouts = carry.n_fills, carry.volume, carry.markouts
    sides, log = [], []
    for side, order in ((0, carry.bid), (1, carry.ask)):
        sgn = 1 - 2 * side
        price = sgn * order.price
        order, qty, met = _fill_side(order, side, ev, before, after, config)
        position = position + sgn * qty
        cash = cash - sgn * qty * price
        fees = fees + config.maker_fee * qty.astype(jnp.float64)
        spread2 = spread2 + qty * (sgn * mid_before - 2 * sgn * price)
        markouts = markouts + sgn * qty * (future - mid_before) * (UNIT / 2)
        n_fills = n_fills.at[side].add((qty > 0).astype(jnp.int64))
        volume = volume.at[side].add(qty)
        sides.append(order)
        log.append((qty, price, met, position))
    carry = carry.replace(
        bid=sides[0],
        ask=sides[1],
        position=position,
        cash=cash,
        fees=fees,
        spread2=spread2,
        inventory2=carry.inventory2 + position * (mid_after - mid_before),
        n_fills=n_fills,
        volume=volume,
        markouts=markouts,
        max_abs_position=jnp.maximum(carry.max_abs_position, jnp.abs(position)),
        fills_since=carry.fills_since + log[0][0] + log[1][0],
    )
    return carry, log


def _arrive(carry: _Carry, book: _Book, cancel: Any, order: Any, config: Config) -> _Carry:
    """Our messages reach the market: the cancels, then the new orders (post-only, queue on
    join)."""
    sides = []
    for side, o in ((0, carry.bid), (1, carry.ask)):
        live = jnp.where(cancel & o.cancelling, False, o.live)
        cancelling = o.cancelling & ~cancel
        opposite = book.price[1 - side, 0]
        y = o.pending_price
        y = jnp.where((opposite != _EMPTY_BID) & (y >= -opposite), -opposite - config.tick_units, y)
        arrives = order & o.pending
        sides.append(
            o.replace(
                live=live | arrives,
                price=jnp.where(arrives, y, o.price),
                remaining=jnp.where(arrives, config.quote_size, o.remaining),
                ahead=jnp.where(arrives, _join_queue(book, side, y), o.ahead),
                pending=o.pending & ~arrives,
                cancelling=cancelling,
            )
        )
    posted = carry.posted + jnp.stack([order & carry.bid.pending, order & carry.ask.pending])
    return carry.replace(bid=sides[0], ask=sides[1], posted=posted.astype(jnp.int64))


def _decide(carry, x, data, policy, params, config: Config, window: int) -> _Carry:
    pos = x["pos"]
    has, mid2 = data["has_mid"][pos], data["mid2"][pos]
    slot = carry.n_decisions % window
    change = jnp.where(has & carry.last_has_mid, (mid2 - carry.last_mid2) * (UNIT / 2), 0.0)
    returns = carry.recent_returns.at[slot].set(change)
    fills = carry.recent_fills.at[slot].set(carry.fills_since / config.quote_size)
    mid = mid2 * (UNIT / 2)
    spread, inventory = carry.spread2 * (UNIT / 2), carry.inventory2 * (UNIT / 2)
    obs = MarketState(
        t=x["index"].astype(jnp.int32),
        mid=jnp.asarray(mid, jnp.float64),
        inventory=(carry.position / config.quote_size).astype(jnp.float64),
        pnl=_pnl(carry, mid2),
        spread_pnl=spread,
        inventory_pnl=inventory,
        recent_returns=returns,
        recent_fills=fills,
    )
    quotes = policy(obs, params)
    if quotes.market_order is not None:  # traced once, before the replay runs
        raise ValueError(
            "the policy returns Quotes.market_order, which the replay cannot execute (it posts "
            "limit quotes only; market orders against the tape are not modelled); allowed: "
            "Quotes without market_order"
        )
    bid_depth = jnp.asarray(quotes.bid_depth, jnp.float64)
    ask_depth = jnp.asarray(quotes.ask_depth, jnp.float64)
    tick, units = config.tick, config.tick_units
    finite_bid, finite_ask = jnp.isfinite(bid_depth), jnp.isfinite(ask_depth)
    bid_ticks = jnp.floor((mid - jnp.where(finite_bid, bid_depth, 0.0)) / tick + 1e-9)
    ask_ticks = jnp.ceil((mid + jnp.where(finite_ask, ask_depth, 0.0)) / tick - 1e-9)
    prices = (bid_ticks.astype(jnp.int64) * units, -ask_ticks.astype(jnp.int64) * units)
    q, size = carry.position, config.quote_size
    post = (
        has & finite_bid & (q + size <= config.max_position),
        has & finite_ask & (q - size >= -config.max_position),
    )
    sides = []
    for o, y, send in zip((carry.bid, carry.ask), prices, post, strict=True):
        keep = (o.live & send & (o.price == y)) if config.keep_unchanged else jnp.bool_(False)
        sides.append(
            o.replace(
                pending=send & ~keep,
                pending_price=y,
                cancelling=o.live & ~keep,
            )
        )
    carry = carry.replace(
        bid=sides[0],
        ask=sides[1],
        recent_returns=returns,
        recent_fills=fills,
        fills_since=jnp.zeros((), jnp.int64),
        n_decisions=carry.n_decisions + 1,
        last_mid2=jnp.where(has, mid2, carry.last_mid2),
        last_has_mid=carry.last_has_mid | has,
    )
    return _arrive(carry, _book(data, pos), x["cancel"], x["order"], config)


def _end(carry: _Carry, x: dict, data: dict, config: Config) -> _Carry:
    pos = x["pos"]
    mid2 = data["mid2"][pos]
    book = _book(data, pos)
    q = carry.position
    best_bid, best_ask = book.price[0, 0], -book.price[1, 0]
    exit_price = jnp.where(q > 0, best_bid, best_ask)
    usable = jnp.where(q > 0, best_bid != _EMPTY_BID, book.price[1, 0] != _EMPTY_BID)
    exit2 = jnp.where(usable, 2 * exit_price, mid2)
    flat = (2 * carry.cash + q * exit2).astype(jnp.float64) * (UNIT / 2)
    flat = flat - carry.fees - config.taker_fee * jnp.abs(q).astype(jnp.float64)
    closed = {"live": False, "pending": False, "cancelling": False}
    bid, ask = carry.bid.replace(**closed), carry.ask.replace(**closed)
    return carry.replace(bid=bid, ask=ask, pnl=_pnl(carry, mid2), pnl_flat=flat)


def _run(
    stream: dict, data: dict, policy: Any, params: MarketParams, config: Config, shape, unroll=1
):
    """The replay of one strategy: one ``lax.scan`` over the merged steps (``unroll`` steps per
    loop iteration: 16 runs a 1,000-strategy sweep 1.7x faster on a CPU than 1, and compiles
    slower)."""
    window, n_horizons, n_marks, start = shape
    no_log = (jnp.zeros((), jnp.int64),) * 4

    def step(carry: _Carry, x: dict):
        # time-weighted statistics over the interval since the previous step
        elapsed = x["time"] - carry.last_time
        book = _book(data, x["pos"])
        live = jnp.stack([carry.bid.live, carry.ask.live])
        at_touch = jnp.stack([carry.bid.price, carry.ask.price]) >= book.price[:, 0]
        q = carry.position.astype(jnp.float64)
        carry = carry.replace(
            quoted_time=carry.quoted_time + elapsed * live,
            touch_time=carry.touch_time + elapsed * (live & at_touch),
            position_time=carry.position_time + elapsed * q,
            position2_time=carry.position2_time + elapsed * q * q,
            last_time=x["time"],
        )

        def event(c):
            c, log = _event(c, x, data, config)
            return c, tuple(log)

        def arrival(c):
            return _arrive(c, book, x["cancel"], x["order"], config), (no_log, no_log)

        def decision(c):
            return _decide(c, x, data, policy, params, config, window), (no_log, no_log)

        def mark(c):
            slot = jnp.minimum(x["index"], max(n_marks - 1, 0))
            marks = c.marks.at[slot].set(_pnl(c, data["mid2"][x["pos"]])) if n_marks else c.marks
            return c.replace(marks=marks), (no_log, no_log)

        def end(c):
            return _end(c, x, data, config), (no_log, no_log)

        carry, log = jax.lax.switch(x["kind"], [event, arrival, decision, mark, end], carry)
        return carry, (log if config.log else None)

    carry0 = _initial(window, n_horizons, n_marks, start)
    return jax.lax.scan(step, carry0, stream, unroll=unroll)


# ---------------------------------------------------------------------------- public calls


@dataclasses.dataclass(frozen=True)
class FillLog:
    """Every fill of one replay, ``[n_fills]`` each (in the order they happened).

    Attributes:
        time: seconds after midnight. row: 0-based row of the message file that filled us.
        side: +1 our bid (we bought), -1 our ask. price: dollars. size: shares.
        ahead: the queue ahead of us as the event met it, shares.
        position: our position after the fill, shares.
    """

    time: np.ndarray
    row: np.ndarray
    side: np.ndarray
    price: np.ndarray
    size: np.ndarray
    ahead: np.ndarray
    position: np.ndarray


@struct.dataclass
class Result:
    """What a replay measured, float64 dollars unless said (``[n_strategies]`` from ``sweep``).

    ``pnl = spread_pnl + inventory_pnl - fees = cash + position * mid - fees`` at the end,
    marked at the mid; ``pnl_flat`` flattens the position at the touch instead (taker fee
    paid). ``spread_pnl`` is the capture against the mid before each fill; ``inventory_pnl``
    the position times the mid's changes. ``markouts[h]`` sums ``side * size * (mid(t + h) -
    mid at the fill)`` over the fills (a negative value is adverse selection). Times are
    seconds; ``time_quoted``/``time_at_touch`` are ``[2]`` (bid, ask); ``mean_position`` and
    ``std_position`` are time-weighted over the window. ``marks`` is the PnL at
    ``Config.marks``.
    """

    pnl: jax.Array
    pnl_flat: jax.Array
    cash: jax.Array
    position: jax.Array
    spread_pnl: jax.Array
    inventory_pnl: jax.Array
    fees: jax.Array
    n_bid_fills: jax.Array
    n_ask_fills: jax.Array
    bid_volume: jax.Array
    ask_volume: jax.Array
    bid_posted: jax.Array
    ask_posted: jax.Array
    markouts: jax.Array
    time_quoted: jax.Array
    time_at_touch: jax.Array
    mean_position: jax.Array
    std_position: jax.Array
    max_abs_position: jax.Array
    marks: jax.Array
    n_decisions: jax.Array
    log: Any = struct.field(pytree_node=False, default=None)


def _device_data(tape: Tape, config: Config) -> dict:
    """The tape as device arrays (signed book prices: the bid side as is, the ask negated)."""
    horizons = np.asarray(config.markout_horizons, np.float64)
    later = tape.times[:, None] + horizons[None, :]
    at = np.searchsorted(tape.day_times, later, side="right") - 1
    future = tape.day_mid2[np.clip(at, 0, tape.day_times.size - 1)]
    book_price = np.stack([tape.bid_price, -tape.ask_price], axis=1)
    book_size = np.stack([tape.bid_size, tape.ask_size], axis=1)
    return {
        "price": tape.price,
        "size": tape.size,
        "direction": tape.direction,
        "trade": np.isin(tape.event_type, (4, 5)),
        "cancel": np.isin(tape.event_type, (2, 3)),
        "book_price": book_price,
        "book_size": book_size,
        "mid2": tape.mid2,
        "has_mid": tape.has_mid,
        "future_mid2": future.astype(np.int64),
    }


def _result(carry: _Carry, tape: Tape) -> Result:
    duration = tape.end - tape.start
    mean = carry.position_time / duration
    var = jnp.maximum(carry.position2_time / duration - mean**2, 0.0)
    half = UNIT / 2
    return Result(
        pnl=carry.pnl,
        pnl_flat=carry.pnl_flat,
        cash=carry.cash.astype(jnp.float64) * UNIT,
        position=carry.position,
        spread_pnl=carry.spread2.astype(jnp.float64) * half,
        inventory_pnl=carry.inventory2.astype(jnp.float64) * half,
        fees=carry.fees,
        n_bid_fills=carry.n_fills[..., 0],
        n_ask_fills=carry.n_fills[..., 1],
        bid_volume=carry.volume[..., 0],
        ask_volume=carry.volume[..., 1],
        bid_posted=carry.posted[..., 0],
        ask_posted=carry.posted[..., 1],
        markouts=carry.markouts,
        time_quoted=carry.quoted_time,
        time_at_touch=carry.touch_time,
        mean_position=mean,
        std_position=jnp.sqrt(var),
        max_abs_position=carry.max_abs_position,
        marks=carry.marks,
        n_decisions=carry.n_decisions,
    )


@functools.partial(jax.jit, static_argnames=("config", "shape", "batched", "mesh"))
def _program(stream, data, policy, params, config, shape, batched, mesh=None):
    """One strategy, or (``batched``) a vmap over the policies' leading axis; with a ``mesh``,
    a ``shard_map`` that runs each device's share of the strategies as its own program (no
    communication: strategies are independent)."""

    def one(pol, stream, data, params):
        return _run(stream, data, pol, params, config, shape, unroll=16 if batched else 1)

    if not batched:
        return one(policy, stream, data, params)
    many = jax.vmap(one, in_axes=(0, None, None, None))
    if mesh is None:
        return many(policy, stream, data, params)
    spec, whole = devices_lib.batch_spec(mesh), PartitionSpec()
    return jax.shard_map(
        many,
        mesh=mesh,
        in_specs=(spec, whole, whole, whole),
        out_specs=spec,
        check_vma=False,
    )(policy, stream, data, params)


def _prepare(tape: Tape, params: MarketParams | None, config: Config):
    if not isinstance(config, Config):
        raise TypeError(f"config must be a backtest.Config, got {type(config).__name__}")
    if params is None:
        params = market_params(tape, config)
    stream = _stream(tape, config, params)
    xs = {
        "kind": stream.kind,
        "pos": stream.pos,
        "time": stream.time,
        "index": stream.index,
        "cancel": stream.cancel,
        "order": stream.order,
    }
    shape = (int(params.history_window), len(config.markout_horizons), stream.n_marks, tape.start)
    return xs, _device_data(tape, config), params, shape


def _fill_log(log, xs: dict, tape: Tape) -> FillLog:
    (bq, bp, ba, bpos), (aq, ap, aa, apos) = (tuple(np.asarray(v) for v in s) for s in log)
    rows = []
    for sgn, qty, price, ahead, position in ((1, bq, bp, ba, bpos), (-1, aq, ap, aa, apos)):
        at = np.flatnonzero(qty > 0)
        rows.append((at, np.full(at.size, sgn), qty[at], price[at], ahead[at], position[at]))
    step = np.concatenate([r[0] for r in rows])
    side = np.concatenate([r[1] for r in rows])
    order = np.lexsort((-side, step))  # by step, the bid first
    pick = [np.concatenate([r[i] for r in rows])[order] for i in range(2, 6)]
    step, side = step[order], side[order]
    event = xs["pos"][step]
    return FillLog(
        time=tape.times[event],
        row=tape.row[event],
        side=side,
        price=pick[1] * UNIT,
        size=pick[0],
        ahead=pick[2],
        position=pick[3],
    )


def replay(
    tape: Tape, policy: Any, params: MarketParams | None = None, config: Config = Config()
) -> Result:
    """Replay ``tape`` with one strategy (see the module docstring; the rules are in the
    README's "Backtesting on real tapes").

    Args:
        tape: from ``backtest.tape``.
        policy: any jaxmm policy ``(MarketState, MarketParams) -> Quotes`` (depths in dollars).
        params: the policy's view of the market (default ``market_params(tape, config)``: time
            in seconds, one step per clock decision).
        config: a ``Config``; ``config.log`` adds the per-fill log (``Result.log``).

    Returns a ``Result`` of NumPy scalars (float64 dollars).
    """
    xs, data, params, shape = _prepare(tape, params, config)
    with jax.enable_x64(True):
        carry, log = _program(
            xs, data, policies_lib.as_pytree(policy), params, config, shape, False
        )
        result = jax.tree.map(np.asarray, _result(carry, tape))
    if config.log:
        result = result.replace(log=_fill_log(log, xs, tape))
    return result


def sweep(
    tape: Tape,
    policies: Any,
    params: MarketParams | None = None,
    config: Config = Config(),
    *,
    devices: Sequence[jax.Device] | None = None,
) -> Result:
    """Replay ``tape`` for a batch of strategies in one vmapped program.

    ``policies`` is a policy pytree whose numeric leaves have a leading axis ``n`` (e.g.
    ``jax.vmap(policies.avellaneda_stoikov)(gammas)`` or ``AvellanedaStoikov(gamma=array)``).
    ``devices`` shards that axis over devices (and, after ``jax.distributed.initialize``,
    hosts); the batch is padded to a multiple of the device count. Every field of the
    ``Result`` gets the leading axis ``[n]``. The per-fill log is not available here (use
    ``replay`` for one strategy).
    """
    if config.log:
        raise ValueError("config.log = True: the per-fill log is per strategy; use replay()")
    leaves = jax.tree.leaves(policies)
    if not leaves or any(np.ndim(v) == 0 for v in leaves):
        raise ValueError("policies: every numeric leaf needs a leading strategy axis")
    n = int(np.shape(leaves[0])[0])
    if any(np.shape(v)[0] != n for v in leaves):
        raise ValueError("policies: every leaf needs the same leading axis length")
    xs, data, params, shape = _prepare(tape, params, config)
    mesh = devices_lib.mesh(devices, "strategies")
    host = jax.tree.map(np.asarray, policies)
    with jax.enable_x64(True):
        if mesh is None:
            batch = jax.tree.map(jnp.asarray, host)
        else:  # pad to a multiple of the devices; build each device's shard (any process)
            padded = -(-n // mesh.size) * mesh.size
            sharding = NamedSharding(mesh, devices_lib.batch_spec(mesh))

            def place(v):
                v = np.concatenate([v, np.repeat(v[-1:], padded - n, axis=0)])
                return jax.make_array_from_callback(v.shape, sharding, lambda index: v[index])

            batch = jax.tree.map(place, host)
        carry, _ = _program(xs, data, batch, params, config, shape, True, mesh)
        result = jax.tree.map(lambda v: to_host(v)[:n], _result(carry, tape))
    return result


def summary(result: Result, config: Config) -> dict[str, Any]:
    """A JSON-ready dict of one replay's numbers (per-share markouts keyed by horizon)."""
    volume = float(result.bid_volume + result.ask_volume)
    out = {
        name: np.asarray(getattr(result, name)).tolist()
        for name in (
            "pnl",
            "pnl_flat",
            "spread_pnl",
            "inventory_pnl",
            "fees",
            "position",
            "n_bid_fills",
            "n_ask_fills",
            "bid_volume",
            "ask_volume",
            "bid_posted",
            "ask_posted",
            "mean_position",
            "std_position",
            "max_abs_position",
            "n_decisions",
        )
    }
    out["markout_per_share"] = {
        f"{h:g}s": (float(m) / volume if volume else None)
        for h, m in zip(config.markout_horizons, np.asarray(result.markouts), strict=True)
    }
    out["spread_per_share"] = float(result.spread_pnl) / volume if volume else None
    out["time_quoted"] = np.asarray(result.time_quoted).tolist()
    out["time_at_touch"] = np.asarray(result.time_at_touch).tolist()
    return out
