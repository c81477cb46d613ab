"""Numerical robustness: separable data, near-singular / ill-conditioned precision, offsets of magnitude
50, float32, one-row entities, more features than rows, and numbers that overflow.

Whatever the data, no NaN or inf may be stored silently: every lane ends with a documented
:class:`Status`, a lane that fails (NON_FINITE) keeps its prior (a new entity is not stored), and
the update report counts the statuses. Optima are checked against ``tests/oracles.py`` (SciPy /
closed form per entity, or the NumPy gradient of the objective where the optimum is ill-conditioned).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from lljax import Dataset, RandomEffectModel, Status, compat
from tests import oracles

DOCUMENTED = {s.value for s in Status}
FINISHED = {Status.CONVERGED, Status.MAX_ITERATIONS, Status.STALLED}


def build(entities: dict[Any, tuple], dtype: Any = np.float64) -> Dataset:
    """A dataset from per-entity dense pieces ``key -> (X (n, d), y, w, o)``.

    Entity features get global ids ``1..d`` (0 is the intercept) and every row stores all of them
    (explicit zeros included), so each entity's subspace is exactly ``[intercept, 1..d]`` and the
    oracle's design matrix is ``[1, X]``.
    """
    keys, labels, weights, offsets, counts, fids, vals = [], [], [], [], [], [], []
    for key, (X, y, w, o) in entities.items():
        n, d = X.shape
        keys += [key] * n
        labels.append(y)
        weights.append(w)
        offsets.append(o)
        counts += [d] * n
        fids.append(np.tile(np.arange(1, d + 1), n))
        vals.append(X.reshape(-1))
    indptr = np.concatenate([[0], np.cumsum(counts)])
    cat = np.concatenate
    return Dataset.from_arrays(keys, cat(labels).astype(dtype), indptr=indptr, feature_ids=cat(fids),
                               values=cat(vals), weight=cat(weights), offset=cat(offsets), dtype=dtype)


def oracle_problem(piece: tuple) -> tuple:
    X, y, w, o = (np.asarray(a, np.float64) for a in piece)
    return np.hstack([np.ones((len(y), 1)), X]), y, w, o


def encoded(loss: str, y: np.ndarray) -> np.ndarray:
    return np.where(y == 1, 1.0, -1.0) if loss == "logistic" else y


def assert_no_silent_failure(model: RandomEffectModel, report: Any) -> None:
    """Documented statuses, consistent counts, nothing non-finite stored, finite loss on finished lanes."""
    assert set(report.status.tolist()) <= DOCUMENTED
    counts = report.status_counts
    assert sum(counts.values()) == len(report.entity_keys)
    for status in Status:
        assert counts[status.name.lower()] == int(np.sum(report.status == status))
    finished = np.isin(report.status, list(FINISHED))
    assert np.all(np.isfinite(report.loss[finished])) and np.all(np.isfinite(report.grad_norm[finished]))
    for key in model.entity_keys:
        stored = model.coefficients(key)
        assert np.all(np.isfinite(stored.mean)), f"entity {key!r}: non-finite mean {stored.mean}"
        if stored.precision is not None:
            assert np.all(np.isfinite(stored.precision)), f"entity {key!r}: non-finite precision {stored.precision}"


def kkt_gradient(model: RandomEffectModel, key: Any, piece: tuple, loss: str, l2: float, delta: float = 0.0,
                 prior: Any = None) -> np.ndarray:
    """Gradient of the NumPy objective at the stored mean (0 at the optimum)."""
    X, y, w, o = oracle_problem(piece)
    d = X.shape[1]
    theta0, P0 = (np.zeros(d), np.full(d, l2)) if prior is None else prior
    theta = model.coefficients(key).mean.astype(np.float64)
    return oracles.objective(theta, X, encoded(loss, y), w, o, theta0, P0, l2, delta, loss)[1]


def separable(rng: np.random.Generator, n: int) -> tuple:
    """Rows with x > 0 labelled 1 and x < 0 labelled 0: the intercept-and-slope model separates them."""
    x = rng.uniform(0.5, 3.0, n) * np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    return x[:, None], (x > 0).astype(float), np.ones(n), np.zeros(n)


# ----------------------------------------------------------------------------- separable logistic data

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("l2", [1.0, 1e-3])
def test_separable_logistic_is_bounded_by_the_penalty(dtype, l2):
    """Only the L2 term bounds theta: 1/2 l2 ||theta*||^2 <= f(theta*) <= f(0) = n log 2."""
    rng = np.random.default_rng(0)
    pieces = {k: separable(rng, n) for k, n in enumerate([2, 3, 4, 4])}
    tol = 1e-10 if dtype == np.float64 else None
    model = RandomEffectModel("logistic", l2=l2, hessian="full", max_iter=100, tol=tol)
    report = model.update(build(pieces, dtype))
    assert_no_silent_failure(model, report)
    assert report.all_converged
    for key, piece in pieces.items():
        theta = model.coefficients(key).mean.astype(np.float64)
        n = len(piece[1])
        assert 0.5 * l2 * theta @ theta <= n * np.log(2) * (1 + 1e-5)
        assert theta[1] > 0  # the slope separates in the right direction
        if dtype == np.float64:
            X, y, w, o = oracle_problem(piece)
            expected = oracles.fit(X, encoded("logistic", y), w, o, np.zeros(2), np.full(2, l2), l2, 0.0, "logistic")
            np.testing.assert_allclose(theta, expected, rtol=1e-6, atol=1e-8)


def test_separable_logistic_without_any_penalty_ends_with_a_documented_status():
    """l2 = 0, delta = 0: the optimum is at infinity. The lane must still end finite and documented."""
    rng = np.random.default_rng(1)
    pieces = {k: separable(rng, n) for k, n in enumerate([2, 3, 4])}
    model = RandomEffectModel("logistic", l2=0.0, hessian="full")
    report = model.update(build(pieces))
    assert_no_silent_failure(model, report)
    assert set(report.status.tolist()) <= {Status.CONVERGED, Status.MAX_ITERATIONS, Status.STALLED}
    for key in pieces:
        assert model.coefficients(key).mean[1] > 0


# ----------------------------------------------------------------------------- near-singular, ill-conditioned

@pytest.mark.parametrize("loss", ["linear", "logistic", "poisson"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_duplicated_columns_with_a_tiny_ridge_split_the_weight_equally(loss, dtype):
    """Two identical columns make the data Hessian singular; l2 = 1e-8 leaves it near-singular
    (condition ~ 1e8 relative to the data). The unique optimum gives both columns the same weight."""
    rng = np.random.default_rng(2)
    pieces = {}
    for key in range(5):
        x = rng.normal(size=4)
        y = rng.poisson(1.0, 4).astype(float) if loss == "poisson" else (rng.random(4) < 0.5).astype(float)
        if loss == "linear":
            y = 0.5 * x + 0.1 * rng.normal(size=4)
        pieces[key] = (np.stack([x, x], axis=1), y, np.ones(4), np.zeros(4))
    model = RandomEffectModel(loss, l2=1e-8, hessian="full", max_iter=100)
    report = model.update(build(pieces, dtype))
    assert_no_silent_failure(model, report)
    assert set(report.status.tolist()) <= FINISHED
    for key, piece in pieces.items():
        theta = model.coefficients(key).mean.astype(np.float64)
        np.testing.assert_allclose(theta[1], theta[2], rtol=1e-3 if dtype == np.float32 else 1e-6, atol=1e-4)
        if dtype == np.float64 and report.status[key] == Status.CONVERGED:
            assert np.max(np.abs(kkt_gradient(model, key, piece, loss, 1e-8))) < 1e-5


@pytest.mark.parametrize("loss", ["linear", "logistic", "poisson"])
@pytest.mark.parametrize("hessian", ["full", "diagonal"])
def test_ill_conditioned_stored_precision_as_the_next_prior(loss, hessian):
    """Nearly collinear columns and l2 = 1e-10 give a stored precision of condition ~1e11; with
    delta = 1 it is (almost) the whole penalty of the next update, which must still solve cleanly."""
    rng = np.random.default_rng(3)
    pieces = {}
    for key in range(4):
        x = rng.normal(size=4)
        X = np.stack([x, x + 1e-6 * rng.normal(size=4)], axis=1)
        y = rng.poisson(1.0, 4).astype(float) if loss == "poisson" else (rng.random(4) < 0.5).astype(float)
        pieces[key] = (X, y, np.ones(4), np.zeros(4))
    model = RandomEffectModel(loss, l2=1e-10, delta=1.0, hessian=hessian, tol=1e-8, max_iter=100)
    data = build(pieces)
    model.update(data)
    priors = {k: model.coefficients(k) for k in pieces}
    if hessian == "full":
        assert max(np.linalg.cond(p.precision) for p in priors.values()) > 1e8
    report = model.update(data)
    assert_no_silent_failure(model, report)
    assert set(report.status.tolist()) <= FINISHED
    for key, piece in pieces.items():
        stored = priors[key]
        P0 = stored.precision if hessian == "full" else np.diag(stored.precision)
        gradient = kkt_gradient(model, key, piece, loss, 1e-10, 1.0, (stored.mean, P0))
        if report.status[key] == Status.CONVERGED:
            assert np.max(np.abs(gradient)) < 1e-6


# ----------------------------------------------------------------------------- offsets of magnitude 50

@pytest.mark.parametrize("loss", ["linear", "logistic", "poisson"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_offsets_of_magnitude_50(loss, dtype):
    """Saturated sigmoids and e^50 ~ 5e21 margins: finite results; poisson from e^50 down to a count
    of 0..3 takes ~50 Newton steps (the exponential loss), so it may end MAX_ITERATIONS at the default
    cap and converges with a higher one."""
    rng = np.random.default_rng(4)
    pieces = {}
    for key, sign in enumerate([1.0, -1.0, 1.0, -1.0]):
        x = rng.normal(size=4)
        y = {"linear": rng.normal(size=4), "logistic": (rng.random(4) < 0.5).astype(float),
             "poisson": rng.integers(0, 4, 4).astype(float)}[loss]
        pieces[key] = (x[:, None], y, np.ones(4), np.full(4, 50.0 * sign))
    data = build(pieces, dtype)
    default = RandomEffectModel(loss, l2=1.0, hessian="full")
    report = default.update(data)
    assert_no_silent_failure(default, report)
    assert set(report.status.tolist()) <= {Status.CONVERGED, Status.MAX_ITERATIONS}

    patient = RandomEffectModel(loss, l2=1.0, hessian="full", max_iter=300)
    report = patient.update(data)
    assert_no_silent_failure(patient, report)
    assert report.all_converged, report.summary()
    for key, piece in pieces.items():
        if dtype == np.float64:
            X, y, w, o = oracle_problem(piece)
            expected = oracles.fit(X, encoded(loss, y), w, o, np.zeros(2), np.full(2, 1.0), 1.0, 0.0, loss)
            np.testing.assert_allclose(patient.coefficients(key).mean, expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- float32, one row, D > rows

@pytest.mark.parametrize("loss", ["linear", "logistic", "poisson"])
def test_float32_inputs_solve_in_float32_and_agree_with_float64(loss):
    rng = np.random.default_rng(5)
    pieces = {}
    for key in range(6):
        n = int(rng.integers(1, 5))
        X = rng.normal(size=(n, 2))
        y = {"linear": rng.normal(size=n), "logistic": (rng.random(n) < 0.5).astype(float),
             "poisson": rng.integers(0, 4, n).astype(float)}[loss]
        pieces[key] = (X, y, rng.uniform(0.5, 2.0, n), 0.3 * rng.normal(size=n))
    single = RandomEffectModel(loss, l2=1.0, hessian="full")
    report = single.update(build(pieces, np.float32))
    assert_no_silent_failure(single, report)
    assert report.all_converged and single.dtype == np.float32
    double = RandomEffectModel(loss, l2=1.0, hessian="full")
    double.update(build(pieces, np.float64))
    for key in pieces:
        got, want = single.coefficients(key), double.coefficients(key)
        assert got.mean.dtype == np.float32 and got.precision.dtype == np.float32
        np.testing.assert_allclose(got.mean, want.mean, rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(got.precision, want.precision, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("loss", ["linear", "logistic", "poisson"])
@pytest.mark.parametrize("l2", [1.0, 0.0])
def test_one_row_entities_with_more_features_than_rows(loss, l2):
    """n = 1 row, D = 4 (intercept + 3): the data Hessian has rank 1. With l2 > 0 the optimum is
    unique (checked against the oracle); with l2 = 0 it is not, and the lane must still end finite."""
    rng = np.random.default_rng(6)
    pieces = {}
    for key in range(8):
        n = 1 if key < 6 else 2
        y = {"linear": rng.normal(size=n), "logistic": (rng.random(n) < 0.5).astype(float),
             "poisson": rng.integers(0, 4, n).astype(float)}[loss]
        pieces[key] = (rng.normal(size=(n, 3)), y, np.ones(n), 0.2 * rng.normal(size=n))
    if l2 == 0:  # rank-deficient data Hessian and no penalty: the posterior is improper (singular precision)
        kept = RandomEffectModel(loss, l2=l2, hessian="full", tol=1e-9, max_iter=100)
        report = kept.update(build(pieces))
        assert_no_silent_failure(kept, report)
        assert report.status.tolist() == [Status.NON_FINITE] * 8 and len(kept) == 0  # not stored as CONVERGED
    model = RandomEffectModel(loss, l2=l2, hessian="full" if l2 > 0 else "none", tol=1e-9, max_iter=100)
    report = model.update(build(pieces))
    assert_no_silent_failure(model, report)
    assert set(report.status.tolist()) <= FINISHED
    for key, piece in pieces.items():
        if l2 > 0:
            X, y, w, o = oracle_problem(piece)
            expected = oracles.fit(X, encoded(loss, y), w, o, np.zeros(4), np.full(4, l2), l2, 0.0, loss)
            np.testing.assert_allclose(model.coefficients(key).mean, expected, rtol=1e-6, atol=1e-8)
        elif loss == "linear":  # l2 = 0: any exact fit of the row(s) is an optimum
            X, y, w, o = oracle_problem(piece)
            np.testing.assert_allclose(X @ model.coefficients(key).mean + o, y, atol=1e-6)


# ----------------------------------------------------------------------------- overflow: the lane fails, keeps its prior

def _first_then_overflowing(loss: str, dtype: Any, hessian: str, huge_x: float = 0.0, huge_offset: float = 0.0):
    """Train entities 0 and 1; then update 0 (overflowing), 1 (normal) and the new entity 2 (overflowing)."""
    rng = np.random.default_rng(7)

    def piece(overflow: bool) -> tuple:
        X = rng.normal(size=(3, 1))
        y = np.array([1.0, 0.0, 1.0])
        o = np.zeros(3)
        if overflow:
            X[0, 0] = huge_x or X[0, 0]
            o[:] = huge_offset
        return X, y, np.ones(3), o

    model = RandomEffectModel(loss, l2=1.0, delta=0.5, hessian=hessian)
    model.update(build({0: piece(False), 1: piece(False)}, dtype))
    before = {k: model.coefficients(k) for k in (0, 1)}
    report = model.update(build({0: piece(True), 1: piece(False), 2: piece(True)}, dtype))
    return model, report, before


def _assert_failed_lanes_kept_their_prior(model, report, before):
    assert_no_silent_failure(model, report)
    status = dict(zip(report.entity_keys.tolist(), report.status.tolist()))
    assert status == {0: Status.NON_FINITE, 1: Status.CONVERGED, 2: Status.NON_FINITE}, status
    assert report.status_counts["non_finite"] == 2 and report.status_counts["converged"] == 1
    for got, kept in zip(model.coefficients(0), before[0]):
        np.testing.assert_array_equal(got, kept)
    assert 2 not in model
    assert not np.array_equal(model.coefficients(1).mean, before[1].mean)


@pytest.mark.parametrize("loss,dtype,hessian", [
    ("linear", np.float64, "full"), ("logistic", np.float64, "full"), ("poisson", np.float64, "full"),
    ("linear", np.float32, "full"), ("logistic", np.float64, "diagonal"),
])
def test_overflowing_feature_values_fail_the_lane_and_keep_its_prior(loss, dtype, hessian):
    """A feature value whose square overflows (1e200 in float64, 1e30 in float32) makes the data
    Hessian inf: the lane must end NON_FINITE with its prior, not store an inf precision."""
    huge = 1e200 if dtype == np.float64 else 1e30
    _assert_failed_lanes_kept_their_prior(*_first_then_overflowing(loss, dtype, hessian, huge_x=huge))


@pytest.mark.parametrize("loss,dtype,offset", [
    ("poisson", np.float64, 1000.0), ("poisson", np.float32, 100.0), ("linear", np.float64, 1e200),
])
def test_overflowing_offsets_fail_the_lane_and_keep_its_prior(loss, dtype, offset):
    """e^1000 (float64), e^100 (float32) and (1e200)^2 overflow the loss itself."""
    _assert_failed_lanes_kept_their_prior(*_first_then_overflowing(loss, dtype, "full", huge_offset=offset))


def test_report_counts_each_status_of_one_update():
    """One poisson update with a cap of 8 iterations: easy lanes converge, offset-50 lanes hit the
    cap, offset-1000 lanes overflow. The report counts each."""
    rng = np.random.default_rng(8)
    offsets = {"easy": 0.0, "far": 50.0, "overflow": 1000.0}
    pieces = {f"{kind}-{i}": (rng.normal(size=(3, 1)), rng.integers(0, 3, 3).astype(float), np.ones(3),
                              np.full(3, offset))
              for kind, offset in offsets.items() for i in range(3)}
    model = RandomEffectModel("poisson", l2=1.0, hessian="full", max_iter=8)
    report = model.update(build(pieces))
    assert_no_silent_failure(model, report)
    expected = {s.name.lower(): 0 for s in Status}
    expected.update(converged=3, max_iterations=3, non_finite=3)
    assert report.status_counts == expected
    assert sorted(model.entity_keys) == sorted(k for k in pieces if not k.startswith("overflow"))


# ----------------------------------------------------------------------------- compat

def test_compat_trainer_with_overflowing_features_returns_the_initial_model():
    """Lambda Learner returns the initial model on warnflag 2; an inf Hessian must not come back as success."""
    X = np.array([[1.0, 1e200], [1.0, 1.0], [1.0, 2.0]])
    data = compat.IndexedDataset(X, np.array([1.0, 0.0, 1.0]), np.ones(3), np.zeros(3))
    trainer = compat.TrainerSquareLossWithL2(training_data=data, initial_model=compat.IndexedModel(np.zeros(2)),
                                             hessian_type=compat.HessianType.FULL, penalty=1.0)
    model, loss, meta = trainer.train()
    assert np.all(np.isfinite(model.theta))
    assert model.hessian is None or np.all(np.isfinite(model.hessian.toarray()))
    assert (meta["warnflag"], meta["task"]) == (2, "NON_FINITE")
    assert model is trainer.initial_model
