"""PPO market makers: ``python -m train.ppo`` trains, ``python -m train.evaluate runs/<name>``
re-evaluates, ``train.load_policy(run_dir)`` returns a trained agent as a jaxmm policy.

Names are imported on first use, so that ``python -m train.ppo`` does not import its own
module twice (once as ``train.ppo``, once as ``__main__``).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PPOConfig": "train.config",
    "market_env": "train.config",
    "make_train": "train.ppo",
    "make_trainer": "train.ppo",
    "generalized_advantages": "train.ppo",
    "benchmark": "train.ppo",
    "train_run": "train.ppo",
    "load_policy": "train.checkpoint",
    "load_agents": "train.checkpoint",
    "evaluate_run": "train.evaluate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'train' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
