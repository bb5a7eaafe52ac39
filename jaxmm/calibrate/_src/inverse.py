"""Inverse calibration: ``(A, k, sigma)`` by gradients through the relaxed simulation.

Simulated method of moments: ``DepthCycle`` (a design policy cycling through a depth grid) runs
in the relaxed market; ``simulated_moments`` measures its fill rate by depth (``[m]``, fills per
time unit and side) and the increment variance (``sigma^2``, price^2 per time unit);
``fit_market_by_gradient`` matches them to ``MomentTargets`` (observed values with standard
errors, from ``moment_targets``) and returns a ``GradientFit``.
"""

from __future__ import annotations

import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jaxmm import validation
from jaxmm.calibrate._src.records import ExceedanceRates, VolatilityEstimate
from jaxmm.calibrate._src.relaxed import relaxed_rollout
from jaxmm.market import MarketState, Quotes, float_dtype, stream_key
from jaxmm.params import MarketParams


@struct.dataclass
class DepthCycle:
    """A design policy for calibration: both sides quote ``depths[t % m]`` at step ``t``."""

    depths: jax.Array

    def __call__(self, obs: MarketState, params: MarketParams) -> Quotes:
        depth = jnp.asarray(self.depths, obs.mid.dtype)[obs.t % self.depths.shape[0]]
        return Quotes(bid_depth=depth, ask_depth=depth)

    def rates(self, rollout: Any, dt: float) -> ExceedanceRates:
        """The fill rate at each depth of this design from ``simulate(market, self, key, n,
        paths=True)``: fills of both sides over the ``2 n`` quotes posted at that depth, per
        time unit (``frequency / dt``), with the binomial standard error
        ``sqrt(f (1 - f) / trials) / dt``; ``exposure`` is ``trials * dt``."""
        if rollout.paths is None:
            raise ValueError("DepthCycle.rates needs a rollout simulated with paths=True")
        depths = np.asarray(self.depths, np.float64)
        fills = np.asarray(rollout.paths.bid_fill + rollout.paths.ask_fill, np.float64)
        slot = np.arange(fills.shape[1]) % depths.size
        filled = np.array([fills[:, slot == i].sum() for i in range(depths.size)])
        trials = np.array([2.0 * fills.shape[0] * (slot == i).sum() for i in range(depths.size)])
        frequency = filled / trials
        return ExceedanceRates(
            depths,
            frequency / dt,
            np.sqrt(frequency * (1 - frequency) / trials) / dt,
            filled,
            trials * dt,
        )


@struct.dataclass
class MomentTargets:
    """Observed statistics for inverse calibration, with their standard errors.

    Attributes:
        depths: ``f64[m]`` depth grid, price units.
        fill_rate: ``f64[m]`` fills per time unit of one quote at each depth (per side).
        fill_rate_stderr: ``f64[m]``.
        variance: variance of mid increments per time unit, ``sigma^2`` (price^2 / time unit).
        variance_stderr: its standard error.
    """

    depths: np.ndarray
    fill_rate: np.ndarray
    fill_rate_stderr: np.ndarray
    variance: float
    variance_stderr: float


def moment_targets(rates: ExceedanceRates, volatility: VolatilityEstimate) -> MomentTargets:
    """Targets from empirical fill rates by depth and a realised volatility (delta method for
    ``sigma^2``: ``se = 2 sigma se(sigma)``)."""
    if (np.asarray(rates.stderr) <= 0).any() or not volatility.stderr > 0:
        raise ValueError("every target needs a positive standard error (weights of the fit)")
    return MomentTargets(
        depths=np.asarray(rates.depths, np.float64),
        fill_rate=np.asarray(rates.rate, np.float64),
        fill_rate_stderr=np.asarray(rates.stderr, np.float64),
        variance=volatility.sigma**2,
        variance_stderr=2.0 * volatility.sigma * volatility.stderr,
    )


