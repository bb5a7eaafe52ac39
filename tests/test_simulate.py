"""Monte Carlo engine against an independent float64 NumPy oracle, identities and invariances."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmm as mm
from jaxmm import market
from tests.conftest import run_code
from tests.helpers import assert_paths_match_reference, replay_noise
from tests.oracles.simulator import simulate_reference

SCENARIOS = [
    (
        "homework A-S",
        {},
        mm.policies.avellaneda_stoikov(0.1),
        ("as", 0.1, 1.5, 2.0),
        {},
    ),
    (
        "everything on",
        {
            "q_max": 4.0,
            "mu": 0.7,
            "adverse_selection": 0.03,
            "vol_switch_step": 60,
            "vol_switch_factor": 2.0,
            "fill_model": "exponential",
        },
        mm.policies.avellaneda_stoikov(0.5, k=1.2, sigma=2.5),
        ("as", 0.5, 1.2, 2.5),
        {
            "q_max": 4.0,
            "mu": 0.7,
            "alpha": 0.03,
            "switch_step": 60,
            "switch_factor": 2.0,
            "fill_model": "exponential",
        },
    ),
    ("naive", {"A": 140.0}, mm.policies.symmetric(0.3), ("symmetric", 0.3), {}),
]


@pytest.mark.parametrize(("name", "changes", "policy", "ref_policy", "ref_kwargs"), SCENARIOS)
def test_float64_matches_numpy_oracle(name, changes, policy, ref_policy, ref_kwargs):
    n = 300
    with jax.enable_x64(True):
        p = mm.presets.homework().replace(**changes)
        key = jax.random.key(42)
        ro = mm.simulate(p, policy, key, n, paths=True)
        drawn = replay_noise(key, n, p)
        u_bid, u_ask, z = drawn["u_bid"], drawn["u_ask"], drawn["z"]
        assert ro.pnl.dtype == jnp.float64
    ref = simulate_reference(
        u_bid, u_ask, z, S0=100.0, sigma=2.0, T=1.0, A=p.A, k=1.5, policy=ref_policy, **ref_kwargs
    )
    assert_paths_match_reference(ro, ref)
    np.testing.assert_allclose(ro.max_drawdown, ref["max_drawdown"], atol=1e-9)
    # terminal PnL = cash + q_T S_T, computed the other way round by the oracle
    cash_view = ref["cash"] + ref["inventory"][:, -1] * ref["mid"][:, -1] - 0.0
    np.testing.assert_allclose(ro.pnl, cash_view, atol=1e-8)
    if "q_max" in changes:
        assert np.abs(ro.paths.inventory).max() <= changes["q_max"]


def test_float32_agrees_with_float64():
    p = mm.presets.homework()
    pol = mm.policies.avellaneda_stoikov(0.1)
    ro32 = mm.simulate(p, pol, jax.random.key(1), 2000)
    with jax.enable_x64(True):
        ro64 = mm.simulate(p, pol, jax.random.key(1), 2000)
        assert ro64.pnl.dtype == np.float64
    ro32, ro64 = (jax.tree.map(np.asarray, ro) for ro in (ro32, ro64))
    # identical uniforms: fills differ only where a probability sits within float32 rounding
    same = (ro32.n_bid_fills == ro64.n_bid_fills) & (ro32.n_ask_fills == ro64.n_ask_fills)
    assert same.mean() > 0.999
    np.testing.assert_allclose(ro32.pnl[same], ro64.pnl[same], atol=2e-3)


def test_pnl_identities_in_float32():
    p = mm.presets.homework()
    ro = mm.simulate(p, mm.policies.avellaneda_stoikov(0.1), jax.random.key(8), 500, paths=True)
    np.testing.assert_allclose(ro.pnl, ro.spread_pnl + ro.inventory_pnl, atol=1e-4)
    # recompute from the paths in float64: fills * depth + q_{t+1} dS
    paths = jax.tree.map(lambda x: np.asarray(x, np.float64), ro.paths)
    mid = paths.mid
    spread = (paths.bid_fill * (mid[:, :-1] - paths.bid)).sum(1) + (
        paths.ask_fill * (paths.ask - mid[:, :-1])
    ).sum(1)
    inventory = (paths.inventory[:, 1:] * np.diff(mid, axis=1)).sum(1)
    np.testing.assert_allclose(ro.spread_pnl, spread, atol=2e-3)
    np.testing.assert_allclose(ro.inventory_pnl, inventory, atol=2e-3)
    cash = (paths.ask_fill * paths.ask - paths.bid_fill * paths.bid).sum(1)
    np.testing.assert_allclose(ro.pnl, cash + paths.inventory[:, -1] * mid[:, -1] - 0, atol=2e-3)
    np.testing.assert_allclose(ro.sum_sq_inventory, (paths.inventory[:, 1:] ** 2).sum(1))
    np.testing.assert_allclose(ro.n_bid_fills, paths.bid_fill.sum(1))


def test_same_key_same_numbers_and_chunking_does_not_matter():
    p = mm.presets.homework()
    pol = mm.policies.avellaneda_stoikov(0.1)
    a = mm.simulate(p, pol, jax.random.key(3), 1000)
    b = mm.simulate(p, pol, jax.random.key(3), 1000)
    c = mm.simulate(p, pol, jax.random.key(3), 1000, chunk_size=333)
    d = mm.simulate(p, pol, jax.random.key(3), 10)  # a prefix of the same episodes
    jax.tree.map(np.testing.assert_array_equal, a, b)
    jax.tree.map(np.testing.assert_array_equal, a, c)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(x[:10], y), a, d)
    other = mm.simulate(p, pol, jax.random.key(4), 1000)
    assert not np.array_equal(a.pnl, other.pnl)


def test_common_random_numbers_across_policies():
    p = mm.presets.homework()
    a = mm.simulate(p, mm.policies.avellaneda_stoikov(0.1), jax.random.key(0), 50, paths=True)
    b = mm.simulate(p, mm.policies.symmetric(0.7), jax.random.key(0), 50, paths=True)
    np.testing.assert_array_equal(a.paths.mid, b.paths.mid)


def test_simulate_equals_a_manual_loop_of_market_steps():
    p = mm.presets.homework()
    pol = mm.policies.avellaneda_stoikov(0.1)
    ro = mm.simulate(p, pol, jax.random.key(7), 4)
    stream = market.stream_key(jax.random.key(7))
    for episode in range(4):
        state = market.reset(jax.random.key(0), p)
        for t in range(p.n_steps):
            noise = market.counter_noise(stream, episode, t)
            state, _ = market.step_with_noise(state, pol(state, p), noise, p)
        assert float(state.pnl) == pytest.approx(float(ro.pnl[episode]), abs=1e-4)
        assert float(state.inventory) == float(ro.inventory[episode])


@pytest.mark.parametrize("fill_model", ["linear", "exponential"])
def test_zero_volatility_symmetric_pnl_matches_exact_expectation(fill_model):
    h = 0.5
    p = mm.presets.homework().replace(sigma=0.0, fill_model=fill_model)
    n = 20_000
    ro = mm.simulate(p, mm.policies.symmetric(h), jax.random.key(5), n)
    lam_dt = p.A * math.exp(-p.k * h) * p.dt
    prob = min(1.0, lam_dt) if fill_model == "linear" else 1 - math.exp(-lam_dt)
    expected = p.n_steps * 2 * h * prob
    se = float(np.std(ro.pnl)) / math.sqrt(n)
    assert abs(float(np.mean(ro.pnl)) - expected) < 4 * se
    # with sigma = 0 all PnL is spread capture
    np.testing.assert_array_equal(ro.inventory_pnl, 0.0)


def test_rollout_vmaps_over_policy_parameters():
    p = mm.presets.homework()
    stream = market.stream_key(jax.random.key(0))
    episodes = jnp.arange(64, dtype=jnp.uint32)

    def mean_pnl(gamma):
        pol = mm.policies.avellaneda_stoikov(gamma)
        return mm.rollout(p, pol, stream, episodes).pnl.mean()

    gammas = jnp.array([0.01, 0.1, 1.0])
    swept = jax.jit(jax.vmap(mean_pnl))(gammas)
    for gamma, value in zip(gammas, swept, strict=True):
        single = mm.simulate(p, mm.policies.avellaneda_stoikov(float(gamma)), jax.random.key(0), 64)
        assert float(value) == pytest.approx(float(single.pnl.mean()), abs=1e-3)


def test_bad_arguments_are_rejected():
    p = mm.presets.homework()
    pol = mm.policies.symmetric(0.5)
    with pytest.raises(ValueError, match="n_episodes"):
        mm.simulate(p, pol, jax.random.key(0), 0)
    with pytest.raises(ValueError, match="n_episodes"):
        mm.simulate(p, pol, jax.random.key(0), 2.5)
    with pytest.raises(ValueError, match="chunk_size"):
        mm.simulate(p, pol, jax.random.key(0), 10, chunk_size=0)
    with pytest.raises(TypeError, match="policy"):
        mm.simulate(p, "as", jax.random.key(0), 10)
    with pytest.raises(ValueError, match="devices"):
        mm.simulate(p, pol, jax.random.key(0), 10, devices=[])


SHARDED = """
import jax, numpy as np, jaxmm as mm
assert len(jax.devices()) == 4
p = mm.presets.homework()
pol = mm.policies.avellaneda_stoikov(0.1)
one = mm.simulate(p, pol, jax.random.key(0), 1001)
four = mm.simulate(p, pol, jax.random.key(0), 1001, devices=jax.devices(), chunk_size=600)
jax.tree.map(np.testing.assert_array_equal, one, four)
print("ok")
"""


def test_sharded_run_is_identical_to_single_device():
    out = run_code(SHARDED, env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    assert out.stdout.strip().endswith("ok")
