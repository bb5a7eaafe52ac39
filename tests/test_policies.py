"""Quoting rules against hand-computed values, limits and symmetries."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmm as mm
from jaxmm import market


def obs_at(p, t_index, q, mid=100.0):
    state = market.reset(jax.random.key(0), p)
    return state.replace(
        t=jnp.asarray(t_index, jnp.int32),
        inventory=jnp.asarray(q, jnp.float32),
        mid=jnp.asarray(mid, jnp.float32),
    )


def test_avellaneda_stoikov_hand_computed():
    # Seed 000's example: S = 100, gamma = 0.1, sigma = 2, T - t = 0.5, k = 1.5.
    p = mm.presets.homework()
    pol = mm.policies.avellaneda_stoikov(gamma=0.1, k=1.5)
    obs = obs_at(p, 100, 0.0)  # t = 100 * 0.005 = 0.5
    spread = 0.1 * 4 * 0.5 + (2 / 0.1) * math.log(1 + 0.1 / 1.5)  # = 1.4908, not the seed's 2.60
    assert float(pol.spread(obs, p)) == pytest.approx(spread, rel=1e-6)
    quotes = pol(obs, p)
    assert float(quotes.bid_depth) == pytest.approx(spread / 2, rel=1e-6)
    assert float(quotes.ask_depth) == pytest.approx(spread / 2, rel=1e-6)
    # Long 5: reservation price 100 - 5 * 0.1 * 4 * 0.5 = 99; quotes 99 -+ spread / 2.
    quotes = pol(obs_at(p, 100, 5.0), p)
    assert 100 - float(quotes.bid_depth) == pytest.approx(99 - spread / 2, abs=1e-5)
    assert 100 + float(quotes.ask_depth) == pytest.approx(99 + spread / 2, abs=1e-5)


def test_avellaneda_stoikov_gamma_zero_limit_without_nan():
    p = mm.presets.homework()
    obs = obs_at(p, 0, 3.0)
    at_zero = mm.policies.avellaneda_stoikov(0.0)(obs, p)
    assert float(at_zero.bid_depth) == pytest.approx(1 / 1.5, rel=1e-6)
    assert float(at_zero.ask_depth) == pytest.approx(1 / 1.5, rel=1e-6)
    tiny = mm.policies.avellaneda_stoikov(1e-7)(obs, p)
    assert float(tiny.bid_depth) == pytest.approx(1 / 1.5, rel=1e-5)

    def spread(gamma):
        return mm.policies.avellaneda_stoikov(gamma).spread(obs, p)

    grad = jax.grad(spread)(0.0)
    # d/dgamma [sigma^2 tau gamma + (2/gamma) ln(1 + gamma/k)] at 0 = sigma^2 tau - 1/k^2
    assert float(grad) == pytest.approx(4.0 * 1.0 - 1 / 1.5**2, rel=1e-4)


def test_avellaneda_stoikov_symmetric_variant_centres_on_mid():
    p = mm.presets.as2008()
    obs = obs_at(p, 40, 4.0)
    skewed = mm.policies.avellaneda_stoikov(0.1)(obs, p)
    centred = mm.policies.avellaneda_stoikov(0.1, skew=False)(obs, p)
    assert float(centred.bid_depth) == float(centred.ask_depth)
    total = float(centred.bid_depth + centred.ask_depth)
    assert total == pytest.approx(float(skewed.bid_depth + skewed.ask_depth), rel=1e-6)


@pytest.mark.parametrize(
    "policy",
    [
        mm.policies.avellaneda_stoikov(0.1),
        mm.policies.glft(0.1),
        mm.policies.avellaneda_stoikov(0.0),
    ],
)
def test_bid_of_q_equals_ask_of_minus_q(policy):
    p = mm.presets.homework()
    for t_index in (0, 57, 199):
        for q in (0.0, 1.0, 3.0, 12.0):
            plus = policy(obs_at(p, t_index, q), p)
            minus = policy(obs_at(p, t_index, -q), p)
            assert float(plus.bid_depth) == pytest.approx(float(minus.ask_depth), abs=1e-6)
            assert float(plus.ask_depth) == pytest.approx(float(minus.bid_depth), abs=1e-6)


def test_glft_closed_form_against_direct_float64_formula():
    gamma, k, A, sigma = 0.1, 1.5, 140.0, 2.0
    p = mm.presets.homework()
    pol = mm.policies.glft(gamma, k, A, sigma)
    c = math.log(1 + gamma / k) / gamma
    w = math.sqrt(sigma**2 * gamma / (2 * k * A) * (1 + gamma / k) ** (1 + k / gamma))
    for q in (-3.0, 0.0, 2.0):
        quotes = pol(obs_at(p, 0, q), p)
        assert float(quotes.bid_depth) == pytest.approx(c + (2 * q + 1) / 2 * w, rel=1e-5)
        assert float(quotes.ask_depth) == pytest.approx(c - (2 * q - 1) / 2 * w, rel=1e-5)


def test_glft_gamma_to_zero_tends_to_one_over_k():
    p = mm.presets.homework()
    quotes = mm.policies.glft(0.0)(obs_at(p, 0, 5.0), p)
    assert float(quotes.bid_depth) == pytest.approx(1 / 1.5, rel=1e-6)
    assert float(quotes.ask_depth) == pytest.approx(1 / 1.5, rel=1e-6)


def test_policy_arguments_are_validated():
    with pytest.raises(ValueError, match="gamma"):
        mm.policies.avellaneda_stoikov(-0.1)
    with pytest.raises(ValueError, match="k"):
        mm.policies.avellaneda_stoikov(0.1, k=0.0)
    with pytest.raises(ValueError, match="A"):
        mm.policies.glft(0.1, A=0.0)
    with pytest.raises(ValueError, match="half_spread"):
        mm.policies.symmetric(float("nan"))


def test_policies_vmap_over_their_parameters():
    p = mm.presets.homework()
    obs = obs_at(p, 0, 2.0)
    gammas = jnp.array([0.01, 0.1, 1.0])
    depths = jax.vmap(lambda g: mm.policies.avellaneda_stoikov(g)(obs, p).bid_depth)(gammas)
    single = [float(mm.policies.avellaneda_stoikov(float(g))(obs, p).bid_depth) for g in gammas]
    np.testing.assert_allclose(depths, single, rtol=1e-6)
