"""Every core test runs on both implementations: the C extension and the numpy twin."""

from __future__ import annotations

import pathlib
import sys

import pytest

# pytest runs with --import-mode=importlib: make the helpers beside this file importable.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from marginflow.core import ccore, reference

IMPLS = {"c": ccore, "python": reference}


@pytest.fixture(params=sorted(IMPLS), ids=lambda name: f"impl={name}")
def impl(request):
    module = IMPLS[request.param]
    if module is None:
        pytest.fail("the C core is not built: run `make core-build`")
    return module


@pytest.fixture
def both():
    if ccore is None:
        pytest.fail("the C core is not built: run `make core-build`")
    return ccore, reference
