"""Reader for LOBSTER limit-order-book files (https://lobsterdata.com), and the market orders and
mid-price path that calibration needs.

A LOBSTER day is two CSV files with one row per event: ``TICKER_YYYY-MM-DD_START_END_message_N.csv``
(time in seconds after midnight, event type, order id, size, price in 1e-4 dollars, direction of
the limit order; ``START``/``END`` the requested window in milliseconds after midnight, ``N`` the
number of book levels) and ``..._orderbook_N.csv`` (``4 N`` columns: per level ask price, ask
size, bid price, bid size; the book *after* the event). Event types: 1 new limit order, 2 partial
cancel, 3 deletion, 4 execution of a visible order, 5 execution of a hidden order, 6 cross trade
(auction), 7 trading halt. An execution of a sell (buy) limit order is a buyer- (seller-)
initiated trade. Empty levels hold the dummy prices ``+9999999999`` (asks) and ``-9999999999``
(bids) with size 0.

``read_lobster`` takes a folder (holding the CSV pair, or else a single LOBSTER ``.zip``), a
message CSV (its order book beside it) or a LOBSTER zip (read in memory, never extracted). Any
level ``N >= 1``; a header line or none, LF or CRLF line ends and a missing final newline all read
the same.

A ``LobsterDay`` holds, for ``n`` events and ``N`` levels (the book is the one after each event):

* ``ticker``, ``date`` (``str``), ``start``, ``end`` (seconds after midnight), ``level`` (``N``);
* ``[n]`` message columns: ``times`` (float64 seconds after midnight, parsed exactly as float64
  parses the file's decimals), ``event_type``, ``order_id``, ``size`` (shares), ``direction``
  (+1 buy / -1 sell limit order), all int64; ``price`` (float64 dollars) and
  ``message_price_units`` (int64, dollars x 10000 as in the file);
* ``[n, N]`` book arrays, column ``j`` the level ``j + 1``: ``ask_prices``, ``bid_prices``
  (float64 dollars, NaN for an empty level), ``ask_sizes``, ``bid_sizes`` (int64 shares, 0 for an
  empty level), ``ask_price_units``, ``bid_price_units`` (int64 dollars x 10000, the empty-level
  dummies ``+-9999999999`` kept as in the file);
* the level-1 views ``ask``, ``bid``, ``ask_size``, ``bid_size`` (column 0 of the book arrays) and
  ``mid`` (NaN where a side is empty).

Dollars are ``units / 10000`` (the float64 nearest to the exact decimal price).

Errors, raised before any array arithmetic: ``FileNotFoundError`` (with the path) for a missing
folder, message, order book or zip; ``ValueError`` naming the file and, for content, the row
(1-based line number in the file, a header line counted) and what was expected, for a file name
that is not ``TICKER_YYYY-MM-DD_START_END_message_N.csv``, a zip without exactly one
message/order-book pair, a row with the wrong number of columns (6 in a message file, ``4 N`` in an
order book), a non-numeric field (times must be finite numbers, every other field an integer),
message and order book files with different numbers of rows, decreasing times, an unknown event
type, a direction not in {-1, 1}, an invalid book price or size, a level's prices out of order
(asks strictly increasing with level, bids strictly decreasing, empty levels only after the
non-empty ones) and a crossed book (best bid >= best ask with both sides non-empty).
"""

from __future__ import annotations

import dataclasses
import datetime
import re
import zipfile
from pathlib import Path

import numpy as np

__all__ = [
    "DUMMY_PRICE",
    "EVENT_TYPES",
    "EXECUTIONS",
    "PRICE_SCALE",
    "PRICE_UNITS_PER_DOLLAR",
    "LobsterDay",
    "MarketOrders",
    "find_files",
    "market_orders",
    "mid_path",
    "read_lobster",
]

