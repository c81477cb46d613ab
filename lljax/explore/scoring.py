"""Exploration from per-entity posteriors: Thompson sampling, UCB and top-k, batched.

A :class:`Posterior` holds ``E`` entities' Gaussian posteriors ``N(mean, precision^-1)`` over
``D`` common global features (get one with :meth:`RandomEffectModel.posterior`). Scores are
random-effect margins ``x . theta``; add your fixed-effect offsets before ranking.

Two ways to pair requests with entities, matching the two kinds of bandits:

- **arms** (``*_arms``): every entity is an arm with its own model (MABWiser's ``LinTS`` /
  ``LinUCB``; Lambda Learner's per-item models). A request is a context ``x (D,)`` scored by all
  ``E`` arms; Thompson sampling draws an independent ``theta`` per (request, arm). Only the
  scalar ``x . theta ~ N(x . mean, x^T P^-1 x)`` is used, so it is drawn directly: one normal
  per pair instead of ``D``, and the variances are one matrix product.
- **candidates** (``*_candidates``): a request belongs to one entity (a user) and ranks ``C``
  candidate items ``x_c (D,)`` in that entity's feature space. Thompson sampling draws one
  ``theta = mean + L^-T z`` per request (``P = L L^T``), shared by its candidates, so the
  candidates' sampled scores keep their posterior correlation.

**The intercept.** Contexts and candidates follow the training data's convention: the intercept is
implicit. When the posterior has an intercept column (``Posterior.intercept``, set by
:meth:`RandomEffectModel.posterior` when the requested ``feature_ids`` include the intercept's id 0),
pass your features without it, ``D - 1`` columns in the order of the posterior's other columns, and
the intercept's 1.0 is added for you (:meth:`Posterior.add_intercept`). ``D`` columns are the
explicit form: used as given, intercept column included.

**Entity rows.** ``entity`` arguments are row positions into the posterior (``0..E-1``, the order
of the keys given to :meth:`RandomEffectModel.posterior`), not entity keys. Outside ``jit`` a row
outside ``[0, E)`` (negative ones included) raises ``ValueError`` naming the argument, the request
and the value. Inside a caller's ``jit`` the rows are not known, so an out-of-range row gets NaN
scores and NaN draws (never a clamped or wrapped-around entity's). Shapes are checked in both cases.

Full precision is used through its Cholesky factor, diagonal precision through ``1 / P``.
Every function is pure, and ``jit``-compiled after its host-side checks; randomness comes only
from the explicit ``key``.
"""

from __future__ import annotations

import operator
from functools import partial
from typing import Any, Literal, NamedTuple, overload

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
from jax.scipy.linalg import cho_solve, solve_triangular

from lljax.data.errors import input_error

__all__ = ["Posterior", "arm_moments", "candidate_moments", "thompson_arms", "thompson_candidates", "ucb_arms",
           "ucb_candidates", "sample_posterior", "top_k"]


