"""lljax.data.frames: Datasets from pandas / Arrow / Parquet with named features, and DataFrames out.

The oracle of ``dataset_from_frame`` is a per-row Python loop: each row becomes a ``TrainingRecord`` whose
features are named by hand (numeric ``(column, "")``, categorical ``(column, category)``, NTV as given),
then ``Dataset.from_records`` with the same ``IndexMap``.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lljax
from lljax import Dataset, Feature, IndexMap, Status, TrainingRecord
from lljax.data.frames import (
    coefficients_frame,
    dataset_from_frame,
    dataset_from_ntv_jsonl,
    dataset_from_parquet,
    report_frame,
    stream_frame,
)


def rows_of(ds: Dataset) -> list[dict]:
    """Each example's features as {feature id: summed value} (order within a row does not matter)."""
    out = []
    for i in range(ds.num_examples):
        row: dict = {}
        for k in range(ds.indptr[i], ds.indptr[i + 1]):
            row[int(ds.feature_ids[k])] = row.get(int(ds.feature_ids[k]), 0.0) + float(ds.values[k])
        out.append(row)
    return out


def assert_same_dataset(a: Dataset, b: Dataset) -> None:
    assert a.entity_keys.tolist() == b.entity_keys.tolist()
    np.testing.assert_array_equal(a.entity, b.entity)
    for field in ("label", "weight", "offset"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert (a.num_features, a.intercept_id, a.dtype) == (b.num_features, b.intercept_id, b.dtype)
    assert rows_of(a) == rows_of(b)


def oracle(df: pd.DataFrame, index_map: IndexMap, *, entity, label, weight=None, offset=None, numeric=(),
           categorical=(), ntv=(), null_category=None) -> Dataset:
    items = []
    for _, row in df.iterrows():
        features = [Feature(c, "", float(row[c])) for c in numeric if row[c] != 0]
        for c in categorical:
            value = row[c]
            term = null_category if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)
            features.append(Feature(c, term, 1.0))
        for c in ntv:
            features += [Feature(f["name"], f["term"], float(f["value"])) for f in row[c]]
        items.append((row[entity], TrainingRecord(float(row[label]), 1.0 if weight is None else float(row[weight]),
                                                  0.0 if offset is None else float(row[offset]), features)))
    keys = [k for k, _ in items]
    if keys and isinstance(keys[0], (int, np.integer)):
        items = [(int(k), r) for k, r in items]
    return Dataset.from_records(items, index_map)


def example_frame(n=40, seed=0, string_entity=True) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 7, n)
    return pd.DataFrame({
        "user": [f"u{u}" for u in users] if string_entity else users,
        "click": rng.integers(0, 2, n),
        "w": rng.uniform(0.5, 2.0, n),
        "fe_score": rng.normal(size=n),
        "age": np.where(rng.random(n) < 0.3, 0.0, rng.normal(size=n)),
        "visits": rng.integers(0, 4, n),
        "premium": rng.random(n) < 0.5,
        "city": rng.choice(["paris", "oslo", "rome"], n),
        "device": pd.Categorical(rng.choice(["ios", "web"], n), categories=["web", "ios", "tv"]),
        "zip": rng.choice([75001, 1050, 120], n),
        "ntv": [[{"name": f"n{rng.integers(3)}", "term": f"t{rng.integers(2)}", "value": float(rng.normal())}
                 for _ in range(rng.integers(0, 3))] for _ in range(n)],
    })


ROLES = dict(entity="user", label="click", weight="w", offset="fe_score", numeric=["age", "visits", "premium"],
             categorical=["city", "device", "zip"], ntv=["ntv"])


@pytest.mark.parametrize("string_entity", [True, False])
def test_frame_matches_the_per_row_oracle(string_entity):
    df = example_frame(string_entity=string_entity)
    ds, imap = dataset_from_frame(df, **ROLES)
    expected = oracle(df, imap, **{k: v for k, v in ROLES.items()})
    assert_same_dataset(ds, expected)
    assert ds.intercept_id == imap.intercept_index == 0
    assert ds.num_features == len(imap)


