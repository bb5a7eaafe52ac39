"""Open-loop spread schedules: a sample-average CP-SAT model and the exact open-loop optimum.

An *open-loop schedule* fixes the quotes of every step in advance, ``(bid_depth[t],
ask_depth[t])`` for ``t = 0..N-1``, whatever the inventory turns out to be. It is a (t, q)-Markov
rule that ignores ``q``, so ``jaxmm.optimal.evaluate`` gives its exact expected reward and
``jaxmm.optimal.bellman`` (which may react to ``q``) is an upper bound on it.

``solve_schedule`` picks the schedule from a grid of depths ("levels") by constraint programming
(OR-Tools CP-SAT, the optional extra ``jaxmm[cp]``) on a sample-average problem: ``S``
scenarios are episodes ``0..S-1`` of the simulator under ``key`` (the same counter-mode noise as
``jaxmm.simulate(params, policy, key, S)``). Once the uniforms are fixed, whether a quote at
level ``j`` fills in scenario ``s`` at step ``t`` is a known 0/1 number ``b[s, t, j]`` (bid) or
``a[s, t, j]`` (ask), so with one-hot choices ``x[t, j]`` (symmetric: one depth for both sides;
otherwise ``xb[t, j]`` and ``xa[t, j]``) the fills are linear::

    bid_fill[s, t] = sum_j xb[t, j] b[s, t, j],    ask_fill[s, t] = sum_j xa[t, j] a[s, t, j]
    q[s, t+1] = q[s, t] + bid_fill[s, t] - ask_fill[s, t],   q[s, 0] = 0,
    |q[s, t+1]| <= q_bound  in every scenario (a hard constraint),

    maximise (1/S) sum_s sum_t [ sum_j level_j (xb[t, j] b[s, t, j] + xa[t, j] a[s, t, j])
                                 + q[s, t+1] dS[s, t] - phi q[s, t+1]^2 ],

the episode reward ``pnl - phi * sum_sq_inventory`` of ``jaxmm.simulate`` averaged over the
scenarios (``dS`` are the scenarios' mid increments, taken from the simulator's mid paths).
The square is exact and linear: for integer ``q``, ``q^2 = max_m (2m + 1) q - m (m + 1)`` over
integers ``m``, so with ``phi > 0`` a variable ``sq >= (2m + 1) q - m (m + 1)`` for
``m = -Q..Q-1`` equals ``q^2`` at the optimum (the cuts also give CP-SAT a tight LP relaxation).

Integer scaling: CP-SAT needs integer coefficients; each is ``round(c * objective_scale)``. The
solver's objective therefore differs from the true sample average of the same schedule by at
most ``rounding_bound = 0.5 / objective_scale * N * (n_sides + q_bound * 1[mtm] + q_bound^2
* 1[phi > 0])`` per episode (each rounded coefficient is off by at most ``0.5 / scale`` and
multiplies a variable of magnitude at most 1, ``q_bound`` or ``q_bound^2``); the schedule's true
sample average (recomputed in float64) is returned as ``objective``, and it is within
``2 * rounding_bound`` of the true sample-average optimum when the status is OPTIMAL.

The hard inventory bound is a constraint on the sampled paths, not a market mechanism: an open
loop schedule cannot enforce it on new paths. So the market's own limit must not act on the
sample (``params.q_max > q_bound``; the default ``inf`` is fine), and then the CP model's
scenario paths are exactly the simulator's. A grid of strictly positive levels with wide ones
available makes the model feasible in practice, but not always: if every schedule breaks the
bound in some scenario, ``solve_schedule`` raises. The bound also tightens as ``S`` grows: "in
every scenario" tends to "almost surely", which any schedule that ever fills breaks with some
probability, so for large ``S`` it forces ever wider quotes (or infeasibility).

CP-SAT starts from a complete, feasible hint (``_warm_start``) and is stopped by
``time_limit`` (wall clock) or ``deterministic_time`` (a work count: reproducible).

The mark-to-market term ``q[s, t+1] dS[s, t]`` has expectation ``mu dt E[q_{t+1}]`` for an
open-loop schedule (``dS_t`` is independent of ``q_{t+1}``): zero without drift. In-sample it is
not zero: the solver sees the scenarios' mid moves and times its fills to them, which inflates the
in-sample value (overfitting that shrinks as ``S`` grows); ``mark_to_market=False`` drops the
term (its expectation is zero anyway) and keeps only spread capture and the penalty.

``best_open_loop`` solves the *expected* problem exactly, with no sampling: for a symmetric
schedule in a symmetric market the expected reward separates over steps (``expected_reward``),
so the best schedule on the grid is a per-step argmax. Its exact value bounds every symmetric
grid schedule's expected value from above (the sample-average schedules' included), and it is
what the sample-average schedule would tend to as ``S`` grows if the bound did not bind.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxmm import market, policies, validation
from jaxmm.market import MarketState, Quotes
from jaxmm.params import MarketParams
from jaxmm.simulation import simulate

__all__ = [
    "CP_EXTRA",
    "DEFAULT_SCALE",
    "Scenarios",
    "Schedule",
    "ScheduleSolution",
    "best_open_loop",
    "check_levels",
    "expected_reward",
    "fill_probabilities",
    "sample_average",
    "sample_scenarios",
    "schedule",
    "solve_schedule",
]

CP_EXTRA = "cp"
DEFAULT_SCALE = 1e6  # objective coefficients in units of 1e-6 price units


@struct.dataclass
class Schedule:
    """An open-loop policy: at step ``t`` quote ``bid_depth[t]`` and ``ask_depth[t]``.

    ``bid_depth``, ``ask_depth``: ``f[n_steps]``, price units. Steps past the end reuse the last
    entry (the simulator never asks for them).
    """

    bid_depth: jax.Array
    ask_depth: jax.Array

    def __call__(self, obs: MarketState, params: MarketParams) -> Quotes:
        last = self.bid_depth.shape[0] - 1
        index = jnp.clip(obs.t, 0, last)
        dtype = obs.mid.dtype
        return Quotes(
            bid_depth=self.bid_depth[index].astype(dtype),
            ask_depth=self.ask_depth[index].astype(dtype),
        )


def schedule(bid_depth: Any, ask_depth: Any | None = None) -> Schedule:
    """Wrap per-step depths (``f[n_steps]``, price units) as a policy; ``ask_depth`` defaults to
    ``bid_depth`` (a symmetric schedule)."""
    bid = np.asarray(bid_depth, np.float64)
    ask = bid if ask_depth is None else np.asarray(ask_depth, np.float64)
    if bid.ndim != 1 or bid.size < 1 or ask.shape != bid.shape:
        raise ValueError(
            f"bid_depth/ask_depth have shapes {bid.shape}/{ask.shape}; allowed: equal 1-D, "
            "at least one step"
        )
    if not (np.all(np.isfinite(bid)) and np.all(np.isfinite(ask))):
        raise ValueError("bid_depth/ask_depth contain non-finite entries; allowed: finite depths")
    dtype = market.float_dtype()
    return Schedule(bid_depth=jnp.asarray(bid, dtype), ask_depth=jnp.asarray(ask, dtype))


@dataclasses.dataclass(frozen=True)
class ScheduleSolution:
    """The result of ``solve_schedule``.

    Attributes:
        bid_depth, ask_depth: ``f64[n_steps]``, the chosen depths (price units).
        bid_level, ask_level: ``i64[n_steps]``, their indices into ``levels``.
        levels: ``f64[L]``, the grid (sorted ascending).
        objective: the schedule's sample-average reward (float64 recomputation, price units).
        spread_capture, mark_to_market, penalty: its parts (``objective = spread_capture +
            mark_to_market - penalty``; ``mark_to_market`` counts even when the model was
            solved with ``mark_to_market=False``, see ``model_objective``).
        model_objective: the true sample average of what the model maximised (``objective``
            without the mark-to-market term when ``mark_to_market=False``).
        solver_objective, best_bound: CP-SAT's objective and proven upper bound, divided by
            ``objective_scale * n_scenarios`` (price units per episode).
        gap: ``best_bound - solver_objective`` (0 when OPTIMAL).
        rounding_bound: bound on ``|solver_objective - model_objective|`` from integer scaling.
        status: ``"OPTIMAL"`` or ``"FEASIBLE"`` (time limit reached with a solution).
        wall_seconds: CP-SAT's wall time; build_seconds: scenario generation and model build.
        max_abs_inventory: largest ``|q|`` over the scenarios and steps under the schedule.
        n_scenarios, q_bound, phi, symmetric, mark_to_market: the problem solved.
        n_variables, n_constraints: size of the CP model.
    """

    bid_depth: np.ndarray
    ask_depth: np.ndarray
    bid_level: np.ndarray
    ask_level: np.ndarray
    levels: np.ndarray
    objective: float
    spread_capture: float
    mark_to_market: float
    penalty: float
    model_objective: float
    solver_objective: float
    best_bound: float
    gap: float
    rounding_bound: float
    status: str
    wall_seconds: float
    build_seconds: float
    max_abs_inventory: int
    n_scenarios: int
    q_bound: int
    phi: float
    symmetric: bool
    include_mark_to_market: bool
    n_variables: int
    n_constraints: int

    def policy(self) -> Schedule:
        """The schedule as a jaxmm policy (for ``simulate`` and ``optimal.evaluate``)."""
        return schedule(self.bid_depth, self.ask_depth)

    def summary(self) -> dict[str, Any]:
        """Plain-number fields (JSON-ready); arrays as lists."""
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            out[field.name] = value.tolist() if isinstance(value, np.ndarray) else value
        return out


@dataclasses.dataclass(frozen=True)
class Scenarios:
    """Sampled episodes with the per-level fills fixed.

    Attributes:
        bid_fills, ask_fills: ``i8[S, N, L]``: 1 where a quote at ``levels[j]`` fills at step
            ``t`` of scenario ``s``. mid_change: ``f64[S, N]``: ``S_{t+1} - S_t``.
        levels: ``f64[L]``.
    """

    bid_fills: np.ndarray
    ask_fills: np.ndarray
    mid_change: np.ndarray
    levels: np.ndarray


# --------------------------------------------------------------------------- validation


def check_levels(levels: Any) -> np.ndarray:
    """The grid as sorted ``f64[L]``; ValueError unless a non-empty 1-D set of distinct finite
    depths ``>= 0``."""
    try:
        grid = np.asarray(levels, np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"levels = {levels!r}; allowed: a 1-D sequence of depths >= 0") from None
    if grid.ndim != 1 or grid.size < 1:
        raise ValueError(f"levels has shape {grid.shape}; allowed: a non-empty 1-D sequence")
    if not np.all(np.isfinite(grid)) or np.any(grid < 0):
        raise ValueError(f"levels = {grid.tolist()}; allowed: finite depths >= 0 (price units)")
    grid = np.sort(grid)
    if np.any(np.diff(grid) == 0):
        raise ValueError(f"levels = {grid.tolist()} has duplicates; allowed: distinct depths")
    return grid


# Fields the schedule model handles; every other field of MarketParams (market extensions:
# fees, order sizes, latency, ...) must keep its default value.
_SUPPORTED_FIELDS = frozenset(
    {
        "S0", "sigma", "T", "A", "k", "mu", "adverse_selection", "bid_intensity_mult",
        "ask_intensity_mult", "vol_switch_step", "vol_switch_factor", "q_max", "n_steps",
        "fill_model", "price_model", "history_window",
    }
)  # fmt: skip


def _check_market(params: MarketParams) -> None:
    params.validate()
    defaults = MarketParams()
    for field in dataclasses.fields(MarketParams):
        if field.name in _SUPPORTED_FIELDS:
            continue
        value, default = getattr(params, field.name), getattr(defaults, field.name)
        same = value is default or (
            value is not None and default is not None and np.array_equal(value, default)
        )
        if not same:
            raise ValueError(
                f"params.{field.name} = {value!r} is not supported by jaxmm.schedule; "
                f"allowed: the default {default!r} (unit fills, no fees or desk controls)"
            )
    for name in ("S0", "sigma", "T", "A", "k", "mu", "adverse_selection", "q_max"):
        if np.ndim(getattr(params, name)) != 0:
            raise ValueError(f"params.{name} must be a scalar for schedules (no sweeps)")
    if float(params.adverse_selection) != 0.0:
        raise ValueError(
            f"params.adverse_selection = {params.adverse_selection}; allowed: 0 (a fill-driven "
            "mid jump makes the mark-to-market term quadratic in the choices)"
        )
    if params.price_model in ("geometric", "ou"):
        raise ValueError(
            f"params.price_model = {params.price_model!r}; allowed: 'arithmetic' or 'binary' "
            "(additive increments, as in jaxmm.optimal)"
        )


# --------------------------------------------------------------------- the exact expectation


def fill_probabilities(params: MarketParams, depths: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-step fill probabilities ``(bid, ask)`` (float64) of quotes at ``depths``."""
    depths = np.asarray(depths, np.float64)
    dt = float(params.dt)
    shape = market.intensity_shape_numpy(
        depths, float(params.k), params.fill_shape, params.fill_shape_alpha
    )
    base = float(params.A) * shape * dt
    bid = base * float(params.bid_intensity_mult)
    ask = base * float(params.ask_intensity_mult)
    return (
        market.fill_probability_numpy(bid, params.fill_model),
        market.fill_probability_numpy(ask, params.fill_model),
    )


