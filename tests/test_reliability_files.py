"""Reliability of model files (issue 18, class 1 and item 7; issue 17, files and metadata).

A crafted or damaged file never loads silently: every case is a ``ModelFileError`` naming the file and
the array or field, raised before anything much larger than the file is allocated. Saves write
through symbolic links and give the new file the umask's permissions; Parquet exports keep the
hyper-parameters.
"""

from __future__ import annotations

import json
import os
import stat
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lljax import Dataset, IndexMap, ModelFileError, RandomEffectModel

F = 5


def trained(hessian="full", keys=None, seed=0, index_map=None):
    rng = np.random.default_rng(seed)
    keys = list(range(6)) if keys is None else keys
    entity = np.repeat(np.asarray(keys, dtype=object if isinstance(keys[0], str) else None), 3)
    n = len(entity)
    X = rng.normal(size=(n, F - 1)) * (rng.random((n, F - 1)) < 0.6)
    model = RandomEffectModel("logistic", l2=1.0, delta=0.5, hessian=hessian, index_map=index_map)
    model.update(Dataset.from_arrays(entity, (rng.random(n) < 0.5).astype(float), X=X))
    return model


def same_state(a, b):
    assert a.entity_keys == b.entity_keys
    assert [type(k) for k in a.entity_keys] == [type(k) for k in b.entity_keys]
    for name in ("loss", "l2", "delta", "hessian", "max_iter", "tol", "memory_budget", "min_rows", "max_rows"):
        assert getattr(a, name) == getattr(b, name), name
    assert a.dtype == b.dtype and a.index_map == b.index_map
    for key in a.entity_keys:
        x, y = a.coefficients(key), b.coefficients(key)
        assert x.feature_ids.tobytes() == y.feature_ids.tobytes() and x.mean.tobytes() == y.mean.tobytes()
        assert (x.precision is None) == (y.precision is None)
        if x.precision is not None:
            assert x.precision.tobytes() == y.precision.tobytes()


def read_npz(path):
    with np.load(path) as npz:
        arrays = {name: npz[name] for name in npz.files}
    return arrays, json.loads(str(arrays["metadata"]))


def write_npz(path, arrays, metadata):
    arrays = dict(arrays, metadata=np.array(json.dumps(metadata)))
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def first_full_matrix(arrays):
    d = int(arrays["indptr"][1])
    return d, arrays["precision"][: d * d].reshape(d, d).copy()


def _nonsymmetric(a, m):
    d, p = first_full_matrix(a)
    p[0, 1] += 1.0
    a["precision"][: d * d] = p.ravel()


def _not_psd(a, m):
    d, p = first_full_matrix(a)
    a["precision"][: d * d] = (-p).ravel()


def _dup_fid(a, m):
    a["feature_ids"][1] = a["feature_ids"][0]


def _unsorted(a, m):
    f = a["feature_ids"]
    f[0], f[1] = f[1], f[0]


def _dup_key(a, m):
    a["keys"][1] = a["keys"][0]


