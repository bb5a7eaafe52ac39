"""The one reward definition (jaxmm.rewards) against sums taken by hand from simulated paths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmm as mm
from jaxmm import rewards


def by_hand(rollout: mm.Rollout, coefficients: np.ndarray) -> np.ndarray:
    """``sum_t (PnL_{t+1} - PnL_t) - c_t q_{t+1}^2`` from the paths, in float64."""
    pnl = np.asarray(rollout.paths.pnl, np.float64)
    inventory = np.asarray(rollout.paths.inventory, np.float64)
    increments = np.diff(pnl, axis=1)
    return np.sum(increments - coefficients * inventory[:, 1:] ** 2, axis=1)


@pytest.mark.parametrize("switch", [False, True])
def test_episode_reward_is_the_sum_of_step_rewards(switch):
    p = mm.presets.homework().replace(n_steps=50)
    if switch:
        p = p.replace(vol_switch_step=20, vol_switch_factor=2.0)
    policy = mm.policies.avellaneda_stoikov(gamma=0.1, k=1.5)
    rollout = mm.simulate(p, policy, jax.random.key(4), 300, paths=True)
    phi = 0.3
    sigma_t = 2.0 * np.where(np.arange(50) >= (20 if switch else 10**9), 2.0, 1.0)
    expected = {
        "pnl": np.zeros(50),
        "inventory_penalty": np.full(50, phi),
        "variance": phi * sigma_t**2 * p.dt,
    }
    for reward, coefficients in expected.items():
        np.testing.assert_allclose(rewards.penalty_schedule(p, phi, reward), coefficients)
        ours = np.asarray(rewards.episode_reward(rollout, phi, reward, p), np.float64)
        np.testing.assert_allclose(ours, by_hand(rollout, coefficients), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(rollout.reward(phi), rewards.episode_reward(rollout, phi))


def test_variance_reward_needs_paths_only_when_the_volatility_moves():
    p = mm.presets.homework()
    assert not rewards.needs_paths(p, "variance")
    assert rewards.needs_paths(p.replace(vol_switch_step=100, vol_switch_factor=2.0), "variance")
    assert not rewards.needs_paths(p.replace(vol_switch_step=100), "inventory_penalty")
    summary_only = mm.simulate(
        p.replace(vol_switch_step=100, vol_switch_factor=2.0),
        mm.policies.symmetric(0.7),
        jax.random.key(0),
        8,
    )
    with pytest.raises(ValueError, match="paths=True"):
        rewards.episode_reward(
            summary_only, 0.1, "variance", p.replace(vol_switch_step=100, vol_switch_factor=2.0)
        )


def test_step_reward_and_coefficient_of_one_step():
    p = mm.presets.homework()
    c = rewards.penalty_coefficient(jnp.asarray(3), p, 0.5, "variance")
    assert float(c) == pytest.approx(0.5 * 4.0 * p.dt)
    assert float(rewards.step_reward(jnp.float32(1.0), jnp.float32(-3.0), c)) == pytest.approx(
        1.0 - 9.0 * 0.5 * 4.0 * p.dt
    )


def test_unknown_reward_is_named():
    with pytest.raises(ValueError, match="reward = 'sharpe'; allowed: one of"):
        rewards.check("sharpe")
    with pytest.raises(ValueError, match=r"EnvParams\.reward"):
        mm.env.EnvParams(reward="sharpe").validate()
