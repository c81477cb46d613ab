"""Small vectorized index helpers shared by the host-side modules."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["concat_ranges", "next_pow2", "stable_order", "group_rank", "segments", "packed_diagonal"]


def next_pow2(x: npt.ArrayLike) -> np.ndarray:
    """Smallest power of two >= x (elementwise, x >= 1)."""
    x = np.maximum(np.asarray(x, np.int64), 1)
    return (1 << np.ceil(np.log2(x)).astype(np.int64)).astype(np.int64)


def concat_ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + c)`` for each (s, c), vectorized."""
    counts = np.asarray(counts, np.int64)
    total = int(counts.sum())
    ends = np.cumsum(counts)
    return np.repeat(np.asarray(starts, np.int64) - (ends - counts), counts) + np.arange(total, dtype=np.int64)


def stable_order(keys: np.ndarray) -> np.ndarray:
    """``np.argsort(keys, kind="stable")`` of a 1-D array: ``arange(len(keys))`` without a sort when ``keys`` are
    in order already (rows grouped by entity, the usual layout of a big dataset), which one comparison pass finds."""
    keys = np.asarray(keys)
    if len(keys) < 2 or bool((keys[1:] >= keys[:-1]).all()):
        return np.arange(len(keys), dtype=np.int64)
    return np.argsort(keys, kind="stable")


def group_rank(group: np.ndarray, num_groups: int) -> np.ndarray:
    """``(n,)`` position of each element among the elements of its group, in array order.

    E.g. ``group_rank([2, 0, 2, 2], 3) == [0, 0, 1, 2]``.
    """
    order = stable_order(group)
    counts = np.bincount(group, minlength=num_groups)
    starts = np.cumsum(counts) - counts
    rank = np.empty(len(group), np.int64)
    rank[order] = np.arange(len(group)) - np.repeat(starts, counts)
    return rank


def segments(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For segments of ``counts`` elements laid one after the other: each element's segment and its
    rank within it. E.g. ``segments([2, 0, 3]) == ([0, 0, 2, 2, 2], [0, 1, 0, 1, 2])``."""
    counts = np.asarray(counts, np.int64)
    segment = np.repeat(np.arange(len(counts)), counts)
    rank = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    return segment, rank


def packed_diagonal(sizes: np.ndarray) -> np.ndarray:
    """Positions of the diagonal entries in ``(d_u, d_u)`` row-major matrices stored one after the other,
    one position per (entity, feature), in order."""
    sizes = np.asarray(sizes, np.int64)
    segment, rank = segments(sizes)
    starts = np.cumsum(sizes**2) - sizes**2
    return starts[segment] + rank * (sizes[segment] + 1)
