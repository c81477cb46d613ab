"""What a job reports: every task's statuses, counts and times (sent back through an accumulator),
added up (:class:`SparkReport`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["SparkReport", "report_accumulator", "collect_report"]


@dataclass
class SparkReport:
    """Every task's report, added up.

    Attributes:
      tasks: one dict per task (partition): ``partition``, ``entities`` (trained), ``rows``, ``passed``
        (state rows passed through unchanged), ``blocks``, ``status`` (counts by name), ``iterations``
        (sum), ``seconds`` (by stage: ``receive`` the partition's Arrow batches from Spark (the shuffle read
        and the transfer to Python), ``convert`` Arrow -> Dataset and priors, ``solve`` the update,
        ``output`` results -> Arrow, ``phases`` of the update), ``host``.
      wall_seconds: the driver's wall time of the whole job (shuffle, tasks, write).
      stages: the driver's stages (``index_map``, ``job``, ``swap``) in seconds.
    """

    tasks: list
    wall_seconds: float = 0.0
    stages: dict = field(default_factory=dict)

    def _sum(self, key: str) -> int:
        return int(sum(t.get(key, 0) for t in self.tasks))

    @property
    def entities(self) -> int:
        return self._sum("entities")

    @property
    def rows(self) -> int:
        return self._sum("rows")

    @property
    def blocks(self) -> int:
        return self._sum("blocks")

    @property
    def passed(self) -> int:
        return self._sum("passed")

    @property
    def status_counts(self) -> dict:
        out: dict = {}
        for t in self.tasks:
            for name, count in t.get("status", {}).items():
                out[name] = out.get(name, 0) + count
        return dict(sorted(out.items()))

    @property
    def seconds(self) -> dict:
        """Task seconds by stage, summed over tasks (CPU-side time, not wall time)."""
        out: dict = {}
        for t in self.tasks:
            for name, s in t.get("seconds", {}).items():
                if isinstance(s, dict):
                    for phase, v in s.items():
                        out[f"update.{phase}"] = out.get(f"update.{phase}", 0.0) + v
                else:
                    out[name] = out.get(name, 0.0) + s
        return out

    def to_dict(self) -> dict:
        return {"tasks": len(self.tasks), "entities": self.entities, "rows": self.rows, "passed": self.passed,
                "blocks": self.blocks, "status_counts": self.status_counts, "task_seconds": self.seconds,
                "wall_seconds": self.wall_seconds, "stages": self.stages}

    def __str__(self) -> str:
        status = ", ".join(f"{k}={v}" for k, v in self.status_counts.items())
        sec = ", ".join(f"{k} {v:.2f}s" for k, v in self.seconds.items() if not k.startswith("update."))
        status = f", {status}" if status else ""
        return (f"SparkReport(tasks={len(self.tasks)}, entities={self.entities}, rows={self.rows}, "
                f"passed={self.passed}, blocks={self.blocks}{status}; wall {self.wall_seconds:.2f}s; tasks: {sec})")


def report_accumulator(sc: Any) -> Any:
    from pyspark.accumulators import AccumulatorParam

    class _ListParam(AccumulatorParam):
        def zero(self, value: list) -> list:
            return []

        def addInPlace(self, a: list, b: list) -> list:
            return a + b

    return sc.accumulator([], _ListParam())


def collect_report(records: list, wall: float, stages: dict) -> SparkReport:
    latest: dict = {}
    for rec in records:  # a retried task reports again: keep its last attempt
        key = (rec.get("job"), rec["partition"])
        if key not in latest or rec["attempt"] >= latest[key]["attempt"]:
            latest[key] = rec
    return SparkReport(sorted(latest.values(), key=lambda r: (str(r.get("job")), r["partition"])), wall, stages)

