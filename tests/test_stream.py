"""Streams of mini-batches: exactness of sequential updates, active-data bounds, untouched
entities, progressive validation."""

import numpy as np
import pytest

import lljax
from lljax import Dataset, RandomEffectModel, Status
from tests import oracles

F = 10  # global features; 0 is the intercept


def batch(rng, entities, rows_per_entity, feature_pool, *, loss="linear", weight=None):
    """Examples of ``entities`` (``rows_per_entity`` each, shuffled) using features from
    ``feature_pool`` (a different pool per batch makes new features join an entity's subspace)."""
    entity = np.repeat(np.asarray(entities), rows_per_entity)
    n = len(entity)
    X = np.zeros((n, F))
    for j in feature_pool:
        X[:, j] = rng.normal(size=n) * (rng.random(n) < 0.7)
    offset = 0.2 * rng.normal(size=n)
    label = (rng.random(n) < 0.4).astype(float) if loss == "logistic" else rng.normal(size=n)
    perm = rng.permutation(n)
    w = np.ones(n) if weight is None else np.asarray(weight, float)
    # column 0 of X is never used: dense column j is feature j + 1 (id 0 is the intercept)
    return Dataset.from_arrays(entity[perm], label[perm], X=X[perm][:, 1:], offset=offset[perm], weight=w[perm],
                               num_features=F)


def concat(datasets):
    keys = np.concatenate([d.entity_keys[d.entity] for d in datasets])
    shifts = np.cumsum([0] + [d.indptr[-1] for d in datasets[:-1]])
    indptr = np.concatenate([[0]] + [d.indptr[1:] + s for d, s in zip(datasets, shifts)])
    cat = lambda f: np.concatenate([getattr(d, f) for d in datasets])  # noqa: E731
    return Dataset.from_arrays(keys, cat("label"), indptr=indptr, feature_ids=cat("feature_ids"),
                               values=cat("values"), weight=cat("weight"), offset=cat("offset"),
                               num_features=F, intercept_id=None)


