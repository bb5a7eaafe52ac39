"""The replay engine (jaxmm.backtest): the reference rules on hand-built tapes, agreement with the
independent plain-Python oracle (tests/oracles/backtest.py) fill by fill on the real tapes,
conservation of PnL, sweeps equal to single runs (also sharded over devices), and clear errors.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmm as mm
from experiments.common import data_dir
from jaxmm import backtest, lobster
from tests.conftest import run_code, run_distributed
from tests.oracles import backtest as oracle
from tests.oracles import backtest_tapes

AMZN = data_dir() / "lobster-amzn-2012-06-21"
GOOG10 = data_dir() / "lobster-goog-2012-06-21-level10"
needs_data = pytest.mark.skipif(not AMZN.is_dir(), reason=f"LOBSTER data not found at {AMZN}")

ORACLE_KEYS = (
    "quote_size",
    "max_position",
    "requote",
    "requote_on_touch",
    "latency",
    "cancel_latency",
    "keep_unchanged",
    "queue",
    "queue_power",
    "partial",
    "tick",
    "maker_fee",
    "taker_fee",
    "marks",
    "markout_horizons",
)


@jax.tree_util.register_static
class Scripted:
    """Depths by the observation's step index (the hand-built tapes' scripted strategy)."""

    def __init__(self, depths):
        self.depths = np.asarray(depths, np.float64).reshape(-1, 2)

    def __call__(self, obs, params):
        table = jnp.asarray(self.depths)
        row = table[jnp.clip(obs.t, 0, table.shape[0] - 1)]
        return mm.Quotes(bid_depth=row[0], ask_depth=row[1])


def jax_strategy(spec):
    """Our policy for an oracle strategy spec ``(name, *args)``."""
    name, *args = spec
    if name == "symmetric":
        return mm.policies.symmetric(args[0])
    if name == "avellaneda_stoikov":
        gamma, k, sigma = args
        return mm.policies.avellaneda_stoikov(gamma, k=k, sigma=sigma)
    if name == "scripted":
        return Scripted(args[0])
    raise ValueError(name)


def oracle_strategy(spec):
    name, *args = spec
    return getattr(oracle, name)(*args)


def run_both(folder: Path, spec, start, end, session_T, n_steps, **kwargs):
    """Replay one folder's tape with our engine and with the oracle, same settings."""
    day = lobster.read_lobster(folder)
    tape = backtest.tape(day, start, end)
    config_kwargs = {k: v for k, v in kwargs.items() if k in ORACLE_KEYS}
    if "marks" in config_kwargs:
        config_kwargs["marks"] = tuple(config_kwargs["marks"])
    if "markout_horizons" in config_kwargs:
        config_kwargs["markout_horizons"] = tuple(config_kwargs["markout_horizons"])
    config = backtest.Config(log=True, **config_kwargs)
    params = backtest.market_params(tape, config).replace(T=float(session_T), n_steps=n_steps)
    ours = backtest.replay(tape, jax_strategy(spec), params, config)
    message, book = lobster.find_files(folder)
    theirs = oracle.replay(
        oracle.read_tape(message, book),
        oracle_strategy(spec),
        start=start,
        end=end,
        session_T=session_T,
        n_steps=n_steps,
        **kwargs,
    )
    return ours, theirs


def assert_same(ours: backtest.Result, theirs: dict, tol: float = 1e-9) -> None:
    """Fill by fill, and every total to ``tol`` dollars."""
    fills = theirs["fills"]
    log = ours.log
    assert log.size.size == len(fills), (log.size.size, len(fills))
    if fills:
        np.testing.assert_array_equal(log.row, [f["row"] for f in fills])
        np.testing.assert_array_equal(log.side, [f["side"] for f in fills])
        np.testing.assert_array_equal(
            np.round(log.price / backtest.UNIT).astype(np.int64), [f["price"] for f in fills]
        )
        np.testing.assert_array_equal(log.size, [f["size"] for f in fills])
        np.testing.assert_array_equal(log.ahead, [f["ahead"] for f in fills])
        np.testing.assert_array_equal(log.position, [f["position"] for f in fills])
    assert int(ours.position) == theirs["position"]
    assert round(float(ours.cash) / backtest.UNIT) == theirs["cash_units"]
    for name in ("pnl", "pnl_flat", "spread_pnl", "inventory_pnl", "fees"):
        assert float(getattr(ours, name)) == pytest.approx(theirs[name], abs=tol), name
    assert int(ours.n_bid_fills) == theirs["n_bid_fills"]
    assert int(ours.n_ask_fills) == theirs["n_ask_fills"]
    assert int(ours.bid_volume) == theirs["bid_volume"]
    assert int(ours.ask_volume) == theirs["ask_volume"]
    assert int(ours.n_decisions) == theirs["n_decisions"]
    horizons = sorted(theirs["markouts"])
    np.testing.assert_allclose(
        ours.markouts, [theirs["markouts"][h] for h in horizons], rtol=0, atol=tol
    )
    np.testing.assert_allclose(ours.marks, theirs["marks"], rtol=0, atol=tol)


