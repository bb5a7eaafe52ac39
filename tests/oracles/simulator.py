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

Extensions, each off by default and written here from their definitions, not from the
JAX code: Heston variance (Euler, full truncation), compound-Poisson jumps (count by the Poisson
quantile of a uniform, scipy), spread floor, tick grid, latency (a queue of quote prices), loss
limit (halt), maker/taker fees and order sizes (fixed, or geometric by counting).
"""

import numpy as np
from scipy import stats

MAX_JUMPS = 16  # the simulator resolves at most 16 jumps per step


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


def _on_grid_floor(ticks: np.ndarray) -> np.ndarray:
    """Round down to an integer, treating values within 1e-9 of one as that integer."""
    return np.floor(ticks + 1e-9)


def _geometric_sizes(u: np.ndarray, mean: float) -> np.ndarray:
    """Smallest ``j >= 1`` with ``(1 - 1/mean)^j < u``: geometric on {1, 2, ...} with ``mean``."""
    keep = 1.0 - 1.0 / mean
    size = np.ones_like(u)
    active = keep**size >= u
    while active.any():
        size = np.where(active, size + 1.0, size)
        active = keep**size >= u
    return size


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
    heston: dict | None = None,
    z_vol: np.ndarray | None = None,
    jumps: dict | None = None,
    u_jump_count: np.ndarray | None = None,
    z_jump: np.ndarray | None = None,
    spread_floor: float | None = None,
    tick: float | None = None,
    latency: int = 0,
    loss_limit: float | None = None,
    maker_fee: float | None = None,
    taker_fee: float | None = None,
    order_size: str = "unit",
    order_size_mean: float = 1.0,
    u_bid_size: np.ndarray | None = None,
    u_ask_size: np.ndarray | None = None,
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
        heston: ``dict(kappa, theta, xi, rho, v0)``: the volatility is ``sigma_i sqrt(v^+)`` and
            ``v' = v + kappa (theta - v^+) dt + xi sqrt(v^+ dt) (rho z + sqrt(1 - rho^2) z_vol)``.
        z_vol: Standard normals of the variance, ``[n, n_steps]`` (with ``heston``).
        jumps: ``dict(intensity, mean, std)``: ``N = Poisson quantile of u_jump_count``
            (``intensity dt``, at most 16) jumps of ``N(mean, std^2)`` summed as
            ``N mean + std sqrt(N) z_jump``, added to the mid's move.
        u_jump_count, z_jump: ``[n, n_steps]`` (with ``jumps``).
        spread_floor: quotes narrower than this are widened by half the shortfall on each side.
        tick: bid price rounded down, ask price up, to multiples of ``tick``.
        latency: the quote computed at step ``i`` acts at step ``i + latency`` at its price
            (none before); floor and tick apply when it is computed.
        loss_limit: once the PnL is below ``-loss_limit`` no quote acts any more.
        maker_fee, taker_fee: fee per unit filled; taker when the acting depth is negative.
        order_size: ``"unit"``, ``"fixed"`` (``order_size_mean``) or ``"geometric"`` (mean
            ``order_size_mean``, from ``u_bid_size``/``u_ask_size``); fills are clipped to keep
            ``|q| <= q_max``.

    Returns:
        Dict of float64 arrays: ``mid``, ``inventory``, ``pnl`` ``[n, n_steps + 1]``;
        ``bid_depth``, ``ask_depth``, ``bid_fill``, ``ask_fill`` (0/1) ``[n, n_steps]``;
        ``spread_pnl``, ``inventory_pnl``, ``max_drawdown``, ``cash`` ``[n]``. ``cash`` is
        accumulated from trade prices (net of fees), so ``cash + inventory[:, -1] * mid[:, -1]``
        must equal ``pnl[:, -1]``. Also ``fees`` ``[n]``, ``variance`` ``[n, n_steps + 1]`` and
        ``halted`` ``[n, n_steps + 1]`` (bool, at the start of each step).
        With order sizes ``bid_fill``/``ask_fill`` are the quantities filled; ``bid_depth`` and
        ``ask_depth`` are the depths that acted.
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
    fees = np.zeros(n)
    variance = np.empty((n, n_steps + 1))
    halted = np.zeros((n, n_steps + 1), dtype=bool)
    sent_bid_price: list[np.ndarray] = []  # prices of the quotes computed so far (latency)
    sent_ask_price: list[np.ndarray] = []

    mid[:, 0] = S0
    inventory[:, 0] = 0.0
    pnl[:, 0] = 0.0
    variance[:, 0] = heston["v0"] if heston is not None else 1.0

    for i in range(n_steps):
        s = mid[:, i]
        q = inventory[:, i]
        v_pos = np.maximum(variance[:, i], 0.0)

        delta_b, delta_a = _quotes(policy, i * dt, T, q)
        if spread_floor is not None:
            shortfall = np.maximum(spread_floor - (delta_b + delta_a), 0.0)
            delta_b = delta_b + shortfall / 2.0
            delta_a = delta_a + shortfall / 2.0
        act_b, act_a = delta_b, delta_a  # the depths that act (changed by tick and latency)
        if tick is not None and tick > 0:
            bid_price = _on_grid_floor((s - delta_b) / tick) * tick
            ask_price = -_on_grid_floor(-(s + delta_a) / tick) * tick
            act_b = np.where(np.isfinite(delta_b), s - bid_price, delta_b)
            act_a = np.where(np.isfinite(delta_a), ask_price - s, delta_a)
        if latency > 0:
            sent_bid_price.append(s - act_b)
            sent_ask_price.append(s + act_a)
            if i < latency:
                act_b = act_a = np.full(n, np.inf)
            else:
                act_b = s - sent_bid_price[i - latency]
                act_a = sent_ask_price[i - latency] - s
        if loss_limit is not None:
            act_b = np.where(halted[:, i], np.inf, act_b)
            act_a = np.where(halted[:, i], np.inf, act_a)

        p_bid = _fill_probability(act_b, A, k, dt, fill_model)
        p_ask = _fill_probability(act_a, A, k, dt, fill_model)
        b = ((u_bid[:, i] < p_bid) & (q < q_max)).astype(np.float64)
        a = ((u_ask[:, i] < p_ask) & (q > -q_max)).astype(np.float64)
        if order_size != "unit":
            if order_size == "fixed":
                size_b = size_a = np.full(n, float(order_size_mean))
            else:
                size_b = _geometric_sizes(np.asarray(u_bid_size, np.float64)[:, i], order_size_mean)
                size_a = _geometric_sizes(np.asarray(u_ask_size, np.float64)[:, i], order_size_mean)
            b = b * np.minimum(size_b, q_max - q)
            a = a * np.minimum(size_a, q_max + q)

        q_next = q + b - a
        # a side that did not fill contributes 0 even if unquoted (depth inf)
        spread_inc = b * np.where(b > 0, act_b, 0.0) + a * np.where(a > 0, act_a, 0.0)
        fee_inc = np.zeros(n)
        if maker_fee is not None or taker_fee is not None:
            maker = 0.0 if maker_fee is None else maker_fee
            taker = 0.0 if taker_fee is None else taker_fee
            fee_inc = b * np.where(act_b < 0, taker, maker) + a * np.where(act_a < 0, taker, maker)
        sigma_i = sigma * switch_factor if switch_step is not None and i >= switch_step else sigma
        if heston is not None:
            sigma_i = sigma_i * np.sqrt(v_pos)
            rho = heston["rho"]
            z_v = rho * z[:, i] + np.sqrt(1.0 - rho**2) * np.asarray(z_vol, np.float64)[:, i]
            variance[:, i + 1] = (
                variance[:, i]
                + heston["kappa"] * (heston["theta"] - v_pos) * dt
                + heston["xi"] * np.sqrt(v_pos * dt) * z_v
            )
        else:
            variance[:, i + 1] = variance[:, i]
        jump = np.zeros(n)
        if jumps is not None:
            count = stats.poisson.ppf(
                np.asarray(u_jump_count, np.float64)[:, i], jumps["intensity"] * dt
            )
            count = np.minimum(count, MAX_JUMPS)
            jump = count * jumps["mean"] + jumps["std"] * np.sqrt(count) * np.asarray(z_jump)[:, i]
        s_next = s + alpha * (a - b) + mu * dt + sigma_i * sqrt_dt * z[:, i] + jump
        inventory_inc = q_next * (s_next - s)

        bid_depth[:, i] = act_b
        ask_depth[:, i] = act_a
        bid_fill[:, i] = b
        ask_fill[:, i] = a
        inventory[:, i + 1] = q_next
        mid[:, i + 1] = s_next
        pnl[:, i + 1] = pnl[:, i] + spread_inc + inventory_inc - fee_inc
        spread_pnl += spread_inc
        inventory_pnl += inventory_inc
        fees += fee_inc
        halted[:, i + 1] = halted[:, i]
        if loss_limit is not None:
            halted[:, i + 1] |= pnl[:, i + 1] < -loss_limit
        cash += a * np.where(a > 0, s + act_a, 0.0) - b * np.where(b > 0, s - act_b, 0.0)
        cash -= fee_inc

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
        "fees": fees,
        "variance": variance,
        "halted": halted,
    }
