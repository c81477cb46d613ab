"""The L-BFGS solver for wide entities (method ``"lbfgs"``, ``lljax.solve.lbfgs``) against Newton's ``solve_block`` and the SciPy oracle.

Both solvers minimize the same objective; solved to a tight gradient tolerance they must agree to
1e-9 relative in float64. Statuses, padding and failed lanes follow the Newton solver's contract.
"""

import numpy as np
import pytest

from lljax import Block, SolverConfig, Status, solve_block
from tests import oracles
from tests.solvers import force_newton, solve_lbfgs, spy_model_solves

LOSSES = ["linear", "logistic", "poisson"]
HESSIANS = ["none", "identity", "diagonal"]
DTYPES = [np.float64, np.float32]
L2 = 1.3

# float64: both solved to max |gradient| <= 1e-12, so theta agrees to ~1e-12 / (smallest curvature ~ 0.3).
# float32: a gradient of O(10) summed over 24 rows has a rounding floor of ~1e-5, so both stop at 1e-4;
# theta then agrees to ~1e-4 / 0.3 (about 1e-3 of max |theta| ~ 0.5 at worst; ~5e-5 seen).
TOL = {np.float64: 1e-12, np.float32: 1e-4}
RTOL = {np.float64: 1e-9, np.float32: 1e-3}


def sparse_entity(rng, loss, n, d, nnz, unit_weights=False):
    """One entity with an intercept column and ``nnz`` other nonzeros per row (most features absent)."""
    X = np.zeros((n, d))
    for i in range(n):
        cols = rng.choice(np.arange(1, d), size=min(nnz, d - 1), replace=False)
        X[i, cols] = rng.normal(size=len(cols))
    X[:, 0] = 1.0
    o = 0.3 * rng.normal(size=n)
    if loss == "logistic":
        y = np.where(rng.random(n) < 0.4, 1.0, -1.0)
    elif loss == "poisson":
        X *= 0.5
        y = rng.poisson(1.5, size=n).astype(float)
    else:
        y = rng.normal(size=n)
    w = np.ones(n) if unit_weights else rng.uniform(0.2, 3.0, size=n)
    return X, y, w, o


