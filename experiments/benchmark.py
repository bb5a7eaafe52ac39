"""Throughput benchmark: jaxmm's simulate against NumPy baselines, side by side in one run.

``python -m experiments.benchmark`` simulates the homework A-S market (gamma = 0.1) with

- ``jaxmm``: ``mm.simulate`` on one device and sharded over every device of the platform (on a
  CPU this module asks XLA for one host device per core unless ``XLA_FLAGS`` is already set);
- ``numpy vectorised``: ``experiments.baselines.simulate_numpy_vectorised``;
- ``python loop``: ``experiments.baselines.simulate_python_loop`` (per episode, as in the seeds);

and reports episode-steps per second (best of ``--repeats`` runs, compile time separately), the
ratios jaxmm / baseline at equal episode counts, and peak resident memory. Results go to
``results/benchmark/benchmark.{json,md}``. The machine is shared and noisy: compare ratios
measured in the same run, not absolute numbers across runs.

The ``scaling`` part measures scale-out: ``mm.simulate``, the streamed
``mm.streaming.simulate_summary`` and PPO training (2 seeds, split over the devices) on 1 and on
N devices (``--scaling-devices``), each configuration in its own process (on a CPU the host is
split into N devices by ``XLA_FLAGS=--xla_force_host_platform_device_count=N``, which must be
set before JAX starts), and reports throughput ratios N / 1. Every result records the devices
it ran on (platform, kind, count); ``--platform``/``--device`` choose the platform.

The ``backtest`` part replays the AMZN day with ``backtest.sweep`` for 1, 100 and 1,000
strategies, on one device and sharded, beside the plain-Python oracle event loop of the tests
(strategy-events per second).

The ``gymnasium`` part times environment steps with random actions through the gymnasium layer:
``jaxmm.gymnasium_env.MarketMakingVectorEnv`` at ``--gym-envs`` sub-environments (one jitted
call per step for all of them) against the single-env adapter ``GymnasiumMarketMakingEnv``
(one jitted call per step) and ``NumpyMarketMakingEnv``, a plain NumPy ``gymnasium.Env`` of the
same homework market written here as the reference; the NumPy env's mean episode reward under a
fixed quote is checked against the vector env's (difference in standard errors). With
Stable-Baselines3 installed it also times PPO training on ``jaxmm.sb3.MarketMakingSB3VecEnv``
against PPO on the single adapter (the same PPO settings and rollout size).
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # one CPU device per core, before JAX starts
    from jaxmm.devices import request_host_devices

    request_host_devices()

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gymnasium
import jax
import numpy as np

import jaxmm as mm
from experiments import baselines
from experiments.common import Timer, add_options, environment, write_json
from jaxmm import devices as device_lib
from jaxmm import optimal, streaming

PARTS = ("simulate", "solvers", "ppo", "scaling", "backtest", "gymnasium")
LOOP_TARGET = 500.0  # simulate / per-episode Python loop, at >= 100k episodes
NUMPY_TARGET = 6.0  # simulate / vectorised NumPy, at >= 100k episodes
BACKTEST_SECONDS_TARGET = 2.0  # 1,000 strategies over the full AMZN day, after compilation
BACKTEST_LOOP_TARGET = 500.0  # backtest.sweep / the plain-Python oracle, per strategy-event
GYM_VECTOR_TARGET = 50.0  # vector env at 64 envs / the single-env adapter, env-steps per second


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.benchmark", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="episodes"
    )
    add_options(
        parser,
        ("--repeats", int, 3, "timed runs per cell (best kept)"),
        ("--loop-episodes", int, 200, "episodes of the Python-loop baseline"),
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="which benchmarks to run (default: all)",
    )
    add_scaling_arguments(parser)
    add_backtest_gym_arguments(parser)
    add_options(
        parser,
        ("--scaling-worker", int, None, argparse.SUPPRESS),
        ("--out", Path, Path("results/benchmark"), "output folder"),
    )
    args = parser.parse_args(argv)
    check_args(parser, args)
    return args


def add_scaling_arguments(parser: argparse.ArgumentParser) -> None:
    """The scaling part's options (device counts, episodes, PPO) and ``--platform``."""
    parser.add_argument(
        "--scaling-devices",
        type=int,
        nargs="+",
        default=[1, 2],
        help="device counts of the scaling part, each in its own process (default 1 2)",
    )
    add_options(parser, ("--scaling-episodes", int, 262_144, "episodes per scaling run"))
    parser.add_argument(
        "--scaling-ppo",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="include PPO training throughput in the scaling part",
    )
    parser.add_argument(
        "--platform",
        "--device",
        dest="platform",
        choices=device_lib.PLATFORMS,
        default=None,
        help="JAX platform (default: JAX's default backend)",
    )


