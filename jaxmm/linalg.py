"""Small dense linear algebra in plain ``jax.numpy``: no LAPACK custom call in the program.

Why this module exists: jaxlib 0.10.2's CPU LAPACK kernels (``lapack_sgeqrf_ffi``,
``lapack_spotrf_ffi``, ``lapack_dgetrf_ffi``, ...) split a batch -- the leading axes that
``vmap`` adds -- over XLA's intra-op thread pool with ``jax::ParallelBatchMap`` and block the
calling pool thread until every piece is done. When as many of those calls run at once as the
pool has threads (two on a 2-core CPU; independent calls, such as the layers of an
actor-critic, do run at once), every thread waits for pieces that no thread is free to run, and
the process sits at 0% CPU forever. ``--xla_cpu_multi_thread_eigen=false`` does not prevent
it. The routines here are loops of matrix products and rank-one updates, which XLA compiles
like any other arithmetic, so they are safe in any jitted or vmapped program.

They serve jaxmm's own needs, at the sizes jaxmm uses (tens to a few hundred rows):

- ``orthonormal_columns``: the ``Q`` of a QR factorisation (orthogonal network initialisers);
- ``cholesky``: the lower Cholesky factor (correlated mid-price shocks);
- ``expm``: the matrix exponential (the linear ODEs of the GLFT and Cartea-Jaimungal models).

Each is tested against NumPy/SciPy in ``tests/test_linalg.py``; ``tests/test_wedge.py`` checks
that the compiled programs of the library hold no LAPACK custom call.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["cholesky", "expm", "orthonormal_columns"]

# Taylor degree of ``expm`` after scaling to a 1-norm <= 1/2: the remainder is below
# 0.5**19 / 18! * e**0.5 ~ 5e-22 relative, far under float64's epsilon.
EXPM_TAYLOR_DEGREE = 18
EXPM_SCALED_NORM = 0.5


def orthonormal_columns(matrix: jax.Array) -> jax.Array:
    """The ``Q`` of the reduced QR factorisation ``matrix = Q R`` with ``diag(R) > 0``.

    Args:
        matrix: ``f[m, n]`` with ``m >= n`` and full column rank.

    Returns:
        ``f[m, n]`` with orthonormal columns. Householder reflections (two ``fori_loop``s of
        rank-one updates). The factorisation with a positive diagonal of ``R`` is unique, so
        this is LAPACK's ``Q`` (sign-corrected, as ``jax.random.orthogonal`` does) up to
        rounding.
    """
    m, n = matrix.shape
    rows = jnp.arange(m)

    def reflect(j, carry):
        reduced, reflectors = carry
        column = jnp.where(rows >= j, reduced[:, j], 0.0)
        sign = jnp.where(column[j] >= 0, 1.0, -1.0).astype(matrix.dtype)
        reflector = column + sign * jnp.sqrt(jnp.sum(column**2)) * (rows == j)
        length = jnp.sqrt(jnp.sum(reflector**2))
        reflector = jnp.where(length > 0, reflector / jnp.where(length > 0, length, 1.0), 0.0)
        reduced = reduced - 2.0 * jnp.outer(reflector, reflector @ reduced)
        return reduced, reflectors.at[j].set(reflector)

    start = (matrix, jnp.zeros((n, m), matrix.dtype))
    reduced, reflectors = jax.lax.fori_loop(0, n, reflect, start)

    def apply(i, q):  # Q = H_0 H_1 ... H_{n-1} I[:, :n], the right-most reflection first
        reflector = reflectors[n - 1 - i]
        return q - 2.0 * jnp.outer(reflector, reflector @ q)

    q = jax.lax.fori_loop(0, n, apply, jnp.eye(m, n, dtype=matrix.dtype))
    return q * jnp.where(jnp.diagonal(reduced) >= 0, 1.0, -1.0).astype(matrix.dtype)


def cholesky(matrix: jax.Array) -> jax.Array:
    """Lower-triangular ``L`` with ``L L^T = matrix``, for a symmetric positive definite
    ``f[n, n]`` (only its lower triangle is read). Column-by-column (Cholesky-Crout): column
    ``j`` is ``(a_j - L[:, :j] L[j, :j]^T) / L[j, j]``. NaN if the matrix is not positive
    definite (as LAPACK's factor is); validate before, as ``multi_asset`` does."""
    n = matrix.shape[0]
    rows = jnp.arange(n)

    def column(j, lower):
        below = rows >= j
        residual = matrix[:, j] - lower @ lower[j, :]  # columns >= j of `lower` are still 0
        pivot = jnp.sqrt(residual[j])
        return lower.at[:, j].set(jnp.where(below, residual / pivot, 0.0))

    return jax.lax.fori_loop(0, n, column, jnp.zeros_like(matrix))


def expm(matrix: jax.Array) -> jax.Array:
    """Matrix exponential of ``f[n, n]`` by scaling and squaring of a Taylor polynomial.

    With ``s`` the smallest integer such that ``||matrix / 2^s||_1 <= 1/2``, returns
    ``T_18(matrix / 2^s)^(2^s)``, ``T_18`` the degree-18 Taylor polynomial (evaluated by
    Horner's rule). The truncation error of the scaled exponential is below float64's epsilon;
    the squarings then carry rounding as in any scaling-and-squaring method. ``s`` is computed
    in the program (a ``while_loop`` of squarings), so the function traces once per shape.
    """
    n = matrix.shape[0]
    identity = jnp.eye(n, dtype=matrix.dtype)
    norm = jnp.max(jnp.sum(jnp.abs(matrix), axis=0))
    squarings = jnp.maximum(0.0, jnp.ceil(jnp.log2(norm / EXPM_SCALED_NORM)))
    squarings = jnp.where(jnp.isfinite(squarings), squarings, 0.0).astype(jnp.int32)
    scaled = matrix / jnp.exp2(squarings.astype(matrix.dtype))

    def horner(i, result):
        degree = EXPM_TAYLOR_DEGREE - i  # result = I + (scaled / degree) result, downwards
        return identity + (scaled @ result) / degree

    taylor = jax.lax.fori_loop(0, EXPM_TAYLOR_DEGREE, horner, identity)
    return jax.lax.fori_loop(0, squarings, lambda _, value: value @ value, taylor)
