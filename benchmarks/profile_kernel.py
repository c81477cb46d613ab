"""Where the time of lljax's device kernel goes, per Newton step, against the floor of each piece.

For one case (default: the headline, 20,000 entities x 64 rows x 16 features, float64, logistic,
full Hessian) this script times, as separate jitted functions on the kernel's shapes:

A. the pieces of one Newton step written as lljax writes them (per-entity functions vmapped over
   ``(E, N, D)``): margins, curvature + Hessian ``X^T diag(c) X``, Cholesky, the two triangular solves,
   ``X p``, one line-search objective evaluation, the gradient; at the full entity count (data in
   memory) and at a cache-resident chunk (``--chunk`` entities, data in L2/L3), each against its
   own floor ``max(flops / dgemm rate + transcendentals / exp rate, bytes / read bandwidth)``
   (bytes: the piece's inputs and outputs, once);
B. alternatives for the expensive pieces: a Cholesky and triangular solves unrolled over ``D``
   with the entity axis last (``(D, D, E)``: every operation is a vector op over entities), and the
   Hessian in other layouts (3-operand einsum, entity-last ``(N, D, E)`` with an unrolled sum over
   rows of the lower-triangle pair products);
C. ``solve_block`` itself on the same entities cut into blocks of different sizes (cache blocking);
D. a compiled reference kernel (``newton_lanes.c`` via ``ref_kernel.py``, if gcc is available): the same
   algorithm with 4 entities in the SIMD lanes and each group's whole solve fused in cache, i.e. the
   design an optimized kernel would follow; its entities/s and fraction of the floor, side by side
   with ``solve_block`` and with lljax's native kernel (``lljax/solve/kernels``, the design realized as an
   XLA FFI custom call), when built.

``solve_block`` is the pure-JAX path throughout (``SolverConfig(native=False)``): on CPU the default
would be the native kernel.

Run: ``python benchmarks/profile_kernel.py`` (``--entities``, ``--rows``, ``--features``, ``--chunk``).
Prints tables and writes ``benchmarks/results/profile_kernel.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.scipy.linalg import cho_solve  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_suite  # noqa: E402
import floor as floor_mod  # noqa: E402
import ref_kernel  # noqa: E402

import lljax  # noqa: E402
from lljax.solve import kernels as native  # noqa: E402


def timeit(fn, *args, repeats=5, budget=5.0):
    """Median seconds of ``fn(*args)`` (jitted, warm, ``block_until_ready``)."""
    jax.block_until_ready(fn(*args))
    times = []
    while len(times) < repeats and (not times or sum(times) < budget):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def sig(z):
    return jax.nn.sigmoid(z)


# ---- Pieces as lljax writes them (one entity, vmapped) ------------------------------------------

def _margins(X, theta, o):
    return X @ theta + o


def _hessian(X, m, y, w, A):
    c = jnp.where(w > 0, w * sig(m) * sig(-m), 0.0)
    return X.T @ (X * c[:, None]) + A


def _cholesky(H):
    eps = jnp.finfo(H.dtype).eps
    mu = jnp.sqrt(eps) * jnp.max(jnp.diag(H)) + eps
    return jnp.linalg.cholesky(H + mu * jnp.eye(H.shape[0], dtype=H.dtype))


def _solve(L, g):
    return -cho_solve((L, True), g)


def _trial(theta, p, m, Xp, y, w, A):
    t = 0.5
    th, mm = theta + t * p, m + t * Xp
    return jnp.sum(jnp.where(w > 0, w * jnp.logaddexp(0.0, -y * mm), 0.0)) + 0.5 * th @ (A @ th)


def _gradient(X, theta, m, y, w, A):
    r = jnp.where(w > 0, w * (-y * sig(-y * m)), 0.0)
    return X.T @ r + A @ theta


PIECES = {
    "margins X theta": (jax.jit(jax.vmap(_margins)), ("X", "theta", "offset")),
    "hessian X^T diag(c) X": (jax.jit(jax.vmap(_hessian)), ("X", "m", "y", "w", "A")),
    "cholesky (jnp.linalg)": (jax.jit(jax.vmap(_cholesky)), ("H",)),
    "cho_solve (2 triangular)": (jax.jit(jax.vmap(_solve)), ("L", "g")),
    "direction X p": (jax.jit(jax.vmap(lambda X, p: X @ p)), ("X", "p")),
    "line-search trial": (jax.jit(jax.vmap(_trial)), ("theta", "p", "m", "Xp", "y", "w", "A")),
    "gradient X^T r": (jax.jit(jax.vmap(_gradient)), ("X", "theta", "m", "y", "w", "A")),
}


def piece_work(name, N, D, isz):
    """``(flops, transcendentals, bytes)`` per entity of a piece run on its own (bytes: inputs + outputs)."""
    ND, DD = N * D, D * D
    return {
        "margins X theta": (2 * ND, 0, (ND + D + 2 * N) * isz),
        "hessian X^T diag(c) X": (ND * (D + 1) + ND + 6 * N + DD, N, (ND + 3 * N + 2 * DD) * isz),
        "cholesky (jnp.linalg)": (D ** 3 / 3 + 2 * D, 0, 2 * DD * isz),
        "cho_solve (2 triangular)": (2 * DD, 0, (DD + 2 * D) * isz),
        "direction X p": (2 * ND, 0, (ND + D + N) * isz),
        "line-search trial": (4 * D + 2 * N + 6 * N + 2 * DD, 2 * N, (4 * D + 4 * N + DD) * isz),
        "gradient X^T r": (2 * ND + 6 * N + 2 * DD, N, (ND + 3 * N + 2 * D + DD) * isz),
    }[name]


def make_inputs(E, N, D, seed=0):
    data = bench_suite.make_data(E, N, D, "logistic", "float64", seed)
    arr = bench_suite.to_block_arrays(data, "logistic", full_prior=True)
    rng = np.random.default_rng(seed + 7)
    X = jnp.asarray(arr["X"])
    theta = jnp.asarray(rng.normal(0, 0.1, (E, D)))
    inp = dict(X=X, y=jnp.asarray(arr["y"]), w=jnp.asarray(arr["w"]), offset=jnp.asarray(arr["offset"]),
               A=jnp.asarray(arr["prior_precision"]), theta=theta)
    inp["m"] = PIECES["margins X theta"][0](X, theta, inp["offset"])
    inp["H"] = PIECES["hessian X^T diag(c) X"][0](X, inp["m"], inp["y"], inp["w"], inp["A"])
    inp["L"] = PIECES["cholesky (jnp.linalg)"][0](inp["H"])
    inp["g"] = PIECES["gradient X^T r"][0](X, theta, inp["m"], inp["y"], inp["w"], inp["A"])
    inp["p"] = PIECES["cho_solve (2 triangular)"][0](inp["L"], inp["g"])
    inp["Xp"] = PIECES["direction X p"][0](X, inp["p"])
    return arr, inp


def _floors(flops, transc, nbytes, floor):
    """``(compute floor s, memory floor s)`` of a piece per entity (float64 rates)."""
    fl = floor_mod.floor_seconds(floor_mod.Work(flops, transc, nbytes, nbytes), floor, "float64")
    return fl["compute_s"], fl["memory_s"]


def piece_table(inp, E, N, D, floor, repeats):
    rows = []
    for name, (fn, keys) in PIECES.items():
        t = timeit(fn, *[inp[k] for k in keys], repeats=repeats)
        f, tr, b = piece_work(name, N, D, 8)
        compute, memory = _floors(f, tr, b, floor)
        rows.append(dict(piece=name, ms=1e3 * t, ns_per_entity=1e9 * t / E, gflops=E * f / t / 1e9,
                         gbs=E * b / t / 1e9, compute_floor_ms=1e3 * E * compute, memory_floor_ms=1e3 * E * memory,
                         fraction_of_compute_floor=E * compute / t, fraction_of_floor=E * max(compute, memory) / t))
    return rows


def print_pieces(title, rows, step_ms=None):
    print(title)
    print(f"  {'piece':<26}{'ms':>8}{'ns/ent':>8}{'share':>7}{'GFLOP/s':>9}{'GB/s':>7}{'compute fl':>11}"
          f"{'memory fl':>10}{'%compute':>9}{'%floor':>8}")
    total = sum(r["ms"] for r in rows)
    for r in rows:
        print(f"  {r['piece']:<26}{r['ms']:>8.2f}{r['ns_per_entity']:>8.0f}{100 * r['ms'] / total:>6.0f}%"
              f"{r['gflops']:>9.2f}{r['gbs']:>7.2f}{r['compute_floor_ms']:>10.3f}m{r['memory_floor_ms']:>9.3f}m"
              f"{100 * r['fraction_of_compute_floor']:>8.1f}%{100 * r['fraction_of_floor']:>7.1f}%")
    print(f"  {'sum of pieces':<26}{total:>8.2f}{sum(r['ns_per_entity'] for r in rows):>8.0f}"
          f"        compute floor sum {sum(r['compute_floor_ms'] for r in rows):.3f} ms, memory floor sum "
          f"{sum(r['memory_floor_ms'] for r in rows):.3f} ms"
          + (f"\n  measured solve_block time per lockstep Newton step: {step_ms:.2f} ms" if step_ms else ""))


# ---- Alternatives (entity axis last) -------------------------------------------------------------

def chol_entity_last(H):
    """Cholesky of ``H + mu I`` for ``H (D, D, E)`` (entity axis last), right-looking and unrolled over ``D``:
    every operation is a vector operation over the entities (no per-matrix LAPACK call)."""
    D = H.shape[0]
    eps = jnp.finfo(H.dtype).eps
    mu = jnp.sqrt(eps) * jnp.max(jnp.stack([H[i, i] for i in range(D)]), axis=0) + eps
    A = H + jnp.eye(D, dtype=H.dtype)[:, :, None] * mu
    cols = []
    for j in range(D):
        col = A[j:, j] / jnp.sqrt(A[j, j])  # (D - j, E)
        cols.append(jnp.concatenate([jnp.zeros((j,) + col.shape[1:], col.dtype), col]))
        A = A.at[j:, j:].add(-col[:, None, :] * col[None, :, :])
    return jnp.stack(cols, axis=1)


def solve_entity_last(L, g):
    """``-(L L^T)^{-1} g`` by unrolled forward and back substitution; ``L (D, D, E)``, ``g (D, E)``."""
    D = L.shape[0]
    inv = [1.0 / L[i, i] for i in range(D)]
    z = [None] * D
    for i in range(D):
        s = g[i]
        for k in range(i):
            s = s - L[i, k] * z[k]
        z[i] = s * inv[i]
    p = [None] * D
    for i in reversed(range(D)):
        s = z[i]
        for k in range(i + 1, D):
            s = s - L[k, i] * p[k]
        p[i] = s * inv[i]
    return -jnp.stack(p)


def chol_solve_entity_last(H, g):
    return solve_entity_last(chol_entity_last(H), g)


def hessian_einsum3(X, m, w):
    c = w * sig(m) * sig(-m)
    return jnp.einsum("eni,en,enj->eij", X, c, X)


def hessian_entity_last(Xt, m, w):
    """``Xt (N, D, E)``: lower-triangle pairs ``(P, E)`` as an unrolled sum over rows (one fusion)."""
    N, D, _ = Xt.shape
    c = w * sig(m) * sig(-m)  # (N, E)
    rows_i, cols_j = np.tril_indices(D)
    acc = None
    for n in range(N):
        term = Xt[n, rows_i] * (Xt[n, cols_j] * c[n])
        acc = term if acc is None else acc + term
    return acc


def hessian_entity_last_dot(Xt, m, w):
    """``Xt (N, D, E)`` through ``einsum('nie,nje->ije')``: a dot_general with the batch axis last."""
    c = w * sig(m) * sig(-m)
    return jnp.einsum("nie,nje->ije", Xt * c[:, None, :], Xt)


def alternatives(inp, E, N, D, floor, repeats, chunk):
    """Time the alternatives at ``E`` and at ``chunk`` entities (cache-resident); per-entity ns."""
    out = []

    def run(name, fn, args, n_ent, flops, transc, nbytes):
        t = timeit(jax.jit(fn), *args, repeats=repeats)
        compute, memory = _floors(flops, transc, nbytes, floor)
        out.append(dict(name=name, entities=n_ent, ms=1e3 * t, ns_per_entity=1e9 * t / n_ent,
                        gflops=n_ent * flops / t / 1e9, compute_floor_ns_per_entity=1e9 * compute,
                        memory_floor_ns_per_entity=1e9 * memory, fraction_of_compute_floor=n_ent * compute / t))

    for n_ent in (E, chunk):
        sl = slice(0, n_ent)
        H, L, g = inp["H"][sl], inp["L"][sl], inp["g"][sl]
        X, m, w = inp["X"][sl], inp["m"][sl], inp["w"][sl]
        Ht, Lt, gt = jnp.transpose(H, (1, 2, 0)), jnp.transpose(L, (1, 2, 0)), g.T
        Xt, mt, wt = jnp.transpose(X, (1, 2, 0)), m.T, w.T
        DD, ND = D * D, N * D
        chol_f, solve_f = D ** 3 / 3, 2 * DD
        run("cholesky jnp.linalg (E,D,D)", jax.vmap(_cholesky), (H,), n_ent, chol_f, 0, 2 * DD * 8)
        run("cholesky unrolled (D,D,E)", chol_entity_last, (Ht,), n_ent, chol_f, 0, 2 * DD * 8)
        run("cho_solve (E,D,D)", jax.vmap(_solve), (L, g), n_ent, solve_f, 0, (DD + 2 * D) * 8)
        run("solve unrolled (D,D,E)", solve_entity_last, (Lt, gt), n_ent, solve_f, 0, (DD + 2 * D) * 8)
        run("chol+solve (E,D,D)", jax.vmap(lambda H, g: _solve(_cholesky(H), g)), (H, g), n_ent, chol_f + solve_f,
            0, (DD + 2 * D) * 8)
        run("chol+solve unrolled (D,D,E)", chol_solve_entity_last, (Ht, gt), n_ent, chol_f + solve_f, 0,
            (DD + 2 * D) * 8)
        hf, hb = ND * (D + 1) + ND + 6 * N, (ND + 2 * N + DD) * 8
        run("hessian vmap X^T(cX) (E,N,D)", jax.vmap(lambda X, m, w: X.T @ (X * (w * sig(m) * sig(-m))[:, None])),
            (X, m, w), n_ent, hf, N, hb)
        run("hessian einsum3 (E,N,D)", hessian_einsum3, (X, m, w), n_ent, hf, N, hb)
        run("hessian dot batch-last (N,D,E)", hessian_entity_last_dot, (Xt, mt, wt), n_ent, hf, N, hb)
        if n_ent <= chunk:  # the unrolled pair sum re-reads X per pair: only sensible on a cache-resident chunk
            run("hessian unrolled pairs (N,D,E)", hessian_entity_last, (Xt, mt, wt), n_ent, hf, N, hb)
    return out


def block_sweep(arr, E, config, sizes, repeats):
    """``solve_block`` on the ``E`` entities cut into blocks of ``size`` lanes (async dispatch, one sync)."""
    out = []
    l2, delta = jnp.asarray(bench_suite.L2), jnp.asarray(bench_suite.DELTA)
    for size in sizes:
        size = min(size, E)
        blocks = [lljax.Block(**{k: jnp.asarray(v[lo: lo + size]) for k, v in arr.items()})
                  for lo in range(0, E - E % size, size)]
        n_ent = size * len(blocks)

        def run(blocks=blocks):
            return [lljax.solve_block(b, l2, delta, config) for b in blocks]

        res = run()
        jax.block_until_ready(res)
        t = timeit(run, repeats=repeats)
        steps = float(np.mean([np.asarray(r.iterations).max() for r in res]))
        out.append(dict(lanes=size, blocks=len(blocks), entities=n_ent, ms=1e3 * t, entities_per_s=n_ent / t,
                        lockstep_steps_mean=steps,
                        iterations_mean=float(np.mean([np.asarray(r.iterations).mean() for r in res]))))
    return out


def reference_kernel(arr, config, floor, iterations, kernel_s, E, N, D, repeats):
    """Section D: the compiled SIMD-lanes reference vs ``solve_block`` (timed alternately, same data)."""
    print()
    if not ref_kernel.available():
        print("D. reference kernel: not built (no gcc with OpenMP); skipped")
        return None
    E4 = E - E % ref_kernel.LANES
    prep = ref_kernel.prepare(arr["X"][:E4], arr["y"][:E4], arr["w"][:E4], arr["offset"][:E4],
                              arr["prior_mean"][:E4], arr["prior_precision"][:E4], l2=bench_suite.L2,
                              delta=bench_suite.DELTA)
    block = lljax.Block(**{k: jnp.asarray(v[:E4]) for k, v in arr.items()})
    l2, delta = jnp.asarray(bench_suite.L2), jnp.asarray(bench_suite.DELTA)
    res = jax.block_until_ready(lljax.solve_block(block, l2, delta, config))
    theta, H, iters = ref_kernel.solve(prep, config.tol, config.max_iter)
    native_config = config._replace(native=True) if native.available() else None
    if native_config is not None:
        native_res = jax.block_until_ready(lljax.solve_block(block, l2, delta, native_config))
    ref_t, lljax_t, native_t = [], [], []
    for _ in range(max(3, repeats)):  # alternate, so all see the same machine load
        t = time.perf_counter()
        ref_kernel.solve(prep, config.tol, config.max_iter)
        ref_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        jax.block_until_ready(lljax.solve_block(block, l2, delta, config))
        lljax_t.append(time.perf_counter() - t)
        if native_config is not None:
            t = time.perf_counter()
            jax.block_until_ready(lljax.solve_block(block, l2, delta, native_config))
            native_t.append(time.perf_counter() - t)
    work = floor_mod.work_per_entity(N, D, "logistic", "full", float(iters.mean()), 8, 1.0, full_prior=True)
    fl = floor_mod.floor_seconds(work, floor, "float64")
    out = dict(entities=E4, ref_s=float(np.median(ref_t)), lljax_s=float(np.median(lljax_t)),
               layout_s=prep["layout_s"], iterations_mean=float(iters.mean()), floor_s_per_entity=fl["floor_s"],
               max_rel_diff_theta=bench_suite.rel_diff(theta, np.asarray(res.theta)),
               max_abs_diff_precision=float(np.max(np.abs(H - np.asarray(res.precision)))))
    out["ref_entities_per_s"] = E4 / out["ref_s"]
    out["lljax_entities_per_s"] = E4 / out["lljax_s"]
    out["ref_fraction_of_floor"] = out["ref_entities_per_s"] * fl["floor_s"]
    out["lljax_fraction_of_floor"] = out["lljax_entities_per_s"] * fl["floor_s"]
    rows = [("reference (C, SIMD lanes)", "ref"), ("lljax solve_block (JAX)", "lljax")]
    if native_t:
        out.update(native_s=float(np.median(native_t)), native_isa=native.isa(),
                   native_max_rel_diff_theta=bench_suite.rel_diff(np.asarray(native_res.theta), np.asarray(res.theta)))
        out["native_entities_per_s"] = E4 / out["native_s"]
        out["native_fraction_of_floor"] = out["native_entities_per_s"] * fl["floor_s"]
        rows.append((f"lljax native ({native.isa()})", "native"))
    print(f"D. compiled reference kernel (newton_lanes.c: 4 entities per AVX2 vector, fused solve per group, "
          f"OpenMP over groups), timed alternately with solve_block on the same {E4} entities")
    print(f"  {'kernel':<34}{'entities/s':>12}{'GFLOP/s':>9}{'floor%':>8}")
    for name, key in rows:
        rate = out[f"{key}_entities_per_s"]
        frac = out[f"{key}_fraction_of_floor"]
        print(f"  {name:<34}{rate:>12,.0f}{rate * work.flops / 1e9:>9.2f}{100 * frac:>7.1f}%")
    print(f"  reference / lljax: {out['lljax_s'] / out['ref_s']:.2f}x; max rel diff theta "
          f"{out['max_rel_diff_theta']:.1e}, max abs diff precision {out['max_abs_diff_precision']:.1e}; "
          "layout transposition (not timed above) "
          f"{1e3 * out['layout_s']:.0f} ms")
    if native_t:
        print(f"  native / JAX: {out['lljax_s'] / out['native_s']:.2f}x, native / reference: "
              f"{out['ref_s'] / out['native_s']:.2f}x; max rel diff theta native vs JAX "
              f"{out['native_max_rel_diff_theta']:.1e}")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entities", type=int, default=20_000)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--features", type=int, default=16)
    p.add_argument("--chunk", type=int, default=512, help="cache-resident entity count for the in-cache timings")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--block-sizes", type=int, nargs="+", default=[256, 1024, 4096, 20_000])
    p.add_argument("--floor-repeats", type=int, default=3)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "profile_kernel.json"))
    args = p.parse_args(argv)
    E, N, D = args.entities, args.rows, args.features
    print(f"jax {jax.__version__} on {jax.default_backend()} | {os.cpu_count()} CPUs | float64 logistic full | "
          f"E={E} N={N} D={D} | load avg {os.getloadavg()[0]:.2f}")
    floor = floor_mod.measure(repeats=args.floor_repeats)
    bench_suite.print_floor(floor, "before the profile")

    arr, inp = make_inputs(E, N, D)
    config = lljax.RandomEffectModel("logistic", l2=bench_suite.L2, delta=bench_suite.DELTA,
                                     hessian="full").solver_config(np.dtype("float64"))._replace(native=False)
    block = lljax.Block(**{k: jnp.asarray(v) for k, v in arr.items()})
    l2, delta = jnp.asarray(bench_suite.L2), jnp.asarray(bench_suite.DELTA)
    kernel_s = timeit(lambda block=block: lljax.solve_block(block, l2, delta, config), repeats=3)
    res = lljax.solve_block(block, l2, delta, config)
    it = np.asarray(res.iterations)
    step_ms = 1e3 * kernel_s / it.max()
    print(f"solve_block on one block of {E}: {1e3 * kernel_s:.1f} ms ({E / kernel_s:,.0f} entities/s); iterations "
          f"mean {it.mean():.2f}, max {it.max()} (lanes run in lockstep to the max) -> {step_ms:.2f} ms per step")
    del block, res

    pieces_full = piece_table(inp, E, N, D, floor, args.repeats)
    print()
    print_pieces(f"A1. pieces of one Newton step, E={E} (arrays in memory):", pieces_full, step_ms)
    small = {k: v[: args.chunk] for k, v in inp.items()}
    pieces_chunk = piece_table(small, args.chunk, N, D, floor, args.repeats)
    print_pieces(f"A2. the same pieces on a cache-resident chunk of E={args.chunk} entities:", pieces_chunk)

    alts = alternatives(inp, E, N, D, floor, args.repeats, args.chunk)
    print()
    print("B. alternatives (per entity; compute floor = flops / dgemm rate + transcendentals / exp rate)")
    print(f"  {'variant':<34}{'entities':>9}{'ms':>9}{'ns/entity':>11}{'GFLOP/s':>9}{'compute fl ns':>14}"
          f"{'%compute':>9}")
    for r in alts:
        print(f"  {r['name']:<34}{r['entities']:>9}{r['ms']:>9.2f}{r['ns_per_entity']:>11.1f}{r['gflops']:>9.2f}"
              f"{r['compute_floor_ns_per_entity']:>14.1f}{100 * r['fraction_of_compute_floor']:>8.1f}%")

    sweep = block_sweep(arr, E, config, args.block_sizes, max(2, args.repeats // 2))
    print()
    print("C. solve_block with the entities cut into blocks of L lanes (async dispatch)")
    print(f"  {'lanes':>7}{'blocks':>7}{'ms':>9}{'entities/s':>12}{'lockstep steps':>16}{'mean iters':>12}")
    for r in sweep:
        print(f"  {r['lanes']:>7}{r['blocks']:>7}{r['ms']:>9.1f}{r['entities_per_s']:>12,.0f}"
              f"{r['lockstep_steps_mean']:>16.2f}{r['iterations_mean']:>12.2f}")

    reference = reference_kernel(arr, config, floor, float(it.mean()), kernel_s, E, N, D, args.repeats)
    print(f"load avg after: {os.getloadavg()[0]:.2f}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(entities=E, rows=N, features=D, chunk=args.chunk, floor=floor,
                                   kernel_s=kernel_s, iterations_mean=float(it.mean()), iterations_max=int(it.max()),
                                   step_ms=step_ms, pieces=pieces_full, pieces_chunk=pieces_chunk,
                                   alternatives=alts, block_sweep=sweep, reference_kernel=reference,
                                   loadavg_after=list(os.getloadavg())),
                              indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
