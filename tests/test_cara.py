"""The exact optimum under CARA utility of terminal wealth (``optimal.bellman_cara``): its quotes
tend to the GLFT closed form as ``dt -> 0`` (first order), it matches a brute-force search on a
small MDP, its certainty equivalent is what the simulator realises, and the risk-neutral limit."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

import jaxmm as mm
from jaxmm import market, optimal, rewards
from jaxmm.env import EnvParams, MarketMakingEnv
from tests.helpers import fill_outcomes
from train import evaluate as evaluate_lib

GAMMA = 0.1


def homework(n_steps: int, **kwargs) -> mm.MarketParams:
    return mm.presets.homework().replace(
        **{"n_steps": n_steps, "q_max": 5.0, "fill_model": "exponential", **kwargs}
    )


def quote_error(n_steps: int) -> float:
    params = homework(n_steps)
    cara = optimal.bellman_cara(params, GAMMA, depth_bounds=(-2.0, 5.0))
    glft = optimal.glft(params.sigma, params.A, params.k, GAMMA, 5, params.T, n_steps=n_steps)
    bid = np.abs(cara.bid_depth[0, :-1] - glft.bid_depth[0, :-1])
    ask = np.abs(cara.ask_depth[0, 1:] - glft.ask_depth[0, 1:])
    return float(max(bid.max(), ask.max()))


def test_quotes_tend_to_glft_as_dt_goes_to_zero():
    """At t = 0 for every inventory in [-5, 5]: the gap to the continuous-time closed form
    shrinks like dt (200 -> 1,000 -> 4,000 steps: 0.054 -> 0.011 -> 0.0027)."""
    errors = [quote_error(n) for n in (200, 1000, 4000)]
    assert errors[2] < 0.005
    assert errors[0] / errors[1] > 4.0 and errors[1] / errors[2] > 3.5  # first order in dt


def brute_force_cara(params, gamma, bounds, n_grid=241):
    q_top = int(params.q_max)
    qs = np.arange(-q_top, q_top + 1).astype(np.float64)
    grid = np.linspace(*bounds, n_grid)
    kink = math.log(params.A * params.dt) / params.k  # where the linear model's cap starts
    if bounds[0] < kink < bounds[1]:
        grid = np.sort(np.append(grid, kink))
    shape = market.intensity_shape_numpy(grid, params.k)
    p = market.fill_probability_numpy(params.A * shape * params.dt, params.fill_model)
    theta = np.zeros(qs.size)
    for _ in range(params.n_steps):
        C = theta - 0.5 * gamma * params.sigma**2 * params.dt * qs**2
        new = np.empty_like(theta)
        for i in range(qs.size):
            can_bid, can_ask = i < qs.size - 1, i > 0
            r_up = math.exp(-gamma * (C[i + 1] - C[i])) if can_bid else 0.0
            r_down = math.exp(-gamma * (C[i - 1] - C[i])) if can_ask else 0.0
            pb = (p if can_bid else np.zeros_like(p))[:, None]
            pa = (p if can_ask else np.zeros_like(p))[None, :]
            eb, ea = np.exp(-gamma * grid)[:, None], np.exp(-gamma * grid)[None, :]
            ratio = (
                (1 - pb) * (1 - pa)
                + pb * (1 - pa) * eb * r_up
                + (1 - pb) * pa * ea * r_down
                + pb * pa * eb * ea
            )
            new[i] = C[i] - math.log(ratio.min()) / gamma
        theta = new
    return theta[q_top]


@pytest.mark.parametrize("fill_model", ["linear", "exponential"])
def test_matches_a_brute_force_search(fill_model):
    params = homework(5, q_max=3.0, A=20.0).replace(fill_model=fill_model)
    bounds = (0.0, 2.0)
    exact = optimal.bellman_cara(params, 0.5, depth_bounds=bounds).value_at(0, 0)
    brute = brute_force_cara(params, 0.5, bounds)
    assert exact >= brute - 1e-12
    assert exact - brute < 1e-3 * abs(exact), (exact, brute)


def test_the_simulator_realises_the_certainty_equivalent():
    """``-(1/gamma) log E[exp(-gamma PnL)]`` of the CARA table on 40,000 simulated sessions
    (seed 0) equals ``theta_0(0)`` within 4 delta-method standard errors."""
    params = homework(200)
    solution = optimal.bellman_cara(params, GAMMA, depth_bounds=(-2.0, 5.0))
    rollout = mm.simulate(params, mm.policies.table(solution), jax.random.key(0), 40_000)
    pnl = np.asarray(rollout.pnl, np.float64)
    shift = pnl.mean()
    weights = np.exp(-GAMMA * (pnl - shift))
    estimate = shift - math.log(weights.mean()) / GAMMA
    stderr = weights.std(ddof=1) / (math.sqrt(pnl.size) * weights.mean() * GAMMA)
    assert abs(estimate - solution.value_at(0, 0)) < 4 * stderr, (estimate, stderr)


def test_risk_neutral_limit_is_the_expected_pnl_optimum():
    params = homework(100)
    cara = optimal.bellman_cara(params, 1e-7, depth_bounds=(-2.0, 5.0)).value_at(0, 0)
    neutral = optimal.bellman(params, 0.0, reward="pnl", depth_bounds=(-2.0, 5.0)).value_at()
    assert cara == pytest.approx(neutral, rel=1e-5)


@pytest.mark.parametrize(
    "params, gamma, message",
    [
        (homework(10), 0.0, "gamma"),
        (homework(10, adverse_selection=0.01), 0.1, "adverse_selection"),
        (homework(10, latency=2), 0.1, "latency"),
        (homework(10, price_model="ou", ou_rate=1.0), 0.1, "price_model"),
    ],
)
def test_unmodelled_settings_are_refused(params, gamma, message):
    with pytest.raises(ValueError, match=message):
        optimal.bellman_cara(params, gamma)


# --------------------------------------------- the CARA reward: env, exact evaluation, gap


def brute_force_policy_cara(params, gamma, policy_depths):
    """theta_0(0) of fixed depths ``policy_depths(t, q) -> (bid, ask)``, plain loops."""
    q_top = int(params.q_max)
    qs = np.arange(-q_top, q_top + 1).astype(np.float64)
    theta = np.zeros(qs.size)

    def fill(depth):
        lam = params.A * math.exp(-params.k * depth) * params.dt
        return min(1.0, lam) if params.fill_model == "linear" else 1 - math.exp(-lam)

    for t in reversed(range(params.n_steps)):
        C = theta - 0.5 * gamma * params.sigma**2 * params.dt * qs**2
        new = np.empty_like(theta)
        for i, q in enumerate(qs):
            bid, ask = policy_depths(t, q)
            pb = fill(bid) if i < qs.size - 1 else 0.0
            pa = fill(ask) if i > 0 else 0.0
            total = 0.0
            for b_filled, a_filled, prob in fill_outcomes(pb, pa):
                j = i + b_filled - a_filled
                gain = b_filled * bid + a_filled * ask + C[j] - C[i]
                total += prob * math.exp(-gamma * gain)
            new[i] = C[i] - math.log(total) / gamma
        theta = new
    return theta[q_top]


def test_evaluate_cara_matches_a_brute_force_recursion_and_the_optimum():
    params = homework(6, q_max=3.0, A=20.0)
    gamma = 0.5

    def depths(t, q):
        return 0.4 + 0.1 * q + 0.02 * t, 0.6 - 0.15 * q

    table = optimal.QuoteTable(
        np.arange(7) * params.dt,
        np.arange(-3.0, 4.0),
        np.array([[depths(t, q)[0] for q in range(-3, 4)] for t in range(7)]),
        np.array([[depths(t, q)[1] for q in range(-3, 4)] for t in range(7)]),
        np.zeros((7, 7)),
    )
    exact = optimal.evaluate_cara(params, table, gamma).value_at(0, 0)
    assert exact == pytest.approx(brute_force_policy_cara(params, gamma, depths), abs=1e-10)
    solution = optimal.bellman_cara(params, gamma)
    own = optimal.evaluate_cara(params, solution, gamma).value_at(0, 0)
    assert own == pytest.approx(solution.value_at(0, 0), abs=1e-12)
    assert exact < solution.value_at(0, 0)


def test_utility_and_certainty_equivalent_are_inverse():
    wealth = np.array([-30.0, -1.0, 0.0, 2.5, 47.0])
    for gamma in (1e-6, 0.05, 0.5):
        with jax.enable_x64(True):  # float32 cannot tell U(47) from 1/gamma at gamma 0.5
            utility = np.asarray(rewards.utility(wealth, gamma), np.float64)
        np.testing.assert_allclose(rewards.certainty_equivalent(utility, gamma), wealth, atol=1e-6)
    np.testing.assert_allclose(rewards.utility(wealth, 1e-9), wealth, rtol=1e-6)  # U -> w
    assert rewards.certainty_equivalent(1 / 0.05, 0.05) == np.inf  # no wealth reaches 1/gamma


def test_env_cara_reward_telescopes_to_the_utility_of_terminal_wealth():
    env = MarketMakingEnv()
    env_params = EnvParams(phi=0.05, reward="cara").validate()
    key = jax.random.key(3)
    _, state = env.reset(key, env_params)
    total, pnl = 0.0, 0.0
    for _ in range(env_params.market.n_steps):
        key, action_key, step_key = jax.random.split(key, 3)
        action = jax.random.uniform(action_key, (2,), minval=0.2, maxval=1.5)
        pnl = float(state.pnl)
        _, state, reward, done, _, info = env.step(step_key, state, action, env_params)
        total += float(reward)
        pnl += float(info["pnl"])
    assert bool(done)
    assert total == pytest.approx(float(rewards.utility(pnl, 0.05)), rel=1e-4, abs=1e-4)


def test_cara_reward_validation():
    with pytest.raises(ValueError, match="phi"):
        EnvParams(phi=0.0, reward="cara").validate()
    with pytest.raises(ValueError, match="bellman_cara"):
        optimal.bellman(homework(10), 0.1, reward="cara")


def test_training_evaluation_gap_in_certainty_equivalents():
    """train.evaluate.compare under the CARA reward: the optimum's exact reward is U(theta),
    and A-S's Monte Carlo gap in certainty equivalents equals its exact gap
    ``(theta_opt - theta_AS) / theta_opt`` within 4 standard errors (20,000 episodes, seed 0)."""
    gamma = 0.05
    env_params = EnvParams(phi=gamma, reward="cara").validate()
    solution = evaluate_lib.optimal_solution(env_params)
    a_s = mm.policies.avellaneda_stoikov(gamma=0.1)
    result = evaluate_lib.compare(
        env_params, {"avellaneda_stoikov": a_s}, jax.random.key(0), 20_000, solution
    )
    theta = solution.value_at(0, 0)
    assert result["optimal_reward"] == pytest.approx(float(rewards.utility(theta, gamma)))
    assert result["eval"]["optimal"]["optimality_gap"] == 0.0
    stats = result["eval"]["avellaneda_stoikov"]
    exact_gap = 1 - optimal.evaluate_cara(env_params.market, a_s, gamma).value_at(0, 0) / theta
    assert abs(stats["optimality_gap"] - exact_gap) < 4 * stats["optimality_gap_stderr"]
    assert stats["optimality_gap_stderr"] > 0
