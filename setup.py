"""Builds the one native extension, lmcache_valkey._native, from cython_ext/.

Everything else (metadata, dependencies, entry points) lives in pyproject.toml.
LMCACHE_VALKEY_DEBUG=1 compiles the engine's internal checks in (CI runs the
suite on both flavours, as uvloop does). LMCACHE_VALKEY_SANITIZE=address
builds with AddressSanitizer (load it with LD_PRELOAD=$(gcc
-print-file-name=libasan.so); see `make asan`). Each flavour builds under its
own build/<flavour>/, so one never reuses another's objects.
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

debug = os.environ.get("LMCACHE_VALKEY_DEBUG") == "1"
sanitize = os.environ.get("LMCACHE_VALKEY_SANITIZE", "")  # e.g. "address"

compile_args = ["-O0", "-g"] if debug else ["-O2"]
link_args = []
if sanitize:
    compile_args = [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer", "-g",
                    "-O0" if debug else "-O1"]
    link_args = [f"-fsanitize={sanitize}"]
flavour = "-".join(f for f in ("debug" if debug else "", sanitize.replace(",", "-")) if f)

extension = Extension(
    "lmcache_valkey._native",
    sources=["cython_ext/_native.pyx"],
    define_macros=[("LMV_DEBUG", "1" if debug else "0")],
    extra_compile_args=compile_args,
    extra_link_args=link_args,
)

setup(
    ext_modules=cythonize(
        [extension],
        compiler_directives={"language_level": "3", "embedsignature": True},
        annotate=False,
    ),
    options={"build": {"build_base": f"build/{flavour}"}} if flavour else {},
)