def expected_reward(params: MarketParams, phi: float, bid_depth: Any, ask_depth: Any) -> float:
    """Exact expected episode reward ``E[pnl - phi sum_t q_{t+1}^2]`` of an open-loop schedule.

    Fills are independent Bernoulli(``p_b[t]``), Bernoulli(``p_a[t]``), so ``q_{t+1}`` has mean
    ``m_{t+1} = sum_{u<=t} (p_b - p_a)`` and variance ``v_{t+1} = sum_{u<=t} p_b(1-p_b) +
    p_a(1-p_a)``, and ``dS_t`` (mean ``mu dt``) is independent of ``q_{t+1}``::

        E = sum_t [ p_b d_b + p_a d_a + mu dt m_{t+1} - phi (m_{t+1}^2 + v_{t+1}) ].

    Requires a market whose limit is never reached (``q_max >= n_steps``) and no adverse
    selection; a closed form independent of ``jaxmm.optimal.evaluate``.
    """
    _check_market(params)
    phi = validation.number("phi", phi, lambda v: 0 <= v < math.inf, "0 <= phi < inf")
    if float(params.q_max) < params.n_steps:
        raise ValueError(
            f"params.q_max = {params.q_max}; allowed: >= n_steps = {params.n_steps} (the limit "
            "must be unreachable for the closed form)"
        )
    bid_depth = np.asarray(bid_depth, np.float64)
    ask_depth = np.asarray(ask_depth, np.float64)
    if bid_depth.shape != (params.n_steps,) or ask_depth.shape != (params.n_steps,):
        raise ValueError(
            f"depths have shapes {bid_depth.shape}/{ask_depth.shape}; allowed: ({params.n_steps},)"
        )
    p_bid, _ = fill_probabilities(params, bid_depth)
    _, p_ask = fill_probabilities(params, ask_depth)
    mean_q = np.cumsum(p_bid - p_ask)
    var_q = np.cumsum(p_bid * (1 - p_bid) + p_ask * (1 - p_ask))
    drift_dt = float(params.mu) * float(params.dt)
    per_step = p_bid * bid_depth + p_ask * ask_depth + drift_dt * mean_q
    return float(np.sum(per_step - phi * (mean_q**2 + var_q)))


