"""The LOBSTER reader: every error kind on small corrupted files (naming the file and the row),
header/CRLF/final-newline variants read identically, zips read like their CSVs, and the four
sample days against the facts in their SOURCE.txt."""

from __future__ import annotations

import dataclasses
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

from experiments.calibration import default_data_dir
from jaxmm import lobster

D = lobster.DUMMY_PRICE
STEM = "TEST_2020-01-02_34200000_57600000"


def data_root() -> Path:
    """The folder holding the sample days: the parent of ``$JAXMM_LOBSTER_DIR`` (the AMZN day,
    as in tests/test_calibrate.py), else ``../shared/data`` beside the repository."""
    return default_data_dir().parent


DAYS = {
    "AMZN": "lobster-amzn-2012-06-21",
    "AAPL": "lobster-aapl-2012-06-21",
    "GOOG": "lobster-goog-2012-06-21",
    "GOOG10": "lobster-goog-2012-06-21-level10",
}


def day_dir(key: str) -> Path:
    folder = data_root() / DAYS[key]
    if not folder.is_dir():
        pytest.skip(f"LOBSTER sample not found at {folder} (set JAXMM_LOBSTER_DIR)")
    return folder


_CACHE: dict[str, lobster.LobsterDay] = {}


def sample(key: str) -> lobster.LobsterDay:
    if key not in _CACHE:
        _CACHE[key] = lobster.read_lobster(day_dir(key))
    return _CACHE[key]


def assert_same_day(a: lobster.LobsterDay, b: lobster.LobsterDay) -> None:
    for field in dataclasses.fields(lobster.LobsterDay):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape, field.name
            np.testing.assert_array_equal(x, y, err_msg=field.name)  # NaN == NaN here
        else:
            assert x == y, field.name


# ----------------------------------------------------------------------- a small level-2 day


def messages() -> list[list[str]]:
    rows = [
        ("34200.000000001", 1, 1, 100, 1000100, -1),  # sell limit 100.01
        ("34200.5", 1, 2, 50, 999900, 1),  # buy limit 99.99
        ("34201.25", 1, 3, 10, 1000300, -1),  # sell limit 100.03 (level 2)
        ("34201.25", 4, 1, 100, 1000100, -1),  # buy order takes 100.01
        ("34202", 3, 2, 50, 999900, 1),  # bid side empties
        ("34203.123456789", 7, 0, 0, -1, -1),  # trading halt
    ]
    return [[str(v) for v in row] for row in rows]


def books() -> list[list[str]]:
    rows = [
        (1000100, 100, -D, 0, D, 0, -D, 0),
        (1000100, 100, 999900, 50, D, 0, -D, 0),
        (1000100, 100, 999900, 50, 1000300, 10, -D, 0),
        (1000300, 10, 999900, 50, D, 0, -D, 0),
        (1000300, 10, -D, 0, D, 0, -D, 0),
        (1000300, 10, -D, 0, D, 0, -D, 0),
    ]
    return [[str(v) for v in row] for row in rows]


def text(rows, header=None, newline="\n", final=True) -> bytes:
    lines = ([header] if header else []) + [",".join(r) for r in rows]
    return (newline.join(lines) + (newline if final else "")).encode()


def write_day(folder: Path, msgs=None, book=None, stem=STEM, level=2, **style) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    message = folder / f"{stem}_message_{level}.csv"
    orderbook = folder / f"{stem}_orderbook_{level}.csv"
    header = style.pop("header", False)
    message.write_bytes(
        text(messages() if msgs is None else msgs, header and ",".join(MESSAGE_HEADER), **style)
    )
    book_header = ",".join(f"c{k}" for k in range(4 * level))
    orderbook.write_bytes(text(books() if book is None else book, header and book_header, **style))
    return message, orderbook


MESSAGE_HEADER = ("Time", "Type", "OrderID", "Size", "Price", "Direction")


