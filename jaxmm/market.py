"""The market: ``MarketState``, ``reset`` and ``step`` -- the one place where dynamics live.

One step, in this order:

1. observe ``(t, S_t, q_t)`` (the policy has already turned this into ``Quotes``);
2. the desk's controls turn the policy's quotes into the quotes that act (``_acting_quotes``; all
   off by default): spread floor, tick grid, latency queue, loss-limit halt (see below);
3. fills are drawn for quotes at ``S_t - delta_b`` and ``S_t + delta_a``: a side is filled with
   the per-step probability of ``lambda(delta) = A exp(-k delta)`` under ``params.fill_model``,
   independently of the other side; at ``q_t >= q_max`` the bid is not filled, at
   ``q_t <= -q_max`` the ask is not filled;
4. inventory and spread capture update: ``q_{t+1} = q_t + bid_fill - ask_fill``,
   spread capture ``+= bid_fill * delta_b + ask_fill * delta_a``, fees ``-=`` (if any);
5. adverse selection: the mid jumps ``adverse_selection * (ask_fill - bid_fill)``;
6. the mid moves to ``S_{t+1}`` (``params.price_model``, with the Heston volatility and the
   compound-Poisson jumps when on); the Heston variance moves to ``v_{t+1}``;
7. mark to market: inventory PnL ``+= q_{t+1} * (S_{t+1} - S_t)``.

Market orders (``MarketParams.mo_cost`` set; off by default): the desk's own market order
(``Quotes.market_order``, ``m`` in ``{-1, 0, +1}``) executes first, at the start of the step,
at ``S_t + m mo_cost`` (a buy pays ``S_t + mo_cost``, a sell receives ``S_t - mo_cost``):
``q -> q_t + m`` before step 3, whose fills and inventory limits then start from ``q_t + m``;
its cost ``|m| mo_cost`` is booked in the spread capture (a trade at depth ``-mo_cost``) and
``StepInfo.market_order_cost``; ``taker_fee`` (if set) is charged on it; its permanent impact
``mo_permanent_impact * m`` joins the adverse-selection jump of step 5 (before the mid's own
move), so ``q_{t+1} = q_t + m + bid_fill - ask_fill`` is marked to a mid that includes it. A
market order that would take ``|q|`` beyond ``q_max`` is not sent (``m = 0``: no trade, no
cost); neither is one after the loss-limit halt. Latency, tick and spread floor act on the
quotes only: the market order is never delayed.

PnL is carried as increments (spread capture plus inventory PnL minus fees), never as
``cash + q S``, so it stays exact in float32 whatever the price level.

Randomness: a step consumes one ``Noise``: three uniforms in (0, 1) from one 64-bit Threefry
block: ``u_bid`` and ``u_ask`` decide the fills, ``u_mid`` drives the mid (a normal
``sqrt(2) erfinv(2 u_mid - 1)``, or the sign of ``u_mid - 1/2`` for the binary model). The layout
does not depend on the quotes, so for the same noise every policy sees the same mid path
(common random numbers). ``step(state, quotes, key, params)`` draws the noise from ``key``;
``step_with_noise`` takes it explicitly.

Extensions (each is an option of ``MarketParams`` and off by default, in which case the
step is the same program as without them):

- Heston variance (``vol_model="heston"``): ``sigma_t = sigma_at(t) sqrt(v_t^+)`` drives the mid;
  ``v_{t+1} = v_t + kappa_v (theta_v - v_t^+) dt + xi_v sqrt(v_t^+ dt) Z_v`` with
  ``Z_v = rho_v Z + sqrt(1 - rho_v^2) Z'`` where ``Z`` is the mid's normal (full truncation,
  Lord, Koekkoek & van Dijk 2010: ``v`` itself may go negative, ``v^+ = max(v, 0)`` acts).
- Jumps (``jump_model="compound_poisson"``): in each step ``N ~ Poisson(jump_intensity dt)``
  jumps (the exact count, from a uniform by inverse CDF, resolved up to 16 per step), with sizes
  ``N(jump_mean, jump_std^2)``; their sum ``N m + s sqrt(N) Z_J`` is added to the mid's increment
  (to the log-return for the geometric model).
- Order sizes (``order_size``): an incoming market order has a size (``"fixed"`` or
  ``"geometric"``, one per side and step); a fill moves the inventory by the size, clipped so that
  ``|q| <= q_max``; spread capture, fees and the adverse-selection jump scale with it, and
  ``StepInfo.bid_fill``/``ask_fill`` are then quantities (units), not 0/1.
- Fees: ``maker_fee`` per unit on a fill of a passive quote, ``taker_fee`` per unit when the quote
  that filled was marketable (acting depth < 0, through the mid). ``pnl = spread_pnl +
  inventory_pnl - fees``; ``MarketState.fees`` and ``StepInfo.fees`` carry them.
- Desk controls, applied to the policy's quotes in this order: the spread floor widens both
  depths by half the shortfall; the tick rounds the prices away from the mid onto the grid (the
  mid stays continuous; fill probability and spread capture use the rounded depth); latency
  queues the quote as a price (a depth and the mid it was computed at) and the quote acting at
  step ``t`` is the one computed at ``t - latency`` (none in the first ``latency`` steps), so its
  acting depth is ``depth + (S_t - S_{t-latency})`` on the bid and ``depth - (S_t -
  S_{t-latency})`` on the ask: a stale price; the loss-limit halt (once ``pnl < -loss_limit``,
  set after the step) cancels both quotes at once for the rest of the episode.
- Short-term alpha (``alpha_model="ou"``, Cartea, Jaimungal & Penalva 2015, section 10.4): the
  state carries the observed alpha ``alpha_t`` (price units per time unit); the mid's increment
  gains the drift ``alpha_t dt`` (alpha held at its value at the start of the step:
  ``S_{t+1} - S_t = jump + (mu + alpha_t) dt + sigma sqrt(dt) Z``), and alpha moves by its exact
  OU transition ``alpha_{t+1} = alpha_t e^{-zeta dt} + eta sqrt((1 - e^{-2 zeta dt}) / (2 zeta))
  Z_alpha`` (``zeta = alpha_rate``, ``eta = alpha_vol``), ``Z_alpha`` independent of ``Z`` and of
  the fills. Alpha does not jump on fills or market orders (CJP's optional jumps are not
  modelled).
- Self-exciting order flow (``arrival_model="hawkes"``): per side, the step's count of market
  orders is ``N ~ Poisson(lambda_t dt)`` with ``lambda_t`` the base intensity plus the state's
  excitation (``hawkes_arrivals``; the count does not depend on the quotes), each order reaches
  the quote with probability ``p(delta) = min(1, intensity_shape(delta))``, so the quote fills
  with probability ``1 - (1 - p)^N`` (``1 - exp(-lambda_t p dt)`` given the state: Poisson
  thinning), and the excitation decays exactly and jumps by the step's orders,
  ``e_{t+1} = e_t exp(-beta dt) + hawkes_self N_same + hawkes_cross N_other``.

Extra randomness (the Heston ``Z'``, the jump count and size, the order sizes, the Hawkes counts,
the alpha's ``Z_alpha``) comes from extra Threefry blocks at the counters ``(episode, t + j 2^28)``
(``j = 1, 2, 3, 4``; ``j = 7`` for the alpha) of the same stream,
disjoint from the base block ``(episode, t)``; they are drawn only when the option is on and do
not depend on the quotes (common random numbers hold). ``Noise`` carries its counter
(``stream``, ``episode``, ``t``) for this; a hand-built ``Noise`` may give the extra uniforms
explicitly instead (``u_vol``, ``u_jump_count``, ``u_jump_size``, ``u_bid_size``,
``u_ask_size``, ``u_bid_arrivals``, ``u_ask_arrivals``, ``u_alpha``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxmm.params import MAX_HAWKES_ARRIVALS_PER_STEP, MAX_HAWKES_RATE_PER_STEP, MarketParams

__all__ = [
    "ALPHA_BLOCK",
    "MarketState",
    "Noise",
    "Quotes",
    "StepInfo",
    "alpha_transition",
    "counter_noise",
    "counter_words",
    "extension_noise",
    "fill_probability",
    "fill_probability_numpy",
    "float_dtype",
    "hawkes_arrivals",
    "hawkes_fill_probability",
    "intensity_shape",
    "intensity_shape_numpy",
    "intensity_shape_slope",
    "noise_from_words",
    "normal_from_uniform",
    "recent_fill_rate",
    "reset",
    "sigma_at",
    "step",
    "step_with_noise",
    "stream_key",
    "time_to_go",
    "trailing_volatility",
    "volatility",
]


def float_dtype() -> jnp.dtype:
    """float32, or float64 when ``jax_enable_x64`` is on."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


