"""The round plan: healthy/bankrupt short-cuts, priority, minimality, pacing, reduce-only slices."""

from __future__ import annotations

from decimal import Decimal as D

from hypothesis import given, settings, strategies as st

from marginflow.liquidation.domain.plan import (AccountState, CooldownMode, OrderSide, PlanSettings, PositionState,
                                                is_reduce_only, limit_and_bankruptcy, plan_round, required_equity_usd,
                                                slice_cap_contracts)
from marginflow.shared.universe import Kind

T = 1_767_225_600_000


def pos(instrument, size, mark, mm, kind=Kind.PERPETUAL, lot="0.001", tick="0.5", cs="1"):
    return PositionState(instrument, kind, D(size), D(cs), D(mark), D(mm), D(lot), D(tick))


def account(equity, im, positions, mm=None):
    return AccountState("a", D(equity), D(im), D(mm) if mm is not None else D(im) / 2, tuple(positions))


def test_healthy_and_bankrupt_accounts_send_nothing():
    p = [pos("BTC-PERP", "1", "50000", "2500")]
    assert plan_round(account("5100", "5000", p), [5000.0], T).healthy          # 5,100 ≥ 5,000·1.02
    b = plan_round(account("-10", "5000", p), [5000.0], T)
    assert b.bankrupt and b.intents == ()


def test_slice_caps():
    s = PlanSettings()
    # 500 USD notional: whole position (min(1,000, 500) = 500 ≥ 10 %)
    assert slice_cap_contracts(pos("X", "0.01", "50000", "10"), s) == D("0.01")
    # 5,000 USD: max(1,000, 500) = 1,000 USD = 0.02 BTC
    assert slice_cap_contracts(pos("X", "0.1", "50000", "10"), s) == D("0.02")
    # 50,000 USD: 10 % = 5,000 USD = 0.1 BTC
    assert slice_cap_contracts(pos("X", "-1", "50000", "10"), s) == D("0.1")
    # 150,000 USD (> 100,000): 20 % = 30,000 USD = 0.6 BTC
    assert slice_cap_contracts(pos("X", "3", "50000", "10"), s) == D("0.6")
    # a cap below one lot is one lot: 200 × 50 = 10,000 USD, cap 1,000 USD = 20 contracts < lot 50
    assert slice_cap_contracts(pos("X", "200", "50", "10", lot="50"), s) == D("50")


def test_futures_before_options_and_most_relief_per_notional_first():
    positions = [pos("BTC-C", "2", "2500", "500", kind=Kind.CALL, lot="0.01"),     # 20 % relief/notional, option
                 pos("BTC-PERP", "1", "50000", "2500"),                            # 10 %
                 pos("ETH-PERP", "30", "3000", "5400", lot="0.01", tick="0.05")]   # 12 %
    plan = plan_round(account("7560", "16800", positions), [500.0, 5000.0, 360.0], T)
    assert [t.instrument for t in plan.targets] == ["ETH-PERP", "BTC-PERP"]


def test_large_position_cooldown():
    p = [pos("BTC-PERP", "3", "50000", "7500")]                # 150,000 USD notional: large
    acct = account("12000", "15000", p, mm="15000")
    first = plan_round(acct, [5000.0], T)
    assert first.intents[0].size_contracts == D("0.6") and first.cooldown_until_ms == {"BTC-PERP": T + 30_000}
    again = plan_round(acct, [5000.0], T + 10_000, cooldown_until_ms=first.cooldown_until_ms)
    assert again.intents == () and again.targets                 # still needed, but cooling down
    later = plan_round(acct, [5000.0], T + 30_001, cooldown_until_ms=first.cooldown_until_ms)
    assert later.intents[0].size_contracts == D("0.6")
    # Hyperliquid's rule instead: during the cooldown the whole remaining target goes at once
    full = PlanSettings(large_position_cooldown_mode=CooldownMode.FULL)
    rush = plan_round(acct, [5000.0], T + 10_000, full, cooldown_until_ms=first.cooldown_until_ms)
    assert rush.intents[0].size_contracts == rush.targets[0].reduce_contracts > D("0.6")


