"""Float64 NumPy/SciPy reference implementations of the exact market-making optima.

A test oracle for ``jaxmm.optimal``, written independently of it from the primary literature.
Every function favours obvious correctness over speed and returns plain NumPy arrays.

Conventions (the same as jaxmm's): time in session units, the session is ``[0, T]``; ``sigma`` in
price units per sqrt(time unit); ``A`` arrivals per time unit at depth 0; ``k`` per price unit;
intensity ``A exp(-k delta)``; depths are distances from the mid (``bid = S - bid_depth``,
``ask = S + ask_depth``). Inventories are the integers ``-Q..Q`` in ascending order, so column
``j`` of a table is inventory ``inventories[j]``. A side that may not be quoted (the bid at
``q = Q``, the ask at ``q = -Q``) has depth NaN.

1. GLFT: Gueant, Lehalle & Fernandez-Tapia (2013), "Dealing with the inventory risk: a solution
   to the market making problem", Math. Financ. Econ. 7:477-507 (arXiv:1105.3115). CARA utility
   ``E[-exp(-gamma (X_T + q_T S_T))]``, ``dS = sigma dW``, inventory in ``{-Q..Q}``.
   Proposition 2: ``v(t) = exp(-M (T - t)) v(T)`` with ``M`` tridiagonal, ``M_qq = alpha q^2``,
   ``M_{q,q+-1} = -eta``, ``alpha = k gamma sigma^2 / 2``,
   ``eta = A (1 + gamma/k)^(-(1 + k/gamma))``; ``v(T) = 1``.
   Theorem 1: value ``u = -exp(-gamma (x + q s)) v_q(t)^(-gamma/k)`` and
   ``delta_b = (1/k) ln(v_q / v_{q+1}) + (1/gamma) ln(1 + gamma/k)`` (q < Q),
   ``delta_a = (1/k) ln(v_q / v_{q-1}) + (1/gamma) ln(1 + gamma/k)`` (q > -Q).
   Terminal penalty (the paper's footnote on ``-b(|q_T|)``): utility of
   ``X_T + q_T S_T - b q_T^2`` gives ``v_q(T) = exp(-k b q^2)``. Certainty equivalent:
   ``-exp(-gamma CE) = u`` gives ``CE = x + q s + (1/k) ln v_q(t)``; ``value`` is
   ``theta(t, q) = (1/k) ln v_q(t)``.
   Theorem 2 (T -> inf): the depths tend to the same formulas with ``v`` replaced by the
   eigenvector ``f0`` of the smallest eigenvalue of ``M``; Section 4's closed-form
   approximation (continuous-inventory Hermite function) is
   ``delta_b ~ c + (2q + 1)/2 w``, ``delta_a ~ c - (2q - 1)/2 w``,
   ``c = (1/gamma) ln(1 + gamma/k)``,
   ``w = sqrt(sigma^2 gamma / (2 k A) (1 + gamma/k)^(1 + k/gamma)) = sqrt(alpha / eta) / k``.
2. Cartea-Jaimungal: Cartea, Jaimungal & Penalva (2015), "Algorithmic and High-Frequency
   Trading", section 10.2. Risk neutral, running penalty ``phi int q^2 dt``, terminal penalty
   ``alpha q_T^2``. ``H = x + q S + h(t, q)`` with
   ``0 = d_t h - phi q^2 + sup_db A e^{-k db} (db + h(q+1) - h(q)) 1{q<Q}
                         + sup_da A e^{-k da} (da + h(q-1) - h(q)) 1{q>-Q}``,
   ``h(T, q) = -alpha q^2``.
   The supremum of ``e^{-k d}(d + D)`` is at ``d = 1/k - D`` with value ``e^{k D - 1} / k``;
   ``h = (1/k) ln omega`` linearises the system: ``omega(t) = exp(B (T - t)) z`` (eq. 10.11),
   ``B_qq = -phi k q^2``, ``B_{q,q+-1} = A / e``, ``z_q = exp(-alpha k q^2)``. Depths:
   ``db = 1/k - (h(q+1) - h(q))``, ``da = 1/k - (h(q-1) - h(q))``. Depths are unconstrained
   (they may be negative), as in the book.
3. The exact dynamic programme of jaxmm's discrete-time MDP (``jaxmm.market.step_with_noise``),
   by brute-force joint maximisation over (bid depth, ask depth).
4. The explicit finite-difference (backward Euler) scheme for the Cartea-Jaimungal system.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.linalg import eigvalsh_tridiagonal, expm

FILL_MODELS = ("linear", "exponential")


def _check(ok: bool, name: str, value: object, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{name} = {value!r} is out of range; allowed: {allowed}")


def _check_common(A: float, k: float, q_max: float, T: float) -> None:
    _check(A > 0, "A", A, "> 0")
    _check(k > 0, "k", k, "> 0")
    _check(T > 0, "T", T, "> 0")
    _check(
        math.isinf(q_max) or (q_max >= 1 and q_max == round(q_max)),
        "q_max",
        q_max,
        "an integer >= 1 (or inf where stated)",
    )


def _check_times(times: np.ndarray, T: float) -> np.ndarray:
    times = np.atleast_1d(np.asarray(times, np.float64))
    _check(bool(np.all((times >= 0) & (times <= T))), "times", times, f"within [0, T] = [0, {T}]")
    return times


def _expm_propagate(
    generator: np.ndarray, terminal: np.ndarray, time_to_go: np.ndarray
) -> np.ndarray:
    """``log(exp(generator * tau) @ terminal)`` for each ``tau`` in ``time_to_go``, stably.

    ``generator`` is symmetric tridiagonal. Its largest eigenvalue ``lam`` is factored out,
    ``exp(G tau) = exp(lam tau) exp((G - lam I) tau)``, so nothing under- or overflows for long
    horizons (``exp((G - lam I) s)`` has spectral radius 1). The times to go are visited in
    increasing order and each is reached from the previous one by the semigroup property,
    ``exp(G tau_{i+1}) z = exp(G (tau_{i+1} - tau_i)) exp(G tau_i) z``, with one ``expm`` per
    distinct increment (one or two on a uniform grid). Returns ``log_solution [n_t, n_q]``.
    """
    n = generator.shape[0]
    diagonal, off = np.diag(generator).copy(), np.diag(generator, 1).copy()
    lam = float(eigvalsh_tridiagonal(diagonal, off, select="i", select_range=(n - 1, n - 1))[0])
    shifted = generator - lam * np.eye(n)
    order = np.argsort(time_to_go, kind="stable")
    propagators: dict[float, np.ndarray] = {}
    solution = np.empty((time_to_go.size, n))
    current, current_tau = terminal.astype(np.float64), 0.0
    for index in order:
        increment = float(time_to_go[index] - current_tau)
        key = round(increment, 13)
        if key not in propagators:
            propagators[key] = expm(shifted * increment)
        current, current_tau = propagators[key] @ current, float(time_to_go[index])
        solution[index] = current
    return np.log(solution) + lam * time_to_go[:, None]


def _tridiagonal(diagonal: np.ndarray, off_diagonal: float) -> np.ndarray:
    n = diagonal.size
    return np.diag(diagonal) + off_diagonal * np.eye(n, k=1) + off_diagonal * np.eye(n, k=-1)


def _depths_from_value(
    value: np.ndarray, k: float, constant: float
) -> tuple[np.ndarray, np.ndarray]:
    """``bid = constant - (value(q+1) - value(q))``, ``ask = constant - (value(q-1) - value(q))``.

    ``value [n_t, n_q]`` on ascending inventories; NaN where the move leaves the grid.
    """
    bid = np.full_like(value, np.nan)
    ask = np.full_like(value, np.nan)
    bid[:, :-1] = constant - (value[:, 1:] - value[:, :-1])
    ask[:, 1:] = constant - (value[:, :-1] - value[:, 1:])
    return bid, ask


def glft_exact(
    sigma: float,
    A: float,
    k: float,
    gamma: float,
    q_max: int,
    T: float,
    times: np.ndarray,
    terminal_penalty: float = 0.0,
) -> dict[str, np.ndarray]:
    """Exact GLFT optimal quotes and certainty-equivalent value (matrix exponential).

    Args:
        sigma: price units per sqrt(time unit). A: per time unit. k: per price unit.
        gamma: absolute risk aversion, per price unit. q_max: inventory limit ``Q`` (integer).
        T: horizon, time units. times: ``[n_t]`` times in ``[0, T]``.
        terminal_penalty: ``b`` in the terminal wealth ``X_T + q_T S_T - b q_T^2`` (price units
            per unit^2); 0 is the paper's setting (``v(T) = 1``).
    Returns:
        ``times [n_t]``, ``inventories [n_q]`` (``-Q..Q``), ``bid_depth``, ``ask_depth``
        ``[n_t, n_q]`` (price units; NaN at ``q = Q`` / ``q = -Q``), ``value [n_t, n_q]``:
        ``theta = (1/k) ln v_q(t)``, the certainty equivalent minus ``x + q s`` (price units).
    """
    _check_common(A, k, q_max, T)
    _check(math.isfinite(q_max), "q_max", q_max, "a finite integer >= 1")
    _check(sigma >= 0, "sigma", sigma, ">= 0")
    _check(gamma > 0, "gamma", gamma, "> 0")
    _check(terminal_penalty >= 0, "terminal_penalty", terminal_penalty, ">= 0")
    times = _check_times(times, T)
    inventories = np.arange(-int(q_max), int(q_max) + 1)
    q = inventories.astype(np.float64)
    alpha = 0.5 * k * gamma * sigma**2
    eta = A * (1.0 + gamma / k) ** (-(1.0 + k / gamma))
    # v' = M v backwards from T: v(t) = exp(-M (T - t)) v(T); the generator is -M.
    generator = _tridiagonal(-alpha * q**2, eta)
    terminal = np.exp(-k * terminal_penalty * q**2)
    log_v = _expm_propagate(generator, terminal, T - times)
    value = log_v / k
    constant = math.log1p(gamma / k) / gamma
    bid, ask = _depths_from_value(value, k, constant)
    return {
        "times": times,
        "inventories": inventories,
        "bid_depth": bid,
        "ask_depth": ask,
        "value": value,
    }


def glft_ergodic(
    sigma: float, A: float, k: float, gamma: float, q_max: int
) -> dict[str, np.ndarray]:
    """GLFT Theorem 2: the ``T -> inf`` limit of the optimal depths from the ground state of M.

    ``f0`` is the (positive, symmetric) eigenvector of the smallest eigenvalue ``lam`` of ``M``;
    ``bid = c + (1/k) ln(f0_q / f0_{q+1})``, ``ask = c + (1/k) ln(f0_q / f0_{q-1})``. The ratios
    ``r_q = f0_q / f0_{q+1}`` come from the eigen-equation read from the edge inwards, the stable
    direction: ``r_{Q-1} = (alpha Q^2 - lam) / eta``, ``r_{q-1} = (alpha q^2 - lam) / eta - 1/r_q``
    (a dense eigensolver loses the components below ``1e-16`` of the largest, which sets the
    quotes at large ``|q|``). Returns ``inventories [n_q]``, ``bid_depth``, ``ask_depth``
    ``[n_q]`` (NaN at ``+-Q``), ``eigenvalue``.
    """
    _check_common(A, k, q_max, 1.0)
    _check(math.isfinite(q_max), "q_max", q_max, "a finite integer >= 1")
    _check(sigma > 0, "sigma", sigma, "> 0")
    _check(gamma > 0, "gamma", gamma, "> 0")
    Q = int(q_max)
    inventories = np.arange(-Q, Q + 1)
    q = inventories.astype(np.float64)
    alpha = 0.5 * k * gamma * sigma**2
    eta = A * (1.0 + gamma / k) ** (-(1.0 + k / gamma))
    lam = float(
        eigvalsh_tridiagonal(alpha * q**2, np.full(2 * Q, -eta), select="i", select_range=(0, 0))[0]
    )
    log_ratio = np.empty(Q)  # log(f_q / f_{q+1}) for q = 0..Q-1
    ratio = (alpha * Q**2 - lam) / eta
    log_ratio[Q - 1] = math.log(ratio)
    for level in range(Q - 1, 0, -1):
        ratio = (alpha * level**2 - lam) / eta - 1.0 / ratio
        log_ratio[level - 1] = math.log(ratio)
    upper = np.concatenate([np.cumsum(log_ratio[::-1])[::-1], [0.0]])  # log f_q, q = 0..Q
    log_f = np.concatenate([upper[:0:-1], upper])
    bid, ask = _depths_from_value(log_f[None, :] / k, k, math.log1p(gamma / k) / gamma)
    return {
        "inventories": inventories,
        "bid_depth": bid[0],
        "ask_depth": ask[0],
        "eigenvalue": np.float64(lam),
    }


def glft_asymptotic(
    sigma: float, A: float, k: float, gamma: float, inventories: np.ndarray
) -> dict[str, np.ndarray]:
    """GLFT section 4 closed-form approximation of the ``T -> inf`` depths (price units).

    ``bid = c + (2q + 1)/2 w``, ``ask = c - (2q - 1)/2 w`` with ``c = (1/gamma) ln(1 + gamma/k)``
    and ``w = sqrt(sigma^2 gamma / (2 k A) (1 + gamma/k)^(1 + k/gamma))``. An approximation
    (the discrete ground state replaced by a Gaussian), not an exact limit.
    """
    q = np.asarray(inventories, np.float64)
    c = math.log1p(gamma / k) / gamma
    w = math.sqrt(sigma**2 * gamma / (2 * k * A) * (1 + gamma / k) ** (1 + k / gamma))
    return {"bid_depth": c + (2 * q + 1) / 2 * w, "ask_depth": c - (2 * q - 1) / 2 * w}


def cartea_jaimungal_exact(
    A: float, k: float, phi: float, alpha: float, q_max: int, T: float, times: np.ndarray
) -> dict[str, np.ndarray]:
    """Exact Cartea-Jaimungal (CJP 2015, section 10.2) depths and value by matrix exponential.

    Args:
        A: arrivals per time unit at depth 0 (each side). k: per price unit.
        phi: running inventory penalty, price units per unit^2 per time unit.
        alpha: terminal inventory penalty, price units per unit^2. q_max: limit ``Q``.
        T: horizon, time units. times: ``[n_t]`` times in ``[0, T]``.
    Returns:
        ``times``, ``inventories [n_q]``, ``bid_depth``, ``ask_depth`` ``[n_t, n_q]`` (NaN on the
        unquoted side at ``+-Q``), ``value [n_t, n_q]``: ``h(t, q)`` in price units
        (``H = x + q S + h``).
    """
    _check_common(A, k, q_max, T)
    _check(math.isfinite(q_max), "q_max", q_max, "a finite integer >= 1")
    _check(phi >= 0, "phi", phi, ">= 0")
    _check(alpha >= 0, "alpha", alpha, ">= 0")
    times = _check_times(times, T)
    inventories = np.arange(-int(q_max), int(q_max) + 1)
    q = inventories.astype(np.float64)
    generator = _tridiagonal(-phi * k * q**2, A / math.e)
    terminal = np.exp(-alpha * k * q**2)
    log_omega = _expm_propagate(generator, terminal, T - times)
    value = log_omega / k
    bid, ask = _depths_from_value(value, k, 1.0 / k)
    return {
        "times": times,
        "inventories": inventories,
        "bid_depth": bid,
        "ask_depth": ask,
        "value": value,
    }


def cartea_jaimungal_fd(
    A: float, k: float, phi: float, alpha: float, q_max: int, T: float, n_steps: int
) -> dict[str, np.ndarray]:
    """Explicit backward-Euler scheme for the Cartea-Jaimungal system (the teaching method).

    ``h_N = -alpha q^2``; for ``n = N-1..0``, with the optimal depths read from ``h_{n+1}``:
    ``h_n(q) = h_{n+1}(q) + dt [-phi q^2 + A e^{-k db}(db + h_{n+1}(q+1) - h_{n+1}(q)) 1{q<Q}
                                        + A e^{-k da}(da + h_{n+1}(q-1) - h_{n+1}(q)) 1{q>-Q}]``,
    ``dt = T / n_steps``. First order in ``dt``.

    Returns:
        ``times [n_steps + 1]`` (``i dt``), ``inventories``, ``bid_depth``, ``ask_depth``,
        ``value`` ``[n_steps + 1, n_q]``; depths at row ``n`` are those of ``h_n``.
    """
    _check_common(A, k, q_max, T)
    _check(math.isfinite(q_max), "q_max", q_max, "a finite integer >= 1")
    _check(n_steps >= 1, "n_steps", n_steps, ">= 1")
    inventories = np.arange(-int(q_max), int(q_max) + 1)
    q = inventories.astype(np.float64)
    dt = T / n_steps
    value = np.empty((n_steps + 1, q.size))
    value[-1] = -alpha * q**2
    for n in range(n_steps - 1, -1, -1):
        h = value[n + 1]
        bid, ask = _depths_from_value(h[None, :], k, 1.0 / k)
        bid, ask = bid[0], ask[0]
        gain = np.zeros_like(h)
        gain[:-1] += A * np.exp(-k * bid[:-1]) * (bid[:-1] + h[1:] - h[:-1])
        gain[1:] += A * np.exp(-k * ask[1:]) * (ask[1:] + h[:-1] - h[1:])
        value[n] = h + dt * (gain - phi * q**2)
    bid, ask = _depths_from_value(value, k, 1.0 / k)
    return {
        "times": np.arange(n_steps + 1) * dt,
        "inventories": inventories,
        "bid_depth": bid,
        "ask_depth": ask,
        "value": value,
    }


def fill_probability(intensity_dt: np.ndarray, fill_model: str) -> np.ndarray:
    """Per-step fill probability: ``min(1, x)`` ("linear") or ``1 - exp(-x)`` ("exponential")."""
    if fill_model == "linear":
        return np.minimum(1.0, intensity_dt)
    return -np.expm1(-intensity_dt)


def _mdp_setup(
    A: float,
    k: float,
    T: float,
    n_steps: int,
    phi: float,
    fill_model: str,
    q_max: float,
    terminal_penalty: float,
    bid_mult: float,
    ask_mult: float,
) -> None:
    _check_common(A, k, q_max, T)
    _check(n_steps >= 1, "n_steps", n_steps, "an integer >= 1")
    _check(phi >= 0, "phi", phi, ">= 0")
    _check(terminal_penalty >= 0, "terminal_penalty", terminal_penalty, ">= 0")
    _check(fill_model in FILL_MODELS, "fill_model", fill_model, f"one of {FILL_MODELS}")
    _check(bid_mult >= 0, "bid_mult", bid_mult, ">= 0")
    _check(ask_mult >= 0, "ask_mult", ask_mult, ">= 0")


def _mdp_inventories(q_max: float, q_grid: int) -> np.ndarray:
    if math.isfinite(q_max):
        return np.arange(-int(q_max), int(q_max) + 1)
    _check(q_grid >= 1, "q_grid", q_grid, "an integer >= 1")
    return np.arange(-int(q_grid), int(q_grid) + 1)


def _induction_start(
    inventories: np.ndarray, q_max: float, n_steps: int, terminal_penalty: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What a backward induction on the ascending integer ``inventories [n_q]`` starts from.

    Returns ``(can_buy, can_sell, value)``: where a bid fill / an ask fill can happen
    (``[n_q]`` booleans: not at the limit ``q_max`` and not off the grid's edge) and the value
    table ``[n_steps + 1, n_q]`` whose last row is ``V_N(q) = -terminal_penalty q^2`` (the
    earlier rows are left for the induction to fill).
    """
    q = inventories.astype(np.float64)
    can_buy = (q < q_max) & (inventories < inventories[-1])
    can_sell = (q > -q_max) & (inventories > inventories[0])
    value = np.empty((n_steps + 1, inventories.size))
    value[-1] = -terminal_penalty * q**2
    return can_buy, can_sell, value


