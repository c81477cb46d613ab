"""The losses' fused row terms (value, l', l'' from shared exponentials) against the separate functions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lljax.solve.losses import LOSSES, _log1p_unit


@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_terms_equal_the_separate_pieces(loss, dtype):
    if dtype == "float64" and not jax.config.jax_enable_x64:
        pytest.skip("float64 needs jax_enable_x64")
    rng = np.random.default_rng(0)
    m = np.concatenate([rng.normal(scale=4.0, size=200), [-800.0, -30.0, 0.0, 30.0, 700.0]]).astype(dtype)
    y = {"logistic": rng.choice([-1.0, 1.0], size=m.shape), "poisson": rng.poisson(2.0, size=m.shape),
         "linear": rng.normal(size=m.shape)}[loss].astype(dtype)
    if loss == "poisson":
        m = np.clip(m, -50, 50)
    rl = LOSSES[loss]
    m, y = jnp.asarray(m), jnp.asarray(y)
    rtol = 1e-6 if dtype == "float32" else 1e-14
    for got, expected in zip(rl.terms(m, y), (rl.value(m, y), rl.d1(m, y), rl.d2(m, y)), strict=True):
        assert got.dtype == m.dtype
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=0)


def test_terms_of_non_finite_margins():
    rl = LOSSES["logistic"]
    m = jnp.asarray([-jnp.inf, jnp.inf, jnp.nan], jnp.float32)
    for y in (1.0, -1.0):
        got = rl.terms(m, jnp.full_like(m, y))
        expected = (rl.value(m, y), rl.d1(m, y), rl.d2(m, y))
        for g, e in zip(got, expected, strict=True):
            np.testing.assert_array_equal(g, e)


def test_log1p_unit_within_a_few_ulp():
    if not jax.config.jax_enable_x64:
        pytest.skip("the series serves float64")
    e = np.concatenate([np.exp(-np.linspace(0.0, 700.0, 20001)), [1.0, 0.5, 0.0]])
    got = np.asarray(_log1p_unit(jnp.asarray(e)))
    expected = np.log1p(e)
    ulp = np.spacing(np.maximum(np.abs(expected), np.finfo(np.float64).tiny))
    assert np.max(np.abs(got - expected) / ulp) <= 4
