"""Monte Carlo rollouts: a ``lax.scan`` over steps of a ``vmap``-ed ``market.step``.

Summary mode streams per-episode results through the scan (running maximum for the drawdown,
fill counts, sums), so memory is O(n_episodes) whatever the session length; ``paths=True`` also
returns the per-step paths for plots. Large runs are cut into chunks of ``chunk_size`` episodes,
each run by the same compiled program.

Noise layout: episode ``i`` at step ``t`` uses ``market.counter_noise(stream_key(key), i, t)``.
It is a pure function of ``(key, i, t)``, so an episode's path does not depend on how many
episodes run beside it, on the chunk size or on the devices -- and every policy simulated with
the same key sees the same mid paths and fill uniforms (common random numbers).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxmm import market, policies, rewards
from jaxmm.devices import batch_spec
from jaxmm.devices import mesh as make_mesh
from jaxmm.market import MarketState
from jaxmm.params import MarketParams
from jaxmm.policies import Policy

__all__ = [
    "DEFAULT_CHUNK",
    "EPISODE_ALIGNMENT",
    "Paths",
    "Rollout",
    "Running",
    "episode_indices",
    "episode_mesh",
    "episode_runner",
    "equal_chunks",
    "initial_states",
    "path_outputs",
    "paths_from_outputs",
    "plan_chunks",
    "rollout",
    "simulate",
    "to_host",
]

DEFAULT_CHUNK = 2**17  # episodes per compiled chunk: ~60 MB of carry, amortises per-step overhead
# Episodes per device are padded to a multiple of this: on XLA's CPU backend an odd batch runs
# the scan about 7 times slower than an even one (measured: 129,871 vs 129,872 episodes).
EPISODE_ALIGNMENT = 8


@struct.dataclass
class Paths:
    """Per-step paths: ``[n_episodes, n_steps + 1]`` for levels, ``[n_episodes, n_steps]`` per step.

    Attributes:
        mid: ``S_0 .. S_N``. inventory: ``q_0 .. q_N``. pnl: ``PnL_0 = 0 .. PnL_N``.
        bid, ask: quoted prices during step ``i`` (``S_i -+ depth``), ``[n, N]``.
        bid_fill, ask_fill: 1.0 where that side was filled in step ``i``, ``[n, N]``.
    """

    mid: jax.Array
    inventory: jax.Array
    pnl: jax.Array
    bid: jax.Array
    ask: jax.Array
    bid_fill: jax.Array
    ask_fill: jax.Array


@struct.dataclass
class Rollout:
    """Per-episode results, each ``[n_episodes]``, price units unless stated.

    Attributes:
        pnl: terminal PnL (``spread_pnl + inventory_pnl``).
        inventory: terminal inventory ``q_N``.
        spread_pnl: total spread capture. inventory_pnl: total mark-to-market of the inventory.
        max_drawdown: largest fall of the PnL path from its running peak (``PnL_0 = 0``), >= 0.
        n_bid_fills, n_ask_fills: number of fills on each side.
        mean_spread: average quoted spread ``bid_depth + ask_depth`` over the steps where both
            sides were quoted (NaN if there was none).
        sum_sq_inventory: ``sum_t q_{t+1}^2``, so the episode reward under ``dPnL - phi q^2`` is
            ``pnl - phi * sum_sq_inventory``.
        final_mid: ``S_N``.
        fees: total fees paid (``pnl = spread_pnl + inventory_pnl - fees``); None when the
            market has no fees (``maker_fee``/``taker_fee`` unset).
        paths: ``Paths`` when simulated with ``paths=True``, else None.
        n_steps: steps per episode (static).
    """

    pnl: jax.Array
    inventory: jax.Array
    spread_pnl: jax.Array
    inventory_pnl: jax.Array
    max_drawdown: jax.Array
    n_bid_fills: jax.Array
    n_ask_fills: jax.Array
    mean_spread: jax.Array
    sum_sq_inventory: jax.Array
    final_mid: jax.Array
    fees: jax.Array | None = None
    paths: Paths | None = None
    n_steps: int = struct.field(pytree_node=False, default=0)

    @property
    def n_episodes(self) -> int:
        return int(self.pnl.shape[0])

    def reward(self, phi: float) -> jax.Array:
        """Episode reward under ``dPnL - phi q_{t+1}^2`` summed over the session, ``[n]``
        (``jaxmm.rewards.episode_reward``, which also gives the other rewards)."""
        return rewards.episode_reward(self, phi, "inventory_penalty")


@struct.dataclass
class Running:
    """Per-episode statistics streamed through the scan (any batch shape, elementwise)."""

    peak: jax.Array
    max_drawdown: jax.Array
    n_bid_fills: jax.Array
    n_ask_fills: jax.Array
    spread_sum: jax.Array
    two_sided: jax.Array
    sum_sq_inventory: jax.Array

    @classmethod
    def zeros(cls, shape: tuple[int, ...], dtype: jnp.dtype) -> Running:
        zero = jnp.zeros(shape, dtype)
        return cls(**{f.name: zero for f in dataclasses.fields(cls)})

    def update(
        self, next_state: MarketState, info: market.StepInfo, bid_depth, ask_depth
    ) -> Running:
        """The statistics after a step to ``next_state`` with these quoted depths."""
        peak = jnp.maximum(self.peak, next_state.pnl)
        two_sided = jnp.isfinite(bid_depth) & jnp.isfinite(ask_depth)
        return Running(
            peak=peak,
            max_drawdown=jnp.maximum(self.max_drawdown, peak - next_state.pnl),
            n_bid_fills=self.n_bid_fills + info.bid_fill,
            n_ask_fills=self.n_ask_fills + info.ask_fill,
            spread_sum=self.spread_sum + jnp.where(two_sided, bid_depth + ask_depth, 0.0),
            two_sided=self.two_sided + two_sided,
            sum_sq_inventory=self.sum_sq_inventory + next_state.inventory**2,
        )

    def mean_spread(self) -> jax.Array:
        """Average quoted spread over the two-sided steps (NaN if there was none)."""
        safe_count = jnp.maximum(self.two_sided, 1.0)
        return jnp.where(self.two_sided > 0, self.spread_sum / safe_count, jnp.nan)


def path_outputs(
    state: MarketState, next_state: MarketState, info: market.StepInfo, bid_depth, ask_depth
) -> tuple[jax.Array, ...]:
    """One step's slice of ``Paths`` (``mid, inventory, pnl, bid, ask, bid_fill, ask_fill``)."""
    return (
        next_state.mid,
        next_state.inventory,
        next_state.pnl,
        state.mid - bid_depth,
        state.mid + ask_depth,
        info.bid_fill,
        info.ask_fill,
    )


