"""A/B of two source trees on the headline case, alternating runs in one sitting.

On a shared, noisy machine only ratios measured side by side mean anything: this script runs
``bench_suite.py --only headline --methods update`` from tree A, then from tree B, ``--pairs`` times,
each run a fresh process whose ``PYTHONPATH`` is that tree (each tree needs its native kernel built in
place, e.g. from a wheel of that commit), and prints, per method, every run's entities/s and the B/A
ratio of each pair, then the median ratio.

Run: ``python benchmarks/ab_headline.py --a /path/to/old/checkout --b . [--pairs 4]``; writes JSON to
``--out`` (default ``results/ab_headline.json``).
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

METHODS = ("lljax kernel", "lljax native", "lljax update")


def run_once(tree: Path, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json"
        script = tree.resolve() / "benchmarks" / "bench_suite.py"  # each tree's own benchmark script
        cmd = [sys.executable, str(script), "--only", "headline", "--methods", "update", "--repeats", str(repeats),
               "--floor-repeats", "1", "--out", str(out), "--plot", str(Path(tmp) / "run.png")]
        env = dict(os.environ, PYTHONPATH=str(tree.resolve()))
        subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, cwd=tree)
        data = json.loads(out.read_text())
    case = data["cases"][0]
    return {m: case["methods"][m]["entities_per_s"] for m in METHODS} | {"floor": case["floor_entities_per_s"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a", type=Path, required=True, help="tree A (the baseline)")
    p.add_argument("--b", type=Path, required=True, help="tree B (the change)")
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5, help="timed calls per method and run (median kept)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "ab_headline.json")
    args = p.parse_args(argv)
    runs = []
    for k in range(args.pairs):
        a, b = run_once(args.a, args.repeats), run_once(args.b, args.repeats)
        runs.append({"a": a, "b": b})
        print(f"pair {k + 1}: " + "  ".join(f"{m}: A {a[m]:,.0f} B {b[m]:,.0f} (B/A {b[m] / a[m]:.3f})"
                                           for m in METHODS), flush=True)
    print(f"\n{'method':<14}{'A entities/s (runs)':>44}{'B entities/s (runs)':>44}{'B/A per pair':>34}{'median':>8}")
    summary = {}
    for m in METHODS:
        ratios = [r["b"][m] / r["a"][m] for r in runs]
        summary[m] = {"a": [r["a"][m] for r in runs], "b": [r["b"][m] for r in runs], "ratios": ratios,
                      "median_ratio": statistics.median(ratios)}
        a_runs = ", ".join(f"{x:,.0f}" for x in summary[m]["a"])
        b_runs = ", ".join(f"{x:,.0f}" for x in summary[m]["b"])
        shown = ", ".join(f"{x:.2f}" for x in ratios)
        print(f"{m:<14}{a_runs:>44}{b_runs:>44}{shown:>34}{statistics.median(ratios):>8.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"a": str(args.a.resolve()), "b": str(args.b.resolve()), "pairs": runs,
                                    "summary": summary}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
