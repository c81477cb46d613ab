"""MovieLens-100k GAME benchmark, GDMix's published example: fixed effect + per-user + per-movie.

Protocol (GDMix, ``scripts/download_process_movieLens_data.py``; see :mod:`lljax.game.movielens`):
label rating > 3; a fixed effect on user and movie features (44, plus an unpenalized intercept), a
per-user random effect on movie features (19 genres, year), a per-movie random effect on user features
(age, gender, occupation); one random 80/20 split of the ratings; lambda = 1 for every coordinate.
GDMix's validation AUCs: 0.6237 global, 0.7058 with per-user, 0.7599 with per-movie.

For each of ``--splits`` random splits (seeds 0, 1, ...) it trains by coordinate descent for ``--passes``
passes with the validation AUC after every step, then times the whole training again (``fit`` without
validation, warm: the JIT compiles of the split's shapes done by the first fit). On split 0 it also times
the per-user coordinate (offset = the fixed effect's score) against Lambda Learner 0.1.0's per-entity
loop (``TrainerSequentialBayesianLogisticLossWithL2``, full Hessian, delta 0, one user at a time).

The data are read from the recbole 1.2.1 wheel (``pip download --no-deps recbole==1.2.1`` into
``--cache``, sha256 checked). Prints a table and writes JSON (``--out``). Ends with one line:
``movielens-100k GAME: global AUC ..., +per-user ..., +per-movie ..., best ... after N passes, train ... s``.

Run: ``python benchmarks/bench_movielens.py`` (``--splits 5 --passes 4`` by default).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # a benchmark may; the library never does

import numpy as np  # noqa: E402
from _common import machine_info, write_json  # noqa: E402

import lljax  # noqa: E402
from lljax.game import FixedEffect, GameModel, RandomEffect  # noqa: E402
from lljax.game.movielens import GDMIX_AUC, load_movielens_100k  # noqa: E402


def make_model(l2: float) -> GameModel:
    return GameModel("logistic", [
        FixedEffect("global", features="global", l2=l2),
        RandomEffect("per_user", entity="user_id", features="movie", l2=l2, hessian="full"),
        RandomEffect("per_movie", entity="movie_id", features="user", l2=l2, hessian="full"),
    ], metrics=("auc",))


def lambda_learner_per_user(train, offset: np.ndarray, l2: float) -> dict:
    """Lambda Learner 0.1.0's loop over users: one trainer per user, cold start, full Hessian."""
    try:
        from linkedin.learner.ds.indexed_dataset import IndexedDataset
        from linkedin.learner.ds.indexed_model import IndexedModel
        from linkedin.learner.prediction.hessian_type import HessianType
        from linkedin.learner.prediction.trainer_sequential_bayesian_logistic_loss_with_l2 import (
            TrainerSequentialBayesianLogisticLossWithL2,
        )
    except ImportError:
        return {"available": False}
    from scipy import sparse

    users = train.ids["user_id"]
    X = np.c_[np.ones(train.num_examples), train.features["movie"].to_dense()]
    y = np.where(train.label == 1, 1.0, -1.0)
    order = np.argsort(users, kind="stable")
    keys, starts = np.unique(users[order], return_index=True)
    bounds = np.r_[starts, len(order)]
    t = time.perf_counter()
    problems = []
    for k in range(len(keys)):
        rows = order[bounds[k]:bounds[k + 1]]
        data = IndexedDataset(sparse.csc_matrix(X[rows]), y[rows], np.ones(len(rows)), offset[rows])
        problems.append((keys[k], data, IndexedModel(np.zeros(X.shape[1]),
                                                     sparse.identity(X.shape[1], format="csc") * l2)))
    convert = time.perf_counter() - t
    t = time.perf_counter()
    theta = {}
    for key, data, initial in problems:
        trainer = TrainerSequentialBayesianLogisticLossWithL2(training_data=data, initial_model=initial,
                                                              hessian_type=HessianType.FULL, penalty=l2, delta=0.0)
        model, _, _ = trainer.train()
        theta[key] = np.asarray(model.theta)
    return {"available": True, "users": len(keys), "convert_s": convert, "train_s": time.perf_counter() - t,
            "theta": theta}


