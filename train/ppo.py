"""PPO in the style of PureJaxRL: the whole training run is one pure, jit-able function.

``make_train(config)`` returns ``train(key) -> (TrainState, metrics)``: rollouts over
``num_envs`` parallel environments, GAE, ``update_epochs`` passes of ``num_minibatches``
minibatches -- every loop a ``lax.scan`` -- so ``jax.vmap(train)(keys)`` trains many seeds at
once. ``python -m train.ppo`` runs the same updates in chunks (progress, steps per second,
periodic evaluation), then evaluates the agent beside the naive, Avellaneda-Stoikov and exact
optimal strategies on common random numbers, and writes ``runs/<name>/``: ``config.json``,
``checkpoint.msgpack``, ``metrics.json`` and ``training_curve.png``. With ``--task execution``
the environment is ``jaxmm.execution.ExecutionEnv`` (sell a position under price impact) and
the comparison is with TWAP, the CJP closed form and the exact discrete optimum instead.

Environments follow the gymnax 1.0 API (six-value ``step`` with auto-reset and
``info["final_observation"]``), with a ``Box`` action space. GAE keeps termination and
truncation apart: a terminated transition has no successor value, a truncated one bootstraps
from the value of its final observation.

Read top to bottom: ``generalized_advantages``; the state types; the environment side
(``VecEnv``, and ``wrap_env``: random regimes and staggering are the gymnax wrappers
``jaxmm.env.RegimeWrapper`` and ``StaggerWrapper``); the learner (``make_optimizer``,
``init_train_state``, ``collect_rollout``, ``batch_advantages``, ``ppo_loss``,
``update_epochs``, ``finish_update``); ``make_trainer``, whose ``update`` is those calls in
order; then the chunked runner and the command line.
"""

from __future__ import annotations

if __name__ == "__main__":  # one CPU device per core for the seeds, before JAX starts
    from jaxmm.devices import request_host_devices

    request_host_devices()

import argparse
import dataclasses
import functools
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jaxmm import devices as device_lib
from jaxmm.env import RegimeWrapper, StaggerWrapper
from train import checkpoint, evaluate
from train.config import (
    PPOConfig,
    add_config_flag,
    add_field_flags,
    agent_spec,
    market_env,
    parse_config_flags,
)
from train.networks import Agent, AgentSpec, ObsNorm, policy_distribution, squash

__all__ = [
    "FIELD_HELP",
    "TrainState",
    "Trainer",
    "Transition",
    "VecEnv",
    "batch_advantages",
    "benchmark",
    "collect_rollout",
    "finish_update",
    "generalized_advantages",
    "init_states",
    "init_train_state",
    "main",
    "make_chunk_runner",
    "make_optimizer",
    "make_train",
    "make_trainer",
    "parse_args",
    "ppo_loss",
    "seed_devices",
    "seed_keys",
    "train_run",
    "update_epochs",
    "wrap_env",
]

# ----------------------------------------------------------------------------------------------
# GAE


def generalized_advantages(
    rewards: jax.Array,
    values: jax.Array,
    next_values: jax.Array,
    terminated: jax.Array,
    truncated: jax.Array,
    gamma: float,
    gae_lambda: float,
) -> tuple[jax.Array, jax.Array]:
    """GAE (Schulman et al. 2016) over a rollout, keeping termination and truncation apart.

    All inputs are ``f[num_steps, ...]`` in time order. ``next_values[t]`` is the value of the
    observation that step ``t`` really led to (before any auto-reset: gymnax's
    ``info["final_observation"]``). With ``done = terminated | truncated``::

        delta_t = r_t + gamma (1 - terminated_t) next_values_t - values_t
        A_t     = delta_t + gamma lambda (1 - done_t) A_{t+1},   A_{num_steps} = 0

    so a terminated step has no successor value, a truncated one bootstraps from its final
    observation, and neither lets the advantage run into the next episode. The last step of the
    rollout bootstraps through ``next_values`` too.

    Returns:
        ``(advantages, returns)``, both shaped like ``rewards``; ``returns = advantages +
        values`` are the value targets.
    """
    not_terminated = 1.0 - terminated.astype(rewards.dtype)
    not_done = 1.0 - jnp.logical_or(terminated, truncated).astype(rewards.dtype)
    deltas = rewards + gamma * not_terminated * next_values - values

    def backward(next_advantage, step):
        delta, continues = step
        advantage = delta + gamma * gae_lambda * continues * next_advantage
        return advantage, advantage

    _, advantages = jax.lax.scan(
        backward, jnp.zeros_like(deltas[0]), (deltas, not_done), reverse=True
    )
    return advantages, advantages + values


# ----------------------------------------------------------------------------------------------
# Training state and one update