def test_feature_names_and_order():
    df = example_frame()
    _, imap = dataset_from_frame(df, **ROLES)
    nts = imap.name_terms
    assert nts[:4] == [("intercept", "intercept"), ("age", ""), ("visits", ""), ("premium", "")]
    assert nts[4:7] == [("city", "oslo"), ("city", "paris"), ("city", "rome")]  # sorted distinct values
    assert nts[7:10] == [("device", "web"), ("device", "ios"), ("device", "tv")]  # declared categories, all
    assert nts[10:13] == [("zip", "120"), ("zip", "1050"), ("zip", "75001")]  # integers named as categorical
    first_ntv = [(f["name"], f["term"]) for fs in df["ntv"] for f in fs]
    assert nts[13:] == list(dict.fromkeys(first_ntv))  # first appearance, as IndexMap.batch_push


def test_pandas_arrow_and_parquet_agree(tmp_path):
    df = example_frame()
    ds, imap = dataset_from_frame(df, **ROLES)
    table = pa.Table.from_pandas(df, preserve_index=False)
    for other in (table, pa.concat_tables([table.slice(0, 11), table.slice(11)])):  # one chunk, two chunks
        ds2, imap2 = dataset_from_frame(other, **ROLES)
        assert imap2 == imap
        assert_same_dataset(ds2, ds)
    pq.write_table(table, tmp_path / "d.parquet")
    ds3, imap3 = dataset_from_parquet(tmp_path / "d.parquet", **ROLES)
    assert imap3 == imap
    assert_same_dataset(ds3, ds)
    batch = table.to_batches()[0]
    assert_same_dataset(dataset_from_frame(batch, **ROLES)[0], ds)


def test_kinds_inferred_from_types():
    df = example_frame().drop(columns=["zip"])
    inferred, imap = dataset_from_frame(df, entity="user", label="click", weight="w", offset="fe_score")
    explicit, imap2 = dataset_from_frame(df, **{**ROLES, "categorical": ["city", "device"]})
    assert imap == imap2
    assert_same_dataset(inferred, explicit)


def test_existing_index_map_grow_error_ignore():
    df = example_frame()
    _, trained = dataset_from_frame(df.iloc[:20], **ROLES)
    size = len(trained)
    new = df.iloc[20:].copy()
    new.loc[new.index[0], "city"] = "lima"
    grown, imap = dataset_from_frame(new, **ROLES, index_map=trained)
    assert imap is trained and ("city", "lima") in trained and len(trained) > size
    with pytest.raises(ValueError, match=r"row 0 .*|field 'city': value 'lima' is the feature \('city', 'lima'\), which is not in"):
        dataset_from_frame(new, **ROLES, index_map=IndexMap.from_dict(
            {**trained.to_dict(), "name_terms": [list(nt) for nt in trained.name_terms if nt != ("city", "lima")]}),
            unknown="error")
    base = IndexMap()
    base.batch_push([("age", ""), ("city", "oslo")])
    ignored, _ = dataset_from_frame(df, entity="user", label="click", numeric=["age", "visits"], categorical=["city"],
                                    index_map=base, unknown="ignore")
    assert len(base) == 3 and ignored.num_features == 3
    rows = rows_of(ignored)
    for i, row in enumerate(rows):
        expected = {0: 1.0}
        if df["age"].iloc[i] != 0:
            expected[1] = df["age"].iloc[i]
        if df["city"].iloc[i] == "oslo":
            expected[2] = 1.0
        assert row == pytest.approx(expected)


def test_arrays_and_aligned_series_for_label_weight_offset():
    df = example_frame().set_index(pd.Index(np.arange(40) * 10 + 3))
    ds, _ = dataset_from_frame(df, **ROLES)
    shuffled = df["fe_score"].sample(frac=1.0, random_state=1)  # aligned on the index, not by position
    ds2, _ = dataset_from_frame(df, **{**ROLES, "offset": shuffled, "label": df["click"].to_numpy(),
                                       "weight": df["w"].to_numpy()})
    assert_same_dataset(ds2, ds)


def test_float32_labels_give_a_float32_dataset():
    df = example_frame()
    df["click"] = df["click"].astype(np.float32)
    ds, _ = dataset_from_frame(df, **ROLES)
    assert ds.dtype == np.float32
    assert dataset_from_frame(df, **ROLES, dtype=np.float64)[0].dtype == np.float64


