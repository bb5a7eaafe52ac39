"""Market parameters: one frozen pytree holding everything the market step needs.

Units (the conventions every module of jaxmm follows):

- Time is in session units: the session is ``[0, T]`` and ``dt = T / n_steps``; step ``i`` covers
  ``[i dt, (i + 1) dt)``.
- ``sigma``: price units per sqrt(time unit) for the ``"arithmetic"`` and ``"binary"`` mid models;
  a relative volatility (per sqrt(time unit)) for ``"geometric"``.
- ``A``: market-order arrivals per time unit that would hit a quote at depth 0; ``k``: per price
  unit. The intensity at depth ``delta`` is ``A exp(-k delta)``.
- Depth ``delta`` is the distance of a quote from the mid: ``bid = S - delta_b``,
  ``ask = S + delta_a``.

Numeric fields are pytree leaves, so a sweep can ``vmap`` over any of them (``sigma``, ``A``,
``adverse_selection``, ...). Sizes and model choices (``n_steps``, ``fill_model``, ``price_model``,
``history_window``) are static: changing them recompiles.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from flax import struct

FILL_MODELS = ("linear", "exponential")
PRICE_MODELS = ("arithmetic", "binary", "geometric")
NEVER = 2**30  # a step index no session reaches: the default "no volatility switch"


@struct.dataclass
class MarketParams:
    """Parameters of the simulated market (frozen; change fields with ``p.replace(...)``).

    Attributes:
        S0: initial mid-price, price units.
        sigma: mid-price volatility, price units per sqrt(time unit) (relative for geometric).
        T: session length, time units.
        A: base arrival intensity of market orders at depth 0, per time unit.
        k: decay of the intensity with depth, per price unit.
        mu: drift of the mid, price units per time unit (relative per time unit for geometric).
        adverse_selection: after each fill the mid jumps this many price units against the
            market maker (down after a bid fill, up after an ask fill).
        bid_intensity_mult: multiplies ``A`` for sell market orders (the ones that hit our bid).
        ask_intensity_mult: multiplies ``A`` for buy market orders (the ones that lift our ask).
        vol_switch_step: from this step on, the volatility is ``sigma * vol_switch_factor``.
        vol_switch_factor: volatility multiplier after ``vol_switch_step``.
        q_max: inventory limit (``inf``: none). At ``q >= q_max`` the bid is not filled, at
            ``q <= -q_max`` the ask is not filled.
        n_steps: number of decision steps in the session (static).
        fill_model: per-step fill probability, ``"linear"``: ``min(1, lambda dt)`` (Avellaneda &
            Stoikov 2008) or ``"exponential"``: ``1 - exp(-lambda dt)`` (exact Poisson clock).
        price_model: ``"arithmetic"`` (Gaussian increments), ``"binary"`` (``+-sigma sqrt(dt)``
            with probability 1/2 each, the 2008 paper's simulation), or ``"geometric"``.
        history_window: number of past steps kept in the state for trailing statistics
            (realised volatility, recent fill rate), static.
    """

    S0: float = 100.0
    sigma: float = 2.0
    T: float = 1.0
    A: float = 100.0
    k: float = 1.5
    mu: float = 0.0
    adverse_selection: float = 0.0
    bid_intensity_mult: float = 1.0
    ask_intensity_mult: float = 1.0
    vol_switch_step: int = NEVER
    vol_switch_factor: float = 1.0
    q_max: float = math.inf
    n_steps: int = struct.field(pytree_node=False, default=200)
    fill_model: str = struct.field(pytree_node=False, default="linear")
    price_model: str = struct.field(pytree_node=False, default="arithmetic")
    history_window: int = struct.field(pytree_node=False, default=20)

    @property
    def dt(self) -> Any:
        """Length of one step, time units."""
        return self.T / self.n_steps

    def validate(self) -> MarketParams:
        """Raise ``ValueError`` naming the first invalid field; return ``self`` if all is well.

        Leaves may be scalars or arrays (a sweep); every element is checked. Traced values
        (inside ``jit``) cannot be checked and are skipped: validate at the boundary.
        """
        validate(self)
        return self


# (field, predicate on a float64 array, allowed-range text)
_RULES = (
    ("S0", lambda x: x > 0, "> 0"),
    ("sigma", lambda x: x >= 0, ">= 0"),
    ("T", lambda x: x > 0, "> 0"),
    ("A", lambda x: x >= 0, ">= 0"),
    ("k", lambda x: x > 0, "> 0"),
    ("mu", lambda x: np.isfinite(x), "finite"),
    ("adverse_selection", lambda x: x >= 0, ">= 0"),
    ("bid_intensity_mult", lambda x: x >= 0, ">= 0"),
    ("ask_intensity_mult", lambda x: x >= 0, ">= 0"),
    ("vol_switch_step", lambda x: (x >= 0) & (x == np.round(x)), "an integer >= 0"),
    ("vol_switch_factor", lambda x: x >= 0, ">= 0"),
    ("q_max", lambda x: (x >= 1) & ((x == np.round(x)) | np.isinf(x)), "an integer >= 1 or inf"),
)


def _concrete(value: Any) -> np.ndarray | None:
    if isinstance(value, jax.core.Tracer):
        return None
    return np.asarray(value, dtype=np.float64)


def validate(params: MarketParams) -> None:
    """Check every field of ``params``; raise ``ValueError`` naming the field and its range."""
    if not isinstance(params, MarketParams):
        raise TypeError(f"expected MarketParams, got {type(params).__name__}")
    for name, ok, allowed in _RULES:
        value = _concrete(getattr(params, name))
        if value is None:
            continue
        if np.isnan(value).any():
            raise ValueError(f"MarketParams.{name} is NaN; allowed: {allowed}")
        if name != "q_max" and np.isinf(value).any():
            raise ValueError(f"MarketParams.{name} is infinite; allowed: finite and {allowed}")
        if not np.all(ok(value)):
            bad = value[~ok(value)] if value.ndim else value
            raise ValueError(f"MarketParams.{name} = {bad} is out of range; allowed: {allowed}")
    if not isinstance(params.n_steps, int | np.integer) or params.n_steps < 1:
        raise ValueError(f"MarketParams.n_steps = {params.n_steps!r}; allowed: an integer >= 1")
    if params.fill_model not in FILL_MODELS:
        raise ValueError(
            f"MarketParams.fill_model = {params.fill_model!r}; allowed: one of {FILL_MODELS}"
        )
    if params.price_model not in PRICE_MODELS:
        raise ValueError(
            f"MarketParams.price_model = {params.price_model!r}; allowed: one of {PRICE_MODELS}"
        )
    if not isinstance(params.history_window, int | np.integer) or params.history_window < 1:
        raise ValueError(
            f"MarketParams.history_window = {params.history_window!r}; allowed: an integer >= 1"
        )
