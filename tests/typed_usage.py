"""A typed user script: lljax's public API used as the README uses it, with the types a user would write.

``tests/test_typing.py`` runs mypy on it (it must be clean, with this module held to stricter options than
the package: see ``[tool.mypy]`` in pyproject.toml) and runs :func:`main` on small data, so that what mypy
accepts here also works.
"""

from __future__ import annotations

import os

import jax
import numpy as np

import lljax
from lljax.game import FixedEffect, GameData, GameModel, GameScores, RandomEffect


def random_effects(out_dir: str, n: int = 2_000, users: int = 50) -> float:
    """Train per-user logistic models on NumPy arrays, score, save and reload, explore; returns the AUC."""
    rng = np.random.default_rng(0)
    entity = rng.integers(0, users, size=n)
    X = rng.normal(size=(n, 8)) * (rng.random((n, 8)) < 0.3)
    offset = rng.normal(size=n)
    label = (rng.random(n) < 1 / (1 + np.exp(-offset))).astype(float)

    data: lljax.Dataset = lljax.Dataset.from_arrays(entity, label, X=X, offset=offset)
    model = lljax.RandomEffectModel("logistic", l2=1.0, delta=0.8, hessian="full")
    report: lljax.UpdateReport = model.update(data)
    converged: int = report.status_counts[lljax.Status.CONVERGED]
    assert converged >= 0
    scores: np.ndarray = model.score(data)
    auc: float = lljax.auc(scores, label)
    coef: lljax.EntityCoefficients = model.coefficients(int(entity[0]))
    assert coef.precision is not None and coef.mean.shape == coef.feature_ids.shape

    # The next mini-batches, progressive validation, persistence.
    rows = np.arange(data.num_examples)
    batches: list[lljax.Dataset] = [data.take(rows % 2 == k) for k in range(2)]
    stream: lljax.StreamReport = lljax.run_stream(model, batches)
    assert len(stream.windows) == 2 and stream.table()
    path = os.path.join(out_dir, "model.npz")
    model.save(path)
    restored = lljax.RandomEffectModel.load(path)
    assert np.array_equal(restored.score(data), model.score(data))

    # Exploration: a posterior over features 0..8 (the intercept is column 0, so candidates leave it out).
    user_ids = np.unique(entity)[:3]
    post: lljax.Posterior = model.posterior(user_ids, np.arange(9))
    request_rows = np.array([2, 0, 2, 1, 0])
    candidates = rng.normal(size=(5, 10, 8))
    key = jax.random.key(0)
    sampled: jax.Array = lljax.thompson_candidates(key, post, request_rows, candidates)
    upper: jax.Array = lljax.ucb_candidates(post, request_rows, candidates, alpha=1.0)
    mean, variance = lljax.candidate_moments(post, request_rows, candidates)
    best, items = lljax.top_k(sampled + rng.normal(size=(5, 10)), k=3)
    assert best.shape == items.shape == (5, 3) and upper.shape == mean.shape == variance.shape == (5, 10)
    return auc


def game(n: int = 3_000, users: int = 40, items: int = 30) -> np.ndarray:
    """A GAME model (fixed effect, per-user and per-item random effects) on NumPy arrays; returns probabilities."""
    rng = np.random.default_rng(1)
    user, item = rng.integers(0, users, n), rng.integers(0, items, n)
    user_x, item_x = rng.normal(size=(users, 3)), rng.normal(size=(items, 4))
    label = (rng.random(n) < 1 / (1 + np.exp(-item_x[item, 0]))).astype(float)
    data = GameData.from_arrays(label, ids={"user": user, "item": item},
                                features={"global": np.hstack([user_x[user], item_x[item]]),
                                          "item_x": item_x[item], "user_x": user_x[user]})
    train, valid = data.split(0.8, seed=1)
    model = GameModel("logistic", [FixedEffect("global", features="global"),
                                   RandomEffect("per_user", entity="user", features="item_x", l2=5.0),
                                   RandomEffect("per_item", entity="item", features="user_x", l2=5.0)])
    report = model.fit(train, validation=valid, passes=1)
    assert report.table()
    scores: GameScores = model.score(valid)
    assert set(scores.contributions) == {"global", "per_user", "per_item"}
    proba: np.ndarray = model.predict(valid)
    return proba


def main(out_dir: str) -> None:
    auc = random_effects(out_dir)
    proba = game()
    assert 0.0 <= auc <= 1.0 and ((proba >= 0) & (proba <= 1)).all()


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        main(tmp)
