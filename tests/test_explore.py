"""Exploration: Thompson draws have the posterior's moments, UCB / moments equal NumPy, lljax's
linear posterior equals MABWiser's LinTS / LinUCB, top-k, and ``RandomEffectModel.posterior``."""

import jax
import numpy as np
import pytest
from mabwiser.mab import MAB, LearningPolicy

from lljax import (
    Dataset,
    Posterior,
    RandomEffectModel,
    arm_moments,
    candidate_moments,
    sample_posterior,
    thompson_arms,
    thompson_candidates,
    top_k,
    ucb_arms,
    ucb_candidates,
)

E, D = 3, 4  # entities and features of the hand-made posteriors
DRAWS = 20_000  # per entity (or per context): sampling error of a variance ~ sqrt(2 / DRAWS) = 1%
Z = 5.0  # tolerance in standard errors; a wrong variance (x10 or x0.1) is off by hundreds of them


def moments_match(draws, mean, cov, z=Z):
    """Whether the empirical mean and covariance of ``draws (n, k)`` match ``mean (k,)`` and ``cov (k, k)``.

    Each entry is allowed ``z`` standard errors of its estimator under the target Gaussian:
    ``sqrt(cov_ii / n)`` for a mean, ``sqrt((cov_ii cov_jj + cov_ij^2) / n)`` for a covariance.
    """
    draws = np.asarray(draws, np.float64)
    n = draws.shape[0]
    var = np.diag(cov)
    mean_ok = np.abs(draws.mean(axis=0) - mean) <= z * np.sqrt(var / n) + 1e-12
    cov_se = np.sqrt((np.outer(var, var) + cov**2) / n)
    cov_ok = np.abs(np.cov(draws, rowvar=False) - cov) <= z * cov_se + 1e-12
    return bool(mean_ok.all() and cov_ok.all())


def correlated_posterior(seed=0, dtype=np.float64):
    """``E`` posteriors over ``D`` features with strongly correlated full precisions."""
    rng = np.random.default_rng(seed)
    B = rng.normal(size=(E, 6, D)) * np.array([3.0, 1.0, 0.5, 0.2])
    precision = np.einsum("bnd,bnf->bdf", B, B) + 0.5 * np.eye(D)
    mean = rng.normal(size=(E, D))
    return Posterior(mean.astype(dtype), precision.astype(dtype), np.arange(D))


def covariances(posterior):
    p = np.asarray(posterior.precision, np.float64)
    return np.linalg.inv(p) if p.ndim == 3 else np.stack([np.diag(1.0 / q) for q in p])


def scaled(posterior, factor):
    return posterior._replace(precision=posterior.precision * factor)


def diagonal_of(posterior):
    return posterior._replace(precision=np.diagonal(posterior.precision, axis1=1, axis2=2).copy())


# The contexts e_i and e_i + e_j: their variances x^T S x determine every entry of S.
PAIRS = [(i, j) for i in range(D) for j in range(i + 1, D)]
PROBES = np.concatenate([np.eye(D), np.stack([np.eye(D)[i] + np.eye(D)[j] for i, j in PAIRS])])


# ---------------------------------------------------------------- (a) Thompson draws


def sample_check(posterior, target):
    """Draw ``DRAWS`` thetas per entity with a fixed key; compare with the target posterior's moments."""
    entity = np.repeat(np.arange(E), DRAWS)
    theta = np.asarray(sample_posterior(jax.random.key(0), posterior, entity)).reshape(E, DRAWS, D)
    cov = covariances(target)
    return [moments_match(theta[e], np.asarray(target.mean[e]), cov[e]) for e in range(E)]


def arms_check(posterior, target):
    """``thompson_arms`` on the probe contexts repeated ``DRAWS`` times: per arm, the scores of the
    probes are independent with mean ``x . mean`` and variance ``x^T P^-1 x``."""
    contexts = np.tile(PROBES, (DRAWS, 1))
    scores = np.asarray(thompson_arms(jax.random.key(1), posterior, contexts)).reshape(DRAWS, len(PROBES), E)
    cov = covariances(target)
    return [moments_match(scores[:, :, a], PROBES @ np.asarray(target.mean[a]),
                          np.diag(np.einsum("kd,de,ke->k", PROBES, cov[a], PROBES))) for a in range(E)]


def candidates_check(posterior, target):
    """``thompson_candidates`` with the probes as every request's candidates: one theta per request,
    so the candidates' scores have covariance ``X P^-1 X^T``."""
    entity = np.repeat(np.arange(E), DRAWS)
    candidates = np.broadcast_to(PROBES, (E * DRAWS,) + PROBES.shape)
    scores = np.asarray(thompson_candidates(jax.random.key(2), posterior, entity, candidates))
    scores = scores.reshape(E, DRAWS, len(PROBES))
    cov = covariances(target)
    return [moments_match(scores[e], PROBES @ np.asarray(target.mean[e]), PROBES @ cov[e] @ PROBES.T)
            for e in range(E)]


