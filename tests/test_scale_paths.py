"""The host-side fast paths added for million-entity updates give what the plain computations give."""

import numpy as np
import pytest

from lljax import Dataset, RandomEffectModel, Status
from lljax.data.dataset import _encode_entities, prepend_intercept
from lljax.rounds import plan as plan_module
from lljax.rounds.plan import padded_features, plan_blocks
from lljax.rounds.subspaces import local_subspaces
from lljax.state import store as _store
from lljax.state.store import EntityStore, pack_upper, unpack_upper


@pytest.mark.parametrize("keys", [
    np.array([3, 3, 5, 9, 9, 9]),           # sorted ints: the one-pass path
    np.array([9, 3, 3, 5, 9]),              # unsorted: np.unique
    np.array([2, 2, 7], np.uint8),
    np.array([-4, -4, 0, 11], np.int32),
    np.array(["b", "a", "b"]),
    np.array([7]),
])
def test_entity_codes_equal_numpy_unique(keys):
    got_keys, got_codes = _encode_entities(keys)
    want_keys, want_codes = np.unique(keys, return_inverse=True)
    np.testing.assert_array_equal(got_keys, want_keys)
    # integer keys are held as int64 (every accepted key round-trips through save/load); strings as given
    assert got_keys.dtype == (np.dtype(np.int64) if keys.dtype.kind in "iu" else want_keys.dtype)
    np.testing.assert_array_equal(got_codes, want_codes)
    assert got_codes.dtype == np.int64


@pytest.mark.parametrize("id_dtype", [np.int32, np.int64])
def test_prepend_intercept_equals_a_row_by_row_insert(id_dtype):
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 5, 200)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    fids = rng.integers(1, 50, indptr[-1]).astype(id_dtype)
    vals = rng.standard_normal(indptr[-1])
    new_indptr, new_fids, new_vals = prepend_intercept(indptr, fids, vals, 0)
    assert new_fids.dtype == id_dtype
    for r in range(len(lengths)):
        row = slice(new_indptr[r], new_indptr[r + 1])
        np.testing.assert_array_equal(new_fids[row], np.r_[0, fids[indptr[r]:indptr[r + 1]]])
        np.testing.assert_array_equal(new_vals[row], np.r_[1.0, vals[indptr[r]:indptr[r + 1]]])


def test_int32_feature_ids_stay_int32_and_train_the_same_model():
    rng = np.random.default_rng(1)
    n = 300
    entity = np.sort(rng.integers(0, 40, n))
    lengths = rng.integers(1, 4, n)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    fids = rng.integers(1, 30, indptr[-1])
    vals = rng.standard_normal(indptr[-1])
    label = (rng.random(n) < 0.5).astype(float)
    models = []
    for ids in (fids.astype(np.int32), fids.astype(np.int64)):
        data = Dataset.from_arrays(entity, label, indptr=indptr, feature_ids=ids, values=vals, num_features=30)
        assert data.feature_ids.dtype == ids.dtype
        model = RandomEffectModel("logistic", hessian="full")
        model.update(data)
        models.append(model)
    for key in np.unique(entity):
        a, b = models[0].coefficients(key), models[1].coefficients(key)
        np.testing.assert_array_equal(a.mean, b.mean)
        np.testing.assert_array_equal(a.precision, b.precision)


def test_packed_upper_triangle_round_trip():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((5, 7, 7))
    sym = a + a.transpose(0, 2, 1)
    packed = pack_upper(sym)
    assert packed.shape == (5, 28)
    np.testing.assert_array_equal(unpack_upper(packed, 7), sym)


