"""Reproducer of the XLA CPU wedge: the jitted, vmapped PPO programs called many times.

Each case runs ``tests/wedge_stress.py`` in a fresh child process and fails if the child goes
silent: a wedged process sits at 0% CPU and never prints again. On the code before the fix
(flax's orthogonal initialiser, a batched LAPACK QR under ``vmap``) the ``make_train`` pattern
wedged on its first call in every process tried on a 2-core CPU. This file imports nothing of
jaxmm, so it runs against any version of the code (see ``tests/test_wedge.py`` for the cause).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_watched(args: list[str], silence: float, total: float) -> tuple[str, bool]:
    """Run ``tests/wedge_stress.py args`` in a child; kill it when it prints nothing for
    ``silence`` seconds or runs past ``total``. Returns (output, finished)."""
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "wedge_stress.py"), *args],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    last = [time.monotonic()]

    def read() -> None:
        for line in process.stdout:
            lines.append(line)
            last[0] = time.monotonic()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    start = time.monotonic()
    while process.poll() is None:
        now = time.monotonic()
        if now - last[0] > silence or now - start > total:
            process.kill()
            process.wait()
            reader.join(timeout=5)
            return "".join(lines), False
        time.sleep(0.5)
    reader.join(timeout=5)
    output = "".join(lines)
    return output, process.returncode == 0 and output.rstrip().endswith("done")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("pattern", "calls"), [("make_train", 40), ("make_train", 40), ("init", 400)]
)
def test_vmapped_ppo_programs_never_wedge(pattern, calls):
    """Many calls of ``jit(vmap(make_train(config)))`` / ``jit(vmap(trainer.init))`` in a fresh
    process finish. Compilation prints nothing for up to ~30 s on a loaded 2-core machine; a
    wedged process never prints again, so 240 s of silence is a wedge."""
    output, finished = run_watched(
        ["--pattern", pattern, "--calls", str(calls)], silence=240, total=1200
    )
    done = output.count("call ")
    assert finished, f"wedged after {done} of {calls} calls of {pattern}:\n{output[-2000:]}"