@struct.dataclass
class Quotes:
    """Depths of the two quotes from the mid, price units (``bid = S - bid_depth``).

    A depth may be negative (a bid above the mid fills with probability above ``A dt``) or
    ``+inf`` (that side is not quoted).

    ``market_order``: the desk's own market order of one unit, sent at the start of the step
    (see the module docstring): ``-1`` sell, ``0`` none, ``+1`` buy, as an int or a float
    (rounded to the nearest integer, halves to even, then clipped to ``[-1, 1]``; NaN counts
    as 0). ``None`` (the default, absent from the pytree): no market order. Needs
    ``MarketParams.mo_cost``.
    """

    bid_depth: jax.Array
    ask_depth: jax.Array
    market_order: jax.Array | None = None


@struct.dataclass
class Noise:
    """Uniforms in the open interval (0, 1) driving one step of one episode.

    ``u_bid``, ``u_ask``, ``u_mid``: the base block (fills and mid). The rest is optional:
    ``stream`` (``uint32[2]``), ``episode`` and ``t`` (``uint32``) are the counter the noise was
    drawn at (``counter_noise`` fills them), from which a step draws the extra noise of the
    extensions it has switched on; ``u_vol`` (Heston ``Z'``), ``u_jump_count``, ``u_jump_size``,
    ``u_bid_size`` and ``u_ask_size``, ``u_bid_arrivals`` and ``u_ask_arrivals`` (the Hawkes
    counts of sell and buy market orders) and ``u_alpha`` (the alpha signal's ``Z_alpha``) give
    that extra noise explicitly (they take precedence).
    """

    u_bid: jax.Array
    u_ask: jax.Array
    u_mid: jax.Array
    stream: jax.Array | None = None
    episode: jax.Array | None = None
    t: jax.Array | None = None
    u_vol: jax.Array | None = None
    u_jump_count: jax.Array | None = None
    u_jump_size: jax.Array | None = None
    u_bid_size: jax.Array | None = None
    u_ask_size: jax.Array | None = None
    u_alpha: jax.Array | None = None
    u_bid_arrivals: jax.Array | None = None
    u_ask_arrivals: jax.Array | None = None


@struct.dataclass
class MarketState:
    """State of one episode at the start of step ``t``.

    Attributes:
        t: step index, int32, in ``[0, n_steps]``.
        mid: mid-price ``S_t``, price units.
        inventory: ``q_t``, units of the asset (integer-valued float).
        pnl: PnL since the start, ``spread_pnl + inventory_pnl``, price units.
        spread_pnl: cumulative spread capture (sum of filled depths), price units.
        inventory_pnl: cumulative mark-to-market of the inventory, price units.
        recent_returns: ``f[history_window]`` ring buffer of the last mid changes; the change of
            step ``i`` is stored at ``i % history_window``.
        recent_fills: ``f[history_window]`` ring buffer of the number of fills (0, 1 or 2;
            units filled with order sizes).

    Fields of the extensions, ``None`` when their option is off:
        variance: Heston ``v_t`` (``vol_model="heston"``); may be negative under full
            truncation, ``max(v, 0)`` acts.
        fees: cumulative fees paid, price units (``maker_fee``/``taker_fee`` set); then
            ``pnl = spread_pnl + inventory_pnl - fees``.
        halted: bool, the loss limit was hit: no more quotes this episode (``loss_limit`` set).
        pending_bid, pending_ask, pending_mid: ``f[latency]`` ring buffers of the quotes waiting
            to act (depths and the mid they were computed at); the quote computed at step ``i``
            is stored at ``i % latency`` and acts at step ``i + latency`` (``latency > 0``).
        alpha: the observed short-term alpha ``alpha_t`` (``alpha_model="ou"``), price units
            per time unit: the mid's drift over step ``t`` is ``alpha_t dt``.
        bid_excitation, ask_excitation: the Hawkes excitation ``e_t`` of sell (they hit the
            bid) and buy (they lift the ask) market orders: the intensity above the base
            intensity, arrivals per time unit, >= 0 (``arrival_model="hawkes"``; at reset 0
            or the stationary mean, ``MarketParams.hawkes_start``).
    """

    t: jax.Array
    mid: jax.Array
    inventory: jax.Array
    pnl: jax.Array
    spread_pnl: jax.Array
    inventory_pnl: jax.Array
    recent_returns: jax.Array
    recent_fills: jax.Array
    variance: jax.Array | None = None
    fees: jax.Array | None = None
    halted: jax.Array | None = None
    pending_bid: jax.Array | None = None
    pending_ask: jax.Array | None = None
    pending_mid: jax.Array | None = None
    alpha: jax.Array | None = None
    bid_excitation: jax.Array | None = None
    ask_excitation: jax.Array | None = None


@struct.dataclass
class StepInfo:
    """What happened in one step (all per episode; increments, not cumulative values).

    ``bid_fill``/``ask_fill`` are the quantities filled (0 or 1 unless order sizes are on);
    ``bid_depth``/``ask_depth`` the depths that acted (after the desk's controls, the tick and
    the latency; the policy's own when those are off); ``fees`` the fees of the step (``None``
    when the market has none); ``pnl = spread_pnl + inventory_pnl - fees``.

    With market orders on (``MarketParams.mo_cost`` set; ``None`` otherwise):
    ``market_order`` the signed units the desk's market order executed (0 when none was sent
    or it was refused at the inventory limit) and ``market_order_cost`` its cost
    ``|market_order| * mo_cost`` (price units, >= 0), already subtracted in ``spread_pnl``.
    Under ``arrival_model="hawkes"``: ``bid_arrivals``/``ask_arrivals`` are the step's counts
    of sell/buy market orders (``None`` otherwise) and the fill probabilities are those given
    the counts, ``1 - (1 - p)^N``.
    """

    bid_fill: jax.Array
    ask_fill: jax.Array
    bid_fill_prob: jax.Array
    ask_fill_prob: jax.Array
    spread_pnl: jax.Array
    inventory_pnl: jax.Array
    pnl: jax.Array
    mid_change: jax.Array
    bid_depth: jax.Array
    ask_depth: jax.Array
    fees: jax.Array | None = None
    market_order: jax.Array | None = None
    market_order_cost: jax.Array | None = None
    bid_arrivals: jax.Array | None = None
    ask_arrivals: jax.Array | None = None


