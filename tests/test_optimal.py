"""jaxmm.optimal: the exact solvers against independent computations, limits and symmetries."""

import math

import jax
import numpy as np
import pytest
from scipy import linalg, optimize, special

import jaxmm as mm
from jaxmm import optimal
from tests.helpers import fill_outcomes

HOMEWORK = mm.presets.homework()


@pytest.fixture(scope="module")
def bellman_001():
    return optimal.bellman(HOMEWORK, 0.01)


def _outcome_mean(depths, q, later, inventories, params, phi):
    """E[reward + V_{t+1}] of one step by enumerating the four fill outcomes (numpy)."""
    bid, ask = depths
    dt = params.T / params.n_steps

    def prob(depth, mult):
        rate = params.A * mult * math.exp(-params.k * depth) * dt
        return min(1.0, rate) if params.fill_model == "linear" else -math.expm1(-rate)

    p_bid = prob(bid, params.bid_intensity_mult) if q < inventories[-1] else 0.0
    p_ask = prob(ask, params.ask_intensity_mult) if q > inventories[0] else 0.0
    total = 0.0
    for bid_fill, ask_fill, weight in fill_outcomes(p_bid, p_ask):
        after = q + bid_fill - ask_fill
        mean_move = params.mu * dt + params.adverse_selection * (ask_fill - bid_fill)
        gain = bid_fill * bid + ask_fill * ask + after * mean_move - phi * after**2
        total += weight * (gain + later[after - inventories[0]])
    return total


@pytest.mark.parametrize(
    "params,phi",
    [
        (HOMEWORK, 0.01),
        (HOMEWORK.replace(fill_model="exponential", adverse_selection=0.2, mu=1.0), 0.1),
        (HOMEWORK.replace(q_max=3.0, bid_intensity_mult=0.5), 0.05),
    ],
)
def test_bellman_one_step_matches_brute_force_joint_search(params, phi):
    """At a few states the solver's value equals a 2-D grid search refined by Nelder-Mead."""
    solution = optimal.bellman(params, phi)
    inventories = solution.inventories
    for t in (0, 120, params.n_steps - 1):
        later = solution.value[t + 1]
        for q in (-3, 0, 2):

            def loss(x, q=q, later=later):
                x = np.clip(x, 0.01, 5.0)
                return -_outcome_mean(x, q, later, inventories, params, phi)

            grid = np.linspace(0.01, 5.0, 100)
            values = [[loss((b, a)) for a in grid] for b in grid]
            i, j = np.unravel_index(np.argmin(values), (100, 100))
            best = optimize.minimize(
                loss,
                [grid[i], grid[j]],
                method="Nelder-Mead",
                options={"xatol": 1e-10, "fatol": 1e-13},
            )
            solved = solution.value[t, solution.q_index(q)]
            assert solved >= -best.fun - 1e-10
            assert solved == pytest.approx(-best.fun, rel=1e-9, abs=1e-10)


def test_bellman_phi_zero_is_the_myopic_optimum():
    """Without penalty every step is the same problem: d = 1/k, value 2 A e^{-1}/k T."""
    solution = optimal.bellman(HOMEWORK, 0.0)
    params = HOMEWORK
    expected = 2 * params.A * math.exp(-1) / params.k * params.T
    assert solution.value_at() == pytest.approx(expected, rel=1e-12)
    # states reachable from q = 0 (|q| <= t) are untouched by the grid's edge at |q| = n_steps
    t, q = np.meshgrid(np.arange(params.n_steps), solution.inventories, indexing="ij")
    reachable = np.abs(q) < t
    np.testing.assert_allclose(solution.bid_depth[:-1][reachable], 1 / params.k, rtol=1e-10)
    np.testing.assert_allclose(solution.ask_depth[:-1][reachable], 1 / params.k, rtol=1e-10)


