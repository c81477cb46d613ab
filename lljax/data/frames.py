"""DataFrames and Arrow in and out: a :class:`Dataset` from a pandas DataFrame, an Arrow table or a Parquet
file, with named features; coefficients, update reports and stream reports as DataFrames.

Needs the ``io`` extra (``pip install "lljax[io]"``: pandas and pyarrow), imported when a function is
called, not when lljax is.

**Columns in.** :func:`dataset_from_frame` takes the entity, label, weight and offset columns by name, and
feature columns of three kinds, each turned into named features of an :class:`IndexMap` (``(name, term)``
pairs, the intercept at index 0, implicit: never one of your columns):

- *numeric* (integers, floats, booleans as 0/1): the feature ``(column, "")`` with the column's value
  (zeros are not stored);
- *categorical* (strings, pandas ``category``, Arrow ``dictionary``, or integers/booleans you name as
  categorical): the feature ``(column, category)`` with value 1.0, the category as a string (Arrow's cast
  to string: ``"1"``, ``"true"``); a pandas ``category`` / Arrow ``dictionary`` column indexes all its
  declared categories in their declared order, other columns their distinct values in sorted order;
- *NTV*: a list of ``{name, term, value}`` structs per row (Lambda Learner's name-term-value features),
  each its own feature. As in :meth:`Dataset.from_records`, a struct naming the intercept's own
  ``(name, term)`` is added to the intercept's 1.0.

Everything is vectorized (Arrow compute and NumPy; no Python loop per row): 1M rows x 10 columns in about
a second (``benchmarks/bench_frames.py``).

**Bad input** raises ``ValueError`` / ``TypeError`` naming the column and the value (and the row where
there is one): a column that does not exist or is given two roles; a column of the wrong type; a null in
the entity, label, weight, offset, a numeric or an NTV column; a null in a categorical column unless
``null_category`` names a category for it (e.g. ``null_category="<null>"``: nulls become the feature
``(column, "<null>")``); mixed types in an entity column (ints and strings); a categorical value that is
the intercept's own ``(name, term)``; a pandas Series given for the label, weight or offset that must be
aligned on a DataFrame index that is not unique.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from lljax.data.dataset import Dataset, encode_entity_keys
from lljax.data.errors import input_error
from lljax.data.ntv import IndexMap, ntv_arrow_table

__all__ = [
    "dataset_from_frame",
    "dataset_from_parquet",
    "dataset_from_ntv_jsonl",
    "coefficients_frame",
    "report_frame",
    "stream_frame",
]

UNKNOWN = ("grow", "error", "ignore")

# One source of features: (entries per row (n,), row of each entry, feature ids, values).
_Part = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _pyarrow() -> tuple[Any, Any]:
    """The modules ``pyarrow`` and ``pyarrow.compute`` (untyped: ``Any``)."""
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
    except ImportError as exc:
        raise ImportError('DataFrames and Arrow tables need the io extra: pip install "lljax[io]" '
                          "(pandas and pyarrow)") from exc
    return pa, pc


def _pandas() -> Any:
    try:
        import pandas as pd
    except ImportError as exc:
        raise ImportError('DataFrames need the io extra: pip install "lljax[io]" (pandas and pyarrow)') from exc
    return pd


# ---------------------------------------------------------------------------------------------------------
# In
# ---------------------------------------------------------------------------------------------------------


class _Rows:
    """Names rows in messages: the position, and the pandas index label when the index is not 0..n-1."""

    def __init__(self, index: Any = None):
        self.index = index

    def __call__(self, i: int) -> str:
        if self.index is None:
            return f"row {i}"
        return f"row {i} (index {self.index[i]!r})"


def dataset_from_frame(
    frame: Any,
    *,
    entity: str,
    label: str | Any,
    weight: str | Any | None = None,
    offset: str | Any | None = None,
    numeric: Sequence[str] | None = None,
    categorical: Sequence[str] | None = None,
    ntv: Sequence[str] | None = None,
    index_map: IndexMap | None = None,
    unknown: str = "grow",
    null_category: str | None = None,
    dtype: Any = None,
) -> tuple[Dataset, IndexMap]:
    """A :class:`Dataset` and its :class:`IndexMap` from a pandas DataFrame or an Arrow table / record batch.

    Args:
      frame: a ``pandas.DataFrame``, ``pyarrow.Table`` or ``pyarrow.RecordBatch``.
      entity: the entity column (integers or strings; a pandas ``category`` / Arrow ``dictionary`` of them).
      label: the label column's name, or the labels themselves (an array, or a pandas Series aligned on the
        DataFrame's index).
      weight, offset: column names or arrays like ``label`` (default: 1 and 0). The offset is the
        fixed-effect score.
      numeric, categorical, ntv: the feature columns of each kind (see the module docstring). When all three
        are ``None``, every other column is a feature, of the kind its type says (numbers and booleans:
        numeric; strings, categories, dictionaries: categorical; lists of structs: NTV).
      index_map: the map to name features with (e.g. a trained model's ``index_map``, so that ids match);
        a new one when ``None``. It is extended in place with new features when ``unknown="grow"``.
      unknown: a feature not in ``index_map``: ``"grow"`` (default) adds it, ``"error"`` raises naming the
        column and the value, ``"ignore"`` drops it (e.g. scoring with a trained model's map).
      null_category: the category nulls of categorical columns become (``None``, default: nulls raise).
      dtype: float32 or float64 (default: float32 when the label column is float32, else float64).

    Returns:
      ``(dataset, index_map)``. The dataset's intercept is ``index_map.intercept_index`` (implicit: no
      column is ever the intercept) and its ``num_features`` is ``len(index_map)``.
    """
    pa, pc = _pyarrow()
    if unknown not in UNKNOWN:
        raise input_error("unknown", unknown, f"must be one of {list(UNKNOWN)}")
    if index_map is None:
        index_map = IndexMap()
    elif not isinstance(index_map, IndexMap):
        raise input_error("index_map", type(index_map).__name__, "must be an lljax.IndexMap or None", error=TypeError)
    if null_category is not None and not isinstance(null_category, str):
        raise input_error("null_category", null_category, "must be a string or None", error=TypeError)
    roles = {"entity": entity, "label": label, "weight": weight, "offset": offset}
    named = {role: col for role, col in roles.items() if isinstance(col, str)}
    if not isinstance(entity, str):
        raise input_error("entity", _shown(entity), "must be the name of the entity column", error=TypeError)

    table, index, pandas_frame = _as_table(frame, pa)
    rows = _Rows(None if index is None or _is_range(index) else index)
    available = list(table.column_names)
    if numeric is None and categorical is None and ntv is None:
        numeric, categorical, ntv = _infer_kinds(table, [c for c in available if c not in named.values()], pa)
    for kind, columns in (("numeric", numeric), ("categorical", categorical), ("ntv", ntv)):
        if isinstance(columns, str):
            raise input_error(kind, columns, "must be a list of column names, not one string", error=TypeError)
    kinds = {"numeric": list(numeric or []), "categorical": list(categorical or []), "ntv": list(ntv or [])}
    _check_columns(named, kinds, available)
    if pandas_frame is not None:
        _check_object_columns(pandas_frame, [*named.values(), *kinds["categorical"]], rows)

    n = table.num_rows
    codes, keys = _entity_codes(table.column(entity), entity, rows, pa, pc)
    label_arr = _number_source("label", label, table, pandas_frame, index, n, rows, pa, pc)
    if dtype is None:
        dtype = np.float32 if label_arr.dtype == np.float32 else np.float64
    weight_arr = None if weight is None else _number_source("weight", weight, table, pandas_frame, index, n, rows,
                                                            pa, pc)
    offset_arr = None if offset is None else _number_source("offset", offset, table, pandas_frame, index, n, rows,
                                                            pa, pc)
    if weight_arr is not None:
        bad = np.flatnonzero(weight_arr < 0)
        if bad.size:
            raise input_error(_role_name("weight", weight), float(weight_arr[bad[0]]), "must be non-negative",
                              entity=keys[codes[bad[0]]], where=rows(int(bad[0])))

    parts: list[_Part] = []  # (counts (n,), rows of entries, feature ids, values) per source, in order
    if kinds["numeric"]:
        parts.append(_numeric_part(table, kinds["numeric"], index_map, unknown, rows, pa, pc))
    for column in kinds["categorical"]:
        parts.append(_categorical_part(table.column(column), column, index_map, unknown, null_category, rows, pa, pc))
    for column in kinds["ntv"]:
        parts.append(_ntv_part(table.column(column), column, index_map, unknown, rows, pa, pc))
    indptr, fids, vals = _assemble(parts, n, dtype)
    dataset = Dataset.from_arrays(codes, label_arr, indptr=indptr, feature_ids=fids, values=vals, weight=weight_arr,
                                  offset=offset_arr, num_features=len(index_map),
                                  intercept_id=index_map.intercept_index, allow_intercept_entries=bool(kinds["ntv"]),
                                  dtype=dtype)
    if keys.dtype.kind not in "iu":
        dataset = replace(dataset, entity_keys=keys[dataset.entity_keys])
    return dataset, index_map


def dataset_from_parquet(path: str | os.PathLike, **kwargs: Any) -> tuple[Dataset, IndexMap]:
    """:func:`dataset_from_frame` of a Parquet file (only the columns it names are read, unless the feature
    kinds are inferred)."""
    _pyarrow()
    import pyarrow.parquet as pq

    names = [kwargs.get(k) for k in ("entity", "label", "weight", "offset")]
    features = [c for k in ("numeric", "categorical", "ntv") for c in (kwargs.get(k) or [])]
    inferred = all(kwargs.get(k) is None for k in ("numeric", "categorical", "ntv"))
    columns = None if inferred else list(dict.fromkeys([c for c in names if isinstance(c, str)] + features))
    if columns is not None:
        schema = pq.read_schema(path)
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise input_error("columns", missing[0], f"is not a column of {os.fspath(path)} (columns: "
                              f"{_listed(schema.names)})")
    return dataset_from_frame(pq.read_table(path, columns=columns), **kwargs)


def dataset_from_ntv_jsonl(path_or_file: Any, index_map: IndexMap | None = None, *, entity_field: str = "uid",
                           unknown: str = "grow", dtype: Any = np.float64) -> tuple[Dataset, IndexMap]:
    """``Dataset.from_records(read_ntv_jsonl(path), index_map)`` without the Python objects: the file is parsed
    by ``pyarrow.json`` into columns and the features indexed column-wise. Input that the columnar reader does
    not take (see :func:`read_ntv_jsonl`) goes through the records, with the same errors. ``index_map`` (new
    when ``None``) is extended with the file's features (``unknown`` as in :func:`dataset_from_frame`)."""
    from lljax.data.ntv import read_ntv_jsonl

    pa, pc = _pyarrow()
    index_map = IndexMap() if index_map is None else index_map
    if isinstance(path_or_file, (str, bytes, os.PathLike)):
        with open(path_or_file, "rb") as f:
            data = f.read()
        parsed = ntv_arrow_table(data, entity_field)
    else:
        parsed = None
    if parsed is None:
        records = read_ntv_jsonl(path_or_file, entity_field)
        if unknown == "grow":
            index_map.batch_push(nt for _, record in records for nt in record.name_terms)
        elif unknown == "ignore":
            from lljax.data.ntv import TrainingRecord

            records = [(key, TrainingRecord(r.raw_label, r.weight, r.offset,
                                            [f for f in r.features if f.name_term in index_map], r.context))
                       for key, r in records]
        return Dataset.from_records(records, index_map, dtype=dtype), index_map
    table, _ = parsed
    columns = {"entity": table.column(entity_field), "label": table.column("label"),
               "features": table.column("features")}
    for name, default in (("weight", 1.0), ("offset", 0.0)):
        if name in table.column_names and table.column(name).type != pa.null():
            columns[name] = pc.fill_null(pc.cast(table.column(name), pa.float64()), default)
    if pa.types.is_null(table.column("features").type.value_type):
        item = pa.struct([("name", pa.string()), ("term", pa.string()), ("value", pa.float64())])
        columns["features"] = pc.cast(table.column("features"), pa.list_(item))
    return dataset_from_frame(pa.table(columns), entity="entity", label="label",
                              weight="weight" if "weight" in columns else None,
                              offset="offset" if "offset" in columns else None, ntv=["features"],
                              index_map=index_map, unknown=unknown, dtype=dtype)


# -- helpers: the table and its columns ---------------------------------------------------------------------


def _as_table(frame: Any, pa: Any) -> tuple[Any, Any, Any]:
    """``(arrow table, pandas index or None, pandas frame or None)``."""
    if isinstance(frame, pa.Table):
        return frame, None, None
    if isinstance(frame, pa.RecordBatch):
        return pa.Table.from_batches([frame]), None, None
    pd = _pandas()
    if isinstance(frame, pd.DataFrame):
        duplicated = frame.columns[frame.columns.duplicated()]
        if len(duplicated):
            raise input_error("columns", duplicated[0], "appears more than once among the DataFrame's columns")
        return _PandasTable(frame), frame.index, frame
    raise input_error("frame", type(frame).__name__, "must be a pandas DataFrame or a pyarrow Table / RecordBatch",
                      error=TypeError)


def _is_range(index: Any) -> bool:
    pd = _pandas()
    return isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1


def _listed(names: Sequence[Any]) -> str:
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:20])
    return shown + (f", ... ({len(names)} in all)" if len(names) > 20 else "")


