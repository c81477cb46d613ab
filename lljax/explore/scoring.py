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

Full precision is used through its Cholesky factor, diagonal precision through ``1 / P``.
Every function is pure and ``jit``-ted; randomness comes only from the explicit ``key``.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import cho_solve, solve_triangular

__all__ = ["Posterior", "arm_moments", "candidate_moments", "thompson_arms", "thompson_candidates", "ucb_arms",
           "ucb_candidates", "sample_posterior", "top_k"]


class Posterior(NamedTuple):
    """Gaussian posteriors of ``E`` entities over ``D`` common features.

    Attributes:
      mean: ``(E, D)`` posterior means.
      precision: ``(E, D, D)`` full or ``(E, D)`` diagonal posterior precisions (positive definite).
      feature_ids: ``(D,)`` global feature id of each column (informational; not used on device).
    """

    mean: jax.Array
    precision: jax.Array
    feature_ids: jax.Array

    @property
    def is_full(self) -> bool:
        return self.precision.ndim == 3


def _covariance(precision: jax.Array) -> jax.Array:
    """``(E, D, D)`` inverse of full precisions (via Cholesky) or ``(E, D)`` inverse of diagonals."""
    if precision.ndim == 2:
        return 1.0 / precision
    chol = jnp.linalg.cholesky(precision)
    eye = jnp.broadcast_to(jnp.eye(precision.shape[-1], dtype=precision.dtype), precision.shape)
    return jax.vmap(lambda c, i: cho_solve((c, True), i))(chol, eye)


