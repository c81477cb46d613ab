"""lljax's native CPU kernels: XLA FFI custom calls (``jax.ffi``) and host-side packing helpers, optional.

The compiled extension ``lljax.solve.kernels._newton`` (C++, built by ``pip install`` when a C++ compiler
is available; see ``setup.py``) holds:

- the **Newton kernel** (``newton_kernel.h``): a whole block of entities by damped Newton, the same
  iteration (:mod:`lljax.solve.iteration`), penalty and finish as the ``"newton"`` method, with the entity axis
  in the SIMD lanes (4 float64 or 8 float32 entities per group, AVX2 + FMA when the CPU has them,
  chosen at run time) and each group's whole solve fused in cache. Every loss goes through the same
  kernel (one row function per loss). It runs as an XLA custom call on a dense block
  (:func:`newton_solve`), or called from Python on a :class:`~lljax.solve.blocks.RowsBlock`
  (:func:`newton_solve_rows`): then it reads each lane's examples from the dataset's CSR rows as it loads
  the lane's group, on helper threads of its own while the caller goes on (as an asynchronous dispatch
  does) and on the caller's thread once it waits, and no ``(E, N, D)`` design is packed at all;
- the **wide kernel** (``wide_kernel.h``): Newton in the span of the rows on sparse blocks, the
  same iterates as the ``"span"`` method (:mod:`lljax.solve.span`), one entity at a time with
  ``K = X A^-1 X^T`` built from the nonzeros grouped by column;
- **host helpers** (``pack.cc``, plain CPython), each in one pass: for :mod:`lljax.rounds` (which keeps its
  NumPy paths as the fallback), :func:`pack_rows` scatters a block's sparse rows into its dense design matrix
  or sparse slots, :func:`block_rows` gathers a block's rows and their label / weight / offset columns,
  :func:`scatter_priors` puts stored priors at their local columns, :func:`restrict_subspaces` gives a block's
  lanes their subspaces, :func:`subspace_keys` finds every entity's distinct features (and the rows that
  repeat their entity's row before them) and :func:`group_rows` groups the rows by entity (a counting sort);
  for :mod:`lljax.data`, :func:`encode_keys` finds the distinct integer entity keys; for :mod:`lljax.state`,
  :func:`move_rows` and :func:`put_lanes` copy rows between a slab's chunks and flat arrays or solver lanes,
  :func:`prefault` maps pages ahead and :func:`hash_lookup` / :func:`hash_insert` run the integer key index.

Without the extension (or with ``LLJAX_NATIVE=0``) the pure-JAX / NumPy paths run; results of the
two agree to rounding (the host helpers exactly).

- :func:`available` says whether the extension was built and registered; :func:`build_error` why not.
- Which blocks run on a kernel is decided on the host by :func:`lljax.solve.registry.choose_backend`
  at every call: ``LLJAX_NATIVE=0`` in the environment forces the pure-JAX path for both kernels (and
  turns off the host helpers: then NumPy packs); ``SolverConfig(native=False/True)`` does so per call.
- ``LLJAX_NATIVE_THREADS=k`` caps the threads the kernel uses (default: XLA's CPU thread pool) and those of
  the host helpers that use several (:func:`host_threads`).
- ``LLJAX_NATIVE_ISA=generic`` (read once per process) runs the baseline-ISA variant on an AVX2 CPU.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from types import ModuleType
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
from jax.typing import ArrayLike

from lljax.solve.base import AnyArray, SolveResult
from lljax.solve.blocks import RowsBlock
from lljax.solve.objective import penalized_features

__all__ = ["available", "build_error", "enabled", "isa", "supports", "per_entity", "solve_result",
           "compiled_constants", "newton_solve", "newton_solve_rows", "RowsSolve", "wide_solve", "pack_rows",
           "block_rows", "scatter_priors", "move_rows", "put_lanes", "restrict_subspaces", "hash_lookup",
           "hash_insert", "prefault", "subspace_keys", "group_rows", "encode_keys", "host_threads", "feature_mask",
           "LOSS_CODES", "PRECISION_CODES", "MASK_CODES"]

LOSS_CODES = {"linear": 0, "logistic": 1, "poisson": 2}
PRECISION_CODES = {"diagonal": 0, "full": 1, "none": 2}
MASK_CODES = {"padding": 0, "penalized": 1, "unpenalized": 2}  # newton_common.h: MaskCode
_TARGETS = {np.dtype(np.float64): "lljax_newton_f64", np.dtype(np.float32): "lljax_newton_f32"}
_WIDE_TARGETS = {np.dtype(np.float64): "lljax_wide_f64", np.dtype(np.float32): "lljax_wide_f32"}

_module: ModuleType | None = None  # the compiled extension (no stubs: its functions are untyped)
_error: str | None = None

if importlib.util.find_spec(f"{__name__}._newton") is None:
    _error = ("the compiled module lljax.solve.kernels._newton is not installed (built by `pip install` when a C++ "
              "compiler and jaxlib's XLA FFI headers are available; see setup.py)")
else:
    try:
        # The compiled C++ extension (built by setup.py, maybe absent) has no stub for mypy to read.
        from . import _newton as _compiled  # type: ignore[attr-defined]

        _module = _compiled
        for _name, _capsule in _compiled.registrations().items():
            jax.ffi.register_ffi_target(_name, _capsule, platform="cpu")
    except Exception as exc:  # a module built for another Python/jaxlib, or an FFI registration failure
        _module = None
        _error = f"{type(exc).__name__}: {exc}"


# A kernel's (theta, value, grad_norm, precision or None, iterations, status).
_Outputs = tuple[jax.Array, jax.Array, jax.Array, jax.Array | None, jax.Array, jax.Array]


class _Subspaces(Protocol):
    """What :func:`pack_rows` reads of a :class:`lljax.rounds.subspaces.Subspaces` (not imported: rounds
    imports this module)."""

    @property
    def pair_keys(self) -> np.ndarray: ...

    @property
    def start(self) -> np.ndarray: ...

    @property
    def sizes(self) -> np.ndarray: ...

    @property
    def stride(self) -> int: ...


def available() -> bool:
    """Whether the native kernel was built and registered with XLA."""
    return _module is not None


def build_error() -> str | None:
    """Why the native kernel is not available (``None`` if it is)."""
    return _error


def enabled() -> bool:
    """Whether the automatic dispatch uses the native kernel: built, and not disabled by ``LLJAX_NATIVE=0``."""
    return available() and os.environ.get("LLJAX_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def isa() -> str | None:
    """The kernel variant this CPU runs (``"avx2+fma"`` or ``"generic"``), ``None`` if not built."""
    return _module.isa() if _module is not None else None


def supports(dtype: npt.DTypeLike) -> bool:
    """Whether the kernel has a variant for ``dtype``."""
    return np.dtype(dtype) in _TARGETS


def per_entity(E: int, *scalars: ArrayLike) -> tuple[jax.Array, ...]:
    """Each scalar (``l2``, ``delta``, ``tol``, ``max_iter``) broadcast to ``(E,)``: the kernels take them
    per entity."""
    return tuple(jnp.broadcast_to(x, (E,)) for x in scalars)


def solve_result(outputs: _Outputs | tuple, hessian: str) -> SolveResult:
    """A :class:`~lljax.solve.base.SolveResult` from a kernel's ``(theta, value, grad_norm, precision,
    iterations, status)`` (already finished as :func:`lljax.solve.iteration.finish`; JAX arrays, or NumPy
    from :func:`newton_solve_rows`); ``"identity"`` precision is a vector of ones of ``theta``'s kind."""
    theta, value, grad_norm, precision, iterations, status = outputs
    if hessian == "identity":
        precision = np.ones_like(theta) if isinstance(theta, np.ndarray) else jnp.ones_like(theta)
    return SolveResult(theta=theta, precision=precision, loss=value, grad_norm=grad_norm, iterations=iterations,
                       status=status)


