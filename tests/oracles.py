"""Independent NumPy/SciPy oracles for one entity's objective (no lljax code inside)."""

import numpy as np
from scipy.optimize import minimize


def row_terms(loss, m, y):
    """Per-row value, first and second derivative in the margin, written out in NumPy."""
    if loss == "linear":
        return 0.5 * (m - y) ** 2, m - y, np.ones_like(m)
    if loss == "logistic":
        s = 1.0 / (1.0 + np.exp(y * m))  # sigma(-y m)
        p = 1.0 / (1.0 + np.exp(-m))
        return np.logaddexp(0.0, -y * m), -y * s, p * (1.0 - p)
    if loss == "poisson":
        e = np.exp(m)
        return e - y * m, e - y, e
    raise ValueError(loss)


def penalty_matrix(P0, l2, delta, d):
    """``l2``: a scalar, or ``(d,)`` per coefficient (0 leaves one out of the L2 term)."""
    P0 = np.diag(P0) if P0.ndim == 1 else P0
    return delta * P0 + (1.0 - delta) * np.diag(np.broadcast_to(np.asarray(l2, float), (d,))), P0


def objective(theta, X, y, w, o, theta0, P0, l2, delta, loss):
    """Value, gradient and Hessian of ``sum w l(X theta + o) + prior/L2 penalty`` (``l2`` as in
    :func:`penalty_matrix`)."""
    m = X @ theta + o
    v, d1, d2 = row_terms(loss, m, y)
    A, P0 = penalty_matrix(P0, l2, delta, len(theta))
    dev = theta - theta0
    value = w @ v + 0.5 * delta * dev @ P0 @ dev + 0.5 * (1 - delta) * l2 * theta @ theta
    grad = X.T @ (w * d1) + delta * P0 @ dev + (1 - delta) * l2 * theta
    hess = X.T @ (X * (w * d2)[:, None]) + A
    return value, grad, hess


def fit(X, y, w, o, theta0, P0, l2, delta, loss):
    """Minimize the objective with SciPy's trust-exact (exact Hessian), tightly."""
    if loss == "linear":  # closed form
        A, P0m = penalty_matrix(P0, l2, delta, X.shape[1])
        H = X.T @ (X * w[:, None]) + A
        return np.linalg.solve(H, X.T @ (w * (y - o)) + delta * P0m @ theta0)
    res = minimize(
        lambda t: objective(t, X, y, w, o, theta0, P0, l2, delta, loss)[:2],
        np.array(theta0, dtype=float),
        jac=True,
        hess=lambda t: objective(t, X, y, w, o, theta0, P0, l2, delta, loss)[2],
        method="trust-exact",
        options={"gtol": 1e-11},
    )
    return res.x
