"""Saving and loading a :class:`RandomEffectModel`: one versioned ``.npz`` file, written atomically.

Layout (NumPy ``.npz``, a zip of ``.npy`` arrays, stored uncompressed, no pickles), format version 2:

- ``metadata``: a JSON string: ``format``, ``format_version``, ``lljax_version``, the
  hyper-parameters, ``dtype``, ``precision`` (``"full"``, ``"diagonal"`` or ``null``), the
  ``index_map`` (or ``null``), ``num_entities`` and ``key_type`` (``"int"``, ``"str"`` or ``null``);
- the entity keys: ``keys (U,)`` int64 for integer keys; for string keys ``key_text (B,)`` uint8, the
  UTF-8 bytes of all keys one after the other, and ``key_lengths (U,)`` int64, each key's length in
  characters (variable-width: one long key does not widen the others, as a fixed-width array would);
- ``indptr (U+1,)``, ``feature_ids (P,)``, ``means (P,)`` and, unless the model keeps no precision,
  ``precision`` (``(P,)`` diagonals, or the ``(d_u, d_u)`` full matrices flattened one after the
  other): :class:`~lljax.state.store.FlatEntities`.

Version 1 files (keys as one ``int64`` or fixed-width unicode array) are still read.

Atomicity: the file is written under a temporary name in the target's directory, flushed
and fsync-ed, then renamed over the target with :func:`os.replace` (atomic on POSIX and
Windows). A crash at any point leaves either the previous file or the new one, never a mix.
The new file gets the permissions of an ordinary new file (``0o666`` less the umask). When
``path`` is a symbolic link, the file it points to is replaced and the link is kept (as
``open(path, "w")`` would write through it).

Loading trusts nothing in the file: it checks the zip's entries and each array's declared dtype
and shape *before* reading it (so a zip bomb or a huge declared shape is rejected before anything
larger than the file is allocated), then the metadata and every array (dtypes, lengths, offsets,
sorted unique feature ids, finite means, finite symmetric positive semi-definite precisions, unique
keys). Every failure is a :class:`ModelFileError` naming the file and the array or field.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np

from lljax.data.dataset import check_entity_keys
from lljax.data.ntv import IndexMap
from lljax.state.store import EntityStore, FlatEntities

__all__ = ["ModelFileError", "FORMAT_NAME", "FORMAT_VERSION", "save_model", "load_model", "atomic_write",
           "HYPERPARAMETERS", "check_precisions"]

FORMAT_NAME = "lljax.RandomEffectModel"
FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)

HYPERPARAMETERS = ("loss", "l2", "delta", "hessian", "max_iter", "tol", "memory_budget", "min_rows", "max_rows",
                   "penalize_intercept")
# Hyper-parameters added after format version 2 was fixed: a file without them has their defaults.
_ADDED_HYPERPARAMETERS = frozenset({"penalize_intercept"})

# Loading allocates at most this multiple of the file's size (plus _SLACK_BYTES) for the arrays it
# reads: our files are stored uncompressed, so their arrays are no larger than the file.
_INFLATE_RATIO = 4
_SLACK_BYTES = 1 << 16
_INT64 = np.dtype(np.int64)


class ModelFileError(ValueError):
    """A model file that cannot be loaded: not an lljax model, another format version, or corrupt."""


def save_model(model: Any, path: str | os.PathLike) -> None:
    """Write ``model`` to ``path`` atomically (see the module docstring)."""
    from lljax.version import __version__

    store = model.store
    flat = store.to_flat() if store is not None else None
    key_type = None if store is None else store.key_kind
    keys = [] if store is None else store.keys  # insertion order: the order of to_flat()
    if key_type is None and keys:
        key_type = "str" if isinstance(keys[0], str) else "int"
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "lljax_version": __version__,
        "hyperparameters": {name: getattr(model, name) for name in HYPERPARAMETERS},
        "dtype": None if store is None else store.dtype.name,
        "precision": None if store is None else store.precision,
        "index_map": None if model.index_map is None else model.index_map.to_dict(),
        "num_entities": len(keys),
        "key_type": key_type,
    }
    arrays = {"metadata": np.array(json.dumps(metadata, allow_nan=False))}
    if flat is not None:
        if key_type == "str":
            arrays["key_text"] = np.frombuffer("".join(keys).encode("utf-8"), np.uint8)
            arrays["key_lengths"] = np.fromiter(map(len, keys), np.int64, count=len(keys))
        else:
            arrays["keys"] = np.array(keys, np.int64) if keys else np.zeros(0, np.int64)
        arrays.update(indptr=flat.indptr, feature_ids=flat.feature_ids, means=flat.means)
        if flat.precision is not None:
            arrays["precision"] = flat.precision
    # mypy checks a **dict against every keyword parameter, numpy's allow_pickle: bool included (numpy < 2.1 has
    # none); these keys are array names.
    atomic_write(path, lambda f: np.savez(f, **arrays))  # type: ignore[arg-type]


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None]) -> None:
    """Call ``write(binary_file)`` on a temporary file next to ``path``, fsync it, then rename it
    over ``path``: readers see the old file or the complete new one, never a partial one.

    The file gets the permissions of an ordinary new file (``0o666`` less the umask). A symbolic
    link at ``path`` is followed: the file it points to is replaced, the link is kept."""
    path = os.path.realpath(os.fspath(path))
    directory = os.path.dirname(path)
    while True:
        tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
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
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- loading ------------------------------------------------------------------------------------

# The arrays a file may hold, with the dtype each must have (None: the model's float dtype; "U":
# a unicode string).
_ARRAYS = {"metadata": "U", "keys": None, "key_text": np.dtype(np.uint8), "key_lengths": _INT64,
           "indptr": _INT64, "feature_ids": _INT64, "means": None, "precision": None}


def load_model(path: str | os.PathLike, model_class: type) -> Any:
    """Read a model written by :func:`save_model`; :class:`ModelFileError` on any problem."""
    path = os.fspath(path)
    arrays = _read_arrays(path)
    metadata = _metadata(path, arrays)
    hyper = metadata["hyperparameters"]
    index_map = metadata["index_map"]
    try:
        model = model_class(**hyper, index_map=index_map)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ModelFileError(f"{path}: field 'hyperparameters': value {hyper} is invalid ({exc})") from exc
    if metadata["dtype"] is None:  # a model that never stored anything: nothing else may be in the file
        extra = sorted(set(arrays) - {"metadata"})
        if extra or metadata["num_entities"] or metadata["precision"] is not None:
            raise _fail(path, "dtype", None, f"says no entity is stored, but the file has num_entities="
                        f"{metadata['num_entities']}, precision={metadata['precision']!r} and arrays {extra}")
    else:
        flat = _flat_entities(path, arrays, metadata, index_map)
        store = EntityStore.from_flat(flat, np.dtype(metadata["dtype"]), metadata["precision"])
        try:
            model.store = store
        except (TypeError, ValueError) as exc:
            raise ModelFileError(f"{path}: field 'precision': value {metadata['precision']!r} does not match "
                                 f"hessian={hyper['hessian']!r} ({exc})") from exc
    return model


def _read_arrays(path: str) -> dict[str, np.ndarray]:
    """Every array of the file, after checking each entry's declared size, dtype and shape against the
    file's size before reading it."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            if fh.read(6) == b"\x93NUMPY":
                raise ModelFileError(f"{path}: not an lljax model file (a bare .npy array)")
            fh.seek(0)
            with zipfile.ZipFile(fh) as zf:
                infos = zf.infolist()
                _check_entries(path, infos, size)
                return {info.filename[:-4]: _read_member(path, zf, info) for info in infos}
    except ModelFileError:
        raise
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, KeyError, TypeError,
            NotImplementedError, RuntimeError, OverflowError, MemoryError, SyntaxError) as exc:
        raise ModelFileError(f"{path}: not a readable lljax model file ({type(exc).__name__}: {exc})") from exc


