"""The market as a gymnax environment (and a gymnasium adapter), over the one ``market.step``.

``MarketMakingEnv`` is a gymnax 1.0 ``Environment``: ``step`` returns six values ``(obs, state,
reward, terminated, truncated, info)`` and resets automatically at the end of a session. Its state
*is* a ``jaxmm.market.MarketState`` and ``step_env`` calls ``jaxmm.market.step`` -- no second
copy of the dynamics -- so a trained agent can also be run by ``jaxmm.simulate`` through
``env.as_policy`` on exactly the simulator's paths.

Static choices are constructor arguments (``features``, ``action_mode``); everything a sweep may
vary is a leaf of ``EnvParams`` (the market, ``phi``, ``as_gamma``, the observation scales), so
``jax.vmap`` runs a batch of settings in one program. The reward kind is a static field.

Observation (``f32[n_features]``, each feature O(1) at the homework's parameters, in the order
of ``env.feature_names``); the feature sets of the ablation study are in ``FEATURE_SETS``:

- ``inventory``: ``q_t / inventory_scale``, in (-inf, inf);
- ``mid_change``: ``(S_t - S0) / (volatility_scale sqrt(T))``, in (-inf, inf);
- ``time_left``: ``(T - t dt) / T``, the fraction of the session left, in [0, 1];
- ``volatility``: the trailing realised volatility of the last ``history_window`` (20) mid
  changes (``market.trailing_volatility``; ``sigma`` before the first step)
  ``/ volatility_scale``, in [0, inf);
- ``as_spread``: the A-S spread ``gamma sigma^2 (T - t) + (2/gamma) ln(1 + gamma/k)`` with
  ``gamma = as_gamma`` and the market's base ``sigma`` and ``k``, in units of the risk-neutral
  spread ``2/k`` (multiply by ``2/k`` for price units), in [0, inf);
- ``fill_rate``: fills per step over the last ``history_window`` steps, in [0, 2];
- ``pnl``: the PnL since the start ``/ pnl_scale``, in (-inf, inf);
- ``alpha``: the observed short-term alpha (``MarketParams.alpha_model="ou"``; the feature set
  ``"alpha"`` is ``"full"`` plus it) in units of its stationary standard deviation
  ``alpha_vol / sqrt(2 alpha_rate)`` (price units per time unit when ``alpha_vol = 0``), in
  (-inf, inf). A market without the alpha signal cannot show it (a clear error).
- ``bid_intensity``, ``ask_intensity``: the Hawkes excitation of sell / buy market orders
  divided by that side's base intensity ``A * <side>_intensity_mult`` (``e / mu``: 0 at rest,
  1 when the flow runs at twice its base rate), in [0, inf); 0 when the market's
  ``arrival_model`` is ``"poisson"`` (or the base intensity is 0). The ``"hawkes"`` set is
  ``"full"`` plus these two.

Actions (``f32[2]``, Box; ``f32[3]`` in ``"depths_mo"``):

- ``"depths"``: ``(bid_depth, ask_depth)`` in price units, in ``[0.01, 5]``; values outside are
  clipped to that range.
- ``"as_skew"`` (in the spirit of Alpha-AS, Falces Marin et al. 2022): ``(log10_multiplier,
  skew)`` in ``[-2, 1] x [-1, 1]``. The agent scales the A-S risk aversion to
  ``gamma = as_gamma * 10**log10_multiplier`` (a multiplier in [0.01, 10]) and shifts both A-S
  quotes up in price by ``skew`` times the A-S half-spread ``h``:
  ``bid_depth = h + q gamma sigma^2 (T - t) - skew h`` and
  ``ask_depth = h - q gamma sigma^2 (T - t) + skew h``. Action ``(0, 0)`` gives the A-S quotes
  of ``policies.avellaneda_stoikov(as_gamma)``. The final depths are clipped to ``[0.01, 5]``,
  as in the depth mode, so both modes post the same set of quotes (never at or through the
  mid; A-S itself may quote a negative depth at large inventory).
- ``"depths_mo"`` (``f32[3]``; needs a market with market orders, ``MarketParams.mo_cost``):
  ``(bid_depth, ask_depth, order)``: the two depths as in ``"depths"`` and a market order of
  one unit from ``order`` in ``[-1, 1]``: sell (-1) when ``order < -1/3``, buy (+1) when
  ``order > 1/3``, none in between (thresholds ``MO_THRESHOLD``; values outside are clipped).
  The order executes at the start of the step at ``S_t -+ mo_cost`` (``jaxmm.market``).

Rewards (``EnvParams.reward``; ``dPnL`` is ``StepInfo.pnl``, ``q_{t+1}`` the inventory after the
step's fills, which is the inventory marked to market over the step):

- ``"inventory_penalty"``: ``dPnL - phi q_{t+1}^2`` (the homework; phi = 0.01 and 0.1). Its
  expectation does not depend on sigma, so it gives no reason to widen quotes when the
  volatility rises.
- ``"pnl"``: ``dPnL``.
- ``"cara"``: ``U(W_{t+1}) - U(W_t)``, ``U(w) = (1 - exp(-phi w)) / phi``, ``W`` the PnL since
  the start: the episode reward is the exponential utility of terminal wealth ``U(W_N)``, with
  ``phi > 0`` the risk aversion gamma (per price unit); its exact optimum is
  ``jaxmm.optimal.bellman_cara``.
- ``"variance"``: ``dPnL - phi sigma_t^2 dt q_{t+1}^2`` with ``sigma_t = market.sigma_at(t)`` in
  price units (times ``S_t`` for the geometric mid): ``phi`` times the variance of the step's
  inventory PnL. ``phi`` is then a risk aversion per price unit (``gamma / 2`` of a
  mean-variance trader), and the penalty follows a volatility switch.

The session ends with a termination (``terminated = True`` when ``t`` reaches ``n_steps``; the
time left is in the observation, so do not bootstrap across it); ``truncated`` is always False.

Also here: the training wrappers ``RegimeWrapper`` (each episode in a volatility regime drawn
from a ``RegimeRandomization``) and ``StaggerWrapper`` (the first episode starts at a random
point of the session), with ``unwrap_state`` to reach the ``MarketState`` under them;
``LogWrapper``, ``FlattenObservationWrapper`` and ``LegacyStepAPIWrapper`` (the
five-value ``step`` for PureJaxRL-style code) -- gymnax's wrappers made safe to ``deepcopy`` and
pickle -- and ``GymnasiumMarketMakingEnv`` (``env.gymnasium(params)``), a ``gymnasium.Env``
that passes ``gymnasium.utils.env_checker.check_env``, for Stable-Baselines3 (defined in
``jaxmm.gymnasium_env``, with the registered id and the batched ``MarketMakingVectorEnv``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import environment, spaces
from gymnax.wrappers import compat, purerl

from jaxmm import market, presets, rewards
from jaxmm.gymnasium_env import GymnasiumMarketMakingEnv
from jaxmm.market import MarketState, Quotes, StepInfo
from jaxmm.params import NEVER, MarketParams
from jaxmm.policies import AvellanedaStoikov

__all__ = [
    "ACTION_MODES",
    "FEATURE_BOUNDS",
    "FEATURE_SETS",
    "MO_THRESHOLD",
    "REWARDS",
    "EnvParams",
    "EnvPolicy",
    "FlattenObservationWrapper",
    "GymnasiumMarketMakingEnv",
    "LegacyStepAPIWrapper",
    "LogWrapper",
    "MarketMakingEnv",
    "RegimeRandomization",
    "RegimeState",
    "RegimeWrapper",
    "StaggerState",
    "StaggerWrapper",
    "alpha_feature",
    "step_reward",
    "unwrap_state",
]

FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "full": ("inventory", "mid_change", "time_left", "volatility", "as_spread"),
    "no_as_spread": ("inventory", "mid_change", "time_left", "volatility"),
    "no_volatility": ("inventory", "mid_change", "time_left", "as_spread"),
    "inventory_only": ("inventory",),
    "extended": (
        "inventory",
        "mid_change",
        "time_left",
        "volatility",
        "as_spread",
        "fill_rate",
        "pnl",
    ),
    "alpha": ("inventory", "mid_change", "time_left", "volatility", "as_spread", "alpha"),
    "hawkes": (
        "inventory",
        "mid_change",
        "time_left",
        "volatility",
        "as_spread",
        "bid_intensity",
        "ask_intensity",
    ),
}
# (low, high) of each feature: the observation space contains every observation.
FEATURE_BOUNDS: dict[str, tuple[float, float]] = {
    "inventory": (-np.inf, np.inf),
    "mid_change": (-np.inf, np.inf),
    "time_left": (0.0, 1.0),
    "volatility": (0.0, np.inf),
    "as_spread": (0.0, np.inf),
    "fill_rate": (0.0, 2.0),
    "pnl": (-np.inf, np.inf),
    "alpha": (-np.inf, np.inf),
    "bid_intensity": (0.0, np.inf),
    "ask_intensity": (0.0, np.inf),
}
ACTION_MODES = ("depths", "as_skew", "depths_mo")
MO_THRESHOLD = 1.0 / 3.0  # "depths_mo": order < -1/3 sells one unit, order > 1/3 buys one
REWARDS = rewards.REWARDS
DEPTH_MIN, DEPTH_MAX = 0.01, 5.0  # price units: the range of posted depths in both modes
LOG10_MULTIPLIER_MIN, LOG10_MULTIPLIER_MAX = -2.0, 1.0  # risk-aversion multiplier 0.01 .. 10
SKEW_MIN, SKEW_MAX = -1.0, 1.0  # in units of the A-S half-spread


def alpha_feature(state: MarketState, params: MarketParams) -> jax.Array:
    """The ``alpha`` feature: ``alpha_t / (alpha_vol / sqrt(2 alpha_rate))``, the observed
    alpha in stationary standard deviations (divided by 1 when ``alpha_vol = 0``)."""
    if state.alpha is None:
        raise ValueError(
            "the 'alpha' feature needs MarketParams.alpha_model = 'ou' (the market has no "
            "alpha signal)"
        )
    spread = params.alpha_vol / jnp.sqrt(2.0 * params.alpha_rate)
    return state.alpha / jnp.where(spread > 0, spread, 1.0)


@struct.dataclass
class EnvParams:
    """Settings of the environment (frozen; ``ep.replace(phi=0.1)``); numbers are leaves.

    Attributes:
        market: the ``MarketParams`` (default ``presets.homework()``).
        phi: penalty weight of the reward (>= 0): price units per squared unit of inventory
            for ``"inventory_penalty"``, per price unit for ``"variance"`` (it multiplies a
            variance in price units squared) and for ``"cara"`` (the risk aversion gamma,
            > 0); see the module docstring.
        as_gamma: risk aversion of the A-S spread feature and of the ``"as_skew"`` action mode,
            per price unit (>= 0).
        inventory_scale: units of inventory per unit of the ``inventory`` feature (> 0).
        volatility_scale: price units per sqrt(time unit) per unit of the ``volatility``
            feature; ``mid_change`` is in units of ``volatility_scale sqrt(T)`` (> 0). The
            default is the homework's sigma; it is fixed rather than taken from the market so
            that a change of sigma shows in the observation.
        pnl_scale: price units per unit of the ``pnl`` feature (> 0); the default is about the
            session PnL of A-S in the homework market.
        reward: ``"inventory_penalty"``, ``"pnl"``, ``"variance"`` or ``"cara"`` (static).
    """

    market: MarketParams = struct.field(default_factory=presets.homework)
    phi: float = 0.01
    as_gamma: float = 0.1
    inventory_scale: float = 10.0
    volatility_scale: float = 2.0
    pnl_scale: float = 50.0
    reward: str = struct.field(pytree_node=False, default="inventory_penalty")

    @property
    def max_steps_in_episode(self) -> int:
        """Steps per episode (gymnax's name for it): ``market.n_steps``."""
        return self.market.n_steps

    def validate(self) -> EnvParams:
        """Raise ``ValueError`` naming the first invalid field; return ``self`` if all is well.

        Checks the market too. Traced values (inside ``jit``) are skipped: validate at the
        boundary.
        """
        self.market.validate()
        rewards.check(self.reward, "EnvParams.reward")
        if self.reward == "cara":  # phi is the risk aversion of the utility
            phi_rule = ("phi", lambda x: x > 0, "> 0 with reward 'cara'")
        else:
            phi_rule = ("phi", lambda x: x >= 0, ">= 0")
        rules = (
            phi_rule,
            ("as_gamma", lambda x: x >= 0, ">= 0"),
            ("inventory_scale", lambda x: x > 0, "> 0"),
            ("volatility_scale", lambda x: x > 0, "> 0"),
            ("pnl_scale", lambda x: x > 0, "> 0"),
        )
        for name, ok, allowed in rules:
            value = getattr(self, name)
            if isinstance(value, jax.core.Tracer):
                continue
            array = np.asarray(value, dtype=np.float64)
            if not np.all(np.isfinite(array) & ok(array)):
                raise ValueError(f"EnvParams.{name} = {value!r}; allowed: finite and {allowed}")
        return self


def step_reward(
    state: MarketState, next_state: MarketState, info: StepInfo, params: EnvParams
) -> jax.Array:
    """Reward of the step from ``state`` to ``next_state``, in the market's float dtype:
    ``dPnL - c_t q_{t+1}^2`` with ``c_t`` of ``params.reward`` (``jaxmm.rewards``), or for
    ``"cara"`` the utility increment ``U(W_{t+1}) - U(W_t)`` of the PnL (``phi`` = gamma)."""
    if params.reward == "cara":
        reward = rewards.cara_step_reward(state.pnl, next_state.pnl, params.phi)
        return jnp.asarray(reward, market.float_dtype())
    coefficient = rewards.penalty_coefficient(
        state.t, params.market, params.phi, params.reward, mid=state.mid
    )
    reward = rewards.step_reward(info.pnl, next_state.inventory, coefficient)
    return jnp.asarray(reward, market.float_dtype())


@struct.dataclass
class RegimeRandomization:
    """A distribution of volatility regimes, one draw per episode (domain randomisation).

    With probability ``switch_prob`` an episode's volatility switches at a step drawn
    uniformly from ``{step_low, ..., step_high}`` to ``sigma * factor`` with ``factor``
    log-uniform on ``[factor_low, factor_high]``; otherwise it keeps ``sigma`` throughout.
    ``sample`` writes the draws into the market's ``vol_switch_step``/``vol_switch_factor``.
    The observation never shows the draw (the ``volatility`` feature is the trailing realised
    volatility; ``as_spread`` uses the base sigma), so an agent trained on it must infer the
    regime from the prices it sees.
    """

    switch_prob: float = 0.5
    step_low: int = 20
    step_high: int = 180
    factor_low: float = 0.5
    factor_high: float = 3.0

    def validate(self, n_steps: int) -> RegimeRandomization:
        """Raise ``ValueError`` naming the first invalid field; return ``self``."""
        if not 0.0 <= self.switch_prob <= 1.0:
            raise ValueError(f"switch_prob = {self.switch_prob!r}; allowed: in [0, 1]")
        for name in ("step_low", "step_high"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ValueError(f"{name} = {value!r}; allowed: an integer in [1, {n_steps - 1}]")
            if not 1 <= value <= n_steps - 1:
                raise ValueError(f"{name} = {value}; allowed: an integer in [1, {n_steps - 1}]")
        if self.step_high < self.step_low:
            raise ValueError(f"step_high = {self.step_high}; allowed: >= step_low")
        if not (math.isfinite(self.factor_low) and self.factor_low > 0):
            raise ValueError(f"factor_low = {self.factor_low!r}; allowed: finite and > 0")
        if not (math.isfinite(self.factor_high) and self.factor_high >= self.factor_low):
            raise ValueError(f"factor_high = {self.factor_high!r}; allowed: finite, >= factor_low")
        return self

    def draw(self, key: jax.Array, params: EnvParams) -> EnvParams:
        """One episode's parameters: ``params`` (every leaf as an array) with the market's
        ``vol_switch_step``/``vol_switch_factor`` drawn. Pure and jit-able."""
        switch_key, step_key, factor_key = jax.random.split(key, 3)
        switches = jax.random.bernoulli(switch_key, self.switch_prob)
        step = jax.random.randint(step_key, (), self.step_low, self.step_high + 1)
        log_factor = jax.random.uniform(
            factor_key, (), minval=np.log(self.factor_low), maxval=np.log(self.factor_high)
        )
        params = jax.tree.map(jnp.asarray, params)
        switch_step = params.market.vol_switch_step
        switch_factor = params.market.vol_switch_factor
        market_params = params.market.replace(
            vol_switch_step=jnp.where(switches, step, NEVER).astype(switch_step.dtype),
            vol_switch_factor=jnp.where(switches, jnp.exp(log_factor), 1.0).astype(
                switch_factor.dtype
            ),
        )
        return params.replace(market=market_params)

    def sample(self, key: jax.Array, params: EnvParams, n: int) -> EnvParams:
        """``n`` independent ``draw``s from ``split(key, n)``: every leaf of ``params`` gets a
        leading axis of length ``n``. Use with ``jax.vmap(env.step, in_axes=(0, 0, 0, 0))``."""
        return jax.vmap(self.draw, in_axes=(0, None))(jax.random.split(key, n), params)


def _relative_excitation(
    excitation: jax.Array | None, mult: jax.Array, market_params: MarketParams
) -> jax.Array:
    """``excitation / (A * mult)``, the ``bid_intensity``/``ask_intensity`` feature: 0 without
    Hawkes flow (``excitation`` is None) or with a zero base intensity."""
    if excitation is None:
        return jnp.zeros((), market.float_dtype())
    base = market_params.A * mult
    return jnp.where(base > 0, excitation / jnp.where(base > 0, base, 1.0), 0.0)


class MarketMakingEnv(environment.Environment[MarketState, EnvParams]):
    """A gymnax environment over ``jaxmm.market.step``; see the module docstring.

    Args:
        features: the observation, a key of ``FEATURE_SETS``: ``"full"``, ``"no_as_spread"``,
            ``"no_volatility"``, ``"inventory_only"``, ``"extended"``, ``"alpha"`` or
            ``"hawkes"``.
        action_mode: ``"depths"`` (bid and ask depths), ``"as_skew"`` (A-S risk-aversion
            multiplier and skew) or ``"depths_mo"`` (the depths and a market order).

    Action bounds (``action_space``): ``"depths"``: ``[0.01, 5]^2`` (price units);
    ``"as_skew"``: ``log10_multiplier`` in ``[-2, 1]`` and ``skew`` in ``[-1, 1]`` (A-S
    half-spreads), and the resulting depths in ``[0.01, 5]``. Actions outside the Box are
    clipped to it silently (no error, no penalty). A PureJaxRL-style ``ClipAction`` wrapper
    that limits actions to ``[-1, 1]`` therefore confines the depths mode to ``[0.01, 1]``,
    which excludes the wider quotes the exact optimum (``optimal.bellman``) posts on one side
    once inventory builds up, and costs reward (6-8% of the reward in our measurement); clip
    to ``action_space(params)`` instead.

    Two environments with the same arguments are equal (and hash equal), so ``jit`` compiles
    their ``step`` once.
    """

    def __init__(self, features: str = "full", action_mode: str = "depths"):
        super().__init__()
        if features not in FEATURE_SETS:
            raise ValueError(f"features = {features!r}; allowed: one of {tuple(FEATURE_SETS)}")
        if action_mode not in ACTION_MODES:
            raise ValueError(f"action_mode = {action_mode!r}; allowed: one of {ACTION_MODES}")
        self.features = features
        self.action_mode = action_mode
        self.feature_names: tuple[str, ...] = FEATURE_SETS[features]

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._config() == other._config()

    def __hash__(self) -> int:
        return hash((type(self), self._config()))

    def __repr__(self) -> str:
        return f"MarketMakingEnv(features={self.features!r}, action_mode={self.action_mode!r})"

    def _config(self) -> tuple[str, str]:
        return (self.features, self.action_mode)

    @property
    def default_params(self) -> EnvParams:
        return EnvParams()

    @property
    def name(self) -> str:
        return f"MarketMaking-{self.features}-{self.action_mode}"

    @property
    def num_actions(self) -> int:
        """Dimension of the (continuous) action: 2, or 3 in ``"depths_mo"``."""
        return 3 if self.action_mode == "depths_mo" else 2

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def observation(self, state: MarketState, params: EnvParams) -> jax.Array:
        """The observation of ``state``: ``f32[n_features]`` (features in ``feature_names``).

        Pure; computes only the features of this environment's feature set.
        """
        market_params = params.market
        compute = {
            "inventory": lambda: state.inventory / params.inventory_scale,
            "mid_change": lambda: (
                (state.mid - market_params.S0)
                / (params.volatility_scale * jnp.sqrt(market_params.T))
            ),
            "time_left": lambda: (market_params.n_steps - state.t) / market_params.n_steps,
            "volatility": lambda: (
                market.trailing_volatility(state, market_params) / params.volatility_scale
            ),
            "as_spread": lambda: (
                AvellanedaStoikov(gamma=params.as_gamma).spread(state, market_params)
                * (market_params.k / 2.0)
            ),
            "fill_rate": lambda: market.recent_fill_rate(state, market_params),
            "pnl": lambda: state.pnl / params.pnl_scale,
            "alpha": lambda: alpha_feature(state, market_params),
            "bid_intensity": lambda: _relative_excitation(
                state.bid_excitation, market_params.bid_intensity_mult, market_params
            ),
            "ask_intensity": lambda: _relative_excitation(
                state.ask_excitation, market_params.ask_intensity_mult, market_params
            ),
        }
        return jnp.stack([jnp.asarray(compute[name](), jnp.float32) for name in self.feature_names])

    def quotes(self, action: jax.Array, state: MarketState, params: EnvParams) -> Quotes:
        """The quotes posted for ``action`` (``f[2]``) in ``state``; depths in [0.01, 5].

        ``"depths"``: ``clip(action, 0.01, 5)`` as ``(bid_depth, ask_depth)``. ``"as_skew"``:
        A-S quotes with ``gamma = as_gamma * 10**action[0]`` shifted up by ``action[1]`` A-S
        half-spreads, then clipped (action components clipped to their ranges first).
        ``"depths_mo"`` (``f[3]``): the clipped depths and ``market_order`` -1 / 0 / +1 for
        ``action[2]`` below -1/3 / between / above 1/3.
        """
        dtype = market.float_dtype()
        action = jnp.asarray(action, dtype)
        if self.action_mode == "depths_mo":
            return self._quotes_with_market_order(action, params)
        if self.action_mode == "depths":
            bid_depth, ask_depth = action[0], action[1]
        else:
            log10_multiplier = jnp.clip(action[0], LOG10_MULTIPLIER_MIN, LOG10_MULTIPLIER_MAX)
            skew = jnp.clip(action[1], SKEW_MIN, SKEW_MAX)
            rule = AvellanedaStoikov(gamma=params.as_gamma * 10.0**log10_multiplier)
            half_spread = 0.5 * rule.spread(state, params.market)
            offset = rule.reservation_offset(state, params.market) - skew * half_spread
            bid_depth, ask_depth = half_spread + offset, half_spread - offset
        return Quotes(
            bid_depth=jnp.clip(bid_depth, DEPTH_MIN, DEPTH_MAX),
            ask_depth=jnp.clip(ask_depth, DEPTH_MIN, DEPTH_MAX),
        )

    def _quotes_with_market_order(self, action: jax.Array, params: EnvParams) -> Quotes:
        """``"depths_mo"``: the clipped depths and the market order of ``action[2]``."""
        if not params.market.has_market_orders:
            raise ValueError(
                "action_mode 'depths_mo' needs a market with market orders; allowed: "
                "EnvParams.market.mo_cost set (>= 0, price units)"
            )
        order = jnp.where(action[2] > MO_THRESHOLD, 1.0, 0.0)
        order = jnp.where(action[2] < -MO_THRESHOLD, -1.0, order).astype(action.dtype)
        return Quotes(
            bid_depth=jnp.clip(action[0], DEPTH_MIN, DEPTH_MAX),
            ask_depth=jnp.clip(action[1], DEPTH_MIN, DEPTH_MAX),
            market_order=order,
        )

    def step_env(
        self, key: jax.Array, state: MarketState, action: jax.Array, params: EnvParams
    ) -> tuple[jax.Array, MarketState, jax.Array, jax.Array, dict[str, jax.Array]]:
        """One step without auto-reset: quotes, ``market.step(state, quotes, key, market)``,
        reward, termination. ``info`` holds the step's ``pnl``, ``spread_pnl``,
        ``inventory_pnl``, ``bid_fill``, ``ask_fill``, the quoted depths and ``discount``
        (0 at the end of the session)."""
        quotes = self.quotes(action, state, params)
        next_state, step_info = market.step(state, quotes, key, params.market)
        reward = step_reward(state, next_state, step_info, params)
        terminated = self.is_terminated(next_state, params)
        obs = self.observation(next_state, params)
        obs, next_state = self._apply_transition_gradient_policy(obs, next_state)
        info = {
            "pnl": step_info.pnl,
            "spread_pnl": step_info.spread_pnl,
            "inventory_pnl": step_info.inventory_pnl,
            "bid_fill": step_info.bid_fill,
            "ask_fill": step_info.ask_fill,
            "bid_depth": quotes.bid_depth,
            "ask_depth": quotes.ask_depth,
            "discount": 1.0 - terminated.astype(jnp.float32),
        }
        if step_info.market_order is not None:  # the market has market orders
            info["market_order"] = step_info.market_order
        return obs, next_state, reward, terminated, info

    def reset_env(self, key: jax.Array, params: EnvParams) -> tuple[jax.Array, MarketState]:
        """``market.reset``: ``t = 0``, ``S = S0``, no inventory, no PnL."""
        state = market.reset(key, params.market)
        return self.observation(state, params), state

    def is_terminated(self, state: MarketState, params: EnvParams) -> jax.Array:
        """True at the end of the session (``t == n_steps``)."""
        return state.t >= params.market.n_steps

    def is_truncated(self, state: MarketState, params: EnvParams) -> jax.Array:
        """Always False: the end of the session is a termination, not a time limit."""
        return jnp.zeros((), jnp.bool_)

    def action_space(self, params: EnvParams | None = None) -> spaces.Box:
        """``Box(f32[2])``: depths ``[0.01, 5]^2``, or ``[-2, 1] x [-1, 1]`` in ``"as_skew"``;
        ``Box(f32[3])`` ``[0.01, 5]^2 x [-1, 1]`` in ``"depths_mo"``."""
        if self.action_mode == "depths_mo":
            low = np.array([DEPTH_MIN, DEPTH_MIN, -1.0], np.float32)
            high = np.array([DEPTH_MAX, DEPTH_MAX, 1.0], np.float32)
            return spaces.Box(low=low, high=high, shape=(3,), dtype=jnp.float32)
        if self.action_mode == "depths":
            low = np.full((2,), DEPTH_MIN, np.float32)
            high = np.full((2,), DEPTH_MAX, np.float32)
        else:
            low = np.array([LOG10_MULTIPLIER_MIN, SKEW_MIN], np.float32)
            high = np.array([LOG10_MULTIPLIER_MAX, SKEW_MAX], np.float32)
        return spaces.Box(low=low, high=high, shape=(2,), dtype=jnp.float32)

    def observation_space(self, params: EnvParams | None = None) -> spaces.Box:
        """``Box(f32[n_features])`` with the bounds of ``FEATURE_BOUNDS`` (+-inf if unbounded)."""
        bounds = np.array([FEATURE_BOUNDS[name] for name in self.feature_names], np.float32)
        return spaces.Box(
            low=bounds[:, 0], high=bounds[:, 1], shape=(self.n_features,), dtype=jnp.float32
        )

    def as_policy(
        self, action_fn: Callable[[jax.Array], jax.Array], params: EnvParams
    ) -> EnvPolicy:
        """A jaxmm policy ``(obs: MarketState, market: MarketParams) -> Quotes`` for ``simulate``.

        Args:
            action_fn: ``f32[n_features] -> f[num_actions]``, deterministic (for a trained
                agent: the mean action); in ``"depths_mo"`` the quotes carry its market
                order. A pytree such as ``jax.tree_util.Partial(apply, weights)`` passes
                through ``jit`` as data; a plain function is compiled as code.
            params: the environment settings; the market is the one ``simulate`` passes.
        """
        if jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(action_fn)):
            action_fn = jax.tree_util.Partial(action_fn)
        return EnvPolicy(action_fn=action_fn, env_params=params, env=self)

    def gymnasium(
        self,
        params: EnvParams | None = None,
        seed: int | None = None,
        normalize_actions: bool = False,
    ) -> GymnasiumMarketMakingEnv:
        """A ``gymnasium.Env`` over this environment (see ``GymnasiumMarketMakingEnv``)."""
        return GymnasiumMarketMakingEnv(self, params, seed, normalize_actions)


@struct.dataclass
class EnvPolicy:
    """An action function run as a jaxmm policy; built by ``MarketMakingEnv.as_policy``."""

    action_fn: Any
    env_params: EnvParams
    env: MarketMakingEnv = struct.field(pytree_node=False)

    def __call__(self, obs: MarketState, params: MarketParams) -> Quotes:
        env_params = self.env_params.replace(market=params)
        action = self.action_fn(self.env.observation(obs, env_params))
        return self.env.quotes(action, obs, env_params)


class _CopySafeGetattr:
    """Forwards unknown attributes to ``self._env`` without recursing when ``_env`` is missing.

    gymnax 1.0.1's wrappers read ``self._env`` in ``__getattr__``; ``copy.deepcopy`` and
    ``pickle`` rebuild an object before ``_env`` is set, so that lookup recurses forever (rejax
    deep-copies its config). Here a missing ``_env`` raises ``AttributeError`` instead.
    """

    def __getattr__(self, name: str) -> Any:
        env = self.__dict__.get("_env")
        if env is None:
            raise AttributeError(name)
        return getattr(env, name)


class LegacyStepAPIWrapper(_CopySafeGetattr, compat.LegacyStepAPIWrapper):
    """gymnax's five-value adapter ``(obs, state, reward, done, info)``, safe to copy and pickle."""


class LogWrapper(_CopySafeGetattr, purerl.LogWrapper):
    """gymnax's ``LogWrapper`` (episode returns and lengths in ``info``), safe to copy."""


class FlattenObservationWrapper(_CopySafeGetattr, purerl.FlattenObservationWrapper):
    """gymnax's ``FlattenObservationWrapper``, safe to copy."""


def _select(flag: jax.Array, new: Any, old: Any) -> Any:
    """``new`` where the scalar ``flag`` holds, else ``old``, leaf by leaf (same dtypes)."""
    return jax.tree.map(lambda a, b: jax.lax.select(flag, a, b), new, old)


@struct.dataclass
class RegimeState:
    """``RegimeWrapper``'s state: the wrapped state and the current episode's parameters."""

    env_state: Any
    env_params: EnvParams


class RegimeWrapper(_CopySafeGetattr, purerl.GymnaxWrapper):
    """Every episode in its own volatility regime, drawn from ``regimes`` (domain randomisation).

    ``reset(key, params)`` draws the episode's parameters with ``regimes.draw`` from ``params``
    and resets the wrapped environment with them; ``step`` steps with them and, when the
    episode ends (``terminated | truncated``), resets into a fresh draw. The parameters live in
    the state (``RegimeState.env_params``), so ``jax.vmap`` over environments gives each its own
    regime. Key use: ``reset``: ``split(key)`` into the draw and the reset; ``step``:
    ``split(key, 3)`` into the step, the next episode's draw and its reset.

    Args:
        env: a gymnax environment whose parameters are ``EnvParams`` (the market's).
        regimes: a validated ``RegimeRandomization``.
    """

    def __init__(self, env: Any, regimes: RegimeRandomization):
        super().__init__(env)
        self.regimes = regimes

    def reset(self, key: jax.Array, params: EnvParams | None = None) -> tuple[jax.Array, Any]:
        params = self._env.default_params if params is None else params
        regime_key, reset_key = jax.random.split(key)
        episode_params = self.regimes.draw(regime_key, params)
        obs, env_state = self._env.reset(reset_key, episode_params)
        return obs, RegimeState(env_state=env_state, env_params=episode_params)

    def step(
        self, key: jax.Array, state: RegimeState, action: jax.Array, params: EnvParams | None = None
    ) -> tuple:
        params = self._env.default_params if params is None else params
        step_key, regime_key, reset_key = jax.random.split(key, 3)
        obs, env_state, reward, terminated, truncated, info = self._env.step(
            step_key, state.env_state, action, state.env_params
        )
        done = jnp.logical_or(terminated, truncated)
        fresh = self.regimes.draw(regime_key, params)
        reset_obs, reset_state = self._env.reset(reset_key, fresh)
        state = RegimeState(
            env_state=_select(done, reset_state, env_state),
            env_params=_select(done, fresh, state.env_params),
        )
        return _select(done, reset_obs, obs), state, reward, terminated, truncated, info


@struct.dataclass
class StaggerState:
    """``StaggerWrapper``'s state: the wrapped state and the number of warm-up steps taken
    before the first observation (``offset``, i32; 0: the first episode starts at reset)."""

    env_state: Any
    offset: jax.Array


class StaggerWrapper(_CopySafeGetattr, purerl.GymnaxWrapper):
    """Start the first episode at a random point of the session, so that a batch of
    environments (``jax.vmap``) is spread over the whole episode instead of in lockstep.

    ``reset`` resets the wrapped environment and advances it ``offset ~ U{0, ..., L - 1}``
    steps with actions drawn uniformly from ``action_space(params)`` (``L = horizon``); the
    observation returned is the one after those steps. ``step`` is the wrapped ``step``: its
    automatic resets start at ``t = 0``, so only the first episode is shortened. An episode
    with ``offset > 0`` began before the caller saw it (a trainer does not report its return).
    Key use: ``reset``: ``split(key, 3)`` into the reset, the offset and the warm-up steps.

    Args:
        env: a gymnax environment with a Box action space.
        horizon: ``L``, the steps per episode (default: ``params.max_steps_in_episode``, which
            must then be static).
    """

    def __init__(self, env: Any, horizon: int | None = None):
        super().__init__(env)
        self.horizon = horizon

    def reset(self, key: jax.Array, params: Any = None) -> tuple[jax.Array, StaggerState]:
        params = self._env.default_params if params is None else params
        horizon = int(params.max_steps_in_episode if self.horizon is None else self.horizon)
        reset_key, offset_key, warm_key = jax.random.split(key, 3)
        obs, env_state = self._env.reset(reset_key, params)
        offset = jax.random.randint(offset_key, (), 0, horizon)
        space = self._env.action_space(params)

        def warm_step(carry, index):
            obs, env_state, key = carry
            key, action_key, step_key = jax.random.split(key, 3)
            next_obs, next_state, *_ = self._env.step(
                step_key, env_state, space.sample(action_key), params
            )
            advance = index < offset
            carry = (_select(advance, next_obs, obs), _select(advance, next_state, env_state), key)
            return carry, None

        (obs, env_state, _), _ = jax.lax.scan(
            warm_step, (obs, env_state, warm_key), jnp.arange(horizon - 1)
        )
        return obs, StaggerState(env_state=env_state, offset=offset)

    def step(
        self, key: jax.Array, state: StaggerState, action: jax.Array, params: Any = None
    ) -> tuple:
        obs, env_state, reward, terminated, truncated, info = self._env.step(
            key, state.env_state, action, params
        )
        return obs, state.replace(env_state=env_state), reward, terminated, truncated, info


def unwrap_state(state: Any) -> Any:
    """The innermost environment state under any wrapper states that hold it as ``env_state``
    (``StaggerState``, ``RegimeState``, gymnax's ``LogEnvState``): for the market, the
    ``MarketState``."""
    while hasattr(state, "env_state"):
        state = state.env_state
    return state
