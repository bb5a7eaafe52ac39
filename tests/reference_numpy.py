"""Float64 NumPy reference simulator used as a test oracle for the JAX simulator.

The reference consumes externally supplied noise (uniforms for fills, standard normals for the
mid), so the JAX simulator can be checked against it on identical draws. It is vectorised over
episodes and loops over steps; it favours obvious correctness over speed.

Conventions (price units for prices/depths/pnl, time units for ``T`` and ``dt``):

* ``dt = T / n_steps``; step ``i`` covers ``[i dt, (i + 1) dt)``.
* Quotes are depths ``delta_b`` (bid = S - delta_b) and ``delta_a`` (ask = S + delta_a).
* Fill intensity ``lambda = A exp(-k delta)`` per time unit and side; per-step fill probability is
  ``min(1, lambda dt)`` ("linear") or ``1 - exp(-lambda dt)`` ("exponential").
* ``q_{i+1} = q_i + bid_fill - ask_fill``; the mid moves arithmetically with an adverse-selection
  jump ``alpha (ask_fill - bid_fill)``, drift ``mu dt`` and diffusion ``sigma_i sqrt(dt) z_i``.
* pnl increment = ``bid_fill delta_b + ask_fill delta_a + q_{i+1} (S_{i+1} - S_i)``.
"""

import numpy as np


