"""Scores from a state (:func:`score`): the mean margin and, on request, UCB and Thompson margins
(:func:`explore_scores`, inside the tasks), with Thompson draws keyed by (seed, request, feature id) so
that they do not depend on how Spark partitions the rows."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np

from lljax.data.dataset import Dataset
from lljax.spark.columns import INT_TYPES, Columns, check_column
from lljax.spark.convert import check_no_nulls, dataset_from_arrow, flat_from_arrow, split_union, to_numpy
from lljax.spark.errors import column_error, run_action, task_error
from lljax.spark.job import as_state, partition_count, prepare, session_of, task_spec, union_with_state
from lljax.spark.report import SparkReport, collect_report, report_accumulator
from lljax.spark.state import SparkState
from lljax.spark.worker import partition_table, task_info
from lljax.state.store import EntityStore, FlatEntities

__all__ = ["explore_scores", "score"]


def _fold64(key: Any, x: Any) -> Any:
    import jax

    x = x.astype(np.uint64) if hasattr(x, "astype") else x
    return jax.random.fold_in(jax.random.fold_in(key, (x >> 32).astype(np.uint32)), (x & 0xFFFFFFFF).astype(np.uint32))


def _normals(seed: int, requests: np.ndarray, fids: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``z[k] ~ N(0, 1)`` keyed by ``(seed, requests[k], fids[k])``: the same draw wherever it is computed."""
    import jax
    import jax.numpy as jnp

    if len(fids) == 0:
        return np.zeros(0, dtype)
    base = jax.random.key(seed)
    r = jnp.asarray(requests.astype(np.int64).view(np.uint64))
    f = jnp.asarray(fids.astype(np.int64).view(np.uint64))
    return np.asarray(_normals_jit(base, r, f, np.dtype(dtype).name))


def _normals_impl(base: Any, r: Any, f: Any, dtype: str) -> Any:
    import jax

    def one(ri: jax.Array, fi: jax.Array) -> jax.Array:
        return jax.random.normal(_fold64(_fold64(base, ri), fi), (), dtype)

    return jax.vmap(one)(r, f)


_normals_cache: dict = {}


def _normals_jit(base: Any, r: Any, f: Any, dtype: str) -> Any:
    import jax

    fn = _normals_cache.get(dtype)
    if fn is None:
        fn = _normals_cache[dtype] = jax.jit(lambda b, r_, f_: _normals_impl(b, r_, f_, dtype))
    return fn(base, r, f)


