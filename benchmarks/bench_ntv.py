"""Reading NTV JSON lines: records/s of ``read_ntv_jsonl`` (columnar, pyarrow.json) against the pure-Python parser.

    python benchmarks/bench_ntv.py                         # 1,000,000 records, 6 features each
    python benchmarks/bench_ntv.py --records 100000 --baseline-ref 8a15bb7

Writes a synthetic file (entity ``"u<k>"`` of 100,000 users, 0/1 label, weight, offset, ``--features``
name-term-value features per record) with ``write_ntv_jsonl``, then times, on the same file:

- ``read_ntv_jsonl``: the columnar reader (pyarrow.json parse, vectorized checks, records built in one pass);
- ``list(iter_ntv_jsonl(path))``: the pure-Python parser (the fallback, and the reader's oracle);
- with ``--baseline-ref REF``, ``read_ntv_jsonl`` as it was at git commit ``REF`` (loaded from ``git show``),
  e.g. the commit before the columnar reader, to compare with "today's" reader.

Each reader runs ``--repeats`` times; the best wall time is reported, with its CPU time (the machine is
shared, so wall time moves with the load). The JSON goes to ``benchmarks/results/bench_ntv.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, write_json  # noqa: E402

from lljax import Feature, TrainingRecord, iter_ntv_jsonl, read_ntv_jsonl, write_ntv_jsonl  # noqa: E402


def make_file(path: Path, records: int, features: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 100_000, records).tolist()
    labels = rng.integers(0, 2, records).astype(float).tolist()
    offsets = rng.normal(size=records).tolist()
    names = rng.integers(0, 10, (records, features)).tolist()
    terms = rng.integers(0, 1000, (records, features)).tolist()
    values = rng.normal(size=(records, features)).tolist()
    items = ((f"u{users[i]}", TrainingRecord(labels[i], 1.0, offsets[i],
                                              [Feature(f"n{a}", f"t{b}", v) for a, b, v in
                                               zip(names[i], terms[i], values[i])]))
             for i in range(records))
    write_ntv_jsonl(path, items)


def baseline_reader(ref: str):
    """``read_ntv_jsonl`` of ``lljax/data/ntv.py`` at git commit ``ref``."""
    root = Path(__file__).resolve().parent.parent
    source = subprocess.run(["git", "show", f"{ref}:lljax/data/ntv.py"], cwd=root, check=True,
                            capture_output=True, text=True).stdout
    module_path = Path(tempfile.mkdtemp()) / "ntv_baseline.py"
    module_path.write_text(source)
    spec = importlib.util.spec_from_file_location("ntv_baseline", module_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.read_ntv_jsonl


def timed(read, path: Path, repeats: int) -> dict:
    best = None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        items = read(path)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if best is None or wall < best["seconds"]:
            best = {"seconds": wall, "cpu_seconds": cpu, "records": len(items)}
        del items
    best["records_per_s"] = best["records"] / best["seconds"]
    best["records_per_cpu_s"] = best["records"] / best["cpu_seconds"]
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--python-repeats", type=int, default=1, help="repeats of the (slow) pure-Python parser")
    parser.add_argument("--baseline-ref", default=None, help="git commit whose read_ntv_jsonl is also timed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "bench_ntv.json"))
    args = parser.parse_args()
    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.jsonl"
        t = time.perf_counter()
        make_file(path, args.records, args.features, args.seed)
        mib = path.stat().st_size / 2**20
        print(f"wrote {args.records:,} records ({mib:.0f} MiB) in {time.perf_counter() - t:.1f}s")
        readers = {"read_ntv_jsonl (columnar)": (read_ntv_jsonl, args.repeats),
                   "pure-Python parser": (lambda p: list(iter_ntv_jsonl(p)), args.python_repeats)}
        if args.baseline_ref:
            readers[f"read_ntv_jsonl at {args.baseline_ref}"] = (baseline_reader(args.baseline_ref),
                                                                  args.python_repeats)
        results = {}
        for name, (read, repeats) in readers.items():
            results[name] = timed(read, path, repeats)
            r = results[name]
            print(f"{name:<36} {r['seconds']:8.2f} s {r['records_per_s']:>12,.0f} records/s "
                  f"(cpu {r['cpu_seconds']:.2f} s, {r['records_per_cpu_s']:,.0f} records/cpu-s)")
        size = path.stat().st_size
    fast = results["read_ntv_jsonl (columnar)"]
    ratios = {name: fast["records_per_s"] / r["records_per_s"] for name, r in results.items() if r is not fast}
    for name, ratio in ratios.items():
        print(f"columnar / {name}: {ratio:.1f}x")
    write_json(args.out, {"benchmark": "bench_ntv", "started": started, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                          "records": args.records, "features_per_record": args.features, "file_bytes": size,
                          "results": results, "speedup_of_columnar": ratios,
                          "machine": machine_info(load_before, pyarrow=_version("pyarrow"))})


def _version(name: str) -> str:
    try:
        return __import__(name).__version__
    except ImportError:
        return "not installed"


if __name__ == "__main__":
    main()