def test_bellman_symmetry_and_bounds(bellman_001):
    bid, ask = bellman_001.bid_depth[:-1], bellman_001.ask_depth[:-1]
    np.testing.assert_allclose(bid, ask[:, ::-1], atol=1e-10)  # bid(q) = ask(-q)
    assert np.all(np.isnan(bid[:, -1])) and np.all(np.isnan(ask[:, 0]))
    assert np.all(np.isnan(bellman_001.bid_depth[-1]))
    quoted = bid[:, :-1]
    assert np.all((quoted >= 0.01) & (quoted <= 5.0))
    # long inventory: buy less eagerly (wider bid), sell more eagerly (tighter ask)
    assert np.all(np.diff(bid[0, 190:210]) >= 0)
    np.testing.assert_allclose(bellman_001.value, bellman_001.value[:, ::-1], atol=1e-9)


def test_bellman_value_matches_monte_carlo_of_its_policy(bellman_001):
    """Monte Carlo of the optimal table on the simulator agrees within 3 standard errors."""
    rollout = mm.simulate(HOMEWORK, mm.policies.table(bellman_001), jax.random.key(7), 100_000)
    reward = np.asarray(rollout.reward(0.01), np.float64)
    stderr = reward.std(ddof=1) / math.sqrt(reward.size)
    assert abs(reward.mean() - bellman_001.value_at()) < 3 * stderr


def test_evaluate_reproduces_bellman_and_bounds_every_policy(bellman_001):
    same = optimal.evaluate(HOMEWORK, bellman_001, 0.01)
    assert same.value_at() == pytest.approx(bellman_001.value_at(), rel=1e-10)
    cj = optimal.cartea_jaimungal(100.0, 1.5, 0.01 / HOMEWORK.dt, 30)
    rivals = [
        mm.policies.symmetric(0.745),
        mm.policies.avellaneda_stoikov(0.1, 1.5),
        mm.policies.avellaneda_stoikov(1.0, 1.5),
        mm.policies.glft(1.0, 1.5, 100.0, 2.0),
        cj,
    ]
    for rival in rivals:
        value = optimal.evaluate(HOMEWORK, rival, 0.01)
        assert value.value_at() < bellman_001.value_at()
    # a rule quoting inside the action bounds everywhere is beaten in every state; rules that
    # leave [0.01, 5] (A-S at large |q|, an unquoted side) may beat it far from q = 0
    bounded = cj.replace(
        bid_depth=np.clip(np.nan_to_num(cj.bid_depth, nan=5.0), 0.01, 5),
        ask_depth=np.clip(np.nan_to_num(cj.ask_depth, nan=5.0), 0.01, 5),
    )
    value = optimal.evaluate(HOMEWORK, bounded, 0.01).value
    assert np.all(value[:-1] <= bellman_001.value[:-1] + 1e-9)


def test_evaluate_matches_monte_carlo_of_avellaneda_stoikov():
    policy = mm.policies.avellaneda_stoikov(0.5, 1.5)
    exact = optimal.evaluate(HOMEWORK, policy, 0.1).value_at()
    rollout = mm.simulate(HOMEWORK, policy, jax.random.key(3), 100_000)
    reward = np.asarray(rollout.reward(0.1), np.float64)
    assert abs(reward.mean() - exact) < 3 * reward.std(ddof=1) / math.sqrt(reward.size)


def test_bellman_variance_reward_sees_the_volatility_switch():
    calm = HOMEWORK.replace(vol_switch_step=100, vol_switch_factor=1.0)
    stormy = HOMEWORK.replace(vol_switch_step=100, vol_switch_factor=2.0)
    calm_sol = optimal.bellman(calm, 0.5, reward="variance")
    stormy_sol = optimal.bellman(stormy, 0.5, reward="variance")
    assert stormy_sol.value_at() < calm_sol.value_at()
    inventory_penalty = optimal.bellman(calm, 0.5 * 4.0 * calm.dt)  # phi sigma^2 dt, constant
    assert calm_sol.value_at() == pytest.approx(inventory_penalty.value_at(), rel=1e-12)
    # later, wider spreads at q = 1 when volatility has doubled: ask tighter, bid wider
    row, col = 150, stormy_sol.q_index(1)
    assert stormy_sol.bid_depth[row, col] > calm_sol.bid_depth[row, col]


