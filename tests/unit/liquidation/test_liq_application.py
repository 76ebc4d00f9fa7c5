"""The liquidation application with fakes for its ports (no Kafka, gRPC or Redis)."""

from __future__ import annotations

import time
from decimal import Decimal as D

import pytest

from marginflow.liquidation.adapters import codec
from marginflow.liquidation.application import (
    BANKRUPT, LIQUIDATION, Call, EngineSettings, Event, FillSeen, FundLedger, LiquidationEngine, MarginView,
    MarkSeen, OpenPosition, PositionView, StateSeen, instrument_infos)
from marginflow.liquidation.domain import FundSettings, GuardSettings, PlanSettings
from marginflow.shared.metrics import NullMetrics
from marginflow.shared.universe import load_universe

UNIVERSE = load_universe(None, int(time.time() * 1000))
NOW = 1_800_000_000_000


class FakeMargin:
    def __init__(self) -> None:
        self.views: dict[str, MarginView] = {}
        self.im_after_close = D("0")

    def explain(self, account_id):
        return self.views[account_id]

    def im_after(self, account_id, trades):
        return self.im_after_close


class FakePositions:
    def __init__(self) -> None:
        self.by_instrument: dict[str, list[OpenPosition]] = {}

    def positions_by_instrument(self, instrument):
        return self.by_instrument.get(instrument, [])

    def positions_of(self, account_id):
        return [p for ps in self.by_instrument.values() for p in ps if p.account_id == account_id]


class FakePublisher:
    def __init__(self) -> None:
        self.events, self.orders, self.fills, self.deposits, self.funds = [], [], [], [], []

    def publish_events(self, events):
        self.events.extend(events)

    def publish_orders(self, orders):
        self.orders.extend(orders)

    def publish_effects(self, fills, deposits, fund):
        self.fills.extend(fills)
        self.deposits.extend(deposits)
        if fund is not None:
            self.funds.append(fund)


class FakeCache:
    def write(self, fund):
        self.last = fund


def view(account="a", equity="2500", im="9000", mm="4500", fresh=True, size="1", risk=1, revision=3, marks_ms=NOW):
    return MarginView(account, LIQUIDATION, D(equity), D(im), D(mm), fresh, risk, revision, marks_ms,
                      (PositionView("BTC-PERP", D(size), False),))


@pytest.fixture
def world():
    margin, positions, pub = FakeMargin(), FakePositions(), FakePublisher()
    settings = EngineSettings(PlanSettings(), GuardSettings(), FundSettings(), round_interval_ms=0)
    clock = [NOW]
    engine = LiquidationEngine(settings, instrument_infos(UNIVERSE), margin, positions, pub,
                               FundLedger(D("100"), 100, 100), FakeCache(), lambda: clock[0], NullMetrics())
    engine.on_marks([MarkSeen("BTC-PERP", 51000.0, 51000.0, NOW, 0.0001, 1000.0)])
    return engine, margin, positions, pub


def kinds(pub):
    return [e.kind for e in pub.events]


def step(engine, now=NOW + 10_000):
    for account in engine.due(now, 100):
        engine.act(engine.assess(account))


def start_episode(engine, margin) -> None:
    """Account "a" below MM (revision 3, version 1), called and acted on: its episode's first slice goes out."""
    margin.views["a"] = view()
    margin.im_after_close = D("0")
    engine.on_calls([Call("a", LIQUIDATION, True, 1, 3, NOW)])
    step(engine)


def test_the_next_round_waits_for_a_view_that_holds_the_last_round_s_fills(world):
    # Round 1 planned on revision 3 sells 0.1; its fill is read. A view still at revision 3 (portfolio down or
    # behind) shows the position unsold: planning on it would sell the same 0.1 again. The next round goes out
    # only on a view holding the fill (revision 4).
    engine, margin, _positions, pub = world
    start_episode(engine, margin)
    assert [o.order_id for o in pub.orders] == ["liq-a-1-0"]
    engine.on_fills([FillSeen("trades.fills", 0, 7, "liq-a-1-0-f0", "a", "BTC-PERP", -1, D("0.1"), D("50994.5"),
                              D("0"), True, "liq-a-1-0", NOW)])
    for _ in range(3):
        step(engine, now=NOW + 20_000)                  # the view without the fill: nothing sent
    assert [o.order_id for o in pub.orders] == ["liq-a-1-0"]
    margin.views["a"] = view(size="0.9", revision=4)    # the fill applied
    step(engine, now=NOW + 30_000)
    assert [o.order_id for o in pub.orders] == ["liq-a-1-0", "liq-a-1-1"]
    assert pub.orders[-1].account_revision == 4
    # without a fill, the next round does not wait: an IOC that found no liquidity is sent again
    margin.views["a"] = view(size="0.9", revision=4)
    step(engine, now=NOW + 40_000)
    assert [o.order_id for o in pub.orders][-1] == "liq-a-1-2"


