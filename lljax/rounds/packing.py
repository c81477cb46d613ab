"""Packing: group a dataset by entity into bucketed, padded blocks, and plan them.

For the entities of a :class:`Dataset` (and their stored priors) this module

1. gives each entity its *local feature subspace*: the sorted union of the features in its
   data (the intercept included) and in its stored prior;
2. buckets entities by rows rounded up to a power of two (at least ``_MIN_ROWS``) and features
   rounded up by :func:`padded_features`, so only a few shapes are ever compiled, and cuts each
   bucket along the entity axis into blocks that fit a memory budget (the entity count of a block
   is also a power of two, at least ``_MIN_LANES``);
3. builds a padded :class:`~lljax.solve.newton.Block` per block with vectorized NumPy (padding
   rows have weight 0; padding features have no data, prior mean 0 and are marked by id -1;
   padding entities are all padding), or a sparse-row block for the wide solver.

No step loops in Python over examples or entities; loops run over blocks only.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from lljax.data.arrays import concat_ranges, next_pow2, segments
from lljax.data.dataset import Dataset, prepend_intercept
from lljax.solve import kernels
from lljax.solve.lbfgs import MEMORY_SIZE
from lljax.solve.newton import Block
from lljax.solve.span import SparseBlock
from lljax.state.store import EntityStore

__all__ = ["Subspaces", "BlockPlan", "local_subspaces", "plan_blocks", "build_block", "build_sparse_block",
           "block_solver", "WIDE_FEATURES"]

# Smallest padded sizes: tiny buckets cost little to pad and each distinct shape costs a compile.
_MIN_ROWS = 4
_MIN_LANES = 8

# local_subspaces' native path keeps a mark per feature id (4 bytes each) up to this many ids.
_NATIVE_MARK_MAX = 1 << 25
# local_subspaces marks keys in a table (1 byte per possible (entity, feature) key) instead of sorting
# them when the key space is at most _TABLE_PER_KEY times the number of keys (or _TABLE_MIN); it reads
# the nonzeros _KEY_CHUNK at a time.
_TABLE_PER_KEY = 4
_TABLE_MIN = 1 << 20
_KEY_CHUNK = 1 << 21

# From this padded feature count on, blocks of models without full precision leave the dense D x D Newton
# solver (see block_solver). Measured crossover (benchmarks/bench_wide.py, N = 64, entities/s):
# L-BFGS vs Newton: D=32 5.2k vs 6.8k, D=64 3.5k vs 1.9k.
WIDE_FEATURES = 64

# Solver temporaries (X * curvature, a few D x D matrices, line-search copies) on top of
# the block's own arrays; used to turn a memory budget into a block size.
_WORKSPACE_FACTOR = 4


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
        sizes = np.bincount(pair_keys // stride, minlength=num_entities)
        start = np.zeros(num_entities + 1, np.int64)
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
        return Subspaces.from_keys(keys, len(entities), self.stride)

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
                    rows: tuple[np.ndarray, np.ndarray] | None = None) -> Subspaces:
    """Union of each entity's data features and prior features, sorted by global id.

    With ``rows`` (and the native helper built and enabled, and a feature space of at most
    ``_NATIVE_MARK_MAX`` ids): entity by entity in one pass over the nonzeros
    (:func:`lljax.kernels.subspace_keys`). Else by NumPy: the (entity, feature) keys of the
    nonzeros are deduplicated a cache-sized chunk of rows at a time (rows of one entity mostly
    repeat its features), so no ``(nnz,)`` key array is sorted; or, when the key space is small,
    marked in a table (no sort at all). All paths give the same keys.

    Args:
      dataset: the examples.
      prior_owner: ``(k,)`` entity code (into ``dataset.entity_keys``) of each stored prior pair.
      prior_feature_ids: ``(k,)`` feature id of each stored prior pair.
      rows: optional ``(row_order, row_start)``: the examples grouped by entity code, and each
        entity's offset in ``row_order`` (``(U + 1,)``).
    """
    stride = max(dataset.num_features, int(prior_feature_ids.max()) + 1 if prior_feature_ids.size else 0, 1)
    if dataset.intercept_id is not None:  # every entity's rows have the (implicit) intercept
        prior_owner = np.concatenate([prior_owner, np.arange(dataset.num_entities, dtype=np.int64)])
        prior_feature_ids = np.concatenate([prior_feature_ids,
                                            np.full(dataset.num_entities, dataset.intercept_id, np.int64)])
    if rows is not None and stride <= _NATIVE_MARK_MAX and kernels.enabled():
        keys = kernels.subspace_keys(dataset.given_indptr, dataset.given_feature_ids, rows[0], rows[1], prior_owner,
                                     prior_feature_ids, stride)
        return Subspaces.from_keys(keys, dataset.num_entities, stride)
    space = dataset.num_entities * stride
    nnz = len(dataset.given_feature_ids)
    prior_keys = prior_owner * stride + prior_feature_ids
    if space <= max(_TABLE_MIN, _TABLE_PER_KEY * (nnz + len(prior_keys))):
        marks = np.zeros(space, bool)
        for keys in _nonzero_keys(dataset, stride):
            marks[keys] = True
        marks[prior_keys] = True
        return Subspaces.from_keys(np.flatnonzero(marks), dataset.num_entities, stride)
    parts = [_distinct(keys) for keys in _nonzero_keys(dataset, stride)]
    return Subspaces.from_keys(_distinct(np.concatenate(parts + [prior_keys])), dataset.num_entities, stride)


def _nonzero_keys(dataset: Dataset, stride: int):
    """Yield ``entity * stride + feature_id`` of the dataset's given nonzeros (not the implicit intercept),
    about ``_KEY_CHUNK`` at a time."""
    indptr = dataset.given_indptr
    n = dataset.num_examples
    bounds = np.searchsorted(indptr, np.arange(0, indptr[-1], _KEY_CHUNK), side="right") - 1
    bounds = np.unique(np.concatenate([bounds, [n]]))
    for r0, r1 in zip(bounds[:-1], bounds[1:]):
        keys = np.repeat(dataset.entity[r0:r1] * stride, np.diff(indptr[r0: r1 + 1]))
        keys += dataset.given_feature_ids[indptr[r0]: indptr[r1]]
        yield keys


def _distinct(keys: np.ndarray) -> np.ndarray:
    """Sorted distinct values of ``keys`` (sorts ``keys`` in place)."""
    keys.sort()
    return keys[np.concatenate([[True], keys[1:] != keys[:-1]])] if len(keys) else keys


class BlockPlan(NamedTuple):
    """One block to build: ``entities (e,)`` dataset entity codes, padded to ``lanes`` entities
    of ``rows`` rows and ``features`` features each."""

    entities: np.ndarray
    lanes: int
    rows: int
    features: int


def _bytes_per_lane(rows: int, features: int, itemsize: int, full_precision: bool, native_wide: bool = False) -> int:
    solver = block_solver(rows, features, full_precision)
    if solver == "wide" and native_wide:  # sparse rows (~rows * 32 slots) and vectors; the native kernel's
        floats = 48 * rows + 8 * features  # N x N workspace is per thread, not per lane
    elif solver == "wide":  # sparse rows (~rows * 16 stored values), the dense X^T of the gram, N x N matrices
        floats = rows * features + 3 * rows * rows + 24 * rows + 8 * features
    elif solver == "lbfgs":  # no D x D matrix: X, X^2 and the L-BFGS history
        floats = 2 * rows * features + 3 * rows + (2 * MEMORY_SIZE + 12) * features
    else:
        prior = features * features if full_precision else features
        floats = rows * features + 3 * rows + 2 * features + prior + features * features
    return _WORKSPACE_FACTOR * (floats * itemsize + 8 * features)


def block_solver(rows: int, features: int, full_precision: bool) -> str:
    """The solver of a block of ``rows`` x ``features`` padded entities: ``"newton"`` (dense, ``D x D``
    Cholesky; full precision or fewer than ``WIDE_FEATURES`` features), else ``"wide"`` (Newton in the
    span of the rows on a sparse block, :mod:`lljax.solve.span`; ``rows <= features``) or ``"lbfgs"``
    (:mod:`lljax.solve.lbfgs`; more rows than features, where an ``N x N`` system would cost more than ``D x D``)."""
    if full_precision or features < WIDE_FEATURES:
        return "newton"
    return "wide" if rows <= features else "lbfgs"


def padded_features(features: np.ndarray) -> np.ndarray:
    """Padded feature count of each entity's block: the next power of two, or three quarters of it
    from 12 on (12, 16, 24, 32, 48, ...).

    The solver's cost grows as D^2 (Hessian) to D^3 (Cholesky), so 9 features padded to 12 instead of
    16 made a Newton solve 1.35-1.45x faster (measured: 512 entities x 4 rows, 256 x 64 rows), at the
    price of one more compiled shape per octave where both sizes occur.
    """
    p = next_pow2(features)
    three_quarters = 3 * p // 4
    return np.where((p >= 16) & (features <= three_quarters), three_quarters, p)


def plan_blocks(rows_per_entity: np.ndarray, features_per_entity: np.ndarray, itemsize: int,
                full_precision: bool, memory_budget: int, native_wide: bool = False) -> list[BlockPlan]:
    """Bucket entities by ``(next_pow2(rows), padded_features(features))`` and cut buckets into blocks.

    Args:
      rows_per_entity, features_per_entity: ``(U,)`` counts.
      itemsize: bytes per float.
      full_precision: whether the prior precision is ``(D, D)``.
      memory_budget: bytes a block (with solver workspace) may use.
      native_wide: wide blocks run on the native kernel (CPU), whose workspace is per thread, not per
        entity: their blocks hold more entities (fewer, larger blocks; 128 blocks of 4 entities made the
        per-block host work most of an update at D = 1024).
    Returns:
      Blocks ordered by bucket, each with at most ``max_lanes`` entities, a power of two.
    """
    rows_b = next_pow2(np.maximum(rows_per_entity, _MIN_ROWS))
    feats_b = padded_features(features_per_entity)
    order = np.lexsort((feats_b, rows_b))
    bucket_key = rows_b[order] * (1 << 32) + feats_b[order]
    boundaries = np.flatnonzero(np.diff(bucket_key)) + 1
    plans = []
    for members in np.split(order, boundaries):
        if members.size == 0:
            continue
        rows, features = int(rows_b[members[0]]), int(feats_b[members[0]])
        per_lane = _bytes_per_lane(rows, features, itemsize, full_precision, native_wide)
        max_lanes = int(next_pow2(max(1, memory_budget // per_lane) + 1) // 2)  # largest pow2 <= budget
        # A bucket that fits one block gets the smallest power of two that holds it; a bucket cut into
        # several blocks pads its last one to full size too, so each bucket compiles one shape.
        lanes = max_lanes if members.size > max_lanes else min(max_lanes, max(int(next_pow2(members.size)), _MIN_LANES))
        for lo in range(0, members.size, max_lanes):
            plans.append(BlockPlan(members[lo: lo + max_lanes], lanes, rows, features))
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
    rows, lane, row_cell, y, w, offset = _block_rows(dataset, labels, plan, row_order, row_start)

    local = subspaces.restrict(ents)
    X = _scatter_rows(dataset, rows, lane, row_cell, local, E * N, D).astype(dtype, copy=False)

    feature_ids = np.full((E, D), -1, np.int64)
    feature_ids[: len(ents)] = local.feature_ids(D)
    prior_mean, prior_precision = _priors(ents, E, D, local, store, slots, l2, dtype)
    return Block(X.reshape(E, N, D), y.reshape(E, N), w.reshape(E, N), offset.reshape(E, N),
                 feature_ids, prior_mean, prior_precision)


def _scatter_rows(dataset: Dataset, rows: np.ndarray, lane: np.ndarray, row_cell: np.ndarray, local: Subspaces,
                  cells: int, D: int) -> np.ndarray:
    """``(cells * D,)`` float64: each row's nonzeros added at ``row_cell * D + local column``.

    By the native helper (:func:`lljax.kernels.pack_rows`, one pass) when it is built and enabled, else
    by NumPy (local columns by :meth:`Subspaces.local_index` with the rank-in-row guess, then a
    ``bincount``); both add repeated (row, feature) values in float64 and give the same array.
    """
    if kernels.enabled():
        out = np.zeros(cells * D, np.float64)
        kernels.pack_rows(dataset.given_indptr, dataset.given_feature_ids, dataset.given_values, rows, row_cell, lane,
                          local, D, out, leading=dataset.intercept_id)
        return out
    nnz_per_row, feature_ids, values = _row_entries(dataset, rows)
    nz_cell = np.repeat(row_cell, nnz_per_row)
    nz_lane, rank_in_row = segments(nnz_per_row)
    col = local.local_index(lane[nz_lane], feature_ids, guess=rank_in_row)
    return np.bincount(nz_cell * D + col, weights=values, minlength=cells * D)


def _row_entries(dataset: Dataset, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The entries of the dataset rows ``rows``, row after row, the implicit intercept first in each:
    ``(entries per row (R,), feature ids, values)`` (the NumPy packing paths)."""
    indptr = dataset.given_indptr
    nnz_per_row = indptr[rows + 1] - indptr[rows]
    nz = concat_ranges(indptr[rows], nnz_per_row)
    feature_ids, values = dataset.given_feature_ids[nz].astype(np.int64), dataset.given_values[nz]
    if dataset.intercept_id is None:
        return nnz_per_row, feature_ids, values
    _, feature_ids, values = prepend_intercept(np.r_[0, np.cumsum(nnz_per_row)], feature_ids, values,
                                               dataset.intercept_id)
    return nnz_per_row + 1, feature_ids, values


