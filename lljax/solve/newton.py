"""Batched per-entity solve: damped Newton with Cholesky, vmapped over a block.

Everything here is a pure JAX function. One entity is solved by
:func:`_solve_one`, written for a single entity and ``vmap``-ped once over the
entity axis of a :class:`Block` by :func:`solve_block`, which is ``jit``-ted.
On the CPU backend :func:`solve_block` runs the same Newton loop in the native
kernel of :mod:`lljax.solve.kernels` when it is built (``SolverConfig.native``): the
penalty, the start and the finish (:func:`_finish`) stay here, shared by both.

The objective of one entity (see DESIGN.md) is

    f(theta) = sum_i w_i l(m_i, y_i)                                 (data)
             + 1/2 delta (theta - theta0)^T P0 (theta - theta0)        (prior)
             + 1/2 (1 - delta) l2 ||theta||^2                          (L2)

with ``m = X theta + offset``. ``delta = 0`` is plain L2 regularization; the
prior precision ``P0`` is diagonal ``(D,)`` or full ``(D, D)``. Nothing here
raises: every entity ends with a :class:`Status` code, and a lane whose
numbers became non-finite returns its prior unchanged.
"""

from __future__ import annotations

import enum
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import cho_solve

from lljax.solve import kernels
from lljax.solve.losses import RowLoss, get_loss

__all__ = ["Status", "Block", "SolverConfig", "SolveResult", "solve_block", "entity_objective", "entity_hessian",
           "HESSIAN_TYPES"]

HESSIAN_TYPES = ("none", "identity", "diagonal", "full")

_RUNNING = -1
_ARMIJO_C1 = 1e-4


class Status(enum.IntEnum):
    """Outcome of one entity's solve.

    CONVERGED: the max-abs gradient fell to the tolerance.
    MAX_ITERATIONS: the iteration cap was reached first; the last iterate is kept.
    NON_FINITE: a loss, gradient or Newton step became NaN/inf; the prior is kept.
    STALLED: no step size decreased the objective (the numerical floor was reached
      before the tolerance); the last iterate is kept.
    SKIPPED: not solved: the entity had fewer rows with positive weight than the model's
      ``min_rows``; its stored state (or cold prior) is kept. Set by
      :meth:`RandomEffectModel.update`, never by :func:`solve_block`.
    """

    CONVERGED = 0
    MAX_ITERATIONS = 1
    NON_FINITE = 2
    STALLED = 3
    SKIPPED = 4


class Block(NamedTuple):
    """A padded block of ``E`` entities, each with ``N`` rows and ``D`` local features.

    Attributes:
      X: ``(E, N, D)`` design matrix in each entity's local feature subspace.
      y: ``(E, N)`` labels, already encoded for the loss (logistic: +-1).
      w: ``(E, N)`` example weights; 0 marks a padding row.
      offset: ``(E, N)`` fixed-effect scores.
      feature_ids: ``(E, D)`` global feature id of each local column, -1 for padding.
      prior_mean: ``(E, D)`` prior mean theta0 (0 on padding).
      prior_precision: ``(E, D)`` diagonal or ``(E, D, D)`` full prior precision P0.
    """

    X: jax.Array
    y: jax.Array
    w: jax.Array
    offset: jax.Array
    feature_ids: jax.Array
    prior_mean: jax.Array
    prior_precision: jax.Array


class SolverConfig(NamedTuple):
    """Static (compile-time) solver settings.

    Attributes:
      loss: ``"linear"``, ``"logistic"`` or ``"poisson"``.
      hessian: posterior precision returned: ``"none"``, ``"identity"``, ``"diagonal"`` or ``"full"``.
      max_iter: Newton iteration cap per entity.
      tol: convergence when ``max_j |gradient_j| <= tol``.
      max_backtracks: step halvings tried by the line search before declaring STALLED.
      native: use the native CPU kernel (:mod:`lljax.solve.kernels`) on the CPU backend: ``None`` (default)
        when it is built and not disabled by ``LLJAX_NATIVE=0``, ``False`` never (the pure-JAX path),
        ``True`` always (an error if it is not built). Other backends always run the pure-JAX path.
    """

    loss: str = "logistic"
    hessian: str = "full"
    max_iter: int = 50
    tol: float = 1e-6
    max_backtracks: int = 30
    native: bool | None = None


