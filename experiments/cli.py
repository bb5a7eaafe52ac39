"""The ``jaxmm`` console command: one entry point for every command line of the project.

::

    jaxmm train [options]            # = python -m train.ppo
    jaxmm evaluate RUN_DIR [options] # = python -m train.evaluate
    jaxmm study --list               # the studies, one line each
    jaxmm study NAME [options]       # = python -m experiments.NAME
    jaxmm benchmark [options]        # = python -m experiments.benchmark
    jaxmm backtest [options]         # = python -m experiments.backtest

Each subcommand hands its arguments, unchanged, to the ``main(argv)`` of the module it names:
there is no second parser, so ``jaxmm train --help`` is ``python -m train.ppo --help`` (its
usage line names that module) and the two take the same options. The modules whose
``python -m`` run splits the CPU into one XLA host device per core before JAX starts
(``HOST_DEVICE_MODULES``) get the same split here, so a subcommand runs exactly as its module
does. The command lives in ``experiments`` (the top of the dependency chain: it reaches
``train`` and every study) and is declared in ``pyproject.toml`` as
``jaxmm = "experiments.cli:main"``; ``python -m experiments.cli`` is the same command.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import sys
from collections.abc import Sequence

__all__ = ["COMMANDS", "HOST_DEVICE_MODULES", "STUDIES", "main", "run_module", "study_summary"]

# subcommand -> (module whose main(argv) it runs, one-line description)
COMMANDS = {
    "train": ("train.ppo", "train PPO market makers (= python -m train.ppo)"),
    "evaluate": (
        "train.evaluate",
        "reload a PPO run folder and re-evaluate it (= python -m train.evaluate RUN_DIR)",
    ),
    "study": (None, "run one study (= python -m experiments.NAME); `jaxmm study --list`"),
    "benchmark": (
        "experiments.benchmark",
        "throughput against NumPy and a Python loop (= python -m experiments.benchmark)",
    ),
    "backtest": (
        "experiments.backtest",
        "calibrate on the LOBSTER mornings, replay the afternoons (= python -m "
        "experiments.backtest)",
    ),
}

# Every ``experiments.<name>`` with a ``main(argv)`` run as a study (the benchmark has its own
# subcommand; ``all`` runs the studies of experiments.all and writes results/REPORT.md).
STUDIES = (
    "monte_carlo",
    "optimal_quotes",
    "heatmap",
    "stress",
    "calibration",
    "compare",
    "rewards",
    "regime",
    "regime_conditional",
    "ablation",
    "backtest",
    "multi_asset",
    "cp_schedule",
    "cj_package",
    "market_orders",
    "hawkes",
    "diffsim",
    "tasks",
    "all",
)

# Modules whose ``if __name__ == "__main__"`` asks for one CPU host device per core before JAX
# starts (``jaxmm.devices.request_host_devices``).
HOST_DEVICE_MODULES = frozenset({"train.ppo", "experiments.benchmark", "experiments.backtest"})


def study_summary(name: str) -> str:
    """The first line of ``experiments.<name>``'s docstring, read from its source without
    importing it (so ``jaxmm study --list`` does not start JAX)."""
    spec = importlib.util.find_spec(f"experiments.{name}")
    if spec is None or spec.origin is None:
        raise ValueError(f"study {name!r}: no module experiments.{name}")
    with open(spec.origin, encoding="utf-8") as handle:
        doc = ast.get_docstring(ast.parse(handle.read())) or ""
    return doc.split("\n\n")[0].replace("\n", " ").replace("``", "`")


def run_module(module: str, argv: Sequence[str]) -> int:
    """``module.main(list(argv))``, after the host-device split its ``python -m`` run makes;
    0 on success (a parser error or ``--help`` exits through ``SystemExit`` as usual)."""
    if module in HOST_DEVICE_MODULES:
        from jaxmm.devices import request_host_devices

        request_host_devices()
    importlib.import_module(module).main(list(argv))
    return 0


def _parser() -> argparse.ArgumentParser:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return argparse.ArgumentParser(
        prog="jaxmm",
        usage="jaxmm {" + ",".join(COMMANDS) + "} [options]",
        description="jaxmm: optimal market making in JAX. Commands:\n" + "\n".join(lines),
        epilog="`jaxmm COMMAND --help` lists the options of a command, with their units (it is "
        "the help of the module the command runs).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _study_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="jaxmm study",
        usage="jaxmm study (--list | NAME [options])",
        description="Run the study NAME, as `python -m experiments.NAME [options]`; "
        "`jaxmm study NAME --help` lists its options. Studies: " + ", ".join(STUDIES) + ".",
        epilog="--list: every study with its one-line summary.",
    )


def _study(argv: list[str]) -> int:
    parser = _study_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    if argv[0] == "--list":
        width = max(map(len, STUDIES))
        for name in STUDIES:
            print(f"{name:<{width}}  {study_summary(name)}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in STUDIES:
        parser.error(f"unknown study {name!r}; choose from {', '.join(STUDIES)} (or --list)")
    return run_module(f"experiments.{name}", rest)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``jaxmm COMMAND [options]`` (``argv`` without the program name; default: the
    process's command line). Returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        parser.error(f"unknown command {command!r}; choose from {', '.join(COMMANDS)}")
    if command == "study":
        return _study(rest)
    return run_module(COMMANDS[command][0], rest)


if __name__ == "__main__":
    sys.exit(main())
