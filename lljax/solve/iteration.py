"""The one per-entity iteration every method runs: start -> direction -> line search -> status -> finish.

A method is a *direction*: a function of the current :class:`Iterate` that returns a :class:`Step`
(the step ``p`` in ``theta``, its image ``X p`` in the margins, the step of the method's own
coordinates, and the method's new memory). Everything else is written once, here:

- :func:`start`: the first iterate and its status (a lane may be done at iteration 0);
- :func:`advance`: one iteration: the direction, Armijo backtracking along it
  (:func:`backtracking_line_search`), the accepted point (or the old one and STALLED), the gradient
  there, and the status (:func:`status_after`);
- :func:`iterate`: ``advance`` in a ``lax.while_loop`` until the status is no longer RUNNING;
- :func:`finish`: the lane's :class:`~lljax.solve.base.SolveResult` (a NON_FINITE lane returns its
  prior mean and prior precision).

Method coordinates (``Iterate.coords``) move with ``theta``: ``coords + t * dcoords`` at the accepted
step size (Newton in the span of the rows keeps ``beta``, with ``theta = mu + A^-1 X^T beta``). Method
memory (``Iterate.memory``) is replaced by what the direction returned (L-BFGS's history). The native
kernels (:mod:`lljax.solve.kernels`) implement this same iteration in C++ with the constants of
:mod:`lljax.solve.base`.

Shapes are those of one entity: ``theta``, ``grad`` ``(D,)``, ``margin`` ``(N,)``, scalars ``()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from lljax.solve.base import ARMIJO_C1, RUNNING, SLACK_ULPS, STEP_SHRINK, Limits, SolveResult, Status
from lljax.solve.objective import Entity

__all__ = ["Iterate", "Step", "Direction", "status_after", "backtracking_line_search", "start", "advance", "iterate",
           "finish", "prior_in_form", "over_lanes"]


class Iterate(NamedTuple):
    """One entity's state between iterations.

    Attributes:
      theta: ``(D,)`` coefficients; margin: ``(N,)`` ``X theta + offset``.
      value: ``()`` objective at ``theta``; grad: ``(D,)`` its gradient.
      curvature: ``(N,)`` ``w l''(margin)`` (for the direction's Hessian: computed with the value and the
        gradient, from the same exponentials).
      iteration: ``()`` int32 iterations taken; status: ``()`` int32 :class:`Status` or RUNNING.
      coords: the method's coordinates that move with ``theta`` (a pytree; ``()`` for none).
      memory: the method's memory across iterations (a pytree; ``()`` for none).
    """

    theta: jax.Array
    margin: jax.Array
    value: jax.Array
    grad: jax.Array
    curvature: jax.Array
    iteration: jax.Array
    status: jax.Array
    coords: Any = ()
    memory: Any = ()


class Step(NamedTuple):
    """A method's proposal at an iterate: ``p`` ``(D,)``, ``Xp`` ``(N,)`` (``X p``), the step of the
    method's coordinates (same pytree as ``Iterate.coords``) and its new memory."""

    p: jax.Array
    Xp: jax.Array
    dcoords: Any = ()
    memory: Any = ()


Direction = Callable[[Iterate], Step]


def status_after(value: jax.Array, grad: jax.Array, iteration: ArrayLike, limits: Limits,
                 stalled: ArrayLike = False) -> jax.Array:
    """``()`` int32 status of an iterate: NON_FINITE (value or gradient not finite) over CONVERGED
    (``max |grad| <= tol``) over STALLED over MAX_ITERATIONS over RUNNING."""
    finite = jnp.isfinite(value) & jnp.all(jnp.isfinite(grad))
    converged = jnp.max(jnp.abs(grad), initial=0.0) <= limits.tol
    status = jnp.where(iteration >= limits.max_iter, Status.MAX_ITERATIONS, RUNNING)
    status = jnp.where(stalled, Status.STALLED, status)
    status = jnp.where(converged, Status.CONVERGED, status)
    return jnp.where(finite, status, Status.NON_FINITE).astype(jnp.int32)


