"""Statistics of a ``Rollout``: per-episode quantities summarised across episodes.

Every statistic ``x`` comes with ``x_se``, its standard error, where a standard error makes
sense (computed in float64 on the host):

- means: ``std / sqrt(n)``;
- the standard deviation: delta method with the sample fourth moment,
  ``sqrt((m4 - s^4) / n) / (2 s)``;
- the per-episode Sharpe ratio ``mean / std`` of terminal PnL across episodes (not per step, not
  annualised): Mertens (2002), ``sqrt((1 - skew S + (kurt - 1) S^2 / 4) / n)``;
- quantiles and VaR: ``sqrt(p (1 - p) / n) / f(x_p)`` with the density from the
  Hall-Sheather bandwidth spacing of the order statistics;
- CVaR (expected shortfall): ``std((x_p - X)_+) / (p sqrt(n))``, its influence function
  (Rockafellar-Uryasev representation);
- proportions: ``sqrt(p (1 - p) / n)``.

VaR and CVaR are stated as losses: ``var_95 = -q_0.05(PnL)``,
``cvar_95 = -E[PnL | PnL <= q_0.05]``; positive when the tail loses money, negative when even
the tail of the PnL distribution is a gain.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from statistics import NormalDist
from typing import Any

import numpy as np

from jaxmm.simulation import Rollout

__all__ = [
    "MOMENT_FIELDS",
    "TABLE_ROWS",
    "Moments",
    "conditional_value_at_risk",
    "format_table",
    "hall_sheather_se",
    "quantile",
    "sharpe",
    "summarize",
    "summary_from_statistics",
    "value_at_risk",
]

_NORMAL = NormalDist()


@dataclasses.dataclass(frozen=True)
class Moments:
    """Count, mean and central moment sums ``m_k = sum_i (x_i - mean)^k`` (k = 2, 3, 4) of a
    sample, float64: the sufficient statistics of every mean, standard deviation, Sharpe ratio
    and standard error in ``summarize``.

    ``a.merge(b)`` is the moments of the two samples together, exactly (no approximation: the
    pairwise update of Chan, Golub and LeVeque 1979 for ``m2``, Pebay 2008 for ``m3``, ``m4``),
    so statistics can be streamed over chunks of episodes.
    """

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    m3: float = 0.0
    m4: float = 0.0

    @classmethod
    def of(cls, x: np.ndarray) -> Moments:
        """The moments of the values of ``x`` (two-pass, float64)."""
        x = np.asarray(x, np.float64).ravel()
        if x.size == 0:
            return cls()
        mean = x.mean()
        d = x - mean
        d2 = d * d
        return cls(int(x.size), float(mean), float(d2.sum()), float((d2 * d).sum()), float(d2 @ d2))

    def merge(self, other: Moments) -> Moments:
        """The moments of the union of the two (disjoint) samples."""
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        na, nb = float(self.n), float(other.n)
        n = na + nb
        delta = other.mean - self.mean
        mean = self.mean + delta * nb / n
        m2 = self.m2 + other.m2 + delta**2 * na * nb / n
        m3 = (
            self.m3
            + other.m3
            + delta**3 * na * nb * (na - nb) / n**2
            + 3.0 * delta * (na * other.m2 - nb * self.m2) / n
        )
        m4 = (
            self.m4
            + other.m4
            + delta**4 * na * nb * (na * na - na * nb + nb * nb) / n**3
            + 6.0 * delta**2 * (na * na * other.m2 + nb * nb * self.m2) / n**2
            + 4.0 * delta * (na * other.m3 - nb * self.m3) / n
        )
        return Moments(self.n + other.n, mean, m2, m3, m4)

    @property
    def std(self) -> float:
        """Sample standard deviation (``ddof = 1``); NaN below two values."""
        return math.sqrt(max(self.m2, 0.0) / (self.n - 1)) if self.n > 1 else math.nan

    def mean_se(self) -> tuple[float, float]:
        """The mean and its standard error ``std / sqrt(n)``."""
        if self.n == 0:
            return math.nan, math.nan
        return self.mean, self.std / math.sqrt(self.n) if self.n > 1 else math.nan

    def std_se(self) -> tuple[float, float]:
        """The standard deviation and its delta-method standard error
        ``sqrt((m4 / n - s^4) / n) / (2 s)``."""
        s = self.std
        if not self.n > 1 or not s > 0:
            return s, math.nan
        fourth = self.m4 / self.n
        return s, math.sqrt(max(fourth - s**4, 0.0) / self.n) / (2 * s)

    def sharpe(self) -> tuple[float, float]:
        """``mean / std`` and its standard error (Mertens 2002, sample skewness and kurtosis)."""
        s = self.std
        if not self.n > 1 or not s > 0:
            return math.nan, math.nan
        ratio = self.mean / s
        population_variance = self.m2 / self.n
        skew = (self.m3 / self.n) / population_variance**1.5
        kurt = (self.m4 / self.n) / population_variance**2
        variance = (1.0 - skew * ratio + (kurt - 1.0) / 4.0 * ratio**2) / self.n
        return ratio, math.sqrt(max(variance, 0.0))


def sharpe(x: np.ndarray) -> tuple[float, float]:
    """Per-episode Sharpe ratio ``mean / std`` across episodes and its standard error (Mertens)."""
    return Moments.of(x).sharpe()


def hall_sheather_se(quantile_at: Callable[[float], float], n: int, p: float) -> float:
    """Asymptotic standard error ``sqrt(p (1 - p) / n) / f(x_p)`` of the ``p``-quantile of ``n``
    values, the inverse density from the spacing of the quantiles at ``p -+ h`` (Hall-Sheather
    bandwidth ``h``); ``quantile_at(p)`` evaluates the sample's quantiles."""
    if n < 10:
        return math.nan
    z = _NORMAL.inv_cdf(p)
    z_half = _NORMAL.inv_cdf(0.975)
    h = n ** (-1 / 3) * z_half ** (2 / 3) * (1.5 * _NORMAL.pdf(z) ** 2 / (2 * z**2 + 1)) ** (1 / 3)
    lo, hi = max(p - h, 0.0), min(p + h, 1.0)
    spacing = quantile_at(hi) - quantile_at(lo)
    if spacing <= 0:
        return 0.0
    inverse_density = spacing / (hi - lo)
    return float(math.sqrt(p * (1 - p) / n) * inverse_density)


