"""The intercept is never one of the user's columns (issue 17, item 1), and ``Dataset.with_offset``.

Oracles: the closed-form ridge fit ``(X^T W X + l2 I)^-1 X^T W (y - o)`` on ``[1, X]`` (linear loss),
SciPy's trust-exact fit of the same design (logistic loss, ``tests/oracles.py``), and NumPy dot
products for the exploration scores.
"""

import jax
import numpy as np
import pytest

from lljax import (
    Dataset,
    Feature,
    IndexMap,
    Posterior,
    RandomEffectModel,
    TrainingRecord,
    arm_moments,
    candidate_moments,
    sample_posterior,
    thompson_arms,
    thompson_candidates,
    ucb_arms,
    ucb_candidates,
)
from tests import oracles

L2 = 0.5


def age_income(seed=0, users=6, rows=(5, 30)):
    """Per-user rows of two real features (``age``, ``income``), offsets and weights."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(*rows, size=users)
    user = np.repeat(np.arange(100, 100 + users), counts)
    n = len(user)
    X = np.column_stack([rng.uniform(18, 80, n) / 10.0, rng.lognormal(0.0, 0.5, n)])
    offset = 0.3 * rng.normal(size=n)
    weight = rng.uniform(0.5, 2.0, n)
    truth = rng.normal(size=(users, 3))
    margin = offset + truth[user - 100, 0] + np.einsum("nd,nd->n", X, truth[user - 100, 1:])
    return user, X, offset, weight, margin, rng


def ridge(X1, y, w, o, l2):
    """Closed-form weighted ridge fit and its precision."""
    H = X1.T @ (X1 * w[:, None]) + l2 * np.eye(X1.shape[1])
    return np.linalg.solve(H, X1.T @ (w * (y - o))), H


def test_linear_model_on_dense_columns_equals_ridge_with_a_separate_intercept():
    user, X, offset, weight, margin, rng = age_income()
    y = margin + 0.2 * rng.normal(size=len(user))
    data = Dataset.from_arrays(user, y, X=X, offset=offset, weight=weight)
    assert data.num_features == 3 and data.intercept_id == 0
    model = RandomEffectModel("linear", l2=L2, hessian="full", tol=1e-12)
    assert model.update(data).all_converged
    for key in np.unique(user):
        rows = user == key
        X1 = np.column_stack([np.ones(rows.sum()), X[rows]])  # intercept, age, income
        mean, H = ridge(X1, y[rows], weight[rows], offset[rows], L2)
        got = model.coefficients(key)
        np.testing.assert_array_equal(got.feature_ids, [0, 1, 2])  # age is feature 1, not the intercept
        np.testing.assert_allclose(got.mean, mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(got.precision, H, rtol=1e-10)
    # scores: offset + [1, age, income] . theta
    theta = np.stack([model.coefficients(k).mean for k in user])
    np.testing.assert_allclose(model.score(data), offset + theta[:, 0] + np.einsum("nd,nd->n", X, theta[:, 1:]),
                               rtol=1e-10)


def test_logistic_model_on_dense_columns_equals_scipy_fit_with_a_separate_intercept():
    user, X, offset, weight, margin, rng = age_income(1)
    label = (rng.random(len(user)) < 1 / (1 + np.exp(-margin))).astype(float)
    model = RandomEffectModel("logistic", l2=L2, hessian="full", tol=1e-10)
    assert model.update(Dataset.from_arrays(user, label, X=X, offset=offset, weight=weight)).all_converged
    for key in np.unique(user):
        rows = user == key
        X1 = np.column_stack([np.ones(rows.sum()), X[rows]])
        expected = oracles.fit(X1, np.where(label[rows] == 1, 1.0, -1.0), weight[rows], offset[rows], np.zeros(3),
                               np.full(3, L2), L2, 0.0, "logistic")
        got = model.coefficients(key)
        np.testing.assert_array_equal(got.feature_ids, [0, 1, 2])
        np.testing.assert_allclose(got.mean, expected, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("intercept_id,ids,num_features", [
    (0, [1, 2, 3], 4),          # the default: column j is feature j + 1
    (1, [0, 2, 3], 4),          # the columns skip the intercept's id
    (3, [0, 1, 2], 4),          # the intercept after the columns
    (7, [0, 1, 2], 8),
    (None, [0, 1, 2], 3),       # no intercept: column j is feature j
])
def test_dense_columns_take_the_ids_other_than_the_intercepts(intercept_id, ids, num_features):
    X = np.array([[1.0, 2.0, 3.0], [4.0, 0.0, 6.0]])
    data = Dataset.from_arrays(["a", "b"], [1.0, 0.0], X=X, intercept_id=intercept_id)
    assert data.num_features == num_features
    np.testing.assert_array_equal(data.given_feature_ids, [ids[0], ids[1], ids[2], ids[0], ids[2]])
    np.testing.assert_array_equal(data.given_values, [1.0, 2.0, 3.0, 4.0, 6.0])
    if intercept_id is not None:
        np.testing.assert_array_equal(data.feature_ids[:4], [intercept_id, ids[0], ids[1], ids[2]])
        assert intercept_id not in set(data.given_feature_ids.tolist())


def test_dense_x_with_too_few_num_features_names_the_field():
    X = np.ones((2, 3))
    with pytest.raises(ValueError, match=r"field 'num_features': value 3 is too small for the 3 columns of X, "
                                         r"which take the feature ids 1\.\.3.*>= 4"):
        Dataset.from_arrays([1, 2], [1.0, 0.0], X=X, num_features=3)
    assert Dataset.from_arrays([1, 2], [1.0, 0.0], X=X, num_features=10).num_features == 10
    assert Dataset.from_arrays([1, 2], [1.0, 0.0], X=X, num_features=3, intercept_id=None).num_features == 3


# ----------------------------------------------------------------- CSR ids that are the intercept's


def test_csr_entries_with_the_intercept_id_raise_naming_example_entity_and_value():
    kw = dict(indptr=[0, 1, 3, 4], feature_ids=[2, 1, 0, 3], values=[1.0, 2.0, 5.0, 1.0])
    with pytest.raises(ValueError) as info:
        Dataset.from_arrays(["a", "b", "c"], [1.0, 0.0, 1.0], **kw)
    message = str(info.value)
    assert "field 'feature_ids'" in message and "value 0" in message
    assert "example 1" in message and "entity 'b'" in message and "allow_intercept_entries" in message
    with pytest.raises(ValueError, match=r"example 0, entity 'a', field 'feature_ids': value 2 is intercept_id"):
        Dataset.from_arrays(["a", "b", "c"], [1.0, 0.0, 1.0], intercept_id=2, **kw)
    # intercept_id=None (rows carry their own intercept), or an id none of the rows lists, are fine
    assert Dataset.from_arrays(["a", "b", "c"], [1.0, 0.0, 1.0], intercept_id=None, **kw).num_features == 4
    assert Dataset.from_arrays(["a", "b", "c"], [1.0, 0.0, 1.0], intercept_id=7, **kw).num_features == 8


def test_the_intercept_id_in_a_long_csr_array_is_found_past_the_first_chunk():
    n = (1 << 20) + 10
    fids = np.full(n, 5, np.int32)
    fids[-3] = 0
    fids[0] = 9  # the ids' range includes the intercept's: the chunked scan runs
    with pytest.raises(ValueError, match=f"example {n - 3}, entity 7, field 'feature_ids': value 0"):
        Dataset.from_arrays(np.full(n, 7), np.zeros(n), indptr=np.arange(n + 1), feature_ids=fids, values=np.ones(n))


def test_allow_intercept_entries_adds_them_to_the_intercept():
    """The opt-in: a CSR value listed with the intercept's id adds to its 1.0 (closed-form oracle)."""
    rng = np.random.default_rng(3)
    n = 40
    extra = np.where(rng.random(n) < 0.5, rng.normal(size=n), 0.0)  # value listed at the intercept's id
    x = rng.normal(size=n)
    y = rng.normal(size=n)
    indptr = np.arange(0, 2 * n + 1, 2)
    fids = np.tile([0, 1], n)
    values = np.column_stack([extra, x]).reshape(-1)
    data = Dataset.from_arrays(np.zeros(n, int), y, indptr=indptr, feature_ids=fids, values=values,
                               allow_intercept_entries=True)
    model = RandomEffectModel("linear", l2=L2, hessian="full", tol=1e-12)
    model.update(data)
    expected, _ = ridge(np.column_stack([1.0 + extra, x]), y, np.ones(n), np.zeros(n), L2)
    np.testing.assert_allclose(model.coefficients(0).mean, expected, rtol=1e-9)


