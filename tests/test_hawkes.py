"""Self-exciting (Hawkes) market-order flow: ``arrival_model="hawkes"`` in the one market step.

The stepped chain, per side ``s`` (bid: sell orders, ask: buy orders), with ``mu`` the base
intensities, ``d = exp(-beta dt)`` and ``K = [[self, cross], [cross, self]]``:
``N_t | e_t ~ Poisson(dt (mu + e_t))`` independently per side and
``e_{t+1} = d e_t + K N_t``. Its exact moments follow from the linear recursion of the
augmented state ``y = (e, S)`` with ``S`` the window's running count (the conditional
covariance of ``N`` is ``dt diag(mu + e)``, whose expectation is known from the mean):

    E y' = G E y + c,  Cov y' = G Cov(y) G' + H dt diag(mu + E e) H',
    G = [[F, 0], [dt I, I]],  F = d I + dt K,  c = (dt K mu, dt mu),  H = [[K], [I]].

The stationary mean is ``(I - g K)^{-1} mu`` with ``g = dt / (1 - d)`` (the library's
``hawkes_stationary_intensity``), tending to the continuous ``mu / (1 - n)`` as ``dt -> 0``.
Every Monte Carlo check uses a fixed seed and a tolerance of 4 standard errors.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import linalg, stats

import jaxmm as mm
from jaxmm import market, optimal, schedule
from jaxmm import params as params_lib

TOLERANCE_SE = 4.0
# the Hawkes flow's settings on the homework market (see ``hawkes``)
HAWKES = {
    "A": 60.0,
    "fill_model": "exponential",
    "arrival_model": "hawkes",
    "hawkes_decay": 30.0,
    "hawkes_self": 12.0,
    "hawkes_cross": 6.0,
}


def hawkes(**overrides) -> mm.MarketParams:
    """The homework market with Hawkes flow: mu = 60 per side, beta = 30, self 12, cross 6
    (branching 0.6, 0.646 for the stepped chain at dt = 0.005)."""
    return mm.presets.homework().replace(**{**HAWKES, **overrides}).validate()


def exact_moments(params: mm.MarketParams, window_start: int, n_steps: int):
    """Exact E and Cov of ``y_t = (e_bid, e_ask, S_bid, S_ask)`` for ``t = 0..n_steps`` from
    ``e_0 = 0``, the counts ``S`` summed over steps ``[window_start, t)``: ``(means [T+1, 4],
    covariances [T+1, 4, 4])``, float64, by the linear recursion of the module docstring."""
    dt = float(params.T) / params.n_steps
    mu = float(params.A) * np.array([params.bid_intensity_mult, params.ask_intensity_mult])
    kernel = np.array(
        [[params.hawkes_self, params.hawkes_cross], [params.hawkes_cross, params.hawkes_self]],
        np.float64,
    )
    transition = math.exp(-params.hawkes_decay * dt) * np.eye(2) + dt * kernel
    g = np.block([[transition, np.zeros((2, 2))], [dt * np.eye(2), np.eye(2)]])
    c = np.concatenate([dt * kernel @ mu, dt * mu])
    h = np.vstack([kernel, np.eye(2)])
    mean, cov = np.zeros(4), np.zeros((4, 4))
    means, covs = [], []
    for t in range(n_steps + 1):
        if t == window_start:  # the window's count starts at zero
            mean[2:] = 0.0
            cov[2:, :] = 0.0
            cov[:, 2:] = 0.0
        means.append(mean.copy())
        covs.append(cov.copy())
        intensity = mu + mean[:2]
        cov = g @ cov @ g.T + h @ np.diag(dt * intensity) @ h.T
        mean = g @ mean + c
    return np.array(means), np.array(covs)


def simulate_flow(params: mm.MarketParams, n_episodes: int, window_start: int, seed: int):
    """Run the market step (quotes at depth 0.5) over ``n_episodes`` episodes: per episode the
    counts ``f[n, 2]`` of sell/buy orders over steps ``[window_start, n_steps)``, the mean
    intensity ``f[n, 2]`` over those steps, the final excitations ``f[n, 2]`` and the largest
    ``lambda dt`` met (a scalar)."""
    stream = market.stream_key(jax.random.key(seed))
    episodes = jnp.arange(n_episodes, dtype=jnp.uint32)
    quotes = market.Quotes(jnp.full((n_episodes,), 0.5), jnp.full((n_episodes,), 0.5))
    step = jax.vmap(market.step_with_noise, in_axes=(0, 0, 0, None))
    base = float(params.A) * np.array([params.bid_intensity_mult, params.ask_intensity_mult])

    def body(carry, t):
        state, counts, intensity_sum, top = carry
        noise = market.counter_noise(stream, episodes, t)
        intensity = jnp.stack([state.bid_excitation, state.ask_excitation], -1) + base
        next_state, info = step(state, quotes, noise, params)
        arrivals = jnp.stack([info.bid_arrivals, info.ask_arrivals], -1)
        inside = t >= window_start
        counts = counts + jnp.where(inside, arrivals, 0.0)
        intensity_sum = intensity_sum + jnp.where(inside, intensity, 0.0)
        top = jnp.maximum(top, jnp.max(intensity) * params.dt)
        return (next_state, counts, intensity_sum, top), None

    @jax.jit
    def run():
        state = jax.vmap(lambda _: market.reset(jax.random.key(0), params))(episodes)
        zeros = jnp.zeros((n_episodes, 2))
        start = (state, zeros, zeros, jnp.zeros(()))
        (state, counts, intensity_sum, top), _ = jax.lax.scan(
            body, start, jnp.arange(params.n_steps)
        )
        excitation = jnp.stack([state.bid_excitation, state.ask_excitation], -1)
        return counts, intensity_sum / (params.n_steps - window_start), excitation, top

    return [np.asarray(x, np.float64) for x in run()]


@pytest.fixture(scope="module")
def flow():
    """10,000 sessions of 400 steps (dt = 0.005) of a faster kernel (beta = 60, self 24, cross
    12: branching 0.6, 0.695 stepped), counted over the last 200 steps, after a burn-in that
    brings the exact mean within 1e-5 of the stationary one."""
    params = hawkes(T=2.0, n_steps=400, hawkes_decay=60.0, hawkes_self=24.0, hawkes_cross=12.0)
    window_start = 200
    counts, mean_intensity, excitation, top = simulate_flow(params, 10_000, window_start, seed=3)
    return params, window_start, counts, mean_intensity, excitation, top


def test_stationary_mean_intensity_formula_and_its_continuous_limit():
    params = hawkes()
    bid, ask = params_lib.hawkes_stationary_intensity(params)
    # the chain's fixed point, solved independently: E e = d E e + dt K (mu + E e)
    dt = params.dt
    mu = np.array([60.0, 60.0])
    kernel = np.array([[12.0, 6.0], [6.0, 12.0]])
    fixed = np.linalg.solve((1 - math.exp(-30 * dt)) * np.eye(2) - dt * kernel, dt * kernel @ mu)
    np.testing.assert_allclose([bid, ask], mu + fixed, rtol=1e-12)
    # and the recursion's mean converges to it
    means, _ = exact_moments(params, 0, 2000)
    np.testing.assert_allclose(mu + means[-1, :2], [bid, ask], rtol=1e-10)
    # dt -> 0: the continuous Hawkes mean mu / (1 - (self + cross) / beta), with the
    # first-order correction n beta dt / 2 of the discrete branching ratio
    continuous = 60.0 / (1.0 - 18.0 / 30.0)
    for n_steps in (10**4, 10**6):
        fine = params.replace(n_steps=n_steps)
        limit, _ = params_lib.hawkes_stationary_intensity(fine)
        branching = params_lib.hawkes_discrete_branching_ratio(fine)
        beta_dt = 30.0 / n_steps
        assert branching == pytest.approx(0.6 * beta_dt / -math.expm1(-beta_dt), rel=1e-12)
        assert abs(branching - 0.6 * (1 + beta_dt / 2)) < 0.6 * beta_dt**2
        assert limit == pytest.approx(60.0 / (1.0 - branching), rel=1e-12)
        assert abs(limit - continuous) < 2 * continuous * 0.6 / 0.4 * beta_dt
    assert params_lib.hawkes_branching_ratio(params) == pytest.approx(0.6)


def test_asymmetric_stationary_mean_matches_the_recursion():
    params = hawkes(bid_intensity_mult=1.5, ask_intensity_mult=0.5, hawkes_cross=9.0)
    means, _ = exact_moments(params, 0, 4000)
    base = 60.0 * np.array([1.5, 0.5])
    np.testing.assert_allclose(
        base + means[-1, :2], params_lib.hawkes_stationary_intensity(params), rtol=1e-10
    )


def test_simulated_mean_intensity_is_the_stationary_mean(flow):
    params, window_start, _, mean_intensity, excitation, top = flow
    assert top < params_lib.MAX_HAWKES_RATE_PER_STEP / 2  # the rate cap never binds here
    stationary = np.array(params_lib.hawkes_stationary_intensity(params))
    means, covs = exact_moments(params, window_start, params.n_steps)
    transient = params.A + means[window_start:-1, :2].mean(axis=0)
    # after the burn-in the exact transient mean is the stationary one to 1e-3 of an SE
    se = mean_intensity.std(axis=0, ddof=1) / math.sqrt(len(mean_intensity))
    assert np.all(np.abs(transient - stationary) < 1e-3 * se)
    assert np.all(np.abs(mean_intensity.mean(axis=0) - stationary) < TOLERANCE_SE * se)
    # the final excitation's mean and variance against the exact recursion
    final_mean, final_cov = means[-1, :2], np.diag(covs[-1])[:2]
    se = excitation.std(axis=0, ddof=1) / math.sqrt(len(excitation))
    assert np.all(np.abs(excitation.mean(axis=0) - final_mean) < TOLERANCE_SE * se)
    assert np.all(
        np.abs(excitation.var(axis=0, ddof=1) - final_cov) < TOLERANCE_SE * _var_se(excitation)
    )


def _var_se(samples: np.ndarray) -> np.ndarray:
    """Standard error of the sample variance of each column: sqrt((m4 - s^4) / n)."""
    centred = samples - samples.mean(axis=0)
    m4 = np.mean(centred**4, axis=0)
    s2 = np.mean(centred**2, axis=0)
    return np.sqrt((m4 - s2**2) / len(samples))


def test_window_count_variance_matches_the_exact_second_moments(flow):
    params, window_start, counts, *_ = flow
    means, covs = exact_moments(params, window_start, params.n_steps)
    mean, cov = means[-1, 2:], covs[-1][2:, 2:]
    # clustering: the variance is far above the Poisson variance (the mean)
    assert np.all(np.diag(cov) > 3 * mean)
    se = counts.std(axis=0, ddof=1) / math.sqrt(len(counts))
    assert np.all(np.abs(counts.mean(axis=0) - mean) < TOLERANCE_SE * se)
    assert np.all(
        np.abs(counts.var(axis=0, ddof=1) - np.diag(cov)) < TOLERANCE_SE * _var_se(counts)
    )
    total = counts.sum(axis=1, keepdims=True)
    exact_total = cov.sum()
    assert abs(total.var(ddof=1) - exact_total) < TOLERANCE_SE * _var_se(total)[0]


def test_stationary_window_variance_against_the_lyapunov_solution():
    """The recursion's stationary covariance of ``e`` solves the discrete Lyapunov equation
    ``Sigma = F Sigma F' + dt K diag(lambda_bar) K'`` (scipy), an independent check."""
    params = hawkes()
    dt = params.dt
    kernel = np.array([[12.0, 6.0], [6.0, 12.0]])
    transition = math.exp(-30 * dt) * np.eye(2) + dt * kernel
    intensity = np.array(params_lib.hawkes_stationary_intensity(params))
    sigma = linalg.solve_discrete_lyapunov(transition, dt * kernel @ np.diag(intensity) @ kernel.T)
    _, covs = exact_moments(params, 0, 3000)
    np.testing.assert_allclose(covs[-1][:2, :2], sigma, rtol=1e-8)


@pytest.mark.parametrize("shape, alpha", [("exponential", None), ("power", 2.0)])
def test_marginal_fill_probability_given_the_state(shape, alpha):
    params = hawkes(fill_shape=shape, fill_shape_alpha=alpha)
    n = 200_000
    state = market.reset(jax.random.key(0), params).replace(
        bid_excitation=jnp.float32(150.0), ask_excitation=jnp.float32(20.0), t=jnp.int32(7)
    )
    quotes = market.Quotes(jnp.float32(0.3), jnp.float32(1.2))
    stream = market.stream_key(jax.random.key(11))
    noise = market.counter_noise(stream, jnp.arange(n, dtype=jnp.uint32), 7)
    step = jax.jit(jax.vmap(market.step_with_noise, in_axes=(None, None, 0, None)))
    _, info = step(state, quotes, noise, params)
    for fills, arrivals, probability, excitation, depth in (
        (info.bid_fill, info.bid_arrivals, info.bid_fill_prob, 150.0, 0.3),
        (info.ask_fill, info.ask_arrivals, info.ask_fill_prob, 20.0, 1.2),
    ):
        reach = float(market.intensity_shape_numpy(depth, 1.5, shape, alpha))
        rate = (60.0 + excitation) * params.dt
        expected = -math.expm1(-rate * reach)
        fills = np.asarray(fills, np.float64)
        se = math.sqrt(expected * (1 - expected) / n)
        assert abs(fills.mean() - expected) < TOLERANCE_SE * se
        # the counts are Poisson(rate), the probability given N is 1 - (1 - p)^N
        arrivals = np.asarray(arrivals, np.float64)
        assert abs(arrivals.mean() - rate) < TOLERANCE_SE * math.sqrt(rate / n)
        for count in range(4):
            frequency = np.mean(arrivals == count)
            pmf = stats.poisson.pmf(count, rate)
            assert abs(frequency - pmf) < TOLERANCE_SE * math.sqrt(pmf * (1 - pmf) / n)
        np.testing.assert_allclose(
            np.asarray(probability), 1 - (1 - reach) ** arrivals, rtol=2e-5, atol=1e-7
        )


def test_thinned_probability_edges_and_gradients():
    reach = jnp.array([0.0, 1e-9, 0.3, 1.0, 1.0, 2.0])
    arrivals = jnp.array([3.0, 1.0, 2.0, 0.0, 1.0, 4.0])
    probability = market.hawkes_fill_probability(reach, arrivals)
    np.testing.assert_allclose(probability, [0.0, 1e-9, 0.51, 0.0, 1.0, 1.0], rtol=1e-6)
    gradient = jax.grad(lambda r: market.hawkes_fill_probability(r, arrivals).sum())(reach)
    assert np.all(np.isfinite(np.asarray(gradient)))


def test_counts_do_not_depend_on_the_quotes_and_other_streams_are_unchanged():
    params = hawkes(jump_model="compound_poisson", jump_intensity=5.0)
    stream = market.stream_key(jax.random.key(5))
    noise = market.counter_noise(stream, jnp.arange(64, dtype=jnp.uint32), 3)
    state = market.reset(jax.random.key(0), params)
    step = jax.vmap(market.step_with_noise, in_axes=(None, None, 0, None))
    _, near = step(state, market.Quotes(jnp.float32(0.1), jnp.float32(0.1)), noise, params)
    _, far = step(state, market.Quotes(jnp.float32(3.0), jnp.float32(jnp.inf)), noise, params)
    np.testing.assert_array_equal(near.bid_arrivals, far.bid_arrivals)
    np.testing.assert_array_equal(far.ask_fill, 0.0)
    # the Hawkes block leaves the jump block (and the base block) as they were
    plain = params.replace(
        arrival_model="poisson", hawkes_decay=None, hawkes_self=None, hawkes_cross=None
    )
    jumps = market.extension_noise(noise, params)
    reference = market.extension_noise(noise, plain)
    np.testing.assert_array_equal(jumps.u_jump_count, reference.u_jump_count)
    np.testing.assert_array_equal(jumps.u_mid, reference.u_mid)
    assert reference.u_bid_arrivals is None
    assert not np.array_equal(jumps.u_bid_arrivals, jumps.u_jump_count)


def test_zero_excitation_is_the_poisson_market_in_distribution():
    """self = cross = 0: the same mid path, no excitation, and the fills of the Poisson market
    with exponential fills in distribution (paired on the same keys, 4 SE)."""
    poisson = mm.presets.homework().replace(fill_model="exponential")
    flat = poisson.replace(
        arrival_model="hawkes", hawkes_decay=30.0, hawkes_self=0.0, hawkes_cross=0.0
    )
    policy = mm.policies.avellaneda_stoikov(0.1, 1.5)
    key = jax.random.key(9)
    n = 5000
    first = mm.simulate(poisson, policy, key, n, paths=True)
    second = mm.simulate(flat, policy, key, n, paths=True)
    for name in ("n_bid_fills", "n_ask_fills", "pnl"):
        difference = np.asarray(getattr(second, name), np.float64) - np.asarray(
            getattr(first, name), np.float64
        )
        se = difference.std(ddof=1) / math.sqrt(n)
        assert abs(difference.mean()) < TOLERANCE_SE * se, name
    np.testing.assert_array_equal(
        np.diff(first.paths.mid, axis=1), np.diff(second.paths.mid, axis=1)
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"hawkes_decay": None}, "hawkes_decay"),
        ({"arrival_model": "poisson"}, "hawkes_decay"),
        ({"arrival_model": "clustered"}, "arrival_model"),
        ({"hawkes_decay": 0.0}, "hawkes_decay"),
        ({"hawkes_self": -1.0}, "hawkes_self"),
        ({"hawkes_cross": float("nan")}, "hawkes_cross"),
        ({"hawkes_self": 20.0, "hawkes_cross": 10.0}, r"hawkes_self \+ hawkes_cross.*branching"),
        ({"hawkes_decay": 400.0, "hawkes_self": 300.0, "hawkes_cross": 80.0}, "discrete-time"),
        ({"fill_model": "linear"}, "fill_model"),
        ({"A": 1000.0}, "MarketParams.A"),
    ],
)
def test_bad_hawkes_settings_are_refused_naming_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        hawkes(**overrides)


def test_vmap_over_the_hawkes_fields():
    params = hawkes(
        hawkes_self=jnp.array([0.0, 6.0, 12.0]), hawkes_cross=jnp.array([0.0, 3.0, 6.0])
    )
    params.validate()  # elementwise: every branching ratio < 1
    with pytest.raises(ValueError, match="branching"):
        hawkes(hawkes_self=jnp.array([0.0, 25.0]), hawkes_cross=jnp.array([0.0, 6.0]))
    stream = market.stream_key(jax.random.key(2))
    noise = market.counter_noise(stream, jnp.zeros((3,), jnp.uint32), 0)
    axes = jax.tree.map(lambda _: None, params).replace(hawkes_self=0, hawkes_cross=0)
    state = jax.vmap(market.reset, in_axes=(None, axes))(jax.random.key(0), params)
    state = state.replace(t=jnp.int32(0))
    quotes = market.Quotes(jnp.float32(0.5), jnp.float32(0.5))
    state_axes = jax.tree.map(lambda _: 0, state).replace(t=None)
    step = jax.vmap(market.step_with_noise, in_axes=(state_axes, None, 0, axes))
    next_state, info = step(state, quotes, noise, params)
    expected = jnp.array([0.0, 6.0, 12.0]) * info.bid_arrivals
    expected = expected + jnp.array([0.0, 3.0, 6.0]) * info.ask_arrivals
    np.testing.assert_allclose(next_state.bid_excitation, expected, rtol=1e-6)


def test_exact_solvers_refuse_the_hawkes_market_by_name():
    params = hawkes()
    policy = mm.policies.avellaneda_stoikov(0.1, 1.5)
    with pytest.raises(ValueError, match="arrival_model"):
        optimal.bellman(params, 0.01)
    with pytest.raises(ValueError, match="arrival_model"):
        optimal.bellman_cara(params, 0.1)
    with pytest.raises(ValueError, match="arrival_model"):
        optimal.evaluate(params, policy, 0.01)
    with pytest.raises(ValueError, match=r"arrival_model|hawkes_decay"):
        schedule.expected_reward(params, 0.01, np.full(200, 0.7), np.full(200, 0.7))


def test_poisson_reference_has_the_stationary_mean_and_is_solvable():
    params = hawkes()
    reference = params_lib.hawkes_poisson_reference(params)
    bid, _ = params_lib.hawkes_stationary_intensity(params)
    assert reference.arrival_model == "poisson" and reference.hawkes_decay is None
    assert pytest.approx(bid) == reference.A and reference.bid_intensity_mult == 1.0
    table = optimal.bellman(reference, 0.01)
    assert np.isfinite(table.value_at(0, 0))
    skewed = hawkes(bid_intensity_mult=1.5, ask_intensity_mult=0.5)
    reference = params_lib.hawkes_poisson_reference(skewed)
    bid, ask = params_lib.hawkes_stationary_intensity(skewed)
    assert reference.A * reference.bid_intensity_mult == pytest.approx(bid)
    assert reference.A * reference.ask_intensity_mult == pytest.approx(ask)


def test_environment_steps_the_hawkes_market_and_sees_the_intensity():
    env = mm.env.MarketMakingEnv(features="hawkes")
    params = env.default_params.replace(market=hawkes())
    key = jax.random.key(1)
    obs, state = env.reset(key, params)
    assert env.feature_names == (*mm.env.FEATURE_SETS["full"], "bid_intensity", "ask_intensity")
    assert env.observation_space(params).shape == (7,)
    np.testing.assert_array_equal(obs[-2:], 0.0)
    step = jax.jit(env.step)
    for i in range(30):
        obs, state, reward, *_ = step(jax.random.key(i), state, jnp.array([0.5, 0.5]), params)
    np.testing.assert_allclose(
        obs[-2:], np.array([state.bid_excitation, state.ask_excitation]) / 60.0, rtol=1e-6
    )
    assert np.isfinite(np.asarray(obs)).all() and np.isfinite(float(reward))
    assert float(state.bid_excitation) + float(state.ask_excitation) > 0
    # on a Poisson market the intensity features are 0
    plain = mm.env.MarketMakingEnv(features="hawkes")
    obs, _ = plain.reset(key, plain.default_params)
    np.testing.assert_array_equal(obs[-2:], 0.0)


def test_ppo_config_builds_the_hawkes_market():
    from train.config import PPOConfig, market_env

    config = PPOConfig(
        arrival_model="hawkes",
        hawkes_decay=20.0,
        hawkes_self=8.0,
        hawkes_cross=4.0,
        hawkes_mean_intensity=100.0,
        features="hawkes",
    ).validate()
    _, env_params = market_env(config)
    market_params = env_params.market
    assert market_params.arrival_model == "hawkes" and market_params.fill_model == "exponential"
    bid, ask = params_lib.hawkes_stationary_intensity(market_params)
    assert bid == pytest.approx(100.0) and ask == pytest.approx(100.0)
    with pytest.raises(ValueError, match="branching"):
        PPOConfig(arrival_model="hawkes", hawkes_decay=20.0, hawkes_self=20.0).validate()
    with pytest.raises(ValueError, match="hawkes_decay"):
        PPOConfig(arrival_model="hawkes").validate()
    # the default path is untouched: the homework market, Poisson flow
    _, default = market_env(PPOConfig())
    assert default.market == mm.presets.homework()


def test_evaluation_on_the_hawkes_market_uses_the_labelled_poisson_table():
    from train import evaluate
    from train.config import PPOConfig, market_env

    config = PPOConfig(arrival_model="hawkes", hawkes_decay=20.0, hawkes_self=8.0)
    _, env_params = market_env(config.validate())
    solution = evaluate.optimal_solution(env_params)
    reference = params_lib.hawkes_poisson_reference(env_params.market)
    np.testing.assert_array_equal(
        solution.bid_depth, optimal.bellman(reference, config.phi).bid_depth
    )
    policies = {"avellaneda_stoikov": evaluate.benchmark_policies(config)["avellaneda_stoikov"]}
    result = evaluate.compare(env_params, policies, jax.random.key(0), 200, solution)
    assert result["optimal_reward"] is None
    assert result["reference"] == "poisson_optimal_table" and "optimal" not in result["eval"]
    table = result["eval"]["poisson_optimal_table"]
    assert table["gap_to_reference"] == 0.0
    assert result["reference_reward"] == table["mean_reward"]
    assert all("exact_reward" not in entry for entry in result["eval"].values())
    text = evaluate.format_comparison(result)
    assert "NOT the optimum" in text and "exact optimal" not in text


@pytest.mark.slow
def test_study_quick_mode(tmp_path):
    from experiments import hawkes as study

    result = study.main([], **study.QUICK, out=tmp_path / "hawkes", agents_dir=tmp_path / "agents")
    assert (tmp_path / "hawkes" / "hawkes.png").stat().st_size > 1000
    assert (tmp_path / "hawkes" / "summary.json").is_file()
    cells = result["cells"]
    assert [row["branching"] for row in cells] == study.QUICK["branching"]
    for row in cells:
        np.testing.assert_allclose(row["stationary_mean_intensity"], study.MEAN_INTENSITY)
        for entry in row["strategies"].values():
            assert np.isfinite(entry["mean_reward"]) and np.isfinite(entry["minus_table_se"])
    assert "ppo_intensity" in cells[0]["strategies"]


def test_mean_start_keeps_the_mean_intensity_stationary_from_the_first_step():
    params = hawkes(hawkes_start="mean")
    state = market.reset(jax.random.key(0), params)
    bid, ask = params_lib.hawkes_stationary_intensity(params)
    np.testing.assert_allclose(
        [state.bid_excitation, state.ask_excitation], [bid - 60, ask - 60], rtol=1e-6
    )
    counts, mean_intensity, *_ = simulate_flow(params, 4000, 0, seed=4)
    se = mean_intensity.std(axis=0, ddof=1) / math.sqrt(len(mean_intensity))
    assert np.all(np.abs(mean_intensity.mean(axis=0) - bid) < TOLERANCE_SE * se)
    se = counts.std(axis=0, ddof=1) / math.sqrt(len(counts))
    assert np.all(np.abs(counts.mean(axis=0) - bid * params.T) < TOLERANCE_SE * se)
    with pytest.raises(ValueError, match="hawkes_start"):
        mm.presets.homework().replace(hawkes_start="mean").validate()
    with pytest.raises(ValueError, match="hawkes_start"):
        hawkes(hawkes_start="warm")


def test_multi_asset_steps_each_asset_with_its_own_hawkes_flow():
    """multi_asset runs the one market step per asset, so Hawkes flow works there: each asset
    carries its own excitation, drawn from its own stream. With excitation the fills rise well
    above those of the same base intensity without it (paired on the same keys, 4 SE)."""
    from jaxmm import multi_asset

    policy = multi_asset.per_asset(mm.policies.avellaneda_stoikov(0.1, 1.5))
    fills = []
    for jump in (0.0, 1.0):
        market_params = hawkes(hawkes_self=12.0 * jump, hawkes_cross=6.0 * jump)
        params = multi_asset.make_params(market_params, [[1.0, 0.5], [0.5, 1.0]])
        rollout = multi_asset.simulate_multi(params, policy, jax.random.key(0), 500)
        assert np.all(np.isfinite(np.asarray(rollout.pnl)))
        assets = rollout.assets
        fills.append(np.asarray(assets.n_bid_fills + assets.n_ask_fills, np.float64))
    difference = fills[1] - fills[0]  # [n_episodes, n_assets]
    se = difference.std(axis=0, ddof=1) / math.sqrt(len(difference))
    assert np.all(difference.mean(axis=0) > TOLERANCE_SE * se)
