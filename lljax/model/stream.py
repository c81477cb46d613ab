"""Streams of mini-batches: sequential updates with progressive validation.

For each mini-batch (time window) of a stream, :func:`run_stream` first scores the batch with
the model as it is *before* training on it (so every score is an honest out-of-sample
prediction: progressive validation), then updates the model on it. It reports the metrics of
each window and of all windows pooled, along with each update's report.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lljax.data.dataset import Dataset
from lljax.data.errors import input_error
from lljax.model.metrics import METRICS_FUNCS
from lljax.model.report import UpdateReport

__all__ = ["WindowResult", "StreamReport", "run_stream", "DEFAULT_METRICS"]

DEFAULT_METRICS = {"linear": ("rmse",), "logistic": ("auc", "log_loss"), "poisson": ("rmse",)}


@dataclass(frozen=True)
class WindowResult:
    """One mini-batch of a stream.

    Attributes:
      index: position in the stream (0-based).
      examples, entities: sizes of the mini-batch.
      new_entities: entities of the batch the model did not hold before it.
      metrics: progressive metrics of the batch's pre-update scores (a metric that is not
        defined on the window, e.g. AUC with one class, is ``nan``).
      report: the update's :class:`UpdateReport`.
      score_seconds, update_seconds: wall time of scoring and of the update.
    """

    index: int
    examples: int
    entities: int
    new_entities: int
    metrics: dict[str, float]
    report: UpdateReport
    score_seconds: float
    update_seconds: float


@dataclass(frozen=True)
class StreamReport:
    """Per-window results and the metrics of all windows' pre-update scores pooled (``overall``)."""

    windows: list[WindowResult]
    overall: dict[str, float]
    metric_names: tuple[str, ...] = field(default=())

    def table(self) -> str:
        """A text table: one line per window, then the pooled metrics."""
        head = f"{'window':>6} {'examples':>9} {'entities':>9} {'new':>8} {'update s':>9} " + " ".join(
            f"{m:>9}" for m in self.metric_names)
        lines = [head]
        for w in self.windows:
            lines.append(f"{w.index:>6} {w.examples:>9} {w.entities:>9} {w.new_entities:>8} {w.update_seconds:>9.3f} "
                         + " ".join(f"{w.metrics[m]:>9.4f}" for m in self.metric_names))
        lines.append("overall " + " ".join(f"{m}={v:.4f}" for m, v in self.overall.items()))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def run_stream(model: Any, batches: Iterable[Dataset], *, metrics: Sequence[str] | None = None,
               progress: bool = False) -> StreamReport:
    """Progressive validation over a stream: for each batch, score it with the current model, then
    ``model.update`` on it. The model is updated in place.

    Args:
      model: a :class:`RandomEffectModel`.
      batches: the mini-batches in stream order (any iterable, consumed once).
      metrics: names among ``"auc"``, ``"log_loss"``, ``"rmse"`` (default by loss: logistic
        ``auc``, ``log_loss``; linear and Poisson ``rmse``). Scores are margins, except for
        Poisson, where they are rates ``exp(margin)``.
      progress: show a tqdm progress bar (needs ``tqdm``).

    If anything raises part-way (the batch iterator, a bad batch, an update, Ctrl-C), the exception
    propagates with a ``stream_report`` attribute: the :class:`StreamReport` of the windows that
    finished before it. The model then holds exactly those windows' updates (an update is atomic).
    """
    names = tuple(metrics) if metrics is not None else DEFAULT_METRICS[model.loss]
    unknown = [m for m in names if m not in METRICS_FUNCS]
    if unknown:
        raise input_error("metrics", unknown, f"are not among {sorted(METRICS_FUNCS)}")
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="stream", unit="batch")
    windows, all_scores, all_targets = [], [], []
    try:
        for index, batch in enumerate(batches):
            if not isinstance(batch, Dataset):
                raise input_error("batches", type(batch).__name__, f"item {index} must be an lljax.Dataset",
                                  error=TypeError)
            started = time.perf_counter()
            scores = _predictions(model.loss, model.score(batch))
            targets = _targets(model.loss, batch.label)
            scored = time.perf_counter()
            new_entities = sum(1 for key in batch.entity_keys.tolist() if key not in model)
            report = model.update(batch)
            windows.append(WindowResult(index, batch.num_examples, batch.num_entities, new_entities,
                                        _metrics(names, scores, targets), report, scored - started,
                                        time.perf_counter() - scored))
            all_scores.append(scores)
            all_targets.append(targets)
    except BaseException as exc:  # the batch iterator, scoring or an update failed, or Ctrl-C: keep what finished
        _attach_partial_report(exc, windows, names, all_scores, all_targets)
        raise
    if not windows:
        raise input_error("batches", "<empty>", "contains no mini-batch")
    overall = _metrics(names, np.concatenate(all_scores), np.concatenate(all_targets))
    return StreamReport(windows, overall, names)


def _attach_partial_report(exc: BaseException, windows: list, names: tuple, all_scores: list,
                           all_targets: list) -> None:
    """Give ``exc`` a ``stream_report`` attribute: the :class:`StreamReport` of the windows finished before it
    (the model holds exactly their updates: each update is atomic), and say so in a note."""
    try:
        overall = _metrics(names, np.concatenate(all_scores), np.concatenate(all_targets)) if windows else {}
        # A new attribute on the caller's exception, whatever its class (BaseException declares none).
        exc.stream_report = StreamReport(list(windows), overall, names)  # type: ignore[attr-defined]
        if hasattr(exc, "add_note"):
            exc.add_note(f"run_stream: {len(windows)} window(s) finished before this error; their report is "
                         "the exception's stream_report attribute (the model holds their updates)")
    except Exception:  # never mask the original error
        pass


def _predictions(loss: str, margins: np.ndarray) -> np.ndarray:
    """What the metrics score: margins, except Poisson rates ``exp(margin)`` (RMSE against counts)."""
    return np.exp(margins) if loss == "poisson" else margins


def _targets(loss: str, label: np.ndarray) -> np.ndarray:
    """Labels as the metrics expect them: logistic labels as {0, 1} (1 is positive)."""
    return (label == 1).astype(np.float64) if loss == "logistic" else label.astype(np.float64)


def _metrics(names: Sequence[str], scores: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    out = {}
    for name in names:
        try:
            out[name] = float(METRICS_FUNCS[name](scores, targets))
        except ValueError:  # undefined on this window (e.g. AUC with a single class)
            out[name] = float("nan")
    return out
