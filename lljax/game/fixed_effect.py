"""The fixed effect: one GLM (linear, logistic, Poisson) over all rows, solved by the shared iteration.

Objective, for coefficients ``theta (d,)`` of a design ``X (n, d)`` (the intercept, when there is one,
is column 0), margins ``m = X theta + offset``::

    f(theta) = sum_i w_i l(m_i, y_i) + 1/2 sum_j a_j theta_j^2 + 1/2 (theta - mu)^T B (theta - mu)

with ``l`` a :class:`lljax.solve.losses.RowLoss`, ``a = l2 * mask`` the plain L2 weights (``mask_0 = 0``
leaves the intercept unpenalized) and ``(mu, B)`` an optional Gaussian prior (the previous posterior
in incremental mode: ``B = delta P0``, ``a = (1 - delta) l2 mask``). ``B`` is a diagonal ``(d,)`` or a
full ``(d, d)`` matrix.

It is one :class:`lljax.solve.objective.Entity`: the rows are the :class:`Design` (dense, or sparse COO
with the rows' pairs of nonzeros for the Hessian; the rows-operator interface ``matvec``,
``rmatvec(r, square)``, ``weighted_gram(c)``), the penalty a :class:`lljax.solve.objective.Penalty`
``1/2 theta^T A theta - b^T theta + c`` with ``A = diag(a) + B``, ``b = B mu``, ``c = 1/2 mu^T B mu``
(:class:`Prior` builds it). It is solved by :func:`lljax.solve.iteration.iterate`, the iteration of every
per-entity method (start, direction, Armijo backtracking, statuses, finish), with the stopping rule
max-abs gradient <= ``tol * max(1, sum w)``; the solvers are its directions:

- ``"newton"``: :func:`lljax.solve.newton.make_direction`, Cholesky of the ``(d, d)`` Hessian; for modest
  ``d``. The Hessian ``X^T diag(c) X`` comes from a dense ``X`` or, for a sparse design, from each row's
  pairs of nonzeros (``sum_i k_i^2`` entries). Its ridge is ``eps max diag H`` (``sqrt(eps)`` only where
  that Cholesky fails): the per-entity default would damp the step along the flat directions of an
  unpenalized intercept beside one-hot columns, and in float32 stop the gradient test far from the optimum.
- ``"newton_cg"``: :func:`lljax.solve.newton_cg.make_direction`, truncated Newton, conjugate gradients on
  Hessian-vector products (two sparse mat-vecs each); for large sparse ``d`` (up to ~1e6 columns).
- ``"lbfgs"``: :func:`lljax.solve.lbfgs.make_direction` (optax's two-loop recursion, memory
  :data:`lljax.solve.lbfgs.MEMORY_SIZE`, Jacobi-scaled coordinates); ``max_iter`` counts L-BFGS iterations.

The iteration carries the margins: a step costs one product ``X p``, one ``X^T r`` (and, Newton, one
Hessian); the line search's trials are ``O(n)`` vector operations. The posterior precision
``H(theta*) = X^T diag(w l'') X + A`` is returned as its diagonal or as the full matrix when asked.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lljax.solve import lbfgs, newton, newton_cg
from lljax.solve.base import Limits, SolveResult
from lljax.solve.iteration import finish, iterate, start
from lljax.solve.losses import get_loss
from lljax.solve.objective import Entity, Penalty

__all__ = ["Design", "Prior", "l2_weights", "make_design", "fixed_effect_entity", "solve_glm", "glm_objective",
           "choose_method", "SOLVERS"]

SOLVERS = ("auto", "newton", "newton_cg", "lbfgs")
DENSE_ELEMENTS = 1 << 24  # a design with n * d up to this is kept dense on the device (128 MiB in float64)
PAIR_ENTRIES = 1 << 25  # a sparse design keeps its rows' pairs (for the Hessian) up to this many
NEWTON_MAX_D = 4096  # "auto" picks Newton up to this many columns (when the Hessian can be built)
MAX_BACKTRACKS = 40  # line-search halvings before STALLED
LBFGS_PRECONDITION = "jacobi"  # L-BFGS coordinates scaled by sqrt(diag H(theta0)): the design is tall (n >> d)


@jax.tree_util.register_pytree_node_class
class Design:
    """An ``(n, d)`` design matrix on the device: dense, or sparse (COO) with optional row pairs.

    A rows operator of :class:`lljax.solve.objective.Entity` (the interface of
    :class:`~lljax.solve.objective.DenseRows`): ``matvec``, ``rmatvec(r, square=False)``,
    ``weighted_gram(c)`` (dense, or with the row pairs: :attr:`has_gram`).

    Leaves: ``dense (n, d)`` or ``rows, cols (nnz,)`` int32 and ``vals (nnz,)``; ``pair_rows (P,)``,
    ``pair_index (P,)`` (flat ``a * d + b``) and ``pair_vals (P,)`` (``x_a x_b``) when the Hessian of a
    sparse design can be built. Static: ``n``, ``d``.
    """

    def __init__(self, n: int, d: int, dense: jax.Array | None = None, rows: jax.Array | None = None,
                 cols: jax.Array | None = None, vals: jax.Array | None = None, pair_rows: jax.Array | None = None,
                 pair_index: jax.Array | None = None, pair_vals: jax.Array | None = None):
        self.n, self.d = n, d
        self.dense, self.rows, self.cols, self.vals = dense, rows, cols, vals
        self.pair_rows, self.pair_index, self.pair_vals = pair_rows, pair_index, pair_vals

    def tree_flatten(self) -> tuple[tuple[jax.Array | None, ...], tuple[int, int]]:
        return ((self.dense, self.rows, self.cols, self.vals, self.pair_rows, self.pair_index, self.pair_vals),
                (self.n, self.d))

    @classmethod
    def tree_unflatten(cls, aux: tuple[int, int], children: tuple[jax.Array | None, ...]) -> Design:
        return cls(*aux, *children)

    def _coo(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(rows, cols, vals)`` of a sparse design."""
        assert self.rows is not None and self.cols is not None and self.vals is not None, "a sparse design"
        return self.rows, self.cols, self.vals

    @property
    def has_gram(self) -> bool:
        """Whether the ``(d, d)`` Hessian can be formed (dense design, or sparse with row pairs)."""
        return self.dense is not None or self.pair_rows is not None

    def matvec(self, theta: jax.Array) -> jax.Array:
        """``(n,)`` = X theta."""
        if self.dense is not None:
            return self.dense @ theta
        rows, cols, vals = self._coo()
        return jax.ops.segment_sum(vals * theta[cols], rows, self.n)

    def rmatvec(self, r: jax.Array, square: bool = False) -> jax.Array:
        """``(d,)`` = X^T r, or ``(X o X)^T r`` = diag(X^T diag(r) X) when ``square``."""
        if self.dense is not None:
            # r @ X, not X.T @ r: XLA's CPU dot transposes a (n, d) parameter for the latter (~3x slower)
            return r @ (jnp.square(self.dense) if square else self.dense)
        rows, cols, vals = self._coo()
        vals = jnp.square(vals) if square else vals
        return jax.ops.segment_sum(vals * r[rows], cols, self.d)

    def weighted_gram(self, c: jax.Array) -> jax.Array:
        """``(d, d)`` = X^T diag(c) X (from the rows' pairs when the design keeps them, else dense)."""
        if self.dense is not None:
            return (self.dense * c[:, None]).T @ self.dense
        assert self.pair_rows is not None and self.pair_vals is not None and self.pair_index is not None, \
            "weighted_gram needs has_gram"
        flat = jax.ops.segment_sum(c[self.pair_rows] * self.pair_vals, self.pair_index, self.d * self.d)
        return flat.reshape(self.d, self.d)


