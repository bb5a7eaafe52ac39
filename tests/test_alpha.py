"""The short-term alpha signal (``alpha_model="ou"``): the exact step and its law within standard
errors, the default market unchanged, the exact (t, q, alpha) optimum (its alpha-free limit,
its convergence in the alpha grid, Monte Carlo of its policy), the first-order closed form
against an ODE and the optimum, the environment's feature and the training configuration."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

import jaxmm as mm
from jaxmm import market, optimal
from jaxmm.env import FEATURE_SETS, MarketMakingEnv

PHI = 0.01  # the environment's per-step inventory penalty
ZETA, ETA = 10.0, 15.0  # alpha's mean reversion (per time unit) and volatility


def plain_market(**kwargs):
    """The homework market on half a session (dt = 1/200 as in the homework), |q| <= 6."""
    return mm.presets.homework().replace(T=0.5, n_steps=100, q_max=6.0, **kwargs)


def alpha_market(**kwargs):
    values = {"alpha_rate": ZETA, "alpha_vol": ETA, **kwargs}
    return plain_market(alpha_model="ou", **values)


@functools.cache
def solved(n_alpha: int):
    return optimal.bellman_alpha(alpha_market(), PHI, n_alpha=n_alpha)


# ------------------------------------------------------------------------ the market step


def test_errors_name_the_field():
    cases = [
        ({"alpha_model": "ou"}, "alpha_rate"),
        ({"alpha_rate": 1.0}, "alpha_rate"),
        ({"alpha0": 1.0}, "alpha0"),
        ({"alpha_model": "ou", "alpha_rate": 0.0, "alpha_vol": 1.0}, "alpha_rate"),
        ({"alpha_model": "ou", "alpha_rate": 1.0, "alpha_vol": -1.0}, "alpha_vol"),
        ({"alpha_model": "ou", "alpha_rate": 1.0, "alpha_vol": 1.0, "alpha0": np.nan}, "alpha0"),
        ({"alpha_model": "jumpy"}, "alpha_model"),
        (
            {"alpha_model": "ou", "alpha_rate": 1.0, "alpha_vol": 1.0, "price_model": "geometric"},
            "alpha_model",
        ),
    ]
    for changes, field in cases:
        with pytest.raises(ValueError, match=field):
            plain_market(**changes).validate()
    with pytest.raises(ValueError, match="alpha_model"):
        optimal.bellman(alpha_market(), PHI)  # the (t, q) solvers refuse it by name
    with pytest.raises(ValueError, match="alpha_model"):
        optimal.evaluate(alpha_market(), mm.policies.symmetric(0.7), PHI)
    with pytest.raises(ValueError, match="alpha_model"):
        optimal.bellman_alpha(plain_market(), PHI)
    with pytest.raises(ValueError, match="n_alpha"):
        optimal.bellman_alpha(alpha_market(), PHI, n_alpha=20)
    with pytest.raises(ValueError, match="alpha_model='ou'"):
        mm.simulate(plain_market(), mm.policies.alpha_table(solved(11)), jax.random.key(0), 2)


def test_off_by_default_and_a_zero_alpha_changes_nothing():
    """Default: no alpha field anywhere. With alpha_vol = alpha0 = 0 the mid path, the fills and
    the PnL equal the plain market's on the same key exactly (the alpha's noise comes from its
    own block, so the other streams are untouched)."""
    params = plain_market()
    assert params.alpha_rate is None and params.alpha_vol is None and params.alpha0 is None
    assert market.reset(jax.random.key(0), params).alpha is None
    policy = mm.policies.avellaneda_stoikov(0.1)
    key = jax.random.key(5)
    plain = mm.simulate(params, policy, key, 64, paths=True)
    zero = mm.simulate(alpha_market(alpha_vol=0.0), policy, key, 64, paths=True)
    np.testing.assert_array_equal(zero.paths.mid, plain.paths.mid)
    np.testing.assert_array_equal(zero.paths.inventory, plain.paths.inventory)
    np.testing.assert_array_equal(zero.pnl, plain.pnl)
    with_alpha = mm.simulate(alpha_market(), policy, key, 64, paths=True)
    assert not np.array_equal(with_alpha.paths.mid, plain.paths.mid)


def test_one_step_is_the_exact_transition():
    params = alpha_market(alpha0=3.0)
    state = market.reset(jax.random.key(0), params)
    assert float(state.alpha) == 3.0
    noise = market.counter_noise(market.stream_key(jax.random.key(7)), 0, 0)
    quotes = mm.Quotes(bid_depth=jnp.inf, ask_depth=jnp.inf)
    new, _ = market.step_with_noise(state, quotes, noise, params)
    dt = params.dt
    z_mid = float(market.normal_from_uniform(noise.u_mid))
    z_alpha = float(market.normal_from_uniform(market.extension_noise(noise, params).u_alpha))
    assert float(new.mid) == pytest.approx(
        params.S0 + 3.0 * dt + params.sigma * math.sqrt(dt) * z_mid, abs=1e-4
    )
    spread = ETA * math.sqrt(-math.expm1(-2 * ZETA * dt) / (2 * ZETA))
    assert float(new.alpha) == pytest.approx(
        3.0 * math.exp(-ZETA * dt) + spread * z_alpha, rel=1e-5
    )


def _terminal_state(params, n: int, seed: int):
    stream = market.stream_key(jax.random.key(seed))
    episodes = jnp.arange(n, dtype=jnp.uint32)
    start = jax.vmap(lambda _: market.reset(jax.random.key(0), params))(episodes)
    quotes = mm.Quotes(bid_depth=jnp.full((n,), jnp.inf), ask_depth=jnp.full((n,), jnp.inf))
    step = jax.vmap(market.step_with_noise, in_axes=(0, 0, 0, None))

    @jax.jit
    def run(state):
        def body(state, t):
            noise = market.counter_noise(stream, episodes, jnp.full((n,), t))
            return step(state, quotes, noise, params)[0], None

        return jax.lax.scan(body, state, jnp.arange(params.n_steps))[0]

    return run(start)


def test_terminal_alpha_and_mid_have_the_exact_law():
    """20,000 episodes (seed 0, no quotes): ``alpha_N ~ N(alpha0 e^{-zeta T}, eta^2 (1 -
    e^{-2 zeta T}) / (2 zeta))`` and ``E[S_N - S0] = alpha0 dt sum_i e^{-zeta i dt}`` with
    ``Var = sigma^2 T + Var(dt sum_i alpha_i)``, within 4 standard errors."""
    alpha0 = 4.0
    params = alpha_market(alpha0=alpha0)
    n, dt, steps = 20_000, params.dt, params.n_steps
    final = _terminal_state(params, n, seed=0)
    alpha = np.asarray(final.alpha, np.float64)
    mean = alpha0 * math.exp(-ZETA * params.T)
    var = ETA**2 * -math.expm1(-2 * ZETA * params.T) / (2 * ZETA)
    assert abs(alpha.mean() - mean) < 4 * math.sqrt(var / n)
    assert abs(alpha.var(ddof=1) - var) < 4 * var * math.sqrt(2 / (n - 1))
    move = np.asarray(final.mid, np.float64) - params.S0
    decay = math.exp(-ZETA * dt)
    drift = alpha0 * dt * sum(decay**i for i in range(steps))
    # Var(sum_i alpha_i dt): Cov(alpha_i, alpha_j) = s^2 decay^|i-j| (1 - decay^(2 min(i,j)))
    s2 = ETA**2 / (2 * ZETA)
    i = np.arange(steps)
    cov = (
        s2 * decay ** np.abs(i[:, None] - i[None, :]) * (1 - decay ** (2 * np.minimum.outer(i, i)))
    )
    move_var = params.sigma**2 * params.T + dt**2 * cov.sum()
    assert abs(move.mean() - drift) < 4 * math.sqrt(move_var / n)
    assert abs(move.var(ddof=1) - move_var) < 4 * move_var * math.sqrt(2 / (n - 1))
    assert drift > 8 * math.sqrt(move_var / n)  # the drift is visible at this sample size


@pytest.mark.slow
def test_vmap_over_the_alpha_numbers():
    stream = market.stream_key(jax.random.key(1))
    episodes = jnp.arange(32, dtype=jnp.uint32)
    policy = mm.policies.symmetric(0.7)
    vols = jnp.array([0.0, 5.0, 20.0])

    def run(vol):
        params = alpha_market(alpha_vol=vol, alpha0=2.0)
        return mm.rollout(params, policy, stream, episodes, paths=True).paths.mid

    mids = np.asarray(jax.jit(jax.vmap(run))(vols))
    for index, vol in enumerate([0.0, 5.0, 20.0]):
        single = mm.simulate(
            alpha_market(alpha_vol=vol, alpha0=2.0), policy, jax.random.key(1), 32, paths=True
        )
        np.testing.assert_allclose(mids[index], single.paths.mid, rtol=1e-6)
    assert not np.allclose(mids[1], mids[2])


# ---------------------------------------------------------------- the exact optimum


def test_grid_transition_is_the_binned_gaussian():
    params = alpha_market()
    alphas, transition = optimal.alpha_grid(params, 41, 4.0)
    sd = ETA / math.sqrt(2 * ZETA)
    assert alphas[0] == pytest.approx(-4 * sd) and alphas[20] == 0.0
    np.testing.assert_allclose(transition.sum(axis=1), 1.0, atol=1e-14)
    # an interior row: mean and variance of the binned normal (Sheppard's correction h^2 / 12)
    h = alphas[1] - alphas[0]
    row = transition[25]
    mean = alphas[25] * math.exp(-ZETA * params.dt)
    var = ETA**2 * -math.expm1(-2 * ZETA * params.dt) / (2 * ZETA)
    assert row @ alphas == pytest.approx(mean, abs=1e-6)
    assert row @ (alphas - mean) ** 2 == pytest.approx(var + h * h / 12, rel=1e-3)
    _, still = optimal.alpha_grid(params.replace(alpha_vol=0.0, alpha0=1.0), 11)
    assert set(np.unique(still)) == {0.0, 1.0}  # deterministic: a point mass per row


@pytest.mark.parametrize("price_model", ["arithmetic", "binary"])
def test_zero_alpha_vol_is_bellman_exactly(price_model):
    """alpha_vol = 0, alpha0 = 0: alpha stays 0 and the alpha = 0 slice is ``bellman``."""
    reference = optimal.bellman(plain_market(price_model=price_model), PHI)
    market_params = alpha_market(alpha_vol=0.0, price_model=price_model)
    solution = optimal.bellman_alpha(market_params, PHI, n_alpha=11)
    centre = solution.alpha_index(0.0)
    np.testing.assert_allclose(solution.value[:, :, centre], reference.value, rtol=0, atol=1e-12)
    np.testing.assert_allclose(solution.bid_depth[:, :, centre], reference.bid_depth, atol=1e-12)
    np.testing.assert_allclose(solution.ask_depth[:, :, centre], reference.ask_depth, atol=1e-12)
    assert solution.value_at(0, 0, 0.0) == pytest.approx(reference.value_at(0, 0), abs=1e-12)


def test_value_converges_as_the_alpha_grid_refines():
    """V(0, 0, 0) for n_alpha = 11, 21, 41, 81: each difference at most half the previous one
    (about a quarter: second order in the grid step), and alpha is worth something."""
    values = [solved(n).value_at(0, 0, 0.0) for n in (11, 21, 41, 81)]
    gaps = np.abs(np.diff(values))
    assert gaps[1] < 0.5 * gaps[0] and gaps[2] < 0.5 * gaps[1]
    blind = optimal.bellman(plain_market(), PHI).value_at(0, 0)
    assert values[-1] > blind + 20 * gaps[-1]


def test_symmetry_of_the_optimum():
    """Flipping alpha and inventory swaps the sides: bid(t, q, a) = ask(t, -q, -a)."""
    solution = solved(21)
    bid = solution.bid_depth[:-1, :-1]  # q = -Q..Q-1 (the bid is quoted)
    ask = solution.ask_depth[:-1, 1:][:, ::-1, ::-1]  # q = Q..-Q+1, alpha reversed
    np.testing.assert_allclose(bid, ask, atol=1e-9)
    # a positive alpha narrows the bid and widens the ask at q = 0
    zero, up = solution.alpha_index(0.0), solution.alpha_index(5.0)
    q0 = solution.q_index(0)
    assert solution.bid_depth[0, q0, up] < solution.bid_depth[0, q0, zero]
    assert solution.ask_depth[0, q0, up] > solution.ask_depth[0, q0, zero]


def test_evaluate_of_the_optimal_table_is_its_value():
    solution = solved(21)
    value = optimal.evaluate_alpha(alpha_market(), solution, PHI, n_alpha=21)
    np.testing.assert_allclose(value.value, solution.value, atol=1e-9)
    blind = optimal.evaluate_alpha(
        alpha_market(), mm.policies.avellaneda_stoikov(0.1), PHI, n_alpha=21
    )
    assert blind.value_at(0, 0, 0.0) < solution.value_at(0, 0, 0.0)


def test_monte_carlo_of_the_table_policy_matches_its_value():
    """The table (n_alpha = 81) simulated on the continuous alpha: mean episode reward within 4
    standard errors of the DP value (20,000 episodes, seed 0)."""
    solution = solved(81)
    rollout = mm.simulate(
        alpha_market(), mm.policies.alpha_table(solution), jax.random.key(0), 20_000
    )
    reward = np.asarray(mm.rewards.episode_reward(rollout, PHI), np.float64)
    se = reward.std(ddof=1) / math.sqrt(reward.size)
    assert abs(reward.mean() - solution.value_at(0, 0, 0.0)) < 4 * se


# ----------------------------------------------------- the closed form (first order in alpha)


def test_closed_form_h1_solves_its_ode():
    """``h_1`` from the block matrix exponential against scipy's ODE solver on
    ``-h_1' = q - zeta h_1 + (A/e) sum (omega_{q+-1}/omega_q)(h_1(q+-1) - h_1(q))``."""
    A, k, phi_c, Q, T = 100.0, 1.5, 2.0, 4, 0.5
    table = optimal.cartea_jaimungal_alpha(A, k, phi_c, Q, T, alpha_rate=ZETA, n_steps=50)
    base = optimal.cartea_jaimungal(A, k, phi_c, Q, T, n_steps=50)
    q = np.arange(-Q, Q + 1, dtype=np.float64)
    M = np.diag(-phi_c * k * q**2) + (A / math.e) * (np.eye(q.size, k=1) + np.eye(q.size, k=-1))

    def rhs(tau, y):  # in time to go tau = T - t: d/dtau [h1; omega]
        h1, omega = y[: q.size], y[q.size :]
        up = np.append(omega[1:] / omega[:-1], 0.0) * (np.append(h1[1:], 0.0) - h1)
        down = np.insert(omega[:-1] / omega[1:], 0, 0.0) * (np.insert(h1[:-1], 0, 0.0) - h1)
        return np.concatenate([q - ZETA * h1 + (A / math.e) * (up + down), M @ omega])

    ode = solve_ivp(
        rhs,
        (0, T),
        np.concatenate([np.zeros(q.size), np.ones(q.size)]),
        rtol=1e-10,
        atol=1e-12,
        t_eval=[T / 2, T],
    )
    np.testing.assert_allclose(table.alpha_value[25], ode.y[: q.size, 0], atol=1e-7)
    np.testing.assert_allclose(table.alpha_value[0], ode.y[: q.size, 1], atol=1e-7)
    np.testing.assert_allclose(table.bid_depth, base.bid_depth)
    assert np.all(table.alpha_value[0, Q + 1 :] > 0)  # long inventory gains from alpha > 0
    np.testing.assert_allclose(table.alpha_value[0], -table.alpha_value[0, ::-1], atol=1e-12)


