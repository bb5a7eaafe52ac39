"""Market orders as a control (``MarketParams.mo_cost``, ``Quotes.market_order``): the step's
accounting against an independent cash ledger, the inventory limits, the joint-action optimum
of ``optimal.bellman`` against a brute-force dynamic programme in NumPy, its exact evaluation
against Monte Carlo (4 standard errors, fixed seed), the quotes-only limit, the environment's
``"depths_mo"`` mode and the PPO configuration."""

from __future__ import annotations

import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmm as mm
from jaxmm import market, optimal
from jaxmm.env import EnvParams, MarketMakingEnv
from jaxmm.results import jsonable

STEP = jax.jit(market.step)


def mo_market(**kwargs):
    return mm.presets.homework().replace(**{"mo_cost": 0.3, "q_max": 5.0, **kwargs})


# ------------------------------------------------------------------ params and the step


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"mo_cost": -0.1}, "mo_cost"),
        ({"mo_cost": float("nan")}, "mo_cost"),
        ({"mo_cost": math.inf}, "mo_cost"),
        ({"mo_cost": 0.1, "mo_permanent_impact": -1.0}, "mo_permanent_impact"),
        ({"mo_permanent_impact": 0.1}, "mo_permanent_impact"),  # without mo_cost
    ],
)
def test_bad_market_order_fields_are_refused_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        mm.presets.homework().replace(**kwargs).validate()


def test_off_by_default_and_absent_from_the_pytree():
    params = mm.presets.homework()
    assert params.mo_cost is None and not params.has_market_orders
    on = params.replace(mo_cost=0.2, mo_permanent_impact=0.01)
    assert len(jax.tree.leaves(on)) == len(jax.tree.leaves(params)) + 2
    assert market.Quotes(1.0, 1.0).market_order is None
    state = market.reset(jax.random.key(0), params)
    _, info = STEP(state, market.Quotes(0.5, 0.5), jax.random.key(1), params)
    assert info.market_order is None and info.market_order_cost is None


def test_a_market_order_on_a_market_without_them_is_refused():
    params = mm.presets.homework()
    state = market.reset(jax.random.key(0), params)
    with pytest.raises(ValueError, match="mo_cost"):
        market.step(state, market.Quotes(0.5, 0.5, 1), jax.random.key(1), params)


def test_pnl_conservation_and_an_independent_cash_ledger():
    """Random quotes and market orders with fees, permanent impact and adverse selection:
    ``pnl = spread_pnl + inventory_pnl - fees`` at every step, and the PnL equals the cash of
    every trade at its price plus the inventory marked at the mid (float64 ledger)."""
    params = mo_market(
        mo_permanent_impact=0.05, adverse_selection=0.02, maker_fee=-0.01, taker_fee=0.03
    )
    with jax.enable_x64(True):
        state = market.reset(jax.random.key(0), params)
        rng = np.random.default_rng(0)
        cash = 0.0
        n_orders = 0
        for t in range(80):
            depths = rng.uniform(0.05, 1.0, 2)
            order = float(rng.choice([-1.0, 0.0, 1.0, 0.4, -0.7]))
            quotes = market.Quotes(depths[0], depths[1], order)
            mid, before = float(state.mid), float(state.inventory)
            state, info = STEP(state, quotes, jax.random.key(t), params)
            m, sent = float(info.market_order), float(np.clip(np.round(order), -1, 1))
            assert m == (sent if abs(before + sent) <= params.q_max else 0.0)
            n_orders += abs(m)
            b, a = float(info.bid_fill), float(info.ask_fill)
            cash -= m * mid + abs(m) * params.mo_cost + abs(m) * params.taker_fee
            cash += -b * (mid - float(info.bid_depth)) + a * (mid + float(info.ask_depth))
            cash -= (b + a) * params.maker_fee  # both depths > 0: passive fills
            assert float(info.market_order_cost) == pytest.approx(abs(m) * params.mo_cost)
            assert float(info.pnl) == pytest.approx(
                float(info.spread_pnl + info.inventory_pnl - info.fees), abs=1e-12
            )
            marked = cash + float(state.inventory) * float(state.mid)
            assert float(state.pnl) == pytest.approx(marked, abs=1e-9)
        total = float(state.spread_pnl + state.inventory_pnl - state.fees)
        assert float(state.pnl) == pytest.approx(total, abs=1e-9)
        assert n_orders > 10  # the orders were exercised


