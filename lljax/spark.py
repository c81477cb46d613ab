"""lljax on Spark: random effects and GAME coordinate descent on Spark DataFrames.

The same pack -> solve -> unpack pipeline as :meth:`lljax.RandomEffectModel.update`, inside Spark tasks:

- the examples (and, for an incremental update, the previous state) are repartitioned by entity
  (``repartition(P, entity)``), so every task holds whole entities and their priors;
- each task receives its partition as Arrow batches (``mapInArrow``: one Python call per partition, never
  one per entity), builds one :class:`lljax.Dataset` and runs one batched update;
- the result is a *state*: a DataFrame with one row per entity (``entity``, ``feature_ids``, ``names``,
  ``terms``, ``means``, ``precision``) plus its metadata (:class:`StateInfo`: hyper-parameters, index
  map, format version), written to and read from Parquet (:func:`write_state`, :func:`read_state`).

Public API: :class:`Features` (how the features are given), :class:`Columns` (which columns hold what),
:func:`update` (train or update a coordinate), :func:`score` (mean, Thompson and UCB scores),
:func:`fit_game` (GAME coordinate descent), :class:`SparkState`, :func:`read_state`, :func:`write_state`,
:class:`SparkReport` (every task's statuses, counts and times added up).

Results equal single-process lljax on the same data (each entity is solved by the same code on the same
rows; only the blocks it shares differ, and padding never changes a result).

float64: the workers follow the driver. When the driver has ``jax_enable_x64`` on, tasks turn it on in
their own (Python worker) process before solving, and use the driver's JAX compilation cache directory if
one is set; nothing else is changed. See ``docs/spark.md`` for running on a cluster.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lljax.data.dataset import Dataset
from lljax.data.ntv import IndexMap
from lljax.model.random_effect import RandomEffectModel
from lljax.solve.base import Status
from lljax.solve.dtypes import x64_enabled
from lljax.state.persist import HYPERPARAMETERS
from lljax.state.store import EntityStore, FlatEntities
from lljax.version import __version__

__all__ = ["Columns", "Features", "GameResult", "RandomEffectSpec", "SparkReport", "SparkState", "StateInfo",
           "FORMAT_NAME", "FORMAT_VERSION", "fit_game", "read_state", "score", "update", "write_state"]

FORMAT_NAME = "lljax.spark.state"
FORMAT_VERSION = 1
METADATA_FILE = "_lljax_state.json"  # Spark skips files whose names start with "_" when it reads the dataset

_STORED_PRECISION = {"none": None, "identity": "diagonal", "diagonal": "diagonal", "full": "full"}
_KIND = "_lljax_kind"  # union of data rows (0) and state rows (1) in one shuffle
_S = "_lljax_s_"  # prefix of the state's columns in that union
_STATE_FIELDS = ("feature_ids", "names", "terms", "means", "precision")
_ERROR = re.compile(r"\[lljax\.spark:(ValueError|TypeError)\] (.*)")
_INT_TYPES = ("bigint", "int", "smallint", "tinyint")
_NUM_TYPES = _INT_TYPES + ("double", "float")


def _error(kind: type, column: str | None, value: Any, reason: str, where: str | None = None) -> Exception:
    """An error naming the column and the value (and where: an entity, a file)."""
    loc = f"{where}: " if where else ""
    return kind(f"{loc}column {column!r}: value {value!r} {reason}")


def _task_error(exc: Exception) -> Exception:
    """Mark an input error raised in a task, so that the driver can raise it again as itself."""
    return type(exc)(f"[lljax.spark:{type(exc).__name__}] {exc}")


def _driver_error(exc: Exception) -> Exception | None:
    """The task's ``ValueError``/``TypeError`` (see :func:`_task_error`) found in a Spark failure, or ``None``."""
    match = _ERROR.search(str(exc))
    if match is None:
        return None
    return (ValueError if match.group(1) == "ValueError" else TypeError)(match.group(2).strip())


# ---------------------------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class Features:
    """How the features of the examples are given. Build with one of the constructors:

    - :meth:`vector`: a Spark ML vector column (``pyspark.ml.linalg`` sparse or dense vectors, all of one
      size ``F``); index ``j`` is feature id ``j + 1`` (the intercept is id 0, never a column), as the
      columns of ``X`` in :meth:`lljax.Dataset.from_arrays`. Names: ``(column, "j")`` or ``names[j]``.
    - :meth:`ntv`: an array of ``struct<name: string, term: string, value: double>`` (Lambda Learner's
      name-term-value lists); the index map is given, or built from the data (sorted name-terms).
    - :meth:`columns`: numeric columns (one feature each, named ``(column, "")``) and categorical columns
      (one-hot, named ``(column, str(value))``); null means absent.
    - :meth:`none`: the intercept only.

    Zero values are absent (as zeros of a dense ``X``).
    """

    kind: str
    column: str | None = None
    names: tuple | None = None
    numeric: tuple = ()
    categorical: tuple = ()
    index_map: IndexMap | None = None

    @classmethod
    def vector(cls, column: str, names: Sequence[str] | None = None) -> Features:
        return cls("vector", column=column, names=None if names is None else tuple(str(n) for n in names))

    @classmethod
    def arrays(cls, indices: str, values: str, num_columns: int, names: Sequence[str] | None = None) -> Features:
        """A sparse vector as two array columns: ``indices`` (column indices in ``[0, num_columns)``, feature id
        ``index + 1``) and ``values`` (of the same length), as a vector's (e.g. from Parquet written elsewhere)."""
        if not isinstance(num_columns, int) or num_columns < 0:
            raise _error(ValueError, "num_columns", num_columns, "must be an int >= 0")
        return cls("arrays", column=indices, numeric=(values, num_columns),
                   names=None if names is None else tuple(str(n) for n in names))

    @classmethod
    def ntv(cls, column: str, index_map: IndexMap | None = None) -> Features:
        return cls("ntv", column=column, index_map=index_map)

    @classmethod
    def columns(cls, numeric: Sequence[str] = (), categorical: Sequence[str] = (),
                index_map: IndexMap | None = None) -> Features:
        return cls("columns", numeric=tuple(numeric), categorical=tuple(categorical), index_map=index_map)

    @classmethod
    def none(cls) -> Features:
        return cls("none")

    @property
    def named_column(self) -> str:
        """The column of a vector, arrays or NTV feature set (its constructor names it)."""
        assert self.column is not None, f"a {self.kind} feature set names its column"
        return self.column

    def input_columns(self) -> list[str]:
        if self.kind in ("vector", "ntv"):
            return [self.named_column]
        if self.kind == "arrays":
            return [self.named_column, self.numeric[0]]
        return list(self.numeric) + list(self.categorical)


@dataclass(frozen=True)
class Columns:
    """Which columns of the examples' DataFrame hold the entity, the label, the weight, the offset and the
    features. ``weight``/``offset``: a column name, or ``None`` for 1 / 0. ``order``: an optional column
    that orders each entity's rows (what ``max_rows`` rounds follow; Spark does not keep row order)."""

    entity: str
    label: str | None = "label"
    features: Features = field(default_factory=Features.none)
    weight: str | None = None
    offset: str | None = None
    order: str | None = None


@dataclass(frozen=True)
class StateInfo:
    """A state's metadata (the JSON file beside its Parquet files).

    Attributes:
      hyperparameters: the model's (``loss``, ``l2``, ``delta``, ``hessian``, ...).
      index_map: the feature space (global feature ids <-> (name, term)).
      entity_type: ``"bigint"`` or ``"string"``.
      dtype: ``"float64"`` or ``"float32"`` (what the means were computed in).
      format_version: :data:`FORMAT_VERSION`.
    """

    hyperparameters: dict
    index_map: IndexMap
    entity_type: str
    dtype: str = "float64"
    format_version: int = FORMAT_VERSION

    @property
    def precision(self) -> str | None:
        return _STORED_PRECISION[self.hyperparameters["hessian"]]

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT_NAME, "format_version": self.format_version,
                           "lljax_version": __version__, "hyperparameters": self.hyperparameters,
                           "index_map": self.index_map.to_dict(), "entity_type": self.entity_type,
                           "dtype": self.dtype}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> StateInfo:
        try:
            meta = json.loads(text)
        except ValueError as exc:
            raise _error(ValueError, METADATA_FILE, text[:60], f"is not JSON ({exc})", where) from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
            raise _error(ValueError, "format", meta.get("format") if isinstance(meta, dict) else meta,
                         f"is not {FORMAT_NAME!r}: not an lljax.spark state", where)
        if meta.get("format_version") != FORMAT_VERSION:
            raise _error(ValueError, "format_version", meta.get("format_version"),
                         f"is not {FORMAT_VERSION}: the state was written by another format version of lljax.spark "
                         f"(lljax {meta.get('lljax_version')!r}); this is lljax {__version__}", where)
        try:
            index_map = IndexMap.from_dict(meta["index_map"])
            hyper = dict(meta["hyperparameters"])
            entity_type = meta["entity_type"]
        except (KeyError, TypeError, ValueError) as exc:
            raise _error(ValueError, METADATA_FILE, str(exc), "is missing or malformed", where) from None
        return cls(hyper, index_map, entity_type, meta.get("dtype", "float64"), FORMAT_VERSION)


@dataclass
class SparkState:
    """A random-effect coordinate's state: ``frame`` (one row per entity: ``entity``, ``feature_ids``,
    ``names``, ``terms``, ``means``, ``precision``; precision ``d`` diagonal entries or ``d * d`` row-major)
    and its :class:`StateInfo`. ``path``: where it was read from or written to (``None`` in memory)."""

    frame: Any
    info: StateInfo
    path: str | None = None

    def to_model(self, **overrides: Any) -> RandomEffectModel:
        """The state as a single-process :class:`lljax.RandomEffectModel` (collects every entity to the driver)."""
        hyper = {**self.info.hyperparameters, **overrides}
        model = RandomEffectModel(**hyper, index_map=self.info.index_map)
        table = _arrow_table(self.frame.select("entity", *_STATE_FIELDS))
        if table.num_rows:
            model.store = EntityStore.from_flat(_flat_from_arrow(table, self.info.precision, "entity"),
                                                np.dtype(self.info.dtype), self.info.precision)
        return model


