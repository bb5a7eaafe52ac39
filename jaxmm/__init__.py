"""jaxmm: optimal market making in JAX.

``import jaxmm as mm``; see README.md and DESIGN.md for the public API and its conventions.
"""

from jaxmm import market, metrics, optimal, policies, presets
from jaxmm.market import MarketState, Quotes
from jaxmm.params import MarketParams
from jaxmm.simulate import Rollout, rollout, simulate

__all__ = [
    "MarketParams",
    "MarketState",
    "Quotes",
    "Rollout",
    "market",
    "metrics",
    "optimal",
    "policies",
    "presets",
    "rollout",
    "simulate",
]
__version__ = "0.1.0"
