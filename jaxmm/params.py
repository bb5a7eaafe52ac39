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
``history_window``, ``vol_model``, ``jump_model``, ``order_size``, ``latency``) are static:
changing them recompiles.

Extensions are options of the same market step, all off by default:

- mid-price: ``vol_model="heston"`` (stochastic variance, full truncation) and
  ``jump_model="compound_poisson"`` (normal jumps at Poisson times); a short-term alpha
  signal in the drift, ``alpha_model="ou"`` (an Ornstein-Uhlenbeck alpha the desk observes);
- desk realism: ``tick`` (quotes rounded away from the mid onto the price grid), ``maker_fee`` /
  ``taker_fee``, ``latency`` (a quote acts ``latency`` steps after it was computed) and
  ``order_size`` (the size of each incoming market order);
- risk controls (with ``q_max``): ``spread_floor`` and ``loss_limit``;
- market orders as a control (``mo_cost``, ``mo_permanent_impact``): the desk may also send a
  market order of one unit per step (``market.Quotes.market_order``).

The desk fields ``tick``, ``maker_fee``, ``taker_fee``, ``spread_floor``, ``loss_limit``,
``mo_cost`` and ``mo_permanent_impact`` are ``None`` by default: off, and absent from the
pytree, so the default market compiles to exactly the program it had before the extensions
existed. Given a number they become leaves (sweepable, e.g.
``tick=jnp.array([0.0, 0.01, 0.05])``). The static switches draw extra noise only when on.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from flax import struct

__all__ = [
    "ALPHA_MODELS",
    "ARRIVAL_MODELS",
    "FILL_MODELS",
    "FILL_SHAPES",
    "HAWKES_STARTS",
    "JUMP_MODELS",
    "MAX_HAWKES_ARRIVALS_PER_STEP",
    "MAX_HAWKES_MEAN_PER_STEP",
    "MAX_HAWKES_RATE_PER_STEP",
    "MAX_JUMP_RATE_PER_STEP",
    "MAX_STEPS_WITH_EXTRA_NOISE",
    "NEVER",
    "ORDER_SIZES",
    "PRICE_MODELS",
    "VOL_MODELS",
    "MarketParams",
    "hawkes_branching_ratio",
    "hawkes_discrete_branching_ratio",
    "hawkes_poisson_reference",
    "hawkes_stationary_intensity",
    "validate",
]

