"""Evaluation metrics (NumPy only): AUC, RMSE and logistic log loss.

Semantics follow Lambda Learner's ``prediction/evaluator.py``: a label is
positive when it equals 1 and negative otherwise. Every metric takes
``(scores, targets)`` in that order, checks that both are 1-D, of equal
length, non-empty and finite, and returns a Python float.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from numpy.typing import ArrayLike

from lljax.data.errors import check_finite, check_length, input_error

__all__ = ["METRICS_FUNCS", "auc", "evaluate", "log_loss", "rmse"]


def _as_vector(field: str, values: ArrayLike) -> np.ndarray:
    """``values`` as a 1-D float64 array; ``ValueError`` if it is not 1-D."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise input_error(field, f"<array of shape {array.shape}>", "must be 1-D")
    return array


def _checked_pair(scores: ArrayLike, targets: ArrayLike, target_field: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert ``(scores, targets)``: 1-D, same non-zero length, finite."""
    s = _as_vector("scores", scores)
    t = _as_vector(target_field, targets)
    check_length(target_field, t, len(s), what="the number of scores")
    if len(s) == 0:
        raise input_error("scores", "<empty array>", "must not be empty")
    check_finite("scores", s)
    check_finite(target_field, t)
    return s, t


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``, ties sharing the average of their ranks (as ``scipy.stats.rankdata``)."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts_group = np.empty(len(values), dtype=bool)
    starts_group[0] = True
    np.not_equal(sorted_values[1:], sorted_values[:-1], out=starts_group[1:])
    group_starts = np.flatnonzero(starts_group)
    group_ends = np.append(group_starts[1:], len(values))
    # A group at 0-based positions [start, end) holds ranks start+1 .. end.
    group_ranks = (group_starts + 1 + group_ends) / 2.0
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = group_ranks[np.cumsum(starts_group) - 1]
    return ranks


def auc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve, equal to ``sklearn.metrics.roc_auc_score`` (ties count 1/2).

    Computed as the Mann-Whitney statistic with average ranks, in
    O(n log n). ``labels == 1`` is positive; everything else is negative.

    Raises:
      ValueError: if only one class is present, or on bad input.
    """
    s, y = _checked_pair(scores, labels, "labels")
    positive = y == 1
    num_pos = int(positive.sum())
    num_neg = len(y) - num_pos
    if num_pos == 0 or num_neg == 0:
        raise input_error(
            "labels", f"<{num_pos} positive, {num_neg} negative>", "must contain both classes for AUC to be defined"
        )
    rank_sum = _average_ranks(s)[positive].sum()
    return float((rank_sum - num_pos * (num_pos + 1) / 2.0) / (num_pos * num_neg))


def rmse(scores: ArrayLike, targets: ArrayLike) -> float:
    """Root mean squared error between ``scores`` and ``targets``."""
    s, t = _checked_pair(scores, targets, "targets")
    return float(np.sqrt(np.mean(np.square(s - t))))


def log_loss(scores: ArrayLike, labels: ArrayLike) -> float:
    """Mean logistic loss ``log(1 + exp(-y * s))`` of margins (logits) ``scores``.

    ``y = +1`` where ``labels == 1`` and ``-1`` elsewhere. Stable for large
    margins (``np.logaddexp``).
    """
    s, y = _checked_pair(scores, labels, "labels")
    signs = np.where(y == 1, 1.0, -1.0)
    return float(np.mean(np.logaddexp(0.0, -signs * s)))


METRICS_FUNCS: dict[str, Callable[[ArrayLike, ArrayLike], float]] = {
    "auc": auc,
    "rmse": rmse,
    "log_loss": log_loss,
}


def evaluate(metric_list: Iterable[str], y_scores: ArrayLike, y_targets: ArrayLike) -> dict[str, float]:
    """Compute the named metrics; a dict ``{name: value}`` in request order.

    Args:
      metric_list: names among ``"auc"``, ``"rmse"``, ``"log_loss"``.
      y_scores: model scores (margins for ``log_loss``).
      y_targets: labels or targets.

    Raises:
      ValueError: naming every unsupported metric, before computing any.
    """
    metric_list = list(metric_list)
    unsupported = sorted(set(metric_list).difference(METRICS_FUNCS), key=str)
    if unsupported:
        raise ValueError(
            f"Evaluation failed: these metrics were requested but are not currently implemented: {unsupported}; "
            f"supported metrics are {sorted(METRICS_FUNCS)}"
        )
    return {name: METRICS_FUNCS[name](y_scores, y_targets) for name in metric_list}