def reset(key: jax.Array, params: MarketParams) -> MarketState:
    """The state at the start of a session: ``t = 0``, ``S = S0``, no inventory, no PnL.

    With the extensions: ``v = v0`` (Heston), no fees, not halted, and an empty latency queue
    (depth ``+inf``: no quote acts during the first ``latency`` steps), ``alpha = alpha0``
    (0 when ``alpha0`` is None) with the alpha signal, and the Hawkes excitation of
    ``hawkes_start`` (0, or its stationary mean).

    ``key`` is accepted for a uniform interface (random initial conditions are a natural
    extension); the current initial state is deterministic.
    """
    del key
    dtype = float_dtype()
    zero = jnp.zeros((), dtype)
    window = jnp.zeros((params.history_window,), dtype)
    extensions = {}
    if params.vol_model == "heston":
        extensions["variance"] = jnp.asarray(params.v0, dtype)
    if params.has_fees:
        extensions["fees"] = zero
    if params.loss_limit is not None:
        extensions["halted"] = jnp.zeros((), jnp.bool_)
    if params.latency > 0:
        empty = jnp.full((params.latency,), jnp.inf, dtype)
        extensions["pending_bid"] = empty
        extensions["pending_ask"] = empty
        extensions["pending_mid"] = jnp.full((params.latency,), params.S0, dtype)
    if params.alpha_model != "none":
        extensions["alpha"] = jnp.asarray(0.0 if params.alpha0 is None else params.alpha0, dtype)
    if params.arrival_model == "hawkes":
        bid_excitation, ask_excitation = _initial_excitation(params)
        extensions["bid_excitation"] = bid_excitation
        extensions["ask_excitation"] = ask_excitation
    return MarketState(
        t=jnp.zeros((), jnp.int32),
        mid=jnp.asarray(params.S0, dtype),
        inventory=zero,
        pnl=zero,
        spread_pnl=zero,
        inventory_pnl=zero,
        recent_returns=window,
        recent_fills=window,
        **extensions,
    )


def _initial_excitation(params: MarketParams) -> tuple[jax.Array, jax.Array]:
    """The Hawkes excitation at reset: 0 (``hawkes_start="rest"``) or the stationary mean
    ``(I - g K)^{-1} mu - mu`` with ``g = dt / (1 - exp(-beta dt))`` (``"mean"``; the JAX form
    of ``params.hawkes_stationary_intensity``, so it traces and vmaps with the fields)."""
    dtype = float_dtype()
    if params.hawkes_start == "rest":
        zero = jnp.zeros((), dtype)
        return zero, zero
    dt = params.dt
    gain = dt / -jnp.expm1(-params.hawkes_decay * dt)
    bid_base = params.A * params.bid_intensity_mult
    ask_base = params.A * params.ask_intensity_mult
    diagonal = 1.0 - gain * params.hawkes_self
    off = gain * params.hawkes_cross
    determinant = diagonal**2 - off**2
    bid = (diagonal * bid_base + off * ask_base) / determinant - bid_base
    ask = (diagonal * ask_base + off * bid_base) / determinant - ask_base
    return jnp.asarray(bid, dtype), jnp.asarray(ask, dtype)