def test_the_small_day_reads_as_written(tmp_path):
    write_day(tmp_path)
    day = lobster.read_lobster(tmp_path)
    assert (day.ticker, day.date, day.start, day.end, day.level) == (
        "TEST",
        "2020-01-02",
        34200.0,
        57600.0,
        2,
    )
    assert day.n_events == 6 and day.ask_prices.shape == (6, 2)
    for name in ("event_type", "order_id", "size", "direction", "message_price_units"):
        assert getattr(day, name).dtype == np.int64 and getattr(day, name).shape == (6,)
    for name in ("ask_sizes", "bid_sizes", "ask_price_units", "bid_price_units"):
        assert getattr(day, name).dtype == np.int64 and getattr(day, name).shape == (6, 2)
    assert day.times.dtype == day.ask_prices.dtype == day.bid_prices.dtype == np.float64
    assert day.times[0] == float("34200.000000001") and day.times[-1] == float("34203.123456789")
    np.testing.assert_array_equal(day.message_price_units, [1000100, 999900, 1000300, 1000100,
                                                            999900, -1])  # fmt: skip
    np.testing.assert_array_equal(day.price, day.message_price_units / 10000)
    np.testing.assert_array_equal(day.ask_price_units[:, 1], [D, D, 1000300, D, D, D])
    np.testing.assert_array_equal(day.bid_price_units[:, 1], [-D] * 6)
    np.testing.assert_array_equal(day.ask_prices[:, 1], [np.nan, np.nan, 100.03] + [np.nan] * 3)
    np.testing.assert_array_equal(day.bid, [np.nan, 99.99, 99.99, 99.99, np.nan, np.nan])
    np.testing.assert_array_equal(day.ask_sizes, [[100, 0], [100, 0], [100, 10]] + [[10, 0]] * 3)
    # the level-1 fields are the first columns of the book arrays
    np.testing.assert_array_equal(day.ask, day.ask_prices[:, 0])
    np.testing.assert_array_equal(day.bid_size, day.bid_sizes[:, 0])
    np.testing.assert_allclose(day.mid, [np.nan, 100.0, 100.0, 100.01, np.nan, np.nan], atol=1e-12)
    orders = lobster.market_orders(day)
    np.testing.assert_array_equal(orders.side, [1])
    np.testing.assert_array_equal(orders.price, [100.01])
    times, _ = lobster.mid_path(day)
    np.testing.assert_array_equal(times, [34200.5, 34201.25, 34201.25])


@pytest.mark.parametrize(
    "style",
    [
        dict(header=True),
        dict(newline="\r\n"),
        dict(final=False),
        dict(header=True, newline="\r\n", final=False),
    ],
)
def test_header_crlf_and_final_newline_read_identically(tmp_path, style):
    write_day(tmp_path / "plain")
    write_day(tmp_path / "styled", **style)
    assert_same_day(
        lobster.read_lobster(tmp_path / "plain"), lobster.read_lobster(tmp_path / "styled")
    )


def test_a_zip_and_a_folder_holding_only_a_zip(tmp_path):
    message, book = write_day(tmp_path / "csv")
    archive = tmp_path / "only-zip" / "LOBSTER_SampleFile_TEST_2020-01-02_2.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(book, f"inner/{book.name}")
        z.write(message, f"inner/{message.name}")
        z.writestr("README.txt", "not data")
    plain = lobster.read_lobster(tmp_path / "csv")
    assert_same_day(plain, lobster.read_lobster(archive))
    assert_same_day(plain, lobster.read_lobster(archive.parent))
    found = lobster.find_files(archive.parent)
    assert [f.name for f in found] == [message.name, book.name]


# -------------------------------------------------------------------------------- errors


def corrupt(rows, row, column, value):
    rows[row][column] = value
    return rows


def drop_field(rows, row):
    rows[row] = rows[row][:-1]
    return rows