def _outcome_values(
    inventories: np.ndarray,
    next_value: np.ndarray,
    phi: float,
    expected_drift: float,
    adverse_selection: float,
) -> dict[tuple[int, int], np.ndarray]:
    """``g(fb, fa)[q]``: the reward after the spread plus the continuation, per fill outcome.

    ``q' = q + fb - fa``; ``g = q' (mu dt + adverse_selection (fa - fb)) - phi q'^2 + V(q')``.
    Outcomes that leave the grid get 0 (their probability is forced to 0 by the caller).
    """
    n_q = inventories.size
    q = inventories.astype(np.float64)
    index = np.arange(n_q)
    values = {}
    for bid_fill in (0, 1):
        for ask_fill in (0, 1):
            shift = bid_fill - ask_fill
            target = index + shift
            inside = (target >= 0) & (target < n_q)
            next_q = q + shift
            jump = adverse_selection * (ask_fill - bid_fill)
            continuation = np.where(inside, next_value[np.clip(target, 0, n_q - 1)], 0.0)
            g = next_q * (expected_drift + jump) - phi * next_q**2 + continuation
            values[(bid_fill, ask_fill)] = np.where(inside, g, 0.0)
    return values


def _one_step_objective(
    bid_prob: np.ndarray,
    bid_depth: np.ndarray,
    ask_prob: np.ndarray,
    ask_depth: np.ndarray,
    g: dict[tuple[int, int], np.ndarray],
) -> np.ndarray:
    """Expected reward plus continuation of one step, minus ``g00``, per (q, bid, ask) candidate.

    ``bid_prob, bid_depth: [n_q, n_b]``, ``ask_prob, ask_depth: [n_q, n_a]`` -> ``[n_q, n_b, n_a]``:
    ``sum_{fb, fa} P(fb) P(fa) [fb db + fa da + g(fb, fa)] - g00``, rearranged as
    ``pb pa (g11 - g10 - g01 + g00) + pb (db + g10 - g00) + pa (da + g01 - g00)``. Leaving out
    the depth-independent ``g00`` (the value of no fill, of the order of the whole value) keeps
    the rounding error of the comparisons at the scale of one step's gain.
    """
    cross = (g[(1, 1)] - g[(1, 0)] - g[(0, 1)] + g[(0, 0)])[:, None, None]
    bid_term = bid_prob * (np.nan_to_num(bid_depth) + (g[(1, 0)] - g[(0, 0)])[:, None])
    ask_term = ask_prob * (np.nan_to_num(ask_depth) + (g[(0, 1)] - g[(0, 0)])[:, None])
    return (
        cross * bid_prob[:, :, None] * ask_prob[:, None, :]
        + bid_term[:, :, None]
        + ask_term[:, None, :]
    )


