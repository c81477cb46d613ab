"""A round: one update's working set, and the blocks built from it.

:meth:`Round.prepare` gathers what an update of a dataset's entities needs (rows grouped
by entity, local feature subspaces, the stored rows of its entities, read once); :meth:`Round.plan`
buckets the entities into :class:`~lljax.rounds.plan.BlockPlan` s, each with the method
:mod:`lljax.solve.registry` chooses for its shape; :meth:`Round.build` builds a plan's padded block in
its method's layout with vectorized NumPy (or the native host helpers): the same beginning for every
layout (the block's rows, labels, weights, offsets), the layout's design (a dense ``(E, N, D)`` matrix,
or each row's nonzeros in ``K`` slots), and the same end (global feature ids, prior means and
precisions). Padding rows have weight 0; padding features have no data, prior mean 0 and id -1; padding
entities are all padding.

No step loops in Python over examples or entities; loops run over blocks only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from lljax.data.arrays import concat_ranges, next_pow2, segments, stable_order
from lljax.data.dataset import Dataset, prepend_intercept
from lljax.rounds.buffers import Buffers
from lljax.rounds.plan import BlockPlan, plan_blocks
from lljax.rounds.subspaces import Subspaces, local_subspaces
from lljax.solve import kernels, registry
from lljax.solve.base import SolverConfig
from lljax.solve.blocks import Block, RowsBlock, RowSource, SparseBlock
from lljax.solve.losses import encode_labels
from lljax.state.store import EntityStore, GatheredRows, StoredRows, unpack_upper

__all__ = ["Round", "group_rows", "block_rows", "scatter_rows", "row_entries", "priors"]


class Round(NamedTuple):
    """What one update of a dataset's entities works on (host-side NumPy arrays).

    Attributes:
      dataset: the examples (``n`` rows of ``U`` entities).
      loss: the loss's name; its labels are encoded block by block (:func:`block_rows`), or by the kernel as it
        reads them (:class:`~lljax.solve.blocks.RowSource`), never for the whole dataset at once.
      row_order: ``(n,)`` example indices grouped by entity (stable).
      row_start: ``(U+1,)`` offsets of each entity's examples in ``row_order``.
      subspaces: local feature subspaces of all dataset entities.
      store: stored priors (``None``: every entity cold-starts).
      slots: ``(U,)`` store slot of each dataset entity (-1: not stored).
      stored: the stored rows of the dataset's entities (request positions = entity codes), read from the
        store once (``None`` without a store): the local subspaces, every block's priors and the
        update's undo snapshot come from it.
      l2: cold-start prior precision lambda of features without a stored prior.
      penalize_intercept: False: the intercept (feature id 0) cold-starts with precision 0 instead (it has
        no L2 term either, :attr:`lljax.solve.base.SolverConfig.penalize_intercept`).
      row_repeats: ``(n,)`` uint8 by position in ``row_order``: 1 where a row repeats the feature ids of the
        row before it (:attr:`lljax.solve.blocks.RowSource.repeats`; all 0 where the subspaces were found
        without looking at rows one by one), or ``None``.
    """

    dataset: Dataset
    loss: str
    row_order: np.ndarray
    row_start: np.ndarray
    subspaces: Subspaces
    store: EntityStore | None
    slots: np.ndarray
    stored: GatheredRows | None
    l2: float
    penalize_intercept: bool = True
    row_repeats: np.ndarray | None = None

    @classmethod
    def prepare(cls, dataset: Dataset, loss: str, store: EntityStore | None, l2: float,
                penalize_intercept: bool = True, rows: np.ndarray | None = None) -> Round:
        """The working set of an update of every entity of ``dataset``, with ``store``'s priors; ``rows``: each
        entity's row count (``np.bincount(dataset.entity)``), when the caller has it already."""
        U = dataset.num_entities
        stored = None
        if store is None:
            slots = np.full(U, -1, np.int64)
            owner, prior_fids = np.zeros(0, np.int64), np.zeros(0, np.int64)
        else:
            slots = store.lookup(dataset.entity_keys)
            stored = store.gather(slots)
            prior = stored.pairs()
            owner, prior_fids = prior.owner, prior.feature_ids
        row_start = np.zeros(U + 1, np.int64)
        if rows is None:
            rows = np.bincount(dataset.entity, minlength=U)
        elif np.shape(rows) != (U,):
            raise ValueError(f"rows: expected each of the {U} entities' row count, got shape {np.shape(rows)}")
        np.cumsum(rows, out=row_start[1:])
        if row_start[-1] != dataset.num_examples:
            raise ValueError(f"rows: the row counts add up to {row_start[-1]}, not the {dataset.num_examples} rows")
        row_order = group_rows(dataset.entity, row_start)
        repeats = np.zeros(len(row_order), np.uint8)
        subspaces = local_subspaces(dataset, owner, prior_fids, rows=(row_order, row_start), repeats=repeats)
        return cls(dataset, loss, row_order, row_start, subspaces, store, slots, stored, l2, penalize_intercept,
                   repeats)

    @property
    def full_precision(self) -> bool:
        """Whether the stored (and solved) precisions are ``(D, D)``."""
        return self.store is not None and self.store.precision == "full"

    def plan(self, memory_budget: int, config: SolverConfig) -> list[BlockPlan]:
        """The round's blocks: buckets of padded shape, each with its method and cut to ``memory_budget``."""
        itemsize = self.dataset.dtype.itemsize

        def choose(rows: int, features: int) -> tuple[str, str | None, int]:
            method = registry.choose_method(rows, features, self.full_precision)
            layout = registry.choose_layout(method, rows, features, self.dataset.dtype, config)
            return (method.name, None if layout == method.layout else layout,
                    registry.bytes_per_lane(method, rows, features, itemsize, self.full_precision, config))

        def compiles(rows: int, features: int) -> bool:  # False where the native kernel reads the blocks' rows
            return choose(rows, features)[1] != "rows"

        return plan_blocks(np.diff(self.row_start), self.subspaces.sizes, memory_budget, choose, compiles)

    def build(self, plan: BlockPlan, buffers: Buffers | None = None) -> Block | SparseBlock | RowsBlock:
        """The padded NumPy block of ``plan``, in its layout (``plan.layout``, else its method's); ``buffers``:
        where the block's arrays are allocated (aligned, see :mod:`lljax.rounds.buffers`; default: fresh),
        except ``feature_ids``, which is fresh memory always (the caller keeps it after the block is
        solved). A ``"rows"`` block holds the lanes' ranges of the round's rows instead of their data."""
        E, N, D = plan.lanes, plan.rows, plan.features
        ents = plan.entities
        dataset = self.dataset
        dtype = dataset.dtype
        buffers = Buffers() if buffers is None else buffers
        layout = plan.layout or registry.METHODS[plan.method].layout
        local, feature_ids = self.subspaces.restrict_with_ids(ents, E, D)
        cold = self.l2 if self.penalize_intercept else np.where(feature_ids == 0, 0.0, self.l2)
        stored = () if self.stored is None else self.stored.rows(ents)
        prior_mean, prior_precision = priors(stored, E, D, local, self.full_precision, cold, dtype, buffers)
        if layout == "rows":
            e = len(ents)
            lane_begin, lane_end, sizes = np.zeros(E, np.int64), np.zeros(E, np.int64), np.zeros(E, np.int64)
            lane_begin[:e], lane_end[:e], sizes[:e] = self.row_start[ents], self.row_start[ents + 1], local.sizes
            start = np.full(E + 1, local.start[-1], np.int64)
            start[: e + 1] = local.start
            return RowsBlock(self.row_source(), lane_begin, lane_end, local.pair_keys, start, sizes, local.stride, N,
                             feature_ids, prior_mean, prior_precision)
        rows, lane, row_cell, y, w, offset = block_rows(dataset, self.loss, plan, self.row_order, self.row_start,
                                                        buffers)
        if layout == "dense":
            X = _as_dtype(scatter_rows(dataset, rows, lane, row_cell, local, E * N, D, buffers), dtype, buffers)
            X = X.reshape(E, N, D)
        else:
            cols, vals = _row_slots(dataset, rows, lane, row_cell, local, E, N, D, buffers)
        rest = (y.reshape(E, N), w.reshape(E, N), offset.reshape(E, N), feature_ids, prior_mean, prior_precision)
        return Block(X, *rest) if layout == "dense" else SparseBlock(cols, vals, *rest)

    def row_source(self) -> RowSource:
        """The round's examples as :class:`~lljax.solve.blocks.RowsBlock` s read them (views of the dataset's
        arrays, in its dtype)."""
        dataset = self.dataset
        leading = -1 if dataset.intercept_id is None else int(dataset.intercept_id)
        return RowSource(dataset.given_indptr, dataset.given_feature_ids, dataset.given_values, dataset.label,
                         dataset.weight, dataset.offset, self.row_order, leading, self.loss == "logistic",
                         self.row_repeats)