class _Limits(NamedTuple):
    """The numeric stopping settings, passed to jit as traced values (no recompile per value)."""

    tol: jax.Array
    max_iter: jax.Array


class SolveResult(NamedTuple):
    """Per-entity results of :func:`solve_block`.

    Attributes:
      theta: ``(E, D)`` posterior mean (the prior mean for NON_FINITE lanes).
      precision: posterior precision ``(E, D, D)`` (full), ``(E, D)`` (diagonal, identity) or
        ``None`` (none); the prior precision for NON_FINITE lanes.
      loss: ``(E,)`` objective value at ``theta`` (data loss + penalty).
      grad_norm: ``(E,)`` max-abs gradient at ``theta``.
      iterations: ``(E,)`` Newton iterations taken.
      status: ``(E,)`` :class:`Status` codes.
    """

    theta: jax.Array
    precision: jax.Array | None
    loss: jax.Array
    grad_norm: jax.Array
    iterations: jax.Array
    status: jax.Array


class _Penalty(NamedTuple):
    """The prior + L2 penalty of one entity as ``1/2 t^T A t - b^T t + c``.

    ``A = delta P0 + (1 - delta) l2 I`` (``(D,)`` if P0 is diagonal, else ``(D, D)``), with the
    identity on padding features so that they solve to 0; ``b = delta P0 theta0``;
    ``c = 1/2 delta theta0^T P0 theta0``.
    """

    A: jax.Array
    b: jax.Array
    c: jax.Array

    def matvec(self, v: jax.Array) -> jax.Array:
        return self.A @ v if self.A.ndim == 2 else self.A * v

    def value(self, theta: jax.Array) -> jax.Array:
        return 0.5 * theta @ self.matvec(theta) - self.b @ theta + self.c

    def add_to(self, H: jax.Array) -> jax.Array:
        return H + self.A if self.A.ndim == 2 else H + jnp.diag(self.A)


def _make_penalty(prior_mean, prior_precision, mask, l2, delta) -> _Penalty:
    theta0 = jnp.where(mask, prior_mean, 0.0)
    ridge = (1.0 - delta) * l2
    if prior_precision.ndim == 2:
        pair = mask[:, None] & mask[None, :]
        P0 = jnp.where(pair, prior_precision, 0.0)
        eye = jnp.eye(mask.shape[0], dtype=P0.dtype)
        A = jnp.where(pair, delta * P0 + ridge * eye, eye)
        P0_theta0 = P0 @ theta0
    else:
        P0 = jnp.where(mask, prior_precision, 0.0)
        A = jnp.where(mask, delta * P0 + ridge, 1.0)
        P0_theta0 = P0 * theta0
    return _Penalty(A=A, b=delta * P0_theta0, c=0.5 * delta * theta0 @ P0_theta0)


def _weighted(w, v):
    """``w * v`` with weight-0 (padding) rows forced to 0 even where ``v`` overflows."""
    return jnp.where(w > 0, w * v, 0.0)


class _Entity(NamedTuple):
    """One entity's data and penalty, closed over by the objective pieces."""

    X: jax.Array
    y: jax.Array
    w: jax.Array
    offset: jax.Array
    penalty: _Penalty
    loss: RowLoss

    def objective(self, theta, margin):
        return jnp.sum(_weighted(self.w, self.loss.value(margin, self.y))) + self.penalty.value(theta)

    def gradient(self, theta, margin):
        data = self.X.T @ _weighted(self.w, self.loss.d1(margin, self.y))
        return data + self.penalty.matvec(theta) - self.penalty.b

    def hessian(self, margin):
        curvature = _weighted(self.w, self.loss.d2(margin, self.y))
        return self.penalty.add_to(self.X.T @ (self.X * curvature[:, None]))