PRICE_UNITS_PER_DOLLAR = 10_000  # LOBSTER prices are dollars x 10000
PRICE_SCALE = 1e-4  # dollars per LOBSTER price unit
DUMMY_PRICE = 9_999_999_999  # +DUMMY_PRICE: empty ask level, -DUMMY_PRICE: empty bid level
EXECUTIONS = (4, 5)
EVENT_TYPES = (1, 2, 3, 4, 5, 6, 7)
_NAME = re.compile(
    r"^(?P<ticker>.+)_(?P<date>\d{4}-\d{2}-\d{2})_(?P<start>\d+)_(?P<end>\d+)"
    r"_message_(?P<level>\d+)\.csv$"
)
_NAME_FORMAT = "TICKER_YYYY-MM-DD_START_END_message_LEVEL.csv"
_MESSAGE_COLUMNS = ("Time", "Type", "OrderID", "Size", "Price", "Direction")

# a file to read: a pathlib.Path or a member of a zip archive (zipfile.Path)
_File = Path | zipfile.Path


@dataclasses.dataclass(frozen=True)
class LobsterDay:
    """One LOBSTER message file and its order book: ``n`` events, ``level`` book levels.

    Attributes:
        ticker, date: from the file name.
        start, end: the requested window, seconds after midnight (from the file name).
        level: number of book levels ``N`` (from the file name, checked against the book).
        times: ``[n]`` float64 event time, seconds after midnight.
        event_type: ``[n]`` int64, 1-7 (see the module docstring).
        order_id, size: ``[n]`` int64 order reference and shares.
        price: ``[n]`` float64 event price, dollars (``-0.0001``, 0 or ``0.0001`` for halts).
        direction: ``[n]`` int64, +1 buy limit order, -1 sell limit order.
        message_price_units: ``[n]`` int64 event price, dollars x 10000, as in the file.
        ask_prices, bid_prices: ``[n, level]`` float64 book after the event, dollars (NaN where
            the level is empty); column ``j`` is level ``j + 1``.
        ask_sizes, bid_sizes: ``[n, level]`` int64 shares at each level (0 where empty).
        ask_price_units, bid_price_units: ``[n, level]`` int64 prices, dollars x 10000 as in the
            file (empty levels keep the dummies ``+DUMMY_PRICE`` / ``-DUMMY_PRICE``).

    ``ask``, ``bid``, ``ask_size``, ``bid_size`` are the level-1 columns and ``mid`` their mid.
    """

    ticker: str
    date: str
    start: float
    end: float
    level: int
    times: np.ndarray
    event_type: np.ndarray
    order_id: np.ndarray
    size: np.ndarray
    price: np.ndarray
    direction: np.ndarray
    message_price_units: np.ndarray
    ask_prices: np.ndarray
    ask_sizes: np.ndarray
    bid_prices: np.ndarray
    bid_sizes: np.ndarray
    ask_price_units: np.ndarray
    bid_price_units: np.ndarray

    @property
    def n_events(self) -> int:
        return int(self.times.size)

    @property
    def ask(self) -> np.ndarray:
        """Best ask after each event, dollars (NaN where the ask side is empty)."""
        return self.ask_prices[:, 0]

    @property
    def bid(self) -> np.ndarray:
        """Best bid after each event, dollars (NaN where the bid side is empty)."""
        return self.bid_prices[:, 0]

    @property
    def ask_size(self) -> np.ndarray:
        """Shares at the best ask after each event (0 where empty)."""
        return self.ask_sizes[:, 0]

    @property
    def bid_size(self) -> np.ndarray:
        """Shares at the best bid after each event (0 where empty)."""
        return self.bid_sizes[:, 0]

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


# ---------------------------------------------------------------------------------- files


def _label(file: _File) -> str:
    if isinstance(file, zipfile.Path):
        return f"{file.root.filename}:{file.at}"
    return str(file)


def _parse_name(file: _File) -> re.Match:
    name = _NAME.match(file.name)
    bad = name is None or int(name["level"]) < 1
    if not bad:
        try:
            datetime.date.fromisoformat(name["date"])
        except ValueError:
            bad = True
    if bad:
        raise ValueError(
            f"{_label(file)}: the file name {file.name!r} does not follow {_NAME_FORMAT} "
            "(LEVEL >= 1, a valid date)"
        )
    return name


def _book_name(message_name: str) -> str:
    head, _, level = message_name.rpartition("_message_")
    return f"{head}_orderbook_{level}"


