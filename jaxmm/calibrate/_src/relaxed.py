"""A differentiable relaxation of the market step, for gradients through the simulation.

``jax.grad`` through the exact simulator sees no effect of a quote's depth on its fill
probability (fills are discrete). ``relaxed_fill`` is a smooth stand-in for the fill indicator;
``relaxed_step_with_noise`` is ``market.step_with_noise`` with it as the ``fill`` hook (the rest
of the step is the market's own code), and ``relaxed_rollout`` runs episodes of it:
``RelaxedRollout`` holds terminal PnL and inventory (``[n]``, price units and units, the
inventory fractional when relaxed) and per-step fills and mid changes (``[n, N]``).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import struct

from jaxmm.market import (
    MarketState,
    Noise,
    Quotes,
    StepInfo,
    counter_noise,
    reset,
    step_with_noise,
)
from jaxmm.params import MarketParams


def relaxed_fill(
    prob: jax.Array, uniform: jax.Array, temperature: jax.Array, expected: bool = False
) -> jax.Array:
    """A differentiable stand-in for the fill indicator ``uniform < prob``.

    - ``expected=True``: the expected fill ``prob`` itself (no noise at all);
    - ``temperature > 0``: the relaxed Bernoulli (binary Concrete, Maddison et al. 2017) driven by
      the same uniform, ``sigmoid((logit prob - logit uniform) / temperature)``; it tends to the
      hard indicator as the temperature goes to 0;
    - ``temperature == 0``: exactly the hard indicator of ``market.step_with_noise``.

    Where ``prob`` is 0 or 1 the hard value is used (its gradient is zero there anyway).
    """
    dtype = uniform.dtype
    hard = (uniform < prob).astype(dtype)
    if expected:
        return jnp.asarray(prob, dtype)
    interior = (prob > 0) & (prob < 1)
    safe = jnp.where(interior, prob, 0.5)
    positive = temperature > 0
    scale = jnp.where(positive, temperature, 1.0)
    logits = jnp.log(safe) - jnp.log1p(-safe) - jnp.log(uniform) + jnp.log1p(-uniform)
    soft = jnp.where(interior, jax.nn.sigmoid(logits / scale), hard)
    return jnp.where(positive, soft, hard).astype(dtype)


def _relaxed_fill_hook(
    temperature: jax.Array, expected: bool = False
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``relaxed_fill`` at ``temperature`` as the ``fill(u, probability)`` hook of
    ``market.step_with_noise``."""

    def fill(uniform: jax.Array, prob: jax.Array) -> jax.Array:
        return relaxed_fill(prob, uniform, temperature, expected)

    return fill


def relaxed_step_with_noise(
    state: MarketState,
    quotes: Quotes,
    noise: Noise,
    params: MarketParams,
    temperature: jax.Array,
    expected_fills: bool = False,
) -> tuple[MarketState, StepInfo]:
    """``market.step_with_noise`` with the fills replaced by ``relaxed_fill`` (same noise).

    Only the fill indicators differ: the step is ``market.step_with_noise`` itself, given
    ``fill=_relaxed_fill_hook(temperature, expected_fills)``; at ``temperature = 0`` (and
    ``expected_fills=False``) the result is identical to the exact step, bit for bit
    (``tests/test_calibrate.py`` checks every market option). With relaxed fills the inventory
    becomes fractional and every output is a smooth function of the quotes and of the market's
    numbers (``A``, ``k``, ``sigma``, ...), while the mid's noise stays a reparameterised
    function of the uniforms. The inventory limits stay hard masks.
    """
    fill = _relaxed_fill_hook(temperature, expected_fills)
    return step_with_noise(state, quotes, noise, params, fill=fill)


@struct.dataclass
class RelaxedRollout:
    """Episodes of the relaxed market: terminal values ``[n]`` and per-step values ``[n, N]``.

    Attributes:
        pnl, inventory: terminal PnL (price units) and inventory (fractional when relaxed).
        bid_fill, ask_fill: relaxed fill of each step (``[n, N]``, in [0, 1]).
        mid_change: ``S_{t+1} - S_t`` of each step, ``[n, N]``.
    """

    pnl: jax.Array
    inventory: jax.Array
    bid_fill: jax.Array
    ask_fill: jax.Array
    mid_change: jax.Array


def relaxed_rollout(
    params: MarketParams,
    policy: Callable,
    stream: jax.Array,
    episodes: jax.Array,
    temperature: jax.Array,
    expected_fills: bool = False,
) -> RelaxedRollout:
    """``simulate.rollout`` on the relaxed step: pure, jit-able and differentiable.

    Episode ``i`` at step ``t`` uses ``market.counter_noise(stream, episodes[i], t)``, the noise
    ``simulate`` gives it, so relaxed and exact runs share their paths (common random numbers).
    Gradients flow to the policy's leaves (``gamma``, ``k`` of A-S) and to ``params``' leaves.
    """

    def episode(index: jax.Array) -> RelaxedRollout:
        def body(state, _):
            noise = counter_noise(stream, index, state.t)
            state, info = relaxed_step_with_noise(
                state, policy(state, params), noise, params, temperature, expected_fills
            )
            return state, (info.bid_fill, info.ask_fill, info.mid_change)

        start = reset(jax.random.key(0), params)
        final, (bid_fill, ask_fill, mid_change) = jax.lax.scan(
            body, start, None, length=params.n_steps
        )
        return RelaxedRollout(final.pnl, final.inventory, bid_fill, ask_fill, mid_change)

    return jax.vmap(episode)(episodes)
