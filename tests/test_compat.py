"""Tests for lljax.compat against Lambda Learner 0.1.0 itself, closed forms and autodiff.

Shapes are chosen so that few solver shapes are compiled: most problems have 65-128 rows and
5-8 columns (padded to 128 x 8); a few "wide" ones 129-200 rows and 9-12 columns (256 x 16).
"""

import math

import jax
import numpy as np
import pytest
from linkedin.learner.ds.feature import Feature as LLFeature
from linkedin.learner.ds.index_map import IndexMap as LLIndexMap
from linkedin.learner.ds.indexed_dataset import IndexedDataset as LLIndexedDataset
from linkedin.learner.ds.indexed_model import IndexedModel as LLIndexedModel
from linkedin.learner.ds.record import TrainingRecord as LLTrainingRecord
from linkedin.learner.ds.representation_utils import (
    nt_domain_coeffs_to_index_domain_coeffs as ll_nt_coeffs_to_index,
)
from linkedin.learner.ds.representation_utils import (
    nt_domain_data_to_index_domain_data as ll_nt_data_to_index,
)
from linkedin.learner.prediction.hessian_type import HessianType as LLHessianType
from linkedin.learner.prediction.trainer_logistic_loss_with_l2 import (
    TrainerLogisticLossWithL2 as LLTrainerLogistic,
)
from linkedin.learner.prediction.trainer_sequential_bayesian_logistic_loss_with_l2 import (
    TrainerSequentialBayesianLogisticLossWithL2 as LLTrainerBayesian,
)
from linkedin.learner.prediction.trainer_square_loss_with_l2 import (
    TrainerSquareLossWithL2 as LLTrainerSquare,
)
from scipy import sparse

from lljax import compat
from lljax.compat import (
    Feature,
    HessianType,
    IndexedDataset,
    IndexedModel,
    IndexMap,
    TrainerLogisticLossWithL2,
    TrainerSequentialBayesianLogisticLossWithL2,
    TrainerSquareLossWithL2,
    TrainingRecord,
    UnknownFeatureError,
    evaluate,
    index_domain_coeffs_to_nt_domain_coeffs,
    nt_domain_coeffs_to_index_domain_coeffs,
    nt_domain_data_to_index_domain_data,
    score_linear_model,
)

OURS = {
    "square": TrainerSquareLossWithL2,
    "logistic": TrainerLogisticLossWithL2,
    "bayesian": TrainerSequentialBayesianLogisticLossWithL2,
}
THEIRS = {"square": LLTrainerSquare, "logistic": LLTrainerLogistic, "bayesian": LLTrainerBayesian}
HESSIAN_TYPES = ["FULL", "DIAGONAL", "IDENTITY", "NONE"]

# Lambda Learner's own warnings (scipy deprecations, sparse dtype casts) are not ours.
pytestmark = [
    pytest.mark.filterwarnings("ignore:scipy.optimize:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Input has data type int64:FutureWarning"),
]


# ---------------------------------------------------------------------------
# Problems
# ---------------------------------------------------------------------------


class Problem:
    """A random one-entity problem: sparse X with an intercept column, labels for the trainer's
    loss, weights, offsets, an initial model (theta0, P0) and the trainer's hyper-parameters."""

    def __init__(self, seed, trainer, *, penalty=1.0, delta=0.8, prior="full", weighted=False, wide=False):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(129, 201) if wide else rng.integers(65, 129))
        d = int(rng.integers(9, 13) if wide else rng.integers(5, 9))
        X = rng.normal(size=(n, d)) * (rng.random((n, d)) < 0.4)
        X[:, 0] = 1.0
        self.X = sparse.csc_matrix(X)
        self.offsets = rng.normal(scale=0.5, size=n)
        margin = X @ rng.normal(size=d) + self.offsets
        if trainer == "square":
            self.y = margin + rng.normal(scale=0.5, size=n)
        else:
            self.y = np.where(rng.random(n) < 1.0 / (1.0 + np.exp(-margin)), 1.0, -1.0)
        self.w = rng.uniform(0.2, 3.0, size=n) if weighted else np.ones(n)
        self.theta0 = rng.normal(scale=0.3, size=d)
        if prior == "full":
            A = rng.normal(size=(d, d))
            self.P0 = sparse.csc_matrix(A @ A.T / d + 0.5 * np.eye(d))
        else:
            self.P0 = sparse.diags(rng.uniform(0.5, 5.0, size=d)).tocsc()
        self.trainer, self.penalty, self.delta = trainer, penalty, delta
        self.n, self.d, self.rng = n, d, rng

    def _kwargs(self, hessian_type):
        kwargs = {"penalty": self.penalty, "hessian_type": hessian_type}
        if self.trainer == "bayesian":
            kwargs["delta"] = self.delta
        return kwargs

    def ours(self, hessian_type="FULL"):
        return OURS[self.trainer](
            training_data=IndexedDataset(self.X, self.y, self.w, self.offsets),
            initial_model=IndexedModel(self.theta0.copy(), self.P0.copy()),
            **self._kwargs(HessianType[hessian_type]),
        )

    def theirs(self, hessian_type="FULL"):
        return THEIRS[self.trainer](
            training_data=LLIndexedDataset(self.X, self.y, self.w, self.offsets),
            initial_model=LLIndexedModel(self.theta0.copy(), self.P0.copy()),
            **self._kwargs(LLHessianType[hessian_type]),
        )