def test_training_from_a_frame_equals_training_from_arrays():
    """The named dataset trains exactly as the same features built as CSR by hand (ids from the map)."""
    import jax

    jax.config.update("jax_enable_x64", True)
    df = example_frame(n=200)
    ds, imap = dataset_from_frame(df, **ROLES)
    ref = oracle(df, imap, **ROLES)
    a = lljax.RandomEffectModel("logistic", l2=1.0, hessian="full", index_map=imap)
    b = lljax.RandomEffectModel("logistic", l2=1.0, hessian="full")
    a.update(ds)
    b.update(ref)
    np.testing.assert_allclose(a.score(ds), b.score(ref), rtol=1e-10, atol=1e-12)
    coef = coefficients_frame(a)
    assert list(coef.columns) == ["entity", "feature_id", "name", "term", "mean", "variance"]
    for key in ds.entity_keys.tolist():
        stored = a.coefficients(key)
        rows = coef[coef["entity"] == key]
        np.testing.assert_array_equal(rows["feature_id"], stored.feature_ids)
        np.testing.assert_array_equal(rows["mean"], stored.mean)
        assert list(zip(rows["name"], rows["term"])) == [imap.get_nt(int(f)) for f in stored.feature_ids]
    # a model without an index map is named through the one given
    named = coefficients_frame(b, imap)
    assert named["name"].tolist() == coef["name"].tolist()
    assert "name" not in coefficients_frame(b).columns


def test_report_and_stream_frames():
    import jax

    jax.config.update("jax_enable_x64", True)
    df = example_frame(n=120)
    ds, imap = dataset_from_frame(df, **ROLES)
    model = lljax.RandomEffectModel("logistic", l2=1.0, hessian="diagonal", min_rows=15)
    report = model.update(ds)
    frame = report_frame(report)
    assert frame["entity"].tolist() == report.entity_keys.tolist()
    assert list(frame["status"].cat.categories) == [s.name.lower() for s in Status]
    assert frame["status"].value_counts().to_dict() == dict(report.status_counts)
    np.testing.assert_array_equal(frame["iterations"], report.iterations)
    batches = [ds.take(np.arange(i, 120, 3)) for i in range(3)]
    stream = lljax.run_stream(lljax.RandomEffectModel("logistic", delta=0.9), batches)
    sf = stream_frame(stream)
    assert sf["window"].tolist() == [0, 1, 2]
    assert sf["examples"].tolist() == [b.num_examples for b in batches]
    np.testing.assert_array_equal(sf["auc"], [w.metrics["auc"] for w in stream.windows])
    assert sf["converged"].tolist() == [w.report.status_counts[Status.CONVERGED] for w in stream.windows]
    assert sf.attrs["overall"] == stream.overall


def test_ntv_jsonl_to_dataset_matches_from_records(tmp_path):
    from lljax import read_ntv_jsonl, write_ntv_jsonl

    rng = np.random.default_rng(3)
    items = [(f"u{rng.integers(5)}", TrainingRecord(float(rng.integers(2)), float(rng.uniform(0, 2)),
                                                     float(rng.normal()),
                                                     [Feature(f"n{rng.integers(3)}", f"t{rng.integers(4)}",
                                                              float(rng.normal())) for _ in range(rng.integers(4))]))
             for _ in range(60)]
    items.append(("u1", TrainingRecord(1.0, 1.0, 0.0, [Feature("intercept", "intercept", 0.5)])))  # LL's rule
    path = tmp_path / "d.jsonl"
    write_ntv_jsonl(path, items)
    ds, imap = dataset_from_ntv_jsonl(path)
    records = read_ntv_jsonl(path)
    expected_map = IndexMap()
    expected_map.batch_push(nt for _, r in records for nt in r.name_terms)
    assert imap == expected_map
    assert_same_dataset(ds, Dataset.from_records(records, expected_map))
    # input the columnar reader does not take (a blank line) goes through the records: same dataset
    blank = tmp_path / "blank.jsonl"
    blank.write_text(path.read_text().replace("\n", "\n\n", 1))
    ds2, imap2 = dataset_from_ntv_jsonl(blank)
    assert imap2 == expected_map
    assert_same_dataset(ds2, ds)
    ds3, _ = dataset_from_ntv_jsonl(io.BytesIO(path.read_bytes()), IndexMap())
    assert_same_dataset(ds3, ds)


