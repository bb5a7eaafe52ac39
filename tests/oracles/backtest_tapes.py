"""Hand-built LOBSTER tapes for the replay backtester, each with its result worked out by hand
from the reference rules (the README section "Backtesting on real tapes"), not by running any
engine.

Every case is a tiny LOBSTER day (a message file and an order-book file, no header, LF), a
replay configuration, a strategy and the expected result. ``CASES`` is a list of :class:`Case`:

- ``case.write(folder)`` writes ``TEST_2012-06-21_34200000_57600000_{message,orderbook}_N.csv``
  into ``folder`` and returns the two paths;
- ``case.kwargs``: the keyword arguments of ``replay`` (``start``, ``end``, ...);
- ``case.strategy``: ``("scripted", [[bid_depth, ask_depth], ...])`` (indexed by the observation's
  step ``t``; ``math.inf`` = do not quote that side) or ``("symmetric", half_spread)`` or
  ``("avellaneda_stoikov", (gamma, k, sigma))``; :func:`make_strategy` maps it to an oracle
  strategy;
- ``case.expected``: the hand-computed results. ``fills`` lists every fill record (``time``,
  ``row`` = 0-based message row, ``side``, ``price`` in units of $0.0001, ``size``, ``ahead``,
  ``position`` after the fill); the other keys are results of ``replay`` (ints exact, floats to
  1e-12).

Conventions in the arithmetic below: prices in units ($0.0001), ``mid2 = best_bid + best_ask``,
``mid = mid2 / 20000`` dollars; ``B(p x s)`` / ``A(p x s)`` are the best bid / ask after a row.
Unless a case says otherwise the tape has one level, the tick is $0.01 (100 units), quotes are
100 shares, there is one clock decision (``requote`` longer than the window), no latency, the
conservative queue and full fills. Row 0 (at ``start``) is the initial book.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from tests.oracles import backtest as bt

INF = math.inf
S = 34200.0  # start of every window
EMPTY_ASK, EMPTY_BID = 9999999999, -9999999999


def book(bids=(), asks=(), levels: int = 1) -> tuple[int, ...]:
    """An order-book row: ``bids``/``asks`` are lists of (price, size), best first."""
    row = []
    for j in range(levels):
        ap, az = asks[j] if j < len(asks) else (EMPTY_ASK, 0)
        bp, bz = bids[j] if j < len(bids) else (EMPTY_BID, 0)
        row += [ap, az, bp, bz]
    return tuple(row)


@dataclass
class Case:
    name: str
    doc: str
    rows: list  # (time, type, order_id, size, price, direction, book_row)
    kwargs: dict
    strategy: tuple
    expected: dict
    levels: int = 1
    tags: list = field(default_factory=list)

    def write(self, folder) -> tuple[Path, Path]:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"TEST_2012-06-21_34200000_57600000_{{}}_{self.levels}.csv"
        msg, ob = folder / stem.format("message"), folder / stem.format("orderbook")
        with open(msg, "w", newline="\n") as fm, open(ob, "w", newline="\n") as fb:
            for time, typ, oid, size, price, direction, row in self.rows:
                assert len(row) == 4 * self.levels
                fm.write(f"{time:.9f},{typ},{oid},{size},{price},{direction}\n")
                fb.write(",".join(str(x) for x in row) + "\n")
        return msg, ob


def make_strategy(spec: tuple):
    """The oracle strategy for a case's ``strategy`` spec."""
    name, args = spec
    if name == "scripted":
        return bt.scripted(args)
    if name == "symmetric":
        return bt.symmetric(args)
    if name == "avellaneda_stoikov":
        return bt.avellaneda_stoikov(*args)
    raise ValueError(f"unknown strategy {name!r}")


def _window(seconds: float, **kw) -> dict:
    """A window of ``seconds`` from S, one strategy step per second, one clock decision."""
    n = round(seconds)
    return {
        "start": S,
        "end": S + seconds,
        "session_T": float(seconds),
        "n_steps": n,
        "requote": 100.0,
        **kw,
    }


def _fill(time, row, side, price, size, ahead, position) -> dict:
    return {
        "time": time,
        "row": row,
        "side": side,
        "price": price,
        "size": size,
        "ahead": ahead,
        "position": position,
    }


BASE = book([(100000, 300)], [(100200, 300)])  # B 100000 x 300, A 100200 x 300: mid 10.01
WIDE = book([(100000, 300)], [(100400, 300)])  # B 100000 x 300, A 100400 x 300: mid 10.02

CASES: list[Case] = []

