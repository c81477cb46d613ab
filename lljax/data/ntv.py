"""Host-edge types: NTV features and records, the feature IndexMap, NTV JSON lines.

These are plain Python objects with Lambda Learner 0.1.0 semantics
(``linkedin.learner.ds``). They are convenient for small data and for
interoperability; large data goes through the columnar dataset instead.

NTV ("name, term, value") JSON lines hold one example per line::

    {"uid": "42", "label": 1.0, "weight": 1.0, "offset": -0.3,
     "features": [{"name": "n", "term": "t", "value": 1.0}]}

``weight`` defaults to 1.0 and ``offset`` to 0.0; the entity field (``"uid"``
by default), ``label`` and ``features`` are required; an optional ``context``
object is kept as is; other keys are ignored. A key repeated in one JSON object (at any depth) is an
error: JSON parsers disagree on which value wins, so lljax keeps neither.

:func:`read_ntv_jsonl` parses with ``pyarrow.json`` when pyarrow is installed (``pip install
"lljax[io]"``) and the file is in the usual form (one ``{...}`` object per line, ``\n`` or ``\r\n``
line ends, no blank lines), then validates the columns with vectorized checks and builds the records
in one pass; any input that is not in that form, or that any check rejects, is read again by the
pure-Python parser, which gives the documented errors (file, line, entity, field, value). Both
give the same records for every input (``tests/test_ntv_fast.py``).
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import math
import numbers
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from itertools import chain
from typing import IO, Any

import numpy as np

from lljax.data.errors import input_error

__all__ = [
    "Feature",
    "IndexMap",
    "TrainingRecord",
    "iter_ntv_jsonl",
    "ntv_arrow_table",
    "read_ntv_jsonl",
    "write_ntv_jsonl",
]

Name = str
Term = str
NameTerm = tuple[Name, Term]
EntityKey = str | int
PathOrFile = str | os.PathLike | IO[str]


# ---------------------------------------------------------------------------
# Feature and TrainingRecord
# ---------------------------------------------------------------------------


def _dedupe_preserve_order(items: Iterable[Any]) -> list[Any]:
    """Return the distinct elements of ``items`` in order of first appearance."""
    return list(dict.fromkeys(items))


class Feature:
    """One sparse feature in name-term-value form.

    Args:
      name: feature section name, e.g. ``"ads.creative.id"``.
      term: feature term, e.g. ``"13126317"``.
      value: feature value, e.g. ``1.0`` for a categorical feature.

    Two features are equal when their names and terms are equal and their
    values are close (``math.isclose``), as in Lambda Learner. Features are
    mutable and unhashable.
    """

    __hash__ = None  # type: ignore[assignment]  # unhashable (mutable, == by value); typeshed types a method

    def __init__(self, name: Name, term: Term, value: float):
        self.name: Name = name
        self.term: Term = term
        self.value: float = value

    @property
    def name_term(self) -> NameTerm:
        """The ``(name, term)`` key of this feature."""
        return self.name, self.term

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Feature):
            return NotImplemented
        return self.name == other.name and self.term == other.term and math.isclose(self.value, other.value)

    def __repr__(self) -> str:
        return f"Feature(name={self.name!r}, term={self.term!r}, value={self.value!r})"


class TrainingRecord:
    """One training example: label, weight, offset and sparse features.

    Args:
      label: the label as given (0/1 or ±1 for logistic, a real number for
        linear, a count for Poisson).
      weight: example weight, ``>= 0``.
      offset: fixed-effect score added to the margin.
      features: the example's features.
      context: optional free-form metadata.

    ``label`` follows Lambda Learner's logistic rule (1 stays 1, anything else
    becomes -1); ``raw_label`` is the label as given.
    """

    def __init__(
        self,
        label: float,
        weight: float,
        offset: float,
        features: list[Feature],
        context: dict[str, Any] | None = None,
    ):
        self._label = label
        self.weight = weight
        self.offset = offset
        self.features = features
        self.context = context

    @property
    def label(self) -> float:
        """The logistic label: ``1`` when the raw label equals 1, else ``-1``."""
        return self._label if self._label == 1 else -1

    @property
    def raw_label(self) -> float:
        """The label exactly as given to the constructor."""
        return self._label

    @property
    def name_terms(self) -> list[NameTerm]:
        """The distinct ``(name, term)`` keys of the features, in order of first appearance."""
        return _dedupe_preserve_order(feature.name_term for feature in self.features)

    def __repr__(self) -> str:
        return (
            f"TrainingRecord(label={self._label!r}, weight={self.weight!r}, offset={self.offset!r}, "
            f"features={self.features!r}, context={self.context!r})"
        )


# ---------------------------------------------------------------------------
# IndexMap
# ---------------------------------------------------------------------------


class IndexMap:
    """Bidirectional map ``(name, term) <-> int`` with the intercept at index 0.

    Indices are assigned densely in order of first insertion. Semantics follow
    Lambda Learner's ``IndexMap``; ``get_indices``, ``name_terms``,
    ``to_dict``/``from_dict`` and ``__eq__`` are additions.

    Args:
      intercept_name: name of the intercept feature.
      intercept_term: term of the intercept feature.
    """

    __hash__ = None  # type: ignore[assignment]  # unhashable (mutable, == by value); typeshed types a method

    def __init__(self, intercept_name: Name = "intercept", intercept_term: Term = "intercept"):
        self._intercept_name = intercept_name
        self._intercept_term = intercept_term
        self._nt_to_index: dict[NameTerm, int] = {}
        self._index_to_nt: list[NameTerm] = []
        self.push(self.intercept_nt)

    @property
    def intercept_nt(self) -> NameTerm:
        """The intercept's ``(name, term)``."""
        return self._intercept_name, self._intercept_term

    @property
    def intercept_index(self) -> int:
        """The intercept's index (always 0)."""
        return self.get_index(self.intercept_nt)

    @property
    def name_terms(self) -> list[NameTerm]:
        """All ``(name, term)`` keys in index order (a copy)."""
        return list(self._index_to_nt)

    def push(self, name_term: NameTerm) -> int:
        """Index ``name_term`` if it is new; return its index either way. Not thread safe."""
        index = self._nt_to_index.get(name_term)
        if index is None:
            index = len(self._index_to_nt)
            self._nt_to_index[name_term] = index
            self._index_to_nt.append(name_term)
        return index

    def batch_push(self, name_terms: Iterable[NameTerm]) -> tuple[int, int]:
        """Index every new key of ``name_terms``.

        Returns:
          ``(num_new_entries, num_distinct_seen)``: how many keys were added,
          and how many distinct keys were in ``name_terms``.
        """
        size_before = len(self)
        distinct = _dedupe_preserve_order(name_terms)
        for name_term in distinct:
            self.push(name_term)
        return len(self) - size_before, len(distinct)

    def get_index(self, name_term: NameTerm) -> int:
        """Index of ``name_term``; ``IndexError`` if it is not indexed."""
        try:
            return self._nt_to_index[name_term]
        except KeyError:
            raise _unknown_key_error(name_term) from None

    def get_indices(self, name_terms: Iterable[NameTerm]) -> np.ndarray:
        """Indices of many keys as an ``int64`` array; ``IndexError`` naming the first unknown key."""
        lookup = self._nt_to_index
        try:
            return np.fromiter((lookup[nt] for nt in name_terms), dtype=np.int64)
        except KeyError as exc:
            raise _unknown_key_error(exc.args[0]) from None

    def get_nt(self, index: int) -> NameTerm:
        """The ``(name, term)`` at ``index``; ``IndexError`` if out of range."""
        if isinstance(index, numbers.Integral) and 0 <= index < len(self._index_to_nt):
            return self._index_to_nt[int(index)]
        raise IndexError(f"Index {index!r} does not exist in the index map (size {len(self)})")

    def __len__(self) -> int:
        return len(self._index_to_nt)

    def __contains__(self, name_term: object) -> bool:
        try:
            return name_term in self._nt_to_index
        except TypeError:  # unhashable
            return False

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IndexMap):
            return NotImplemented
        return self.intercept_nt == other.intercept_nt and self._index_to_nt == other._index_to_nt

    def __repr__(self) -> str:
        """Lambda Learner's format: ``[(name, term):index; ...]``."""
        pairs = "; ".join(f"{nt}:{index}" for index, nt in enumerate(self._index_to_nt))
        return f"[{pairs}]"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description: intercept name and term, and the keys in index order."""
        return {
            "intercept_name": self._intercept_name,
            "intercept_term": self._intercept_term,
            "name_terms": [[name, term] for name, term in self._index_to_nt],
        }

    @staticmethod
    def from_dict(data: dict[str, Any]) -> IndexMap:
        """Rebuild an ``IndexMap`` from :meth:`to_dict` output (e.g. after JSON).

        Raises ``ValueError`` if the first key is not the intercept or a key
        repeats, ``TypeError`` if a key is not a ``[name, term]`` pair.
        """
        imap = IndexMap(data["intercept_name"], data["intercept_term"])
        for i, pair in enumerate(data["name_terms"]):
            field = f"name_terms[{i}]"
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise input_error(field, pair, "must be a [name, term] pair", error=TypeError)
            name_term = (pair[0], pair[1])
            if i == 0 and name_term != imap.intercept_nt:
                raise input_error(field, pair, f"must be the intercept {imap.intercept_nt!r}")
            if i > 0 and name_term in imap:
                raise input_error(field, pair, "must be unique")
            imap.push(name_term)
        return imap

    @staticmethod
    def from_records_means_and_variances(
        training_records: Iterable[TrainingRecord],
        coefficient_mean: Iterable[Feature],
        coefficient_vars: Iterable[Feature],
    ) -> tuple[IndexMap, dict[str, int]]:
        """Index the coefficients' keys first, then the records' keys (as Lambda Learner).

        Returns:
          The map and metadata ``{"num_nts_in_both", "num_nts_in_coeffs_only",
          "num_nts_in_records_only"}``, computed exactly as Lambda Learner does
          (the intercept counts as already indexed).
        """
        imap = IndexMap()
        coeff_nts = [feature.name_term for feature in chain(coefficient_mean, coefficient_vars)]
        num_coeff_nts_added, _ = imap.batch_push(coeff_nts)
        record_nts = chain.from_iterable(record.name_terms for record in training_records)
        num_record_nts_added, num_record_nts_seen = imap.batch_push(record_nts)
        num_nts_in_both = num_record_nts_seen - num_record_nts_added
        metadata = {
            "num_nts_in_both": num_nts_in_both,
            "num_nts_in_coeffs_only": num_coeff_nts_added - num_nts_in_both,
            "num_nts_in_records_only": num_record_nts_added,
        }
        return imap, metadata


def _unknown_key_error(name_term: Any) -> IndexError:
    return IndexError(f"NameTerm {name_term!r} does not exist in the index map")


# ---------------------------------------------------------------------------
# NTV JSON lines: validation
# ---------------------------------------------------------------------------


class _Missing:
    """Stands for an absent field in error messages."""

    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()
_MAX_SHOWN_CHARS = 80


class _Location:
    """Where a record came from, for error messages: ``where`` string and entity key."""

    def __init__(self, where: str, entity: Any = None):
        self.where = where
        self.entity = entity

    def error(self, field: str, value: Any, reason: str, error: type = ValueError) -> Exception:
        return input_error(field, value, reason, entity=self.entity, where=self.where, error=error)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _required(obj: dict[str, Any], key: str, field: str, loc: _Location) -> Any:
    """``obj[key]``; ``ValueError`` if absent or null."""
    value = obj.get(key)
    if value is None:
        raise loc.error(field, _MISSING, "is invalid: the field is required")
    return value


def _finite_float(value: Any, field: str, loc: _Location) -> float:
    """``value`` as a finite float; ``TypeError`` if not a number, ``ValueError`` if not finite."""
    if not _is_number(value):
        raise loc.error(field, value, "must be a number", error=TypeError)
    try:
        result = float(value)
    except OverflowError:  # a huge JSON integer
        result = math.inf
    if not math.isfinite(result):
        raise loc.error(field, value, "must be finite")
    return result


def _string(value: Any, field: str, loc: _Location) -> str:
    if not isinstance(value, str):
        raise loc.error(field, value, "must be a string", error=TypeError)
    return value


def _entity_key(value: Any, field: str, loc: _Location) -> EntityKey:
    if isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    raise loc.error(field, value, "must be a string or an integer", error=TypeError)


def _parse_feature(obj: Any, field: str, loc: _Location) -> Feature:
    if not isinstance(obj, dict):
        raise loc.error(field, obj, "must be an object with name, term and value", error=TypeError)
    name = _string(_required(obj, "name", f"{field}.name", loc), f"{field}.name", loc)
    term = _string(_required(obj, "term", f"{field}.term", loc), f"{field}.term", loc)
    value = _finite_float(_required(obj, "value", f"{field}.value", loc), f"{field}.value", loc)
    return Feature(name, term, value)


def _parse_features(value: Any, loc: _Location) -> list[Feature]:
    if not isinstance(value, list):
        raise loc.error("features", value, "must be a list", error=TypeError)
    return [_parse_feature(item, f"features[{i}]", loc) for i, item in enumerate(value)]


def _optional_float(obj: dict[str, Any], key: str, default: float, loc: _Location) -> float:
    value = obj.get(key)
    return default if value is None else _finite_float(value, key, loc)


def _parse_item(obj: Any, entity_field: str, where: str) -> tuple[EntityKey, TrainingRecord]:
    """Validate one decoded JSON object and build ``(entity, TrainingRecord)``."""
    loc = _Location(where)
    if not isinstance(obj, dict):
        raise loc.error("<record>", obj, "must be a JSON object", error=TypeError)
    loc.entity = _entity_key(_required(obj, entity_field, entity_field, loc), entity_field, loc)
    label = _finite_float(_required(obj, "label", "label", loc), "label", loc)
    weight = _optional_float(obj, "weight", 1.0, loc)
    if weight < 0:
        raise loc.error("weight", weight, "must be non-negative")
    offset = _optional_float(obj, "offset", 0.0, loc)
    features = _parse_features(_required(obj, "features", "features", loc), loc)
    context = obj.get("context")
    if context is not None and not isinstance(context, dict):
        raise loc.error("context", context, "must be an object", error=TypeError)
    return loc.entity, TrainingRecord(label, weight, offset, features, context)


def _shown_line(line: str | bytes) -> str:
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    text = text.strip()
    return text if len(text) <= _MAX_SHOWN_CHARS else text[:_MAX_SHOWN_CHARS] + "..."


class _DuplicateKey(Exception):
    """A key repeated in one JSON object (``args[0]`` is the key)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` of :func:`json.loads`: the object as a dict; :class:`_DuplicateKey` if a key repeats."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def _decode_line(line: str | bytes, loc: _Location) -> Any:
    """Decode one line (UTF-8 text or bytes) as JSON; every failure is a ``ValueError`` naming the line."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise loc.error("<json>", _shown_line(line), f"is not valid UTF-8 (byte {exc.start})") from None
    elif not line.isascii():
        try:  # undecodable bytes of a file come here as lone surrogates (errors="surrogateescape")
            line.encode("utf-8")
        except UnicodeEncodeError as exc:
            shown = _shown_line(line.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
            raise loc.error("<json>", shown, f"is not valid UTF-8 (character {exc.start})") from None
    try:
        return json.loads(line, object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        raise loc.error("<json>", _shown_line(line),
                        f"is not valid NTV: the key {exc.args[0]!r} appears twice in one JSON object (duplicate "
                        "keys are rejected, not resolved to the last value)") from None
    except json.JSONDecodeError as exc:
        raise loc.error("<json>", _shown_line(line), f"is not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise loc.error("<json>", _shown_line(line), "is not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise loc.error("<json>", _shown_line(line), f"is not valid JSON ({exc})") from None


def _shown_context(context: Any) -> str:
    text = repr(context)
    return text if len(text) <= _MAX_SHOWN_CHARS else text[:_MAX_SHOWN_CHARS] + "..."


def _record_to_obj(entity: Any, record: TrainingRecord, entity_field: str) -> dict[str, Any]:
    """The JSON object for one record (values as stored, not validated)."""
    obj: dict[str, Any] = {
        entity_field: entity,
        "label": record.raw_label,
        "weight": record.weight,
        "offset": record.offset,
        "features": [{"name": f.name, "term": f.term, "value": f.value} for f in record.features],
    }
    if record.context is not None:
        obj["context"] = record.context
    return obj


# ---------------------------------------------------------------------------
# NTV JSON lines: reading and writing
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def _open_text(path_or_file: PathOrFile, mode: str) -> Iterator[tuple[IO, str]]:
    """Yield ``(file, display_name)``; open and close paths, leave file objects open."""
    if isinstance(path_or_file, (str, os.PathLike)):
        with open(path_or_file, mode, encoding="utf-8") as f:
            yield f, os.fspath(path_or_file)
    else:
        yield path_or_file, str(getattr(path_or_file, "name", "<stream>"))


@contextlib.contextmanager
def _open_lines(path_or_file: PathOrFile) -> Iterator[tuple[Any, str]]:
    """Yield ``(lines, display_name)`` for reading. Paths are opened as UTF-8, keeping undecodable
    bytes (as lone surrogates) for :func:`_decode_line` to report with their line number."""
    if isinstance(path_or_file, (str, bytes, os.PathLike)):
        with open(path_or_file, encoding="utf-8", errors="surrogateescape") as f:
            yield f, os.fsdecode(path_or_file)
    elif hasattr(path_or_file, "__iter__"):
        yield path_or_file, str(getattr(path_or_file, "name", "<stream>"))
    else:
        raise input_error("path_or_file", type(path_or_file).__name__, "must be a path or an open file",
                          error=TypeError)


def _numbered_lines(lines: Any, source: str) -> Iterator[tuple[int, str | bytes]]:
    """``(lineno, line)`` from 1; a text stream that cannot decode its bytes raises ``ValueError`` with the line."""
    iterator = iter(lines)
    lineno = 0
    while True:
        try:
            line = next(iterator)
        except StopIteration:
            return
        except UnicodeDecodeError as exc:
            raise input_error("<json>", f"<bytes {exc.object[exc.start:exc.start + 8]!r}>",
                              f"is not valid {exc.encoding} ({exc.reason})",
                              where=f"{source} line {lineno + 1} or after") from None
        lineno += 1
        if not isinstance(line, (str, bytes)):
            raise input_error("path_or_file", f"<{type(line).__name__} line>", "must yield str or bytes lines",
                              where=f"{source} line {lineno}", error=TypeError)
        if lineno == 1:  # a byte order mark is not part of the first record
            line = line.removeprefix(b"\xef\xbb\xbf") if isinstance(line, bytes) else line.removeprefix("\ufeff")
        yield lineno, line


def iter_ntv_jsonl(path_or_file: PathOrFile, entity_field: str = "uid") -> Iterator[tuple[EntityKey, TrainingRecord]]:
    """Yield ``(entity_key, TrainingRecord)`` for each non-blank line of an NTV JSON lines file.

    Args:
      path_or_file: a path (read as UTF-8), or an open file, text or binary (left open).
      entity_field: name of the JSON field holding the entity key (a string or
        an integer).

    Numbers are stored as Python floats; ``weight`` defaults to 1.0 and
    ``offset`` to 0.0 when absent or null.

    Raises:
      ValueError: a line that is not valid UTF-8 or not valid JSON (including JSON
        nested too deeply for Python's parser and integers of more than 4300 digits),
        a missing required field, a non-finite number (including ``NaN``/``Infinity``
        tokens and numbers beyond the float range) or a negative weight.
      TypeError: a field of the wrong type (booleans are not numbers), or
        ``path_or_file`` that is neither a path nor a file.
      Messages name the file and line, the entity when known, the field
      (e.g. ``features[2].value``) and the value. Only opening a path can raise
      something else: ``OSError`` (e.g. ``FileNotFoundError``).
    """
    with _open_lines(path_or_file) as (f, source):
        for lineno, line in _numbered_lines(f, source):
            if not line.strip():
                continue
            where = f"{source} line {lineno}"
            obj = _decode_line(line, _Location(where))
            yield _parse_item(obj, entity_field, where)


def read_ntv_jsonl(path_or_file: PathOrFile, entity_field: str = "uid") -> list[tuple[EntityKey, TrainingRecord]]:
    """Read a whole NTV JSON lines file into a list; see :func:`iter_ntv_jsonl` (same records, same errors).

    A path or a binary file is parsed by ``pyarrow.json`` when pyarrow is installed and the file is in
    the usual form: one object per line, ``\n`` or ``\r\n`` line ends, no blank lines (what
    :func:`write_ntv_jsonl` writes). Its columns are validated with vectorized checks and the records
    are built in one pass (about 5-10x the pure-Python parser's records/s: ``benchmarks/bench_ntv.py``).
    Anything else (a text stream, another form, any value the checks reject, JSON that pyarrow cannot
    put in typed columns, e.g. ``context`` objects whose fields change type from line to line) is
    read by the pure-Python parser of :func:`iter_ntv_jsonl`, which names the file,
    line, entity, field and value of the first bad one. A binary file is read whole first.
    """
    if isinstance(path_or_file, (str, bytes, os.PathLike)):
        with open(path_or_file, "rb") as f:
            data = f.read()
    elif isinstance(path_or_file, (io.RawIOBase, io.BufferedIOBase)):
        data = path_or_file.read()
    else:  # text streams and iterables of lines: line by line
        with _gc_paused():
            return list(iter_ntv_jsonl(path_or_file, entity_field))
    with _gc_paused():
        items = _read_columnar(data, entity_field)
        if items is None:  # read again as the pure-Python parser reads this input: a path as text
            if isinstance(path_or_file, (str, bytes, os.PathLike)):
                items = list(iter_ntv_jsonl(path_or_file, entity_field))
            else:  # the bytes already read, as the stream's lines, under its name
                stream = io.BytesIO(data)
                if hasattr(path_or_file, "name"):
                    stream.name = path_or_file.name
                items = list(iter_ntv_jsonl(stream, entity_field))
    return items


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while millions of small acyclic objects are built (each
    collection would scan them all again: 3-5x slower), then restore its previous state."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


_BOM = b"\xef\xbb\xbf"


def ntv_arrow_table(data: bytes, entity_field: str = "uid") -> tuple[Any, bytes] | None:
    """``(table, body)``: the NTV JSON lines ``data`` parsed by ``pyarrow.json`` and checked, or ``None``
    when pyarrow is not installed or the input is not certainly read the same as the pure-Python parser
    would (then that parser must read it, to give the exact records or the exact error).

    Accepted: the usual form, one ``{...}`` object per line (``\n`` or ``\r\n`` line ends, a leading
    byte order mark, no blank lines), so that row ``i`` is line ``i + 1`` (of ``body``, the data with
    ``\r\n`` as ``\n``); columns of the documented types (entity: string or int64; label: number;
    weight and offset: numbers or null; features: a list of ``{name: string, term: string, value:
    number}``); every number finite, weights non-negative. ``pyarrow.json`` itself rejects what the
    pure-Python parser rejects (duplicate keys, control characters in strings, lone surrogates). The
    ``context`` column is not checked here (its dicts are decoded from the lines themselves).
    """
    try:
        import pyarrow as pa
        import pyarrow.json as pj
    except ImportError:
        return None
    if entity_field in ("label", "weight", "offset", "features", "context"):
        return None
    body = data
    if body.startswith(_BOM):
        body = body[len(_BOM):]
    if b"\r" in body:
        body = body.replace(b"\r\n", b"\n")
        if b"\r" in body:  # a lone \r ends a line for Python's text files, not for pyarrow
            return None
    end = len(body) - 1 if body.endswith(b"\n") else len(body)  # the final line end (no copy of the data)
    if end <= 0 or body[:1] != b"{" or body[end - 1:end] != b"}":
        return None
    # Every line starts with "{" and ends with "}": no object spans two lines ("}" then "{" is never valid
    # inside one JSON value), so with as many rows as lines, each line holds exactly one object.
    lines = body.count(b"\n", 0, end) + 1
    if body.count(b"}\n{", 0, end) != lines - 1:
        return None
    if not body.isascii():
        try:
            body.decode("utf-8")  # what the pure-Python parser requires (pyarrow checks strings only)
        except UnicodeDecodeError:
            return None
    try:
        table = pj.read_json(pa.BufferReader(body), read_options=pj.ReadOptions(block_size=1 << 22))
    except Exception:  # any failure: the pure-Python parser reads it and names the line
        return None
    if table.num_rows != lines or not _columns_ok(table, body, entity_field):
        return None
    return table, body


def _columns_ok(table: Any, body: bytes, entity_field: str) -> bool:
    """Whether the columns hold what the pure-Python parser accepts, read the same way."""
    import pyarrow as pa

    names = table.column_names
    if entity_field not in names or "label" not in names or "features" not in names:
        return False
    entity = table.column(entity_field)
    if entity.null_count or entity.type not in (pa.string(), pa.large_string(), pa.int64()):
        return False
    numbers = [(table.column("label"), False, False)]
    for name in ("weight", "offset"):
        if name in names and table.column(name).type != pa.null():
            numbers.append((table.column(name), True, name == "weight"))
    features = table.column("features")
    if features.null_count or not pa.types.is_list(features.type):
        return False
    item = features.type.value_type
    if item != pa.null():
        if not pa.types.is_struct(item) or any(item.get_field_index(f) < 0 for f in ("name", "term", "value")):
            return False
        flat = features.combine_chunks().values if features.num_chunks else pa.array([], item)
        if flat.null_count:
            return False
        for field in ("name", "term"):
            column = flat.field(field)
            if column.null_count or column.type not in (pa.string(), pa.large_string()):
                return False
        numbers.append((flat.field("value"), False, False))
    elif features.combine_chunks().values.null_count if features.num_chunks else False:
        return False
    negative_zero = False
    for column, nullable, nonnegative in numbers:
        if (column.null_count and not nullable) or column.type not in (pa.float64(), pa.int64()):
            return False
        values = _float_values(column, 0.0)
        if not np.isfinite(values).all() or (nonnegative and values.min(initial=0.0) < 0):
            return False
        # The integer token "-0" is 0 for Python's json (then 0.0), but -0.0 for pyarrow in a column of floats
        negative_zero = negative_zero or (column.type == pa.float64() and bool(np.signbit(values[values == 0]).any()))
    return not negative_zero or re.search(rb"-0(?![.eE0-9])", body) is None


def _float_values(column: Any, default: float) -> np.ndarray:
    """A numeric Arrow column (int64, float64 or null) as a float64 NumPy array, nulls as ``default``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if column.type == pa.null():
        return np.full(len(column), default)
    if column.null_count:
        column = pc.fill_null(column, default)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)


def _python_strings(column: Any) -> list[str]:
    """A string Arrow column as a list of Python ``str``; repeated strings share one object (hashing, not
    one ``str`` built per element)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    encoded = pc.dictionary_encode(column)
    words = np.array(encoded.dictionary.to_pylist() + [None], dtype=object)[:-1]
    return words[encoded.indices.to_numpy(zero_copy_only=False)].tolist()


def _read_columnar(data: bytes, entity_field: str) -> list[tuple[EntityKey, TrainingRecord]] | None:
    """The records of ``data`` through :func:`ntv_arrow_table`, or ``None`` when the pure-Python parser must
    read it."""
    parsed = ntv_arrow_table(data, entity_field)
    if parsed is None:
        return None
    table, body = parsed
    import pyarrow as pa

    n = table.num_rows
    names = table.column_names
    contexts: Any = None
    if "context" in names and table.column("context").null_count != n:
        contexts = _contexts(table.column("context"), body)
        if contexts is None:
            return None
    entity = table.column(entity_field)
    keys = entity.to_numpy().tolist() if entity.type == pa.int64() else _python_strings(entity)
    label = _float_values(table.column("label"), 0.0).tolist()
    weight = _float_values(table.column("weight"), 1.0).tolist() if "weight" in names else [1.0] * n
    offset = _float_values(table.column("offset"), 0.0).tolist() if "offset" in names else [0.0] * n
    column = table.column("features").combine_chunks()
    bounds = column.offsets.to_numpy().tolist()
    if column.type.value_type == pa.null():
        features: list = []
    else:
        flat = column.values
        features = list(map(Feature, _python_strings(flat.field("name")), _python_strings(flat.field("term")),
                            _float_values(flat.field("value"), 0.0).tolist()))
    lists = [features[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    records = list(map(TrainingRecord, label, weight, offset, lists, contexts if contexts is not None else [None] * n))
    return list(zip(keys, records))


def _contexts(column: Any, body: bytes) -> list | None:
    """Each row's ``context`` dict, decoded from its own line by :func:`json.loads` (exactly as the pure-Python
    parser does), ``None`` for rows without one; ``None`` overall if one is not an object."""
    present = np.flatnonzero(column.is_valid().to_numpy(zero_copy_only=False))
    lines = body.split(b"\n")
    contexts: list = [None] * len(column)
    for i in present.tolist():
        try:
            context = json.loads(lines[i], object_pairs_hook=_unique_keys).get("context")
        except (ValueError, RecursionError, _DuplicateKey):
            return None
        if not isinstance(context, dict):
            return None
        contexts[i] = context
    return contexts


def write_ntv_jsonl(
    path_or_file: PathOrFile,
    items: Iterable[tuple[EntityKey, TrainingRecord]],
    entity_field: str = "uid",
) -> int:
    """Write ``(entity_key, TrainingRecord)`` pairs as NTV JSON lines; return the number written.

    Each record is validated with the reader's rules first (errors name the
    record number instead of a line), so every file written can be read back;
    the label written is ``raw_label``. Floats are written with ``repr``
    precision, so reading back gives the same floats.

    A path is written atomically: the lines go to a temporary file next to it, which replaces
    ``path`` only when every record was written (fsynced, then renamed; a symbolic link at ``path``
    is followed and kept; the file gets the permissions of an ordinary new file). If a record is bad,
    or anything fails part-way, an existing file at ``path`` is left as it was. An open file is
    written line by line: the records before a bad one are in it.
    """
    if isinstance(path_or_file, (str, bytes, os.PathLike)):
        source = os.fsdecode(path_or_file)
        count = 0

        def write(f: IO[bytes]) -> None:
            nonlocal count
            text = io.TextIOWrapper(f, encoding="utf-8", newline="\n", write_through=False)
            count = _write_lines(text, items, entity_field, source)
            text.flush()
            text.detach()

        _atomic_write(path_or_file, write)
        return count
    with _open_text(path_or_file, "w") as (f, source):
        return _write_lines(f, items, entity_field, source)


def _write_lines(f: IO[str], items: Iterable[tuple[EntityKey, TrainingRecord]], entity_field: str,
                 source: str) -> int:
    count = 0
    for count, (entity, record) in enumerate(items, start=1):
        raw = _record_to_obj(entity, record, entity_field)
        where = f"{source} record {count}"
        entity_key, clean = _parse_item(raw, entity_field, where)
        try:
            line = json.dumps(_record_to_obj(entity_key, clean, entity_field), allow_nan=False)
            if clean.context is not None:  # e.g. keys 1 and "1" would both be written as "1"
                json.loads(line, object_pairs_hook=_unique_keys)
        except _DuplicateKey as exc:
            raise input_error("context", _shown_context(clean.context),
                              f"cannot be written as JSON (two keys are both written as {exc.args[0]!r})",
                              entity=entity_key, where=where) from None
        except (TypeError, ValueError, RecursionError) as exc:  # only the free-form context can fail here
            error = TypeError if isinstance(exc, TypeError) else ValueError
            raise input_error("context", _shown_context(clean.context), f"cannot be written as JSON ({exc})",
                              entity=entity_key, where=where, error=error) from None
        f.write(line + "\n")
    return count


def _atomic_write(path: str | bytes | os.PathLike, write: Any) -> None:
    """Call ``write(binary_file)`` on a new temporary file next to ``path``, fsync it, then rename it over
    ``path``: readers see the old file or the complete new one, never a partial one; on any error the
    temporary file is removed and ``path`` is untouched. A symbolic link at ``path`` is followed (the
    file it points to is replaced, the link kept); the file gets mode ``0o666`` less the umask."""
    target = os.path.realpath(os.fsdecode(path))
    directory, name = os.path.split(target)
    while True:
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
