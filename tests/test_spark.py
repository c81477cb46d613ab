"""lljax.spark on Spark in local mode: results equal single-process lljax (1e-10 relative, float64), state
round trips through Parquet, incremental updates pass untouched entities through, scoring (mean, UCB,
Thompson with seeds), GAME coordinate descent, the report, and bad input.

The Spark session starts once for the module (``local[2]``, UI off, 2 shuffle partitions)."""

import glob
import json
import os
import sys

import jax
import numpy as np
import pytest

pyspark = pytest.importorskip("pyspark", reason="pip install -e '.[dev]' installs pyspark")  # CI installs it

import lljax  # noqa: E402
from lljax import spark as ls  # noqa: E402

RTOL = 1e-10


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    session = (SparkSession.builder.master("local[2]").appName("lljax-tests")
               .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "2")
               .config("spark.default.parallelism", "2").config("spark.driver.memory", "1g")
               .config("spark.sql.execution.arrow.maxRecordsPerBatch", "500")
               .config("spark.sql.adaptive.enabled", "false")
               .getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    assert jax.config.jax_enable_x64  # tests/conftest.py: float64
    yield session
    session.stop()


def make_rows(seed, n, users, F, string_keys=False):
    rng = np.random.default_rng(seed)
    ent = rng.integers(0, users, n)
    X = rng.normal(size=(n, F)) * (rng.random((n, F)) < 0.6)
    off = rng.normal(size=n) * 0.5
    w = rng.uniform(0.5, 2.0, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-off))).astype(float)
    keys = np.array([f"u{e}" for e in ent], dtype=object) if string_keys else ent
    return keys, X, off, w, y


def vector_frame(spark, keys, X, off, w, y):
    from pyspark.ml.linalg import Vectors

    rows = []
    for i, (k, x) in enumerate(zip(keys, X)):  # alternate sparse and dense vectors
        nz = np.flatnonzero(x)
        vec = Vectors.sparse(len(x), nz.tolist(), x[nz].tolist()) if i % 2 else Vectors.dense(x.tolist())
        rows.append((k if isinstance(k, str) else int(k), float(y[i]), float(off[i]), float(w[i]), vec))
    return spark.createDataFrame(rows, ["user", "label", "off", "w", "x"])


def assert_models_equal(ref, got, keys=None):
    keys = ref.entity_keys if keys is None else keys
    assert sorted(map(str, got.entity_keys)) == sorted(map(str, ref.entity_keys))
    for k in keys:
        a, b = ref.coefficients(k), got.coefficients(k)
        np.testing.assert_array_equal(a.feature_ids, b.feature_ids)
        scale = max(1.0, np.abs(a.mean).max())
        np.testing.assert_allclose(b.mean, a.mean, rtol=RTOL, atol=RTOL * scale)
        if a.precision is not None:
            np.testing.assert_allclose(b.precision, a.precision, rtol=RTOL, atol=RTOL * np.abs(a.precision).max())


def test_update_incremental_parquet_equal_single_process(spark, tmp_path):
    """Train, write, read back, update with a second batch (a prior for some entities, new entities, and
    entities with no new rows that pass through unchanged): equal to single-process lljax."""
    keys, X, off, w, y = make_rows(0, 1500, 120, 4)
    keys2, X2, off2, w2, y2 = make_rows(1, 600, 160, 4)
    keys2 = keys2 + 60  # entities 60..119 get a prior, 120..219 are new, 0..59 pass through
    cols = ls.Columns("user", "label", ls.Features.vector("x"), weight="w", offset="off")
    model = lljax.RandomEffectModel("logistic", l2=1.0, delta=0.8, hessian="full")
    path = str(tmp_path / "state")

    state, report = ls.update(vector_frame(spark, keys, X, off, w, y), model, cols, output=path)
    ref = lljax.RandomEffectModel("logistic", l2=1.0, delta=0.8, hessian="full")
    ref.update(lljax.Dataset.from_arrays(keys, y, X=X, offset=off, weight=w))
    assert report.entities == len(ref.entity_keys) and report.rows == 1500
    assert report.status_counts == {"converged": len(ref.entity_keys)}
    assert len(report.tasks) == 2 and sum(t["rows"] for t in report.tasks) == 1500
    assert os.path.exists(os.path.join(path, ls.METADATA_FILE))
    first = ls.read_state(spark, path)
    assert_models_equal(ref, first.to_model())
    assert first.info.index_map.name_terms[1:] == [("x", str(j)) for j in range(4)]
    before = {r["entity"]: (r["means"], r["precision"]) for r in first.frame.collect()}

    state2, report2 = ls.update(vector_frame(spark, keys2, X2, off2, w2, y2), model, cols, state=path, output=path)
    ref.update(lljax.Dataset.from_arrays(keys2, y2, X=X2, offset=off2, weight=w2))
    assert_models_equal(ref, state2.to_model())
    assert report2.passed == len(set(keys) - set(keys2))
    after = {r["entity"]: (r["means"], r["precision"], r["names"]) for r in state2.frame.collect()}
    for k in set(keys) - set(keys2):  # unchanged, bit for bit
        assert after[k][0] == before[k][0] and after[k][1] == before[k][1]
    some = next(iter(after.values()))
    assert some[2][0] == "intercept"
    d = len(some[2])  # a full precision is stored as its upper triangle, row by row
    assert len(some[1]) == d * (d + 1) // 2
    k = next(iter(after))
    P = ref.coefficients(k).precision
    np.testing.assert_array_equal(after[k][1], P[np.triu_indices(len(P))])
    assert not glob.glob(path + ".tmp-*") and not glob.glob(path + ".old-*")


