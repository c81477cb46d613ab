"""The contract every per-entity solve method shares: settings, statuses, results, line-search constants.

Nothing here depends on a method. A method (:mod:`lljax.solve.newton`, :mod:`lljax.solve.span`,
:mod:`lljax.solve.lbfgs`) takes a block of ``E`` entities, runs :func:`lljax.solve.iteration.iterate`
on each, and returns a :class:`SolveResult` with a :class:`Status` per entity (statuses are data: nothing
raises inside jit). The native C++ kernels (:mod:`lljax.solve.kernels`) implement the same iteration
with the same constants; ``tests/test_solve_contract.py`` checks that the kernels were compiled with the
values below.
"""

from __future__ import annotations

import enum
import numbers
from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np

__all__ = ["Status", "SolverConfig", "SolveResult", "Limits", "HESSIAN_TYPES", "RUNNING", "ARMIJO_C1",
           "STEP_SHRINK", "SLACK_ULPS", "BACKENDS", "Method", "Scalar", "AnyArray", "CPU_LANE_BATCH_BYTES",
           "lane_batch_option"]

# An array leaf of the solvers' records (blocks, penalties): a NumPy array on the host (as the packer builds it),
# a JAX array on a device, a tracer inside jit.
AnyArray = jax.Array | np.ndarray

# A scalar argument on the host (l2, delta, a tolerance): a Python or NumPy number, or a 0-d NumPy or JAX array.
Scalar = float | np.floating | np.ndarray | jax.Array

HESSIAN_TYPES = ("none", "identity", "diagonal", "full")

# Line search (one set of constants for every method, in Python and in the C++ kernels): Armijo's
# sufficient decrease f(t) <= f(0) + ARMIJO_C1 t slope + slack, from the full step t = 1, halving
# (t *= STEP_SHRINK) at most ``max_backtracks`` times; slack = SLACK_ULPS eps (1 + |f(0)|).
ARMIJO_C1 = 1e-4
STEP_SHRINK = 0.5
SLACK_ULPS = 16

# Status of a lane that has not finished (never returned).
RUNNING = -1

# Where a block is solved: "jax" (the pure-JAX path, any device), "native" (the C++ kernel; only in a
# process whose only JAX backend is the CPU), "native-on-cpu" (the kernel where the computation runs on
# the CPU, the pure-JAX path on other platforms: ``lax.platform_dependent``). Chosen on the host by
# :func:`lljax.solve.registry.choose_backend`, passed to jit as a static argument.
BACKENDS = ("jax", "native", "native-on-cpu")

# The pure-JAX path on a CPU backend solves a block's lanes in batches whose workspace is at most about this
# many bytes: a ``vmap`` within a batch, ``lax.map`` over the batches. A batch stays in cache across its
# iterations and stops at its own slowest lane, where one ``vmap`` over the whole block streams every lane
# from memory at each iteration until the block's slowest lane has converged. Accelerators take the block in
# one ``vmap`` (their parallelism wants the lanes together).
CPU_LANE_BATCH_BYTES = 8 << 20


