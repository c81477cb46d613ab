"""Batched per-entity solve for wide entities: Newton in the span of the rows, on sparse rows.

A wide entity has many local features ``D`` and few rows ``N`` (``N <= D``), and most features are
absent from any given row. With a *diagonal* penalty ``A = delta P0 + (1 - delta) l2`` (positive;
see :func:`lljax.solve.newton._make_penalty`) the objective of :mod:`lljax.solve.newton`,

    f(theta) = sum_n w_n l(x_n . theta + o_n, y_n) + 1/2 theta^T A theta - b^T theta + c,

has its minimizer in the affine ``N``-dimensional set ``theta = mu + A^-1 X^T beta`` with
``mu = A^-1 b`` (the stationarity condition reads ``theta = mu - A^-1 X^T (w l'(m))``). On that set,
with ``K = X A^-1 X^T`` (``N x N``, formed once per entity) and ``C = diag(w l''(m))``, the primal
Newton step ``p = -H^-1 grad f`` (``H = X^T C X + A``) is, by the push-through identity,

    p = A^-1 X^T dbeta,   (I + C K) dbeta = -(w l'(m) + beta),   grad f = X^T (w l'(m) + beta),

and ``(I + C K)^-1 = I - C^1/2 (I + C^1/2 K C^1/2)^-1 C^1/2 K`` with an SPD ``N x N`` matrix whose
eigenvalues are >= 1: one ``N x N`` Cholesky per iteration instead of a ``D x D`` one, and no ``D``
in the cost of an iteration beyond a gather (``X v``) and a scatter-add (``X^T r``) over the stored
nonzeros. The iterates are primal Newton iterates (from ``theta = mu``, the prior-only optimum) with
the same Armijo line search, rounding slack, stopping rule ``max_j |grad_j| <= tol`` on the primal
gradient, :class:`~lljax.solve.newton.Status` codes and posterior diagonal ``A + X^T(C) diag`` as
:func:`lljax.solve.newton.solve_block` with ``hessian="diagonal"``; at a tight tolerance both give the
same ``theta`` and precision to rounding (``tests/test_wide.py``, 1e-9 relative in float64).

Layout: :class:`SparseBlock` stores each row's nonzeros (local column, value), ``K`` slots per row,
so neither the host nor the device holds an ``(E, N, D)`` design matrix. ``K = X A^-1 X^T`` is
formed on the device by scattering one lane's nonzeros into a dense ``(D, N)`` ``X^T`` and one
``(N, D) x (D, N)`` product (measured on 2 CPU cores, ``benchmarks/bench_wide.py``: 70 us/entity at
``D = 256``, 200 us at ``D = 1024``, ``N = 64``; an all-pairs comparison of the stored columns was
4x slower at ``D = 256``).

Native kernel: on the CPU backend, when :mod:`lljax.solve.kernels` is built (and not turned off by
``SolverConfig(native=False)`` or ``LLJAX_NATIVE=0``), the same algorithm runs in C++
(``lljax/solve/kernels/wide_kernel.h``), one entity at a time, with ``K`` built from the nonzeros grouped by
column (about ``sum_j c_j^2`` products for a column met by ``c_j`` rows, instead of a dense product):
3.7-4.6x the pure-JAX path (``benchmarks/bench_wide.py``), the same iterations, agreement to rounding
(``tests/test_native.py``). The pure-JAX path below is the reference and the path on accelerators.

Lanes: on CPU the block's entities are solved one after the other (``lax.map``), each stopping at
its own iteration count; on accelerators they are ``vmap``-ped. Measured on CPU at ``N = 64``:
``lax.map`` 1.6-2.2x faster than ``vmap`` (a ``vmap``-ped ``while_loop`` runs every lane until the
slowest converges, and its dense ``(E, D, N)`` workspace is ``E`` times larger).

Non-finite numbers follow the Newton solver: a lane whose objective, gradient, ``K`` or direction
becomes NaN/inf ends NON_FINITE with its prior mean and prior precision. A zero penalty entry (``l2 =
0`` with no prior precision) has no ``A^-1``; :func:`solve_sparse_block` hands such blocks to the
L-BFGS solver (:mod:`lljax.solve.lbfgs`) on the dense block.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import cho_solve

from lljax.solve import kernels
from lljax.solve.lbfgs import solve_block_lbfgs
from lljax.solve.losses import get_loss
from lljax.solve.newton import (
    _RUNNING,
    Block,
    SolverConfig,
    SolveResult,
    _finish,
    _Limits,
    _make_penalty,
    _status_after,
    _weighted,
    backtracking_line_search,
    check_diagonal_solver,
    native_dispatch,
    native_on_cpu,
    native_per_entity,
    native_result,
    solve_block,
    traced_arguments,
)

__all__ = ["SparseBlock", "solve_block_wide", "solve_sparse_block", "sparse_from_dense", "dense_from_sparse",
           "build_for_solver", "WIDE_HESSIAN_TYPES", "LANE_MODES"]

WIDE_HESSIAN_TYPES = ("none", "identity", "diagonal")
LANE_MODES = ("map", "vmap")


class SparseBlock(NamedTuple):
    """A padded block of ``E`` entities of ``N`` rows and ``D`` local features, each row stored as at
    most ``K`` nonzeros (nothing of size ``N x D``).

    Attributes:
      cols: ``(E, N, K)`` int32 local column of each stored value (padding: column 0, value 0).
      vals: ``(E, N, K)`` the values (0 on padding).
      y, w, offset: ``(E, N)`` as in :class:`~lljax.solve.newton.Block` (weight 0 marks a padding row).
      feature_ids: ``(E, D)`` global feature id of each local column, -1 for padding.
      prior_mean: ``(E, D)`` prior mean theta0.
      prior_precision: ``(E, D)`` diagonal prior precision P0.
    """

    cols: jax.Array
    vals: jax.Array
    y: jax.Array
    w: jax.Array
    offset: jax.Array
    feature_ids: jax.Array
    prior_mean: jax.Array
    prior_precision: jax.Array


class _Rows(NamedTuple):
    """One entity's sparse rows ``(N, K)``: ``X v`` by a gather, ``X^T r`` by a scatter-add."""

    cols: jax.Array
    vals: jax.Array
    D: int

    def matvec(self, v):
        return jnp.sum(self.vals * v[self.cols], axis=-1)

    def rmatvec(self, r, square=False):
        vals = jnp.square(self.vals) if square else self.vals
        return jnp.zeros(self.D, r.dtype).at[self.cols].add(vals * r[:, None])

    def gram(self, scale):
        """``X diag(scale) X^T`` ``(N, N)``: scatter into a dense ``X^T (D, N)``, one matrix product."""
        N = self.cols.shape[0]
        cells = (self.cols * N + jnp.arange(N)[:, None]).ravel()
        Xt = jnp.zeros(self.D * N, self.vals.dtype).at[cells].add(self.vals.ravel()).reshape(self.D, N)
        return (Xt * scale[:, None]).T @ Xt