# (which file is named, message rows, book rows, header?, row named, words in the message)
# fmt: off
ERRORS = {
    "columns in a message row": ("message", drop_field(messages(), 2), None, False, 3,
                                 "5 columns; expected 6"),
    "columns in a book row": ("orderbook", None, drop_field(books(), 4), False, 5,
                              "7 columns; expected 8"),
    "a blank line": ("message", [*messages()[:2], [""], *messages()[2:]], None, False, 3,
                     "1 columns; expected 6"),
    "non-numeric message field": ("message", corrupt(messages(), 1, 3, "5O"), None, False, 2,
                                  "column 4 (Size): '5O' is not numeric; expected an integer"),
    "non-numeric time": ("message", corrupt(messages(), 3, 0, "34201.2.5"), None, False, 4,
                         "column 1 (Time): '34201.2.5' is not numeric; expected a number"),
    "non-finite time": ("message", corrupt(messages(), 3, 0, "nan"), None, False, 4,
                        "not a finite number"),
    "non-integer field": ("message", corrupt(messages(), 0, 4, "1000100.5"), None, False, 1,
                          "expected an integer"),
    "non-numeric book field": ("orderbook", None, corrupt(books(), 2, 5, "ten"), False, 3,
                               "column 6 (Ask size 2): 'ten' is not numeric"),
    "header rows are counted": ("message", corrupt(messages(), 1, 3, "x"), None, True, 3,
                                "is not numeric"),
    "decreasing times": ("message", corrupt(messages(), 4, 0, "34201.2"), None, False, 5,
                         "time 34201.2 is before the previous row's 34201.25"),
    "unknown event type": ("message", corrupt(messages(), 2, 1, "8"), None, False, 3,
                           "unknown event type 8; expected one of 1, 2, 3, 4, 5, 6, 7"),
    "direction": ("message", corrupt(messages(), 5, 5, "0"), None, False, 6,
                  "direction 0; expected -1 (sell) or 1 (buy)"),
    "crossed book": ("orderbook", None, corrupt(books(), 1, 2, "1000100"), False, 2,
                     "crossed book, best bid 1000100 >= best ask 1000100"),
    "asks out of order": ("orderbook", None, corrupt(books(), 2, 4, "1000000"), False, 3,
                          "level 2: ask price 1000000 after 1000100 at level 1; expected ask "
                          "prices to strictly increase"),
    "bids out of order": ("orderbook", None, corrupt(corrupt(books(), 1, 6, "999900"), 1, 7,
                                                     "5"), False, 2,
                          "bid price 999900 after 999900 at level 1; expected bid prices to "
                          "strictly decrease"),
    "a level after an empty one": ("orderbook", None, corrupt(corrupt(books(), 0, 6, "999000"),
                                                              0, 7, "5"), False, 1,
                                   "bid level 2 is non-empty after an empty level 1"),
    "a size at an empty level": ("orderbook", None, corrupt(books(), 0, 3, "7"), False, 1,
                                 "bid size 7 at an empty level; expected 0"),
    "a wrong-side dummy": ("orderbook", None, corrupt(books(), 3, 0, str(-D)), False, 4,
                           "ask price -9999999999"),
}
# fmt: on


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_name_the_file_and_the_row(tmp_path, case):
    which, msgs, book, header, row, words = ERRORS[case]
    message, orderbook = write_day(tmp_path, msgs, book, header=header)
    named = message if which == "message" else orderbook
    with pytest.raises(ValueError) as error:
        lobster.read_lobster(tmp_path)
    text = str(error.value)
    assert str(named) in text, text
    assert re.search(rf"\brow {row}\b", text), text
    assert words in text, text


def test_row_counts_differ(tmp_path):
    message, orderbook = write_day(tmp_path, book=books()[:-1])
    with pytest.raises(ValueError) as error:
        lobster.read_lobster(message)
    text = str(error.value)
    assert f"{message} has 6 rows but {orderbook} has 5" in text, text


