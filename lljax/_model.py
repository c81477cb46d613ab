"""The batched API: :class:`RandomEffectModel` trains, stores and scores many entities.

``update`` runs the whole pipeline: validate -> look up stored priors -> local subspaces ->
plan blocks -> build each block (host) and solve it (device; dispatch is asynchronous, so
building the next block overlaps the current solve) -> write back the entities that did
not fail. Nothing is written before every block is solved, so an error part-way leaves
the stored model as it was.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._dataset import Dataset
from ._errors import input_error
from ._losses import LOSSES, encode_labels
from ._packing import build_block, local_subspaces, plan_blocks
from ._report import UpdateReport
from ._solve import HESSIAN_TYPES, SolverConfig, Status, solve_block
from ._store import EntityCoefficients, EntityStore

__all__ = ["RandomEffectModel", "check_labels"]

_STORED_PRECISION = {"none": None, "identity": "diagonal", "diagonal": "diagonal", "full": "full"}
_DEFAULT_TOL = {np.dtype(np.float64): 1e-6, np.dtype(np.float32): 1e-3}


def check_labels(dataset: Dataset, loss: str) -> None:
    """Raise ``ValueError`` naming the entity and the label if a label is outside the loss's domain.

    logistic: labels in {0, 1, -1}; poisson: non-negative counts; linear: any finite value.
    """
    y = dataset.label
    if loss == "logistic":
        bad = (y != 0) & (y != 1) & (y != -1)
        reason = "is not a logistic label (expected 0, 1 or -1)"
    elif loss == "poisson":
        bad = y < 0
        reason = "is not a Poisson count (expected >= 0)"
    else:
        return
    if bad.any():
        i = int(np.argmax(bad))
        raise input_error("label", float(y[i]), reason, entity=dataset.entity_key_of_example(i))


def _jax_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype JAX will compute in: float64 needs ``jax_enable_x64`` (never set by lljax)."""
    if dtype == np.float64 and not jax.config.jax_enable_x64:
        warnings.warn(
            "float64 data but jax_enable_x64 is off: solving in float32. "
            "Call jax.config.update('jax_enable_x64', True) to solve in float64.",
            stacklevel=3,
        )
        return np.dtype(np.float32)
    return dtype


