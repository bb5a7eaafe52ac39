"""Exact optima: GLFT and Cartea-Jaimungal by matrix exponential, the exact dynamic programme of
our own simulator (``bellman``), exact policy evaluation, and the explicit finite-difference
scheme of the course notes.

Units follow ``jaxmm.params``: time in session units (``T``), ``A`` arrivals per time unit at
depth 0, ``k`` per price unit, ``sigma`` price units per sqrt(time unit); depths in price units.

Every solver returns a ``QuoteTable`` on a (time, inventory) grid:

- ``times f64[n_t]``: the grid times (session units);
- ``inventories i64[n_q]``: ``-Q..Q``;
- ``bid_depth``, ``ask_depth`` ``f64[n_t, n_q]``: optimal depths, NaN where that side is not
  quoted (the bid at ``q = Q``, the ask at ``q = -Q``; every entry of the terminal row of a
  discrete-time solution, where no quote is posted);
- ``value f64[n_t, n_q]``: the value of each state, in price units (see each solver).

The continuous-time models (``glft``, ``cartea_jaimungal``) are solved exactly: their HJB
equations become linear ODEs after an exponential change of variable, integrated between grid
times by ``jaxmm.linalg.expm`` (scaling and squaring, free of LAPACK calls). ``bellman`` solves
the discrete-time MDP the simulator and the environment actually run (per-step fill
probabilities, both-filled outcomes, bounded actions) by backward induction with an exact
one-step maximisation. Solvers run in float64 (``jax.enable_x64``) and return NumPy arrays;
``mm.policies.table(solution)`` turns a table into a policy for ``simulate``.

The course notes' version of these formulas has errors that are corrected here (checked against
Cartea, Jaimungal & Penalva 2015, ch. 10, and Gueant, Lehalle & Fernandez-Tapia 2013): the
risk-neutral optimal depth is ``1/k - (h(q+1) - h(q))`` (not ``1/(2k) + ...``), the running
penalty ``phi q^2`` belongs in the HJB, the explicit scheme steps *backward* with a plus sign,
and the GLFT asymptotic quotes are the formula in ``glft_asymptotic`` (not the A-S expansion).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from statistics import NormalDist
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxmm import linalg, rewards, validation
from jaxmm import policies as policies_lib
from jaxmm.market import (
    fill_probability,
    intensity_shape,
    intensity_shape_slope,
    reset,
    sigma_at,
)
from jaxmm.params import MarketParams

__all__ = [
    "DEFAULT_DEPTH_BOUNDS",
    "REWARDS",
    "AlphaQuoteTable",
    "AlphaSkewTable",
    "QuoteTable",
    "alpha_grid",
    "bellman",
    "bellman_alpha",
    "bellman_cara",
    "cartea_jaimungal",
    "cartea_jaimungal_alpha",
    "cartea_jaimungal_fd",
    "evaluate",
    "evaluate_alpha",
    "evaluate_cara",
    "glft",
    "glft_asymptotic",
    "inventory_cvar",
    "inventory_var",
    "market_order_thresholds",
    "quote_gap",
    "table_policy",
    "tabulate",
    "tabulate_alpha",
]

REWARDS = rewards.REWARDS
DEFAULT_DEPTH_BOUNDS = (0.01, 5.0)  # the environment's action space


@struct.dataclass
class QuoteTable:
    """Optimal (or tabulated) quotes and values on a (time, inventory) grid; see module doc."""

    times: np.ndarray
    inventories: np.ndarray
    bid_depth: np.ndarray
    ask_depth: np.ndarray
    value: np.ndarray
    method: str = struct.field(pytree_node=False, default="")
    market_order: np.ndarray | None = None  # f[n_t, n_q] in {-1, 0, 1}: see bellman

    def q_index(self, q: int) -> int:
        """Column of inventory ``q``; ValueError if ``q`` is off the grid."""
        lo, hi = int(self.inventories[0]), int(self.inventories[-1])
        if not lo <= q <= hi:
            raise ValueError(f"q = {q} is off the grid; allowed: {lo} <= q <= {hi}")
        return int(q) - lo

    def value_at(self, t_index: int = 0, q: int = 0) -> float:
        """Value of the state (time index ``t_index``, inventory ``q``), price units."""
        return float(self.value[t_index, self.q_index(q)])


# --------------------------------------------------------------------------- validation


def _check_grid(q_max: Any, T: Any, n_steps: Any) -> tuple[int, float, int]:
    q_max = validation.number(
        "q_max", q_max, lambda v: 1 <= v < 10_000 and v == int(v), "integer 1..9999"
    )
    T = validation.number("T", T, lambda v: 0 < v < math.inf, "0 < T < inf")
    n_steps = validation.number(
        "n_steps", n_steps, lambda v: v >= 1 and v == int(v), "integer >= 1"
    )
    return int(q_max), T, int(n_steps)


# --------------------------------------------------------------- continuous-time models


def _log_propagate(generator: jax.Array, log_terminal: jax.Array, gaps: np.ndarray) -> jax.Array:
    """``log(expm(G (T - t_i)) exp(log_terminal))`` for each grid time, as ``f[n_t, n_q]``.

    ``gaps[i] = t_{i+1} - t_i`` (with ``t_{n_t} = T``). One ``expm`` per distinct gap (one on
    a uniform grid), then a backward scan of matrix-vector products, renormalised by the
    maximum at every step so the solution neither overflows nor underflows on long horizons.

    Rows with no time to go (``t_i = T``) are ``log_terminal`` itself, exactly: the scaled
    vector ``exp(log_terminal - max)`` underflows to 0 at the extreme inventories of a steep
    terminal penalty (below ``-745`` in log units), and taking its log again would give
    ``-inf`` there. Earlier rows are unaffected (the neighbours' terms dominate the lost ones).
    """
    distinct, which = np.unique(np.round(np.asarray(gaps, np.float64), 15), return_inverse=True)
    return _propagate(generator, log_terminal, jnp.asarray(distinct), jnp.asarray(which))


@jax.jit
def _propagate(generator, log_terminal, distinct_gaps, which):
    propagators = jax.vmap(lambda h: linalg.expm(generator * h))(distinct_gaps)
    top = jnp.max(log_terminal)

    def back(carry, index):
        vector, log_scale, at_terminal = carry
        vector = propagators[index] @ vector
        biggest = jnp.max(vector)
        vector = vector / biggest
        log_scale = log_scale + jnp.log(biggest)
        at_terminal = at_terminal & (distinct_gaps[index] == 0)  # no time to go yet
        log_vector = jnp.where(at_terminal, log_terminal, jnp.log(vector) + log_scale)
        return (vector, log_scale, at_terminal), log_vector

    start = (jnp.exp(log_terminal - top), top, jnp.asarray(True))
    _, log_values = jax.lax.scan(back, start, which, reverse=True)
    return log_values


def _tridiagonal(diagonal: jax.Array, off: float) -> jax.Array:
    n = diagonal.shape[0]
    return jnp.diag(diagonal) + off * (jnp.eye(n, k=1) + jnp.eye(n, k=-1))


def _quadratic_log_value(
    times: np.ndarray,
    T: float,
    inventories: np.ndarray,
    curvature: float,
    coupling: float,
    terminal_curvature: float,
) -> np.ndarray:
    """``log v(t)`` at each grid time, ``f64[n_t, n_q]``: ``v(t) = expm(M (T - t)) v(T)`` for
    the tridiagonal ``M`` with ``-curvature q^2`` on the diagonal and ``coupling`` beside it,
    ``v_q(T) = exp(-terminal_curvature q^2)`` (``_log_propagate``, in float64).
    The linear system behind the GLFT and Cartea-Jaimungal closed forms."""
    with jax.enable_x64(True):
        q = jnp.asarray(inventories, jnp.float64)
        generator = _tridiagonal(-curvature * q**2, coupling)
        gaps = np.diff(np.append(times, T))
        return np.asarray(_log_propagate(generator, -terminal_curvature * q**2, gaps))


def _time_grid(T: float, n_steps: int) -> np.ndarray:
    return np.arange(n_steps + 1) * (T / n_steps)


def _mask_bounds(bid: np.ndarray, ask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    bid, ask = bid.copy(), ask.copy()
    bid[:, -1] = np.nan  # at q = Q the bid is not quoted
    ask[:, 0] = np.nan  # at q = -Q the ask is not quoted
    return bid, ask


def glft(
    sigma: float,
    A: float,
    k: float,
    gamma: float,
    q_max: int,
    T: float = 1.0,
    *,
    n_steps: int = 200,
    terminal_penalty: float = 0.0,
) -> QuoteTable:
    """Exact GLFT quotes (Gueant, Lehalle & Fernandez-Tapia 2013, Theorem 1).

    CARA utility ``-exp(-gamma (X_T + q_T S_T - terminal_penalty q_T^2))``, arithmetic Brownian
    mid with volatility ``sigma``, fills at intensity ``A exp(-k delta)`` on each side,
    inventory in ``[-q_max, q_max]``. With ``v(t) = exp(-M (T - t)) v(T)``,
    ``M = alpha q^2`` on the diagonal (``alpha = k gamma sigma^2 / 2``) and ``-eta`` off it
    (``eta = A (1 + gamma/k)^(-(1 + k/gamma))``), ``v_q(T) = exp(-k terminal_penalty q^2)``:

        bid_depth(t, q) = (1/k) ln(v_q / v_{q+1}) + (1/gamma) ln(1 + gamma/k)   (q < q_max)
        ask_depth(t, q) = (1/k) ln(v_q / v_{q-1}) + (1/gamma) ln(1 + gamma/k)   (q > -q_max)

    ``value = (1/k) ln v_q(t)``: the certainty equivalent in excess of the marked wealth
    ``x + q S`` (price units). Times: ``n_steps + 1`` points from 0 to ``T``.
    """
    sigma, A, k, gamma = validation.positives(sigma=sigma, A=A, k=k, gamma=gamma)
    q_max, T, n_steps = _check_grid(q_max, T, n_steps)
    terminal_penalty = validation.nonnegative("terminal_penalty", terminal_penalty)
    times = _time_grid(T, n_steps)
    inventories = np.arange(-q_max, q_max + 1)
    alpha = k * gamma * sigma**2 / 2.0
    eta = A * (1.0 + gamma / k) ** (-(1.0 + k / gamma))
    log_v = _quadratic_log_value(times, T, inventories, alpha, eta, k * terminal_penalty)
    base = math.log1p(gamma / k) / gamma
    bid = (log_v - np.roll(log_v, -1, axis=1)) / k + base
    ask = (log_v - np.roll(log_v, 1, axis=1)) / k + base
    bid, ask = _mask_bounds(bid, ask)
    return QuoteTable(times, inventories, bid, ask, log_v / k, method="glft")


def glft_asymptotic(
    sigma: float, A: float, k: float, gamma: float, q_max: int, T: float = 1.0, *, n_steps=200
) -> QuoteTable:
    """The GLFT closed form for a long horizon (GLFT 2013, eq. 5-6), constant in time.

        bid_depth = c + (2q + 1)/2 * w,  ask_depth = c - (2q - 1)/2 * w,
        c = (1/gamma) ln(1 + gamma/k),
        w = sqrt(sigma^2 gamma / (2 k A) * (1 + gamma/k)^(1 + k/gamma)).

    ``gamma`` is a risk aversion per price unit, ``0 <= gamma < inf``. At ``gamma = 0`` the
    formula takes its risk-neutral limit, as ``policies.glft`` does: with ``x = gamma/k``,
    ``c = ln(1 + x) / (k x) -> 1/k`` and ``(1 + x)^(1 + 1/x) -> e``, so ``w ~ sqrt(sigma^2 e
    gamma / (2 k A)) -> 0`` and both depths are ``1/k`` at every inventory.

    ``value`` is NaN (the approximation carries no value function).
    """
    sigma, A, k = validation.positives(sigma=sigma, A=A, k=k)
    gamma = validation.nonnegative("gamma", gamma)
    q_max, T, n_steps = _check_grid(q_max, T, n_steps)
    times = _time_grid(T, n_steps)
    inventories = np.arange(-q_max, q_max + 1)
    x = gamma / k
    ratio = math.log1p(x) / x if x > 0 else 1.0  # ln(1 + x) / x, -> 1 as gamma -> 0
    base = ratio / k  # (1/gamma) ln(1 + gamma/k)
    growth = math.exp(math.log1p(x) + ratio)  # (1 + x)^(1 + 1/x), -> e as gamma -> 0
    width = math.sqrt(sigma**2 * gamma / (2 * k * A) * growth)
    ones = np.ones((times.size, 1))
    bid = ones * (base + (2 * inventories + 1) / 2 * width)
    ask = ones * (base - (2 * inventories - 1) / 2 * width)
    bid, ask = _mask_bounds(bid, ask)
    value = np.full(bid.shape, np.nan)
    return QuoteTable(times, inventories, bid, ask, value, method="glft_asymptotic")


def quote_gap(table: QuoteTable, reference: QuoteTable) -> dict[str, np.ndarray]:
    """Largest absolute depth difference per grid time between two tables on the same grid.

    Returns ``{"bid": f[n_t], "ask": f[n_t], "max": float}`` over the inventories where both
    tables quote; e.g. ``quote_gap(glft_asymptotic(...), glft(...))`` shows where the
    long-horizon formula is accurate (far from ``T``) and where it is not.
    """
    if table.bid_depth.shape != reference.bid_depth.shape:
        raise ValueError(
            f"tables differ in shape: {table.bid_depth.shape} vs {reference.bid_depth.shape}"
        )
    bid = np.nanmax(np.abs(table.bid_depth - reference.bid_depth), axis=1)
    ask = np.nanmax(np.abs(table.ask_depth - reference.ask_depth), axis=1)
    return {"bid": bid, "ask": ask, "max": float(max(bid.max(), ask.max()))}


def cartea_jaimungal(
    A: float,
    k: float,
    phi: float,
    q_max: int,
    T: float = 1.0,
    *,
    alpha: float = 0.0,
    n_steps: int = 200,
) -> QuoteTable:
    """Exact Cartea-Jaimungal quotes (Cartea, Jaimungal & Penalva 2015, section 10.2).

    Risk-neutral market maker with running inventory penalty ``phi q^2`` per time unit and
    terminal liquidation penalty ``alpha q^2``; inventory in ``[-q_max, q_max]``. The value is
    ``x + q S + h(t, q)`` with ``h = (1/k) ln omega``, ``omega(t) = exp(M (T - t)) z``,
    ``M = -phi k q^2`` on the diagonal and ``A e^{-1}`` off it, ``z_q = exp(-alpha k q^2)``:

        bid_depth = 1/k - (h(t, q+1) - h(t, q)),  ask_depth = 1/k - (h(t, q-1) - h(t, q)).

    ``value = h`` (price units). The discrete environment's per-step penalty ``phi_env q^2``
    corresponds to ``phi = phi_env / dt`` here. Times: ``n_steps + 1`` points from 0 to ``T``.
    """
    A, k = validation.positive("A", A), validation.positive("k", k)
    phi, alpha = validation.nonnegative("phi", phi), validation.nonnegative("alpha", alpha)
    q_max, T, n_steps = _check_grid(q_max, T, n_steps)
    times = _time_grid(T, n_steps)
    inventories = np.arange(-q_max, q_max + 1)
    h = _quadratic_log_value(times, T, inventories, phi * k, A / math.e, alpha * k) / k
    bid = 1.0 / k - (np.roll(h, -1, axis=1) - h)
    ask = 1.0 / k - (np.roll(h, 1, axis=1) - h)
    bid, ask = _mask_bounds(bid, ask)
    return QuoteTable(times, inventories, bid, ask, h, method="cartea_jaimungal")


def cartea_jaimungal_fd(
    A: float, k: float, phi: float, q_max: int, T: float = 1.0, *, alpha=0.0, n_steps=200
) -> QuoteTable:
    """The Cartea-Jaimungal HJB by the explicit finite-difference scheme (a teaching method).

    Backward in time from ``h(T, q) = -alpha q^2``, with the optimal depths of the later time
    (explicit Euler, first order in ``dt``)::

        h_n(q) = h_{n+1}(q) + dt * [ -phi q^2
                  + (A / (k e)) exp(k (h_{n+1}(q+1) - h_{n+1}(q)))   (q < q_max)
                  + (A / (k e)) exp(k (h_{n+1}(q-1) - h_{n+1}(q))) ] (q > -q_max)

    where ``A/(k e) exp(k Delta) = sup_delta A exp(-k delta) (delta + Delta)`` is attained at
    ``delta = 1/k - Delta``. Stable when ``dt`` is small against ``1/(phi k q_max^2)`` and
    ``e / (2 A)``; converges to ``cartea_jaimungal`` as ``dt -> 0``.
    """
    A, k = validation.positive("A", A), validation.positive("k", k)
    phi, alpha = validation.nonnegative("phi", phi), validation.nonnegative("alpha", alpha)
    q_max, T, n_steps = _check_grid(q_max, T, n_steps)
    dt = T / n_steps
    inventories = np.arange(-q_max, q_max + 1)
    q = inventories.astype(np.float64)
    h = np.empty((n_steps + 1, q.size))
    h[-1] = -alpha * q**2
    scale = A / (k * math.e)
    can_buy, can_sell = q < q_max, q > -q_max
    with np.errstate(over="ignore", invalid="ignore"):
        for n in range(n_steps - 1, -1, -1):
            later = h[n + 1]
            up = np.where(can_buy, np.roll(later, -1) - later, 0.0)
            down = np.where(can_sell, np.roll(later, 1) - later, 0.0)
            gain = scale * (
                np.where(can_buy, np.exp(k * up), 0.0) + np.where(can_sell, np.exp(k * down), 0.0)
            )
            h[n] = later + dt * (-phi * q**2 + gain)
    if not np.all(np.isfinite(h)):
        raise ValueError(
            f"n_steps = {n_steps}: the explicit scheme is unstable at dt = {dt:g} for these "
            "parameters; allowed: more steps (smaller dt)"
        )
    bid = 1.0 / k - (np.roll(h, -1, axis=1) - h)
    ask = 1.0 / k - (np.roll(h, 1, axis=1) - h)
    bid, ask = _mask_bounds(bid, ask)
    return QuoteTable(
        _time_grid(T, n_steps), inventories, bid, ask, h, method="cartea_jaimungal_fd"
    )


# ---------------------------------------------------------- the simulator's exact MDP


def _fill_and_slope(arrivals_dt: float, depth: jax.Array, consts: dict):
    """``(p(d), p'(d))``: the per-step fill probability of a quote at ``depth`` under the
    market's fill shape and fill model, and its derivative in depth."""
    k, shape, alpha = consts["k"], consts["fill_shape"], consts["alpha"]
    y = arrivals_dt * intensity_shape(depth, k, shape, alpha)
    dy = arrivals_dt * intensity_shape_slope(depth, k, shape, alpha)
    if consts["fill_model"] == "linear":
        return jnp.minimum(1.0, y), jnp.where(y < 1.0, dy, 0.0)
    return -jnp.expm1(-y), dy * jnp.exp(-y)


def _argmax_single_crossing(
    slope: Callable, like: jax.Array, bounds: tuple[float, float]
) -> jax.Array:
    """The maximiser on ``[lo, hi]`` of an objective whose derivative ``slope`` is positive
    and then negative (one sign change): 64 bisection steps on its sign, elementwise on
    ``like``'s shape; the bounds when the derivative keeps one sign."""
    lo, hi = bounds

    def halve(_, interval):
        left, right = interval
        middle = 0.5 * (left + right)
        rising = slope(middle) > 0
        return jnp.where(rising, middle, left), jnp.where(rising, right, middle)

    left = jnp.full_like(like, lo)
    right = jnp.full_like(like, hi)
    left, right = jax.lax.fori_loop(0, 64, halve, (left, right))
    depth = 0.5 * (left + right)
    depth = jnp.where(slope(jnp.full_like(like, hi)) > 0, hi, depth)
    return jnp.where(slope(jnp.full_like(like, lo)) <= 0, lo, depth)


def _best_depth(
    arrivals_dt: float, offset: jax.Array, bounds: tuple[float, float], consts: dict
) -> jax.Array:
    """``argmax_{lo <= d <= hi} p(d) (d + offset)`` with ``p(d) = fill_probability(a s(d))``
    and ``s`` the fill shape (``market.intensity_shape``).

    The objective increases while ``d + offset <= 0``; beyond, its derivative changes sign
    once: for the exponential and linear shapes ``p`` is log-concave under both fill models,
    and for the power shape ``(d + offset) s(d)`` has a derivative of the sign of
    ``alpha/k + d - alpha (d + offset)``, decreasing in ``d`` for ``alpha > 1`` (the tests
    check every shape and fill model against a brute-force search). Bisection on the sign of
    ``p(d) + p'(d) (d + offset)`` finds the maximiser to machine precision. Works elementwise
    on ``offset``.
    """

    def slope(depth):
        prob, dprob = _fill_and_slope(arrivals_dt, depth, consts)
        return prob + dprob * (depth + offset)

    return _argmax_single_crossing(slope, offset, bounds)


def _check_mdp(params: MarketParams, phi: Any, reward: str, terminal_penalty: Any, bounds):
    params.validate()
    # extension options the (t, q) MDP does not model (market orders it does: bellman)
    unmodelled = tuple(n for n in params.extensions_in_use() if n not in _MARKET_ORDER_FIELDS)
    if unmodelled:
        name = unmodelled[0]
        raise ValueError(
            f"params.{name} = {getattr(params, name)!r} is not modelled by the exact solvers; "
            "allowed: its default (see MarketParams.extensions_in_use)"
        )
    for name in ("S0", "sigma", "T", "A", "k", "mu", "adverse_selection", "q_max",
                 *_MARKET_ORDER_FIELDS):  # fmt: skip
        if np.ndim(getattr(params, name)) != 0:
            raise ValueError(f"params.{name} must be a scalar for the exact solvers (no sweeps)")
    if params.price_model in ("geometric", "ou"):
        raise ValueError(
            f"params.price_model = {params.price_model!r} is not supported by the exact "
            "solvers; allowed: 'arithmetic' or 'binary' (additive increments independent of "
            "the mid keep the value a function of (t, q))"
        )
    rewards.check(reward)
    if reward == "cara":
        raise ValueError(
            "reward = 'cara' is not additive in (t, q): use optimal.bellman_cara / "
            "optimal.evaluate_cara (certainty equivalents; rewards.value_to_reward converts)"
        )
    phi = validation.nonnegative("phi", phi)
    terminal_penalty = validation.nonnegative("terminal_penalty", terminal_penalty)
    lo, hi = (float(b) for b in bounds)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"depth_bounds = {bounds!r}; allowed: finite lo < hi")
    return phi, terminal_penalty, (lo, hi)


def _inventory_grid(params: MarketParams, q_grid: int | None) -> np.ndarray:
    """Inventories ``-Q..Q`` for the exact solvers.

    By default ``Q = min(q_max, n_steps)``: inventory moves by at most one per step, so from
    ``q = 0`` no state beyond ``n_steps`` is reachable and the truncation is exact there.
    """
    q_max = float(params.q_max)
    reachable = params.n_steps
    if q_grid is None:
        q_grid = int(min(q_max, reachable))
    q_grid = int(
        validation.number(
            "q_grid", q_grid, lambda v: 1 <= v <= 100_000 and v == int(v), "integer >= 1"
        )
    )
    q_grid = int(min(q_grid, q_max))
    return np.arange(-q_grid, q_grid + 1)


def _one_step_value(
    later: jax.Array,
    q: jax.Array,
    penalty: jax.Array,
    bid_depth: jax.Array,
    ask_depth: jax.Array,
    consts: dict,
) -> jax.Array:
    """Expected reward-to-go of quoting ``(bid_depth, ask_depth)`` at inventory ``q``."""
    offset_bid, offset_ask, cross = _offsets(later, q, penalty, consts)
    prob_bid, prob_ask = _probabilities(bid_depth, ask_depth, consts)
    base = _continuation(later, q, penalty, consts)
    gain_bid = jnp.where(prob_bid > 0, prob_bid * (bid_depth + offset_bid), 0.0)
    gain_ask = jnp.where(prob_ask > 0, prob_ask * (ask_depth + offset_ask), 0.0)
    return base + gain_bid + gain_ask + prob_bid * prob_ask * cross


def _continuation(later: jax.Array, q: jax.Array, penalty: jax.Array, consts: dict) -> jax.Array:
    """``G(q') = E[q' dS] - c q'^2 + V_{t+1}(q')`` without the fill-dependent jump."""
    return q * consts["drift_dt"] - penalty * q**2 + later


def _offsets(later, q, penalty, consts):
    """``G(q+1) - a (q+1) - G(q)``, ``G(q-1) + a (q-1) - G(q)`` and the both-filled term.

    Outcomes of a step at inventory ``q`` (``a`` = adverse-selection jump per fill):
    none ``G(q)``; bid only ``d_b + G(q+1) - a (q+1)``; ask only ``d_a + G(q-1) + a (q-1)``;
    both ``d_b + d_a + G(q)``. With independent fills the expectation is
    ``G(q) + p_b (d_b + O_b) + p_a (d_a + O_a) + p_b p_a C`` where ``C = -(O_b + O_a)``.
    """
    G = _continuation(later, q, penalty, consts)
    jump = consts["adverse_selection"]
    up = jnp.concatenate([G[1:], G[-1:]]) - jump * (q + 1) - G
    down = jnp.concatenate([G[:1], G[:-1]]) + jump * (q - 1) - G
    up = jnp.where(consts["can_bid"], up, 0.0)
    down = jnp.where(consts["can_ask"], down, 0.0)
    return up, down, -(up + down)


def _probability(arrivals_dt, depth, consts):
    """Per-step fill probability of a quote at ``depth`` (the market's shape and fill model)."""
    shape = intensity_shape(depth, consts["k"], consts["fill_shape"], consts["alpha"])
    return fill_probability(arrivals_dt * shape, consts["fill_model"])


def _probabilities(bid_depth, ask_depth, consts):
    finite_bid = jnp.where(jnp.isfinite(bid_depth), bid_depth, 0.0)
    finite_ask = jnp.where(jnp.isfinite(ask_depth), ask_depth, 0.0)
    prob_bid = _probability(consts["bid_arrivals_dt"], finite_bid, consts)
    prob_ask = _probability(consts["ask_arrivals_dt"], finite_ask, consts)
    prob_bid = jnp.where(consts["can_bid"] & jnp.isfinite(bid_depth), prob_bid, 0.0)
    prob_ask = jnp.where(consts["can_ask"] & jnp.isfinite(ask_depth), prob_ask, 0.0)
    return prob_bid, prob_ask


def _constants(params: MarketParams, inventories: np.ndarray) -> dict:
    """The MDP's numbers as float64 arrays (jit arguments: no recompilation per market)."""
    q_top = inventories[-1]
    dt = float(params.dt)
    numbers = {
        "k": params.k,
        "bid_arrivals_dt": params.A * params.bid_intensity_mult * dt,
        "ask_arrivals_dt": params.A * params.ask_intensity_mult * dt,
        "drift_dt": params.mu * dt,
        "adverse_selection": params.adverse_selection,
        "alpha": 1.0 if params.fill_shape_alpha is None else params.fill_shape_alpha,
    }
    consts = {name: jnp.asarray(float(value), jnp.float64) for name, value in numbers.items()}
    consts["can_bid"] = jnp.asarray(inventories < q_top)
    consts["can_ask"] = jnp.asarray(inventories > -q_top)
    return consts


def _solve_mdp(consts, q, penalties, terminal, bounds, tol):
    can_bid, can_ask = consts["can_bid"], consts["can_ask"]

    def best_pair(offset_bid, offset_ask, cross):
        """Joint argmax over (bid, ask) by exact alternating best responses.

        Each best response solves its one-dimensional problem exactly; the joint objective
        never decreases, and the iteration stops when no depth moves by more than ``tol``.
        """

        def respond(prob_ask):
            depth = _best_depth(
                consts["bid_arrivals_dt"], offset_bid + prob_ask * cross, bounds, consts
            )
            prob_bid = jnp.where(
                can_bid, _probability(consts["bid_arrivals_dt"], depth, consts), 0.0
            )
            other = _best_depth(
                consts["ask_arrivals_dt"], offset_ask + prob_bid * cross, bounds, consts
            )
            prob = jnp.where(can_ask, _probability(consts["ask_arrivals_dt"], other, consts), 0.0)
            return depth, other, prob

        def not_done(carry):
            _, _, _, change, count = carry
            return (change > tol) & (count < 200)

        def iterate(carry):
            bid, ask, prob_ask, _, count = carry
            new_bid, new_ask, new_prob_ask = respond(prob_ask)
            change = jnp.maximum(jnp.max(jnp.abs(new_bid - bid)), jnp.max(jnp.abs(new_ask - ask)))
            return new_bid, new_ask, new_prob_ask, change, count + 1

        start = jnp.zeros_like(offset_bid)
        bid, ask, prob_ask = respond(start)
        carry = (bid, ask, prob_ask, jnp.asarray(jnp.inf), jnp.asarray(1))
        bid, ask, _, _, _ = jax.lax.while_loop(not_done, iterate, carry)
        return bid, ask

    def back(later, penalty):
        offset_bid, offset_ask, cross = _offsets(later, q, penalty, consts)
        bid, ask = best_pair(offset_bid, offset_ask, cross)
        value = _one_step_value(later, q, penalty, bid, ask, consts)
        bid = jnp.where(can_bid, bid, jnp.nan)
        ask = jnp.where(can_ask, ask, jnp.nan)
        return value, (value, bid, ask)

    _, (values, bids, asks) = jax.lax.scan(back, terminal, penalties, reverse=True)
    return values, bids, asks


def _models(params: MarketParams) -> tuple[str, str]:
    """The MDP's static choices: ``(fill_model, fill_shape)``."""
    return params.fill_model, params.fill_shape


@functools.partial(jax.jit, static_argnames=("models", "bounds", "tol"))
def _solve_mdp_jit(numbers, q, penalties, terminal, models, bounds, tol):
    consts = {**numbers, "fill_model": models[0], "fill_shape": models[1]}
    return _solve_mdp(consts, q, penalties, terminal, bounds, tol)


@functools.partial(jax.jit, static_argnames=("models",))
def _evaluate_mdp(numbers, q, penalties, terminal, bids, asks, models):
    consts = {**numbers, "fill_model": models[0], "fill_shape": models[1]}

    def back(later, inputs):
        penalty, bid, ask = inputs
        value = _one_step_value(later, q, penalty, bid, ask, consts)
        return value, value

    _, values = jax.lax.scan(back, terminal, (penalties, bids, asks), reverse=True)
    return values


def bellman(
    params: MarketParams,
    phi: float,
    *,
    reward: str = "inventory_penalty",
    terminal_penalty: float = 0.0,
    depth_bounds: tuple[float, float] = DEFAULT_DEPTH_BOUNDS,
    q_grid: int | None = None,
    tol: float = 1e-12,
) -> QuoteTable:
    """The exact optimum of the simulator's (and the environment's) MDP, by backward induction.

    Per step ``t``, at inventory ``q``, the agent posts depths ``(d_b, d_a)`` in
    ``depth_bounds`` (the environment's action space); the bid fills with probability
    ``p_b = fill_probability(A * bid_intensity_mult * exp(-k d_b) * dt)`` unless
    ``q >= q_max``, the ask independently with ``p_a``; then the mid moves by
    ``adverse_selection * (fills_ask - fills_bid) + mu dt + noise``. The reward is
    ``dPnL - c_t q_{t+1}^2`` with ``c_t = phi`` (``reward="inventory_penalty"``), ``0``
    (``"pnl"``) or ``phi * sigma_t^2 * dt`` (``"variance"``), plus ``-terminal_penalty q_N^2``
    at the end. The noise has mean zero, so the value depends on ``(t, q)`` only, and

        V_t(q) = max_{d_b, d_a} E[ fills . depths + q_{t+1} E[dS | fills] - c_t q_{t+1}^2
                                   + V_{t+1}(q_{t+1}) ].

    The maximisation is joint (the both-filled outcome couples the sides) and exact: alternating
    one-dimensional maximisations, each solved by bisection to machine precision, iterated
    until no depth moves by more than ``tol``; run in float64.

    Returns a ``QuoteTable`` with ``n_steps + 1`` times (the last row has no quotes) and
    ``value[t, q] = V_t(q)``: ``value_at(0, 0)`` is the expected episode reward of the optimal
    policy from a flat start. Inventories: ``-Q..Q`` with ``Q = min(q_max, n_steps)`` by
    default. When ``Q < q_max`` (e.g. unbounded inventory) the grid edge blocks fills like a
    limit would; that changes no value reachable from ``q = 0`` while ``Q >= n_steps``.

    Market orders (``params.mo_cost`` set, see ``jaxmm.market``): the action is joint, the
    quotes and a market order ``m`` in ``{-1, 0, +1}`` sent first at ``S_t`` for ``|m|
    mo_cost``, after which the fills start from ``x = q + m`` (``|x| <= Q``), and the
    permanent impact ``I = mo_permanent_impact`` moves the mid by ``I m``:

        V_t(q) = max_{m: |q + m| <= Q} [ -|m| mo_cost + U_t^m(q + m) ],
        U_t^m(x) = max_{d_b, d_a} E[ fills . depths + q_{t+1} (E[dS | fills] + I m)
                                     - c_t q_{t+1}^2 + V_{t+1}(q_{t+1}) ],

    with ``q_{t+1} = x + bid_fill - ask_fill``: the reward of ``jaxmm.rewards`` (the step's
    PnL includes ``-|m| mo_cost``, the penalty is on the inventory after the market order and
    the fills). ``U^m`` is the quotes-only problem above with the continuation shifted by
    ``I m q'`` (one problem when ``I`` is 0 or None), solved by the same exact maximisation; the
    maximum over ``m`` is by enumeration, ties to ``m = 0`` (a market order must gain strictly).
    The table's ``market_order f[n_t, n_q]`` holds ``m*`` (0 in the terminal row) and its
    depths are the quotes posted at ``(t, q)``, optimal at ``x = q + m*``; run it with
    ``table_policy`` and evaluate it with ``evaluate``. The default grid is then
    ``Q = min(q_max, 2 n_steps)`` (inventory moves by up to two per step).
    """
    phi, terminal_penalty, bounds = _check_mdp(params, phi, reward, terminal_penalty, depth_bounds)
    if params.has_market_orders:
        return _bellman_market_orders(
            params, phi, reward, terminal_penalty, bounds, q_grid, float(tol)
        )
    inventories = _inventory_grid(params, q_grid)
    penalties = rewards.penalty_schedule(params, phi, reward)
    with jax.enable_x64(True):
        consts = _constants(params, inventories)
        q = jnp.asarray(inventories, jnp.float64)
        terminal = -terminal_penalty * q**2
        values, bids, asks = _solve_mdp_jit(
            consts, q, jnp.asarray(penalties), terminal, _models(params), bounds, float(tol)
        )
    return _mdp_table(params, inventories, values, bids, asks, terminal, "bellman")


def _mdp_table(params, inventories, values, bids, asks, terminal, method: str) -> QuoteTable:
    """A solver's ``QuoteTable``: ``n_steps + 1`` times, the terminal values as the last row
    (where nothing is quoted)."""
    values = np.vstack([np.asarray(values), np.asarray(terminal)[None]])
    nan_row = np.full((1, inventories.size), np.nan)
    bids = np.vstack([np.asarray(bids), nan_row])
    asks = np.vstack([np.asarray(asks), nan_row])
    times = np.arange(params.n_steps + 1) * float(params.dt)
    return QuoteTable(times, inventories, bids, asks, values, method=method)


def _cara_best_depth(
    arrivals_dt: float, gain: jax.Array, loss: jax.Array, gamma: float, bounds, consts: dict
) -> jax.Array:
    """``argmax_{lo <= d <= hi} p(d) (gain - loss e^{-gamma d})`` (``gain, loss > 0``).

    The objective is negative below ``d0 = ln(loss / gain) / gamma`` and log-concave beyond
    (``p`` log-concave times the concave ``log(gain - loss e^{-gamma d})``), so its derivative
    ``p' (gain - loss e^{-gamma d}) + p gamma loss e^{-gamma d}`` changes sign once: bisection.
    """

    def slope(depth):
        prob, dprob = _fill_and_slope(arrivals_dt, depth, consts)
        discount = loss * jnp.exp(-gamma * depth)
        return dprob * (gain - discount) + prob * gamma * discount

    return _argmax_single_crossing(slope, gain, bounds)


def _check_cara(params, gamma, terminal_penalty, bounds, solver: str):
    """``_check_mdp`` for the CARA solvers, which also need ``gamma > 0`` and no adverse
    selection; returns ``(gamma, terminal_penalty, bounds)``."""
    gamma = validation.positive("gamma", gamma)
    _, terminal_penalty, bounds = _check_mdp(params, 0.0, "pnl", terminal_penalty, bounds)
    if params.has_market_orders:
        raise ValueError(
            f"params.mo_cost = {params.mo_cost!r} is not modelled by {solver}; allowed: "
            "None (market orders are solved by bellman)"
        )
    if float(params.adverse_selection) != 0.0:
        raise ValueError(
            f"params.adverse_selection = {params.adverse_selection}; allowed: 0 for "
            f"{solver} (the jump would couple the fills with the mid move)"
        )
    return gamma, terminal_penalty, bounds


def _step_variances(params) -> np.ndarray:
    """``Var(dS_t) = sigma_t^2 dt`` of every step, ``f64[n_steps]`` (call under x64)."""
    steps = np.arange(params.n_steps)
    return np.asarray(sigma_at(steps, params), np.float64) ** 2 * float(params.dt)


def _cara_continuation(later, q, risk_t, gamma, consts):
    """``C(q') = theta_{t+1}(q') + q' mu dt - gamma/2 Var(dS) q'^2`` (after the step's mid
    move) and the exponentiated certainty-equivalent changes of a bid and an ask fill."""
    C = later + q * consts["drift_dt"] - 0.5 * gamma * risk_t * q**2
    up = jnp.where(consts["can_bid"], jnp.concatenate([C[1:], C[-1:]]) - C, 0.0)
    down = jnp.where(consts["can_ask"], jnp.concatenate([C[:1], C[:-1]]) - C, 0.0)
    return C, jnp.exp(-gamma * up), jnp.exp(-gamma * down)


def _cara_probabilities(bid, ask, consts):
    """Fill probabilities of the two sides (0 where the inventory limit closes a side)."""
    p_b = jnp.where(consts["can_bid"], _probability(consts["bid_arrivals_dt"], bid, consts), 0.0)
    p_a = jnp.where(consts["can_ask"], _probability(consts["ask_arrivals_dt"], ask, consts), 0.0)
    return p_b, p_a


def _cara_value(C, r_up, r_down, bid, ask, gamma, consts):
    """``theta_t(q)`` of quoting ``(bid, ask)``: ``C - (1/gamma) log E[exp(-gamma (fills .
    depths + C(q') - C(q)))]`` over the four fill outcomes (an unquoted side never fills)."""
    p_b, p_a = _cara_probabilities(bid, ask, consts)
    e_b = jnp.where(jnp.isfinite(bid), jnp.exp(-gamma * bid), 0.0)
    e_a = jnp.where(jnp.isfinite(ask), jnp.exp(-gamma * ask), 0.0)
    ratio = (
        (1 - p_b) * (1 - p_a)
        + p_b * (1 - p_a) * e_b * r_up
        + (1 - p_b) * p_a * e_a * r_down
        + p_b * p_a * e_b * e_a
    )
    return C - jnp.log(ratio) / gamma


@functools.partial(jax.jit, static_argnames=("models", "bounds", "tol"))
def _solve_cara(numbers, q, risk, terminal, gamma, models, bounds, tol):
    """Backward induction of the certainty equivalent ``theta_t(q)`` (see ``bellman_cara``)."""
    consts = {**numbers, "fill_model": models[0], "fill_shape": models[1]}
    can_bid, can_ask = consts["can_bid"], consts["can_ask"]

    def back(later, risk_t):
        C, r_up, r_down = _cara_continuation(later, q, risk_t, gamma, consts)

        def probabilities(bid, ask):
            return _cara_probabilities(bid, ask, consts)

        def respond(carry):
            bid, ask, _, count = carry
            _, p_a = probabilities(bid, ask)
            e_a = jnp.exp(-gamma * ask)
            new_bid = _cara_best_depth(
                consts["bid_arrivals_dt"],
                (1 - p_a) + p_a * e_a * r_down,
                (1 - p_a) * r_up + p_a * e_a,
                gamma,
                bounds,
                consts,
            )
            p_b, _ = probabilities(new_bid, ask)
            e_b = jnp.exp(-gamma * new_bid)
            new_ask = _cara_best_depth(
                consts["ask_arrivals_dt"],
                (1 - p_b) + p_b * e_b * r_up,
                (1 - p_b) * r_down + p_b * e_b,
                gamma,
                bounds,
                consts,
            )
            change = jnp.maximum(jnp.max(jnp.abs(new_bid - bid)), jnp.max(jnp.abs(new_ask - ask)))
            return new_bid, new_ask, change, count + 1

        def not_done(carry):
            return (carry[2] > tol) & (carry[3] < 200)

        start = jnp.zeros_like(q)
        bid, ask, _, _ = jax.lax.while_loop(
            not_done, respond, respond((start, start, jnp.asarray(jnp.inf), jnp.asarray(0)))
        )
        value = _cara_value(C, r_up, r_down, bid, ask, gamma, consts)
        return value, (value, jnp.where(can_bid, bid, jnp.nan), jnp.where(can_ask, ask, jnp.nan))

    _, (values, bids, asks) = jax.lax.scan(back, terminal, risk, reverse=True)
    return values, bids, asks


def bellman_cara(
    params: MarketParams,
    gamma: float,
    *,
    terminal_penalty: float = 0.0,
    depth_bounds: tuple[float, float] = DEFAULT_DEPTH_BOUNDS,
    q_grid: int | None = None,
    tol: float = 1e-12,
) -> QuoteTable:
    """The exact optimum of the simulator's MDP under CARA utility of terminal wealth,
    ``E[-exp(-gamma (X_N + q_N S_N - terminal_penalty q_N^2))]``, by backward induction.

    With an arithmetic mid (Gaussian or binary increments independent of the fills), the value
    is ``-exp(-gamma (x + q S + theta_t(q)))`` and the certainty equivalent ``theta`` solves

        theta_t(q) = max_{d_b, d_a} -(1/gamma) log E[exp(-gamma (fills . depths
                                       + C_t(q_{t+1})))],
        C_t(q') = theta_{t+1}(q') + q' mu dt - (gamma/2) Var(dS_t) q'^2

    (``Var(dS_t) = sigma_t^2 dt``; the binary mid's ``log cosh`` is approximated by the same
    quadratic), with the fills and their probabilities of ``bellman`` (any ``fill_shape`` and
    fill model). The joint maximisation is exact: alternating one-dimensional problems, each
    ``max p(d) (a - b e^{-gamma d})``, solved by bisection. As ``dt -> 0`` with the
    exponential fill model this is the Gueant-Lehalle-Fernandez-Tapia problem, and its quotes
    tend to ``glft``'s (tested).

    Returns a ``QuoteTable`` (``method="bellman_cara"``) with ``value[t, q] = theta_t(q)``,
    the certainty equivalent in price units.
    """
    gamma, terminal_penalty, bounds = _check_cara(
        params, gamma, terminal_penalty, depth_bounds, "bellman_cara"
    )
    inventories = _inventory_grid(params, q_grid)
    with jax.enable_x64(True):
        risk = _step_variances(params)
        consts = _constants(params, inventories)
        q = jnp.asarray(inventories, jnp.float64)
        terminal = -terminal_penalty * q**2
        values, bids, asks = _solve_cara(
            consts,
            q,
            jnp.asarray(risk),
            terminal,
            gamma,
            _models(params),
            bounds,
            float(tol),
        )
    return _mdp_table(params, inventories, values, bids, asks, terminal, "bellman_cara")


def _unquoted_never_filled(bids: np.ndarray, asks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A tabulated policy's depths for the evaluation recursions: a NaN depth (no quote on
    that side) becomes ``+inf``, whose fill probability is exactly 0."""
    return np.where(np.isnan(bids), np.inf, bids), np.where(np.isnan(asks), np.inf, asks)


def _policy_table(params, inventories, bids, asks, values, terminal, method) -> QuoteTable:
    """A policy's depths ``f[N, n_q]`` and values ``f[N, n_q]`` as a ``QuoteTable`` with the
    terminal row (no quotes) and NaN where the inventory grid closes a side."""
    values = np.vstack([np.asarray(values), np.asarray(terminal)[None]])
    nan_row = np.full((1, inventories.size), np.nan)
    can_bid = inventories < inventories[-1]
    can_ask = inventories > inventories[0]
    bids = np.vstack([np.where(can_bid, bids, np.nan), nan_row])
    asks = np.vstack([np.where(can_ask, asks, np.nan), nan_row])
    times = np.arange(params.n_steps + 1) * float(params.dt)
    return QuoteTable(times, inventories, bids, asks, values, method=method)


@functools.partial(jax.jit, static_argnames=("models",))
def _evaluate_cara(numbers, q, risk, terminal, gamma, bids, asks, models):
    consts = {**numbers, "fill_model": models[0], "fill_shape": models[1]}

    def back(later, inputs):
        risk_t, bid, ask = inputs
        C, r_up, r_down = _cara_continuation(later, q, risk_t, gamma, consts)
        value = _cara_value(C, r_up, r_down, bid, ask, gamma, consts)
        return value, value

    _, values = jax.lax.scan(back, terminal, (risk, bids, asks), reverse=True)
    return values


def evaluate_cara(
    params: MarketParams,
    policy: Callable | QuoteTable,
    gamma: float,
    *,
    terminal_penalty: float = 0.0,
    q_grid: int | None = None,
) -> QuoteTable:
    """Exact certainty equivalent of a (t, q)-Markov policy under CARA utility of terminal
    wealth (the objective of ``bellman_cara``), by the same backward recursion with the
    policy's depths in place of the maximisation (no Monte Carlo).

    ``policy`` as in ``evaluate`` (depths used as quoted; NaN or +inf never fills). Returns a
    ``QuoteTable`` with ``value[t, q] = theta_t(q)`` in price units:
    ``-(1/gamma) log E[exp(-gamma W_N)]`` from the start is ``value_at(0, 0)``, and the expected
    CARA episode reward is ``rewards.value_to_reward(value_at(0, 0), "cara", gamma)``.
    """
    gamma, terminal_penalty, _ = _check_cara(
        params, gamma, terminal_penalty, (0.0, 1.0), "evaluate_cara"
    )
    inventories = _inventory_grid(params, q_grid)
    with jax.enable_x64(True):
        bids, asks = tabulate(policy, params, inventories)
        bids, asks = _unquoted_never_filled(bids, asks)
        risk = _step_variances(params)
        consts = _constants(params, inventories)
        q = jnp.asarray(inventories, jnp.float64)
        terminal = -terminal_penalty * q**2
        values = _evaluate_cara(
            consts,
            q,
            jnp.asarray(risk),
            terminal,
            gamma,
            jnp.asarray(bids, jnp.float64),
            jnp.asarray(asks, jnp.float64),
            _models(params),
        )
    return _policy_table(params, inventories, bids, asks, values, terminal, "evaluate_cara")


def tabulate(
    policy: Callable | QuoteTable, params: MarketParams, inventories: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The depths a policy quotes at each (step, inventory): ``(bid f[N, n_q], ask f[N, n_q])``.

    ``policy``: a jaxmm policy or a ``QuoteTable`` (read through ``policies.table``; its NaN
    entries come back as ``+inf``, "not quoted").

    The policy sees the state of a session at step ``t`` with inventory ``q``, mid ``S0`` and
    empty history; for (t, q)-Markov rules (naive, A-S and GLFT in the additive price models,
    solver tables) this is the whole policy. Rules that read the mid path or the trailing
    history are evaluated at that reference state only.
    """
    if isinstance(policy, QuoteTable):
        policy = policies_lib.table(policy)
    policy = policies_lib.as_pytree(policy)
    start = reset(jax.random.key(0), params)
    steps = jnp.arange(params.n_steps, dtype=jnp.int32)
    q = jnp.asarray(inventories, start.inventory.dtype)
    bid, ask = _tabulate(policy, params, start, steps, q)
    shape = (params.n_steps, inventories.size)
    return np.broadcast_to(np.asarray(bid), shape), np.broadcast_to(np.asarray(ask), shape)


@jax.jit
def _tabulate(policy, params, start, steps, inventories):
    def quote(t, inventory):
        quotes = policy(start.replace(t=t, inventory=inventory), params)
        return quotes.bid_depth, quotes.ask_depth

    return jax.vmap(jax.vmap(quote, in_axes=(None, 0)), in_axes=(0, None))(steps, inventories)


def evaluate(
    params: MarketParams,
    policy: Callable | QuoteTable,
    phi: float,
    *,
    reward: str = "inventory_penalty",
    terminal_penalty: float = 0.0,
    q_grid: int | None = None,
) -> QuoteTable:
    """Exact expected reward of a (t, q)-Markov policy in the simulator's MDP (no Monte Carlo).

    ``policy``: a jaxmm policy (tabulated with ``tabulate``) or a ``QuoteTable`` (wrapped with
    ``policies.table``). The rewards, fills and grid are those of ``bellman``; depths are used
    as quoted (not clipped to the action bounds; a probability is capped at 1 and an
    unquoted side, NaN or +inf, never fills). Returns a ``QuoteTable`` of the policy's depths
    and its value: ``evaluate(...).value_at(0, 0)`` is the expected episode reward.

    On a market with market orders (``params.mo_cost`` set) the policy's ``market_order`` is
    evaluated too (a ``QuoteTable`` with ``market_order`` is wrapped with ``table_policy``; a
    policy whose quotes carry none sends none), executed as the simulator does: rounded and
    clipped to ``[-1, 1]``, refused when it would leave the grid ``|q| <= Q`` (the default
    ``Q`` of ``bellman``). The returned table then carries the executed ``market_order``.
    """
    phi, terminal_penalty, _ = _check_mdp(params, phi, reward, terminal_penalty, (0.0, 1.0))
    if params.has_market_orders:
        return _evaluate_market_orders(params, policy, phi, reward, terminal_penalty, q_grid)
    inventories = _inventory_grid(params, q_grid)
    penalties = rewards.penalty_schedule(params, phi, reward)
    with jax.enable_x64(True):
        bids, asks = tabulate(policy, params, inventories)
        consts = _constants(params, inventories)
        q = jnp.asarray(inventories, jnp.float64)
        terminal = -terminal_penalty * q**2
        bids, asks = _unquoted_never_filled(bids, asks)
        values = _evaluate_mdp(
            consts,
            q,
            jnp.asarray(penalties),
            terminal,
            jnp.asarray(bids, jnp.float64),
            jnp.asarray(asks, jnp.float64),
            _models(params),
        )
    return _policy_table(params, inventories, bids, asks, values, terminal, "evaluate")


# ------------------------------------------------- the short-term alpha signal (t, q, alpha)


@struct.dataclass
class AlphaQuoteTable:
    """Quotes and values on a (time, inventory, alpha) grid (``bellman_alpha``,
    ``evaluate_alpha``).

    ``times f64[n_t]``, ``inventories i64[n_q]``, ``alphas f64[n_alpha]`` (a uniform grid,
    price units per time unit), ``bid_depth``/``ask_depth``/``value f64[n_t, n_q, n_alpha]``
    (NaN where a side is not quoted and in the terminal row), ``transition f64[n_alpha,
    n_alpha]``: ``transition[i, j]`` is the probability that alpha moves from grid cell ``i`` to
    cell ``j`` in one step.
    """

    times: np.ndarray
    inventories: np.ndarray
    alphas: np.ndarray
    bid_depth: np.ndarray
    ask_depth: np.ndarray
    value: np.ndarray
    transition: np.ndarray
    method: str = struct.field(pytree_node=False, default="")

    def q_index(self, q: int) -> int:
        """Column of inventory ``q``; ValueError if ``q`` is off the grid."""
        lo, hi = int(self.inventories[0]), int(self.inventories[-1])
        if not lo <= q <= hi:
            raise ValueError(f"q = {q} is off the grid; allowed: {lo} <= q <= {hi}")
        return int(q) - lo

    def alpha_index(self, alpha: float) -> int:
        """The alpha cell that holds ``alpha``: the nearest grid point (edges beyond)."""
        step = self.alphas[1] - self.alphas[0]
        cell = int(np.round((float(alpha) - self.alphas[0]) / step))
        return int(np.clip(cell, 0, self.alphas.size - 1))

    def value_at(self, t_index: int = 0, q: int = 0, alpha: float = 0.0) -> float:
        """Value of the state (time index, inventory ``q``, the cell of ``alpha``), price
        units."""
        return float(self.value[t_index, self.q_index(q), self.alpha_index(alpha)])


def alpha_grid(
    params: MarketParams, n_alpha: int = 41, width: float = 4.0
) -> tuple[np.ndarray, np.ndarray]:
    """The alpha grid of the exact solvers and its one-step transition matrix.

    ``n_alpha`` (odd, so that 0 is a grid point) equally spaced points over ``+-w`` with
    ``w = max(width * s, |alpha0|)``, ``s = alpha_vol / sqrt(2 alpha_rate)`` the stationary
    standard deviation (``w = 1`` if both are 0: alpha is then identically 0). Cell ``j`` is
    the interval between the midpoints around grid point ``j`` (the outer cells reach to
    ``+-inf``). From grid point ``a_i`` the step's alpha is exactly normal,
    ``N(a_i e^{-zeta dt}, eta^2 (1 - e^{-2 zeta dt}) / (2 zeta))``, and
    ``transition[i, j]`` is its probability of cell ``j`` (differences of the normal CDF; a
    point mass when ``alpha_vol = 0``). Rows sum to 1.

    Returns ``(alphas f64[n_alpha], transition f64[n_alpha, n_alpha])``.
    """
    n_alpha = validation.integer("n_alpha", n_alpha, 3, "an odd integer >= 3")
    if n_alpha % 2 == 0:
        raise ValueError(f"n_alpha = {n_alpha}; allowed: an odd integer >= 3 (0 on the grid)")
    width = validation.positive("width", width)
    zeta, eta = float(params.alpha_rate), float(params.alpha_vol)
    alpha0 = 0.0 if params.alpha0 is None else float(params.alpha0)
    half = max(width * eta / math.sqrt(2.0 * zeta), abs(alpha0))
    half = half if half > 0 else 1.0
    middle = n_alpha // 2
    alphas = half * np.arange(-middle, middle + 1) / middle  # symmetric, 0 exactly
    edges = np.concatenate([[-np.inf], 0.5 * (alphas[1:] + alphas[:-1]), [np.inf]])
    dt = float(params.dt)
    means = alphas * math.exp(-zeta * dt)
    spread = eta * math.sqrt(-math.expm1(-2.0 * zeta * dt) / (2.0 * zeta))
    if spread > 0:
        below = np.vectorize(lambda z: 0.5 * math.erfc(-z / math.sqrt(2.0)))
        cdf = below((edges[None, :] - means[:, None]) / spread)
    else:
        cdf = (edges[None, :] <= means[:, None]).astype(np.float64)
    transition = np.diff(cdf, axis=1)
    return alphas, transition / transition.sum(axis=1, keepdims=True)


def _check_alpha(params: MarketParams, n_alpha: int, width: float):
    """The (t, q) checks of the exact solvers on the market without its alpha, and the grid."""
    params.validate()
    if params.alpha_model != "ou":
        raise ValueError(
            f"params.alpha_model = {params.alpha_model!r}; allowed: 'ou' for the (t, q, alpha) "
            "solvers (use bellman / evaluate without the alpha signal)"
        )
    for name in ("alpha_rate", "alpha_vol", "alpha0"):
        if np.ndim(getattr(params, name)) != 0:
            raise ValueError(f"params.{name} must be a scalar for the exact solvers (no sweeps)")
    if params.has_market_orders:
        raise ValueError(
            f"params.mo_cost = {params.mo_cost!r} is not modelled by the (t, q, alpha) solvers; "
            "allowed: None (market orders are solved by bellman without the alpha signal)"
        )
    alphas, transition = alpha_grid(params, n_alpha, width)
    plain = params.replace(alpha_model="none", alpha_rate=None, alpha_vol=None, alpha0=None)
    return plain, alphas, transition


def _alpha_constants(plain: MarketParams, inventories: np.ndarray, alphas: np.ndarray):
    """``_constants`` on the (q, alpha) grid: inventories down axis 0, alphas along axis 1;
    the drift per step ``(mu + alpha) dt`` varies along the alphas."""
    consts = _constants(plain, inventories)
    consts["drift_dt"] = jnp.asarray((float(plain.mu) + alphas)[None, :] * float(plain.dt))
    consts["can_bid"] = consts["can_bid"][:, None]
    consts["can_ask"] = consts["can_ask"][:, None]
    return consts


@functools.partial(jax.jit, static_argnames=("models", "bounds", "tol"))
def _solve_alpha(numbers, q, penalties, terminal, transition, models, bounds, tol):
    """Backward induction on (q, alpha): each step is ``_solve_mdp``'s exact one-step
    maximisation applied to ``E[V_{t+1}(q', alpha') | alpha] = V_{t+1} transition^T``."""
    consts = {**numbers, "fill_model": models[0], "fill_shape": models[1]}

    def back(later, penalty):
        expected = later @ transition.T
        values, bids, asks = _solve_mdp(consts, q, penalty[None], expected, bounds, tol)
        return values[0], (values[0], bids[0], asks[0])

    _, (values, bids, asks) = jax.lax.scan(back, terminal, penalties, reverse=True)
    return values, bids, asks


def _alpha_table(plain, inventories, alphas, transition, values, bids, asks, terminal, method):
    values = np.concatenate([np.asarray(values), np.asarray(terminal)[None]])
    nan_row = np.full((1, inventories.size, alphas.size), np.nan)
    bids = np.concatenate([np.asarray(bids), nan_row])
    asks = np.concatenate([np.asarray(asks), nan_row])
    times = np.arange(plain.n_steps + 1) * float(plain.dt)
    return AlphaQuoteTable(times, inventories, alphas, bids, asks, values, transition, method)


def bellman_alpha(
    params: MarketParams,
    phi: float,
    *,
    n_alpha: int = 41,
    width: float = 4.0,
    reward: str = "inventory_penalty",
    terminal_penalty: float = 0.0,
    depth_bounds: tuple[float, float] = DEFAULT_DEPTH_BOUNDS,
    q_grid: int | None = None,
    tol: float = 1e-12,
) -> AlphaQuoteTable:
    """The exact optimum of the simulator's MDP with the short-term alpha signal
    (``alpha_model="ou"``), on the state ``(t, q, alpha)`` with alpha on a grid.

    The step is ``bellman``'s, with the mid's increment ``(mu + alpha_t) dt`` in expectation
    (``market``: the alpha of the start of the step drifts the mid over it) and alpha moving
    between the cells of ``alpha_grid`` with the exact Gaussian probabilities:

        V_t(q, a_i) = max_{d_b, d_a} E[ fills . depths + q_{t+1} (mu + a_i) dt
                                        + q_{t+1} adverse jump - c_t q_{t+1}^2
                                        + sum_j P_ij V_{t+1}(q_{t+1}, a_j) ],

    ``q_{t+1}`` the inventory after the step's fills (the reward's convention, ``rewards``).
    Alpha's noise is independent of the fills and of the mid's noise, so the maximisation is
    ``bellman``'s exact joint one (alternating bisections) at every ``(q, alpha)``. The value
    is exact for the alpha chain on the grid; as ``n_alpha`` grows (``width`` fixed) it tends
    to the value of the continuous alpha (tested: differences shrink). With ``alpha_vol = 0``
    and ``alpha0 = 0`` alpha stays 0 and the value at ``alpha = 0`` is ``bellman``'s.

    Args:
        n_alpha: odd number of alpha grid points; width: the grid's half-width in stationary
            standard deviations (see ``alpha_grid``). The rest as in ``bellman``.

    Returns an ``AlphaQuoteTable``: ``value_at(0, 0, alpha0)`` is the expected episode reward
    of the optimal policy from a flat start; ``mm.policies.alpha_table`` turns it into a policy.
    """
    plain, alphas, transition = _check_alpha(params, n_alpha, width)
    phi, terminal_penalty, bounds = _check_mdp(plain, phi, reward, terminal_penalty, depth_bounds)
    inventories = _inventory_grid(plain, q_grid)
    penalties = rewards.penalty_schedule(plain, phi, reward)
    with jax.enable_x64(True):
        consts = _alpha_constants(plain, inventories, alphas)
        q = jnp.asarray(inventories, jnp.float64)[:, None]
        terminal = jnp.broadcast_to(-terminal_penalty * q**2, (inventories.size, alphas.size))
        values, bids, asks = _solve_alpha(
            consts,
            q,
            jnp.asarray(penalties),
            terminal,
            jnp.asarray(transition),
            _models(plain),
            bounds,
            float(tol),
        )
    return _alpha_table(
        plain, inventories, alphas, transition, values, bids, asks, terminal, "bellman_alpha"
    )


@functools.partial(jax.jit, static_argnames=("models",))
def _evaluate_alpha(numbers, q, penalties, terminal, transition, bids, asks, models):
    consts = {**numbers, "fill_model": models[0], "fill_shape": models[1]}

    def back(later, inputs):
        penalty, bid, ask = inputs
        value = _one_step_value(later @ transition.T, q, penalty, bid, ask, consts)
        return value, value

    _, values = jax.lax.scan(back, terminal, (penalties, bids, asks), reverse=True)
    return values


def tabulate_alpha(
    policy: Callable, params: MarketParams, inventories: np.ndarray, alphas: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The depths a policy quotes at each (step, inventory, alpha):
    ``(bid f[N, n_q, n_alpha], ask f[N, n_q, n_alpha])``, at the reference state of
    ``tabulate`` (mid ``S0``, empty history) with ``MarketState.alpha`` set."""
    policy = policies_lib.as_pytree(policy)
    start = reset(jax.random.key(0), params)
    steps = jnp.arange(params.n_steps, dtype=jnp.int32)
    q = jnp.asarray(inventories, start.inventory.dtype)
    a = jnp.asarray(alphas, start.inventory.dtype)
    bid, ask = _tabulate_alpha(policy, params, start, steps, q, a)
    shape = (params.n_steps, inventories.size, alphas.size)
    return np.broadcast_to(np.asarray(bid), shape), np.broadcast_to(np.asarray(ask), shape)


@jax.jit
def _tabulate_alpha(policy, params, start, steps, inventories, alphas):
    def quote(t, inventory, alpha):
        quotes = policy(start.replace(t=t, inventory=inventory, alpha=alpha), params)
        return quotes.bid_depth, quotes.ask_depth

    over_alpha = jax.vmap(quote, in_axes=(None, None, 0))
    over_q = jax.vmap(over_alpha, in_axes=(None, 0, None))
    return jax.vmap(over_q, in_axes=(0, None, None))(steps, inventories, alphas)


def evaluate_alpha(
    params: MarketParams,
    policy: Callable | AlphaQuoteTable,
    phi: float,
    *,
    n_alpha: int = 41,
    width: float = 4.0,
    reward: str = "inventory_penalty",
    terminal_penalty: float = 0.0,
    q_grid: int | None = None,
) -> AlphaQuoteTable:
    """Exact expected reward of a (t, q, alpha)-Markov policy in ``bellman_alpha``'s MDP.

    ``policy``: a jaxmm policy (tabulated at the grid's alphas with ``tabulate_alpha``; rules
    that ignore alpha, such as A-S, are fine) or an ``AlphaQuoteTable`` (read through
    ``policies.alpha_table``; its grid must be the one of ``n_alpha`` and ``width``). Depths
    are used as quoted (not clipped; a probability is capped at 1 and an unquoted side never
    fills). Returns an ``AlphaQuoteTable`` of the policy's depths and value:
    ``value_at(0, 0, alpha0)`` is its expected episode reward.
    """
    plain, alphas, transition = _check_alpha(params, n_alpha, width)
    phi, terminal_penalty, _ = _check_mdp(plain, phi, reward, terminal_penalty, (0.0, 1.0))
    if isinstance(policy, AlphaQuoteTable):
        if policy.alphas.shape != alphas.shape or not np.allclose(policy.alphas, alphas):
            raise ValueError(
                "policy.alphas differ from the grid of n_alpha / width; allowed: a table "
                "solved on the same alpha grid"
            )
        policy = policies_lib.alpha_table(policy)
    inventories = _inventory_grid(plain, q_grid)
    penalties = rewards.penalty_schedule(plain, phi, reward)
    with jax.enable_x64(True):
        bids, asks = tabulate_alpha(policy, params, inventories, alphas)
        bids, asks = _unquoted_never_filled(bids, asks)
        consts = _alpha_constants(plain, inventories, alphas)
        q = jnp.asarray(inventories, jnp.float64)[:, None]
        terminal = jnp.broadcast_to(-terminal_penalty * q**2, (inventories.size, alphas.size))
        values = _evaluate_alpha(
            consts,
            q,
            jnp.asarray(penalties),
            terminal,
            jnp.asarray(transition),
            jnp.asarray(bids, jnp.float64),
            jnp.asarray(asks, jnp.float64),
            _models(plain),
        )
    can_bid = (inventories < inventories[-1])[:, None]
    can_ask = (inventories > inventories[0])[:, None]
    bids = np.where(can_bid, bids, np.nan)
    asks = np.where(can_ask, asks, np.nan)
    return _alpha_table(
        plain, inventories, alphas, transition, values, bids, asks, terminal, "evaluate_alpha"
    )


@struct.dataclass
class AlphaSkewTable:
    """A first-order expansion in alpha on a (time, inventory) grid
    (``cartea_jaimungal_alpha``): at alpha the depths are ``bid_depth + alpha * bid_slope``
    and ``ask_depth + alpha * ask_slope``.

    ``times f64[n_t]``, ``inventories i64[n_q]``; ``bid_depth``, ``ask_depth`` (price units)
    and ``value`` (``h_0``, price units) ``f64[n_t, n_q]`` are the alpha-free optimum;
    ``bid_slope``, ``ask_slope`` (time units: price units of depth per unit of alpha) and
    ``alpha_value`` (``h_1``, time units) ``f64[n_t, n_q]``. NaN where a side is not quoted.
    """

    times: np.ndarray
    inventories: np.ndarray
    bid_depth: np.ndarray
    ask_depth: np.ndarray
    bid_slope: np.ndarray
    ask_slope: np.ndarray
    value: np.ndarray
    alpha_value: np.ndarray
    method: str = struct.field(pytree_node=False, default="")


@functools.partial(jax.jit, static_argnames=("n_steps",))
def _propagate_pair(generator, start, gap, n_steps):
    """``[u; omega](t_i) = expm(generator (T - t_i)) start`` on a uniform grid, each step
    rescaled by ``max(omega)`` (the ratio ``u / omega`` is all that is used)."""
    propagator = linalg.expm(generator * gap)
    half = start.shape[0] // 2

    def back(vector, _):
        vector = propagator @ vector
        vector = vector / jnp.max(vector[half:])
        return vector, vector[:half] / vector[half:]

    _, ratios = jax.lax.scan(back, start, None, length=n_steps)
    return ratios[::-1]


def cartea_jaimungal_alpha(
    A: float,
    k: float,
    phi: float,
    q_max: int,
    T: float = 1.0,
    *,
    alpha_rate: float,
    terminal_penalty: float = 0.0,
    n_steps: int = 200,
) -> AlphaSkewTable:
    """Cartea-Jaimungal quotes with a short-term alpha, to first order in alpha (the model of
    Cartea, Jaimungal & Penalva 2015, section 10.4, without the alpha's jumps).

    Risk-neutral market maker, mid ``dS = alpha dt + sigma dW``, ``d alpha = -zeta alpha dt +
    eta dZ``, fills at ``A exp(-k delta)``, running penalty ``phi q^2`` per time unit, terminal
    penalty ``terminal_penalty q^2``, inventory in ``[-q_max, q_max]``. With the value
    ``x + q S + h(t, alpha, q)`` the HJB is

        0 = h_t + alpha q - zeta alpha h_alpha + (eta^2/2) h_aa - phi q^2
            + (A / (k e)) sum_{+-} exp(k (h(q +- 1) - h(q))),

    and the depths are ``1/k - (h(q+1) - h(q))`` (bid), ``1/k - (h(q-1) - h(q))`` (ask).
    Expanding ``h = h_0 + alpha h_1 + O(alpha^2)`` and dropping the alpha-diffusion terms
    (``eta^2 h_2`` in the order-0 equation, ``eta^2 h_3`` in the order-1 one; exact to first
    order in alpha when ``eta = 0``): ``h_0`` is ``cartea_jaimungal``'s ``(1/k) ln omega`` and
    ``h_1`` solves the linear system

        -d h_1/dt = q - zeta h_1 + (A/e) sum_{+-} (omega_{q+-1} / omega_q) (h_1(q+-1) - h_1(q)),

    ``h_1(T) = 0``. With ``u = omega h_1`` this is ``-u' = (M - zeta) u + diag(q) omega`` (``M``
    the CJ generator), so ``[u; omega](t) = expm(B (T - t)) [0; z]`` with the block matrix
    ``B = [[M - zeta I, diag(q)], [0, M]]`` (Van Loan), integrated exactly by ``linalg.expm``.
    The quotes:

        bid_depth(t, q, alpha) = bid_0(t, q) - alpha (h_1(t, q+1) - h_1(t, q)),
        ask_depth(t, q, alpha) = ask_0(t, q) - alpha (h_1(t, q-1) - h_1(t, q)).

    Far from the inventory limits and the horizon ``h_1 ~ q / zeta``, so a positive alpha
    narrows the bid and widens the ask by about ``alpha / zeta`` (the expected drift over the
    alpha's memory). ``alpha_rate`` is zeta (per time unit, >= 0); the discrete environment's
    per-step penalty ``phi_env`` is ``phi = phi_env / dt`` here. ``mm.policies.alpha_skew``
    turns the result into a policy.
    """
    zeta = validation.nonnegative("alpha_rate", alpha_rate)
    base = cartea_jaimungal(A, k, phi, q_max, T, alpha=terminal_penalty, n_steps=n_steps)
    q_max, T, n_steps = _check_grid(q_max, T, n_steps)
    inventories = base.inventories
    n = inventories.size
    with jax.enable_x64(True):
        q = jnp.asarray(inventories, jnp.float64)
        generator = _tridiagonal(-float(phi) * float(k) * q**2, float(A) / math.e)
        block = jnp.block(
            [[generator - zeta * jnp.eye(n), jnp.diag(q)], [jnp.zeros((n, n)), generator]]
        )
        terminal = jnp.exp(-float(terminal_penalty) * float(k) * q**2)
        start = jnp.concatenate([jnp.zeros(n), terminal / jnp.max(terminal)])
        ratios = np.asarray(_propagate_pair(block, start, T / n_steps, n_steps))
    h1 = np.vstack([ratios, np.zeros((1, n))])  # h_1(T) = 0
    bid_slope = -(np.roll(h1, -1, axis=1) - h1)
    ask_slope = -(np.roll(h1, 1, axis=1) - h1)
    bid_slope, ask_slope = _mask_bounds(bid_slope, ask_slope)
    return AlphaSkewTable(
        base.times,
        inventories,
        base.bid_depth,
        base.ask_depth,
        bid_slope,
        ask_slope,
        base.value,
        h1,
        method="cartea_jaimungal_alpha",
    )


# ------------------------------------------------------------ market orders as a control

_MARKET_ORDER_FIELDS = ("mo_cost", "mo_permanent_impact")
_MARKET_ORDERS = (0, 1, -1)  # the enumeration order: ties go to the earlier (no order first)


@struct.dataclass
class MarketOrderTable:
    """A ``policies.Table`` of quotes plus a table of market orders; see ``table_policy``."""

    quotes: policies_lib.Table
    orders: policies_lib.Table  # the market orders, read through a Table's (row, column)

    def __call__(self, obs, params: MarketParams):
        quotes = self.quotes(obs, params)
        return quotes.replace(market_order=self.orders(obs, params).bid_depth)


def table_policy(solution: QuoteTable) -> Any:
    """A solver's table as a jaxmm policy: ``policies.table(solution)``, and, when the table
    carries ``market_order`` (``bellman`` on a market with market orders), that market order
    too (the same row and column: nearest time, current inventory, edge column beyond)."""
    quotes = policies_lib.table(solution)
    if solution.market_order is None:
        return quotes
    orders = np.asarray(solution.market_order, np.float64)
    orders = policies_lib.table(solution.replace(bid_depth=orders, ask_depth=orders))
    return MarketOrderTable(quotes=quotes, orders=orders)


def market_order_thresholds(solution: QuoteTable) -> dict[str, np.ndarray]:
    """Where a table's market orders start: ``{"sell": f[n_t], "buy": f[n_t]}``.

    ``sell[t]``: the smallest inventory ``q`` at which the policy sells at step ``t`` (NaN if
    it never does), ``buy[t]`` the largest at which it buys. For the optimum these are the
    thresholds ``q*(t)``: it sells at every ``q >= sell[t]`` and buys at every ``q <= buy[t]``
    (the tests check that the regions are contiguous).
    """
    if solution.market_order is None:
        raise ValueError("solution.market_order is None: the table has no market orders")
    orders = np.asarray(solution.market_order)
    q = np.asarray(solution.inventories, np.float64)
    sells, buys = orders < 0, orders > 0
    sell = np.where(sells.any(axis=1), np.where(sells, q, np.inf).min(axis=1), np.nan)
    buy = np.where(buys.any(axis=1), np.where(buys, q, -np.inf).max(axis=1), np.nan)
    return {"sell": sell, "buy": buy}


def _market_order_grid(params: MarketParams, q_grid: int | None) -> np.ndarray:
    """The solvers' grid with market orders: ``Q = min(q_max, 2 n_steps)`` by default (a
    market order and a fill move the inventory by up to two per step)."""
    if q_grid is None:
        q_grid = int(min(float(params.q_max), 2 * params.n_steps))
    return _inventory_grid(params, q_grid)


def _impact(params: MarketParams) -> float:
    return 0.0 if params.mo_permanent_impact is None else float(params.mo_permanent_impact)


def _shift(values: jax.Array, m: int, fill: float) -> jax.Array:
    """``values[i + m]`` at every grid index ``i`` (``fill`` where ``i + m`` is off the grid)."""
    if m == 0:
        return values
    pad = jnp.full((abs(m),), fill, values.dtype)
    if m > 0:
        return jnp.concatenate([values[m:], pad])
    return jnp.concatenate([pad, values[:m]])


def _bellman_market_orders(params, phi, reward, terminal_penalty, bounds, q_grid, tol):
    inventories = _market_order_grid(params, q_grid)
    penalties = rewards.penalty_schedule(params, phi, reward)
    with jax.enable_x64(True):
        consts = _constants(params, inventories)
        q = jnp.asarray(inventories, jnp.float64)
        terminal = -terminal_penalty * q**2
        values, bids, asks, orders = _solve_market_orders(
            consts,
            q,
            jnp.asarray(penalties),
            terminal,
            jnp.asarray(float(params.mo_cost), jnp.float64),
            jnp.asarray(_impact(params), jnp.float64),
            _models(params),
            bounds,
            tol,
            params.mo_permanent_impact is not None and _impact(params) != 0.0,
        )
    table = _mdp_table(params, inventories, values, bids, asks, terminal, "bellman")
    orders = np.vstack([np.asarray(orders), np.zeros((1, inventories.size))])
    return table.replace(market_order=orders)


@functools.partial(jax.jit, static_argnames=("models", "bounds", "tol", "with_impact"))
def _solve_market_orders(numbers, q, penalties, terminal, cost, impact, models, bounds, tol,
                         with_impact):  # fmt: skip
    """Backward induction over the joint action (quotes, market order); see ``bellman``.

    Each step solves the quotes-only problem ``U^m`` with ``_solve_mdp`` (one step, the
    continuation shifted by ``impact m q'``), once for all ``m`` without impact."""
    consts = {**numbers, "fill_model": models[0], "fill_shape": models[1]}

    def back(later, penalty):
        solved = {}
        for m in _MARKET_ORDERS if with_impact else (0,):
            shifted = later + impact * m * q if with_impact else later
            u, bid, ask = _solve_mdp(consts, q, penalty[None], shifted, bounds, tol)
            solved[m] = (u[0], bid[0], ask[0])
        best_value, best_bid, best_ask = solved[0]
        best_order = jnp.zeros_like(q)
        for m in _MARKET_ORDERS[1:]:
            u, bid, ask = solved[m if with_impact else 0]
            value = _shift(u, m, -jnp.inf) - cost * abs(m)
            better = value > best_value  # strictly: ties keep the earlier choice
            best_value = jnp.where(better, value, best_value)
            best_bid = jnp.where(better, _shift(bid, m, jnp.nan), best_bid)
            best_ask = jnp.where(better, _shift(ask, m, jnp.nan), best_ask)
            best_order = jnp.where(better, float(m), best_order)
        return best_value, (best_value, best_bid, best_ask, best_order)

    _, (values, bids, asks, orders) = jax.lax.scan(back, terminal, penalties, reverse=True)
    return values, bids, asks, orders


def _evaluate_market_orders(params, policy, phi, reward, terminal_penalty, q_grid):
    inventories = _market_order_grid(params, q_grid)
    penalties = rewards.penalty_schedule(params, phi, reward)
    if isinstance(policy, QuoteTable):
        policy = table_policy(policy)
    policy = policies_lib.as_pytree(policy)
    start = reset(jax.random.key(0), params)
    steps = jnp.arange(params.n_steps, dtype=jnp.int32)
    with jax.enable_x64(True):
        bids, asks, orders = (
            np.broadcast_to(np.asarray(x, np.float64), (params.n_steps, inventories.size))
            for x in _tabulate_orders(
                policy, params, start, steps, jnp.asarray(inventories, start.inventory.dtype)
            )
        )
        # executed as the step does: rounded, clipped, refused off the grid
        orders = np.clip(np.round(np.where(np.isnan(orders), 0.0, orders)), -1.0, 1.0)
        orders = np.where(np.abs(inventories + orders) <= inventories[-1], orders, 0.0)
        consts = _constants(params, inventories)
        q = jnp.asarray(inventories, jnp.float64)
        terminal = -terminal_penalty * q**2
        quoted_bids, quoted_asks = _unquoted_never_filled(bids, asks)
        values = _evaluate_orders(
            consts,
            q,
            jnp.asarray(penalties),
            terminal,
            jnp.asarray(quoted_bids),
            jnp.asarray(quoted_asks),
            jnp.asarray(orders),
            jnp.asarray(float(params.mo_cost), jnp.float64),
            jnp.asarray(_impact(params), jnp.float64),
            _models(params),
        )
        values = np.vstack([np.asarray(values), np.asarray(terminal)[None]])
    after = inventories + orders  # where the fills start
    nan_row = np.full((1, inventories.size), np.nan)
    bids = np.vstack([np.where(after < inventories[-1], bids, np.nan), nan_row])
    asks = np.vstack([np.where(after > inventories[0], asks, np.nan), nan_row])
    orders = np.vstack([orders, np.zeros((1, inventories.size))])
    times = np.arange(params.n_steps + 1) * float(params.dt)
    return QuoteTable(
        times, inventories, bids, asks, values, method="evaluate", market_order=orders
    )


@jax.jit
def _tabulate_orders(policy, params, start, steps, inventories):
    def quote(t, inventory):
        quotes = policy(start.replace(t=t, inventory=inventory), params)
        order = quotes.market_order
        order = jnp.zeros(()) if order is None else order
        return quotes.bid_depth, quotes.ask_depth, order

    return jax.vmap(jax.vmap(quote, in_axes=(None, 0)), in_axes=(0, None))(steps, inventories)


@functools.partial(jax.jit, static_argnames=("models",))
def _evaluate_orders(numbers, q, penalties, terminal, bids, asks, orders, cost, impact, models):
    """Exact value of a (t, q) policy with market orders: at ``(t, q)`` with order ``m`` the
    quotes act from ``x = q + m`` (the one-step value of ``_one_step_value`` at ``x`` with
    the continuation shifted by ``impact m q'``), minus ``|m| cost``."""
    consts = {**numbers, "fill_model": models[0], "fill_shape": models[1]}

    def back(later, inputs):
        penalty, bid, ask, order = inputs
        value = jnp.zeros_like(q)
        for m in _MARKET_ORDERS:
            # the quotes of the state q = x - m, placed at x
            at_x = _one_step_value(
                later + impact * m * q,
                q,
                penalty,
                _shift(bid, -m, jnp.inf),
                _shift(ask, -m, jnp.inf),
                consts,
            )
            value = jnp.where(order == m, _shift(at_x, m, 0.0) - cost * abs(m), value)
        return value, value

    _, values = jax.lax.scan(back, terminal, (penalties, bids, asks, orders), reverse=True)
    return values


# ------------------------------------------------------------------------ risk measures


def inventory_var(inventory: Any, sigma: float, horizon: float, level: float = 0.95) -> np.ndarray:
    """Value at risk of holding ``inventory`` for ``horizon`` time units, Brownian mid.

    The loss ``-q (S_{t+h} - S_t)`` is normal with mean 0 and standard deviation
    ``|q| sigma sqrt(h)``: ``VaR_level = |q| sigma sqrt(h) Phi^{-1}(level)`` (price units, a
    positive number is a loss). The course notes' ``q sigma ...`` is negative for short
    positions; the loss distribution is symmetric in the sign of ``q``.
    """
    sigma, horizon = validation.positive("sigma", sigma), validation.nonnegative("horizon", horizon)
    level = validation.number("level", level, lambda v: 0.5 <= v < 1, "0.5 <= level < 1")
    return (
        np.abs(np.asarray(inventory, np.float64))
        * sigma
        * math.sqrt(horizon)
        * NormalDist().inv_cdf(level)
    )


def inventory_cvar(inventory: Any, sigma: float, horizon: float, level: float = 0.95) -> np.ndarray:
    """Expected shortfall ``E[loss | loss >= VaR]`` of the same position:
    ``|q| sigma sqrt(h) phi(Phi^{-1}(level)) / (1 - level)``."""
    sigma, horizon = validation.positive("sigma", sigma), validation.nonnegative("horizon", horizon)
    level = validation.number("level", level, lambda v: 0.5 <= v < 1, "0.5 <= level < 1")
    z = NormalDist().inv_cdf(level)
    density = math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return (
        np.abs(np.asarray(inventory, np.float64))
        * sigma
        * math.sqrt(horizon)
        * density
        / (1 - level)
    )