def make_design(indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, num_columns: int, intercept: bool,
                dtype: Any, need_gram: bool, dense: bool | None = None) -> Design:
    """The device design of CSR rows (``indptr (n+1,)``, ``indices (nnz,)``, ``values (nnz,)`` over
    ``num_columns`` columns), with an intercept column 0 in front when ``intercept``.

    Dense when ``n * d <= DENSE_ELEMENTS`` (or ``dense=True``), else COO; a sparse design also keeps its
    rows' pairs of nonzeros when ``need_gram`` and there are at most ``PAIR_ENTRIES`` of them.
    """
    n = int(indptr.shape[0]) - 1
    shift = 1 if intercept else 0
    d = int(num_columns) + shift
    lengths = np.diff(indptr)
    rows = np.repeat(np.arange(n, dtype=np.int64), lengths)
    cols = indices.astype(np.int64) + shift
    vals = values.astype(dtype, copy=False)
    if intercept:
        rows = np.concatenate([np.arange(n, dtype=np.int64), rows])
        cols = np.concatenate([np.zeros(n, np.int64), cols])
        vals = np.concatenate([np.ones(n, dtype), vals])
    if dense is None:
        dense = n * d <= DENSE_ELEMENTS
    if dense:
        # (measured on MovieLens' 45 columns, 7 nonzeros a row: dense Newton 0.21 s, COO with pairs 0.25 s,
        # dense mat-vecs with the pairs' Hessian 0.31 s)
        X = np.zeros((n, d), dtype)
        np.add.at(X, (rows, cols), vals)
        return Design(n, d, dense=jnp.asarray(X))
    # merge duplicates (row, col) and sort by row
    key = rows * d + cols
    uniq, inverse = np.unique(key, return_inverse=True)
    merged = np.bincount(inverse.reshape(-1), weights=vals, minlength=len(uniq)).astype(dtype)
    rows, cols = uniq // d, uniq % d
    design = dict(rows=jnp.asarray(rows.astype(np.int32)), cols=jnp.asarray(cols.astype(np.int32)),
                  vals=jnp.asarray(merged))
    counts = np.bincount(rows, minlength=n)
    total_pairs = int(np.sum(counts.astype(np.int64) ** 2))
    if need_gram and total_pairs <= PAIR_ENTRIES and d * d < 2**31:
        starts = np.zeros(n + 1, np.int64)
        np.cumsum(counts, out=starts[1:])
        # for each row, every (a, b) pair of its entries
        pair_row = np.repeat(np.arange(n), counts**2)
        k = counts[pair_row]
        local = np.arange(total_pairs) - np.repeat(np.cumsum(counts**2) - counts**2, counts**2)
        a = starts[pair_row] + local // np.maximum(k, 1)
        b = starts[pair_row] + local % np.maximum(k, 1)
        design.update(pair_rows=jnp.asarray(pair_row.astype(np.int32)),
                      pair_index=jnp.asarray((cols[a] * d + cols[b]).astype(np.int32)),
                      pair_vals=jnp.asarray(merged[a] * merged[b]))
    return Design(n, d, **design)


