"""Risk-adjusted objectives of terminal PnL and the gradient tuning of Avellaneda-Stoikov.

- ``objective_value`` (differentiable, jit-able) and ``objective_estimate`` (value and standard
  error, float64, optionally paired against a baseline on the same episodes) of terminal PnL
  ``[n_episodes]`` in price units, for ``OBJECTIVES``: ``"mean_variance"`` ``mean - (a/2) Var``,
  ``"sharpe"`` ``mean / std``, ``"cara"`` ``-(1/a) log mean exp(-a PnL)``. ``a`` is
  ``risk_aversion``, per price unit, the same number in both: mean-variance is the CARA
  certainty equivalent to second order (as in ``jaxmm.multi_asset``, ``E - (gamma/2) Var``).
- ``tune_as``: the A-S ``(gamma, kappa)`` maximising an objective by Adam on gradients through
  ``relaxed_rollout``; returns a ``TuneResult``.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jaxmm import validation
from jaxmm.calibrate._src.relaxed import relaxed_rollout
from jaxmm.market import float_dtype, stream_key
from jaxmm.params import MarketParams
from jaxmm.policies import AvellanedaStoikov

OBJECTIVES = ("mean_variance", "sharpe", "cara")


def _objective_terms(
    pnl: jax.Array, objective: str, risk_aversion: float
) -> tuple[jax.Array, jax.Array]:
    """The objective of terminal PnL ``[n]`` and each episode's influence on it (``[n]``)."""
    n = pnl.shape[0]
    mean = pnl.mean()
    centred = pnl - mean
    variance = jnp.sum(centred**2) / (n - 1)
    if objective == "mean_variance":
        half = 0.5 * risk_aversion  # mean - (a/2) Var: CARA to second order
        value = mean - half * variance
        influence = centred - half * (centred**2 - variance)
    elif objective == "sharpe":
        std = jnp.sqrt(variance)
        value = mean / std
        influence = centred / std - mean / (2.0 * std**3) * (centred**2 - variance)
    else:
        exponent = -risk_aversion * pnl
        peak = jax.lax.stop_gradient(exponent.max())
        weights = jnp.exp(exponent - peak)
        mean_weight = weights.mean()
        value = -(jnp.log(mean_weight) + peak) / risk_aversion
        influence = -(weights - mean_weight) / (mean_weight * risk_aversion)
    return value, influence


def objective_value(pnl: jax.Array, objective: str, risk_aversion: float = 0.0) -> jax.Array:
    """Risk-adjusted objective of terminal PnL ``[n_episodes]`` (differentiable, jit-able).

    - ``"mean_variance"``: ``mean - (a/2) variance`` with ``a = risk_aversion`` (per price unit):
      the second-order (normal) form of the CARA certainty equivalent, the convention of
      ``jaxmm.multi_asset`` (``E - (gamma/2) Var``);
    - ``"sharpe"``: per-episode Sharpe ``mean / std`` across episodes (``risk_aversion`` unused);
    - ``"cara"``: certainty equivalent ``-(1/a) log mean exp(-a PnL)`` with ``a = risk_aversion``.

    Variances use ``n - 1``.
    """
    return _objective_terms(pnl, objective, risk_aversion)[0]


def objective_estimate(
    pnl: Any, objective: str, risk_aversion: float = 0.0, baseline: Any = None
) -> tuple[float, float]:
    """The objective of terminal PnL and its standard error (influence functions, float64).

    With ``baseline`` (PnL of another strategy on the same episodes: common random numbers)
    returns the difference ``objective(pnl) - objective(baseline)`` and its paired standard
    error, far smaller than either one's.
    """
    _check_objective(objective, risk_aversion)
    with jax.enable_x64(True):
        pnl = jnp.asarray(np.asarray(pnl, np.float64))
        value, influence = _objective_terms(pnl, objective, risk_aversion)
        if baseline is not None:
            other = jnp.asarray(np.asarray(baseline, np.float64))
            if other.shape != pnl.shape:
                raise ValueError("baseline must have the shape of pnl (the same episodes)")
            base_value, base_influence = _objective_terms(other, objective, risk_aversion)
            value, influence = value - base_value, influence - base_influence
        n = pnl.shape[0]
        return float(value), float(jnp.std(influence, ddof=1) / math.sqrt(n))


