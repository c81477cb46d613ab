"""Arrow <-> lljax, in the tasks: a partition's Arrow rows as one :class:`lljax.Dataset` (features as CSR
over global feature ids) and its state rows as :class:`lljax.state.store.FlatEntities`, and back to Arrow
state rows. Vectorized: list columns are read through their offsets, nothing loops in Python per row or
per entity.

The update's shuffle carries data rows (``KIND`` 0) and state rows (``KIND`` 1, their columns prefixed
with ``STATE_PREFIX``) in one DataFrame; :func:`split_union` takes a partition apart again."""

from __future__ import annotations

from typing import Any

import numpy as np

from lljax.data.dataset import Dataset
from lljax.spark.errors import column_error
from lljax.state.store import EntityStore, FlatEntities

__all__ = ["KIND", "STATE_PREFIX", "STATE_FIELDS", "to_numpy", "check_no_nulls", "features_csr",
           "dataset_from_arrow", "split_union", "flat_from_arrow", "state_to_arrow", "store_to_arrow",
           "collect_arrow"]


KIND = "_lljax_kind"  # union of data rows (0) and state rows (1) in one shuffle
STATE_PREFIX = "_lljax_s_"  # prefix of the state's columns in that union
STATE_FIELDS = ("feature_ids", "names", "terms", "means", "precision")


