"""Host-side store of per-entity coefficients, keyed by entity.

Entities are kept in *slabs*, one per width ``d`` (the entity's number of features, exactly: no
padding is stored). A slab holds ``(rows, d)`` feature ids, means, and the precision: ``(rows, d)``
diagonal, ``(rows, d (d + 1) / 2)`` for a full one (its upper triangle, row by row: half of the
``d x d`` matrix, which is symmetric), or none. An update writes the rows of the entities it touched
in place; an entity whose feature count changed moves to the slab of its new width (its old row is
retired, and given out again once the write is committed). So the cost of an update follows the
number of entities it touches, not the number stored, and every read and write is a vectorized
gather / scatter over a few slabs.
"""

from __future__ import annotations

import functools
import os
import queue
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from lljax.data.arrays import concat_ranges
from lljax.data.errors import input_error
from lljax.solve import kernels
from lljax.state.key_index import DictKeyIndex, IntKeyIndex

__all__ = ["EntityStore", "EntityCoefficients", "StoredPairs", "FlatEntities", "StoreSnapshot",
           "GatheredRows", "StoredRows", "PendingWrites", "PRECISION_FORMS", "pack_upper", "unpack_upper"]


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


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: EntityStore keeps the open ones
class StoreSnapshot:
    """What :meth:`EntityStore.restore` puts back: ``count`` keys registered and their ``key_kind``;
    the covered stored entities' ``slots (k,)``, ``width (k,)`` and ``row (k,)``; each slab's ``size``
    (``slab_sizes``, by width) and its free and retired rows (``slab_recycling``, by width); and
    ``contents``: per width, ``(width, members, {field: rows})`` copies of the covered entities' rows
    (``members`` index ``slots``)."""

    count: int
    key_kind: str | None
    slots: np.ndarray
    width: np.ndarray
    row: np.ndarray
    slab_sizes: dict[int, int]
    slab_recycling: dict[int, _Recycling]
    contents: list[tuple[int, np.ndarray, dict[str, np.ndarray]]]


# Slabs grow by chunks of _FIRST_CHUNK_ROWS rows, doubling up to about _CHUNK_BYTES bytes each.
_CHUNK_BYTES = 32 << 20
_FIRST_CHUNK_ROWS = 64
# Rows past those appended are mapped ahead on a helper thread (see _Slab._map_ahead): a window of about
# _PREFAULT_WINDOW_BYTES (or twice the last append) per slab, renewed once less than half of it is left, in pieces of
# at least _PREFAULT_MIN_BYTES.
_PREFAULT_WINDOW_BYTES = 4 << 20
_PREFAULT_MIN_BYTES = 1 << 20


PRECISION_FORMS = ("square", "upper")