def test_timing_cost_and_impact_of_one_market_order():
    """No fills (A = 0): a buy costs mo_cost in spread capture, the inventory moves first and
    the permanent impact moves the mid before it is marked."""
    params = mo_market(A=0.0, sigma=0.0, mo_permanent_impact=0.25, mo_cost=0.1)
    state = market.reset(jax.random.key(0), params)
    state, info = STEP(state, market.Quotes(0.5, 0.5, 1.0), jax.random.key(1), params)
    assert float(state.inventory) == 1.0
    assert float(info.spread_pnl) == pytest.approx(-0.1)
    assert float(state.mid) == pytest.approx(100.25)
    assert float(info.inventory_pnl) == pytest.approx(0.25)  # q_{t+1} (S_{t+1} - S_t)
    state, info = STEP(state, market.Quotes(0.5, 0.5, -1), jax.random.key(2), params)
    assert float(state.inventory) == 0.0 and float(state.mid) == pytest.approx(100.0)
    assert float(state.pnl) == pytest.approx(-0.2 + 0.25)  # bought and sold back at impact


def test_inventory_limit_refuses_the_order_and_gates_the_fills_after_it():
    """At q = q_max a buy is not sent (no trade, no cost); a sell first lets the bid fill."""
    params = mo_market(q_max=1.0, A=1e6)  # every quote fills
    state = market.reset(jax.random.key(0), params).replace(inventory=jnp.asarray(1.0))
    quotes = market.Quotes(0.5, jnp.inf, 1.0)  # buy + bid: both refused at the limit
    next_state, info = STEP(state, quotes, jax.random.key(1), params)
    assert float(info.market_order) == 0.0 and float(info.market_order_cost) == 0.0
    assert float(info.bid_fill) == 0.0 and float(next_state.inventory) == 1.0
    quotes = market.Quotes(0.5, jnp.inf, -1.0)  # sell to 0, then the bid fills back to 1
    next_state, info = STEP(state, quotes, jax.random.key(1), params)
    assert float(info.market_order) == -1.0 and float(info.bid_fill) == 1.0
    assert float(next_state.inventory) == 1.0


def test_simulate_runs_market_orders_and_counts_them_in_the_pnl():
    """A constant buy order with no fills: every episode buys until q_max, paying the cost."""
    params = mo_market(A=0.0, q_max=7.0, mo_cost=0.2)

    def buy(obs, params):
        return market.Quotes(jnp.inf, jnp.inf, jnp.ones(()))

    rollout = mm.simulate(params, buy, jax.random.key(0), 64)
    np.testing.assert_array_equal(np.asarray(rollout.inventory), 7.0)
    np.testing.assert_allclose(np.asarray(rollout.spread_pnl), -7 * 0.2, rtol=1e-6)


# ------------------------------------------------------------------- the exact optimum


def brute_force_mo(params, phi, bounds, n_grid=201):
    """The joint-action MDP by explicit loops (NumPy, float64): every inventory, every market
    order, a depth grid for both sides and the four fill outcomes enumerated."""
    q_top = int(params.q_max)
    qs = np.arange(-q_top, q_top + 1)
    grid = np.linspace(*bounds, n_grid)
    kink = math.log(params.A * params.dt) / params.k  # the linear model's cap, on the grid
    if bounds[0] < kink < bounds[1]:
        grid = np.sort(np.append(grid, kink))
    p = np.minimum(1.0, params.A * np.exp(-params.k * grid) * params.dt)
    drift, jump = params.mu * params.dt, params.adverse_selection
    impact = params.mo_permanent_impact or 0.0
    value = np.zeros(qs.size)
    for _ in range(params.n_steps):
        new = np.full(qs.size, -np.inf)
        for i, q in enumerate(qs):
            for m in (-1, 0, 1):
                x = q + m
                if abs(x) > q_top:
                    continue
                pb = p if x < q_top else np.zeros_like(p)
                pa = p if x > -q_top else np.zeros_like(p)
                total = np.zeros((grid.size, grid.size))
                for b, a in itertools.product((0, 1), (0, 1)):
                    prob = (pb if b else 1 - pb)[:, None] * (pa if a else 1 - pa)[None, :]
                    after = x + b - a
                    if abs(after) > q_top:  # a blocked fill: probability 0
                        continue
                    move = drift + jump * (a - b) + impact * m
                    reward = b * grid[:, None] + a * grid[None, :] - abs(m) * params.mo_cost
                    reward = reward + after * move - phi * after**2 + value[after + q_top]
                    total += prob * reward
                new[i] = max(new[i], total.max())
        value = new
    return value


