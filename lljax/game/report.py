"""Reports of GAME training: one row per coordinate step, as a text table or a pandas DataFrame."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lljax.model.metrics import auc, log_loss, rmse

__all__ = ["StepRecord", "GameReport", "WindowRecord", "GameStreamReport", "DEFAULT_METRICS", "compute_metrics",
           "higher_is_better"]

DEFAULT_METRICS = {"linear": ("rmse",), "logistic": ("auc", "log_loss"), "poisson": ("rmse",)}
_HIGHER_IS_BETTER = {"auc": True, "rmse": False, "log_loss": False, "objective": False}


def higher_is_better(metric: str) -> bool:
    return _HIGHER_IS_BETTER[metric]


def compute_metrics(names: tuple[str, ...], loss: str, margin: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """Metrics of margins ``(n,)`` against labels ``(n,)``: ``auc`` and ``log_loss`` on margins, ``rmse`` on
    the predicted mean (the margin for linear, ``exp(margin)`` for Poisson, the probability for logistic).
    A metric undefined on the data (AUC with one class) is NaN."""
    out = {}
    for name in names:
        try:
            if name == "auc":
                out[name] = auc(margin, label)
            elif name == "log_loss":
                out[name] = log_loss(margin, label)
            elif name == "rmse":
                mean = margin if loss == "linear" else np.exp(margin) if loss == "poisson" else \
                    1.0 / (1.0 + np.exp(-margin))
                target = (label == 1).astype(float) if loss == "logistic" else label
                out[name] = rmse(mean, target)
            else:
                raise ValueError(f"field 'metrics': value {name!r} is not one of {sorted(_HIGHER_IS_BETTER)[:3]}")
        except ValueError as exc:
            if "both classes" in str(exc):
                out[name] = math.nan
            else:
                raise
    return out


@dataclass(frozen=True)
class StepRecord:
    """One coordinate step of coordinate descent (or of an incremental update).

    Attributes:
      pass_: pass number (1-based). coordinate: the coordinate's name.
      entities: entities trained (1 for a fixed effect).
      status_counts: entities per :class:`lljax.Status` name (non-zero counts only).
      iterations: mean solver iterations. seconds: wall time of the step (solve and scoring).
      objective: the whole training objective after the step (data loss + every penalty), or NaN.
      metrics: validation metrics after the step (empty without validation data).
    """

    pass_: int
    coordinate: str
    entities: int
    status_counts: dict
    iterations: float
    seconds: float
    objective: float
    metrics: dict = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = {"pass": self.pass_, "coordinate": self.coordinate, "entities": self.entities,
               "statuses": _statuses(self.status_counts), "iterations": round(self.iterations, 2),
               "seconds": self.seconds, "objective": self.objective}
        out.update({f"val_{k}": v for k, v in self.metrics.items()})
        return out


def _statuses(counts: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in counts.items())


def _format(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}" if abs(value) < 1e5 else f"{value:.6e}"
    return str(value)


def text_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of dict rows (the keys of the first row are the columns)."""
    if not rows:
        return "(no rows)"
    columns = list(rows[0])
    for row in rows[1:]:
        columns += [c for c in row if c not in columns]
    cells = [[_format(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


@dataclass(frozen=True)
class GameReport:
    """What :meth:`GameModel.fit` (or :meth:`GameModel.update`) did.

    Attributes:
      steps: one :class:`StepRecord` per coordinate step, in order.
      seconds: wall time of the whole call.
      best: ``(pass, coordinate)`` of the step whose model was kept (``keep_best``), else ``None``.
      best_metric: the metric ``keep_best`` used, or ``None``.
    """

    steps: list[StepRecord]
    seconds: float
    best: tuple[int, str] | None = None
    best_metric: str | None = None

    def rows(self) -> list[dict[str, Any]]:
        return [s.as_dict() for s in self.steps]

    def table(self) -> str:
        """A plain-text table: pass, coordinate, entities, statuses, iterations, seconds, objective, metrics."""
        text = text_table(self.rows())
        if self.best is not None:
            text += f"\nkept the model after pass {self.best[0]}, coordinate {self.best[1]!r} (best {self.best_metric})"
        return text

    def to_pandas(self) -> Any:
        """The table as a pandas DataFrame (needs pandas)."""
        import pandas as pd

        return pd.DataFrame(self.rows())

    def metric(self, name: str) -> list[float]:
        """The validation metric ``name`` after each step."""
        return [s.metrics.get(name, math.nan) for s in self.steps]

    def __str__(self) -> str:
        return self.table()


@dataclass(frozen=True)
class WindowRecord:
    """One mini-batch of a stream: sizes, progressive metrics (of the scores before the update) and the
    update's steps."""

    index: int
    examples: int
    metrics: dict
    update: GameReport
    score_seconds: float


@dataclass(frozen=True)
class GameStreamReport:
    """Per-window progressive validation, and the metrics of all windows' pre-update scores pooled."""

    windows: list[WindowRecord]
    overall: dict

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for w in self.windows:
            row: dict[str, Any] = {"window": w.index, "examples": w.examples}
            row.update(w.metrics)
            row["update_seconds"] = w.update.seconds
            row["entities"] = sum(s.entities for s in w.update.steps)
            out.append(row)
        return out

    def table(self) -> str:
        text = text_table(self.rows())
        return text + "\noverall: " + ", ".join(f"{k}={_format(v)}" for k, v in self.overall.items())

    def to_pandas(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.rows())

    def __str__(self) -> str:
        return self.table()
