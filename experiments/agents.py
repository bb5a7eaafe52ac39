"""Trained PPO agents for the studies: train once, reuse while the configuration is unchanged.

``trained_run(name, **overrides)`` trains ``PPOConfig(name=name, **overrides)`` into
``results/agents/<name>/`` unless a run with exactly that configuration is already there, and
returns its folder; ``train.checkpoint.load_policy(folder)`` gives the agent as a jaxmm policy.
Every study that needs an agent goes through here, so ``experiments.all`` trains each agent once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import jax

# Training runs XLA while loops; the CPU runtime can deadlock on them under async dispatch
# (jax-ml/jax#25861, seen in about one run in ten). Studies block on every result anyway.
jax.config.update("jax_cpu_enable_async_dispatch", False)

AGENTS_DIR = Path("results/agents")
SILENCE_SECONDS = 300.0  # a training that prints nothing this long is wedged (see below)
ATTEMPTS = 3


def trained_run(name: str, *, out_dir: Path | None = None, **overrides: Any) -> Path:
    """Folder of a finished training run of ``PPOConfig(name=name, **overrides)`` under
    ``out_dir`` (default: the module's ``AGENTS_DIR``, which ``experiments.all`` may move)."""
    from train.config import PPOConfig

    out_dir = Path(AGENTS_DIR if out_dir is None else out_dir)
    config = PPOConfig(name=name, out_dir=str(out_dir), **overrides)
    run = out_dir / name
    metrics = run / "metrics.json"  # written last: a finished run of exactly this config
    if metrics.is_file():
        try:  # fields added since that run take their defaults
            finished = PPOConfig.from_dict(json.loads(metrics.read_text())["config"])
        except (ValueError, KeyError, TypeError):
            finished = None
        if finished == PPOConfig.from_dict(json.loads(json.dumps(config.to_dict()))):
            print(f"agent {name}: reusing {run}", file=sys.stderr)
            return run
    print(f"agent {name}: training {config.total_timesteps:,} steps", file=sys.stderr)
    train_in_subprocess(config)
    return run


def train_in_subprocess(
    config: Any, *, silence_seconds: float = SILENCE_SECONDS, attempts: int = ATTEMPTS
) -> None:
    """Run ``python -m train.ppo --config <config>`` in a child process, streaming its output
    to stderr; restart it (same config, same numbers) if it prints nothing for
    ``silence_seconds``.

    Why a child process: XLA's CPU runtime occasionally wedges -- every worker thread of its
    Eigen pool waits for work while the main thread waits for the program (native stacks taken
    here with gdb; the same symptom is reported with vmapped programs in PyAutoFit#1528, where
    ``--xla_cpu_multi_thread_eigen=false`` avoided it). We have seen it at the start of PPO
    training in about one run in ten on a loaded 2-core machine. A wedged program cannot be
    interrupted in-process; a child can be killed and rerun, and training is deterministic.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.json"
        path.write_text(json.dumps(config.to_dict()))
        command = [sys.executable, "-u", "-m", "train.ppo", "--config", str(path)]
        for attempt in range(1, attempts + 1):
            if _run_watched(command, silence_seconds):
                return
            print(
                f"agent {config.name}: no output for {silence_seconds:.0f} s (XLA CPU runtime "
                f"wedged); restarting ({attempt}/{attempts})",
                file=sys.stderr,
                flush=True,
            )
    raise RuntimeError(f"training {config.name} stalled {attempts} times; see the log above")


def _run_watched(command: list[str], silence_seconds: float) -> bool:
    """Run ``command``, echoing its output; True when it succeeds, False when it was killed
    after ``silence_seconds`` without output; RuntimeError when it fails."""
    child = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    last_output = [time.monotonic()]
    tail: list[str] = []

    def pump() -> None:
        for line in child.stdout:
            last_output[0] = time.monotonic()
            tail[:] = [*tail[-40:], line]
            sys.stderr.write(line)
            sys.stderr.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    while child.poll() is None:
        time.sleep(0.5)
        if time.monotonic() - last_output[0] > silence_seconds:
            child.kill()
            child.wait()
            reader.join(timeout=5)
            return False
    reader.join(timeout=5)
    if child.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed (exit {child.returncode}):\n{''.join(tail)}"
        )
    return True


def load_policy(run: Path) -> Any:
    from train.checkpoint import load_policy as load

    return load(run)
