"""The peers lljax is measured against: a straightforward batched NumPy Newton and Lambda Learner's loop.

- :func:`numpy_newton`: the same objective, ridge, Armijo line search and stopping rule as
  ``lljax.solve.newton`` (see its module docstring), written with plain batched NumPy: ``np.einsum`` for
  the Hessian, ``np.linalg.cholesky`` and ``np.linalg.solve`` on ``(E, D, D)`` stacks. Finished
  lanes are dropped from the working set (per-lane convergence masking), so each iteration only
  computes the lanes still running.
- :func:`lambda_learner_loop`: Lambda Learner 0.1.0's trainer ``train()`` called once per entity in
  a Python loop (scipy L-BFGS per entity), as a service would run it; the conversion of each
  entity to ``IndexedDataset`` / ``IndexedModel`` is timed separately. BLAS is limited to one
  thread during the loop (see :func:`_one_blas_thread`).
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np
from scipy import sparse

# The line search of every lljax method (the same named constants as lljax and its C++ kernels).
from lljax.solve.base import ARMIJO_C1, SLACK_ULPS, STEP_SHRINK

CONVERGED, MAX_ITERATIONS, NON_FINITE, STALLED = 0, 1, 2, 3
_RUNNING = -1


# --------------------------------------------------------------------------------------------
# Batched NumPy Newton
# --------------------------------------------------------------------------------------------

def _sigmoid(z):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-z))


def _loss_value(loss, m, y):
    if loss == "logistic":
        return np.logaddexp(0.0, -y * m)
    if loss == "poisson":
        with np.errstate(over="ignore"):
            return np.exp(m) - y * m
    return 0.5 * np.square(m - y)


def _loss_d1_d2(loss, m, y):
    if loss == "logistic":
        s = _sigmoid(-y * m)  # sigma(-y m); sigma(m) sigma(-m) = s (1 - s) for y = +-1
        return -y * s, s * (1.0 - s)
    if loss == "poisson":
        with np.errstate(over="ignore"):
            e = np.exp(m)
        return e - y, e
    return m - y, np.ones_like(m)


def _weighted(w, v):
    with np.errstate(invalid="ignore", over="ignore"):
        return np.where(w > 0, w * v, 0.0)


class NumpyResult(NamedTuple):
    theta: np.ndarray       # (E, D)
    precision: np.ndarray | None  # (E, D, D) full, (E, D) diagonal
    loss: np.ndarray        # (E,)
    grad_norm: np.ndarray   # (E,)
    iterations: np.ndarray  # (E,)
    status: np.ndarray      # (E,)
    trials: int             # objective evaluations in line searches, summed over lanes


def _penalty(prior_mean, prior_precision, mask, l2, delta):
    """``A (E, D)`` or ``(E, D, D)``, ``b (E, D)``, ``c (E,)``: penalty ``1/2 t^T A t - b^T t + c``."""
    theta0 = np.where(mask, prior_mean, 0.0)
    ridge = (1.0 - delta) * l2
    if prior_precision.ndim == 3:
        pair = mask[:, :, None] & mask[:, None, :]
        P0 = np.where(pair, prior_precision, 0.0)
        eye = np.eye(mask.shape[1], dtype=P0.dtype)
        A = np.where(pair, delta * P0 + ridge * eye, eye)
        P0t = np.einsum("eij,ej->ei", P0, theta0)
    else:
        P0 = np.where(mask, prior_precision, 0.0)
        A = np.where(mask, delta * P0 + ridge, 1.0)
        P0t = P0 * theta0
    return A, delta * P0t, 0.5 * delta * np.einsum("ed,ed->e", theta0, P0t)


def _matvec(A, v):
    return np.einsum("eij,ej->ei", A, v) if A.ndim == 3 else A * v


def numpy_newton(X, y, w, offset, feature_ids, prior_mean, prior_precision, *, l2: float, delta: float,
                 loss: str, hessian: str, tol: float, max_iter: int = 50, max_backtracks: int = 30) -> NumpyResult:
    """Solve every entity of a padded block with batched damped Newton in NumPy.

    Shapes: ``X (E, N, D)``; ``y, w, offset (E, N)`` (``y`` encoded for the loss: logistic +-1);
    ``feature_ids, prior_mean (E, D)``; ``prior_precision (E, D)`` or ``(E, D, D)``.
    Same algorithm as lljax: Newton direction from Cholesky of ``H + mu I``
    (``mu = sqrt(eps) max diag H + eps``), step halving until Armijo (``c1 = 1e-4``, with a slack of
    ``16 eps (1 + |f|)``), stop when ``max |g| <= tol``, at ``max_iter``, on a failed line search
    (STALLED), or on non-finite numbers (NON_FINITE, prior kept).
    """
    dtype = X.dtype
    eps = np.finfo(dtype).eps
    E, N, D = X.shape
    mask = feature_ids >= 0
    A, b, c = _penalty(prior_mean, prior_precision, mask, l2, delta)
    theta0 = np.where(mask, prior_mean, 0.0).astype(dtype)

    def objective(Xs, ys, ws, As, bs, cs, theta, m):
        pen = 0.5 * np.einsum("ed,ed->e", theta, _matvec(As, theta)) - np.einsum("ed,ed->e", bs, theta) + cs
        return _weighted(ws, _loss_value(loss, m, ys)).sum(axis=1) + pen

    def gradient(Xs, ys, ws, As, bs, theta, m):
        d1, _ = _loss_d1_d2(loss, m, ys)
        return np.einsum("end,en->ed", Xs, _weighted(ws, d1)) + _matvec(As, theta) - bs

    def hess(Xs, ys, ws, As, m):
        _, d2 = _loss_d1_d2(loss, m, ys)
        H = np.einsum("eni,en,enj->eij", Xs, _weighted(ws, d2), Xs, optimize=True)
        if As.ndim == 3:
            return H + As
        idx = np.arange(H.shape[1])
        H[:, idx, idx] += As
        return H

    def status_of(value, grad, iteration, stalled):
        finite = np.isfinite(value) & np.all(np.isfinite(grad), axis=1)
        st = np.where(iteration >= max_iter, MAX_ITERATIONS, _RUNNING)
        st = np.where(stalled, STALLED, st)
        st = np.where(np.max(np.abs(grad), axis=1) <= tol, CONVERGED, st)
        return np.where(finite, st, NON_FINITE)

    m_all = np.einsum("end,ed->en", X, theta0) + offset
    f_all = objective(X, y, w, A, b, c, theta0, m_all)
    g_all = gradient(X, y, w, A, b, theta0, m_all)
    theta_all = theta0.copy()
    it_all = np.zeros(E, np.int32)
    st_all = status_of(f_all, g_all, it_all, np.zeros(E, bool))

    # Working set: the lanes still running, compressed.
    lanes = np.flatnonzero(st_all == _RUNNING)
    Xs, ys, ws, As, bs, cs = X[lanes], y[lanes], w[lanes], A[lanes], b[lanes], c[lanes]
    theta, m, f, g = theta_all[lanes], m_all[lanes], f_all[lanes], g_all[lanes]
    iteration = it_all[lanes]
    trials = 0
    eye = np.eye(D, dtype=dtype)
    while lanes.size:
        H = hess(Xs, ys, ws, As, m)
        mu = np.sqrt(eps) * np.max(np.diagonal(H, axis1=1, axis2=2), axis=1) + eps
        L = np.linalg.cholesky(H + mu[:, None, None] * eye)
        z = np.linalg.solve(L, -g[:, :, None])
        p = np.linalg.solve(np.swapaxes(L, 1, 2), z)[:, :, 0]
        Xp = np.einsum("end,ed->en", Xs, p)
        slope = np.einsum("ed,ed->e", g, p)
        slack = SLACK_ULPS * eps * (1.0 + np.abs(f))

        # Line search: halve t on the lanes that fail Armijo, recomputing only those.
        t = np.ones(lanes.size, dtype)
        value = objective(Xs, ys, ws, As, bs, cs, theta + p, m + Xp)
        trials += lanes.size
        k = 0
        while True:
            ok = value <= f + ARMIJO_C1 * t * slope + slack
            redo = np.flatnonzero(~ok & np.isfinite(slope))
            if k >= max_backtracks or redo.size == 0:
                break
            k += 1
            t[redo] *= STEP_SHRINK
            tr = t[redo][:, None]
            value[redo] = objective(Xs[redo], ys[redo], ws[redo], As[redo], bs[redo], cs[redo],
                                    theta[redo] + tr * p[redo], m[redo] + tr * Xp[redo])
            trials += redo.size
        accepted = (ok & (slope < 0)) | ~np.isfinite(slope)
        acc = accepted[:, None]
        theta = np.where(acc, theta + t[:, None] * p, theta)
        m = np.where(acc, m + t[:, None] * Xp, m)
        f = np.where(accepted, value, f)
        g = np.where(acc, gradient(Xs, ys, ws, As, bs, theta, m), g)
        iteration = iteration + 1
        st = status_of(f, g, iteration, ~accepted)
        done = st != _RUNNING
        if done.any():
            idx = lanes[done]
            theta_all[idx], m_all[idx], f_all[idx], g_all[idx] = theta[done], m[done], f[done], g[done]
            it_all[idx], st_all[idx] = iteration[done], st[done]
            keep = ~done
            lanes = lanes[keep]
            Xs, ys, ws, As, bs, cs = Xs[keep], ys[keep], ws[keep], As[keep], bs[keep], cs[keep]
            theta, m, f, g, iteration = theta[keep], m[keep], f[keep], g[keep], iteration[keep]

    failed = st_all == NON_FINITE
    precision = None
    if hessian in ("full", "diagonal"):
        if hessian == "full":
            precision = hess(X, y, w, A, m_all)
            if failed.any():
                prior = prior_precision if prior_precision.ndim == 3 else _diag_embed(prior_precision)
                precision[failed] = prior[failed]
        else:
            _, d2 = _loss_d1_d2(loss, m_all, y)
            precision = np.einsum("end,en->ed", X * X, _weighted(w, d2)) + (
                np.diagonal(A, axis1=1, axis2=2) if A.ndim == 3 else A)
            if failed.any():
                prior = np.diagonal(prior_precision, axis1=1, axis2=2) if prior_precision.ndim == 3 else prior_precision
                precision[failed] = prior[failed]
    theta_all = np.where(failed[:, None], theta0, theta_all)
    return NumpyResult(theta_all, precision, f_all, np.max(np.abs(g_all), axis=1), it_all, st_all, trials)


def _diag_embed(d):
    out = np.zeros(d.shape + d.shape[-1:], d.dtype)
    idx = np.arange(d.shape[-1])
    out[:, idx, idx] = d
    return out


# --------------------------------------------------------------------------------------------
# Lambda Learner 0.1.0 loop
# --------------------------------------------------------------------------------------------

def _one_blas_thread():
    """BLAS limited to one thread (threadpoolctl, if installed). L-BFGS-B makes tiny BLAS calls; with
    OpenBLAS's thread pool on a busy machine the hand-offs dominate (we saw ~20x slower), and a
    service running Lambda Learner would run one single-threaded loop per core."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        import contextlib
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


