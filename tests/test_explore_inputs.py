"""Bad input to the exploration functions (issue 18, item 6; docs/bad_input.md, "Exploration").

Entity rows are positions into the posterior: outside ``jit`` an out-of-range (or negative) row
raises a ``ValueError`` naming the argument, the request and the value; inside a caller's ``jit``
it gets NaN scores, never a clamped or wrapped-around row's. Mismatched widths and request counts
raise ``ValueError`` naming the shapes; NumPy integers are accepted for ``draws`` and ``k``.
Oracles: NumPy dot products on the posterior's arrays.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lljax import (
    Posterior,
    arm_moments,
    candidate_moments,
    sample_posterior,
    thompson_arms,
    thompson_candidates,
    top_k,
    ucb_arms,
    ucb_candidates,
)

E, D, R, C = 4, 3, 5, 6


def posterior(kind="full"):
    rng = np.random.default_rng(0)
    B = rng.normal(size=(E, 8, D))
    precision = np.einsum("end,enf->edf", B, B) + np.eye(D)
    if kind == "diagonal":
        precision = np.diagonal(precision, axis1=1, axis2=2).copy()
    return Posterior(rng.normal(size=(E, D)), precision, np.arange(D))


KEY = jax.random.key(0)
CANDIDATES = np.random.default_rng(1).normal(size=(R, C, D))

ROW_FUNCTIONS = {
    "thompson_candidates": lambda post, entity, cands: thompson_candidates(KEY, post, entity, cands),
    "ucb_candidates": lambda post, entity, cands: ucb_candidates(post, entity, cands, 1.0),
    "candidate_moments": lambda post, entity, cands: candidate_moments(post, entity, cands)[0],
    "sample_posterior": lambda post, entity, cands: sample_posterior(KEY, post, entity),
}


@pytest.mark.parametrize("name", list(ROW_FUNCTIONS))
@pytest.mark.parametrize("bad", [E, 1234, -1, -E - 1])
def test_out_of_range_rows_raise_naming_the_argument_request_and_value(name, bad):
    entity = np.array([0, 1, bad, 2, 3])
    with pytest.raises(ValueError) as info:
        ROW_FUNCTIONS[name](posterior(), entity, CANDIDATES)
    message = str(info.value)
    assert "field 'entity'" in message and f"value {bad}" in message and "request 2" in message
    assert f"outside [0, {E})" in message and "not entity keys" in message


@pytest.mark.parametrize("kind", ["full", "diagonal"])
@pytest.mark.parametrize("name", list(ROW_FUNCTIONS))
def test_out_of_range_rows_under_jit_give_nan_not_a_clamped_row(name, kind):
    post = posterior(kind)
    fn = jax.jit(lambda e: ROW_FUNCTIONS[name](post, e, CANDIDATES))
    valid = np.array([0, 1, 2, 3, 3])
    entity = np.array([0, E, 2, -1, 3])  # a too-large row (JAX would clamp it to 3) and -1 (it would wrap to 3)
    got, expected = np.asarray(fn(jnp.asarray(entity))), np.asarray(fn(jnp.asarray(valid)))
    bad = np.array([False, True, False, True, False])
    assert np.all(np.isnan(got[bad]))
    np.testing.assert_allclose(got[~bad], expected[~bad], rtol=1e-12)
    assert np.all(np.isfinite(expected))


def test_valid_rows_under_jit_equal_numpy():
    post = posterior()
    entity = np.array([3, 0, 0, 2, 1])
    mean = jax.jit(lambda e: candidate_moments(post, e, CANDIDATES)[0])(jnp.asarray(entity))
    np.testing.assert_allclose(np.asarray(mean), np.einsum("rcd,rd->rc", CANDIDATES, post.mean[entity]), rtol=1e-12)


@pytest.mark.parametrize("entity,error,fragment", [
    (np.array([0.0, 1.0, 2.0, 3.0, 0.0]), TypeError, "float64"),
    (np.array([True, False, True, False, True]), TypeError, "bool"),
    (np.zeros((5, 1), int), ValueError, "(5, 1)"),
])
def test_entity_of_the_wrong_dtype_or_shape_is_rejected(entity, error, fragment):
    for name, fn in ROW_FUNCTIONS.items():
        with pytest.raises(error, match="field 'entity'") as info:
            fn(posterior(), entity, CANDIDATES)
        assert fragment in str(info.value), name


@pytest.mark.parametrize("name", ["thompson_candidates", "ucb_candidates", "candidate_moments"])
def test_candidates_of_the_wrong_width_or_request_count_name_the_shapes(name):
    fn, entity = ROW_FUNCTIONS[name], np.arange(R) % E
    with pytest.raises(ValueError, match=r"field 'candidates': value '<array of shape \(5, 6, 4\)>'.*D=3.*\(4, 3\)"):
        fn(posterior(), entity, np.ones((R, C, D + 1)))
    with pytest.raises(ValueError, match=r"field 'candidates'.*\(5, 6, 2\).*D=3"):
        fn(posterior(), entity, np.ones((R, C, D - 1)))  # no intercept column to add: D - 1 is not accepted
    with pytest.raises(ValueError, match=r"field 'candidates'.*\(5, 3\)"):
        fn(posterior(), entity, np.ones((R, D)))
    with pytest.raises(ValueError, match=r"field 'candidates'.*\(4, 6, 3\).*one row per request.*\(5,\)"):
        fn(posterior(), entity, np.ones((R - 1, C, D)))


@pytest.mark.parametrize("name", ["thompson_arms", "ucb_arms", "arm_moments"])
def test_contexts_of_the_wrong_width_name_the_shapes(name):
    fn = {"thompson_arms": lambda p, x: thompson_arms(KEY, p, x), "ucb_arms": ucb_arms,
          "arm_moments": arm_moments}[name]
    with pytest.raises(ValueError, match=r"field 'contexts': value '<array of shape \(7, 5\)>'.*D=3.*\(4, 3\)"):
        fn(posterior(), np.ones((7, 5)))
    with pytest.raises(ValueError, match=r"field 'contexts'.*\(3,\)"):
        fn(posterior(), np.ones(3))
    # ... under jit too: shapes are static
    with pytest.raises(ValueError, match=r"field 'contexts'.*\(7, 5\)"):
        jax.jit(lambda x: fn(posterior(), x))(jnp.ones((7, 5)))


def test_numpy_integers_are_accepted_for_draws_and_k():
    post, contexts = posterior(), np.random.default_rng(2).normal(size=(10, D))
    for draws in (np.int64(3), np.int32(3), np.uint8(3)):
        np.testing.assert_array_equal(np.asarray(thompson_arms(KEY, post, contexts, draws=draws)),
                                      np.asarray(thompson_arms(KEY, post, contexts, draws=3)))
    scores = np.random.default_rng(3).normal(size=(4, 9))
    for k in (np.int64(4), np.int32(4)):
        values, index = top_k(scores, k)
        expected = np.argsort(-scores, axis=1, kind="stable")[:, :4]
        np.testing.assert_array_equal(np.asarray(index), expected)
        np.testing.assert_array_equal(np.asarray(values), np.take_along_axis(scores, expected, axis=1))
    for bad in (True, np.int64(0), 2.0, "3"):
        with pytest.raises(ValueError, match="field 'draws'"):
            thompson_arms(KEY, post, contexts, draws=bad)
        with pytest.raises(ValueError, match="field 'k'"):
            top_k(scores, bad)
