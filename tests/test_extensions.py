"""The market's extensions: Heston variance, jumps, tick, fees, latency, order sizes and
risk controls -- hand-computed steps, moments against closed forms, the float64 NumPy oracle."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

import jaxmm as mm
from jaxmm import calibrate, market, optimal
from tests.helpers import assert_paths_match_reference, assert_validation_names, replay_noise
from tests.oracles.simulator import simulate_reference

HESTON = dict(vol_model="heston", kappa_v=4.0, theta_v=1.0, xi_v=0.5, rho_v=-0.6, v0=0.5)
JUMPS = dict(jump_model="compound_poisson", jump_intensity=20.0, jump_mean=0.3, jump_std=0.8)


def fresh(p, **changes):
    return market.reset(jax.random.key(0), p).replace(**changes)


def noise(u_bid=0.5, u_ask=0.5, u_mid=0.5, **extra):
    """A hand-built Noise (u_mid = 1/2: the mid's normal is 0); extra uniforms by name."""
    dtype = market.float_dtype()
    return market.Noise(
        u_bid=jnp.asarray(u_bid, dtype),
        u_ask=jnp.asarray(u_ask, dtype),
        u_mid=jnp.asarray(u_mid, dtype),
        **{name: jnp.asarray(value, dtype) for name, value in extra.items()},
    )


def quotes(bid, ask):
    dtype = market.float_dtype()
    return mm.Quotes(jnp.asarray(bid, dtype), jnp.asarray(ask, dtype))


def trajectories(p, policy, key, n_episodes, record):
    """``record(state, next_state, info)`` of every step of ``n_episodes`` episodes, ``[n, N]``,
    on the noise ``simulate`` uses (episode i, step t)."""
    stream = market.stream_key(key)

    def episode(index):
        def body(state, _):
            step_noise = market.counter_noise(stream, index, state.t)
            following, info = market.step_with_noise(state, policy(state, p), step_noise, p)
            return following, record(state, following, info)

        return jax.lax.scan(body, market.reset(key, p), None, length=p.n_steps)[1]

    episodes = jnp.arange(n_episodes, dtype=jnp.uint32)
    return jax.tree.map(np.asarray, jax.jit(jax.vmap(episode))(episodes))


def batch_se(values_by_batch):
    """Mean and standard error of a statistic computed on independent batches."""
    values = np.asarray(values_by_batch, np.float64)
    return values.mean(), values.std(ddof=1) / math.sqrt(values.size)


# ------------------------------------------------------------------ defaults and validation


def test_default_market_has_no_extension_state_and_no_extensions():
    p = mm.presets.homework()
    assert p.extensions_in_use() == ()
    state = fresh(p)
    for name in ("variance", "fees", "halted", "pending_bid", "pending_ask", "pending_mid"):
        assert getattr(state, name) is None
    # the None-default desk fields are not leaves: sweeps and jit see the basic market's pytree
    with_desk = p.replace(tick=0.01, loss_limit=3.0)
    assert len(jax.tree.leaves(with_desk)) == len(jax.tree.leaves(p)) + 2
    assert with_desk.extensions_in_use() == ("tick", "loss_limit")


def test_neutral_settings_of_the_extensions_reproduce_the_basic_market_bit_for_bit():
    """Every extension at a neutral value (zero tick, fees and floor, infinite loss limit, unit
    fixed sizes, zero jump intensity) gives the basic market's numbers exactly."""
    p = mm.presets.homework().replace(q_max=6.0, adverse_selection=0.01)
    neutral = p.replace(
        jump_model="compound_poisson",
        jump_intensity=0.0,
        order_size="fixed",
        order_size_mean=1.0,
        tick=0.0,
        maker_fee=0.0,
        taker_fee=0.0,
        spread_floor=0.0,
        loss_limit=math.inf,
    )
    policy = mm.policies.avellaneda_stoikov(0.1)
    a = mm.simulate(p, policy, jax.random.key(5), 300, paths=True)
    b = mm.simulate(neutral, policy, jax.random.key(5), 300, paths=True)
    for name in ("pnl", "inventory", "spread_pnl", "inventory_pnl", "max_drawdown", "final_mid"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    jax.tree.map(np.testing.assert_array_equal, a.paths, b.paths)
    np.testing.assert_array_equal(b.fees, 0.0)


def test_constant_heston_variance_is_the_constant_volatility():
    """v0 = theta = 1, xi = 0: v stays 1 and the step is the basic one; in float32 the compiled
    product sigma * sqrt(v) * sqrt(dt) * z may round differently by one ulp of the mid."""
    p = mm.presets.homework()
    flat = p.replace(vol_model="heston", v0=1.0, theta_v=1.0, xi_v=0.0, kappa_v=3.0)
    stream = market.stream_key(jax.random.key(2))
    step_noise = market.counter_noise(stream, jnp.arange(1000, dtype=jnp.uint32), 0)
    far = quotes(jnp.full(1000, 0.3), jnp.full(1000, 0.3))

    def run(params):
        start = jax.vmap(lambda _: fresh(params))(jnp.arange(1000))
        return jax.jit(jax.vmap(market.step_with_noise, in_axes=(0, 0, 0, None)))(
            start, far, step_noise, params
        )

    (basic, _), (heston, _) = run(p), run(flat)
    np.testing.assert_array_equal(heston.variance, 1.0)
    np.testing.assert_array_equal(heston.inventory, basic.inventory)
    np.testing.assert_allclose(heston.mid, basic.mid, rtol=0, atol=np.spacing(np.float32(128)))


@pytest.mark.parametrize(
    ("changes", "field", "allowed"),
    [
        ({"vol_model": "sabr"}, "vol_model", "heston"),
        ({"vol_model": "heston", "price_model": "binary"}, "vol_model", "arithmetic"),
        ({"rho_v": 1.5}, "rho_v", "[-1, 1]"),
        ({"xi_v": -0.1}, "xi_v", "Feller condition is not required"),
        ({"kappa_v": -1.0}, "kappa_v", ">= 0"),
        ({"v0": float("nan")}, "v0", "NaN"),
        ({"jump_model": "hawkes"}, "jump_model", "compound_poisson"),
        ({"jump_std": -1.0}, "jump_std", ">= 0"),
        ({"jump_model": "compound_poisson", "jump_intensity": 500.0}, "jump_intensity", "<= 1"),
        ({"tick": -0.01}, "tick", ">= 0"),
        ({"maker_fee": float("inf")}, "maker_fee", "finite"),
        ({"spread_floor": -1.0}, "spread_floor", ">= 0"),
        ({"loss_limit": -5.0}, "loss_limit", ">= 0"),
        ({"latency": -1}, "latency", "integer >= 0"),
        ({"latency": 1.5}, "latency", "integer >= 0"),
        ({"latency": True}, "latency", "integer >= 0"),
        ({"order_size": "poisson"}, "order_size", "geometric"),
        ({"order_size_mean": 0.5}, "order_size_mean", ">= 1"),
        ({"order_size": "fixed", "order_size_mean": 2.5}, "order_size_mean", "integer"),
        ({"vol_model": "heston", "n_steps": 2**28}, "n_steps", "at most"),
    ],
)
def test_validation_names_the_field_and_its_range(changes, field, allowed):
    assert_validation_names(changes, field, allowed)


def test_exact_solvers_refuse_extensions_they_do_not_model():
    base = mm.presets.homework().replace(q_max=3.0, n_steps=20)
    table = mm.policies.symmetric(0.7)
    for changes, name in (
        ({"tick": 0.01}, "tick"),
        ({"maker_fee": -0.001}, "maker_fee"),
        ({"vol_model": "heston"}, "vol_model"),
        ({"jump_model": "compound_poisson"}, "jump_model"),
        ({"latency": 2}, "latency"),
        ({"order_size": "geometric"}, "order_size"),
        ({"loss_limit": 4.0}, "loss_limit"),
        ({"spread_floor": 1.0}, "spread_floor"),
    ):
        p = base.replace(**changes)
        with pytest.raises(ValueError, match=rf"params\.{name} .* not modelled"):
            optimal.bellman(p, 0.01)
        with pytest.raises(ValueError, match=rf"params\.{name}"):
            optimal.evaluate(p, table, 0.01)


# ------------------------------------------------------------------ Heston


def test_heston_step_by_hand_and_full_truncation():
    p = mm.presets.homework().replace(**HESTON)
    dt = p.dt
    z, z_prime = 1.0, -0.5
    u_mid, u_vol = special.ndtr(z), special.ndtr(z_prime)
    with jax.enable_x64(True):
        step_noise = noise(u_mid=u_mid, u_vol=u_vol)
        far = quotes(50.0, 50.0)
        state, info = market.step_with_noise(
            fresh(p, variance=jnp.float64(0.5)), far, step_noise, p
        )
        expected_move = 2.0 * math.sqrt(0.5) * math.sqrt(dt) * z
        z_v = -0.6 * z + math.sqrt(1 - 0.36) * z_prime
        expected_v = 0.5 + 4.0 * (1.0 - 0.5) * dt + 0.5 * math.sqrt(0.5 * dt) * z_v
        assert float(info.mid_change) == pytest.approx(expected_move, rel=1e-9)
        assert float(state.variance) == pytest.approx(expected_v, rel=1e-12)
        # a negative variance acts as 0: no diffusion, drift kappa theta dt, no noise
        state, info = market.step_with_noise(
            fresh(p, variance=jnp.float64(-0.1)), far, step_noise, p
        )
        assert float(info.mid_change) == 0.0
        assert float(state.variance) == pytest.approx(-0.1 + 4.0 * dt, rel=1e-12)


def test_heston_needs_its_noise():
    p = mm.presets.homework().replace(**HESTON)
    with pytest.raises(ValueError, match="counter_noise"):
        market.step_with_noise(fresh(p), quotes(1.0, 1.0), noise(), p)


def heston_paths(p, n_episodes):
    return trajectories(
        p,
        mm.policies.symmetric(50.0),  # never filled: the mid is the pure Heston diffusion
        jax.random.key(21),
        n_episodes,
        lambda s, nxt, info: (s.variance, nxt.variance, info.mid_change),
    )


def test_heston_mean_reversion_and_price_variance():
    """E[v_t] follows the Euler recursion m_{t+1} = m_t + kappa (theta - m_t) dt exactly while
    v > 0 (checked on every path: the truncation never acts here), and E[dS^2] = sigma^2 E[v] dt;
    both within 4 standard errors."""
    p = mm.presets.homework().replace(**HESTON)
    n, dt = 20_000, p.dt
    v, v_next, ds = heston_paths(p, n)
    v, v_next, ds = (np.asarray(x, np.float64) for x in (v, v_next, ds))
    assert v_next.min() > 0.0  # no path ever reaches 0: the recursion is exact for the scheme
    means = 0.5 + (1.0 - 0.5) * (1.0 - (1 - 4.0 * dt) ** np.arange(1, p.n_steps + 1))
    for t in (9, 49, 199):  # v_{t+1} after t + 1 steps
        se = v_next[:, t].std(ddof=1) / math.sqrt(n)
        assert abs(v_next[:, t].mean() - means[t]) < 4 * se, t
    continuous = 1.0 + (0.5 - 1.0) * math.exp(-4.0 * 1.0)  # theta + (v0 - theta) e^{-kappa T}
    assert abs(means[-1] - continuous) < 1e-3  # the Euler mean is within 1e-3 of the ODE
    start_means = np.concatenate([[0.5], means[:-1]])
    per_episode = (ds**2).sum(axis=1)
    expected = 4.0 * dt * start_means.sum()
    assert abs(per_episode.mean() - expected) < 4 * per_episode.std(ddof=1) / math.sqrt(n)


def test_heston_price_variance_correlation():
    """Started at v0 = theta, E[v_t] = theta and Var(v_t) follows
    V_{t+1} = (1 - kappa dt)^2 V_t + xi^2 theta dt, so the pooled correlation of (dS, dv) is
    rho / sqrt(1 + kappa^2 dt sum V_t / (xi^2 theta N)) -- not exactly rho; 4 standard errors."""
    p = mm.presets.homework().replace(**{**HESTON, "v0": 1.0})
    dt, kappa, xi, theta, rho = p.dt, 4.0, 0.5, 1.0, -0.6
    v, v_next, ds = (np.asarray(x, np.float64) for x in heston_paths(p, 20_000))
    dv = v_next - v
    variances = np.zeros(p.n_steps)
    for t in range(1, p.n_steps):
        variances[t] = (1 - kappa * dt) ** 2 * variances[t - 1] + xi**2 * theta * dt
    expected = rho / math.sqrt(1 + kappa**2 * dt * variances.sum() / (xi**2 * theta * p.n_steps))
    assert abs(expected - rho) > 0.002  # the correction is visible at this sample size
    batches = [
        np.sum(a * b) / math.sqrt(np.sum(a * a) * np.sum(b * b))
        for a, b in zip(np.array_split(ds, 40), np.array_split(dv, 40), strict=True)
    ]
    mean, se = batch_se(batches)
    assert abs(mean - expected) < 4 * se
    # and the covariance itself: E[dS dv] = rho sigma xi theta dt per step
    per_episode = (ds * dv).sum(axis=1)
    cov_se = per_episode.std(ddof=1) / math.sqrt(per_episode.size)
    assert abs(per_episode.mean() - rho * 2.0 * xi * theta * dt * p.n_steps) < 4 * cov_se


# ------------------------------------------------------------------ jumps


def test_jump_step_by_hand():
    p = mm.presets.homework().replace(sigma=0.0, **JUMPS)
    rate = 20.0 * p.dt
    cdf = [math.exp(-rate) * sum(rate**j / math.factorial(j) for j in range(i + 1)) for i in (1, 2)]
    u_count = 0.5 * (cdf[0] + cdf[1])  # between F(1) and F(2): two jumps
    z = 0.5
    with jax.enable_x64(True):
        step_noise = noise(u_jump_count=u_count, u_jump_size=special.ndtr(z))
        _, info = market.step_with_noise(fresh(p), quotes(50.0, 50.0), step_noise, p)
        assert float(info.mid_change) == pytest.approx(2 * 0.3 + 0.8 * math.sqrt(2) * z, rel=1e-9)
        none = noise(u_jump_count=0.5 * math.exp(-rate), u_jump_size=special.ndtr(z))
        _, info = market.step_with_noise(fresh(p), quotes(50.0, 50.0), none, p)
        assert float(info.mid_change) == 0.0


def test_jump_diffusion_increment_cumulants():
    """dS = sigma sqrt(dt) Z + sum of Poisson(lambda dt) jumps N(m, s^2): mean lambda dt m,
    variance sigma^2 dt + lambda dt (m^2 + s^2), fourth cumulant lambda dt (m^4 + 6 m^2 s^2 +
    3 s^4); each within 4 standard errors (40 independent batches of episodes)."""
    p = mm.presets.homework().replace(**JUMPS)
    ds = trajectories(
        p, mm.policies.symmetric(50.0), jax.random.key(22), 20_000, lambda s, n, i: i.mid_change
    )
    ds = np.asarray(ds, np.float64)
    rate, m, s = 20.0 * p.dt, 0.3, 0.8
    expected = {
        "mean": rate * m,
        "variance": 4.0 * p.dt + rate * (m**2 + s**2),
        "kappa4": rate * (m**4 + 6 * m**2 * s**2 + 3 * s**4),
    }
    batches = {name: [] for name in expected}
    for batch in np.array_split(ds, 40):
        x = batch.ravel()
        centred = x - x.mean()
        m2, m4 = np.mean(centred**2), np.mean(centred**4)
        batches["mean"].append(x.mean())
        batches["variance"].append(m2)
        batches["kappa4"].append(m4 - 3 * m2**2)
    for name, value in expected.items():
        mean, se = batch_se(batches[name])
        assert abs(mean - value) < 4 * se, (name, mean, value, se)


# ------------------------------------------------------------------ tick, fees, controls


def test_tick_rounds_quotes_away_from_the_mid():
    p = mm.presets.homework().replace(tick=0.05)
    with jax.enable_x64(True):
        _, info = market.step_with_noise(fresh(p), quotes(0.12, 0.12), noise(0.0, 0.0), p)
        # 99.88 -> 99.85 and 100.12 -> 100.15: both depths 0.15, and the capture uses them
        np.testing.assert_allclose([info.bid_depth, info.ask_depth], [0.15, 0.15], atol=1e-12)
        prob = 100.0 * math.exp(-1.5 * 0.15) * p.dt
        assert float(info.bid_fill_prob) == pytest.approx(prob, rel=1e-12)
        assert float(info.spread_pnl) == pytest.approx(0.30, abs=1e-12)
        # on-grid prices stay; an unquoted side stays unquoted
        _, info = market.step_with_noise(fresh(p), quotes(0.5, jnp.inf), noise(), p)
        assert float(info.bid_depth) == 0.5 and float(info.ask_depth) == math.inf
        # the tick is a leaf: one program sweeps it (0 = no grid)
        ticks = jnp.array([0.0, 0.05, 0.25])
        depths = jax.vmap(
            lambda tick: market.step_with_noise(
                fresh(p), quotes(0.12, 0.3), noise(), p.replace(tick=tick)
            )[1]
        )(ticks)
        np.testing.assert_allclose(depths.bid_depth, [0.12, 0.15, 0.25], atol=1e-12)
        np.testing.assert_allclose(depths.ask_depth, [0.30, 0.30, 0.50], atol=1e-12)


def test_maker_and_taker_fees_by_hand():
    p = mm.presets.homework().replace(sigma=0.0, maker_fee=0.01, taker_fee=0.03)
    with jax.enable_x64(True):
        # bid passive at 0.3, ask through the mid at -0.1 (it takes): both filled
        state, info = market.step_with_noise(fresh(p), quotes(0.3, -0.1), noise(0.0, 0.0), p)
        assert float(info.fees) == pytest.approx(0.01 + 0.03, abs=1e-15)
        assert float(info.pnl) == pytest.approx(0.3 - 0.1 - 0.04, abs=1e-15)
        assert float(state.pnl) == pytest.approx(float(state.spread_pnl) - 0.04, abs=1e-15)
        # a maker rebate (negative fee) adds to the PnL; only the filled side pays
        rebate = p.replace(maker_fee=-0.002, taker_fee=None)
        state, info = market.step_with_noise(
            fresh(rebate), quotes(0.3, 0.3), noise(0.0, 0.9), rebate
        )
        assert float(info.ask_fill) == 0.0 and float(info.fees) == pytest.approx(-0.002)
        assert float(state.fees) == pytest.approx(-0.002)
        assert float(info.pnl) == pytest.approx(0.302, abs=1e-15)


def test_spread_floor_widens_symmetrically_and_composes_with_the_tick():
    p = mm.presets.homework().replace(spread_floor=1.0)
    with jax.enable_x64(True):
        for (bid, ask), expected in (
            ((0.1, 0.3), (0.4, 0.6)),
            ((0.8, 0.9), (0.8, 0.9)),
            ((-0.2, 0.6), (0.1, 0.9)),
            ((jnp.inf, 0.2), (jnp.inf, 0.2)),
        ):
            _, info = market.step_with_noise(fresh(p), quotes(bid, ask), noise(), p)
            np.testing.assert_allclose([info.bid_depth, info.ask_depth], expected, atol=1e-12)
        ticked = p.replace(tick=0.25)  # 0.4, 0.6 -> prices 99.6, 100.6 -> 99.5, 100.75
        _, info = market.step_with_noise(fresh(ticked), quotes(0.1, 0.3), noise(), ticked)
        np.testing.assert_allclose([info.bid_depth, info.ask_depth], [0.5, 0.75], atol=1e-12)


def test_loss_limit_halts_quoting_for_the_rest_of_the_episode():
    p = mm.presets.homework().replace(sigma=0.0, loss_limit=4.0)
    with jax.enable_x64(True):
        start = fresh(p, pnl=jnp.float64(-3.9))
        state, info = market.step_with_noise(start, quotes(-0.5, 9.0), noise(0.0, 0.9), p)
        assert float(info.bid_fill) == 1.0 and float(state.pnl) == pytest.approx(-4.4)
        assert bool(state.halted)
        for _ in range(3):  # certain fills (depth -5: probability 1) no longer happen
            state, info = market.step_with_noise(state, quotes(-5.0, -5.0), noise(0.0, 0.0), p)
            assert float(info.bid_fill + info.ask_fill) == 0.0 and bool(state.halted)
            assert float(info.bid_depth) == math.inf
        # at -3.9 with no loss the desk keeps quoting
        state, _ = market.step_with_noise(start, quotes(0.5, 9.0), noise(0.0, 0.9), p)
        assert not bool(state.halted)


def test_inventory_and_loss_limits_hold_on_every_path():
    """A losing desk (quotes through the mid, heavy adverse selection) under q_max = 4, a loss
    limit of 3 and random order sizes: no path exceeds the inventory limit, and no fill happens
    after the PnL first falls below -3."""
    p = mm.presets.homework().replace(
        q_max=4.0,
        loss_limit=3.0,
        adverse_selection=0.3,
        order_size="geometric",
        order_size_mean=2.0,
    )
    ro = mm.simulate(p, mm.policies.symmetric(-0.05), jax.random.key(3), 400, paths=True)
    paths = jax.tree.map(lambda x: np.asarray(x, np.float64), ro.paths)
    assert np.abs(paths.inventory).max() == 4.0
    below = paths.pnl[:, 1:] < -3.0  # after step t
    assert below.any(axis=1).mean() > 0.9  # the limit is hit on most paths
    halted_before = np.cumsum(below, axis=1)[:, :-1] > 0  # the limit was hit before step t + 1
    fills = paths.bid_fill[:, 1:] + paths.ask_fill[:, 1:]
    assert fills[halted_before].max() == 0.0
    assert (paths.bid_fill + paths.ask_fill).sum() > 0


# ------------------------------------------------------------------ latency


def varying_policy(obs, params):
    """Quotes that change with time and inventory (so a shift in time is visible)."""
    t = obs.t.astype(obs.mid.dtype)
    return mm.Quotes(0.1 + 0.02 * t + 0.1 * obs.inventory, 0.5 - 0.01 * t - 0.1 * obs.inventory)


def latency_runs(delayed, plain, key, feed):
    """Run ``varying_policy`` ``n_steps`` steps in the ``delayed`` market (recording the quotes
    it computed and the mid they were computed at), then the ``plain`` market fed the quotes
    ``feed(computed_bid, computed_ask, computed_mid, plain_mid, t)``, on the same noise."""
    stream = market.stream_key(key)

    def delayed_step(state, _):
        sent = varying_policy(state, delayed)
        noise_t = market.counter_noise(stream, 0, state.t)
        following, info = market.step_with_noise(state, sent, noise_t, delayed)
        return following, (sent.bid_depth, sent.ask_depth, state.mid, info)

    def plain_step(carry, t):
        state, computed = carry
        bid, ask = feed(*computed, state.mid, t)
        noise_t = market.counter_noise(stream, 0, state.t)
        following, info = market.step_with_noise(state, quotes(bid, ask), noise_t, plain)
        return (following, computed), info

    @jax.jit
    def run():
        final, (bid, ask, mid, info) = jax.lax.scan(
            delayed_step, fresh(delayed), None, length=delayed.n_steps
        )
        steps = jnp.arange(plain.n_steps)
        (reference, _), reference_info = jax.lax.scan(
            plain_step, (fresh(plain), (bid, ask, mid)), steps
        )
        return final, info, reference, reference_info

    return run()


def test_latency_equals_the_no_latency_market_fed_the_shifted_quotes():
    """sigma = 0 (the mid never moves): with latency k the fills are those of the plain market
    fed with the quotes of k steps before (none in the first k steps), bit for bit."""
    k = 3
    plain = mm.presets.homework().replace(sigma=0.0, n_steps=60)
    delayed = plain.replace(latency=k)

    def shifted(bid, ask, mid, current_mid, t):
        earlier = jnp.maximum(t - k, 0)
        return (
            jnp.where(t >= k, bid[earlier], jnp.inf),
            jnp.where(t >= k, ask[earlier], jnp.inf),
        )

    final, info, reference, reference_info = latency_runs(
        delayed, plain, jax.random.key(8), shifted
    )
    np.testing.assert_array_equal(info.bid_fill, reference_info.bid_fill)
    np.testing.assert_array_equal(info.ask_fill, reference_info.ask_fill)
    np.testing.assert_array_equal(info.bid_depth, reference_info.bid_depth)
    assert np.all(np.isinf(info.bid_depth[:k])) and info.bid_fill[:k].sum() == 0
    assert info.bid_fill.sum() + info.ask_fill.sum() > 5
    assert float(reference.pnl) == float(final.pnl)
    assert float(reference.inventory) == float(final.inventory)


def test_latency_quotes_act_at_their_stale_prices():
    """With a moving mid the delayed quote keeps its price: the plain market fed the depths
    S_t - (S_{t-k} - delta_b) and (S_{t-k} + delta_a) - S_t has the same fills (float64)."""
    k = 2
    with jax.enable_x64(True):
        plain = mm.presets.homework().replace(adverse_selection=0.05, n_steps=80)
        delayed = plain.replace(latency=k)

        def stale(bid, ask, mid, current_mid, t):
            earlier = jnp.maximum(t - k, 0)
            bid_price = mid[earlier] - bid[earlier]
            ask_price = mid[earlier] + ask[earlier]
            return (
                jnp.where(t >= k, current_mid - bid_price, jnp.inf),
                jnp.where(t >= k, ask_price - current_mid, jnp.inf),
            )

        final, info, reference, reference_info = latency_runs(
            delayed, plain, jax.random.key(9), stale
        )
        np.testing.assert_array_equal(info.bid_fill, reference_info.bid_fill)
        np.testing.assert_array_equal(info.ask_fill, reference_info.ask_fill)
        np.testing.assert_allclose(info.pnl, reference_info.pnl, atol=1e-9)
        assert float(reference.pnl) == pytest.approx(float(final.pnl), abs=1e-9)
        assert info.bid_fill.sum() + info.ask_fill.sum() > 10
        assert np.any(info.bid_depth[k:] != info.ask_depth[k:])


# ------------------------------------------------------------------ order sizes


def test_order_sizes_by_hand_and_clipped_at_the_limit():
    p = mm.presets.homework().replace(sigma=0.0, order_size="fixed", order_size_mean=4.0, q_max=5.0)
    with jax.enable_x64(True):
        state, info = market.step_with_noise(
            fresh(p, inventory=jnp.float64(3.0)), quotes(0.2, 0.7), noise(0.0, 0.9), p
        )
        assert float(info.bid_fill) == 2.0 and float(state.inventory) == 5.0  # 4 clipped to 2
        assert float(info.spread_pnl) == pytest.approx(0.4, abs=1e-15)
        state, info = market.step_with_noise(
            fresh(p, inventory=jnp.float64(3.0)), quotes(0.2, 0.7), noise(0.9, 0.0), p
        )
        assert float(info.ask_fill) == 4.0 and float(state.inventory) == -1.0
        assert float(info.spread_pnl) == pytest.approx(2.8, abs=1e-15)
        geometric = p.replace(order_size="geometric", order_size_mean=2.0, q_max=math.inf)
        # P(size > j) = 2^-j: u = 0.2 lies in (1/8, 1/4], size 3; u = 0.6 gives 1
        _, info = market.step_with_noise(
            fresh(geometric),
            quotes(0.2, 0.2),
            noise(0.0, 0.0, u_bid_size=0.2, u_ask_size=0.6),
            geometric,
        )
        assert (float(info.bid_fill), float(info.ask_fill)) == (3.0, 1.0)


def test_geometric_order_sizes_mean_and_inventory_variance():
    """Fill probability p = 0.3 per side, sizes geometric with mean m = 2.5 (r = 1/m): the mean
    fill size is m and Var(q_N) = 2 N (p E[S^2] - p^2 m^2) with E[S^2] = (2 - r) / r^2; 4 SEs."""
    depth = math.log(0.5 / 0.3) / 1.5  # A dt e^{-k depth} = 0.3
    p = mm.presets.homework().replace(order_size="geometric", order_size_mean=2.5)
    fills, inventory = trajectories(
        p,
        mm.policies.symmetric(depth),
        jax.random.key(23),
        20_000,
        lambda s, nxt, info: (info.bid_fill, nxt.inventory),
    )
    sizes = np.asarray(fills, np.float64)
    sizes = sizes[sizes > 0]
    assert abs(sizes.size / fills.size - 0.3) < 4 * math.sqrt(0.21 / fills.size)
    assert abs(sizes.mean() - 2.5) < 4 * sizes.std(ddof=1) / math.sqrt(sizes.size)
    r, prob, n_steps = 0.4, 0.3, p.n_steps
    expected = 2 * n_steps * (prob * (2 - r) / r**2 - prob**2 * 2.5**2)
    q = np.asarray(inventory[:, -1], np.float64)
    centred = q - q.mean()
    variance = np.mean(centred**2)
    se = math.sqrt((np.mean(centred**4) - variance**2) / q.size)
    assert abs(variance - expected) < 4 * se


# ------------------------------------------------------------------ the NumPy oracle


# the settings of the "everything" scenario that the market and the oracle name alike
EVERYTHING = {
    "tick": 0.01,
    "maker_fee": 0.001,
    "taker_fee": 0.01,
    "latency": 2,
    "order_size": "geometric",
    "order_size_mean": 1.5,
    "q_max": 8.0,
    "spread_floor": 1.2,
    "loss_limit": 6.0,
    "mu": 0.5,
    "fill_model": "exponential",
}

ORACLE_SCENARIOS = [
    ("heston", HESTON, {"heston": dict(kappa=4.0, theta=1.0, xi=0.5, rho=-0.6, v0=0.5)}),
    ("jumps", JUMPS, {"jumps": dict(intensity=20.0, mean=0.3, std=0.8)}),
    ("tick", {"tick": 0.05}, {"tick": 0.05}),
    ("fees", {"maker_fee": -0.004, "taker_fee": 0.02}, {"maker_fee": -0.004, "taker_fee": 0.02}),
    ("latency", {"latency": 3, "adverse_selection": 0.02}, {"latency": 3, "alpha": 0.02}),
    (
        "fixed sizes",
        {"order_size": "fixed", "order_size_mean": 3.0, "q_max": 7.0},
        {"order_size": "fixed", "order_size_mean": 3.0, "q_max": 7.0},
    ),
    (
        "geometric sizes",
        {"order_size": "geometric", "order_size_mean": 2.0, "q_max": 6.0},
        {"order_size": "geometric", "order_size_mean": 2.0, "q_max": 6.0},
    ),
    (
        "risk controls",
        {"spread_floor": 1.6, "loss_limit": 2.0, "adverse_selection": 0.1},
        {"spread_floor": 1.6, "loss_limit": 2.0, "alpha": 0.1},
    ),
    (
        "everything",
        {**HESTON, **JUMPS, "jump_intensity": 5.0, **EVERYTHING, "adverse_selection": 0.02},
        {
            "heston": dict(kappa=4.0, theta=1.0, xi=0.5, rho=-0.6, v0=0.5),
            "jumps": dict(intensity=5.0, mean=0.3, std=0.8),
            **EVERYTHING,
            "alpha": 0.02,
        },
    ),
]


@pytest.mark.parametrize(("name", "changes", "ref_kwargs"), ORACLE_SCENARIOS)
def test_float64_matches_numpy_oracle(name, changes, ref_kwargs):
    n = 200
    with jax.enable_x64(True):
        p = mm.presets.homework().replace(**changes)
        key = jax.random.key(42)
        ro = mm.simulate(p, mm.policies.avellaneda_stoikov(0.1), key, n, paths=True)
        drawn = replay_noise(key, n, p)
    u_bid, u_ask, z = drawn.pop("u_bid"), drawn.pop("u_ask"), drawn.pop("z")
    extra = {name: value for name, value in drawn.items() if value is not None}
    ref = simulate_reference(
        u_bid,
        u_ask,
        z,
        S0=100.0,
        sigma=2.0,
        T=1.0,
        A=100.0,
        k=1.5,
        policy=("as", 0.1, 1.5, 2.0),
        **extra,
        **ref_kwargs,
    )
    assert_paths_match_reference(ro, ref)
    np.testing.assert_allclose(ro.pnl, ref["cash"] + ref["inventory"][:, -1] * ref["mid"][:, -1])
    if ro.fees is not None:
        np.testing.assert_allclose(ro.fees, ref["fees"], atol=1e-12)
        np.testing.assert_allclose(ro.pnl, ro.spread_pnl + ro.inventory_pnl - ro.fees, atol=1e-9)
    assert np.sum(np.asarray(ro.n_bid_fills + ro.n_ask_fills)) > 100  # the scenario trades
    if "q_max" in changes:
        assert np.abs(ro.paths.inventory).max() <= changes["q_max"]


# ------------------------------------------------------------------ composition


EXTENDED = mm.presets.homework().replace(
    **HESTON,
    **JUMPS,
    tick=0.01,
    maker_fee=0.001,
    latency=2,
    order_size="geometric",
    order_size_mean=1.5,
    q_max=8.0,
    spread_floor=1.2,
    loss_limit=6.0,
)


def test_extra_noise_keeps_common_random_numbers():
    a = mm.simulate(
        EXTENDED, mm.policies.avellaneda_stoikov(0.1), jax.random.key(1), 50, paths=True
    )
    b = mm.simulate(
        EXTENDED, mm.policies.avellaneda_stoikov(2.0), jax.random.key(1), 50, paths=True
    )
    assert not np.array_equal(a.paths.inventory, b.paths.inventory)  # different desks
    np.testing.assert_array_equal(a.paths.mid, b.paths.mid)  # no adverse selection: same mids
    # the extra blocks are uniform and independent of the base block (|corr| < 4 / sqrt(n))
    stream = market.stream_key(jax.random.key(3))
    drawn = market.extension_noise(
        market.counter_noise(stream, jnp.arange(100_000, dtype=jnp.uint32), 7), EXTENDED
    )
    names = ("u_bid", "u_ask", "u_mid", "u_vol", "u_jump_count", "u_jump_size", "u_bid_size")
    matrix = np.asarray([getattr(drawn, name) for name in (*names, "u_ask_size")], np.float64)
    assert matrix.min() > 0 and matrix.max() < 1
    np.testing.assert_allclose(matrix.mean(axis=1), 0.5, atol=4 * math.sqrt(1 / 12 / 100_000))
    corr = np.corrcoef(matrix)
    assert np.abs(corr[np.triu_indices(len(matrix), 1)]).max() < 4 / math.sqrt(100_000)


def test_relaxed_step_at_temperature_zero_is_the_extended_market_step():
    stream = market.stream_key(jax.random.key(9))
    episodes = jnp.arange(32, dtype=jnp.uint32)
    policy = mm.policies.avellaneda_stoikov(0.5, k=1.0)
    exact = mm.rollout(EXTENDED, policy, stream, episodes, paths=True)
    relaxed = jax.jit(lambda: calibrate.relaxed_rollout(EXTENDED, policy, stream, episodes, 0.0))()
    np.testing.assert_array_equal(relaxed.pnl, exact.pnl)
    np.testing.assert_array_equal(relaxed.inventory, exact.inventory)
    np.testing.assert_array_equal(relaxed.bid_fill, exact.paths.bid_fill)


def test_environment_runs_on_the_extended_market():
    env = mm.env.MarketMakingEnv()
    params = env.default_params.replace(market=EXTENDED)
    step = jax.jit(env.step)
    _, state = env.reset(jax.random.key(0), params)
    for t in range(EXTENDED.n_steps + 3):  # through the auto-reset
        _, state, reward, *_ = step(jax.random.key(t), state, jnp.array([0.6, 0.6]), params)
        assert np.isfinite(float(reward))
    assert int(state.t) == 3 and state.pending_bid.shape == (2,)
