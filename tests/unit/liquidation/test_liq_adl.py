"""ADL ranking, lights, deleveraging at the bankruptcy price, and fund-then-ADL resolution."""

from __future__ import annotations

import math
from decimal import Decimal as D

from hypothesis import given, strategies as st

from marginflow.liquidation.domain.adl import (AdlCandidate, adl_lights, adl_score, deleverage,
                                               effective_leverage, pnl_fraction, rank_for_adl, resolve_bankruptcy)
from marginflow.liquidation.domain.fund import FundSettings, InsuranceFund


def cand(account, size, entry, mark="47000", equity="10000"):
    return AdlCandidate(account, D(size), D(entry), D(mark), D(1), D(equity))


def test_score_profit_times_leverage_loss_over_leverage():
    c = cand("a", "-1", "52000", equity="5000")
    assert pnl_fraction(c) == 5000 / 52000 and effective_leverage(c) == 9.4
    assert adl_score(c) == (5000 / 52000) * 9.4
    loser = cand("d", "-1", "46000", equity="3000")
    assert adl_score(loser) == (-1000 / 46000) / (47000 / 3000)
    assert adl_score(cand("z", "-1", "52000", equity="0")) == math.inf   # no equity left: first in line


def test_only_opposite_side_is_ranked():
    cs = [cand("s", "-1", "50000"), cand("l", "2", "40000")]
    assert [c.account_id for c in rank_for_adl(cs, bankrupt_side=1)] == ["s"]
    assert [c.account_id for c in rank_for_adl(cs, bankrupt_side=-1)] == ["l"]


def test_lights_by_rank():
    cs = [cand("a", "-1", "52000", equity="5000"), cand("b", "-1", "50000"), cand("c", "-5", "49000", equity="100000"),
          cand("d", "-1", "46000", equity="3000"), cand("l", "1", "40000")]
    assert adl_lights(cs) == {"a": 5, "b": 4, "c": 3, "d": 2, "l": 5}


positions = st.lists(st.tuples(st.decimals(min_value=D("0.1"), max_value=D("10"), places=1),
                               st.integers(40000, 60000), st.integers(1000, 100000)), min_size=1, max_size=8)


@given(bankrupt=st.decimals(min_value=D("0.1"), max_value=D("30"), places=1), shorts=positions)
def test_deleverage_closes_in_rank_order_and_never_flips_a_counterparty(bankrupt, shorts):
    cs = [cand(f"s{i}", str(-q), str(e), equity=str(eq)) for i, (q, e, eq) in enumerate(shorts)]
    fills, left = deleverage(bankrupt, D(48000), cs)
    assert sum(f.size_contracts for f in fills) + left == bankrupt
    available = sum(abs(c.size_contracts) for c in cs)
    assert left == max(D(0), bankrupt - available)
    ranked = [c.account_id for c in rank_for_adl(cs, 1)]
    assert [f.account_id for f in fills] == ranked[:len(fills)]
    by_id = {c.account_id: c for c in cs}
    for f in fills:
        assert 0 < f.size_contracts <= abs(by_id[f.account_id].size_contracts) and f.price_usd == D(48000)
    assert all(f.size_contracts == abs(by_id[f.account_id].size_contracts) for f in fills[:-1])


def test_fund_takes_what_it_can_pay_then_adl():
    # bankrupt long 3 at mark 47,000, b = 48,000: loss 1,000 per contract; fund 1,500 → 1.5 contracts taken over
    r = resolve_bankruptcy(D(3), D(1), D(47000), D(48000), D("0.001"), InsuranceFund(D(1500)),
                           [cand("s", "-5", "49000")])
    assert r.fund_takeover_contracts == D("1.5") and r.coverage.paid_usd == D(1500)
    assert r.coverage.fund.balance_usd == 0 and r.adl_contracts == D("1.5")
    assert [(f.account_id, f.size_contracts) for f in r.adl_fills] == [("s", D("1.5"))]


def test_fund_pays_everything_when_it_can_and_respects_the_cap():
    r = resolve_bankruptcy(D(-2), D(1), D(51000), D(50000), D("0.001"), InsuranceFund(D(5000)), [])
    assert r.fund_takeover_contracts == D(2) and r.coverage.paid_usd == D(2000) and r.adl_fills == ()
    capped = resolve_bankruptcy(D(-2), D(1), D(51000), D(50000), D("0.001"), InsuranceFund(D(5000)),
                                [cand("l", "3", "45000")], FundSettings(max_loss_per_account_usd=D(500)))
    assert capped.coverage.paid_usd == D(500) and capped.adl_contracts == D("1.5")