# ----------------------------------------------------------------------------- property: random frames

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 30), st.integers(0, 2**32 - 1), st.booleans())
def test_random_frames_match_the_oracle(n, seed, string_entity):
    df = example_frame(n=n, seed=seed, string_entity=string_entity)
    ds, imap = dataset_from_frame(df, **ROLES)
    assert_same_dataset(ds, oracle(df, imap, **ROLES))


# ----------------------------------------------------------------------------- bad input

def small():
    return pd.DataFrame({"user": ["a", "b", "a"], "y": [1, 0, 1], "x": [0.5, 1.0, 0.0], "c": ["p", "q", "p"]})


@pytest.mark.parametrize("kwargs, error, pattern", [
    (dict(entity="usr", label="y"), ValueError, r"field 'entity': value 'usr' is not a column of the frame \(columns: 'user', 'y', 'x', 'c'\)"),
    (dict(entity="user", label="y", numeric=["x", "nope"]), ValueError, r"field 'numeric': value 'nope' is not a column"),
    (dict(entity="user", label="y", numeric=["y"]), ValueError, r"field 'numeric': value 'y' is already the label column"),
    (dict(entity="user", label="y", numeric=["c"]), TypeError, r"field 'c': value 'p' is not a number .*categorical"),
    (dict(entity="user", label="y", numeric="x"), TypeError, r"field 'numeric': value 'x' must be a list"),
    (dict(entity="user", label="c"), TypeError, r"field 'c'.* is not a number"),
    (dict(entity="user", label="y", unknown="maybe"), ValueError, r"field 'unknown'"),
])
def test_bad_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        dataset_from_frame(small(), **kwargs)


def test_categorical_nulls_raise_or_become_the_documented_category():
    df = small()
    df.loc[1, "c"] = None
    with pytest.raises(ValueError, match=r"row 1, field 'c': value None is null \(missing\) in a categorical column.*null_category"):
        dataset_from_frame(df, entity="user", label="y", categorical=["c"])
    ds, imap = dataset_from_frame(df, entity="user", label="y", categorical=["c"], null_category="<null>")
    assert ("c", "<null>") in imap
    assert rows_of(ds)[1] == {0: 1.0, imap.get_index(("c", "<null>")): 1.0}
    cat = small().assign(c=pd.Categorical(["p", None, "p"]))
    with pytest.raises(ValueError, match=r"row 1, field 'c': value None is null"):
        dataset_from_frame(cat, entity="user", label="y", categorical=["c"])


def test_mixed_entity_types_are_rejected():
    df = small().astype({"user": object})
    df.loc[1, "user"] = 7
    with pytest.raises(TypeError, match=r"row 1, field 'user': value 7 has a different type \(int\) from the column's first value 'a'"):
        dataset_from_frame(df, entity="user", label="y")
    with pytest.raises(TypeError, match=r"field 'user': value 1.5 is not an integer or a string"):
        dataset_from_frame(small().assign(user=[1.5, 2.0, 1.5]), entity="user", label="y")
    with pytest.raises(ValueError, match=r"row 2, field 'user': value None is null"):
        dataset_from_frame(small().assign(user=["a", "b", None]), entity="user", label="y")
    with pytest.raises(ValueError, match=r"NUL"):
        dataset_from_frame(small().assign(user=["a", "b\x00", "a"]), entity="user", label="y")


def test_non_unique_index_where_it_matters():
    df = small().set_index(pd.Index([5, 5, 6]))
    ds, _ = dataset_from_frame(df, entity="user", label="y", numeric=["x"])  # columns: the index does not matter
    assert ds.num_examples == 3
    offset = pd.Series([0.1, 0.2, 0.3], index=[6, 5, 5])
    with pytest.raises(ValueError, match=r"field 'offset'.*the DataFrame's index has the value 5 more than once.*reset_index"):
        dataset_from_frame(df, entity="user", label="y", offset=offset)
    same = pd.Series([0.1, 0.2, 0.3], index=df.index)  # the very same index: used by position
    assert dataset_from_frame(df, entity="user", label="y", offset=same)[0].offset.tolist() == [0.1, 0.2, 0.3]
    with pytest.raises(ValueError, match=r"field 'offset'.*has no value for a row"):
        dataset_from_frame(small(), entity="user", label="y", offset=pd.Series([1.0, 2.0], index=[0, 1]))