def test_records_naming_the_intercept_feature_are_added_to_it():
    """``from_records``: the intercept's own (name, term) is explicit, so it is accepted and summed (as
    Lambda Learner does), while any other feature gets its own id."""
    imap = IndexMap()
    imap.batch_push([("age", "")])
    records = [("u", TrainingRecord(1.0, 1.0, 0.0, [Feature("intercept", "intercept", 0.5), Feature("age", "", 2.0)])),
               ("u", TrainingRecord(0.0, 1.0, 0.0, [Feature("age", "", -1.0)]))]
    data = Dataset.from_records(records, imap)
    model = RandomEffectModel("linear", l2=L2, hessian="full", tol=1e-12)
    model.update(data)
    expected, _ = ridge(np.array([[1.5, 2.0], [1.0, -1.0]]), np.array([1.0, 0.0]), np.ones(2), np.zeros(2), L2)
    np.testing.assert_allclose(model.coefficients("u").mean, expected, rtol=1e-9)


# ----------------------------------------------------------------- exploration without the intercept column


@pytest.fixture(scope="module")
def trained():
    user, X, offset, weight, margin, rng = age_income(4, users=5)
    y = margin + 0.3 * rng.normal(size=len(user))
    model = RandomEffectModel("linear", l2=L2, hessian="full", tol=1e-12)
    model.update(Dataset.from_arrays(user, y, X=X, offset=offset, weight=weight))
    return model, np.unique(user)


