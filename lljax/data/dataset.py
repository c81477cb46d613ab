"""Columnar dataset: many examples of many entities as NumPy arrays.

A :class:`Dataset` holds, for ``n`` examples over ``U`` distinct entities:

- ``entity_keys (U,)``: the distinct entity keys, sorted; ``entity (n,)`` int64 codes into it;
- ``label``, ``weight``, ``offset``: ``(n,)`` floats;
- the sparse features as CSR: ``indptr (n+1,)``, ``feature_ids (nnz,)`` global feature
  indices, ``values (nnz,)``. When ``intercept_id`` is not ``None`` every row carries the
  intercept feature (value 1.0) as its first entry, as Lambda Learner adds it. The intercept is
  implicit: the dataset keeps the rows as given (``given_indptr``, ``given_feature_ids``,
  ``given_values``, the caller's arrays when they need no conversion) and packing and scoring add
  it; ``indptr``, ``feature_ids`` and ``values`` write it out, on first access.

The intercept is never one of the user's features: the columns of a dense ``X`` take the feature
ids other than ``intercept_id``, in order (column ``j`` is id ``j + 1`` with the default
``intercept_id=0``), and CSR rows that list ``intercept_id`` are rejected unless the caller opts in
(``allow_intercept_entries=True``). :meth:`Dataset.with_offset` swaps the offsets without touching
the features (GAME's coordinate descent does it every pass).

Construction validates everything (finite numbers, non-negative weights, lengths, feature
ids in range, one type of entity key) with vectorized checks, and raises a ``ValueError`` /
``TypeError`` naming the entity, the field and the value. Nothing here loops in Python per
example, except :meth:`Dataset.from_records`, the NTV edge.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from lljax.data.arrays import concat_ranges
from lljax.data.errors import all_finite, check_finite, check_length, check_nonnegative, input_error, number_column

__all__ = ["Dataset", "encode_entity_keys", "check_entity_keys"]

_FLOAT_DTYPES = (np.float32, np.float64)


def _as_float(name: str, values: Any, dtype: np.dtype, entity_of: Any = None) -> np.ndarray:
    """``values`` as a 1-D ``dtype`` array. An object array of numbers is accepted; strings, ``None``,
    complex numbers raise ``TypeError`` naming the first such value, its example and entity."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise input_error(name, f"<array of shape {arr.shape}>", "must be one-dimensional")
    if arr.dtype.kind not in "fiub":
        return number_column(name, arr.tolist(), dtype, entity_of, "example {}".format)
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf: the finiteness check names it
        return arr.astype(dtype, copy=False)


def _key_class(key: Any) -> str:
    """``"int"`` or ``"str"`` for a valid entity key, else the type's name (bools are not ints here)."""
    return _type_class(type(key))


def _check_key_types(keys: Sequence[Any]) -> str:
    """``TypeError`` naming the first key whose class differs from the first key's, or that is not int/str;
    else the keys' class, ``"int"`` or ``"str"``."""
    first = _key_class(keys[0])
    classes = {_type_class(t) for t in set(map(type, keys))}
    if classes != {first}:
        i, bad = next((i, k) for i, k in enumerate(keys) if _key_class(k) != first)
        names = sorted({first, _key_class(bad)})
        raise input_error("entity", bad, f"has a different type from other entity keys ({names})",
                          where=f"example {i}", error=TypeError)
    if first not in ("int", "str"):
        reason = "entity keys must be integers or strings" + (", not floats" if first == "float" else "")
        raise input_error("entity", keys[0], reason, error=TypeError)
    return first


def _type_class(t: type) -> str:
    if issubclass(t, str):
        return "str"
    if issubclass(t, numbers.Integral) and not issubclass(t, (bool, np.bool_)):
        return "int"
    return t.__name__