def _linear_after(acct: AccountState, relief, targets, s: PlanSettings):
    equity, im = float(acct.equity_usd), float(acct.im_usd)
    for t in targets:
        p = acct.positions[t.position_index]
        limit, b = limit_and_bankruptcy(acct, t.position_index, s)
        fee = min(s.fee_rate * limit, max(p.side * (limit - b), D(0)))
        cost = float(p.contract_size * (abs(p.mark_price_usd - limit) + fee))
        equity -= cost * float(t.reduce_contracts)
        im -= relief[t.position_index] * float(t.reduce_contracts)
    return equity, im


sizes = st.decimals(min_value=D("0.01"), max_value=D("20"), places=2)


@settings(max_examples=150, deadline=None)
@given(q1=sizes, q2=sizes, short1=st.booleans(), short2=st.booleans(),
       health=st.decimals(min_value=D("0.05"), max_value=D("0.99"), places=2),
       rate1=st.sampled_from([0.08, 0.1, 0.15]), rate2=st.sampled_from([0.05, 0.12, 0.2]))
def test_plan_is_minimal_and_slices_are_reduce_only_and_bounded(q1, q2, short1, short2, health, rate1, rate2):
    s = PlanSettings()
    sz1, sz2 = (-q1 if short1 else q1), (-q2 if short2 else q2)
    marks = (D(50000), D(3000))
    relief = [rate1 * 50000.0, rate2 * 3000.0]                  # IM per contract = rate × mark
    im_parts = [D(str(relief[0])) * q1, D(str(relief[1])) * q2]
    im = sum(im_parts)
    mm = im / 2
    positions = [pos("BTC-PERP", str(sz1), str(marks[0]), str(im_parts[0] / 2), lot="0.01"),
                 pos("ETH-PERP", str(sz2), str(marks[1]), str(im_parts[1] / 2), lot="0.01", tick="0.05")]
    acct = account(str((health * mm).quantize(D("0.01"))), str(im), positions, mm=str(mm))
    plan = plan_round(acct, relief, T, s)
    assert not plan.healthy and not plan.bankrupt
    req = float(required_equity_usd(acct.im_usd, s))
    equity, im_after = _linear_after(acct, relief, plan.targets, s)
    if plan.restores:
        assert equity >= (req / float(acct.im_usd)) * im_after - 0.005      # restored under the linear model
        last = plan.targets[-1]
        p = acct.positions[last.position_index]
        if last.reduce_contracts > p.lot_size_contracts:                  # one lot less would not restore
            shorter = list(plan.targets[:-1]) + [type(last)(last.instrument, last.position_index,
                                                            last.reduce_contracts - p.lot_size_contracts)]
            e2, im2 = _linear_after(acct, relief, shorter, s)
            assert e2 < (1 + float(s.margin_buffer_fraction)) * im2
    for o in plan.intents:
        p = acct.positions[o.position_index]
        target = next(t for t in plan.targets if t.position_index == o.position_index)
        assert is_reduce_only(p.size_contracts, o.side, o.size_contracts)
        assert o.size_contracts <= slice_cap_contracts(p, s) and o.size_contracts <= target.reduce_contracts
        assert (o.size_contracts / p.lot_size_contracts) % 1 == 0 or o.size_contracts == abs(p.size_contracts)
        assert o.side == (OrderSide.SELL if p.size_contracts > 0 else OrderSide.BUY)
        # the limit is never beyond the bankruptcy price, and is on the tick grid
        assert (o.limit_price_usd >= o.bankruptcy_price_usd) if p.size_contracts > 0 else \
            (o.limit_price_usd <= o.bankruptcy_price_usd)
        assert (o.limit_price_usd / p.tick_size_usd) % 1 == 0


def test_reduce_only_predicate():
    assert is_reduce_only(D(2), OrderSide.SELL, D(2))
    assert not is_reduce_only(D(2), OrderSide.SELL, D("2.001"))     # would flip
    assert not is_reduce_only(D(2), OrderSide.BUY, D(1))            # would increase
    assert not is_reduce_only(D(0), OrderSide.SELL, D(1))


def test_a_position_whose_reduction_does_not_help_is_skipped():
    # relief 0 per contract: closing it only costs the spread and the fee
    positions = [pos("HEDGE", "1", "50000", "0"), pos("BTC-PERP", "1", "50000", "2500")]
    plan = plan_round(account("2000", "5000", positions, mm="2500"), [0.0, 5000.0], T)
    assert [t.instrument for t in plan.targets] == ["BTC-PERP"]