def assert_rel_close(actual, expected, rel):
    expected = np.asarray(expected, np.float64)
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rel, atol=rel * scale)


# (trainer, penalty, delta, prior): penalty in {0.1, 1, 10}, delta in {0, 0.5, 0.8, 1}.
OBJECTIVE_CASES = [
    ("square", 0.1, 0.0, "full"),
    ("square", 10.0, 0.0, "full"),
    ("logistic", 0.1, 0.0, "full"),
    ("logistic", 1.0, 0.0, "diag"),
    ("logistic", 10.0, 0.0, "full"),
    ("bayesian", 0.1, 0.0, "full"),
    ("bayesian", 1.0, 0.5, "diag"),
    ("bayesian", 10.0, 0.8, "full"),
    ("bayesian", 1.0, 1.0, "full"),
    ("bayesian", 0.1, 1.0, "diag"),
]


# ---------------------------------------------------------------------------
# loss and gradient == Lambda Learner's
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed, case", list(enumerate(OBJECTIVE_CASES)), ids=lambda v: str(v))
def test_loss_and_gradient_match_lambda_learner(seed, case):
    trainer, penalty, delta, prior = case
    problem = Problem(seed, trainer, penalty=penalty, delta=delta, prior=prior)
    ours, theirs = problem.ours(), problem.theirs()
    for _ in range(3):
        theta = problem.rng.normal(size=problem.d)
        assert ours.loss(theta) == pytest.approx(theirs.loss(theta), rel=1e-9)
        assert_rel_close(ours.gradient(theta), theirs.gradient(theta), 1e-9)
        assert isinstance(ours.loss(theta), float)


@pytest.mark.parametrize("trainer", ["square", "logistic", "bayesian"])
def test_missing_theta_and_hessian_default_as_lambda_learner(trainer):
    problem = Problem(100, trainer, penalty=2.0, delta=0.5)
    kwargs = problem._kwargs(HessianType.FULL)
    ll_kwargs = problem._kwargs(LLHessianType.FULL)
    ours = OURS[trainer](training_data=IndexedDataset(problem.X, problem.y, problem.w, problem.offsets),
                         initial_model=IndexedModel(None), **kwargs)
    theirs = THEIRS[trainer](training_data=LLIndexedDataset(problem.X, problem.y, problem.w, problem.offsets),
                             initial_model=LLIndexedModel(None), **ll_kwargs)
    np.testing.assert_array_equal(ours.initial_model.theta, np.zeros(problem.d))
    np.testing.assert_array_equal(ours.initial_model.hessian.toarray(), 2.0 * np.eye(problem.d))
    theta = problem.rng.normal(size=problem.d)
    assert ours.loss(theta) == pytest.approx(theirs.loss(theta), rel=1e-9)
    assert_rel_close(ours.gradient(theta), theirs.gradient(theta), 1e-9)


def test_trainers_accept_lambda_learner_objects():
    problem = Problem(101, "bayesian", penalty=1.0, delta=0.8)
    ours = TrainerSequentialBayesianLogisticLossWithL2(
        training_data=LLIndexedDataset(problem.X, problem.y, problem.w, problem.offsets),
        initial_model=LLIndexedModel(problem.theta0, problem.P0),
        hessian_type=LLHessianType.DIAGONAL, penalty=1.0, delta=0.8)
    assert ours.hessian_type is HessianType.DIAGONAL
    theta = problem.rng.normal(size=problem.d)
    assert ours.loss(theta) == pytest.approx(problem.theirs().loss(theta), rel=1e-9)


