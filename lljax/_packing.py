"""Packing: group a dataset by entity into bucketed, padded blocks, and plan them.

For the entities of a :class:`Dataset` (and their stored priors) this module

1. gives each entity its *local feature subspace*: the sorted union of the features in its
   data (the intercept included) and in its stored prior;
2. buckets entities by ``(rows, features)`` rounded up to powers of two (rows at least
   ``_MIN_ROWS``), so only a few shapes are ever compiled, and cuts each bucket along the entity axis into blocks that
   fit a memory budget (the entity count of a block is also a power of two, at least ``_MIN_LANES``);
3. builds a padded :class:`~lljax._solve.Block` per block with vectorized NumPy (padding
   rows have weight 0; padding features have no data, prior mean 0 and are marked by id -1;
   padding entities are all padding).

No step loops in Python over examples or entities; loops run over blocks only.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._arrays import concat_ranges, next_pow2, segments
from ._dataset import Dataset
from ._lbfgs import MEMORY_SIZE
from ._solve import Block
from ._store import EntityStore

__all__ = ["Subspaces", "BlockPlan", "local_subspaces", "plan_blocks", "build_block", "uses_lbfgs", "WIDE_FEATURES"]

# Smallest padded sizes: tiny buckets cost little to pad and each distinct shape costs a compile.
_MIN_ROWS = 4
_MIN_LANES = 8

# local_subspaces uses a direct lookup table (4 bytes per possible (entity, feature) key) instead of a
# sort when the key space is at most _TABLE_PER_KEY times the number of keys (or _TABLE_MIN).
_TABLE_PER_KEY = 4
_TABLE_MIN = 1 << 20

# From this padded feature count on, blocks of models without full precision are solved by L-BFGS:
# measured crossover (entities/s, L-BFGS vs Newton): D=32 5.2k vs 6.8k, D=64 3.5k vs 1.9k.
WIDE_FEATURES = 64

# Solver temporaries (X * curvature, a few D x D matrices, line-search copies) on top of
# the block's own arrays; used to turn a memory budget into a block size.
_WORKSPACE_FACTOR = 4


class Subspaces(NamedTuple):
    """Local feature subspaces of all ``U`` entities of a dataset.

    Attributes:
      pair_keys: ``(P,)`` sorted ``entity * stride + feature_id`` of every (entity, feature) pair.
      start: ``(U+1,)`` offsets of each entity's pairs in ``pair_keys``; local index of a pair is
        its position minus ``start[entity]``.
      stride: the multiplier used in ``pair_keys`` (> every feature id).
      rank: ``None``, or ``(U * stride,)`` int32 position in ``pair_keys`` of every possible key
        (a direct lookup table, built when the key space is small enough; see :func:`local_subspaces`).
    """

    pair_keys: np.ndarray
    start: np.ndarray
    stride: int
    rank: np.ndarray | None = None

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.start)

    def local_index(self, entity: np.ndarray, feature_ids: np.ndarray) -> np.ndarray:
        """Local column of each (entity, feature) pair (the pair must belong to the subspace)."""
        keys = entity * self.stride + feature_ids
        position = self.rank[keys] if self.rank is not None else np.searchsorted(self.pair_keys, keys)
        return position - self.start[entity]

    def feature_ids(self, entity: np.ndarray, width: int) -> np.ndarray:
        """``(len(entity), width)`` global feature ids of the entities' subspaces, -1 padded."""
        sizes = self.sizes[entity]
        out = np.full((len(entity), width), -1, np.int64)
        lanes, cols = segments(sizes)
        out[lanes, cols] = self.pair_keys[concat_ranges(self.start[entity], sizes)] % self.stride
        return out


