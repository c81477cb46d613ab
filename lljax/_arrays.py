"""Small vectorized index helpers shared by the host-side modules."""

from __future__ import annotations

import numpy as np

__all__ = ["concat_ranges", "next_pow2", "group_rank"]


def next_pow2(x: np.ndarray) -> np.ndarray:
    """Smallest power of two >= x (elementwise, x >= 1)."""
    x = np.maximum(np.asarray(x, np.int64), 1)
    return (1 << np.ceil(np.log2(x)).astype(np.int64)).astype(np.int64)


def concat_ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + c)`` for each (s, c), vectorized."""
    counts = np.asarray(counts, np.int64)
    total = int(counts.sum())
    ends = np.cumsum(counts)
    return np.repeat(np.asarray(starts, np.int64) - (ends - counts), counts) + np.arange(total, dtype=np.int64)


def group_rank(group: np.ndarray, num_groups: int) -> np.ndarray:
    """``(n,)`` position of each element among the elements of its group, in array order.

    E.g. ``group_rank([2, 0, 2, 2], 3) == [0, 0, 1, 2]``.
    """
    order = np.argsort(group, kind="stable")
    counts = np.bincount(group, minlength=num_groups)
    starts = np.cumsum(counts) - counts
    rank = np.empty(len(group), np.int64)
    rank[order] = np.arange(len(group)) - np.repeat(starts, counts)
    return rank
