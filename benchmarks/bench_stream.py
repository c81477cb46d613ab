"""Stream throughput: many mini-batch updates over a large entity population, with progressive validation.

Stream: ``--batches`` mini-batches (default 100, after one warm-up batch) of ``--batch-size``
examples (default 10,000) whose entities are drawn from a population of ``--population``
(default 1,000,000):

- ``--dist uniform`` (default): every example's entity uniform over the population, so every
  batch brings ~10,000 distinct entities (few new ones early on, ~60% already stored by batch 100)
  and the store grows the fastest (about ``P (1 - exp(-n / P))`` entities after ``n`` examples,
  ~636,000 after 1,010,000): the hardest case for "an update's cost does not depend on how many
  entities are stored";
- ``--dist zipf``: entity ranks Zipf-distributed with exponent ``--zipf-a`` (default 1.1) over
  the population (heavy users come back in every batch with many rows; a long tail of new ones).

Each entity has 15 features of its own from a vocabulary of 307 (global ids 1..307; 0 is the
intercept, added to every row by lljax) and a hidden coefficient per feature; an example carries
8 of its entity's features (binary), a fixed-effect offset ~ N(0, 1), and a logistic label with
margin ``offset + intercept_e + sum of the 8 coefficients``. So an entity's local subspace has at
most 16 features (one block width).

Model: ``RandomEffectModel("logistic", l2=1, delta=0.9, hessian="full")``, float64. For every batch:
``Dataset.from_arrays`` (timed as build), ``model.score`` of the batch before training on it
(progressive validation, timed), then ``model.update`` (timed). XLA compilations are counted per
update with ``jax.monitoring`` (a block shape seen for the first time compiles, 2-3 s here), so
compile time can be told apart. The slope of update time vs entities stored is fitted on the
updates that compiled nothing, by least squares and by Theil-Sen (the median of pairwise slopes,
robust to the occasional slow update on a shared machine), and every update slower than twice the
median is listed with the compilations it did and the power of two that the stored count crossed
in it, if any (a store whose arrays double their capacity copies all it holds then). AUC of the
pre-training scores (and of the offset alone) is reported per window of ``--window`` batches.

Prints tables and writes JSON (``--out``). Run: ``python benchmarks/bench_stream.py``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # a benchmark may; the library never does

import numpy as np  # noqa: E402
from _common import machine_info, write_json  # noqa: E402
from scipy.stats import theilslopes  # noqa: E402

import lljax  # noqa: E402

VOCABULARY = 307  # prime: ids (start + j * stride) mod 307, j < 15, are distinct for any stride in [1, 306]
OWN_FEATURES = 15
FEATURES_PER_EXAMPLE = 8
L2, DELTA = 1.0, 0.9


class Population:
    """Hidden per-entity features and coefficients of ``size`` entities (about 100 bytes each)."""

    def __init__(self, size: int, seed: int):
        rng = np.random.default_rng([seed, 0])
        self.start = rng.integers(0, VOCABULARY, size).astype(np.int32)
        self.stride = rng.integers(1, VOCABULARY, size).astype(np.int32)
        self.theta = rng.normal(0.0, 0.7, (size, OWN_FEATURES)).astype(np.float32)
        self.intercept = rng.normal(0.0, 0.5, size).astype(np.float32)

    def batch(self, entity: np.ndarray, rng: np.random.Generator) -> lljax.Dataset:
        """One mini-batch for the examples' entities ``entity (n,)`` (CSR, intercept added by lljax)."""
        n, k = len(entity), FEATURES_PER_EXAMPLE
        slot = np.argpartition(rng.random((n, OWN_FEATURES)), k - 1, axis=1)[:, :k]  # k of the 15, distinct
        slot.sort(axis=1)
        ids = (self.start[entity, None].astype(np.int64) + slot * self.stride[entity, None]) % VOCABULARY + 1
        offset = rng.normal(0.0, 1.0, n)
        margin = offset + self.intercept[entity] + np.take_along_axis(self.theta[entity], slot, axis=1).sum(axis=1)
        label = (rng.random(n) < 1.0 / (1.0 + np.exp(-margin))).astype(np.float64)
        return lljax.Dataset.from_arrays(entity, label, indptr=np.arange(n + 1, dtype=np.int64) * k,
                                         feature_ids=ids.reshape(-1), values=np.ones(n * k), offset=offset,
                                         num_features=VOCABULARY + 1, intercept_id=0, dtype=np.float64)


