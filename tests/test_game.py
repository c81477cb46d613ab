"""GAME models (lljax.game): coordinate descent, the fixed-effect solver, scoring, persistence, incremental
updates and bad input. float64 (tests/conftest.py enables x64)."""

import math

import numpy as np
import pytest
import scipy.optimize
import scipy.sparse as sp

import lljax
from lljax.game import ExternalScore, FixedEffect, GameData, GameInputError, GameModel, RandomEffect
from lljax.game.fixed_effect import Prior, make_design, solve_glm


def crossed_data(seed=0, n=600, users=20, items=15, loss="linear", weights=False):
    """A fixed effect on 4 global features, a per-user effect on 2 features, a per-item effect on 1."""
    rng = np.random.default_rng(seed)
    u = rng.integers(0, users, n)
    m = rng.integers(0, items, n)
    Xg = rng.normal(size=(n, 4)) * (rng.random((n, 4)) < 0.7)
    Xu = rng.normal(size=(n, 2))
    Xm = rng.normal(size=(n, 1))
    bu = rng.normal(size=(users, 3)) * 0.5
    bm = rng.normal(size=(items, 2)) * 0.5
    eta = 0.3 + Xg @ np.array([0.5, -0.3, 0.2, 0.1])
    eta = eta + (np.c_[np.ones(n), Xu] * bu[u]).sum(1) + (np.c_[np.ones(n), Xm] * bm[m]).sum(1)
    if loss == "linear":
        y = eta + rng.normal(size=n) * 0.5
    elif loss == "logistic":
        y = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(float)
    else:
        y = rng.poisson(np.exp(0.3 * eta)).astype(float)
    w = rng.uniform(0.5, 2.0, n) if weights else None
    offset = rng.normal(size=n) * 0.1
    return GameData.from_arrays(y, ids={"user": u, "item": m}, features={"g": Xg, "xu": Xu, "xm": Xm}, weight=w,
                                offset=offset)


def three_coordinates(loss="linear", l2=(1.0, 2.0, 3.0), hessian="full", delta=0.0):
    return GameModel(loss, [
        FixedEffect("global", features="g", l2=l2[0], hessian="diagonal"),
        RandomEffect("per_user", entity="user", features="xu", l2=l2[1], hessian=hessian, delta=delta),
        RandomEffect("per_item", entity="item", features="xm", l2=l2[2], hessian=hessian, delta=delta),
    ])


def re_coefficient_matrix(model, name, num_entities, width):
    """(num_entities, width) means of a random effect; feature 0 is the intercept."""
    out = np.zeros((num_entities, width))
    re = model.random_effect(name)
    for e in range(num_entities):
        if e in re:
            c = re.coefficients(e)
            out[e, c.feature_ids] = c.mean
    return out


def test_linear_coordinate_descent_converges_to_joint_ridge():
    users, items = 40, 30
    data = crossed_data(weights=True, users=users, items=items)
    n = data.num_examples
    lf, lu, lm = 1.0, 5.0, 5.0
    # tight solver tolerances: a warm-started solve whose gradient is already under tol does not move
    model = GameModel("linear", [
        FixedEffect("global", features="g", l2=lf, hessian="diagonal", tol=1e-16),
        RandomEffect("per_user", entity="user", features="xu", l2=lu, tol=1e-13),
        RandomEffect("per_item", entity="item", features="xm", l2=lm, tol=1e-13),
    ])
    report = model.fit(data, passes=150)
    # The oracle: one least-squares solve over every coefficient of the mixed model.
    Xg = data.features["g"].to_dense()
    Zu = np.c_[np.ones(n), data.features["xu"].to_dense()]
    Zm = np.c_[np.ones(n), data.features["xm"].to_dense()]
    u, m = data.ids["user"], data.ids["item"]
    Au = np.zeros((n, users * 3))
    Am = np.zeros((n, items * 2))
    for j in range(3):
        Au[np.arange(n), u * 3 + j] = Zu[:, j]
    for j in range(2):
        Am[np.arange(n), m * 2 + j] = Zm[:, j]
    A = np.c_[np.ones(n), Xg, Au, Am]
    penalty = np.r_[0.0, np.full(4, lf), np.full(users * 3, lu), np.full(items * 2, lm)]  # intercept unpenalized
    w = data.weight
    beta = np.linalg.solve(A.T @ (w[:, None] * A) + np.diag(penalty), A.T @ (w * (data.label - data.offset)))
    fe = model.fixed_effect("global").coefficients
    np.testing.assert_allclose(fe, beta[:5], atol=1e-8)
    np.testing.assert_allclose(re_coefficient_matrix(model, "per_user", users, 3).ravel(), beta[5:5 + users * 3],
                               atol=1e-8)
    np.testing.assert_allclose(re_coefficient_matrix(model, "per_item", items, 2).ravel(), beta[5 + users * 3:],
                               atol=1e-8)
    np.testing.assert_allclose(model.score(data).total, data.offset + A @ beta, atol=1e-8)
    objectives = [s.objective for s in report.steps]
    assert all(b <= a + 1e-12 * abs(a) for a, b in zip(objectives, objectives[1:]))
    early = three_coordinates("linear", (lf, lu, lm)).fit(data, passes=150, tol=1e-6)
    assert early.steps[-1].pass_ < 20  # stopped by tol


