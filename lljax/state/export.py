"""Exports and imports of a model's coefficients: a columnar table (NumPy / Parquet) and one
entity in Lambda Learner's name-term-value (NTV) form.

Both carry means and *variances* in Lambda Learner's convention: ``variance = 1 / diag(P)``
for the stored posterior precision ``P``. For a diagonal precision that is the exact marginal
variance and the round trip is exact; for a full precision the off-diagonal terms are dropped
(``1 / P_ii`` is the variance of feature ``i`` given the others), and importing gives a
diagonal precision ``1 / variance``. Use :meth:`RandomEffectModel.save` to keep everything.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from lljax.data.arrays import packed_diagonal
from lljax.data.dataset import encode_entity_keys
from lljax.data.errors import check_finite, input_error
from lljax.data.ntv import Feature, IndexMap
from lljax.state.store import FlatEntities

__all__ = ["model_to_table", "table_to_flat", "write_parquet", "read_parquet", "entity_to_ntv", "ntv_to_flat"]


def model_to_table(model: Any) -> dict[str, np.ndarray]:
    """One row per stored (entity, feature): columns ``entity``, ``feature_id``, ``mean`` and,
    when the model keeps a precision, ``variance``; plus ``name`` and ``term`` when the model
    has an index map. Entities in insertion order, features sorted by id."""
    store = model.store
    if store is None:
        flat = FlatEntities(np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0),
                            None if model.hessian == "none" else np.zeros(0))
    else:
        flat = store.to_flat()
    table = {"entity": np.repeat(flat.keys, flat.sizes), "feature_id": flat.feature_ids, "mean": flat.means}
    if flat.precision is not None:
        full = store is not None and store.precision == "full"
        table["variance"] = 1.0 / _diagonals(flat.precision, flat.sizes, full)
    if model.index_map is not None:  # one lookup per vocabulary entry, then a vectorized take per pair
        name_terms = model.index_map.name_terms
        table["name"] = np.array([nt[0] for nt in name_terms], dtype=str)[flat.feature_ids]
        table["term"] = np.array([nt[1] for nt in name_terms], dtype=str)[flat.feature_ids]
    return table


def _diagonals(precision: np.ndarray, sizes: np.ndarray, full: bool) -> np.ndarray:
    """``(P,)`` diagonal of each entity's precision (a :class:`FlatEntities`' ``precision``, entities of
    ``sizes`` features), in pair order."""
    if not full:
        return precision
    return precision[packed_diagonal(sizes)]


def table_to_flat(table: Mapping[str, Any], *, precision: str | None, l2: float, dtype: np.dtype) -> FlatEntities:
    """Validated :class:`FlatEntities` from a table with ``entity``, ``feature_id``, ``mean`` and
    optional ``variance`` columns (other columns are ignored).

    Precision (``precision`` = the store's kind): ``1 / variance``, or ``l2`` where the column is
    absent; a diagonal matrix for ``"full"``. Raises ``ValueError``/``TypeError`` naming the
    entity, the column and the value for non-finite means, variances that are not finite and
    > 0, negative feature ids, duplicate (entity, feature) rows and columns of unequal length.
    """
    for column in ("entity", "feature_id", "mean"):
        if column not in table:
            raise input_error("table", sorted(table), f"has no '{column}' column")
    entity = table["entity"]
    n = len(entity)
    columns = {"feature_id": np.asarray(table["feature_id"]), "mean": np.asarray(table["mean"], dtype)}
    if "variance" in table:
        columns["variance"] = np.asarray(table["variance"], dtype)
    for name, values in columns.items():
        if values.shape != (n,):
            raise input_error(name, f"<column of shape {values.shape}>", f"must have one value per row ({n})")
    keys, codes = encode_entity_keys(entity)  # the host edge's key checks: one type, int64 range, no NUL
    entity = keys[codes]
    fids = columns["feature_id"]
    if fids.dtype.kind not in "iu":
        raise input_error("feature_id", f"<column of dtype {fids.dtype}>", "must be integers", error=TypeError)
    fids = fids.astype(np.int64)
    if n and fids.min() < 0:
        i = int(np.argmin(fids))
        raise input_error("feature_id", int(fids[i]), "must be >= 0", entity=entity[i])
    check_finite("mean", columns["mean"], entity, row_word="row")
    if "variance" in columns:
        variance = columns["variance"]
        bad = ~(np.isfinite(variance) & (variance > 0))
        if bad.any():
            i = int(np.argmax(bad))
            raise input_error("variance", float(variance[i]), "must be finite and > 0", entity=entity[i],
                              where=f"row {i}, feature {int(fids[i])}")
    order = np.lexsort((fids, codes))
    codes, fids = codes[order], fids[order]
    dup = np.flatnonzero((np.diff(codes) == 0) & (np.diff(fids) == 0))
    if dup.size:
        raise input_error("feature_id", int(fids[dup[0]]), "appears twice for one entity", entity=keys[codes[dup[0]]])
    sizes = np.bincount(codes, minlength=len(keys))
    indptr = np.zeros(len(keys) + 1, np.int64)
    np.cumsum(sizes, out=indptr[1:])
    means = columns["mean"][order]
    diag = 1.0 / columns["variance"][order] if "variance" in columns else np.full(n, l2, dtype)
    return FlatEntities(keys, indptr, fids, means, _precision_from_diagonals(diag, sizes, precision, dtype))


def _precision_from_diagonals(diag: np.ndarray, sizes: np.ndarray, precision: str | None,
                              dtype: npt.DTypeLike) -> np.ndarray | None:
    if precision is None:
        return None
    if precision == "diagonal":
        return diag.astype(dtype)
    out = np.zeros(int((sizes**2).sum()), dtype)
    out[packed_diagonal(sizes)] = diag
    return out


PARQUET_METADATA_KEY = b"lljax"


def write_parquet(table: Mapping[str, np.ndarray], path: str, metadata: Mapping[str, Any] | None = None) -> None:
    """Write a column table to Parquet (needs ``pyarrow``: ``pip install "lljax[io]"``), atomically.

    ``metadata``: JSON-able, kept in the file's schema metadata under ``b"lljax"`` (the model's
    hyper-parameters and index map: :func:`read_parquet` gives it back)."""
    pa, pq = _pyarrow()
    from lljax.state.persist import atomic_write

    arrow_table = pa.table({name: pa.array(values) for name, values in table.items()})
    if metadata is not None:
        arrow_table = arrow_table.replace_schema_metadata(
            {PARQUET_METADATA_KEY: json.dumps(metadata, allow_nan=False).encode("utf-8")})
    atomic_write(path, lambda f: pq.write_table(arrow_table, f))


def read_parquet(path: str, with_metadata: bool = False) -> Any:
    """Read a Parquet column table into NumPy arrays (needs ``pyarrow``); with ``with_metadata``, also
    the ``metadata`` :func:`write_parquet` kept (``None`` if none): ``(table, metadata)``. A metadata
    entry that is not valid JSON raises ``ValueError`` naming the file."""
    _, pq = _pyarrow()
    arrow_table = pq.read_table(path)
    table = {name: arrow_table.column(name).to_numpy() for name in arrow_table.column_names}
    if not with_metadata:
        return table
    raw = (arrow_table.schema.metadata or {}).get(PARQUET_METADATA_KEY)
    if raw is None:
        return table, None
    try:
        metadata = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise input_error("metadata", raw[:80], f"is not valid JSON ({exc})", where=path) from exc
    if not isinstance(metadata, dict):
        raise input_error("metadata", raw[:80], "must be a JSON object", where=path)
    return table, metadata


def _pyarrow() -> tuple[Any, Any]:
    """The modules ``pyarrow`` and ``pyarrow.parquet`` (untyped: ``Any``)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError('Parquet needs pyarrow: pip install "lljax[io]" (or pip install pyarrow)') from exc
    return pa, pq


