"""The option liquidation forward with today's requirement held (Newton on the delta inside the
bracket) against the general bracketed Brent search given the same constant requirement."""

from __future__ import annotations

import numpy as np
import pytest

from marginflow.margin.domain.liquidation import option_liquidation_forward


def _cases(n=150, seed=3):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        forward = float(rng.uniform(1_000, 100_000))                 # USD
        strike = forward * float(rng.uniform(0.5, 1.5))
        years = float(rng.choice([0.0, float(rng.uniform(0.001, 2.0))]))   # expired ones: intrinsic value
        vol = float(rng.uniform(0.1, 1.5))
        size = float(rng.choice([-1, 1]) * rng.lognormal(0, 1))     # contracts
        equity = float(rng.uniform(-0.5, 2.0) * forward * abs(size) * 0.3)   # USD, some below MM already
        mm = float(rng.uniform(0.0, 0.3) * forward * abs(size))
        yield equity, mm, size, bool(rng.integers(2)), forward, strike, years, vol


@pytest.mark.parametrize("case", list(_cases()))
def test_held_requirement_solver_equals_the_general_search(case):
    equity, mm, size, is_call, forward, strike, years, vol = case
    fast = option_liquidation_forward(equity, mm, size, 1.0, is_call, forward, strike, years, vol)
    general = option_liquidation_forward(equity, mm, size, 1.0, is_call, forward, strike, years, vol,
                                         requirement_at=lambda _f: mm)
    assert (fast is None) == (general is None)
    if fast is not None:
        assert fast == pytest.approx(general, rel=1e-10)