def _encode_entities(entity: Any) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct keys and the int64 code of each example. Rejects mixed key types.

    Keys are all integers or all strings. A Python list mixing the two (which NumPy would
    silently turn into strings), ``None``, floats and booleans raise ``TypeError``. Every key
    accepted here round-trips exactly through save/load and the exports, so integer keys must fit
    int64 (they are int64 from here on) and string keys must not hold a NUL character (NumPy string
    arrays drop trailing ones, merging ``"a\\x00"`` into ``"a"``) or a lone surrogate (not UTF-8):
    those raise ``ValueError`` naming the example and the key.
    """
    arr = np.asarray(entity)
    if arr.ndim != 1:
        raise input_error("entity", f"<array of shape {arr.shape}>", "must be one-dimensional")
    if len(arr) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if arr.dtype == object or (isinstance(entity, (list, tuple)) and arr.dtype.kind in "iuUbf"):
        seq = entity if isinstance(entity, (list, tuple)) else arr.tolist()
        if _check_key_types(seq) == "str":
            _check_no_nul(seq)
        else:
            arr = _int64_keys(seq, arr)
    elif arr.dtype.kind == "f":
        raise input_error("entity", arr[0], "entity keys must be integers or strings, not floats", error=TypeError)
    elif arr.dtype.kind not in "iuU":
        raise input_error("entity", f"<array of dtype {arr.dtype}>", "entity keys must be integers or strings",
                          error=TypeError)
    elif arr.dtype.kind == "u" and arr.dtype.itemsize == 8 and arr.max() >= 2**63:
        i = int(np.argmax(arr >= 2**63))
        raise input_error("entity", int(arr[i]), _INT64_RANGE, where=f"example {i}")
    if arr.dtype.kind in "iu" and arr.dtype != np.int64:
        arr = arr.astype(np.int64)
    if arr.dtype.kind in "iu" and bool(np.all(arr[1:] >= arr[:-1])):
        # Examples grouped by sorted integer key (the usual layout of big inputs): one pass, no sort.
        new_key = np.empty(len(arr), bool)
        new_key[0] = True
        np.not_equal(arr[1:], arr[:-1], out=new_key[1:])
        codes = np.cumsum(new_key, dtype=np.int64)
        codes -= 1
        return arr[new_key], codes
    if arr.dtype == np.int64:
        from lljax.solve import kernels  # (the native helpers; solve imports nothing of data)

        # A hash table finds the distinct keys in one pass; only those are sorted, and the codes renumbered by
        # their ranks: np.unique's result, without a sort of every example's key. Past a quarter of the keys
        # distinct (a heuristic: the table's 40-80 bytes per distinct key then near the sort's 24-32 bytes per
        # key, for less gain), the sort runs instead.
        found = kernels.encode_keys(arr, max(len(arr) // 4, 1 << 16)) if kernels.enabled() else None
        if found is not None:
            distinct, codes = found
            order = np.argsort(distinct)
            rank = np.empty(len(distinct), np.int64)
            rank[order] = np.arange(len(distinct), dtype=np.int64)
            return distinct[order], np.take(rank, codes, out=codes)
    keys, codes = np.unique(arr, return_inverse=True)
    check_entity_keys(keys)
    return keys, codes.astype(np.int64).reshape(-1)


_INT64_RANGE = ("is outside the int64 range [-2**63, 2**63): integer entity keys are stored as int64 "
                "(map larger ids into it, e.g. uint64 ids with .view(np.int64), or use strings)")
_NUL_REASON = ("contains a NUL character ('\\x00'): NumPy string arrays drop trailing NULs, so such a key would be "
               "merged with another and could not be saved and read back exactly")
_SURROGATE_REASON = "contains a lone surrogate (not valid Unicode): it cannot be written as UTF-8 (Parquet, files)"


def encode_entity_keys(entity: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(keys (U,), codes (n,))``: the sorted distinct entity keys (int64 or str) of ``entity (n,)`` and
    each element's code, with the checks of :meth:`Dataset.from_arrays` (one key type, int64 range,
    no NUL or lone surrogate in strings): ``TypeError``/``ValueError`` naming the example and the key."""
    return _encode_entities(entity)