class FlatEntities(NamedTuple):
    """All stored entities in compact form (the persistence and export layout), in slot order.

    Attributes:
      keys: ``(U,)`` entity keys.
      indptr: ``(U+1,)`` offsets of each entity's pairs.
      feature_ids: ``(P,)`` global feature ids, sorted within each entity.
      means: ``(P,)`` posterior means.
      precision: ``(P,)`` diagonals, or full matrices one after the other (``precision_form``), or ``None``.
      precision_form: how a full precision is laid out: ``"square"``, the row-major ``(d_u, d_u)`` matrix
        (``d_u^2`` entries), or ``"upper"``, its upper triangle row by row (``d_u (d_u + 1) / 2`` entries: what
        the store holds and the Spark state writes). Diagonals ignore it.
    """

    keys: np.ndarray
    indptr: np.ndarray
    feature_ids: np.ndarray
    means: np.ndarray
    precision: np.ndarray | None
    precision_form: str = "square"

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.indptr)

    @property
    def precision_indptr(self) -> np.ndarray:
        """``(U+1,)`` offsets of each entity's flattened full precision (in ``precision_form``)."""
        sizes = self.sizes
        out = np.zeros(len(self.keys) + 1, np.int64)
        np.cumsum(sizes * (sizes + 1) // 2 if self.precision_form == "upper" else sizes**2, out=out[1:])
        return out


class _Recycling(NamedTuple):
    """A slab's rows that no entity uses: ``free[:available]`` may be given out again; ``retired`` rows were
    left by entities that moved in a write not yet committed (an undo may still put them back), so they
    wait. Never changed in place: a slab replaces the whole tuple, so a snapshot keeps it as it was."""

    free: np.ndarray
    available: int
    retired: tuple[np.ndarray, ...]


class _Slab:
    """Entities of one width ``d``: rows of ``feature_ids (d,)``, ``means (d,)`` and ``precision``
    (``(d (d + 1) / 2,)`` packed upper triangle, ``(d,)`` or none), kept in chunks.

    A row left by an entity that moves to another width is retired, and free to be given out again once
    the write is committed (:meth:`EntityStore.commit`), so that entities whose features grow do not
    leave the slab ever larger.

    Chunks never move once allocated, so growing the slab never copies what is stored (a
    doubling array would copy gigabytes of full precisions at a million entities, stalling the
    update that crosses a power of two). They start small and double up to about ``_CHUNK_BYTES``,
    so a slab of a few wide entities stays small.
    """

    def __init__(self, width: int, dtype: np.dtype, precision: str | None):
        self.width = width
        self.size = 0
        self.recycling = _Recycling(np.zeros(0, np.int64), 0, ())
        self._shapes = {"feature_ids": ((width,), np.dtype(np.int64)), "means": ((width,), dtype)}
        if precision is not None:
            shape = (width * (width + 1) // 2,) if precision == "full" else (width,)
            self._shapes["precision"] = (shape, dtype)
        row_bytes = sum(int(np.prod(shape)) * dt.itemsize for shape, dt in self._shapes.values())
        self._max_chunk_rows = max(1, _CHUNK_BYTES // row_bytes)
        self._row_bytes = row_bytes
        self._mapped = 0  # rows below this were written or handed to the prefault thread
        self._chunks: list[dict[str, np.ndarray]] = []
        self._chunk_start = np.zeros(1, np.int64)  # first row of each chunk, then the capacity

    @property
    def has_precision(self) -> bool:
        return "precision" in self._shapes

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(self._shapes)

    def allocate(self, count: int) -> np.ndarray:
        """Return ``count`` row indices: free rows first, then new ones, adding chunks as needed (nothing
        is copied)."""
        free, available, retired = self.recycling
        reused = min(count, available)
        rows = self._append(count - reused)
        self.recycling = _Recycling(free, available - reused, retired)
        return np.concatenate([free[available - reused:available], rows]) if reused else rows

    def retire(self, rows: np.ndarray) -> None:
        """Rows no entity uses any more, free once committed (:meth:`commit`)."""
        if len(rows):
            free, available, retired = self.recycling
            self.recycling = _Recycling(free, available, retired + (np.array(rows, np.int64),))

    def commit(self) -> None:
        """The retired rows become free."""
        free, available, retired = self.recycling
        if retired:
            free = np.concatenate((free[:available],) + retired)
            self.recycling = _Recycling(free, len(free), ())

    def _append(self, count: int) -> np.ndarray:
        """``count`` new row indices past ``size``."""
        needed = self.size + count
        while self._chunk_start[-1] < needed:
            chunks = len(self._chunk_start) - 1  # the chunks _chunk_start describes (an interrupted append
            del self._chunks[chunks:]            # may have left one more in _chunks: it is dropped)
            added = min(self._max_chunk_rows, _FIRST_CHUNK_ROWS << chunks)
            # Uninitialized: a row is written whole (by put) before any read of it, and rows past
            # ``size`` are never read. Filling here would touch every page twice.
            self._chunks.append({name: np.empty((added,) + shape, dt) for name, (shape, dt) in self._shapes.items()})
            self._chunk_start = np.append(self._chunk_start, self._chunk_start[-1] + added)
        rows = np.arange(self.size, needed, dtype=np.int64)
        self.size = needed
        self._map_ahead(needed, count)
        return rows

    def _map_ahead(self, needed: int, count: int) -> None:
        """Map the pages of the rows after row ``needed`` (the rows appended now are written at once) on a helper
        thread that runs only on an idle core (:func:`lljax.solve.kernels.prefault`): fresh pages cost a fault
        each on first write, which is slow on some machines (virtual ones above all), and the next appends then
        find them mapped. A window of ``max(_PREFAULT_WINDOW_BYTES, 2 * count rows)`` ahead of ``needed``, within
        the chunks allocated, renewed once less than half of it is left: so the memory mapped before it is used
        stays about a window per slab. The request holds views of the chunks, so the memory outlives it whatever
        happens to the slab; if no thread can be started, nothing is mapped ahead (:func:`_prefault_later`)."""
        window = max(_PREFAULT_WINDOW_BYTES // self._row_bytes, 2 * count, 1)
        if self._mapped - needed >= window // 2 or not kernels.enabled():
            return
        begin, end = max(self._mapped, needed), min(needed + window, int(self._chunk_start[-1]))
        self._mapped = max(self._mapped, end)
        if (end - begin) * self._row_bytes < _PREFAULT_MIN_BYTES:
            return
        views: list[np.ndarray] = []
        for chunk, lo, hi in zip(self._chunks, self._chunk_start[:-1].tolist(), self._chunk_start[1:].tolist()):
            if begin < hi and lo < end:
                views.extend(field[max(begin, lo) - lo:min(end, hi) - lo] for field in chunk.values())
        _prefault_later(views)

    def _by_chunk(self, rows: np.ndarray
                  ) -> Iterator[tuple[dict[str, np.ndarray], slice | np.ndarray, slice | np.ndarray]]:
        """Yield ``(chunk, selection of rows (a slice or positions), offsets in the chunk)`` for each chunk
        ``rows`` touch. The offsets are a slice when they are consecutive (rows just allocated, written in
        order): a slice copies whole runs of rows, about twice as fast as positions."""
        chunk = np.searchsorted(self._chunk_start, rows, side="right") - 1
        offset = rows - self._chunk_start[chunk]
        if len(rows) and chunk.min() == chunk.max():
            yield self._chunks[int(chunk[0])], slice(None), _as_run(offset)
            return
        order = np.argsort(chunk, kind="stable")  # one sort, then each chunk's rows are a slice of it
        bounds = np.searchsorted(chunk[order], np.arange(len(self._chunks) + 1))
        for k in np.flatnonzero(np.diff(bounds)):
            selected = order[bounds[k]:bounds[k + 1]]
            yield self._chunks[int(k)], selected, _as_run(offset[selected])

    def take(self, field: str, rows: np.ndarray) -> np.ndarray:
        """``(len(rows), ...)`` copy of ``field`` at ``rows``."""
        return self.take_fields((field,), rows)[field]

    def take_fields(self, fields: Sequence[str], rows: np.ndarray) -> dict[str, np.ndarray]:
        """``{field: (len(rows), ...) copy at rows}`` for each of ``fields``: one native pass per field where the
        kernels are enabled (:func:`lljax.solve.kernels.move_rows`), else rows split by chunk once."""
        out = {name: np.empty((len(rows),) + self._shapes[name][0], self._shapes[name][1]) for name in fields}
        if not len(rows):
            return out
        if kernels.enabled():
            rows = _row_numbers(rows)
            for name, values in out.items():
                kernels.move_rows(self._field_chunks(name), self._chunk_start, rows, values, into_chunks=False)
            return out
        for chunk, selected, offset in self._by_chunk(rows):
            for name, values in out.items():
                values[selected] = _rows(chunk[name], offset)
        return out

    def put(self, field: str, rows: np.ndarray, values: npt.ArrayLike) -> None:
        """Write ``values`` (``(len(rows), ...)`` or a scalar) into ``field`` at ``rows``."""
        self.put_fields(rows, {field: values})

    def put_fields(self, rows: np.ndarray, values: Mapping[str, npt.ArrayLike]) -> None:
        """Write ``values[field]`` (``(len(rows), ...)`` or a scalar) into each field at ``rows``: one native pass
        per field where the kernels are enabled (:func:`lljax.solve.kernels.move_rows`), else rows split by chunk
        once."""
        if not len(rows):
            return
        if kernels.enabled():
            rows = _row_numbers(rows)
            for name, v in values.items():
                shape, dt = self._shapes[name]
                v = np.asarray(v, dt)
                if v.ndim and v.shape != (len(rows),) + shape:
                    raise ValueError(f"put_fields: {name} has shape {v.shape}, expected {(len(rows),) + shape}")
                flat = np.ascontiguousarray(np.broadcast_to(v, (len(rows),) + shape))
                kernels.move_rows(self._field_chunks(name), self._chunk_start, rows, flat, into_chunks=True)
            return
        arrays = {name: np.asarray(v) for name, v in values.items()}
        for chunk, selected, offset in self._by_chunk(rows):
            for name, v in arrays.items():
                chunk[name][offset] = v if v.ndim == 0 else _rows(v, selected)

    def _field_chunks(self, name: str) -> list[np.ndarray]:
        """The chunks of ``name`` that ``_chunk_start`` describes (an interrupted append may have left one more)."""
        return [chunk[name] for chunk in self._chunks[:len(self._chunk_start) - 1]]

    def field_chunks(self) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray] | None]:
        """The chunks of ``feature_ids``, ``means`` and ``precision`` (``None`` if the slab keeps none), for
        :func:`lljax.solve.kernels.put_lanes`."""
        return (self._field_chunks("feature_ids"), self._field_chunks("means"),
                self._field_chunks("precision") if self.has_precision else None)

    @property
    def chunk_start(self) -> np.ndarray:
        """``(chunks + 1,)`` the first row of each chunk, then the capacity."""
        return self._chunk_start


def _put_fields(slab: _Slab, rows: np.ndarray, fields: Mapping[str, np.ndarray]) -> None:
    slab.put_fields(rows, fields)


def _row_numbers(rows: np.ndarray) -> np.ndarray:
    """``rows`` as C-contiguous int64 (``IndexError`` for non-integer rows, as NumPy's indexing gives)."""
    rows = np.asarray(rows)
    if rows.dtype.kind not in "iu":
        raise IndexError(f"slab rows must be integers, got dtype {rows.dtype}")
    return np.ascontiguousarray(rows, np.int64)


def _prefault(arrays: list[np.ndarray]) -> None:
    """Map ``arrays``' pages, on a thread that runs only when a core is idle (Linux ``SCHED_IDLE``), so that it
    never takes a core from the update or the solve."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # this thread only
    except (AttributeError, OSError):  # not Linux: an ordinary thread
        pass
    for array in arrays:
        kernels.prefault(array)


class _PrefaultWorker:
    """The process's one ``"lljax-prefault"`` daemon thread, which runs :func:`_prefault` on the arrays handed to
    :meth:`submit`, in order. It is started at the first request (and again in a forked child, which has no
    thread): a thread started per request cost the requester 1-2 ms, ``Thread.start`` waiting until the new
    thread runs, while the solve's threads hold the cores."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[list[np.ndarray]] | None = None
        self._pid = -1

    def submit(self, arrays: list[np.ndarray]) -> None:
        """Queue ``arrays`` for mapping (views keep their memory alive until then); nothing if no thread can be
        started (a limit, or the interpreter shutting down): the writes then take the faults."""
        with self._lock:
            if self._pid != os.getpid():
                requests: queue.SimpleQueue[list[np.ndarray]] = queue.SimpleQueue()
                try:
                    threading.Thread(target=self._run, args=(requests,), name="lljax-prefault", daemon=True).start()
                except RuntimeError:
                    return
                self._queue, self._pid = requests, os.getpid()
            assert self._queue is not None
            self._queue.put(arrays)

    @staticmethod
    def _run(requests: queue.SimpleQueue[list[np.ndarray]]) -> None:
        while True:
            arrays = requests.get()
            try:
                _prefault(arrays)
            except Exception:  # mapping ahead is an optimization: a failed request is dropped,
                pass           # and the thread serves the next ones (the queue is never left without a reader)
            del arrays

    def reset(self) -> None:
        """Forget the thread and the lock (in a forked child, where neither is the parent's any more)."""
        self._lock, self._queue, self._pid = threading.Lock(), None, -1


_PREFAULT_WORKER = _PrefaultWorker()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_PREFAULT_WORKER.reset)


def _prefault_later(arrays: list[np.ndarray]) -> None:
    """Map ``arrays``' pages on the prefault thread (:class:`_PrefaultWorker`), while the caller goes on."""
    _PREFAULT_WORKER.submit(arrays)


def _rows(array: np.ndarray, rows: slice | np.ndarray) -> np.ndarray:
    """``array[rows]``; for positions by ``np.take``, which copies rows about 1.5 times as fast."""
    return array[rows] if isinstance(rows, slice) else np.take(array, rows, axis=0)


def _as_run(offsets: np.ndarray) -> slice | np.ndarray:
    """``offsets`` as the slice ``o[0]:o[0] + len(o)`` when they are exactly that run, else unchanged."""
    n = len(offsets)
    if n and offsets[-1] - offsets[0] == n - 1 and (n == 1 or bool((np.diff(offsets) == 1).all())):
        return slice(int(offsets[0]), int(offsets[0]) + n)
    return offsets


class GatheredRows:
    """Copies of the stored rows of many entities, read from the store at once and handed out in parts.

    Reading a store costs a pass per width and field (and chunk, without the kernels), whatever the number of
    entities read; an update reads its round's entities once (:meth:`EntityStore.gather`): their stored features
    for the local subspaces (:meth:`pairs`), their priors for the blocks (:meth:`rows`, block by block: the copies
    and the positions of a block's rows in them) and the undo snapshot (:meth:`EntityStore.snapshot` with
    ``rows``) all come from this one copy.
    """

    def __init__(self, groups: list[tuple[int, np.ndarray, dict[str, np.ndarray]]], count: int, dtype: np.dtype):
        self.groups = groups  # (width, positions in the request, {field: (g, ...) copies in the store's layout})
        self.dtype = dtype
        self._group = np.full(count, -1, np.int64)  # width group of each requested entity, -1: none stored
        self._row = np.zeros(count, np.int64)
        for g, (_, positions, _) in enumerate(groups):
            self._group[positions] = g
            self._row[positions] = np.arange(len(positions))
        self._padded = [bool((fields["feature_ids"] < 0).any()) for _, _, fields in groups]

    def pairs(self) -> StoredPairs:
        """Every gathered (feature id, mean) pair, its owner the entity's position in the request."""
        return _stored_pairs(((positions, fields) for _, positions, fields in self.groups), self.dtype)

    def rows(self, request: np.ndarray) -> Iterator[StoredRows]:
        """The rows of the entities at positions ``request`` of the gathered request, per width: each a
        :class:`StoredRows` that holds the width's gathered arrays and the positions of the rows in them (no copy)."""
        group = self._group[request]
        for g in np.unique(group[group >= 0]):
            selected = np.flatnonzero(group == g)
            _, _, fields = self.groups[int(g)]
            yield StoredRows(selected, self._row[request[selected]], fields["feature_ids"], fields["means"],
                             fields.get("precision"), self._padded[int(g)])


class StoredRows(NamedTuple):
    """Rows ``rows`` of gathered stored arrays of one width ``d`` (:meth:`GatheredRows.rows`), in the store's layout.

    Attributes:
      positions: ``(g,)`` each row's position in the request (e.g. its lane in a block).
      rows: ``(g,)`` int64 the rows in the arrays below.
      feature_ids: ``(G, d)`` int64, valid ids sorted first, -1 padding.
      means: ``(G, d)``.
      precision: ``(G, d (d + 1) / 2)`` upper triangles (full), ``(G, d)`` diagonals, or ``None``.
      padded: whether any of the ``G`` rows has a padding entry (id -1). The store keeps exact widths, so this is
        for rows from elsewhere.
    """

    positions: np.ndarray
    rows: np.ndarray
    feature_ids: np.ndarray
    means: np.ndarray
    precision: np.ndarray | None
    padded: bool

    def copied(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(feature_ids (g, d), means (g, d), precision)``: copies of the rows alone."""
        precision = None if self.precision is None else _rows(self.precision, self.rows)
        return _rows(self.feature_ids, self.rows), _rows(self.means, self.rows), precision


def _stored_pairs(parts: Iterable[tuple[np.ndarray, Mapping[str, np.ndarray]]], dtype: np.dtype) -> StoredPairs:
    """The valid (feature id, mean) pairs of ``(positions (g,), {"feature_ids": (g, d), "means": (g, d)})``
    parts, each owned by its row's position."""
    owners, fids, means = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0, dtype)]
    for positions, fields in parts:
        f = fields["feature_ids"]
        valid = f >= 0
        if valid.all():  # the store's rows have exact widths: every row whole, no selection
            owners.append(np.repeat(np.asarray(positions, np.int64), f.shape[1]))
            fids.append(f.reshape(-1))
            means.append(fields["means"].reshape(-1))
            continue
        owners.append(np.broadcast_to(positions[:, None], f.shape)[valid])
        fids.append(f[valid])
        means.append(fields["means"][valid])
    return StoredPairs(np.concatenate(owners), np.concatenate(fids), np.concatenate(means))