def test_a_call_below_mm_on_fresh_marks_starts_an_episode_and_sends_a_paced_reduce_only_slice(world):
    engine, margin, _positions, pub = world
    start_episode(engine, margin)
    assert kinds(pub)[:2] == ["STARTED", "ORDER_SENT"]
    (order,) = pub.orders
    assert order.order_id == "liq-a-1-0" and order.side == -1 and order.size == D("0.100")
    assert order.bankruptcy_price_usd <= order.limit_price_usd <= D("51000")
    # the margin it was planned on: its version, revision and the newest mark of its market
    assert (order.risk_version, order.account_revision, order.margin_marks_ms) == (1, 3, NOW)
    msg = codec.order_to_proto(order, NOW)
    assert (msg.risk_version, msg.account_revision, msg.marks_time_ms) == (1, 3, NOW)
    margin.views["a"] = view(risk=2, revision=4, marks_ms=NOW + 700)
    step(engine)                                        # the next round: the next slice number
    assert [o.order_id for o in pub.orders] == ["liq-a-1-0", "liq-a-1-1"]
    assert (pub.orders[-1].risk_version, pub.orders[-1].account_revision, pub.orders[-1].margin_marks_ms) == \
        (2, 4, NOW + 700)


def test_a_call_on_stale_marks_or_an_account_healthy_again_at_the_recheck_sends_nothing(world):
    engine, margin, _positions, pub = world
    engine.on_calls([Call("s", LIQUIDATION, False, 1, 1, NOW)])
    assert kinds(pub) == ["SKIPPED_STALE_MARK"]
    margin.views["h"] = view("h", equity="5000")        # ≥ MM 4,500: margin.calls was behind
    engine.on_calls([Call("h", LIQUIDATION, True, 1, 1, NOW)])
    step(engine)
    assert kinds(pub)[-1] == "RECHECK_HEALTHY" and not pub.orders


def test_guards_hold_an_admin_paused_or_band_breaking_instrument(world):
    engine, margin, _positions, pub = world
    margin.views["a"] = view()
    engine.pause("BTC-PERP", True, "incident")
    engine.on_calls([Call("a", LIQUIDATION, True, 1, 3, NOW)])
    step(engine)
    assert "GUARD_PAUSED" in kinds(pub) and not pub.orders
    engine.pause("BTC-PERP", False, "")
    engine.on_marks([MarkSeen("BTC-PERP", 51000.0, 40000.0, NOW + 1, 0.0001, 1000.0)])   # 27 % off the index
    step(engine)
    assert not pub.orders and pub.events[-1].detail == "paused_index_band"
    engine.on_marks([MarkSeen("BTC-PERP", 51000.0, 51000.0, NOW + 2, 0.0001, 1000.0)])
    step(engine)
    assert [o.order_id for o in pub.orders] == ["liq-a-1-0"]


def test_a_fee_reaches_the_fund_once_per_fill_id_and_a_replayed_offset_changes_nothing(world):
    engine, _margin, _positions, pub = world
    f = FillSeen("trades.fills", 0, 7, "liq-a-1-0-f0", "a", "BTC-PERP", -1, D("0.1"), D("50994.5"), D("76.49"),
                 True, "liq-a-1-0", NOW)
    assert engine.on_fills([f]) == 1
    assert engine.on_fills([f]) == 0                                          # same offset: skipped
    assert engine.on_fills([FillSeen(**{**f.__dict__, "offset": 9})]) == 0    # republished under the same id
    house = FillSeen(**{**f.__dict__, "offset": 10, "fill_id": "liq-a-1-0-f0-h", "account_id": "house"})
    assert engine.on_fills([house]) == 0
    assert engine.ledger.balance == D("176.49") and pub.funds[-1].balance_usd == D("176.49")
    assert pub.funds[-1].applied_offsets == {"trades.fills:0": 10}


