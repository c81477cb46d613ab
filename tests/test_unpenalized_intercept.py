"""Random effects with an unpenalized intercept (issue 15: "the unpenalized-intercept option applies to
random effects too"): ``RandomEffectModel(penalize_intercept=False)`` and ``RandomEffect(...,
penalize_intercept=False)`` in a GAME.

Oracles: SciPy's trust-exact fit of each entity's objective with the L2 weights ``(0, l2, ..., l2)``
(``tests/oracles.py``), and one joint least-squares solve over every coefficient of a linear GAME.
The solver-level contract over every method and backend is in ``tests/test_solve_contract.py``.
"""

import numpy as np
import pytest

from lljax import Dataset, ModelFileError, RandomEffectModel
from lljax.game import FixedEffect, GameData, GameInputError, GameModel, RandomEffect
from tests import oracles

L2 = 2.0


def entities(loss, seed=0, users=6, d=3, rows=(8, 25)):
    """Per-user dense rows of ``d`` features, with offsets, weights and labels of ``loss``; users' true
    intercepts are far from 0, so that penalizing them or not gives visibly different fits."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(*rows, size=users)
    user = np.repeat(np.arange(users), counts)
    n = len(user)
    X = rng.normal(size=(n, d))
    offset = 0.2 * rng.normal(size=n)
    weight = rng.uniform(0.5, 2.0, n)
    truth = rng.normal(size=(users, d + 1)) * 0.4
    truth[:, 0] += 1.5
    margin = offset + truth[user, 0] + np.einsum("nd,nd->n", X, truth[user, 1:])
    if loss == "linear":
        y = margin + 0.3 * rng.normal(size=n)
    elif loss == "logistic":
        y = (rng.random(n) < 1 / (1 + np.exp(-margin))).astype(float)
    else:
        y = rng.poisson(np.exp(0.5 * margin)).astype(float)
    return user, X, y, weight, offset


def oracle_labels(loss, y):
    return np.where(y > 0, 1.0, -1.0) if loss == "logistic" else y


def check_against_oracle(model, user, X, y, w, o, loss, *, prior=None, delta=0.0, rtol=1e-7, atol=1e-8):
    """Every entity's mean (and full precision, when kept) against SciPy with L2 weights ``(0, l2, ...)``;
    ``prior``: ``{entity: (mean, precision)}`` of a Bayesian update."""
    d = X.shape[1] + 1
    a = np.r_[0.0, np.full(d - 1, L2)]
    for key in np.unique(user):
        rows = user == key
        X1 = np.c_[np.ones(rows.sum()), X[rows]]
        theta0, P0 = prior[key] if prior else (np.zeros(d), np.zeros(d))
        expected = oracles.fit(X1, oracle_labels(loss, y[rows]), w[rows], o[rows], theta0, P0, a, delta, loss)
        got = model.coefficients(key)
        # An entity stores the features its rows have; the oracle's other coefficients are 0 (no data).
        absent = np.setdiff1d(np.arange(d), got.feature_ids)
        np.testing.assert_array_equal(np.abs(X1[:, absent]).sum(axis=0), 0.0)
        np.testing.assert_allclose(expected[absent], 0.0, atol=atol)
        np.testing.assert_allclose(got.mean, expected[got.feature_ids], rtol=rtol, atol=atol, err_msg=f"entity {key}")
        if model.hessian == "full":
            H = oracles.objective(expected, X1, oracle_labels(loss, y[rows]), w[rows], o[rows], theta0, P0, a,
                                  delta, loss)[2]
            np.testing.assert_allclose(got.precision, H, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("native", ["1", "0"], ids=["native", "jax"])
@pytest.mark.parametrize("loss", ["linear", "logistic", "poisson"])
def test_random_effect_equals_the_scipy_oracle(monkeypatch, loss, native):
    monkeypatch.setenv("LLJAX_NATIVE", native)
    user, X, y, w, o = entities(loss)
    model = RandomEffectModel(loss, l2=L2, hessian="full", tol=1e-10, penalize_intercept=False)
    assert model.update(Dataset.from_arrays(user, y, X=X, weight=w, offset=o)).all_converged
    check_against_oracle(model, user, X, y, w, o, loss)
    penalized = RandomEffectModel(loss, l2=L2, hessian="full", tol=1e-10)
    penalized.update(Dataset.from_arrays(user, y, X=X, weight=w, offset=o))
    gap = abs(model.coefficients(0).mean[0] - penalized.coefficients(0).mean[0])
    assert gap > 1e-3, "the default (a penalized intercept) must differ"


@pytest.mark.parametrize("loss", ["logistic", "poisson"])
def test_sequential_bayesian_update_keeps_the_intercepts_prior_term(loss):
    """``delta = 0.5``: the second update's prior is the first posterior; only the L2 term leaves the
    intercept out."""
    user, X, y, w, o = entities(loss, seed=3, rows=(30, 50))  # both labels in each half of every entity
    half = np.arange(len(user)) % 2 == 0
    model = RandomEffectModel(loss, l2=L2, delta=0.5, hessian="full", tol=1e-10, penalize_intercept=False)
    first = Dataset.from_arrays(user[half], y[half], X=X[half], weight=w[half], offset=o[half])
    assert model.update(first, delta=0.0).all_converged
    check_against_oracle(model, user[half], X[half], y[half], w[half], o[half], loss)
    prior = {k: (model.coefficients(k).mean, model.coefficients(k).precision) for k in np.unique(user)}
    rest = ~half
    assert model.update(Dataset.from_arrays(user[rest], y[rest], X=X[rest], weight=w[rest], offset=o[rest])
                        ).all_converged
    check_against_oracle(model, user[rest], X[rest], y[rest], w[rest], o[rest], loss, prior=prior, delta=0.5)


def test_wide_entities_without_an_intercept_prior_are_solved_by_lbfgs():
    """Wide (>= 64 features), diagonal precision: the span method needs ``A > 0`` everywhere, so a cold
    unpenalized intercept sends the block to L-BFGS, which agrees with the oracle."""
    rng = np.random.default_rng(5)
    users, F = 3, 70
    user = np.repeat(np.arange(users), 40)
    n = len(user)
    X = rng.normal(size=(n, F)) * (rng.random((n, F)) < 0.1)
    y = (rng.random(n) < 0.8).astype(float)
    w, o = np.ones(n), np.zeros(n)
    model = RandomEffectModel("logistic", l2=L2, hessian="diagonal", tol=1e-9, max_iter=200,
                              penalize_intercept=False)
    assert model.update(Dataset.from_arrays(user, y, X=X)).all_converged
    check_against_oracle(model, user, X, y, w, o, "logistic", rtol=1e-5, atol=1e-6)


def test_the_setting_is_saved_loaded_and_exported(tmp_path):
    user, X, y, w, o = entities("logistic")
    model = RandomEffectModel("logistic", l2=L2, penalize_intercept=False)
    model.update(Dataset.from_arrays(user, y, X=X, weight=w, offset=o))
    model.save(tmp_path / "m.npz")
    loaded = RandomEffectModel.load(tmp_path / "m.npz")
    assert loaded.penalize_intercept is False
    np.testing.assert_array_equal(loaded.coefficients(2).mean, model.coefficients(2).mean)
    model.to_parquet(tmp_path / "m.parquet")
    assert RandomEffectModel.from_parquet(tmp_path / "m.parquet").penalize_intercept is False
    with pytest.raises(TypeError, match="penalize_intercept"):
        RandomEffectModel("logistic", penalize_intercept="no")


def test_a_file_written_before_the_setting_existed_loads_with_the_default(tmp_path):
    """Format-2 files from before ``penalize_intercept`` have no such field: they load as ``True`` (the
    behaviour they were trained with); any other missing field is still refused."""
    import json
    import zipfile

    user, X, y, w, o = entities("linear")
    model = RandomEffectModel("linear", l2=L2)
    model.update(Dataset.from_arrays(user, y, X=X))
    model.save(tmp_path / "m.npz")

    def rewrite(drop, target):
        with np.load(tmp_path / "m.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        metadata = json.loads(str(arrays["metadata"]))
        for field in drop:
            del metadata["hyperparameters"][field]
        arrays["metadata"] = np.array(json.dumps(metadata))
        np.savez(target, **arrays)
        assert zipfile.is_zipfile(target)

    rewrite(["penalize_intercept"], tmp_path / "old.npz")
    old = RandomEffectModel.load(tmp_path / "old.npz")
    assert old.penalize_intercept is True
    np.testing.assert_array_equal(old.coefficients(1).mean, model.coefficients(1).mean)
    rewrite(["l2"], tmp_path / "bad.npz")
    with pytest.raises(ModelFileError, match="hyperparameters"):
        RandomEffectModel.load(tmp_path / "bad.npz")


def test_game_linear_coordinate_descent_with_an_unpenalized_per_user_intercept_is_the_joint_ridge():
    """A fixed effect without intercept, a per-user effect with unpenalized intercepts and a per-item
    effect: coordinate descent converges to the one least-squares solve with L2 weight 0 on the user
    intercepts (identified: the item intercepts are penalized)."""
    rng = np.random.default_rng(7)
    n, users, items = 500, 12, 9
    u, m = rng.integers(0, users, n), rng.integers(0, items, n)
    Xg, Xu = rng.normal(size=(n, 2)), rng.normal(size=(n, 2))
    y = 0.5 + Xg @ [0.3, -0.2] + rng.normal(size=users)[u] + 0.3 * rng.normal(size=items)[m] + rng.normal(size=n)
    data = GameData.from_arrays(y, ids={"user": u, "item": m}, features={"g": Xg, "xu": Xu})
    lf, lu, lm = 1.0, 3.0, 10.0  # item intercepts penalized firmly: the user/item intercept trade-off converges fast
    model = GameModel("linear", [
        FixedEffect("global", features="g", l2=lf, intercept=False, hessian="diagonal", tol=1e-16),
        RandomEffect("per_user", entity="user", features="xu", l2=lu, tol=1e-13, penalize_intercept=False),
        RandomEffect("per_item", entity="item", l2=lm, tol=1e-13),
    ])
    report = model.fit(data, passes=300)
    Au, Am = np.zeros((n, users * 3)), np.zeros((n, items))
    Zu = np.c_[np.ones(n), Xu]
    for j in range(3):
        Au[np.arange(n), u * 3 + j] = Zu[:, j]
    Am[np.arange(n), m] = 1.0
    A = np.c_[Xg, Au, Am]
    user_l2 = np.tile([0.0, lu, lu], users)
    penalty = np.r_[np.full(2, lf), user_l2, np.full(items, lm)]
    beta = np.linalg.solve(A.T @ A + np.diag(penalty), A.T @ y)
    np.testing.assert_allclose(model.score(data).total, A @ beta, atol=1e-7)
    re = model.random_effect("per_user")
    got = np.concatenate([re.coefficients(e).mean for e in range(users)])
    np.testing.assert_allclose(got, beta[2:2 + users * 3], atol=1e-7)
    # The reported objective leaves the user intercepts out of the penalty, so it matches the oracle's.
    objective = 0.5 * np.sum((y - A @ beta) ** 2) + 0.5 * beta @ (penalty * beta)
    assert report.steps[-1].objective == pytest.approx(objective, rel=1e-9)


def test_game_refuses_a_non_boolean_setting():
    with pytest.raises(GameInputError, match="penalize_intercept"):
        RandomEffect("per_user", entity="user", penalize_intercept=1)