class PendingWrites:
    """Solver results of several blocks, held and written to the store in one pass
    (:meth:`EntityStore.write_pending`): per block, the entities' keys and current slots and their padded lanes
    (``feature_ids (e, W)``, valid ids first then -1 padding; ``means (e, W)``; ``precision (e, W, W)``, ``(e, W)``
    or ``None``), as the solver returned them."""

    def __init__(self) -> None:
        self.keys: list[np.ndarray] = []
        self.slots: list[np.ndarray] = []
        self.lanes: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, keys: np.ndarray, slots: np.ndarray, feature_ids: np.ndarray, means: np.ndarray,
            precision: np.ndarray | None) -> None:
        """Hold the results of entities ``keys`` (current ``slots``, -1 for new ones): their padded lanes."""
        keys, feature_ids = np.asarray(keys), np.asarray(feature_ids)
        if feature_ids.ndim != 2 or len(feature_ids) != len(keys) or np.shape(means) != feature_ids.shape:
            raise ValueError(f"PendingWrites.add: {len(keys)} keys, feature_ids {feature_ids.shape}, "
                             f"means {np.shape(means)}")
        self.keys.append(keys)
        self.slots.append(np.asarray(slots, np.int64))
        self.lanes.append((feature_ids, np.asarray(means), None if precision is None else np.asarray(precision)))


