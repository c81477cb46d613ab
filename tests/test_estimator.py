"""lljax.estimator against scikit-learn's conventions (check_estimator, clone) and against oracles: scikit-learn's
LogisticRegression per group, the ridge closed form, a SciPy Poisson fit, and sequential == batch."""

from __future__ import annotations

import warnings

import jax
import numpy as np
import pandas as pd
import pytest
import scipy.optimize
import scipy.sparse
from sklearn.base import clone, is_classifier, is_regressor
from sklearn.linear_model import LogisticRegression
from sklearn.utils.estimator_checks import check_estimator

from lljax import RandomEffectClassifier, RandomEffectRegressor
from lljax.estimator import NotFittedError

jax.config.update("jax_enable_x64", True)


@pytest.mark.parametrize("estimator", [RandomEffectClassifier(), RandomEffectRegressor(),
                                       RandomEffectRegressor(loss="poisson", hessian="diagonal")])
def test_check_estimator(estimator):
    """Every check scikit-learn yields passes; the only one not run is the array-API check, which scikit-learn
    skips unless SCIPY_ARRAY_API is set (the module docstring lists what does not apply and why)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(estimator, on_fail=None)
    failed = [(r["check_name"], str(r["exception"])[:200]) for r in results if r["status"] == "failed"]
    assert failed == []
    skipped = {r["check_name"] for r in results if r["status"] == "skipped"}
    assert skipped <= {"check_array_api_input"}
    assert len(results) >= 55


def test_params_clone_and_repr():
    est = RandomEffectClassifier(l2=3.0, groups_column="user")
    assert est.get_params() == {"delta": 1.0, "groups_column": "user", "hessian": "full", "l2": 3.0, "max_iter": 50,
                                "max_rows": None, "min_rows": 1, "penalize_intercept": True, "tol": None}
    copy = clone(est)
    assert copy is not est and copy.get_params() == est.get_params()
    assert est.set_params(l2=0.5) is est and est.l2 == 0.5
    with pytest.raises(ValueError, match="field 'alpha'.*is not a parameter of RandomEffectClassifier"):
        est.set_params(alpha=1.0)
    assert repr(est) == "RandomEffectClassifier(groups_column='user', l2=0.5)"
    assert is_classifier(est) and is_regressor(RandomEffectRegressor())
    with pytest.raises(NotFittedError, match="not fitted yet"):
        est.predict(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="field 'loss'"):
        RandomEffectRegressor(loss="logistic").fit(np.ones((3, 1)), [1.0, 2.0, 3.0])


def data(n=300, F=3, groups=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, F))
    g = rng.integers(0, groups, n)
    theta = rng.normal(size=(groups, F + 1))
    offset = 0.3 * rng.normal(size=n)
    margin = offset + theta[g, 0] + np.einsum("nf,nf->n", X, theta[g, 1:])
    y = (rng.random(n) < 1 / (1 + np.exp(-margin))).astype(int)
    w = rng.uniform(0.5, 2.0, n)
    return X, y, g, offset, w


def sklearn_logistic(X, y, w, offset, l2):
    """The same objective through scikit-learn: intercept as a column (penalized like the others, C = 1 / l2);
    the offset through a shifted design is not available there, so the oracle is used with offset 0."""
    assert not np.any(offset)
    design = np.column_stack([np.ones(len(X)), X])
    model = LogisticRegression(C=1.0 / l2, fit_intercept=False, tol=1e-12, max_iter=10_000)
    model.fit(design, y, sample_weight=w)
    return model.coef_[0]


def test_classifier_one_group_equals_sklearn_logistic_regression():
    X, y, _, _, w = data()
    est = RandomEffectClassifier(l2=2.0, tol=1e-10).fit(X, y, sample_weight=w)
    coef = sklearn_logistic(X, y, w, np.zeros(len(X)), 2.0)
    stored = est.model_.coefficients(0)
    np.testing.assert_array_equal(stored.feature_ids, np.arange(4))
    np.testing.assert_allclose(stored.mean, coef, rtol=1e-6, atol=1e-8)
    margins = np.column_stack([np.ones(len(X)), X]) @ coef
    np.testing.assert_allclose(est.decision_function(X), margins, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(est.predict_proba(X)[:, 1], 1 / (1 + np.exp(-margins)), rtol=1e-6)
    np.testing.assert_allclose(est.predict_log_proba(X), np.log(est.predict_proba(X)), rtol=1e-9)
    np.testing.assert_array_equal(est.predict(X), (margins > 0).astype(int))


def test_classifier_with_an_unpenalized_intercept_equals_sklearn_fit_intercept():
    """scikit-learn's ``fit_intercept=True`` leaves the intercept out of the penalty, as
    ``penalize_intercept=False`` does."""
    X, y, _, _, w = data(seed=4)
    est = RandomEffectClassifier(l2=2.0, tol=1e-10, penalize_intercept=False).fit(X, y, sample_weight=w)
    model = LogisticRegression(C=1.0 / 2.0, tol=1e-12, max_iter=10_000).fit(X, y, sample_weight=w)
    np.testing.assert_allclose(est.model_.coefficients(0).mean, np.r_[model.intercept_, model.coef_[0]], rtol=1e-6,
                               atol=1e-8)
    penalized = RandomEffectClassifier(l2=2.0, tol=1e-10).fit(X, y, sample_weight=w)
    assert abs(penalized.model_.coefficients(0).mean[0] - model.intercept_[0]) > 1e-3


@pytest.mark.parametrize("how", ["array", "dataframe", "position"])
def test_classifier_per_group_equals_one_sklearn_fit_per_group(how):
    X, y, g, _, w = data()
    labels = np.array(["no", "yes"])[y]  # arbitrary class labels
    users = np.array([f"user{k}" for k in g], dtype=object)
    if how == "array":
        est = RandomEffectClassifier(l2=1.0, tol=1e-10).fit(X, labels, groups=users, sample_weight=w)
        predict_args = dict(groups=users)
        Xp = X
    elif how == "dataframe":
        frame = pd.DataFrame(X, columns=["a", "b", "c"]).assign(user=users)
        est = RandomEffectClassifier(l2=1.0, tol=1e-10, groups_column="user").fit(frame, labels, sample_weight=w)
        assert est.feature_names_in_.tolist() == ["a", "b", "c"] and est.n_features_in_ == 3
        predict_args, Xp = {}, frame
    else:
        est = RandomEffectClassifier(l2=1.0, tol=1e-10, groups_column=3).fit(np.column_stack([X, g]), labels,
                                                                             sample_weight=w)
        users = g
        predict_args, Xp = {}, np.column_stack([X, g])
    assert est.classes_.tolist() == ["no", "yes"]
    margins = np.zeros(len(X))
    for k in np.unique(users):
        rows = users == k
        coef = sklearn_logistic(X[rows], y[rows], w[rows], np.zeros(rows.sum()), 1.0)
        np.testing.assert_allclose(est.model_.coefficients(k).mean, coef, rtol=1e-6, atol=1e-8)
        margins[rows] = np.column_stack([np.ones(rows.sum()), X[rows]]) @ coef
    np.testing.assert_allclose(est.decision_function(Xp, **predict_args), margins, rtol=1e-6, atol=1e-8)
    assert est.predict(Xp, **predict_args).tolist() == np.where(margins > 0, "yes", "no").tolist()
    assert est.score(Xp, labels, **predict_args) == np.mean(np.where(margins > 0, "yes", "no") == labels)


def test_offsets_and_unseen_groups():
    X, y, g, offset, _ = data()
    est = RandomEffectClassifier(tol=1e-10).fit(X, y, groups=g, offset=offset)
    shifted = est.decision_function(X, groups=g, offset=offset + 1.5)
    np.testing.assert_allclose(shifted, est.decision_function(X, groups=g, offset=offset) + 1.5, rtol=1e-12)
    np.testing.assert_allclose(est.decision_function(X, groups=np.full(len(X), 99), offset=offset), offset)


def ridge(X, y, w, offset, l2):
    design = np.column_stack([np.ones(len(X)), X])
    return np.linalg.solve(design.T @ (w[:, None] * design) + l2 * np.eye(design.shape[1]),
                           design.T @ (w * (y - offset)))


def test_regressor_linear_equals_the_ridge_closed_form_per_group():
    X, _, g, offset, w = data()
    rng = np.random.default_rng(1)
    y = rng.normal(size=len(X)) + X @ np.array([1.0, -2.0, 0.5])
    est = RandomEffectRegressor(l2=0.7).fit(X, y, groups=g, sample_weight=w, offset=offset)
    expected = np.zeros(len(X))
    for k in np.unique(g):
        rows = g == k
        coef = ridge(X[rows], y[rows], w[rows], offset[rows], 0.7)
        np.testing.assert_allclose(est.model_.coefficients(int(k)).mean, coef, rtol=1e-9)
        expected[rows] = offset[rows] + np.column_stack([np.ones(rows.sum()), X[rows]]) @ coef
    np.testing.assert_allclose(est.predict(X, groups=g, offset=offset), expected, rtol=1e-9)
    np.testing.assert_allclose(est.predict_margin(X, groups=g, offset=offset), expected, rtol=1e-9)
    sparse = RandomEffectRegressor(l2=0.7).fit(scipy.sparse.csr_matrix(X), y, groups=g, sample_weight=w, offset=offset)
    np.testing.assert_allclose(sparse.predict(scipy.sparse.csr_matrix(X), groups=g, offset=offset), expected,
                               rtol=1e-9)


def test_regressor_poisson_equals_scipy():
    X, _, _, offset, w = data(n=200)
    rng = np.random.default_rng(2)
    y = rng.poisson(np.exp(0.3 + X @ np.array([0.2, -0.1, 0.3]) + offset))
    est = RandomEffectRegressor(loss="poisson", l2=0.5, tol=1e-10).fit(X, y, sample_weight=w, offset=offset)
    design = np.column_stack([np.ones(len(X)), X])

    def objective(theta):
        m = design @ theta + offset
        value = np.sum(w * (np.exp(m) - y * m)) + 0.25 * theta @ theta
        return value, design.T @ (w * (np.exp(m) - y)) + 0.5 * theta

    best = scipy.optimize.minimize(objective, np.zeros(4), jac=True, method="BFGS", options={"gtol": 1e-10})
    np.testing.assert_allclose(est.model_.coefficients(0).mean, best.x, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(est.predict(X, offset=offset), np.exp(design @ best.x + offset), rtol=1e-6)


def test_partial_fit_on_mini_batches_equals_fit_linear_full_precision():
    X, _, g, offset, w = data(n=240)
    y = np.random.default_rng(3).normal(size=len(X))
    batch = RandomEffectRegressor(l2=1.0, tol=1e-12).fit(X, y, groups=g, sample_weight=w, offset=offset)
    stream = RandomEffectRegressor(l2=1.0, tol=1e-12)
    for part in np.array_split(np.arange(len(X)), 4):
        stream.partial_fit(X[part], y[part], groups=g[part], sample_weight=w[part], offset=offset[part])
    for k in np.unique(g):
        a, b = batch.model_.coefficients(int(k)), stream.model_.coefficients(int(k))
        np.testing.assert_allclose(b.mean, a.mean, rtol=1e-9)
        np.testing.assert_allclose(b.precision, a.precision, rtol=1e-9)


def test_partial_fit_classes_and_bad_targets():
    X, y, g, _, _ = data(n=60)
    est = RandomEffectClassifier()
    est.partial_fit(X[:10], np.ones(10, int), groups=g[:10], classes=[0, 1])  # one class so far: classes= given
    assert est.classes_.tolist() == [0, 1]
    est.partial_fit(X[10:], y[10:], groups=g[10:])
    with pytest.raises(ValueError, match=r"classes=\[0, 2\] differs"):
        est.partial_fit(X, y, groups=g, classes=[0, 2])
    with pytest.raises(ValueError, match="Only binary classification is supported.*3 classes"):
        RandomEffectClassifier().fit(X, np.arange(60) % 3)
    with pytest.raises(ValueError, match="Unknown label type: continuous"):
        RandomEffectClassifier().fit(X, np.linspace(0, 1, 60))
    with pytest.raises(ValueError, match="X has 2 features, but RandomEffectClassifier is expecting 3"):
        est.predict(X[:, :2], groups=g)
    with pytest.raises(ValueError, match="field 'groups'.*must have one entry per row"):
        est.predict(X, groups=g[:5])
    with pytest.raises(TypeError, match="field 'entity'.*different type"):
        RandomEffectClassifier().fit(X[:3], [0, 1, 0], groups=np.array(["a", 1, "b"], dtype=object))
