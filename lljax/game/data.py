"""The data of a GAME model: one table of examples with entity columns, feature sets and score columns.

A :class:`GameData` holds, for ``n`` examples:

- ``label``, ``weight``, ``offset``: ``(n,)`` floats (the base offset, e.g. a prior model's score);
- ``ids``: named entity columns, ``(n,)`` int or str keys each (``"user_id"``, ``"movie_id"``, ...),
  the keys of the random-effect coordinates;
- ``features``: named feature sets, each a :class:`FeatureSet` (CSR rows over its own columns,
  optionally with column names). A coordinate reads one feature set; the intercept is never one of
  the user's columns, the coordinates add it;
- ``scores``: named ``(n,)`` score columns, e.g. an externally trained fixed effect.

Everything a coordinate derives from the data (an :class:`lljax.Dataset` per random effect, a device
design matrix per fixed effect) is built once per ``GameData`` and cached on it; coordinate descent
then only swaps offsets.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from lljax.data.dataset import Dataset

__all__ = ["FeatureSet", "GameData", "GameInputError", "with_offset", "entity_codes"]


class GameInputError(ValueError):
    """Bad input to a GAME model; the message names the coordinate, the column and the value."""


def game_error(reason: str, *, coordinate: str | None = None, column: str | None = None, value: Any = "<unset>",
               where: str | None = None, error: type = GameInputError) -> Exception:
    """Build (not raise) an error ``"coordinate 'c', column 'x', example 3: value v <reason>"``."""
    parts = []
    if coordinate is not None:
        parts.append(f"coordinate {coordinate!r}")
    if column is not None:
        parts.append(f"column {column!r}")
    if where is not None:
        parts.append(where)
    head = ", ".join(parts)
    if isinstance(value, np.generic):
        value = value.item()
    text = reason if isinstance(value, str) and value == "<unset>" else f"value {value!r} {reason}"
    if error is TypeError:
        return TypeError(f"{head}: {text}" if head else text)
    return error(f"{head}: {text}" if head else text)


class FeatureSet(NamedTuple):
    """One feature set as CSR rows: ``indptr (n+1,)`` int64, ``indices (nnz,)`` int32/int64 column ids in
    ``[0, num_columns)``, ``values (nnz,)`` floats; ``names`` (``num_columns`` strings) or ``None``."""

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    num_columns: int
    names: tuple[str, ...] | None = None

    @property
    def num_rows(self) -> int:
        return int(self.indptr.shape[0]) - 1

    def take(self, rows: np.ndarray) -> FeatureSet:
        """The rows ``rows (m,)`` (int indices), in that order."""
        lengths = np.diff(self.indptr)[rows]
        indptr = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(lengths, out=indptr[1:])
        starts = self.indptr[:-1][rows]
        # positions of the kept entries: each row's range, concatenated
        pos = np.repeat(starts - indptr[:-1], lengths) + np.arange(int(indptr[-1]), dtype=np.int64)
        return FeatureSet(indptr, self.indices[pos], self.values[pos], self.num_columns, self.names)

    def to_dense(self) -> np.ndarray:
        """``(n, num_columns)`` dense matrix (duplicates summed)."""
        out = np.zeros((self.num_rows, self.num_columns), self.values.dtype)
        rows = np.repeat(np.arange(self.num_rows), np.diff(self.indptr))
        np.add.at(out, (rows, self.indices), self.values)
        return out


def _feature_set(name: str, spec: Any, n: int, dtype: np.dtype, names: Sequence[str] | None) -> FeatureSet:
    """A :class:`FeatureSet` from a dense ``(n, F)`` array, a SciPy sparse matrix, a ``FeatureSet`` or an
    ``(indptr, indices, values[, num_columns])`` tuple; checked (lengths, ids in range, finite values)."""
    where = f"feature set {name!r}"
    if isinstance(spec, FeatureSet):
        fs = spec
    elif hasattr(spec, "tocsr"):
        csr = spec.tocsr()
        fs = FeatureSet(np.asarray(csr.indptr, np.int64), np.asarray(csr.indices), np.asarray(csr.data),
                        int(csr.shape[1]))
        if csr.shape[0] != n:
            raise game_error(f"has {csr.shape[0]} rows, expected {n} (examples)", column=name)
    elif isinstance(spec, tuple) and len(spec) in (3, 4):
        indptr, indices, values = (np.asarray(a) for a in spec[:3])
        num = int(spec[3]) if len(spec) == 4 else (int(indices.max()) + 1 if indices.size else 0)
        fs = FeatureSet(indptr.astype(np.int64, copy=False), indices, values, num)
    else:
        X = np.asarray(spec)
        if X.ndim != 2:
            raise game_error(f"must be a 2-d (examples, columns) array, a SciPy sparse matrix or a CSR tuple "
                             f"(got shape {X.shape})", column=name, error=TypeError)
        if X.shape[0] != n:
            raise game_error(f"has {X.shape[0]} rows, expected {n} (examples)", column=name)
        if X.dtype.kind not in "fiub":
            raise game_error(f"must be numeric (got dtype {X.dtype})", column=name, error=TypeError)
        rows, cols = np.nonzero(X)
        indptr = np.zeros(n + 1, np.int64)
        np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
        fs = FeatureSet(indptr, cols.astype(np.int64), X[rows, cols], int(X.shape[1]))
    if fs.indices.dtype.kind not in "iu":
        raise game_error(f"indices must be integers (got dtype {fs.indices.dtype})", column=name, error=TypeError)
    if fs.indices.dtype not in (np.int32, np.int64):
        fs = fs._replace(indices=fs.indices.astype(np.int64))
    if fs.indptr.shape != (n + 1,) or fs.indptr[0] != 0 or fs.indptr[-1] != fs.indices.shape[0] \
            or np.any(np.diff(fs.indptr) < 0) or fs.values.shape != fs.indices.shape:
        raise game_error(f"is not valid CSR for {n} examples (indptr shape {fs.indptr.shape}, "
                         f"{fs.indices.shape[0]} indices, {fs.values.shape[0]} values)", column=name)
    if fs.indices.size and (fs.indices.min() < 0 or fs.indices.max() >= fs.num_columns):
        bad = fs.indices[(fs.indices < 0) | (fs.indices >= fs.num_columns)][0]
        raise game_error(f"is outside [0, {fs.num_columns}) (a column id)", column=name, value=int(bad))
    values = np.asarray(fs.values)
    if values.dtype.kind not in "fiub":
        raise game_error(f"values must be numeric (got dtype {values.dtype})", column=name, error=TypeError)
    values = values.astype(dtype, copy=False)
    if not np.isfinite(values).all():
        k = int(np.argmax(~np.isfinite(values)))
        row = int(np.searchsorted(fs.indptr, k, side="right") - 1)
        raise game_error("must be finite", column=name, value=float(values[k]),
                         where=f"example {row}, feature column {int(fs.indices[k])}")
    if names is None:
        names = fs.names
    if names is not None:
        names = tuple(str(x) for x in names)
        if len(names) != fs.num_columns:
            raise game_error(f"names: {len(names)} given for {fs.num_columns} columns", column=name)
    del where
    return FeatureSet(fs.indptr, fs.indices, values, int(fs.num_columns), names)


def _float_column(name: str, values: Any, n: int, dtype: np.dtype, default: float | None) -> np.ndarray:
    if values is None:
        return np.full(n, default, dtype)
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise game_error(f"must have shape ({n},) (one per example)", column=name,
                         value=f"<array of shape {arr.shape}>")
    if arr.dtype.kind not in "fiub":
        raise game_error(f"must be numeric (got dtype {arr.dtype})", column=name, error=TypeError)
    arr = arr.astype(dtype, copy=False)
    if not np.isfinite(arr).all():
        i = int(np.argmax(~np.isfinite(arr)))
        raise game_error("must be finite", column=name, value=float(arr[i]), where=f"example {i}")
    return arr


@dataclass(frozen=True, eq=False)
class GameData:
    """Examples for a GAME model. Build with :meth:`from_arrays` (or :meth:`from_pandas`).

    Attributes:
      label: ``(n,)`` raw labels (logistic: 1 is positive, 0 or -1 negative; all 0 when not given).
      weight: ``(n,)`` non-negative example weights.
      offset: ``(n,)`` base offset, added to every coordinate's score.
      ids: entity columns by name, each ``(n,)`` (int or str keys; checked by the coordinate using it).
      features: feature sets by name (:class:`FeatureSet`).
      scores: score columns by name, each ``(n,)`` float (external fixed effects).
      has_label: whether labels were given (metrics and training need them).
    """

    label: np.ndarray
    weight: np.ndarray
    offset: np.ndarray
    ids: Mapping[str, np.ndarray]
    features: Mapping[str, FeatureSet]
    scores: Mapping[str, np.ndarray]
    has_label: bool = True
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_arrays(cls, label: Any = None, *, ids: Mapping[str, Any] | None = None,
                    features: Mapping[str, Any] | None = None, weight: Any = None, offset: Any = None,
                    scores: Mapping[str, Any] | None = None, feature_names: Mapping[str, Sequence[str]] | None = None,
                    num_examples: int | None = None, dtype: Any = np.float64) -> GameData:
        """Build and check a GAME dataset.

        Args:
          label: ``(n,)`` labels, or ``None`` for data that is only scored.
          ids: ``{column: (n,) keys}`` entity columns.
          features: ``{name: X}`` feature sets; ``X`` is a dense ``(n, F)`` array, a SciPy sparse matrix,
            a :class:`FeatureSet` or a CSR tuple ``(indptr, indices, values[, num_columns])``. Columns are
            the user's features only: coordinates add the intercept.
          weight: ``(n,)`` non-negative weights (default 1).
          offset: ``(n,)`` base offset (default 0).
          scores: ``{name: (n,)}`` score columns (external models).
          feature_names: ``{name: names}`` column names of feature sets (used by the exports).
          num_examples: ``n`` when there is no label.
          dtype: float32 or float64.
        """
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise game_error("must be float32 or float64", column="dtype", value=str(dtype), error=TypeError)
        ids, features, scores = dict(ids or {}), dict(features or {}), dict(scores or {})
        feature_names = dict(feature_names or {})
        if label is not None:
            n = len(label)
        elif num_examples is not None:
            n = int(num_examples)
        else:
            lengths = [len(v) for v in ids.values()] + [len(v) for v in scores.values()]
            if not lengths:
                raise game_error("give a label, an entity column, a score column or num_examples", column="label",
                                 value=None)
            n = lengths[0]
        y = _float_column("label", label, n, dtype, 0.0)
        w = _float_column("weight", weight, n, dtype, 1.0)
        if w.size and w.min() < 0:
            i = int(np.argmax(w < 0))
            raise game_error("must be non-negative", column="weight", value=float(w[i]), where=f"example {i}")
        o = _float_column("offset", offset, n, dtype, 0.0)
        id_cols = {}
        for name, keys in ids.items():
            arr = np.asarray(keys)
            if arr.ndim != 1 or arr.shape[0] != n:
                raise game_error(f"must have shape ({n},) (one per example)", column=name,
                                 value=f"<array of shape {arr.shape}>")
            id_cols[str(name)] = arr
        for name in feature_names:
            if name not in features:
                raise game_error(f"names a feature set that is not given (feature sets: {sorted(features)})",
                                 column=name)
        sets = {str(name): _feature_set(name, spec, n, dtype, feature_names.get(name))
                for name, spec in features.items()}
        score_cols = {str(name): _float_column(name, s, n, np.dtype(np.float64), None) for name, s in scores.items()}
        return cls(y, w, o, id_cols, sets, score_cols, label is not None)

    @classmethod
    def from_pandas(cls, frame: Any, *, label: str | None = None, ids: Sequence[str] = (),
                    features: Mapping[str, Sequence[str]] | None = None, weight: str | None = None,
                    offset: str | None = None, scores: Sequence[str] = (), dtype: Any = np.float64) -> GameData:
        """Build from a pandas DataFrame: numeric columns become one feature each, other columns (strings,
        categoricals, booleans) one-hot features named ``"column=value"``.

        Args:
          frame: the DataFrame.
          label, weight, offset: column names (optional).
          ids: entity columns.
          features: ``{feature set: [columns]}``.
          scores: score columns.
        """
        def column(name: str) -> np.ndarray:
            if name not in frame.columns:
                raise game_error(f"is not a column of the DataFrame (columns: {list(frame.columns)})", column=name)
            return frame[name].to_numpy()

        sets, names = {}, {}
        n = len(frame)
        for set_name, cols in (features or {}).items():
            blocks, block_names = [], []
            for c in cols:
                values = column(c)
                if values.dtype.kind in "fiu":
                    blocks.append(values.astype(np.float64)[:, None])
                    block_names.append(str(c))
                else:
                    codes, uniques = _factorize(values, c)
                    onehot = np.zeros((n, len(uniques)))
                    onehot[np.arange(n), codes] = 1.0
                    blocks.append(onehot)
                    block_names.extend(f"{c}={u}" for u in uniques)
            sets[set_name] = np.hstack(blocks) if blocks else np.zeros((n, 0))
            names[set_name] = block_names
        return cls.from_arrays(None if label is None else column(label), ids={c: column(c) for c in ids},
                               features=sets, feature_names=names,
                               weight=None if weight is None else column(weight),
                               offset=None if offset is None else column(offset),
                               scores={c: column(c) for c in scores}, num_examples=n, dtype=dtype)

    @property
    def num_examples(self) -> int:
        return int(self.label.shape[0])

    @property
    def dtype(self) -> np.dtype:
        return self.label.dtype

    def __len__(self) -> int:
        return self.num_examples

    def __repr__(self) -> str:
        sets = {k: v.num_columns for k, v in self.features.items()}
        return (f"GameData(examples={self.num_examples}, ids={list(self.ids)}, features={sets}, "
                f"scores={list(self.scores)}, dtype={self.dtype})")

    def take(self, rows: Any) -> GameData:
        """The examples ``rows`` (int indices or a boolean mask), in that order, as a new ``GameData``."""
        idx = np.asarray(rows)
        if idx.dtype == bool:
            if idx.shape != (self.num_examples,):
                raise game_error(f"mask must have shape ({self.num_examples},), got {idx.shape}", column="rows")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64)
        return GameData(self.label[idx], self.weight[idx], self.offset[idx], {k: v[idx] for k, v in self.ids.items()},
                        {k: v.take(idx) for k, v in self.features.items()},
                        {k: v[idx] for k, v in self.scores.items()}, self.has_label)

    def split(self, fraction: float, seed: int = 0) -> tuple[GameData, GameData]:
        """A random ``(fraction, 1 - fraction)`` split of the examples (each example independently)."""
        mask = np.random.default_rng(seed).random(self.num_examples) < fraction
        return self.take(mask), self.take(~mask)

    def batches(self, size: int) -> list[GameData]:
        """Consecutive mini-batches of ``size`` examples (the last may be shorter), e.g. for a stream."""
        return [self.take(np.arange(s, min(s + size, self.num_examples))) for s in range(0, self.num_examples, size)]

    def schema(self) -> dict[str, Any]:
        """Column names and shapes that training and validation data must share."""
        return {"ids": sorted(self.ids), "scores": sorted(self.scores),
                "features": {k: (v.num_columns, v.names) for k, v in sorted(self.features.items())}}

    def cached(self, key: tuple, build: Any) -> Any:
        """``build()`` once per key; kept on this object (datasets and designs of the coordinates)."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]


