"""A-S parameter heatmap: per-episode Sharpe over (gamma, kappa), at two volatilities.

``python -m experiments.heatmap`` runs, for sigma = 2 and sigma = 4, the whole grid
gamma in {0.01, 0.05, 0.1, 0.5, 1.0} x kappa in {0.5, 1.0, 1.5, 3.0, 5.0} with 500 episodes a
cell as ONE compiled program per sigma (``vmap`` over the strategy's parameters; every cell on
the same 500 paths: common random numbers). ``kappa`` is the intensity decay the strategy
assumes; the market's true ``k`` stays 1.5. Writes ``results/heatmap/``:

- ``cells.csv``: sigma, gamma, kappa, mean PnL, std PnL, Sharpe and its standard error, mean |q_T|;
- ``summary.json``: config, seed, the best cell per sigma and the "optimal region" (cells whose
  Sharpe is within 2 standard errors of the best), timings;
- ``sharpe_heatmap.png``: one panel per sigma, the optimal region outlined.

Per-episode Sharpe = mean / std of terminal PnL across episodes (Mertens standard error).

Scale-out: ``--devices N`` (and ``--platform``/``--device``) splits the sweep's cell axis over
N devices (a ``Mesh`` and ``shard_map``: every device runs its share of the cells on all the
episodes); the cells are identical to the single-device run.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import jaxmm as mm
from experiments.common import Timer, environment, finish, save_figure, study_parser, write_rows_csv
from jaxmm import devices as device_lib
from jaxmm.simulation import to_host

GAMMAS = (0.01, 0.05, 0.1, 0.5, 1.0)
KAPPAS = (0.5, 1.0, 1.5, 3.0, 5.0)
SIGMAS = (2.0, 4.0)


QUICK = {"n_episodes": 20}  # experiments.all --quick


def parse_args(argv: list[str] | None = None, **options: Any) -> argparse.Namespace:
    parser = study_parser("heatmap", __doc__, n_episodes=500, episodes_help="episodes per cell")
    device_lib.add_arguments(parser)
    args = parser.parse(argv, **options)
    args.device_list = device_lib.from_arguments(parser, args)
    return args


def cell_rollout(params: mm.MarketParams, gammas, kappas, stream, episodes):
    """Terminal PnL and inventory of the cells ``(gammas[c], kappas[c])`` on the same episodes:
    ``f[n_cells, n]`` (pure: one program, ``vmap`` over the strategy's parameters)."""

    def cell(gamma, kappa):
        result = mm.rollout(
            params, mm.policies.AvellanedaStoikov(gamma=gamma, k=kappa), stream, episodes
        )
        return result.pnl, result.inventory

    return jax.vmap(cell)(gammas, kappas)


@functools.cache
def _cells_program(mesh: jax.sharding.Mesh | None):
    if mesh is None:
        return jax.jit(cell_rollout)
    spec = device_lib.batch_spec(mesh)
    replicated = jax.sharding.PartitionSpec()
    return jax.jit(
        jax.shard_map(
            cell_rollout,
            mesh=mesh,
            in_specs=(replicated, spec, spec, replicated, replicated),
            out_specs=(spec, spec),
            check_vma=False,  # cells are independent: no collectives
        )
    )


def sweep_cells(
    params: mm.MarketParams,
    gammas: Sequence[float],
    kappas: Sequence[float],
    key: jax.Array,
    n_episodes: int,
    devices: Sequence[jax.Device] | jax.sharding.Mesh | None = None,
) -> tuple[jax.Array, jax.Array]:
    """``cell_rollout`` of the cells ``(gammas[c], kappas[c])`` on episodes ``0 ..
    n_episodes - 1`` of ``key``, the cell axis split over ``devices`` (a list or a ``Mesh``):
    every device runs its cells on all the episodes. The cells are padded to a multiple of the
    number of devices (repeating the last one); returns ``(pnl, inventory)``,
    ``f[n_padded_cells, n_episodes]``, still split over the devices."""
    mesh = device_lib.mesh(devices, "cells")
    gammas = np.asarray(gammas, mm.market.float_dtype())
    kappas = np.asarray(kappas, mm.market.float_dtype())
    if mesh is not None:
        padding = -gammas.size % mesh.size
        gammas, kappas = (np.concatenate([x, np.repeat(x[-1:], padding)]) for x in (gammas, kappas))
        sharding = jax.sharding.NamedSharding(mesh, device_lib.batch_spec(mesh))
        gammas, kappas = (
            jax.make_array_from_callback(x.shape, sharding, lambda index, x=x: x[index])
            for x in (gammas, kappas)
        )
    episodes = jnp.arange(n_episodes, dtype=jnp.uint32)
    stream = mm.market.stream_key(key)
    return _cells_program(mesh)(params, gammas, kappas, stream, episodes)


def grid_pnl(
    params: mm.MarketParams,
    gammas: Sequence[float],
    kappas: Sequence[float],
    key: jax.Array,
    n_episodes: int,
    devices: Sequence[jax.Device] | jax.sharding.Mesh | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Terminal PnL and inventory of every (gamma, kappa) cell, ``f[n_gamma, n_kappa, n]``
    (``sweep_cells`` over the grid; identical to the single-device result)."""
    grid_gammas, grid_kappas = np.meshgrid(gammas, kappas, indexing="ij")
    pnl, inventory = sweep_cells(
        params, grid_gammas.ravel(), grid_kappas.ravel(), key, n_episodes, devices
    )
    shape = (len(gammas), len(kappas), n_episodes)
    return tuple(to_host(x)[: grid_gammas.size].reshape(shape) for x in (pnl, inventory))


def sweep(
    sigma: float,
    *,
    n_episodes: int = 500,
    seed: int = 0,
    devices: Sequence[jax.Device] | None = None,
) -> list[dict]:
    """The table's rows of every (gamma, kappa) cell at volatility ``sigma``."""
    params = mm.presets.homework().replace(sigma=sigma)
    pnl, inventory = grid_pnl(params, GAMMAS, KAPPAS, jax.random.key(seed), n_episodes, devices)
    pnl, inventory = np.asarray(pnl, np.float64), np.asarray(inventory, np.float64)
    rows = []
    for i, gamma in enumerate(GAMMAS):
        for j, kappa in enumerate(KAPPAS):
            ratio, ratio_se = mm.metrics.sharpe(pnl[i, j])
            rows.append(
                {
                    "sigma": sigma,
                    "gamma": gamma,
                    "kappa": kappa,
                    "mean_pnl": pnl[i, j].mean(),
                    "std_pnl": pnl[i, j].std(ddof=1),
                    "sharpe": ratio,
                    "sharpe_se": ratio_se,
                    "mean_abs_q": np.abs(inventory[i, j]).mean(),
                }
            )
    return rows


def best_region(rows: list[dict]) -> dict:
    """The best cell and the cells within 2 standard errors of its Sharpe."""
    best = max(rows, key=lambda row: row["sharpe"])
    region = [
        (row["gamma"], row["kappa"])
        for row in rows
        if row["sharpe"] >= best["sharpe"] - 2 * np.hypot(best["sharpe_se"], row["sharpe_se"])
    ]
    return {"best": best, "region": region}


def plot(results: dict[float, list[dict]], regions: dict[float, dict], path: Path) -> None:
    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.5), squeeze=False)
    for ax, (sigma, rows) in zip(axes[0], results.items(), strict=True):
        grid = np.array([row["sharpe"] for row in rows]).reshape(len(GAMMAS), len(KAPPAS))
        image = ax.imshow(grid, origin="lower", cmap="viridis", aspect="auto")
        for i in range(len(GAMMAS)):
            for j in range(len(KAPPAS)):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", color="w", fontsize=8)
        for gamma, kappa in regions[sigma]["region"]:
            i, j = GAMMAS.index(gamma), KAPPAS.index(kappa)
            ax.add_patch(
                plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2)
            )
        ax.set_xticks(range(len(KAPPAS)), [f"{k:g}" for k in KAPPAS])
        ax.set_yticks(range(len(GAMMAS)), [f"{g:g}" for g in GAMMAS])
        ax.set(
            xlabel="kappa (assumed k, per price unit)",
            ylabel="gamma (risk aversion)",
            title=f"A-S per-episode Sharpe, sigma = {sigma:g}\n(red: within 2 SE of the best)",
        )
        fig.colorbar(image, ax=ax, label="Sharpe (mean / std of terminal PnL)")
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None, **options: Any) -> dict:
    """Run the study; ``options`` override the command line's values (``n_episodes=20``)."""
    args = parse_args(argv, **options)
    args.out.mkdir(parents=True, exist_ok=True)
    results, regions, seconds = {}, {}, {}
    for sigma in SIGMAS:
        print(f"heatmap sigma = {sigma:g}: 25 cells x {args.n_episodes} episodes", file=sys.stderr)
        with Timer() as timer:
            results[sigma] = sweep(
                sigma, n_episodes=args.n_episodes, seed=args.seed, devices=args.device_list
            )
        seconds[sigma] = timer.seconds
        regions[sigma] = best_region(results[sigma])
    rows = [row for sigma in SIGMAS for row in results[sigma]]
    write_rows_csv(args.out / "cells.csv", rows)
    plot(results, regions, args.out / "sharpe_heatmap.png")
    best_gammas = {sigma: regions[sigma]["best"]["gamma"] for sigma in SIGMAS}
    for sigma in SIGMAS:
        best = regions[sigma]["best"]
        print(
            f"sigma = {sigma:g}: best gamma {best['gamma']:g}, kappa {best['kappa']:g}, Sharpe "
            f"{best['sharpe']:.2f} +- {best['sharpe_se']:.2f}; {len(regions[sigma]['region'])} "
            f"cells within 2 SE ({seconds[sigma]:.1f} s)"
        )
    return finish(
        args.out,
        "summary",
        {
            "cells": rows,
            "best": {str(sigma): regions[sigma] for sigma in SIGMAS},
            "best_gamma_moves_with_sigma": len(set(best_gammas.values())) > 1,
            "seconds": {str(sigma): s for sigma, s in seconds.items()},
            "environment": environment(),
            "devices": device_lib.describe(args.device_list),
        },
        config={
            **vars(args),
            "device_list": None,
            "gammas": GAMMAS,
            "kappas": KAPPAS,
            "sigmas": SIGMAS,
            "market": mm.presets.homework(),
        },
    )


if __name__ == "__main__":
    main()
