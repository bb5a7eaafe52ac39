"""Intensity maximum likelihood: ``(A, k)`` of ``lambda(delta) = A exp(-k delta)`` with errors.

``fit_intensity`` (Newton's method on ``(log A, k)``; observed-information and cluster-robust
standard errors; profile-likelihood intervals) returns an ``IntensityFit``; ``intensity_loglik``
evaluates the same log-likelihood on any grid of ``(A, k)`` (likelihood surfaces).

Units: a fit reports ``A`` per unit of whatever time ``exposure`` is measured in (session units
by default, ``IntensityFit.rescale_time`` converts), ``k`` per price unit, depths in price units.
Records are ``f64[n]`` arrays (``depths``, ``exposure``, ``fills``, optional ``i64[n]``
``clusters``).

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

import math
from collections.abc import Callable
from statistics import NormalDist
from typing import Any, NamedTuple

import numpy as np
from flax import struct

from jaxmm import validation
from jaxmm.market import fill_probability_numpy

INTENSITY_MODELS = ("poisson", "linear", "exponential")
_NORMAL = NormalDist()


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
    depths = validation.numeric_array("depths", depths)
    exposure = validation.numeric_array("exposure", exposure)
    fills = validation.numeric_array("fills", fills)
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
    theta, loglik = _maximise(records, likelihood, fill_model)
    cov_theta = _inverse_information(likelihood, theta)
    A = math.exp(theta[0])
    to_A = np.diag([A, 1.0])  # d(A, k) / d(log A, k)
    cov = to_A @ cov_theta @ to_A
    drop = 0.5 * _NORMAL.inv_cdf(0.5 + level / 2) ** 2  # half the chi-square(1) quantile
    bounds = _intervals(likelihood, theta, loglik, drop, cov_theta, np.ones(2))
    cov_robust, stderr_robust, n_clusters, robust_bounds = _cluster_robust(
        records, likelihood, theta, loglik, drop, cov_theta, to_A
    )
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


def _maximise(records: _Records, likelihood: _Likelihood, fill_model: str):
    """The maximum-likelihood ``(theta, loglik)``, ``theta = (log A, k)``, by Newton's method
    from ``_starting_point``; ValueError unless it is a finite, converged maximum with ``k > 0``.
    """
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
    return theta, loglik


def _inverse_information(likelihood: _Likelihood, theta: np.ndarray) -> np.ndarray:
    """The nominal covariance of ``(log A, k)``: the inverse observed Fisher information at
    ``theta``; ValueError when the information is not positive definite."""
    _, _, hessian = likelihood.derivatives(theta[0], theta[1])
    information = -hessian
    if not np.all(np.linalg.eigvalsh(information) > 0):
        raise ValueError("the observed information is singular: (A, k) are not identifiable")
    return np.linalg.inv(information)


def _intervals(
    likelihood: _Likelihood,
    theta: np.ndarray,
    loglik: float,
    drop: float,
    cov: np.ndarray,
    inflation: np.ndarray,
) -> list[list[float]]:
    """Profile-likelihood intervals ``[[lo, hi] of log A, [lo, hi] of k]``: where the profile
    falls ``drop * inflation[i]`` below ``loglik`` (searched on the scale of ``cov``'s
    standard errors)."""
    stderr = np.sqrt(np.diag(cov))
    return [
        [
            _profile_bound(likelihood, i, theta, stderr[i], sign, drop * inflation[i], loglik)
            for sign in (-1.0, 1.0)
        ]
        for i in (0, 1)
    ]


def _cluster_robust(
    records: _Records,
    likelihood: _Likelihood,
    theta: np.ndarray,
    loglik: float,
    drop: float,
    cov_theta: np.ndarray,
    to_A: np.ndarray,
):
    """The cluster-robust (sandwich) results: ``(cov_robust, (stderr_A, stderr_k),
    n_clusters, intervals)``; ``cov_robust`` in ``(A, k)``, intervals as ``_intervals``.
    Without cluster labels: ``(None, (nan, nan), 0, nan intervals)``."""
    if records.clusters is None:
        return None, (math.nan, math.nan), 0, [[math.nan, math.nan], [math.nan, math.nan]]
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
    robust_bounds = _intervals(likelihood, theta, loglik, drop, cov_theta_robust, inflation)
    return cov_robust, stderr_robust, n_clusters, robust_bounds


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
