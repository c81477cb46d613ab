"""Thompson sampling / UCB scoring: lljax ``thompson_arms`` / ``ucb_arms`` vs MABWiser 2.7 LinTS / LinUCB.

Problem: ``--arms`` arms (= lljax entities), each with ``--rows`` rows of ``--features`` dense
N(0, 1) context features and a linear reward ``x . beta_arm + N(0, 0.5^2)``.

1. Fit. lljax: ``RandomEffectModel("linear", l2=1, delta=0, hessian="full")`` on all arms
   (``intercept_id=None``). MABWiser: ``MAB(arms, LearningPolicy.LinTS(alpha=1, l2_lambda=1))`` and
   ``LinUCB(alpha=1, l2_lambda=1)``, ``fit(decisions, rewards, contexts)``. Both are ridge
   regression per arm: the posterior mean and precision of lljax must equal MABWiser's
   ``beta = A^-1 X^T y`` and ``A = X^T X + l2 I``; the max abs differences are printed.
2. Score ``--requests`` contexts x all arms. lljax: ``thompson_arms(key, posterior, contexts)``
   (a fresh ``N(x . mean, x^T P^-1 x)`` draw per (request, arm), the same distribution as
   MABWiser's per-arm ``multivariate_normal`` draw), the same with ``draws=16`` (16 draws per arm,
   each shared by a contiguous group of requests) and ``ucb_arms``, jit-compiled once, then
   ``--repeats`` timed calls with ``block_until_ready`` (median), in float64 and float32, on a
   posterior already on the device. ``model.posterior(...)`` (host-side gather of the arms'
   stored posteriors) is timed separately. MABWiser: ``mab.predict(contexts)`` (what a user calls:
   it samples every arm for every context, then takes the argmax), and the raw per-arm loop
   ``[arm_model.predict(contexts) for each arm]`` (the sampling alone), timed once each.
3. Floor of ``thompson_arms`` on this machine, from measurements in the same run:
   - the variance matmul as implemented, over the packed upper triangle of each covariance,
     ``(R, D(D+1)/2) @ (D(D+1)/2, A)``: ``2 R A D(D+1)/2`` FLOPs at the rate JAX reaches on the
     ``(R, D^2) @ (D^2, A)`` matmul (the compute floor of the algorithm);
   - bytes: the ``(R, A)`` result written once plus the inputs read, over the bandwidth of a
     streaming ``y = x + 1`` on an ``(R, A)`` array;
   - roofline floor = max(compute, bytes); the ``R x A`` normal draws are real work the
     roofline does not see, so the time of ``jax.random.normal(key, (R, A))`` is reported
     too, and "floor + RNG" = roofline + RNG time;
   - the shared-draw mode ``thompson_arms(..., draws=16)`` (requests cut into 16 contiguous groups,
     one posterior draw per arm and group): ``2 R A D`` FLOPs, same bytes.

Prints a table and writes JSON (``--out``). Run: ``python benchmarks/bench_thompson.py``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import os
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # a benchmark may; the library never does

import numpy as np  # noqa: E402
from _common import machine_info, write_json  # noqa: E402

import lljax  # noqa: E402
from lljax import Posterior, thompson_arms, ucb_arms  # noqa: E402

L2, ALPHA = 1.0, 1.0


# Shared-draw mode: requests cut into this many contiguous groups, one posterior draw per arm and group.
SHARED_DRAWS = 16


def make_data(arms: int, rows: int, features: int, seed: int):
    rng = np.random.default_rng(seed)
    decisions = rng.permutation(np.repeat(np.arange(arms), rows))
    contexts = rng.normal(size=(len(decisions), features))
    beta = rng.normal(size=(arms, features))
    rewards = np.einsum("nd,nd->n", contexts, beta[decisions]) + 0.5 * rng.normal(size=len(decisions))
    return decisions, contexts, rewards


def timed(fn, repeats: int) -> tuple[float, list[float]]:
    """Median wall time of ``repeats`` calls of ``fn`` (each blocks until its result is ready)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return float(np.median(times)), times