def add_backtest_gym_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the backtest part (strategy counts, the tape) and the gymnasium part."""
    parser.add_argument(
        "--backtest-strategies",
        type=int,
        nargs="+",
        default=[1, 100, 1000],
        help="strategy counts of the backtest part (A-S gamma grids over the AMZN day)",
    )
    parser.add_argument(
        "--backtest-data",
        type=Path,
        default=None,
        help="LOBSTER day of the backtest part (default: ../shared/data/lobster-amzn-2012-06-21)",
    )
    parser.add_argument(
        "--gym-envs",
        type=int,
        nargs="+",
        default=[1, 16, 64, 256],
        help="sub-environment counts of the gymnasium part's vector env",
    )
    parser.add_argument(
        "--gym-steps",
        type=int,
        default=20_000,
        help="env steps timed per cell of the gymnasium part (vector env: at least 2,000 calls)",
    )
    parser.add_argument(
        "--gym-ppo-steps",
        type=int,
        default=8192,
        help="timed SB3 PPO training steps per env of the gymnasium part (0: skip PPO)",
    )
    parser.add_argument(
        "--gym-check-episodes",
        type=int,
        default=256,
        help="episodes of the gymnasium part's same-market check (jaxmm vs the NumPy env)",
    )


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``parser.error`` on sizes, counts and steps out of range, or an unusable platform."""
    if min(args.sizes) < 1 or args.repeats < 1 or args.loop_episodes < 1:
        parser.error("--sizes, --repeats and --loop-episodes must be >= 1")
    if min(args.gym_envs) < 1 or args.gym_steps < GYM_CHUNK_STEPS or args.gym_ppo_steps < 0:
        parser.error(
            f"--gym-envs must be >= 1, --gym-steps >= {GYM_CHUNK_STEPS}, --gym-ppo-steps >= 0"
        )
    if args.gym_check_episodes < 2:
        parser.error("--gym-check-episodes must be >= 2")
    if min(args.scaling_devices) < 1 or args.scaling_episodes < 1:
        parser.error("--scaling-devices and --scaling-episodes must be >= 1")
    try:
        device_lib.select(args.platform, 1)
    except ValueError as error:
        parser.error(str(error))


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
    devices = device_lib.select(args.platform)
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

    jax_variants = {"jaxmm (1 device)": None if args.platform is None else devices[:1]}
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
    large_sizes = sorted({r["episodes"] for r in ratios if r["episodes"] >= 100_000})

    def worst_of_best(measure: str) -> float:
        """Over sizes >= 100k, the lowest ratio of the best jaxmm configuration at that size."""
        return min(max(r[measure] for r in ratios if r["episodes"] == size) for size in large_sizes)

    targets = {}
    if large_sizes:
        targets = {
            "vs_python_loop": {"target": LOOP_TARGET, "worst": worst_of_best("vs_python_loop")},
            "vs_numpy_vectorised": {
                "target": NUMPY_TARGET,
                "worst": worst_of_best("vs_numpy_vectorised"),
            },
        }
    return {
        "targets": targets,
        "config": {
            "market": params,
            "policy": {"avellaneda_stoikov": {"gamma": 0.1, "k": params.k}},
            "sizes": args.sizes,
            "repeats": args.repeats,
            "loop_episodes": args.loop_episodes,
        },
        "rows": rows,
        "ratios": ratios,
        "markdown": markdown(rows, ratios, targets),
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


PPO_WALL_TARGET = 30.0  # seconds for the default `python -m train.ppo` on a 2-core CPU


def default_training_run() -> dict:
    """Time the README's main job, ``python -m train.ppo`` with its defaults, as a user runs it:
    a fresh process (start-up, imports, compilation, 4 seeds x 500k steps, the 10,000-episode
    evaluation), into a temporary folder. Returns its wall time and the PPO optimality gap."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "train.ppo", "--out-dir", tmp, "--name", "default"]
        start = time.perf_counter()
        out = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{out.stderr[-3000:]}")
        metrics = json.loads((Path(tmp) / "default" / "metrics.json").read_text())
    return {
        "command": "python -m train.ppo",
        "wall_seconds": wall,
        "wall_seconds_in_process": metrics["wall_seconds"],
        "optimality_gap": metrics["optimality_gap"],
        "optimality_gap_stderr": metrics["optimality_gap_stderr"],
        "devices": metrics["config"]["devices"],
        "target_seconds": PPO_WALL_TARGET,
        "met": wall <= PPO_WALL_TARGET,
    }


def ppo_part(args: argparse.Namespace) -> dict:
    """The default training run's wall time (``default_training_run``), then PPO training
    throughput (environment steps per second after compilation) for 1, 8 and 64 seeds in
    parallel; Stable-Baselines3 PPO runs about 1,400 steps/s on this CPU."""
    from train.config import PPOConfig
    from train.ppo import benchmark

    default = default_training_run()
    print(
        f"python -m train.ppo: {default['wall_seconds']:.1f} s wall, gap "
        f"{100 * default['optimality_gap']:.2f}%",
        file=sys.stderr,
    )
    rows = benchmark(PPOConfig(devices=1), (1, 8, 64))
    lines = [
        f"Default run `python -m train.ppo` (fresh process, 4 seeds x 500k steps on "
        f"{default['devices']} device(s), 10,000-episode evaluation): "
        f"{default['wall_seconds']:.1f} s wall (target <= {PPO_WALL_TARGET:.0f} s: "
        f"{'met' if default['met'] else 'NOT met'}); optimality gap "
        f"{100 * default['optimality_gap']:.2f}% +- {100 * default['optimality_gap_stderr']:.2f}%.",
        "",
        "PPO training throughput, one device (homework env, 64 envs x 8 steps per update per "
        "seed):",
        "",
        "| seeds in parallel | env steps/s | x SB3 (1,400/s) | compile s |",
        "|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['num_seeds']} | {r['steps_per_second']:,.0f} | "
            f"{r['steps_per_second'] / 1400:.0f} | {r['compile_seconds']:.1f} |"
        )
    return {"default_run": default, "rows": rows, "markdown": "\n".join(lines)}


SCALING_ROWS = (
    ("simulate", "mm.simulate", "episode-steps/s"),
    ("simulate_summary", "mm.streaming.simulate_summary", "episode-steps/s"),
    ("ppo", "PPO training, 2 seeds", "env steps/s"),
)


def scaling_worker(args: argparse.Namespace) -> dict:
    """One configuration of the scaling part, run in its own process: throughput on
    ``args.scaling_worker`` devices of ``args.platform``."""
    count = args.scaling_worker
    devices = device_lib.select(args.platform, count)
    split = devices if count > 1 or args.platform is not None else None
    params = mm.presets.homework()
    policy = mm.policies.avellaneda_stoikov(0.1)
    n = args.scaling_episodes
    result = {"devices": device_lib.describe(devices), "xla_flags": os.environ.get("XLA_FLAGS")}

    def simulate(seed: int) -> None:
        jax.block_until_ready(
            mm.simulate(params, policy, jax.random.key(seed), n, devices=split).pnl
        )

    def summary(seed: int) -> None:
        streaming.simulate_summary(params, policy, jax.random.key(seed), n, devices=split)

    for name, fn in (("simulate", simulate), ("simulate_summary", summary)):
        with Timer() as first:
            fn(0)
        seconds = time_best(lambda fn=fn: fn(1), args.repeats)
        result[name] = {
            "episodes": n,
            "seconds": seconds,
            "compile_seconds": max(first.seconds - seconds, 0.0),
            "rate": n * params.n_steps / seconds,
        }
    if args.scaling_ppo:
        from train.config import PPOConfig
        from train.ppo import benchmark

        config = PPOConfig(num_seeds=2, devices=count, platform=args.platform)
        row = benchmark(config, (2,), min_steps=100_000)[0]
        result["ppo"] = {**row, "rate": row["steps_per_second"]}
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def scaling_part(args: argparse.Namespace) -> dict:
    """Throughput on 1 and on N devices, each device count in a fresh process."""
    configurations = []
    for count in args.scaling_devices:
        env = dict(os.environ)
        if args.platform in (None, "cpu"):
            env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={count}"
        command = [
            sys.executable, "-m", "experiments.benchmark", "--scaling-worker", str(count),
            "--scaling-episodes", str(args.scaling_episodes), "--repeats", str(args.repeats),
            "--scaling-ppo" if args.scaling_ppo else "--no-scaling-ppo",
        ]  # fmt: skip
        if args.platform is not None:
            command += ["--platform", args.platform]
        print(f"scaling: {count} device(s)", file=sys.stderr, flush=True)
        out = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"scaling worker ({count} devices) failed:\n{out.stderr[-3000:]}")
        configurations.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = configurations[0]
    rows = []
    for key, label, unit in SCALING_ROWS:
        if key not in base:
            continue
        for config in configurations:
            rows.append(
                {
                    "measurement": label,
                    "unit": unit,
                    "devices": config["devices"]["devices_used"],
                    "rate": config[key]["rate"],
                    "compile_seconds": config[key]["compile_seconds"],
                    "ratio_to_first": config[key]["rate"] / base[key]["rate"],
                }
            )
    first = base["devices"]
    lines = [
        f"Scale-out on {first['platform']} ({first['device_kind']}), each device count in its "
        f"own process ({os.cpu_count()} CPU cores on this machine); {args.scaling_episodes:,} "
        "episodes of the homework A-S market per simulation run:",
        "",
        f"| measurement | devices | rate | compile s | x {first['devices_used']} device(s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['measurement']} ({r['unit']}) | {r['devices']} | {r['rate'] / 1e6:.2f} M | "
            f"{r['compile_seconds']:.1f} | {r['ratio_to_first']:.2f} |"
        )
    return {
        "config": {
            "scaling_devices": args.scaling_devices,
            "scaling_episodes": args.scaling_episodes,
            "repeats": args.repeats,
            "ppo": args.scaling_ppo,
        },
        "configurations": configurations,
        "rows": rows,
        "markdown": "\n".join(lines),
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.scaling_worker is not None:
        result = scaling_worker(args)
        print(json.dumps(result))
        return result
    parts = {}
    if "simulate" in args.parts:
        parts["simulate"] = simulate_part(args)
    if "solvers" in args.parts:
        parts["solvers"] = solvers_part(args)
    if "ppo" in args.parts:
        parts["ppo"] = ppo_part(args)
    if "scaling" in args.parts:
        parts["scaling"] = scaling_part(args)
    if "backtest" in args.parts:
        parts["backtest"] = backtest_part(args)
    if "gymnasium" in args.parts:
        parts["gymnasium"] = gymnasium_part(args)
    devices = device_lib.describe(device_lib.select(args.platform))
    header = (
        f"Devices: {devices['devices_used']} x {devices['platform']} ({devices['device_kind']}), "
        f"{devices['process_count']} process(es); XLA_FLAGS={os.environ.get('XLA_FLAGS', '')}"
    )
    table = "\n\n".join([header, *(part["markdown"] for part in parts.values())])
    print(table)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.md").write_text(table + "\n")
    payload = {
        "study": "benchmark",
        "config": {"parts": args.parts, "xla_flags": os.environ.get("XLA_FLAGS", "")},
        **parts,
        "devices": devices,
        "environment": environment(),
    }
    write_json(out / "benchmark.json", payload)
    print(f"wrote {out}/", file=sys.stderr)
    return payload


def backtest_part(args: argparse.Namespace) -> dict:
    """``backtest.sweep`` over a full LOBSTER day (A-S, one gamma per strategy) on one device and
    sharded over every device, against the plain-Python oracle event loop of the tests
    (strategy-events per second; best of ``--repeats`` after compilation)."""
    from experiments.calibration import default_data_dir
    from jaxmm import backtest, lobster
    from tests.oracles import backtest as oracle

    data = args.backtest_data or default_data_dir()
    day = lobster.read_lobster(data)
    tape = backtest.tape(day)
    config = backtest.Config(quote_size=100, requote=1.0)
    params = backtest.market_params(tape, config, sigma=0.02, A=0.2, k=27.0)
    devices = device_lib.select(args.platform)
    variants = {"backtest.sweep (1 device)": None if args.platform is None else devices[:1]}
    if len(devices) > 1:
        variants[f"backtest.sweep ({len(devices)} devices)"] = devices
    rows = []
    for n in args.backtest_strategies:
        policies = mm.policies.AvellanedaStoikov(
            gamma=np.geomspace(1e-4, 1.0, n), k=np.full(n, 27.0), sigma=np.full(n, 0.02)
        )
        for name, devs in variants.items():

            def run(policies=policies, devs=devs):
                return backtest.sweep(tape, policies, params, config, devices=devs)

            first = time_best(run, 1)
            seconds = time_best(run, args.repeats)
            rows.append(
                {
                    "implementation": name,
                    "strategies": n,
                    "seconds": seconds,
                    "compile_seconds": max(first - seconds, 0.0),
                    "strategy_events_per_second": n * tape.n_events / seconds,
                }
            )
            print(f"{name} {n:>6,} strategies {seconds:7.3f} s", file=sys.stderr, flush=True)
    message, book = lobster.find_files(data)
    oracle_tape = oracle.read_tape(message, book)
    strategy = oracle.avellaneda_stoikov(0.01, 27.0, 0.02)
    window = {"start": tape.start, "end": tape.end, "session_T": tape.end - tape.start}
    with Timer() as timer:
        oracle.replay(oracle_tape, strategy, n_steps=int(params.n_steps), **window)
    loop_rate = tape.n_events / timer.seconds
    rows.append(
        {
            "implementation": "python event loop (tests/oracles/backtest.py)",
            "strategies": 1,
            "seconds": timer.seconds,
            "compile_seconds": None,
            "strategy_events_per_second": loop_rate,
        }
    )
    jax_rows = [r for r in rows if r["compile_seconds"] is not None]
    largest = max(args.backtest_strategies)
    best_large = min(r["seconds"] for r in jax_rows if r["strategies"] == largest)
    best_rate = max(r["strategy_events_per_second"] for r in jax_rows)
    lines = [
        f"Backtest: {tape.ticker} {tape.date}, {tape.n_events:,} events, requote 1 s "
        f"({int(params.n_steps):,} decisions), conservative queue, A-S gammas:",
        "",
        "| implementation | strategies | seconds | M strategy-events/s | compile s |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        compile_s = _compile_cell(r["compile_seconds"])
        lines.append(
            f"| {r['implementation']} | {r['strategies']:,} | {r['seconds']:.3f} | "
            f"{r['strategy_events_per_second'] / 1e6:.3f} | {compile_s} |"
        )
    ratio = best_rate / loop_rate
    lines += [
        "",
        f"Targets: {largest:,} strategies in <= {BACKTEST_SECONDS_TARGET:g} s: best "
        f"{best_large:.2f} s ({'met' if best_large <= BACKTEST_SECONDS_TARGET else 'NOT met'}"
        f"); >= {BACKTEST_LOOP_TARGET:g}x the Python loop per strategy-event: {ratio:.0f}x "
        f"({'met' if ratio >= BACKTEST_LOOP_TARGET else 'NOT met'}).",
    ]
    return {
        "rows": rows,
        "data": str(data),
        "n_events": tape.n_events,
        "targets": {
            "seconds_at_largest": {"value": best_large, "target": BACKTEST_SECONDS_TARGET},
            "vs_python_loop": {"value": ratio, "target": BACKTEST_LOOP_TARGET},
        },
        "markdown": "\n".join(lines),
    }


class NumpyMarketMakingEnv(gymnasium.Env):
    """The homework market as a plain NumPy ``gymnasium.Env``: the speed reference.

    Written from the model of ``jaxmm.market`` (its module docstring), not from its code: the
    arithmetic mid, linear fills ``min(1, A exp(-k delta) dt)`` drawn independently at
    ``S_t -+ delta``, ``q_{t+1} = q_t + bid_fill - ask_fill``, the mid moves by
    ``sigma sqrt(dt) Z``, PnL increment ``fills * depth + q_{t+1} (S_{t+1} - S_t)``, reward
    ``dPnL - phi q_{t+1}^2``; the ``"full"`` observation of ``jaxmm.env`` (inventory / 10,
    ``(S_t - S0) / (2 sqrt(T))``, time left, the trailing 20-step realised volatility / 2, the A-S
    spread at ``gamma = 0.1`` in units of ``2/k``); depth actions clipped to ``[0.01, 5]``.
    Its random numbers are NumPy's, so its episodes differ from jaxmm's path by path but not in
    distribution.
    """

    metadata = {"render_modes": []}  # noqa: RUF012 (gymnasium's class attribute)
    window, gamma = 20, 0.1

    def __init__(self, phi: float = 0.01):
        market = mm.presets.homework()
        self.S0, self.sigma, self.T = market.S0, market.sigma, market.T
        self.A, self.k, self.n_steps = market.A, market.k, market.n_steps
        self.dt, self.phi = market.T / market.n_steps, phi
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (5,), np.float32)
        self.action_space = gymnasium.spaces.Box(0.01, 5.0, (2,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t, self.mid, self.inventory = 0, self.S0, 0.0
        self.returns = np.zeros(self.window)
        return self.observe(), {}

    def observe(self) -> np.ndarray:
        count = min(self.t, self.window)
        vol = np.sqrt(np.sum(self.returns**2) / (count * self.dt)) if count else self.sigma
        time_left = self.T - self.t * self.dt
        spread = self.gamma * self.sigma**2 * time_left + (2 / self.gamma) * np.log1p(
            self.gamma / self.k
        )
        return np.array(
            [
                self.inventory / 10.0,
                (self.mid - self.S0) / (2.0 * np.sqrt(self.T)),
                (self.n_steps - self.t) / self.n_steps,
                vol / 2.0,
                spread * self.k / 2.0,
            ],
            np.float32,
        )

    def step(self, action: np.ndarray):
        bid_depth, ask_depth = np.clip(np.asarray(action, np.float64), 0.01, 5.0)
        u_bid, u_ask = self.np_random.random(2)
        bid_fill = float(u_bid < min(1.0, self.A * np.exp(-self.k * bid_depth) * self.dt))
        ask_fill = float(u_ask < min(1.0, self.A * np.exp(-self.k * ask_depth) * self.dt))
        self.inventory += bid_fill - ask_fill
        change = self.sigma * np.sqrt(self.dt) * self.np_random.standard_normal()
        pnl = bid_fill * bid_depth + ask_fill * ask_depth + self.inventory * change
        self.mid += change
        self.returns[self.t % self.window] = change
        self.t += 1
        reward = pnl - self.phi * self.inventory**2
        return self.observe(), float(reward), self.t >= self.n_steps, False, {}


GYM_CHUNK_STEPS = 50  # calls per timed chunk of the gymnasium part (the best chunk counts)


def best_chunk_rate(step, n_calls: int, steps_per_call: int) -> float:
    """Env steps per second of the fastest chunk of ``GYM_CHUNK_STEPS`` calls of ``step(i)``,
    ``i`` in ``range(n_calls)``: on a shared CPU a long run measures the neighbours' load, the
    fastest chunk the code (``timeit``'s rule)."""
    best = float("inf")
    for start in range(0, n_calls - GYM_CHUNK_STEPS + 1, GYM_CHUNK_STEPS):
        with Timer() as timer:
            for i in range(start, start + GYM_CHUNK_STEPS):
                step(i)
        best = min(best, timer.seconds)
    return GYM_CHUNK_STEPS * steps_per_call / best


def single_env_rate(env, steps: int, seed: int = 0) -> float:
    """Env steps per second of a single gymnasium env under random actions (pre-drawn),
    resetting at the end of each episode (``best_chunk_rate`` over ``steps`` steps)."""
    rng = np.random.default_rng(seed)
    low, high = env.action_space.low, env.action_space.high
    actions = rng.uniform(low, high, (steps, *low.shape)).astype(np.float32)
    env.reset(seed=seed)
    for action in actions[:10]:  # warm-up (compilation for the jaxmm adapter)
        if env.step(action)[2]:
            env.reset()

    def step(i: int) -> None:
        if env.step(actions[i])[2]:
            env.reset()

    return best_chunk_rate(step, steps, 1)


def vector_env_rate(envs, calls: int, seed: int = 0) -> tuple[float, float]:
    """``(env steps per second, compile seconds)`` of a vector env under random actions
    (``best_chunk_rate`` over ``calls`` calls)."""
    rng = np.random.default_rng(seed)
    low, high = envs.single_action_space.low, envs.single_action_space.high
    actions = rng.uniform(low, high, (calls, envs.num_envs, *low.shape)).astype(np.float32)
    with Timer() as compile_timer:
        envs.reset(seed=seed)
        envs.step(actions[0])
    return best_chunk_rate(lambda i: envs.step(actions[i]), calls, envs.num_envs), (
        compile_timer.seconds
    )


def fixed_quote_rewards(envs_or_env, episodes: int, depth: float = 0.75) -> np.ndarray:
    """Episode rewards of the fixed quote ``(depth, depth)``: a vector env runs ``num_envs``
    episodes at once, a single env ``episodes`` in turn."""
    action = np.array([depth, depth], np.float32)
    if hasattr(envs_or_env, "num_envs"):
        envs = envs_or_env
        envs.reset(seed=123)
        total = np.zeros(envs.num_envs)
        for _ in range(mm.presets.homework().n_steps):
            total += envs.step(np.tile(action, (envs.num_envs, 1)))[1]
        return total
    env, totals = envs_or_env, []
    for episode in range(episodes):
        env.reset(seed=10_000 + episode)
        total, terminated = 0.0, False
        while not terminated:
            _, reward, terminated, _, _ = env.step(action)
            total += reward
        totals.append(total)
    return np.array(totals)


def sb3_ppo_rates(steps_per_env: int) -> dict | None:
    """SB3 PPO training env steps per second on the SB3 vector env (64 envs x 32 steps per
    rollout) and on the single adapter (1 env x 2,048 steps), both with SB3's other defaults
    (batch 64, 10 epochs): the same rollout size and gradient work per update. None without
    Stable-Baselines3."""
    try:
        import torch
        from stable_baselines3 import PPO
    except ModuleNotFoundError:
        return None
    from jaxmm.gymnasium_env import make_env
    from jaxmm.sb3 import make_sb3_vec_env

    torch.set_num_threads(1)
    rows = {}
    for name, env, n_steps in (
        ("vector_64", make_sb3_vec_env(64, normalize_actions=True, seed=0), 32),
        ("single_adapter", make_env(normalize_actions=True, seed=0), 2048),
    ):
        model = PPO("MlpPolicy", env, n_steps=n_steps, seed=0, device="cpu")
        model.learn(2048)  # warm-up: compilation, the first rollout and update
        with Timer() as timer:
            model.learn(steps_per_env, reset_num_timesteps=False)
        rows[name] = steps_per_env / timer.seconds
    rows["ratio"] = rows["vector_64"] / rows["single_adapter"]
    return rows


def gymnasium_part(args: argparse.Namespace) -> dict:
    """Env steps per second with random actions: the vector env at ``--gym-envs`` sizes, the
    single-env adapter and the NumPy reference env, with ratios; SB3 PPO training rates."""
    from jaxmm.gymnasium_env import make_env, make_vector_env

    single = single_env_rate(make_env(), min(args.gym_steps, 5_000))
    numpy_rate = single_env_rate(NumpyMarketMakingEnv(), args.gym_steps)
    rows = []
    for n in args.gym_envs:
        calls = max(2_000, args.gym_steps // n)  # >= 40 chunks to pick the fastest from
        rate, compile_seconds = vector_env_rate(make_vector_env(n), calls)
        rows.append(
            {
                "num_envs": n,
                "steps_per_second": rate,
                "compile_seconds": compile_seconds,
                "vs_single_adapter": rate / single,
                "vs_numpy": rate / numpy_rate,
            }
        )
        print(f"vector env n={n}: {rate:,.0f} env-steps/s", file=sys.stderr)
    episodes = args.gym_check_episodes
    jax_rewards = fixed_quote_rewards(make_vector_env(episodes), episodes)
    numpy_rewards = fixed_quote_rewards(NumpyMarketMakingEnv(), episodes)
    difference = jax_rewards.mean() - numpy_rewards.mean()
    stderr = np.hypot(jax_rewards.std(ddof=1), numpy_rewards.std(ddof=1)) / np.sqrt(episodes)
    ppo = sb3_ppo_rates(args.gym_ppo_steps) if args.gym_ppo_steps else None
    at_64 = next((r for r in rows if r["num_envs"] == 64), None)
    lines = [
        "Gymnasium layer, homework market, random actions (env steps per second after "
        f"compilation, the fastest chunk of {GYM_CHUNK_STEPS} calls): `MarketMakingVectorEnv` "
        "(one jitted call steps "
        "all envs) against the "
        f"single-env adapter ({single:,.0f}/s) and a plain NumPy gymnasium env of the same "
        f"market ({numpy_rate:,.0f}/s; NumPy / adapter = {numpy_rate / single:.1f}x).",
        "",
        "| vector envs | env steps/s | x single adapter | x NumPy env | compile s |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['num_envs']} | {r['steps_per_second']:,.0f} | {r['vs_single_adapter']:.1f} | "
            f"{r['vs_numpy']:.2f} | {r['compile_seconds']:.2f} |"
        )
    if at_64 is not None:
        verdict = "met" if at_64["vs_single_adapter"] >= GYM_VECTOR_TARGET else "NOT met"
        lines.append(
            f"\nTarget: >= {GYM_VECTOR_TARGET:g}x the single adapter at 64 envs: "
            f"{at_64['vs_single_adapter']:.1f}x, {verdict}."
        )
    lines.append(
        f"\nSame market: mean episode reward of the quote (0.75, 0.75) over {episodes} episodes, "
        f"jaxmm {jax_rewards.mean():.3f}, NumPy {numpy_rewards.mean():.3f} (difference "
        f"{difference / stderr:+.1f} SE)."
    )
    if ppo is None:
        lines.append("\nSB3 PPO: skipped (stable-baselines3 not installed or --gym-ppo-steps 0).")
    else:
        lines.append(
            f"\nSB3 PPO training (MlpPolicy, rollout 2,048 steps, batch 64, 10 epochs, torch on 1 "
            f"thread): {ppo['vector_64']:,.0f} env steps/s on `jaxmm.sb3` with 64 envs, "
            f"{ppo['single_adapter']:,.0f} on the single adapter ({ppo['ratio']:.1f}x)."
        )
    return {
        "rows": rows,
        "single_adapter_steps_per_second": single,
        "numpy_steps_per_second": numpy_rate,
        "target_vs_single_at_64": GYM_VECTOR_TARGET,
        "same_market": {
            "jaxmm_mean_reward": float(jax_rewards.mean()),
            "numpy_mean_reward": float(numpy_rewards.mean()),
            "difference_in_stderr": float(difference / stderr),
        },
        "sb3_ppo": ppo,
        "markdown": "\n".join(lines),
    }


def _compile_cell(seconds: float | None) -> str:
    """A table's compile-seconds cell: empty for the rows that do not compile (NumPy, Python)."""
    return "" if seconds is None else f"{seconds:.2f}"


def markdown(rows: list[dict], ratios: list[dict], targets: dict) -> str:
    lines = [
        "| implementation | episodes | seconds | M episode-steps/s | compile s | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        compile_s = _compile_cell(r["compile_seconds"])
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
    for name, label in (("vs_python_loop", "python loop"), ("vs_numpy_vectorised", "numpy")):
        if targets.get(name):
            worst, target = targets[name]["worst"], targets[name]["target"]
            verdict = "met" if worst >= target else "NOT met"
            lines.append(
                f"\nTarget: >= {target:g}x {label} at every size >= 100,000 episodes (best "
                f"jaxmm configuration per size); lowest {worst:.1f}x: {verdict}."
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
