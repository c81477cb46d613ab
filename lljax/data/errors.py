"""Error construction and vectorized input checks for the host edge.

Every error raised at the host edge names the *entity*, the *field* and the
offending *value* (and, for files, the file and line), so that a user can find
the bad record in their logs. Checks are vectorized: they scan whole NumPy
columns and only build a message for the first offending element.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["input_error", "all_finite", "check_finite", "check_nonnegative", "check_length", "number_column"]


def input_error(
    field: str,
    value: Any,
    reason: str,
    *,
    entity: Any = None,
    where: str | None = None,
    error: type = ValueError,
) -> Exception:
    """Build (not raise) an error naming the entity, the field and the value.

    Args:
      field: name of the offending field, e.g. ``"weight"``.
      value: the offending value.
      reason: what is wrong, e.g. ``"must be finite"``.
      entity: the entity the value belongs to, if known.
      where: extra location, e.g. ``"data.jsonl line 12"``.
      error: exception class (``ValueError`` or ``TypeError``).
    """
    entity, value = _plain(entity), _plain(value)
    parts = []
    if where is not None:
        parts.append(where)
    if entity is not None:
        parts.append(f"entity {entity!r}")
    parts.append(f"field {field!r}")
    return error(f"{', '.join(parts)}: value {value!r} {reason}")


def _plain(x: Any) -> Any:
    """NumPy scalars as Python scalars, so messages read ``'a'`` rather than ``np.str_('a')``."""
    return x.item() if isinstance(x, np.generic) else x


def _raise_at_first(bad: np.ndarray, field: str, values: np.ndarray, reason: str, entity_keys: Any,
                    row_word: str | None) -> None:
    if bad.any():
        i = int(np.argmax(bad))
        if callable(entity_keys):
            entity = entity_keys(i)
        else:
            entity = entity_keys if entity_keys is None or np.ndim(entity_keys) == 0 else entity_keys[i]
        where = None if row_word is None else f"{row_word} {i}"
        raise input_error(field, float(values[i]), reason, entity=entity, where=where)


def check_finite(field: str, values: np.ndarray, entity_keys: Any = None, row_word: str | None = None) -> None:
    """Raise ``ValueError`` at the first NaN/inf in ``values``.

    Clean input costs one pass with no temporary array (:func:`all_finite`).

    Args:
      field: field name for the message.
      values: ``(n,)`` float array.
      entity_keys: ``(n,)`` entity key of each element, one key for all, a function of the element's
        index (called only to build the message), or ``None``.
      row_word: if given, the message also says ``"{row_word} {i}"`` (e.g. ``"example 3"``).
    """
    values = np.asarray(values)
    if not all_finite(values):
        _raise_at_first(~np.isfinite(values), field, values, "must be finite", entity_keys, row_word)


def all_finite(values: np.ndarray) -> bool:
    """Whether every element of ``values`` is finite. A float array's sum is finite unless an element is
    NaN or infinite (or the sum overflows, and then the elements are checked): on clean input, one pass
    with no temporary array the size of ``values``."""
    if values.dtype.kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):
            if np.isfinite(np.sum(values)):
                return True
    return bool(np.isfinite(values).all())


def check_nonnegative(field: str, values: np.ndarray, entity_keys: Any = None, row_word: str | None = None) -> None:
    """Raise ``ValueError`` at the first negative element of ``values`` (arguments as :func:`check_finite`).
    The scan is skipped when the minimum is non-negative (one pass, no temporary array)."""
    values = np.asarray(values)
    if values.size == 0 or np.min(values) >= 0:
        return
    _raise_at_first(values < 0, field, values, "must be non-negative", entity_keys, row_word)


def check_length(field: str, values: Any, expected: int, what: str = "examples") -> None:
    """Raise ``ValueError`` when ``len(values) != expected``."""
    n = len(values)
    if n != expected:
        raise input_error(field, f"<array of length {n}>", f"has the wrong length: expected {expected} ({what})")


def number_column(field: str, items: Any, dtype: Any = np.float64, entity_of: Callable[[int], Any] | None = None,
                  where_of: Callable[[int], str] | None = None) -> np.ndarray:
    """A list of Python / NumPy numbers as a ``(n,)`` float array; ``TypeError`` at the first non-number.

    Strings (even numeric ones like ``"1"``), ``None`` and containers are rejected rather than
    parsed or turned into NaN; booleans count as 0/1, as in Python. The good path is one
    ``np.asarray``; the Python scan for the message only runs when that gives a non-numeric
    dtype (or an object array of integers too large for int64, converted one by one;
    values beyond the float range become inf, for the finiteness check to report).

    Args:
      field: field name for the message.
      items: ``(n,)`` sequence of numbers.
      dtype: float dtype of the result.
      entity_of: ``entity_of(i)`` is the entity key of item ``i``, for the message (optional).
      where_of: ``where_of(i)`` is the location of item ``i``, e.g. ``"record 3"`` (optional).
    """
    items = items if isinstance(items, (list, tuple, np.ndarray)) else list(items)
    try:
        arr = np.asarray(items)
    except (TypeError, ValueError):  # ragged nesting
        arr = None
    if arr is not None and arr.ndim == 1 and (arr.dtype.kind in "fiub" or arr.size == 0):
        return arr.astype(dtype)
    out = np.empty(len(items), dtype)
    for i, value in enumerate(items):
        if not isinstance(value, numbers.Real):
            shown = value if isinstance(value, (str, bytes, type(None), numbers.Number)) else repr(value)[:80]
            where = None if where_of is None else where_of(i)
            entity = None if entity_of is None else entity_of(i)
            raise input_error(field, shown, "must be a number", entity=entity, where=where, error=TypeError)
        try:
            out[i] = float(value)
        except OverflowError:  # an int beyond the float range
            out[i] = -np.inf if value < 0 else np.inf
    return out
