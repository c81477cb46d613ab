"""lljax.spark against the single-process update, on bench_scale's workload (issue 16, item 4).

Workload: ``--entities`` entities (default 1,000,000) with power-law row counts (mean ``--mean-rows``,
default 16), ``--features`` features per entity from a ``--vocabulary`` (as ``bench_scale.py``), logistic,
``l2=1, delta=1, hessian=full``, float64, cold start.

Timed, in one run:

- **single process**: ``Dataset.from_arrays`` + ``RandomEffectModel.update`` (after a small warm-up update
  that compiles the common shapes; the Spark workers get the same warm-up through JAX's persistent
  compilation cache, which the script turns on for both);
- **Spark local[2]** (and ``local[1]``): ``lljax.spark.update`` from a Parquet input (written with pyarrow
  beforehand, not timed) to a Parquet state (``output=``: written to a new directory and swapped in). Each
  master runs in its own Python process, so in its own new JVM after the same warm-up (in one process the
  second master would run on a JVM that the first one's jobs had already compiled: faster). Its
  stages: *repartition* (a separate job that only shuffles the input by entity, ``noop`` sink), and from
  the report, summed over tasks: *convert* (Arrow batches -> ``Dataset`` and priors), *solve* (the batched
  update), *output* (results -> Arrow); *write* is the job's wall time minus the slowest task's time (the
  shuffle read, the Parquet write and the swap), an estimate.
- the largest relative difference between the Spark state and the single-process model (means and
  precisions, every entity).
- ``--floor``: Spark's own work on the same data under each master, without lljax's code.

Run: ``python benchmarks/bench_spark.py`` (1M entities: tens of minutes and ~10 GB on a 2-core machine);
``--entities 100000`` for a quick run. Prints a table, writes ``results/bench_spark.json`` and ends with
``spark local[2]: N entities, T s, single-process T0 s, overhead R, max rel diff D``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, write_json  # noqa: E402
from bench_scale import make_data  # noqa: E402

import lljax  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--entities", type=int, default=1_000_000)
    p.add_argument("--mean-rows", type=float, default=16.0)
    p.add_argument("--max-rows", type=int, default=1000)
    p.add_argument("--features", type=int, default=8)
    p.add_argument("--vocabulary", type=int, default=100_000)
    p.add_argument("--partitions", type=int, default=8, help="Spark tasks (entity partitions)")
    p.add_argument("--driver-memory", default="8g")
    p.add_argument("--skip-local1", action="store_true", help="do not time local[1]")
    p.add_argument("--floor", action="store_true",
                   help="also time Spark's own work on the same data under local[2] (no lljax code): the Parquet scan, "
                        "the scan and shuffle by entity, the shuffle into Python workers (Arrow), and the state's "
                        "round trip through Python and its Parquet write")
    p.add_argument("--batch-rows", type=int, default=None,
                   help="spark.sql.execution.arrow.maxRecordsPerBatch (default: Spark's, 10000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--one-master", nargs=3, metavar=("MASTER", "INPUT", "WORK"), default=None,
                   help=argparse.SUPPRESS)  # internal: time one master in this (new) process
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "bench_spark.json"))
    return p.parse_args(argv)


def write_input(data: dict, path: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(data["label"])
    W = len(data["values"]) // n
    offsets = pa.array(np.arange(0, (n + 1) * W, W, dtype=np.int32))
    table = pa.table({
        "entity": pa.array(data["entity"]),
        "label": pa.array(data["label"].astype(np.float64)),
        "offset": pa.array(data["offset"].astype(np.float64)),
        "idx": pa.ListArray.from_arrays(offsets, pa.array((data["feature_ids"] - 1).astype(np.int32))),
        "val": pa.ListArray.from_arrays(offsets, pa.array(data["values"].astype(np.float64))),
    })
    pq.write_table(table, path, row_group_size=1 << 20)


def session(master: str, partitions: int, memory: str, batch_rows: int | None = None):
    from pyspark.sql import SparkSession

    b = (SparkSession.builder.master(master).appName("bench_spark").config("spark.ui.enabled", "false")
         .config("spark.sql.shuffle.partitions", str(partitions)).config("spark.driver.memory", memory)
         .config("spark.sql.adaptive.enabled", "false"))
    if batch_rows is not None:
        b = b.config("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_rows))
    s = b.getOrCreate()
    s.sparkContext.setLogLevel("ERROR")
    return s


def run_spark(master: str, args, input_path: str, work: str, model, cols) -> dict:
    from lljax import spark as ls

    spark = session(master, args.partitions, args.driver_memory, args.batch_rows)
    df = spark.read.parquet(input_path)
    # warm-up: a small update (JVM, Python workers, JAX import, the compile cache)
    ls.update(df.where("entity < 2000"), model, cols, num_partitions=args.partitions)
    t0 = time.perf_counter()
    df.repartition(args.partitions, "entity").write.format("noop").mode("overwrite").save()
    repartition = time.perf_counter() - t0
    out = os.path.join(work, "state-" + master.replace("[", "").replace("]", ""))
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    state, report = ls.update(df, model, cols, output=out, num_partitions=args.partitions)
    wall = time.perf_counter() - t0
    sec = report.seconds
    slowest = max(t["seconds"].get("task", 0.0) for t in report.tasks)
    res = {"master": master, "wall_s": wall, "repartition_s": repartition, "receive_s": sec.get("receive", 0.0),
           "convert_s": sec.get("convert", 0.0),
           "solve_s": sec.get("solve", 0.0), "output_s": sec.get("output", 0.0),
           "write_s_estimate": max(0.0, report.stages.get("job", wall) - slowest), "slowest_task_s": slowest,
           "swap_s": report.stages.get("swap", 0.0), "entities": report.entities, "rows": report.rows,
           "status_counts": report.status_counts, "tasks": len(report.tasks), "load_1min_before": load}
    res["state_path"] = out
    return res, spark


def _consume(batches):
    """A ``mapInArrow`` function that receives its partition and yields one row (its row count)."""
    import pyarrow as pa

    n = sum(b.num_rows for b in batches)
    yield pa.record_batch({"n": pa.array([n], pa.int64())})


def _identity(batches):
    yield from batches


def spark_floor(spark, args, input_path: str, state_path: str, work: str, master: str = "") -> dict:
    """Spark's own work on the benchmark's data, without lljax's code: what an update cannot go below."""
    from pyspark.sql import functions as F

    df = spark.read.parquet(input_path)
    out = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        fn()
        out[name] = time.perf_counter() - t0
        print(f"  floor {master} {name}: {out[name]:.1f}s", flush=True)

    timed("scan_s", lambda: df.write.format("noop").mode("overwrite").save())
    timed("scan_shuffle_s", lambda: df.repartition(args.partitions, "entity").write.format("noop")
          .mode("overwrite").save())
    timed("scan_shuffle_to_python_s", lambda: df.withColumn("_kind", F.lit(0).cast("tinyint"))
          .repartition(args.partitions, "entity").mapInArrow(_consume, "n bigint").write.format("noop")
          .mode("overwrite").save())
    state = spark.read.parquet(state_path)
    timed("state_scan_s", lambda: state.write.format("noop").mode("overwrite").save())
    tag = master.replace("[", "").replace("]", "")
    timed("state_copy_s", lambda: state.write.parquet(os.path.join(work, f"floor-copy-{tag}")))
    timed("state_through_python_copy_s", lambda: state.mapInArrow(_identity, state.schema).write
          .parquet(os.path.join(work, f"floor-python-copy-{tag}")))
    return out