def test_the_level_comes_from_the_file_name(tmp_path):
    # a level-1 book under a level-2 name
    _, orderbook = write_day(tmp_path, book=[r[:4] for r in books()])
    with pytest.raises(ValueError, match=r"row 1: 4 columns; expected 8 \(4 x level 2") as error:
        lobster.read_lobster(tmp_path)
    assert str(orderbook) in str(error.value)


@pytest.mark.parametrize(
    "stem, level",
    [("TEST_20200102_34200000_57600000", 2), ("TEST_2020-13-02_34200000_57600000", 2),
     ("TEST_2020-01-02_34200000_message", 2), (STEM, 0)],
)  # fmt: skip
def test_file_names_must_follow_the_lobster_pattern(tmp_path, stem, level):
    message, _ = write_day(tmp_path, stem=stem, level=level)
    with pytest.raises(
        ValueError, match=r"TICKER_YYYY-MM-DD_START_END_message_LEVEL\.csv"
    ) as error:
        lobster.read_lobster(message)
    assert message.name in str(error.value)


def test_a_zip_needs_exactly_one_pair(tmp_path):
    message, book = write_day(tmp_path / "csv")
    other, other_book = write_day(tmp_path / "csv2", stem="OTHER_2020-01-02_34200000_57600000")
    cases = {
        "none.zip": [],
        "two.zip": [message, book, other, other_book],
        "no-book.zip": [message],
        "no-message.zip": [book],
    }  # fmt: skip
    for name, files in cases.items():
        archive = tmp_path / name
        with zipfile.ZipFile(archive, "w") as z:
            z.writestr("README.txt", "x")
            for f in files:
                z.write(f, f.name)
        with pytest.raises(ValueError, match="expected exactly one LOBSTER message/orderbook"):
            lobster.read_lobster(archive)
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"bad\.zip: not a zip archive"):
        lobster.read_lobster(tmp_path / "bad.zip")


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        lobster.read_lobster(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path))):
        lobster.read_lobster(tmp_path)  # an empty folder
    message, book = write_day(tmp_path)
    book.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(book.name)):
        lobster.read_lobster(message)
    with pytest.raises(FileNotFoundError, match=r"nothing\.zip"):
        lobster.read_lobster(tmp_path / "nothing.zip")


# ---------------------------------------------------------------------------- the samples


def test_header_and_crlf_copy_of_amzn_equals_the_original(tmp_path):
    folder = day_dir("AMZN")
    n = 2_000
    original = sample("AMZN")
    (message,) = folder.glob("*_message_1.csv")
    book = message.with_name(message.name.replace("_message_", "_orderbook_"))
    rows = [line.split(",") for line in message.read_text().splitlines()[:n]]
    book_rows = [line.split(",") for line in book.read_text().splitlines()[:n]]
    stem = message.name.split("_message_")[0]
    write_day(tmp_path, rows, book_rows, stem=stem, level=1, header=True, newline="\r\n",
              final=False)  # fmt: skip
    copy = lobster.read_lobster(tmp_path)
    assert copy.n_events == n
    for field in dataclasses.fields(lobster.LobsterDay):
        value = getattr(original, field.name)
        expected = value[:n] if isinstance(value, np.ndarray) else value
        actual = getattr(copy, field.name)
        if isinstance(value, np.ndarray):
            assert actual.dtype == value.dtype
        np.testing.assert_array_equal(actual, expected, err_msg=field.name)
    # times are the float64 nearest to the file's decimals
    np.testing.assert_array_equal(copy.times, [float(r[0]) for r in rows])


@pytest.mark.parametrize("key", list(DAYS))
def test_a_zip_reads_like_its_csvs(key):
    (archive,) = day_dir(key).glob("LOBSTER_SampleFile_*.zip")
    assert_same_day(sample(key), lobster.read_lobster(archive))