def group_rows(entity: np.ndarray, row_start: np.ndarray) -> np.ndarray:
    """``(n,)`` rows grouped by entity code, each entity's in increasing order (``np.argsort(entity, kind="stable")``):
    the identity when they already are (found by one comparison pass), else a counting sort by the native helper
    (:func:`lljax.solve.kernels.group_rows`, one pass, whatever the order) when it is enabled, else NumPy's
    stable sort (:func:`lljax.data.arrays.stable_order`). ``row_start``: ``(U + 1,)`` each entity's first row in
    the result, the cumulative sum of ``np.bincount(entity)`` from 0 (the native path checks it, the others take
    it as given)."""
    if not kernels.enabled():
        return stable_order(entity)
    if len(entity) < 2 or bool((entity[1:] >= entity[:-1]).all()):
        return np.arange(len(entity), dtype=np.int64)
    return kernels.group_rows(entity, row_start)


def _as_dtype(values: np.ndarray, dtype: npt.DTypeLike, buffers: Buffers) -> np.ndarray:
    """``values`` in ``dtype``: ``values`` itself when it has that dtype, else a copy from ``buffers``."""
    if values.dtype == dtype:
        return values
    out = buffers.empty(values.shape, dtype)
    np.copyto(out, values, casting="unsafe")
    return out


