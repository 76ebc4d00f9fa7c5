"""Cent rounding: one rule for the wire (Decimal) and for the states (floats, arrays)."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given, strategies as st

from marginflow.margin.domain.health import Health, classify, classify_many
from marginflow.shared.money import (
    cents_down, cents_down_array, cents_toward_ceiling, cents_toward_floor, cents_up, cents_up_array, usd_down, usd_up)

amounts = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False)
near_cent = st.integers(min_value=-10**9, max_value=10**9).map(lambda c: c / 100.0)


def test_representation_error_does_not_move_a_cent():
    # 1.1 × 100 = 110.00000000000001 in binary floating point: still 110 cents up, 110 down.
    assert cents_up(1.1) == 110 and cents_down(1.1) == 110
    assert usd_up(1.1) == Decimal("1.10") and usd_down(1.1) == Decimal("1.10")
    # A real fraction of a cent moves it in the venue's favour: requirements up, equity down.
    assert usd_up(9006.001) == Decimal("9006.01") and usd_down(9006.009) == Decimal("9006.00")
    assert usd_down(-0.001) == Decimal("-0.01")
    with pytest.raises(ValueError):
        cents_up(float("nan"))


@given(amounts)
def test_wire_decimals_are_the_cents_of_the_state_rule(x):
    assert usd_up(x) == Decimal(cents_up(x)) / 100 and usd_down(x) == Decimal(cents_down(x)) / 100
    assert cents_down(x) <= cents_up(x) <= cents_down(x) + 1
    arr = np.array([x])
    assert cents_up_array(arr)[0] == cents_up(x) and cents_down_array(arr)[0] == cents_down(x)


@given(near_cent, near_cent, st.floats(min_value=0.1, max_value=1.0))
def test_state_never_contradicts_the_published_amounts(equity, im, mm_factor):
    mm = im * mm_factor if im > 0 else 0.0
    im = abs(im)
    state = classify(equity, im, mm)
    e, i, m = usd_down(equity), usd_up(im), usd_up(mm)
    expected = (Health.HEALTHY if e >= i else Health.MARGIN_CALL if e >= m else
                Health.BANKRUPT if e < 0 else Health.LIQUIDATION)
    assert state == expected
    assert classify_many(np.array([equity]), np.array([im]), np.array([mm]), np.array([True]))[0] == expected


def test_decimal_cents_by_direction():
    assert cents_toward_floor(Decimal("74.4375")) == Decimal("74.43")        # a fee the venue takes: down
    assert cents_toward_ceiling(Decimal("199.991")) == Decimal("200.00")     # a deficit the fund pays: up
    assert cents_toward_floor(Decimal("-0.001")) == Decimal("-0.01")
    with pytest.raises(ValueError):
        cents_toward_floor(Decimal("NaN"))


@given(amounts)
def test_the_fast_wire_text_is_the_decimal_rounded_in_the_venues_favour(x):
    from marginflow.shared.money import usd_down_text, usd_up_text

    assert Decimal(usd_up_text(x)) == usd_up(x) and Decimal(usd_down_text(x)) == usd_down(x)
    assert usd_up_text(x) == str(usd_up(x)) and usd_down_text(x) == str(usd_down(x))
