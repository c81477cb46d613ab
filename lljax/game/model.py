"""A GAME model: a fixed effect plus random-effect coordinates, trained by block coordinate descent.

The margin of example ``i`` is ``offset_i + sum_c s_c(i)``, the sum of every coordinate's score. The
training objective is ``sum_i w_i l(m_i, y_i)`` plus every coordinate's L2 penalty. Coordinate descent
(Photon-ML, GDMix) fits one coordinate at a time with offset = base offset + the current scores of all
the others, in a configured order, for a number of passes; every step lowers the objective (each step
solves its block exactly, to the solver's tolerance).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

from lljax.game.coordinates import (
    Coordinate,
    ExternalRuntime,
    ExternalScore,
    FixedEffect,
    FixedEffectState,
    FixedRuntime,
    RandomEffect,
    RandomRuntime,
    Runtime,
    make_runtime,
    restore,
    snapshot,
)
from lljax.game.data import GameData, game_error
from lljax.game.report import (
    DEFAULT_METRICS,
    GameReport,
    GameStreamReport,
    StepRecord,
    WindowRecord,
    compute_metrics,
    higher_is_better,
)
from lljax.model.random_effect import RandomEffectModel
from lljax.solve.losses import LOSSES, encode_labels, get_loss

__all__ = ["GameModel", "GameScores"]


class GameScores(NamedTuple):
    """Scores of a GAME model on ``n`` examples.

    Attributes:
      total: ``(n,)`` margins: ``offset + sum(contributions)``.
      offset: ``(n,)`` the data's base offset.
      contributions: ``{coordinate: (n,)}`` each coordinate's score alone.
      mean: ``(n,)`` the predicted mean: probability (logistic), ``exp(total)`` (Poisson), ``total`` (linear).
    """

    total: np.ndarray
    offset: np.ndarray
    contributions: dict
    mean: np.ndarray


def mean_response(loss: str, margin: np.ndarray) -> np.ndarray:
    if loss == "logistic":
        return 1.0 / (1.0 + np.exp(-margin))
    if loss == "poisson":
        return np.exp(margin)
    return margin


class GameModel:
    """A GAME model: coordinates (fixed effects, random effects, external scores) of one loss.

    Args:
      loss: ``"linear"``, ``"logistic"`` or ``"poisson"``.
      coordinates: the coordinates (:class:`FixedEffect`, :class:`RandomEffect`, :class:`ExternalScore`),
        with distinct names; their order is the default training order.
      metrics: validation metrics (default: AUC and log-loss for logistic, RMSE otherwise).

    Example::

        model = GameModel("logistic", [
            FixedEffect("global", features="global", l2=1.0),
            RandomEffect("per_user", entity="user_id", features="movie", l2=1.0),
            RandomEffect("per_movie", entity="movie_id", features="user", l2=1.0),
        ])
        report = model.fit(train, validation=valid, passes=2)
        print(report.table())
        probabilities = model.predict(valid)
    """

    def __init__(self, loss: str, coordinates: Sequence[Coordinate], *, metrics: Sequence[str] | None = None):
        if loss not in LOSSES:
            raise game_error(f"is not one of {sorted(LOSSES)}", column="loss", value=loss)
        coordinates = list(coordinates)
        if not coordinates:
            raise game_error("must hold at least one coordinate", column="coordinates", value=[])
        seen: set = set()
        for spec in coordinates:
            if not isinstance(spec, (FixedEffect, RandomEffect, ExternalScore)):
                raise game_error("must be a FixedEffect, RandomEffect or ExternalScore", column="coordinates",
                                 value=type(spec).__name__, error=TypeError)
            if spec.name in seen:
                raise game_error("is the name of two coordinates (names must be distinct)", coordinate=spec.name,
                                 column="name", value=spec.name)
            seen.add(spec.name)
        metrics = tuple(DEFAULT_METRICS[loss] if metrics is None else metrics)
        for m in metrics:
            if m not in ("auc", "log_loss", "rmse"):
                raise game_error("is not one of ['auc', 'log_loss', 'rmse']", column="metrics", value=m)
        self.loss = loss
        self.metrics = metrics
        self.coordinates: tuple[Coordinate, ...] = tuple(coordinates)
        self._runtimes = {spec.name: make_runtime(spec) for spec in coordinates}
        self.schema: dict | None = None  # columns of the training data

    def __repr__(self) -> str:
        parts = ", ".join(f"{type(s).__name__}({s.name!r})" for s in self.coordinates)
        return f"GameModel({self.loss!r}, [{parts}])"

    # -- access ------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.coordinates]

    def coordinate(self, name: str) -> Coordinate:
        return self._runtime(name).spec

    def _runtime(self, name: str) -> Runtime:
        if name not in self._runtimes:
            raise game_error(f"is not a coordinate of this model (coordinates: {self.names})", coordinate=name,
                             column="name", value=name, error=KeyError)
        return self._runtimes[name]

    def fixed_effect(self, name: str) -> FixedEffectState | None:
        """The trained state of fixed effect ``name`` (``None`` before training)."""
        rt = self._runtime(name)
        if not isinstance(rt, FixedRuntime):
            raise game_error("is not a fixed effect", coordinate=name, column="name", value=name, error=TypeError)
        return rt.state

    def random_effect(self, name: str) -> RandomEffectModel | None:
        """The :class:`lljax.RandomEffectModel` of random effect ``name`` (``None`` before training)."""
        rt = self._runtime(name)
        if not isinstance(rt, RandomRuntime):
            raise game_error("is not a random effect", coordinate=name, column="name", value=name, error=TypeError)
        return rt.model

    # -- checks --------------------------------------------------------------------------------

    def _check(self, data: Any, what: str, names: Iterable[str] | None = None) -> GameData:
        if not isinstance(data, GameData):
            raise game_error("must be an lljax.game.GameData", column=what, value=type(data).__name__,
                             error=TypeError)
        for name in (self.names if names is None else names):
            self._runtimes[name].check(data)
        return data

    def _check_same_columns(self, train: GameData, validation: GameData) -> None:
        a, b = train.schema(), validation.schema()
        for kind in ("ids", "scores"):
            if a[kind] != b[kind]:
                col = sorted(set(a[kind]) ^ set(b[kind]))[0]
                raise game_error(f"differs between training and validation data ({kind} columns: training "
                                 f"{a[kind]}, validation {b[kind]})", column=col,
                                 value="missing in validation" if col in a[kind] else "missing in training")
        fa, fb = a["features"], b["features"]
        for name in sorted(set(fa) | set(fb)):
            if name not in fa or name not in fb:
                raise game_error(f"differs between training and validation data (feature sets: training "
                                 f"{sorted(fa)}, validation {sorted(fb)})", column=name,
                                 value="missing in validation" if name in fa else "missing in training")
            if fa[name][0] != fb[name][0]:
                raise game_error(f"has {fa[name][0]} columns in training but {fb[name][0]} in validation",
                                 column=name, value=fb[name][0])
            if fa[name][1] is not None and fb[name][1] is not None and fa[name][1] != fb[name][1]:
                j = next(j for j, (x, y) in enumerate(zip(fa[name][1], fb[name][1])) if x != y)
                raise game_error(f"column {j} is named {fa[name][1][j]!r} in training but {fb[name][1][j]!r} in "
                                 "validation", column=name, value=fb[name][1][j])

    def _check_labels(self, data: GameData, what: str) -> None:
        if not data.has_label:
            raise game_error("has no label; training and metrics need one", column="label", value=what)

    def _order(self, order: Sequence[str] | None, trainable_only: bool = True) -> list[str]:
        if order is None:
            return [n for n in self.names if self._runtimes[n].trainable]
        order = list(order)
        for name in order:
            rt = self._runtime(name)
            if trainable_only and not rt.trainable:
                raise game_error("is an external score: it is not trained", coordinate=name, column="order",
                                 value=name)
        return order

    # -- scoring -------------------------------------------------------------------------------

    def score(self, data: GameData) -> GameScores:
        """Total margins, each coordinate's contribution and the predicted means on ``data``.

        Entities a random effect has not seen contribute 0 (their prior mean)."""
        self._check(data, "data")
        contributions = {name: rt.contribution(data) for name, rt in self._runtimes.items()}
        offset = data.offset.astype(np.float64)
        total = offset + sum(contributions.values())
        return GameScores(total, offset, contributions, mean_response(self.loss, total))

    def predict(self, data: GameData) -> np.ndarray:
        """``(n,)`` predicted means: probabilities (logistic), counts (Poisson), values (linear)."""
        return self.score(data).mean

    def evaluate(self, data: GameData, metrics: Sequence[str] | None = None) -> dict[str, float]:
        """The metrics of the model's margins on ``data``."""
        self._check_labels(data, "evaluate")
        return compute_metrics(tuple(metrics or self.metrics), self.loss, self.score(data).total, data.label)

    def objective(self, data: GameData, margin: np.ndarray | None = None) -> float:
        """The training objective on ``data``: ``sum_i w_i l(m_i, y_i)`` plus every coordinate's L2 penalty."""
        if margin is None:
            margin = self.score(data).total
        return self._data_loss(data, margin) + sum(rt.penalty() for rt in self._runtimes.values())

    def _data_loss(self, data: GameData, margin: np.ndarray) -> float:
        rl = get_loss(self.loss)
        y = encode_labels(self.loss, data.label).astype(np.float64)
        return float(np.sum(data.weight * np.asarray(rl.value(margin, y))))

    # -- training ------------------------------------------------------------------------------

    def fit(self, train: GameData, *, validation: GameData | None = None, passes: int = 1,
            order: Sequence[str] | None = None, keep_best: str | None = None, tol: float | None = None,
            warm_start: bool = False, record_objective: bool = True, verbose: bool = False) -> GameReport:
        """Train by block coordinate descent.

        Args:
          train: the training data.
          validation: optional validation data (same columns as ``train``); its metrics are recorded
            after every step.
          passes: number of passes over the coordinates.
          order: coordinate names in training order (default: the trainable coordinates as given).
          keep_best: a metric name (``"auc"``, ``"log_loss"``, ``"rmse"``) or ``"objective"``: at the end,
            restore the model after the step with the best validation metric (training objective).
          tol: stop early after a pass that lowered the objective by less than ``tol`` (relative).
          warm_start: continue from the trained state (default: start from scratch).
          record_objective: compute the training objective after each step (a pass over every
            random effect's coefficients for its penalty).
          verbose: print each step's row.
        Returns:
          a :class:`GameReport` (``.table()``, ``.to_pandas()``).
        """
        started = time.perf_counter()
        order = self._order(order)
        if not isinstance(passes, int) or passes < 1:
            raise game_error("must be an int >= 1", column="passes", value=passes)
        self._check(train, "train")
        self._check_labels(train, "train")
        if validation is not None:
            self._check(validation, "validation")
            self._check_labels(validation, "validation")
            self._check_same_columns(train, validation)
        if keep_best is not None:
            if keep_best != "objective" and keep_best not in self.metrics:
                raise game_error(f"is not 'objective' or one of the model's metrics {list(self.metrics)}",
                                 column="keep_best", value=keep_best)
            if keep_best != "objective" and validation is None:
                raise game_error("needs validation data", column="keep_best", value=keep_best)
        if not warm_start:
            self._runtimes = {spec.name: make_runtime(spec) for spec in self.coordinates}
        self.schema = train.schema()

        contrib = {name: rt.contribution(train) for name, rt in self._runtimes.items()}
        total = train.offset.astype(np.float64) + sum(contrib.values())
        if validation is not None:
            vcontrib = {name: rt.contribution(validation) for name, rt in self._runtimes.items()}
            vtotal = validation.offset.astype(np.float64) + sum(vcontrib.values())
        steps: list[StepRecord] = []
        best_value, best_at, best_state = None, None, None
        previous = self.objective(train, total) if tol is not None else math.nan  # read only when tol is given
        for p in range(1, passes + 1):
            for name in order:
                rt = self._runtimes[name]
                t0 = time.perf_counter()
                others = total - contrib[name]
                info = rt.fit(train, others, self.loss)
                contrib[name] = rt.contribution(train)
                total = others + contrib[name]
                seconds = time.perf_counter() - t0
                objective = self.objective(train, total) if record_objective or keep_best == "objective" else math.nan
                metrics = {}
                if validation is not None:
                    vothers = vtotal - vcontrib[name]
                    vcontrib[name] = rt.contribution(validation)
                    vtotal = vothers + vcontrib[name]
                    metrics = compute_metrics(self.metrics, self.loss, vtotal, validation.label)
                step = StepRecord(p, name, info.entities, info.status_counts, info.iterations, seconds, objective,
                                  metrics)
                steps.append(step)
                if verbose:
                    print(step.as_dict(), flush=True)
                if keep_best is not None:
                    value = objective if keep_best == "objective" else metrics[keep_best]
                    better = best_value is None or (value > best_value if higher_is_better(keep_best)
                                                    else value < best_value)
                    if better and not math.isnan(value):
                        best_value, best_at = value, (p, name)
                        best_state = {n: snapshot(r) for n, r in self._runtimes.items()}
            if tol is not None:
                current = steps[-1].objective if record_objective else self.objective(train, total)
                if abs(previous - current) <= tol * max(1.0, abs(current)):
                    break
                previous = current
        if best_state is not None and best_at != (steps[-1].pass_, steps[-1].coordinate):
            for n, state in best_state.items():
                restore(self._runtimes[n], state)
        return GameReport(steps, time.perf_counter() - started, best_at, keep_best)

    # -- incremental ---------------------------------------------------------------------------

    def update(self, batch: GameData, *, passes: int = 1, order: Sequence[str] | None = None,
               update_fixed: bool = False, record_objective: bool = False) -> GameReport:
        """Incremental update on a new mini-batch, as Lambda Learner is used.

        Each random effect (and, with ``update_fixed``, each fixed effect) is updated by the sequential
        Bayesian rule with its ``delta``: its stored posterior is the prior, with offset = base offset +
        the current scores of all the other coordinates on the batch. Fixed effects are frozen unless
        ``update_fixed``. With ``passes > 1`` the batch gets several coordinate-descent passes, every pass
        starting each coordinate from its posterior as it was before the batch (so the batch counts once).

        Returns a :class:`GameReport` of the steps (objective: NaN unless ``record_objective``).
        """
        started = time.perf_counter()
        self._check(batch, "batch")
        self._check_labels(batch, "batch")
        if self.schema is not None:
            self._check_same_columns_named(batch, self.schema)
        if order is None:
            order = [n for n in self.names if isinstance(self._runtimes[n], RandomRuntime)
                     or (update_fixed and isinstance(self._runtimes[n], FixedRuntime))]
        else:
            order = self._order(order)
        contrib = {name: rt.contribution(batch) for name, rt in self._runtimes.items()}
        total = batch.offset.astype(np.float64) + sum(contrib.values())
        before = {n: snapshot(self._runtimes[n]) for n in order} if passes > 1 else {}
        steps = []
        for p in range(1, passes + 1):
            for name in order:
                rt = self._runtimes[name]
                if p > 1:
                    restore(rt, before[name])
                t0 = time.perf_counter()
                others = total - contrib[name]
                info = rt.fit(batch, others, self.loss, bayesian=True)
                contrib[name] = rt.contribution(batch)
                total = others + contrib[name]
                objective = self.objective(batch, total) if record_objective else math.nan
                steps.append(StepRecord(p, name, info.entities, info.status_counts, info.iterations,
                                        time.perf_counter() - t0, objective, {}))
        return GameReport(steps, time.perf_counter() - started)

    def _check_same_columns_named(self, batch: GameData, trained: dict) -> None:
        """Raise, naming the feature set, when one of ``batch`` has other columns than in the ``trained`` schema."""
        schema = batch.schema()
        for name in self.names:
            self._runtimes[name].check(batch)
        for name, (cols, _) in trained["features"].items():
            if name in schema["features"] and schema["features"][name][0] != cols:
                raise game_error(f"has {schema['features'][name][0]} columns but the model was trained on {cols}",
                                 column=name, value=schema["features"][name][0])

    def run_stream(self, batches: Iterable[GameData], *, metrics: Sequence[str] | None = None, passes: int = 1,
                   update_fixed: bool = False) -> GameStreamReport:
        """Progressive validation: score each mini-batch with the model as it is before the batch, then
        :meth:`update` on it. Returns per-window metrics and the metrics of all pre-update scores pooled."""
        names = tuple(metrics or self.metrics)
        windows, margins, labels = [], [], []
        for i, batch in enumerate(batches):
            t0 = time.perf_counter()
            margin = self.score(batch).total
            score_seconds = time.perf_counter() - t0
            self._check_labels(batch, f"batch {i}")
            window_metrics = compute_metrics(names, self.loss, margin, batch.label)
            report = self.update(batch, passes=passes, update_fixed=update_fixed)
            windows.append(WindowRecord(i, batch.num_examples, window_metrics, report, score_seconds))
            margins.append(margin)
            labels.append(batch.label)
        overall = compute_metrics(names, self.loss, np.concatenate(margins), np.concatenate(labels)) if margins else {}
        return GameStreamReport(windows, overall)

    def explore(self, data: GameData, coordinate: str, *, method: str = "thompson", key: Any = None,
                alpha: float = 1.0, scale: float = 1.0, request: str | None = None) -> np.ndarray:
        """``(n,)`` Thompson-sampled (``method="thompson"``, ``key`` a ``jax.random`` key) or UCB
        (``method="ucb"``, width ``alpha``) margins of random effect ``coordinate`` for the candidate rows of
        ``data``, with the base offset and every other coordinate's score as the offset. ``request``: an
        id column grouping rows into requests that share one Thompson draw. See :mod:`lljax.game.explore`."""
        from lljax.game.explore import explore_scores

        return explore_scores(self, data, coordinate, method=method, key=key, alpha=alpha, scale=scale,
                              request=request)

    # -- persistence and exports ---------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write the whole model (every coordinate's specification and trained state, the index maps, the
        metrics, the training columns and a format version) to one file at ``path``, atomically."""
        from lljax.game.persist import save_game

        save_game(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, external: dict | None = None) -> GameModel:
        """Read a model written by :meth:`save`. ``external``: ``{name: callable}`` for the external scores
        that were callables (they are not saved). :class:`lljax.ModelFileError` for a bad file."""
        from lljax.game.persist import load_game

        return load_game(path, cls, external or {})

    def to_tables(self) -> dict[str, dict[str, np.ndarray]]:
        """Each trained coordinate's coefficients as columns: fixed effects ``feature_id``, ``name``, ``mean``,
        ``variance``; random effects :meth:`lljax.RandomEffectModel.to_table`."""
        return {name: rt.table() for name, rt in self._runtimes.items() if not isinstance(rt, ExternalRuntime)}
