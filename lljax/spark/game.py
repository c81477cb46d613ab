"""GAME block coordinate descent on Spark (:func:`fit_game`): each random effect is trained on Spark with
offset = the other coordinates' scores (its task trains and scores in one pass), the fixed effect is a score
column or trained on the driver."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lljax.model.random_effect import RandomEffectModel
from lljax.solve.base import Status
from lljax.spark.columns import NUM_TYPES, Columns, Features, check_column, input_frame
from lljax.spark.convert import (
    KIND,
    STATE_FIELDS,
    collect_arrow,
    dataset_from_arrow,
    features_csr,
    flat_from_arrow,
    split_union,
    store_to_arrow,
    to_numpy,
)
from lljax.spark.errors import column_error, run_action, task_error
from lljax.spark.job import partition_count, prepare, session_of, task_spec, union_with_state
from lljax.spark.report import collect_report, report_accumulator
from lljax.spark.state import SparkState, StateInfo
from lljax.spark.worker import partition_table, task_info
from lljax.state.store import EntityStore

__all__ = ["RandomEffectSpec", "GameResult", "fit_game"]


@dataclass(frozen=True)
class RandomEffectSpec:
    """A random-effect coordinate of :func:`fit_game`: entity column, features, and the model's settings
    (as :class:`lljax.RandomEffectModel`; coordinate descent solves the plain L2 problem)."""

    name: str
    entity: str
    features: Features = field(default_factory=Features.none)
    l2: float = 1.0
    hessian: str = "full"
    min_rows: int = 1
    max_rows: int | None = None
    max_iter: int = 50
    tol: float | None = None
    penalize_intercept: bool = True


@dataclass
class GameResult:
    """What :func:`fit_game` returns: each random effect's :class:`SparkState`, the scored examples
    (``frame``: the input's columns plus ``row_id`` and one score column per coordinate, ``score_<name>``),
    the driver-side fixed effect (an :class:`lljax.game.GameModel` of it, or ``None``) and one report per step."""

    states: dict
    frame: Any
    fixed: Any
    steps: list


def _score_column(name: str) -> str:
    return f"score_{name}"


def _coordinate_task(spec: dict, acc: Any) -> Any:
    """Train one random-effect coordinate on the partition and score its rows: state rows (kind 1) and
    (row_id, score) rows (kind 0) in one output."""

    def run(batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa

        table = partition_table(batches, spec["worker"])
        if table is None:
            return
        part, attempt = task_info()
        try:
            t0 = time.perf_counter()
            data, state = split_union(table, spec, group=True)
            del table
            if data.num_rows == 0:
                return
            ds = dataset_from_arrow(data, spec)
            model = RandomEffectModel(**spec["hyper"])
            dtype = np.dtype(spec["dtype"])
            if state.num_rows:
                model.store = EntityStore.from_flat(flat_from_arrow(state, spec["precision"], "entity"), dtype,
                                                    spec["precision"])
            t1 = time.perf_counter()
            report = model.update(ds, delta=0.0, progress=False)
            contribution = model.score(ds.with_offset(np.zeros(ds.num_examples, ds.dtype)))
            t2 = time.perf_counter()
            st = store_to_arrow(model.store, spec)
        except (ValueError, TypeError) as exc:
            raise task_error(exc) from exc
        counts = np.bincount(report.status, minlength=len(Status))
        acc.add([{"job": spec["job"], "partition": part, "attempt": attempt, "entities": int(len(report.entity_keys)),
                  "rows": int(ds.num_examples), "blocks": int(report.blocks),
                  "status": {s.name.lower(): int(counts[s.value]) for s in Status if counts[s.value]},
                  "iterations": int(report.iterations.sum()),
                  "seconds": {"convert": t1 - t0, "solve": t2 - t1, "output": time.perf_counter() - t2}}])
        rows = pa.table({KIND: pa.array(np.zeros(data.num_rows, np.int8)), "row_id": data.column("row_id"),
                         "score": pa.array(contribution, pa.float64())})
        yield from _pad_union(rows, spec).to_batches()
        if st is not None:
            st = st.append_column(KIND, pa.array(np.ones(st.num_rows, np.int8)))
            yield from _pad_union(st, spec).to_batches()

    return run


def _pad_union(table: Any, spec: dict) -> Any:
    import pyarrow as pa

    schema = spec["out_schema"]
    cols = [table.column(f.name) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
            for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


def fit_game(df: Any, *, loss: str, label: str, coordinates: Sequence[RandomEffectSpec],
             fixed_score: str | None = None, fixed_effect: Any = None, fixed_features: str | None = None,
             weight: str | None = None, offset: str | None = None, passes: int = 1,
             num_partitions: int | None = None) -> GameResult:
    """GAME block coordinate descent on a DataFrame (as :meth:`lljax.game.GameModel.fit`).

    The margin of a row is ``offset + fixed + sum of the random effects' scores``. The fixed effect is
    either a score column (``fixed_score``: trained elsewhere, e.g. by Spark ML) or, when the rows fit on the
    driver, an :class:`lljax.game.FixedEffect` (``fixed_effect``) on the vector column ``fixed_features``,
    trained on the driver in every pass, first in the order. Each random effect (:class:`RandomEffectSpec`)
    is trained on Spark with offset = the other coordinates' scores; its new scores join the rows.

    Returns a :class:`GameResult`.
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    if not isinstance(passes, int) or passes < 1:
        raise column_error(ValueError, "passes", passes, "must be an int >= 1")
    names = [c.name for c in coordinates]
    if len(set(names)) != len(names):
        raise column_error(ValueError, "coordinates", names, "must have distinct names")
    if fixed_score is not None and fixed_effect is not None:
        raise column_error(ValueError, "fixed_effect", fixed_effect.name, "give fixed_score or fixed_effect, not both")
    check_column(df, label, NUM_TYPES, "the label")
    for numeric_col in (weight, offset, fixed_score):
        if numeric_col is not None:
            check_column(df, numeric_col, NUM_TYPES, "a weight, offset or score")
    spark = session_of(df)
    P = partition_count(df, num_partitions)
    base = F.col(offset).cast("double") if offset is not None else F.lit(0.0)
    frame = df.withColumn("row_id", F.monotonically_increasing_id()).withColumn("_lljax_base", base)
    fixed_col = None
    if fixed_score is not None:
        fixed_col = fixed_score
    for c in coordinates:
        frame = frame.withColumn(_score_column(c.name), F.lit(0.0))
    fixed_name = None
    if fixed_effect is not None:
        fixed_name = fixed_effect.name
        if fixed_features is not None:
            check_column(df, fixed_features, (), "the fixed effect's vector of features")
        frame = frame.withColumn(_score_column(fixed_name), F.lit(0.0))
        fixed_col = _score_column(fixed_name)
    frame = frame.persist(StorageLevel.MEMORY_AND_DISK)
    frame.count()
    states: dict = {}
    infos: dict = {}
    prepared: dict = {}
    steps: list = []
    fixed_model = None
    score_cols = [_score_column(c.name) for c in coordinates]

    def others(exclude: str | None) -> Any:
        expr = F.col("_lljax_base")
        if fixed_col is not None and fixed_col != exclude:
            expr = expr + F.col(fixed_col)
        for s in score_cols:
            if s != exclude:
                expr = expr + F.col(s)
        return expr

    for p in range(1, passes + 1):
        if fixed_effect is not None:
            t0 = time.perf_counter()
            fixed_model, scores = _fit_fixed_on_driver(frame, loss, label, weight, fixed_effect, fixed_features,
                                                       others(fixed_col), fixed_model)
            sdf = spark.createDataFrame(scores)
            new = frame.drop(fixed_col).join(sdf, "row_id").persist(StorageLevel.MEMORY_AND_DISK)
            new.count()
            frame.unpersist()
            frame = new
            steps.append({"pass": p, "coordinate": fixed_name, "seconds": time.perf_counter() - t0, "report": None})
        for c in coordinates:
            t0 = time.perf_counter()
            col = _score_column(c.name)
            model = RandomEffectModel(loss, l2=c.l2, hessian=c.hessian, min_rows=c.min_rows, max_rows=c.max_rows,
                                      max_iter=c.max_iter, tol=c.tol, penalize_intercept=c.penalize_intercept)
            cols = Columns(c.entity, label, c.features, weight, "_lljax_offset")
            rows = frame.withColumn("_lljax_offset", others(col))
            if c.name not in prepared:  # the feature space is the data's: built once
                prepared[c.name] = prepare(rows, model, cols, None)
            entity_type, _, hyper, imap, fspec, dtype = prepared[c.name]
            state = states.get(c.name)
            sel, data_cols = input_frame(rows, cols)
            sel = rows.select(*[rows[x] for x in data_cols], rows["row_id"])
            if entity_type == "bigint":
                sel = sel.withColumn(c.entity, F.col(c.entity).cast("bigint"))
            for cc in c.features.categorical:
                sel = sel.withColumn(cc, F.col(cc).cast("string"))
            acc = report_accumulator(spark.sparkContext)
            job = uuid.uuid4().hex[:12]
            spec = task_spec(cols, fspec, imap, hyper, dtype, entity_type, data_cols + ["row_id"], 0.0, job)
            import pyarrow as pa

            state_types = {"feature_ids": pa.list_(pa.int64()), "names": pa.list_(pa.string()),
                           "terms": pa.list_(pa.string()), "means": pa.list_(pa.float64()),
                           "precision": pa.list_(pa.float64())}
            spec["out_schema"] = pa.schema([(KIND, pa.int8()), ("row_id", pa.int64()), ("score", pa.float64()),
                                            ("entity", pa.string() if entity_type == "string" else pa.int64())]
                                           + list(state_types.items()))
            union = union_with_state(sel, state, cols, entity_type).repartition(P, c.entity)
            out_ddl = (f"{KIND} tinyint, row_id bigint, score double, entity {entity_type}, "
                       "feature_ids array<bigint>, names array<string>, terms array<string>, means array<double>, "
                       "precision array<double>")
            out = union.mapInArrow(_coordinate_task(spec, acc), out_ddl).persist(StorageLevel.MEMORY_AND_DISK)
            run_action(lambda out=out: out.count())
            new_state = out.where(F.col(KIND) == 1).select("entity", *STATE_FIELDS)
            new_state = new_state.persist(StorageLevel.MEMORY_AND_DISK)
            new_state.count()
            scores = out.where(F.col(KIND) == 0).select("row_id", F.col("score").alias(col))
            new = frame.drop(col).join(scores, "row_id", "left").fillna(0.0, subset=[col])
            new = new.persist(StorageLevel.MEMORY_AND_DISK)
            new.count()
            old_state = states.get(c.name)
            frame.unpersist()
            out.unpersist()
            if old_state is not None:
                old_state.frame.unpersist()
            frame = new
            infos[c.name] = StateInfo(hyper, imap, entity_type, dtype)
            states[c.name] = SparkState(new_state, infos[c.name])
            steps.append({"pass": p, "coordinate": c.name, "seconds": time.perf_counter() - t0,
                          "report": collect_report(acc.value, time.perf_counter() - t0, {})})
    return GameResult(states, frame.drop("_lljax_base"), fixed_model, steps)


def _fit_fixed_on_driver(frame: Any, loss: str, label: str, weight: str | None, spec: Any, features: str | None,
                         others_expr: Any, previous: Any) -> tuple[Any, Any]:
    """Collect the fixed effect's columns, fit it with lljax.game on the driver (offset = the others' scores),
    and return ``(GameModel, pandas (row_id, score))``."""
    from pyspark.sql import functions as F

    from lljax.game import ExternalScore, GameData, GameModel

    cols = [F.col("row_id"), F.col(label).cast("double").alias("y"), others_expr.alias("o")]
    if weight is not None:
        cols.append(F.col(weight).cast("double").alias("w"))
    if features is not None:
        cols.append(F.col(features).alias("x"))
    t = collect_arrow(frame.select(*cols).orderBy("row_id"))
    n = t.num_rows
    feats = {}
    if features is not None:
        csr_spec = {"kind": "vector", "column": "x", "num_columns": _vector_size(t.column("x"))}
        indptr, fids, vals = features_csr(t, csr_spec, n, np.dtype(np.float64))
        feats[spec.features] = (indptr, fids - 1, vals, csr_spec["num_columns"])
    data = GameData.from_arrays(to_numpy(t.column("y")), features=feats,
                                weight=None if weight is None else to_numpy(t.column("w")),
                                scores={"_lljax_others": to_numpy(t.column("o"))})
    model = previous if previous is not None else GameModel(
        loss, [spec, ExternalScore("_lljax_others", column="_lljax_others")])
    model.fit(data, passes=1, order=[spec.name], warm_start=previous is not None, record_objective=False)
    import pandas as pd

    scores = pd.DataFrame({"row_id": to_numpy(t.column("row_id")).astype(np.int64),
                           _score_column(spec.name): model.score(data).contributions[spec.name]})
    return model, scores


def _vector_size(column: Any) -> int:
    import pyarrow as pa
    import pyarrow.compute as pc

    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(col) == 0:
        return 0
    t = col.field("type")[0].as_py()
    if t == 1:
        return int(pc.list_value_length(col.field("values"))[0].as_py())
    return int(col.field("size")[0].as_py())

