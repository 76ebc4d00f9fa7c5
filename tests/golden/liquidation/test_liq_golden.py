"""Worked liquidation examples with their arithmetic (USD, contracts of 1 unit of the underlying).

Each test is a scenario: the inputs, the expected outputs, and how they follow from the formulas of
``marginflow.liquidation.domain`` and ``marginflow.margin.domain.liquidation``.
"""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from marginflow.liquidation.domain.adl import AdlCandidate, adl_lights, resolve_bankruptcy
from marginflow.liquidation.domain.episode import (EpisodeState, MarginObservation, allocate_slices, begin_round,
                                                   observe)
from marginflow.liquidation.domain.fund import InsuranceFund, settle_liquidation_fill
from marginflow.liquidation.domain.plan import AccountState, OrderSide, PositionState, plan_round
from marginflow.liquidation.domain.prices import PositionRisk, bankruptcy_price, fillable_price
from marginflow.margin.domain.liquidation import linear_liquidation_price, scenario_liquidation_price
from marginflow.shared.universe import Kind

T = 1_767_225_600_000


# ---------------------------------------------------------------- dYdX fillable price and fee
def test_dydx_fillable_price_and_capped_fee_of_a_long_btc():
    # long 1 BTC, oracle 50,000 USD; MM fraction 3 % → PMMR = TMMR = 1,500 USD; TNC (equity) 1,200 USD
    r = PositionRisk(D(1), D(1), D(50000), D(1500), D(1200), D(1500))
    # ABR = 1 · (1 − 1,200/1,500) = 0.2;  spread = ABR · SMMR · PMMR = 0.2 · 1.5 · 1,500 = 450 USD
    # fillable = (PNNV − spread)/PS = (50,000 − 450)/1 = 49,550 USD
    assert fillable_price(r, D("1.5")) == D(49550)
    # bankruptcy = 50,000 − TNC·(PMMR/TMMR)/Q = 50,000 − 1,200 = 48,800 USD
    b = bankruptcy_price(r)
    assert b == D(48800)
    # fee: 1.5 % × 49,550 = 743.25 USD; surplus above bankruptcy 49,550 − 48,800 = 750 ≥ 743.25 → 743.25
    s = settle_liquidation_fill(1, D(1), D(1), D(49550), b, D("0.015"))
    assert s.fee_usd == D("743.25") and s.surplus_usd == D(750) and s.deficit_usd == 0
    assert InsuranceFund(D(10000)).apply_fee(s.fee_usd).balance_usd == D("10743.25")
    # the account keeps 1,200 − (50,000 − 49,550) − 743.25 = 6.75 USD ≥ 0
    assert D(1200) - (D(50000) - D(49550)) - s.fee_usd == D("6.75")


# ---------------------------------------------------------------- partial liquidation of a cross account
def _cross_account(equity, im, mm, eth, btc, eth_mm, btc_mm):
    return AccountState("acct-42", D(equity), D(im), D(mm), (
        PositionState("BTC-C-60000", Kind.CALL, D(2), D(1), D(2500), D(500), D("0.01"), D("0.5")),
        PositionState("BTC-PERP", Kind.PERPETUAL, D(btc), D(1), D(50000), D(btc_mm), D("0.001"), D("0.5")),
        PositionState("ETH-PERP", Kind.PERPETUAL, D(eth), D(1), D(3000), D(eth_mm), D("0.01"), D("0.05"))))


RELIEF = [500.0, 5000.0, 360.0]      # IM per contract (USD): call 1,000/2; BTC 10 % · 50,000; ETH 12 % · 3,000


