"""Shared test helpers: child processes run from the repository root.

Importable as ``from tests.conftest import run_code, run_module``. A child inherits this
process's environment (plus ``env``), so it runs the same interpreter and the same code.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_python(
    *args: str, env: dict[str, str] | None = None, timeout: float = 900, check: bool = True
) -> subprocess.CompletedProcess:
    """``python *args`` in a child process from the repository root, output captured as text.
    With ``check``, a non-zero exit fails the test with the last lines of its stderr."""
    out = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


def run_module(module: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    """``python -m module *args`` (see ``run_python``)."""
    return run_python("-m", module, *args, **kwargs)


def run_code(code: str, **kwargs) -> subprocess.CompletedProcess:
    """``python -c code`` (see ``run_python``)."""
    return run_python("-c", code, **kwargs)


def run_distributed(code: str, *args: str, n_processes: int = 2, devices_each: int = 2) -> str:
    """Run ``python -c code ADDRESS PROCESS_ID *args`` in ``n_processes`` processes that join
    with ``jax.distributed.initialize(ADDRESS, n_processes, PROCESS_ID)`` on this machine, each
    with ``devices_each`` CPU devices; fail on any non-zero exit, and return process 0's
    stdout."""
    import socket

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        address = f"localhost:{sock.getsockname()[1]}"
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_each}",
    }
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", code, address, str(i), *args],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n_processes)
    ]
    outputs = [worker.communicate(timeout=900) for worker in workers]
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err[-3000:]
    return outputs[0][0]
