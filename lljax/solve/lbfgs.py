"""Method ``"lbfgs"``: L-BFGS directions (optax's two-loop recursion) on dense blocks, diagonal precision.

For wide entities with more padded rows than features (where an ``N x N`` system would cost more than
a ``D x D`` one) and no full precision: nothing of size ``D x D`` is formed. The direction is optax's
``scale_by_lbfgs`` (memory :data:`MEMORY_SIZE`) applied to the gradient; its history is the method's
memory in the shared iteration of :mod:`lljax.solve.iteration`, which does the line search (Armijo
backtracking from the full step, as every method), the statuses and the finish. An iteration costs one
objective + gradient evaluation (two ``(N, D)`` matrix-vector products) per line-search trial and
``O(memory D)`` vector work.

Iteration cap. L-BFGS takes more (much cheaper) iterations than Newton: by default the cap is
:data:`ITER_FACTOR` ``* config.max_iter`` L-BFGS iterations (500 for the model's default
``max_iter=50``); ``iterations`` in the result counts L-BFGS iterations.

Preconditioning (option ``precondition``). L-BFGS runs in scaled coordinates ``z = s * theta``; the
objective and its minimizer are unchanged, only the conditioning L-BFGS sees:

- ``"penalty"`` (default): ``s = sqrt(A)``, ``A = delta P0 + (1 - delta) l2`` the prior + L2
  diagonal. In a wide entity (``D > N``) the data Hessian ``X^T C X`` has rank at most ``N``, so
  all other directions have curvature exactly ``A``; scaled, the Hessian is identity + rank ``N``.
- ``"jacobi"``: ``s = sqrt(diag H(theta_start))``: better when ``D <= N`` and the features' scales
  differ by orders of magnitude.
- ``"none"``: ``s = 1``.

The posterior precision is ``diag(X^T C X) + A`` (``"diagonal"``), ones (``"identity"``) or ``None``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lljax.solve.base import Limits, SolverConfig, SolveResult, lane_batch_option
from lljax.solve.blocks import Block
from lljax.solve.iteration import Direction, Iterate, Step, finish, iterate, over_lanes, start
from lljax.solve.newton import WORKSPACE_FACTOR
from lljax.solve.objective import Entity, dense_entity

__all__ = ["HESSIANS", "PRECONDITIONERS", "MEMORY_SIZE", "ITER_FACTOR", "make_direction", "solve_jax", "check",
           "bytes_per_lane", "iteration_cap"]

HESSIANS = ("none", "identity", "diagonal")
PRECONDITIONERS = ("penalty", "jacobi", "none")
MEMORY_SIZE = 10
# Default L-BFGS iteration cap = ITER_FACTOR * config.max_iter (config.max_iter is a Newton cap).
ITER_FACTOR = 10


def _scale(entity: Entity, margin: jax.Array, precondition: str) -> jax.Array:
    """``(D,)`` coordinate scale ``s`` (L-BFGS runs on ``z = s * theta``), see :data:`PRECONDITIONERS`."""
    if precondition == "none":
        return jnp.ones_like(entity.penalty.diagonal())
    d = entity.penalty.diagonal() if precondition == "penalty" else entity.hessian_diagonal(margin)
    # Only a positive, finite diagonal scales (l2 = 0 with delta = 0, or an overflow, leaves 1).
    return jnp.where(jnp.isfinite(d) & (d > 0), jnp.sqrt(jnp.where(d > 0, d, 1.0)), 1.0)


def _direction(entity: Entity, scale: jax.Array, history: optax.GradientTransformation) -> Direction:
    """The L-BFGS step in ``theta`` (``-H_k g`` in ``z``, mapped back); the memory is optax's state."""

    def direction(it: Iterate) -> Step:
        z_step, memory = history.update(it.grad / scale, it.memory, it.theta * scale)
        p = (-z_step / scale).astype(it.theta.dtype)
        return Step(p, entity.rows.matvec(p), (), memory)

    return direction


def make_direction(entity: Entity, theta: jax.Array, margin: jax.Array, *, precondition: str = "penalty",
                   memory_size: int = MEMORY_SIZE) -> tuple[Direction, Any]:
    """The L-BFGS direction of ``entity`` for :func:`lljax.solve.iteration.iterate`, started at ``theta``
    ``(D,)`` with margins ``margin`` ``(N,)``: returns ``(direction, memory)``, ``memory`` the first
    iterate's (empty) history, to pass to :func:`lljax.solve.iteration.start`. ``precondition`` is one of
    :data:`PRECONDITIONERS` (the scale is fixed at ``theta``)."""
    scale = _scale(entity, margin, precondition)
    history = optax.scale_by_lbfgs(memory_size=memory_size)
    return _direction(entity, scale, history), history.init(theta * scale)