def per_user_comparison(model: GameModel, train, l2: float, repeats: int) -> dict:
    """Time the per-user coordinate alone (offset: the fixed effect's score) in lljax and Lambda Learner."""
    from lljax.game.data import with_offset

    offset = train.offset + model.score(train).contributions["global"]
    rt = model._runtimes["per_user"]
    dataset = with_offset(rt.dataset(train), offset)
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up (compiles)
        re = lljax.RandomEffectModel("logistic", l2=l2, hessian="full")
        t = time.perf_counter()
        re.update(dataset, progress=False)
        times.append(time.perf_counter() - t)
    ll = lambda_learner_per_user(train, offset, l2)
    out = {"lljax_s": min(times[1:]), "lljax_times_s": times[1:], "lljax_cold_s": times[0], "users": len(re)}
    if ll["available"]:
        diffs = [np.abs(re.coefficients(k).mean - ll["theta"][k][re.coefficients(k).feature_ids]).max()
                 for k in ll["theta"]]
        out.update(lambda_learner_s=ll["train_s"], lambda_learner_convert_s=ll["convert_s"],
                   speedup=ll["train_s"] / out["lljax_s"], max_abs_coefficient_diff=float(np.max(diffs)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--passes", type=int, default=4)
    parser.add_argument("--l2", type=float, default=1.0)
    parser.add_argument("--timing-repeats", type=int, default=3, help="warm timed fits per split (min reported)")
    parser.add_argument("--cache", default=None, help="folder of the recbole wheel (default $LLJAX_DATA or "
                                                        "~/.cache/lljax)")
    parser.add_argument("--no-lambda-learner", action="store_true")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/bench_movielens.json)")
    args = parser.parse_args()
    load_before = os.getloadavg()

    t = time.perf_counter()
    data = load_movielens_100k(args.cache)
    load_s = time.perf_counter() - t
    print(f"MovieLens-100k: {data.num_examples} ratings, {len(np.unique(data.ids['user_id']))} users, "
          f"{len(np.unique(data.ids['movie_id']))} movies, positive rate {data.label.mean():.3f} "
          f"(loaded in {load_s:.2f} s)")

    splits = []
    comparison = None
    for seed in range(args.splits):
        train, valid = data.split(0.8, seed=seed)
        model = make_model(args.l2)
        report = model.fit(train, validation=valid, passes=args.passes)
        aucs = report.metric("auc")
        first = {s.coordinate: s.metrics["auc"] for s in report.steps if s.pass_ == 1}
        best = int(np.nanargmax(aucs))
        times = []
        for _ in range(args.timing_repeats):
            timed = make_model(args.l2)
            t = time.perf_counter()
            timed.fit(train, passes=args.passes, record_objective=False)
            times.append(time.perf_counter() - t)
        split = {"seed": seed, "train": train.num_examples, "validation": valid.num_examples,
                 "auc_after_step": [{"pass": s.pass_, "coordinate": s.coordinate, "auc": s.metrics["auc"],
                                     "objective": s.objective, "seconds": s.seconds} for s in report.steps],
                 "global": first["global"], "per_user": first["per_user"], "per_movie": first["per_movie"],
                 "best": aucs[best], "best_pass": report.steps[best].pass_,
                 "best_coordinate": report.steps[best].coordinate, "fit_with_validation_s": report.seconds,
                 "train_s": min(times), "train_times_s": times}
        splits.append(split)
        print(f"split {seed}: global {split['global']:.4f}  +per-user {split['per_user']:.4f}  "
              f"+per-movie {split['per_movie']:.4f}  best {split['best']:.4f} (pass {split['best_pass']}, "
              f"{split['best_coordinate']})  train {split['train_s']:.2f} s warm ({args.passes} passes)", flush=True)
        if seed == 0:
            print(report.table())
            if not args.no_lambda_learner:
                comparison = per_user_comparison(model, train, args.l2, repeats=3)

    def stat(key):
        values = np.array([s[key] for s in splits], float)
        return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0

    summary = {k: stat(k) for k in ("global", "per_user", "per_movie", "best", "train_s")}
    best_passes = [s["best_pass"] for s in splits]
    print()
    print(f"validation AUC, mean ± sd over {len(splits)} random 80/20 splits (lambda = {args.l2})")
    print(f"{'model':<26}{'GDMix':>8}{'lljax':>20}{'lljax - GDMix':>16}")
    for key, label in (("global", "global (fixed effect)"), ("per_user", "+ per-user, pass 1"),
                       ("per_movie", "+ per-movie, pass 1")):
        mean, sd = summary[key]
        print(f"{label:<26}{GDMIX_AUC[key]:>8.4f}{f'{mean:.4f} ± {sd:.4f}':>20}{mean - GDMIX_AUC[key]:>+16.4f}")
    mean, sd = summary["best"]
    print(f"{'best over ' + str(args.passes) + ' passes':<26}{'':>8}{f'{mean:.4f} ± {sd:.4f}':>20}"
          f"{mean - GDMIX_AUC['per_movie']:>+16.4f}   (best after pass {best_passes})")
    mean, sd = summary["train_s"]
    print(f"whole training, {args.passes} passes, warm: {mean:.3f} ± {sd:.3f} s "
          f"(min of {args.timing_repeats} per split; {jax.default_backend()} backend, {os.cpu_count()} cores)")
    if comparison is not None:
        line = f"per-user coordinate ({comparison['users']} users): lljax {comparison['lljax_s']:.3f} s warm"
        if "lambda_learner_s" in comparison:
            line += (f", Lambda Learner loop {comparison['lambda_learner_s']:.2f} s "
                     f"({comparison['speedup']:.0f}x); max |coefficient difference| "
                     f"{comparison['max_abs_coefficient_diff']:.1e}")
        print(line)

    doc = {"benchmark": "bench_movielens", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "args": vars(args),
           "machine": machine_info(load_before), "gdmix_auc": GDMIX_AUC, "splits": splits,
           "summary": {k: {"mean": v[0], "sd": v[1]} for k, v in summary.items()},
           "per_user_vs_lambda_learner": comparison}
    write_json(Path(args.out) if args.out else Path(__file__).parent / "results" / "bench_movielens.json", doc)
    g, u, m, b, s = (summary[k][0] for k in ("global", "per_user", "per_movie", "best", "train_s"))
    print(f"movielens-100k GAME: global AUC {g:.4f}, +per-user {u:.4f}, +per-movie {m:.4f}, best {b:.4f} "
          f"after {args.passes} passes, train {s:.2f} s")


if __name__ == "__main__":
    main()