class _Iterate(NamedTuple):
    beta: jax.Array       # (N,) theta - mu = A^-1 X^T beta
    theta: jax.Array      # (D,)
    margin: jax.Array     # (N,) X theta + offset
    value: jax.Array
    grad: jax.Array       # (D,) primal gradient
    iteration: jax.Array
    status: jax.Array


def _solve_one(cols, vals, y, w, offset, feature_ids, prior_mean, prior_precision, l2, delta, limits, *,
               config: SolverConfig):
    """Solve one entity. Shapes: cols, vals ``(N, K)``; y, w, offset ``(N,)``; the rest ``(D,)``."""
    D = feature_ids.shape[0]
    loss = get_loss(config.loss)
    mask = feature_ids >= 0
    X = _Rows(cols, jnp.where((w > 0)[:, None], vals, 0.0), D)  # weight-0 rows take no part
    penalty = _make_penalty(prior_mean, prior_precision, mask, l2, delta)
    A = penalty.A
    A_inv = 1.0 / A
    mu = penalty.b * A_inv
    K = X.gram(A_inv)
    eye = jnp.eye(K.shape[0], dtype=K.dtype)

    def objective(theta, margin):
        return jnp.sum(_weighted(w, loss.value(margin, y))) + penalty.value(theta)

    def gradient(theta, margin):
        return X.rmatvec(_weighted(w, loss.d1(margin, y))) + A * theta - penalty.b

    def step(it: _Iterate) -> _Iterate:
        r = _weighted(w, loss.d1(it.margin, y)) + it.beta
        s = jnp.sqrt(_weighted(w, loss.d2(it.margin, y)))
        M = eye + s[:, None] * K * s[None, :]
        dbeta = -r + s * cho_solve((jnp.linalg.cholesky(M), True), s * (K @ r))
        # An overflowed K or curvature must fail the lane, not stall it.
        p = jnp.where(jnp.all(jnp.isfinite(M)), A_inv * X.rmatvec(dbeta), jnp.nan)
        Xp = X.matvec(p)
        slope = it.grad @ p

        # The Newton solver's Armijo search, with its rounding slack.
        t, value, accepted = backtracking_line_search(lambda t: objective(it.theta + t * p, it.margin + t * Xp),
                                                      it.value, slope, config.max_backtracks)
        beta = jnp.where(accepted, it.beta + t * dbeta, it.beta)
        theta = jnp.where(accepted, it.theta + t * p, it.theta)
        margin = jnp.where(accepted, it.margin + t * Xp, it.margin)
        value = jnp.where(accepted, value, it.value)
        grad = jnp.where(accepted, gradient(theta, margin), it.grad)
        iteration = it.iteration + 1
        status = _status_after(value, grad, iteration, limits, stalled=~accepted)
        return _Iterate(beta, theta, margin, value, grad, iteration, status)

    margin0 = X.matvec(mu) + offset
    value0 = objective(mu, margin0)
    grad0 = gradient(mu, margin0)
    start = _Iterate(jnp.zeros_like(y), mu, margin0, value0, grad0, jnp.int32(0),
                     _status_after(value0, grad0, 0, limits))
    final = jax.lax.while_loop(lambda it: it.status == _RUNNING, step, start)

    precision = None
    if config.hessian == "diagonal":  # diag(X^T C X) + A, as lljax.solve.newton._posterior_precision
        precision = X.rmatvec(_weighted(w, loss.d2(final.margin, y)), square=True) + A
    elif config.hessian == "identity":
        precision = jnp.ones_like(mu)
    return _finish(jnp.where(mask, prior_mean, 0.0), final.theta, final.value,
                   jnp.max(jnp.abs(final.grad), initial=0.0), final.iteration, final.status, precision,
                   prior_precision, hessian=config.hessian)