@functools.lru_cache(maxsize=32)
def _upper_positions(d: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat positions in a ``W x W`` matrix of a ``d x d`` upper triangle, row by row (``i * W + j``, ``i <= j <
    d``), and of its mirror (``j * W + i``); read-only, cached: the store's every triangle uses the same few."""
    i, j = np.triu_indices(d)
    upper, lower = i * W + j, j * W + i
    upper.flags.writeable = lower.flags.writeable = False
    return upper, lower


def pack_upper(dense: np.ndarray) -> np.ndarray:
    """``(g, d, d)`` symmetric matrices -> ``(g, d (d + 1) / 2)`` upper triangles, row by row."""
    g, d = dense.shape[0], dense.shape[-1]
    return np.take(dense.reshape(g, d * d), _upper_positions(d, d)[0], axis=1)


def unpack_upper(packed: np.ndarray, d: int) -> np.ndarray:
    """Inverse of :func:`pack_upper`: ``(g, d (d + 1) / 2)`` -> symmetric ``(g, d, d)``."""
    upper, lower = _upper_positions(d, d)
    out = np.empty((packed.shape[0], d * d), packed.dtype)
    out[:, upper] = packed
    out[:, lower] = packed
    return out.reshape(packed.shape[0], d, d)


def _grow(arr: np.ndarray, capacity: int, fill: float) -> np.ndarray:
    out = np.full((capacity,) + arr.shape[1:], fill, arr.dtype)
    out[: arr.shape[0]] = arr
    return out


class EntityStore:
    """Per-entity coefficients (and precision) of many entities.

    Every stored entity has a *slot* (its insertion rank), and each slot points at a row of the
    slab of its width (width 0: registered, no row yet).

    Args:
      dtype: float dtype of means and precisions.
      precision: ``"full"``, ``"diagonal"`` or ``None`` (what is stored per entity).
    """

    def __init__(self, dtype: Any, precision: str | None):
        if precision not in ("full", "diagonal", None):
            raise ValueError(f"field 'precision': value {precision!r} is not 'full', 'diagonal' or None")
        self.dtype = np.dtype(dtype)
        self.precision = precision
        self._index: IntKeyIndex | DictKeyIndex | None = None  # key -> slot; by the kind of the first key
        self._keys: list = []
        self._width = np.zeros(16, np.int64)  # capacity grows geometrically; first len(self) are live
        self._row = np.zeros(16, np.int64)
        self._slabs: dict[int, _Slab] = {}
        # Snapshots taken and neither restored nor committed (nor dropped): no row is recycled meanwhile.
        self._open: weakref.WeakSet[StoreSnapshot] = weakref.WeakSet()
        self.key_kind: str | None = None  # "int" or "str": set by the first key stored

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: Any) -> bool:
        return self._index is not None and key in self._index

    def __getstate__(self) -> dict[str, Any]:
        """A copy (pickle, ``copy.deepcopy``) has no open snapshot: the snapshots are of this store."""
        state = self.__dict__.copy()
        del state["_open"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "_slot_of" in state:  # pickled before the key index: its dict becomes one
            slot_of = state.pop("_slot_of")
            keys = np.empty(len(state["_keys"]), object)
            keys[:] = state["_keys"]
            index: IntKeyIndex | DictKeyIndex | None = None
            if len(keys):
                index = IntKeyIndex() if state.get("key_kind") == "int" else DictKeyIndex()
                index.insert(keys, 0)
                assert len(slot_of) == len(keys), "a pickled store's keys and map agree"
            state["_index"] = index
        self.__dict__.update(state)
        self._open = weakref.WeakSet()

    @property
    def keys(self) -> list:
        """Entity keys in insertion order."""
        return list(self._keys)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """``(k,)`` slot of each key, -1 for keys not stored.

        Raises ``TypeError`` naming the entity when the keys are of another kind (int vs str)
        than the stored ones: ``"1"`` and ``1`` are different entities, and mixing them up
        would silently create duplicates.
        """
        keys = np.asarray(keys)
        kind = _key_kind(keys)
        if self.key_kind is not None and kind is not None and kind != self.key_kind:
            reason = f"has key type {kind}, but the model's entity keys have type {self.key_kind}"
            raise input_error("entity", keys[0], reason, error=TypeError)
        if self._index is None:
            return np.full(len(keys), -1, np.int64)
        return self._index.lookup(keys)

    def _groups(self, slots: np.ndarray) -> Iterator[tuple[_Slab, np.ndarray, np.ndarray]]:
        """Yield ``(slab, positions, rows)`` for the stored entries of ``slots``, one group per width."""
        present = np.flatnonzero(slots >= 0)
        widths = self._width[slots[present]]
        for width in np.unique(widths):
            if width == 0:
                continue
            positions = present[widths == width]
            yield self._slabs[int(width)], positions, self._row[slots[positions]]

    def gather_pairs(self, slots: np.ndarray) -> StoredPairs:
        """All stored (feature id, mean) pairs of the entities at ``slots`` (-1 ones have none)."""
        return _stored_pairs(((positions, slab.take_fields(("feature_ids", "means"), rows))
                              for slab, positions, rows in self._groups(slots)), self.dtype)

    def sizes(self, slots: np.ndarray) -> np.ndarray:
        """``(len(slots),)`` stored feature count of each entity (0 for slot -1)."""
        out = np.zeros(len(slots), np.int64)
        for slab, positions, rows in self._groups(slots):
            out[positions] = (slab.take("feature_ids", rows) >= 0).sum(axis=1)
        return out

    def gather_dense(self, slots: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]]:
        """Yield ``(positions, feature_ids (g, d), means (g, d), precision)`` per stored width ``d``;
        ``precision`` is ``(g, d, d)`` (full), ``(g, d)`` (diagonal) or ``None``."""
        for slab, positions, rows in self._groups(slots):
            taken = slab.take_fields(slab.fields, rows)
            precision = taken.get("precision")
            if precision is not None and self.precision == "full":
                precision = unpack_upper(precision, slab.width)
            yield positions, taken["feature_ids"], taken["means"], precision

    def gather(self, slots: np.ndarray) -> GatheredRows:
        """Copies of every field of the entities at ``slots`` (-1 ones have none), kept for
        :meth:`GatheredRows.pairs`, :meth:`GatheredRows.rows` and :meth:`snapshot`."""
        groups = [(slab.width, positions, slab.take_fields(slab.fields, rows))
                  for slab, positions, rows in self._groups(slots)]
        return GatheredRows(groups, len(slots), self.dtype)

    def snapshot(self, slots: np.ndarray, rows: GatheredRows | None = None) -> StoreSnapshot:
        """What :meth:`restore` needs to undo writes to the entities at ``slots`` (-1: not stored yet) and
        every entity registered from now on: where each stored one lives (width, row), a copy of its row,
        the key count, the key kind and each slab's size and unused rows. O(number of stored entities in
        ``slots``). It begins a write, which ends with :meth:`restore` of it (failure) or :meth:`commit`
        (success): until then no row an entity leaves is given out again.

        ``rows``: the :meth:`gather` of the same ``slots``, with nothing written since, whose copies the
        snapshot then keeps instead of reading the rows again (``slots`` must then be distinct but -1)."""
        slots = np.asarray(slots, np.int64)
        contents = []
        if rows is not None:  # distinct slots: sorted once, and each one's rank is its member index
            present = np.flatnonzero(slots >= 0)
            order = np.argsort(slots[present])
            stored = slots[present[order]]
            assert bool((stored[1:] > stored[:-1]).all()), "the slots of a shared gather are distinct"
            rank = np.empty(len(slots), np.int64)
            rank[present[order]] = np.arange(len(stored))
            width, row = self._width[stored], self._row[stored]
            for w, positions, fields in rows.groups:
                contents.append((int(w), rank[positions], fields))
        else:
            stored = np.unique(slots[slots >= 0])
            width, row = self._width[stored], self._row[stored]
            for w in np.unique(width):
                if w == 0:
                    continue
                members = np.flatnonzero(width == w)
                slab = self._slabs[int(w)]
                contents.append((int(w), members, slab.take_fields(slab.fields, row[members])))
        snapshot = StoreSnapshot(len(self._keys), self.key_kind, stored, width, row,
                                 {w: slab.size for w, slab in self._slabs.items()},
                                 {w: slab.recycling for w, slab in self._slabs.items()}, contents)
        self._open.add(snapshot)  # weakly: a snapshot its caller never got (an interrupt) closes by itself
        return snapshot

    def restore(self, snapshot: StoreSnapshot) -> None:
        """Undo everything written since :meth:`snapshot` to the entities it covered: entities registered
        since are forgotten, the others get their rows back, where they were. Only the snapshot is
        trusted, so the store is restored exactly wherever a write was interrupted (each entity's
        (width, row) is reset from the snapshot; rows allocated since are released; slabs created since
        are dropped).

        A restore is finished whatever happens: a ``KeyboardInterrupt`` during it starts it over (it is
        idempotent; one half done could leave a row both in use and free) and is raised once it is done."""
        interrupt = None
        while True:
            try:
                self._restore(snapshot)
                break
            except KeyboardInterrupt as exc:
                interrupt = exc
        if interrupt is not None:
            raise interrupt

    def _restore(self, snapshot: StoreSnapshot) -> None:
        for width, members, fields in snapshot.contents:
            self._slabs[width].put_fields(snapshot.row[members], fields)
        self._width[snapshot.slots] = snapshot.width
        self._row[snapshot.slots] = snapshot.row
        count = snapshot.count
        if self._index is not None:  # (also the keys an interrupted registration put in it, not in the list)
            self._index.truncate(count)
        del self._keys[count:]
        self.key_kind = snapshot.key_kind
        if self.key_kind is None:
            self._index = None
        for width in [w for w in self._slabs if w not in snapshot.slab_sizes]:
            del self._slabs[width]
        for width, size in snapshot.slab_sizes.items():
            self._slabs[width].size = size
            self._slabs[width].recycling = snapshot.slab_recycling[width]
        self._open.discard(snapshot)

    def commit(self, snapshot: StoreSnapshot) -> None:
        """End the write that began with ``snapshot`` (:meth:`snapshot`) and succeeded: the rows its entities
        left become free for later writes, once no other snapshot is open (an open one may still put them
        back)."""
        self._open.discard(snapshot)
        if not self._open:
            for slab in self._slabs.values():
                slab.commit()

    def row_usage(self) -> dict[int, tuple[int, int, int]]:
        """``{width: (rows allocated, rows in use, rows unused)}`` of each width's slab (an unused row is free
        for the next writes, or left by a write not yet committed)."""
        n = len(self._keys)
        out = {}
        for w, slab in sorted(self._slabs.items()):
            _, available, retired = slab.recycling
            out[w] = (slab.size, int((self._width[:n] == w).sum()), available + sum(map(len, retired)))
        return out

    def check(self) -> None:
        """``AssertionError`` unless the store's structures agree (keys, slot map, widths, rows, slabs; no row
        both live and free or retired, or held twice): a self-test for the tests; O(stored)."""
        n = len(self._keys)
        assert self._index is not None or n == 0, n
        if self._index is not None:
            assert len(self._index) == n, (len(self._index), n)
            index_keys, index_slots = self._index.items()
            assert len(index_slots) == n and set(index_slots.tolist()) == set(range(n))
            assert all(self._keys[slot] == key for key, slot in zip(index_keys.tolist(), index_slots.tolist()))
            every = np.empty(n, object)
            every[:] = self._keys
            assert (self._index.lookup(every) == np.arange(n)).all()
        assert self._width.shape[0] >= n and self._row.shape[0] >= n
        for w, slab in self._slabs.items():
            live = self._row[np.flatnonzero(self._width[:n] == w)]
            free, available, retired = slab.recycling
            unused = np.concatenate((free[:available],) + retired)
            held = np.concatenate([live, unused])  # a row is live, free or retired, never two of them
            assert held.size == 0 or (held.min() >= 0 and held.max() < slab.size), w
            assert len(np.unique(held)) == len(held), w
            assert (slab.take("feature_ids", live) >= 0).all()

    def write(self, keys: np.ndarray, slots: np.ndarray, feature_ids: np.ndarray, means: np.ndarray,
              precision: np.ndarray | None) -> None:
        """Store new coefficients for entities ``keys`` (current ``slots``, -1 for new ones).

        Args:
          keys: ``(e,)`` entity keys.
          slots: ``(e,)`` their current slots (from :meth:`lookup`).
          feature_ids: ``(e, W)`` global ids, sorted valid ids first, then -1 padding.
          means: ``(e, W)``.
          precision: ``(e, W, W)``, ``(e, W)`` or ``None``, matching the store's kind.
        """
        pending = PendingWrites()
        pending.add(keys, slots, feature_ids, means, precision)
        self.write_pending(pending)

    def write_pending(self, pending: PendingWrites) -> None:
        """:meth:`write` of everything ``pending`` holds (each entity at most once in it), in one pass per width:
        each entity's row is its first ``d`` lanes (``d`` its valid ids), a full precision kept as its upper
        triangle."""
        if not len(pending):
            return
        for fids, _, precision in pending.lanes:  # checked before anything is written
            expected = {"full": fids.shape + fids.shape[1:], "diagonal": fids.shape}.get(str(self.precision))
            if expected is not None and (precision is None or precision.shape != expected):
                raise ValueError(f"field 'precision': the store keeps a {self.precision} precision, expected shape "
                                 f"{expected}, got {None if precision is None else precision.shape}")
        lanes = [(fids, means.astype(self.dtype, copy=False), None if precision is None or self.precision is None
                  else precision.astype(self.dtype, copy=False)) for fids, means, precision in pending.lanes]
        keys = pending.keys[0] if len(pending) == 1 else np.concatenate(pending.keys)
        slots = self._register(keys, np.concatenate(pending.slots))
        starts = np.cumsum([0] + [len(k) for k in pending.keys])
        width = np.concatenate([(fids >= 0).sum(axis=1) for fids, _, _ in pending.lanes])
        for w in np.unique(width).tolist():
            members = np.flatnonzero(width == w)
            bounds = np.searchsorted(members, starts)  # members of block b: members[bounds[b]:bounds[b + 1]]
            parts = [(b, int(bounds[b]), members[bounds[b]:bounds[b + 1]] - starts[b])
                     for b in range(len(pending)) if bounds[b + 1] > bounds[b]]
            self._write_width(slots[members], w, functools.partial(self._put_lanes, blocks=lanes, parts=parts))

    def _put_lanes(self, slab: _Slab, rows: np.ndarray, blocks: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
                   parts: list[tuple[int, int, np.ndarray]]) -> None:
        """Write the lanes ``parts`` (``(block, first position in rows, lanes)`` each) of ``blocks`` (each
        ``(feature_ids, means, precision)`` padded lanes in the store's dtype) into ``slab`` at ``rows``: by the native
        helper (:func:`lljax.solve.kernels.put_lanes`, one pass) when it is enabled, else by NumPy (each field's rows
        taken, then written), with the same result."""
        w, full = slab.width, self.precision == "full"
        for block, first, lanes in parts:
            fids, means, precision = blocks[block]  # (write_pending checked the precision's shape)
            block_rows = rows[first:first + len(lanes)]
            if kernels.enabled():
                kernels.put_lanes(slab.field_chunks(), slab.chunk_start, block_rows, lanes, fids, means, precision,
                                  full=full, width=w)
                continue
            fields = {"feature_ids": fids[lanes, :w], "means": means[lanes, :w]}
            if precision is not None:
                e, W = fids.shape
                fields["precision"] = (np.take(precision.reshape(e, W * W)[lanes], _upper_positions(w, W)[0], axis=1)
                                       if full else precision[lanes, :w])
            slab.put_fields(block_rows, fields)

    def _write_width(self, slots: np.ndarray, width: int, put: Callable[[_Slab, np.ndarray], None]) -> None:
        """Give the entities at ``slots`` rows of the ``width`` slab (their own when they have one there, else
        new ones), ``put(slab, rows)`` their contents, then point them at the rows and retire those they left."""
        if width == 0:  # no features: registered, nothing stored
            left = self._leaving(slots)
            self._width[slots] = 0
            self._retire(left)
            return
        slab = self._slabs.get(width)
        if slab is None:
            slab = self._slabs[width] = _Slab(width, self.dtype, self.precision)
        in_place = self._width[slots] == width
        rows = np.empty(len(slots), np.int64)
        rows[in_place] = self._row[slots[in_place]]
        moved = np.flatnonzero(~in_place)
        left = self._leaving(slots[moved])
        rows[moved] = slab.allocate(len(moved))
        put(slab, rows)
        self._width[slots[moved]] = width
        self._row[slots[moved]] = rows[moved]
        self._retire(left)  # after the pointers moved: an interrupt before leaves them unused, never reused

    def _leaving(self, slots: np.ndarray) -> list[tuple[_Slab, np.ndarray]]:
        """The rows the entities at ``slots`` hold now, per slab (they are about to leave them)."""
        return [(slab, rows) for slab, _, rows in self._groups(slots)]

    def _retire(self, left: list[tuple[_Slab, np.ndarray]]) -> None:
        for slab, rows in left:
            slab.retire(rows)

    def _register(self, keys: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """Give the keys with slot -1 new slots (width 0: no row yet); return all slots.

        Ordered so that an interrupt between any two steps leaves a state :meth:`restore` undoes:
        the per-slot arrays are grown before any key refers to them, the key-to-slot map takes the keys
        (distinct, not held: else a ValueError, and it keeps none of them), and the key list is extended
        last (:meth:`restore` forgets every key whose slot is past the snapshot's count, whether the list
        has it or not)."""
        new = slots < 0
        if not new.any():
            return slots
        new_keys = np.asarray(keys)[new]
        first_new = len(self._keys)
        count = first_new + len(new_keys)
        kind = self.key_kind if self.key_kind is not None else _key_kind(np.asarray(keys))
        if count > min(self._width.shape[0], self._row.shape[0]):
            capacity = max(count, 2 * self._width.shape[0])
            if self._width.shape[0] < capacity:
                self._width = _grow(self._width, capacity, 0)
            if self._row.shape[0] < capacity:
                self._row = _grow(self._row, capacity, 0)
        new_slots = np.arange(first_new, count)
        self._width[new_slots] = 0
        index = self._index
        if index is None:
            index = IntKeyIndex() if kind == "int" else DictKeyIndex()
        try:
            index.insert(new_keys, first_new)  # nothing of it is kept if it raises
        except ValueError as exc:
            raise ValueError(f"field 'keys': {exc}") from None
        self._index = index
        self.key_kind = kind
        self._keys.extend(new_keys.tolist())
        slots = slots.copy()
        slots[new] = new_slots
        return slots

    def get(self, key: Any) -> EntityCoefficients:
        """Coefficients of one entity; ``KeyError`` naming the entity if it is not stored."""
        one = np.empty(1, object)
        one[0] = key
        slot = self._index.lookup(one) if self._index is not None else np.full(1, -1)  # a key of another type: -1
        if slot[0] < 0:
            raise KeyError(f"entity {key!r} is not in the model")
        flat = self.to_flat(slot)
        precision = flat.precision
        if precision is not None and self.precision == "full":
            d = len(flat.feature_ids)
            precision = precision.reshape(d, d)
        return EntityCoefficients(flat.feature_ids, flat.means, precision)

    def to_flat(self, slots: np.ndarray | None = None, *, precision_form: str = "square") -> FlatEntities:
        """The entities at ``slots`` (default: all, in slot order) in compact form (copies); a full precision
        as its square matrix or (``precision_form="upper"``) as its upper triangle, as stored."""
        if precision_form not in PRECISION_FORMS:
            raise ValueError(f"field 'precision_form': value {precision_form!r} is not one of {list(PRECISION_FORMS)}")
        upper = precision_form == "upper"
        slots = np.arange(len(self._keys)) if slots is None else np.asarray(slots, np.int64)
        U = len(slots)
        sizes = np.zeros(U, np.int64)
        # Per width group, valid entries only: positions, fids, means, precision (every slab has one, or none does).
        positions_of: list[np.ndarray] = []
        fids_of: list[np.ndarray] = []
        means_of: list[np.ndarray] = []
        precision_of: list[np.ndarray] = []
        for slab, positions, rows in self._groups(slots):
            taken = slab.take_fields(slab.fields, rows)
            fids = taken["feature_ids"]
            valid = fids >= 0
            sizes[positions] = valid.sum(axis=1)
            if slab.has_precision:
                p = taken["precision"]
                if self.precision == "full":  # rows are live, so every feature is valid
                    precision_of.append((p if upper else unpack_upper(p, slab.width)).reshape(-1))
                else:
                    precision_of.append(p[valid])
            positions_of.append(positions)
            fids_of.append(fids[valid])
            means_of.append(taken["means"][valid])
        indptr = np.zeros(U + 1, np.int64)
        np.cumsum(sizes, out=indptr[1:])
        per_entity = (sizes * (sizes + 1) // 2 if upper else sizes**2) if self.precision == "full" else sizes
        fids = _in_slot_order(fids_of, positions_of, sizes, U, np.int64)
        means = _in_slot_order(means_of, positions_of, sizes, U, self.dtype)
        precision = None if self.precision is None else _in_slot_order(precision_of, positions_of, per_entity, U,
                                                                        self.dtype)
        keys = np.empty(U, object)  # only the requested keys: converting all of them costs O(stored)
        keys[:] = [self._keys[i] for i in slots.tolist()]
        return FlatEntities(_plain_keys(keys, self.key_kind), indptr, fids, means, precision, precision_form)

    @classmethod
    def from_flat(cls, flat: FlatEntities, dtype: Any, precision: str | None) -> EntityStore:
        """A store holding ``flat``'s entities, in its order (the inverse of :meth:`to_flat`)."""
        store = cls(dtype, precision)
        store.write_flat(flat)
        return store

    def write_flat(self, flat: FlatEntities) -> None:
        """Store (add or replace) the entities of ``flat``; new keys get slots in ``flat``'s order.

        ``flat.precision`` must match the store's kind (``None`` for a store without precision); a full one is
        read in ``flat.precision_form``.
        """
        if flat.precision_form not in PRECISION_FORMS:
            raise ValueError(f"field 'precision_form': value {flat.precision_form!r} is not one of "
                             f"{list(PRECISION_FORMS)}")
        slots = self._register(flat.keys, self.lookup(flat.keys))
        sizes = flat.sizes
        prec_indptr = flat.precision_indptr if self.precision == "full" else flat.indptr
        for width in np.unique(sizes) if len(flat.keys) else []:
            d = int(width)
            members = np.flatnonzero(sizes == width)
            g = len(members)
            pairs = concat_ranges(flat.indptr[members], np.full(g, d))
            prec = None
            if self.precision == "diagonal":
                assert flat.precision is not None, "a store with precision is given one"
                prec = flat.precision[pairs].reshape(g, d)
            elif self.precision == "full" and flat.precision_form == "upper":  # as stored: taken as it is
                assert flat.precision is not None, "a store with precision is given one"
                t = d * (d + 1) // 2
                prec = flat.precision[concat_ranges(prec_indptr[members], np.full(g, t))].reshape(g, t)
            elif self.precision == "full":
                assert flat.precision is not None, "a store with precision is given one"
                dense = flat.precision[concat_ranges(prec_indptr[members], np.full(g, d * d))].reshape(g, d, d)
                prec = pack_upper(dense)
            fields = {"feature_ids": flat.feature_ids[pairs].reshape(g, d), "means": flat.means[pairs].reshape(g, d)}
            if prec is not None:
                fields["precision"] = prec
            self._write_width(slots[members], d, functools.partial(_put_fields, fields=fields))


def _in_slot_order(arrays: list[np.ndarray], group_positions: list[np.ndarray], counts: np.ndarray, U: int,
                   dtype: npt.DTypeLike) -> np.ndarray:
    """Concatenate the ``arrays`` of width groups (one per group, ``group_positions`` their positions),
    reordered to slot order.

    Each group's array holds its entities' entries one entity after the other (in the group's
    ``positions`` order), ``counts[position]`` entries each.
    """
    if not arrays:
        return np.zeros(0, dtype)
    chunks = np.concatenate(arrays)
    positions = np.concatenate(group_positions)
    group_counts = counts[positions]
    group_start = np.cumsum(group_counts) - group_counts
    start_of = np.zeros(U, np.int64)
    start_of[positions] = group_start
    return chunks[concat_ranges(start_of, counts)].astype(dtype, copy=False)


def _key_kind(keys: np.ndarray) -> str | None:
    """``"int"``, ``"str"`` (or a type name) for an array of keys of one type; ``None`` if empty."""
    if keys.size == 0:
        return None
    if keys.dtype.kind in "iu":
        return "int"
    if keys.dtype.kind == "U":
        return "str"
    first = keys.flat[0]
    if isinstance(first, str):
        return "str"
    if isinstance(first, (int, np.integer)) and not isinstance(first, bool):
        return "int"
    return type(first).__name__


def _plain_keys(keys: np.ndarray, kind: str | None = None) -> np.ndarray:
    """Object array of keys -> int64 or str array when the keys allow it (they are of one type); an
    empty selection is an empty int64 or str array (by ``kind``), never an object array."""
    if keys.size == 0:
        return np.zeros(0, str if kind == "str" else np.int64)
    first = keys[0]
    if isinstance(first, (int, np.integer)) and not isinstance(first, bool):
        return keys.astype(np.int64)
    if isinstance(first, str):
        return keys.astype(str)
    return keys
