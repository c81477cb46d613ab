"""Core benchmark: lljax's batched ``RandomEffectModel.update`` vs Lambda Learner's per-entity loop.

Problem: ``--entities`` entities x ``--rows`` rows each, every entity with ``--features``
local features (the intercept plus ``features - 1`` dense Gaussian features drawn from a
per-entity subspace of a shared vocabulary), fixed-effect offsets, logistic labels.
Model: sequential Bayesian logistic loss with L2 (``l2=1.0``, ``delta=0.8``), full Hessian,
cold start (prior mean 0, prior precision ``l2 * I``), in float64.

- lljax: ``RandomEffectModel.update`` on all entities (packing + solve + unpack, i.e. the
  whole call), once to compile, then ``--repeats`` timed runs on fresh models; the median is
  reported. ``Dataset.from_arrays`` is timed separately.
- Lambda Learner 0.1.0: ``TrainerSequentialBayesianLogisticLossWithL2(...).train()`` in a
  Python loop over a random sample of ``--ll-sample`` entities; only the ``train()`` calls
  are timed, the per-entity conversion (``IndexedDataset`` with a scipy CSC matrix of the
  entity's local columns, ``IndexedModel`` with zero theta and ``l2 * I`` Hessian) separately.

Prints a table and writes JSON (``--out``). Run: ``python benchmarks/bench_core.py``.
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
import scipy  # noqa: E402
from _common import machine_info, write_json  # noqa: E402
from scipy import sparse  # noqa: E402

import lljax  # noqa: E402

L2, DELTA = 1.0, 0.8
DTYPE = np.float64


def make_data(num_entities: int, rows: int, features: int, seed: int) -> dict[str, np.ndarray]:
    """Per-entity dense local designs scattered into a global CSR (intercept added by lljax).

    Each entity gets ``features - 1`` distinct global ids from a vocabulary of
    ``max(1000, 4 * features)`` (ids start at 1; 0 is the intercept), and every one of its
    rows has all of them, with N(0, 1) values.
    """
    rng = np.random.default_rng(seed)
    k = features - 1
    vocabulary = max(1000, 4 * features)
    # k distinct ids per entity, without a Python loop: the k smallest of random keys.
    keys = rng.random((num_entities, vocabulary), dtype=np.float32)
    ids = np.sort(np.argpartition(keys, k - 1, axis=1)[:, :k], axis=1) + 1 if k else np.zeros((num_entities, 0), int)
    del keys
    n = num_entities * rows
    entity = np.repeat(np.arange(num_entities, dtype=np.int64), rows)
    X = rng.normal(0.0, 1.0, (n, k))
    theta = rng.normal(0.0, 0.3, (num_entities, features))  # column 0: intercept
    offset = rng.normal(0.0, 1.0, n)
    margin = offset + theta[entity, 0] + np.einsum("nk,nk->n", X, theta[entity, 1:])
    label = (rng.random(n) < 1.0 / (1.0 + np.exp(-margin))).astype(DTYPE)
    return dict(entity=entity, label=label, offset=offset, X=X, ids=ids, vocabulary=vocabulary)


def build_dataset(data: dict[str, np.ndarray], rows: int) -> lljax.Dataset:
    n, k = data["X"].shape
    indptr = np.arange(n + 1, dtype=np.int64) * k
    feature_ids = np.repeat(data["ids"], rows, axis=0).reshape(-1)
    return lljax.Dataset.from_arrays(data["entity"], data["label"], indptr=indptr, feature_ids=feature_ids,
                                     values=data["X"].reshape(-1), offset=data["offset"],
                                     num_features=data["vocabulary"] + 1, intercept_id=0, dtype=DTYPE)


def run_lljax(dataset: lljax.Dataset, repeats: int):
    """Warm-up (compile) once, then ``repeats`` timed updates on fresh models; the last model is returned."""
    def fresh():
        return lljax.RandomEffectModel("logistic", l2=L2, delta=DELTA, hessian="full")

    t = time.perf_counter()
    fresh().update(dataset)
    warmup = time.perf_counter() - t
    times, model, report = [], None, None
    for _ in range(repeats):
        model = fresh()
        t = time.perf_counter()
        report = model.update(dataset)
        times.append(time.perf_counter() - t)
    return model, report, warmup, times


def run_lambda_learner(dataset: lljax.Dataset, sample: np.ndarray):
    """Convert each sampled entity to Lambda Learner's structures, then train each; time both phases."""
    from linkedin.learner.ds.indexed_dataset import IndexedDataset
    from linkedin.learner.ds.indexed_model import IndexedModel
    from linkedin.learner.prediction.hessian_type import HessianType
    from linkedin.learner.prediction.trainer_sequential_bayesian_logistic_loss_with_l2 import (
        TrainerSequentialBayesianLogisticLossWithL2,
    )

    t = time.perf_counter()
    row_order = np.argsort(dataset.entity, kind="stable")
    row_start = np.searchsorted(dataset.entity[row_order], np.arange(dataset.num_entities + 1))
    problems = []
    for e in sample:
        rows = row_order[row_start[e]: row_start[e + 1]]
        nnz = dataset.indptr[rows + 1] - dataset.indptr[rows]
        nz = np.concatenate([np.arange(dataset.indptr[r], dataset.indptr[r + 1]) for r in rows])
        local_ids, cols = np.unique(dataset.feature_ids[nz], return_inverse=True)
        X = sparse.csc_matrix((dataset.values[nz], (np.repeat(np.arange(len(rows)), nnz), cols)),
                              shape=(len(rows), len(local_ids)))
        y = np.where(dataset.label[rows] == 1, 1.0, -1.0)
        data = IndexedDataset(X, y, np.ones(len(rows)), dataset.offset[rows].astype(np.float64))
        d = len(local_ids)
        initial = IndexedModel(np.zeros(d), sparse.identity(d, format="csc") * L2)
        problems.append((local_ids, data, initial))
    convert = time.perf_counter() - t

    results = []
    t = time.perf_counter()
    for _, data, initial in problems:
        trainer = TrainerSequentialBayesianLogisticLossWithL2(
            training_data=data, initial_model=initial, hessian_type=HessianType.FULL, penalty=L2, delta=DELTA)
        results.append(trainer.train())
    train = time.perf_counter() - t
    return problems, results, convert, train