def local_subspaces(dataset: Dataset, prior_owner: np.ndarray, prior_feature_ids: np.ndarray) -> Subspaces:
    """Union of each entity's data features and prior features, sorted by global id.

    Args:
      dataset: the examples.
      prior_owner: ``(k,)`` entity code (into ``dataset.entity_keys``) of each stored prior pair.
      prior_feature_ids: ``(k,)`` feature id of each stored prior pair.
    """
    stride = max(dataset.num_features, int(prior_feature_ids.max()) + 1 if prior_feature_ids.size else 0, 1)
    keys = np.repeat(dataset.entity * stride, np.diff(dataset.indptr))  # one (nnz,) temporary, then in place
    keys += dataset.feature_ids
    if prior_owner.size:
        keys = np.concatenate([keys, prior_owner * stride + prior_feature_ids])
    space = dataset.num_entities * stride
    rank = None
    if space <= max(_TABLE_MIN, _TABLE_PER_KEY * len(keys)) and space < 2**31:
        # Small key space: mark the keys in a table; its nonzeros are the sorted distinct keys and its
        # running count is every key's position. O(keys + space) with no sort.
        marks = np.zeros(space, bool)
        marks[keys] = True
        pair_keys = np.flatnonzero(marks)
        rank = np.cumsum(marks, dtype=np.int32) - 1
    else:
        keys.sort()
        pair_keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])] if len(keys) else keys
    counts = np.bincount(pair_keys // stride, minlength=dataset.num_entities)
    start = np.zeros(dataset.num_entities + 1, np.int64)
    np.cumsum(counts, out=start[1:])
    return Subspaces(pair_keys, start, stride, rank)


class BlockPlan(NamedTuple):
    """One block to build: ``entities (e,)`` dataset entity codes, padded to ``lanes`` entities
    of ``rows`` rows and ``features`` features each."""

    entities: np.ndarray
    lanes: int
    rows: int
    features: int


def _bytes_per_lane(rows: int, features: int, itemsize: int, full_precision: bool) -> int:
    if uses_lbfgs(features, full_precision):  # no D x D matrix: X, X^2 and the L-BFGS history
        floats = 2 * rows * features + 3 * rows + (2 * MEMORY_SIZE + 12) * features
    else:
        prior = features * features if full_precision else features
        floats = rows * features + 3 * rows + 2 * features + prior + features * features
    return _WORKSPACE_FACTOR * (floats * itemsize + 8 * features)


def uses_lbfgs(features: int, full_precision: bool) -> bool:
    """Whether a block of ``features`` padded features is solved by L-BFGS instead of Newton: wide
    entities (``features >= WIDE_FEATURES``) of models that keep no full precision."""
    return not full_precision and features >= WIDE_FEATURES


def plan_blocks(rows_per_entity: np.ndarray, features_per_entity: np.ndarray, itemsize: int,
                full_precision: bool, memory_budget: int) -> list[BlockPlan]:
    """Bucket entities by ``(next_pow2(rows), next_pow2(features))`` and cut buckets into blocks.

    Args:
      rows_per_entity, features_per_entity: ``(U,)`` counts.
      itemsize: bytes per float.
      full_precision: whether the prior precision is ``(D, D)``.
      memory_budget: bytes a block (with solver workspace) may use.
    Returns:
      Blocks ordered by bucket, each with at most ``max_lanes`` entities, a power of two.
    """
    rows_b = next_pow2(np.maximum(rows_per_entity, _MIN_ROWS))
    feats_b = next_pow2(features_per_entity)
    order = np.lexsort((feats_b, rows_b))
    bucket_key = rows_b[order] * (1 << 32) + feats_b[order]
    boundaries = np.flatnonzero(np.diff(bucket_key)) + 1
    plans = []
    for members in np.split(order, boundaries):
        if members.size == 0:
            continue
        rows, features = int(rows_b[members[0]]), int(feats_b[members[0]])
        per_lane = _bytes_per_lane(rows, features, itemsize, full_precision)
        max_lanes = int(next_pow2(max(1, memory_budget // per_lane) + 1) // 2)  # largest pow2 <= budget
        for lo in range(0, members.size, max_lanes):
            chunk = members[lo: lo + max_lanes]
            lanes = min(max_lanes, max(int(next_pow2(chunk.size)), _MIN_LANES))
            plans.append(BlockPlan(chunk, lanes, rows, features))
    return plans


def build_block(dataset: Dataset, labels: np.ndarray, plan: BlockPlan, subspaces: Subspaces,
                row_order: np.ndarray, row_start: np.ndarray, store: EntityStore | None,
                slots: np.ndarray, l2: float) -> Block:
    """Build the padded NumPy :class:`Block` of ``plan``.

    Args:
      dataset: the examples.
      labels: ``(n,)`` labels encoded for the loss.
      plan: which entities and which padded shape.
      subspaces: local feature subspaces of all dataset entities.
      row_order: ``(n,)`` example indices sorted by entity (stable).
      row_start: ``(U+1,)`` offsets of each entity's examples in ``row_order``.
      store: stored priors (``None``: every entity cold-starts).
      slots: ``(U,)`` store slot of each dataset entity (-1: not stored).
      l2: cold-start prior precision lambda of features without a stored prior.
    """
    E, N, D = plan.lanes, plan.rows, plan.features
    ents = plan.entities
    dtype = dataset.dtype
    n_rows = row_start[ents + 1] - row_start[ents]
    rows = row_order[concat_ranges(row_start[ents], n_rows)]
    lane, rank = segments(n_rows)
    row_cell = lane * N + rank

    y = np.zeros(E * N, dtype)
    w = np.zeros(E * N, dtype)
    offset = np.zeros(E * N, dtype)
    y[row_cell] = labels[rows]
    w[row_cell] = dataset.weight[rows]
    offset[row_cell] = dataset.offset[rows]

    nnz_per_row = dataset.indptr[rows + 1] - dataset.indptr[rows]
    nz = concat_ranges(dataset.indptr[rows], nnz_per_row)
    nz_cell = np.repeat(row_cell, nnz_per_row)
    nz_entity = np.repeat(ents[lane], nnz_per_row)
    col = subspaces.local_index(nz_entity, dataset.feature_ids[nz])
    X = np.bincount(nz_cell * D + col, weights=dataset.values[nz], minlength=E * N * D).astype(dtype)

    feature_ids = np.full((E, D), -1, np.int64)
    feature_ids[: len(ents)] = subspaces.feature_ids(ents, D)
    prior_mean, prior_precision = _priors(ents, E, D, subspaces, store, slots, l2, dtype)
    return Block(X.reshape(E, N, D), y.reshape(E, N), w.reshape(E, N), offset.reshape(E, N),
                 feature_ids, prior_mean, prior_precision)


def _priors(ents, E, D, subspaces, store, slots, l2, dtype):
    """Prior mean ``(E, D)`` and precision ``(E, D)``/``(E, D, D)`` in the local subspaces.

    Features without a stored prior (and every feature of a new entity) get mean 0 and
    precision ``l2`` (diagonal); stored means and precisions are scattered to their local
    positions. One extra column ``D`` catches the scatter of padded stored entries.
    """
    full = store is not None and store.precision == "full"
    mean = np.zeros((E, D + 1), dtype)
    if full:
        precision = np.zeros((E, D + 1, D + 1), dtype)
        idx = np.arange(D)
        precision[:, idx, idx] = l2
    else:
        precision = np.full((E, D + 1), l2, dtype)
    if store is not None:
        for positions, fids, means, stored_precision in store.gather_dense(slots[ents]):
            valid = fids >= 0
            owner = np.broadcast_to(ents[positions][:, None], fids.shape)
            local = np.where(valid, subspaces.local_index(owner, np.maximum(fids, 0)), D)
            lanes = positions[:, None]
            mean[lanes, local] = np.where(valid, means, 0)
            if stored_precision is None:
                continue
            if full:
                precision[lanes[:, :, None], local[:, :, None], local[:, None, :]] = stored_precision
            else:
                precision[lanes, local] = stored_precision
    if full:
        return mean[:, :D], precision[:, :D, :D]
    return mean[:, :D], precision[:, :D]