# ---------------------------------------------------------------------------
# train == Lambda Learner's (theta, loss, posterior Hessian)
# ---------------------------------------------------------------------------

TRAIN_CASES = [(t, h, False) for t in ["square", "logistic", "bayesian"] for h in HESSIAN_TYPES] + [
    (t, "FULL", True) for t in ["square", "logistic", "bayesian"]
]


@pytest.mark.parametrize("seed, case", list(enumerate(TRAIN_CASES)), ids=lambda v: str(v))
def test_train_matches_lambda_learner(seed, case):
    trainer, hessian_type, wide = case
    penalty = [0.1, 1.0, 10.0][seed % 3]
    delta = [0.0, 0.5, 0.8, 1.0][seed % 4]
    prior = "diag" if seed % 2 else "full"
    problem = Problem(1000 + seed, trainer, penalty=penalty, delta=delta, prior=prior, wide=wide)
    ours, theirs = problem.ours(hessian_type), problem.theirs(hessian_type)
    model, loss, meta = ours.train()
    ll_model, ll_loss, ll_meta = theirs.train()
    assert ll_meta["warnflag"] == 0

    assert meta["warnflag"] == 0 and meta["task"] == "CONVERGED"
    assert meta["nit"] >= 1
    assert np.max(np.abs(meta["grad"])) <= 1e-9 * max(1.0, abs(loss))
    assert_rel_close(model.theta, ll_model.theta, 1e-3)
    # Our optimum is at least as good as L-BFGS's (slack for rounding).
    assert loss <= ll_loss + 1e-10 * abs(ll_loss)
    assert ours.loss(model.theta) <= theirs.loss(ll_model.theta) + 1e-10 * abs(ll_loss)
    assert loss == pytest.approx(ours.loss(model.theta), rel=1e-12)

    D = problem.d
    if hessian_type == "NONE":
        assert model.hessian is None
        return
    assert sparse.issparse(model.hessian) and model.hessian.format == "csc"
    if hessian_type == "IDENTITY":
        np.testing.assert_array_equal(model.hessian.toarray(), np.eye(D))
        return
    if trainer == "square":  # deviation: X^T W X + lambda I (unit weights here)
        X = problem.X.toarray()
        expected = X.T @ X + penalty * np.eye(D)
    else:  # LL's own formula, evaluated at *our* theta
        expected = theirs._update_full_hessian(model.theta).toarray()
    if hessian_type == "DIAGONAL":
        expected = np.diag(np.diagonal(expected))
    assert_rel_close(model.hessian.toarray(), expected, 1e-6)


def test_square_loss_hessian_is_weighted_gram_plus_penalty():
    problem = Problem(7, "square", penalty=10.0, weighted=True)
    X, w = problem.X.toarray(), problem.w
    expected = X.T @ (w[:, None] * X) + 10.0 * np.eye(problem.d)
    full, _, meta = problem.ours("FULL").train()
    diagonal, _, _ = problem.ours("DIAGONAL").train()
    assert meta["warnflag"] == 0
    assert_rel_close(full.hessian.toarray(), expected, 1e-10)
    assert_rel_close(diagonal.hessian.toarray(), np.diag(np.diagonal(expected)), 1e-10)
    # The optimum is the weighted ridge solution.
    rhs = X.T @ (w * (problem.y - problem.offsets))
    assert_rel_close(full.theta, np.linalg.solve(expected, rhs), 1e-8)


# ---------------------------------------------------------------------------
# Non-unit weights: closed forms, autodiff, finite differences
# ---------------------------------------------------------------------------


def closed_form_loss(problem, theta):
    X = problem.X.toarray()
    m = X @ theta + problem.offsets
    if problem.trainer == "square":
        data = 0.5 * np.sum(problem.w * (m - problem.y) ** 2)
    else:
        data = np.sum(problem.w * np.logaddexp(0.0, -problem.y * m))
    delta = problem.delta if problem.trainer == "bayesian" else 0.0
    dev = theta - problem.theta0
    prior = 0.5 * delta * dev @ (problem.P0 @ dev)
    return data + prior + 0.5 * (1 - delta) * problem.penalty * theta @ theta