def read_state_flat(path: str):
    """A written state's entities as ``FlatEntities`` (read with pyarrow: no Spark session needed)."""
    import pyarrow.parquet as pq

    from lljax.spark.convert import flat_from_arrow
    from lljax.spark.state import METADATA_FILE, StateInfo

    with open(os.path.join(path, METADATA_FILE)) as f:
        info = StateInfo.from_json(f.read(), path)
    return flat_from_arrow(pq.read_table(path), info.precision, "entity")  # "_" files are not read


def max_rel_diff(ref: lljax.RandomEffectModel, b) -> float:
    a = ref.store.to_flat(precision_form="upper")  # as the Spark state holds it
    ia, ib = np.argsort(a.keys, kind="stable"), np.argsort(b.keys, kind="stable")
    if not np.array_equal(a.keys[ia], b.keys[ib]):
        return float("inf")

    def pairs(flat, order, sizes_of):
        starts = (flat.precision_indptr if sizes_of == "p" else flat.indptr)[order]
        counts = (np.diff(flat.precision_indptr) if sizes_of == "p" else flat.sizes)[order]
        idx = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        return (flat.precision if sizes_of == "p" else flat.means)[idx]

    diff = 0.0
    for kind in ("m", "p"):
        x, y = pairs(a, ia, kind), pairs(b, ib, kind)
        if x.shape != y.shape:
            return float("inf")
        scale = np.maximum(np.abs(x), 1e-300)
        diff = max(diff, float((np.abs(x - y) / np.maximum(scale, np.abs(x).max() * 1e-12)).max()) if x.size else 0)
    return diff


def new_model():
    return lljax.RandomEffectModel("logistic", l2=1.0, delta=1.0, hessian="full")


def columns(args):
    from lljax import spark as ls

    return ls.Columns("entity", "label", ls.Features.arrays("idx", "val", args.vocabulary - 1), offset="offset")


def one_master(args) -> int:
    """Time one master in this process (a new JVM): the update, then (``--floor``) Spark's own work."""
    import json

    master, input_path, work = args.one_master
    res, spark = run_spark(master, args, input_path, work, new_model(), columns(args))
    if args.floor:
        res["floor"] = spark_floor(spark, args, input_path, res["state_path"], work, master)
    spark.stop()
    with open(os.path.join(work, f"result-{master}.json"), "w") as f:
        json.dump(res, f)
    return 0


