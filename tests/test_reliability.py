"""Reliability (issue 18): keys that round-trip (class 2), integer overflow (class 4), degenerate
posteriors (class 5), feature spaces that do not match (class 8) and streams that fail part-way (class 9).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lljax import Dataset, IndexMap, RandomEffectModel, Status, run_stream

# -- class 2: keys ------------------------------------------------------------------------------------


def tiny(keys, seed=0, loss="linear"):
    rng = np.random.default_rng(seed)
    n = len(keys)
    label = rng.normal(size=n) if loss == "linear" else (rng.random(n) < 0.5).astype(float)
    return Dataset.from_arrays(keys, label, X=rng.normal(size=(n, 2)))


@pytest.mark.parametrize("keys,message", [
    (["a\x00", "a"], "example 0, field 'entity': value 'a\\\\x00' contains a NUL character"),
    (np.array(["a\x00", "a"], dtype=object), "example 0, field 'entity': value 'a\\\\x00' contains a NUL"),
    (np.array(["x\x00y", "x"]), "field 'entity': value 'x\\\\x00y' contains a NUL character"),
    (["ok", "bad\ud800"], "value 'bad\\\\ud800' contains a lone surrogate"),
    ([2**63, 1], "example 0, field 'entity': value 9223372036854775808 is outside the int64 range"),
    ([-1, 2**64 + 5], "example 1, field 'entity': value 18446744073709551621 is outside the int64 range"),
    (np.array([5, 2**63], dtype=np.uint64), "example 1, field 'entity': value 9223372036854775808 is outside"),
])
def test_keys_that_could_not_round_trip_are_rejected_at_the_edge(keys, message):
    with pytest.raises(ValueError, match=message):
        tiny(keys)


def test_uint64_keys_below_2_63_are_accepted_as_int64_and_round_trip(tmp_path):
    keys = np.array([2**63 - 1, 0, 7], dtype=np.uint64)
    data = tiny(keys)
    assert data.entity_keys.dtype == np.int64
    model = RandomEffectModel("linear")
    model.update(data)
    model.save(tmp_path / "m.npz")
    assert RandomEffectModel.load(tmp_path / "m.npz").entity_keys == model.entity_keys


@pytest.mark.parametrize("entity,error", [
    (np.array([True, False]), TypeError), ([1.5, 2.5], TypeError), (["a\x00", "a"], ValueError),
    ([2**64, 1], ValueError),
])
def test_table_import_applies_the_edge_key_rules(entity, error):
    model = RandomEffectModel("linear", hessian="diagonal")
    with pytest.raises(error, match="field 'entity'"):
        model.import_table({"entity": entity, "feature_id": np.array([0, 1]), "mean": np.array([0.1, 0.2])})
    assert len(model) == 0 and model.dtype is None


def test_entity_from_ntv_applies_the_edge_key_rules():
    from lljax import Feature

    index_map = IndexMap()
    index_map.push(("f", "1"))
    model = RandomEffectModel("linear", hessian="diagonal", index_map=index_map)
    model.entity_from_ntv("a", [Feature("f", "1", 0.5)])
    with pytest.raises(ValueError, match="value 'a\\\\x00' contains a NUL"):  # was stored as "a", replacing it
        model.entity_from_ntv("a\x00", [Feature("f", "1", 2.0)])
    assert model.coefficients("a").mean.tolist() == [0.5]
    with pytest.raises(ValueError, match="outside the int64 range"):
        model.entity_from_ntv(2**64, [Feature("f", "1", 2.0)])


def test_a_model_whose_update_skipped_every_entity_saves_and_loads(tmp_path):
    model = RandomEffectModel("linear", min_rows=5)
    report = model.update(tiny(["a", "b"]))
    assert report.status_counts["skipped"] == 2
    model.save(tmp_path / "m.npz")  # keys were an object (pickled) array before
    loaded = RandomEffectModel.load(tmp_path / "m.npz")
    assert len(loaded) == 0 and loaded.min_rows == 5


def test_one_long_key_does_not_widen_the_others_in_the_file(tmp_path):
    keys = [f"user-{i}" for i in range(999)] + ["x" * 10_000]
    model = RandomEffectModel("linear", hessian="none")
    model.import_table({"entity": np.array(keys, dtype=object), "feature_id": np.zeros(1000, np.int64),
                        "mean": np.ones(1000)})
    model.save(tmp_path / "m.npz")
    assert os.path.getsize(tmp_path / "m.npz") < 100_000  # 38 MiB with a fixed-width unicode array
    assert RandomEffectModel.load(tmp_path / "m.npz").entity_keys == sorted(keys) == model.entity_keys


KEY_TEXT = st.text(st.characters(codec=None, blacklist_categories=()), max_size=12)
ADVERSARIAL = st.sampled_from(["", " ", "a\x00", "\x00", "\x00a", "\ud800", "é", "e\u0301", "😀", "a" * 300, "0",
                               "None", "\n", "\\x00"])
INT_KEYS = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-(2**70), 2**70), st.sampled_from([0, -1, 2**63]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keys=st.one_of(st.lists(st.one_of(KEY_TEXT, ADVERSARIAL), min_size=1, max_size=6),
                      st.lists(INT_KEYS, min_size=1, max_size=6)))
def test_property_every_key_the_edge_accepts_round_trips_exactly(tmp_path, keys):
    """Rejected at the edge with a ValueError/TypeError naming 'entity', or kept exactly (and as distinct
    keys) through update, save/load, to_table/from_table and Parquet."""
    try:
        data = tiny(keys)
    except (ValueError, TypeError) as exc:
        assert "field 'entity'" in str(exc)
        return
    distinct = sorted(set(keys))
    assert sorted(data.entity_keys.tolist()) == distinct and len(data.entity_keys) == len(distinct)
    model = RandomEffectModel("linear", hessian="diagonal")
    model.update(data)
    assert sorted(model.entity_keys) == distinct
    path = tmp_path / "k.npz"
    model.save(path)
    loaded = RandomEffectModel.load(path)
    assert loaded.entity_keys == model.entity_keys
    assert [type(k) for k in loaded.entity_keys] == [type(k) for k in model.entity_keys]
    table = model.to_table()
    assert sorted(set(RandomEffectModel.from_table(table, loss="linear", hessian="diagonal").entity_keys)) == distinct
    model.to_parquet(tmp_path / "k.parquet")
    assert sorted(RandomEffectModel.from_parquet(tmp_path / "k.parquet").entity_keys) == distinct
    for key in distinct:
        np.testing.assert_array_equal(loaded.coefficients(key).mean, model.coefficients(key).mean)


# -- class 4: integer overflow --------------------------------------------------------------------------


def test_score_with_huge_feature_ids_never_gives_an_entity_another_entitys_coefficients():
    """entity * stride + id wrapped around int64: entity 4's key equalled entity 0's (4 * 2**62 = 2**64)."""
    model = RandomEffectModel("linear", hessian="diagonal")
    model.import_table({"entity": np.array([0]), "feature_id": np.array([5]), "mean": np.array([2.0])})
    data = Dataset.from_arrays(np.arange(5), np.zeros(5), indptr=np.arange(6), feature_ids=np.full(5, 5),
                               values=np.ones(5), num_features=2**62, intercept_id=None)
    np.testing.assert_array_equal(model.score(data), [2.0, 0.0, 0.0, 0.0, 0.0])


def test_an_update_whose_entity_feature_keys_would_overflow_is_a_clear_error():
    data = Dataset.from_arrays(np.arange(5), np.zeros(5), indptr=np.arange(6), feature_ids=np.full(5, 2**62),
                               values=np.ones(5), num_features=2**62 + 1, intercept_id=None)
    model = RandomEffectModel("linear")
    with pytest.raises(ValueError, match=r"field 'feature_ids': value 4611686018427387904 \(the largest feature id\)"):
        model.update(data)
    assert model.store is None


@pytest.mark.parametrize("field,value,message", [
    ("max_iter", 2**40, "field 'max_iter': value 1099511627776 must be an int in"),
    ("l2", 10**400, "field 'l2': value 1000000000000000000000.* must be a finite number >= 0"),
    ("tol", 10**400, "field 'tol': value 1000000000000000000000.* must be a finite number > 0"),
    ("min_rows", 2**70, "field 'min_rows': value 1180591620717411303424 must be an int in"),
    ("max_rows", 2**70, "field 'max_rows'"),
    ("memory_budget", 2**70, "field 'memory_budget'"),
])
def test_hyper_parameters_that_would_overflow_are_rejected(field, value, message):
    with pytest.raises(ValueError, match=message):
        RandomEffectModel("linear", **{field: value})


# -- class 5: degenerate posteriors ---------------------------------------------------------------------


def duplicated_columns(rows=4, entities=3, seed=0):
    rng = np.random.default_rng(seed)
    n = rows * entities
    x = rng.normal(size=n)
    return Dataset.from_arrays(np.repeat(np.arange(entities), rows), 0.5 * x + 0.1 * rng.normal(size=n),
                               X=np.stack([x, x], axis=1))


@pytest.mark.parametrize("hessian", ["full", "diagonal"])
def test_l2_zero_singular_precision_is_not_stored_as_converged(hessian):
    data = duplicated_columns()
    if hessian == "diagonal":  # a feature whose values are all 0: zero precision on the diagonal
        data = Dataset.from_arrays(np.repeat(np.arange(3), 4), np.arange(12.0), indptr=np.arange(0, 25, 2),
                                   feature_ids=np.tile([1, 2], 12), values=np.tile([1.0, 0.0], 12))
    model = RandomEffectModel("linear", l2=0.0, hessian=hessian)
    report = model.update(data)
    assert report.status.tolist() == [Status.NON_FINITE] * 3
    assert report.status_counts["non_finite"] == 3 and len(model) == 0
    plain = RandomEffectModel("linear", l2=0.0, hessian="none")  # no precision kept: the fit is stored
    assert plain.update(data).status_counts["non_finite"] == 0 and len(plain) == 3


def test_l2_zero_with_identified_data_is_stored_and_explorable():
    rng = np.random.default_rng(1)
    data = Dataset.from_arrays(np.repeat(np.arange(3), 20), rng.normal(size=60), X=rng.normal(size=(60, 2)))
    model = RandomEffectModel("linear", l2=0.0, hessian="full")
    assert model.update(data).all_converged
    post = model.posterior(np.arange(3), np.arange(3))
    assert np.all(np.linalg.eigvalsh(post.precision) > 0)


@pytest.mark.parametrize("native", ["1", "0"])
def test_poisson_counts_around_1e11_reach_the_optimum(monkeypatch, native):
    monkeypatch.setenv("LLJAX_NATIVE", native)
    rng = np.random.default_rng(2)
    y = rng.poisson(1e11, 12).astype(float)
    data = Dataset.from_arrays(np.repeat(np.arange(3), 4), y, X=np.zeros((12, 1)))
    model = RandomEffectModel("poisson", l2=1.0, hessian="full", tol=1.0)
    report = model.update(data)
    assert report.all_converged, report.status  # was STALLED with theta at 0: the first step overflowed
    for key in range(3):
        np.testing.assert_allclose(model.coefficients(key).mean[0], np.log(y[4 * key: 4 * key + 4].mean()), rtol=1e-6)


# -- class 8: feature spaces ----------------------------------------------------------------------------


def test_a_dataset_built_with_another_index_map_is_rejected():
    index_map = IndexMap()
    index_map.push(("f", "1"))
    model = RandomEffectModel("linear", index_map=index_map)
    data = Dataset.from_arrays([1, 1], [0.0, 1.0], X=np.ones((2, 3)))  # ids 1..3: the map has 2 features
    with pytest.raises(ValueError, match="field 'dataset.num_features': value 4 exceeds the 2 features"):
        model.update(data)
    with pytest.raises(ValueError, match="field 'feature_id': value 3 is outside the 2 features"):
        model.import_table({"entity": [1], "feature_id": [3], "mean": [0.0]})
    assert model.store is None


# -- class 9: streams -----------------------------------------------------------------------------------


def test_a_stream_whose_batches_fail_part_way_keeps_the_finished_windows_report():
    batches = [tiny(np.repeat(np.arange(4), 3), seed=s) for s in range(3)]

    def source():
        yield batches[0]
        yield batches[1]
        raise OSError("the feed went away")

    model = RandomEffectModel("linear")
    with pytest.raises(OSError, match="the feed went away") as info:
        run_stream(model, source())
    report = info.value.stream_report
    assert [w.index for w in report.windows] == [0, 1] and "rmse" in report.overall
    replay = RandomEffectModel("linear")
    replay.update(batches[0])
    replay.update(batches[1])
    for key in range(4):
        np.testing.assert_array_equal(model.coefficients(key).mean, replay.coefficients(key).mean)
    with pytest.raises(TypeError) as bad:  # a bad item: the windows before it are kept too
        run_stream(RandomEffectModel("linear"), [batches[0], "not a dataset"])
    assert len(bad.value.stream_report.windows) == 1