def _check_entries(path: str, infos: list, size: int) -> None:
    names = [info.filename for info in infos]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ModelFileError(f"{path}: corrupt file: entry {dup!r} appears twice in the archive")
    for info in infos:
        if not info.filename.endswith(".npy") or info.filename[:-4] not in _ARRAYS:
            raise ModelFileError(f"{path}: not an lljax model file (unexpected entry {info.filename!r})")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ModelFileError(f"{path}: array {info.filename[:-4]!r}: compression method {info.compress_type} "
                                 "is not supported")
    declared = sum(info.file_size for info in infos)
    if declared > _INFLATE_RATIO * size + _SLACK_BYTES:
        raise ModelFileError(f"{path}: corrupt file: its entries declare {declared} bytes uncompressed, more than "
                             f"{_INFLATE_RATIO}x the file's {size} bytes (a zip bomb?); nothing was inflated")


def _read_member(path: str, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """One ``.npy`` entry, its header checked (dtype, no objects, shape matching the entry's size)
    before its data is read into an array of exactly the declared size."""
    name = info.filename[:-4]
    fmt = np.lib.format
    with zf.open(info) as fp:
        assert isinstance(fp, zipfile.ZipExtFile)  # what open gives in mode "r" (typed as IO[bytes], no readinto)
        version = fmt.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(fp)
        else:
            raise ModelFileError(f"{path}: array {name!r}: .npy format version {version} is not supported")
        header = fp.tell()
        if dtype.hasobject or dtype.kind not in "iufcbU" or dtype.fields is not None or dtype.subdtype is not None:
            raise ModelFileError(f"{path}: array {name!r}: dtype {dtype} is not allowed in a model file")
        if any(not isinstance(n, int) or n < 0 for n in shape):
            raise ModelFileError(f"{path}: array {name!r}: invalid shape {shape}")
        count = math.prod(shape)
        nbytes = count * dtype.itemsize
        if header + nbytes != info.file_size:
            raise ModelFileError(f"{path}: array {name!r}: declared shape {shape} of {dtype} ({nbytes} bytes) does "
                                 f"not match the {info.file_size - header} bytes the file holds for it")
        out = np.empty(count, dtype)
        view = out.data.cast("B")
        got = 0
        while got < nbytes:
            n = fp.readinto(view[got:])
            if not n:
                raise ModelFileError(f"{path}: array {name!r}: truncated data ({got} of {nbytes} bytes)")
            got += n
        fp.read(1)  # reach the end of the entry: the zip CRC of the data is checked there
    return out.reshape(shape, order="F" if fortran else "C")


def _fail(path: str, field: str, value: Any, reason: str) -> ModelFileError:
    return ModelFileError(f"{path}: field {field!r}: value {value!r} {reason}")


def _metadata(path: str, arrays: dict[str, np.ndarray]) -> dict:
    """The metadata, every field checked (types, allowed values, the index map rebuilt)."""
    raw = arrays.get("metadata")
    if raw is None:
        raise ModelFileError(f"{path}: not an lljax model file (no 'metadata' entry)")
    if raw.shape != () or raw.dtype.kind != "U":
        raise ModelFileError(f"{path}: array 'metadata': dtype {raw.dtype} and shape {raw.shape} are not a JSON string")
    try:
        metadata = json.loads(str(raw), parse_constant=_reject_constant)
    except (json.JSONDecodeError, ValueError, RecursionError) as exc:
        raise ModelFileError(f"{path}: corrupt metadata ({exc})") from exc
    if not isinstance(metadata, dict):
        raise ModelFileError(f"{path}: corrupt metadata (not a JSON object)")
    if metadata.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{path}: not an lljax model file (format {metadata.get('format')!r})")
    version = metadata.get("format_version")
    if isinstance(version, bool) or version not in _READABLE_VERSIONS:
        raise ModelFileError(f"{path}: format version {version!r}, but this lljax reads versions "
                             f"{list(_READABLE_VERSIONS)} (written by lljax {metadata.get('lljax_version')!r})")
    required = {"hyperparameters", "dtype", "precision", "index_map", "num_entities"} | (
        {"key_type"} if version >= 2 else set())
    missing = required - set(metadata)
    if missing:
        raise ModelFileError(f"{path}: corrupt metadata, missing {sorted(missing)}")
    hyper = metadata["hyperparameters"]
    if not isinstance(hyper, dict) or not set(HYPERPARAMETERS) - _ADDED_HYPERPARAMETERS <= set(hyper) <= set(
            HYPERPARAMETERS):
        raise _fail(path, "hyperparameters", hyper,
                    f"must be an object with exactly the fields {list(HYPERPARAMETERS)} (or without "
                    f"{sorted(_ADDED_HYPERPARAMETERS)}, in files written before they existed)")
    if metadata["dtype"] not in (None, "float32", "float64"):
        raise _fail(path, "dtype", metadata["dtype"], "must be 'float32', 'float64' or null")
    if metadata["precision"] not in (None, "full", "diagonal"):
        raise _fail(path, "precision", metadata["precision"], "must be 'full', 'diagonal' or null")
    count = metadata["num_entities"]
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise _fail(path, "num_entities", count, "must be an int >= 0")
    key_type = metadata.get("key_type")
    if key_type not in (None, "int", "str"):
        raise _fail(path, "key_type", key_type, "must be 'int', 'str' or null")
    if key_type is None and count and version >= 2:
        raise _fail(path, "key_type", key_type, f"must be 'int' or 'str' for {count} entities")
    metadata["index_map"] = _index_map(path, metadata["index_map"])
    return metadata


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number")


def _index_map(path: str, data: Any) -> IndexMap | None:
    if data is None:
        return None
    fields = {"intercept_name", "intercept_term", "name_terms"}
    if not isinstance(data, dict) or set(data) != fields:
        raise _fail(path, "index_map", _short(data), f"must be null or an object with the fields {sorted(fields)}")
    pairs = data["name_terms"]
    if not isinstance(pairs, list) or not all(
            isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], str) for p in pairs):
        raise _fail(path, "index_map.name_terms", _short(pairs), "must be a list of [name, term] string pairs")
    if not isinstance(data["intercept_name"], str) or not isinstance(data["intercept_term"], str):
        raise _fail(path, "index_map.intercept_name", _short(data), "and intercept_term must be strings")
    try:
        return IndexMap.from_dict(data)
    except (TypeError, ValueError, KeyError) as exc:
        raise _fail(path, "index_map", _short(data), f"is invalid ({exc})") from exc


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _flat_entities(path: str, arrays: dict[str, np.ndarray], metadata: dict, index_map: IndexMap | None
                   ) -> FlatEntities:
    """The stored entities, after checking every array (vectorized) and that they fit together."""
    dtype = np.dtype(metadata["dtype"])
    kind = metadata["precision"]
    U = metadata["num_entities"]
    keys = _keys(path, arrays, metadata)
    names = ["indptr", "feature_ids", "means"] + (["precision"] if kind else [])
    missing = [name for name in names if name not in arrays]
    if missing:
        raise ModelFileError(f"{path}: corrupt file, missing arrays {missing}")
    if not kind and "precision" in arrays:
        raise ModelFileError(f"{path}: array 'precision': present, but the metadata says the model keeps none")
    for name in names:
        _check_array(path, name, arrays[name], dtype if name in ("means", "precision") else _INT64)
    indptr, fids, means = arrays["indptr"], arrays["feature_ids"], arrays["means"]
    P = len(fids)
    if keys.shape != (U,):
        raise _fail(path, "keys", f"<{len(keys)} keys>", f"do not match num_entities={U}")
    if indptr.shape != (U + 1,):
        raise _fail(path, "indptr", f"<array of shape {indptr.shape}>", f"must have shape ({U + 1},) for {U} entities")
    if indptr[0] != 0 or indptr[-1] != P or (U and np.diff(indptr).min() < 0):
        raise _fail(path, "indptr", _short(indptr.tolist()), f"is not a valid offset array (0 .. {P}, non-decreasing)")
    if means.shape != (P,):
        raise _fail(path, "means", f"<array of shape {means.shape}>", f"must have shape ({P},) like feature_ids")
    sizes = np.diff(indptr)
    owner = np.repeat(np.arange(U), sizes)
    if P and fids.min() < 0:
        i = int(np.argmin(fids))
        raise _entity_fail(path, "feature_ids", int(fids[i]), "must be >= 0", keys, owner[i])
    if P and index_map is not None and fids.max() >= len(index_map):
        i = int(np.argmax(fids))
        raise _entity_fail(path, "feature_ids", int(fids[i]), f"is outside the index map's {len(index_map)} features",
                           keys, owner[i])
    if P > 1:
        step_ok = np.diff(fids) > 0
        step_ok[indptr[1:-1][(indptr[1:-1] > 0) & (indptr[1:-1] < P)] - 1] = True  # a new entity starts there
        if not step_ok.all():
            i = int(np.argmin(step_ok)) + 1
            raise _entity_fail(path, "feature_ids", int(fids[i]), "must be sorted and unique within each entity "
                               f"(previous id {int(fids[i - 1])})", keys, owner[i])
    bad = ~np.isfinite(means)
    if bad.any():
        i = int(np.argmax(bad))
        raise _entity_fail(path, "means", float(means[i]), "must be finite", keys, owner[i])
    precision = arrays.get("precision") if kind else None
    if precision is not None:
        if kind == "full":
            if float(np.sum(sizes.astype(np.float64) ** 2)) > 2.0**62:
                raise _fail(path, "indptr", _short(indptr.tolist()), "declares full precisions too large to hold")
            expected = int((sizes**2).sum())
        else:
            expected = P
        if precision.shape != (expected,):
            raise _fail(path, "precision", f"<array of shape {precision.shape}>", f"must have shape ({expected},)")
        problem = check_precisions(precision, sizes, kind)
        if problem is not None:
            entity, value, reason = problem
            raise _entity_fail(path, "precision", value, reason, keys, entity)
    return FlatEntities(keys, indptr, fids, means, precision)


