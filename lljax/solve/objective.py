"""One entity's objective, as pure pieces every method shares.

The objective of one entity (see ``docs/design.md``) is

    f(theta) = sum_i w_i l(m_i, y_i)                                 (data)
             + 1/2 delta (theta - theta0)^T P0 (theta - theta0)        (prior)
             + 1/2 (1 - delta) l2 ||theta||^2                          (L2)

with ``m = X theta + offset``. ``delta = 0`` is plain L2 regularization; the prior precision ``P0`` is
diagonal ``(D,)`` or full ``(D, D)``. The rows ``X`` are an operator (:class:`DenseRows` or
:class:`SparseRows`) with ``X v`` and ``X^T r``, so the same :class:`Entity` serves every block layout,
and any other operator with the same interface (``matvec(v)``, ``rmatvec(r, square=False)``,
``weighted_gram(c)``: the GAME fixed effect's ``Design``) serves its objective too.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple, Protocol, cast

import jax
import jax.numpy as jnp

from lljax.solve.base import AnyArray
from lljax.solve.losses import RowLoss, get_loss

__all__ = ["Penalty", "make_penalty", "penalized_features", "weighted", "Rows", "GramRows", "DenseRows",
           "SparseRows", "RowTerms", "Entity", "dense_entity", "entity_objective", "entity_hessian"]


class Rows(Protocol):
    """One entity's rows as an operator: ``X v`` and ``X^T r`` (``(X o X)^T r`` with ``square``)."""

    def matvec(self, v: jax.Array) -> jax.Array: ...

    def rmatvec(self, r: jax.Array, square: bool = False) -> jax.Array: ...


class GramRows(Rows, Protocol):
    """Rows that also form ``X^T diag(c) X`` (:class:`DenseRows`, the GAME fixed effect's ``Design``)."""

    def weighted_gram(self, c: jax.Array) -> jax.Array: ...


class Penalty(NamedTuple):
    """The prior + L2 penalty of one entity as ``1/2 t^T A t - b^T t + c``.

    ``A = delta P0 + (1 - delta) l2 I`` (``(D,)`` if P0 is diagonal, else ``(D, D)``), with the
    identity on padding features so that they solve to 0; ``b = delta P0 theta0`` ``(D,)``;
    ``c = 1/2 delta theta0^T P0 theta0`` ``()``.

    The fields are JAX arrays, or host NumPy arrays passed into a jitted solve (the GAME fixed effect's
    :class:`~lljax.game.fixed_effect.Prior`): the methods compute with ``jnp``, as the operators would.
    """

    A: AnyArray
    b: AnyArray
    c: AnyArray

    def matvec(self, v: jax.Array) -> jax.Array:
        return jnp.matmul(self.A, v) if self.A.ndim == 2 else jnp.multiply(self.A, v)

    def value(self, theta: jax.Array) -> jax.Array:
        return self.value_from(theta, self.matvec(theta))

    def value_from(self, theta: jax.Array, A_theta: jax.Array) -> jax.Array:
        """:meth:`value` at ``theta`` given ``A theta`` ``(D,)``."""
        return 0.5 * theta @ A_theta - self.b @ theta + self.c

    def add_to(self, H: jax.Array) -> jax.Array:
        return H + self.A if self.A.ndim == 2 else H + jnp.diag(self.A)

    def diagonal(self) -> jax.Array:
        """``(D,)`` ``diag(A)`` (``A`` itself when it is diagonal)."""
        return jnp.diagonal(self.A) if self.A.ndim == 2 else jnp.asarray(self.A)


def penalized_features(feature_ids: AnyArray, penalize_intercept: bool = True) -> AnyArray:
    """``(D,)`` True where the L2 term applies: every real feature (``feature_ids >= 0``), or every one but the
    intercept (feature id 0) when ``penalize_intercept`` is False."""
    return feature_ids >= 0 if penalize_intercept else feature_ids > 0


def make_penalty(prior_mean: jax.Array, prior_precision: jax.Array, mask: jax.Array, l2: jax.Array,
                 delta: jax.Array, ridge_mask: AnyArray | None = None) -> Penalty:
    """The :class:`Penalty` of one entity: prior mean ``(D,)``, prior precision ``(D,)`` or ``(D, D)``,
    ``mask`` ``(D,)`` True on real features; ``l2``, ``delta`` scalars; ``ridge_mask`` ``(D,)`` True where
    the L2 term applies (default ``mask``; see :func:`penalized_features`)."""
    theta0 = jnp.where(mask, prior_mean, 0.0)
    ridge = (1.0 - delta) * l2
    ridges = ridge if ridge_mask is None else jnp.where(ridge_mask, ridge, 0.0)  # (D,) or a scalar
    if prior_precision.ndim == 2:
        pair = mask[:, None] & mask[None, :]
        P0 = jnp.where(pair, prior_precision, 0.0)
        eye = jnp.eye(mask.shape[0], dtype=P0.dtype)
        A = jnp.where(pair, delta * P0 + jnp.multiply(ridges, eye), eye)
        P0_theta0 = P0 @ theta0
    else:
        P0 = jnp.where(mask, prior_precision, 0.0)
        A = jnp.where(mask, delta * P0 + ridges, 1.0)
        P0_theta0 = P0 * theta0
    return Penalty(A=A, b=delta * P0_theta0, c=0.5 * delta * theta0 @ P0_theta0)


