"""Trained PPO agents for the studies: train once, reuse while the configuration is unchanged.

``trained_run(name, **overrides)`` trains ``PPOConfig(name=name, **overrides)`` into
``results/agents/<name>/`` unless a run with exactly that configuration is already there, and
returns its folder; ``train.checkpoint.load_policy(folder)`` gives the agent as a jaxmm policy.
Every study that needs an agent goes through here, so ``experiments.all`` trains each agent once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import jax

# Training runs XLA while loops; the CPU runtime can deadlock on them under async dispatch
# (jax-ml/jax#25861, seen in about one run in ten). Studies block on every result anyway.
jax.config.update("jax_cpu_enable_async_dispatch", False)

AGENTS_DIR = Path("results/agents")


def trained_run(name: str, *, out_dir: Path | None = None, **overrides: Any) -> Path:
    """Folder of a finished training run of ``PPOConfig(name=name, **overrides)`` under
    ``out_dir`` (default: the module's ``AGENTS_DIR``, which ``experiments.all`` may move)."""
    from train.config import PPOConfig
    from train.ppo import train_run

    out_dir = Path(AGENTS_DIR if out_dir is None else out_dir)
    config = PPOConfig(name=name, out_dir=str(out_dir), **overrides)
    run = out_dir / name
    metrics = run / "metrics.json"  # written last: a finished run of exactly this config
    if metrics.is_file():
        try:
            finished = json.loads(metrics.read_text())["config"]
        except (ValueError, KeyError):
            finished = None
        if finished == json.loads(json.dumps(config.to_dict())):
            print(f"agent {name}: reusing {run}", file=sys.stderr)
            return run
    print(f"agent {name}: training {config.total_timesteps:,} steps", file=sys.stderr)
    train_run(config)
    return run


def load_policy(run: Path) -> Any:
    from train.checkpoint import load_policy as load

    return load(run)
