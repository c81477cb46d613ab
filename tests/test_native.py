"""The native CPU Newton kernel (``lljax.solve.kernels``) against the pure-JAX path of ``solve_block``.

Both paths run the same algorithm (same ridge, Cholesky, Armijo rule, stopping tests and status codes);
only the order of floating-point sums differs. So in float64 every output must agree to 1e-9 relative
(in practice ~1e-15) with identical statuses and iteration counts. In float32 one rounding step is
~6e-8 relative and the solve amplifies it by the conditioning of the Hessian, so results agree to 2e-4
relative (measured up to ~1e-5 here) and an iteration count may differ where the float32 gradient sits
at the tolerance.

The kernel is optional for users (``pip install`` succeeds without a compiler), but these tests need it:
without it they fail with the reason the build gave. They run on the CPU device even where an accelerator
is the default.
"""

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lljax import Block, SolverConfig, Status, solve_block
from lljax.solve import kernels, registry
from tests.solvers import solve_span, uses_native


@pytest.fixture(autouse=True)
def _on_cpu():
    with jax.default_device(jax.devices("cpu")[0]):
        yield


def needs_native(test):
    """Mark a test that compares the native kernel with the plain path: it fails, naming the build error,
    when the kernel is not built."""

    def run(*args, **kwargs):
        assert kernels.available(), f"the native kernel is not built: {kernels.build_error()}"
        return test(*args, **kwargs)

    return functools.wraps(test)(run)


LOSSES = ["linear", "logistic", "poisson"]
HESSIANS = ["none", "identity", "diagonal", "full"]
DTYPES = [np.float64, np.float32]
RTOL = {np.float64: 1e-9, np.float32: 2e-4}


def test_native_kernel_is_built():
    assert kernels.available(), f"the native kernel is not built: {kernels.build_error()}"
    assert kernels.isa() in ("avx2+fma", "generic")


def make_block(rng, loss, E=7, N=13, D=5, dtype=np.float64, full_prior=True, pad_rows=True, pad_features=True):
    """A block with odd shapes: padding rows (w = 0) and padding features (id -1) in some entities."""
    X = rng.normal(size=(E, N, D)) * (rng.random((E, N, D)) < 0.7)
    X[:, :, 0] = 1.0
    offset = 0.3 * rng.normal(size=(E, N))
    if loss == "logistic":
        y = np.where(rng.random((E, N)) < 0.4, 1.0, -1.0)
    elif loss == "poisson":
        y = rng.poisson(1.5, size=(E, N)).astype(float)
    else:
        y = rng.normal(size=(E, N))
    w = rng.uniform(0.2, 3.0, size=(E, N))
    feature_ids = np.tile(np.arange(D), (E, 1))
    if pad_rows and N > 1:
        for e in range(0, E, 2):
            k = rng.integers(1, N)
            w[e, k:] = 0.0
            X[e, k:] = 0.0
    if pad_features and D > 1:
        for e in range(1, E, 3):
            feature_ids[e, -1] = -1
            X[e, :, -1] = 0.0
    prior_mean = 0.2 * rng.normal(size=(E, D))
    if full_prior:
        B = rng.normal(size=(E, D, D))
        P0 = np.einsum("eij,ekj->eik", B, B) / D + np.eye(D)
    else:
        P0 = rng.uniform(0.5, 3.0, size=(E, D))
    cast = lambda a: jnp.asarray(np.asarray(a, dtype))  # noqa: E731
    return Block(cast(X), cast(y), cast(w), cast(offset), jnp.asarray(feature_ids), cast(prior_mean), cast(P0))


def solve_both(block, config, l2=0.8, delta=0.6):
    dtype = block.X.dtype
    args = (block, jnp.asarray(l2, dtype), jnp.asarray(delta, dtype))
    plain = solve_block(*args, config._replace(native=False))
    native = solve_block(*args, config._replace(native=True))
    return jax.device_get(plain), jax.device_get(native)


def assert_same(plain, native, rtol, exact_counts=True):
    for name in ("theta", "precision", "loss", "grad_norm"):
        a, b = getattr(native, name), getattr(plain, name)
        if b is None:
            assert a is None, name
            continue
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=name)
        finite = np.isfinite(b)
        np.testing.assert_array_equal(a[~finite], b[~finite], err_msg=name)
        scale = np.max(np.abs(b[finite]), initial=1.0)
        np.testing.assert_allclose(a[finite], b[finite], rtol=rtol, atol=rtol * scale, err_msg=name)
    np.testing.assert_array_equal(native.status, plain.status)
    if exact_counts:
        np.testing.assert_array_equal(native.iterations, plain.iterations)
    else:
        assert np.max(np.abs(native.iterations - plain.iterations)) <= 1


