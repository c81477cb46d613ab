"""The contract every registered solve method keeps, one parametrized suite over (method, backend).

Each method of :data:`lljax.solve.registry.METHODS` (and its native kernel, where it has one):

- agrees with the independent SciPy oracle (``tests/oracles.py``) on theta and the posterior precision;
- reports its statuses as data: CONVERGED, MAX_ITERATIONS at the cap, NON_FINITE for an overflowing lane;
- keeps a failed lane's prior mean and prior precision, and leaves the other lanes as if solved alone;
- is not changed by padding rows (weight 0, junk values), padding features (id -1) or padding lanes;
- is chosen on the host: switching the backend after a shape has compiled takes effect, or raises.
"""

import jax
import numpy as np
import pytest

from lljax import SolverConfig, Status
from lljax.solve import kernels, registry
from lljax.solve.base import ARMIJO_C1, RUNNING, SLACK_ULPS, STEP_SHRINK
from lljax.solve.blocks import Block, sparse_from_dense
from lljax.solve.registry import METHODS, solve
from tests import oracles

LOSSES = ["linear", "logistic", "poisson"]
# Every method on the pure-JAX path, and on its native kernel where it has one (CI builds the kernels:
# a build without them fails these cases rather than skipping them).
CASES = [pytest.param(name, native, id=f"{name}-{'native' if native else 'jax'}")
         for name, method in METHODS.items() for native in ((False, True) if method.solve_native else (False,))]


def entity(rng, loss, n, d):
    """One entity's rows: an intercept column, sparse N(0, 1) features, offsets, weights, labels."""
    X = rng.normal(size=(n, d)) * (rng.random((n, d)) < 0.5)
    X[:, 0] = 1.0
    o = 0.3 * rng.normal(size=n)
    if loss == "logistic":
        y = np.where(rng.random(n) < 0.4, 1.0, -1.0)
    elif loss == "poisson":
        y = rng.poisson(1.2, size=n).astype(float)
    else:
        y = rng.normal(size=n)
    return X, y, rng.uniform(0.3, 2.0, size=n), o


def dense_block(entities, priors, N, D, E, rng=None):
    """Entities ``(X, y, w, o)`` with diagonal priors ``(mean, precision)`` padded to ``E x N x D``; with
    ``rng``, padding rows get junk features and offsets (their weight 0 must make them irrelevant)."""
    X, y, w, o = np.zeros((E, N, D)), np.zeros((E, N)), np.zeros((E, N)), np.zeros((E, N))
    fids, mean, P = np.full((E, D), -1), np.zeros((E, D)), np.ones((E, D))
    for lane, ((Xe, ye, we, oe), (m, p)) in enumerate(zip(entities, priors)):
        n, d = Xe.shape
        X[lane, :n, :d], y[lane, :n], w[lane, :n], o[lane, :n] = Xe, ye, we, oe
        fids[lane, :d], mean[lane, :d], P[lane, :d] = np.arange(d) * 2 + 1, m, p
        if rng is not None and n < N:
            X[lane, n:, :d] = rng.normal(size=(N - n, d))
            o[lane, n:] = 40.0
    return Block(X, y, w, o, fids, mean, P)


def in_layout(block, method):
    return sparse_from_dense(block) if METHODS[method].layout == "sparse" else block


def problem(rng, loss, E=3, n=14, d=9):
    ents = [entity(rng, loss, n, d) for _ in range(E)]
    priors = [(0.3 * rng.normal(size=d), rng.uniform(0.5, 3.0, size=d)) for _ in range(E)]
    return ents, priors


@pytest.mark.parametrize("method, native", CASES)
@pytest.mark.parametrize("loss", LOSSES)
def test_agrees_with_the_scipy_oracle(method, native, loss):
    rng = np.random.default_rng(1)
    ents, priors = problem(rng, loss)
    block = dense_block(ents, priors, 16, 12, 4)
    config = SolverConfig(loss=loss, hessian="diagonal", tol=1e-10, native=native)
    l2, delta = 0.7, 0.6
    result = jax.device_get(solve(in_layout(block, method), l2, delta, config, method=method))
    np.testing.assert_array_equal(result.status, Status.CONVERGED)
    for lane, ((X, y, w, o), (m, p)) in enumerate(zip(ents, priors)):
        d = X.shape[1]
        expected = oracles.fit(X, y, w, o, m, p, l2, delta, loss)
        np.testing.assert_allclose(result.theta[lane, :d], expected, rtol=1e-7, atol=1e-9)
        H = oracles.objective(expected, X, y, w, o, m, p, l2, delta, loss)[2]
        np.testing.assert_allclose(result.precision[lane, :d], np.diag(H), rtol=1e-7)
        assert result.grad_norm[lane] <= 1e-10
    np.testing.assert_array_equal(result.theta[3], 0.0)  # the padding lane
    assert result.iterations[3] == 0


