"""Learning by differentiation: gradient estimators scored against the exact gradient, training
head to head with PPO, and where pathwise gradients break.

``python -m experiments.diffsim [--parts estimators,h2h,breaks]`` writes into ``--out``
(default ``results/diffsim``):

- ``estimators``: at the fresh network (the A-S quote, no skew) of ``train.diffsim`` on the
  homework at phi 0.01 and 0.1, each estimator's gradient over ``--reps`` independent batches
  of each batch size, against the exact gradient (``Problem.exact_reward``): the mean cosine of
  one batch's gradient to the exact one, the mean relative error ``|g - g*| / |g*|``, the bias
  (cosine and relative error of the mean over the batches) and the relative variance
  ``E|g - mean g|^2 / |g*|^2``. Estimators: relaxed at several temperatures, expected-fill,
  and PPO's (``Problem.ppo_gradient``, critic: the exact values of the stochastic policy)
  against the exact gradient of PPO's stochastic policy. ``estimators.csv``, a figure.
- ``h2h``: ``train.diffsim`` (expected, relaxed, exact) and ``train.ppo`` at its default
  budget, phi 0.01 and 0.1: the final optimality gap and its SE (``train.evaluate``), the
  environment steps and training seconds to reach 95% and 99% of the optimum, the seed spread.
- ``breaks``: the cosine of the relaxed and expected-fill gradients to a reference gradient
  as a market option is turned up: the temperature (discrete fills), the inventory limit
  ``q_max`` (exact reference), latency and the loss-limit halt (reference: the expected-fill
  estimator over many episodes for latency, which it handles exactly; central differences
  of the hard simulator's mean reward on common random numbers for the halt). One figure each.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from experiments import common
from jaxmm import market
from train import diffsim, evaluate, ppo
from train.config import PPOConfig, market_env

__all__ = ["PARTS", "main", "part_breaks", "part_estimators", "part_h2h", "score"]

PARTS = ("estimators", "h2h", "breaks")
PHIS = (0.01, 0.1)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def score(samples: np.ndarray, exact: np.ndarray) -> dict[str, float]:
    """Bias and variance of gradient samples ``[reps, P]`` against the exact ``[P]``."""
    norm = np.linalg.norm(exact)
    mean = samples.mean(axis=0)
    return {
        "cosine": float(np.mean([_cosine(g, exact) for g in samples])),
        "relative_error": float(np.mean(np.linalg.norm(samples - exact, axis=1)) / norm),
        "bias_cosine": _cosine(mean, exact),
        "bias_relative_error": float(np.linalg.norm(mean - exact) / norm),
        "relative_variance": float(np.mean(np.sum((samples - mean) ** 2, axis=1)) / norm**2),
    }


def estimator_samples(
    problem: diffsim.Problem,
    params: Any,
    name: str,
    batch: int,
    reps: int,
    seed: int,
    temperature: float = 0.1,
    ppo_values: Any = None,
) -> tuple[np.ndarray, float]:
    """``reps`` gradients (actor vectors) of ``name`` on disjoint batches, and seconds per one."""
    stream = market.stream_key(jax.random.key(seed))
    ppo_config = PPOConfig()

    @jax.jit
    def one(episodes, key):
        if name == "ppo":
            grad = problem.ppo_gradient(params, stream, episodes, key, ppo_config, ppo_values)[1]
        else:
            grad = problem.gradient(name, params, stream, episodes, temperature)[1]
        return problem.actor_vector(grad)

    keys = jax.random.split(jax.random.key(seed + 1), reps)
    base = jnp.arange(batch, dtype=jnp.uint32)
    jax.block_until_ready(one(base, keys[0]))  # compile
    start = time.perf_counter()
    rows = [np.asarray(one(base + np.uint32(r * batch), keys[r])) for r in range(reps)]
    return np.stack(rows).astype(np.float64), (time.perf_counter() - start) / reps


def part_estimators(args, out: Path) -> dict[str, Any]:
    rows = []
    for phi in PHIS:
        config = diffsim.DiffSimConfig(phi=phi)
        problem = diffsim.make_problem(config)
        params = problem.init(jax.random.key(args.seed))
        exact = np.asarray(problem.actor_vector(jax.jit(jax.grad(problem.exact_reward))(params)))
        stochastic = jax.jit(jax.grad(problem.exact_stochastic_reward))(params)
        exact_stochastic = np.asarray(problem.actor_vector(stochastic))
        bids, asks, weights = problem.stochastic_tables(params)
        values = problem.objective.values(bids, asks, weights)
        values = jnp.concatenate([values, jnp.zeros((1, values.shape[1]), values.dtype)])
        settings = [("relaxed", t) for t in args.temperatures] + [("expected", None), ("ppo", None)]
        for name, temperature in settings:
            for batch in args.batches:
                samples, seconds = estimator_samples(
                    problem, params, name, batch, args.reps, args.seed + 10,
                    temperature or 0.1, values,
                )  # fmt: skip
                target = exact_stochastic if name == "ppo" else exact
                row = {
                    "phi": phi,
                    "estimator": name if temperature is None else f"relaxed T={temperature:g}",
                    "batch_episodes": batch,
                    "reps": args.reps,
                    **score(samples, target),
                    "seconds_per_gradient": seconds,
                }
                row["cosine_to_deterministic_gradient"] = (
                    score(samples, exact)["cosine"] if name == "ppo" else None
                )
                rows.append(row)
                print(
                    f"phi={phi} {row['estimator']:<16} batch {batch:>5}: cos {row['cosine']:.3f} "
                    f"rel.err {row['relative_error']:.3f} bias cos {row['bias_cosine']:.3f}",
                    flush=True,
                )
    common.write_rows_csv(out / "estimators.csv", rows)
    _plot_estimators(rows, out / "estimators.png", args.batches)
    return {"estimators": rows}


def _plot_estimators(rows, path, batches):
    fig, axes = plt.subplots(1, len(PHIS), figsize=(11, 4.2), sharey=True)
    for ax, phi in zip(axes, PHIS, strict=True):
        names = sorted({r["estimator"] for r in rows if r["phi"] == phi})
        for name in names:
            cos = [r["cosine"] for r in rows if r["phi"] == phi and r["estimator"] == name]
            ax.plot(batches, cos, "o-", label=name)
        ax.set(xscale="log", xlabel="episodes per gradient", title=f"phi = {phi}")
    axes[0].set_ylabel("mean cosine to the exact gradient")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    common.save_figure(fig, path)


# ------------------------------------------------------------------------------ head to head


def _reaching(curve, optimum, level, key, value_key):
    for entry in curve:
        if np.mean(entry[value_key]) >= level * optimum:
            return entry[key]
    return None


def progress_optimum(config: PPOConfig) -> float:
    """The exact optimal policy's mean reward on the progress-evaluation episodes of
    ``train.evaluate.make_progress_evaluator`` (``progress_episodes`` on ``key(eval_seed +
    1)``): the progress rewards divided by it are fractions of the optimum on the same paths
    (common random numbers), far less noisy than divided by the exact optimum."""
    import jaxmm as mm

    _, env_params = market_env(config)
    solution = evaluate.optimal_solution(env_params)
    stream = market.stream_key(jax.random.key(config.eval_seed + 1))
    episodes = jnp.arange(config.progress_episodes, dtype=jnp.uint32)
    rollout = mm.rollout(
        env_params.market, mm.policies.table(solution), stream, episodes,
        paths=evaluate.needs_paths(env_params),
    )  # fmt: skip
    return float(np.mean(np.asarray(evaluate.episode_reward(rollout, env_params), np.float64)))


def _run(train, config, reuse: bool) -> tuple[dict[str, Any], float]:
    """``train(config)``'s payload and its seconds, or with ``reuse`` an earlier run's
    ``metrics.json`` (its recorded seconds) when it exists."""
    path = Path(config.out_dir) / config.name / "metrics.json"
    if reuse and path.is_file():
        payload = json.loads(path.read_text())
        return payload, payload.get("wall_seconds", math.nan)
    with common.Timer() as timer:
        payload = train(config)
    return payload, timer.seconds


def part_h2h(args, out: Path) -> dict[str, Any]:
    rows = []
    for phi in PHIS:
        for estimator, extra in args.h2h_runs:
            fields = {
                "phi": phi,
                "estimator": estimator,
                "name": f"diffsim_{estimator}_phi{phi}",
                "out_dir": str(out / "runs"),
                "num_evals": args.num_evals,
                **extra,
            }
            fields["name"] = fields["name"].format(phi=phi)
            config = diffsim.DiffSimConfig(**fields)
            payload, seconds = _run(diffsim.train_run, config, args.reuse)
            rows.append(
                {
                    "phi": phi,
                    "agent": f"diffsim/{estimator}",
                    "settings": {k: v for k, v in extra.items() if k != "name"},
                    "optimality_gap": payload["optimality_gap"],
                    "optimality_gap_stderr": payload["optimality_gap_stderr"],
                    "env_steps": payload["env_steps"],
                    "env_steps_to_95": payload["env_steps_to_95"],
                    "env_steps_to_99": payload["env_steps_to_99"],
                    "seconds_to_95": payload["seconds_to_95"],
                    "seconds_to_99": payload["seconds_to_99"],
                    "final_progress_fraction": None,
                    "final_exact_fraction": payload["progress_evals"][-1][
                        "exact_fraction_of_optimum"
                    ],
                    "seed_spread_exact": float(
                        np.std(payload["progress_evals"][-1]["exact_reward"], ddof=1)
                        / payload["optimal_reward"]
                    ),
                    "training_seconds": payload["training_wall_seconds"],
                    "command_seconds": seconds,
                }
            )
            print(rows[-1], flush=True)
        if not args.no_ppo:
            config = PPOConfig(
                phi=phi,
                total_timesteps=args.ppo_timesteps,
                name=f"ppo_phi{phi}",
                out_dir=str(out / "runs"),
                num_evals=args.num_evals,
            )
            payload, seconds = _run(ppo.train_run, config, args.reuse)
            optimum = progress_optimum(config)  # on the progress episodes themselves
            curve = payload["progress_evals"]
            seconds_per_step = payload["training_wall_seconds"] / (
                config.num_updates * config.batch_size
            )
            to = {
                level: _reaching(curve, optimum, level, "env_steps", "mean_reward")
                for level in (0.95, 0.99)
            }
            rows.append(
                {
                    "phi": phi,
                    "agent": "ppo",
                    "settings": {"total_timesteps": args.ppo_timesteps},
                    "optimality_gap": payload["optimality_gap"],
                    "optimality_gap_stderr": payload["optimality_gap_stderr"],
                    "env_steps": config.num_updates * config.batch_size,
                    "env_steps_to_95": to[0.95],
                    "env_steps_to_99": to[0.99],
                    "seconds_to_95": None if to[0.95] is None else to[0.95] * seconds_per_step,
                    "seconds_to_99": None if to[0.99] is None else to[0.99] * seconds_per_step,
                    "final_exact_fraction": None,
                    "final_progress_fraction": float(np.mean(curve[-1]["mean_reward"]) / optimum),
                    "seed_spread_exact": float(
                        np.std(curve[-1]["mean_reward"], ddof=1) / optimum
                    ),  # Monte Carlo (PPO reads the mid path: no exact value)
                    "training_seconds": payload["training_wall_seconds"],
                    "command_seconds": seconds,
                }
            )
            print(rows[-1], flush=True)
    common.write_rows_csv(out / "h2h.csv", rows)
    return {"h2h": rows}


# ------------------------------------------------------------------------------- where it breaks


def _problem_on(config: diffsim.DiffSimConfig, **market_options) -> diffsim.Problem:
    env, env_params = market_env(config.ppo_config())
    changed = env_params.market.replace(**market_options).validate()
    return diffsim.make_problem(config, env, env_params.replace(market=changed))


def _reference_fd(problem, params, direction, stream, n_batches, batch, h):
    """Central difference of the hard simulator's mean reward along ``direction`` on common
    random numbers (``n_batches`` batches of ``batch`` episodes): the derivative of the
    expectation, which a pathwise estimator can miss. Returns ``(mean, standard error)``."""
    flat, unravel = jax.flatten_util.ravel_pytree(params)

    @jax.jit
    def difference(episodes):
        up = problem.expected_surrogate(unravel(flat + h * direction), stream, episodes)[1]
        down = problem.expected_surrogate(unravel(flat - h * direction), stream, episodes)[1]
        return (up - down) / (2 * h)

    base = jnp.arange(batch, dtype=jnp.uint32)
    values = np.asarray([float(difference(base + np.uint32(b * batch))) for b in
                         range(n_batches)])  # fmt: skip
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(n_batches))


_BREAK_SETTINGS = (  # (label, estimator, temperature) of the estimators part_breaks scores
    ("relaxed T=0.3", "relaxed", 0.3),
    ("relaxed T=0.03", "relaxed", 0.03),
    ("expected", "expected", 0.1),
)


def part_breaks(args, out: Path) -> dict[str, Any]:
    """Where the pathwise gradients break, at phi 0.1: the relaxed-fill temperature, inventory
    limits, latency and the loss-limit halt, each against its reference gradient."""
    config = diffsim.DiffSimConfig(phi=0.1)
    settings = list(_BREAK_SETTINGS)
    results: dict[str, Any] = {}
    figures = {}
    results["temperature"], figures["temperature"] = _breaks_temperature(config, args, out)
    results["q_max"] = rows = _breaks_q_max(config, args, settings)
    figures["q_max"] = _plot_breaks(rows, "q_max", "inventory limit q_max", out, settings)
    results["latency"] = rows = _breaks_latency(config, args, settings)
    figures["latency"] = _plot_breaks(rows, "latency", "latency (steps)", out, settings)
    results["loss_limit"] = rows = _breaks_loss_limit(config, args, settings)
    figures["loss_limit"] = _plot_halt(rows, settings, out)
    return {"breaks": results, "figures": figures}


def _break_cosines(problem, params, reference, settings, args) -> dict[str, float]:
    """Each setting's mean cosine (one batch of 64 episodes, ``args.reps`` batches) and bias
    cosine (of the mean) to ``reference``, by label."""
    row = {}
    for label, name, temperature in settings:
        samples, _ = estimator_samples(
            problem, params, name, 64, args.reps, args.seed + 20, temperature
        )
        scores = score(samples, reference)
        row[label] = scores["cosine"]
        row[f"{label} bias"] = scores["bias_cosine"]
    return row


def _breaks_temperature(config, args, out: Path) -> tuple[list[dict], str]:
    """Discrete fills: the relaxed estimator's cosine to the exact gradient by temperature;
    returns the rows and the figure's path."""
    batch, reps = 64, args.reps
    problem = diffsim.make_problem(config)
    params = problem.init(jax.random.key(args.seed))
    exact = np.asarray(problem.actor_vector(jax.grad(problem.exact_reward)(params)))
    temps = [1.0, 0.3, 0.1, 0.03, 0.01]
    rows = []
    for t in temps:
        samples, _ = estimator_samples(problem, params, "relaxed", batch, reps, args.seed + 30, t)
        rows.append({"temperature": t, **score(samples, exact)})
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(temps, [r["cosine"] for r in rows], "o-", label="one batch: mean cosine")
    ax.plot(temps, [r["bias_cosine"] for r in rows], "s--", label="bias: cosine of the mean")
    ax.set(xscale="log", xlabel="relaxed-fill temperature", ylabel="cosine to exact gradient")
    ax.set_title(f"discrete fills, phi 0.1, {batch} episodes x {reps}")
    ax.legend(fontsize=8)
    return rows, str(common.save_figure(fig, out / "breaks_temperature.png"))


