"""Tests for lljax.model.metrics against scikit-learn and Lambda Learner's evaluator."""

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from linkedin.learner.prediction import evaluator as ll_evaluator
from sklearn import metrics as skm

from lljax.model.metrics import METRICS_FUNCS, auc, evaluate, log_loss, rmse

# Scores from a tiny set of values so that ties are frequent; labels include
# values other than 0/1, which count as negative (LL's rule).
tied_scores = st.sampled_from([-2.0, -0.5, 0.0, 0.0, 0.25, 1.0, 3.0])
any_labels = st.sampled_from([1, 1, 0, -1, 2])


@st.composite
def scored_labels(draw, min_size=2, max_size=60):
    pairs = draw(st.lists(st.tuples(tied_scores, any_labels), min_size=min_size, max_size=max_size))
    scores = np.array([s for s, _ in pairs])
    labels = np.array([y for _, y in pairs])
    assume((labels == 1).any() and (labels != 1).any())
    return scores, labels


def as_binary(labels):
    return (np.asarray(labels) == 1).astype(int)


def sigmoid(s):
    return 1.0 / (1.0 + np.exp(-s))


# ---------------------------------------------------------------------------
# AUC
# ---------------------------------------------------------------------------


@settings(max_examples=200)
@given(scored_labels())
def test_auc_matches_sklearn_with_ties(data):
    scores, labels = data
    expected = skm.roc_auc_score(as_binary(labels), scores)
    assert auc(scores, labels) == pytest.approx(expected, abs=1e-12)


@settings(max_examples=200)
@given(scored_labels())
def test_auc_matches_lambda_learner(data):
    scores, labels = data
    assert auc(scores, labels) == pytest.approx(ll_evaluator.auc(scores, labels), abs=1e-12)


def test_auc_large_random_data_with_ties_matches_sklearn():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=20_000), 1)  # ~80 distinct values: heavy ties
    labels = (rng.random(20_000) < sigmoid(scores)).astype(float)
    assert auc(scores, labels) == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)


@pytest.mark.parametrize(
    "scores, labels, expected",
    [
        ([0.1, 0.9], [0, 1], 1.0),
        ([0.9, 0.1], [0, 1], 0.0),
        ([0.5, 0.5], [0, 1], 0.5),
        ([0.5, 0.5, 0.5, 0.5], [1, 0, 1, 0], 0.5),
        ([1, 2, 3, 4], [0, 1, 0, 1], 0.75),
        ([1, 2, 2, 3], [0, 1, 0, 1], 0.875),  # one tie between a positive and a negative counts 1/2
    ],
)
def test_auc_small_exact_cases(scores, labels, expected):
    assert auc(scores, labels) == expected


def test_auc_is_invariant_to_monotone_transforms_and_accepts_lists():
    scores = [0.3, -1.0, 2.0, 2.0, 0.0, 5.0]
    labels = [1, 0, 1, 0, 0, 1]
    assert auc(scores, labels) == auc(np.exp(scores), labels) == auc(np.array(scores, np.float32), labels)
    assert isinstance(auc(scores, labels), float)


@pytest.mark.parametrize("labels", [[1, 1, 1], [0, 0, 0], [0, -1, 2]])
def test_auc_one_class_raises(labels):
    with pytest.raises(ValueError, match="labels"):
        auc([0.1, 0.2, 0.3], labels)


# ---------------------------------------------------------------------------
# RMSE and log loss
# ---------------------------------------------------------------------------


@settings(max_examples=200)
@given(st.lists(st.tuples(st.floats(-1e3, 1e3), st.floats(-1e3, 1e3)), min_size=1, max_size=50))
def test_rmse_matches_sklearn_and_lambda_learner(pairs):
    scores = np.array([s for s, _ in pairs])
    targets = np.array([t for _, t in pairs])
    expected = math.sqrt(skm.mean_squared_error(targets, scores))
    assert rmse(scores, targets) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert rmse(scores, targets) == pytest.approx(ll_evaluator.rmse(scores, targets), rel=1e-12, abs=1e-12)