class _Iterate(NamedTuple):
    theta: jax.Array
    margin: jax.Array
    value: jax.Array
    grad: jax.Array
    iteration: jax.Array
    status: jax.Array


def _status_after(value, grad, iteration, limits: _Limits, stalled=False):
    finite = jnp.isfinite(value) & jnp.all(jnp.isfinite(grad))
    converged = jnp.max(jnp.abs(grad), initial=0.0) <= limits.tol
    status = jnp.where(iteration >= limits.max_iter, Status.MAX_ITERATIONS, _RUNNING)
    status = jnp.where(stalled, Status.STALLED, status)
    status = jnp.where(converged, Status.CONVERGED, status)
    return jnp.where(finite, status, Status.NON_FINITE).astype(jnp.int32)


def _newton_direction(H, g):
    """Solve ``(H + mu I) p = -g`` by Cholesky, with a tiny relative ridge ``mu``.

    The ridge (``sqrt(eps) * max diag H``) keeps Cholesky defined when a feature has no data
    and no penalty (zero row of H; its gradient is 0 too, so its step is 0). It changes the
    path, never the fixed point, which is set by the gradient test.
    """
    eps = jnp.finfo(H.dtype).eps
    mu = jnp.sqrt(eps) * jnp.max(jnp.diag(H)) + eps
    L = jnp.linalg.cholesky(H + mu * jnp.eye(H.shape[0], dtype=H.dtype))
    p = -cho_solve((L, True), g)
    # An overflowed Hessian (e.g. feature values ~1e200) must fail the lane, not stall it with a zero step.
    return jnp.where(jnp.all(jnp.isfinite(H)), p, jnp.nan)


def check_diagonal_solver(config: SolverConfig, prior_precision, supported: tuple[str, ...], solver: str) -> None:
    """``ValueError`` unless ``config.hessian`` is in ``supported`` and the prior precision is diagonal
    ``(E, D)``: what the solvers that keep no ``D x D`` matrix (L-BFGS, wide) accept."""
    if config.hessian not in supported:
        raise ValueError(f"field 'hessian': value {config.hessian!r} is not supported by the {solver} solver "
                         f"(expected one of {list(supported)})")
    if prior_precision.ndim != 2:
        raise ValueError(f"field 'prior_precision': shape {tuple(prior_precision.shape)} is not diagonal "
                         f"(E, D); the {solver} solver needs a diagonal prior precision")


def backtracking_line_search(value_at, value, slope, max_backtracks: int):
    """Armijo backtracking from the full step ``t = 1``, halving at most ``max_backtracks`` times.

    The test has a rounding-level slack on f: near the optimum the predicted decrease (~ g^T H^-1 g)
    falls below the rounding error of f, and a strict test would reject the (then very accurate)
    full Newton step and crawl with tiny steps instead.

    Args:
      value_at: ``t -> objective at step t`` along the direction.
      value: objective at ``t = 0``; slope: directional derivative there.
    Returns:
      ``(t, value at t, accepted)``: ``accepted`` is False for an ascent direction or no sufficient
      decrease (the caller reports STALLED), True for a non-finite slope, so that a NaN direction
      surfaces as NON_FINITE rather than as a stall.
    """
    slack = 16 * jnp.finfo(value.dtype).eps * (1.0 + jnp.abs(value))

    def trial(k):
        t = jnp.asarray(0.5, value.dtype) ** k
        return value_at(t), t

    def sufficient(trial_value, t):
        return trial_value <= value + _ARMIJO_C1 * t * slope + slack

    def keep_backtracking(carry):
        k, trial_value, t = carry
        return (k < max_backtracks) & ~sufficient(trial_value, t) & jnp.isfinite(slope)

    def backtrack(carry):
        k = carry[0] + 1
        return (k, *trial(k))

    _, new_value, t = jax.lax.while_loop(keep_backtracking, backtrack, (0, *trial(0)))
    accepted = (sufficient(new_value, t) & (slope < 0)) | ~jnp.isfinite(slope)
    return t, new_value, accepted


