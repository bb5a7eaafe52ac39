"""Multi-asset market making: validation, noise mapping, covariance, the portfolio A-S rule."""

import csv
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

import jaxmm as mm
from jaxmm import market
from jaxmm import multi_asset as ma

HOMEWORK = mm.presets.homework()
CORRELATED = [[1.0, 0.6, -0.3], [0.6, 1.0, 0.2], [-0.3, 0.2, 1.0]]


@pytest.mark.parametrize(
    ("correlation", "per_asset", "message"),
    [
        ([[1.0, 0.9, 0.9], [0.9, 1.0, -0.9], [0.9, -0.9, 1.0]], {}, "not positive definite"),
        ([[1.0, 1.0], [1.0, 1.0]], {}, "not positive definite"),
        ([[1.0, 0.5], [0.4, 1.0]], {}, "not symmetric"),
        ([[0.9, 0.0], [0.0, 1.0]], {}, "unit diagonal"),
        ([[1.0, 1.2], [1.2, 1.0]], {}, r"outside \[-1, 1\]"),
        ([[1.0, np.nan], [np.nan, 1.0]], {}, "non-finite"),
        ([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], {}, "square"),
        ([[1.0, 0.0], [0.0, 1.0]], {"sigma": [1.0, 2.0, 3.0]}, r"market\.sigma has shape"),
        ([[1.0, 0.0], [0.0, 1.0]], {"sigma": [1.0, -2.0]}, r"MarketParams\.sigma"),
        ([[1.0, 0.0], [0.0, 1.0]], {"T": [1.0, 2.0]}, r"market\.T"),
        ([[1.0, 0.0], [0.0, 1.0]], {"n_steps": [1, 2]}, "unknown per-asset"),
    ],
)
def test_invalid_parameters_raise_naming_the_field(correlation, per_asset, message):
    with pytest.raises(ValueError, match=message):
        ma.make_params(HOMEWORK, correlation, **per_asset)


def test_other_invalid_inputs_raise_before_compiling():
    with pytest.raises(ValueError, match="price_model"):
        ma.make_params(HOMEWORK.replace(price_model="binary"), np.eye(2))
    with pytest.raises(ValueError, match="gamma"):
        ma.portfolio_avellaneda_stoikov(-0.1)
    with pytest.raises(ValueError, match="not positive definite"):
        ma.portfolio_avellaneda_stoikov(0.1, correlation=[[1.0, 1.0], [1.0, 1.0]])
    params = ma.make_params(HOMEWORK, np.eye(2))
    policy = ma.per_asset(mm.policies.symmetric(1.0))
    with pytest.raises(ValueError, match="n_episodes"):
        ma.simulate_multi(params, policy, jax.random.key(0), 0)
    # built by hand with a leaf that has no asset axis: caught by validate(), not by jit
    bad = ma.MultiAssetParams(market=HOMEWORK, correlation=jnp.eye(2))
    with pytest.raises(ValueError, match=r"market\.S0 has shape \(\)"):
        ma.simulate_multi(bad, policy, jax.random.key(0), 4)


def test_small_asymmetry_is_rounded_away_and_covariance_is_diag_sigma_c_diag_sigma():
    params = ma.make_params(HOMEWORK, [[1.0, 0.5 + 1e-10], [0.5, 1.0 - 1e-10]], sigma=[1.0, 3.0])
    np.testing.assert_array_equal(np.asarray(params.correlation), [[1.0, 0.5], [0.5, 1.0]])
    np.testing.assert_allclose(np.asarray(params.covariance), [[1.0, 1.5], [1.5, 9.0]], rtol=1e-6)
    assert params.n_assets == 2 and params.market.S0.shape == (2,)


def test_uniform_normal_round_trip_within_float_spacing():
    """``normal_from_uniform(Phi(z))`` returns ``z`` up to the float32 spacing of ``2u - 1``
    near +-1 divided by the normal density: tolerance ``2^-23 / phi(z) + 1e-6``."""
    z = jnp.linspace(-5.25, 5.25, 100_001, dtype=jnp.float32)
    back = np.asarray(market.normal_from_uniform(ma.uniform_from_normal(z)), np.float64)
    z64 = np.asarray(z, np.float64)
    bound = 2.0**-23 / norm.pdf(z64) + 1e-6
    assert np.all(np.abs(back - z64) <= bound)
    core = np.abs(z64) <= 2.0
    assert np.max(np.abs(back - z64)[core]) < 1e-6
    extreme = market.normal_from_uniform(ma.uniform_from_normal(jnp.array([-40.0, 40.0])))
    assert np.all(np.isfinite(np.asarray(extreme))) and np.all(np.abs(np.asarray(extreme)) > 5.2)