def test_bad_values_name_the_column_and_row():
    df = small().set_index(pd.Index(["r0", "r1", "r2"]))
    with pytest.raises(ValueError, match=r"row 2 \(index 'r2'\), field 'x': value None is null"):
        dataset_from_frame(df.assign(x=[0.5, 1.0, np.nan]), entity="user", label="y", numeric=["x"])
    with pytest.raises(ValueError, match=r"row 1 \(index 'r1'\), field 'x': value inf must be finite"):
        dataset_from_frame(df.assign(x=[0.5, np.inf, 1.0]), entity="user", label="y", numeric=["x"])
    with pytest.raises(ValueError, match=r"row 1 \(index 'r1'\), entity 'b', field 'w': value -1.0 must be non-negative"):
        dataset_from_frame(df.assign(w=[1.0, -1.0, 1.0]), entity="user", label="y", weight="w")
    with pytest.raises(ValueError, match=r"field 'y': value nan must be finite|field 'y': value None is null"):
        dataset_from_frame(df.assign(y=[1.0, np.nan, 0.0]), entity="user", label="y")


def test_bad_ntv_columns():
    good = [{"name": "a", "term": "b", "value": 1.0}]
    with pytest.raises(ValueError, match=r"row 1, element 0, field 'f.value': value None is null|row 1, element 0"):
        dataset_from_frame(small().assign(f=[good, [{"name": "a", "term": "b", "value": None}], []]),
                           entity="user", label="y", ntv=["f"])
    with pytest.raises(ValueError, match=r"row 2, field 'f': value None is null: give an empty list"):
        dataset_from_frame(small().assign(f=[good, [], None]), entity="user", label="y", ntv=["f"])
    with pytest.raises(TypeError, match=r"field 'f'.* is not an NTV column"):
        dataset_from_frame(small().assign(f=[[1.0], [], []]), entity="user", label="y", ntv=["f"])
    with pytest.raises(ValueError, match=r"field 'f.value': value inf must be finite"):
        dataset_from_frame(small().assign(f=[[{"name": "a", "term": "b", "value": np.inf}], [], []]),
                           entity="user", label="y", ntv=["f"])


def test_the_intercept_is_never_a_users_column():
    df = small().assign(intercept=["intercept", "x", "x"])
    with pytest.raises(ValueError, match=r"field 'intercept': value 'intercept' would be the feature \('intercept', 'intercept'\), the intercept's own"):
        dataset_from_frame(df, entity="user", label="y", categorical=["intercept"])
    ds, imap = dataset_from_frame(small().assign(intercept=[2.0, 3.0, 4.0]), entity="user", label="y",
                                  numeric=["intercept"])  # a numeric column named "intercept" is its own feature
    assert imap.get_index(("intercept", "")) == 1
    assert rows_of(ds)[0] == {0: 1.0, 1: 2.0}


def test_wrong_frame_type():
    with pytest.raises(TypeError, match="must be a pandas DataFrame or a pyarrow Table"):
        dataset_from_frame({"user": [1]}, entity="user", label="y")


def test_status_counts_accept_status_keys():
    import jax

    jax.config.update("jax_enable_x64", True)
    ds, _ = dataset_from_frame(example_frame(n=60), **ROLES)
    report = lljax.RandomEffectModel("logistic", min_rows=10).update(ds)
    counts = report.status_counts
    assert isinstance(counts, lljax.StatusCounts) and isinstance(counts, dict)
    assert list(counts) == [s.name.lower() for s in Status]  # string keys, as before
    for status in Status:
        assert counts[status] == counts[status.name.lower()] == counts[status.name] == int((report.status == status).sum())
        assert status in counts and counts.get(status) == counts[status]
    assert counts[Status.SKIPPED] + counts[Status.CONVERGED] == ds.num_entities
    assert counts.by_status() == {s: counts[s] for s in Status}
    assert counts == dict(counts) and counts.get("nope", -1) == -1
    with pytest.raises(KeyError):
        counts["nope"]