def source_facts(folder: Path) -> dict:
    source = (folder / "SOURCE.txt").read_text()
    rows = re.search(r"(\d+) events \(message rows\) = (\d+) orderbook rows", source)
    line = re.search(r"Event types: (.*)", source)[1]
    types = {int(t): int(c) for t, c in re.findall(r"(\d) [a-z ]+ (\d+)", line)}
    spread = re.search(r"spread over event rows: median \$([\d.]+), minimum \$([\d.]+)", source)
    mid = re.search(r"Mid-price range: \$([\d.]+) - \$(\d+\.\d+)", source)
    span = re.search(r"Time span: ([\d.]+) - ([\d.]+) s", source)
    level = int(re.search(r"LEVEL (\d+)\.", source)[1])
    columns = int(re.search(r"orderbook file (\d+) columns", source)[1])
    return dict(
        rows=(int(rows[1]), int(rows[2])),
        types=types,
        span=span.groups(),
        level=level,
        columns=columns,
        spread=tuple(map(float, spread.groups())),
        mid=tuple(map(float, mid.groups())),
    )


@pytest.mark.parametrize("key", list(DAYS))
def test_the_samples_match_their_source_facts(key):
    facts = source_facts(day_dir(key))
    day = sample(key)
    n = facts["rows"][0]
    assert facts["rows"] == (n, n) and day.n_events == n
    assert len(facts["types"]) == 7  # types 1..7, 6 and 7 with count 0
    for event_type, count in facts["types"].items():
        assert (day.event_type == event_type).sum() == count, event_type
    assert day.level == facts["level"] and 4 * day.level == facts["columns"]
    for name in ("ask_prices", "bid_prices", "ask_sizes", "bid_sizes", "ask_price_units",
                 "bid_price_units"):  # fmt: skip
        assert getattr(day, name).shape == (n, day.level), name
    assert (day.times[0], day.times[-1]) == tuple(float(t) for t in facts["span"])
    assert np.all(np.diff(day.times) >= 0)
    assert np.all((day.start <= day.times) & (day.times <= day.end))
    # "no empty-level placeholder": every level holds a price and shares
    assert np.all(np.isfinite(day.ask_prices)) and np.all(np.isfinite(day.bid_prices))
    assert np.all(day.ask_sizes > 0) and np.all(day.bid_sizes > 0)
    # the book is never crossed and each side is ordered by level
    assert np.all(day.bid_price_units[:, 0] < day.ask_price_units[:, 0])
    assert np.all(np.diff(day.ask_price_units, axis=1) > 0)
    assert np.all(np.diff(day.bid_price_units, axis=1) < 0)
    # dollars are the units / 10000 and the tick is a cent
    np.testing.assert_array_equal(day.ask_prices, day.ask_price_units / 10000)
    np.testing.assert_array_equal(day.price, day.message_price_units / 10000)
    assert np.all(day.ask_price_units % 100 == 0) and np.all(day.bid_price_units % 100 == 0)
    np.testing.assert_array_equal(day.ask, day.ask_prices[:, 0])
    np.testing.assert_array_equal(day.bid_size, day.bid_sizes[:, 0])
    spread = day.ask_price_units[:, 0] - day.bid_price_units[:, 0]
    assert np.median(spread) / 10000 == pytest.approx(facts["spread"][0])
    assert spread.min() / 10000 == pytest.approx(facts["spread"][1])
    np.testing.assert_allclose([day.mid.min(), day.mid.max()], facts["mid"], rtol=0, atol=1e-9)


def test_goog_level_10_and_level_1_share_their_executions():
    deep, top = sample("GOOG10"), sample("GOOG")
    assert deep.level == 10 and top.level == 1 and deep.ask_prices.shape == (147_916, 10)
    # the level-10 file holds more events (those deeper in the book), but the same trades
    for day in (deep, top):
        assert np.isin(day.event_type, lobster.EXECUTIONS).sum() == 7_765 + 3_913
    executions = [np.isin(d.event_type, lobster.EXECUTIONS) for d in (deep, top)]
    np.testing.assert_array_equal(deep.times[executions[0]], top.times[executions[1]])
    np.testing.assert_array_equal(deep.price[executions[0]], top.price[executions[1]])