@pytest.mark.parametrize("trainer", ["square", "logistic", "bayesian"])
def test_weighted_gradient_and_hessian_match_autodiff(trainer):
    problem = Problem(20, trainer, penalty=1.0, delta=0.5, weighted=True)
    ours = problem.ours("FULL")
    theta = problem.rng.normal(scale=0.5, size=problem.d)

    assert ours.loss(theta) == pytest.approx(closed_form_loss(problem, theta), rel=1e-12)
    gradient = ours.gradient(theta)
    assert_rel_close(gradient, np.asarray(jax.grad(ours._objective)(theta)), 1e-10)
    h = 1e-6
    central = np.array([(ours.loss(theta + h * e) - ours.loss(theta - h * e)) / (2 * h) for e in np.eye(problem.d)])
    assert_rel_close(gradient, central, 1e-6)

    model, _, meta = ours.train()
    assert meta["warnflag"] == 0
    autodiff_hessian = np.asarray(jax.hessian(ours._objective)(model.theta))
    assert_rel_close(model.hessian.toarray(), autodiff_hessian, 1e-9)
    if trainer != "square":  # LL's logistic Hessian ignores the weights: ours must differ from it
        ll_hessian = problem.theirs()._update_full_hessian(model.theta).toarray()
        assert np.max(np.abs(model.hessian.toarray() - ll_hessian)) > 1e-3


# ---------------------------------------------------------------------------
# The README tutorial
# ---------------------------------------------------------------------------

SEASONS = ["winter", "spring", "summer", "fall"]


def season_records(feature_cls, record_cls, num_records=32, seed=0):
    """The README's toy "season" data, expanded: the true effects oppose the initial model's."""
    rng = np.random.default_rng(seed)
    true_effect = {"winter": -1.5, "spring": -1.0, "summer": 1.0, "fall": 1.5}
    records = []
    for i in range(num_records):
        season = SEASONS[i % 4]
        offset = float(rng.normal(scale=0.3))
        p = 1.0 / (1.0 + math.exp(-(offset + true_effect[season])))
        label = 1.0 if rng.random() < p else 0.0
        features = [feature_cls("season", s, 1.0 if s == season else 0.0) for s in SEASONS]
        records.append(record_cls(label=label, weight=1.0, offset=offset, features=features))
    return records


def run_tutorial(Feature, TrainingRecord, IndexMap, nt_domain_data_to_index_domain_data,  # noqa: N803
                 nt_domain_coeffs_to_index_domain_coeffs, Trainer, score_linear_model, evaluate):  # noqa: N803
    """The README's code, verbatim but for the data (and its undefined `post_train_metrics`)."""
    training_data = season_records(Feature, TrainingRecord)
    test_data = training_data
    model_coefficients = [
        Feature("intercept", "intercept", 1.0),
        Feature("season", "winter", 0.423),
        Feature("season", "spring", 0.564),
        Feature("season", "summer", 0.234),
        Feature("season", "fall", 0.0344),
    ]
    model_coefficienet_variances = [Feature("season", s, 0.5) for s in SEASONS]

    index_map, index_map_metadata = IndexMap.from_records_means_and_variances(
        training_data, model_coefficients, model_coefficienet_variances)
    indexed_training_data = nt_domain_data_to_index_domain_data(training_data, index_map)
    indexed_test_data = nt_domain_data_to_index_domain_data(test_data, index_map)
    regularization_penalty = 10.0
    initial_model = nt_domain_coeffs_to_index_domain_coeffs(
        model_coefficients, model_coefficienet_variances, index_map, regularization_penalty)

    forgetting_factor = 0.8
    lr_trainer = Trainer(
        training_data=indexed_training_data,
        initial_model=initial_model,
        penalty=regularization_penalty,
        delta=forgetting_factor)
    updated_model, updated_model_loss, training_metadata = lr_trainer.train()

    scores = score_linear_model(updated_model, indexed_test_data)
    trained_model_metrics = evaluate(metric_list=['auc'], y_scores=scores, y_targets=indexed_test_data.y)
    initial_scores = score_linear_model(initial_model, indexed_test_data)
    initial_model_metrics = evaluate(metric_list=['auc'], y_scores=initial_scores, y_targets=indexed_test_data.y)
    return (index_map, initial_model, updated_model, training_metadata, trained_model_metrics["auc"],
            initial_model_metrics["auc"])


