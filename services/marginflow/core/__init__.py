"""Margin core: risk arrays, portfolio margin (grid, ES, tiered minimum, liquidity), what-if, explain,
valuation (equity, requirements and health states at current marks).

Two implementations with the same API and semantics:

* ``marginflow.core.ccore`` -- the C extension (``_ccore``), multi-threaded, GIL released;
* ``marginflow.core.reference`` -- the numpy/scipy twin, readable, with the formulas.

The names exported here come from the one chosen by the environment variable
``MARGINFLOW_CORE``: ``c`` (the C core; ImportError if it is not built), ``python`` (the
reference), or unset (the C core when it is built, else the reference with a warning).
See README.md beside this file for formulas, units and benchmark figures.
"""

from __future__ import annotations

import os
import warnings
from types import ModuleType

from . import reference

__all__ = ["black76_price", "risk_arrays", "MarginModel", "valuate", "depth_distance", "IMPLEMENTATION", "ccore", "reference",
           "KIND_PERP", "KIND_FUTURE", "KIND_CALL", "KIND_PUT"]

ccore: ModuleType | None
try:
    from . import _ccore as ccore
except ImportError as exc:  # not built (yet)
    ccore = None
    _ccore_error: ImportError | None = exc
else:
    _ccore_error = None

_choice = os.environ.get("MARGINFLOW_CORE", "").strip().lower()
if _choice not in {"", "c", "python"}:
    raise ImportError(f"MARGINFLOW_CORE must be 'c' or 'python', got {_choice!r}")
if _choice == "c" and ccore is None:
    raise ImportError("MARGINFLOW_CORE=c but the C core is not built "
                      "(pip install --no-build-isolation -e . or make core-build)") from _ccore_error
if _choice == "python" or ccore is None:
    if _choice == "" and ccore is None:
        warnings.warn("marginflow.core: C core not built, using the numpy reference", RuntimeWarning,
                      stacklevel=2)
    _impl: ModuleType = reference
    IMPLEMENTATION = "python"
else:
    _impl = ccore
    IMPLEMENTATION = "c"

black76_price = _impl.black76_price
risk_arrays = _impl.risk_arrays
MarginModel = _impl.MarginModel
valuate = _impl.valuate
depth_distance = _impl.depth_distance
# Instrument kinds as the chosen implementation numbers them (both agree: tests/unit/core).
KIND_PERP, KIND_FUTURE, KIND_CALL, KIND_PUT = _impl.KIND_PERP, _impl.KIND_FUTURE, _impl.KIND_CALL, _impl.KIND_PUT