def weighted(w: jax.Array, v: AnyArray) -> jax.Array:
    """``w * v`` with weight-0 (padding) rows forced to 0 even where ``v`` overflows."""
    return jnp.where(w > 0, w * v, 0.0)


class DenseRows(NamedTuple):
    """One entity's rows as a dense ``(N, D)`` matrix."""

    X: jax.Array

    def matvec(self, v: jax.Array) -> jax.Array:
        return self.X @ v

    def rmatvec(self, r: jax.Array, square: bool = False) -> jax.Array:
        return (jnp.square(self.X) if square else self.X).T @ r

    def weighted_gram(self, c: jax.Array) -> jax.Array:
        """``X^T diag(c) X`` ``(D, D)`` for ``c >= 0`` (a curvature: ``w l''``, 0 where ``w <= 0``), as ``Y^T Y`` with
        ``Y = diag(sqrt(c)) X`` (XLA's CPU batched product of one operand with itself is the faster one)."""
        Y = self.X * jnp.sqrt(c)[:, None]
        return Y.T @ Y


class SparseRows(NamedTuple):
    """One entity's sparse rows ``(N, K)``: ``X v`` by a gather, ``X^T r`` by a scatter-add."""

    cols: jax.Array
    vals: jax.Array
    D: int

    def matvec(self, v: jax.Array) -> jax.Array:
        return jnp.sum(self.vals * v[self.cols], axis=-1)

    def rmatvec(self, r: jax.Array, square: bool = False) -> jax.Array:
        vals = jnp.square(self.vals) if square else self.vals
        return jnp.zeros(self.D, r.dtype).at[self.cols].add(vals * r[:, None])

    def row_gram(self, scale: jax.Array) -> jax.Array:
        """``X diag(scale) X^T`` ``(N, N)``: scatter into a dense ``X^T (D, N)``, one matrix product."""
        N = self.cols.shape[0]
        cells = (self.cols * N + jnp.arange(N)[:, None]).ravel()
        Xt = jnp.zeros(self.D * N, self.vals.dtype).at[cells].add(self.vals.ravel()).reshape(self.D, N)
        return (Xt * scale[:, None]).T @ Xt


class RowTerms(NamedTuple):
    """The data part of one entity's objective at margins ``m``, from one pass over its rows
    (:meth:`Entity.row_terms`): ``value`` ``()`` ``sum_i w_i l(m_i)``, ``residual`` ``(N,)`` ``w l'(m)``,
    ``curvature`` ``(N,)`` ``w l''(m)`` (0 on padding rows)."""

    value: jax.Array
    residual: jax.Array
    curvature: jax.Array