@needs_native
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("hessian", HESSIANS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_native_equals_plain(loss, hessian, dtype):
    rng = np.random.default_rng(10)
    block = make_block(rng, loss, E=11, N=13, D=5, dtype=dtype, full_prior=hessian == "full")
    config = SolverConfig(loss=loss, hessian=hessian, tol=1e-8 if dtype == np.float64 else 1e-3)
    plain, native = solve_both(block, config)
    assert (plain.status == Status.CONVERGED).all()
    assert_same(plain, native, RTOL[dtype], exact_counts=dtype == np.float64)


@needs_native
@pytest.mark.parametrize("E,N,D,full_prior,dtype", [
    (1, 1, 1, True, np.float64), (3, 4, 1, False, np.float32), (5, 9, 2, True, np.float32),
    (9, 7, 3, False, np.float64), (4, 16, 4, True, np.float64), (10, 5, 6, True, np.float32),
    (13, 33, 7, False, np.float64), (8, 3, 17, True, np.float64), (2, 40, 33, False, np.float32),
])
def test_odd_shapes(E, N, D, full_prior, dtype):
    """Entity counts that are not a multiple of the lanes (4 float64, 8 float32), D = 1 and D not a
    multiple of the 4-feature blocks, a single row, more features than rows."""
    rng = np.random.default_rng(E * 100 + N * 10 + D)
    block = make_block(rng, "logistic", E=E, N=N, D=D, dtype=dtype, full_prior=full_prior)
    config = SolverConfig(loss="logistic", hessian="full" if full_prior else "diagonal",
                          tol=1e-8 if dtype == np.float64 else 1e-3)
    plain, native = solve_both(block, config)
    assert_same(plain, native, RTOL[dtype], exact_counts=dtype == np.float64)


@needs_native
@pytest.mark.parametrize("D", [8, 12, 16, 24, 32])
@pytest.mark.parametrize("hessian", ["full", "diagonal"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_feature_counts_with_their_own_variant(D, hessian, dtype):
    """The padded feature counts that the AVX2 build compiles with a constant D (newton_avx2.cc) give
    the JAX path's results, in full and partial groups of lanes."""
    rng = np.random.default_rng(D)
    block = make_block(rng, "logistic", E=13, N=2 * D + 3, D=D, dtype=dtype, full_prior=hessian == "full")
    config = SolverConfig(loss="logistic", hessian=hessian, tol=1e-8 if dtype == np.float64 else 1e-3)
    plain, native = solve_both(block, config)
    assert (plain.status == Status.CONVERGED).all()
    assert_same(plain, native, RTOL[dtype], exact_counts=dtype == np.float64)


@needs_native
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("case", ["nan_x", "inf_offset", "nan_label", "huge_features", "nan_in_padding_row",
                                  "inf_weight", "nan_prior_precision", "indefinite_prior", "nan_prior_of_absent_feature"])
def test_non_finite_inputs(loss, case):
    """Non-finite numbers in one entity give the same statuses (NON_FINITE, prior kept) as the JAX path;
    those in the prior of an absent feature are ignored by both."""
    rng = np.random.default_rng(3)
    b = make_block(rng, loss, E=6, N=10, D=4)
    X, y, w, offset, P0, ids = (np.array(a) for a in (b.X, b.y, b.w, b.offset, b.prior_precision, b.feature_ids))
    if case == "nan_x":
        X[2, 3, 1] = np.nan
    elif case == "inf_offset":
        offset[1, 0] = np.inf
    elif case == "nan_label":
        y[3, 4] = np.nan
    elif case == "huge_features":
        X[1, :, 2] = 1e200
    elif case == "nan_in_padding_row":
        X[0, -1, 1] = np.nan  # entity 0 has padding rows at the end (w = 0)
        assert w[0, -1] == 0
    elif case == "inf_weight":
        w[4, 2] = np.inf
    elif case == "nan_prior_precision":
        P0[5, 1, 2] = P0[5, 2, 1] = np.nan
    elif case == "indefinite_prior":
        P0[2] = -10.0 * np.eye(4)
    elif case == "nan_prior_of_absent_feature":
        ids[3, 2], X[3, :, 2] = -1, 0.0
        P0[3, 2, :] = P0[3, :, 2] = np.nan
    block = b._replace(X=jnp.asarray(X), y=jnp.asarray(y), w=jnp.asarray(w), offset=jnp.asarray(offset),
                       prior_precision=jnp.asarray(P0), feature_ids=jnp.asarray(ids))
    for hessian in ("full", "diagonal"):
        plain, native = solve_both(block, SolverConfig(loss=loss, hessian=hessian, tol=1e-8))
        assert_same(plain, native, 1e-9)
        if case == "nan_prior_of_absent_feature":
            assert (plain.status == Status.CONVERGED).all()
        elif case not in ("nan_in_padding_row", "inf_weight", "indefinite_prior"):
            assert (plain.status == Status.NON_FINITE).sum() >= 1


@needs_native
@pytest.mark.parametrize("max_iter,tol", [(0, 1e-8), (1, 1e-8), (2, 0.0), (50, 0.0)])
def test_statuses_max_iterations(max_iter, tol):
    rng = np.random.default_rng(4)
    block = make_block(rng, "logistic", E=9, N=12, D=4)
    plain, native = solve_both(block, SolverConfig(loss="logistic", hessian="full", tol=tol, max_iter=max_iter,
                                                   max_backtracks=5))
    assert_same(plain, native, 1e-9)
    assert set(plain.status.tolist()) <= {Status.MAX_ITERATIONS, Status.STALLED}
    if max_iter < 50:
        assert (plain.status == Status.MAX_ITERATIONS).all()


@needs_native
@pytest.mark.parametrize("max_backtracks", [0, 1])
def test_status_stalled(max_backtracks):
    """A far-off start with a weak prior: the full Newton step overshoots and too few halvings are allowed."""
    block = make_block(np.random.default_rng(4), "logistic", E=9, N=12, D=4)
    block = block._replace(prior_mean=jnp.full_like(block.prior_mean, 8.0), X=3 * block.X)
    config = SolverConfig(loss="logistic", hessian="full", tol=1e-10, max_backtracks=max_backtracks)
    plain, native = solve_both(block, config, l2=0.01, delta=0.01)
    assert_same(plain, native, 1e-9)
    assert (plain.status == Status.STALLED).sum() >= 4


@needs_native
def test_non_symmetric_full_prior_is_symmetrized_like_plain():
    rng = np.random.default_rng(5)
    block = make_block(rng, "poisson", E=5, N=8, D=3)
    P0 = np.array(block.prior_precision)
    P0[:, 0, 1] += 0.3
    plain, native = solve_both(block._replace(prior_precision=jnp.asarray(P0)), SolverConfig(loss="poisson"))
    assert_same(plain, native, 1e-9)


@needs_native
def test_under_jit_vmap_and_while_loop():
    """solve_block inside jit, vmapped over a batch of blocks, and in a lax.while_loop (sequential updates:
    each round's posterior is the next round's prior)."""
    rng = np.random.default_rng(6)
    blocks = [make_block(rng, "logistic", E=5, N=6, D=3) for _ in range(3)]
    batch = jax.tree.map(lambda *a: jnp.stack(a), *blocks)
    l2, delta = jnp.asarray(0.8), jnp.asarray(0.6)

    def batched(native):
        cfg = SolverConfig(native=native)
        return jax.jit(jax.vmap(lambda b: solve_block(b, l2, delta, cfg)))(batch)

    assert_same(jax.device_get(batched(False)), jax.device_get(batched(True)), 1e-9)

    def rounds(native):
        cfg = SolverConfig(native=native)

        def body(carry):
            i, mean, precision = carry
            r = solve_block(blocks[0]._replace(prior_mean=mean, prior_precision=precision), l2, delta, cfg)
            return i + 1, r.theta, r.precision

        start = (0, blocks[0].prior_mean, blocks[0].prior_precision)
        return jax.jit(lambda: jax.lax.while_loop(lambda c: c[0] < 3, body, start))()

    (_, m_plain, p_plain), (_, m_native, p_native) = rounds(False), rounds(True)
    np.testing.assert_allclose(m_native, m_plain, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(p_native, p_plain, rtol=1e-9, atol=1e-12)


@needs_native
def test_dispatch_default_and_forced_plain(monkeypatch):
    block = make_block(np.random.default_rng(7), "linear", E=3, N=4, D=2)
    auto, plain = SolverConfig(), SolverConfig(native=False)
    assert uses_native(block, auto) and not uses_native(block, plain)
    assert uses_native(block, SolverConfig(native=True))
    monkeypatch.setenv("LLJAX_NATIVE", "0")
    assert not uses_native(block, auto) and uses_native(block, SolverConfig(native=True))
    monkeypatch.delenv("LLJAX_NATIVE")
    hlo = jax.jit(lambda b: solve_block(b, 0.8, 0.6, auto)).lower(block).as_text()
    assert "lljax_newton_f64" in hlo
    hlo = jax.jit(lambda b: solve_block(b, 0.8, 0.6, plain)).lower(block).as_text()
    assert "lljax_newton" not in hlo
    # float16 has no native variant: the automatic dispatch falls back to JAX.
    assert not uses_native(block._replace(X=block.X.astype(jnp.float16)), auto)


def test_native_true_without_build_raises(monkeypatch):
    monkeypatch.setattr(kernels, "_module", None)
    block = make_block(np.random.default_rng(8), "linear", E=2, N=3, D=2)
    with pytest.raises(RuntimeError, match="native kernel is not built"):
        uses_native(block, SolverConfig(native=True))
    assert not uses_native(block, SolverConfig())


@needs_native
def test_other_platforms_lower_the_jax_path(monkeypatch):
    """The custom call is a CPU target: in a process with an accelerator, a lowering for GPU contains only
    the pure-JAX solver (and a CPU lowering only the kernel); in a CPU-only process the pure-JAX solver
    is not even traced. The choice is a static argument of the jitted solve: no trace cache to clear."""
    block = make_block(np.random.default_rng(9), "logistic", E=3, N=4, D=2)
    only_cpu = jax.jit(lambda b: solve_block(b, 0.8, 0.6, SolverConfig())).trace(block)
    assert "while" not in str(only_cpu.jaxpr) and "lljax_newton" in only_cpu.lower().as_text()
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # as in a process with an accelerator
    traced = jax.jit(lambda b: solve_block(b, 0.8, 0.6, SolverConfig())).trace(block)
    assert "while" in str(traced.jaxpr)
    cpu = traced.lower(lowering_platforms=("cpu",)).as_text()
    gpu = traced.lower(lowering_platforms=("cuda",)).as_text()
    assert "lljax_newton" in cpu and "while" not in cpu
    assert "lljax_newton" not in gpu and "while" in gpu


_GENERIC_SCRIPT = """
import jax, numpy as np
jax.config.update("jax_enable_x64", True)
from lljax import SolverConfig
from lljax.solve import kernels
from tests.test_native import make_block, solve_both, assert_same
assert kernels.isa() == "generic", kernels.isa()
for loss, dtype, shape in [("logistic", np.float64, (9, 13, 5)), ("poisson", np.float32, (11, 7, 17))]:
    block = make_block(np.random.default_rng(1), loss, *shape, dtype=dtype)
    plain, native = solve_both(block, SolverConfig(loss=loss, tol=1e-8 if dtype == np.float64 else 1e-3))
    assert_same(plain, native, 1e-9 if dtype == np.float64 else 2e-4, exact_counts=dtype == np.float64)
from lljax.solve.blocks import sparse_from_dense
from tests.test_native import solve_wide_both
from tests.test_wide import block_of
for loss, dtype in [("logistic", np.float64), ("poisson", np.float32)]:
    sparse = sparse_from_dense(block_of(np.random.default_rng(2), loss, dtype, False, 12, 40))
    plain, native = solve_wide_both(sparse, SolverConfig(loss=loss, hessian="diagonal",
                                                         tol=1e-10 if dtype == np.float64 else 1e-4))
    assert_same(plain, native, 1e-9 if dtype == np.float64 else 1e-3, exact_counts=dtype == np.float64)
print("ok")
"""


@needs_native
def test_generic_isa_variant():
    """The baseline-ISA build of the kernels (what CPUs without AVX2 + FMA run), forced by LLJAX_NATIVE_ISA."""
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, LLJAX_NATIVE_ISA="generic")
    out = subprocess.run([sys.executable, "-c", _GENERIC_SCRIPT], env=env, capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent, timeout=600)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]


# --------------------------------------------------------------------------------------------
# Host-side packing helper (pack_rows) against the NumPy path of build_block
# --------------------------------------------------------------------------------------------

def _mixed_rows_dataset(rng, fid_dtype, dtype, entities=40, vocabulary=300, shuffle=False, intercept_id=None,
                        explicit=False):
    """Rows that list their entity's whole subspace in order (every rank-in-row guess right), subsets,
    shuffled rows and a repeated feature (values add up); with ``shuffle`` the entities' rows interleave.
    ``intercept_id``: the dataset's implicit intercept (some rows also list that id: its values add to
    the intercept's 1); ``explicit``: the same rows with the intercept written first instead, and no
    implicit one."""
    from lljax import Dataset

    rows = []
    for entity in range(entities):
        subspace = np.unique(rng.integers(0, vocabulary, rng.integers(1, 10)))
        if intercept_id is not None and entity % 3 == 0:
            subspace = np.union1d(subspace, [intercept_id])
        for _ in range(rng.integers(1, 7)):
            kind = rng.integers(4)
            if kind == 0:
                row = subspace
            elif kind == 1:
                row = np.sort(rng.choice(subspace, rng.integers(1, len(subspace) + 1), replace=False))
            elif kind == 2:
                row = rng.permutation(subspace)
            else:
                row = np.concatenate([subspace, subspace[-1:]])
            rows.append((entity, row))
    if shuffle:
        rows = [rows[i] for i in rng.permutation(len(rows))]
    lengths = np.array([len(r) for _, r in rows])
    feature_ids = np.concatenate([r for _, r in rows]).astype(fid_dtype)
    values = rng.normal(size=lengths.sum())
    if explicit:
        starts = np.r_[0, np.cumsum(lengths)[:-1]]
        feature_ids = np.insert(feature_ids, starts, intercept_id)
        values = np.insert(values, starts, 1.0)
        lengths = lengths + 1
    return Dataset.from_arrays([e for e, _ in rows], np.zeros(len(rows)), indptr=np.r_[0, np.cumsum(lengths)],
                               feature_ids=feature_ids, values=values, num_features=vocabulary,
                               intercept_id=None if explicit else intercept_id, dtype=dtype,
                               allow_intercept_entries=not explicit)


@needs_native
@pytest.mark.parametrize("fid_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("vocabulary", [300, 5_000_000], ids=["column-table", "binary-search"])
@pytest.mark.parametrize("intercept_id", [None, 0, 137])
def test_pack_rows_equals_the_numpy_scatter(monkeypatch, fid_dtype, dtype, vocabulary, intercept_id):
    """Both ways the helper finds a column the rank-in-row guess misses: a per-lane table (feature
    spaces up to 2^22 ids) and a binary search of the lane's keys (larger ones); without an intercept,
    with an implicit one first in the subspaces (id 0) and one in their middle."""
    from lljax.data.arrays import concat_ranges, segments
    from lljax.rounds.round import scatter_rows as _scatter_rows
    from lljax.rounds.subspaces import local_subspaces

    rng = np.random.default_rng(11)
    data = _mixed_rows_dataset(rng, fid_dtype, dtype, vocabulary=vocabulary, shuffle=True, intercept_id=intercept_id)
    assert data.given_feature_ids.dtype == fid_dtype and data.given_values.dtype == dtype
    sub = local_subspaces(data, np.zeros(0, np.int64), np.zeros(0, np.int64))
    order = np.argsort(data.entity, kind="stable")
    start = np.r_[0, np.cumsum(np.bincount(data.entity, minlength=len(data.entity_keys)))]
    ents = rng.permutation(len(data.entity_keys))[:25]  # a block's lanes, in any order
    n_rows = start[ents + 1] - start[ents]
    rows = order[concat_ranges(start[ents], n_rows)]
    lane, rank = segments(n_rows)
    N, D = int(n_rows.max()), int(sub.sizes[ents].max())
    local = sub.restrict(ents)
    assert kernels.enabled()  # the first call takes the native helper
    native = _scatter_rows(data, rows, lane, lane * N + rank, local, len(ents) * N, D)
    monkeypatch.setenv("LLJAX_NATIVE", "0")
    plain = _scatter_rows(data, rows, lane, lane * N + rank, local, len(ents) * N, D)
    np.testing.assert_array_equal(native, plain)
    assert np.count_nonzero(plain) > 0.5 * len(rows)
    if intercept_id is not None:  # every row's intercept cell holds 1 (+ the row's own value for that id)
        column = local.local_index(np.arange(len(ents)), np.full(len(ents), intercept_id))
        cells = plain.reshape(len(ents) * N, D)[lane * N + rank, column[lane]]
        listed = np.array([intercept_id in data.given_feature_ids[data.given_indptr[r]: data.given_indptr[r + 1]]
                           for r in rows])
        assert np.all(cells[~listed] == 1.0) and listed.any() and np.any(cells[listed] != 1.0)


@needs_native
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("loss", ["logistic", "linear"])
def test_block_rows_equals_numpy(monkeypatch, dtype, loss):
    """A block's rows, lanes, cells and padded label / weight / offset columns: the native helper and the
    NumPy path give identical arrays (shuffled rows, lanes in any order, padding lanes); logistic labels 0 / 1
    are encoded to -1 / +1 in the block only."""
    from lljax.rounds.plan import BlockPlan
    from lljax.rounds.round import block_rows as _block_rows

    rng = np.random.default_rng(17)
    data = _mixed_rows_dataset(rng, np.int64, dtype, shuffle=True)
    U = len(data.entity_keys)
    labels = (rng.random(data.num_examples) < 0.5).astype(dtype)  # as given: 0 or 1
    data = dataclasses.replace(data, weight=rng.random(data.num_examples).astype(dtype),
                               offset=rng.normal(size=data.num_examples).astype(dtype), label=labels)
    row_order = np.argsort(data.entity, kind="stable")
    row_start = np.r_[0, np.cumsum(np.bincount(data.entity, minlength=U))].astype(np.int64)
    ents = rng.permutation(U)[:23]
    plan = BlockPlan(ents, 32, int(np.diff(row_start)[ents].max()) + 1, 4)
    assert kernels.enabled()
    native = _block_rows(data, loss, plan, row_order, row_start)
    monkeypatch.setenv("LLJAX_NATIVE", "0")
    plain = _block_rows(data, loss, plan, row_order, row_start)
    for name, a, b in zip(("rows", "lane", "row_cell", "y", "w", "offset"), native, plain):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    rows, _, row_cell, y = plain[:4]
    expected = np.where(labels[rows] == 1, 1.0, -1.0) if loss == "logistic" else labels[rows]
    np.testing.assert_array_equal(y[row_cell], expected)
    assert np.count_nonzero(y) == (len(rows) if loss == "logistic" else np.count_nonzero(labels[rows]))  # padding 0
    np.testing.assert_array_equal(data.label, labels)  # the dataset's labels are left as given


@needs_native
def test_block_rows_rejects_out_of_range_input():
    order, start = np.arange(5, dtype=np.int64), np.array([0, 2, 5], np.int64)
    cols = tuple(np.ones(5) for _ in range(3))
    outs = tuple(np.zeros(2 * 3) for _ in range(3))
    rows, lane, cell = kernels.block_rows(order, start, np.array([1, 0]), 3, cols, outs)
    assert rows.tolist() == [2, 3, 4, 0, 1] and lane.tolist() == [0, 0, 0, 1, 1] and cell.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(IndexError, match="entity 1 .*more than N rows"):
        kernels.block_rows(order, start, np.array([1]), 2, cols, tuple(np.zeros(2 * 2) for _ in range(3)))
    with pytest.raises(IndexError, match="entity 7"):
        kernels.block_rows(order, start, np.array([7]), 3, cols, outs)
    with pytest.raises(ValueError, match="one dtype"):
        kernels.block_rows(order, start, np.array([0]), 3, cols, (outs[0], outs[1], np.zeros(6, np.float32)))


@needs_native
def test_pack_rows_names_a_feature_outside_the_subspace():
    from lljax.rounds.subspaces import Subspaces

    indptr = np.array([0, 2, 4], np.int64)
    fids = np.array([3, 7, 3, 9], np.int64)
    values = np.ones(4)
    # lane 0's subspace is {3, 7}; row 1 (lane 0 too) also has feature 9
    local = Subspaces.from_keys(np.array([3, 7], np.int64), 1, 100)
    out = np.zeros(2 * 2)
    rows = np.array([0, 1], np.int64)
    with pytest.raises(ValueError, match="feature 9 of dataset row 1"):
        kernels.pack_rows(indptr, fids, values, rows, np.array([0, 1], np.int64), np.zeros(2, np.int64), local, 2,
                          out)
    with pytest.raises(IndexError, match="out of range"):
        kernels.pack_rows(indptr, fids, values, np.array([5], np.int64), np.zeros(1, np.int64),
                          np.zeros(1, np.int64), local, 2, out)


@needs_native
@pytest.mark.parametrize("fid_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("with_priors", [False, True])
def test_subspace_keys_equal_the_numpy_dedupe(fid_dtype, with_priors):
    from lljax.rounds.subspaces import local_subspaces

    rng = np.random.default_rng(12)
    data = _mixed_rows_dataset(rng, fid_dtype, np.float64, shuffle=True)
    U = len(data.entity_keys)
    if with_priors:  # stored pairs in no particular order: some repeat data features, some are new, one id past
        k = 120          # the data's feature space widens the stride
        owner = rng.integers(0, U, k)
        fids = rng.integers(0, 310, k)
        fids[0] = 5000
    else:
        owner, fids = np.zeros(0, np.int64), np.zeros(0, np.int64)
    row_order = np.argsort(data.entity, kind="stable")
    row_start = np.r_[0, np.cumsum(np.bincount(data.entity, minlength=U))].astype(np.int64)
    assert kernels.enabled()
    native = local_subspaces(data, owner, fids, rows=(row_order, row_start))
    plain = local_subspaces(data, owner, fids)
    assert native.stride == plain.stride
    np.testing.assert_array_equal(native.pair_keys, plain.pair_keys)
    np.testing.assert_array_equal(native.start, plain.start)
    np.testing.assert_array_equal(native.sizes, plain.sizes)
    assert len(plain.pair_keys) > U


@needs_native
@pytest.mark.parametrize("fid_dtype", [np.int32, np.int64])
def test_subspace_keys_skip_only_rows_that_repeat_the_row_before(fid_dtype):
    """A row listing the same ids as its entity's row before it is skipped; a row that differs from it in one id,
    in its length only (a prefix, a longer row) or in its order counts: the keys are the NumPy dedupe's."""
    from lljax import Dataset
    from lljax.rounds.subspaces import local_subspaces

    rows_of = {
        0: [[1, 2, 3], [1, 2, 3], [1, 2, 4], [1, 2, 3], [1, 2], [1, 2, 3, 9], [1, 2, 3, 9]],
        1: [[5, 6], [5, 6], [6, 5], [5, 7], []],
        2: [[], [], [8], [8, 8]],
    }
    n = sum(len(rows) for rows in rows_of.values())
    place = np.random.default_rng(2).permutation(n)  # the entities' rows interleaved, each entity's in order
    entity, ids = np.zeros(n, np.int64), [[]] * n
    at = 0
    for u, rows in rows_of.items():
        for position, row in zip(np.sort(place[at:at + len(rows)]), rows):
            entity[position], ids[position] = u, row
        at += len(rows)
    indptr = np.r_[0, np.cumsum([len(r) for r in ids])]
    fids = np.array([f for row in ids for f in row], fid_dtype)
    data = Dataset.from_arrays(entity, np.zeros(n), indptr=indptr, feature_ids=fids, values=np.ones(len(fids)),
                               num_features=10)
    U = data.num_entities
    row_order = np.argsort(data.entity, kind="stable")
    row_start = np.r_[0, np.cumsum(np.bincount(data.entity, minlength=U))].astype(np.int64)
    repeats = np.full(n, 7, np.uint8)  # every position is written
    native = local_subspaces(data, np.zeros(0, np.int64), np.zeros(0, np.int64), rows=(row_order, row_start),
                             repeats=repeats)
    plain = local_subspaces(data, np.zeros(0, np.int64), np.zeros(0, np.int64))
    np.testing.assert_array_equal(native.pair_keys, plain.pair_keys)
    np.testing.assert_array_equal(native.sizes, plain.sizes)
    # repeats: 1 where the row's ids are those of the row before it in row_order, of the same entity
    first = np.zeros(n, bool)
    first[row_start[:-1][np.diff(row_start) > 0]] = True
    expected_repeats = [int(i > 0 and not first[i] and ids[row_order[i]] == ids[row_order[i - 1]]) for i in range(n)]
    np.testing.assert_array_equal(repeats, expected_repeats)
    assert 0 < sum(expected_repeats) < n - U
    with pytest.raises(ValueError, match=f"repeats has {n + 1} entries, row_order {n}"):
        kernels.subspace_keys(data.given_indptr, data.given_feature_ids, row_order, row_start, np.zeros(0, np.int64),
                              np.zeros(0, np.int64), 11, np.zeros(n + 1, np.uint8))
    untouched = np.full(n, 7, np.uint8)  # the NumPy path leaves it as it is
    local_subspaces(data, np.zeros(0, np.int64), np.zeros(0, np.int64), repeats=untouched)
    assert (untouched == 7).all()
    stride = native.stride
    expected = {0: [0, 1, 2, 3, 4, 9], 1: [0, 5, 6, 7], 2: [0, 8]}  # (0: the intercept Dataset adds)
    for u, features in expected.items():
        code = int(np.searchsorted(data.entity_keys, u))
        keys = native.pair_keys[native.start[code]:native.start[code + 1]]
        np.testing.assert_array_equal(keys - code * stride, features)


@needs_native
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_subspace_keys_over_threads_equal_the_numpy_dedupe(monkeypatch, threads):
    """Many entities: the helper splits them over threads (ranges of about equal row counts); the keys
    are those of the NumPy dedupe, in order, whatever the number of threads."""
    from lljax import Dataset
    from lljax.rounds.subspaces import local_subspaces

    rng = np.random.default_rng(31)
    U = 20_000
    rows = rng.integers(1, 6, U)
    entity = rng.permutation(np.repeat(np.arange(U), rows))  # rows of an entity spread over the data
    nnz = rng.integers(1, 5, len(entity))
    indptr = np.r_[0, np.cumsum(nnz)]
    fids = rng.integers(1, 500, indptr[-1])  # repeated ids in a row add up, and are one key (0: the intercept)
    data = Dataset.from_arrays(entity, rng.random(len(entity)), indptr=indptr, feature_ids=fids,
                               values=rng.normal(size=indptr[-1]), num_features=500)
    owner, prior = rng.integers(0, U, 3000), rng.integers(0, 700, 3000)
    row_order = np.argsort(data.entity, kind="stable")
    row_start = np.r_[0, np.cumsum(np.bincount(data.entity, minlength=U))].astype(np.int64)
    monkeypatch.setattr(kernels, "host_threads", lambda: threads)
    native = local_subspaces(data, owner, prior, rows=(row_order, row_start))
    plain = local_subspaces(data, owner, prior)
    np.testing.assert_array_equal(native.pair_keys, plain.pair_keys)
    np.testing.assert_array_equal(native.sizes, plain.sizes)
    with pytest.raises(ValueError, match="outside"):  # a bad id is found in any thread's range
        kernels.subspace_keys(data.given_indptr, data.given_feature_ids, row_order, row_start,
                              np.array([U - 1]), np.array([10_000]), 700)


@needs_native
def test_host_helpers_take_strided_arrays():
    """Dataset arrays may be views (e.g. a column of a wider array): the helpers take them as they are."""
    from lljax.rounds.subspaces import Subspaces

    wide = np.zeros((4, 2), np.int64)
    wide[:, 0] = [3, 7, 3, 9]
    fids = wide[:, 0]  # strided
    assert not fids.flags.c_contiguous
    indptr = np.array([0, 2, 4], np.int64)
    keys, sizes, _ = kernels.subspace_keys(indptr, fids, np.array([0, 1], np.int64), np.array([0, 1, 2], np.int64),
                                           np.zeros(0, np.int64), np.zeros(0, np.int64), 10)
    np.testing.assert_array_equal(keys, [3, 7, 13, 19])
    np.testing.assert_array_equal(sizes, [2, 2])
    local = Subspaces.from_keys(keys, 2, 10)
    out = np.zeros(2 * 1 * 2)
    kernels.pack_rows(indptr, fids, np.arange(4.0), np.array([0, 1], np.int64), np.array([0, 1], np.int64),
                      np.array([0, 1], np.int64), local, 2, out)
    np.testing.assert_array_equal(out, [0.0, 1.0, 2.0, 3.0])



# --------------------------------------------------------------------------------------------
# The native wide kernel (Newton in the span of the rows) against the pure-JAX wide path
# --------------------------------------------------------------------------------------------

def _with_repeated_columns(sparse, rng):
    """Give some rows a second slot on a column they already have (values add up, as in X)."""
    from lljax.solve.blocks import SparseBlock

    cols, vals = np.array(sparse.cols), np.array(sparse.vals)
    E, N, K = cols.shape
    extra_c = np.zeros((E, N, 1), cols.dtype)
    extra_v = np.zeros((E, N, 1), vals.dtype)
    for e in range(E):
        for n in range(0, N, 3):
            if vals[e, n, 0] != 0:
                extra_c[e, n, 0] = cols[e, n, 0]
                extra_v[e, n, 0] = rng.normal()
    return SparseBlock(np.concatenate([cols, extra_c], -1), np.concatenate([vals, extra_v], -1), *sparse[2:])


def solve_wide_both(sparse, config, l2=0.8, delta=0.6):
    dtype = sparse.vals.dtype
    args = (sparse, np.asarray(l2, dtype), np.asarray(delta, dtype))
    plain = solve_span(*args, config._replace(native=False))
    native = solve_span(*args, config._replace(native=True))
    return plain, native


@needs_native
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("hessian", ["none", "identity", "diagonal"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(12, 40), (24, 10)], ids=["N<D", "N>D"])
def test_wide_native_equals_wide_jax(loss, hessian, dtype, shape):
    from lljax.solve.blocks import sparse_from_dense
    from tests.test_wide import block_of

    for cold in (True, False):
        rng = np.random.default_rng(21 if cold else 22)
        sparse = _with_repeated_columns(sparse_from_dense(block_of(rng, loss, dtype, cold, *shape)), rng)
        config = SolverConfig(loss=loss, hessian=hessian, tol=1e-10 if dtype == np.float64 else 1e-4)
        plain, native = solve_wide_both(sparse, config)
        assert_same(plain, native, RTOL[dtype], exact_counts=dtype == np.float64)
        assert np.asarray(native.status)[:4].tolist() == [Status.CONVERGED] * 4


@needs_native
@pytest.mark.parametrize("max_iter", [0, 1, 3])
def test_wide_native_iteration_caps(max_iter):
    from lljax.solve.blocks import sparse_from_dense
    from tests.test_wide import block_of

    sparse = sparse_from_dense(block_of(np.random.default_rng(23), "logistic", np.float64, True, 12, 40))
    plain, native = solve_wide_both(sparse, SolverConfig(loss="logistic", hessian="diagonal", tol=1e-14,
                                                         max_iter=max_iter))
    assert_same(plain, native, 1e-9)
    if max_iter < 3:
        assert np.asarray(native.status)[:4].tolist() == [Status.MAX_ITERATIONS] * 4
        assert np.asarray(native.iterations)[:4].tolist() == [max_iter] * 4


@needs_native
@pytest.mark.parametrize("case", ["nan value", "overflowing K", "overflowing exp"])
def test_wide_native_non_finite_lanes(case):
    """A lane that meets NaN/inf ends NON_FINITE with its prior mean and prior precision, as in JAX."""
    from lljax.solve.blocks import SparseBlock, sparse_from_dense
    from tests.test_wide import block_of

    loss = "poisson" if case == "overflowing exp" else "linear"
    sparse = sparse_from_dense(block_of(np.random.default_rng(24), loss, np.float64, False, 12, 40))
    vals, offset = np.array(sparse.vals), np.array(sparse.offset)
    if case == "nan value":
        vals[1, 0, 0] = np.nan
    elif case == "overflowing K":
        vals[1] *= 1e200
    else:
        offset[1] = 800.0
    sparse = SparseBlock(sparse.cols, vals, sparse.y, sparse.w, offset, *sparse[5:])
    plain, native = solve_wide_both(sparse, SolverConfig(loss=loss, hessian="diagonal", tol=1e-10))
    assert int(native.status[1]) == Status.NON_FINITE
    assert_same(plain, native, 1e-9)
    np.testing.assert_array_equal(native.theta[1], np.where(np.asarray(sparse.feature_ids[1]) >= 0,
                                                            sparse.prior_mean[1], 0.0))


@needs_native
def test_wide_native_is_what_the_model_runs(monkeypatch):
    """RandomEffectModel.update solves wide blocks by the native kernel on CPU (and by JAX without it),
    with the same coefficients."""
    from tests.test_wide import wide_batches

    batches = wide_batches(np.random.default_rng(25), 12, 10, 300)
    calls = []
    real = registry.choose_backend
    monkeypatch.setattr(registry, "choose_backend", lambda m, *a: calls.append((m.name, real(m, *a))) or calls[-1][1])
    from lljax import RandomEffectModel

    native = RandomEffectModel("logistic", l2=1.0, hessian="diagonal")
    native.update(batches[0], progress=False)
    assert ("span", "native") in calls, calls
    monkeypatch.setenv("LLJAX_NATIVE", "0")
    calls.clear()
    plain = RandomEffectModel("logistic", l2=1.0, hessian="diagonal")
    plain.update(batches[0], progress=False)
    assert ("span", "jax") in calls and all(backend == "jax" for _, backend in calls), calls
    a, b = native.to_table(), plain.to_table()
    np.testing.assert_array_equal(a["feature_id"], b["feature_id"])
    np.testing.assert_allclose(a["mean"], b["mean"], rtol=1e-9, atol=1e-12)


@needs_native
@pytest.mark.parametrize("fid_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("intercept_id", [None, 0])
def test_sparse_block_packing_equals_numpy(monkeypatch, fid_dtype, dtype, intercept_id):
    """build_sparse_block's slots (column, value) by the native helper equal the NumPy path's, repeated
    columns, shuffled rows and an implicit intercept included."""
    from lljax.rounds.plan import BlockPlan
    from lljax.rounds.round import Round
    from lljax.rounds.subspaces import local_subspaces

    rng = np.random.default_rng(13)
    data = _mixed_rows_dataset(rng, fid_dtype, dtype, shuffle=True, intercept_id=intercept_id)
    U = len(data.entity_keys)
    sub = local_subspaces(data, np.zeros(0, np.int64), np.zeros(0, np.int64))
    row_order = np.argsort(data.entity, kind="stable")
    row_start = np.r_[0, np.cumsum(np.bincount(data.entity, minlength=U))].astype(np.int64)
    ents = rng.permutation(U)[:20]
    plan = BlockPlan(ents, 32, int(np.diff(row_start)[ents].max()), int(sub.sizes[ents].max()), "span")
    work = Round(data, "linear", row_order, row_start, sub, None, np.full(U, -1), None, 1.0)
    assert kernels.enabled()
    native = work.build(plan)
    monkeypatch.setenv("LLJAX_NATIVE", "0")
    plain = work.build(plan)
    for name in native._fields:
        a, b = np.asarray(getattr(native, name)), np.asarray(getattr(plain, name))
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert np.count_nonzero(plain.vals) > 0


@pytest.mark.parametrize("native", [True, False], ids=["native", "numpy"])
@pytest.mark.parametrize("hessian", ["full", "diagonal"])
def test_an_implicit_intercept_trains_and_scores_like_a_written_one(monkeypatch, native, hessian):
    """``from_arrays`` keeps the given rows and adds the intercept implicitly; the model and the scores
    are exactly (bit for bit) those of the same rows with the intercept written first and no implicit
    one, which is how the intercept used to be stored. Some rows also list the intercept's id."""
    from lljax import RandomEffectModel

    if native:
        assert kernels.available(), f"the native kernel is not built: {kernels.build_error()}"
    else:
        monkeypatch.setenv("LLJAX_NATIVE", "0")
    implicit, explicit = (_mixed_rows_dataset(np.random.default_rng(5), np.int32, np.float64, shuffle=True,
                                              intercept_id=0, explicit=flag) for flag in (False, True))
    labels = (np.random.default_rng(6).random(implicit.num_examples) < 0.5).astype(np.float64)
    implicit, explicit = (dataclasses.replace(d, label=labels) for d in (implicit, explicit))
    assert implicit.num_nonzeros == explicit.num_nonzeros == len(implicit.values) > len(implicit.given_values)
    for name in ("indptr", "feature_ids", "values"):
        np.testing.assert_array_equal(getattr(implicit, name), getattr(explicit, name))
    np.testing.assert_array_equal(implicit.row_of_nonzero(), explicit.row_of_nonzero())
    part = np.arange(0, implicit.num_examples, 3)
    np.testing.assert_array_equal(implicit.take(part).values, explicit.take(part).values)

    models = [RandomEffectModel("logistic", hessian=hessian) for _ in range(2)]
    for model, data in zip(models, (implicit, explicit)):
        model.update(data)
    a, b = (m._store.to_flat() for m in models)
    assert len(a.keys) == implicit.num_entities
    for name in ("keys", "indptr", "feature_ids", "means", "precision"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    np.testing.assert_array_equal(models[0].score(implicit), models[1].score(explicit))
    np.testing.assert_array_equal(models[0].score(implicit), models[0].score(explicit))


def test_from_arrays_keeps_the_given_rows_with_an_intercept():
    """No copy of the CSR arrays to add the intercept (it made the peak memory of a big build about
    twice the input's): the dataset holds the caller's arrays."""
    from lljax import Dataset

    fids, values = np.array([1, 2, 2], np.int32), np.array([0.5, -1.0, 2.0])
    data = Dataset.from_arrays(["a", "b", "b"], [1.0, 0.0, 1.0], indptr=np.array([0, 1, 2, 3]), feature_ids=fids,
                               values=values, num_features=3)
    assert data.given_feature_ids is fids and data.given_values is values and data.intercept_id == 0
    assert data.feature_ids.tolist() == [0, 1, 0, 2, 0, 2] and data.values.tolist() == [1, 0.5, 1, -1, 1, 2]
    assert data.indptr.tolist() == [0, 2, 4, 6] and data.num_nonzeros == 6 and "nnz=6" in repr(data)


@needs_native
@pytest.mark.parametrize("hessian", ["full", "diagonal", "none"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_stored_priors_placed_by_the_native_helper_equal_numpy_and_the_store(monkeypatch, hessian, dtype):
    """A block's priors from stored rows (scatter_priors) equal the NumPy path's bit for bit, and each
    stored feature's mean and precision sit at its column of the entity's subspace, which interleaves
    stored and new features (oracle: the store's own coefficients)."""
    from lljax import RandomEffectModel
    from lljax.rounds.round import Round

    rng = np.random.default_rng(21)
    first = _mixed_rows_dataset(rng, np.int64, dtype, entities=30, vocabulary=40, intercept_id=0)
    model = RandomEffectModel("linear", hessian=hessian, l2=0.5)
    model.update(first)
    second = _mixed_rows_dataset(rng, np.int64, dtype, entities=45, vocabulary=40, intercept_id=0)  # 15 new
    work = Round.prepare(second, "linear", model.store, 0.5)
    plans = work.plan(1 << 20, model.solver_config(np.dtype(dtype)))
    assert kernels.enabled()
    native = [work.build(plan) for plan in plans]
    monkeypatch.setenv("LLJAX_NATIVE", "0")
    plain = [work.build(plan) for plan in plans]
    checked = interleaved = 0
    for plan, a, b in zip(plans, native, plain):
        for name in ("prior_mean", "prior_precision"):
            x, y = np.asarray(getattr(a, name)), np.asarray(getattr(b, name))
            assert x.dtype == y.dtype == dtype and x.shape == y.shape, name
            np.testing.assert_array_equal(x, y, err_msg=name)
        for lane, entity in enumerate(plan.entities):
            key = second.entity_keys[entity]
            if key not in model:
                continue
            stored = model.coefficients(key)
            ids = list(np.asarray(a.feature_ids)[lane])
            cols = [ids.index(f) for f in stored.feature_ids]
            interleaved += len(cols) < sum(f >= 0 for f in ids) and cols != list(range(len(cols)))
            np.testing.assert_array_equal(np.asarray(a.prior_mean)[lane, cols], stored.mean)
            if hessian == "full":
                np.testing.assert_array_equal(np.asarray(a.prior_precision)[lane][np.ix_(cols, cols)], stored.precision)
            elif hessian == "diagonal":
                np.testing.assert_array_equal(np.asarray(a.prior_precision)[lane, cols], stored.precision)
            checked += 1
    assert checked >= 25 and interleaved >= 5


@needs_native
@pytest.mark.parametrize("full", [True, False])
def test_scatter_priors_reads_the_rows_it_is_given_where_they_are(full):
    """``rows`` picks the stored rows in the arrays (any order, a subset): the same arrays as scattering copies of
    those rows; a row outside the arrays is an IndexError, nothing written."""
    from lljax.rounds.subspaces import Subspaces

    rng = np.random.default_rng(8)
    G, d, D, E, stride = 6, 3, 4, 3, 10
    fids = np.sort(np.stack([rng.choice(np.arange(1, 9), d, replace=False) for _ in range(G)]), axis=1)
    means = rng.normal(size=(G, d))
    precision = rng.normal(size=(G, d * (d + 1) // 2 if full else d))
    rows, lanes = np.array([4, 1, 5]), np.array([2, 0, 1])
    keys = np.concatenate([lane * stride + np.r_[0, fids[row]] for lane, row in sorted(zip(lanes, rows))])
    local = Subspaces.from_keys(keys, E, stride)
    shape = (E, D, D) if full else (E, D)
    out = [(np.zeros((E, D)), np.zeros(shape)) for _ in range(2)]
    kernels.scatter_priors(lanes, rows, fids, means, precision, full, local, *out[0])
    kernels.scatter_priors(lanes, np.arange(3), fids[rows], means[rows], precision[rows], full, local, *out[1])
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)
    assert np.count_nonzero(out[0][0]) == E * d
    before = [a.copy() for a in out[0]]
    with pytest.raises(IndexError, match="row 6 out of range"):
        kernels.scatter_priors(lanes, np.array([4, 6, 5]), fids, means, precision, full, local, *out[0])
    for a, b in zip(out[0], before):
        np.testing.assert_array_equal(a, b)


@needs_native
@pytest.mark.parametrize("hessian", ["full", "diagonal"])
def test_stored_priors_with_unsorted_feature_ids_are_placed_as_numpy_places_them(monkeypatch, hessian):
    """A store filled from flat rows keeps each entity's ids in the order given (e.g. a Spark state): the
    native placement finds every column whatever the order, as the NumPy path does."""
    from lljax import Dataset
    from lljax.rounds.round import Round
    from lljax.state.store import EntityStore, FlatEntities

    ids, means = np.array([5, 2, 7, 9, 3]), np.array([0.5, -1.0, 2.0, 0.25, 1.5])
    d = np.array([3, 2])  # entity 0: ids 5, 2, 7; entity 1: 9, 3
    if hessian == "full":
        blocks = [np.array([[2.0, 0.3, 0.1], [0.3, 3.0, 0.2], [0.1, 0.2, 4.0]]), np.array([[1.5, 0.4], [0.4, 2.5]])]
        precision = np.concatenate([b.ravel() for b in blocks])
    else:
        precision = np.array([2.0, 3.0, 4.0, 1.5, 2.5])
    flat = FlatEntities(np.array([0, 1]), np.r_[0, np.cumsum(d)], ids, means, precision)
    rng = np.random.default_rng(3)
    X = rng.normal(size=(12, 10))
    data = Dataset.from_arrays(np.repeat([0, 1], 6), rng.normal(size=12), X=X, intercept_id=None)
    store = EntityStore.from_flat(flat, np.float64, "full" if hessian == "full" else "diagonal")
    work = Round.prepare(data, "linear", store, 1.0)
    (plan,) = work.plan(1 << 20, SolverConfig(loss="linear", hessian=hessian))
    assert kernels.enabled()
    native = work.build(plan)
    monkeypatch.setenv("LLJAX_NATIVE", "0")
    plain = work.build(plan)
    for name in ("prior_mean", "prior_precision"):
        np.testing.assert_array_equal(np.asarray(getattr(native, name)), np.asarray(getattr(plain, name)))
    columns = list(np.asarray(native.feature_ids)[0])
    placed = [columns.index(f) for f in (5, 2, 7)]
    np.testing.assert_array_equal(np.asarray(native.prior_mean)[0, placed], means[:3])


@needs_native
@pytest.mark.parametrize("precision", ["full", "diagonal", None])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_slab_rows_moved_by_the_native_helper_equal_numpy_across_chunks(monkeypatch, precision, dtype):
    """A slab's put_fields / take_fields through move_rows (one pass per field) equal the NumPy path's (chunk by
    chunk) bit for bit, for rows spread over many chunks, in any order, with runs and repeats; a scalar value
    broadcasts as in NumPy; a row out of range is an IndexError naming it, and nothing is written."""
    from lljax.state.store import _Slab

    rng = np.random.default_rng(5)
    width = 7
    slabs = {mode: _Slab(width, np.dtype(dtype), precision) for mode in ("native", "numpy")}
    for slab in slabs.values():
        slab.allocate(3000)  # 64, 128, ... row chunks
    assert len(slabs["native"]._chunks) >= 5
    fill = {name: rng.normal(size=(3000,) + shape).astype(dt) if dt != np.int64 else
            rng.integers(0, 10**6, (3000,) + shape) for name, (shape, dt) in slabs["native"]._shapes.items()}
    batches = [np.arange(3000), rng.permutation(3000)[:900], np.arange(40, 1500), rng.integers(0, 3000, 50)]
    for mode, slab in slabs.items():
        if mode == "numpy":
            monkeypatch.setenv("LLJAX_NATIVE", "0")
        slab.put_fields(np.arange(3000), fill)
        for rows in batches[1:3]:
            slab.put_fields(rows, {name: values[::-1][: len(rows)] for name, values in fill.items()})
        slab.put_fields(batches[3][:3], {"means": 2.5})  # a scalar, broadcast
        monkeypatch.delenv("LLJAX_NATIVE", raising=False)
    for rows in batches:
        monkeypatch.delenv("LLJAX_NATIVE", raising=False)
        native = slabs["native"].take_fields(slabs["native"].fields, rows)
        monkeypatch.setenv("LLJAX_NATIVE", "0")
        plain = slabs["numpy"].take_fields(slabs["numpy"].fields, rows)
        assert native.keys() == plain.keys()
        for name in native:
            assert native[name].dtype == plain[name].dtype and native[name].shape == plain[name].shape
            np.testing.assert_array_equal(native[name], plain[name], err_msg=name)
    np.testing.assert_array_equal(native["means"][:3], 2.5)  # batches[3]: the rows given the scalar, read back
    monkeypatch.delenv("LLJAX_NATIVE", raising=False)
    before = slabs["native"].take_fields(slabs["native"].fields, np.arange(3000))
    capacity = int(slabs["native"]._chunk_start[-1])  # rows of the chunks allocated
    with pytest.raises(IndexError, match=f"row {capacity} out of range"):
        slabs["native"].put_fields(np.array([5, capacity]), {"means": np.zeros((2, width), dtype)})
    with pytest.raises(IndexError, match="row -1 out of range"):
        slabs["native"].take_fields(("means",), np.array([-1]))
    after = slabs["native"].take_fields(slabs["native"].fields, np.arange(3000))
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    with pytest.raises(IndexError, match="integers"):  # float rows are not truncated into row numbers
        slabs["native"].take_fields(("means",), np.array([1.7, 2.2]))
    with pytest.raises(ValueError, match="shape"):  # one row's values are not broadcast over several rows
        slabs["native"].put_fields(np.array([1, 2, 3]), {"means": np.zeros(width, dtype)})
    after = slabs["native"].take_fields(slabs["native"].fields, np.arange(3000))
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    slabs["native"]._chunks.append({name: np.full((4096,) + shape, 7, dt)  # left by an interrupted append
                                    for name, (shape, dt) in slabs["native"]._shapes.items()})
    np.testing.assert_array_equal(slabs["native"].take_fields(("means",), np.arange(3000))["means"], before["means"])
    with pytest.raises(TypeError, match="element format"):
        chunks = slabs["native"]._field_chunks("means")
        kernels.move_rows(chunks, slabs["native"]._chunk_start, np.array([0]), np.zeros((1, width), np.int32),
                          into_chunks=True)


@needs_native
def test_restricted_subspaces_and_feature_ids_of_the_native_helper_equal_numpy(monkeypatch):
    """Subspaces.restrict_with_ids through restrict_subspaces (one pass) gives the NumPy path's keys, offsets, sizes
    and -1 padded feature ids, for blocks of any entities, in any order, with padding lanes; an entity out of range
    is an IndexError, a subspace wider than the block a ValueError."""
    from lljax.rounds.subspaces import Subspaces

    rng = np.random.default_rng(12)
    U, stride = 500, 1000
    sizes = rng.integers(0, 9, U)
    keys = np.concatenate([u * stride + np.sort(rng.choice(stride, n, replace=False)) for u, n in enumerate(sizes)])
    subspaces = Subspaces.from_sizes(keys.astype(np.int64), sizes, stride)
    for entities, E in ((np.arange(U), U), (rng.permutation(U)[:77], 128), (np.array([5]), 4),
                        (np.zeros(0, np.int64), 8)):
        native = subspaces.restrict_with_ids(entities, E, 8)
        monkeypatch.setenv("LLJAX_NATIVE", "0")
        plain = subspaces.restrict_with_ids(entities, E, 8)
        monkeypatch.delenv("LLJAX_NATIVE")
        for name in ("pair_keys", "start", "sizes"):
            np.testing.assert_array_equal(getattr(native[0], name), getattr(plain[0], name), err_msg=name)
        assert native[0].stride == plain[0].stride == stride
        np.testing.assert_array_equal(native[1], plain[1])
        assert native[1].shape == (E, 8) and (native[1][len(entities):] == -1).all()
        for lane, u in enumerate(entities[:5].tolist()):  # the oracle: the round's keys of the entity
            np.testing.assert_array_equal(native[1][lane, :sizes[u]], keys[subspaces.start[u]:subspaces.start[u + 1]]
                                          - u * stride)
    with pytest.raises(IndexError, match="entity 500 out of range"):
        subspaces.restrict_with_ids(np.array([3, 500]), 4, 8)
    with pytest.raises(ValueError, match="more than 2"):
        subspaces.restrict_with_ids(np.array([int(np.argmax(sizes))]), 1, 2)


def _padded_lanes(rng, keys, W, dtype, precision):
    """Solver-like output for ``keys``: sorted distinct ids then -1 padding (0 to W valid per lane), means and a
    symmetric positive definite precision, ``(e, W, W)``, ``(e, W)`` or ``None``."""
    e = len(keys)
    valid = rng.integers(0, W + 1, e)
    fids = np.full((e, W), -1, np.int64)
    for i, d in enumerate(valid):
        fids[i, :d] = np.sort(rng.choice(50, d, replace=False))
    means = rng.normal(size=(e, W)).astype(dtype)
    if precision == "full":
        a = rng.normal(size=(e, W, W))
        prec = (a @ a.transpose(0, 2, 1) + W * np.eye(W)).astype(dtype)
    else:
        prec = None if precision is None else rng.random((e, W)).astype(dtype) + 1
    return fids, means, prec


@needs_native
@pytest.mark.parametrize("precision", ["full", "diagonal", None])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_store_writes_solver_lanes_natively_as_numpy_does(monkeypatch, precision, dtype):
    """EntityStore.write_pending through put_lanes (one pass per block and width, a full precision packed to its
    upper triangle on the way) stores bit for bit what the NumPy path stores, over writes that add entities, keep
    them in place, move them to other widths (0 included) and spread over many chunks; each entity reads back as
    its lane's first d entries and the top-left d x d of its precision. A lane or row out of range is an
    IndexError, and nothing is written."""
    from lljax.state.store import EntityStore, PendingWrites

    rng = np.random.default_rng(11)
    W = 6
    stores = {mode: EntityStore(dtype, precision) for mode in ("native", "numpy")}
    written = {}  # key -> (ids, means, precision) of its last write, from the lanes themselves
    for step in range(4):
        keys_all = rng.permutation(np.arange(4000) if step == 0 else rng.choice(6000, 2500, replace=False))
        blocks = np.array_split(keys_all, 3)
        lanes = [_padded_lanes(rng, block, W, dtype, precision) for block in blocks]
        for mode, store in stores.items():
            if mode == "numpy":
                monkeypatch.setenv("LLJAX_NATIVE", "0")
            pending = PendingWrites()
            for block, (fids, means, prec) in zip(blocks, lanes):
                pending.add(block, store.lookup(block), fids, means, prec)
            store.write_pending(pending)
            monkeypatch.delenv("LLJAX_NATIVE", raising=False)
            store.check()
        for block, (fids, means, prec) in zip(blocks, lanes):
            for i, key in enumerate(block.tolist()):
                d = int((fids[i] >= 0).sum())
                written[key] = (fids[i, :d], means[i, :d], None if prec is None else
                                prec[i, :d, :d] if precision == "full" else prec[i, :d])
    assert max(len(slab._chunks) for slab in stores["native"]._slabs.values()) >= 4
    native, plain = (stores[mode].to_flat(precision_form="upper") for mode in ("native", "numpy"))
    for name in ("keys", "indptr", "feature_ids", "means", "precision"):
        a, b = getattr(native, name), getattr(plain, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.dtype == b.dtype, name
            np.testing.assert_array_equal(a, b, err_msg=name)
    for key in rng.choice(list(written), 300, replace=False).tolist():
        got, (fids, means, prec) = stores["native"].get(key), written[key]
        np.testing.assert_array_equal(got.feature_ids, fids)
        np.testing.assert_array_equal(got.mean, means)
        if prec is not None:
            np.testing.assert_array_equal(got.precision, prec)
    store = stores["native"]
    slab = next(s for s in store._slabs.values() if s.width == W)
    before = slab.take_fields(slab.fields, np.arange(slab.size))
    fids, means, prec = _padded_lanes(rng, np.arange(3), W, dtype, precision)
    fids[:] = np.arange(W)
    capacity = int(slab.chunk_start[-1])
    with pytest.raises(IndexError, match=f"row {capacity} out of range"):
        kernels.put_lanes(slab.field_chunks(), slab.chunk_start, np.array([0, capacity]), np.array([0, 1]), fids,
                          means, prec, full=precision == "full", width=W)
    with pytest.raises(IndexError, match="lane 3 out of range"):
        kernels.put_lanes(slab.field_chunks(), slab.chunk_start, np.array([0, 1]), np.array([0, 3]), fids, means,
                          prec, full=precision == "full", width=W)
    after = slab.take_fields(slab.fields, np.arange(slab.size))
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)


@pytest.mark.parametrize("precision", ["full", "diagonal"])
def test_a_write_whose_precision_does_not_fit_the_store_changes_nothing(precision):
    """A precision of the wrong shape (or none) for the store's kind is a ValueError naming the field, raised before
    any key is registered or any row allocated."""
    from lljax.state.store import EntityStore

    store = EntityStore(np.float64, precision)
    keys = np.arange(5)
    fids = np.tile(np.arange(3), (5, 1))
    good = np.tile(np.eye(3), (5, 1, 1)) if precision == "full" else np.ones((5, 3))
    store.write(keys, store.lookup(keys), fids, np.ones((5, 3)), good)
    usage = store.row_usage()
    for bad in (None, np.ones((5, 3, 3)) if precision == "diagonal" else np.ones((5, 3)), good[:4]):
        with pytest.raises(ValueError, match="field 'precision'"):
            store.write(np.arange(10, 15), np.full(5, -1), fids, np.ones((5, 3)), bad)
        assert len(store) == 5 and 10 not in store and store.row_usage() == usage
        store.check()


@pytest.mark.parametrize("native", [True, False])
def test_a_block_of_new_entities_gets_its_cold_full_prior_as_a_diagonal_with_the_same_results(native):
    """A block whose entities have no stored prior holds its cold prior precision as (E, D), not (E, D, D) of
    zeros; the solvers give bit for bit what they give with the full matrix (native kernel and pure JAX), and a
    block with a stored entity keeps the full form."""
    from lljax import Dataset, RandomEffectModel
    from lljax.rounds.round import Round

    rng = np.random.default_rng(8)
    model = RandomEffectModel("logistic", l2=0.5, delta=0.7, hessian="full")
    known = _mixed_rows_dataset(rng, np.int64, np.float64, entities=30, vocabulary=20, intercept_id=0)
    model.update(known)
    rows = _mixed_rows_dataset(rng, np.int64, np.float64, entities=30, vocabulary=20, intercept_id=0)
    new = Dataset.from_arrays(rows.entity_keys[rows.entity] + 1000, rng.integers(0, 2, rows.num_examples),
                              indptr=rows.given_indptr, feature_ids=rows.given_feature_ids, values=rows.given_values,
                              num_features=20, intercept_id=0, allow_intercept_entries=True)
    config = model.solver_config(np.dtype(np.float64))._replace(native=native)
    work = Round.prepare(new, "logistic", model.store, 0.5)
    for plan in work.plan(1 << 20, config):
        block = work.build(plan)
        E, D = block.feature_ids.shape
        assert np.shape(block.prior_precision) == (E, D)
        square = np.zeros((E, D, D))
        square[:, np.arange(D), np.arange(D)] = block.prior_precision
        a = registry.solve(block, 0.5, 0.7, config)
        b = registry.solve(block._replace(prior_precision=square), 0.5, 0.7, config)
        assert (np.asarray(a.status) == Status.CONVERGED).mean() > 0.9
        for name in ("theta", "precision", "status", "iterations", "loss", "grad_norm"):
            np.testing.assert_array_equal(np.asarray(getattr(a, name)), np.asarray(getattr(b, name)), err_msg=name)
    again = Round.prepare(known, "logistic", model.store, 0.5)  # every entity stored: full priors
    assert all(np.ndim(again.build(plan).prior_precision) == 3 for plan in again.plan(1 << 20, config))


@needs_native
def test_prefault_keeps_the_contents_and_a_slab_maps_a_window_ahead_on_a_helper_thread(monkeypatch):
    """kernels.prefault (run as the store runs it, on its own thread) maps pages without changing what they hold;
    a slab hands the rows after those it appends, up to a window, to the prefault thread (views of its chunks), none
    while half a window is still mapped ahead, and none for less than _PREFAULT_MIN_BYTES; rows written
    afterwards read back as written."""
    import threading

    from lljax.state import store as store_module

    data = np.random.default_rng(0).normal(size=(1 << 20) // 8 + 1000)
    before = data.copy()
    assert isinstance(kernels.prefault(data), bool)
    worker = threading.Thread(target=store_module._prefault, args=([data, data[5:100]],))
    worker.start()
    worker.join()
    np.testing.assert_array_equal(data, before)

    calls = []
    monkeypatch.setattr(store_module, "_prefault_later", calls.append)

    def started():  # what the slab handed to the prefault thread, if anything
        return calls.pop() if calls else None

    slab = store_module._Slab(40, np.dtype(np.float64), "full")  # rows of 40 + 40 + 820 numbers, 7,200 bytes
    window = store_module._PREFAULT_WINDOW_BYTES // 7200  # 582 rows
    slab.allocate(10)  # a 64-row chunk: 54 rows (389 KB) after the 10, too few
    assert started() is None
    rows = slab.allocate(951)  # chunks of 128, 256, 512 and 1,024 rows; 961 rows in all
    tail = started()  # a window of 2 x 951 rows from row 961, cut at the last chunk's end (1,984)
    chunk = slab._chunks[-1]
    assert len(tail) == len(chunk) and all(t.shape[0] == 1984 - 961 for t in tail)
    assert all(t.base is a and np.shares_memory(t, a) for t, a in zip(tail, chunk.values()))
    slab.allocate(5)  # more than half of the window still mapped ahead: no thread
    assert started() is None
    slab.allocate(1984 - 966 - window // 2 + 1)  # less than half a window left, but the chunks end there: too few
    assert started() is None and slab._mapped == 1984
    more = slab.allocate(window)  # a new chunk (2,048 rows from 1,984): the window after these rows, in it
    tail = started()
    first = int(more[-1]) + 1
    assert all(t.shape[0] == 2 * window and t.base is a and np.shares_memory(t, a[first - 1984:]) and
               not np.shares_memory(t, a[:first - 1984]) for t, a in zip(tail, slab._chunks[-1].values()))
    values = {"means": np.arange(len(rows) * 40, dtype=np.float64).reshape(-1, 40)}
    slab.put_fields(rows, values)
    np.testing.assert_array_equal(slab.take_fields(("means",), rows)["means"], values["means"])


def test_one_prefault_thread_serves_every_request_in_order(monkeypatch):
    """The store's prefault requests go to one long-lived daemon thread (none is started per request), which maps
    them in order, contents unchanged, and goes on after a request that fails; reset (a forked child's) forgets it,
    so that the next request starts one."""
    import threading

    from lljax.state import store as store_module

    done, seen = threading.Event(), []
    real = store_module._prefault

    def record(arrays):
        seen.append(arrays)
        if len(seen) == 1:
            raise BufferError("a request that fails")  # dropped: the thread serves the next ones
        real(arrays)
        if len(seen) == 4:
            done.set()

    def prefault_threads():
        return sum(t.name == "lljax-prefault" for t in threading.enumerate())

    monkeypatch.setattr(store_module, "_prefault", record)
    threads = prefault_threads()
    worker = store_module._PrefaultWorker()
    data = [np.random.default_rng(i).normal(size=50_000) for i in range(3)]
    before = [d.copy() for d in data]
    worker.submit([np.zeros(10)])
    for d in data:
        worker.submit([d, d[10:]])
    assert done.wait(30)
    assert [a[0] is d for a, d in zip(seen[1:], data)] == [True] * 3
    for d, b in zip(data, before):
        np.testing.assert_array_equal(d, b)
    assert prefault_threads() == threads + 1
    worker.reset()
    assert worker._queue is None and worker._pid == -1


@needs_native
@pytest.mark.parametrize("U, n", [(1, 1), (3, 0), (5, 40), (300, 2000), (70_000, 200_000)])
def test_group_rows_is_the_stable_argsort(monkeypatch, U, n):
    """The counting sort of the rows by entity code gives NumPy's stable argsort, in any order of the rows (some
    entities without rows); Round's grouping takes it for unsorted codes, the identity for sorted ones, and NumPy's
    sort without the kernels, all the same."""
    from lljax.rounds.round import group_rows

    rng = np.random.default_rng(U + n)
    codes = rng.integers(0, U, n)
    row_start = np.r_[0, np.cumsum(np.bincount(codes, minlength=U))]
    expected = np.argsort(codes, kind="stable")
    np.testing.assert_array_equal(kernels.group_rows(codes, row_start), expected)
    np.testing.assert_array_equal(kernels.group_rows(codes.astype(np.int32), row_start), expected)
    for data in (codes, np.sort(codes)):
        start = np.r_[0, np.cumsum(np.bincount(data, minlength=U))]
        native = group_rows(data, start)
        monkeypatch.setenv("LLJAX_NATIVE", "0")
        plain = group_rows(data, start)
        monkeypatch.delenv("LLJAX_NATIVE")
        np.testing.assert_array_equal(native, np.argsort(data, kind="stable"))
        np.testing.assert_array_equal(plain, native)
        assert native.dtype == np.int64


@needs_native
def test_group_rows_refuses_codes_and_offsets_that_disagree():
    codes = np.array([2, 0, 2, 1])
    row_start = np.array([0, 1, 2, 4])
    np.testing.assert_array_equal(kernels.group_rows(codes, row_start), [1, 3, 0, 2])
    with pytest.raises(IndexError, match="code 3 of row 2 is outside"):
        kernels.group_rows(np.array([2, 0, 3, 1]), row_start)
    with pytest.raises(IndexError, match="code -1 of row 0"):
        kernels.group_rows(np.array([-1, 0, 2, 1]), row_start)
    with pytest.raises(ValueError, match="entity 2 has more rows"):
        kernels.group_rows(np.array([2, 0, 2, 2]), row_start)
    with pytest.raises(ValueError, match="from 0 to the number of rows"):
        kernels.group_rows(codes, np.array([0, 1, 2, 5]))
    with pytest.raises(ValueError, match="not increasing"):
        kernels.group_rows(codes, np.array([0, 2, 1, 4]))


@needs_native
@pytest.mark.parametrize("n, U", [(1, 1), (7, 3), (5000, 4999), (100_000, 3000), (300_000, 10**12)])
def test_encode_keys_finds_the_distinct_keys_as_numpy_does(monkeypatch, n, U):
    """The hash table's distinct keys in order of first appearance, each key's position among them; a dataset's
    unsorted integer entity keys encode to np.unique's sorted keys and codes, native or not (the table grows from
    1,024 entries, so the larger cases rehash; with almost every key distinct, the last, the dataset sorts
    instead, as the table gives up past a quarter of the keys)."""
    from lljax import Dataset

    rng = np.random.default_rng(n)
    pool = rng.integers(-2**62, 2**62, min(U, 10**6))
    keys = pool[rng.integers(0, len(pool), n)] if U < 10**12 else rng.choice(10**15, n, replace=False)
    found = kernels.encode_keys(keys)
    assert found is not None
    distinct, codes = found
    _, first = np.unique(keys, return_index=True)
    np.testing.assert_array_equal(distinct, keys[np.sort(first)])
    np.testing.assert_array_equal(distinct[codes], keys)
    assert codes.dtype == np.int64 and distinct.dtype == np.int64
    expected_keys, expected_codes = np.unique(keys, return_inverse=True)
    for native in ("1", "0"):
        monkeypatch.setenv("LLJAX_NATIVE", native)
        data = Dataset.from_arrays(keys, np.zeros(n), X=np.ones((n, 1)))
        np.testing.assert_array_equal(data.entity_keys, expected_keys)
        np.testing.assert_array_equal(data.entity, expected_codes)
        assert data.entity.dtype == np.int64
    if len(distinct) > 1:
        assert kernels.encode_keys(keys, max_distinct=len(distinct) - 1) is None
        assert kernels.encode_keys(keys, max_distinct=len(distinct)) is not None
