"""Independent oracles: NumPy/SciPy implementations written from the specification and the
papers, not from jaxmm's code, against which the library is tested.

- ``simulator``: the market step and rollout, every option (``tests/test_simulate.py``,
  ``tests/test_extensions.py``);
- ``optima``: GLFT, Cartea-Jaimungal and the Bellman optimum of the simulator's MDP
  (``tests/test_optimal_vs_oracle.py``; the oracle itself is checked in
  ``tests/test_oracle_optima.py``).
"""