def l2_weights(d: int, l2: float, penalize_intercept: bool, intercept: bool, dtype: Any) -> np.ndarray:
    """``(d,)`` plain L2 weights ``a``: ``l2``, and 0 on the intercept (column 0) unless ``penalize_intercept``."""
    a = np.full(d, l2, dtype)
    if intercept and not penalize_intercept:
        a[0] = 0.0
    return a


class Prior:
    """The fixed effect's penalty ``1/2 sum_j a_j theta_j^2 + 1/2 (theta - mu)^T B (theta - mu)`` as a
    :class:`lljax.solve.objective.Penalty` ``(A, b, c)``: ``A = diag(a) + B``, ``b = B mu``,
    ``c = 1/2 mu^T B mu`` (host arrays of the given dtype)."""

    @staticmethod
    def l2(d: int, l2: float, penalize_intercept: bool, intercept: bool, dtype: Any) -> Penalty:
        """Plain L2 ``1/2 l2 ||theta||^2``, without the intercept (column 0) unless ``penalize_intercept``."""
        return Prior.gaussian(l2_weights(d, l2, penalize_intercept, intercept, dtype))

    @staticmethod
    def gaussian(l2_diag: np.ndarray, mean: np.ndarray | None = None, precision: np.ndarray | None = None) -> Penalty:
        """L2 weights ``a = l2_diag (d,)`` plus the Gaussian prior ``N(mean, precision^-1)``: ``B = precision``,
        a diagonal ``(d,)`` or full ``(d, d)`` matrix (``None``: no prior)."""
        a = np.asarray(l2_diag)
        if precision is None:
            return Penalty(A=a, b=np.zeros_like(a), c=np.zeros((), a.dtype))
        B = np.asarray(precision, a.dtype)
        mu = np.asarray(mean, a.dtype)
        if B.ndim == 2:
            A, b = B + np.diag(a), B @ mu
        else:
            A, b = a + B, B * mu
        return Penalty(A=A, b=b, c=np.asarray(0.5 * mu @ b, a.dtype))


