"""The wide solver (``lljax.solve.span``: Newton in the span of the rows, sparse rows) against Newton's ``solve_block``.

Both minimize the same objective with the same stopping rule; solved to a tight gradient tolerance they
must agree to 1e-9 relative in float64 on theta, the stored diagonal precision and the loss.
"""

import numpy as np
import pytest

from lljax import Block, Dataset, RandomEffectModel, SolverConfig, Status, solve_block
from lljax.rounds.round import Round
from lljax.solve.blocks import RowsBlock, SparseBlock, dense_from_rows, dense_from_sparse, sparse_from_dense
from lljax.solve.registry import WIDE_FEATURES
from tests.solvers import force_newton, solve_span, spy_model_solves
from tests.test_lbfgs import rel_err, sparse_entity

LOSSES = ["linear", "logistic", "poisson"]
DTYPES = [np.float64, np.float32]
L2 = 1.3
# float64: both solved to max |gradient| <= 1e-12, so theta agrees to ~1e-12 / (smallest curvature ~ 0.3).
# float32: a gradient of O(10) summed over ~24 rows has a rounding floor of ~1e-5, so both stop at 1e-4;
# theta then agrees to ~1e-4 / 0.3 relative to max |theta| ~ 0.5 (3e-4 at worst; the two paths also
# round differently: sparse gathers vs dense products).
TOL = {np.float64: 1e-12, np.float32: 1e-4}
RTOL = {np.float64: 1e-9, np.float32: 1e-3}


def block_of(rng, loss, dtype, cold, N, D):
    """``E=5`` lanes of ``N`` rows and ``D`` features: two full lanes, one with padding rows (junk features
    and offsets, weight 0) and padding features, one with features that have no data (prior only), and a
    padding lane. ``cold``: prior mean 0 and precision ``L2``; else a random diagonal prior."""
    E = 5
    X, y, w, o = np.zeros((E, N, D)), np.zeros((E, N)), np.zeros((E, N)), np.zeros((E, N))
    fids, mean, P = np.full((E, D), -1), np.zeros((E, D)), np.ones((E, D))
    shapes = [(N, D, D), (N, D, D), (N - 5, D - 3, D - 3), (N, D, D // 2)]  # rows, features, features with data
    for lane, (n, d, with_data) in enumerate(shapes):
        Xe, ye, we, oe = sparse_entity(rng, loss, n, with_data, nnz=4)
        X[lane, :n, :with_data], y[lane, :n], w[lane, :n], o[lane, :n] = Xe, ye, we, oe
        fids[lane, :d] = np.arange(d) * 3 + 1
        if cold:
            mean[lane, :d], P[lane, :d] = 0.0, L2
        else:
            mean[lane, :d], P[lane, :d] = 0.3 * rng.normal(size=d), rng.uniform(0.5, 3.0, size=d)
    X[2, N - 5:, : D - 3] = rng.normal(size=(5, D - 3))  # weight 0 makes these rows irrelevant
    o[2, N - 5:] = 40.0
    cast = lambda a: np.asarray(a, dtype)  # noqa: E731
    return Block(cast(X), cast(y), cast(w), cast(o), fids, cast(mean), cast(P))


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(12, 40), (24, 10)], ids=["N<D", "N>D"])
def test_wide_equals_newton(loss, dtype, shape):
    config = SolverConfig(loss=loss, hessian="diagonal", tol=TOL[dtype])
    for cold, delta in [(True, 0.0), (False, 0.7)]:
        rng = np.random.default_rng(17 if cold else 18)
        block = block_of(rng, loss, dtype, cold, *shape)
        l2, delta = dtype(L2), dtype(delta)
        newton = solve_block(block, l2, delta, config)
        result = solve_span(sparse_from_dense(block), l2, delta, config)

        assert result.theta.dtype == dtype and result.precision.dtype == dtype
        np.testing.assert_array_equal(newton.status, Status.CONVERGED)
        np.testing.assert_array_equal(result.status, Status.CONVERGED)
        assert np.all(np.asarray(result.grad_norm) <= TOL[dtype])
        assert rel_err(result.theta, newton.theta) <= RTOL[dtype], (cold, rel_err(result.theta, newton.theta))
        assert rel_err(result.precision, newton.precision) <= RTOL[dtype]
        np.testing.assert_allclose(result.loss, newton.loss, rtol=RTOL[dtype])
        # Padded features are exactly 0; the padding lane does no work.
        np.testing.assert_array_equal(np.asarray(result.theta)[np.asarray(block.feature_ids) < 0], 0.0)
        assert int(result.iterations[4]) == 0


@pytest.mark.parametrize("hessian", ["none", "identity"])
def test_other_precision_forms(hessian):
    block = block_of(np.random.default_rng(3), "logistic", np.float64, False, 12, 40)
    config = SolverConfig(loss="logistic", hessian=hessian, tol=1e-12)
    newton = solve_block(block, L2, 0.5, config)
    result = solve_span(sparse_from_dense(block), L2, 0.5, config)
    assert rel_err(result.theta, newton.theta) <= 1e-9
    if hessian == "none":
        assert result.precision is None
    else:
        np.testing.assert_array_equal(result.precision, 1.0)


def test_map_and_vmap_lanes_agree():
    """The pure-JAX path's two lane modes (on CPU the native wide kernel runs otherwise)."""
    block = sparse_from_dense(block_of(np.random.default_rng(4), "poisson", np.float64, False, 12, 40))
    config = SolverConfig(loss="poisson", hessian="diagonal", tol=1e-12, native=False)
    a = solve_span(block, L2, 0.5, config, lanes="map")
    b = solve_span(block, L2, 0.5, config, lanes="vmap")
    np.testing.assert_array_equal(a.status, b.status)
    np.testing.assert_array_equal(a.iterations, b.iterations)
    assert rel_err(a.theta, b.theta) <= 1e-12
    assert rel_err(a.precision, b.precision) <= 1e-12




