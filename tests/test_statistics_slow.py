"""Long statistical tests (``pytest -m slow``): jaxmm against the independent NumPy baseline."""

import math

import jax
import numpy as np
import pytest

import jaxmm as mm
from experiments.baselines import simulate_numpy_vectorised

pytestmark = pytest.mark.slow


def test_homework_statistics_match_an_independent_numpy_simulator():
    # Different random number generators: agreement is statistical, 4 standard errors.
    n = 400_000
    ours = mm.simulate(
        mm.presets.homework(), mm.policies.avellaneda_stoikov(0.1), jax.random.key(2024), n
    )
    theirs = simulate_numpy_vectorised(n, seed=2024)
    pairs = [
        (ours.pnl, theirs["terminal_pnl"]),
        (ours.inventory, theirs["terminal_inventory"]),
        (ours.max_drawdown, theirs["max_drawdown"]),
        (ours.n_bid_fills, theirs["bid_fills"]),
        (ours.n_ask_fills, theirs["ask_fills"]),
        (ours.inventory**2, theirs["terminal_inventory"] ** 2),
    ]
    for a, b in pairs:
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        se = math.sqrt(a.var() / a.size + b.var() / b.size)
        assert abs(a.mean() - b.mean()) < 4 * se, (a.mean(), b.mean(), se)


def test_a_million_episodes_in_chunks():
    p = mm.presets.homework()
    pol = mm.policies.avellaneda_stoikov(0.1)
    ro = mm.simulate(p, pol, jax.random.key(0), 1_000_000, chunk_size=2**17)
    assert ro.pnl.shape == (1_000_000,)
    assert np.isfinite(np.asarray(ro.pnl)).all()
    # the chunked run's first episodes are exactly those of a small one-shot run
    small = mm.simulate(p, pol, jax.random.key(0), 1000)
    np.testing.assert_array_equal(ro.pnl[:1000], small.pnl)
    s = mm.metrics.summarize(ro)
    assert s["n_episodes"] == 1_000_000 and s["mean_pnl_se"] < 0.01