def floor_measurements(R: int, A: int, D: int, dtype, repeats: int) -> dict:
    """Measured matmul rate (the variance matmul's shapes), streaming bandwidth and RNG time."""
    rng = np.random.default_rng(0)
    outer = jax.device_put(rng.normal(size=(R, D * D)).astype(dtype))
    cov = jax.device_put(rng.normal(size=(A, D * D)).astype(dtype))
    matmul = jax.jit(lambda a, b: a @ b.T)
    jax.block_until_ready(matmul(outer, cov))
    t_matmul, _ = timed(lambda: matmul(outer, cov), repeats)
    flops = 2.0 * R * A * D * D
    big = jax.device_put(np.ones((R, A), dtype))
    add = jax.jit(lambda x: x + 1.0)
    jax.block_until_ready(add(big))
    t_stream, _ = timed(lambda: add(big), repeats)
    itemsize = np.dtype(dtype).itemsize
    bandwidth = 2.0 * R * A * itemsize / t_stream  # read + write
    key = jax.random.key(1)
    normal = jax.jit(lambda k: jax.random.normal(k, (R, A), dtype))
    jax.block_until_ready(normal(key))
    t_rng, _ = timed(lambda: normal(key), repeats)
    # Minimum traffic of thompson_arms: write the (R, A) scores once, read contexts and posteriors.
    min_bytes = (R * A + R * D + A * D * (D + 1)) * itemsize
    rate = flops / t_matmul
    # thompson_arms multiplies over the D (D + 1) / 2 distinct entries of each symmetric covariance
    compute_floor = 2.0 * R * A * D * (D + 1) / 2 / rate
    bytes_floor = min_bytes / bandwidth
    roofline = max(compute_floor, bytes_floor)
    # draws=S: scores are x . theta_draw, 2 R A D flops (the S A draws are negligible)
    shared_roofline = max(2.0 * R * A * D / rate, bytes_floor)
    return {
        "variance_matmul_flops": flops,
        "variance_matmul_flops_symmetric": 2.0 * R * A * D * (D + 1) / 2,
        "matmul_s": t_matmul,
        "matmul_gflops": flops / t_matmul / 1e9,
        "stream_bandwidth_gb_s": bandwidth / 1e9,
        "min_bytes": min_bytes,
        "compute_floor_s": compute_floor,
        "shared_draws_roofline_s": shared_roofline,
        "bytes_floor_s": bytes_floor,
        "roofline_floor_s": roofline,
        "rng_normal_s": t_rng,
        "floor_with_rng_s": roofline + t_rng,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=50, help="training rows per arm")
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5, help="timed lljax calls (median)")
    parser.add_argument("--mabwiser-repeats", type=int, default=1, help="timed MABWiser calls (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_thompson.json"))
    args = parser.parse_args(argv)
    from mabwiser.mab import MAB, LearningPolicy

    started = dt.datetime.now(dt.timezone.utc)
    load_before = os.getloadavg()
    A, D, R = args.arms, args.features, args.requests
    decisions, contexts, rewards = make_data(A, args.rows, D, args.seed)

    # ---- fit both
    model = lljax.RandomEffectModel("linear", l2=L2, delta=0.0, hessian="full")
    dataset = lljax.Dataset.from_arrays(decisions, rewards, X=contexts, intercept_id=None, dtype=np.float64)
    t = time.perf_counter()
    report = model.update(dataset)
    lljax_fit = time.perf_counter() - t
    mab_ts = MAB(arms=list(range(A)), learning_policy=LearningPolicy.LinTS(alpha=ALPHA, l2_lambda=L2), seed=args.seed)
    t = time.perf_counter()
    mab_ts.fit(decisions, rewards, contexts)
    mab_fit = time.perf_counter() - t
    mab_ucb = MAB(arms=list(range(A)), learning_policy=LearningPolicy.LinUCB(alpha=ALPHA, l2_lambda=L2),
                  seed=args.seed)
    mab_ucb.fit(decisions, rewards, contexts)

    t = time.perf_counter()
    posterior = model.posterior(np.arange(A), np.arange(D))
    posterior_s = time.perf_counter() - t
    ridge = [mab_ts._imp.arm_to_model[a] for a in range(A)]
    beta = np.stack([m.beta for m in ridge])
    A_mat = np.stack([m.A for m in ridge])
    mean_diff = float(np.abs(posterior.mean - beta).max())
    prec_diff = float(np.abs(posterior.precision - A_mat).max())
    prec_rel = prec_diff / float(np.abs(A_mat).max())

    # ---- score
    request_contexts = np.random.default_rng(args.seed + 1).normal(size=(R, D))
    key = jax.random.key(args.seed)
    rows, lljax_times = [], {}
    for dtype in (np.float64, np.float32):
        name = np.dtype(dtype).name
        post = jax.device_put(Posterior(posterior.mean.astype(dtype), posterior.precision.astype(dtype),
                                        posterior.feature_ids))
        ctx = jax.device_put(request_contexts.astype(dtype))
        for label, fn in ((f"lljax thompson_arms {name}", lambda p=post, c=ctx: thompson_arms(key, p, c)),
                          (f"lljax thompson_arms {name}, draws={SHARED_DRAWS}",
                           lambda p=post, c=ctx: thompson_arms(key, p, c, draws=SHARED_DRAWS)),
                          (f"lljax ucb_arms {name}", lambda p=post, c=ctx: ucb_arms(p, c, ALPHA))):
            t = time.perf_counter()
            jax.block_until_ready(fn())
            compile_s = time.perf_counter() - t
            median, times = timed(fn, args.repeats)
            lljax_times[label] = {"median_s": median, "times_s": times, "first_call_s": compile_s}
            rows.append((label, median))
    rbg_key = jax.random.key(args.seed, impl="unsafe_rbg")
    post64 = jax.device_put(posterior)
    ctx64 = jax.device_put(request_contexts)
    jax.block_until_ready(thompson_arms(rbg_key, post64, ctx64))
    median, times = timed(lambda: thompson_arms(rbg_key, post64, ctx64), args.repeats)
    lljax_times["lljax thompson_arms float64, unsafe_rbg key"] = {"median_s": median, "times_s": times}
    rows.append(("lljax thompson_arms float64 (rbg key)", median))

    mab_times = {}
    for label, fn in (
        ("MABWiser LinTS mab.predict", lambda: mab_ts.predict(request_contexts)),
        ("MABWiser LinTS per-arm predict loop",
         lambda: np.array([mab_ts._imp.arm_to_model[a].predict(request_contexts) for a in range(A)])),
        ("MABWiser LinUCB mab.predict", lambda: mab_ucb.predict(request_contexts)),
    ):
        times = []
        for _ in range(args.mabwiser_repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        mab_times[label] = {"median_s": float(np.median(times)), "times_s": times}
        rows.append((label, float(np.median(times))))

    floors = {np.dtype(dt_).name: floor_measurements(R, A, D, dt_, args.repeats) for dt_ in (np.float64, np.float32)}

    # ---- report
    reference = {"thompson": mab_times["MABWiser LinTS mab.predict"]["median_s"],
                 "ucb": mab_times["MABWiser LinUCB mab.predict"]["median_s"]}
    print(f"lljax {lljax.__version__} | jax {jax.__version__} on {jax.default_backend()} | {os.cpu_count()} CPUs | "
          f"{A} arms x {args.rows} rows x {D} features; scoring {R:,} requests x {A} arms")
    print(f"fit: lljax update {lljax_fit:.2f}s ({report.status_counts['converged']}/{A} converged, includes compile), "
          f"MABWiser LinTS fit {mab_fit:.2f}s; model.posterior for {A} arms {posterior_s:.3f}s")
    print(f"lljax posterior vs MABWiser LinTS: max |mean - beta| = {mean_diff:.2e}, max |P - A| = {prec_diff:.2e} "
          f"(relative {prec_rel:.1e})")
    print(f"{'method':<48}{'seconds':>10}{'requests/s':>14}{'MABWiser / this':>17}")
    print("-" * 89)
    for label, secs in rows:
        ref = reference["ucb" if "ucb" in label.lower() else "thompson"]
        print(f"{label:<48}{secs:>10.3f}{R / secs:>14,.0f}{ref / secs:>16,.1f}x")
    print("-" * 89)
    print("ratio column: MABWiser mab.predict time (LinTS for Thompson rows, LinUCB for UCB rows) / this row's time")
    for name, f in floors.items():
        achieved = lljax_times[f"lljax thompson_arms {name}"]["median_s"]
        shared = lljax_times[f"lljax thompson_arms {name}, draws={SHARED_DRAWS}"]["median_s"]
        print(f"floor of thompson_arms {name}, draws={SHARED_DRAWS}: roofline {f['shared_draws_roofline_s']:.3f}s "
              f"-> achieved/floor {shared / f['shared_draws_roofline_s']:.2f}")
        print(f"floor of thompson_arms {name}: variance matmul {f['variance_matmul_flops_symmetric'] / 1e9:.1f} GFLOP "
              f"(packed symmetric) at {f['matmul_gflops']:.1f} GFLOP/s = {f['compute_floor_s']:.3f}s; "
              f"bytes {f['min_bytes'] / 1e6:.0f} MB at "
              f"{f['stream_bandwidth_gb_s']:.1f} GB/s = {f['bytes_floor_s']:.3f}s; "
              f"roofline {f['roofline_floor_s']:.3f}s "
              f"-> achieved/floor {achieved / f['roofline_floor_s']:.2f}; normal draws {f['rng_normal_s']:.3f}s, "
              f"floor + RNG {f['floor_with_rng_s']:.3f}s -> achieved/(floor + RNG) "
              f"{achieved / f['floor_with_rng_s']:.2f}")
    print(f"load average (1 min) before/after: {load_before[0]:.2f}/{os.getloadavg()[0]:.2f} "
          "(timings on a shared machine vary with it)")

    result = {
        "benchmark": "bench_thompson",
        "started_utc": started.isoformat(),
        "finished_utc": dt.datetime.now(dt.timezone.utc).isoformat(),
        "machine": machine_info(load_before, mabwiser=importlib.metadata.version("mabwiser")),
        "config": {"arms": A, "rows_per_arm": args.rows, "features": D, "requests": R, "l2": L2, "alpha": ALPHA,
                   "repeats": args.repeats, "mabwiser_repeats": args.mabwiser_repeats, "seed": args.seed},
        "fit": {"lljax_update_s": lljax_fit, "mabwiser_lints_fit_s": mab_fit, "lljax_posterior_s": posterior_s,
                "max_abs_diff_mean_beta": mean_diff, "max_abs_diff_precision_A": prec_diff,
                "max_rel_diff_precision_A": prec_rel},
        "lljax": lljax_times,
        "mabwiser": mab_times,
        "speedup_vs_mabwiser_predict": {label: reference["ucb" if "ucb" in label.lower() else "thompson"] / secs
                                        for label, secs in rows},
        "floor": floors,
    }
    write_json(Path(args.out), result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
