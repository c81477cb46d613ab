"""RandomEffectModel end to end: batched == per-entity loop, sequential updates, state safety."""

import numpy as np
import pytest

import lljax
from lljax import Dataset, RandomEffectModel, Status
from tests import oracles

F = 12  # global feature space; id 0 is the intercept


def make_data(rng, loss, sizes, feats_per_entity=4, dtype=np.float64, weights=True):
    """Examples for entities 0..U-1 with ``sizes[u]`` rows each, shuffled; each entity uses its own
    few features out of ``F`` (ids 1..F-1: dense column j is feature j + 1; id 0 is the intercept). Returns the dataset and per-entity dense pieces for the oracle."""
    U = len(sizes)
    entity = np.repeat(np.arange(U), sizes)
    n = len(entity)
    own = np.array([rng.choice(np.arange(1, F), feats_per_entity, replace=False) for _ in range(U)])
    X = np.zeros((n, F))
    cols = own[entity]
    vals = rng.normal(size=cols.shape) * (rng.random(cols.shape) < 0.7)
    np.put_along_axis(X, cols, vals, axis=1)
    offset = 0.3 * rng.normal(size=n)
    if loss == "logistic":
        label = (rng.random(n) < 0.4).astype(float)
    elif loss == "poisson":
        label = rng.poisson(1.0, size=n).astype(float)
    else:
        label = rng.normal(size=n)
    weight = rng.uniform(0.5, 2.0, size=n) if weights else np.ones(n)
    perm = rng.permutation(n)
    ds = Dataset.from_arrays(entity[perm], label[perm].astype(dtype), X=X[perm][:, 1:], weight=weight[perm],
                             offset=offset[perm], dtype=dtype)
    return ds


def entity_problem(ds, key, loss):
    """Dense (X, y, w, o) of one entity in its own sorted subspace, built from the dataset directly."""
    code = int(np.searchsorted(ds.entity_keys, key))
    rows = np.flatnonzero(ds.entity == code)
    fids = np.unique(np.concatenate([ds.feature_ids[ds.indptr[r]:ds.indptr[r + 1]] for r in rows]))
    X = np.zeros((len(rows), len(fids)))
    for i, r in enumerate(rows):
        for f, v in zip(ds.feature_ids[ds.indptr[r]:ds.indptr[r + 1]], ds.values[ds.indptr[r]:ds.indptr[r + 1]]):
            X[i, np.searchsorted(fids, f)] += v
    y = ds.label[rows].astype(float)
    if loss == "logistic":
        y = np.where(y == 1, 1.0, -1.0)
    return fids, X, y, ds.weight[rows].astype(float), ds.offset[rows].astype(float)


@pytest.mark.parametrize("loss", ["linear", "logistic", "poisson"])
def test_batched_update_equals_per_entity_oracle_loop(loss):
    rng = np.random.default_rng(10)
    sizes = np.concatenate([[1, 2, 3], rng.integers(1, 200, size=197)])  # very different sizes
    ds = make_data(rng, loss, sizes)
    model = RandomEffectModel(loss, l2=2.0, hessian="full", tol=1e-9)
    report = model.update(ds)
    assert report.status_counts["converged"] == len(sizes)
    assert report.blocks > 3  # several buckets were exercised
    for key in ds.entity_keys:
        fids, X, y, w, o = entity_problem(ds, key, loss)
        d = len(fids)
        expected = oracles.fit(X, y, w, o, np.zeros(d), np.full(d, 2.0), 2.0, 0.0, loss)
        got = model.coefficients(key)
        np.testing.assert_array_equal(got.feature_ids, fids)
        np.testing.assert_allclose(got.mean, expected, rtol=1e-6, atol=1e-8, err_msg=f"entity {key}")
        H = oracles.objective(expected, X, y, w, o, np.zeros(d), np.full(d, 2.0), 2.0, 0.0, loss)[2]
        # H at two thetas equal to ~1e-8: compare on the matrix's own scale
        np.testing.assert_allclose(got.precision, H, rtol=1e-6, atol=1e-7 * np.abs(H).max())


SEQUENTIAL_GRID = [(loss, hessian, np.float64) for loss in ("linear", "logistic", "poisson")
                   for hessian in ("none", "identity", "diagonal", "full")]
SEQUENTIAL_GRID += [(loss, "full", np.float32) for loss in ("linear", "logistic", "poisson")]


