"""jaxmm.linalg against NumPy/SciPy: QR factor, Cholesky factor, matrix exponential."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import linalg as scipy_linalg

from jaxmm import linalg


def test_orthonormal_columns_is_the_positive_diagonal_qr_factor():
    matrix = np.asarray(jax.random.normal(jax.random.key(3), (40, 25)), np.float64)
    q = np.asarray(linalg.orthonormal_columns(jnp.asarray(matrix, jnp.float32)), np.float64)
    reference, r = np.linalg.qr(matrix)
    reference = reference * np.sign(np.diag(r))
    np.testing.assert_allclose(q, reference, atol=2e-5)
    np.testing.assert_allclose(q.T @ q, np.eye(25), atol=2e-6)


def test_cholesky_matches_numpy():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 7):
        factor = rng.normal(size=(n, n))
        matrix = factor @ factor.T + n * np.eye(n)
        with jax.enable_x64(True):
            ours = np.asarray(linalg.cholesky(jnp.asarray(matrix)))
        np.testing.assert_allclose(ours, np.linalg.cholesky(matrix), rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(np.triu(ours, 1), 0.0)


def test_cholesky_of_identity_is_exact_in_float32():
    """multi_asset passes unit rows through untouched: the identity's factor must be exact."""
    np.testing.assert_array_equal(linalg.cholesky(jnp.eye(4, dtype=jnp.float32)), np.eye(4))


@pytest.mark.parametrize("scale", [1e-3, 0.3, 4.0, 60.0])
def test_expm_matches_scipy(scale):
    """A random matrix and a GLFT-like generator (tridiagonal, large diagonal), at several
    norms, so both the Taylor part and the squarings are exercised."""
    rng = np.random.default_rng(1)
    dense = rng.normal(size=(9, 9)) * scale / 3
    n = 41
    generator = np.diag(-0.02 * scale * np.arange(-20, 21) ** 2.0)
    generator += np.diag(np.full(n - 1, scale), 1) + np.diag(np.full(n - 1, scale), -1)
    with jax.enable_x64(True):
        for matrix in (dense, generator):
            ours = np.asarray(linalg.expm(jnp.asarray(matrix)))
            reference = scipy_linalg.expm(matrix)
            scale_ref = np.max(np.abs(reference))
            np.testing.assert_allclose(ours, reference, rtol=1e-10, atol=1e-13 * scale_ref)


def test_expm_under_vmap_and_of_zero():
    with jax.enable_x64(True):
        np.testing.assert_array_equal(linalg.expm(jnp.zeros((3, 3))), np.eye(3))
        matrix = jnp.asarray([[0.0, 1.0], [-1.0, 0.0]])
        times = jnp.asarray([0.5, 1.0, 2.0])
        batched = np.asarray(jax.vmap(lambda t: linalg.expm(matrix * t))(times))
        for index, t in enumerate(np.asarray(times)):
            rotation = [[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]]
            np.testing.assert_allclose(batched[index], rotation, atol=1e-14)