def _check_columns(named: dict[str, str], kinds: dict[str, list], available: list) -> None:
    """Every column exists and has one role."""
    role_of: dict[Any, str] = {}
    for role, column in [*named.items(), *((kind, c) for kind, cols in kinds.items() for c in cols)]:
        if column not in available:
            raise input_error(role, column, f"is not a column of the frame (columns: {_listed(available)})")
        if column in role_of:
            raise input_error(role, column, f"is already the {role_of[column]} column: a column has one role")
        role_of[column] = role


def _column(table: Any, frame: Any, name: Any) -> Any:
    """The Arrow column ``name`` of the table, converting a pandas column on demand."""
    if frame is None:
        return table.column(name)
    pa, _ = _pyarrow()
    series = frame[name]
    try:
        return pa.chunked_array([pa.Array.from_pandas(series)])
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
        raise input_error(str(name), f"<column of dtype {series.dtype}>", f"cannot be read as one Arrow type ({exc})",
                          error=TypeError) from None


class _PandasTable:
    """A pandas DataFrame seen through the few Arrow-table methods used here, column by column."""

    def __init__(self, frame: Any):
        self.frame = frame
        self.column_names = list(frame.columns)
        self.num_rows = len(frame)
        self._cache: dict[Any, Any] = {}

    def column(self, name: Any) -> Any:
        if name not in self._cache:
            self._cache[name] = _column(None, self.frame, name)
        return self._cache[name]

    @property
    def schema(self) -> Any:
        pa, _ = _pyarrow()
        return pa.schema([(str(c), self.column(c).type) for c in self.column_names])


