"""Dense posteriors of some entities over some global features, from the entity store (host side).

The stored posterior of an entity covers its own feature subspace. Exploration scores
candidates in a common feature space, so :func:`dense_posterior` lays every requested entity
out over the requested global features:

- a feature the entity has never seen has its cold-start prior: mean 0, precision ``l2``,
  independent of the others (the data never coupled it);
- an entity that is not stored is all cold prior;
- a stored feature that is *not* requested is marginalized out: for full precision the
  requested block of the covariance ``P^-1`` is taken and inverted back (the Schur
  complement), which is what ``x^T P^-1 x`` needs when ``x`` is 0 on those features.

When the requested features include the intercept (id 0 by default), the posterior marks its
column (``Posterior.intercept``): contexts and candidates may then be given without it, as
training rows are.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lljax.data.errors import input_error
from lljax.explore.scoring import Posterior
from lljax.state.store import EntityStore

__all__ = ["dense_posterior"]


def dense_posterior(store: EntityStore | None, keys: Any, feature_ids: Any, l2: float, dtype: np.dtype,
                    full: bool, intercept_id: int | None = 0) -> Posterior:
    """``Posterior`` of entities ``keys (E,)`` over global features ``feature_ids (D,)`` (NumPy arrays).

    ``full``: ``(E, D, D)`` precisions (the store must keep full ones, or be ``None``), else ``(E, D)``.
    ``intercept_id``: the intercept's global id (default 0, the training data's default); when it is
    one of ``feature_ids`` its column becomes ``Posterior.intercept``, so that contexts and candidates
    may leave it out as training rows do. ``None``: no column is marked.

    Raises ``ValueError`` naming the field for duplicate or negative feature ids, and when a
    cold-start precision is needed but ``l2 == 0`` (an infinite variance).
    """
    keys = np.asarray(keys)
    if keys.ndim != 1:
        raise input_error("entities", f"<array of shape {keys.shape}>", "must be one-dimensional")
    fids = np.asarray(feature_ids)
    if fids.ndim != 1 or (fids.size and fids.dtype.kind not in "iu"):
        raise input_error("feature_ids", f"<array of shape {fids.shape}, dtype {fids.dtype}>",
                          "must be a 1-d array of int global feature ids", error=TypeError)
    fids = fids.astype(np.int64)
    if fids.size and fids.min() < 0:
        raise input_error("feature_ids", int(fids.min()), "must be >= 0")
    uniq, counts = np.unique(fids, return_counts=True)
    if np.any(counts > 1):
        raise input_error("feature_ids", int(uniq[np.argmax(counts > 1)]), "appears more than once")
    E, D = len(keys), len(fids)
    mean = np.zeros((E, D), dtype)
    precision = np.zeros((E, D, D), dtype) if full else np.zeros((E, D), dtype)
    covered = np.zeros((E, D), bool)  # entries that come from a stored posterior
    slots = np.full(E, -1, np.int64) if store is None else store.lookup(keys)
    sorter = np.argsort(fids)
    if store is not None:
        for positions, stored_fids, means, stored_precision in store.gather_dense(slots):
            pos = np.minimum(np.searchsorted(fids, stored_fids, sorter=sorter), max(D - 1, 0))
            col = sorter[pos] if D else pos
            requested = (stored_fids >= 0) & (fids[col] == stored_fids) if D else np.zeros_like(stored_fids, bool)
            lane, k = np.nonzero(requested)
            mean[positions[lane], col[lane, k]] = means[lane, k]
            covered[positions[lane], col[lane, k]] = True
            if stored_precision is None:
                continue
            if full:
                marginal = _marginal_precision(stored_precision, stored_fids >= 0, requested)
                both = requested[:, :, None] & requested[:, None, :]
                g, i, j = np.nonzero(both)
                precision[positions[g], col[g, i], col[g, j]] = marginal[g, i, j]
            else:
                precision[positions[lane], col[lane, k]] = stored_precision[lane, k]
    cold = ~covered
    if cold.any() and l2 <= 0:
        e, d = np.argwhere(cold)[0]
        raise input_error("l2", l2, f"is 0, so feature {int(fids[d])} without a stored posterior has infinite "
                          "variance; train it first or use l2 > 0", entity=keys[e])
    if full:
        e, d = np.nonzero(cold)
        precision[e, d, :] = 0.0
        precision[e, :, d] = 0.0
        precision[e, d, d] = l2
    else:
        precision[cold] = l2
    at = np.flatnonzero(fids == intercept_id) if intercept_id is not None else np.zeros(0, np.int64)
    return Posterior(mean, precision, fids, int(at[0]) if at.size else None)


def _marginal_precision(precision: np.ndarray, valid: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``(g, W, W)`` precision of the ``keep`` features with the other valid ones marginalized out.

    Entities that keep all their valid features are returned as stored; for the others the
    covariance block of the kept features is inverted. Entries outside ``keep`` are meaningless.
    """
    out = precision.copy()
    partial = np.flatnonzero((valid & ~keep).any(axis=1))
    if partial.size:
        W = precision.shape[-1]
        eye = np.eye(W, dtype=precision.dtype)
        p = np.where(valid[partial, :, None] & valid[partial, None, :], precision[partial], eye)
        cov = np.linalg.inv(p)
        kept = keep[partial, :, None] & keep[partial, None, :]
        out[partial] = np.linalg.inv(np.where(kept, cov, eye))
    return out