def _native() -> ModuleType:
    """The compiled extension; ``RuntimeError`` saying why when it is not available."""
    if _module is None:
        raise RuntimeError(f"lljax native kernel not available: {_error}")
    return _module


def compiled_constants() -> dict:
    """The line-search constants and status codes the kernels were compiled with (to check them against
    :mod:`lljax.solve.base`)."""
    return dict(_native().constants())


def feature_mask(feature_ids: AnyArray, penalize_intercept: bool) -> AnyArray:
    """The kernels' int32 feature mask (:data:`MASK_CODES`) of ``feature_ids`` (-1 padding, 0 the
    intercept): padding, a penalized feature, or the intercept without the L2 term. NumPy in, NumPy out
    (a :class:`~lljax.solve.blocks.RowsBlock`'s host call); else a JAX array (inside the jitted solves)."""
    xp: Any = np if isinstance(feature_ids, np.ndarray) else jnp
    ids = xp.asarray(feature_ids)
    code = xp.where(penalized_features(ids, penalize_intercept), MASK_CODES["penalized"], MASK_CODES["unpenalized"])
    return xp.where(ids >= 0, code, MASK_CODES["padding"]).astype(xp.int32)


def newton_solve(X: AnyArray, y: AnyArray, w: AnyArray, offset: AnyArray, mask: AnyArray, prior_mean: AnyArray,
                 prior_precision: AnyArray, l2: jax.Array, delta: jax.Array, tol: jax.Array, max_iter: jax.Array, *,
                 loss: str, max_backtracks: int, precision: str) -> _Outputs:
    """Run the kernel on a block (leading axis ``E``; any extra leading axes are batch axes).

    The kernel forms each entity's penalty from its prior as :func:`lljax.solve.newton._make_penalty` does and
    finishes as :func:`lljax.solve.newton._finish` does, so that no ``(E, D, D)`` temporary is made around it.

    Args:
      X: ``(E, N, D)``; y, w, offset: ``(E, N)``; mask: ``(E, D)`` (:func:`feature_mask`: 0 padding, 1 a
        feature, 2 a feature without the L2 term); prior_mean: ``(E, D)``; prior_precision: ``(E, D, D)`` or
        ``(E, D)``; l2, delta, tol: ``(E,)``; max_iter: ``(E,)`` int32.
      loss: ``"linear"``, ``"logistic"`` or ``"poisson"``.
      max_backtracks: line-search halvings before STALLED.
      precision: ``"full"`` (``(E, D, D)`` Hessian at the solution), ``"diagonal"`` (``(E, D)``) or
        ``"none"``.
    Returns:
      ``(theta, value, grad_norm, precision, iterations, status)`` as in :class:`lljax.SolveResult`
      (``precision`` is ``None`` for ``"none"``): a lane whose precision is not finite is NON_FINITE, and a
      NON_FINITE lane has its masked prior mean as ``theta`` and its prior precision as ``precision``.
    """
    if not available():
        raise RuntimeError(f"lljax native kernel not available: {_error}")
    dtype = np.dtype(X.dtype)
    batch, D = X.shape[:-2], X.shape[-1]
    mode = PRECISION_CODES[precision]
    prec_shape = {0: (D,), 1: (D, D), 2: (1,)}[mode]
    out_types = (
        jax.ShapeDtypeStruct(batch + (D,), dtype),  # theta
        jax.ShapeDtypeStruct(batch, dtype),  # value
        jax.ShapeDtypeStruct(batch, dtype),  # grad_norm
        jax.ShapeDtypeStruct(batch + prec_shape, dtype),  # precision
        jax.ShapeDtypeStruct(batch, jnp.int32),  # iterations
        jax.ShapeDtypeStruct(batch, jnp.int32),  # status
    )
    call = jax.ffi.ffi_call(_TARGETS[dtype], out_types, vmap_method="broadcast_all")
    theta, value, grad_norm, prec, iterations, status = call(
        X, y, w, offset, mask.astype(jnp.int32), prior_mean, prior_precision, l2, delta, tol,
        max_iter.astype(jnp.int32), loss=np.int32(LOSS_CODES[loss]), max_backtracks=np.int32(max_backtracks),
        precision_mode=np.int32(mode))
    return theta, value, grad_norm, (None if mode == 2 else prec), iterations, status