def _check_object_columns(frame: Any, columns: Sequence[Any], rows: _Rows) -> None:
    """``TypeError`` naming the column and the first value of another type, for a pandas object column whose
    values are not of one type (e.g. ints and strings: Arrow, and lljax, need one)."""
    pd = _pandas()
    for column in dict.fromkeys(columns):
        series = frame[column]
        if series.dtype != object:
            continue
        kind = pd.api.types.infer_dtype(series, skipna=True)
        if kind in ("mixed", "mixed-integer"):
            values = series.to_numpy()
            valid = ~pd.isna(values)
            first = values[np.argmax(valid)]
            for i in np.flatnonzero(valid).tolist():
                if type(values[i]) is not type(first):
                    raise input_error(str(column), values[i], f"has a different type ({type(values[i]).__name__}) "
                                      f"from the column's first value {first!r} ({type(first).__name__}): a column "
                                      "holds one type", where=rows(i), error=TypeError)


def _infer_kinds(table: Any, columns: list, pa: Any) -> tuple[list, list, list]:
    numeric, categorical, ntv = [], [], []
    for name in columns:
        t = table.column(name).type
        if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t):
            numeric.append(name)
        elif _is_text(t, pa) or pa.types.is_dictionary(t):
            categorical.append(name)
        elif _is_list(t, pa) and (pa.types.is_struct(t.value_type) or pa.types.is_null(t.value_type)):
            ntv.append(name)
        else:
            raise input_error(str(name), f"<column of type {t}>", "is not a numeric, categorical or NTV (list of "
                              "struct) column: name the feature columns (numeric=, categorical=, ntv=)",
                              error=TypeError)
    return numeric, categorical, ntv