# ---------------------------------------------------------------------------------------------
# 1. A trade strictly through our price; a trade at our price equal to the queue ahead does not
#    fill us.
#    Decision at S: mid 10.01, depths 0.01 -> bid floor(1000.0) = 100000 (displayed, ahead 300),
#    ask ceil(1002.0) = 100200 (ahead 300).
#    row 1: sell trade 300 @ 100000 = our bid: V = 300 is not > ahead 300: no fill;
#           ahead = max(300 - 300, 0) = 0; after: B 99900 (our price better than best: ahead 0).
#    row 2: sell trade 50 @ 99900 < 100000: strictly through -> whole 100 fills @ 100000.
#    position 100, cash = -100 * 100000 = -10_000_000 units.
#    End mid2 = 99900 + 100200 = 200100 -> mid 10.005: pnl = -1000 + 1000.5 = 0.5.
#    spread = 100 * (10.005 - 10.00) = 0.5 (mid before row 2 = 10.005), inventory 0.
#    pnl_flat = -1000 + 100 * 9.99 = -1.0. Markouts: mid after the fill never moves: 0.
CASES.append(
    Case(
        "trade_through",
        "a trade strictly through our bid fills it whole; V == ahead does not",
        [
            (S, 1, 1, 300, 100000, 1, BASE),
            (S + 1, 4, 1, 300, 100000, 1, book([(99900, 500)], [(100200, 300)])),
            (S + 2, 4, 2, 50, 99900, 1, book([(99900, 450)], [(100200, 300)])),
        ],
        _window(3),
        ("scripted", [[0.01, 0.01]] * 3),
        {
            "fills": [_fill(S + 2, 2, 1, 100000, 100, 0, 100)],
            "position": 100,
            "cash_units": -10_000_000,
            "pnl": 0.5,
            "pnl_flat": -1.0,
            "spread_pnl": 0.5,
            "inventory_pnl": 0.0,
            "fees": 0.0,
            "n_decisions": 1,
            "markouts": {1.0: 0.0, 10.0: 0.0, 60.0: 0.0, 300.0: 0.0},
        },
    )
)

# ---------------------------------------------------------------------------------------------
# 2. The queue at the touch. Bid only (ask depth inf). Bid 100000 joins behind 300.
#    row 1: deletion of 250 @ 100000: after B 100000 x 50: cap ahead = min(300, 50) = 50.
#    row 2: sell trade 40 @ 100000: 40 not > 50; ahead = 10; cap min(10, 10) = 10.
#    row 3: new buy 500 @ 100000 (behind us): B 100000 x 510, ahead stays 10.
#    row 4: sell trade 30 @ 100000: 30 > 10 -> whole 100 fills (ahead at the fill 10).
#    cash -10_000_000; end mid 10.01: pnl = -1000 + 1001 = 1.0 = spread 100 * 0.01.
#    pnl_flat = -1000 + 100 * 10.00 = 0.0.
CASES.append(
    Case(
        "queue_at_touch",
        "fill only when volume exceeds the queue ahead; trades and the depth cap shrink it",
        [
            (S, 1, 1, 300, 100000, 1, BASE),
            (S + 1, 3, 11, 250, 100000, 1, book([(100000, 50)], [(100200, 300)])),
            (S + 2, 4, 12, 40, 100000, 1, book([(100000, 10)], [(100200, 300)])),
            (S + 3, 1, 13, 500, 100000, 1, book([(100000, 510)], [(100200, 300)])),
            (S + 4, 4, 12, 30, 100000, 1, book([(100000, 480)], [(100200, 300)])),
        ],
        _window(5),
        ("scripted", [[0.01, INF]] * 5),
        {
            "fills": [_fill(S + 4, 4, 1, 100000, 100, 10, 100)],
            "position": 100,
            "cash_units": -10_000_000,
            "pnl": 1.0,
            "pnl_flat": 0.0,
            "spread_pnl": 1.0,
            "inventory_pnl": 0.0,
            "n_decisions": 1,
        },
    )
)

# ---------------------------------------------------------------------------------------------
# 3. Partial fills over two trades (partial=True). Bid 100000 joins behind 300.
#    row 1: new buy 200 @ 100000 behind us: B x 500, ahead 300.
#    row 2: sell trade 340 @ 100000: 340 > 300 -> min(100, 340 - 300) = 40 fill (ahead at fill
#           300); ahead = max(300 - 340, 0) = 0. position 40, cash -4_000_000, remaining 60.
#    row 3: sell trade 100 @ 100000: 100 > 0 -> min(60, 100) = 60 (ahead 0). position 100,
#           cash -10_000_000; the order is used up.
#    row 4: sell trade 60 @ 100000: no order left, no fill. B moves to 99900 x 200:
#           mid 10.01 -> 10.005, inventory 100 * (-0.005) = -0.5.
#    spread = 40 * 0.01 + 60 * 0.01 = 1.0; pnl = 1.0 - 0.5 = 0.5 = -1000 + 100 * 10.005.
#    pnl_flat = -1000 + 100 * 9.99 = -1.0.
PARTIAL_ROWS = [
    (S, 1, 1, 300, 100000, 1, BASE),
    (S + 1, 1, 21, 200, 100000, 1, book([(100000, 500)], [(100200, 300)])),
    (S + 2, 4, 1, 340, 100000, 1, book([(100000, 160)], [(100200, 300)])),
    (S + 3, 4, 21, 100, 100000, 1, book([(100000, 60)], [(100200, 300)])),
    (S + 4, 4, 21, 60, 100000, 1, book([(99900, 200)], [(100200, 300)])),
]
CASES.append(
    Case(
        "partial_two_trades",
        "partial mode: 40 then 60 shares over two trades, then nothing",
        PARTIAL_ROWS,
        _window(5, partial=True),
        ("scripted", [[0.01, INF]] * 5),
        {
            "fills": [
                _fill(S + 2, 2, 1, 100000, 40, 300, 40),
                _fill(S + 3, 3, 1, 100000, 60, 0, 100),
            ],
            "position": 100,
            "cash_units": -10_000_000,
            "pnl": 0.5,
            "pnl_flat": -1.0,
            "spread_pnl": 1.0,
            "inventory_pnl": -0.5,
            "bid_volume": 100,
            "n_bid_fills": 2,
        },
    )
)
# 3b. Same tape in full mode: row 2 (340 > 300) fills the whole 100; same end state.
CASES.append(
    Case(
        "full_mode_same_tape",
        "full mode on the partial tape: the first trade at our price fills all 100",
        PARTIAL_ROWS,
        _window(5),
        ("scripted", [[0.01, INF]] * 5),
        {
            "fills": [_fill(S + 2, 2, 1, 100000, 100, 300, 100)],
            "position": 100,
            "cash_units": -10_000_000,
            "pnl": 0.5,
            "spread_pnl": 1.0,
            "inventory_pnl": -0.5,
        },
    )
)