_NO_REPEATS = np.zeros(0, np.uint8)  # newton_rows_start's repeats when a RowSource has none


class RowsSolve:
    """A :func:`newton_solve_rows` call in progress: the kernel runs on helper threads of its own (no GIL),
    writing its results in place, while the caller goes on; :meth:`result` solves the groups of lanes no helper
    has claimed yet on the calling thread and waits for the helpers. If nobody waits, the helpers are waited
    for when this object is freed (its arrays stay alive until then; the lanes they left are not solved)."""

    def __init__(self, job: object, outputs: tuple) -> None:
        self._job, self._outputs = job, outputs

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
        """``(theta, value, grad_norm, precision, iterations, status)`` once the kernel is done (the GIL is
        released meanwhile; the calling thread solves lanes too).

        Raises:
          ValueError: a row's feature is not in its lane's subspace; IndexError: a row index (or its indptr)
          out of range; MemoryError: no thread got its workspace.
        """
        _native().newton_rows_wait(self._job)
        return self._outputs


def newton_solve_rows(block: RowsBlock, mask: AnyArray, l2: np.ndarray, delta: np.ndarray, tol: np.ndarray,
                      max_iter: np.ndarray, *, loss: str, max_backtracks: int, precision: str) -> RowsSolve:
    """Start :func:`newton_solve` on the dense block that ``block`` stands for
    (:func:`lljax.solve.blocks.dense_from_rows`), without making it: the kernel reads each lane's rows from
    ``block.source`` as it loads the lane's group (C++, see ``newton.cc``), with :func:`host_threads` workers
    (that many helper threads less one start at once, and the call returns; the thread that calls ``result()``
    is the last worker). The results are the same, bit for bit, whatever the workers.

    Args:
      block: the :class:`~lljax.solve.blocks.RowsBlock` (``E`` lanes, ``D`` features; its float arrays of one
        dtype, float32 or float64).
      mask: ``(E, D)`` int32 (:func:`feature_mask`); l2, delta, tol: ``(E,)`` of the block's dtype; max_iter:
        ``(E,)`` int32.
      loss, max_backtracks, precision: as in :func:`newton_solve`.
    Returns:
      The :class:`RowsSolve`, whose ``result()`` is ``(theta, value, grad_norm, precision, iterations,
      status)``, NumPy arrays as :func:`newton_solve`'s (``precision`` ``None`` for ``"none"``).
    Raises:
      IndexError: a lane's rows or subspace out of range (checked before the kernel starts; the rows themselves
      are checked as the kernel reads them, and reported by ``result()``); TypeError: an array of another dtype
      than expected (the dataset's arrays are never converted, which would copy them for every block).
    """
    dtype = np.dtype(block.prior_mean.dtype)
    E, D = block.feature_ids.shape
    mode = PRECISION_CODES[precision]
    theta = np.empty((E, D), dtype)
    value, grad_norm = np.empty(E, dtype), np.empty(E, dtype)
    prec = np.empty((E,) + {0: (D,), 1: (D, D), 2: (1,)}[mode], dtype)
    iterations, status = np.empty(E, np.int32), np.empty(E, np.int32)
    c = np.ascontiguousarray  # the kernel reads C-contiguous buffers (no copy when they already are)
    src = block.source
    job = _native().newton_rows_start(
        c(src.indptr), c(src.feature_ids), c(src.values), c(src.label), c(src.weight), c(src.offset), c(src.row_order),
        c(block.lane_begin, np.int64), c(block.lane_end, np.int64),
        c(block.keys, np.int64), c(block.start[:E], np.int64), c(block.sizes, np.int64), int(block.stride),
        int(src.leading), int(block.N), c(mask, np.int32), c(block.prior_mean, dtype), c(block.prior_precision, dtype),
        c(l2, dtype), c(delta, dtype), c(tol, dtype), c(max_iter, np.int32), LOSS_CODES[loss], int(max_backtracks),
        mode, theta, value, grad_norm, prec, iterations, status, host_threads(), bool(src.logistic_labels),
        _NO_REPEATS if src.repeats is None else c(src.repeats, np.uint8))
    return RowsSolve(job, (theta, value, grad_norm, None if mode == 2 else prec, iterations, status))


