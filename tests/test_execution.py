"""Optimal execution (``jaxmm.execution``): the closed form, the exact discrete optimum, the
Monte Carlo, the environment and ``python -m train.ppo --task execution``.

The mathematics is checked against independent computations: the CJP speed as printed in the
book (with ``zeta``), scipy's ODE solver on the HJB Riccati equation, scipy's optimiser on the
expected reward computed by running the step, the criterion recomputed from the paths, and Monte
Carlo means within 4 standard errors of the exact expectations (fixed seeds).
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct
from scipy import integrate, optimize

from jaxmm import execution as ex
from tests.conftest import run_module
from train.config import PPOConfig, initial_action, market_env

P = ex.ExecutionParams()


@struct.dataclass
class ShareSchedule:
    """Sell ``shares[t]`` at step ``t`` whatever the state (for the brute-force optimum)."""

    shares: jax.Array

    def __call__(self, state, params):
        return self.shares[state.t]


def book_speed(params, tau):
    """CJP's closed form as printed: gamma (zeta e^{g tau} + e^{-g tau}) / (zeta e^{g tau} -
    e^{-g tau}) (per share held), for finite alpha and phi > 0."""
    gamma = math.sqrt(params.phi / params.k)
    root = math.sqrt(params.k * params.phi)
    zeta = (params.alpha - params.b / 2 + root) / (params.alpha - params.b / 2 - root)
    grow, decay = np.exp(gamma * tau), np.exp(-gamma * tau)
    return gamma * (zeta * grow + decay) / (zeta * grow - decay)


# ----------------------------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("inventory", 0.0, "> 0"),
        ("sigma", -1.0, ">= 0"),
        ("k", 0.0, "> 0"),
        ("b", float("nan"), ">= 0"),
        ("phi", -0.1, ">= 0"),
        ("T", float("inf"), "> 0"),
        ("alpha", 0.02, "> b / 2"),
        ("S0", float("nan"), "finite"),
    ],
)
def test_params_reject_bad_fields_by_name(field, value, message):
    with pytest.raises(ValueError, match=rf"ExecutionParams\.{field} = .*allowed: .*{message}"):
        P.replace(**{field: value}).validate()


def test_params_reject_bad_steps_and_a_step_that_rewards_trading():
    for n_steps in (0, 2.5, True):
        with pytest.raises(ValueError, match=r"ExecutionParams\.n_steps"):
            P.replace(n_steps=n_steps).validate()
    with pytest.raises(ValueError, match=r"ExecutionParams\.k = .*k / dt > b / 2"):
        P.replace(k=0.001, b=1.0, alpha=5.0).validate()  # k / dt = 0.05 < b / 2
    P.replace(alpha=float("inf"), phi=0.0, sigma=0.0).validate()  # the limits are allowed
    with pytest.raises(ValueError, match="n_episodes"):
        ex.simulate_execution(P, ex.Twap(), jax.random.key(0), 0)


# ----------------------------------------------------------------------------------------------
# The continuous-time closed form


def test_closed_form_speed_is_the_books_formula_and_solves_the_hjb_riccati_equation():
    with jax.enable_x64(True):
        for params in (P, P.replace(alpha=0.2), P.replace(phi=0.01, b=0.3, alpha=0.4)):
            tau = np.linspace(0.0, params.T, 11)
            speed = np.asarray(ex.closed_form_speed(params, tau))
            np.testing.assert_allclose(speed, book_speed(params, tau), rtol=1e-12)

            # h_2' = phi - (b + 2 h_2)^2 / (4 k), h_2(T) = -alpha, solved backwards by scipy
            def hjb(t, h, params=params):
                return [params.phi - (params.b + 2 * h[0]) ** 2 / (4 * params.k)]

            times = params.T - tau
            solution = integrate.solve_ivp(
                hjb, (params.T, 0.0), [-params.alpha], t_eval=times, rtol=1e-11, atol=1e-12
            )
            h2 = solution.y[0]  # at t = T - tau
            value = np.asarray(ex.closed_form_value(params, tau, 1.0))
            np.testing.assert_allclose(value, h2, rtol=1e-8)
            # nu* = -(b + 2 h_2) q / (2 k): the first-order condition of the HJB equation
            np.testing.assert_allclose(speed, -(params.b + 2 * h2) / (2 * params.k), rtol=1e-8)


def test_closed_form_inventory_follows_the_closed_form_speed():
    with jax.enable_x64(True):
        for params in (P, P.replace(alpha=float("inf")), P.replace(phi=0.0)):
            t = np.linspace(0.0, 0.9, 10)
            h = 1e-6
            q = np.asarray(ex.closed_form_inventory(params, t))
            slope = (
                np.asarray(ex.closed_form_inventory(params, t + h))
                - np.asarray(ex.closed_form_inventory(params, t - h))
            ) / (2 * h)
            speed = np.asarray(ex.closed_form_speed(params, params.T - t))
            np.testing.assert_allclose(-slope / q, speed, rtol=1e-6)
            assert q[0] == pytest.approx(params.inventory)
        assert float(ex.closed_form_inventory(P.replace(alpha=float("inf")), 1.0)) == 0.0
        assert float(ex.closed_form_inventory(P, 1.0)) > 0.0


def test_closed_form_limits():
    with jax.enable_x64(True):
        tau = np.linspace(0.05, 1.0, 20)
        # phi = 0: nu / q = 1 / (k / (alpha - b/2) + tau); also the limit phi -> 0
        no_penalty = P.replace(phi=0.0)
        expected = 1.0 / (P.k / (P.alpha - P.b / 2) + tau)
        np.testing.assert_allclose(ex.closed_form_speed(no_penalty, tau), expected, rtol=1e-12)
        np.testing.assert_allclose(
            ex.closed_form_speed(P.replace(phi=1e-9), tau), expected, rtol=1e-6
        )
        # alpha = inf: Almgren-Chriss gamma coth(gamma tau); and then phi -> 0: TWAP, 1 / tau
        must_sell = P.replace(alpha=float("inf"))
        gamma = math.sqrt(P.phi / P.k)
        np.testing.assert_allclose(
            ex.closed_form_speed(must_sell, tau), gamma / np.tanh(gamma * tau), rtol=1e-12
        )
        np.testing.assert_allclose(
            ex.closed_form_speed(must_sell.replace(phi=0.0), tau), 1.0 / tau, rtol=1e-12
        )
        np.testing.assert_allclose(
            ex.closed_form_speed(P.replace(alpha=1e9), tau), book_speed(P.replace(alpha=1e9), tau)
        )
        # the value with alpha = inf, phi = 0: temporary cost k Q^2 / T, permanent b Q^2 / 2
        twap_value = -(P.k / P.T + P.b / 2) * P.inventory**2
        value = ex.closed_form_value(must_sell.replace(phi=0.0))
        assert float(value) == pytest.approx(twap_value, rel=1e-12)
        assert np.all(np.isposinf(np.asarray(ex.closed_form_speed(must_sell, 0.0 * tau))))


# ----------------------------------------------------------------------------------------------
# The exact discrete optimum


def test_riccati_converges_to_the_closed_form_at_first_order_in_dt():
    with jax.enable_x64(True):
        steps = (50, 100, 200, 400, 800)
        closed = float(ex.closed_form_value(P))
        errors = np.array(
            [abs(float(ex.riccati(P.replace(n_steps=n)).value) - closed) for n in steps]
        )
        rates = np.log2(errors[:-1] / errors[1:])
        np.testing.assert_allclose(rates, 1.0, atol=0.05)  # the error halves with dt
        # the policy too: the optimal fraction per dt tends to the closed-form speed
        fine = ex.riccati(P.replace(n_steps=800))
        times = np.asarray(fine.times[:-1])
        speed = np.asarray(ex.closed_form_speed(P, P.T - times))
        np.testing.assert_allclose(np.asarray(fine.fraction) / (P.T / 800), speed, rtol=0.02)
        np.testing.assert_allclose(
            fine.inventory, ex.closed_form_inventory(P, fine.times), rtol=0.01
        )


def test_riccati_is_the_brute_force_optimum_of_the_step():
    """scipy maximises the expected episode reward over the four sales, the reward computed by
    running the step itself without noise (exact for a fixed schedule)."""
    with jax.enable_x64(True):
        for params in (P.replace(n_steps=4), P.replace(n_steps=4, b=0.4, phi=3.0, alpha=0.5)):
            reward = jax.jit(lambda v, params=params: ex.expected_reward(params, ShareSchedule(v)))
            result = optimize.minimize(
                lambda v, reward=reward: -float(reward(jnp.asarray(v))),
                np.full(4, params.inventory / 4),
                method="BFGS",
                options={"gtol": 1e-10},
            )
            solution = ex.riccati(params)
            shares = -np.diff(np.asarray(solution.inventory))
            np.testing.assert_allclose(result.x, shares, rtol=1e-5)
            assert -result.fun == pytest.approx(float(solution.value), rel=1e-10)
            assert float(ex.expected_reward(params, solution.policy())) == pytest.approx(
                float(solution.value), rel=1e-12
            )
            # the value coefficients: J_i(q) at another inventory, by the same brute force
            tail = P.replace(n_steps=1, alpha=params.alpha, b=params.b, phi=params.phi, T=0.25)
            one = optimize.minimize_scalar(
                lambda v, tail=tail: -float(ex.expected_reward(tail, ShareSchedule(jnp.full(1, v))))
            )
            assert -one.fun == pytest.approx(float(solution.value_at(3, params.inventory)))


def test_a_dynamic_programme_on_an_inventory_grid_converges_to_riccati_from_below():
    """Bellman's recursion over every pair of grid inventories (buying allowed), in numpy."""
    with jax.enable_x64(True):
        exact = float(ex.riccati(P).value)
    kappa0 = P.k / P.dt
    gaps = []
    for n_points in (100, 200, 400, 800):
        grid = P.inventory * np.arange(n_points + 1) / n_points
        q, u = grid[:, None], grid[None, :]
        v = q - u
        step_reward = -kappa0 * v**2 - P.b * v * u - P.phi * P.dt * u**2
        value = -P.alpha * grid**2
        for _ in range(P.n_steps):
            value = np.max(step_reward + value[None, :], axis=1)
        gaps.append(exact - value[-1])
    gaps = np.array(gaps)
    assert np.all(gaps >= -1e-9) and np.all(np.diff(gaps) < 0)  # grid policies are feasible
    assert gaps[-1] < 2e-4 * abs(exact)