def _check_objective(objective: str, risk_aversion: float) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective = {objective!r}; allowed: one of {OBJECTIVES}")
    if objective != "sharpe" and not (math.isfinite(risk_aversion) and risk_aversion > 0):
        raise ValueError(f"risk_aversion = {risk_aversion!r}; allowed: > 0 for {objective!r}")


@struct.dataclass
class TuneResult:
    """Gradient tuning of the A-S ``(gamma, kappa)``.

    Attributes:
        gamma, kappa: the tuned point (geometric mean of the last ``average_fraction`` of the
            iterates: Polyak averaging of a stochastic-gradient run).
        gammas, kappas: ``f64[n_iterations + 1]`` the trajectory, starting point first.
        relaxed_objective: ``f64[n_iterations]`` the relaxed objective of each iteration's batch
            (noisy: fresh episodes every iteration).
        objective, risk_aversion, temperature, n_episodes, learning_rate: the settings.
        seconds: wall-clock time of the optimisation (compilation included).
    """

    gamma: float
    kappa: float
    gammas: np.ndarray
    kappas: np.ndarray
    relaxed_objective: np.ndarray
    risk_aversion: float
    temperature: float
    n_episodes: int
    learning_rate: float
    seconds: float
    objective: str = struct.field(pytree_node=False, default="mean_variance")


def tune_as(
    params: MarketParams,
    key: jax.Array,
    *,
    objective: str = "mean_variance",
    risk_aversion: float = 0.1,
    gamma: float = 0.1,
    kappa: float | None = None,
    n_iterations: int = 300,
    n_episodes: int = 2048,
    learning_rate: float = 0.05,
    temperature: float = 0.1,
    average_fraction: float = 0.25,
    chunk: int = 50,
    progress: Callable[[int, float, float, float], None] | None = None,
) -> TuneResult:
    """Tune the Avellaneda-Stoikov ``(gamma, kappa)`` by gradients through the relaxed market.

    Maximises ``objective_value`` of terminal PnL (``"mean_variance"``, ``"sharpe"`` or
    ``"cara"``) with Adam on ``(log gamma, log kappa)``. Every iteration simulates a fresh batch
    of ``n_episodes`` with ``relaxed_rollout`` (relaxed Bernoulli fills at ``temperature``, the
    mid's noise reparameterised) and follows its gradient; the answer averages the last iterates.
    The relaxation biases the objective by O(temperature^2): measure the result on the exact
    simulator (``objective_estimate`` of ``simulate``), as ``experiments.calibration`` does.

    Args:
        params: the market (validated here). gamma, kappa: the starting point (kappa defaults to
            ``params.k``). risk_aversion: ``a`` of mean-variance (``mean - (a/2) Var``) and
            of CARA, per price unit.
        n_iterations, n_episodes, learning_rate, temperature: the optimisation settings.
        average_fraction: fraction of the final iterates averaged into the answer, in (0, 1].
        chunk: iterations per compiled chunk (one ``lax.scan``); ``progress(iteration, gamma,
            kappa, relaxed objective)`` is called after each chunk.
    """
    gamma, kappa, n_iterations, n_episodes, chunk, learning_rate, temperature = (
        _check_tune_inputs(
            params, objective, risk_aversion, gamma, kappa, n_iterations, n_episodes,
            learning_rate, temperature, average_fraction, chunk,
        )
    )  # fmt: skip
    start_time = time.perf_counter()
    stream = stream_key(key)
    optimizer = optax.adam(learning_rate)
    log_point = jnp.log(jnp.asarray([gamma, kappa], float_dtype()))
    opt_state = optimizer.init(log_point)
    run = _chunk_runner(
        params, stream, optimizer, objective, risk_aversion, temperature, n_episodes
    )
    points, values = _optimise(run, log_point, opt_state, n_iterations, chunk, progress)
    trajectory = np.exp(np.concatenate(points))
    tail = max(1, round(average_fraction * n_iterations))
    final = np.exp(np.log(trajectory[-tail:]).mean(axis=0))
    return TuneResult(
        gamma=float(final[0]),
        kappa=float(final[1]),
        gammas=trajectory[:, 0],
        kappas=trajectory[:, 1],
        relaxed_objective=np.concatenate(values),
        risk_aversion=float(risk_aversion),
        temperature=temperature,
        n_episodes=n_episodes,
        learning_rate=learning_rate,
        seconds=time.perf_counter() - start_time,
        objective=objective,
    )