def quantile(x: np.ndarray, p: float) -> tuple[float, float]:
    """Empirical ``p``-quantile and its asymptotic standard error (Hall-Sheather spacing)."""
    x = np.asarray(x, np.float64)
    value = float(np.quantile(x, p))
    return value, hall_sheather_se(lambda q: float(np.quantile(x, q)), x.size, p)


def value_at_risk(pnl: np.ndarray, level: float) -> tuple[float, float]:
    """VaR at ``level`` (e.g. 0.95): the loss ``-q_{1-level}(PnL)`` and its standard error."""
    value, se = quantile(pnl, 1.0 - level)
    return -value, se


def conditional_value_at_risk(pnl: np.ndarray, level: float) -> tuple[float, float]:
    """CVaR / expected shortfall at ``level``: ``-E[PnL | PnL <= q]``, with its standard error."""
    x = np.asarray(pnl, np.float64)
    alpha = 1.0 - level
    q = np.quantile(x, alpha)
    shortfall = np.maximum(q - x, 0.0)
    value = -q + shortfall.mean() / alpha
    se = shortfall.std(ddof=1) / (alpha * math.sqrt(x.size)) if x.size > 1 else math.nan
    return float(value), float(se)


def _proportion(hits: int, n: int) -> tuple[float, float]:
    p = hits / n
    return p, math.sqrt(p * (1 - p) / n)


MOMENT_FIELDS = (
    "pnl",
    "max_drawdown",
    "abs_inventory",
    "inventory",
    "n_bid_fills",
    "n_ask_fills",
    "n_fills",
    "mean_spread",
    "spread_pnl",
    "inventory_pnl",
)
"""The per-episode quantities whose ``Moments`` ``summary_from_statistics`` needs
(``abs_inventory`` = ``|inventory|``, ``n_fills`` = bid + ask fills, ``mean_spread`` over the
episodes where it is finite)."""


