"""Persistence and exports: exact round trips, atomic saves, clear errors on bad files."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lljax import Dataset, Feature, IndexMap, ModelFileError, RandomEffectModel

F = 8


def data(seed, keys, rows=3, loss="logistic", dtype=np.float64):
    rng = np.random.default_rng(seed)
    entity = np.repeat(np.asarray(keys), rows)
    n = len(entity)
    X = rng.normal(size=(n, F)) * (rng.random((n, F)) < 0.5)
    label = (rng.random(n) < 0.5).astype(float) if loss == "logistic" else rng.normal(size=n)
    # F - 1 columns: dense column j is feature j + 1 (ids 1..F-1; id 0 is the intercept)
    return Dataset.from_arrays(entity, label.astype(dtype), X=X[:, 1:], offset=0.1 * rng.normal(size=n),
                               dtype=dtype)


def assert_same_state(a, b):
    assert a.entity_keys == b.entity_keys
    for name in ("loss", "l2", "delta", "hessian", "max_iter", "tol", "memory_budget", "min_rows", "max_rows"):
        assert getattr(a, name) == getattr(b, name), name
    assert a.dtype == b.dtype
    for key in a.entity_keys:
        x, y = a.coefficients(key), b.coefficients(key)
        assert x.feature_ids.tobytes() == y.feature_ids.tobytes()
        assert x.mean.dtype == y.mean.dtype and x.mean.tobytes() == y.mean.tobytes()
        if x.precision is None:
            assert y.precision is None
        else:
            assert x.precision.tobytes() == y.precision.tobytes()


@pytest.mark.parametrize("hessian", ["full", "diagonal", "identity", "none"])
@pytest.mark.parametrize("keys", [np.arange(12) * 7, [f"user-{i}" for i in range(12)]], ids=["int", "str"])
def test_save_load_round_trips_exactly_and_updates_identically(tmp_path, hessian, keys):
    index_map = IndexMap()
    for j in range(1, F):
        index_map.push(("f", str(j)))
    model = RandomEffectModel("logistic", l2=0.5, delta=0.7, hessian=hessian, max_iter=30, tol=1e-8, min_rows=2,
                              max_rows=5, index_map=index_map)
    model.update(data(0, keys[:8]))
    model.update(data(1, keys[4:], rows=7))  # entities grow, some move slab
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = RandomEffectModel.load(path)
    assert_same_state(model, loaded)
    assert loaded.index_map == index_map
    follow_up = data(2, keys[2:10], rows=4)
    model.update(follow_up)
    loaded.update(follow_up)
    assert_same_state(model, loaded)


def test_save_load_of_an_empty_and_a_float32_model(tmp_path):
    empty = RandomEffectModel("poisson", l2=2.0, hessian="diagonal")
    empty.save(tmp_path / "empty.npz")
    again = RandomEffectModel.load(tmp_path / "empty.npz")
    assert len(again) == 0 and again.loss == "poisson" and again.l2 == 2.0 and again.index_map is None
    model = RandomEffectModel("linear", hessian="full")
    model.update(data(3, [1, 2, 3], loss="linear", dtype=np.float32))
    model.save(tmp_path / "f32.npz")
    loaded = RandomEffectModel.load(tmp_path / "f32.npz")
    assert loaded.dtype == np.float32
    assert_same_state(model, loaded)


_KILL_MID_SAVE = textwrap.dedent("""
    import sys, time
    import numpy as np
    import numpy.lib.format as fmt
    import lljax
    model = lljax.RandomEffectModel.load(sys.argv[1])
    model.update(lljax.Dataset.from_arrays(np.arange(500), np.ones(500), X=np.ones((500, 3))))
    write_array = fmt.write_array
    def slow_write(*args, **kwargs):
        write_array(*args, **kwargs)
        print("WRITING", flush=True)   # one array is in the temporary file: now kill me
        time.sleep(60)
    fmt.write_array = slow_write
    model.save(sys.argv[1])
