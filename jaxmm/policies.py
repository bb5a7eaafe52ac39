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

from jaxmm.market import MarketState, Quotes, time_to_go
from jaxmm.params import MarketParams


class Policy(Protocol):
    def __call__(self, obs: MarketState, params: MarketParams) -> Quotes: ...


def _check(name: str, value: Any, ok, allowed: str) -> None:
    if value is None or isinstance(value, jax.core.Tracer):
        return
    array = np.asarray(value, dtype=np.float64)
    if np.isnan(array).any() or not np.all(ok(array)):
        raise ValueError(f"{name} = {value!r} is out of range; allowed: {allowed}")


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
    _check("half_spread", half_spread, np.isfinite, "finite")
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
    _check("gamma", gamma, lambda x: x >= 0, ">= 0")
    _check("k", k, lambda x: x > 0, "> 0")
    _check("sigma", sigma, lambda x: x >= 0, ">= 0")
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
    _check("gamma", gamma, lambda x: x >= 0, ">= 0")
    _check("k", k, lambda x: x > 0, "> 0")
    _check("A", A, lambda x: x > 0, "> 0")
    _check("sigma", sigma, lambda x: x >= 0, ">= 0")
    return GLFTAsymptotic(gamma=gamma, k=k, A=A, sigma=sigma)