def solve_block_wide(block: SparseBlock, l2, delta, config: SolverConfig, *, lanes: str | None = None) -> SolveResult:
    """Solve every entity of a :class:`SparseBlock` by Newton in the span of its rows (jitted).

    A drop-in alternative to :func:`lljax.solve.newton.solve_block` (``hessian`` in ``"none"``,
    ``"identity"``, ``"diagonal"``) for a diagonal prior precision and a positive penalty
    ``delta P0 + (1 - delta) l2`` on every feature; see the module docstring. ``config.loss``,
    ``config.hessian`` and ``config.max_backtracks`` are compile-time constants; ``tol`` and
    ``max_iter`` (Newton iterations) are traced.

    Args:
      block: the entities.
      l2: scalar L2 weight lambda.
      delta: scalar forgetting factor in [0, 1].
      config: :class:`~lljax.solve.newton.SolverConfig`.
      lanes: ``"map"`` (entities one after the other) or ``"vmap"``; ``None``: ``"map"`` on CPU,
        ``"vmap"`` on accelerators.
    Returns:
      :class:`~lljax.solve.newton.SolveResult` with leading axis ``E``.
    Raises:
      ValueError: ``config.hessian == "full"``, a prior precision that is not ``(E, D)``, or an unknown ``lanes``.
    """
    check_diagonal_solver(config, block.prior_precision, WIDE_HESSIAN_TYPES, "wide")
    if lanes is None:
        lanes = "map" if jax.default_backend() == "cpu" else "vmap"
    if lanes not in LANE_MODES:
        raise ValueError(f"field 'lanes': value {lanes!r} is not one of {list(LANE_MODES)}")
    dtype = block.vals.dtype
    return _solve_block(block, *traced_arguments(config, dtype, l2, delta), lanes)


@partial(jax.jit, static_argnames=("config", "lanes"))
def _solve_block(block: SparseBlock, l2, delta, limits: _Limits, config: SolverConfig, lanes: str) -> SolveResult:
    plain = partial(_solve_block_jax, config=config, lanes=lanes)
    if not _use_native_wide(block, config):
        return plain(block, l2, delta, limits)
    return native_on_cpu(partial(_solve_block_native, config=config), plain, block, l2, delta, limits)


def _solve_block_jax(block: SparseBlock, l2, delta, limits: _Limits, *, config: SolverConfig,
                     lanes: str) -> SolveResult:
    solve = partial(_solve_one, config=config)
    if lanes == "map":
        return jax.lax.map(lambda lane: solve(*lane, l2, delta, limits), tuple(block))
    return jax.vmap(solve, in_axes=(0,) * len(block) + (None, None, None))(*block, l2, delta, limits)


