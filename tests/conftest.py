"""Test-session setup: run XLA's CPU client synchronously.

XLA's CPU runtime can deadlock on while loops under async dispatch (jax-ml/jax#25861; seen in
about one process in ten while training PPO). It must be set before the backend starts.
"""

import jax

jax.config.update("jax_cpu_enable_async_dispatch", False)