@pytest.mark.parametrize("order", [[0, 1, 2], [1, 0, 2], [2, 1, 0]])
def test_contexts_without_the_intercept_column_score_like_training_rows(trained, order):
    """``model.posterior`` over features that include the intercept marks its column; contexts and
    candidates given as training rows are (age, income; no intercept) score as ``[1, age, income]``."""
    model, keys = trained
    post = model.posterior(keys, np.array(order))
    assert post.intercept == order.index(0)
    rng = np.random.default_rng(5)
    others = [f for f in order if f != 0]  # the contexts' columns: the posterior's other columns, in order
    features = rng.normal(size=(4, 2))
    explicit = np.zeros((4, 3))
    explicit[:, order.index(0)] = 1.0
    for i, f in enumerate(others):
        explicit[:, order.index(f)] = features[:, i]
    np.testing.assert_array_equal(np.asarray(post.add_intercept(features)), explicit)

    means = np.stack([model.coefficients(k).mean[order] for k in keys])  # the posterior's column order
    covs = np.stack([np.linalg.inv(model.coefficients(k).precision)[np.ix_(order, order)] for k in keys])
    x1 = explicit  # NumPy oracle: the explicit rows, built above without lljax
    expected_mean = x1 @ means.T
    expected_var = np.einsum("rd,ade,re->ra", x1, covs, x1)
    mean, var = arm_moments(post, features)
    np.testing.assert_allclose(np.asarray(mean), expected_mean, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(var), expected_var, rtol=1e-9)
    np.testing.assert_allclose(np.asarray(ucb_arms(post, features, 1.5)), expected_mean + 1.5 * np.sqrt(expected_var),
                               rtol=1e-9)
    key = jax.random.key(0)
    np.testing.assert_allclose(np.asarray(thompson_arms(key, post, features)),
                               np.asarray(thompson_arms(key, post, explicit)), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(thompson_arms(key, post, features, draws=np.int64(2))),
                               np.asarray(thompson_arms(key, post, explicit, draws=2)), rtol=1e-12)

    entity = np.array([3, 0, 4])
    candidates = rng.normal(size=(3, 5, 2))
    c1 = np.zeros((3, 5, 3))
    c1[:, :, order.index(0)] = 1.0
    for i, f in enumerate(others):
        c1[:, :, order.index(f)] = candidates[:, :, i]
    exp_mean = np.einsum("rcd,rd->rc", c1, means[entity])
    exp_var = np.einsum("rcd,rde,rce->rc", c1, covs[entity], c1)
    mean, var = candidate_moments(post, entity, candidates)
    np.testing.assert_allclose(np.asarray(mean), exp_mean, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(var), exp_var, rtol=1e-9)
    np.testing.assert_allclose(np.asarray(ucb_candidates(post, entity, candidates, 2.0)),
                               exp_mean + 2.0 * np.sqrt(exp_var), rtol=1e-9)
    theta = np.asarray(sample_posterior(key, post, entity))  # columns in the posterior's order
    np.testing.assert_allclose(np.asarray(thompson_candidates(key, post, entity, candidates)),
                               np.einsum("rcd,rd->rc", c1, theta), rtol=1e-10)