def _array(column: Any) -> Any:
    """An Arrow column as one contiguous ``Array`` (a ``ChunkedArray``'s chunks concatenated)."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        return column.combine_chunks()
    return column


def to_numpy(column: Any) -> np.ndarray:
    """An Arrow column (no nulls) as a NumPy array (zero-copy when it can be); strings as an object array of
    str (built by Arrow, not one Python call per value)."""
    return _array(column).to_numpy(zero_copy_only=False)


def check_no_nulls(table: Any, column: str, what: str, entity_col: str | None = None) -> None:
    col = table.column(column)
    if col.null_count:
        import pyarrow.compute as pc

        i = int(pc.index(pc.is_null(col), True).as_py())
        where = f"example {i}"
        if entity_col is not None and entity_col != column:
            where += f", entity {table.column(entity_col)[i].as_py()!r}"
        raise column_error(ValueError, column, None, f"is null: {what} must not be null", where)


def _float_column(table: Any, column: str | None, n: int, default: float, what: str, entity_col: str,
                  dtype: np.dtype) -> np.ndarray:
    if column is None:
        return np.full(n, default, dtype)
    check_no_nulls(table, column, what, entity_col)
    return to_numpy(table.column(column)).astype(dtype, copy=False)


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


def features_csr(table: Any, spec: dict, n: int, dtype: np.dtype,
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
            raise column_error(ValueError, col_name, None, "is null: every example needs a vector", f"example {i}")
        vtype = col.field("type").to_numpy(zero_copy_only=False)
        vsize = pc.fill_null(col.field("size"), -1).to_numpy(zero_copy_only=False).astype(np.int64)
        offsets, vals = _list_parts(col.field("values"))
        val_len = np.diff(offsets)
        size = np.where(vtype == 1, val_len, vsize)
        F = spec["num_columns"]
        if n and (size != F).any():
            i = int(np.argmax(size != F))
            raise column_error(ValueError, col_name, f"<vector of size {int(size[i])}>",
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
            check_no_nulls(table, c, "feature arrays", None)
        idx_off, idx = _list_parts(table.column(idx_name))
        val_off, vals = _list_parts(table.column(val_name))
        if not np.array_equal(idx_off, val_off):
            idx_len, val_len = np.diff(idx_off), np.diff(val_off)
            i = int(np.argmax(idx_len != val_len))
            raise column_error(ValueError, val_name, f"<{int(val_len[i])} values>",
                               f"differs from the {int(idx_len[i])} indices of column {idx_name!r}", f"example {i}")
        ids = idx.to_numpy(zero_copy_only=False)
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= F):
            k = int(np.argmax((ids < 0) | (ids >= F)))
            raise column_error(ValueError, idx_name, int(ids[k]), f"is outside [0, {F}) (num_columns)",
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
            raise column_error(ValueError, col_name, None, "holds a feature with a null name, term or value",
                               f"example {_row_of(offsets, k)}")
        keys = pc.binary_join_element_wise(names, terms, "\x00")
        ids = pc.index_in(keys, value_set=spec["keys"])
        if ids.null_count:
            k = int(pc.index(pc.is_null(ids), True).as_py())
            raise column_error(ValueError, col_name, (names[k].as_py(), terms[k].as_py()),
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
        present[:, j] = ~to_numpy(pc.is_null(col)).astype(bool)
        grid_vals[:, j] = to_numpy(pc.fill_null(pc.cast(col, pa.float64()), 0.0)).astype(dtype, copy=False)
        grid_ids[:, j] = fid
        j += 1
    for col_name, keys in spec["categorical"]:
        col = table.column(col_name)
        ids = pc.index_in(col, value_set=keys)
        valid = ~to_numpy(pc.is_null(col)).astype(bool)
        unknown = valid & to_numpy(pc.is_null(ids)).astype(bool)
        if unknown.any():
            i = int(np.argmax(unknown))
            raise column_error(ValueError, col_name, col[i].as_py(), "is not in the feature space (index map)",
                               f"example {i}")
        present[:, j] = valid
        grid_ids[:, j] = to_numpy(pc.fill_null(ids, 0)).astype(np.int64) + spec["categorical_base"][col_name]
        grid_vals[:, j] = 1
        j += 1
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(present.sum(axis=1), out=offsets[1:])
    keep = present.reshape(-1)
    return _csr(offsets, grid_ids.reshape(-1)[keep], grid_vals.reshape(-1)[keep])


def dataset_from_arrow(table: Any, spec: dict, offset_override: np.ndarray | None = None) -> Dataset:
    """One :class:`Dataset` of the examples in ``table`` (Arrow), checked."""
    dtype = np.dtype(spec["dtype"])
    entity_col = spec["entity"]
    n = table.num_rows
    check_no_nulls(table, entity_col, "entity keys", None)
    entity = to_numpy(table.column(entity_col))
    if spec["label"] is not None:
        label = _float_column(table, spec["label"], n, 0.0, "labels", entity_col, dtype)
    else:
        label = np.zeros(n, dtype)
    weight = _float_column(table, spec["weight"], n, 1.0, "weights", entity_col, dtype)
    offset = _float_column(table, spec["offset"], n, 0.0, "offsets", entity_col, dtype)
    if offset_override is not None:
        offset = offset_override.astype(dtype)
    indptr, fids, vals = features_csr(table, spec["features"], n, dtype, spec["num_features"])
    return Dataset.from_arrays(entity, label, indptr=indptr, feature_ids=fids, values=vals, weight=weight,
                               offset=offset, num_features=spec["num_features"], intercept_id=0,
                               allow_intercept_entries=spec["features"]["kind"] == "ntv", dtype=dtype)


def _is_sorted(column: Any) -> bool:
    """Whether an Arrow column (no nulls) is in ascending order (compared by Arrow, ints or strings)."""
    import pyarrow.compute as pc

    col = _array(column)
    n = len(col)
    return n < 2 or not pc.any(pc.less(col.slice(1), col.slice(0, n - 1))).as_py()


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
        return np.argsort(to_numpy(entity), kind="stable")  # NumPy's stable sort of ints: faster than Arrow's
    keys = [(entity_col, "ascending")] + ([(order_col, "ascending")] if order_col is not None else [])
    return pc.sort_indices(table.select([k for k, _ in keys]), sort_keys=keys).to_numpy()


def _empty_state(entity_type: str) -> Any:
    import pyarrow as pa

    key_type = pa.string() if entity_type == "string" else pa.int64()
    return pa.table({"entity": pa.array([], key_type), "feature_ids": pa.array([], pa.list_(pa.int64())),
                     "names": pa.array([], pa.list_(pa.string())), "terms": pa.array([], pa.list_(pa.string())),
                     "means": pa.array([], pa.list_(pa.float64())), "precision": pa.array([], pa.list_(pa.float64()))})


def split_union(table: Any, spec: dict, group: bool = False) -> tuple[Any, Any]:
    """The data rows and the state rows (renamed back) of a partition of the union. ``group``: the data rows
    grouped by entity (:func:`_entity_order`). The rows are copied only when they must be (a partition that
    holds both kinds, or data rows out of entity order), in one ``take``."""
    kind = to_numpy(table.column(KIND))
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
    if STATE_PREFIX + "means" not in table.column_names:  # no state given
        return data, _empty_state(spec["entity_type"])
    state = table.select([spec["entity"]] + [STATE_PREFIX + f for f in STATE_FIELDS])
    state = state.rename_columns(["entity"] + list(STATE_FIELDS))
    state = state.take(np.flatnonzero(is_state)) if n_state < len(state) else state
    return data, state


def flat_from_arrow(table: Any, precision: str | None, entity_col: str) -> FlatEntities:
    """State rows (Arrow: entity, feature_ids, means, precision) as :class:`FlatEntities`, checked. A full
    precision is stored as its upper triangle, row by row, and comes as that (``precision_form="upper"``, the
    store's own layout)."""
    keys = to_numpy(table.column(entity_col))
    indptr, fids = _list_parts(table.column("feature_ids"))
    moffsets, means = _list_parts(table.column("means"))
    fids = fids.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    means = means.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    if not np.array_equal(moffsets, indptr):
        sizes, msizes = np.diff(indptr), np.diff(moffsets)
        i = int(np.argmax(msizes != sizes))
        raise column_error(ValueError, "means", f"<{int(msizes[i])} means>",
                           f"differs from the {int(sizes[i])} feature ids of the entity", f"state, entity {keys[i]!r}")
    prec = None
    if precision is not None:
        poffsets, prec_arr = _list_parts(table.column("precision"))
        sizes = np.diff(indptr)
        psizes = np.diff(poffsets)
        expected = sizes * (sizes + 1) // 2 if precision == "full" else sizes
        if (psizes != expected).any():
            i = int(np.argmax(psizes != expected))
            what = "the upper triangle of a full" if precision == "full" else "a diagonal"
            raise column_error(ValueError, "precision", f"<{int(psizes[i])} entries>",
                               f"is not {what} precision of the entity's {int(sizes[i])} features",
                               f"state, entity {keys[i]!r}")
        prec = prec_arr.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    for name, arr in (("means", means), ("precision", prec)):
        if arr is not None and not np.isfinite(arr).all():
            k = int(np.argmax(~np.isfinite(arr)))
            raise column_error(ValueError, name, float(arr[k]), "is not finite", "state")
    return FlatEntities(keys, indptr, fids, means, prec, "upper")


def state_to_arrow(flat: FlatEntities, spec: dict, entity_name: str = "entity") -> Any:
    """:class:`FlatEntities` as Arrow state rows (entity, feature_ids, names, terms, means, precision; a full
    precision as its upper triangle, row by row: ``flat`` comes from ``EntityStore.to_flat(...,
    precision_form="upper")``)."""
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
        p_values = flat.precision.astype(np.float64, copy=False)
        if spec["precision"] == "full":
            if flat.precision_form != "upper":
                raise ValueError("state_to_arrow: a full precision goes out as its upper triangle: give "
                                 "EntityStore.to_flat(..., precision_form='upper')")
            p_off = flat.precision_indptr
        else:
            p_off = flat.indptr
        prec = pa.ListArray.from_arrays(pa.array(p_off.astype(np.int32)), pa.array(p_values))
    key_type = pa.string() if spec["entity_type"] == "string" else pa.int64()
    keys = pa.array(flat.keys if key_type == pa.string() else flat.keys.astype(np.int64, copy=False), key_type)
    return pa.table({entity_name: keys, "feature_ids": fid_list, "names": names, "terms": terms, "means": means,
                     "precision": prec})


def store_to_arrow(store: EntityStore | None, spec: dict) -> Any:
    """A task's entities as Arrow state rows (:func:`state_to_arrow`; a full precision as the store holds it,
    its upper triangle), or ``None`` when the store holds none."""
    if store is None or not len(store):
        return None
    return state_to_arrow(store.to_flat(precision_form="upper"), spec)


def collect_arrow(df: Any) -> Any:
    """A (small) DataFrame collected to the driver as an Arrow table."""
    return df.toArrow()

