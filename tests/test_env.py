"""The gymnax environment: the market step it wraps, rewards, features, actions, wrappers."""

import copy
import functools
import math
import pickle
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import jaxmm as mm
from jaxmm import market
from jaxmm.env import (
    FEATURE_SETS,
    EnvParams,
    FlattenObservationWrapper,
    LegacyStepAPIWrapper,
    LogWrapper,
    MarketMakingEnv,
)

N_STEPS = mm.presets.homework().n_steps


def run_env(env, params, n_steps, key, action_fn):
    """``n_steps`` calls of ``env.step`` (with auto-reset) in one jitted scan; per-step outputs."""

    def run(key):
        obs, state = env.reset(jax.random.key(0), params)

        def body(carry, step_key):
            obs, state = carry
            action_key, env_key = jax.random.split(step_key)
            outputs = env.step(env_key, state, action_fn(action_key, obs), params)
            next_obs, next_state = outputs[0], outputs[1]
            return (next_obs, next_state), (next_obs, next_state, *outputs[2:])

        return obs, jax.lax.scan(body, (obs, state), jax.random.split(key, n_steps))[1]

    return jax.jit(run)(key)


@functools.partial(jax.jit, static_argnames=("n_steps",))
def state_after(params, n_steps, bid_depth=0.6, ask_depth=0.9, key=0):
    """The market state after ``n_steps`` fixed-quote steps of ``market.step``, and the mids."""
    state = market.reset(jax.random.key(0), params)
    quotes = mm.Quotes(jnp.float32(bid_depth), jnp.float32(ask_depth))

    def body(state, step_key):
        state, info = market.step(state, quotes, step_key, params)
        return state, (state.mid, info.bid_fill + info.ask_fill, info.pnl)

    keys = jax.random.split(jax.random.key(key), n_steps)
    return jax.lax.scan(body, state, keys)


def test_constructor_and_params_validation():
    with pytest.raises(ValueError, match=r"features.*'full'"):
        MarketMakingEnv(features="everything")
    with pytest.raises(ValueError, match=r"action_mode.*'depths'"):
        MarketMakingEnv(action_mode="prices")
    env = MarketMakingEnv()
    assert env == MarketMakingEnv() and hash(env) == hash(MarketMakingEnv())
    assert env != MarketMakingEnv("extended")
    ep = env.default_params.validate()
    assert ep.phi == 0.01 and ep.as_gamma == 0.1 and ep.reward == "inventory_penalty"
    assert ep.market == mm.presets.homework() and ep.max_steps_in_episode == N_STEPS
    for changes, field in [
        ({"reward": "sharpe"}, "reward"),
        ({"phi": -0.1}, "phi"),
        ({"as_gamma": math.nan}, "as_gamma"),
        ({"inventory_scale": 0.0}, "inventory_scale"),
        ({"market": ep.market.replace(k=-1.0)}, "k"),
    ]:
        with pytest.raises(ValueError, match=field):
            ep.replace(**changes).validate()
    with pytest.raises(ValueError, match="reward"):
        env.step(
            jax.random.key(0),
            env.reset(jax.random.key(0), ep)[1],
            jnp.ones(2),
            ep.replace(reward="sharpe"),
        )