def _entity_fail(path: str, field: str, value: Any, reason: str, keys: np.ndarray, entity: int) -> ModelFileError:
    key = keys[int(entity)]
    key = key.item() if isinstance(key, np.generic) else key
    return ModelFileError(f"{path}: entity {key!r}, field {field!r}: value {value!r} {reason}")


def _check_array(path: str, name: str, array: np.ndarray, dtype: np.dtype) -> None:
    if array.dtype != dtype:
        raise _fail(path, name, f"<array of dtype {array.dtype}>", f"must have dtype {dtype}")
    if array.ndim != 1:
        raise _fail(path, name, f"<array of shape {array.shape}>", "must be one-dimensional")


def _keys(path: str, arrays: dict[str, np.ndarray], metadata: dict) -> np.ndarray:
    """The entity keys (int64, or an object array of str), checked: one type, unique, and (strings)
    valid UTF-8 without NUL characters, as the host edge accepts them."""
    key_type = metadata.get("key_type")
    if metadata["format_version"] == 1 and "keys" in arrays:  # version 1: int64 or fixed-width unicode
        keys = arrays["keys"]
        if keys.dtype.kind == "U" and keys.ndim == 1:
            keys = keys.astype(object)
        elif keys.dtype != _INT64:
            raise _fail(path, "keys", f"<array of dtype {keys.dtype}>", "must hold int64 or string entity keys")
    elif key_type == "str" or "key_text" in arrays:
        if "keys" in arrays or "key_text" not in arrays or "key_lengths" not in arrays:
            raise ModelFileError(f"{path}: corrupt file: string keys need the arrays 'key_text' and 'key_lengths' "
                                 "(and no 'keys')")
        text, lengths = arrays["key_text"], arrays["key_lengths"]
        _check_array(path, "key_text", text, np.dtype(np.uint8))
        _check_array(path, "key_lengths", lengths, _INT64)
        try:
            decoded = text.tobytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _fail(path, "key_text", f"<{len(text)} bytes>", f"is not valid UTF-8 ({exc.reason} at byte "
                        f"{exc.start})") from exc
        if len(lengths) and (lengths.min() < 0 or int(lengths.sum()) != len(decoded)):
            raise _fail(path, "key_lengths", _short(lengths.tolist()), f"do not add up to the {len(decoded)} "
                        "characters of key_text")
        ends = np.cumsum(lengths).tolist()
        keys = np.empty(len(lengths), object)
        keys[:] = list(map(decoded.__getitem__, map(slice, [0] + ends[:-1], ends)))
    else:
        if "keys" not in arrays:
            raise ModelFileError(f"{path}: corrupt file, missing arrays ['keys']")
        keys = arrays["keys"]
        _check_array(path, "keys", keys, _INT64)
    if key_type is not None and len(keys) and (key_type == "str") != (keys.dtype == object):
        raise _fail(path, "key_type", key_type, f"does not match the stored keys ({keys.dtype})")
    try:
        check_entity_keys(keys)
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: array 'keys': {exc}") from exc
    if len(keys) > 1 and len(set(keys.tolist())) != len(keys):
        unique, counts = np.unique(keys, return_counts=True)
        dup = unique[np.argmax(counts > 1)]
        raise _fail(path, "keys", dup.item() if isinstance(dup, np.generic) else dup, "appears twice (duplicate "
                    "entity keys)")
    return keys