def test_cartea_jaimungal_without_penalty_quotes_one_over_k():
    solution = optimal.cartea_jaimungal(100.0, 1.5, 0.0, 60)
    centre = slice(solution.q_index(-5), solution.q_index(5) + 1)
    np.testing.assert_allclose(solution.bid_depth[:, centre], 1 / 1.5, atol=1e-10)
    np.testing.assert_allclose(solution.ask_depth[:, centre], 1 / 1.5, atol=1e-10)


def _log_space_reference(generator, log_terminal, n_steps, T=1.0):
    """``log(expm(G (T - t)) exp(log_terminal))`` on a uniform grid, by a log-sum-exp of each
    row (scipy expm): every entry keeps its own scale, so a steep terminal condition never
    underflows. Rows from t = 0 to t = T."""
    log_step = np.log(linalg.expm(generator * (T / n_steps)))
    rows = [log_terminal]
    for _ in range(n_steps):
        rows.append(special.logsumexp(log_step + rows[-1][None, :], axis=1))
    return np.array(rows[::-1])


def test_cartea_jaimungal_steep_terminal_penalty_keeps_the_terminal_condition():
    """alpha k Q^2 = 750 > 745: exp(-alpha k Q^2) underflows, yet h(T, q) = -alpha q^2."""
    A, k, phi, alpha, q_max, n_steps = 100.0, 1.5, 2.0, 5.0, 10, 200
    solution = optimal.cartea_jaimungal(A, k, phi, q_max, alpha=alpha, n_steps=n_steps)
    q = solution.inventories.astype(np.float64)
    assert np.all(np.isfinite(solution.value))
    np.testing.assert_allclose(solution.value[-1], -alpha * q**2, rtol=1e-15, atol=0)
    assert solution.value_at(n_steps, 10) == -500.0 == solution.value_at(n_steps, -10)
    # at T: bid = 1/k - (h(q+1) - h(q)) = 1/k + alpha (2q + 1), ask = 1/k - alpha (2q - 1)
    np.testing.assert_allclose(solution.bid_depth[-1, :-1], 1 / k + alpha * (2 * q[:-1] + 1))
    np.testing.assert_allclose(solution.ask_depth[-1, 1:], 1 / k - alpha * (2 * q[1:] - 1))
    # the earlier rows against a log-space propagation that cannot underflow
    generator = np.diag(-phi * k * q**2) + A / math.e * (np.eye(q.size, k=1) + np.eye(q.size, k=-1))
    reference = _log_space_reference(generator, -alpha * k * q**2, n_steps) / k
    np.testing.assert_allclose(solution.value, reference, rtol=1e-12, atol=1e-12)


def test_glft_steep_terminal_penalty_keeps_the_terminal_condition():
    """The same propagation in GLFT: k * terminal_penalty * Q^2 = 750, v_Q(T) underflows."""
    sigma, A, k, gamma, q_max, penalty = 2.0, 100.0, 1.5, 0.1, 10, 5.0
    solution = optimal.glft(sigma, A, k, gamma, q_max, terminal_penalty=penalty, n_steps=50)
    q = solution.inventories.astype(np.float64)
    assert np.all(np.isfinite(solution.value))
    np.testing.assert_allclose(solution.value[-1], -penalty * q**2, rtol=1e-15, atol=0)
    # at T: bid = (1/k) ln(v_q / v_{q+1}) + c = penalty (2q + 1) + c
    base = math.log1p(gamma / k) / gamma
    np.testing.assert_allclose(solution.bid_depth[-1, :-1], penalty * (2 * q[:-1] + 1) + base)
    np.testing.assert_allclose(solution.ask_depth[-1, 1:], -penalty * (2 * q[1:] - 1) + base)
    eta = A * (1 + gamma / k) ** (-(1 + k / gamma))
    generator = np.diag(-k * gamma * sigma**2 / 2 * q**2) + eta * (
        np.eye(q.size, k=1) + np.eye(q.size, k=-1)
    )
    reference = _log_space_reference(generator, -k * penalty * q**2, 50) / k
    np.testing.assert_allclose(solution.value, reference, rtol=1e-12, atol=1e-12)


