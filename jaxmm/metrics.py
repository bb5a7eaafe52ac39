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

import math
from statistics import NormalDist
from typing import Any

import numpy as np

from jaxmm.simulate import Rollout

_NORMAL = NormalDist()


def _mean_se(x: np.ndarray) -> tuple[float, float]:
    n = x.size
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan


def _std_se(x: np.ndarray) -> tuple[float, float]:
    n = x.size
    s = x.std(ddof=1) if n > 1 else math.nan
    m4 = np.mean((x - x.mean()) ** 4)
    se = math.sqrt(max(m4 - s**4, 0.0) / n) / (2 * s) if n > 1 and s > 0 else math.nan
    return float(s), float(se)


def sharpe(x: np.ndarray) -> tuple[float, float]:
    """Per-episode Sharpe ratio ``mean / std`` across episodes and its standard error (Mertens)."""
    x = np.asarray(x, np.float64)
    n = x.size
    s = x.std(ddof=1) if n > 1 else math.nan
    if not n > 1 or s == 0:
        return math.nan, math.nan
    ratio = x.mean() / s
    z = (x - x.mean()) / x.std()
    skew, kurt = np.mean(z**3), np.mean(z**4)
    variance = (1.0 - skew * ratio + (kurt - 1.0) / 4.0 * ratio**2) / n
    return float(ratio), float(math.sqrt(max(variance, 0.0)))


def quantile(x: np.ndarray, p: float) -> tuple[float, float]:
    """Empirical ``p``-quantile and its asymptotic standard error (Hall-Sheather spacing)."""
    x = np.asarray(x, np.float64)
    n = x.size
    value = float(np.quantile(x, p))
    if n < 10:
        return value, math.nan
    z = _NORMAL.inv_cdf(p)
    z_half = _NORMAL.inv_cdf(0.975)
    h = n ** (-1 / 3) * z_half ** (2 / 3) * (1.5 * _NORMAL.pdf(z) ** 2 / (2 * z**2 + 1)) ** (1 / 3)
    lo, hi = max(p - h, 0.0), min(p + h, 1.0)
    spacing = np.quantile(x, hi) - np.quantile(x, lo)
    if spacing <= 0:
        return value, 0.0
    inverse_density = spacing / (hi - lo)
    return value, float(math.sqrt(p * (1 - p) / n) * inverse_density)


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


def proportion(flags: np.ndarray) -> tuple[float, float]:
    """Share of true values and its binomial standard error."""
    p = float(np.mean(flags))
    return p, math.sqrt(p * (1 - p) / flags.size)


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
    n_steps = max(rollout.n_steps, 1)
    out: dict[str, Any] = {"n_episodes": int(pnl.size)}

    def put(name: str, stat: tuple[float, float]) -> None:
        out[name], out[f"{name}_se"] = stat

    put("mean_pnl", _mean_se(pnl))
    put("std_pnl", _std_se(pnl))
    put("median_pnl", quantile(pnl, 0.5))
    out["min_pnl"], out["max_pnl"] = float(pnl.min()), float(pnl.max())
    put("p05_pnl", quantile(pnl, 0.05))
    put("p95_pnl", quantile(pnl, 0.95))
    put("sharpe", sharpe(pnl))
    put("max_drawdown", _mean_se(drawdown))
    out["max_drawdown_worst"] = float(drawdown.max())
    put("mean_abs_q", _mean_se(np.abs(inventory)))
    put("std_q", _std_se(inventory))
    share, share_se = proportion(pnl > 0)
    out["pct_profitable"], out["pct_profitable_se"] = 100 * share, 100 * share_se
    for level in (95, 99):
        put(f"var_{level}", value_at_risk(pnl, level / 100))
        put(f"cvar_{level}", conditional_value_at_risk(pnl, level / 100))
    put("n_bid_fills", _mean_se(bid_fills))
    put("n_ask_fills", _mean_se(ask_fills))
    put("n_fills", _mean_se(bid_fills + ask_fills))
    put("bid_hit_rate", _mean_se(bid_fills / n_steps))
    put("ask_hit_rate", _mean_se(ask_fills / n_steps))
    quoted = spread[np.isfinite(spread)]
    put("mean_spread", _mean_se(quoted) if quoted.size else (math.nan, math.nan))
    put("mean_spread_pnl", _mean_se(np.asarray(rollout.spread_pnl, np.float64)))
    put("mean_inventory_pnl", _mean_se(np.asarray(rollout.inventory_pnl, np.float64)))
    return out


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
