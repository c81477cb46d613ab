"""Host buffers for a round's blocks: aligned, and reused from one block to the next.

JAX's CPU backend takes a C-contiguous NumPy array whose data starts at a multiple of :data:`ALIGNMENT`
bytes as the device buffer itself when it is passed to a jitted function (NumPy aligns large arrays to
16 bytes only, and those are copied at every call). A block built in such arrays therefore costs no copy
at dispatch on CPU, but its memory is fresh for every block, and touching fresh pages costs as much as
the copy did: so the arrays of a block whose result has been collected go back to a
:class:`BufferPool` and the next blocks are built in them.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["ALIGNMENT", "Buffers", "BufferPool"]

ALIGNMENT = 64
"""Bytes a block's host arrays are aligned to (the alignment XLA's CPU backend needs to use them in place)."""


class Buffers:
    """Allocates a block's host arrays, each aligned to :data:`ALIGNMENT` bytes.

    On its own, every array is fresh memory; a :class:`BufferPool`'s lease (:meth:`BufferPool.lease`)
    takes them from the pool's free buffers first. The lease records every buffer it handed out, for
    :meth:`BufferPool.give_back`.
    """

    def __init__(self, pool: BufferPool | None = None):
        self._pool = pool
        self.raw: list[np.ndarray] = []  # the uint8 buffers the arrays lent so far are views of

    def zeros(self, shape: int | tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
        """An aligned ``np.zeros(shape, dtype)``."""
        return self._array(shape, dtype, zero=True)

    def empty(self, shape: int | tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
        """An aligned ``np.empty(shape, dtype)``."""
        return self._array(shape, dtype, zero=False)

    def _array(self, shape: int | tuple[int, ...], dtype: npt.DTypeLike, zero: bool) -> np.ndarray:
        dtype = np.dtype(dtype)
        shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        raw = None if self._pool is None else self._pool.take(nbytes + ALIGNMENT)
        reused = raw is not None
        if raw is None:  # fresh: np.zeros gets pages the system has zeroed already
            raw = (np.zeros if zero else np.empty)(nbytes + ALIGNMENT, np.uint8)
        self.raw.append(raw)
        start = -raw.ctypes.data % ALIGNMENT
        data = raw[start:start + nbytes]
        if zero and reused:
            data.fill(0)
        return data.view(dtype).reshape(shape)


class BufferPool:
    """Free host buffers kept for the next blocks (of an update, and of the next updates: see
    :meth:`trim`).

    A block is built with a :meth:`lease`; once nothing reads the block's arrays any more (for a
    dispatched block: its result has been fetched, so its solve, which read them, is over) the lease is
    given back and its buffers serve the next blocks. An array that must outlive the block is not
    taken from a lease. At most ``max_free_bytes`` are kept free (the oldest buffers are dropped first).
    """

    def __init__(self, max_free_bytes: int):
        self.max_free_bytes = int(max_free_bytes)
        self._free: list[np.ndarray] = []

    def lease(self) -> Buffers:
        """A :class:`Buffers` that takes from this pool."""
        return Buffers(self)

    def take(self, nbytes: int) -> np.ndarray | None:
        """The smallest free buffer of ``nbytes`` to ``2 * nbytes`` bytes (removed from the pool), if any."""
        best = None
        for i, raw in enumerate(self._free):
            if nbytes <= raw.nbytes <= 2 * nbytes and (best is None or raw.nbytes < self._free[best].nbytes):
                best = i
        return None if best is None else self._free.pop(best)

    def give_back(self, lease: Buffers) -> None:
        """Return the buffers of ``lease`` to the pool: its arrays must not be used any more."""
        self._free.extend(lease.raw)
        lease.raw = []
        self.trim(self.max_free_bytes)

    def trim(self, max_bytes: int) -> None:
        """Drop the oldest free buffers until at most ``max_bytes`` are kept."""
        total = self.free_bytes
        while self._free and total > max_bytes:
            total -= self._free.pop(0).nbytes

    @property
    def free_bytes(self) -> int:
        """Bytes of the free buffers kept."""
        return sum(raw.nbytes for raw in self._free)