# "extended" holds every feature (the other sets are its columns: test_features_by_hand)
@pytest.mark.parametrize("features, action_mode", [("extended", "depths"), ("full", "as_skew")])
def test_random_episode_stays_in_spaces_and_terminates_at_session_end(features, action_mode):
    env = MarketMakingEnv(features, action_mode)
    ep = env.default_params
    action_space, observation_space = env.action_space(ep), env.observation_space(ep)
    assert observation_space.shape == (len(FEATURE_SETS[features]),) == (env.n_features,)
    assert action_space.shape == (2,) == (env.num_actions,)
    n = N_STEPS + 7  # crosses the auto-reset
    reset_obs, (obs, state, reward, terminated, truncated, info) = run_env(
        env, ep, n, jax.random.key(1), lambda key, obs: action_space.sample(key)
    )
    chex.assert_shape(obs, (n, env.n_features))
    assert obs.dtype == jnp.float32 and reward.dtype == market.float_dtype()
    chex.assert_tree_all_finite((obs, state, reward))
    low, high = np.asarray(observation_space.low), np.asarray(observation_space.high)
    assert np.all((low <= np.asarray(obs)) & (np.asarray(obs) <= high))
    assert bool(observation_space.contains(reset_obs))
    expected_end = np.arange(n) == N_STEPS - 1
    np.testing.assert_array_equal(terminated, expected_end)
    assert not np.any(truncated)
    np.testing.assert_array_equal(info["discount"], 1.0 - expected_end)
    # auto-reset: the step that ends the session returns the fresh state and observation ...
    np.testing.assert_array_equal(state.t, (np.arange(n) + 1) % N_STEPS)
    np.testing.assert_array_equal(obs[N_STEPS - 1], reset_obs)
    # ... and the terminal observation in info["final_observation"]
    if "time_left" in env.feature_names:
        time_left = info["final_observation"][:, env.feature_names.index("time_left")]
        np.testing.assert_allclose(time_left[N_STEPS - 1], 0.0, atol=0)
        np.testing.assert_allclose(time_left[N_STEPS - 2], 1 / N_STEPS, rtol=1e-6)


def test_step_env_is_market_step_on_the_same_key():
    env = MarketMakingEnv()
    ep = env.default_params
    state, _ = state_after(ep.market, 37)
    key = jax.random.key(5)
    action = jnp.array([0.3, 1.2], jnp.float32)
    obs, next_state, reward, terminated, info = jax.jit(env.step_env)(key, state, action, ep)
    quotes = mm.Quotes(action[0], action[1])
    expected_state, step_info = jax.jit(market.step)(state, quotes, key, ep.market)
    chex.assert_trees_all_equal(next_state, expected_state)
    np.testing.assert_array_equal(obs, env.observation(expected_state, ep))
    assert not bool(terminated)
    # the reward by hand, in float64, from the market's fills and mids
    q_next = float(expected_state.inventory)
    dpnl = (
        float(step_info.bid_fill) * 0.3
        + float(step_info.ask_fill) * 1.2
        + q_next * (float(expected_state.mid) - float(state.mid))
    )
    assert float(reward) == pytest.approx(dpnl - 0.01 * q_next**2, abs=1e-5)
    assert float(info["pnl"]) == pytest.approx(dpnl, abs=1e-5)
    # gymnax's step passes the step through unchanged when the session goes on
    step_key = jax.random.split(key)[0]
    via_step = env.step(key, state, action, ep)
    via_step_env = jax.jit(env.step_env)(step_key, state, action, ep)
    chex.assert_trees_all_equal(via_step[:3], via_step_env[:3])


@pytest.mark.parametrize("price_model", ["arithmetic", "geometric"])
def test_reward_formulas(price_model):
    env = MarketMakingEnv()
    p = mm.presets.homework().replace(vol_switch_step=10, vol_switch_factor=2.0)
    p = p.replace(price_model=price_model, sigma=2.0 if price_model == "arithmetic" else 0.02)
    action = jnp.array([0.4, 0.8], jnp.float32)
    step_env = jax.jit(env.step_env)
    for t_index, factor in [(9, 1.0), (10, 2.0)]:
        state = market.reset(jax.random.key(0), p).replace(
            t=jnp.int32(t_index), inventory=jnp.float32(3.0)
        )
        key = jax.random.key(t_index)
        _, next_state, _, _, info = step_env(key, state, action, EnvParams(market=p))
        q_next = float(next_state.inventory)
        dpnl = float(info["pnl"])
        sigma_price = p.sigma * factor * (float(state.mid) if price_model == "geometric" else 1.0)
        expected = {
            "pnl": dpnl,
            "inventory_penalty": dpnl - 0.05 * q_next**2,
            "variance": dpnl - 0.05 * sigma_price**2 * p.dt * q_next**2,
        }
        for kind, value in expected.items():
            ep = EnvParams(market=p, phi=0.05, reward=kind)
            reward = step_env(key, state, action, ep)[2]
            assert float(reward) == pytest.approx(value, rel=1e-5, abs=1e-6), kind