def _breaks_q_max(config, args, settings) -> list[dict]:
    """Inventory limits (the exact DP models them): cosines to the exact gradient by q_max."""
    rows = []
    for q_max in (2.0, 4.0, 8.0, 16.0, math.inf):
        problem = _problem_on(config, q_max=q_max)
        params = problem.init(jax.random.key(args.seed))
        exact = np.asarray(problem.actor_vector(jax.grad(problem.exact_reward)(params)))
        rows.append({"q_max": q_max, **_break_cosines(problem, params, exact, settings, args)})
        print("q_max", rows[-1], flush=True)
    return rows


def _breaks_latency(config, args, settings) -> list[dict]:
    """Latency: cosines by latency (steps) to the expected-fill estimator over many episodes,
    the reference."""
    rows = []
    for latency in (0, 1, 2, 5):
        problem = _problem_on(config, latency=latency)
        params = problem.init(jax.random.key(args.seed))
        big, _ = estimator_samples(problem, params, "expected", 4096, 4, args.seed + 40)
        reference = big.mean(axis=0)
        cosines = _break_cosines(problem, params, reference, settings, args)
        rows.append({"latency": latency, **cosines})
        print("latency", rows[-1], flush=True)
    return rows


def _breaks_loss_limit(config, args, settings) -> list[dict]:
    """The loss-limit halt: each estimator's directional derivative against central
    differences of the hard simulator, by loss limit (price units)."""
    rows = []
    for limit in (math.inf, 5.0, 2.0, 1.0, 0.5):
        options = {} if math.isinf(limit) else {"loss_limit": limit}
        problem = _problem_on(config, **options)
        params = problem.init(jax.random.key(args.seed))
        stream = market.stream_key(jax.random.key(args.seed + 50))
        row: dict[str, Any] = {"loss_limit": limit}
        halted = problem.expected_surrogate(params, stream, jnp.arange(1024, dtype=jnp.uint32))
        probe, _ = estimator_samples(problem, params, "expected", 4096, 1, args.seed + 51)
        flat = jax.flatten_util.ravel_pytree(params)[0]
        actor = probe.shape[1]
        direction = (
            jnp.zeros_like(flat)
            .at[:actor]
            .set(jnp.asarray(probe[0] / np.linalg.norm(probe[0]), flat.dtype))
        )  # the actor's leaves come first in the flattened parameters
        row["finite_difference"], row["finite_difference_se"] = _reference_fd(
            problem, params, direction, stream, 32, 1024, 0.1
        )
        row["mean_reward"] = float(halted[1])
        for label, name, temperature in settings:
            samples, _ = estimator_samples(
                problem, params, name, 1024, 8, args.seed + 52, temperature
            )
            projected = samples @ np.asarray(direction[:actor])
            row[label] = float(projected.mean())
            row[f"{label} se"] = float(projected.std(ddof=1) / math.sqrt(projected.size))
        rows.append(row)
        print("loss_limit", row, flush=True)
    return rows


