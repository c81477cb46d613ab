"""Property-based tests (hypothesis) over random entity counts, sizes and feature sets.

- batched == per-entity loop: every entity of one batched update equals its own SciPy / closed-form
  fit (``tests/oracles.py``), means and full precision;
- padding invariance: weight-0 rows (any label, any offset) change nothing, and no padding leaks
  into the stored model (its feature ids are exactly the entity's subspace);
- invariance to the order of entities (keys renamed so that lanes and blocks change) and of rows;
- round trips: records -> Dataset -> records through the IndexMap, and NTV file -> Dataset.

Sizes are drawn from small ranges (1-8 entities, 1-4 rows, 0-3 features + intercept) so that every
example reuses the same few compiled block shapes (rows padded to 4, features to 1/2/4, 8 lanes).
The number of examples comes from the hypothesis profile (``ci``: 200, ``nightly``: 2000).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lljax import Dataset, Feature, IndexMap, RandomEffectModel, TrainingRecord, read_ntv_jsonl, write_ntv_jsonl
from tests import oracles

LOSSES = ("linear", "logistic", "poisson")
FEATURES = (1, 2, 3)  # global ids; 0 is the intercept
PROPERTY = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

small = st.floats(-2.0, 2.0, allow_nan=False, allow_infinity=False)


def labels_for(loss: str, n: int) -> st.SearchStrategy:
    one = {"linear": st.floats(-3.0, 3.0), "logistic": st.sampled_from([0.0, 1.0, -1.0]),
           "poisson": st.integers(0, 4).map(float)}[loss]
    return st.lists(one, min_size=n, max_size=n)


@st.composite
def entity_pieces(draw, loss: str, min_rows: int = 1, max_rows: int = 4) -> dict:
    """One entity: its feature ids (sorted subset of FEATURES) and rows (X, y, w, o)."""
    fids = sorted(draw(st.sets(st.sampled_from(FEATURES))))
    n = draw(st.integers(min_rows, max_rows))
    X = np.array(draw(st.lists(st.lists(small, min_size=len(fids), max_size=len(fids)), min_size=n, max_size=n)),
                 dtype=np.float64).reshape(n, len(fids))
    y = np.array(draw(labels_for(loss, n)))
    w = np.array(draw(st.lists(st.floats(0.25, 2.0), min_size=n, max_size=n)))
    o = np.array(draw(st.lists(st.floats(-1.0, 1.0), min_size=n, max_size=n)))
    return {"fids": fids, "X": X, "y": y, "w": w, "o": o}


@st.composite
def problems(draw, min_rows: int = 1, max_rows: int = 4) -> tuple[str, float, dict]:
    loss = draw(st.sampled_from(LOSSES))
    l2 = draw(st.floats(0.1, 3.0))
    count = draw(st.integers(1, 8))
    return loss, l2, {key: draw(entity_pieces(loss, min_rows, max_rows)) for key in range(count)}


def rows_of(entities: dict) -> list[tuple]:
    """``(key, feature ids, values, y, w, o)`` per example, entity by entity."""
    return [(key, e["fids"], e["X"][i], e["y"][i], e["w"][i], e["o"][i])
            for key, e in entities.items() for i in range(len(e["y"]))]


def dataset(rows: list[tuple]) -> Dataset:
    """CSR dataset; every row stores all of its entity's features (explicit zeros included)."""
    counts = [len(r[1]) for r in rows]
    cat = np.concatenate
    return Dataset.from_arrays(
        np.array([r[0] for r in rows]), np.array([r[3] for r in rows], np.float64),
        indptr=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        feature_ids=cat([np.asarray(r[1], np.int64) for r in rows] + [np.zeros(0, np.int64)]),
        values=cat([r[2] for r in rows] + [np.zeros(0)]), weight=np.array([r[4] for r in rows]),
        offset=np.array([r[5] for r in rows]), num_features=len(FEATURES) + 1)


def fit(loss: str, l2: float, data: Dataset) -> RandomEffectModel:
    model = RandomEffectModel(loss, l2=l2, hessian="full", tol=1e-10, max_iter=100)
    report = model.update(data)
    assert report.all_converged, report.summary()
    return model


def assert_same_model(a: RandomEffectModel, b: RandomEffectModel, rename: Any = None, rtol: float = 1e-9) -> None:
    assert len(a) == len(b)
    for key in a.entity_keys:
        x, y = a.coefficients(key), b.coefficients(key if rename is None else rename[key])
        np.testing.assert_array_equal(x.feature_ids, y.feature_ids)
        np.testing.assert_allclose(x.mean, y.mean, rtol=rtol, atol=1e-11)
        np.testing.assert_allclose(x.precision, y.precision, rtol=rtol, atol=1e-11)


def oracle_fit(X, y, w, o, l2, loss):
    """``oracles.fit`` (SciPy trust-exact), polished by NumPy Newton steps on ``oracles.objective``:
    trust-exact sometimes stops at a gradient of ~1e-8, which is 1e-5 relative on a tiny coefficient."""
    d = X.shape[1]
    args = (X, y, w, o, np.zeros(d), np.full(d, l2), l2, 0.0, loss)
    theta = oracles.fit(*args)
    for _ in range(3):
        _, gradient, hessian = oracles.objective(theta, *args)
        theta = theta - np.linalg.solve(hessian, gradient)
    return theta, oracles.objective(theta, *args)[2]


