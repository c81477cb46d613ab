"""Method ``"span"``: Newton in the span of the rows, on sparse blocks (wide entities).

A wide entity has many local features ``D`` and few rows ``N`` (``N <= D``), and most features are
absent from any given row. With a *diagonal* penalty ``A = delta P0 + (1 - delta) l2`` (positive) the
objective of :mod:`lljax.solve.objective`,

    f(theta) = sum_n w_n l(x_n . theta + o_n, y_n) + 1/2 theta^T A theta - b^T theta + c,

has its minimizer in the affine ``N``-dimensional set ``theta = mu + A^-1 X^T beta`` with
``mu = A^-1 b`` (the stationarity condition reads ``theta = mu - A^-1 X^T (w l'(m))``). On that set,
with ``K = X A^-1 X^T`` (``N x N``, formed once per entity) and ``C = diag(w l''(m))``, the primal
Newton step ``p = -H^-1 grad f`` (``H = X^T C X + A``) is, by the push-through identity,

    p = A^-1 X^T dbeta,   (I + C K) dbeta = -(w l'(m) + beta),   grad f = X^T (w l'(m) + beta),

and ``(I + C K)^-1 = I - C^1/2 (I + C^1/2 K C^1/2)^-1 C^1/2 K`` with an SPD ``N x N`` matrix whose
eigenvalues are >= 1: one ``N x N`` Cholesky per iteration instead of a ``D x D`` one. The iterates are
primal Newton iterates, from ``theta = mu`` (the prior-only optimum), run by the shared iteration of
:mod:`lljax.solve.iteration` with ``beta`` as the method's coordinates; the posterior precision is
the diagonal ``A + diag(X^T C X)``. At a tight tolerance this gives the same ``theta`` and precision
as ``"newton"`` with ``hessian="diagonal"`` to rounding (``tests/test_wide.py``).

``K = X A^-1 X^T`` is formed by scattering one lane's nonzeros into a dense ``(D, N)`` ``X^T`` and one
``(N, D) x (D, N)`` product. Lanes (option ``lanes``): ``"map"`` solves the block's entities one after
the other (``lax.map``, each stopping at its own iteration count; the default on CPU), ``"vmap"`` all
at once (the default on accelerators). On the CPU the native kernel
(:func:`lljax.solve.kernels.wide_solve`) runs the same iteration, one entity at a time, with ``K`` built
from the nonzeros grouped by column. Measurements: ``benchmarks/README.md``.

A zero penalty entry (``l2 = 0`` with no prior precision) has no ``A^-1``: :func:`accepts` says so, and
the registry hands such blocks to its fallback, ``"lbfgs"`` on the dense block.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import cho_solve

from lljax.solve import kernels
from lljax.solve.base import Limits, Scalar, SolverConfig, SolveResult
from lljax.solve.blocks import SparseBlock
from lljax.solve.iteration import Direction, Iterate, Step, finish, iterate, start
from lljax.solve.losses import get_loss
from lljax.solve.newton import WORKSPACE_FACTOR
from lljax.solve.objective import Entity, SparseRows, make_penalty, penalized_features

__all__ = ["HESSIANS", "LANE_MODES", "solve_jax", "solve_native", "native_supports", "accepts", "check",
           "bytes_per_lane"]

HESSIANS = ("none", "identity", "diagonal")
LANE_MODES = ("map", "vmap")


def _direction(entity: Entity, K: jax.Array, A_inv: jax.Array) -> Direction:
    """The Newton step in the span of the rows; the method's coordinates are ``beta`` ``(N,)``."""
    eye = jnp.eye(K.shape[0], dtype=K.dtype)

    def direction(it: Iterate) -> Step:
        r = entity.residual(it.margin) + it.coords
        s = jnp.sqrt(it.curvature)
        M = eye + s[:, None] * K * s[None, :]
        dbeta = -r + s * cho_solve((jnp.linalg.cholesky(M), True), s * (K @ r))
        # An overflowed K or curvature must fail the lane, not stall it.
        p = jnp.where(jnp.all(jnp.isfinite(M)), A_inv * entity.rows.rmatvec(dbeta), jnp.nan)
        return Step(p, entity.rows.matvec(p), dbeta)

    return direction


def _solve_one(cols: jax.Array, vals: jax.Array, y: jax.Array, w: jax.Array, offset: jax.Array,
               feature_ids: jax.Array, prior_mean: jax.Array, prior_precision: jax.Array, l2: jax.Array,
               delta: jax.Array, limits: Limits, *, config: SolverConfig) -> SolveResult:
    """Solve one entity. Shapes: cols, vals ``(N, K)``; y, w, offset ``(N,)``; the rest ``(D,)``."""
    D = feature_ids.shape[0]
    mask = feature_ids >= 0
    rows = SparseRows(cols, jnp.where((w > 0)[:, None], vals, 0.0), D)  # weight-0 rows take no part
    penalty = make_penalty(prior_mean, prior_precision, mask, l2, delta,
                           penalized_features(feature_ids, config.penalize_intercept))
    entity = Entity(rows, y, w, offset, penalty, get_loss(config.loss))
    A_inv = 1.0 / jnp.asarray(penalty.A)  # make_penalty's arrays already (asarray: for the type checker)
    mu = jnp.asarray(penalty.b) * A_inv
    K = rows.row_gram(A_inv)
    first = start(entity, mu, limits, coords=jnp.zeros_like(y))
    final = iterate(entity, _direction(entity, K, A_inv), first, limits, config.max_backtracks)
    precision = None
    if config.hessian == "diagonal":
        precision = entity.hessian_diagonal_from(final.curvature)
    elif config.hessian == "identity":
        precision = jnp.ones_like(mu)
    return finish(jnp.where(mask, prior_mean, 0.0), final, precision, prior_precision, hessian=config.hessian)