def test_closed_form_against_the_optimum():
    """At t = 0 and |q| <= 3 the closed form's alpha slope of the depths (in time units) is
    within 10% of the optimum's (central difference at alpha = 0, n_alpha = 41), and the
    closed-form policy's exact value is within 0.5% of the optimum."""
    params = alpha_market()
    solution = solved(41)
    closed = optimal.cartea_jaimungal_alpha(
        params.A, params.k, PHI / params.dt, 6, params.T, alpha_rate=ZETA, n_steps=params.n_steps
    )
    c = solution.alpha_index(0.0)
    step = solution.alphas[c + 1] - solution.alphas[c - 1]
    rows = slice(3, 10)  # q = -3..3
    dp_bid = (solution.bid_depth[0, rows, c + 1] - solution.bid_depth[0, rows, c - 1]) / step
    dp_ask = (solution.ask_depth[0, rows, c + 1] - solution.ask_depth[0, rows, c - 1]) / step
    np.testing.assert_allclose(closed.bid_slope[0, rows], dp_bid, rtol=0.10)
    np.testing.assert_allclose(closed.ask_slope[0, rows], dp_ask, rtol=0.10)
    value = optimal.evaluate_alpha(params, mm.policies.alpha_skew(closed), PHI, n_alpha=41)
    best = solution.value_at(0, 0, 0.0)
    assert best * (1 - 0.005) < value.value_at(0, 0, 0.0) <= best + 1e-9


