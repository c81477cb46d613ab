"""Planning: bucket entities by padded shape, choose each bucket's method, cut buckets into blocks.

Entities are bucketed by rows rounded up to a power of two (at least ``MIN_ROWS``) and features rounded
up by :func:`padded_features`, so only a few shapes are ever compiled. Each bucket gets its solve method
its layout and that method's workspace model from the caller (``choose``; :class:`lljax.rounds.round.Round`
asks :mod:`lljax.solve.registry`), and is cut along the entity axis into blocks that fit a memory budget
(the entity count of a block is a power of two, at least ``MIN_LANES``, except in blocks that compile nothing:
their own count). No loop over entities.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from lljax.data.arrays import next_pow2

__all__ = ["BlockPlan", "plan_blocks", "padded_features", "MIN_ROWS", "MIN_LANES", "EXACT_MIN_LANES"]

# Smallest padded sizes: tiny buckets cost little to pad and each distinct shape costs a compile.
MIN_ROWS = 4
MIN_LANES = 8
# Entities of one row bucket and one feature count that get blocks of their own feature count, where the blocks
# of their padded width compile nothing (see plan_blocks): fewer would cost more in blocks than padding does.
EXACT_MIN_LANES = 1024


class BlockPlan(NamedTuple):
    """One block to build: ``entities (e,)`` dataset entity codes, padded to ``lanes`` entities of ``rows``
    rows and ``features`` features each, solved by ``method`` (a name in :mod:`lljax.solve.registry`) in
    ``layout`` (one of :data:`lljax.solve.blocks.LAYOUTS`; ``None``: the method's own)."""

    entities: np.ndarray
    lanes: int
    rows: int
    features: int
    method: str = "newton"
    layout: str | None = None


def padded_features(features: np.ndarray) -> np.ndarray:
    """Padded feature count of each entity's block: the next power of two, or three quarters of it
    from 12 on (12, 16, 24, 32, 48, ...).

    The solver's cost grows as D^2 (Hessian) to D^3 (Cholesky), so the finer steps pay for one more
    compiled shape per octave where both sizes occur (measured: ``benchmarks/README.md``).
    """
    p = next_pow2(features)
    three_quarters = 3 * p // 4
    return np.where((p >= 16) & (features <= three_quarters), three_quarters, p)


def plan_blocks(rows_per_entity: np.ndarray, features_per_entity: np.ndarray, memory_budget: int,
                choose: Callable[[int, int], tuple[str, str | None, int]],
                compiles: Callable[[int, int], bool] | None = None) -> list[BlockPlan]:
    """Bucket entities by ``(next_pow2(rows), padded_features(features))`` and cut buckets into blocks.

    Where the blocks of a bucket compile nothing (``compiles(rows, width)`` is False: the native kernel reads
    them from the rows), the entities of a bucket that share a feature count keep it, unpadded, in a bucket of
    their own if there are at least :data:`EXACT_MIN_LANES` of them: the kernel's work per step grows as D^2 to
    D^3 (12 features padded from 9 cost about 15% more), and each block has a cost of its own. Such blocks
    have no padding lanes either: their arrays (priors, results) are as long as their entities.

    Args:
      rows_per_entity, features_per_entity: ``(U,)`` counts.
      compiles: ``(padded rows, padded width)`` -> whether such blocks are compiled (default: all are).
      memory_budget: bytes a block (with solver workspace) may use.
      choose: ``(padded rows, padded features) -> (method name, layout or None, bytes per lane)``.
    Returns:
      Blocks ordered by bucket, each with at most ``max_lanes`` entities, a power of two (their own count in
      blocks that compile nothing).
    """
    rows_b = next_pow2(np.maximum(rows_per_entity, MIN_ROWS))
    feats_b = padded_features(features_per_entity)
    if compiles is not None:
        feats_b = _unpadded_where_many(rows_b, feats_b, features_per_entity, compiles)
    order = np.lexsort((feats_b, rows_b))
    bucket_key = rows_b[order] * (1 << 32) + feats_b[order]
    boundaries = np.flatnonzero(np.diff(bucket_key)) + 1
    plans = []
    for members in np.split(order, boundaries):
        if members.size == 0:
            continue
        rows, features = int(rows_b[members[0]]), int(feats_b[members[0]])
        method, layout, per_lane = choose(rows, features)
        max_lanes = int(next_pow2(max(1, memory_budget // per_lane) + 1) // 2)  # largest pow2 <= budget
        # A bucket that fits one block gets the smallest power of two that holds it; a bucket cut into
        # several blocks pads its last one to full size too, so each bucket compiles one shape. Blocks that
        # compile nothing have as many lanes as entities.
        exact = compiles is not None and not compiles(rows, features)
        lanes = max_lanes if members.size > max_lanes else min(max_lanes, max(int(next_pow2(members.size)), MIN_LANES))
        for lo in range(0, members.size, max_lanes):
            part = members[lo: lo + max_lanes]
            plans.append(BlockPlan(part, part.size if exact else lanes, rows, features, method, layout))
    return plans


def _unpadded_where_many(rows_b: np.ndarray, feats_b: np.ndarray, features: np.ndarray,
                         compiles: Callable[[int, int], bool]) -> np.ndarray:
    """``feats_b``, with the entities' own feature counts where at least :data:`EXACT_MIN_LANES` entities of a
    ``(rows_b, feats_b)`` bucket share one and the bucket's blocks are not compiled."""
    features = np.maximum(features, 1)
    padded = np.flatnonzero(features < feats_b)
    if len(padded) < EXACT_MIN_LANES:
        return feats_b
    # one small integer per (rows bucket, width, count): the rows buckets are powers of two
    level = np.log2(rows_b[padded]).astype(np.int64)
    width, count = feats_b[padded].astype(np.int64), features[padded].astype(np.int64)
    W = int(width.max()) + 1
    if W >= 1 << 28:  # (absurd widths: the keys below would not fit an int64)
        return feats_b
    key = (level * W + width) * W + count
    if int(key.max()) < 1 << 16:  # a small key space: counted in place (the key is its own group)
        keys, at, sizes = None, key, np.bincount(key)
    else:
        keys, at, sizes = np.unique(key, return_inverse=True, return_counts=True)
    keep = np.zeros(len(sizes), bool)
    for g in np.flatnonzero(sizes >= EXACT_MIN_LANES).tolist():
        k = g if keys is None else int(keys[g])
        keep[g] = not compiles(1 << (k // (W * W)), k // W % W)
    if not keep.any():
        return feats_b
    out = feats_b.copy()
    unpadded = padded[keep[at.reshape(-1)]]
    out[unpadded] = features[unpadded]
    return out
