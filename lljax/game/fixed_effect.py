"""The fixed effect: one GLM (linear, logistic, Poisson) over all rows, solved in JAX.

Objective, for coefficients ``theta (d,)`` of a design ``X (n, d)`` (the intercept, when there is one,
is column 0), margins ``m = X theta + offset``::

    f(theta) = sum_i w_i l(m_i, y_i) + 1/2 sum_j a_j theta_j^2 + 1/2 (theta - mu)^T B (theta - mu)

with ``l`` a :class:`lljax.solve.losses.RowLoss`, ``a = l2 * mask`` the plain L2 weights (``mask_0 = 0``
leaves the intercept unpenalized) and ``(mu, B)`` an optional Gaussian prior (the previous posterior
in incremental mode: ``B = delta P0``, ``a = (1 - delta) l2 mask``). ``B`` is a diagonal ``(d,)`` or a
full ``(d, d)`` matrix.

Solvers (all jitted, all with the same stopping rule: max-abs gradient <= ``tol * max(1, sum w)``):

- ``"newton"``: damped Newton, Cholesky of the ``(d, d)`` Hessian, backtracking line search;
  for modest ``d``. The Hessian ``X^T diag(c) X`` comes from a dense ``X`` or, for a sparse design,
  from each row's pairs of nonzeros (``sum_i k_i^2`` entries).
- ``"newton_cg"``: truncated Newton, conjugate gradients on Hessian-vector products (two sparse
  mat-vecs each); for large sparse ``d`` (up to ~1e6 columns).
- ``"lbfgs"``: ``optax.lbfgs`` with its zoom line search.

The posterior precision ``H(theta*) = X^T diag(w l'') X + diag(a) + B`` is returned as its diagonal or
as the full matrix when asked.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lljax.solve.base import Status
from lljax.solve.losses import get_loss

__all__ = ["Design", "Prior", "GlmResult", "make_design", "solve_glm", "glm_objective", "SOLVERS"]

SOLVERS = ("auto", "newton", "newton_cg", "lbfgs")
DENSE_ELEMENTS = 1 << 24  # a design with n * d up to this is kept dense on the device (128 MiB in float64)
PAIR_ENTRIES = 1 << 25  # a sparse design keeps its rows' pairs (for the Hessian) up to this many
NEWTON_MAX_D = 4096  # "auto" picks Newton up to this many columns (when the Hessian can be built)
_RUNNING = -1


@jax.tree_util.register_pytree_node_class
class Design:
    """An ``(n, d)`` design matrix on the device: dense, or sparse (COO) with optional row pairs.

    Leaves: ``dense (n, d)`` or ``rows, cols (nnz,)`` int32 and ``vals (nnz,)``; ``pair_rows (P,)``,
    ``pair_index (P,)`` (flat ``a * d + b``) and ``pair_vals (P,)`` (``x_a x_b``) when the Hessian of a
    sparse design can be built. Static: ``n``, ``d``.
    """

    def __init__(self, n: int, d: int, dense=None, rows=None, cols=None, vals=None, pair_rows=None,
                 pair_index=None, pair_vals=None):
        self.n, self.d = n, d
        self.dense, self.rows, self.cols, self.vals = dense, rows, cols, vals
        self.pair_rows, self.pair_index, self.pair_vals = pair_rows, pair_index, pair_vals

    def tree_flatten(self):
        return ((self.dense, self.rows, self.cols, self.vals, self.pair_rows, self.pair_index, self.pair_vals),
                (self.n, self.d))

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*aux, *children)

    @property
    def has_gram(self) -> bool:
        """Whether the ``(d, d)`` Hessian can be formed (dense design, or sparse with row pairs)."""
        return self.dense is not None or self.pair_rows is not None

    def matvec(self, theta):
        """``(n,)`` = X theta."""
        if self.dense is not None:
            return self.dense @ theta
        return jax.ops.segment_sum(self.vals * theta[self.cols], self.rows, self.n)

    def rmatvec(self, r):
        """``(d,)`` = X^T r."""
        if self.dense is not None:
            return self.dense.T @ r
        return jax.ops.segment_sum(self.vals * r[self.rows], self.cols, self.d)

    def gram(self, c):
        """``(d, d)`` = X^T diag(c) X (from the rows' pairs when the design keeps them, else dense)."""
        if self.dense is not None:
            return (self.dense * c[:, None]).T @ self.dense
        flat = jax.ops.segment_sum(c[self.pair_rows] * self.pair_vals, self.pair_index, self.d * self.d)
        return flat.reshape(self.d, self.d)

    def gram_diag(self, c):
        """``(d,)`` = diag(X^T diag(c) X)."""
        if self.dense is not None:
            return jnp.square(self.dense).T @ c
        return jax.ops.segment_sum(c[self.rows] * jnp.square(self.vals), self.cols, self.d)


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


class Prior(NamedTuple):
    """The penalty ``1/2 sum_j l2_diag_j theta_j^2 + 1/2 (theta - mean)^T B (theta - mean)``; ``B`` is
    ``prec_diag (d,)`` plus ``prec_full (d, d)`` (``None`` for none)."""

    l2_diag: Any
    mean: Any
    prec_diag: Any
    prec_full: Any = None

    @classmethod
    def l2(cls, d: int, l2: float, penalize_intercept: bool, intercept: bool, dtype: Any) -> Prior:
        """Plain L2 ``1/2 l2 ||theta||^2``, without the intercept (column 0) unless ``penalize_intercept``."""
        a = np.full(d, l2, dtype)
        if intercept and not penalize_intercept:
            a[0] = 0.0
        return cls(a, np.zeros(d, dtype), np.zeros(d, dtype), None)

    def value(self, theta):
        r = theta - self.mean
        out = 0.5 * jnp.sum(self.l2_diag * theta**2) + 0.5 * jnp.sum(self.prec_diag * r**2)
        if self.prec_full is not None:
            out = out + 0.5 * r @ (self.prec_full @ r)
        return out

    def grad(self, theta):
        r = theta - self.mean
        g = self.l2_diag * theta + self.prec_diag * r
        if self.prec_full is not None:
            g = g + self.prec_full @ r
        return g

    def hvp(self, v):
        out = (self.l2_diag + self.prec_diag) * v
        if self.prec_full is not None:
            out = out + self.prec_full @ v
        return out

    def hess_diag(self):
        out = self.l2_diag + self.prec_diag
        if self.prec_full is not None:
            out = out + jnp.diagonal(self.prec_full)
        return out

    def hess(self):
        out = jnp.diag(self.l2_diag + self.prec_diag)
        if self.prec_full is not None:
            out = out + self.prec_full
        return out


class GlmResult(NamedTuple):
    """The outcome of one fixed-effect solve (device arrays).

    Attributes:
      theta: ``(d,)`` coefficients.
      status: :class:`Status` code (int32 scalar).
      iterations: solver iterations (int32 scalar).
      objective: the objective at ``theta``.
      grad_norm: max-abs gradient at ``theta``.
      precision: ``(d,)`` diagonal or ``(d, d)`` posterior precision, or ``None``.
    """

    theta: Any
    status: Any
    iterations: Any
    objective: Any
    grad_norm: Any
    precision: Any


def glm_objective(X: Design, y, w, offset, prior: Prior, theta, loss: str):
    """The objective ``f(theta)`` (module docstring); a scalar."""
    rl = get_loss(loss)
    m = X.matvec(theta) + offset
    return jnp.sum(w * rl.value(m, y)) + prior.value(theta)


def _line_search(f_at, fval, slope, max_halvings: int = 40):
    """Backtracking (Armijo, c = 1e-4) from step 1 on ``f_at(t)``; returns ``(step, f_at(step), ok)``."""

    def cond(state):
        t, fnew, k = state
        return (~(fnew <= fval + 1e-4 * t * slope)) & (k < max_halvings)

    def body(state):
        t, _, k = state
        t = t * 0.5
        return t, f_at(t), k + 1

    t0 = jnp.ones((), fval.dtype)
    t, fnew, _ = jax.lax.while_loop(cond, body, (t0, f_at(t0), 0))
    ok = fnew <= fval + 1e-4 * t * slope
    return t, fnew, ok


def _pcg(hvp, b, inv_diag, max_iter: int, rtol):
    """Conjugate gradients with a Jacobi preconditioner for ``H x = b`` from 0, to ``||r|| <= rtol ||b||``."""
    bnorm = jnp.linalg.norm(b)
    tiny = jnp.finfo(b.dtype).tiny

    def cond(s):
        x, r, z, p, rz, k = s
        return (jnp.linalg.norm(r) > rtol * bnorm) & (k < max_iter)

    def body(s):
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
    x, *_ = jax.lax.while_loop(cond, body, (jnp.zeros_like(b), b, z0, z0, b @ z0, 0))
    return x


@functools.partial(jax.jit, static_argnames=("loss", "method", "max_iter", "precision", "cg_max_iter"))
def solve_glm(X: Design, y, w, offset, prior: Prior, theta0, tol, *, loss: str, method: str, max_iter: int,
              precision: str = "none", cg_max_iter: int = 200) -> GlmResult:
    """Minimize the objective (module docstring) from ``theta0 (d,)``.

    Args:
      X: the :class:`Design` ``(n, d)``.
      y: ``(n,)`` labels in the loss's encoding (logistic: +-1).
      w: ``(n,)`` weights. offset: ``(n,)`` offsets.
      prior: the :class:`Prior` penalty.
      theta0: ``(d,)`` start.
      tol: stop when max-abs gradient ``<= tol * max(1, sum w)``.
      loss: ``"linear"``, ``"logistic"`` or ``"poisson"``.
      method: ``"newton"``, ``"newton_cg"`` or ``"lbfgs"``.
      max_iter: iteration cap.
      precision: ``"none"``, ``"identity"``, ``"diagonal"`` or ``"full"``: the posterior precision returned.
      cg_max_iter: conjugate-gradient iterations per Newton-CG step, at most.
    Returns:
      :class:`GlmResult`; statuses, never exceptions.

    Newton and Newton-CG carry the margins ``m = X theta + offset``: a step costs one product ``X d``, one
    ``X^T r`` and (Newton) one Hessian; the line search's trials are ``O(n)`` vector operations.
    """
    rl = get_loss(loss)
    gtol = tol * jnp.maximum(1.0, jnp.sum(w))

    def data_value(m):
        return jnp.sum(w * rl.value(m, y))

    def grad_at(theta, m):
        return X.rmatvec(w * rl.d1(m, y)) + prior.grad(theta)

    if method == "lbfgs":
        def f(theta):
            return data_value(X.matvec(theta) + offset) + prior.value(theta)

        theta, fval, g, it, status = _lbfgs(f, theta0, gtol, max_iter)
        m = X.matvec(theta) + offset
    else:
        def direction(theta, m, g):
            c = w * rl.d2(m, y)
            if method == "newton":
                H = X.gram(c) + prior.hess()
                L = jnp.linalg.cholesky(H)
                return -jax.scipy.linalg.cho_solve((L, True), g)

            def hvp(v):
                return X.rmatvec(c * X.matvec(v)) + prior.hvp(v)

            diag = X.gram_diag(c) + prior.hess_diag()
            inv_diag = jnp.where(diag > 0, 1.0 / jnp.where(diag > 0, diag, 1.0), 1.0)
            gnorm = jnp.linalg.norm(g)
            rtol = jnp.minimum(0.5, jnp.sqrt(gnorm / jnp.maximum(1.0, jnp.sum(w))))
            return -_pcg(hvp, g, inv_diag, cg_max_iter, jnp.maximum(rtol, 1e-12))

        def cond(s):
            return s[5] == _RUNNING

        def body(s):
            theta, m, fval, g, it, status = s
            d = direction(theta, m, g)
            finite_d = jnp.all(jnp.isfinite(d))
            d = jnp.where(finite_d, d, -g)
            xd = X.matvec(d)

            def f_at(t):
                return data_value(m + t * xd) + prior.value(theta + t * d)

            t, fnew, ok = _line_search(f_at, fval, g @ d)
            new = jnp.where(ok, theta + t * d, theta)
            mnew = jnp.where(ok, m + t * xd, m)
            fnew = jnp.where(ok, fnew, fval)
            gnew = jnp.where(ok, grad_at(new, mnew), g)
            gmax = jnp.max(jnp.abs(gnew))
            it = it + 1
            status = jnp.where(~jnp.isfinite(fnew) | ~jnp.all(jnp.isfinite(gnew)), Status.NON_FINITE,
                               jnp.where(gmax <= gtol, Status.CONVERGED,
                                         jnp.where(~ok, Status.STALLED,
                                                   jnp.where(it >= max_iter, Status.MAX_ITERATIONS, _RUNNING))))
            return new, mnew, fnew, gnew, it, status.astype(jnp.int32)

        m0 = X.matvec(theta0) + offset
        f0, g0 = data_value(m0) + prior.value(theta0), grad_at(theta0, m0)
        status0 = jnp.where(jnp.max(jnp.abs(g0)) <= gtol, Status.CONVERGED,
                            jnp.where(max_iter == 0, Status.MAX_ITERATIONS, _RUNNING)).astype(jnp.int32)
        theta, m, fval, g, it, status = jax.lax.while_loop(cond, body,
                                                           (theta0, m0, f0, g0, jnp.int32(0), status0))

    if precision == "none":
        prec = None
    elif precision == "identity":
        prec = jnp.ones_like(theta)
    elif precision == "diagonal":
        prec = X.gram_diag(w * rl.d2(m, y)) + prior.hess_diag()
    else:
        prec = X.gram(w * rl.d2(m, y)) + prior.hess()
    return GlmResult(theta, status, it, fval, jnp.max(jnp.abs(g)), prec)


def _lbfgs(f, theta0, gtol, max_iter: int):
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(f)

    def cond(s):
        theta, state, fval, g, it = s
        return (it < max_iter) & (jnp.max(jnp.abs(g)) > gtol) & jnp.isfinite(fval)

    def body(s):
        theta, state, _, _, it = s
        value, g = value_and_grad(theta, state=state)
        updates, state = opt.update(g, state, theta, value=value, grad=g, value_fn=f)
        theta = optax.apply_updates(theta, updates)
        value, g = value_and_grad(theta, state=state)
        return theta, state, value, g, it + 1

    state0 = opt.init(theta0)
    f0, g0 = jax.value_and_grad(f)(theta0)
    theta, _, fval, g, it = jax.lax.while_loop(cond, body, (theta0, state0, f0, g0, jnp.int32(0)))
    gmax = jnp.max(jnp.abs(g))
    status = jnp.where(~jnp.isfinite(fval), Status.NON_FINITE,
                       jnp.where(gmax <= gtol, Status.CONVERGED, Status.MAX_ITERATIONS)).astype(jnp.int32)
    return theta, fval, g, it, status


def choose_method(method: str, design: Design, precision: str) -> str:
    """``"auto"``: Newton when the Hessian can be built and ``d <= NEWTON_MAX_D``, else Newton-CG."""
    if method != "auto":
        return method
    return "newton" if design.has_gram and design.d <= NEWTON_MAX_D else "newton_cg"
