"""The gymnax wrappers of the training environment: ``RegimeWrapper`` (a volatility regime per
episode) and ``StaggerWrapper`` (the first episode starts at a random point of the session).
Statistical checks use fixed keys and state their tolerance in standard errors."""

import copy
import pickle

import jax
import numpy as np

from jaxmm.env import (
    MarketMakingEnv,
    RegimeRandomization,
    RegimeState,
    RegimeWrapper,
    StaggerState,
    StaggerWrapper,
    unwrap_state,
)
from jaxmm.params import NEVER

ENV = MarketMakingEnv()
PARAMS = ENV.default_params
REGIMES = RegimeRandomization(switch_prob=0.4, step_low=10, step_high=190).validate(200)


def batch_reset(env, key, n):
    return jax.jit(jax.vmap(env.reset, in_axes=(0, None)))(jax.random.split(key, n), PARAMS)


def test_stagger_offsets_are_uniform_and_the_market_is_advanced_by_them():
    n, horizon = 4000, PARAMS.max_steps_in_episode
    obs, state = batch_reset(StaggerWrapper(ENV), jax.random.key(0), n)
    assert isinstance(state, StaggerState)
    offsets = np.asarray(state.offset)
    # U{0, ..., L - 1}: full range, mean (L - 1) / 2 within 4 SE (variance (L^2 - 1) / 12)
    assert offsets.min() == 0 and offsets.max() == horizon - 1
    assert abs(offsets.mean() - (horizon - 1) / 2) < 4 * np.sqrt((horizon**2 - 1) / 12 / n)
    market = unwrap_state(state)
    np.testing.assert_array_equal(np.asarray(market.t), offsets)  # no episode ended
    # the observation is the advanced state's: time_left = (L - t) / L
    time_left = np.asarray(obs)[:, ENV.feature_names.index("time_left")]
    np.testing.assert_allclose(time_left, (horizon - offsets) / horizon, atol=1e-6)
    # random actions moved the inventory and the PnL of the advanced environments
    advanced = offsets > 20
    assert np.mean(np.asarray(market.inventory)[advanced] != 0) > 0.5
    assert np.all(np.asarray(market.pnl)[offsets == 0] == 0)


def test_stagger_step_is_the_wrapped_step():
    env = StaggerWrapper(ENV)
    _, state = env.reset(jax.random.key(1), PARAMS)
    action = np.array([0.7, 0.9], np.float32)
    key = jax.random.key(2)
    obs, next_state, reward, *_ = env.step(key, state, action, PARAMS)
    expected = ENV.step(key, unwrap_state(state), action, PARAMS)
    np.testing.assert_array_equal(obs, expected[0])
    np.testing.assert_array_equal(reward, expected[2])
    assert next_state.offset == state.offset
    assert unwrap_state(next_state).t == unwrap_state(state).t + 1


def test_regime_draws_per_episode_match_the_stated_distribution():
    n = 20_000
    _, state = batch_reset(RegimeWrapper(ENV, REGIMES), jax.random.key(3), n)
    assert isinstance(state, RegimeState)
    steps = np.asarray(state.env_params.market.vol_switch_step)
    switched = steps != NEVER
    assert abs(switched.mean() - 0.4) < 4 * np.sqrt(0.4 * 0.6 / n)
    s = steps[switched]
    assert s.min() == 10 and s.max() == 190
    assert abs(s.mean() - 100.0) < 4 * np.sqrt((181**2 - 1) / 12 / s.size)
    np.testing.assert_array_equal(np.asarray(state.env_params.market.sigma), PARAMS.market.sigma)
    np.testing.assert_array_equal(np.asarray(unwrap_state(state).t), 0)


def test_regime_is_kept_within_an_episode_and_redrawn_into_a_fresh_reset_at_its_end():
    regimes = RegimeRandomization(switch_prob=1.0, step_low=1, step_high=199).validate(200)
    env = RegimeWrapper(ENV, regimes)
    n, horizon = 64, PARAMS.max_steps_in_episode
    _, state = batch_reset(env, jax.random.key(4), n)
    step = jax.jit(jax.vmap(env.step, in_axes=(0, 0, None, None)))
    action = np.array([0.8, 0.8], np.float32)
    first = np.asarray(state.env_params.market.vol_switch_factor)
    for i in range(horizon):
        key = jax.random.fold_in(jax.random.key(5), i)
        _, state, _, terminated, _, info = step(jax.random.split(key, n), state, action, PARAMS)
        factor = np.asarray(state.env_params.market.vol_switch_factor)
        if i < horizon - 1:
            np.testing.assert_array_equal(factor, first)
            assert not np.asarray(terminated).any()
    assert np.asarray(terminated).all()
    assert np.all(factor != first)  # log-uniform draws: never equal
    market = unwrap_state(state)
    np.testing.assert_array_equal(np.asarray(market.t), 0)
    np.testing.assert_array_equal(np.asarray(market.inventory), 0)
    assert np.asarray(info["final_observation"]).shape == (n, ENV.n_features)


def test_switched_regime_changes_the_mid_volatility():
    # every episode switches at step 1 to 3 sigma: one-step variance 9 sigma^2 dt
    regimes = RegimeRandomization(
        switch_prob=1.0, step_low=1, step_high=1, factor_low=3.0, factor_high=3.0
    ).validate(200)
    env = RegimeWrapper(ENV, regimes)
    n = 4000
    _, state = batch_reset(env, jax.random.key(6), n)
    step = jax.jit(jax.vmap(env.step, in_axes=(0, 0, None, None)))
    action = np.array([1.0, 1.0], np.float32)
    mids = []
    for i in range(3):
        key = jax.random.fold_in(jax.random.key(7), i)
        _, state, *_ = step(jax.random.split(key, n), state, action, PARAMS)
        mids.append(np.asarray(unwrap_state(state).mid, np.float64))
    change = mids[2] - mids[1]  # step 2, after the switch
    expected = 9 * PARAMS.market.sigma**2 * PARAMS.market.dt
    assert abs(np.mean(change**2) - expected) < 4 * expected * np.sqrt(2 / n)


def test_wrappers_compose_and_are_safe_to_copy():
    env = StaggerWrapper(RegimeWrapper(ENV, REGIMES), horizon=200)
    obs, state = env.reset(jax.random.key(8), PARAMS)
    assert isinstance(state.env_state, RegimeState)
    assert obs.shape == (ENV.n_features,)
    assert env.num_actions == 2  # attributes reach the wrapped environment
    for clone in (copy.deepcopy(env), pickle.loads(pickle.dumps(env))):
        again, _ = clone.reset(jax.random.key(8), PARAMS)
        np.testing.assert_array_equal(again, obs)