def test_readme_tutorial_runs_and_round_trips():
    from linkedin.learner.prediction.evaluator import evaluate as ll_evaluate
    from linkedin.learner.prediction.linear_scorer import score_linear_model as ll_score

    index_map, initial_model, updated_model, metadata, auc, initial_auc = run_tutorial(
        Feature, TrainingRecord, IndexMap, nt_domain_data_to_index_domain_data,
        nt_domain_coeffs_to_index_domain_coeffs, TrainerSequentialBayesianLogisticLossWithL2,
        score_linear_model, evaluate)
    _, _, ll_model, _, ll_auc, ll_initial_auc = run_tutorial(
        LLFeature, LLTrainingRecord, LLIndexMap, ll_nt_data_to_index, ll_nt_coeffs_to_index, LLTrainerBayesian,
        ll_score, ll_evaluate)

    assert metadata["warnflag"] == 0
    assert auc >= initial_auc
    assert auc > 0.6
    assert auc == pytest.approx(ll_auc) and initial_auc == pytest.approx(ll_initial_auc)
    assert_rel_close(updated_model.theta, ll_model.theta, 1e-3)
    assert_rel_close(updated_model.hessian.toarray(), ll_model.hessian.toarray(), 1e-3)

    means, variances = index_domain_coeffs_to_nt_domain_coeffs(updated_model, index_map)
    assert list(means) == index_map.name_terms == list(variances)
    assert means[("season", "winter")] == updated_model.theta[index_map.get_index(("season", "winter"))]
    back = nt_domain_coeffs_to_index_domain_coeffs(
        [Feature(n, t, v) for (n, t), v in means.items()],
        [Feature(n, t, v) for (n, t), v in variances.items()],
        index_map, 10.0)
    np.testing.assert_array_equal(back.theta, updated_model.theta)
    np.testing.assert_allclose(back.hessian.diagonal(), updated_model.hessian.diagonal(), rtol=1e-14)
    assert back.hessian.nnz == len(index_map)  # only the diagonal travels


# ---------------------------------------------------------------------------
# Conversions == Lambda Learner's
# ---------------------------------------------------------------------------


def make_records(feature_cls, record_cls):
    return [
        record_cls(1.0, 1.0, 0.5, [feature_cls("a", "x", 2.0), feature_cls("b", "y", -1.0)]),
        record_cls(0.0, 2.0, -0.25, [feature_cls("b", "y", 3.0), feature_cls("b", "y", 1.0)]),  # repeated key
        record_cls(-1.0, 0.5, 0.0, [feature_cls("intercept", "intercept", 1.0)]),  # explicit intercept
        record_cls(1.0, 0.0, 1.0, []),
    ]


def test_nt_domain_data_matches_lambda_learner():
    ll_records = make_records(LLFeature, LLTrainingRecord)
    ll_map = LLIndexMap()
    ll_map.batch_push([("a", "x"), ("b", "y"), ("c", "z")])
    expected = ll_nt_data_to_index(ll_records, ll_map)
    our_map = IndexMap()
    our_map.batch_push([("a", "x"), ("b", "y"), ("c", "z")])
    for records, index_map in [(make_records(Feature, TrainingRecord), our_map), (ll_records, ll_map)]:
        got = nt_domain_data_to_index_domain_data(records, index_map, entity="u1")
        assert sparse.issparse(got.X) and got.X.format == "csc"
        np.testing.assert_array_equal(got.X.toarray(), expected.X.toarray())
        np.testing.assert_array_equal(got.y, expected.y)
        np.testing.assert_array_equal(got.w, expected.w)
        np.testing.assert_array_equal(got.offsets, expected.offsets)
        assert (got.num_rows, got.num_cols, got.num_examples, got.num_features) == (4, 4, 4, 4)
        assert got.entity == "u1"
    np.testing.assert_array_equal(expected.y, [1, -1, -1, 1])


def test_nt_domain_coeffs_match_lambda_learner():
    means = [("intercept", "intercept", 0.3), ("a", "x", -1.0), ("c", "z", 2.0)]
    variances = [("a", "x", 0.25), ("b", "y", 4.0)]
    our_map, ll_map = IndexMap(), LLIndexMap()
    for imap in (our_map, ll_map):
        imap.batch_push([("a", "x"), ("b", "y"), ("c", "z"), ("d", "w")])
    expected = ll_nt_coeffs_to_index([LLFeature(*f) for f in means], [LLFeature(*f) for f in variances], ll_map, 3.0)
    got = nt_domain_coeffs_to_index_domain_coeffs([Feature(*f) for f in means], [Feature(*f) for f in variances],
                                                  our_map, 3.0)
    np.testing.assert_array_equal(got.theta, expected.theta)
    np.testing.assert_array_equal(got.hessian.toarray(), expected.hessian.toarray())
    np.testing.assert_array_equal(got.hessian.diagonal(), [3.0, 4.0, 0.25, 3.0, 3.0])