# ---------------------------------------------------------------------------------------------
# 4. Latency 0.5 s, requote 2 s: decisions at S (t=0) and S+2 (t=2), window 4 s, n_steps 4.
#    D0 @S: mid 10.01, depths 0.01 -> bid 100000, ask 100200, both arrive at S+0.5.
#    row 1 @S+0.2: new buy 200 @ 100000 -> B x 500 (before our order arrives).
#    S+0.5: bid joins the queue as of its arrival: ahead 500 (not the 300 at decision time);
#           ask ahead 300.
#    row 2 @S+1: sell trade 480 @ 100000: 480 not > 500; ahead 20; B x 20.
#    row 3 @S+1.5: new buy 100 behind: B x 120, ahead 20.
#    D1 @S+2: mid 10.01, depths 0.02 -> bid floor(999.0) = 99900, ask ceil(1003.0) = 100300;
#           cancels and new orders arrive at S+2.5.
#    row 4 @S+2.2: sell trade 70 @ 100000: the OLD bid still rests: 70 > 20 -> fills 100
#           @ 100000 (ahead 20). position 100, cash -10_000_000. B x 50.
#    S+2.5: old ask cancelled; new bid 99900 (not displayed: ahead 0), new ask 100300 (ahead 0).
#    row 5 @S+3: buy trade 300 @ 100200 < our ask 100300: nothing; A becomes 100300 x 200:
#           mid (100000 + 100300)/2 = 10.015, inventory 100 * 0.005 = 0.5; ask cap min(0,200)=0.
#    row 6 @S+3.5: buy trade 10 @ 100300: 10 > 0 -> ask fills 100 @ 100300 (ahead 0).
#    position 0, cash = -10_000_000 + 10_030_000 = 30_000 -> pnl 3.0.
#    spread = 100 * (10.01 - 10.00) + 100 * (10.03 - 10.015) = 1.0 + 1.5; inventory 0.5.
CASES.append(
    Case(
        "latency",
        "the old order fills before the new one arrives; the new one queues as of arrival",
        [
            (S, 1, 1, 300, 100000, 1, BASE),
            (S + 0.2, 1, 31, 200, 100000, 1, book([(100000, 500)], [(100200, 300)])),
            (S + 1, 4, 1, 480, 100000, 1, book([(100000, 20)], [(100200, 300)])),
            (S + 1.5, 1, 32, 100, 100000, 1, book([(100000, 120)], [(100200, 300)])),
            (S + 2.2, 4, 31, 70, 100000, 1, book([(100000, 50)], [(100200, 300)])),
            (S + 3, 4, 2, 300, 100200, -1, book([(100000, 50)], [(100300, 200)])),
            (S + 3.5, 4, 3, 10, 100300, -1, book([(100000, 50)], [(100300, 190)])),
        ],
        _window(4, requote=2.0, latency=0.5),
        ("scripted", [[0.01, 0.01], [0.01, 0.01], [0.02, 0.02], [0.02, 0.02]]),
        {
            "fills": [
                _fill(S + 2.2, 4, 1, 100000, 100, 20, 100),
                _fill(S + 3.5, 6, -1, 100300, 100, 0, 0),
            ],
            "position": 0,
            "cash_units": 30_000,
            "pnl": 3.0,
            "pnl_flat": 3.0,
            "spread_pnl": 2.5,
            "inventory_pnl": 0.5,
            "n_decisions": 2,
        },
    )
)

