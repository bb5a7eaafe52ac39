"""The PPO agent's networks: an MLP actor-critic with a squashed Gaussian policy.

The actor outputs the mean of a diagonal Gaussian over an unbounded *raw* action ``u``; the
action sent to the environment is ``squash(u) = low + (high - low) * sigmoid(u)``, which lies
inside the Box ``[low, high]`` by construction. PPO's probability ratios are taken in the raw
space: the squashing Jacobian is the same for the old and new policy and cancels. The
deterministic policy is ``squash(mean)`` (the median of the action distribution). The
distribution is distrax's ``MultivariateNormalDiag`` (``policy_distribution``): sampling, log
densities and the entropy come from it.

Observations are standardised by running statistics (``ObsNorm``) collected during training and
frozen in the checkpoint, so the deployed policy sees exactly what the trained one saw.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxmm.linalg import orthonormal_columns

__all__ = [
    "ACTIVATIONS",
    "ActorCritic",
    "Agent",
    "AgentSpec",
    "ObsNorm",
    "orthogonal",
    "policy_distribution",
    "squash",
]

ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu}


def orthogonal(scale: float = 1.0) -> Callable[..., jax.Array]:
    """Orthogonal initialiser for ``Dense`` kernels ``f[fan_in, fan_out]``, without LAPACK.

    The same distribution and the same random draw as ``flax.linen.initializers.orthogonal``
    (``jax.random.orthogonal``: a standard normal ``f[max, min]`` matrix from ``key``, its QR
    ``Q`` with a positive ``diag(R)``, transposed when ``fan_in < fan_out``), times ``scale``;
    the factorisation is ``orthonormal_columns``, so the initialiser is safe under ``vmap`` on
    a CPU (see ``jaxmm.linalg``: flax's, under ``vmap``, compiles to a batched LAPACK QR that
    can deadlock XLA's CPU runtime). Equal to flax's to float32 rounding (about 1e-6).
    """

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        n_rows, n_cols = math.prod(shape[:-1]), shape[-1]
        normal = jax.random.normal(key, (max(n_rows, n_cols), min(n_rows, n_cols)), dtype)
        q = orthonormal_columns(normal)
        if n_rows < n_cols:
            q = q.T
        return (jnp.asarray(scale, dtype) * q).reshape(shape)

    return init


class ActorCritic(nn.Module):
    """Separate actor and critic MLPs.

    Attributes:
        action_dim: size of the action vector.
        hidden_sizes: widths of the hidden layers of each MLP (e.g. ``(64, 64)``).
        activation: ``"tanh"`` or ``"relu"``.
        init_log_std: initial log standard deviation of the raw-action Gaussian.
        init_raw_mean: initial bias of the mean output (``f[action_dim]``; default zeros): the
            mean raw action of a fresh network, whose last-layer weights are tiny.

    ``__call__(obs: f[..., obs_dim]) -> (mean: f[..., action_dim], log_std: f[action_dim],
    value: f[...])``.
    """

    action_dim: int
    hidden_sizes: Sequence[int] = (64, 64)
    activation: str = "tanh"
    init_log_std: float = 0.0
    init_raw_mean: tuple[float, ...] | None = None

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        act = ACTIVATIONS[self.activation]
        hidden_init = orthogonal(np.sqrt(2.0))
        zeros = nn.initializers.constant(0.0)

        actor = obs
        for width in self.hidden_sizes:
            actor = act(nn.Dense(width, kernel_init=hidden_init, bias_init=zeros)(actor))
        mean_bias = zeros
        if self.init_raw_mean is not None:
            mean_bias = nn.initializers.constant(jnp.asarray(self.init_raw_mean, jnp.float32))
        mean = nn.Dense(self.action_dim, kernel_init=orthogonal(0.01), bias_init=mean_bias)(actor)
        log_std = self.param(
            "log_std", nn.initializers.constant(self.init_log_std), (self.action_dim,)
        )

        critic = obs
        for width in self.hidden_sizes:
            critic = act(nn.Dense(width, kernel_init=hidden_init, bias_init=zeros)(critic))
        value = nn.Dense(1, kernel_init=orthogonal(1.0), bias_init=zeros)(critic)
        return mean, log_std, jnp.squeeze(value, axis=-1)


def squash(raw_action: jax.Array, low: jax.Array, high: jax.Array) -> jax.Array:
    """Map a raw action ``f[..., action_dim]`` into the Box: ``low + (high - low) sigmoid(u)``."""
    return low + (high - low) * jax.nn.sigmoid(raw_action)


def policy_distribution(mean: jax.Array, log_std: jax.Array) -> distrax.MultivariateNormalDiag:
    """The policy over raw actions: a diagonal Gaussian with ``mean`` ``f[..., action_dim]`` and
    standard deviations ``exp(log_std)`` (``log_std`` ``f[action_dim]``, broadcast over the
    batch). ``log_prob`` sums over the action axis; ``entropy`` is in nats."""
    scale = jnp.broadcast_to(jnp.exp(log_std), mean.shape)
    return distrax.MultivariateNormalDiag(loc=mean, scale_diag=scale)


@struct.dataclass
class ObsNorm:
    """Running mean and variance of observations (parallel Welford / Chan et al. update).

    Attributes:
        mean: ``f[obs_dim]``. var: ``f[obs_dim]`` (population variance). count: scalar, number of
            observations seen (starts at a tiny value so the first update is well defined).
    """

    mean: jax.Array
    var: jax.Array
    count: jax.Array

    @classmethod
    def create(cls, obs_dim: int) -> ObsNorm:
        return cls(
            mean=jnp.zeros((obs_dim,), jnp.float32),
            var=jnp.ones((obs_dim,), jnp.float32),
            count=jnp.asarray(1e-4, jnp.float32),
        )

    def update(self, batch: jax.Array) -> ObsNorm:
        """Fold in a batch ``f[n, obs_dim]`` of observations."""
        batch_mean = jnp.mean(batch, axis=0)
        batch_var = jnp.var(batch, axis=0)
        batch_count = jnp.asarray(batch.shape[0], jnp.float32)
        delta = batch_mean - self.mean
        total = self.count + batch_count
        mean = self.mean + delta * batch_count / total
        correction = delta**2 * self.count * batch_count / total
        sum_sq = self.var * self.count + batch_var * batch_count + correction
        return ObsNorm(mean=mean, var=sum_sq / total, count=total)

    def normalize(self, obs: jax.Array) -> jax.Array:
        """``(obs - mean) / sqrt(var + 1e-8)``, clipped to ``[-10, 10]``."""
        return jnp.clip((obs - self.mean) / jnp.sqrt(self.var + 1e-8), -10.0, 10.0)


@struct.dataclass
class Agent:
    """A trained agent as a deterministic action function ``obs: f[obs_dim] -> f[action_dim]``.

    The deployed action is ``squash(mean)`` of the Gaussian at the normalised observation. A
    pytree: the weights and statistics are leaves, so ``jit`` treats two agents of the same
    architecture as the same program.

    Attributes:
        params: the ``ActorCritic`` parameters. obs_norm: the frozen observation statistics.
        network: the module (static). action_low, action_high: the Box bounds (static tuples).
    """

    params: Any
    obs_norm: ObsNorm
    network: ActorCritic = struct.field(pytree_node=False)
    action_low: tuple[float, ...] = struct.field(pytree_node=False)
    action_high: tuple[float, ...] = struct.field(pytree_node=False)

    def __call__(self, obs: jax.Array) -> jax.Array:
        mean, _, _ = self.network.apply(self.params, self.obs_norm.normalize(obs))
        low = jnp.asarray(self.action_low, mean.dtype)
        high = jnp.asarray(self.action_high, mean.dtype)
        return squash(mean, low, high)


@dataclasses.dataclass(frozen=True)
class AgentSpec:
    """The static part of an agent: network, observation size and action bounds.

    ``init(key)`` draws a fresh ``Agent`` (identity observation statistics); ``agent(params,
    obs_norm)`` wraps trained leaves (stacked over seeds or not).
    """

    network: ActorCritic
    obs_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]

    def agent(self, params: Any, obs_norm: ObsNorm) -> Agent:
        return Agent(
            params=params,
            obs_norm=obs_norm,
            network=self.network,
            action_low=self.action_low,
            action_high=self.action_high,
        )

    def init(self, key: jax.Array) -> Agent:
        params = self.network.init(key, jnp.zeros((self.obs_dim,), jnp.float32))
        return self.agent(params, ObsNorm.create(self.obs_dim))