def paths_from_outputs(state: MarketState, per_step: tuple[jax.Array, ...]) -> Paths:
    """``Paths`` from the scan's stacked ``path_outputs`` (each ``[N, *batch]``, time first) and
    the initial ``state`` (``[*batch]`` fields): every array's axes reversed, so time comes last
    (``[n, N]``; ``multi_asset``: ``[n, n_assets, N]``), the levels with their start prepended
    (``N + 1`` points)."""
    mid, inventory, pnl, bid, ask, bid_fill, ask_fill = (x.T for x in per_step)

    def with_start(start: jax.Array, rest: jax.Array) -> jax.Array:
        return jnp.concatenate([start.T[..., None], rest], axis=-1)

    return Paths(
        mid=with_start(state.mid, mid),
        inventory=with_start(state.inventory, inventory),
        pnl=with_start(state.pnl, pnl),
        bid=bid,
        ask=ask,
        bid_fill=bid_fill,
        ask_fill=ask_fill,
    )


# Batch layout of the vmapped state. The time index is shared by all episodes: unbatched. The
# ring buffers are stored [history_window, n] so that a step writes one contiguous row instead
# of one element in every episode's row.
_STATE_AXES = MarketState(
    t=None,
    mid=0,
    inventory=0,
    pnl=0,
    spread_pnl=0,
    inventory_pnl=0,
    recent_returns=1,
    recent_fills=1,
    variance=0,
    fees=0,
    halted=0,
    pending_bid=1,
    pending_ask=1,
    pending_mid=1,
    alpha=0,
    bid_excitation=0,
    ask_excitation=0,
)


