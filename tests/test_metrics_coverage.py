"""Coverage of the metrics' standard errors: over many replications of a sample whose
distribution is known, the intervals ``x +- 1.96 x_se`` contain the true value about 95% of the
time.

The PnL is skewed on purpose (a shifted Gamma(4, 1): mean 2, std 2, Sharpe 1, skewness 1), as
episode PnLs are. With ``R`` replications the observed coverage of a correct 95% interval has a
binomial standard error ``sqrt(0.95 * 0.05 / R)``; each statistic must cover within 3 of them.
Fixed seed.
"""

import numpy as np
import pytest
from scipy import stats

from jaxmm import metrics
from jaxmm.simulation import Rollout

SHAPE, SHIFT = 4.0, -2.0  # PnL = Gamma(SHAPE, 1) + SHIFT
REPLICATIONS, EPISODES = 1000, 1000
NOMINAL = 0.95


def truth() -> dict[str, float]:
    law = stats.gamma(SHAPE, loc=SHIFT)
    mean, std = law.mean(), law.std()
    return {
        "mean_pnl": mean,
        "std_pnl": std,
        "sharpe": mean / std,
        "median_pnl": law.median(),
        "p05_pnl": law.ppf(0.05),
        "p95_pnl": law.ppf(0.95),
        "pct_profitable": 100 * law.sf(0.0),
    }


def rollout_of(pnl: np.ndarray) -> Rollout:
    zeros = np.zeros_like(pnl)
    return Rollout(
        pnl=pnl,
        inventory=zeros,
        spread_pnl=pnl,
        inventory_pnl=zeros,
        max_drawdown=zeros,
        n_bid_fills=zeros,
        n_ask_fills=zeros,
        mean_spread=zeros + 1.0,
        sum_sq_inventory=zeros,
        final_mid=zeros,
        n_steps=10,
    )


@pytest.fixture(scope="module")
def coverage() -> dict[str, float]:
    rng = np.random.default_rng(20261201)
    true = truth()
    hits = dict.fromkeys(true, 0)
    for _ in range(REPLICATIONS):
        sample = rng.gamma(SHAPE, 1.0, EPISODES) + SHIFT
        summary = metrics.summarize(rollout_of(sample))
        for name, value in true.items():
            if abs(summary[name] - value) <= 1.96 * summary[f"{name}_se"]:
                hits[name] += 1
    return {name: count / REPLICATIONS for name, count in hits.items()}


@pytest.mark.parametrize("name", list(truth()))
def test_intervals_cover_at_the_nominal_rate(coverage, name):
    tolerance = 3 * np.sqrt(NOMINAL * (1 - NOMINAL) / REPLICATIONS)  # 3 binomial SEs: 0.021
    assert abs(coverage[name] - NOMINAL) <= tolerance, (name, coverage[name])