def _block_rows(dataset: Dataset, labels: np.ndarray, plan: BlockPlan, row_order: np.ndarray,
                row_start: np.ndarray):
    """The examples of a block's entities and their padded per-row arrays.

    Returns ``(rows, lane, row_cell, y, w, offset)``: ``rows`` the dataset examples, entity by entity;
    ``lane`` and ``row_cell = lane * N + rank`` their lane and flat ``(E * N)`` position; ``y``, ``w``,
    ``offset`` ``(E * N,)`` with zeros in padding rows (weight 0 marks them). By the native helper
    (:func:`lljax.kernels.block_rows`, one pass) when it is built and enabled, else by NumPy: the same arrays.
    """
    E, N = plan.lanes, plan.rows
    dtype = dataset.dtype
    y = np.zeros(E * N, dtype)
    w = np.zeros(E * N, dtype)
    offset = np.zeros(E * N, dtype)
    if kernels.enabled():
        rows, lane, row_cell = kernels.block_rows(row_order, row_start, plan.entities, N,
                                                  (labels, dataset.weight, dataset.offset), (y, w, offset))
        return rows, lane, row_cell, y, w, offset
    n_rows = row_start[plan.entities + 1] - row_start[plan.entities]
    rows = row_order[concat_ranges(row_start[plan.entities], n_rows)]
    lane, rank = segments(n_rows)
    row_cell = lane * N + rank
    y[row_cell] = labels[rows]
    w[row_cell] = dataset.weight[rows]
    offset[row_cell] = dataset.offset[rows]
    return rows, lane, row_cell, y, w, offset


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
            owner = np.broadcast_to(positions[:, None], fids.shape)
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