def _check_tune_inputs(
    params, objective, risk_aversion, gamma, kappa, n_iterations, n_episodes, learning_rate,
    temperature, average_fraction, chunk,
) -> tuple:  # fmt: skip
    """Validate ``tune_as``'s inputs (in this order), before anything is compiled: ``(gamma,
    kappa, n_iterations, n_episodes, chunk, learning_rate, temperature)``, normalised
    (``kappa`` defaults to ``params.k``); ValueError on the first bad one."""
    params.validate()
    _check_objective(objective, risk_aversion if objective != "sharpe" else 1.0)
    gamma = validation.positive("gamma", gamma)
    kappa = validation.positive("kappa", float(params.k) if kappa is None else kappa)
    n_iterations = validation.integer("n_iterations", n_iterations, 1, "an integer >= 1")
    n_episodes = validation.integer("n_episodes", n_episodes, 2, "an integer >= 2")
    chunk = validation.integer("chunk", chunk, 1, "an integer >= 1")
    learning_rate = validation.positive("learning_rate", learning_rate)
    temperature = validation.positive("temperature", temperature)
    if not 0 < average_fraction <= 1:
        raise ValueError(f"average_fraction = {average_fraction!r}; allowed: in (0, 1]")
    if n_iterations * n_episodes >= 2**32:
        raise ValueError("n_iterations * n_episodes must be < 2**32 (episode counters)")
    return gamma, kappa, n_iterations, n_episodes, chunk, learning_rate, temperature


def _chunk_runner(
    params: MarketParams,
    stream: jax.Array,
    optimizer: optax.GradientTransformation,
    objective: str,
    risk_aversion: float,
    temperature: float,
    n_episodes: int,
) -> Callable:
    """The compiled chunk of Adam iterations: ``run(point, opt_state, first, length) ->
    ((point, opt_state), (points [length, 2], relaxed objectives [length]))``.

    Iteration ``i`` (``first, first + 1, ...``) simulates episodes ``i * n_episodes ..`` of
    ``stream`` with ``relaxed_rollout`` and takes one Adam step on the negated objective's
    gradient in ``(log gamma, log kappa)``; ``length`` is static (one ``lax.scan``).
    """
    batch = jnp.arange(n_episodes, dtype=jnp.uint32)

    def loss(point: jax.Array, episodes: jax.Array) -> jax.Array:
        policy = AvellanedaStoikov(gamma=jnp.exp(point[0]), k=jnp.exp(point[1]))
        pnl = relaxed_rollout(params, policy, stream, episodes, temperature).pnl
        return -objective_value(pnl, objective, risk_aversion)

    @functools.partial(jax.jit, static_argnames="length")
    def run(point, opt_state, first, length):
        def update(carry, iteration):
            point, opt_state = carry
            episodes = batch + (iteration * n_episodes).astype(jnp.uint32)
            value, gradient = jax.value_and_grad(loss)(point, episodes)
            updates, opt_state = optimizer.update(gradient, opt_state, point)
            point = optax.apply_updates(point, updates)
            return (point, opt_state), (point, -value)

        iterations = first + jnp.arange(length, dtype=jnp.uint32)
        return jax.lax.scan(update, (point, opt_state), iterations)

    return run


def _optimise(
    run: Callable,
    log_point: jax.Array,
    opt_state: Any,
    n_iterations: int,
    chunk: int,
    progress: Callable[[int, float, float, float], None] | None,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Run ``n_iterations`` in chunks of at most ``chunk`` (calling ``progress`` after each):
    ``(points, values)``, lists of ``f64`` blocks of the log-point trajectory (starting point
    first) and of the relaxed objectives."""
    points, values = [np.asarray(log_point, np.float64)[None]], []
    done = 0
    while done < n_iterations:
        length = min(chunk, n_iterations - done)
        (log_point, opt_state), (trail, relaxed) = run(
            log_point, opt_state, jnp.uint32(done), length
        )
        points.append(np.asarray(trail, np.float64))
        values.append(np.asarray(relaxed, np.float64))
        done += length
        if progress is not None:
            g, k = np.exp(points[-1][-1])
            progress(done, float(g), float(k), float(values[-1][-1]))
    return points, values
