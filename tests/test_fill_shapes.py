"""Fill-probability shapes (``MarketParams.fill_shape``): the intensity functions, the
simulated fill frequencies against the exact per-step probability, and the exact Bellman optimum
against a brute-force dynamic programme on a depth grid, for every shape and fill model."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmm as mm
from jaxmm import market, optimal
from tests.helpers import assert_env_steps

SHAPES = [("exponential", None), ("power", 2.5), ("linear", None)]


def shaped(shape, alpha, **kwargs):
    return mm.presets.homework().replace(fill_shape=shape, fill_shape_alpha=alpha, **kwargs)


@pytest.mark.parametrize("shape, alpha", SHAPES)
def test_shapes_start_at_one_with_log_slope_minus_k_and_agree_across_forms(shape, alpha):
    k = 1.5
    depths = np.linspace(-0.3, 2.0, 47)
    values = np.asarray(market.intensity_shape(jnp.asarray(depths), k, shape, alpha))
    np.testing.assert_allclose(
        values, market.intensity_shape_numpy(depths, k, shape, alpha), rtol=1e-5, atol=1e-7
    )
    assert float(market.intensity_shape(0.0, k, shape, alpha)) == 1.0
    with jax.enable_x64(True):
        grad = jax.vmap(jax.grad(lambda d: market.intensity_shape(d, k, shape, alpha)))
        slope = market.intensity_shape_slope(jnp.asarray(depths), k, shape, alpha)
        np.testing.assert_allclose(slope, grad(jnp.asarray(depths)), rtol=1e-12, atol=1e-12)
        assert float(grad(jnp.zeros(1))[0]) == pytest.approx(-k, rel=1e-12)
    assert np.all(np.diff(values) <= 0)  # monotone in depth


def test_limits_of_the_shapes():
    depths = np.linspace(0.0, 3.0, 31)
    power = market.intensity_shape_numpy(depths, 1.5, "power", 1e6)
    np.testing.assert_allclose(power, np.exp(-1.5 * depths), rtol=3e-5)  # alpha -> inf
    linear = market.intensity_shape_numpy(depths, 1.5, "linear")
    np.testing.assert_allclose(linear, np.maximum(0.0, 1 - 1.5 * depths), atol=1e-15)
    assert linear[depths > 1 / 1.5].max() == 0.0  # no fills beyond 1/k
    # below the mid the power base is floored: the fill is certain, and nothing is NaN
    deep = market.intensity_shape_numpy(np.array([-5.0]), 1.5, "power", 2.5)
    assert np.isfinite(deep).all() and deep[0] > 1e10


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"fill_shape": "power"}, "fill_shape_alpha"),
        ({"fill_shape": "power", "fill_shape_alpha": 1.0}, "fill_shape_alpha"),
        ({"fill_shape_alpha": 2.0}, "fill_shape_alpha"),
        ({"fill_shape": "gaussian"}, "fill_shape"),
    ],
)
def test_bad_shapes_are_refused_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mm.presets.homework().replace(**kwargs).validate()


@pytest.mark.parametrize("shape, alpha", SHAPES)
@pytest.mark.parametrize("fill_model", ["linear", "exponential"])
def test_simulated_fill_rates_match_the_shape(shape, alpha, fill_model):
    """Quotes at a fixed depth fill with the exact per-step probability (4 standard errors;
    20,000 episodes x 200 steps, seed 0)."""
    depth = 0.4
    params = shaped(shape, alpha, fill_model=fill_model)
    rollout = mm.simulate(params, mm.policies.symmetric(depth), jax.random.key(0), 20_000)
    intensity = params.A * market.intensity_shape_numpy(depth, params.k, shape, alpha)
    p = float(market.fill_probability_numpy(intensity * params.dt, fill_model))
    for fills in (rollout.n_bid_fills, rollout.n_ask_fills):
        rate = np.asarray(fills, np.float64) / params.n_steps
        se = math.sqrt(p * (1 - p) / (params.n_steps * rate.size))
        assert abs(rate.mean() - p) < 4 * se, (rate.mean(), p, se)


def brute_force_value(params, phi, bounds, n_grid=301):
    """The same MDP solved by searching a depth grid for both sides jointly (NumPy, float64)."""
    q_top = int(params.q_max)
    qs = np.arange(-q_top, q_top + 1)
    grid = np.linspace(*bounds, n_grid)
    # the depth where A s(d) dt = 1 (the cap of the linear fill model: a kink of the objective,
    # where the optimum often sits), put on the grid exactly
    reach = params.A * params.dt
    k, alpha = params.k, params.fill_shape_alpha
    kink = {
        "exponential": math.log(reach) / k,
        "power": alpha / k * (reach ** (1 / alpha) - 1) if alpha else 0.0,
        "linear": (1 - 1 / reach) / k,
    }[params.fill_shape]
    if bounds[0] < kink < bounds[1]:
        grid = np.sort(np.append(grid, kink))
    shape = market.intensity_shape_numpy(grid, params.k, params.fill_shape, params.fill_shape_alpha)
    p = market.fill_probability_numpy(params.A * shape * params.dt, params.fill_model)
    value = np.zeros(qs.size)  # terminal: no penalty
    for _ in range(params.n_steps):
        G = -phi * qs.astype(np.float64) ** 2 + value
        new = np.empty_like(value)
        for i, q in enumerate(qs):
            can_bid, can_ask = q < q_top, q > -q_top
            up = G[i + 1] - G[i] if can_bid else 0.0
            down = G[i - 1] - G[i] if can_ask else 0.0
            pb = p if can_bid else np.zeros_like(p)
            pa = p if can_ask else np.zeros_like(p)
            gain_b = pb * (grid + up)
            gain_a = pa * (grid + down)
            joint = gain_b[:, None] + gain_a[None, :] - pb[:, None] * pa[None, :] * (up + down)
            new[i] = G[i] + joint.max()
        value = new
    return value[q_top]


@pytest.mark.parametrize(
    "shape_alpha, fill_model",
    list(itertools.product(SHAPES, ["linear", "exponential"])),
    ids=lambda v: str(v),
)
def test_bellman_matches_brute_force_for_every_shape(shape_alpha, fill_model):
    """The exact optimum (bisection on the first-order condition) against a 301 x 301 depth
    grid: never below it, and above it by no more than the grid's resolution allows."""
    shape, alpha = shape_alpha
    params = shaped(shape, alpha, fill_model=fill_model, n_steps=6, q_max=3.0, A=20.0, T=1.0)
    phi, bounds = 0.05, (0.0, 1.5)
    solution = optimal.bellman(params, phi, depth_bounds=bounds)
    exact = float(solution.value_at(0, 0))
    brute = brute_force_value(params, phi, bounds)
    assert exact >= brute - 1e-12
    assert exact - brute < 2e-4 * max(1.0, abs(exact)), (exact, brute)
    # and the exact evaluation of the solver's own table gives its value
    evaluated = optimal.evaluate(params, mm.policies.table(solution), phi)
    assert float(evaluated.value_at(0, 0)) == pytest.approx(exact, rel=1e-7)  # float32 table


@pytest.mark.parametrize("shape, alpha", SHAPES[1:])
def test_environment_steps_with_a_shape(shape, alpha):
    """The gymnax environment runs the shaped market (so PPO trains on it)."""
    assert_env_steps(shaped(shape, alpha))


def test_ppo_config_sets_the_shape_and_refuses_bad_ones():
    """``python -m train.ppo --fill-shape power --fill-shape-alpha 2.5`` trains on the shaped
    market, scored against its exact optimum."""
    from train.config import PPOConfig, market_env

    _, env_params = market_env(PPOConfig(fill_shape="power", fill_shape_alpha=2.5))
    assert env_params.market.fill_shape == "power"
    assert env_params.market.fill_shape_alpha == 2.5
    _, plain = market_env(PPOConfig(fill_shape="linear", fill_shape_alpha=2.5))
    assert plain.market.fill_shape_alpha is None  # the alpha only belongs to the power shape
    with pytest.raises(ValueError, match="fill_shape"):
        PPOConfig(fill_shape="power", fill_shape_alpha=0.5).validate()