def test_index_domain_coeffs_without_hessian_gives_none():
    imap = IndexMap()
    imap.push(("a", "x"))
    means, variances = index_domain_coeffs_to_nt_domain_coeffs(IndexedModel(np.array([0.5, -2.0])), imap)
    assert means == {("intercept", "intercept"): 0.5, ("a", "x"): -2.0}
    assert variances is None
    dense = IndexedModel(np.array([0.5, -2.0]), np.array([[2.0, 0.1], [0.1, 4.0]]))
    assert index_domain_coeffs_to_nt_domain_coeffs(dense, imap)[1] == {("intercept", "intercept"): 0.5,
                                                                       ("a", "x"): 0.25}


def test_hessian_type_matches_lambda_learner():
    assert {t.name: t.value for t in HessianType} == {t.name: t.value for t in LLHessianType}
    assert [t.value for t in HessianType] == [0, 1, 2, 4]


# ---------------------------------------------------------------------------
# Scoring and Thompson sampling
# ---------------------------------------------------------------------------


def covariance_error(samples, expected):
    return np.linalg.norm(np.cov(samples, rowvar=False) - expected) / np.linalg.norm(expected)


@pytest.mark.parametrize("form", ["full", "diagonal"])
def test_thompson_samples_have_covariance_threshold_times_inverse_precision(form):
    rng = np.random.default_rng(3)
    d, threshold = 4, 0.7
    if form == "full":
        A = rng.normal(size=(d, d))
        P = A @ A.T + 0.5 * np.eye(d)
        hessian = sparse.csc_matrix(P)
    else:
        P = np.diag(rng.uniform(0.5, 5.0, size=d))
        hessian = sparse.diags(np.diagonal(P)).tocsc()
    model = IndexedModel(rng.normal(size=d), hessian)
    samples = compat._sample_coefficients(model, threshold, np.random.default_rng(11), size=40000)
    expected = threshold * np.linalg.inv(P)
    assert np.allclose(samples.mean(axis=0), model.theta, atol=0.05 * np.sqrt(np.max(np.diagonal(expected))))
    assert covariance_error(samples, expected) < 0.05
    assert covariance_error(samples, expected / 10.0) > 0.5  # a precision 10x off would fail
    # Lambda Learner's N(theta, t diag P) would fail too.
    assert covariance_error(samples, threshold * np.diag(np.diagonal(P))) > 0.5

    # score_linear_model on an identity X with zero offsets returns the same draws.
    identity = IndexedDataset(sparse.identity(d, format="csc"), np.zeros(d), np.ones(d), np.zeros(d))
    scores = np.array([score_linear_model(model, identity, threshold, rng=np.random.default_rng(s)) for s in range(3)])
    draws = np.array([compat._sample_coefficients(model, threshold, np.random.default_rng(s)) for s in range(3)])
    np.testing.assert_allclose(scores, draws, rtol=1e-14)
    generator = np.random.default_rng(5)
    many = np.array([score_linear_model(model, identity, threshold, rng=generator) for _ in range(4000)])
    assert covariance_error(many, expected) < 0.15


def test_score_without_exploration_is_mean_score():
    rng = np.random.default_rng(4)
    X = sparse.random(30, 6, density=0.5, format="csc", random_state=4)
    data = IndexedDataset(X, np.ones(30), np.ones(30), rng.normal(size=30))
    model = IndexedModel(rng.normal(size=6), sparse.identity(6, format="csc"))
    expected = X.toarray() @ model.theta + data.offsets
    np.testing.assert_allclose(score_linear_model(model, data), expected, rtol=1e-14)
    np.testing.assert_allclose(score_linear_model(model, data, 0, rng=1), expected, rtol=1e-14)
    np.testing.assert_allclose(score_linear_model(IndexedModel(model.theta), data), expected, rtol=1e-14)
    dense = IndexedDataset(X.toarray(), np.ones(30), np.ones(30), data.offsets)
    np.testing.assert_allclose(score_linear_model(model, dense), expected, rtol=1e-14)
    explored = score_linear_model(model, data, 0.5, rng=0)
    assert explored.shape == (30,) and not np.allclose(explored, expected)


