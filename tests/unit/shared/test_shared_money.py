"""Exact money helpers: floats rounded in the venue's favour, Decimals to the cent by direction."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from marginflow.shared.money import cents_toward_ceiling, cents_toward_floor, usd_down, usd_up


def test_float_requirements_up_and_equity_down():
    assert usd_up(0.001) == D("0.01") and usd_down(0.019) == D("0.01")


def test_decimal_cents_by_direction():
    assert cents_toward_floor(D("74.4375")) == D("74.43")        # a fee the venue takes: down
    assert cents_toward_ceiling(D("199.991")) == D("200.00")     # a deficit the fund pays: up
    assert cents_toward_floor(D("-0.001")) == D("-0.01")
    with pytest.raises(ValueError):
        cents_toward_floor(D("NaN"))