def _is_text(t: Any, pa: Any) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or getattr(pa.types, "is_string_view",
                                                                            lambda _: False)(t)


def _is_list(t: Any, pa: Any) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def _combined(column: Any, pa: Any) -> Any:
    if isinstance(column, pa.ChunkedArray):
        if pa.types.is_dictionary(column.type):
            column = column.unify_dictionaries()
        return column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    return column


def _first_null(column: Any) -> int:
    return int(np.argmax(column.is_null().to_numpy(zero_copy_only=False)))


def _entity_codes(column: Any, name: str, rows: _Rows, pa: Any, pc: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(codes (n,), keys)``: int keys as int64 (codes are the keys themselves), or string keys sorted with
    each row's code into them."""
    column = _combined(column, pa)
    if column.null_count:
        raise input_error(name, None, "is null: every row needs an entity", where=rows(_first_null(column)))
    t = column.type
    if pa.types.is_dictionary(t):
        column = column.dictionary_decode()
        t = column.type
    if pa.types.is_integer(t):
        values = column.to_numpy()
        if t == pa.uint64() and values.size and values.max() >= 2**63:
            i = int(np.argmax(values >= 2**63))
            raise input_error(name, int(values[i]), "is outside the int64 range of entity keys", where=rows(i))
        return values.astype(np.int64, copy=False), np.zeros(0, np.int64)
    if not _is_text(t, pa):
        raise input_error(name, column[0].as_py() if len(column) else f"<column of type {t}>",
                          f"is not an integer or a string: entity keys are integers or strings (column type {t})",
                          where=rows(0), error=TypeError)
    encoded = pc.dictionary_encode(column)
    keys, rank = encode_entity_keys(np.array(encoded.dictionary.to_pylist() + [None], dtype=object)[:-1])
    return rank[encoded.indices.to_numpy(zero_copy_only=False)], keys


def _role_name(role: str, given: Any) -> str:
    return given if isinstance(given, str) else role


def _shown(value: Any) -> Any:
    text = repr(value)
    return value if len(text) <= 60 else text[:57] + "..."


def _number_source(role: str, given: Any, table: Any, frame: Any, index: Any, n: int, rows: _Rows, pa: Any,
                   pc: Any) -> np.ndarray:
    """The label / weight / offset as a float array: a column by name, or values given as an array or Series."""
    if isinstance(given, str):
        return _numbers(table.column(given), given, rows, pa, pc)
    pd = _pandas() if frame is not None else None
    if pd is not None and isinstance(given, pd.Series) and not given.index.equals(index):
        given = _aligned(given, role, index, pd)
    values = np.asarray(given)
    if values.ndim != 1 or len(values) != n:
        raise input_error(role, f"<array of shape {values.shape}>", f"must have one value per row ({n})")
    if values.dtype.kind not in "fiub":
        raise input_error(role, f"<array of dtype {values.dtype}>", "must hold numbers", error=TypeError)
    values = values.astype(np.float64 if values.dtype != np.float32 else np.float32, copy=False)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise input_error(role, float(values[bad[0]]), "must be finite", where=rows(int(bad[0])))
    return values


def _aligned(series: Any, role: str, index: Any, pd: Any) -> Any:
    """``series`` reindexed on the DataFrame's ``index`` (pandas alignment), with clear errors where the
    alignment is ambiguous (an index that is not unique) or incomplete."""
    for what, idx in (("the DataFrame's index", index), (f"the index of {role}", series.index)):
        if not idx.is_unique:
            dup = idx[idx.duplicated()][0]
            dup = dup.item() if isinstance(dup, np.generic) else dup
            raise input_error(role, f"<Series, index value {dup!r} repeated>",
                              f"cannot be aligned on the rows: {what} has the value {dup!r} more than once. Give "
                              f"{role} as a column of the frame or as a NumPy array (by position), or make the "
                              "index unique (frame.reset_index())")
    missing = index.difference(series.index)
    if len(missing):
        first = missing[0].item() if isinstance(missing[0], np.generic) else missing[0]
        raise input_error(role, f"<Series without index value {first!r}>",
                          "has no value for a row of the DataFrame (aligned on the index)")
    return series.reindex(index)


def _numbers(column: Any, name: Any, rows: Callable[[int], str], pa: Any, pc: Any) -> np.ndarray:
    """A numeric column as float64 (float32 kept): ``TypeError`` for other types, ``ValueError`` naming the
    row of a null or non-finite value."""
    column = _combined(column, pa)
    t = column.type
    if pa.types.is_dictionary(t):
        column = column.dictionary_decode()
        t = column.type
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t)):
        value = next((v for v in column.to_pylist() if v is not None), None) if len(column) < 50 else None
        raise input_error(str(name), value if value is not None else f"<column of type {t}>",
                          f"is not a number (column type {t}): numeric columns hold integers, floats or booleans"
                          + ("; name string columns as categorical" if _is_text(t, pa) else ""), error=TypeError)
    if column.null_count:
        raise input_error(str(name), None, "is null (missing): numeric columns must have a value in every row",
                          where=rows(_first_null(column)))
    if not pa.types.is_floating(t) or t == pa.float16():
        column = pc.cast(column, pa.float64())
    values = column.to_numpy(zero_copy_only=False)
    if values.dtype not in (np.float32, np.float64):
        values = values.astype(np.float64)
    if not np.isfinite(values.sum()):
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise input_error(str(name), float(values[bad[0]]), "must be finite", where=rows(int(bad[0])))
    return values


