"""Optimal execution: liquidating a position with temporary and permanent price impact.

The sister problem of market making (Cartea, Jaimungal & Penalva 2015, "Algorithmic and
High-Frequency Trading", chapter 6, "Optimal Execution with Continuous Trading": the
Almgren-Chriss model with a running inventory penalty). An agent holds ``Q0 = inventory``
shares at time 0 and sells them over the session ``[0, T]``.

Continuous time (CJP 6.5): the agent sells at the rate ``nu_t`` (shares per time unit);
inventory ``dQ = -nu dt``; mid ``dS = -b nu dt + sigma dW`` (permanent impact ``b``); every
share sells at ``S_t - k nu_t`` (temporary impact ``k``), so cash ``dX = (S - k nu) nu dt``.
The criterion is ``E[X_T + Q_T (S_T - alpha Q_T) - phi int_0^T Q_u^2 du]`` (terminal
liquidation penalty ``alpha``, running inventory penalty ``phi``).

Units: time in session units (``dt = T / n_steps``); inventory in shares; ``S0``, ``sigma``
(price per sqrt(time unit)); ``k``: price times time unit per share (the price concession per
unit of rate); ``b``: price per share (the mid's move per share sold); ``alpha``: price per
share^2; ``phi``: price per share^2 per time unit. Rewards and values are in price units
(cash).

The discrete problem (the one the environment, ``simulate_execution`` and ``riccati`` share):
step ``i`` covers ``[t_i, t_{i+1})``, ``t_i = i dt``. In state ``(t_i, q_i, S_i)`` the agent
sells ``v_i`` shares (a rate of ``v_i / dt``; ``v_i < 0`` buys) at the price
``S_i - k v_i / dt``; then ``q_{i+1} = q_i - v_i`` and the mid moves to
``S_{i+1} = S_i - b v_i + sigma sqrt(dt) Z_i`` with ``Z_i`` standard normal. The step's reward
is the change of the mark-to-market value ``X + q S`` minus the running penalty on the
inventory after the trade (the library's convention: ``q_{i+1}``, the inventory held over the
step), and, at the last step, the terminal penalty::

    r_i = v_i (S_i - k v_i / dt) + q_{i+1} S_{i+1} - q_i S_i - phi q_{i+1}^2 dt
          - [i = n_steps - 1] alpha q_N^2
        = -k v_i^2 / dt + q_{i+1} (S_{i+1} - S_i) - phi q_{i+1}^2 dt - [i = N - 1] alpha q_N^2

(the second line is how it is computed: increments, exact in float32). The episode reward is
``sum_i r_i = X_N + q_N (S_N - alpha q_N) - phi dt sum_i q_{i+1}^2 - Q0 S0``: the CJP
criterion in discrete time (right-point rule for the running penalty), relative to the arrival
value ``Q0 S0`` (a constant, subtracted so that rewards and optimality gaps are O(1)). It is
negative: the cost of liquidating. ``pnl`` is the same without the running penalty,
``X_N + q_N (S_N - alpha q_N) - Q0 S0`` (minus the implementation shortfall, with the leftover
marked at ``S_N - alpha q_N``).

Exact solutions:

- ``closed_form_*``: the CJP continuous-time optimum. ``nu*(t, q) = gamma q (zeta e^{gamma tau}
  + e^{-gamma tau}) / (zeta e^{gamma tau} - e^{-gamma tau})``, ``tau = T - t``,
  ``gamma = sqrt(phi / k)``, ``zeta = (alpha - b/2 + sqrt(k phi)) / (alpha - b/2 -
  sqrt(k phi))``; the value is ``x + q S + h_2(t) q^2`` with ``h_2 = -(b/2 + a(tau))``,
  ``a(tau) = k nu* / q`` (from the HJB equation ``h_2' = phi - (b + 2 h_2)^2 / (4 k)``,
  ``h_2(T) = -alpha``). Computed in a form that also holds for ``alpha = inf`` (``zeta = 1``,
  the Almgren-Chriss ``coth``) and ``phi = 0`` (``nu = q / (k / (alpha - b/2) + tau)``).
- ``riccati``: the exact optimum of the discrete problem. The expected reward-to-go is
  ``J_i(q) = -a_i q^2``; with ``a'_i = a_i - b/2`` and ``kappa = k / dt - b / 2`` the Bellman
  equation gives ``1 / a'_i = 1 / kappa + 1 / (phi dt + a'_{i+1})``, ``a'_N = alpha - b/2``,
  and the optimal sale is the fraction ``v_i / q_i = (phi dt + a'_{i+1}) / (kappa + phi dt +
  a'_{i+1})`` of the inventory, in ``(0, 1]`` (derivation in ``riccati``'s docstring).

Policies are pure callables ``(state: ExecutionState, params: ExecutionParams) -> shares``
(a scalar: shares to sell this step), and pytrees, so ``simulate_execution`` takes them as
data: ``Twap``, ``FractionSchedule`` (what ``riccati`` returns), ``ContinuousSpeed`` (the CJP
closed form applied at the start of each step) and ``ExecutionEnv.as_policy`` (an agent).

``ExecutionEnv`` is the gymnax environment (the same step); its action is the fraction of the
remaining inventory to sell, in ``[0, 1]``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import environment, spaces

from jaxmm import market

__all__ = [
    "FEATURES",
    "ContinuousSpeed",
    "ExecutionEnv",
    "ExecutionEnvPolicy",
    "ExecutionParams",
    "ExecutionRollout",
    "ExecutionSolution",
    "ExecutionState",
    "FractionSchedule",
    "StepInfo",
    "Twap",
    "closed_form_inventory",
    "closed_form_speed",
    "closed_form_value",
    "expected_reward",
    "reset",
    "riccati",
    "simulate_execution",
    "step",
    "step_noise",
    "step_with_noise",
]

FEATURES = ("inventory", "time_left", "mid_change")


@struct.dataclass
class ExecutionParams:
    """The execution problem (frozen; ``p.replace(phi=0.1)``); numbers are leaves.

    Attributes:
        inventory: shares to sell, ``Q0 > 0``.
        S0: initial mid, price units (finite).
        sigma: volatility of the mid, price per sqrt(time unit), >= 0.
        k: temporary impact, price times time unit per share (> 0): a sale at the rate
            ``nu`` (shares per time unit) gets ``S - k nu`` per share.
        b: permanent impact, price per share (>= 0): the mid falls by ``b`` per share sold.
        phi: running inventory penalty, price per share^2 per time unit (>= 0).
        alpha: terminal penalty, price per share^2; ``> b / 2`` (the leftover must cost
            more than the permanent impact it saves), ``inf`` allowed (liquidate by ``T``).
        T: session length, time units (> 0).
        n_steps: decisions per session (static), ``dt = T / n_steps``; ``k / dt > b / 2``
            (a step's temporary cost must outweigh its permanent-impact rebate).

    The defaults (10 shares, ``gamma = sqrt(phi / k) = 3`` per time unit, 50 steps) make
    a problem whose optimum front-loads the sales: TWAP costs 31% more than the optimum.
    """

    inventory: float = 10.0
    S0: float = 100.0
    sigma: float = 1.0
    k: float = 0.1
    b: float = 0.05
    phi: float = 0.9
    alpha: float = 1.0
    T: float = 1.0
    n_steps: int = struct.field(pytree_node=False, default=50)

    @property
    def dt(self) -> float:
        """Step length ``T / n_steps``, time units."""
        return self.T / self.n_steps

    @property
    def max_steps_in_episode(self) -> int:
        """Steps per episode (gymnax's name for it): ``n_steps``."""
        return self.n_steps

    def validate(self) -> ExecutionParams:
        """Raise ``ValueError`` naming the first invalid field; return ``self`` if all is well.

        Traced values (inside ``jit``) are skipped: validate at the boundary.
        """
        if (
            isinstance(self.n_steps, bool)
            or not isinstance(self.n_steps, int | np.integer)
            or self.n_steps < 1
        ):
            raise ValueError(
                f"ExecutionParams.n_steps = {self.n_steps!r}; allowed: an integer >= 1"
            )
        rules = (
            ("inventory", lambda x: np.isfinite(x) & (x > 0), "finite and > 0"),
            ("S0", np.isfinite, "finite"),
            ("sigma", lambda x: np.isfinite(x) & (x >= 0), "finite and >= 0"),
            ("k", lambda x: np.isfinite(x) & (x > 0), "finite and > 0"),
            ("b", lambda x: np.isfinite(x) & (x >= 0), "finite and >= 0"),
            ("phi", lambda x: np.isfinite(x) & (x >= 0), "finite and >= 0"),
            ("T", lambda x: np.isfinite(x) & (x > 0), "finite and > 0"),
        )
        for name, ok, allowed in rules:
            self._check(name, ok, allowed)
        if not any(isinstance(getattr(self, name), jax.core.Tracer) for name in ("b", "k", "T")):
            half_b = np.asarray(self.b, np.float64) / 2
            dt = np.asarray(self.T, np.float64) / self.n_steps
            self._check("alpha", lambda x: x > half_b, "> b / 2 (inf allowed)")
            self._check(
                "k",
                lambda x: x / dt > half_b,
                "k / dt > b / 2 with dt = T / n_steps (more steps, or a smaller b)",
            )
        return self

    def _check(self, name: str, ok: Callable[[np.ndarray], Any], allowed: str) -> None:
        value = getattr(self, name)
        if isinstance(value, jax.core.Tracer):
            return
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"ExecutionParams.{name} = {value!r}; allowed: {allowed}") from None
        with np.errstate(invalid="ignore"):
            valid = np.all(~np.isnan(array) & ok(array))
        if not valid:
            raise ValueError(f"ExecutionParams.{name} = {value!r}; allowed: {allowed}")


@struct.dataclass
class ExecutionState:
    """One episode's state before step ``t`` (every leaf a scalar).

    Attributes:
        t: steps done, ``i32`` in ``[0, n_steps]``.
        inventory: shares still held, ``q_t``.
        mid: the mid ``S_t``, price units.
        pnl: ``X_t + q_t S_t - Q0 S0``, the mark-to-market PnL since the start, price units
            (carried as a sum of increments; the terminal penalty is added at the last step).
        key: the episode's noise key: step ``t`` draws ``Z_t = normal(fold_in(key, t))``.
    """

    t: jax.Array
    inventory: jax.Array
    mid: jax.Array
    pnl: jax.Array
    key: jax.Array


@struct.dataclass
class StepInfo:
    """What one step did (scalars, price units unless said otherwise).

    Attributes:
        shares: shares sold ``v`` (negative: bought). price: the execution price
        ``S_t - k v / dt``. pnl: ``-k v^2 / dt + q_{t+1} (S_{t+1} - S_t) - terminal_penalty``.
        running_penalty: ``phi q_{t+1}^2 dt``. terminal_penalty: ``alpha q_N^2`` at the last
        step, else 0. reward: ``pnl - running_penalty``.
    """

    shares: jax.Array
    price: jax.Array
    pnl: jax.Array
    running_penalty: jax.Array
    terminal_penalty: jax.Array
    reward: jax.Array


def reset(key: jax.Array, params: ExecutionParams) -> ExecutionState:
    """The start of an episode: ``t = 0``, ``q = Q0``, ``S = S0``, no PnL; ``key`` is the
    episode's noise key (a typed or raw PRNG key)."""
    dtype = market.float_dtype()
    return ExecutionState(
        t=jnp.zeros((), jnp.int32),
        inventory=jnp.asarray(params.inventory, dtype),
        mid=jnp.asarray(params.S0, dtype),
        pnl=jnp.zeros((), dtype),
        key=key,
    )


def step_with_noise(
    state: ExecutionState, shares: jax.Array, noise: jax.Array, params: ExecutionParams
) -> tuple[ExecutionState, StepInfo]:
    """One step (module docstring) with the given standard normal ``noise`` ``Z_t``.

    Sell ``shares`` at ``S_t - k shares / dt``, then ``S_{t+1} = S_t - b shares +
    sigma sqrt(dt) noise``. The one definition of the dynamics: ``step``, the environment and
    ``simulate_execution`` call it.
    """
    dtype = market.float_dtype()
    dt = params.T / params.n_steps
    shares = jnp.asarray(shares, dtype)
    inventory = state.inventory - shares
    mid_change = -params.b * shares + params.sigma * jnp.sqrt(dt) * jnp.asarray(noise, dtype)
    last = state.t + 1 >= params.n_steps
    terminal_penalty = jnp.where(last, params.alpha * inventory**2, 0.0).astype(dtype)
    pnl = (-params.k / dt * shares**2 + inventory * mid_change - terminal_penalty).astype(dtype)
    running_penalty = jnp.asarray(params.phi * dt * inventory**2, dtype)
    next_state = ExecutionState(
        t=state.t + 1,
        inventory=inventory.astype(dtype),
        mid=(state.mid + mid_change).astype(dtype),
        pnl=(state.pnl + pnl).astype(dtype),
        key=state.key,
    )
    info = StepInfo(
        shares=shares,
        price=(state.mid - params.k / dt * shares).astype(dtype),
        pnl=pnl,
        running_penalty=running_penalty,
        terminal_penalty=terminal_penalty,
        reward=(pnl - running_penalty).astype(dtype),
    )
    return next_state, info


def step_noise(state: ExecutionState) -> jax.Array:
    """``Z_t = normal(fold_in(state.key, state.t))``: the noise of step ``t`` of the episode."""
    return jax.random.normal(jax.random.fold_in(state.key, state.t), (), market.float_dtype())


def step(
    state: ExecutionState, shares: jax.Array, params: ExecutionParams
) -> tuple[ExecutionState, StepInfo]:
    """One step with the episode's noise ``Z_t = normal(fold_in(state.key, t))``: for the same
    episode key every policy sees the same noise (common random numbers)."""
    return step_with_noise(state, shares, step_noise(state), params)


# ----------------------------------------------------------------------------------------------
# Policies: (state, params) -> shares to sell this step


@struct.dataclass
class Twap:
    """Time-weighted average price: sell the remaining inventory evenly over the steps left,
    ``v = q_t / (n_steps - t)`` (from ``q = Q0``: ``Q0 / n_steps`` every step, nothing left)."""

    def __call__(self, state: ExecutionState, params: ExecutionParams) -> jax.Array:
        steps_left = jnp.maximum(params.n_steps - state.t, 1)
        return state.inventory / steps_left.astype(state.inventory.dtype)


@struct.dataclass
class FractionSchedule:
    """Sell the fraction ``fraction[t]`` of the inventory at step ``t``: ``v = fraction[t] q_t``.

    Attributes:
        fraction: ``f[n_steps]``, dimensionless (``riccati(params).fraction`` is the optimum).
    """

    fraction: jax.Array

    def __call__(self, state: ExecutionState, params: ExecutionParams) -> jax.Array:
        index = jnp.clip(state.t, 0, self.fraction.shape[0] - 1)
        return self.fraction[index].astype(state.inventory.dtype) * state.inventory


@struct.dataclass
class ContinuousSpeed:
    """The CJP continuous-time optimum applied at the start of each step:
    ``v = min(1, closed_form_speed(params, T - t_i) dt) q_t`` (the cap: with ``alpha = inf``
    the last step's ``nu dt`` exceeds the inventory)."""

    def __call__(self, state: ExecutionState, params: ExecutionParams) -> jax.Array:
        dt = params.T / params.n_steps
        time_to_go = params.T - state.t.astype(state.inventory.dtype) * dt
        fraction = jnp.minimum(1.0, closed_form_speed(params, time_to_go) * dt)
        return fraction.astype(state.inventory.dtype) * state.inventory


# ----------------------------------------------------------------------------------------------
# The continuous-time closed form (CJP 6.5)


def _inverse_excess_penalty(params: ExecutionParams) -> jax.Array:
    """``1 / (alpha - b/2)``, per price per share^2 (0 for ``alpha = inf``)."""
    return 1.0 / (jnp.asarray(params.alpha, market.float_dtype()) - params.b / 2)


def _ratio_small(x: jax.Array, function: Callable, series: Callable) -> jax.Array:
    """``function(x) / x`` for ``x >= 0``, with its Taylor ``series`` near 0 (no 0/0)."""
    small = x < 1e-3
    safe = jnp.where(small, 1.0, x)
    return jnp.where(small, series(x), function(safe) / safe)


def _tanhc(x: jax.Array) -> jax.Array:
    return _ratio_small(x, jnp.tanh, lambda y: 1.0 - y**2 / 3.0)


def _sinhc(x: jax.Array) -> jax.Array:
    return _ratio_small(x, jnp.sinh, lambda y: 1.0 + y**2 / 6.0)


def closed_form_speed(params: ExecutionParams, time_to_go: jax.Array) -> jax.Array:
    """The CJP optimal rate per share held, ``nu*(t, q) / q``, per time unit; ``f[...]`` like
    ``time_to_go = T - t`` (time units, >= 0).

    ``nu* / q = a(tau) / k`` with ``a(tau) = (a0 + m tanh(gamma tau)) / (1 + a0 tanh(gamma tau)
    / m)``, ``a0 = alpha - b/2``, ``m = sqrt(k phi)``, ``gamma = sqrt(phi / k)``: the same as
    ``gamma (zeta e^{gamma tau} + e^{-gamma tau}) / (zeta e^{gamma tau} - e^{-gamma tau})``
    (divide by ``e^{gamma tau}`` and use ``zeta = (a0 + m) / (a0 - m)``), written with
    ``1 / a0`` and ``tanh(x) / x`` so that ``alpha = inf`` (``gamma coth(gamma tau)``) and
    ``phi = 0`` (``1 / (k / a0 + tau)``) need no special case. Infinite at ``tau = 0`` when
    ``alpha = inf``. ``params`` is validated (traced leaves are skipped).
    """
    params.validate()
    dtype = market.float_dtype()
    tau = jnp.asarray(time_to_go, dtype)
    gamma = jnp.sqrt(jnp.asarray(params.phi, dtype) / params.k)
    inverse_a0 = _inverse_excess_penalty(params)
    tanh_over_m = tau / params.k * _tanhc(gamma * tau)  # tanh(gamma tau) / sqrt(k phi)
    m_tanh = params.k * gamma * jnp.tanh(gamma * tau)  # sqrt(k phi) tanh(gamma tau)
    a = (1.0 + m_tanh * inverse_a0) / (inverse_a0 + tanh_over_m)
    return a / params.k


def closed_form_value(params: ExecutionParams, time_to_go: Any = None, q: Any = None) -> jax.Array:
    """The CJP value ``H - x - q S = h_2(t) q^2 = -(b/2 + k nu*/q) q^2``, price units: the
    optimal expected criterion from ``(t, q)`` relative to the mark-to-market value ``x + q S``.

    Defaults: ``time_to_go = T`` and ``q = Q0`` (the optimum of the whole session relative to
    the arrival value ``Q0 S0``).
    """
    time_to_go = params.T if time_to_go is None else time_to_go
    q = params.inventory if q is None else q
    a = params.k * closed_form_speed(params, time_to_go)
    return -(params.b / 2 + a) * jnp.asarray(q, market.float_dtype()) ** 2


def closed_form_inventory(params: ExecutionParams, t: jax.Array) -> jax.Array:
    """The inventory along the CJP optimum from ``Q0`` at time 0: ``f[...]`` like ``t``.

    ``Q_t = Q0 (zeta e^{gamma tau} - e^{-gamma tau}) / (zeta e^{gamma T} - e^{-gamma T})``,
    ``tau = T - t`` (the solution of ``dQ = -nu*(t, Q) dt``), computed as
    ``(tau sinhc(gamma tau) / k + cosh(gamma tau) / a0) / (T sinhc(gamma T) / k +
    cosh(gamma T) / a0)``. ``params`` is validated (traced leaves are skipped).
    """
    params.validate()
    dtype = market.float_dtype()
    gamma = jnp.sqrt(jnp.asarray(params.phi, dtype) / params.k)
    inverse_a0 = _inverse_excess_penalty(params)

    def shape(tau: jax.Array) -> jax.Array:
        return tau / params.k * _sinhc(gamma * tau) + jnp.cosh(gamma * tau) * inverse_a0

    tau = params.T - jnp.asarray(t, dtype)
    return params.inventory * shape(tau) / shape(jnp.asarray(params.T, dtype))


# ----------------------------------------------------------------------------------------------
# The exact optimum of the discrete problem


@struct.dataclass
class ExecutionSolution:
    """The exact optimum of the discrete problem (``riccati``).

    Attributes:
        times: ``f[n_steps + 1]``, ``t_i = i dt``.
        fraction: ``f[n_steps]``: the optimal share of the inventory to sell at step ``i``.
        value_coefficient: ``f[n_steps + 1]``: ``a_i`` with the optimal expected reward-to-go
            from step ``i`` with ``q`` shares ``J_i(q) = -a_i q^2`` (price per share^2;
            ``a_N = alpha``, ``inf`` when ``alpha`` is).
        inventory: ``f[n_steps + 1]``: the optimal inventory path from ``Q0`` (deterministic).
        value: ``J_0(Q0)``, price units: the optimal expected episode reward.
    """

    times: jax.Array
    fraction: jax.Array
    value_coefficient: jax.Array
    inventory: jax.Array
    value: jax.Array

    def value_at(self, t_index: int = 0, q: Any = None) -> jax.Array:
        """``J_t(q) = -a_t q^2`` (default ``q``: the optimal inventory at step ``t``)."""
        q = self.inventory[t_index] if q is None else q
        return -self.value_coefficient[t_index] * jnp.asarray(q) ** 2

    def policy(self) -> FractionSchedule:
        """The optimal policy: ``FractionSchedule(fraction)``."""
        return FractionSchedule(fraction=self.fraction)


def riccati(params: ExecutionParams) -> ExecutionSolution:
    """The exact optimum of the discrete problem by a backward Riccati recursion.

    Derivation. Given ``q_i``, the expected reward of step ``i`` selling ``v`` (``u = q - v``
    left) is ``-kappa0 v^2 - b v u - phi dt u^2`` (``kappa0 = k / dt``; the noise term
    ``u sigma sqrt(dt) Z`` has mean 0 and ``u`` does not depend on ``Z``), so
    ``J_i(q) = max_u [-kappa0 (q - u)^2 - b (q - u) u - (phi dt + a_{i+1}) u^2]``, a concave
    quadratic in ``u`` when ``kappa0 - b + phi dt + a_{i+1} > 0``. Its maximum is at
    ``u = q (kappa0 - b/2) / (kappa0 - b + phi dt + a_{i+1})`` and equals ``-a_i q^2`` with
    ``a_i = kappa0 - (kappa0 - b/2)^2 / (kappa0 - b + phi dt + a_{i+1})``. With
    ``a'_i = a_i - b/2``, ``kappa = kappa0 - b/2`` and ``c = phi dt + a'_{i+1}`` this is
    ``a'_i = kappa c / (kappa + c)``, i.e. ``1 / a'_i = 1 / kappa + 1 / c``, and the optimal
    sale is the fraction ``v / q = c / (kappa + c)``; ``a'_N = alpha - b/2 > 0`` and
    ``kappa > 0`` (``validate``) keep every ``a'_i > 0``, the maximum unique and the fraction
    in ``(0, 1]``. The recursion runs on ``s_i = 1 / a'_i`` (finite even for ``alpha = inf``).
    Limits: ``phi = 0`` gives ``1 / a'_0 = n_steps / kappa + 1 / (alpha - b/2)``; with
    ``alpha = inf`` the fractions are TWAP's ``1 / (n_steps - i)``.

    Args:
        params: the problem, validated here (leaves may be traced: ``vmap`` over them).
    """
    return _riccati(params.validate())


@jax.jit
def _riccati(params: ExecutionParams) -> ExecutionSolution:
    dtype = market.float_dtype()
    dt = params.T / params.n_steps
    kappa = jnp.asarray(params.k / dt - params.b / 2, dtype)
    phi_dt = jnp.asarray(params.phi * dt, dtype)

    def backward(inverse_next, _):
        inverse_c = inverse_next / (1.0 + phi_dt * inverse_next)  # 1 / (phi dt + a'_{i+1})
        fraction = 1.0 / (1.0 + kappa * inverse_c)
        inverse = 1.0 / kappa + inverse_c
        return inverse, (fraction, inverse)

    inverse_terminal = _inverse_excess_penalty(params)
    _, (fraction, inverse) = jax.lax.scan(
        backward, inverse_terminal, None, length=params.n_steps, reverse=True
    )
    inverse = jnp.concatenate([inverse, inverse_terminal[None]])
    value_coefficient = 1.0 / inverse + params.b / 2

    def forward(q, fraction_i):
        next_q = q - fraction_i * q
        return next_q, next_q

    q0 = jnp.asarray(params.inventory, dtype)
    _, path = jax.lax.scan(forward, q0, fraction)
    inventory = jnp.concatenate([q0[None], path])
    times = jnp.arange(params.n_steps + 1, dtype=dtype) * dt
    return ExecutionSolution(
        times=times,
        fraction=fraction,
        value_coefficient=value_coefficient,
        inventory=inventory,
        value=-value_coefficient[0] * q0**2,
    )


# ----------------------------------------------------------------------------------------------
# Monte Carlo


@struct.dataclass
class ExecutionRollout:
    """Episodes of a policy (``simulate_execution``); leaves ``f[n_episodes]`` unless said.

    Attributes:
        reward: the episode reward ``sum_i r_i`` (module docstring), price units.
        pnl: ``X_N + q_N (S_N - alpha q_N) - Q0 S0``, price units (``reward + running_penalty``).
        running_penalty: ``phi dt sum_i q_{i+1}^2``. terminal_inventory: ``q_N``, shares.
        max_drawdown: the largest fall of the mark-to-market PnL from its running maximum
            (from 0 at the start), price units, >= 0.
        paths: with ``paths=True`` a dict of ``inventory`` and ``mid`` ``f[n, n_steps + 1]``
            (before step 0 .. after the last), ``shares``, ``price`` and ``reward``
            ``f[n, n_steps]``; else None.
    """

    reward: jax.Array
    pnl: jax.Array
    running_penalty: jax.Array
    terminal_inventory: jax.Array
    max_drawdown: jax.Array
    paths: Any = None


def _episode(params: ExecutionParams, policy: Any, key: jax.Array, paths: bool) -> ExecutionRollout:
    state = reset(key, params)

    def body(carry, _):
        state, peak, drawdown, penalty = carry
        shares = policy(state, params)
        next_state, info = step(state, shares, params)
        peak = jnp.maximum(peak, next_state.pnl)
        drawdown = jnp.maximum(drawdown, peak - next_state.pnl)
        record = (
            {
                "inventory": next_state.inventory,
                "mid": next_state.mid,
                "shares": info.shares,
                "price": info.price,
                "reward": info.reward,
            }
            if paths
            else None
        )
        return (next_state, peak, drawdown, penalty + info.running_penalty), record

    zero = jnp.zeros((), state.pnl.dtype)
    (final, _, drawdown, penalty), records = jax.lax.scan(
        body, (state, zero, zero, zero), None, length=params.n_steps
    )
    recorded = None
    if paths:
        recorded = {
            name: jnp.concatenate([start[None], records[name]])
            for name, start in (("inventory", state.inventory), ("mid", state.mid))
        }
        recorded.update({name: records[name] for name in ("shares", "price", "reward")})
    return ExecutionRollout(
        reward=final.pnl - penalty,
        pnl=final.pnl,
        running_penalty=penalty,
        terminal_inventory=final.inventory,
        max_drawdown=drawdown,
        paths=recorded,
    )


@functools.partial(jax.jit, static_argnames=("n_episodes", "paths"))
def _simulate(params, policy, key, n_episodes: int, paths: bool) -> ExecutionRollout:
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n_episodes, dtype=jnp.uint32))
    return jax.vmap(lambda k: _episode(params, policy, k, paths))(keys)


