"""First-update compile time, with and without JAX's persistent compilation cache.

A new model's first ``update`` compiles one solver per block shape. JAX can keep compiled
executables on disk between processes (its persistent compilation cache): one line before the first
update turns it on,

    jax.config.update("jax_compilation_cache_dir", "/path/to/cache")

(and, to cache even the fast compiles, ``jax_persistent_cache_min_compile_time_secs = 0`` and
``jax_persistent_cache_min_entry_size_bytes = -1``). lljax never sets it for you.

This script times, each in a fresh process, the first update of a new model on the demo's data
(``lljax.demo.make_game_data``: 3,000 entities, all their rows), then a second update of a fresh model
on the same data (warm, in-process jit cache), in three settings:

- ``no cache``: the cache off;
- ``cold cache``: the cache on, empty directory (the run that fills it);
- ``warm cache``: the cache on, filled by the previous run.

Run: ``python benchmarks/bench_compile.py [--repeats 3]``; prints a table, writes
``results/bench_compile.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time
import jax
jax.config.update("jax_enable_x64", True)
cache = sys.argv[1]
if cache != "-":
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
import numpy as np
import lljax
from lljax.demo import make_game_data
d = make_game_data(3000, seed=0)
data = lljax.Dataset.from_arrays(d["entity"], d["label"], indptr=d["indptr"], feature_ids=d["feature_ids"],
                                 values=d["values"], offset=d["offset"], num_features=201)
first = lljax.RandomEffectModel("logistic", l2=1.0, delta=0.8, hessian="full")
t = time.perf_counter(); report = first.update(data, progress=False); first_s = time.perf_counter() - t
second = lljax.RandomEffectModel("logistic", l2=1.0, delta=0.8, hessian="full")
t = time.perf_counter(); second.update(data, progress=False); warm_s = time.perf_counter() - t
print(json.dumps({"first_s": first_s, "warm_s": warm_s, "blocks": report.blocks,
                  "entities": len(report.entity_keys)}))
"""


def child(cache: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, cache], check=True, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONWARNINGS="ignore"))
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="independent (no cache, cold, warm) triples")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "bench_compile.json")
    args = p.parse_args(argv)
    runs = {"no cache": [], "cold cache": [], "warm cache": []}
    for _ in range(args.repeats):
        runs["no cache"].append(child("-"))
        with tempfile.TemporaryDirectory() as cache:
            runs["cold cache"].append(child(cache))
            runs["warm cache"].append(child(cache))
    print(f"{'setting':<12}{'first update (s)':>22}{'compile share':>15}{'warm update (s)':>18}   blocks")
    summary = {}
    for name, rs in runs.items():
        first = statistics.median(r["first_s"] for r in rs)
        warm = statistics.median(r["warm_s"] for r in rs)
        summary[name] = {"first_s": [r["first_s"] for r in rs], "warm_s": [r["warm_s"] for r in rs],
                         "median_first_s": first, "median_warm_s": warm, "blocks": rs[0]["blocks"]}
        print(f"{name:<12}{first:>22.3f}{(first - warm) / first:>15.0%}{warm:>18.3f}   {rs[0]['blocks']}")
    ratio = summary["no cache"]["median_first_s"] / summary["warm cache"]["median_first_s"]
    print(f"first update, no cache / warm cache: {ratio:.1f}x (medians of {args.repeats} fresh processes each)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": runs, "summary": summary, "no_cache_over_warm_cache": ratio}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
