"""Scale-out: sharding over devices, bounded-memory streamed statistics, device selection.

Multi-device checks run in a fresh process with ``XLA_FLAGS=--xla_force_host_platform_device_count
=8`` (the flag must be set before JAX starts); the multi-process check starts two processes that
join with ``jax.distributed.initialize`` on this machine (slow).
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import jaxmm as mm
from jaxmm import devices as device_lib
from jaxmm import streaming
from jaxmm.metrics import Moments
from jaxmm.simulation import plan_chunks
from tests.conftest import run_code, run_distributed, run_module

# Statistics that are exact whatever the chunking or devices (integers, extremes, histogram).
EXACT = ("n_episodes", "min_pnl", "max_pnl", "max_drawdown_worst", "pct_profitable")
QUANTILES = ("median_pnl", "p05_pnl", "p95_pnl", "var_95", "var_99", "cvar_95", "cvar_99")


def run_python(code: str, n_devices: int, timeout: float = 900) -> str:
    env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={n_devices}"}
    return run_code(code, env=env, timeout=timeout).stdout


def assert_moments_close(a: dict, b: dict, rtol: float = 2e-6) -> None:
    """Moment-based statistics agree to float32 rounding of the per-chunk sums: relative
    ``rtol``, or ``rtol`` times the PnL's standard deviation for means near zero."""
    scale = rtol * a["std_pnl"]
    for key in a:
        if key in EXACT or key in QUANTILES or key.startswith(QUANTILES) or key == "n_episodes":
            continue
        if key in ("median_pnl_se", "p05_pnl_se", "p95_pnl_se", "quantile_resolution"):
            continue
        assert b[key] == pytest.approx(a[key], rel=rtol, abs=scale), key


def fake_rollout(pnl: np.ndarray, n_steps: int = 10) -> mm.Rollout:
    """A Rollout with the given terminal PnL (the other fields simple functions of it)."""
    pnl = jnp.asarray(pnl, jnp.float32)
    return mm.Rollout(
        pnl=pnl,
        inventory=jnp.round(pnl),
        spread_pnl=pnl,
        inventory_pnl=jnp.zeros_like(pnl),
        max_drawdown=jnp.abs(pnl),
        n_bid_fills=jnp.ones_like(pnl),
        n_ask_fills=jnp.ones_like(pnl),
        mean_spread=jnp.where(pnl > 0, 1.0, jnp.nan),
        sum_sq_inventory=jnp.zeros_like(pnl),
        final_mid=jnp.zeros_like(pnl),
        n_steps=n_steps,
    )


# ----------------------------------------------------------------------------------------------
# Exact merging of moments and histograms


def test_moments_merge_is_exact():
    rng = np.random.default_rng(0)
    x = 1e3 + rng.standard_t(4, size=10_001) * 7.0  # offset and heavy tails: cancellation-prone
    whole = Moments.of(x)
    merged = Moments()
    for part in np.split(x, [1, 2, 500, 5_000, 9_999]):
        merged = merged.merge(Moments.of(part))
    assert merged.n == whole.n
    for name in ("mean", "m2", "m3", "m4"):
        assert getattr(merged, name) == pytest.approx(getattr(whole, name), rel=1e-10), name
    # against independent formulas (numpy / scipy), not the code under test
    assert whole.std == pytest.approx(np.std(x, ddof=1), rel=1e-12)
    skew, kurt = stats.skew(x), stats.kurtosis(x, fisher=False)
    ratio = x.mean() / np.std(x, ddof=1)
    mertens = math.sqrt((1 - skew * ratio + (kurt - 1) / 4 * ratio**2) / x.size)
    assert whole.sharpe() == pytest.approx((ratio, mertens), rel=1e-9)
    fourth = stats.moment(x, 4)
    s = np.std(x, ddof=1)
    assert whole.std_se()[1] == pytest.approx(math.sqrt((fourth - s**4) / x.size) / (2 * s))