def test_logistic_objective_never_increases_and_report():
    data = crossed_data(seed=1, loss="logistic", weights=True)
    train, valid = data.split(0.8, seed=3)
    model = three_coordinates("logistic", (1.0, 1.0, 1.0))
    report = model.fit(train, validation=valid, passes=4, order=["per_item", "global", "per_user"])
    objectives = [s.objective for s in report.steps]
    assert len(objectives) == 12
    assert all(b <= a * (1 + 1e-10) for a, b in zip(objectives, objectives[1:])), objectives
    np.testing.assert_allclose(objectives[-1], model.objective(train), rtol=1e-12)
    assert [s.coordinate for s in report.steps[:3]] == ["per_item", "global", "per_user"]
    assert set(report.steps[0].metrics) == {"auc", "log_loss"}
    assert report.steps[1].entities == 1 and report.steps[2].entities == 20
    assert report.steps[2].status_counts == {"converged": 20}
    text = report.table()
    assert "per_user" in text and "val_auc" in text and "statuses" in text
    frame = report.to_pandas()
    assert list(frame["coordinate"][:3]) == ["per_item", "global", "per_user"]
    np.testing.assert_allclose(report.metric("auc")[-1], lljax.auc(model.score(valid).total, valid.label))


def test_keep_best_restores_the_best_step():
    data = crossed_data(seed=2, n=400, loss="logistic")
    train, valid = data.split(0.7, seed=1)
    model = three_coordinates("logistic", (1.0, 0.01, 0.01))  # weak penalties: later steps overfit
    report = model.fit(train, validation=valid, passes=3, keep_best="log_loss")
    losses = report.metric("log_loss")
    best = int(np.argmin(losses))
    assert report.best == (report.steps[best].pass_, report.steps[best].coordinate)
    np.testing.assert_allclose(model.evaluate(valid)["log_loss"], losses[best], rtol=1e-10)


def sklearn_logistic(X, y, l2, offset=None):
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=1.0 / l2, tol=1e-12, max_iter=10_000).fit(X, y)  # intercept unpenalized
    return np.r_[clf.intercept_, clf.coef_[0]]


@pytest.mark.parametrize("solver,dense", [("newton", True), ("newton", False), ("newton_cg", False),
                                          ("lbfgs", True)])
def test_fixed_effect_equals_sklearn_without_offsets(solver, dense):
    rng = np.random.default_rng(4)
    n, F = 800, 6
    X = rng.normal(size=(n, F)) * (rng.random((n, F)) < 0.6)
    y = (rng.random(n) < 1 / (1 + np.exp(-(X @ rng.normal(size=F) - 0.4)))).astype(float)
    data = GameData.from_arrays(y, features={"x": sp.csr_matrix(X)})
    model = GameModel("logistic", [FixedEffect("fe", features="x", l2=2.0, solver=solver, dense=dense)])
    model.fit(data)
    np.testing.assert_allclose(model.fixed_effect("fe").coefficients, sklearn_logistic(X, y, 2.0), atol=1e-6)
    assert model.fixed_effect("fe").status == lljax.Status.CONVERGED


