"""lljax.explore.arms.LinearArms against MABWiser 2.7 (LinUCB, LinGreedy, LinTS's closed form) and closed forms."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from mabwiser.mab import MAB, LearningPolicy
from sklearn.linear_model import LogisticRegression

from lljax.explore.arms import LinearArms

jax.config.update("jax_enable_x64", True)

ARMS = ["red", "green", "blue"]


def bandit_data(n=240, D=3, seed=0, arms=ARMS):
    rng = np.random.default_rng(seed)
    contexts = rng.normal(size=(n, D))
    decisions = [arms[i] for i in rng.integers(0, len(arms), n)]
    rewards = contexts @ rng.normal(size=D) + rng.normal(size=n)
    return decisions, rewards, contexts


def with_ones(x):
    return np.column_stack([np.ones(len(x)), x])


def ridge(contexts, rewards, l2, offset=None):
    X = with_ones(contexts)
    A = X.T @ X + l2 * np.eye(X.shape[1])
    y = rewards - (0.0 if offset is None else offset)
    return np.linalg.solve(A, X.T @ y), A


@pytest.mark.parametrize("arms", [ARMS, [10, 20, 30, 40]])
def test_ucb_equals_mabwiser_linucb(arms):
    decisions, rewards, contexts = bandit_data(arms=arms)
    new = np.random.default_rng(5).normal(size=(20, 3))
    mab = MAB(list(arms), LearningPolicy.LinUCB(alpha=1.5, l2_lambda=2.0))
    mab.fit(decisions, rewards, with_ones(contexts))
    ours = LinearArms(arms, "ucb", alpha=1.5, l2=2.0, tol=1e-12).fit(decisions, rewards, contexts)
    theirs = mab.predict_expectations(with_ones(new))
    for mine, expected in zip(ours.predict_expectations(new), theirs):
        assert list(mine) == list(arms)
        np.testing.assert_allclose([mine[a] for a in arms], [expected[a] for a in arms], rtol=1e-7, atol=1e-9)
    assert ours.predict(new) == mab.predict(with_ones(new))


def test_greedy_equals_mabwiser_lingreedy_and_the_ridge_closed_form():
    decisions, rewards, contexts = bandit_data()
    new = np.random.default_rng(6).normal(size=(10, 3))
    mab = MAB(ARMS, LearningPolicy.LinGreedy(epsilon=0.0, l2_lambda=0.5))
    mab.fit(decisions, rewards, with_ones(contexts))
    ours = LinearArms(ARMS, "greedy", l2=0.5, tol=1e-12).fit(decisions, rewards, contexts)
    scores = ours.scores(new)
    theirs = mab.predict_expectations(with_ones(new))
    np.testing.assert_allclose(scores, [[e[a] for a in ARMS] for e in theirs], rtol=1e-7, atol=1e-9)
    chosen = np.array(decisions)
    for j, arm in enumerate(ARMS):
        beta, _ = ridge(contexts[chosen == arm], rewards[chosen == arm], 0.5)
        np.testing.assert_allclose(scores[:, j], with_ones(new) @ beta, rtol=1e-7, atol=1e-9)


def test_thompson_draws_have_lints_moments():
    """MABWiser's LinTS draws theta ~ N(beta, alpha^2 A^-1): the scores x.theta have mean x.beta and variance
    alpha^2 x^T A^-1 x. Checked on 4000 draws against the closed form."""
    decisions, rewards, contexts = bandit_data(n=90)
    ours = LinearArms(ARMS, "thompson", alpha=0.7, l2=1.0, seed=3).fit(decisions, rewards, contexts)
    x = np.array([[0.5, -1.0, 2.0]])
    draws = np.stack([ours.scores(np.repeat(x, 200, axis=0)) for _ in range(20)]).reshape(-1, len(ARMS))
    chosen = np.array(decisions)
    for j, arm in enumerate(ARMS):
        beta, A = ridge(contexts[chosen == arm], rewards[chosen == arm], 1.0)
        xt = with_ones(x)[0]
        mean, var = xt @ beta, 0.49 * xt @ np.linalg.solve(A, xt)
        assert abs(draws[:, j].mean() - mean) < 4 * np.sqrt(var / len(draws))
        assert abs(draws[:, j].var() / var - 1) < 0.1
    assert ours.scores(x).tolist() != ours.scores(x).tolist()  # the key advances between calls


def test_offsets_in_training_and_prediction():
    decisions, rewards, contexts = bandit_data()
    offset = np.random.default_rng(7).normal(size=len(rewards))
    ours = LinearArms(ARMS, "greedy", l2=1.0, tol=1e-12).fit(decisions, rewards, contexts, offset=offset)
    new = np.random.default_rng(8).normal(size=(6, 3))
    chosen = np.array(decisions)
    plain = ours.scores(new)
    for j, arm in enumerate(ARMS):
        rows = chosen == arm
        beta, _ = ridge(contexts[rows], rewards[rows], 1.0, offset[rows])
        np.testing.assert_allclose(plain[:, j], with_ones(new) @ beta, rtol=1e-7, atol=1e-9)
    per_request = np.arange(6.0)
    np.testing.assert_allclose(ours.scores(new, offset=per_request), plain + per_request[:, None])
    per_arm = np.random.default_rng(9).normal(size=(6, 3))
    np.testing.assert_allclose(ours.scores(new, offset=per_arm), plain + per_arm)
    big = np.zeros((6, 3))
    big[:, 1] = 100.0
    assert ours.predict(new, offset=big) == ["green"] * 6
    with pytest.raises(ValueError, match=r"field 'offset'.*must have shape \(6,\) or \(6, 3\)"):
        ours.scores(new, offset=np.zeros(5))


def test_partial_fit_equals_fit_and_cold_arms_have_the_prior():
    decisions, rewards, contexts = bandit_data()
    whole = LinearArms(ARMS + ["new"], "ucb", l2=2.0, tol=1e-12).fit(decisions, rewards, contexts)
    parts = LinearArms(ARMS + ["new"], "ucb", l2=2.0, tol=1e-12)
    for chunk in np.array_split(np.arange(len(rewards)), 3):
        parts.partial_fit([decisions[i] for i in chunk], rewards[chunk], contexts[chunk])
    new = np.random.default_rng(10).normal(size=(7, 3))
    np.testing.assert_allclose(parts.scores(new), whole.scores(new), rtol=1e-7)
    # an arm without data: mean 0, covariance I / l2 (MABWiser: A = l2 I, beta = 0)
    np.testing.assert_allclose(whole.scores(new)[:, 3], np.sqrt((1 + (new ** 2).sum(axis=1)) / 2.0), rtol=1e-12)


def test_logistic_arms_equal_sklearn_per_arm():
    rng = np.random.default_rng(11)
    contexts = rng.normal(size=(300, 2))
    decisions = [ARMS[i] for i in rng.integers(0, 3, 300)]
    rewards = (rng.random(300) < 1 / (1 + np.exp(-contexts[:, 0]))).astype(float)
    ours = LinearArms(ARMS, "greedy", loss="logistic", l2=1.0, tol=1e-12).fit(decisions, rewards, contexts)
    new = rng.normal(size=(5, 2))
    chosen = np.array(decisions)
    for j, arm in enumerate(ARMS):
        rows = chosen == arm
        model = LogisticRegression(C=1.0, fit_intercept=False, tol=1e-12, max_iter=10_000)
        model.fit(with_ones(contexts[rows]), rewards[rows])
        np.testing.assert_allclose(ours.scores(new)[:, j], with_ones(new) @ model.coef_[0], rtol=1e-5, atol=1e-7)


def test_arm_management_and_bad_input():
    decisions, rewards, contexts = bandit_data()
    bandit = LinearArms(ARMS, "ucb").fit(decisions, rewards, contexts)
    before = bandit.scores(contexts[:3])
    bandit.remove_arm("green")
    assert bandit.arms == ["red", "blue"]
    assert "green" not in bandit.predict(contexts[:50])
    bandit.add_arm("green")  # its model was kept
    np.testing.assert_allclose(bandit.scores(contexts[:3])[:, [0, 2, 1]], before)
    with pytest.raises(ValueError, match="field 'arm': value 'red' is already an arm"):
        bandit.add_arm("red")
    with pytest.raises(ValueError, match=r"row 1, field 'decisions': value 'pink' is not an arm"):
        bandit.partial_fit(["red", "pink"], [1.0, 0.0], contexts[:2])
    with pytest.raises(ValueError, match="must have 3 columns, as in training"):
        bandit.predict(contexts[:, :2])
    with pytest.raises(ValueError, match="field 'policy'"):
        LinearArms(ARMS, "softmax")
    with pytest.raises(ValueError, match="field 'contexts'.*two-dimensional"):
        LinearArms(ARMS).fit(["red"], [1.0], [0.5])