def test_partial_liquidation_of_a_cross_account_in_slices():
    # Positions: long 2 BTC calls (mark 2,500, IM 1,000), long 1 BTC-PERP (50,000; IM 10 % = 5,000),
    # long 30 ETH-PERP (3,000; IM 12 % = 10,800). IM = 16,800, MM = 8,400 (half), equity 7,560 < MM.
    acct = _cross_account("7560", "16800", "8400", "30", "1", "5400", "2500")
    episode = observe("acct-42", None, MarginObservation(D(7560), D(16800), D(8400), True, T), last_number=0)
    assert episode.state == EpisodeState.LIQUIDATING and episode.number == 1
    plan = plan_round(acct, RELIEF, T)
    # Target equity: IM · 1.02 = 17,136.
    assert plan.required_equity_usd == D("17136.00")
    # Order: perps before the option; ETH relief/notional 10,800/90,000 = 12 % > BTC 5,000/50,000 = 10 %.
    # ABR = 1 − 7,560/8,400 = 0.1.
    # ETH: spread = 0.1·1.5·5,400/30 = 27 → limit 2,973; cost/ETH = 27 + 1.5 %·2,973 = 71.595;
    #      gap(x) = 7,560 − 71.595x − 1.02·(16,800 − 360x) = −9,576 + 295.605x ≥ 0 ⇒ x ≥ 32.39 > 30 → all 30.
    #      after: equity 7,560 − 30·71.595 = 5,412.15, IM 16,800 − 10,800 = 6,000.
    # BTC: spread = 0.1·1.5·2,500/1 = 375 → limit 49,625; cost/BTC = 375 + 1.5 %·49,625 = 1,119.375;
    #      gap(x) = 5,412.15 − 1,119.375x − 1.02·(6,000 − 5,000x) = −707.85 + 3,980.625x ≥ 0
    #      ⇒ x ≥ 0.17782 → 0.178 BTC (lots of 0.001). The call is not needed.
    assert [(t.instrument, t.reduce_contracts) for t in plan.targets] == [("ETH-PERP", D(30)), ("BTC-PERP", D("0.178"))]
    # Slices of this round: ETH notional 90,000: max(min(1,000, 90,000), 10 %·90,000) = 9,000 USD = 3 ETH;
    # BTC notional 50,000: max(1,000, 5,000) = 5,000 USD = 0.1 BTC (< its target 0.178).
    assert [(o.instrument, o.side, o.size_contracts, o.limit_price_usd) for o in plan.intents] == [
        ("ETH-PERP", OrderSide.SELL, D(3), D(2973)), ("BTC-PERP", OrderSide.SELL, D("0.1"), D(49625))]
    # Bankruptcy prices: ETH 3,000 − 7,560·(5,400/8,400)/30 = 2,838; BTC 50,000 − 7,560·(2,500/8,400) = 47,750.
    assert [o.bankruptcy_price_usd for o in plan.intents] == [D(2838), D(47750)]
    episode = begin_round(episode)
    episode, ids = allocate_slices(episode, len(plan.intents))
    assert ids == ("liq-acct-42-1-0", "liq-acct-42-1-1")
    # Both fill at their limits. Fees: ETH 1.5 %·3·2,973 = 133.785 → 133.78 (surplus 3·(2,973 − 2,838) = 405);
    # BTC 1.5 %·0.1·49,625 = 74.4375 → 74.43 (surplus 0.1·(49,625 − 47,750) = 187.5). Fund + 208.21.
    fees = [settle_liquidation_fill(1, o.size_contracts, D(1), o.limit_price_usd, o.bankruptcy_price_usd).fee_usd
            for o in plan.intents]
    assert fees == [D("133.78"), D("74.43")]
    assert InsuranceFund(D(0)).apply_fee(fees[0]).apply_fee(fees[1]).balance_usd == D("208.21")
    # Round 2, the margin service's new state: equity 7,560 − 3·27 − 133.78 − 0.1·375 − 74.43 = 7,233.29;
    # IM 16,800 − 3·360 − 0.1·5,000 = 15,220, MM 7,610; ETH 27 (MM 4,860), BTC 0.9 (MM 2,250).
    acct2 = _cross_account("7233.29", "15220", "7610", "27", "0.9", "4860", "2250")
    plan2 = plan_round(acct2, RELIEF, T + 1000)
    # ABR = 1 − 7,233.29/7,610 = 0.049502; ETH spread = 0.049502·1.5·4,860/27 = 13.366 → 2,986.634 → 2,986.65
    # (sell: tick 0.05 up). cost/ETH = (3,000 − 2,986.65) + 1.5 %·2,986.65 = 13.35 + 44.80 = 58.15;
    # gap = 7,233.29 − 15,524.40 + (367.2 − 58.15)x = −8,291.11 + 309.05x ≥ 0 ⇒ x ≥ 26.828 → 26.83 ETH:
    # ETH alone now suffices. Slice: 10 %·81,000 = 8,100 USD = 2.7 ETH.
    assert [(t.instrument, t.reduce_contracts) for t in plan2.targets] == [("ETH-PERP", D("26.83"))]
    assert [(o.instrument, o.size_contracts, o.limit_price_usd) for o in plan2.intents] == [
        ("ETH-PERP", D("2.7"), D("2986.65"))]


# ---------------------------------------------------------------- bankrupt account paid by the fund
def test_bankrupt_account_paid_by_the_fund():
    # long 2 BTC at mark 49,000, equity −1,000: b = 49,000 − (−1,000)/2 = 49,500 (beyond the mark)
    r = PositionRisk(D(2), D(1), D(49000), D(2940), D(-1000), D(2940))
    assert bankruptcy_price(r) == D(49500) and fillable_price(r) == D(49500)
    ep = observe("b", None, MarginObservation(D(100), D(5880), D(2940), True, T))
    ep = observe("b", ep, MarginObservation(D(-1000), D(5880), D(2940), True, T + 500))
    assert ep.state == EpisodeState.BANKRUPT and ep.deficit_usd == D(1000)
    # the fund takes the 2 BTC over at the mark: loss 2·(49,500 − 49,000) = 1,000 ≤ balance 10,000
    res = resolve_bankruptcy(D(2), D(1), D(49000), D(49500), D("0.001"), InsuranceFund(D(10000)), [])
    assert res.fund_takeover_contracts == D(2) and res.coverage.paid_usd == D(1000)
    assert res.coverage.fund.balance_usd == D(9000) and res.adl_fills == () and res.coverage.uncovered_usd == 0


