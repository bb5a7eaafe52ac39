"""The float64 reference optima are themselves checked: HJB residuals, limits, closed forms, MC.

Tolerances: the matrix-exponential solutions are exact up to rounding (1e-10 and tighter); the
brute-force Bellman locates a maximiser of a smooth objective to ~sqrt(machine eps) relative,
so its depths are compared at 1e-6 and its values at 1e-10; Monte Carlo means at 3 standard
errors.
"""

import math

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from tests.oracles.optima import (
    bellman_bruteforce,
    cartea_jaimungal_exact,
    cartea_jaimungal_fd,
    evaluate_policy,
    fill_probability,
    glft_asymptotic,
    glft_ergodic,
    glft_exact,
)


def maximise(objective, low=-5.0, high=10.0):
    """``(argmax, max)`` of a unimodal scalar function on ``[low, high]`` (bounded Brent)."""
    result = minimize_scalar(
        lambda x: -objective(x), bounds=(low, high), method="bounded", options={"xatol": 1e-12}
    )
    return result.x, -result.fun


# ---------------------------------------------------------------- GLFT (Gueant et al. 2013)

GLFT = {"sigma": 0.6, "A": 10.0, "k": 1.5, "gamma": 0.3, "q_max": 4, "T": 1.0}


@pytest.mark.parametrize("terminal_penalty", [0.0, 0.05])
def test_glft_solves_the_cara_hjb_with_its_own_argmax(terminal_penalty):
    """Plug u = -exp(-gamma (x + q s)) v_q^(-gamma/k) into GLFT's HJB at x = s = 0.

    d_t u + sigma^2/2 d_ss u + sup_db A e^{-k db} [u(x - s + db, q+1) - u]
    + sup_da A e^{-k da} [u(x + s + da, q-1) - u] = 0, the suprema found numerically;
    at x = s = 0, u(x - s + d, q + 1, s) = -exp(-gamma d) v_{q+1}^(-gamma/k).
    """
    p = GLFT
    sigma, A, k, gamma = p["sigma"], p["A"], p["k"], p["gamma"]
    eps = 1e-4

    def jump_gain(u_here, u_there):
        return lambda d: A * math.exp(-k * d) * (math.exp(-gamma * d) * u_there - u_here)

    for t in (0.2, 0.6, 0.95):
        times = np.array([t - eps, t, t + eps])
        sol = glft_exact(**p, times=times, terminal_penalty=terminal_penalty)
        u = -np.exp(-gamma * sol["value"])  # v^(-gamma/k) = exp(-gamma theta)
        du_dt = (u[2] - u[0]) / (2 * eps)
        for j, q in enumerate(sol["inventories"]):
            residual = du_dt[j] + 0.5 * sigma**2 * gamma**2 * q**2 * u[1, j]
            for side, neighbour in (("bid_depth", j + 1), ("ask_depth", j - 1)):
                if 0 <= neighbour < u.shape[1]:
                    depth, best = maximise(jump_gain(u[1, j], u[1, neighbour]))
                    residual += best
                    assert depth == pytest.approx(sol[side][1, j], abs=1e-6)
            assert abs(residual) < 1e-6 * abs(u[1, j]), (t, q, residual)


def test_glft_terminal_depths_symmetry_and_nan_sides():
    p = GLFT
    b = 0.05
    sol = glft_exact(**p, times=np.linspace(0, 1, 11), terminal_penalty=b)
    q = sol["inventories"]
    c = math.log1p(p["gamma"] / p["k"]) / p["gamma"]
    # At T: theta(T, q) = -b q^2, so bid = c + b (2q + 1), ask = c - b (2q - 1).
    np.testing.assert_allclose(sol["bid_depth"][-1, :-1], c + b * (2 * q[:-1] + 1), atol=1e-12)
    np.testing.assert_allclose(sol["ask_depth"][-1, 1:], c - b * (2 * q[1:] - 1), atol=1e-12)
    np.testing.assert_allclose(sol["value"][-1], -b * q**2, atol=1e-12)
    assert np.isnan(sol["bid_depth"][:, -1]).all() and np.isnan(sol["ask_depth"][:, 0]).all()
    np.testing.assert_allclose(
        sol["bid_depth"][:, :-1], sol["ask_depth"][:, ::-1][:, :-1], atol=1e-11
    )
    np.testing.assert_allclose(sol["value"], sol["value"][:, ::-1], atol=1e-11)


