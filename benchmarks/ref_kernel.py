"""A compiled reference kernel (``newton_lanes.c``) to measure what a fused CPU kernel reaches here.

Not part of lljax and not a peer of the suite: ``profile_kernel.py`` uses it to answer "how close to
the floor can the logistic Newton solve get on this machine", with the design an optimized lljax
kernel would follow (entities in the SIMD lanes, the whole solve of a group of ``W = 4`` entities
fused and cache-resident, 4x4 register-blocked Hessian). Needs ``gcc`` (or ``$CC``) with OpenMP;
:func:`available` says whether it could be built. float64, logistic loss only.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

SOURCE = Path(__file__).resolve().parent / "newton_lanes.c"
LANES = 4
MAX_ROWS, MAX_FEATURES = 128, 32
_lib = None


def _build() -> ctypes.CDLL | None:
    cc = os.environ.get("CC") or shutil.which("gcc")
    if cc is None or not SOURCE.exists():
        return None
    src = SOURCE.read_bytes()
    tag = hashlib.sha256(src).hexdigest()[:12]
    out = Path(tempfile.gettempdir()) / f"lljax_newton_lanes_{tag}.so"
    if not out.exists():
        cmd = [cc, "-O3", "-march=native", "-ffast-math", "-fopenmp", f"-DW={LANES}", "-shared", "-fPIC",
               str(SOURCE), "-o", str(out), "-lm", "-lmvec"]
        if subprocess.run(cmd, capture_output=True).returncode != 0:
            cmd.remove("-lmvec")
            if subprocess.run(cmd, capture_output=True).returncode != 0:
                return None
    return ctypes.CDLL(str(out))


def available() -> bool:
    global _lib
    if _lib is None:
        _lib = _build() or False
    return bool(_lib)


def _grouped(v: np.ndarray) -> np.ndarray:
    """``(E, ...)`` -> ``(E / W, ..., W)`` (entity axis last within a group)."""
    G = v.shape[0] // LANES
    return np.ascontiguousarray(np.moveaxis(v.reshape((G, LANES) + v.shape[1:]), 1, -1), dtype=np.float64)


def _ungrouped(v: np.ndarray) -> np.ndarray:
    return np.moveaxis(v, -1, 1).reshape((-1,) + v.shape[1:-1])


def prepare(X, y, w, offset, prior_mean, prior_precision, *, l2: float, delta: float) -> dict:
    """Group-layout arrays for :func:`solve` (cold-start or any prior; all features valid, E % 4 == 0).

    ``y`` encoded +-1. Returns the grouped arrays and ``layout_s``, the time of the transposition
    (a real kernel would get this layout from the packing step)."""
    E, N, D = X.shape
    if E % LANES or N > MAX_ROWS or D > MAX_FEATURES:
        raise ValueError(f"need entities % {LANES} == 0, rows <= {MAX_ROWS}, features <= {MAX_FEATURES}")
    P0 = prior_precision if prior_precision.ndim == 3 else prior_precision[:, :, None] * np.eye(D)
    A = delta * P0 + (1.0 - delta) * l2 * np.eye(D)
    b = delta * np.einsum("eij,ej->ei", P0, prior_mean)
    t = time.perf_counter()
    arrays = dict(X=_grouped(X), y=_grouped(y), w=_grouped(w), offset=_grouped(offset), A=_grouped(A),
                  b=_grouped(b), theta0=_grouped(prior_mean))
    arrays["layout_s"] = time.perf_counter() - t
    arrays["shape"] = (E, N, D)
    return arrays


def solve(prepared: dict, tol: float, max_iter: int = 50):
    """Run the kernel; returns ``(theta (E, D), precision (E, D, D), iterations (E,))``."""
    if not available():
        raise RuntimeError("reference kernel could not be built (no gcc with OpenMP?)")
    E, N, D = prepared["shape"]
    G = E // LANES
    theta = prepared["theta0"].copy()
    H = np.empty((G, D, D, LANES))
    iters = np.zeros((G, LANES), np.int32)
    ptr = ctypes.POINTER(ctypes.c_double)
    args = [prepared[k].ctypes.data_as(ptr) for k in ("X", "y", "w", "offset", "A", "b")]
    _lib.solve(G, N, D, *args, theta.ctypes.data_as(ptr), H.ctypes.data_as(ptr),
               iters.ctypes.data_as(ctypes.POINTER(ctypes.c_int)), ctypes.c_double(tol), max_iter)
    return _ungrouped(theta), _ungrouped(H), iters.reshape(-1)
