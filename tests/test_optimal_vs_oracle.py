"""jaxmm.optimal against the independent NumPy/SciPy references of tests/oracles/optima.py
(written separately from the literature: scipy expm, brute-force joint depth search)."""

import numpy as np
import pytest

import jaxmm as mm
from jaxmm import optimal
from tests.oracles import optima as ref

HOMEWORK = mm.presets.homework()


def _close_where_quoted(actual, expected, atol):
    assert np.array_equal(np.isnan(actual), np.isnan(expected))
    np.testing.assert_allclose(actual[~np.isnan(actual)], expected[~np.isnan(expected)], atol=atol)


@pytest.mark.parametrize(
    "sigma,gamma,q_max,T,penalty",
    [(2.0, 0.1, 10, 1.0, 0.0), (4.0, 1.0, 6, 3.0, 0.05), (0.5, 0.01, 25, 1.0, 0.0)],
)
def test_glft_matches_scipy_expm(sigma, gamma, q_max, T, penalty):
    ours = optimal.glft(sigma, 100.0, 1.5, gamma, q_max, T, n_steps=50, terminal_penalty=penalty)
    theirs = ref.glft_exact(
        sigma, 100.0, 1.5, gamma, q_max, T, ours.times, terminal_penalty=penalty
    )
    _close_where_quoted(ours.bid_depth, theirs["bid_depth"], 1e-6)
    _close_where_quoted(ours.ask_depth, theirs["ask_depth"], 1e-6)
    np.testing.assert_allclose(ours.value, theirs["value"], rtol=1e-8, atol=1e-8)


def test_glft_closed_form_matches_reference():
    ours = optimal.glft_asymptotic(2.0, 100.0, 1.5, 0.3, 8)
    theirs = ref.glft_asymptotic(2.0, 100.0, 1.5, 0.3, ours.inventories)
    # the closed form has no bounds; ours leaves the side at the limit unquoted
    np.testing.assert_allclose(ours.bid_depth[0, :-1], theirs["bid_depth"][:-1], atol=1e-12)
    np.testing.assert_allclose(ours.ask_depth[0, 1:], theirs["ask_depth"][1:], atol=1e-12)


@pytest.mark.parametrize("phi,alpha,q_max", [(0.0, 0.0, 8), (2.0, 0.0, 10), (20.0, 0.01, 15)])
def test_cartea_jaimungal_matches_scipy_expm(phi, alpha, q_max):
    ours = optimal.cartea_jaimungal(100.0, 1.5, phi, q_max, 1.0, alpha=alpha, n_steps=40)
    theirs = ref.cartea_jaimungal_exact(100.0, 1.5, phi, alpha, q_max, 1.0, ours.times)
    _close_where_quoted(ours.bid_depth, theirs["bid_depth"], 1e-6)
    _close_where_quoted(ours.ask_depth, theirs["ask_depth"], 1e-6)
    np.testing.assert_allclose(ours.value, theirs["value"], rtol=1e-9, atol=1e-8)


def test_finite_difference_scheme_matches_reference():
    ours = optimal.cartea_jaimungal_fd(100.0, 1.5, 2.0, 10, 1.0, alpha=0.001, n_steps=300)
    theirs = ref.cartea_jaimungal_fd(100.0, 1.5, 2.0, 0.001, 10, 1.0, 300)
    np.testing.assert_allclose(ours.value, theirs["value"], rtol=1e-11, atol=1e-10)


@pytest.mark.parametrize(
    "changes,phi,reward_kwargs",
    [
        ({}, 0.01, {}),
        ({"fill_model": "exponential"}, 0.1, {"terminal_penalty": 0.5}),
        ({"q_max": 4.0, "mu": 3.0, "adverse_selection": 0.1}, 0.05, {}),
        ({"bid_intensity_mult": 1.4, "ask_intensity_mult": 0.6, "mu": -2.0}, 0.01, {}),
    ],
)
def test_bellman_matches_brute_force_joint_search(changes, phi, reward_kwargs):
    """Whole value and policy tables on a 40-step session against a grid-and-zoom search."""
    params = HOMEWORK.replace(n_steps=40, **changes)
    ours = optimal.bellman(params, phi, q_grid=12, **reward_kwargs)
    theirs = ref.bellman_bruteforce(
        float(params.A),
        float(params.k),
        float(params.T),
        params.n_steps,
        phi,
        fill_model=params.fill_model,
        q_max=float(params.q_max),
        q_grid=12,
        mu=float(params.mu),
        adverse_selection=float(params.adverse_selection),
        bid_mult=float(params.bid_intensity_mult),
        ask_mult=float(params.ask_intensity_mult),
        **reward_kwargs,
    )
    np.testing.assert_array_equal(ours.inventories, theirs["inventories"])
    np.testing.assert_allclose(ours.value, theirs["value"], rtol=1e-9, atol=1e-9)
    _close_where_quoted(ours.bid_depth[:-1], theirs["bid_depth"], 1e-5)
    _close_where_quoted(ours.ask_depth[:-1], theirs["ask_depth"], 1e-5)


def test_homework_optimum_value_agrees_with_reference():
    """The full 200-step homework optimum (the PPO ceiling), both fill conventions."""
    for fill_model in ("linear", "exponential"):
        params = HOMEWORK.replace(fill_model=fill_model)
        ours = optimal.bellman(params, 0.1)
        theirs = ref.bellman_bruteforce(100.0, 1.5, 1.0, 200, 0.1, fill_model=fill_model, q_grid=20)
        assert ours.value_at() == pytest.approx(theirs["value"][0, 20], rel=1e-9)


def test_evaluate_matches_reference_policy_evaluation():
    params = HOMEWORK.replace(n_steps=50)
    ours = optimal.evaluate(params, mm.policies.avellaneda_stoikov(0.5, 1.5), 0.05, q_grid=15)
    theirs = ref.evaluate_policy(
        100.0,
        1.5,
        1.0,
        50,
        0.05,
        ours.bid_depth[:-1],
        ours.ask_depth[:-1],
        ours.inventories,
    )
    np.testing.assert_allclose(ours.value, theirs, rtol=1e-10, atol=1e-10)
