"""A random-effect coordinate's state: one row per entity (:class:`SparkState`) and its metadata
(:class:`StateInfo`), written to Parquet beside a JSON metadata file and read back (:func:`write_state`,
:func:`read_state`); writes go to a new directory that is then swapped in (:func:`write_atomic`)."""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from lljax.data.ntv import IndexMap
from lljax.model.random_effect import RandomEffectModel
from lljax.spark.columns import column_types
from lljax.spark.convert import STATE_FIELDS, collect_arrow, flat_from_arrow
from lljax.spark.errors import column_error, run_action
from lljax.state.store import EntityStore
from lljax.version import __version__

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "METADATA_FILE", "STORED_PRECISION", "StateInfo", "SparkState",
           "state_schema", "write_atomic", "write_state", "read_state"]


FORMAT_NAME = "lljax.spark.state"
FORMAT_VERSION = 2  # 2: a full precision is stored as its upper triangle (1: all d * d entries)
METADATA_FILE = "_lljax_state.json"  # Spark skips files whose names start with "_" when it reads the dataset
STORED_PRECISION = {"none": None, "identity": "diagonal", "diagonal": "diagonal", "full": "full"}


@dataclass(frozen=True)
class StateInfo:
    """A state's metadata (the JSON file beside its Parquet files).

    Attributes:
      hyperparameters: the model's (``loss``, ``l2``, ``delta``, ``hessian``, ...).
      index_map: the feature space (global feature ids <-> (name, term)).
      entity_type: ``"bigint"`` or ``"string"``.
      dtype: ``"float64"`` or ``"float32"`` (what the means were computed in).
      format_version: :data:`FORMAT_VERSION`.
    """

    hyperparameters: dict
    index_map: IndexMap
    entity_type: str
    dtype: str = "float64"
    format_version: int = FORMAT_VERSION

    @property
    def precision(self) -> str | None:
        return STORED_PRECISION[self.hyperparameters["hessian"]]

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT_NAME, "format_version": self.format_version,
                           "lljax_version": __version__, "hyperparameters": self.hyperparameters,
                           "index_map": self.index_map.to_dict(), "entity_type": self.entity_type,
                           "dtype": self.dtype}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> StateInfo:
        try:
            meta = json.loads(text)
        except ValueError as exc:
            raise column_error(ValueError, METADATA_FILE, text[:60], f"is not JSON ({exc})", where) from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
            raise column_error(ValueError, "format", meta.get("format") if isinstance(meta, dict) else meta,
                               f"is not {FORMAT_NAME!r}: not an lljax.spark state", where)
        if meta.get("format_version") != FORMAT_VERSION:
            raise column_error(ValueError, "format_version", meta.get("format_version"),
                               f"is not {FORMAT_VERSION}: the state was written by another format version of "
                               f"lljax.spark (lljax {meta.get('lljax_version')!r}); this is lljax {__version__}", where)
        try:
            index_map = IndexMap.from_dict(meta["index_map"])
            hyper = dict(meta["hyperparameters"])
            entity_type = meta["entity_type"]
        except (KeyError, TypeError, ValueError) as exc:
            raise column_error(ValueError, METADATA_FILE, str(exc), "is missing or malformed", where) from None
        return cls(hyper, index_map, entity_type, meta.get("dtype", "float64"), FORMAT_VERSION)


@dataclass
class SparkState:
    """A random-effect coordinate's state: ``frame`` (one row per entity: ``entity``, ``feature_ids``,
    ``names``, ``terms``, ``means``, ``precision``; precision ``d`` diagonal entries, or the full matrix's upper
    triangle, row by row: ``d * (d + 1) / 2`` entries)
    and its :class:`StateInfo`. ``path``: where it was read from or written to (``None`` in memory)."""

    frame: Any
    info: StateInfo
    path: str | None = None

    def to_model(self, **overrides: Any) -> RandomEffectModel:
        """The state as a single-process :class:`lljax.RandomEffectModel` (collects every entity to the driver)."""
        hyper = {**self.info.hyperparameters, **overrides}
        model = RandomEffectModel(**hyper, index_map=self.info.index_map)
        table = collect_arrow(self.frame.select("entity", *STATE_FIELDS))
        if table.num_rows:
            model.store = EntityStore.from_flat(flat_from_arrow(table, self.info.precision, "entity"),
                                                np.dtype(self.info.dtype), self.info.precision)
        return model


