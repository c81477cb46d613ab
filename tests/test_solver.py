"""The device solver on hand-built blocks: derivatives, optimum, statuses, padding invariance."""

import jax
import numpy as np
import pytest

from lljax import Block, SolverConfig, Status, solve_block
from lljax.solve.objective import entity_hessian, entity_objective
from tests import oracles

LOSSES = ["linear", "logistic", "poisson"]
HESSIANS = ["none", "identity", "diagonal", "full"]
DTYPES = [np.float64, np.float32]


def random_entity(rng, loss, n=24, d=5, full_prior=True, unit_weights=False):
    X = rng.normal(size=(n, d)) * (rng.random((n, d)) < 0.6)
    X[:, 0] = 1.0
    o = 0.3 * rng.normal(size=n)
    if loss == "logistic":
        y = np.where(rng.random(n) < 0.4, 1.0, -1.0)
    elif loss == "poisson":
        y = rng.poisson(1.5, size=n).astype(float)
    else:
        y = rng.normal(size=n)
    w = np.ones(n) if unit_weights else rng.uniform(0.2, 3.0, size=n)
    theta0 = 0.3 * rng.normal(size=d)
    if full_prior:
        B = rng.normal(size=(d, d))
        P0 = B @ B.T / d + np.eye(d)
    else:
        P0 = rng.uniform(0.5, 3.0, size=d)
    return X, y, w, o, theta0, P0


def one_entity_block(X, y, w, o, theta0, P0, dtype=np.float64):
    d = X.shape[1]
    cast = lambda a: np.asarray(a, dtype)[None]  # noqa: E731
    return Block(cast(X), cast(y), cast(w), cast(o), np.arange(d)[None], cast(theta0), cast(P0))


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("full_prior", [True, False])
@pytest.mark.parametrize("delta", [0.0, 0.7])
def test_gradient_and_hessian_match_autodiff_and_numpy(loss, full_prior, delta):
    rng = np.random.default_rng(1)
    X, y, w, o, theta0, P0 = random_entity(rng, loss, full_prior=full_prior)
    theta = 0.2 * rng.normal(size=X.shape[1])
    args = (X, y, w, o, np.arange(X.shape[1]), theta0, P0, 0.8, delta)
    value, grad = entity_objective(theta, *args, loss=loss)
    hess = entity_hessian(theta, *args, loss=loss)

    f = lambda t: entity_objective(t, *args, loss=loss)[0]  # noqa: E731
    np.testing.assert_allclose(grad, jax.grad(f)(theta), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(hess, jax.hessian(f)(theta), rtol=1e-10, atol=1e-12)
    eps = 1e-6
    fd = [(f(theta + eps * e) - f(theta - eps * e)) / (2 * eps) for e in np.eye(len(theta))]
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-7)

    v_ref, g_ref, h_ref = oracles.objective(theta, X, y, w, o, theta0, P0, 0.8, delta, loss)
    np.testing.assert_allclose(value, v_ref, rtol=1e-12)
    np.testing.assert_allclose(grad, g_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(hess, h_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("hessian", HESSIANS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_solution_matches_oracle_and_precision_type(loss, hessian, dtype):
    rng = np.random.default_rng(2)
    X, y, w, o, theta0, P0 = random_entity(rng, loss)
    l2, delta = 1.5, 0.6
    result = solve_block(one_entity_block(X, y, w, o, theta0, P0, dtype), dtype(l2), dtype(delta),
                         SolverConfig(loss=loss, hessian=hessian, tol=1e-8 if dtype == np.float64 else 1e-3))
    expected = oracles.fit(X, y, w, o, theta0, P0, l2, delta, loss)
    rtol = 1e-7 if dtype == np.float64 else 2e-3
    assert result.theta.dtype == dtype
    assert int(result.status[0]) == Status.CONVERGED
    np.testing.assert_allclose(result.theta[0], expected, rtol=rtol, atol=rtol)
    H = oracles.objective(expected, X, y, w, o, theta0, P0, l2, delta, loss)[2]
    if hessian == "none":
        assert result.precision is None
    elif hessian == "full":
        np.testing.assert_allclose(result.precision[0], H, rtol=rtol * 10, atol=rtol)
    elif hessian == "diagonal":
        np.testing.assert_allclose(result.precision[0], np.diag(H), rtol=rtol * 10, atol=rtol)
    else:
        np.testing.assert_array_equal(result.precision[0], np.ones(X.shape[1]))





def test_zero_penalty_feature_without_data_stays_finite():
    """l2 = 0 and a column with no data: H is singular there; the ridge in the Newton step copes."""
    rng = np.random.default_rng(6)
    X, y, w, o, theta0, P0 = random_entity(rng, "linear", n=30, d=4, full_prior=False)
    X[:, 3] = 0.0
    result = solve_block(one_entity_block(X, y, w, o, np.zeros(4), np.zeros(4)), 0.0, 0.0,
                         SolverConfig(loss="linear", hessian="diagonal", tol=1e-9))
    assert int(result.status[0]) == Status.CONVERGED
    expected = np.linalg.lstsq((X * np.sqrt(w)[:, None])[:, :3], np.sqrt(w) * (y - o), rcond=None)[0]
    np.testing.assert_allclose(result.theta[0, :3], expected, rtol=1e-8)
    assert result.theta[0, 3] == 0.0
