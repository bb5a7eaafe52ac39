"""Stress program for the XLA CPU wedge: many calls of jitted, vmapped PPO programs.

Run as a child process by ``tests/test_wedge.py`` (or by hand)::

    python tests/wedge_stress.py --pattern make_train --calls 40
    python tests/wedge_stress.py --pattern init --calls 400

``init`` calls ``jax.jit(jax.vmap(trainer.init))`` on fresh seed keys (what ``train.ppo``'s
``init_states`` does), ``make_train`` calls ``jax.jit(jax.vmap(make_train(config)))`` (the
documented pattern for many seeds) at a tiny budget. Each finished call prints ``call i`` and
flushes, so a parent can tell a wedged process (silent, at 0% CPU) from a slow one.

The wedge this looks for: jaxlib 0.10.2's batched LAPACK kernels (e.g. ``lapack_sgeqrf_ffi``,
the QR behind an orthogonal initialiser under ``vmap``) split the batch with
``jax::ParallelBatchMap`` over XLA's intra-op pool and wait for the pieces; now and then no
worker runs them and the program never finishes.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax

from train.config import PPOConfig
from train.ppo import make_train, make_trainer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pattern", choices=("init", "make_train"), default="make_train")
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=4)
    args = parser.parse_args(argv)

    config = PPOConfig(total_timesteps=512, num_envs=64, num_steps=8, num_seeds=args.seeds)
    if args.pattern == "init":
        program = jax.jit(jax.vmap(make_trainer(config).init))
    else:
        program = jax.jit(jax.vmap(make_train(config)))
    start = time.perf_counter()
    for call in range(args.calls):
        keys = jax.random.split(jax.random.key(call), args.seeds)
        jax.block_until_ready(program(keys))
        print(f"call {call + 1} {time.perf_counter() - start:.1f}s", flush=True)
    print("done", flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