def compare(model: lljax.RandomEffectModel, dataset: lljax.Dataset, sample: np.ndarray, problems, results):
    """Max over the sampled entities of ||theta_lljax - theta_LL||_inf / ||theta_LL||_inf, and the same for P."""
    theta_rel, prec_rel, warnflags = [], [], []
    for e, (local_ids, _, _), (ll_model, _, meta) in zip(sample, problems, results):
        coef = model.coefficients(dataset.entity_keys[e])
        if not np.array_equal(coef.feature_ids, local_ids):
            raise AssertionError(f"entity {e}: feature ids differ between lljax and the LL conversion")
        ll_theta = np.asarray(ll_model.theta)
        ll_prec = np.asarray(ll_model.hessian.toarray())
        theta_rel.append(np.max(np.abs(coef.mean - ll_theta)) / max(np.max(np.abs(ll_theta)), 1e-12))
        prec_rel.append(np.max(np.abs(coef.precision - ll_prec)) / max(np.max(np.abs(ll_prec)), 1e-12))
        warnflags.append(int(meta["warnflag"]))
    return float(np.max(theta_rel)), float(np.max(prec_rel)), np.bincount(warnflags, minlength=3).tolist()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=20_000)
    parser.add_argument("--rows", type=int, default=64, help="rows per entity (exact)")
    parser.add_argument("--features", type=int, default=16, help="local features per entity, intercept included")
    parser.add_argument("--repeats", type=int, default=3, help="timed lljax repeats after one warm-up")
    parser.add_argument("--ll-sample", type=int, default=300, help="entities trained with Lambda Learner")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_core.json"))
    args = parser.parse_args(argv)
    if args.features < 1 or args.rows < 1 or args.entities < 1 or args.repeats < 1:
        parser.error("--entities, --rows, --features and --repeats must be >= 1")
    started = dt.datetime.now(dt.timezone.utc)
    load_before = os.getloadavg()

    t = time.perf_counter()
    data = make_data(args.entities, args.rows, args.features, args.seed)
    generate = time.perf_counter() - t
    t = time.perf_counter()
    dataset = build_dataset(data, args.rows)
    build = time.perf_counter() - t
    del data

    model, report, warmup, times = run_lljax(dataset, args.repeats)
    median = float(np.median(times))

    rng = np.random.default_rng(args.seed + 1)
    sample = np.sort(rng.choice(dataset.num_entities, size=min(args.ll_sample, dataset.num_entities), replace=False))
    problems, results, ll_convert, ll_train = run_lambda_learner(dataset, sample)
    theta_rel, prec_rel, ll_warnflags = compare(model, dataset, sample, problems, results)

    E, S = args.entities, len(sample)
    lljax_rate, ll_rate = E / median, S / ll_train
    rows = [
        ("lljax update (median)", E, median, lljax_rate),
        ("lljax Dataset.from_arrays", E, build, E / build),
        ("lljax warm-up (compile)", E, warmup, E / warmup),
        ("LL train() loop", S, ll_train, ll_rate),
        ("LL conversion loop", S, ll_convert, S / ll_convert),
    ]
    print(f"lljax {lljax.__version__} | jax {jax.__version__} on {jax.default_backend()} | {os.cpu_count()} CPUs | "
          f"float64 | {E} entities x {args.rows} rows x {args.features} features | "
          f"logistic, delta={DELTA}, l2={L2}, full Hessian")
    print(f"{'method':<28}{'entities':>9}{'seconds':>10}{'entities/s':>13}")
    print("-" * 60)
    for name, ents, secs, rate in rows:
        print(f"{name:<28}{ents:>9}{secs:>10.3f}{rate:>13,.0f}")
    print("-" * 60)
    print(f"lljax/LL throughput ratio (update vs train()): {lljax_rate / ll_rate:,.1f}x")
    print(f"lljax repeats: {', '.join(f'{s:.3f}s' for s in times)}; blocks={report.blocks}; "
          f"iterations mean={report.iterations.mean():.2f} max={report.iterations.max()}")
    print(f"lljax status: {', '.join(f'{k}={v}' for k, v in report.status_counts.items())}")
    print(f"LL L-BFGS warnflag counts (0 ok, 1 iteration limit, 2 failed): {ll_warnflags}")
    print(f"max relative difference lljax vs LL on {S} entities: theta {theta_rel:.2e}, precision {prec_rel:.2e}")
    print(f"load average (1 min) before/after: {load_before[0]:.2f}/{os.getloadavg()[0]:.2f} "
          "(timings on a shared machine vary with it)")

    result = {
        "benchmark": "bench_core",
        "started_utc": started.isoformat(),
        "finished_utc": dt.datetime.now(dt.timezone.utc).isoformat(),
        "machine": machine_info(load_before, scipy=scipy.__version__),
        "config": {
            "entities": E, "rows": args.rows, "features": args.features, "dtype": "float64", "loss": "logistic",
            "l2": L2, "delta": DELTA, "hessian": "full", "repeats": args.repeats, "ll_sample": S, "seed": args.seed,
        },
        "lljax": {
            "data_generation_s": generate,
            "dataset_build_s": build,
            "warmup_s": warmup,
            "update_s": times,
            "update_median_s": median,
            "entities_per_s": lljax_rate,
            "blocks": report.blocks,
            "status_counts": report.status_counts,
            "iterations_mean": float(report.iterations.mean()),
            "iterations_max": int(report.iterations.max()),
        },
        "lambda_learner": {
            "entities": S,
            "conversion_s": ll_convert,
            "train_s": ll_train,
            "entities_per_s": ll_rate,
            "warnflag_counts": ll_warnflags,
        },
        "speedup_entities_per_s": lljax_rate / ll_rate,
        "max_rel_diff_theta": theta_rel,
        "max_rel_diff_precision": prec_rel,
    }
    write_json(Path(args.out), result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