# -- helpers: features ---------------------------------------------------------------------------------------


def _feature_ids(index_map: IndexMap, name_terms: list[tuple[str, str]], unknown: str, column: Any,
                 intercept_ok: bool) -> np.ndarray:
    """Global id of each ``(name, term)``, growing the map (``unknown="grow"``), ``-1`` for dropped ones."""
    intercept = index_map.intercept_nt
    if not intercept_ok and intercept in name_terms:
        raise input_error(str(column), intercept[1] if intercept[0] == str(column) else intercept,
                          f"would be the feature {intercept!r}, the intercept's own (name, term): the intercept is "
                          "implicit, never one of your columns (rename the column or the category)")
    if unknown == "grow":
        return np.fromiter((index_map.push(nt) for nt in name_terms), np.int64, len(name_terms))
    ids = np.fromiter(((nt in index_map and index_map.get_index(nt)) if nt in index_map else -1 for nt in name_terms),
                      np.int64, len(name_terms))
    if unknown == "error" and (ids < 0).any():
        nt = name_terms[int(np.argmax(ids < 0))]
        raise input_error(str(column), nt[1] if nt[1] else nt[0], f"is the feature {nt!r}, which is not in the index "
                          "map (unknown='error'; 'grow' adds it, 'ignore' drops it)")
    return ids