def stream_batches(seed, k=4, population=300):
    """k batches over a population; each batch holds a random subset of entities and its own feature pool."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(k):
        entities = rng.choice(population, size=population // 2, replace=False)
        pool = rng.choice(np.arange(1, F), size=4, replace=False)
        out.append(batch(rng, entities, rng.integers(1, 4), pool))
    return out


def test_linear_full_k_sequential_updates_equal_one_joint_fit():
    """delta = 1, full precision, linear loss: the posterior after k mini-batches (entities in some
    batches only, features joining over time) equals one fit on all of them, to 1e-8."""
    batches = stream_batches(0)
    sequential = RandomEffectModel("linear", l2=0.7, delta=1.0, hessian="full", tol=1e-11)
    for b in batches:
        sequential.update(b)
    joint = RandomEffectModel("linear", l2=0.7, delta=1.0, hessian="full", tol=1e-11)
    joint.update(concat(batches))
    assert sorted(sequential.entity_keys) == sorted(joint.entity_keys)
    assert len(joint) > 250
    for key in joint.entity_keys:
        a, b = sequential.coefficients(key), joint.coefficients(key)
        np.testing.assert_array_equal(a.feature_ids, b.feature_ids)
        np.testing.assert_allclose(a.mean, b.mean, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(a.precision, b.precision, rtol=1e-8, atol=1e-10)


def test_linear_diagonal_sequential_is_the_diagonal_recursion():
    """Diagonal precision is an approximation: after each batch only diag(P) is kept. The result
    is exactly the recursion theta_k = argmin 1/2 ||y - X theta||^2 + 1/2 (theta - theta_{k-1})^T
    D_{k-1} (theta - theta_{k-1}), D_k = diag(X^T X + D_{k-1}) (NumPy oracle below), and it
    differs from the joint fit when features are correlated."""
    rng = np.random.default_rng(1)
    pool = [1, 2, 3]
    # correlated features: column 2 = column 1 + noise
    batches = []
    for _ in range(3):
        b = batch(rng, np.arange(20), 6, pool)
        batches.append(b)
    model = RandomEffectModel("linear", l2=1.0, delta=1.0, hessian="diagonal", tol=1e-11)
    joint = RandomEffectModel("linear", l2=1.0, delta=1.0, hessian="full", tol=1e-11)
    for b in batches:
        model.update(b)
    joint.update(concat(batches))
    gaps = []
    for key in range(20):
        fids = model.coefficients(key).feature_ids
        theta, D = np.zeros(len(fids)), np.full(len(fids), 1.0)
        for b in batches:
            X, y, o = dense_rows(b, key, fids)
            H = X.T @ X + np.diag(D)
            theta = np.linalg.solve(H, X.T @ (y - o) + D * theta)
            D = np.diag(H).copy()
        got = model.coefficients(key)
        np.testing.assert_allclose(got.mean, theta, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(got.precision, D, rtol=1e-8, atol=1e-10)
        gaps.append(np.max(np.abs(got.mean - joint.coefficients(key).mean)))
    assert max(gaps) > 1e-3  # a real approximation, not the joint fit


def test_linear_diagonal_sequential_is_exact_for_orthogonal_features():
    """When X^T X is diagonal in every batch (one-hot features, no intercept), keeping diag(P)
    loses nothing: diagonal sequential == joint fit to 1e-8."""
    rng = np.random.default_rng(2)
    batches = []
    for _ in range(3):
        n = 200
        entity = rng.integers(0, 30, n)
        col = rng.integers(1, F, n)
        X = np.zeros((n, F))
        X[np.arange(n), col] = rng.normal(size=n)
        batches.append(Dataset.from_arrays(entity, rng.normal(size=n), X=X, num_features=F, intercept_id=None))
    model = RandomEffectModel("linear", l2=1.0, delta=1.0, hessian="diagonal", tol=1e-11)
    for b in batches:
        model.update(b)
    joint = RandomEffectModel("linear", l2=1.0, delta=1.0, hessian="full", tol=1e-11)
    joint.update(concat(batches))
    for key in joint.entity_keys:
        a, b = model.coefficients(key), joint.coefficients(key)
        np.testing.assert_allclose(a.mean, b.mean, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(a.precision, np.diagonal(b.precision), rtol=1e-8, atol=1e-10)


def dense_rows(ds, key, fids):
    code = int(np.searchsorted(ds.entity_keys, key))
    rows = np.flatnonzero(ds.entity == code)
    X = np.zeros((len(rows), len(fids)))
    for i, r in enumerate(rows):
        for f, v in zip(ds.feature_ids[ds.indptr[r]:ds.indptr[r + 1]], ds.values[ds.indptr[r]:ds.indptr[r + 1]]):
            X[i, np.searchsorted(fids, f)] += v
    return X, ds.label[rows], ds.offset[rows]


def test_min_rows_skips_small_entities_and_keeps_their_state():
    rng = np.random.default_rng(3)
    model = RandomEffectModel("logistic", l2=1.0, delta=0.5, hessian="full", min_rows=3)
    first = batch(rng, np.arange(10), 4, [1, 2], loss="logistic")
    model.update(first)
    before = {k: model.coefficients(k) for k in model.entity_keys}
    # entities 0-4: 2 rows (skipped); 5-9: 5 rows (trained); 50-51: new with 1 row (skipped, not stored)
    second = concat([batch(rng, np.arange(5), 2, [1, 3], loss="logistic"),
                     batch(rng, np.arange(5, 10), 5, [1, 3], loss="logistic"),
                     batch(rng, [50, 51], 1, [1], loss="logistic")])
    report = model.update(second)
    status = dict(zip(report.entity_keys.tolist(), report.status.tolist()))
    assert all(status[k] == Status.SKIPPED for k in [0, 1, 2, 3, 4, 50, 51])
    assert all(status[k] == Status.CONVERGED for k in range(5, 10))
    assert report.status_counts["skipped"] == 7
    skipped = np.isin(report.entity_keys, [0, 1, 2, 3, 4, 50, 51])
    assert np.all(report.iterations[skipped] == 0) and np.all(np.isnan(report.loss[skipped]))
    for k in range(5):
        after = model.coefficients(k)
        np.testing.assert_array_equal(after.mean, before[k].mean)
        np.testing.assert_array_equal(after.precision, before[k].precision)
    for k in range(5, 10):
        assert 3 in model.coefficients(k).feature_ids
    assert 50 not in model and 51 not in model
    # skipped entities are still scored: stored ones with their model, new ones with the offset alone
    scores = model.score(second)
    keys = second.entity_keys[second.entity]
    np.testing.assert_array_equal(scores[np.isin(keys, [50, 51])], second.offset[np.isin(keys, [50, 51])])
    assert np.all(scores[keys == 0] != second.offset[keys == 0])


def test_an_entity_whose_weights_are_all_zero_is_skipped_by_default():
    rng = np.random.default_rng(4)
    b = batch(rng, [0, 1], 3, [1], weight=[0, 0, 0, 1, 1, 1])  # entity 0 has weights 0 only (before shuffling)
    keys = b.entity_keys[b.entity]
    zero_key = keys[b.weight == 0][0]
    assert np.all(b.weight[keys == zero_key] == 0)
    model = RandomEffectModel("linear")
    report = model.update(b)
    status = dict(zip(report.entity_keys.tolist(), report.status.tolist()))
    assert status[zero_key] == Status.SKIPPED and zero_key not in model
    assert status[1 - zero_key] == Status.CONVERGED


@pytest.mark.parametrize("loss,delta", [("linear", 1.0), ("logistic", 0.6)])
def test_max_rows_trains_large_entities_in_consecutive_rounds(loss, delta):
    """Entities above max_rows: round 1 with the model's delta, later rounds delta = 1, in row order.
    Linear + full + delta 1 equals the unbounded update; in general it equals doing the rounds by hand."""
    rng = np.random.default_rng(5)
    data = concat([batch(rng, np.arange(6), 11, [1, 2, 3], loss=loss), batch(rng, np.arange(6, 12), 2, [1, 4], loss=loss)])
    bounded = RandomEffectModel(loss, l2=1.0, delta=delta, hessian="full", tol=1e-11, max_rows=4)
    report = bounded.update(data)
    np.testing.assert_array_equal(report.rows, [11] * 6 + [2] * 6)
    assert np.all(report.iterations[:6] > report.iterations[6:])  # three rounds vs one

    rank = np.zeros(len(data), int)
    for code in range(data.num_entities):
        rows = np.flatnonzero(data.entity == code)
        rank[rows] = np.arange(len(rows))
    by_hand = RandomEffectModel(loss, l2=1.0, delta=delta, hessian="full", tol=1e-11)
    for r in range(3):
        by_hand.delta = delta if r == 0 else 1.0
        by_hand.update(data.take(rank // 4 == r))
    for key in range(12):
        a, b = bounded.coefficients(key), by_hand.coefficients(key)
        np.testing.assert_allclose(a.mean, b.mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(a.precision, b.precision, rtol=1e-9, atol=1e-12)
    if loss == "linear":
        unbounded = RandomEffectModel(loss, l2=1.0, delta=delta, hessian="full", tol=1e-11)
        unbounded.update(data)
        for key in range(12):
            np.testing.assert_allclose(bounded.coefficients(key).mean, unbounded.coefficients(key).mean,
                                       rtol=1e-8, atol=1e-10)


def test_untouched_entities_stay_bit_identical_while_others_grow_and_move():
    """Entities absent from a batch keep their arrays bit for bit, even while other entities gain
    features (and move to wider slabs) and new entities arrive."""
    rng = np.random.default_rng(6)
    model = RandomEffectModel("logistic", l2=1.0, delta=0.8, hessian="full")
    model.update(batch(rng, np.arange(40), 3, [1, 2], loss="logistic"))
    frozen = {k: model.coefficients(k) for k in range(20)}
    for step, pool in enumerate([[3, 4], [5, 6, 7], [8, 9]]):
        model.update(batch(rng, np.arange(20, 60 + 20 * step), 3, pool, loss="logistic"))
    assert len(model.coefficients(25).feature_ids) == F  # grew from 3 to all 10 features
    for k, before in frozen.items():
        after = model.coefficients(k)
        np.testing.assert_array_equal(after.feature_ids, before.feature_ids)
        assert after.mean.tobytes() == before.mean.tobytes()
        assert after.precision.tobytes() == before.precision.tobytes()


def test_an_update_touches_only_the_batch_entities():
    """The work of an update follows the batch: the same batch gives the same block plan and the same
    store writes whether the model holds 30 or 3,000 other entities."""
    rng = np.random.default_rng(7)
    b = batch(rng, np.arange(10_000, 10_030), 3, [1, 2])
    small, large = RandomEffectModel("linear"), RandomEffectModel("linear")
    large.update(batch(rng, np.arange(3000), 2, [1, 2, 3]))
    written = {}
    for name, model in (("small", small), ("large", large)):
        store_write = type(model._store or large._store).write_pending
        calls = []

        def spy(self, pending, _calls=calls, _write=store_write):
            _calls.append(sum(map(len, pending.keys)))
            return _write(self, pending)

        type(large._store).write_pending = spy
        try:
            report = model.update(b)
        finally:
            type(large._store).write_pending = store_write
        written[name] = (report.blocks, sum(calls))
    assert written["small"] == written["large"] == (written["small"][0], 30)


def test_run_stream_scores_each_window_before_training_on_it():
    rng = np.random.default_rng(8)
    batches = [batch(rng, rng.choice(100, 60, replace=False), 3, [1, 2, 3], loss="logistic") for _ in range(4)]
    model = RandomEffectModel("logistic", l2=1.0, delta=0.9, hessian="full")
    result = lljax.run_stream(model, iter(batches))
    replay = RandomEffectModel("logistic", l2=1.0, delta=0.9, hessian="full")
    pooled_scores, pooled_labels, seen = [], [], set()
    for window, b in zip(result.windows, batches):
        scores = replay.score(b)
        assert window.metrics["auc"] == pytest.approx(lljax.auc(scores, b.label))
        assert window.metrics["log_loss"] == pytest.approx(lljax.log_loss(scores, b.label))
        keys = set(b.entity_keys.tolist())
        assert window.new_entities == len(keys - seen) and window.entities == len(keys)
        seen |= keys
        replay.update(b)
        pooled_scores.append(scores)
        pooled_labels.append(b.label)
    assert result.overall["auc"] == pytest.approx(lljax.auc(np.concatenate(pooled_scores), np.concatenate(pooled_labels)))
    assert result.windows[0].metrics["log_loss"] == pytest.approx(lljax.log_loss(batches[0].offset, batches[0].label))
    for key in replay.entity_keys:
        np.testing.assert_array_equal(model.coefficients(key).mean, replay.coefficients(key).mean)
    assert "overall" in result.table() and len(result.table().splitlines()) == 6


def test_run_stream_rejects_bad_input_before_touching_the_model():
    model = RandomEffectModel("linear")
    with pytest.raises(ValueError, match="metrics"):
        lljax.run_stream(model, [], metrics=["accuracy"])
    with pytest.raises(TypeError, match="batches"):
        lljax.run_stream(model, [{"x": 1}])
    with pytest.raises(ValueError, match="batches"):
        lljax.run_stream(model, [])
    assert len(model) == 0


@pytest.mark.parametrize("field,value", [("min_rows", -1), ("min_rows", 1.5), ("max_rows", 0), ("max_rows", True)])
def test_active_data_bounds_are_validated(field, value):
    with pytest.raises(ValueError, match=field):
        RandomEffectModel("linear", **{field: value})


def test_dataset_take_selects_examples_and_reencodes_entities():
    rng = np.random.default_rng(9)
    b = batch(rng, ["a", "b", "c"], 3, [1, 2])
    keys = b.entity_keys[b.entity]
    sub = b.take(keys != "b")
    assert sub.entity_keys.tolist() == ["a", "c"] and len(sub) == 6
    np.testing.assert_array_equal(sub.entity_keys[sub.entity], keys[keys != "b"])
    np.testing.assert_array_equal(sub.label, b.label[keys != "b"])
    rows = np.flatnonzero(keys != "b")
    for i, r in enumerate(rows):
        np.testing.assert_array_equal(sub.feature_ids[sub.indptr[i]:sub.indptr[i + 1]],
                                      b.feature_ids[b.indptr[r]:b.indptr[r + 1]])
    with pytest.raises(ValueError, match="examples"):
        b.take([0, 99])
    with pytest.raises(TypeError, match="examples"):
        b.take([0.5])


def test_sequential_logistic_matches_the_numpy_oracle_across_batches():
    """Two logistic batches with delta = 0.7: the second solve uses the first posterior as prior
    (checked against the SciPy oracle on the entity's problem)."""
    rng = np.random.default_rng(10)
    b1 = batch(rng, np.arange(8), 5, [1, 2], loss="logistic")
    b2 = batch(rng, np.arange(8), 5, [2, 3], loss="logistic")
    model = RandomEffectModel("logistic", l2=1.5, delta=0.7, hessian="full", tol=1e-10)
    model.update(b1)
    prior = {k: model.coefficients(k) for k in range(8)}
    model.update(b2)
    for k in range(8):
        got = model.coefficients(k)
        fids = got.feature_ids
        theta0, P0 = np.zeros(len(fids)), 1.5 * np.eye(len(fids))
        pos = np.searchsorted(fids, prior[k].feature_ids)
        theta0[pos] = prior[k].mean
        P0[np.ix_(pos, pos)] = prior[k].precision
        X, y, o = dense_rows(b2, k, fids)
        y = np.where(y == 1, 1.0, -1.0)
        expected = oracles.fit(X, y, np.ones(len(y)), o, theta0, P0, 1.5, 0.7, "logistic")
        np.testing.assert_allclose(got.mean, expected, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("key_chunk", [7, 1 << 21])
def test_packing_paths_agree_for_small_and_huge_feature_spaces(monkeypatch, key_chunk):
    """Local subspaces come from a table of marks when the (entity, feature) key space is small and from
    chunked sorts when it is huge, reading the nonzeros ``key_chunk`` at a time; every path gives the same
    subspaces, and the same model (here: the same data declared with 10 or 10^9 features)."""
    from lljax.rounds import subspaces as _packing

    monkeypatch.setattr(_packing, "KEY_CHUNK", key_chunk)
    rng = np.random.default_rng(11)
    small = batch(rng, np.arange(30), 3, [1, 2, 5])
    huge = Dataset.from_arrays(small.entity_keys[small.entity], small.label, indptr=small.indptr,
                               feature_ids=small.feature_ids, values=small.values, offset=small.offset,
                               num_features=10**9, intercept_id=None)
    owner, prior_fids = np.array([0, 0, 29]), np.array([7, 1, 9])
    by_table = _packing.local_subspaces(small, owner, prior_fids)
    monkeypatch.setattr(_packing, "TABLE_MIN", 0)
    monkeypatch.setattr(_packing, "TABLE_PER_KEY", 0)
    by_sort = _packing.local_subspaces(small, owner, prior_fids)
    for got in (by_sort, _packing.local_subspaces(huge, owner, prior_fids)):
        np.testing.assert_array_equal(got.sizes, by_table.sizes)
        np.testing.assert_array_equal(got.feature_ids(8), by_table.feature_ids(8))
    assert set(by_table.feature_ids(8)[0]) >= {1, 7} and 9 in by_table.feature_ids(8)[29]
    models = []
    for data in (small, huge):
        model = RandomEffectModel("linear", delta=0.5)
        model.update(data)
        model.update(data)  # with stored priors in the subspaces too
        models.append(model)
    for key in range(30):
        a, b = models[0].coefficients(key), models[1].coefficients(key)
        np.testing.assert_array_equal(a.feature_ids, b.feature_ids)
        np.testing.assert_array_equal(a.mean, b.mean)
        np.testing.assert_array_equal(a.precision, b.precision)


def test_update_progress_bar_is_shown_on_request_and_never_when_disabled(capsys):
    rng = np.random.default_rng(12)
    data = batch(rng, np.arange(20), 2, [1, 2])
    RandomEffectModel("linear").update(data, progress=True)
    shown = capsys.readouterr().err
    assert "update:" in shown and "/20 [" in shown
    RandomEffectModel("linear").update(data, progress=False)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("hessian", ["full", "diagonal", "none"])
def test_an_update_that_fails_part_way_leaves_the_model_as_it_was(monkeypatch, hessian):
    """Groups of blocks are written as they finish (here each block is a group); an error after some of them
    restores the round's entities (stored ones get their coefficients back, new ones are forgotten), and the
    model then updates as if it never happened."""
    import lljax.model.random_effect as random_effect

    monkeypatch.setattr(random_effect, "_GROUP_BYTES", 1)  # one block per group: writes happen before the error

    rng = np.random.default_rng(21)
    first = batch(rng, np.arange(60), 3, [1, 2, 3], loss="logistic")
    second = batch(rng, np.arange(30, 130), 3, [2, 4, 5, 6, 7, 8, 9], loss="logistic")  # new entities, wider
    model = RandomEffectModel("logistic", hessian=hessian, memory_budget=1)  # one entity per block
    model.update(first)
    before = model._store.to_flat()
    from lljax.rounds.round import Round

    real, calls = Round.build, []

    def fail_on_the_fortieth_block(*args, **kwargs):
        calls.append(1)
        if len(calls) == 40:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    written = []
    real_write = type(model._store).write_pending
    monkeypatch.setattr(type(model._store), "write_pending",
                        lambda self, pending: (written.append(sum(map(len, pending.keys))), real_write(self, pending))[1])
    monkeypatch.setattr(Round, "build", fail_on_the_fortieth_block)
    with pytest.raises(RuntimeError, match="disk on fire"):
        model.update(second)
    assert sum(written) >= 31  # the 30 stored entities of the batch and some new ones were written before the error
    after = model._store.to_flat()
    assert len(model) == 60 and 100 not in model
    for name in ("keys", "indptr", "feature_ids", "means", "precision"):
        a, b = getattr(before, name), getattr(after, name)
        if a is None:
            assert b is None
        else:
            np.testing.assert_array_equal(a, b)
    monkeypatch.setattr(Round, "build", real)
    model.update(second)
    replay = RandomEffectModel("logistic", hessian=hessian, memory_budget=1)
    replay.update(first)
    replay.update(second)
    for key in range(130):
        a, b = model.coefficients(key), replay.coefficients(key)
        np.testing.assert_array_equal(a.feature_ids, b.feature_ids)
        np.testing.assert_array_equal(a.mean, b.mean)
        if hessian != "none":
            np.testing.assert_array_equal(a.precision, b.precision)


def test_a_group_is_written_while_the_next_groups_blocks_are_solved(monkeypatch):
    """The pipeline is not drained between groups: when a group is written, the blocks after it are already
    dispatched (up to the in-flight limit), and every group is written once, in the order its blocks were built,
    with all its entities."""
    import jax

    import lljax.model.random_effect as random_effect
    from lljax.rounds.round import Round
    from lljax.state.store import EntityStore

    monkeypatch.setattr(random_effect, "_GROUP_BYTES", 1)  # one block per group
    events: list[tuple[str, list]] = []
    real_build, real_dispatch, real_write = Round.build, random_effect.dispatch, EntityStore.write_pending

    def logged_build(work, plan, *args, **kwargs):
        events.append(("build", work.dataset.entity_keys[plan.entities].tolist()))
        return real_build(work, plan, *args, **kwargs)

    def logged_dispatch(*args, **kwargs):
        events.append(("dispatch", []))
        return real_dispatch(*args, **kwargs)

    def logged_write(store, pending):
        events.append(("write", [key for keys in pending.keys for key in keys.tolist()]))
        return real_write(store, pending)

    monkeypatch.setattr(Round, "build", logged_build)
    monkeypatch.setattr(random_effect, "dispatch", logged_dispatch)
    monkeypatch.setattr(EntityStore, "write_pending", logged_write)
    model = RandomEffectModel("logistic", memory_budget=1)  # one entity per block
    rng = np.random.default_rng(3)
    report = model.update(batch(rng, np.arange(12), 2, [1, 2], loss="logistic"))
    assert report.blocks == 12 and len(model) == 12
    kinds = [kind for kind, _ in events]
    assert kinds.count("dispatch") == 12 and kinds.count("write") == 12
    built = [keys for kind, keys in events if kind == "build"]
    written = [keys for kind, keys in events if kind == "write"]
    assert written == built and sorted(key for keys in written for key in keys) == list(range(12))
    in_flight = random_effect._IN_FLIGHT * len(jax.local_devices())
    assert kinds[:kinds.index("write")].count("dispatch") == in_flight + 1  # the next blocks are in flight


@pytest.mark.parametrize("hessian", ["full", "diagonal", "none"])
def test_blocks_read_and_written_in_groups_equal_block_by_block(monkeypatch, hessian):
    """The store is read and written once per group of blocks (``_GROUP_BYTES``): over three updates that
    add entities, widen stored ones and leave some alone, the stored models are bit-identical to reading
    and writing block by block (each block its own group)."""
    import lljax.model.random_effect as random_effect

    def run(group_bytes):
        monkeypatch.setattr(random_effect, "_GROUP_BYTES", group_bytes)
        rng = np.random.default_rng(5)
        model = RandomEffectModel("logistic", hessian=hessian, delta=0.7, memory_budget=4096)  # many blocks
        for entities, rows, pool in ((np.arange(80), 3, [1, 2, 3]), (np.arange(40, 160), 2, [2, 4, 5, 6]),
                                     (np.arange(0, 200, 3), 5, [1, 6, 7, 8, 9])):
            report = model.update(batch(rng, entities, rows, pool, loss="logistic"))
            assert report.blocks > 4
        return model._store.to_flat()

    grouped, alone = run(64 << 20), run(1)
    for name in ("keys", "indptr", "feature_ids", "means", "precision"):
        a, b = getattr(grouped, name), getattr(alone, name)
        if a is None:
            assert b is None
        else:
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_stored_pairs_of_whole_and_padded_rows():
    """The (owner, feature id, mean) pairs of gathered rows: rows of exact width whole, in order; padding entries
    (id -1) of rows from elsewhere left out; the same pairs as a loop over the rows."""
    from lljax.state.store import _stored_pairs

    parts = [
        (np.array([3, 0]), {"feature_ids": np.array([[1, 2], [5, 7]]), "means": np.array([[0.5, 1.5], [2.5, 3.5]])}),
        (np.array([1, 2]), {"feature_ids": np.array([[4, -1, 9], [6, 8, -1]]),
                            "means": np.array([[4.5, 0.0, 9.5], [6.5, 8.5, 0.0]])}),
        (np.array([4]), {"feature_ids": np.zeros((1, 0), np.int64), "means": np.zeros((1, 0))}),
    ]
    got = _stored_pairs(parts, np.dtype(np.float64))
    expected = [(int(p), int(f), float(m)) for positions, fields in parts
                for p, row, mrow in zip(positions, fields["feature_ids"], fields["means"])
                for f, m in zip(row, mrow) if f >= 0]
    assert list(zip(got.owner.tolist(), got.feature_ids.tolist(), got.means.tolist())) == expected
    assert got.owner.dtype == np.int64 and got.feature_ids.dtype == np.int64 and got.means.dtype == np.float64