def explore_scores(ds: Dataset, store: EntityStore | None, l2: float, precision: str | None, *,
                   requests: np.ndarray | None, seed: int | None, alpha: float | None) -> dict:
    """Per-row UCB and Thompson margins of ``ds``'s rows (host NumPy; used inside the scoring tasks).

    Each row's posterior is its entity's stored one over the stored features, with the cold prior
    ``N(0, 1/l2)`` for its other features (as :meth:`lljax.RandomEffectModel.posterior`). UCB:
    ``offset + x . mean + alpha sqrt(x^T P^-1 x)``. Thompson: one ``theta = mean + L^-T z`` per request
    (``P = L L^T``; ``mean + z / sqrt(P)`` for a diagonal), shared by the request's rows, where
    ``z_j ~ N(0, 1)`` is keyed by ``(seed, request, feature id j)``: draws do not depend on partitioning.
    """
    n = ds.num_examples
    out: dict = {}
    row = ds.row_of_nonzero()
    _, fids, vals = ds.explicit_rows()
    fids = fids.astype(np.int64)
    vals = vals.astype(np.float64)
    ent = ds.entity[row]
    if store is not None and len(store):
        slots = store.lookup(ds.entity_keys)
        known = slots >= 0
        flat = store.to_flat(slots[known])
        code_of_flat = np.flatnonzero(known)
    else:
        flat = FlatEntities(np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0),
                            None if precision is None else np.zeros(0))
        code_of_flat = np.zeros(0, np.int64)
    sizes = flat.sizes
    stride = int(max(ds.num_features, int(flat.feature_ids.max()) + 1 if flat.feature_ids.size else 1))
    owner = np.repeat(code_of_flat, sizes)
    stored_keys = owner * stride + flat.feature_ids
    order = np.argsort(stored_keys, kind="stable")
    sk = stored_keys[order]
    wanted = ent * stride + fids
    pos = np.minimum(np.searchsorted(sk, wanted), max(len(sk) - 1, 0))
    found = (sk[pos] == wanted) if len(sk) else np.zeros(len(wanted), bool)
    flat_pos = np.where(found, order[pos] if len(sk) else 0, -1)  # index into flat's pairs
    # the entity's flat index and the position of the feature within the entity
    flat_index_of_code = np.full(ds.num_entities, -1, np.int64)
    flat_index_of_code[code_of_flat] = np.arange(len(code_of_flat))
    fe = flat_index_of_code[ent]
    within = np.where(found, flat_pos - np.where(fe >= 0, flat.indptr[np.maximum(fe, 0)], 0), -1)
    mean_part = np.where(found, flat.means[np.maximum(flat_pos, 0)] if len(flat.means) else 0.0, 0.0)
    margin = ds.offset.astype(np.float64) + np.bincount(row, weights=vals * mean_part, minlength=n)
    out["score"] = margin
    if precision is None:
        return out
    stored_precision = flat.precision
    assert stored_precision is not None, "the store keeps the precision the state's hyper-parameters name"
    cold_var = 1.0 / l2 if l2 > 0 else np.inf
    widths = sizes
    if alpha is not None:
        var = np.bincount(row, weights=np.where(found, 0.0, vals**2 * cold_var), minlength=n)
        row_flat = flat_index_of_code[ds.entity]
        for d in np.unique(widths[row_flat[row_flat >= 0]]) if len(widths) else []:
            d = int(d)
            members = np.flatnonzero((row_flat >= 0) & (widths[np.maximum(row_flat, 0)] == d))
            if d == 0 or not len(members):
                continue
            local = np.full(n, -1, np.int64)
            local[members] = np.arange(len(members))
            X = np.zeros((len(members), d))
            sel = found & (local[row] >= 0)
            np.add.at(X, (local[row[sel]], within[sel]), vals[sel])
            ents = row_flat[members]
            if precision == "full":
                starts = flat.precision_indptr[ents]
                P = stored_precision[starts[:, None] + np.arange(d * d)[None, :]].reshape(-1, d, d)
                L = np.linalg.cholesky(P)
                v = np.linalg.solve(L, X[..., None])[..., 0]
                var[members] += (v**2).sum(axis=1)
            else:
                starts = flat.indptr[ents]
                Pd = stored_precision[starts[:, None] + np.arange(d)[None, :]]
                var[members] += (X**2 / Pd).sum(axis=1)
        out["ucb"] = margin + alpha * np.sqrt(var)
    if seed is not None:
        req = np.asarray(requests, np.int64)
        # one draw per request: z over the entity's stored features and over each row's cold features
        ureq, first, rinv = np.unique(req, return_index=True, return_inverse=True)
        req_ent = ds.entity[first]
        if (ds.entity != req_ent[rinv]).any():
            i = int(np.argmax(ds.entity != req_ent[rinv]))
            raise column_error(ValueError, "request", int(req[i]), "belongs to two entities "
                               f"({ds.entity_keys[req_ent[rinv[i]]]!r} and {ds.entity_keys[ds.entity[i]]!r}); a "
                               "Thompson request ranks candidates of one entity", f"example {i}")
        theta_part = np.zeros(len(row))
        cold = ~found
        z_cold = _normals(seed, req[row[cold]], fids[cold], np.dtype(np.float64))
        theta_part[cold] = z_cold * math.sqrt(cold_var)
        rflat = flat_index_of_code[req_ent]
        for d in np.unique(widths[rflat[rflat >= 0]]) if len(widths) else []:
            d = int(d)
            rs = np.flatnonzero((rflat >= 0) & (widths[np.maximum(rflat, 0)] == d))
            if d == 0 or not len(rs):
                continue
            ents = rflat[rs]
            starts = flat.indptr[ents]
            idx = starts[:, None] + np.arange(d)[None, :]
            z = _normals(seed, np.repeat(ureq[rs], d), flat.feature_ids[idx].reshape(-1),
                         np.dtype(np.float64)).reshape(-1, d)
            mu = flat.means[idx]
            if precision == "full":
                pst = flat.precision_indptr[ents]
                P = stored_precision[pst[:, None] + np.arange(d * d)[None, :]].reshape(-1, d, d)
                L = np.linalg.cholesky(P)
                step = np.linalg.solve(np.swapaxes(L, 1, 2), z[..., None])[..., 0]
            else:
                step = z / np.sqrt(stored_precision[idx])
            theta = mu + step  # (R_d, d)
            local = np.full(len(ureq), -1, np.int64)
            local[rs] = np.arange(len(rs))
            sel = found & (local[rinv[row]] >= 0)
            theta_part[sel] = theta[local[rinv[row[sel]]], within[sel]]
        out["thompson"] = ds.offset.astype(np.float64) + np.bincount(row, weights=vals * theta_part, minlength=n)
    return out


