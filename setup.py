"""Build of lljax's optional native CPU kernel (``lljax.solve.kernels._newton``, an XLA FFI custom call).

Everything else is in ``pyproject.toml``. The extension is optional: without a C++ compiler, the XLA
FFI headers (shipped in ``jaxlib/include``) or glibc's libmvec, ``pip install`` still succeeds and
lljax runs its pure-JAX path (``lljax.solve.kernels.available()`` is then False and ``build_error()`` says
why). The kernel is compiled for the baseline ISA and, on x86-64, a second time for AVX2 + FMA
(chosen at run time by CPUID), so a built wheel runs on any x86-64 CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NATIVE = Path("lljax") / "solve" / "kernels"
# No -ffast-math: the kernel must keep IEEE NaN/inf semantics (NON_FINITE status). -Wno-psabi: the
# baseline build's internal (inlined) lambdas pass 32-byte lane vectors, which GCC notes would have another
# ABI than in an AVX build; no function the extension exports takes or returns such a vector.
COMPILE_ARGS = ["-std=c++17", "-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd", "-fvisibility=hidden",
                "-Wno-attributes", "-Wno-return-type", "-Wno-sign-compare", "-Wno-psabi"]


def _ffi_include() -> str | None:
    """``jaxlib/include`` (the XLA FFI headers) without importing jax."""
    try:
        import jaxlib
    except ImportError:
        return None
    include = Path(jaxlib.__file__).resolve().parent / "include"
    return str(include) if (include / "xla" / "ffi" / "api" / "ffi.h").exists() else None


class OptionalBuildExt(build_ext):
    """Build the native kernel if possible: retry without libmvec (scalar exp/log) and, if that fails too,
    warn and install without it (``Extension(optional=True)``).

    A library left by an earlier build is removed first: otherwise a failed rebuild in a development
    checkout (``pip install -e .``) would keep the old one, and its tests would run stale native code."""

    def build_extension(self, ext):
        if self.inplace or getattr(self, "editable_mode", False):  # the copy in the source tree
            Path(self.get_ext_filename(ext.name)).unlink(missing_ok=True)
        try:
            super().build_extension(ext)
        except Exception as exc:
            if "mvec" not in ext.libraries:
                raise
            print(f"lljax: native kernel build with libmvec failed ({exc}); retrying without it")
            ext.libraries = [lib for lib in ext.libraries if lib != "mvec"]
            ext.define_macros = [*ext.define_macros, ("LLJAX_NO_MVEC", "1")]
            super().build_extension(ext)


def _extensions() -> list[Extension]:
    if os.environ.get("LLJAX_BUILD_NATIVE", "1") == "0":
        return []
    include = _ffi_include()
    if include is None:
        print("lljax: jaxlib with the XLA FFI headers not found at build time; building without the native kernel")
        return []
    return [Extension(
        "lljax.solve.kernels._newton",
        sources=[str(NATIVE / f) for f in ("newton.cc", "newton_avx2.cc", "newton_generic.cc", "pack.cc")],
        depends=[str(NATIVE / f) for f in ("newton_common.h", "newton_kernel.h", "wide_kernel.h", "py_buffer.h")],
        include_dirs=[include, str(NATIVE)],
        extra_compile_args=COMPILE_ARGS,
        libraries=["mvec"],
        language="c++",
        optional=True,
    )]


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
