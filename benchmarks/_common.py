"""What every benchmark script records: the machine it ran on, and its JSON output."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import jax
import numpy as np

import lljax


def machine_info(load_before: tuple[float, ...], **versions: str) -> dict:
    """CPU, platform, library versions (``versions`` adds more, e.g. ``mabwiser="2.7.4"``) and the
    load average before the run and now (timings on a shared machine vary with it)."""
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "numpy": np.__version__,
        "lljax": lljax.__version__,
        **versions,
        "loadavg_1_5_15_before": list(load_before),
        "loadavg_1_5_15_after": list(os.getloadavg()),
    }


def write_json(path: str | Path, doc: dict) -> Path:
    """Write ``doc`` as indented JSON (NumPy scalars as floats), creating the folder; print where."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    print(f"wrote {out}")
    return out
