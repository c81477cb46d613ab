"""The report of one :meth:`RandomEffectModel.update`: per-entity arrays plus a summary."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from lljax.solve.base import Status

__all__ = ["UpdateReport", "PhaseTimer", "StatusCounts"]

PHASES = ("validate", "prepare", "pack", "dispatch", "device_wait", "write")


class PhaseTimer:
    """Wall seconds spent in each named phase of an update (accumulated over blocks and rounds)."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - started


class StatusCounts(dict):
    """Entities per status: a ``dict`` keyed by the lower-case status names (``"converged"``, ...), in
    :class:`Status` order, that also accepts :class:`Status` members (and their upper-case names) as keys:
    ``counts[Status.CONVERGED] == counts["converged"]``. Iteration, ``str`` and equality are those of the
    plain dict of names; :meth:`by_status` gives the same counts keyed by :class:`Status`."""

    @staticmethod
    def _name(key: object) -> object:
        if isinstance(key, Status):
            return key.name.lower()
        if isinstance(key, str) and key.upper() in Status.__members__:
            return key.lower()
        return key

    def __getitem__(self, key: object) -> int:
        return super().__getitem__(self._name(key))

    def __contains__(self, key: object) -> bool:
        return super().__contains__(self._name(key))

    def get(self, key: object, default: object = None) -> object:
        return super().get(self._name(key), default)

    def by_status(self) -> dict[Status, int]:
        """The counts keyed by :class:`Status` members."""
        return {Status[name.upper()]: count for name, count in self.items()}


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
      phase_seconds: where the wall time went: ``validate`` (checks, active-row counts),
        ``prepare`` (stored-prior lookup, local subspaces, block planning, the undo snapshot), ``pack`` (building blocks
        on the host), ``dispatch`` (handing them to the device, including the compile of a shape seen
        for the first time), ``device_wait`` (waiting for solves the host did not overlap) and
        ``write`` (storing the results).
      device_blocks: blocks solved per device (``str(device)``) when the update spread its blocks over
        several local devices; empty with one device.
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
    phase_seconds: dict = field(default_factory=dict)
    device_blocks: dict = field(default_factory=dict)

    @property
    def status_counts(self) -> StatusCounts:
        """Number of entities per status (all statuses listed, zeros included), keyed by the status name
        (``"converged"``) or by the :class:`Status` member (``Status.CONVERGED``): a :class:`StatusCounts`."""
        counts = np.bincount(self.status, minlength=len(Status))
        return StatusCounts((s.name.lower(), int(counts[s.value])) for s in Status)

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