# (case, change(arrays, metadata), hessian, expected message fragment)
CRAFTED = [
    ("mean NaN", lambda a, m: a["means"].__setitem__(2, np.nan), "full", r"entity \d+, field 'means': value nan must be finite"),
    ("mean inf", lambda a, m: a["means"].__setitem__(4, np.inf), "full", "field 'means': value inf must be finite"),
    ("precision NaN", lambda a, m: a["precision"].__setitem__(0, np.nan), "full",
     r"entity \d+, field 'precision': value nan must be finite"),
    ("precision inf (diagonal)", lambda a, m: a["precision"].__setitem__(1, np.inf), "diagonal",
     "field 'precision': value inf must be finite"),
    ("precision negative (diagonal)", lambda a, m: a["precision"].__setitem__(1, -2.0), "diagonal",
     "field 'precision': value -2.0 must be >= 0"),
    ("precision not symmetric", _nonsymmetric, "full", "must be symmetric"),
    ("precision not PSD", _not_psd, "full", "smallest eigenvalue .* must be positive semi-definite"),
    ("negative feature id", lambda a, m: a["feature_ids"].__setitem__(0, -1), "full",
     r"entity \d+, field 'feature_ids': value -1 must be >= 0"),
    ("duplicate feature ids", _dup_fid, "full", "field 'feature_ids': .* must be sorted and unique"),
    ("unsorted feature ids", _unsorted, "full", "field 'feature_ids': .* must be sorted and unique"),
    ("means int64", lambda a, m: a.update(means=np.arange(len(a["means"]))), "full",
     "field 'means': value '<array of dtype int64>' must have dtype float64"),
    ("means float16", lambda a, m: a.update(means=a["means"].astype(np.float16)), "full", "dtype float16"),
    ("means complex", lambda a, m: a.update(means=a["means"].astype(complex)), "full", "dtype complex128"),
    ("precision float32 in a float64 model", lambda a, m: a.update(precision=a["precision"].astype(np.float32)),
     "full", "field 'precision': value '<array of dtype float32>' must have dtype float64"),
    ("float keys", lambda a, m: a.update(keys=a["keys"].astype(float)), "full",
     "field 'keys': value '<array of dtype float64>' must have dtype int64"),
    ("object keys (a pickle)", lambda a, m: a.update(keys=a["keys"].astype(object)), "full",
     "array 'keys': dtype object is not allowed"),
    ("duplicate keys", _dup_key, "full", r"field 'keys': value \d+ appears twice"),
    ("unknown dtype name", lambda a, m: m.update(dtype="float16"), "full", "field 'dtype': value 'float16'"),
    ("bogus dtype name", lambda a, m: m.update(dtype="bogus"), "full", "field 'dtype': value 'bogus'"),
    ("precision kind unknown", lambda a, m: m.update(precision="sparse"), "full", "field 'precision': value 'sparse'"),
    ("precision kind not the hessian's", lambda a, m: (m.update(precision="diagonal"),
                                                       a.update(precision=np.abs(a["means"]) + 1)),
     "full", "field 'precision': value 'diagonal' does not match hessian='full'"),
    ("index map without name_terms", lambda a, m: m["index_map"].pop("name_terms"), "full",
     "field 'index_map'"),
    ("index map name not a string", lambda a, m: m["index_map"]["name_terms"][1].__setitem__(0, 3), "full",
     "field 'index_map.name_terms'"),
    ("feature id beyond the index map", lambda a, m: m["index_map"]["name_terms"].pop(), "full",
     "is outside the index map's 4 features"),
    ("hyper-parameter missing", lambda a, m: m["hyperparameters"].pop("l2"), "full", "field 'hyperparameters'"),
    ("hyper-parameter invalid", lambda a, m: m["hyperparameters"].update(max_iter=2**40), "full",
     "field 'hyperparameters'.*max_iter"),
    ("num_entities wrong", lambda a, m: m.update(num_entities=m["num_entities"] + 1), "full",
     "do not match num_entities=7"),
    ("num_entities not an int", lambda a, m: m.update(num_entities="6"), "full", "field 'num_entities'"),
    ("key_type unknown", lambda a, m: m.update(key_type="float"), "full", "field 'key_type'"),
    ("indptr decreasing", lambda a, m: a.update(indptr=a["indptr"][::-1].copy()), "full", "field 'indptr'"),
    ("precision too short", lambda a, m: a.update(precision=a["precision"][:-1]), "full", "field 'precision'"),
    ("precision present without a kind", lambda a, m: m.update(precision=None), "none",
     "array 'precision': present"),
    ("unexpected entry", lambda a, m: a.update(extra=np.zeros(3)), "full", "unexpected entry 'extra.npy'"),
    ("means 2-D", lambda a, m: a.update(means=a["means"].reshape(1, -1)), "full", "must be one-dimensional"),
]