def entity_sampler(population: int, dist: str, zipf_a: float, seed: int):
    """A function ``(rng, n) -> (n,)`` entity ids: uniform, or Zipf ranks mapped through a fixed permutation."""
    if dist == "uniform":
        return lambda rng, n: rng.integers(0, population, n)
    weights = 1.0 / np.arange(1, population + 1, dtype=np.float64) ** zipf_a
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    ids = np.random.default_rng([seed, 1]).permutation(population)
    return lambda rng, n: ids[np.minimum(np.searchsorted(cdf, rng.random(n)), population - 1)]


class CompileCounter:
    """Counts XLA backend compilations and sums compile-related durations (via ``jax.monitoring``)."""

    def __init__(self):
        self.count, self.seconds = 0, 0.0
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event: str, duration: float, **_) -> None:
        if event.startswith("/jax/core/compile/"):
            self.seconds += duration
            self.count += event.endswith("backend_compile_duration")

    def snapshot(self) -> tuple[int, float]:
        return self.count, self.seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=100, help="timed mini-batches (after one warm-up batch)")
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--population", type=int, default=1_000_000)
    parser.add_argument("--dist", choices=["uniform", "zipf"], default="uniform")
    parser.add_argument("--zipf-a", type=float, default=1.1)
    parser.add_argument("--window", type=int, default=10, help="batches per AUC / timing window")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/bench_stream[_zipf].json)")
    args = parser.parse_args(argv)
    if args.batches < 2 or args.batch_size < 1 or args.population < 1 or args.window < 1:
        parser.error("--batches >= 2, --batch-size, --population and --window >= 1")
    started = dt.datetime.now(dt.timezone.utc)
    load_before = os.getloadavg()

    t = time.perf_counter()
    population = Population(args.population, args.seed)
    sample = entity_sampler(args.population, args.dist, args.zipf_a, args.seed)
    setup_s = time.perf_counter() - t
    compiles = CompileCounter()
    model = lljax.RandomEffectModel("logistic", l2=L2, delta=DELTA, hessian="full")
    rng = np.random.default_rng([args.seed, 2])

    records, scores, labels, offsets = [], [], [], []
    for b in range(args.batches + 1):  # batch 0: warm-up
        t = time.perf_counter()
        batch = population.batch(sample(rng, args.batch_size), rng)
        build_s = time.perf_counter() - t
        known = sum(1 for k in batch.entity_keys.tolist() if k in model) if b > 0 else 0
        t = time.perf_counter()
        score = model.score(batch)
        score_s = time.perf_counter() - t
        before = compiles.snapshot()
        t = time.perf_counter()
        report = model.update(batch)
        update_s = time.perf_counter() - t
        after = compiles.snapshot()
        records.append({
            "batch": b, "update_s": update_s, "build_s": build_s, "score_s": score_s,
            "compiles": after[0] - before[0], "compile_s": after[1] - before[1],
            "entities_in_batch": int(batch.num_entities), "entities_seen_before": known,
            "entities_stored": len(model), "blocks": report.blocks,
            "iterations_mean": float(report.iterations.mean()), "iterations_max": int(report.iterations.max()),
            "status_counts": report.status_counts, "phase_seconds": dict(report.phase_seconds),
        })
        if b > 0:
            scores.append(score)
            labels.append(batch.label)
            offsets.append(batch.offset)

    warm, timed = records[0], records[1:]
    update = np.array([r["update_s"] for r in timed])
    stored = np.array([r["entities_stored"] for r in timed], dtype=np.float64)
    clean = np.array([r["compiles"] == 0 for r in timed])
    slope, intercept = np.polyfit(stored[clean], update[clean], 1) if clean.sum() >= 2 else (float("nan"),) * 2
    ts_slope, ts_intercept = (theilslopes(update[clean], stored[clean])[:2] if clean.sum() >= 2
                              else (float("nan"),) * 2)
    previous = np.concatenate([[warm["entities_stored"]], stored[:-1]])
    slow = []
    for r, lo, hi in zip(timed, previous, stored):
        if r["update_s"] > 2 * np.median(update[clean]):
            crossed = [2**k for k in range(1, 40) if lo < 2**k <= hi]
            slow.append({"batch": r["batch"], "update_s": r["update_s"], "entities_stored": int(hi),
                         "crossed_power_of_two": crossed[0] if crossed else None, "compiles": r["compiles"],
                         "compile_s": r["compile_s"]})
    half = len(timed) // 2
    first_half, second_half = np.median(update[:half][clean[:half]]), np.median(update[half:][clean[half:]])

    dist = f"zipf, a={args.zipf_a}" if args.dist == "zipf" else "uniform"
    print(f"lljax {lljax.__version__} | jax {jax.__version__} on {jax.default_backend()} | {os.cpu_count()} CPUs | "
          f"float64 | {args.batches} batches x {args.batch_size:,} examples, population {args.population:,} "
          f"({dist}), {FEATURES_PER_EXAMPLE} features/example + intercept, vocabulary {VOCABULARY} | "
          f"logistic, delta={DELTA}, l2={L2}, full Hessian")
    print(f"warm-up batch: update {warm['update_s']:.2f}s ({warm['compiles']} compilations, "
          f"{warm['compile_s']:.2f}s compiling); population setup {setup_s:.2f}s")
    print(f"{'batch':>6}{'stored':>10}{'in batch':>10}{'seen':>8}{'update s':>10}{'compiles':>10}{'build s':>9}"
          f"{'score s':>9}{'blocks':>8}{'iters':>7}")
    print("-" * 87)
    for r in timed:
        if r["batch"] in (1, 2, 5) or r["batch"] % args.window == 0 or r["compiles"]:
            print(f"{r['batch']:>6}{r['entities_stored']:>10,}{r['entities_in_batch']:>10,}"
                  f"{r['entities_seen_before']:>8,}{r['update_s']:>10.3f}{r['compiles']:>10}{r['build_s']:>9.3f}"
                  f"{r['score_s']:>9.3f}{r['blocks']:>8}{r['iterations_mean']:>7.2f}")
    print("-" * 87)
    print("(rows: batches 1, 2, 5, every window end, and every batch that compiled a new block shape)")
    pct = np.percentile(update[clean], [50, 90, 99]) if clean.any() else [float("nan")] * 3
    print(f"update wall time over {clean.sum()} batches without compilation: median {pct[0]:.3f}s, p90 {pct[1]:.3f}s, "
          f"p99 {pct[2]:.3f}s, {args.batch_size / pct[0]:,.0f} examples/s at the median; "
          f"{(~clean).sum()} batches compiled ({sum(r['compile_s'] for r in timed):.1f}s compiling in all)")
    span = stored[-1] - stored[0]
    print(f"fit update_s = a + b * entities_stored (no-compile batches; stored {int(stored[0]):,} -> "
          f"{int(stored[-1]):,}): least squares b = {slope * 1e6:+.3f} s per million (a = {intercept:.3f}s, "
          f"{slope * span:+.3f}s across the run); Theil-Sen b = {ts_slope * 1e6:+.3f} s per million "
          f"(a = {ts_intercept:.3f}s, {ts_slope * span:+.3f}s across the run)")
    print(f"median update: first half {first_half:.3f}s, second half {second_half:.3f}s")
    half = len(timed) // 2
    phases = sorted({k for r in timed for k in r["phase_seconds"]})
    medians = [[np.median([r["phase_seconds"].get(k, 0.0) for r in part]) for k in phases]
               for part in (timed[:half], timed[half:])]
    print("median phase seconds (first half -> second half): " + ", ".join(
        f"{k} {a:.3f} -> {b:.3f}" for k, a, b in zip(phases, *medians)))
    for r in slow:
        why = []
        if r["compiles"]:
            why.append(f"compiled {r['compiles']} new block shape(s) in {r['compile_s']:.2f}s")
        if r["crossed_power_of_two"]:
            why.append(f"stored crossed {r['crossed_power_of_two']:,} (where a doubling store grows)")
        print(f"  slow update: batch {r['batch']}, {r['update_s']:.2f}s at {r['entities_stored']:,} stored: "
              f"{'; '.join(why) or 'neither compilation nor capacity doubling (machine load?)'}")

    print(f"\nprogressive validation (each batch scored before training on it), windows of {args.window} batches")
    print(f"{'batches':>10}{'AUC model':>11}{'AUC offset':>12}{'lift':>8}{'seen before':>13}")
    windows = []
    for w in range(0, args.batches, args.window):
        s = np.concatenate(scores[w: w + args.window])
        y = np.concatenate(labels[w: w + args.window])
        o = np.concatenate(offsets[w: w + args.window])
        seen = sum(r["entities_seen_before"] for r in timed[w: w + args.window])
        total = sum(r["entities_in_batch"] for r in timed[w: w + args.window])
        a_model, a_offset = lljax.auc(s, y), lljax.auc(o, y)
        windows.append({"batches": [w + 1, min(w + args.window, args.batches)], "auc_model": a_model,
                        "auc_offset": a_offset, "entities_seen_before_fraction": seen / total})
        print(f"{w + 1:>4}-{min(w + args.window, args.batches):<5}{a_model:>11.4f}{a_offset:>12.4f}"
              f"{a_model - a_offset:>+8.4f}{seen / total:>12.1%}")
    print(f"load average (1 min) before/after: {load_before[0]:.2f}/{os.getloadavg()[0]:.2f} "
          "(timings on a shared machine vary with it)")

    result = {
        "benchmark": "bench_stream",
        "started_utc": started.isoformat(),
        "finished_utc": dt.datetime.now(dt.timezone.utc).isoformat(),
        "machine": machine_info(load_before),
        "config": {"batches": args.batches, "batch_size": args.batch_size, "population": args.population,
                   "dist": args.dist, "zipf_a": args.zipf_a if args.dist == "zipf" else None,
                   "vocabulary": VOCABULARY, "own_features": OWN_FEATURES,
                   "features_per_example": FEATURES_PER_EXAMPLE, "l2": L2, "delta": DELTA, "hessian": "full",
                   "dtype": "float64", "seed": args.seed},
        "warmup": warm,
        "batches": timed,
        "summary": {
            "update_median_s_no_compile": float(pct[0]), "update_p90_s_no_compile": float(pct[1]),
            "update_p99_s_no_compile": float(pct[2]), "batches_with_compilation": int((~clean).sum()),
            "slope_s_per_million_stored": float(slope * 1e6), "fit_intercept_s": float(intercept),
            "theil_sen_slope_s_per_million_stored": float(ts_slope * 1e6),
            "theil_sen_intercept_s": float(ts_intercept), "slow_updates": slow,
            "median_first_half_s": float(first_half), "median_second_half_s": float(second_half),
            "entities_stored_final": int(stored[-1]),
        },
        "progressive_validation": windows,
    }
    default_name = "bench_stream.json" if args.dist == "uniform" else "bench_stream_zipf.json"
    write_json(Path(args.out) if args.out else Path(__file__).parent / "results" / default_name, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