def simulated_moments(
    params: MarketParams,
    depths: jax.Array,
    stream: jax.Array,
    episodes: jax.Array,
    temperature: jax.Array = 0.0,
    expected_fills: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """Fill rate by depth (``[m]``, per time unit and side) and increment variance per time unit,
    measured on a relaxed simulation of the ``DepthCycle(depths)`` design. Differentiable in
    ``params``' leaves. ``params.n_steps`` should be a multiple of ``m`` (equal time per depth).
    """
    run = relaxed_rollout(params, DepthCycle(depths), stream, episodes, temperature, expected_fills)
    m = depths.shape[0]
    slot = jnp.arange(params.n_steps) % m
    fills = (run.bid_fill + run.ask_fill).sum(axis=0)  # [N]: both sides, all episodes
    per_depth = jax.ops.segment_sum(fills, slot, num_segments=m)
    trials = 2.0 * episodes.shape[0] * jax.ops.segment_sum(jnp.ones_like(fills), slot, m)
    variance = jnp.mean(run.mid_change**2) / params.dt
    return per_depth / (trials * params.dt), variance


@struct.dataclass
class GradientFit:
    """Inverse calibration of ``(A, k, sigma)`` by gradients through the simulation.

    Attributes:
        A, k, sigma: the fitted market (per time unit, per price unit, price per sqrt(time)).
        loss: final weighted squared distance of the simulated statistics from the targets
            (a chi-square-like sum: about ``m + 1 - 3`` at a good fit of a correct model).
        trajectory: ``f64[n_iterations + 1, 3]`` of ``(A, k, sigma)``, starting point first.
        losses: ``f64[n_iterations]``.
        seconds: wall-clock time (compilation included).
    """

    A: float
    k: float
    sigma: float
    loss: float
    trajectory: np.ndarray
    losses: np.ndarray
    seconds: float


def fit_market_by_gradient(
    targets: MomentTargets,
    params: MarketParams,
    key: jax.Array,
    *,
    n_episodes: int = 64,
    n_iterations: int = 400,
    learning_rate: float = 0.05,
    expected_fills: bool = True,
    temperature: float = 0.1,
) -> GradientFit:
    """Fit the market's ``(A, k, sigma)`` so that simulated statistics match observed ones.

    Simulated method of moments: the ``DepthCycle(targets.depths)`` design runs in the relaxed
    market ``params.replace(A=..., k=..., sigma=...)`` (its ``dt``, ``n_steps``, fill and price
    models are kept) on a fixed set of ``n_episodes`` (common random numbers across iterations,
    so the loss is a smooth deterministic function), and Adam on ``(log A, log k, log sigma)``
    minimises ``sum ((simulated - observed) / stderr)^2`` over the fill rates by depth and the
    increment variance. ``expected_fills=True`` uses each step's expected fill (unbiased, no
    noise); ``False`` uses relaxed Bernoulli fills at ``temperature`` (biased by
    O(temperature^2)). The start is a log-linear least-squares fit to the rates.

    Compare with ``fit_intensity`` and ``realized_volatility``: on data from the model both are
    consistent; the likelihood weights the data optimally.
    """
    params.validate()
    n_episodes = validation.integer("n_episodes", n_episodes, 1, "an integer >= 1")
    n_iterations = validation.integer("n_iterations", n_iterations, 1, "an integer >= 1")
    learning_rate = validation.positive("learning_rate", learning_rate)
    depths = np.asarray(targets.depths, np.float64)
    rates = np.asarray(targets.fill_rate, np.float64)
    if depths.ndim != 1 or depths.size < 2 or (rates <= 0).any():
        raise ValueError("targets need two depths or more and positive fill rates")
    if params.n_steps % depths.size:
        raise ValueError(
            f"params.n_steps = {params.n_steps} must be a multiple of the {depths.size} depths"
        )
    start_time = time.perf_counter()
    slope, intercept = np.polyfit(depths, np.log(rates), 1)
    start = np.log([math.exp(intercept), max(-slope, 1e-3), math.sqrt(targets.variance)])
    dtype = float_dtype()
    stream = stream_key(key)
    episodes = jnp.arange(n_episodes, dtype=jnp.uint32)
    grid = jnp.asarray(depths, dtype)
    observed = jnp.asarray(rates, dtype)
    weights = jnp.asarray(1.0 / np.asarray(targets.fill_rate_stderr, np.float64), dtype)

    def loss(log_market: jax.Array) -> jax.Array:
        A, k, sigma = jnp.exp(log_market)
        market = params.replace(A=A, k=k, sigma=sigma)
        rate, variance = simulated_moments(
            market, grid, stream, episodes, temperature, expected_fills
        )
        misfit = jnp.sum(((rate - observed) * weights) ** 2)
        return misfit + ((variance - targets.variance) / targets.variance_stderr) ** 2

    optimizer = optax.adam(learning_rate)

    @jax.jit
    def run(point):
        def update(carry, _):
            point, state = carry
            value, gradient = jax.value_and_grad(loss)(point)
            updates, state = optimizer.update(gradient, state, point)
            point = optax.apply_updates(point, updates)
            return (point, state), (point, value)

        (point, _), (trail, values) = jax.lax.scan(
            update, (point, optimizer.init(point)), None, length=n_iterations
        )
        return point, trail, values, loss(point)

    point, trail, values, final_loss = run(jnp.asarray(start, dtype))
    trajectory = np.exp(np.vstack([start[None], np.asarray(trail, np.float64)]))
    A, k, sigma = np.exp(np.asarray(point, np.float64))
    return GradientFit(
        A=float(A),
        k=float(k),
        sigma=float(sigma),
        loss=float(final_loss),
        trajectory=trajectory,
        losses=np.asarray(values, np.float64),
        seconds=time.perf_counter() - start_time,
    )
