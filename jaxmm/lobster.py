"""Reader for LOBSTER limit-order-book files (https://lobsterdata.com), and the market orders and
mid-price path that calibration needs.

A LOBSTER day is two CSV files with one row per event: ``TICKER_DATE_START_END_message_LEVEL.csv``
(time in seconds after midnight, event type, order id, size, price in 1e-4 dollars, direction of
the limit order) and ``..._orderbook_LEVEL.csv`` (per level: ask price, ask size, bid price, bid
size; the book *after* the event). Types: 1 new limit order, 2 partial cancel, 3 deletion,
4 execution of a visible order, 5 execution of a hidden order, 7 trading halt. An execution of a
sell (buy) limit order is a buyer- (seller-) initiated trade. Empty levels hold the dummy prices
``+-9999999999``. The original files have no header; copies with a header line are read too.

Prices here are in dollars; times in seconds after midnight.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np

__all__ = [
    "DUMMY_PRICE",
    "EXECUTIONS",
    "PRICE_SCALE",
    "LobsterDay",
    "MarketOrders",
    "find_files",
    "market_orders",
    "mid_path",
    "read_lobster",
]

PRICE_SCALE = 1e-4  # dollars per LOBSTER price unit
DUMMY_PRICE = 9_999_999_999
EXECUTIONS = (4, 5)
_NAME = re.compile(r"^(?P<ticker>.+)_(?P<date>\d{4}-\d{2}-\d{2})_(?P<start>\d+)_(?P<end>\d+)_")


@dataclasses.dataclass(frozen=True)
class LobsterDay:
    """One LOBSTER message file and its order book (level 1 columns), ``[n_events]`` each.

    Attributes:
        ticker, date: from the file name.
        start, end: the requested window, seconds after midnight (from the file name).
        times: event time, seconds after midnight.
        event_type: 1-5 or 7 (see the module docstring).
        order_id, size: order reference and shares.
        price: event price, dollars (``-1e-4`` etc. for halt messages).
        direction: +1 buy limit order, -1 sell limit order.
        ask, bid: best ask and bid after the event, dollars (NaN where that side is empty).
        ask_size, bid_size: shares at the best ask and bid after the event.
    """

    ticker: str
    date: str
    start: float
    end: float
    times: np.ndarray
    event_type: np.ndarray
    order_id: np.ndarray
    size: np.ndarray
    price: np.ndarray
    direction: np.ndarray
    ask: np.ndarray
    bid: np.ndarray
    ask_size: np.ndarray
    bid_size: np.ndarray

    @property
    def mid(self) -> np.ndarray:
        """Mid-price after each event, dollars (NaN where a side of the book is empty)."""
        return 0.5 * (self.ask + self.bid)


@dataclasses.dataclass(frozen=True)
class MarketOrders:
    """Aggressive (market or marketable) orders reconstructed from executions, ``[n_orders]``.

    Consecutive executions with the same time stamp and the same aggressor side are one order
    sweeping the book; its ``price`` is the worst price it reached and ``mid`` the mid of the book
    before its first execution.

    Attributes:
        times: seconds after midnight. side: +1 buyer-initiated, -1 seller-initiated.
        price: worst execution price, dollars. mid: prevailing mid before the order, dollars.
        size: total shares. n_executions: executions merged into each order.
        reach: ``side * (price - mid)``: the deepest quote the order would have filled, dollars.
        hidden: True where every execution of the order hit a hidden order.
    """

    times: np.ndarray
    side: np.ndarray
    price: np.ndarray
    mid: np.ndarray
    size: np.ndarray
    n_executions: np.ndarray
    reach: np.ndarray
    hidden: np.ndarray


def find_files(path: str | Path) -> tuple[Path, Path]:
    """The ``(message, orderbook)`` pair in a folder, or the pair of a given message file."""
    path = Path(path)
    if path.is_dir():
        messages = sorted(path.glob("*_message_*.csv"))
        if len(messages) != 1:
            found = ", ".join(m.name for m in messages) or "none"
            raise FileNotFoundError(
                f"expected one LOBSTER *_message_*.csv file in {path}, found {found}"
            )
        path = messages[0]
    if not path.is_file():
        raise FileNotFoundError(f"no LOBSTER message file at {path}")
    book = path.with_name(path.name.replace("_message_", "_orderbook_"))
    if not book.is_file():
        raise FileNotFoundError(f"no order book file {book.name} beside {path.name}")
    return path, book


def _load(path: Path, n_columns: int) -> np.ndarray:
    with path.open() as handle:
        first = handle.readline().split(",")[0].strip()
    try:
        float(first)
        header = 0
    except ValueError:
        header = 1
    table = np.loadtxt(path, delimiter=",", skiprows=header, dtype=np.float64, ndmin=2)
    if table.shape[1] < n_columns:
        raise ValueError(f"{path.name}: {table.shape[1]} columns; expected at least {n_columns}")
    return table


def read_lobster(path: str | Path) -> LobsterDay:
    """Read a LOBSTER day: ``path`` is its folder or its message file.

    Raises ``FileNotFoundError`` when the files are missing and ``ValueError`` when they do not
    match (different numbers of rows, wrong columns).
    """
    message_path, book_path = find_files(path)
    messages = _load(message_path, 6)
    book = _load(book_path, 4)
    if messages.shape[0] != book.shape[0]:
        raise ValueError(
            f"{message_path.name} has {messages.shape[0]} rows but {book_path.name} has "
            f"{book.shape[0]}: they must describe the same events"
        )
    name = _NAME.match(message_path.name)
    if name is None:
        raise ValueError(
            f"{message_path.name}: expected TICKER_YYYY-MM-DD_START_END_message_LEVEL.csv"
        )

    def price(column: np.ndarray) -> np.ndarray:
        return np.where(np.abs(column) >= DUMMY_PRICE, np.nan, column * PRICE_SCALE)

    return LobsterDay(
        ticker=name["ticker"],
        date=name["date"],
        start=int(name["start"]) / 1000.0,
        end=int(name["end"]) / 1000.0,
        times=messages[:, 0],
        event_type=messages[:, 1].astype(np.int64),
        order_id=messages[:, 2].astype(np.int64),
        size=messages[:, 3],
        price=messages[:, 4] * PRICE_SCALE,
        direction=messages[:, 5].astype(np.int64),
        ask=price(book[:, 0]),
        ask_size=book[:, 1],
        bid=price(book[:, 2]),
        bid_size=book[:, 3],
    )


def market_orders(day: LobsterDay) -> MarketOrders:
    """The day's aggressive orders, merged from its executions (see ``MarketOrders``).

    Executions without a prevailing two-sided book (the first event of the file, or an empty
    side) are dropped.
    """
    rows = np.flatnonzero(np.isin(day.event_type, EXECUTIONS))
    side = -day.direction[rows]  # executing a sell limit order is a buy
    # a new order starts unless the previous row is an execution of the same time and side
    continues = np.zeros(rows.size, bool)
    continues[1:] = (np.diff(rows) == 1) & (np.diff(day.times[rows]) == 0) & (np.diff(side) == 0)
    order = np.cumsum(~continues) - 1
    first = rows[~continues]
    n_orders = first.size
    order_side = side[~continues]
    signed = side * day.price[rows]  # the worst price is the largest signed price
    worst = np.full(n_orders, -np.inf)
    np.maximum.at(worst, order, signed)
    size = np.bincount(order, weights=day.size[rows], minlength=n_orders)
    n_executions = np.bincount(order, minlength=n_orders)
    n_hidden = np.bincount(order, weights=day.event_type[rows] == 5, minlength=n_orders)
    mid = np.full(n_orders, np.nan)
    has_book = first > 0
    mid[has_book] = day.mid[first[has_book] - 1]
    keep = np.isfinite(mid)
    price = order_side * worst
    return MarketOrders(
        times=day.times[first][keep],
        side=order_side[keep],
        price=price[keep],
        mid=mid[keep],
        size=size[keep],
        n_executions=n_executions[keep],
        reach=(order_side * (price - mid))[keep],
        hidden=(n_hidden == n_executions)[keep],
    )


def mid_path(day: LobsterDay) -> tuple[np.ndarray, np.ndarray]:
    """``(times, mids)`` after every event with a two-sided book, dollars."""
    keep = np.isfinite(day.mid)
    return day.times[keep], day.mid[keep]