def test_correlate_uniforms_passes_unit_rows_through_unchanged():
    u = market.counter_noise(market.stream_key(jax.random.key(1)), jnp.arange(64), 0)
    u_mid = jnp.stack([u.u_mid, u.u_bid, u.u_ask])  # [3 assets, 64]
    identity = jnp.eye(3, dtype=u_mid.dtype)
    np.testing.assert_array_equal(ma.correlate_uniforms(u_mid, identity), u_mid)
    cholesky = jnp.linalg.cholesky(jnp.asarray(CORRELATED, u_mid.dtype))
    mixed = ma.correlate_uniforms(u_mid, cholesky)
    np.testing.assert_array_equal(mixed[0], u_mid[0])  # row 0 of L is always e_0
    z = np.asarray(market.normal_from_uniform(u_mid), np.float64)
    expected = np.asarray(cholesky, np.float64) @ z
    np.testing.assert_allclose(market.normal_from_uniform(mixed), expected, atol=2e-5)


def single_asset_runs(params, n_assets: int, key, n_episodes: int):
    """The A-S rule (gamma 0.1) on every asset of ``params``: the multi-asset rollout and, for
    each asset ``a``, the pair (its view ``multi.asset(a)``, the single-asset ``mm.simulate``
    of ``asset_params(params, a)`` on ``asset_key(key, a)``)."""
    single_policy = mm.policies.avellaneda_stoikov(0.1)
    multi = ma.simulate_multi(params, ma.per_asset(single_policy), key, n_episodes)
    runs = [
        (
            multi.asset(asset),
            mm.simulate(
                ma.asset_params(params, asset), single_policy, ma.asset_key(key, asset), n_episodes
            ),
        )
        for asset in range(n_assets)
    ]
    return multi, runs


def assert_same_fields(mine, alone, exact, close):
    """The rollouts agree: the fields ``exact`` to the bit, the fields ``close`` within 2e-4
    (absolute: float32 rounding of price-unit sums)."""
    for name in exact:
        np.testing.assert_array_equal(getattr(mine, name), getattr(alone, name), err_msg=name)
    for name in close:
        np.testing.assert_allclose(
            getattr(mine, name), getattr(alone, name), rtol=0, atol=2e-4, err_msg=name
        )


def test_identity_correlation_reproduces_single_asset_simulate():
    """With C = I each asset is the single-asset simulator run with ``asset_key(key, a)``:
    identical fills and inventories, mid and PnL paths equal to float32 rounding."""
    params = ma.make_params(
        HOMEWORK, np.eye(3), sigma=[2.0, 1.0, 3.0], A=[100.0, 140.0, 80.0], S0=[100.0, 50.0, 20.0]
    )
    _, runs = single_asset_runs(params, 3, jax.random.key(11), 300)
    for mine, alone in runs:
        assert_same_fields(
            mine,
            alone,
            exact=("inventory", "n_bid_fills", "n_ask_fills", "sum_sq_inventory"),
            close=("pnl", "inventory_pnl", "final_mid", "max_drawdown"),
        )
        for name in ("spread_pnl", "mean_spread"):
            np.testing.assert_allclose(getattr(mine, name), getattr(alone, name), rtol=1e-6)


def test_market_extensions_are_options_of_the_same_step():
    """Heston variance, compound-Poisson jumps and fees switched on (their extra noise comes
    from each asset's own stream): with C = I each asset is still the single-asset simulator."""
    base = HOMEWORK.replace(
        vol_model="heston",
        xi_v=0.5,
        jump_model="compound_poisson",
        jump_intensity=5.0,
        jump_std=0.5,
        maker_fee=0.01,
    )
    params = ma.make_params(base, np.eye(2), sigma=[2.0, 1.0])
    multi, runs = single_asset_runs(params, 2, jax.random.key(13), 100)
    for mine, alone in runs:
        assert_same_fields(
            mine,
            alone,
            exact=("inventory", "n_bid_fills", "n_ask_fills"),
            close=("pnl", "fees", "final_mid"),
        )
    assert float(np.min(multi.assets.fees)) > 0