def bellman_bruteforce(
    A: float,
    k: float,
    T: float,
    n_steps: int,
    phi: float,
    *,
    fill_model: str = "linear",
    q_max: float = np.inf,
    q_grid: int = 30,
    terminal_penalty: float = 0.0,
    mu: float = 0.0,
    adverse_selection: float = 0.0,
    bid_mult: float = 1.0,
    ask_mult: float = 1.0,
    depth_bounds: tuple[float, float] = (0.01, 5.0),
    coarse_points: int = 101,
) -> dict[str, np.ndarray]:
    """Exact dynamic programme of jaxmm's MDP by brute-force joint search over both depths.

    The MDP (``jaxmm.market.step_with_noise``, arithmetic or binary mid): at step ``n`` in state
    ``q`` the agent quotes ``(db, da)`` in ``depth_bounds``; the bid fills with probability
    ``pb = fill_probability(A bid_mult e^{-k db} dt)`` unless ``q >= q_max``, the ask
    independently with ``pa`` unless ``q <= -q_max``; ``q' = q + fb - fa``; the reward is
    ``fb db + fa da + q' (S_{n+1} - S_n) - phi q'^2`` whose expectation given the fills is
    ``fb db + fa da + q' (mu dt + adverse_selection (fa - fb)) - phi q'^2`` (the Brownian or
    binary increment has mean 0, so the value depends on ``(n, q)`` only). ``phi`` is per step.
    ``V_N(q) = -terminal_penalty q^2``.

    Unbounded inventory (``q_max = inf``) is truncated to ``|q| <= q_grid``; at the grid edge a
    fill that would leave the grid is impossible (an artificial limit). From ``q = 0`` the edge
    is reachable only if ``q_grid < n_steps``, so ``value[0, q=0]`` is exact when
    ``q_grid >= n_steps`` and, with ``phi > 0``, insensitive to it long before.

    Maximisation: for every ``(n, q)`` the one-step objective is evaluated on a
    ``coarse_points x coarse_points`` grid over ``depth_bounds``, then on 21 x 21 local grids
    spanning +-2 spacings around the best point, the spacing shrinking 5-fold per level until it
    is below 1e-11 price units (the objective is then within ~1e-12 of its maximum). Cost:
    ``n_steps * n_q * (coarse_points^2 + 15 * 441)`` objective evaluations, vectorised over
    ``q``; N = 200, |q| <= 40 takes a few seconds.

    Returns:
        ``inventories [n_q]``, ``times [n_steps + 1]``, ``value [n_steps + 1, n_q]`` (expected
        reward to go, price units), ``bid_depth``, ``ask_depth`` ``[n_steps, n_q]`` (price
        units; NaN where that side cannot be filled).
    """
    _mdp_setup(A, k, T, n_steps, phi, fill_model, q_max, terminal_penalty, bid_mult, ask_mult)
    low, high = depth_bounds
    _check(
        math.isfinite(low) and math.isfinite(high) and low < high,
        "depth_bounds",
        depth_bounds,
        "finite (low, high) with low < high (a negative depth quotes through the mid)",
    )
    inventories = _mdp_inventories(q_max, q_grid)
    n_q = inventories.size
    dt = T / n_steps
    can_buy, can_sell, value = _induction_start(inventories, q_max, n_steps, terminal_penalty)

    def probabilities(depth: np.ndarray, mult: float, allowed: np.ndarray) -> np.ndarray:
        prob = fill_probability(A * mult * np.exp(-k * depth) * dt, fill_model)
        return prob * allowed[:, None]

    bid_table = np.empty((n_steps, n_q))
    ask_table = np.empty((n_steps, n_q))
    coarse = np.broadcast_to(np.linspace(low, high, coarse_points), (n_q, coarse_points))
    rows = np.arange(n_q)
    local = np.linspace(-2.0, 2.0, 21)
    for n in range(n_steps - 1, -1, -1):
        g = _outcome_values(inventories, value[n + 1], phi, mu * dt, adverse_selection)
        bid_grid, ask_grid = coarse, coarse
        spacing = (high - low) / (coarse_points - 1)
        while True:
            objective = _one_step_objective(
                probabilities(bid_grid, bid_mult, can_buy),
                bid_grid,
                probabilities(ask_grid, ask_mult, can_sell),
                ask_grid,
                g,
            )
            flat = objective.reshape(n_q, -1).argmax(axis=1)
            best_bid_index, best_ask_index = np.divmod(flat, ask_grid.shape[1])
            best_bid = bid_grid[rows, best_bid_index]
            best_ask = ask_grid[rows, best_ask_index]
            best = objective[rows, best_bid_index, best_ask_index]
            if spacing < 1e-11:
                break
            bid_grid = np.clip(best_bid[:, None] + spacing * local, low, high)
            ask_grid = np.clip(best_ask[:, None] + spacing * local, low, high)
            spacing /= 5.0
        value[n] = best + g[(0, 0)]
        bid_table[n] = np.where(can_buy, best_bid, np.nan)
        ask_table[n] = np.where(can_sell, best_ask, np.nan)
    return {
        "inventories": inventories,
        "times": np.arange(n_steps + 1) * dt,
        "value": value,
        "bid_depth": bid_table,
        "ask_depth": ask_table,
    }