@pytest.mark.parametrize("precision", ["full", "diagonal", None])
def test_store_keeps_every_entity_across_chunks_and_width_changes(monkeypatch, precision):
    """Slabs of exact widths, growing by small chunks: entities written in several batches, some of them
    re-written with another width (moving slab), read back exactly."""
    monkeypatch.setattr(_store, "_FIRST_CHUNK_ROWS", 2)
    monkeypatch.setattr(_store, "_CHUNK_BYTES", 512)
    rng = np.random.default_rng(3)
    store = EntityStore(np.float64, precision)
    expected = {}
    for _ in range(6):
        keys = rng.choice(60, 15, replace=False)
        W = 8
        d = rng.integers(1, W + 1, len(keys))
        fids = np.full((len(keys), W), -1)
        means = np.zeros((len(keys), W))
        prec = np.zeros((len(keys), W, W)) if precision == "full" else np.zeros((len(keys), W))
        for i, k in enumerate(keys):
            f = np.sort(rng.choice(100, d[i], replace=False))
            m = rng.standard_normal(d[i])
            fids[i, :d[i]], means[i, :d[i]] = f, m
            if precision == "full":
                a = rng.standard_normal((d[i], d[i]))
                p = a @ a.T + np.eye(d[i])
                prec[i, :d[i], :d[i]] = p
            else:
                p = rng.random(d[i]) + 0.5
                prec[i, :d[i]] = p
            expected[int(k)] = (f, m, p if precision else None)
        store.write(keys, store.lookup(keys), fids, means, None if precision is None else prec)
    assert len(store) == len(expected)
    for key, (f, m, p) in expected.items():
        got = store.get(key)
        np.testing.assert_array_equal(got.feature_ids, f)
        np.testing.assert_array_equal(got.mean, m)
        if precision is None:
            assert got.precision is None
        else:
            np.testing.assert_array_equal(got.precision, p)
    flat = store.to_flat()
    again = EntityStore.from_flat(flat, np.float64, precision).to_flat()
    for a, b in zip(flat, again):
        if a is not None:
            np.testing.assert_array_equal(a, b)
    # The stored form (a full precision's upper triangle, row by row) out and back in.
    upper = store.to_flat(precision_form="upper")
    sizes, start, ustart = flat.sizes, flat.precision_indptr, upper.precision_indptr
    if precision == "full":
        np.testing.assert_array_equal(np.diff(ustart), sizes * (sizes + 1) // 2)
        for u, d in enumerate(sizes):
            square = flat.precision[start[u]:start[u + 1]].reshape(d, d)
            np.testing.assert_array_equal(upper.precision[ustart[u]:ustart[u + 1]], square[np.triu_indices(d)])
    elif precision == "diagonal":
        np.testing.assert_array_equal(upper.precision, flat.precision)
    from_upper = EntityStore.from_flat(upper, np.float64, precision).to_flat()
    for a, b in zip(flat, from_upper):
        if a is not None:
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="'precision_form'"):
        store.to_flat(precision_form="lower")
    with pytest.raises(ValueError, match="'precision_form'"):
        EntityStore.from_flat(upper._replace(precision_form="Upper"), np.float64, precision)


def test_padded_feature_counts():
    got = padded_features(np.array([1, 2, 3, 5, 8, 9, 12, 13, 16, 17, 24, 25, 33, 48, 49, 64, 65]))
    np.testing.assert_array_equal(got, [1, 2, 4, 8, 8, 12, 12, 16, 16, 24, 24, 32, 48, 48, 64, 64, 96])


def test_large_buckets_of_uncompiled_blocks_keep_their_feature_counts():
    # 1100 entities of 9 features and 50 of 10 (both padded to 12), 1100 of 9 with more rows, 1100 of 20 (24)
    features = np.array([9] * 1100 + [10] * 50 + [9] * 1100 + [20] * 1100)
    rows = np.array([3] * 1150 + [40] * 1100 + [3] * 1100)

    def planned(compiles):
        plans = plan_blocks(rows, features, 1 << 30, lambda r, f: ("newton", None, 1000), compiles)
        widths = np.zeros(len(features), np.int64)
        for plan in plans:
            widths[plan.entities] = plan.features
        return widths

    padded = padded_features(features)
    np.testing.assert_array_equal(planned(None), padded)  # the default: every block may be compiled
    np.testing.assert_array_equal(planned(lambda r, f: True), padded)
    exact = planned(lambda r, f: False)
    np.testing.assert_array_equal(exact, np.where(features == 10, 12, features))  # 50 < EXACT_MIN_LANES: padded
    only_long = planned(lambda r, f: r < 64)  # the blocks of 4 padded rows are compiled, those of 64 are not
    np.testing.assert_array_equal(only_long, np.where(rows == 40, features, padded))
    # two entities of 300,000 features: too many (width, count) keys to count in place (the sorted path)
    wide = plan_module._unpadded_where_many(np.r_[np.full(len(rows), 4), 4, 4], np.r_[padded, 393_216, 393_216],
                                            np.r_[features, 300_000, 300_000], lambda r, f: False)
    np.testing.assert_array_equal(wide, np.r_[np.where(features == 10, 12, features), 393_216, 393_216])


