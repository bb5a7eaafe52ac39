"""The exact optimum under CARA utility of terminal wealth (``optimal.bellman_cara``): its quotes
tend to the GLFT closed form as ``dt -> 0`` (first order), it matches a brute-force search on a
small MDP, its certainty equivalent is what the simulator realises, and the risk-neutral limit."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

import jaxmm as mm
from jaxmm import market, optimal

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
