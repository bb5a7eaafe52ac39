"""The CP-SAT open-loop schedule (jaxmm.schedule): the model against an independent brute force,
against the simulator, and its out-of-sample value against the exact optima."""

import itertools

import jax
import numpy as np
import pytest
from scipy.special import ndtri

import jaxmm as mm
from jaxmm import market, optimal, schedule
from tests.conftest import run_code

pytest.importorskip("ortools", reason="the CP-SAT tests need the extra jaxmm[cp]")

TINY = mm.presets.homework().replace(n_steps=4, T=0.02)  # homework dt: p = 0.5 exp(-1.5 d)
TINY_LEVELS = (0.1, 0.6, 1.5)
TINY_KEY = 8  # a seed where |q| <= 1 binds in all three variants (asserted below)
TINY_SCENARIOS = 6


def reference_problem(params, key, n_scenarios, levels):
    """Fills per level and mid increments in NumPy, from the counter-mode uniforms alone.

    Independent of the model's own scenario code (which reads the simulator's paths): the fill
    probability in float64 NumPy, the normal quantile by scipy's ``ndtri``.
    """
    steps = np.arange(params.n_steps)
    episodes = np.arange(n_scenarios)
    noise = market.counter_noise(
        market.stream_key(jax.random.key(key)), episodes[:, None], steps[None, :]
    )
    u_bid, u_ask, u_mid = (
        np.asarray(u, np.float64) for u in (noise.u_bid, noise.u_ask, noise.u_mid)
    )
    prob = np.minimum(1.0, params.A * np.exp(-params.k * np.asarray(levels)) * params.dt)
    bid_fills = (u_bid[..., None] < prob).astype(np.int64)  # [S, N, L]
    ask_fills = (u_ask[..., None] < prob).astype(np.int64)
    mid_change = params.sigma * np.sqrt(params.dt) * ndtri(u_mid)
    return bid_fills, ask_fills, mid_change


def brute_force(problem, levels, phi, q_bound, symmetric, mark_to_market):
    """Best sample-average objective over all grid schedules, with and without the bound."""
    bid_fills, ask_fills, mid_change = problem
    n_steps, n_levels = bid_fills.shape[1], bid_fills.shape[2]
    levels = np.asarray(levels)
    choices = np.array(list(itertools.product(range(n_levels), repeat=n_steps)))  # [M, N]
    if symmetric:
        bid_index = ask_index = choices
    else:
        pairs = np.array(list(itertools.product(range(len(choices)), repeat=2)))
        bid_index, ask_index = choices[pairs[:, 0]], choices[pairs[:, 1]]
    steps = np.arange(n_steps)
    bid = bid_fills[:, steps, bid_index]  # [S, M, N]
    ask = ask_fills[:, steps, ask_index]
    inventory = np.cumsum(bid - ask, axis=2)
    reward = bid * levels[bid_index] + ask * levels[ask_index] - phi * inventory**2
    if mark_to_market:
        reward = reward + inventory * mid_change[:, None, :]
    objective = reward.sum(axis=2).mean(axis=0)  # [M]
    feasible = np.abs(inventory).max(axis=(0, 2)) <= q_bound
    return objective[feasible].max(), objective.max()


@pytest.mark.parametrize(
    ("symmetric", "mark_to_market"), [(True, True), (False, True), (True, False)]
)
def test_cp_optimum_equals_brute_force(symmetric, mark_to_market):
    phi, q_bound = 0.1, 1
    problem = reference_problem(TINY, TINY_KEY, TINY_SCENARIOS, TINY_LEVELS)
    best, unbounded = brute_force(problem, TINY_LEVELS, phi, q_bound, symmetric, mark_to_market)
    assert unbounded > best + 1e-3  # the inventory bound binds: the constraint is exercised
    solution = schedule.solve_schedule(
        TINY,
        phi,
        n_scenarios=TINY_SCENARIOS,
        levels=TINY_LEVELS,
        key=jax.random.key(TINY_KEY),
        q_bound=q_bound,
        time_limit=20.0,
        symmetric=symmetric,
        mark_to_market=mark_to_market,
    )
    assert solution.status == "OPTIMAL"
    # float32 mid increments in the simulator vs float64 here: 1e-5 per step at most
    assert solution.model_objective == pytest.approx(best, abs=1e-4)
    assert abs(solution.solver_objective - solution.model_objective) <= solution.rounding_bound
    if symmetric:
        np.testing.assert_array_equal(solution.bid_depth, solution.ask_depth)
    assert solution.max_abs_inventory <= q_bound


