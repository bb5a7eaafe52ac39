"""The XLA CPU wedge: batched LAPACK calls must stay out of the programs users run.

jaxlib 0.10.2's CPU LAPACK kernels split a batch (a ``vmap``ped QR, Cholesky, LU, ...) over
XLA's intra-op thread pool with ``jax::ParallelBatchMap`` and block the calling pool thread
until the pieces finish. When as many such calls run at once as the pool has threads (two on a
2-core CPU), every thread waits for work that no thread is free to run: the process sits at 0%
CPU forever. flax's ``orthogonal`` initialiser under ``jax.vmap`` did exactly this in PPO's
initialisation (``lapack_sgeqrf_ffi``).

These tests read the compiled programs: none may hold a LAPACK custom call. The reproducer,
which runs the programs themselves many times, is ``tests/test_wedge_stress.py``.
"""

from __future__ import annotations

import dataclasses
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmm as mm
from jaxmm.linalg import orthonormal_columns
from train.config import PPOConfig
from train.networks import orthogonal
from train.ppo import init_states, make_chunk_runner, make_train, make_trainer

CUSTOM_CALL = re.compile(r'custom_call_target="([^"]+)"')


def custom_calls(function, *args) -> set[str]:
    """The custom-call targets of ``jax.jit(function)`` compiled for ``args`` (optimised HLO)."""
    text = jax.jit(function).lower(*args).compile().as_text()
    return set(CUSTOM_CALL.findall(text))


def lapack_calls(function, *args) -> set[str]:
    return {target for target in custom_calls(function, *args) if "lapack" in target}


# ----------------------------------------------------------------------------------------------
# The initialiser that replaces flax's


@pytest.mark.parametrize("shape", [(3, 64), (64, 64), (64, 1), (64, 2), (5, 7), (7, 5)])
def test_orthogonal_matches_flax_on_the_same_key(shape):
    """Same random draw and the same (unique, positive-diagonal) QR as flax's initialiser."""
    for seed in range(3):
        key = jax.random.key(seed)
        ours = np.asarray(orthogonal(1.3)(key, shape))
        theirs = np.asarray(nn.initializers.orthogonal(1.3)(key, shape))
        assert ours.shape == shape
        np.testing.assert_allclose(ours, theirs, atol=2e-5)


def test_orthonormal_columns_is_a_qr_factor():
    """``Q^T Q = I`` and ``R = Q^T A`` upper triangular with a positive diagonal (float32)."""
    matrix = jax.random.normal(jax.random.key(3), (40, 25))
    q = np.asarray(orthonormal_columns(matrix), np.float64)
    np.testing.assert_allclose(q.T @ q, np.eye(25), atol=2e-6)
    r = q.T @ np.asarray(matrix, np.float64)
    assert np.all(np.diag(r) > 0)
    np.testing.assert_allclose(np.tril(r, -1), 0.0, atol=2e-5)
    np.testing.assert_allclose(q @ r, np.asarray(matrix), atol=2e-5)


def test_orthogonal_under_vmap_equals_one_seed_at_a_time():
    keys = jax.random.split(jax.random.key(0), 4)
    batched = jax.vmap(lambda key: orthogonal(2.0)(key, (64, 64)))(keys)
    for index, key in enumerate(keys):
        np.testing.assert_allclose(batched[index], orthogonal(2.0)(key, (64, 64)), atol=1e-6)


# ----------------------------------------------------------------------------------------------
# No LAPACK custom call in the programs a user runs


@pytest.fixture(scope="module")
def small_config() -> PPOConfig:
    return PPOConfig(total_timesteps=1024, num_envs=16, num_steps=8, num_seeds=4)


def test_ppo_programs_hold_no_lapack_call(small_config):
    keys = jax.random.split(jax.random.key(0), small_config.num_seeds)
    trainer = make_trainer(small_config)
    assert lapack_calls(jax.vmap(trainer.init), keys) == set()
    assert lapack_calls(jax.vmap(make_train(small_config)), keys) == set()
    states = init_states(trainer, small_config)
    runner = make_chunk_runner(trainer, 2)
    text = runner.lower(states, jnp.int32(2)).compile().as_text()
    assert {t for t in CUSTOM_CALL.findall(text) if "lapack" in t} == set()


def test_ppo_program_with_the_regime_wrapper_holds_no_lapack_call(small_config):
    config = dataclasses.replace(small_config, random_regimes=True).validate()
    keys = jax.random.split(jax.random.key(0), config.num_seeds)
    assert lapack_calls(jax.vmap(make_train(config)), keys) == set()


def test_flax_orthogonal_under_vmap_would_hold_one():
    """The check above can fail: flax's initialiser under vmap compiles to a batched QR."""
    keys = jax.random.split(jax.random.key(0), 4)
    init = jax.vmap(lambda key: nn.initializers.orthogonal()(key, (8, 8)))
    assert any("geqrf" in target for target in lapack_calls(init, keys))


def test_simulation_and_solver_programs_hold_no_lapack_call():
    p = mm.presets.homework().replace(n_steps=20)
    policy = mm.policies.avellaneda_stoikov(gamma=0.1, k=1.5)
    stream = mm.market.stream_key(jax.random.key(0))
    episodes = jnp.arange(64, dtype=jnp.uint32)
    assert lapack_calls(lambda s: mm.rollout(p, policy, s, episodes).pnl, stream) == set()
    gammas = jnp.asarray([0.05, 0.1, 0.2])
    sweep = jax.vmap(
        lambda g: mm.rollout(p, mm.policies.avellaneda_stoikov(g, 1.5), stream, episodes).pnl
    )
    assert lapack_calls(sweep, gammas) == set()
    correlation = np.array([[1.0, 0.5, 0.2], [0.5, 1.0, 0.3], [0.2, 0.3, 1.0]], np.float32)
    multi = mm.multi_asset.make_params(p, correlation)
    assert lapack_calls(lambda m: m.cholesky, multi) == set()
    assert (
        lapack_calls(
            jax.vmap(lambda c: multi.replace(correlation=c).cholesky),
            jnp.stack([jnp.asarray(correlation)] * 3),
        )
        == set()
    )
    with jax.enable_x64(True):
        generator = jnp.diag(-jnp.arange(5.0)) + jnp.eye(5, k=1) + jnp.eye(5, k=-1)
        gaps = jnp.asarray([0.1, 0.2])
        assert lapack_calls(jax.vmap(lambda h: mm.linalg.expm(generator * h)), gaps) == set()