def test_riccati_twap_limits():
    with jax.enable_x64(True):
        n = P.n_steps
        twap = ex.riccati(P.replace(alpha=float("inf"), phi=0.0))
        np.testing.assert_allclose(twap.fraction, 1.0 / (n - np.arange(n)), rtol=1e-12)
        np.testing.assert_allclose(twap.inventory, P.inventory * (1 - np.arange(n + 1) / n))
        expected = -(P.k / P.T + P.b / 2 - P.b / (2 * n)) * P.inventory**2
        assert float(twap.value) == pytest.approx(expected, rel=1e-12)
        assert float(ex.expected_reward(P, ex.Twap())) == pytest.approx(
            float(ex.expected_reward(P, twap.policy())), rel=1e-12
        )
        # phi = 0: 1 / a'_0 = n / kappa + 1 / (alpha - b/2), the discrete CJP phi = 0 limit
        kappa = P.k / P.dt - P.b / 2
        free = ex.riccati(P.replace(phi=0.0))
        a0 = 1.0 / (n / kappa + 1.0 / (P.alpha - P.b / 2)) + P.b / 2
        assert float(free.value_coefficient[0]) == pytest.approx(a0, rel=1e-12)
        assert np.all(np.isfinite(np.asarray(ex.riccati(P.replace(alpha=float("inf"))).value)))