def initial_states(params: MarketParams, n_episodes: int) -> MarketState:
    """``n_episodes`` fresh states in the batch layout ``_STATE_AXES``."""
    state = market.reset(jax.random.key(0), params)

    def batch(x: jax.Array) -> jax.Array:
        return jnp.broadcast_to(x, (n_episodes, *x.shape))

    def batch_last(x: jax.Array) -> jax.Array:
        return jnp.broadcast_to(x[..., None], (*x.shape, n_episodes))

    return state.replace(
        mid=batch(state.mid),
        inventory=batch(state.inventory),
        pnl=batch(state.pnl),
        spread_pnl=batch(state.spread_pnl),
        inventory_pnl=batch(state.inventory_pnl),
        recent_returns=batch_last(state.recent_returns),
        recent_fills=batch_last(state.recent_fills),
        # the extensions' fields (None when off: tree.map leaves them None)
        variance=jax.tree.map(batch, state.variance),
        fees=jax.tree.map(batch, state.fees),
        halted=jax.tree.map(batch, state.halted),
        pending_bid=jax.tree.map(batch_last, state.pending_bid),
        pending_ask=jax.tree.map(batch_last, state.pending_ask),
        pending_mid=jax.tree.map(batch_last, state.pending_mid),
        alpha=jax.tree.map(batch, state.alpha),
        bid_excitation=jax.tree.map(batch, state.bid_excitation),
        ask_excitation=jax.tree.map(batch, state.ask_excitation),
    )


def rollout(
    params: MarketParams,
    policy: Policy,
    stream: jax.Array,
    episodes: jax.Array,
    paths: bool = False,
) -> Rollout:
    """Simulate the episodes with global indices ``episodes`` (``uint32[n]``): pure, jit-able.

    ``stream`` is ``market.stream_key(key)``. This is the building block of ``simulate``; call it
    directly to ``vmap`` over parameters or policies inside one compiled program.
    """
    n = episodes.shape[0]
    dtype = market.float_dtype()
    state = initial_states(params, n)
    running = Running.zeros((n,), dtype)
    quote = jax.vmap(policy, in_axes=(_STATE_AXES, None))
    advance = jax.vmap(
        market.step_with_noise,
        in_axes=(_STATE_AXES, 0, 0, None),
        out_axes=(_STATE_AXES, 0),
    )

    def body(carry, _):
        state, running, words = carry
        noise = market.noise_from_words(stream, episodes, state.t, *words)
        words = market.counter_words(stream, episodes, state.t + 1)  # next step's block
        quotes = quote(state, params)
        bid_depth = jnp.broadcast_to(jnp.asarray(quotes.bid_depth, dtype), (n,))
        ask_depth = jnp.broadcast_to(jnp.asarray(quotes.ask_depth, dtype), (n,))
        quotes = quotes.replace(bid_depth=bid_depth, ask_depth=ask_depth)
        if quotes.market_order is not None:  # market orders (MarketParams.mo_cost)
            order = jnp.broadcast_to(jnp.asarray(quotes.market_order, dtype), (n,))
            quotes = quotes.replace(market_order=order)
        next_state, info = advance(state, quotes, noise, params)
        running = running.update(next_state, info, bid_depth, ask_depth)
        out = path_outputs(state, next_state, info, bid_depth, ask_depth) if paths else None
        return (next_state, running, words), out

    start = (state, running, market.counter_words(stream, episodes, state.t))
    (final, running, _), per_step = jax.lax.scan(body, start, None, length=params.n_steps)
    path_data = paths_from_outputs(state, per_step) if paths else None
    mean_spread = running.mean_spread()
    return Rollout(
        pnl=final.pnl,
        inventory=final.inventory,
        spread_pnl=final.spread_pnl,
        inventory_pnl=final.inventory_pnl,
        max_drawdown=running.max_drawdown,
        n_bid_fills=running.n_bid_fills,
        n_ask_fills=running.n_ask_fills,
        mean_spread=mean_spread,
        sum_sq_inventory=running.sum_sq_inventory,
        final_mid=final.mid,
        fees=final.fees,
        paths=path_data,
        n_steps=params.n_steps,
    )