def shared_arms_check(posterior, target):
    """``thompson_arms(..., draws=DRAWS)`` on the probes tiled ``DRAWS`` times: each tile is one group
    of requests sharing one theta per arm, so within a tile the probes' scores have covariance
    ``X P^-1 X^T`` (correlated), and tiles are independent draws."""
    contexts = np.tile(PROBES, (DRAWS, 1))
    scores = np.asarray(thompson_arms(jax.random.key(3), posterior, contexts, draws=DRAWS))
    scores = scores.reshape(DRAWS, len(PROBES), E)
    cov = covariances(target)
    return [moments_match(scores[:, :, a], PROBES @ np.asarray(target.mean[a]), PROBES @ cov[a] @ PROBES.T)
            for a in range(E)]


CHECKS = {"sample_posterior": sample_check, "thompson_arms": arms_check, "thompson_candidates": candidates_check,
          "thompson_arms_shared_draws": shared_arms_check}


@pytest.mark.parametrize("kind", ["full", "diagonal"])
@pytest.mark.parametrize("check", list(CHECKS))
def test_thompson_draws_have_posterior_moments_and_wrong_variance_fails(check, kind):
    posterior = correlated_posterior()
    if kind == "diagonal":
        posterior = diagonal_of(posterior)
    run = CHECKS[check]
    assert all(run(posterior, posterior))
    # The same check rejects draws whose precision is off by x10 or x0.1 (every entity fails).
    assert not any(run(scaled(posterior, 10.0), posterior))
    assert not any(run(scaled(posterior, 0.1), posterior))
    if kind == "full":
        # ... and draws that ignore the correlations (Lambda Learner's diagonal sampling).
        assert not any(run(diagonal_of(posterior), posterior))


def test_shared_arm_draws_split_requests_into_contiguous_groups():
    """draws=S: requests are cut into S contiguous groups; a group scores with one theta per arm."""
    posterior = correlated_posterior()
    contexts = np.tile(np.eye(D)[:1], (10, 1)) * np.arange(1, 11)[:, None]  # x_r = r * e_0, 10 requests
    scores = np.asarray(thompson_arms(jax.random.key(4), posterior, contexts, draws=3))  # groups of 4, 4, 2
    theta0 = scores / np.arange(1, 11)[:, None]  # the sampled theta_0 of each request's draw
    for group in ([0, 1, 2, 3], [4, 5, 6, 7], [8, 9]):
        np.testing.assert_allclose(theta0[group], np.broadcast_to(theta0[group[0]], theta0[group].shape), rtol=1e-12)
    assert not np.allclose(theta0[0], theta0[4]) and not np.allclose(theta0[4], theta0[8])


@pytest.mark.parametrize("draws", [0, -2, 2.5])
def test_shared_arm_draws_must_be_a_positive_int(draws):
    with pytest.raises(ValueError, match="'draws'"):
        thompson_arms(jax.random.key(0), correlated_posterior(), PROBES, draws=draws)


def test_thompson_is_a_function_of_the_key():
    posterior = correlated_posterior()
    contexts = PROBES
    a = thompson_arms(jax.random.key(7), posterior, contexts)
    b = thompson_arms(jax.random.key(7), posterior, contexts)
    c = thompson_arms(jax.random.key(8), posterior, contexts)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(c))
    entity = np.arange(E)
    s1 = sample_posterior(jax.random.key(7), posterior, entity)
    s2 = sample_posterior(jax.random.key(7), posterior, entity)
    np.testing.assert_array_equal(np.asarray(s1), np.asarray(s2))


