"""Shared plumbing of the studies: command lines, output folders, JSON with config and seed,
timing, tables and figures.

Importing this module selects matplotlib's non-interactive ``Agg`` backend, once for every
study.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import matplotlib
import numpy as np

from jaxmm.results import jsonable, write_json

matplotlib.use("Agg")

__all__ = [
    "StudyParser",
    "Timer",
    "add_options",
    "add_ppo_arguments",
    "check_minimum",
    "data_dir",
    "environment",
    "finish",
    "grouped_bars",
    "jsonable",
    "markdown_table",
    "progress",
    "save_figure",
    "study_parser",
    "write_csv",
    "write_json",
    "write_rows_csv",
]


ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """The folder of the LOBSTER sample days: ``$JAXMM_DATA_DIR``, else ``shared/data`` beside
    the repository (the studies, the benchmark and the tests that need the tapes read it)."""
    env = os.environ.get("JAXMM_DATA_DIR")
    return Path(env) if env else ROOT.parent / "shared" / "data"


class StudyParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose ``parse(argv, **options)`` also takes typed overrides (the
    keyword arguments of a study's ``main``) and checks ``--n-episodes`` against its minimum."""

    min_episodes: int | None = None

    def parse(self, argv: Sequence[str] | None = None, **options: Any) -> argparse.Namespace:
        """``parse_args(argv)``, then ``options`` (by destination name, e.g. ``n_episodes``)
        replace the parsed values; an unknown name is a ``TypeError``. Called with options
        and no ``argv`` (from Python), the process's command line is not read."""
        args = self.parse_args([] if argv is None and options else argv)
        unknown = sorted(set(options) - set(vars(args)))
        if unknown:
            raise TypeError(f"{self.prog}: unknown options {unknown}")
        vars(args).update(options)
        if self.min_episodes is not None and args.n_episodes < self.min_episodes:
            self.error(f"--n-episodes must be >= {self.min_episodes}, got {args.n_episodes}")
        return args


def study_parser(
    name: str,
    description: str,
    *,
    n_episodes: int | None = None,
    seed: int = 0,
    min_episodes: int | None = 10,
    episodes_help: str | None = None,
    seed_help: str | None = None,
    episodes_aliases: Sequence[str] = (),
) -> StudyParser:
    """The parser of ``python -m experiments.<name>`` with the common flags: ``--out``
    (default ``results/<name>``), ``--seed`` and, unless ``n_episodes`` is None,
    ``--n-episodes`` (at least ``min_episodes``). ``description``: the first paragraph is
    used (pass the module's ``__doc__``). The help strings state units (episodes are simulated
    sessions)."""
    parser = StudyParser(
        prog=f"python -m experiments.{name}",
        description=description.split("\n\n")[0].replace("\n", " ").replace("``", "`"),
    )
    if n_episodes is not None:
        parser.add_argument(
            "--n-episodes",
            *episodes_aliases,
            type=int,
            default=n_episodes,
            help=episodes_help or f"simulated episodes (sessions) (default {n_episodes})",
        )
        parser.min_episodes = min_episodes
    parser.add_argument(
        "--seed",
        type=int,
        default=seed,
        help=f"{seed_help or 'seed of the random keys'} (integer, default {seed})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("results") / name,
        help=f"output folder (default results/{name})",
    )
    return parser


def add_ppo_arguments(
    parser: argparse.ArgumentParser, *, timesteps: int = 500_000, optional: bool = True
) -> None:
    """``--ppo-timesteps`` (each agent's training budget) and, if ``optional``, ``--no-ppo``."""
    if optional:
        parser.add_argument("--no-ppo", action="store_true", help="leave the PPO agents out")
    parser.add_argument(
        "--ppo-timesteps",
        type=int,
        default=timesteps,
        help=f"environment steps of each PPO agent's training (default {timesteps})",
    )


def add_options(parser: argparse.ArgumentParser, *options: tuple[str, type, Any, str]) -> None:
    """One plain typed option per ``(flag, type, default, help)``, in that order:
    ``parser.add_argument(flag, type=type, default=default, help=help)``. Options with more
    (``nargs``, ``choices``, an ``action``) are added by ``parser.add_argument`` as usual."""
    for flag, kind, default, text in options:
        parser.add_argument(flag, type=kind, default=default, help=text)