def backtracking_line_search(value_at: Callable[[jax.Array], tuple[jax.Array, Any]], value: jax.Array,
                             slope: jax.Array, max_backtracks: int) -> tuple[jax.Array, jax.Array, Any, jax.Array]:
    """Armijo backtracking from the full step ``t = 1``, shrinking ``t`` by ``STEP_SHRINK`` at most
    ``max_backtracks`` times.

    The test has a rounding-level slack on f (``SLACK_ULPS eps (1 + |f|)``): near the optimum the
    predicted decrease (~ g^T H^-1 g) falls below the rounding error of f, and a strict test would
    reject the (then very accurate) full step and crawl with tiny steps instead.

    Args:
      value_at: ``t -> (objective at step t along the direction, aux)``, ``aux`` any pytree of what the
        caller needs at the accepted point (the iteration's: the rows' residual and curvature).
      value: objective at ``t = 0``; slope: directional derivative there.
    Returns:
      ``(t, value at t, aux at t, accepted)``: ``accepted`` is False for an ascent direction or no
      sufficient decrease (the caller reports STALLED), True for a non-finite slope, so that a NaN
      direction surfaces as NON_FINITE rather than as a stall.
    """
    slack = SLACK_ULPS * jnp.finfo(value.dtype).eps * (1.0 + jnp.abs(value))

    def trial(k: ArrayLike) -> tuple[jax.Array, jax.Array, Any]:
        t = jnp.asarray(STEP_SHRINK, value.dtype) ** k
        return (t, *value_at(t))

    def sufficient(trial_value: jax.Array, t: jax.Array) -> jax.Array:
        return trial_value <= value + ARMIJO_C1 * t * slope + slack

    def keep_backtracking(carry: tuple[int | jax.Array, jax.Array, jax.Array, Any]) -> jax.Array:
        k, t, trial_value, _ = carry
        return (k < max_backtracks) & ~sufficient(trial_value, t) & jnp.isfinite(slope)

    def backtrack(carry: tuple[int | jax.Array, jax.Array, jax.Array, Any]) -> tuple[int | jax.Array, jax.Array,
                                                                                     jax.Array, Any]:
        k = carry[0] + 1
        return (k, *trial(k))

    first: tuple[int | jax.Array, jax.Array, jax.Array, Any] = (0, *trial(0))
    _, t, new_value, aux = jax.lax.while_loop(keep_backtracking, backtrack, first)
    accepted = (sufficient(new_value, t) & (slope < 0)) | ~jnp.isfinite(slope)
    return t, new_value, aux, accepted


def start(entity: Entity, theta: jax.Array, limits: Limits, coords: Any = (), memory: Any = ()) -> Iterate:
    """The iterate at ``theta`` (iteration 0), with its status."""
    margin = entity.margin(theta)
    terms = entity.row_terms(margin)
    A_theta = entity.penalty.matvec(theta)
    value = terms.value + entity.penalty.value_from(theta, A_theta)
    grad = entity.gradient_from(terms.residual, A_theta)
    return Iterate(theta, margin, value, grad, terms.curvature, jnp.int32(0), status_after(value, grad, 0, limits),
                   coords, memory)


