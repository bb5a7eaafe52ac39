"""Throughput benchmark: jaxmm's simulate against NumPy baselines, side by side in one run.

``python -m experiments.benchmark`` simulates the homework A-S market (gamma = 0.1) with

- ``jaxmm``: ``mm.simulate`` on one device and sharded over every local CPU device (this module
  asks XLA for one host device per core unless ``XLA_FLAGS`` is already set);
- ``numpy vectorised``: ``experiments.baselines.simulate_numpy_vectorised``;
- ``python loop``: ``experiments.baselines.simulate_python_loop`` (per episode, as in the seeds);

and reports episode-steps per second (best of ``--repeats`` runs, compile time separately), the
ratios jaxmm / baseline at equal episode counts, and peak resident memory. Results go to
``results/benchmark/benchmark.{json,md}``. The machine is shared and noisy: compare ratios
measured in the same run, not absolute numbers across runs.
"""

from __future__ import annotations

import os

if "XLA_FLAGS" not in os.environ:  # one CPU device per core, before jax initialises
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={os.cpu_count() or 1}"

import argparse
import resource
import sys
from pathlib import Path

import jax

import jaxmm as mm
from experiments import baselines
from experiments.common import Timer, environment, write_json
from jaxmm import optimal

PARTS = ("simulate", "solvers", "ppo")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.benchmark")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="episodes"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per cell (best kept)")
    parser.add_argument("--loop-episodes", type=int, default=200, help="episodes for the loop")
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="which benchmarks to run (default: all)",
    )
    parser.add_argument("--out", type=Path, default=Path("results/benchmark"))
    args = parser.parse_args(argv)
    if min(args.sizes) < 1 or args.repeats < 1 or args.loop_episodes < 1:
        parser.error("--sizes, --repeats and --loop-episodes must be >= 1")
    return args


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        with Timer() as timer:
            fn()
        best = min(best, timer.seconds)
    return best


def simulate_part(args: argparse.Namespace) -> dict:
    """jaxmm.simulate against the NumPy baselines (episode-steps per second, ratios)."""
    params = mm.presets.homework()
    policy = mm.policies.avellaneda_stoikov(0.1)
    steps = params.n_steps
    devices = jax.local_devices()
    rows = []

    def record(impl: str, n: int, seconds: float, compile_seconds: float | None = None) -> dict:
        row = {
            "implementation": impl,
            "episodes": n,
            "seconds": seconds,
            "episode_steps_per_second": n * steps / seconds,
            "compile_seconds": compile_seconds,
            "peak_rss_mb": peak_rss_mb(),
        }
        rows.append(row)
        print(
            f"{impl:28s} {n:>10,} episodes  {seconds:8.3f} s  "
            f"{row['episode_steps_per_second'] / 1e6:8.2f} M episode-steps/s",
            file=sys.stderr,
            flush=True,
        )
        return row

    jax_variants = {"jaxmm (1 device)": None}
    if len(devices) > 1:
        jax_variants[f"jaxmm ({len(devices)} devices)"] = devices
    for n in args.sizes:
        for name, devs in jax_variants.items():

            def run(seed: int, n=n, devs=devs) -> None:
                ro = mm.simulate(params, policy, jax.random.key(seed), n, devices=devs)
                jax.block_until_ready(ro.pnl)

            first = time_best(lambda run=run: run(0), 1)  # includes compilation
            seconds = time_best(lambda run=run: run(1), args.repeats)
            record(name, n, seconds, compile_seconds=max(first - seconds, 0.0))
        numpy_repeats = args.repeats if n <= 100_000 else 1
        seconds = time_best(
            lambda n=n: baselines.simulate_numpy_vectorised(n, seed=1), numpy_repeats
        )
        record("numpy vectorised", n, seconds)
    seconds = time_best(lambda: baselines.simulate_python_loop(args.loop_episodes, seed=1), 1)
    loop = record("python loop (per episode)", args.loop_episodes, seconds)

    def rate(impl: str, n: int) -> float:
        return next(
            r["episode_steps_per_second"]
            for r in rows
            if r["implementation"] == impl and r["episodes"] == n
        )

    ratios = []
    for n in args.sizes:
        for name in jax_variants:
            ratios.append(
                {
                    "jaxmm": name,
                    "episodes": n,
                    "vs_numpy_vectorised": rate(name, n) / rate("numpy vectorised", n),
                    "vs_python_loop": rate(name, n) / loop["episode_steps_per_second"],
                }
            )
    return {
        "config": {
            "market": params,
            "policy": {"avellaneda_stoikov": {"gamma": 0.1, "k": params.k}},
            "sizes": args.sizes,
            "repeats": args.repeats,
            "loop_episodes": args.loop_episodes,
        },
        "rows": rows,
        "ratios": ratios,
        "markdown": markdown(rows, ratios),
    }