# ---------------------------------------------------------------- environment and training


def test_environment_feature_and_policy_adapter():
    env = MarketMakingEnv(features="alpha")
    assert FEATURE_SETS["alpha"] == (*FEATURE_SETS["full"], "alpha")
    params = env.default_params.replace(market=alpha_market(alpha0=2.0))
    obs, state = env.reset(jax.random.key(0), params)
    sd = ETA / math.sqrt(2 * ZETA)
    assert float(obs[-1]) == pytest.approx(2.0 / sd, rel=1e-6)
    step = jax.jit(env.step)
    key = jax.random.key(1)
    for _ in range(3):
        key, sub = jax.random.split(key)
        obs, state, reward, *_ = step(sub, state, jnp.array([0.5, 0.5]), params)
    assert float(obs[-1]) == pytest.approx(float(state.alpha) / sd, rel=1e-5)
    assert np.isfinite(float(reward))
    full = MarketMakingEnv(features="full").observation(state, params)
    np.testing.assert_allclose(obs[:-1], full, rtol=1e-6)  # "alpha" is "full" plus the alpha column

    # the adapter gives the agent its alpha feature: quotes skewed by it equal the direct rule
    def action(features):
        return jnp.array([0.7 - 0.1 * features[-1], 0.7 + 0.1 * features[-1]])

    def direct(obs, market_params):
        shift = 0.1 * obs.alpha / sd
        return mm.Quotes(bid_depth=0.7 - shift, ask_depth=0.7 + shift)

    key = jax.random.key(2)
    via_env = mm.simulate(params.market, env.as_policy(action, params), key, 256)
    by_hand = mm.simulate(params.market, direct, key, 256)
    np.testing.assert_allclose(via_env.pnl, by_hand.pnl, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="alpha"):
        env.reset(jax.random.key(0), env.default_params)


