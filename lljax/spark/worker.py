"""The Python worker's side of a task: it follows the driver's float64 and compilation-cache settings
(:func:`driver_config` is taken on the driver and travels in the task spec), and knows its partition."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from lljax.solve.dtypes import x64_enabled

__all__ = ["worker_setup", "driver_config", "task_info", "partition_table"]
_WORKER_CONFIG: dict = {}


def worker_setup(cfg: dict) -> None:
    """In a Python worker: follow the driver's float64 and compilation-cache settings (once per process)."""
    if _WORKER_CONFIG == cfg:
        return
    import jax

    if cfg.get("x64") and not x64_enabled():
        jax.config.update("jax_enable_x64", True)
    if cfg.get("cache_dir"):
        jax.config.update("jax_compilation_cache_dir", cfg["cache_dir"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", cfg.get("cache_min_secs", 1.0))
    _WORKER_CONFIG.clear()
    _WORKER_CONFIG.update(cfg)


def driver_config() -> dict:
    import jax

    flags: Any = jax.config  # its flags are attributes set at run time: jax.config's type declares none
    cache = flags.jax_compilation_cache_dir
    return {"x64": bool(flags.jax_enable_x64), "cache_dir": cache or None,
            "cache_min_secs": float(flags.jax_persistent_cache_min_compile_time_secs)}


def task_info() -> tuple[int, int]:
    from pyspark import TaskContext

    ctx = TaskContext.get()
    return (ctx.partitionId(), ctx.attemptNumber()) if ctx is not None else (0, 0)



def partition_table(batches: Iterator[Any], cfg: dict) -> Any:
    """In a ``mapInArrow`` task: :func:`worker_setup` with ``cfg``, then the partition's Arrow batches as one
    ``pyarrow.Table``, or ``None`` for an empty partition (no batch at all, from which Arrow cannot build a
    table, or no rows)."""
    import pyarrow as pa

    worker_setup(cfg)
    received = list(batches)
    if not received:
        return None
    table = pa.Table.from_batches(received)
    return table if table.num_rows else None