def check_entity_keys(keys: np.ndarray) -> None:
    """``ValueError`` naming the first key of ``keys`` (an int64 array, a str array or an object array of
    str) that could not round-trip exactly: a string holding a NUL character or a lone surrogate.
    Vectorized over the code points of a str array."""
    keys = np.asarray(keys)
    if keys.size == 0 or keys.dtype.kind in "iu":
        return
    if keys.dtype == object:
        text = "".join(keys.tolist())
        try:
            text.encode("utf-8")
            surrogate = False
        except UnicodeEncodeError:
            surrogate = True
        if "\x00" in text or surrogate:
            _check_no_nul(keys.tolist(), where=False)
            for key in keys.tolist():
                try:
                    key.encode("utf-8")
                except UnicodeEncodeError:
                    raise input_error("entity", key, _SURROGATE_REASON) from None
        return
    if keys.dtype.kind != "U" or keys.itemsize == 0:
        return
    codes = keys.view(np.uint32).reshape(len(keys), -1)
    nonzero = codes != 0
    length = codes.shape[1] - np.argmax(nonzero[:, ::-1], axis=1)
    length[~nonzero.any(axis=1)] = 0
    bad = nonzero.sum(axis=1) < length  # a NUL before the last character
    if bad.any():
        raise input_error("entity", str(keys[int(np.argmax(bad))]), _NUL_REASON)
    bad = ((codes >= 0xD800) & (codes <= 0xDFFF)).any(axis=1)
    if bad.any():
        raise input_error("entity", str(keys[int(np.argmax(bad))]), _SURROGATE_REASON)


def _check_no_nul(seq: Sequence[str], where: bool = True) -> None:
    """``ValueError`` at the first string of ``seq`` holding a NUL (one C-level scan; the loop only
    runs to name the offender)."""
    if "\x00" in "".join(seq):
        i, key = next((i, k) for i, k in enumerate(seq) if "\x00" in k)
        raise input_error("entity", key, _NUL_REASON, where=f"example {i}" if where else None)


def _int64_keys(seq: Sequence[Any], arr: np.ndarray) -> np.ndarray:
    """Integer keys as int64; ``ValueError`` naming the first key outside the int64 range."""
    if arr.dtype == np.int64:
        return arr
    if arr.dtype.kind in "iu" and (arr.dtype.kind == "i" or arr.dtype.itemsize < 8):
        return arr.astype(np.int64)
    obj = np.empty(len(seq), object)
    obj[:] = [int(k) for k in seq] if arr.dtype.kind != "O" else seq
    if obj.min() < -(2**63) or obj.max() >= 2**63:
        i = int(np.argmax((obj < -(2**63)) | (obj >= 2**63)))
        raise input_error("entity", int(obj[i]), _INT64_RANGE, where=f"example {i}")
    return obj.astype(np.int64)