def scipy_glm(loss, X, y, w, offset, l2, penalize_intercept):
    """The fixed-effect objective minimized by SciPy (trust-exact with analytic gradient and Hessian)."""
    A = np.c_[np.ones(len(y)), X]
    a = np.full(A.shape[1], l2)
    if not penalize_intercept:
        a[0] = 0.0
    s = np.where(y == 1, 1.0, -1.0)

    def f(b):
        m = A @ b + offset
        if loss == "logistic":
            v = np.logaddexp(0, -s * m)
        elif loss == "poisson":
            v = np.exp(m) - y * m
        else:
            v = 0.5 * (m - y) ** 2
        return np.sum(w * v) + 0.5 * np.sum(a * b * b)

    def pieces(b):
        m = A @ b + offset
        if loss == "logistic":
            p = 1 / (1 + np.exp(-m))
            return (p - (s > 0)), p * (1 - p)
        if loss == "poisson":
            return np.exp(m) - y, np.exp(m)
        return m - y, np.ones_like(m)

    def grad(b):
        d1, _ = pieces(b)
        return A.T @ (w * d1) + a * b

    def hess(b):
        _, d2 = pieces(b)
        return A.T @ ((w * d2)[:, None] * A) + np.diag(a)

    res = scipy.optimize.minimize(f, np.zeros(A.shape[1]), jac=grad, hess=hess, method="trust-exact",
                                  options={"gtol": 1e-11})
    return res.x, hess(res.x)


@pytest.mark.parametrize("loss", ["logistic", "poisson", "linear"])
@pytest.mark.parametrize("penalize_intercept", [False, True])
def test_fixed_effect_equals_scipy_with_offsets_and_weights(loss, penalize_intercept):
    rng = np.random.default_rng(5)
    n, F = 500, 5
    X = rng.normal(size=(n, F)) * 0.5
    offset = rng.normal(size=n)
    w = rng.uniform(0.2, 3.0, n)
    eta = X @ rng.normal(size=F) + offset + 1.0
    if loss == "logistic":
        y = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(float)
    elif loss == "poisson":
        y = rng.poisson(np.exp(eta)).astype(float)
    else:
        y = eta + rng.normal(size=n)
    data = GameData.from_arrays(y, features={"x": X}, weight=w, offset=offset)
    model = GameModel(loss, [FixedEffect("fe", features="x", l2=3.0, penalize_intercept=penalize_intercept,
                                         hessian="full")])
    model.fit(data)
    beta, H = scipy_glm(loss, X, y, w, offset, 3.0, penalize_intercept)
    state = model.fixed_effect("fe")
    np.testing.assert_allclose(state.coefficients, beta, atol=1e-6)
    np.testing.assert_allclose(state.precision, H, rtol=1e-6, atol=1e-8 * np.abs(H).max())
    np.testing.assert_allclose(model.score(data).total, offset + np.c_[np.ones(n), X] @ beta, atol=1e-6)


def test_fixed_effect_diagonal_precision_and_sparse_paths_agree():
    rng = np.random.default_rng(6)
    n, F = 300, 40
    X = sp.random(n, F, density=0.1, random_state=7, format="csr")
    y = (rng.random(n) < 0.4).astype(float)
    yy = np.where(y == 1, 1.0, -1.0)
    results = {}
    for name, dense, method in [("dense", True, "newton"), ("pairs", False, "newton"), ("cg", False, "newton_cg")]:
        D = make_design(X.indptr, X.indices, X.data, F, True, np.float64, True, dense=dense)
        r = solve_glm(D, yy, np.ones(n), np.zeros(n), Prior.l2(F + 1, 0.5, False, True, np.float64),
                      np.zeros(F + 1), 1e-10, loss="logistic", method=method, max_iter=100, precision="diagonal")
        results[name] = (np.asarray(r.theta), np.asarray(r.precision))
    for name in ("pairs", "cg"):
        np.testing.assert_allclose(results[name][0], results["dense"][0], atol=1e-7)
        np.testing.assert_allclose(results[name][1], results["dense"][1], rtol=1e-7)


def test_scores_contributions_predict_and_external_score():
    data = crossed_data(seed=7, loss="poisson")
    ext = np.linspace(-0.1, 0.1, data.num_examples)
    data = GameData.from_arrays(data.label, ids=data.ids, features=data.features, offset=data.offset,
                                scores={"xgb": ext})
    model = GameModel("poisson", [ExternalScore("xgb", column="xgb"), FixedEffect("global", features="g"),
                                  RandomEffect("per_user", entity="user", features="xu", hessian="diagonal")])
    model.fit(data, passes=2)
    s = model.score(data)
    np.testing.assert_allclose(s.contributions["xgb"], ext)
    np.testing.assert_allclose(s.total, s.offset + sum(s.contributions.values()), rtol=0, atol=1e-12)
    np.testing.assert_allclose(model.predict(data), np.exp(s.total))
    # the callable form of the same external score gives the same model
    model2 = GameModel("poisson", [ExternalScore("xgb", fn=lambda d: d.scores["xgb"] * 1.0),
                                   FixedEffect("global", features="g"),
                                   RandomEffect("per_user", entity="user", features="xu", hessian="diagonal")])
    model2.fit(data, passes=2)
    np.testing.assert_allclose(model2.score(data).total, s.total, atol=1e-10)
    # unseen entities contribute 0
    unseen = GameData.from_arrays(None, ids={"user": np.array([10_000]), "item": np.array([0])},
                                  features={"g": np.zeros((1, 4)), "xu": np.ones((1, 2)), "xm": np.ones((1, 1))},
                                  scores={"xgb": np.zeros(1)})
    assert model.score(unseen).contributions["per_user"][0] == 0.0


