"""Benchmark suite: lljax vs the machine floor, a batched NumPy Newton and Lambda Learner's loop.

In one run it

1. measures the machine floor (``floor.py``): NumPy dgemm/sgemm GFLOP/s on large square matrices,
   JAX batched ``X^T diag(c) X`` GFLOP/s at the kernel's shapes, JAX ``exp`` rate, and read/copy
   memory bandwidth (best of repeats);
2. for every case of a grid of (entities, rows, features, dtype, loss, hessian) generates one
   synthetic problem (cold start: prior mean 0, prior precision ``l2 I``; ``l2 = 1``, ``delta = 0.8``;
   every entity has exactly ``rows`` rows and ``features`` local features, the intercept included)
   and times, on the same data:

   - ``lljax kernel``: ``lljax.solve_block`` on one prebuilt block of all entities (arrays already on
     the device, compiled by a warm-up call, ``block_until_ready``), forced to the pure-JAX path
     (``SolverConfig(native=False)``);
   - ``lljax native``: the same call on the native CPU kernel (``lljax.solve.kernels``, an XLA FFI custom call:
     the whole damped-Newton solve of 4 float64 / 8 float32 entities per SIMD group fused in cache;
     ``SolverConfig(native=True)``), when it is built; what ``solve_block`` runs by default on CPU;
   - ``lljax update``: ``RandomEffectModel.update`` end to end (packing, solve, unpacking) on a
     ``Dataset``, after a warm-up (compile) update on a fresh model;
   - ``numpy newton``: the batched NumPy Newton of ``peers.py`` (same objective, same stopping rule);
   - ``lambda learner``: Lambda Learner 0.1.0's trainer called per entity on ``--ll-sample`` entities
     (logistic and linear only; its rate does not depend on the entity count, so it is measured once
     per (rows, features, loss, hessian) and reused);

3. prints a table (entities/s, achieved GFLOP/s and GB/s under the work model of ``floor.py``,
   fraction of the floor, ratio to Lambda Learner, to the NumPy Newton and to the pure-JAX kernel),
   writes JSON, and plots when matplotlib is installed.

The floor of a case is ``max(flops / dgemm rate + transcendentals / exp rate, bytes / read bandwidth)``
per entity, with the work of ``floor.work_per_entity`` at the Newton iteration count lljax actually
took (mean over entities) and the line-search trials per step the NumPy Newton actually made.

Run: ``python benchmarks/bench_suite.py`` (default grid), ``--quick``, ``--only headline``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import os
import sys
import time
from functools import partial
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # a benchmark may; the library never does

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import floor as floor_mod  # noqa: E402
import peers  # noqa: E402
from _common import machine_info, write_json  # noqa: E402

import lljax  # noqa: E402
from lljax.solve import kernels as native  # noqa: E402

L2, DELTA = 1.0, 0.8
HEADLINE = dict(entities=20_000, rows=64, features=16, dtype="float64", loss="logistic", hessian="full")
METHODS = ("lljax kernel", "lljax native", "lljax update", "numpy newton", "lambda learner")
_SHORT = {"float64": "f64", "float32": "f32"}
_METHOD_FLAGS = {"update": "lljax update", "numpy": "numpy newton", "ll": "lambda learner"}


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------

def make_data(E: int, N: int, D: int, loss: str, dtype: str, seed: int) -> dict[str, np.ndarray]:
    """A cold-start problem: ``E`` entities, each with ``N`` rows and ``D`` local features.

    Column 0 of each entity's local design is the intercept; the other ``D - 1`` columns are
    distinct global ids from a vocabulary of ``max(1000, 4 D)`` (sorted, so the local order equals
    lljax's), with N(0, 1) values on every row. Labels are drawn from the model with random true
    coefficients: logistic 0/1, linear Gaussian noise, Poisson counts.
    """
    rng = np.random.default_rng(seed)
    k = D - 1
    vocabulary = max(1000, 4 * D)
    keys = rng.random((E, vocabulary), dtype=np.float32)
    ids = np.sort(np.argpartition(keys, k - 1, axis=1)[:, :k], axis=1) + 1 if k else np.zeros((E, 0), np.int64)
    del keys
    Xf = rng.standard_normal((E, N, k))
    scale, offset_scale = (0.1, 0.3) if loss == "poisson" else (0.3, 1.0)
    theta = rng.normal(0.0, scale, (E, D))
    offset = rng.normal(0.0, offset_scale, (E, N))
    margin = offset + theta[:, :1] + np.einsum("enk,ek->en", Xf, theta[:, 1:])
    if loss == "logistic":
        label = (rng.random((E, N)) < 1.0 / (1.0 + np.exp(-margin))).astype(np.float64)
    elif loss == "poisson":
        label = rng.poisson(np.exp(margin)).astype(np.float64)
    else:
        label = margin + rng.standard_normal((E, N))
    X = np.concatenate([np.ones((E, N, 1)), Xf], axis=2).astype(dtype)
    return dict(X=X, label=label.astype(dtype), offset=offset.astype(dtype), ids=ids.astype(np.int64),
                vocabulary=vocabulary)


def to_dataset(data: dict) -> lljax.Dataset:
    X = data["X"]
    E, N, D = X.shape
    k = D - 1
    indptr = np.arange(E * N + 1, dtype=np.int64) * k
    feature_ids = np.repeat(data["ids"], N, axis=0).reshape(-1)
    return lljax.Dataset.from_arrays(np.repeat(np.arange(E, dtype=np.int64), N), data["label"].reshape(-1),
                                     indptr=indptr, feature_ids=feature_ids, values=X[:, :, 1:].reshape(-1),
                                     offset=data["offset"].reshape(-1), num_features=data["vocabulary"] + 1,
                                     intercept_id=0, dtype=X.dtype)


def to_block_arrays(data: dict, loss: str, full_prior: bool) -> dict[str, np.ndarray]:
    """The padded block lljax's packing builds for these entities (no padding needed here)."""
    X = data["X"]
    E, N, D = X.shape
    dtype = X.dtype
    y = data["label"]
    if loss == "logistic":
        y = np.where(y == 1, 1, -1).astype(dtype)
    feature_ids = np.concatenate([np.zeros((E, 1), np.int64), data["ids"]], axis=1)
    if full_prior:
        prior_precision = np.broadcast_to(np.eye(D, dtype=dtype) * L2, (E, D, D)).copy()
    else:
        prior_precision = np.full((E, D), L2, dtype)
    return dict(X=X, y=y, w=np.ones((E, N), dtype), offset=data["offset"], feature_ids=feature_ids,
                prior_mean=np.zeros((E, D), dtype), prior_precision=prior_precision)


# --------------------------------------------------------------------------------------------
# Timing helpers
# --------------------------------------------------------------------------------------------

def time_it(fn, repeats: int, budget_s: float, warmup: bool = True):
    """Optionally one untimed warm-up call, then up to ``repeats`` timed calls (at least one; stop
    early once ``budget_s`` seconds were spent timing). Returns ``(last result, times, warmup_s)``."""
    warm = None
    if warmup:
        t = time.perf_counter()
        fn()
        warm = time.perf_counter() - t
    times, out = [], None
    while len(times) < repeats and (not times or sum(times) < budget_s):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, times, warm


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    """``max over entities of ||a - b||_inf / max(||b||_inf, 1e-12)``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = np.maximum(np.max(np.abs(b), axis=-1), 1e-12)
    return float(np.max(np.max(np.abs(a - b), axis=-1) / scale))


def model_theta(model: lljax.RandomEffectModel, E: int, D: int) -> np.ndarray:
    """``(E, D)`` coefficients of entities ``0..E-1`` in local (sorted feature id) order."""
    table = model.to_table()
    order = np.lexsort((table["feature_id"], table["entity"]))
    return np.asarray(table["mean"])[order].reshape(E, D)


# --------------------------------------------------------------------------------------------
# One case
# --------------------------------------------------------------------------------------------

def run_case(case: dict, args, ll_cache: dict) -> dict:
    E, N, D = case["entities"], case["rows"], case["features"]
    dtype, loss, hessian = case["dtype"], case["loss"], case["hessian"]
    full_prior = hessian == "full"
    data = make_data(E, N, D, loss, dtype, args.seed)
    model_args = dict(l2=L2, delta=DELTA, hessian=hessian, max_iter=args.max_iter)
    config = lljax.RandomEffectModel(loss, **model_args).solver_config(np.dtype(dtype))
    arrays = to_block_arrays(data, loss, full_prior)
    out = {"case": case, "tol": config.tol, "methods": {}}
    budget = args.budget

    # lljax kernel: solve_block on one prebuilt block, on the device, warm.
    block = lljax.Block(**{k: jnp.asarray(v) for k, v in arrays.items()})
    l2, delta = jnp.asarray(L2, dtype), jnp.asarray(DELTA, dtype)

    def kernel(block=block, native=False):
        return jax.block_until_ready(lljax.solve_block(block, l2, delta, config._replace(native=native)))

    result, times, warm = time_it(kernel, args.repeats, budget)
    theta_kernel = np.asarray(result.theta)
    iterations = np.asarray(result.iterations)
    status = np.bincount(np.asarray(result.status), minlength=5).tolist()
    out["methods"]["lljax kernel"] = dict(times=times, warmup_s=warm, entities=E)
    out["iterations_mean"] = float(iterations.mean())
    out["iterations_max"] = int(iterations.max())
    out["status_counts"] = dict(zip(("converged", "max_iterations", "non_finite", "stalled", "skipped"), status))

    # lljax native: the same call on the native CPU kernel (when built), same block.
    if native.available() and jax.default_backend() == "cpu":
        result, times, warm = time_it(partial(kernel, native=True), args.repeats, budget)
        # CPU time of one more call (all threads of this process): on a shared machine the kernel may get
        # less than all cores; entities per CPU-second x cores is what dedicated cores would do.
        wall, cpu = time.perf_counter(), time.process_time()
        kernel(native=True)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        out["methods"]["lljax native"] = dict(times=times, warmup_s=warm, entities=E, isa=native.isa(),
                                              entities_per_cpu_s=E / cpu, cpu_over_wall=cpu / wall)
        out["max_rel_diff_theta_native_vs_kernel"] = rel_diff(np.asarray(result.theta), theta_kernel)
        out["native_iterations_equal"] = bool(np.array_equal(np.asarray(result.iterations), iterations))
    else:
        out["native_unavailable"] = native.build_error() or f"backend {jax.default_backend()}"
    del block, kernel, result

    # lljax update: the whole RandomEffectModel.update call.
    if "lljax update" in args.methods:
        dataset = to_dataset(data)
        state = {}

        def update():
            model = lljax.RandomEffectModel(loss, **model_args)
            state["report"] = model.update(dataset)
            state["model"] = model

        _, times, warm = time_it(update, args.repeats, budget)
        out["methods"]["lljax update"] = dict(times=times, warmup_s=warm, entities=E, blocks=state["report"].blocks)
        out["max_rel_diff_theta_update_vs_kernel"] = rel_diff(model_theta(state["model"], E, D), theta_kernel)
        del dataset, state

    # Batched NumPy Newton.
    trials_per_step = 1.0
    if "numpy newton" in args.methods:
        def numpy_run():
            return peers.numpy_newton(**arrays, l2=L2, delta=DELTA, loss=loss, hessian=hessian, tol=config.tol,
                                      max_iter=args.max_iter)

        small = {k: v[:256] for k, v in arrays.items()}
        peers.numpy_newton(**small, l2=L2, delta=DELTA, loss=loss, hessian=hessian, tol=config.tol,
                           max_iter=args.max_iter)  # warm-up on a slice
        res, times, _ = time_it(numpy_run, args.repeats, budget, warmup=False)
        out["methods"]["numpy newton"] = dict(times=times, entities=E)
        trials_per_step = res.trials / max(int(res.iterations.sum()), 1)
        out["numpy_iterations_mean"] = float(res.iterations.mean())
        out["numpy_trials_per_step"] = trials_per_step
        out["max_rel_diff_theta_numpy_vs_kernel"] = rel_diff(res.theta, theta_kernel)

    # Lambda Learner: once per (rows, features, loss, hessian); float64 throughout (scipy).
    if "lambda learner" in args.methods and loss in peers.LL_LOSSES and args.ll_sample > 0:
        key = (N, D, loss, hessian)
        if key not in ll_cache:
            rng = np.random.default_rng(args.seed + 1)
            sample = np.sort(rng.choice(E, size=min(args.ll_sample, E), replace=False))
            run = peers.lambda_learner_loop(data["X"], data["label"], data["offset"], sample, loss=loss,
                                            hessian=hessian, l2=L2, delta=DELTA)
            ll_cache[key] = dict(times=[run.train_s], convert_s=run.convert_s, entities=len(sample),
                                 warnflags=run.warnflags, measured_in=case_label(case),
                                 max_rel_diff_theta_vs_lljax=rel_diff(run.theta, theta_kernel[sample]))
        out["methods"]["lambda learner"] = dict(ll_cache[key])

    # Rates and ratios (the floor's numbers come later, from apply_floor).
    itemsize = np.dtype(dtype).itemsize
    work = floor_mod.work_per_entity(N, D, loss, hessian, out["iterations_mean"], itemsize, trials_per_step,
                                     full_prior=full_prior)
    out["work_per_entity"] = work._asdict()
    for m in out["methods"].values():
        t = float(np.median(m["times"]))
        rate = m["entities"] / t
        m.update(median_s=t, entities_per_s=rate, gflops=rate * work.flops / 1e9, gbs=rate * work.bytes / 1e9)
    for m in out["methods"].values():
        for peer in ("lambda learner", "numpy newton", "lljax kernel"):
            if peer in out["methods"]:
                m[f"ratio_vs_{peer.replace(' ', '_')}"] = m["entities_per_s"] / out["methods"][peer]["entities_per_s"]
    return out


def apply_floor(result: dict, floor: dict) -> None:
    """The case's floor (``floor.floor_seconds`` of its work per entity) and each method's fraction of it."""
    work = floor_mod.Work(**result["work_per_entity"])
    fl = floor_mod.floor_seconds(work, floor, result["case"]["dtype"])
    result["floor"] = fl
    result["floor_entities_per_s"] = 1.0 / fl["floor_s"]
    for m in result["methods"].values():
        m["fraction_of_floor"] = m["entities_per_s"] * fl["floor_s"]


def case_label(case: dict) -> str:
    return (f"E={case['entities']} N={case['rows']} D={case['features']} {_SHORT[case['dtype']]} "
            f"{case['loss']} {case['hessian']}")


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------

def print_floor(floor: dict, when: str) -> None:
    print(f"machine floor (measured on the {floor['backend']} ({floor['device_kind']}), best of repeats; {when}):")
    for dtype in floor["gemm_gflops"]:
        gemm = f"{floor['gemm_library']} {floor['gemm_n']}^2"
        print(f"  {dtype}: gemm {floor['gemm_gflops'][dtype]:.1f} GFLOP/s ({gemm}), "
              f"batched X^T diag(c) X {floor['batched_gflops'][dtype]:.2f} GFLOP/s (JAX, "
              f"{'x'.join(map(str, floor['batched_shape']))}), exp {floor['exp_per_s'][dtype] / 1e6:.0f} M/s (JAX)")
    print(f"  memory: read {floor['read_gbs']:.1f} GB/s (best of {', '.join(floor['read_gbs_by_method'])}), "
          f"copy {floor['copy_gbs']:.1f} GB/s (read + write)")


def print_table(results: list[dict]) -> None:
    header = (f"{'case':<40}{'method':<16}{'entities/s':>12}{'GFLOP/s':>9}{'GB/s':>7}{'floor%':>8}"
              f"{'xLL':>8}{'xNumPy':>8}{'xJAX':>7}")
    print(header)
    print("-" * len(header))
    for r in results:
        label = case_label(r["case"])
        print(f"{label:<40}{'floor':<16}{r['floor_entities_per_s']:>12,.0f}"
              f"{'':>9}{'':>7}{100.0:>7.0f}%{'':>8}{'':>8}   ({r['floor']['bound']}-bound, "
              f"iters mean {r['iterations_mean']:.2f} max {r['iterations_max']}, "
              f"trials/step {r.get('numpy_trials_per_step', 1.0):.2f})")
        for name in METHODS:
            m = r["methods"].get(name)
            if m is None:
                continue
            xll = m.get("ratio_vs_lambda_learner")
            xnp = m.get("ratio_vs_numpy_newton")
            xjax = m.get("ratio_vs_lljax_kernel")
            print(f"{'':<40}{name:<16}{m['entities_per_s']:>12,.0f}{m['gflops']:>9.2f}{m['gbs']:>7.2f}"
                  f"{100 * m['fraction_of_floor']:>7.1f}%"
                  f"{'' if xll is None else f'{xll:.1f}':>8}{'' if xnp is None else f'{xnp:.2f}':>8}"
                  f"{'' if xjax is None else f'{xjax:.2f}':>7}")
        notes = []
        for key, name in (("max_rel_diff_theta_native_vs_kernel", "native"),
                          ("max_rel_diff_theta_numpy_vs_kernel", "numpy"),
                          ("max_rel_diff_theta_update_vs_kernel", "update")):
            if key in r:
                notes.append(f"{name} {r[key]:.1e}")
        ll = r["methods"].get("lambda learner")
        if ll is not None:
            reused = "" if ll["measured_in"] == label else f", measured in {ll['measured_in']}"
            notes.append(f"LL {ll['max_rel_diff_theta_vs_lljax']:.1e} (S={ll['entities']}, warnflags "
                         f"{ll['warnflags']}{reused})")
        if notes:
            print(f"{'':<40}max rel diff of theta vs lljax kernel: {', '.join(notes)}")
        nat = r["methods"].get("lljax native")
        if nat is not None:
            cores = os.cpu_count() or 1
            print(f"{'':<40}native kernel ({nat['isa']}): {nat['entities_per_cpu_s']:,.0f} entities per CPU-second, "
                  f"CPU/wall {nat['cpu_over_wall']:.2f} of {cores} cores; x {cores} cores = "
                  f"{100 * nat['entities_per_cpu_s'] * cores / r['floor_entities_per_s']:.0f}% of the floor if "
                  "the cores were not shared")


def plot(results: list[dict], path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    labels = [case_label(r["case"]) for r in results]
    x = np.arange(len(results))
    names = ["floor", *METHODS]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(8, 0.55 * len(results) + 3), 9), sharex=True)
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        vals = [r["floor_entities_per_s"] if name == "floor" else r["methods"].get(name, {}).get("entities_per_s",
                                                                                                  np.nan)
                for r in results]
        ax1.bar(x + (i - (len(names) - 1) / 2) * width, vals, width, label=name)
    ax1.set_yscale("log")
    ax1.set_ylabel("entities / s")
    ax1.legend(fontsize=8)
    ax1.grid(axis="y", alpha=0.3)
    for i, name in enumerate(METHODS[:4]):
        vals = [100 * r["methods"].get(name, {}).get("fraction_of_floor", np.nan) for r in results]
        ax2.bar(x + (i - 1.5) * 0.2, vals, 0.2, label=name)
    ax2.axhline(60, color="k", ls="--", lw=0.8, label="60% target")
    ax2.set_ylabel("% of measured floor")
    ax2.legend(fontsize=8)
    ax2.grid(axis="y", alpha=0.3)
    ax2.set_xticks(x)
    ax2.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    fig.suptitle("lljax vs floor, batched NumPy Newton and Lambda Learner (CPU)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------

DEFAULT_GRID = dict(entities=[2000, 20_000], rows=[16, 64], features=[8, 16], dtypes=["float64"],
                    losses=["logistic"], hessians=["full"])
QUICK_GRID = dict(entities=[2000], rows=[64], features=[16], dtypes=["float64", "float32"],
                  losses=["logistic", "linear", "poisson"], hessians=["full", "diagonal"])


def parse_args(argv):
    results = Path(__file__).resolve().parent / "results"
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entities", type=int, nargs="+")
    p.add_argument("--rows", type=int, nargs="+", help="rows per entity (exact)")
    p.add_argument("--features", type=int, nargs="+", help="local features per entity, intercept included (>= 2)")
    p.add_argument("--dtypes", nargs="+", choices=["float64", "float32"])
    p.add_argument("--losses", nargs="+", choices=["logistic", "linear", "poisson"])
    p.add_argument("--hessians", nargs="+", choices=["full", "diagonal"])
    p.add_argument("--quick", action="store_true", help=f"small preset: {QUICK_GRID}, fewer repeats, quick floor")
    p.add_argument("--full-grid", action="store_true",
                   help="entities {2000, 20000} x rows {16, 64} x features {8, 16} x dtypes x losses x hessians")
    p.add_argument("--only", choices=["headline"], help="only the headline case: " + case_label(HEADLINE))
    p.add_argument("--methods", nargs="+", choices=list(_METHOD_FLAGS), default=list(_METHOD_FLAGS),
                   help="what to run besides the lljax kernel (always run): lljax update, numpy newton, "
                        "lambda learner")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per method (after a warm-up for lljax)")
    p.add_argument("--budget", type=float, default=8.0, help="stop repeating a method after this many seconds")
    p.add_argument("--ll-sample", type=int, default=200, help="entities trained with Lambda Learner per case")
    p.add_argument("--max-iter", type=int, default=50)
    p.add_argument("--floor-repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(results / "bench_suite.json"))
    p.add_argument("--plot", default=str(results / "bench_suite.png"))
    args = p.parse_args(argv)
    grid = dict(DEFAULT_GRID)
    if args.full_grid:
        grid.update(dtypes=["float64", "float32"], losses=["logistic", "linear", "poisson"],
                    hessians=["full", "diagonal"])
    if args.quick:
        grid = dict(QUICK_GRID)
        args.repeats = min(args.repeats, 2)
        args.ll_sample = min(args.ll_sample, 100)
    if args.only == "headline":
        grid = dict(entities=[HEADLINE["entities"]], rows=[HEADLINE["rows"]], features=[HEADLINE["features"]],
                    dtypes=[HEADLINE["dtype"]], losses=[HEADLINE["loss"]], hessians=[HEADLINE["hessian"]])
    for key in grid:
        if getattr(args, key) is not None:
            grid[key] = getattr(args, key)
    if min(grid["features"]) < 2 or min(grid["rows"]) < 1 or min(grid["entities"]) < 1:
        p.error("--features must be >= 2, --rows and --entities >= 1")
    args.grid = grid
    args.methods = [_METHOD_FLAGS[m] for m in args.methods]
    return args


def measure_floor(args) -> dict:
    """``floor.measure`` with the run's settings, and how long it took (``measure_s``)."""
    t = time.perf_counter()
    floor = floor_mod.measure(repeats=args.floor_repeats, quick=args.quick)
    floor["measure_s"] = time.perf_counter() - t
    return floor


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.timezone.utc)
    load_before = os.getloadavg()
    g = args.grid
    cases = [dict(entities=e, rows=n, features=d, dtype=t, loss=lo, hessian=h)
             for e, n, d, t, lo, h in itertools.product(g["entities"], g["rows"], g["features"], g["dtypes"],
                                                        g["losses"], g["hessians"])]
    print(f"lljax {lljax.__version__} | jax {jax.__version__} on {jax.default_backend()} | {os.cpu_count()} CPUs | "
          f"{len(cases)} case(s) | l2={L2}, delta={DELTA}, cold start | load avg {load_before[0]:.2f} | "
          f"native kernel: {native.isa() if native.available() else 'not built (' + str(native.build_error()) + ')'}")
    floor_before = measure_floor(args)
    print_floor(floor_before, "before the cases")
    print()

    results, ll_cache = [], {}
    for case in cases:
        t = time.perf_counter()
        r = run_case(case, args, ll_cache)
        r["case_s"] = time.perf_counter() - t
        results.append(r)
        print(f"[{len(results)}/{len(cases)}] {case_label(case)}: {r['case_s']:.1f}s", flush=True)
    floor = floor_mod.best_of(floor_before, measure_floor(args))
    print()
    print_floor(floor, "best of before and after the cases: the floor used below")
    for r in results:
        apply_floor(r, floor)
    print()
    print_table(results)
    load_after = os.getloadavg()
    print(f"load average (1 min) before/after: {load_before[0]:.2f}/{load_after[0]:.2f} "
          "(a shared machine: only ratios measured side by side in one run are meaningful)")

    doc = {
        "benchmark": "bench_suite",
        "started_utc": started.isoformat(),
        "finished_utc": dt.datetime.now(dt.timezone.utc).isoformat(),
        "argv": sys.argv[1:] if argv is None else list(argv),
        "machine": machine_info(load_before, scipy=scipy.__version__),
        "config": {"l2": L2, "delta": DELTA, "repeats": args.repeats, "budget_s": args.budget,
                   "ll_sample": args.ll_sample, "max_iter": args.max_iter, "seed": args.seed, "grid": args.grid},
        "floor": floor,
        "cases": results,
    }
    write_json(Path(args.out), doc)
    if plot(results, Path(args.plot)):
        print(f"wrote {args.plot}")
    else:
        print("matplotlib not installed: no plot")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