def test_glft_is_cartea_jaimungal_with_mapped_parameters():
    """theta' = gamma sigma^2/2 q^2 - (eta/k) sum exp(k (theta(q+-1) - theta(q))): the CJ system
    with phi = gamma sigma^2 / 2 and A_cj = e * eta; depths differ by c - 1/k exactly."""
    p = GLFT
    sigma, A, k, gamma = p["sigma"], p["A"], p["k"], p["gamma"]
    times = np.linspace(0, 1, 6)
    glft = glft_exact(**p, times=times, terminal_penalty=0.07)
    eta = A * (1 + gamma / k) ** (-(1 + k / gamma))
    cj = cartea_jaimungal_exact(math.e * eta, k, gamma * sigma**2 / 2, 0.07, 4, 1.0, times)
    np.testing.assert_allclose(glft["value"], cj["value"], atol=1e-12)
    shift = math.log1p(gamma / k) / gamma - 1 / k
    np.testing.assert_allclose(glft["bid_depth"], cj["bid_depth"] + shift, atol=1e-12)


def test_glft_long_horizon_tends_to_the_ground_state_and_the_closed_form():
    """Theorem 2 exactly; section 4's closed form approximately, better as sqrt(alpha/eta) -> 0."""
    A, k, gamma = 100.0, 1.5, 0.1
    relative_errors = []
    for sigma in (2.0, 1.0, 0.5):
        long_run = glft_exact(sigma, A, k, gamma, 30, 40.0, np.array([0.0]))
        ground = glft_ergodic(sigma, A, k, gamma, 30)
        np.testing.assert_allclose(long_run["bid_depth"][0], ground["bid_depth"], atol=1e-9)
        np.testing.assert_allclose(long_run["ask_depth"][0], ground["ask_depth"], atol=1e-9)
        closed = glft_asymptotic(sigma, A, k, gamma, ground["inventories"])
        w = math.sqrt(sigma**2 * gamma / (2 * k * A) * (1 + gamma / k) ** (1 + k / gamma))
        near = np.abs(ground["inventories"]) <= 3
        relative_errors.append(np.max(np.abs(ground["bid_depth"] - closed["bid_depth"])[near]) / w)
    # Measured 0.046, 0.027, 0.014 of w: the closed form is an approximation that improves.
    assert relative_errors[0] < 0.06
    assert relative_errors[2] < relative_errors[1] < relative_errors[0]


def test_expm_propagation_matches_a_direct_solve():
    fine = np.linspace(0.0, 3.0, 3001)
    many = glft_exact(2.0, 100.0, 1.5, 0.1, 20, 3.0, fine)
    for index in (0, 1234, 2999):
        one = glft_exact(2.0, 100.0, 1.5, 0.1, 20, 3.0, fine[index : index + 1])
        np.testing.assert_allclose(many["value"][index], one["value"][0], atol=1e-11)


def test_inputs_are_validated():
    with pytest.raises(ValueError, match="q_max"):
        glft_exact(1.0, 1.0, 1.0, 0.1, 2.5, 1.0, np.array([0.0]))
    with pytest.raises(ValueError, match="times"):
        cartea_jaimungal_exact(1.0, 1.0, 0.0, 0.0, 3, 1.0, np.array([1.5]))
    with pytest.raises(ValueError, match="fill_model"):
        bellman_bruteforce(1.0, 1.0, 1.0, 2, 0.0, fill_model="poisson")


# ---------------------------------------------------- Cartea-Jaimungal (CJP 2015, sec. 10.2)

CJ = {"A": 10.0, "k": 1.5, "phi": 0.5, "alpha": 0.1, "q_max": 4, "T": 1.0}


def test_cartea_jaimungal_solves_its_hjb_with_its_own_argmax():
    """0 = d_t h - phi q^2 + sup_db A e^{-k db}(db + h(q+1) - h(q)) + sup_da (...), numerically."""
    p = CJ
    A, k, phi = p["A"], p["k"], p["phi"]
    eps = 1e-4
    for t in (0.1, 0.5, 0.97):
        sol = cartea_jaimungal_exact(**p, times=np.array([t - eps, t, t + eps]))
        h = sol["value"]
        dh_dt = (h[2] - h[0]) / (2 * eps)
        for j, q in enumerate(sol["inventories"]):
            residual = dh_dt[j] - phi * q**2
            for side, neighbour in (("bid_depth", j + 1), ("ask_depth", j - 1)):
                if 0 <= neighbour < h.shape[1]:
                    gap = h[1, neighbour] - h[1, j]
                    depth, best = maximise(lambda d, gap=gap: A * math.exp(-k * d) * (d + gap))
                    residual += best
                    assert depth == pytest.approx(sol[side][1, j], abs=1e-6)
            assert abs(residual) < 1e-6, (t, q, residual)