def test_a_round_takes_the_row_counts_it_is_given_only_if_they_fit():
    """``Round.prepare(rows=...)`` (the update passes its own count of each entity's rows) groups the rows as
    without it; counts of another shape, or that do not add up to the rows, are refused."""
    from lljax.rounds.round import Round

    rng = np.random.default_rng(2)
    data = Dataset.from_arrays(rng.integers(0, 5, 40), rng.normal(size=40), X=rng.normal(size=(40, 3)))
    counts = np.bincount(data.entity, minlength=data.num_entities)
    given, own = Round.prepare(data, "linear", None, 1.0, rows=counts), Round.prepare(data, "linear", None, 1.0)
    np.testing.assert_array_equal(given.row_start, own.row_start)
    np.testing.assert_array_equal(given.row_order, own.row_order)
    with pytest.raises(ValueError, match="rows: expected each of the 5"):
        Round.prepare(data, "linear", None, 1.0, rows=counts[:4])
    wrong = counts.copy()
    wrong[0] += 1
    with pytest.raises(ValueError, match="add up to 41, not the 40"):
        Round.prepare(data, "linear", None, 1.0, rows=wrong)


def test_blocks_that_compile_nothing_have_as_many_lanes_as_entities():
    """Compiled blocks have a power of two of lanes (a cut bucket's last block padded to full size); blocks that
    compile nothing have their own entity count, the last one of a cut bucket included."""
    features, rows = np.array([9] * 1500 + [20] * 37), np.full(1537, 3)

    def lanes(compiles):
        plans = plan_blocks(rows, features, 1024 * 1000, lambda r, f: ("newton", None, 1000), compiles)
        assert sorted(np.concatenate([p.entities for p in plans]).tolist()) == list(range(1537))
        return sorted((p.features, p.lanes, len(p.entities)) for p in plans)

    assert lanes(lambda r, f: True) == [(12, 1024, 476), (12, 1024, 1024), (24, 64, 37)]
    assert lanes(lambda r, f: False) == [(9, 476, 476), (9, 1024, 1024), (24, 37, 37)]