def minimal_grid(x: np.ndarray, n_bins: int) -> tuple[int, int]:
    """Reference: the smallest exponent e (brute force) with the range in n_bins bins."""
    lo, hi = float(x.min()), float(x.max())
    for e in range(streaming.MIN_EXPONENT, streaming.MAX_EXPONENT + 1):
        if math.floor(math.ldexp(hi, -e)) - math.floor(math.ldexp(lo, -e)) + 1 <= n_bins:
            return e, math.floor(math.ldexp(lo, -e))
    raise AssertionError("no grid")


def streamed(pnl: np.ndarray, splits: list[int], n_bins: int) -> streaming.StreamingStatistics:
    statistics = streaming.StreamingStatistics(n_steps=10)
    reduce = jax.jit(streaming.chunk_statistics, static_argnums=2)
    for part in np.split(pnl, splits):
        padded = np.full(pnl.size, 1e6, np.float32)  # one shape; the padding must not count
        padded[: part.size] = part
        valid = np.arange(padded.size) < part.size
        statistics.add(reduce(fake_rollout(padded), jnp.asarray(valid), n_bins))
    return statistics


def test_histogram_is_exact_minimal_and_independent_of_the_split():
    rng = np.random.default_rng(1)
    pnl = (40 + 6 * rng.standard_t(3, size=20_000)).astype(np.float32)
    n_bins = 1024
    a = streamed(pnl, [3_000, 3_001, 11_000], n_bins)
    b = streamed(pnl, [10_000], n_bins)
    # the reference histogram: numpy float64 on the brute-force minimal grid
    exponent, origin = minimal_grid(pnl, n_bins)
    index = np.floor(np.ldexp(pnl.astype(np.float64), -exponent)).astype(np.int64) - origin
    reference = np.bincount(index, minlength=n_bins)
    for statistics in (a, b):
        assert (statistics.histogram.exponent, statistics.histogram.origin) == (exponent, origin)
        np.testing.assert_array_equal(statistics.histogram.counts, reference)
    width = a.histogram.width
    assert width < 2 * (pnl.max() - pnl.min()) / (n_bins - 1)
    summary, exact = a.summary(), mm.metrics.summarize(fake_rollout(pnl))
    for p in (0.0, 0.01, 0.05, 0.3, 0.5, 0.95, 0.999, 1.0):
        assert abs(a.histogram.quantile(p) - np.quantile(pnl.astype(np.float64), p)) <= width, p
    for key in QUANTILES:  # VaR, CVaR: within one bin width of the exact in-memory values
        assert abs(summary[key] - exact[key]) <= width, key
    for key in EXACT:
        assert summary[key] == exact[key], key
    assert_moments_close(exact, summary)


# ----------------------------------------------------------------------------------------------
# Streaming against the in-memory summary on the same keys


def test_streamed_summary_equals_in_memory_summary():
    params = mm.presets.homework().replace(n_steps=50)
    policy = mm.policies.avellaneda_stoikov(0.1)
    key = jax.random.key(5)
    n = 6_001  # seven chunks of 858, the last one padded
    exact = mm.metrics.summarize(mm.simulate(params, policy, key, n))
    summary = streaming.simulate_summary(params, policy, key, n, chunk_size=1_000)
    assert set(summary) == set(exact) | {"quantile_resolution"}
    for k in EXACT:
        assert summary[k] == exact[k], k
    width = summary["quantile_resolution"]
    assert 0 < width < 2 * (exact["max_pnl"] - exact["min_pnl"]) / (streaming.DEFAULT_BINS - 1)
    for k in QUANTILES:
        assert abs(summary[k] - exact[k]) <= width, k
    assert_moments_close(exact, summary)


def test_chunked_mean_of_a_large_run_matches_the_one_shot_mean():
    """1M episodes of 20 steps in 8 chunks: the merged moments equal those of all per-episode
    results held in memory at once (float32 per-chunk sums: relative 2e-6)."""
    params = mm.presets.homework().replace(n_steps=20, T=0.1)
    policy = mm.policies.avellaneda_stoikov(0.1)
    key = jax.random.key(2024)
    n = 1_000_000
    one_shot = mm.simulate(params, policy, key, n)
    pnl = np.asarray(one_shot.pnl, np.float64)
    summary = streaming.simulate_summary(params, policy, key, n, chunk_size=2**17)
    assert summary["n_episodes"] == n
    assert summary["mean_pnl"] == pytest.approx(pnl.mean(), rel=1e-6)
    assert summary["std_pnl"] == pytest.approx(pnl.std(ddof=1), rel=2e-6)
    assert summary["max_drawdown"] == pytest.approx(float(np.mean(one_shot.max_drawdown)), 1e-6)
    assert abs(summary["median_pnl"] - np.median(pnl)) <= summary["quantile_resolution"]