def best_open_loop(params: MarketParams, phi: float, levels: Any) -> np.ndarray:
    """The symmetric grid schedule of largest *expected* reward, ``f64[n_steps]`` (exact).

    In a symmetric market (``bid_intensity_mult == ask_intensity_mult``) a symmetric schedule
    has ``m = 0`` and ``E[q_{t+1}^2] = sum_{u<=t} 2 p_u (1 - p_u)``, so (``expected_reward``)

        E = sum_t [ 2 d_t p(d_t) - 2 phi (N - t) p(d_t) (1 - p(d_t)) ],

    a sum of per-step terms: the best grid schedule takes the per-step argmax (the smallest
    level on ties).
    """
    _check_market(params)
    phi = validation.number("phi", phi, lambda v: 0 <= v < math.inf, "0 <= phi < inf")
    grid = check_levels(levels)
    if float(params.bid_intensity_mult) != float(params.ask_intensity_mult):
        raise ValueError(
            "params.bid_intensity_mult != ask_intensity_mult; allowed: a symmetric market "
            "(otherwise a symmetric schedule drifts and the steps do not separate)"
        )
    prob, _ = fill_probabilities(params, grid)
    remaining = params.n_steps - np.arange(params.n_steps)
    gain = 2 * grid * prob - 2 * phi * remaining[:, None] * prob * (1 - prob)
    return grid[np.argmax(gain, axis=1)]