def test_riccati_vmaps_over_parameters_and_the_optimum_beats_the_rules():
    phis = jnp.array([0.0, 0.1, 0.9, 5.0])
    values = jax.vmap(lambda phi: ex.riccati(P.replace(phi=phi)).value)(phis)
    for phi, value in zip(phis, values, strict=True):
        params = P.replace(phi=float(phi))
        assert float(value) == pytest.approx(float(ex.riccati(params).value), rel=1e-6)
        for rule in (ex.Twap(), ex.ContinuousSpeed()):
            assert float(ex.expected_reward(params, rule)) <= float(value) + 1e-4
    assert np.all(np.diff(np.asarray(values)) < 0)  # a heavier penalty costs more


# ----------------------------------------------------------------------------------------------
# Monte Carlo: conservation, common random numbers, agreement with the exact expectations


def test_episode_reward_is_the_criterion_computed_from_the_paths():
    for x64 in (False, True):
        with jax.enable_x64(x64):
            params = P.replace(n_steps=20)
            rollout = ex.simulate_execution(
                params, ex.riccati(params).policy(), jax.random.key(3), 50, paths=True
            )
            paths = {name: np.asarray(value, np.float64) for name, value in rollout.paths.items()}
            q, mid, shares = paths["inventory"], paths["mid"], paths["shares"]
            cash = np.sum(shares * paths["price"], axis=1)
            np.testing.assert_allclose(paths["price"], mid[:, :-1] - params.k / params.dt * shares)
            np.testing.assert_allclose(q[:, 1:], q[:, :-1] - shares, atol=1e-6)
            criterion = (
                cash
                + q[:, -1] * (mid[:, -1] - params.alpha * q[:, -1])
                - params.phi * params.dt * np.sum(q[:, 1:] ** 2, axis=1)
                - params.inventory * params.S0
            )
            tolerance = 1e-9 if x64 else 2e-3  # float32: cash ~ Q0 S0 = 1000
            np.testing.assert_allclose(rollout.reward, criterion, rtol=0, atol=tolerance)
            np.testing.assert_allclose(
                np.sum(paths["reward"], axis=1), rollout.reward, atol=tolerance
            )
            np.testing.assert_allclose(
                rollout.pnl - rollout.running_penalty, rollout.reward, atol=tolerance
            )