def check_minimum(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    names: Sequence[str],
    minimum: float = 0,
    *,
    strict: bool = True,
) -> None:
    """``parser.error`` on the first of ``names`` (destinations, e.g. ``"q_max"``) whose value
    is not above ``minimum`` (``strict``: ``> minimum``, else ``>= minimum``), naming its flag
    and value: ``--q-max must be > 0, got -1``. A NaN is never above."""
    for name in names:
        value = getattr(args, name)
        if not (value > minimum if strict else value >= minimum):
            sign = ">" if strict else ">="
            parser.error(f"--{name.replace('_', '-')} must be {sign} {minimum:g}, got {value}")


def environment() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "python": platform.python_version(),
        "machine": platform.machine(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def finish(
    out: Path,
    name: str,
    payload: Mapping[str, Any],
    *,
    config: argparse.Namespace | Mapping[str, Any] | None = None,
    seconds: Any = None,
) -> dict[str, Any]:
    """Write ``<out>/<name>.json``: ``{"config": config, **payload, "seconds": seconds,
    "environment": environment()}`` (``config`` may be the parsed arguments; keys left None
    are not added), print where, and return that payload."""
    result: dict[str, Any] = {}
    if config is not None:
        result["config"] = dict(vars(config) if isinstance(config, argparse.Namespace) else config)
    result.update(payload)
    if seconds is not None:
        result["seconds"] = seconds
    result.setdefault("environment", environment())
    write_json(Path(out) / f"{name}.json", result)
    timing = f" ({seconds:.1f} s)" if isinstance(seconds, int | float) else ""
    print(f"results in {out}/{timing}")
    return result


def progress(message: str) -> None:
    """Print ``message`` on stderr at once (a long study's progress lines)."""
    print(message, file=sys.stderr, flush=True)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> str:
    """A markdown table; ``align`` has one letter a column, ``l`` (left) or ``r`` (right),
    default: the first column left, the others right."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"
    lines = ["| " + " | ".join(str(cell) for cell in line) + " |" for line in (header, *rows)]
    return "\n".join([lines[0], rule, *lines[1:]])


def grouped_bars(
    ax: Any, rows: Sequence[Mapping[str, Any]], group: str, stat: str, **ticks: Any
) -> None:
    """Bars of ``row[stat]`` with ``row[stat + "_se"]`` error bars on ``ax``: one cluster per
    value of ``row[group]`` (e.g. the scenario), one bar per ``row["strategy"]`` in each (its
    legend label), both in first-seen order; the clusters' ticks are labelled (``ticks``: more
    options of ``ax.set_xticks``, e.g. ``rotation=20``)."""
    groups = list(dict.fromkeys(row[group] for row in rows))
    strategies = list(dict.fromkeys(row["strategy"] for row in rows))
    lookup = {(row[group], row["strategy"]): row for row in rows}
    width = 0.8 / len(strategies)
    x = np.arange(len(groups))
    for i, strategy in enumerate(strategies):
        values = [lookup[name, strategy][stat] for name in groups]
        errors = [lookup[name, strategy][f"{stat}_se"] for name in groups]
        ax.bar(x + i * width, values, width, yerr=errors, label=strategy)
    ax.set_xticks(x + 0.4 - width / 2, groups, **ticks)


def save_figure(fig: Any, path: Path, dpi: int = 120) -> Path:
    """Save ``fig`` at ``path`` (``dpi`` 120) and close it."""
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return Path(path)


def write_csv(path: Path, columns: dict[str, np.ndarray]) -> Path:
    """One column per key, one row per element."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(columns)
    data = np.column_stack([np.asarray(columns[name], np.float64) for name in names])
    np.savetxt(path, data, delimiter=",", header=",".join(names), comments="", fmt="%.10g")
    return path


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def write_rows_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    """One row per dict (the first row's keys are the header); text and numbers alike."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