_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def threefry2x32(key: jax.Array, x0: jax.Array, x1: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Threefry-2x32 with 20 rounds (Salmon et al. 2011), the block cipher of ``jax.random``.

    Bit-identical to ``jax.extend.random.threefry_2x32`` but applied to counters we choose, which
    lets XLA fuse it into the step: on a CPU it is several times faster than ``jax.random.bits``.

    Args:
        key: ``uint32[..., 2]`` (one key, or one per counter). x0, x1: ``uint32`` counters of any
            (common) shape.
    Returns:
        Two ``uint32`` arrays of random words with the shape of the counters.
    """
    k0, k1 = key[..., 0], key[..., 1]
    k2 = k0 ^ k1 ^ jnp.uint32(0x1BD11BDA)
    schedule = (k0, k1, k2)
    x0 = x0 + k0
    x1 = x1 + k1
    for block in range(5):
        for rotation in _THREEFRY_ROTATIONS[block % 2]:
            x0 = x0 + x1
            x1 = (x1 << jnp.uint32(rotation)) | (x1 >> jnp.uint32(32 - rotation))
            x1 = x1 ^ x0
        x0 = x0 + schedule[(block + 1) % 3]
        x1 = x1 + schedule[(block + 2) % 3] + jnp.uint32(block + 1)
    return x0, x1


def stream_key(key: jax.Array) -> jax.Array:
    """The ``uint32[2]`` counter-mode key derived from a JAX PRNG key (any implementation)."""
    return jax.random.bits(key, (2,), jnp.uint32)


def counter_noise(stream: jax.Array, episode: jax.Array, t: jax.Array) -> Noise:
    """The noise of step ``t`` of episode ``episode`` in counter mode.

    One Threefry block ``(w0, w1) = threefry2x32(stream, (episode, t))`` gives 64 random bits:
    ``u_bid`` from the top 21 bits of ``w0``, ``u_ask`` from the top 21 bits of ``w1``, ``u_mid``
    from the remaining 22 bits. A fill probability is thus resolved to ``2^-21`` (5e-7) and the
    normal is the quantile of a 22-bit uniform (tails reach +-5.2, as with ``jax.random.normal``
    in float32). The noise is a pure function of (key, episode, step), so a simulation gives
    every episode the same numbers however it is chunked or sharded. ``episode`` and ``t`` are
    broadcast against each other.

    The returned ``Noise`` also records its counter (``stream`` broadcast to ``[..., 2]``,
    ``episode``, ``t``): a step whose extensions need extra noise draws it from there
    (``extension_noise``); the default step does not read it, and it compiles away.
    """
    episode, counter = _counters(episode, t)
    w0, w1 = threefry2x32(stream, episode, counter)
    return noise_from_words(stream, episode, counter, w0, w1)


def _counters(episode: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    episode = jnp.asarray(episode).astype(jnp.uint32)
    counter = jnp.asarray(t).astype(jnp.uint32)
    return jnp.broadcast_arrays(episode, counter)


def counter_words(stream: jax.Array, episode: jax.Array, t: jax.Array) -> tuple[jax.Array, ...]:
    """The Threefry block ``(w0, w1)`` behind ``counter_noise(stream, episode, t)``."""
    return threefry2x32(stream, *_counters(episode, t))


def noise_from_words(
    stream: jax.Array, episode: jax.Array, t: jax.Array, w0: jax.Array, w1: jax.Array
) -> Noise:
    """``counter_noise`` from its Threefry block ``(w0, w1) = counter_words(stream, episode,
    t)``: the layout of the bits in one place. ``simulate`` computes the block one step ahead
    and carries it through its scan, so that XLA computes the cipher once per step instead of
    once in every fusion that reads a uniform."""
    episode, counter = _counters(episode, t)
    low = jnp.uint32(0x7FF)
    mid_bits = ((w0 & low) << jnp.uint32(11)) | (w1 & low)
    return Noise(
        u_bid=_uniform(w0 >> jnp.uint32(11), 21),
        u_ask=_uniform(w1 >> jnp.uint32(11), 21),
        u_mid=_uniform(mid_bits, 22),
        stream=jnp.broadcast_to(stream, (*episode.shape, 2)),
        episode=episode,
        t=counter,
    )


EXTRA_BLOCK_STRIDE = 2**28  # extra block j of step t sits at the step counter t + j * 2**28
VOL_BLOCK, JUMP_BLOCK, SIZE_BLOCK = 1, 2, 3
ALPHA_BLOCK = 7  # the alpha signal's Z_alpha (first word)
HAWKES_BLOCK = 4  # the Hawkes arrival counts (sell orders: first word, buy orders: second)


def _extra_words(noise: Noise, block: int, what: str) -> tuple[jax.Array, jax.Array]:
    """The two 32-bit words of extra block ``block`` at the noise's counter."""
    if noise.stream is None or noise.episode is None or noise.t is None:
        raise ValueError(
            f"{what} needs extra noise: build the Noise with market.counter_noise (it records "
            "its counter) or give the extra uniforms explicitly"
        )
    counter = noise.t + jnp.uint32(block * EXTRA_BLOCK_STRIDE)
    return threefry2x32(noise.stream, noise.episode, counter)


def _extra_uniform(word: jax.Array) -> jax.Array:
    """A uniform in (0, 1) from the top 23 bits of a word: exact in float32 and float64."""
    return _uniform(word >> jnp.uint32(9), 23)


def extension_noise(noise: Noise, params: MarketParams) -> Noise:
    """``noise`` with the extra uniforms that ``params``' extensions need filled in.

    Uniforms already present are kept; missing ones are drawn from the counter-mode blocks
    ``(episode, t + j 2^28)`` of the noise's stream: ``j = 1``: ``u_vol`` (first word);
    ``j = 2``: ``u_jump_count``, ``u_jump_size``; ``j = 3``: ``u_bid_size``, ``u_ask_size``;
    ``j = 4``: ``u_bid_arrivals``, ``u_ask_arrivals``; ``j = 7``: ``u_alpha`` (first word).
    Each is the top 23 bits of its word. Nothing is drawn for options that are off.
    """
    updates = {}
    if params.vol_model == "heston" and noise.u_vol is None:
        word, _ = _extra_words(noise, VOL_BLOCK, "vol_model='heston'")
        updates["u_vol"] = _extra_uniform(word)
    if params.jump_model != "none" and (noise.u_jump_count is None or noise.u_jump_size is None):
        count_word, size_word = _extra_words(noise, JUMP_BLOCK, f"jump_model={params.jump_model!r}")
        if noise.u_jump_count is None:
            updates["u_jump_count"] = _extra_uniform(count_word)
        if noise.u_jump_size is None:
            updates["u_jump_size"] = _extra_uniform(size_word)
    if params.order_size == "geometric" and (noise.u_bid_size is None or noise.u_ask_size is None):
        bid_word, ask_word = _extra_words(noise, SIZE_BLOCK, "order_size='geometric'")
        if noise.u_bid_size is None:
            updates["u_bid_size"] = _extra_uniform(bid_word)
        if noise.u_ask_size is None:
            updates["u_ask_size"] = _extra_uniform(ask_word)
    if params.alpha_model != "none" and noise.u_alpha is None:
        word, _ = _extra_words(noise, ALPHA_BLOCK, f"alpha_model={params.alpha_model!r}")
        updates["u_alpha"] = _extra_uniform(word)
    if params.arrival_model == "hawkes" and (
        noise.u_bid_arrivals is None or noise.u_ask_arrivals is None
    ):
        bid_word, ask_word = _extra_words(noise, HAWKES_BLOCK, "arrival_model='hawkes'")
        if noise.u_bid_arrivals is None:
            updates["u_bid_arrivals"] = _extra_uniform(bid_word)
        if noise.u_ask_arrivals is None:
            updates["u_ask_arrivals"] = _extra_uniform(ask_word)
    return noise.replace(**updates) if updates else noise


def _uniform(bits: jax.Array, n_bits: int) -> jax.Array:
    """``(bits + 1/2) / 2^n_bits``: in (0, 1), exact in float32, the same in float64."""
    return (bits.astype(float_dtype()) + 0.5) * (2.0**-n_bits)


def draw_noise(key: jax.Array) -> Noise:
    """The noise of one step of one episode, drawn from ``key``."""
    return counter_noise(stream_key(key), 0, 0)


def normal_from_uniform(u: jax.Array) -> jax.Array:
    """Standard normal quantile of ``u`` in (0, 1): ``sqrt(2) erfinv(2u - 1)``.

    The same transform ``jax.random.normal`` uses; ``2u - 1`` is exact for our 22-bit uniforms.
    """
    return jnp.sqrt(2.0).astype(u.dtype) * jax.lax.erf_inv(2.0 * u - 1.0)


def fill_probability(intensity_dt: jax.Array, fill_model: str) -> jax.Array:
    """Per-step fill probability for an expected number of arrivals ``lambda dt``:
    ``min(1, lambda dt)`` (``"linear"``) or ``1 - exp(-lambda dt)`` (``"exponential"``).
    ``fill_probability_numpy`` is the same function in NumPy (float64, on the host)."""
    if fill_model == "linear":
        return jnp.minimum(1.0, intensity_dt)
    return -jnp.expm1(-intensity_dt)


_POWER_FLOOR = 1e-6  # the power shape's base below the mid: the fill is then certain


def intensity_shape(
    depth: jax.Array, k: jax.Array, shape: str = "exponential", alpha: Any = None
) -> jax.Array:
    """``lambda(delta) / A`` of the fill shape ``shape`` (``MarketParams.fill_shape``, with
    ``alpha = fill_shape_alpha``); the JAX form. ``intensity_shape_numpy`` is the same function
    in NumPy and ``intensity_shape_slope`` its derivative in depth."""
    if shape == "power":
        return jnp.maximum(1.0 + k * depth / alpha, _POWER_FLOOR) ** (-alpha)
    if shape == "linear":
        return jnp.maximum(1.0 - k * depth, 0.0)
    return jnp.exp(-k * depth)


def intensity_shape_slope(
    depth: jax.Array, k: jax.Array, shape: str = "exponential", alpha: Any = None
) -> jax.Array:
    """``d intensity_shape / d delta`` (0 where the shape is floored or zero)."""
    if shape == "power":
        base = 1.0 + k * depth / alpha
        slope = -k * jnp.maximum(base, _POWER_FLOOR) ** (-alpha - 1)
        return jnp.where(base > _POWER_FLOOR, slope, 0.0)
    if shape == "linear":
        return jnp.where(1.0 - k * depth > 0, -k, 0.0)
    return -k * jnp.exp(-k * depth)


def intensity_shape_numpy(
    depth: np.ndarray, k: float, shape: str = "exponential", alpha: Any = None
) -> np.ndarray:
    """``intensity_shape`` in NumPy (float64, on the host)."""
    depth = np.asarray(depth, np.float64)
    if shape == "power":
        return np.maximum(1.0 + k * depth / float(alpha), _POWER_FLOOR) ** (-float(alpha))
    if shape == "linear":
        return np.maximum(1.0 - k * depth, 0.0)
    return np.exp(-k * depth)


def fill_probability_numpy(intensity_dt: np.ndarray, fill_model: str) -> np.ndarray:
    """``fill_probability`` in NumPy, for the host-side code (calibration, CP-SAT schedules)."""
    if fill_model == "linear":
        return np.minimum(1.0, intensity_dt)
    return -np.expm1(-intensity_dt)


def sigma_at(t: jax.Array, params: MarketParams) -> jax.Array:
    """Volatility in force during step ``t`` (the volatility schedule).

    Under ``vol_model="heston"`` this is the scale that ``sqrt(v_t^+)`` multiplies; see
    ``volatility``.
    """
    switched = t >= params.vol_switch_step
    return params.sigma * jnp.where(switched, params.vol_switch_factor, 1.0)


def volatility(state: MarketState, params: MarketParams) -> jax.Array:
    """Volatility driving the mid in the step from ``state``: ``sigma_at(t)``, times
    ``sqrt(max(v_t, 0))`` under ``vol_model="heston"`` (price units per sqrt(time unit);
    relative for the geometric model)."""
    sigma = sigma_at(state.t, params)
    if params.vol_model == "heston":
        sigma = sigma * jnp.sqrt(jnp.maximum(state.variance, 0.0))
    return sigma


def _desk_controls_on(params: MarketParams) -> bool:
    return (
        params.spread_floor is not None
        or params.tick is not None
        or params.latency > 0
        or params.loss_limit is not None
    )


def _round_down(ticks: jax.Array) -> jax.Array:
    """``floor``, except that a value within a few ulps of an integer is that integer."""
    nearest = jnp.round(ticks)
    tolerance = 4.0 * jnp.finfo(ticks.dtype).eps * jnp.maximum(jnp.abs(ticks), 1.0)
    return jnp.where(jnp.abs(ticks - nearest) <= tolerance, nearest, jnp.floor(ticks))


def round_to_tick(
    mid: jax.Array, bid_depth: jax.Array, ask_depth: jax.Array, tick: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Depths of the quotes once their prices are rounded away from ``mid`` onto the grid.

    The bid price ``mid - bid_depth`` is rounded down and the ask price ``mid + ask_depth`` up to
    multiples of ``tick`` (price units); a price within a few ulps of a grid point counts as on
    it. ``tick = 0`` leaves the depths unchanged; so do infinite depths (an unquoted side).
    """
    dtype = mid.dtype
    tick = jnp.asarray(tick, dtype)
    on_grid = tick > 0
    safe_tick = jnp.where(on_grid, tick, 1.0)
    bid_price = _round_down((mid - bid_depth) / safe_tick) * safe_tick
    ask_price = -_round_down(-(mid + ask_depth) / safe_tick) * safe_tick
    bid = jnp.where(on_grid & jnp.isfinite(bid_depth), mid - bid_price, bid_depth)
    ask = jnp.where(on_grid & jnp.isfinite(ask_depth), ask_price - mid, ask_depth)
    return bid, ask


def _acting_quotes(
    state: MarketState, quotes: Quotes, params: MarketParams
) -> tuple[MarketState, Quotes]:
    """The quotes that act in this step, and the state with the latency queue advanced.

    The desk's controls, in order (each only when set in ``params``): ``spread_floor`` widens
    both depths by half of ``spread_floor - (bid_depth + ask_depth)`` when positive; ``tick``
    rounds the prices away from the mid onto the grid (``round_to_tick``); with ``latency = k``
    the quote is queued and the one computed ``k`` steps ago acts, at its price (its depth
    shifted by the mid's change since), none during the first ``k`` steps; once ``halted`` (the
    loss limit was hit) neither side is quoted. With all of them off this returns its inputs.
    """
    if not _desk_controls_on(params):
        return state, quotes
    dtype = float_dtype()
    bid = jnp.asarray(quotes.bid_depth, dtype)
    ask = jnp.asarray(quotes.ask_depth, dtype)
    if params.spread_floor is not None:
        shortfall = jnp.maximum(params.spread_floor - (bid + ask), 0.0)
        bid = bid + 0.5 * shortfall
        ask = ask + 0.5 * shortfall
    if params.tick is not None:
        bid, ask = round_to_tick(state.mid, bid, ask, params.tick)
    if params.latency > 0:
        slot = state.t % params.latency
        moved = state.mid - state.pending_mid[slot]
        queued_bid = state.pending_bid[slot] + moved
        queued_ask = state.pending_ask[slot] - moved
        state = state.replace(
            pending_bid=state.pending_bid.at[slot].set(bid),
            pending_ask=state.pending_ask.at[slot].set(ask),
            pending_mid=state.pending_mid.at[slot].set(state.mid),
        )
        bid, ask = queued_bid, queued_ask
    if params.loss_limit is not None:
        bid = jnp.where(state.halted, jnp.inf, bid)
        ask = jnp.where(state.halted, jnp.inf, ask)
    return state, Quotes(bid_depth=bid, ask_depth=ask)


def order_sizes(noise: Noise, params: MarketParams) -> tuple[jax.Array, jax.Array]:
    """Sizes of this step's incoming sell (hits the bid) and buy (lifts the ask) market orders.

    ``"fixed"``: ``order_size_mean``. ``"geometric"``: ``1 + floor(log(u) / log(1 - 1/m))`` with
    ``m = order_size_mean``, so ``P(size > j) = (1 - 1/m)^j`` on ``{1, 2, ...}``, mean ``m``
    (``u = u_bid_size``, ``u_ask_size``). Needs ``extension_noise`` for the geometric sizes.
    """
    dtype = float_dtype()
    mean = jnp.asarray(params.order_size_mean, dtype)
    if params.order_size == "fixed":
        return mean, mean
    log_keep = jnp.log1p(-1.0 / mean)  # -inf at mean 1: every size is 1

    def draw(u: jax.Array) -> jax.Array:
        return 1.0 + jnp.floor(jnp.log(u) / log_keep)

    return draw(noise.u_bid_size), draw(noise.u_ask_size)


MAX_JUMPS_PER_STEP = 16


def jump_sum(noise: Noise, params: MarketParams) -> jax.Array:
    """Sum of this step's compound-Poisson jumps: ``N m + s sqrt(N) Z_J``.

    ``N = #{j in 0..15 : u_jump_count > F(j)}`` with ``F`` the Poisson(``jump_intensity dt``)
    CDF: the inverse CDF of the exact count, capped at ``MAX_JUMPS_PER_STEP`` (the validation
    keeps ``jump_intensity dt <= 1``, where ``P(N > 16) < 1e-14``). ``Z_J`` is the normal of
    ``u_jump_size``; given ``N`` the sum of ``N`` normal jumps is exactly ``N(N m, N s^2)``.
    """
    dtype = float_dtype()
    rate = jnp.asarray(params.jump_intensity * params.dt, dtype)
    u = noise.u_jump_count
    probability = jnp.exp(-rate)
    cdf = probability
    count = (u > cdf).astype(dtype)
    for j in range(1, MAX_JUMPS_PER_STEP):
        probability = probability * rate / j
        cdf = cdf + probability
        count = count + (u > cdf).astype(dtype)
    size = normal_from_uniform(noise.u_jump_size)
    return count * params.jump_mean + params.jump_std * jnp.sqrt(count) * size


def _poisson_count(u: jax.Array, rate: jax.Array, max_count: int) -> jax.Array:
    """The Poisson(``rate``) count of the uniform ``u`` by inverse CDF, resolved up to
    ``max_count``: ``#{j < max_count : u c_J > c_j}`` with ``c_j`` the CDF summed up to ``j``
    and ``c_J`` its sum up to ``J = max_count``. Comparing ``u c_J`` rather than ``u`` keeps
    the count's law exact up to rounding of the probabilities: a CDF that sums to slightly
    below 1 in float32 cannot send the top uniforms to the cap. Two short ``fori_loop``s (the
    total, then the count) keep the compiled step small."""
    first = jnp.exp(-rate)

    def total(j, carry):
        probability, cdf = carry
        probability = probability * rate / j
        return probability, cdf + probability

    _, cdf_total = jax.lax.fori_loop(1, max_count + 1, total, (first, first))
    scaled = u * cdf_total

    def count(j, carry):
        probability, cdf, n = carry
        n = n + (scaled > cdf).astype(n.dtype)
        probability = probability * rate / (j + 1)
        return probability, cdf + probability, n

    _, _, n = jax.lax.fori_loop(0, max_count, count, (first, first, jnp.zeros_like(scaled)))
    return n


def hawkes_arrivals(
    state: MarketState, noise: Noise, params: MarketParams
) -> tuple[jax.Array, jax.Array]:
    """This step's counts ``(N_bid, N_ask)`` of sell and buy market orders under
    ``arrival_model="hawkes"`` (the market's dtype, integer-valued).

    ``N_s ~ Poisson(min(lambda_s dt, MAX_HAWKES_RATE_PER_STEP))`` with ``lambda_s = mu_s + e_s``
    (``mu_s = A * <side>_intensity_mult``, ``e_s`` the state's excitation), by inverse CDF of
    ``noise.u_bid_arrivals`` / ``u_ask_arrivals`` (extra block ``HAWKES_BLOCK``), resolved up to
    ``MAX_HAWKES_ARRIVALS_PER_STEP``. The counts do not depend on the quotes: every policy sees
    the same order flow on the same noise. Needs ``extension_noise`` applied to ``noise``.
    """
    dtype = float_dtype()
    dt = params.dt
    counts = []
    for mult, excitation, u in (
        (params.bid_intensity_mult, state.bid_excitation, noise.u_bid_arrivals),
        (params.ask_intensity_mult, state.ask_excitation, noise.u_ask_arrivals),
    ):
        rate = jnp.minimum((params.A * mult + excitation) * dt, MAX_HAWKES_RATE_PER_STEP)
        counts.append(_poisson_count(u, jnp.asarray(rate, dtype), MAX_HAWKES_ARRIVALS_PER_STEP))
    return counts[0], counts[1]


def hawkes_fill_probability(reach: jax.Array, arrivals: jax.Array) -> jax.Array:
    """``1 - (1 - p)^N``: the probability that at least one of ``N`` market orders reaches a
    quote that each reaches independently with probability ``p = min(1, max(reach, 0))``
    (``reach`` = ``intensity_shape`` of the depth). Computed as ``-expm1(N log1p(-p))``
    (accurate for small ``p``), 1 at ``p = 1`` and ``N >= 1``, 0 at ``N = 0``; finite
    gradients everywhere."""
    p = jnp.clip(reach, 0.0, 1.0)
    certain = p >= 1.0
    safe_p = jnp.where(certain, 0.0, p)
    thinned = -jnp.expm1(arrivals * jnp.log1p(-safe_p))
    return jnp.where(certain, (arrivals > 0).astype(thinned.dtype), thinned)


def _hawkes_fill_probabilities(
    state: MarketState, quotes: Quotes, noise: Noise, params: MarketParams
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """``_quote_fill_probabilities`` of the Hawkes market: the probabilities given the step's
    arrival counts (``hawkes_arrivals``), ``1 - (1 - p(delta))^N`` per side."""
    dtype = float_dtype()
    bid_depth = jnp.asarray(quotes.bid_depth, dtype)
    ask_depth = jnp.asarray(quotes.ask_depth, dtype)
    bid_arrivals, ask_arrivals = hawkes_arrivals(state, noise, params)
    shape = (params.k, params.fill_shape, params.fill_shape_alpha)
    bid_prob = hawkes_fill_probability(intensity_shape(bid_depth, *shape), bid_arrivals)
    ask_prob = hawkes_fill_probability(intensity_shape(ask_depth, *shape), ask_arrivals)
    return bid_depth, ask_depth, bid_prob, ask_prob


def fee_rates(
    bid_depth: jax.Array, ask_depth: jax.Array, params: MarketParams
) -> tuple[jax.Array, jax.Array]:
    """Fee per unit filled on each side: ``taker_fee`` where the acting depth is negative (the
    quote was through the mid: it took liquidity), else ``maker_fee`` (``None`` counts as 0)."""
    maker = 0.0 if params.maker_fee is None else params.maker_fee
    taker = 0.0 if params.taker_fee is None else params.taker_fee
    return jnp.where(bid_depth < 0, taker, maker), jnp.where(ask_depth < 0, taker, maker)


def _quote_fill_probabilities(
    state: MarketState, quotes: Quotes, params: MarketParams
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """``(bid_depth, ask_depth, bid_prob, ask_prob)`` of this step's quotes (the market's dtype).

    The probabilities do not yet apply the inventory limits (see ``_apply_fills``).
    """
    dtype = float_dtype()
    dt = params.dt
    bid_depth = jnp.asarray(quotes.bid_depth, dtype)
    ask_depth = jnp.asarray(quotes.ask_depth, dtype)
    bid_intensity = (
        params.A
        * params.bid_intensity_mult
        * intensity_shape(bid_depth, params.k, params.fill_shape, params.fill_shape_alpha)
    )
    ask_intensity = (
        params.A
        * params.ask_intensity_mult
        * intensity_shape(ask_depth, params.k, params.fill_shape, params.fill_shape_alpha)
    )
    bid_prob = fill_probability(bid_intensity * dt, params.fill_model)
    ask_prob = fill_probability(ask_intensity * dt, params.fill_model)
    return bid_depth, ask_depth, bid_prob, ask_prob


def _limits_open(state: MarketState, params: MarketParams) -> tuple[jax.Array, jax.Array]:
    """Whether the bid (``q < q_max``) and the ask (``q > -q_max``) can be filled, as bools."""
    return state.inventory < params.q_max, state.inventory > -params.q_max


def step_with_noise(
    state: MarketState,
    quotes: Quotes,
    noise: Noise,
    params: MarketParams,
    fill: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
) -> tuple[MarketState, StepInfo]:
    """Advance one episode by one step with explicit noise; see the module docstring.

    ``quotes`` are the policy's; the desk's controls (if any) turn them into the acting quotes.

    ``fill(u, probability) -> fill amount`` decides each side's fill from its uniform
    (``noise.u_bid``, ``noise.u_ask``) and its per-step fill probability (the market's dtype,
    before the inventory limits). ``None`` (the default) is the exact Bernoulli draw
    ``u < probability``. A differentiable relaxation (``jaxmm.calibrate.relaxed_rollout``) passes
    a smooth function with values in [0, 1]; the result is multiplied by the inventory-limit mask
    and, with order sizes, by the incoming order's size, and the rest of the step is unchanged.
    """
    dtype = float_dtype()
    market_order = _market_order(state, quotes, params)
    state, quotes = _acting_quotes(state, quotes, params)
    if market_order is not None:  # it executes first: the fills start from q_t + m
        state = state.replace(inventory=state.inventory + market_order)
    if params.arrival_model == "hawkes":
        noise = extension_noise(noise, params)
        fills = _hawkes_fill_probabilities(state, quotes, noise, params)
    else:
        fills = _quote_fill_probabilities(state, quotes, params)
    bid_depth, ask_depth, bid_prob, ask_prob = fills
    bid_open, ask_open = _limits_open(state, params)
    if fill is None:
        bid_fill = ((noise.u_bid < bid_prob) & bid_open).astype(dtype)
        ask_fill = ((noise.u_ask < ask_prob) & ask_open).astype(dtype)
    else:
        bid_fill = jnp.asarray(fill(noise.u_bid, bid_prob), dtype) * bid_open.astype(dtype)
        ask_fill = jnp.asarray(fill(noise.u_ask, ask_prob), dtype) * ask_open.astype(dtype)
    return _apply_fills(
        state,
        bid_depth,
        ask_depth,
        bid_fill,
        ask_fill,
        bid_prob,
        ask_prob,
        noise,
        params,
        market_order,
    )


def _market_order(state: MarketState, quotes: Quotes, params: MarketParams) -> jax.Array | None:
    """The units the desk's market order executes this step (the market's dtype), or ``None``
    when the market has no market orders (``mo_cost`` is None).

    ``Quotes.market_order`` rounded to an integer and clipped to ``[-1, 1]`` (NaN: 0); 0 when
    the quotes carry none, when ``|q_t + m|`` would exceed ``q_max`` and after the loss-limit
    halt. Raises ``ValueError`` (at trace time) for a market order on a market without them.
    """
    if not params.has_market_orders:
        if quotes.market_order is not None:
            raise ValueError(
                "Quotes.market_order is set but MarketParams.mo_cost is None; allowed: set "
                "mo_cost (>= 0, price units) to let the desk send market orders"
            )
        return None
    dtype = float_dtype()
    if quotes.market_order is None:
        return jnp.zeros_like(state.inventory)
    order = jnp.asarray(quotes.market_order, dtype)
    order = jnp.clip(jnp.round(jnp.where(jnp.isnan(order), 0.0, order)), -1.0, 1.0)
    order = jnp.where(jnp.abs(state.inventory + order) <= params.q_max, order, 0.0)
    if params.loss_limit is not None:
        order = jnp.where(state.halted, 0.0, order)
    return order


def _apply_fills(
    state: MarketState,
    bid_depth: jax.Array,
    ask_depth: jax.Array,
    bid_fill: jax.Array,
    ask_fill: jax.Array,
    bid_prob: jax.Array,
    ask_prob: jax.Array,
    noise: Noise,
    params: MarketParams,
    market_order: jax.Array | None = None,
) -> tuple[MarketState, StepInfo]:
    """The rest of a step once the fills are known: inventory and cash, fees, adverse-selection
    jump, mid move (from ``noise.u_mid``), Heston variance, mark-to-market, history, halt.

    ``market_order`` (market orders on): the units executed at the start of the step, already
    in ``state.inventory``; here its cost, taker fee and permanent impact are booked.

    ``bid_fill``/``ask_fill`` are 0/1 in the simulator; a ``fill`` hook of ``step_with_noise``
    (the relaxation of ``jaxmm.calibrate``) passes fractional fills in [0, 1] through the same
    code. With order sizes they are multiplied here by the incoming order's size, clipped to the
    room left under ``q_max``; ``state`` and the depths are those after ``_acting_quotes``.
    """
    noise = extension_noise(noise, params)
    bid_fill, ask_fill = _sized_fills(bid_fill, ask_fill, state.inventory, noise, params)
    next_inventory = state.inventory + bid_fill - ask_fill
    spread_inc, jump, mo_cost_inc = _trade_cash(
        bid_fill, ask_fill, bid_depth, ask_depth, market_order, params
    )
    next_mid, shock = _next_mid(state, jump, noise, params)
    mid_change = next_mid - state.mid  # the rounded change: mid path and PnL stay consistent
    inventory_inc = next_inventory * mid_change
    pnl_inc = spread_inc + inventory_inc

    extensions = {}
    fee_inc = None
    if params.has_fees:
        bid_rate, ask_rate = fee_rates(bid_depth, ask_depth, params)
        fee_inc = bid_fill * bid_rate + ask_fill * ask_rate
        if market_order is not None and params.taker_fee is not None:
            fee_inc = fee_inc + jnp.abs(market_order) * params.taker_fee
        pnl_inc = pnl_inc - fee_inc
        extensions["fees"] = state.fees + fee_inc
    if params.vol_model == "heston":
        extensions["variance"] = _heston_variance(state.variance, shock, noise, params)
    if params.alpha_model != "none":
        extensions["alpha"] = alpha_transition(state.alpha, noise.u_alpha, params)
    if params.arrival_model == "hawkes":
        bid_arrivals, ask_arrivals = hawkes_arrivals(state, noise, params)
        extensions["bid_excitation"], extensions["ask_excitation"] = _hawkes_excitation(
            state, bid_arrivals, ask_arrivals, params
        )
    next_pnl = state.pnl + pnl_inc
    if params.loss_limit is not None:
        extensions["halted"] = state.halted | (next_pnl < -params.loss_limit)

    slot = state.t % params.history_window
    next_state = state.replace(
        t=state.t + 1,
        mid=next_mid,
        inventory=next_inventory,
        pnl=next_pnl,
        spread_pnl=state.spread_pnl + spread_inc,
        inventory_pnl=state.inventory_pnl + inventory_inc,
        recent_returns=state.recent_returns.at[slot].set(mid_change),
        recent_fills=state.recent_fills.at[slot].set(bid_fill + ask_fill),
        **extensions,
    )
    info = StepInfo(
        bid_fill=bid_fill,
        ask_fill=ask_fill,
        bid_fill_prob=bid_prob,
        ask_fill_prob=ask_prob,
        spread_pnl=spread_inc,
        inventory_pnl=inventory_inc,
        pnl=pnl_inc,
        mid_change=mid_change,
        bid_depth=bid_depth,
        ask_depth=ask_depth,
        fees=fee_inc,
        market_order=market_order,
        market_order_cost=mo_cost_inc,
    )
    if params.arrival_model == "hawkes":
        info = info.replace(bid_arrivals=bid_arrivals, ask_arrivals=ask_arrivals)
    return next_state, info


def _sized_fills(
    bid_fill: jax.Array,
    ask_fill: jax.Array,
    inventory: jax.Array,
    noise: Noise,
    params: MarketParams,
) -> tuple[jax.Array, jax.Array]:
    """The units filled per side: the 0/1 (or fractional) fills times the incoming order's
    size, clipped to the room left under ``q_max`` (``order_size != "unit"``); unchanged with
    unit orders. ``noise`` carries the extension uniforms (``extension_noise``)."""
    if params.order_size == "unit":
        return bid_fill, ask_fill
    bid_size, ask_size = order_sizes(noise, params)
    bid_fill = bid_fill * jnp.minimum(bid_size, params.q_max - inventory)
    ask_fill = ask_fill * jnp.minimum(ask_size, params.q_max + inventory)
    return bid_fill, ask_fill


def _trade_cash(
    bid_fill: jax.Array,
    ask_fill: jax.Array,
    bid_depth: jax.Array,
    ask_depth: jax.Array,
    market_order: jax.Array | None,
    params: MarketParams,
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """The step's trades: ``(spread_inc, jump, mo_cost_inc)``, price units.

    ``spread_inc`` is the cash earned against the mid (fills times depths, less the market
    order's cost ``|m| mo_cost``); ``jump`` the mid's move caused by the trades (adverse
    selection ``(ask_fill - bid_fill) adverse_selection`` plus the market order's permanent
    impact); ``mo_cost_inc`` the market order's cost (``None`` without market orders).
    """
    # where(), not fill * depth alone: an unquoted side has depth +inf and 0 * inf is NaN.
    spread_inc = jnp.where(bid_fill > 0, bid_fill * bid_depth, 0.0) + jnp.where(
        ask_fill > 0, ask_fill * ask_depth, 0.0
    )
    mo_cost_inc = None
    jump = params.adverse_selection * (ask_fill - bid_fill)
    if market_order is not None:
        mo_cost_inc = jnp.abs(market_order) * params.mo_cost
        spread_inc = spread_inc - mo_cost_inc  # a trade at depth -mo_cost
        if params.mo_permanent_impact is not None:
            jump = jump + params.mo_permanent_impact * market_order
    return spread_inc, jump, mo_cost_inc


def _next_mid(
    state: MarketState, jump: jax.Array, noise: Noise, params: MarketParams
) -> tuple[jax.Array, jax.Array]:
    """The mid after one step of the price model, ``(next_mid, shock)``: ``shock`` is the
    step's standard normal (``price_model="binary"``: the +-1 coin) drawn from ``noise.u_mid``,
    which the Heston variance reuses; ``jump`` (price units) moves the mid before the diffusion.
    """
    dtype = float_dtype()
    dt = params.dt
    mid = state.mid
    sigma = volatility(state, params)
    sqrt_dt = jnp.sqrt(jnp.asarray(dt, dtype))
    if params.price_model == "binary":
        shock = jnp.where(noise.u_mid < 0.5, -1.0, 1.0).astype(dtype)
    else:
        shock = normal_from_uniform(noise.u_mid)
    if params.price_model == "geometric":
        log_return = (params.mu - 0.5 * sigma**2) * dt + sigma * sqrt_dt * shock
        if params.jump_model != "none":
            log_return = log_return + jump_sum(noise, params)
        next_mid = (mid + jump) * jnp.exp(log_return)
    elif params.price_model == "ou":  # exact Ornstein-Uhlenbeck step (see MarketParams)
        level = params.S0 if params.ou_level is None else params.ou_level
        decay = jnp.exp(-params.ou_rate * dt)
        spread = jnp.sqrt(-jnp.expm1(-2.0 * params.ou_rate * dt) / (2.0 * params.ou_rate))
        next_mid = level + (mid + jump - level) * decay + sigma * spread * shock
        if params.jump_model != "none":
            next_mid = next_mid + jump_sum(noise, params)
    else:
        move = jump + params.mu * dt + sigma * sqrt_dt * shock
        if params.alpha_model != "none":
            move = move + state.alpha * dt
        if params.jump_model != "none":
            move = move + jump_sum(noise, params)
        next_mid = mid + move
    return next_mid, shock


def _heston_variance(
    variance: jax.Array, shock: jax.Array, noise: Noise, params: MarketParams
) -> jax.Array:
    """The Heston variance's full-truncation Euler step: ``v + kappa (theta - v+) dt
    + xi sqrt(v+ dt) Z_v`` with ``Z_v = rho shock + sqrt(1 - rho^2) Z(u_vol)`` correlated with
    the mid's ``shock``."""
    dtype = float_dtype()
    dt = params.dt
    positive = jnp.maximum(variance, 0.0)
    rho = jnp.asarray(params.rho_v, dtype)
    z_vol = rho * shock + jnp.sqrt(1.0 - rho * rho) * normal_from_uniform(noise.u_vol)
    return (
        variance
        + params.kappa_v * (params.theta_v - positive) * dt
        + params.xi_v * jnp.sqrt(positive * dt) * z_vol
    )


def _hawkes_excitation(
    state: MarketState, bid_arrivals: jax.Array, ask_arrivals: jax.Array, params: MarketParams
) -> tuple[jax.Array, jax.Array]:
    """The Hawkes excitations after the step's arrivals, ``(bid, ask)`` per time unit:
    ``e' = e exp(-beta dt) + self N_same + cross N_other``."""
    decay = jnp.exp(-params.hawkes_decay * params.dt)
    bid_excitation = (
        state.bid_excitation * decay
        + params.hawkes_self * bid_arrivals
        + params.hawkes_cross * ask_arrivals
    )
    ask_excitation = (
        state.ask_excitation * decay
        + params.hawkes_self * ask_arrivals
        + params.hawkes_cross * bid_arrivals
    )
    return bid_excitation, ask_excitation


def alpha_transition(alpha: jax.Array, u_alpha: jax.Array, params: MarketParams) -> jax.Array:
    """The alpha signal's exact OU step: ``alpha e^{-zeta dt} + eta sqrt((1 - e^{-2 zeta dt})
    / (2 zeta)) Z`` with ``Z`` the normal of ``u_alpha`` (``zeta = alpha_rate`` per time unit,
    ``eta = alpha_vol``; price units per time unit in and out)."""
    dt = params.dt
    decay = jnp.exp(-params.alpha_rate * dt)
    spread = jnp.sqrt(-jnp.expm1(-2.0 * params.alpha_rate * dt) / (2.0 * params.alpha_rate))
    return alpha * decay + params.alpha_vol * spread * normal_from_uniform(u_alpha)


def step(
    state: MarketState, quotes: Quotes, key: jax.Array, params: MarketParams
) -> tuple[MarketState, StepInfo]:
    """Advance one episode by one step, drawing the step's noise from ``key``.

    Pure: the same ``(state, quotes, key, params)`` always gives the same result.
    """
    return step_with_noise(state, quotes, draw_noise(key), params)


def time_to_go(state: MarketState, params: MarketParams) -> jax.Array:
    """``T - t dt``: time left in the session at the start of step ``state.t``, time units."""
    return params.T - state.t * params.dt


def trailing_volatility(state: MarketState, params: MarketParams) -> jax.Array:
    """Realised volatility of the last ``min(t, history_window)`` mid changes.

    ``sqrt(sum dS^2 / (n dt))`` in price units per sqrt(time unit) -- the same units as
    ``sigma`` for the arithmetic model. Before the first step (no data) it returns ``sigma``.
    """
    count = jnp.minimum(state.t, params.history_window)
    total = jnp.sum(state.recent_returns**2)
    safe_count = jnp.maximum(count, 1)
    realised = jnp.sqrt(total / (safe_count * params.dt))
    return jnp.where(count > 0, realised, params.sigma)


def recent_fill_rate(state: MarketState, params: MarketParams) -> jax.Array:
    """Fills per step over the last ``min(t, history_window)`` steps (0 before the first)."""
    count = jnp.minimum(state.t, params.history_window)
    return jnp.sum(state.recent_fills) / jnp.maximum(count, 1)
