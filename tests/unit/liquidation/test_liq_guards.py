"""Stale marks, price bands (index, TWAP), admin pause, withdrawals."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from marginflow.liquidation.domain.guards import (GuardSettings, GuardVerdict, instrument_guard, mark_is_stale,
                                                  outside_band, time_weighted_average, withdrawal_allowed)

T = 1_767_225_600_000


def test_stale_marks():
    assert not mark_is_stale(T, T + 30_000)           # exactly the max age: still fresh
    assert mark_is_stale(T, T + 30_001)
    assert mark_is_stale(0, T)                        # never seen


def test_bands():
    assert not outside_band(110.0, 100.0, 0.10)        # exactly 10 %: inside
    assert outside_band(110.01, 100.0, 0.10)
    assert outside_band(89.0, 100.0, 0.10)


def test_guard_order_of_checks():
    s = GuardSettings()
    assert instrument_guard(100.0, T, 100.0, 100.0, T + 1) == GuardVerdict.ACT
    assert instrument_guard(100.0, T, 100.0, 100.0, T + 1, admin_paused=True) == GuardVerdict.PAUSED_ADMIN
    assert instrument_guard(None, T, 100.0, 100.0, T) == GuardVerdict.NO_PRICE
    assert instrument_guard(100.0, T, 100.0, 100.0, T + 60_000, s) == GuardVerdict.STALE_MARK
    assert instrument_guard(120.0, T, 100.0, 120.0, T) == GuardVerdict.PAUSED_INDEX_BAND
    assert instrument_guard(160.0, T, 160.0, 100.0, T) == GuardVerdict.PAUSED_TWAP_BAND


def test_twap_of_a_step_series():
    # 100 for 200 s, then 130 for the last 100 s of a 300 s window: (100·200 + 130·100)/300 = 110
    assert time_weighted_average([T, T + 200_000], [100.0, 130.0], T + 300_000) == pytest.approx(110.0)
    # older prices count only from the window's start: 90 until T+100 s is outside
    assert time_weighted_average([T - 100_000, T + 200_000], [90.0, 130.0], T + 300_000, 200_000) == \
        pytest.approx((90.0 * 100_000 + 130.0 * 100_000) / 200_000)
    assert time_weighted_average([], [], T) is None


def test_withdrawal():
    assert withdrawal_allowed(D("10000"), D("4000"), D("6000"))          # 6,000 ≥ 6,000
    assert not withdrawal_allowed(D("10000"), D("4000.01"), D("6000"))
    assert not withdrawal_allowed(D("10000"), D("0"), D("0"))
