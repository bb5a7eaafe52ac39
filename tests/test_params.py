"""MarketParams validation and presets."""

import math

import jax
import numpy as np
import pytest

import jaxmm as mm
from tests.helpers import assert_validation_names


def test_homework_preset_matches_the_course():
    p = mm.presets.homework()
    assert (p.S0, p.sigma, p.T, p.n_steps, p.k) == (100.0, 2.0, 1.0, 200, 1.5)
    assert p.fill_model == "linear" and p.price_model == "arithmetic"
    assert math.isinf(p.q_max)
    # "A = 0.5" per step at depth 0 under the linear convention.
    assert p.A * p.dt == pytest.approx(0.5)


def test_as2008_preset_matches_the_paper_section_3():
    p = mm.presets.as2008()
    assert (p.S0, p.sigma, p.T, p.A, p.k) == (100.0, 2.0, 1.0, 140.0, 1.5)
    assert p.dt == pytest.approx(0.005)
    assert p.fill_model == "linear" and p.price_model == "binary"


@pytest.mark.parametrize(
    ("changes", "field", "allowed"),
    [
        ({"sigma": -1.0}, "sigma", ">= 0"),
        ({"k": 0.0}, "k", "> 0"),
        ({"k": -2.0}, "k", "> 0"),
        ({"A": -1.0}, "A", ">= 0"),
        ({"S0": 0.0}, "S0", "> 0"),
        ({"T": 0.0}, "T", "> 0"),
        ({"q_max": 0.0}, "q_max", "integer >= 1"),
        ({"q_max": 2.5}, "q_max", "integer >= 1"),
        ({"adverse_selection": -0.1}, "adverse_selection", ">= 0"),
        ({"bid_intensity_mult": -1.0}, "bid_intensity_mult", ">= 0"),
        ({"ask_intensity_mult": -1.0}, "ask_intensity_mult", ">= 0"),
        ({"vol_switch_step": -3}, "vol_switch_step", "integer >= 0"),
        ({"vol_switch_factor": -2.0}, "vol_switch_factor", ">= 0"),
        ({"sigma": float("nan")}, "sigma", "NaN"),
        ({"mu": float("inf")}, "mu", "infinite"),
        ({"A": float("inf")}, "A", "infinite"),
        ({"n_steps": 0}, "n_steps", "integer >= 1"),
        ({"history_window": 0}, "history_window", "integer >= 1"),
        ({"fill_model": "poisson"}, "fill_model", "linear"),
        ({"price_model": "heston"}, "price_model", "arithmetic"),
    ],
)
def test_validation_names_field_and_range(changes, field, allowed):
    assert_validation_names(changes, field, allowed)


def test_validation_checks_every_element_of_a_sweep():
    p = mm.presets.homework().replace(sigma=np.array([1.0, 2.0, -0.5]))
    with pytest.raises(ValueError, match=r"sigma = \[-0.5\]"):
        p.validate()


def test_simulate_validates_before_compiling():
    p = mm.presets.homework().replace(k=-1.0)
    with pytest.raises(ValueError, match=r"MarketParams\.k"):
        mm.simulate(p, mm.policies.symmetric(0.5), jax.random.key(0), 10)


def test_params_are_pytrees_with_static_sizes():
    p = mm.presets.homework()
    leaves = jax.tree.leaves(p)
    assert 200 not in leaves and "linear" not in leaves
    swept = jax.vmap(lambda s: p.replace(sigma=s).sigma * 2)(np.array([1.0, 3.0]))
    np.testing.assert_allclose(swept, [2.0, 6.0])
