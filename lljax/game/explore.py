"""Exploration at the GAME level: Thompson sampling and UCB scores of one random-effect coordinate, with the
base offset and every other coordinate's score as the offset.

Each row of the data is one (request, candidate) pair: the request's entity (the coordinate's entity
column) and the candidate's features (the coordinate's feature set). The explored score of a row is

    offset + sum of the other coordinates' scores + x . theta_entity

with ``theta_entity`` drawn from the entity's posterior ``N(mean, scale^2 P^-1)`` (Thompson; one draw per
request, shared by its candidates) or replaced by the bound ``x . mean + alpha sqrt(x^T P^-1 x)`` (UCB).
Entities the coordinate has not seen get the cold prior ``N(0, 1/l2)``. Built on
:meth:`lljax.RandomEffectModel.posterior`, :func:`thompson_candidates` and :func:`ucb_candidates`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lljax.explore.scoring import thompson_candidates, ucb_candidates
from lljax.game.coordinates import RandomRuntime
from lljax.game.data import GameData, entity_codes, game_error

__all__ = ["explore_scores"]


def explore_scores(model: Any, data: GameData, coordinate: str, *, method: str = "thompson", key: Any = None,
                   alpha: float = 1.0, scale: float = 1.0, request: str | None = None) -> np.ndarray:
    """``(n,)`` explored margins of ``data``'s rows for random effect ``coordinate`` (module docstring).

    Args:
      model: the :class:`GameModel`.
      data: rows = (request, candidate) pairs.
      coordinate: the random effect explored.
      method: ``"thompson"`` or ``"ucb"``.
      key: a ``jax.random`` key (Thompson).
      alpha: UCB width. scale: Thompson's posterior scale.
      request: an id column grouping rows into requests (one Thompson draw per request); ``None``: every
        row is its own request.
    """
    rt = model._runtime(coordinate)
    if not isinstance(rt, RandomRuntime):
        raise game_error("exploration needs a random effect (entities with a posterior)", coordinate=coordinate,
                         column="coordinate", value=coordinate, error=TypeError)
    if method not in ("thompson", "ucb"):
        raise game_error("is not 'thompson' or 'ucb'", coordinate=coordinate, column="method", value=method)
    if method == "thompson" and key is None:
        raise game_error("Thompson sampling needs a jax.random key", coordinate=coordinate, column="key", value=None)
    if rt.spec.hessian == "none":
        raise game_error("keeps no posterior precision; exploration needs 'identity', 'diagonal' or 'full'",
                         coordinate=coordinate, column="hessian", value="none")
    scores = model.score(data)
    base = scores.total - scores.contributions[coordinate]
    spec = rt.spec
    keys = entity_codes(data.ids[spec.entity], coordinate, spec.entity)
    n = data.num_examples
    F = 0 if spec.features is None else data.features[spec.features].num_columns
    X = np.ones((n, F + 1), data.dtype)
    if F:
        X[:, 1:] = data.features[spec.features].to_dense()
    unique, entity_row = np.unique(keys, return_inverse=True)
    re = rt.model if rt.model is not None else rt.new_model(data, model.loss)
    post = re.posterior(list(unique.tolist()), np.arange(F + 1))
    if request is None:
        req = np.arange(n)
    else:
        if request not in data.ids:
            raise game_error(f"is not an entity column of the data (entity columns: {sorted(data.ids)})",
                             coordinate=coordinate, column=request)
        _, req = np.unique(entity_codes(data.ids[request], coordinate, request), return_inverse=True)
        req = req.reshape(-1)
    R = int(req.max()) + 1 if n else 0
    order = np.argsort(req, kind="stable")
    counts = np.bincount(req, minlength=R)
    C = int(counts.max()) if n else 0
    slot = np.empty(n, np.int64)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    slot[order] = np.arange(n) - np.repeat(starts, counts)
    candidates = np.zeros((R, C, F + 1), data.dtype)
    candidates[req, slot] = X
    request_entity = np.zeros(R, np.int64)
    request_entity[req] = entity_row.reshape(-1)
    if np.any(np.bincount(req, weights=entity_row.reshape(-1), minlength=R) != counts * request_entity):
        raise game_error("groups rows of different entities into one request", coordinate=coordinate,
                         column=request, value=request)
    if method == "ucb":
        out = ucb_candidates(post, request_entity, candidates, alpha)
    else:
        out = thompson_candidates(key, post, request_entity, candidates, scale)
    explored = np.asarray(out)[req, slot]
    return base + explored