def assert_conserved(result: backtest.Result) -> None:
    """``pnl = spread + inventory - fees`` (integer-exact parts; float64 dollars)."""
    total = float(result.spread_pnl + result.inventory_pnl - result.fees)
    assert float(result.pnl) == pytest.approx(total, abs=1e-9)


# ------------------------------------------------------------------------ hand-built tapes


@pytest.mark.parametrize("case", backtest_tapes.CASES, ids=lambda c: c.name)
def test_hand_built_tape(case, tmp_path):
    """Each reference rule on its tiny tape: our engine gives the hand-worked result, and the
    oracle's result fill by fill."""
    case.write(tmp_path)
    kwargs = dict(case.kwargs)
    start, end = kwargs.pop("start"), kwargs.pop("end")
    session_T, n_steps = kwargs.pop("session_T"), kwargs.pop("n_steps")
    ours, theirs = run_both(tmp_path, case.strategy, start, end, session_T, n_steps, **kwargs)
    assert_same(ours, theirs, tol=1e-12)
    expected = case.expected
    if "fills" in expected:
        got = [
            (float(t), int(s), round(float(p) / backtest.UNIT), int(x))
            for t, s, p, x in zip(
                ours.log.time, ours.log.side, ours.log.price, ours.log.size, strict=True
            )
        ]
        want = [(float(f["time"]), f["side"], f["price"], f["size"]) for f in expected["fills"]]
        assert got == want
    for name in ("position", "cash_units"):
        if name in expected:
            value = (
                int(ours.position)
                if name == "position"
                else round(float(ours.cash) / backtest.UNIT)
            )
            assert value == expected[name], name
    for name in ("pnl", "pnl_flat", "fees"):
        if name in expected:
            assert float(getattr(ours, name)) == pytest.approx(expected[name], abs=1e-12), name
    assert_conserved(ours)


# ----------------------------------------------------------------------- the real tapes


@needs_data
@pytest.mark.parametrize(
    "spec, kwargs",
    [
        (("avellaneda_stoikov", 0.01, 27.0, 0.02), {}),
        (("symmetric", 0.015), {"queue": "probabilistic"}),
        (("avellaneda_stoikov", 0.05, 27.0, 0.02), {"partial": True, "max_position": 500}),
        (
            ("symmetric", 0.0),
            {"latency": 0.05, "cancel_latency": 0.02, "maker_fee": -0.002, "taker_fee": 0.003},
        ),
        (("symmetric", 0.005), {"requote_on_touch": True, "latency": 0.01, "keep_unchanged": True}),
    ],
    ids=["as-conservative", "sym-probabilistic", "as-partial-limits", "latency-fees", "touch"],
)
def test_agrees_with_the_oracle_on_amzn(spec, kwargs):
    """Two hours of the real AMZN tape (about 17,000 events), several strategies and both
    queue models: every fill, the position, cash and PnL to 1e-9 dollars."""
    marks = (36000.0, 39000.0)
    ours, theirs = run_both(AMZN, spec, 34200.0, 41400.0, 7200.0, 7200, marks=marks, **kwargs)
    assert len(theirs["fills"]) > 20
    assert_same(ours, theirs)
    assert_conserved(ours)