# ---------------------------------------------------------------------------- scenarios


def sample_scenarios(
    params: MarketParams, key: jax.Array, n_scenarios: int, levels: Any
) -> Scenarios:
    """Fills of every level and the mid increments in episodes ``0..n_scenarios-1`` of ``key``.

    Read from the simulator itself: ``simulate(params, symmetric(level), key, S, paths=True)``
    for each level, in a market without inventory limit (so the fills are the raw indicators
    ``u < p(level)``). The mid path does not depend on the quotes (no adverse selection).
    """
    grid = check_levels(levels)
    open_market = params.replace(q_max=math.inf)
    bid_fills, ask_fills, mid_change = [], [], None
    for level in grid:
        rollout = simulate(
            open_market, policies.symmetric(float(level)), key, n_scenarios, paths=True
        )
        bid_fills.append(np.asarray(rollout.paths.bid_fill) > 0)
        ask_fills.append(np.asarray(rollout.paths.ask_fill) > 0)
        if mid_change is None:
            mid = np.asarray(rollout.paths.mid)
            mid_change = (mid[:, 1:] - mid[:, :-1]).astype(np.float64)  # the simulator's rounding
    return Scenarios(
        bid_fills=np.stack(bid_fills, axis=-1).astype(np.int8),
        ask_fills=np.stack(ask_fills, axis=-1).astype(np.int8),
        mid_change=mid_change,
        levels=grid,
    )