def _score_task(spec: dict, acc: Any) -> Any:
    def run(batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa

        started = time.perf_counter()
        table = partition_table(batches, spec["worker"])
        if table is None:
            return
        part, attempt = task_info()
        try:
            data, state = split_union(table, {**spec, "data_columns": spec["pass_columns"]})
            del table
            if data.num_rows == 0:
                return
            ds = dataset_from_arrow(data, spec)
            store = None
            if state.num_rows:
                store = EntityStore.from_flat(flat_from_arrow(state, spec["precision"], "entity"),
                                              np.dtype(spec["dtype"]), spec["precision"])
            requests = None
            if spec["seed"] is not None:
                check_no_nulls(data, spec["request"], "request ids", spec["entity"])
                requests = to_numpy(data.column(spec["request"])).astype(np.int64)
            t1 = time.perf_counter()
            scores = explore_scores(ds, store, spec["hyper"]["l2"], spec["precision"], requests=requests,
                                    seed=spec["seed"], alpha=spec["alpha"])
        except (ValueError, TypeError) as exc:
            raise task_error(exc) from exc
        for name in spec["outputs"]:
            data = data.append_column(spec["outputs"][name], pa.array(scores[name], pa.float64()))
        acc.add([{"job": spec["job"], "partition": part, "attempt": attempt, "entities": int(ds.num_entities),
                  "rows": int(ds.num_examples), "seconds": {"convert": t1 - started,
                                                            "score": time.perf_counter() - t1}}])
        yield from data.to_batches()

    return run


def score(df: Any, state: SparkState | str, columns: Columns, *, output: str = "score", ucb: str | None = None,
          alpha: float = 1.0, thompson: str | None = None, seed: int | None = None, request: str | None = None,
          num_partitions: int | None = None) -> tuple[Any, SparkReport]:
    """Score the examples of ``df`` with a state: adds the mean margin (``offset + x . mean``) as column
    ``output`` and, on request, UCB (``ucb``: column name; ``alpha``) and Thompson (``thompson``: column
    name; ``seed``, an int; ``request``: an integer column of request ids, each request one entity's
    candidates, sharing one posterior draw) margins. Entities without a state score their offset (mean)
    and the cold prior (exploration). Returns ``(DataFrame, report)``; the DataFrame is computed once
    (persisted)."""
    from pyspark import StorageLevel

    spark = session_of(df)
    started = time.perf_counter()
    stored = as_state(spark, state)
    if stored is None:
        raise column_error(ValueError, "state", None, "is required to score")
    thompson_seed = None
    if thompson is not None:
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            raise column_error(TypeError, "seed", seed, "must be an int: Thompson scores need an explicit seed")
        thompson_seed = int(seed)
        if request is None:
            raise column_error(ValueError, "request", None, "is required for Thompson scores (an integer column of "
                               "request ids)")
        check_column(df, request, INT_TYPES, "request ids")
    cols = Columns(columns.entity, None, columns.features, columns.weight, columns.offset)
    entity_type, prior, hyper, imap, fspec, dtype = prepare(df, None, cols, stored)
    P = partition_count(df, num_partitions)
    names = {"score": output}
    if ucb is not None:
        names["ucb"] = ucb
    if thompson is not None:
        names["thompson"] = thompson
    for c in names.values():
        if c in df.columns:
            raise column_error(ValueError, c, None, "is already a column of the DataFrame (choose another output name)")
    frame = df
    feats = columns.features
    for c in feats.categorical:  # as the index map names them
        frame = frame.withColumn(c, frame[c].cast("string"))
    if entity_type == "bigint":
        frame = frame.withColumn(columns.entity, frame[columns.entity].cast("bigint"))
    pass_cols = list(frame.columns)
    acc = report_accumulator(spark.sparkContext)
    job = uuid.uuid4().hex[:12]
    spec = task_spec(cols, fspec, imap, hyper, dtype, entity_type, pass_cols, None, job)
    spec.update(pass_columns=pass_cols, seed=thompson_seed,
                alpha=None if ucb is None else float(alpha), request=request, outputs=names)
    union = union_with_state(frame, prior, cols, entity_type).repartition(P, columns.entity)
    schema = frame.schema
    from pyspark.sql.types import DoubleType, StructField, StructType

    out_schema = StructType([StructField(f.name, f.dataType, True) for f in schema.fields]
                            + [StructField(c, DoubleType(), True) for c in names.values()])
    out = union.mapInArrow(_score_task(spec, acc), out_schema).persist(StorageLevel.MEMORY_AND_DISK)
    run_action(lambda: out.count())
    wall = time.perf_counter() - started
    return out, collect_report(acc.value, wall, {})