@pytest.mark.parametrize("method, native", CASES)
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("delta", [0.0, 0.6])
def test_an_unpenalized_intercept_agrees_with_the_scipy_oracle(method, native, loss, delta):
    """``penalize_intercept=False``: no L2 term on feature id 0 (its prior term stays). With ``delta = 0``
    the intercept has ``A = 0``, which the span method cannot invert: it hands the block to its fallback."""
    rng = np.random.default_rng(11)
    ents, priors = problem(rng, loss)
    block = dense_block(ents, priors, 16, 12, 4)
    block.feature_ids[:3, 0] = 0  # column 0 (all ones) is the intercept
    config = SolverConfig(loss=loss, hessian="diagonal", tol=1e-10, native=native, penalize_intercept=False)
    l2 = 0.7
    result = jax.device_get(solve(in_layout(block, method), l2, delta, config, method=method))
    np.testing.assert_array_equal(result.status[:3], Status.CONVERGED)
    for lane, ((X, y, w, o), (m, p)) in enumerate(zip(ents, priors)):
        d = X.shape[1]
        a = np.r_[0.0, np.full(d - 1, l2)]
        expected = oracles.fit(X, y, w, o, m, p, a, delta, loss)
        np.testing.assert_allclose(result.theta[lane, :d], expected, rtol=1e-7, atol=1e-9)
        H = oracles.objective(expected, X, y, w, o, m, p, a, delta, loss)[2]
        np.testing.assert_allclose(result.precision[lane, :d], np.diag(H), rtol=1e-7)
        penalized = oracles.fit(X, y, w, o, m, p, l2, delta, loss)
        assert abs(expected[0] - penalized[0]) > 1e-4  # the oracle tells the two problems apart


@pytest.mark.parametrize("method, native", CASES)
def test_iteration_cap_is_a_status(method, native):
    rng = np.random.default_rng(2)
    ents, priors = problem(rng, "logistic")
    block = in_layout(dense_block(ents, priors, 16, 12, 4), method)
    config = SolverConfig(loss="logistic", hessian="diagonal", tol=1e-14, native=native)
    result = jax.device_get(solve(block, 0.01, 0.0, config, method=method, max_iter=1))
    np.testing.assert_array_equal(result.status[:3], Status.MAX_ITERATIONS)
    np.testing.assert_array_equal(result.iterations[:3], 1)
    assert result.status[3] == Status.CONVERGED and result.iterations[3] == 0  # padding lanes do no work