def test_features_by_hand():
    env = MarketMakingEnv("extended")
    ep = env.default_params
    p = ep.market
    n = 30
    state, (mids, fills, pnl) = state_after(p, n, key=3)
    obs = np.asarray(env.observation(state, ep), np.float64)
    mids = np.concatenate([[p.S0], np.asarray(mids, np.float64)])
    returns = np.diff(mids)[-20:]
    tau = p.T - n * p.dt
    as_spread = 0.1 * p.sigma**2 * tau + (2 / 0.1) * math.log(1 + 0.1 / p.k)
    expected = {
        "inventory": float(state.inventory) / 10.0,
        "mid_change": (mids[-1] - p.S0) / (2.0 * math.sqrt(p.T)),
        "time_left": (N_STEPS - n) / N_STEPS,
        "volatility": math.sqrt(np.sum(returns**2) / (20 * p.dt)) / 2.0,
        "as_spread": as_spread / (2 / p.k),
        "fill_rate": float(np.sum(np.asarray(fills)[-20:])) / 20,
        "pnl": float(np.sum(np.asarray(pnl, np.float64))) / 50.0,
    }
    assert env.feature_names == tuple(expected)
    np.testing.assert_allclose(obs, list(expected.values()), rtol=2e-5, atol=1e-6)
    # every feature set of the Poisson market is the named columns of the extended one (the
    # "hawkes" set adds the Hawkes intensities, checked in test_hawkes)
    for features, names in FEATURE_SETS.items():
        if not set(names) <= set(env.feature_names):
            continue  # a feature of a market extension (alpha: tests/test_alpha.py)
        subset = MarketMakingEnv(features).observation(state, ep)
        columns = [env.feature_names.index(name) for name in names]
        np.testing.assert_array_equal(subset, np.asarray(env.observation(state, ep))[columns])
    # at the start: no inventory, no move, all the session left, the prior volatility sigma
    start = env.reset(jax.random.key(0), ep)[0]
    np.testing.assert_allclose(
        start, [0, 0, 1, 1, (0.4 + 20 * math.log(1 + 0.1 / 1.5)) * 0.75, 0, 0], rtol=1e-6
    )


def test_depth_actions_are_clipped():
    env = MarketMakingEnv()
    ep = env.default_params
    state = market.reset(jax.random.key(0), ep.market)
    quotes = env.quotes(jnp.array([-1.0, 9.0]), state, ep)
    assert (float(quotes.bid_depth), float(quotes.ask_depth)) == pytest.approx((0.01, 5.0))
    quotes = env.quotes(jnp.array([0.37, 2.5]), state, ep)
    assert (float(quotes.bid_depth), float(quotes.ask_depth)) == pytest.approx((0.37, 2.5))


@pytest.mark.parametrize("t_index, q", [(0, 0.0), (50, 2.0), (150, -3.0), (199, 6.0)])
def test_as_skew_quotes_against_the_formula(t_index, q):
    env = MarketMakingEnv(action_mode="as_skew")
    ep = env.default_params.replace(as_gamma=0.2)
    p = ep.market
    state = market.reset(jax.random.key(0), p).replace(
        t=jnp.int32(t_index), inventory=jnp.float32(q)
    )
    tau = p.T - t_index * p.dt
    for log10_mult, skew in [(0.0, 0.0), (-1.0, 0.5), (0.7, -0.8), (-2.0, 1.0), (3.0, -4.0)]:
        gamma = 0.2 * 10 ** min(max(log10_mult, -2.0), 1.0)
        skew = min(max(skew, -1.0), 1.0)
        half = 0.5 * (gamma * p.sigma**2 * tau + (2 / gamma) * math.log(1 + gamma / p.k))
        offset = q * gamma * p.sigma**2 * tau
        bid = min(max(half + offset - skew * half, 0.01), 5.0)
        ask = min(max(half - offset + skew * half, 0.01), 5.0)
        quotes = env.quotes(jnp.array([log10_mult, skew]), state, ep)
        got = (float(quotes.bid_depth), float(quotes.ask_depth))
        assert got == pytest.approx((bid, ask), rel=1e-5), (log10_mult, skew)
    # the neutral action is the A-S policy wherever its depths lie inside [0.01, 5]
    as_quotes = mm.policies.avellaneda_stoikov(0.2)(state, p)
    neutral = env.quotes(jnp.zeros(2), state, ep)
    for depth, as_depth in [
        (neutral.bid_depth, as_quotes.bid_depth),
        (neutral.ask_depth, as_quotes.ask_depth),
    ]:
        if 0.01 <= float(as_depth) <= 5.0:
            assert float(depth) == pytest.approx(float(as_depth), rel=1e-6)