def equal_chunks(n_episodes: int, chunk_size: int | None, default: int) -> tuple[int, int]:
    """Validate ``n_episodes`` (an integer in ``[1, 2**32)``) and ``chunk_size`` (an integer >= 1;
    ``None``: ``default``); return ``(n_chunks, chunk)``, the fewest chunks of at most
    ``chunk_size`` episodes, all of the same size ``chunk``."""
    if isinstance(n_episodes, bool) or not isinstance(n_episodes, int | np.integer):
        raise ValueError(f"n_episodes = {n_episodes!r}; allowed: an integer in [1, 2**32)")
    if not 1 <= n_episodes < 2**32:
        raise ValueError(f"n_episodes = {n_episodes}; allowed: an integer in [1, 2**32)")
    chunk = default if chunk_size is None else chunk_size
    if isinstance(chunk, bool) or not isinstance(chunk, int | np.integer) or chunk < 1:
        raise ValueError(f"chunk_size = {chunk_size!r}; allowed: an integer >= 1")
    n_chunks = math.ceil(n_episodes / chunk)
    return n_chunks, math.ceil(n_episodes / n_chunks)


def plan_chunks(n_episodes: int, chunk_size: int | None, n_devices: int) -> tuple[int, int]:
    """Validate ``n_episodes`` and ``chunk_size``; return ``(n_chunks, chunk)``: equal chunks of
    ``chunk`` episodes (one compiled shape, little padding), every device's share of a chunk
    the same multiple of ``EPISODE_ALIGNMENT``."""
    n_chunks, chunk = equal_chunks(n_episodes, chunk_size, DEFAULT_CHUNK)
    share = EPISODE_ALIGNMENT * math.ceil(chunk / (n_devices * EPISODE_ALIGNMENT))
    chunk = n_devices * share
    n_chunks = math.ceil(n_episodes / chunk)  # rounding up can make the last chunks redundant
    if n_chunks * chunk > 2**32:
        raise ValueError(
            f"n_episodes = {n_episodes}; allowed: fewer, so that the padded episode indices "
            f"({n_chunks} chunks of {chunk}) stay below 2**32"
        )
    return n_chunks, chunk


def episode_mesh(devices: Sequence[jax.Device] | Mesh | None) -> Mesh | None:
    """The mesh the episodes are split over: ``devices`` as a 1-D mesh named ``"episodes"``; a
    ``Mesh`` unchanged (the episode axis is split over all of its axes); ``None``: no sharding."""
    return make_mesh(devices, "episodes")


def episode_indices(start: int, size: int, mesh: Mesh | None) -> jax.Array:
    """Global episode indices ``start .. start + size - 1`` (``uint32[size]``), split over
    ``mesh`` if given. Built shard by shard (``jax.make_array_from_callback``), so the same call
    works when the mesh spans several processes (``jax.distributed``)."""
    if mesh is None:
        return jnp.arange(start, start + size, dtype=jnp.uint32)
    indices = np.arange(start, start + size, dtype=np.uint32)
    sharding = NamedSharding(mesh, batch_spec(mesh))
    return jax.make_array_from_callback((size,), sharding, lambda index: indices[index])


