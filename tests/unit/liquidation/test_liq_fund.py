"""Fees capped at the surplus above bankruptcy; the insurance fund never negative; the per-account cap."""

from __future__ import annotations

from decimal import Decimal as D

import pytest
from hypothesis import given, strategies as st

from marginflow.liquidation.domain.fund import (FundSettings, InsuranceFund, liquidation_fee_usd,
                                                settle_liquidation_fill)

money = st.decimals(min_value=D("0"), max_value=D("1000000"), places=2, allow_nan=False, allow_infinity=False)


def test_fee_is_rate_times_notional_when_the_surplus_allows():
    # sell 1 at 49,550, bankruptcy 48,800: surplus 750; 1.5 % × 49,550 = 743.25 < 750
    assert liquidation_fee_usd(1, D(1), D(1), D(49550), D(48800)) == D("743.25")


def test_fee_is_capped_at_the_surplus():
    # sell 1 at 49,000, bankruptcy 48,800: surplus 200 < 735 → fee 200, the account is left at exactly 0
    s = settle_liquidation_fill(1, D(1), D(1), D(49000), D(48800))
    assert s.fee_usd == D(200) and s.deficit_usd == 0


def test_fill_beyond_bankruptcy_is_a_deficit_not_a_fee():
    # buy back a short at 52,100, bankruptcy 52,000: 100 below bankruptcy per unit × 2 = 200 from the fund
    s = settle_liquidation_fill(-1, D(2), D(1), D(52100), D(52000))
    assert s.fee_usd == 0 and s.deficit_usd == D(200)


@given(side=st.sampled_from([1, -1]), size=st.decimals(min_value=D("0.001"), max_value=D("100"), places=3),
       fill=st.decimals(min_value=D("1"), max_value=D("100000"), places=2),
       offset=st.decimals(min_value=D("-5000"), max_value=D("5000"), places=2),
       rate=st.decimals(min_value=D("0"), max_value=D("0.05"), places=4))
def test_fee_never_leaves_the_account_below_zero(side, size, fill, offset, rate):
    b = fill - side * offset
    s = settle_liquidation_fill(side, size, D(1), fill, b, rate)
    assert s.fee_usd >= 0 and s.deficit_usd >= 0 and (s.fee_usd == 0 or s.deficit_usd == 0)
    if s.surplus_usd >= 0:
        assert s.surplus_usd - s.fee_usd >= 0            # what the fill leaves after the fee
        assert s.fee_usd <= rate * s.notional_usd
    else:
        assert s.deficit_usd >= -s.surplus_usd           # the fund makes the account whole


@given(start=money, ops=st.lists(st.tuples(st.booleans(), money), max_size=30))
def test_fund_never_negative_and_conserves_money(start, ops):
    fund = InsuranceFund(start)
    total = start
    for is_fee, amount in ops:
        if is_fee:
            fund = fund.apply_fee(amount)
            total += amount
        else:
            c = fund.cover(amount)
            assert c.paid_usd + c.uncovered_usd == amount and c.paid_usd >= 0
            fund = c.fund
            total -= c.paid_usd
        assert fund.balance_usd >= 0 and fund.balance_usd == total


def test_cover_beyond_balance_returns_the_remainder_for_adl():
    c = InsuranceFund(D(500)).cover(D(3000))
    assert c.fund.balance_usd == 0 and c.paid_usd == D(500) and c.uncovered_usd == D(2500)


def test_per_account_loss_cap():
    s = FundSettings(max_loss_per_account_usd=D(1000))
    c = InsuranceFund(D(10000)).cover(D(800), s, already_paid_for_account_usd=D(600))
    assert c.paid_usd == D(400) and c.uncovered_usd == D(400) and c.fund.balance_usd == D(9600)


def test_bad_fund_values_raise():
    with pytest.raises(ValueError):
        InsuranceFund(D(-1))
    with pytest.raises(ValueError):
        InsuranceFund(D(1)).apply_fee(D(-1))
    with pytest.raises(ValueError):
        FundSettings(max_loss_per_account_usd=D(-1))