def _newton_step(entity: _Entity, it: _Iterate, limits: _Limits, config: SolverConfig) -> _Iterate:
    p = _newton_direction(entity.hessian(it.margin), it.grad)
    Xp = entity.X @ p
    slope = it.grad @ p

    t, value, accepted = backtracking_line_search(
        lambda t: entity.objective(it.theta + t * p, it.margin + t * Xp), it.value, slope, config.max_backtracks)
    theta = jnp.where(accepted, it.theta + t * p, it.theta)
    margin = jnp.where(accepted, it.margin + t * Xp, it.margin)
    value = jnp.where(accepted, value, it.value)
    grad = jnp.where(accepted, entity.gradient(theta, margin), it.grad)
    iteration = it.iteration + 1
    status = _status_after(value, grad, iteration, limits, stalled=~accepted)
    return _Iterate(theta, margin, value, grad, iteration, status)


def _posterior_precision(entity: _Entity, margin, hessian: str):
    if hessian == "none":
        return None
    H = entity.hessian(margin)
    if hessian == "full":
        return H
    if hessian == "diagonal":
        return jnp.diag(H)
    return jnp.ones(H.shape[0], H.dtype)  # identity


def _prior_in_form(prior_precision, hessian: str):
    """The prior precision expressed in the output form of ``hessian`` (kept by failed lanes)."""
    if hessian == "none":
        return None
    if hessian == "full":
        return prior_precision if prior_precision.ndim == 2 else jnp.diag(prior_precision)
    if hessian == "diagonal":
        return jnp.diag(prior_precision) if prior_precision.ndim == 2 else prior_precision
    return jnp.ones(prior_precision.shape[0], prior_precision.dtype)


def _solve_one(X, y, w, offset, feature_ids, prior_mean, prior_precision, l2, delta, limits, *,
               config: SolverConfig):
    """Solve one entity. Shapes: X ``(N, D)``; y, w, offset ``(N,)``; feature_ids, prior_mean ``(D,)``."""
    entity = _entity(X, y, w, offset, feature_ids, prior_mean, prior_precision, l2, delta, config.loss)
    theta0 = jnp.where(feature_ids >= 0, prior_mean, 0.0)
    margin0 = X @ theta0 + offset
    value0 = entity.objective(theta0, margin0)
    grad0 = entity.gradient(theta0, margin0)
    start = _Iterate(theta0, margin0, value0, grad0, jnp.int32(0), _status_after(value0, grad0, 0, limits))

    final = jax.lax.while_loop(
        lambda it: it.status == _RUNNING, lambda it: _newton_step(entity, it, limits, config), start
    )
    precision = _posterior_precision(entity, final.margin, config.hessian)
    return _finish(theta0, final.theta, final.value, jnp.max(jnp.abs(final.grad), initial=0.0), final.iteration,
                   final.status, precision, prior_precision, hessian=config.hessian)


def _finish(theta0, theta, value, grad_norm, iterations, status, precision, prior_precision, *, hessian: str):
    """One entity's :class:`SolveResult` from its final iterate (shared by the JAX and the native path)."""
    if precision is not None:  # a posterior precision that overflowed fails the lane too
        status = jnp.where(jnp.all(jnp.isfinite(precision)), status, Status.NON_FINITE).astype(jnp.int32)
    failed = status == Status.NON_FINITE
    if precision is not None:
        precision = jnp.where(failed, _prior_in_form(prior_precision, hessian), precision)
    return SolveResult(
        theta=jnp.where(failed, theta0, theta),
        precision=precision,
        loss=value,
        grad_norm=grad_norm,
        iterations=iterations,
        status=status,
    )