def _zip_pair(path: Path) -> tuple[zipfile.Path, zipfile.Path]:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:
        raise ValueError(f"{path}: not a zip archive ({error})") from None
    members = [
        m
        for m in archive.namelist()
        if not m.endswith("/") and not m.startswith("__MACOSX/") and m.lower().endswith(".csv")
    ]
    base = {m: m.rsplit("/", 1)[-1] for m in members}
    messages = [m for m in members if "_message_" in base[m]]
    books = [m for m in members if "_orderbook_" in base[m]]
    pair_found = (
        len(messages) == 1
        and len(books) == 1
        and books[0].rsplit("/", 1)[-1] == _book_name(base[messages[0]])
    )
    if not pair_found:
        archive.close()
        found = ", ".join(messages + books) or "no CSV files"
        raise ValueError(
            f"{path}: expected exactly one LOBSTER message/orderbook pair "
            f"(*_message_N.csv and its *_orderbook_N.csv) in the zip, found {found}"
        )
    return zipfile.Path(archive, messages[0]), zipfile.Path(archive, books[0])


def find_files(path: str | Path) -> tuple[_File, _File]:
    """The ``(message, orderbook)`` files of a LOBSTER day.

    ``path`` is a folder (holding one ``*_message_*.csv`` and its order book, or else exactly one
    ``.zip``), a message CSV (its order book beside it) or a LOBSTER zip. CSV files come back as
    ``Path``; members of a zip as ``zipfile.Path`` (both have ``.name`` and ``.read_bytes()``).

    Raises ``FileNotFoundError`` (with the path) when something is missing and ``ValueError`` for a
    file name that does not follow ``TICKER_YYYY-MM-DD_START_END_message_LEVEL.csv`` or a zip
    without exactly one message/orderbook pair.
    """
    path = Path(path)
    if path.is_dir():
        messages = sorted(path.glob("*_message_*.csv"))
        if not messages:
            zips = sorted(path.glob("*.zip"))
            if len(zips) == 1:
                path = zips[0]
            else:
                found = ", ".join(z.name for z in zips) or "none"
                raise FileNotFoundError(
                    f"expected one LOBSTER *_message_*.csv file (or else one .zip) in {path}, "
                    f"found {found}"
                )
        elif len(messages) != 1:
            found = ", ".join(m.name for m in messages)
            raise FileNotFoundError(
                f"expected one LOBSTER *_message_*.csv file in {path}, found {found}"
            )
        else:
            path = messages[0]
    if not path.is_file():
        raise FileNotFoundError(f"no LOBSTER message file (or zip) at {path}")
    if path.suffix.lower() == ".zip":
        message, book = _zip_pair(path)
        _parse_name(message)
        return message, book
    _parse_name(path)
    book = path.with_name(_book_name(path.name))
    if not book.is_file():
        raise FileNotFoundError(f"no order book file {book.name} beside {path}")
    return path, book


# -------------------------------------------------------------------------------- parsing


def _lines(data: bytes) -> tuple[list[str], int]:
    """The data lines of a file and the number of header lines before them (0 or 1)."""
    text = data.decode("latin-1")
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    lines = text.split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    header = 0
    if lines:
        numeric = False
        for field in lines[0].split(","):
            try:
                float(field)
                numeric = True
                break
            except ValueError:
                pass
        header = 0 if numeric else 1
    return lines[header:], header


def _check_columns(label: str, lines: list[str], header: int, n_columns: int, what: str) -> None:
    counts = np.fromiter((line.count(",") for line in lines), np.int64, len(lines)) + 1
    bad = np.flatnonzero(counts != n_columns)
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{label}, row {i + 1 + header}: {counts[i]} columns; expected {n_columns} ({what})"
        )


def _diagnose(label: str, lines: list[str], header: int, names: list[str], floats: int) -> None:
    """Raise for the first field that is not a number (the first ``floats`` columns) or integer."""
    for i, line in enumerate(lines):
        for j, field in enumerate(line.split(",")):
            kind = float if j < floats else int
            try:
                kind(field)
            except ValueError:
                expected = "a number" if j < floats else "an integer"
                raise ValueError(
                    f"{label}, row {i + 1 + header}, column {j + 1} ({names[j]}): "
                    f"{field.strip()!r} is not numeric; expected {expected}"
                ) from None


