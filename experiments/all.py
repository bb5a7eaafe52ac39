"""Every study in one command, and ``results/REPORT.md`` written from their measured numbers.

``python -m experiments.all`` runs, in order: monte_carlo, optimal_quotes, heatmap, stress,
calibration, compare, rewards, regime, regime_conditional, ablation, backtest (PPO agents are
trained once, in ``results/agents/``, and shared between studies), times each, and writes
``REPORT.md`` into the results folder: every table and figure, the run time of each study, where
our measurements contradict the course notes, and the section "When should a market maker use
analytics vs. ML?" whose numbers are read from the results. ``--quick`` runs everything at a
tiny size (a smoke run, minutes; its numbers mean nothing); ``--out`` moves the whole results
folder, the agents included (each study's ``main`` is given ``agents_dir=<out>/agents``). Every
study module has ``QUICK``, the keyword arguments of its ``main`` for the smoke run.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from pathlib import Path

from experiments import (
    ablation,
    backtest,
    calibration,
    compare,
    heatmap,
    monte_carlo,
    optimal_quotes,
    regime,
    regime_conditional,
    rewards,
    stress,
)
from experiments.common import environment, write_json

MODULES = {
    "monte_carlo": monte_carlo,
    "optimal_quotes": optimal_quotes,
    "heatmap": heatmap,
    "stress": stress,
    "calibration": calibration,
    "compare": compare,
    "rewards": rewards,
    "regime": regime,
    "regime_conditional": regime_conditional,
    "ablation": ablation,
    "backtest": backtest,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.all", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument(
        "--out", type=Path, default=Path("results"), help="results folder (agents included)"
    )
    parser.add_argument(
        "--only", nargs="+", choices=list(MODULES), help="run these studies only (report all)"
    )
    return parser.parse_args(argv)


def study_options(name: str, out: Path, *, quick: bool = False) -> dict:
    """Keyword arguments of ``MODULES[name].main``: the study's ``QUICK`` sizes if ``quick``,
    its output folder, the shared agents' folder and (compare) the heatmap it reads."""
    module = MODULES[name]
    options = {**(module.QUICK if quick else {}), "out": out / name}
    if "agents_dir" in inspect.signature(module.main).parameters:
        options["agents_dir"] = out / "agents"
    if name == "compare":
        options["heatmap"] = out / "heatmap" / "summary.json"
    return options


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    timings_path = args.out / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    for name in args.only or list(MODULES):
        print(f"=== {name}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        MODULES[name].main([], **study_options(name, args.out, quick=args.quick))
        timings[name] = time.perf_counter() - start
        write_json(timings_path, timings)
    report = write_report(args.out, timings, quick=args.quick)
    total = sum(timings.values())
    print(f"all studies: {total:.0f} s; report {report}", file=sys.stderr)
    return {"timings": timings, "report": str(report)}


def write_report(out: Path, timings: dict[str, float], *, quick: bool = False) -> Path:
    """``REPORT.md`` from the studies' files (missing studies are listed as not run)."""
    from experiments import report

    text = report.render(out, timings, quick=quick)
    path = out / "REPORT.md"
    path.write_text(text)
    write_json(out / "report_environment.json", environment())
    return path


if __name__ == "__main__":
    main()