def wide_solve(cols: AnyArray, vals: AnyArray, y: AnyArray, w: AnyArray, offset: AnyArray, mask: AnyArray,
               prior_mean: AnyArray, prior_precision: AnyArray, l2: jax.Array, delta: jax.Array, tol: jax.Array,
               max_iter: jax.Array, *, loss: str, max_backtracks: int, precision: str) -> _Outputs:
    """Run the wide kernel (Newton in the span of the rows, :mod:`lljax.solve.span`) on a sparse block.

    Args:
      cols: ``(E, N, K)`` int32 local columns; vals: ``(E, N, K)``; y, w, offset: ``(E, N)``; mask:
        ``(E, D)``; prior_mean, prior_precision: ``(E, D)`` (diagonal); l2, delta, tol: ``(E,)``;
        max_iter: ``(E,)`` int32.
      loss: ``"linear"``, ``"logistic"`` or ``"poisson"``; max_backtracks: line-search halvings.
      precision: ``"diagonal"`` or ``"none"``.
    Returns:
      ``(theta, value, grad_norm, precision, iterations, status)`` as in :class:`lljax.SolveResult`,
      finished as :func:`lljax.solve.newton._finish` (``precision`` ``None`` for ``"none"``).
    """
    if not available():
        raise RuntimeError(f"lljax native kernel not available: {_error}")
    dtype = np.dtype(vals.dtype)
    batch, D = cols.shape[:-2], mask.shape[-1]
    mode = PRECISION_CODES[precision]
    if mode not in (0, 2):
        raise ValueError(f"the wide kernel gives a diagonal precision or none, not {precision!r}")
    out_types = (
        jax.ShapeDtypeStruct(batch + (D,), dtype),
        jax.ShapeDtypeStruct(batch, dtype),
        jax.ShapeDtypeStruct(batch, dtype),
        jax.ShapeDtypeStruct(batch + ((D,) if mode == 0 else (1,)), dtype),
        jax.ShapeDtypeStruct(batch, jnp.int32),
        jax.ShapeDtypeStruct(batch, jnp.int32),
    )
    call = jax.ffi.ffi_call(_WIDE_TARGETS[dtype], out_types, vmap_method="broadcast_all")
    theta, value, grad_norm, prec, iterations, status = call(
        cols.astype(jnp.int32), vals, y, w, offset, mask.astype(jnp.int32), prior_mean, prior_precision, l2, delta,
        tol, max_iter.astype(jnp.int32), loss=np.int32(LOSS_CODES[loss]), max_backtracks=np.int32(max_backtracks),
        precision_mode=np.int32(mode))
    return theta, value, grad_norm, (None if mode == 2 else prec), iterations, status