@struct.dataclass
class TrainState:
    """Everything one seed's training carries from update to update.

    Attributes:
        params: network parameters. opt_state: optax state (its step count drives annealing).
        average_params: exponential moving average of ``params`` (decay ``polyak``) without
            bias correction, starting from zeros; ``Trainer.agent`` corrects it.
        obs_norm: running observation statistics (frozen during a rollout, updated after it).
        env_state, obs: the ``num_envs`` environments and their current observations.
            With random regimes each environment's episode parameters are in its state
            (``jaxmm.env.RegimeState``); ``jaxmm.env.unwrap_state`` gives the market states.
        episode_return: unscaled reward accumulated in each environment's current episode (NaN
            for an episode that began before training, see ``jaxmm.env.StaggerWrapper``).
        key: PRNG key. update: number of updates done (int32).
    """

    params: Any
    average_params: Any
    opt_state: Any
    obs_norm: ObsNorm
    env_state: Any
    obs: jax.Array
    episode_return: jax.Array
    key: jax.Array
    update: jax.Array


@struct.dataclass
class Transition:
    """One step of ``num_envs`` environments (a rollout stacks ``num_steps`` of them)."""

    obs: jax.Array
    raw_action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    final_obs: jax.Array


@dataclasses.dataclass(frozen=True)
class Trainer:
    """The pieces of ``make_train``: ``init(key) -> TrainState``, ``update(TrainState) ->
    (TrainState, metrics)``, the number of updates, and ``spec`` (network and action bounds)."""

    init: Callable[[jax.Array], TrainState]
    update: Callable[[TrainState], tuple[TrainState, dict[str, jax.Array]]]
    spec: AgentSpec
    num_updates: int
    polyak: float

    def agent(self, state: TrainState) -> Agent:
        """The deployed agent of a ``TrainState`` (leaves stacked over seeds if it is): the
        bias-corrected moving average of the parameters, ``average / (1 - polyak^updates)``
        (the last parameters when ``polyak = 0`` or before the first update)."""
        weight = 1.0 - self.polyak ** state.update.astype(jnp.float32)
        safe = jnp.where(weight > 0, weight, 1.0)

        def corrected(average: jax.Array, current: jax.Array) -> jax.Array:
            scale = safe.reshape(safe.shape + (1,) * (average.ndim - safe.ndim))
            valid = (weight > 0).reshape(scale.shape)
            return jnp.where(valid, average / scale, current)

        params = jax.tree.map(corrected, state.average_params, state.params)
        return self.spec.agent(params, state.obs_norm)


# ----------------------------------------------------------------------------------------------
# The environment side: ``num_envs`` copies stepped together, regime redraws, staggering


@dataclasses.dataclass(frozen=True)
class VecEnv:
    """``num_envs`` copies of a gymnax-1.0 environment, reset and stepped together (``vmap``).

    The environment is the trainer's, already wrapped: ``jaxmm.env.RegimeWrapper`` for random
    regimes (each copy carries its episode's parameters in its state) and
    ``jaxmm.env.StaggerWrapper`` for staggering (see ``wrap_env``). ``params`` are the base
    parameters, shared by every copy.

    Attributes:
        env, params: the (wrapped) environment and its parameters. num_envs: the batch size.
    """

    env: Any
    params: Any
    num_envs: int

    @property
    def action_shape(self) -> tuple[int, ...]:
        return tuple(self.env.action_space(self.params).shape)

    def reset(self, key: jax.Array) -> tuple[jax.Array, Any]:
        """Reset every environment from ``split(key, num_envs)``: ``(obs, env_state)``."""
        reset = jax.vmap(self.env.reset, in_axes=(0, None))
        return reset(jax.random.split(key, self.num_envs), self.params)

    def step(self, key: jax.Array, env_state: Any, action: jax.Array) -> tuple:
        """One gymnax step of every environment from ``split(key, num_envs)``; ``action`` is
        ``f[num_envs, *action_shape]``. Returns the six gymnax values, each batched."""
        step = jax.vmap(self.env.step, in_axes=(0, 0, 0, None))
        return step(jax.random.split(key, self.num_envs), env_state, action, self.params)


def wrap_env(config: PPOConfig, env: Any, env_params: Any) -> Any:
    """The training environment: ``env`` inside ``RegimeWrapper(env, config.regimes())`` when
    ``random_regimes``, then inside ``StaggerWrapper`` when ``stagger_envs``."""
    regimes = config.regimes()
    if regimes is not None:
        env = RegimeWrapper(env, regimes)
    if config.stagger_envs:
        env = StaggerWrapper(env, horizon=int(env_params.max_steps_in_episode))
    return env


# ----------------------------------------------------------------------------------------------
# The learner: optimizer, initial state, rollout, loss, epochs of minibatch updates