def _row_slots(dataset: Dataset, rows: np.ndarray, lane: np.ndarray, row_cell: np.ndarray, local: Subspaces,
               E: int, N: int, D: int, buffers: Buffers) -> tuple[np.ndarray, np.ndarray]:
    """``(cols, vals)`` ``(E, N, K)``: each row's nonzeros as (local column, value) in
    ``K = next_pow2(most nonzeros in a row)`` slots; nothing of size ``N x D`` is formed."""
    dtype = dataset.dtype
    entries = dataset.given_indptr[rows + 1] - dataset.given_indptr[rows] + (dataset.intercept_id is not None)
    K = int(next_pow2(max(int(entries.max(initial=0)), 1)))
    cols = buffers.zeros(E * N * K, np.int32)
    if kernels.enabled():  # one pass (see scatter_rows)
        vals = buffers.zeros(E * N * K, np.float64)
        kernels.pack_rows(dataset.given_indptr, dataset.given_feature_ids, dataset.given_values, rows, row_cell, lane,
                          local, D, vals, slot_cols=cols, K=K, leading=dataset.intercept_id)
        vals = _as_dtype(vals, dtype, buffers)
    else:
        nnz_per_row, feature_ids, values = row_entries(dataset, rows)
        slot = np.repeat(row_cell * K, nnz_per_row) + segments(nnz_per_row)[1]
        vals = buffers.zeros(E * N * K, dtype)
        cols[slot] = local.local_index(np.repeat(lane, nnz_per_row), feature_ids)
        vals[slot] = values
    return cols.reshape(E, N, K), vals.reshape(E, N, K)


def scatter_rows(dataset: Dataset, rows: np.ndarray, lane: np.ndarray, row_cell: np.ndarray, local: Subspaces,
                  cells: int, D: int, buffers: Buffers | None = None) -> np.ndarray:
    """``(cells * D,)`` float64: each row's nonzeros added at ``row_cell * D + local column`` (in ``buffers``
    on the native path).

    By the native helper (:func:`lljax.solve.kernels.pack_rows`, one pass) when it is built and enabled, else
    by NumPy (local columns by :meth:`Subspaces.local_index` with the rank-in-row guess, then a
    ``bincount``); both add repeated (row, feature) values in float64 and give the same array.
    """
    if kernels.enabled():
        out = (Buffers() if buffers is None else buffers).zeros(cells * D, np.float64)
        kernels.pack_rows(dataset.given_indptr, dataset.given_feature_ids, dataset.given_values, rows, row_cell, lane,
                          local, D, out, leading=dataset.intercept_id)
        return out
    nnz_per_row, feature_ids, values = row_entries(dataset, rows)
    nz_cell = np.repeat(row_cell, nnz_per_row)
    nz_lane, rank_in_row = segments(nnz_per_row)
    col = local.local_index(lane[nz_lane], feature_ids, guess=rank_in_row)
    return np.bincount(nz_cell * D + col, weights=values, minlength=cells * D)


