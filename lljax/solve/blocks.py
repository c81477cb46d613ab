"""The block layouts: what the packer (:mod:`lljax.rounds`) builds and the methods solve.

A block holds ``E`` entities (lanes), each padded to ``N`` rows and ``D`` local features. Padding never
changes a result: padding rows have weight 0, padding features have id -1 (no data, prior mean 0),
padding lanes are all padding. Two layouts:

- :class:`Block` (``"dense"``): the ``(E, N, D)`` design matrix, for dense Newton and L-BFGS;
- :class:`SparseBlock` (``"sparse"``): each row's nonzeros, ``K`` (column, value) slots per row and
  nothing of size ``N x D``, for Newton in the span of the rows (wide entities);
- :class:`RowsBlock` (``"rows"``): no design at all, but where each lane's examples are in the dataset's
  CSR rows (:class:`RowSource`); the native kernel reads them as it loads the lanes (host arrays only,
  the dense Newton method's layout where the kernel runs on the host).

:func:`sparse_from_dense`, :func:`dense_from_sparse` and :func:`dense_from_rows` convert between them
(NumPy, host side).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from lljax.solve.base import AnyArray
from lljax.solve.losses import encode_labels

__all__ = ["Block", "SparseBlock", "RowSource", "RowsBlock", "LAYOUTS", "sparse_from_dense", "dense_from_sparse",
           "dense_from_rows"]

LAYOUTS = ("dense", "sparse", "rows")


class Block(NamedTuple):
    """A padded block of ``E`` entities, each with ``N`` rows and ``D`` local features.

    Attributes:
      X: ``(E, N, D)`` design matrix in each entity's local feature subspace.
      y: ``(E, N)`` labels, already encoded for the loss (logistic: +-1).
      w: ``(E, N)`` example weights; 0 marks a padding row.
      offset: ``(E, N)`` fixed-effect scores.
      feature_ids: ``(E, D)`` global feature id of each local column, -1 for padding.
      prior_mean: ``(E, D)`` prior mean theta0 (0 on padding).
      prior_precision: ``(E, D)`` diagonal or ``(E, D, D)`` full prior precision P0.

    The fields are NumPy arrays as the packer (:mod:`lljax.rounds`) builds them, JAX arrays once put on a
    device, tracers inside the jitted solves (so do those of :class:`SparseBlock`).
    """

    X: AnyArray
    y: AnyArray
    w: AnyArray
    offset: AnyArray
    feature_ids: AnyArray
    prior_mean: AnyArray
    prior_precision: AnyArray


class SparseBlock(NamedTuple):
    """A padded block of ``E`` entities of ``N`` rows and ``D`` local features, each row stored as at
    most ``K`` nonzeros (nothing of size ``N x D``).

    Attributes:
      cols: ``(E, N, K)`` int32 local column of each stored value (padding: column 0, value 0).
      vals: ``(E, N, K)`` the values (0 on padding).
      y, w, offset: ``(E, N)`` as in :class:`Block` (weight 0 marks a padding row).
      feature_ids: ``(E, D)`` global feature id of each local column, -1 for padding.
      prior_mean: ``(E, D)`` prior mean theta0.
      prior_precision: ``(E, D)`` diagonal prior precision P0.
    """

    cols: AnyArray
    vals: AnyArray
    y: AnyArray
    w: AnyArray
    offset: AnyArray
    feature_ids: AnyArray
    prior_mean: AnyArray
    prior_precision: AnyArray


class RowSource(NamedTuple):
    """A dataset's examples as the :class:`RowsBlock` s of one update read them (host NumPy arrays, shared by
    the blocks, never copied per block).

    Attributes:
      indptr: ``(n + 1,)`` int64 CSR offsets of the ``n`` rows' stored nonzeros.
      feature_ids: ``(nnz,)`` int32 or int64 global feature ids.
      values: ``(nnz,)`` values, in the blocks' dtype.
      label: ``(n,)`` labels; weight, offset: ``(n,)``; all in the blocks' dtype.
      row_order: ``(n,)`` int64 row indices grouped by entity (a lane's rows are a range of it).
      leading: a feature id every row starts with, of value 1, before its stored nonzeros (the dataset's
        implicit intercept), or -1.
      logistic_labels: whether the labels are a logistic loss's as given, which the readers encode as
        :func:`lljax.solve.losses.encode_labels` does as they read them (1 -> +1, anything else -> -1; labels
        already encoded read the same), so that no ``(n,)`` array of encoded labels is made for an update.
      repeats: optional ``(n,)`` uint8 by position in ``row_order``: 1 where the row lists the same feature ids,
        byte for byte, as the row before it in ``row_order`` (of the same entity), as
        :func:`lljax.solve.kernels.subspace_keys` finds them; the native kernel then reuses that row's columns
        instead of reading the ids again. 0 (or ``None``: all 0) where not known.
    """

    indptr: np.ndarray
    feature_ids: np.ndarray
    values: np.ndarray
    label: np.ndarray
    weight: np.ndarray
    offset: np.ndarray
    row_order: np.ndarray
    leading: int
    logistic_labels: bool = False
    repeats: np.ndarray | None = None


class RowsBlock(NamedTuple):
    """A padded block of ``E`` entities of at most ``N`` rows and ``D`` local features whose rows stay where
    they are: lane ``l``'s examples are ``source.row_order[lane_begin[l]:lane_end[l]]`` (none for a padding
    lane), its local columns the positions of its features in its sorted subspace keys
    ``keys[start[l]:start[l] + sizes[l]]`` (``l * stride + feature id``). It stands for the :class:`Block`
    that :func:`dense_from_rows` builds, with the same results; nothing of size ``N x D`` is made.

    Attributes:
      source: the :class:`RowSource`.
      lane_begin, lane_end: ``(E,)`` int64.
      keys, start, sizes: the lanes' subspaces as :class:`lljax.rounds.subspaces.Subspaces` holds them:
        ``(P,)``, ``(E + 1,)`` offsets, ``(E,)``, int64; stride: an int.
      N: rows per lane, at most (the padded row count).
      feature_ids, prior_mean, prior_precision: as in :class:`Block`.
    """

    source: RowSource
    lane_begin: np.ndarray
    lane_end: np.ndarray
    keys: np.ndarray
    start: np.ndarray
    sizes: np.ndarray
    stride: int
    N: int
    feature_ids: np.ndarray
    prior_mean: np.ndarray
    prior_precision: np.ndarray


def dense_from_rows(block: RowsBlock) -> Block:
    """The dense :class:`Block` a :class:`RowsBlock` stands for (NumPy; repeated (row, feature) entries add up
    in float64, as the packer's)."""
    src = block.source
    E, D, N = len(block.lane_begin), block.feature_ids.shape[1], block.N
    dtype = src.values.dtype
    counts = block.lane_end - block.lane_begin
    lane = np.repeat(np.arange(E), counts)
    rank = np.arange(len(lane)) - np.repeat(np.cumsum(counts) - counts, counts)  # a row's rank in its lane
    rows = src.row_order[np.repeat(block.lane_begin, counts) + rank]
    cell = lane * N + rank
    y, w, offset = (np.zeros(E * N, dtype) for _ in range(3))
    labels = src.label[rows]
    y[cell] = encode_labels("logistic", labels) if src.logistic_labels else labels
    w[cell], offset[cell] = src.weight[rows], src.offset[rows]
    nnz = src.indptr[rows + 1] - src.indptr[rows]
    entry = np.repeat(src.indptr[rows], nnz) + np.arange(int(nnz.sum())) - np.repeat(np.cumsum(nnz) - nnz, nnz)
    entry_cell, entry_lane = np.repeat(cell, nnz), np.repeat(lane, nnz)
    fids, vals = src.feature_ids[entry].astype(np.int64), src.values[entry].astype(np.float64)
    if src.leading >= 0:  # each row's leading entry first, then its stored ones (the order of the sums)
        order = np.argsort(np.r_[cell, entry_cell], kind="stable")
        entry_cell, entry_lane = np.r_[cell, entry_cell][order], np.r_[lane, entry_lane][order]
        fids, vals = np.r_[np.full(len(rows), src.leading), fids][order], np.r_[np.ones(len(rows)), vals][order]
    keys = entry_lane * block.stride + fids
    at = np.minimum(np.searchsorted(block.keys, keys), max(len(block.keys) - 1, 0))
    col = at - block.start[entry_lane]
    if len(keys) and not ((block.keys[at] == keys) & (col < block.sizes[entry_lane])).all():
        raise ValueError("a row's feature is not in its lane's subspace")
    X = np.bincount(entry_cell * D + col, weights=vals, minlength=E * N * D).astype(dtype).reshape(E, N, D)
    return Block(X, y.reshape(E, N), w.reshape(E, N), offset.reshape(E, N), block.feature_ids, block.prior_mean,
                 block.prior_precision)


def sparse_from_dense(block: Block) -> SparseBlock:
    """The :class:`SparseBlock` of a dense :class:`Block` (NumPy; ``K``: most nonzeros in a row)."""
    X = np.asarray(block.X)
    E, N, D = X.shape
    count = (X != 0).sum(axis=-1)
    K = max(int(count.max(initial=0)), 1)
    lane, row, col = np.nonzero(X)
    flat = count.ravel()
    slot = np.arange(len(lane)) - np.repeat(np.cumsum(flat) - flat, flat)
    cols = np.zeros((E, N, K), np.int32)
    vals = np.zeros((E, N, K), X.dtype)
    cols[lane, row, slot] = col
    vals[lane, row, slot] = X[lane, row, col]
    return SparseBlock(cols, vals, *(np.asarray(a) for a in block[1:]))


def dense_from_sparse(block: SparseBlock) -> Block:
    """The dense :class:`Block` of a :class:`SparseBlock` (NumPy; repeated columns add up)."""
    cols, vals = np.asarray(block.cols), np.asarray(block.vals)
    E, N, K = cols.shape
    D = block.feature_ids.shape[1]
    cells = (np.arange(E * N)[:, None] * D + cols.reshape(E * N, K)).ravel()
    X = np.bincount(cells, weights=vals.ravel(), minlength=E * N * D).astype(vals.dtype).reshape(E, N, D)
    return Block(X, *(np.asarray(a) for a in block[2:]))
