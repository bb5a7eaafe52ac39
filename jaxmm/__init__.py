"""jaxmm: optimal market making in JAX.

``import jaxmm as mm``; see README.md for the public API, and its "Design" section for the
conventions, the module layout and the order of one market step.
"""

import importlib

from jaxmm import (
    backtest,
    calibrate,
    devices,
    gradients,
    gymnasium_env,
    linalg,
    lobster,
    market,
    metrics,
    multi_asset,
    optimal,
    policies,
    presets,
    rewards,
    simulation,
    streaming,
)
from jaxmm.market import MarketState, Quotes
from jaxmm.params import MarketParams
from jaxmm.simulation import Rollout, rollout, simulate
from jaxmm.streaming import simulate_summary

__all__ = [
    "MarketParams",
    "MarketState",
    "Quotes",
    "Rollout",
    "backtest",
    "calibrate",
    "devices",
    "env",
    "execution",
    "gradients",
    "gymnasium_env",
    "linalg",
    "lobster",
    "market",
    "metrics",
    "multi_asset",
    "optimal",
    "policies",
    "presets",
    "rewards",
    "rollout",
    "simulate",
    "simulate_summary",
    "simulation",
    "streaming",
]
__version__ = "0.1.0"

_LAZY = ("env", "execution")  # gymnax takes seconds to import: load these on first use


def __getattr__(name: str):
    if name in _LAZY:
        return importlib.import_module(f"jaxmm.{name}")
    raise AttributeError(f"module 'jaxmm' has no attribute {name!r}")
