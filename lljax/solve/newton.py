"""Method ``"newton"``: damped Newton with a dense ``D x D`` Cholesky, on dense blocks.

The direction solves ``(H + mu I) p = -g`` with the full Hessian ``H = X^T C X + A``; the iteration
(line search, statuses, finish) is :mod:`lljax.solve.iteration`'s. It returns any posterior precision
(``"full"`` included) and takes a diagonal or full prior precision. On the CPU the native kernel
(:func:`lljax.solve.kernels.newton_solve`) runs the same iteration with the entity axis in SIMD lanes; on a
:class:`~lljax.solve.blocks.RowsBlock` (:func:`solve_rows`) it reads the dataset's rows itself.

Per-lane workspace (:func:`bytes_per_lane`): the ``(N, D)`` rows, a few ``D x D`` matrices (Hessian,
Cholesky factor, full prior) and vectors, times a factor for XLA's temporaries; on the native kernel,
the block's arrays and results only.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import cho_solve

from lljax.solve import kernels
from lljax.solve.base import HESSIAN_TYPES, Limits, Scalar, SolverConfig, SolveResult, lane_batch_option
from lljax.solve.blocks import Block, RowsBlock
from lljax.solve.iteration import Direction, Iterate, Step, finish, iterate, over_lanes, start
from lljax.solve.objective import Entity, dense_entity

__all__ = ["newton_direction", "make_direction", "solve_jax", "solve_native", "native_supports", "solve_rows",
           "RowsResult", "rows_supports", "bytes_per_lane", "check", "NATIVE_MAX_FEATURES", "WORKSPACE_FACTOR"]

NATIVE_MAX_FEATURES = 512  # the kernel's per-thread workspace ~ D^2 x lanes; beyond this the pure-JAX path runs
# Solver temporaries (X * curvature, a few D x D matrices, line-search copies) on top of the block's own
# arrays; used by every method's bytes_per_lane to turn a memory budget into a block size.
WORKSPACE_FACTOR = 4


def newton_direction(H: jax.Array, g: jax.Array, ridge: float | None = None) -> jax.Array:
    """Solve ``(H + mu I) p = -g`` by Cholesky, with a tiny relative ridge ``mu = r max diag H + eps``.

    The ridge keeps Cholesky defined when a feature has no data and no penalty (zero row of H; its
    gradient is 0 too, so its step is 0). It changes the path, never the fixed point, which is set by
    the gradient test. By default ``r = sqrt(eps)``. With ``ridge`` given, ``r = ridge`` first, and
    ``sqrt(eps)`` only where that Cholesky fails (H singular to rounding): a smaller ridge damps the step
    less along directions of low curvature (an unpenalized intercept beside one-hot columns), which in
    float32, where ``sqrt(eps) max diag H`` can exceed the smallest eigenvalue, decides where the
    gradient test stops.
    """
    eps = jnp.finfo(H.dtype).eps
    top = jnp.max(jnp.diag(H))
    if ridge is not None:
        p = _ridge_solve(H, g, ridge * top + eps, top)
        return jax.lax.cond(jnp.all(jnp.isfinite(p)), lambda: p, lambda: newton_direction(H, g))
    return _ridge_solve(H, g, jnp.sqrt(eps) * top + eps, top)


def _ridge_solve(H: jax.Array, g: jax.Array, mu: jax.Array, top: jax.Array) -> jax.Array:
    # The Cholesky symmetrizes its input, (M + M^T) / 2, so M^T factors to the same L, bit for bit; passing the
    # transpose lets XLA hand the row-major H to the column-major LAPACK routine without a copy (and keeps the
    # penalty, added to H, row-major for its matrix-vector products).
    L = jnp.linalg.cholesky(H.T + mu * jnp.eye(H.shape[0], dtype=H.dtype))
    p = -cho_solve((L, True), g)
    # An overflowed Hessian (e.g. feature values ~1e200) must fail the lane, not stall it with a zero step. Its
    # diagonal's max ``top`` (NaN-propagating) tells: an entry of X^T C X is at most the largest of its row's and
    # column's diagonal entries (Cauchy-Schwarz), and a non-finite penalty A has already made the objective at the
    # start non-finite.
    return jnp.where(jnp.isfinite(top), p, jnp.nan)


def make_direction(entity: Entity, ridge: float | None = None) -> Direction:
    """The Newton direction of ``entity`` for :func:`lljax.solve.iteration.iterate`: the full Hessian
    ``H = X^T C X + A`` at the iterate's margins (its rows need ``weighted_gram``), solved by
    :func:`newton_direction` (with its ``ridge``)."""

    def direction(it: Iterate) -> Step:
        p = newton_direction(entity.hessian_from(it.curvature), it.grad, ridge)
        return Step(p, entity.rows.matvec(p))

    return direction


def _posterior_precision(entity: Entity, curvature: jax.Array, hessian: str) -> jax.Array | None:
    if hessian == "none":
        return None
    H = entity.hessian_from(curvature)
    if hessian == "full":
        return H
    if hessian == "diagonal":
        return jnp.diag(H)
    return jnp.ones(H.shape[0], H.dtype)  # identity


def _solve_one(X: jax.Array, y: jax.Array, w: jax.Array, offset: jax.Array, feature_ids: jax.Array,
               prior_mean: jax.Array, prior_precision: jax.Array, l2: jax.Array, delta: jax.Array, limits: Limits, *,
               config: SolverConfig) -> SolveResult:
    """Solve one entity. Shapes: X ``(N, D)``; y, w, offset ``(N,)``; feature_ids, prior_mean ``(D,)``."""
    entity = dense_entity(X, y, w, offset, feature_ids, prior_mean, prior_precision, l2, delta, config.loss,
                          config.penalize_intercept)
    theta0 = jnp.where(feature_ids >= 0, prior_mean, 0.0)
    final = iterate(entity, make_direction(entity), start(entity, theta0, limits), limits, config.max_backtracks)
    precision = _posterior_precision(entity, final.curvature, config.hessian)
    return finish(theta0, final, precision, prior_precision, hessian=config.hessian)


def solve_jax(block: Block, l2: jax.Array, delta: jax.Array, limits: Limits, *, config: SolverConfig,
              lane_batch: int | None = None) -> SolveResult:
    """Every lane of ``block`` by the pure-JAX iteration (traced inside the registry's jit): one ``vmap``, or
    batches of ``lane_batch`` lanes (:func:`lljax.solve.iteration.over_lanes`)."""
    solve = partial(_solve_one, config=config)
    # The block's fields are tracers here, inside the registry's jit (jnp.asarray only tells the type checker).
    lane_arrays = tuple(jnp.asarray(a) for a in block)
    return over_lanes(solve, lane_arrays, (l2, delta, limits), lane_batch)


def solve_native(block: Block, l2: jax.Array, delta: jax.Array, limits: Limits, *,
                 config: SolverConfig, lane_batch: int | None = None) -> SolveResult:
    """:func:`solve_jax` by the native kernel: the same penalty, iteration and finish, in C++ (the kernel
    builds each entity's penalty in cache, so no ``(E, D, D)`` array is made around it; ``lane_batch`` is
    the pure-JAX path's, unused here)."""
    del lane_batch
    kind = config.hessian if config.hessian in ("full", "diagonal") else "none"
    E = block.X.shape[0]
    outputs = kernels.newton_solve(
        block.X, block.y, block.w, block.offset, kernels.feature_mask(block.feature_ids, config.penalize_intercept),
        block.prior_mean, block.prior_precision,
        *kernels.per_entity(E, l2, delta, limits.tol, limits.max_iter), loss=config.loss,
        max_backtracks=config.max_backtracks, precision=kind)
    return kernels.solve_result(outputs, config.hessian)


class RowsResult(NamedTuple):
    """:func:`solve_rows` in progress; :meth:`result` waits for it."""

    solve: kernels.RowsSolve
    hessian: str

    def result(self) -> SolveResult:
        """The :class:`~lljax.solve.base.SolveResult` (NumPy arrays), once the kernel is done."""
        return kernels.solve_result(self.solve.result(), self.hessian)


def solve_rows(block: RowsBlock, l2: Scalar, delta: Scalar, config: SolverConfig, max_iter: int) -> RowsResult:
    """Start :func:`solve_native` on the dense block that ``block`` stands for, on the host: the kernel reads each
    lane's rows from the dataset as it loads the lane (:func:`lljax.solve.kernels.newton_solve_rows`), so no
    design matrix is packed. Returns at once; the result (NumPy arrays) equals :func:`solve_native`'s on
    :func:`lljax.solve.blocks.dense_from_rows` of ``block`` bit for bit."""
    if config.hessian not in HESSIAN_TYPES:
        raise ValueError(f"field 'hessian': value {config.hessian!r} is not one of {list(HESSIAN_TYPES)}")
    dtype = np.dtype(block.prior_mean.dtype)
    E = len(block.lane_begin)
    mask = kernels.feature_mask(np.asarray(block.feature_ids), config.penalize_intercept)
    kind = config.hessian if config.hessian in ("full", "diagonal") else "none"
    started = kernels.newton_solve_rows(
        block, mask, np.full(E, l2, dtype), np.full(E, delta, dtype), np.full(E, config.tol, dtype),
        np.full(E, max_iter, np.int32), loss=config.loss, max_backtracks=config.max_backtracks, precision=kind)
    return RowsResult(started, config.hessian)


def rows_supports(features: int, dtype: np.dtype, config: SolverConfig) -> bool:
    """Whether :func:`solve_rows` runs blocks of ``features`` padded features in ``dtype`` (host side)."""
    return kernels.available() and kernels.supports(dtype) and features <= NATIVE_MAX_FEATURES and \
        config.loss in kernels.LOSS_CODES


def native_supports(block: Block, config: SolverConfig) -> bool:
    """Whether the native kernel handles this block (dtype, rank, ``D``, loss); shapes only, host side."""
    return (kernels.supports(block.X.dtype) and block.X.ndim == 3 and block.X.shape[-1] <= NATIVE_MAX_FEATURES
            and config.loss in kernels.LOSS_CODES)


def check(block: Block, config: SolverConfig, options: dict) -> dict:
    """Validate the settings and options (``ValueError`` naming the field); returns the options with their
    defaults (``lane_batch``: :func:`lljax.solve.base.lane_batch_option`)."""
    if config.hessian not in HESSIAN_TYPES:
        raise ValueError(f"field 'hessian': value {config.hessian!r} is not one of {list(HESSIAN_TYPES)}")
    unknown = set(options) - {"lane_batch"}
    if unknown:
        raise TypeError(f"the newton method takes the options ['lane_batch'] only, got {sorted(unknown)}")
    E, N, D = block.X.shape
    full_prior = np.ndim(block.prior_precision) == 3
    lane_bytes = bytes_per_lane(N, D, np.dtype(block.X.dtype).itemsize, full_prior, native=False)
    return {"lane_batch": lane_batch_option(options, E, lane_bytes)}


def bytes_per_lane(rows: int, features: int, itemsize: int, full_precision: bool, native: bool) -> int:
    """Bytes one lane of a ``rows x features`` block needs, workspace included: on the native kernel the
    block's arrays and its results (the kernel's workspace is per thread, a few groups of lanes), else
    those and XLA's temporaries (:data:`WORKSPACE_FACTOR`)."""
    prior = features * features if full_precision else features
    if native and features <= NATIVE_MAX_FEATURES:  # X, y, w, offset, ids, prior; theta, precision, 4 scalars
        return (rows * features + 3 * rows + 2 * features + 2 * prior + 4) * itemsize + 8 * features
    floats = rows * features + 3 * rows + 2 * features + prior + features * features
    return WORKSPACE_FACTOR * (floats * itemsize + 8 * features)