def test_asset_zero_noise_does_not_depend_on_the_correlation_nor_the_chunks():
    # the shapes of the identity test above: the compiled program is reused
    policy = ma.per_asset(mm.policies.avellaneda_stoikov(0.1))
    key = jax.random.key(3)
    per_asset = {"sigma": [2.0, 1.0, 3.0], "A": [100.0, 140.0, 80.0], "S0": [100.0, 50.0, 20.0]}
    independent_params = ma.make_params(HOMEWORK, np.eye(3), **per_asset)
    correlated_params = ma.make_params(HOMEWORK, CORRELATED, **per_asset)
    independent = ma.simulate_multi(independent_params, policy, key, 300)
    correlated = ma.simulate_multi(correlated_params, policy, key, 300)
    for name in ("pnl", "final_mid", "inventory", "max_drawdown"):
        first, second = independent.asset(0), correlated.asset(0)
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    assert not np.array_equal(independent.asset(1).final_mid, correlated.asset(1).final_mid)
    # chunking: the same episodes (fills exactly, prices up to float rounding of the program)
    chunked = ma.simulate_multi(correlated_params, policy, key, 300, chunk_size=100)
    np.testing.assert_array_equal(chunked.assets.inventory, correlated.assets.inventory)
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(x, y, rtol=0, atol=2e-4), chunked, correlated
    )


@pytest.mark.parametrize("price_model", ["arithmetic", "geometric"])
def test_mid_increment_covariance_matches_sigma_dt(price_model):
    """Sample covariance of the increments (log returns for the geometric model) against
    ``Sigma dt``: each of the 6 entries within 4 standard errors, with the Gaussian (Wishart)
    standard error ``sqrt((S_ii S_jj + S_ij^2) / m)`` of a covariance from ``m`` draws; the
    means within 4 standard errors of the drift's ``(mu - sigma^2 / 2) dt`` or 0."""
    sigma = [1.0, 2.0, 0.5] if price_model == "arithmetic" else [0.2, 0.1, 0.3]
    base = HOMEWORK.replace(price_model=price_model)
    params = ma.make_params(base, CORRELATED, sigma=sigma)
    rollout = ma.simulate_multi(
        params, ma.per_asset(mm.policies.symmetric(1.0)), jax.random.key(5), 600, paths=True
    )
    mid = np.asarray(rollout.assets.paths.mid, np.float64)  # [n, 3, N + 1]
    steps = np.diff(np.log(mid) if price_model == "geometric" else mid, axis=-1)
    draws = steps.transpose(1, 0, 2).reshape(3, -1)  # [3, m]
    m = draws.shape[1]
    dt = HOMEWORK.dt
    expected = np.asarray(params.covariance, np.float64) * dt
    sample = np.cov(draws)
    se = np.sqrt((np.outer(np.diag(expected), np.diag(expected)) + expected**2) / m)
    assert np.all(np.abs(sample - expected) < 4 * se), (sample / dt, expected / dt)
    drift = -0.5 * np.asarray(sigma) ** 2 * dt if price_model == "geometric" else 0.0
    mean_se = np.sqrt(np.diag(expected) / m)
    assert np.all(np.abs(draws.mean(axis=1) - drift) < 4 * mean_se)
    # quotes through the mid are counted (every quote here), none at depth 1
    assert np.all(np.asarray(rollout.n_marketable) == 0)
    crossed = ma.simulate_multi(
        params, ma.per_asset(mm.policies.symmetric(-0.05)), jax.random.key(5), 600, paths=True
    )
    assert np.all(np.asarray(crossed.n_marketable) == 2 * HOMEWORK.n_steps)


@pytest.mark.slow
def test_terminal_mid_covariance_five_assets_large_sample():
    """Five assets, a random positive definite correlation, 200,000 episodes: the covariance of
    ``S_T - S_0`` against ``Sigma T``, each of the 15 entries within 4 Wishart standard errors
    (relative precision ~0.3%, enough to see a bias of the normal/uniform round trip)."""
    rng = np.random.default_rng(0)
    factor = rng.normal(size=(5, 8))
    covariance = factor @ factor.T
    scale = np.sqrt(np.diag(covariance))
    correlation = covariance / np.outer(scale, scale)
    sigma = [2.0, 1.0, 0.5, 3.0, 1.5]
    params = ma.make_params(HOMEWORK, correlation, sigma=sigma)
    rollout = ma.simulate_multi(
        params, ma.per_asset(mm.policies.symmetric(1.0)), jax.random.key(17), 200_000
    )
    moves = np.asarray(rollout.assets.final_mid, np.float64) - HOMEWORK.S0  # [n, 5]
    m = moves.shape[0]
    expected = np.asarray(params.covariance, np.float64) * HOMEWORK.T
    sample = np.cov(moves.T)
    se = np.sqrt((np.outer(np.diag(expected), np.diag(expected)) + expected**2) / m)
    assert np.all(np.abs(sample - expected) < 4 * se), (sample - expected) / se