# ---------------------------------------------------------------------------------------------
# 5. cancel_latency 0.1 < latency 0.5: between S+2.1 and S+2.5 we have no bid.
#    D0 @S: bid 100000 arrives S+0.5, ahead 300.
#    row 1 @S+1: deletion 250 @ 100000 -> B x 50, ahead 50.
#    row 2 @S+1.5: new buy 100 behind: B x 150, ahead 50.
#    D1 @S+2: same price 100000: cancel arrives S+2.1, new order S+2.5.
#    row 3 @S+2.3: sell trade 60 @ 100000 (60 > 50 would have filled the old bid) - no order
#           rests: no fill. B x 90.
#    S+2.5: new bid joins behind 90.
#    row 4 @S+3: sell trade 90: 90 not > 90; ahead 0; B 99900 (our price better: 0);
#           mid 10.005.
#    row 5 @S+3.5: new buy 100 @ 100000 (behind us): B 100000 x 100, ahead 0, mid 10.01.
#    row 6 @S+3.8: sell trade 30 @ 100000: 30 > 0 -> fills 100 (ahead 0).
#    cash -10_000_000, end mid 10.01: pnl 1.0 = spread 1.0; pnl_flat 0.0.
CANCEL_ROWS = [
    (S, 1, 1, 300, 100000, 1, BASE),
    (S + 1, 3, 1, 250, 100000, 1, book([(100000, 50)], [(100200, 300)])),
    (S + 1.5, 1, 41, 100, 100000, 1, book([(100000, 150)], [(100200, 300)])),
    (S + 2.3, 4, 1, 60, 100000, 1, book([(100000, 90)], [(100200, 300)])),
    (S + 3, 4, 41, 90, 100000, 1, book([(99900, 400)], [(100200, 300)])),
    (S + 3.5, 1, 42, 100, 100000, 1, book([(100000, 100)], [(100200, 300)])),
    (S + 3.8, 4, 42, 30, 100000, 1, book([(100000, 70)], [(100200, 300)])),
]
CASES.append(
    Case(
        "cancel_latency_gap",
        "cancel at T+0.1, new order at T+0.5: a trade in the gap fills nothing",
        CANCEL_ROWS,
        _window(4, requote=2.0, latency=0.5, cancel_latency=0.1),
        ("scripted", [[0.01, INF]] * 4),
        {
            "fills": [_fill(S + 3.8, 6, 1, 100000, 100, 0, 100)],
            "position": 100,
            "cash_units": -10_000_000,
            "pnl": 1.0,
            "pnl_flat": 0.0,
            "spread_pnl": 1.0,
            "inventory_pnl": 0.0,
            "n_decisions": 2,
        },
    )
)
# 5b. Same tape, cancel_latency = latency = 0.5: the old bid rests until S+2.5 and row 3
#    (60 > 50) fills it @ 100000 (ahead 50), position 100. The new bid arrives at S+2.5 behind
#    B x 90 (ahead 90); row 4: 90 not > 90, ahead 0; row 6: 30 > 0 fills 100 more.
#    position 200, cash -20_000_000, end mid 10.01: pnl = -2000 + 2002 = 2.0.
#    spread 1.0 + 1.0; inventory: 100 * (10.005 - 10.01) at row 4 + 100 * (+0.005) at row 5 = 0.
#    pnl_flat = -2000 + 200 * 10.00 = 0.0.
CASES.append(
    Case(
        "cancel_latency_equal",
        "same tape with cancel_latency = latency: the old bid fills in the gap",
        CANCEL_ROWS,
        _window(4, requote=2.0, latency=0.5),
        ("scripted", [[0.01, INF]] * 4),
        {
            "fills": [
                _fill(S + 2.3, 3, 1, 100000, 100, 50, 100),
                _fill(S + 3.8, 6, 1, 100000, 100, 0, 200),
            ],
            "position": 200,
            "cash_units": -20_000_000,
            "pnl": 2.0,
            "pnl_flat": 0.0,
            "spread_pnl": 2.0,
            "inventory_pnl": 0.0,
        },
    )
)

# ---------------------------------------------------------------------------------------------
# 6. Maker and taker fees. Bid depth 0 -> floor(1001.0) = 100100, inside the spread (ahead 0).
#    row 1: sell trade 100 @ 100000 < 100100: through, fills 100 @ 100100.
#    cash -10_010_000 (-1001.00); end mid 10.01: cash + position * mid = 0.
#    maker_fee 0.0015: fees 0.15, pnl = -0.15; pnl_flat = -1001 + 100 * 10.00 - 0.15
#    - 0.003 * 100 = -1.45.
FEE_ROWS = [
    (S, 1, 1, 300, 100000, 1, BASE),
    (S + 1, 4, 1, 100, 100000, 1, book([(100000, 200)], [(100200, 300)])),
]
CASES.append(
    Case(
        "fees",
        "maker fee per filled share, taker fee on the flattening",
        FEE_ROWS,
        _window(2, maker_fee=0.0015, taker_fee=0.003),
        ("scripted", [[0.0, INF]] * 2),
        {
            "fills": [_fill(S + 1, 1, 1, 100100, 100, 0, 100)],
            "position": 100,
            "cash_units": -10_010_000,
            "fees": 0.15,
            "pnl": -0.15,
            "pnl_flat": -1.45,
            "spread_pnl": 0.0,
            "inventory_pnl": 0.0,
        },
    )
)
# 6b. A maker rebate (maker_fee -0.002): fees -0.2, pnl 0.2, pnl_flat = -1 + 0.2 - 0.3 = -1.1.
CASES.append(
    Case(
        "maker_rebate",
        "negative maker fee",
        FEE_ROWS,
        _window(2, maker_fee=-0.002, taker_fee=0.003),
        ("scripted", [[0.0, INF]] * 2),
        {
            "fills": [_fill(S + 1, 1, 1, 100100, 100, 0, 100)],
            "position": 100,
            "cash_units": -10_010_000,
            "fees": -0.2,
            "pnl": 0.2,
            "pnl_flat": -1.1,
        },
    )
)