def _use_native_wide(block: SparseBlock, config: SolverConfig) -> bool:
    """Whether :func:`_solve_block` calls the native wide kernel (decided at trace time)."""
    ok = kernels.supports(block.vals.dtype) and block.cols.ndim == 3 and config.loss in kernels.LOSS_CODES
    return native_dispatch(config, ok, f"{block.vals.dtype} sparse blocks of shape {block.cols.shape}")


def _solve_block_native(block: SparseBlock, l2, delta, limits: _Limits, *, config: SolverConfig) -> SolveResult:
    """:func:`_solve_block_jax` by the native wide kernel (``lljax/solve/kernels/wide_kernel.h``): the same
    penalty, iterations, line search, statuses and finish, one entity at a time in C++."""
    kind = "diagonal" if config.hessian == "diagonal" else "none"
    outputs = kernels.wide_solve(
        block.cols, block.vals, block.y, block.w, block.offset, block.feature_ids >= 0, block.prior_mean,
        block.prior_precision, *native_per_entity(block.cols.shape[0], l2, delta, limits), loss=config.loss,
        max_backtracks=config.max_backtracks, precision=kind)
    return native_result(outputs, config.hessian)


def sparse_from_dense(block: Block) -> SparseBlock:
    """The :class:`SparseBlock` of a dense :class:`~lljax.Block` (NumPy; ``K``: most nonzeros in a row)."""
    X = np.asarray(block.X)
    E, N, D = X.shape
    count = (X != 0).sum(axis=-1)
    K = max(int(count.max(initial=0)), 1)
    lane, row, col = np.nonzero(X)
    flat = count.ravel()
    slot = np.arange(len(lane)) - np.repeat(np.cumsum(flat) - flat, flat)
    cols = np.zeros((E, N, K), np.int32)
    vals = np.zeros((E, N, K), X.dtype)
    cols[lane, row, slot] = col
    vals[lane, row, slot] = X[lane, row, col]
    return SparseBlock(cols, vals, *(np.asarray(a) for a in block[1:]))


def dense_from_sparse(block: SparseBlock) -> Block:
    """The dense :class:`~lljax.solve.newton.Block` of a :class:`SparseBlock` (NumPy; repeated columns add up)."""
    cols, vals = np.asarray(block.cols), np.asarray(block.vals)
    E, N, K = cols.shape
    D = block.feature_ids.shape[1]
    cells = (np.arange(E * N)[:, None] * D + cols.reshape(E * N, K)).ravel()
    X = np.bincount(cells, weights=vals.ravel(), minlength=E * N * D).astype(vals.dtype).reshape(E, N, D)
    return Block(X, *(np.asarray(a) for a in block[2:]))


def penalty_is_positive(feature_ids, prior_precision, l2, delta) -> bool:
    """Whether ``delta P0 + (1 - delta) l2 > 0`` on every real feature (the wide solver needs ``A^-1``)."""
    A = float(delta) * np.asarray(prior_precision, np.float64) + (1.0 - float(delta)) * float(l2)
    return bool(np.all((A > 0) | (np.asarray(feature_ids) < 0)))


def solve_sparse_block(block: SparseBlock, l2, delta, config: SolverConfig) -> SolveResult:
    """:func:`solve_block_wide`, or L-BFGS on the dense block where some penalty entry is not positive
    (``l2 = 0`` with a zero prior precision: the span-of-rows form needs ``A^-1``)."""
    if penalty_is_positive(block.feature_ids, block.prior_precision, l2, delta):
        return solve_block_wide(block, l2, delta, config)
    return solve_block_lbfgs(dense_from_sparse(block), l2, delta, config)


def build_for_solver(dataset, labels, plan, subspaces, row_order, row_start, store, slots, l2: float,
                     full_precision: bool):
    """The block of ``plan`` and the function that solves it (``solve(block, l2, delta, config)``), as
    :func:`lljax.rounds.packing.block_solver` picks: dense Newton, the wide solver on a sparse block, or L-BFGS.

    Arguments as :func:`lljax.rounds.packing.build_block`; ``full_precision``: the model keeps ``(D, D)`` precisions.
    """
    from lljax.rounds.packing import block_solver, build_block, build_sparse_block

    solver = block_solver(plan.rows, plan.features, full_precision)
    if solver == "wide":
        return build_sparse_block(dataset, labels, plan, subspaces, row_order, row_start, store, slots, l2), \
            solve_sparse_block
    block = build_block(dataset, labels, plan, subspaces, row_order, row_start, store, slots, l2)
    return block, solve_block_lbfgs if solver == "lbfgs" else solve_block
