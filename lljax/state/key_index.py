"""Entity key -> slot maps of :class:`lljax.state.store.EntityStore`.

A store gives every entity key it holds a *slot* (its insertion rank, ``0, 1, ...``). Integer keys (the
usual case, and the one that must be fast: a stream looks up every example's entity at every update, and a
first update registers a million) live in :class:`IntKeyIndex`, an open-addressing hash table held in two
NumPy arrays (no Python object per key); other keys (strings) in :class:`DictKeyIndex`, a dict. Both answer
the same calls:

- ``lookup(keys) -> (k,) int64``: each key's slot, -1 for keys not held (or of another type);
- ``insert(keys, first_slot)``: give new, distinct keys the slots ``first_slot, first_slot + 1, ...``
  (``ValueError`` naming a key that is repeated or already held; nothing is inserted then);
- ``truncate(count)``: forget every key whose slot is ``count`` or more (an undone registration);
- ``items() -> (keys, slots)``, ``len``, ``in``.
"""

from __future__ import annotations

from itertools import repeat
from typing import Any

import numpy as np

from lljax.solve import kernels

__all__ = ["IntKeyIndex", "DictKeyIndex", "int64_keys"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: the slot is the top bits of key * 2^64 / phi
_INT64 = np.iinfo(np.int64)


def int64_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``(as_int64 (k,), representable (k,) bool or None)``: integer keys as int64, and which of them are
    integers in int64's range (``None``: all are). Other keys (a string, a bool, a float, an integer out of
    range) are held by no integer index; their int64 value is 0."""
    keys = np.asarray(keys)
    if keys.dtype.kind == "i":
        return keys.astype(np.int64, copy=False), None
    if keys.dtype.kind == "u":
        ok = keys <= _INT64.max
        return np.where(ok, keys, 0).astype(np.int64), None if ok.all() else ok
    flat = keys.reshape(-1).tolist()
    ok = np.fromiter((isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_))
                      and _INT64.min <= k <= _INT64.max for k in flat), bool, count=len(flat))
    values = np.fromiter((k if good else 0 for k, good in zip(flat, ok.tolist())), np.int64, count=len(flat))
    return values, None if ok.all() else ok


class IntKeyIndex:
    """int64 key -> slot, an open-addressing hash table with linear probing: ``table_keys`` and ``table_slots``
    (``(capacity,)`` int64, a power of two; slot -1 marks an empty entry), at most half full (it doubles before).
    Looked up and filled by the native helpers (:func:`lljax.solve.kernels.hash_lookup`, ``hash_insert``) when
    the kernels are enabled, else by NumPy, probe round by probe round over all the keys at once; both find the
    same slots (where a key sits in the table may differ, what it maps to does not)."""

    def __init__(self, capacity: int = 16):
        capacity = 1 << max(4, int(capacity - 1).bit_length())
        self.table_keys = np.zeros(capacity, np.int64)
        self.table_slots = np.full(capacity, -1, np.int64)
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __contains__(self, key: Any) -> bool:
        keys = np.empty(1, object)
        keys[0] = key
        return bool(self.lookup(keys)[0] >= 0)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """``(k,)`` int64 slot of each of ``keys``, -1 for keys not held."""
        values, ok = int64_keys(keys)
        out = np.empty(len(values), np.int64)
        if kernels.enabled():
            kernels.hash_lookup(self.table_keys, self.table_slots, values, out)
        else:
            _lookup_numpy(self.table_keys, self.table_slots, values, out)
        if ok is not None:
            out[~ok] = -1
        return out

    def insert(self, keys: np.ndarray, first_slot: int) -> None:
        """Map ``keys`` (``(k,)`` distinct integers, none held) to ``first_slot, first_slot + 1, ...``.

        Raises:
          ValueError: a key repeated in ``keys`` or already held, or one that is not an int64 integer
            (named); nothing is inserted then (the native path inserts up to the clash, then takes those keys
            out again).
        """
        values, ok = int64_keys(keys)
        if ok is not None:
            raise ValueError(f"entity key {np.asarray(keys).reshape(-1)[int(np.argmin(ok))]!r} is not an int64 "
                             "integer")
        if not len(values):
            return
        if self._count + len(values) > len(self.table_slots) // 2:
            self._rehash(2 * (self._count + len(values)))
        slots = np.arange(first_slot, first_slot + len(values), dtype=np.int64)
        try:
            if kernels.enabled():
                clash = kernels.hash_insert(self.table_keys, self.table_slots, values, slots)
            else:
                clash = self._insert_numpy(values, slots)
        except BaseException:  # (a full table, which the growth above rules out; an interrupt)
            self.truncate(first_slot)
            raise
        if clash >= 0:  # the keys before it went in (native path): take them out again
            self.truncate(first_slot)
            raise ValueError(f"entity key {int(values[clash])} is repeated in one write or already held")
        self._count += len(values)

    def truncate(self, count: int) -> None:
        """Forget every key whose slot is ``count`` or more (the table is rebuilt without them, if it holds any)."""
        if not (self.table_slots >= count).any():
            self._count = int((self.table_slots >= 0).sum())
            return
        keys, slots = self.items()
        keep = slots < count
        self._rehash(2 * int(keep.sum()), (keys[keep], slots[keep]))  # (the table is replaced at its very end)

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """``(keys, slots)`` of every key held, in table order."""
        held = np.flatnonzero(self.table_slots >= 0)  # positions, then takes: about 4x a boolean mask's two selections
        return self.table_keys.take(held), self.table_slots.take(held)

    def _rehash(self, capacity: int, entries: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        keys, slots = self.items() if entries is None else entries
        capacity = 1 << max(4, int(max(capacity, 2 * len(keys)) - 1).bit_length())
        table_keys, table_slots = np.zeros(capacity, np.int64), np.full(capacity, -1, np.int64)
        if kernels.enabled():
            clash = kernels.hash_insert(table_keys, table_slots, keys, slots)
        else:
            clash = _insert_numpy(table_keys, table_slots, keys, slots)
        assert clash < 0, "the keys held are distinct"
        self.table_keys, self.table_slots, self._count = table_keys, table_slots, len(keys)

    def _insert_numpy(self, values: np.ndarray, slots: np.ndarray) -> int:
        return _insert_numpy(self.table_keys, self.table_slots, values, slots)


def _home(values: np.ndarray, capacity: int) -> np.ndarray:
    """``(k,)`` int64 home entry of each key in a table of ``capacity`` (a power of two) entries."""
    shift = np.uint64(64 - (capacity.bit_length() - 1))
    with np.errstate(over="ignore"):
        return ((values.view(np.uint64) * _GOLDEN) >> shift).astype(np.int64)


def _lookup_numpy(table_keys: np.ndarray, table_slots: np.ndarray, values: np.ndarray, out: np.ndarray) -> None:
    """``out[i]``: the slot of ``values[i]`` in the table, or -1; all keys probe together, a round per probe step."""
    mask = len(table_slots) - 1
    out[:] = -1
    position = _home(values, len(table_slots))
    todo = np.arange(len(values))
    while len(todo):
        p = position[todo]
        slot = table_slots[p]
        hit = (slot >= 0) & (table_keys[p] == values[todo])
        out[todo[hit]] = slot[hit]
        go_on = (slot >= 0) & ~hit
        todo = todo[go_on]
        position[todo] = (p[go_on] + 1) & mask


def _insert_numpy(table_keys: np.ndarray, table_slots: np.ndarray, values: np.ndarray, slots: np.ndarray) -> int:
    """Put ``values -> slots`` into the table, probe round by probe round: in each, every key not placed yet
    looks at its current entry; of the keys that find the same empty entry, the first takes it, and the others
    (and those that found it full) move on. Returns -1, or the position in ``values`` of a key repeated or
    already held (checked first: nothing is inserted then)."""
    mask = len(table_slots) - 1
    _, first = np.unique(values, return_index=True)
    if len(first) < len(values):
        repeated = np.ones(len(values), bool)
        repeated[first] = False
        return int(np.argmax(repeated))
    held = np.empty(len(values), np.int64)
    _lookup_numpy(table_keys, table_slots, values, held)
    if (held >= 0).any():
        return int(np.argmax(held >= 0))
    position = _home(values, len(table_slots))
    todo = np.arange(len(values))
    while len(todo):
        p = position[todo]
        free = table_slots[p] < 0
        taken, first = np.unique(p[free], return_index=True)
        winners = todo[free][first]
        table_keys[taken], table_slots[taken] = values[winners], slots[winners]
        placed = np.zeros(len(values), bool)
        placed[winners] = True
        todo = todo[~placed[todo]]
        position[todo] = (position[todo] + 1) & mask
    return -1


class DictKeyIndex:
    """Any hashable key -> slot, in a dict (the store's keys that are not integers: strings)."""

    def __init__(self) -> None:
        self._slot_of: dict[Any, int] = {}

    def __len__(self) -> int:
        return len(self._slot_of)

    def __contains__(self, key: Any) -> bool:
        return key in self._slot_of

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        keys = np.asarray(keys)
        return np.fromiter(map(self._slot_of.get, keys.tolist(), repeat(-1)), np.int64, count=len(keys))

    def insert(self, keys: np.ndarray, first_slot: int) -> None:
        new = np.asarray(keys).tolist()
        if len(set(new)) != len(new) or any(k in self._slot_of for k in new):
            seen: set = set()
            for key in new:
                if key in self._slot_of or key in seen:
                    raise ValueError(f"entity key {key!r} is repeated in one write or already held")
                seen.add(key)
        self._slot_of.update(zip(new, range(first_slot, first_slot + len(new))))

    def truncate(self, count: int) -> None:
        for key in [k for k, slot in self._slot_of.items() if slot >= count]:
            del self._slot_of[key]

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        keys = np.empty(len(self._slot_of), object)
        keys[:] = list(self._slot_of)
        return keys, np.fromiter(self._slot_of.values(), np.int64, count=len(self._slot_of))
