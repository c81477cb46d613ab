"""Test configuration: float64 on (tests may flip JAX flags; the library never does) and a
persistent compilation cache so repeated runs on one machine skip XLA compiles."""

import os
import tempfile

import jax
from hypothesis import settings

jax.config.update("jax_enable_x64", True)
_CACHE = os.path.join(tempfile.gettempdir(), "lljax-test-jax-cache")
os.makedirs(_CACHE, exist_ok=True)
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

settings.register_profile("ci", max_examples=200, deadline=None)
settings.register_profile("nightly", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
