"""Trained PPO agents for the studies: train once, reuse while the configuration is unchanged.

``trained_run(name, **overrides)`` trains ``PPOConfig(name=name, **overrides)`` into
``results/agents/<name>/`` unless a run with exactly that configuration, trained by the same
source code (``source_digest``: the library and the trainer), is already there, and returns its
folder; ``train.checkpoint.load_policy(folder)`` gives the agent as a jaxmm policy.
Every study that needs an agent goes through here, so ``experiments.all`` trains each agent once.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

AGENTS_DIR = Path("results/agents")
SOURCE_FILE = "agent_source.json"  # beside metrics.json: the digest of the code that trained it
_ROOT = Path(__file__).resolve().parents[1]


def source_digest() -> str:
    """SHA-256 of every ``.py`` file of ``jaxmm/`` and ``train/`` (paths and bytes, in sorted
    order): a change to the simulator, the environment or the trainer changes it, so a stored
    agent is retrained rather than reused across code that would train it differently."""
    digest = hashlib.sha256()
    for package in ("jaxmm", "train"):
        for path in sorted((_ROOT / package).rglob("*.py")):
            digest.update(path.relative_to(_ROOT).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def trained_run(name: str, *, out_dir: Path | None = None, **overrides: Any) -> Path:
    """Folder of a finished training run of ``PPOConfig(name=name, **overrides)`` under
    ``out_dir`` (default ``AGENTS_DIR``; ``experiments.all`` passes its own)."""
    from train.config import PPOConfig

    out_dir = Path(AGENTS_DIR if out_dir is None else out_dir)
    config = PPOConfig(name=name, out_dir=str(out_dir), **overrides)
    run = out_dir / name
    metrics = run / "metrics.json"  # written last: a finished run of exactly this config
    digest = source_digest()
    if metrics.is_file() and _trained_by(run, digest):
        try:  # fields added since that run take their defaults
            finished = PPOConfig.from_dict(json.loads(metrics.read_text())["config"])
        except (ValueError, KeyError, TypeError):
            finished = None
        if finished is not None and config.devices == 0:  # auto: whatever that run resolved
            config = PPOConfig.from_dict({**config.to_dict(), "devices": finished.devices})
        if finished == PPOConfig.from_dict(json.loads(json.dumps(config.to_dict()))):
            print(f"agent {name}: reusing {run}", file=sys.stderr)
            return run
    print(f"agent {name}: training {config.total_timesteps:,} steps", file=sys.stderr)
    train_in_subprocess(config)
    (run / SOURCE_FILE).write_text(json.dumps({"source_digest": digest}))
    return run


def _trained_by(run: Path, digest: str) -> bool:
    """Whether ``run`` records that it was trained by code with this ``source_digest``."""
    try:
        return json.loads((run / SOURCE_FILE).read_text())["source_digest"] == digest
    except (OSError, ValueError, KeyError, TypeError):
        return False


def train_in_subprocess(config: Any) -> None:
    """Run ``python -m train.ppo --config <config>``, its output going to this process's
    stderr. A child process, because the command line trains as a user's run does: with one
    CPU host device per core (``jaxmm.devices.request_host_devices``), which a study process
    that has already started JAX cannot switch to. Raises ``RuntimeError`` with the exit code
    if the training fails."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.json"
        path.write_text(json.dumps(config.to_dict()))
        command = [sys.executable, "-u", "-m", "train.ppo", "--config", str(path)]
        run_child(command)


def run_child(command: list[str]) -> None:
    """Run ``command`` with its stdout and stderr sent to this process's stderr; raise
    ``RuntimeError`` naming the command and its exit code (with the last lines) if it fails."""
    child = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    tail: list[str] = []
    for line in child.stdout:
        tail[:] = [*tail[-40:], line]
        sys.stderr.write(line)
        sys.stderr.flush()
    if child.wait() != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed (exit {child.returncode}):\n{''.join(tail)}"
        )


def load_policy(run: Path) -> Any:
    from train.checkpoint import load_policy as load

    return load(run)