def _parse(
    label: str, lines: list[str], header: int, names: list[str], floats: int
) -> tuple[np.ndarray | None, np.ndarray]:
    """``(float columns [n, floats] or None, integer columns [n, rest])``; raises on bad fields."""
    n_columns = len(names)
    try:
        real = None
        if floats:
            real = np.loadtxt(
                lines,
                delimiter=",",
                dtype=np.float64,
                usecols=range(floats),
                comments=None,
                ndmin=2,
            )
        integer = np.loadtxt(
            lines,
            delimiter=",",
            dtype=np.int64,
            usecols=range(floats, n_columns),
            comments=None,
            ndmin=2,
        )
    except (ValueError, OverflowError) as error:
        _diagnose(label, lines, header, names, floats)
        raise ValueError(f"{label}: cannot parse the file ({error})") from None
    if real is not None:
        bad = np.flatnonzero(~np.isfinite(real).all(axis=1))
        if bad.size:
            i = int(bad[0])
            j = int(np.flatnonzero(~np.isfinite(real[i]))[0])
            raise ValueError(
                f"{label}, row {i + 1 + header}, column {j + 1} ({names[j]}): {real[i, j]} is "
                "not a finite number; expected a finite number"
            )
    return real, integer


def _first(mask: np.ndarray) -> tuple[int, int] | None:
    """``(row, column)`` of the first True of a ``[n, k]`` mask in row order, or None."""
    rows = np.flatnonzero(mask.any(axis=1))
    if not rows.size:
        return None
    i = int(rows[0])
    return i, int(np.flatnonzero(mask[i])[0])


def _check_messages(label: str, header: int, times, ints) -> None:
    def fail(i: int, what: str) -> None:
        raise ValueError(f"{label}, row {i + 1 + header}: {what}")

    back = np.flatnonzero(np.diff(times) < 0)
    if back.size:
        i = int(back[0]) + 1
        fail(
            i,
            f"time {float(times[i])!r} is before the previous row's {float(times[i - 1])!r}; "
            "expected "
            "non-decreasing times",
        )
    event_type, direction = ints[:, 0], ints[:, 4]
    bad = np.flatnonzero(~np.isin(event_type, EVENT_TYPES))
    if bad.size:
        i = int(bad[0])
        expected = ", ".join(map(str, EVENT_TYPES))
        fail(i, f"unknown event type {event_type[i]}; expected one of {expected}")
    bad = np.flatnonzero((direction != 1) & (direction != -1))
    if bad.size:
        i = int(bad[0])
        fail(i, f"direction {direction[i]}; expected -1 (sell) or 1 (buy)")


def _check_book(label: str, header: int, ask, ask_size, bid, bid_size) -> None:
    def fail(at: tuple[int, int], what: str) -> None:
        raise ValueError(f"{label}, row {at[0] + 1 + header}, level {at[1] + 1}: {what}")

    ask_empty, bid_empty = ask == DUMMY_PRICE, bid == -DUMMY_PRICE
    for side, prices, empty, dummy in (
        ("ask", ask, ask_empty, DUMMY_PRICE),
        ("bid", bid, bid_empty, -DUMMY_PRICE),
    ):
        at = _first(~empty & ((prices <= 0) | (prices >= DUMMY_PRICE)))
        if at:
            fail(
                at,
                f"{side} price {prices[at]}; expected a positive price in dollars x 10000 below "
                f"{DUMMY_PRICE} or the empty-level dummy {dummy}",
            )
    for side, sizes, empty in (("ask", ask_size, ask_empty), ("bid", bid_size, bid_empty)):
        at = _first(empty & (sizes != 0))
        if at:
            fail(at, f"{side} size {sizes[at]} at an empty level; expected 0")
        at = _first(~empty & (sizes <= 0))
        if at:
            fail(at, f"{side} size {sizes[at]}; expected a positive size at a non-empty level")
    for side, prices, empty, order in (
        ("ask", ask, ask_empty, "increase"),
        ("bid", bid, bid_empty, "decrease"),
    ):
        gap = np.zeros_like(empty)
        gap[:, 1:] = empty[:, :-1] & ~empty[:, 1:]
        at = _first(gap)
        if at:
            fail(
                at,
                f"{side} level {at[1] + 1} is non-empty after an empty level {at[1]}; expected "
                "empty levels only after the non-empty ones",
            )
        step = np.diff(prices, axis=1) if order == "increase" else -np.diff(prices, axis=1)
        wrong = np.zeros_like(empty)
        wrong[:, 1:] = ~empty[:, 1:] & (step <= 0)
        at = _first(wrong)
        if at:
            i, j = at
            fail(
                at,
                f"{side} price {prices[i, j]} after {prices[i, j - 1]} at level {j}; expected "
                f"{side} prices to strictly {order} with level",
            )
    crossed = np.flatnonzero(~ask_empty[:, 0] & ~bid_empty[:, 0] & (bid[:, 0] >= ask[:, 0]))
    if crossed.size:
        i = int(crossed[0])
        raise ValueError(
            f"{label}, row {i + 1 + header}: crossed book, best bid {bid[i, 0]} >= best ask "
            f"{ask[i, 0]} (dollars x 10000); expected best bid < best ask"
        )