def lane_batch_option(options: dict, lanes: int, lane_bytes: int) -> int | None:
    """The ``lane_batch`` option of the dense methods, checked or defaulted (on the host).

    Args:
      options: the method's options; ``options["lane_batch"]``, if given: an int >= 1 (lanes per batch) or
        ``None`` (all lanes in one ``vmap``).
      lanes: the block's lanes ``E``; lane_bytes: one lane's workspace (the method's ``bytes_per_lane``).
    Returns:
      The batch size, or ``None`` for one ``vmap``. The default: on a CPU backend the largest power of two
      whose lanes take at most :data:`CPU_LANE_BATCH_BYTES` (at least 2: XLA drops the batch axis of a
      one-lane batch), ``None`` elsewhere; ``None`` too when the batch would hold every lane.
    Raises:
      ValueError: a ``lane_batch`` that is not ``None`` or an int >= 1.
    """
    if "lane_batch" in options:
        batch = options["lane_batch"]
        if batch is not None and (isinstance(batch, bool) or not isinstance(batch, numbers.Integral) or batch < 1):
            raise ValueError(f"field 'lane_batch': value {batch!r} must be None or an int >= 1")
        batch = None if batch is None else int(batch)
    elif jax.default_backend() == "cpu":
        batch = 1 << max(1, (CPU_LANE_BATCH_BYTES // max(lane_bytes, 1)).bit_length() - 1)
    else:
        batch = None
    return None if batch is None or batch >= lanes else batch


class Status(enum.IntEnum):
    """Outcome of one entity's solve.

    CONVERGED: the max-abs gradient fell to the tolerance.
    MAX_ITERATIONS: the iteration cap was reached first; the last iterate is kept.
    NON_FINITE: a loss, gradient or step became NaN/inf; the prior is kept.
    STALLED: no step size decreased the objective (the numerical floor was reached
      before the tolerance); the last iterate is kept.
    SKIPPED: not solved: the entity had fewer rows with positive weight than the model's
      ``min_rows``; its stored state (or cold prior) is kept. Set by
      :meth:`RandomEffectModel.update`, never by a block solver.
    """

    CONVERGED = 0
    MAX_ITERATIONS = 1
    NON_FINITE = 2
    STALLED = 3
    SKIPPED = 4


class SolverConfig(NamedTuple):
    """Solver settings.

    Attributes:
      loss: ``"linear"``, ``"logistic"`` or ``"poisson"``.
      hessian: posterior precision returned: ``"none"``, ``"identity"``, ``"diagonal"`` or ``"full"``.
      max_iter: iteration cap per entity (Newton iterations; L-BFGS takes a multiple, see
        :mod:`lljax.solve.lbfgs`).
      tol: convergence when ``max_j |gradient_j| <= tol``.
      max_backtracks: step halvings tried by the line search before declaring STALLED.
      penalize_intercept: ``True`` (default): the L2 term ``(1 - delta) l2`` covers every feature. ``False``:
        not the intercept (feature id 0), as GDMix's and Photon-ML's fixed effects; its prior term stays.
      native: the native CPU kernel (:mod:`lljax.solve.kernels`) for methods that have one: ``None``
        (default) when it is built and not disabled by ``LLJAX_NATIVE=0``, ``False`` never (the pure-JAX
        path), ``True`` always (an error if it is not built or does not support the block). Read on
        the host at each call (:func:`lljax.solve.registry.choose_backend`), so changing it, or
        ``LLJAX_NATIVE``, takes effect at the next call.

    ``loss``, ``hessian``, ``max_backtracks`` and ``penalize_intercept`` are compile-time constants of a
    jitted solve; ``tol`` and ``max_iter`` are traced (changing them does not recompile).
    """

    loss: str = "logistic"
    hessian: str = "full"
    max_iter: int = 50
    tol: float = 1e-6
    max_backtracks: int = 30
    native: bool | None = None
    penalize_intercept: bool = True


class Limits(NamedTuple):
    """The numeric stopping settings, passed to jit as traced values (no recompile per value).

    Attributes:
      tol: ``()`` gradient tolerance, in the block's dtype.
      max_iter: ``()`` int32 iteration cap.
    """

    tol: AnyArray
    max_iter: AnyArray


class SolveResult(NamedTuple):
    """Per-entity results of a block solve.

    Attributes:
      theta: ``(E, D)`` posterior mean (the prior mean for NON_FINITE lanes).
      precision: posterior precision ``(E, D, D)`` (full), ``(E, D)`` (diagonal, identity) or
        ``None`` (none); the prior precision for NON_FINITE lanes.
      loss: ``(E,)`` objective value at ``theta`` (data loss + penalty).
      grad_norm: ``(E,)`` max-abs gradient at ``theta``.
      iterations: ``(E,)`` iterations taken.
      status: ``(E,)`` :class:`Status` codes.

    JAX arrays from a solve on a device (inside jit: tracers), NumPy arrays on the host (after
    ``jax.device_get``, or from a :class:`~lljax.solve.blocks.RowsBlock`).
    """

    theta: AnyArray
    precision: AnyArray | None
    loss: AnyArray
    grad_norm: AnyArray
    iterations: AnyArray
    status: AnyArray


class Method(NamedTuple):
    """What the registry (:mod:`lljax.solve.registry`) knows of a solve method.

    Attributes:
      name: the method's name (``"newton"``, ``"span"``, ``"lbfgs"``).
      layout: the block it solves: ``"dense"`` (:class:`~lljax.solve.blocks.Block`) or ``"sparse"``
        (:class:`~lljax.solve.blocks.SparseBlock`); the packer builds that layout, or ``"rows"`` where
        :func:`lljax.solve.registry.choose_layout` says so.
      hessians: the posterior precisions it can return.
      solve_jax: ``(block, l2, delta, limits, *, config, **options) -> SolveResult``, pure JAX, traced
        inside the registry's jit.
      solve_native: the same on the native CPU kernel, or ``None``.
      native_supports: ``(block, config) -> bool`` (host side, shapes and dtypes only), or ``None``.
      check: ``(block, config, options) -> options``: validates (``ValueError``/``TypeError`` naming the
        field) and fills in the options' defaults, on the host.
      bytes_per_lane: ``(rows, features, itemsize, full_precision, native) -> int``: the workspace model
        used to cut blocks under a memory budget.
      iteration_cap: ``config -> int``: the default iteration cap.
      accepts: ``(block, l2, delta, config) -> bool`` on concrete arrays, or ``None`` (accepts every block).
      fallback: the method that solves a block this one does not accept (converted to its layout).
      solve_rows: ``(block, l2, delta, config, max_iter) -> pending`` on a
        :class:`~lljax.solve.blocks.RowsBlock` (host NumPy arrays: the native kernel reading the dataset's rows
        itself), started at once; ``pending.result()`` waits and gives the ``SolveResult`` (NumPy arrays).
        ``None``: the method never gets that layout.
      rows_supports: ``(features, dtype, config) -> bool``: whether ``solve_rows`` runs blocks of ``features``
        padded features (host side), or ``None``.
    """

    name: str
    layout: str
    hessians: tuple[str, ...]
    solve_jax: Callable
    solve_native: Callable | None
    native_supports: Callable | None
    check: Callable
    bytes_per_lane: Callable
    iteration_cap: Callable = lambda config: config.max_iter
    accepts: Callable | None = None
    fallback: str | None = None
    solve_rows: Callable | None = None
    rows_supports: Callable | None = None