# ---------------------------------------------------------------------------------------------
# 7. Inventory limit (max_position 100), requote 1 s: decisions at S, S+1, S+2.
#    Book B 100000 / A 100400: mid 10.02; depths 0.01 -> bid 100100, ask 100300 (inside: 0).
#    row 1 @S+0.5: sell trade 100 @ 100000 < 100100: bid fills 100 @ 100100; position 100.
#    D1 @S+1: 100 + 100 > 100: no bid; ask 100300 re-posted (ahead 0).
#    row 2 @S+1.5: sell trade 100 @ 100000 would fill a bid at 100100: there is none.
#    D2 @S+2: still no bid.
#    row 3 @S+2.5: buy trade 50 @ 100400 > 100300: ask fills 100 @ 100300; position 0.
#    cash = -10_010_000 + 10_030_000 = 20_000: pnl 2.0 = spread 100*0.01 + 100*0.01.
CASES.append(
    Case(
        "inventory_limit",
        "the bid is not posted while position + quote_size > max_position",
        [
            (S, 1, 1, 300, 100000, 1, WIDE),
            (S + 0.5, 4, 1, 100, 100000, 1, book([(100000, 200)], [(100400, 300)])),
            (S + 1.5, 4, 1, 100, 100000, 1, book([(100000, 100)], [(100400, 300)])),
            (S + 2.5, 4, 2, 50, 100400, -1, book([(100000, 100)], [(100400, 250)])),
        ],
        _window(3, requote=1.0, max_position=100),
        ("scripted", [[0.01, 0.01]] * 3),
        {
            "fills": [
                _fill(S + 0.5, 1, 1, 100100, 100, 0, 100),
                _fill(S + 2.5, 3, -1, 100300, 100, 0, 0),
            ],
            "position": 0,
            "cash_units": 20_000,
            "pnl": 2.0,
            "pnl_flat": 2.0,
            "spread_pnl": 2.0,
            "inventory_pnl": 0.0,
            "n_decisions": 3,
            "n_bid_fills": 1,
            "n_ask_fills": 1,
        },
    )
)

# ---------------------------------------------------------------------------------------------
# 8. Post-only repricing (latency 0.5). Mid 10.02, bid depth 0 -> bid 100200 (inside).
#    row 1 @S+0.2: new sell 100 @ 100200: A 100200 x 100 (mid 10.01).
#    S+0.5: our bid 100200 >= best ask 100200 -> repriced to 100200 - 100 = 100100;
#           not displayed: ahead 0.
#    row 2 @S+1: sell trade 50 @ 100000 < 100100: fills 100 @ 100100. cash -10_010_000.
#    row 3 @S+2: the 100200 ask is deleted: A 100400, mid 10.01 -> 10.02: inventory +1.0.
#    pnl = -1001 + 1002 = 1.0; spread = 100 * (10.01 - 10.01) = 0; pnl_flat = -1.0.
CASES.append(
    Case(
        "post_only_reprice",
        "a bid at or above the best ask on arrival is repriced to best_ask - tick",
        [
            (S, 1, 1, 300, 100000, 1, WIDE),
            (S + 0.2, 1, 51, 100, 100200, -1, book([(100000, 300)], [(100200, 100)])),
            (S + 1, 4, 1, 50, 100000, 1, book([(100000, 250)], [(100200, 100)])),
            (S + 2, 3, 51, 100, 100200, -1, book([(100000, 250)], [(100400, 300)])),
        ],
        _window(3, latency=0.5),
        ("scripted", [[0.0, INF]] * 3),
        {
            "fills": [_fill(S + 1, 2, 1, 100100, 100, 0, 100)],
            "position": 100,
            "cash_units": -10_010_000,
            "pnl": 1.0,
            "pnl_flat": -1.0,
            "spread_pnl": 0.0,
            "inventory_pnl": 1.0,
        },
    )
)

# ---------------------------------------------------------------------------------------------
# 9. The opposite best moves onto our price. Mid 10.02, bid 100100 inside (ahead 0).
#    row 1: new sell 200 @ 100100 (a type 1, not a trade): best ask 100100 <= our bid ->
#    the whole bid fills @ 100100. mid before 10.02, after (100000 + 100100)/2 = 10.005.
#    spread 100 * (10.02 - 10.01) = 1.0, inventory 100 * (10.005 - 10.02) = -1.5, pnl -0.5
#    (= -1001 + 1000.5). pnl_flat = -1001 + 1000 = -1.0.
CASES.append(
    Case(
        "opposite_best_onto_price",
        "best ask <= our bid after an event fills the bid",
        [
            (S, 1, 1, 300, 100000, 1, WIDE),
            (S + 1, 1, 61, 200, 100100, -1, book([(100000, 300)], [(100100, 200)])),
        ],
        _window(2),
        ("scripted", [[0.01, INF]] * 2),
        {
            "fills": [_fill(S + 1, 1, 1, 100100, 100, 0, 100)],
            "position": 100,
            "cash_units": -10_010_000,
            "pnl": -0.5,
            "pnl_flat": -1.0,
            "spread_pnl": 1.0,
            "inventory_pnl": -1.5,
        },
    )
)

