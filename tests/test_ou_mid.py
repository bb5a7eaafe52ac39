"""The Ornstein-Uhlenbeck mid (``price_model="ou"``): the exact step, the terminal law against
its closed form within standard errors, the random-walk limit, and clear errors."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmm as mm
from jaxmm import market, optimal
from tests.helpers import assert_env_steps


def ou(**kwargs):
    return mm.presets.homework().replace(price_model="ou", **kwargs)


def test_terminal_mid_has_the_exact_ou_law():
    """Mean ``m + (S0 - m) e^{-kappa T}`` and variance ``sigma^2 (1 - e^{-2 kappa T}) / (2
    kappa)`` of the mid after the session (20,000 episodes, seed 0, within 4 standard errors)."""
    rate, level = 3.0, 101.0
    params = ou(ou_rate=rate, ou_level=level)
    rollout = mm.simulate(params, mm.policies.symmetric(1.0), jax.random.key(0), 20_000, paths=True)
    final = np.asarray(rollout.paths.mid[:, -1], np.float64)
    mean = level + (params.S0 - level) * math.exp(-rate * params.T)
    var = params.sigma**2 * -math.expm1(-2 * rate * params.T) / (2 * rate)
    n = final.size
    assert abs(final.mean() - mean) < 4 * math.sqrt(var / n)
    assert abs(final.var(ddof=1) - var) < 4 * var * math.sqrt(2 / (n - 1))
    # mean reversion is real: the random walk's variance would be sigma^2 T = 4
    assert var < 0.5 * params.sigma**2 * params.T


def test_one_step_is_the_exact_transition():
    rate, level = 3.0, 99.0
    params = ou(ou_rate=rate, ou_level=level)
    state = market.reset(jax.random.key(0), params).replace(mid=jnp.asarray(102.0))
    noise = market.draw_noise(jax.random.key(7))
    quotes = mm.Quotes(bid_depth=jnp.inf, ask_depth=jnp.inf)
    new, _ = market.step_with_noise(state, quotes, noise, params)
    dt = params.dt
    z = float(market.normal_from_uniform(noise.u_mid))
    expected = level + (102.0 - level) * math.exp(-rate * dt)
    expected += params.sigma * math.sqrt(-math.expm1(-2 * rate * dt) / (2 * rate)) * z
    assert float(new.mid) == pytest.approx(expected, rel=1e-6)


def test_slow_reversion_is_the_random_walk():
    """``ou_rate -> 0`` gives the arithmetic mid on the same noise."""
    key = jax.random.key(3)
    policy = mm.policies.avellaneda_stoikov(0.1)
    walk = mm.simulate(mm.presets.homework(), policy, key, 200, paths=True)
    slow = mm.simulate(ou(ou_rate=1e-6), policy, key, 200, paths=True)
    np.testing.assert_allclose(slow.paths.mid, walk.paths.mid, atol=2e-3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"price_model": "ou"}, "ou_rate"),
        ({"ou_rate": 1.0}, "ou_rate"),
        ({"ou_level": 100.0}, "ou_level"),
        ({"price_model": "ou", "ou_rate": 0.0}, "ou_rate"),
        ({"price_model": "ou", "ou_rate": 1.0, "mu": 0.5}, "mu"),
    ],
)
def test_bad_ou_settings_are_refused_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mm.presets.homework().replace(**kwargs).validate()


def test_exact_solvers_refuse_the_ou_mid():
    with pytest.raises(ValueError, match="price_model"):
        optimal.bellman(ou(ou_rate=1.0), 0.01)


def test_environment_steps_the_ou_market():
    assert_env_steps(ou(ou_rate=2.0))


def test_ppo_config_trains_and_scores_on_the_ou_mid():
    """``--ou-rate``: the market is Ornstein-Uhlenbeck, and the evaluation, with no exact
    optimum, scores every strategy against the mean-reversion-blind table simulated on the
    same paths (its own gap 0; labelled as the best known table)."""
    from train import evaluate
    from train.config import PPOConfig, market_env

    with pytest.raises(ValueError, match="ou_rate"):
        PPOConfig(ou_rate=-1.0).validate()
    with pytest.raises(ValueError, match="ou_rate"):
        PPOConfig(ou_level=100.0).validate()
    config = PPOConfig(ou_rate=5.0).validate()
    _, env_params = market_env(config)
    assert env_params.market.price_model == "ou"
    assert float(env_params.market.ou_level) == float(env_params.market.S0)
    assert evaluate.reference_kind(env_params) == evaluate.OU_REFERENCE_TABLE
    solution = evaluate.optimal_solution(env_params)
    blind = env_params.market.replace(price_model="arithmetic", ou_rate=None, ou_level=None)
    assert solution.value_at(0, 0) == pytest.approx(optimal.bellman(blind, 0.01).value_at(0, 0))
    result = evaluate.compare(
        env_params, evaluate.benchmark_policies(config), jax.random.key(0), 500, solution
    )
    assert result["optimal_reward"] is None
    assert result["reference"] == evaluate.OU_REFERENCE_TABLE
    assert result["eval"][evaluate.OU_REFERENCE_TABLE]["gap_to_reference"] == 0.0
    a_s = result["eval"]["avellaneda_stoikov"]
    assert a_s["gap_to_reference"] > 4 * a_s["gap_to_reference_stderr"]  # the table is better
    assert "mean-reversion-blind" in evaluate.format_comparison(result)
