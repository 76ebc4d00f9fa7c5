"""Isolated positions are liquidated alone against their allocated collateral; margin.state triggers an
account that falls below MM again while its published state still says LIQUIDATION; limits cross the book."""

from __future__ import annotations

from decimal import Decimal as D

from marginflow.liquidation.application import (
    LIQUIDATION, Call, IsolatedView, MarginView, MarkSeen, OpenPosition, PositionView, StateSeen, components,
    observation, worst_component)
from test_liq_application import NOW, kinds, step, world  # noqa: F401 - the fixture

# An account with a healthy cross part (1 BTC-PERP long, equity 20,000 against IM 9,000) and an isolated
# 1 ETH-PERP long whose allocated collateral has almost gone: isolated equity 100 < its MM 150 (IM 300).
# The account's totals (equity 20,100 ≥ MM 4,650) hide it; margined alone, it is in liquidation.


def mixed(iso_equity="100", account="m", cross_equity="20000"):
    return MarginView(account, LIQUIDATION, D(cross_equity) + D(iso_equity), D("9300"), D("4650"), True, 1, 3, NOW,
                      (PositionView("BTC-PERP", D("1"), False), PositionView("ETH-PERP", D("1"), True)),
                      D(cross_equity), D("9000"), D("4500"),
                      (IsolatedView("ETH-PERP", D("1"), D(iso_equity), D("300"), D("150")),))


def test_components_margin_each_isolated_position_alone():
    parts = components(mixed())
    assert [(c.instrument, c.equity_usd, c.mm_usd) for c in parts] == [("", D("20000"), D("4500")),
                                                                        ("ETH-PERP", D("100"), D("150"))]
    # worst by equity/IM, cross-multiplied: 100·9,000 = 900,000 < 20,000·300 = 6,000,000 → the isolated one
    assert worst_component(parts).instrument == "ETH-PERP"
    obs = observation(mixed())
    assert (obs.equity_usd, obs.mm_usd) == (D("100"), D("150"))


def test_an_isolated_position_below_its_mm_is_liquidated_and_the_healthy_cross_part_is_not(world):
    engine, margin, _positions, pub = world
    engine.on_marks([MarkSeen("ETH-PERP", 3000.0, 3000.0, NOW, 0.0001, 1000.0)])
    margin.views["m"] = mixed()
    engine.on_calls([Call("m", LIQUIDATION, True, 1, 3, NOW)])
    step(engine)
    assert kinds(pub)[:2] == ["STARTED", "ORDER_SENT"]
    assert pub.events[0].instrument == "ETH-PERP"
    assert {o.instrument for o in pub.orders} == {"ETH-PERP"}        # nothing of the cross BTC-PERP
    (order,) = pub.orders
    assert order.side == -1 and D(0) < order.size <= D("1")
    # restored once the isolated part is at IM·1.02 = 306: the episode ends
    margin.views["m"] = mixed(iso_equity="306")
    step(engine)
    assert kinds(pub)[-1] == "RESTORED"


def test_an_isolated_position_below_zero_is_taken_over_by_the_fund_and_the_episode_goes_on(world):
    engine, margin, positions, pub = world
    engine.on_marks([MarkSeen("ETH-PERP", 3000.0, 3000.0, NOW, 0.0001, 1000.0)])
    margin.views["m"] = mixed(iso_equity="-30")
    positions.by_instrument["ETH-PERP"] = [OpenPosition("c", "ETH-PERP", D("-1"), D("2500"))]
    engine.on_states([StateSeen("c", 1, D("50000"), D("9000"), D("4500"), True, NOW)])
    engine.on_calls([Call("m", LIQUIDATION, True, 1, 3, NOW)])
    step(engine)
    step(engine)
    # the fund (100) pays the isolated deficit of 30 (1 ETH closed at the mark 3,000, bankruptcy 3,030)
    assert [(d.event_id, d.amount) for d in pub.deposits] == [("liq-fund-m-1-ETH-PERP", D("30.00"))]
    assert engine.ledger.balance == D("70.00")
    assert "BANKRUPT" not in kinds(pub) and engine.accounts["m"].live     # the account's episode goes on
    step(engine)
    assert len(pub.deposits) == 1                                      # a redo pays nothing twice


def test_margin_state_below_mm_triggers_an_account_without_a_running_episode(world):
    engine, margin, _positions, pub = world
    margin.views["a"] = MarginView("a", LIQUIDATION, D("2500"), D("9000"), D("4500"), True, 1, 3, NOW,
                                   (PositionView("BTC-PERP", D("1"), False),))
    # still LIQUIDATION as published (the margin's exit buffer is wider than the restore target), below MM
    engine.on_states([StateSeen("a", LIQUIDATION, D("2500"), D("9000"), D("4500"), True, NOW, True)])
    step(engine)
    assert kinds(pub)[:2] == ["STARTED", "ORDER_SENT"]


