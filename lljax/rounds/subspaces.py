"""Local feature subspaces: each entity's features, the intercept and its stored prior's, sorted.

An entity is solved in its *local feature subspace*: the sorted union of the features in its data (the
intercept included) and in its stored prior. :func:`local_subspaces` finds every entity's subspace in one
pass over the nonzeros (native helper), by chunked sorts, or by a table of marks (NumPy); all paths give
the same keys. :class:`Subspaces` maps (entity, global feature) to the local column.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from lljax.data.arrays import concat_ranges, segments
from lljax.data.dataset import Dataset
from lljax.data.errors import input_error
from lljax.solve import kernels

__all__ = ["Subspaces", "local_subspaces"]

# local_subspaces' native path keeps a mark per feature id (4 bytes each) up to this many ids.
NATIVE_MARK_MAX = 1 << 25
# local_subspaces marks keys in a table (1 byte per possible (entity, feature) key) instead of sorting
# them when the key space is at most TABLE_PER_KEY times the number of keys (or TABLE_MIN); it reads
# the nonzeros KEY_CHUNK at a time.
TABLE_PER_KEY = 4
TABLE_MIN = 1 << 20
KEY_CHUNK = 1 << 21


class Subspaces(NamedTuple):
    """Local feature subspaces of ``U`` entities.

    Attributes:
      pair_keys: ``(P,)`` sorted ``entity * stride + feature_id`` of every (entity, feature) pair.
      start: ``(U+1,)`` offsets of each entity's pairs in ``pair_keys``; local index of a pair is
        its position minus ``start[entity]``.
      stride: the multiplier used in ``pair_keys`` (> every feature id).
      sizes: ``(U,)`` subspace size of each entity (``diff(start)``).
    """

    pair_keys: np.ndarray
    start: np.ndarray
    stride: int
    sizes: np.ndarray

    @classmethod
    def from_keys(cls, pair_keys: np.ndarray, num_entities: int, stride: int) -> Subspaces:
        return cls.from_sizes(pair_keys, np.bincount(pair_keys // stride, minlength=num_entities), stride)

    @classmethod
    def from_sizes(cls, pair_keys: np.ndarray, sizes: np.ndarray, stride: int) -> Subspaces:
        """The subspaces of sorted ``pair_keys`` whose entity ``u`` has ``sizes[u]`` keys (no pass over the keys)."""
        start = np.zeros(len(sizes) + 1, np.int64)
        np.cumsum(sizes, out=start[1:])
        return cls(pair_keys, start, stride, sizes)

    def restrict(self, entities: np.ndarray) -> Subspaces:
        """The subspaces of ``entities`` alone, renumbered ``0 .. len(entities) - 1`` (a block's lanes).

        Lookups in a block then search its few thousand keys instead of every entity's.
        """
        sizes = self.sizes[entities]
        lane, _ = segments(sizes)
        keys = self.pair_keys[concat_ranges(self.start[entities], sizes)] % self.stride
        keys += lane * self.stride
        return Subspaces.from_sizes(keys, sizes, self.stride)

    def restrict_with_ids(self, entities: np.ndarray, E: int, D: int) -> tuple[Subspaces, np.ndarray]:
        """:meth:`restrict` of ``entities`` and ``(E, D)`` the lanes' feature ids, -1 padded (lanes past
        ``len(entities)`` all -1): a block's subspaces and ``feature_ids``, by the native helper in one pass
        (:func:`lljax.solve.kernels.restrict_subspaces`) when it is enabled, else by NumPy, with the same arrays."""
        if kernels.enabled():
            keys, start, feature_ids = kernels.restrict_subspaces(self, entities, E, D)
            e = len(entities)
            return Subspaces(keys, start[:e + 1], self.stride, self.sizes[entities]), feature_ids
        local = self.restrict(entities)
        feature_ids = np.full((E, D), -1, np.int64)
        feature_ids[:len(entities)] = local.feature_ids(D)
        return local, feature_ids

    def local_index(self, entity: np.ndarray, feature_ids: np.ndarray, guess: np.ndarray | None = None) -> np.ndarray:
        """Local column of each (entity, feature) pair (the pair must belong to the subspace).

        ``guess``: optional candidate column of each pair, e.g. its rank in its row, which is right
        whenever a row lists its entity's whole subspace in order (the usual layout of dense-per-entity
        features). Each guess is checked against the subspace; only the wrong ones are searched.
        """
        keys = entity * self.stride + feature_ids
        if guess is None or not len(keys):
            return np.searchsorted(self.pair_keys, keys) - self.start[entity]
        outside = guess >= self.sizes[entity]
        position = self.start[entity] + np.where(outside, 0, guess)
        wrong = outside | (self.pair_keys[np.minimum(position, len(self.pair_keys) - 1)] != keys)
        if not wrong.any():
            return guess
        out = np.array(guess, np.int64)
        out[wrong] = np.searchsorted(self.pair_keys, keys[wrong]) - self.start[entity[wrong]]
        return out

    def feature_ids(self, width: int) -> np.ndarray:
        """``(U, width)`` global feature ids of every entity's subspace, -1 padded."""
        out = np.full((len(self.sizes), width), -1, np.int64)
        lanes, cols = segments(self.sizes)
        out[lanes, cols] = self.pair_keys % self.stride
        return out


