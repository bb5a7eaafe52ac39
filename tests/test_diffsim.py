"""Learning by differentiation: the exact objective against ``optimal.evaluate`` and its gradient
against central finite differences (float64); each gradient estimator's expectation on a
one-step market against a closed form (within 4 standard errors, fixed seeds); the command
line at a tiny budget, and its reproducibility."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxmm import market, optimal, presets
from jaxmm.gradients import ExactObjective
from train.diffsim import DiffSimConfig, make_problem
from train.networks import ObsNorm

SMALL = (8, 8)


def perturbed(problem, seed=0, scale=0.05):
    """Fresh parameters plus noise, so that the last layer is not ~0 (a generic point)."""
    params = problem.init(jax.random.key(seed))
    noise_key = jax.random.key(seed + 100)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(noise_key, len(leaves))
    leaves = [
        x + scale * jax.random.normal(k, x.shape, x.dtype)
        for x, k in zip(leaves, keys, strict=True)
    ]
    return problem.mask(jax.tree.unflatten(tree, leaves))


def to64(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), tree)


# ---------------------------------------------------------------------- the exact objective


def test_exact_objective_matches_optimal_evaluate_on_tables():
    params = presets.homework()
    solution = optimal.bellman(params, 0.1)
    objective = ExactObjective(params, 0.1)
    tables = (solution.bid_depth, solution.ask_depth)
    bids, asks = (np.where(np.isnan(x[:-1]), np.inf, x[:-1]) for x in tables)
    with jax.enable_x64(True):
        value = objective.expected_reward(jnp.asarray(bids), jnp.asarray(asks))
        # a mixture of one table with itself is the table
        both = objective.expected_reward(
            jnp.stack([bids, bids], 1), jnp.stack([asks, asks], 1), jnp.asarray([0.25, 0.75])
        )
    assert float(value) == pytest.approx(solution.value_at(0, 0), rel=1e-12)
    assert float(both) == pytest.approx(solution.value_at(0, 0), rel=1e-12)


def test_mixture_one_step_value_is_the_weighted_values():
    """On a one-step market the value is linear in the action distribution."""
    params = presets.homework().replace(n_steps=1, T=0.005)
    objective = ExactObjective(params, 0.1)
    rng = np.random.default_rng(0)
    bids = rng.uniform(0.1, 2.0, (1, 3, objective.inventories.size))
    asks = rng.uniform(0.1, 2.0, (1, 3, objective.inventories.size))
    weights = np.asarray([0.2, 0.5, 0.3])
    with jax.enable_x64(True):
        mixed = objective.values(jnp.asarray(bids), jnp.asarray(asks), jnp.asarray(weights))
        singles = [
            np.asarray(objective.values(jnp.asarray(bids[:, j]), jnp.asarray(asks[:, j])))
            for j in range(3)
        ]
        mixed = np.asarray(mixed)
    np.testing.assert_allclose(
        mixed, sum(w * s for w, s in zip(weights, singles, strict=True)), rtol=1e-12
    )


def test_network_exact_reward_equals_optimal_evaluate_of_the_deployed_policy():
    """The network's tabulated depths through the DP give ``optimal.evaluate`` of the very
    policy ``train.load_policy`` deploys (full observation, masked weights)."""
    config = DiffSimConfig(phi=0.1, estimator="exact", hidden_sizes=SMALL)
    problem = make_problem(config)
    with jax.enable_x64(True):
        params = to64(perturbed(problem))
        agent = problem.spec.agent(params, ObsNorm.create(problem.spec.obs_dim))
        policy = problem.env.as_policy(agent, problem.env_params)
        reference = optimal.evaluate(problem.market, policy, 0.1).value_at(0, 0)
        value = float(jax.jit(problem.exact_reward)(params))
    assert value == pytest.approx(reference, rel=1e-9)


def test_masked_network_reads_t_and_q_only():
    problem = make_problem(DiffSimConfig(hidden_sizes=SMALL))
    params = perturbed(problem)
    state = market.reset(jax.random.key(0), problem.market).replace(
        t=jnp.int32(30), inventory=jnp.float32(2.0)
    )
    moved = state.replace(mid=state.mid + 3.0, recent_returns=state.recent_returns + 0.4)
    quotes = jax.jit(problem.quotes)
    a, b = quotes(params, state), quotes(params, moved)
    assert float(a.bid_depth) == float(b.bid_depth) and float(a.ask_depth) == float(b.ask_depth)
    unmasked = make_problem(DiffSimConfig(hidden_sizes=SMALL, tq_only=False))
    other = unmasked.init(jax.random.key(3))
    c, d = jax.jit(unmasked.quotes)(other, moved), jax.jit(unmasked.quotes)(other, state)
    assert float(c.bid_depth) != float(d.bid_depth)


@pytest.mark.parametrize("phi", [0.01, 0.1])
def test_exact_gradient_matches_central_finite_differences(phi):
    problem = make_problem(DiffSimConfig(phi=phi, estimator="exact", hidden_sizes=SMALL))
    with jax.enable_x64(True):
        params = to64(perturbed(problem, seed=1))
        flat, unravel = ravel_pytree(params)
        value = jax.jit(lambda x: problem.exact_reward(unravel(x)))
        gradient = jax.jit(jax.grad(lambda x: problem.exact_reward(unravel(x))))(flat)
        rng = np.random.default_rng(0)
        h = 1e-6
        for _ in range(3):
            direction = rng.normal(size=flat.shape)
            direction /= np.linalg.norm(direction)
            fd = (value(flat + h * direction) - value(flat - h * direction)) / (2 * h)
            # central differences: error O(h^2 f''') plus rounding O(eps |f| / h) ~ 1e-9 |f|
            assert float(gradient @ direction) == pytest.approx(float(fd), rel=1e-6, abs=1e-7)


def test_config_refuses_exact_without_a_tq_policy():
    with pytest.raises(ValueError, match="tq_only"):
        DiffSimConfig(estimator="exact", tq_only=False).validate()
    with pytest.raises(ValueError, match="estimator"):
        DiffSimConfig(estimator="reinforce").validate()
    with pytest.raises(ValueError, match="reward"):
        DiffSimConfig(reward="cara").validate()