def test_save_load_identical_scores_and_tables(tmp_path):
    data = crossed_data(seed=8, loss="logistic")
    names = {"g": [f"g{i}" for i in range(4)], "xu": ["genre=a", "genre=b"], "xm": ["age"]}
    data = GameData.from_arrays(data.label, ids=data.ids, features=data.features, feature_names=names,
                                offset=data.offset)
    model = three_coordinates("logistic")
    model.fit(data, passes=2)
    path = tmp_path / "game.lljax"
    model.save(path)
    loaded = GameModel.load(path)
    a, b = model.score(data), loaded.score(data)
    np.testing.assert_array_equal(a.total, b.total)
    for name in model.names:
        np.testing.assert_array_equal(a.contributions[name], b.contributions[name])
    np.testing.assert_allclose(b.total, b.offset + sum(b.contributions.values()), rtol=0, atol=1e-12)
    assert loaded.coordinates == model.coordinates and loaded.metrics == model.metrics
    tables = loaded.to_tables()
    assert list(tables["global"]["name"]) == ["(intercept)", "g0", "g1", "g2", "g3"]
    assert np.all(np.isfinite(tables["global"]["variance"]))
    assert set(tables["per_user"]["name"]) == {"intercept", "genre"}
    assert len(tables["per_item"]["entity"]) == 15 * 2
    # the loaded model keeps training (warm) and updating
    loaded.update(data.take(np.arange(50)))
    with pytest.raises(lljax.ModelFileError, match="not a readable"):
        (tmp_path / "bad").write_bytes(b"not a zip")
        GameModel.load(tmp_path / "bad")


def test_incremental_linear_delta1_full_equals_batch_fit_with_frozen_fixed_effect():
    data = crossed_data(seed=9, n=900, weights=True)
    batches = [data.take(np.arange(i, min(i + 300, 900))) for i in range(0, 900, 300)]
    model = GameModel("linear", [FixedEffect("global", features="g", l2=1.0),
                                 RandomEffect("per_user", entity="user", features="xu", l2=2.0, delta=1.0,
                                              hessian="full")])
    model.fit(batches[0], passes=1)  # the random effect is fitted last, given the fixed effect
    fe_before = model.fixed_effect("global").coefficients.copy()
    stream = model.run_stream(batches[1:])
    assert len(stream.windows) == 2 and set(stream.overall) == {"rmse"}
    np.testing.assert_array_equal(model.fixed_effect("global").coefficients, fe_before)  # frozen
    # the oracle: the random effect fitted once on all batches, offset = base offset + frozen fixed effect
    fe_score = model.score(data).contributions["global"]
    oracle = lljax.RandomEffectModel("linear", l2=2.0, hessian="full")
    u = data.ids["user"]
    xu = data.features["xu"]
    oracle.update(lljax.Dataset.from_arrays(u, data.label, indptr=xu.indptr, feature_ids=xu.indices + 1,
                                            values=xu.values, num_features=3, weight=data.weight,
                                            offset=data.offset + fe_score))
    got = model.random_effect("per_user")
    for e in range(20):
        a, b = got.coefficients(e), oracle.coefficients(e)
        np.testing.assert_array_equal(a.feature_ids, b.feature_ids)
        np.testing.assert_allclose(a.mean, b.mean, atol=1e-8)
        np.testing.assert_allclose(a.precision, b.precision, rtol=1e-8)
    assert "overall" in stream.table()