def test_cartea_jaimungal_terminal_and_symmetry():
    p = CJ
    sol = cartea_jaimungal_exact(**p, times=np.linspace(0, 1, 5))
    q = sol["inventories"]
    # bid = 1/k - (h(q+1) - h(q)) with h(T) = -alpha q^2: 1/k + alpha (2q + 1).
    np.testing.assert_allclose(
        sol["bid_depth"][-1, :-1], 1 / p["k"] + p["alpha"] * (2 * q[:-1] + 1), atol=1e-12
    )
    np.testing.assert_allclose(
        sol["bid_depth"][:, :-1], sol["ask_depth"][:, ::-1][:, :-1], atol=1e-11
    )
    assert np.isnan(sol["bid_depth"][:, -1]).all() and np.isnan(sol["ask_depth"][:, 0]).all()


def test_cartea_jaimungal_without_penalties_quotes_one_over_k_away_from_the_limits():
    """phi = alpha = 0: h(t, q) = 2 A (T - t) / (k e) and depths 1/k where the limits are out of
    reach; next to a limit the value is lower, so the quote towards it is wider than 1/k."""
    A, k, T = 100.0, 1.5, 1.0
    sol = cartea_jaimungal_exact(A, k, 0.0, 0.0, 80, T, np.array([0.0, 0.5]))
    middle = np.abs(sol["inventories"]) <= 10
    np.testing.assert_allclose(sol["bid_depth"][:, middle], 1 / k, atol=1e-12)
    np.testing.assert_allclose(sol["ask_depth"][:, middle], 1 / k, atol=1e-12)
    np.testing.assert_allclose(sol["value"][:, 80], 2 * A * np.array([T, T / 2]) / (k * math.e))
    assert sol["bid_depth"][0, -2] > 1 / k + 0.1  # measured 1/k + 0.46 at q = Q - 1


def test_explicit_scheme_converges_at_first_order():
    p = CJ
    exact = cartea_jaimungal_exact(**p, times=np.array([0.0]))
    errors = []
    for n_steps in (50, 100, 200, 400):
        fd = cartea_jaimungal_fd(**p, n_steps=n_steps)
        errors.append(np.max(np.abs(fd["value"][0] - exact["value"][0])))
        np.testing.assert_allclose(fd["times"], np.linspace(0, 1, n_steps + 1), atol=1e-15)
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all((orders > 0.9) & (orders < 1.1)), (errors, orders)


def test_discrete_bellman_converges_to_cartea_jaimungal():
    """Exponential fills with per-step penalty phi dt are the CJ model sampled every dt; the
    discrete optimum tends to the continuous one at first order (unbounded depths here: CJ's
    optimal depths reach -0.38)."""
    p = CJ
    exact = cartea_jaimungal_exact(**p, times=np.array([0.0]))
    value_errors, depth_errors = [], []
    for n_steps in (50, 100, 200):
        dp = bellman_bruteforce(
            p["A"], p["k"], p["T"], n_steps, p["phi"] * p["T"] / n_steps,
            fill_model="exponential", q_max=p["q_max"], terminal_penalty=p["alpha"],
            depth_bounds=(-3.0, 5.0),
        )  # fmt: skip
        value_errors.append(np.max(np.abs(dp["value"][0] - exact["value"][0])))
        depth_errors.append(np.nanmax(np.abs(dp["bid_depth"][0] - exact["bid_depth"][0])))
    for errors in (value_errors, depth_errors):
        orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
        assert np.all((orders > 0.9) & (orders < 1.1)), (errors, orders)
    assert value_errors[-1] < 0.06 and depth_errors[-1] < 0.02


# ------------------------------------------------------- discrete-time Bellman (our MDP)