@pytest.mark.parametrize("loss,hessian,dtype", SEQUENTIAL_GRID)
def test_sequential_bayesian_update_uses_posterior_as_prior(loss, hessian, dtype):
    """Second update's prior is the first update's posterior in the form the hessian type keeps."""
    rng = np.random.default_rng(11)
    sizes = np.full(20, 24)
    first, second = make_data(rng, loss, sizes, dtype=dtype), make_data(rng, loss, sizes, dtype=dtype)
    l2, delta = 1.0, 0.7
    model = RandomEffectModel(loss, l2=l2, delta=delta, hessian=hessian)
    model.update(first)
    priors = {k: model.coefficients(k) for k in first.entity_keys}
    report = model.update(second)
    assert np.all(report.status == Status.CONVERGED)
    rtol = 1e-6 if dtype == np.float64 else 5e-3
    for key in second.entity_keys[:8]:
        fids, X, y, w, o = entity_problem(second, key, loss)
        prior = priors[key]
        union = np.union1d(fids, prior.feature_ids)
        Xu = np.zeros((len(y), len(union)))
        Xu[:, np.searchsorted(union, fids)] = X
        theta0 = np.zeros(len(union))
        theta0[np.searchsorted(union, prior.feature_ids)] = prior.mean
        P0 = np.diag(np.full(len(union), l2))
        at = np.searchsorted(union, prior.feature_ids)
        if hessian == "full":
            P0[np.ix_(at, at)] = prior.precision
        elif hessian in ("diagonal", "identity"):
            P0[at, at] = prior.precision
        expected = oracles.fit(Xu, y, w, o, theta0, P0, l2, delta, loss)
        got = model.coefficients(key)
        np.testing.assert_array_equal(got.feature_ids, union)
        np.testing.assert_allclose(got.mean, expected, rtol=rtol, atol=rtol)


def test_weight_zero_rows_and_entity_order_change_nothing():
    rng = np.random.default_rng(13)
    ds = make_data(rng, "logistic", rng.integers(1, 40, size=30))
    base = RandomEffectModel("logistic", l2=1.0, hessian="full", tol=1e-10)
    base.update(ds)
    # append weight-0 rows for existing entities (using only features they already have) and reverse the order
    n = ds.num_examples
    extra = rng.integers(0, n, size=25)
    rows = np.concatenate([np.arange(n), extra])[::-1]
    keys = ds.entity_keys[ds.entity[rows]]
    indptr = np.concatenate([[0], np.cumsum(np.diff(ds.indptr)[rows])])
    pieces = [np.arange(ds.indptr[r], ds.indptr[r + 1]) for r in rows]
    nz = np.concatenate(pieces)
    weight = np.concatenate([ds.weight, np.zeros(25)])[::-1]
    label = ds.label[rows]
    offset = ds.offset[rows] + np.concatenate([np.zeros(n), np.full(25, 40.0)])[::-1]
    padded = Dataset.from_arrays(keys, label, indptr=indptr, feature_ids=ds.feature_ids[nz], values=ds.values[nz],
                                 weight=weight, offset=offset, num_features=F, intercept_id=None)
    other = RandomEffectModel("logistic", l2=1.0, hessian="full", tol=1e-10)
    other.update(padded)
    for key in ds.entity_keys:
        np.testing.assert_allclose(other.coefficients(key).mean, base.coefficients(key).mean, rtol=1e-8, atol=1e-10)


def test_untouched_entities_are_bit_identical_and_scores_match():
    rng = np.random.default_rng(14)
    ds = make_data(rng, "logistic", rng.integers(1, 20, size=50))
    model = RandomEffectModel("logistic", l2=1.0, delta=0.5, hessian="full")
    model.update(ds)
    before = {k: model.coefficients(k) for k in model.entity_keys}
    # update only entities 0..9 with new data that also brings new features (they move to wider slabs)
    more = make_data(rng, "logistic", np.full(10, 30), feats_per_entity=9)
    model.update(more)
    for key in range(10, 50):
        got = model.coefficients(key)
        for a, b in zip(got, before[key]):
            np.testing.assert_array_equal(a, b)
    for key in range(10):
        assert set(before[key].feature_ids) <= set(model.coefficients(key).feature_ids)
    # score == offset + x . theta computed by hand
    scores = model.score(ds)
    for i in rng.integers(0, ds.num_examples, size=40):
        c = model.coefficients(ds.entity_keys[ds.entity[i]])
        sl = slice(ds.indptr[i], ds.indptr[i + 1])
        coef = dict(zip(c.feature_ids.tolist(), c.mean.tolist()))
        manual = ds.offset[i] + sum(v * coef.get(f, 0.0) for f, v in zip(ds.feature_ids[sl], ds.values[sl]))
        assert scores[i] == pytest.approx(manual, rel=1e-12, abs=1e-12)