def test_a_state_trigger_that_finds_the_account_above_mm_is_quiet_for_a_while(world):
    engine, margin, _positions, pub = world
    margin.views["q"] = MarginView("q", LIQUIDATION, D("5000"), D("9000"), D("4500"), True, 1, 3, NOW,
                                   (PositionView("BTC-PERP", D("1"), False),))
    seen = StateSeen("q", LIQUIDATION, D("4400"), D("9000"), D("4500"), True, NOW, True)
    engine.on_states([seen])
    step(engine)
    assert kinds(pub) == ["RECHECK_HEALTHY"]
    engine.on_states([seen])          # republished within the quiet period: no second re-check
    step(engine)
    assert kinds(pub) == ["RECHECK_HEALTHY"]
    # not below MM as published, or a healthy state: never a trigger
    engine.on_states([StateSeen("x", LIQUIDATION, D("5000"), D("9000"), D("4500"), True, NOW, False),
                      StateSeen("y", 1, D("4400"), D("9000"), D("4500"), True, NOW, True)])
    assert engine.accounts.get("x") is None and engine.accounts.get("y") is None


def test_the_limit_crosses_the_half_spread_plus_the_minimum_slippage(world):
    engine, margin, _positions, pub = world
    # an option-like wide book: half-spread 2 % of the mark. At equity just under MM the fillable price is
    # ~the mark, and a limit 0.1 % away would sit inside the spread (best bid 51,000·0.98 = 49,980): it
    # never fills. The limit is mark·(1 − (0.02 + 0.001)) = 49,929 (ticks of 0.5: 49,929.0), bankruptcy
    # 51,000 − 4,400/1 = 46,600 is further.
    engine.on_marks([MarkSeen("BTC-PERP", 51000.0, 51000.0, NOW + 1, 0.02, 1000.0)])
    margin.views["w"] = MarginView("w", LIQUIDATION, D("4400"), D("9000"), D("4500"), True, 1, 3, NOW,
                                   (PositionView("BTC-PERP", D("1"), False),))
    engine.on_calls([Call("w", LIQUIDATION, True, 1, 3, NOW)])
    step(engine)
    (order,) = pub.orders
    assert order.limit_price_usd == D("49929.0")
    assert order.bankruptcy_price_usd < order.limit_price_usd < D("49980")


def test_a_resolved_isolated_bankruptcy_is_not_redone_while_margin_catches_up(world):
    engine, margin, positions, pub = world
    engine.on_marks([MarkSeen("ETH-PERP", 3000.0, 3000.0, NOW, 0.0001, 1000.0)])
    margin.views["m"] = mixed(iso_equity="-30")
    engine.on_calls([Call("m", LIQUIDATION, True, 1, 3, NOW)])
    for k in range(4):                       # the margin still shows it below zero for a few rounds
        engine.clock_ms = lambda k=k: NOW + 10_000 + k * 1_000
        step(engine, NOW + 10_000 + k * 1_000)
    assert sum(1 for e in pub.events if e.kind == "FUND_TAKEOVER") == 1
    engine.clock_ms = lambda: NOW + 30_000   # still there 20 s on: a step with fixed ids is never done twice
    step(engine, NOW + 30_000)
    takeovers = [e.reference for e in pub.events if e.kind == "FUND_TAKEOVER"]
    assert takeovers == ["liqbk-m-1-ETH-PERP-t"] and len(pub.deposits) == 1
    assert [f.fill_id for f in pub.fills].count("liqbk-m-1-ETH-PERP-t-h") == 1


def test_options_are_not_held_by_the_mark_vs_index_band(world):
    """An option's mark is its premium (≈ 50 USD) and the index on its mark is the underlying's (≈ 3,000):
    |50 − 3,000| > 10 %·3,000 would pause every option for ever; a perpetual 27 % off its index is paused."""
    engine, *_ = world
    engine.on_marks([MarkSeen("ETH-11DEC26-2100-P", 50.0, 3000.0, NOW + 1, 0.01, 100.0),
                     MarkSeen("BTC-PERP", 51000.0, 40000.0, NOW + 1, 0.0001, 1000.0)])
    assert engine.marks.verdict("ETH-11DEC26-2100-P", linear=False).value == "act"
    assert engine.marks.verdict("BTC-PERP").value == "paused_index_band"