def test_zero_penalty_falls_back_to_lbfgs():
    """l2 = 0, delta = 0: no A^-1; solve_sparse_block solves the dense block by L-BFGS (N > D: identified)."""
    block = block_of(np.random.default_rng(6), "linear", np.float64, True, 24, 10)
    config = SolverConfig(loss="linear", hessian="diagonal", tol=1e-10)
    result = solve_span(sparse_from_dense(block), 0.0, 0.0, config)
    newton = solve_block(block, 0.0, 0.0, config)
    assert rel_err(result.theta[:2], newton.theta[:2]) <= 1e-8


def test_rejects_full_precision():
    block = sparse_from_dense(block_of(np.random.default_rng(7), "linear", np.float64, True, 12, 40))
    with pytest.raises(ValueError, match="hessian"):
        solve_span(block, L2, 0.0, SolverConfig(loss="linear", hessian="full"))
    with pytest.raises(ValueError, match="lanes"):
        solve_span(block, L2, 0.0, SolverConfig(loss="linear", hessian="diagonal"), lanes="pmap")


def wide_batches(rng, U, n_per, F, nnz=6, zero_weight_entity=False, loss="logistic"):
    batches = []
    for _ in range(2):
        entity = np.repeat(np.arange(U), n_per)
        X = np.zeros((U * n_per, F))
        cols = rng.integers(1, F, size=(U * n_per, nnz))
        np.put_along_axis(X, cols, (0.5 if loss == "poisson" else 1.0) * rng.normal(size=cols.shape), axis=1)
        if loss == "logistic":
            label = (rng.random(U * n_per) < 0.4).astype(float)
        elif loss == "poisson":
            label = rng.poisson(1.0, U * n_per).astype(float)
        else:
            label = rng.normal(size=U * n_per)
        weight = np.ones(U * n_per)
        if zero_weight_entity:
            weight[entity == 0] = 0.0
        batches.append(Dataset.from_arrays(entity, label, X=X, weight=weight, offset=0.2 * rng.normal(size=U * n_per)))
    return batches


def test_sparse_block_is_the_dense_block():
    dataset = wide_batches(np.random.default_rng(8), 5, 9, 90)[0]
    from lljax.state.store import EntityStore

    store = EntityStore(np.dtype(np.float64), "diagonal")
    work = Round.prepare(dataset, "logistic", store, 1.0)
    plans = work.plan(1 << 20, SolverConfig(hessian="diagonal"))
    assert plans
    for plan in plans:
        dense = work.build(plan._replace(method="newton", layout=None))
        sparse = work.build(plan._replace(method="span", layout=None))
        rows = work.build(plan._replace(method="newton", layout="rows"))
        assert isinstance(dense, Block) and isinstance(sparse, SparseBlock) and isinstance(rows, RowsBlock)
        for a, b, c in zip(dense, dense_from_sparse(sparse), dense_from_rows(rows)):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("loss", LOSSES)
def test_model_update_uses_the_wide_solver_with_newtons_result(monkeypatch, loss):
    """Two sequential updates of wide entities (>= WIDE_FEATURES padded features, rows <= features) by
    the wide solver give Newton's result to 1e-9 (both solved tightly); an entity whose weights are all
    0 is trained (min_rows=0) to its prior-only optimum by both."""
    rng = np.random.default_rng(21)
    batches = wide_batches(rng, 6, 20, 90, zero_weight_entity=True, loss=loss)
    calls = spy_model_solves(monkeypatch)
    hyper = dict(l2=1.0, delta=0.6, hessian="diagonal", tol=1e-11, min_rows=0)
    fast = RandomEffectModel(loss, **hyper)
    for b in batches:
        assert fast.update(b).all_converged
    assert calls and all(method == "span" and block.cols.shape[1] <= WIDE_FEATURES <= block.feature_ids.shape[1]
                         for method, block in calls)
    force_newton(monkeypatch)
    newton = RandomEffectModel(loss, **hyper)
    for b in batches:
        newton.update(b)
    for key in range(6):
        a, b = fast.coefficients(key), newton.coefficients(key)
        np.testing.assert_array_equal(a.feature_ids, b.feature_ids)
        np.testing.assert_allclose(a.mean, b.mean, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(a.precision, b.precision, rtol=1e-9)


def test_model_update_non_finite_entity_is_not_stored(monkeypatch):
    rng = np.random.default_rng(22)
    U, n_per, F = 3, 10, 80
    entity = np.repeat(np.arange(U), n_per)
    X = np.zeros((U * n_per, F))
    cols = rng.integers(1, F, size=(U * n_per, 8))
    np.put_along_axis(X, cols, 1.0, axis=1)
    offset = np.where(entity == 1, 800.0, 0.0)  # exp(800) overflows: entity 1 ends NON_FINITE
    data = Dataset.from_arrays(entity, rng.poisson(1.0, U * n_per).astype(float), X=X, offset=offset)
    calls = spy_model_solves(monkeypatch)
    model = RandomEffectModel("poisson", l2=1.0, hessian="diagonal")
    report = model.update(data)
    assert "span" in [method for method, _ in calls]
    assert list(report.status) == [Status.CONVERGED, Status.NON_FINITE, Status.CONVERGED]
    assert 1 not in model and 0 in model and 2 in model