def test_bellman_without_penalty_is_the_one_step_closed_form():
    """phi = 0, no drift: the value is (N - n) * 2 max_d p(d) d wherever the grid edge is out
    of reach. Linear fills with A dt < e: d* = 1/k and max = A dt / (e k)."""
    A, k, T, N, q_grid = 100.0, 1.5, 0.1, 20, 25
    sol = bellman_bruteforce(A, k, T, N, 0.0, q_grid=q_grid)
    dt = T / N
    q = np.abs(sol["inventories"])
    steps_left = N - np.arange(N + 1)[:, None]
    unaffected = q[None, :] + steps_left < q_grid
    expected = np.broadcast_to(steps_left * 2 * A * dt / (math.e * k), sol["value"].shape)
    np.testing.assert_allclose(sol["value"][unaffected], expected[unaffected], rtol=1e-12)
    depths_unaffected = unaffected[:-1]
    np.testing.assert_allclose(sol["bid_depth"][depths_unaffected], 1 / k, atol=1e-6)
    np.testing.assert_allclose(sol["ask_depth"][depths_unaffected], 1 / k, atol=1e-6)


@pytest.mark.parametrize("fill_model", ["linear", "exponential"])
def test_bellman_one_step_optimum_with_capped_or_poisson_fills(fill_model):
    """A dt = 5: linear fills cap at probability 1, the optimum is the kink d = ln(A dt)/k;
    exponential fills: the maximiser of (1 - exp(-A dt e^{-k d})) d, found by Brent."""
    A, k, T, N = 100.0, 1.5, 1.0, 20
    a = A * T / N
    sol = bellman_bruteforce(A, k, T, N, 0.0, fill_model=fill_model, q_grid=N)
    if fill_model == "linear":
        depth = math.log(a) / k
        best = fill_probability(a * math.exp(-k * depth), fill_model) * depth
        assert best == pytest.approx(depth, rel=1e-15)  # filled for sure at the kink
    else:
        depth, best = maximise(
            lambda d: fill_probability(a * math.exp(-k * d), fill_model) * d, 0.01, 5
        )
    # At the kink the objective is not smooth: the grid search is within its last spacing
    # (< 1e-11) of the maximiser, an error of order 1e-11 per side and step.
    assert sol["value"][0, N] == pytest.approx(2 * N * best, abs=1e-9)
    assert sol["bid_depth"][0, N] == pytest.approx(depth, abs=1e-6)
    assert sol["ask_depth"][0, N] == pytest.approx(depth, abs=1e-6)


MDP = {
    "A": 100.0, "k": 1.5, "T": 0.2, "n_steps": 20, "phi": 0.02,
    "q_max": 3, "terminal_penalty": 0.05, "mu": 0.8, "adverse_selection": 0.03,
}  # fmt: skip


def outcome_values(mdp, value_next, q_index, inventories):
    """g(fb, fa) of the test: the reward after the spread plus the continuation, by hand."""
    dt = mdp["T"] / mdp["n_steps"]
    values = {}
    for fb in (0, 1):
        for fa in (0, 1):
            j = q_index + fb - fa
            if 0 <= j < len(inventories):
                q_next = inventories[j]
                drift = mdp["mu"] * dt + mdp["adverse_selection"] * (fa - fb)
                values[fb, fa] = q_next * drift - mdp["phi"] * q_next**2 + value_next[j]
            else:
                values[fb, fa] = 0.0
    return values


