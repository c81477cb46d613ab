"""The batched API: :class:`RandomEffectModel` trains, stores and scores many entities.

``update`` runs the whole pipeline: validate -> look up stored priors -> local subspaces ->
plan blocks -> build each block (host) and solve it (device; dispatch is asynchronous, so
building the next block overlaps the current solve) -> write back the entities of each solved
block that did not fail. An error part-way restores the round's entities as they were (and
forgets the new ones), so the stored model is never left half-updated.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import jax
import numpy as np

from lljax.data.arrays import group_rank
from lljax.data.dataset import Dataset
from lljax.data.errors import input_error
from lljax.data.ntv import Feature, IndexMap
from lljax.explore.posterior import dense_posterior
from lljax.explore.scoring import Posterior
from lljax.model.report import PhaseTimer, UpdateReport
from lljax.rounds.buffers import BufferPool, Buffers
from lljax.rounds.plan import BlockPlan
from lljax.rounds.round import Round
from lljax.solve.base import HESSIAN_TYPES, SolverConfig, Status
from lljax.solve.dtypes import compute_dtype, x64_enabled
from lljax.solve.losses import LOSSES, first_bad_label
from lljax.solve.registry import dispatch
from lljax.state.export import entity_to_ntv, model_to_table, ntv_to_flat, read_parquet, table_to_flat, write_parquet
from lljax.state.persist import HYPERPARAMETERS, load_model, save_model
from lljax.state.store import EntityCoefficients, EntityStore, PendingWrites
from lljax.version import __version__

__all__ = ["RandomEffectModel", "check_labels", "singular_precisions"]

_STORED_PRECISION = {"none": None, "identity": "diagonal", "diagonal": "diagonal", "full": "full"}
_CPU_BLOCK_BUDGET = 16 << 20
_ACCELERATOR_BLOCK_BUDGET = 256 << 20
_IN_FLIGHT = 2  # blocks dispatched to the device and not yet collected
_GROUP_BYTES = 16 << 20  # results of the blocks written in one pass (about)
_KEPT_BUFFER_BYTES = 64 << 20  # free block buffers a model keeps from one update to the next (see _update_round)
_PROGRESS_DELAY_S = 3.0  # the default progress bar appears only for updates longer than this
# Poisson line searches may halve the step this many times (SolverConfig's default is 30): a count y
# makes the first Newton step from 0 about y long, and exp(step) overflows until the step is cut to
# ~log(y), ~36 halvings for y = 1e11 and ~60 for y = 1e17 (float64).
_POISSON_BACKTRACKS = 64
_DEFAULT_TOL = {np.dtype(np.float64): 1e-6, np.dtype(np.float32): 1e-3}


def check_labels(dataset: Dataset, loss: str) -> None:
    """Raise ``ValueError`` naming the entity and the label if a label is outside the loss's domain
    (:func:`lljax.solve.losses.first_bad_label`)."""
    bad = first_bad_label(loss, dataset.label)
    if bad is not None:
        i, reason = bad
        raise input_error("label", float(dataset.label[i]), reason, entity=dataset.entity_key_of_example(i))


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _check_real(field: str, value: Any, in_range: bool, expected: str) -> None:
    """``TypeError`` if ``value`` is not a real number (bools excluded), ``ValueError`` if not ``in_range``."""
    if not _is_real(value):
        raise input_error(field, value, f"must be {expected}", error=TypeError)
    if not in_range:
        raise input_error(field, value, f"must be {expected}")


def _finite(value: Any) -> bool:
    """Whether a real number is finite as a float (an int beyond the float range is not: no OverflowError)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


_INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1