@functools.cache
def episode_runner(mesh: Mesh | None, paths: bool) -> Callable:
    """``run(params, policy, stream, episodes) -> Rollout``, not jitted: ``rollout`` itself, or
    with a mesh a ``shard_map`` of it that runs every device's share of the episodes as its own
    program (no communication: episodes are independent, the noise a function of the index)."""
    if mesh is None:
        return functools.partial(rollout, paths=paths)
    spec = batch_spec(mesh)

    def run(params, policy, stream, episodes):
        return rollout(params, policy, stream, episodes, paths)

    return jax.shard_map(
        run,
        mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec(), PartitionSpec(), spec),
        out_specs=spec,
        check_vma=False,  # episodes are independent: no collectives, nothing to check
    )


@functools.cache
def _compiled_runner(mesh: Mesh | None, paths: bool) -> Callable:
    return jax.jit(episode_runner(mesh, paths))


def to_host(x: jax.Array) -> np.ndarray:
    """``x`` as a NumPy array in this process, gathered from every process if it spans several."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def simulate(
    params: MarketParams,
    policy: Policy,
    key: jax.Array,
    n_episodes: int,
    *,
    paths: bool = False,
    chunk_size: int | None = None,
    devices: Sequence[jax.Device] | Mesh | None = None,
    progress: bool = False,
) -> Rollout:
    """Simulate ``n_episodes`` sessions of ``policy`` in the market ``params``.

    Args:
        params: the market (validated here, before anything is compiled).
        policy: ``(obs: MarketState, params) -> Quotes``; see ``jaxmm.policies``.
        key: a JAX PRNG key. The same key gives the same numbers; the same key under two
            policies gives both the same mid paths and fill uniforms (common random numbers).
        n_episodes: number of independent sessions.
        paths: also return per-step paths (memory ``O(n_episodes * n_steps)``).
        chunk_size: episodes per compiled chunk (default ``DEFAULT_CHUNK``); results do not
            depend on it. Memory is bounded by the chunk, plus ``O(n_episodes)`` for results
            (``jaxmm.streaming.simulate_summary`` keeps only statistics: bounded memory).
        devices: a list of devices (for example ``jax.devices()`` or
            ``jaxmm.devices.select("gpu", 4)``) or a ``Mesh``: every chunk's episodes are split
            evenly across them (over all axes of a ``Mesh``), each device simulating its share
            as its own program. Results are identical to the single-device run. With one chunk
            the returned arrays stay split across the devices (see ``x.sharding``); with
            several they are gathered on the host. The devices may span processes started with
            ``jax.distributed.initialize`` (every process makes the same call).
        progress: print one line per chunk to stderr.

    Returns:
        A ``Rollout`` of per-episode results (see ``jaxmm.metrics.summarize``).
    """
    params.validate()
    policy = policies.checked_pytree(policy)
    mesh = episode_mesh(devices)
    n_chunks, chunk = plan_chunks(n_episodes, chunk_size, 1 if mesh is None else mesh.size)
    stream = market.stream_key(key)
    run = _compiled_runner(mesh, paths)

    results = []
    for index in range(n_chunks):
        start = index * chunk
        result = run(params, policy, stream, episode_indices(start, chunk, mesh))
        keep = min(chunk, n_episodes - start)
        if n_chunks == 1:
            results.append(jax.tree.map(lambda x, keep=keep: x[:keep], result))
        else:
            results.append(jax.tree.map(lambda x, keep=keep: to_host(x)[:keep], result))
        if progress:
            done = start + keep
            print(f"simulate: {done:,}/{n_episodes:,} episodes", file=sys.stderr, flush=True)
    if n_chunks == 1:
        return results[0]
    return jax.tree.map(lambda *xs: jnp.asarray(np.concatenate(xs)), *results)