def test_log_and_flatten_wrappers_through_the_five_value_api():
    env = MarketMakingEnv()
    ep = env.default_params
    legacy = LegacyStepAPIWrapper(LogWrapper(FlattenObservationWrapper(env)))
    assert legacy.observation_space(ep).shape == (5,) and legacy.name == env.name
    action = jnp.array([0.7, 0.7])
    n = N_STEPS + 3

    def run(key):
        _, state = legacy.reset(jax.random.key(0), ep)

        def body(state, step_key):
            outputs = legacy.step(step_key, state, action, ep)
            assert len(outputs) == 5  # (obs, state, reward, done, info)
            return outputs[1], outputs[2:]

        return jax.lax.scan(body, state, jax.random.split(key, n))[1]

    reward, done, info = jax.jit(run)(jax.random.key(2))
    np.testing.assert_array_equal(done, np.arange(n) == N_STEPS - 1)
    np.testing.assert_array_equal(info["returned_episode"], done)
    episode_return = float(np.sum(np.asarray(reward[:N_STEPS], np.float64)))
    assert float(info["returned_episode_returns"][N_STEPS - 1]) == pytest.approx(
        episode_return, rel=1e-5, abs=1e-3
    )
    assert int(info["returned_episode_lengths"][N_STEPS - 1]) == N_STEPS

    # copies and pickles of the wrapped environment work and step identically
    _, state = legacy.reset(jax.random.key(0), ep)
    expected = legacy.step(jax.random.key(3), state, jnp.array([0.5, 1.0]), ep)
    for clone in (copy.deepcopy(legacy), pickle.loads(pickle.dumps(legacy))):
        assert clone.num_actions == 2
        got = clone.step(jax.random.key(3), state, jnp.array([0.5, 1.0]), ep)
        chex.assert_trees_all_equal(got[:4], expected[:4])


def test_vmap_over_env_params():
    env = MarketMakingEnv()
    ep = env.default_params
    state, _ = state_after(ep.market, 20)
    state = state.replace(inventory=jnp.float32(4.0))
    phis = jnp.array([0.0, 0.01, 0.1, 0.5])
    axes = jax.tree.map(lambda _: None, ep).replace(phi=0)
    step = jax.vmap(env.step, in_axes=(None, None, None, axes))
    _, next_state, reward, *_ = step(
        jax.random.key(4), state, jnp.array([0.5, 0.5]), ep.replace(phi=phis)
    )
    chex.assert_shape(reward, (4,))
    for leaf in jax.tree.leaves(next_state):  # phi does not change the dynamics
        np.testing.assert_array_equal(leaf, jnp.broadcast_to(leaf[0], leaf.shape))
    _, single, single_reward, *_ = env.step(jax.random.key(4), state, jnp.array([0.5, 0.5]), ep)
    q_next = float(single.inventory)
    dpnl = float(single_reward) + 0.01 * q_next**2
    np.testing.assert_allclose(reward, dpnl - np.asarray(phis) * q_next**2, rtol=1e-5)
    # a sweep over a market parameter in one program: the volatility feature sees sigma
    sigmas = jnp.array([1.0, 2.0, 4.0])
    market_axes = jax.tree.map(lambda _: None, ep.market).replace(sigma=0)
    reset = jax.vmap(
        env.reset, in_axes=(None, jax.tree.map(lambda _: None, ep).replace(market=market_axes))
    )
    reset_obs, _ = reset(jax.random.key(0), ep.replace(market=ep.market.replace(sigma=sigmas)))
    np.testing.assert_allclose(reset_obs[:, 3], np.asarray(sigmas) / 2.0)


