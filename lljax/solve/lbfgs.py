"""Batched per-entity solve by L-BFGS (optax) with a diagonal posterior precision.

Used for wide blocks (>= ``WIDE_FEATURES`` padded features, no full precision) with more padded rows
than features; wide blocks with no more rows than features go to :mod:`lljax.solve.span` instead (see
:func:`lljax.rounds.packing.block_solver`).

:func:`solve_block_lbfgs` is a drop-in alternative to :func:`lljax.solve.newton.solve_block` for blocks
whose prior precision is diagonal (``(E, D)``) and whose posterior precision is ``"diagonal"``,
``"identity"`` or ``"none"``. It minimizes the *same* objective, built by the same pieces
(:func:`lljax.solve.newton._make_penalty`, :meth:`lljax.solve.newton._Entity.objective` and
:meth:`~lljax.solve.newton._Entity.gradient`), with ``optax.lbfgs`` (memory :data:`MEMORY_SIZE`) in a
``jax.lax.while_loop`` per entity, ``vmap``-ped over the block and jitted. Nothing of size ``D x D``
is formed: an iteration costs one objective + gradient evaluation (two ``(N, D)`` matrix-vector
products) per line-search trial and ``O(memory D)`` vector work, against ``O(N D^2 + D^3)`` for a
Newton step, which is what makes ``D`` in the hundreds or thousands affordable.

Same contract as the Newton solver:

- stopping rule ``max_j |gradient_j| <= tol`` (gradient in ``theta``); ``tol`` and the iteration
  cap are traced (no recompile when they change);
- :class:`~lljax.solve.newton.Status` codes as data: CONVERGED, MAX_ITERATIONS, NON_FINITE (the lane
  returns its prior mean and prior precision), STALLED (the line search found no step that
  decreases the objective beyond rounding; the last iterate is kept);
- padded features (id -1) stay exactly 0, padded rows (weight 0) change nothing, padded lanes
  converge at iteration 0;
- posterior precision at the solution: ``diag(X^T diag(w l'') X) + diag(A)`` computed in ``O(N D)``
  (``"diagonal"``), ones (``"identity"``) or ``None`` (``"none"``), as
  :func:`lljax.solve.newton._posterior_precision` defines them.

Iteration cap. L-BFGS takes more (much cheaper) iterations than Newton: by default the cap is
:data:`ITER_FACTOR` ``* config.max_iter`` L-BFGS iterations (500 for the model's default
``max_iter=50``); ``max_iter=`` sets it directly. ``iterations`` in the result counts L-BFGS
iterations (one direction and one line search each).

Line search (``linesearch=``). ``"backtracking"`` (default): optax's Armijo backtracking, halving
from the full quasi-Newton step, with the Newton solver's rounding slack ``16 eps (1 + |f|)``. The
objective is strictly convex whenever the penalty diagonal ``A`` is positive, so every step keeps
the L-BFGS curvature ``s^T y > 0`` without a Wolfe condition. ``"zoom"``: optax's zoom (strong
Wolfe) search; same iterates to ~tol and the same iteration counts on our problems, but under
``vmap`` its ``lax.cond`` between the bracketing and zoom phases becomes a select that evaluates
the objective and gradient of both phases at every step (measured 1.2-1.7x slower per block).

Preconditioning (``precondition=``). L-BFGS runs in scaled coordinates ``z = s * theta``; the
objective and its minimizer are unchanged, only the conditioning L-BFGS sees:

- ``"penalty"`` (default): ``s = sqrt(A)``, ``A = delta P0 + (1 - delta) l2`` the prior + L2
  diagonal. In a wide entity (``D > N``) the data Hessian ``X^T C X`` has rank at most ``N``, so
  all other directions have curvature exactly ``A``; scaled, the Hessian is identity + rank ``N``,
  which L-BFGS handles well. Best of the three in the wide regime we measured.
- ``"jacobi"``: ``s = sqrt(diag H(theta_start))``. Better when ``D <= N`` and the features'
  scales differ by orders of magnitude; in the wide regime it spreads the unit cluster (1.7x more
  iterations at D = 1024 in ``benchmarks/bench_wide.py``).
- ``"none"``: ``s = 1``.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from lljax.solve.newton import (
    _RUNNING,
    Block,
    SolverConfig,
    SolveResult,
    _Entity,
    _entity,
    _finish,
    _Limits,
    _status_after,
    _weighted,
    check_diagonal_solver,
    traced_arguments,
)

__all__ = ["solve_block_lbfgs", "LBFGS_HESSIAN_TYPES", "LINESEARCHES", "PRECONDITIONERS", "MEMORY_SIZE",
           "ITER_FACTOR"]

LBFGS_HESSIAN_TYPES = ("none", "identity", "diagonal")
LINESEARCHES = ("backtracking", "zoom")
PRECONDITIONERS = ("penalty", "jacobi", "none")
MEMORY_SIZE = 10
# Default L-BFGS iteration cap = ITER_FACTOR * config.max_iter (config.max_iter is a Newton cap).
ITER_FACTOR = 10


def _hessian_diagonal(entity: _Entity, margin: jax.Array) -> jax.Array:
    """``diag(X^T diag(w l''(m)) X) + diag(A)`` of one entity in ``O(N D)`` (diagonal penalty only)."""
    curvature = _weighted(entity.w, entity.loss.d2(margin, entity.y))
    return jnp.square(entity.X).T @ curvature + entity.penalty.A


def _scaled_objective(entity: _Entity, scale: jax.Array):
    """``z -> f(z / scale)`` with its gradient from :meth:`_Entity.gradient` (not traced autodiff).

    ``optax``'s line searches differentiate the function they are given (``jax.value_and_grad``,
    ``jax.linearize``); the custom JVP makes that evaluate the margin once and use the solver's own
    gradient (which also keeps the ``where``-masked padding rows out of the derivative). The value
    is returned in JAX's default float dtype: optax's backtracking search transposes the JVP with a
    Python ``1.0`` cotangent, which is float64 when ``jax_enable_x64`` is on, even for float32
    data (optax casts the value back to the parameters' dtype).
    """
    out = jax.dtypes.canonicalize_dtype(jnp.float64)

    @jax.custom_jvp
    def value(z):
        theta = z / scale
        return entity.objective(theta, entity.X @ theta + entity.offset).astype(out)

    @value.defjvp
    def _jvp(primals, tangents):
        (z,), (dz,) = primals, tangents
        theta = z / scale
        margin = entity.X @ theta + entity.offset
        slope = entity.gradient(theta, margin) @ (dz / scale)
        return entity.objective(theta, margin).astype(out), slope.astype(out)

    return value


def _solver(config: SolverConfig, memory_size: int, linesearch: str,
            slack) -> optax.GradientTransformationExtraArgs:
    """``optax.lbfgs`` with the chosen line search; ``slack``: the Armijo test's absolute tolerance."""
    if linesearch == "zoom":
        search = optax.scale_by_zoom_linesearch(max_linesearch_steps=config.max_backtracks,
                                                initial_guess_strategy="one")
    else:
        search = optax.scale_by_backtracking_linesearch(max_backtracking_steps=config.max_backtracks,
                                                        store_grad=True, decrease_factor=0.5,
                                                        atol=slack)
    return optax.lbfgs(memory_size=memory_size, linesearch=search)


def _scale(entity: _Entity, margin: jax.Array, precondition: str) -> jax.Array:
    """``(D,)`` coordinate scale ``s`` (L-BFGS runs on ``z = s * theta``), see :data:`PRECONDITIONERS`."""
    if precondition == "none":
        return jnp.ones_like(entity.penalty.A)
    d = entity.penalty.A if precondition == "penalty" else _hessian_diagonal(entity, margin)
    # Only a positive, finite diagonal scales (l2 = 0 with delta = 0, or an overflow, leaves 1).
    return jnp.where(jnp.isfinite(d) & (d > 0), jnp.sqrt(jnp.where(d > 0, d, 1.0)), 1.0)


class _State(NamedTuple):
    z: jax.Array          # (D,) scaled coordinates, theta = z / scale
    opt: optax.OptState
    value: jax.Array      # objective at z
    grad_z: jax.Array     # (D,) gradient in z
    iteration: jax.Array
    status: jax.Array


def _solve_one(X, y, w, offset, feature_ids, prior_mean, prior_precision, l2, delta, limits, *,
               config: SolverConfig, memory_size: int, precondition: str, linesearch: str):
    """Solve one entity. Shapes: X ``(N, D)``; y, w, offset ``(N,)``; the rest ``(D,)``."""
    entity = _entity(X, y, w, offset, feature_ids, prior_mean, prior_precision, l2, delta, config.loss)
    dtype = X.dtype
    theta0 = jnp.where(feature_ids >= 0, prior_mean, 0.0)
    margin0 = X @ theta0 + offset
    scale = _scale(entity, margin0, precondition)
    fn = _scaled_objective(entity, scale)
    z0 = theta0 * scale
    value0 = entity.objective(theta0, margin0)
    grad0 = entity.gradient(theta0, margin0)
    start = _State(z0, _solver(config, memory_size, linesearch, 0.0).init(z0), value0, grad0 / scale, jnp.int32(0),
                   _status_after(value0, grad0, 0, limits))
    eps = jnp.finfo(dtype).eps

    def step(s: _State) -> _State:
        # Rounding-level slack on f, as in the Newton line search (the state does not depend on it).
        slack = 16 * eps * (1.0 + jnp.abs(s.value))
        updates, opt = _solver(config, memory_size, linesearch, slack).update(
            s.grad_z, s.opt, s.z, value=s.value, grad=s.grad_z, value_fn=fn)
        search = optax.tree_utils.tree_get(opt, "info")
        value = optax.tree_utils.tree_get(opt, "value")
        grad_z = optax.tree_utils.tree_get(opt, "grad")
        finite = jnp.isfinite(value) & jnp.all(jnp.isfinite(grad_z))
        # Accepted: the search certified its decrease criterion (zoom's includes the approximate-Wolfe
        # test near the optimum) or f did not rise beyond rounding; and the iterate moved.
        decreased = (search.decrease_error <= 0) | (value <= s.value + slack)
        accepted = finite & decreased & jnp.any(updates != 0)
        # A non-finite direction must surface as NON_FINITE, not as a stall.
        direction_ok = jnp.all(jnp.isfinite(updates))
        z = jnp.where(accepted, s.z + updates, s.z)
        value = jnp.where(accepted, value, jnp.where(direction_ok, s.value, jnp.nan))
        grad_z = jnp.where(accepted, grad_z, s.grad_z)
        iteration = s.iteration + 1
        status = _status_after(value, grad_z * scale, iteration, limits, stalled=~accepted)
        return _State(z, opt, value, grad_z, iteration, status)

    final = jax.lax.while_loop(lambda s: s.status == _RUNNING, step, start)
    theta = final.z / scale
    precision = None
    if config.hessian == "diagonal":
        precision = _hessian_diagonal(entity, X @ theta + offset)
    elif config.hessian == "identity":
        precision = jnp.ones_like(theta0)
    grad = final.grad_z * scale
    return _finish(theta0, theta, final.value, jnp.max(jnp.abs(grad), initial=0.0), final.iteration, final.status,
                   precision, prior_precision, hessian=config.hessian)


def solve_block_lbfgs(block: Block, l2: jax.Array, delta: jax.Array, config: SolverConfig, *,
                      max_iter: int | None = None, memory_size: int = MEMORY_SIZE,
                      precondition: str = "penalty", linesearch: str = "backtracking") -> SolveResult:
    """Solve every entity of a block with L-BFGS (vmap of a per-entity ``while_loop``, jitted).

    A drop-in alternative to :func:`lljax.solve.newton.solve_block` for a diagonal prior precision and
    ``config.hessian`` in ``("none", "identity", "diagonal")``; see the module docstring.
    ``config.loss``, ``config.hessian``, ``config.max_backtracks`` (line-search steps before
    STALLED), ``memory_size`` and ``precondition`` are compile-time constants; ``config.tol`` and
    the iteration cap are traced.

    Args:
      block: a :class:`~lljax.solve.newton.Block` with ``prior_precision`` of shape ``(E, D)``.
      l2: scalar L2 weight lambda.
      delta: scalar forgetting factor in [0, 1].
      config: :class:`~lljax.solve.newton.SolverConfig`.
      max_iter: L-BFGS iteration cap; ``None``: ``ITER_FACTOR * config.max_iter``.
      memory_size: L-BFGS memory (pairs of past steps and gradient changes).
      precondition: ``"penalty"``, ``"jacobi"`` or ``"none"`` (module docstring).
      linesearch: ``"backtracking"`` or ``"zoom"`` (module docstring).
    Returns:
      :class:`~lljax.solve.newton.SolveResult` with leading axis ``E`` (``iterations``: L-BFGS iterations).
    Raises:
      ValueError: full prior precision, ``config.hessian == "full"``, or an unknown option.
    """
    if precondition not in PRECONDITIONERS:
        raise ValueError(f"field 'precondition': value {precondition!r} is not one of {list(PRECONDITIONERS)}")
    if linesearch not in LINESEARCHES:
        raise ValueError(f"field 'linesearch': value {linesearch!r} is not one of {list(LINESEARCHES)}")
    if memory_size < 1:
        raise ValueError(f"field 'memory_size': value {memory_size!r} must be >= 1")
    check_diagonal_solver(config, block.prior_precision, LBFGS_HESSIAN_TYPES, "L-BFGS")
    dtype = block.X.dtype
    cap = ITER_FACTOR * config.max_iter if max_iter is None else max_iter
    return _solve_block(block, *traced_arguments(config, dtype, l2, delta, max_iter=cap), memory_size,
                        precondition, linesearch)


@partial(jax.jit, static_argnames=("config", "memory_size", "precondition", "linesearch"))
def _solve_block(block: Block, l2, delta, limits: _Limits, config: SolverConfig, memory_size: int,
                 precondition: str, linesearch: str) -> SolveResult:
    solve = partial(_solve_one, config=config, memory_size=memory_size, precondition=precondition,
                    linesearch=linesearch)
    return jax.vmap(solve, in_axes=(0, 0, 0, 0, 0, 0, 0, None, None, None))(
        block.X, block.y, block.w, block.offset, block.feature_ids, block.prior_mean, block.prior_precision, l2, delta,
        limits,
    )
