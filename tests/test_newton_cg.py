"""Newton-CG as a direction of the shared iteration (``lljax.solve.newton_cg``), against the SciPy oracle
and the Newton direction, on dense and sparse rows, one entity and a vmapped block.

Solved to max |gradient| <= 1e-11 in float64, every direction reaches the same minimizer: theta agrees
with the oracle and with Newton to ~1e-11 / (smallest curvature ~ 0.5), so 1e-8 is ample.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lljax.solve import newton, newton_cg
from lljax.solve.base import Limits, Status
from lljax.solve.iteration import finish, iterate, start
from lljax.solve.losses import get_loss
from lljax.solve.objective import Entity, SparseRows, dense_entity, make_penalty
from tests import oracles

LOSSES = ["linear", "logistic", "poisson"]
L2, DELTA = 0.7, 0.6
TOL = 1e-11


def entity_data(rng, loss, n=40, d=8, full_prior=False):
    X = rng.normal(size=(n, d)) * (rng.random((n, d)) < 0.5)
    X[:, 0] = 1.0
    X[:, 3] *= 5.0  # a badly scaled column: the Jacobi preconditioner's case
    o = 0.3 * rng.normal(size=n)
    if loss == "logistic":
        y = np.where(rng.random(n) < 0.4, 1.0, -1.0)
    elif loss == "poisson":
        X *= 0.3
        y = rng.poisson(1.5, size=n).astype(float)
    else:
        y = rng.normal(size=n)
    w = rng.uniform(0.2, 3.0, size=n)
    theta0 = 0.2 * rng.normal(size=d)
    if full_prior:
        B = rng.normal(size=(d, d))
        P0 = B @ B.T / d + np.eye(d)
    else:
        P0 = rng.uniform(0.5, 3.0, size=d)
    return X, y, w, o, theta0, P0


def solve(entity, direction, theta0, max_iter=100, memory=()):
    limits = Limits(jnp.asarray(TOL), jnp.asarray(max_iter, jnp.int32))
    final = iterate(entity, direction, start(entity, jnp.asarray(theta0), limits, memory=memory), limits, 30)
    return finish(jnp.asarray(theta0), final, entity.hessian_diagonal(final.margin), entity.penalty.A,
                  hessian="diagonal")


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("full_prior", [False, True])
def test_newton_cg_equals_the_scipy_oracle_and_newton(loss, full_prior):
    rng = np.random.default_rng(3)
    X, y, w, o, theta0, P0 = entity_data(rng, loss, full_prior=full_prior)
    d = X.shape[1]
    entity = dense_entity(X, y, w, o, np.arange(d), theta0, P0, L2, DELTA, loss)
    cg = solve(entity, newton_cg.make_direction(entity), theta0)
    nt = solve(entity, newton.make_direction(entity), theta0)
    assert int(cg.status) == Status.CONVERGED and int(nt.status) == Status.CONVERGED
    expected = oracles.fit(X, y, w, o, theta0, P0, L2, DELTA, loss)
    np.testing.assert_allclose(cg.theta, expected, atol=1e-8)
    np.testing.assert_allclose(cg.theta, nt.theta, atol=1e-9)
    np.testing.assert_allclose(cg.precision, nt.precision, rtol=1e-9)
    _, _, H = oracles.objective(np.asarray(cg.theta), X, y, w, o, theta0, P0, L2, DELTA, loss)
    np.testing.assert_allclose(cg.precision, np.diag(H), rtol=1e-9)  # diag(A) of a full prior included


@pytest.mark.parametrize("loss", LOSSES)
def test_a_converged_cg_solve_is_the_newton_step(loss):
    """With CG run to convergence (forcing term tiny near the optimum, D iterations suffice), one
    direction solves H p = -g: it is Newton's step (up to Newton's tiny ridge)."""
    rng = np.random.default_rng(4)
    X, y, w, o, theta0, P0 = entity_data(rng, loss)
    d = X.shape[1]
    entity = dense_entity(X, y, w, o, np.arange(d), theta0, P0, L2, DELTA, loss)
    it = start(entity, jnp.asarray(theta0), Limits(jnp.asarray(TOL), jnp.asarray(10, jnp.int32)))
    H = np.asarray(entity.hessian(it.margin))
    p_exact = -np.linalg.solve(H, np.asarray(it.grad))
    c = entity.curvature(it.margin)
    hvp = lambda v: entity.rows.rmatvec(c * entity.rows.matvec(v)) + entity.penalty.matvec(v)  # noqa: E731
    p = -newton_cg.pcg(hvp, it.grad, 1.0 / jnp.diag(jnp.asarray(H)), 4 * d, 1e-13)
    np.testing.assert_allclose(p, p_exact, rtol=1e-9, atol=1e-12)
    # Newton's default ridge (sqrt(eps) max diag H) perturbs its step at ~1e-6; a given smaller ridge does not
    np.testing.assert_allclose(newton.make_direction(entity)(it).p, p_exact, rtol=1e-5)
    np.testing.assert_allclose(newton.make_direction(entity, ridge=0.0)(it).p, p, rtol=1e-9, atol=1e-12)
    step = newton_cg.make_direction(entity)(it)
    np.testing.assert_allclose(step.Xp, X @ np.asarray(step.p), atol=1e-12)
    assert float(it.grad @ step.p) < 0  # a descent direction, even when truncated


def test_newton_cg_on_sparse_rows_needs_no_gram():
    """``SparseRows`` has no ``weighted_gram``: Newton-CG solves it from mat-vecs alone, as dense Newton does."""
    rng = np.random.default_rng(5)
    X, y, w, o, theta0, P0 = entity_data(rng, "logistic")
    n, d = X.shape
    K = int((X != 0).sum(1).max())
    cols, vals = np.zeros((n, K), np.int64), np.zeros((n, K))
    for i in range(n):
        nz = np.flatnonzero(X[i])
        cols[i, :len(nz)], vals[i, :len(nz)] = nz, X[i, nz]
    mask = np.ones(d, bool)
    penalty = make_penalty(jnp.asarray(theta0), jnp.asarray(P0), mask, L2, DELTA)
    sparse = Entity(SparseRows(jnp.asarray(cols), jnp.asarray(vals), d), y, w, o, penalty, get_loss("logistic"))
    dense = dense_entity(X, y, w, o, np.arange(d), theta0, P0, L2, DELTA, "logistic")
    got = solve(sparse, newton_cg.make_direction(sparse), theta0)
    ref = solve(dense, newton.make_direction(dense), theta0)
    assert int(got.status) == Status.CONVERGED
    np.testing.assert_allclose(got.theta, ref.theta, atol=1e-9)
    np.testing.assert_allclose(got.precision, ref.precision, rtol=1e-9)


def test_newton_cg_vmapped_over_a_block_equals_each_lane():
    rng = np.random.default_rng(6)
    lanes = [entity_data(rng, "poisson") for _ in range(3)]
    d = lanes[0][0].shape[1]

    def one(X, y, w, o, theta0, P0):
        entity = dense_entity(X, y, w, o, jnp.arange(d), theta0, P0, L2, DELTA, "poisson")
        return solve(entity, newton_cg.make_direction(entity), theta0)

    stacked = [jnp.asarray(np.stack(a)) for a in zip(*lanes, strict=True)]
    block = jax.jit(jax.vmap(one))(*stacked)
    for k, lane in enumerate(lanes):
        assert int(block.status[k]) == Status.CONVERGED
        np.testing.assert_allclose(block.theta[k], oracles.fit(*lane[:5], lane[5], L2, DELTA, "poisson"), atol=1e-8)


def test_overflowed_curvature_fails_the_lane():
    rng = np.random.default_rng(7)
    X, y, w, o, theta0, P0 = entity_data(rng, "logistic")
    X[5, 2] = 1e200  # the Hessian overflows; the gradient does not
    d = X.shape[1]
    entity = dense_entity(X, y, w, o, np.arange(d), theta0, P0, L2, DELTA, "logistic")
    result = solve(entity, newton_cg.make_direction(entity), theta0)
    assert int(result.status) == Status.NON_FINITE
    np.testing.assert_array_equal(result.theta, theta0)  # a failed lane keeps its start


def test_newton_direction_with_a_small_ridge_falls_back_to_the_default_one():
    """The fixed effect's Newton takes ``ridge=eps``; where that Cholesky fails (H singular to rounding:
    rank-3 data on 7 columns, no penalty) the default ``sqrt(eps)`` ridge solves it, and a zero row steps 0."""
    eps = float(np.finfo(np.float64).eps)
    rng = np.random.default_rng(28)  # a seed whose eps-ridge Cholesky meets a negative pivot
    Z = rng.normal(size=(30, 3))
    X = np.c_[Z, Z @ rng.normal(size=(3, 4)), np.zeros(30)]
    H = jnp.asarray(X.T @ X)
    g = jnp.asarray(X.T @ rng.normal(size=30))
    small = jnp.linalg.cholesky(H + (eps * jnp.max(jnp.diag(H)) + eps) * jnp.eye(8))
    assert not np.all(np.isfinite(small))  # the case the fallback is for
    p = newton.newton_direction(H, g, ridge=eps)
    np.testing.assert_array_equal(p, newton.newton_direction(H, g))
    assert np.all(np.isfinite(p)) and float(p[-1]) == 0.0
    np.testing.assert_allclose(H @ p, -g, atol=1e-6 * float(jnp.abs(g).max()))
    well_posed = H + jnp.eye(8)
    np.testing.assert_allclose(newton.newton_direction(well_posed, g, ridge=eps),
                               -np.linalg.solve(well_posed, g), rtol=1e-10)
