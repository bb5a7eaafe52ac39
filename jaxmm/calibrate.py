"""Calibration: which ``A``, ``k``, ``sigma``, ``gamma`` to use, with error bars.

- ``fit_intensity``: maximum likelihood for ``(A, k)`` in ``lambda(delta) = A exp(-k delta)`` from
  quote/fill records, with observed-information and cluster-robust standard errors and
  profile-likelihood intervals; ``intensity_loglik`` for likelihood surfaces.
- Records: ``records_from_paths`` (simulator output), ``tape_records`` (a trade tape: for each
  time block and depth, the exposure and the orders that would have filled a quote there; see
  ``jaxmm.lobster`` for LOBSTER files), ``exceedance_rates``, ``reach_goodness_of_fit``.
- Volatility: ``realized_volatility`` with its standard error, ``sample_previous_tick``.
- A differentiable relaxation of the market step (``relaxed_fill``, ``relaxed_step_with_noise``,
  ``relaxed_rollout``) for gradients through the simulation: ``tune_as`` chooses the A-S
  ``(gamma, kappa)`` for a risk-adjusted objective (``objective_value``, measured exactly with
  ``objective_estimate``), and ``fit_market_by_gradient`` fits ``(A, k, sigma)`` to observed
  statistics (``MomentTargets``).

Units (those of ``jaxmm.params``): time in session units unless the caller chooses another time
unit (a fit reports ``A`` per unit of whatever time ``exposure`` is measured in); depths and
prices in price units; ``k`` per price unit; ``sigma`` price units per sqrt(time unit).

Intensity records. Record ``i`` says: a quote at depth ``depths[i]`` was exposed for
``exposure[i]`` time units and was filled ``fills[i]`` times. The likelihood is

- ``fill_model="poisson"``: ``fills ~ Poisson(A exp(-k delta) exposure)`` -- continuous-time
  quoting, and the tape records of ``tape_records``;
- ``"linear"`` / ``"exponential"``: the simulator's per-step conventions. The record covers
  ``exposure / dt`` steps of length ``dt`` (a whole number; one step per record is the natural
  layout of ``records_from_paths``), in each of which the quote fills at most once with
  probability ``min(1, A exp(-k delta) dt)`` or ``1 - exp(-A exp(-k delta) dt)``:
  ``fills ~ Binomial(exposure / dt, p)``.

In all three the log-likelihood is concave in ``(log A, k)``, so Newton's method with a line
search finds the unique maximum whenever one exists. (Under ``"linear"``, records whose fitted
``A exp(-k delta) dt`` reaches the cap 1 make the likelihood kinked there; the standard errors
then describe the smooth part only -- keep quotes where ``lambda dt < 1``.)
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from statistics import NormalDist
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jaxmm.market import (
    MarketState,
    Noise,
    Quotes,
    StepInfo,
    acting_quotes,
    apply_fills,
    counter_noise,
    fill_probability_numpy,
    float_dtype,
    limits_open,
    quote_fill_probabilities,
    reset,
    stream_key,
)
from jaxmm.params import MarketParams
from jaxmm.policies import AvellanedaStoikov

INTENSITY_MODELS = ("poisson", "linear", "exponential")
_NORMAL = NormalDist()


class FillRecords(NamedTuple):
    """Quote-exposure records, ``f64[n]`` each: ``fit_intensity(*records, ...)`` fits them.

    Attributes:
        depths: depth of the quote from the mid, price units.
        exposure: time the quote was exposed, time units.
        fills: number of fills in that time.
        clusters: ``i64[n]`` label of the group of dependent records (records sharing trades or
            a time block), or None when the records are independent.
    """

    depths: np.ndarray
    exposure: np.ndarray
    fills: np.ndarray
    clusters: np.ndarray | None = None


@struct.dataclass
class IntensityFit:
    """Maximum-likelihood fit of ``lambda(delta) = A exp(-k delta)``.

    Attributes:
        A: arrivals per time unit at depth 0 (the time unit of ``exposure``).
        k: decay per price unit.
        stderr_A, stderr_k: standard errors from the observed Fisher information.
        cov: ``f64[2, 2]`` covariance of ``(A, k)`` (inverse observed information, delta method
            from ``(log A, k)``).
        loglik: maximised log-likelihood (with its constants: ``log fills!``, binomial terms).
        ci_A, ci_k: profile-likelihood intervals at ``level`` (``+-inf`` where the profile does
            not fall far enough: the data do not bound the parameter on that side).
        level: confidence level of the intervals.
        n_records, n_fills, exposure: the data used (records with zero exposure are dropped).
        cov_robust: ``f64[2, 2]`` cluster-robust (sandwich) covariance when clusters were given,
            else None. Use it when records are not independent (tape records share trades).
        stderr_A_robust, stderr_k_robust: the corresponding standard errors (NaN without
            clusters).
        ci_A_robust, ci_k_robust: profile-likelihood intervals adjusted for the clustering
            (NaN without clusters): the profile deviance of each parameter is divided by the
            ratio of its robust to its nominal variance (the scalar-parameter adjustment of a
            composite likelihood, Chandler & Bate 2007), so they agree with the robust standard
            errors to first order while keeping the likelihood's shape.
        n_clusters: number of clusters (0 without).
        fill_model: ``"poisson"``, ``"linear"`` or ``"exponential"``.
        dt: step length of the Bernoulli models, time units (NaN for Poisson).
    """

    A: float
    k: float
    stderr_A: float
    stderr_k: float
    cov: np.ndarray
    loglik: float
    ci_A: tuple[float, float]
    ci_k: tuple[float, float]
    level: float
    n_records: int
    n_fills: float
    exposure: float
    cov_robust: np.ndarray | None
    stderr_A_robust: float
    stderr_k_robust: float
    ci_A_robust: tuple[float, float]
    ci_k_robust: tuple[float, float]
    n_clusters: int
    fill_model: str = struct.field(pytree_node=False, default="poisson")
    dt: float = math.nan

    def rescale_time(self, ratio: float) -> IntensityFit:
        """The same fit with the time unit multiplied by ``ratio`` (``A`` becomes ``A * ratio``).

        Example: a fit in sessions of 23,400 s, ``fit.rescale_time(1 / 23_400)``, gives ``A``
        per second. ``k``, the log-likelihood and the ``k`` interval do not change.
        """
        scale = np.diag([ratio, 1.0])
        robust = None if self.cov_robust is None else scale @ self.cov_robust @ scale
        return self.replace(
            A=self.A * ratio,
            stderr_A=self.stderr_A * ratio,
            cov=scale @ self.cov @ scale,
            ci_A=(self.ci_A[0] * ratio, self.ci_A[1] * ratio),
            exposure=self.exposure / ratio,
            cov_robust=robust,
            stderr_A_robust=self.stderr_A_robust * ratio,
            ci_A_robust=(self.ci_A_robust[0] * ratio, self.ci_A_robust[1] * ratio),
            dt=self.dt / ratio,
        )


def _as_array(name: str, value: Any) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be numeric: {error}") from None
    if np.isnan(array).any():
        raise ValueError(f"{name} contains NaN at index {int(np.flatnonzero(np.isnan(array))[0])}")
    return array


def _log_factorial(counts: np.ndarray) -> np.ndarray:
    """``log(n!)`` of whole numbers, elementwise (one ``lgamma`` per distinct value)."""
    values, index = np.unique(counts, return_inverse=True)
    return np.array([math.lgamma(v + 1.0) for v in values])[index.reshape(counts.shape)]


class _Records(NamedTuple):
    depths: np.ndarray
    exposure: np.ndarray
    fills: np.ndarray
    trials: np.ndarray  # steps per record (Bernoulli models); exposure (Poisson)
    log_scale: np.ndarray  # log of what multiplies A exp(-k delta): exposure or dt
    log_const: float  # the log-likelihood's parameter-free part (log n!, binomial terms)
    clusters: np.ndarray | None


def _validate_records(
    depths: Any, exposure: Any, fills: Any, clusters: Any, fill_model: str, dt: Any
) -> _Records:
    """Check intensity records, drop those with zero exposure; ``ValueError`` naming the field."""
    if fill_model not in INTENSITY_MODELS:
        raise ValueError(f"fill_model = {fill_model!r}; allowed: one of {INTENSITY_MODELS}")
    depths = _as_array("depths", depths)
    exposure = _as_array("exposure", exposure)
    fills = _as_array("fills", fills)
    if depths.ndim != 1 or depths.size == 0:
        raise ValueError(f"depths must be a non-empty 1-D array, got shape {depths.shape}")
    # one value per record, or one scalar for all: no other broadcasting (a length-1 array
    # would silently pair every record with the first exposure or count)
    if any(a.ndim != 0 and a.shape != depths.shape for a in (exposure, fills)):
        raise ValueError(
            f"exposure {exposure.shape} and fills {fills.shape} must match depths {depths.shape} "
            "(or be scalars)"
        )
    exposure = np.broadcast_to(exposure, depths.shape)
    fills = np.broadcast_to(fills, depths.shape)
    if not np.isfinite(depths).all():
        raise ValueError("depths must be finite (drop records of unquoted sides)")
    if not np.isfinite(exposure).all() or (exposure < 0).any():
        raise ValueError("exposure must be finite and >= 0 (time units)")
    if not np.isfinite(fills).all() or (fills < 0).any() or (fills != np.round(fills)).any():
        raise ValueError("fills must be whole numbers >= 0")
    if ((exposure == 0) & (fills > 0)).any():
        raise ValueError("fills > 0 on a record with zero exposure")
    if clusters is not None:
        clusters = np.asarray(clusters)
        if clusters.shape != depths.shape:
            raise ValueError(f"clusters has shape {clusters.shape}; expected {depths.shape}")
    if fill_model == "poisson":
        if dt is not None:
            raise ValueError("dt is only used by the Bernoulli fill models; pass dt=None")
        trials = exposure
    else:
        if dt is None or not np.isfinite(dt) or dt <= 0:
            raise ValueError(f"dt = {dt!r}; allowed: > 0 (step length, time units)")
        trials = exposure / dt
        if (np.abs(trials - np.round(trials)) > 1e-6 * np.maximum(trials, 1.0)).any():
            raise ValueError("exposure / dt must be a whole number of steps on every record")
        trials = np.round(trials)
        if (fills > trials).any():
            raise ValueError("fills exceed the number of steps (exposure / dt) on some record")
    keep = exposure > 0
    depths, exposure, fills, trials = depths[keep], exposure[keep], fills[keep], trials[keep]
    if clusters is not None:
        clusters = clusters[keep]
    if fills.sum() == 0:
        raise ValueError("no fills: A cannot be estimated (its maximum-likelihood value is 0)")
    if np.unique(depths).size < 2:
        raise ValueError(
            "all records are at a single depth: k is not identifiable (quote at two depths or more)"
        )
    filled = depths[fills > 0]
    if filled.max() == depths.min():
        raise ValueError(
            "every fill is at the smallest depth: the likelihood increases without bound in k"
        )
    if filled.min() == depths.max() and fill_model == "poisson":
        raise ValueError(
            "every fill is at the largest depth: the likelihood increases without bound in -k"
        )
    if clusters is not None and np.unique(clusters).size < 2:
        raise ValueError("clusters must contain at least two distinct labels")
    if fill_model == "poisson":
        log_scale = np.log(exposure)
        log_const = -_log_factorial(fills).sum()
    else:
        log_scale = np.full(depths.shape, math.log(dt))
        log_const = (
            _log_factorial(trials) - _log_factorial(fills) - _log_factorial(trials - fills)
        ).sum()
    return _Records(depths, exposure, fills, trials, log_scale, log_const, clusters)


def _terms(eta: np.ndarray, fills: np.ndarray, trials: np.ndarray, fill_model: str):
    """Per-record log-likelihood ``l`` and its first two derivatives in the log-intensity ``eta``.

    ``eta = log A - k delta + log(scale)``: ``exp(eta)`` is the expected number of arrivals over
    the exposure (Poisson) or in one step (Bernoulli models). Returns ``(l, l', l'')``, each
    ``f64[n]``; ``l = -inf`` where the parameters make the data impossible.
    """
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        x = np.exp(eta)
        if fill_model == "poisson":
            return fills * eta - x, fills - x, -x
        misses = trials - fills
        if fill_model == "linear":
            capped = x >= 1.0
            safe = np.where(capped, 0.5, x)
            value = fills * eta + misses * np.log1p(-safe)
            first = fills - misses * safe / (1.0 - safe)
            second = -misses * safe / (1.0 - safe) ** 2
            impossible = capped & (misses > 0)
            value = np.where(capped, np.where(impossible, -np.inf, 0.0), value)
            first = np.where(capped, 0.0, first)
            second = np.where(capped, 0.0, second)
            return value, first, second
        # exponential: p = 1 - exp(-x); d log p / d eta = x / (e^x - 1)
        moderate = x < 700.0
        safe = np.where(moderate, x, 1.0)
        ratio = np.where(moderate, safe / np.expm1(safe), 0.0)
        curvature = np.where(moderate, ratio * (1.0 - ratio * np.exp(safe)), 0.0)
        missed = np.where(misses > 0, misses * x, 0.0)
        value = np.where(fills > 0, fills * np.log(-np.expm1(-x)), 0.0) - missed
        return value, fills * ratio - missed, fills * curvature - missed


class _Likelihood:
    """The log-likelihood of validated records as a function of ``theta = (log A, k)``."""

    def __init__(self, records: _Records, fill_model: str):
        self.records = records
        self.fill_model = fill_model

    def pieces(self, log_a: float, k: float):
        r = self.records
        eta = log_a - k * r.depths + r.log_scale
        return _terms(eta, r.fills, r.trials, self.fill_model)

    def value(self, log_a: float, k: float) -> float:
        value, _, _ = self.pieces(log_a, k)
        total = float(np.sum(value))
        return total + self.records.log_const if np.isfinite(total) else -math.inf

    def derivatives(self, log_a: float, k: float) -> tuple[float, np.ndarray, np.ndarray]:
        value, first, second = self.pieces(log_a, k)
        d = self.records.depths
        total = float(np.sum(value))
        gradient = np.array([first.sum(), -(first * d).sum()])
        hessian = np.array(
            [[second.sum(), -(second * d).sum()], [-(second * d).sum(), (second * d * d).sum()]]
        )
        value = total + self.records.log_const if np.isfinite(total) else -math.inf
        return value, gradient, hessian

    def scores(self, log_a: float, k: float) -> np.ndarray:
        """Per-record score ``f64[n, 2]`` in ``(log A, k)``."""
        _, first, _ = self.pieces(log_a, k)
        return np.stack([first, -first * self.records.depths], axis=1)


def _newton(
    value_and_derivatives: Callable[[np.ndarray], tuple[float, np.ndarray, np.ndarray]],
    start: np.ndarray,
    max_iterations: int = 200,
) -> tuple[np.ndarray, float, bool]:
    """Maximise a concave function by Newton steps with a backtracking (Armijo) line search.

    ``value_and_derivatives(x)`` gives the value (``-inf`` outside the domain), the gradient and
    the Hessian, in any dimension. Returns ``(argmax, max, converged)``: converged when the
    Newton decrement ``g' H^-1 g`` (twice the predicted remaining gain) is below ``1e-12`` relative
    to the value.
    """
    x = np.asarray(start, np.float64)
    value, gradient, hessian = value_and_derivatives(x)
    if not math.isfinite(value):
        return x, value, False
    for _ in range(max_iterations):
        tolerance = 1e-12 * max(1.0, abs(value))
        try:
            direction = -np.linalg.solve(hessian, gradient)
            slope = float(gradient @ direction)
        except np.linalg.LinAlgError:
            slope = -1.0
        if not slope > 0:  # the Hessian is not negative definite here: steepest ascent
            direction, slope = gradient, float(gradient @ gradient)
        if slope < tolerance:
            return x, value, True
        step = 1.0
        for _ in range(80):
            candidate = x + step * direction
            new_value, new_gradient, new_hessian = value_and_derivatives(candidate)
            if math.isfinite(new_value) and new_value >= value + 1e-4 * step * slope:
                break
            step *= 0.5
        else:  # no step improves: the remaining gain is below rounding
            return x, value, slope < 1e4 * tolerance
        gain = new_value - value
        x, value, gradient, hessian = candidate, new_value, new_gradient, new_hessian
        if step == 1.0 and slope < 1e4 * tolerance:  # quadratic convergence: this step finished it
            return x, value, True
        if gain < 1e-3 * tolerance:  # stalled on a kink (the linear model's cap): value is final
            return x, value, True
    return x, value, False


def _starting_point(records: _Records) -> np.ndarray:
    """``(log A, k)`` at ``k = 0`` from the overall fill rate: feasible for every model."""
    rate = records.fills.sum() / records.exposure.sum()
    if records.fills.sum() == records.trials.sum():  # every step filled: stay below the cap
        rate *= 0.5
    return np.array([math.log(rate), 0.0])


def _separated(records: _Records, theta: np.ndarray, fill_model: str) -> bool:
    """Bernoulli records that are all filled or all missed, and a fit that reproduces every one
    of them: the likelihood approaches its supremum only at infinity (complete separation)."""
    if fill_model == "poisson":
        return False
    extreme = (records.fills == 0) | (records.fills == records.trials)
    if not extreme.all():
        return False
    intensity_dt = np.exp(theta[0] - theta[1] * records.depths + records.log_scale)
    prob = fill_probability_numpy(intensity_dt, fill_model)
    return bool(np.all(np.abs(records.fills - records.trials * prob) < 1e-6))


def _profile(
    likelihood: _Likelihood, fixed_index: int, fixed_value: float, start: float
) -> tuple[float, float, float]:
    """Maximise over one parameter of ``(log A, k)`` with the other held at ``fixed_value``.

    Returns ``(profile log-likelihood, argmax of the free parameter, d profile / d fixed)``, the
    last by the envelope theorem (the partial derivative at the inner maximum).
    """
    free_index = 1 - fixed_index

    def theta_at(free: float) -> np.ndarray:
        theta = np.empty(2)
        theta[fixed_index], theta[free_index] = fixed_value, free
        return theta

    def inner(free: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        value, gradient, hessian = likelihood.derivatives(*theta_at(free[0]))
        return value, gradient[[free_index]], hessian[[free_index]][:, [free_index]]

    free, value, _ = _newton(inner, np.array([start]))
    _, gradient, _ = likelihood.derivatives(*theta_at(free[0]))
    return value, float(free[0]), float(gradient[fixed_index])


def _profile_bound(
    likelihood: _Likelihood,
    index: int,
    theta_hat: np.ndarray,
    stderr: float,
    direction: float,
    drop: float,
    max_loglik: float,
) -> float:
    """Where the profile log-likelihood of parameter ``index`` of ``(log A, k)``, going from the
    MLE in ``direction`` (+1 or -1), falls to ``max_loglik - drop``; ``+-inf`` if it never does.

    The profile is concave: Newton steps on it (slope from the envelope theorem) started at the
    quadratic approximation's answer, with a bisection safeguard once the root is bracketed.
    """
    target = max_loglik - drop
    scale = stderr if np.isfinite(stderr) and stderr > 0 else 1.0
    inside, outside = theta_hat[index], None
    other = theta_hat[1 - index]
    x = inside + direction * math.sqrt(2.0 * drop) * scale
    for _ in range(200):
        value, other_x, slope = _profile(likelihood, index, x, other)
        gap = value - target
        if abs(gap) < 1e-8:
            return x
        if gap > 0:
            inside, other = x, other_x
        else:
            outside = x
        newton = x - gap / slope if slope != 0 else math.nan
        if outside is None:  # not bracketed yet: go further out
            distance = abs(x - theta_hat[index])
            if distance > 1e6 * scale:
                return direction * math.inf
            outward = math.isfinite(newton) and (newton - x) * direction > 0
            x = newton if outward else x + direction * 2.0 * distance
            continue
        if abs(outside - inside) < 1e-12 * max(1.0, abs(x)):
            return 0.5 * (inside + outside)
        low, high = min(inside, outside), max(inside, outside)
        x = newton if low < newton < high else 0.5 * (inside + outside)
    return x


def fit_intensity(
    depths: Any,
    exposure: Any,
    fills: Any,
    clusters: Any = None,
    *,
    fill_model: str = "poisson",
    dt: float | None = None,
    level: float = 0.95,
) -> IntensityFit:
    """Maximum-likelihood estimate of ``(A, k)`` in ``lambda(delta) = A exp(-k delta)``.

    Args:
        depths: ``f[n]`` quote depth of each record, price units (finite; may be negative).
        exposure: ``f[n]`` (or a scalar) time the quote was exposed, time units, ``>= 0``.
            Records with zero exposure carry no information and are dropped.
        fills: ``f[n]`` (or a scalar) number of fills, whole numbers ``>= 0``.
        clusters: optional ``[n]`` labels of dependent groups of records; adds the
            cluster-robust (sandwich) covariance ``cov_robust``. Tape records at several depths
            count the same trades, so their nominal standard errors are too small: pass the
            time-block labels of ``tape_records``.
        fill_model: ``"poisson"`` (counts over continuous exposure), or the simulator's
            per-step conventions ``"linear"`` / ``"exponential"`` (binomial over
            ``exposure / dt`` steps; see the module docstring).
        dt: step length, time units (the Bernoulli models only).
        level: confidence level of the profile-likelihood intervals, in (0, 1).

    Returns:
        ``IntensityFit``: ``A`` (per time unit of ``exposure``), ``k`` (per price unit),
        standard errors from the observed Fisher information in ``(log A, k)`` (``stderr_A``
        by the delta method), covariance, log-likelihood, profile-likelihood intervals.

    Raises:
        ValueError: unusable data -- NaN, negative or non-integer fills, negative exposure,
            ``exposure`` or ``fills`` neither a scalar nor of the shape of ``depths``, no
            fills, a single depth, fills only at the smallest depth (``k -> inf``), ... -- a
            likelihood without a finite maximum, a Newton iteration that did not converge, or
            a maximum at ``k <= 0`` (fill rates that do not fall with depth): no fit is
            returned that is not a maximum with ``k > 0``.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level = {level!r}; allowed: in (0, 1)")
    records = _validate_records(depths, exposure, fills, clusters, fill_model, dt)
    likelihood = _Likelihood(records, fill_model)
    theta, loglik, converged = _newton(
        lambda t: likelihood.derivatives(t[0], t[1]), _starting_point(records)
    )
    if not np.isfinite(theta).all() or _separated(records, theta, fill_model):
        raise ValueError(
            "the likelihood has no finite maximum for these records (fills separated by depth: "
            f"the search ran off to log A = {theta[0]:.3g}, k = {theta[1]:.3g})"
        )
    if not converged:
        raise ValueError(
            "the Newton iteration did not converge (stopped at log A = "
            f"{theta[0]:.3g}, k = {theta[1]:.3g}): that point is not a maximum of the likelihood, "
            "which may have no finite maximum for these records"
        )
    if not theta[1] > 0:
        raise ValueError(
            f"the fitted k = {theta[1]:.3g} <= 0: fill rates do not fall with depth in these "
            "records, so lambda(delta) = A exp(-k delta) with k > 0 does not describe them "
            "(check that depths are distances from the mid and that each record's exposure and "
            "fills belong to its depth)"
        )
    _, _, hessian = likelihood.derivatives(theta[0], theta[1])
    information = -hessian
    if not np.all(np.linalg.eigvalsh(information) > 0):
        raise ValueError("the observed information is singular: (A, k) are not identifiable")
    cov_theta = np.linalg.inv(information)
    A = math.exp(theta[0])
    to_A = np.diag([A, 1.0])  # d(A, k) / d(log A, k)
    cov = to_A @ cov_theta @ to_A
    drop = 0.5 * _NORMAL.inv_cdf(0.5 + level / 2) ** 2  # half the chi-square(1) quantile

    def intervals(cov: np.ndarray, inflation: np.ndarray) -> list[list[float]]:
        stderr = np.sqrt(np.diag(cov))
        return [
            [
                _profile_bound(likelihood, i, theta, stderr[i], sign, drop * inflation[i], loglik)
                for sign in (-1.0, 1.0)
            ]
            for i in (0, 1)
        ]

    bounds = intervals(cov_theta, np.ones(2))
    cov_robust, stderr_robust, n_clusters = None, (math.nan, math.nan), 0
    robust_bounds = [[math.nan, math.nan], [math.nan, math.nan]]
    if records.clusters is not None:
        labels, index = np.unique(records.clusters, return_inverse=True)
        n_clusters = labels.size
        cluster_scores = np.zeros((n_clusters, 2))
        np.add.at(cluster_scores, index, likelihood.scores(theta[0], theta[1]))
        meat = cluster_scores.T @ cluster_scores * n_clusters / (n_clusters - 1)
        cov_theta_robust = cov_theta @ meat @ cov_theta
        cov_robust = to_A @ cov_theta_robust @ to_A
        stderr_robust = tuple(float(s) for s in np.sqrt(np.diag(cov_robust)))
        # a parameter's profile deviance over-counts the information by the variance ratio
        inflation = np.diag(cov_theta_robust) / np.diag(cov_theta)
        robust_bounds = intervals(cov_theta_robust, inflation)
    return IntensityFit(
        A=A,
        k=float(theta[1]),
        stderr_A=float(math.sqrt(cov[0, 0])),
        stderr_k=float(math.sqrt(cov[1, 1])),
        cov=cov,
        loglik=float(loglik),
        ci_A=(math.exp(bounds[0][0]), math.exp(bounds[0][1])),
        ci_k=(float(bounds[1][0]), float(bounds[1][1])),
        level=level,
        n_records=int(records.depths.size),
        n_fills=float(records.fills.sum()),
        exposure=float(records.exposure.sum()),
        cov_robust=cov_robust,
        stderr_A_robust=stderr_robust[0],
        stderr_k_robust=stderr_robust[1],
        ci_A_robust=(math.exp(robust_bounds[0][0]), math.exp(robust_bounds[0][1])),
        ci_k_robust=(float(robust_bounds[1][0]), float(robust_bounds[1][1])),
        n_clusters=int(n_clusters),
        fill_model=fill_model,
        dt=math.nan if dt is None else float(dt),
    )


def intensity_loglik(
    A: Any,
    k: Any,
    depths: Any,
    exposure: Any,
    fills: Any,
    *,
    fill_model: str = "poisson",
    dt: float | None = None,
) -> np.ndarray:
    """The log-likelihood of intensity records at ``(A, k)`` (broadcast: a surface on a grid).

    Same records, models and constants as ``fit_intensity`` (whose ``loglik`` is this function at
    its estimate). Returns ``f64`` with the broadcast shape of ``A`` and ``k``; ``-inf`` where the
    parameters make the data impossible.
    """
    records = _validate_records(depths, exposure, fills, None, fill_model, dt)
    likelihood = _Likelihood(records, fill_model)
    A, k = np.broadcast_arrays(np.asarray(A, np.float64), np.asarray(k, np.float64))
    if (A <= 0).any():
        raise ValueError("A must be > 0")
    pairs = zip(np.log(A).ravel(), k.ravel(), strict=True)
    out = np.array([likelihood.value(log_a, decay) for log_a, decay in pairs])
    return out.reshape(A.shape)


def records_from_paths(rollout: Any, params: Any, side: str = "both") -> FillRecords:
    """Per-step intensity records of a simulation run with ``paths=True``.

    One record per episode, step and quoted side: the depth quoted (``S_t - bid``, ``ask - S_t``),
    exposure ``dt`` and 0 or 1 fill. Sides that could not fill are left out: unquoted sides
    (infinite depth) and the side blocked by the inventory limit (the bid at ``q_t >= q_max``, the
    ask at ``q_t <= -q_max``). Fit with ``fit_intensity(*records, fill_model=params.fill_model,
    dt=params.dt)``; the fit estimates ``A`` times the side's intensity multiplier.

    Args:
        rollout: a ``Rollout`` from ``simulate(..., paths=True)``.
        params: the ``MarketParams`` it was simulated with.
        side: ``"both"`` (pooled; needs equal intensity multipliers), ``"bid"`` or ``"ask"``.
    """
    if rollout.paths is None:
        raise ValueError("records_from_paths needs a rollout simulated with paths=True")
    if side not in ("both", "bid", "ask"):
        raise ValueError(f"side = {side!r}; allowed: 'both', 'bid' or 'ask'")
    bid_mult = np.asarray(params.bid_intensity_mult, np.float64)
    ask_mult = np.asarray(params.ask_intensity_mult, np.float64)
    if side == "both" and not np.array_equal(bid_mult, ask_mult):
        raise ValueError(
            "bid_intensity_mult != ask_intensity_mult: the sides have different intensities; "
            "fit them separately with side='bid' and side='ask'"
        )
    paths = rollout.paths
    mid = np.asarray(paths.mid, np.float64)[:, :-1]
    inventory = np.asarray(paths.inventory, np.float64)[:, :-1]
    q_max = float(params.q_max)
    sides = {
        "bid": (mid - np.asarray(paths.bid, np.float64), paths.bid_fill, inventory < q_max),
        "ask": (np.asarray(paths.ask, np.float64) - mid, paths.ask_fill, inventory > -q_max),
    }
    chosen = ("bid", "ask") if side == "both" else (side,)
    depths, fills = [], []
    for name in chosen:
        depth, fill, open_ = sides[name]
        keep = open_ & np.isfinite(depth)
        depths.append(depth[keep])
        fills.append(np.asarray(fill, np.float64)[keep])
    depths = np.concatenate(depths)
    return FillRecords(depths, np.full(depths.shape, float(params.dt)), np.concatenate(fills))


def tape_records(
    times: Any,
    prices: Any,
    mids: Any,
    sides: Any,
    depths: Any,
    *,
    start: float,
    end: float,
    block_length: float,
    time_unit: float = 1.0,
    side: str = "both",
) -> FillRecords:
    """Intensity records from a trade tape: for each time block and each depth on a grid, the
    exposure of a quote at that depth and the number of market orders that would have filled it.

    A buy market order whose worst price reaches ``mid + delta`` would have lifted an ask quoted at
    depth ``delta``; a sell reaching ``mid - delta`` would have hit a bid there (queue position is
    ignored: a quote at the traded price counts as filled). The ``reach`` of an order is
    ``side * (price - mid)`` with the mid prevailing before it; a record counts the orders of its
    block with ``reach >= delta`` (to within ``1e-9`` price units, so tick-grid ties count).

    The records of one block count the same orders at every depth and trades cluster in time, so
    they are not independent: each record carries its block as ``clusters``, and
    ``fit_intensity(*records)`` then adds the cluster-robust covariance. Point estimates equal
    those of a fit to the whole-session exceedance counts.

    Args:
        times: ``f[n]`` time of each market order (e.g. seconds after midnight).
        prices: ``f[n]`` its worst execution price, price units.
        mids: ``f[n]`` mid prevailing just before it, price units.
        sides: ``[n]`` +1 for buyer-initiated (hits asks), -1 for seller-initiated (hits bids).
        depths: ``f[m]`` depth grid, price units.
        start, end: the observation window, in the units of ``times``; orders outside it are
            ignored.
        block_length: length of the time blocks (the clusters), units of ``times``.
        time_unit: length of the reporting time unit in the units of ``times`` (23,400 for a
            session of 6.5 hours in seconds); exposures are in this unit, so ``A`` is too.
        side: ``"both"`` (bid and ask quotes pooled: exposure ``2 x`` block length), ``"bid"``
            or ``"ask"``.

    Returns:
        ``FillRecords`` ordered block by block, depth by depth (``n_blocks * m`` records).
    """
    times = _as_array("times", times)
    prices = _as_array("prices", prices)
    mids = _as_array("mids", mids)
    sides = _as_array("sides", sides)
    depths = _as_array("depths", depths)
    n = times.size
    if not (times.ndim == prices.ndim == mids.ndim == sides.ndim == 1) or not (
        prices.size == mids.size == sides.size == n
    ):
        raise ValueError("times, prices, mids and sides must be 1-D arrays of the same length")
    if not (np.isfinite(prices).all() and np.isfinite(mids).all() and np.isfinite(times).all()):
        raise ValueError("times, prices and mids must be finite (drop orders without a mid)")
    if not np.isin(sides, (-1.0, 1.0)).all():
        raise ValueError("sides must be +1 (buyer-initiated) or -1 (seller-initiated)")
    if depths.ndim != 1 or depths.size < 2 or not np.isfinite(depths).all():
        raise ValueError("depths must be a 1-D grid of at least two finite depths")
    if not (math.isfinite(start) and math.isfinite(end) and end > start):
        raise ValueError(f"start = {start!r}, end = {end!r}; allowed: finite with end > start")
    if not (math.isfinite(block_length) and block_length > 0):
        raise ValueError(f"block_length = {block_length!r}; allowed: > 0")
    if not (math.isfinite(time_unit) and time_unit > 0):
        raise ValueError(f"time_unit = {time_unit!r}; allowed: > 0")
    if side not in ("both", "bid", "ask"):
        raise ValueError(f"side = {side!r}; allowed: 'both', 'bid' or 'ask'")
    n_blocks = math.ceil((end - start) / block_length)
    edges = np.minimum(start + block_length * np.arange(n_blocks + 1), end)
    duration = np.diff(edges) / time_unit
    keep = (times >= start) & (times < end)
    if side != "both":
        keep &= sides == (1.0 if side == "ask" else -1.0)
    block = np.minimum(((times[keep] - start) // block_length).astype(np.int64), n_blocks - 1)
    reach = sides[keep] * (prices[keep] - mids[keep])
    fills = np.stack(
        [np.bincount(block[reach >= d - 1e-9], minlength=n_blocks) for d in depths], axis=1
    ).astype(np.float64)
    exposure = np.repeat(duration * (2.0 if side == "both" else 1.0), depths.size)
    return FillRecords(
        depths=np.tile(depths, n_blocks),
        exposure=exposure,
        fills=fills.ravel(),
        clusters=np.repeat(np.arange(n_blocks), depths.size),
    )


class ExceedanceRates(NamedTuple):
    """Empirical fill rate of a quote at each depth: ``f64[m]`` each.

    ``rate = fills / exposure`` per time unit; ``stderr`` cluster-robust (between clusters) when
    the records have clusters, else Poisson ``sqrt(fills) / exposure``.
    """

    depths: np.ndarray
    rate: np.ndarray
    stderr: np.ndarray
    fills: np.ndarray
    exposure: np.ndarray


def exceedance_rates(records: FillRecords) -> ExceedanceRates:
    """Pool intensity records by depth: the empirical rate ``lambda(delta)`` with its error."""
    depths = _as_array("depths", records.depths)
    exposure = np.broadcast_to(_as_array("exposure", records.exposure), depths.shape)
    fills = np.broadcast_to(_as_array("fills", records.fills), depths.shape)
    grid, at = np.unique(depths, return_inverse=True)
    total_fills = np.bincount(at, weights=fills, minlength=grid.size)
    total_exposure = np.bincount(at, weights=exposure, minlength=grid.size)
    if (total_exposure <= 0).any():
        raise ValueError("every depth needs a positive total exposure")
    rate = total_fills / total_exposure
    if records.clusters is None:
        stderr = np.sqrt(total_fills) / total_exposure
    else:
        labels, cluster = np.unique(np.asarray(records.clusters), return_inverse=True)
        residual = fills - rate[at] * exposure
        per_cluster = np.zeros((labels.size, grid.size))
        np.add.at(per_cluster, (cluster, at), residual)
        correction = labels.size / max(labels.size - 1, 1)
        stderr = np.sqrt((per_cluster**2).sum(axis=0) * correction) / total_exposure
    return ExceedanceRates(grid, rate, stderr, total_fills, total_exposure)


class GoodnessOfFit(NamedTuple):
    """Pearson test of the exponential shape of order reaches on depth bins.

    Attributes:
        statistic: Pearson chi-square ``sum (observed - expected)^2 / expected``.
        dof: degrees of freedom, ``bins - 2`` (the total is conditioned on, ``k`` estimated).
        p_value: upper tail of chi-square(dof) at ``statistic`` (Wilson-Hilferty approximation).
        edges: ``f64[bins]`` lower edge of each bin; the last bin is ``[edges[-1], inf)``.
        observed, expected: ``f64[bins]`` order counts per bin.
        residuals: ``(observed - expected) / sqrt(expected)``: where the shape fails.
    """

    statistic: float
    dof: int
    p_value: float
    edges: np.ndarray
    observed: np.ndarray
    expected: np.ndarray
    residuals: np.ndarray


def _chi2_sf(statistic: float, dof: int) -> float:
    """Upper tail of chi-square(dof) by the Wilson-Hilferty cube-root normal approximation."""
    spread = 2.0 / (9.0 * dof)
    z = ((statistic / dof) ** (1.0 / 3.0) - (1.0 - spread)) / math.sqrt(spread)
    return 1.0 - _NORMAL.cdf(z)


def reach_goodness_of_fit(reaches: Any, edges: Any, k: float) -> GoodnessOfFit:
    """Does ``lambda(delta) = A exp(-k delta)`` have the right shape on these depth bins?

    Under the model the reaches of the orders that pass ``edges[0]`` exceed it by independent
    ``Exponential(k)`` amounts, whatever the arrival times (bursts and intraday seasonality change
    ``A``, not the shape). Conditionally on their number the bin counts are multinomial; this is
    Pearson's test of those counts against the fitted ``k``. Orders below ``edges[0]`` are not
    used. Make the bins wide enough for an expected count of 5 or more in each.

    Args:
        reaches: ``f[n]`` reach of each market order, price units (``side * (price - mid)``).
        edges: ``f[bins]`` increasing lower bin edges, price units.
        k: the fitted decay, per price unit.
    """
    reaches = _as_array("reaches", reaches)
    edges = _as_array("edges", edges)
    if edges.ndim != 1 or edges.size < 3 or (np.diff(edges) <= 0).any():
        raise ValueError("edges must be an increasing 1-D grid of at least three depths")
    if not math.isfinite(k):
        raise ValueError(f"k = {k!r}; allowed: finite")
    above = reaches[reaches >= edges[0] - 1e-9]
    if above.size == 0:
        raise ValueError("no reach passes the first edge")
    exceed = np.array([(above >= e - 1e-9).sum() for e in edges], np.float64)
    observed = exceed - np.append(exceed[1:], 0.0)
    survival = np.exp(-k * (edges - edges[0]))
    expected = above.size * (survival - np.append(survival[1:], 0.0))
    residuals = (observed - expected) / np.sqrt(expected)
    statistic = float(np.sum(residuals**2))
    dof = edges.size - 2
    return GoodnessOfFit(
        statistic, dof, _chi2_sf(statistic, dof), edges, observed, expected, residuals
    )


class VolatilityEstimate(NamedTuple):
    """Realised volatility ``sigma`` (price units per sqrt(time unit)) and its standard error."""

    sigma: float
    stderr: float
    n_increments: int
    dt: float


def realized_volatility(mid: Any, dt: float) -> VolatilityEstimate:
    """Realised volatility of mid increments: ``sigma^2 = mean(dS^2) / dt`` (no demeaning: the
    maximum-likelihood estimate of a driftless arithmetic Brownian motion).

    The standard error is the delta method with the sample fourth moment,
    ``se(sigma) = sqrt(var(dS^2) / n) / (2 sigma dt)``, which is ``sigma / sqrt(2n)`` for Gaussian
    increments and stays valid for fat tails; it assumes uncorrelated increments (check a
    signature plot on market data: bid-ask bounce makes fine sampling biased).

    Args:
        mid: ``f[..., n + 1]`` mid levels sampled every ``dt`` along the last axis (several
            episodes or days along leading axes are pooled).
        dt: sampling interval, time units.
    """
    mid = _as_array("mid", mid)
    if mid.ndim == 0 or mid.shape[-1] < 3:
        raise ValueError("mid needs at least three levels along its last axis")
    if not np.isfinite(mid).all():
        raise ValueError("mid must be finite")
    if not (math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt = {dt!r}; allowed: > 0 (time units)")
    squares = np.diff(mid, axis=-1).ravel() ** 2
    n = squares.size
    variance = squares.mean() / dt
    sigma = math.sqrt(variance)
    se_variance = math.sqrt(squares.var(ddof=1) / n) / dt
    stderr = se_variance / (2.0 * sigma) if sigma > 0 else math.nan
    return VolatilityEstimate(sigma, stderr, n, float(dt))


def sample_previous_tick(times: Any, values: Any, grid: Any) -> np.ndarray:
    """``values`` at each ``grid`` time: the last observation at or before it (``f64[len(grid)]``).

    ``times`` must be non-decreasing and start at or before ``grid[0]``.
    """
    times = _as_array("times", times)
    values = _as_array("values", values)
    grid = _as_array("grid", grid)
    if times.shape != values.shape or times.ndim != 1 or times.size == 0:
        raise ValueError("times and values must be 1-D arrays of the same non-zero length")
    if (np.diff(times) < 0).any():
        raise ValueError("times must be non-decreasing")
    if grid.size and grid.min() < times[0]:
        raise ValueError(f"grid starts at {grid.min()} before the first observation {times[0]}")
    return values[np.searchsorted(times, grid, side="right") - 1]


# --------------------------------------------------------------------------------------------
# Differentiable relaxation of the market step, gradient tuning and inverse calibration.


def relaxed_fill(
    prob: jax.Array, uniform: jax.Array, temperature: jax.Array, expected: bool = False
) -> jax.Array:
    """A differentiable stand-in for the fill indicator ``uniform < prob``.

    - ``expected=True``: the expected fill ``prob`` itself (no noise at all);
    - ``temperature > 0``: the relaxed Bernoulli (binary Concrete, Maddison et al. 2017) driven by
      the same uniform, ``sigmoid((logit prob - logit uniform) / temperature)``; it tends to the
      hard indicator as the temperature goes to 0;
    - ``temperature == 0``: exactly the hard indicator of ``market.step_with_noise``.

    Where ``prob`` is 0 or 1 the hard value is used (its gradient is zero there anyway).
    """
    dtype = uniform.dtype
    hard = (uniform < prob).astype(dtype)
    if expected:
        return jnp.asarray(prob, dtype)
    interior = (prob > 0) & (prob < 1)
    safe = jnp.where(interior, prob, 0.5)
    positive = temperature > 0
    scale = jnp.where(positive, temperature, 1.0)
    logits = jnp.log(safe) - jnp.log1p(-safe) - jnp.log(uniform) + jnp.log1p(-uniform)
    soft = jnp.where(interior, jax.nn.sigmoid(logits / scale), hard)
    return jnp.where(positive, soft, hard).astype(dtype)


def relaxed_step_with_noise(
    state: MarketState,
    quotes: Quotes,
    noise: Noise,
    params: MarketParams,
    temperature: jax.Array,
    expected_fills: bool = False,
) -> tuple[MarketState, StepInfo]:
    """``market.step_with_noise`` with the fills replaced by ``relaxed_fill`` (same noise).

    Only the fill indicators differ: the rest is ``market.apply_fills``, the simulator's own
    code; at ``temperature = 0`` (and ``expected_fills=False``) the result is identical to it,
    bit for bit (``tests/test_calibrate.py`` checks every market option). With relaxed fills the
    inventory becomes fractional and every output is a smooth function of the quotes and of the
    market's numbers (``A``, ``k``, ``sigma``, ...), while the mid's noise stays a reparameterised
    function of the uniforms. The inventory limits stay hard masks.
    """
    dtype = float_dtype()
    state, quotes = acting_quotes(state, quotes, params)
    bid_depth, ask_depth, bid_prob, ask_prob = quote_fill_probabilities(state, quotes, params)
    bid_open, ask_open = limits_open(state, params)
    bid_fill = relaxed_fill(bid_prob, noise.u_bid, temperature, expected_fills) * bid_open.astype(
        dtype
    )
    ask_fill = relaxed_fill(ask_prob, noise.u_ask, temperature, expected_fills) * ask_open.astype(
        dtype
    )
    return apply_fills(
        state, bid_depth, ask_depth, bid_fill, ask_fill, bid_prob, ask_prob, noise, params
    )


@struct.dataclass
class RelaxedRollout:
    """Episodes of the relaxed market: terminal values ``[n]`` and per-step values ``[n, N]``.

    Attributes:
        pnl, inventory: terminal PnL (price units) and inventory (fractional when relaxed).
        bid_fill, ask_fill: relaxed fill of each step (``[n, N]``, in [0, 1]).
        mid_change: ``S_{t+1} - S_t`` of each step, ``[n, N]``.
    """

    pnl: jax.Array
    inventory: jax.Array
    bid_fill: jax.Array
    ask_fill: jax.Array
    mid_change: jax.Array


def relaxed_rollout(
    params: MarketParams,
    policy: Callable,
    stream: jax.Array,
    episodes: jax.Array,
    temperature: jax.Array,
    expected_fills: bool = False,
) -> RelaxedRollout:
    """``simulate.rollout`` on the relaxed step: pure, jit-able and differentiable.

    Episode ``i`` at step ``t`` uses ``market.counter_noise(stream, episodes[i], t)``, the noise
    ``simulate`` gives it, so relaxed and exact runs share their paths (common random numbers).
    Gradients flow to the policy's leaves (``gamma``, ``k`` of A-S) and to ``params``' leaves.
    """

    def episode(index: jax.Array) -> RelaxedRollout:
        def body(state, _):
            noise = counter_noise(stream, index, state.t)
            state, info = relaxed_step_with_noise(
                state, policy(state, params), noise, params, temperature, expected_fills
            )
            return state, (info.bid_fill, info.ask_fill, info.mid_change)

        start = reset(jax.random.key(0), params)
        final, (bid_fill, ask_fill, mid_change) = jax.lax.scan(
            body, start, None, length=params.n_steps
        )
        return RelaxedRollout(final.pnl, final.inventory, bid_fill, ask_fill, mid_change)

    return jax.vmap(episode)(episodes)


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
        value = mean - risk_aversion * variance
        influence = centred - risk_aversion * (centred**2 - variance)
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

    - ``"mean_variance"``: ``mean - risk_aversion * variance`` (``risk_aversion`` per price unit);
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


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{name} = {value!r}; allowed: a number > 0")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} = {value!r}; allowed: > 0")
    return float(value)


def _count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} = {value!r}; allowed: an integer >= {minimum}")
    return int(value)


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
            ``params.k``). risk_aversion: ``lambda`` of mean-variance or ``a`` of CARA.
        n_iterations, n_episodes, learning_rate, temperature: the optimisation settings.
        average_fraction: fraction of the final iterates averaged into the answer, in (0, 1].
        chunk: iterations per compiled chunk (one ``lax.scan``); ``progress(iteration, gamma,
            kappa, relaxed objective)`` is called after each chunk.
    """
    params.validate()
    _check_objective(objective, risk_aversion if objective != "sharpe" else 1.0)
    gamma = _positive("gamma", gamma)
    kappa = _positive("kappa", float(params.k) if kappa is None else kappa)
    n_iterations = _count("n_iterations", n_iterations, 1)
    n_episodes = _count("n_episodes", n_episodes, 2)
    chunk = _count("chunk", chunk, 1)
    learning_rate = _positive("learning_rate", learning_rate)
    temperature = _positive("temperature", temperature)
    if not 0 < average_fraction <= 1:
        raise ValueError(f"average_fraction = {average_fraction!r}; allowed: in (0, 1]")
    if n_iterations * n_episodes >= 2**32:
        raise ValueError("n_iterations * n_episodes must be < 2**32 (episode counters)")
    start_time = time.perf_counter()
    stream = stream_key(key)
    optimizer = optax.adam(learning_rate)
    log_point = jnp.log(jnp.asarray([gamma, kappa], float_dtype()))
    opt_state = optimizer.init(log_point)
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


@struct.dataclass
class DepthCycle:
    """A design policy for calibration: both sides quote ``depths[t % m]`` at step ``t``."""

    depths: jax.Array

    def __call__(self, obs: MarketState, params: MarketParams) -> Quotes:
        depth = jnp.asarray(self.depths, obs.mid.dtype)[obs.t % self.depths.shape[0]]
        return Quotes(bid_depth=depth, ask_depth=depth)


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
    n_episodes = _count("n_episodes", n_episodes, 1)
    n_iterations = _count("n_iterations", n_iterations, 1)
    learning_rate = _positive("learning_rate", learning_rate)
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