def test_ntv_string_keys_diagonal_linear_in_memory(spark):
    """NTV features (index map built from the data), string keys, linear loss, diagonal precision, a
    state kept in memory (no path) as the prior of a second update."""
    from pyspark.sql.types import ArrayType, DoubleType, StringType, StructField, StructType

    keys, X, off, w, _ = make_rows(2, 800, 50, 3, string_keys=True)
    y = X @ np.array([0.5, -1.0, 2.0]) + np.random.default_rng(3).normal(size=len(keys))
    names = [("age", ""), ("geo", "fr"), ("geo", "us")]
    schema = StructType([StructField("user", StringType()), StructField("label", DoubleType()),
                         StructField("f", ArrayType(StructType([StructField("name", StringType()),
                                                                StructField("term", StringType()),
                                                                StructField("value", DoubleType())])))])
    rows = [(k, float(y[i]), [(names[j][0], names[j][1], float(X[i, j])) for j in np.flatnonzero(X[i])])
            for i, k in enumerate(keys)]
    cols = ls.Columns("user", "label", ls.Features.ntv("f"))
    model = lljax.RandomEffectModel("linear", l2=0.5, delta=1.0, hessian="diagonal")
    half = spark.createDataFrame(rows[:400], schema)
    rest = spark.createDataFrame(rows[400:], schema)
    s1, _ = ls.update(half, model, cols)
    s2, rep = ls.update(rest, model, cols, state=s1)

    imap = lljax.IndexMap()
    imap.batch_push(sorted(names))
    order = [imap.get_index(nt) for nt in names]  # sorted name-terms: the ids the Spark side built
    assert s2.info.index_map == imap
    ref = lljax.RandomEffectModel("linear", l2=0.5, delta=1.0, hessian="diagonal")
    for part in (slice(0, 400), slice(400, 800)):
        Xs = X[part]
        r, c = np.nonzero(Xs)
        indptr = np.zeros(len(Xs) + 1, np.int64)
        np.cumsum(np.bincount(r, minlength=len(Xs)), out=indptr[1:])
        ref.update(lljax.Dataset.from_arrays(keys[part], y[part], indptr=indptr, feature_ids=np.array(order)[c],
                                             values=Xs[r, c], num_features=4))
    assert_models_equal(ref, s2.to_model())
    assert rep.entities == len(set(keys[400:]))


def test_columns_features_poisson(spark):
    """Numeric and categorical columns (nulls absent) as features, Poisson loss, int entity keys."""
    rng = np.random.default_rng(4)
    n = 600
    ent = rng.integers(0, 40, n).astype(np.int32)
    a = rng.normal(size=n)
    a_null = rng.random(n) < 0.1
    cat = rng.choice(["x", "y", "z"], n)
    cat_null = rng.random(n) < 0.1
    y = rng.poisson(np.exp(0.3 * a)).astype(float)
    rows = [(int(ent[i]), float(y[i]), None if a_null[i] else float(a[i]), None if cat_null[i] else str(cat[i]))
            for i in range(n)]
    df = spark.createDataFrame(rows, "user int, label double, a double, c string")
    cols = ls.Columns("user", "label", ls.Features.columns(numeric=["a"], categorical=["c"]))
    model = lljax.RandomEffectModel("poisson", l2=2.0, hessian="full")
    state, _ = ls.update(df, model, cols)
    assert state.info.index_map.name_terms[1:] == [("a", ""), ("c", "x"), ("c", "y"), ("c", "z")]
    Xd = np.zeros((n, 4))
    Xd[:, 0] = np.where(a_null, 0.0, a)
    for j, v in enumerate("xyz"):
        Xd[:, 1 + j] = (cat == v) & ~cat_null
    ref = lljax.RandomEffectModel("poisson", l2=2.0, hessian="full")
    ref.update(lljax.Dataset.from_arrays(ent.astype(np.int64), y, X=Xd))
    assert_models_equal(ref, state.to_model())