def test_plan_chunks_covers_every_episode_once():
    for n, chunk_size, devices in [(10, 1, 8), (13, 3, 8), (1001, 600, 4), (7, None, 3)]:
        n_chunks, chunk = plan_chunks(n, chunk_size, devices)
        assert chunk % (devices * 8) == 0  # an even share per device: XLA's fast path
        assert (n_chunks - 1) * chunk < n <= n_chunks * chunk  # no empty chunk, no gap
    with pytest.raises(ValueError, match="n_episodes"):
        plan_chunks(0, None, 1)
    with pytest.raises(ValueError, match="chunk_size"):
        plan_chunks(10, 0, 1)


def test_bad_streaming_arguments_are_rejected():
    params, policy = mm.presets.homework(), mm.policies.symmetric(0.5)
    with pytest.raises(ValueError, match="n_bins"):
        streaming.simulate_summary(params, policy, jax.random.key(0), 10, n_bins=8)
    with pytest.raises(ValueError, match="n_episodes"):
        streaming.simulate_summary(params, policy, jax.random.key(0), 0)
    with pytest.raises(ValueError, match="devices"):
        streaming.simulate_summary(params, policy, jax.random.key(0), 10, devices=[])


# ----------------------------------------------------------------------------------------------
# Device selection


def test_device_selection_and_errors():
    cpu = device_lib.select("cpu", 1)
    assert len(cpu) == 1 and cpu[0].platform == "cpu"
    assert "cpu" in device_lib.available_platforms()
    with pytest.raises(ValueError, match="platform"):
        device_lib.select("quantum")
    missing = [p for p in device_lib.PLATFORMS if p not in device_lib.available_platforms()]
    for platform in missing:
        with pytest.raises(ValueError, match=f"platform = '{platform}' has no devices"):
            device_lib.select(platform)
    with pytest.raises(ValueError, match="devices = 100000"):
        device_lib.select(None, 100_000)
    with pytest.raises(ValueError, match="devices"):
        device_lib.select(None, 0)
    info = device_lib.describe(cpu)
    assert info["platform"] == "cpu" and info["devices_used"] == 1
    assert info["process_count"] == 1


def test_monte_carlo_stream_cli(tmp_path):
    from experiments import monte_carlo

    payload = monte_carlo.main(
        [
            "--episodes",
            "3000",
            "--stream",
            "--chunk-size",
            "1000",
            "--seed",
            "4",
            "--n-paths",
            "3",
            "--out",
            str(tmp_path),
        ]
    )
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["config"]["seed"] == 4 and written["config"]["mode"] == "stream"
    assert written["devices"]["platform"] == jax.default_backend()
    assert written["peak_rss_mb"] > 0 and written["elapsed_seconds"] > 0
    assert (tmp_path / "pnl_hist.png").stat().st_size > 10_000
    assert not (tmp_path / "episodes.csv").exists()
    streamed_as = payload["summary"]["avellaneda_stoikov"]
    exact = mm.metrics.summarize(
        mm.simulate(
            mm.presets.homework(), mm.policies.avellaneda_stoikov(0.1), jax.random.key(4), 3000
        )
    )
    assert streamed_as["mean_pnl"] == pytest.approx(exact["mean_pnl"], rel=1e-6)
    assert abs(streamed_as["var_95"] - exact["var_95"]) <= streamed_as["quantile_resolution"]


# ----------------------------------------------------------------------------------------------
# Eight devices in one process

