"""Bankruptcy and fillable prices: the dYdX formulas, their bounds and the tick rounding."""

from __future__ import annotations

from decimal import Decimal as D

import pytest
from hypothesis import given, strategies as st

from marginflow.liquidation.domain.prices import (PositionRisk, adjusted_bankruptcy_rating, bankruptcy_price,
                                                  fillable_price, round_limit_to_tick, unclamped_fillable_price)

decimals = lambda lo, hi, places=2: st.decimals(min_value=D(lo), max_value=D(hi), places=places,  # noqa: E731
                                                allow_nan=False, allow_infinity=False)


def test_single_position_bankruptcy_price_leaves_zero_equity():
    # long 2 BTC at 50,000, equity 4,000: b = 50,000 − 4,000/2 = 48,000; equity at b: 4,000 + 2·(48,000 − 50,000) = 0
    r = PositionRisk(D(2), D(1), D(50000), D(3000), D(4000), D(3000))
    assert bankruptcy_price(r) == D(48000)
    # short 2: b = 50,000 + 2,000 = 52,000
    r = PositionRisk(D(-2), D(1), D(50000), D(3000), D(4000), D(3000))
    assert bankruptcy_price(r) == D(52000)


def test_cross_bankruptcy_price_allocates_equity_by_mm_share():
    # TNC 1,000, TMMR 2,000, this position's MM 500 (a quarter): b = 100 − 1,000·0.25/5 = 50 USD per unit
    r = PositionRisk(D(5), D(1), D(100), D(500), D(1000), D(2000))
    assert bankruptcy_price(r) == D(50)


def test_abr_bounds():
    assert adjusted_bankruptcy_rating(D(1500), D(1500)) == 0           # just liquidatable: at the oracle
    assert adjusted_bankruptcy_rating(D(2000), D(1500)) == 0           # healthy: clamped at 0
    assert adjusted_bankruptcy_rating(D(0), D(1500)) == 1
    assert adjusted_bankruptcy_rating(D(-10), D(1500)) == 1            # bankrupt: clamped at 1
    assert adjusted_bankruptcy_rating(D(1200), D(1500)) == D("0.2")


def test_fillable_is_clamped_at_bankruptcy_when_the_spread_would_pass_it():
    # TNC/TMMR = 0.2 < SMMR/(1+SMMR) = 0.6: ABR 0.8 → spread 0.8·1.5·1,500 = 1,800 > TNC 300 → b = 49,700
    r = PositionRisk(D(1), D(1), D(50000), D(1500), D(300), D(1500))
    assert unclamped_fillable_price(r) == D(48200)
    assert fillable_price(r) == bankruptcy_price(r) == D(49700)


@given(size=decimals("-50", "50", 3).filter(lambda x: x != 0), price=decimals("1", "100000"),
       equity_frac=decimals("0", "1.5", 4), share=decimals("0.01", "1", 4), smmr=decimals("0", "3", 2))
def test_fillable_lies_between_oracle_and_bankruptcy(size, price, equity_frac, share, smmr):
    tmmr = abs(size) * price * D("0.05") / share             # this position's MM = 5 % of its notional
    pmmr = tmmr * share
    r = PositionRisk(size, D(1), price, pmmr, equity_frac * tmmr, tmmr)
    f, b = fillable_price(r, smmr), bankruptcy_price(r)
    lo, hi = sorted((price, b))
    assert lo <= f <= hi                                       # TNC ≥ 0: between the mark and bankruptcy
    if size > 0:
        assert f >= b and f <= price
    else:
        assert f <= b and f >= price


def test_bankrupt_account_limit_is_the_bankruptcy_price_beyond_the_oracle():
    r = PositionRisk(D(1), D(1), D(50000), D(1500), D(-100), D(1500))
    assert fillable_price(r) == bankruptcy_price(r) == D(50100)


def test_tick_rounding_away_from_bankruptcy():
    assert round_limit_to_tick(D("49550.2"), D("0.5"), +1) == D("49550.5")   # sell closing a long: up
    assert round_limit_to_tick(D("49550.2"), D("0.5"), -1) == D("49550.0")   # buy closing a short: down
    assert round_limit_to_tick(D("0.1"), D("0.5"), -1) == D("0.5")           # at least one tick


@pytest.mark.parametrize("bad", [dict(size_contracts=D(0)), dict(account_mm_usd=D(0)),
                                 dict(position_mm_usd=D(2000)), dict(oracle_price_usd=D("NaN"))])
def test_bad_inputs_raise(bad):
    args = dict(size_contracts=D(1), contract_size=D(1), oracle_price_usd=D(100), position_mm_usd=D(10),
                account_equity_usd=D(5), account_mm_usd=D(10))
    args.update(bad)
    with pytest.raises(ValueError):
        PositionRisk(**args)
