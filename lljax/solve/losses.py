"""Per-row losses as functions of the margin, and the label conventions.

Every loss in lljax is a sum over rows of ``w_i * l(m_i, y_i)`` where
``m_i = x_i . theta + offset_i`` is the margin. The solver only needs three
scalar functions of ``(m, y)``: the value ``l``, its first derivative ``l'``
and its second derivative ``l''`` with respect to ``m``. Then, for one entity,

    gradient = X^T (w * l'(m))          Hessian = X^T diag(w * l''(m)) X

so adding a loss means adding one :class:`RowLoss` row to :data:`LOSSES`;
the solver, packing and model state are shared by all losses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lljax.solve.base import AnyArray

__all__ = ["RowLoss", "LOSSES", "get_loss", "encode_labels", "first_bad_label"]


class RowLoss(NamedTuple):
    """The scalar pieces of a loss. Each maps ``(margin, label)`` arrays to an array of the same shape (JAX arrays
    in the solvers; the GAME objective also evaluates ``value`` on NumPy arrays); ``terms`` returns the three at
    once, sharing their transcendental work (one ``exp`` a row for logistic and Poisson), for the solvers'
    iteration."""

    value: Callable[[AnyArray, AnyArray], AnyArray]
    d1: Callable[[AnyArray, AnyArray], AnyArray]
    d2: Callable[[AnyArray, AnyArray], AnyArray]
    terms: Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array, jax.Array]]


def _linear_value(m: AnyArray, y: AnyArray) -> AnyArray:
    return 0.5 * jnp.square(m - y)


def _linear_d1(m: AnyArray, y: AnyArray) -> AnyArray:
    return m - y


def _linear_d2(m: AnyArray, y: AnyArray) -> AnyArray:
    return jnp.ones_like(m)


def _linear_terms(m: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    r = m - y
    return 0.5 * jnp.square(r), r, jnp.ones_like(m)


def _logistic_value(m: AnyArray, y: AnyArray) -> AnyArray:
    # log(1 + exp(-y m)), stable for large |m|; y in {-1, +1}.
    return jnp.logaddexp(0.0, -y * m)


def _logistic_d1(m: AnyArray, y: AnyArray) -> AnyArray:
    return -y * jax.nn.sigmoid(-y * m)


def _logistic_d2(m: AnyArray, y: AnyArray) -> AnyArray:
    return jax.nn.sigmoid(m) * jax.nn.sigmoid(-m)


def _log1p_unit(e: jax.Array) -> jax.Array:
    """``log1p(e)`` for ``e`` in ``[0, 1]``. In float64, ``2 atanh(s)``, ``s = e / (2 + e)`` in ``[0, 1/3]``, by its
    series (15 terms: within 3 ulp), vectorized, where XLA's CPU ``log1p`` is a scalar call (about 5x the time of
    an ``exp``); ``jnp.log1p`` in other dtypes."""
    if e.dtype != jnp.float64:
        return jnp.log1p(e)
    s = e / (2.0 + e)
    s2 = s * s
    acc = jnp.full_like(s, 1.0 / 31.0)
    for k in range(14, -1, -1):
        acc = acc * s2 + 1.0 / (2 * k + 1)
    return 2.0 * s * acc


def _logistic_terms(m: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    # With z = y m and e = exp(-|z|): l = max(-z, 0) + log1p(e) (logaddexp(0, -z)); sigmoid(-z) = e / (1 + e) for
    # z >= 0, 1 / (1 + e) otherwise; l'' = sigmoid(z) sigmoid(-z) = e / (1 + e)^2 (|y| = 1).
    z = y * m
    e = jnp.exp(-jnp.abs(z))
    inv = 1.0 / (1.0 + e)
    small = e * inv  # sigmoid(-|z|)
    return jnp.maximum(-z, 0.0) + _log1p_unit(e), -y * jnp.where(z >= 0, small, inv), small * inv


def _poisson_value(m: AnyArray, y: AnyArray) -> AnyArray:
    return jnp.exp(m) - y * m


def _poisson_d1(m: AnyArray, y: AnyArray) -> AnyArray:
    return jnp.exp(m) - y


def _poisson_d2(m: AnyArray, y: AnyArray) -> AnyArray:
    return jnp.exp(m)


def _poisson_terms(m: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    e = jnp.exp(m)
    return e - y * m, e - y, e


LOSSES: dict[str, RowLoss] = {
    "linear": RowLoss(_linear_value, _linear_d1, _linear_d2, _linear_terms),
    "logistic": RowLoss(_logistic_value, _logistic_d1, _logistic_d2, _logistic_terms),
    "poisson": RowLoss(_poisson_value, _poisson_d1, _poisson_d2, _poisson_terms),
}


def get_loss(name: str) -> RowLoss:
    """Look up a loss by name (``"linear"``, ``"logistic"`` or ``"poisson"``)."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"field 'loss': value {name!r} is not one of {sorted(LOSSES)}") from None


def encode_labels(loss: str, labels: np.ndarray) -> np.ndarray:
    """Map raw labels to the form the loss uses.

    Logistic labels follow Lambda Learner's rule: label 1 -> +1, anything else -> -1
    (the domain check, which rejects labels outside {0, 1, -1}, is done by the dataset
    validation). Linear and Poisson labels are used as given.

    Args:
      loss: loss name.
      labels: ``(n,)`` raw labels.
    Returns:
      ``(n,)`` labels of the same dtype.
    """
    if loss == "logistic":
        one = labels.dtype.type(1)
        return np.where(labels == 1, one, -one)  # scalars of the labels' dtype: no int64 temporary
    return labels


def first_bad_label(loss: str, labels: np.ndarray) -> tuple[int, str] | None:
    """The first label outside the loss's domain, as ``(position, reason)``, or ``None``.

    logistic: labels in {0, 1, -1}; poisson: non-negative counts; linear: any value (finiteness is
    checked where the data enters). The callers raise, naming the entity and the field.
    """
    y = np.asarray(labels)
    if loss == "logistic":
        bad = (y != 0) & (y != 1) & (y != -1)
        reason = "is not a logistic label (expected 0, 1 or -1)"
    elif loss == "poisson":
        bad = y < 0
        reason = "is not a Poisson count (expected >= 0)"
    else:
        return None
    if not bad.any():
        return None
    return int(np.argmax(bad)), reason
