"""The market step: noise, fills, limits, scenario options, determinism."""

import math

import jax
import jax.extend as jex
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import jaxmm as mm
from jaxmm import market


def test_threefry_is_bit_identical_to_jax():
    key = jnp.array([0xDEADBEEF, 12345], jnp.uint32)
    counters = jnp.arange(2 * 1000, dtype=jnp.uint32) * jnp.uint32(7919)
    expected = jex.random.threefry_2x32(key, counters)
    y0, y1 = market.threefry2x32(key, counters[:1000], counters[1000:])
    np.testing.assert_array_equal(np.concatenate([y0, y1]), expected)


def test_noise_is_uniform_and_normal():
    stream = market.stream_key(jax.random.key(3))
    episodes = jnp.arange(200_000, dtype=jnp.uint32)
    noise = market.counter_noise(stream, episodes, 17)
    for u in (noise.u_bid, noise.u_ask, noise.u_mid):
        u = np.asarray(u, np.float64)
        assert u.min() > 0.0 and u.max() < 1.0
        assert stats.kstest(u, "uniform").pvalue > 1e-3
    z = np.asarray(market.normal_from_uniform(noise.u_mid), np.float64)
    assert stats.kstest(z, "norm").pvalue > 1e-3
    # the three streams are uncorrelated: |corr| < 4 standard errors (1 / sqrt(n))
    corr = np.corrcoef([noise.u_bid, noise.u_ask, noise.u_mid])
    assert np.abs(corr[np.triu_indices(3, 1)]).max() < 4 / math.sqrt(episodes.size)


def fresh(p):
    return market.reset(jax.random.key(0), p)


def test_step_is_deterministic_in_its_key():
    p = mm.presets.homework()
    quotes = mm.Quotes(jnp.float32(0.1), jnp.float32(0.1))
    a, _ = market.step(fresh(p), quotes, jax.random.key(5), p)
    b, _ = market.step(fresh(p), quotes, jax.random.key(5), p)
    c, _ = market.step(fresh(p), quotes, jax.random.key(6), p)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert float(a.mid) != float(c.mid)


@pytest.mark.parametrize("fill_model", ["linear", "exponential"])
@pytest.mark.parametrize("depth", [-0.3, 0.2, 1.0, 3.0])
def test_fill_frequency_matches_probability(fill_model, depth):
    p = mm.presets.homework().replace(fill_model=fill_model, A=140.0)
    n = 200_000
    keys = jax.random.split(jax.random.key(11), n)
    quotes = mm.Quotes(jnp.float32(depth), jnp.float32(depth))
    step = jax.vmap(lambda key: market.step(fresh(p), quotes, key, p)[1])
    info = step(keys)
    lam_dt = 140.0 * math.exp(-1.5 * depth) * p.dt
    prob = min(1.0, lam_dt) if fill_model == "linear" else 1 - math.exp(-lam_dt)
    np.testing.assert_allclose(info.bid_fill_prob[0], prob, rtol=1e-5)
    se = math.sqrt(prob * (1 - prob) / n)
    for fills in (info.bid_fill, info.ask_fill):
        assert abs(float(np.mean(fills)) - prob) < 4 * se + 1e-7


def run_steps(p, policy_quotes, n_steps, key=0):
    state = fresh(p)
    infos = []
    for t in range(n_steps):
        state, info = market.step(
            state, policy_quotes, jax.random.fold_in(jax.random.key(key), t), p
        )
        infos.append(info)
    return state, infos


def test_inventory_limit_is_never_exceeded():
    p = mm.presets.homework().replace(q_max=3.0, sigma=0.0)
    # Bid far above the mid: filled every step unless the limit blocks it.
    quotes = mm.Quotes(jnp.float32(-5.0), jnp.float32(10.0))
    ro = mm.simulate(p, lambda obs, params: quotes, jax.random.key(0), 50, paths=True)
    assert float(np.max(ro.paths.inventory)) == 3.0
    assert float(np.min(ro.paths.inventory)) >= -3.0
    # and symmetrically on the ask side
    ro = mm.simulate(
        p, lambda obs, params: mm.Quotes(quotes.ask_depth, quotes.bid_depth), jax.random.key(0), 50
    )
    np.testing.assert_array_equal(ro.inventory, -3.0)


def test_adverse_selection_jumps_against_the_fill():
    p = mm.presets.homework().replace(sigma=0.0, adverse_selection=0.02)
    quotes = mm.Quotes(jnp.float32(0.3), jnp.float32(0.3))
    state, infos = run_steps(p, quotes, 60)
    fills = sum(float(i.ask_fill - i.bid_fill) for i in infos)
    assert float(state.mid) == pytest.approx(100.0 + 0.02 * fills, abs=1e-4)
    for info in infos:
        assert float(info.mid_change) == pytest.approx(
            0.02 * float(info.ask_fill - info.bid_fill), abs=1e-5
        )


