"""Named parameter sets.

``homework()`` is the course homework's market; ``as2008()`` is the simulation of Avellaneda &
Stoikov (2008), section 3.
"""

from __future__ import annotations

from jaxmm.params import MarketParams

__all__ = [
    "as2008",
    "homework",
]


def homework() -> MarketParams:
    """The course homework: S0 = 100, sigma = 2, T = 1, 200 steps, k = 1.5, arithmetic mid.

    The homework's "A = 0.5" is a per-step fill probability at depth 0: with ``dt = 1/200`` and
    the linear convention ``p = min(1, A exp(-k delta) dt)`` that is ``A = 100`` per time unit.
    No inventory limit.
    """
    return MarketParams(
        S0=100.0,
        sigma=2.0,
        T=1.0,
        A=100.0,
        k=1.5,
        n_steps=200,
        fill_model="linear",
        price_model="arithmetic",
    ).validate()


def as2008() -> MarketParams:
    """Avellaneda & Stoikov (2008), section 3: the simulation behind the paper's tables.

    S0 = 100, T = 1, sigma = 2, dt = 0.005 (200 steps), A = 140, k = 1.5. The mid moves up or
    down by ``sigma sqrt(dt)`` with probability 1/2 each (``"binary"``); a quote at depth
    ``delta`` is filled in a step with probability ``A exp(-k delta) dt`` (``"linear"``).
    The paper uses gamma in {0.01, 0.1, 0.5} with ``policies.avellaneda_stoikov`` (its
    "inventory strategy") and the same spread centred on the mid (its "symmetric strategy":
    ``avellaneda_stoikov(..., skew=False)``).
    """
    return MarketParams(
        S0=100.0,
        sigma=2.0,
        T=1.0,
        A=140.0,
        k=1.5,
        n_steps=200,
        fill_model="linear",
        price_model="binary",
    ).validate()
