"""Saving and loading a whole :class:`GameModel`: one versioned zip file, written atomically.

Layout (a zip archive, no pickles):

- ``game.json``: ``format`` (``"lljax.GameModel"``), ``format_version``, ``lljax_version``, the loss, the
  metrics, the training columns (``schema``) and, per coordinate in order, its kind, its specification
  and which entries hold its state;
- ``fixed/<i>/coefficients.npy`` and ``fixed/<i>/precision.npy`` (when kept), and the fixed effect's
  feature names and trained column count in ``game.json``;
- ``random/<i>.npz``: the random effect's :meth:`lljax.RandomEffectModel.save` file, as is (its
  hyper-parameters, index map, entities, means and precisions, with its own format version).

The archive is written to a temporary file next to ``path``, fsync-ed and renamed over it
(:func:`lljax.state.persist.atomic_write`): a crash leaves the previous file or the new one.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tempfile
import zipfile
from typing import IO, Any

import numpy as np

from lljax.game.coordinates import (
    ExternalScore,
    FixedEffect,
    FixedEffectState,
    FixedRuntime,
    RandomEffect,
    RandomRuntime,
)
from lljax.model.random_effect import RandomEffectModel
from lljax.state.persist import ModelFileError, atomic_write

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "save_game", "load_game"]

FORMAT_NAME = "lljax.GameModel"
FORMAT_VERSION = 1
_KINDS = {"fixed": FixedEffect, "random": RandomEffect, "external": ExternalScore}


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _spec_dict(spec: Any) -> tuple[str, dict]:
    kind = {FixedEffect: "fixed", RandomEffect: "random", ExternalScore: "external"}[type(spec)]
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
    if kind == "external":
        fields["fn"] = None if spec.fn is None else getattr(spec.fn, "__name__", "callable")
    return kind, fields


def save_game(model: Any, path: str | os.PathLike) -> None:
    """Write ``model`` to ``path`` atomically (module docstring)."""
    from lljax.version import __version__

    path = os.fspath(path)
    entries: dict[str, bytes] = {}
    coordinates = []
    for i, spec in enumerate(model.coordinates):
        kind, fields = _spec_dict(spec)
        rt = model._runtimes[spec.name]
        record: dict[str, Any] = {"kind": kind, "spec": fields, "trained": False}
        if isinstance(rt, FixedRuntime) and rt.state is not None:
            state = rt.state
            entries[f"fixed/{i}/coefficients.npy"] = _npy(state.coefficients)
            if state.precision is not None:
                entries[f"fixed/{i}/precision.npy"] = _npy(state.precision)
            record.update(trained=True, names=None if state.names is None else list(state.names),
                          status=state.status, iterations=state.iterations, num_columns=rt.num_columns,
                          has_precision=state.precision is not None)
        elif isinstance(rt, RandomRuntime) and rt.model is not None:
            with tempfile.TemporaryDirectory() as tmp:
                inner = os.path.join(tmp, "coordinate.npz")
                rt.model.save(inner)
                with open(inner, "rb") as f:
                    entries[f"random/{i}.npz"] = f.read()
            record["trained"] = True
        coordinates.append(record)
    schema = None
    if model.schema is not None:
        schema = {"ids": model.schema["ids"], "scores": model.schema["scores"],
                  "features": {k: [v[0], None if v[1] is None else list(v[1])]
                               for k, v in model.schema["features"].items()}}
    metadata = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "lljax_version": __version__,
                "loss": model.loss, "metrics": list(model.metrics), "schema": schema, "coordinates": coordinates}

    def write(f: IO[bytes]) -> None:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as z:
            z.writestr("game.json", json.dumps(metadata))
            for name, data in entries.items():
                z.writestr(name, data)

    atomic_write(path, write)


def load_game(path: str | os.PathLike, model_class: type, external: dict) -> Any:
    """Read a model written by :func:`save_game`; :class:`lljax.ModelFileError` naming the file on any problem."""
    path = os.fspath(path)
    try:
        with zipfile.ZipFile(path) as z:
            entries = {name: z.read(name) for name in z.namelist()}
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise ModelFileError(f"{path}: not a readable lljax GAME model file ({type(exc).__name__}: {exc})") from exc
    if "game.json" not in entries:
        raise ModelFileError(f"{path}: not an lljax GAME model file (no 'game.json' entry)")
    try:
        metadata = json.loads(entries["game.json"])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path}: corrupt metadata ({exc})") from exc
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{path}: not an lljax GAME model file")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"{path}: format version {metadata.get('format_version')!r}, but this lljax reads "
                             f"version {FORMAT_VERSION} (written by lljax {metadata.get('lljax_version')!r})")
    specs = []
    try:
        for record in metadata["coordinates"]:
            fields = dict(record["spec"])
            if record["kind"] == "external":
                fn_name = fields.pop("fn")
                if fn_name is not None:
                    if fields["name"] not in external:
                        raise ModelFileError(f"{path}: coordinate {fields['name']!r} is an external callable "
                                             f"({fn_name!r}), which is not saved: pass external={{name: callable}}")
                    fields["fn"] = external[fields["name"]]
            specs.append(_KINDS[record["kind"]](**fields))
        model = model_class(metadata["loss"], specs, metrics=metadata["metrics"])
    except ModelFileError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: corrupt metadata ({type(exc).__name__}: {exc})") from exc
    schema = metadata.get("schema")
    if schema is not None:
        schema["features"] = {k: (v[0], None if v[1] is None else tuple(v[1])) for k, v in schema["features"].items()}
    model.schema = schema
    for i, (record, spec) in enumerate(zip(metadata["coordinates"], specs)):
        if not record.get("trained"):
            continue
        rt = model._runtimes[spec.name]
        try:
            if record["kind"] == "fixed":
                coef = np.load(io.BytesIO(entries[f"fixed/{i}/coefficients.npy"]), allow_pickle=False)
                prec = (np.load(io.BytesIO(entries[f"fixed/{i}/precision.npy"]), allow_pickle=False)
                        if record["has_precision"] else None)
                names = None if record["names"] is None else tuple(record["names"])
                rt.state = FixedEffectState(coef, prec, names, int(record["status"]), int(record["iterations"]))
                rt.num_columns = record["num_columns"]
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    inner = os.path.join(tmp, "coordinate.npz")
                    with open(inner, "wb") as f:
                        f.write(entries[f"random/{i}.npz"])
                    rt.model = RandomEffectModel.load(inner)
        except KeyError as exc:
            raise ModelFileError(f"{path}: corrupt file, coordinate {spec.name!r} misses entry {exc}") from exc
        except ModelFileError as exc:
            raise ModelFileError(f"{path}: coordinate {spec.name!r}: {exc}") from exc
        except (ValueError, OSError) as exc:
            raise ModelFileError(f"{path}: corrupt file, coordinate {spec.name!r} ({exc})") from exc
    return model