@jax.jit
def arm_moments(posterior: Posterior, contexts: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean and variance of ``x_r . theta_a`` for every (request, arm).

    The variances ``x_r^T C_a x_r`` (``C = P^-1``) are one matrix product over the
    ``D (D + 1) / 2`` distinct entries of the symmetric ``C_a`` (off-diagonal ones doubled).

    Args:
      posterior: ``E = A`` arms.
      contexts: ``(R, D)`` one context per request.
    Returns:
      ``mean (R, A)`` and ``variance (R, A)``.
    """
    contexts = contexts.astype(posterior.mean.dtype)
    mean = contexts @ posterior.mean.T
    cov = _covariance(posterior.precision)
    if cov.ndim == 2:
        variance = jnp.square(contexts) @ cov.T
    else:
        rows, cols = np.triu_indices(contexts.shape[1])
        pairs = contexts[:, rows] * contexts[:, cols] * np.where(rows == cols, 1.0, 2.0).astype(contexts.dtype)
        variance = pairs @ cov[:, rows, cols].T
    return mean, jnp.maximum(variance, 0.0)


@jax.jit
def candidate_moments(posterior: Posterior, entity: jax.Array, candidates: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean and variance of ``x_rc . theta_{entity_r}`` for every (request, candidate).

    Args:
      posterior: ``E`` entities.
      entity: ``(R,)`` int index into the posterior's entities of each request.
      candidates: ``(R, C, D)`` candidate feature vectors of each request.
    Returns:
      ``mean (R, C)`` and ``variance (R, C)``.
    """
    candidates = candidates.astype(posterior.mean.dtype)
    mean = jnp.einsum("rcd,rd->rc", candidates, posterior.mean[entity])
    cov = _covariance(posterior.precision[entity])
    if cov.ndim == 2:
        variance = jnp.einsum("rcd,rd->rc", jnp.square(candidates), cov)
    else:
        variance = jnp.einsum("rcd,rde,rce->rc", candidates, cov, candidates)
    return mean, jnp.maximum(variance, 0.0)


@jax.jit
def ucb_arms(posterior: Posterior, contexts: jax.Array, alpha: float = 1.0) -> jax.Array:
    """``(R, A)`` upper confidence bounds ``x . mean + alpha * sqrt(x^T P^-1 x)`` (MABWiser's LinUCB)."""
    mean, variance = arm_moments(posterior, contexts)
    return mean + alpha * jnp.sqrt(variance)


@jax.jit
def ucb_candidates(posterior: Posterior, entity: jax.Array, candidates: jax.Array, alpha: float = 1.0) -> jax.Array:
    """``(R, C)`` upper confidence bounds of each request's candidates."""
    mean, variance = candidate_moments(posterior, entity, candidates)
    return mean + alpha * jnp.sqrt(variance)


@partial(jax.jit, static_argnames=("draws",))
def thompson_arms(key: jax.Array, posterior: Posterior, contexts: jax.Array, scale: float = 1.0,
                  draws: int | None = None) -> jax.Array:
    """``(R, A)`` Thompson-sampled scores with ``theta ~ N(mean, scale^2 P^-1)``.

    ``draws=None`` (default): an independent ``theta`` per (request, arm), equal in distribution
    to MABWiser's ``LinTS.predict`` (``alpha = scale``), which draws a whole ``theta`` per context
    and arm. Only ``x . theta`` is drawn, from ``N(x . mean, scale^2 x^T P^-1 x)``: one normal per
    pair, but ``R A D (D + 1)`` flops for the variances.

    ``draws=S``: ``S`` posterior draws per arm, shared by consecutive requests: the requests are cut
    into ``S`` contiguous groups of ``ceil(R / S)`` and group ``s`` uses draw ``s`` (as if the
    posterior were re-sampled every ``R / S`` requests). Each score has the same distribution as
    above and arms stay independent, but requests of one group share their draw. It costs
    ``2 R A D`` flops plus ``S A`` draws instead of ``R A D (D + 1)``: much faster when
    ``S << R``; ``S = R`` is the exact per-request mode again.
    """
    if draws is not None and not (isinstance(draws, int) and draws >= 1):
        raise ValueError(f"field 'draws': value {draws!r} must be None or an int >= 1")
    if draws is None:
        mean, variance = arm_moments(posterior, contexts)
        noise = jax.random.normal(key, mean.shape, mean.dtype)
        return mean + scale * jnp.sqrt(variance) * noise
    A, D = posterior.mean.shape
    R = contexts.shape[0]
    group = -(-R // draws)
    theta = _draw_arms(key, posterior, draws, scale)  # (S, A, D)
    padded = jnp.zeros((draws * group, D), theta.dtype).at[:R].set(contexts.astype(theta.dtype))
    scores = jnp.einsum("sgd,sad->sga", padded.reshape(draws, group, D), theta)
    return scores.reshape(draws * group, A)[:R]


def _draw_arms(key: jax.Array, posterior: Posterior, draws: int, scale) -> jax.Array:
    """``(S, A, D)``: ``S`` draws of every arm, with one multi-right-hand-side solve per arm."""
    A, D = posterior.mean.shape
    z = jax.random.normal(key, (A, D, draws), posterior.mean.dtype)
    if posterior.precision.ndim == 2:
        step = z / jnp.sqrt(posterior.precision)[:, :, None]
    else:
        chol = jnp.linalg.cholesky(posterior.precision)
        step = solve_triangular(chol, z, lower=True, trans="T")  # (A, D, S)
    return posterior.mean[None] + scale * jnp.transpose(step, (2, 0, 1))


def _draw(key: jax.Array, mean: jax.Array, precision: jax.Array, shape: tuple[int, ...], scale) -> jax.Array:
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


@jax.jit
def sample_posterior(key: jax.Array, posterior: Posterior, entity: jax.Array, scale: float = 1.0) -> jax.Array:
    """``(R, D)`` draws ``theta_r ~ N(mean, scale^2 P^-1)`` of entities ``entity (R,)``.

    Full precision: ``theta = mean + scale * L^-T z`` with ``P = L L^T`` (one triangular solve);
    diagonal: ``theta = mean + scale * z / sqrt(P)``.
    """
    return _draw(key, posterior.mean[entity], posterior.precision[entity], entity.shape, scale)


@jax.jit
def thompson_candidates(key: jax.Array, posterior: Posterior, entity: jax.Array, candidates: jax.Array,
                        scale: float = 1.0) -> jax.Array:
    """``(R, C)`` Thompson-sampled scores: one ``theta`` draw per request, shared by its candidates."""
    theta = sample_posterior(key, posterior, entity, scale)
    return jnp.einsum("rcd,rd->rc", candidates.astype(theta.dtype), theta)


def top_k(scores: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Per request, the ``k`` best scores and their column indices, best first: ``(R, k)`` each."""
    if not 1 <= k <= scores.shape[-1]:
        raise ValueError(f"field 'k': value {k} must be in [1, {scores.shape[-1]}] (the number of candidates)")
    return jax.lax.top_k(scores, k)