def test_incremental_update_with_several_passes_counts_the_batch_once():
    data = crossed_data(seed=10, n=600)
    first, second = data.take(np.arange(300)), data.take(np.arange(300, 600))

    def model():
        m = GameModel("linear", [FixedEffect("global", features="g", hessian="full", delta=0.5),
                                 RandomEffect("per_user", entity="user", features="xu", hessian="full", delta=1.0)])
        m.fit(first)
        return m

    once, thrice = model(), model()
    once.update(second, passes=1)
    report = thrice.update(second, passes=3)
    assert [s.coordinate for s in report.steps] == ["per_user"] * 3
    for e in range(20):  # the fixed effect is frozen: every pass solves the same problem from the same prior
        a, b = once.random_effect("per_user").coefficients(e), thrice.random_effect("per_user").coefficients(e)
        np.testing.assert_allclose(a.precision, b.precision, rtol=1e-12)
        np.testing.assert_allclose(a.mean, b.mean, atol=1e-12)
    # the fixed effect can be updated too (its posterior as the prior), when it keeps a precision
    before = once.fixed_effect("global").coefficients.copy()
    report = once.update(second, update_fixed=True, passes=2)
    assert [s.coordinate for s in report.steps] == ["global", "per_user"] * 2
    assert not np.allclose(once.fixed_effect("global").coefficients, before)
    plain = GameModel("linear", [FixedEffect("f", features="g")])
    plain.fit(first)
    with pytest.raises(GameInputError, match=r"coordinate 'f', column 'hessian': value 'none' an incremental"):
        plain.update(second, update_fixed=True)


# -- bad input: every error names the coordinate, the column and the value -----------------------------


def test_coordinate_naming_a_missing_column():
    data = crossed_data(n=50)
    model = GameModel("linear", [RandomEffect("per_user", entity="usr", features="xu")])
    with pytest.raises(GameInputError, match=r"coordinate 'per_user', column 'usr': is not an entity column"):
        model.fit(data)
    model = GameModel("linear", [FixedEffect("global", features="gg")])
    with pytest.raises(GameInputError, match=r"coordinate 'global', column 'gg': is not a feature set"):
        model.fit(data)
    model = GameModel("linear", [ExternalScore("xgb", column="xgb")])
    with pytest.raises(GameInputError, match=r"coordinate 'xgb', column 'xgb': is not a score column"):
        model.score(data)


def test_nan_entity_keys():
    users = np.arange(20, dtype=float)
    users[7] = np.nan
    data = GameData.from_arrays(np.zeros(20), ids={"user": users}, features={"x": np.ones((20, 1))})
    model = GameModel("linear", [RandomEffect("per_user", entity="user", features="x")])
    with pytest.raises(GameInputError, match=r"coordinate 'per_user', column 'user', example 7: value nan"):
        model.fit(data)
    keys = np.array(["a", None, "c"], dtype=object)
    data = GameData.from_arrays(np.zeros(3), ids={"user": keys})
    model = GameModel("linear", [RandomEffect("per_user", entity="user")])
    with pytest.raises(GameInputError, match=r"coordinate 'per_user', column 'user', example 1: value None"):
        model.fit(data)


def test_duplicate_coordinate_names():
    with pytest.raises(GameInputError, match=r"coordinate 'per_user', column 'name': value 'per_user' is the name "
                                             r"of two coordinates"):
        GameModel("linear", [RandomEffect("per_user", entity="user"), RandomEffect("per_user", entity="item")])


def test_validation_columns_differ():
    data = crossed_data(n=100)
    model = three_coordinates()
    other = GameData.from_arrays(data.label, ids={"user": data.ids["user"], "item": data.ids["item"]},
                                 features={"g": data.features["g"], "xu": data.features["xu"],
                                           "xm": np.ones((100, 2))})
    with pytest.raises(GameInputError, match=r"column 'xm': value 2 has 1 columns in training but 2 in validation"):
        model.fit(data, validation=other)
    other = GameData.from_arrays(data.label, ids={"user": data.ids["user"], "item": data.ids["item"],
                                                  "extra": data.ids["user"]}, features=data.features)
    with pytest.raises(GameInputError, match=r"column 'extra': value 'missing in training' differs"):
        model.fit(data, validation=other)
    no_item = GameData.from_arrays(data.label, ids={"user": data.ids["user"]}, features=data.features)
    with pytest.raises(GameInputError, match=r"coordinate 'per_item', column 'item'"):
        model.fit(data, validation=no_item)


def test_external_score_of_wrong_length():
    data = crossed_data(n=60)
    model = GameModel("linear", [ExternalScore("xgb", fn=lambda d: np.zeros(d.num_examples - 1)),
                                 FixedEffect("global", features="g")])
    with pytest.raises(GameInputError, match=r"coordinate 'xgb', column 'fn': value '<lambda>' the callable returned "
                                             r"shape \(59,\), expected \(60,\)"):
        model.fit(data)
    with pytest.raises(GameInputError, match=r"column 'xgb': value '<array of shape \(59,\)>' must have shape \(60,\)"):
        GameData.from_arrays(data.label, ids=data.ids, scores={"xgb": np.zeros(59)})