def sample_average(
    scenarios: Scenarios, bid_level: np.ndarray, ask_level: np.ndarray, phi: float
) -> dict[str, Any]:
    """Sample-average reward of the schedule (level indices per step) on the scenarios.

    Returns ``objective``, ``spread_capture``, ``mark_to_market``, ``penalty`` (means over
    scenarios, float64) and ``inventory`` ``i64[S, N + 1]``.
    """
    steps = np.arange(bid_level.size)
    bid = scenarios.bid_fills[:, steps, bid_level].astype(np.int64)
    ask = scenarios.ask_fills[:, steps, ask_level].astype(np.int64)
    levels = scenarios.levels
    spread = bid @ levels[bid_level] + ask @ levels[ask_level]
    after = np.cumsum(bid - ask, axis=1)
    mtm = np.sum(after * scenarios.mid_change, axis=1)
    penalty = phi * np.sum(after.astype(np.float64) ** 2, axis=1)
    inventory = np.concatenate([np.zeros((after.shape[0], 1), np.int64), after], axis=1)
    return {
        "objective": float(np.mean(spread + mtm - penalty)),
        "spread_capture": float(np.mean(spread)),
        "mark_to_market": float(np.mean(mtm)),
        "penalty": float(np.mean(penalty)),
        "inventory": inventory,
    }


# ---------------------------------------------------------------------------- CP-SAT model


def _cp_model():
    try:
        from ortools.sat.python import cp_model
    except ImportError as error:
        raise ImportError(
            "jaxmm.schedule.solve_schedule needs OR-Tools CP-SAT, an optional extra: "
            f"pip install 'jaxmm[{CP_EXTRA}]' (or pip install 'ortools>=9.10,<10')"
        ) from error
    return cp_model