@pytest.mark.skipif(not GOOG10.is_dir(), reason="level-10 GOOG tape not found")
@pytest.mark.parametrize("queue", ["conservative", "probabilistic"])
def test_agrees_with_the_oracle_on_level_10(queue):
    """At level 10 our price is visible deeper in the book (the join and the cap use it)."""
    spec = ("symmetric", 0.12)
    ours, theirs = run_both(GOOG10, spec, 34200.0, 37800.0, 3600.0, 3600, queue=queue)
    assert len(theirs["fills"]) > 5
    assert_same(ours, theirs)


@needs_data
def test_sweep_equals_single_runs_and_conserves_pnl():
    day = lobster.read_lobster(AMZN)
    tape = backtest.tape(day, "09:30", "10:30")
    config = backtest.Config(marks=("10:00",))
    params = backtest.market_params(tape, config, sigma=0.02, A=0.2, k=27.0)
    gammas = np.array([0.0, 0.003, 0.03, 0.3])
    batch = mm.policies.AvellanedaStoikov(gamma=gammas, k=np.full(4, 27.0), sigma=np.full(4, 0.02))
    swept = backtest.sweep(tape, batch, params, config)
    assert swept.pnl.shape == (4,) and swept.marks.shape == (4, 1)
    for i, gamma in enumerate(gammas):
        policy = mm.policies.avellaneda_stoikov(gamma, 27.0, 0.02)
        one = backtest.replay(tape, policy, params, config)
        for name in ("pnl", "pnl_flat", "position", "n_bid_fills", "n_ask_fills", "marks"):
            np.testing.assert_array_equal(np.asarray(getattr(swept, name))[i], getattr(one, name))
        assert_conserved(one)
    assert len(set(swept.pnl.tolist())) == 4  # the settings really differ


@needs_data
def test_sharded_sweep_equals_the_single_device_sweep():
    """The strategy axis split over 2 host devices (5 strategies: padded) gives the same
    numbers as one device."""
    code = f"""
import json, numpy as np, jax
import jaxmm as mm
from jaxmm import backtest, lobster
assert len(jax.devices()) == 2
tape = backtest.tape(lobster.read_lobster({str(AMZN)!r}), "09:30", "10:00")
config = backtest.Config()
params = backtest.market_params(tape, config, sigma=0.02, A=0.2, k=27.0)
batch = mm.policies.AvellanedaStoikov(
    gamma=np.geomspace(1e-3, 1, 5), k=np.full(5, 27.0), sigma=np.full(5, 0.02))
one = backtest.sweep(tape, batch, params, config)
two = backtest.sweep(tape, batch, params, config, devices=jax.devices())
print(json.dumps({{"one": one.pnl.tolist(), "two": two.pnl.tolist(),
                  "fills": [one.n_bid_fills.tolist(), two.n_bid_fills.tolist()]}}))
"""
    out = run_code(code, env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["one"] == got["two"] and got["fills"][0] == got["fills"][1]
    assert len(got["one"]) == 5


@needs_data
def test_solver_tables_and_trained_agents_run_on_the_tape(tmp_path):
    """A Bellman table and a PPO checkpoint (via train.load_policy) are policies like any."""
    from train import checkpoint
    from train.config import PPOConfig
    from train.ppo import agent_spec, market_env

    day = lobster.read_lobster(AMZN)
    tape = backtest.tape(day, "12:45", "13:05")
    config = backtest.Config()
    params = backtest.market_params(
        tape, config, sigma=0.02, A=0.2, k=27.0, q_max=5, fill_model="exponential"
    )
    solution = mm.optimal.bellman(params, 1e-4, reward="variance", depth_bounds=(-0.05, 0.2))
    table = backtest.replay(tape, mm.policies.table(solution), params, config)
    assert int(table.n_bid_fills + table.n_ask_fills) > 0
    assert abs(int(table.position)) <= 5 * config.quote_size
    assert_conserved(table)

    ppo = PPOConfig(num_seeds=1, hidden_sizes=(8, 8))
    env, env_params = market_env(ppo)
    spec = agent_spec(ppo, env, env_params)
    agents = jax.vmap(spec.init)(jax.random.split(jax.random.key(0), 1))
    checkpoint.save(tmp_path, ppo, agents.params, agents.obs_norm, selected_seed=0)
    agent = backtest.replay(tape, checkpoint.load_policy(tmp_path), params, config)
    assert int(agent.n_decisions) == 1200 and math.isfinite(float(agent.pnl))
    assert_conserved(agent)


# ------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"quote_size": 0}, "quote_size"),
        ({"requote": 0.01, "latency": 0.05}, "requote"),
        ({"latency": 0.01, "cancel_latency": 0.02}, "cancel_latency"),
        ({"queue": "fifo"}, "queue"),
        ({"tick": 0.00015}, "tick"),
        ({"latency": -1.0}, "latency"),
        ({"maker_fee": float("nan")}, "maker_fee"),
    ],
)
def test_bad_config_is_refused_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        backtest.Config(**kwargs)