def spawn(master: str, args, argv, input_path: str, work: str) -> dict:
    """:func:`one_master` in a new Python process (so a new JVM), with this run's arguments."""
    import json
    import subprocess

    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--one-master", master, input_path, work]
    subprocess.run(cmd, check=True)
    with open(os.path.join(work, f"result-{master}.json")) as f:
        return json.load(f)


def setup_jax() -> None:
    os.environ["PYSPARK_PYTHON"] = sys.executable
    jax.config.update("jax_enable_x64", True)
    cache = os.path.join(tempfile.gettempdir(), "lljax-bench-spark-jax-cache")
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    setup_jax()
    if args.one_master is not None:
        return one_master(args)

    load_before = os.getloadavg()
    work = tempfile.mkdtemp(prefix="bench_spark_")
    t0 = time.perf_counter()
    data = make_data(args.entities, args.mean_rows, args.max_rows, args.features, args.vocabulary, "float64",
                     args.seed)
    input_path = os.path.join(work, "input.parquet")
    write_input(data, input_path)
    print(f"data: {args.entities} entities, {len(data['label'])} rows, generated and written in "
          f"{time.perf_counter() - t0:.1f}s", flush=True)

    # single process (warm-up update first, as the Spark side gets one)
    small = data["entity"] < 2000
    n_small = int(small.sum())
    new_model().update(lljax.Dataset.from_arrays(
        data["entity"][small], data["label"][small], indptr=data["indptr"][: n_small + 1],
        feature_ids=data["feature_ids"][: data["indptr"][n_small]], values=data["values"][: data["indptr"][n_small]],
        offset=data["offset"][small], num_features=data["num_features"]), progress=False)
    t0 = time.perf_counter()
    ds = lljax.Dataset.from_arrays(data["entity"], data["label"], indptr=data["indptr"],
                                   feature_ids=data["feature_ids"], values=data["values"], offset=data["offset"],
                                   num_features=data["num_features"])
    ref = new_model()
    ref.update(ds, progress=False)
    single = time.perf_counter() - t0
    del ds
    print(f"single process: {single:.1f}s", flush=True)

    n_rows = int(len(data["label"]))
    del data
    runs = [spawn("local[2]", args, argv, input_path, work)]
    r2 = runs[0]
    diff = max_rel_diff(ref, read_state_flat(r2["state_path"]))
    if not args.skip_local1:
        runs.append(spawn("local[1]", args, argv, input_path, work))

    print()
    header = (f"{'run':<16}{'wall s':>9}{'repart. s':>11}{'receive s':>11}{'convert s':>11}{'solve s':>9}"
              f"{'output s':>10}{'write s*':>10}{'tasks':>7}{'entities':>10}{'load':>7}")
    print(header)
    print(f"{'single process':<16}{single:>9.1f}{'':>11}{'':>11}{'':>11}{single:>9.1f}")
    for r in runs:
        print(f"{'spark ' + r['master']:<16}{r['wall_s']:>9.1f}{r['repartition_s']:>11.1f}{r['receive_s']:>11.1f}"
              f"{r['convert_s']:>11.1f}{r['solve_s']:>9.1f}{r['output_s']:>10.1f}{r['write_s_estimate']:>10.1f}"
              f"{r['tasks']:>7}{r['entities']:>10}{r['load_1min_before']:>7.2f}")
    print("(receive/convert/solve/output: summed over tasks; write*: job wall minus the slowest task, an estimate; "
          "load: 1-minute load average before the update)")
    floors = [(r["master"], r["floor"]) for r in runs if r.get("floor")]
    if floors:
        names = list(floors[0][1])
        print(f"\nSpark's own work, no lljax code (s):{'':<4}" + "".join(f"{m:>10}" for m, _ in floors))
        for n in names:
            print(f"  {n:<38}" + "".join(f"{f[n]:>10.1f}" for _, f in floors))
    overhead = r2["wall_s"] / single
    speedup = runs[1]["wall_s"] / r2["wall_s"] if len(runs) > 1 else None
    print(f"overhead local[2] / single process: {overhead:.2f}x (goal <= 2x)")
    if speedup is not None:
        print(f"local[1] -> local[2]: {speedup:.2f}x faster (goal >= 1.6x)")
    doc = {"benchmark": "bench_spark", "date": dt.datetime.now().isoformat(timespec="seconds"),
           "args": vars(args), "rows": n_rows, "single_process_s": single, "runs": runs,
           "overhead": overhead, "local1_to_local2_speedup": speedup, "max_rel_diff": diff,
           "machine": machine_info(load_before, jax=jax.__version__)}
    write_json(args.out, doc)
    shutil.rmtree(work, ignore_errors=True)
    print(f"spark local[2]: {args.entities} entities, {r2['wall_s']:.1f} s, single-process {single:.1f} s, "
          f"overhead {overhead:.2f}, max rel diff {diff:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