def test_score_mean_ucb_thompson(spark):
    """Mean scores equal RandomEffectModel.score; UCB equals lljax.ucb_candidates on the posterior over each
    row's features; Thompson draws are keyed by (seed, request, feature), so partitioning does not change
    them, and equal the draw computed from lljax's posterior."""
    keys, X, off, w, y = make_rows(5, 900, 60, 3)
    df = vector_frame(spark, keys, X, off, w, y)
    cols = ls.Columns("user", "label", ls.Features.vector("x"), offset="off")
    model = lljax.RandomEffectModel("logistic", l2=1.0, hessian="full")
    train = df.where("user < 50")  # users 50..59 have no state: cold prior
    state, _ = ls.update(train, model, cols)
    ref = state.to_model()

    scored, rep = ls.score(df.withColumn("req", df["user"] * 1000 + 7), state, cols, ucb="ucb", alpha=0.7,
                           thompson="ts", seed=11, request="req")
    assert rep.rows == 900
    again, _ = ls.score(df.withColumn("req", df["user"] * 1000 + 7), state, cols, thompson="ts", seed=11,
                        request="req", num_partitions=3)
    pdf = scored.toPandas()
    pdf2 = again.toPandas()
    ds = lljax.Dataset.from_arrays(keys, y, X=X, offset=off)
    expected = ref.score(ds)
    # rows come back in another order: match them by (user, label, off, w)
    def key(frame):
        return np.lexsort((frame["w"].to_numpy(), frame["off"].to_numpy(), frame["user"].to_numpy()))
    own = np.lexsort((w, off, keys))
    i1, i2 = key(pdf), key(pdf2)
    np.testing.assert_allclose(pdf["score"].to_numpy()[i1], expected[own], rtol=RTOL, atol=1e-12)
    np.testing.assert_array_equal(pdf["ts"].to_numpy()[i1], pdf2["ts"].to_numpy()[i2])

    base = jax.random.key(11)
    for r in [0, 1, 2, 850, 899]:  # a few rows, including cold users
        i = own[r]
        user = int(keys[i])
        fids = np.unique(np.concatenate([[0], np.flatnonzero(X[i]) + 1,
                                         ref.coefficients(user).feature_ids if user in ref else []])).astype(int)
        post = ref.posterior(np.array([user]), fids)
        x = np.zeros(len(fids))
        x[0] = 1.0
        x[np.searchsorted(fids, np.flatnonzero(X[i]) + 1)] = X[i][np.flatnonzero(X[i])]
        ucb = float(lljax.ucb_candidates(post, np.array([0]), x[None, None, :], alpha=0.7)[0, 0]) + off[i]
        np.testing.assert_allclose(pdf["ucb"].to_numpy()[i1][r], ucb, rtol=RTOL)
        req = user * 1000 + 7
        z = np.array([jax.random.normal(jax.random.fold_in(jax.random.fold_in(
            jax.random.fold_in(jax.random.fold_in(base, 0), req), 0), int(f)), (), np.float64) for f in fids])
        L = np.linalg.cholesky(post.precision[0])
        theta = post.mean[0] + np.linalg.solve(L.T, z)
        np.testing.assert_allclose(pdf["ts"].to_numpy()[i1][r], x @ theta + off[i], rtol=1e-9)