def test_bad_windows_and_times_are_refused(tmp_path):
    backtest_tapes.CASES[0].write(tmp_path)
    day = lobster.read_lobster(tmp_path)
    with pytest.raises(ValueError, match="end"):
        backtest.tape(day, "10:00", "09:59")
    with pytest.raises(ValueError, match="HH:MM"):
        backtest.tape(day, "ten o'clock")
    tape = backtest.tape(day)
    with pytest.raises(ValueError, match="marks"):
        backtest.replay(tape, mm.policies.symmetric(0.01), config=backtest.Config(marks=(1.0,)))
    with pytest.raises(ValueError, match="leading"):
        backtest.sweep(tape, mm.policies.symmetric(0.01))
    with pytest.raises(ValueError, match="log"):
        backtest.sweep(tape, mm.policies.Symmetric(np.ones(2)), config=backtest.Config(log=True))
    assert backtest.parse_time("12:45") == 45900.0 and backtest.parse_time(3.5) == 3.5


def test_a_policy_sending_market_orders_is_refused(tmp_path):
    backtest_tapes.CASES[0].write(tmp_path)
    tape = backtest.tape(lobster.read_lobster(tmp_path))
    symmetric = mm.policies.symmetric(0.01)

    def with_market_order(obs, params):
        return symmetric(obs, params).replace(market_order=jnp.zeros((), jnp.float64))

    with pytest.raises(ValueError, match="market_order"):
        backtest.replay(tape, with_market_order)


MULTI_PROCESS_SWEEP = r"""
import json, sys
import jax

jax.distributed.initialize(
    coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2])
)
import numpy as np
import jaxmm as mm
from jaxmm import backtest, lobster

assert jax.process_count() == 2 and len(jax.devices()) == 4
tape = backtest.tape(lobster.read_lobster(sys.argv[3]), "09:30", "10:00")
config = backtest.Config()
params = backtest.market_params(tape, config, sigma=0.02, A=0.2, k=27.0)
batch = mm.policies.AvellanedaStoikov(
    gamma=np.geomspace(1e-3, 1, 7), k=np.full(7, 27.0), sigma=np.full(7, 0.02))
result = backtest.sweep(tape, batch, params, config, devices=jax.devices())
if jax.process_index() == 0:
    print(json.dumps({"pnl": result.pnl.tolist(), "fills": result.n_ask_fills.tolist()}))
"""


@needs_data
@pytest.mark.slow
def test_sweep_over_two_processes_with_jax_distributed_equals_one_process():
    """The strategy axis over 2 processes x 2 CPU devices (jax.distributed on this machine):
    7 strategies, padded to 8, the same numbers as one process on one device."""
    got = json.loads(run_distributed(MULTI_PROCESS_SWEEP, str(AMZN)).strip().splitlines()[-1])
    tape = backtest.tape(lobster.read_lobster(AMZN), "09:30", "10:00")
    config = backtest.Config()
    params = backtest.market_params(tape, config, sigma=0.02, A=0.2, k=27.0)
    batch = mm.policies.AvellanedaStoikov(
        gamma=np.geomspace(1e-3, 1, 7), k=np.full(7, 27.0), sigma=np.full(7, 0.02)
    )
    single = backtest.sweep(tape, batch, params, config)
    assert got["pnl"] == single.pnl.tolist() and got["fills"] == single.n_ask_fills.tolist()


def test_config_takes_lists_and_stays_hashable():
    """A Config is a static argument of the compiled replay: lists become tuples."""
    config = backtest.Config(marks=["10:00", 36000.0], markout_horizons=[1, 5])
    assert config.marks == ("10:00", 36000.0) and config.markout_horizons == (1, 5)
    assert hash(config) == hash(backtest.Config(marks=("10:00", 36000.0), markout_horizons=(1, 5)))