# ---------------------------------------------------------------- fund exhausted → ADL
def test_fund_exhausted_then_adl_of_three_counterparties_in_rank_order():
    # Bankrupt: long 3 BTC, mark 47,000, bankruptcy 48,000 → loss 1,000 per BTC, 3,000 in all; fund 500.
    shorts = [
        # A: short 1 @ 52,000, equity 5,000: PnL% = 5,000/52,000 = 9.615 %; lev = 47,000/5,000 = 9.4 → 0.9038
        AdlCandidate("A", D(-1), D(52000), D(47000), D(1), D(5000)),
        # B: short 1 @ 50,000, equity 10,000: PnL% = 6 %; lev 4.7 → 0.282
        AdlCandidate("B", D(-1), D(50000), D(47000), D(1), D(10000)),
        # C: short 5 @ 49,000, equity 100,000: PnL% = 2,000/49,000 = 4.08 %; lev 235,000/100,000 = 2.35 → 0.0959
        AdlCandidate("C", D(-5), D(49000), D(47000), D(1), D(100000)),
        # D: short 1 @ 46,000 (losing), equity 3,000: PnL% = −2.17 %; lev 15.67 → −2.17 %/15.67 = −0.0014
        AdlCandidate("D", D(-1), D(46000), D(47000), D(1), D(3000)),
        # E: a long — same side as the bankrupt position, never deleveraged against it
        AdlCandidate("E", D(2), D(40000), D(47000), D(1), D(20000)),
    ]
    res = resolve_bankruptcy(D(3), D(1), D(47000), D(48000), D("0.001"), InsuranceFund(D(500)), shorts)
    # fund: 500 / (1,000 per BTC) = 0.5 BTC taken over at the mark, paying 500: exhausted.
    assert res.fund_takeover_contracts == D("0.5") and res.coverage.paid_usd == D(500)
    assert res.coverage.fund.balance_usd == 0
    # ADL: 2.5 BTC at the bankruptcy price 48,000 in rank order A, B, C:
    #   A 1 BTC: realised 1·(52,000 − 48,000) = 4,000; B 1: 1·(50,000 − 48,000) = 2,000;
    #   C 0.5 of its 5: 0.5·(49,000 − 48,000) = 500. D is not reached.
    assert [(f.account_id, f.size_contracts, f.price_usd, f.realized_pnl_usd) for f in res.adl_fills] == [
        ("A", D(1), D(48000), D(4000)), ("B", D(1), D(48000), D(2000)), ("C", D("0.5"), D(48000), D(500))]
    assert res.unmatched_contracts == 0
    # Lights among the shorts (N = 4): ceil(5·(4 − rank)/4) = 5, 4, 3, 2; E alone on its side: 5.
    assert adl_lights(shorts) == {"A": 5, "B": 4, "C": 3, "D": 2, "E": 5}


# ---------------------------------------------------------------- dYdX liquidation-price examples
def test_dydx_isolated_liquidation_price_short_eth():
    # dYdX docs: short 3 ETH at 3,000, equity 1,000, MMF 5 % → MM today 0.05·3·3,000 = 450
    # p' = (e − s·p)/(|s|·MMF − s) = (1,000 + 9,000)/(0.15 + 3) = 10,000/3.15 = 3,174.60
    p = linear_liquidation_price(1000.0, 450.0, -3.0, 1.0, 3000.0)
    assert round(p, 2) == 3174.60
    # the old rule (MM held at 450): 3,000 + (450 − 1,000)/(−3) = 3,183.33 — the requirement has grown by then
    assert round(3000.0 + (450.0 - 1000.0) / -3.0, 2) == 3183.33
    # the same root from the scenario root finder, requirement recomputed at p: 0.05·3·p
    q = scenario_liquidation_price(lambda x: 1000.0 - 3.0 * (x - 3000.0), lambda x: 0.15 * x, 3000.0, direction=1)
    assert q == pytest.approx(10000.0 / 3.15, rel=1e-12)


def test_dydx_cross_liquidation_price_short_eth_with_strk():
    # dYdX docs: equity 1,000; short 1.5 ETH at 3,000 (MMF 5 % → 225); long 1,000 STRK at 1.75 (MMF 10 % → 175)
    # MMR_o = 175; p' = (e − s·p − MMR_o)/(|s|·MMF − s) = (1,000 + 4,500 − 175)/(0.075 + 1.5) = 5,325/1.575
    p = linear_liquidation_price(1000.0, 400.0, -1.5, 1.0, 3000.0, mm_other_usd=175.0)
    assert round(p, 2) == 3380.95
    assert p == pytest.approx(5325.0 / 1.575, rel=1e-12)
    # plugged back: equity 1,000 − 1.5·(p − 3,000) = 175 + 0.075·p
    assert 1000.0 - 1.5 * (p - 3000.0) == pytest.approx(175.0 + 0.075 * p)