def test_common_random_numbers_and_reproducibility():
    key = jax.random.key(7)
    twap = ex.simulate_execution(P, ex.Twap(), key, 64, paths=True)
    optimum = ex.simulate_execution(P, ex.riccati(P).policy(), key, 64, paths=True)
    again = ex.simulate_execution(P, ex.Twap(), key, 64, paths=True)
    np.testing.assert_array_equal(twap.reward, again.reward)

    def noise(rollout):  # S_{t+1} - S_t + b v_t = sigma sqrt(dt) Z_t
        mid, shares = (np.asarray(rollout.paths[n], np.float64) for n in ("mid", "shares"))
        return np.diff(mid, axis=1) + P.b * shares

    np.testing.assert_allclose(noise(twap), noise(optimum), atol=2e-4)
    z = noise(twap) / (P.sigma * math.sqrt(P.dt))
    assert abs(z.mean()) < 4 / math.sqrt(z.size) and abs(z.std() - 1) < 0.05
    # episode e's path does not depend on the number of episodes
    fewer = ex.simulate_execution(P, ex.Twap(), key, 16)
    np.testing.assert_array_equal(fewer.reward, twap.reward[:16])


def test_monte_carlo_means_agree_with_the_exact_expectations():
    n = 20_000
    key = jax.random.key(2026)
    solution = ex.riccati(P)
    for policy, exact in (
        (solution.policy(), float(solution.value)),
        (ex.Twap(), float(ex.expected_reward(P, ex.Twap()))),
        (ex.ContinuousSpeed(), float(ex.expected_reward(P, ex.ContinuousSpeed()))),
    ):
        reward = np.asarray(ex.simulate_execution(P, policy, key, n).reward, np.float64)
        stderr = reward.std(ddof=1) / math.sqrt(n)
        assert abs(reward.mean() - exact) < 4 * stderr, (type(policy).__name__, reward.mean())
    # the variance is sigma^2 dt sum q_{i+1}^2 along the deterministic optimal path
    reward = np.asarray(ex.simulate_execution(P, solution.policy(), key, n).reward, np.float64)
    variance = P.sigma**2 * P.dt * np.sum(np.asarray(solution.inventory[1:], np.float64) ** 2)
    assert reward.var(ddof=1) == pytest.approx(variance, rel=4 * math.sqrt(2 / n))


# ----------------------------------------------------------------------------------------------
# The environment


def test_env_steps_the_same_episode_as_the_simulation():
    env = ex.ExecutionEnv()
    key = jax.random.key(11)
    solution = ex.riccati(P)
    episode = 3
    rollout = ex.simulate_execution(P, solution.policy(), key, episode + 1, paths=True)
    obs, state = env.reset(jax.random.fold_in(key, episode), P)
    assert obs.shape == (3,) and env.observation_space(P).contains(obs)
    np.testing.assert_allclose(obs, [1.0, 1.0, 0.0])
    step = jax.jit(env.step)
    rewards = []
    for t in range(P.n_steps):
        action = jnp.asarray([solution.fraction[t]])
        obs, state, reward, terminated, truncated, info = step(jax.random.key(t), state, action, P)
        rewards.append(float(reward))
        assert bool(terminated) == (t == P.n_steps - 1) and not bool(truncated)
        assert info["discount"] == (0.0 if t == P.n_steps - 1 else 1.0)
    np.testing.assert_allclose(rewards, rollout.paths["reward"][episode], rtol=1e-6, atol=1e-6)
    # auto-reset: the state after the last step is a fresh episode
    assert int(state.t) == 0 and float(state.inventory) == P.inventory
    final = np.asarray(info["final_observation"])
    left = rollout.paths["inventory"][episode, -1] / P.inventory
    np.testing.assert_allclose(final[:2], [left, 0.0], rtol=1e-5)
    np.testing.assert_allclose(obs, [1.0, 1.0, 0.0])