@dataclass(frozen=True)
class RandomEffectSpec:
    """A random-effect coordinate of :func:`fit_game`: entity column, features, and the model's settings
    (as :class:`lljax.RandomEffectModel`; coordinate descent solves the plain L2 problem)."""

    name: str
    entity: str
    features: Features = field(default_factory=Features.none)
    l2: float = 1.0
    hessian: str = "full"
    min_rows: int = 1
    max_rows: int | None = None
    max_iter: int = 50
    tol: float | None = None
    penalize_intercept: bool = True


# ---------------------------------------------------------------------------------------------- report


@dataclass
class SparkReport:
    """Every task's report, added up.

    Attributes:
      tasks: one dict per task (partition): ``partition``, ``entities`` (trained), ``rows``, ``passed``
        (state rows passed through unchanged), ``blocks``, ``status`` (counts by name), ``iterations``
        (sum), ``seconds`` (by stage: ``convert`` Arrow -> Dataset and priors, ``solve`` the update,
        ``output`` results -> Arrow, ``phases`` of the update), ``host``.
      wall_seconds: the driver's wall time of the whole job (shuffle, tasks, write).
      stages: the driver's stages (``index_map``, ``job``, ``swap``) in seconds.
    """

    tasks: list
    wall_seconds: float = 0.0
    stages: dict = field(default_factory=dict)

    def _sum(self, key: str) -> int:
        return int(sum(t.get(key, 0) for t in self.tasks))

    @property
    def entities(self) -> int:
        return self._sum("entities")

    @property
    def rows(self) -> int:
        return self._sum("rows")

    @property
    def blocks(self) -> int:
        return self._sum("blocks")

    @property
    def passed(self) -> int:
        return self._sum("passed")

    @property
    def status_counts(self) -> dict:
        out: dict = {}
        for t in self.tasks:
            for name, count in t.get("status", {}).items():
                out[name] = out.get(name, 0) + count
        return dict(sorted(out.items()))

    @property
    def seconds(self) -> dict:
        """Task seconds by stage, summed over tasks (CPU-side time, not wall time)."""
        out: dict = {}
        for t in self.tasks:
            for name, s in t.get("seconds", {}).items():
                if isinstance(s, dict):
                    for phase, v in s.items():
                        out[f"update.{phase}"] = out.get(f"update.{phase}", 0.0) + v
                else:
                    out[name] = out.get(name, 0.0) + s
        return out

    def to_dict(self) -> dict:
        return {"tasks": len(self.tasks), "entities": self.entities, "rows": self.rows, "passed": self.passed,
                "blocks": self.blocks, "status_counts": self.status_counts, "task_seconds": self.seconds,
                "wall_seconds": self.wall_seconds, "stages": self.stages}

    def __str__(self) -> str:
        status = ", ".join(f"{k}={v}" for k, v in self.status_counts.items())
        sec = ", ".join(f"{k} {v:.2f}s" for k, v in self.seconds.items() if not k.startswith("update."))
        return (f"SparkReport(tasks={len(self.tasks)}, entities={self.entities}, rows={self.rows}, "
                f"passed={self.passed}, blocks={self.blocks}, {status}; wall {self.wall_seconds:.2f}s; tasks: {sec})")


def _report_accumulator(sc: Any) -> Any:
    from pyspark.accumulators import AccumulatorParam

    class _ListParam(AccumulatorParam):
        def zero(self, value: list) -> list:
            return []

        def addInPlace(self, a: list, b: list) -> list:
            return a + b

    return sc.accumulator([], _ListParam())


def _collect_report(records: list, wall: float, stages: dict) -> SparkReport:
    latest: dict = {}
    for rec in records:  # a retried task reports again: keep its last attempt
        key = (rec.get("job"), rec["partition"])
        if key not in latest or rec["attempt"] >= latest[key]["attempt"]:
            latest[key] = rec
    return SparkReport(sorted(latest.values(), key=lambda r: (str(r.get("job")), r["partition"])), wall, stages)


# ---------------------------------------------------------------------------------------------- worker side


_WORKER_CONFIG: dict = {}


