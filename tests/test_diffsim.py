"""Learning by differentiation: the exact objective against ``optimal.evaluate`` and its gradient
against central finite differences (float64); each gradient estimator's expectation on a
one-step market against a closed form (within 4 standard errors, fixed seeds); the command
line at a tiny budget, and its reproducibility."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxmm import market, optimal, presets
from jaxmm.gradients import ExactObjective
from tests.conftest import run_module
from train import checkpoint
from train.config import market_env
from train.diffsim import (
    DiffSimConfig,
    _log_bernoulli,
    expected_step_reward,
    gauss_hermite,
    make_chunk_runner,
    make_optimizer,
    make_problem,
    parse_args,
)
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


@pytest.mark.parametrize("phi", [pytest.param(0.01, marks=pytest.mark.slow), 0.1])
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


def test_expected_fill_estimator_refuses_markets_it_does_not_model():
    config = DiffSimConfig(estimator="expected", hidden_sizes=SMALL)
    env, env_params = market_env(config.ppo_config())
    for option in ({"adverse_selection": 0.1}, {"maker_fee": 0.01}):
        market_params = env_params.market.replace(**option).validate()
        problem = make_problem(config, env, env_params.replace(market=market_params))
        params = problem.init(jax.random.key(0))
        stream = market.stream_key(jax.random.key(0))
        with pytest.raises(ValueError, match="expected-fill"):
            problem.gradient("expected", params, stream, jnp.arange(2, dtype=jnp.uint32))


def test_config_refuses_exact_without_a_tq_policy():
    with pytest.raises(ValueError, match="tq_only"):
        DiffSimConfig(estimator="exact", tq_only=False).validate()
    with pytest.raises(ValueError, match="estimator"):
        DiffSimConfig(estimator="reinforce").validate()
    with pytest.raises(ValueError, match="reward"):
        DiffSimConfig(reward="cara").validate()


# ------------------------------------------------- estimators on a one-step market (closed forms)


def one_step_problem(phi=0.1, **options):
    config = DiffSimConfig(phi=phi, hidden_sizes=SMALL, **options)
    env, env_params = market_env(config.ppo_config())
    one_step = env_params.market.replace(n_steps=1, T=0.005)  # dt = 0.005 as in the homework
    return make_problem(config, env, env_params.replace(market=one_step))


def closed_form_reward(problem, params, fill_moments=None):
    """``E[reward]`` of the one step from ``q = 0``: ``p_b d_b + p_a d_a - phi E[q'^2]``
    (``E[dS] = 0``) with ``p = min(1, A exp(-k d) dt)``. With ``fill_moments(p) -> (E f,
    E f^2)`` the fills are ``f`` instead of Bernoulli (the relaxed fills)."""
    start = market.reset(jax.random.key(0), problem.market)
    quotes = problem.quotes(params, start)
    m = problem.market
    depths = jnp.stack([quotes.bid_depth, quotes.ask_depth])
    probs = jnp.minimum(1.0, m.A * jnp.exp(-m.k * depths) * m.dt)
    if fill_moments is None:
        first, second = probs, probs
    else:
        first, second = fill_moments(probs)
    phi = problem.env_params.phi
    square = second[0] + second[1] - 2 * first[0] * first[1]  # E (f_b - f_a)^2
    return first @ depths - phi * square


def relaxed_moments(temperature, n=200_000):
    """``(E f, E f^2)`` of the relaxed fill ``sigmoid((logit p - logit u) / T)``, ``u`` uniform:
    the midpoint rule on ``n`` points (smooth integrand; error far below the test's SE)."""
    u = (jnp.arange(n) + 0.5) / n

    def moments(p):
        logits = jnp.log(p[:, None]) - jnp.log1p(-p[:, None]) - jnp.log(u) + jnp.log1p(-u)
        f = jax.nn.sigmoid(logits / temperature)
        return f.mean(axis=1), (f**2).mean(axis=1)

    return moments


def projections(problem, gradients, directions):
    """Per-sample gradients ``[M, ...]`` (pytrees) projected on fixed directions: ``[M, d]``."""
    flat = jax.vmap(problem.actor_vector)(gradients)
    return np.asarray(flat @ directions.T, np.float64)


def assert_within_se(samples, target, n_se=4.0):
    mean = samples.mean(axis=0)
    se = samples.std(axis=0, ddof=1) / np.sqrt(samples.shape[0])
    assert np.all(np.abs(mean - target) <= n_se * se + 1e-6 * np.abs(target)), (mean, target, se)
    return se


def directions_for(problem, reference):
    rng = np.random.default_rng(7)
    random = rng.normal(size=(2, reference.size))
    rows = np.vstack([reference / np.linalg.norm(reference), random])
    return jnp.asarray(rows / np.linalg.norm(rows, axis=1, keepdims=True), jnp.float32)


def test_one_step_exact_gradient_is_the_closed_form():
    problem = one_step_problem(estimator="exact")
    params = perturbed(problem, seed=2, scale=0.2)
    exact = problem.actor_vector(jax.grad(problem.exact_reward)(params))
    closed = problem.actor_vector(jax.grad(lambda p: closed_form_reward(problem, p))(params))
    np.testing.assert_allclose(exact, closed, rtol=2e-4, atol=1e-6)


def test_one_step_expected_fill_estimator_is_unbiased():
    problem = one_step_problem(estimator="expected")
    params = perturbed(problem, seed=2, scale=0.2)
    closed = problem.actor_vector(jax.grad(lambda p: closed_form_reward(problem, p))(params))
    directions = directions_for(problem, closed)
    stream = market.stream_key(jax.random.key(11))
    pairs = jnp.arange(2 * 2000, dtype=jnp.uint32).reshape(2000, 2)  # baseline needs n >= 2
    grads = jax.jit(jax.vmap(lambda e: problem.gradient("expected", params, stream, e)[1]))(pairs)
    assert_within_se(projections(problem, grads, directions), np.asarray(directions @ closed))


@pytest.mark.parametrize("temperature", [0.3, pytest.param(0.05, marks=pytest.mark.slow)])
def test_one_step_relaxed_estimator_is_the_gradient_of_the_relaxed_expectation(temperature):
    """Its mean is the gradient of the relaxed market's expected reward (closed form over the
    relaxed fill's moments), not the exact gradient (the bias is measured in the study)."""
    problem = one_step_problem(estimator="relaxed")
    params = perturbed(problem, seed=2, scale=0.2)
    moments = relaxed_moments(temperature)
    relaxed = jax.grad(lambda p: closed_form_reward(problem, p, moments))(params)
    relaxed = problem.actor_vector(relaxed)
    exact = problem.actor_vector(jax.grad(lambda p: closed_form_reward(problem, p))(params))
    directions = directions_for(problem, exact)
    stream = market.stream_key(jax.random.key(12))
    episodes = jnp.arange(40_000, dtype=jnp.uint32)[:, None]

    def one(e):
        return problem.gradient("relaxed", params, stream, e, temperature)[1]

    samples = projections(problem, jax.jit(jax.vmap(one))(episodes), directions)
    assert_within_se(samples, np.asarray(directions @ relaxed))


@pytest.mark.slow
def test_one_step_ppo_estimate_is_the_stochastic_policy_gradient():
    """PPO's rescaled surrogate gradient at ratio 1 against the gradient of the stochastic
    policy's expected reward (a 40 x 40 Gauss-Hermite rule over the Gaussian raw actions of
    the closed form), which the DP's 12 x 12 mixture reproduces."""
    problem = one_step_problem(estimator="exact")
    params = perturbed(problem, seed=2, scale=0.2)
    inner = dict(params["params"])
    inner["log_std"] = jnp.full((2,), -1.0)  # raw-action std 0.37
    params = {**params, "params": inner}
    z, w = gauss_hermite(40)

    def stochastic_closed_form(p):
        start = market.reset(jax.random.key(0), problem.market)
        obs = problem.env.observation(start, problem.env_params)
        mean, log_std = problem._network(p, obs)
        low, high = problem._bounds(mean.dtype)
        raw_b = mean[0] + jnp.exp(log_std[0]) * z[:, None]
        raw_a = mean[1] + jnp.exp(log_std[1]) * z[None, :]
        d_b = low[0] + (high[0] - low[0]) * jax.nn.sigmoid(raw_b)
        d_a = low[1] + (high[1] - low[1]) * jax.nn.sigmoid(raw_a)
        m, phi = problem.market, problem.env_params.phi
        p_b = jnp.minimum(1.0, m.A * jnp.exp(-m.k * d_b) * m.dt)
        p_a = jnp.minimum(1.0, m.A * jnp.exp(-m.k * d_a) * m.dt)
        value = p_b * d_b + p_a * d_a - phi * ((p_b - p_a) ** 2 + p_b * (1 - p_b) + p_a * (1 - p_a))
        return w @ value @ w

    closed = problem.actor_vector(jax.grad(stochastic_closed_form)(params))
    dp = problem.actor_vector(jax.grad(problem.exact_stochastic_reward)(params))
    np.testing.assert_allclose(dp, closed, rtol=1e-3, atol=1e-5)

    directions = directions_for(problem, closed)
    stream = market.stream_key(jax.random.key(13))
    ppo_config = DiffSimConfig().ppo_config()
    n_batches, batch = 100, 8192
    episodes = jnp.arange(n_batches * batch, dtype=jnp.uint32).reshape(n_batches, batch)
    keys = jax.random.split(jax.random.key(14), n_batches)

    def one(e, k):
        return problem.ppo_gradient(params, stream, e, k, ppo_config)[1]

    samples = projections(problem, jax.jit(jax.vmap(one))(episodes, keys), directions)
    assert_within_se(samples, np.asarray(directions @ closed))


def test_expected_step_reward_is_the_four_outcome_average():
    q, d_b, d_a, p_b, p_a, ds, c = 2.0, 0.7, 1.1, 0.3, 0.45, 0.2, 0.1
    total = 0.0
    for b in (0, 1):
        for a in (0, 1):
            weight = (p_b if b else 1 - p_b) * (p_a if a else 1 - p_a)
            after = q + b - a
            total += weight * (b * d_b + a * d_a + after * ds - c * after**2)
    assert float(expected_step_reward(q, d_b, d_a, p_b, p_a, ds, c)) == pytest.approx(total)


# ------------------------------------------------------------------ the command line, seeds


@pytest.mark.slow  # about 25 s of CPU in a child process; CI runs it in the slow pass
def test_cli_smoke_run_writes_the_ppo_layout(tmp_path):
    args = ["--estimator", "expected", "--num-iterations", "3", "--num-envs", "4"]
    args += ["--num-seeds", "2", "--hidden-sizes", "8", "8", "--eval-episodes", "40"]
    args += ["--progress-episodes", "10", "--num-evals", "2", "--phi", "0.1"]
    run_module("train.diffsim", *args, "--out-dir", str(tmp_path), "--name", "smoke")
    run_dir = tmp_path / "smoke"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("eval", "optimal_reward", "optimality_gap", "optimality_gap_stderr"):
        assert key in metrics
    assert metrics["env_steps"] == 3 * 4 * 200
    assert metrics["diffsim_config"]["estimator"] == "expected"
    assert (run_dir / "training_curve.png").is_file()
    config = checkpoint.load_config(run_dir)
    assert config.phi == 0.1 and config.hidden_sizes == (8, 8)
    policy = checkpoint.load_policy(run_dir)
    _, env_params = market_env(config)
    # the deployed policy's exact value is the one the run recorded for its selected seed
    exact = optimal.evaluate(env_params.market, policy, 0.1).value_at(0, 0)
    selected = metrics["selected_seed"]
    recorded = metrics["progress_evals"][-1]["exact_reward"][selected]
    assert exact == pytest.approx(recorded, rel=1e-4)
    # --config reads the run's diffsim_config.json back; flags override it
    saved = DiffSimConfig.from_dict(json.loads((run_dir / "diffsim_config.json").read_text()))
    again = parse_args(["--config", str(run_dir / "diffsim_config.json"), "--phi", "0.01"])
    assert again == dataclasses.replace(saved, phi=0.01)


@pytest.mark.parametrize(
    "estimator", [pytest.param("relaxed", marks=pytest.mark.slow), "expected",
                  pytest.param("exact", marks=pytest.mark.slow)]
)  # fmt: skip
def test_training_is_reproducible(estimator):
    config = DiffSimConfig(
        estimator=estimator, num_iterations=4, num_envs=4, num_seeds=2, hidden_sizes=SMALL
    )
    problem = make_problem(config)
    optimizer = make_optimizer(config)
    run = make_chunk_runner(config, problem, optimizer)

    def train(seed):
        keys = jax.random.split(jax.random.key(seed), 2)
        params = jax.vmap(problem.init)(keys)
        streams = jax.vmap(market.stream_key)(keys)
        (params, _), values = run(params, jax.vmap(optimizer.init)(params), streams,
                                  jnp.uint32(0), 4)  # fmt: skip
        return np.asarray(ravel_pytree(params)[0]), np.asarray(values)

    first, again, other = train(0), train(0), train(1)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


def test_gradient_is_finite_when_a_mid_change_rounds_to_zero():
    """``trailing_volatility`` is a square root: at one recorded mid change of exactly 0 its
    derivative is infinite, and 0 * inf would poison the gradient (seen in 1 of 8192 relaxed
    episodes). Without adverse selection the mid does not depend on the policy."""
    problem = make_problem(DiffSimConfig(hidden_sizes=SMALL, tq_only=False))
    params = problem.init(jax.random.key(0))
    start = market.reset(jax.random.key(0), problem.market)

    def depth(p):
        scale = ravel_pytree(p)[0][0]  # the mid path written as a function of the parameters
        state = start.replace(t=jnp.int32(1), recent_returns=start.recent_returns * scale)
        return problem.quotes(p, state).bid_depth

    gradient = ravel_pytree(jax.jit(jax.grad(depth))(params))[0]
    assert np.all(np.isfinite(np.asarray(gradient)))


def test_expected_fill_pieces_have_finite_gradients_at_the_edges():
    """A certain fill (a marketable quote: p = 1 under the linear model) and an unquoted side
    (infinite depth, p = 0: latency's empty queue, the loss-limit halt) gave NaN gradients."""
    for outcome in (0.0, 1.0):
        for prob in (0.0, 0.3, 1.0):
            if (outcome, prob) in ((1.0, 0.0), (0.0, 1.0)):
                continue  # impossible outcomes
            g = jax.grad(lambda p, o=outcome: _log_bernoulli(o, p))(jnp.float32(prob))
            assert np.isfinite(float(g))

    def reward(depth):
        prob = jnp.minimum(1.0, 0.5 * jnp.exp(-1.5 * depth))
        unquoted = jnp.where(True, jnp.inf, depth)  # the halt's cancelled quote
        return expected_step_reward(1.0, depth, unquoted, prob, 0.0, 0.1, 0.1)

    assert np.isfinite(float(jax.grad(reward)(jnp.float32(0.8))))


@pytest.mark.slow
def test_study_estimator_table_is_consistent(tmp_path):
    """``experiments.diffsim --parts estimators`` end to end at a tiny size: every estimator
    has a row, every score is finite and in range, the table and figure are written."""
    from experiments import diffsim as study

    payload = study.main(
        ["--parts", "estimators", "--reps", "2", "--batches", "4", "--temperatures", "0.3"],
        out=tmp_path,
    )
    rows = payload["estimators"]
    assert {row["estimator"] for row in rows} == {"relaxed T=0.3", "expected", "ppo"}
    for row in rows:
        assert -1.0 <= row["cosine"] <= 1.0 and row["relative_variance"] >= 0.0
        assert all(np.isfinite(row[k]) for k in ("relative_error", "bias_relative_error"))
    assert (tmp_path / "estimators.csv").is_file() and (tmp_path / "estimators.png").is_file()
