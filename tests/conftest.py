"""Test configuration: float64 on (tests may flip JAX flags; the library never does), a
persistent compilation cache so repeated runs on one machine skip XLA compiles, and JAX's in-memory
caches emptied after each test module.

Why the last: every CPU executable XLA keeps loaded holds dozens of memory mappings (its JIT-linked
code and data), and one pytest process compiles thousands of executables. Past the kernel's
``vm.max_map_count`` (65,530 by default) LLVM's next link fails ("Cannot allocate memory") and the
process aborts. Emptying the caches after each module frees the executables no test holds any more;
a later module that needs one again reads it from the persistent cache.
"""

import gc
import os
import tempfile

import jax
import pytest
from hypothesis import settings

jax.config.update("jax_enable_x64", True)
_CACHE = os.path.join(tempfile.gettempdir(), "lljax-test-jax-cache")
os.makedirs(_CACHE, exist_ok=True)
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

settings.register_profile("ci", max_examples=200, deadline=None)
settings.register_profile("nightly", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


_MAPS = "/proc/self/maps"  # Linux: one line per memory mapping of this process
_MAPS_CEILING = 40_000  # well under the default vm.max_map_count of 65,530


def _release() -> None:
    jax.clear_caches()
    gc.collect()


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_executables():
    """After each module: drop JAX's compiled executables (see the module docstring)."""
    yield
    _release()


@pytest.fixture(autouse=True)
def _release_before_the_map_limit():
    """After a test that left the process with more than ``_MAPS_CEILING`` mappings, release them at once:
    one module alone (``test_native``) adds about 26,000."""
    yield
    if os.path.exists(_MAPS):
        with open(_MAPS, "rb") as maps:
            if sum(1 for _ in maps) > _MAPS_CEILING:
                _release()