def _worker_setup(cfg: dict) -> None:
    """In a Python worker: follow the driver's float64 and compilation-cache settings (once per process)."""
    if _WORKER_CONFIG == cfg:
        return
    import jax

    if cfg.get("x64") and not x64_enabled():
        jax.config.update("jax_enable_x64", True)
    if cfg.get("cache_dir"):
        jax.config.update("jax_compilation_cache_dir", cfg["cache_dir"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", cfg.get("cache_min_secs", 1.0))
    _WORKER_CONFIG.clear()
    _WORKER_CONFIG.update(cfg)


def _driver_config() -> dict:
    import jax

    flags: Any = jax.config  # its flags are attributes set at run time: jax.config's type declares none
    cache = flags.jax_compilation_cache_dir
    return {"x64": bool(flags.jax_enable_x64), "cache_dir": cache or None,
            "cache_min_secs": float(flags.jax_persistent_cache_min_compile_time_secs)}


def _task_info() -> tuple[int, int]:
    from pyspark import TaskContext

    ctx = TaskContext.get()
    return (ctx.partitionId(), ctx.attemptNumber()) if ctx is not None else (0, 0)


def _array(column: Any) -> Any:
    """An Arrow column as one contiguous ``Array`` (a ``ChunkedArray``'s chunks concatenated)."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        return column.combine_chunks()
    return column


def _np(column: Any) -> np.ndarray:
    """An Arrow column (no nulls) as a NumPy array (zero-copy when it can be); strings as an object array of
    str (built by Arrow, not one Python call per value)."""
    return _array(column).to_numpy(zero_copy_only=False)


def _check_no_nulls(table: Any, column: str, what: str, entity_col: str | None = None) -> None:
    col = table.column(column)
    if col.null_count:
        import pyarrow.compute as pc

        i = int(pc.index(pc.is_null(col), True).as_py())
        where = f"example {i}"
        if entity_col is not None and entity_col != column:
            where += f", entity {table.column(entity_col)[i].as_py()!r}"
        raise _error(ValueError, column, None, f"is null: {what} must not be null", where)


def _float_column(table: Any, column: str | None, n: int, default: float, what: str, entity_col: str,
                  dtype: np.dtype) -> np.ndarray:
    if column is None:
        return np.full(n, default, dtype)
    _check_no_nulls(table, column, what, entity_col)
    return _np(table.column(column)).astype(dtype, copy=False)


def _list_parts(column: Any) -> tuple[np.ndarray, Any]:
    """``(offsets (n + 1,) int64 from 0, values)`` of an Arrow list column: row ``i``'s values are
    ``values[offsets[i]:offsets[i + 1]]`` (a null list is empty). Read from the list's offsets, without a copy
    of the values when the column is one chunk with no nulls."""
    import pyarrow.compute as pc

    col = _array(column)
    if col.null_count:  # a null list may still span values: count it as empty
        lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False)
        offsets = np.zeros(len(col) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return offsets, pc.list_flatten(col)
    raw = col.offsets.to_numpy(zero_copy_only=False)  # the slice's n + 1 offsets into the whole child array
    first, last = (int(raw[0]), int(raw[-1])) if len(raw) else (0, 0)
    return raw.astype(np.int64) - first, col.values.slice(first, last - first)


def _fid_dtype(num_features: int) -> type:
    """Feature ids as int32 (as the single-process inputs, and half the memory) when every id fits."""
    return np.int32 if num_features <= np.iinfo(np.int32).max else np.int64


def _csr(offsets: np.ndarray, fids: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR ``(indptr, feature_ids, values)`` of entries already in row order (row ``i``'s entries are
    ``offsets[i]:offsets[i + 1]``), zero values dropped: no sort, one pass."""
    zero = vals == 0
    if not zero.any():
        return offsets, fids, vals
    keep = ~zero
    kept = np.zeros(len(vals) + 1, np.int64)
    np.cumsum(keep, out=kept[1:])
    return kept[offsets], fids[keep], vals[keep]


def _row_of(offsets: np.ndarray, k: int) -> int:
    """The row holding entry ``k`` of a list column with these offsets."""
    return int(np.searchsorted(offsets, k, side="right")) - 1


def _features_csr(table: Any, spec: dict, n: int, dtype: np.dtype,
                  num_features: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The features of ``table``'s rows as CSR over global feature ids (no intercept entries), vectorized:
    list columns are read through their offsets (rows stay in order, nothing is sorted)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = spec["kind"]
    fid_dtype = _fid_dtype(num_features if num_features is not None else 2**62)
    if kind == "none":
        return np.zeros(n + 1, np.int64), np.zeros(0, fid_dtype), np.zeros(0, dtype)
    if kind == "vector":
        col_name = spec["column"]
        col = _array(table.column(col_name))
        if col.null_count:
            i = int(pc.index(pc.is_null(col), True).as_py())
            raise _error(ValueError, col_name, None, "is null: every example needs a vector", f"example {i}")
        vtype = col.field("type").to_numpy(zero_copy_only=False)
        vsize = pc.fill_null(col.field("size"), -1).to_numpy(zero_copy_only=False).astype(np.int64)
        offsets, vals = _list_parts(col.field("values"))
        val_len = np.diff(offsets)
        size = np.where(vtype == 1, val_len, vsize)
        F = spec["num_columns"]
        if n and (size != F).any():
            i = int(np.argmax(size != F))
            raise _error(ValueError, col_name, f"<vector of size {int(size[i])}>",
                         f"has another size than the feature space's {F} columns", f"example {i}")
        values = vals.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
        sparse = vtype == 0
        if sparse.all():
            _, idx = _list_parts(col.field("indices"))
            ids = idx.to_numpy(zero_copy_only=False).astype(fid_dtype)
        else:  # a dense vector's entry j is column j; a sparse one's is its index
            ids = (np.arange(len(values), dtype=np.int64) - np.repeat(offsets[:-1], val_len)).astype(fid_dtype)
            if sparse.any():
                _, idx = _list_parts(col.field("indices"))  # null for dense vectors: only the sparse ones' indices
                ids[np.repeat(sparse, val_len)] = idx.to_numpy(zero_copy_only=False)
        ids += 1
        return _csr(offsets, ids, values)
    if kind == "arrays":
        idx_name, val_name, F = spec["column"], spec["values"], spec["num_columns"]
        for c in (idx_name, val_name):
            _check_no_nulls(table, c, "feature arrays", None)
        idx_off, idx = _list_parts(table.column(idx_name))
        val_off, vals = _list_parts(table.column(val_name))
        if not np.array_equal(idx_off, val_off):
            idx_len, val_len = np.diff(idx_off), np.diff(val_off)
            i = int(np.argmax(idx_len != val_len))
            raise _error(ValueError, val_name, f"<{int(val_len[i])} values>",
                         f"differs from the {int(idx_len[i])} indices of column {idx_name!r}", f"example {i}")
        ids = idx.to_numpy(zero_copy_only=False)
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= F):
            k = int(np.argmax((ids < 0) | (ids >= F)))
            raise _error(ValueError, idx_name, int(ids[k]), f"is outside [0, {F}) (num_columns)",
                         f"example {_row_of(idx_off, k)}")
        fids = np.add(ids, 1, dtype=fid_dtype, casting="unsafe")  # in range: checked above
        return _csr(idx_off, fids, vals.to_numpy(zero_copy_only=False).astype(dtype, copy=False))
    if kind == "ntv":
        col_name = spec["column"]
        offsets, flat = _list_parts(table.column(col_name))
        names, terms = flat.field("name"), flat.field("term")
        values_arr = flat.field("value")
        if values_arr.null_count or names.null_count or terms.null_count:
            bad = values_arr if values_arr.null_count else names if names.null_count else terms
            k = int(pc.index(pc.is_null(bad), True).as_py())
            raise _error(ValueError, col_name, None, "holds a feature with a null name, term or value",
                         f"example {_row_of(offsets, k)}")
        keys = pc.binary_join_element_wise(names, terms, "\x00")
        ids = pc.index_in(keys, value_set=spec["keys"])
        if ids.null_count:
            k = int(pc.index(pc.is_null(ids), True).as_py())
            raise _error(ValueError, col_name, (names[k].as_py(), terms[k].as_py()),
                         "is not in the feature space (index map)", f"example {_row_of(offsets, k)}")
        return _csr(offsets, ids.to_numpy(zero_copy_only=False).astype(fid_dtype, copy=False),
                    values_arr.to_numpy(zero_copy_only=False).astype(dtype, copy=False))
    # numeric and categorical columns: an (n, columns) grid of ids and values, read row by row (row-major), so
    # each row's entries come in the columns' order (numeric, then categorical) as a CSR row
    k = len(spec["numeric"]) + len(spec["categorical"])
    if k == 0:
        return np.zeros(n + 1, np.int64), np.zeros(0, fid_dtype), np.zeros(0, dtype)
    grid_ids: np.ndarray = np.zeros((n, k), fid_dtype)
    grid_vals = np.zeros((n, k), dtype)
    present = np.zeros((n, k), bool)
    j = 0
    for col_name, fid in spec["numeric"]:
        col = table.column(col_name)
        present[:, j] = ~_np(pc.is_null(col)).astype(bool)
        grid_vals[:, j] = _np(pc.fill_null(pc.cast(col, pa.float64()), 0.0)).astype(dtype, copy=False)
        grid_ids[:, j] = fid
        j += 1
    for col_name, keys in spec["categorical"]:
        col = table.column(col_name)
        ids = pc.index_in(col, value_set=keys)
        valid = ~_np(pc.is_null(col)).astype(bool)
        unknown = valid & _np(pc.is_null(ids)).astype(bool)
        if unknown.any():
            i = int(np.argmax(unknown))
            raise _error(ValueError, col_name, col[i].as_py(), "is not in the feature space (index map)",
                         f"example {i}")
        present[:, j] = valid
        grid_ids[:, j] = _np(pc.fill_null(ids, 0)).astype(np.int64) + spec["categorical_base"][col_name]
        grid_vals[:, j] = 1
        j += 1
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(present.sum(axis=1), out=offsets[1:])
    keep = present.reshape(-1)
    return _csr(offsets, grid_ids.reshape(-1)[keep], grid_vals.reshape(-1)[keep])


def _is_sorted(column: Any) -> bool:
    """Whether an Arrow column (no nulls) is in ascending order (compared by Arrow, ints or strings)."""
    import pyarrow.compute as pc

    col = _array(column)
    n = len(col)
    return n < 2 or not pc.any(pc.less(col.slice(1), col.slice(0, n - 1))).as_py()


def _dataset(table: Any, spec: dict, offset_override: np.ndarray | None = None) -> Dataset:
    """One :class:`Dataset` of the examples in ``table`` (Arrow), checked."""
    dtype = np.dtype(spec["dtype"])
    entity_col = spec["entity"]
    n = table.num_rows
    _check_no_nulls(table, entity_col, "entity keys", None)
    entity = _np(table.column(entity_col))
    if spec["label"] is not None:
        label = _float_column(table, spec["label"], n, 0.0, "labels", entity_col, dtype)
    else:
        label = np.zeros(n, dtype)
    weight = _float_column(table, spec["weight"], n, 1.0, "weights", entity_col, dtype)
    offset = _float_column(table, spec["offset"], n, 0.0, "offsets", entity_col, dtype)
    if offset_override is not None:
        offset = offset_override.astype(dtype)
    indptr, fids, vals = _features_csr(table, spec["features"], n, dtype, spec["num_features"])
    return Dataset.from_arrays(entity, label, indptr=indptr, feature_ids=fids, values=vals, weight=weight,
                               offset=offset, num_features=spec["num_features"], intercept_id=0,
                               allow_intercept_entries=spec["features"]["kind"] == "ntv", dtype=dtype)


def _flat_from_arrow(table: Any, precision: str | None, entity_col: str) -> FlatEntities:
    """State rows (Arrow: entity, feature_ids, means, precision) as :class:`FlatEntities`, checked."""
    keys = _np(table.column(entity_col))
    indptr, fids = _list_parts(table.column("feature_ids"))
    moffsets, means = _list_parts(table.column("means"))
    fids = fids.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    means = means.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    if not np.array_equal(moffsets, indptr):
        sizes, msizes = np.diff(indptr), np.diff(moffsets)
        i = int(np.argmax(msizes != sizes))
        raise _error(ValueError, "means", f"<{int(msizes[i])} means>",
                     f"differs from the {int(sizes[i])} feature ids of the entity", f"state, entity {keys[i]!r}")
    prec = None
    if precision is not None:
        poffsets, prec_arr = _list_parts(table.column("precision"))
        sizes = np.diff(indptr)
        psizes = np.diff(poffsets)
        expected = sizes**2 if precision == "full" else sizes
        if (psizes != expected).any():
            i = int(np.argmax(psizes != expected))
            raise _error(ValueError, "precision", f"<{int(psizes[i])} entries>",
                         f"is not a {precision} precision of the entity's {int(sizes[i])} features",
                         f"state, entity {keys[i]!r}")
        prec = prec_arr.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    for name, arr in (("means", means), ("precision", prec)):
        if arr is not None and not np.isfinite(arr).all():
            k = int(np.argmax(~np.isfinite(arr)))
            raise _error(ValueError, name, float(arr[k]), "is not finite", "state")
    return FlatEntities(keys, indptr, fids, means, prec)


def _state_arrow(flat: FlatEntities, spec: dict, entity_name: str = "entity") -> Any:
    """:class:`FlatEntities` as Arrow state rows (entity, feature_ids, names, terms, means, precision)."""
    import pyarrow as pa

    n = len(flat.keys)
    offsets = pa.array(flat.indptr.astype(np.int32))
    fids = pa.array(flat.feature_ids.astype(np.int64, copy=False))
    fid_list = pa.ListArray.from_arrays(offsets, fids)
    names = pa.ListArray.from_arrays(offsets, spec["names"].take(fids))
    terms = pa.ListArray.from_arrays(offsets, spec["terms"].take(fids))
    means = pa.ListArray.from_arrays(offsets, pa.array(flat.means.astype(np.float64, copy=False)))
    if flat.precision is None:
        prec = pa.nulls(n, pa.list_(pa.float64()))
    else:
        p_off = flat.precision_indptr if spec["precision"] == "full" else flat.indptr
        prec = pa.ListArray.from_arrays(pa.array(p_off.astype(np.int32)),
                                        pa.array(flat.precision.astype(np.float64, copy=False)))
    key_type = pa.string() if spec["entity_type"] == "string" else pa.int64()
    keys = pa.array(flat.keys if key_type == pa.string() else flat.keys.astype(np.int64, copy=False), key_type)
    return pa.table({entity_name: keys, "feature_ids": fid_list, "names": names, "terms": terms, "means": means,
                     "precision": prec})


def _entity_order(table: Any, entity_col: str, order_col: str | None) -> np.ndarray | None:
    """The stable sort of ``table``'s rows by entity (then by the order column, when given), or ``None`` when
    they already are in entity order (as a shuffle of entity-sorted files leaves them). Each entity keeps its
    rows' order (the order column's, then the arrival order), so the results are those of the rows as given;
    grouped, the solver's packing reads memory in order (as it does for the single-process inputs)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if table.num_rows < 2 or (order_col is None and _is_sorted(table.column(entity_col))):
        return None
    entity = table.column(entity_col)
    if order_col is None and pa.types.is_integer(entity.type):
        return np.argsort(_np(entity), kind="stable")  # NumPy's stable sort of ints: faster than Arrow's
    keys = [(entity_col, "ascending")] + ([(order_col, "ascending")] if order_col is not None else [])
    return pc.sort_indices(table.select([k for k, _ in keys]), sort_keys=keys).to_numpy()


def _empty_state(entity_type: str) -> Any:
    import pyarrow as pa

    key_type = pa.string() if entity_type == "string" else pa.int64()
    return pa.table({"entity": pa.array([], key_type), "feature_ids": pa.array([], pa.list_(pa.int64())),
                     "names": pa.array([], pa.list_(pa.string())), "terms": pa.array([], pa.list_(pa.string())),
                     "means": pa.array([], pa.list_(pa.float64())), "precision": pa.array([], pa.list_(pa.float64()))})


def _split_union(table: Any, spec: dict, group: bool = False) -> tuple[Any, Any]:
    """The data rows and the state rows (renamed back) of a partition of the union. ``group``: the data rows
    grouped by entity (:func:`_entity_order`). The rows are copied only when they must be (a partition that
    holds both kinds, or data rows out of entity order), in one ``take``."""
    kind = _np(table.column(_KIND))
    is_state = kind == 1
    n_state = int(np.count_nonzero(is_state))
    selected = table.select(spec["data_columns"])
    rows = None if n_state == 0 else np.flatnonzero(~is_state)
    if group and len(selected) - n_state > 1:
        keys = [spec["entity"]] + ([spec["order"]] if spec.get("order") is not None else [])
        key_table = selected.select(keys) if rows is None else selected.select(keys).take(rows)
        order = _entity_order(key_table, spec["entity"], spec.get("order"))
        if order is not None:
            rows = order if rows is None else rows[order]
    data = selected if rows is None else selected.take(rows)
    if _S + "means" not in table.column_names:  # no state given
        return data, _empty_state(spec["entity_type"])
    state = table.select([spec["entity"]] + [_S + f for f in _STATE_FIELDS])
    state = state.rename_columns(["entity"] + list(_STATE_FIELDS))
    state = state.take(np.flatnonzero(is_state)) if n_state < len(state) else state
    return data, state


def _update_task(spec: dict, acc: Any) -> Any:
    """The ``mapInArrow`` function of :func:`update`: one batched update of the partition's entities."""

    def run(batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa
        import pyarrow.compute as pc

        _worker_setup(spec["worker"])
        started = time.perf_counter()
        received = list(batches)
        if not received:  # an empty partition: Arrow cannot build a table from no batch (no schema)
            return
        table = pa.Table.from_batches(received)
        if table.num_rows == 0:
            return
        part, attempt = _task_info()
        try:
            t0 = time.perf_counter()
            data, state = _split_union(table, spec, group=True)
            del table
            rec = {"job": spec["job"], "partition": part, "attempt": attempt, "host": os.uname().nodename,
                   "entities": 0, "rows": int(data.num_rows), "passed": 0, "blocks": 0, "status": {},
                   "iterations": 0, "seconds": {}}
            if data.num_rows == 0:
                rec["passed"] = int(state.num_rows)
                rec["seconds"] = {"convert": time.perf_counter() - t0, "solve": 0.0, "output": 0.0}
                acc.add([rec])
                for b in state.to_batches():
                    yield b
                return
            ds = _dataset(data, spec)
            model = RandomEffectModel(**spec["hyper"])
            if state.num_rows:
                hit = pc.is_in(state.column("entity"),
                               value_set=pa.array(ds.entity_keys, state.schema.field("entity").type))
                prior, passed = state.filter(hit), state.filter(pc.invert(hit))
            else:
                prior, passed = state, state
            dtype = np.dtype(spec["dtype"])
            if prior.num_rows:
                model.store = EntityStore.from_flat(_flat_from_arrow(prior, spec["precision"], "entity"), dtype,
                                                    spec["precision"])
            t1 = time.perf_counter()
            report = model.update(ds, delta=spec["delta"], progress=False)
            t2 = time.perf_counter()
            out = _state_arrow(model.store.to_flat(), spec) if model.store is not None and len(model) else None
            t3 = time.perf_counter()
            counts = np.bincount(report.status, minlength=len(Status))
            rec.update(entities=int(len(report.entity_keys)), passed=int(passed.num_rows), blocks=int(report.blocks),
                       status={s.name.lower(): int(counts[s.value]) for s in Status if counts[s.value]},
                       iterations=int(report.iterations.sum()),
                       seconds={"receive": t0 - started, "convert": t1 - t0, "solve": t2 - t1, "output": t3 - t2,
                                "phases": dict(report.phase_seconds), "task": t3 - started})
        except (ValueError, TypeError) as exc:
            raise _task_error(exc) from exc
        acc.add([rec])
        if out is not None:
            for b in out.to_batches():
                yield b
        for b in passed.to_batches():
            yield b

    return run


# ---------------------------------------------------------------------------------------------- driver side


def _session(df: Any) -> Any:
    return df.sparkSession


def _types(df: Any) -> dict:
    return dict(df.dtypes)


def _check_column(df: Any, name: str | None, allowed: tuple, what: str) -> str:
    types = _types(df)
    if name not in types:
        raise _error(ValueError, name, None, f"is missing: the DataFrame has no such column ({what}; columns: "
                     f"{sorted(types)})")
    t = types[name]
    if allowed and t not in allowed and not any(t.startswith(a) for a in allowed if a.endswith("(")):
        raise _error(TypeError, name, t, f"has the wrong type for {what} (expected one of {list(allowed)})")
    return t


def _check_columns(df: Any, columns: Columns) -> str:
    etype = _check_column(df, columns.entity, _INT_TYPES + ("string",), "the entity key")
    if columns.label is not None:
        _check_column(df, columns.label, _NUM_TYPES, "the label")
    for name, what in ((columns.weight, "the weight"), (columns.offset, "the offset")):
        if name is not None:
            _check_column(df, name, _NUM_TYPES, what)
    if columns.order is not None:
        _check_column(df, columns.order, (), "the row order")
    feats = columns.features
    if feats.kind == "vector":
        t = _check_column(df, feats.column, (), "a vector of features")
        if t != "vector":
            raise _error(TypeError, feats.column, t, "has the wrong type for a vector of features (expected a "
                         "pyspark.ml.linalg vector column)")
    elif feats.kind == "arrays":
        _check_column(df, feats.column, ("array<int>", "array<bigint>"), "feature indices")
        _check_column(df, feats.numeric[0], ("array<double>", "array<float>"), "feature values")
    elif feats.kind == "ntv":
        t = _check_column(df, feats.column, (), "name-term-value features")
        if not re.fullmatch(r"array<struct<name:string,term:string,value:(double|float)>>", t):
            raise _error(TypeError, feats.column, t, "has the wrong type for name-term-value features (expected "
                         "array<struct<name:string,term:string,value:double>>)")
    elif feats.kind == "columns":
        for c in feats.numeric:
            _check_column(df, c, _NUM_TYPES + ("boolean",), "a numeric feature")
        for c in feats.categorical:
            _check_column(df, c, (), "a categorical feature")
    elif feats.kind != "none":
        raise _error(ValueError, "features", feats.kind, "is not one of vector, arrays, ntv, columns, none")
    return "string" if etype == "string" else "bigint"


def _build_index_map(df: Any, feats: Features, base: IndexMap | None) -> tuple[IndexMap, dict]:
    """The feature space of the data (starting from ``base``, a state's, when given) and the feature spec
    that tasks use."""
    from pyspark.sql import functions as F

    if feats.kind == "none":
        imap = base or IndexMap()
        return imap, {"kind": "none"}
    if feats.kind == "vector":
        column = feats.named_column
        first = df.select(column).where(F.col(column).isNotNull()).first()
        if feats.names is not None:
            F_cols = len(feats.names)
        elif first is not None:
            F_cols = int(first[0].size)
        elif base is not None:
            F_cols = len(base) - 1
        else:
            F_cols = 0
        imap = IndexMap()
        names = feats.names or tuple(str(j) for j in range(F_cols))
        for name in names:
            imap.push((column, name) if feats.names is None else (name, ""))
        return imap, {"kind": "vector", "column": column, "num_columns": F_cols}
    if feats.kind == "arrays":
        F_cols = feats.numeric[1]
        imap = IndexMap()
        imap.batch_push([(feats.named_column, str(j)) for j in range(F_cols)] if feats.names is None
                        else [(name, "") for name in feats.names])
        return imap, {"kind": "arrays", "column": feats.column, "values": feats.numeric[0], "num_columns": F_cols}
    if feats.kind == "ntv":
        if feats.index_map is not None:
            imap = feats.index_map
        else:
            imap = _copy_map(base) if base is not None else IndexMap()
            pairs = (df.select(F.explode(feats.named_column).alias("f")).select("f.name", "f.term")
                     .where(F.col("name").isNotNull() & F.col("term").isNotNull()).distinct().collect())
            imap.batch_push(sorted((r[0], r[1]) for r in pairs))
        return imap, {"kind": "ntv", "column": feats.column}
    imap = feats.index_map if feats.index_map is not None else (_copy_map(base) if base is not None else IndexMap())
    numeric = []
    for c in feats.numeric:
        if feats.index_map is None:
            imap.push((c, ""))
        numeric.append((c, _map_index(imap, (c, ""), c)))
    categorical = []
    for c in feats.categorical:
        if feats.index_map is None:
            values = sorted(r[0] for r in df.select(F.col(c).cast("string")).where(F.col(c).isNotNull())
                            .distinct().collect())
            imap.batch_push((c, v) for v in values)
        cats = [t for (n, t) in imap.name_terms if n == c]
        ids = [_map_index(imap, (c, t), c) for t in cats]
        # a categorical's ids need not be contiguous in a given map: look them up through a key list
        categorical.append((c, cats, ids))
    return imap, {"kind": "columns", "numeric": numeric, "categorical_raw": categorical}


def _map_index(imap: IndexMap, nt: tuple, column: str) -> int:
    try:
        return imap.get_index(nt)
    except IndexError:
        raise _error(ValueError, column, nt, "is not in the given index map") from None


def _copy_map(imap: IndexMap) -> IndexMap:
    return IndexMap.from_dict(imap.to_dict())


def _finish_feature_spec(fspec: dict) -> dict:
    """Arrow value sets for the task-side lookups (built on the driver, pickled to the tasks)."""
    import pyarrow as pa

    if fspec["kind"] == "columns":
        cats, bases = [], {}
        for c, terms, ids in fspec.pop("categorical_raw"):
            # index_in gives positions in `terms`; ids are then terms' ids: keep them contiguous via a base when so
            ids_arr = np.asarray(ids, np.int64)
            if len(ids_arr) and (np.diff(ids_arr) == 1).all():
                bases[c] = int(ids_arr[0])
                cats.append((c, pa.array(terms, pa.string())))
            else:
                raise _error(ValueError, c, terms[:3], "has categories whose ids are not contiguous in the index "
                             "map; give the categories of one column one after the other")
        fspec["categorical"] = cats
        fspec["categorical_base"] = bases
    return fspec


def _check_same_space(state_map: IndexMap, data_map: IndexMap, feats: Features, where: str | None) -> None:
    """``ValueError`` when the data's feature space is not the state's (nor extends it, new features last)."""
    a, b = state_map.name_terms, data_map.name_terms
    exact = feats.kind in ("vector", "arrays")
    if a == b or (not exact and b[: len(a)] == a):
        return
    for j in range(min(len(a), len(b))):
        if a[j] != b[j]:
            raise _error(ValueError, "index_map", b[j], f"differs from the state's feature space: feature id {j} is "
                         f"{a[j]!r} in the state but {b[j]!r} in the data", where)
    raise _error(ValueError, "index_map", f"<{len(b)} features>", f"differs from the state's {len(a)} features "
                 "(the data's feature space must be the state's)", where)


def _task_spec(columns: Columns, fspec: dict, imap: IndexMap, hyper: dict, dtype: str, entity_type: str,
               data_columns: list, delta: float | None, job: str) -> dict:
    import pyarrow as pa

    fspec = dict(fspec)
    if fspec["kind"] == "ntv":
        fspec["keys"] = pa.array([f"{n}\x00{t}" for n, t in imap.name_terms], pa.string())
    names = pa.array([str(n) for n, _ in imap.name_terms], pa.string())
    terms = pa.array([str(t) for _, t in imap.name_terms], pa.string())
    return {"entity": columns.entity, "label": columns.label, "weight": columns.weight, "offset": columns.offset,
            "order": columns.order, "features": fspec, "num_features": len(imap), "hyper": hyper, "dtype": dtype,
            "precision": _STORED_PRECISION[hyper["hessian"]], "entity_type": entity_type, "names": names,
            "terms": terms, "data_columns": data_columns, "delta": delta, "job": job, "worker": _driver_config()}


def _hyper(model: Any) -> dict:
    if not isinstance(model, RandomEffectModel):
        raise _error(TypeError, "model", type(model).__name__, "must be an lljax.RandomEffectModel (its settings "
                     "are used; its stored entities are not)")
    return {name: getattr(model, name) for name in HYPERPARAMETERS}


def _state_schema(entity_type: str) -> str:
    return (f"entity {entity_type}, feature_ids array<bigint>, names array<string>, terms array<string>, "
            "means array<double>, precision array<double>")


def _union(data: Any, state: SparkState | None, columns: Columns, entity_type: str) -> Any:
    """The data rows (kind 0) and the state rows (kind 1, columns prefixed) as one DataFrame."""
    from pyspark.sql import functions as F

    rows = data.withColumn(_KIND, F.lit(0).cast("tinyint"))
    if state is None:
        return rows
    if state.info.entity_type != entity_type:
        raise _error(TypeError, columns.entity, entity_type, f"has another type than the state's entity keys "
                     f"({state.info.entity_type})", state.path)
    s = state.frame.select(F.col("entity").cast(entity_type).alias(columns.entity),
                           *[F.col(f).alias(_S + f) for f in _STATE_FIELDS])
    s = s.withColumn(_KIND, F.lit(1).cast("tinyint"))
    return rows.unionByName(s, allowMissingColumns=True)


def _run_action(action: Any) -> Any:
    try:
        return action()
    except Exception as exc:  # Spark wraps a task's error: raise the task's input error as itself
        found = _driver_error(exc)
        if found is not None:
            raise found from None
        raise


def _input_frame(df: Any, columns: Columns) -> tuple[Any, list]:
    """The columns the tasks need, categoricals cast to strings (as the index map names them)."""
    from pyspark.sql import functions as F

    feats = columns.features
    cols = [columns.entity] + [c for c in (columns.label, columns.weight, columns.offset, columns.order)
                               if c is not None]
    exprs = [F.col(columns.entity).cast("bigint") if _types(df)[columns.entity] in _INT_TYPES
             else F.col(columns.entity)]
    exprs += [F.col(c) for c in cols[1:]]
    for c in feats.input_columns():
        if c in cols:
            continue
        cols.append(c)
        exprs.append(F.col(c).cast("string").alias(c) if c in feats.categorical else F.col(c))
    return df.select(*exprs), cols


def _num_partitions(df: Any, num_partitions: int | None) -> int:
    if num_partitions is None:
        return int(_session(df).conf.get("spark.sql.shuffle.partitions"))
    if not isinstance(num_partitions, int) or num_partitions < 1:
        raise _error(ValueError, "num_partitions", num_partitions, "must be an int >= 1")
    return num_partitions


def _prepare(df: Any, model: Any, columns: Columns, state: Any,
             where: str | None = None) -> tuple[str, SparkState | None, dict, IndexMap, dict, str]:
    """Checks, the state, the index map and the task spec shared by :func:`update` and :func:`score`."""
    if not isinstance(columns, Columns):
        raise _error(TypeError, "columns", type(columns).__name__, "must be an lljax.spark.Columns")
    entity_type = _check_columns(df, columns)
    state = _as_state(_session(df), state)
    hyper = _hyper(model) if model is not None else dict(state.info.hyperparameters)
    if state is not None and state.info.precision != _STORED_PRECISION[hyper["hessian"]]:
        raise _error(ValueError, "hessian", hyper["hessian"], f"keeps another precision than the state's "
                     f"({state.info.hyperparameters['hessian']!r})", state.path)
    imap, fspec = _build_index_map(df, columns.features, None if state is None else state.info.index_map)
    if state is not None:
        _check_same_space(state.info.index_map, imap, columns.features, state.path)

    dtype = "float64" if x64_enabled() else "float32"
    return entity_type, state, hyper, imap, _finish_feature_spec(fspec), dtype


def _as_state(spark: Any, state: Any) -> SparkState | None:
    if state is None or isinstance(state, SparkState):
        return state
    if isinstance(state, (str, os.PathLike)):
        return read_state(spark, os.fspath(state))
    raise _error(TypeError, "state", type(state).__name__, "must be a SparkState, a path or None")


def update(df: Any, model: RandomEffectModel, columns: Columns, *, state: SparkState | str | None = None,
           output: str | None = None, delta: float | None = None, num_partitions: int | None = None,
           persist: bool = True) -> tuple[SparkState, SparkReport]:
    """Train (``state=None``) or update a random-effect coordinate on the examples of ``df``.

    Args:
      df: the examples (a Spark DataFrame).
      model: an :class:`lljax.RandomEffectModel` giving the settings (loss, l2, delta, hessian, ...).
      columns: :class:`Columns`: entity, label, weight, offset, features.
      state: the previous state (a :class:`SparkState` or the path of one): each entity's posterior is the
        prior of its update; entities with no new rows pass through unchanged.
      output: a path: the new state is written there atomically (to a new directory, then swapped in; a
        failed job leaves what was there, the previous state included, untouched). ``None``: the new state
        is computed once and kept in memory/disk by Spark (``persist``).
      delta: the forgetting factor of this update (default the model's).
      num_partitions: tasks (default ``spark.sql.shuffle.partitions``); each holds whole entities.

    Returns:
      ``(state, report)``: the new :class:`SparkState` and the :class:`SparkReport` of the job.
    """
    started = time.perf_counter()
    spark = _session(df)
    entity_type, prior, hyper, imap, fspec, dtype = _prepare(df, model, columns, state)
    t_map = time.perf_counter() - started
    frame, data_cols = _input_frame(df, columns)
    P = _num_partitions(df, num_partitions)
    acc = _report_accumulator(spark.sparkContext)
    job = uuid.uuid4().hex[:12]
    spec = _task_spec(columns, fspec, imap, hyper, dtype, entity_type, data_cols, delta, job)
    union = _union(frame, prior, columns, entity_type).repartition(P, columns.entity)
    out = union.mapInArrow(_update_task(spec, acc), _state_schema(entity_type))
    info = StateInfo(hyper, imap, entity_type, dtype)
    t0 = time.perf_counter()
    if output is not None:
        stages = _run_action(lambda: _write_atomic(spark, out, info, output))
        result = read_state(spark, output)
    else:
        from pyspark import StorageLevel

        out = out.persist(StorageLevel.MEMORY_AND_DISK) if persist else out
        _run_action(lambda: out.count())
        stages = {}
        result = SparkState(out, info)
    wall = time.perf_counter() - started
    return result, _collect_report(acc.value, wall, {"index_map": t_map, "job": time.perf_counter() - t0, **stages})


# ---------------------------------------------------------------------------------------------- persistence


class _FS:
    """Rename, delete and small-file I/O on the state's file system (local paths directly, others through
    Hadoop's FileSystem API, so HDFS and object stores work as Spark's own writes do)."""

    def __init__(self, spark: Any, path: str):
        self.local = "://" not in path or path.startswith("file://")
        self.spark = spark
        if not self.local:
            jvm = spark.sparkContext._jvm
            conf = spark.sparkContext._jsc.hadoopConfiguration()
            self._Path = jvm.org.apache.hadoop.fs.Path
            self.fs = self._Path(path).getFileSystem(conf)

    @staticmethod
    def _plain(path: str) -> str:
        return path[len("file://"):] if path.startswith("file://") else path

    def exists(self, path: str) -> bool:
        return os.path.exists(self._plain(path)) if self.local else self.fs.exists(self._Path(path))

    def rename(self, src: str, dst: str) -> None:
        if self.local:
            os.replace(self._plain(src), self._plain(dst))
        elif not self.fs.rename(self._Path(src), self._Path(dst)):
            raise OSError(f"could not rename {src} to {dst}")

    def delete(self, path: str) -> None:
        if self.local:
            import shutil

            shutil.rmtree(self._plain(path), ignore_errors=True)
        else:
            self.fs.delete(self._Path(path), True)

    def write_text(self, path: str, text: str) -> None:
        if self.local:
            with open(self._plain(path), "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        else:
            out = self.fs.create(self._Path(path), True)
            out.write(bytearray(text.encode("utf-8")))
            out.close()

    def read_text(self, path: str) -> str | None:
        if not self.exists(path):
            return None
        if self.local:
            with open(self._plain(path)) as f:
                return f.read()
        rows = self.spark.read.text(path, wholetext=True).collect()
        return rows[0][0] if rows else ""


def _write_atomic(spark: Any, frame: Any, info: StateInfo, path: str) -> dict:
    """Write ``frame`` and its metadata to a new directory beside ``path``, then swap it in."""
    path = path.rstrip("/")
    fs = _FS(spark, path)
    tag = uuid.uuid4().hex[:12]
    tmp, old = f"{path}.tmp-{tag}", f"{path}.old-{tag}"
    t0 = time.perf_counter()
    try:
        frame.write.parquet(tmp)
        fs.write_text(f"{tmp}/{METADATA_FILE}", info.to_json())
    except BaseException:
        fs.delete(tmp)
        raise
    t1 = time.perf_counter()
    had = fs.exists(path)
    if had:
        fs.rename(path, old)
    try:
        fs.rename(tmp, path)
    except BaseException:
        if had:
            fs.rename(old, path)
        raise
    if had:
        fs.delete(old)
    return {"write": t1 - t0, "swap": time.perf_counter() - t1}


def write_state(state: SparkState, path: str) -> SparkState:
    """Write ``state`` to Parquet at ``path`` (with its metadata file), atomically: into a new directory,
    then swapped in, so a failure leaves what was at ``path`` untouched. Returns the state read back."""
    spark = _session(state.frame)
    _run_action(lambda: _write_atomic(spark, state.frame, state.info, path))
    return read_state(spark, path)


def read_state(spark: Any, path: str) -> SparkState:
    """The state written at ``path`` by :func:`update` or :func:`write_state`; ``ValueError`` naming the path
    when it is not an lljax.spark state or was written by another format version."""
    path = os.fspath(path).rstrip("/")
    text = _FS(spark, path).read_text(f"{path}/{METADATA_FILE}")
    if text is None:
        raise _error(ValueError, METADATA_FILE, None, "is missing: not an lljax.spark state directory", path)
    info = StateInfo.from_json(text, path)
    frame = spark.read.parquet(path)
    types = _types(frame)
    expected = {"entity": info.entity_type, "feature_ids": "array<bigint>", "means": "array<double>",
                "precision": "array<double>", "names": "array<string>", "terms": "array<string>"}
    for name, t in expected.items():
        if name not in types:
            raise _error(ValueError, name, None, "is missing from the state's Parquet files", path)
        if types[name] != t:
            raise _error(TypeError, name, types[name], f"has the wrong type in the state (expected {t})", path)
    return SparkState(frame.select("entity", *_STATE_FIELDS), info, path)


def _arrow_table(df: Any) -> Any:
    """A (small) DataFrame collected to the driver as an Arrow table."""
    return df.toArrow()


# ---------------------------------------------------------------------------------------------- scoring


def _fold64(key: Any, x: Any) -> Any:
    import jax

    x = x.astype(np.uint64) if hasattr(x, "astype") else x
    return jax.random.fold_in(jax.random.fold_in(key, (x >> 32).astype(np.uint32)), (x & 0xFFFFFFFF).astype(np.uint32))


def _normals(seed: int, requests: np.ndarray, fids: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``z[k] ~ N(0, 1)`` keyed by ``(seed, requests[k], fids[k])``: the same draw wherever it is computed."""
    import jax
    import jax.numpy as jnp

    if len(fids) == 0:
        return np.zeros(0, dtype)
    base = jax.random.key(seed)
    r = jnp.asarray(requests.astype(np.int64).view(np.uint64))
    f = jnp.asarray(fids.astype(np.int64).view(np.uint64))
    return np.asarray(_normals_jit(base, r, f, np.dtype(dtype).name))


def _normals_impl(base: Any, r: Any, f: Any, dtype: str) -> Any:
    import jax

    def one(ri: jax.Array, fi: jax.Array) -> jax.Array:
        return jax.random.normal(_fold64(_fold64(base, ri), fi), (), dtype)

    return jax.vmap(one)(r, f)


_normals_cache: dict = {}


def _normals_jit(base: Any, r: Any, f: Any, dtype: str) -> Any:
    import jax

    fn = _normals_cache.get(dtype)
    if fn is None:
        fn = _normals_cache[dtype] = jax.jit(lambda b, r_, f_: _normals_impl(b, r_, f_, dtype))
    return fn(base, r, f)


def explore_scores(ds: Dataset, store: EntityStore | None, l2: float, precision: str | None, *,
                   requests: np.ndarray | None, seed: int | None, alpha: float | None) -> dict:
    """Per-row UCB and Thompson margins of ``ds``'s rows (host NumPy; used inside the scoring tasks).

    Each row's posterior is its entity's stored one over the stored features, with the cold prior
    ``N(0, 1/l2)`` for its other features (as :meth:`lljax.RandomEffectModel.posterior`). UCB:
    ``offset + x . mean + alpha sqrt(x^T P^-1 x)``. Thompson: one ``theta = mean + L^-T z`` per request
    (``P = L L^T``; ``mean + z / sqrt(P)`` for a diagonal), shared by the request's rows, where
    ``z_j ~ N(0, 1)`` is keyed by ``(seed, request, feature id j)``: draws do not depend on partitioning.
    """
    n = ds.num_examples
    out: dict = {}
    row = ds.row_of_nonzero()
    _, fids, vals = ds.explicit_rows()
    fids = fids.astype(np.int64)
    vals = vals.astype(np.float64)
    ent = ds.entity[row]
    if store is not None and len(store):
        slots = store.lookup(ds.entity_keys)
        known = slots >= 0
        flat = store.to_flat(slots[known])
        code_of_flat = np.flatnonzero(known)
    else:
        flat = FlatEntities(np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0),
                            None if precision is None else np.zeros(0))
        code_of_flat = np.zeros(0, np.int64)
    sizes = flat.sizes
    stride = int(max(ds.num_features, int(flat.feature_ids.max()) + 1 if flat.feature_ids.size else 1))
    owner = np.repeat(code_of_flat, sizes)
    stored_keys = owner * stride + flat.feature_ids
    order = np.argsort(stored_keys, kind="stable")
    sk = stored_keys[order]
    wanted = ent * stride + fids
    pos = np.minimum(np.searchsorted(sk, wanted), max(len(sk) - 1, 0))
    found = (sk[pos] == wanted) if len(sk) else np.zeros(len(wanted), bool)
    flat_pos = np.where(found, order[pos] if len(sk) else 0, -1)  # index into flat's pairs
    # the entity's flat index and the position of the feature within the entity
    flat_index_of_code = np.full(ds.num_entities, -1, np.int64)
    flat_index_of_code[code_of_flat] = np.arange(len(code_of_flat))
    fe = flat_index_of_code[ent]
    within = np.where(found, flat_pos - np.where(fe >= 0, flat.indptr[np.maximum(fe, 0)], 0), -1)
    mean_part = np.where(found, flat.means[np.maximum(flat_pos, 0)] if len(flat.means) else 0.0, 0.0)
    margin = ds.offset.astype(np.float64) + np.bincount(row, weights=vals * mean_part, minlength=n)
    out["score"] = margin
    if precision is None:
        return out
    stored_precision = flat.precision
    assert stored_precision is not None, "the store keeps the precision the state's hyper-parameters name"
    cold_var = 1.0 / l2 if l2 > 0 else np.inf
    widths = sizes
    if alpha is not None:
        var = np.bincount(row, weights=np.where(found, 0.0, vals**2 * cold_var), minlength=n)
        row_flat = flat_index_of_code[ds.entity]
        for d in np.unique(widths[row_flat[row_flat >= 0]]) if len(widths) else []:
            d = int(d)
            members = np.flatnonzero((row_flat >= 0) & (widths[np.maximum(row_flat, 0)] == d))
            if d == 0 or not len(members):
                continue
            local = np.full(n, -1, np.int64)
            local[members] = np.arange(len(members))
            X = np.zeros((len(members), d))
            sel = found & (local[row] >= 0)
            np.add.at(X, (local[row[sel]], within[sel]), vals[sel])
            ents = row_flat[members]
            if precision == "full":
                starts = flat.precision_indptr[ents]
                P = stored_precision[starts[:, None] + np.arange(d * d)[None, :]].reshape(-1, d, d)
                L = np.linalg.cholesky(P)
                v = np.linalg.solve(L, X[..., None])[..., 0]
                var[members] += (v**2).sum(axis=1)
            else:
                starts = flat.indptr[ents]
                Pd = stored_precision[starts[:, None] + np.arange(d)[None, :]]
                var[members] += (X**2 / Pd).sum(axis=1)
        out["ucb"] = margin + alpha * np.sqrt(var)
    if seed is not None:
        req = np.asarray(requests, np.int64)
        # one draw per request: z over the entity's stored features and over each row's cold features
        ureq, first, rinv = np.unique(req, return_index=True, return_inverse=True)
        req_ent = ds.entity[first]
        if (ds.entity != req_ent[rinv]).any():
            i = int(np.argmax(ds.entity != req_ent[rinv]))
            raise _error(ValueError, "request", int(req[i]), "belongs to two entities "
                         f"({ds.entity_keys[req_ent[rinv[i]]]!r} and {ds.entity_keys[ds.entity[i]]!r}); a "
                         "Thompson request ranks candidates of one entity", f"example {i}")
        theta_part = np.zeros(len(row))
        cold = ~found
        z_cold = _normals(seed, req[row[cold]], fids[cold], np.dtype(np.float64))
        theta_part[cold] = z_cold * math.sqrt(cold_var)
        rflat = flat_index_of_code[req_ent]
        for d in np.unique(widths[rflat[rflat >= 0]]) if len(widths) else []:
            d = int(d)
            rs = np.flatnonzero((rflat >= 0) & (widths[np.maximum(rflat, 0)] == d))
            if d == 0 or not len(rs):
                continue
            ents = rflat[rs]
            starts = flat.indptr[ents]
            idx = starts[:, None] + np.arange(d)[None, :]
            z = _normals(seed, np.repeat(ureq[rs], d), flat.feature_ids[idx].reshape(-1),
                         np.dtype(np.float64)).reshape(-1, d)
            mu = flat.means[idx]
            if precision == "full":
                pst = flat.precision_indptr[ents]
                P = stored_precision[pst[:, None] + np.arange(d * d)[None, :]].reshape(-1, d, d)
                L = np.linalg.cholesky(P)
                step = np.linalg.solve(np.swapaxes(L, 1, 2), z[..., None])[..., 0]
            else:
                step = z / np.sqrt(stored_precision[idx])
            theta = mu + step  # (R_d, d)
            local = np.full(len(ureq), -1, np.int64)
            local[rs] = np.arange(len(rs))
            sel = found & (local[rinv[row]] >= 0)
            theta_part[sel] = theta[local[rinv[row[sel]]], within[sel]]
        out["thompson"] = ds.offset.astype(np.float64) + np.bincount(row, weights=vals * theta_part, minlength=n)
    return out


def _score_task(spec: dict, acc: Any) -> Any:
    def run(batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa

        _worker_setup(spec["worker"])
        started = time.perf_counter()
        received = list(batches)
        if not received:  # an empty partition: Arrow cannot build a table from no batch (no schema)
            return
        table = pa.Table.from_batches(received)
        if table.num_rows == 0:
            return
        part, attempt = _task_info()
        try:
            data, state = _split_union(table, {**spec, "data_columns": spec["pass_columns"]})
            del table
            if data.num_rows == 0:
                return
            ds = _dataset(data, spec)
            store = None
            if state.num_rows:
                store = EntityStore.from_flat(_flat_from_arrow(state, spec["precision"], "entity"),
                                              np.dtype(spec["dtype"]), spec["precision"])
            requests = None
            if spec["seed"] is not None:
                _check_no_nulls(data, spec["request"], "request ids", spec["entity"])
                requests = _np(data.column(spec["request"])).astype(np.int64)
            t1 = time.perf_counter()
            scores = explore_scores(ds, store, spec["hyper"]["l2"], spec["precision"], requests=requests,
                                    seed=spec["seed"], alpha=spec["alpha"])
        except (ValueError, TypeError) as exc:
            raise _task_error(exc) from exc
        for name in spec["outputs"]:
            data = data.append_column(spec["outputs"][name], pa.array(scores[name], pa.float64()))
        acc.add([{"job": spec["job"], "partition": part, "attempt": attempt, "entities": int(ds.num_entities),
                  "rows": int(ds.num_examples), "seconds": {"convert": t1 - started,
                                                            "score": time.perf_counter() - t1}}])
        yield from data.to_batches()

    return run


def score(df: Any, state: SparkState | str, columns: Columns, *, output: str = "score", ucb: str | None = None,
          alpha: float = 1.0, thompson: str | None = None, seed: int | None = None, request: str | None = None,
          num_partitions: int | None = None) -> tuple[Any, SparkReport]:
    """Score the examples of ``df`` with a state: adds the mean margin (``offset + x . mean``) as column
    ``output`` and, on request, UCB (``ucb``: column name; ``alpha``) and Thompson (``thompson``: column
    name; ``seed``, an int; ``request``: an integer column of request ids, each request one entity's
    candidates, sharing one posterior draw) margins. Entities without a state score their offset (mean)
    and the cold prior (exploration). Returns ``(DataFrame, report)``; the DataFrame is computed once
    (persisted)."""
    from pyspark import StorageLevel

    spark = _session(df)
    started = time.perf_counter()
    stored = _as_state(spark, state)
    if stored is None:
        raise _error(ValueError, "state", None, "is required to score")
    thompson_seed = None
    if thompson is not None:
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            raise _error(TypeError, "seed", seed, "must be an int: Thompson scores need an explicit seed")
        thompson_seed = int(seed)
        if request is None:
            raise _error(ValueError, "request", None, "is required for Thompson scores (an integer column of "
                         "request ids)")
        _check_column(df, request, _INT_TYPES, "request ids")
    cols = Columns(columns.entity, None, columns.features, columns.weight, columns.offset)
    entity_type, prior, hyper, imap, fspec, dtype = _prepare(df, None, cols, stored)
    P = _num_partitions(df, num_partitions)
    names = {"score": output}
    if ucb is not None:
        names["ucb"] = ucb
    if thompson is not None:
        names["thompson"] = thompson
    for c in names.values():
        if c in df.columns:
            raise _error(ValueError, c, None, "is already a column of the DataFrame (choose another output name)")
    frame = df
    feats = columns.features
    for c in feats.categorical:  # as the index map names them
        frame = frame.withColumn(c, frame[c].cast("string"))
    if entity_type == "bigint":
        frame = frame.withColumn(columns.entity, frame[columns.entity].cast("bigint"))
    pass_cols = list(frame.columns)
    acc = _report_accumulator(spark.sparkContext)
    job = uuid.uuid4().hex[:12]
    spec = _task_spec(cols, fspec, imap, hyper, dtype, entity_type, pass_cols, None, job)
    spec.update(pass_columns=pass_cols, seed=thompson_seed,
                alpha=None if ucb is None else float(alpha), request=request, outputs=names)
    union = _union(frame, prior, cols, entity_type).repartition(P, columns.entity)
    schema = frame.schema
    from pyspark.sql.types import DoubleType, StructField, StructType

    out_schema = StructType([StructField(f.name, f.dataType, True) for f in schema.fields]
                            + [StructField(c, DoubleType(), True) for c in names.values()])
    out = union.mapInArrow(_score_task(spec, acc), out_schema).persist(StorageLevel.MEMORY_AND_DISK)
    _run_action(lambda: out.count())
    wall = time.perf_counter() - started
    return out, _collect_report(acc.value, wall, {})


# ---------------------------------------------------------------------------------------------- GAME


@dataclass
class GameResult:
    """What :func:`fit_game` returns: each random effect's :class:`SparkState`, the scored examples
    (``frame``: the input's columns plus ``row_id`` and one score column per coordinate, ``score_<name>``),
    the driver-side fixed effect (an :class:`lljax.game.GameModel` of it, or ``None``) and one report per step."""

    states: dict
    frame: Any
    fixed: Any
    steps: list


def _score_column(name: str) -> str:
    return f"score_{name}"


def _coordinate_task(spec: dict, acc: Any) -> Any:
    """Train one random-effect coordinate on the partition and score its rows: state rows (kind 1) and
    (row_id, score) rows (kind 0) in one output."""

    def run(batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa

        _worker_setup(spec["worker"])
        received = list(batches)
        if not received:  # an empty partition: Arrow cannot build a table from no batch (no schema)
            return
        table = pa.Table.from_batches(received)
        if table.num_rows == 0:
            return
        part, attempt = _task_info()
        try:
            t0 = time.perf_counter()
            data, state = _split_union(table, spec, group=True)
            del table
            if data.num_rows == 0:
                return
            ds = _dataset(data, spec)
            model = RandomEffectModel(**spec["hyper"])
            dtype = np.dtype(spec["dtype"])
            if state.num_rows:
                model.store = EntityStore.from_flat(_flat_from_arrow(state, spec["precision"], "entity"), dtype,
                                                    spec["precision"])
            t1 = time.perf_counter()
            report = model.update(ds, delta=0.0, progress=False)
            contribution = model.score(ds.with_offset(np.zeros(ds.num_examples, ds.dtype)))
            t2 = time.perf_counter()
            st = _state_arrow(model.store.to_flat(), spec) if model.store is not None and len(model) else None
        except (ValueError, TypeError) as exc:
            raise _task_error(exc) from exc
        counts = np.bincount(report.status, minlength=len(Status))
        acc.add([{"job": spec["job"], "partition": part, "attempt": attempt, "entities": int(len(report.entity_keys)),
                  "rows": int(ds.num_examples), "blocks": int(report.blocks),
                  "status": {s.name.lower(): int(counts[s.value]) for s in Status if counts[s.value]},
                  "iterations": int(report.iterations.sum()),
                  "seconds": {"convert": t1 - t0, "solve": t2 - t1, "output": time.perf_counter() - t2}}])
        rows = pa.table({_KIND: pa.array(np.zeros(data.num_rows, np.int8)), "row_id": data.column("row_id"),
                         "score": pa.array(contribution, pa.float64())})
        yield from _pad_union(rows, spec).to_batches()
        if st is not None:
            st = st.append_column(_KIND, pa.array(np.ones(st.num_rows, np.int8)))
            yield from _pad_union(st, spec).to_batches()

    return run


def _pad_union(table: Any, spec: dict) -> Any:
    import pyarrow as pa

    schema = spec["out_schema"]
    cols = [table.column(f.name) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
            for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


def fit_game(df: Any, *, loss: str, label: str, coordinates: Sequence[RandomEffectSpec],
             fixed_score: str | None = None, fixed_effect: Any = None, fixed_features: str | None = None,
             weight: str | None = None, offset: str | None = None, passes: int = 1,
             num_partitions: int | None = None) -> GameResult:
    """GAME block coordinate descent on a DataFrame (as :meth:`lljax.game.GameModel.fit`).

    The margin of a row is ``offset + fixed + sum of the random effects' scores``. The fixed effect is
    either a score column (``fixed_score``: trained elsewhere, e.g. by Spark ML) or, when the rows fit on the
    driver, an :class:`lljax.game.FixedEffect` (``fixed_effect``) on the vector column ``fixed_features``,
    trained on the driver in every pass, first in the order. Each random effect (:class:`RandomEffectSpec`)
    is trained on Spark with offset = the other coordinates' scores; its new scores join the rows.

    Returns a :class:`GameResult`.
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    if not isinstance(passes, int) or passes < 1:
        raise _error(ValueError, "passes", passes, "must be an int >= 1")
    names = [c.name for c in coordinates]
    if len(set(names)) != len(names):
        raise _error(ValueError, "coordinates", names, "must have distinct names")
    if fixed_score is not None and fixed_effect is not None:
        raise _error(ValueError, "fixed_effect", fixed_effect.name, "give fixed_score or fixed_effect, not both")
    _check_column(df, label, _NUM_TYPES, "the label")
    for numeric_col in (weight, offset, fixed_score):
        if numeric_col is not None:
            _check_column(df, numeric_col, _NUM_TYPES, "a weight, offset or score")
    spark = _session(df)
    P = _num_partitions(df, num_partitions)
    base = F.col(offset).cast("double") if offset is not None else F.lit(0.0)
    frame = df.withColumn("row_id", F.monotonically_increasing_id()).withColumn("_lljax_base", base)
    fixed_col = None
    if fixed_score is not None:
        fixed_col = fixed_score
    for c in coordinates:
        frame = frame.withColumn(_score_column(c.name), F.lit(0.0))
    fixed_name = None
    if fixed_effect is not None:
        fixed_name = fixed_effect.name
        if fixed_features is not None:
            _check_column(df, fixed_features, (), "the fixed effect's vector of features")
        frame = frame.withColumn(_score_column(fixed_name), F.lit(0.0))
        fixed_col = _score_column(fixed_name)
    frame = frame.persist(StorageLevel.MEMORY_AND_DISK)
    frame.count()
    states: dict = {}
    infos: dict = {}
    prepared: dict = {}
    steps: list = []
    fixed_model = None
    score_cols = [_score_column(c.name) for c in coordinates]

    def others(exclude: str | None) -> Any:
        expr = F.col("_lljax_base")
        if fixed_col is not None and fixed_col != exclude:
            expr = expr + F.col(fixed_col)
        for s in score_cols:
            if s != exclude:
                expr = expr + F.col(s)
        return expr

    for p in range(1, passes + 1):
        if fixed_effect is not None:
            t0 = time.perf_counter()
            fixed_model, scores = _fit_fixed_on_driver(frame, loss, label, weight, fixed_effect, fixed_features,
                                                       others(fixed_col), fixed_model)
            sdf = spark.createDataFrame(scores)
            new = frame.drop(fixed_col).join(sdf, "row_id").persist(StorageLevel.MEMORY_AND_DISK)
            new.count()
            frame.unpersist()
            frame = new
            steps.append({"pass": p, "coordinate": fixed_name, "seconds": time.perf_counter() - t0, "report": None})
        for c in coordinates:
            t0 = time.perf_counter()
            col = _score_column(c.name)
            model = RandomEffectModel(loss, l2=c.l2, hessian=c.hessian, min_rows=c.min_rows, max_rows=c.max_rows,
                                      max_iter=c.max_iter, tol=c.tol, penalize_intercept=c.penalize_intercept)
            cols = Columns(c.entity, label, c.features, weight, "_lljax_offset")
            rows = frame.withColumn("_lljax_offset", others(col))
            if c.name not in prepared:  # the feature space is the data's: built once
                prepared[c.name] = _prepare(rows, model, cols, None)
            entity_type, _, hyper, imap, fspec, dtype = prepared[c.name]
            state = states.get(c.name)
            sel, data_cols = _input_frame(rows, cols)
            sel = rows.select(*[rows[x] for x in data_cols], rows["row_id"])
            if entity_type == "bigint":
                sel = sel.withColumn(c.entity, F.col(c.entity).cast("bigint"))
            for cc in c.features.categorical:
                sel = sel.withColumn(cc, F.col(cc).cast("string"))
            acc = _report_accumulator(spark.sparkContext)
            job = uuid.uuid4().hex[:12]
            spec = _task_spec(cols, fspec, imap, hyper, dtype, entity_type, data_cols + ["row_id"], 0.0, job)
            import pyarrow as pa

            state_types = {"feature_ids": pa.list_(pa.int64()), "names": pa.list_(pa.string()),
                           "terms": pa.list_(pa.string()), "means": pa.list_(pa.float64()),
                           "precision": pa.list_(pa.float64())}
            spec["out_schema"] = pa.schema([(_KIND, pa.int8()), ("row_id", pa.int64()), ("score", pa.float64()),
                                            ("entity", pa.string() if entity_type == "string" else pa.int64())]
                                           + list(state_types.items()))
            union = _union(sel, state, cols, entity_type).repartition(P, c.entity)
            out_ddl = (f"{_KIND} tinyint, row_id bigint, score double, entity {entity_type}, "
                       "feature_ids array<bigint>, names array<string>, terms array<string>, means array<double>, "
                       "precision array<double>")
            out = union.mapInArrow(_coordinate_task(spec, acc), out_ddl).persist(StorageLevel.MEMORY_AND_DISK)
            _run_action(lambda out=out: out.count())
            new_state = out.where(F.col(_KIND) == 1).select("entity", *_STATE_FIELDS)
            new_state = new_state.persist(StorageLevel.MEMORY_AND_DISK)
            new_state.count()
            scores = out.where(F.col(_KIND) == 0).select("row_id", F.col("score").alias(col))
            new = frame.drop(col).join(scores, "row_id", "left").fillna(0.0, subset=[col])
            new = new.persist(StorageLevel.MEMORY_AND_DISK)
            new.count()
            old_state = states.get(c.name)
            frame.unpersist()
            out.unpersist()
            if old_state is not None:
                old_state.frame.unpersist()
            frame = new
            infos[c.name] = StateInfo(hyper, imap, entity_type, dtype)
            states[c.name] = SparkState(new_state, infos[c.name])
            steps.append({"pass": p, "coordinate": c.name, "seconds": time.perf_counter() - t0,
                          "report": _collect_report(acc.value, time.perf_counter() - t0, {})})
    return GameResult(states, frame.drop("_lljax_base"), fixed_model, steps)


def _fit_fixed_on_driver(frame: Any, loss: str, label: str, weight: str | None, spec: Any, features: str | None,
                         others_expr: Any, previous: Any) -> tuple[Any, Any]:
    """Collect the fixed effect's columns, fit it with lljax.game on the driver (offset = the others' scores),
    and return ``(GameModel, pandas (row_id, score))``."""
    from pyspark.sql import functions as F

    from lljax.game import ExternalScore, GameData, GameModel

    cols = [F.col("row_id"), F.col(label).cast("double").alias("y"), others_expr.alias("o")]
    if weight is not None:
        cols.append(F.col(weight).cast("double").alias("w"))
    if features is not None:
        cols.append(F.col(features).alias("x"))
    t = _arrow_table(frame.select(*cols).orderBy("row_id"))
    n = t.num_rows
    feats = {}
    if features is not None:
        csr_spec = {"kind": "vector", "column": "x", "num_columns": _vector_size(t.column("x"))}
        indptr, fids, vals = _features_csr(t, csr_spec, n, np.dtype(np.float64))
        feats[spec.features] = (indptr, fids - 1, vals, csr_spec["num_columns"])
    data = GameData.from_arrays(_np(t.column("y")), features=feats,
                                weight=None if weight is None else _np(t.column("w")),
                                scores={"_lljax_others": _np(t.column("o"))})
    model = previous if previous is not None else GameModel(
        loss, [spec, ExternalScore("_lljax_others", column="_lljax_others")])
    model.fit(data, passes=1, order=[spec.name], warm_start=previous is not None, record_objective=False)
    import pandas as pd

    scores = pd.DataFrame({"row_id": _np(t.column("row_id")).astype(np.int64),
                           _score_column(spec.name): model.score(data).contributions[spec.name]})
    return model, scores


def _vector_size(column: Any) -> int:
    import pyarrow as pa
    import pyarrow.compute as pc

    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(col) == 0:
        return 0
    t = col.field("type")[0].as_py()
    if t == 1:
        return int(pc.list_value_length(col.field("values"))[0].as_py())
    return int(col.field("size")[0].as_py())