def check_precisions(precision: np.ndarray, sizes: np.ndarray, kind: str) -> tuple[int, Any, str] | None:
    """``None`` if every entity's precision is finite, symmetric and positive semi-definite (diagonal:
    finite and >= 0), else ``(entity position, value, reason)`` for the first bad one.

    ``precision``: ``(P,)`` diagonals or ``(sum d_u^2,)`` row-major full matrices (``kind`` ``"diagonal"``
    or ``"full"``); ``sizes (U,)`` the entities' feature counts. Vectorized per width: the full check is a
    batched Cholesky factorization of ``P + tau I`` (``tau`` a few ulps of the largest diagonal entry, so
    singular PSD matrices pass), with an eigenvalue computation only to name a failing entity."""
    finite = np.isfinite(precision)
    if kind == "diagonal":
        bad = ~finite | (precision < 0)
        if bad.any():
            k = int(np.argmax(bad))
            entity = int(np.searchsorted(np.cumsum(sizes), k, side="right"))
            reason = "must be finite" if not finite[k] else "must be >= 0 (it is a precision)"
            return entity, float(precision[k]), reason
        return None
    if not finite.all():
        k = int(np.argmin(finite))
        entity = int(np.searchsorted(np.cumsum(sizes.astype(np.int64) ** 2), k, side="right"))
        return entity, float(precision[k]), "must be finite"
    starts = np.zeros(len(sizes), np.int64)
    np.cumsum(sizes[:-1] ** 2, out=starts[1:]) if len(sizes) > 1 else None
    for width in np.unique(sizes):
        d = int(width)
        if d == 0:
            continue
        members = np.flatnonzero(sizes == width)
        step = max(1, (1 << 22) // (d * d))  # matrices per chunk: about 32 MiB of float64 at a time
        for chunk in range(0, len(members), step):
            part = members[chunk: chunk + step]
            mats = precision[starts[part][:, None] + np.arange(d * d)].reshape(len(part), d, d)
            asym = np.abs(mats - mats.transpose(0, 2, 1)).max(axis=(1, 2))
            if asym.max() > 0:
                e = int(np.argmax(asym > 0))
                return int(part[e]), f"<{d}x{d} matrix with max |P - P^T| = {asym[e]:.3g}>", "must be symmetric"
            problem = _first_not_psd(mats)
            if problem is not None:
                e, smallest = problem
                return int(part[e]), f"<{d}x{d} matrix with smallest eigenvalue {smallest:.3g}>", \
                    "must be positive semi-definite (it is a precision)"
    return None


def _first_not_psd(mats: np.ndarray) -> tuple[int, float] | None:
    """``(index, smallest eigenvalue)`` of the first matrix of ``mats (g, d, d)`` (symmetric) that is not
    positive semi-definite up to rounding, or ``None``."""
    d = mats.shape[-1]
    eps = np.finfo(mats.dtype).eps
    scale = np.abs(np.diagonal(mats, axis1=1, axis2=2)).max(axis=1)
    tau = 64 * d * eps * np.maximum(scale, np.finfo(mats.dtype).tiny)
    shifted = mats + tau[:, None, None] * np.eye(d, dtype=mats.dtype)
    try:
        np.linalg.cholesky(shifted)
        return None
    except np.linalg.LinAlgError:
        pass
    smallest = np.linalg.eigvalsh(mats.astype(np.float64))[:, 0]
    bad = smallest < -tau
    if not bad.any():
        return None
    e = int(np.argmax(bad))
    return e, float(smallest[e])
