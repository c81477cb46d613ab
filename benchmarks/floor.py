"""The machine floor: measured matrix-multiply and elementwise rates, memory bandwidth, and the
per-entity work model of the batched Newton solve.

Rates (all measured on this machine when the suite runs, best of repeats, nothing assumed):

- ``gemm_gflops[dtype]``: NumPy (OpenBLAS, all threads) on large square matrices: the machine's
  practical matrix-multiply peak. The floor uses this rate.
- ``batched_gflops[dtype]``: JAX (XLA CPU) batched ``X^T (c * X)`` at the kernel's shapes
  ``(E, N, D)``; what XLA achieves on the dominant piece of the kernel. Reported for reference.
- ``exp_per_s[dtype]``: JAX ``exp`` on a cache-resident array (elements/s); transcendental
  evaluations of the losses are costed at this rate rather than as "flops".
- ``read_gbs`` / ``copy_gbs``: streaming read bandwidth (the best of an array sum split over one
  thread per core, a one-thread sum, and a BLAS ddot) and copy bandwidth, on arrays much larger
  than the last-level cache. The floor uses the read bandwidth.

On a GPU (JAX's backend not the CPU) ``measure`` takes the rates of the device instead: matrix
multiply with JAX (cuBLAS), bandwidth as a device sum and a device ``a + 1``.

Work model of one entity (``work_per_entity``): see its docstring. The floor time of an entity is
``max(flops / gemm rate + transcendentals / exp rate, bytes / read bandwidth)``.

What the floor is for the native CPU kernel (``lljax/solve/kernels``, the ``lljax native`` row of
``bench_suite.py``). At the headline case (64 rows, 16 features, float64, logistic, full Hessian,
4.72 Newton steps per entity) the work model counts ~143,000 flops and ~1,100 exp/log evaluations per
entity and ~14 KB of compulsory memory traffic, so the case is compute-bound: the floor is the
symmetric-Hessian, Cholesky, solve, line-search and gradient flops at the rate of a large NumPy
dgemm on all cores (24-88 GFLOP/s measured on the shared 2-core machine, depending on the load; 75-88
in the quieter runs) plus the transcendentals at JAX's ``exp`` rate (0.8-0.9 G/s): ~2.8-3.3 us per
entity, ~300,000-360,000 entities/s in those runs. That rate is not reachable
by any exact implementation of the algorithm: a dgemm runs at its peak on large cache-blocked
matrices, while the kernel's products are 64 x 16 x 16 per entity (the kernel computes the
Hessian's lower triangle as register blocks at ~40 GFLOP/s per core, about 80% of one core's FMA
peak, measured in isolation), and
the Cholesky, the triangular solves, the sqrt/divisions and the per-lane control of the line
search have no dgemm-rate equivalent. The model counts no work for lanes that wait on their group:
the kernel runs the 4 entities of a group in lockstep, ~6% more Newton steps at this shape (mean of
the group maxima 5.02 vs mean 4.73). The memory term (~0.8 us per entity) is an eighth of the
compute term: the kernel reads each entity's block once and keeps its whole solve in L1/L2.
"""

from __future__ import annotations

import os
import threading
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

DTYPES = ("float64", "float32")


def _best_time(fn, repeats: int, warmup: int = 1) -> float:
    """Shortest of ``repeats`` timed calls: the floor is what the machine can do, and on a shared
    machine other load only ever slows a run down."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.min(times))


def gemm_gflops(dtype: str, n: int = 2048, repeats: int = 5) -> float:
    """NumPy ``A @ B`` on ``n x n`` matrices: ``2 n^3 / t``."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    out = np.empty_like(a)
    t = _best_time(lambda: np.matmul(a, b, out=out), repeats)
    return 2.0 * n ** 3 / t / 1e9


def batched_gflops(dtype: str, entities: int = 20_000, rows: int = 64, features: int = 16, repeats: int = 5) -> float:
    """JAX ``einsum('end,en,enk->edk')`` (the kernel's Hessian) at ``(E, N, D)``: ``2 E N D^2 / t``
    (the full, non-symmetric product; the rate XLA reaches on this shape)."""
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.standard_normal((entities, rows, features)).astype(dtype))
    c = jnp.asarray(rng.random((entities, rows)).astype(dtype))
    f = jax.jit(lambda X, c: jnp.einsum("end,enk->edk", X * c[:, :, None], X))
    t = _best_time(lambda: f(X, c).block_until_ready(), repeats)
    return 2.0 * entities * rows * features ** 2 / t / 1e9


