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


@pytest.mark.parametrize("loss", LOSSES)
def test_padding_rows_features_and_entities_change_nothing(loss):
    rng = np.random.default_rng(3)
    entities = [random_entity(rng, loss, n=20, d=4) for _ in range(3)]
    config = SolverConfig(loss=loss, hessian="full", tol=1e-10)

    def stack(ents, n_pad=0, d_pad=0, e_pad=0):
        E, N, D = len(ents) + e_pad, 20 + n_pad, 4 + d_pad
        X, y, w, o = np.zeros((E, N, D)), np.zeros((E, N)), np.zeros((E, N)), np.zeros((E, N))
        fids, mean, P = np.full((E, D), -1), np.zeros((E, D)), np.tile(np.eye(D), (E, 1, 1))
        for i, (Xe, ye, we, oe, t0, P0) in enumerate(ents):
            X[i, :20, :4], y[i, :20], w[i, :20], o[i, :20] = Xe, ye, we, oe
            # padding rows get junk features/offsets but weight 0: they must not matter
            X[i, 20:, :4] = rng.normal(size=(n_pad, 4))
            o[i, 20:] = 50.0
            fids[i, :4], mean[i, :4], P[i, :4, :4] = np.arange(4), t0, P0
        return Block(X, y, w, o, fids, mean, P)

    base = solve_block(stack(entities), 1.0, 0.5, config)
    padded = solve_block(stack(entities, n_pad=12, d_pad=4, e_pad=5), 1.0, 0.5, config)
    # Equal up to the convergence tolerance: padded reductions sum in another order, so the two
    # runs may stop at different (equally converged) iterates.
    np.testing.assert_allclose(padded.theta[:3, :4], base.theta, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(padded.precision[:3, :4, :4], base.precision, rtol=1e-8, atol=1e-9)
    np.testing.assert_array_equal(padded.theta[:3, 4:], 0.0)
    np.testing.assert_array_equal(padded.status, Status.CONVERGED)
    np.testing.assert_array_equal(padded.iterations[3:], 0)  # padding entities do no work


def test_non_finite_lane_keeps_prior_and_others_are_unaffected():
    rng = np.random.default_rng(4)
    good = random_entity(rng, "poisson", n=16, d=3)
    bad = list(random_entity(rng, "poisson", n=16, d=3))
    bad[3] = np.full(16, 800.0)  # exp(800) overflows float64
    blocks = [one_entity_block(*e) for e in (good, bad)]
    block = Block(*(np.concatenate([a, b]) for a, b in zip(*blocks)))
    result = solve_block(block, 1.0, 0.5, SolverConfig(loss="poisson", hessian="full"))
    assert list(result.status) == [Status.CONVERGED, Status.NON_FINITE]
    np.testing.assert_array_equal(result.theta[1], bad[4])
    np.testing.assert_array_equal(result.precision[1], bad[5])
    alone = solve_block(blocks[0], 1.0, 0.5, SolverConfig(loss="poisson", hessian="full"))
    np.testing.assert_allclose(result.theta[0], alone.theta[0], rtol=1e-12)


def test_iteration_cap_is_reported():
    rng = np.random.default_rng(5)
    X, y, w, o, theta0, P0 = random_entity(rng, "logistic", n=64, d=6)
    result = solve_block(one_entity_block(5 * X, y, w, o, theta0, P0), 0.01, 0.0,
                         SolverConfig(loss="logistic", hessian="none", max_iter=1))
    assert int(result.status[0]) == Status.MAX_ITERATIONS
    assert int(result.iterations[0]) == 1


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