def test_thompson_scale_multiplies_the_standard_deviation():
    posterior = correlated_posterior()
    contexts = PROBES
    key = jax.random.key(3)
    mean = np.asarray(arm_moments(posterior, contexts)[0])
    one = np.asarray(thompson_arms(key, posterior, contexts, 1.0)) - mean
    three = np.asarray(thompson_arms(key, posterior, contexts, 3.0)) - mean
    np.testing.assert_allclose(three, 3.0 * one, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- (b) moments and UCB == NumPy


@pytest.mark.parametrize("kind", ["full", "diagonal"])
def test_moments_and_ucb_equal_numpy(kind):
    rng = np.random.default_rng(5)
    posterior = correlated_posterior(1)
    if kind == "diagonal":
        posterior = diagonal_of(posterior)
    cov = covariances(posterior)
    mean = np.asarray(posterior.mean)
    contexts = rng.normal(size=(7, D))
    expected_mean = contexts @ mean.T
    expected_var = np.einsum("rd,ade,re->ra", contexts, cov, contexts)
    got_mean, got_var = arm_moments(posterior, contexts)
    np.testing.assert_allclose(np.asarray(got_mean), expected_mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(got_var), expected_var, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(ucb_arms(posterior, contexts, 0.7)),
                               expected_mean + 0.7 * np.sqrt(expected_var), rtol=1e-10)

    entity = np.array([2, 0, 0, 1, 2])
    candidates = rng.normal(size=(5, 6, D))
    expected_mean = np.einsum("rcd,rd->rc", candidates, mean[entity])
    expected_var = np.einsum("rcd,rde,rce->rc", candidates, cov[entity], candidates)
    got_mean, got_var = candidate_moments(posterior, entity, candidates)
    np.testing.assert_allclose(np.asarray(got_mean), expected_mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(got_var), expected_var, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(ucb_candidates(posterior, entity, candidates, 2.0)),
                               expected_mean + 2.0 * np.sqrt(expected_var), rtol=1e-10)


def test_candidate_scores_are_consistent_with_sampled_theta():
    """thompson_candidates == candidates . sample_posterior(same key): one theta per request."""
    rng = np.random.default_rng(6)
    posterior = correlated_posterior(2)
    entity = np.array([0, 2, 1, 1])
    candidates = rng.normal(size=(4, 5, D))
    key = jax.random.key(11)
    theta = np.asarray(sample_posterior(key, posterior, entity))
    np.testing.assert_allclose(np.asarray(thompson_candidates(key, posterior, entity, candidates)),
                               np.einsum("rcd,rd->rc", candidates, theta), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- (c) MABWiser as an external oracle

ARMS, L2 = 6, 2.0  # arm 5 gets no data: both libraries keep the cold prior mean 0, precision A = l2 I
TRAINED = ARMS - 1
# MABWiser 2.7.4 initializes an arm's A_inv as a copy of A = l2 I (not I / l2), so an arm it never
# fitted has covariance l2 I in LinTS / LinUCB; lljax uses I / l2. Covariances are compared on
# trained arms only.


@pytest.fixture(scope="module")
def bandit_data():
    """Decisions, contexts and rewards of 5 trained arms (9..16 rows each) and one untrained arm."""
    rng = np.random.default_rng(42)
    counts = rng.integers(9, 17, size=ARMS - 1)
    decisions = rng.permutation(np.repeat(np.arange(ARMS - 1), counts))
    contexts = rng.normal(size=(len(decisions), D))
    true = rng.normal(size=(ARMS, D))
    rewards = np.einsum("nd,nd->n", contexts, true[decisions]) + 0.3 * rng.normal(size=len(decisions))
    return decisions, contexts, rewards


def lljax_linear_model(decisions, contexts, rewards, hessian="full"):
    model = RandomEffectModel("linear", l2=L2, delta=0.0, hessian=hessian, tol=1e-10)
    report = model.update(Dataset.from_arrays(decisions, rewards, X=contexts, intercept_id=None))
    assert report.all_converged
    return model


def mabwiser(policy, decisions, contexts, rewards):
    mab = MAB(arms=list(range(ARMS)), learning_policy=policy, seed=0)
    mab.fit(decisions, rewards, contexts)
    return mab


@pytest.fixture(scope="module")
def linear_model(bandit_data):
    return lljax_linear_model(*bandit_data)


def test_linear_posterior_equals_mabwiser_lints_and_linucb(bandit_data, linear_model):
    posterior = linear_model.posterior(np.arange(ARMS), np.arange(D))
    for policy in (LearningPolicy.LinTS(alpha=1.0, l2_lambda=L2), LearningPolicy.LinUCB(alpha=1.0, l2_lambda=L2)):
        mab = mabwiser(policy, *bandit_data)
        for arm in range(ARMS):
            ridge = mab._imp.arm_to_model[arm]
            np.testing.assert_allclose(posterior.mean[arm], ridge.beta, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(posterior.precision[arm], ridge.A, rtol=1e-12)
            if arm < TRAINED:
                np.testing.assert_allclose(np.linalg.inv(posterior.precision[arm]), ridge.A_inv, rtol=1e-9,
                                           atol=1e-12)


def test_ucb_arms_equals_mabwiser_linucb(bandit_data, linear_model):
    alpha = 1.5
    mab = mabwiser(LearningPolicy.LinUCB(alpha=alpha, l2_lambda=L2), *bandit_data)
    contexts = np.random.default_rng(3).normal(size=(9, D))
    expected = np.array([[row[arm] for arm in range(TRAINED)] for row in mab.predict_expectations(contexts)])
    posterior = linear_model.posterior(np.arange(TRAINED), np.arange(D))
    got = np.asarray(ucb_arms(posterior, contexts, alpha))
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- (d) top_k


def test_top_k_equals_numpy_selection():
    rng = np.random.default_rng(8)
    scores = rng.normal(size=(6, 11))
    scores[0, [2, 5, 7]] = 4.0  # ties: the lower index comes first, as with a stable sort
    for k in (1, 4, 11):
        values, index = top_k(scores, k)
        expected = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(np.asarray(index), expected)
        np.testing.assert_array_equal(np.asarray(values), np.take_along_axis(scores, expected, axis=1))


@pytest.mark.parametrize("k", [0, -1, 12])
def test_top_k_rejects_bad_k(k):
    with pytest.raises(ValueError, match="'k'"):
        top_k(np.zeros((2, 11)), k)


# ---------------------------------------------------------------- (e) RandomEffectModel.posterior


def test_posterior_marginalizes_unrequested_features(linear_model):
    arm = 1
    stored = linear_model.coefficients(arm)
    np.testing.assert_array_equal(stored.feature_ids, np.arange(D))
    cov = np.linalg.inv(stored.precision)
    wanted = np.array([3, 0])  # any order; features 1 and 2 are marginalized out
    post = linear_model.posterior(np.array([arm]), wanted)
    np.testing.assert_array_equal(post.feature_ids, wanted)
    np.testing.assert_allclose(post.mean[0], stored.mean[wanted], rtol=1e-12)
    np.testing.assert_allclose(post.precision[0], np.linalg.inv(cov[np.ix_(wanted, wanted)]), rtol=1e-10)
    # It is not the sub-block of the precision (that would be conditioning, not marginalizing).
    assert not np.allclose(post.precision[0], stored.precision[np.ix_(wanted, wanted)], rtol=1e-3)


def test_posterior_cold_start_for_unseen_features_and_entities(linear_model):
    arm, unseen_feature, unseen_entity = 2, 9, 1000
    stored = linear_model.coefficients(arm)
    wanted = np.array([1, unseen_feature, 2])
    post = linear_model.posterior(np.array([arm, unseen_entity]), wanted)
    cov = np.linalg.inv(stored.precision)
    seen = np.array([0, 2])
    np.testing.assert_allclose(post.mean[0, seen], stored.mean[[1, 2]], rtol=1e-12)
    np.testing.assert_allclose(post.precision[0][np.ix_(seen, seen)],
                               np.linalg.inv(cov[np.ix_([1, 2], [1, 2])]), rtol=1e-10)
    assert post.mean[0, 1] == 0.0
    np.testing.assert_array_equal(post.precision[0, 1], [0.0, L2, 0.0])
    np.testing.assert_array_equal(post.precision[0, :, 1], [0.0, L2, 0.0])
    np.testing.assert_array_equal(post.mean[1], np.zeros(3))
    np.testing.assert_array_equal(post.precision[1], L2 * np.eye(3))


def test_posterior_of_a_diagonal_model(bandit_data):
    model = lljax_linear_model(*bandit_data, hessian="diagonal")
    arm = 3
    stored = model.coefficients(arm)
    post = model.posterior(np.array([arm, 77]), np.array([2, 8, 0]))
    assert post.precision.shape == (2, 3)
    np.testing.assert_allclose(post.mean[0], [stored.mean[2], 0.0, stored.mean[0]], rtol=1e-12)
    np.testing.assert_allclose(post.precision[0], [stored.precision[2], L2, stored.precision[0]], rtol=1e-12)
    np.testing.assert_array_equal(post.precision[1], [L2, L2, L2])


@pytest.mark.parametrize("hessian,l2,entities,feature_ids,error,field,value", [
    ("full", 1.0, [0], [1, 2, 1], ValueError, "feature_ids", "1"),
    ("full", 1.0, [0], [-1, 2], ValueError, "feature_ids", "-1"),
    ("full", 1.0, [0], [0.5, 2.0], TypeError, "feature_ids", "float64"),
    ("full", 1.0, [[0]], [1], ValueError, "entities", "(1, 1)"),
    ("none", 1.0, [0], [1], ValueError, "hessian", "none"),
    ("diagonal", 0.0, [12345], [1], ValueError, "l2", "12345"),
])
def test_posterior_rejects_bad_requests_naming_the_field(hessian, l2, entities, feature_ids, error, field, value):
    model = RandomEffectModel("linear", hessian=hessian, l2=l2)
    model.import_table({"entity": np.array([0]), "feature_id": np.array([1]), "mean": np.array([0.5])})
    with pytest.raises(error, match=f"'{field}'") as info:
        model.posterior(np.array(entities), np.array(feature_ids))
    assert value in str(info.value)