# ---------------------------------------------------------------------------------------------
# 10. Hidden executions at half-cent prices. Bid 100000, ask 100200 (ahead 300 each).
#    row 1: hidden, buy side hit, 100 @ 100050 > our bid: does not reach us.
#    row 2: hidden, sell side lifted, 500 @ 100150 < our ask: does not reach us.
#    row 3: hidden 10 @ 99950 < 100000: through our bid -> 100 @ 100000 (ahead 300).
#    row 4: hidden 10 @ 100250 > 100200: through our ask -> 100 @ 100200 (ahead 300).
#    cash 20_000, pnl 2.0 = spread 1.0 + 1.0.
CASES.append(
    Case(
        "hidden_half_cent",
        "a sub-tick hidden print is never at our price: through or short of it",
        [
            (S, 1, 1, 300, 100000, 1, BASE),
            (S + 1, 5, 0, 100, 100050, 1, BASE),
            (S + 2, 5, 0, 500, 100150, -1, BASE),
            (S + 3, 5, 0, 10, 99950, 1, BASE),
            (S + 4, 5, 0, 10, 100250, -1, BASE),
        ],
        _window(5),
        ("scripted", [[0.01, 0.01]] * 5),
        {
            "fills": [
                _fill(S + 3, 3, 1, 100000, 100, 300, 100),
                _fill(S + 4, 4, -1, 100200, 100, 300, 0),
            ],
            "position": 0,
            "cash_units": 20_000,
            "pnl": 2.0,
            "spread_pnl": 2.0,
            "inventory_pnl": 0.0,
        },
    )
)

# ---------------------------------------------------------------------------------------------
# 11. Probabilistic queue advance on a cancel (queue_power 3). Bid 100000 joins behind 100.
#    row 1: new buy 300 behind us: B x 400, ahead 100.
#    row 2: deletion of 300 @ 100000: delta 300, prev 400, back 300, ahead 100,
#           p = 300^3 / (300^3 + 100^3) = 27/28,
#           est = 100 - (1/28) 300 + min(300 - (27/28) 300, 0) = 100 - 10.714... = 89.29
#           -> ahead = ceil(89.29) = 90; cap min(90, 100) = 90.
#    row 3: sell trade 95 @ 100000: 95 > 90 -> fills 100 (ahead 90). cash -10_000_000,
#           end mid 10.01: pnl 1.0 = spread; pnl_flat 0.0.
PROB_ROWS = [
    (S, 1, 1, 100, 100000, 1, book([(100000, 100)], [(100200, 300)])),
    (S + 1, 1, 71, 300, 100000, 1, book([(100000, 400)], [(100200, 300)])),
    (S + 2, 3, 71, 300, 100000, 1, book([(100000, 100)], [(100200, 300)])),
    (S + 3, 4, 1, 95, 100000, 1, book([(100000, 5)], [(100200, 300)])),
]
PROB_FILLED = {
    "position": 100,
    "cash_units": -10_000_000,
    "pnl": 1.0,
    "pnl_flat": 0.0,
    "spread_pnl": 1.0,
    "inventory_pnl": 0.0,
}
CASES.append(
    Case(
        "probabilistic_cancel",
        "a cancel at our price moves part of the queue ahead of us (power 3)",
        PROB_ROWS,
        _window(4, queue="probabilistic"),
        ("scripted", [[0.01, INF]] * 4),
        {"fills": [_fill(S + 3, 3, 1, 100000, 100, 90, 100)], **PROB_FILLED},
    )
)
# 11b. queue_power 2: p = 9e4 / (9e4 + 1e4) = 0.9, est = 100 - 0.1 * 300 + min(300 - 270, 0)
#    = 70 -> ahead 70 (ceil(70 - 1e-9)); row 3: 95 > 70 fills (ahead 70).
CASES.append(
    Case(
        "probabilistic_cancel_power2",
        "the same with queue_power 2",
        PROB_ROWS,
        _window(4, queue="probabilistic", queue_power=2.0),
        ("scripted", [[0.01, INF]] * 4),
        {"fills": [_fill(S + 3, 3, 1, 100000, 100, 70, 100)], **PROB_FILLED},
    )
)
# 11c. Conservative on the same tape: after row 2, ahead = min(100, 100) = 100; row 3: 95 is
#    not > 100 -> no fill. Nothing happens: pnl 0.
CASES.append(
    Case(
        "conservative_cancel",
        "the conservative queue on the same tape: no fill",
        PROB_ROWS,
        _window(4),
        ("scripted", [[0.01, INF]] * 4),
        {"fills": [], "position": 0, "cash_units": 0, "pnl": 0.0, "pnl_flat": 0.0},
    )
)