def test_in_sample_objective_equals_simulation_and_bound_holds():
    params = mm.presets.homework().replace(n_steps=12, T=0.06)
    phi, q_bound, n_scenarios = 0.05, 2, 15
    key = jax.random.key(3)
    solution = schedule.solve_schedule(
        params,
        phi,
        n_scenarios=n_scenarios,
        levels=(0.2, 0.5, 0.9, 1.4, 2.0),
        key=key,
        q_bound=q_bound,
        time_limit=20.0,
    )
    rollout = mm.simulate(params, solution.policy(), key, n_scenarios, paths=True)
    reward = np.asarray(rollout.reward(phi), np.float64)
    assert solution.objective == pytest.approx(reward.mean(), abs=1e-4)
    # CP-SAT's own objective (its variables, scaled integers) is the simulator's mean reward
    assert abs(solution.solver_objective - reward.mean()) <= solution.rounding_bound + 1e-4
    assert solution.spread_capture == pytest.approx(float(np.mean(rollout.spread_pnl)), abs=1e-4)
    assert solution.mark_to_market == pytest.approx(float(np.mean(rollout.inventory_pnl)), abs=1e-4)
    inventory = np.asarray(rollout.paths.inventory)
    assert np.abs(inventory).max() <= q_bound
    assert np.abs(inventory).max() == solution.max_abs_inventory
    # the quotes the simulator posted are the schedule's
    depth = np.asarray(rollout.paths.ask) - np.asarray(rollout.paths.mid)[:, :-1]
    np.testing.assert_allclose(depth, np.broadcast_to(solution.ask_depth, depth.shape), atol=1e-4)


def test_out_of_sample_value_below_the_optima():
    params = mm.presets.homework().replace(n_steps=10, T=0.05)
    phi, levels = 0.1, (0.2, 0.6, 1.0, 1.5)
    solution = schedule.solve_schedule(
        params, phi, n_scenarios=20, levels=levels, key=jax.random.key(1), q_bound=3,
        time_limit=20.0,
    )  # fmt: skip
    assert solution.status == "OPTIMAL"
    exact = optimal.evaluate(params, solution.policy(), phi).value_at()
    closed_form = schedule.expected_reward(params, phi, solution.bid_depth, solution.ask_depth)
    assert exact == pytest.approx(closed_form, abs=1e-6)  # depths pass through float32
    best = schedule.best_open_loop(params, phi, levels)
    best_value = schedule.expected_reward(params, phi, best, best)
    bellman = optimal.bellman(params, phi)
    assert exact <= best_value + 1e-9 <= bellman.value_at() + 2e-9
    # Monte Carlo on fresh paths (an independent stream), common random numbers
    key, n = jax.random.key(12345), 10_000
    mine = np.asarray(mm.simulate(params, solution.policy(), key, n).reward(phi), np.float64)
    feedback = np.asarray(
        mm.simulate(params, mm.policies.table(bellman), key, n).reward(phi), np.float64
    )
    stderr = mine.std(ddof=1) / np.sqrt(n)
    assert abs(mine.mean() - exact) < 4 * stderr
    gain = feedback - mine
    assert gain.mean() > -3 * gain.std(ddof=1) / np.sqrt(n)


@pytest.mark.parametrize("fill_model", ["linear", "exponential"])
def test_expected_reward_closed_form_equals_evaluate(fill_model):
    params = mm.presets.homework().replace(
        n_steps=7, T=0.05, mu=0.8, bid_intensity_mult=1.3, ask_intensity_mult=0.7,
        fill_model=fill_model,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    bid = rng.integers(0, 17, params.n_steps) / 8.0  # exact in float32
    ask = rng.integers(0, 17, params.n_steps) / 8.0
    for phi in (0.0, 0.3):
        exact = optimal.evaluate(params, schedule.schedule(bid, ask), phi).value_at()
        assert schedule.expected_reward(params, phi, bid, ask) == pytest.approx(exact, abs=1e-10)


def test_best_open_loop_is_the_best_symmetric_grid_schedule():
    params = mm.presets.homework().replace(n_steps=4, T=0.02)
    levels = np.array([0.125, 0.5, 1.0, 2.0])
    for phi in (0.0, 0.5, 5.0):
        values = [
            schedule.expected_reward(params, phi, levels[list(c)], levels[list(c)])
            for c in itertools.product(range(levels.size), repeat=params.n_steps)
        ]
        best = schedule.best_open_loop(params, phi, levels)
        assert schedule.expected_reward(params, phi, best, best) == pytest.approx(max(values))


def test_infeasible_bound_raises():
    # one level: the schedule is forced, and it breaks |q| <= 1 in some scenario
    levels, key = (0.1,), jax.random.key(0)
    scenarios = schedule.sample_scenarios(TINY, key, 30, levels)
    forced = np.zeros(TINY.n_steps, np.int64)
    assert np.abs(schedule.sample_average(scenarios, forced, forced, 0.0)["inventory"]).max() > 1
    with pytest.raises(RuntimeError, match="INFEASIBLE"):
        schedule.solve_schedule(
            TINY, 0.0, n_scenarios=30, levels=levels, key=key, q_bound=1, time_limit=10.0
        )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"levels": ()}, "levels"),
        ({"levels": (0.5, -0.1)}, "levels"),
        ({"levels": (0.5, float("nan"))}, "levels"),
        ({"levels": (0.5, 0.5)}, "levels"),
        ({"n_scenarios": 0}, "n_scenarios"),
        ({"n_scenarios": 2.5}, "n_scenarios"),
        ({"q_bound": 0}, "q_bound"),
        ({"phi": -1.0}, "phi"),
        ({"time_limit": 0.0}, "time_limit"),
        ({"workers": 0}, "workers"),
        ({"hint": (0.7, 0.7, 0.7, 0.7)}, "hint"),
        ({"params": TINY.replace(q_max=2.0)}, "q_bound"),
        ({"params": TINY.replace(adverse_selection=0.1)}, "adverse_selection"),
        ({"params": TINY.replace(price_model="geometric")}, "price_model"),
        ({"params": TINY.replace(sigma=-1.0)}, "sigma"),
    ],
)
def test_bad_input_raises_before_solving(monkeypatch, change, field):
    def no_solver():
        raise AssertionError("the solver was reached")

    monkeypatch.setattr(schedule, "_cp_model", no_solver)
    kwargs = {
        "params": TINY,
        "phi": 0.1,
        "n_scenarios": 3,
        "levels": TINY_LEVELS,
        "key": jax.random.key(0),
        "q_bound": 2,
        "time_limit": 1.0,
        **change,
    }
    params, phi = kwargs.pop("params"), kwargs.pop("phi")
    with pytest.raises(ValueError, match=field):
        schedule.solve_schedule(params, phi, **kwargs)