def row_entries(dataset: Dataset, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def block_rows(
    dataset: Dataset, loss: str, plan: BlockPlan, row_order: np.ndarray, row_start: np.ndarray,
    buffers: Buffers | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The examples of a block's entities and their padded per-row arrays.

    Returns ``(rows, lane, row_cell, y, w, offset)``: ``rows`` the dataset examples, entity by entity;
    ``lane`` and ``row_cell = lane * N + rank`` their lane and flat ``(E * N)`` position; ``y`` (the labels
    encoded for ``loss``), ``w``, ``offset`` ``(E * N,)`` with zeros in padding rows (weight 0 marks them), in
    ``buffers``. By the native helper (:func:`lljax.solve.kernels.block_rows`, one pass) when it is built and
    enabled, else by NumPy: the same arrays.
    """
    E, N = plan.lanes, plan.rows
    dtype = dataset.dtype
    buffers = Buffers() if buffers is None else buffers
    y = buffers.zeros(E * N, dtype)
    w = buffers.zeros(E * N, dtype)
    offset = buffers.zeros(E * N, dtype)
    if kernels.enabled():
        rows, lane, row_cell = kernels.block_rows(row_order, row_start, plan.entities, N,
                                                  (dataset.label, dataset.weight, dataset.offset), (y, w, offset))
        if loss == "logistic":
            y[row_cell] = encode_labels(loss, y[row_cell])
        return rows, lane, row_cell, y, w, offset
    n_rows = row_start[plan.entities + 1] - row_start[plan.entities]
    rows = row_order[concat_ranges(row_start[plan.entities], n_rows)]
    lane, rank = segments(n_rows)
    row_cell = lane * N + rank
    y[row_cell] = encode_labels(loss, dataset.label[rows])
    w[row_cell] = dataset.weight[rows]
    offset[row_cell] = dataset.offset[rows]
    return rows, lane, row_cell, y, w, offset


def priors(stored: Iterable[StoredRows], E: int, D: int, subspaces: Subspaces, full: bool, cold: float | np.ndarray,
           dtype: npt.DTypeLike, buffers: Buffers | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Prior mean ``(E, D)`` and precision ``(E, D)``/``(E, D, D)`` (``full``) in the local subspaces, in
    ``buffers``. A full prior with no stored row (a block of new entities only, e.g. every block of a cold start)
    is its cold diagonal, and is returned as ``(E, D)``: the solvers read a diagonal prior precision as the full
    one with zeros off the diagonal (the native kernel bit for bit; the pure-JAX path to rounding, as its CPU lane
    batches are sized by the block's arrays), and the ``(E, D, D)`` zeros are neither written nor read.

    Features without a stored prior (and every feature of a new entity) get mean 0 and
    precision ``cold`` (diagonal; a scalar, usually ``l2``, or ``(E, D)`` per local feature); the
    ``stored`` rows (:class:`lljax.state.store.StoredRows` per width, lanes as their ``positions``, as
    :meth:`lljax.state.store.GatheredRows.rows` gives them), are scattered to their local positions: by the native
    helper (:func:`lljax.solve.kernels.scatter_priors`, which reads the rows where they are) when it is built and
    enabled and no part is ``padded`` (no row of its width has a padding entry, id -1), else by NumPy (from copies
    of the rows), with the same result. With a padded part, one extra column ``D`` catches the padding entries'
    scatter; otherwise (the store's rows have exact widths) the arrays are ``D`` wide from the start, so the
    blocks get C-contiguous arrays (a strided one costs JAX a copy at dispatch).
    """
    stored = list(stored)
    full = full and bool(stored)
    width = D + 1 if any(part.padded for part in stored) else D
    buffers = Buffers() if buffers is None else buffers
    mean = buffers.zeros((E, width), dtype)
    if full:
        precision = buffers.zeros((E, width, width), dtype)
        precision.reshape(E, width * width)[:, :width * D:width + 1] = cold  # the diagonal's first D entries
    else:
        precision = buffers.empty((E, width), dtype)
        precision[:, :D] = cold
        precision[:, D:] = 0
    if width == D and kernels.enabled():
        for part in stored:
            kernels.scatter_priors(part.positions, part.rows, part.feature_ids, part.means, part.precision, full,
                                   subspaces, mean, None if part.precision is None else precision)
        return mean, precision
    for part in stored:
        fids, means, stored_precision = part.copied()
        valid = fids >= 0
        owner = np.broadcast_to(part.positions[:, None], fids.shape)
        local = np.where(valid, subspaces.local_index(owner, np.maximum(fids, 0)), D)
        lanes = part.positions[:, None]
        mean[lanes, local] = np.where(valid, means, 0)
        if stored_precision is None:
            continue
        if full:
            stored_precision = unpack_upper(stored_precision, fids.shape[1])
            precision[lanes[:, :, None], local[:, :, None], local[:, None, :]] = stored_precision
        else:
            precision[lanes, local] = stored_precision
    if full:
        return mean[:, :D], precision[:, :D, :D]
    return mean[:, :D], precision[:, :D]
