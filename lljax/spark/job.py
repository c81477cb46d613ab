"""The driver side that :func:`lljax.spark.update`, :func:`lljax.spark.score` and
:func:`lljax.spark.fit_game` share: the checks and the feature space (:func:`prepare`), the task spec that
travels to the tasks (:func:`task_spec`), and the data and state rows in one DataFrame
(:func:`union_with_state`), repartitioned by entity in the same job."""

from __future__ import annotations

import os
from typing import Any

from lljax.data.ntv import IndexMap
from lljax.model.random_effect import RandomEffectModel
from lljax.solve.dtypes import x64_enabled
from lljax.spark.columns import Columns, build_index_map, check_columns, check_same_space, finish_feature_spec
from lljax.spark.convert import KIND, STATE_FIELDS, STATE_PREFIX
from lljax.spark.errors import column_error
from lljax.spark.state import STORED_PRECISION, SparkState, read_state
from lljax.spark.worker import driver_config
from lljax.state.persist import HYPERPARAMETERS

__all__ = ["session_of", "hyperparameters_of", "as_state", "prepare", "partition_count", "task_spec",
           "union_with_state"]


def session_of(df: Any) -> Any:
    return df.sparkSession


def hyperparameters_of(model: Any) -> dict:
    if not isinstance(model, RandomEffectModel):
        raise column_error(TypeError, "model", type(model).__name__, "must be an lljax.RandomEffectModel (its settings "
                           "are used; its stored entities are not)")
    return {name: getattr(model, name) for name in HYPERPARAMETERS}


def as_state(spark: Any, state: Any) -> SparkState | None:
    if state is None or isinstance(state, SparkState):
        return state
    if isinstance(state, (str, os.PathLike)):
        return read_state(spark, os.fspath(state))
    raise column_error(TypeError, "state", type(state).__name__, "must be a SparkState, a path or None")


def prepare(df: Any, model: Any, columns: Columns, state: Any,
            where: str | None = None) -> tuple[str, SparkState | None, dict, IndexMap, dict, str]:
    """Checks, the state, the index map and the task spec shared by :func:`update` and :func:`score`."""
    if not isinstance(columns, Columns):
        raise column_error(TypeError, "columns", type(columns).__name__, "must be an lljax.spark.Columns")
    entity_type = check_columns(df, columns)
    state = as_state(session_of(df), state)
    hyper = hyperparameters_of(model) if model is not None else dict(state.info.hyperparameters)
    if state is not None and state.info.precision != STORED_PRECISION[hyper["hessian"]]:
        raise column_error(ValueError, "hessian", hyper["hessian"], f"keeps another precision than the state's "
                           f"({state.info.hyperparameters['hessian']!r})", state.path)
    imap, fspec = build_index_map(df, columns.features, None if state is None else state.info.index_map)
    if state is not None:
        check_same_space(state.info.index_map, imap, columns.features, state.path)

    dtype = "float64" if x64_enabled() else "float32"
    return entity_type, state, hyper, imap, finish_feature_spec(fspec), dtype


def partition_count(df: Any, num_partitions: int | None) -> int:
    if num_partitions is None:
        return int(session_of(df).conf.get("spark.sql.shuffle.partitions"))
    if not isinstance(num_partitions, int) or num_partitions < 1:
        raise column_error(ValueError, "num_partitions", num_partitions, "must be an int >= 1")
    return num_partitions


def task_spec(columns: Columns, fspec: dict, imap: IndexMap, hyper: dict, dtype: str, entity_type: str,
              data_columns: list, delta: float | None, job: str) -> dict:
    import pyarrow as pa

    fspec = dict(fspec)
    if fspec["kind"] == "ntv":
        fspec["keys"] = pa.array([f"{n}\x00{t}" for n, t in imap.name_terms], pa.string())
    names = pa.array([str(n) for n, _ in imap.name_terms], pa.string())
    terms = pa.array([str(t) for _, t in imap.name_terms], pa.string())
    return {"entity": columns.entity, "label": columns.label, "weight": columns.weight, "offset": columns.offset,
            "order": columns.order, "features": fspec, "num_features": len(imap), "hyper": hyper, "dtype": dtype,
            "precision": STORED_PRECISION[hyper["hessian"]], "entity_type": entity_type, "names": names,
            "terms": terms, "data_columns": data_columns, "delta": delta, "job": job, "worker": driver_config()}


def union_with_state(data: Any, state: SparkState | None, columns: Columns, entity_type: str) -> Any:
    """The data rows (kind 0) and the state rows (kind 1, columns prefixed) as one DataFrame."""
    from pyspark.sql import functions as F

    rows = data.withColumn(KIND, F.lit(0).cast("tinyint"))
    if state is None:
        return rows
    if state.info.entity_type != entity_type:
        raise column_error(TypeError, columns.entity, entity_type, f"has another type than the state's entity keys "
                           f"({state.info.entity_type})", state.path)
    s = state.frame.select(F.col("entity").cast(entity_type).alias(columns.entity),
                           *[F.col(f).alias(STATE_PREFIX + f) for f in STATE_FIELDS])
    s = s.withColumn(KIND, F.lit(1).cast("tinyint"))
    return rows.unionByName(s, allowMissingColumns=True)