def read_lobster(path: str | Path) -> LobsterDay:
    """Read a LOBSTER day: ``path`` is its folder, its message CSV or its LOBSTER zip.

    Raises ``FileNotFoundError`` when files are missing and ``ValueError`` (naming the file and
    the 1-based line) for malformed contents; see the module docstring.
    """
    message_file, book_file = find_files(path)
    name = _parse_name(message_file)
    level = int(name["level"])
    message_label, book_label = _label(message_file), _label(book_file)

    message_data, book_data = message_file.read_bytes(), book_file.read_bytes()
    if isinstance(message_file, zipfile.Path):
        message_file.root.close()
    message_lines, message_header = _lines(message_data)
    book_lines, book_header = _lines(book_data)
    for label, lines in ((message_label, message_lines), (book_label, book_lines)):
        if not lines:
            raise ValueError(f"{label}: no data rows; expected at least one event")
    _check_columns(message_label, message_lines, message_header, 6, "a LOBSTER message file")
    _check_columns(
        book_label,
        book_lines,
        book_header,
        4 * level,
        f"4 x level {level} from the file name {message_file.name}",
    )
    if len(message_lines) != len(book_lines):
        raise ValueError(
            f"{message_label} has {len(message_lines)} rows but {book_label} has "
            f"{len(book_lines)}: expected the same number (one book per event)"
        )
    book_names = [
        f"{side} {what} {k}"
        for k in range(1, level + 1)
        for side, what in (("Ask", "price"), ("Ask", "size"), ("Bid", "price"), ("Bid", "size"))
    ]
    real, ints = _parse(message_label, message_lines, message_header, list(_MESSAGE_COLUMNS), 1)
    _, book = _parse(book_label, book_lines, book_header, book_names, 0)
    times = real[:, 0]
    _check_messages(message_label, message_header, times, ints)
    ask_units, ask_sizes = book[:, 0::4], book[:, 1::4]
    bid_units, bid_sizes = book[:, 2::4], book[:, 3::4]
    _check_book(book_label, book_header, ask_units, ask_sizes, bid_units, bid_sizes)

    def dollars(units: np.ndarray) -> np.ndarray:
        empty = np.abs(units) == DUMMY_PRICE
        return np.where(empty, np.nan, units / PRICE_UNITS_PER_DOLLAR)

    message_units = np.ascontiguousarray(ints[:, 3])
    return LobsterDay(
        ticker=name["ticker"],
        date=name["date"],
        start=int(name["start"]) / 1000.0,
        end=int(name["end"]) / 1000.0,
        level=level,
        times=np.ascontiguousarray(times),
        event_type=np.ascontiguousarray(ints[:, 0]),
        order_id=np.ascontiguousarray(ints[:, 1]),
        size=np.ascontiguousarray(ints[:, 2]),
        price=message_units / PRICE_UNITS_PER_DOLLAR,
        direction=np.ascontiguousarray(ints[:, 4]),
        message_price_units=message_units,
        ask_prices=dollars(ask_units),
        ask_sizes=np.ascontiguousarray(ask_sizes),
        bid_prices=dollars(bid_units),
        bid_sizes=np.ascontiguousarray(bid_sizes),
        ask_price_units=np.ascontiguousarray(ask_units),
        bid_price_units=np.ascontiguousarray(bid_units),
    )


# -------------------------------------------------------------------------- derived data


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
