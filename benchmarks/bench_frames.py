"""DataFrame / Arrow -> Dataset: seconds of ``dataset_from_frame`` on 1M rows x 10 feature columns.

    python benchmarks/bench_frames.py                 # 1,000,000 rows
    python benchmarks/bench_frames.py --rows 200000

The frame: an integer entity column (100,000 users, rows in random order), a 0/1 label, an offset and ten
feature columns: six numeric (floats with 30% zeros, an integer count, a boolean), two string columns
(100 and 1,000 distinct values), a pandas ``category`` (20 categories) and an integer column named as
categorical (50 values). Timed (best of ``--repeats``): ``dataset_from_frame`` on the pandas DataFrame, on
the same data as an Arrow table, and with string entity ids. The JSON goes to
``benchmarks/results/bench_frames.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, write_json  # noqa: E402

from lljax import dataset_from_frame  # noqa: E402

NUMERIC = ["f0", "f1", "f2", "f3", "count", "flag"]
CATEGORICAL = ["city", "page", "device", "slot"]


def make_frame(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    columns = {"user": rng.integers(0, 100_000, rows), "label": rng.integers(0, 2, rows).astype(np.float64),
               "offset": rng.normal(size=rows)}
    for name in NUMERIC[:4]:
        columns[name] = np.where(rng.random(rows) < 0.3, 0.0, rng.normal(size=rows))
    columns["count"] = rng.integers(0, 5, rows)
    columns["flag"] = rng.random(rows) < 0.5
    columns["city"] = np.array([f"city{i}" for i in range(100)], dtype=object)[rng.integers(0, 100, rows)]
    columns["page"] = np.array([f"page{i}" for i in range(1000)], dtype=object)[rng.integers(0, 1000, rows)]
    columns["device"] = pd.Categorical.from_codes(rng.integers(0, 20, rows), [f"d{i}" for i in range(20)])
    columns["slot"] = rng.integers(0, 50, rows)
    return pd.DataFrame(columns)


def best_of(fn, repeats: int) -> tuple[float, object]:
    best, result = None, None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - started
        best = seconds if best is None else min(best, seconds)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "bench_frames.json"))
    args = parser.parse_args()
    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    frame = make_frame(args.rows, args.seed)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    string_ids = frame.assign(user="u" + frame["user"].astype(str))
    roles = dict(entity="user", label="label", offset="offset", numeric=NUMERIC, categorical=CATEGORICAL)
    cases = {"pandas DataFrame": frame, "Arrow table": table, "pandas, string entity ids": string_ids}
    results = {}
    for name, data in cases.items():
        seconds, (ds, imap) = best_of(lambda data=data: dataset_from_frame(data, **roles), args.repeats)
        results[name] = {"seconds": seconds, "rows_per_s": args.rows / seconds, "examples": ds.num_examples,
                         "entities": ds.num_entities, "nonzeros": ds.num_nonzeros, "features": len(imap)}
        print(f"{name:<28} {seconds:6.3f} s  {args.rows / seconds:>12,.0f} rows/s  ({ds.num_entities:,} entities, "
              f"{len(imap):,} features, {ds.num_nonzeros:,} nonzeros)")
    write_json(args.out, {"benchmark": "bench_frames", "started": started,
                          "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": args.rows,
                          "feature_columns": {"numeric": NUMERIC, "categorical": CATEGORICAL}, "results": results,
                          "machine": machine_info(load_before, pandas=pd.__version__, pyarrow=pa.__version__)})


if __name__ == "__main__":
    main()
