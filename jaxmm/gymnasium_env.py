"""The market for gymnasium code: ``gymnasium.make``, a batched ``VectorEnv``, the single adapter.

Importing ``jaxmm`` registers ``"jaxmm/MarketMaking-v0"``. Gymnasium 1.x has no plugin entry
points (it never imports a package by itself), so the id exists once ``jaxmm`` is imported;
``gymnasium.make("jaxmm:jaxmm/MarketMaking-v0")`` imports it for you::

    import gymnasium, jaxmm
    env = gymnasium.make("jaxmm/MarketMaking-v0", market="as2008", phi=0.1, normalize_actions=True)
    obs, info = env.reset(seed=3)
    envs = gymnasium.make_vec("jaxmm/MarketMaking-v0", num_envs=64,
                              vectorization_mode="vector_entry_point", normalize_actions=True)

Keyword arguments of ``make`` and ``make_vec`` (``env_settings``): ``features`` (a key of
``jaxmm.env.FEATURE_SETS``, default ``"full"``), ``action_mode`` (``"depths"`` or ``"as_skew"``),
``reward`` (``"inventory_penalty"``, ``"pnl"``, ``"variance"``), ``phi`` (the reward's penalty
weight, default 0.01), ``market`` (a preset name, ``"homework"`` or ``"as2008"``, or a
``MarketParams``), or instead of the last three a whole ``env_params`` (``jaxmm.env.EnvParams``);
``normalize_actions`` (default False) and ``seed`` (the seed of the first ``reset()`` without
one; default 0). Seeds: ``reset(seed=s)`` restarts the JAX key stream from ``s``, and the
vector env gives sub-environment ``i`` the seed ``s + i`` (as gymnasium's ``SyncVectorEnv``), so
it reproduces ``num_envs`` single environments reset with seeds ``s, s + 1, ...`` step for step.

Spaces. Observations are ``f32[n_features]`` in a Box whose bounds are those of
``observation_bounds``: finite for the bounded features (``time_left`` in [0, 1], ``fill_rate``
in [0, 2], ``inventory`` in ``+-q_max / inventory_scale`` when the market has an inventory limit,
``as_spread`` between its values at the end and at the start of the session unless the mid is
geometric) and infinite for the rest (``mid_change``, ``pnl``, ``volatility`` above 0, and
``inventory`` without a limit): those are unbounded in the model, and gymnasium's checker warns
about them. The action Box is the environment's (``[0.01, 5]^2`` for depths); with
``normalize_actions=True`` it is ``[-1, 1]^2``, mapped affinely onto those bounds by
``denormalize_action`` (``-1`` to the low, ``+1`` to the high bound, exactly); actions outside
the Box are clipped by the environment, so a normalised action beyond +-1 acts as +-1.

Episodes end with a termination after ``n_steps`` steps (the time left is observed); nothing is
ever truncated. ``MarketMakingVectorEnv`` steps all its environments in one jitted call (a
``vmap`` of ``MarketMakingEnv.step_env``) and auto-resets in gymnasium's ``NEXT_STEP`` mode: the
step after a sub-environment terminates ignores its action and returns its reset observation,
reward 0, ``terminated = truncated = False`` and no info (the info masks ``_name`` are False);
``make_vec(..., autoreset_mode="SameStep")`` gives gymnasium's ``SAME_STEP`` mode instead.
``jaxmm.sb3`` wraps the same program as a Stable-Baselines3 ``VecEnv`` (same-step auto-reset).
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from jaxmm import presets
from jaxmm.params import MarketParams

if TYPE_CHECKING:
    from jaxmm.env import EnvParams, MarketMakingEnv
    from jaxmm.market import MarketState

__all__ = [
    "ENV_ID",
    "MARKETS",
    "GymnasiumMarketMakingEnv",
    "MarketMakingVectorEnv",
    "denormalize_action",
    "env_settings",
    "make_env",
    "make_vector_env",
    "observation_bounds",
]

ENV_ID = "jaxmm/MarketMaking-v0"
MARKETS = {"homework": presets.homework, "as2008": presets.as2008}
# Relative widening of the closed-form bounds of as_spread: float32 rounding of the feature.
_BOUND_SLACK = 1e-5


def env_settings(
    features: str = "full",
    action_mode: str = "depths",
    reward: str | None = None,
    phi: float | None = None,
    market: str | MarketParams | None = None,
    env_params: EnvParams | None = None,
) -> tuple[MarketMakingEnv, EnvParams]:
    """The gymnax environment and its validated settings for the keyword arguments of ``make``.

    Args:
        features: a key of ``jaxmm.env.FEATURE_SETS``. action_mode: ``"depths"`` or
            ``"as_skew"``.
        reward: ``"inventory_penalty"`` (default), ``"pnl"`` or ``"variance"``.
        phi: the reward's penalty weight (default 0.01; see ``jaxmm.env.EnvParams``).
        market: ``"homework"`` (default), ``"as2008"`` or a ``MarketParams``.
        env_params: a whole ``EnvParams`` instead of ``reward``/``phi``/``market``.

    Raises:
        ValueError: for an unknown name, an invalid setting, or ``env_params`` given together
            with ``reward``, ``phi`` or ``market``.
    """
    from jaxmm.env import EnvParams, MarketMakingEnv

    env = MarketMakingEnv(features, action_mode)
    fields = {"reward": reward, "phi": phi, "market": market}
    given = {name: value for name, value in fields.items() if value is not None}
    if env_params is not None:
        if given:
            raise ValueError(
                f"env_params given together with {sorted(given)}; allowed: env_params alone, "
                "or any of reward, phi, market"
            )
        if not isinstance(env_params, EnvParams):
            raise ValueError(f"env_params = {env_params!r}; allowed: a jaxmm.env.EnvParams")
        return env, env_params.validate()
    if isinstance(given.get("market"), str):
        if given["market"] not in MARKETS:
            raise ValueError(
                f"market = {given['market']!r}; allowed: one of {tuple(MARKETS)} or a MarketParams"
            )
        given["market"] = MARKETS[given["market"]]()
    elif "market" in given and not isinstance(given["market"], MarketParams):
        raise ValueError(
            f"market = {given['market']!r}; allowed: one of {tuple(MARKETS)} or a MarketParams"
        )
    return env, EnvParams(**given).validate()


def observation_bounds(env: MarketMakingEnv, params: EnvParams) -> tuple[np.ndarray, np.ndarray]:
    """``(low, high)``, each ``f32[n_features]``: bounds that contain every observation.

    ``jaxmm.env.FEATURE_BOUNDS``, tightened with the settings: ``inventory`` in
    ``+-q_max / inventory_scale`` (infinite without a limit), and for a non-geometric mid
    ``as_spread`` in ``[L, L + k gamma sigma^2 T / 2]`` with ``L = ln(1 + gamma/k) / (gamma/k)``
    (1 at ``gamma = 0``) and ``gamma = as_gamma``: its values at ``t = T`` and ``t = 0``, each
    widened by a relative 1e-5 for the float32 rounding of the feature. The others keep their
    static bounds, infinite where the model does not bound them.
    """
    from jaxmm.env import FEATURE_BOUNDS

    bounds = dict(FEATURE_BOUNDS)
    market_params = params.market
    inventory_limit = float(market_params.q_max) / float(params.inventory_scale)
    bounds["inventory"] = (-inventory_limit, inventory_limit)
    if market_params.price_model != "geometric":
        k, gamma = float(market_params.k), float(params.as_gamma)
        ratio = gamma / k
        lowest = 1.0 if ratio == 0.0 else math.log1p(ratio) / ratio
        highest = lowest + 0.5 * k * gamma * float(market_params.sigma) ** 2 * market_params.T
        bounds["as_spread"] = (lowest * (1 - _BOUND_SLACK), highest * (1 + _BOUND_SLACK))
    rows = np.array([bounds[name] for name in env.feature_names], np.float64)
    return rows[:, 0].astype(np.float32), rows[:, 1].astype(np.float32)


def denormalize_action(action: jax.Array, low: jax.Array, high: jax.Array) -> jax.Array:
    """The affine map of ``[-1, 1]`` onto ``[low, high]``: ``(1 - a)/2 low + (1 + a)/2 high``.

    Written so that ``-1`` gives ``low`` and ``+1`` gives ``high`` exactly in floating point.
    """
    return 0.5 * (1.0 - action) * low + 0.5 * (1.0 + action) * high


def _env_action(env: MarketMakingEnv, action: jax.Array, normalize: bool) -> jax.Array:
    action = jnp.asarray(action, jnp.float32)
    if not normalize:
        return action
    space = env.action_space(None)
    return denormalize_action(action, jnp.asarray(space.low), jnp.asarray(space.high))


def _select(flag: jax.Array, if_true: Any, if_false: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(flag, a, b), if_true, if_false)


@functools.partial(jax.jit, static_argnums=0)
def _reset(env: MarketMakingEnv, key: jax.Array, params: EnvParams) -> tuple[Any, ...]:
    return env.reset_env(key, params)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _step(
    env: MarketMakingEnv,
    normalize: bool,
    key: jax.Array,
    state: MarketState,
    action: jax.Array,
    params: EnvParams,
) -> tuple[Any, ...]:
    key, step_key = jax.random.split(key)
    obs, state, reward, terminated, info = env.step_env(
        step_key, state, _env_action(env, action, normalize), params
    )
    return key, state, (obs, reward, terminated, info)


@functools.partial(jax.jit, static_argnums=0)
def _batch_reset(env: MarketMakingEnv, keys: jax.Array, params: EnvParams) -> tuple[Any, ...]:
    obs, states = jax.vmap(env.reset_env, in_axes=(0, None))(keys, params)
    return (keys, states, jnp.zeros(keys.shape[:1], jnp.bool_)), obs


def _batch_outputs(
    env: MarketMakingEnv,
    normalize: bool,
    same_step: bool,
    carry: tuple[jax.Array, MarketState, jax.Array],
    actions: jax.Array,
    params: EnvParams,
) -> tuple[Any, ...]:
    """One step of every environment, with auto-reset: ``NEXT_STEP`` (``needs_reset`` in the
    carry: those environments reset instead of stepping) or ``same_step`` (an environment that
    terminates is reset at once; its last observation is returned as ``final_obs``).
    Returns the new carry and a flat dict of ``[n]`` or ``[n, width]`` outputs.

    Every key evolves as in ``GymnasiumMarketMakingEnv``: a step splits it, a reset reuses it.
    """

    def one(key, state, action, needs_reset):
        next_key, step_key = jax.random.split(key)
        obs, next_state, reward, terminated, info = env.step_env(
            step_key, state, _env_action(env, action, normalize), params
        )
        if same_step:
            reset_obs, reset_state = env.reset_env(next_key, params)
            out_state = _select(terminated, reset_state, next_state)
            out = {
                "obs": jnp.where(terminated, reset_obs, obs),
                "final_obs": obs,
                "reward": reward,
                "terminated": terminated,
                "info": info,
            }
            return next_key, out_state, jnp.zeros((), jnp.bool_), out
        reset_obs, reset_state = env.reset_env(key, params)
        stepped = ~needs_reset
        out = {
            "obs": jnp.where(stepped, obs, reset_obs),
            "reward": jnp.where(stepped, reward, jnp.zeros_like(reward)),
            "terminated": stepped & terminated,
            "info": jax.tree.map(lambda x: jnp.where(stepped, x, jnp.zeros_like(x)), info),
            "info_mask": stepped,
        }
        out_key = jnp.where(stepped, next_key, key)
        return out_key, _select(stepped, next_state, reset_state), out["terminated"], out

    keys, states, needs_reset = carry
    keys, states, needs_reset, out = jax.vmap(one)(keys, states, actions, needs_reset)
    info = out.pop("info")
    out.update({f"info/{name}": value for name, value in info.items()})
    return (keys, states, needs_reset), out


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _batch_step(
    env: MarketMakingEnv,
    normalize: bool,
    same_step: bool,
    carry: tuple[jax.Array, MarketState, jax.Array],
    actions: jax.Array,
    params: EnvParams,
) -> tuple[Any, jax.Array]:
    """``_batch_outputs`` with the outputs packed into one ``[n, columns]`` array of the market's
    float dtype (booleans as 0/1, float32 exactly), in the order of ``_output_layout``: the host
    then fetches one buffer per step."""
    carry, out = _batch_outputs(env, normalize, same_step, carry, actions, params)
    dtype = jax.dtypes.canonicalize_dtype(jnp.float64)
    n = actions.shape[0]
    packed = jnp.concatenate(
        [jnp.asarray(out[name], dtype).reshape(n, -1) for name in sorted(out)], axis=1
    )
    return carry, packed


def _output_layout(
    env: MarketMakingEnv, normalize: bool, same_step: bool, carry: Any, actions: Any, params: Any
) -> list[tuple[str, slice, np.dtype, tuple[int, ...]]]:
    """``(name, columns, dtype, shape of one row)`` of each output packed by ``_batch_step``."""
    _, out = jax.eval_shape(
        functools.partial(_batch_outputs, env, normalize, same_step), carry, actions, params
    )
    layout, start = [], 0
    for name in sorted(out):
        row_shape = out[name].shape[1:]
        width = math.prod(row_shape)
        layout.append((name, slice(start, start + width), out[name].dtype, row_shape))
        start += width
    return layout


def _unpack(packed: np.ndarray, layout: list) -> dict[str, np.ndarray]:
    """The outputs of ``_batch_step`` from its packed array (on the host)."""
    n = packed.shape[0]
    return {
        name: packed[:, columns].reshape((n, *row_shape)).astype(dtype)
        for name, columns, dtype, row_shape in layout
    }


def _seed_keys(seeds: list[int]) -> jax.Array:
    """``u32[n, 2]``: ``jax.random.PRNGKey(seed)`` of each seed (as the single adapter)."""
    return jnp.asarray(np.stack([np.asarray(jax.random.PRNGKey(seed)) for seed in seeds]))


def _spaces(
    env: MarketMakingEnv, params: EnvParams, normalize_actions: bool
) -> tuple[gymnasium.spaces.Box, gymnasium.spaces.Box]:
    low, high = observation_bounds(env, params)
    observation_space = gymnasium.spaces.Box(low=low, high=high, dtype=np.float32)
    if normalize_actions:
        action_space = gymnasium.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
    else:
        box = env.action_space(params)
        action_space = gymnasium.spaces.Box(low=box.low, high=box.high, dtype=np.float32)
    return observation_space, action_space


def _check_seed(seed: Any, name: str = "seed") -> None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int | np.integer)):
        raise ValueError(f"{name} = {seed!r}; allowed: an integer >= 0 or None")
    if seed is not None and seed < 0:
        raise ValueError(f"{name} = {seed!r}; allowed: an integer >= 0 or None")


class GymnasiumMarketMakingEnv(gymnasium.Env):
    """``gymnasium.Env`` over ``MarketMakingEnv`` (``env.gymnasium(params)``, ``gymnasium.make``).

    The same market and the same ``step_env`` (jitted, one call and one transfer to the host per
    step), without gymnax's auto-reset: after ``terminated`` call ``reset``. Observations are
    ``np.float32`` arrays, rewards Python floats; ``info`` holds the step's ``pnl``,
    ``spread_pnl``, ``inventory_pnl``, fills and quoted depths as floats. ``reset(seed=s)``
    restarts the JAX key stream from ``s`` (``reset()`` continues it); an episode is a pure
    function of the seed and the actions. Copies and pickles work.

    Args:
        env: the gymnax environment (default ``MarketMakingEnv()``).
        params: its settings (default ``env.default_params``), validated here.
        seed: seed of the JAX key stream until a ``reset(seed=...)`` (default 0).
        normalize_actions: act in ``[-1, 1]^2``, mapped onto the action bounds by
            ``denormalize_action``.
    """

    metadata = {"render_modes": []}  # noqa: RUF012 (gymnasium's class attribute)

    def __init__(
        self,
        env: MarketMakingEnv | None = None,
        params: EnvParams | None = None,
        seed: int | None = None,
        normalize_actions: bool = False,
    ):
        super().__init__()
        if env is None:
            from jaxmm.env import MarketMakingEnv

            env = MarketMakingEnv()
        _check_seed(seed)
        self.env = env
        self.params = (env.default_params if params is None else params).validate()
        self._device_params = jax.device_put(self.params)  # no scalar transfers per step
        self.normalize_actions = bool(normalize_actions)
        self.observation_space, self.action_space = _spaces(env, self.params, normalize_actions)
        self._key = jax.random.PRNGKey(0 if seed is None else seed)
        self._state: MarketState | None = None
        self._done = True

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:
            self._key = jax.random.PRNGKey(seed)
        obs, self._state = _reset(self.env, self._key, self._device_params)
        self._done = False
        return np.array(obs, np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._done:
            raise RuntimeError("the episode has ended (or was never started): call reset()")
        self._key, self._state, out = _step(
            self.env,
            self.normalize_actions,
            self._key,
            self._state,
            np.asarray(action, np.float32),  # numpy: jit's fast path moves it
            self._device_params,
        )
        obs, reward, terminated, info = jax.device_get(out)
        self._done = bool(terminated)
        info = {name: float(value) for name, value in info.items()}
        return np.array(obs, np.float32), float(reward), self._done, False, info


class MarketMakingVectorEnv(gymnasium.vector.VectorEnv):
    """``num_envs`` markets stepped by one jitted JAX call, with gymnasium's auto-reset.

    Observations ``f32[num_envs, n_features]``, actions ``f32[num_envs, 2]``, rewards
    ``f64[num_envs]``, terminations and truncations ``bool[num_envs]`` (truncations always
    False). ``infos`` maps each name of the single env's info to ``[num_envs]`` arrays, with the
    mask ``"_" + name`` (False for a sub-environment that has no info in this step). Keys and
    market states stay on the device; a step makes one transfer of the batch to the host. One
    compilation per ``(num_envs, env, normalize_actions, autoreset_mode)`` and parameter
    structure.

    Auto-reset (``metadata["autoreset_mode"]``):

    - ``NEXT_STEP`` (default): the step after a sub-environment terminates ignores its action
      and returns its reset observation, reward 0, ``terminated = False`` and no info.
    - ``SAME_STEP``: a sub-environment that terminates is reset within the step; the step
      returns its reset observation, its reward and ``terminated = True``, and, as gymnasium's
      ``SyncVectorEnv``, its last observation in ``infos["final_obs"]`` (an object array,
      ``None`` elsewhere) and its info in ``infos["final_info"]`` (masks ``"_final_obs"``,
      ``"_final_info"``); its top-level info is then the reset's (none: masked out).

    Args:
        num_envs: the number of sub-environments (>= 1).
        env, params, seed, normalize_actions: as ``GymnasiumMarketMakingEnv``; ``seed`` is the
            base seed of the first ``reset()`` without one (sub-environment ``i`` gets
            ``seed + i``).
        autoreset_mode: an ``AutoresetMode`` (or its value) other than ``DISABLED``.
    """

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}  # noqa: RUF012

    def __init__(
        self,
        num_envs: int,
        env: MarketMakingEnv | None = None,
        params: EnvParams | None = None,
        seed: int | None = None,
        normalize_actions: bool = False,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
    ):
        if isinstance(num_envs, bool) or not isinstance(num_envs, int | np.integer):
            raise ValueError(f"num_envs = {num_envs!r}; allowed: an integer >= 1")
        if num_envs < 1:
            raise ValueError(f"num_envs = {num_envs!r}; allowed: an integer >= 1")
        modes = (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP)
        if autoreset_mode not in modes and autoreset_mode not in [m.value for m in modes]:
            raise ValueError(
                f"autoreset_mode = {autoreset_mode!r}; allowed: one of {[m.value for m in modes]}"
            )
        if env is None:
            from jaxmm.env import MarketMakingEnv

            env = MarketMakingEnv()
        _check_seed(seed)
        self.num_envs = int(num_envs)
        self.env = env
        self.params = (env.default_params if params is None else params).validate()
        self._device_params = jax.device_put(self.params)  # no scalar transfers per step
        self.normalize_actions = bool(normalize_actions)
        self.autoreset_mode = AutoresetMode(autoreset_mode)
        self.metadata = {**self.metadata, "autoreset_mode": self.autoreset_mode}
        self.single_observation_space, self.single_action_space = _spaces(
            env, self.params, normalize_actions
        )
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._default_seed = 0 if seed is None else int(seed)
        self._carry: tuple[jax.Array, MarketState, jax.Array] | None = None
        self._layout: list | None = None

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset every sub-environment. ``seed``: an int ``s`` (seeds ``s + i``), a list of
        ``num_envs`` ints, or None (continue each key stream; the first time: ``seed + i`` of the
        constructor)."""
        if isinstance(seed, list | tuple):
            if len(seed) != self.num_envs:
                raise ValueError(
                    f"seed has {len(seed)} entries; allowed: num_envs = {self.num_envs}"
                )
            for index, value in enumerate(seed):
                _check_seed(value, f"seed[{index}]")
            seeds = [int(value) for value in seed]
        else:
            _check_seed(seed)
            seeds = None if seed is None else [int(seed) + i for i in range(self.num_envs)]
        super().reset(seed=None if seeds is None else seeds[0])
        if seeds is None and self._carry is None:
            seeds = [self._default_seed + i for i in range(self.num_envs)]
        keys = self._carry[0] if seeds is None else _seed_keys(seeds)
        self._carry, obs = _batch_reset(self.env, keys, self._device_params)
        return np.array(obs, np.float32), {}

    def step_arrays(self, actions: np.ndarray) -> dict[str, np.ndarray]:
        """One step of every sub-environment as host arrays, for code that wants no dicts of
        masks (``jaxmm.sb3``): ``obs`` ``f32[n, n_features]``, ``reward`` and ``info/<name>``
        ``[n]`` (the market's float dtype), ``terminated`` ``bool[n]``; in ``NEXT_STEP`` mode
        ``info_mask`` ``bool[n]`` (False: reset in this step, info zero), in ``SAME_STEP`` mode
        ``final_obs`` ``f32[n, n_features]`` (the step's own observation; ``obs`` holds the
        reset observation where ``terminated``)."""
        if self._carry is None:
            raise RuntimeError("the vector env was never reset: call reset()")
        actions = np.asarray(actions, np.float32)  # jit moves it (cheaper than jnp)
        if actions.shape != self.action_space.shape:
            raise ValueError(
                f"actions have shape {actions.shape}; allowed: {self.action_space.shape}"
            )
        same_step = self.autoreset_mode is AutoresetMode.SAME_STEP
        settings = (self.env, self.normalize_actions, same_step)
        if self._layout is None:
            self._layout = _output_layout(*settings, self._carry, actions, self._device_params)
        self._carry, packed = _batch_step(*settings, self._carry, actions, self._device_params)
        return _unpack(np.asarray(packed), self._layout)

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        out = self.step_arrays(actions)
        terminated = out["terminated"]
        info = {name[5:]: value for name, value in out.items() if name.startswith("info/")}
        if self.autoreset_mode is AutoresetMode.SAME_STEP:
            mask = ~terminated
            infos: dict[str, Any] = {}
            if terminated.any():
                final_obs = np.full(self.num_envs, None, dtype=object)
                for i in np.flatnonzero(terminated):
                    final_obs[i] = out["final_obs"][i]
                final_info = {}
                for name, value in info.items():
                    final_info[name] = np.where(terminated, value, np.zeros_like(value))
                    final_info[f"_{name}"] = terminated
                infos.update(
                    final_obs=final_obs,
                    _final_obs=terminated,
                    final_info=final_info,
                    _final_info=terminated,
                )
            for name, value in info.items():
                infos[name] = np.where(mask, value, np.zeros_like(value))
                infos[f"_{name}"] = mask
        else:
            infos = {}
            for name, value in info.items():
                infos[name] = value
                infos[f"_{name}"] = out["info_mask"]
        return (
            out["obs"].astype(np.float32, copy=False),
            out["reward"].astype(np.float64, copy=False),
            terminated,
            np.zeros_like(terminated),
            infos,
        )


def make_env(
    normalize_actions: bool = False, seed: int | None = None, **settings: Any
) -> GymnasiumMarketMakingEnv:
    """The entry point of ``gymnasium.make(ENV_ID, ...)``; ``settings`` as ``env_settings``."""
    env, params = env_settings(**settings)
    return GymnasiumMarketMakingEnv(env, params, seed, normalize_actions)


def make_vector_env(
    num_envs: int = 1,
    normalize_actions: bool = False,
    seed: int | None = None,
    autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
    **settings: Any,
) -> MarketMakingVectorEnv:
    """The vector entry point of ``gymnasium.make_vec(ENV_ID, num_envs=n, ...)``."""
    env, params = env_settings(**settings)
    return MarketMakingVectorEnv(num_envs, env, params, seed, normalize_actions, autoreset_mode)


if ENV_ID not in gymnasium.registry:
    gymnasium.register(
        id=ENV_ID,
        entry_point=f"{__name__}:make_env",
        vector_entry_point=f"{__name__}:make_vector_env",
    )