def test_finite_difference_scheme_converges_at_first_order():
    exact = optimal.cartea_jaimungal(100.0, 1.5, 2.0, 10, n_steps=10)
    errors = []
    for n_steps in (200, 400, 800, 1600):
        fd = optimal.cartea_jaimungal_fd(100.0, 1.5, 2.0, 10, n_steps=n_steps)
        errors.append(np.abs(fd.value[0] - exact.value[0]).max())
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    np.testing.assert_allclose(orders, 1.0, atol=0.1)
    assert errors[-1] < 1e-3


def test_glft_exact_reaches_its_long_horizon_limit_and_the_closed_form_approximates_it():
    """As T grows the exact quotes converge to the ground state of M (numpy eigh); the GLFT
    closed form is a continuous approximation of that limit, within a few thousandths here."""
    sigma, A, k, gamma, q_max = 2.0, 100.0, 1.5, 0.1, 12
    q = np.arange(-q_max, q_max + 1.0)
    alpha, eta = k * gamma * sigma**2 / 2, A * (1 + gamma / k) ** (-(1 + k / gamma))
    M = np.diag(alpha * q**2) - eta * (np.eye(q.size, k=1) + np.eye(q.size, k=-1))
    ground = np.abs(np.linalg.eigh(M)[1][:, 0])
    limit_bid = np.log(ground[:-1] / ground[1:]) / k + math.log1p(gamma / k) / gamma
    gaps = []
    for T in (0.25, 1.0, 4.0):
        exact = optimal.glft(sigma, A, k, gamma, q_max, T, n_steps=4)
        gaps.append(np.abs(exact.bid_depth[0, :-1] - limit_bid).max())
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-9
    asymptotic = optimal.glft_asymptotic(sigma, A, k, gamma, q_max, 4.0, n_steps=4)
    report = optimal.quote_gap(asymptotic, optimal.glft(sigma, A, k, gamma, q_max, 4.0, n_steps=4))
    centre = slice(q_max - 3, q_max + 4)
    assert np.abs(asymptotic.bid_depth[0, :-1] - limit_bid)[centre].max() < 0.005
    assert report["bid"][0] == pytest.approx(
        np.abs(asymptotic.bid_depth[0, :-1] - limit_bid).max(), abs=1e-9
    )


def test_glft_symmetry_and_terminal_quotes():
    solution = optimal.glft(2.0, 100.0, 1.5, 0.1, 8)
    np.testing.assert_allclose(
        solution.bid_depth[:, :-1], solution.ask_depth[:, 1:][:, ::-1], atol=1e-12
    )
    base = math.log1p(0.1 / 1.5) / 0.1  # at T: no inventory aversion left, v = 1
    np.testing.assert_allclose(solution.bid_depth[-1, :-1], base, atol=1e-12)
    assert np.all(np.isnan(solution.bid_depth[:, -1])) and np.all(
        np.isnan(solution.ask_depth[:, 0])
    )