def solve_jax(block: SparseBlock, l2: jax.Array, delta: jax.Array, limits: Limits, *, config: SolverConfig,
              lanes: str) -> SolveResult:
    """Every lane of ``block`` by the pure-JAX iteration, ``lax.map`` or ``vmap`` over lanes."""
    solve = partial(_solve_one, config=config)
    # The block's fields are tracers here, inside the registry's jit (jnp.asarray only tells the type checker).
    cols, vals, y, w, offset, feature_ids, prior_mean, prior_precision = (jnp.asarray(a) for a in block)
    arrays = (cols, vals, y, w, offset, feature_ids, prior_mean, prior_precision)

    def one_lane(lane: tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array, jax.Array, jax.Array,
                             jax.Array]) -> SolveResult:
        return solve(*lane, l2, delta, limits)

    if lanes == "map":
        return jax.lax.map(one_lane, arrays)
    return jax.vmap(solve, in_axes=(0,) * len(block) + (None, None, None))(
        cols, vals, y, w, offset, feature_ids, prior_mean, prior_precision, l2, delta, limits)


def solve_native(block: SparseBlock, l2: jax.Array, delta: jax.Array, limits: Limits, *, config: SolverConfig,
                 lanes: str) -> SolveResult:
    """:func:`solve_jax` by the native wide kernel: the same penalty, iteration and finish, in C++."""
    del lanes  # the kernel runs the lanes one after the other
    kind = "diagonal" if config.hessian == "diagonal" else "none"
    outputs = kernels.wide_solve(
        block.cols, block.vals, block.y, block.w, block.offset,
        kernels.feature_mask(block.feature_ids, config.penalize_intercept), block.prior_mean, block.prior_precision,
        *kernels.per_entity(block.cols.shape[0], l2, delta, limits.tol, limits.max_iter),
        loss=config.loss, max_backtracks=config.max_backtracks, precision=kind)
    return kernels.solve_result(outputs, config.hessian)


def native_supports(block: SparseBlock, config: SolverConfig) -> bool:
    """Whether the native wide kernel handles this block (dtype, rank, loss); shapes only, host side."""
    return kernels.supports(block.vals.dtype) and block.cols.ndim == 3 and config.loss in kernels.LOSS_CODES


def accepts(block: SparseBlock, l2: Scalar, delta: Scalar, config: SolverConfig) -> bool:
    """Whether ``A = delta P0 + (1 - delta) l2 > 0`` on every real feature (the method needs ``A^-1``; a cold
    unpenalized intercept has ``A = 0``)."""
    feature_ids = np.asarray(block.feature_ids)
    ridge = (1.0 - float(delta)) * float(l2) * penalized_features(feature_ids, config.penalize_intercept)
    A = float(delta) * np.asarray(block.prior_precision, np.float64) + ridge
    return bool(np.all((A > 0) | (feature_ids < 0)))


def check(block: SparseBlock, config: SolverConfig, options: dict) -> dict:
    """Validate the settings and options (``ValueError`` naming the field); returns the options with
    ``lanes`` resolved (``None``: ``"map"`` on a CPU backend, ``"vmap"`` elsewhere)."""
    if config.hessian not in HESSIANS:
        raise ValueError(f"field 'hessian': value {config.hessian!r} is not supported by the span method "
                         f"(expected one of {list(HESSIANS)})")
    if block.prior_precision.ndim != 2:
        raise ValueError(f"field 'prior_precision': shape {tuple(block.prior_precision.shape)} is not diagonal "
                         f"(E, D); the span method needs a diagonal prior precision")
    unknown = set(options) - {"lanes"}
    if unknown:
        raise TypeError(f"the span method takes the option 'lanes' only, got {sorted(unknown)}")
    lanes = options.get("lanes")
    if lanes is None:
        lanes = "map" if jax.default_backend() == "cpu" else "vmap"
    if lanes not in LANE_MODES:
        raise ValueError(f"field 'lanes': value {lanes!r} is not one of {list(LANE_MODES)}")
    return {"lanes": lanes}


def bytes_per_lane(rows: int, features: int, itemsize: int, full_precision: bool, native: bool) -> int:
    """Bytes one lane of a ``rows x features`` sparse block needs, workspace included."""
    if native:  # sparse rows (~rows * 32 slots) and vectors; the kernel's N x N workspace is per thread
        floats = 48 * rows + 8 * features
    else:  # sparse rows (~rows * 16 stored values), the dense X^T of the gram, N x N matrices
        floats = rows * features + 3 * rows * rows + 24 * rows + 8 * features
    return WORKSPACE_FACTOR * (floats * itemsize + 8 * features)