def fixed_effect_entity(X: Design, y: jax.Array, w: jax.Array, offset: jax.Array, prior: Penalty,
                        loss: str) -> Entity:
    """The objective (module docstring) as one :class:`lljax.solve.objective.Entity`."""
    return Entity(X, y, w, offset, prior, get_loss(loss))


def glm_objective(X: Design, y: jax.Array, w: jax.Array, offset: jax.Array, prior: Penalty, theta: jax.Array,
                  loss: str) -> jax.Array:
    """The objective ``f(theta)`` (module docstring); a scalar."""
    entity = fixed_effect_entity(X, y, w, offset, prior, loss)
    return entity.objective(theta, entity.margin(theta))


@functools.partial(jax.jit, static_argnames=("loss", "method", "precision", "cg_max_iter"))
def solve_glm(X: Design, y: jax.Array, w: jax.Array, offset: jax.Array, prior: Penalty, theta0: jax.Array,
              tol: jax.Array, *, loss: str, method: str, max_iter: jax.Array, precision: str = "none",
              cg_max_iter: int = newton_cg.MAX_CG_ITER) -> SolveResult:
    """Minimize the objective (module docstring) from ``theta0 (d,)`` by the shared iteration.

    Args:
      X: the :class:`Design` ``(n, d)``.
      y: ``(n,)`` labels in the loss's encoding (logistic: +-1).
      w: ``(n,)`` weights. offset: ``(n,)`` offsets.
      prior: the :class:`lljax.solve.objective.Penalty` (:class:`Prior`).
      theta0: ``(d,)`` start.
      tol: stop when max-abs gradient ``<= tol * max(1, sum w)`` (traced).
      loss: ``"linear"``, ``"logistic"`` or ``"poisson"``.
      method: ``"newton"``, ``"newton_cg"`` or ``"lbfgs"``: the direction.
      max_iter: iteration cap (traced).
      precision: ``"none"``, ``"identity"``, ``"diagonal"`` or ``"full"``: the posterior precision returned.
      cg_max_iter: conjugate-gradient iterations per Newton-CG step, at most.
    Returns:
      A :class:`lljax.solve.base.SolveResult` of the one entity (scalars, ``theta (d,)``); statuses, never
      exceptions (a NON_FINITE solve returns ``theta0`` and ``A`` in the precision's form).
    """
    entity = fixed_effect_entity(X, y, w, offset, prior, loss)
    limits = Limits(tol * jnp.maximum(1.0, jnp.sum(w)), jnp.asarray(max_iter, jnp.int32))
    memory = ()
    if method == "newton":
        direction = newton.make_direction(entity, ridge=float(jnp.finfo(theta0.dtype).eps))
    elif method == "newton_cg":
        direction = newton_cg.make_direction(entity, max_cg_iter=cg_max_iter)
    elif method == "lbfgs":
        direction, memory = lbfgs.make_direction(entity, theta0, entity.margin(theta0),
                                                 precondition=LBFGS_PRECONDITION)
    else:
        raise ValueError(f"field 'method': value {method!r} is not one of {list(SOLVERS[1:])}")
    final = iterate(entity, direction, start(entity, theta0, limits, memory=memory), limits, MAX_BACKTRACKS)
    if precision == "none":
        prec = None
    elif precision == "identity":
        prec = jnp.ones_like(final.theta)
    elif precision == "diagonal":
        prec = entity.hessian_diagonal(final.margin)
    else:
        prec = entity.hessian(final.margin)
    return finish(theta0, final, prec, prior.A, hessian=precision)


def choose_method(method: str, design: Design, precision: str) -> str:
    """``"auto"``: Newton when the Hessian can be built and ``d <= NEWTON_MAX_D``, else Newton-CG."""
    if method != "auto":
        return method
    return "newton" if design.has_gram and design.d <= NEWTON_MAX_D else "newton_cg"