def test_jaxmm_imports_without_ortools_and_names_the_extra():
    code = (
        "import sys; sys.modules['ortools'] = None\n"
        "import jax, jaxmm as mm\n"
        "from jaxmm import schedule\n"
        "p = mm.presets.homework().replace(n_steps=2, T=0.01)\n"
        "try:\n"
        "    schedule.solve_schedule(p, 0.1, n_scenarios=1, levels=(1.0,), "
        "key=jax.random.key(0), q_bound=1)\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    result = run_code(code, timeout=120)
    assert "jaxmm[cp]" in result.stdout


def test_study_smoke(tmp_path):
    from experiments import cp_schedule

    out = tmp_path / "cp"
    payload = cp_schedule.main(
        [
            "--n-steps", "6", "--phis", "0.1", "--scenarios", "3", "6", "--replicates", "1",
            "--n-episodes", "400", "--deterministic-time", "1", "--seed", "2",
            "--out", str(out),
        ]
    )  # fmt: skip
    for name in (
        "values.csv",
        "solves.csv",
        "schedules.csv",
        "summary.json",
        "schedule_depths.png",
        "values.png",
        "overfitting.png",
    ):
        assert (out / name).stat().st_size > 0
    assert payload["config"]["seed"] == 2
    values = {row["strategy"]: row for row in payload["values"]}
    bellman = values["bellman"]["exact"]
    for name, row in values.items():
        assert row["exact"] <= bellman + 1e-9, name
    for row in payload["solves"]:
        assert row["status"] in ("OPTIMAL", "FEASIBLE")
        assert row["out_of_sample_exact"] <= values["best_open_loop"]["exact"] + 1e-9


@pytest.mark.slow
def test_study_market_schedule_matches_simulator_and_monte_carlo():
    """The 50-step study market: in-sample value = re-simulation; exact value = Monte Carlo
    within 4 standard errors over 200k fresh episodes; below the open-loop and Bellman optima."""
    params = mm.presets.homework().replace(n_steps=50, T=0.25)
    phi, levels, key = 0.1, [0.2 * i for i in range(1, 11)], jax.random.key(5)
    solution = schedule.solve_schedule(
        params, phi, n_scenarios=30, levels=levels, key=key, q_bound=10, time_limit=300.0,
        deterministic_time=5.0,
    )  # fmt: skip
    assert solution.status in ("OPTIMAL", "FEASIBLE")
    again = np.asarray(mm.simulate(params, solution.policy(), key, 30).reward(phi), np.float64)
    assert solution.objective == pytest.approx(again.mean(), abs=1e-3)
    exact = optimal.evaluate(params, solution.policy(), phi).value_at()
    best = schedule.best_open_loop(params, phi, levels)
    assert exact <= schedule.expected_reward(params, phi, best, best) + 1e-9
    assert exact <= optimal.bellman(params, phi).value_at()
    n = 200_000
    fresh = mm.simulate(params, solution.policy(), jax.random.key(777), n).reward(phi)
    fresh = np.asarray(fresh, np.float64)
    assert abs(fresh.mean() - exact) < 4 * fresh.std(ddof=1) / np.sqrt(n)