def summary_from_statistics(
    moments: Mapping[str, Moments],
    pnl_quantile: Callable[[float], float],
    pnl_tail_loss: Callable[[float], tuple[float, float]],
    *,
    min_pnl: float,
    max_pnl: float,
    worst_drawdown: float,
    n_profitable: int,
    n_steps: int,
) -> dict[str, Any]:
    """The ``summarize`` dict from sufficient statistics (shared by ``summarize`` and the
    streaming ``jaxmm.streaming.simulate_summary``, so that both use the same formulas).

    Args:
        moments: ``Moments`` of every name in ``MOMENT_FIELDS``.
        pnl_quantile: ``p -> `` the ``p``-quantile of terminal PnL (linear interpolation between
            order statistics, as ``np.quantile``).
        pnl_tail_loss: ``level -> (CVaR, standard error)`` of terminal PnL.
        min_pnl, max_pnl, worst_drawdown: extremes. n_profitable: episodes with PnL > 0.
        n_steps: steps per episode (for the per-step hit rates).
    """
    pnl = moments["pnl"]
    n = pnl.n
    n_steps = max(n_steps, 1)
    out: dict[str, Any] = {"n_episodes": int(n)}

    def put(name: str, stat: tuple[float, float]) -> None:
        out[name], out[f"{name}_se"] = float(stat[0]), float(stat[1])

    def quantile_stat(p: float) -> tuple[float, float]:
        return pnl_quantile(p), hall_sheather_se(pnl_quantile, n, p)

    put("mean_pnl", pnl.mean_se())
    put("std_pnl", pnl.std_se())
    put("median_pnl", quantile_stat(0.5))
    out["min_pnl"], out["max_pnl"] = float(min_pnl), float(max_pnl)
    put("p05_pnl", quantile_stat(0.05))
    put("p95_pnl", quantile_stat(0.95))
    put("sharpe", pnl.sharpe())
    put("max_drawdown", moments["max_drawdown"].mean_se())
    out["max_drawdown_worst"] = float(worst_drawdown)
    put("mean_abs_q", moments["abs_inventory"].mean_se())
    put("std_q", moments["inventory"].std_se())
    share, share_se = _proportion(n_profitable, n)
    out["pct_profitable"], out["pct_profitable_se"] = 100 * share, 100 * share_se
    for level in (95, 99):
        value, se = quantile_stat(1.0 - level / 100)
        put(f"var_{level}", (-value, se))
        put(f"cvar_{level}", pnl_tail_loss(level / 100))
    for side in ("bid", "ask"):
        fills = moments[f"n_{side}_fills"]
        put(f"n_{side}_fills", fills.mean_se())
        mean, se = fills.mean_se()
        put(f"{side}_hit_rate", (mean / n_steps, se / n_steps))
    put("n_fills", moments["n_fills"].mean_se())
    put("mean_spread", moments["mean_spread"].mean_se())
    put("mean_spread_pnl", moments["spread_pnl"].mean_se())
    put("mean_inventory_pnl", moments["inventory_pnl"].mean_se())
    return _ordered(out)


_KEY_ORDER = (
    "n_episodes",
    "mean_pnl",
    "std_pnl",
    "median_pnl",
    "min_pnl",
    "max_pnl",
    "p05_pnl",
    "p95_pnl",
    "sharpe",
    "max_drawdown",
    "max_drawdown_worst",
    "mean_abs_q",
    "std_q",
    "pct_profitable",
    "var_95",
    "cvar_95",
    "var_99",
    "cvar_99",
    "n_bid_fills",
    "n_ask_fills",
    "n_fills",
    "bid_hit_rate",
    "ask_hit_rate",
    "mean_spread",
    "mean_spread_pnl",
    "mean_inventory_pnl",
)


def _ordered(out: dict[str, Any]) -> dict[str, Any]:
    keys = [k for name in _KEY_ORDER for k in (name, f"{name}_se") if k in out]
    return {key: out[key] for key in keys}


