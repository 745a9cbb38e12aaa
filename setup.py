"""Builds the one native extension, lmcache_valkey._native, from cython_ext/.

Everything else (metadata, dependencies, entry points) lives in pyproject.toml.
LMCACHE_VALKEY_DEBUG=1 compiles the engine's internal checks in (CI runs the
suite on both flavours, as uvloop does).
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

debug = os.environ.get("LMCACHE_VALKEY_DEBUG") == "1"

extension = Extension(
    "lmcache_valkey._native",
    sources=["cython_ext/_native.pyx"],
    define_macros=[("LMV_DEBUG", "1" if debug else "0")],
    extra_compile_args=["-O0", "-g"] if debug else ["-O2"],
)

setup(
    ext_modules=cythonize(
        [extension],
        compiler_directives={"language_level": "3", "embedsignature": True},
        annotate=False,
    ),
)