def make_optimizer(config: PPOConfig) -> optax.GradientTransformation:
    """Global-norm clipping, then Adam whose step size is annealed linearly to 0 over the run
    (if ``anneal_lr``; optax counts ``update_epochs * num_minibatches`` steps per update)."""
    steps_per_update = config.update_epochs * config.num_minibatches

    def learning_rate(count: jax.Array) -> jax.Array:
        if not config.anneal_lr:
            return jnp.asarray(config.learning_rate, jnp.float32)
        done = (count // steps_per_update) / config.num_updates
        return config.learning_rate * (1.0 - done)

    return optax.chain(
        optax.clip_by_global_norm(config.max_grad_norm),
        optax.adam(learning_rate, eps=1e-5),
    )


def init_train_state(
    key: jax.Array,
    config: PPOConfig,
    spec: AgentSpec,
    optimizer: optax.GradientTransformation,
    venv: VecEnv,
) -> TrainState:
    """One seed's initial ``TrainState``: network, optimizer and ``num_envs`` reset (with
    random regimes: regime-drawn, with ``stagger_envs``: staggered) environments. ``obs`` is
    ``f[num_envs, obs_dim]``."""
    key, init_key, reset_key = jax.random.split(key, 3)
    agent = spec.init(init_key)
    obs, env_state = venv.reset(reset_key)
    obs = obs.reshape(config.num_envs, spec.obs_dim)
    # NaN marks an episode that began before training: its return is not reported.
    episode_return = jnp.zeros((config.num_envs,), jnp.float32)
    if config.stagger_envs:
        episode_return = jnp.where(env_state.offset > 0, jnp.nan, episode_return)
    return TrainState(
        params=agent.params,
        average_params=jax.tree.map(jnp.zeros_like, agent.params),
        opt_state=optimizer.init(agent.params),
        obs_norm=agent.obs_norm,
        env_state=env_state,
        obs=obs.astype(jnp.float32),
        episode_return=episode_return,
        key=key,
        update=jnp.zeros((), jnp.int32),
    )


def collect_rollout(
    state: TrainState, config: PPOConfig, spec: AgentSpec, venv: VecEnv
) -> tuple[TrainState, Transition, dict[str, jax.Array]]:
    """``config.num_steps`` steps of the ``num_envs`` environments under the current policy.

    Returns:
        The state advanced past the rollout (environments, observations, episode returns, key,
        regimes); the batch, a ``Transition`` whose leaves are ``[num_steps, num_envs, ...]``
        (``obs`` and ``final_obs`` ``f[num_steps, num_envs, obs_dim]``, ``raw_action``
        ``f[num_steps, num_envs, action_dim]``, the rest ``[num_steps, num_envs]``); and stats:
        the mean unscaled return of the episodes that finished (NaN if none) and their number.
    """
    action_low = np.asarray(spec.action_low, np.float32)
    action_high = np.asarray(spec.action_high, np.float32)

    def env_step(carry, _):
        env_state, obs, episode_return, finished_sum, finished_count, key = carry
        key, action_key, step_key = jax.random.split(key, 3)
        mean, log_std, value = spec.network.apply(state.params, state.obs_norm.normalize(obs))
        policy = policy_distribution(mean, log_std)
        raw_action = policy.sample(seed=action_key)
        action = squash(raw_action, action_low, action_high)
        next_obs, env_state, reward, terminated, truncated, info = venv.step(
            step_key,
            env_state,
            action.reshape((config.num_envs, *venv.action_shape)),
        )
        reward = reward.astype(jnp.float32)
        done = jnp.logical_or(terminated, truncated)
        episode_return = episode_return + reward
        counted = done & jnp.isfinite(episode_return)
        finished_sum = finished_sum + jnp.sum(jnp.where(counted, episode_return, 0.0))
        finished_count = finished_count + jnp.sum(counted)
        transition = Transition(
            obs=obs,
            raw_action=raw_action,
            log_prob=policy.log_prob(raw_action),
            value=value,
            reward=reward,
            terminated=terminated,
            truncated=truncated,
            final_obs=info["final_observation"].reshape(obs.shape).astype(jnp.float32),
        )
        next_obs = next_obs.reshape(obs.shape).astype(jnp.float32)
        episode_return = jnp.where(done, 0.0, episode_return)
        return (env_state, next_obs, episode_return, finished_sum, finished_count, key), transition

    zero = jnp.zeros((), jnp.float32)
    start = (state.env_state, state.obs, state.episode_return, zero, zero, state.key)
    (env_state, obs, episode_return, finished_sum, finished_count, key), batch = jax.lax.scan(
        env_step, start, None, length=config.num_steps
    )
    state = state.replace(env_state=env_state, obs=obs, episode_return=episode_return, key=key)
    mean_return = finished_sum / jnp.maximum(finished_count, 1.0)
    stats = {
        "episode_return": jnp.where(finished_count > 0, mean_return, jnp.nan),
        "episodes": finished_count,
    }
    return state, batch, stats


def batch_advantages(
    state: TrainState, batch: Transition, config: PPOConfig, spec: AgentSpec
) -> tuple[jax.Array, jax.Array]:
    """GAE advantages and value targets (``f[num_steps, num_envs]`` each) of a rollout, on
    rewards scaled by ``reward_scale``, bootstrapping from the values of the final
    observations."""
    _, _, next_values = spec.network.apply(state.params, state.obs_norm.normalize(batch.final_obs))
    return generalized_advantages(
        batch.reward * config.reward_scale,
        batch.value,
        next_values,
        batch.terminated,
        batch.truncated,
        config.gamma,
        config.gae_lambda,
    )


def ppo_loss(
    params: Any,
    batch: Transition,
    advantages: jax.Array,
    targets: jax.Array,
    obs_norm: ObsNorm,
    config: PPOConfig,
    network: Any,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The clipped PPO objective on one minibatch (leaves ``[minibatch_size, ...]``,
    ``advantages`` and ``targets`` ``f[minibatch_size]``; advantages normalised here).

    Returns ``(total, aux)``: ``total = actor + vf_coef value - ent_coef entropy`` (a scalar)
    and the scalars ``actor_loss``, ``value_loss``, ``entropy``, ``approx_kl``.
    """
    mean, log_std, value = network.apply(params, obs_norm.normalize(batch.obs))
    policy = policy_distribution(mean, log_std)
    log_prob = policy.log_prob(batch.raw_action)
    ratio = jnp.exp(log_prob - batch.log_prob)
    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    clipped_ratio = jnp.clip(ratio, 1.0 - config.clip_eps, 1.0 + config.clip_eps)
    actor_loss = -jnp.mean(jnp.minimum(ratio * advantages, clipped_ratio * advantages))
    value_loss = 0.5 * jnp.mean((value - targets) ** 2)
    entropy = jnp.mean(policy.entropy())
    total = actor_loss + config.vf_coef * value_loss - config.ent_coef * entropy
    approx_kl = jnp.mean((ratio - 1.0) - jnp.log(ratio))
    return total, {
        "actor_loss": actor_loss,
        "value_loss": value_loss,
        "entropy": entropy,
        "approx_kl": approx_kl,
    }


def update_epochs(
    state: TrainState,
    batch: Transition,
    advantages: jax.Array,
    targets: jax.Array,
    config: PPOConfig,
    network: Any,
    optimizer: optax.GradientTransformation,
) -> tuple[tuple[Any, Any, jax.Array], dict[str, jax.Array]]:
    """``update_epochs`` passes over the rollout (``batch`` leaves and ``advantages`` /
    ``targets`` ``[num_steps, num_envs, ...]``, flattened to ``batch_size``), each a fresh
    permutation cut into ``num_minibatches`` minibatches of ``minibatch_size``, one optimizer
    step per minibatch.

    Returns ``((params, opt_state, key), losses)``, ``losses[name]`` ``f[update_epochs,
    num_minibatches]``.
    """
    loss = functools.partial(ppo_loss, obs_norm=state.obs_norm, config=config, network=network)
    grad_fn = jax.grad(loss, has_aux=True)
    flat = jax.tree.map(
        lambda x: x.reshape((config.batch_size, *x.shape[2:])), (batch, advantages, targets)
    )

    def minibatch_step(carry, minibatch):
        params, opt_state = carry
        grads, losses = grad_fn(params, *minibatch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), losses

    def epoch(carry, _):
        params, opt_state, key = carry
        key, perm_key = jax.random.split(key)
        order = jax.random.permutation(perm_key, config.batch_size)
        shape = (config.num_minibatches, config.minibatch_size)
        minibatches = jax.tree.map(lambda x: x[order].reshape((*shape, *x.shape[1:])), flat)
        (params, opt_state), losses = jax.lax.scan(minibatch_step, (params, opt_state), minibatches)
        return (params, opt_state, key), losses

    start = (state.params, state.opt_state, state.key)
    return jax.lax.scan(epoch, start, None, length=config.update_epochs)


def finish_update(
    state: TrainState,
    params: Any,
    opt_state: Any,
    key: jax.Array,
    batch: Transition,
    config: PPOConfig,
) -> TrainState:
    """The state after one update: new parameters and optimizer state, their moving average
    (decay ``polyak``), observation statistics updated on the rollout (if ``normalize_obs``),
    the key, and the update count."""
    obs_norm = state.obs_norm
    if config.normalize_obs:
        obs_norm = obs_norm.update(batch.obs.reshape(config.batch_size, batch.obs.shape[-1]))
    return state.replace(
        params=params,
        average_params=jax.tree.map(
            lambda avg, new: config.polyak * avg + (1 - config.polyak) * new,
            state.average_params,
            params,
        ),
        opt_state=opt_state,
        obs_norm=obs_norm,
        key=key,
        update=state.update + 1,
    )


def make_trainer(config: PPOConfig, env: Any = None, env_params: Any = None) -> Trainer:
    """Build ``init`` and ``update`` for ``config``.

    Args:
        config: the run (validated here).
        env: a gymnax-1.0 environment with a bounded Box action space (default:
            ``market_env(config)``); env_params: its parameters (default: its defaults).
    """
    config.validate()
    if env is None:
        env, env_params = market_env(config)
    elif env_params is None:
        env_params = env.default_params
    spec = agent_spec(config, env, env_params)
    venv = VecEnv(wrap_env(config, env, env_params), env_params, config.num_envs)
    optimizer = make_optimizer(config)

    def init(key: jax.Array) -> TrainState:
        return init_train_state(key, config, spec, optimizer, venv)

    def update(state: TrainState) -> tuple[TrainState, dict[str, jax.Array]]:
        state, batch, stats = collect_rollout(state, config, spec, venv)
        advantages, targets = batch_advantages(state, batch, config, spec)
        (params, opt_state, key), losses = update_epochs(
            state, batch, advantages, targets, config, spec.network, optimizer
        )
        state = finish_update(state, params, opt_state, key, batch, config)
        return state, {**stats, **jax.tree.map(jnp.mean, losses)}

    return Trainer(
        init=init, update=update, spec=spec, num_updates=config.num_updates, polyak=config.polyak
    )


def make_train(
    config: PPOConfig, env: Any = None, env_params: Any = None
) -> Callable[[jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """A pure ``train(key) -> (final TrainState, metrics)`` running ``config.num_updates``
    updates in one ``lax.scan``; ``metrics[name]`` is ``f[num_updates]``.

    ``jax.jit(jax.vmap(train))(keys)`` trains ``len(keys)`` seeds at once. The environment
    defaults to ``market_env(config)``; any gymnax-1.0 environment with a Box action space works.
    """
    trainer = make_trainer(config, env, env_params)

    def train(key: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
        def body(state, _):
            return trainer.update(state)

        return jax.lax.scan(body, trainer.init(key), None, length=trainer.num_updates)

    return train


def seed_keys(config: PPOConfig) -> jax.Array:
    """The ``num_seeds`` training keys of a run: ``split(key(seed), num_seeds)``."""
    return jax.random.split(jax.random.key(config.seed), config.num_seeds)


def seed_devices(config: PPOConfig) -> list[jax.Device]:
    """The devices the seeds are split over: ``config.devices`` of ``config.platform``, or
    with ``devices = 0`` the largest number of them that divides ``num_seeds``."""
    count = config.devices
    if count == 0:
        available = len(device_lib.select(config.platform))
        count = max(n for n in range(1, available + 1) if config.num_seeds % n == 0)
    return device_lib.select(config.platform, count)


def init_states(trainer: Trainer, config: PPOConfig) -> TrainState:
    """Every seed's initial ``TrainState`` (leaves stacked over seeds), split over
    ``seed_devices(config)`` along the seed axis (``NamedSharding`` on a 1-D mesh ``"seeds"``).
    The jitted updates follow the sharding of their inputs, so every device trains its own
    seeds with no communication between them."""
    states = jax.jit(jax.vmap(trainer.init))(seed_keys(config))
    devices = seed_devices(config)
    if len(devices) == 1 and config.platform is None:
        return states
    return device_lib.shard_batch(states, device_lib.mesh(devices, "seeds"))


def make_chunk_runner(trainer: Trainer, max_updates: int) -> Callable:
    """``run(states, n) -> (states, metrics)``: ``n <= max_updates`` updates of every seed
    (``states`` batched over seeds), jitted once. ``metrics[name]`` is
    ``f[num_seeds, max_updates]``; entries past ``n`` are NaN. ``n`` is a traced argument, so
    chunks of different lengths share one compiled program."""

    def run_one(state: TrainState, n_updates: jax.Array):
        _, metric_shapes = jax.eval_shape(trainer.update, state)
        buffers = jax.tree.map(
            lambda s: jnp.full((max_updates, *s.shape), jnp.nan, jnp.float32), metric_shapes
        )

        def body(i, carry):
            state, buffers = carry
            state, metrics = trainer.update(state)
            buffers = jax.tree.map(
                lambda buffer, value: buffer.at[i].set(value.astype(jnp.float32)), buffers, metrics
            )
            return state, buffers

        return jax.lax.fori_loop(0, n_updates, body, (state, buffers))

    return jax.jit(jax.vmap(run_one, in_axes=(0, None)), donate_argnums=0)


# ----------------------------------------------------------------------------------------------
# Command line


def _progress_line(done: int, total: int, steps_per_second: float, extra: str) -> str:
    width = 30
    filled = round(width * done / total)
    bar = "#" * filled + "." * (width - filled)
    return f"[{bar}] {done:>12,}/{total:,} steps  {steps_per_second:>9,.0f} steps/s  {extra}"


# Help of every PPOConfig flag, with its unit (train.config.PPOConfig documents each field).
FIELD_HELP = {
    "phi": "inventory penalty coefficient of the reward, per unit of inventory squared per step "
    "(inventory_penalty: dPnL - phi q'^2; variance: dPnL - phi sigma_t^2 dt q'^2), >= 0",
    "reward": "reward: inventory_penalty, pnl, variance or cara (utility of terminal wealth, "
    "phi = its risk aversion per price unit, > 0)",
    "features": "observation set: full, no_as_spread, no_volatility, inventory_only, extended, "
    "alpha (full + the alpha signal) or hawkes (full + the order-flow intensities)",
    "action_mode": "depths (bid and ask depths, price units, in [0.01, 5]), as_skew, or "
    "depths_mo (depths and a market order: third action in [-1, 1], sell below -1/3, buy "
    "above 1/3)",
    "total_timesteps": "environment steps per seed (all parallel environments together)",
    "num_envs": "parallel environments per seed",
    "num_steps": "rollout length per update, environment steps",
    "stagger_envs": "spread the parallel episodes over the session before training",
    "update_epochs": "passes over each rollout",
    "num_minibatches": "minibatches per pass (a divisor of num_envs * num_steps)",
    "learning_rate": "Adam step size (per update)",
    "anneal_lr": "anneal the learning rate linearly to 0 over the updates",
    "gamma": "discount per environment step, in [0, 1] (1: the undiscounted episode reward)",
    "gae_lambda": "GAE lambda, in [0, 1]",
    "clip_eps": "PPO probability-ratio clip, dimensionless (> 0)",
    "ent_coef": "weight of the entropy bonus in the loss (>= 0)",
    "vf_coef": "weight of the value loss in the loss (> 0)",
    "max_grad_norm": "global gradient-norm clip (> 0)",
    "reward_scale": "rewards (price units) are multiplied by this for learning only",
    "hidden_sizes": "widths of the actor-critic's hidden layers, units",
    "activation": "hidden-layer activation: relu or tanh",
    "init_log_std": "initial log standard deviation of the Gaussian policy, in action units",
    "normalize_obs": "standardise observations by running statistics",
    "average_window": "deploy an exponential moving average of the parameters whose time "
    "constant is this fraction of the updates, in [0, 1] (0: the last parameters)",
    "seed": "master seed (integer); seed i of num_seeds trains from split(key(seed))[i]",
    "num_seeds": "agents trained in parallel (the best on the progress evaluations is kept)",
    "devices": "split the seeds over this many devices (0: auto, the largest divisor of "
    "num_seeds not above the device count)",
    "name": "run name: results go to OUT_DIR/NAME/",
    "out_dir": "folder of the runs",
    "num_evals": "progress evaluations (and progress lines) during training",
    "progress_episodes": "episodes of each progress evaluation, per seed",
    "eval_episodes": "episodes of the final comparison (common random numbers)",
    "eval_seed": "key of the final comparison (integer; eval_seed + 1 for progress evaluations)",
    "naive_half_spread": "depth of the naive symmetric benchmark, price units",
    "as_gamma": "risk aversion of the A-S benchmark and feature, per price unit",
    "vol_switch_step": "volatility switch at this step of the session (default: none)",
    "vol_switch_factor": "sigma is multiplied by this from VOL_SWITCH_STEP on, dimensionless",
    "random_regimes": "train on randomised volatility regimes (a new switch every episode)",
    "regime_switch_prob": "probability that an episode switches volatility, in [0, 1]",
    "regime_step_low": "earliest switch step of the random regimes, steps",
    "regime_step_high": "latest switch step of the random regimes, steps",
    "regime_factor_low": "smallest volatility factor of the random regimes (log-uniform)",
    "regime_factor_high": "largest volatility factor of the random regimes (log-uniform)",
    "fill_shape": "fill intensity shape: exponential, power or linear",
    "fill_shape_alpha": "alpha of the power shape, dimensionless (> 1; ignored by the others)",
    "fill_model": "per-step fill probability: linear min(1, lambda dt) or exponential "
    "1 - exp(-lambda dt)",
    "alpha_model": "short-term alpha signal in the mid's drift: none or ou",
    "alpha_rate": "mean reversion zeta of the alpha signal, per time unit (> 0 with ou)",
    "alpha_vol": "volatility eta of the alpha signal, price units per time unit per "
    "sqrt(time unit) (>= 0)",
    "alpha0": "initial alpha, price units per time unit",
    "alpha_grid_points": "alpha grid points of the exact (t, q, alpha) optimum (odd, >= 3)",
    "mo_cost": "market orders as a control: half-spread plus temporary impact per unit, price "
    "units (>= 0; -1: no market orders); needs action_mode depths_mo",
    "mo_permanent_impact": "permanent impact of a market order on the mid, price units per "
    "unit (>= 0; 0: none)",
    "ou_rate": "Ornstein-Uhlenbeck mid: mean-reversion rate, per time unit (> 0; 0: off)",
    "ou_level": "Ornstein-Uhlenbeck mid: the level it reverts to, price units (0: S0)",
    "arrival_model": "market-order arrivals: poisson, or hawkes (self-exciting; the market then "
    "fills by Poisson thinning, fill_model exponential)",
    "hawkes_decay": "Hawkes kernel decay beta, per time unit (> 0 with hawkes)",
    "hawkes_self": "Hawkes intensity jump per same-side market order, per time unit (>= 0)",
    "hawkes_cross": "Hawkes intensity jump per other-side market order, per time unit (>= 0)",
    "hawkes_mean_intensity": "with hawkes: set A so the stationary mean intensity per side is "
    "this, per time unit (0: keep the homework's A)",
    "hawkes_start": "Hawkes excitation at reset: rest (0) or mean (the stationary mean)",
    "task": "market_making (the default) or execution (sell execution_inventory shares over "
    "the session; the market-making fields do not apply)",
    "execution_inventory": "execution: shares to sell, > 0",
    "execution_S0": "execution: initial mid, price units",
    "execution_sigma": "execution: mid volatility, price units per sqrt(time unit), >= 0",
    "execution_k": "execution: temporary impact, price x time unit per share, > 0",
    "execution_b": "execution: permanent impact, price units per share, >= 0",
    "execution_phi": "execution: running inventory penalty, price per share^2 per time unit",
    "execution_alpha": "execution: terminal penalty, price per share^2, > b/2 (inf: liquidate)",
    "execution_T": "execution: session length, time units, > 0",
    "execution_steps": "execution: decisions per session (dt = T / steps)",
}


def parse_args(argv: list[str] | None = None) -> tuple[PPOConfig, argparse.Namespace]:
    """Every ``PPOConfig`` field as ``--field-name`` (defaults from the dataclass)."""
    parser = argparse.ArgumentParser(
        prog="python -m train.ppo",
        description="Train PPO market makers on the homework market (PureJaxRL style), or "
        "with --task execution an optimal-execution agent. "
        "Every option is a field of train.config.PPOConfig (documented there).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    special = {
        "init_action": (
            (),
            {
                "type": float,
                "nargs": "+",
                "default": None,
                "help": "mean action of the fresh policy (depths: price units; default: the "
                "A-S quote)",
            },
        ),
        "platform": (
            ("--device",),
            {
                "choices": device_lib.PLATFORMS,
                "default": None,
                "help": "default: JAX's default backend",
            },
        ),
    }
    add_field_flags(parser, PPOConfig, special, FIELD_HELP)
    parser.add_argument(
        "--bench",
        type=int,
        nargs="*",
        metavar="NUM_SEEDS",
        help="instead of training, measure training steps/s for these numbers of parallel "
        "seeds (default 1 8 64); writes OUT_DIR/NAME/benchmark.json",
    )
    add_config_flag(parser, PPOConfig, "for example a run's config.json, to rerun it")
    values, args = parse_config_flags(parser, PPOConfig, argv)
    try:
        config = PPOConfig(**values).validate()
        devices = seed_devices(config)
    except ValueError as error:
        parser.error(str(error))
    if config.platform is not None:  # arrays not split over the seeds' mesh live here
        jax.config.update("jax_default_device", devices[0])
    return config, args


def train_run(config: PPOConfig) -> dict[str, Any]:
    """Train ``config.num_seeds`` seeds on the market in chunks, evaluate, and write
    ``out_dir/name/``: ``config.json``, ``checkpoint.msgpack``, ``metrics.json``,
    ``training_curve.png``. Returns the ``metrics.json`` payload.
    """
    wall_start = time.perf_counter()
    config = dataclasses.replace(config, devices=len(seed_devices(config)))  # as it ran
    env, env_params = market_env(config)
    trainer = make_trainer(config, env, env_params)
    run_dir = Path(config.out_dir) / config.name
    run_dir.mkdir(parents=True, exist_ok=True)
    evaluate.write_json(run_dir / "config.json", config.to_dict())

    num_updates = trainer.num_updates
    chunk = math.ceil(num_updates / config.num_evals)
    run_chunk = make_chunk_runner(trainer, chunk)
    states = init_states(trainer, config)
    progress_eval = evaluate.make_progress_evaluator(config, trainer, env, env_params)

    steps_per_update = config.batch_size
    total_steps = num_updates * steps_per_update
    history: dict[str, list] = {}
    evals: list[dict[str, Any]] = []
    train_seconds = 0.0
    compile_seconds = None
    done = 0
    task = f"phi={config.phi}, reward={config.reward}"
    if config.task == "execution":
        task = f"execution task, {env_params}"
    print(
        f"PPO: {config.num_seeds} seed(s) x {total_steps:,} steps, {num_updates} updates of "
        f"{steps_per_update:,} steps; {task}",
        file=sys.stderr,
    )
    while done < num_updates:
        n = min(chunk, num_updates - done)
        start = time.perf_counter()
        states, metrics = run_chunk(states, jnp.int32(n))
        metrics = jax.tree.map(lambda x, n=n: np.asarray(x)[:, :n], jax.device_get(metrics))
        seconds = time.perf_counter() - start
        if compile_seconds is None:
            compile_seconds = seconds  # first chunk: compilation plus its updates
        else:
            train_seconds += seconds
        for name, values in metrics.items():
            history.setdefault(name, []).append(values)
        done += n
        rewards = progress_eval(states)
        evals.append({"env_steps": done * steps_per_update, "mean_reward": rewards.tolist()})
        rate = n * steps_per_update * config.num_seeds / seconds
        extra = f"eval reward {np.mean(rewards):.3f}"
        print(_progress_line(done * steps_per_update, total_steps, rate, extra), file=sys.stderr)

    history = {name: np.concatenate(parts, axis=1) for name, parts in history.items()}
    timed_updates = num_updates - min(chunk, num_updates)
    steps_per_second = (
        timed_updates * steps_per_update * config.num_seeds / train_seconds
        if timed_updates
        else math.nan
    )
    training_wall = time.perf_counter() - wall_start
    selected = int(np.argmax(evals[-1]["mean_reward"]))
    checkpoint.save(run_dir, config, states.params, states.obs_norm, selected_seed=selected)

    comparison = evaluate.evaluate_run(run_dir)
    payload = {
        "config": config.to_dict(),
        **comparison,
        "steps_per_second": steps_per_second,
        "compile_and_first_chunk_seconds": compile_seconds,
        "training_wall_seconds": training_wall,
        "wall_seconds": time.perf_counter() - wall_start,
        "selected_seed": selected,
        "progress_evals": evals,
        "training_history": {name: values.tolist() for name, values in history.items()},
        "notes": {
            "steps_per_second": "environment steps over all seeds per second of training, "
            "after compilation (chunks after the first)",
            "sharpe": "per episode: mean / std of terminal PnL across episodes",
            "selected_seed": "the seed with the best deterministic reward on the progress-"
            "evaluation keys (disjoint from the final evaluation keys)",
        },
    }
    evaluate.write_json(run_dir / "metrics.json", payload)
    evaluate.plot_training_curve(run_dir / "training_curve.png", payload)
    return payload


def benchmark(
    config: PPOConfig, seed_counts: tuple[int, ...] = (1, 8, 64), min_steps: int = 200_000
) -> list[dict[str, Any]]:
    """Training throughput of ``config`` on the market for several numbers of parallel seeds.

    For each count: compile the chunk runner and run one update (``compile_seconds``), then
    time ``n`` updates of every seed, ``n`` the smallest count with ``n * batch_size *
    num_seeds >= min_steps`` (best of two runs). Returns rows with ``num_seeds``,
    ``num_updates``, ``env_steps``, ``compile_seconds``, ``seconds`` and ``steps_per_second``
    (environment steps over all seeds per second, after compilation).
    """
    env, env_params = market_env(config)
    rows = []
    for num_seeds in seed_counts:
        seeded = dataclasses.replace(config, num_seeds=num_seeds)
        trainer = make_trainer(seeded, env, env_params)
        num_updates = max(1, math.ceil(min_steps / (seeded.batch_size * num_seeds)))
        run_chunk = make_chunk_runner(trainer, num_updates)
        states = init_states(trainer, seeded)
        start = time.perf_counter()
        states, _ = jax.block_until_ready(run_chunk(states, jnp.int32(1)))
        compile_seconds = time.perf_counter() - start
        best = math.inf
        for _ in range(2):
            start = time.perf_counter()
            states, _ = jax.block_until_ready(run_chunk(states, jnp.int32(num_updates)))
            best = min(best, time.perf_counter() - start)
        steps = num_updates * seeded.batch_size * num_seeds
        rows.append(
            {
                "num_seeds": num_seeds,
                "num_updates": num_updates,
                "env_steps": steps,
                "compile_seconds": compile_seconds,
                "seconds": best,
                "steps_per_second": steps / best,
            }
        )
        print(
            f"bench: {num_seeds:>3} seed(s)  {steps / best:>12,.0f} steps/s  "
            f"(compile and one update {compile_seconds:.1f} s)",
            file=sys.stderr,
        )
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    config, args = parse_args(argv)
    if args.bench is not None:
        seed_counts = tuple(args.bench) or (1, 8, 64)
        rows = benchmark(config, seed_counts)
        out = Path(config.out_dir) / config.name
        out.mkdir(parents=True, exist_ok=True)
        payload = {
            "config": config.to_dict(),
            "benchmark": rows,
            "notes": "environment steps over all seeds per second of training, after "
            "compilation; best of two timed runs",
        }
        evaluate.write_json(out / "benchmark.json", payload)
        print(f"wrote {out / 'benchmark.json'}", file=sys.stderr)
        return payload
    payload = train_run(config)
    print(evaluate.format_comparison(payload))
    print(f"wrote {Path(config.out_dir) / config.name}/", file=sys.stderr)
    return payload


if __name__ == "__main__":
    main()