@pytest.mark.parametrize("gamma", [0.0, 1e-8, 0.3])
def test_glft_asymptotic_equals_the_glft_policy(gamma):
    """Two entry points of the GLFT closed form: the table and ``policies.glft`` (float32)."""
    sigma, A, k, q_max = 2.0, 100.0, 1.5, 8
    table = optimal.glft_asymptotic(sigma, A, k, gamma, q_max)
    bid, ask = optimal.tabulate(mm.policies.glft(gamma, k, A, sigma), HOMEWORK, table.inventories)
    np.testing.assert_allclose(table.bid_depth[:-1, :-1], bid[:, :-1], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(table.ask_depth[:-1, 1:], ask[:, 1:], rtol=1e-6, atol=1e-6)


def test_glft_asymptotic_risk_neutral_limit():
    """gamma -> 0 (x = gamma/k): c = ln(1 + x)/(k x) = 1/k - gamma/(2 k^2) + O(gamma^2) and
    w = sqrt(sigma^2 e gamma / (2 k A)) (1 + O(gamma)): at gamma = 0 both depths are 1/k."""
    sigma, A, k, q_max = 2.0, 100.0, 1.5, 8
    zero = optimal.glft_asymptotic(sigma, A, k, 0.0, q_max)
    q = zero.inventories.astype(np.float64)
    np.testing.assert_allclose(zero.bid_depth[:, :-1], 1 / k, rtol=1e-15)
    np.testing.assert_allclose(zero.ask_depth[:, 1:], 1 / k, rtol=1e-15)
    gamma = 1e-8
    tiny = optimal.glft_asymptotic(sigma, A, k, gamma, q_max)
    w0 = math.sqrt(sigma**2 * math.e * gamma / (2 * k * A))  # 1.9e-5
    # the limit within (q_max + 1/2) w0 + gamma / (2 k^2) = 1.6e-4 (the largest skew term)...
    tolerance = (q_max + 0.5) * w0 + gamma / (2 * k**2)
    assert np.nanmax(np.abs(tiny.bid_depth - zero.bid_depth)) <= tolerance
    assert np.nanmax(np.abs(tiny.ask_depth - zero.ask_depth)) <= tolerance
    # ... and the departure from it is the first-order expansion (next terms ~ 1e-13)
    shift = -gamma / (2 * k**2)
    np.testing.assert_allclose(
        tiny.bid_depth[0, :-1] - zero.bid_depth[0, :-1], shift + (q[:-1] + 0.5) * w0, atol=1e-12
    )
    np.testing.assert_allclose(
        tiny.ask_depth[0, 1:] - zero.ask_depth[0, 1:], shift - (q[1:] - 0.5) * w0, atol=1e-12
    )
    with pytest.raises(ValueError, match="gamma"):
        optimal.glft_asymptotic(sigma, A, k, -1e-8, q_max)


def test_table_policy_reads_the_table():
    solution = optimal.bellman(HOMEWORK.replace(q_max=4.0), 0.1)
    policy = mm.policies.table(solution)
    state = mm.market.reset(jax.random.key(0), HOMEWORK).replace(
        t=np.int32(37), inventory=np.float32(4.0)
    )
    quotes = policy(state, HOMEWORK)
    assert np.isinf(quotes.bid_depth)  # q = q_max: the bid is not quoted
    assert float(quotes.ask_depth) == pytest.approx(solution.ask_depth[37, -1], rel=1e-6)


def test_inventory_risk_measures_match_the_normal_quantiles_and_simulation():
    assert optimal.inventory_var(-3, 2.0, 0.25, 0.99) == pytest.approx(3 * 2 * 0.5 * 2.3263478740)
    cvar = optimal.inventory_cvar(3, 2.0, 0.25, 0.975)
    assert cvar == pytest.approx(3 * 2 * 0.5 * 2.3378027922, rel=1e-9)
    loss = -3.0 * 2.0 * math.sqrt(0.25) * np.random.default_rng(0).standard_normal(400_000)
    var, var_se = mm.metrics.value_at_risk(-loss, 0.99)
    assert abs(var - optimal.inventory_var(3, 2.0, 0.25, 0.99)) < 3 * var_se


@pytest.mark.parametrize(
    "call,field",
    [
        (lambda: optimal.bellman(HOMEWORK, -0.1), "phi"),
        (lambda: optimal.bellman(HOMEWORK, 0.1, reward="sharpe"), "reward"),
        (lambda: optimal.bellman(HOMEWORK.replace(price_model="geometric"), 0.1), "price_model"),
        (lambda: optimal.bellman(HOMEWORK, 0.1, depth_bounds=(1.0, 0.5)), "depth_bounds"),
        (lambda: optimal.glft(2.0, 100.0, 1.5, 0.0, 5), "gamma"),
        (lambda: optimal.glft_asymptotic(2.0, 100.0, 1.5, -0.1, 5), "gamma"),
        (lambda: optimal.glft(2.0, 100.0, 1.5, 0.1, 2.5), "q_max"),
        (lambda: optimal.cartea_jaimungal(100.0, -1.5, 0.1, 5), "k"),
        (lambda: optimal.inventory_var(1, 2.0, 1.0, 1.5), "level"),
        (lambda: optimal.cartea_jaimungal_fd(100.0, 1.5, 2.0, 10, n_steps=50), "n_steps"),
    ],
)
def test_bad_input_names_the_field(call, field):
    with pytest.raises(ValueError, match=field):
        call()
