"""Saving and loading a :class:`RandomEffectModel`: one versioned ``.npz`` file, written atomically.

Layout (NumPy ``.npz``, a zip of ``.npy`` arrays, no pickles):

- ``metadata``: a JSON string: ``format``, ``format_version``, ``lljax_version``, the
  hyper-parameters, ``dtype``, ``precision`` (``"full"``, ``"diagonal"`` or ``null``), the
  ``index_map`` (or ``null``) and ``num_entities``;
- ``keys (U,)`` (int64 or unicode), ``indptr (U+1,)``, ``feature_ids (P,)``, ``means (P,)``
  and, unless the model keeps no precision, ``precision`` (``(P,)`` diagonals, or the
  ``(d_u, d_u)`` full matrices flattened one after the other): :class:`~lljax.state.store.FlatEntities`.

Atomicity: the file is written under a temporary name in the target's directory, flushed
and fsync-ed, then renamed over the target with :func:`os.replace` (atomic on POSIX and
Windows). A crash at any point leaves either the previous file or the new one, never a mix.
Loading checks the format name and version and the arrays' consistency; zip CRCs catch
corrupted bytes. Every failure is a :class:`ModelFileError` naming the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np

from lljax.data.errors import input_error
from lljax.data.ntv import IndexMap
from lljax.state.store import EntityStore, FlatEntities

__all__ = ["ModelFileError", "FORMAT_NAME", "FORMAT_VERSION", "save_model", "load_model", "atomic_write"]

FORMAT_NAME = "lljax.RandomEffectModel"
FORMAT_VERSION = 1

_HYPERPARAMETERS = ("loss", "l2", "delta", "hessian", "max_iter", "tol", "memory_budget", "min_rows", "max_rows")


class ModelFileError(ValueError):
    """A model file that cannot be loaded: not an lljax model, another format version, or corrupt."""


def save_model(model: Any, path: str | os.PathLike) -> None:
    """Write ``model`` to ``path`` atomically (see the module docstring)."""
    from lljax.version import __version__

    path = os.fspath(path)
    store = model.store
    flat = store.to_flat() if store is not None else None
    if flat is not None and flat.keys.dtype == object and len(flat.keys):
        raise input_error("entity", flat.keys[0], f"has key type {type(flat.keys[0]).__name__}; only int and str "
                          "keys can be saved", error=TypeError)
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "lljax_version": __version__,
        "hyperparameters": {name: getattr(model, name) for name in _HYPERPARAMETERS},
        "dtype": None if store is None else store.dtype.name,
        "precision": None if store is None else store.precision,
        "index_map": None if model.index_map is None else model.index_map.to_dict(),
        "num_entities": 0 if flat is None else len(flat.keys),
    }
    arrays = {"metadata": np.array(json.dumps(metadata))}
    if flat is not None:
        arrays.update(keys=flat.keys, indptr=flat.indptr, feature_ids=flat.feature_ids, means=flat.means)
        if flat.precision is not None:
            arrays["precision"] = flat.precision
    atomic_write(path, lambda f: np.savez(f, **arrays))


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None]) -> None:
    """Call ``write(binary_file)`` on a temporary file next to ``path``, fsync it, then rename it
    over ``path``: readers see the old file or the complete new one, never a partial one."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
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


def load_model(path: str | os.PathLike, model_class: type) -> Any:
    """Read a model written by :func:`save_model`; :class:`ModelFileError` on any problem."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise ModelFileError(f"{path}: not an lljax model file (a bare .npy array)")
            arrays = {name: npz[name] for name in npz.files}
    except ModelFileError:
        raise
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as exc:
        raise ModelFileError(f"{path}: not a readable lljax model file ({type(exc).__name__}: {exc})") from exc
    metadata = _metadata(path, arrays)
    hyper = metadata["hyperparameters"]
    index_map = metadata["index_map"]
    try:
        model = model_class(**hyper, index_map=None if index_map is None else IndexMap.from_dict(index_map))
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: invalid hyper-parameters {hyper}: {exc}") from exc
    if metadata["dtype"] is not None:
        flat = _flat_entities(path, arrays, metadata)
        model.store = EntityStore.from_flat(flat, np.dtype(metadata["dtype"]), metadata["precision"])
    return model


def _metadata(path: str, arrays: dict[str, np.ndarray]) -> dict:
    if "metadata" not in arrays:
        raise ModelFileError(f"{path}: not an lljax model file (no 'metadata' entry)")
    try:
        metadata = json.loads(str(arrays["metadata"]))
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path}: corrupt metadata ({exc})") from exc
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{path}: not an lljax model file (format {metadata.get('format')!r})"
                             if isinstance(metadata, dict) else f"{path}: corrupt metadata")
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFileError(f"{path}: format version {version!r}, but this lljax reads version {FORMAT_VERSION} "
                             f"(written by lljax {metadata.get('lljax_version')!r})")
    missing = {"hyperparameters", "dtype", "precision", "index_map", "num_entities"} - set(metadata)
    if missing:
        raise ModelFileError(f"{path}: corrupt metadata, missing {sorted(missing)}")
    return metadata


def _flat_entities(path: str, arrays: dict[str, np.ndarray], metadata: dict) -> FlatEntities:
    """The stored entities, after checking that the arrays fit together."""
    names = ["keys", "indptr", "feature_ids", "means"] + (["precision"] if metadata["precision"] else [])
    missing = [name for name in names if name not in arrays]
    if missing:
        raise ModelFileError(f"{path}: corrupt file, missing arrays {missing}")
    keys, indptr, fids, means = (arrays[name] for name in names[:4])
    U = metadata["num_entities"]
    P = len(fids)
    problems = []
    if keys.shape != (U,) or indptr.shape != (U + 1,):
        problems.append(f"{U} entities but keys {keys.shape} and indptr {indptr.shape}")
    elif indptr[0] != 0 or indptr[-1] != P or np.any(np.diff(indptr) < 0):
        problems.append("indptr is not a valid offset array")
    if means.shape != (P,):
        problems.append(f"means {means.shape} do not match feature_ids ({P},)")
    if len(np.unique(keys)) != len(keys):
        problems.append("duplicate entity keys")
    precision = arrays.get("precision") if metadata["precision"] else None
    if not problems and precision is not None:
        sizes = np.diff(indptr)
        expected = int((sizes**2).sum()) if metadata["precision"] == "full" else P
        if precision.shape != (expected,):
            problems.append(f"precision {precision.shape} does not match ({expected},)")
    if problems:
        raise ModelFileError(f"{path}: corrupt file: {'; '.join(problems)}")
    return FlatEntities(keys, indptr, fids, means, precision)