FILL_MODELS = ("linear", "exponential")
FILL_SHAPES = ("exponential", "power", "linear")
PRICE_MODELS = ("arithmetic", "binary", "geometric", "ou")
VOL_MODELS = ("constant", "heston")
JUMP_MODELS = ("none", "compound_poisson")
ORDER_SIZES = ("unit", "fixed", "geometric")
ALPHA_MODELS = ("none", "ou")
NEVER = 2**30  # a step index no session reaches: the default "no volatility switch"
MAX_JUMP_RATE_PER_STEP = 1.0  # jump_intensity * dt; the Poisson count is resolved up to 16
MAX_STEPS_WITH_EXTRA_NOISE = 2**28 - 1  # extra noise blocks use step counters t + j * 2**28
ARRIVAL_MODELS = ("poisson", "hawkes")
HAWKES_STARTS = ("rest", "mean")
MAX_HAWKES_RATE_PER_STEP = 24.0  # the Hawkes step caps lambda_t dt here (a hard ceiling)
MAX_HAWKES_ARRIVALS_PER_STEP = 64  # and resolves the count up to 64 (P(N > 64 | 24) < 1e-11)
MAX_HAWKES_MEAN_PER_STEP = 4.0  # validated: the stationary mean lambda dt of either side


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
            ``q <= -q_max`` the ask is not filled; with order sizes a fill is clipped so that
            ``|q| <= q_max``.
        v0, kappa_v, theta_v, xi_v, rho_v: the Heston variance (``vol_model="heston"``; unused
            otherwise). ``v`` is a dimensionless multiplier of ``sigma^2``: the volatility in
            force in step ``t`` is ``sigma_at(t) * sqrt(v_t^+)`` (the volatility switch multiplies
            it). ``dv = kappa_v (theta_v - v) dt + xi_v sqrt(v) dZ_v`` with
            ``corr(dZ_v, dW) = rho_v``; ``v0`` is the initial value. ``kappa_v`` per time unit,
            ``xi_v`` per sqrt(time unit). With ``sigma = 1`` ``v`` is the variance itself (price
            units^2 per time unit). The Feller condition ``2 kappa_v theta_v >= xi_v^2`` is NOT
            required: the full-truncation scheme stays well defined when ``v`` goes negative.
        jump_intensity, jump_mean, jump_std: compound-Poisson jumps of the mid
            (``jump_model="compound_poisson"``): jumps per time unit, and the mean and standard
            deviation of one jump (price units; log-price units for the geometric model).
        tick: price grid (price units) or ``None``. Quote prices are rounded away from the mid
            onto multiples of ``tick`` (bid down, ask up); the mid itself stays continuous.
            ``0`` means no grid (useful in sweeps).
        maker_fee: fee per unit filled on a passive fill, price units (negative: a rebate), or
            ``None`` (no fees).
        taker_fee: fee per unit filled when the quote that filled was marketable (negative
            acting depth: through the mid), price units, or ``None`` (taken as 0 when only
            ``maker_fee`` is set).
        spread_floor: minimum quoted spread ``bid_depth + ask_depth``, price units, or ``None``.
            Narrower quotes are widened symmetrically (each side by half the shortfall).
        loss_limit: daily loss limit, price units, or ``None``. Once the PnL (net of fees)
            falls below ``-loss_limit`` the desk stops quoting for the rest of the episode
            (the inventory is kept and still marked to market).
        order_size_mean: mean size of an incoming market order (``order_size`` ``"fixed"``:
            the size itself, an integer; ``"geometric"``: the mean, >= 1).
        n_steps: number of decision steps in the session (static).
        fill_model: per-step fill probability, ``"linear"``: ``min(1, lambda dt)`` (Avellaneda &
            Stoikov 2008) or ``"exponential"``: ``1 - exp(-lambda dt)`` (exact Poisson clock).
        fill_shape: how the arrival intensity falls with depth (static): ``"exponential"``
            ``lambda = A exp(-k delta)`` (Avellaneda-Stoikov, the default); ``"power"``
            ``lambda = A (1 + k delta / alpha)^(-alpha)`` (a power-law tail, ``alpha =
            fill_shape_alpha > 1``; it tends to the exponential as ``alpha -> inf``);
            ``"linear"`` ``lambda = A max(0, 1 - k delta)`` (triangular: no fills beyond
            ``1/k``). All three have ``lambda(0) = A`` and log-slope ``-k`` at the mid; below
            the mid (negative depth) the power base is floored at ``1e-6`` (then the fill is
            certain).
        ou_rate, ou_level: the Ornstein-Uhlenbeck mid (``price_model="ou"``):
            ``dS = ou_rate (ou_level - S) dt + sigma dW``, stepped exactly
            (``S' = m + (S - m) e^{-rate dt} + sigma sqrt((1 - e^{-2 rate dt}) / (2 rate)) Z``);
            ``ou_rate > 0`` per time unit is required, ``ou_level`` defaults to ``S0``; ``mu``
            must be 0. ``None`` (off) otherwise.
        alpha_rate, alpha_vol, alpha0: the short-term alpha signal (``alpha_model="ou"``;
            Cartea, Jaimungal & Penalva 2015, section 10.4), ``None`` (off) otherwise. The mid
            drifts at the observed rate ``alpha_t`` (price units per time unit) on top of
            ``mu``; ``d alpha = -alpha_rate alpha dt + alpha_vol dZ`` with ``Z`` independent of
            the mid's noise. ``alpha_rate`` (zeta, per time unit, ``> 0``), ``alpha_vol`` (eta,
            price units per time unit per sqrt(time unit), ``>= 0``), ``alpha0`` (the initial
            alpha, price units per time unit; defaults to 0). The discrete dynamics of a step
            (``market``): ``S_{t+1} - S_t = (mu + alpha_t) dt + sigma sqrt(dt) Z_t`` (plus the
            adverse-selection and other jumps) and the exact OU transition
            ``alpha_{t+1} = alpha_t e^{-zeta dt} + eta sqrt((1 - e^{-2 zeta dt}) / (2 zeta)) Z'_t``.
            The alpha does not jump on fills or market orders. The stationary standard
            deviation of alpha is ``eta / sqrt(2 zeta)``.
        hawkes_decay, hawkes_self, hawkes_cross: the self-exciting market-order flow
            (``arrival_model="hawkes"``; ``None`` otherwise): the exponential kernel's decay
            ``beta > 0`` (per time unit) and the jump of a side's intensity per market order
            on the same side (``hawkes_self``) and on the other side (``hawkes_cross``), both
            ``>= 0``, arrivals per time unit. The branching ratio ``(hawkes_self +
            hawkes_cross) / hawkes_decay`` must be below 1 (and so must the discrete chain's,
            ``hawkes_discrete_branching_ratio``); see ``arrival_model``.
        fill_shape_alpha: the power shape's exponent (``> 1``; required by ``"power"``,
            ``None`` otherwise).
        mo_cost: cost of one unit of the desk's own market order relative to the mid, price
            units (half the spread plus the temporary impact; ``>= 0``), or ``None``: the desk
            sends no market orders (``market.Quotes.market_order`` must then be ``None``). A buy
            executes at ``S_t + mo_cost``, a sell at ``S_t - mo_cost``, at the start of the step
            (see ``jaxmm.market``).
        mo_permanent_impact: after the desk's market order the mid moves this many price
            units in its direction (up after a buy, down after a sell; ``>= 0``), or ``None``
            (no permanent impact; needs ``mo_cost``).
        price_model: ``"arithmetic"`` (Gaussian increments), ``"binary"`` (``+-sigma sqrt(dt)``
            with probability 1/2 each, the 2008 paper's simulation), or ``"geometric"``.
        history_window: number of past steps kept in the state for trailing statistics
            (realised volatility, recent fill rate), static.
        vol_model: ``"constant"`` (``sigma`` with its switch) or ``"heston"`` (static).
        alpha_model: ``"none"`` or ``"ou"`` (static): the short-term alpha of ``alpha_rate``.
        jump_model: ``"none"`` or ``"compound_poisson"`` (static).
        order_size: size of each incoming market order (static): ``"unit"`` (1),
            ``"fixed"`` (``order_size_mean``) or ``"geometric"`` (on ``{1, 2, ...}`` with mean
            ``order_size_mean``, drawn independently for each side and step).
        arrival_model: how market orders arrive (static). ``"poisson"`` (the default): at the
            constant base intensity; a quote fills with the per-step probability of
            ``fill_model``. ``"hawkes"``: a bivariate Hawkes process with exponential kernel,
            stepped as a chain: in step ``t`` side ``s`` (bid: sell orders, ask: buy orders)
            receives ``N_s ~ Poisson(lambda_s dt)`` market orders with ``lambda_s = mu_s +
            e_s``, ``mu_s`` the base intensity ``A * <side>_intensity_mult`` and ``e_s`` the
            excitation (``MarketState.bid_excitation``/``ask_excitation``); each order reaches
            a quote at depth ``delta`` with probability ``p = min(1, intensity_shape(delta))``
            (Poisson thinning), so the quote fills with probability ``1 - (1 - p)^N`` and, given
            the state, ``1 - exp(-lambda p dt)``. Then ``e_s' = e_s exp(-beta dt) +
            hawkes_self N_s + hawkes_cross N_other`` (the step's orders count from the next
            step on). Needs ``fill_model="exponential"`` (the thinned Poisson clock); ``lambda
            dt`` is capped at ``MAX_HAWKES_RATE_PER_STEP`` and the stationary mean ``lambda dt``
            must not exceed ``MAX_HAWKES_MEAN_PER_STEP``.
        hawkes_start: the excitation at reset (static, Hawkes only): ``"rest"`` (0, the
            default: the flow starts at its base intensity and builds up) or ``"mean"`` (the
            stationary mean excitation ``hawkes_stationary_intensity - mu``, from which the
            chain's mean intensity stays at its stationary value at every step; the variance
            still starts at 0).
        latency: a quote computed at step ``t`` acts at step ``t + latency`` (static integer
            >= 0); during the first ``latency`` steps the desk has no quote in the market.
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
    v0: float = 1.0
    kappa_v: float = 5.0
    theta_v: float = 1.0
    xi_v: float = 1.0
    rho_v: float = 0.0
    jump_intensity: float = 0.0
    jump_mean: float = 0.0
    jump_std: float = 1.0
    order_size_mean: float = 1.0
    tick: float | None = None
    maker_fee: float | None = None
    taker_fee: float | None = None
    spread_floor: float | None = None
    loss_limit: float | None = None
    fill_shape_alpha: float | None = None
    ou_rate: float | None = None
    ou_level: float | None = None
    alpha_rate: float | None = None
    alpha_vol: float | None = None
    alpha0: float | None = None
    mo_cost: float | None = None
    mo_permanent_impact: float | None = None
    hawkes_decay: float | None = None
    hawkes_self: float | None = None
    hawkes_cross: float | None = None
    n_steps: int = struct.field(pytree_node=False, default=200)
    fill_model: str = struct.field(pytree_node=False, default="linear")
    price_model: str = struct.field(pytree_node=False, default="arithmetic")
    history_window: int = struct.field(pytree_node=False, default=20)
    vol_model: str = struct.field(pytree_node=False, default="constant")
    jump_model: str = struct.field(pytree_node=False, default="none")
    order_size: str = struct.field(pytree_node=False, default="unit")
    latency: int = struct.field(pytree_node=False, default=0)
    fill_shape: str = struct.field(pytree_node=False, default="exponential")
    alpha_model: str = struct.field(pytree_node=False, default="none")
    arrival_model: str = struct.field(pytree_node=False, default="poisson")
    hawkes_start: str = struct.field(pytree_node=False, default="rest")

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

    @property
    def has_fees(self) -> bool:
        """Whether fees are charged (``maker_fee`` or ``taker_fee`` set): static."""
        return self.maker_fee is not None or self.taker_fee is not None

    @property
    def has_market_orders(self) -> bool:
        """Whether the desk may send market orders (``mo_cost`` set): static."""
        return self.mo_cost is not None

    @property
    def needs_extra_noise(self) -> bool:
        """Whether a step draws noise beyond its base block (Heston, jumps, random sizes)."""
        return (
            self.vol_model != "constant"
            or self.jump_model != "none"
            or self.order_size == "geometric"
            or self.alpha_model != "none"
            or self.arrival_model == "hawkes"
        )

    def extensions_in_use(self) -> tuple[str, ...]:
        """Names of the extension options that are switched on, in field order.

        Static switches count when not at their default; the ``None``-default desk fields when
        set (even to a neutral value such as ``tick=0``: they are then part of the pytree).
        """
        used = [name for name in _OPTIONAL_FIELDS if getattr(self, name) is not None]
        used += [name for name, default in _STATIC_SWITCHES if getattr(self, name) != default]
        return tuple(used)


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
    ("v0", lambda x: x >= 0, ">= 0"),
    ("kappa_v", lambda x: x >= 0, ">= 0"),
    ("theta_v", lambda x: x >= 0, ">= 0"),
    ("xi_v", lambda x: x >= 0, ">= 0 (the Feller condition is not required: full truncation)"),
    ("rho_v", lambda x: (x >= -1) & (x <= 1), "in [-1, 1]"),
    ("jump_intensity", lambda x: x >= 0, ">= 0"),
    ("jump_mean", lambda x: np.isfinite(x), "finite"),
    ("jump_std", lambda x: x >= 0, ">= 0"),
    ("order_size_mean", lambda x: x >= 1, ">= 1"),
    ("tick", lambda x: x >= 0, ">= 0 (0: no grid) or None"),
    ("maker_fee", lambda x: np.isfinite(x), "finite (negative: a rebate) or None"),
    ("taker_fee", lambda x: np.isfinite(x), "finite (negative: a rebate) or None"),
    ("spread_floor", lambda x: x >= 0, ">= 0 or None"),
    ("loss_limit", lambda x: x >= 0, ">= 0, inf or None"),
    ("fill_shape_alpha", lambda x: x > 1, "> 1 (fill_shape 'power') or None"),
    ("ou_rate", lambda x: x > 0, "> 0 (price_model 'ou') or None"),
    ("ou_level", lambda x: np.isfinite(x), "finite (price_model 'ou') or None"),
    ("alpha_rate", lambda x: x > 0, "> 0 (alpha_model 'ou') or None"),
    ("alpha_vol", lambda x: x >= 0, ">= 0 (alpha_model 'ou') or None"),
    ("alpha0", lambda x: np.isfinite(x), "finite (alpha_model 'ou') or None"),
    ("mo_cost", lambda x: x >= 0, ">= 0 (price units) or None"),
    ("mo_permanent_impact", lambda x: x >= 0, ">= 0 (price units, needs mo_cost) or None"),
    ("hawkes_decay", lambda x: x > 0, "> 0 per time unit (arrival_model 'hawkes') or None"),
    ("hawkes_self", lambda x: x >= 0, ">= 0 per time unit (arrival_model 'hawkes') or None"),
    ("hawkes_cross", lambda x: x >= 0, ">= 0 per time unit (arrival_model 'hawkes') or None"),
)
_MAY_BE_INFINITE = ("q_max", "loss_limit")
# desk fields that are None (off, not in the pytree) by default
_OPTIONAL_FIELDS = (
    "tick",
    "maker_fee",
    "taker_fee",
    "spread_floor",
    "loss_limit",
    "mo_cost",
    "mo_permanent_impact",
)
# static switches and their defaults
_STATIC_SWITCHES = (
    ("vol_model", "constant"),
    ("jump_model", "none"),
    ("order_size", "unit"),
    ("latency", 0),
    ("alpha_model", "none"),
    ("arrival_model", "poisson"),
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
        if getattr(params, name) is None:
            continue  # an optional desk field that is off
        value = _concrete(getattr(params, name))
        if value is None:
            continue
        if np.isnan(value).any():
            raise ValueError(f"MarketParams.{name} is NaN; allowed: {allowed}")
        if name not in _MAY_BE_INFINITE and np.isinf(value).any():
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
    _validate_extensions(params)
    _validate_hawkes(params)
    _choice(params, "fill_shape", FILL_SHAPES)
    ou = params.price_model == "ou"
    if ou != (params.ou_rate is not None) or (params.ou_level is not None and not ou):
        raise ValueError(
            f"MarketParams.ou_rate = {params.ou_rate!r}, ou_level = {params.ou_level!r} with "
            f"price_model = {params.price_model!r}; allowed: ou_rate > 0 (and optionally "
            "ou_level) exactly when price_model is 'ou'"
        )
    mu = _concrete(params.mu)
    if ou and mu is not None and np.any(mu != 0):
        raise ValueError(
            f"MarketParams.mu = {mu} with price_model = 'ou'; allowed: 0 (the OU mid's drift "
            "is its mean reversion)"
        )
    _validate_alpha(params)
    if params.mo_permanent_impact is not None and params.mo_cost is None:
        raise ValueError(
            f"MarketParams.mo_permanent_impact = {params.mo_permanent_impact!r} with mo_cost = "
            "None; allowed: None, or a number >= 0 together with mo_cost (market orders on)"
        )
    if (params.fill_shape == "power") != (params.fill_shape_alpha is not None):
        raise ValueError(
            f"MarketParams.fill_shape_alpha = {params.fill_shape_alpha!r} with fill_shape = "
            f"{params.fill_shape!r}; allowed: a number > 1 exactly when fill_shape is 'power'"
        )


def _validate_alpha(params: MarketParams) -> None:
    """The short-term alpha signal: its fields are set exactly when ``alpha_model`` is on,
    and it drifts an additive mid only."""
    _choice(params, "alpha_model", ALPHA_MODELS)
    on = params.alpha_model == "ou"
    fields = {name: getattr(params, name) for name in ("alpha_rate", "alpha_vol", "alpha0")}
    if on and (params.alpha_rate is None or params.alpha_vol is None):
        raise ValueError(
            f"MarketParams.alpha_rate = {params.alpha_rate!r}, alpha_vol = {params.alpha_vol!r} "
            "with alpha_model = 'ou'; allowed: alpha_rate > 0 and alpha_vol >= 0 (alpha0 "
            "optional, default 0)"
        )
    if not on:
        for name, value in fields.items():
            if value is not None:
                raise ValueError(
                    f"MarketParams.{name} = {value!r} with alpha_model = "
                    f"{params.alpha_model!r}; allowed: None unless alpha_model is 'ou'"
                )
    if on and params.price_model not in ("arithmetic", "binary"):
        raise ValueError(
            f"MarketParams.alpha_model = 'ou' with price_model = {params.price_model!r}; "
            "allowed: price_model 'arithmetic' or 'binary' (alpha is an additive drift in "
            "price units per time unit)"
        )


def _choice(params: MarketParams, name: str, allowed: tuple[str, ...]) -> None:
    value = getattr(params, name)
    if value not in allowed:
        raise ValueError(f"MarketParams.{name} = {value!r}; allowed: one of {allowed}")


def _validate_extensions(params: MarketParams) -> None:
    """The static switches of the extensions and the constraints that couple fields."""
    _choice(params, "vol_model", VOL_MODELS)
    _choice(params, "jump_model", JUMP_MODELS)
    _choice(params, "order_size", ORDER_SIZES)
    latency = params.latency
    if isinstance(latency, bool) or not isinstance(latency, int | np.integer) or latency < 0:
        raise ValueError(f"MarketParams.latency = {latency!r}; allowed: an integer >= 0 (steps)")
    if params.vol_model == "heston" and params.price_model == "binary":
        raise ValueError(
            "MarketParams.vol_model = 'heston' needs price_model 'arithmetic' or 'geometric' "
            "(the binary mid has no normal shock to correlate with the variance)"
        )
    if params.needs_extra_noise and params.n_steps > MAX_STEPS_WITH_EXTRA_NOISE:
        raise ValueError(
            f"MarketParams.n_steps = {params.n_steps}; allowed with vol_model / jump_model / "
            f"order_size='geometric': at most {MAX_STEPS_WITH_EXTRA_NOISE}"
        )
    if params.jump_model != "none":
        rate = _concrete(params.jump_intensity)
        step = _concrete(params.T)
        if rate is not None and step is not None:
            per_step = rate * step / params.n_steps
            if np.any(per_step > MAX_JUMP_RATE_PER_STEP):
                raise ValueError(
                    f"MarketParams.jump_intensity = {rate} gives {np.max(per_step):.3g} jumps per "
                    f"step; allowed: jump_intensity * dt <= {MAX_JUMP_RATE_PER_STEP} (the Poisson "
                    "count of a step is resolved up to 16 jumps)"
                )
    if params.order_size == "fixed":
        size = _concrete(params.order_size_mean)
        if size is not None and not np.all(size == np.round(size)):
            raise ValueError(
                f"MarketParams.order_size_mean = {size} with order_size='fixed'; allowed: an "
                "integer >= 1 (inventories stay integers)"
            )


_HAWKES_FIELDS = ("hawkes_decay", "hawkes_self", "hawkes_cross")


def _validate_hawkes(params: MarketParams) -> None:
    """``arrival_model`` and the Hawkes fields: set together, stationary, within the rate bound."""
    _choice(params, "arrival_model", ARRIVAL_MODELS)
    _choice(params, "hawkes_start", HAWKES_STARTS)
    hawkes = params.arrival_model == "hawkes"
    if not hawkes and params.hawkes_start != "rest":
        raise ValueError(
            f"MarketParams.hawkes_start = {params.hawkes_start!r} with arrival_model = "
            f"{params.arrival_model!r}; allowed: 'rest' (the default) unless arrival_model is "
            "'hawkes'"
        )
    given = {name: getattr(params, name) for name in _HAWKES_FIELDS}
    if any((value is None) == hawkes for value in given.values()):
        settings = ", ".join(f"{name} = {value!r}" for name, value in given.items())
        raise ValueError(
            f"MarketParams.{settings} with arrival_model = {params.arrival_model!r}; allowed: "
            "hawkes_decay > 0, hawkes_self >= 0 and hawkes_cross >= 0 all set exactly when "
            "arrival_model is 'hawkes'"
        )
    if not hawkes:
        return
    if params.fill_model != "exponential":
        raise ValueError(
            f"MarketParams.fill_model = {params.fill_model!r} with arrival_model = 'hawkes'; "
            "allowed: 'exponential' (Hawkes fills thin the step's Poisson count of market "
            "orders, whose marginal is 1 - exp(-lambda p dt); the 'linear' min(1, lambda dt) "
            "has no arrival count behind it)"
        )
    values = [_concrete(getattr(params, name)) for name in (*_HAWKES_FIELDS, "T")]
    if any(value is None for value in values):
        return  # traced inside jit: validated at the boundary
    excitation = (
        f"MarketParams.hawkes_self + hawkes_cross = {values[1] + values[2]} with "
        f"hawkes_decay = {values[0]}"
    )
    branching = hawkes_branching_ratio(params)
    if np.any(branching >= 1):
        raise ValueError(
            f"{excitation} gives a branching ratio (hawkes_self + hawkes_cross) / hawkes_decay "
            f"= {np.max(branching):.6g}; allowed: < 1 (a stationary flow)"
        )
    discrete = hawkes_discrete_branching_ratio(params)
    if np.any(discrete >= 1):
        raise ValueError(
            f"{excitation} and dt = T / n_steps gives a discrete-time branching ratio "
            f"(hawkes_self + hawkes_cross) dt / (1 - exp(-hawkes_decay dt)) = "
            f"{np.max(discrete):.6g}; allowed: < 1 (the stepped chain is stationary; use more "
            "steps or a lower excitation)"
        )
    bid, ask = hawkes_stationary_intensity(params)
    per_step = np.maximum(bid, ask) * values[3] / params.n_steps
    if np.any(per_step > MAX_HAWKES_MEAN_PER_STEP):
        raise ValueError(
            f"MarketParams.A = {_concrete(params.A)} with the Hawkes excitation gives a "
            f"stationary mean of {np.max(per_step):.4g} market orders per step; allowed: at most "
            f"{MAX_HAWKES_MEAN_PER_STEP} (a step resolves lambda dt up to "
            f"{MAX_HAWKES_RATE_PER_STEP}; use more steps)"
        )


def _hawkes_numbers(params: MarketParams) -> tuple[np.ndarray, ...]:
    if params.arrival_model != "hawkes":
        raise ValueError(
            f"MarketParams.arrival_model = {params.arrival_model!r}; allowed: 'hawkes' here"
        )
    return tuple(
        np.asarray(getattr(params, name), np.float64)
        for name in (*_HAWKES_FIELDS, "T", "A", "bid_intensity_mult", "ask_intensity_mult")
    )


def hawkes_branching_ratio(params: MarketParams) -> np.ndarray:
    """``(hawkes_self + hawkes_cross) / hawkes_decay``: the continuous-time branching ratio
    (expected direct offspring of one market order, both sides together), float64 on the host
    (the shape of the fields: an array for a sweep)."""
    decay, self_jump, cross_jump, *_ = _hawkes_numbers(params)
    return (self_jump + cross_jump) / decay


def hawkes_discrete_branching_ratio(params: MarketParams) -> np.ndarray:
    """``(hawkes_self + hawkes_cross) dt / (1 - exp(-hawkes_decay dt))``: the branching ratio
    of the stepped chain, whose excitation keeps a step's orders undecayed until the next step;
    it exceeds ``hawkes_branching_ratio`` and tends to it as ``dt -> 0`` (``n (1 + beta dt / 2
    + O(dt^2))``). Float64 on the host."""
    decay, self_jump, cross_jump, session, *_ = _hawkes_numbers(params)
    dt = session / params.n_steps
    return (self_jump + cross_jump) * dt / -np.expm1(-decay * dt)


def hawkes_stationary_intensity(params: MarketParams) -> tuple[np.ndarray, np.ndarray]:
    """The stationary mean intensities ``(bid, ask)`` of the stepped Hawkes chain, market
    orders per time unit (float64 on the host).

    In stationarity ``E e' = E e`` with ``e' = e exp(-beta dt) + K N``, ``E N = lambda_bar dt``
    and ``K = [[self, cross], [cross, self]]``: ``(1 - exp(-beta dt)) (lambda_bar - mu) = dt K
    lambda_bar``, so ``lambda_bar = (I - g K)^{-1} mu`` with ``g = dt / (1 - exp(-beta dt))``.
    As ``dt -> 0`` ``g -> 1 / beta``: the continuous Hawkes mean ``(I - K / beta)^{-1} mu``,
    ``mu / (1 - (self + cross) / beta)`` for symmetric base intensities.
    """
    decay, self_jump, cross_jump, session, base, bid_mult, ask_mult = _hawkes_numbers(params)
    dt = session / params.n_steps
    gain = dt / -np.expm1(-decay * dt)
    bid_base, ask_base = base * bid_mult, base * ask_mult
    diagonal = 1.0 - gain * self_jump
    off = gain * cross_jump
    determinant = diagonal**2 - off**2
    bid = (diagonal * bid_base + off * ask_base) / determinant
    ask = (diagonal * ask_base + off * bid_base) / determinant
    return bid, ask


def hawkes_poisson_reference(params: MarketParams) -> MarketParams:
    """The Poisson market with the Hawkes market's stationary mean intensity on each side.

    ``arrival_model="poisson"``, the Hawkes fields ``None``, and ``A`` replaced by the
    stationary mean ``lambda_bar`` (``hawkes_stationary_intensity``) with the side multipliers
    unchanged, ``A' = lambda_bar_bid / bid_intensity_mult``; when the two sides' means are not
    in the ratio of the multipliers (asymmetric base intensities with cross-excitation), the
    multipliers are set to ``lambda_bar / A'`` instead, so that each side's intensity is its
    stationary mean. The exact solvers of ``jaxmm.optimal`` solve this market: its optimum is
    the "Poisson-optimal table", the best known (t, q) table for the Hawkes market, not its
    optimum (the value there depends on the excitation, which a (t, q) table ignores).
    """
    params.validate()
    bid, ask = hawkes_stationary_intensity(params)
    bid_mult = np.asarray(params.bid_intensity_mult, np.float64)
    ask_mult = np.asarray(params.ask_intensity_mult, np.float64)
    base = np.where(
        bid_mult > 0,
        bid / np.where(bid_mult > 0, bid_mult, 1.0),
        np.where(ask_mult > 0, ask / np.where(ask_mult > 0, ask_mult, 1.0), params.A),
    )
    if np.allclose(bid * ask_mult, ask * bid_mult, rtol=1e-12, atol=0.0):
        updates = {"A": _like(params.A, base)}
    else:
        safe = np.where(base > 0, base, 1.0)
        updates = {
            "A": _like(params.A, base),
            "bid_intensity_mult": _like(params.bid_intensity_mult, bid / safe),
            "ask_intensity_mult": _like(params.ask_intensity_mult, ask / safe),
        }
    return params.replace(
        arrival_model="poisson",
        hawkes_start="rest",
        hawkes_decay=None,
        hawkes_self=None,
        hawkes_cross=None,
        **updates,
    ).validate()


def _like(template: Any, value: np.ndarray) -> Any:
    """``value`` as a Python float when ``template`` is a scalar, else as an array."""
    return float(value) if np.ndim(template) == 0 and np.ndim(value) == 0 else value