def test_training_config():
    from train.config import PPOConfig, market_env

    config = PPOConfig(
        alpha_model="ou", alpha_rate=ZETA, alpha_vol=ETA, features="alpha", alpha_grid_points=11
    ).validate()
    _, env_params = market_env(config)
    assert env_params.market.alpha_model == "ou" and env_params.market.alpha_vol == ETA
    _, plain = market_env(PPOConfig())
    assert plain.market.alpha_model == "none" and plain.market.alpha_rate is None
    for bad, field in (
        ({"alpha_rate": 1.0}, "alpha_rate"),
        ({"features": "alpha"}, "features"),
        ({"alpha_model": "ou", "alpha_rate": -1.0, "alpha_vol": 1.0}, "alpha_rate"),
        (
            {"alpha_model": "ou", "alpha_rate": 1.0, "alpha_vol": 1.0, "alpha_grid_points": 4},
            "alpha_grid_points",
        ),
    ):
        with pytest.raises(ValueError, match=field):
            PPOConfig(**bad).validate()


@pytest.mark.slow
def test_evaluation_scores_against_the_alpha_optimum():
    from train import evaluate
    from train.config import PPOConfig, market_env

    config = PPOConfig(alpha_model="ou", alpha_rate=ZETA, alpha_vol=ETA, features="alpha")
    _, env_params = market_env(config.validate())
    # scored against the (t, q, alpha) optimum, its table simulated on the same paths
    env_params = env_params.replace(market=alpha_market())
    solution = evaluate.optimal_solution(env_params, n_alpha=11)
    assert isinstance(solution, optimal.AlphaQuoteTable)
    policies = {"naive": mm.policies.symmetric(0.7)}
    result = evaluate.compare(env_params, policies, jax.random.key(3), 2_000, solution)
    assert result["optimal_reward"] == solution.value_at(0, 0, 0.0)
    assert result["eval"]["optimal"]["exact_reward"] == pytest.approx(result["optimal_reward"])
    assert result["eval"]["naive"]["exact_reward"] < result["optimal_reward"]
    assert result["eval"]["optimal"]["optimality_gap"] == 0.0