def solvers_part(args: argparse.Namespace) -> dict:
    """Exact solvers: time and accuracy against the PyPI package ``avellaneda-stoikov`` 0.1.0
    (explicit Euler on Cartea-Jaimungal), and the cost of the Bellman optimum and evaluation."""
    from experiments import cj_package

    homework = mm.presets.homework()
    rows = []
    try:
        cj_package.load_package()
        for phi in (2.0, 20.0):  # the homework's per-step 0.01 and 0.1 at dt = 1/200
            for n_steps in (200, 1600, 3200):
                rows.append(cj_package.compare(100.0, 1.5, phi, 0.0, 10, 1.0, n_steps))
        note = "Cartea-Jaimungal, A=100, k=1.5, T=1, q_max=10, alpha=0"
    except ModuleNotFoundError as error:
        note = f"package comparison skipped: {error}"
    optimal.bellman(homework, 0.01)  # compile
    bellman_seconds = time_best(lambda: optimal.bellman(homework, 0.01), args.repeats)
    policy = mm.policies.avellaneda_stoikov(0.1, 1.5)
    optimal.evaluate(homework, policy, 0.01)
    evaluate_seconds = time_best(lambda: optimal.evaluate(homework, policy, 0.01), args.repeats)
    lines = [
        f"Exact solvers ({note}); errors against the exact matrix-exponential solution:",
        "",
        "| phi / time | n_steps | package error h(0,0) | package max depth error | package s |"
        " jaxmm explicit FD s | jaxmm exact (expm) s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['phi']:g} | {r['n_steps']} | diverged | | | | |")
            continue
        lines.append(
            f"| {r['phi']:g} | {r['n_steps']} | {r['error_h00']:.1e} | {r['max_error_depth']:.1e}"
            f" | {r['seconds_package']:.4f} | {r['seconds_jaxmm_fd']:.4f} |"
            f" {r['seconds_jaxmm_expm']:.4f} |"
        )
    lines += [
        "",
        f"Bellman optimum of the homework MDP (200 steps x 401 inventories, joint depths): "
        f"{bellman_seconds:.3f} s; exact evaluation of a policy: {evaluate_seconds:.3f} s.",
    ]
    return {
        "rows": rows,
        "bellman_seconds": bellman_seconds,
        "evaluate_seconds": evaluate_seconds,
        "markdown": "\n".join(lines),
    }


def ppo_part(args: argparse.Namespace) -> dict:
    """PPO training throughput (environment steps per second after compilation) for 1, 8 and
    64 seeds in parallel; Stable-Baselines3 PPO runs about 1,400 steps/s on this CPU."""
    from train.config import PPOConfig
    from train.ppo import benchmark

    rows = benchmark(PPOConfig(), (1, 8, 64))
    lines = [
        "PPO training throughput (homework env, 64 envs x 8 steps per update per seed):",
        "",
        "| seeds in parallel | env steps/s | x SB3 (1,400/s) | compile s |",
        "|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['num_seeds']} | {r['steps_per_second']:,.0f} | "
            f"{r['steps_per_second'] / 1400:.0f} | {r['compile_seconds']:.1f} |"
        )
    return {"rows": rows, "markdown": "\n".join(lines)}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    parts = {}
    if "simulate" in args.parts:
        parts["simulate"] = simulate_part(args)
    if "solvers" in args.parts:
        parts["solvers"] = solvers_part(args)
    if "ppo" in args.parts:
        parts["ppo"] = ppo_part(args)
    table = "\n\n".join(part["markdown"] for part in parts.values())
    print(table)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.md").write_text(table + "\n")
    payload = {
        "study": "benchmark",
        "config": {"parts": args.parts, "xla_flags": os.environ.get("XLA_FLAGS", "")},
        **parts,
        "environment": environment(),
    }
    write_json(out / "benchmark.json", payload)
    print(f"wrote {out}/", file=sys.stderr)
    return payload


def markdown(rows: list[dict], ratios: list[dict]) -> str:
    lines = [
        "| implementation | episodes | seconds | M episode-steps/s | compile s | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        compile_s = "" if r["compile_seconds"] is None else f"{r['compile_seconds']:.2f}"
        lines.append(
            f"| {r['implementation']} | {r['episodes']:,} | {r['seconds']:.3f} | "
            f"{r['episode_steps_per_second'] / 1e6:.2f} | {compile_s} | {r['peak_rss_mb']:.0f} |"
        )
    lines += [
        "",
        "| jaxmm | episodes | x numpy vectorised | x python loop |",
        "|---|---:|---:|---:|",
    ]
    for r in ratios:
        lines.append(
            f"| {r['jaxmm']} | {r['episodes']:,} | {r['vs_numpy_vectorised']:.2f} | "
            f"{r['vs_python_loop']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