def exp_per_s(dtype: str, size: int = 1 << 18, inner: int = 16, repeats: int = 5) -> float:
    """JAX ``exp`` on a ``size``-element (cache-resident) array, ``inner`` times per call: elements/s."""
    x = jnp.asarray(np.random.default_rng(0).uniform(-5, 5, size).astype(dtype))

    @jax.jit
    def f(x):
        def body(_, acc):
            return acc + jnp.exp(x - acc * 1e-30)
        return jax.lax.fori_loop(0, inner, body, jnp.zeros_like(x))

    t = _best_time(lambda: f(x).block_until_ready(), repeats)
    return size * inner / t


def read_bandwidth_gbs(size_mb: int = 512, repeats: int = 5, threads: int | None = None) -> float:
    """Sum of a ``size_mb`` float64 array split over ``threads`` threads (NumPy releases the GIL): GB/s read."""
    threads = threads or os.cpu_count() or 1
    a = np.ones(size_mb * (1 << 20) // 8)
    parts = np.array_split(a, threads)
    sums = [0.0] * threads

    def work(i):
        sums[i] = float(parts[i].sum())

    def run():
        ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for th in ts:
            th.start()
        for th in ts:
            th.join()

    t = _best_time(run, repeats)
    return a.nbytes / t / 1e9


def ddot_bandwidth_gbs(size_mb: int = 512, repeats: int = 5) -> float:
    """``a @ a`` (OpenBLAS ddot, threaded) of a ``size_mb`` float64 array: bytes read / t."""
    a = np.ones(size_mb * (1 << 20) // 8)
    t = _best_time(lambda: a @ a, repeats)
    return a.nbytes / t / 1e9


def copy_bandwidth_gbs(size_mb: int = 256, repeats: int = 5) -> float:
    """``np.copyto`` of a ``size_mb`` float64 array: (read + write bytes) / t."""
    a = np.ones(size_mb * (1 << 20) // 8)
    b = np.empty_like(a)
    t = _best_time(lambda: np.copyto(b, a), repeats)
    return 2 * a.nbytes / t / 1e9


def device_gemm_gflops(dtype: str, n: int = 4096, repeats: int = 5) -> float:
    """JAX ``A @ B`` on ``n x n`` matrices on JAX's default device: ``2 n^3 / t`` (cuBLAS on a GPU)."""
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((n, n)).astype(dtype))
    b = jnp.asarray(rng.standard_normal((n, n)).astype(dtype))
    f = jax.jit(jnp.matmul)
    t = _best_time(lambda: f(a, b).block_until_ready(), repeats)
    return 2.0 * n ** 3 / t / 1e9


def device_read_bandwidth_gbs(size_mb: int = 1024, repeats: int = 5) -> float:
    """JAX sum of a ``size_mb`` float32 array on the default device: bytes read / t."""
    a = jnp.ones(size_mb * (1 << 20) // 4, jnp.float32)
    f = jax.jit(jnp.sum)
    t = _best_time(lambda: f(a).block_until_ready(), repeats)
    return a.nbytes / t / 1e9


def device_copy_bandwidth_gbs(size_mb: int = 512, repeats: int = 5) -> float:
    """JAX ``a + 1`` of a ``size_mb`` float32 array on the default device: (read + write bytes) / t."""
    a = jnp.ones(size_mb * (1 << 20) // 4, jnp.float32)
    f = jax.jit(lambda a: a + 1.0)
    t = _best_time(lambda: f(a).block_until_ready(), repeats)
    return 2 * a.nbytes / t / 1e9


def measure(repeats: int = 5, quick: bool = False, device: bool | None = None) -> dict:
    """Every rate above, for both dtypes. ``quick`` uses smaller problems (less stable numbers).

    ``device`` (default: whether JAX's backend is not the CPU): the rates of JAX's default device
    instead of the host's, so that on a GPU the floor is the GPU's: matrix multiply with JAX (cuBLAS),
    bandwidth as a device sum and a device ``a + 1``; ``exp`` and the batched Hessian are JAX's on
    every backend. ``out["backend"]`` and ``out["device_kind"]`` say which was measured."""
    device = jax.default_backend() != "cpu" if device is None else device
    n = 1024 if quick else (4096 if device else 2048)
    entities = 4096 if quick else 20_000
    out = {"backend": jax.default_backend() if device else "host",
           "device_kind": jax.devices()[0].device_kind if device else "cpu",
           "gemm_library": "JAX" if device else "NumPy", "gemm_n": n, "batched_shape": [entities, 64, 16],
           "gemm_gflops": {}, "batched_gflops": {}, "exp_per_s": {}}
    for dtype in DTYPES:
        if dtype == "float64" and not jax.config.jax_enable_x64:
            continue
        out["gemm_gflops"][dtype] = (device_gemm_gflops if device else gemm_gflops)(dtype, n, repeats)
        out["batched_gflops"][dtype] = batched_gflops(dtype, entities, repeats=repeats)
        out["exp_per_s"][dtype] = exp_per_s(dtype, repeats=repeats)
    mb = 128 if quick else 512
    if device:
        out["read_gbs_by_method"] = {"device_sum": device_read_bandwidth_gbs(2 * mb, repeats)}
        out["copy_gbs"] = device_copy_bandwidth_gbs(mb, repeats)
    else:
        out["read_gbs_by_method"] = {"sum_threads": read_bandwidth_gbs(mb, repeats),
                                     "sum_1thread": read_bandwidth_gbs(mb, repeats, threads=1),
                                     "ddot": ddot_bandwidth_gbs(mb, repeats)}
        out["copy_gbs"] = copy_bandwidth_gbs(128 if quick else 256, repeats)
    out["read_gbs"] = max(out["read_gbs_by_method"].values())
    return out


def best_of(*measurements: dict) -> dict:
    """The highest of each rate over several ``measure()`` results (e.g. before and after a run's cases):
    on a shared machine a rate measured once can be depressed by a neighbour's load, and the floor is
    what the machine can do. The inputs are kept under ``"measurements"``."""
    out = dict(measurements[0])
    for key in ("gemm_gflops", "batched_gflops", "exp_per_s"):
        out[key] = {dt: max(m[key][dt] for m in measurements) for dt in measurements[0][key]}
    out["read_gbs_by_method"] = {k: max(m["read_gbs_by_method"][k] for m in measurements)
                                 for k in measurements[0]["read_gbs_by_method"]}
    out["read_gbs"] = max(out["read_gbs_by_method"].values())
    out["copy_gbs"] = max(m["copy_gbs"] for m in measurements)
    out["measurements"] = [dict(m) for m in measurements]
    return out


# --------------------------------------------------------------------------------------------
# Work model
# --------------------------------------------------------------------------------------------

# Transcendental evaluations per row: (objective value, first + second derivative together).
# logistic: value = log1p(exp(-|ym|)) -> 2; sigmoid for d1 and d2 -> 1 (d2 = s (1 - s) reuses it).
# poisson: value exp(m) -> 1; d1 and d2 share exp(m) -> 1. linear: none.
_TRANSCENDENTALS = {"logistic": (2, 1), "poisson": (1, 1), "linear": (0, 0)}
# Plain flops per row besides the transcendentals: (value incl. weighting and sum, d1 + d2 incl. weighting).
_ELEMENTWISE = {"logistic": (4, 6), "poisson": (4, 4), "linear": (4, 3)}


class Work(NamedTuple):
    """Work of solving one entity: ``flops`` (multiply and add each count 1), ``transcendentals``
    (exp / log evaluations), ``bytes`` (compulsory memory traffic: inputs read once, outputs written
    once), and ``bytes_streamed`` (if ``X`` is re-read from memory twice per Newton step, as an
    unfused implementation of a block larger than the cache does)."""

    flops: float
    transcendentals: float
    bytes: float
    bytes_streamed: float


def step_flops(N: int, D: int, loss: str, trials: float = 1.0) -> tuple[float, float]:
    """``(flops, transcendentals)`` of one damped-Newton step of one entity with ``N`` rows, ``D`` features.

    Counted (a multiply-add is 2 flops):

    - curvature ``c = w * l''(m)``: elementwise, ``_ELEMENTWISE`` (shared with the gradient's derivative);
    - Hessian ``X^T diag(c) X`` using symmetry (lower triangle only, as a SYRK of ``sqrt(c) X``):
      ``N D`` (scaling) + ``N D (D + 1)``; the penalty added to it: ``D``; the ridge: ``D``;
    - Cholesky: ``D^3 / 3``; the two triangular solves: ``2 D^2``;
    - direction in margin space ``X p``: ``2 N D``; slope ``g . p``: ``2 D``;
    - each line-search trial (``trials`` per step, at least 1): ``theta + t p`` and ``m + t Xp``
      (``2 D + 2 N``), the objective value (``_ELEMENTWISE`` + transcendentals per row, penalty ``4 D``);
    - the gradient at the accepted point: ``X^T r`` (``2 N D``), ``r = w * l'(m)`` (shared above),
      penalty ``2 D``.

    The full, non-symmetric Hessian product would be ``2 N D^2`` instead of ``N D (D + 1)``; the floor
    counts the smaller (a floor is a lower bound on the work).
    """
    value_f, deriv_f = _ELEMENTWISE[loss]
    value_t, deriv_t = _TRANSCENDENTALS[loss]
    hessian = N * D + N * D * (D + 1) + 2 * D
    factor = D ** 3 / 3 + 2 * D ** 2
    direction = 2 * N * D + 2 * D
    trial = 2 * D + 2 * N + value_f * N + 4 * D
    gradient = deriv_f * N + 2 * N * D + 2 * D
    flops = hessian + factor + direction + trials * trial + gradient
    transcendentals = trials * value_t * N + deriv_t * N
    return float(flops), float(transcendentals)


def work_per_entity(N: int, D: int, loss: str, hessian: str, iterations: float, itemsize: int,
                    trials: float = 1.0, full_prior: bool = False) -> Work:
    """Work of solving one entity in ``iterations`` Newton steps (plus the start and the final precision).

    Start: margins ``X theta0 + o`` (``2 N D + N``), objective and gradient (as in a step).
    End: posterior precision: ``full`` a symmetric Hessian ``N D (D + 1) + N D``; ``diagonal``
    ``3 N D`` (sum of ``c x^2``); ``identity``/``none``: nothing.
    Bytes: inputs ``X`` (``N D``), ``y, w, offset`` (``3 N``), prior mean (``D``), prior precision
    (``D`` or ``D^2``), feature ids (``D`` int64); outputs ``theta`` (``D``), precision (``D^2``, ``D`` or 0)
    and four per-entity scalars.
    """
    step_f, step_t = step_flops(N, D, loss, trials)
    value_f, deriv_f = _ELEMENTWISE[loss]
    value_t, deriv_t = _TRANSCENDENTALS[loss]
    start_f = 2 * N * D + N + value_f * N + deriv_f * N + 2 * N * D + 6 * D
    start_t = (value_t + deriv_t) * N
    end_f = {"full": N * D * (D + 1) + N * D, "diagonal": 3 * N * D}.get(hessian, 0)
    flops = start_f + iterations * step_f + end_f
    transcendentals = start_t + iterations * step_t
    precision_out = {"full": D * D, "diagonal": D, "identity": D}.get(hessian, 0)
    inputs = (N * D + 3 * N + D + (D * D if full_prior else D)) * itemsize + 8 * D
    outputs = (D + precision_out) * itemsize + 4 * 8
    nbytes = inputs + outputs
    streamed = nbytes + 2 * iterations * N * D * itemsize
    return Work(float(flops), float(transcendentals), float(nbytes), float(streamed))


def floor_seconds(work: Work, floor: dict, dtype: str) -> dict:
    """Floor time of one entity: ``max(compute, memory)`` with the measured rates."""
    compute = work.flops / (floor["gemm_gflops"][dtype] * 1e9) + work.transcendentals / floor["exp_per_s"][dtype]
    memory = work.bytes / (floor["read_gbs"] * 1e9)
    streamed = work.bytes_streamed / (floor["read_gbs"] * 1e9)
    return {"compute_s": compute, "memory_s": memory, "floor_s": max(compute, memory),
            "floor_streamed_s": max(compute, streamed), "bound": "compute" if compute >= memory else "memory"}


if __name__ == "__main__":
    jax.config.update("jax_enable_x64", True)
    import json
    print(json.dumps(measure(), indent=2))