def _plot_breaks(rows, key, label, out, settings):
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [str(r[key]) for r in rows]
    for index, (name, _, _) in enumerate(settings):
        colour = f"C{index}"
        ax.plot(xs, [r[name] for r in rows], "o-", color=colour, label=f"{name}: one batch")
        ax.plot(xs, [r[f"{name} bias"] for r in rows], "s--", color=colour, label=f"{name}: mean")
    ax.set(xlabel=label, ylabel="cosine to the reference gradient", title=f"phi 0.1: {label}")
    ax.legend(fontsize=8)
    return str(common.save_figure(fig, out / f"breaks_{key}.png"))


def _plot_halt(rows, settings, out):
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = np.arange(len(rows))
    fd = [r["finite_difference"] for r in rows]
    fd_se = [2 * r["finite_difference_se"] for r in rows]
    ax.errorbar(xs, fd, yerr=fd_se, fmt="k*-", capsize=3, label="central difference (±2 SE)")
    for index, (name, _, _) in enumerate(settings):
        values = [r[name] for r in rows]
        errors = [2 * r[f"{name} se"] for r in rows]
        ax.errorbar(xs + 0.05 * (index + 1), values, yerr=errors, fmt="o-", capsize=3,
                    label=name)  # fmt: skip
    ax.set_xticks(xs, [str(r["loss_limit"]) for r in rows])
    ax.set(
        xlabel="loss limit (price units)",
        ylabel="directional derivative of J",
        title="phi 0.1: the loss-limit halt",
    )
    ax.legend(fontsize=8)
    return str(common.save_figure(fig, out / "breaks_loss_limit.png"))


