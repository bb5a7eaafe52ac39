"""Quoting rules. A policy is a pure function ``(obs, params) -> Quotes``.

``obs`` is the episode's ``MarketState`` (time index, mid, inventory and the trailing history);
``params`` the ``MarketParams``. The rules here are frozen pytrees (their numeric settings are
leaves), so a sweep can ``vmap`` over ``gamma`` or ``half_spread`` and ``jit`` does not recompile
when they change. Any plain function with the same signature is a policy too.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxmm import validation
from jaxmm.market import MarketState, Quotes, time_to_go
from jaxmm.params import MarketParams

__all__ = [
    "AlphaSkew",
    "AlphaTable",
    "AvellanedaStoikov",
    "GLFTAsymptotic",
    "Policy",
    "Symmetric",
    "Table",
    "alpha_skew",
    "alpha_table",
    "as_pytree",
    "avellaneda_stoikov",
    "checked_pytree",
    "glft",
    "log1p_ratio",
    "symmetric",
    "table",
]


class Policy(Protocol):
    """What a policy is: ``(obs: MarketState, params: MarketParams) -> Quotes`` (a pure
    function; the built-in ones are pytrees, so ``vmap`` sweeps over their numbers)."""

    def __call__(self, obs: MarketState, params: MarketParams) -> Quotes: ...


def log1p_ratio(x: jax.Array) -> jax.Array:
    """``log(1 + x) / x``, equal to 1 at ``x = 0`` and smooth (also in its gradient) near it."""
    small = jnp.abs(x) < 1e-3
    safe = jnp.where(small, 1.0, x)
    return jnp.where(small, 1.0 - x / 2.0 + x * x / 3.0, jnp.log1p(safe) / safe)


def _price_sigma(sigma: jax.Array, obs: MarketState, params: MarketParams) -> jax.Array:
    """Volatility in price units per sqrt(time unit) (geometric sigma is relative)."""
    if params.price_model == "geometric":
        return sigma * obs.mid
    return sigma


@struct.dataclass
class Symmetric:
    """The naive market maker: fixed depth ``half_spread`` on both sides, no inventory skew."""

    half_spread: float

    def __call__(self, obs: MarketState, params: MarketParams) -> Quotes:
        depth = jnp.asarray(self.half_spread, obs.mid.dtype)
        return Quotes(bid_depth=depth, ask_depth=depth)


def symmetric(half_spread: float) -> Symmetric:
    """Naive symmetric quoting at ``mid -+ half_spread`` (price units); spread ``2 half_spread``."""
    validation.array("half_spread", half_spread, np.isfinite, "finite")
    return Symmetric(half_spread=half_spread)


@struct.dataclass
class AvellanedaStoikov:
    """Avellaneda & Stoikov (2008) quotes; see ``avellaneda_stoikov``."""

    gamma: float
    k: float | None = None
    sigma: float | None = None
    skew: bool = struct.field(pytree_node=False, default=True)

    def reservation_offset(self, obs: MarketState, params: MarketParams) -> jax.Array:
        """``S - r = q gamma sigma^2 (T - t)``: how far the reservation price sits below mid."""
        sigma = _price_sigma(params.sigma if self.sigma is None else self.sigma, obs, params)
        return obs.inventory * self.gamma * sigma**2 * time_to_go(obs, params)

    def spread(self, obs: MarketState, params: MarketParams) -> jax.Array:
        """``gamma sigma^2 (T - t) + (2 / gamma) ln(1 + gamma / k)``, price units.

        At ``gamma = 0`` the second term is its limit ``2 / k``.
        """
        k = params.k if self.k is None else self.k
        sigma = _price_sigma(params.sigma if self.sigma is None else self.sigma, obs, params)
        risk = self.gamma * sigma**2 * time_to_go(obs, params)
        return risk + 2.0 * log1p_ratio(self.gamma / k) / k

    def __call__(self, obs: MarketState, params: MarketParams) -> Quotes:
        half = 0.5 * self.spread(obs, params)
        offset = self.reservation_offset(obs, params) if self.skew else 0.0
        return Quotes(bid_depth=half + offset, ask_depth=half - offset)


def avellaneda_stoikov(
    gamma: float, k: float | None = None, sigma: float | None = None, *, skew: bool = True
) -> AvellanedaStoikov:
    """Avellaneda & Stoikov (2008), eqs. (29)-(30), with the approximation of section 3.

    Reservation price ``r = S - q gamma sigma^2 (T - t)``; total spread
    ``gamma sigma^2 (T - t) + (2/gamma) ln(1 + gamma/k)``; quotes ``r -+ spread / 2``. So
    ``bid_depth = spread/2 + q gamma sigma^2 (T - t)`` and
    ``ask_depth = spread/2 - q gamma sigma^2 (T - t)``.

    Args:
        gamma: risk aversion, per price unit (>= 0; 0 gives the risk-neutral limit 2/k).
        k: the intensity decay the strategy assumes, per price unit (default: the market's).
        sigma: the volatility the strategy assumes (default: the market's base ``sigma``,
            which it keeps using after a volatility switch -- A-S does not adapt).
        skew: ``False`` centres the same spread on the mid: the paper's "symmetric strategy".
    """
    validation.array("gamma", gamma, lambda x: x >= 0, ">= 0")
    validation.array("k", k, lambda x: x > 0, "> 0")
    validation.array("sigma", sigma, lambda x: x >= 0, ">= 0")
    return AvellanedaStoikov(gamma=gamma, k=k, sigma=sigma, skew=skew)


@struct.dataclass
class GLFTAsymptotic:
    """Gueant, Lehalle & Fernandez-Tapia (2013) asymptotic quotes; see ``glft``."""

    gamma: float
    k: float | None = None
    A: float | None = None
    sigma: float | None = None

    def __call__(self, obs: MarketState, params: MarketParams) -> Quotes:
        k = params.k if self.k is None else self.k
        A = params.A if self.A is None else self.A
        sigma = _price_sigma(params.sigma if self.sigma is None else self.sigma, obs, params)
        x = self.gamma / k
        ratio = log1p_ratio(x)  # ln(1 + x) / x
        base = ratio / k  # (1/gamma) ln(1 + gamma/k), -> 1/k as gamma -> 0
        # (1 + x)^(1 + 1/x) = exp(ln(1+x) + ln(1+x)/x), -> e as x -> 0
        growth = jnp.exp(jnp.log1p(x) + ratio)
        slope = jnp.sqrt(sigma**2 * self.gamma / (2.0 * k * A) * growth)
        q = obs.inventory
        return Quotes(
            bid_depth=base + (2.0 * q + 1.0) / 2.0 * slope,
            ask_depth=base - (2.0 * q - 1.0) / 2.0 * slope,
        )


def glft(
    gamma: float, k: float | None = None, A: float | None = None, sigma: float | None = None
) -> GLFTAsymptotic:
    """GLFT (2013) closed-form asymptotic quotes (``T -> infinity``), eqs. (4.6)-(4.7).

    ``bid_depth = c + (2q + 1)/2 w`` and ``ask_depth = c - (2q - 1)/2 w`` with
    ``c = (1/gamma) ln(1 + gamma/k)`` and
    ``w = sqrt(sigma^2 gamma / (2 k A) (1 + gamma/k)^(1 + k/gamma))``.
    (Not the A-S Taylor expansion some course notes call "GLFT".)

    Args:
        gamma: risk aversion (>= 0). k: per price unit. A: arrivals per time unit at depth 0.
        sigma: price units per sqrt(time unit). Each defaults to the market's value.
    """
    validation.array("gamma", gamma, lambda x: x >= 0, ">= 0")
    validation.array("k", k, lambda x: x > 0, "> 0")
    validation.array("A", A, lambda x: x > 0, "> 0")
    validation.array("sigma", sigma, lambda x: x >= 0, ">= 0")
    return GLFTAsymptotic(gamma=gamma, k=k, A=A, sigma=sigma)


def as_pytree(policy: Any) -> Any:
    """Policies that are pytrees pass through ``jit`` as data (no recompilation when their
    numbers change); a plain function is wrapped as static code (compiled once per function)."""
    if jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(policy)):
        return jax.tree_util.Partial(policy)
    return policy


def checked_pytree(policy: Any) -> Any:
    """``as_pytree(policy)`` once ``policy`` is known to be callable (``TypeError`` if not):
    how the simulators take a policy, before anything is compiled."""
    if not callable(policy):
        raise TypeError(f"policy must be callable (obs, params) -> Quotes, got {policy!r}")
    return as_pytree(policy)


@struct.dataclass
class Table:
    """Quotes read from a (time, inventory) table; see ``table``."""

    times: jax.Array  # f[n_t], session time units
    bid_depth: jax.Array  # f[n_t, n_q]; +inf where not quoted
    ask_depth: jax.Array  # f[n_t, n_q]
    q_min: int = struct.field(pytree_node=False, default=0)

    def __call__(self, obs: MarketState, params: MarketParams) -> Quotes:
        now = obs.t * params.dt
        after = jnp.clip(jnp.searchsorted(self.times, now), 1, self.times.shape[0] - 1)
        nearer_before = (now - self.times[after - 1]) <= (self.times[after] - now)
        row = jnp.where(nearer_before, after - 1, after)
        n_q = self.bid_depth.shape[1]
        column = jnp.clip(jnp.round(obs.inventory).astype(jnp.int32) - self.q_min, 0, n_q - 1)
        return Quotes(bid_depth=self.bid_depth[row, column], ask_depth=self.ask_depth[row, column])


def _depth_array(depth: Any, shape: tuple[int, ...], name: str) -> jax.Array:
    """A solution's depth table in the market's float dtype, NaN (not quoted) as ``+inf``;
    ``ValueError`` naming ``name`` unless its shape is ``shape``."""
    depth = np.asarray(depth, np.float64)
    if depth.shape != shape:
        raise ValueError(f"{name} has shape {depth.shape}; expected {shape}")
    return jnp.asarray(np.where(np.isnan(depth), np.inf, depth), jnp.zeros(()).dtype)


def _grids(solution: Any) -> tuple[np.ndarray, np.ndarray]:
    """A solution's ``(times f64[n_t], inventories int[n_q])``, checked: increasing times and
    consecutive integer inventories, at least two of each."""
    inventories = np.asarray(solution.inventories)
    if inventories.ndim != 1 or inventories.size < 2 or np.any(np.diff(inventories) != 1):
        raise ValueError("solution.inventories must be consecutive integers (at least two)")
    times = np.asarray(solution.times, np.float64)
    if times.ndim != 1 or times.size < 2 or np.any(np.diff(times) <= 0):
        raise ValueError("solution.times must be increasing (at least two grid times)")
    return times, inventories


def table(solution: Any) -> Table:
    """Wrap a solver's ``QuoteTable`` (``mm.optimal.*``) as a policy.

    At step ``t`` the policy quotes the table row whose time is nearest ``t * dt`` (exact when
    the table was solved on the simulator's grid, as ``bellman`` is) and the column of the
    current inventory; inventories beyond the table use its edge column. NaN entries (a side
    the solution does not quote, e.g. the bid at ``q_max``) become depth ``+inf``: no fill.
    """
    times, inventories = _grids(solution)
    shape = (times.size, inventories.size)
    return Table(
        times=jnp.asarray(times, jnp.zeros(()).dtype),
        bid_depth=_depth_array(solution.bid_depth, shape, "depth table"),
        ask_depth=_depth_array(solution.ask_depth, shape, "depth table"),
        q_min=int(inventories[0]),
    )


# ------------------------------------------------ quotes that read the alpha signal (t, q, alpha)


def _nearest_row(times: jax.Array, obs: MarketState, params: MarketParams) -> jax.Array:
    """Index of the grid time nearest ``t * dt`` (as ``Table`` reads its rows)."""
    now = obs.t * params.dt
    after = jnp.clip(jnp.searchsorted(times, now), 1, times.shape[0] - 1)
    nearer_before = (now - times[after - 1]) <= (times[after] - now)
    return jnp.where(nearer_before, after - 1, after)


def _observed_alpha(obs: MarketState) -> jax.Array:
    if obs.alpha is None:
        raise ValueError(
            "this policy reads the alpha signal: the market needs alpha_model='ou' "
            "(MarketState.alpha is None)"
        )
    return obs.alpha


@struct.dataclass
class AlphaTable:
    """Quotes read from a (time, inventory, alpha) table; see ``alpha_table``."""

    times: jax.Array  # f[n_t], session time units
    alpha_low: jax.Array  # the first alpha grid point, price units per time unit
    alpha_step: jax.Array  # spacing of the (uniform) alpha grid
    bid_depth: jax.Array  # f[n_t, n_q, n_alpha]; +inf where not quoted
    ask_depth: jax.Array  # f[n_t, n_q, n_alpha]
    q_min: int = struct.field(pytree_node=False, default=0)

    def __call__(self, obs: MarketState, params: MarketParams) -> Quotes:
        row = _nearest_row(self.times, obs, params)
        n_q, n_alpha = self.bid_depth.shape[1:]
        column = jnp.clip(jnp.round(obs.inventory).astype(jnp.int32) - self.q_min, 0, n_q - 1)
        cell = jnp.round((_observed_alpha(obs) - self.alpha_low) / self.alpha_step)
        cell = jnp.clip(cell, 0, n_alpha - 1).astype(jnp.int32)
        return Quotes(
            bid_depth=self.bid_depth[row, column, cell],
            ask_depth=self.ask_depth[row, column, cell],
        )


def alpha_table(solution: Any) -> AlphaTable:
    """Wrap a (time, inventory, alpha) solution (``mm.optimal.bellman_alpha``) as a policy.

    At step ``t`` it quotes the row of the grid time nearest ``t * dt``, the column of the
    current inventory (edge columns beyond the table) and the alpha grid point nearest the
    observed ``MarketState.alpha`` (the edge points beyond the grid): the cell the solver's
    transition probabilities bin alpha into. NaN entries become depth ``+inf`` (no fill). The
    market must have ``alpha_model="ou"``.
    """
    times, inventories = _grids(solution)
    alphas = np.asarray(solution.alphas, np.float64)
    steps = np.diff(alphas)
    if alphas.ndim != 1 or alphas.size < 2 or not np.allclose(steps, steps[0], rtol=1e-9):
        raise ValueError("solution.alphas must be a uniform grid (at least two points)")
    shape = (times.size, inventories.size, alphas.size)
    dtype = jnp.zeros(()).dtype
    return AlphaTable(
        times=jnp.asarray(times, dtype),
        alpha_low=jnp.asarray(alphas[0], dtype),
        alpha_step=jnp.asarray(steps[0], dtype),
        bid_depth=_depth_array(solution.bid_depth, shape, "bid_depth"),
        ask_depth=_depth_array(solution.ask_depth, shape, "ask_depth"),
        q_min=int(inventories[0]),
    )


@struct.dataclass
class AlphaSkew:
    """Quotes linear in the observed alpha: ``base(t, q) + alpha * slope(t, q)``; see
    ``alpha_skew``."""

    times: jax.Array  # f[n_t], session time units
    bid_base: jax.Array  # f[n_t, n_q], price units; +inf where not quoted
    ask_base: jax.Array  # f[n_t, n_q]
    bid_slope: jax.Array  # f[n_t, n_q], time units (depth per unit of alpha); 0 where unquoted
    ask_slope: jax.Array  # f[n_t, n_q]
    q_min: int = struct.field(pytree_node=False, default=0)

    def __call__(self, obs: MarketState, params: MarketParams) -> Quotes:
        row = _nearest_row(self.times, obs, params)
        n_q = self.bid_base.shape[1]
        column = jnp.clip(jnp.round(obs.inventory).astype(jnp.int32) - self.q_min, 0, n_q - 1)
        alpha = _observed_alpha(obs)
        return Quotes(
            bid_depth=self.bid_base[row, column] + alpha * self.bid_slope[row, column],
            ask_depth=self.ask_base[row, column] + alpha * self.ask_slope[row, column],
        )


def alpha_skew(solution: Any) -> AlphaSkew:
    """Wrap a first-order alpha expansion (``mm.optimal.cartea_jaimungal_alpha``) as a policy:
    ``bid_depth + alpha * bid_slope`` and ``ask_depth + alpha * ask_slope`` at the nearest grid
    time and the current inventory (edge columns beyond the table), ``alpha`` the observed
    ``MarketState.alpha``. NaN depths (a side not quoted) become ``+inf``, NaN slopes 0."""
    times, inventories = _grids(solution)
    shape = (times.size, inventories.size)
    slopes = {
        name: np.nan_to_num(np.asarray(getattr(solution, name), np.float64), nan=0.0)
        for name in ("bid_slope", "ask_slope")
    }
    return AlphaSkew(
        times=_depth_array(times, (times.size,), "times"),
        bid_base=_depth_array(solution.bid_depth, shape, "bid_depth"),
        ask_base=_depth_array(solution.ask_depth, shape, "ask_depth"),
        bid_slope=_depth_array(slopes["bid_slope"], shape, "bid_slope"),
        ask_slope=_depth_array(slopes["ask_slope"], shape, "ask_slope"),
        q_min=int(inventories[0]),
    )