@pytest.mark.parametrize("case,change,hessian,message", CRAFTED, ids=[c[0] for c in CRAFTED])
def test_a_crafted_file_is_a_model_file_error_naming_the_file_and_the_array(tmp_path, case, change, hessian,
                                                                            message):
    index_map = IndexMap()
    for j in range(1, F):
        index_map.push(("f", str(j)))
    path = tmp_path / "m.npz"
    model = trained("full" if case == "precision present without a kind" else hessian, index_map=index_map)
    model.save(path)
    arrays, metadata = read_npz(path)
    if case == "precision present without a kind":
        metadata["hyperparameters"]["hessian"] = "none"
    change(arrays, metadata)
    write_npz(path, arrays, metadata)
    with pytest.raises(ModelFileError, match=message) as info:
        RandomEffectModel.load(path)
    assert str(path) in str(info.value)


def test_string_key_files_reject_bad_utf8_nul_and_lengths_that_do_not_add_up(tmp_path):
    path = tmp_path / "s.npz"
    trained(keys=["a", "bb", "ccc"]).save(path)
    arrays, metadata = read_npz(path)
    assert "keys" not in arrays and arrays["key_text"].dtype == np.uint8
    for change, message in [
        (lambda a: a["key_text"].__setitem__(0, 0xFF), "field 'key_text'.*is not valid UTF-8"),
        (lambda a: a["key_text"].__setitem__(0, 0), "NUL character"),
        (lambda a: a["key_lengths"].__setitem__(0, 5), "field 'key_lengths'.*do not add up"),
        (lambda a: a.update(key_text=a["key_text"].astype(np.int64)), "field 'key_text'.*must have dtype uint8"),
        (lambda a: a.update(key_text=np.frombuffer(b"aaccc", np.uint8).copy(), key_lengths=np.array([1, 1, 3])),
         "field 'keys': value 'a' appears twice"),
    ]:
        a = {k: v.copy() for k, v in arrays.items()}
        change(a)
        write_npz(path, a, metadata)
        with pytest.raises(ModelFileError, match=message):
            RandomEffectModel.load(path)
    arrays["key_text"] = np.frombuffer(b"aaabccc", np.uint8).copy()
    arrays["key_lengths"] = np.array([2, 2, 3])  # "aa", "ab": valid, distinct
    write_npz(path, arrays, metadata)
    assert RandomEffectModel.load(path).entity_keys == ["aa", "ab", "ccc"]


def npy_header(dtype: str, shape: tuple) -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode("latin1")
    header += b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def test_a_huge_declared_shape_is_rejected_before_allocating(tmp_path):
    path = tmp_path / "m.npz"
    trained().save(path)
    with zipfile.ZipFile(path) as z:
        entries = {name: z.read(name) for name in z.namelist()}
    entries["means.npy"] = npy_header("<f8", (10**12,)) + b"\0" * 64  # declares 8 TB, holds 64 bytes
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match=r"array 'means': declared shape \(1000000000000,\)"):
            RandomEffectModel.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * os.path.getsize(path) + (4 << 20)


def test_a_zip_bomb_is_rejected_before_inflating(tmp_path):
    path = tmp_path / "bomb.npz"
    trained().save(path)
    with zipfile.ZipFile(path) as z:
        entries = {name: z.read(name) for name in z.namelist()}
    big = 32 << 20  # 32 MiB of zeros deflate to ~32 KiB
    entries["means.npy"] = npy_header("<f8", (big // 8,)) + bytes(big)
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data, compress_type=zipfile.ZIP_DEFLATED if name == "means.npy" else zipfile.ZIP_STORED)
    assert os.path.getsize(path) < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match="declare .* bytes uncompressed, more than 4x .* zip bomb"):
            RandomEffectModel.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


def test_an_entry_whose_header_lies_about_its_size_is_caught(tmp_path):
    path = tmp_path / "m.npz"
    trained().save(path)
    with zipfile.ZipFile(path) as z:
        entries = {name: z.read(name) for name in z.namelist()}
    means = entries["means.npy"]
    entries["means.npy"] = means[:-8]  # one value short of the declared shape
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    with pytest.raises(ModelFileError, match="array 'means': declared shape"):
        RandomEffectModel.load(path)