def _factorize(values: np.ndarray, column: str) -> tuple[np.ndarray, list]:
    keys = values.astype(object)
    for i, v in enumerate(keys):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            raise game_error("is missing (one-hot columns need a value)", column=column, value=v,
                             where=f"example {i}")
    uniques, codes = np.unique(keys.astype(str), return_inverse=True)
    return codes.reshape(-1), [str(u) for u in uniques]


def entity_codes(keys: Any, coordinate: str, column: str) -> np.ndarray:
    """Entity keys checked for a coordinate: ints or strings; NaN/None keys and non-integral floats
    raise :class:`GameInputError` naming the coordinate, the column, the value and the example.
    Floats that are all integral (pandas' int columns with missing values) become int64."""
    arr = np.asarray(keys)
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if bad.any():
            i = int(np.argmax(bad))
            raise game_error("is not an entity key (NaN/inf entity keys are not allowed)", coordinate=coordinate,
                             column=column, value=float(arr[i]), where=f"example {i}")
        if np.any(arr != np.round(arr)):
            i = int(np.argmax(arr != np.round(arr)))
            raise game_error("is not an entity key (float keys must be integral)", coordinate=coordinate,
                             column=column, value=float(arr[i]), where=f"example {i}", error=TypeError)
        return arr.astype(np.int64)
    if arr.dtype.kind == "b":
        raise game_error("entity keys must be ints or strings, not booleans", coordinate=coordinate, column=column,
                         value=bool(arr[0]) if arr.size else None, error=TypeError)
    if arr.dtype == object:
        for i, v in enumerate(arr):
            if v is None or (isinstance(v, float) and not np.isfinite(v)):
                raise game_error("is not an entity key (missing / NaN entity keys are not allowed)",
                                 coordinate=coordinate, column=column, value=v, where=f"example {i}")
        kinds = {isinstance(v, str) for v in arr}
        if kinds == {True}:
            return arr.astype(str)
        if all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in arr):
            return arr.astype(np.int64)
        i = next(i for i, v in enumerate(arr) if not isinstance(v, str))
        raise game_error("has a different type from the other entity keys (all ints or all strings)",
                         coordinate=coordinate, column=column, value=arr[i], where=f"example {i}", error=TypeError)
    return arr


def with_offset(dataset: Dataset, offset: np.ndarray) -> Dataset:
    """:meth:`lljax.Dataset.with_offset` (every array shared but the offset ``(n,)``)."""
    return dataset.with_offset(np.asarray(offset, dtype=dataset.dtype))