def test_one_asset_portfolio_rule_is_avellaneda_stoikov():
    params = ma.make_params(HOMEWORK, [[1.0]])
    key = jax.random.key(8)
    multi = ma.simulate_multi(params, ma.portfolio_avellaneda_stoikov(0.3), key, 300)
    single = mm.simulate(HOMEWORK, mm.policies.avellaneda_stoikov(0.3), key, 300)
    mine = multi.asset(0)
    for name in ("inventory", "n_bid_fills", "n_ask_fills"):
        np.testing.assert_array_equal(getattr(mine, name), getattr(single, name), err_msg=name)
    np.testing.assert_allclose(mine.pnl, single.pnl, rtol=0, atol=2e-4)
    np.testing.assert_allclose(multi.pnl, single.pnl, rtol=0, atol=2e-4)
    np.testing.assert_allclose(multi.max_drawdown, single.max_drawdown, rtol=0, atol=2e-4)
    np.testing.assert_allclose(
        multi.inventory_variance,
        HOMEWORK.sigma**2 * HOMEWORK.dt * np.asarray(single.sum_sq_inventory),
        rtol=1e-5,
    )


def _one_state(params, t, inventory, mid):
    state = ma.reset(jax.random.key(0), params)
    return state.replace(
        t=jnp.asarray(t, state.t.dtype),
        inventory=jnp.asarray(inventory, state.mid.dtype),
        mid=jnp.asarray(mid, state.mid.dtype),
    )


def test_reservation_prices_and_depths_by_hand():
    """Two assets, sigma = (1, 2), rho = 0.5, q = (2, -1), gamma = 0.1, T - t = 0.5:
    Sigma = [[1, 1], [1, 4]], Sigma q = (1, -2), S - r = 0.05 * (1, -2)."""
    params = ma.make_params(HOMEWORK, [[1.0, 0.5], [0.5, 1.0]], sigma=[1.0, 2.0], k=[1.5, 1.0])
    state = _one_state(params, 100, [2.0, -1.0], [100.0, 50.0])
    rule = ma.portfolio_avellaneda_stoikov(0.1)
    np.testing.assert_allclose(rule.reservation_offset(state, params), [0.05, -0.1], rtol=1e-6)
    spread = [0.1 * 1 * 0.5 + 20 * math.log(1 + 0.1 / 1.5), 0.1 * 4 * 0.5 + 20 * math.log(1.1)]
    quotes = rule(state, params)
    np.testing.assert_allclose(
        quotes.bid_depth, [spread[0] / 2 + 0.05, spread[1] / 2 - 0.1], rtol=1e-6
    )
    np.testing.assert_allclose(
        quotes.ask_depth, [spread[0] / 2 - 0.05, spread[1] / 2 + 0.1], rtol=1e-6
    )
    # alone, each asset skews by its own q_i sigma_i^2: (0.1, -0.2) instead of (0.05, -0.1)
    alone = ma.per_asset(mm.policies.avellaneda_stoikov(0.1))(state, params)
    np.testing.assert_allclose(
        alone.bid_depth, [spread[0] / 2 + 0.1, spread[1] / 2 - 0.2], rtol=1e-6
    )
    assumed_independent = ma.portfolio_avellaneda_stoikov(0.1, correlation=np.eye(2))
    independent = assumed_independent(state, params)
    np.testing.assert_allclose(independent.bid_depth, alone.bid_depth, rtol=1e-6)
    np.testing.assert_allclose(independent.ask_depth, alone.ask_depth, rtol=1e-6)