class RandomEffectModel:
    """Per-entity generalized linear models, trained all at once.

    Args:
      loss: ``"linear"``, ``"logistic"`` or ``"poisson"``.
      l2: L2 weight lambda >= 0; also the prior precision of features an entity has no prior for.
      delta: forgetting factor in [0, 1]. 0 is plain L2 (``1/2 l2 ||theta||^2``); > 0 is the
        sequential Bayesian update, where the stored posterior (mean, precision) is the prior:
        ``1/2 delta (theta - theta0)^T P0 (theta - theta0) + 1/2 (1 - delta) l2 ||theta||^2``.
      hessian: posterior precision kept per entity: ``"none"``, ``"identity"``, ``"diagonal"``
        or ``"full"``.
      max_iter: Newton iteration cap per entity.
      tol: convergence on the max-abs gradient (default 1e-6 in float64, 1e-3 in float32).
      memory_budget: bytes one block may use on the device (blocks are cut to fit).

    Example::

        model = lljax.RandomEffectModel("logistic", l2=1.0, delta=0.8, hessian="full")
        report = model.update(dataset)     # trains every entity of the dataset
        scores = model.score(dataset)      # (n,) margins: offset + x . theta_entity
    """

    def __init__(self, loss: str = "logistic", *, l2: float = 1.0, delta: float = 0.0, hessian: str = "full",
                 max_iter: int = 50, tol: float | None = None, memory_budget: int = 256 << 20):
        if loss not in LOSSES:
            raise input_error("loss", loss, f"is not one of {sorted(LOSSES)}")
        if hessian not in HESSIAN_TYPES:
            raise input_error("hessian", hessian, f"is not one of {list(HESSIAN_TYPES)}")
        if not (isinstance(l2, (int, float)) and math.isfinite(l2) and l2 >= 0):
            raise input_error("l2", l2, "must be a finite number >= 0")
        if not (isinstance(delta, (int, float)) and 0.0 <= delta <= 1.0):
            raise input_error("delta", delta, "must be a number in [0, 1]")
        if not (isinstance(max_iter, int) and max_iter >= 0):
            raise input_error("max_iter", max_iter, "must be an int >= 0")
        if tol is not None and not (math.isfinite(tol) and tol > 0):
            raise input_error("tol", tol, "must be a finite number > 0")
        if not (isinstance(memory_budget, int) and memory_budget > 0):
            raise input_error("memory_budget", memory_budget, "must be a positive int (bytes)")
        self.loss, self.l2, self.delta, self.hessian = loss, float(l2), float(delta), hessian
        self.max_iter, self.tol, self.memory_budget = max_iter, tol, memory_budget
        self._store: EntityStore | None = None

    def __repr__(self) -> str:
        return (f"RandomEffectModel(loss={self.loss!r}, l2={self.l2}, delta={self.delta}, hessian={self.hessian!r}, "
                f"entities={len(self)})")

    def __len__(self) -> int:
        return 0 if self._store is None else len(self._store)

    def __contains__(self, entity: Any) -> bool:
        return self._store is not None and entity in self._store

    @property
    def entity_keys(self) -> list:
        """Keys of the stored entities, in the order they were first trained."""
        return [] if self._store is None else self._store.keys

    @property
    def dtype(self) -> np.dtype | None:
        return None if self._store is None else self._store.dtype

    def coefficients(self, entity: Any) -> EntityCoefficients:
        """The stored model of one entity: sorted global feature ids, means and precision."""
        if self._store is None:
            raise KeyError(f"entity {entity!r} is not in the model")
        return self._store.get(entity)

    def solver_config(self, dtype: np.dtype) -> SolverConfig:
        tol = self.tol if self.tol is not None else _DEFAULT_TOL[np.dtype(dtype)]
        return SolverConfig(loss=self.loss, hessian=self.hessian, max_iter=self.max_iter, tol=tol)

    def update(self, dataset: Dataset) -> UpdateReport:
        """Train every entity of ``dataset``, using stored posteriors as priors; return a report.

        Entities not in ``dataset`` are untouched. An entity whose solve ends NON_FINITE keeps
        what was stored for it (a new one is not stored).
        """
        started = time.perf_counter()
        if not isinstance(dataset, Dataset):
            raise input_error("dataset", type(dataset).__name__, "must be an lljax.Dataset", error=TypeError)
        if dataset.num_examples == 0:
            raise input_error("dataset", repr(dataset), "is empty: nothing to train")
        check_labels(dataset, self.loss)
        dtype = _jax_dtype(dataset.dtype)
        if self._store is None:
            store = EntityStore(dtype, _STORED_PRECISION[self.hessian])
        else:
            store = self._store
            if store.dtype != dtype:
                raise input_error("dataset.dtype", str(dataset.dtype), f"differs from the model's dtype {store.dtype}",
                                  error=TypeError)
        if dataset.dtype != dtype:
            dataset = _cast(dataset, dtype)

        U = dataset.num_entities
        slots = store.lookup(dataset.entity_keys)
        prior = store.gather_pairs(slots)
        subspaces = local_subspaces(dataset, prior.owner, prior.feature_ids)
        rows_per_entity = np.bincount(dataset.entity, minlength=U)
        row_order = np.argsort(dataset.entity, kind="stable")
        row_start = np.zeros(U + 1, np.int64)
        np.cumsum(rows_per_entity, out=row_start[1:])
        labels = encode_labels(self.loss, dataset.label)
        plans = plan_blocks(rows_per_entity, subspaces.sizes, dtype.itemsize, store.precision == "full",
                            self.memory_budget)

        config = self.solver_config(dtype)
        l2, delta = jnp.asarray(self.l2, dtype), jnp.asarray(self.delta, dtype)
        pending = []
        for plan in plans:
            block = build_block(dataset, labels, plan, subspaces, row_order, row_start, store, slots, self.l2)
            pending.append((plan, block.feature_ids, solve_block(block, l2, delta, config)))

        status = np.empty(U, np.int32)
        iterations = np.empty(U, np.int32)
        loss = np.empty(U, dtype)
        grad_norm = np.empty(U, dtype)
        writes = []
        for plan, feature_ids, result in pending:
            result = jax.device_get(result)
            e = len(plan.entities)
            status[plan.entities] = result.status[:e]
            iterations[plan.entities] = result.iterations[:e]
            loss[plan.entities] = result.loss[:e]
            grad_norm[plan.entities] = result.grad_norm[:e]
            ok = np.flatnonzero(result.status[:e] != Status.NON_FINITE)
            precision = result.precision  # identity is kept as a diagonal of ones; none as None
            writes.append((plan.entities[ok], feature_ids[ok], result.theta[ok],
                           None if precision is None else precision[ok]))
        for ents, feature_ids, theta, precision in writes:
            store.write(dataset.entity_keys[ents], slots[ents], feature_ids, theta, precision)
        self._store = store
        return UpdateReport(dataset.entity_keys, status, iterations, loss, grad_norm, rows_per_entity,
                            subspaces.sizes, len(plans), time.perf_counter() - started)

    def score(self, dataset: Dataset) -> np.ndarray:
        """``(n,)`` mean scores (margins) ``offset + x . theta_entity`` for every example.

        Features an entity has no coefficient for, and entities not in the model, contribute 0.
        """
        margins = dataset.offset.astype(np.float64)
        if self._store is None or dataset.num_examples == 0:
            return margins
        slots = self._store.lookup(dataset.entity_keys)
        pairs = self._store.gather_pairs(slots)
        stride = max(dataset.num_features, int(pairs.feature_ids.max()) + 1 if pairs.feature_ids.size else 1)
        stored_keys = pairs.owner * stride + pairs.feature_ids
        order = np.argsort(stored_keys)
        stored_keys, stored_means = stored_keys[order], pairs.means[order]
        row = dataset.row_of_nonzero()
        wanted = dataset.entity[row] * stride + dataset.feature_ids
        pos = np.minimum(np.searchsorted(stored_keys, wanted), max(len(stored_keys) - 1, 0))
        found = stored_keys[pos] == wanted if len(stored_keys) else np.zeros(len(wanted), bool)
        coef = np.where(found, stored_means[pos] if len(stored_keys) else 0.0, 0.0)
        return margins + np.bincount(row, weights=dataset.values * coef, minlength=dataset.num_examples)


def _cast(dataset: Dataset, dtype: np.dtype) -> Dataset:
    from dataclasses import replace

    return replace(dataset, label=dataset.label.astype(dtype), weight=dataset.weight.astype(dtype),
                   offset=dataset.offset.astype(dtype), values=dataset.values.astype(dtype))