def test_env_clips_actions_and_agent_policies_run_in_the_simulation():
    env = ex.ExecutionEnv()
    _, state = env.reset(jax.random.key(0), P)
    for action, sold in ((2.0, P.inventory), (-1.0, 0.0), (0.25, 0.25 * P.inventory)):
        _, _, _, _, _, info = env.step(jax.random.key(1), state, jnp.asarray([action]), P)
        assert float(info["shares"]) == pytest.approx(sold)
    assert env.action_space(P).shape == (1,) and env == ex.ExecutionEnv()
    # a constant-fraction "agent" as a policy gives the schedule's exact reward
    policy = env.as_policy(lambda obs: jnp.full((1,), 0.1), P)
    schedule = ex.FractionSchedule(jnp.full((P.n_steps,), 0.1))
    key = jax.random.key(4)
    np.testing.assert_allclose(
        ex.simulate_execution(P, policy, key, 32).reward,
        ex.simulate_execution(P, schedule, key, 32).reward,
        rtol=1e-6,
    )
    batched = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(jax.random.key(0), 8), P)
    assert batched[0].shape == (8, 3)


# ----------------------------------------------------------------------------------------------
# Training


def test_config_builds_the_execution_task_and_rejects_bad_numbers():
    config = PPOConfig(task="execution", execution_phi=0.5, execution_steps=20).validate()
    env, params = market_env(config)
    assert isinstance(env, ex.ExecutionEnv) and params.phi == 0.5 and params.n_steps == 20
    np.testing.assert_allclose(initial_action(config, env, params), [1.0 / 20])
    with pytest.raises(ValueError, match=r"execution_\*: ExecutionParams\.phi"):
        PPOConfig(task="execution", execution_phi=-1.0).validate()
    with pytest.raises(ValueError, match="task"):
        PPOConfig(task="trading").validate()
    with pytest.raises(ValueError, match="random_regimes"):
        PPOConfig(task="execution", random_regimes=True).validate()
    with pytest.raises(ValueError, match=r"ExecutionParams\.alpha"):
        ex.riccati(P.replace(alpha=0.0))
    assert market_env(PPOConfig())[0].name.startswith("MarketMaking")


@pytest.mark.slow  # a child process that compiles the trainer and seven simulations: ~25 s CPU
def test_train_cli_execution_smoke(tmp_path):
    result = run_module(
        "train.ppo",
        "--task", "execution", "--execution-steps", "10",
        "--total-timesteps", "256", "--num-envs", "16", "--num-steps", "8",
        "--num-seeds", "1", "--num-evals", "1", "--progress-episodes", "20",
        "--eval-episodes", "400", "--no-stagger-envs",
        "--name", "smoke", "--out-dir", str(tmp_path),
        timeout=600,
    )  # fmt: skip
    assert "optimality gap" in result.stdout
    metrics = json.loads((tmp_path / "smoke" / "metrics.json").read_text())
    assert set(metrics["eval"]) == {"ppo", "twap", "closed_form", "optimal"}
    assert metrics["config"]["task"] == "execution"
    params = ex.ExecutionParams(n_steps=10)
    assert metrics["optimal_reward"] == pytest.approx(float(ex.riccati(params).value), rel=1e-6)
    for name in ("twap", "closed_form", "optimal"):
        stats = metrics["eval"][name]
        assert abs(stats["mean_reward"] - stats["exact_reward"]) < 4 * stats["stderr_reward"]
    assert metrics["eval"]["optimal"]["optimality_gap"] == 0.0
    ppo = metrics["eval"]["ppo"]
    assert metrics["optimality_gap"] == ppo["optimality_gap"] > -4 * ppo["optimality_gap_stderr"]
    assert (tmp_path / "smoke" / "training_curve.png").stat().st_size > 10_000
