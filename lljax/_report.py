"""The report of one :meth:`RandomEffectModel.update`: per-entity arrays plus a summary."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._solve import Status

__all__ = ["UpdateReport"]


@dataclass(frozen=True)
class UpdateReport:
    """What an update did, one entry per entity of the dataset (in ``entity_keys`` order).

    Attributes:
      entity_keys: ``(U,)`` entity keys.
      status: ``(U,)`` :class:`Status` codes (int).
      iterations: ``(U,)`` Newton iterations.
      loss: ``(U,)`` final objective (data loss + penalty).
      grad_norm: ``(U,)`` final max-abs gradient.
      rows: ``(U,)`` examples of each entity in the update.
      features: ``(U,)`` size of each entity's local feature subspace.
      blocks: number of blocks solved.
      seconds: wall time of the update, including JAX compilation of block shapes seen for
        the first time in this process (a first update is slower than later ones).
    """

    entity_keys: np.ndarray
    status: np.ndarray
    iterations: np.ndarray
    loss: np.ndarray
    grad_norm: np.ndarray
    rows: np.ndarray
    features: np.ndarray
    blocks: int
    seconds: float

    @property
    def status_counts(self) -> dict[str, int]:
        """Number of entities per status name (all statuses listed, zeros included)."""
        counts = np.bincount(self.status, minlength=len(Status))
        return {s.name.lower(): int(counts[s.value]) for s in Status}

    @property
    def all_converged(self) -> bool:
        return bool(np.all(self.status == Status.CONVERGED))

    def summary(self) -> str:
        """A few human-readable lines."""
        counts = ", ".join(f"{k}={v}" for k, v in self.status_counts.items())
        iters = self.iterations
        return (
            f"entities={len(self.entity_keys)} rows={int(self.rows.sum())} blocks={self.blocks} "
            f"time={self.seconds:.3f}s\n"
            f"status: {counts}\n"
            f"iterations: mean={iters.mean() if iters.size else 0:.2f} max={iters.max() if iters.size else 0}"
        )

    def __str__(self) -> str:
        return self.summary()
