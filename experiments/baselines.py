"""Reference baselines for ``python -m experiments.benchmark``.

Two plain-Python/NumPy implementations of the Avellaneda-Stoikov market-making simulation that
the JAX simulator is benchmarked against. Both default to the homework setting: S0 = 100,
sigma = 2 (price units per sqrt time unit), T = 1, 200 steps, A = 100 fills per time unit
(per-step fill probability ``min(1, A exp(-k delta) dt)``, i.e. 0.5 at zero depth), k = 1.5,
gamma = 0.1, arithmetic mid, no inventory limit, no adverse selection.

At step ``i`` (``tau = T - i dt``) the quotes are ``delta_b = q gamma sigma^2 tau + spread / 2``
and ``delta_a = spread / 2 - q gamma sigma^2 tau`` with
``spread = gamma sigma^2 tau + (2 / gamma) ln(1 + gamma / k)``. Fills update the inventory, the
mid moves by ``sigma sqrt(dt) z`` and the pnl grows by the spread captured plus
``q_{i+1} (S_{i+1} - S_i)``.

Both take the same arguments:

- ``n_episodes``: number of independent episodes.
- ``seed``: seed for ``np.random.default_rng``.
- ``S0``: initial mid (price units).
- ``sigma``: mid volatility (price units per sqrt time unit).
- ``T``: session length (time units).
- ``n_steps``: number of steps; ``dt = T / n_steps``.
- ``A``: fill intensity at zero depth (fills per time unit, per side).
- ``k``: intensity decay (per price unit).
- ``gamma``: risk aversion (per price unit), must be positive.

Each function returns a dict of per-episode arrays of shape ``[n_episodes]``:
``terminal_pnl`` and ``max_drawdown`` (float64, price units), ``terminal_inventory`` (float64,
units), ``bid_fills`` and ``ask_fills`` (int64 counts).
"""

import math

import numpy as np


def _summaries(pnl, inventory, max_drawdown, bid_fills, ask_fills) -> dict[str, np.ndarray]:
    """The per-episode arrays both baselines return, by the names of the module docstring."""
    return {
        "terminal_pnl": pnl,
        "terminal_inventory": inventory,
        "max_drawdown": max_drawdown,
        "bid_fills": bid_fills,
        "ask_fills": ask_fills,
    }


def simulate_numpy_vectorised(
    n_episodes: int,
    seed: int,
    *,
    S0: float = 100.0,
    sigma: float = 2.0,
    T: float = 1.0,
    n_steps: int = 200,
    A: float = 100.0,
    k: float = 1.5,
    gamma: float = 0.1,
) -> dict[str, np.ndarray]:
    """NumPy baseline: vectorised over episodes, Python loop over steps, float64.

    Each step draws its ``[2, n_episodes]`` fill uniforms and ``[n_episodes]`` normals in bulk
    from ``np.random.default_rng(seed)``. The mid itself is not stored: with an arithmetic mid and
    no adverse selection the quotes and pnl depend on it only through its increments, so ``S0``
    does not affect the results.

    Arguments and returns: see the module docstring.
    """
    rng = np.random.default_rng(seed)
    dt = T / n_steps
    step_vol = sigma * math.sqrt(dt)
    liquidity_spread = (2.0 / gamma) * math.log1p(gamma / k)
    a_dt = A * dt

    q = np.zeros(n_episodes)
    pnl = np.zeros(n_episodes)
    peak = np.zeros(n_episodes)
    max_dd = np.zeros(n_episodes)
    bid_fills = np.zeros(n_episodes, dtype=np.int64)
    ask_fills = np.zeros(n_episodes, dtype=np.int64)
    skewed = np.empty(n_episodes)
    delta_b = np.empty(n_episodes)
    delta_a = np.empty(n_episodes)
    p_bid = np.empty(n_episodes)
    p_ask = np.empty(n_episodes)
    bid_hit = np.empty(n_episodes, dtype=bool)
    ask_hit = np.empty(n_episodes, dtype=bool)
    work = np.empty(n_episodes)

    for i in range(n_steps):
        skew = gamma * sigma**2 * (T - i * dt)
        half_spread = 0.5 * (skew + liquidity_spread)
        u = rng.random((2, n_episodes))
        dS = rng.standard_normal(n_episodes)
        dS *= step_vol

        np.multiply(q, skew, out=skewed)
        np.add(skewed, half_spread, out=delta_b)
        np.subtract(half_spread, skewed, out=delta_a)

        # Fill probability A exp(-k delta) dt; the cap at 1 is implied because u < 1.
        np.multiply(delta_b, -k, out=p_bid)
        np.exp(p_bid, out=p_bid)
        p_bid *= a_dt
        np.multiply(delta_a, -k, out=p_ask)
        np.exp(p_ask, out=p_ask)
        p_ask *= a_dt
        np.less(u[0], p_bid, out=bid_hit)
        np.less(u[1], p_ask, out=ask_hit)

        q += bid_hit
        q -= ask_hit
        bid_fills += bid_hit
        ask_fills += ask_hit

        np.multiply(bid_hit, delta_b, out=work)
        pnl += work
        np.multiply(ask_hit, delta_a, out=work)
        pnl += work
        np.multiply(q, dS, out=work)
        pnl += work

        np.maximum(peak, pnl, out=peak)
        np.subtract(peak, pnl, out=work)
        np.maximum(max_dd, work, out=max_dd)

    return _summaries(pnl, q, max_dd, bid_fills, ask_fills)