def test_score_exploration_errors():
    data = IndexedDataset(np.eye(3), np.ones(3), np.ones(3), np.zeros(3))
    with pytest.raises(ValueError, match="exploration_threshold"):
        score_linear_model(IndexedModel(np.zeros(3), np.eye(3)), data, -0.1)
    with pytest.raises(ValueError, match="hessian"):
        score_linear_model(IndexedModel(np.zeros(3)), data, 0.1)
    with pytest.raises(ValueError, match="positive definite"):
        score_linear_model(IndexedModel(np.zeros(3), np.array([[1.0, 2.0, 0], [2.0, 1.0, 0], [0, 0, 1.0]])), data, 1.0)
    with pytest.raises(ValueError, match="coefficient 1"):
        score_linear_model(IndexedModel(np.zeros(3), sparse.diags([1.0, 0.0, 1.0]).tocsc()), data, 1.0)


# ---------------------------------------------------------------------------
# Training outcomes (warnflag) and float32
# ---------------------------------------------------------------------------


def test_warnflag_1_on_iteration_cap_and_2_on_non_finite():
    problem = Problem(30, "logistic", penalty=0.1)
    model, loss, meta = problem.ours("FULL").train(max_iterations=1)
    assert (meta["warnflag"], meta["task"], meta["nit"]) == (1, "MAX_ITERATIONS", 1)
    assert np.isfinite(loss) and model.theta.shape == (problem.d,)

    X = problem.X.toarray()
    X[0, 1] = 1e200
    trainer = TrainerSquareLossWithL2(
        training_data=IndexedDataset(sparse.csc_matrix(X), problem.y, problem.w, problem.offsets),
        initial_model=IndexedModel(np.ones(problem.d), None), hessian_type=HessianType.FULL, penalty=1.0)
    model, loss, meta = trainer.train()
    assert (meta["warnflag"], meta["task"]) == (2, "NON_FINITE")
    assert model is trainer.initial_model  # as Lambda Learner: the initial model comes back
    np.testing.assert_array_equal(model.theta, np.ones(problem.d))
    np.testing.assert_array_equal(model.hessian.toarray(), np.eye(problem.d))


def test_float32_when_x64_is_off(monkeypatch):
    problem = Problem(40, "bayesian", penalty=1.0, delta=0.8)
    reference, _, _ = problem.ours("FULL").train()
    from lljax.solve import dtypes

    monkeypatch.setattr(dtypes, "_WARNED", set())
    with jax.enable_x64(False):
        with pytest.warns(UserWarning, match="float32"):
            trainer = problem.ours("FULL")
        model, loss, meta = trainer.train()
        assert trainer._block.X.dtype == np.float32
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            problem.ours("FULL")  # warns once only
    assert meta["warnflag"] == 0
    assert model.theta.dtype == np.float64 and np.isfinite(loss)
    assert_rel_close(model.theta, reference.theta, 1e-3)
    assert_rel_close(model.hessian.toarray(), reference.hessian.toarray(), 1e-3)


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


def test_unknown_feature_names_entity_record_field_and_key():
    imap = IndexMap()
    imap.push(("a", "x"))
    records = [TrainingRecord(1.0, 1.0, 0.0, [Feature("a", "x", 1.0)]),
               TrainingRecord(0.0, 1.0, 0.0, [Feature("a", "x", 1.0), Feature("zz", "top", 1.0)])]
    with pytest.raises(UnknownFeatureError) as info:
        nt_domain_data_to_index_domain_data(records, imap, entity="user-7")
    message = str(info.value)
    assert "user-7" in message and "record 1" in message and "'features'" in message and "('zz', 'top')" in message
    assert isinstance(info.value, ValueError)
    try:
        nt_domain_data_to_index_domain_data(records, imap)
    except IndexError as exc:  # Lambda Learner's callers catch IndexError
        assert "('zz', 'top')" in str(exc)
    else:
        pytest.fail("no error raised")
    with pytest.raises(IndexError, match="'coeff_variances'"):
        nt_domain_coeffs_to_index_domain_coeffs([], [Feature("zz", "top", 1.0)], imap, 1.0)