def summarize(rollout: Rollout) -> dict[str, Any]:
    """Cross-episode statistics of a rollout: a flat dict of floats, ``x`` and ``x_se``.

    Keys: ``n_episodes``; terminal PnL ``mean_pnl``, ``std_pnl``, ``median_pnl``, ``min_pnl``,
    ``max_pnl``, ``p05_pnl``, ``p95_pnl``; ``sharpe`` (per episode: mean / std of terminal PnL
    across episodes); ``max_drawdown`` (mean over episodes of each episode's maximum drawdown)
    and ``max_drawdown_worst`` (the worst episode); ``mean_abs_q`` and ``std_q`` (terminal
    inventory); ``pct_profitable`` (percent of episodes with PnL > 0); ``var_95``, ``cvar_95``,
    ``var_99``, ``cvar_99`` (as losses: negative when the tail is a gain); ``n_bid_fills``,
    ``n_ask_fills``, ``n_fills`` (mean per episode); ``bid_hit_rate``, ``ask_hit_rate`` (fills
    per step); ``mean_spread`` (quoted, price units); ``mean_spread_pnl`` and
    ``mean_inventory_pnl`` (PnL attribution).
    """
    pnl = np.asarray(rollout.pnl, np.float64)
    inventory = np.asarray(rollout.inventory, np.float64)
    drawdown = np.asarray(rollout.max_drawdown, np.float64)
    bid_fills = np.asarray(rollout.n_bid_fills, np.float64)
    ask_fills = np.asarray(rollout.n_ask_fills, np.float64)
    spread = np.asarray(rollout.mean_spread, np.float64)
    fields = {
        "pnl": pnl,
        "max_drawdown": drawdown,
        "abs_inventory": np.abs(inventory),
        "inventory": inventory,
        "n_bid_fills": bid_fills,
        "n_ask_fills": ask_fills,
        "n_fills": bid_fills + ask_fills,
        "mean_spread": spread[np.isfinite(spread)],
        "spread_pnl": np.asarray(rollout.spread_pnl, np.float64),
        "inventory_pnl": np.asarray(rollout.inventory_pnl, np.float64),
    }
    return summary_from_statistics(
        {name: Moments.of(values) for name, values in fields.items()},
        lambda p: float(np.quantile(pnl, p)),
        lambda level: conditional_value_at_risk(pnl, level),
        min_pnl=pnl.min(),
        max_pnl=pnl.max(),
        worst_drawdown=drawdown.max(),
        n_profitable=int(np.sum(pnl > 0)),
        n_steps=rollout.n_steps,
    )


TABLE_ROWS = (
    ("mean_pnl", "mean terminal PnL"),
    ("std_pnl", "std terminal PnL"),
    ("sharpe", "Sharpe (per episode: mean/std across episodes)"),
    ("median_pnl", "median PnL"),
    ("p05_pnl", "5th percentile PnL"),
    ("p95_pnl", "95th percentile PnL"),
    ("max_drawdown", "max drawdown (mean over episodes)"),
    ("max_drawdown_worst", "max drawdown (worst episode)"),
    ("mean_abs_q", "mean |q_T|"),
    ("std_q", "std q_T"),
    ("pct_profitable", "% profitable"),
    ("var_95", "VaR 95% (loss)"),
    ("cvar_95", "CVaR 95% (loss)"),
    ("var_99", "VaR 99% (loss)"),
    ("cvar_99", "CVaR 99% (loss)"),
    ("n_bid_fills", "bid fills per episode"),
    ("n_ask_fills", "ask fills per episode"),
    ("bid_hit_rate", "bid fills per step"),
    ("ask_hit_rate", "ask fills per step"),
    ("mean_spread", "mean quoted spread"),
    ("mean_spread_pnl", "PnL from spread capture"),
    ("mean_inventory_pnl", "PnL from inventory"),
)


def format_table(summaries: dict[str, dict[str, Any]]) -> str:
    """A plain-text table: one row per statistic, one column per named summary (``x ± se``)."""
    names = list(summaries)
    width = max(len(label) for _, label in TABLE_ROWS)
    header = f"{'statistic':<{width}}" + "".join(f"  {name:>22}" for name in names)
    lines = [header, "-" * len(header)]
    for key, label in TABLE_ROWS:
        cells = []
        for name in names:
            value = summaries[name].get(key, math.nan)
            se = summaries[name].get(f"{key}_se")
            cell = (
                f"{value:.4g}" if se is None or not math.isfinite(se) else f"{value:.4g} ± {se:.2g}"
            )
            cells.append(f"  {cell:>22}")
        lines.append(f"{label:<{width}}" + "".join(cells))
    return "\n".join(lines)