def simulate_execution(
    params: ExecutionParams,
    policy: Callable[[ExecutionState, ExecutionParams], jax.Array],
    key: jax.Array,
    n_episodes: int,
    paths: bool = False,
) -> ExecutionRollout:
    """Monte Carlo of ``policy`` over ``n_episodes`` episodes (``lax.scan`` over steps,
    ``vmap`` over episodes, jitted once per shape).

    Episode ``e`` uses the key ``fold_in(key, e)`` (reset's episode key: its noise is
    ``Z_t = normal(fold_in(fold_in(key, e), t))``), so for the same ``key`` every policy sees
    the same noise (common random numbers), episode ``e``'s path does not depend on
    ``n_episodes``, and ``ExecutionEnv`` reset with that key produces the same path.

    Args:
        params: the problem (validated here). policy: ``(state, params) -> shares`` to sell,
            a pytree (the policy classes here are) or a function (compiled as code).
        key: a PRNG key. n_episodes: episodes (>= 1). paths: also return per-step paths.
    """
    params.validate()
    if isinstance(n_episodes, bool) or not isinstance(n_episodes, int) or n_episodes < 1:
        raise ValueError(f"n_episodes = {n_episodes!r}; allowed: an integer >= 1")
    if jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(policy)):
        policy = jax.tree_util.Partial(policy)
    return _simulate(params, policy, key, n_episodes, paths)


