"""Shared test helpers: assertions and small computations that several test files make.

Importable as ``from tests.helpers import ...``. The child-process helpers live in
``tests/conftest.py``; the independent oracles in ``tests/oracles/``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmm as mm
from jaxmm import market


def replay_noise(key, n_episodes, params):
    """Every uniform and normal ``mm.simulate(params, ..., key, n_episodes)`` gives episode
    ``i`` at step ``t``, as ``[n_episodes, n_steps]`` float64 arrays named as the NumPy oracle's
    arguments (``u_bid``, ``u_ask``, ``z`` and the extensions' ``z_vol``, ``u_jump_count``,
    ``z_jump``, ``u_bid_size``, ``u_ask_size``; ``None`` where ``params`` draws none)."""
    stream = market.stream_key(key)
    episodes = jnp.arange(n_episodes, dtype=jnp.uint32)[:, None]
    t = jnp.arange(params.n_steps, dtype=jnp.uint32)[None, :]
    drawn = market.extension_noise(market.counter_noise(stream, episodes, t), params)
    normal = market.normal_from_uniform
    arrays = {
        "u_bid": drawn.u_bid,
        "u_ask": drawn.u_ask,
        "z": normal(drawn.u_mid),
        "z_vol": None if drawn.u_vol is None else normal(drawn.u_vol),
        "u_jump_count": drawn.u_jump_count,
        "z_jump": None if drawn.u_jump_size is None else normal(drawn.u_jump_size),
        "u_bid_size": drawn.u_bid_size,
        "u_ask_size": drawn.u_ask_size,
    }
    return {name: None if x is None else np.asarray(x, np.float64) for name, x in arrays.items()}


def assert_paths_match_reference(ro, ref: dict) -> None:
    """A float64 ``mm.simulate(..., paths=True)`` rollout ``ro`` equals the NumPy oracle's
    ``ref = simulate_reference(...)`` on the same noise: fills and inventories exactly, the mid
    and PnL paths and the PnL split within 1e-9 (price units)."""
    np.testing.assert_array_equal(ro.paths.bid_fill, ref["bid_fill"])
    np.testing.assert_array_equal(ro.paths.ask_fill, ref["ask_fill"])
    np.testing.assert_array_equal(ro.paths.inventory, ref["inventory"])
    np.testing.assert_allclose(ro.paths.mid, ref["mid"], atol=1e-9)
    np.testing.assert_allclose(ro.paths.pnl, ref["pnl"], atol=1e-9)
    np.testing.assert_allclose(ro.spread_pnl, ref["spread_pnl"], atol=1e-9)
    np.testing.assert_allclose(ro.inventory_pnl, ref["inventory_pnl"], atol=1e-9)


def assert_validation_names(changes: dict, field: str, allowed: str) -> None:
    """``homework().replace(**changes).validate()`` raises a ValueError that names ``field``
    (a regular expression) and states the allowed range (``allowed``, a substring)."""
    p = mm.presets.homework().replace(**changes)
    with pytest.raises(ValueError, match=field) as info:
        p.validate()
    assert allowed in str(info.value)


def assert_env_steps(market: mm.MarketParams) -> None:
    """The gymnax environment on ``market`` resets and takes three jitted steps at the action
    ``(0.5, 0.5)`` with finite observations and rewards (so PPO can train on it)."""
    env = mm.env.MarketMakingEnv()
    params = env.default_params.replace(market=market)
    key = jax.random.key(1)
    obs, state = env.reset(key, params)
    step = jax.jit(env.step)
    for _ in range(3):
        obs, state, reward, *_ = step(key, state, jnp.array([0.5, 0.5]), params)
    assert np.isfinite(np.asarray(obs)).all() and np.isfinite(float(reward))


def fill_outcomes(p_bid: float, p_ask: float) -> list[tuple[int, int, float]]:
    """The four outcomes of one step's independent bid and ask fills, as ``(bid_fill,
    ask_fill, probability)`` with fills in {0, 1}, leaving out those of probability zero."""
    outcomes = (
        (0, 0, (1 - p_bid) * (1 - p_ask)),
        (1, 0, p_bid * (1 - p_ask)),
        (0, 1, (1 - p_bid) * p_ask),
        (1, 1, p_bid * p_ask),
    )
    return [outcome for outcome in outcomes if outcome[2] != 0.0]
