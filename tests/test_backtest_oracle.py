"""Tests of the independent replay oracle (``tests/oracles/backtest.py``) against hand-worked
LOBSTER tapes (``tests/oracles/backtest_tapes.py``) and on a slice of the real AMZN day."""

from __future__ import annotations

import math

import pytest

from experiments.common import data_dir
from tests.oracles import backtest as bt
from tests.oracles.backtest_tapes import CASES, make_strategy

DATA_DIR = data_dir()
AMZN = DATA_DIR / "lobster-amzn-2012-06-21"
AMZN_STEM = "AMZN_2012-06-21_34200000_57600000_{}_1.csv"

FLOAT_TOL = 1e-12


def _run(case, folder):
    msg, ob = case.write(folder)
    tape = bt.read_tape(msg, ob)
    return bt.replay(tape, make_strategy(case.strategy), **case.kwargs)


def _check_conservation(r):
    mid = r["mid"] if r["mid"] is not None else 0.0
    assert math.isclose(
        r["pnl"], r["spread_pnl"] + r["inventory_pnl"] - r["fees"], rel_tol=0, abs_tol=1e-9
    )
    assert math.isclose(
        r["pnl"], r["cash_units"] / 10000 + r["position"] * mid - r["fees"], rel_tol=0, abs_tol=1e-9
    )


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hand_case(case, tmp_path):
    r = _run(case, tmp_path)
    exp = case.expected
    for key, want in exp.items():
        if key == "fills":
            got = [{k: f[k] for k in want[0]} if want else f for f in r["fills"]]
            assert len(r["fills"]) == len(want), (r["fills"], want)
            for g, w in zip(got, want, strict=True):
                for k, v in w.items():
                    if isinstance(v, float):
                        assert math.isclose(g[k], v, rel_tol=0, abs_tol=FLOAT_TOL), (k, g, w)
                    else:
                        assert g[k] == v, (k, g, w)
                        assert type(g[k]) is type(v), (k, g, w)
        elif key == "decision_times":
            assert [d["time"] for d in r["decisions"]] == pytest.approx(want, abs=FLOAT_TOL)
        elif key == "markouts":
            assert set(r["markouts"]) == set(want)
            for h, v in want.items():
                assert math.isclose(r["markouts"][h], v, rel_tol=0, abs_tol=FLOAT_TOL), h
        elif key == "marks":
            assert len(r["marks"]) == len(want)
            for g, v in zip(r["marks"], want, strict=True):
                assert math.isclose(g, v, rel_tol=0, abs_tol=FLOAT_TOL)
        elif isinstance(want, float):
            assert math.isclose(r[key], want, rel_tol=0, abs_tol=FLOAT_TOL), (key, r[key], want)
        else:
            assert r[key] == want, (key, r[key], want)
            assert type(r[key]) is type(want), key
    # counts are always consistent with the fill log
    assert r["n_bid_fills"] == sum(f["side"] == 1 for f in r["fills"])
    assert r["n_ask_fills"] == sum(f["side"] == -1 for f in r["fills"])
    assert r["position"] == r["bid_volume"] - r["ask_volume"]
    _check_conservation(r)


def test_header_and_crlf_read_identically(tmp_path):
    for case in CASES:
        msg, ob = case.write(tmp_path / case.name / "plain")
        other = tmp_path / case.name / "crlf"
        other.mkdir()
        n_cols = 4 * case.levels
        for src, header in ((msg, "time,type,order_id,size,price,direction"), (ob, None)):
            if header is None:
                header = ",".join(f"col{j}" for j in range(n_cols))
            lines = src.read_text().splitlines()
            (other / src.name).write_bytes(("\r\n".join([header, *lines]) + "\r\n").encode())
        a = bt.read_tape(msg, ob)
        b = bt.read_tape(other / msg.name, other / ob.name)
        assert a == b
        strat = make_strategy(case.strategy)
        ra = bt.replay(a, strat, **case.kwargs)
        rb = bt.replay(b, make_strategy(case.strategy), **case.kwargs)
        assert ra == rb


def test_conservation_on_hand_cases(tmp_path):
    for case in CASES:
        _check_conservation(_run(case, tmp_path / case.name))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"requote": 0.5, "latency": 0.5}, "requote"),
        ({"latency": 0.2, "cancel_latency": 0.3}, "cancel_latency"),
        ({"latency": -0.1}, "latency"),
        ({"queue": "fifo"}, "queue"),
        ({"end": 34200.0}, "end"),
        ({"marks": (34300.0,)}, "mark"),
        ({"n_steps": 0}, "n_steps"),
        ({"quote_size": 0}, "quote_size"),
    ],
)
def test_invalid_inputs(tmp_path, kwargs, message):
    case = CASES[0]
    msg, ob = case.write(tmp_path)
    tape = bt.read_tape(msg, ob)
    with pytest.raises(ValueError, match=message):
        bt.replay(tape, make_strategy(case.strategy), **{**case.kwargs, **kwargs})


def test_no_mid_means_no_quotes(tmp_path):
    """An empty book before the window: no mid, nothing quoted, the strategy is not called."""
    msg = tmp_path / "m.csv"
    ob = tmp_path / "o.csv"
    msg.write_text("34201.0,1,1,100,100000,1\n")
    ob.write_text("9999999999,0,100000,100\n")  # one-sided: still no mid

    def strategy(obs):
        raise AssertionError("called without a mid")

    r = bt.replay(
        bt.read_tape(msg, ob), strategy, start=34200.0, end=34203.0, session_T=3.0, n_steps=3
    )
    assert r["n_decisions"] == 3 and r["fills"] == [] and r["pnl"] == 0.0 and r["mid"] is None


@pytest.mark.skipif(not AMZN.is_dir(), reason=f"no LOBSTER data at {AMZN}")
def test_real_amzn_slice(tmp_path):
    n = 5000
    for kind in ("message", "orderbook"):
        with open(AMZN / AMZN_STEM.format(kind)) as src:
            lines = [next(src) for _ in range(n)]
        (tmp_path / AMZN_STEM.format(kind)).write_text("".join(lines))
    tape = bt.read_tape(
        tmp_path / AMZN_STEM.format("message"), tmp_path / AMZN_STEM.format("orderbook")
    )
    assert len(tape) == n
    end = tape.time[-1]
    for kw in ({}, {"queue": "probabilistic"}, {"partial": True, "latency": 0.05}):
        r = bt.replay(
            tape,
            bt.avellaneda_stoikov(0.01, 27.0, 0.02),
            start=34200.0,
            end=end,
            session_T=end - 34200.0,
            n_steps=round(end - 34200.0),
            **kw,
        )
        assert r["n_events"] == n
        assert r["n_bid_fills"] > 0 and r["n_ask_fills"] > 0
        _check_conservation(r)
        assert r["position"] == sum(f["side"] * f["size"] for f in r["fills"])
        assert r["cash_units"] == -sum(f["side"] * f["size"] * f["price"] for f in r["fills"])
        assert all(f["ahead"] >= 0 and 0 < f["size"] <= 100 for f in r["fills"])
