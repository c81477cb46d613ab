"""Host-side store of per-entity coefficients, keyed by entity.

Entities are kept in *slabs*, one per width ``W`` (a power of two, the padded feature count
of the block that last solved the entity). A slab holds ``(rows, W)`` feature ids (-1 for
padding), means, and precision (``(rows, W)`` diagonal, ``(rows, W, W)`` full, or none).
An update writes the rows of the entities it touched in place; an entity whose feature
subspace outgrew its width moves to a wider slab (its old row is marked dead). So the cost of
an update follows the number of entities it touches, not the number stored, and every read
and write is a vectorized gather / scatter over a few slabs.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

__all__ = ["EntityStore", "EntityCoefficients", "StoredPairs"]


class EntityCoefficients(NamedTuple):
    """One entity's model: ``feature_ids (d,)`` global ids (sorted), ``mean (d,)``,
    ``precision`` ``(d,)`` (diagonal), ``(d, d)`` (full) or ``None``."""

    feature_ids: np.ndarray
    mean: np.ndarray
    precision: np.ndarray | None


class StoredPairs(NamedTuple):
    """Stored (entity, feature) pairs of some requested entities, flattened.

    ``owner (k,)`` position of the entity in the request, ``feature_ids (k,)``, ``means (k,)``.
    """

    owner: np.ndarray
    feature_ids: np.ndarray
    means: np.ndarray


class _Slab:
    """Entities of one width ``W``: growable ``(capacity, W)`` arrays."""

    def __init__(self, width: int, dtype: np.dtype, precision: str | None):
        self.width = width
        self.size = 0
        self.feature_ids = np.full((0, width), -1, np.int64)
        self.means = np.zeros((0, width), dtype)
        shape = {"full": (0, width, width), "diagonal": (0, width)}.get(precision)
        self.precision = None if shape is None else np.zeros(shape, dtype)

    def allocate(self, count: int) -> np.ndarray:
        """Return ``count`` fresh row indices, growing capacity geometrically."""
        needed = self.size + count
        capacity = self.feature_ids.shape[0]
        if needed > capacity:
            new_capacity = max(needed, 2 * capacity, 16)
            self.feature_ids = _grow(self.feature_ids, new_capacity, -1)
            self.means = _grow(self.means, new_capacity, 0)
            if self.precision is not None:
                self.precision = _grow(self.precision, new_capacity, 0)
        rows = np.arange(self.size, needed, dtype=np.int64)
        self.size = needed
        return rows


def _grow(arr: np.ndarray, capacity: int, fill) -> np.ndarray:
    out = np.full((capacity,) + arr.shape[1:], fill, arr.dtype)
    out[: arr.shape[0]] = arr
    return out


class EntityStore:
    """Per-entity coefficients (and precision) of many entities.

    Args:
      dtype: float dtype of means and precisions.
      precision: ``"full"``, ``"diagonal"`` or ``None`` (what is stored per entity).
    """

    def __init__(self, dtype: Any, precision: str | None):
        if precision not in ("full", "diagonal", None):
            raise ValueError(f"field 'precision': value {precision!r} is not 'full', 'diagonal' or None")
        self.dtype = np.dtype(dtype)
        self.precision = precision
        self._slot_of: dict[Any, int] = {}
        self._keys: list = []
        self._width = np.zeros(0, np.int64)
        self._row = np.zeros(0, np.int64)
        self._slabs: dict[int, _Slab] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: Any) -> bool:
        return key in self._slot_of

    @property
    def keys(self) -> list:
        """Entity keys in insertion order."""
        return list(self._keys)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """``(k,)`` slot of each key, -1 for keys not stored."""
        get = self._slot_of.get
        return np.fromiter((get(k, -1) for k in keys.tolist()), np.int64, count=len(keys))

    def _groups(self, slots: np.ndarray):
        """Yield ``(slab, positions, rows)`` for the stored entries of ``slots``, one group per width."""
        present = np.flatnonzero(slots >= 0)
        widths = self._width[slots[present]]
        for width in np.unique(widths):
            positions = present[widths == width]
            yield self._slabs[int(width)], positions, self._row[slots[positions]]

    def gather_pairs(self, slots: np.ndarray) -> StoredPairs:
        """All stored (feature id, mean) pairs of the entities at ``slots`` (-1 ones have none)."""
        owners, fids, means = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0, self.dtype)]
        for slab, positions, rows in self._groups(slots):
            f = slab.feature_ids[rows]
            valid = f >= 0
            owners.append(np.broadcast_to(positions[:, None], f.shape)[valid])
            fids.append(f[valid])
            means.append(slab.means[rows][valid])
        return StoredPairs(np.concatenate(owners), np.concatenate(fids), np.concatenate(means))

    def gather_dense(self, slots: np.ndarray):
        """Yield ``(positions, feature_ids (g, W), means (g, W), precision)`` per stored width."""
        for slab, positions, rows in self._groups(slots):
            precision = None if slab.precision is None else slab.precision[rows]
            yield positions, slab.feature_ids[rows], slab.means[rows], precision

    def write(self, keys: np.ndarray, slots: np.ndarray, feature_ids: np.ndarray, means: np.ndarray,
              precision: np.ndarray | None) -> None:
        """Store new coefficients for entities ``keys`` (current ``slots``, -1 for new ones).

        Args:
          keys: ``(e,)`` entity keys.
          slots: ``(e,)`` their current slots (from :meth:`lookup`).
          feature_ids: ``(e, W)`` global ids, -1 padding.
          means: ``(e, W)``.
          precision: ``(e, W, W)``, ``(e, W)`` or ``None``, matching the store's kind.
        """
        width = feature_ids.shape[1]
        slab = self._slabs.get(width)
        if slab is None:
            slab = self._slabs[width] = _Slab(width, self.dtype, self.precision)
        in_place = slots >= 0
        in_place[in_place] = self._width[slots[in_place]] == width
        rows = np.empty(len(keys), np.int64)
        rows[in_place] = self._row[slots[in_place]]
        moved = np.flatnonzero(~in_place)
        rows[moved] = slab.allocate(len(moved))
        self._retire(slots[moved])
        slab.feature_ids[rows] = feature_ids
        slab.means[rows] = means
        if slab.precision is not None:
            slab.precision[rows] = precision
        self._assign(keys[moved], slots[moved], width, rows[moved])

    def _retire(self, slots: np.ndarray) -> None:
        """Mark the old rows of entities that move to another slab as dead."""
        for slab, _, rows in self._groups(slots):
            slab.feature_ids[rows] = -1

    def _assign(self, keys: np.ndarray, slots: np.ndarray, width: int, rows: np.ndarray) -> None:
        new = slots < 0
        first_new = len(self._keys)
        new_keys = keys[new].tolist()
        slots = slots.copy()
        slots[new] = np.arange(first_new, first_new + len(new_keys))
        self._slot_of.update(zip(new_keys, range(first_new, first_new + len(new_keys))))
        self._keys.extend(new_keys)
        grow = len(self._keys) - self._width.shape[0]
        if grow > 0:
            self._width = np.concatenate([self._width, np.zeros(grow, np.int64)])
            self._row = np.concatenate([self._row, np.zeros(grow, np.int64)])
        self._width[slots] = width
        self._row[slots] = rows

    def get(self, key: Any) -> EntityCoefficients:
        """Coefficients of one entity; ``KeyError`` naming the entity if it is not stored."""
        if key not in self._slot_of:
            raise KeyError(f"entity {key!r} is not in the model")
        slot = self._slot_of[key]
        slab = self._slabs[int(self._width[slot])]
        row = self._row[slot]
        valid = slab.feature_ids[row] >= 0
        precision = None
        if slab.precision is not None:
            p = slab.precision[row]
            precision = p[np.ix_(valid, valid)] if p.ndim == 2 else p[valid]
        return EntityCoefficients(slab.feature_ids[row][valid].copy(), slab.means[row][valid].copy(),
                                  None if precision is None else precision.copy())