LL_LOSSES = ("logistic", "linear")  # Lambda Learner 0.1.0 has no Poisson trainer


class LLRun(NamedTuple):
    entities: np.ndarray  # (S,) entity indices trained
    theta: np.ndarray     # (S, D) coefficients in the entity's local column order
    convert_s: float
    train_s: float
    warnflags: list       # counts of L-BFGS warnflag 0, 1, 2


def lambda_learner_loop(X, y01, offset, entities, *, loss: str, hessian: str, l2: float, delta: float) -> LLRun:
    """Train ``entities`` one at a time with Lambda Learner 0.1.0, from a cold start.

    ``X (E, N, D)`` is each entity's dense local design (intercept column included), ``y01 (E, N)``
    the raw labels, ``offset (E, N)``; unit weights. logistic: ``TrainerSequentialBayesianLogisticLossWithL2``
    (``delta``); linear: ``TrainerSquareLossWithL2`` (plain L2; on a cold start with prior precision
    ``l2 I`` the sequential Bayesian objective is the same). Hessian type FULL or DIAGONAL (NONE otherwise).
    """
    if loss not in LL_LOSSES:
        raise ValueError(f"Lambda Learner 0.1.0 has no {loss!r} trainer")
    from linkedin.learner.ds.indexed_dataset import IndexedDataset
    from linkedin.learner.ds.indexed_model import IndexedModel
    from linkedin.learner.prediction.hessian_type import HessianType
    from linkedin.learner.prediction.trainer_sequential_bayesian_logistic_loss_with_l2 import (
        TrainerSequentialBayesianLogisticLossWithL2,
    )
    from linkedin.learner.prediction.trainer_square_loss_with_l2 import TrainerSquareLossWithL2

    htype = {"full": HessianType.FULL, "diagonal": HessianType.DIAGONAL}.get(hessian, HessianType.NONE)
    t = time.perf_counter()
    problems = []
    for e in entities:
        Xe = sparse.csc_matrix(np.asarray(X[e], np.float64))
        ye = np.asarray(y01[e], np.float64)
        if loss == "logistic":
            ye = np.where(ye == 1, 1.0, -1.0)
        n, d = Xe.shape
        data = IndexedDataset(Xe, ye, np.ones(n), np.asarray(offset[e], np.float64))
        problems.append((data, IndexedModel(np.zeros(d), sparse.identity(d, format="csc") * l2)))
    convert = time.perf_counter() - t

    results = []
    t = time.perf_counter()
    with _one_blas_thread():
        for data, initial in problems:
            if loss == "logistic":
                trainer = TrainerSequentialBayesianLogisticLossWithL2(training_data=data, initial_model=initial,
                                                                      hessian_type=htype, penalty=l2, delta=delta)
            else:
                trainer = TrainerSquareLossWithL2(training_data=data, initial_model=initial, hessian_type=htype,
                                                  penalty=l2)
            results.append(trainer.train())
    train = time.perf_counter() - t
    theta = np.stack([np.asarray(r[0].theta) for r in results])
    flags = np.bincount([int(r[2]["warnflag"]) for r in results], minlength=3).tolist()
    return LLRun(np.asarray(entities), theta, convert, train, flags)
