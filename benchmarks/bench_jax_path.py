"""The pure-JAX solver (what runs on a GPU) against a plain vmapped Newton, in one run (issue 19, goal 4).

On the headline problem of ``bench_suite.py`` (logistic, ``--entities`` x 64 rows x 16 features, full
precision, cold start with ``l2 = 1``, ``delta = 0.8``; ``--dtype``), on JAX's default backend, times:

- ``lljax jax``: ``lljax.solve_block`` forced to the pure-JAX path (``SolverConfig(native=False)``): per-lane
  convergence test, Armijo line search, statuses, posterior precision;
- ``plain fixed K``: a jitted ``vmap`` of an undamped Newton loop of exactly ``K`` steps (``lax.fori_loop``),
  ``K`` = the largest iteration count lljax needed, with the posterior precision at the end: no line
  search, no convergence test, no statuses (it needs ``K`` known in advance);
- ``plain until tol``: the same Newton step in a ``lax.while_loop`` until every lane's max-abs gradient is
  under lljax's ``tol`` (the cheapest loop that decides by itself when to stop).

Each is warmed up (compiled) once, then the three are timed in turn, ``--repeats`` rounds, on
device-resident arrays (``block_until_ready``; interleaved, so that load from other jobs falls on all
three alike); the table gives the best and median entities/s, the ratio of each plain loop's best time
to lljax's (> 1: lljax is faster), and the largest difference of the plain loops' coefficients from
lljax's. Run: ``python benchmarks/bench_jax_path.py [--entities 20000] [--dtype float64]``; writes
``results/bench_jax_path.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # a benchmark may; the library never does

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_suite  # noqa: E402
from _common import machine_info, write_json  # noqa: E402

import lljax  # noqa: E402


def plain_newton(steps: int | None, tol: float):
    """A jitted vmapped undamped Newton solve of the logistic objective with penalty ``A = delta P0 +
    (1 - delta) l2 I``: ``steps`` steps, or (``None``) until every lane's max-abs gradient is ``<= tol``."""

    @jax.jit
    def solve(X, y, w, offset, P0, l2, delta):
        def one(X, y, w, offset, P0):
            A = delta * P0 + (1 - delta) * l2 * jnp.eye(X.shape[1], dtype=X.dtype)

            def gradient_and_hessian(theta):
                s = jax.nn.sigmoid(-y * (X @ theta + offset))
                g = X.T @ (w * (-y * s)) + A @ theta
                return g, X.T @ (X * (w * s * (1 - s))[:, None]) + A

            def step(theta):
                g, H = gradient_and_hessian(theta)
                return theta - jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(H), True), g), g

            theta0 = jnp.zeros(X.shape[1], X.dtype)
            if steps is not None:
                theta = jax.lax.fori_loop(0, steps, lambda _, t: step(t)[0], theta0)
            else:
                def body(carry):
                    theta, _, i = carry
                    new, g = step(theta)
                    done = jnp.max(jnp.abs(g)) <= tol  # g at theta: keep theta, as lljax does at convergence
                    return jnp.where(done, theta, new), done, i + 1

                theta = jax.lax.while_loop(lambda c: ~c[1] & (c[2] < 100), body,
                                           (theta0, jnp.asarray(False), jnp.int32(0)))[0]
            return theta, gradient_and_hessian(theta)[1]

        return jax.vmap(one)(X, y, w, offset, P0)

    return solve


def time_interleaved(fns: dict, repeats: int) -> dict[str, tuple[float, float, object]]:
    """``name -> (best s, median s, result)`` of each function, compiled first, then timed in rounds of one
    call each."""
    results = {name: jax.block_until_ready(fn()) for name, fn in fns.items()}  # compile
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            results[name] = jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t)
    return {name: (min(times[name]), float(np.median(times[name])), results[name]) for name in fns}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entities", type=int, default=20_000)
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "bench_jax_path.json"))
    args = p.parse_args(argv)
    load = os.getloadavg()
    E, N, D = args.entities, 64, 16
    data = bench_suite.make_data(E, N, D, "logistic", args.dtype, args.seed)
    arrays = {k: jnp.asarray(v) for k, v in bench_suite.to_block_arrays(data, "logistic", True).items()}
    dtype = np.dtype(args.dtype)
    config = lljax.RandomEffectModel("logistic", l2=bench_suite.L2, delta=bench_suite.DELTA, hessian="full"
                                     ).solver_config(dtype)._replace(native=False)
    l2, delta = jnp.asarray(bench_suite.L2, dtype), jnp.asarray(bench_suite.DELTA, dtype)
    block = lljax.Block(**arrays)
    lljax_solve = partial(lljax.solve_block, block, l2, delta, config)
    result = lljax_solve()
    iterations = np.asarray(result.iterations)
    statuses = {lljax.Status(s).name.lower(): int(c) for s, c in enumerate(np.bincount(np.asarray(result.status)))
                if c}
    theta = np.asarray(result.theta, np.float64)
    K = int(iterations.max())
    inputs = (arrays["X"], arrays["y"], arrays["w"], arrays["offset"], arrays["prior_precision"], l2, delta)
    fns = {"lljax jax": lljax_solve}
    for name, steps in ((f"plain fixed {K}", K), ("plain until tol", None)):
        fns[name] = partial(plain_newton(steps, config.tol), *inputs)
    timed = time_interleaved(fns, args.repeats)
    best = timed["lljax jax"][0]
    rows = []
    for name, (b, m, out) in timed.items():
        plain_theta = out.theta if name == "lljax jax" else out[0]
        rows.append(dict(method=name, best_s=b, median_s=m,
                         max_abs_diff=float(np.max(np.abs(np.asarray(plain_theta, np.float64) - theta)))))
    print(f"{E:,} logistic entities x {N} rows x {D} features, {args.dtype}, full precision, on "
          f"{jax.devices()[0].device_kind} ({jax.default_backend()}); lljax iterations mean "
          f"{iterations.mean():.2f}, max {K}; statuses {statuses}")
    print(f"{'method':18s} {'best ent/s':>12s} {'median ent/s':>13s} {'plain/lljax time':>17s} {'max |dtheta|':>13s}")
    for row in rows:
        row["entities_per_s"] = E / row["best_s"]
        row["lljax_speedup"] = row["best_s"] / best
        print(f"{row['method']:18s} {E / row['best_s']:12,.0f} {E / row['median_s']:13,.0f} "
              f"{row['lljax_speedup']:17.2f} {row['max_abs_diff']:13.2e}")
    write_json(args.out, dict(benchmark="bench_jax_path", args=vars(args), iterations_mean=float(iterations.mean()),
                              iterations_max=K, statuses=statuses, tol=config.tol, rows=rows,
                              machine=machine_info(load)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
