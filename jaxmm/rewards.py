"""The reward: one definition for the environment, the exact optimum and every evaluation.

Every reward jaxmm knows has the form, per step ``t``::

    r_t = dPnL_t - c_t q_{t+1}^2

with ``dPnL_t`` the step's PnL increment (spread capture plus mark to market minus fees) and
``q_{t+1}`` the inventory after the step's fills (the inventory that is marked to market over
the step). The name of the reward fixes the penalty coefficient ``c_t`` (``penalty_coefficient``):

- ``"inventory_penalty"``: ``c_t = phi`` (price units per squared unit of inventory);
- ``"pnl"``: ``c_t = 0``;
- ``"variance"``: ``c_t = phi sigma_t^2 dt``, the variance of the step's mark to market per
  squared unit of inventory times ``phi`` (per price unit); ``sigma_t`` is the price volatility
  in force during step ``t`` (``market.sigma_at``; times the mid for the geometric model), so
  this reward sees a volatility switch.

One more reward is not of that form: ``"cara"``, the exponential utility of terminal wealth,
``U(W_N)`` with ``U(w) = (1 - exp(-phi w)) / phi`` (``utility``; ``phi`` is the risk aversion
gamma, per price unit, > 0; ``U(w) -> w`` as ``phi -> 0``) and ``W_t`` the PnL since the start
(net of fees, inventory marked at the mid). It is paid as the telescoping step reward
``r_t = U(W_{t+1}) - U(W_t)`` (``cara_step_reward``), so the episode reward is ``U(W_N)``
exactly and a learner sees it densely. Maximising ``E[U(W_N)]`` is maximising the certainty
equivalent ``-(1/phi) log E[exp(-phi W_N)]`` (``certainty_equivalent``); its exact optimum is
``jaxmm.optimal.bellman_cara`` (the Gueant-Lehalle-Fernandez-Tapia problem as ``dt -> 0``).

The episode reward is the sum over the session (``episode_reward`` from a ``Rollout``). The
environment's step reward (``jaxmm.env``), the exact optimum (``jaxmm.optimal.bellman`` and
``evaluate``), the training evaluation and ``Rollout.reward`` all call this module, so every
optimality gap is measured against the same reward.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxmm import market
from jaxmm.params import MarketParams

__all__ = [
    "REWARDS",
    "cara_step_reward",
    "certainty_equivalent",
    "check",
    "episode_reward",
    "needs_paths",
    "penalty_coefficient",
    "penalty_schedule",
    "step_reward",
    "utility",
    "value_to_reward",
]

REWARDS = ("inventory_penalty", "pnl", "variance", "cara")


def check(reward: str, name: str = "reward") -> str:
    """Return ``reward`` if it is one of ``REWARDS``; else raise ``ValueError`` naming ``name``."""
    if reward not in REWARDS:
        raise ValueError(f"{name} = {reward!r}; allowed: one of {REWARDS}")
    return reward


def penalty_coefficient(
    t: jax.Array, params: MarketParams, phi: Any, reward: str, mid: jax.Array | None = None
) -> jax.Array:
    """``c_t`` of step ``t`` (any shape; see the module docstring), in the market's float dtype.

    ``mid`` (the mid at the start of the step) is needed only by the variance reward under the
    geometric mid, whose volatility is relative.
    """
    check(reward)
    if reward == "cara":
        raise ValueError(
            "reward = 'cara' has no per-step inventory penalty: its step reward is "
            "cara_step_reward (utility of the PnL)"
        )
    dtype = market.float_dtype()
    t = jnp.asarray(t)
    if reward == "pnl":
        return jnp.zeros(t.shape, dtype)
    if reward == "inventory_penalty":
        return jnp.broadcast_to(jnp.asarray(phi, dtype), t.shape)
    sigma = market.sigma_at(t, params)
    if params.price_model == "geometric":
        if mid is None:
            raise ValueError("the variance reward under price_model='geometric' needs the mid")
        sigma = sigma * mid
    return jnp.asarray(phi * sigma**2 * params.dt, dtype)


def penalty_schedule(params: MarketParams, phi: float, reward: str) -> np.ndarray:
    """``c_t`` for every step ``t = 0 .. n_steps - 1`` as ``f64[n_steps]`` (the exact solvers'
    form; ``penalty_coefficient`` evaluated in float64). Not for the geometric mid."""
    with jax.enable_x64(True):
        steps = np.arange(params.n_steps)
        return np.asarray(penalty_coefficient(steps, params, phi, reward), np.float64)


def step_reward(pnl: jax.Array, inventory_after: jax.Array, coefficient: jax.Array) -> jax.Array:
    """``dPnL - c_t q_{t+1}^2`` for the step's PnL increment and inventory after its fills."""
    return pnl - coefficient * inventory_after**2