def solve_schedule(
    params: MarketParams,
    phi: float,
    *,
    n_scenarios: int,
    levels: Any,
    key: jax.Array,
    q_bound: int,
    time_limit: float = 60.0,
    symmetric: bool = True,
    workers: int = 1,
    mark_to_market: bool = True,
    objective_scale: float = DEFAULT_SCALE,
    hint: Any | None = None,
    seed: int = 0,
    deterministic_time: float | None = None,
) -> ScheduleSolution:
    """The open-loop schedule maximising the sample-average reward (see the module docstring).

    Args:
        params: the market (scalar fields; no adverse selection; additive mid; its ``q_max``
            must exceed ``q_bound`` so the market's limit never acts on the sample).
        phi: per-step inventory penalty of the reward ``dPnL - phi q_{t+1}^2`` (>= 0).
        n_scenarios: ``S >= 1`` sampled episodes (episodes ``0..S-1`` of ``key``).
        levels: the grid of depths, price units (distinct, finite, >= 0).
        key: JAX PRNG key of the scenarios (as for ``jaxmm.simulate``).
        q_bound: ``|q| <= q_bound`` in every scenario and step (integer >= 1).
        time_limit: CP-SAT wall-clock limit, seconds (> 0). A run stopped by it depends on the
            machine's speed and load; see ``deterministic_time``.
        symmetric: one depth for both sides (``True``) or separate bid and ask levels.
        workers: CP-SAT search workers (>= 1).
        deterministic_time: optional limit in CP-SAT's deterministic time units (a work count,
            roughly seconds on a fast core) as well. Same inputs, same result when the solve
            ends by this limit or by proving optimality, whatever the load: with one worker, or
            with several in CP-SAT's interleaved search (``interleave_search``, which CP-SAT
            documents as deterministic for any number of workers) -- switched on here.
        mark_to_market: include the scenarios' ``q dS`` term in the objective.
        objective_scale: coefficients are rounded to multiples of ``1 / objective_scale``.
        hint: optional ``f[n_steps]`` depths (on the grid) given to CP-SAT as a start. By
            default the best feasible one (on the sample) of the constant schedules and of
            ``best_open_loop`` shifted 0, 1, ... levels wider (see ``_warm_start``).
        seed: CP-SAT's random seed.

    Raises:
        ValueError: bad inputs, before any scenario is drawn or model built.
        ImportError: OR-Tools is not installed (``pip install 'jaxmm[cp]'``).
        RuntimeError: no feasible schedule found (INFEASIBLE, or none within the time limit).
    """
    inputs = _check_solve_inputs(
        params, phi, n_scenarios, levels, q_bound, time_limit, workers, seed,
        deterministic_time, objective_scale, hint,
    )  # fmt: skip
    phi, n_scenarios, grid, q_bound, time_limit, workers, seed = inputs[:7]
    deterministic_time, objective_scale, hint = inputs[7:]
    cp_model = _cp_model()

    started = time.perf_counter()
    scenarios = sample_scenarios(params, key, n_scenarios, grid)
    hint_index = (
        _warm_start(scenarios, params, phi, q_bound)
        if hint is None
        else np.searchsorted(grid, hint)
    )
    model, choices, inventories, squares, counts = _build(
        cp_model, scenarios, phi, q_bound, symmetric, mark_to_market, objective_scale
    )
    if hint_index is not None:
        _add_hint(model, scenarios, phi, hint_index, choices, inventories, squares)
    build_seconds = time.perf_counter() - started

    solver, name = _run_solver(
        cp_model, model, time_limit, workers, seed, deterministic_time, q_bound, n_scenarios
    )
    return _solution(
        solver, name, scenarios, grid, choices, phi, q_bound, symmetric, mark_to_market,
        objective_scale, build_seconds, counts,
    )  # fmt: skip


def _check_solve_inputs(
    params, phi, n_scenarios, levels, q_bound, time_limit, workers, seed, deterministic_time,
    objective_scale, hint,
) -> tuple:  # fmt: skip
    """Validate ``solve_schedule``'s inputs (in this order), before any scenario is drawn.

    Returns ``(phi, n_scenarios, grid, q_bound, time_limit, workers, seed,
    deterministic_time, objective_scale, hint)``, normalised (``grid`` sorted ``f64[L]``,
    ``hint`` ``f64[N]`` or None); ValueError on the first bad one.
    """
    _check_market(params)
    phi = validation.number("phi", phi, lambda v: 0 <= v < math.inf, "0 <= phi < inf")
    n_scenarios = validation.integer("n_scenarios", n_scenarios, 1, "an integer >= 1")
    grid = check_levels(levels)
    q_bound = validation.integer("q_bound", q_bound, 1, "an integer >= 1")
    if not float(params.q_max) > q_bound:
        raise ValueError(
            f"q_bound = {q_bound} with params.q_max = {params.q_max}; allowed: q_bound < q_max "
            "(the market's limit must not act on the sampled paths)"
        )
    time_limit = validation.number("time_limit", time_limit, lambda v: 0 < v < math.inf, "> 0")
    workers = validation.integer("workers", workers, 1, "an integer >= 1")
    seed = validation.integer("seed", seed, 0, "an integer >= 0")
    if deterministic_time is not None:
        deterministic_time = validation.number(
            "deterministic_time", deterministic_time, lambda v: 0 < v < math.inf, "> 0 or None"
        )
    objective_scale = validation.number(
        "objective_scale", objective_scale, lambda v: 1 <= v <= 1e9, "1 <= objective_scale <= 1e9"
    )
    n_steps = params.n_steps
    if hint is not None:
        hint = np.asarray(hint, np.float64)
        if hint.shape != (n_steps,) or not np.all(np.isin(hint, grid)):
            raise ValueError(f"hint must be f[{n_steps}] with every entry one of levels")
    return (
        phi, n_scenarios, grid, q_bound, time_limit, workers, seed, deterministic_time,
        objective_scale, hint,
    )  # fmt: skip


