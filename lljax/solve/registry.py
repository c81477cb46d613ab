"""The registry of solve methods, and the one entry point that solves a block.

Every method is a :class:`~lljax.solve.base.Method` record in :data:`METHODS`. The decisions are made
here, once, on the host, outside traced code:

- :func:`choose_method`: which method solves a block of a given padded shape (the packer then builds
  the method's layout);
- :func:`choose_backend`: pure JAX or the native CPU kernel, from ``SolverConfig.native``, the
  ``LLJAX_NATIVE`` environment variable, whether the kernel is built and supports the block, and JAX's
  default backend;
- :func:`choose_layout`: the block layout the packer builds: the method's own, or ``"rows"``
  (:class:`~lljax.solve.blocks.RowsBlock`) where the method's native kernel runs on the host and can read
  the dataset's rows itself (:func:`reads_rows`) and the lanes have enough rows for that to pay, so that no
  design matrix is packed;
- :func:`solve`: validates, picks the backend, and calls one jitted function whose static arguments
  are the method, the config and the backend, so changing any of them recompiles (it is never silently
  ignored by a cached trace); a :class:`~lljax.solve.blocks.RowsBlock` goes to the method's ``solve_rows``
  (host arrays, no jit), or, where that cannot run, to the dense path as :func:`dense_from_rows`;
  :func:`dispatch` starts either without waiting.

Adding a method: write its module (a direction for :mod:`lljax.solve.iteration`, ``solve_jax``,
``check``, ``bytes_per_lane``; optionally a native kernel), add its :class:`Method` record to
:data:`METHODS`, and, if it should be chosen automatically, a rule to :func:`choose_method`.
``tests/test_solve_contract.py`` runs the shared contract over every registered method.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import numpy as np
import numpy.typing as npt

from lljax.solve import kernels, lbfgs, newton, span
from lljax.solve.base import BACKENDS, AnyArray, Limits, Method, Scalar, SolverConfig, SolveResult
from lljax.solve.blocks import Block, RowsBlock, SparseBlock, dense_from_rows, dense_from_sparse, sparse_from_dense

__all__ = ["METHODS", "WIDE_FEATURES", "ROWS_LAYOUT_MIN_ROWS", "choose_method", "choose_backend", "choose_layout",
           "reads_rows", "solve", "dispatch",
           "solve_block", "bytes_per_lane", "traced_arguments"]

METHODS: dict[str, Method] = {
    "newton": Method("newton", "dense", ("none", "identity", "diagonal", "full"), newton.solve_jax,
                     newton.solve_native, newton.native_supports, newton.check, newton.bytes_per_lane,
                     solve_rows=newton.solve_rows, rows_supports=newton.rows_supports),
    "span": Method("span", "sparse", span.HESSIANS, span.solve_jax, span.solve_native, span.native_supports,
                   span.check, span.bytes_per_lane, accepts=span.accepts, fallback="lbfgs"),
    "lbfgs": Method("lbfgs", "dense", lbfgs.HESSIANS, lbfgs.solve_jax, None, None, lbfgs.check,
                    lbfgs.bytes_per_lane, iteration_cap=lbfgs.iteration_cap),
}

# From this padded feature count on, blocks of models without full precision leave the dense D x D Newton
# method (see choose_method; the crossover is measured in benchmarks/README.md).
WIDE_FEATURES = 64


def choose_method(rows: int, features: int, full_precision: bool) -> Method:
    """The method for a block of ``rows`` x ``features`` padded entities: ``"newton"`` (full precision or
    fewer than :data:`WIDE_FEATURES` features), else ``"span"`` (``rows <= features``) or ``"lbfgs"``
    (more rows than features, where an ``N x N`` system would cost more than a ``D x D`` one)."""
    if full_precision or features < WIDE_FEATURES:
        return METHODS["newton"]
    return METHODS["span" if rows <= features else "lbfgs"]


def choose_backend(method: Method, block: Block | SparseBlock | None, config: SolverConfig) -> str:
    """Where ``block`` is solved, one of :data:`~lljax.solve.base.BACKENDS`, decided on the host.

    ``config.native`` False, or a method without a kernel: ``"jax"``. True: the kernel (a
    ``RuntimeError`` if it is not built, a ``ValueError`` if it does not support the block). None: the
    kernel when it is built, supports the block and ``LLJAX_NATIVE`` is not ``0``. ``block=None`` asks
    for a typical block (planning). The kernel runs as ``"native"`` in a process whose only JAX backend is
    the CPU, else as ``"native-on-cpu"`` (the kernel where the computation runs on the CPU, pure JAX on
    other platforms).
    """
    if method.solve_native is None or method.native_supports is None or config.native is False:
        return "jax"
    supported = block is None or method.native_supports(block, config)
    if config.native is True:
        if not kernels.available():
            raise RuntimeError(f"SolverConfig(native=True) but the native kernel is not built: {kernels.build_error()}")
        if block is not None and not supported:
            raise ValueError(f"the native kernel does not support {_dtype(block)} {method.name} blocks of shape "
                             f"{tuple(block[0].shape)}")
    elif not (supported and kernels.enabled()):
        return "jax"
    return "native" if jax.default_backend() == "cpu" else "native-on-cpu"


# From this many padded rows per lane on, a block that the host kernel can read from the dataset's rows is
# planned as a RowsBlock: packing its (E, N, D) design costs more than the kernel's reading the rows (64 rows:
# 20% faster updates; a stream's mini-batches of 4 padded rows: about 10% faster, and the million entities of
# bench_scale, most with 1-8 rows: about 0.3 s less, since the packing's per-block costs went down; see
# benchmarks/README.md). So every block the kernel can read is read from the rows.
ROWS_LAYOUT_MIN_ROWS = 1


def reads_rows(method: Method, features: int, dtype: npt.DTypeLike, config: SolverConfig) -> bool:
    """Whether ``method`` can solve a :class:`~lljax.solve.blocks.RowsBlock` of ``features`` padded features
    here: it has a ``solve_rows`` that runs such blocks, and the kernel would run every block on this host
    (:func:`choose_backend` says ``"native"``) with one local device (blocks dealt to several local devices
    stay device blocks)."""
    return (method.solve_rows is not None and method.rows_supports is not None
            and method.rows_supports(features, np.dtype(dtype), config)
            and choose_backend(method, None, config) == "native" and len(jax.local_devices()) == 1)


def choose_layout(method: Method, rows: int, features: int, dtype: npt.DTypeLike, config: SolverConfig) -> str:
    """The layout the packer builds for ``method``'s blocks of ``rows`` x ``features`` padded lanes: ``"rows"``
    (a :class:`~lljax.solve.blocks.RowsBlock`: the kernel reads the dataset's rows itself, no design is packed)
    where :func:`reads_rows` and the lanes have at least :data:`ROWS_LAYOUT_MIN_ROWS` rows, else the method's
    own layout."""
    if rows >= ROWS_LAYOUT_MIN_ROWS and reads_rows(method, features, dtype, config):
        return "rows"
    return method.layout


def bytes_per_lane(method: Method, rows: int, features: int, itemsize: int, full_precision: bool,
                   config: SolverConfig) -> int:
    """The workspace model of ``method`` for one lane, on the backend :func:`choose_backend` would pick (the
    kernel's model only where it runs everything: ``"native"``; with ``"native-on-cpu"`` blocks run pure JAX
    on the default, non-CPU device)."""
    native = choose_backend(method, None, config) == "native"
    return method.bytes_per_lane(rows, features, itemsize, full_precision, native)


def traced_arguments(config: SolverConfig, dtype: npt.DTypeLike, l2: Scalar, delta: Scalar,
                     max_iter: int | jax.Array) -> tuple[AnyArray, AnyArray, Limits, SolverConfig]:
    """``(l2, delta, limits, static config)`` for the jitted solve: the traced scalars as 0-d NumPy arrays
    (jit takes them with the block's arrays, with no device op per scalar; a JAX array of the right dtype is
    passed as it is) and the config with its traced fields zeroed, so that changing ``tol`` or ``max_iter``
    does not recompile."""

    def scalar(x: Scalar | int, dt: npt.DTypeLike) -> AnyArray:
        return x if isinstance(x, jax.Array) and x.dtype == dt else np.asarray(x, dt)

    limits = Limits(scalar(config.tol, dtype), scalar(max_iter, np.int32))
    return scalar(l2, dtype), scalar(delta, dtype), limits, config._replace(tol=0.0, max_iter=0)


def _dtype(block: Block | SparseBlock) -> np.dtype:
    return block.X.dtype if isinstance(block, Block) else block.vals.dtype


def _convert(block: Block | SparseBlock, layout: str) -> Block | SparseBlock:
    if layout == "dense":
        return block if isinstance(block, Block) else dense_from_sparse(block)
    return block if isinstance(block, SparseBlock) else sparse_from_dense(block)


def solve(block: Block | SparseBlock | RowsBlock, l2: Scalar, delta: Scalar, config: SolverConfig, *,
          method: str = "newton", max_iter: int | None = None, **options: Any) -> SolveResult:
    """Solve every entity of ``block`` with ``method`` (jitted; ``vmap`` or the native kernel over lanes).

    Args:
      block: a :class:`~lljax.solve.blocks.Block` or :class:`~lljax.solve.blocks.SparseBlock` of ``E``
        entities (the method's layout), or a :class:`~lljax.solve.blocks.RowsBlock` (method ``"newton"``:
        solved by the kernel on the host, with NumPy results, where :func:`reads_rows` holds, whatever its
        rows; ``options``, the pure-JAX path's, do not apply there; else solved as its dense block).
      l2: scalar L2 weight lambda (> 0 keeps cold-start features identified).
      delta: scalar forgetting factor in [0, 1]; 0 is plain L2.
      config: :class:`~lljax.solve.base.SolverConfig`.
      method: a name in :data:`METHODS`.
      max_iter: iteration cap (traced); ``None``: the method's default from ``config.max_iter``.
      options: the method's options (``"span"``: ``lanes``; ``"newton"``: ``lane_batch``; ``"lbfgs"``:
        ``memory_size``, ``precondition``, ``lane_batch``), compile-time constants.
    Returns:
      :class:`~lljax.solve.base.SolveResult` with leading axis ``E``.
    Raises:
      ValueError / TypeError: an unknown method, an unsupported setting or option, the wrong layout.
    """
    if method not in METHODS:
        raise ValueError(f"field 'method': value {method!r} is not one of {sorted(METHODS)}")
    chosen = METHODS[method]
    if isinstance(block, RowsBlock):
        if chosen.solve_rows is None:
            raise TypeError(f"the {method} method does not solve a RowsBlock")
        D = block.feature_ids.shape[1]
        if reads_rows(chosen, D, block.prior_mean.dtype, config):
            return dispatch(block, l2, delta, config, method=method, max_iter=max_iter).result()
        block = dense_from_rows(block)  # where the kernel cannot read the rows: the block it stands for
    expected = Block if chosen.layout == "dense" else SparseBlock
    if not isinstance(block, expected):
        raise TypeError(f"the {method} method solves a {expected.__name__}, got {type(block).__name__}")
    if chosen.accepts is not None and not chosen.accepts(block, l2, delta, config):
        assert chosen.fallback is not None, f"{method} accepts only some blocks, so it names a fallback"
        chosen = METHODS[chosen.fallback]
        block = _convert(block, chosen.layout)
        options = {}
    options = chosen.check(block, config, options)
    backend = choose_backend(chosen, block, config)
    cap = chosen.iteration_cap(config) if max_iter is None else max_iter
    dtype = _dtype(block)
    return _solve(block, *traced_arguments(config, dtype, l2, delta, cap), method=chosen.name, backend=backend,
                  options=tuple(sorted(options.items())))


@partial(jax.jit, static_argnames=("config", "method", "backend", "options"))
def _solve(block: Block | SparseBlock, l2: jax.Array, delta: jax.Array, limits: Limits, config: SolverConfig, *,
           method: str, backend: str, options: tuple) -> SolveResult:
    assert backend in BACKENDS, backend
    chosen = METHODS[method]
    plain = partial(chosen.solve_jax, config=config, **dict(options))
    if backend == "jax":
        return plain(block, l2, delta, limits)
    assert chosen.solve_native is not None, "choose_backend picks a native backend only for a method with a kernel"
    native = partial(chosen.solve_native, config=config, **dict(options))
    if backend == "native":  # tracing the pure-JAX solver too would cost more than compiling the kernel call
        return native(block, l2, delta, limits)
    return jax.lax.platform_dependent(block, l2, delta, limits, cpu=native, default=plain)


class _OnDevice(NamedTuple):
    """A solve dispatched to a JAX device (asynchronous)."""

    value: SolveResult

    def result(self) -> SolveResult:
        return jax.device_get(self.value)


def dispatch(block: Block | SparseBlock | RowsBlock, l2: Scalar, delta: Scalar, config: SolverConfig, *,
             method: str = "newton", max_iter: int | None = None, **options: Any) -> Any:
    """:func:`solve`, started: returns at once an object whose ``result()`` waits for the
    :class:`~lljax.solve.base.SolveResult` and gives it with NumPy arrays. A dense or sparse block is dispatched
    to its JAX device (asynchronous dispatch); a :class:`~lljax.solve.blocks.RowsBlock` that the host kernel
    runs starts on the kernel's own threads (:func:`lljax.solve.newton.solve_rows`). Either way the caller
    builds and writes other blocks meanwhile."""
    chosen = METHODS.get(method)
    if (isinstance(block, RowsBlock) and chosen is not None and chosen.solve_rows is not None
            and reads_rows(chosen, block.feature_ids.shape[1], block.prior_mean.dtype, config)):
        cap = chosen.iteration_cap(config) if max_iter is None else max_iter
        return chosen.solve_rows(block, l2, delta, config, cap)
    return _OnDevice(solve(block, l2, delta, config, method=method, max_iter=max_iter, **options))


def solve_block(block: Block, l2: Scalar, delta: Scalar, config: SolverConfig) -> SolveResult:
    """Solve every entity of a dense block by damped Newton (:func:`solve` with ``method="newton"``).

    Only ``config.loss``, ``config.hessian`` and ``config.max_backtracks`` (and the backend, see
    :func:`choose_backend`) are compile-time constants; ``tol`` and ``max_iter`` are traced, so changing
    them does not recompile.

    Args:
      block: a :class:`~lljax.solve.blocks.Block` of ``E`` entities.
      l2: scalar L2 weight lambda (> 0 keeps cold-start features identified).
      delta: scalar forgetting factor in [0, 1]; 0 is plain L2.
      config: :class:`~lljax.solve.base.SolverConfig`.
    Returns:
      :class:`~lljax.solve.base.SolveResult` with leading axis ``E``.
    """
    return solve(block, l2, delta, config, method="newton")
