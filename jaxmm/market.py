"""The market: ``MarketState``, ``reset`` and ``step`` -- the one place where dynamics live.

One step, in this order (DESIGN.md):

1. observe ``(t, S_t, q_t)`` (the policy has already turned this into ``Quotes``);
2. fills are drawn for quotes at ``S_t - delta_b`` and ``S_t + delta_a``: a side is filled with
   the per-step probability of ``lambda(delta) = A exp(-k delta)`` under ``params.fill_model``,
   independently of the other side; at ``q_t >= q_max`` the bid is not filled, at
   ``q_t <= -q_max`` the ask is not filled;
3. inventory and spread capture update: ``q_{t+1} = q_t + bid_fill - ask_fill``,
   spread capture ``+= bid_fill * delta_b + ask_fill * delta_a``;
4. adverse selection: the mid jumps ``adverse_selection * (ask_fill - bid_fill)``;
5. the mid moves to ``S_{t+1}`` (``params.price_model``);
6. mark to market: inventory PnL ``+= q_{t+1} * (S_{t+1} - S_t)``.

PnL is carried as increments (spread capture plus inventory PnL), never as ``cash + q S``, so it
stays exact in float32 whatever the price level.

Randomness: a step consumes one ``Noise`` (three uniforms in (0, 1)): ``u_bid`` and ``u_ask``
decide the fills, ``u_mid`` drives the mid (a normal ``sqrt(2) erfinv(2 u_mid - 1)``, or the sign of
``u_mid - 1/2`` for the binary model). The layout does not depend on the quotes, so for the same
noise every policy sees the same mid path (common random numbers). ``step(state, quotes, key,
params)`` draws the noise from ``key``; ``step_with_noise`` takes it explicitly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jaxmm.params import MarketParams


def float_dtype() -> jnp.dtype:
    """float32, or float64 when ``jax_enable_x64`` is on."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


@struct.dataclass
class Quotes:
    """Depths of the two quotes from the mid, price units (``bid = S - bid_depth``).

    A depth may be negative (a bid above the mid fills with probability above ``A dt``) or
    ``+inf`` (that side is not quoted).
    """

    bid_depth: jax.Array
    ask_depth: jax.Array