class Posterior(NamedTuple):
    """Gaussian posteriors of ``E`` entities over ``D`` common features.

    Attributes:
      mean: ``(E, D)`` posterior means.
      precision: ``(E, D, D)`` full or ``(E, D)`` diagonal posterior precisions (positive definite).
      feature_ids: ``(D,)`` global feature id of each column (informational; not used on device).
      intercept: the column (in ``[0, D)``) that is the intercept, or ``None`` (default) when no
        column is. When set, contexts and candidates may omit it (``D - 1`` columns): the scoring
        functions add its 1.0 (see :meth:`add_intercept`). :meth:`RandomEffectModel.posterior` sets
        it to the column of feature id 0, the default ``intercept_id``, when requested. A model
        trained with ``intercept_id=None`` has no intercept: give it full-width contexts, or drop
        the mark with ``posterior._replace(intercept=None)``.
    """

    mean: jax.Array | np.ndarray
    precision: jax.Array | np.ndarray
    feature_ids: jax.Array | np.ndarray
    intercept: Any = None

    @property
    def is_full(self) -> bool:
        return self.precision.ndim == 3

    @property
    def num_features(self) -> int:
        """``D``, the posterior's columns (the intercept's included)."""
        return int(self.mean.shape[-1])

    def add_intercept(self, features: Any) -> jax.Array:
        """``features (..., D - 1)`` without the intercept -> ``(..., D)`` with 1.0 in column
        :attr:`intercept`, the other columns in order around it (what the scoring functions do to
        contexts and candidates of ``D - 1`` columns).

        Raises ``ValueError`` when the posterior has no intercept column or the width is not ``D - 1``.
        """
        if self.intercept is None:
            raise input_error("posterior.intercept", None, "marks no intercept column: give the features with all "
                              f"D={self.num_features} columns")
        features = jnp.asarray(features)
        if features.ndim < 1 or features.shape[-1] != self.num_features - 1:
            raise input_error("features", f"<array of shape {tuple(features.shape)}>",
                              f"must have D-1={self.num_features - 1} columns (the posterior's D={self.num_features} "
                              "without the intercept)")
        return _insert_intercept(features, self.intercept, self.num_features)


def _insert_intercept(x: jax.Array, column: Any, D: int) -> jax.Array:
    """``x (..., D - 1)`` with 1.0 inserted at ``column`` (which may be traced): ``(..., D)``."""
    if D == 1:
        return jnp.ones(x.shape[:-1] + (1,), x.dtype)
    j = jnp.arange(D)
    source = jnp.clip(j - (j > column), 0, D - 2)
    return jnp.where(j == column, jnp.ones((), x.dtype), jnp.take(x, source, axis=-1))


# ------------------------------------------------------------------ host-side checks (also under jit)