def pack_rows(indptr: np.ndarray, feature_ids: np.ndarray, values: np.ndarray, rows: np.ndarray, row_cell: np.ndarray,
              row_lane: np.ndarray, subspaces: _Subspaces, D: int, out: np.ndarray, *,
              slot_cols: np.ndarray | None = None, K: int = 0, leading: int | None = None) -> None:
    """Place each row's nonzeros in its block cell, in one pass (C++, see ``pack.cc``).

    Dense (``slot_cols`` None): ``out[row_cell[i] * D + col] += value``. Slots (a
    :class:`~lljax.solve.span.SparseBlock`'s layout, ``K`` slots per row): the row's ``j``-th nonzero goes to
    slot ``row_cell[i] * K + j`` as ``slot_cols = col``, ``out = value``. ``col`` is the nonzero's local
    column in its lane's subspace: its rank in the row when that is right (checked), else found in a
    per-lane feature table (feature spaces up to 2^22 ids) or by binary search. This is the host-side
    half of :meth:`lljax.rounds.round.Round.build`.

    Args:
      indptr, feature_ids, values: the dataset's CSR rows (int64; int32 or int64; float32 or float64).
      rows, row_cell, row_lane: ``(R,)`` integers: the dataset rows of the block, each one's flat cell
        ``lane * N + rank`` and its lane.
      subspaces: the block's :class:`lljax.rounds.subspaces.Subspaces` (lane-numbered, see ``restrict``).
      D: padded features.
      out: float64, C-contiguous, written in place: ``(E * N * D,)`` (dense, zeros where nothing is
        added) or ``(E * N * K,)`` values (slots).
      slot_cols: ``(E * N * K,)`` int32, C-contiguous, written in place (slots), or ``None`` (dense).
      K: slots per row (slots; at least the most entries of a row, the leading one included).
      leading: a feature id every row starts with, of value 1, before its stored nonzeros (the
        dataset's implicit intercept), or ``None``. The stored nonzeros then have ranks 1, 2, ...
    Raises:
      ValueError: a nonzero's feature is not in its entity's subspace (names the feature and the row).
    """
    c = np.ascontiguousarray  # the helper reads C-contiguous buffers (no copy when they already are)
    if (slot_cols is None) != (K == 0):
        raise ValueError("pack_rows: give slot_cols and K > 0 together (slots), or neither (dense)")
    _native().pack_rows(c(indptr), c(feature_ids), c(values), c(rows, np.int64), c(row_cell, np.int64),
                      c(row_lane, np.int64), c(subspaces.pair_keys), c(subspaces.start), c(subspaces.sizes),
                      int(subspaces.stride), int(D), out, int(K), slot_cols, -1 if leading is None else int(leading))