def _as_index(name: str, values: Any, keep_int32: bool = False) -> np.ndarray:
    """``values`` as a 1-D int64 array (int32 ones kept as they are with ``keep_int32``, no copy);
    ``TypeError`` for floats, strings, booleans (no silent truncation)."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise input_error(name, f"<array of shape {arr.shape}>", "must be one-dimensional")
    if arr.size and arr.dtype.kind not in "iu":
        raise input_error(name, f"<array of dtype {arr.dtype}>", "must hold integers", error=TypeError)
    if keep_int32 and arr.dtype == np.int32:
        return arr
    return arr.astype(np.int64, copy=False)


def _as_count(name: str, value: Any, minimum: int) -> int:
    """A Python int ``>= minimum``; ``TypeError`` for non-integers (floats, bools), ``ValueError`` below it."""
    if not isinstance(value, numbers.Integral) or isinstance(value, (bool, np.bool_)):
        raise input_error(name, value, "must be an integer", error=TypeError)
    if value < minimum:
        raise input_error(name, value, f"must be >= {minimum}")
    return int(value)


@dataclass(frozen=True, eq=False)
class Dataset:
    """Examples of many entities in columnar form. Build with :meth:`from_arrays` or :meth:`from_records`.

    Attributes:
      entity_keys: ``(U,)`` distinct entity keys (sorted).
      entity: ``(n,)`` int64 index into ``entity_keys`` of each example.
      label, weight, offset: ``(n,)`` float arrays (raw labels; the loss encodes them).
      given_indptr: ``(n+1,)`` int64 CSR row pointers of the rows as given (no intercept).
      given_feature_ids: ``(k,)`` global feature index of each given value: int32 when they were
        given as int32 (halving the largest array of a big dataset), else int64.
      given_values: ``(k,)`` feature values.
      num_features: size of the global feature space (ids are in ``[0, num_features)``, the
        intercept's included).
      intercept_id: global id of the intercept feature, or ``None`` when there is none. When set,
        every row has the intercept (value 1.0) before its given features, implicitly.
      indptr, feature_ids, values: the rows with the intercept written out (``(n+1,)``, ``(nnz,)``,
        ``(nnz,)``, ``nnz = k + n``; the given arrays when there is no intercept), built on first
        access and kept.
    """

    entity_keys: np.ndarray
    entity: np.ndarray
    label: np.ndarray
    weight: np.ndarray
    offset: np.ndarray
    given_indptr: np.ndarray
    given_feature_ids: np.ndarray
    given_values: np.ndarray
    num_features: int
    intercept_id: int | None = 0

    @functools.cached_property
    def _explicit(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.explicit_rows()

    @property
    def indptr(self) -> np.ndarray:
        return self._explicit[0]

    @property
    def feature_ids(self) -> np.ndarray:
        return self._explicit[1]

    @property
    def values(self) -> np.ndarray:
        return self._explicit[2]

    def explicit_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(indptr, feature_ids, values)`` with the intercept written out as each row's first entry
        (a new copy each call; the given arrays when there is no intercept)."""
        if self.intercept_id is None:
            return self.given_indptr, self.given_feature_ids, self.given_values
        return prepend_intercept(self.given_indptr, self.given_feature_ids, self.given_values, self.intercept_id)

    @property
    def num_nonzeros(self) -> int:
        """Entries of the rows, the implicit intercept included (``len(values)``, without building it)."""
        return int(self.given_values.shape[0]) + (0 if self.intercept_id is None else self.num_examples)

    @property
    def num_examples(self) -> int:
        return int(self.label.shape[0])

    @property
    def num_entities(self) -> int:
        return int(self.entity_keys.shape[0])

    @property
    def dtype(self) -> np.dtype:
        return self.label.dtype

    def __len__(self) -> int:
        return self.num_examples

    def __repr__(self) -> str:
        return (f"Dataset(examples={self.num_examples}, entities={self.num_entities}, "
                f"nnz={self.num_nonzeros}, num_features={self.num_features}, dtype={self.dtype})")

    def row_of_nonzero(self) -> np.ndarray:
        """``(nnz,)`` example index of each entry of :attr:`values` (the intercept's included)."""
        lengths = np.diff(self.given_indptr) + (0 if self.intercept_id is None else 1)
        return np.repeat(np.arange(self.num_examples, dtype=np.int64), lengths)

    def entity_key_of_example(self, i: int) -> Any:
        return self.entity_keys[self.entity[i]]

    @classmethod
    def from_arrays(
        cls,
        entity: npt.ArrayLike,
        label: npt.ArrayLike,
        *,
        X: npt.ArrayLike | None = None,
        indptr: npt.ArrayLike | None = None,
        feature_ids: npt.ArrayLike | None = None,
        values: npt.ArrayLike | None = None,
        weight: npt.ArrayLike | None = None,
        offset: npt.ArrayLike | None = None,
        num_features: int | None = None,
        intercept_id: int | None = 0,
        allow_intercept_entries: bool = False,
        dtype: Any = None,
    ) -> Dataset:
        """Build a dataset from arrays, with no Python loop per example.

        Features are given either densely as ``X (n, F)`` (zeros are dropped) or as CSR
        ``indptr (n+1,)``, ``feature_ids (nnz,)``, ``values (nnz,)``. With ``intercept_id`` set
        (default 0), an intercept of value 1.0 is prepended to every row (implicitly: the given
        arrays are kept, not copied). The intercept is never one of your features:

        - **Dense** ``X``: its columns take the global feature ids other than ``intercept_id``, in
          order: column ``j`` is feature ``j`` if ``j < intercept_id``, else ``j + 1``. With the
          default ``intercept_id=0``, column ``j`` is feature ``j + 1`` and ``num_features`` is
          ``F + 1``; with ``intercept_id=None`` (no intercept), column ``j`` is feature ``j``.
        - **CSR**: ids are used as given, so they must avoid ``intercept_id``. A row listing
          ``intercept_id`` raises ``ValueError`` naming the example, the entity and the value,
          unless ``allow_intercept_entries=True``, the explicit opt-in to Lambda Learner's rule:
          such a value is added to the intercept's 1.0. Rows that already carry their own
          intercept pass ``intercept_id=None`` instead.

        Args:
          entity: ``(n,)`` entity key of each example (all ints or all strings).
          label: ``(n,)`` labels (logistic: 1 is positive, 0 or -1 negative).
          X: optional dense ``(n, F)`` feature matrix (no intercept column: it is added).
          indptr, feature_ids, values: optional CSR features.
          weight: ``(n,)`` non-negative weights (default 1).
          offset: ``(n,)`` fixed-effect scores (default 0).
          num_features: global feature count (default: inferred from the data); with ``X`` it must
            hold the ids its columns take (``F + 1`` with the default intercept).
          intercept_id: global id of the intercept, or ``None`` for no intercept.
          allow_intercept_entries: accept CSR entries whose id is ``intercept_id`` (their values
            are added to the implicit intercept's 1.0). Default ``False``: they raise.
          dtype: float32 or float64 (default: the label's dtype if it is one of them, else float64).
        """
        label_arr = np.asarray(label)
        if dtype is None:
            dtype = label_arr.dtype if label_arr.dtype in _FLOAT_DTYPES else np.float64
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            raise input_error("dtype", dtype, "is not a NumPy dtype", error=TypeError) from None
        if dtype not in _FLOAT_DTYPES:
            raise input_error("dtype", str(dtype), "must be float32 or float64", error=TypeError)

        keys, codes = _encode_entities(entity)
        n = codes.shape[0]

        def entity_of(i: int) -> Any:
            return keys[codes[i]] if i < n else None

        y = _as_float("label", label_arr, dtype, entity_of)
        check_length("label", y, n)
        w = np.ones(n, dtype) if weight is None else _as_float("weight", weight, dtype, entity_of)
        o = np.zeros(n, dtype) if offset is None else _as_float("offset", offset, dtype, entity_of)
        check_length("weight", w, n)
        check_length("offset", o, n)

        if intercept_id is not None:
            intercept_id = _as_count("intercept_id", intercept_id, 0)
        if X is not None:
            if indptr is not None or feature_ids is not None or values is not None:
                raise input_error("X", "<dense matrix>", "give either X or (indptr, feature_ids, values), not both")
            indptr_a, fids_a, vals_a, F = _dense_to_csr(X, n, dtype, intercept_id)
        else:
            if indptr is None:
                if feature_ids is not None or values is not None:
                    raise input_error("indptr", None, "is required when feature_ids or values are given")
                indptr_a = np.zeros(n + 1, np.int64)
                fids_a = np.zeros(0, np.int64)
                vals_a = np.zeros(0, dtype)
            else:
                indptr_a = _as_index("indptr", indptr)
                fids_a = _as_index("feature_ids", feature_ids if feature_ids is not None else [], keep_int32=True)
                vals_a = _as_float("values", values if values is not None else [], dtype)
            F = None
        # Feature ids the dense columns take: [0, dense_span) minus the intercept's.
        dense_span = 0 if not F else F + int(intercept_id is not None and intercept_id < F)
        if num_features is not None:
            num_features = _as_count("num_features", num_features, 0)
        else:
            candidates = [dense_span, int(fids_a.max()) + 1 if fids_a.size else 0]
            if intercept_id is not None:
                candidates.append(intercept_id + 1)
            num_features = max(candidates)
        if intercept_id is not None and not 0 <= intercept_id < num_features:
            raise input_error("intercept_id", intercept_id, f"must be in [0, {num_features})")
        if F and dense_span > num_features:  # (dense_span > 0 means F) then intercept_id, if set, is < F
            ids = (f"0..{F - 1}" if intercept_id is None else f"1..{F}" if intercept_id == 0
                   else f"0..{F} except the intercept's {intercept_id}")
            raise input_error("num_features", num_features,
                              f"is too small for the {F} columns of X, which take the feature ids {ids} (the "
                              f"intercept is never a column of X): it must be >= {dense_span}")

        id_range = _check_csr(indptr_a, fids_a, vals_a, n, num_features, keys, codes)
        if intercept_id is not None and F is None and not allow_intercept_entries:
            _check_no_intercept_entries(indptr_a, fids_a, intercept_id, id_range, keys, codes)
        for field, arr in (("label", y), ("weight", w), ("offset", o)):
            check_finite(field, arr, entity_of, "example")
        check_nonnegative("weight", w, entity_of, "example")
        _check_values_finite(indptr_a, fids_a, vals_a, entity_of)

        # The intercept stays implicit (inserting it copied the CSR arrays). C-contiguous (a copy only for
        # strided views, e.g. a column of a wider array): the packing helpers read them as flat buffers.
        indptr_a, fids_a, vals_a = (np.ascontiguousarray(a) for a in (indptr_a, fids_a, vals_a))
        return cls(keys, codes, y, w, o, indptr_a, fids_a, vals_a, int(num_features), intercept_id)

    @classmethod
    def from_records(
        cls,
        records: Iterable[tuple[Any, Any]],
        index_map: Any,
        *,
        dtype: Any = np.float64,
    ) -> Dataset:
        """Build a dataset from ``(entity_key, TrainingRecord)`` pairs (e.g. from :func:`read_ntv_jsonl`).

        Features are indexed with ``index_map`` (an :class:`IndexMap`; unknown (name, term) raise
        ``ValueError`` naming the entity and the record). The intercept is
        ``index_map.intercept_index``. Labels are the records' raw labels. A (name, term) repeated
        in one record is kept twice here and summed when packed (as Lambda Learner's coo -> csc). A
        feature that names the intercept's own (name, term) is explicit, so it is accepted and added
        to the intercept's 1.0, as Lambda Learner does (``allow_intercept_entries=True``).

        Raises ``TypeError`` naming the record, the entity and the field for an item that is not an
        ``(entity_key, TrainingRecord)`` pair and for a label, weight, offset or feature value that
        is not a number (strings such as ``"1"`` are not parsed; booleans count as 0/1), then
        everything :meth:`from_arrays` checks.
        """
        entity, label, weight, offset, counts, fids, vals = [], [], [], [], [], [], []
        for i, item in enumerate(records):
            where = f"record {i}"
            try:
                key, record = item
                features = record.features
                label.append(record.raw_label)
                weight.append(record.weight)
                offset.append(record.offset)
            except (TypeError, ValueError, AttributeError):
                raise input_error("records", _shown(item), "must be an (entity_key, TrainingRecord) pair", where=where,
                                  error=TypeError) from None
            if not isinstance(features, (list, tuple)):
                raise input_error("features", _shown(features), "must be a list of Feature", entity=key, where=where,
                                  error=TypeError)
            entity.append(key)
            counts.append(len(features))
            for feature in features:
                try:
                    name_term, value = feature.name_term, feature.value
                except AttributeError:
                    raise input_error("features", _shown(feature), "must be a Feature(name, term, value)", entity=key,
                                      where=where, error=TypeError) from None
                try:
                    fids.append(index_map.get_index(name_term))
                except (IndexError, TypeError):  # TypeError: an unhashable name or term
                    raise input_error("features", name_term, "is not in the index map", entity=key,
                                      where=where) from None
                vals.append(value)
        indptr = np.zeros(len(counts) + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        row_of_value = np.repeat(np.arange(len(counts)), counts)
        columns = {name: number_column(name, column, dtype, entity.__getitem__, "record {}".format)
                   for name, column in (("label", label), ("weight", weight), ("offset", offset))}
        values = number_column("values", vals, dtype, lambda k: entity[row_of_value[k]],
                               lambda k: f"record {row_of_value[k]}, feature {k - indptr[row_of_value[k]]}")
        return cls.from_arrays(
            np.array(entity, dtype=object) if entity and isinstance(entity[0], str) else entity,
            columns["label"], indptr=indptr, feature_ids=np.asarray(fids, np.int64), values=values,
            weight=columns["weight"], offset=columns["offset"], num_features=len(index_map),
            intercept_id=index_map.intercept_index, allow_intercept_entries=True, dtype=dtype,
        )

    def take(self, examples: Any) -> Dataset:
        """The examples at ``examples`` (int indices or a boolean mask), in that order, as a new dataset.

        Entity codes are re-encoded over the entities that remain (still sorted); features,
        ``num_features`` and ``intercept_id`` are kept. No validation is repeated.
        """
        idx = np.asarray(examples)
        if idx.dtype == bool:
            if idx.shape != (self.num_examples,):
                raise input_error("examples", f"<mask of shape {idx.shape}>", f"must have shape ({self.num_examples},)")
            idx = np.flatnonzero(idx)
        elif idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise input_error("examples", f"<array of shape {idx.shape}, dtype {idx.dtype}>",
                              "must be a 1-d array of int indices or a boolean mask", error=TypeError)
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < -self.num_examples or idx.max() >= self.num_examples):
            bad = idx[(idx < -self.num_examples) | (idx >= self.num_examples)][0]
            raise input_error("examples", int(bad), f"is outside [0, {self.num_examples})")
        idx = np.where(idx < 0, idx + self.num_examples, idx)
        present, codes = np.unique(self.entity[idx], return_inverse=True)
        lengths = np.diff(self.given_indptr)[idx]
        indptr = np.zeros(len(idx) + 1, np.int64)
        np.cumsum(lengths, out=indptr[1:])
        nz = concat_ranges(self.given_indptr[idx], lengths)
        return Dataset(self.entity_keys[present], codes.astype(np.int64).reshape(-1), self.label[idx],
                       self.weight[idx], self.offset[idx], indptr, self.given_feature_ids[nz], self.given_values[nz],
                       self.num_features, self.intercept_id)

    def with_offset(self, offset: npt.ArrayLike) -> Dataset:
        """The same examples with ``offset (n,)`` as their offsets, as a new dataset.

        Every other array is shared with this dataset (the features are not copied, nor the
        intercept written out by :attr:`feature_ids`), so the cost is O(n): GAME's coordinate
        descent swaps offsets every pass. ``offset`` is validated and cast as
        :meth:`from_arrays` does: one-dimensional, ``n`` long, finite (a ``ValueError`` naming the
        example, the entity and the value), cast to :attr:`dtype` (used as given, not copied, when
        it already is a 1-d array of that dtype). This dataset is unchanged.
        """
        n = self.num_examples

        def entity_of(i: int) -> Any:
            return self.entity_keys[self.entity[i]] if i < n else None

        o = _as_float("offset", offset, self.dtype, entity_of)
        check_length("offset", o, n)
        check_finite("offset", o, entity_of, "example")
        swapped = replace(self, offset=o)
        if "_explicit" in self.__dict__:  # the intercept already written out: share it too
            swapped.__dict__["_explicit"] = self.__dict__["_explicit"]
        return swapped


def _shown(obj: Any) -> Any:
    """``obj`` itself if it prints short and plain, else its (truncated) repr, for messages."""
    if isinstance(obj, (str, int, float, type(None))) and len(repr(obj)) <= 80:
        return obj
    text = repr(obj)
    return text if len(text) <= 80 else text[:77] + "..."


def _dense_to_csr(
    X: Any, n: int, dtype: np.dtype, intercept_id: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """CSR of the nonzeros of ``X (n, F)``; column ``j`` is feature ``j + (j >= intercept_id)``, so
    that no column takes the intercept's id."""
    X = np.asarray(X)
    if X.dtype.kind not in "fiub":
        raise input_error("X", f"<array of dtype {X.dtype}>", "must be numeric (real)", error=TypeError)
    if X.ndim != 2:
        raise input_error("X", f"<array of shape {X.shape}>", "must be two-dimensional (examples, features)")
    check_length("X", X, n)
    with np.errstate(over="ignore"):
        X = X.astype(dtype, copy=False)
    rows, cols = np.nonzero(X)  # row-major order: rows sorted
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    # NaN != 0, so non-finite values are kept and caught by the finiteness check.
    values = X[rows, cols]
    ids = cols.astype(np.int64)
    if intercept_id is not None:
        ids += ids >= intercept_id
    return indptr, ids, values, X.shape[1]


def _check_csr(indptr: np.ndarray, fids: np.ndarray, vals: np.ndarray, n: int, num_features: int, keys: np.ndarray,
               codes: np.ndarray) -> tuple[int, int] | None:
    """Validate the CSR arrays; return the ids' ``(min, max)`` (``None`` when there are none)."""
    check_length("indptr", indptr, n + 1, "examples + 1")
    if indptr[0] != 0:
        raise input_error("indptr", int(indptr[0]), "must start at 0", where="position 0")
    drops = np.flatnonzero(indptr[1:] < indptr[:-1])  # no (n,) int64 temporary, as np.diff would make
    if drops.size:
        i = int(drops[0]) + 1
        raise input_error("indptr", int(indptr[i]), f"must be non-decreasing (previous value {int(indptr[i - 1])})",
                          where=f"position {i}")
    if indptr[-1] != fids.shape[0]:
        raise input_error("indptr", int(indptr[-1]), f"must end at nnz={fids.shape[0]} (the length of feature_ids)",
                          where=f"position {n}")
    check_length("values", vals, fids.shape[0], "feature_ids")
    if fids.size == 0:
        return None
    low, high = int(fids.min()), int(fids.max())
    if low >= 0 and high < num_features:
        return low, high  # two passes with no temporary array: the (nnz,) masks below are built only to name a bad id
    bad = (fids < 0) | (fids >= num_features)
    if bad.any():
        k = int(np.argmax(bad))
        row = int(np.searchsorted(indptr, k, side="right") - 1)
        raise input_error("feature_ids", int(fids[k]), f"is outside [0, {num_features})", entity=keys[codes[row]])
    return low, high


def _check_no_intercept_entries(indptr: np.ndarray, fids: np.ndarray, intercept_id: int,
                                id_range: tuple[int, int] | None, keys: np.ndarray, codes: np.ndarray) -> None:
    """``ValueError`` naming the example, the entity and the id of the first CSR entry whose id is the
    implicit intercept's (its value would silently be added to the intercept). No pass at all when the
    ids' range excludes it (the usual case: ids from 1 with the intercept at 0); else a scan in chunks
    (no ``(nnz,)`` temporary)."""
    if id_range is None or not id_range[0] <= intercept_id <= id_range[1]:
        return
    chunk = 1 << 20
    for start in range(0, fids.shape[0], chunk):
        hits = np.flatnonzero(fids[start:start + chunk] == intercept_id)
        if hits.size:
            k = start + int(hits[0])
            row = int(np.searchsorted(indptr, k, side="right") - 1)
            raise input_error(
                "feature_ids", intercept_id,
                "is intercept_id, the implicit intercept's feature id, so this feature would be merged into the "
                "intercept: give your features other ids, pass intercept_id=None if your rows carry their own "
                "intercept, or allow_intercept_entries=True to add these values to the intercept",
                entity=keys[codes[row]], where=f"example {row}")


def _check_values_finite(indptr: np.ndarray, fids: np.ndarray, vals: np.ndarray,
                         entity_of: Callable[[int], Any]) -> None:
    """``ValueError`` naming the example, the entity and the feature id of the first non-finite value."""
    if all_finite(vals):
        return
    bad = ~np.isfinite(vals)
    if bad.any():
        k = int(np.argmax(bad))
        row = int(np.searchsorted(indptr, k, side="right") - 1)
        raise input_error("values", float(vals[k]), "must be finite", entity=entity_of(row),
                          where=f"example {row}, feature id {int(fids[k])}")


def prepend_intercept(
    indptr: np.ndarray, fids: np.ndarray, vals: np.ndarray, intercept_id: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Insert ``(intercept_id, 1.0)`` at the start of every CSR row (``np.insert``: one pass, no mask).
    int32 ids stay int32 unless the intercept id does not fit."""
    n = indptr.shape[0] - 1
    starts = indptr[:-1]
    if intercept_id > np.iinfo(fids.dtype).max:
        fids = fids.astype(np.int64)
    new_indptr = indptr + np.arange(n + 1, dtype=np.int64)
    return new_indptr, np.insert(fids, starts, intercept_id), np.insert(vals, starts, 1.0)