@pytest.mark.parametrize(
    "changes",
    [
        {"mo_cost": 0.15},
        {"mo_cost": 0.1, "mo_permanent_impact": 0.04, "adverse_selection": 0.03, "mu": 0.5},
    ],
    ids=["cost", "impact+adverse+drift"],
)
def test_bellman_matches_a_brute_force_joint_search(changes):
    params = mm.presets.homework().replace(n_steps=5, q_max=3.0, A=20.0, T=1.0, **changes)
    phi, bounds = 0.05, (0.0, 1.5)
    solution = optimal.bellman(params, phi, depth_bounds=bounds)
    exact = solution.value[0]
    brute = brute_force_mo(params, phi, bounds)
    assert np.all(exact >= brute - 1e-12)
    assert np.max(exact - brute) < 2e-4, (exact, brute)
    assert np.any(solution.market_order[:-1] != 0)  # market orders are used here
    evaluated = optimal.evaluate(params, solution, phi)  # the table's exact value
    np.testing.assert_allclose(evaluated.value, solution.value, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(evaluated.market_order, solution.market_order)


def test_expensive_market_orders_reproduce_the_quotes_only_optimum_exactly():
    params = mm.presets.homework().replace(q_max=10.0, n_steps=60)
    base = optimal.bellman(params, 0.01)
    solution = optimal.bellman(params.replace(mo_cost=1e6), 0.01)
    assert base.market_order is None
    np.testing.assert_array_equal(solution.market_order, 0.0)
    np.testing.assert_array_equal(solution.value, base.value)
    np.testing.assert_array_equal(solution.bid_depth, base.bid_depth)
    np.testing.assert_array_equal(solution.ask_depth, base.ask_depth)


def test_cheap_market_orders_gain_and_the_thresholds_are_contiguous():
    params = mm.presets.homework().replace(q_max=10.0, n_steps=100, T=0.5)  # the homework's dt
    base = optimal.bellman(params, 0.1).value_at(0, 0)
    previous = base
    for cost in (1.0, 0.5, 0.2):
        solution = optimal.bellman(params.replace(mo_cost=cost), 0.1)
        value = solution.value_at(0, 0)
        assert value >= previous - 1e-9  # cheaper market orders never hurt
        previous = value
        thresholds = optimal.market_order_thresholds(solution)
        orders, q = solution.market_order[:-1], solution.inventories
        for t, (sell, buy) in enumerate(
            zip(thresholds["sell"][:-1], thresholds["buy"][:-1], strict=True)
        ):
            np.testing.assert_array_equal(orders[t] < 0, q >= sell)  # NaN: never sells
            np.testing.assert_array_equal(orders[t] > 0, q <= buy)
        np.testing.assert_array_equal(orders, -orders[:, ::-1])  # symmetric market
    assert previous > base + 0.1


def test_the_table_policy_in_the_simulator_matches_its_exact_value():
    """Monte Carlo of the optimal table (quotes and market orders) against its exact value:
    within 4 standard errors (10,000 episodes, seed 0)."""
    params = mm.presets.homework().replace(q_max=10.0, mo_cost=0.2, mo_permanent_impact=0.02)
    phi = 0.1
    solution = optimal.bellman(params, phi)
    rollout = mm.simulate(params, optimal.table_policy(solution), jax.random.key(0), 10_000)
    reward = np.asarray(mm.rewards.episode_reward(rollout, phi), np.float64)
    se = reward.std(ddof=1) / math.sqrt(reward.size)
    assert abs(reward.mean() - solution.value_at(0, 0)) < 4 * se, (reward.mean(), se)
    # the quotes alone (no market orders sent) are worse, and evaluate knows it exactly
    quotes_only = optimal.evaluate(params, mm.policies.table(solution), phi).value_at(0, 0)
    assert quotes_only < solution.value_at(0, 0)


def test_solvers_that_do_not_model_market_orders_refuse_them():
    params = mm.presets.homework().replace(q_max=5.0, mo_cost=0.2, n_steps=20)
    with pytest.raises(ValueError, match="mo_cost"):
        optimal.bellman_cara(params, 0.1)
    with pytest.raises(ValueError, match="market_order"):
        optimal.market_order_thresholds(optimal.bellman(params.replace(mo_cost=None), 0.01))


# ------------------------------------------------------------------ environment and PPO


def test_depths_mo_action_mode_maps_the_third_action_by_thresholds():
    env = MarketMakingEnv(action_mode="depths_mo")
    params = EnvParams(market=mo_market())
    assert env.num_actions == 3 and env.action_space(params).shape == (3,)
    state = market.reset(jax.random.key(0), params.market)
    values = jnp.asarray([-1.0, -0.34, -0.33, 0.0, 0.33, 0.4, 7.0])
    actions = jnp.stack([jnp.full(7, 0.7), jnp.full(7, 9.0), values], axis=1)
    quotes = jax.vmap(env.quotes, in_axes=(0, None, None))(actions, state, params)
    np.testing.assert_array_equal(np.asarray(quotes.market_order), [-1, -1, 0, 0, 0, 1, 1])
    np.testing.assert_allclose(np.asarray(quotes.bid_depth), 0.7, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(quotes.ask_depth), 5.0)  # clipped
    *_, info = jax.jit(env.step)(jax.random.key(1), state, jnp.asarray([0.5, 0.5, 1.0]), params)
    assert float(info["market_order"]) == 1.0
    with pytest.raises(ValueError, match="mo_cost"):
        env.quotes(jnp.zeros(3), state, EnvParams())


def test_as_policy_passes_the_market_order_to_simulate():
    """An action function that always sells: simulate runs it through env.as_policy and the
    episodes end at -q_max (no fills: A = 0) with the cost paid per unit."""
    env = MarketMakingEnv(action_mode="depths_mo")
    params = EnvParams(market=mo_market(A=0.0, q_max=4.0, mo_cost=0.25))

    def sell(obs):
        return jnp.asarray([1.0, 1.0, -1.0])

    policy = env.as_policy(sell, params)
    rollout = mm.simulate(params.market, policy, jax.random.key(0), 32)
    np.testing.assert_array_equal(np.asarray(rollout.inventory), -4.0)
    np.testing.assert_allclose(np.asarray(rollout.spread_pnl), -1.0, rtol=1e-6)


def test_ppo_config_market_orders():
    from train.config import PPOConfig, agent_spec, initial_action, market_env

    _, default_params = market_env(PPOConfig())
    assert default_params.market.mo_cost is None  # the default run is unchanged
    # the config stays plain JSON (a run's config.json is written by json.dumps and jsonable)
    for saved in (PPOConfig(), PPOConfig(mo_cost=0.2, mo_permanent_impact=0.01)):
        written = saved.to_dict()
        assert json.loads(json.dumps(written)) == jsonable(written)  # no non-finite floats
        assert PPOConfig.from_dict(json.loads(json.dumps(written))) == saved
    config = PPOConfig(action_mode="depths_mo", mo_cost=0.2, mo_permanent_impact=0.01).validate()
    env, env_params = market_env(config)
    assert env_params.market.mo_cost == 0.2 and env_params.market.mo_permanent_impact == 0.01
    action = initial_action(config, env, env_params)
    assert action.shape == (3,) and action[2] == 0.0 and action[0] == action[1] > 0
    assert agent_spec(config, env, env_params).network.action_dim == 3
    for bad, field in (
        ({"action_mode": "depths_mo"}, "mo_cost"),
        ({"mo_cost": -0.5}, "mo_cost"),
        ({"mo_cost": math.inf}, "mo_cost"),
        ({"mo_permanent_impact": 0.1}, "mo_permanent_impact"),
    ):
        with pytest.raises(ValueError, match=field):
            PPOConfig(**bad).validate()


def test_market_orders_study_quick(tmp_path):
    from experiments import market_orders

    payload = market_orders.main(
        ["--costs", "0.5", "--phis", "0.1", "--out", str(tmp_path)], **market_orders.QUICK
    )
    (row,) = payload["table"]
    assert row["gain"] > 0 and row["threshold_t0"] == 2
    assert abs(row["mc_reward"] - row["value_joint"]) < 4 * row["mc_reward_se"]
    assert (tmp_path / "thresholds.png").stat().st_size > 0
    assert (tmp_path / "summary.json").stat().st_size > 0


def test_the_alpha_and_cara_solvers_refuse_market_orders():
    base = mm.presets.homework().replace(q_max=5.0, mo_cost=0.25)
    alpha = base.replace(alpha_model="ou", alpha_rate=10.0, alpha_vol=15.0, alpha0=0.0)
    with pytest.raises(ValueError, match="mo_cost"):
        optimal.bellman_alpha(alpha, 0.01, n_alpha=5)
    with pytest.raises(ValueError, match="mo_cost"):
        optimal.bellman_cara(base, 0.1)