def state_schema(entity_type: str) -> str:
    return (f"entity {entity_type}, feature_ids array<bigint>, names array<string>, terms array<string>, "
            "means array<double>, precision array<double>")


class _FileSystem:
    """Rename, delete and small-file I/O on the state's file system (local paths directly, others through
    Hadoop's FileSystem API, so HDFS and object stores work as Spark's own writes do)."""

    def __init__(self, spark: Any, path: str):
        self.local = "://" not in path or path.startswith("file://")
        self.spark = spark
        if not self.local:
            jvm = spark.sparkContext._jvm
            conf = spark.sparkContext._jsc.hadoopConfiguration()
            self._Path = jvm.org.apache.hadoop.fs.Path
            self.fs = self._Path(path).getFileSystem(conf)

    @staticmethod
    def _plain(path: str) -> str:
        return path[len("file://"):] if path.startswith("file://") else path

    def exists(self, path: str) -> bool:
        return os.path.exists(self._plain(path)) if self.local else self.fs.exists(self._Path(path))

    def rename(self, src: str, dst: str) -> None:
        if self.local:
            os.replace(self._plain(src), self._plain(dst))
        elif not self.fs.rename(self._Path(src), self._Path(dst)):
            raise OSError(f"could not rename {src} to {dst}")

    def delete(self, path: str) -> None:
        if self.local:
            import shutil

            shutil.rmtree(self._plain(path), ignore_errors=True)
        else:
            self.fs.delete(self._Path(path), True)

    def write_text(self, path: str, text: str) -> None:
        if self.local:
            with open(self._plain(path), "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        else:
            out = self.fs.create(self._Path(path), True)
            out.write(bytearray(text.encode("utf-8")))
            out.close()

    def read_text(self, path: str) -> str | None:
        if not self.exists(path):
            return None
        if self.local:
            with open(self._plain(path)) as f:
                return f.read()
        rows = self.spark.read.text(path, wholetext=True).collect()
        return rows[0][0] if rows else ""


def write_atomic(spark: Any, frame: Any, info: StateInfo, path: str) -> dict:
    """Write ``frame`` and its metadata to a new directory beside ``path``, then swap it in."""
    path = path.rstrip("/")
    fs = _FileSystem(spark, path)
    tag = uuid.uuid4().hex[:12]
    tmp, old = f"{path}.tmp-{tag}", f"{path}.old-{tag}"
    t0 = time.perf_counter()
    try:
        frame.write.parquet(tmp)
        fs.write_text(f"{tmp}/{METADATA_FILE}", info.to_json())
    except BaseException:
        fs.delete(tmp)
        raise
    t1 = time.perf_counter()
    had = fs.exists(path)
    if had:
        fs.rename(path, old)
    try:
        fs.rename(tmp, path)
    except BaseException:
        if had:
            fs.rename(old, path)
        raise
    if had:
        fs.delete(old)
    return {"write": t1 - t0, "swap": time.perf_counter() - t1}


def write_state(state: SparkState, path: str) -> SparkState:
    """Write ``state`` to Parquet at ``path`` (with its metadata file), atomically: into a new directory,
    then swapped in, so a failure leaves what was at ``path`` untouched. Returns the state read back."""
    spark = state.frame.sparkSession
    run_action(lambda: write_atomic(spark, state.frame, state.info, path))
    return read_state(spark, path)


def read_state(spark: Any, path: str) -> SparkState:
    """The state written at ``path`` by :func:`update` or :func:`write_state`; ``ValueError`` naming the path
    when it is not an lljax.spark state or was written by another format version."""
    path = os.fspath(path).rstrip("/")
    text = _FileSystem(spark, path).read_text(f"{path}/{METADATA_FILE}")
    if text is None:
        raise column_error(ValueError, METADATA_FILE, None, "is missing: not an lljax.spark state directory", path)
    info = StateInfo.from_json(text, path)
    frame = spark.read.parquet(path)
    types = column_types(frame)
    expected = {"entity": info.entity_type, "feature_ids": "array<bigint>", "means": "array<double>",
                "precision": "array<double>", "names": "array<string>", "terms": "array<string>"}
    for name, t in expected.items():
        if name not in types:
            raise column_error(ValueError, name, None, "is missing from the state's Parquet files", path)
        if types[name] != t:
            raise column_error(TypeError, name, types[name], f"has the wrong type in the state (expected {t})", path)
    return SparkState(frame.select("entity", *STATE_FIELDS), info, path)

