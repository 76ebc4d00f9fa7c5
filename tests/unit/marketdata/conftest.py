from __future__ import annotations

import pytest

from marginflow.shared.universe import load_universe

AS_OF_MS = 1_764_000_000_000  # 2025-11-24T16:00:00Z; relative expiries resolve from here


@pytest.fixture(scope="session")
def universe():
    return load_universe(None, AS_OF_MS)