@pytest.mark.parametrize("field, record_kwargs, value", [
    ("labels", {"label": float("nan")}, "nan"),
    ("labels_weights", {"weight": float("nan")}, "nan"),
    ("labels_weights", {"weight": -1.0}, "-1.0"),
    ("offsets", {"offset": float("inf")}, "inf"),
])
def test_bad_record_values_name_entity_record_field_and_value(field, record_kwargs, value):
    imap = IndexMap()
    imap.push(("a", "x"))
    kwargs = {"label": 1.0, "weight": 1.0, "offset": 0.0, "features": [Feature("a", "x", 1.0)]}
    records = [TrainingRecord(**kwargs), TrainingRecord(**{**kwargs, **record_kwargs})]
    with pytest.raises(ValueError) as info:
        nt_domain_data_to_index_domain_data(records, imap, entity="user-7")
    message = str(info.value)
    assert f"'{field}'" in message and value in message and "user-7" in message and "record 1" in message


def test_bad_feature_value_is_named():
    imap = IndexMap()
    imap.push(("a", "x"))
    records = [TrainingRecord(1.0, 1.0, 0.0, [Feature("a", "x", float("nan"))])]
    with pytest.raises(ValueError, match=r"'features'.*\('a', 'x', nan\)"):
        nt_domain_data_to_index_domain_data(records, imap)


@pytest.mark.parametrize("field, column, value", [
    ("labels", 0, np.nan),
    ("labels_weights", 1, np.nan),
    ("labels_weights", 1, -0.5),
    ("offsets", 2, -np.inf),
])
def test_indexed_dataset_rejects_bad_values(field, column, value):
    columns = [np.ones(5), np.ones(5), np.zeros(5)]
    columns[column][3] = value
    with pytest.raises(ValueError) as info:
        IndexedDataset(sparse.identity(5, format="csc"), *columns, entity=42)
    message = str(info.value)
    assert f"'{field}'" in message and str(value) in message and "entity 42" in message and "example 3" in message


def test_indexed_dataset_rejects_mismatched_lengths_and_bad_x():
    X = np.ones((4, 2))
    for position, field in enumerate(["labels", "labels_weights", "offsets"]):
        columns = [np.ones(4), np.ones(4), np.zeros(4)]
        columns[position] = np.ones(3)
        with pytest.raises(ValueError, match=f"'{field}'.*length 3.*expected 4"):
            IndexedDataset(X, *columns)
    X[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"row 2, column 1, field 'data'"):
        IndexedDataset(sparse.csr_matrix(X), np.ones(4), np.ones(4), np.zeros(4))
    with pytest.raises(ValueError, match="'data'"):
        IndexedDataset(np.ones(4), np.ones(4), np.ones(4), np.zeros(4))


def test_bad_models_and_hyper_parameters():
    with pytest.raises(ValueError, match="'hessian'"):
        IndexedModel(np.zeros(3), np.eye(2))
    imap = IndexMap()
    imap.push(("a", "x"))
    for variance in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match=r"\('a', 'x'\).*'coeff_variances'"):
            nt_domain_coeffs_to_index_domain_coeffs([], [Feature("a", "x", variance)], imap, 1.0)
    data = IndexedDataset(np.ones((3, 2)), np.array([1.0, 0.0, 1.0]), np.ones(3), np.zeros(3), entity="e")
    with pytest.raises(ValueError, match="entity 'e', field 'penalty'"):
        TrainerLogisticLossWithL2(training_data=data, initial_model=IndexedModel(None), penalty=-1.0)
    with pytest.raises(ValueError, match="'delta'"):
        TrainerSequentialBayesianLogisticLossWithL2(training_data=data, initial_model=IndexedModel(None), delta=1.5)
    with pytest.raises(ValueError, match="'initial_model.theta'"):
        TrainerLogisticLossWithL2(training_data=data, initial_model=IndexedModel(np.zeros(3)))
    with pytest.raises(ValueError, match="'labels'.*2.0"):
        TrainerLogisticLossWithL2(training_data=IndexedDataset(np.ones((2, 2)), np.array([1.0, 2.0]), np.ones(2),
                                                               np.zeros(2)), initial_model=IndexedModel(None))
    with pytest.raises(ValueError, match="symmetric"):
        TrainerSequentialBayesianLogisticLossWithL2(training_data=data,
                                                    initial_model=IndexedModel(np.zeros(2), np.array([[1.0, 1.0],
                                                                                                      [0.0, 1.0]])))
    with pytest.raises(TypeError, match="'hessian_type'"):
        TrainerLogisticLossWithL2(training_data=data, initial_model=IndexedModel(None), hessian_type="bogus")