def test_duplicate_zip_entries_are_rejected(tmp_path):
    path = tmp_path / "m.npz"
    trained().save(path)
    with zipfile.ZipFile(path) as z:
        means = z.read("means.npy")
    with pytest.warns(UserWarning), zipfile.ZipFile(path, "a") as z:
        z.writestr("means.npy", means)  # a second entry of the same name: which one is read?
    with pytest.raises(ModelFileError, match="entry 'means.npy' appears twice"):
        RandomEffectModel.load(path)


CORRUPTIONS = st.sampled_from(["nan", "inf", "negative id", "swap ids", "indptr", "truncate", "dtype", "metadata",
                               "key", "precision sign"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=CORRUPTIONS, where=st.integers(0, 10**6), hessian=st.sampled_from(["full", "diagonal"]))
def test_property_an_invalidating_change_to_any_array_never_loads(tmp_path, kind, where, hessian):
    path = tmp_path / f"p-{hessian}.npz"
    if not path.exists():
        trained(hessian, seed=3).save(path)
    arrays, metadata = read_npz(path)
    means, fids, prec = arrays["means"], arrays["feature_ids"], arrays["precision"]
    if kind == "nan":
        means[where % len(means)] = np.nan
    elif kind == "inf":
        prec[where % len(prec)] = np.inf
    elif kind == "negative id":
        fids[where % len(fids)] = -1 - where
    elif kind == "swap ids":
        i = where % (len(fids) - 1)
        fids[i + 1] = fids[i]
    elif kind == "indptr":
        arrays["indptr"][1 + where % (len(arrays["indptr"]) - 1)] += 1
    elif kind == "truncate":
        name = ["means", "feature_ids", "precision", "indptr", "keys"][where % 5]
        arrays[name] = arrays[name][:-1]
    elif kind == "dtype":
        name = ["means", "feature_ids", "precision", "indptr", "keys"][where % 5]
        arrays[name] = arrays[name].astype([np.float16, np.int32, np.complex64, np.float32, np.uint8][where % 5])
    elif kind == "metadata":
        field = sorted(metadata)[where % len(metadata)]
        if field in ("lljax_version",):
            field = "dtype"
        metadata[field] = [None, "x", -1, [], {"a": 1}][where % 5] if metadata[field] is not None else "x"
    elif kind == "key":
        arrays["keys"][where % len(arrays["keys"])] = arrays["keys"][(where + 1) % len(arrays["keys"])]
    else:
        d = int(arrays["indptr"][1])
        if hessian == "full":
            prec[: d * d] *= -1
        else:
            prec[where % len(prec)] = -1.0
    write_npz(path.with_suffix(".bad.npz"), arrays, metadata)
    with pytest.raises(ModelFileError, match=str(path.with_suffix(".bad.npz"))):
        RandomEffectModel.load(path.with_suffix(".bad.npz"))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=st.lists(st.tuples(st.integers(0, 10**9), st.integers(1, 255)), min_size=1, max_size=4))
def test_property_random_byte_damage_never_loads_a_different_model(tmp_path, flips):
    """Any bytes flipped anywhere in the file: a ModelFileError (nothing else), or exactly the saved model."""
    path = tmp_path / "orig.npz"
    if not path.exists():
        trained("full", keys=["u1", "u2", "u3"], seed=4).save(path)
    raw = bytearray(path.read_bytes())
    for at, mask in flips:
        raw[at % len(raw)] ^= mask
    bad = tmp_path / "damaged.npz"
    bad.write_bytes(bytes(raw))
    try:
        loaded = RandomEffectModel.load(bad)
    except ModelFileError as exc:
        assert str(bad) in str(exc)
        return
    same_state(loaded, RandomEffectModel.load(path))