def _add_hint(model, scenarios: Scenarios, phi, hint_index, choices, inventories, squares):
    """Give CP-SAT a complete hint (choices, inventories, squares) of the symmetric schedule
    ``hint_index`` (``i64[N]`` level indices): the search starts from a feasible point."""
    n_scen, n_steps, n_levels = scenarios.bid_fills.shape
    for side in choices:
        for t in range(n_steps):
            for j in range(n_levels):
                model.AddHint(side[t][j], int(hint_index[t] == j))
    path = sample_average(scenarios, hint_index, hint_index, phi)["inventory"][:, 1:]
    for s in range(n_scen):
        for t in range(n_steps):
            model.AddHint(inventories[s][t], int(path[s, t]))
            if squares:
                model.AddHint(squares[s][t], int(path[s, t]) ** 2)


def _run_solver(cp_model, model, time_limit, workers, seed, deterministic_time, q_bound, n_scen):
    """Solve ``model`` with CP-SAT under the limits: ``(solver, status name)``.

    RuntimeError when the model is INFEASIBLE or no solution is found within the limits.
    """
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit
    solver.parameters.num_workers = workers
    solver.parameters.random_seed = seed
    if deterministic_time is not None:
        solver.parameters.max_deterministic_time = deterministic_time
        solver.parameters.interleave_search = workers > 1
    status = solver.Solve(model)
    name = solver.StatusName(status)
    if status == cp_model.INFEASIBLE:
        raise RuntimeError(
            f"CP-SAT status INFEASIBLE: no schedule on the grid keeps |q| <= q_bound = {q_bound} "
            f"in all {n_scen} scenarios; raise q_bound or add wider levels"
        )
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise RuntimeError(
            f"CP-SAT status {name} after {solver.WallTime():.1f} s: no schedule found within "
            "the limits; raise time_limit (or deterministic_time)"
        )
    return solver, name


def _chosen_levels(solver, side) -> np.ndarray:
    """The level index ``i64[N]`` picked at each step by one side's ``[N][L]`` one-hot
    variables in ``solver``'s solution."""
    n_levels = len(side[0])
    return np.array(
        [
            max(range(n_levels), key=lambda j, t=t: solver.Value(side[t][j]))
            for t in range(len(side))
        ]
    )


def _solution(
    solver, name, scenarios: Scenarios, grid, choices, phi, q_bound, symmetric, mark_to_market,
    objective_scale, build_seconds, counts,
) -> ScheduleSolution:  # fmt: skip
    """Read the schedule off the solved model, recompute its sample average in float64 and
    assemble the ``ScheduleSolution`` (solver values per episode, the rounding bound)."""
    n_scenarios, n_steps = scenarios.mid_change.shape
    bid_level = _chosen_levels(solver, choices[0])
    ask_level = bid_level if symmetric else _chosen_levels(solver, choices[1])
    value = sample_average(scenarios, bid_level, ask_level, phi)
    model_objective = value["objective"] - (0.0 if mark_to_market else value["mark_to_market"])
    per_episode = objective_scale * n_scenarios
    n_sides = 1 if symmetric else 2
    rounding = (
        0.5
        / objective_scale
        * n_steps
        * (n_sides + q_bound * mark_to_market + q_bound**2 * (phi > 0))
    )
    solver_objective = solver.ObjectiveValue() / per_episode
    best_bound = solver.BestObjectiveBound() / per_episode
    return ScheduleSolution(
        bid_depth=grid[bid_level],
        ask_depth=grid[ask_level],
        bid_level=bid_level,
        ask_level=ask_level,
        levels=grid,
        objective=value["objective"],
        spread_capture=value["spread_capture"],
        mark_to_market=value["mark_to_market"],
        penalty=value["penalty"],
        model_objective=model_objective,
        solver_objective=solver_objective,
        best_bound=best_bound,
        gap=best_bound - solver_objective,
        rounding_bound=rounding,
        status=name,
        wall_seconds=solver.WallTime(),
        build_seconds=build_seconds,
        max_abs_inventory=int(np.abs(value["inventory"]).max()),
        n_scenarios=n_scenarios,
        q_bound=q_bound,
        phi=phi,
        symmetric=bool(symmetric),
        include_mark_to_market=bool(mark_to_market),
        n_variables=counts[0],
        n_constraints=counts[1],
    )


