"""Checkpoints: ``config.json`` plus ``checkpoint.msgpack`` (flax serialisation), no orbax.

``checkpoint.msgpack`` holds the network parameters and observation statistics of every seed of
a run, stacked on a leading ``num_seeds`` axis, and the index of the selected seed.
``load_policy(run_dir)`` rebuilds the environment and the network from ``config.json`` and
returns the selected agent as a jaxmm policy for ``simulate``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from train.config import PPOConfig, agent_spec, market_env
from train.networks import Agent, ObsNorm

__all__ = [
    "CHECKPOINT_FILE",
    "CONFIG_FILE",
    "load_agents",
    "load_config",
    "load_policy",
    "save",
    "select",
]

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.msgpack"


def save(
    run_dir: Path, config: PPOConfig, params: Any, obs_norm: ObsNorm, selected_seed: int
) -> Path:
    """Write ``config.json`` and ``checkpoint.msgpack`` into ``run_dir``.

    Args:
        params, obs_norm: stacked over seeds (leading axis ``config.num_seeds``).
        selected_seed: the seed ``load_policy`` returns by default.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not 0 <= selected_seed < config.num_seeds:
        raise ValueError(f"selected_seed = {selected_seed}; allowed: 0 <= s < {config.num_seeds}")
    (run_dir / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    payload = {
        "params": params,
        "obs_norm": obs_norm,
        "selected_seed": np.int32(selected_seed),
    }
    path = run_dir / CHECKPOINT_FILE
    path.write_bytes(serialization.to_bytes(jax.device_get(payload)))
    return path


def load_config(run_dir: Path) -> PPOConfig:
    """The ``PPOConfig`` saved in ``run_dir/config.json``."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a training run folder?")
    return PPOConfig.from_dict(json.loads(path.read_text()))


def load_agents(run_dir: Path) -> tuple[PPOConfig, Agent, int]:
    """``(config, agents, selected_seed)``; ``agents`` has leaves stacked over seeds.

    The saved arrays are restored into a template built from the config, so a checkpoint that
    does not match its config (other network sizes, other environment) fails loudly.
    """
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    env, env_params = market_env(config)
    spec = agent_spec(config, env, env_params)
    shapes = jax.eval_shape(spec.init, jax.random.key(0))  # no weights drawn: fast

    def stack(x: jax.ShapeDtypeStruct) -> np.ndarray:
        return np.zeros((config.num_seeds, *x.shape), x.dtype)

    template = {
        "params": jax.tree.map(stack, shapes.params),
        "obs_norm": jax.tree.map(stack, shapes.obs_norm),
        "selected_seed": np.int32(0),
    }
    restored = serialization.from_bytes(template, (run_dir / CHECKPOINT_FILE).read_bytes())
    if jax.tree.map(np.shape, restored) != jax.tree.map(np.shape, template):
        raise ValueError(f"{run_dir / CHECKPOINT_FILE} does not match {run_dir / CONFIG_FILE}")
    agents = spec.agent(
        jax.tree.map(jnp.asarray, restored["params"]),
        jax.tree.map(jnp.asarray, restored["obs_norm"]),
    )
    return config, agents, int(restored["selected_seed"])


def select(agents: Agent, seed_index: int) -> Agent:
    """One seed's agent out of stacked agents."""
    return jax.tree.map(lambda x: x[seed_index], agents)


def load_policy(run_dir: Path, seed_index: int | None = None) -> Any:
    """The trained agent of ``run_dir`` as a jaxmm policy ``(MarketState, MarketParams) ->
    Quotes`` (deterministic: the squashed mean action).

    Args:
        run_dir: a folder written by ``python -m train.ppo`` (``runs/<name>``).
        seed_index: which of the run's seeds (default: the selected one, see ``metrics.json``).
    """
    config, agents, selected = load_agents(run_dir)
    index = selected if seed_index is None else seed_index
    if not 0 <= index < config.num_seeds:
        raise ValueError(f"seed_index = {seed_index}; allowed: 0 <= i < {config.num_seeds}")
    env, env_params = market_env(config)
    return env.as_policy(select(agents, index), env_params)