def test_accounting_identities_and_common_random_numbers():
    """Portfolio PnL = sum of asset PnLs; asset PnL = spread + inventory PnL; the portfolio
    path, drawdown and ``sum q' Sigma_t q dt`` (volatility switch included) recomputed from the
    paths; the two rules see the same mid paths (up to float rounding: two programs may
    contract a multiply-add differently)."""
    params = ma.make_params(
        HOMEWORK.replace(vol_switch_step=120),
        CORRELATED,
        sigma=[2.0, 1.0, 1.5],
        vol_switch_factor=[2.0, 1.0, 0.5],
    )
    key = jax.random.key(21)
    portfolio = ma.portfolio_avellaneda_stoikov(0.2)
    rollout = ma.simulate_multi(params, portfolio, key, 40, paths=True)
    assets = rollout.assets
    np.testing.assert_allclose(rollout.pnl, np.sum(assets.pnl, axis=1), rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(assets.pnl, assets.spread_pnl + assets.inventory_pnl, atol=1e-4)
    path = np.asarray(rollout.pnl_path, np.float64)
    np.testing.assert_allclose(path[:, -1], rollout.pnl, rtol=1e-6, atol=1e-4)
    drawdown = np.max(np.maximum.accumulate(path, axis=1) - path, axis=1)
    np.testing.assert_allclose(rollout.max_drawdown, drawdown, rtol=1e-5, atol=1e-4)
    q = np.asarray(assets.paths.inventory, np.float64)[:, :, 1:]  # q_{t+1}: [n, 3, N]
    sigma = np.asarray(params.sigma, np.float64)[:, None] * np.where(
        np.arange(HOMEWORK.n_steps) >= 120, np.asarray(params.market.vol_switch_factor)[:, None], 1
    )  # [3, N]
    covariance = sigma[:, None, :] * np.asarray(CORRELATED)[:, :, None] * sigma[None, :, :]
    variance = np.einsum("nat,abt,nbt->n", q, covariance, q) * HOMEWORK.dt
    np.testing.assert_allclose(rollout.inventory_variance, variance, rtol=1e-5)
    np.testing.assert_allclose(rollout.reward(0.05), rollout.pnl - 0.05 * variance, rtol=1e-5)
    alone = ma.simulate_multi(
        params, ma.per_asset(mm.policies.avellaneda_stoikov(0.2)), key, 40, paths=True
    )
    # same noise; the two compiled programs may round S + sigma sqrt(dt) z differently (FMA)
    np.testing.assert_allclose(alone.assets.paths.mid, assets.paths.mid, rtol=0, atol=1e-4)
    assert not np.array_equal(alone.assets.inventory, assets.inventory)


def test_statistics_standard_errors_and_paired_differences():
    """Influence-value standard errors: the Sharpe one equals Mertens' formula
    (``metrics.sharpe``), the mean's is std / sqrt(n); a rollout paired with itself differs by
    exactly 0 with standard error 0."""
    params = ma.make_params(HOMEWORK, [[1.0, 0.9], [0.9, 1.0]])
    rollout = ma.simulate_multi(
        params, ma.portfolio_avellaneda_stoikov(0.1), jax.random.key(2), 400
    )
    summary = ma.summarize_multi(rollout, 0.1)
    pnl = np.asarray(rollout.pnl, np.float64)
    sharpe, sharpe_se = mm.metrics.sharpe(pnl)
    assert summary["sharpe"] == pytest.approx(sharpe, rel=1e-9)
    assert summary["sharpe_se"] == pytest.approx(sharpe_se, rel=1e-2)
    assert summary["mean_pnl_se"] == pytest.approx(pnl.std(ddof=1) / 20, rel=1e-9)
    assert summary["mean_variance"] == pytest.approx(pnl.mean() - 0.05 * pnl.var(ddof=1))
    itself = ma.paired_difference(rollout, rollout, 0.1)
    assert all(itself[k] == 0 for k in itself if k != "n_episodes")


def _rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_study_smoke(tmp_path):
    from experiments import multi_asset as study

    out = tmp_path / "multi_asset"
    payload = study.main(["--quick", "--n-episodes", "60", "--seed", "4", "--out", str(out)])
    for name in ("summary.json", "comparison.csv", "objective_vs_rho.png"):
        assert (out / name).stat().st_size > 0, name
    rows = _rows(out / "comparison.csv")
    assert len(rows) == len(payload["table"]) > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["seed"] == 4 and summary["config"]["n_episodes"] == 60
    for row in payload["table"]:
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float))
        for stat in ("mean_pnl", "mean_variance", "inventory_variance"):
            difference = row[f"portfolio_{stat}"] - row[f"alone_{stat}"]
            assert row[f"difference_{stat}"] == pytest.approx(difference, abs=1e-9)
    first = payload["table"][0]
    params = ma.make_params(
        mm.presets.homework(),
        study.equicorrelation(first["n_assets"], first["rho"]),
        sigma=study.SIGMAS[first["n_assets"]],
    )
    direct = ma.simulate_multi(
        params, ma.portfolio_avellaneda_stoikov(first["gamma"]), jax.random.key(4), 60
    )
    assert first["portfolio_mean_pnl"] == pytest.approx(float(np.mean(direct.pnl)), rel=1e-6)