class Entity(NamedTuple):
    """One entity's data and penalty, closed over by the objective pieces.

    Attributes:
      rows: :class:`DenseRows`, :class:`SparseRows` or another :class:`Rows` (``N`` rows, ``D`` features).
      y, w, offset: ``(N,)`` labels (encoded), weights, offsets.
      penalty: the entity's :class:`Penalty`.
      loss: the :class:`~lljax.solve.losses.RowLoss`.
    """

    rows: Rows
    y: jax.Array
    w: jax.Array
    offset: jax.Array
    penalty: Penalty
    loss: RowLoss

    def margin(self, theta: jax.Array) -> jax.Array:
        """``(N,)`` ``X theta + offset``."""
        return self.rows.matvec(theta) + self.offset

    def data_value(self, margin: jax.Array) -> jax.Array:
        """``()`` ``sum_i w_i l(m_i, y_i)`` (the objective without the penalty)."""
        return jnp.sum(weighted(self.w, self.loss.value(margin, self.y)))

    def row_terms(self, margin: jax.Array) -> RowTerms:
        """:class:`RowTerms` at ``margin`` (the loss's ``terms``: one transcendental pass for the three)."""
        value, d1, d2 = self.loss.terms(margin, self.y)
        return RowTerms(jnp.sum(weighted(self.w, value)), weighted(self.w, d1), weighted(self.w, d2))

    def objective(self, theta: jax.Array, margin: jax.Array) -> jax.Array:
        return self.data_value(margin) + self.penalty.value(theta)

    def residual(self, margin: jax.Array) -> jax.Array:
        """``(N,)`` ``w l'(m)`` (0 on padding rows)."""
        return weighted(self.w, self.loss.d1(margin, self.y))

    def gradient(self, theta: jax.Array, margin: jax.Array) -> jax.Array:
        return self.gradient_from(self.residual(margin), self.penalty.matvec(theta))

    def gradient_from(self, residual: jax.Array, A_theta: jax.Array) -> jax.Array:
        """:meth:`gradient` given the :meth:`residual` ``(N,)`` and ``A theta`` ``(D,)``."""
        return self.rows.rmatvec(residual) + A_theta - self.penalty.b

    def curvature(self, margin: jax.Array) -> jax.Array:
        """``(N,)`` ``w l''(m)`` (0 on padding rows)."""
        return weighted(self.w, self.loss.d2(margin, self.y))

    def hessian(self, margin: jax.Array) -> jax.Array:
        """``(D, D)`` Hessian (rows with a ``weighted_gram`` only: :class:`GramRows`)."""
        return self.hessian_from(self.curvature(margin))

    def hessian_from(self, curvature: jax.Array) -> jax.Array:
        """:meth:`hessian` given the :meth:`curvature` ``(N,)``."""
        rows = cast(GramRows, self.rows)  # the callers hold dense rows (a SparseRows has no D x D Gram)
        return self.penalty.add_to(rows.weighted_gram(curvature))

    def hessian_diagonal(self, margin: jax.Array) -> jax.Array:
        """``(D,)`` ``diag(X^T C X) + diag(A)`` in ``O(N D)`` (no ``D x D`` data matrix is formed)."""
        return self.hessian_diagonal_from(self.curvature(margin))

    def hessian_diagonal_from(self, curvature: jax.Array) -> jax.Array:
        """:meth:`hessian_diagonal` given the :meth:`curvature` ``(N,)``."""
        return self.rows.rmatvec(curvature, square=True) + self.penalty.diagonal()


def dense_entity(X: jax.Array, y: jax.Array, w: jax.Array, offset: jax.Array, feature_ids: jax.Array,
                 prior_mean: jax.Array, prior_precision: jax.Array, l2: jax.Array, delta: jax.Array,
                 loss: str, penalize_intercept: bool = True) -> Entity:
    """The :class:`Entity` of one lane of a :class:`~lljax.solve.blocks.Block`."""
    penalty = make_penalty(prior_mean, prior_precision, feature_ids >= 0, l2, delta,
                           penalized_features(feature_ids, penalize_intercept))
    return Entity(DenseRows(X), y, w, offset, penalty, get_loss(loss))


@partial(jax.jit, static_argnames=("loss", "penalize_intercept"))
def entity_objective(theta: jax.Array, X: jax.Array, y: jax.Array, w: jax.Array, offset: jax.Array,
                     feature_ids: jax.Array, prior_mean: jax.Array, prior_precision: jax.Array, l2: jax.Array,
                     delta: jax.Array, *, loss: str, penalize_intercept: bool = True) -> tuple[jax.Array, jax.Array]:
    """Objective value and gradient of one entity at ``theta`` (the solvers' own functions).

    Shapes: theta ``(D,)``, X ``(N, D)``, y/w/offset ``(N,)``, feature_ids/prior_mean ``(D,)``,
    prior_precision ``(D,)`` or ``(D, D)``. Returns ``(value (), gradient (D,))``.
    """
    entity = dense_entity(X, y, w, offset, feature_ids, prior_mean, prior_precision, l2, delta, loss,
                          penalize_intercept)
    margin = X @ theta + offset
    return entity.objective(theta, margin), entity.gradient(theta, margin)


@partial(jax.jit, static_argnames=("loss", "penalize_intercept"))
def entity_hessian(theta: jax.Array, X: jax.Array, y: jax.Array, w: jax.Array, offset: jax.Array,
                   feature_ids: jax.Array, prior_mean: jax.Array, prior_precision: jax.Array, l2: jax.Array,
                   delta: jax.Array, *, loss: str, penalize_intercept: bool = True) -> jax.Array:
    """``(D, D)`` Hessian of one entity's objective at ``theta`` (data curvature + penalty)."""
    entity = dense_entity(X, y, w, offset, feature_ids, prior_mean, prior_precision, l2, delta, loss,
                          penalize_intercept)
    return entity.hessian(X @ theta + offset)