""")


def test_a_save_killed_midway_leaves_the_previous_file_loadable_and_intact(tmp_path):
    path = tmp_path / "model.npz"
    model = RandomEffectModel("logistic", delta=0.5)
    model.update(data(4, np.arange(20)))
    model.save(path)
    before = path.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", _KILL_MID_SAVE, str(path)], stdout=subprocess.PIPE,
                            env={**os.environ, "JAX_ENABLE_X64": "1"})
    try:
        line = proc.stdout.readline()
        assert line.strip() == b"WRITING", line
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    leftovers = [p for p in os.listdir(tmp_path) if p != "model.npz"]
    assert leftovers and all(p.startswith(".model.npz.") for p in leftovers)  # the partial temporary file
    assert path.read_bytes() == before
    assert_same_state(model, RandomEffectModel.load(path))


def rewrite(path, change):
    """Rewrite a saved model with ``change(arrays, metadata)`` applied."""
    with np.load(path) as npz:
        arrays = {name: npz[name] for name in npz.files}
    metadata = json.loads(str(arrays["metadata"]))
    change(arrays, metadata)
    arrays["metadata"] = np.array(json.dumps(metadata))
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize("case,message", [
    ("version", "format version 99"),
    ("format", "not an lljax model file"),
    ("truncated", "not a readable lljax model file"),
    ("flipped", "not a readable lljax model file"),
    ("indptr", "indptr"),
    ("precision", "precision"),
    ("text", "not a readable lljax model file"),
])
def test_loading_a_bad_file_fails_with_a_clear_error(tmp_path, case, message):
    path = tmp_path / "m.npz"
    model = RandomEffectModel("logistic")
    model.update(data(5, np.arange(6)))
    model.save(path)
    if case == "version":
        rewrite(path, lambda a, m: m.update(format_version=99))
    elif case == "format":
        rewrite(path, lambda a, m: m.update(format="something.else"))
    elif case == "truncated":
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    elif case == "flipped":
        raw = bytearray(path.read_bytes())
        with zipfile.ZipFile(path) as z:
            info = z.getinfo("means.npy")
        middle = info.header_offset + 30 + len(info.filename) + 140
        raw[middle] ^= 0xFF
        path.write_bytes(bytes(raw))
    elif case == "indptr":
        rewrite(path, lambda a, m: a.update(indptr=a["indptr"][::-1].copy()))
    elif case == "precision":
        rewrite(path, lambda a, m: a.update(precision=a["precision"][:-1]))
    else:
        path.write_text("entity,feature\n1,2\n")
    with pytest.raises(ModelFileError, match=message) as info:
        RandomEffectModel.load(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_loading_a_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        RandomEffectModel.load(tmp_path / "absent.npz")


@pytest.mark.parametrize("hessian", ["diagonal", "full", "none"])
def test_table_and_parquet_round_trip(tmp_path, hessian):
    model = RandomEffectModel("logistic", hessian=hessian, delta=0.3)
    model.update(data(6, ["a", "b", "c", "d"]))
    table = model.to_table()
    assert set(table) == {"entity", "feature_id", "mean"} | ({"variance"} if hessian != "none" else set())
    rows = sum(len(model.coefficients(k).feature_ids) for k in model.entity_keys)
    assert len(table["entity"]) == rows
    restored = RandomEffectModel.from_table(table, loss="logistic", hessian=hessian)
    model.to_parquet(tmp_path / "t.parquet")
    from_parquet = RandomEffectModel.from_parquet(tmp_path / "t.parquet", loss="logistic", hessian=hessian)
    for key in model.entity_keys:
        a, b, c = model.coefficients(key), restored.coefficients(key), from_parquet.coefficients(key)
        np.testing.assert_array_equal(a.mean, b.mean)
        np.testing.assert_array_equal(b.mean, c.mean)
        if hessian == "diagonal":
            np.testing.assert_allclose(b.precision, a.precision, rtol=1e-15)
        elif hessian == "full":  # variance = 1 / diag(P): the import is diagonal
            np.testing.assert_allclose(b.precision, np.diag(np.diagonal(a.precision)), rtol=1e-15)
        np.testing.assert_array_equal(b.precision if b.precision is not None else 0,
                                      c.precision if c.precision is not None else 0)


@pytest.mark.parametrize("column,value,message", [
    ("mean", np.nan, "mean"), ("variance", 0.0, "variance"), ("variance", np.inf, "variance"),
    ("feature_id", -3, "feature_id"),
])
def test_table_import_rejects_bad_values_naming_entity_and_column(column, value, message):
    table = {"entity": np.array([5, 5, 6]), "feature_id": np.array([0, 1, 0]), "mean": np.array([0.1, 0.2, 0.3]),
             "variance": np.array([1.0, 2.0, 3.0])}
    table[column] = table[column].astype(float if column != "feature_id" else int)
    table[column][2] = value
    with pytest.raises(ValueError, match=message) as info:
        RandomEffectModel.from_table(table)
    assert "6" in str(info.value)


def test_table_import_rejects_duplicate_pairs_and_keeps_the_stored_state():
    model = RandomEffectModel("linear", hessian="diagonal")
    model.import_table({"entity": np.array([1]), "feature_id": np.array([2]), "mean": np.array([0.5]),
                        "variance": np.array([0.25])})
    bad = {"entity": np.array([1, 3, 3]), "feature_id": np.array([2, 4, 4]), "mean": np.zeros(3),
           "variance": np.ones(3)}
    with pytest.raises(ValueError, match="feature_id.*4.*twice") as info:
        model.import_table(bad)
    assert "3" in str(info.value)
    assert model.entity_keys == [1] and model.coefficients(1).mean.tolist() == [0.5]


def test_entity_ntv_export_import_agrees_with_lambda_learner():
    from linkedin.learner.ds.feature import Feature as LLFeature
    from linkedin.learner.ds.index_map import IndexMap as LLIndexMap
    from linkedin.learner.ds.indexed_model import IndexedModel as LLModel
    from linkedin.learner.ds.representation_utils import (
        index_domain_coeffs_to_nt_domain_coeffs,
        nt_domain_coeffs_to_index_domain_coeffs,
    )
    from scipy import sparse

    index_map = IndexMap()
    ll_map = LLIndexMap()
    for nt in [("f", str(j)) for j in range(1, F)]:
        index_map.push(nt)
        ll_map.push(nt)
    model = RandomEffectModel("logistic", hessian="diagonal", delta=0.5, l2=2.0, index_map=index_map)
    model.update(data(7, [11, 12]))
    coef = model.coefficients(11)
    means, variances = model.entity_to_ntv(11)
    theta = np.zeros(F)
    theta[coef.feature_ids] = coef.mean
    diag = np.full(F, 2.0)
    diag[coef.feature_ids] = coef.precision
    ll_means, ll_variances = index_domain_coeffs_to_nt_domain_coeffs(LLModel(theta, sparse.diags(diag)), ll_map)
    assert {f.name_term: f.value for f in means} == {nt: ll_means[nt] for nt in map(index_map.get_nt, coef.feature_ids)}
    assert {f.name_term: f.value for f in variances} == {
        nt: ll_variances[nt] for nt in map(index_map.get_nt, coef.feature_ids)}

    # import into another entity; Lambda Learner's import of the same NTV lists is the oracle
    model.entity_from_ntv(99, means, variances[:-1])  # last feature without variance: precision l2
    ll = nt_domain_coeffs_to_index_domain_coeffs([LLFeature(f.name, f.term, f.value) for f in means],
                                                 [LLFeature(f.name, f.term, f.value) for f in variances[:-1]],
                                                 ll_map, 2.0)
    got = model.coefficients(99)
    np.testing.assert_array_equal(got.feature_ids, coef.feature_ids)
    np.testing.assert_allclose(got.mean, ll.theta[coef.feature_ids], rtol=1e-15)
    np.testing.assert_allclose(got.precision, ll.hessian.diagonal()[coef.feature_ids], rtol=1e-15)
    with pytest.raises(ValueError, match="means.*not in the index map") as info:
        model.entity_from_ntv(98, [Feature("nope", "x", 1.0)])
    assert "98" in str(info.value) and 98 not in model
    with pytest.raises(TypeError, match="key type str"):  # "1" and 1 are different entities: never mixed
        model.entity_from_ntv("11", means, variances)


entity_tables = st.integers(1, 12).flatmap(lambda U: st.tuples(
    st.lists(st.integers(1, 6), min_size=U, max_size=U),
    st.sampled_from([np.float32, np.float64]),
    st.sampled_from(["full", "diagonal", "none"]),
    st.booleans(),
    st.integers(0, 2**32 - 1),
))


@given(entity_tables)
def test_property_save_load_round_trip_of_any_state(tmp_path_factory, spec):
    """Any stored state (entity count, sizes, feature sets, dtype, precision kind, key type) saves
    and loads bit for bit."""
    sizes, dtype, hessian, str_keys, seed = spec
    rng = np.random.default_rng(seed)
    model = RandomEffectModel("linear", hessian=hessian)
    entity = np.repeat(np.arange(len(sizes)), sizes)
    keys = np.array([f"k{e}" for e in entity]) if str_keys else entity * 3
    fids = np.concatenate([np.sort(rng.choice(50, s, replace=False)) for s in sizes])
    table = {"entity": keys, "feature_id": fids, "mean": rng.normal(size=len(fids)).astype(dtype)}
    if hessian != "none":
        table["variance"] = rng.uniform(0.1, 3.0, size=len(fids)).astype(dtype)
    model.import_table(table)
    if hessian == "full":  # the table import is diagonal: store dense SPD precisions directly
        flat = model._store.to_flat()
        blocks = [rng.normal(size=(s, s)) for s in flat.sizes]
        dense = np.concatenate([(b @ b.T + np.eye(len(b))).ravel() for b in blocks]).astype(dtype)
        model._store.write_flat(flat._replace(precision=dense))
        assert model.coefficients(flat.keys[0]).precision.tobytes() == dense[: flat.sizes[0] ** 2].tobytes()
    path = tmp_path_factory.mktemp("prop") / "m.npz"
    model.save(path)
    assert_same_state(model, RandomEffectModel.load(path))


def test_table_names_and_terms_come_from_the_index_map():
    index_map = IndexMap()
    for j in range(1, F):
        index_map.push(("f", str(j)))
    model = RandomEffectModel("linear", hessian="diagonal", index_map=index_map)
    model.import_table({"entity": np.array([1, 1, 2]), "feature_id": np.array([0, 3, 5]),
                        "mean": np.array([0.1, 0.2, 0.3])})
    table = model.to_table()
    assert list(zip(table["name"], table["term"])) == [index_map.get_nt(int(f)) for f in table["feature_id"]]
    assert table["term"].tolist() == ["intercept", "3", "5"]