def main(argv: list[str] | None = None, **options: Any) -> dict[str, Any]:
    parser = common.study_parser("diffsim", __doc__)
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated parts of {PARTS}"
    )
    parser.add_argument(
        "--reps", type=int, default=8, help="independent gradient batches per estimator cell"
    )
    parser.add_argument(
        "--batches",
        type=int,
        nargs="+",
        default=[16, 128, 1024],
        help="episodes per gradient estimate",
    )
    parser.add_argument(
        "--temperatures",
        type=float,
        nargs="+",
        default=[1.0, 0.3, 0.1, 0.03],
        help="temperatures of the relaxed fills, dimensionless",
    )
    parser.add_argument(
        "--num-evals", type=int, default=20, help="h2h: progress evaluations per training run"
    )
    common.add_ppo_arguments(parser)
    parser.add_argument(
        "--reuse", action="store_true", help="h2h: read runs already in OUT/runs, do not retrain"
    )
    args = parser.parse(argv, **options)
    args.h2h_runs = [
        ("expected", {"num_envs": 16, "num_iterations": 150, "learning_rate": 1e-2}),
        ("relaxed", {"num_envs": 16, "num_iterations": 150, "learning_rate": 1e-2,
                     "temperature": 0.3, "temperature_final": 0.1}),
        ("exact", {"num_iterations": 300, "learning_rate": 1e-2}),
        ("relaxed", {"num_envs": 4, "num_iterations": 600, "learning_rate": 1e-2,
                     "temperature": 0.3, "temperature_final": 0.1,
                     "name": "diffsim_relaxed_n4_phi{phi}"}),
    ]  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"--parts: unknown {sorted(unknown)}; allowed: {PARTS}")
    payload: dict[str, Any] = {}
    with common.Timer() as timer:
        for part in parts:
            payload.update({"estimators": part_estimators, "h2h": part_h2h,
                            "breaks": part_breaks}[part](args, out))  # fmt: skip
    config = {k: v for k, v in vars(args).items() if k != "h2h_runs"}
    config["h2h_runs"] = [[name, extra] for name, extra in args.h2h_runs]
    return common.finish(out, "diffsim", payload, config=config, seconds=timer.seconds)


if __name__ == "__main__":
    main()