def test_the_intercept_column_may_be_traced(trained):
    """Inside a caller's jit the posterior's intercept column is a traced int: same scores."""
    model, keys = trained
    post = model.posterior(keys, np.array([2, 0, 1]))
    features = np.random.default_rng(6).normal(size=(3, 2))
    eager = np.asarray(ucb_arms(post, features, 1.0))
    traced = np.asarray(jax.jit(lambda p, x: ucb_arms(p, x, 1.0))(post, features))
    np.testing.assert_allclose(traced, eager, rtol=1e-12)
    np.testing.assert_allclose(eager, np.asarray(ucb_arms(post, post.add_intercept(features), 1.0)), rtol=1e-12)


def test_posterior_marks_no_intercept_without_feature_0_and_a_hand_made_one_marks_none(trained):
    model, keys = trained
    post = model.posterior(keys, np.array([1, 2]))  # the intercept is marginalized out
    assert post.intercept is None
    with pytest.raises(ValueError, match=r"field 'contexts'.*\(1, 1\).*D=2"):
        ucb_arms(post, np.ones((1, 1)))
    with pytest.raises(ValueError, match="field 'posterior.intercept'"):
        post.add_intercept(np.ones((1, 1)))
    hand = Posterior(np.zeros((1, 2)), np.ones((1, 2)), np.arange(2))
    assert hand.intercept is None
    with pytest.raises(ValueError, match=r"field 'posterior.intercept': value 5"):
        ucb_arms(hand._replace(intercept=5), np.ones((1, 1)))


# ----------------------------------------------------------------- Dataset.with_offset


def test_with_offset_equals_a_dataset_built_with_that_offset():
    user, X, offset, weight, margin, rng = age_income(7, users=8)
    label = (rng.random(len(user)) < 1 / (1 + np.exp(-margin))).astype(float)
    base = Dataset.from_arrays(user, label, X=X, offset=offset, weight=weight)
    _ = base.feature_ids  # the written-out rows, shared with the swapped dataset
    new_offset = rng.normal(size=len(user))
    swapped = base.with_offset(new_offset)
    scratch = Dataset.from_arrays(user, label, X=X, offset=new_offset, weight=weight)
    # every array but the offset is shared, not copied
    for name in ("entity_keys", "entity", "label", "weight", "given_indptr", "given_feature_ids", "given_values",
                 "indptr", "feature_ids", "values"):
        assert getattr(swapped, name) is getattr(base, name), name
    np.testing.assert_array_equal(base.offset, offset)  # the original is unchanged
    np.testing.assert_array_equal(swapped.offset, new_offset)
    assert (swapped.num_features, swapped.intercept_id, swapped.dtype) == (scratch.num_features, 0, np.float64)

    models = [RandomEffectModel("logistic", l2=1.0, delta=0.5, hessian="full") for _ in range(2)]
    for model, data in zip(models, (swapped, scratch)):
        model.update(base)  # the same prior
        report = model.update(data)
        assert report.all_converged
    for key in np.unique(user):
        a, b = models[0].coefficients(key), models[1].coefficients(key)
        np.testing.assert_array_equal(a.mean, b.mean)
        np.testing.assert_array_equal(a.precision, b.precision)
    np.testing.assert_array_equal(models[0].score(swapped), models[1].score(scratch))
    np.testing.assert_allclose(models[0].score(swapped) - models[0].score(base), new_offset - offset, atol=1e-12)


def test_with_offset_validates_and_casts_like_the_constructor():
    data = Dataset.from_arrays(["a", "a", "b"], [1.0, 0.0, 1.0], X=np.ones((3, 2)), dtype=np.float32)
    swapped = data.with_offset([0.5, 1, 2])
    assert swapped.offset.dtype == np.float32 and swapped.offset.tolist() == [0.5, 1.0, 2.0]
    same = np.array([1.0, 2.0, 3.0], np.float32)
    assert data.with_offset(same).offset is same  # already the dataset's dtype: not copied
    with pytest.raises(ValueError, match=r"field 'offset'.*length 2.*expected 3"):
        data.with_offset([1.0, 2.0])
    with pytest.raises(ValueError, match=r"example 2, entity 'b', field 'offset': value nan must be finite"):
        data.with_offset([0.0, 0.0, np.nan])
    with pytest.raises(ValueError, match=r"example 0, entity 'a', field 'offset': value inf must be finite"):
        data.with_offset([1e300, 0.0, 0.0])  # beyond float32
    with pytest.raises(TypeError, match=r"field 'offset'.*'x'"):
        data.with_offset(["x", 0.0, 0.0])
    with pytest.raises(ValueError, match=r"field 'offset'.*\(3, 1\).*one-dimensional"):
        data.with_offset(np.zeros((3, 1)))
    np.testing.assert_array_equal(data.offset, np.zeros(3))
