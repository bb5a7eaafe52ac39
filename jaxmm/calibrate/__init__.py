"""Calibration: which ``A``, ``k``, ``sigma``, ``gamma`` to use, with error bars.

- Intensity (``_src/intensity.py``): ``fit_intensity``, maximum likelihood for ``(A, k)`` in
  ``lambda(delta) = A exp(-k delta)`` from quote/fill records under ``fill_model`` one of
  ``INTENSITY_MODELS`` (Poisson, or the simulator's per-step Bernoulli conventions), with
  observed-information and cluster-robust standard errors and profile-likelihood intervals
  (``IntensityFit``); ``intensity_loglik`` for likelihood surfaces.
- Records (``_src/records.py``): ``FillRecords``; ``records_from_paths`` (simulator output),
  ``tape_records`` (a trade tape: for each time block and depth, the exposure and the orders
  that would have filled a quote there; see ``jaxmm.lobster`` for LOBSTER files),
  ``exceedance_rates``, ``reach_goodness_of_fit``; volatility: ``realized_volatility`` with its
  standard error, ``sample_previous_tick``.
- Relaxed market (``_src/relaxed.py``): ``relaxed_fill``, ``relaxed_step_with_noise`` (the
  market's own step with a differentiable ``fill`` hook), ``relaxed_rollout``: gradients through
  the simulation (``jax.grad`` through the exact, discrete fills sees no effect of depth).
- Tuning (``_src/tuning.py``): ``tune_as`` chooses the A-S ``(gamma, kappa)`` for a
  risk-adjusted objective of ``OBJECTIVES`` (``objective_value``, measured exactly with
  ``objective_estimate``): ``"mean_variance"`` is ``mean - (a/2) Var`` and ``"cara"``
  ``-(1/a) log E exp(-a PnL)``, with the same ``a = risk_aversion``.
- Inverse calibration (``_src/inverse.py``): ``fit_market_by_gradient`` fits ``(A, k, sigma)``
  to observed statistics (``MomentTargets``, ``moment_targets``) by simulated moments
  (``simulated_moments`` of the ``DepthCycle`` design).

Units (those of ``jaxmm.params``): time in session units unless the caller chooses another time
unit (a fit reports ``A`` per unit of whatever time ``exposure`` is measured in); depths and
prices in price units; ``k`` per price unit; ``sigma`` price units per sqrt(time unit);
``risk_aversion`` per price unit (PnL in price units).
"""

from jaxmm.calibrate._src.intensity import (
    INTENSITY_MODELS,
    IntensityFit,
    fit_intensity,
    intensity_loglik,
)
from jaxmm.calibrate._src.inverse import (
    DepthCycle,
    GradientFit,
    MomentTargets,
    fit_market_by_gradient,
    moment_targets,
    simulated_moments,
)
from jaxmm.calibrate._src.records import (
    ExceedanceRates,
    FillRecords,
    GoodnessOfFit,
    VolatilityEstimate,
    exceedance_rates,
    reach_goodness_of_fit,
    realized_volatility,
    records_from_paths,
    sample_previous_tick,
    tape_records,
)
from jaxmm.calibrate._src.relaxed import (
    RelaxedRollout,
    relaxed_fill,
    relaxed_rollout,
    relaxed_step_with_noise,
)
from jaxmm.calibrate._src.tuning import (
    OBJECTIVES,
    TuneResult,
    objective_estimate,
    objective_value,
    tune_as,
)

__all__ = [
    "INTENSITY_MODELS",
    "OBJECTIVES",
    "DepthCycle",
    "ExceedanceRates",
    "FillRecords",
    "GoodnessOfFit",
    "GradientFit",
    "IntensityFit",
    "MomentTargets",
    "RelaxedRollout",
    "TuneResult",
    "VolatilityEstimate",
    "exceedance_rates",
    "fit_intensity",
    "fit_market_by_gradient",
    "intensity_loglik",
    "moment_targets",
    "objective_estimate",
    "objective_value",
    "reach_goodness_of_fit",
    "realized_volatility",
    "records_from_paths",
    "relaxed_fill",
    "relaxed_rollout",
    "relaxed_step_with_noise",
    "sample_previous_tick",
    "simulated_moments",
    "tape_records",
    "tune_as",
]
