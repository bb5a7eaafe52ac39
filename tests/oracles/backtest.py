"""Independent oracle for the LOBSTER replay backtester (``jaxmm.backtest``).

This module is an independent oracle written, top to bottom, from the reference rules
(the README section "Backtesting on real tapes"), not from jaxmm's code, against which the
JAX engine is checked fill by fill. It is a plain-Python event loop: prices and cash are Python
ints (units of $0.0001, cash in units x shares), fees and all dollar outputs are Python floats
(float64). It favours obvious correctness over speed.

Public API: :func:`read_tape`, :func:`replay` and the strategies :func:`symmetric`,
:func:`avellaneda_stoikov` and :func:`scripted`. A strategy is a callable
``strategy(obs) -> (bid_depth, ask_depth)`` in dollars (a non-finite depth, or ``None``, means
"do not quote that side"); ``obs`` is a dict with ``t``, ``time_left``, ``mid``, ``position``,
``inventory`` (and, in addition, ``recent_returns``, ``recent_fills``, ``pnl``, ``spread_pnl``,
``inventory_pnl``, ``time``).

Exactness: cash, the spread PnL, the inventory PnL and the markouts are accumulated as exact
integers (in units of $0.0001 / 2 x shares, because the mid is ``mid2 / 2``) and converted to
dollars once, at the end, by a single float division; only the fees are accumulated as floats.
Hence ``pnl == cash + position * mid - fees`` and ``pnl == spread_pnl + inventory_pnl - fees``
hold to the last few ulps. Speed: about 2e5 tape events per second (full AMZN day, A-S,
one decision per second).

Choices where the rules are silent
----------------------------------
1. The mid is tracked over the whole file: the mid after row ``i`` is the last two-sided mid
   among rows ``0..i``. So the mid at ``start`` is the last two-sided mid at or before the
   initial book's row (the initial book itself may be one-sided); with no row ``<= start``
   there is no mid.
2. Markouts: ``mid(u)`` is read from the whole file, including tape events after ``end``
   (the rule says "the day's last mid beyond the end of the file", i.e. the file is the
   reference, not the window).
3. The ``ahead`` recorded in a fill record is the queue ahead at the start of the tape event
   that filled us (before any of that event's own changes), for every kind of fill (trade at
   our price, trade through, opposite best moving onto our price).
4. Within one tape event the bid is processed (steps 1-4) before the ask; fill records are in
   that order.
5. One order slot per side. A new order's arrival replaces whatever rests on its side; a
   cancel's arrival removes the order resting on its side only if that order was sent by an
   earlier decision. Our messages due at the same instant are applied in the order (arrival
   time, decision number, cancel before new order). This only matters when a clock decision
   falls less than ``latency`` after a kept touch decision (then a message is in flight at the
   clock decision, which the rules say cannot happen without touch decisions).
6. Every decision sends a cancel for each side (a no-op when nothing rests) except, with
   ``keep_unchanged``, a side kept unchanged, which sends nothing at all. ``keep_unchanged``
   compares the newly computed price (before any post-only repricing, which happens only at
   arrival) with the resting order's actual price (after its own repricing, if any).
7. A decision with no mid yet is still a decision (counted in ``n_decisions``, takes its slot
   in ``recent_returns``/``recent_fills``); the strategy is not called.
8. ``time_left = session_T - t * dt`` with ``dt = session_T / n_steps`` (the rules' ``T - t dt``).
9. ``pnl_flat``: if the touch side needed to flatten is empty at ``end``, the position is
   valued at the mid; with no mid at all (then the position is 0) ``pnl = cash - fees``.
10. A level is empty when its price is the sentinel (``9999999999`` ask, ``-9999999999`` bid);
    a side "has no price" when its level 1 is empty; it "shows all N levels" when none of its N
    levels is empty.
11. Trade types 6 (cross) and 7 (halt) and types 1-3 never fill by "trade"; steps 3 and 4 apply
    to every event. A trade strictly through our price fills the whole remaining order in
    partial mode as well (as the rule says) and does not touch ``ahead``.
12. ``recent_returns`` at decision 0 is 0 (no previous decision); ``recent_fills`` at decision
    ``j`` counts the shares filled since decision ``j - 1`` (since ``start`` for ``j = 0``).
13. ``marks`` must lie in ``[start, end]``; ``result["marks"]`` follows the order given.
14. The touch rule compares the best bid and best ask prices (level-1 prices, the sentinel
    standing for an empty side) after the last event of a timestamp group with those before its
    first event; a touch decision is dropped when ``time - previous_kept_decision < latency``,
    when ``next_clock_decision - time < latency`` (float64), or when a clock decision has
    exactly the same time.
15. The window's events are taken in file order; the reader requires non-decreasing times.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

EMPTY_ASK = 9999999999
EMPTY_BID = -9999999999
BID, ASK = 1, -1

TRADE_TYPES = (4, 5)
CANCEL_TYPES = (2, 3)


# --------------------------------------------------------------------------------------------
# Reading a tape
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tape:
    """A LOBSTER day. ``book[i]`` is the book after message ``i``: a tuple of ``4 * n_levels``
    ints, level ``j`` at ``4j .. 4j + 3`` = (ask price, ask size, bid price, bid size).
    ``mid2[i]`` is ``best_bid + best_ask`` of the last two-sided book among rows ``0..i``
    (``None`` before the first two-sided book)."""

    time: list[float]
    type: list[int]
    order_id: list[int]
    size: list[int]
    price: list[int]
    direction: list[int]
    book: list[tuple[int, ...]]
    n_levels: int
    mid2: list[int | None]

    def __len__(self) -> int:
        return len(self.time)


def _to_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        value = float(text)
        if not value.is_integer():
            raise ValueError(f"not an integer: {text!r}") from None
        return int(value)


def _csv_rows(path) -> list[list[str]]:
    """Rows of a comma-separated file: LF or CRLF, an optional header line (a first non-empty
    line whose first field is not a number), blank lines ignored."""
    text = Path(path).read_text(encoding="utf-8-sig")
    rows = []
    first = True
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        fields = [f.strip() for f in line.split(",")]
        if first:
            first = False
            try:
                float(fields[0])
            except ValueError:
                continue  # a header
        rows.append(fields)
    return rows


def _is_empty(price: int, side: int) -> bool:
    return price <= EMPTY_BID if side == BID else price >= EMPTY_ASK


def read_tape(message_path, orderbook_path) -> Tape:
    """Read a LOBSTER message file and order-book file (header or not, CRLF or LF)."""
    msgs = _csv_rows(message_path)
    books = _csv_rows(orderbook_path)
    if len(msgs) != len(books):
        raise ValueError(f"{len(msgs)} message rows but {len(books)} order-book rows")
    if not books:
        raise ValueError("empty tape")
    width = len(books[0])
    if width == 0 or width % 4:
        raise ValueError(f"order-book rows need 4 * N columns, got {width}")
    time, typ, oid, size, price, direction, book = [], [], [], [], [], [], []
    for i, (m, b) in enumerate(zip(msgs, books, strict=True)):
        if len(m) < 6:
            raise ValueError(f"message row {i} has {len(m)} columns, needs 6")
        if len(b) != width:
            raise ValueError(f"order-book row {i} has {len(b)} columns, expected {width}")
        time.append(float(m[0]))
        typ.append(_to_int(m[1]))
        oid.append(_to_int(m[2]))
        size.append(_to_int(m[3]))
        price.append(_to_int(m[4]))
        direction.append(_to_int(m[5]))
        book.append(tuple(_to_int(x) for x in b))
    for i in range(1, len(time)):
        if time[i] < time[i - 1]:
            raise ValueError(f"message times decrease at row {i}")
    mid2: list[int | None] = []
    last = None
    for row in book:
        if not _is_empty(row[0], ASK) and not _is_empty(row[2], BID):
            last = row[0] + row[2]
        mid2.append(last)
    return Tape(time, typ, oid, size, price, direction, book, width // 4, mid2)


# --------------------------------------------------------------------------------------------
# Book helpers (a book row is a tuple of 4N ints)
# --------------------------------------------------------------------------------------------


def _displayed(row: tuple[int, ...], n_levels: int, side: int, price: int) -> int | None:
    """The displayed size at ``price`` on ``side`` if that price is at one of the levels."""
    offset = 2 if side == BID else 0
    for j in range(n_levels):
        if row[4 * j + offset] == price:
            return row[4 * j + offset + 1]
    return None


def _cap(row: tuple[int, ...], n_levels: int, side: int, price: int, ahead: int) -> int:
    """Step 3: cap ``ahead`` by the displayed size at our price in the book after the event."""
    size = _displayed(row, n_levels, side, price)
    if size is not None:
        return min(ahead, size)
    offset = 2 if side == BID else 0
    best = row[offset]
    if _is_empty(best, side):
        return 0  # our side has no price at all
    if (price > best) if side == BID else (price < best):
        return 0  # our price is better than our side's best
    shows_all = all(not _is_empty(row[4 * j + offset], side) for j in range(n_levels))
    deepest = row[4 * (n_levels - 1) + offset]
    deeper = (price < deepest) if side == BID else (price > deepest)
    if shows_all and deeper:
        return ahead  # beyond the visible levels: assume nobody ahead of us cancelled
    return 0  # an empty level inside the displayed range, or beyond fewer than N levels


# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------

Strategy = Callable[[dict], tuple[float, float]]


def symmetric(half_spread: float) -> Strategy:
    """Quote ``half_spread`` dollars either side of the mid."""

    def strategy(obs: dict) -> tuple[float, float]:
        return half_spread, half_spread

    return strategy


def avellaneda_stoikov(gamma: float, k: float, sigma: float) -> Strategy:
    """Avellaneda-Stoikov: ``bid_depth = s/2 + q gamma sigma^2 tau``,
    ``ask_depth = s/2 - q gamma sigma^2 tau``,
    ``s = gamma sigma^2 tau + (2/gamma) ln(1 + gamma/k)``, ``tau = T - t dt``
    (``obs["time_left"]``), ``q = obs["inventory"]``."""

    def strategy(obs: dict) -> tuple[float, float]:
        tau = obs["time_left"]
        q = obs["inventory"]
        s = gamma * sigma**2 * tau + (2.0 / gamma) * math.log(1.0 + gamma / k)
        skew = q * gamma * sigma**2 * tau
        return s / 2 + skew, s / 2 - skew

    return strategy


def scripted(depths: Sequence[Sequence[float | None]]) -> Strategy:
    """``depths[t] = (bid_depth, ask_depth)`` by the observation's step index ``t``."""
    table = [tuple(d) for d in depths]

    def strategy(obs: dict) -> tuple[float, float]:
        return table[obs["t"]]

    return strategy


