"""Learning by differentiating the simulator: the quoting network trained by gradient ascent on
the expected episode reward, and gradient estimators scored against the exact gradient.

``python -m train.diffsim`` trains the PPO agent's network (``train.networks.ActorCritic``, its
actor only; the critic is unused) on the same environment and observations as ``train.ppo``, by
Adam on one of three gradients of the expected episode reward ``J(theta)`` of the deterministic
policy ``squash(mean(obs))``:

- ``"relaxed"``: pathwise, through ``market.step_with_noise`` with the relaxed-Bernoulli fill
  hook of ``jaxmm.calibrate`` (``relaxed_fill``) at a temperature annealed geometrically from
  ``temperature`` to ``temperature_final``; full backpropagation through the 200 steps. The
  relaxed inventory is fractional, so this is the gradient of a different (biased) objective.
- ``"expected"``: the expected-fill estimator. Episodes are simulated with the exact (hard)
  fills; at each step the reward's expectation over the four fill outcomes is taken in closed
  form at the sampled state and mid move (``expected_step_reward``), differentiated pathwise,
  and the effect of the step's fill outcome on the rest of the episode enters through its
  score, ``grad log P(fills_t) (G_{t+1} - b_t)`` (``G_{t+1}`` the sampled reward after step
  ``t``, ``b_t`` the leave-one-out batch mean): unbiased for ``J``.
- ``"exact"``: ``jax.grad`` of the exact ``J`` (``jaxmm.gradients.ExactObjective``: the network's
  depths tabulated on the (t, q) grid, then ``optimal``'s evaluation DP); no simulation at all.
  The ceiling of what gradient learning can reach with this network.

(t, q) policies. With ``tq_only`` (the default) the actor's first-layer weights of every feature
that reads more than ``(t, q)`` (``mid_change`` and ``volatility`` of the ``"full"`` set, and
``fill_rate``/``pnl``) are held at zero, so the network, fed the environment's full observation,
is exactly a function of ``(t, q)`` (``inventory``, ``time_left``, ``as_spread``). Its exact
expected reward is then ``ExactObjective`` of its tabulated depths, which is what makes the
exact gradient, the ``exact`` estimator and the exact scoring of the other estimators possible.

``Problem.gradient`` gives each estimator's gradient (and PPO's own: ``Problem.ppo_gradient``, the
clipped surrogate's gradient at ratio 1 through ``train.ppo.generalized_advantages`` and
``train.ppo.ppo_loss``, scored against the exact gradient of PPO's *stochastic* policy, which
``stochastic_tables`` evaluates exactly with a Gauss-Hermite rule over the Gaussian actions).

A run writes what ``train.ppo`` writes: ``config.json`` (the ``PPOConfig`` of the network and
environment, so ``train.load_policy`` and ``python -m train.evaluate`` work unchanged),
``checkpoint.msgpack``, ``metrics.json`` (``train.evaluate``'s comparison, with the agent under
the key ``"ppo"`` as that contract has it) and ``training_curve.png``; plus
``diffsim_config.json``, the ``DiffSimConfig`` (``--config`` reads it back).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from jaxmm import market, rewards
from jaxmm.calibrate import relaxed_fill
from jaxmm.gradients import ExactObjective
from jaxmm.params import FILL_MODELS, NEVER
from train import checkpoint, evaluate
from train.config import (
    FEATURES,
    PPOConfig,
    add_config_flag,
    add_field_flags,
    agent_spec,
    check_choices,
    check_counts,
    check_ranges,
    config_from_dict,
    config_to_dict,
    market_env,
    parse_config_flags,
)
from train.networks import ACTIVATIONS, ObsNorm, policy_distribution, squash
from train.ppo import Transition, generalized_advantages, ppo_loss

__all__ = [
    "ESTIMATORS",
    "TQ_FEATURES",
    "DiffSimConfig",
    "Problem",
    "expected_step_reward",
    "gauss_hermite",
    "main",
    "make_chunk_runner",
    "make_optimizer",
    "make_problem",
    "parse_args",
    "train_run",
]

ESTIMATORS = ("relaxed", "expected", "exact")
TQ_FEATURES = ("inventory", "time_left", "as_spread")  # the features that read (t, q) only
GRADIENT_REWARDS = ("inventory_penalty", "pnl", "variance")


@dataclasses.dataclass(frozen=True)
class DiffSimConfig:
    """A ``train.diffsim`` run (saved as ``diffsim_config.json``; every field is a flag).

    The defaults are the best head-to-head setting measured (``experiments.diffsim``): the
    relaxed estimator, 4 episodes per gradient, 600 iterations at 1e-2, temperature 0.3 -> 0.1.

    Environment and network (the ``PPOConfig`` fields of the same names, see there): ``phi``,
    ``reward`` (``"inventory_penalty"``, ``"pnl"`` or ``"variance"``), ``features``,
    ``hidden_sizes``, ``activation``, ``init_action``, ``as_gamma``, ``fill_shape``,
    ``fill_shape_alpha``, ``fill_model``, ``vol_switch_step``, ``vol_switch_factor``,
    ``naive_half_spread``.

    Learning:
        estimator: ``"relaxed"``, ``"expected"`` or ``"exact"`` (module docstring).
        tq_only: hold the actor's weights on the features beyond ``(t, q)`` at zero (needed by
            ``"exact"`` unless ``features = "inventory_only"``).
        num_iterations: gradient steps. num_envs: episodes per gradient (each a full session
            of ``n_steps`` steps; unused by ``"exact"``).
        learning_rate: Adam's step size, annealed linearly to 0 if ``anneal_lr``.
        max_grad_norm: global-norm clip of each gradient.
        temperature, temperature_final: the relaxed fills' temperature at the first and last
            iteration, geometric in between (``"relaxed"`` only).
    Run (as in ``PPOConfig``): ``seed`` (seed ``i`` trains from ``split(key(seed))[i]``),
        ``num_seeds``, ``name``, ``out_dir``, ``num_evals`` (progress evaluations, each of
        ``progress_episodes`` episodes on ``key(eval_seed + 1)``), ``eval_episodes``,
        ``eval_seed``.
    """

    phi: float = 0.01
    reward: str = "inventory_penalty"
    features: str = "full"
    estimator: str = "relaxed"
    tq_only: bool = True
    num_iterations: int = 600
    num_envs: int = 4
    learning_rate: float = 1e-2
    anneal_lr: bool = True
    max_grad_norm: float = 10.0
    temperature: float = 0.3
    temperature_final: float = 0.1
    hidden_sizes: tuple[int, ...] = (64, 64)
    activation: str = "relu"
    init_action: tuple[float, ...] | None = None
    seed: int = 0
    num_seeds: int = 4
    name: str = "diffsim"
    out_dir: str = "runs"
    num_evals: int = 10
    progress_episodes: int = 500
    eval_episodes: int = 10_000
    eval_seed: int = 1000
    naive_half_spread: float = 0.5
    as_gamma: float = 0.1
    vol_switch_step: int = NEVER
    vol_switch_factor: float = 1.0
    fill_shape: str = "exponential"
    fill_shape_alpha: float = 0.0
    fill_model: str = "linear"

    @property
    def tq_policy(self) -> bool:
        """Whether the network reads ``(t, q)`` only (``tq_only`` or inventory-only features)."""
        return self.tq_only or self.features == "inventory_only"

    def steps_per_iteration(self, n_steps: int) -> int:
        """Environment steps simulated by one gradient: 0 for ``"exact"``."""
        return 0 if self.estimator == "exact" else self.num_envs * n_steps

    def validate(self) -> DiffSimConfig:
        """Raise ``ValueError`` naming the first invalid field; return ``self``."""
        check_choices(
            self,
            {
                "estimator": ESTIMATORS,
                "reward": GRADIENT_REWARDS,
                "features": FEATURES,
                "activation": tuple(ACTIVATIONS),
                "fill_model": FILL_MODELS,
            },
        )
        check_counts(
            self, ("num_iterations", "num_envs", "num_seeds", "num_evals", "progress_episodes")
        )
        if isinstance(self.eval_episodes, bool) or self.eval_episodes < 2:
            raise ValueError(f"eval_episodes = {self.eval_episodes!r}; allowed: an integer >= 2")
        if self.estimator == "expected" and self.num_envs < 2:
            raise ValueError(
                f"num_envs = {self.num_envs}; allowed: >= 2 with estimator 'expected' (its "
                "baseline is the leave-one-out batch mean)"
            )
        ranges = (
            ("phi", lambda x: x >= 0, ">= 0"),
            ("learning_rate", lambda x: x > 0, "> 0"),
            ("max_grad_norm", lambda x: x > 0, "> 0"),
            ("temperature", lambda x: x > 0, "> 0"),
            ("temperature_final", lambda x: x > 0, "> 0"),
            ("naive_half_spread", lambda x: x > 0, "> 0"),
            ("as_gamma", lambda x: x >= 0, ">= 0"),
        )
        check_ranges(self, ranges)
        if self.estimator == "exact" and not self.tq_policy:
            raise ValueError(
                "tq_only = False; allowed: True with estimator 'exact' (the exact objective "
                "needs a policy of (t, q) only) unless features = 'inventory_only'"
            )
        self.ppo_config().validate()
        return self

    def ppo_config(self) -> PPOConfig:
        """The ``PPOConfig`` of the same network and environment (written as ``config.json``,
        so ``train.load_policy`` rebuilds the agent); its budget fields describe the run:
        ``num_envs`` episodes of ``num_steps = n_steps`` steps per iteration."""
        shared = {
            name: getattr(self, name)
            for name in (
                "phi", "reward", "features", "hidden_sizes", "activation", "init_action",
                "seed", "num_seeds", "name", "out_dir", "num_evals", "progress_episodes",
                "eval_episodes", "eval_seed", "naive_half_spread", "as_gamma",
                "vol_switch_step", "vol_switch_factor", "fill_shape", "fill_shape_alpha",
                "fill_model",
            )
        }  # fmt: skip
        n_steps = 200  # the homework session that market_env builds
        return PPOConfig(
            **shared,
            num_envs=self.num_envs,
            num_steps=n_steps,
            num_minibatches=1,
            total_timesteps=max(1, self.num_iterations) * self.num_envs * n_steps,
            learning_rate=self.learning_rate,
            anneal_lr=self.anneal_lr,
            max_grad_norm=self.max_grad_norm,
            devices=1,
            stagger_envs=False,
            average_window=0.0,
        )

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DiffSimConfig:
        return config_from_dict(cls, values)


# ----------------------------------------------------------------------------------------------
# The problem: network, environment, the (t, q) tabulation and the estimators


def gauss_hermite(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights (``f64[n]`` each, weights summing to 1) of the ``n``-point
    Gauss-Hermite rule for the standard normal: ``E f(Z) ~ sum_i w_i f(z_i)``, exact for
    polynomials of degree ``< 2n``."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(n)
    return nodes, weights / weights.sum()


def expected_step_reward(
    inventory: jax.Array,
    bid_depth: jax.Array,
    ask_depth: jax.Array,
    bid_prob: jax.Array,
    ask_prob: jax.Array,
    mid_change: jax.Array,
    coefficient: jax.Array,
) -> jax.Array:
    """``E[dPnL - c q_{t+1}^2]`` over the four outcomes of a step's two independent fills.

    Args:
        inventory: ``q_t``. bid_depth, ask_depth: the acting depths (price units; an infinite
            depth has probability 0). bid_prob, ask_prob: the fill probabilities, 0 where the
            inventory limit closes a side. mid_change: the step's ``dS`` (independent of the
            fills: no adverse selection). coefficient: ``c_t``.

    With ``q' = q + b - a`` (``b``, ``a`` Bernoulli): ``E[b d_b + a d_a] = p_b d_b + p_a d_a``,
    ``E[q'] = q + p_b - p_a`` and ``E[q'^2] = E[q']^2 + p_b (1 - p_b) + p_a (1 - p_a)``, so the
    expectation is ``p_b d_b + p_a d_a + E[q'] dS - c E[q'^2]``.
    """
    # an unquoted (infinite) depth has probability 0: multiply by 0, never by inf, so that no
    # 0 * inf reaches the backward pass either
    bid_depth = jnp.where(bid_prob > 0, bid_depth, 0.0)
    ask_depth = jnp.where(ask_prob > 0, ask_depth, 0.0)
    capture = bid_prob * bid_depth + ask_prob * ask_depth
    mean_q = inventory + bid_prob - ask_prob
    second = mean_q**2 + bid_prob * (1 - bid_prob) + ask_prob * (1 - ask_prob)
    return capture + mean_q * mid_change - coefficient * second


def _log_bernoulli(outcome: jax.Array, prob: jax.Array) -> jax.Array:
    """``log P(outcome)`` of a Bernoulli(``prob``) draw, finite (with a finite gradient) for
    every possible outcome, including ``prob = 1`` (a marketable quote under the linear fill
    model): each branch only sees arguments it can take the log of."""
    tiny = 1e-6  # above float32's resolution of 1 - p
    filled = outcome > 0
    hit = jnp.log(jnp.where(filled, jnp.maximum(prob, tiny), 1.0))
    miss = jnp.log1p(-jnp.where(filled, 0.0, jnp.minimum(prob, 1.0 - tiny)))
    return jnp.where(filled, hit, miss)


@dataclasses.dataclass(frozen=True)
class Problem:
    """A network, its environment and the gradient estimators of its expected episode reward.

    Built by ``make_problem``. ``params`` below are the ``ActorCritic`` parameters (one seed);
    every method masks them (``mask``) first, so a gradient never moves a held-at-zero weight.

    Attributes:
        env, env_params: the environment. spec: the ``AgentSpec``. tq_policy: whether the
            actor reads ``(t, q)`` only. feature_mask: ``f32[obs_dim]``, 1 for the features the
            actor reads. objective: the ``ExactObjective`` of the market (None if the exact
            solvers do not model it or the policy is not (t, q)).
    """

    env: Any
    env_params: Any
    spec: Any
    tq_policy: bool
    feature_mask: np.ndarray
    objective: ExactObjective | None

    @property
    def market(self):
        return self.env_params.market

    @property
    def n_steps(self) -> int:
        return int(self.env_params.market.n_steps)

    def init(self, key: jax.Array) -> Any:
        """Fresh, masked network parameters (``AgentSpec.init``, compiled)."""
        return jax.jit(lambda k: self.mask(self.spec.init(k).params))(key)

    def mask(self, params: Any) -> Any:
        """``params`` with the actor's first-layer rows of unread features set to zero."""
        inner = dict(params["params"])
        first = dict(inner["Dense_0"])
        mask = jnp.asarray(self.feature_mask, first["kernel"].dtype)[:, None]
        first["kernel"] = first["kernel"] * mask
        inner["Dense_0"] = first
        return {**params, "params": inner}

    def actor_vector(self, params: Any) -> jax.Array:
        """The actor's mean-network parameters (``Dense_0..2``) as one flat vector: the
        coordinates in which gradients are compared."""
        inner = params["params"]
        return ravel_pytree([inner[f"Dense_{i}"] for i in range(3)])[0]

    def _network(self, params: Any, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Raw mean ``f[..., 2]`` and ``log_std`` of the masked network at ``obs``."""
        dtype = jax.tree.leaves(params)[0].dtype
        obs_norm = ObsNorm.create(self.spec.obs_dim)
        mean, log_std, _ = self.spec.network.apply(
            self.mask(params), obs_norm.normalize(obs).astype(dtype)
        )
        return mean, log_std

    def _bounds(self, dtype) -> tuple[jax.Array, jax.Array]:
        return (
            jnp.asarray(self.spec.action_low, dtype),
            jnp.asarray(self.spec.action_high, dtype),
        )

    def observation(self, state: market.MarketState) -> jax.Array:
        """``env.observation(state)``, with the mid path held constant for differentiation
        when the market has no adverse selection: the mid then does not depend on the fills,
        so its derivative is exactly zero, and ``trailing_volatility``'s square root (whose
        derivative is infinite when a float32 mid change rounds to 0) stays out of the
        backward pass."""
        if float(self.market.adverse_selection) == 0.0:
            state = state.replace(
                mid=jax.lax.stop_gradient(state.mid),
                recent_returns=jax.lax.stop_gradient(state.recent_returns),
            )
        return self.env.observation(state, self.env_params)

    def quotes(self, params: Any, state: market.MarketState) -> market.Quotes:
        """The deterministic policy's quotes in ``state``: ``squash(mean(obs))`` through the
        environment's action mapping (depth clip, as ``env.as_policy`` does)."""
        mean, _ = self._network(params, self.observation(state))
        low, high = self._bounds(mean.dtype)
        return self.env.quotes(squash(mean, low, high), state, self.env_params)

    # -------------------------------------------------------------- the exact objective

    def _grid_obs(self) -> jax.Array:
        """Observations at every ``(t, q)`` of the grid, ``f32[N, n_q, obs_dim]``, at the
        reference state (mid ``S0``, empty history): for a (t, q) policy the only inputs
        that matter are ``inventory``, ``time_left`` and ``as_spread``."""
        start = market.reset(jax.random.key(0), self.market)
        steps = jnp.arange(self.n_steps, dtype=jnp.int32)
        q = jnp.asarray(self.objective.inventories, start.inventory.dtype)

        def obs(t, inventory):
            return self.env.observation(start.replace(t=t, inventory=inventory), self.env_params)

        return jax.vmap(jax.vmap(obs, in_axes=(None, 0)), in_axes=(0, None))(steps, q)

    def _check_exact(self) -> None:
        if self.objective is None:
            raise ValueError(
                "the exact objective needs a (t, q) policy (tq_only) on a market the exact "
                "solvers model (optimal.evaluate)"
            )

    def deterministic_tables(self, params: Any) -> tuple[jax.Array, jax.Array]:
        """The deterministic policy's depths on the grid: ``(bid, ask)``, ``f[N, n_q]``."""
        self._check_exact()
        mean, _ = self._network(params, self._grid_obs())
        low, high = self._bounds(mean.dtype)
        action = jnp.clip(squash(mean, low, high), 0.01, 5.0)
        return action[..., 0], action[..., 1]

    def exact_reward(self, params: Any) -> jax.Array:
        """The deterministic policy's exact expected episode reward ``J(theta)`` (price
        units); ``jax.grad`` of it is the exact policy gradient."""
        bids, asks = self.deterministic_tables(params)
        return self.objective.expected_reward(bids, asks)

    def stochastic_tables(self, params: Any, nodes: int = 12):
        """PPO's stochastic policy (raw action ``N(mean, exp(log_std)^2)``, squashed) as a
        mixture on the grid by the ``nodes x nodes`` Gauss-Hermite rule: ``(bid, ask)``
        ``f[N, nodes^2, n_q]`` and ``weights f[nodes^2]`` for ``ExactObjective.values``."""
        self._check_exact()
        mean, log_std = self._network(params, self._grid_obs())
        dtype = mean.dtype
        z, w = gauss_hermite(nodes)
        zb, za = (jnp.asarray(x.ravel(), dtype) for x in np.meshgrid(z, z, indexing="ij"))
        weights = jnp.asarray(np.outer(w, w).ravel(), dtype)
        std = jnp.exp(log_std)
        low, high = self._bounds(dtype)
        bid = squash(mean[:, None, :, 0] + std[0] * zb[None, :, None], low[0], high[0])
        ask = squash(mean[:, None, :, 1] + std[1] * za[None, :, None], low[1], high[1])
        return jnp.clip(bid, 0.01, 5.0), jnp.clip(ask, 0.01, 5.0), weights

    def exact_stochastic_reward(self, params: Any, nodes: int = 12) -> jax.Array:
        """The stochastic policy's expected episode reward (Gauss-Hermite over the actions,
        exact over the market)."""
        bids, asks, weights = self.stochastic_tables(params, nodes)
        return self.objective.expected_reward(bids, asks, weights)

    # ---------------------------------------------------------------- simulated episodes

    def _coefficient(self, state) -> jax.Array:
        return rewards.penalty_coefficient(
            state.t, self.market, self.env_params.phi, self.env_params.reward, mid=state.mid
        )

    def relaxed_reward(
        self, params: Any, stream: jax.Array, episodes: jax.Array, temperature: jax.Array
    ) -> jax.Array:
        """Mean episode reward of the relaxed market (fills ``relaxed_fill`` at
        ``temperature``, fractional inventory), episode ``i`` on ``counter_noise(stream,
        episodes[i], t)``: differentiable, its gradient is the relaxed pathwise estimator."""

        def fill(uniform, prob):
            return relaxed_fill(prob, uniform, temperature)

        def episode(index):
            def body(state, _):
                noise = market.counter_noise(stream, index, state.t)
                quotes = self.quotes(params, state)
                next_state, info = market.step_with_noise(
                    state, quotes, noise, self.market, fill=fill
                )
                reward = rewards.step_reward(
                    info.pnl, next_state.inventory, self._coefficient(state)
                )
                return next_state, reward

            start = market.reset(jax.random.key(0), self.market)
            _, step_rewards = jax.lax.scan(body, start, None, length=self.n_steps)
            return jnp.sum(step_rewards)

        return jnp.mean(jax.vmap(episode)(episodes))

    def expected_surrogate(
        self, params: Any, stream: jax.Array, episodes: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """``(surrogate, mean episode reward)`` of hard-fill episodes; the gradient of the
        surrogate is the expected-fill estimator (module docstring). Its closed form assumes
        unit fills, no fees and a mid move independent of the fills: other markets are
        refused (``ValueError``)."""
        m = self.market
        refused = (
            ("adverse_selection", float(m.adverse_selection) != 0.0, "0"),
            ("order_size", m.order_size != "unit", "'unit'"),
            ("maker_fee / taker_fee", bool(m.has_fees), "None"),
        )
        for name, bad, allowed in refused:
            if bad:
                raise ValueError(
                    f"params.{name} is set; allowed: {allowed} for the expected-fill estimator "
                    "(its closed form needs unit fills, no fees and a mid independent of them)"
                )

        def episode(index):
            def body(state, _):
                noise = market.counter_noise(stream, index, state.t)
                quotes = self.quotes(params, state)
                next_state, info = market.step_with_noise(state, quotes, noise, self.market)
                bid_open = state.inventory < self.market.q_max
                ask_open = state.inventory > -self.market.q_max
                bid_prob = jnp.where(bid_open, info.bid_fill_prob, 0.0)
                ask_prob = jnp.where(ask_open, info.ask_fill_prob, 0.0)
                coefficient = self._coefficient(state)
                smooth = expected_step_reward(
                    state.inventory,
                    info.bid_depth,
                    info.ask_depth,
                    bid_prob,
                    ask_prob,
                    info.mid_change,
                    coefficient,
                )
                log_prob = _log_bernoulli(info.bid_fill, bid_prob) + _log_bernoulli(
                    info.ask_fill, ask_prob
                )
                reward = rewards.step_reward(info.pnl, next_state.inventory, coefficient)
                return next_state, (smooth, log_prob, reward)

            start = market.reset(jax.random.key(0), self.market)
            _, per_step = jax.lax.scan(body, start, None, length=self.n_steps)
            return per_step

        smooth, log_prob, reward = jax.vmap(episode)(episodes)  # each [n, N]
        after = jnp.cumsum(reward[:, ::-1], axis=1)[:, ::-1] - reward  # G_{t+1}
        after = jax.lax.stop_gradient(after)
        n = after.shape[0]
        baseline = (jnp.sum(after, axis=0, keepdims=True) - after) / (n - 1)  # leave-one-out
        surrogate = jnp.sum(smooth, axis=1) + jnp.sum(log_prob * (after - baseline), axis=1)
        return jnp.mean(surrogate), jnp.mean(jnp.sum(reward, axis=1))

    def gradient(
        self,
        estimator: str,
        params: Any,
        stream: jax.Array | None = None,
        episodes: jax.Array | None = None,
        temperature: float | jax.Array = 0.1,
    ) -> tuple[jax.Array, Any]:
        """``(objective estimate, gradient of J)`` by ``estimator`` (``ESTIMATORS``); the
        gradient is a params pytree (zero on the held weights and on the critic)."""
        if estimator == "exact":
            return jax.value_and_grad(self.exact_reward)(params)
        if estimator == "relaxed":
            return jax.value_and_grad(self.relaxed_reward)(params, stream, episodes, temperature)
        if estimator == "expected":
            (_, reward), grad = jax.value_and_grad(self.expected_surrogate, has_aux=True)(
                params, stream, episodes
            )
            return reward, grad
        raise ValueError(f"estimator = {estimator!r}; allowed: one of {ESTIMATORS}")

    def ppo_gradient(
        self,
        params: Any,
        stream: jax.Array,
        episodes: jax.Array,
        key: jax.Array,
        ppo_config: PPOConfig,
        values: jax.Array | None = None,
    ) -> tuple[jax.Array, Any]:
        """PPO's gradient estimate of the stochastic policy's ``J`` from full episodes.

        The clipped surrogate's gradient at ratio 1 (``train.ppo.ppo_loss`` on the whole
        batch, ``generalized_advantages`` with ``ppo_config``'s gamma, lambda and
        ``reward_scale``), rescaled to a gradient of ``J``: PPO normalises the advantages, so
        its actor-loss gradient is ``-(1/n) sum grad log pi (A - mean A) / std A`` over the
        ``n = episodes x N`` transitions, and ``-N std(A) / reward_scale`` times it estimates
        ``grad J``. ``values``: the critic, ``f[N + 1, n_q]`` state values (price units) on the
        grid (e.g. the exact values of the stochastic policy: the best critic PPO could
        learn); ``None``: the network's own critic. Returns ``(mean episode reward, grad)``.
        """
        dtype = jax.tree.leaves(params)[0].dtype
        low, high = self._bounds(dtype)
        scale = ppo_config.reward_scale
        q_top = None if self.objective is None else int(self.objective.inventories[-1])

        def critic(state, obs):
            if values is None:
                _, _, value = self.spec.network.apply(params, obs.astype(dtype))
                return value
            index = jnp.clip(state.inventory.astype(jnp.int32) + q_top, 0, 2 * q_top)
            return values[state.t, index] * scale

        def episode(index, episode_key):
            def body(state, step_key):
                noise = market.counter_noise(stream, index, state.t)
                obs = self.observation(state)
                mean, log_std = self._network(params, obs)
                policy = policy_distribution(mean, log_std)
                raw = policy.sample(seed=step_key)
                quotes = self.env.quotes(squash(raw, low, high), state, self.env_params)
                next_state, info = market.step_with_noise(state, quotes, noise, self.market)
                reward = rewards.step_reward(
                    info.pnl, next_state.inventory, self._coefficient(state)
                )
                next_obs = self.observation(next_state)
                out = (obs, raw, policy.log_prob(raw), critic(state, obs), reward)
                return next_state, (*out, critic(next_state, next_obs))

            start = market.reset(jax.random.key(0), self.market)
            keys = jax.random.split(episode_key, self.n_steps)
            _, out = jax.lax.scan(body, start, keys)
            return out

        keys = jax.random.split(key, episodes.shape[0])
        obs, raw, log_prob, value, reward, next_value = jax.vmap(episode)(episodes, keys)
        terminated = jnp.zeros(reward.shape, bool).at[:, -1].set(True)
        advantages, targets = jax.vmap(
            lambda r, v, nv, d: generalized_advantages(
                r * scale, v, nv, d, jnp.zeros_like(d), ppo_config.gamma, ppo_config.gae_lambda
            )
        )(reward, value, next_value, terminated)
        flat = jax.tree.map(lambda x: x.reshape((-1, *x.shape[2:])), (obs, raw, log_prob, value))
        batch = Transition(
            obs=flat[0].astype(dtype),
            raw_action=flat[1],
            log_prob=flat[2],
            value=flat[3],
            reward=reward.reshape(-1),
            terminated=terminated.reshape(-1),
            truncated=jnp.zeros(reward.size, bool),
            final_obs=flat[0].astype(dtype),
        )
        adv, tgt = advantages.reshape(-1), targets.reshape(-1)
        norm_obs = ObsNorm.create(self.spec.obs_dim)
        masked = self.mask(params)
        grad, _ = jax.grad(ppo_loss, has_aux=True)(
            masked, batch, adv, tgt, norm_obs, ppo_config, self.spec.network
        )
        factor = -self.n_steps * (jnp.std(adv) + 1e-8) / scale
        grad = jax.tree.map(lambda g: factor * g, self.mask(grad))
        return jnp.mean(jnp.sum(reward, axis=1)), grad


def make_problem(config: DiffSimConfig, env: Any = None, env_params: Any = None) -> Problem:
    """The ``Problem`` of ``config`` (validated here): ``market_env`` of its ``PPOConfig``
    unless ``env``/``env_params`` are given (a market with other options, for the studies)."""
    config.validate()
    ppo_config = config.ppo_config()
    if env is None:
        env, env_params = market_env(ppo_config)
    spec = agent_spec(ppo_config, env, env_params)
    names = env.feature_names
    if config.tq_only:
        mask = np.asarray([name in TQ_FEATURES for name in names], np.float32)
    else:
        mask = np.ones(len(names), np.float32)
    tq = config.tq_policy
    objective = None
    if tq:
        try:
            objective = ExactObjective(env_params.market, env_params.phi, reward=env_params.reward)
        except ValueError:
            if config.estimator == "exact":
                raise
    return Problem(env, env_params, spec, tq, mask, objective)


# ----------------------------------------------------------------------------------------------
# Training


def _temperature(config: DiffSimConfig, iteration: jax.Array) -> jax.Array:
    fraction = iteration / max(config.num_iterations - 1, 1)
    ratio = config.temperature_final / config.temperature
    return config.temperature * ratio**fraction


def make_optimizer(config: DiffSimConfig) -> optax.GradientTransformation:
    """Global-norm clipping, then Adam (ascent is done by negating the gradient), its step
    size annealed linearly to 0 over the run if ``anneal_lr``."""
    if config.anneal_lr:
        learning_rate = optax.linear_schedule(config.learning_rate, 0.0, config.num_iterations)
    else:
        learning_rate = config.learning_rate
    return optax.chain(
        optax.clip_by_global_norm(config.max_grad_norm), optax.adam(learning_rate, eps=1e-8)
    )


def make_chunk_runner(config: DiffSimConfig, problem: Problem, optimizer) -> Any:
    """``run(params, opt_state, stream, first, length)`` for stacked seeds (``vmap``): ``length``
    (static) iterations from iteration ``first``; returns ``(params, opt_state)`` and the
    per-iteration objective estimates ``f[num_seeds, length]``. Iteration ``i`` uses episodes
    ``i * num_envs ..`` of the seed's stream."""
    batch = jnp.arange(config.num_envs, dtype=jnp.uint32)

    def one_seed(params, opt_state, stream, first, length):
        def update(carry, iteration):
            params, opt_state = carry
            episodes = batch + (iteration * config.num_envs).astype(jnp.uint32)
            temperature = _temperature(config, iteration.astype(jnp.float32))
            value, grad = problem.gradient(config.estimator, params, stream, episodes, temperature)
            ascent = jax.tree.map(jnp.negative, grad)
            updates, opt_state = optimizer.update(ascent, opt_state, params)
            params = problem.mask(optax.apply_updates(params, updates))
            return (params, opt_state), value

        iterations = first + jnp.arange(length, dtype=jnp.uint32)
        return jax.lax.scan(update, (params, opt_state), iterations)

    return jax.jit(jax.vmap(one_seed, in_axes=(0, 0, 0, None, None)), static_argnames="length")


class _Deployed:
    """The ``trainer.agent(states)`` interface ``train.evaluate.make_progress_evaluator``
    reads: stacked parameters -> stacked agents (identity observation statistics)."""

    def __init__(self, problem: Problem, num_seeds: int):
        self.problem = problem
        self.obs_norm = jax.tree.map(
            lambda x: jnp.broadcast_to(x, (num_seeds, *x.shape)),
            ObsNorm.create(problem.spec.obs_dim),
        )

    def agent(self, params: Any) -> Any:
        return self.problem.spec.agent(params, self.obs_norm)


def _first_reaching(curve: list[dict[str, Any]], level: float, key: str) -> Any:
    for entry in curve:
        if entry["exact_fraction_of_optimum"] is not None and (
            entry["exact_fraction_of_optimum"] >= level
        ):
            return entry[key]
    return None


def _init_seeds(
    config: DiffSimConfig, problem: Problem, optimizer: optax.GradientTransformation
) -> tuple[Any, Any, jax.Array]:
    """Every seed's fresh network, optimiser state and noise stream, stacked over
    ``config.num_seeds``: seed ``i`` splits ``split(key(seed))[i]`` into its initialisation key
    and its stream key."""
    seed_keys = jax.random.split(jax.random.key(config.seed), config.num_seeds)
    init_keys = jax.vmap(lambda k: jax.random.split(k)[0])(seed_keys)
    stream_keys = jax.vmap(lambda k: jax.random.split(k)[1])(seed_keys)
    params = jax.jit(jax.vmap(problem.init))(init_keys)
    streams = jax.vmap(market.stream_key)(stream_keys)
    opt_state = jax.vmap(optimizer.init)(params)
    return params, opt_state, streams


def _progress_entry(
    done: int,
    steps_per_iteration: int,
    train_seconds: float,
    rewards_now: np.ndarray,
    exact_now: np.ndarray | None,
    optimum: float,
) -> dict[str, Any]:
    """One ``progress_evals`` entry after ``done`` iterations: the seeds' Monte Carlo rewards
    ``rewards_now`` and exact rewards ``exact_now`` (``None`` without an exact objective), the
    latter also as a fraction of the ``optimum``."""
    return {
        "iteration": done,
        "env_steps": done * steps_per_iteration,
        "train_seconds": train_seconds,
        "mean_reward": rewards_now.tolist(),
        "exact_reward": None if exact_now is None else exact_now.tolist(),
        "exact_fraction_of_optimum": (
            None if exact_now is None else float(np.mean(exact_now) / optimum)
        ),
    }


def train_run(config: DiffSimConfig) -> dict[str, Any]:
    """Train ``config.num_seeds`` seeds, evaluate with ``train.evaluate``, and write
    ``out_dir/name/`` (module docstring). Returns the ``metrics.json`` payload."""
    wall_start = time.perf_counter()
    problem = make_problem(config)
    ppo_config = config.ppo_config()
    run_dir = Path(config.out_dir) / config.name
    run_dir.mkdir(parents=True, exist_ok=True)
    evaluate.write_json(run_dir / "diffsim_config.json", config.to_dict())
    evaluate.write_json(run_dir / "config.json", ppo_config.to_dict())

    optimizer = make_optimizer(config)
    params, opt_state, streams = _init_seeds(config, problem, optimizer)
    run_chunk = make_chunk_runner(config, problem, optimizer)
    deployed = _Deployed(problem, config.num_seeds)
    progress_eval = evaluate.make_progress_evaluator(ppo_config, deployed, *market_env(ppo_config))
    exact_eval = None
    optimum = evaluate.optimal_solution(problem.env_params).value_at(0, 0)
    if problem.objective is not None:
        exact_eval = jax.jit(jax.vmap(problem.exact_reward))

    steps_per_iteration = config.steps_per_iteration(problem.n_steps)
    chunk = math.ceil(config.num_iterations / config.num_evals)
    curve: list[dict[str, Any]] = []
    history: list[np.ndarray] = []
    train_seconds = 0.0
    done = 0
    print(
        f"diffsim ({config.estimator}): {config.num_seeds} seed(s) x {config.num_iterations} "
        f"iterations of {steps_per_iteration:,} environment steps; phi={config.phi}",
        file=sys.stderr,
    )
    while done < config.num_iterations:
        length = min(chunk, config.num_iterations - done)
        start = time.perf_counter()
        (params, opt_state), values = run_chunk(
            params, opt_state, streams, jnp.uint32(done), length
        )
        values = np.asarray(jax.device_get(values), np.float64)
        train_seconds += time.perf_counter() - start
        history.append(values)
        done += length
        rewards_now = progress_eval(params)
        exact_now = None if exact_eval is None else np.asarray(exact_eval(params), np.float64)
        curve.append(
            _progress_entry(
                done, steps_per_iteration, train_seconds, rewards_now, exact_now, optimum
            )
        )
        extra = f"eval reward {np.mean(rewards_now):.3f}"
        if exact_now is not None:
            extra += f", exact {np.mean(exact_now):.3f} / optimum {optimum:.3f}"
        print(f"[{done:>6}/{config.num_iterations}] {extra}", file=sys.stderr)

    selected = int(np.argmax(curve[-1]["mean_reward"]))
    checkpoint.save(run_dir, ppo_config, params, deployed.obs_norm, selected_seed=selected)
    comparison = evaluate.evaluate_run(run_dir)
    history_array = np.concatenate(history, axis=1)
    payload = {
        "config": ppo_config.to_dict(),
        "diffsim_config": config.to_dict(),
        "agent": f"diffsim/{config.estimator}",
        **comparison,
        "env_steps": config.num_iterations * steps_per_iteration,
        "env_steps_per_iteration": steps_per_iteration,
        "training_wall_seconds": train_seconds,
        "wall_seconds": time.perf_counter() - wall_start,
        "selected_seed": selected,
        "progress_evals": curve,
        "env_steps_to_95": _first_reaching(curve, 0.95, "env_steps"),
        "env_steps_to_99": _first_reaching(curve, 0.99, "env_steps"),
        "seconds_to_95": _first_reaching(curve, 0.95, "train_seconds"),
        "seconds_to_99": _first_reaching(curve, 0.99, "train_seconds"),
        "training_history": {"objective": history_array.tolist()},
        "notes": {
            "ppo": "the diffsim agent, under train.evaluate's key",
            "objective": "per iteration: the estimator's objective (exact J for 'exact', the "
            "relaxed mean reward for 'relaxed', the hard-fill mean reward for 'expected')",
            "exact_reward": "the exact expected reward of every seed's deterministic policy "
            "(jaxmm.gradients.ExactObjective), at each progress evaluation",
            "env_steps_to_95": "environment steps at the first progress evaluation whose "
            "seed-mean exact reward is >= 95% of the optimum (None: not reached)",
            "train_seconds": "wall time of the training chunks, compilation included",
        },
    }
    evaluate.write_json(run_dir / "metrics.json", payload)
    _plot_curve(run_dir / "training_curve.png", payload, optimum)
    return payload


def _plot_curve(path: Path, payload: dict[str, Any], optimum: float) -> None:
    curve = payload["progress_evals"]
    iterations = [entry["iteration"] for entry in curve]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    rewards_mc = np.asarray([entry["mean_reward"] for entry in curve])
    ax.plot(iterations, rewards_mc.mean(axis=1), "o-", label="progress eval (Monte Carlo, mean)")
    if curve[0]["exact_reward"] is not None:
        exact = np.asarray([entry["exact_reward"] for entry in curve])
        ax.plot(iterations, exact, color="tab:green", alpha=0.5, lw=1)
        ax.plot(iterations, exact.mean(axis=1), "s-", color="tab:green", label="exact (seeds)")
    ax.axhline(optimum, color="black", ls="--", lw=1.2, label=f"optimum {optimum:.2f}")
    config = payload["diffsim_config"]
    evaluate.save_curve_figure(
        fig,
        ax,
        path,
        xlabel="iteration",
        ylabel="expected episode reward",
        title=f"diffsim/{config['estimator']}, phi={config['phi']}",
    )


# ----------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None = None) -> DiffSimConfig:
    """Every ``DiffSimConfig`` field as ``--field-name``; ``--config FILE`` starts from a saved
    ``diffsim_config.json`` (flags override it)."""
    parser = argparse.ArgumentParser(
        prog="python -m train.diffsim",
        description="Train the quoting network by differentiating the simulator. Every option "
        "is a field of train.diffsim.DiffSimConfig (documented there).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    init_action = {"type": float, "nargs": "+", "default": None, "help": "default: the A-S quote"}
    add_field_flags(parser, DiffSimConfig, {"init_action": ((), init_action)})
    add_config_flag(parser, DiffSimConfig, "a run's diffsim_config.json")
    values, _ = parse_config_flags(parser, DiffSimConfig, argv)
    try:
        return DiffSimConfig(**values).validate()
    except ValueError as error:
        parser.error(str(error))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    config = parse_args(argv)
    payload = train_run(config)
    print(evaluate.format_comparison(payload))
    steps, seconds = payload["env_steps"], payload["training_wall_seconds"]
    print(f"environment steps {steps:,}, training {seconds:.1f} s")
    print(f"wrote {Path(config.out_dir) / config.name}/", file=sys.stderr)
    return payload


if __name__ == "__main__":
    main()