def _warm_start(
    scenarios: Scenarios, params: MarketParams, phi: float, q_bound: int
) -> np.ndarray | None:
    """A feasible start for CP-SAT: level indices ``i64[N]``, or None if none is found.

    Candidates: ``best_open_loop`` (in a symmetric market) shifted ``0..L-1`` levels wider
    (clipped at the widest), and each constant schedule; the one with the best sample average
    among those that keep ``|q| <= q_bound`` in every scenario.
    """
    n_levels = scenarios.levels.size
    n_steps = scenarios.mid_change.shape[1]
    candidates = [np.full(n_steps, j) for j in range(n_levels)]
    if float(params.bid_intensity_mult) == float(params.ask_intensity_mult):
        base = np.searchsorted(scenarios.levels, best_open_loop(params, phi, scenarios.levels))
        candidates += [np.minimum(base + shift, n_levels - 1) for shift in range(n_levels)]
    best, best_value = None, -math.inf
    for levels in candidates:
        value = sample_average(scenarios, levels, levels, phi)
        if np.abs(value["inventory"]).max() <= q_bound and value["objective"] > best_value:
            best, best_value = levels, value["objective"]
    return best


def _build(cp_model, scenarios: Scenarios, phi, q_bound, symmetric, mark_to_market, scale):
    """The CP-SAT model: ``(model, choices, inventories, squares, (n_vars, n_constraints))``.

    ``choices``: one ``[N][L]`` list of Boolean variables per side (one side if symmetric);
    ``inventories``, ``squares``: ``[S][N]`` variables ``q[s, t+1]`` and ``q[s, t+1]^2``
    (``squares`` is empty when ``phi = 0``).
    """
    model = cp_model.CpModel()
    n_scen, n_steps, n_levels = scenarios.bid_fills.shape
    levels = scenarios.levels
    sides = 1 if symmetric else 2
    choices = [
        [[model.NewBoolVar(f"x{side}[{t},{j}]") for j in range(n_levels)] for t in range(n_steps)]
        for side in range(sides)
    ]
    bid_choice = choices[0]
    ask_choice = choices[0] if symmetric else choices[1]
    for side in choices:
        for t in range(n_steps):
            model.AddExactlyOne(side[t])

    objective = []
    # Spread capture: linear in the choices with scenario-summed coefficients.
    bid_counts = scenarios.bid_fills.sum(axis=0)  # [N, L]
    ask_counts = scenarios.ask_fills.sum(axis=0)
    for t in range(n_steps):
        for j in range(n_levels):
            if symmetric:
                coefficient = levels[j] * (bid_counts[t, j] + ask_counts[t, j])
                objective.append((bid_choice[t][j], coefficient))
            else:
                objective.append((bid_choice[t][j], levels[j] * bid_counts[t, j]))
                objective.append((ask_choice[t][j], levels[j] * ask_counts[t, j]))

    squares = [(2 * m + 1, -m * (m + 1)) for m in range(-q_bound, q_bound)]
    net = scenarios.bid_fills.astype(np.int64) - scenarios.ask_fills.astype(np.int64)
    inventories, square_vars = [], []
    for s in range(n_scen):
        inventories.append([])
        if phi > 0:
            square_vars.append([])
        inventory = 0
        for t in range(n_steps):
            if symmetric:
                terms = [(bid_choice[t][j], int(net[s, t, j])) for j in range(n_levels)]
            else:
                terms = [
                    (bid_choice[t][j], int(scenarios.bid_fills[s, t, j])) for j in range(n_levels)
                ]
                terms += [
                    (ask_choice[t][j], -int(scenarios.ask_fills[s, t, j])) for j in range(n_levels)
                ]
            change = sum(variable * c for variable, c in terms if c != 0)
            after = model.NewIntVar(-q_bound, q_bound, f"q[{s},{t + 1}]")
            model.Add(after == inventory + change)
            inventory = after
            inventories[s].append(after)
            if mark_to_market:
                objective.append((after, scenarios.mid_change[s, t]))
            if phi > 0:
                square = model.NewIntVar(0, q_bound * q_bound, f"sq[{s},{t + 1}]")
                for slope, intercept in squares:
                    model.Add(square >= slope * after + intercept)
                square_vars[s].append(square)
                objective.append((square, -phi))
    model.Maximize(
        sum(variable * round(c * scale) for variable, c in objective if round(c * scale) != 0)
    )
    proto = model.Proto()
    counts = (len(proto.variables), len(proto.constraints))
    return model, choices, inventories, square_vars, counts