@pytest.mark.parametrize("fill_model", ["linear", "exponential"])
def test_bellman_depths_satisfy_the_optimality_conditions(fill_model):
    """The returned value is the one-step objective at the returned depths, and each depth
    maximises it given the other (Brent on one coordinate); for linear fills this is also the
    closed form d_b = 1/k - c_b(d_a), clipped to the bounds."""
    mdp = MDP
    bid_mult, ask_mult = 1.3, 0.7
    sol = bellman_bruteforce(**mdp, fill_model=fill_model, bid_mult=bid_mult, ask_mult=ask_mult)
    dt = mdp["T"] / mdp["n_steps"]
    k = mdp["k"]
    inventories = sol["inventories"]

    def probability(depth, mult):
        if np.isnan(depth):
            return 0.0
        return fill_probability(mdp["A"] * mult * math.exp(-k * depth) * dt, fill_model)

    def side_gain(mult, gain):
        return lambda d: probability(d, mult) * (d + gain)

    checked = 0
    for n in (0, 7, mdp["n_steps"] - 1):
        for j in range(len(inventories)):
            g = outcome_values(mdp, sol["value"][n + 1], j, inventories)
            bid, ask = sol["bid_depth"][n, j], sol["ask_depth"][n, j]
            pb, pa = probability(bid, bid_mult), probability(ask, ask_mult)
            spread = {(fb, fa): fb * np.nan_to_num(bid) + fa * np.nan_to_num(ask)
                      for fb in (0, 1) for fa in (0, 1)}  # fmt: skip
            total = sum(
                (pb if fb else 1 - pb) * (pa if fa else 1 - pa) * (spread[fb, fa] + g[fb, fa])
                for fb in (0, 1)
                for fa in (0, 1)
            )
            assert total == pytest.approx(sol["value"][n, j], abs=1e-10)
            if not np.isnan(bid):
                gain = (1 - pa) * (g[1, 0] - g[0, 0]) + pa * (g[1, 1] - g[0, 1])
                best, _ = maximise(side_gain(bid_mult, gain), 0.01, 5.0)
                assert bid == pytest.approx(best, abs=1e-6)
                if fill_model == "linear":
                    assert bid == pytest.approx(np.clip(1 / k - gain, 0.01, 5.0), abs=1e-6)
                checked += 1
            if not np.isnan(ask):
                gain = (1 - pb) * (g[0, 1] - g[0, 0]) + pb * (g[1, 1] - g[1, 0])
                best, _ = maximise(side_gain(ask_mult, gain), 0.01, 5.0)
                assert ask == pytest.approx(best, abs=1e-6)
                checked += 1
    assert checked == 3 * 2 * (len(inventories) - 1)
    assert np.isnan(sol["bid_depth"][:, -1]).all() and np.isnan(sol["ask_depth"][:, 0]).all()


def test_bellman_is_symmetric_without_drift_or_one_sided_flow():
    sol = bellman_bruteforce(100.0, 1.5, 1.0, 60, 0.01, q_grid=12, terminal_penalty=0.1)
    np.testing.assert_allclose(sol["value"], sol["value"][:, ::-1], atol=1e-10)
    np.testing.assert_allclose(
        sol["bid_depth"][:, :-1], sol["ask_depth"][:, ::-1][:, :-1], atol=1e-6
    )


def test_bellman_value_at_zero_is_insensitive_to_the_inventory_grid():
    """Homework market, phi = 0.01 per step, 200 steps: truncating |q| at 12 or 24 changes
    V(0, 0) by less than 1e-9 (measured: 1.6e-10 at 10, 0 from 15 on)."""
    values = [
        bellman_bruteforce(100.0, 1.5, 1.0, 200, 0.01, q_grid=q_grid)["value"][0, q_grid]
        for q_grid in (12, 24)
    ]
    assert values[0] == pytest.approx(values[1], abs=1e-9)


def test_evaluate_policy_reproduces_the_optimum_and_nothing_beats_it():
    mdp = MDP
    sol = bellman_bruteforce(**mdp)
    args = (mdp["A"], mdp["k"], mdp["T"], mdp["n_steps"], mdp["phi"])
    options = {key: mdp[key] for key in ("q_max", "terminal_penalty", "mu", "adverse_selection")}
    value = evaluate_policy(
        *args, sol["bid_depth"], sol["ask_depth"], sol["inventories"], **options
    )
    np.testing.assert_allclose(value, sol["value"], atol=1e-12)
    rng = np.random.default_rng(0)
    shape = sol["bid_depth"].shape
    for bid, ask in (
        (np.full(shape, 1 / 1.5), np.full(shape, 1 / 1.5)),
        (sol["bid_depth"] + 0.05, sol["ask_depth"]),
        (rng.uniform(0.01, 2.0, shape), rng.uniform(0.01, 2.0, shape)),
    ):
        other = evaluate_policy(*args, bid, ask, sol["inventories"], **options)
        assert np.all(other <= sol["value"] + 1e-12)
        assert other[0, 3] < sol["value"][0, 3] - 1e-6