def encode_keys(keys: np.ndarray, max_distinct: int | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """``(distinct (U,), codes (n,))``, both int64: the distinct ``keys`` in the order they first appear, and each key's
    position among them, in one pass through a hash table (C++, see ``pack.cc``): ``np.unique(keys,
    return_inverse=True)`` but for the order of the distinct keys, without a sort of all ``n``.

    Args:
      keys: ``(n,)`` int64.
      max_distinct: give up (``None``) past this many distinct keys (the table and the list take 40-80 bytes per
        distinct key); default: no limit.
    """
    codes = np.empty(len(keys), np.int64)
    limit = len(keys) if max_distinct is None else int(max_distinct)
    distinct = _native().encode_keys(np.ascontiguousarray(keys, np.int64), codes, limit)
    return None if distinct is None else (np.frombuffer(distinct, np.int64), codes)


def group_rows(codes: np.ndarray, row_start: np.ndarray) -> np.ndarray:
    """The rows grouped by entity, each entity's in increasing order: ``np.argsort(codes, kind="stable")``, by a
    counting sort in one pass over the codes (C++, see ``pack.cc``; no comparison sort, whatever their order).

    Args:
      codes: ``(n,)`` int64 entity codes in ``[0, U)``.
      row_start: ``(U + 1,)`` int64 offsets of each entity's rows (the cumulative sum of their counts, from 0).
    Returns:
      ``(n,)`` int64 row indices.
    Raises:
      IndexError: a code outside ``[0, U)``; ValueError: counts that differ from ``row_start``.
    """
    c = np.ascontiguousarray
    order = np.empty(len(codes), np.int64)
    _native().group_rows(c(codes, np.int64), c(row_start, np.int64), order)
    return order


def block_rows(row_order: np.ndarray, row_start: np.ndarray, entities: np.ndarray, N: int,
               columns: Sequence[np.ndarray], outputs: Sequence[np.ndarray],
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A block's rows and their padded cells, in one pass (C++, see ``pack.cc``).

    What :func:`lljax.rounds.round.block_rows` computes with NumPy: ``rows`` the dataset rows of
    ``entities``, entity by entity (in ``row_order``'s order), ``lane`` each row's position of its
    entity in ``entities``, ``cell = lane * N + rank``; and ``outputs[c][cell] = columns[c][row]``.

    Args:
      row_order: ``(n,)`` int64 rows grouped by entity; row_start: ``(U + 1,)`` int64 offsets.
      entities: ``(e,)`` int64 entity codes of the block's lanes (at most ``N`` rows each).
      N: padded rows per lane.
      columns: three ``(n,)`` float arrays (label, weight, offset), cast to the outputs' dtype.
      outputs: three ``(E * N,)`` float32 or float64 arrays of one dtype (``E >= e``), C-contiguous,
        written in place.
    Returns:
      ``(rows, lane, cell)``, each ``(R,)`` int64.
    """
    c = np.ascontiguousarray
    row_start, entities = c(row_start, np.int64), c(entities, np.int64)
    outside = (entities < 0) | (entities >= len(row_start) - 1)
    if outside.any():
        raise IndexError(f"block_rows: entity {int(entities[np.argmax(outside)])} out of range")
    total = int(np.sum(row_start[entities + 1] - row_start[entities]))
    rows, lane, cell = (np.empty(total, np.int64) for _ in range(3))
    _native().block_rows(c(row_order, np.int64), row_start, entities, int(N),
                       *(c(col, outputs[0].dtype) for col in columns), *outputs, rows, lane, cell)
    return rows, lane, cell


def move_rows(chunks: list[np.ndarray], chunk_start: np.ndarray, rows: np.ndarray, flat: np.ndarray, *,
              into_chunks: bool) -> None:
    """Copy whole rows between a chunked array and a flat one in one pass (C++, see ``pack.cc``): what
    :class:`lljax.state.store`'s slabs do chunk by chunk with NumPy.

    Args:
      chunks: C-contiguous arrays of one dtype; chunk ``c`` holds rows ``chunk_start[c]`` to
        ``chunk_start[c + 1] - 1``, each row as long as a row of ``flat``.
      chunk_start: ``(len(chunks) + 1,)`` int64, non-decreasing.
      rows: ``(k,)`` int64 row numbers in ``[chunk_start[0], chunk_start[-1])``.
      flat: ``(k, ...)`` C-contiguous, of the chunks' dtype.
      into_chunks: row ``i`` of ``flat`` is written to row ``rows[i]`` (else read from it into ``flat``).
    Raises:
      IndexError: a row out of range; ValueError / TypeError: inconsistent sizes or dtypes.
    """
    _native().move_rows(chunks, chunk_start, rows, flat, into_chunks)


def put_lanes(chunks: Sequence[list[np.ndarray] | None], chunk_start: np.ndarray, rows: np.ndarray, lanes: np.ndarray,
              feature_ids: np.ndarray, means: np.ndarray, precision: np.ndarray | None, *, full: bool, width: int
              ) -> None:
    """Write solver lanes of one exact width straight into a chunked store slab's rows, in one pass (C++, see
    ``pack.cc``): what :meth:`lljax.state.store.EntityStore.write_pending` does with NumPy without the kernels (each
    field's lanes taken, then the slab's ``put_fields``).

    Args:
      chunks: the slab's chunk lists of ``feature_ids`` (int64 ``(rows, w)`` each), ``means`` (``(rows, w)``) and
        ``precision`` (``(rows, w (w + 1) / 2)`` upper triangles when ``full``, else ``(rows, w)``; ``None`` when the
        slab keeps none); chunk ``c`` holds rows ``chunk_start[c]`` to ``chunk_start[c + 1] - 1``.
      chunk_start: ``(len(chunks[0]) + 1,)`` int64, non-decreasing.
      rows: ``(m,)`` int64 slab rows; lanes: ``(m,)`` int64 the lane written to each.
      feature_ids: ``(e, W)`` int64 padded ids (each written lane's first ``width`` valid); means: ``(e, W)``;
        precision: ``(e, W, W)`` (``full``), ``(e, W)`` or ``None``, of the means' dtype (the chunks' too).
      full: whether the precision is written as its ``width x width`` upper triangle, row by row.
      width: ``w``, the slab's width (``1 <= w <= W``).
    Raises:
      IndexError: a row or lane out of range; ValueError / TypeError: inconsistent sizes or dtypes.
    """
    c = np.ascontiguousarray
    kind = 0 if precision is None else 2 if full else 1
    W = feature_ids.shape[1]
    fid_chunks, mean_chunks, precision_chunks = chunks
    _native().put_lanes(fid_chunks, mean_chunks, precision_chunks if kind else None, c(chunk_start, np.int64),
                        c(rows, np.int64), c(lanes, np.int64), c(feature_ids, np.int64), c(means),
                        None if precision is None else c(precision, means.dtype), kind, int(W), int(width))


def restrict_subspaces(subspaces: _Subspaces, entities: np.ndarray, E: int, D: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A block's lanes' subspaces from a round's, and their feature ids, in one pass (C++, see ``pack.cc``): what
    :meth:`lljax.rounds.subspaces.Subspaces.restrict` then ``feature_ids`` do with NumPy.

    Args:
      subspaces: the round's :class:`lljax.rounds.subspaces.Subspaces`.
      entities: ``(e,)`` the lanes' entities (``e <= E``); E: the block's lanes; D: its width (``>=`` every
        lane's subspace size).
    Returns:
      ``(pair_keys (P,), start (E + 1,), feature_ids (E, D))`` int64: the lanes' keys ``lane * stride + feature id``,
      each lane's offset in them (lanes past ``e`` empty), and each lane's feature ids, -1 padded.
    Raises:
      IndexError: an entity out of range; ValueError: a subspace wider than ``D``.
    """
    entities = np.ascontiguousarray(entities, np.int64)
    sizes = np.ascontiguousarray(subspaces.sizes, np.int64)
    inside = (entities >= 0) & (entities < len(sizes))
    total = int(sizes[entities[inside]].sum())
    keys, start, feature_ids = np.empty(total, np.int64), np.empty(E + 1, np.int64), np.empty((E, D), np.int64)
    _native().restrict_subspaces(np.ascontiguousarray(subspaces.pair_keys, np.int64),
                                 np.ascontiguousarray(subspaces.start, np.int64), sizes, int(subspaces.stride),
                                 entities, keys, start, feature_ids)
    return keys, start, feature_ids


def hash_lookup(table_keys: np.ndarray, table_slots: np.ndarray, keys: np.ndarray, out: np.ndarray) -> None:
    """Look int64 ``keys`` up in an open-addressing hash table (C++, see ``pack.cc``;
    :class:`lljax.state.key_index.IntKeyIndex` holds one): ``out[i]`` is ``keys[i]``'s slot, or -1.

    Args:
      table_keys, table_slots: ``(capacity,)`` int64, capacity a power of two, slot -1 for an empty entry; linear
        probing from the top bits of ``key * 0x9E3779B97F4A7C15`` (mod 2^64).
      keys: ``(k,)`` int64; out: ``(k,)`` int64, written.
    """
    _native().hash_lookup(table_keys, table_slots, np.ascontiguousarray(keys, np.int64), out)


def hash_insert(table_keys: np.ndarray, table_slots: np.ndarray, keys: np.ndarray, slots: np.ndarray) -> int:
    """Put ``keys[i] -> slots[i]`` (``slots >= 0``) into an open-addressing hash table in place (see
    :func:`hash_lookup`; C++, see ``pack.cc``). Returns -1, or the index of the first key found already held (a
    key repeated in ``keys`` included), where it stopped: the keys before it are in.

    Raises:
      ValueError: a negative slot (nothing is inserted then), or a full table (the keys before are in).
    """
    return int(_native().hash_insert(table_keys, table_slots, np.ascontiguousarray(keys, np.int64),
                                     np.ascontiguousarray(slots, np.int64)))


def prefault(array: np.ndarray) -> bool:
    """Map every whole page of ``array``'s (writable) buffer for writing now, its contents unchanged (Linux 5.14+:
    ``madvise(MADV_POPULATE_WRITE)``, C++, see ``pack.cc``), with the GIL released, so that a helper thread can
    take the page faults of fresh memory before the writes that would take them one by one. Returns whether it
    was done (``False``: not supported here, or no whole page)."""
    return bool(_native().prefault(array))


def scatter_priors(lanes: np.ndarray, rows: np.ndarray, feature_ids: np.ndarray, means: np.ndarray,
                   precision: np.ndarray | None, full: bool, subspaces: _Subspaces, mean_out: np.ndarray,
                   precision_out: np.ndarray | None) -> None:
    """Put ``g`` stored rows of one width ``d``, rows ``rows`` of the arrays given, into a block's prior arrays, at
    their local columns (C++, see ``pack.cc``): what :func:`lljax.rounds.round.priors` does with NumPy for rows
    without padding. The rows are read where they are (no copy of them is made).

    Args:
      lanes: ``(g,)`` each row's lane in the block.
      rows: ``(g,)`` each row's row in the arrays below.
      feature_ids: ``(G, d)`` int64, each row's features, sorted, distinct, all in its lane's subspace.
      means: ``(G, d)``.
      precision: ``(G, d (d + 1) / 2)`` upper triangles row by row (``full``), ``(G, d)`` diagonals, or ``None``.
      full: whether ``precision`` holds upper triangles (``precision_out`` is then ``(E, D, D)``: both
        triangles are written).
      subspaces: the block's :class:`lljax.rounds.subspaces.Subspaces` (lane-numbered, see ``restrict``).
      mean_out: ``(E, D)``, C-contiguous, written in place; precision_out: ``(E, D, D)`` or ``(E, D)`` of the
        same dtype, or ``None`` with ``precision``.
    Raises:
      ValueError: a row's feature is not in its lane's subspace; IndexError: a lane or a row out of range.
    """
    c = np.ascontiguousarray
    kind = 0 if precision is None else 2 if full else 1
    D = mean_out.shape[-1]
    _native().scatter_priors(c(lanes, np.int64), c(rows, np.int64), c(feature_ids, np.int64),
                             c(means, mean_out.dtype), None if precision is None else c(precision, mean_out.dtype),
                             kind, int(feature_ids.shape[1]), c(subspaces.pair_keys), c(subspaces.start),
                             c(subspaces.sizes), int(subspaces.stride), int(D), mean_out, precision_out)


def host_threads() -> int:
    """Threads a host helper may use: the CPUs this process may run on, capped by ``LLJAX_NATIVE_THREADS``."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cap = os.environ.get("LLJAX_NATIVE_THREADS", "").strip()
    if cap.isdigit() and int(cap) > 0:
        count = min(count, int(cap))
    return max(1, count)


def subspace_keys(indptr: np.ndarray, feature_ids: np.ndarray, row_order: np.ndarray, row_start: np.ndarray,
                  prior_owner: np.ndarray, prior_feature_ids: np.ndarray, stride: int,
                  repeats: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted distinct ``entity * stride + feature_id`` keys of every entity's nonzeros and prior features, each
    entity's count of them, and which rows repeat the ids of the row before them.

    What :func:`lljax.rounds.subspaces.local_subspaces` computes, entity by entity in one pass over the
    nonzeros (C++, see ``pack.cc``; a mark array of ``stride`` uint32), on :func:`host_threads` threads
    (each a range of entities) when there are many entities: it runs before any solve, while the cores
    are otherwise idle.

    Args:
      indptr, feature_ids: the dataset's CSR rows (int64; int32 or int64).
      row_order: ``(n,)`` int64 rows grouped by entity; row_start: ``(U + 1,)`` int64 offsets of each
        entity's rows in ``row_order``.
      prior_owner, prior_feature_ids: ``(k,)`` stored prior pairs (entity code, feature id).
      stride: > every feature id.
      repeats: optional ``(n,)`` uint8 C-contiguous array to write the repeated rows into (default: a new one).
    Returns:
      ``(keys (K,), sizes (U,), repeats (n,))``: keys and sizes int64, writable; ``repeats`` uint8 by position in
      ``row_order``: 1 where the row lists the same feature ids, byte for byte, as the row before it in
      ``row_order`` of the same entity (:attr:`lljax.solve.blocks.RowSource.repeats`), else 0.
    """
    U = len(row_start) - 1
    order = np.argsort(prior_owner, kind="stable")
    prior_start = np.zeros(U + 1, np.int64)
    np.cumsum(np.bincount(prior_owner, minlength=U), out=prior_start[1:])
    c = np.ascontiguousarray  # the helper reads C-contiguous buffers (no copy when they already are)
    sizes = np.empty(U, np.int64)
    repeats = np.empty(len(row_order), np.uint8) if repeats is None else repeats
    keys = _native().subspace_keys(c(indptr), c(feature_ids), c(row_order), c(row_start),
                                   np.asarray(prior_feature_ids, np.int64)[order], prior_start, int(stride),
                                   host_threads(), sizes, repeats)
    return np.frombuffer(keys, np.int64), sizes, repeats