def utility(wealth: Any, gamma: Any) -> jax.Array:
    """CARA utility ``(1 - exp(-gamma w)) / gamma`` of wealth ``w`` (price units; any shape),
    in price units: ``U(0) = 0``, ``U'(0) = 1``, bounded above by ``1 / gamma``."""
    wealth = jnp.asarray(wealth)
    return -jnp.expm1(-gamma * wealth) / gamma


def cara_step_reward(pnl_before: jax.Array, pnl_after: jax.Array, gamma: Any) -> jax.Array:
    """The CARA reward of one step, ``U(W_{t+1}) - U(W_t)`` for the cumulative PnL before and
    after it: ``exp(-gamma W_t) U(W_{t+1} - W_t)``, the same number written so that it keeps
    its precision when the step's PnL change is small."""
    return jnp.exp(-gamma * pnl_before) * utility(pnl_after - pnl_before, gamma)


def certainty_equivalent(expected_utility: Any, gamma: Any) -> np.ndarray:
    """The wealth whose utility is ``expected_utility``: ``-(1/gamma) log(1 - gamma E[U])``
    (price units; ``+inf`` if ``gamma E[U] >= 1``, which no finite wealth reaches)."""
    expected_utility = np.asarray(expected_utility, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        inside = 1.0 - gamma * expected_utility
        return np.where(inside > 0, -np.log(np.where(inside > 0, inside, 1.0)) / gamma, np.inf)


def value_to_reward(value: float, reward: str, phi: float) -> float:
    """The expected episode reward of a solver's value at the start ``(t, q) = (0, 0)``.

    ``jaxmm.optimal.bellman``/``evaluate`` return expected episode rewards already; the CARA
    solvers (``bellman_cara``/``evaluate_cara``) return a certainty equivalent ``theta``, whose
    expected reward is ``E[U(W_N)] = U(theta)``.
    """
    check(reward)
    if reward == "cara":
        return float(utility(np.float64(value), np.float64(phi)))
    return float(value)


def needs_paths(params: MarketParams, reward: str) -> bool:
    """Whether ``episode_reward`` needs the per-step paths: the variance reward when the
    volatility changes during the session or is relative (geometric mid)."""
    if reward != "variance":
        return False
    switches = int(params.vol_switch_step) < params.n_steps
    return switches or params.price_model == "geometric"


def episode_reward(
    rollout: Any, phi: Any, reward: str = "inventory_penalty", params: MarketParams | None = None
) -> jax.Array:
    """The episode reward ``sum_t r_t`` of every episode of a ``Rollout``, ``f[n]``.

    The inventory penalty and the pnl reward come from the streamed ``sum_sq_inventory``; the
    variance reward needs ``params`` and, when ``needs_paths(params, reward)``, a rollout
    simulated with ``paths=True`` (the inventory path, and the mid path for the geometric mid).
    """
    check(reward)
    if reward == "pnl":
        return rollout.pnl
    if reward == "cara":
        return utility(rollout.pnl, phi)
    if reward == "inventory_penalty":
        return rollout.pnl - phi * rollout.sum_sq_inventory
    if params is None:
        raise ValueError("the variance reward needs the market params")
    if not needs_paths(params, reward):
        coefficient = penalty_coefficient(jnp.zeros((), jnp.int32), params, phi, reward)
        return rollout.pnl - coefficient * rollout.sum_sq_inventory
    if rollout.paths is None:
        raise ValueError(
            "the variance reward under a volatility switch or a geometric mid needs the "
            "inventory path: simulate with paths=True"
        )
    steps = jnp.arange(params.n_steps)
    mid = rollout.paths.mid[:, :-1] if params.price_model == "geometric" else None
    coefficients = penalty_coefficient(steps, params, phi, reward, mid=mid)
    after_fills = rollout.paths.inventory[:, 1:]
    return rollout.pnl - jnp.sum(coefficients * after_fills**2, axis=1)