def _index_map(model: Any, index_map: IndexMap | None) -> IndexMap:
    index_map = index_map if index_map is not None else model.index_map
    if index_map is None:
        raise input_error("index_map", None, "is needed for name-term form: pass one, or set model.index_map")
    return index_map


def entity_to_ntv(model: Any, entity: Any, index_map: IndexMap | None = None
                  ) -> tuple[list[Feature], list[Feature] | None]:
    """One entity's ``(means, variances)`` as lists of :class:`Feature` (name, term, value), as
    Lambda Learner keeps a model; ``variances`` is ``None`` for a model without precision."""
    index_map = _index_map(model, index_map)
    table = model_to_table_of(model, entity)
    means = [Feature(*index_map.get_nt(int(f)), float(v)) for f, v in zip(table["feature_id"], table["mean"])]
    if "variance" not in table:
        return means, None
    return means, [Feature(*index_map.get_nt(int(f)), float(v)) for f, v in zip(table["feature_id"], table["variance"])]


def model_to_table_of(model: Any, entity: Any) -> dict[str, np.ndarray]:
    """The :func:`model_to_table` rows of one entity."""
    coefficients = model.coefficients(entity)
    table = {"feature_id": coefficients.feature_ids, "mean": coefficients.mean}
    if coefficients.precision is not None:
        p = coefficients.precision
        table["variance"] = 1.0 / (np.diagonal(p) if p.ndim == 2 else p)
    return table


def ntv_to_flat(model: Any, entity: Any, means: Iterable[Feature], variances: Iterable[Feature] | None,
                index_map: IndexMap | None, precision: str | None, dtype: np.dtype) -> FlatEntities:
    """One entity's :class:`FlatEntities` from name-term means and variances.

    A feature with a variance but no mean gets mean 0; one with a mean but no variance gets
    precision ``l2``. Unknown (name, term) raise ``ValueError`` naming the entity.
    """
    index_map = _index_map(model, index_map)
    values: dict[int, list[float]] = {}

    def index_of(feature: Feature, field: str) -> int:
        try:
            return index_map.get_index(feature.name_term)
        except IndexError:
            raise input_error(field, feature.name_term, "is not in the index map", entity=entity) from None

    for feature in means:
        values.setdefault(index_of(feature, "means"), [0.0, np.nan])[0] = float(feature.value)
    for feature in variances or []:
        values.setdefault(index_of(feature, "variances"), [0.0, np.nan])[1] = float(feature.value)
    if not values:
        raise input_error("means", [], "and variances are empty: nothing to import", entity=entity)
    fids = np.array(sorted(values), np.int64)
    mean = np.array([values[f][0] for f in fids], dtype)
    variance = np.array([values[f][1] for f in fids], dtype)
    if variances is not None and np.isnan(variance).any():
        if model.l2 <= 0:
            missing = index_map.get_nt(int(fids[np.argmax(np.isnan(variance))]))
            raise input_error("variances", missing, "is missing and l2 = 0 gives no prior precision", entity=entity)
        variance = np.where(np.isnan(variance), 1.0 / model.l2, variance)
    keys = np.empty(len(fids), object)  # not a NumPy string array, which would drop a trailing NUL unseen
    keys[:] = [entity] * len(fids)
    table = {"entity": keys, "feature_id": fids, "mean": mean}
    if variances is not None:
        table["variance"] = variance
    return table_to_flat(table, precision=precision, l2=model.l2, dtype=dtype)