def _solve_one(X: jax.Array, y: jax.Array, w: jax.Array, offset: jax.Array, feature_ids: jax.Array,
               prior_mean: jax.Array, prior_precision: jax.Array, l2: jax.Array, delta: jax.Array, limits: Limits, *,
               config: SolverConfig, memory_size: int, precondition: str) -> SolveResult:
    """Solve one entity. Shapes: X ``(N, D)``; y, w, offset ``(N,)``; the rest ``(D,)``."""
    entity = dense_entity(X, y, w, offset, feature_ids, prior_mean, prior_precision, l2, delta, config.loss,
                          config.penalize_intercept)
    theta0 = jnp.where(feature_ids >= 0, prior_mean, 0.0)
    direction, memory = make_direction(entity, theta0, entity.margin(theta0), precondition=precondition,
                                       memory_size=memory_size)
    final = iterate(entity, direction, start(entity, theta0, limits, memory=memory), limits, config.max_backtracks)
    precision = None
    if config.hessian == "diagonal":
        precision = entity.hessian_diagonal_from(final.curvature)
    elif config.hessian == "identity":
        precision = jnp.ones_like(theta0)
    return finish(theta0, final, precision, prior_precision, hessian=config.hessian)


def solve_jax(block: Block, l2: jax.Array, delta: jax.Array, limits: Limits, *, config: SolverConfig,
              memory_size: int, precondition: str, lane_batch: int | None = None) -> SolveResult:
    """Every lane of ``block`` by the shared iteration with L-BFGS directions: one ``vmap``, or batches of
    ``lane_batch`` lanes (:func:`lljax.solve.iteration.over_lanes`)."""
    solve = partial(_solve_one, config=config, memory_size=memory_size, precondition=precondition)
    # The block's fields are tracers here, inside the registry's jit (jnp.asarray only tells the type checker).
    lane_arrays = tuple(jnp.asarray(a) for a in block)
    return over_lanes(solve, lane_arrays, (l2, delta, limits), lane_batch)


def check(block: Block, config: SolverConfig, options: dict) -> dict:
    """Validate the settings and options (``ValueError`` naming the field); returns the options with their
    defaults (``memory_size`` :data:`MEMORY_SIZE`, ``precondition`` ``"penalty"``, ``lane_batch``:
    :func:`lljax.solve.base.lane_batch_option`)."""
    if config.hessian not in HESSIANS:
        raise ValueError(f"field 'hessian': value {config.hessian!r} is not supported by the lbfgs method "
                         f"(expected one of {list(HESSIANS)})")
    if block.prior_precision.ndim != 2:
        raise ValueError(f"field 'prior_precision': shape {tuple(block.prior_precision.shape)} is not diagonal "
                         f"(E, D); the lbfgs method needs a diagonal prior precision")
    unknown = set(options) - {"memory_size", "precondition", "lane_batch"}
    if unknown:
        raise TypeError(f"the lbfgs method takes the options 'memory_size', 'precondition' and 'lane_batch', "
                        f"got {sorted(unknown)}")
    memory_size = options.get("memory_size", MEMORY_SIZE)
    precondition = options.get("precondition", "penalty")
    if precondition not in PRECONDITIONERS:
        raise ValueError(f"field 'precondition': value {precondition!r} is not one of {list(PRECONDITIONERS)}")
    if not isinstance(memory_size, int) or memory_size < 1:
        raise ValueError(f"field 'memory_size': value {memory_size!r} must be an int >= 1")
    E, N, D = block.X.shape
    lane_bytes = bytes_per_lane(N, D, np.dtype(block.X.dtype).itemsize, False, native=False, memory_size=memory_size)
    return {"memory_size": memory_size, "precondition": precondition,
            "lane_batch": lane_batch_option(options, E, lane_bytes)}


def iteration_cap(config: SolverConfig) -> int:
    """The default cap: :data:`ITER_FACTOR` L-BFGS iterations per Newton iteration of ``config.max_iter``."""
    return ITER_FACTOR * config.max_iter


def bytes_per_lane(rows: int, features: int, itemsize: int, full_precision: bool, native: bool,
                   memory_size: int = MEMORY_SIZE) -> int:
    """Bytes one lane needs: no ``D x D`` matrix; ``X``, ``X^2`` and the L-BFGS history (``memory_size``
    pairs)."""
    floats = 2 * rows * features + 3 * rows + (2 * memory_size + 12) * features
    return WORKSPACE_FACTOR * (floats * itemsize + 8 * features)
