from __future__ import annotations

import math

import pytest

from marginflow.pricing import black76, implied_vol


def test_black76_closed_form_atm_and_put_call_parity():
    f, k, t, v = 100.0, 100.0, 0.25, 0.4
    # ATM: call = F·(2N(σ√T/2) − 1)
    expected = f * (2 * 0.5 * math.erfc(-(v * math.sqrt(t) / 2) / math.sqrt(2)) - 1)
    assert black76(f, k, t, v, True) == pytest.approx(expected, rel=1e-12)
    for strike in (60.0, 100.0, 150.0):
        assert black76(f, strike, t, v, True) - black76(f, strike, t, v, False) == pytest.approx(f - strike, abs=1e-9)


def test_expired_option_is_intrinsic():
    assert black76(110.0, 100.0, 0.0, 0.5, True) == 10.0
    assert black76(110.0, 100.0, 0.0, 0.5, False) == 0.0


@pytest.mark.parametrize("strike, vol, call", [(50_000.0, 0.45, True), (70_000.0, 0.9, False), (60_000.0, 0.05, True)])
def test_implied_vol_round_trip(strike, vol, call):
    price = black76(60_000.0, strike, 0.1, vol, call)
    assert implied_vol(price, 60_000.0, strike, 0.1, call) == pytest.approx(vol, rel=1e-7)


def test_implied_vol_outside_bounds_is_none():
    assert implied_vol(5.0, 100.0, 90.0, 0.5, True) is None       # below intrinsic 10
    assert implied_vol(120.0, 100.0, 90.0, 0.5, True) is None     # above the forward