def solve_block(block: Block, l2: jax.Array, delta: jax.Array, config: SolverConfig) -> SolveResult:
    """Solve every entity of a block at once (vmap of :func:`_solve_one`, jitted).

    Only ``config.loss``, ``config.hessian`` and ``config.max_backtracks`` are compile-time
    constants; ``tol`` and ``max_iter`` are traced, so changing them does not recompile.

    Args:
      block: a :class:`Block` of ``E`` entities.
      l2: scalar L2 weight lambda (> 0 keeps cold-start features identified).
      delta: scalar forgetting factor in [0, 1]; 0 is plain L2.
      config: :class:`SolverConfig`.
    Returns:
      :class:`SolveResult` with leading axis ``E``.
    """
    dtype = block.X.dtype
    return _solve_block(block, *traced_arguments(config, dtype, l2, delta))


def traced_arguments(config: SolverConfig, dtype, l2, delta, max_iter: int | None = None):
    """``(l2, delta, limits, static config)`` for a jitted block solver: the traced scalars as 0-d NumPy
    arrays (jit takes them with the block's arrays, with no device op per scalar; a JAX array of the
    right dtype is passed as it is) and the config with its traced fields zeroed, so that changing
    ``tol`` or ``max_iter`` does not recompile."""

    def scalar(x, dt):
        return x if isinstance(x, jax.Array) and x.dtype == dt else np.asarray(x, dt)

    cap = config.max_iter if max_iter is None else max_iter
    limits = _Limits(scalar(config.tol, dtype), scalar(cap, np.int32))
    return scalar(l2, dtype), scalar(delta, dtype), limits, config._replace(tol=0.0, max_iter=0)


@partial(jax.jit, static_argnames=("config",))
def _solve_block(block: Block, l2, delta, limits: _Limits, config: SolverConfig) -> SolveResult:
    plain = partial(_solve_block_jax, config=config)
    if not _use_native(block, config):
        return plain(block, l2, delta, limits)
    return native_on_cpu(partial(_solve_block_native, config=config), plain, block, l2, delta, limits)


def native_on_cpu(native, plain, *args):
    """``native(*args)`` where the computation runs on CPU, ``plain(*args)`` elsewhere (the native
    kernels are CPU custom calls).

    In a process whose only backend is the CPU (``jax.default_backend() == "cpu"``: JAX prefers any
    accelerator it finds), only ``native`` is traced: tracing the pure-JAX solver costs ~0.15 s per
    block shape, twice what compiling the kernel call does. Otherwise ``lax.platform_dependent`` traces
    both and each platform lowers its own branch.
    """
    if _cpu_only_process():
        return native(*args)
    return jax.lax.platform_dependent(*args, cpu=native, default=plain)


def _cpu_only_process() -> bool:
    return jax.default_backend() == "cpu"


def _solve_block_jax(block: Block, l2, delta, limits: _Limits, *, config: SolverConfig) -> SolveResult:
    solve = partial(_solve_one, config=config)
    return jax.vmap(solve, in_axes=(0, 0, 0, 0, 0, 0, 0, None, None, None))(
        block.X, block.y, block.w, block.offset, block.feature_ids, block.prior_mean, block.prior_precision, l2, delta,
        limits,
    )


_NATIVE_MAX_FEATURES = 512  # per-thread workspace ~ D^2 x lanes; beyond this the pure-JAX path runs


def _use_native(block: Block, config: SolverConfig) -> bool:
    """Whether :func:`_solve_block` calls the native kernel (decided at trace time)."""
    ok = (kernels.supports(block.X.dtype) and block.X.ndim == 3 and block.X.shape[-1] <= _NATIVE_MAX_FEATURES
          and config.loss in kernels.LOSS_CODES)
    return native_dispatch(config, ok, f"{block.X.dtype} blocks of shape {block.X.shape}")


