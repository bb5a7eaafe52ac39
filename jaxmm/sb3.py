"""The batched market as a Stable-Baselines3 ``VecEnv`` (needs ``pip install jaxmm[sb3]``).

``import jaxmm`` does not import this module (nor torch or SB3)::

    from stable_baselines3 import PPO
    from jaxmm.sb3 import make_sb3_vec_env
    venv = make_sb3_vec_env(64, normalize_actions=True, seed=0)  # keywords of gymnasium.make
    PPO("MlpPolicy", venv, n_steps=200).learn(100_000)

One jitted JAX call steps all ``num_envs`` markets (the program of
``jaxmm.gymnasium_env.MarketMakingVectorEnv``) with SB3's auto-reset: a sub-environment that
terminates is reset in the same step, its reset observation is returned, and its last
observation is in ``infos[i]["terminal_observation"]`` (with ``"TimeLimit.truncated": False``:
the end of the session is a termination). ``seed(s)`` gives sub-environment ``i`` the seed
``s + i`` at the next ``reset()``, so the episodes are those of ``num_envs``
``GymnasiumMarketMakingEnv`` reset with seeds ``s, s + 1, ...``. Wrap in SB3's ``VecMonitor``
for episode returns in the logs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import gymnasium
import numpy as np
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env import VecEnv

from jaxmm import gymnasium_env

if TYPE_CHECKING:
    from jaxmm.env import EnvParams, MarketMakingEnv

__all__ = ["MarketMakingSB3VecEnv", "make_sb3_vec_env"]


class MarketMakingSB3VecEnv(VecEnv):
    """``num_envs`` markets as one SB3 ``VecEnv``; see the module docstring.

    Observations ``f32[num_envs, n_features]``, rewards ``f32[num_envs]``, dones
    ``bool[num_envs]``, ``infos`` a list of ``num_envs`` dicts (the step's ``pnl``,
    ``spread_pnl``, ``inventory_pnl``, fills and depths as floats; at a termination also
    ``terminal_observation``). Keys and states stay on the device; one transfer per step.

    Args:
        num_envs, env, params, seed, normalize_actions: as
            ``jaxmm.gymnasium_env.MarketMakingVectorEnv``.
    """

    def __init__(
        self,
        num_envs: int,
        env: MarketMakingEnv | None = None,
        params: EnvParams | None = None,
        seed: int | None = None,
        normalize_actions: bool = False,
    ):
        # The gymnasium vector env in SAME_STEP mode (SB3's auto-reset) validates the
        # arguments, holds the settings and steps; this class only reshapes its outputs.
        self._vector = gymnasium_env.MarketMakingVectorEnv(
            num_envs, env, params, seed, normalize_actions, AutoresetMode.SAME_STEP
        )
        self.render_mode = None
        super().__init__(
            self._vector.num_envs,
            self._vector.single_observation_space,
            self._vector.single_action_space,
        )
        self._actions: np.ndarray | None = None

    @property
    def env(self) -> MarketMakingEnv:
        return self._vector.env

    @property
    def params(self) -> EnvParams:
        return self._vector.params

    def reset(self) -> np.ndarray:
        seeds = None if all(seed is None for seed in self._seeds) else self._seeds
        if seeds is not None and any(seed is None for seed in seeds):
            raise ValueError(f"seeds {seeds}; allowed: all None or all integers")
        obs, _ = self._vector.reset(seed=seeds)
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = [{} for _ in range(self.num_envs)]
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        actions = np.asarray(actions, np.float32)
        expected = (self.num_envs, *self.action_space.shape)
        if actions.shape != expected:
            raise ValueError(f"actions have shape {actions.shape}; allowed: {expected}")
        self._actions = actions

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        if self._actions is None:
            raise RuntimeError("step_wait without step_async")
        out = self._vector.step_arrays(self._actions)
        self._actions = None
        dones = np.asarray(out["terminated"], np.bool_)
        columns = {
            name[5:]: value.tolist() for name, value in out.items() if name.startswith("info/")
        }
        infos = [
            {name: column[i] for name, column in columns.items()} for i in range(self.num_envs)
        ]
        for i in np.flatnonzero(dones):
            infos[i]["terminal_observation"] = np.asarray(out["final_obs"][i], np.float32)
            infos[i]["TimeLimit.truncated"] = False
        return (
            np.asarray(out["obs"], np.float32),
            np.asarray(out["reward"], np.float32),
            dones,
            infos,
        )

    def close(self) -> None:
        self._vector.close()

    def _indices(self, indices: Any) -> Sequence[int]:
        if indices is None:
            return range(self.num_envs)
        if isinstance(indices, int | np.integer):
            return [int(indices)]
        return list(indices)

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        """The attribute of the (identical) sub-environments: ``render_mode``, ``env``,
        ``params``, ``normalize_actions``, ``observation_space``, ``action_space``."""
        spaces = {
            "observation_space": self.observation_space,
            "action_space": self.action_space,
            "render_mode": self.render_mode,
        }
        if attr_name in spaces:
            value = spaces[attr_name]
        elif attr_name in ("env", "params", "normalize_actions"):
            value = getattr(self._vector, attr_name)
        else:
            raise AttributeError(
                f"MarketMakingSB3VecEnv has no sub-environment attribute {attr_name!r}"
            )
        return [value for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        raise AttributeError(
            f"cannot set {attr_name!r}: the sub-environments share one compiled program; "
            "build a new MarketMakingSB3VecEnv instead"
        )

    def env_method(
        self, method_name: str, *method_args: Any, indices: Any = None, **method_kwargs: Any
    ) -> list[Any]:
        raise AttributeError(
            f"cannot call {method_name!r} on one sub-environment: they are one batched program"
        )

    def env_is_wrapped(
        self, wrapper_class: type[gymnasium.Wrapper], indices: Any = None
    ) -> list[bool]:
        return [False for _ in self._indices(indices)]


def make_sb3_vec_env(
    num_envs: int, normalize_actions: bool = False, seed: int | None = None, **settings: Any
) -> MarketMakingSB3VecEnv:
    """An SB3 ``VecEnv`` from the keyword arguments of ``gymnasium.make``
    (``jaxmm.gymnasium_env.env_settings``)."""
    env, params = gymnasium_env.env_settings(**settings)
    return MarketMakingSB3VecEnv(num_envs, env, params, seed, normalize_actions)
