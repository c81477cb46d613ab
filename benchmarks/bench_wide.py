"""Wide entities: the wide solver (Newton in the span of the rows) vs L-BFGS, Newton and Lambda Learner.

Problem (per ``--features`` value D): entities with ``--rows`` rows and D local features, the
intercept plus D - 1 sparse features: each row has the intercept and ``--nnz`` other nonzeros
(default 8 at D <= 512, 16 above: every local feature appears in at least one row, most are absent
from any given row), N(0, 1) values, fixed-effect offsets N(0, 1), logistic labels drawn from random
true coefficients, unit weights. Model: sequential Bayesian logistic with a diagonal prior, cold
start (prior mean 0, prior precision ``l2``), ``l2 = 1``, ``delta = 0.8``, diagonal posterior
precision, float64, tolerance lljax's default (max |gradient| <= 1e-6).

Timed kernels, on prebuilt blocks already on the device (warm jit, ``block_until_ready``):

- ``wide``: method ``"span"`` (``lljax.solve.registry.solve``) on ``SparseBlock`` s (each row's
  nonzeros as column + value) of ``--wide-lanes`` entities, all entities; what ``RandomEffectModel``
  runs for these blocks: on CPU the native wide kernel (``lljax/solve/kernels/wide_kernel.h``) when built;
- ``wide jax``: the same call with ``SolverConfig(native=False)``: the pure-JAX wide path;
- ``lbfgs``: method ``"lbfgs"`` (L-BFGS directions, the previous wide path, still used when
  a block has more rows than features) on dense blocks of ``--lanes`` entities, all entities;
- ``newton``: ``lljax.solve_block`` (``hessian="diagonal"``, which forms and factors the D x D
  Hessian) on the first ``--newton-sample`` entities, dense blocks;
- ``lambda learner``: Lambda Learner 0.1.0's ``TrainerSequentialBayesianLogisticLossWithL2`` with
  ``HessianType.DIAGONAL`` per entity (scipy sparse data; ``peers.lambda_learner_loop``) on
  ``--ll-sample`` entities.

And the whole ``update``: ``RandomEffectModel(...).update(dataset)`` on all entities as one
:class:`lljax.Dataset` (CSR), host packing (sparse blocks), device solve and store writes included,
after a first update on the same data for the compiles (best of ``--repeats`` fresh models).

Accuracy: max over entities of ``||theta_a - theta_b||_inf / ||theta_b||_inf`` (and the same for the
diagonal precision) between each method and Newton at the default tolerance and, on the Newton sample,
with both solved to tol 1e-12; Lambda Learner (its own tolerances) vs the wide solver.

Run: ``python benchmarks/bench_wide.py`` (D = 256 with 2000 entities, D = 1024 with 512; a few
minutes on a 2-core machine). Prints a table, writes ``results/bench_wide.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # a benchmark may; the library never does

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402
from _common import machine_info, write_json  # noqa: E402

import lljax  # noqa: E402
from lljax.solve.blocks import sparse_from_dense  # noqa: E402
from lljax.solve.lbfgs import ITER_FACTOR, MEMORY_SIZE  # noqa: E402
from lljax.solve.registry import solve as solve_method  # noqa: E402

L2, DELTA = 1.0, 0.8
TIGHT_TOL = 1e-12
METHODS = ("wide", "wide jax", "lbfgs", "newton", "lambda learner", "update")
STATUS_NAMES = ("converged", "max_iterations", "non_finite", "stalled")


def default_nnz(D: int, N: int) -> int:
    nnz = 8 if D <= 512 else 16
    return max(nnz, -(-(D - 1) // N))  # every local feature must appear in some row


def make_data(E: int, N: int, D: int, nnz: int, seed: int) -> dict[str, np.ndarray]:
    """``X (E, N, D)``: column 0 the intercept; each row ``nnz`` other slots, every feature 1..D-1 in one
    slot at least (a shuffled cover of the features, then random ones; a repeat in a row adds up)."""
    if N * nnz < D - 1:
        raise ValueError(f"rows * nnz = {N * nnz} cannot cover {D - 1} features")
    rng = np.random.default_rng(seed)
    X = np.zeros((E, N, D))
    X[:, :, 0] = 1.0
    rows = np.repeat(np.arange(N), nnz)
    for e in range(E):
        cols = np.concatenate([rng.permutation(np.arange(1, D)), rng.integers(1, D, size=N * nnz - (D - 1))])
        rng.shuffle(cols)
        np.add.at(X[e], (rows, cols), rng.standard_normal(N * nnz))
    theta = rng.normal(0.0, 0.3, (E, D))
    offset = rng.normal(0.0, 1.0, (E, N))
    margin = offset + np.einsum("end,ed->en", X, theta)
    label = (rng.random((E, N)) < 1.0 / (1.0 + np.exp(-margin))).astype(np.float64)
    return dict(X=X, label=label, offset=offset)


def blocks_of(data: dict, lanes: int, count: int) -> list[lljax.Block]:
    """The first ``count`` entities (a multiple of ``lanes``) as device blocks of ``lanes`` entities."""
    X = data["X"]
    E, N, D = X.shape
    y = np.where(data["label"] == 1, 1.0, -1.0)
    out = []
    for lo in range(0, count, lanes):
        sl = slice(lo, lo + lanes)
        out.append(lljax.Block(jnp.asarray(X[sl]), jnp.asarray(y[sl]), jnp.ones((lanes, N)),
                               jnp.asarray(data["offset"][sl]), jnp.tile(jnp.arange(D), (lanes, 1)),
                               jnp.zeros((lanes, D)), jnp.full((lanes, D), L2)))
    return out


def run_blocks(solve, blocks) -> lljax.SolveResult:
    results = [solve(b) for b in blocks]  # dispatch all, then wait
    jax.block_until_ready(results)
    return jax.tree.map(lambda *a: np.concatenate(a), *results)


def time_method(solve, blocks, repeats: int, budget: float):
    t = time.perf_counter()
    jax.block_until_ready(solve(blocks[0]))  # compile (one shape)
    warm = time.perf_counter() - t
    times, result = [], None
    while len(times) < repeats and (not times or sum(times) < budget):
        t = time.perf_counter()
        result = run_blocks(solve, blocks)
        times.append(time.perf_counter() - t)
    return result, times, warm


def rel_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = np.maximum(np.max(np.abs(b), axis=-1), 1e-300)
    return float(np.max(np.max(np.abs(a - b), axis=-1) / scale))


def summary(result: lljax.SolveResult) -> dict:
    it = np.asarray(result.iterations)
    return dict(iterations_mean=float(it.mean()), iterations_max=int(it.max()),
                status_counts=dict(zip(STATUS_NAMES, np.bincount(result.status, minlength=4)[:4].tolist())))


def dataset_of(data: dict) -> lljax.Dataset:
    """All entities as one CSR dataset (the intercept is column 0 of X, kept as feature 0)."""
    X = data["X"]
    E, N, D = X.shape
    flat = X.reshape(E * N, D)
    row, col = np.nonzero(flat)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=E * N))])
    return lljax.Dataset.from_arrays(np.repeat(np.arange(E), N), data["label"].ravel(), indptr=indptr,
                                     feature_ids=col, values=flat[row, col], offset=data["offset"].ravel(),
                                     num_features=D, intercept_id=None)


def time_update(data: dict, repeats: int) -> tuple[list[float], lljax.RandomEffectModel, float]:
    dataset = dataset_of(data)
    make = lambda: lljax.RandomEffectModel("logistic", l2=L2, delta=DELTA, hessian="diagonal")  # noqa: E731
    t = time.perf_counter()
    make().update(dataset, progress=False)  # compiles
    warm = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        model = make()
        t = time.perf_counter()
        model.update(dataset, progress=False)
        times.append(time.perf_counter() - t)
    return times, model, warm


def run_case(D: int, E: int, args) -> dict:
    N = args.rows
    nnz = args.nnz or default_nnz(D, N)
    lanes = args.lanes or (16 if D <= 256 else 8)
    wide_lanes = args.wide_lanes
    E = -(-E // max(lanes, wide_lanes)) * max(lanes, wide_lanes)
    newton_count = min(E, -(-args.newton_sample(D) // lanes) * lanes)
    t = time.perf_counter()
    data = make_data(E, N, D, nnz, args.seed)
    out = dict(features=D, entities=E, rows=N, nnz_per_row=nnz + 1, lanes=lanes, wide_lanes=wide_lanes,
               newton_entities=newton_count, make_data_s=time.perf_counter() - t, methods={})
    config = lljax.RandomEffectModel("logistic", l2=L2, delta=DELTA, hessian="diagonal").solver_config(np.dtype("f8"))
    out["tol"] = config.tol
    l2, delta = jnp.asarray(L2), jnp.asarray(DELTA)
    blocks = blocks_of(data, lanes, E)
    newton_blocks = blocks[: newton_count // lanes]
    sparse = [jax.device_put(sparse_from_dense(b)) for b in blocks_of(data, wide_lanes, E)]

    jax_config = config._replace(native=False)
    solvers = {
        "wide": (lambda b, c=config: solve_method(b, l2, delta, c, method="span"), sparse),
        "wide jax": (lambda b, c=jax_config: solve_method(b, l2, delta, c, method="span"), sparse),
        "lbfgs": (lambda b, c=config: solve_method(b, l2, delta, c, method="lbfgs"), blocks),
        "newton": (lambda b, c=config: lljax.solve_block(b, l2, delta, c), newton_blocks),
    }
    results = {}
    for name, (solve, bl) in solvers.items():
        if name not in args.methods:
            continue
        res, times, warm = time_method(solve, bl, args.repeats, args.budget)
        results[name] = res
        count = len(res.status)
        out["methods"][name] = dict(times=times, warmup_s=warm, entities=count, **summary(res))
        print(f"  D={D} {name}: {count / np.median(times):,.0f} entities/s", flush=True)

    acc = out["accuracy"] = {}
    if "wide" in results and "wide jax" in results:
        acc["wide_native_vs_jax_theta"] = rel_diff(results["wide"].theta, results["wide jax"].theta)
        acc["wide_native_vs_jax_iterations_equal"] = bool(np.array_equal(results["wide"].iterations,
                                                                          results["wide jax"].iterations))
    if "newton" in results:
        k = newton_count
        tight = config._replace(tol=TIGHT_TOL)
        nt = run_blocks(lambda b: lljax.solve_block(b, l2, delta, tight), newton_blocks)
        acc["tol_1e-12_newton"] = summary(nt)
        for name, solve_tight, bl in [
            ("wide", lambda b: solve_method(b, l2, delta, tight, method="span"), sparse),
            ("lbfgs", lambda b: solve_method(b, l2, delta, tight, method="lbfgs"), newton_blocks),
        ]:
            if name not in results:
                continue
            acc[f"{name}_vs_newton_theta_default_tol"] = rel_diff(results[name].theta[:k], results["newton"].theta)
            acc[f"{name}_vs_newton_precision_default_tol"] = rel_diff(results[name].precision[:k],
                                                                      results["newton"].precision)
            res = run_blocks(solve_tight, bl[: -(-k // (wide_lanes if name == "wide" else lanes))])
            acc[f"{name}_vs_newton_theta_tol_1e-12"] = rel_diff(res.theta[:k], nt.theta)
            acc[f"{name}_vs_newton_precision_tol_1e-12"] = rel_diff(res.precision[:k], nt.precision)
            acc[f"tol_1e-12_{name}"] = summary(res)

    if "lambda learner" in args.methods and args.ll_sample(D) > 0:
        sample = np.arange(min(args.ll_sample(D), E))
        run = peers.lambda_learner_loop(data["X"], data["label"], data["offset"], sample, loss="logistic",
                                        hessian="diagonal", l2=L2, delta=DELTA)
        out["methods"]["lambda learner"] = dict(times=[run.train_s], convert_s=run.convert_s, entities=len(sample),
                                                warnflags=run.warnflags)
        if "wide" in results:
            acc["lambda_learner_vs_wide_theta"] = rel_diff(run.theta, results["wide"].theta[sample])
        print(f"  D={D} lambda learner: {len(sample) / run.train_s:,.0f} entities/s", flush=True)

    if "update" in args.methods:
        times, model, warm = time_update(data, args.repeats)
        out["methods"]["update"] = dict(times=times, warmup_s=warm, entities=E)
        if "wide" in results:
            theta = np.stack([model.coefficients(e).mean for e in range(E)])
            acc["update_vs_wide_kernel_theta"] = rel_diff(theta, results["wide"].theta)
        print(f"  D={D} update: {E / np.median(times):,.0f} entities/s", flush=True)

    for m in out["methods"].values():
        m["median_s"] = float(np.median(m["times"]))
        m["entities_per_s"] = m["entities"] / m["median_s"]
    for m in out["methods"].values():
        for peer in ("lambda learner", "newton"):
            if peer in out["methods"]:
                m[f"ratio_vs_{peer.replace(' ', '_')}"] = m["entities_per_s"] / out["methods"][peer]["entities_per_s"]
    return out


def print_table(cases: list[dict]) -> None:
    header = (f"{'case':<30}{'method':<16}{'entities':>9}{'entities/s':>12}{'xLL':>8}{'xNewton':>9}"
              f"{'iters mean/max':>16}")
    print(header)
    print("-" * len(header))
    for c in cases:
        label = f"D={c['features']} N={c['rows']} nnz/row={c['nnz_per_row']}"
        for i, name in enumerate(METHODS):
            m = c["methods"].get(name)
            if m is None:
                continue
            xll, xnt = m.get("ratio_vs_lambda_learner"), m.get("ratio_vs_newton")
            its = f"{m['iterations_mean']:.1f}/{m['iterations_max']}" if "iterations_mean" in m else ""
            print(f"{label if i == 0 else '':<30}{name:<16}{m['entities']:>9}{m['entities_per_s']:>12,.0f}"
                  f"{'' if xll is None else f'{xll:.1f}':>8}{'' if xnt is None else f'{xnt:.1f}':>9}{its:>16}")
        a = c["accuracy"]
        for name in ("wide", "lbfgs"):
            if f"{name}_vs_newton_theta_default_tol" in a:
                print(f"{'':<30}{name} vs Newton max rel diff: theta {a[f'{name}_vs_newton_theta_default_tol']:.1e} "
                      f"(tol {c['tol']:g}), {a[f'{name}_vs_newton_theta_tol_1e-12']:.1e} (tol 1e-12; precision "
                      f"{a[f'{name}_vs_newton_precision_tol_1e-12']:.1e}; iters {name} "
                      f"{a[f'tol_1e-12_{name}']['iterations_mean']:.1f}, Newton "
                      f"{a['tol_1e-12_newton']['iterations_mean']:.1f})")
        if "wide_native_vs_jax_theta" in a:
            print(f"{'':<30}wide (native kernel) vs wide jax: theta {a['wide_native_vs_jax_theta']:.1e}, "
                  f"iterations equal: {a['wide_native_vs_jax_iterations_equal']}")
        if "lambda_learner_vs_wide_theta" in a:
            print(f"{'':<30}Lambda Learner vs wide theta {a['lambda_learner_vs_wide_theta']:.1e}; "
                  f"update vs wide kernel theta {a.get('update_vs_wide_kernel_theta', float('nan')):.1e}")


def per_d(values: list[int], features: list[int], name: str):
    if len(values) == 1:
        values = values * len(features)
    if len(values) != len(features):
        raise SystemExit(f"--{name}: give one value or one per --features value")
    table = dict(zip(features, values))
    return lambda D: table[D]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--features", type=int, nargs="+", default=[256, 1024], help="local features D per case")
    p.add_argument("--entities", type=int, nargs="+", default=[2000, 512], help="entities per case (one per D, or one)")
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--nnz", type=int, default=None, help="nonzeros per row besides the intercept (default by D)")
    p.add_argument("--lanes", type=int, default=None, help="entities per dense block (default 16 at D <= 256, else 8)")
    p.add_argument("--wide-lanes", type=int, default=32, help="entities per sparse block of the wide solver")
    p.add_argument("--newton-sample", type=int, nargs="+", default=[128, 32], help="entities solved by Newton")
    p.add_argument("--ll-sample", type=int, nargs="+", default=[200, 100], help="entities trained by Lambda Learner")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--budget", type=float, default=10.0, help="stop repeating a method after this many seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "bench_wide.json"))
    args = p.parse_args(argv)
    args.entities_of = per_d(args.entities, args.features, "entities")
    args.newton_sample = per_d(args.newton_sample, args.features, "newton-sample")
    args.ll_sample = per_d(args.ll_sample, args.features, "ll-sample")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.timezone.utc)
    load_before = os.getloadavg()
    print(f"lljax {lljax.__version__} | jax {jax.__version__} on {jax.default_backend()} | {os.cpu_count()} CPUs | "
          f"logistic, diagonal prior and precision, l2={L2}, delta={DELTA}, cold start, float64 | "
          f"wide lanes: {'map' if jax.default_backend() == 'cpu' else 'vmap'}; L-BFGS memory {MEMORY_SIZE}, cap "
          f"{ITER_FACTOR} x max_iter | load avg {load_before[0]:.2f}")
    cases = []
    for D in args.features:
        t = time.perf_counter()
        cases.append(run_case(D, args.entities_of(D), args))
        cases[-1]["case_s"] = time.perf_counter() - t
        print(f"[D={D}] {cases[-1]['case_s']:.1f}s", flush=True)
    print()
    print_table(cases)
    load_after = os.getloadavg()
    print(f"load average (1 min) before/after: {load_before[0]:.2f}/{load_after[0]:.2f}")
    doc = {
        "benchmark": "bench_wide",
        "started_utc": started.isoformat(),
        "finished_utc": dt.datetime.now(dt.timezone.utc).isoformat(),
        "argv": sys.argv[1:] if argv is None else list(argv),
        "machine": machine_info(load_before, scipy=scipy.__version__),
        "config": {"l2": L2, "delta": DELTA, "loss": "logistic", "hessian": "diagonal", "dtype": "float64",
                   "lbfgs_memory": MEMORY_SIZE, "lbfgs_iter_factor": ITER_FACTOR, "repeats": args.repeats,
                   "budget_s": args.budget, "seed": args.seed},
        "cases": cases,
    }
    write_json(Path(args.out), doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