def expected_reward(
    params: ExecutionParams, policy: Callable[[ExecutionState, ExecutionParams], jax.Array]
) -> jax.Array:
    """The exact expected episode reward of a policy of ``(t, q)`` only (not of the mid).

    For such a policy the inventory path is deterministic and the reward is linear in the
    noise with a deterministic coefficient (``q_{i+1} sigma sqrt(dt) Z_i``), so the expected
    reward is the reward of the noise-free episode: one episode at ``sigma = 0``.
    """
    quiet = params.replace(sigma=0.0)
    return simulate_execution(quiet, policy, jax.random.key(0), 1).reward[0]


# ----------------------------------------------------------------------------------------------
# The environment


class ExecutionEnv(environment.Environment[ExecutionState, ExecutionParams]):
    """The execution problem as a gymnax 1.0 environment (six-value ``step``, auto-reset).

    State: ``ExecutionState``; ``step_env`` calls ``jaxmm.execution.step`` (the one definition
    of the dynamics). The step's noise comes from the episode key that ``reset_env`` stores
    (``normal(fold_in(key, t))``), so the ``key`` argument of ``step_env`` is unused and an
    episode is a pure function of its reset key and the actions.

    Observation ``f32[3]`` (``FEATURES``, each O(1)): ``inventory``: ``q_t / Q0`` in
    (-inf, inf) (in [0, 1] under this action space); ``time_left``: ``(n_steps - t) / n_steps``
    in [0, 1]; ``mid_change``: ``(S_t - S0) / (sigma sqrt(T))`` (``S_t - S0`` when
    ``sigma = 0``) in (-inf, inf).

    Action ``f32[1]``, Box ``[0, 1]``: the fraction of the remaining inventory to sell this
    step, ``v = clip(action, 0, 1) q_t``; values outside are clipped silently. The exact
    discrete optimum (``riccati``) sells a fraction in ``(0, 1]``, so it is one of the
    environment's policies. Reward: the step reward ``r_t`` of the module docstring. The end of
    the session is a termination (``terminated`` at ``t = n_steps``); ``truncated`` is False.
    """

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(type(self))

    def __repr__(self) -> str:
        return "ExecutionEnv()"

    @property
    def default_params(self) -> ExecutionParams:
        return ExecutionParams()

    @property
    def name(self) -> str:
        return "Execution"

    @property
    def num_actions(self) -> int:
        """Dimension of the (continuous) action."""
        return 1

    @property
    def feature_names(self) -> tuple[str, ...]:
        return FEATURES

    def observation(self, state: ExecutionState, params: ExecutionParams) -> jax.Array:
        """``f32[3]``: inventory, time left, mid change (class docstring)."""
        scale = params.sigma * jnp.sqrt(params.T)
        scale = jnp.where(scale > 0, scale, 1.0)
        return jnp.stack(
            [
                jnp.asarray(state.inventory / params.inventory, jnp.float32),
                jnp.asarray((params.n_steps - state.t) / params.n_steps, jnp.float32),
                jnp.asarray((state.mid - params.S0) / scale, jnp.float32),
            ]
        )

    def shares(self, action: jax.Array, state: ExecutionState) -> jax.Array:
        """Shares sold for ``action`` (``f[1]``): ``clip(action[0], 0, 1) q_t``."""
        dtype = state.inventory.dtype
        fraction = jnp.clip(jnp.asarray(action, dtype).reshape(-1)[0], 0.0, 1.0)
        return fraction * state.inventory

    def step_env(
        self, key: jax.Array, state: ExecutionState, action: jax.Array, params: ExecutionParams
    ) -> tuple[jax.Array, ExecutionState, jax.Array, jax.Array, dict[str, jax.Array]]:
        """One step without auto-reset. ``info``: the step's ``shares``, ``price``, ``pnl``,
        ``running_penalty``, ``terminal_penalty`` and ``discount`` (0 at the end)."""
        next_state, info = step(state, self.shares(action, state), params)
        terminated = self.is_terminated(next_state, params)
        extras = {
            "shares": info.shares,
            "price": info.price,
            "pnl": info.pnl,
            "running_penalty": info.running_penalty,
            "terminal_penalty": info.terminal_penalty,
            "discount": 1.0 - terminated.astype(jnp.float32),
        }
        obs = self.observation(next_state, params)
        return obs, next_state, info.reward, terminated, extras

    def reset_env(
        self, key: jax.Array, params: ExecutionParams
    ) -> tuple[jax.Array, ExecutionState]:
        """``reset(key, params)``: the key becomes the episode's noise key."""
        state = reset(key, params)
        return self.observation(state, params), state

    def is_terminated(self, state: ExecutionState, params: ExecutionParams) -> jax.Array:
        """True at the end of the session (``t == n_steps``)."""
        return state.t >= params.n_steps

    def is_truncated(self, state: ExecutionState, params: ExecutionParams) -> jax.Array:
        """Always False: the end of the session is a termination."""
        return jnp.zeros((), jnp.bool_)

    def action_space(self, params: ExecutionParams | None = None) -> spaces.Box:
        """``Box(f32[1])`` on ``[0, 1]``: the fraction of the inventory to sell."""
        return spaces.Box(low=0.0, high=1.0, shape=(1,), dtype=jnp.float32)

    def observation_space(self, params: ExecutionParams | None = None) -> spaces.Box:
        """``Box(f32[3])``: ``(-inf, inf) x [0, 1] x (-inf, inf)``."""
        low = np.array([-np.inf, 0.0, -np.inf], np.float32)
        high = np.array([np.inf, 1.0, np.inf], np.float32)
        return spaces.Box(low=low, high=high, shape=(3,), dtype=jnp.float32)

    def as_policy(
        self, action_fn: Callable[[jax.Array], jax.Array], params: ExecutionParams | None = None
    ) -> ExecutionEnvPolicy:
        """An execution policy ``(state, params) -> shares`` for ``simulate_execution`` from an
        action function ``f32[3] -> f[1]`` (deterministic; for an agent: the mean action).
        ``params`` is accepted for symmetry with ``MarketMakingEnv.as_policy`` and unused: the
        policy reads the problem ``simulate_execution`` passes."""
        if jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(action_fn)):
            action_fn = jax.tree_util.Partial(action_fn)
        return ExecutionEnvPolicy(action_fn=action_fn, env=self)


@struct.dataclass
class ExecutionEnvPolicy:
    """An action function run as an execution policy; built by ``ExecutionEnv.as_policy``."""

    action_fn: Any
    env: ExecutionEnv = struct.field(pytree_node=False)

    def __call__(self, state: ExecutionState, params: ExecutionParams) -> jax.Array:
        action = self.action_fn(self.env.observation(state, params))
        return self.env.shares(action, state)