def test_rmse_exact():
    assert rmse([1.0, 2.0, 3.0], [1.0, 0.0, 3.0]) == pytest.approx(math.sqrt(4 / 3))
    assert rmse([5.0], [5.0]) == 0.0


# |s| <= 10: beyond that, 1 - sigmoid(s) cancels in float64 and sklearn (not us) loses digits.
@settings(max_examples=200)
@given(st.lists(st.tuples(st.floats(-10, 10), any_labels), min_size=1, max_size=50))
def test_log_loss_matches_sklearn_on_probabilities(pairs):
    scores = np.array([s for s, _ in pairs])
    labels = np.array([y for _, y in pairs])
    expected = skm.log_loss(as_binary(labels), sigmoid(scores), labels=[0, 1])
    assert log_loss(scores, labels) == pytest.approx(expected, rel=1e-9, abs=1e-10)


def test_log_loss_is_stable_for_large_margins():
    assert log_loss([1000.0], [0]) == pytest.approx(1000.0)
    assert log_loss([-1000.0], [1]) == pytest.approx(1000.0)
    assert log_loss([1000.0, -1000.0], [1, 0]) == 0.0
    assert log_loss([0.0], [1]) == pytest.approx(math.log(2))
    assert log_loss([2.0], [-1]) == log_loss([2.0], [0]) == log_loss([2.0], [7])  # non-1 labels are negative


# ---------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("metric", [auc, rmse, log_loss])
def test_metrics_reject_length_mismatch(metric):
    with pytest.raises(ValueError, match="wrong length"):
        metric([0.1, 0.2, 0.3], [0, 1])


@pytest.mark.parametrize("metric", [auc, rmse, log_loss])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_metrics_reject_non_finite(metric, bad):
    with pytest.raises(ValueError, match="field 'scores'.*must be finite"):
        metric([0.1, bad, 0.3], [0, 1, 0])
    with pytest.raises(ValueError, match="must be finite"):
        metric([0.1, 0.2, 0.3], [0, bad, 1])


@pytest.mark.parametrize("metric", [auc, rmse, log_loss])
def test_metrics_reject_empty_and_non_1d(metric):
    with pytest.raises(ValueError, match="empty"):
        metric([], [])
    with pytest.raises(ValueError, match="1-D"):
        metric([[0.1, 0.2]], [[0, 1]])


# ---------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------


def test_evaluate_matches_lambda_learner():
    rng = np.random.default_rng(1)
    scores = np.round(rng.normal(size=500), 1)
    labels = (rng.random(500) < 0.4).astype(float)
    ours = evaluate(["auc", "rmse"], scores, labels)
    theirs = ll_evaluator.evaluate(["auc", "rmse"], scores, labels)
    assert list(ours) == ["auc", "rmse"]
    for name in theirs:
        assert ours[name] == pytest.approx(theirs[name], abs=1e-12)


def test_evaluate_log_loss_and_order():
    scores, labels = [0.5, -1.0, 2.0], [1, 0, 0]
    result = evaluate(["log_loss", "auc"], scores, labels)
    assert list(result) == ["log_loss", "auc"]
    assert result == {"log_loss": log_loss(scores, labels), "auc": auc(scores, labels)}
    assert evaluate([], scores, labels) == {}
    assert set(METRICS_FUNCS) == {"auc", "rmse", "log_loss"}


def test_evaluate_rejects_unsupported_metrics_naming_them():
    with pytest.raises(ValueError, match="not currently implemented") as info:
        evaluate(["auc", "precision", "ndcg"], [0.1, 0.2], [0, 1])
    assert "precision" in str(info.value) and "ndcg" in str(info.value)
    with pytest.raises(ValueError):
        ll_evaluator.evaluate(["precision"], np.array([0.1, 0.2]), np.array([0, 1]))
