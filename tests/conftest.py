"""Test-session setup: run XLA's CPU client synchronously, with Eigen single-threaded.

XLA's CPU runtime wedges now and then (every Eigen worker idle, the program never finishing;
seen here in PPO tests and trainings, with and without async dispatch; jax-ml/jax#25861,
PyAutoFit#1528, where ``--xla_cpu_multi_thread_eigen=false`` avoided it). Both settings must be
made before the backend starts; child processes of the tests inherit the flag.
"""

import os

import jax

if "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
    ).strip()
jax.config.update("jax_cpu_enable_async_dispatch", False)