def test_a_version_1_file_still_loads(tmp_path):
    model = trained(keys=["a", "b"])
    path = tmp_path / "v2.npz"
    model.save(path)
    arrays, metadata = read_npz(path)
    text, lengths = arrays.pop("key_text"), arrays.pop("key_lengths")
    assert text.tobytes() == b"ab" and lengths.tolist() == [1, 1]
    arrays["keys"] = np.array(["a", "b"])
    metadata["format_version"] = 1
    del metadata["key_type"]
    write_npz(tmp_path / "v1.npz", arrays, metadata)
    same_state(RandomEffectModel.load(tmp_path / "v1.npz"), model)


# -- item 7: symbolic links; issue 17: permissions and Parquet metadata -----------------------------

def test_save_onto_a_symlink_writes_through_it_and_keeps_the_link(tmp_path):
    target = tmp_path / "releases" / "model-v1.npz"
    target.parent.mkdir()
    trained(seed=1).save(target)
    link = tmp_path / "current.npz"
    link.symlink_to(target)
    model = trained(seed=2)
    model.save(link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    same_state(RandomEffectModel.load(target), model)
    assert sorted(os.listdir(tmp_path)) == ["current.npz", "releases"]
    assert os.listdir(target.parent) == ["model-v1.npz"]  # no temporary file left behind


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_saved_models_and_parquet_exports_get_the_permissions_of_a_new_file(tmp_path, umask):
    old = os.umask(umask)
    try:
        model = trained()
        model.save(tmp_path / "m.npz")
        model.to_parquet(tmp_path / "m.parquet")
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    assert stat.S_IMODE(os.stat(tmp_path / "plain").st_mode) == expected
    assert stat.S_IMODE(os.stat(tmp_path / "m.npz").st_mode) == expected
    assert stat.S_IMODE(os.stat(tmp_path / "m.parquet").st_mode) == expected


def test_parquet_round_trip_keeps_the_hyper_parameters_and_index_map(tmp_path):
    index_map = IndexMap()
    for j in range(1, F):
        index_map.push(("f", str(j)))
    model = RandomEffectModel("poisson", l2=0.25, delta=0.75, hessian="diagonal", max_iter=17, tol=1e-7,
                              memory_budget=1 << 20, min_rows=2, max_rows=9, index_map=index_map)
    rng = np.random.default_rng(5)
    model.update(Dataset.from_arrays(np.repeat(np.arange(4), 3), rng.poisson(1.0, 12).astype(float),
                                     X=rng.normal(size=(12, F - 1))))
    model.to_parquet(tmp_path / "m.parquet")
    back = RandomEffectModel.from_parquet(tmp_path / "m.parquet")
    for name in ("loss", "l2", "delta", "hessian", "max_iter", "tol", "memory_budget", "min_rows", "max_rows"):
        assert getattr(back, name) == getattr(model, name), name
    assert back.index_map == index_map
    for key in model.entity_keys:
        np.testing.assert_array_equal(back.coefficients(key).mean, model.coefficients(key).mean)
    override = RandomEffectModel.from_parquet(tmp_path / "m.parquet", l2=3.0)
    assert override.l2 == 3.0 and override.delta == 0.75


def test_parquet_with_bad_metadata_names_the_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"entity": [1], "feature_id": [0], "mean": [0.5]})
    for raw, message in [(b"{not json", "is not valid JSON"), (b'{"hyperparameters": {"l3": 1}}', "l3"),
                         (b'{"hyperparameters": {"l2": -1}}', "l2")]:
        path = tmp_path / "bad.parquet"
        pq.write_table(table.replace_schema_metadata({b"lljax": raw}), path)
        with pytest.raises(ValueError, match=message) as info:
            RandomEffectModel.from_parquet(path)
        assert str(path) in str(info.value)


def test_loading_allocates_about_the_file_size(tmp_path):
    model = trained(keys=list(range(300)))
    path = tmp_path / "m.npz"
    model.save(path)
    tracemalloc.start()
    try:
        RandomEffectModel.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * os.path.getsize(path) + (2 << 20)