def _numeric_part(table: Any, columns: list, index_map: IndexMap, unknown: str, rows: _Rows, pa: Any,
                  pc: Any) -> _Part:
    ids = _feature_ids(index_map, [(str(c), "") for c in columns], unknown, columns[0], False)
    keep = [j for j in range(len(columns)) if ids[j] >= 0]
    n = table.num_rows
    if not keep:
        return np.zeros(n, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    X = np.empty((n, len(keep)), np.float64)
    for k, j in enumerate(keep):
        X[:, k] = _numbers(table.column(columns[j]), columns[j], rows, pa, pc)
    nonzero = X != 0
    entry_rows, cols = np.nonzero(nonzero)
    return nonzero.sum(axis=1), entry_rows, ids[keep][cols], X[entry_rows, cols]


def _categorical_part(column: Any, name: Any, index_map: IndexMap, unknown: str, null_category: str | None,
                      rows: _Rows, pa: Any, pc: Any) -> _Part:
    column = _combined(column, pa)
    t = column.type
    declared: list = []
    if pa.types.is_dictionary(t):
        dictionary = column.dictionary
        if not _is_text(dictionary.type, pa):
            dictionary = pc.cast(dictionary, pa.string())
        declared = [v for v in dictionary.to_pylist() if v is not None]
        column = column.dictionary_decode()
        t = column.type
    if not _is_text(t, pa):
        if not (pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_floating(t)):
            raise input_error(str(name), f"<column of type {t}>", "cannot be a categorical column (strings, "
                              "categories, dictionaries, integers or booleans)", error=TypeError)
        if not declared:  # numbers: categories in numeric order
            distinct = pc.unique(column).drop_null()
            declared = pc.cast(pc.take(distinct, pc.sort_indices(distinct)), pa.string()).to_pylist()
        column = pc.cast(column, pa.string())
    if column.null_count:
        if null_category is None:
            raise input_error(str(name), None, "is null (missing) in a categorical column: fill it, or pass "
                              "null_category='<null>' to make nulls a category", where=rows(_first_null(column)))
        column = pc.fill_null(column, null_category)
    encoded = pc.dictionary_encode(column)
    seen = encoded.dictionary.to_pylist()
    order = declared + sorted(set(seen) - set(declared))
    ids_of = dict(zip(order, _feature_ids(index_map, [(str(name), v) for v in order], unknown, name, False).tolist()))
    fids = np.array([ids_of[v] for v in seen], np.int64)[encoded.indices.to_numpy(zero_copy_only=False)]
    n = len(column)
    keep = fids >= 0
    if keep.all():
        return np.ones(n, np.int64), np.arange(n, dtype=np.int64), fids, np.ones(n)
    entry_rows = np.flatnonzero(keep)
    return keep.astype(np.int64), entry_rows, fids[entry_rows], np.ones(len(entry_rows))


def _ntv_part(column: Any, name: Any, index_map: IndexMap, unknown: str, rows: _Rows, pa: Any,
              pc: Any) -> _Part:
    column = _combined(column, pa)
    t = column.type
    item = t.value_type if _is_list(t, pa) else None
    if item is not None and pa.types.is_null(item) and column.null_count == 0 and len(column.values) == 0:
        n = len(column)  # every list empty (pandas gives such a column no struct type)
        return np.zeros(n, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    if item is None or not pa.types.is_struct(item) or any(item.get_field_index(f) < 0
                                                           for f in ("name", "term", "value")):
        raise input_error(str(name), f"<column of type {t}>", "is not an NTV column: a list of structs with "
                          "fields name (string), term (string) and value (number)", error=TypeError)
    if column.null_count:
        raise input_error(str(name), None, "is null: give an empty list for a row without features",
                          where=rows(_first_null(column)))
    offsets = column.offsets.to_numpy().astype(np.int64)
    flat = column.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    offsets = offsets - offsets[0]
    counts = np.diff(offsets)
    entry_rows = np.repeat(np.arange(len(column), dtype=np.int64), counts)

    def where(k: int) -> str:
        return f"{rows(int(entry_rows[k]))}, element {k - int(offsets[entry_rows[k]])}"

    if flat.null_count:
        raise input_error(str(name), None, "is a null feature", where=where(_first_null(flat)))
    parts = {}
    for field in ("name", "term"):
        values = flat.field(field)
        if not _is_text(values.type, pa):
            raise input_error(f"{name}.{field}", f"<field of type {values.type}>", "must be strings", error=TypeError)
        if values.null_count:
            raise input_error(f"{name}.{field}", None, "is null", where=where(_first_null(values)))
        parts[field] = pc.dictionary_encode(values)
    value = _numbers(flat.field("value"), f"{name}.value", where, pa, pc) if len(flat) else np.zeros(0)
    names = parts["name"].dictionary.to_pylist()
    terms = parts["term"].dictionary.to_pylist()
    pair = (parts["name"].indices.to_numpy(zero_copy_only=False).astype(np.int64) * max(len(terms), 1)
            + parts["term"].indices.to_numpy(zero_copy_only=False))
    distinct, first, inverse = np.unique(pair, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # index new features in order of first appearance, as batch_push
    width = max(len(terms), 1)
    name_terms = [(names[p // width], terms[p % width]) for p in distinct[order].tolist()]
    ids = np.empty(len(distinct), np.int64)
    ids[order] = _feature_ids(index_map, name_terms, unknown, name, True)
    fids = ids[inverse.reshape(-1)]
    keep = fids >= 0
    if not keep.all():
        counts = np.bincount(entry_rows[keep], minlength=len(column))
        entry_rows, fids, value = entry_rows[keep], fids[keep], value[keep]
    return counts, entry_rows, fids, value


def _assemble(parts: list[_Part], n: int, dtype: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR ``(indptr, feature_ids, values)`` of the parts' entries, each row's entries in part order: every
    entry is placed at ``indptr[row] + (entries of earlier parts in its row) + (its rank in its part's row)``,
    no sort."""
    counts = np.zeros(n, np.int64)
    for part_counts, *_ in parts:
        counts += part_counts
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    total = int(indptr[-1])
    ids_dtype = np.int32 if total and max((int(p[2].max()) for p in parts if len(p[2])), default=0) < 2**31 - 1 \
        else np.int64
    fids = np.empty(total, ids_dtype)
    vals = np.empty(total, dtype)
    before = indptr[:-1].copy()  # where the next part's entries of each row start
    for part_counts, entry_rows, part_fids, part_vals in parts:
        if len(entry_rows):
            part_start = np.cumsum(part_counts) - part_counts  # first entry of each row within the part
            pos = before[entry_rows] + (np.arange(len(entry_rows)) - part_start[entry_rows])
            fids[pos] = part_fids
            vals[pos] = part_vals
        before += part_counts
    return indptr, fids, vals


# ---------------------------------------------------------------------------------------------------------
# Out
# ---------------------------------------------------------------------------------------------------------


def coefficients_frame(model: Any, index_map: IndexMap | None = None) -> Any:
    """Every stored (entity, feature) of a :class:`RandomEffectModel` as a pandas DataFrame: columns ``entity``,
    ``feature_id``, ``name``, ``term`` (from ``index_map``, default the model's; absent without one),
    ``mean`` and ``variance`` (``1 / diag(P)``, absent for ``hessian="none"``). Built on ``model.to_table()``."""
    pd = _pandas()
    table = dict(model.to_table())
    index_map = index_map if index_map is not None else model.index_map
    if index_map is not None:
        ids = np.asarray(table["feature_id"], np.int64)
        if ids.size and ids.max() >= len(index_map):
            raise input_error("index_map", f"<IndexMap of {len(index_map)} features>",
                              f"does not name feature id {int(ids.max())} of the model")
        name_terms = index_map.name_terms
        table["name"] = np.array([nt[0] for nt in name_terms] + [""], dtype=object)[:-1][ids]
        table["term"] = np.array([nt[1] for nt in name_terms] + [""], dtype=object)[:-1][ids]
    order = [c for c in ("entity", "feature_id", "name", "term", "mean", "variance") if c in table]
    return pd.DataFrame({c: table[c] for c in order})


def report_frame(report: Any) -> Any:
    """An :class:`UpdateReport` as a pandas DataFrame, one row per entity: ``entity``, ``status`` (a
    categorical of the status names, in :class:`Status` order), ``iterations``, ``loss``, ``grad_norm``,
    ``rows``, ``features``."""
    pd = _pandas()
    from lljax.solve.base import Status

    names = [s.name.lower() for s in Status]
    status = pd.Categorical.from_codes(np.asarray(report.status, np.int64), categories=names)
    return pd.DataFrame({"entity": report.entity_keys, "status": status, "iterations": report.iterations,
                         "loss": report.loss, "grad_norm": report.grad_norm, "rows": report.rows,
                         "features": report.features})


def stream_frame(stream: Any) -> Any:
    """A :class:`StreamReport` as a pandas DataFrame, one row per window: ``window``, ``examples``,
    ``entities``, ``new_entities``, ``score_seconds``, ``update_seconds``, one column per metric, ``blocks``
    and one column per status (entities of the window's update). ``frame.attrs["overall"]`` holds the pooled
    metrics."""
    pd = _pandas()
    records = []
    for w in stream.windows:
        row = {"window": w.index, "examples": w.examples, "entities": w.entities, "new_entities": w.new_entities,
               "score_seconds": w.score_seconds, "update_seconds": w.update_seconds}
        row.update({m: w.metrics.get(m, np.nan) for m in stream.metric_names})
        row["blocks"] = w.report.blocks
        row.update(dict(w.report.status_counts))
        records.append(row)
    frame = pd.DataFrame.from_records(records)
    frame.attrs["overall"] = dict(stream.overall)
    return frame
