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
