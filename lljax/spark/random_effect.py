"""Train or update a random-effect coordinate on Spark (:func:`update`): the examples and the previous
state are repartitioned by entity; each task builds one :class:`lljax.Dataset` from its Arrow rows, runs
one batched :meth:`lljax.RandomEffectModel.update` with the stored posteriors as priors, and returns the
new state rows (entities with no new rows pass through unchanged)."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np

from lljax.model.random_effect import RandomEffectModel
from lljax.solve.base import Status
from lljax.spark.columns import Columns, input_frame
from lljax.spark.convert import dataset_from_arrow, flat_from_arrow, split_union, store_to_arrow
from lljax.spark.errors import run_action, task_error
from lljax.spark.job import partition_count, prepare, session_of, task_spec, union_with_state
from lljax.spark.report import SparkReport, collect_report, report_accumulator
from lljax.spark.state import SparkState, StateInfo, read_state, state_schema, write_atomic
from lljax.spark.worker import partition_table, task_info
from lljax.state.store import EntityStore

__all__ = ["update"]


def _update_task(spec: dict, acc: Any) -> Any:
    """The ``mapInArrow`` function of :func:`update`: one batched update of the partition's entities."""

    def run(batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa
        import pyarrow.compute as pc

        started = time.perf_counter()
        table = partition_table(batches, spec["worker"])
        if table is None:
            return
        part, attempt = task_info()
        try:
            t0 = time.perf_counter()
            data, state = split_union(table, spec, group=True)
            del table
            rec = {"job": spec["job"], "partition": part, "attempt": attempt, "host": os.uname().nodename,
                   "entities": 0, "rows": int(data.num_rows), "passed": 0, "blocks": 0, "status": {},
                   "iterations": 0, "seconds": {}}
            if data.num_rows == 0:
                rec["passed"] = int(state.num_rows)
                rec["seconds"] = {"convert": time.perf_counter() - t0, "solve": 0.0, "output": 0.0}
                acc.add([rec])
                for b in state.to_batches():
                    yield b
                return
            ds = dataset_from_arrow(data, spec)
            model = RandomEffectModel(**spec["hyper"])
            if state.num_rows:
                hit = pc.is_in(state.column("entity"),
                               value_set=pa.array(ds.entity_keys, state.schema.field("entity").type))
                prior, passed = state.filter(hit), state.filter(pc.invert(hit))
            else:
                prior, passed = state, state
            dtype = np.dtype(spec["dtype"])
            if prior.num_rows:
                model.store = EntityStore.from_flat(flat_from_arrow(prior, spec["precision"], "entity"), dtype,
                                                    spec["precision"])
            t1 = time.perf_counter()
            report = model.update(ds, delta=spec["delta"], progress=False)
            t2 = time.perf_counter()
            out = store_to_arrow(model.store, spec)
            t3 = time.perf_counter()
            counts = np.bincount(report.status, minlength=len(Status))
            rec.update(entities=int(len(report.entity_keys)), passed=int(passed.num_rows), blocks=int(report.blocks),
                       status={s.name.lower(): int(counts[s.value]) for s in Status if counts[s.value]},
                       iterations=int(report.iterations.sum()),
                       seconds={"receive": t0 - started, "convert": t1 - t0, "solve": t2 - t1, "output": t3 - t2,
                                "phases": dict(report.phase_seconds), "task": t3 - started})
        except (ValueError, TypeError) as exc:
            raise task_error(exc) from exc
        acc.add([rec])
        if out is not None:
            for b in out.to_batches():
                yield b
        for b in passed.to_batches():
            yield b

    return run


def update(df: Any, model: RandomEffectModel, columns: Columns, *, state: SparkState | str | None = None,
           output: str | None = None, delta: float | None = None, num_partitions: int | None = None,
           persist: bool = True) -> tuple[SparkState, SparkReport]:
    """Train (``state=None``) or update a random-effect coordinate on the examples of ``df``.

    Args:
      df: the examples (a Spark DataFrame).
      model: an :class:`lljax.RandomEffectModel` giving the settings (loss, l2, delta, hessian, ...).
      columns: :class:`Columns`: entity, label, weight, offset, features.
      state: the previous state (a :class:`SparkState` or the path of one): each entity's posterior is the
        prior of its update; entities with no new rows pass through unchanged.
      output: a path: the new state is written there atomically (to a new directory, then swapped in; a
        failed job leaves what was there, the previous state included, untouched). ``None``: the new state
        is computed once and kept in memory/disk by Spark (``persist``).
      delta: the forgetting factor of this update (default the model's).
      num_partitions: tasks (default ``spark.sql.shuffle.partitions``); each holds whole entities.

    Returns:
      ``(state, report)``: the new :class:`SparkState` and the :class:`SparkReport` of the job.
    """
    started = time.perf_counter()
    spark = session_of(df)
    entity_type, prior, hyper, imap, fspec, dtype = prepare(df, model, columns, state)
    t_map = time.perf_counter() - started
    frame, data_cols = input_frame(df, columns)
    P = partition_count(df, num_partitions)
    acc = report_accumulator(spark.sparkContext)
    job = uuid.uuid4().hex[:12]
    spec = task_spec(columns, fspec, imap, hyper, dtype, entity_type, data_cols, delta, job)
    union = union_with_state(frame, prior, columns, entity_type).repartition(P, columns.entity)
    out = union.mapInArrow(_update_task(spec, acc), state_schema(entity_type))
    info = StateInfo(hyper, imap, entity_type, dtype)
    t0 = time.perf_counter()
    if output is not None:
        stages = run_action(lambda: write_atomic(spark, out, info, output))
        result = read_state(spark, output)
    else:
        from pyspark import StorageLevel

        out = out.persist(StorageLevel.MEMORY_AND_DISK) if persist else out
        run_action(lambda: out.count())
        stages = {}
        result = SparkState(out, info)
    wall = time.perf_counter() - started
    return result, collect_report(acc.value, wall, {"index_map": t_map, "job": time.perf_counter() - t0, **stages})