def advance(entity: Entity, direction: Direction, it: Iterate, limits: Limits, max_backtracks: int) -> Iterate:
    """One iteration: the method's step, the line search along it, the new iterate and its status."""
    step = direction(it)
    slope = it.grad @ step.p
    # The penalty along the line by linearity, A (theta + t p) = A theta + t A p: the trials (a while loop) see
    # two (D,) vectors, not the (D, D) penalty.
    A_theta, A_p = entity.penalty.matvec(it.theta), entity.penalty.matvec(step.p)

    # Each trial evaluates the rows' terms at its margins once (value, residual and curvature from the same
    # exponentials): the accepted trial's give the new gradient and the next direction's curvature.
    def value_at(t: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        terms = entity.row_terms(it.margin + t * step.Xp)
        value = terms.value + entity.penalty.value_from(it.theta + t * step.p, A_theta + t * A_p)
        return value, (terms.residual, terms.curvature)

    t, value, (residual, curvature), accepted = backtracking_line_search(value_at, it.value, slope, max_backtracks)
    theta = jnp.where(accepted, it.theta + t * step.p, it.theta)
    margin = jnp.where(accepted, it.margin + t * step.Xp, it.margin)
    value = jnp.where(accepted, value, it.value)
    grad = jnp.where(accepted, entity.gradient_from(residual, A_theta + t * A_p), it.grad)
    curvature = jnp.where(accepted, curvature, it.curvature)
    coords = jax.tree.map(lambda c, d: jnp.where(accepted, c + t * d, c), it.coords, step.dcoords)
    iteration = it.iteration + 1
    status = status_after(value, grad, iteration, limits, stalled=~accepted)
    return Iterate(theta, margin, value, grad, curvature, iteration, status, coords, step.memory)


def iterate(entity: Entity, direction: Direction, first: Iterate, limits: Limits, max_backtracks: int) -> Iterate:
    """:func:`advance` from ``first`` until the status is no longer RUNNING."""
    return jax.lax.while_loop(lambda it: it.status == RUNNING,
                              lambda it: advance(entity, direction, it, limits, max_backtracks), first)


def prior_in_form(prior_precision: jax.Array | np.ndarray, hessian: str) -> jax.Array | np.ndarray | None:
    """The prior precision expressed in the output form of ``hessian`` (kept by failed lanes)."""
    if hessian == "none":
        return None
    if hessian == "full":
        return prior_precision if prior_precision.ndim == 2 else jnp.diag(prior_precision)
    if hessian == "diagonal":
        return jnp.diag(prior_precision) if prior_precision.ndim == 2 else prior_precision
    return jnp.ones(prior_precision.shape[0], prior_precision.dtype)


def finish(theta0: jax.Array, final: Iterate, precision: jax.Array | None, prior_precision: jax.Array | np.ndarray,
           *, hessian: str) -> SolveResult:
    """One entity's :class:`SolveResult` from its final iterate: a posterior precision that is not finite
    fails the lane too, and a failed (NON_FINITE) lane returns ``theta0`` and its prior precision."""
    status = final.status
    if precision is not None:
        status = jnp.where(jnp.all(jnp.isfinite(precision)), status, Status.NON_FINITE).astype(jnp.int32)
    failed = status == Status.NON_FINITE
    if precision is not None:
        prior = prior_in_form(prior_precision, hessian)
        assert prior is not None, "a precision is returned only for hessian != 'none'"
        precision = jnp.where(failed, prior, precision)
    return SolveResult(theta=jnp.where(failed, theta0, final.theta), precision=precision, loss=final.value,
                       grad_norm=jnp.max(jnp.abs(final.grad), initial=0.0), iterations=final.iteration, status=status)


def over_lanes(solve_one: Callable[..., Any], lane_arrays: tuple, shared: tuple, lane_batch: int | None) -> Any:
    """``solve_one(*lane, *shared)`` for every lane (leading axis ``E``) of ``lane_arrays``, stacked.

    ``lane_batch`` ``None``: one ``vmap`` over the ``E`` lanes. An int ``b``: ``lax.map`` over batches of
    ``b`` lanes, each batch a ``vmap``; each batch's loop stops at its own slowest lane. When ``b`` does not
    divide ``E``, the last lane is repeated up to a multiple of ``b`` (a copy converges with the lane it
    copies, so it never lengthens a loop) and the copies' results are dropped: every batch is ``b`` wide,
    and one loop body is compiled. Every lane runs the same operations either way; the results agree to
    rounding (XLA may order a reduction differently for another batch width, and drops the batch axis of a
    one-lane batch).
    """
    in_axes = (0,) * len(lane_arrays) + (None,) * len(shared)
    if lane_batch is None:
        return jax.vmap(solve_one, in_axes=in_axes)(*lane_arrays, *shared)
    E = lane_arrays[0].shape[0]
    batches = -(-E // lane_batch)
    pad = batches * lane_batch - E
    if pad:
        lane_arrays = tuple(jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]) for a in lane_arrays)
    stacked = tuple(a.reshape((batches, lane_batch) + a.shape[1:]) for a in lane_arrays)
    out = jax.lax.map(lambda batch: jax.vmap(solve_one, in_axes=in_axes)(*batch, *shared), stacked)
    return jax.tree.map(lambda x: x.reshape((batches * lane_batch,) + x.shape[2:])[:E], out)