def _quotes(policy: tuple, t: float, T: float, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bid and ask depths (price units) for every episode at time ``t``.

    Args:
        policy: ``("as", gamma, k_policy, sigma_policy)`` or ``("symmetric", h)``.
        t: Current time ``i * dt`` (time units).
        T: Session length (time units).
        q: Inventories, shape ``[n]``.

    Returns:
        ``(delta_b, delta_a)``, each float64 of shape ``[n]``.
    """
    name = policy[0]
    if name == "as":
        _, gamma, k_pol, sigma_pol = policy
        tau = T - t
        skew = gamma * sigma_pol**2 * tau
        if gamma == 0.0:
            liquidity = 2.0 / k_pol
        else:
            liquidity = (2.0 / gamma) * np.log1p(gamma / k_pol)
        half_spread = 0.5 * (skew + liquidity)
        delta_b = q * skew + half_spread
        delta_a = half_spread - q * skew
        return delta_b, delta_a
    if name == "symmetric":
        h = float(policy[1])
        return np.full_like(q, h), np.full_like(q, h)
    raise ValueError(f"unknown policy {name!r}")


def _fill_probability(
    delta: np.ndarray, A: float, k: float, dt: float, fill_model: str
) -> np.ndarray:
    """Per-step fill probability for quotes at depth ``delta`` (shape ``[n]``)."""
    rate_dt = A * np.exp(-k * delta) * dt
    if fill_model == "linear":
        return np.minimum(1.0, rate_dt)
    if fill_model == "exponential":
        return -np.expm1(-rate_dt)
    raise ValueError(f"unknown fill_model {fill_model!r}")


def simulate_reference(
    u_bid: np.ndarray,
    u_ask: np.ndarray,
    z: np.ndarray,
    *,
    S0: float,
    sigma: float,
    T: float,
    A: float,
    k: float,
    policy: tuple,
    fill_model: str = "linear",
    q_max: float = np.inf,
    mu: float = 0.0,
    alpha: float = 0.0,
    switch_step: int | None = None,
    switch_factor: float = 1.0,
) -> dict[str, np.ndarray]:
    """Simulate market-making episodes on given noise, in float64.

    Args:
        u_bid: Uniforms deciding bid fills, shape ``[n, n_steps]``.
        u_ask: Uniforms deciding ask fills, shape ``[n, n_steps]``.
        z: Standard normals driving the mid, shape ``[n, n_steps]``.
        S0: Initial mid (price units).
        sigma: Mid volatility (price units per sqrt time unit).
        T: Session length (time units); ``dt = T / n_steps``.
        A: Fill intensity at zero depth (fills per time unit, per side).
        k: Intensity decay (per price unit).
        policy: ``("as", gamma, k_policy, sigma_policy)`` or ``("symmetric", h)``.
        fill_model: ``"linear"`` (``min(1, lambda dt)``) or ``"exponential"``
            (``1 - exp(-lambda dt)``).
        q_max: Inventory limit; no bid fill when ``q >= q_max``, no ask fill when ``q <= -q_max``.
        mu: Mid drift (price units per time unit).
        alpha: Adverse-selection jump per fill (price units); mid jumps ``alpha (ask - bid)``.
        switch_step: First step using volatility ``sigma * switch_factor``; ``None`` = never.
        switch_factor: Volatility multiplier from ``switch_step`` on.

    Returns:
        Dict of float64 arrays: ``mid``, ``inventory``, ``pnl`` ``[n, n_steps + 1]``;
        ``bid_depth``, ``ask_depth``, ``bid_fill``, ``ask_fill`` (0/1) ``[n, n_steps]``;
        ``spread_pnl``, ``inventory_pnl``, ``max_drawdown``, ``cash`` ``[n]``. ``cash`` is
        accumulated from trade prices, so ``cash + inventory[:, -1] * mid[:, -1]`` must equal
        ``pnl[:, -1]``.
    """
    u_bid = np.asarray(u_bid, dtype=np.float64)
    u_ask = np.asarray(u_ask, dtype=np.float64)
    z = np.asarray(z, dtype=np.float64)
    n, n_steps = z.shape
    dt = T / n_steps
    sqrt_dt = np.sqrt(dt)

    mid = np.empty((n, n_steps + 1))
    inventory = np.empty((n, n_steps + 1))
    pnl = np.empty((n, n_steps + 1))
    bid_depth = np.empty((n, n_steps))
    ask_depth = np.empty((n, n_steps))
    bid_fill = np.empty((n, n_steps))
    ask_fill = np.empty((n, n_steps))
    spread_pnl = np.zeros(n)
    inventory_pnl = np.zeros(n)
    cash = np.zeros(n)

    mid[:, 0] = S0
    inventory[:, 0] = 0.0
    pnl[:, 0] = 0.0

    for i in range(n_steps):
        s = mid[:, i]
        q = inventory[:, i]

        delta_b, delta_a = _quotes(policy, i * dt, T, q)
        p_bid = _fill_probability(delta_b, A, k, dt, fill_model)
        p_ask = _fill_probability(delta_a, A, k, dt, fill_model)
        b = ((u_bid[:, i] < p_bid) & (q < q_max)).astype(np.float64)
        a = ((u_ask[:, i] < p_ask) & (q > -q_max)).astype(np.float64)

        q_next = q + b - a
        spread_inc = b * delta_b + a * delta_a
        sigma_i = sigma * switch_factor if switch_step is not None and i >= switch_step else sigma
        s_next = s + alpha * (a - b) + mu * dt + sigma_i * sqrt_dt * z[:, i]
        inventory_inc = q_next * (s_next - s)

        bid_depth[:, i] = delta_b
        ask_depth[:, i] = delta_a
        bid_fill[:, i] = b
        ask_fill[:, i] = a
        inventory[:, i + 1] = q_next
        mid[:, i + 1] = s_next
        pnl[:, i + 1] = pnl[:, i] + spread_inc + inventory_inc
        spread_pnl += spread_inc
        inventory_pnl += inventory_inc
        cash += a * (s + delta_a) - b * (s - delta_b)

    max_drawdown = np.max(np.maximum.accumulate(pnl, axis=1) - pnl, axis=1)

    return {
        "mid": mid,
        "inventory": inventory,
        "pnl": pnl,
        "bid_depth": bid_depth,
        "ask_depth": ask_depth,
        "bid_fill": bid_fill,
        "ask_fill": ask_fill,
        "spread_pnl": spread_pnl,
        "inventory_pnl": inventory_pnl,
        "max_drawdown": max_drawdown,
        "cash": cash,
    }
