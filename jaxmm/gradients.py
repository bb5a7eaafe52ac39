"""The exact expected reward of a (t, q) quote table as a differentiable function of its depths.

``optimal.evaluate`` computes a (t, q)-Markov policy's exact expected episode reward by a
backward recursion over the simulator's MDP, but it tabulates the policy on the host and
returns NumPy. ``ExactObjective`` exposes the same recursion (``optimal``'s own DP pieces, not a
copy) as a pure, jit-able JAX function of the depth tables, so that ``jax.grad`` of the
expected reward with respect to anything that produced the depths -- the weights of a policy
network, say -- is the exact gradient (no Monte Carlo).

A stochastic policy whose action distribution at ``(t, q)`` is a finite mixture (for example a
Gaussian over actions replaced by a quadrature rule) is evaluated exactly too: the expected
reward of one step is linear in the action distribution, so the recursion takes the weighted
sum of the one-step values of the mixture's depth pairs.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxmm import optimal, rewards
from jaxmm.params import MarketParams

__all__ = ["ExactObjective"]


class ExactObjective:
    """The exact value of depth tables in the MDP of ``optimal.bellman`` / ``optimal.evaluate``.

    Args:
        params: the market (validated here; the options the exact solvers refuse are refused).
        phi: the reward's penalty coefficient (>= 0). reward: ``"inventory_penalty"``,
            ``"pnl"`` or ``"variance"`` (``"cara"`` is not additive in (t, q): refused).
        terminal_penalty: ``-terminal_penalty q_N^2`` at the end (>= 0).
        q_grid: the inventory grid ``-Q..Q`` (``optimal``'s default ``min(q_max, n_steps)``,
            exact from a flat start).

    Attributes:
        inventories: ``i64[n_q]``, the grid. n_steps: ``N``.

    ``values(bids, asks, weights=None) -> f[N, n_q]``: ``V_t(q)`` for ``t = 0..N-1``, price
    units, in the dtype of the depths (float64 under ``jax.enable_x64`` for the tests; float32
    is fine for training). ``bids``, ``asks``: ``f[N, n_q]`` depths (price units) of a
    deterministic policy, or ``f[N, m, n_q]`` with ``weights f[m]`` (non-negative, summing to
    1): at ``(t, q)`` the policy quotes pair ``j`` with probability ``weights[j]``. Depths are
    used as quoted (an infinite depth never fills). ``expected_reward(...)`` is ``V_0(0)``,
    the expected episode reward from a flat start. Both are pure functions of the depths:
    ``jax.grad`` through them is exact.
    """

    def __init__(
        self,
        params: MarketParams,
        phi: float,
        *,
        reward: str = "inventory_penalty",
        terminal_penalty: float = 0.0,
        q_grid: int | None = None,
    ):
        phi, terminal_penalty, _ = optimal._check_mdp(
            params, phi, reward, terminal_penalty, (0.0, 1.0)
        )
        self.inventories = optimal._inventory_grid(params, q_grid)
        self.n_steps = int(params.n_steps)
        self._models = optimal._models(params)
        with jax.enable_x64(True):
            consts = optimal._constants(params, self.inventories)
            self._numbers = {name: np.asarray(value) for name, value in consts.items()}
        self._penalties = rewards.penalty_schedule(params, phi, reward)
        q = self.inventories.astype(np.float64)
        self._q = q
        self._terminal = -terminal_penalty * q**2
        self._zero = int(np.flatnonzero(self.inventories == 0)[0])

    def _cast(self, dtype: Any) -> tuple[dict, jax.Array, jax.Array, jax.Array]:
        numbers = {
            name: jnp.asarray(value, dtype if value.dtype.kind == "f" else value.dtype)
            for name, value in self._numbers.items()
        }
        cast = (jnp.asarray(x, dtype) for x in (self._q, self._penalties, self._terminal))
        return numbers, *cast

    def values(self, bids: jax.Array, asks: jax.Array, weights: jax.Array | None = None):
        """``V_t(q)``, ``f[N, n_q]``; see the class docstring."""
        bids, asks = jnp.asarray(bids), jnp.asarray(asks)
        expected = (self.n_steps, self.inventories.size)
        shape = expected if weights is None else (expected[0], np.shape(weights)[0], expected[1])
        if bids.shape != shape or asks.shape != shape:
            raise ValueError(
                f"bids {bids.shape}, asks {asks.shape}; allowed: both {shape} "
                "(steps, [mixture,] inventories)"
            )
        dtype = jnp.result_type(bids.dtype, asks.dtype, jnp.float32)
        numbers, q, penalties, terminal = self._cast(dtype)
        bids, asks = bids.astype(dtype), asks.astype(dtype)
        if weights is None:
            return optimal._evaluate_mdp(numbers, q, penalties, terminal, bids, asks, self._models)
        weights = jnp.asarray(weights, dtype)
        consts = {**numbers, "fill_model": self._models[0], "fill_shape": self._models[1]}

        def one_step(later, penalty, bid, ask):
            return optimal._one_step_value(later, q, penalty, bid, ask, consts)

        mixture = jax.vmap(one_step, in_axes=(None, None, 0, 0))

        def back(later, inputs):
            penalty, bid, ask = inputs
            value = weights @ mixture(later, penalty, bid, ask)
            return value, value

        _, values = jax.lax.scan(back, terminal, (penalties, bids, asks), reverse=True)
        return values

    def expected_reward(
        self, bids: jax.Array, asks: jax.Array, weights: jax.Array | None = None
    ) -> jax.Array:
        """``V_0(0)``: the exact expected episode reward from a flat start (a scalar)."""
        return self.values(bids, asks, weights)[0, self._zero]
