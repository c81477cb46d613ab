"""Which columns hold what (:class:`Columns`), how the features are given (:class:`Features`), and the
driver-side checks of a DataFrame's columns, the feature space (index map) they span and the feature spec
that the tasks read them with."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lljax.data.ntv import IndexMap
from lljax.spark.errors import column_error

__all__ = ["INT_TYPES", "NUM_TYPES", "Features", "Columns", "column_types", "check_column", "check_columns",
           "build_index_map", "finish_feature_spec", "check_same_space", "input_frame"]


INT_TYPES = ("bigint", "int", "smallint", "tinyint")
NUM_TYPES = INT_TYPES + ("double", "float")


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
            raise column_error(ValueError, "num_columns", num_columns, "must be an int >= 0")
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


def column_types(df: Any) -> dict:
    return dict(df.dtypes)


def check_column(df: Any, name: str | None, allowed: tuple, what: str) -> str:
    types = column_types(df)
    if name not in types:
        raise column_error(ValueError, name, None, f"is missing: the DataFrame has no such column ({what}; columns: "
                           f"{sorted(types)})")
    t = types[name]
    if allowed and t not in allowed and not any(t.startswith(a) for a in allowed if a.endswith("(")):
        raise column_error(TypeError, name, t, f"has the wrong type for {what} (expected one of {list(allowed)})")
    return t


def check_columns(df: Any, columns: Columns) -> str:
    etype = check_column(df, columns.entity, INT_TYPES + ("string",), "the entity key")
    if columns.label is not None:
        check_column(df, columns.label, NUM_TYPES, "the label")
    for name, what in ((columns.weight, "the weight"), (columns.offset, "the offset")):
        if name is not None:
            check_column(df, name, NUM_TYPES, what)
    if columns.order is not None:
        check_column(df, columns.order, (), "the row order")
    feats = columns.features
    if feats.kind == "vector":
        t = check_column(df, feats.column, (), "a vector of features")
        if t != "vector":
            raise column_error(TypeError, feats.column, t, "has the wrong type for a vector of features (expected a "
                               "pyspark.ml.linalg vector column)")
    elif feats.kind == "arrays":
        check_column(df, feats.column, ("array<int>", "array<bigint>"), "feature indices")
        check_column(df, feats.numeric[0], ("array<double>", "array<float>"), "feature values")
    elif feats.kind == "ntv":
        t = check_column(df, feats.column, (), "name-term-value features")
        if not re.fullmatch(r"array<struct<name:string,term:string,value:(double|float)>>", t):
            raise column_error(TypeError, feats.column, t, "has the wrong type for name-term-value features (expected "
                               "array<struct<name:string,term:string,value:double>>)")
    elif feats.kind == "columns":
        for c in feats.numeric:
            check_column(df, c, NUM_TYPES + ("boolean",), "a numeric feature")
        for c in feats.categorical:
            check_column(df, c, (), "a categorical feature")
    elif feats.kind != "none":
        raise column_error(ValueError, "features", feats.kind, "is not one of vector, arrays, ntv, columns, none")
    return "string" if etype == "string" else "bigint"


def build_index_map(df: Any, feats: Features, base: IndexMap | None) -> tuple[IndexMap, dict]:
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
        raise column_error(ValueError, column, nt, "is not in the given index map") from None


def _copy_map(imap: IndexMap) -> IndexMap:
    return IndexMap.from_dict(imap.to_dict())


def finish_feature_spec(fspec: dict) -> dict:
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
                raise column_error(ValueError, c, terms[:3], "has categories whose ids are not contiguous in the index "
                                   "map; give the categories of one column one after the other")
        fspec["categorical"] = cats
        fspec["categorical_base"] = bases
    return fspec


def check_same_space(state_map: IndexMap, data_map: IndexMap, feats: Features, where: str | None) -> None:
    """``ValueError`` when the data's feature space is not the state's (nor extends it, new features last)."""
    a, b = state_map.name_terms, data_map.name_terms
    exact = feats.kind in ("vector", "arrays")
    if a == b or (not exact and b[: len(a)] == a):
        return
    for j in range(min(len(a), len(b))):
        if a[j] != b[j]:
            raise column_error(ValueError, "index_map", b[j], f"differs from the state's feature space: feature id "
                               f"{j} is {a[j]!r} in the state but {b[j]!r} in the data", where)
    raise column_error(ValueError, "index_map", f"<{len(b)} features>", f"differs from the state's {len(a)} features "
                       "(the data's feature space must be the state's)", where)


def input_frame(df: Any, columns: Columns) -> tuple[Any, list]:
    """The columns the tasks need, categoricals cast to strings (as the index map names them)."""
    from pyspark.sql import functions as F

    feats = columns.features
    cols = [columns.entity] + [c for c in (columns.label, columns.weight, columns.offset, columns.order)
                               if c is not None]
    exprs = [F.col(columns.entity).cast("bigint") if column_types(df)[columns.entity] in INT_TYPES
             else F.col(columns.entity)]
    exprs += [F.col(c) for c in cols[1:]]
    for c in feats.input_columns():
        if c in cols:
            continue
        cols.append(c)
        exprs.append(F.col(c).cast("string").alias(c) if c in feats.categorical else F.col(c))
    return df.select(*exprs), cols