EIGHT_DEVICES = r"""
import json
import jax, numpy as np
import jaxmm as mm
from jaxmm import streaming
from experiments import heatmap

devices = jax.devices()
assert len(devices) == 8, devices
p = mm.presets.homework().replace(n_steps=50)
pol = mm.policies.avellaneda_stoikov(0.1)
key = jax.random.key(11)

one = mm.simulate(p, pol, key, 4096)
eight = mm.simulate(p, pol, key, 4096, devices=devices)
jax.tree.map(np.testing.assert_array_equal, one, eight)
shards = eight.pnl.addressable_shards
assert sorted(s.device.id for s in shards) == sorted(d.id for d in devices), shards
assert all(s.data.shape == (512,) for s in shards)
assert eight.pnl.sharding.spec == jax.sharding.PartitionSpec("episodes")
assert mm.metrics.summarize(one) == mm.metrics.summarize(eight)

# a 2-D mesh, chunks smaller than the number of devices (every chunk padded)
mesh = jax.sharding.Mesh(np.array(devices).reshape(2, 4), ("host", "local"))
small = mm.simulate(p, pol, key, 13, devices=mesh, chunk_size=3)
jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b[:13]), small, one)

single = streaming.simulate_summary(p, pol, key, 4096, chunk_size=1024)
split = streaming.simulate_summary(p, pol, key, 4096, chunk_size=1024, devices=devices)

g1, q1 = heatmap.grid_pnl(p, heatmap.GAMMAS, heatmap.KAPPAS, key, 100)
g8, q8 = heatmap.grid_pnl(p, heatmap.GAMMAS, heatmap.KAPPAS, key, 100, devices)
np.testing.assert_array_equal(g1, g8)
np.testing.assert_array_equal(q1, q8)
cell = mm.simulate(p, mm.policies.avellaneda_stoikov(0.5, 3.0), key, 100)
np.testing.assert_allclose(g8[3, 3], cell.pnl, rtol=1e-6)
gammas, kappas = np.meshgrid(heatmap.GAMMAS, heatmap.KAPPAS, indexing="ij")
cells, _ = heatmap.sweep_cells(p, gammas.ravel(), kappas.ravel(), key, 100, devices)
assert cells.shape == (32, 100)  # 25 cells padded to 4 per device
assert len({s.device.id for s in cells.addressable_shards}) == 8
assert all(s.data.shape == (4, 100) for s in cells.addressable_shards)
print(json.dumps({"exact": mm.metrics.summarize(one), "single": single, "split": split}))
"""


def test_eight_devices_split_the_batch_and_change_nothing():
    result = json.loads(run_python(EIGHT_DEVICES, 8).strip().splitlines()[-1])
    exact, single, split = result["exact"], result["single"], result["split"]
    for k in (*EXACT, *QUANTILES, "quantile_resolution"):  # bit for bit
        assert split[k] == single[k], k
    assert_moments_close(single, split)  # float32 sums reduced in another order
    width = single["quantile_resolution"]
    for k in QUANTILES:
        assert abs(single[k] - exact[k]) <= width, k
    assert_moments_close(exact, single)


PPO_DEVICES = r"""
import dataclasses, json
import jax, jax.numpy as jnp, numpy as np
from train import ppo
from train.config import PPOConfig

base = PPOConfig(num_envs=8, num_steps=8, total_timesteps=8 * 8 * 4, num_seeds=8,
                 hidden_sizes=(16, 16), num_minibatches=2, update_epochs=2, stagger_envs=False)
results = {}
for count in (1, 8):
    config = dataclasses.replace(base, devices=count)
    trainer = ppo.make_trainer(config)
    states = ppo.init_states(trainer, config)
    if count == 8:
        leaf = jax.tree.leaves(states.params)[0]
        assert len({s.device.id for s in leaf.addressable_shards}) == 8
        assert all(s.data.shape[0] == 1 for s in leaf.addressable_shards)
    states, metrics = ppo.make_chunk_runner(trainer, 4)(states, jnp.int32(4))
    results[count] = jax.tree.map(np.asarray, (states.params, metrics))
differences = jax.tree.map(
    lambda a, b: float(np.nanmax(np.abs(a - b))) if np.isfinite(a).any() else 0.0,
    results[1], results[8])
print(json.dumps(max(jax.tree.leaves(differences))))
"""