def simulate_table(mdp, bid_table, ask_table, inventories, sigma, n_episodes, seed, fill_model,
                   bid_mult=1.0, ask_mult=1.0):  # fmt: skip
    """Independent Monte Carlo of the MDP (arithmetic mid with volatility sigma) from q = 0.

    Returns the per-episode total reward sum (spread + q' dS - phi q'^2) - b q_N^2.
    """
    rng = np.random.default_rng(seed)
    dt = mdp["T"] / mdp["n_steps"]
    offset = -inventories[0]
    q = np.zeros(n_episodes, dtype=np.int64)
    total = np.zeros(n_episodes)
    for n in range(mdp["n_steps"]):
        bid, ask = bid_table[n, q + offset], ask_table[n, q + offset]
        can_buy = (q < mdp["q_max"]) & (q < inventories[-1]) & np.isfinite(bid)
        can_sell = (q > -mdp["q_max"]) & (q > inventories[0]) & np.isfinite(ask)
        with np.errstate(invalid="ignore"):
            pb = fill_probability(mdp["A"] * bid_mult * np.exp(-mdp["k"] * bid) * dt, fill_model)
            pa = fill_probability(mdp["A"] * ask_mult * np.exp(-mdp["k"] * ask) * dt, fill_model)
        bid_fill = can_buy & (rng.random(n_episodes) < pb)
        ask_fill = can_sell & (rng.random(n_episodes) < pa)
        q = q + bid_fill - ask_fill
        mid_change = (
            mdp["adverse_selection"] * (ask_fill.astype(float) - bid_fill)
            + mdp["mu"] * dt
            + sigma * math.sqrt(dt) * rng.standard_normal(n_episodes)
        )
        spread = np.where(bid_fill, bid, 0.0) + np.where(ask_fill, ask, 0.0)
        total += spread + q * mid_change - mdp["phi"] * q**2
    return total - mdp["terminal_penalty"] * q**2


@pytest.mark.parametrize("fill_model", ["linear", "exponential"])
def test_evaluate_policy_agrees_with_monte_carlo(fill_model):
    """200,000 episodes of 20 steps, sigma = 2, drift, adverse selection, one-sided flow."""
    mdp = MDP
    mults = {"bid_mult": 1.2, "ask_mult": 0.8}
    sol = bellman_bruteforce(**mdp, fill_model=fill_model, **mults)
    args = (mdp["A"], mdp["k"], mdp["T"], mdp["n_steps"], mdp["phi"])
    options = {key: mdp[key] for key in ("q_max", "terminal_penalty", "mu", "adverse_selection")}
    rng = np.random.default_rng(1)
    random_bid = rng.uniform(0.01, 2.0, sol["bid_depth"].shape)
    random_ask = rng.uniform(0.01, 2.0, sol["ask_depth"].shape)
    random_ask[:, 2] = np.inf  # never sell at q = -1
    for seed, (bid, ask) in enumerate(
        ((sol["bid_depth"], sol["ask_depth"]), (random_bid, random_ask))
    ):
        exact = evaluate_policy(
            *args, bid, ask, sol["inventories"], fill_model=fill_model, **options, **mults
        )[0, 3]
        rewards = simulate_table(
            mdp, bid, ask, sol["inventories"], 2.0, 200_000, seed, fill_model, **mults
        )
        stderr = rewards.std(ddof=1) / math.sqrt(rewards.size)
        assert abs(rewards.mean() - exact) < 3 * stderr, (rewards.mean(), exact, stderr)


# ----------------------------------------------- the PyPI package avellaneda-stoikov 0.1.0


def test_package_adapter_reproduces_the_explicit_scheme_in_our_conventions():
    pytest.importorskip("avellaneda_stoikov")
    from experiments.cj_package import package_solution, time_lookup_defects

    p = CJ
    package = package_solution(**p, n_steps=200)
    reference = cartea_jaimungal_fd(**p, n_steps=200)
    np.testing.assert_allclose(package["times"], reference["times"], atol=1e-15)
    np.testing.assert_allclose(package["value"], reference["value"], atol=1e-12)
    np.testing.assert_allclose(package["bid_depth"], reference["bid_depth"], atol=1e-12)
    np.testing.assert_allclose(package["ask_depth"], reference["ask_depth"], atol=1e-12)
    # The package's own lookup of a grid time lands one row early on some rows (floor of a
    # rounded quotient); at n = 200, rows 29, 58, 59, ... (7 of 201).
    assert time_lookup_defects(package["times"]) > 0


def test_cj_package_cli(tmp_path):
    pytest.importorskip("avellaneda_stoikov")
    from experiments import cj_package

    payload = cj_package.main(
        ["--phi", "0.1", "--alpha", "0.0", "--n-steps", "100", "200", "--out", str(tmp_path)]
    )
    assert [row["status"] for row in payload["rows"]] == ["ok", "ok"]
    assert 0.9 < payload["observed_order_h00"][0]["order_h00"] < 1.2
    assert payload["config"]["phi"] == [0.1]
    assert (tmp_path / "errors.png").stat().st_size > 10_000
    assert (tmp_path / "errors.csv").read_text().startswith("phi,alpha,n_steps")
