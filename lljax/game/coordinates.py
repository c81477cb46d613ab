"""The coordinates of a GAME model: what each is (frozen specs) and how it trains and scores (runtimes).

Specs (the public, frozen configuration):

- :class:`FixedEffect`: one GLM over all rows on one feature set (plus an intercept);
- :class:`RandomEffect`: one :class:`lljax.RandomEffectModel` per entity column, on one feature set;
- :class:`ExternalScore`: a score computed elsewhere (a score column, or a callable of the data).

Runtimes (private) hold a coordinate's trained state and know how to fit it on data with a given
offset (the base offset plus the other coordinates' scores), score it, and give its penalty.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lljax.data.dataset import Dataset
from lljax.data.ntv import IndexMap
from lljax.game.data import GameData, entity_codes, game_error, with_offset
from lljax.game.fixed_effect import SOLVERS, Design, Prior, choose_method, l2_weights, make_design, solve_glm
from lljax.model.random_effect import RandomEffectModel
from lljax.solve.base import Status
from lljax.solve.dtypes import x64_enabled
from lljax.solve.losses import encode_labels
from lljax.solve.objective import Penalty

__all__ = ["FixedEffect", "RandomEffect", "ExternalScore", "Coordinate", "FixedEffectState", "StepInfo"]

_HESSIANS = ("none", "identity", "diagonal", "full")
_DEFAULT_TOL = {np.dtype(np.float64): 1e-9, np.dtype(np.float32): 1e-5}


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise game_error("must be a non-empty string (the coordinate's name)", column="name", value=name,
                         error=TypeError)
    return name


def _check_number(coordinate: str, field: str, value: Any, ok: Callable[[float], bool], expected: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise game_error(f"must be {expected}", coordinate=coordinate, column=field, value=value, error=TypeError)
    if not (math.isfinite(value) and ok(float(value))):
        raise game_error(f"must be {expected}", coordinate=coordinate, column=field, value=value)


def _check_choice(coordinate: str, field: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise game_error(f"is not one of {list(choices)}", coordinate=coordinate, column=field, value=value)


def _check_column(coordinate: str, field: str, value: Any, optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value:
        raise game_error("must be a column name (a non-empty string)", coordinate=coordinate, column=field,
                         value=value, error=TypeError)


@dataclass(frozen=True)
class FixedEffect:
    """A fixed effect: one GLM over all rows.

    Args:
      name: the coordinate's name.
      features: the feature set it reads (``None``: intercept only).
      l2: L2 weight lambda >= 0.
      intercept: add an intercept column (column 0 of its coefficients).
      penalize_intercept: ``False`` (default, as GDMix and Photon-ML): the intercept is not penalized.
      solver: ``"auto"`` (Newton up to 4096 columns when the Hessian fits, else Newton-CG), ``"newton"``,
        ``"newton_cg"`` or ``"lbfgs"``.
      hessian: posterior precision kept: ``"none"``, ``"identity"``, ``"diagonal"`` or ``"full"``
        (incremental updates of the fixed effect need ``"diagonal"`` or ``"full"``).
      delta: forgetting factor of incremental updates of the fixed effect (see :meth:`GameModel.update`).
      max_iter: iteration cap. tol: gradient tolerance relative to the total weight
        (default 1e-9 in float64, 1e-5 in float32).
      dense: keep the design dense on the device (``None``: when ``n * d <= 2**24``).
    """

    name: str
    features: str | None = None
    l2: float = 1.0
    intercept: bool = True
    penalize_intercept: bool = False
    solver: str = "auto"
    hessian: str = "none"
    delta: float = 0.0
    max_iter: int = 100
    tol: float | None = None
    dense: bool | None = None

    def __post_init__(self) -> None:
        name = _check_name(self.name)
        _check_column(name, "features", self.features, optional=True)
        _check_number(name, "l2", self.l2, lambda v: v >= 0, "a finite number >= 0")
        _check_number(name, "delta", self.delta, lambda v: 0 <= v <= 1, "a number in [0, 1]")
        _check_choice(name, "solver", self.solver, SOLVERS)
        _check_choice(name, "hessian", self.hessian, _HESSIANS)
        if not isinstance(self.max_iter, int) or self.max_iter < 0:
            raise game_error("must be an int >= 0", coordinate=name, column="max_iter", value=self.max_iter)
        if self.tol is not None:
            _check_number(name, "tol", self.tol, lambda v: v > 0, "a finite number > 0")


@dataclass(frozen=True)
class RandomEffect:
    """A random effect: one model per entity of the ``entity`` column, a :class:`lljax.RandomEffectModel`.

    Args:
      name: the coordinate's name.
      entity: the entity column (e.g. ``"user_id"``).
      features: the feature set of the per-entity models (``None``: intercept only). Each entity also has
        an intercept.
      penalize_intercept: ``True`` (default): the L2 term covers each entity's intercept too; ``False``:
        it does not (see :class:`lljax.RandomEffectModel`; an entity whose rows all have one logistic
        label then gets a large intercept).
      l2, delta, hessian, min_rows, max_rows, max_iter, tol: as :class:`lljax.RandomEffectModel`.
        ``delta`` applies to incremental updates; coordinate descent in :meth:`GameModel.fit` always
        solves the plain L2 problem.
    """

    name: str
    entity: str = ""
    features: str | None = None
    l2: float = 1.0
    delta: float = 0.0
    hessian: str = "full"
    min_rows: int = 1
    max_rows: int | None = None
    max_iter: int = 50
    tol: float | None = None
    penalize_intercept: bool = True

    def __post_init__(self) -> None:
        name = _check_name(self.name)
        _check_column(name, "entity", self.entity, optional=False)
        if not isinstance(self.penalize_intercept, bool):
            raise game_error("must be True or False", coordinate=name, column="penalize_intercept",
                             value=self.penalize_intercept)
        _check_column(name, "features", self.features, optional=True)
        _check_number(name, "l2", self.l2, lambda v: v >= 0, "a finite number >= 0")
        _check_number(name, "delta", self.delta, lambda v: 0 <= v <= 1, "a number in [0, 1]")
        _check_choice(name, "hessian", self.hessian, _HESSIANS)
        if not isinstance(self.min_rows, int) or self.min_rows < 0:
            raise game_error("must be an int >= 0", coordinate=name, column="min_rows", value=self.min_rows)
        if self.max_rows is not None and (not isinstance(self.max_rows, int) or self.max_rows < 1):
            raise game_error("must be None or an int >= 1", coordinate=name, column="max_rows", value=self.max_rows)


@dataclass(frozen=True)
class ExternalScore:
    """A score trained elsewhere (XGBoost, a deep model), e.g. an external fixed effect.

    Give exactly one of ``column`` (a score column of the data) and ``fn`` (a callable
    ``fn(data: GameData) -> (n,)``). It is added to every example's margin and never trained; a
    callable cannot be saved (a loaded model needs it passed again, see :meth:`GameModel.load`).
    """

    name: str
    column: str | None = None
    fn: Callable[[GameData], Any] | None = None

    def __post_init__(self) -> None:
        name = _check_name(self.name)
        if (self.column is None) == (self.fn is None):
            raise game_error("give exactly one of column= and fn=", coordinate=name, column="column",
                             value=self.column)
        _check_column(name, "column", self.column, optional=True)
        if self.fn is not None and not callable(self.fn):
            raise game_error("must be callable", coordinate=name, column="fn", value=repr(self.fn), error=TypeError)


Coordinate = FixedEffect | RandomEffect | ExternalScore


class FixedEffectState(NamedTuple):
    """A trained fixed effect.

    Attributes:
      coefficients: ``(d,)`` means; column 0 is the intercept when the spec has one.
      precision: ``(d,)`` diagonal or ``(d, d)`` posterior precision, or ``None``.
      names: ``d`` feature names (``"(intercept)"`` first) or ``None``.
      status: :class:`Status` code of the last solve. iterations: its iterations.
    """

    coefficients: np.ndarray
    precision: np.ndarray | None
    names: tuple[str, ...] | None
    status: int
    iterations: int


class StepInfo(NamedTuple):
    """What one coordinate step did: entities trained, status counts, iterations, wall seconds."""

    entities: int
    status_counts: dict
    iterations: float
    seconds: float


def _solve_dtype(dtype: np.dtype) -> np.dtype:
    if dtype == np.float64 and not x64_enabled():
        return np.dtype(np.float32)
    return np.dtype(dtype)


def _status_counts(codes: np.ndarray) -> dict:
    counts = np.bincount(np.asarray(codes, np.int64), minlength=len(Status))
    return {s.name.lower(): int(counts[s.value]) for s in Status if counts[s.value]}


class Runtime:
    """The trained state of one coordinate and its operations."""

    spec: Any

    def check(self, data: GameData) -> None:
        """Raise naming the coordinate and the column when ``data`` lacks a column this coordinate reads."""

    def contribution(self, data: GameData) -> np.ndarray:
        """``(n,)`` float64 score of this coordinate alone."""
        raise NotImplementedError

    def penalty(self) -> float:
        return 0.0

    @property
    def trainable(self) -> bool:
        return True

    def fit(self, data: GameData, offset: np.ndarray, loss: str, *, bayesian: bool = False) -> StepInfo:
        """Train on ``data`` with ``offset (n,)`` (trainable runtimes; the model never asks the others)."""
        raise NotImplementedError

    def table(self) -> dict[str, np.ndarray]:
        """The trained coefficients as columns (trainable runtimes)."""
        raise NotImplementedError


def _check_feature_set(coordinate: str, data: GameData, name: str | None) -> None:
    if name is not None and name not in data.features:
        raise game_error(f"is not a feature set of the data (feature sets: {sorted(data.features)})",
                         coordinate=coordinate, column=name)


class FixedRuntime(Runtime):
    def __init__(self, spec: FixedEffect):
        self.spec = spec
        self.state: FixedEffectState | None = None
        self.num_columns: int | None = None  # user columns of the feature set it was trained on

    def check(self, data: GameData) -> None:
        _check_feature_set(self.spec.name, data, self.spec.features)
        if self.num_columns is not None:
            got = 0 if self.spec.features is None else data.features[self.spec.features].num_columns
            if got != self.num_columns:
                raise game_error(f"has {got} columns, but the fixed effect was trained on {self.num_columns}",
                                 coordinate=self.spec.name, column=self.spec.features)

    def design(self, data: GameData, need_gram: bool) -> Design:
        spec = self.spec
        dtype = _solve_dtype(data.dtype)

        def build() -> Design:
            if spec.features is None:
                n = data.num_examples
                indptr, indices, values, F = np.zeros(n + 1, np.int64), np.zeros(0, np.int64), np.zeros(0, dtype), 0
            else:
                fs = data.features[spec.features]
                indptr, indices, values, F = fs.indptr, fs.indices, fs.values, fs.num_columns
            return make_design(indptr, indices, values, F, spec.intercept, dtype, need_gram, spec.dense)

        return data.cached(("fixed", spec.features, spec.intercept, spec.dense, need_gram, dtype.name), build)

    def _names(self, data: GameData) -> tuple[str, ...] | None:
        names = None if self.spec.features is None else data.features[self.spec.features].names
        if self.spec.features is None:
            names = ()
        if names is None:
            return None
        return (("(intercept)",) if self.spec.intercept else ()) + tuple(names)

    def fit(self, data: GameData, offset: np.ndarray, loss: str, *, bayesian: bool = False) -> StepInfo:
        """Solve the fixed effect on ``data`` with ``offset (n,)``; ``bayesian``: the stored posterior is the
        prior (with the spec's ``delta``), else plain L2 from a warm start."""
        started = time.perf_counter()
        spec = self.spec
        self.check(data)
        dtype = _solve_dtype(data.dtype)
        need_gram = spec.solver in ("auto", "newton") or spec.hessian == "full"
        X = self.design(data, need_gram)
        method = choose_method(spec.solver, X, spec.hessian)
        if method == "newton" and not X.has_gram:
            raise game_error(f"needs the (d, d) Hessian, too large for this design (d={X.d}); use solver='newton_cg' "
                             "or 'lbfgs'", coordinate=spec.name, column="solver", value="newton")
        if spec.hessian == "full" and not X.has_gram:
            raise game_error(f"a full precision of d={X.d} columns is too large for this design; use 'diagonal'",
                             coordinate=spec.name, column="hessian", value="full")
        d = X.d
        a = l2_weights(d, spec.l2, spec.penalize_intercept, spec.intercept, dtype)
        prior = Prior.gaussian(a)
        theta0 = np.zeros(d, dtype)
        if self.state is not None and self.state.coefficients.shape == (d,):
            theta0 = self.state.coefficients.astype(dtype)
            if bayesian:
                prior = self._bayesian_prior(self.state, a, dtype)
        elif bayesian:
            raise game_error("has no trained state to update; fit the model first", coordinate=spec.name,
                             column="features", value=spec.features)
        y = data.cached(("labels", loss, dtype.name), lambda: jnp.asarray(encode_labels(loss, data.label)
                                                                           .astype(dtype)))
        w = data.cached(("weight", dtype.name), lambda: jnp.asarray(data.weight.astype(dtype)))
        tol = spec.tol if spec.tol is not None else _DEFAULT_TOL[dtype]
        result = solve_glm(X, y, w, jnp.asarray(offset.astype(dtype)), prior, jnp.asarray(theta0), tol, loss=loss,
                           method=method, max_iter=spec.max_iter, precision=spec.hessian)
        result = jax.device_get(result)
        status = int(result.status)
        if status == Status.NON_FINITE:
            raise game_error("the fixed-effect solve became non-finite (NaN/inf); check the features' scale, "
                             "l2 and the offsets", coordinate=spec.name, column=spec.features or "(intercept)",
                             value=float(result.loss))
        self.num_columns = 0 if spec.features is None else data.features[spec.features].num_columns
        precision = None if result.precision is None else np.asarray(result.precision)
        self.state = FixedEffectState(np.asarray(result.theta), precision, self._names(data), status,
                                      int(result.iterations))
        return StepInfo(1, _status_counts(np.array([status])), float(result.iterations),
                        time.perf_counter() - started)

    def _bayesian_prior(self, state: FixedEffectState, l2_diag: np.ndarray, dtype: np.dtype) -> Penalty:
        """The penalty of an incremental update: ``(1 - delta) a`` plus ``delta`` times the stored posterior
        (``state``)."""
        spec = self.spec
        if state.precision is None or spec.hessian in ("none",):
            raise game_error("an incremental update of a fixed effect needs its posterior precision; use "
                             "hessian='diagonal' or 'full'", coordinate=spec.name, column="hessian",
                             value=spec.hessian)
        delta = spec.delta
        P0 = state.precision.astype(dtype)
        return Prior.gaussian((1.0 - delta) * l2_diag, state.coefficients.astype(dtype), delta * P0)

    def contribution(self, data: GameData) -> np.ndarray:
        if self.state is None:
            return np.zeros(data.num_examples)
        self.check(data)
        X = self._cached_design(data)
        if X is None:
            X = self.design(data, need_gram=False)
        return np.asarray(X.matvec(jnp.asarray(self.state.coefficients.astype(_solve_dtype(data.dtype)))),
                          np.float64)

    def _cached_design(self, data: GameData) -> Design | None:
        for need_gram in (True, False):
            key = ("fixed", self.spec.features, self.spec.intercept, self.spec.dense, need_gram,
                   _solve_dtype(data.dtype).name)
            if key in data._cache:
                return data._cache[key]
        return None

    def penalty(self) -> float:
        if self.state is None:
            return 0.0
        theta = self.state.coefficients.astype(np.float64)
        if self.spec.intercept and not self.spec.penalize_intercept:
            theta = theta[1:]
        return 0.5 * self.spec.l2 * float(theta @ theta)

    def table(self) -> dict[str, np.ndarray]:
        """Columns ``feature_id`` (0 = intercept when there is one), ``name`` (when known), ``mean`` and
        ``variance`` (``1 / diag(P)``; NaN without precision)."""
        state = self.state
        if state is None:
            return {"feature_id": np.zeros(0, np.int64), "mean": np.zeros(0), "variance": np.zeros(0)}
        d = len(state.coefficients)
        if state.precision is None:
            variance = np.full(d, np.nan)
        else:
            diag = state.precision if state.precision.ndim == 1 else np.diagonal(state.precision)
            variance = 1.0 / diag
        out = {"feature_id": np.arange(d), "mean": state.coefficients.copy(), "variance": variance}
        if state.names is not None:
            out["name"] = np.array(state.names, dtype=object)
        return out


class RandomRuntime(Runtime):
    def __init__(self, spec: RandomEffect, model: RandomEffectModel | None = None):
        self.spec = spec
        self.model = model

    def new_model(self, data: GameData | None, loss: str) -> RandomEffectModel:
        spec = self.spec
        index_map = None
        names = None if data is None or spec.features is None else data.features[spec.features].names
        if names is not None:
            index_map = IndexMap()
            for name in names:
                feature, _, term = name.partition("=")  # "name=term", or a name alone (term "")
                index_map.push((feature, term))
        return RandomEffectModel(loss, l2=spec.l2, delta=spec.delta, hessian=spec.hessian, max_iter=spec.max_iter,
                                 tol=spec.tol, min_rows=spec.min_rows, max_rows=spec.max_rows, index_map=index_map,
                                 penalize_intercept=spec.penalize_intercept)

    def check(self, data: GameData) -> None:
        spec = self.spec
        if spec.entity not in data.ids:
            raise game_error(f"is not an entity column of the data (entity columns: {sorted(data.ids)})",
                             coordinate=spec.name, column=spec.entity)
        _check_feature_set(spec.name, data, spec.features)

    def dataset(self, data: GameData) -> Dataset:
        """The coordinate's :class:`lljax.Dataset` of ``data`` (offset 0), built once per data and column pair."""
        spec = self.spec
        self.check(data)

        def build() -> Dataset:
            keys = entity_codes(data.ids[spec.entity], spec.name, spec.entity)
            n = data.num_examples
            if spec.features is None:
                indptr, fids, values, F = np.zeros(n + 1, np.int64), np.zeros(0, np.int64), np.zeros(0), 0
            else:
                fs = data.features[spec.features]
                indptr, fids, values, F = fs.indptr, fs.indices + fs.indices.dtype.type(1), fs.values, fs.num_columns
            try:
                return Dataset.from_arrays(keys, data.label, indptr=indptr, feature_ids=fids, values=values,
                                           weight=data.weight, offset=np.zeros(n, data.dtype), num_features=F + 1,
                                           intercept_id=0, dtype=data.dtype)
            except (ValueError, TypeError) as exc:
                raise type(exc)(f"coordinate {spec.name!r}, column {spec.entity!r}: {exc}") from exc

        return data.cached(("random", spec.entity, spec.features), build)

    def fit(self, data: GameData, offset: np.ndarray, loss: str, *, bayesian: bool = False) -> StepInfo:
        """Update every entity of ``data`` with ``offset (n,)``: plain L2 (``delta = 0``) in coordinate
        descent, the sequential Bayesian rule with the spec's ``delta`` when ``bayesian``."""
        started = time.perf_counter()
        ds = self.dataset(data)
        if self.model is None:
            self.model = self.new_model(data, loss)
        try:
            report = self.model.update(with_offset(ds, offset), delta=self.spec.delta if bayesian else 0.0,
                                       progress=False)
        except ValueError as exc:
            raise type(exc)(f"coordinate {self.spec.name!r}: {exc}") from exc
        return StepInfo(len(report.entity_keys), _status_counts(report.status),
                        float(report.iterations.mean()) if report.iterations.size else 0.0,
                        time.perf_counter() - started)

    def contribution(self, data: GameData) -> np.ndarray:
        if self.model is None or len(self.model) == 0:
            return np.zeros(data.num_examples)
        return np.asarray(self.model.score(self.dataset(data)), np.float64)

    def penalty(self) -> float:
        if self.model is None or len(self.model) == 0:
            return 0.0
        table = self.model.to_table()
        means = np.asarray(table["mean"], np.float64)
        if not self.spec.penalize_intercept:
            means = means[np.asarray(table["feature_id"]) != 0]
        return 0.5 * self.spec.l2 * float(means @ means)

    def table(self) -> dict[str, np.ndarray]:
        if self.model is None:
            return {"entity": np.zeros(0), "feature_id": np.zeros(0, np.int64), "mean": np.zeros(0),
                    "variance": np.zeros(0)}
        return self.model.to_table()


class ExternalRuntime(Runtime):
    def __init__(self, spec: ExternalScore):
        self.spec = spec

    @property
    def trainable(self) -> bool:
        return False

    def check(self, data: GameData) -> None:
        if self.spec.column is not None and self.spec.column not in data.scores:
            raise game_error(f"is not a score column of the data (score columns: {sorted(data.scores)})",
                             coordinate=self.spec.name, column=self.spec.column)

    def contribution(self, data: GameData) -> np.ndarray:
        self.check(data)
        if self.spec.column is not None:
            return data.scores[self.spec.column].astype(np.float64)
        out = np.asarray(self.spec.fn(data))
        if out.ndim != 1 or out.shape[0] != data.num_examples:
            raise game_error(f"the callable returned shape {out.shape}, expected ({data.num_examples},) "
                             "(one score per example)", coordinate=self.spec.name, column="fn",
                             value=getattr(self.spec.fn, "__name__", repr(self.spec.fn)))
        if out.dtype.kind not in "fiub" or not np.isfinite(out.astype(np.float64)).all():
            bad = out[~np.isfinite(out.astype(np.float64))][0] if out.dtype.kind in "fiub" else out.dtype
            raise game_error("scores must be finite numbers", coordinate=self.spec.name, column="fn", value=bad)
        return out.astype(np.float64)


def make_runtime(spec: Coordinate) -> Runtime:
    if isinstance(spec, FixedEffect):
        return FixedRuntime(spec)
    if isinstance(spec, RandomEffect):
        return RandomRuntime(spec)
    if isinstance(spec, ExternalScore):
        return ExternalRuntime(spec)
    raise game_error("must be a FixedEffect, RandomEffect or ExternalScore", column="coordinates",
                     value=type(spec).__name__, error=TypeError)


def snapshot(runtime: Runtime) -> Any:
    """A copy of a runtime's trained state, for :func:`restore`."""
    if isinstance(runtime, FixedRuntime):
        return runtime.state, runtime.num_columns
    if isinstance(runtime, RandomRuntime):
        return copy.deepcopy(runtime.model)
    return None


def restore(runtime: Runtime, state: Any) -> None:
    if isinstance(runtime, FixedRuntime):
        runtime.state, runtime.num_columns = state
    elif isinstance(runtime, RandomRuntime):
        runtime.model = copy.deepcopy(state)