def _jax_dtype(dtype: np.dtype) -> np.dtype:
    return compute_dtype(dtype, caller="RandomEffectModel", stacklevel=4)


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
      max_iter: Newton iteration cap per entity. Wide entities (64 or more padded features) of
        models without full precision are solved by L-BFGS instead, capped at ``10 * max_iter``
        iterations (the report's ``iterations`` then counts L-BFGS iterations).
      tol: convergence on the max-abs gradient (default 1e-6 in float64, 1e-3 in float32).
      memory_budget: bytes one block may use on the device (blocks are cut to fit). ``None``
        (default): 16 MiB on CPU, where cache-sized blocks solve fastest (``benchmarks/README.md``), and
        256 MiB on accelerators.
      min_rows: an entity with fewer rows of positive weight in an update is not trained
        (status ``SKIPPED``; its state is kept). Default 1: entities whose weights are all 0 are skipped.
      max_rows: at most this many rows of an entity per solve; more are trained in consecutive
        rounds (see :meth:`update`). ``None``: no bound.
      index_map: optional :class:`IndexMap` naming the global features; saved with the model
        and used by the name-term exports.
      penalize_intercept: ``True`` (default): the L2 term covers the intercept (feature id 0) too.
        ``False``: it does not, and a new entity's intercept has no prior (precision 0), as GDMix's and
        Photon-ML's fixed effects; a stored posterior's intercept is still the prior of the next update
        (``delta``). Its coefficient is then bounded by the data only: an entity whose rows all have one
        logistic label gets a large intercept. Wide entities (see ``max_iter``) whose intercept has no
        prior are solved by L-BFGS. :meth:`posterior` still gives a never-trained intercept
        precision ``l2`` (sampling needs a proper prior).

    Example::

        model = lljax.RandomEffectModel("logistic", l2=1.0, delta=0.8, hessian="full")
        report = model.update(dataset)     # trains every entity of the dataset
        scores = model.score(dataset)      # (n,) margins: offset + x . theta_entity
    """

    def __init__(self, loss: str = "logistic", *, l2: float = 1.0, delta: float = 0.0, hessian: str = "full",
                 max_iter: int = 50, tol: float | None = None, memory_budget: int | None = None, min_rows: int = 1,
                 max_rows: int | None = None, index_map: IndexMap | None = None, penalize_intercept: bool = True):
        if loss not in LOSSES:
            raise input_error("loss", loss, f"is not one of {sorted(LOSSES)}")
        if hessian not in HESSIAN_TYPES:
            raise input_error("hessian", hessian, f"is not one of {list(HESSIAN_TYPES)}")
        _check_real("l2", l2, _finite(l2) and l2 >= 0 if _is_real(l2) else False, "a finite number >= 0")
        _check_real("delta", delta, 0.0 <= delta <= 1.0 if _is_real(delta) else False, "a number in [0, 1]")
        if not (_is_int(max_iter) and 0 <= max_iter <= _INT32_MAX):
            raise input_error("max_iter", max_iter, f"must be an int in [0, {_INT32_MAX}] (2**31 - 1)")
        if tol is not None:
            _check_real("tol", tol, _finite(tol) and tol > 0 if _is_real(tol) else False, "a finite number > 0")
        if memory_budget is not None and not (_is_int(memory_budget) and 0 < memory_budget <= _INT64_MAX):
            raise input_error("memory_budget", memory_budget, "must be None or a positive int (bytes) < 2**63")
        if not (_is_int(min_rows) and 0 <= min_rows <= _INT64_MAX):
            raise input_error("min_rows", min_rows, "must be an int in [0, 2**63)")
        if max_rows is not None and not (_is_int(max_rows) and 1 <= max_rows <= _INT64_MAX):
            raise input_error("max_rows", max_rows, "must be None or an int in [1, 2**63)")
        if not isinstance(penalize_intercept, (bool, np.bool_)):
            raise input_error("penalize_intercept", penalize_intercept, "must be True or False", error=TypeError)
        if index_map is not None and not isinstance(index_map, IndexMap):
            raise input_error("index_map", type(index_map).__name__, "must be an lljax.IndexMap or None",
                              error=TypeError)
        self.loss, self.l2, self.delta, self.hessian = loss, float(l2), float(delta), hessian
        self.max_iter, self.tol, self.memory_budget = int(max_iter), None if tol is None else float(tol), memory_budget
        self.min_rows, self.max_rows, self.index_map = int(min_rows), max_rows, index_map
        self.penalize_intercept = bool(penalize_intercept)
        self._store: EntityStore | None = None
        self._buffers = BufferPool(max_free_bytes=_KEPT_BUFFER_BYTES)  # block buffers, reused across updates

    def __getstate__(self) -> dict[str, Any]:
        """A copy (pickle, ``copy.deepcopy``) gets no free block buffers: they are scratch memory."""
        state = self.__dict__.copy()
        state["_buffers"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._buffers = BufferPool(max_free_bytes=_KEPT_BUFFER_BYTES)

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

    @property
    def store(self) -> EntityStore | None:
        """The per-entity state (:class:`~lljax.state.store.EntityStore`), ``None`` before the first
        entity is stored: what persistence and exports read and write. Setting it replaces the whole state;
        its precision form must be the one ``hessian`` keeps."""
        return self._store

    @store.setter
    def store(self, store: EntityStore | None) -> None:
        if store is not None:
            if not isinstance(store, EntityStore):
                raise input_error("store", type(store).__name__, "must be an EntityStore or None", error=TypeError)
            if store.precision != _STORED_PRECISION[self.hessian]:
                raise input_error("store.precision", store.precision,
                                  f"is not the form kept by hessian={self.hessian!r} "
                                  f"({_STORED_PRECISION[self.hessian]!r})")
        self._store = store

    def coefficients(self, entity: Any) -> EntityCoefficients:
        """The stored model of one entity: sorted global feature ids, means and precision."""
        if self._store is None:
            raise KeyError(f"entity {entity!r} is not in the model")
        return self._store.get(entity)

    def posterior(self, entities: Any, feature_ids: Any, *, intercept_id: int | None = 0) -> Posterior:
        """Gaussian posteriors of ``entities (E,)`` over global ``feature_ids (D,)``, for exploration.

        Returns a :class:`Posterior` (NumPy arrays): ``mean (E, D)`` and precision ``(E, D, D)``
        (``hessian="full"``) or ``(E, D)`` (``"diagonal"``, ``"identity"``). Features an entity has
        never seen, and entities not in the model, get the cold-start prior (mean 0, precision
        ``l2``); stored features not requested are marginalized out. ``intercept_id``: the global id
        of the intercept in the training data (``Dataset.intercept_id``; ``None`` if it had none); when
        it is among ``feature_ids``, contexts may omit its column (:class:`Posterior`).
        """
        if self.hessian == "none":
            raise input_error("hessian", "none", "keeps no posterior precision; exploration needs 'identity', "
                              "'diagonal' or 'full'")
        dtype = self.dtype if self.dtype is not None else np.dtype(np.float64 if x64_enabled()
                                                                   else np.float32)
        return dense_posterior(self._store, entities, feature_ids, self.l2, dtype, full=self.hessian == "full",
                               intercept_id=intercept_id)

    # -- persistence and exports --------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write the whole model (hyper-parameters, index map, every entity's feature ids, means and
        precisions) to ``path``, atomically: a crash mid-save leaves the previous file intact."""
        save_model(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> RandomEffectModel:
        """Read a model written by :meth:`save` (exactly as saved); :class:`ModelFileError` if the file
        is not an lljax model, has another format version, or is corrupt."""
        return load_model(path, cls)

    def to_table(self) -> dict[str, np.ndarray]:
        """All entities as columns ``entity``, ``feature_id``, ``mean``, ``variance`` (``1 / diag(P)``,
        Lambda Learner's convention), and ``name``/``term`` with an index map; one row per pair."""
        return model_to_table(self)

    @classmethod
    def from_table(cls, table: dict[str, Any], **hyperparameters: Any) -> RandomEffectModel:
        """A model holding the entities of a table like :meth:`to_table`'s (precision ``1 / variance``,
        diagonal even for ``hessian="full"``), with the given constructor arguments."""
        model = cls(**hyperparameters)
        model.import_table(table)
        return model

    def import_table(self, table: dict[str, Any]) -> None:
        """Add or replace the entities of ``table`` (validated first; see :meth:`from_table`). Atomic: if it
        fails (or is interrupted) part-way, the model is left as it was."""
        dtype = self._import_dtype(table.get("mean"))
        store = self._store if self._store is not None else EntityStore(dtype, _STORED_PRECISION[self.hessian])
        flat = table_to_flat(table, precision=store.precision, l2=self.l2, dtype=store.dtype)
        self._check_imported_ids(flat.feature_ids)
        self._write_flat(store, flat)

    def _check_imported_ids(self, feature_ids: np.ndarray) -> None:
        if self.index_map is not None and feature_ids.size and feature_ids.max() >= len(self.index_map):
            raise input_error("feature_id", int(feature_ids.max()),
                              f"is outside the {len(self.index_map)} features of the model's index map")

    def _write_flat(self, store: EntityStore, flat: Any) -> None:
        """``store.write_flat(flat)``, undone if it fails part-way; ``store`` becomes the model's store."""
        if store is not self._store:
            store.write_flat(flat)  # a new store: on failure it is simply dropped
            self._store = store
            return
        snapshot = store.snapshot(store.lookup(flat.keys))
        try:
            store.write_flat(flat)
            store.commit(snapshot)
        except BaseException:
            store.restore(snapshot)
            raise

    def to_parquet(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_table` to a Parquet file, atomically (needs ``pyarrow``). The hyper-parameters and
        the index map go in the file's metadata, for :meth:`from_parquet`."""
        metadata = {"format": "lljax.RandomEffectModel.table", "lljax_version": __version__,
                    "hyperparameters": {name: getattr(self, name) for name in HYPERPARAMETERS},
                    "index_map": None if self.index_map is None else self.index_map.to_dict()}
        write_parquet(self.to_table(), os.fspath(path), metadata)

    @classmethod
    def from_parquet(cls, path: str | os.PathLike, **hyperparameters: Any) -> RandomEffectModel:
        """:meth:`from_table` of a Parquet file written by :meth:`to_parquet`, with the hyper-parameters (and
        index map) saved in it; keyword arguments override them. ``ValueError`` naming the file if its
        metadata is not valid."""
        path = os.fspath(path)
        table, metadata = read_parquet(path, with_metadata=True)
        saved: dict[str, Any] = {}
        if metadata is not None:
            hyper = metadata.get("hyperparameters", {})
            if not isinstance(hyper, dict) or not set(hyper) <= set(HYPERPARAMETERS):
                raise input_error("metadata.hyperparameters", hyper, f"must be an object with fields among "
                                  f"{list(HYPERPARAMETERS)}", where=path)
            saved.update(hyper)
            if metadata.get("index_map") is not None:
                try:
                    saved["index_map"] = IndexMap.from_dict(metadata["index_map"])
                except (TypeError, ValueError, KeyError, AttributeError) as exc:
                    raise input_error("metadata.index_map", str(metadata["index_map"])[:80],
                                      f"is not a valid index map ({exc})", where=path) from exc
        saved.update(hyperparameters)
        try:
            model = cls(**saved)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{path}: {exc}") from exc
        model.import_table(table)
        return model

    def entity_to_ntv(self, entity: Any, index_map: IndexMap | None = None
                      ) -> tuple[list[Feature], list[Feature] | None]:
        """One entity's ``(means, variances)`` as :class:`Feature` lists, Lambda Learner's name-term form
        (variances ``1 / diag(P)``; ``None`` without precision). Uses ``self.index_map`` by default."""
        return entity_to_ntv(self, entity, index_map)

    def entity_from_ntv(self, entity: Any, means: Iterable[Feature], variances: Iterable[Feature] | None = None,
                        index_map: IndexMap | None = None) -> None:
        """Set one entity's model from name-term means and variances (precision ``1 / variance``;
        ``l2`` for a feature without variance), replacing what was stored for it."""
        means = list(means)
        dtype = self._import_dtype(np.asarray([f.value for f in means], np.float64))
        store = self._store if self._store is not None else EntityStore(dtype, _STORED_PRECISION[self.hessian])
        variances = None if variances is None else list(variances)
        flat = ntv_to_flat(self, entity, means, variances, index_map, store.precision, store.dtype)
        self._check_imported_ids(flat.feature_ids)
        self._write_flat(store, flat)

    def _import_dtype(self, values: Any) -> np.dtype:
        if self._store is not None:
            return self._store.dtype
        kind = np.asarray(values).dtype if values is not None else np.dtype(np.float64)
        dtype = kind if kind in (np.float32, np.float64) else np.dtype(np.float64)
        return _jax_dtype(dtype)

    def _check_feature_space(self, dataset: Dataset) -> None:
        """``ValueError`` if the dataset's feature ids can exceed the model's index map (a dataset built
        with another, larger :class:`IndexMap`, or with more columns than the map names)."""
        if self.index_map is not None and dataset.num_features > len(self.index_map):
            raise input_error("dataset.num_features", dataset.num_features,
                              f"exceeds the {len(self.index_map)} features of the model's index map: the dataset "
                              "was built with another feature space (build it with the model's IndexMap)")

    def _block_budget(self) -> int:
        if self.memory_budget is not None:
            return self.memory_budget
        return _CPU_BLOCK_BUDGET if jax.default_backend() == "cpu" else _ACCELERATOR_BLOCK_BUDGET

    def solver_config(self, dtype: np.dtype) -> SolverConfig:
        tol = self.tol if self.tol is not None else _DEFAULT_TOL[np.dtype(dtype)]
        if self.loss == "poisson":  # a first Newton step of ~count from 0 needs log2(count / log(count)) halvings
            return SolverConfig(loss=self.loss, hessian=self.hessian, max_iter=self.max_iter, tol=tol,
                                max_backtracks=_POISSON_BACKTRACKS, penalize_intercept=self.penalize_intercept)
        return SolverConfig(loss=self.loss, hessian=self.hessian, max_iter=self.max_iter, tol=tol,
                            penalize_intercept=self.penalize_intercept)

    def update(self, dataset: Dataset, *, delta: float | None = None, progress: bool | None = None) -> UpdateReport:
        """Train every entity of ``dataset``, using stored posteriors as priors; return a report.

        ``delta``: the forgetting factor of this update (default: the model's ``delta``); e.g. 0 to
        refit from the L2 prior only, as a coordinate-descent pass does.

        ``progress``: a tqdm progress bar (entities solved) on stderr. ``None`` (default): shown
        only when tqdm is installed and the update runs longer than a few seconds; ``False``: never.

        - Entities not in ``dataset`` are untouched (bit for bit).
        - An entity with fewer than ``min_rows`` rows of positive weight is not trained: status
          ``SKIPPED``, its stored state (or, if new, nothing) is kept, and it stays scorable.
        - An entity with more than ``max_rows`` rows is trained in consecutive rounds of at most
          ``max_rows`` rows each (in the dataset's row order): round 1 uses the model's ``delta``,
          later rounds ``delta = 1`` (the previous round's posterior is the whole prior). For the
          linear loss with full precision this equals one fit on all rows; otherwise it is the
          sequential Laplace approximation. It bounds the padded block size (memory), not the work.
        - An entity whose solve ends NON_FINITE keeps what was stored for it (a new one is not stored).

        An update is one transaction: everything is validated first; each block's results are stored as
        it is solved, and if the update fails part-way (an exception, Ctrl-C), in any round, the entities
        it touched get back what they had and its new entities are forgotten. Undoing needs a copy of the
        stored state of the update's already-stored entities, taken when it starts.

        Several local devices (GPUs, or CPU devices forced with
        ``XLA_FLAGS=--xla_force_host_platform_device_count=N``): blocks are dealt to them in turn, each
        solved where its arrays are placed, with the same results as on one device;
        ``UpdateReport.device_blocks`` counts the blocks per device.
        """
        started = time.perf_counter()
        timer = PhaseTimer()
        if delta is None:
            first_delta = self.delta
        else:
            _check_real("delta", delta, 0.0 <= delta <= 1.0 if _is_real(delta) else False, "a number in [0, 1]")
            first_delta = float(delta)
        if not isinstance(dataset, Dataset):
            raise input_error("dataset", type(dataset).__name__, "must be an lljax.Dataset", error=TypeError)
        if dataset.num_examples == 0:
            raise input_error("dataset", repr(dataset), "is empty: nothing to train")
        with timer("validate"):
            check_labels(dataset, self.loss)
        self._check_feature_space(dataset)
        dtype = _jax_dtype(dataset.dtype)
        store = self._store
        created = store is None
        if store is None:
            store = self._store = EntityStore(dtype, _STORED_PRECISION[self.hessian])
        elif store.dtype != dtype:
            raise input_error("dataset.dtype", str(dataset.dtype),
                              f"differs from the model's dtype {store.dtype}", error=TypeError)
        try:
            return self._update(store, dataset, dtype, first_delta, progress, started, timer)
        except BaseException:
            if created:  # a failed first update stores nothing, and does not fix the model's dtype
                self._store = None
            raise

    def _update(self, store: EntityStore, dataset: Dataset, dtype: np.dtype, first_delta: float,
                progress: bool | None, started: float, timer: PhaseTimer) -> UpdateReport:
        if dataset.dtype != dtype:
            dataset = _cast(dataset, dtype)

        U = dataset.num_entities
        with timer("validate"):
            rows = np.bincount(dataset.entity, minlength=U)
            if dataset.weight.min() > 0:  # the usual case: no (n,) float temporary for the weights
                active = rows
            else:
                active = np.bincount(dataset.entity, weights=dataset.weight > 0, minlength=U)
            trained = active >= self.min_rows
            report = _EntityReport.skipped(U, dtype)
            skipped = np.flatnonzero(~trained)
            report.features[skipped] = store.sizes(store.lookup(dataset.entity_keys[skipped]))
            keep = None if trained.all() else trained[dataset.entity]  # the rows trained (None: all of them)
            round_of_row = None if self.max_rows is None else group_rank(dataset.entity, U) // self.max_rows
            if keep is not None and not keep.any():
                rounds = 0
            else:
                rounds = 1 if round_of_row is None else int(round_of_row[keep].max() if keep is not None
                                                             else round_of_row.max()) + 1
        blocks = 0
        device_blocks: Counter = Counter()
        undo: list = []  # the snapshot of the first round, which holds every entity of the later ones
        try:
            for r in range(rounds):
                rows_in_round = keep  # (None: every row)
                if round_of_row is not None:
                    rows_in_round = round_of_row == r if keep is None else keep & (round_of_row == r)
                whole = rows_in_round is None or bool(rows_in_round.all())
                part = dataset if whole else dataset.take(rows_in_round)
                codes = np.arange(U) if whole else np.searchsorted(dataset.entity_keys, part.entity_keys)
                delta = first_delta if r == 0 else 1.0
                round_report, round_blocks = self._update_round(store, part, delta, progress, timer, undo,
                                                                device_blocks, rows if whole else None)
                report.merge(codes, round_report, first=r == 0)
                blocks += round_blocks
            if undo:
                store.commit(undo[0])
            return UpdateReport(dataset.entity_keys, report.status, report.iterations, report.loss,
                                report.grad_norm, rows, report.features, blocks, time.perf_counter() - started,
                                timer.seconds, dict(device_blocks))
        except BaseException:  # the update is one transaction: nothing of it stays if it does not return
            if undo:
                store.restore(undo[0])
            raise

    def _update_round(self, store: EntityStore, dataset: Dataset, delta: float, progress: bool | None,
                      timer: PhaseTimer, undo: list, device_blocks: Counter,
                      rows: np.ndarray | None = None) -> tuple[_EntityReport, int]:
        """One sequential update of every entity of ``dataset`` with forgetting ``delta``. If ``undo`` is
        empty, a snapshot of the round's entities is appended to it before anything is written (the
        caller restores it if the update fails). With several local devices, block ``i`` goes to device
        ``i mod count`` (counted in ``device_blocks``). ``rows``: each entity's row count, if known."""
        dtype = store.dtype
        U = dataset.num_entities
        config = self.solver_config(dtype)
        with timer("prepare"):
            work = Round.prepare(dataset, self.loss, store, self.l2, self.penalize_intercept, rows=rows)
            plans = work.plan(self._block_budget(), config)
        l2, delta_arr = np.asarray(self.l2, dtype), np.asarray(delta, dtype)
        report = _EntityReport.skipped(U, dtype)
        report.features[:] = work.subspaces.sizes
        check_singular = self.l2 == 0 and self.hessian in ("full", "diagonal")

        def collect(plan: BlockPlan, feature_ids: np.ndarray, started: Any, lease: Buffers,
                    writes: PendingWrites, pool: BufferPool) -> None:
            with timer("device_wait"):
                host = started.result()  # the SolveResult with NumPy arrays
            pool.give_back(lease)  # the solve that read the block's arrays is over
            e = len(plan.entities)
            precision = host.precision  # identity is kept as a diagonal of ones; none as None
            status = np.array(host.status[:e])
            if check_singular:  # l2 = 0: an improper posterior (a singular precision) is not stored
                status[(status != Status.NON_FINITE) & singular_precisions(feature_ids[:e], precision[:e])] = \
                    Status.NON_FINITE
            report.status[plan.entities] = status
            report.iterations[plan.entities] = host.iterations[:e]
            report.loss[plan.entities] = host.loss[:e]
            report.grad_norm[plan.entities] = host.grad_norm[:e]
            ok = np.flatnonzero(status != Status.NON_FINITE)
            ents = plan.entities[ok]
            stored = slice(0, e) if len(ok) == e else ok  # all lanes (the usual case): views, not copies
            writes.add(dataset.entity_keys[ents], slots[ents], feature_ids[stored], host.theta[stored],
                       None if precision is None else precision[stored])
            bar.update(e)

        # Dispatch is asynchronous: the host builds the next block while the device solves this one;
        # at most _IN_FLIGHT blocks wait on the device.
        # The round's stored rows were read from the store once (Round.prepare): the blocks' priors come
        # from that copy, and so does the undo snapshot of the first round. The blocks go in groups of about
        # _GROUP_BYTES of results, each group's written at once after its last block is collected (the
        # store's cost is per pass, whatever the entities), while the next group's first blocks are solved: the
        # pipeline is not drained between groups. Each entity is in one block and the priors come from the
        # round's copy, so a write never touches the priors of a block still to come.
        # An error part-way restores what the round's entities had before, so a round is atomic.
        pending: deque[tuple[BlockPlan, np.ndarray, Any, Buffers, int]] = deque()
        # A collected block's arrays serve the next blocks (see lljax.rounds.buffers), and the next update's: the
        # model keeps up to _KEPT_BUFFER_BYTES of them between updates, so that a stream of small updates reuses the
        # same memory instead of touching fresh pages for every block. A block's feature_ids are fresh memory, as
        # the writes keep them until the group is written.
        pool = self._buffers
        pool.max_free_bytes = max(_KEPT_BUFFER_BYTES, (_IN_FLIGHT + 2) * self._block_budget())
        slots = work.slots
        if not undo:
            with timer("prepare"):
                undo.append(store.snapshot(slots, rows=work.stored))
        devices = jax.local_devices()
        itemsize = np.dtype(dtype).itemsize
        groups = list(_plan_groups(plans, work.full_precision, itemsize))
        writes = [PendingWrites() for _ in groups]
        uncollected = [len(group) for group in groups]

        def collect_oldest() -> None:
            """Collect the oldest block in flight; once it is the last of its group, write the group."""
            plan, feature_ids, started, lease, g = pending.popleft()
            collect(plan, feature_ids, started, lease, writes[g], pool)
            uncollected[g] -= 1
            if not uncollected[g]:
                with timer("write"):
                    store.write_pending(writes[g])
                writes[g] = PendingWrites()  # (the written results are let go)

        try:
            with _progress_bar(progress, U, "update") as bar:
                for g, group in enumerate(groups):
                    for plan in group:
                        lease = pool.lease()
                        with timer("pack"):
                            block = work.build(plan, lease)
                        feature_ids = np.asarray(block.feature_ids)  # the host copy (NumPy already), for the store
                        with timer("dispatch"):
                            if len(devices) > 1:  # (a RowsBlock is planned with one local device only)
                                device = devices[sum(device_blocks.values()) % len(devices)]
                                block = jax.device_put(block, device)
                                device_blocks[str(device)] += 1
                            started = dispatch(block, l2, delta_arr, config, method=plan.method)
                            pending.append((plan, feature_ids, started, lease, g))
                        del block
                        if len(pending) > _IN_FLIGHT * len(devices):
                            collect_oldest()
                while pending:
                    collect_oldest()
        except BaseException:  # solves still in flight are waited for (and their arrays freed) here, not whenever
            pending.clear()    # the traceback that holds this frame goes
            started = None
            raise
        finally:
            pool.trim(_KEPT_BUFFER_BYTES)  # (leases not given back, an interrupted update's, are left to the GC)
        return report, len(plans)

    def score(self, dataset: Dataset) -> np.ndarray:
        """``(n,)`` mean scores (margins) ``offset + x . theta_entity`` for every example.

        Features an entity has no coefficient for, and entities not in the model, contribute 0.
        """
        if not isinstance(dataset, Dataset):
            raise input_error("dataset", type(dataset).__name__, "must be an lljax.Dataset", error=TypeError)
        margins = dataset.offset.astype(np.float64)
        if self._store is None or dataset.num_examples == 0:
            return margins
        slots = self._store.lookup(dataset.entity_keys)
        pairs = self._store.gather_pairs(slots)
        stored_fids = pairs.feature_ids
        _, feature_ids, values = dataset.explicit_rows()  # written out here only (not kept on the dataset)
        stride = max(dataset.num_features, int(stored_fids.max()) + 1 if stored_fids.size else 1)
        if dataset.num_entities * stride >= 2**63:  # entity * stride + id would overflow int64: rank the ids
            ids = np.unique(np.concatenate([stored_fids, feature_ids]))
            stored_fids, feature_ids, stride = np.searchsorted(ids, stored_fids), np.searchsorted(ids, feature_ids), \
                max(len(ids), 1)
        stored_keys = pairs.owner * stride + stored_fids
        order = np.argsort(stored_keys)
        stored_keys, stored_means = stored_keys[order], pairs.means[order]
        row = dataset.row_of_nonzero()
        wanted = dataset.entity[row] * stride + feature_ids
        pos = np.minimum(np.searchsorted(stored_keys, wanted), max(len(stored_keys) - 1, 0))
        found = stored_keys[pos] == wanted if len(stored_keys) else np.zeros(len(wanted), bool)
        coef = np.where(found, stored_means[pos] if len(stored_keys) else 0.0, 0.0)
        return margins + np.bincount(row, weights=values * coef, minlength=dataset.num_examples)


def singular_precisions(feature_ids: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """``(e,)`` whether each lane's posterior precision is singular (not numerically positive definite:
    a Cholesky pivot, or for a diagonal an entry, at most ``64 d eps`` times the largest diagonal entry).

    ``feature_ids (e, W)``: valid ids first, then -1; ``precision (e, W, W)`` or ``(e, W)``. Only the
    ``d x d`` block of each lane's ``d`` valid features is tested; one batched factorization per width."""
    out = np.zeros(len(feature_ids), bool)
    d = (feature_ids >= 0).sum(axis=1)
    eps = np.finfo(precision.dtype).eps
    for width in np.unique(d):
        w = int(width)
        if w == 0:
            continue
        members = np.flatnonzero(d == width)
        if precision.ndim == 2:
            diag = precision[members, :w].astype(np.float64)
            scale = np.abs(diag).max(axis=1)
            out[members] = ~np.isfinite(diag).all(axis=1) | (diag.min(axis=1) <= 64 * w * eps * scale)
            continue
        mats = precision[members, :w, :w].astype(np.float64)
        scale = np.abs(np.diagonal(mats, axis1=1, axis2=2)).max(axis=1)
        tau = 64 * w * eps * scale
        try:
            pivots = np.diagonal(np.linalg.cholesky(mats), axis1=1, axis2=2) ** 2
            out[members] = pivots.min(axis=1) <= tau
        except np.linalg.LinAlgError:
            finite = np.isfinite(mats).all(axis=(1, 2))
            smallest = np.full(len(members), -np.inf)
            smallest[finite] = np.linalg.eigvalsh(mats[finite])[:, 0]
            out[members] = smallest <= tau
    return out


class _EntityReport(NamedTuple):
    """Per-entity outcome arrays of an update, filled round by round."""

    status: np.ndarray
    iterations: np.ndarray
    loss: np.ndarray
    grad_norm: np.ndarray
    features: np.ndarray

    @classmethod
    def skipped(cls, size: int, dtype: np.dtype) -> _EntityReport:
        """Every entity SKIPPED, 0 iterations, NaN loss and gradient (nothing was computed)."""
        return cls(np.full(size, Status.SKIPPED, np.int32), np.zeros(size, np.int32), np.full(size, np.nan, dtype),
                   np.full(size, np.nan, dtype), np.zeros(size, np.int64))

    def merge(self, at: np.ndarray, later: _EntityReport, *, first: bool) -> None:
        """Fold a round's report (for entities ``at``) in: the first non-CONVERGED status is kept,
        iterations add up, loss, gradient and features are the latest round's."""
        if first:
            self.status[at] = later.status
        else:
            converged = self.status[at] == Status.CONVERGED
            self.status[at] = np.where(converged, later.status, self.status[at])
        self.iterations[at] += later.iterations
        self.loss[at] = later.loss
        self.grad_norm[at] = later.grad_norm
        self.features[at] = later.features


def _progress_bar(progress: bool | None, total: int, desc: str) -> contextlib.AbstractContextManager[Any]:
    """A tqdm bar (``progress`` True, or None with tqdm installed: shown after a few seconds) or a no-op."""
    if progress is False:
        return contextlib.nullcontext(_NoBar())
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if progress:
            raise ImportError("progress=True needs tqdm: pip install tqdm") from None
        return contextlib.nullcontext(_NoBar())
    return tqdm(total=total, desc=desc, unit="entity", delay=0 if progress else _PROGRESS_DELAY_S, leave=False)


class _NoBar:
    def update(self, n: int) -> None:
        pass


def _cast(dataset: Dataset, dtype: np.dtype) -> Dataset:
    from dataclasses import replace

    return replace(dataset, label=dataset.label.astype(dtype), weight=dataset.weight.astype(dtype),
                   offset=dataset.offset.astype(dtype), given_values=dataset.given_values.astype(dtype))


def _plan_groups(plans: list[BlockPlan], full_precision: bool, itemsize: int) -> Iterator[list[BlockPlan]]:
    """Consecutive plans in groups whose results (a mean and a precision per lane, held before they are
    written, counted twice) take about :data:`_GROUP_BYTES` at most; a plan larger than that is a group alone."""
    group: list[BlockPlan] = []
    size = 0
    for plan in plans:
        floats = plan.lanes * plan.features * ((plan.features + 1) if full_precision else 2)
        if group and size + 2 * floats * itemsize > _GROUP_BYTES:
            yield group
            group, size = [], 0
        group.append(plan)
        size += 2 * floats * itemsize
    if group:
        yield group