@pytest.mark.slow
def test_ppo_seeds_split_over_eight_devices_train_the_same_agents():
    """8 seeds on 1 device vs one seed per device (4 updates): equal to float32 rounding (the
    per-seed programs have other batch shapes, so XLA may sum in another order; measured max
    difference 1e-7). Long runs amplify such differences like any change of float order."""
    difference = json.loads(run_python(PPO_DEVICES, 8).strip().splitlines()[-1])
    assert difference < 1e-5


# ----------------------------------------------------------------------------------------------
# Several processes (jax.distributed), the README's worked example

MULTI_PROCESS = r"""
import json, sys
import jax

jax.distributed.initialize(
    coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2])
)
import numpy as np
import jaxmm as mm
from jaxmm import streaming

assert jax.process_count() == 2 and len(jax.devices()) == 4 and len(jax.local_devices()) == 2
p = mm.presets.homework().replace(n_steps=50)
pol = mm.policies.avellaneda_stoikov(0.1)
summary = streaming.simulate_summary(p, pol, jax.random.key(3), 5000, chunk_size=2000,
                                     devices=jax.devices())
rollout = mm.simulate(p, pol, jax.random.key(3), 1000, chunk_size=500, devices=jax.devices())
if jax.process_index() == 0:
    print(json.dumps({"summary": summary, "pnl": np.asarray(rollout.pnl).tolist()}))
"""


@pytest.mark.slow
def test_two_processes_with_jax_distributed_give_the_single_process_results():
    result = json.loads(run_distributed(MULTI_PROCESS).strip().splitlines()[-1])
    p = mm.presets.homework().replace(n_steps=50)
    pol = mm.policies.avellaneda_stoikov(0.1)
    single = streaming.simulate_summary(p, pol, jax.random.key(3), 5000, chunk_size=2000)
    for k in (*EXACT, *QUANTILES):
        assert result["summary"][k] == single[k], k
    assert_moments_close(single, result["summary"])
    direct = mm.simulate(p, pol, jax.random.key(3), 1000)
    np.testing.assert_array_equal(np.asarray(result["pnl"], np.float32), direct.pnl)


# ----------------------------------------------------------------------------------------------
# The 10M-episode run


@pytest.mark.slow
def test_ten_million_homework_episodes_streamed_equal_the_in_memory_summary():
    """10M homework A-S episodes streamed in bounded memory vs the same 10M episodes held in
    memory (``summarize(simulate(...))``, ~1 GB): moments to float32 rounding of the per-chunk
    sums, quantiles within the stated resolution, extremes and counts exactly."""
    params = mm.presets.homework()
    policy = mm.policies.avellaneda_stoikov(0.1)
    key = jax.random.key(0)
    n = 10_000_000
    summary = streaming.simulate_summary(params, policy, key, n)
    exact = mm.metrics.summarize(mm.simulate(params, policy, key, n))
    for k in EXACT:
        assert summary[k] == exact[k], k
    for k in QUANTILES:
        assert abs(summary[k] - exact[k]) <= summary["quantile_resolution"], k
    assert_moments_close(exact, summary, rtol=5e-6)
    assert summary["quantile_resolution"] < 0.1 * summary["median_pnl_se"]


@pytest.mark.slow
def test_benchmark_scaling_part_records_devices_and_ratios(tmp_path):
    run_module(
        "experiments.benchmark",
        "--parts", "scaling", "--scaling-episodes", "2000", "--scaling-devices", "1", "2",
        "--repeats", "1", "--no-scaling-ppo", "--out", str(tmp_path),
    )  # fmt: skip
    result = json.loads((tmp_path / "benchmark.json").read_text())
    used = [c["devices"]["devices_used"] for c in result["scaling"]["configurations"]]
    assert used == [1, 2]
    assert result["devices"]["platform"] == jax.default_backend()
    rows = result["scaling"]["rows"]
    assert {r["measurement"] for r in rows} == {"mm.simulate", "mm.streaming.simulate_summary"}
    assert all(r["rate"] > 0 for r in rows)
    assert [r["ratio_to_first"] for r in rows if r["devices"] == 1] == [1.0, 1.0]
    assert "| mm.simulate (episode-steps/s) | 2 |" in (tmp_path / "benchmark.md").read_text()