def test_failed_lane_keeps_stored_state():
    rng = np.random.default_rng(15)
    ds = make_data(rng, "poisson", np.full(6, 10))
    model = RandomEffectModel("poisson", l2=1.0, delta=0.5, hessian="diagonal")
    model.update(ds)
    before = model.coefficients(3)
    blowup = Dataset.from_arrays(np.array([3, 3, 4]), np.array([1.0, 2.0, 0.0]), X=np.ones((3, 2)),
                                 offset=np.array([900.0, 900.0, 0.0]))
    report = model.update(blowup)
    status = dict(zip(report.entity_keys.tolist(), report.status.tolist()))
    assert status == {3: Status.NON_FINITE, 4: Status.CONVERGED}
    assert report.status_counts["non_finite"] == 1
    after = model.coefficients(3)
    for a, b in zip(after, before):
        np.testing.assert_array_equal(a, b)


def test_auc_of_trained_model_beats_offset_only():
    rng = np.random.default_rng(16)
    ds = make_data(rng, "logistic", np.full(200, 40), weights=False)
    model = RandomEffectModel("logistic", l2=1.0)
    model.update(ds)
    assert lljax.auc(model.score(ds), ds.label) > lljax.auc(ds.offset, ds.label)


# ---------------------------------------------------------------- bad input at the edge

def arrays(**overrides):
    base = dict(entity=np.array(["a", "a", "b"]), label=np.array([1.0, 0.0, 1.0]),
                X=np.array([[0.0, 1.0], [0.0, 2.0], [0.0, 3.0]]), weight=np.ones(3), offset=np.zeros(3))
    base.update(overrides)
    return base


@pytest.mark.parametrize("field,override,entity,value", [
    ("label", dict(label=np.array([1.0, np.nan, 1.0])), "a", "nan"),
    ("label", dict(label=np.array([1.0, 0.0, np.inf])), "b", "inf"),
    ("weight", dict(weight=np.array([1.0, np.nan, 1.0])), "a", "nan"),
    ("weight", dict(weight=np.array([1.0, 1.0, -0.5])), "b", "-0.5"),
    ("offset", dict(offset=np.array([-np.inf, 0.0, 0.0])), "a", "-inf"),
    ("values", dict(X=np.array([[0.0, 1.0], [0.0, 2.0], [0.0, np.nan]])), "b", "nan"),
])
def test_non_finite_and_negative_inputs_name_entity_field_value(field, override, entity, value):
    kw = arrays(**override)
    with pytest.raises(ValueError) as err:
        Dataset.from_arrays(kw.pop("entity"), kw.pop("label"), **kw)
    message = str(err.value)
    assert f"field {field!r}" in message and f"entity {entity!r}" in message and value in message


@pytest.mark.parametrize("field,override", [
    ("label", dict(label=np.ones(2))),
    ("weight", dict(weight=np.ones(4))),
    ("offset", dict(offset=np.ones(2))),
    ("X", dict(X=np.ones((2, 2)))),
])
def test_mismatched_lengths_are_rejected(field, override):
    kw = arrays(**override)
    with pytest.raises(ValueError, match=f"field '{field}'.*wrong length"):
        Dataset.from_arrays(kw.pop("entity"), kw.pop("label"), **kw)


@pytest.mark.parametrize("loss,labels,bad", [("logistic", [1.0, 2.0, 0.0], "2.0"), ("logistic", [0.5, 1.0, 0.0], "0.5"),
                                             ("poisson", [1.0, 3.0, -1.0], "-1.0")])
def test_labels_outside_the_loss_domain_are_rejected_before_anything_is_stored(loss, labels, bad):
    model = RandomEffectModel(loss)
    good = Dataset.from_arrays(np.array(["a", "b"]), np.array([1.0, 0.0]), X=np.ones((2, 2)))
    model.update(good)
    before = model.coefficients("a")
    kw = arrays(label=np.array(labels))
    with pytest.raises(ValueError) as err:
        model.update(Dataset.from_arrays(kw.pop("entity"), kw.pop("label"), **kw))
    assert "field 'label'" in str(err.value) and bad in str(err.value) and "entity" in str(err.value)
    np.testing.assert_array_equal(model.coefficients("a").mean, before.mean)


def test_other_bad_inputs():
    with pytest.raises(TypeError, match="entity"):
        Dataset.from_arrays(np.array(["a", 1], dtype=object), np.ones(2), X=np.ones((2, 2)))
    with pytest.raises(ValueError, match="feature_ids.*outside"):
        Dataset.from_arrays(np.array([1, 2]), np.ones(2), indptr=[0, 1, 2], feature_ids=[1, 7], values=[1.0, 1.0],
                            num_features=4)
    with pytest.raises(ValueError, match="empty"):
        RandomEffectModel("linear").update(Dataset.from_arrays(np.array([], dtype=np.int64), np.array([])))
    for kwargs, field in [(dict(loss="hinge"), "loss"), (dict(hessian="dense"), "hessian"), (dict(l2=-1.0), "l2"),
                          (dict(delta=1.5), "delta"), (dict(max_iter=-1), "max_iter")]:
        with pytest.raises(ValueError, match=f"field '{field}'"):
            RandomEffectModel(**kwargs)