def wide_block(rng, loss, dtype, cold):
    """``E=4, N=24, D=16`` block: two full lanes, one with padded rows and features, one padding lane.

    ``cold``: prior mean 0 and precision ``L2`` (a new entity); otherwise a random diagonal prior
    (a sequential update).
    """
    E, N, D = 4, 24, 16
    X, y, w, o = np.zeros((E, N, D)), np.zeros((E, N)), np.zeros((E, N)), np.zeros((E, N))
    fids, mean, P = np.full((E, D), -1), np.zeros((E, D)), np.ones((E, D))
    for lane, (n, d) in enumerate([(N, D), (N, D), (17, 11)]):
        X[lane, :n, :d], y[lane, :n], w[lane, :n], o[lane, :n] = sparse_entity(rng, loss, n, d, nnz=4)
        fids[lane, :d] = np.arange(d) * 3
        if cold:
            mean[lane, :d], P[lane, :d] = 0.0, L2
        else:
            mean[lane, :d], P[lane, :d] = 0.3 * rng.normal(size=d), rng.uniform(0.5, 3.0, size=d)
    # Padding rows of lane 2 carry junk features and offsets; weight 0 must make them irrelevant.
    X[2, 17:, :11] = rng.normal(size=(N - 17, 11))
    o[2, 17:] = 40.0
    cast = lambda a: np.asarray(a, dtype)  # noqa: E731
    return Block(cast(X), cast(y), cast(w), cast(o), fids, cast(mean), cast(P))


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("hessian", HESSIANS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_lbfgs_equals_newton(loss, hessian, dtype):
    config = SolverConfig(loss=loss, hessian=hessian, tol=TOL[dtype])
    for cold, delta in [(True, 0.0), (False, 0.7)]:
        rng = np.random.default_rng(7 if cold else 8)
        block = wide_block(rng, loss, dtype, cold)
        l2, delta = dtype(L2), dtype(delta)
        newton = solve_block(block, l2, delta, config)
        lbfgs = solve_lbfgs(block, l2, delta, config)

        assert lbfgs.theta.dtype == dtype
        np.testing.assert_array_equal(lbfgs.status, Status.CONVERGED)
        np.testing.assert_array_equal(newton.status, Status.CONVERGED)
        assert np.all(np.asarray(lbfgs.grad_norm) <= TOL[dtype])
        assert rel_err(lbfgs.theta, newton.theta) <= RTOL[dtype], (cold, rel_err(lbfgs.theta, newton.theta))
        np.testing.assert_allclose(lbfgs.loss, newton.loss, rtol=RTOL[dtype])
        # Padded features are exactly 0; the padding lane does no work.
        np.testing.assert_array_equal(np.asarray(lbfgs.theta)[np.asarray(block.feature_ids) < 0], 0.0)
        assert int(lbfgs.iterations[3]) == 0
        if hessian == "none":
            assert lbfgs.precision is None and newton.precision is None
        else:
            assert lbfgs.precision.shape == newton.precision.shape == block.prior_precision.shape
            assert rel_err(lbfgs.precision, newton.precision) <= RTOL[dtype]
        if hessian == "identity":
            np.testing.assert_array_equal(lbfgs.precision, 1.0)


def test_other_line_search_and_preconditioners_reach_the_same_optimum():
    rng = np.random.default_rng(9)
    block = wide_block(rng, "logistic", np.float64, cold=False)
    config = SolverConfig(loss="logistic", hessian="diagonal", tol=1e-12)
    newton = solve_block(block, L2, 0.7, config)
    for kwargs in [dict(precondition="jacobi"), dict(precondition="none"), dict(memory_size=3)]:
        result = solve_lbfgs(block, L2, 0.7, config, **kwargs)
        np.testing.assert_array_equal(result.status, Status.CONVERGED)
        assert rel_err(result.theta, newton.theta) <= 1e-9, kwargs
        assert rel_err(result.precision, newton.precision) <= 1e-9, kwargs




def test_iteration_cap_and_stall_are_reported():
    rng = np.random.default_rng(12)
    X, y, w, o = sparse_entity(rng, "linear", 24, 6, nnz=3)
    block = Block((30 * X)[None], y[None], w[None], o[None], np.arange(6)[None], np.full((1, 6), 0.1),
                  np.ones((1, 6)))
    config = SolverConfig(loss="linear", hessian="none", tol=1e-12)
    capped = solve_lbfgs(block, 1.0, 0.5, config, max_iter=2)
    assert int(capped.status[0]) == Status.MAX_ITERATIONS and int(capped.iterations[0]) == 2
    default_cap = solve_lbfgs(block, 1.0, 0.5, config._replace(max_iter=1))  # cap 10 * max_iter
    assert int(default_cap.status[0]) in (Status.MAX_ITERATIONS, Status.CONVERGED)
    assert int(default_cap.iterations[0]) <= 10
    # No backtracking allowed and a first step (gradient direction, unit length, no preconditioning)
    # that overshoots a steep quadratic: the line search cannot decrease, the lane stops STALLED at its start.
    stalled = solve_lbfgs(block, 1.0, 0.5, config._replace(max_backtracks=0), precondition="none")
    assert int(stalled.status[0]) == Status.STALLED and int(stalled.iterations[0]) == 1
    np.testing.assert_array_equal(stalled.theta[0], 0.1)


def test_wide_sparse_entities_match_scipy_oracle():
    """D = 256 local features, 6 nonzeros per row besides the intercept; sequential Bayesian prior."""
    rng = np.random.default_rng(13)
    n, d, l2, delta = 48, 256, 1.0, 0.8
    ents = [sparse_entity(rng, "logistic", n, d, nnz=6, unit_weights=e == 0) for e in range(3)]
    theta0 = 0.2 * rng.normal(size=(3, d))
    P0 = rng.uniform(0.5, 3.0, size=(3, d))
    block = Block(*(np.stack(a) for a in zip(*ents)), np.tile(np.arange(d), (3, 1)), theta0, P0)
    result = solve_lbfgs(block, l2, delta, SolverConfig(loss="logistic", hessian="diagonal", tol=1e-12))
    np.testing.assert_array_equal(result.status, Status.CONVERGED)
    for e, (X, y, w, o) in enumerate(ents):
        # SciPy's trust-exact sometimes stops early (max |gradient| ~1e-7 here, against ~1e-13 for
        # lljax at tol 1e-12), so the oracle is the less accurate side: compare at 1e-7.
        expected = oracles.fit(X, y, w, o, theta0[e], P0[e], l2, delta, "logistic")
        assert rel_err(result.theta[e], expected) <= 1e-7
        H = oracles.objective(expected, X, y, w, o, theta0[e], P0[e], l2, delta, "logistic")[2]
        np.testing.assert_allclose(result.precision[e], np.diag(H), rtol=1e-7)


def test_rejects_full_precision_and_unknown_options():
    block = wide_block(np.random.default_rng(14), "linear", np.float64, cold=True)
    with pytest.raises(ValueError, match="hessian"):
        solve_lbfgs(block, L2, 0.0, SolverConfig(loss="linear", hessian="full"))
    full = block._replace(prior_precision=np.broadcast_to(np.eye(16), (4, 16, 16)))
    with pytest.raises(ValueError, match="prior_precision"):
        solve_lbfgs(full, L2, 0.0, SolverConfig(loss="linear", hessian="diagonal"))
    for option in [dict(precondition="newton"), dict(memory_size=0)]:
        with pytest.raises(ValueError, match=next(iter(option))):
            solve_lbfgs(block, L2, 0.0, SolverConfig(loss="linear", hessian="diagonal"), **option)
    with pytest.raises(TypeError, match="linesearch"):  # one line search for every method: no option
        solve_lbfgs(block, L2, 0.0, SolverConfig(loss="linear", hessian="diagonal"), linesearch="zoom")


def test_model_update_solves_tall_wide_entities_by_lbfgs_with_newtons_result(monkeypatch):
    """RandomEffectModel picks L-BFGS for blocks of >= WIDE_FEATURES padded features with more padded rows
    than features (diagonal models; lljax.solve.registry.choose_method): two sequential updates give Newton's
    result to 1e-9 (both solved tightly)."""
    from lljax import Dataset, RandomEffectModel
    from lljax.solve.registry import WIDE_FEATURES

    rng = np.random.default_rng(21)
    U, n_per, F = 4, 150, 90
    batches = []
    for _ in range(2):
        entity = np.repeat(np.arange(U), n_per)
        X = np.zeros((U * n_per, F))
        cols = rng.integers(1, F, size=(U * n_per, 6))
        np.put_along_axis(X, cols, rng.normal(size=cols.shape), axis=1)
        label = (rng.random(U * n_per) < 0.4).astype(float)
        batches.append(Dataset.from_arrays(entity, label, X=X, offset=0.2 * rng.normal(size=U * n_per)))
    calls = spy_model_solves(monkeypatch)
    tall = RandomEffectModel("logistic", l2=1.0, delta=0.6, hessian="diagonal", tol=1e-11)
    for b in batches:
        assert tall.update(b).all_converged
    assert calls and all(method == "lbfgs" and block.X.shape[2] >= WIDE_FEATURES and block.X.shape[1] > block.X.shape[2]
                         for method, block in calls)
    force_newton(monkeypatch)
    newton = RandomEffectModel("logistic", l2=1.0, delta=0.6, hessian="diagonal", tol=1e-11)
    for b in batches:
        newton.update(b)
    for key in range(U):
        a, b = tall.coefficients(key), newton.coefficients(key)
        np.testing.assert_array_equal(a.feature_ids, b.feature_ids)
        np.testing.assert_allclose(a.mean, b.mean, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(a.precision, b.precision, rtol=1e-9)