# --------------------------------------------------------------------------------------------
# The replay
# --------------------------------------------------------------------------------------------


class _Order:
    __slots__ = ("ahead", "decision", "price", "remaining", "side")

    def __init__(self, side: int, price: int, remaining: int, ahead: int, decision: int):
        self.side = side
        self.price = price
        self.remaining = remaining
        self.ahead = ahead
        self.decision = decision


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


def _validate(
    tape, strategy, start, end, session_T, n_steps, quote_size, max_position, requote,
    latency, cancel_latency, queue, queue_power, tick, maker_fee, taker_fee, marks,
    markout_horizons, history_window,
):  # fmt: skip
    if not isinstance(tape, Tape):
        raise ValueError("tape must be a Tape (see read_tape)")
    if not callable(strategy):
        raise ValueError("strategy must be callable")
    for name, v in (("start", start), ("end", end), ("session_T", session_T)):
        if not math.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v}")
    if not end > start:
        raise ValueError(f"end ({end}) must be > start ({start})")
    if not session_T > 0:
        raise ValueError(f"session_T must be > 0, got {session_T}")
    if int(n_steps) != n_steps or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer, got {n_steps}")
    if int(quote_size) != quote_size or quote_size < 1:
        raise ValueError(f"quote_size must be a positive integer, got {quote_size}")
    if int(max_position) != max_position or max_position < 0:
        raise ValueError(f"max_position must be a non-negative integer, got {max_position}")
    if not (math.isfinite(latency) and latency >= 0):
        raise ValueError(f"latency must be >= 0, got {latency}")
    if not (math.isfinite(cancel_latency) and 0 <= cancel_latency <= latency):
        raise ValueError(f"cancel_latency must be in [0, latency={latency}], got {cancel_latency}")
    if not (math.isfinite(requote) and requote > latency):
        raise ValueError(f"requote ({requote}) must exceed latency ({latency})")
    if queue not in ("conservative", "probabilistic"):
        raise ValueError(f"queue must be 'conservative' or 'probabilistic', got {queue!r}")
    if not (math.isfinite(queue_power) and queue_power > 0):
        raise ValueError(f"queue_power must be > 0, got {queue_power}")
    if not (math.isfinite(tick) and tick > 0) or round(tick / 0.0001) < 1:
        raise ValueError(f"tick must be a positive multiple of $0.0001, got {tick}")
    if abs(tick / 0.0001 - round(tick / 0.0001)) > 1e-6:
        raise ValueError(f"tick must be a multiple of $0.0001, got {tick}")
    if not (math.isfinite(maker_fee) and math.isfinite(taker_fee)):
        raise ValueError("fees must be finite")
    for m in marks:
        if not (start <= m <= end):
            raise ValueError(f"mark {m} is outside the window [{start}, {end}]")
    for h in markout_horizons:
        if not (math.isfinite(h) and h >= 0):
            raise ValueError(f"markout horizons must be finite and >= 0, got {h}")
    if int(history_window) != history_window or history_window < 1:
        raise ValueError(f"history_window must be a positive integer, got {history_window}")