@struct.dataclass
class Noise:
    """Uniforms in the open interval (0, 1) driving one step of one episode."""

    u_bid: jax.Array
    u_ask: jax.Array
    u_mid: jax.Array


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
        recent_fills: ``f[history_window]`` ring buffer of the number of fills (0, 1 or 2).
    """

    t: jax.Array
    mid: jax.Array
    inventory: jax.Array
    pnl: jax.Array
    spread_pnl: jax.Array
    inventory_pnl: jax.Array
    recent_returns: jax.Array
    recent_fills: jax.Array


@struct.dataclass
class StepInfo:
    """What happened in one step (all per episode; increments, not cumulative values)."""

    bid_fill: jax.Array
    ask_fill: jax.Array
    bid_fill_prob: jax.Array
    ask_fill_prob: jax.Array
    spread_pnl: jax.Array
    inventory_pnl: jax.Array
    pnl: jax.Array
    mid_change: jax.Array


def reset(key: jax.Array, params: MarketParams) -> MarketState:
    """The state at the start of a session: ``t = 0``, ``S = S0``, no inventory, no PnL.

    ``key`` is accepted for a uniform interface (random initial conditions are a natural
    extension); the current initial state is deterministic.
    """
    del key
    dtype = float_dtype()
    zero = jnp.zeros((), dtype)
    window = jnp.zeros((params.history_window,), dtype)
    return MarketState(
        t=jnp.zeros((), jnp.int32),
        mid=jnp.asarray(params.S0, dtype),
        inventory=zero,
        pnl=zero,
        spread_pnl=zero,
        inventory_pnl=zero,
        recent_returns=window,
        recent_fills=window,
    )


_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def threefry2x32(key: jax.Array, x0: jax.Array, x1: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Threefry-2x32 with 20 rounds (Salmon et al. 2011), the block cipher of ``jax.random``.

    Bit-identical to ``jax.extend.random.threefry_2x32`` but applied to counters we choose, which
    lets XLA fuse it into the step: on a CPU it is several times faster than ``jax.random.bits``.

    Args:
        key: ``uint32[2]``. x0, x1: ``uint32`` counters of any (common) shape.
    Returns:
        Two ``uint32`` arrays of random words with the shape of the counters.
    """
    k0, k1 = key[0], key[1]
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
    """
    episode = jnp.asarray(episode).astype(jnp.uint32)
    counter = jnp.asarray(t).astype(jnp.uint32)
    episode, counter = jnp.broadcast_arrays(episode, counter)
    w0, w1 = threefry2x32(stream, episode, counter)
    low = jnp.uint32(0x7FF)
    mid_bits = ((w0 & low) << jnp.uint32(11)) | (w1 & low)
    return Noise(
        u_bid=_uniform(w0 >> jnp.uint32(11), 21),
        u_ask=_uniform(w1 >> jnp.uint32(11), 21),
        u_mid=_uniform(mid_bits, 22),
    )


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
    """Per-step fill probability for an expected number of arrivals ``lambda dt``."""
    if fill_model == "linear":
        return jnp.minimum(1.0, intensity_dt)
    return -jnp.expm1(-intensity_dt)


def sigma_at(t: jax.Array, params: MarketParams) -> jax.Array:
    """Volatility in force during step ``t`` (the volatility schedule)."""
    switched = t >= params.vol_switch_step
    return params.sigma * jnp.where(switched, params.vol_switch_factor, 1.0)


def quote_fill_probabilities(
    state: MarketState, quotes: Quotes, params: MarketParams
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """``(bid_depth, ask_depth, bid_prob, ask_prob)`` of this step's quotes (the market's dtype).

    The probabilities do not yet apply the inventory limits (see ``apply_fills``).
    """
    dtype = float_dtype()
    dt = params.dt
    bid_depth = jnp.asarray(quotes.bid_depth, dtype)
    ask_depth = jnp.asarray(quotes.ask_depth, dtype)
    bid_intensity = params.A * params.bid_intensity_mult * jnp.exp(-params.k * bid_depth)
    ask_intensity = params.A * params.ask_intensity_mult * jnp.exp(-params.k * ask_depth)
    bid_prob = fill_probability(bid_intensity * dt, params.fill_model)
    ask_prob = fill_probability(ask_intensity * dt, params.fill_model)
    return bid_depth, ask_depth, bid_prob, ask_prob


def limits_open(state: MarketState, params: MarketParams) -> tuple[jax.Array, jax.Array]:
    """Whether the bid (``q < q_max``) and the ask (``q > -q_max``) can be filled, as bools."""
    return state.inventory < params.q_max, state.inventory > -params.q_max


def step_with_noise(
    state: MarketState, quotes: Quotes, noise: Noise, params: MarketParams
) -> tuple[MarketState, StepInfo]:
    """Advance one episode by one step with explicit noise; see the module docstring."""
    dtype = float_dtype()
    bid_depth, ask_depth, bid_prob, ask_prob = quote_fill_probabilities(state, quotes, params)
    bid_open, ask_open = limits_open(state, params)
    bid_fill = ((noise.u_bid < bid_prob) & bid_open).astype(dtype)
    ask_fill = ((noise.u_ask < ask_prob) & ask_open).astype(dtype)
    return apply_fills(
        state, bid_depth, ask_depth, bid_fill, ask_fill, bid_prob, ask_prob, noise, params
    )


def apply_fills(
    state: MarketState,
    bid_depth: jax.Array,
    ask_depth: jax.Array,
    bid_fill: jax.Array,
    ask_fill: jax.Array,
    bid_prob: jax.Array,
    ask_prob: jax.Array,
    noise: Noise,
    params: MarketParams,
) -> tuple[MarketState, StepInfo]:
    """The rest of a step once the fills are known: inventory and cash, adverse-selection jump,
    mid move (from ``noise.u_mid``), mark-to-market and history.

    ``bid_fill``/``ask_fill`` are 0/1 in the simulator; a differentiable relaxation
    (``jaxmm.calibrate``) passes fractional fills in [0, 1] through the same code.
    """
    dtype = float_dtype()
    dt = params.dt
    mid, inventory = state.mid, state.inventory
    next_inventory = inventory + bid_fill - ask_fill
    # where(), not fill * depth alone: an unquoted side has depth +inf and 0 * inf is NaN.
    spread_inc = jnp.where(bid_fill > 0, bid_fill * bid_depth, 0.0) + jnp.where(
        ask_fill > 0, ask_fill * ask_depth, 0.0
    )

    jump = params.adverse_selection * (ask_fill - bid_fill)
    sigma = sigma_at(state.t, params)
    sqrt_dt = jnp.sqrt(jnp.asarray(dt, dtype))
    if params.price_model == "binary":
        shock = jnp.where(noise.u_mid < 0.5, -1.0, 1.0).astype(dtype)
    else:
        shock = normal_from_uniform(noise.u_mid)
    if params.price_model == "geometric":
        log_return = (params.mu - 0.5 * sigma**2) * dt + sigma * sqrt_dt * shock
        next_mid = (mid + jump) * jnp.exp(log_return)
    else:
        next_mid = mid + (jump + params.mu * dt + sigma * sqrt_dt * shock)
    mid_change = next_mid - mid  # the rounded change: mid path and PnL stay consistent
    inventory_inc = next_inventory * mid_change
    pnl_inc = spread_inc + inventory_inc

    slot = state.t % params.history_window
    next_state = MarketState(
        t=state.t + 1,
        mid=next_mid,
        inventory=next_inventory,
        pnl=state.pnl + pnl_inc,
        spread_pnl=state.spread_pnl + spread_inc,
        inventory_pnl=state.inventory_pnl + inventory_inc,
        recent_returns=state.recent_returns.at[slot].set(mid_change),
        recent_fills=state.recent_fills.at[slot].set(bid_fill + ask_fill),
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
    )
    return next_state, info


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