def simulate_python_loop(
    n_episodes: int,
    seed: int,
    *,
    S0: float = 100.0,
    sigma: float = 2.0,
    T: float = 1.0,
    n_steps: int = 200,
    A: float = 100.0,
    k: float = 1.5,
    gamma: float = 0.1,
) -> dict[str, np.ndarray]:
    """Pure-Python baseline: nested loops over episodes and steps, scalar ``math`` arithmetic.

    Written as in course material: each step computes the reservation price and quotes, then
    draws the bid uniform, the ask uniform and the mid normal one at a time from
    ``np.random.default_rng(seed)``.

    Arguments and returns: see the module docstring.
    """
    rng = np.random.default_rng(seed)
    dt = T / n_steps

    terminal_pnl = np.empty(n_episodes)
    terminal_inventory = np.empty(n_episodes)
    max_drawdown = np.empty(n_episodes)
    bid_fills = np.empty(n_episodes, dtype=np.int64)
    ask_fills = np.empty(n_episodes, dtype=np.int64)

    for episode in range(n_episodes):
        s = S0
        q = 0
        pnl = 0.0
        peak = 0.0
        max_dd = 0.0
        n_bid = 0
        n_ask = 0
        for i in range(n_steps):
            tau = T - i * dt
            reservation = s - q * gamma * sigma**2 * tau
            spread = gamma * sigma**2 * tau + (2.0 / gamma) * math.log(1.0 + gamma / k)
            bid = reservation - spread / 2.0
            ask = reservation + spread / 2.0
            delta_b = s - bid
            delta_a = ask - s

            p_bid = min(1.0, A * math.exp(-k * delta_b) * dt)
            p_ask = min(1.0, A * math.exp(-k * delta_a) * dt)
            bid_filled = rng.random() < p_bid
            ask_filled = rng.random() < p_ask

            spread_pnl = 0.0
            if bid_filled:
                q += 1
                n_bid += 1
                spread_pnl += delta_b
            if ask_filled:
                q -= 1
                n_ask += 1
                spread_pnl += delta_a

            s_new = s + sigma * math.sqrt(dt) * rng.standard_normal()
            pnl += spread_pnl + q * (s_new - s)
            s = s_new

            peak = max(peak, pnl)
            max_dd = max(max_dd, peak - pnl)

        terminal_pnl[episode] = pnl
        terminal_inventory[episode] = q
        max_drawdown[episode] = max_dd
        bid_fills[episode] = n_bid
        ask_fills[episode] = n_ask

    return _summaries(terminal_pnl, terminal_inventory, max_drawdown, bid_fills, ask_fills)