def test_binary_mid_moves_by_sigma_sqrt_dt():
    p = mm.presets.as2008()
    quotes = mm.Quotes(jnp.float32(5.0), jnp.float32(5.0))
    _, infos = run_steps(p, quotes, 30)
    moves = np.array([float(i.mid_change) for i in infos])
    np.testing.assert_allclose(np.abs(moves), 2.0 * math.sqrt(0.005), rtol=1e-4)
    assert (moves > 0).any() and (moves < 0).any()


def increments(p, n=100_000):
    ro = mm.simulate(p, mm.policies.symmetric(50.0), jax.random.key(4), n, paths=True)
    return np.diff(np.asarray(ro.paths.mid, np.float64), axis=1)


def test_volatility_switch_changes_increment_variance():
    p = mm.presets.homework().replace(n_steps=20, T=0.1, vol_switch_step=10, vol_switch_factor=2.0)
    d = increments(p, 50_000)
    before, after = d[:, :10].ravel(), d[:, 10:].ravel()
    for sample, sigma in ((before, 2.0), (after, 4.0)):
        expected = sigma**2 * p.dt
        se = expected * math.sqrt(2 / sample.size)
        assert abs(sample.var() - expected) < 4 * se


def test_drift_shifts_increments():
    p = mm.presets.homework().replace(mu=5.0, n_steps=10, T=0.05)
    d = increments(p, 50_000).ravel()
    se = 2.0 * math.sqrt(p.dt) / math.sqrt(d.size)
    assert abs(d.mean() - 5.0 * p.dt) < 4 * se


def test_geometric_log_returns():
    p = mm.presets.homework().replace(price_model="geometric", sigma=0.3, mu=0.1, n_steps=10)
    ro = mm.simulate(p, mm.policies.symmetric(50.0), jax.random.key(9), 50_000, paths=True)
    log_returns = np.diff(np.log(np.asarray(ro.paths.mid, np.float64)), axis=1).ravel()
    mean, var = (0.1 - 0.5 * 0.09) * p.dt, 0.09 * p.dt
    assert abs(log_returns.mean() - mean) < 4 * math.sqrt(var / log_returns.size)
    assert abs(log_returns.var() - var) < 4 * var * math.sqrt(2 / log_returns.size)


def test_one_sided_flow_multipliers():
    p = mm.presets.homework().replace(bid_intensity_mult=1.4, ask_intensity_mult=0.6)
    quotes = mm.Quotes(jnp.float32(1.0), jnp.float32(1.0))
    _, info = market.step(fresh(p), quotes, jax.random.key(0), p)
    base = 100.0 * math.exp(-1.5) * p.dt
    assert float(info.bid_fill_prob) == pytest.approx(1.4 * base, rel=1e-5)
    assert float(info.ask_fill_prob) == pytest.approx(0.6 * base, rel=1e-5)


def test_unquoted_side_never_fills_and_gives_no_nan():
    p = mm.presets.homework()
    quotes = mm.Quotes(jnp.float32(jnp.inf), jnp.float32(-1.0))
    state, infos = run_steps(p, quotes, 20)
    assert all(float(i.bid_fill) == 0 for i in infos)
    assert np.isfinite(float(state.pnl))


def test_trailing_statistics_match_numpy():
    p = mm.presets.homework()
    ro = mm.simulate(p, mm.policies.symmetric(0.4), jax.random.key(2), 1, paths=True)
    state = fresh(p)
    for t in range(35):
        noise = market.counter_noise(market.stream_key(jax.random.key(2)), 0, t)
        state, _ = market.step_with_noise(state, mm.policies.symmetric(0.4)(state, p), noise, p)
    mids = np.asarray(ro.paths.mid[0], np.float64)
    fills = np.asarray(ro.paths.bid_fill[0] + ro.paths.ask_fill[0])
    window = np.diff(mids[:36])[-20:]
    expected = math.sqrt(np.sum(window**2) / (20 * p.dt))
    assert float(market.trailing_volatility(state, p)) == pytest.approx(expected, rel=1e-4)
    assert float(market.recent_fill_rate(state, p)) == pytest.approx(fills[15:35].mean(), abs=1e-6)
    assert float(market.trailing_volatility(fresh(p), p)) == 2.0


def test_fill_probability_jax_and_numpy_forms_agree():
    """The one fill-probability rule, in its JAX and NumPy forms (negative depths included:
    intensities above A, probabilities capped at 1 for the linear model)."""
    intensity_dt = np.array([0.0, 1e-6, 0.01, 0.5, 0.999, 1.0, 1.5, 30.0])
    for fill_model in ("linear", "exponential"):
        with jax.enable_x64(True):
            jax_form = np.asarray(market.fill_probability(jnp.asarray(intensity_dt), fill_model))
        numpy_form = market.fill_probability_numpy(intensity_dt, fill_model)
        np.testing.assert_allclose(jax_form, numpy_form, rtol=1e-15, atol=0)
    np.testing.assert_array_equal(
        market.fill_probability_numpy(intensity_dt, "linear"), np.minimum(1.0, intensity_dt)
    )
    np.testing.assert_allclose(
        market.fill_probability_numpy(intensity_dt, "exponential"), 1.0 - np.exp(-intensity_dt),
        atol=1e-15,
    )  # fmt: skip