def build_sparse_block(dataset: Dataset, labels: np.ndarray, plan: BlockPlan, subspaces: Subspaces,
                       row_order: np.ndarray, row_start: np.ndarray, store: EntityStore | None,
                       slots: np.ndarray, l2: float) -> SparseBlock:
    """Build the padded NumPy :class:`~lljax.solve.span.SparseBlock` of ``plan`` (arguments as :func:`build_block`).

    Each row keeps its nonzeros as (local column, value) in ``K = next_pow2(most nonzeros in a row)``
    slots; nothing of size ``N x D`` is formed. Priors are diagonal (the wide solver's case).
    """
    E, N, D = plan.lanes, plan.rows, plan.features
    ents = plan.entities
    dtype = dataset.dtype
    rows, lane, row_cell, y, w, offset = _block_rows(dataset, labels, plan, row_order, row_start)

    entries = dataset.given_indptr[rows + 1] - dataset.given_indptr[rows] + (dataset.intercept_id is not None)
    K = int(next_pow2(max(int(entries.max(initial=0)), 1)))
    local = subspaces.restrict(ents)
    cols = np.zeros(E * N * K, np.int32)
    if kernels.enabled():  # one pass (see _scatter_rows)
        vals = np.zeros(E * N * K, np.float64)
        kernels.pack_rows(dataset.given_indptr, dataset.given_feature_ids, dataset.given_values, rows, row_cell, lane,
                          local, D, vals, slot_cols=cols, K=K, leading=dataset.intercept_id)
        vals = vals.astype(dtype, copy=False)
    else:
        nnz_per_row, feature_ids, values = _row_entries(dataset, rows)
        slot = np.repeat(row_cell * K, nnz_per_row) + segments(nnz_per_row)[1]
        vals = np.zeros(E * N * K, dtype)
        cols[slot] = local.local_index(np.repeat(lane, nnz_per_row), feature_ids)
        vals[slot] = values

    feature_ids = np.full((E, D), -1, np.int64)
    feature_ids[: len(ents)] = local.feature_ids(D)
    prior_mean, prior_precision = _priors(ents, E, D, local, store, slots, l2, dtype)
    return SparseBlock(cols.reshape(E, N, K), vals.reshape(E, N, K), y.reshape(E, N), w.reshape(E, N),
                       offset.reshape(E, N), feature_ids, prior_mean, prior_precision)