def test_bad_specs_and_data():
    with pytest.raises(GameInputError, match=r"coordinate 'fe', column 'l2': value -1"):
        FixedEffect("fe", l2=-1)
    with pytest.raises(GameInputError, match=r"coordinate 'fe', column 'solver': value 'bfgs'"):
        FixedEffect("fe", solver="bfgs")
    with pytest.raises(GameInputError, match=r"coordinate 're', column 'delta'"):
        RandomEffect("re", entity="u", delta=2.0)
    with pytest.raises(GameInputError, match=r"column 'x', example 1, feature column 0: value nan must be finite"):
        GameData.from_arrays(np.zeros(2), features={"x": np.array([[1.0], [np.nan]])})
    with pytest.raises(GameInputError, match="'keep_best'"):
        three_coordinates().fit(crossed_data(n=50), keep_best="auc")
    data = crossed_data(n=50, loss="linear")
    model = GameModel("logistic", [RandomEffect("per_user", entity="user")])
    with pytest.raises(ValueError, match=r"coordinate 'per_user'.*label"):
        model.fit(data)


def test_take_split_batches_and_pandas():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"y": [1, 0, 1, 0, 1, 1], "user": ["a", "b", "a", "c", "b", "a"], "age": [0.1, 0.2, 0.3,
                          0.4, 0.5, 0.6], "job": ["x", "y", "x", "x", "y", "z"]})
    data = GameData.from_pandas(frame, label="y", ids=["user"], features={"user": ["age", "job"]})
    assert data.features["user"].names == ("age", "job=x", "job=y", "job=z")
    sub = data.take(np.array([5, 0]))
    np.testing.assert_array_equal(sub.features["user"].to_dense(), data.features["user"].to_dense()[[5, 0]])
    assert sum(len(b) for b in data.batches(4)) == 6
    model = GameModel("logistic", [FixedEffect("fe", features="user", l2=1.0),
                                   RandomEffect("re", entity="user", l2=1.0)])
    report = model.fit(data, passes=2)
    assert len(report.to_pandas()) == 4
    assert math.isfinite(report.steps[-1].objective)


def test_exploration_ucb_and_thompson_with_the_other_coordinates_as_offset():
    import jax

    data = crossed_data(seed=11, n=400, loss="logistic")
    model = three_coordinates("logistic")
    model.fit(data)
    s = model.score(data)
    np.testing.assert_allclose(model.explore(data, "per_user", method="ucb", alpha=0.0), s.total, atol=1e-10)
    np.testing.assert_allclose(model.explore(data, "per_user", key=jax.random.key(0), scale=0.0), s.total, atol=1e-10)
    # UCB by hand for row 0: mean + sqrt(x^T P^-1 x)
    c = model.random_effect("per_user").coefficients(int(data.ids["user"][0]))
    x = np.r_[1.0, data.features["xu"].to_dense()[0]][c.feature_ids]
    ucb = model.explore(data, "per_user", method="ucb", alpha=1.0)
    np.testing.assert_allclose(ucb[0], s.total[0] + np.sqrt(x @ np.linalg.solve(c.precision, x)), atol=1e-10)
    # one draw per request: two rows of one request with the same features get the same score
    small = data.take(np.array([0, 0, 1]))
    small = GameData.from_arrays(small.label, ids={**small.ids, "request": np.array([7, 7, 8])},
                                 features=small.features)
    draws = model.explore(small, "per_item", key=jax.random.key(1), request="request")
    assert draws[0] == draws[1]
    with pytest.raises(TypeError, match="coordinate 'global', column 'coordinate'"):
        model.explore(data, "global", method="ucb")


def test_float32_data_trains_close_to_float64():
    data = crossed_data(seed=12, n=500, loss="logistic")
    data32 = GameData.from_arrays(data.label, ids=data.ids, features=data.features, offset=data.offset,
                                  dtype=np.float32)
    a, b = three_coordinates("logistic"), three_coordinates("logistic")
    a.fit(data, passes=2)
    b.fit(data32, passes=2)
    assert b.fixed_effect("global").coefficients.dtype == np.float32
    np.testing.assert_allclose(b.score(data32).total, a.score(data).total, atol=2e-3)