# ---------------------------------------------------------------------------------------------
# 12. keep_unchanged keeps the queue place. requote 1 s: decisions at S and S+1, same price.
#    D0: bid 100000 behind 300.
#    row 1 @S+0.5: sell trade 250: 250 not > 300; ahead 50; B x 50.
#    row 2 @S+0.7: new buy 400 behind us: B x 450, ahead 50.
#    D1 @S+1: mid 10.01 -> bid 100000 again. keep_unchanged: the order stays, ahead 50.
#    row 3 @S+1.5: sell trade 100: 100 > 50 -> fills 100 (ahead 50). pnl 1.0.
#    Without keep_unchanged (12b) the re-post joins behind 450 and 100 is not > 450: no fill.
KEEP_ROWS = [
    (S, 1, 1, 300, 100000, 1, BASE),
    (S + 0.5, 4, 1, 250, 100000, 1, book([(100000, 50)], [(100200, 300)])),
    (S + 0.7, 1, 81, 400, 100000, 1, book([(100000, 450)], [(100200, 300)])),
    (S + 1.5, 4, 1, 100, 100000, 1, book([(100000, 350)], [(100200, 300)])),
]
CASES.append(
    Case(
        "keep_unchanged",
        "an unchanged price keeps its order and its queue place",
        KEEP_ROWS,
        _window(2, requote=1.0, keep_unchanged=True),
        ("scripted", [[0.01, INF]] * 2),
        {
            "fills": [_fill(S + 1.5, 3, 1, 100000, 100, 50, 100)],
            "position": 100,
            "cash_units": -10_000_000,
            "pnl": 1.0,
            "spread_pnl": 1.0,
            "n_decisions": 2,
        },
    )
)
CASES.append(
    Case(
        "repost_resets_queue",
        "without keep_unchanged the re-post goes to the back of the queue",
        KEEP_ROWS,
        _window(2, requote=1.0),
        ("scripted", [[0.01, INF]] * 2),
        {"fills": [], "position": 0, "cash_units": 0, "pnl": 0.0, "n_decisions": 2},
    )
)

# ---------------------------------------------------------------------------------------------
# 13. End of the session: flatten at the touch vs the mid; marks; markouts.
#    Mid 10.02, ask depth 0.01 -> ask ceil(1003.0) = 100300 inside (ahead 0); no bid.
#    row 1 @S+1: buy trade 100 @ 100400 > 100300: ask fills 100 @ 100300; position -100,
#           cash +10_030_000. mid stays 10.02: mark at S+1.5 = 1003 - 1002 = 1.0.
#    row 2 @S+2: new sell 100 @ 100300: A 100300, mid (100000 + 100300)/2 = 10.015;
#           inventory -100 * (10.015 - 10.02) = +0.5.
#    end S+3: pnl = 1003 - 100 * 10.015 = 1.5 (mark at S+3 too) = spread 1.0 + inventory 0.5;
#    pnl_flat = 1003 - 100 * 10.03 - 0.001 * 100 = -0.1 (buys back at the best ask 100300).
#    row 3 @S+8 is after the window (not replayed) but inside the file: the 100300 ask goes,
#    mid back to 10.02. Markouts (s = -1, x = 100, mid before 10.02):
#      h = 1: mid(S+2) = 10.015 -> -100 * (10.015 - 10.02) = 0.5;
#      h = 10: mid(S+11) = 10.02 (the file's last mid; see choice 2 of the oracle) -> 0.0.
CASES.append(
    Case(
        "end_flatten_vs_mid",
        "pnl at the mid vs flattening at the touch with a taker fee; marks; markouts",
        [
            (S, 1, 1, 300, 100000, 1, WIDE),
            (S + 1, 4, 2, 100, 100400, -1, book([(100000, 300)], [(100400, 200)])),
            (S + 2, 1, 91, 100, 100300, -1, book([(100000, 300)], [(100300, 100)])),
            (S + 8, 3, 91, 100, 100300, -1, book([(100000, 300)], [(100400, 200)])),
        ],
        _window(3, taker_fee=0.001, marks=(S + 1.5, S + 3), markout_horizons=(1.0, 10.0)),
        ("scripted", [[INF, 0.01]] * 3),
        {
            "fills": [_fill(S + 1, 1, -1, 100300, 100, 0, -100)],
            "position": -100,
            "cash_units": 10_030_000,
            "pnl": 1.5,
            "pnl_flat": -0.1,
            "spread_pnl": 1.0,
            "inventory_pnl": 0.5,
            "marks": [1.0, 1.5],
            "markouts": {1.0: 0.5, 10.0: 0.0},
        },
    )
)

