"""Build of the C margin core, ``marginflow.core._ccore`` (metadata lives in pyproject.toml).

Switches, read from the environment at build time:

* ``MARGINFLOW_CORE_SANITIZE=1``: AddressSanitizer + UndefinedBehaviorSanitizer, -O1 -g
  (run under ``LD_PRELOAD=$(gcc -print-file-name=libasan.so)``; see mk/core.mk).
* ``MARGINFLOW_CORE_DEBUG=1``: -O0 -g, no optimisation.
* ``MARGINFLOW_CORE_NATIVE=1``: -march=native. Default 0: the binary stays portable to any
  x86-64; the hot loops (_ccore_isa.h) are compiled three times (portable C, AVX2, AVX-512)
  and each MarginModel picks the best one the CPU runs (``MARGINFLOW_CORE_ISA`` caps it).

Always ``-ffp-contract=off``: no fused multiply-adds, so every level accumulates the losses
with the same roundings as the numpy twin (scipy's sparse product: multiply, then add, in
position order) and ties between scenarios resolve identically.
"""

import os

import numpy
from setuptools import Extension, setup


def _flag(name: str) -> bool:
    value = os.environ.get(name, "0").strip().lower()
    if value not in {"0", "1", "", "false", "true", "no", "yes"}:
        raise SystemExit(f"{name} must be 0 or 1, got {value!r}")
    return value in {"1", "true", "yes"}


compile_args = ["-std=gnu11", "-pthread", "-ffp-contract=off", "-Wall", "-Wextra", "-Wno-unused-parameter",
                "-Wno-missing-field-initializers", "-Wno-cast-function-type"]
link_args = ["-pthread"]
macros = []
if _flag("MARGINFLOW_CORE_SANITIZE"):
    san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]
    compile_args += ["-O1", "-g", *san]
    link_args += san
elif _flag("MARGINFLOW_CORE_DEBUG"):
    compile_args += ["-O0", "-g"]
else:
    compile_args += ["-O3"]
if _flag("MARGINFLOW_CORE_NATIVE"):
    compile_args.append("-march=native")

setup(
    ext_modules=[
        Extension(
            "marginflow.core._ccore",
            sources=["services/marginflow/core/_ccore.c"],
            depends=["setup.py", "services/marginflow/core/_ccore_isa.h"],
            include_dirs=[numpy.get_include()],
            define_macros=macros,
            extra_compile_args=compile_args,
            extra_link_args=link_args,
            libraries=["m"],
        )
    ],
)