def test_a_fee_is_capped_at_the_liquidation_rate(world):
    engine, *_ = world
    f = FillSeen("trades.fills", 0, 1, "x-f0", "a", "BTC-PERP", -1, D("0.1"), D("50000"), D("1000"), True,
                 "liq-a-1-0", NOW)
    engine.on_fills([f])
    assert engine.ledger.balance == D("100") + D("75.00")     # 1.5 % of 5,000


def test_a_rebuilt_engine_continues_the_episode_with_the_next_slice(world):
    engine, margin, positions, pub = world
    history = [Event("STARTED", "a", 1, NOW), Event("ORDER_SENT", "a", 1, NOW, order_id="liq-a-1-0", slice=0, round=1),
               Event("ORDER_SENT", "a", 1, NOW, order_id="liq-a-1-1", slice=1, round=2)]
    engine.rebuild(history)
    margin.views["a"] = view()
    step(engine)
    assert [o.order_id for o in pub.orders] == ["liq-a-1-2"]


def test_bankrupt_account_paid_by_the_fund_then_adl_for_what_it_cannot(world):
    engine, margin, positions, pub = world
    margin.views["b"] = MarginView("b", BANKRUPT, D("-1000"), D("9000"), D("4500"), True, 1, 3, NOW,
                                   (PositionView("BTC-PERP", D("1"), False),))
    positions.by_instrument["BTC-PERP"] = [OpenPosition("c", "BTC-PERP", D("-1"), D("60000"))]
    engine.on_states([StateSeen("c", 1, D("50000"), D("9000"), D("4500"), True, NOW)])
    engine.on_calls([Call("b", BANKRUPT, True, 1, 3, NOW)])
    step(engine)
    # The fund (100) pays the loss of 0.1 BTC at 1,000/BTC; the other 0.9 BTC are deleveraged against c at b.
    assert [d.amount for d in pub.deposits] == [D("100.00")] and engine.ledger.balance == 0
    adl = {f.fill_id: f for f in pub.fills if f.fill_id.startswith("adl-")}
    assert adl["adl-b-1-0-0"].size == D("0.900") and adl["adl-b-1-0-0-c"].account_id == "c"
    assert adl["adl-b-1-0-0"].price_usd == D("52000.0")       # 51,000 − (−1,000)/1
    assert {"BANKRUPT", "FUND_TAKEOVER", "ADL", "DEFICIT_COVERED"} <= set(kinds(pub))
    assert all(s.balance_usd >= 0 for s in pub.funds)


def test_after_a_bankruptcy_a_view_without_its_fills_starts_no_second_episode(world):
    engine, margin, positions, pub = world
    stale = MarginView("b", BANKRUPT, D("-1000"), D("9000"), D("4500"), True, 1, 3, NOW,
                       (PositionView("BTC-PERP", D("1"), False),))
    margin.views["b"] = stale
    positions.by_instrument["BTC-PERP"] = [OpenPosition("c", "BTC-PERP", D("-1"), D("60000"))]
    engine.on_states([StateSeen("c", 1, D("50000"), D("9000"), D("4500"), True, NOW)])
    engine.on_calls([Call("b", BANKRUPT, True, 1, 3, NOW)])
    step(engine)
    own = [f for f in pub.fills if f.account_id == "b"] + [d for d in pub.deposits if d.account_id == "b"]
    settled = 3 + len(own)
    assert len(own) == 3 and {e.settled_revision for e in pub.events if e.kind == "BANKRUPT"} == {settled}
    fills_before = list(pub.fills)
    # margin.state republished before portfolio applied the fills: the same bankrupt book, revision 3
    engine.on_states([StateSeen("b", BANKRUPT, D("-1000"), D("9000"), D("4500"), True, NOW, below_mm=True)])
    engine.on_calls([Call("b", BANKRUPT, True, 1, 3, NOW)])
    for _ in range(5):
        step(engine)
    assert kinds(pub).count("STARTED") == 1 and pub.fills == fills_before
    # A restarted service knows it from the events alone.
    rebuilt = LiquidationEngine(engine.s, engine.instruments, margin, positions, FakePublisher(),
                                FundLedger(D("0"), 100, 100), FakeCache(), lambda: NOW, NullMetrics())
    rebuilt.rebuild(pub.events)
    rebuilt.on_calls([Call("b", BANKRUPT, True, 1, 3, NOW)])
    for account in rebuilt.due(NOW + 10_000, 100):
        rebuilt.act(rebuilt.assess(account))
    assert rebuilt.publisher.events == [] and rebuilt.publisher.fills == []
    # Once a view holds the fills, the account is margined on it: a new position below MM is a new episode.
    margin.views["b"] = MarginView("b", LIQUIDATION, D("100"), D("9000"), D("4500"), True, 1, settled, NOW,
                                   (PositionView("BTC-PERP", D("1"), False),))
    margin.im_after_close = D("0")
    for _ in range(3):
        step(engine)
    assert kinds(pub).count("STARTED") == 2