def _is_traced(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(np.shape(x))


def _check_posterior(posterior: Any) -> int:
    """``D``, after checking the posterior's shapes and (when concrete) its intercept column."""
    if not isinstance(posterior, Posterior):
        raise input_error("posterior", type(posterior).__name__, "must be an lljax.Posterior (from "
                          "RandomEffectModel.posterior)", error=TypeError)
    mean, precision = _shape(posterior.mean), _shape(posterior.precision)
    if len(mean) != 2 or precision not in (mean, mean + mean[-1:]):
        raise input_error("posterior.precision", f"<array of shape {precision}>",
                          f"must have shape (E, D) or (E, D, D) for a mean of shape {mean}")
    D = mean[1]
    intercept = posterior.intercept
    if intercept is not None and not _is_traced(intercept):
        column = np.asarray(intercept)
        if column.shape != () or column.dtype.kind not in "iu" or not 0 <= int(column) < D:
            raise input_error("posterior.intercept", intercept if column.shape == () else f"<array of shape "
                              f"{column.shape}>", f"must be None or an int column in [0, {D})")
    return D


def _check_features(name: str, posterior: Posterior, x: Any, dims: list[str]) -> Any:
    """``x`` with ``len(dims)`` dimensions and ``D`` columns, or ``D - 1`` when the posterior marks an
    intercept column; else a ``ValueError`` naming the argument and the shapes."""
    D = _check_posterior(posterior)
    if not hasattr(x, "shape"):
        x = np.asarray(x)
    shape = _shape(x)
    widths = f"D={D}" if posterior.intercept is None else f"D={D} (or D-1={D - 1} without the intercept column)"
    if len(shape) != len(dims) or shape[-1] not in ((D,) if posterior.intercept is None else (D, D - 1)):
        raise input_error(name, f"<array of shape {shape}>",
                          f"must have shape ({', '.join(dims[:-1] + ['D'])}) with {widths} columns, the posterior's "
                          f"features (its mean has shape {_shape(posterior.mean)})")
    kind = np.dtype(x.dtype).kind
    if kind not in "fiub":
        raise input_error(name, f"<array of dtype {x.dtype}>", "must be real numbers", error=TypeError)
    return x


def _check_rows(posterior: Posterior, entity: Any, name: str = "entity") -> Any:
    """``entity (R,)`` int row positions into the posterior. Outside ``jit``: ``ValueError`` naming the
    request and the value of a row outside ``[0, E)``; under tracing only the dtype and shape are checked
    (the gathers give NaN for out-of-range rows)."""
    E = _shape(posterior.mean)[0]
    if not _is_traced(entity):
        entity = np.asarray(entity)
        if entity.size == 0 and entity.dtype.kind == "f":
            entity = entity.astype(np.int32)  # np.asarray([]) is float64
    shape, kind = _shape(entity), np.dtype(entity.dtype).kind
    if len(shape) != 1:
        raise input_error(name, f"<array of shape {shape}>", "must be one-dimensional (one row per request)")
    if kind not in "iu":
        raise input_error(name, f"<array of dtype {entity.dtype}>", "must hold integer row positions into the "
                          "posterior", error=TypeError)
    if not _is_traced(entity) and entity.size:
        bad = (entity < 0) | (entity >= E)
        if bad.any():
            r = int(np.argmax(bad))
            raise input_error(name, int(entity[r]), f"is outside [0, {E}): entities are row positions into the "
                              f"posterior's {E} entities (the order of the keys given to model.posterior), not "
                              "entity keys", where=f"request {r}")
    return entity


def _check_requests(entity: Any, candidates: Any) -> None:
    R, C = _shape(entity)[0], _shape(candidates)[0]
    if R != C:
        raise input_error("candidates", f"<array of shape {_shape(candidates)}>",
                          f"must have one row per request: entity has shape {_shape(entity)}")


@overload
def _as_int(name: str, value: Any, minimum: int, maximum: int | None = None, none_ok: Literal[False] = False,
            what: str = "") -> int: ...


@overload
def _as_int(name: str, value: Any, minimum: int, maximum: int | None = None, none_ok: bool = False,
            what: str = "") -> int | None: ...


def _as_int(name: str, value: Any, minimum: int, maximum: int | None = None, none_ok: bool = False,
            what: str = "") -> int | None:
    """A Python int in ``[minimum, maximum]`` from an int, a NumPy integer or a concrete 0-d integer array."""
    if value is None and none_ok:
        return None
    try:
        if isinstance(value, (bool, np.bool_)):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        number = None
    if number is None or number < minimum or (maximum is not None and number > maximum):
        bounds = f"an int >= {minimum}" if maximum is None else f"an int in [{minimum}, {maximum}]{what}"
        raise input_error(name, value, f"must be {'None or ' if none_ok else ''}{bounds}")
    return number


# ------------------------------------------------------------------ device code


def _covariance(precision: jax.Array) -> jax.Array:
    """``(E, D, D)`` inverse of full precisions (via Cholesky) or ``(E, D)`` inverse of diagonals."""
    if precision.ndim == 2:
        return 1.0 / precision
    chol = jnp.linalg.cholesky(precision)
    eye = jnp.broadcast_to(jnp.eye(precision.shape[-1], dtype=precision.dtype), precision.shape)
    return jax.vmap(lambda c, i: cho_solve((c, True), i))(chol, eye)


def _full_width(posterior: Posterior, x: jax.Array) -> jax.Array:
    """``x`` in the posterior's dtype with ``D`` columns (the intercept added to ``D - 1``)."""
    x = jnp.asarray(x).astype(posterior.mean.dtype)
    D = posterior.mean.shape[-1]
    return x if x.shape[-1] == D else _insert_intercept(x, posterior.intercept, D)


def _rows(posterior: Posterior, entity: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``mean (R, D)`` and precision of rows ``entity (R,)``; NaN for rows outside ``[0, E)``: negative
    ones are not wrapped around and large ones not clamped."""
    E = posterior.mean.shape[0]
    index = jnp.where(entity < 0, E, entity)
    # jnp.asarray: the fields are tracers here (under jit); it only tells the type checker.
    mean = jnp.asarray(posterior.mean).at[index].get(mode="fill", fill_value=jnp.nan)
    precision = jnp.asarray(posterior.precision).at[index].get(mode="fill", fill_value=jnp.nan)
    return mean, precision


@jax.jit
def _arm_moments(posterior: Posterior, contexts: jax.Array) -> tuple[jax.Array, jax.Array]:
    contexts = _full_width(posterior, contexts)
    mean = contexts @ posterior.mean.T
    cov = _covariance(jnp.asarray(posterior.precision))
    if cov.ndim == 2:
        variance = jnp.square(contexts) @ cov.T
    else:
        rows, cols = np.triu_indices(contexts.shape[1])
        pairs = contexts[:, rows] * contexts[:, cols] * np.where(rows == cols, 1.0, 2.0).astype(contexts.dtype)
        variance = pairs @ cov[:, rows, cols].T
    return mean, jnp.maximum(variance, 0.0)


def arm_moments(posterior: Posterior, contexts: npt.ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Mean and variance of ``x_r . theta_a`` for every (request, arm).

    The variances ``x_r^T C_a x_r`` (``C = P^-1``) are one matrix product over the
    ``D (D + 1) / 2`` distinct entries of the symmetric ``C_a`` (off-diagonal ones doubled).

    Args:
      posterior: ``E = A`` arms.
      contexts: ``(R, D)`` one context per request, or ``(R, D - 1)`` without the posterior's
        intercept column (added).
    Returns:
      ``mean (R, A)`` and ``variance (R, A)``.
    """
    contexts = _check_features("contexts", posterior, contexts, ["R", "D"])
    return _arm_moments(posterior, contexts)


@jax.jit
def _candidate_moments(posterior: Posterior, entity: jax.Array, candidates: jax.Array) -> tuple[jax.Array, jax.Array]:
    candidates = _full_width(posterior, candidates)
    mean_rows, precision_rows = _rows(posterior, entity)
    mean = jnp.einsum("rcd,rd->rc", candidates, mean_rows)
    cov = _covariance(precision_rows)
    if cov.ndim == 2:
        variance = jnp.einsum("rcd,rd->rc", jnp.square(candidates), cov)
    else:
        variance = jnp.einsum("rcd,rde,rce->rc", candidates, cov, candidates)
    return mean, jnp.maximum(variance, 0.0)


def candidate_moments(posterior: Posterior, entity: npt.ArrayLike,
                      candidates: npt.ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Mean and variance of ``x_rc . theta_{entity_r}`` for every (request, candidate).

    Args:
      posterior: ``E`` entities.
      entity: ``(R,)`` int row position into the posterior's entities of each request (see the module
        docstring: a row outside ``[0, E)`` raises, or gives NaN under ``jit``).
      candidates: ``(R, C, D)`` candidate feature vectors of each request, or ``(R, C, D - 1)`` without
        the posterior's intercept column (added).
    Returns:
      ``mean (R, C)`` and ``variance (R, C)``.
    """
    candidates = _check_features("candidates", posterior, candidates, ["R", "C", "D"])
    entity = _check_rows(posterior, entity)
    _check_requests(entity, candidates)
    return _candidate_moments(posterior, entity, candidates)


def ucb_arms(posterior: Posterior, contexts: npt.ArrayLike, alpha: float = 1.0) -> jax.Array:
    """``(R, A)`` upper confidence bounds ``x . mean + alpha * sqrt(x^T P^-1 x)`` (MABWiser's LinUCB).

    ``contexts``: ``(R, D)``, or ``(R, D - 1)`` without the posterior's intercept column."""
    contexts = _check_features("contexts", posterior, contexts, ["R", "D"])
    return _ucb_arms(posterior, contexts, alpha)


@jax.jit
def _ucb_arms(posterior: Posterior, contexts: jax.Array, alpha: float) -> jax.Array:
    mean, variance = _arm_moments(posterior, contexts)
    return mean + alpha * jnp.sqrt(variance)


def ucb_candidates(posterior: Posterior, entity: npt.ArrayLike, candidates: npt.ArrayLike,
                   alpha: float = 1.0) -> jax.Array:
    """``(R, C)`` upper confidence bounds of each request's candidates (arguments as
    :func:`candidate_moments`; NaN for out-of-range rows under ``jit``)."""
    candidates = _check_features("candidates", posterior, candidates, ["R", "C", "D"])
    entity = _check_rows(posterior, entity)
    _check_requests(entity, candidates)
    return _ucb_candidates(posterior, entity, candidates, alpha)


@jax.jit
def _ucb_candidates(posterior: Posterior, entity: jax.Array, candidates: jax.Array, alpha: float) -> jax.Array:
    mean, variance = _candidate_moments(posterior, entity, candidates)
    return mean + alpha * jnp.sqrt(variance)


def thompson_arms(key: jax.Array, posterior: Posterior, contexts: npt.ArrayLike, scale: float = 1.0,
                  draws: int | None = None) -> jax.Array:
    """``(R, A)`` Thompson-sampled scores with ``theta ~ N(mean, scale^2 P^-1)``.

    ``contexts``: ``(R, D)``, or ``(R, D - 1)`` without the posterior's intercept column.

    ``draws=None`` (default): an independent ``theta`` per (request, arm), equal in distribution
    to MABWiser's ``LinTS.predict`` (``alpha = scale``), which draws a whole ``theta`` per context
    and arm. Only ``x . theta`` is drawn, from ``N(x . mean, scale^2 x^T P^-1 x)``: one normal per
    pair, but ``R A D (D + 1)`` flops for the variances.

    ``draws=S`` (an int or a NumPy integer ``>= 1``): ``S`` posterior draws per arm, shared by
    consecutive requests: the requests are cut into ``S`` contiguous groups of ``ceil(R / S)`` and
    group ``s`` uses draw ``s`` (as if the posterior were re-sampled every ``R / S`` requests). Each
    score has the same distribution as above and arms stay independent, but requests of one group
    share their draw. It costs ``2 R A D`` flops plus ``S A`` draws instead of ``R A D (D + 1)``:
    much faster when ``S << R``; ``S = R`` is the exact per-request mode again.
    """
    draws = _as_int("draws", draws, 1, none_ok=True)
    contexts = _check_features("contexts", posterior, contexts, ["R", "D"])
    return _thompson_arms(key, posterior, contexts, scale, draws)


@partial(jax.jit, static_argnames=("draws",))
def _thompson_arms(key: jax.Array, posterior: Posterior, contexts: jax.Array, scale: float,
                   draws: int | None) -> jax.Array:
    if draws is None:
        mean, variance = _arm_moments(posterior, contexts)
        noise = jax.random.normal(key, mean.shape, mean.dtype)
        return mean + scale * jnp.sqrt(variance) * noise
    contexts = _full_width(posterior, contexts)
    A, D = posterior.mean.shape
    R = contexts.shape[0]
    group = -(-R // draws)
    theta = _draw_arms(key, posterior, draws, scale)  # (S, A, D)
    padded = jnp.zeros((draws * group, D), theta.dtype).at[:R].set(contexts.astype(theta.dtype))
    scores = jnp.einsum("sgd,sad->sga", padded.reshape(draws, group, D), theta)
    return scores.reshape(draws * group, A)[:R]


def _draw_arms(key: jax.Array, posterior: Posterior, draws: int, scale: float) -> jax.Array:
    """``(S, A, D)``: ``S`` draws of every arm, with one multi-right-hand-side solve per arm."""
    A, D = posterior.mean.shape
    z = jax.random.normal(key, (A, D, draws), posterior.mean.dtype)
    if posterior.precision.ndim == 2:
        step = z / jnp.sqrt(posterior.precision)[:, :, None]
    else:
        chol = jnp.linalg.cholesky(posterior.precision)
        step = solve_triangular(chol, z, lower=True, trans="T")  # (A, D, S)
    return jnp.asarray(posterior.mean)[None] + scale * jnp.transpose(step, (2, 0, 1))


def _draw(key: jax.Array, mean: jax.Array, precision: jax.Array, shape: tuple[int, ...], scale: float) -> jax.Array:
    """``shape + (D,)`` draws ``mean + scale * L^-T z`` (``P = L L^T``) or ``mean + scale * z / sqrt(P)``.

    ``mean (..., D)`` and ``precision`` broadcast against the trailing dimensions of ``shape``.
    """
    z = jax.random.normal(key, shape + mean.shape[-1:], mean.dtype)
    if precision.ndim == mean.ndim:
        return mean + scale * z / jnp.sqrt(precision)
    chol = jnp.linalg.cholesky(precision)
    chol = jnp.broadcast_to(chol, z.shape + z.shape[-1:])
    step = solve_triangular(chol, z[..., None], lower=True, trans="T")[..., 0]
    return mean + scale * step


def sample_posterior(key: jax.Array, posterior: Posterior, entity: npt.ArrayLike, scale: float = 1.0) -> jax.Array:
    """``(R, D)`` draws ``theta_r ~ N(mean, scale^2 P^-1)`` of entities ``entity (R,)`` (row positions
    into the posterior: out of range raises, or gives NaN draws under ``jit``).

    Full precision: ``theta = mean + scale * L^-T z`` with ``P = L L^T`` (one triangular solve);
    diagonal: ``theta = mean + scale * z / sqrt(P)``. ``theta`` has all ``D`` columns, the
    intercept's included.
    """
    _check_posterior(posterior)
    entity = _check_rows(posterior, entity)
    return _sample_posterior(key, posterior, entity, scale)


@jax.jit
def _sample_posterior(key: jax.Array, posterior: Posterior, entity: jax.Array, scale: float) -> jax.Array:
    mean, precision = _rows(posterior, entity)
    return _draw(key, mean, precision, entity.shape, scale)


def thompson_candidates(key: jax.Array, posterior: Posterior, entity: npt.ArrayLike, candidates: npt.ArrayLike,
                        scale: float = 1.0) -> jax.Array:
    """``(R, C)`` Thompson-sampled scores: one ``theta`` draw per request, shared by its candidates
    (arguments as :func:`candidate_moments`; NaN for out-of-range rows under ``jit``)."""
    candidates = _check_features("candidates", posterior, candidates, ["R", "C", "D"])
    entity = _check_rows(posterior, entity)
    _check_requests(entity, candidates)
    return _thompson_candidates(key, posterior, entity, candidates, scale)


@jax.jit
def _thompson_candidates(key: jax.Array, posterior: Posterior, entity: jax.Array, candidates: jax.Array,
                         scale: float) -> jax.Array:
    theta = _sample_posterior(key, posterior, entity, scale)
    return jnp.einsum("rcd,rd->rc", _full_width(posterior, candidates).astype(theta.dtype), theta)


def top_k(scores: jax.typing.ArrayLike, k: int) -> tuple[jax.Array, jax.Array]:
    """Per request, the ``k`` best scores and their column indices, best first: ``(R, k)`` each.

    ``k``: an int (or a NumPy integer) in ``[1, C]``."""
    shape = _shape(scores)
    if not shape:
        raise input_error("scores", "<a scalar>", "must have a last axis of candidates")
    k = _as_int("k", k, 1, shape[-1], what=" (the number of candidates)")
    return jax.lax.top_k(scores, k)