@pytest.mark.parametrize("method, native", CASES)
@pytest.mark.parametrize("failure", ["poisson-overflow", "linear-huge-features"])
def test_a_failed_lane_keeps_its_prior_and_the_others_are_unaffected(method, native, failure):
    """A lane whose numbers overflow (exp(800) in a Poisson margin; features ~1e200, whose squares overflow
    the Hessian / Gram) ends NON_FINITE with its prior mean and precision; the other lane is solved as if
    alone."""
    rng = np.random.default_rng(3)
    loss = "poisson" if failure == "poisson-overflow" else "linear"
    ents, priors = problem(rng, loss, E=2)
    X, y, w, o = ents[1]
    ents[1] = (X, y, w, np.full(len(y), 800.0)) if loss == "poisson" else (X * 1e200, y, w, o)
    config = SolverConfig(loss=loss, hessian="diagonal", tol=1e-10, native=native)
    block = dense_block(ents, priors, 16, 12, 2)
    both = jax.device_get(solve(in_layout(block, method), 1.0, 0.5, config, method=method))
    alone = jax.device_get(solve(in_layout(dense_block(ents[:1], priors[:1], 16, 12, 1), method), 1.0, 0.5,
                                 config, method=method))
    assert list(both.status) == [Status.CONVERGED, Status.NON_FINITE]
    np.testing.assert_array_equal(both.theta[1], np.where(block.feature_ids[1] >= 0, block.prior_mean[1], 0.0))
    np.testing.assert_array_equal(both.precision[1], block.prior_precision[1])
    np.testing.assert_allclose(both.theta[0], alone.theta[0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("method, native, hessian", [
    pytest.param(*case.values, hessian, id=f"{case.id}-{hessian}") for case in CASES for hessian in ("diagonal", "full")
    if hessian in METHODS[case.values[0]].hessians])
@pytest.mark.parametrize("loss", LOSSES)
def test_padding_rows_features_and_lanes_change_nothing(method, native, hessian, loss):
    """Padding rows (weight 0, junk features, offset 40), padding features (id -1) and padding lanes give the
    same result (up to the tolerance: padded reductions sum in another order); with ``"full"`` precision
    (the methods that return it) the prior is a full SPD matrix."""
    rng = np.random.default_rng(4)
    ents, priors = problem(rng, loss)
    config = SolverConfig(loss=loss, hessian=hessian, tol=1e-10, native=native)

    def block_of(N, D, E, junk):
        block = dense_block(ents, priors, N, D, E, rng=rng if junk else None)
        if hessian == "full":  # a full prior: the diagonal one plus a random SPD part on the real features
            P = np.tile(np.eye(D), (E, 1, 1))
            for lane, (_, p) in enumerate(priors):
                B = np.random.default_rng(lane).normal(size=(9, 9))
                P[lane, :9, :9] = np.diag(p) + B @ B.T / 9
            block = block._replace(prior_precision=P)
        return in_layout(block, method)

    base = jax.device_get(solve(block_of(14, 9, 3, False), 1.0, 0.5, config, method=method))
    padded = jax.device_get(solve(block_of(24, 16, 8, True), 1.0, 0.5, config, method=method))
    np.testing.assert_allclose(padded.theta[:3, :9], base.theta, rtol=1e-8, atol=1e-9)
    real = (slice(0, 3), slice(0, 9), slice(0, 9)) if hessian == "full" else (slice(0, 3), slice(0, 9))
    np.testing.assert_allclose(padded.precision[real], base.precision, rtol=1e-8, atol=1e-9)
    np.testing.assert_array_equal(padded.theta[:3, 9:], 0.0)
    np.testing.assert_array_equal(padded.status, Status.CONVERGED)
    np.testing.assert_array_equal(padded.iterations[3:], 0)


def test_unknown_method_option_and_layout_are_refused():
    rng = np.random.default_rng(5)
    block = dense_block(*problem(rng, "linear"), 16, 12, 4)
    config = SolverConfig(loss="linear", hessian="diagonal")
    with pytest.raises(ValueError, match="'method'"):
        solve(block, 1.0, 0.0, config, method="trust-region")
    with pytest.raises(TypeError, match="SparseBlock"):
        solve(block, 1.0, 0.0, config, method="span")
    with pytest.raises(TypeError, match="options"):
        solve(block, 1.0, 0.0, config, method="newton", lanes="map")


DENSE_JAX = [name for name, method in METHODS.items() if method.layout == "dense"]


@pytest.mark.parametrize("method", DENSE_JAX)
@pytest.mark.parametrize("lane_batch", [1, 2, 3, 4])
def test_lane_batches_give_each_lane_the_result_of_one_vmap(method, lane_batch):
    """The pure-JAX path over the lanes in batches (``lax.map`` of ``vmap``s; 2, 3 and 4 do not divide the 7
    lanes, so the last lane is repeated to fill the last batch) against one ``vmap`` of the whole block: same
    statuses and iteration counts,
    coefficients and precisions to rounding. A lane whose loop runs longer than its batch's others (the
    capped one) does not change them."""
    rng = np.random.default_rng(11)
    ents, priors = problem(rng, "logistic", E=7)
    block = dense_block(ents, priors, 16, 12, 7)
    block = block._replace(X=block.X.copy())
    block.X[5] *= 40.0  # a hard lane: more iterations than the others
    config = SolverConfig(loss="logistic", hessian="diagonal", tol=1e-10, native=False, max_iter=60)
    whole = jax.device_get(solve(block, 0.7, 0.6, config, method=method, lane_batch=None))
    batched = jax.device_get(solve(block, 0.7, 0.6, config, method=method, lane_batch=lane_batch))
    assert len(set(whole.iterations.tolist())) > 1, whole.iterations
    np.testing.assert_array_equal(batched.status, whole.status)
    np.testing.assert_array_equal(batched.iterations, whole.iterations)
    np.testing.assert_allclose(batched.theta, whole.theta, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(batched.precision, whole.precision, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(batched.loss, whole.loss, rtol=1e-13)
    if lane_batch > 1:  # every batch as wide as the others (the last one filled): the same rounding here too
        np.testing.assert_array_equal(batched.theta, whole.theta)
        np.testing.assert_array_equal(batched.precision, whole.precision)


@pytest.mark.parametrize("method", DENSE_JAX)
def test_the_lane_batch_default_and_its_checks(method, monkeypatch):
    """Decided on the host: on a CPU backend, the largest power of two of lanes whose workspace fits
    ``CPU_LANE_BATCH_BYTES``, none when that holds the whole block or on another backend; a bad value is
    refused naming the field."""
    from lljax.solve import base

    rng = np.random.default_rng(12)
    block = dense_block(*problem(rng, "linear", E=4), 64, 16, 4096)
    config = SolverConfig(loss="linear", hessian="diagonal")
    check = METHODS[method].check
    lane_bytes = METHODS[method].bytes_per_lane(64, 16, 8, False, False)
    batch = check(block, config, {})["lane_batch"]
    assert batch is not None and batch & (batch - 1) == 0
    assert batch * lane_bytes <= base.CPU_LANE_BATCH_BYTES < 2 * batch * lane_bytes
    small = dense_block(*problem(rng, "linear", E=4), 64, 16, 4)
    assert check(small, config, {})["lane_batch"] is None
    assert check(block, config, {"lane_batch": None})["lane_batch"] is None
    assert check(block, config, {"lane_batch": 5})["lane_batch"] == 5
    assert check(block, config, {"lane_batch": np.int64(5)})["lane_batch"] == 5
    assert type(check(block, config, {"lane_batch": np.int64(5)})["lane_batch"]) is int
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # as in a process with an accelerator
    assert check(block, config, {})["lane_batch"] is None
    for bad in (0, -2, 2.5, True, "8"):
        with pytest.raises(ValueError, match="'lane_batch'"):
            check(block, config, {"lane_batch": bad})


def test_the_kernels_are_compiled_with_the_shared_constants():
    assert kernels.available(), f"the native kernel is not built: {kernels.build_error()}"
    compiled = kernels.compiled_constants()
    assert compiled["ARMIJO_C1"] == ARMIJO_C1 and compiled["STEP_SHRINK"] == STEP_SHRINK
    assert compiled["SLACK_ULPS"] == SLACK_ULPS and compiled["RUNNING"] == RUNNING
    for status in (Status.CONVERGED, Status.MAX_ITERATIONS, Status.NON_FINITE, Status.STALLED):
        assert compiled[status.name] == int(status)


@pytest.mark.parametrize("method", [name for name, m in METHODS.items() if m.solve_native])
def test_switching_the_backend_after_compiling_takes_effect_or_raises(monkeypatch, method):
    """``LLJAX_NATIVE`` and ``SolverConfig.native`` are read on the host at every call and are static
    arguments of the jitted solve: toggling them after a shape has compiled switches the path, both ways."""
    assert kernels.available(), f"the native kernel is not built: {kernels.build_error()}"
    rng = np.random.default_rng(6)
    ents, priors = problem(rng, "logistic", E=8, n=30, d=12)
    block = in_layout(dense_block(ents, priors, 32, 12, 8), method)
    block = jax.tree.map(lambda a: a.astype(np.float32) if a.dtype == np.float64 else a, block)
    auto = SolverConfig(loss="logistic", hessian="diagonal", tol=1e-4)
    jax_path = jax.device_get(solve(block, 1.0, 0.5, auto._replace(native=False), method=method))
    native_path = jax.device_get(solve(block, 1.0, 0.5, auto._replace(native=True), method=method))
    differ = not np.array_equal(jax_path.theta, native_path.theta)
    assert differ, "the two paths gave bit-identical results: this test could not tell them apart"
    for setting, expected in [("1", native_path), ("0", jax_path), ("1", native_path), ("0", jax_path)]:
        monkeypatch.setenv("LLJAX_NATIVE", setting)
        got = jax.device_get(solve(block, 1.0, 0.5, auto, method=method))
        np.testing.assert_array_equal(got.theta, expected.theta, err_msg=f"LLJAX_NATIVE={setting}")
    monkeypatch.setattr(kernels, "_module", None)  # the kernel disappears after compiling: refused, not ignored
    with pytest.raises(RuntimeError, match="not built"):
        solve(block, 1.0, 0.5, auto._replace(native=True), method=method)
    assert registry.choose_backend(METHODS[method], block, auto) == "jax"
