"""Newton-CG directions: truncated Newton, preconditioned conjugate gradients on Hessian-vector products.

A direction of the shared iteration (:mod:`lljax.solve.iteration`) for any
:class:`~lljax.solve.objective.Entity` whose rows give ``matvec(v)`` (``X v``) and ``rmatvec(r, square)``
(``X^T r``, ``(X o X)^T r``): nothing of size ``D x D`` is formed, so it serves designs with many
columns (the GAME fixed effect's sparse ``Design``, up to ~1e6 columns) and, vmapped, blocks of entities.

At an iterate with margins ``m`` and curvature ``c = w l''(m)``, the Hessian-vector product is

    H v = X^T (c o X v) + A v            (two row products and the penalty's)

and conjugate gradients with the Jacobi preconditioner ``diag H = (X o X)^T c + diag A`` solve
``H p = -g`` from ``p = 0`` until ``||H p + g|| <= eta ||g||``, at most ``max_cg_iter`` CG iterations. The
forcing term ``eta = min(1/2, sqrt(||g|| / max(1, sum w)))`` is loose far from the optimum and tight near
it (superlinear convergence; the gradient is measured against the total weight, as the fixed effect's
tolerance is). The line search, statuses and finish are the iteration's; a non-finite Hessian makes a
non-finite step, so the lane fails (NON_FINITE) rather than stalls.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from lljax.solve.iteration import Direction, Iterate, Step
from lljax.solve.objective import Entity

__all__ = ["MAX_CG_ITER", "pcg", "make_direction"]

MAX_CG_ITER = 200  # conjugate-gradient iterations per Newton step, at most

# The CG loop's carry: x, r, z, p, r.z, iterations.
_CGState = tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array, int | jax.Array]


def pcg(hvp: Callable[[jax.Array], jax.Array], b: jax.Array, inv_diag: jax.Array, max_iter: int,
        rtol: jax.Array) -> jax.Array:
    """Conjugate gradients with a Jacobi preconditioner for ``H x = b`` from ``x = 0``.

    Args:
      hvp: ``v -> H v`` ``(D,) -> (D,)``, ``H`` symmetric positive (semi-)definite.
      b: ``(D,)`` right-hand side. inv_diag: ``(D,)`` the preconditioner ``diag(H)^-1``.
      max_iter: CG iterations, at most. rtol: ``()`` stop when ``||b - H x|| <= rtol ||b||``.
    Returns:
      ``(D,)`` ``x``.
    """
    bnorm = jnp.linalg.norm(b)
    tiny = jnp.finfo(b.dtype).tiny

    def cond(s: _CGState) -> jax.Array:
        x, r, z, p, rz, k = s
        return (jnp.linalg.norm(r) > rtol * bnorm) & (k < max_iter)

    def body(s: _CGState) -> _CGState:
        x, r, z, p, rz, k = s
        hp = hvp(p)
        alpha = rz / jnp.maximum(p @ hp, tiny)
        x = x + alpha * p
        r = r - alpha * hp
        z = inv_diag * r
        rz_new = r @ z
        p = z + (rz_new / jnp.maximum(rz, tiny)) * p
        return x, r, z, p, rz_new, k + 1

    z0 = inv_diag * b
    first: _CGState = (jnp.zeros_like(b), b, z0, z0, b @ z0, 0)
    x, *_ = jax.lax.while_loop(cond, body, first)
    return x


def make_direction(entity: Entity, *, max_cg_iter: int = MAX_CG_ITER) -> Direction:
    """The Newton-CG direction of ``entity`` for :func:`lljax.solve.iteration.iterate` (module docstring)."""
    rows, penalty = entity.rows, entity.penalty
    weight_scale = jnp.maximum(1.0, jnp.sum(entity.w))

    def direction(it: Iterate) -> Step:
        c = it.curvature

        def hvp(v: jax.Array) -> jax.Array:
            return rows.rmatvec(c * rows.matvec(v)) + penalty.matvec(v)

        diag = rows.rmatvec(c, square=True) + penalty.diagonal()
        inv_diag = jnp.where(diag > 0, 1.0 / jnp.where(diag > 0, diag, 1.0), 1.0)
        eta = jnp.minimum(0.5, jnp.sqrt(jnp.linalg.norm(it.grad) / weight_scale))
        p = -pcg(hvp, it.grad, inv_diag, max_cg_iter, jnp.maximum(eta, 1e-12))
        return Step(p, rows.matvec(p))

    return direction
