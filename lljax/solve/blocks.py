"""The block layouts: what the packer (:mod:`lljax.rounds`) builds and the methods solve.

A block holds ``E`` entities (lanes), each padded to ``N`` rows and ``D`` local features. Padding never
changes a result: padding rows have weight 0, padding features have id -1 (no data, prior mean 0),
padding lanes are all padding. Two layouts:

- :class:`Block` (``"dense"``): the ``(E, N, D)`` design matrix, for dense Newton and L-BFGS;
- :class:`SparseBlock` (``"sparse"``): each row's nonzeros, ``K`` (column, value) slots per row and
  nothing of size ``N x D``, for Newton in the span of the rows (wide entities).

:func:`sparse_from_dense` and :func:`dense_from_sparse` convert between them (NumPy, host side).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from lljax.solve.base import AnyArray

__all__ = ["Block", "SparseBlock", "LAYOUTS", "sparse_from_dense", "dense_from_sparse"]

LAYOUTS = ("dense", "sparse")


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