def test_game_equals_single_process(spark):
    """fit_game (fixed effect on the driver, two random effects on Spark, 2 passes) equals GameModel.fit;
    with the fixed effect's score as a column it equals GameModel with an ExternalScore."""
    from pyspark.ml.linalg import Vectors

    from lljax.game import ExternalScore, FixedEffect, GameData, GameModel, RandomEffect

    rng = np.random.default_rng(6)
    n, users, items = 1200, 40, 25
    user, item = rng.integers(0, users, n), rng.integers(0, items, n)
    ux, ix = rng.normal(size=(users, 2)), rng.normal(size=(items, 2))
    g = np.hstack([ux[user], ix[item]])
    margin = 0.5 * g[:, 0] + (ix[item] * rng.normal(size=(users, 2))[user]).sum(1)
    y = (rng.random(n) < 1 / (1 + np.exp(-margin))).astype(float)
    ext = rng.normal(size=n) * 0.3
    rows = [(int(user[i]), int(item[i]), float(y[i]), float(ext[i]), Vectors.dense(g[i].tolist()),
             Vectors.dense(ix[item[i]].tolist()), Vectors.dense(ux[user[i]].tolist())) for i in range(n)]
    df = spark.createDataFrame(rows, ["user", "item", "label", "ext", "g", "ixf", "uxf"])
    specs = [ls.RandomEffectSpec("per_user", "user", ls.Features.vector("ixf"), l2=2.0),
             ls.RandomEffectSpec("per_item", "item", ls.Features.vector("uxf"), l2=2.0, hessian="diagonal")]
    data = GameData.from_arrays(y, ids={"user": user, "item": item},
                                features={"global": g, "ixf": ix[item], "uxf": ux[user]}, scores={"ext": ext})
    coords = [RandomEffect("per_user", entity="user", features="ixf", l2=2.0),
              RandomEffect("per_item", entity="item", features="uxf", l2=2.0, hessian="diagonal")]

    result = ls.fit_game(df, loss="logistic", label="label", coordinates=specs, passes=2,
                         fixed_effect=FixedEffect("global", features="global", l2=1.0), fixed_features="g")
    ref = GameModel("logistic", [FixedEffect("global", features="global", l2=1.0)] + coords)
    ref.fit(data, passes=2, record_objective=False)
    np.testing.assert_allclose(result.fixed.fixed_effect("global").coefficients,
                               ref.fixed_effect("global").coefficients, rtol=RTOL)
    for name in ("per_user", "per_item"):
        assert_models_equal(ref.random_effect(name), result.states[name].to_model())
    assert [s["coordinate"] for s in result.steps] == ["global", "per_user", "per_item"] * 2
    rep = result.steps[1]["report"]
    assert rep.entities == users and rep.rows == n
    pdf = result.frame.toPandas().sort_values("row_id")
    contrib = ref.score(data).contributions
    np.testing.assert_allclose(np.sort(pdf["score_per_user"].to_numpy()), np.sort(contrib["per_user"]), rtol=1e-9)

    result2 = ls.fit_game(df, loss="logistic", label="label", coordinates=specs[:1], fixed_score="ext", passes=1)
    ref2 = GameModel("logistic", [ExternalScore("ext", column="ext"), coords[0]])
    ref2.fit(data, passes=1, record_objective=False)
    assert_models_equal(ref2.random_effect("per_user"), result2.states["per_user"].to_model())