@pytest.mark.slow
def test_ppo_cli_trains_on_the_alpha_market(tmp_path):
    """``python -m train.ppo --alpha-model ou ...`` end to end at a tiny budget: the agent sees
    its alpha feature and is scored against the (t, q, alpha) optimum."""
    import json

    from tests.conftest import run_module

    result = run_module(
        "train.ppo",
        "--alpha-model", "ou", "--alpha-rate", "10", "--alpha-vol", "15", "--features", "alpha",
        "--alpha-grid-points", "11", "--total-timesteps", "512", "--num-envs", "16",
        "--num-steps", "8", "--num-seeds", "1", "--num-evals", "1", "--progress-episodes", "20",
        "--eval-episodes", "200", "--name", "alpha", "--out-dir", str(tmp_path),
        timeout=900,
    )  # fmt: skip
    assert "optimality gap" in result.stdout
    metrics = json.loads((tmp_path / "alpha" / "metrics.json").read_text())
    assert metrics["config"]["alpha_model"] == "ou" and metrics["config"]["features"] == "alpha"
    optimum = metrics["eval"]["optimal"]
    assert optimum["exact_reward"] == pytest.approx(metrics["optimal_reward"], rel=1e-9)
    assert "bellman_alpha" in metrics["evaluation"]["optimal"]