def native_dispatch(config: SolverConfig, supported: bool, what: str) -> bool:
    """Whether a block solver calls its native kernel (at trace time), for a block the kernel ``supported``:
    ``config.native`` False: never; True: always (an error if the extension is not built or the block,
    described by ``what``, is not supported); None: when supported and :func:`lljax.kernels.enabled`."""
    if config.native is False:
        return False
    if config.native is True:
        if not kernels.available():
            raise RuntimeError(f"SolverConfig(native=True) but the native kernel is not built: {kernels.build_error()}")
        if not supported:
            raise ValueError(f"the native kernel does not support {what}")
        return True
    return supported and kernels.enabled()


def native_per_entity(E: int, l2, delta, limits: _Limits) -> tuple:
    """``(l2, delta, tol, max_iter)`` broadcast to ``(E,)``: the native kernels take them per entity."""
    return tuple(jnp.broadcast_to(x, (E,)) for x in (l2, delta, limits.tol, limits.max_iter))


def native_result(outputs: tuple, hessian: str) -> SolveResult:
    """A :class:`SolveResult` from a native kernel's ``(theta, value, grad_norm, precision, iterations,
    status)`` (already finished as :func:`_finish`); ``"identity"`` precision is a vector of ones."""
    theta, value, grad_norm, precision, iterations, status = outputs
    if hessian == "identity":
        precision = jnp.ones_like(theta)
    return SolveResult(theta=theta, precision=precision, loss=value, grad_norm=grad_norm, iterations=iterations,
                       status=status)


def _solve_block_native(block: Block, l2, delta, limits: _Limits, *, config: SolverConfig) -> SolveResult:
    """:func:`_solve_block_jax` by the native kernel: the same penalty, Newton loop and finish, in C++ (the
    kernel builds each entity's penalty in cache, so no ``(E, D, D)`` array is made around it)."""
    kind = config.hessian if config.hessian in ("full", "diagonal") else "none"
    outputs = kernels.newton_solve(
        block.X, block.y, block.w, block.offset, block.feature_ids >= 0, block.prior_mean, block.prior_precision,
        *native_per_entity(block.X.shape[0], l2, delta, limits), loss=config.loss,
        max_backtracks=config.max_backtracks, precision=kind)
    return native_result(outputs, config.hessian)


def _entity(X, y, w, offset, feature_ids, prior_mean, prior_precision, l2, delta, loss: str) -> _Entity:
    mask = feature_ids >= 0
    return _Entity(X, y, w, offset, _make_penalty(prior_mean, prior_precision, mask, l2, delta), get_loss(loss))


@partial(jax.jit, static_argnames=("loss",))
def entity_objective(theta, X, y, w, offset, feature_ids, prior_mean, prior_precision, l2, delta, *, loss: str):
    """Objective value and gradient of one entity at ``theta`` (the solver's own functions).

    Shapes: theta ``(D,)``, X ``(N, D)``, y/w/offset ``(N,)``, feature_ids/prior_mean ``(D,)``,
    prior_precision ``(D,)`` or ``(D, D)``. Returns ``(value (), gradient (D,))``.
    """
    entity = _entity(X, y, w, offset, feature_ids, prior_mean, prior_precision, l2, delta, loss)
    margin = X @ theta + offset
    return entity.objective(theta, margin), entity.gradient(theta, margin)


@partial(jax.jit, static_argnames=("loss",))
def entity_hessian(theta, X, y, w, offset, feature_ids, prior_mean, prior_precision, l2, delta, *, loss: str):
    """``(D, D)`` Hessian of one entity's objective at ``theta`` (data curvature + penalty)."""
    entity = _entity(X, y, w, offset, feature_ids, prior_mean, prior_precision, l2, delta, loss)
    return entity.hessian(X @ theta + offset)