def test_bad_input_names_column_and_value(spark, tmp_path):
    keys, X, off, w, y = make_rows(7, 200, 20, 2)
    df = vector_frame(spark, keys, X, off, w, y)
    model = lljax.RandomEffectModel("logistic", l2=1.0, hessian="full")
    cols = ls.Columns("user", "label", ls.Features.vector("x"), offset="off")
    with pytest.raises(ValueError, match="column 'nope'.*missing"):
        ls.update(df, model, ls.Columns("nope", "label", ls.Features.vector("x")))
    with pytest.raises(TypeError, match="column 'x'.*'vector'.*wrong type"):
        ls.update(df, model, ls.Columns("user", "label", ls.Features.ntv("x")))
    with pytest.raises(TypeError, match="column 'label'.*'string'"):
        ls.update(df.withColumn("label", df["label"].cast("string")), model, cols)
    from pyspark.sql import functions as F

    with pytest.raises(ValueError, match="column 'user'.*None.*null"):
        ls.update(df.withColumn("user", F.when(F.col("user") == 3, None).otherwise(F.col("user"))), model, cols)
    with pytest.raises(ValueError, match="column 'label'.*None.*null"):
        ls.update(df.withColumn("label", F.when(F.col("user") == 3, None).otherwise(F.col("label"))), model, cols)

    path = str(tmp_path / "state")
    ls.update(df, model, cols, output=path)
    files = sorted(os.listdir(path))
    contents = {f: open(os.path.join(path, f), "rb").read() for f in files}
    # a task that fails (a label outside the loss's domain) leaves the previous state untouched
    bad = df.withColumn("label", F.when(F.col("user") == 5, 3.0).otherwise(F.col("label")))
    with pytest.raises(ValueError, match="label.*3.0"):
        ls.update(bad, model, cols, state=path, output=path)
    assert sorted(os.listdir(path)) == files
    assert all(open(os.path.join(path, f), "rb").read() == contents[f] for f in files)
    assert not glob.glob(path + ".tmp-*")
    # a state whose feature space differs from the data's
    from pyspark.ml.linalg import Vectors

    wide = spark.createDataFrame([(1, 1.0, 0.0, Vectors.dense([1.0, 2.0, 3.0]))], ["user", "label", "off", "x"])
    with pytest.raises(ValueError, match="index_map.*differs from the state"):
        ls.update(wide, model, cols, state=path)
    # another format version
    meta_path = os.path.join(path, ls.METADATA_FILE)
    meta = json.loads(open(meta_path).read())
    for version in (1, 99):  # 1: full precisions stored whole (before the upper triangle)
        meta["format_version"] = version
        with open(meta_path, "w") as f:
            json.dump(meta, f)
        with pytest.raises(ValueError, match=f"format_version.*{version}.*another format version"):
            ls.read_state(spark, path)
    with pytest.raises(ValueError, match="_lljax_state.json.*missing"):
        ls.read_state(spark, str(tmp_path))
    with pytest.raises(TypeError, match="column 'seed'"):
        ls.score(df, ls.SparkState(None, None), cols, thompson="ts", seed=None, request="user")


def test_arrays_features_with_order_and_max_rows(spark):
    """Features as (indices, values) array columns; max_rows rounds follow the ``order`` column."""
    rng = np.random.default_rng(8)
    n, F = 400, 5
    ent = rng.integers(0, 15, n)
    X = rng.normal(size=(n, F)) * (rng.random((n, F)) < 0.5)
    y = X @ rng.normal(size=F) + rng.normal(size=n)
    rows = [(int(ent[i]), float(y[i]), i, np.flatnonzero(X[i]).tolist(), X[i][np.flatnonzero(X[i])].tolist())
            for i in range(n)]
    df = spark.createDataFrame(rows, "user bigint, label double, t bigint, idx array<int>, val array<double>")
    cols = ls.Columns("user", "label", ls.Features.arrays("idx", "val", F), order="t")
    model = lljax.RandomEffectModel("linear", l2=1.0, hessian="diagonal", max_rows=10)
    state, report = ls.update(df, model, cols)
    ref = lljax.RandomEffectModel("linear", l2=1.0, hessian="diagonal", max_rows=10)
    ref.update(lljax.Dataset.from_arrays(ent, y, X=X))
    assert_models_equal(ref, state.to_model())
    assert report.rows == n
    bad = spark.createDataFrame([(1, 1.0, 0, [F], [1.0])], "user bigint, label double, t bigint, idx array<int>, "
                                "val array<double>")
    with pytest.raises(ValueError, match=f"column 'idx': value {F} is outside"):
        ls.update(bad, model, cols)


def test_report_text_with_and_without_statuses():
    """``str(SparkReport)`` adds the tasks up; a scoring job's report (no statuses) prints no empty field."""
    from lljax.spark import SparkReport

    tasks = [{"entities": 3, "rows": 10, "passed": 1, "blocks": 1, "status": {"converged": 3},
              "seconds": {"convert": 0.5, "solve": 1.0, "phases": {"pack": 0.2}}},
             {"entities": 2, "rows": 4, "passed": 0, "blocks": 2, "status": {"converged": 1, "stalled": 1},
              "seconds": {"convert": 0.25, "solve": 0.5}}]
    text = str(SparkReport(tasks, wall_seconds=2.0))
    assert text == ("SparkReport(tasks=2, entities=5, rows=14, passed=1, blocks=3, converged=4, stalled=1; wall 2.00s; "
                    "tasks: convert 0.75s, solve 1.50s)")
    empty = str(SparkReport([{"rows": 7, "seconds": {"score": 0.5}}], wall_seconds=1.0))
    assert empty == "SparkReport(tasks=1, entities=0, rows=7, passed=0, blocks=0; wall 1.00s; tasks: score 0.50s)"