def replay(
    tape: Tape,
    strategy: Strategy,
    *,
    start: float,
    end: float,
    session_T: float,
    n_steps: int,
    quote_size: int = 100,
    max_position: int = 10**9,
    requote: float = 1.0,
    requote_on_touch: bool = False,
    latency: float = 0.0,
    cancel_latency: float | None = None,
    keep_unchanged: bool = False,
    queue: str = "conservative",
    queue_power: float = 3.0,
    partial: bool = False,
    tick: float = 0.01,
    maker_fee: float = 0.0,
    taker_fee: float = 0.0,
    marks: Sequence[float] = (),
    markout_horizons: Sequence[float] = (1.0, 10.0, 60.0, 300.0),
    history_window: int = 20,
) -> dict:
    """Replay ``tape`` over the window ``(start, end]`` with ``strategy`` (see the module
    docstring and the reference rules).

    Returns a dict: ``fills`` (one dict per fill: ``time``, ``row`` (0-based message row of the
    tape event that filled us), ``side`` (+1 bid, -1 ask), ``price`` (units), ``size``,
    ``ahead`` (queue ahead at the start of that event), ``position`` (after the fill), ``how``
    ("through", "at" or "cross" = opposite best onto our price), ``mid2_before``);
    ``position``; ``cash_units`` (units x shares, fees excluded) and ``cash`` (dollars);
    ``fees``; ``pnl``; ``pnl_flat``; ``spread_pnl``; ``inventory_pnl``; ``markouts``
    (horizon -> dollars, summed over fills); ``marks`` (pnl at each mark, in the order given);
    ``mid`` / ``mid2`` at the end; ``n_decisions`` and ``decisions`` (time, kind, t, bid, ask
    as decided, ``None`` = not quoted); ``n_events``; ``n_bid_fills``, ``n_ask_fills``,
    ``bid_volume``, ``ask_volume``."""
    if cancel_latency is None:
        cancel_latency = latency
    start, end, session_T = float(start), float(end), float(session_T)
    requote, latency, cancel_latency = float(requote), float(latency), float(cancel_latency)
    marks = [float(m) for m in marks]
    markout_horizons = [float(h) for h in markout_horizons]
    _validate(
        tape, strategy, start, end, session_T, n_steps, quote_size, max_position, requote,
        latency, cancel_latency, queue, queue_power, tick, maker_fee, taker_fee, marks,
        markout_horizons, history_window,
    )  # fmt: skip
    n_steps, quote_size, max_position = int(n_steps), int(quote_size), int(max_position)
    history_window = int(history_window)
    probabilistic = queue == "probabilistic"
    tick_units = round(tick / 0.0001)
    dt = session_T / n_steps
    N = tape.n_levels
    times, books = tape.time, tape.book

    # ---- the stream: initial book and the window's events ------------------------------------
    init_row = -1
    for i, t in enumerate(times):
        if t <= start:
            init_row = i
    empty_row = (EMPTY_ASK, 0, EMPTY_BID, 0) * N
    book = books[init_row] if init_row >= 0 else empty_row
    mid2 = tape.mid2[init_row] if init_row >= 0 else None
    events = [i for i, t in enumerate(times) if start < t <= end]

    # ---- state ------------------------------------------------------------------------------
    orders: dict[int, _Order | None] = {BID: None, ASK: None}
    pending: list[tuple] = []  # heap of (arrival, decision, kind 0 cancel / 1 new, side, price)
    position = 0
    cash = 0  # units x shares, fees excluded
    fees = 0.0
    spread2 = 0  # sum s * x * (mid2_before - 2 price): spread PnL in units/2 x shares
    inv2 = 0  # sum position_after * (mid2_after - mid2_before): inventory PnL, same units
    fills: list[dict] = []
    decisions: list[dict] = []
    n_decisions = 0
    clock_k = 0
    last_decision_time: float | None = None
    touch_time: float | None = None
    mark_order = sorted(range(len(marks)), key=lambda j: marks[j])
    mark_ptr = 0
    mark_values: list[float | None] = [None] * len(marks)
    recent_returns = [0.0] * history_window
    recent_fills = [0.0] * history_window
    last_decision_mid2: int | None = None
    filled_since_decision = 0

    def pnl_now() -> float:
        if mid2 is None:
            return cash / 10000 - fees
        return (2 * cash + position * mid2) / 20000 - fees

    def decide(T: float, kind: str) -> None:
        nonlocal n_decisions, last_decision_time, last_decision_mid2, filled_since_decision
        j = n_decisions
        n_decisions += 1
        last_decision_time = T
        slot = j % history_window
        if mid2 is not None and last_decision_mid2 is not None:
            recent_returns[slot] = (mid2 - last_decision_mid2) / 20000
        else:
            recent_returns[slot] = 0.0
        recent_fills[slot] = filled_since_decision / quote_size
        filled_since_decision = 0
        last_decision_mid2 = mid2
        new_price = {BID: None, ASK: None}
        t_step = None
        if mid2 is not None:
            t_step = min(math.floor((T - start) * n_steps / (end - start) + 1e-9), n_steps - 1)
            obs = {
                "t": t_step,
                "time_left": session_T - t_step * dt,
                "mid": mid2 / 2 * 0.0001,
                "position": position,
                "inventory": position / quote_size,
                "recent_returns": tuple(recent_returns),
                "recent_fills": tuple(recent_fills),
                "pnl": pnl_now(),
                "spread_pnl": spread2 / 20000,
                "inventory_pnl": inv2 / 20000,
                "time": T,
            }
            bid_depth, ask_depth = strategy(obs)
            mid = mid2 / 2 * 0.0001
            if _finite(bid_depth) and position + quote_size <= max_position:
                new_price[BID] = math.floor((mid - bid_depth) / tick + 1e-9) * tick_units
            if _finite(ask_depth) and position - quote_size >= -max_position:
                new_price[ASK] = math.ceil((mid + ask_depth) / tick - 1e-9) * tick_units
        decisions.append(
            {"time": T, "kind": kind, "t": t_step, "bid": new_price[BID], "ask": new_price[ASK]}
        )
        for side in (BID, ASK):
            price = new_price[side]
            resting = orders[side]
            if (
                keep_unchanged
                and price is not None
                and resting is not None
                and resting.remaining > 0
                and resting.price == price
            ):
                continue  # keep the order, its remaining size and its queue place
            heapq.heappush(pending, (T + cancel_latency, j, 0, side, None))
            if price is not None:
                heapq.heappush(pending, (T + latency, j, 1, side, price))

    def arrive(msg: tuple) -> None:
        _, j, kind, side, price = msg
        if kind == 0:  # cancel
            resting = orders[side]
            if resting is not None and resting.decision < j:
                orders[side] = None
            return
        best_ask, best_bid = book[0], book[2]
        if side == BID and not _is_empty(best_ask, ASK) and price >= best_ask:
            price = best_ask - tick_units  # post-only
        elif side == ASK and not _is_empty(best_bid, BID) and price <= best_bid:
            price = best_bid + tick_units
        displayed = _displayed(book, N, side, price)
        ahead = displayed if displayed is not None else 0
        orders[side] = _Order(side, price, quote_size, ahead, j)

    def fill(o: _Order, x: int, how: str, ahead0: int, t: float, row: int, mid2_before) -> None:
        """A fill of ``x`` shares of our order ``o`` at its price, at tape event ``row``."""
        nonlocal position, cash, fees, spread2, filled_since_decision
        side, price = o.side, o.price
        position += side * x
        cash -= side * x * price
        fees += maker_fee * x
        spread2 += side * x * (mid2_before - 2 * price)
        filled_since_decision += x
        o.remaining -= x
        fills.append(
            {
                "time": t,
                "row": row,
                "side": side,
                "price": price,
                "size": x,
                "ahead": ahead0,
                "position": position,
                "how": how,
                "mid2_before": mid2_before,
            }
        )
        if o.remaining == 0:
            orders[side] = None  # fully filled: gone until the next decision

    def run_actions(limit: float, inclusive: bool) -> None:
        """Our actions (arrivals, decisions, marks) at times before ``limit`` (or at it)."""
        nonlocal clock_k, touch_time, mark_ptr
        while True:
            candidates = []
            if pending:
                candidates.append(pending[0][0])
            clock_T = start + clock_k * requote
            if clock_T < end:
                candidates.append(clock_T)
            if touch_time is not None:
                candidates.append(touch_time)
            if mark_ptr < len(mark_order):
                candidates.append(marks[mark_order[mark_ptr]])
            if not candidates:
                return
            tau = min(candidates)
            if tau > limit or (tau == limit and not inclusive) or tau > end:
                return
            while pending and pending[0][0] == tau:  # arrivals decided earlier
                arrive(heapq.heappop(pending))
            if clock_T == tau:
                decide(tau, "clock")
                clock_k += 1
                if touch_time == tau:
                    touch_time = None  # same time as a clock decision: dropped
            elif touch_time == tau:
                touch_time = None
                after_previous = last_decision_time is None or tau - last_decision_time >= latency
                before_clock = clock_T >= end or clock_T - tau >= latency
                if after_previous and before_clock:
                    decide(tau, "touch")
            while pending and pending[0][0] == tau:  # the decision's zero-latency messages
                arrive(heapq.heappop(pending))
            while mark_ptr < len(mark_order) and marks[mark_order[mark_ptr]] == tau:
                mark_values[mark_order[mark_ptr]] = pnl_now()
                mark_ptr += 1

    # ---- the event loop ---------------------------------------------------------------------
    group_book = book
    for n, i in enumerate(events):
        t = times[i]
        if n == 0 or times[events[n - 1]] != t:
            run_actions(t, inclusive=False)
            group_book = book
        before = book
        after = books[i]
        mid2_before = mid2
        if not _is_empty(after[0], ASK) and not _is_empty(after[2], BID):
            mid2 = after[0] + after[2]
        typ, direction, ev_price, ev_size = (
            tape.type[i],
            tape.direction[i],
            tape.price[i],
            tape.size[i],
        )
        for side in (BID, ASK):
            o = orders[side]
            if o is None:
                continue
            ahead0 = o.ahead
            b = o.price

            # 1. trades
            if typ in TRADE_TYPES and direction == side:
                if (ev_price < b) if side == BID else (ev_price > b):
                    fill(o, o.remaining, "through", ahead0, t, i, mid2_before)
                elif ev_price == b:
                    if ev_size > o.ahead:
                        x = min(o.remaining, ev_size - o.ahead) if partial else o.remaining
                        fill(o, x, "at", ahead0, t, i, mid2_before)
                    o.ahead = max(o.ahead - ev_size, 0)
                if o.remaining == 0:
                    continue
            # 2. probabilistic queue advance on a cancel at our price
            if (
                probabilistic
                and typ in CANCEL_TYPES
                and direction == side
                and ev_price == b
                and o.ahead > 0
            ):
                delta = ev_size
                prev = _displayed(before, N, side, b)
                prev = 0 if prev is None else prev
                back = max(prev - o.ahead, 0)
                f_back = float(back) ** queue_power
                f_ahead = float(o.ahead) ** queue_power
                p = f_back / (f_back + f_ahead)
                est = o.ahead - (1 - p) * delta + min(back - p * delta, 0)
                o.ahead = max(math.ceil(est - 1e-9), 0)
            # 3. cap by the displayed size
            o.ahead = _cap(after, N, side, b, o.ahead)
            # 4. the opposite best moves onto our price
            if side == BID:
                if not _is_empty(after[0], ASK) and after[0] <= b:
                    fill(o, o.remaining, "cross", ahead0, t, i, mid2_before)
            elif not _is_empty(after[2], BID) and after[2] >= b:
                fill(o, o.remaining, "cross", ahead0, t, i, mid2_before)
        if position and mid2_before is not None:
            inv2 += position * (mid2 - mid2_before)
        book = after
        last_of_group = n + 1 == len(events) or times[events[n + 1]] != t
        best_moved = (book[0], book[2]) != (group_book[0], group_book[2])
        if requote_on_touch and last_of_group and t < end and best_moved:
            touch_time = t

    run_actions(end, inclusive=True)

    # ---- end of the session -----------------------------------------------------------------
    orders[BID] = orders[ASK] = None
    pnl = pnl_now()
    if position == 0:
        pnl_flat = cash / 10000 - fees
    else:
        touch_px = book[2] if position > 0 else book[0]
        if _is_empty(touch_px, BID if position > 0 else ASK):
            pnl_flat = pnl - taker_fee * abs(position)  # empty touch side: value at the mid
        else:
            pnl_flat = (cash + position * touch_px) / 10000 - fees - taker_fee * abs(position)

    markouts = {}
    for h in markout_horizons:
        total2 = 0
        for f in fills:
            row = bisect.bisect_right(times, f["time"] + h) - 1
            total2 += f["side"] * f["size"] * (tape.mid2[row] - f["mid2_before"])
        markouts[h] = total2 / 20000

    bid_fills = [f for f in fills if f["side"] == BID]
    ask_fills = [f for f in fills if f["side"] == ASK]
    return {
        "fills": fills,
        "position": position,
        "cash_units": cash,
        "cash": cash / 10000,
        "fees": fees,
        "pnl": pnl,
        "pnl_flat": pnl_flat,
        "spread_pnl": spread2 / 20000,
        "inventory_pnl": inv2 / 20000,
        "markouts": markouts,
        "marks": mark_values,
        "mid": None if mid2 is None else mid2 / 2 * 0.0001,
        "mid2": mid2,
        "n_decisions": n_decisions,
        "decisions": decisions,
        "n_events": len(events),
        "n_bid_fills": len(bid_fills),
        "n_ask_fills": len(ask_fills),
        "bid_volume": sum(f["size"] for f in bid_fills),
        "ask_volume": sum(f["size"] for f in ask_fills),
    }