@PROPERTY
@given(problems())
def test_batched_update_equals_the_per_entity_oracle_loop(problem):
    loss, l2, entities = problem
    model = fit(loss, l2, dataset(rows_of(entities)))
    for key, e in entities.items():
        X = np.hstack([np.ones((len(e["y"]), 1)), e["X"]])
        y = np.where(e["y"] == 1, 1.0, -1.0) if loss == "logistic" else e["y"]
        expected, hessian = oracle_fit(X, y, e["w"], e["o"], l2, loss)
        got = model.coefficients(key)
        np.testing.assert_array_equal(got.feature_ids, [0, *e["fids"]])
        np.testing.assert_allclose(got.mean, expected, rtol=1e-6, atol=1e-8, err_msg=f"entity {key}")
        np.testing.assert_allclose(got.precision, hessian, rtol=1e-6, atol=1e-7 * np.abs(hessian).max())


@PROPERTY
@given(problems(max_rows=2), st.data())
def test_weight_zero_rows_are_padding(problem, data):
    """Extra rows of weight 0, with any label and an offset up to 40, change no coefficient."""
    loss, l2, entities = problem
    rows = rows_of(entities)
    padded = list(rows)
    for key, e in entities.items():
        for _ in range(data.draw(st.integers(0, 2), label=f"padding rows of {key}")):
            values = np.array(data.draw(st.lists(small, min_size=len(e["fids"]), max_size=len(e["fids"]))))
            label = data.draw(labels_for(loss, 1))[0]
            offset = data.draw(st.floats(-40.0, 40.0))
            padded.insert(data.draw(st.integers(0, len(padded))), (key, e["fids"], values, label, 0.0, offset))
    assert_same_model(fit(loss, l2, dataset(rows)), fit(loss, l2, dataset(padded)), rtol=1e-8)


@PROPERTY
@given(problems(), st.randoms(use_true_random=False))
def test_entity_order_does_not_matter(problem, random):
    """Renaming the keys by a permutation moves entities to other lanes and blocks: same models."""
    loss, l2, entities = problem
    keys = list(entities)
    renamed = dict(zip(keys, random.sample(keys, len(keys))))
    rows = rows_of(entities)
    moved = [(renamed[r[0]], *r[1:]) for r in rows]
    random.shuffle(moved)
    assert_same_model(fit(loss, l2, dataset(rows)), fit(loss, l2, dataset(moved)), rename=renamed)


@PROPERTY
@given(problems(), st.randoms(use_true_random=False))
def test_row_order_does_not_matter(problem, random):
    loss, l2, entities = problem
    rows = rows_of(entities)
    shuffled = random.sample(rows, len(rows))
    assert_same_model(fit(loss, l2, dataset(rows)), fit(loss, l2, dataset(shuffled)), rtol=1e-8)


# ----------------------------------------------------------------------------- round trips

names = st.sampled_from(["a", "b", "ads.creative.id", ""])
terms = st.sampled_from(["x", "y", "13126317", ""])
features = st.builds(Feature, names, terms, st.floats(-1e6, 1e6))
training_records = st.builds(TrainingRecord, st.floats(-5, 5), st.floats(0, 5), st.floats(-5, 5),
                             st.lists(features, max_size=5))
keyed_records = st.lists(st.tuples(st.integers(-3, 3), training_records), max_size=8)


def index_of(items: list) -> IndexMap:
    imap = IndexMap()
    imap.batch_push(f.name_term for _, r in items for f in r.features)
    return imap


@PROPERTY
@given(keyed_records)
def test_records_dataset_records_round_trip_through_the_index_map(items):
    """Every example keeps its entity, label, weight, offset and features (in order, repeats kept:
    they are summed only when packed), with the intercept first."""
    imap = index_of(items)
    assert imap.get_indices(imap.name_terms).tolist() == list(range(len(imap)))
    assert all(imap.get_nt(imap.get_index(nt)) == nt for nt in imap.name_terms)
    ds = Dataset.from_records(items, imap)
    assert ds.num_examples == len(items) and ds.num_features == len(imap)
    for i, (key, record) in enumerate(items):
        assert ds.entity_keys[ds.entity[i]] == key
        assert (ds.label[i], ds.weight[i], ds.offset[i]) == (record.raw_label, record.weight, record.offset)
        stored = slice(ds.indptr[i], ds.indptr[i + 1])
        back = [(imap.get_nt(int(f)), float(v)) for f, v in zip(ds.feature_ids[stored], ds.values[stored])]
        assert back == [(imap.intercept_nt, 1.0)] + [(f.name_term, f.value) for f in record.features]


@PROPERTY
@given(keyed_records)
def test_ntv_file_to_dataset_round_trip(items):
    buffer = io.StringIO()
    write_ntv_jsonl(buffer, items)
    buffer.seek(0)
    imap = index_of(items)
    a, b = Dataset.from_records(items, imap), Dataset.from_records(read_ntv_jsonl(buffer), imap)
    for field in ("entity_keys", "entity", "label", "weight", "offset", "indptr", "feature_ids", "values"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


@PROPERTY
@given(st.lists(st.integers(0, 6), max_size=40), st.booleans(), st.sampled_from([np.int32, np.int64]))
def test_stable_order_is_the_stable_argsort(codes, grouped, dtype):
    """Rows grouped by entity (already in order, ties included) come back as the identity without a sort; any
    other order as NumPy's stable argsort."""
    from lljax.data.arrays import group_rank, stable_order

    keys = np.sort(np.array(codes, dtype)) if grouped else np.array(codes, dtype)
    order = stable_order(keys)
    assert order.dtype == np.int64
    np.testing.assert_array_equal(order, np.argsort(keys, kind="stable"))
    if grouped:
        np.testing.assert_array_equal(order, np.arange(len(keys)))
    rank = group_rank(keys, 7)
    np.testing.assert_array_equal(rank, [int((keys[:i] == k).sum()) for i, k in enumerate(keys)])