def evaluate_policy(
    A: float,
    k: float,
    T: float,
    n_steps: int,
    phi: float,
    bid_depth: np.ndarray,
    ask_depth: np.ndarray,
    inventories: np.ndarray,
    *,
    fill_model: str = "linear",
    q_max: float = np.inf,
    terminal_penalty: float = 0.0,
    mu: float = 0.0,
    adverse_selection: float = 0.0,
    bid_mult: float = 1.0,
    ask_mult: float = 1.0,
) -> np.ndarray:
    """Exact expected total reward of a fixed ``(n, q)``-Markov quote table (no maximisation).

    The MDP of ``bellman_bruteforce``; ``bid_depth, ask_depth: [n_steps, n_q]`` on the ascending
    integer ``inventories [n_q]``; a NaN or ``+inf`` depth means that side is not quoted. A fill
    that would leave the grid is impossible (as in ``bellman_bruteforce``).

    Returns:
        ``value [n_steps + 1, n_q]``: expected reward to go from step ``n`` at inventory ``q``.
    """
    _mdp_setup(A, k, T, n_steps, phi, fill_model, q_max, terminal_penalty, bid_mult, ask_mult)
    inventories = np.asarray(inventories)
    bid_depth = np.asarray(bid_depth, np.float64)
    ask_depth = np.asarray(ask_depth, np.float64)
    n_q = inventories.size
    _check(
        bid_depth.shape == (n_steps, n_q) and ask_depth.shape == (n_steps, n_q),
        "bid_depth/ask_depth shape",
        (bid_depth.shape, ask_depth.shape),
        f"({n_steps}, {n_q})",
    )
    _check(
        bool(np.all(np.diff(inventories) == 1)), "inventories", inventories, "consecutive integers"
    )
    dt = T / n_steps
    can_buy, can_sell, value = _induction_start(inventories, q_max, n_steps, terminal_penalty)
    rows = np.arange(n_q)
    for n in range(n_steps - 1, -1, -1):
        g = _outcome_values(inventories, value[n + 1], phi, mu * dt, adverse_selection)
        bid, ask = bid_depth[n][:, None], ask_depth[n][:, None]
        quoted_bid = can_buy[:, None] & np.isfinite(bid)
        quoted_ask = can_sell[:, None] & np.isfinite(ask)
        with np.errstate(invalid="ignore"):
            bid_prob = np.where(
                quoted_bid, fill_probability(A * bid_mult * np.exp(-k * bid) * dt, fill_model), 0.0
            )
            ask_prob = np.where(
                quoted_ask, fill_probability(A * ask_mult * np.exp(-k * ask) * dt, fill_model), 0.0
            )
        bid = np.where(quoted_bid, bid, 0.0)
        ask = np.where(quoted_ask, ask, 0.0)
        gain = _one_step_objective(bid_prob, bid, ask_prob, ask, g)[rows, 0, 0]
        value[n] = gain + g[(0, 0)]
    return value