@pytest.mark.parametrize("hessian", ["full", "diagonal"])
def test_unpadded_blocks_solve_as_padded_ones(monkeypatch, hessian):
    """Every bucket unpadded (odd feature counts: the kernel's variant for any count, and panels narrower than 4)
    against the padded plan: the same problems, so the same statuses and, to the solver's tolerance, the same
    means and precisions (padding features only shift the damping, which scales with the largest diagonal)."""
    rng = np.random.default_rng(8)
    U = 300
    rows_per = rng.integers(1, 20, U)
    entity = np.repeat(np.arange(U), rows_per)
    n = len(entity)
    own = [rng.choice(np.arange(1, 60), rng.integers(1, 14), replace=False) for _ in range(U)]
    nnz = np.array([len(own[e]) for e in entity])
    fids = np.concatenate([own[e] for e in entity])
    data = Dataset.from_arrays(entity, (rng.random(n) < 0.4).astype(float), indptr=np.r_[0, np.cumsum(nnz)],
                               feature_ids=fids, values=rng.normal(size=len(fids)), num_features=60,
                               intercept_id=0)

    def fit(min_lanes: int):
        monkeypatch.setattr(plan_module, "EXACT_MIN_LANES", min_lanes)
        model = RandomEffectModel("logistic", l2=0.5, hessian=hessian)
        reports = [model.update(data), model.update(data)]  # the second with stored (full) priors
        table = model.to_table()  # in the store's order, which follows the blocks': sorted by entity and feature
        order = np.lexsort((table["feature_id"], table["entity"]))
        return {name: np.asarray(table[name])[order] for name in ("entity", "feature_id", "mean", "variance")}, \
            reports

    (padded, padded_reports), (exact, exact_reports) = fit(1 << 30), fit(1)
    for a, b in zip(padded_reports, exact_reports):
        np.testing.assert_array_equal(a.status, b.status)
        assert set(a.status.tolist()) == {Status.CONVERGED}
    np.testing.assert_array_equal(padded["entity"], exact["entity"])
    np.testing.assert_array_equal(padded["feature_id"], exact["feature_id"])
    np.testing.assert_allclose(exact["mean"], padded["mean"], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(exact["variance"], padded["variance"], rtol=1e-8, atol=1e-12)


def test_block_restricted_lookups_equal_global_ones():
    rng = np.random.default_rng(4)
    n = 400
    entity = rng.integers(0, 50, n)
    lengths = rng.integers(1, 5, n)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    fids = rng.integers(1, 1000, indptr[-1])
    data = Dataset.from_arrays(entity, np.zeros(n), indptr=indptr, feature_ids=fids, values=np.ones(len(fids)),
                               num_features=1000)
    sub = local_subspaces(data, np.array([3, 3]), np.array([999, 5]))
    ents = np.array([3, 17, 4, 40])  # any order, as a block's lanes
    local = sub.restrict(ents)
    np.testing.assert_array_equal(local.sizes, sub.sizes[ents])
    ids = local.feature_ids(int(local.sizes.max()))
    for lane, e in enumerate(ents):
        mine = sub.pair_keys[sub.start[e]:sub.start[e + 1]] % sub.stride
        np.testing.assert_array_equal(ids[lane, :len(mine)], mine)
        np.testing.assert_array_equal(local.local_index(np.full(len(mine), lane), mine), np.arange(len(mine)))
        np.testing.assert_array_equal(sub.local_index(np.full(len(mine), e), mine), np.arange(len(mine)))
    assert {5, 999} <= set(ids[0])


def test_guessed_local_columns_equal_searched_ones():
    """The rank-in-row guess is checked pair by pair: rows listing the whole subspace in order, subsets,
    unsorted rows and repeated features all get the searched column."""
    rng = np.random.default_rng(5)
    rows = []
    for entity in range(30):
        subspace = np.sort(rng.choice(200, rng.integers(1, 8), replace=False))
        for _ in range(rng.integers(1, 6)):
            kind = rng.integers(4)
            if kind == 0:
                row = subspace  # the whole subspace, in order: every guess right
            elif kind == 1:
                row = np.sort(rng.choice(subspace, rng.integers(1, len(subspace) + 1), replace=False))
            elif kind == 2:
                row = rng.permutation(subspace)
            else:
                row = np.concatenate([subspace, subspace[-1:]])  # a repeated last feature: rank == size
            rows.append((entity, row))
    entity = np.repeat([e for e, _ in rows], [len(r) for _, r in rows])
    fids = np.concatenate([r for _, r in rows])
    rank = np.concatenate([np.arange(len(r)) for _, r in rows])
    lengths = [len(r) for _, r in rows]
    data = Dataset.from_arrays([e for e, _ in rows], np.zeros(len(rows)), indptr=np.r_[0, np.cumsum(lengths)],
                               feature_ids=fids, values=np.ones(len(fids)), num_features=200, intercept_id=None)
    sub = local_subspaces(data, np.zeros(0, np.int64), np.zeros(0, np.int64))
    searched = sub.local_index(entity, fids)
    np.testing.assert_array_equal(sub.local_index(entity, fids, guess=rank), searched)
    np.testing.assert_array_equal(sub.pair_keys[sub.start[entity] + searched] % sub.stride, fids)


def test_a_model_reuses_its_block_buffers_across_updates_and_copies_do_not_carry_them():
    """After an update the model keeps some free block buffers (at most _KEPT_BUFFER_BYTES) for the next one; a
    pickled or deep-copied model has none; every update gives what a model without kept buffers gives."""
    import copy
    import pickle

    from lljax.model import random_effect
    from lljax.rounds.buffers import BufferPool

    rng = np.random.default_rng(4)

    def batch():
        entity = rng.integers(0, 400, 3000)
        return Dataset.from_arrays(entity, (rng.random(3000) < 0.5).astype(float), X=rng.normal(size=(3000, 5)))

    batches = [batch() for _ in range(4)]
    model = RandomEffectModel("logistic", l2=1.0, delta=0.8, hessian="full")
    taken = []
    take = BufferPool.take
    for data in batches[:2]:
        kept = {id(raw) for raw in model._buffers._free}
        taken.clear()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(BufferPool, "take", lambda self, n: taken.append(take(self, n)) or taken[-1])
            model.update(data)
        assert 0 < model._buffers.free_bytes <= random_effect._KEPT_BUFFER_BYTES
    assert kept and any(raw is not None and id(raw) in kept for raw in taken)  # the 2nd update reused the 1st's
    copies = [pickle.loads(pickle.dumps(model)), copy.deepcopy(model)]
    assert all(c._buffers.free_bytes == 0 for c in copies)
    fresh = RandomEffectModel("logistic", l2=1.0, delta=0.8, hessian="full")
    for data in batches[:2]:
        fresh.update(data)
        fresh._buffers.trim(0)  # a model that keeps nothing between updates
    for data in batches[2:]:
        for m in [model, fresh, *copies]:
            m.update(data)
        fresh._buffers.trim(0)
    reference = fresh.to_table()
    for m in [model, *copies]:
        table = m.to_table()
        for name in reference:
            np.testing.assert_array_equal(table[name], reference[name], err_msg=name)


@pytest.mark.parametrize("hessian", ["full", "diagonal"])
def test_rows_not_grouped_by_entity_train_the_same_model(hessian):
    """The same examples with the entities' rows interleaved (each entity's in the same order) and grouped: the keys
    encoded by the hash table, the rows grouped by the counting sort, the subspaces found with rows anywhere give
    the same model bit for bit, in a first update and in one on top of it."""
    rng = np.random.default_rng(12)
    U = 3000
    rows_per = rng.integers(1, 30, U)
    keys = rng.choice(10**15, U, replace=False) - 5 * 10**14  # large and negative keys too
    entity = np.repeat(keys, rows_per)
    n = len(entity)
    nnz = rng.integers(1, 6, n)
    indptr = np.r_[0, np.cumsum(nnz)]
    fids = rng.integers(1, 60, indptr[-1])
    values = rng.normal(size=indptr[-1])
    label = (rng.random(n) < 0.4).astype(float)
    place = rng.random(n)  # interleave the entities' rows, each entity's kept in order
    for start, count in zip(np.r_[0, np.cumsum(rows_per)[:-1]], rows_per):
        place[start:start + count] = np.sort(place[start:start + count])
    order = np.argsort(place)
    assert (np.diff(entity[order]) != 0).mean() > 0.9  # (an entity's rows are no longer next to each other)
    lengths = nnz[order]
    new_indptr = np.r_[0, np.cumsum(lengths)]
    entries = np.repeat(indptr[:-1][order] - new_indptr[:-1], lengths) + np.arange(new_indptr[-1])
    grouped = Dataset.from_arrays(entity, label, indptr=indptr, feature_ids=fids, values=values, num_features=60)
    mixed = Dataset.from_arrays(entity[order], label[order], indptr=new_indptr, feature_ids=fids[entries],
                                values=values[entries], num_features=60)
    np.testing.assert_array_equal(mixed.entity_keys, grouped.entity_keys)
    models = [RandomEffectModel("logistic", l2=0.5, delta=0.9, hessian=hessian) for _ in range(2)]
    # the second update: every third example, the same ones in both orders
    for model, data, third in zip(models, (grouped, mixed), (np.arange(0, n, 3), np.flatnonzero(order % 3 == 0))):
        model.update(data)
        model.update(data.take(third))
    a, b = (model.store.to_flat() for model in models)
    for field in a._fields:
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