# ---------------------------------------------------------------------------------------------
# 14. Level 10: our price becomes an empty level inside the displayed range.
#    Bids 100000 x 100, 99900 x 200, 99800 x 300; asks 100200 x 300, 100300 x 300: mid 10.01.
#    Bid depth 0.02 -> floor(999.0) = 99900: displayed at level 2: ahead 200.
#    row 1: the 99900 level is deleted: bids 100000, 99800 (2 of 10 levels): our price is an
#           empty level inside the displayed range -> ahead 0.
#    row 2: new buy 500 @ 99900 (behind us): ahead min(0, 500) = 0.
#    row 3: sell trade 100 @ 100000 > our bid: nothing; best bid now 99900: mid 10.005.
#    row 4: sell trade 10 @ 99900: 10 > 0 -> fills 100 @ 99900 (ahead 0).
#    cash -9_990_000, end mid 10.005: pnl = -999 + 1000.5 = 1.5 = spread 100*(10.005 - 9.99).
#    pnl_flat = -999 + 999 = 0.0. (Without row 1 the order would still have 200 ahead.)
L10 = 10
CASES.append(
    Case(
        "level10_empty_level",
        "level-10 tape: an empty level inside the displayed range resets the queue",
        [
            (
                S,
                1,
                1,
                100,
                100000,
                1,
                book(
                    [(100000, 100), (99900, 200), (99800, 300)],
                    [(100200, 300), (100300, 300)],
                    L10,
                ),
            ),
            (
                S + 1,
                3,
                101,
                200,
                99900,
                1,
                book([(100000, 100), (99800, 300)], [(100200, 300), (100300, 300)], L10),
            ),
            (
                S + 2,
                1,
                102,
                500,
                99900,
                1,
                book(
                    [(100000, 100), (99900, 500), (99800, 300)],
                    [(100200, 300), (100300, 300)],
                    L10,
                ),
            ),
            (
                S + 3,
                4,
                1,
                100,
                100000,
                1,
                book([(99900, 500), (99800, 300)], [(100200, 300), (100300, 300)], L10),
            ),
            (
                S + 4,
                4,
                102,
                10,
                99900,
                1,
                book([(99900, 490), (99800, 300)], [(100200, 300), (100300, 300)], L10),
            ),
        ],
        _window(5),
        ("scripted", [[0.02, INF]] * 5),
        {
            "fills": [_fill(S + 4, 4, 1, 99900, 100, 0, 100)],
            "position": 100,
            "cash_units": -9_990_000,
            "pnl": 1.5,
            "pnl_flat": 0.0,
            "spread_pnl": 1.5,
            "inventory_pnl": 0.0,
        },
        levels=L10,
    )
)

# ---------------------------------------------------------------------------------------------
# 15. requote_on_touch, latency 0.3, requote 2 s (clock at S, S+2), symmetric 0.01.
#    D0 clock @S: mid 10.01 -> bid 100000, ask 100200; arrive S+0.3 (ahead 300 each).
#    rows 1-2 @S+1 (one group): the 100000 bid level goes (B 99900: our bid is better than the
#           best -> ahead 0) and comes back (ahead min(0, 300) = 0). As a group the best prices
#           did not change: no touch decision.
#    row 3 @S+2: new sell @ 100100: A 100100. Touch at S+2 = the clock decision at S+2: one
#           decision (clock). mid (100000 + 100100)/2 = 10.005 -> bid floor(999.5) = 99900,
#           ask ceil(1001.5) = 100200; they arrive at S+2.3 (cancels too).
#           Our old ask 100200 is now deeper than the level-1 best: ahead unchanged 300.
#    row 4 @S+2.1: sell trade 300 @ 100000: the old bid (ahead 0) still rests: 300 > 0 ->
#           fills 100 @ 100000 (ahead 0). mid before 10.005, after (99900 + 100100)/2 = 10.00:
#           inventory 100 * (-0.005) = -0.5. Best bid changed: touch at S+2.1 is dropped
#           (0.1 s < latency after the decision at S+2).
#    S+2.3: old ask cancelled; new bid 99900 joins behind 200; new ask 100200 is not
#           displayed (A 100100): ahead 0.
#    row 5 @S+3: buy trade 100 @ 100100 < our ask 100200: nothing. A 100200 x 300 (ask cap
#           min(0, 300) = 0). mid 10.005: inventory +0.5. Touch decision at S+3 (kept, 1 s after
#           S+2): mid 10.005 -> bid 99900, ask 100200 again, re-posted at S+3.3.
#    row 6 @S+3.1: buy trade 10 @ 100200: the resting ask (ahead 0) fills 100 (ahead 0).
#    position 0, cash = -10_000_000 + 10_020_000 = 20_000: pnl 2.0 = spread
#    100 * (10.005 - 10.00) + 100 * (10.02 - 10.005) = 0.5 + 1.5, inventory -0.5 + 0.5 = 0.
#    Decisions: S (clock), S+2 (clock), S+3 (touch): 3.
CASES.append(
    Case(
        "requote_on_touch",
        "touch decisions: groups, same time as a clock decision, dropped within latency",
        [
            (S, 1, 1, 300, 100000, 1, BASE),
            (S + 1, 3, 1, 300, 100000, 1, book([(99900, 200)], [(100200, 300)])),
            (S + 1, 1, 111, 300, 100000, 1, BASE),
            (S + 2, 1, 112, 100, 100100, -1, book([(100000, 300)], [(100100, 100)])),
            (S + 2.1, 4, 111, 300, 100000, 1, book([(99900, 200)], [(100100, 100)])),
            (S + 3, 4, 112, 100, 100100, -1, book([(99900, 200)], [(100200, 300)])),
            (S + 3.1, 4, 2, 10, 100200, -1, book([(99900, 200)], [(100200, 290)])),
        ],
        _window(4, requote=2.0, latency=0.3, requote_on_touch=True),
        ("symmetric", 0.01),
        {
            "fills": [
                _fill(S + 2.1, 4, 1, 100000, 100, 0, 100),
                _fill(S + 3.1, 6, -1, 100200, 100, 0, 0),
            ],
            "position": 0,
            "cash_units": 20_000,
            "pnl": 2.0,
            "pnl_flat": 2.0,
            "spread_pnl": 2.0,
            "inventory_pnl": 0.0,
            "n_decisions": 3,
            "decision_times": [S, S + 2, S + 3],
        },
    )
)