def local_subspaces(dataset: Dataset, prior_owner: np.ndarray, prior_feature_ids: np.ndarray,
                    rows: tuple[np.ndarray, np.ndarray] | None = None, repeats: np.ndarray | None = None,
                    ) -> Subspaces:
    """Union of each entity's data features and prior features, sorted by global id.

    With ``rows`` (and the native helper built and enabled, and a feature space of at most
    ``NATIVE_MARK_MAX`` ids): entity by entity in one pass over the nonzeros
    (:func:`lljax.solve.kernels.subspace_keys`). Else by NumPy: the (entity, feature) keys of the
    nonzeros are deduplicated a cache-sized chunk of rows at a time (rows of one entity mostly
    repeat its features), so no ``(nnz,)`` key array is sorted; or, when the key space is small,
    marked in a table (no sort at all). All paths give the same keys.

    Args:
      dataset: the examples.
      prior_owner: ``(k,)`` entity code (into ``dataset.entity_keys``) of each stored prior pair.
      prior_feature_ids: ``(k,)`` feature id of each stored prior pair.
      rows: optional ``(row_order, row_start)``: the examples grouped by entity code, and each
        entity's offset in ``row_order`` (``(U + 1,)``).
      repeats: optional ``(n,)`` uint8 array, written by the native pass (which compares each row's ids with
        the row before it, :func:`lljax.solve.kernels.subspace_keys`) and left as it is by the NumPy paths:
        1 at each position of ``row_order`` whose row repeats the ids of the row before it (of the same
        entity), else 0 (:attr:`lljax.solve.blocks.RowSource.repeats`).
    """
    stride = max(dataset.num_features, int(prior_feature_ids.max()) + 1 if prior_feature_ids.size else 0, 1)
    if dataset.num_entities * stride >= 2**63:  # the int64 keys entity * stride + feature_id would overflow
        raise input_error("feature_ids", stride - 1,
                          f"(the largest feature id) is too large for {dataset.num_entities} entities in one update: "
                          "entities x (largest id + 1) must be < 2**63; number the features densely (an IndexMap), "
                          "or update fewer entities at a time")
    if dataset.intercept_id is not None:  # every entity's rows have the (implicit) intercept
        prior_owner = np.concatenate([prior_owner, np.arange(dataset.num_entities, dtype=np.int64)])
        prior_feature_ids = np.concatenate([prior_feature_ids,
                                            np.full(dataset.num_entities, dataset.intercept_id, np.int64)])
    if rows is not None and stride <= NATIVE_MARK_MAX and kernels.enabled():
        keys, sizes, _ = kernels.subspace_keys(dataset.given_indptr, dataset.given_feature_ids, rows[0], rows[1],
                                               prior_owner, prior_feature_ids, stride, repeats)
        return Subspaces.from_sizes(keys, sizes, stride)
    space = dataset.num_entities * stride
    nnz = len(dataset.given_feature_ids)
    prior_keys = prior_owner * stride + prior_feature_ids
    if space <= max(TABLE_MIN, TABLE_PER_KEY * (nnz + len(prior_keys))):
        marks = np.zeros(space, bool)
        for keys in _nonzero_keys(dataset, stride):
            marks[keys] = True
        marks[prior_keys] = True
        return Subspaces.from_keys(np.flatnonzero(marks), dataset.num_entities, stride)
    parts = [_distinct(keys) for keys in _nonzero_keys(dataset, stride)]
    return Subspaces.from_keys(_distinct(np.concatenate(parts + [prior_keys])), dataset.num_entities, stride)


def _nonzero_keys(dataset: Dataset, stride: int) -> Iterator[np.ndarray]:
    """Yield ``entity * stride + feature_id`` of the dataset's given nonzeros (not the implicit intercept),
    about ``KEY_CHUNK`` at a time."""
    indptr = dataset.given_indptr
    n = dataset.num_examples
    bounds = np.searchsorted(indptr, np.arange(0, indptr[-1], KEY_CHUNK), side="right") - 1
    bounds = np.unique(np.concatenate([bounds, [n]]))
    for r0, r1 in zip(bounds[:-1], bounds[1:]):
        keys = np.repeat(dataset.entity[r0:r1] * stride, np.diff(indptr[r0: r1 + 1]))
        keys += dataset.given_feature_ids[indptr[r0]: indptr[r1]]
        yield keys


def _distinct(keys: np.ndarray) -> np.ndarray:
    """Sorted distinct values of ``keys`` (sorts ``keys`` in place)."""
    keys.sort()
    return keys[np.concatenate([[True], keys[1:] != keys[:-1]])] if len(keys) else keys
