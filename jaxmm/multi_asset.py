"""Multi-asset market making: ``n`` assets with correlated mids over the one ``market.step``.

Each asset is an ordinary single-asset market (``market.step_with_noise``, vmapped over the
asset axis with per-asset ``MarketParams`` leaves); the assets are coupled only through their
mid-price shocks, which are correlated with the ``correlation`` matrix ``C``, and through a
quoting rule that sees the whole inventory vector. The covariance of the mids' increments per
time unit is ``Sigma = diag(sigma) C diag(sigma)`` (price units^2 per time unit; for the
geometric model, ``sigma_i`` is relative and the price covariance is ``diag(sigma S) C
diag(sigma S)``).

Noise layout (common random numbers, as in ``jaxmm.simulate``): asset ``a`` of episode ``i`` at
step ``t`` starts from ``market.counter_noise(stream_a, i, t)`` with
``stream_a = market.stream_key(asset_key(key, a))``, where ``asset_key(key, 0) = key`` and
``asset_key(key, a) = jax.random.fold_in(key, a)`` for ``a >= 1``. The fill uniforms are used
as drawn (independent across assets). The mid uniforms are mapped to independent normals
``z = market.normal_from_uniform(u)``, correlated as ``z_c = L z`` with the Cholesky factor
``C = L L'``, and mapped back to uniforms ``u_c = Phi(z_c)`` so that the single-asset step turns
them into the correlated shocks. Where row ``a`` of ``L`` is exactly the unit vector ``e_a``
(always for asset 0; every asset when ``C`` is the identity) ``z_c = z`` and the uniform is passed
through unchanged. Hence:

- asset 0's noise is the same for every correlation matrix (it is never rotated), and it is the
  noise ``jaxmm.simulate(asset_params(p, 0), policy_0, key, n)`` draws; with ``C = I`` every
  asset ``a`` gets the noise of ``jaxmm.simulate(asset_params(p, a), policy_a,
  asset_key(key, a), n)``. The fills then agree exactly and the mid and PnL paths to float
  rounding (XLA may contract ``S + sigma sqrt(dt) z`` into a fused multiply-add in one
  compiled program and not in the other: a difference of one ulp of ``S`` in some steps);
- the noise does not depend on the quotes, so two rules simulated with the same key see the
  same noise, hence the same mid paths (again up to that rounding, as two rules compile to
  two programs) and the same fill uniforms.

The round trip ``u -> z_c -> Phi(z_c) -> normal`` loses only float precision: in float32 the
reconstructed normal differs from ``z_c`` by at most about ``2^-23 / phi(z_c)`` (the spacing of
``2u - 1`` near +-1 divided by the normal density), i.e. < 1e-6 for ``|z| < 1.5`` and 2e-4 at
``|z| = 4`` -- below the 22-bit quantisation of the single-asset noise itself (about 1e-3 at
``|z| = 4``). Uniforms are clipped to ``[eps/2, 1 - eps/2]`` (float32: ``|z| <= 5.3``, the same
tail reach as the single-asset noise).

The other options of ``MarketParams`` (volatility switch, Heston variance, jumps, order sizes,
fees, tick, latency, spread floor, loss limit, ...) act per asset, each asset's extra noise coming
from its own stream: only the mids' Gaussian shocks are correlated (under Heston, each asset's
variance shock is correlated with its own, already correlated, mid shock through ``rho_v``).
A loss limit halts one asset on that asset's PnL, not the portfolio. The binary mid model is not
supported: correlating the signs of Gaussian shocks gives the increments a correlation
``(2/pi) arcsin(rho)``, not ``rho``.

Entry points: ``make_params`` (validation), ``simulate_multi`` -> ``MultiRollout``,
``portfolio_avellaneda_stoikov`` (reservation prices from ``Sigma q``), ``per_asset`` (a
single-asset rule on each asset alone), ``summarize_multi`` and ``paired_difference``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxmm import linalg, market, policies, validation
from jaxmm.market import MarketState, Quotes
from jaxmm.params import MarketParams
from jaxmm.simulation import (
    Paths,
    Rollout,
    Running,
    equal_chunks,
    path_outputs,
    paths_from_outputs,
)

__all__ = [
    "DEFAULT_CHUNK",
    "MIN_EIGENVALUE",
    "SYMMETRY_TOLERANCE",
    "MultiAssetParams",
    "MultiRollout",
    "PerAsset",
    "PortfolioAvellanedaStoikov",
    "asset_key",
    "asset_params",
    "asset_streams",
    "correlate_uniforms",
    "influence_values",
    "initial_states",
    "make_params",
    "paired_difference",
    "per_asset",
    "portfolio_avellaneda_stoikov",
    "price_covariance",
    "reset",
    "rollout_multi",
    "simulate_multi",
    "state_axes",
    "summarize_multi",
    "uniform_from_normal",
    "validate",
]

DEFAULT_CHUNK = 2**15  # episodes per compiled chunk
SYMMETRY_TOLERANCE = 1e-8  # |C_ij - C_ji| and |C_ii - 1| accepted (then made exact)
MIN_EIGENVALUE = 1e-6  # positive definite: the smallest eigenvalue of C must exceed this


@struct.dataclass
class MultiAssetParams:
    """A market of ``n`` assets (frozen pytree; build it with ``make_params``).

    Attributes:
        market: ``MarketParams`` whose numeric leaves all have a leading asset axis ``[n, ...]``
            (``market.sigma[a]`` is asset ``a``'s volatility, price units per sqrt(time unit)).
            Static fields (``n_steps``, ``fill_model``, ``price_model``, ``history_window``) are
            shared by the assets, and so must ``T`` be.
        correlation: ``f[n, n]`` correlation of the assets' mid shocks: symmetric, unit
            diagonal, entries in [-1, 1], positive definite.
    """

    market: MarketParams
    correlation: jax.Array

    @property
    def n_assets(self) -> int:
        return int(np.shape(self.correlation)[0])

    @property
    def sigma(self) -> jax.Array:
        """``f[n]`` base volatilities, price units per sqrt(time unit)."""
        return self.market.sigma

    @property
    def covariance(self) -> jax.Array:
        """``Sigma = diag(sigma) C diag(sigma)``, ``f[n, n]``, price units^2 per time unit."""
        sigma = jnp.asarray(self.market.sigma)
        return sigma[:, None] * jnp.asarray(self.correlation) * sigma[None, :]

    @property
    def cholesky(self) -> jax.Array:
        """Lower-triangular ``L`` with ``L L' = C``, in the market's float dtype."""
        return linalg.cholesky(jnp.asarray(self.correlation, market.float_dtype()))

    def validate(self) -> MultiAssetParams:
        """Raise ``ValueError`` naming the first invalid field; return ``self`` if all is well."""
        validate(self)
        return self


def _numeric_fields(params: MarketParams) -> list[str]:
    """Names of the ``MarketParams`` fields that are pytree leaves (the per-asset ones)."""
    return [f.name for f in dataclasses.fields(params) if f.metadata.get("pytree_node", True)]


def make_params(
    market_params: MarketParams, correlation: Any, **per_asset: Any
) -> MultiAssetParams:
    """Build a ``MultiAssetParams`` of ``n = len(correlation)`` assets and validate it.

    Args:
        market_params: the template market; each numeric field is copied to every asset.
        correlation: ``[n, n]`` correlation matrix of the mid shocks. Asymmetry and diagonal
            deviations up to ``SYMMETRY_TOLERANCE`` are rounded away (``(C + C') / 2``, unit
            diagonal); larger ones raise.
        **per_asset: overrides of numeric ``MarketParams`` fields with one value per asset,
            e.g. ``sigma=[2.0, 1.0]``, ``S0=[100.0, 50.0]``.

    Example: two assets with correlated mids, the second half as volatile::

        p = make_params(mm.presets.homework(), [[1.0, 0.8], [0.8, 1.0]], sigma=[2.0, 1.0])
    """
    if not isinstance(market_params, MarketParams):
        raise TypeError(f"expected MarketParams, got {type(market_params).__name__}")
    matrix = np.asarray(correlation, np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 1:
        raise ValueError(
            f"MultiAssetParams.correlation has shape {matrix.shape}; allowed: a square "
            "[n_assets, n_assets] matrix with n_assets >= 1"
        )
    n = matrix.shape[0]
    _check_correlation(matrix)
    matrix = 0.5 * (matrix + matrix.T)
    np.fill_diagonal(matrix, 1.0)
    leaves = _numeric_fields(market_params)
    unknown = sorted(set(per_asset) - set(leaves))
    if unknown:
        raise ValueError(
            f"unknown per-asset field(s) {unknown}; allowed: numeric MarketParams fields {leaves}"
        )
    dtype = market.float_dtype()
    values = {}
    for name in leaves:
        if name in per_asset:
            value = np.asarray(per_asset[name])
            if value.shape != (n,):
                raise ValueError(
                    f"MultiAssetParams.market.{name} has shape {value.shape}; allowed: "
                    f"({n},), one value per asset (n_assets = {n} from the correlation matrix)"
                )
        elif getattr(market_params, name) is None:  # an option that is off: not a leaf
            continue
        else:
            value = np.asarray(getattr(market_params, name))
            value = np.broadcast_to(value, (n, *value.shape))
        if np.issubdtype(value.dtype, np.integer):
            values[name] = jnp.asarray(value, jnp.int32)
        else:
            values[name] = jnp.asarray(value, dtype)
    params = MultiAssetParams(
        market=market_params.replace(**values), correlation=jnp.asarray(matrix, dtype)
    )
    return params.validate()


def _check_correlation(matrix: np.ndarray) -> None:
    name = "MultiAssetParams.correlation"
    if not np.all(np.isfinite(matrix)):
        raise ValueError(f"{name} has non-finite entries; allowed: finite values in [-1, 1]")
    if np.any(np.abs(matrix) > 1.0 + SYMMETRY_TOLERANCE):
        raise ValueError(f"{name} has entries outside [-1, 1]; allowed: [-1, 1]")
    asymmetry = float(np.max(np.abs(matrix - matrix.T)))
    if asymmetry > SYMMETRY_TOLERANCE:
        raise ValueError(
            f"{name} is not symmetric (max |C_ij - C_ji| = {asymmetry:.3g}); allowed: "
            f"symmetric to {SYMMETRY_TOLERANCE:g}"
        )
    diagonal = float(np.max(np.abs(np.diag(matrix) - 1.0)))
    if diagonal > SYMMETRY_TOLERANCE:
        raise ValueError(
            f"{name} has diagonal {np.diag(matrix)}; allowed: a unit diagonal (to "
            f"{SYMMETRY_TOLERANCE:g})"
        )
    smallest = float(np.linalg.eigvalsh(0.5 * (matrix + matrix.T))[0])
    if smallest <= MIN_EIGENVALUE:
        raise ValueError(
            f"{name} is not positive definite (smallest eigenvalue {smallest:.3g}); allowed: "
            f"positive definite with every eigenvalue > {MIN_EIGENVALUE:g}"
        )


def validate(params: MultiAssetParams) -> None:
    """Check a ``MultiAssetParams``; raise ``ValueError`` naming the field and its range."""
    if not isinstance(params, MultiAssetParams):
        raise TypeError(f"expected MultiAssetParams, got {type(params).__name__}")
    if isinstance(params.correlation, jax.core.Tracer):
        return
    matrix = np.asarray(params.correlation, np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 1:
        raise ValueError(
            f"MultiAssetParams.correlation has shape {matrix.shape}; allowed: a square "
            "[n_assets, n_assets] matrix with n_assets >= 1"
        )
    _check_correlation(matrix)
    n = matrix.shape[0]
    for name in _numeric_fields(params.market):
        if getattr(params.market, name) is None:
            continue
        shape = np.shape(getattr(params.market, name))
        if not shape or shape[0] != n:
            raise ValueError(
                f"MultiAssetParams.market.{name} has shape {shape}; allowed: a leading asset "
                f"axis of length n_assets = {n}"
            )
    params.market.validate()
    if params.market.price_model in ("binary", "ou"):
        raise ValueError(
            f"MultiAssetParams.market.price_model = {params.market.price_model!r} is not "
            "supported (correlated binary signs have correlation (2/pi) arcsin(rho); the OU "
            "mid's covariance is not Sigma dt); allowed: 'arithmetic' or 'geometric'"
        )
    session = np.asarray(params.market.T, np.float64)
    if not isinstance(params.market.T, jax.core.Tracer) and np.ptp(session) > 0:
        raise ValueError(
            f"MultiAssetParams.market.T = {session}; allowed: the same session length for "
            "every asset"
        )


def asset_params(params: MultiAssetParams, asset: int) -> MarketParams:
    """The single-asset ``MarketParams`` of asset ``asset`` (every leaf indexed ``[asset]``)."""
    return jax.tree.map(lambda x: x[asset], params.market)


def asset_key(key: jax.Array, asset: int) -> jax.Array:
    """The key of asset ``asset``'s noise: ``key`` itself for asset 0, else ``fold_in(key, a)``.

    ``jaxmm.simulate(asset_params(p, a), policy, asset_key(key, a), n)`` runs asset ``a`` alone
    on the noise it has in ``simulate_multi(p, ..., key, n)`` (the same noise when ``C = I``,
    and for asset 0 always).
    """
    return key if asset == 0 else jax.random.fold_in(key, asset)


def asset_streams(key: jax.Array, n_assets: int) -> jax.Array:
    """``uint32[n_assets, 2]``: the counter-mode streams of the assets (see ``asset_key``)."""
    return jnp.stack([market.stream_key(asset_key(key, a)) for a in range(n_assets)])


def uniform_from_normal(z: jax.Array) -> jax.Array:
    """``Phi(z)`` clipped to ``[eps/2, 1 - eps/2]``: the inverse of ``market.normal_from_uniform``.

    The clip keeps ``2u - 1`` strictly inside (-1, 1) in the array's float dtype, so the
    quantile stays finite (float32: ``|normal_from_uniform(u)| <= 5.3``).
    """
    half_eps = jnp.finfo(z.dtype).eps / 2
    phi = 0.5 * jax.lax.erfc(-z * np.sqrt(0.5).astype(z.dtype))  # accurate in the lower tail
    return jnp.clip(phi, half_eps, 1.0 - half_eps)


def correlate_uniforms(u_mid: jax.Array, cholesky: jax.Array) -> jax.Array:
    """Turn independent mid uniforms ``f[n_assets, ...]`` into uniforms whose normals are
    correlated: ``z = normal_from_uniform(u)``, ``z_c = L z`` (over the asset axis 0),
    ``u_c = Phi(z_c)``. Assets whose row of ``L`` is exactly the unit vector keep their uniform
    unchanged (no round trip)."""
    z = market.normal_from_uniform(u_mid)
    correlated = jnp.einsum("ab,b...->a...", cholesky, z)
    unit_row = jnp.all(cholesky == jnp.eye(cholesky.shape[0], dtype=cholesky.dtype), axis=1)
    unit_row = unit_row.reshape((-1,) + (1,) * (u_mid.ndim - 1))
    return jnp.where(unit_row, u_mid, uniform_from_normal(correlated))


def price_covariance(
    params: MultiAssetParams, mid: jax.Array, sigma: jax.Array | None = None
) -> jax.Array:
    """Covariance of the mids' increments per time unit at mids ``mid`` (``f[n]``), ``[n, n]``.

    ``sigma`` (``f[n]``, default the base ``params.sigma``) is in the model's units; for the
    geometric model it is relative and multiplied by the mid.
    """
    sigma = params.market.sigma if sigma is None else sigma
    if params.market.price_model == "geometric":
        sigma = sigma * mid
    return sigma[:, None] * params.correlation * sigma[None, :]


@struct.dataclass
class PerAsset:
    """A single-asset policy applied to each asset alone; see ``per_asset``."""

    policy: Any

    def __call__(self, obs: MarketState, params: MultiAssetParams) -> Quotes:
        return jax.vmap(self.policy, in_axes=(state_axes(params), 0))(obs, params.market)


def per_asset(policy: Callable) -> PerAsset:
    """Quote each asset with the single-asset ``policy``, which sees only that asset's state
    and ``MarketParams`` (its own ``q_i``, ``sigma_i``, ``k_i``: correlation is ignored).

    ``per_asset(mm.policies.avellaneda_stoikov(gamma))`` is "quoting each asset alone".
    """
    return PerAsset(policy=policies.checked_pytree(policy))


@struct.dataclass
class PortfolioAvellanedaStoikov:
    """Avellaneda-Stoikov quotes with a portfolio inventory penalty; see
    ``portfolio_avellaneda_stoikov``."""

    gamma: float
    correlation: jax.Array | None = None

    def covariance(self, obs: MarketState, params: MultiAssetParams) -> jax.Array:
        """The covariance the rule assumes: the market's, or with its own ``correlation``."""
        assumed = (
            params if self.correlation is None else params.replace(correlation=self.correlation)
        )
        return price_covariance(assumed, obs.mid)

    def reservation_offset(self, obs: MarketState, params: MultiAssetParams) -> jax.Array:
        """``S - r = gamma (T - t) Sigma q``, ``f[n]``, price units."""
        time_to_go = market.time_to_go(obs, params.market)
        return self.gamma * time_to_go * (self.covariance(obs, params) @ obs.inventory)

    def spread(self, obs: MarketState, params: MultiAssetParams) -> jax.Array:
        """Per asset ``gamma Sigma_ii (T - t) + (2 / gamma) ln(1 + gamma / k_i)``, ``f[n]``."""
        time_to_go = market.time_to_go(obs, params.market)
        variance = jnp.diagonal(self.covariance(obs, params))
        k = params.market.k
        return self.gamma * variance * time_to_go + 2.0 * policies.log1p_ratio(self.gamma / k) / k

    def __call__(self, obs: MarketState, params: MultiAssetParams) -> Quotes:
        half = 0.5 * self.spread(obs, params)
        offset = self.reservation_offset(obs, params)
        return Quotes(bid_depth=half + offset, ask_depth=half - offset)


def portfolio_avellaneda_stoikov(
    gamma: float, correlation: Any = None
) -> PortfolioAvellanedaStoikov:
    """Multi-asset Avellaneda-Stoikov: reservation prices from the portfolio's covariance.

    The value of holding ``q`` to the horizon under CARA utility with risk aversion ``gamma`` is
    approximated by ``x + q'S - (gamma / 2) (T - t) q' Sigma q`` (the quadratic proxy of
    Bergault, Evangelista, Gueant & Vieira, "Closed-form approximations in multi-asset market
    making", Applied Mathematical Finance 28(2), 2021, without its liquidity correction). The
    indifference prices of buying or selling one unit of asset ``i`` give

    - reservation prices ``r = S - gamma (T - t) Sigma q`` (vector), the portfolio version of
      A-S's ``S - q gamma sigma^2 (T - t)``: a long position in asset ``j`` lowers the
      reservation price of every asset positively correlated with it;
    - per-asset spread ``gamma Sigma_ii (T - t) + (2/gamma) ln(1 + gamma/k_i)`` as in A-S;
    - ``bid_depth_i = spread_i / 2 + gamma (T - t) (Sigma q)_i``,
      ``ask_depth_i = spread_i / 2 - gamma (T - t) (Sigma q)_i``.

    With one asset it is ``mm.policies.avellaneda_stoikov(gamma)``; with ``correlation = I`` it
    is ``per_asset(avellaneda_stoikov(gamma))``. ``Sigma`` uses the base volatilities (like A-S,
    the rule does not adapt to a volatility switch).

    Args:
        gamma: risk aversion, per price unit (>= 0).
        correlation: the correlation the rule assumes (default: the market's); ``[n, n]``.
    """
    validation.array("gamma", gamma, lambda x: x >= 0, ">= 0")
    if correlation is not None:
        matrix = np.asarray(correlation, np.float64)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(
                f"correlation has shape {matrix.shape}; allowed: a square [n, n] matrix"
            )
        _check_correlation(matrix)
        correlation = jnp.asarray(matrix, market.float_dtype())
    return PortfolioAvellanedaStoikov(gamma=gamma, correlation=correlation)


@struct.dataclass
class MultiRollout:
    """Per-episode results of ``simulate_multi``.

    Attributes:
        pnl: ``[n_episodes]`` portfolio terminal PnL, the sum of the assets' PnLs.
        max_drawdown: ``[n_episodes]`` largest fall of the portfolio PnL path from its peak.
        inventory_variance: ``[n_episodes]`` ``sum_t q_{t+1}' Sigma_t q_{t+1} dt``: the
            variance of each step's diffusive mark-to-market given the inventory carried over
            it, summed (price units^2; ``Sigma_t = diag(s_t) C diag(s_t)`` with ``s_t`` the
            volatilities in force, ``market.volatility``: switch and Heston factor included;
            jumps and adverse selection are not counted). Divided by ``T`` it is the session
            average of ``q' Sigma q``.
        n_marketable: ``[n_episodes, n_assets]`` number of quotes the policy placed through
            the mid (a negative bid or ask depth: it fills with probability above ``A dt`` and
            its "spread capture" is a loss), counting each side.
        assets: a ``Rollout`` whose every field is per asset, ``[n_episodes, n_assets]`` (paths
            ``[n_episodes, n_assets, n_steps (+ 1)]``); ``asset(a)`` slices one asset.
        pnl_path: ``[n_episodes, n_steps + 1]`` portfolio PnL (``paths=True``), else None.
        n_steps: steps per episode (static).
    """

    pnl: jax.Array
    max_drawdown: jax.Array
    inventory_variance: jax.Array
    n_marketable: jax.Array
    assets: Rollout
    pnl_path: jax.Array | None = None
    n_steps: int = struct.field(pytree_node=False, default=0)

    @property
    def n_episodes(self) -> int:
        return int(self.pnl.shape[0])

    @property
    def n_assets(self) -> int:
        return int(self.assets.pnl.shape[1])

    def asset(self, asset: int) -> Rollout:
        """Asset ``asset``'s results as a single-asset ``Rollout`` (``[n_episodes]`` fields)."""
        return jax.tree.map(lambda x: x[:, asset], self.assets)

    def reward(self, phi: float) -> jax.Array:
        """``pnl - phi * inventory_variance``, ``[n_episodes]`` (``phi = gamma / 2``: the
        running-penalty form of the mean-variance objective)."""
        return self.pnl - phi * self.inventory_variance


@struct.dataclass
class _Running:
    assets: Running  # jaxmm.simulation's per-episode statistics, [n_assets, n]
    portfolio_peak: jax.Array  # [n]
    portfolio_drawdown: jax.Array
    inventory_variance: jax.Array
    n_marketable: jax.Array  # [n_assets, n]


def state_axes(params: MultiAssetParams) -> MarketState:
    """The asset axis of each leaf of one episode's state (the layout a policy sees).

    The step index ``t`` is shared by all episodes and assets: ``None`` (a scalar). A leaf that
    is a scalar per asset (``mid``, ``inventory``, ...) is ``f[n_assets]`` (axis 0); a leaf of
    shape ``s`` per asset (the history ring buffers) is ``f[*s, n_assets]`` (axis ``len(s)``),
    e.g. ``recent_returns`` is ``f[history_window, n_assets]``. In a batch of episodes the
    episode axis comes last (``mid`` is ``f[n_assets, n_episodes]``): the minor axis is the
    long one, which is what XLA vectorises, and a history write is one contiguous row.
    """
    state = market.reset(jax.random.key(0), asset_params(params, 0))
    return jax.tree.map(jnp.ndim, state).replace(t=None)


def _episode_axes(asset_axes: MarketState) -> MarketState:
    """Axis of the episodes in the batched state: right after the asset axis (the last)."""
    return jax.tree.map(lambda axis: axis + 1, asset_axes)


def reset(key: jax.Array, params: MultiAssetParams) -> MarketState:
    """One episode's state at the start of a session (every asset from ``market.reset``), in
    the layout a policy sees (``state_axes``)."""
    return jax.vmap(market.reset, in_axes=(None, 0), out_axes=state_axes(params))(
        key, params.market
    )


def initial_states(params: MultiAssetParams, n_episodes: int) -> MarketState:
    """Fresh states from ``market.reset``: one episode's layout (``state_axes``) with the
    episode axis appended last."""
    state = reset(jax.random.key(0), params)
    batched = jax.tree.map(lambda x: jnp.broadcast_to(x[..., None], (*x.shape, n_episodes)), state)
    return batched.replace(t=state.t)


def rollout_multi(
    params: MultiAssetParams,
    policy: Callable,
    streams: jax.Array,
    episodes: jax.Array,
    paths: bool = False,
) -> MultiRollout:
    """Simulate episodes ``episodes`` (``uint32[n]``) of the multi-asset market: pure, jit-able.

    ``streams`` is ``asset_streams(key, n_assets)``; ``policy`` is ``(obs, params) -> Quotes``
    with ``obs`` one episode's ``MarketState`` (layout: ``state_axes``) and quotes
    ``f[n_assets]`` (or scalars, the same for every asset).
    """
    n = episodes.shape[0]
    dtype = market.float_dtype()
    state = initial_states(params, n)
    running = _zero_running(params.n_assets, n, dtype)
    body = _scan_body(params, policy, streams, episodes, paths, n, dtype)
    (final, running), per_step = jax.lax.scan(
        body, (state, running), None, length=params.market.n_steps
    )
    path_data, pnl_path = _assemble_paths(state, per_step) if paths else (None, None)
    return _assemble_rollout(params, final, running, path_data, pnl_path)


def _zero_running(n_assets: int, n: int, dtype) -> _Running:
    """The running statistics before the first step: all zero (``[n_assets, n]`` per asset,
    ``[n]`` for the portfolio)."""
    zeros = jnp.zeros((n_assets, n), dtype)
    return _Running(
        assets=Running.zeros((n_assets, n), dtype),
        portfolio_peak=zeros[0],
        portfolio_drawdown=zeros[0],
        inventory_variance=zeros[0],
        n_marketable=zeros,
    )


def _flat_advance(params: MultiAssetParams, asset_axes: MarketState, n: int) -> Callable:
    """``advance(state, quotes, noise) -> (next_state, info, sigma)``: one market step of all
    assets and ``n`` episodes (state in the batched layout, quotes and noise ``[n_assets, n]``;
    ``sigma`` ``[n_assets, n]`` the volatilities in force over the step).

    The step runs as ONE vmap over the flattened (asset, episode) axis, the layout of
    jaxmm.simulate: nested vmaps made XLA transpose every intermediate between the two batch
    axes. ``[..., n_assets, n] <-> [..., n_assets * n]`` are free reshapes.
    """
    n_assets = params.n_assets
    step = jax.vmap(market.step_with_noise, in_axes=(asset_axes, 0, 0, 0), out_axes=(asset_axes, 0))
    flat_params = jax.tree.map(lambda x: jnp.repeat(x, n, axis=0), params.market)

    def flatten_state(x: jax.Array) -> jax.Array:  # [*s, n_assets, n] -> [*s, n_assets * n]
        return x.reshape(*x.shape[:-2], n_assets * n)

    def unflatten_state(x: jax.Array) -> jax.Array:
        return x.reshape(*x.shape[:-1], n_assets, n)

    def flatten_batch(x: jax.Array) -> jax.Array:  # [n_assets, n, *r] -> [n_assets * n, *r]
        return x.reshape(n_assets * n, *x.shape[2:])

    def unflatten_batch(x: jax.Array) -> jax.Array:
        return x.reshape(n_assets, n, *x.shape[1:])

    def advance(state, quotes, noise):
        flat_state = jax.tree.map(flatten_state, state.replace(t=None)).replace(t=state.t)
        flat_quotes, flat_noise = jax.tree.map(flatten_batch, (quotes, noise))
        next_flat, info = step(flat_state, flat_quotes, flat_noise, flat_params)
        next_state = jax.tree.map(unflatten_state, next_flat.replace(t=None))
        sigma = unflatten_batch(volatility(flat_state, flat_params))
        return next_state.replace(t=next_flat.t), jax.tree.map(unflatten_batch, info), sigma

    volatility = jax.vmap(market.volatility, in_axes=(asset_axes, 0))
    return advance


def _scan_body(
    params: MultiAssetParams,
    policy: Callable,
    streams: jax.Array,
    episodes: jax.Array,
    paths: bool,
    n: int,
    dtype,
) -> Callable:
    """The ``lax.scan`` body of ``rollout_multi``: ``((state, running), _) -> ((next_state,
    running), per-step path outputs or None)``. One step: correlated noise, the policy's
    quotes, the market step, then the portfolio statistics (PnL peak and drawdown,
    ``q' Sigma_t q dt``, marketable quotes) and each asset's ``Running`` update."""
    n_assets = params.n_assets
    cholesky = params.cholesky
    correlation = jnp.asarray(params.correlation, dtype)
    dt = jnp.asarray(params.market.dt, dtype)[0]  # T is common to the assets
    asset_axes = state_axes(params)
    quote = jax.vmap(policy, in_axes=(_episode_axes(asset_axes), None), out_axes=-1)
    advance = _flat_advance(params, asset_axes, n)
    draw = jax.vmap(market.counter_noise, in_axes=(0, None, None))  # -> [n_assets, n]
    geometric = params.market.price_model == "geometric"

    def body(carry, _):
        state, running = carry
        noise = draw(streams, episodes, state.t)
        noise = noise.replace(u_mid=correlate_uniforms(noise.u_mid, cholesky))
        quotes = quote(state, params)
        bid_depth = jnp.broadcast_to(jnp.asarray(quotes.bid_depth, dtype), (n_assets, n))
        ask_depth = jnp.broadcast_to(jnp.asarray(quotes.ask_depth, dtype), (n_assets, n))
        quotes = Quotes(bid_depth=bid_depth, ask_depth=ask_depth)
        next_state, info, sigma = advance(state, quotes, noise)
        portfolio = jnp.sum(next_state.pnl, axis=0)
        portfolio_peak = jnp.maximum(running.portfolio_peak, portfolio)
        q = next_state.inventory
        # q' Sigma_t q = x' C x, x_a = q_a times asset a's volatility in this step (switch and
        # Heston factor included; times S_a,t for the geometric model)
        exposure = sigma * q
        if geometric:
            exposure = exposure * state.mid
        step_variance = jnp.sum(exposure * (correlation @ exposure), axis=0) * dt
        running = _Running(
            assets=running.assets.update(next_state, info, bid_depth, ask_depth),
            portfolio_peak=portfolio_peak,
            portfolio_drawdown=jnp.maximum(running.portfolio_drawdown, portfolio_peak - portfolio),
            inventory_variance=running.inventory_variance + step_variance,
            n_marketable=running.n_marketable + (bid_depth < 0) + (ask_depth < 0),
        )
        out = path_outputs(state, next_state, info, bid_depth, ask_depth) if paths else None
        return (next_state, running), out

    return body


def _assemble_paths(state: MarketState, per_step) -> tuple[Paths, jax.Array]:
    """``(Paths, pnl_path)`` from the scan's per-step outputs (``[N, n_assets, n]`` each) and
    the initial ``state``: paths ``[n, n_assets, N (+ 1)]``, portfolio PnL ``[n, N + 1]``."""
    path_data = paths_from_outputs(state, per_step)  # [N, n_assets, n] -> [n, n_assets, N]
    return path_data, jnp.sum(path_data.pnl, axis=1)


def _assemble_rollout(
    params: MultiAssetParams,
    final: MarketState,
    running: _Running,
    path_data: Paths | None,
    pnl_path: jax.Array | None,
) -> MultiRollout:
    """The ``MultiRollout`` from the final state and running statistics: per-asset fields
    transposed to ``[n_episodes, n_assets]``, portfolio fields summed over the assets."""
    per_asset = running.assets
    assets = Rollout(
        pnl=final.pnl.T,
        inventory=final.inventory.T,
        spread_pnl=final.spread_pnl.T,
        inventory_pnl=final.inventory_pnl.T,
        max_drawdown=per_asset.max_drawdown.T,
        n_bid_fills=per_asset.n_bid_fills.T,
        n_ask_fills=per_asset.n_ask_fills.T,
        mean_spread=per_asset.mean_spread().T,
        sum_sq_inventory=per_asset.sum_sq_inventory.T,
        final_mid=final.mid.T,
        fees=jax.tree.map(jnp.transpose, final.fees),
        paths=path_data,
        n_steps=params.market.n_steps,
    )
    return MultiRollout(
        pnl=jnp.sum(final.pnl, axis=0),
        max_drawdown=running.portfolio_drawdown,
        inventory_variance=running.inventory_variance,
        n_marketable=running.n_marketable.T,
        assets=assets,
        pnl_path=pnl_path,
        n_steps=params.market.n_steps,
    )


@functools.partial(jax.jit, static_argnames=("paths",))
def _rollout_multi_jit(params, policy, streams, episodes, paths):
    return rollout_multi(params, policy, streams, episodes, paths)


def simulate_multi(
    params: MultiAssetParams,
    policy: Callable,
    key: jax.Array,
    n_episodes: int,
    *,
    paths: bool = False,
    chunk_size: int | None = None,
) -> MultiRollout:
    """Simulate ``n_episodes`` sessions of a multi-asset ``policy`` (see the module docstring).

    Args:
        params: the market (validated here, before anything is compiled).
        policy: ``(obs, params) -> Quotes`` over all assets, e.g.
            ``portfolio_avellaneda_stoikov(gamma)`` or ``per_asset(single_asset_policy)``.
        key: a JAX PRNG key; the same key gives the same numbers, and every policy simulated
            with it sees the same mid paths and fill uniforms (common random numbers).
        n_episodes: number of independent sessions.
        paths: also return per-step paths (``MultiRollout.assets.paths`` and ``pnl_path``).
        chunk_size: episodes per compiled chunk (default ``DEFAULT_CHUNK``); results do not
            depend on it.
    """
    if not isinstance(params, MultiAssetParams):
        raise TypeError(f"expected MultiAssetParams (see make_params), got {type(params).__name__}")
    params.validate()
    policy = policies.checked_pytree(policy)
    n_chunks, chunk = equal_chunks(n_episodes, chunk_size, DEFAULT_CHUNK)
    streams = asset_streams(key, params.n_assets)
    results = []
    for index in range(n_chunks):
        start = index * chunk
        episodes = jnp.arange(start, start + chunk, dtype=jnp.uint32)
        result = _rollout_multi_jit(params, policy, streams, episodes, paths)
        keep = min(chunk, n_episodes - start)
        results.append(jax.tree.map(lambda x, keep=keep: x[:keep], result))
    if n_chunks == 1:
        return results[0]
    return jax.tree.map(lambda *xs: jnp.concatenate(xs), *results)


def influence_values(x: Any, gamma: float) -> dict[str, tuple[float, np.ndarray]]:
    """Portfolio statistics of per-episode values ``x`` and their influence values per episode.

    For each statistic ``s`` the returned ``(value, psi)`` has ``value`` the estimate and
    ``psi`` its influence values (``psi.mean()`` is ~0 up to ``O(1/n)``): ``psi.std() / sqrt(n)``
    is the delta-method standard error, and for two rules on the same paths the standard error
    of the difference is that of ``psi_a - psi_b`` (paired). Statistics:

    - ``mean_pnl``: ``x - mean``;
    - ``std_pnl``: ``((x - mean)^2 - s^2) / (2 s)``;
    - ``sharpe`` (``mean / std`` across episodes): ``(x - mean) / s - S ((x - mean)^2 - s^2) /
      (2 s^2)`` (its variance is Mertens' 2002 formula);
    - ``mean_variance`` (``E - (gamma/2) Var``): ``(x - mean) - (gamma/2) ((x - mean)^2 - s^2)``.
    """
    x = np.asarray(x, np.float64)
    mean, s = x.mean(), x.std(ddof=1)
    centred = x - mean
    spread = centred**2 - s**2
    ratio = mean / s
    return {
        "mean_pnl": (float(mean), centred),
        "std_pnl": (float(s), spread / (2 * s)),
        "sharpe": (float(ratio), centred / s - ratio * spread / (2 * s**2)),
        "mean_variance": (float(mean - 0.5 * gamma * s**2), centred - 0.5 * gamma * spread),
    }


def _per_episode(rollout: MultiRollout, gamma: float) -> dict[str, tuple[float, np.ndarray]]:
    pnl = np.asarray(rollout.pnl, np.float64)
    stats = influence_values(pnl, gamma)
    variance = np.asarray(rollout.inventory_variance, np.float64)
    penalised = pnl - 0.5 * gamma * variance
    drawdown = np.asarray(rollout.max_drawdown, np.float64)
    abs_q = np.abs(np.asarray(rollout.assets.inventory, np.float64)).mean(axis=1)
    quotes = 2 * rollout.n_steps * rollout.n_assets
    marketable = np.asarray(rollout.n_marketable, np.float64).sum(axis=1) / quotes
    for name, x in (
        ("inventory_variance", variance),
        ("marketable_share", marketable),
        ("penalised_pnl", penalised),
        ("max_drawdown", drawdown),
        ("mean_abs_q", abs_q),
    ):
        stats[name] = (float(x.mean()), x - x.mean())
    return stats


def summarize_multi(rollout: MultiRollout, gamma: float) -> dict[str, float]:
    """Portfolio statistics for risk aversion ``gamma`` (float64), each ``x`` with ``x_se``.

    Keys: ``mean_pnl``, ``std_pnl``, ``sharpe`` (per episode: mean / std of the terminal
    portfolio PnL across episodes), ``mean_variance`` (``E - (gamma/2) Var`` of the terminal
    PnL), ``inventory_variance`` (mean of ``sum_t q' Sigma q dt``, price units^2: the session
    average of ``q' Sigma q`` times ``T``), ``penalised_pnl`` (mean of
    ``PnL - (gamma / 2) sum_t q' Sigma q dt``), ``max_drawdown`` (mean of the portfolio's),
    ``mean_abs_q`` (mean over assets and episodes of ``|q_T|``), ``marketable_share`` (share
    of the quotes placed through the mid). Standard errors are delta-method
    (``influence_values``).
    """
    n = rollout.n_episodes
    out: dict[str, float] = {"n_episodes": n}
    for name, (value, psi) in _per_episode(rollout, gamma).items():
        out[name] = value
        out[f"{name}_se"] = float(psi.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return out


def paired_difference(first: MultiRollout, second: MultiRollout, gamma: float) -> dict[str, float]:
    """``first - second`` for every statistic of ``summarize_multi``, with paired standard
    errors: both rollouts must come from the same key and episodes (common random numbers)."""
    if first.n_episodes != second.n_episodes:
        raise ValueError(
            f"paired rollouts need the same episodes; got {first.n_episodes} and "
            f"{second.n_episodes}"
        )
    n = first.n_episodes
    one, two = _per_episode(first, gamma), _per_episode(second, gamma)
    out: dict[str, float] = {"n_episodes": n}
    for name, (value, psi) in one.items():
        other, other_psi = two[name]
        out[name] = value - other
        out[f"{name}_se"] = (
            float((psi - other_psi).std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
        )
    return out
