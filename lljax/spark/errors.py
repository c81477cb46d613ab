"""lljax.spark's input errors: each names the column and the value (and where: an example, an entity,
a state's path). An error raised in a task is marked (:func:`task_error`) so that the driver finds it in
Spark's failure and raises it again as itself (:func:`run_action`)."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["column_error", "task_error", "driver_error", "run_action"]
_ERROR = re.compile(r"\[lljax\.spark:(ValueError|TypeError)\] (.*)")


def column_error(kind: type, column: str | None, value: Any, reason: str, where: str | None = None) -> Exception:
    """An error naming the column and the value (and where: an entity, a file)."""
    loc = f"{where}: " if where else ""
    return kind(f"{loc}column {column!r}: value {value!r} {reason}")


def task_error(exc: Exception) -> Exception:
    """Mark an input error raised in a task, so that the driver can raise it again as itself."""
    return type(exc)(f"[lljax.spark:{type(exc).__name__}] {exc}")


def driver_error(exc: Exception) -> Exception | None:
    """The task's ``ValueError``/``TypeError`` (see :func:`task_error`) found in a Spark failure, or ``None``."""
    match = _ERROR.search(str(exc))
    if match is None:
        return None
    return (ValueError if match.group(1) == "ValueError" else TypeError)(match.group(2).strip())


def run_action(action: Any) -> Any:
    try:
        return action()
    except Exception as exc:  # Spark wraps a task's error: raise the task's input error as itself
        found = driver_error(exc)
        if found is not None:
            raise found from None
        raise

