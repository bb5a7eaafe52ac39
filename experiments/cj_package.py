"""The PyPI package ``avellaneda-stoikov`` 0.1.0 as a benchmark of the Cartea-Jaimungal solution.

The package (``avellaneda_stoikov.solve_value_function``) integrates the Cartea, Jaimungal &
Penalva (2015) section 10.2 system ``d_t h = phi q^2 - (lambda/kappa) sum e^{kappa (h(q+-1) -
h(q)) - 1}``, ``h(T, q) = -alpha q^2``, with the explicit backward Euler scheme on
``t_n = n T / n_steps``, and reads the depths ``1/kappa + h(q) - h(q -+ 1)``. Its ``phi`` is the
running penalty per unit of time (price units per unit^2 per time unit) and its ``alpha`` the
terminal penalty (price units per unit^2): the book's, not the homework's per-step ``phi`` (a
per-step penalty ``phi_step`` is ``phi = phi_step / dt``: the homework's 0.01 and 0.1 at
``dt = 1/200`` are ``phi = 2`` and ``20``).

``python -m experiments.cj_package`` solves the homework market (A = 100, k = 1.5, T = 1) for
several penalties with the package, ``jaxmm.optimal.cartea_jaimungal_fd`` (the same explicit
scheme) and the exact matrix-exponential solution ``jaxmm.optimal.cartea_jaimungal`` (checked
against scipy's ``expm`` in the tests), timing each, and writes ``results/cj_package/``:

- ``cj_package.json``: config, per (phi, alpha, n_steps) errors against the exact solution and
  wall times, the observed order, the package's time-lookup defect count;
- ``errors.csv``: the same table, one row per run;
- ``errors.png``: error of ``h(0, 0)`` and of the depths against ``n_steps``.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from experiments.common import StudyParser, finish, save_figure, write_csv
from jaxmm import optimal

PACKAGE = "avellaneda-stoikov==0.1.0"


def load_package() -> ModuleType:
    """Import ``avellaneda_stoikov``, or raise ``ModuleNotFoundError`` saying how to install it."""
    try:
        import avellaneda_stoikov
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            f"this benchmark needs the PyPI package {PACKAGE} (pure Python, depends on numpy "
            f"only): pip install --no-deps {PACKAGE}"
        ) from error
    return avellaneda_stoikov


def package_solution(
    A: float, k: float, phi: float, alpha: float, q_max: int, T: float, n_steps: int
) -> dict[str, np.ndarray | float]:
    """Run the package's solver on a Cartea-Jaimungal problem; return it in jaxmm's conventions.

    Args:
        A: arrivals per time unit at depth 0, each side (the package's ``lam_plus = lam_minus``).
        k: per price unit (``kappa_plus = kappa_minus``). phi: running penalty per time unit.
        alpha: terminal penalty. q_max: inventory limit. T: horizon, time units.
        n_steps: time steps of the package's explicit scheme (it requires >= 10).
    Returns:
        ``times [n_steps + 1]`` (``n T / n_steps``), ``inventories [n_q]`` (ascending),
        ``value [n_steps + 1, n_q]`` (``h``, price units), ``bid_depth``, ``ask_depth``
        ``[n_steps + 1, n_q]`` (NaN at ``q = q_max`` / ``-q_max``), ``seconds`` (the solve).
        Raises ``ValueError`` (the package's) when the explicit scheme diverges.
    """
    package = load_package()
    # sigma is validated (> 0) but not used by the package's risk-neutral model.
    params = package.ASParams(
        sigma=1.0,
        lam_plus=A,
        lam_minus=A,
        kappa_plus=k,
        kappa_minus=k,
        phi=phi,
        alpha=alpha,
        q_max=q_max,
        T=T,
        n_steps=n_steps,
    )
    start = time.perf_counter()
    times, value = package.solve_value_function(params)
    seconds = time.perf_counter() - start
    # The package's column i is q = -q_max + i (ascending, as ours); its delta_minus is the bid.
    bid = np.full_like(value, np.nan)
    ask = np.full_like(value, np.nan)
    bid[:, :-1] = 1.0 / k + value[:, :-1] - value[:, 1:]
    ask[:, 1:] = 1.0 / k + value[:, 1:] - value[:, :-1]
    return {
        "times": times,
        "inventories": np.arange(-q_max, q_max + 1),
        "value": value,
        "bid_depth": bid,
        "ask_depth": ask,
        "seconds": seconds,
    }


def time_lookup_defects(times: np.ndarray) -> int:
    """How many grid times the package's own lookup maps to the wrong row.

    ``optimal_depths(..., t, ...)`` finds the row as ``int((t - t_0) / dt)``, a floor that
    rounding pushes one row early (``0.29 / 0.01 = 28.999...``).
    """
    from avellaneda_stoikov.solver import _find_time_index

    rows = np.array([_find_time_index(times, float(t)) for t in times])
    return int(np.sum(rows != np.arange(times.size)))


def compare(
    A: float, k: float, phi: float, alpha: float, q_max: int, T: float, n_steps: int
) -> dict[str, float | int | str]:
    """Errors of the package and of the reference explicit scheme against the exact solution."""
    row: dict[str, float | int | str] = {"phi": phi, "alpha": alpha, "n_steps": n_steps}
    optimal.cartea_jaimungal(A, k, phi, q_max, T, alpha=alpha, n_steps=n_steps)  # compile
    start = time.perf_counter()
    exact = optimal.cartea_jaimungal(A, k, phi, q_max, T, alpha=alpha, n_steps=n_steps)
    expm_seconds = time.perf_counter() - start
    start = time.perf_counter()
    try:
        reference = optimal.cartea_jaimungal_fd(A, k, phi, q_max, T, alpha=alpha, n_steps=n_steps)
    except ValueError:
        reference = None
    reference_seconds = time.perf_counter() - start
    try:
        package = package_solution(A, k, phi, alpha, q_max, T, n_steps)
    except ValueError as error:
        row["status"] = f"package diverged ({error}); jaxmm FD finite: {reference is not None}"
        return row
    exact = {"value": exact.value, "bid_depth": exact.bid_depth, "ask_depth": exact.ask_depth}
    centre = q_max
    depth_error = max(
        np.nanmax(np.abs(package["bid_depth"] - exact["bid_depth"])),
        np.nanmax(np.abs(package["ask_depth"] - exact["ask_depth"])),
    )
    row.update(
        status="ok",
        h00_package=float(package["value"][0, centre]),
        h00_exact=float(exact["value"][0, centre]),
        error_h00=float(abs(package["value"][0, centre] - exact["value"][0, centre])),
        max_error_value=float(np.max(np.abs(package["value"] - exact["value"]))),
        max_error_depth=float(depth_error),
        max_error_depth_t0=float(
            np.nanmax(np.abs(package["bid_depth"][0] - exact["bid_depth"][0]))
        ),
        package_minus_jaxmm_fd=float(np.max(np.abs(package["value"] - reference.value)))
        if reference is not None
        else float("nan"),
        seconds_package=float(package["seconds"]),
        seconds_jaxmm_fd=reference_seconds,
        seconds_jaxmm_expm=expm_seconds,
        time_lookup_defects=time_lookup_defects(package["times"]),
        min_depth_exact=float(np.nanmin(exact["bid_depth"])),
    )
    return row


def observed_orders(rows: list[dict]) -> list[dict]:
    """``log2(e(n) / e(2n))`` of the ``h(0, 0)`` error for successive doublings of n_steps."""
    orders = []
    ok = [r for r in rows if r["status"] == "ok"]
    for coarse, fine in itertools.pairwise(ok):
        same_problem = (coarse["phi"], coarse["alpha"]) == (fine["phi"], fine["alpha"])
        if same_problem and fine["n_steps"] == 2 * coarse["n_steps"] and fine["error_h00"] > 0:
            orders.append(
                {
                    "phi": coarse["phi"],
                    "alpha": coarse["alpha"],
                    "n_steps": f"{coarse['n_steps']}->{fine['n_steps']}",
                    "order_h00": math.log2(coarse["error_h00"] / fine["error_h00"]),
                }
            )
    return orders


def plot(rows: list[dict], path: Path, title: str) -> Path:

    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    problems = sorted({(r["phi"], r["alpha"]) for r in rows})
    for phi, alpha in problems:
        ok = [r for r in rows if (r["phi"], r["alpha"]) == (phi, alpha) and r["status"] == "ok"]
        if not ok:
            continue
        n = [r["n_steps"] for r in ok]
        label = f"phi={phi:g}, alpha={alpha:g}"
        axes[0].loglog(n, [r["error_h00"] for r in ok], "o-", label=label)
        axes[1].loglog(n, [r["max_error_depth"] for r in ok], "o-", label=label)
    for ax, name in zip(axes, ("|h(0,0) - exact|", "max |depth - exact| over (t, q)"), strict=True):
        ax.set_xlabel("n_steps (explicit Euler)")
        ax.set_ylabel(name)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)
    return path


QUICK = {"phi": [0.1], "alpha": [0.0], "n_steps": [100, 200]}  # a smoke run


def parse_args(argv: list[str] | None = None, **options: Any) -> argparse.Namespace:
    # StudyParser rather than study_parser: the benchmark is deterministic, so no --seed.
    parser = StudyParser(
        prog="python -m experiments.cj_package", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--A", type=float, default=100.0, help="arrivals per time unit")
    parser.add_argument("--k", type=float, default=1.5, help="per price unit")
    parser.add_argument("--T", type=float, default=1.0, help="horizon, time units")
    parser.add_argument("--q-max", type=int, default=10, help="inventory limit, units")
    parser.add_argument(
        "--phi", type=float, nargs="+", default=[0.01, 0.1, 2.0, 20.0],
        help="running penalties per time unit (2 and 20 = the homework's per-step 0.01, 0.1)",
    )  # fmt: skip
    parser.add_argument(
        "--alpha",
        type=float,
        nargs="+",
        default=[0.0, 0.001],
        help="terminal inventory penalties, per unit squared",
    )
    parser.add_argument(
        "--n-steps",
        type=int,
        nargs="+",
        default=[100, 200, 400, 800, 1600, 3200],
        help="time steps of the explicit scheme",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("results/cj_package"), help="output folder"
    )
    args = parser.parse(argv, **options)
    if args.A <= 0 or args.k <= 0 or args.T <= 0:
        parser.error("--A, --k and --T must be > 0")
    if args.q_max < 1:
        parser.error(f"--q-max must be >= 1, got {args.q_max}")
    if min(args.n_steps) < 10:
        parser.error("--n-steps must all be >= 10 (the package's minimum)")
    if min(args.phi) < 0 or min(args.alpha) < 0:
        parser.error("--phi and --alpha must be >= 0")
    args.n_steps = sorted(args.n_steps)
    return args


def main(argv: list[str] | None = None, **options: Any) -> dict:
    """Run the benchmark; ``options`` override the command line's values (``phi=[0.1]``)."""
    args = parse_args(argv, **options)
    package = load_package()
    rows = run_grid(args.A, args.k, args.T, args.q_max, args.phi, args.alpha, args.n_steps)
    out = args.out
    ok = [r for r in rows if r["status"] == "ok"]
    columns = [
        "phi", "alpha", "n_steps", "error_h00", "max_error_value", "max_error_depth",
        "max_error_depth_t0", "package_minus_jaxmm_fd", "seconds_package",
        "seconds_jaxmm_fd", "seconds_jaxmm_expm", "time_lookup_defects",
    ]  # fmt: skip
    write_csv(out / "errors.csv", {c: np.array([r[c] for r in ok], np.float64) for c in columns})
    plot(
        rows,
        out / "errors.png",
        f"avellaneda-stoikov 0.1.0 (explicit Euler) vs exact CJ: A={args.A:g}, k={args.k:g}, "
        f"T={args.T:g}, Q={args.q_max}",
    )
    payload = {
        "study": "cj_package",
        "config": {
            "package": f"{PACKAGE} ({package.__file__})",
            "A": args.A,
            "k": args.k,
            "T": args.T,
            "q_max": args.q_max,
            "phi": args.phi,
            "alpha": args.alpha,
            "n_steps": args.n_steps,
            "seed": None,
            "units": "phi per time unit (per-step phi_step = phi * dt); alpha per unit^2",
        },
        "rows": rows,
        "observed_order_h00": observed_orders(rows),
    }
    return finish(out, "cj_package", payload)


def run_grid(
    A: float,
    k: float,
    T: float,
    q_max: int,
    phis: list[float],
    alphas: list[float],
    n_steps: list[int],
) -> list[dict]:
    """``compare`` for every (phi, alpha, n_steps), in that order, each reported on stderr."""
    rows = []
    for phi, alpha, steps in itertools.product(phis, alphas, n_steps):
        row = compare(A, k, phi, alpha, q_max, T, steps)
        rows.append(row)
        if row["status"] == "ok":
            print(
                f"phi={phi:g} alpha={alpha:g} n={steps}: |dh(0,0)|="
                f"{row['error_h00']:.3e} max|d depth|={row['max_error_depth']:.3e} "
                f"package {row['seconds_package'] * 1e3:.1f} ms",
                file=sys.stderr,
            )
        else:
            print(f"phi={phi:g} alpha={alpha:g} n={steps}: {row['status']}", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()