class CountingPublisher(FakePublisher):
    """Each publish call as one entry: (what, [ids]) in the order the calls came."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, list[str]]] = []

    def publish_events(self, events):
        self.calls.append(("events", [f"{e.kind}:{e.account_id}" for e in events]))
        super().publish_events(events)

    def publish_orders(self, orders):
        self.calls.append(("orders", [o.order_id for o in orders]))
        super().publish_orders(orders)


def test_rechecks_answered_in_one_turn_go_out_as_one_batch_every_event_before_any_order(world):
    engine, margin, _positions, _pub = world
    engine.publisher = pub = CountingPublisher()
    for account in ("a", "b", "c"):
        margin.views[account] = view(account)
        engine.on_calls([Call(account, LIQUIDATION, True, 1, 3, NOW)])
    # two re-checks (as two workers' answers), both answered by the same turn
    first, second = engine.due(NOW + 10_000, 2), engine.due(NOW + 10_000, 2)
    assert (first, second) == (["a", "b"], ["c"])
    acted = engine.act_many(engine.assess_many(first) + engine.assess_many(second))
    assert acted == 3
    assert pub.calls == [
        ("events", ["STARTED:a", "ORDER_SENT:a", "STARTED:b", "ORDER_SENT:b", "STARTED:c", "ORDER_SENT:c"]),
        ("orders", ["liq-a-1-0", "liq-b-1-0", "liq-c-1-0"])]     # the ids acting one by one gives


def test_acting_on_a_batch_that_fails_midway_leaves_no_account_in_flight(world):
    engine, margin, _positions, pub = world
    for account in ("a", "b", "c"):
        margin.views[account] = view(account)
        engine.on_calls([Call(account, LIQUIDATION, True, 1, 3, NOW)])
    assessments = engine.assess_many(engine.due(NOW + 10_000, 10))
    real_act = engine.act

    def act(a):
        if a.account_id == "b":
            raise RuntimeError("broker timeout")
        real_act(a)

    engine.act = act
    with pytest.raises(RuntimeError):
        engine.act_many(assessments)
    assert [o.order_id for o in pub.orders] == ["liq-a-1-0"]          # what was decided still goes out
    engine.act = real_act
    assert {"b", "c"} <= set(engine.due(NOW + 10_000, 10))             # assessed again, not stuck in flight


def test_calls_not_yet_acted_on_come_before_the_rounds_of_live_episodes_and_none_starves(world):
    """Thousands of accounts in liquidation at once: each live episode comes due again every round, and
    an account called after them must not wait behind their rounds (taken longest-due first)."""
    engine, margin, _positions, _pub = world
    live = [f"live{i}" for i in range(6)]
    for account in live:
        margin.views[account] = view(account)
        engine.on_calls([Call(account, LIQUIDATION, True, 1, 3, NOW)])
    step(engine)                                        # six episodes started, each due again next round
    assert all(engine.accounts[a].live for a in live)
    margin.views["late"] = view("late")
    engine.on_calls([Call("late", LIQUIDATION, True, 1, 3, NOW)])   # called after them, inserted last
    for k, account in enumerate(live):
        engine.accounts[account].due_ms = NOW + 10_000 - 1_000 * k  # live5 has waited longest
    first = engine.due(NOW + 20_000, 3)
    assert first == ["late", "live5", "live4"]
    assert engine.due(NOW + 20_000, 3) == ["live3", "live2", "live1"]   # the rest, in turn, none twice
    assert engine.due(NOW + 20_000, 3) == ["live0"]
