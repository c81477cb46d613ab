"""The dtype lljax computes in: what the data asks for, if JAX is configured for it.

float64 needs ``jax_enable_x64``, which lljax never sets behind the user's back: with it off, float64
data is solved in float32, with one ``UserWarning`` that names the caller and says how to turn it on.
"""

from __future__ import annotations

import warnings
from typing import Any

import jax
import numpy as np

__all__ = ["compute_dtype", "x64_enabled"]

_WARNED: set[str] = set()


def x64_enabled() -> bool:
    """Whether ``jax_enable_x64`` is on (JAX's float64), as ``jax.config.jax_enable_x64`` reads it."""
    flags: Any = jax.config  # its flags are attributes set at run time: jax.config's type declares none
    return bool(flags.jax_enable_x64)


def compute_dtype(requested: Any, *, caller: str, once: bool = False, stacklevel: int = 3) -> np.dtype:
    """``requested`` (float32 or float64), or float32 when it is float64 and ``jax_enable_x64`` is off.

    Args:
      requested: the data's dtype.
      caller: named in the warning (``"RandomEffectModel"``, ``"lljax.compat"``).
      once: warn only the first time for this caller in this process.
      stacklevel: passed to :func:`warnings.warn` (2: the function calling this one).
    """
    dtype = np.dtype(requested)
    if dtype != np.float64 or x64_enabled():
        return dtype
    if not (once and caller in _WARNED):
        _WARNED.add(caller)
        warnings.warn(f"{caller}: float64 data but jax_enable_x64 is off, so lljax computes in float32. Call "
                      "jax.config.update('jax_enable_x64', True) first to compute in float64.", stacklevel=stacklevel)
    return np.dtype(np.float32)
