"""End-to-end scale: one million entities, from columnar arrays to the updated model state.

Problem (issue 4, part 4): ``--entities`` entities (default 1,000,000) whose row counts follow a
power law on ``[1, --max-rows]`` (P(n) proportional to n^-alpha, alpha solved so the mean is
``--mean-rows``, default 16: about 16M rows), each entity with ``--features`` (default 8) distinct
features drawn uniformly from a ``--vocabulary`` (default 100,000) feature vocabulary; every row of an
entity carries all of them (N(0, 1) values) plus the intercept that ``Dataset.from_arrays`` adds.
Offsets N(0, 1), logistic labels from random true coefficients N(0, 0.5^2), unit weights. Model:
``RandomEffectModel("logistic", l2=1, delta=1, hessian=--hessian)`` (default full: the sequential
Bayesian logistic model keeps every entity's full posterior precision), cold start, ``--dtype``
(default float64).

Timed (one process, wall clock): ``Dataset.from_arrays`` (validation) and
``model.update`` (lookup, local subspaces, block planning, host packing, device solves, store writes),
with the update's own phase breakdown (``UpdateReport.phase_seconds``). Memory: the process's peak
resident set (``ru_maxrss``, which includes the generated input arrays) and the resident set before
the update. The first (compiling) update of the process counts: ``--warm`` runs a small update first
so the compile of the common shapes is reported separately.

Shares of the total: *host-side packing* is the update's ``prepare`` (store lookup, local subspaces,
block planning) and ``pack`` (building each padded block) phases, what issue 4's "host-side packing <=
40%" names; *all host work* adds ``Dataset.from_arrays``, ``validate`` and ``write`` (storing the
results): everything but ``dispatch`` (on CPU: compiling new shapes and launching the solves) and
``device_wait``. Both are printed and written.

The floor of the solve: the work model of ``floor.py`` (``work_per_entity``: flops, transcendentals and
bytes of one entity's Newton solve) summed over the entities at their own rows, features and Newton steps
(from the ``UpdateReport``; no padding counted), over the rates ``floor.measure(quick=True)`` measures at the
end of the run (best of the matrix multiply, ``exp`` and read bandwidth). It says how far the machine is from
being the limit: the update's wall time over that floor.

``--shuffle`` puts the rows in a random order before the timed part (an entity's rows no longer next to each
other, as in a log of events): the entity keys are then encoded through a hash table and the rows grouped by a
counting sort, and the rows are read from anywhere in memory.

Run: ``python benchmarks/bench_scale.py`` (about a minute and 3-4 GB on a 2-core machine);
``--entities 100000`` for a quick run. Prints a table and writes ``results/bench_scale.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, write_json  # noqa: E402
from floor import floor_seconds, measure, work_per_entity  # noqa: E402

import lljax  # noqa: E402


def _rss_gb() -> float:
    """Current resident set size in GB (from /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9
    except OSError:
        return 0.0


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux reports KiB


class RssSampler:
    """Samples the resident set every ``interval`` seconds in a thread: ``samples`` of (seconds, GB)."""

    def __init__(self, interval: float = 0.25):
        import threading

        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._start = time.perf_counter()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.samples.append((time.perf_counter() - self._start, _rss_gb()))

    def stop(self) -> list[tuple[float, float]]:
        self._stop.set()
        self._thread.join()
        return self.samples


def power_law_alpha(mean: float, max_rows: int) -> float:
    """Exponent of P(n) ~ n^-alpha on [1, max_rows] whose mean is ``mean`` (bisection)."""
    n = np.arange(1, max_rows + 1, dtype=np.float64)
    lo, hi = 0.0, 5.0
    for _ in range(60):
        alpha = (lo + hi) / 2
        p = n**-alpha
        if (p * n).sum() / p.sum() > mean:
            lo = alpha
        else:
            hi = alpha
    return (lo + hi) / 2


def make_data(entities: int, mean_rows: float, max_rows: int, features: int, vocabulary: int, dtype: str,
              seed: int, intercept_in_data: bool = False, chunk: int = 50_000) -> dict:
    """Columnar CSR arrays of the problem above, generated a chunk of entities at a time (so the
    generator's temporaries stay small next to the output). Feature ids are int32 (0 is the intercept;
    ``intercept_in_data`` puts it as the first entry of every row, else ``Dataset`` adds it)."""
    rng = np.random.default_rng(seed)
    alpha = power_law_alpha(mean_rows, max_rows)
    n = np.arange(1, max_rows + 1)
    p = n**-alpha
    rows_per = rng.choice(n, size=entities, p=p / p.sum()).astype(np.int64)
    total = int(rows_per.sum())
    F = features
    W = F + 1 if intercept_in_data else F  # stored entries per row
    entity = np.repeat(np.arange(entities, dtype=np.int64), rows_per)
    offset = rng.standard_normal(total).astype(dtype)
    label = np.empty(total, dtype)
    feature_ids = np.empty((total, W), np.int32)
    values = np.empty((total, W), dtype)
    if intercept_in_data:
        feature_ids[:, 0] = 0
        values[:, 0] = 1.0
    row_start = np.concatenate([[0], np.cumsum(rows_per)])
    for lo in range(0, entities, chunk):
        hi = min(lo + chunk, entities)
        r0, r1 = int(row_start[lo]), int(row_start[hi])
        ids = np.sort(np.stack([rng.choice(vocabulary - 1, F, replace=False) for _ in range(hi - lo)]), axis=1) + 1
        theta = rng.normal(0.0, 0.5, (hi - lo, F))
        local = entity[r0:r1] - lo
        x = rng.standard_normal((r1 - r0, F))
        margin = offset[r0:r1] + np.einsum("rf,rf->r", x, theta[local])
        label[r0:r1] = rng.random(r1 - r0) < 1.0 / (1.0 + np.exp(-margin))
        feature_ids[r0:r1, W - F:] = ids[local]
        values[r0:r1, W - F:] = x
    indptr = np.arange(0, (total + 1) * W, W, dtype=np.int64)
    return {"entity": entity, "label": label, "offset": offset, "indptr": indptr,
            "feature_ids": feature_ids.reshape(-1), "values": values.reshape(-1), "num_features": vocabulary,
            "alpha": alpha, "rows_per_entity": rows_per}


def shuffle_rows(data: dict, seed: int) -> dict:
    """``data`` with its rows (entity, label, offset and each row's CSR entries) in a random order: the rows of an
    entity no longer next to each other, as in a log of events kept in time order."""
    n = len(data["label"])
    order = np.random.default_rng([seed, 1]).permutation(n)
    indptr = data["indptr"]
    lengths = np.diff(indptr)[order]
    new_indptr = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=new_indptr[1:])
    entries = np.repeat(indptr[:-1][order] - new_indptr[:-1], lengths)
    entries += np.arange(int(new_indptr[-1]), dtype=np.int64)
    out = dict(data)
    for name in ("entity", "label", "offset"):
        out[name] = data[name][order]
    out["indptr"] = new_indptr
    out["feature_ids"] = data["feature_ids"][entries]
    out["values"] = data["values"][entries]
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--entities", type=int, default=1_000_000)
    p.add_argument("--mean-rows", type=float, default=16.0)
    p.add_argument("--max-rows", type=int, default=1000)
    p.add_argument("--features", type=int, default=8)
    p.add_argument("--vocabulary", type=int, default=100_000)
    p.add_argument("--hessian", default="full", choices=["full", "diagonal"])
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    p.add_argument("--intercept", default="dataset", choices=["dataset", "data"],
                   help="who adds the intercept: the Dataset (intercept_id=0, implicit: the rows are kept as given) "
                        "or the input data (each row lists it; intercept_id=None)")
    p.add_argument("--keep-input", action="store_true",
                   help="keep a reference to the generated arrays during the update (default: drop it once the "
                        "Dataset is built, as a pipeline that loaded them for training would)")
    p.add_argument("--compile-cache", metavar="DIR",
                   help="JAX persistent compilation cache folder: a second run in a new process then loads the "
                        "compiled block shapes instead of compiling them")
    p.add_argument("--warm", action="store_true", help="compile the common shapes with a small update first")
    p.add_argument("--touch-memory", type=float, default=0.0, metavar="GB",
                   help="before anything else, write this many GB in a child process that then exits: on a virtual "
                        "machine whose host backs guest memory at its first touch, the run then meets memory the "
                        "guest has used before, as a long-running host does (see benchmarks/README.md)")
    p.add_argument("--shuffle", action="store_true",
                   help="put the rows in a random order (an entity's rows no longer next to each other) before the "
                        "timed Dataset.from_arrays")
    p.add_argument("--progress", action="store_true", help="show the update's progress bar")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_scale.json"))
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)  # a benchmark may; the library never does
    if args.compile_cache:
        jax.config.update("jax_compilation_cache_dir", args.compile_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    load = os.getloadavg()
    started = dt.datetime.now(dt.timezone.utc).isoformat()
    touch_s = None
    if args.touch_memory > 0:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import numpy; numpy.ones({int(args.touch_memory * 1e9) // 8})"],
                       check=True)
        touch_s = time.perf_counter() - t
        print(f"touched {args.touch_memory:g} GB in a child process in {touch_s:.1f}s")
    rss_start = _rss_gb()

    t = time.perf_counter()
    in_data = args.intercept == "data"
    data = make_data(args.entities, args.mean_rows, args.max_rows, args.features, args.vocabulary, args.dtype,
                     args.seed, intercept_in_data=in_data)
    intercept_id = None if in_data else 0
    generate_s = time.perf_counter() - t
    rows_per = data.pop("rows_per_entity")
    alpha = data.pop("alpha")
    if args.shuffle:
        t = time.perf_counter()
        data = shuffle_rows(data, args.seed)
        print(f"rows shuffled in {time.perf_counter() - t:.1f}s")
    input_gb = sum(a.nbytes for a in data.values() if isinstance(a, np.ndarray)) / 1e9
    rss_input = _rss_gb()
    print(f"generated {args.entities:,} entities, {len(data['label']):,} rows, {len(data['values']):,} nonzeros "
          f"(alpha={alpha:.3f}, max rows {rows_per.max()}) in {generate_s:.1f}s; input arrays {input_gb:.2f} GB")

    model = lljax.RandomEffectModel("logistic", l2=1.0, delta=1.0, hessian=args.hessian)
    compile_s = None
    if args.warm:
        t = time.perf_counter()
        small = lljax.Dataset.from_arrays(data["entity"][:200_000], data["label"][:200_000],
                                          indptr=data["indptr"][:200_001],
                                          feature_ids=data["feature_ids"][: int(data["indptr"][200_000])],
                                          values=data["values"][: int(data["indptr"][200_000])],
                                          offset=data["offset"][:200_000], num_features=data["num_features"],
                                          intercept_id=intercept_id)
        lljax.RandomEffectModel("logistic", l2=1.0, delta=1.0, hessian=args.hessian).update(small, progress=False)
        del small
        compile_s = time.perf_counter() - t

    sampler = RssSampler()
    t0 = time.perf_counter()
    dataset = lljax.Dataset.from_arrays(data["entity"], data["label"], indptr=data["indptr"],
                                        feature_ids=data["feature_ids"], values=data["values"],
                                        offset=data["offset"], num_features=data["num_features"],
                                        intercept_id=intercept_id)
    dataset_s = time.perf_counter() - t0
    if not args.keep_input:
        del data
    rss_dataset = _rss_gb()
    t = time.perf_counter()
    report = model.update(dataset, progress=args.progress)
    update_s = time.perf_counter() - t
    total_s = time.perf_counter() - t0
    peak = _peak_rss_gb()
    rss_timeline = sampler.stop()
    peak_at = max(rss_timeline, key=lambda s: s[1]) if rss_timeline else (0.0, 0.0)

    itemsize = np.dtype(args.dtype).itemsize
    shapes, inverse = np.unique(np.stack([report.rows, report.features]), axis=1, return_inverse=True)
    steps = np.bincount(inverse.reshape(-1), weights=report.iterations, minlength=shapes.shape[1])
    counts = np.bincount(inverse.reshape(-1), minlength=shapes.shape[1])
    rates = measure(quick=True)
    floor_s = {"compute_s": 0.0, "memory_s": 0.0}
    for (n, d), count, total_steps in zip(shapes.T.tolist(), counts.tolist(), steps.tolist()):
        # work_per_entity is linear in the Newton steps: count entities at their mean steps do the group's work
        work = work_per_entity(n, d, "logistic", args.hessian, total_steps / count, itemsize)
        one = floor_seconds(work, rates, args.dtype)
        floor_s["compute_s"] += count * one["compute_s"]
        floor_s["memory_s"] += count * one["memory_s"]
    floor_s["floor_s"] = max(floor_s["compute_s"], floor_s["memory_s"])

    phases = dict(report.phase_seconds)
    host = sum(v for k, v in phases.items() if k not in ("dispatch", "device_wait"))
    packing = phases.get("prepare", 0.0) + phases.get("pack", 0.0)  # the "host-side packing"
    result = {
        "entities": args.entities, "rows": int(len(dataset)), "nonzeros": dataset.num_nonzeros,
        "alpha": alpha, "rows_max": int(rows_per.max()), "rows_mean": float(rows_per.mean()),
        "generate_s": generate_s, "compile_warmup_s": compile_s, "dataset_s": dataset_s, "update_s": update_s,
        "total_s": total_s, "entities_per_s": args.entities / total_s, "phase_seconds": phases,
        "host_fraction_of_total": (host + dataset_s) / total_s,
        "packing_fraction_of_total": packing / total_s,
        "touch_memory_gb": args.touch_memory, "touch_memory_s": touch_s,
        "input_arrays_gb": input_gb, "rss_start_gb": rss_start, "rss_after_input_gb": rss_input,
        "rss_after_dataset_gb": rss_dataset, "rss_after_update_gb": _rss_gb(), "peak_rss_gb": peak,
        "rss_timeline_s_gb": rss_timeline, "rss_sampled_peak_at_s": peak_at[0],
        "blocks": report.blocks, "status_counts": report.status_counts,
        "iterations_mean": float(report.iterations.mean()), "iterations_max": int(report.iterations.max()),
        "stored_entities": len(model),
        "solve_floor": floor_s, "floor_rates": rates, "update_over_solve_floor": update_s / floor_s["floor_s"],
    }

    print(f"\n{'step':<28}{'seconds':>10}{'share':>8}")
    print(f"{'Dataset.from_arrays':<28}{dataset_s:>10.2f}{dataset_s / total_s:>8.0%}")
    for name, seconds in phases.items():
        print(f"{'update: ' + name:<28}{seconds:>10.2f}{seconds / total_s:>8.0%}")
    print(f"{'total (arrays -> state)':<28}{total_s:>10.2f}{1:>8.0%}   target <= 60 s")
    print(f"\nentities/s {result['entities_per_s']:,.0f}   blocks {report.blocks}\n"
          f"host-side packing (prepare + pack) {result['packing_fraction_of_total']:.0%} of the total (target <= 40%);"
          f" all host work (from_arrays, validate, prepare, pack, write) {result['host_fraction_of_total']:.0%}")
    print(f"peak RSS {peak:.2f} GB (target <= 4 GB; input arrays {input_gb:.2f} GB, RSS after input "
          f"{rss_input:.2f}, after Dataset {rss_dataset:.2f}, after update {result['rss_after_update_gb']:.2f}; "
          f"sampled peak {peak_at[1]:.2f} GB at {peak_at[0]:.1f} s of {total_s:.1f})")
    print(f"status {report.status_counts}  iterations mean {result['iterations_mean']:.2f} max "
          f"{result['iterations_max']}")
    print(f"solve floor (floor.py's work model at each entity's rows, features and steps; dgemm "
          f"{rates['gemm_gflops'][args.dtype]:.0f} GFLOP/s, exp {rates['exp_per_s'][args.dtype] / 1e9:.2f} G/s, read "
          f"{rates['read_gbs']:.0f} GB/s): {floor_s['floor_s']:.2f} s (compute {floor_s['compute_s']:.2f}, memory "
          f"{floor_s['memory_s']:.2f}); the update took {result['update_over_solve_floor']:.1f}x that")
    if compile_s is not None:
        print(f"warm-up update (compiles the common shapes, not in the total): {compile_s:.1f}s")

    doc = {"benchmark": "bench_scale", "started_utc": started,
           "finished_utc": dt.datetime.now(dt.timezone.utc).isoformat(), "argv": sys.argv[1:],
           "machine": machine_info(load), "config": vars(args), "result": result}
    write_json(args.out, doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