def test_float64_market_gives_float64_rewards_and_float32_observations():
    with jax.enable_x64(True):
        env = MarketMakingEnv()
        ep = env.default_params
        obs, state = env.reset(jax.random.key(0), ep)
        obs, state, reward, *_ = env.step(jax.random.key(1), state, jnp.array([0.5, 0.5]), ep)
        assert reward.dtype == jnp.float64 and state.mid.dtype == jnp.float64
        assert obs.dtype == jnp.float32


def test_gymnasium_adapter():
    env = MarketMakingEnv()
    gym_env = env.gymnasium(env.default_params, seed=7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # advice about unbounded boxes and render modes
        check_env(gym_env, skip_render_check=True)
    action = np.array([0.6, 0.9], np.float32)
    obs, _ = gym_env.reset(seed=11)
    assert obs.dtype == np.float32 and gym_env.observation_space.contains(obs)
    rewards, steps = [], 0
    terminated = False
    while not terminated:
        obs, reward, terminated, truncated, _ = gym_env.step(action)
        rewards.append(reward)
        steps += 1
        assert not truncated and isinstance(reward, float)
    assert steps == N_STEPS and obs[2] == 0.0
    with pytest.raises(RuntimeError, match="reset"):
        gym_env.step(action)
    # the same seed and actions give the same episode; copies continue identically
    gym_env.reset(seed=11)
    assert [gym_env.step(action)[1] for _ in range(N_STEPS)] == rewards
    gym_env.reset(seed=11)
    gym_env.step(action)
    clones = [copy.deepcopy(gym_env), pickle.loads(pickle.dumps(gym_env))]
    expected = gym_env.step(action)
    for clone in clones:
        got = clone.step(action)
        np.testing.assert_array_equal(got[0], expected[0])
        assert got[1:4] == expected[1:4]


def test_as_policy_runs_in_simulate_on_the_simulator_paths():
    env = MarketMakingEnv()
    ep = env.default_params
    p = ep.market

    # a linear "network": depths = bias + weights @ obs, with inventory and volatility inputs
    weights = jnp.array([[2.0, 0.0, 0.0, 0.3, 0.0], [-2.0, 0.0, 0.0, 0.3, 0.0]], jnp.float32)
    bias = jnp.array([0.6, 0.6], jnp.float32)
    policy = env.as_policy(jax.tree_util.Partial(lambda w, b, obs: b + w @ obs, weights, bias), ep)

    def direct(state, params):
        vol = market.trailing_volatility(state, params) / 2.0
        return mm.Quotes(
            bid_depth=jnp.clip(0.6 + 2.0 * state.inventory / 10.0 + 0.3 * vol, 0.01, 5.0),
            ask_depth=jnp.clip(0.6 - 2.0 * state.inventory / 10.0 + 0.3 * vol, 0.01, 5.0),
        )

    key = jax.random.key(8)
    got = mm.simulate(p, policy, key, n_episodes=64, paths=True)
    expected = mm.simulate(p, direct, key, n_episodes=64, paths=True)
    np.testing.assert_allclose(got.paths.bid, expected.paths.bid, rtol=1e-6)
    np.testing.assert_allclose(got.pnl, expected.pnl, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(got.n_bid_fills, expected.n_bid_fills)
    # the policy follows the market simulate passes (here a doubled sigma)
    vol_policy = env.as_policy(lambda obs: jnp.full((2,), 0.5) + obs[3], ep)
    wide = mm.simulate(p.replace(sigma=4.0), vol_policy, key, n_episodes=8, paths=True)
    first_half_spread = np.asarray(wide.paths.mid[:, 0] - wide.paths.bid[:, 0])
    np.testing.assert_allclose(first_half_spread, 0.5 + 4.0 / 2.0, rtol=1e-6)
