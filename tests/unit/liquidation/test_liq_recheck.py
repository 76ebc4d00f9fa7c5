"""The re-check of many accounts in one read of the margin service, and margin.state read for what needs it:
a trigger or a tracked account decoded whole, every other account's equity alone (ADL)."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from marginflow.liquidation.application import (
    BANKRUPT, LIQUIDATION, Call, EngineSettings, FundLedger, LiquidationEngine, MarginView, MarkSeen, OpenPosition,
    PositionView, Rechecked, StateSeen, instrument_infos, recheck_alone)
from marginflow.liquidation.domain import FundSettings, GuardSettings, PlanSettings
from marginflow.shared.metrics import NullMetrics

from test_liq_application import NOW, UNIVERSE, FakeCache, FakeMargin, FakePositions, FakePublisher, kinds, view

HEALTHY = 1


class BatchMargin(FakeMargin):
    """A margin port with the batched read: the views and reliefs of many accounts per call."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[str]] = []
        self.fail = False

    def explain(self, account_id):
        raise AssertionError("read one by one although the batched read exists")

    def recheck(self, account_ids):
        self.batches.append(list(account_ids))
        if self.fail:
            raise RuntimeError("margin unreachable")
        return {a: Rechecked(self.views[a], (self.views[a].im_usd,)) for a in account_ids if a in self.views}


def make(margin, positions=None):
    pub = FakePublisher()
    settings = EngineSettings(PlanSettings(), GuardSettings(), FundSettings(), round_interval_ms=0)
    engine = LiquidationEngine(settings, instrument_infos(UNIVERSE), margin, positions or FakePositions(), pub,
                               FundLedger(D("100"), 100, 100), FakeCache(), lambda: NOW, NullMetrics())
    engine.on_marks([MarkSeen("BTC-PERP", 51000.0, 51000.0, NOW, 0.0001, 1000.0)])
    return engine, pub


def test_due_accounts_are_rechecked_in_one_call_and_each_acted_on():
    margin = BatchMargin()
    engine, pub = make(margin)
    for a in ("a", "b", "c"):
        margin.views[a] = view(a)
    margin.views["h"] = view("h", equity="5000")          # above MM 4,500 at the moment of acting
    engine.on_calls([Call(a, LIQUIDATION, True, 1, 3, NOW) for a in ("a", "b", "c", "h")])
    due = engine.due(NOW, 500)
    for assessment in engine.assess_many(due):
        engine.act(assessment)
    assert margin.batches == [["a", "b", "c", "h"]]
    assert sorted(o.order_id for o in pub.orders) == ["liq-a-1-0", "liq-b-1-0", "liq-c-1-0"]
    assert [e.account_id for e in pub.events if e.kind == "RECHECK_HEALTHY"] == ["h"]


def test_an_older_revision_at_the_recheck_is_read_again_and_never_acted_on():
    margin = BatchMargin()
    engine, pub = make(margin)
    margin.views["a"] = view("a", revision=2)             # the call saw revision 3: margin is behind
    engine.on_calls([Call("a", LIQUIDATION, True, 1, 3, NOW)])
    for assessment in engine.assess_many(engine.due(NOW, 500)):
        engine.act(assessment)
    assert not pub.orders and engine.accounts["a"].pending is not None and engine.accounts["a"].rechecks == 1


def test_a_failed_batch_backs_off_every_account_and_a_missing_one_is_an_error():
    margin = BatchMargin()
    engine, pub = make(margin)
    margin.views["a"] = view("a")
    engine.on_calls([Call(a, LIQUIDATION, True, 1, 3, NOW) for a in ("a", "gone")])
    margin.fail = True
    out = engine.assess_many(engine.due(NOW, 500))
    assert [bool(x.error) for x in out] == [True, True] and "unreachable" in out[0].error
    for assessment in out:
        engine.act(assessment)
    assert not pub.orders and all(engine.accounts[a].due_ms > NOW for a in ("a", "gone"))
    margin.fail = False
    out = engine.assess_many(["a", "gone"])
    assert not out[0].error and "not returned" in out[1].error


def test_a_port_without_the_batched_read_is_read_account_by_account():
    margin = FakeMargin()
    engine, pub = make(margin)
    margin.views["a"] = view("a")
    engine.on_calls([Call("a", LIQUIDATION, True, 1, 3, NOW)])
    for assessment in engine.assess_many(engine.due(NOW, 500)):
        engine.act(assessment)
    assert [o.order_id for o in pub.orders] == ["liq-a-1-0"]


def test_recheck_alone_needs_a_what_if_only_for_several_cross_positions():
    margin = FakeMargin()
    calls = []
    margin.im_after = lambda account, trades: calls.append(trades) or D("3000")
    margin.views["one"] = view("one")
    margin.views["two"] = MarginView("two", LIQUIDATION, D("2500"), D("9000"), D("4500"), True, 1, 3, NOW,
                                     (PositionView("BTC-PERP", D("1"), False), PositionView("ETH-PERP", D("-2"), False),
                                      PositionView("SOL-PERP", D("5"), True)))
    assert recheck_alone(margin, "one").relief_usd == (D("9000"),) and calls == []
    assert recheck_alone(margin, "two").relief_usd == (D("6000"), D("6000"))
    assert calls == [[("BTC-PERP", D("-1"))], [("ETH-PERP", D("2"))]]


def test_only_triggers_and_tracked_accounts_are_decoded_whole_the_rest_keep_their_equity():
    engine, _pub = make(BatchMargin())
    assert engine.needs_state("x", LIQUIDATION) and engine.needs_state("x", BANKRUPT)
    assert not engine.needs_state("x", HEALTHY)
    engine.on_calls([Call("t", LIQUIDATION, True, 1, 3, NOW)])
    assert engine.needs_state("t", HEALTHY)               # tracked: its published numbers are kept whole
    engine.on_states([StateSeen("x", LIQUIDATION, D("100"), D("9000"), D("4500"), True, NOW, True)])
    engine.on_equities([("x", D("30000")), ("y", D("-5"))])
    assert "x" not in engine.states                       # the newer record replaces the older whole one
    assert engine.equity_of("x") == D("30000") and engine.equity_of("y") == D("-5")
    assert engine.equity_of("nobody") is None
    engine.on_states([StateSeen("y", LIQUIDATION, D("7"), D("9000"), D("4500"), True, NOW, True)])
    assert engine.equity_of("y") == D("7") and "y" not in engine.equities


def test_adl_ranks_counterparties_by_the_equity_of_their_undecoded_states():
    positions = FakePositions()
    positions.by_instrument["BTC-PERP"] = [OpenPosition("c", "BTC-PERP", D("-1"), D("60000")),
                                           OpenPosition("d", "BTC-PERP", D("-1"), D("60000")),
                                           OpenPosition("unseen", "BTC-PERP", D("-1"), D("60000"))]
    engine, _pub = make(BatchMargin(), positions)
    engine.on_equities([("c", D("50000")), ("d", D("2000"))])
    cands = {c.account_id: c for c in engine.adl_candidates("BTC-PERP", exclude="b")}
    assert set(cands) == {"c", "d"}                       # no margin seen: not ranked
    assert cands["c"].account_equity_usd == D("50000") and cands["d"].account_equity_usd == D("2000")


@pytest.mark.parametrize("batched", [True, False])
def test_a_bankrupt_account_gets_its_adl_candidates_from_the_batched_read(batched):
    margin = BatchMargin() if batched else FakeMargin()
    positions = FakePositions()
    positions.by_instrument["BTC-PERP"] = [OpenPosition("c", "BTC-PERP", D("-1"), D("60000"))]
    engine, pub = make(margin, positions)
    engine.on_equities([("c", D("50000"))])
    margin.views["b"] = MarginView("b", BANKRUPT, D("-1000"), D("9000"), D("4500"), True, 1, 3, NOW,
                                   (PositionView("BTC-PERP", D("1"), False),))
    engine.on_calls([Call("b", BANKRUPT, True, 1, 3, NOW)])
    for assessment in engine.assess_many(engine.due(NOW, 500)):
        engine.act(assessment)
    assert {"BANKRUPT", "ADL"} <= set(kinds(pub))
    assert any(f.account_id == "c" for f in pub.fills)


def test_the_wire_of_a_recheck_and_of_an_equity_alone_is_validated():
    from marginflow.api.margin.v1 import margin_pb2
    from marginflow.liquidation.adapters import codec
    from marginflow.shared.errors import Rejected

    item = margin_pb2.AccountRecheck()
    m = item.margin
    m.account_id, m.state, m.marks_fresh, m.risk_params_version, m.account_revision = "a", LIQUIDATION, True, 2, 5
    for field, value in (("equity_usd", "2500.00"), ("im_usd", "9006.00"), ("mm_usd", "4503.00"),
                         ("cross_equity_usd", "2500.00"), ("cross_im_usd", "9006.00"), ("cross_mm_usd", "4503.00")):
        getattr(m, field).value = value
    for instrument, size, isolated, relief in (("BTC-PERP", "1.0", False, "6000.00"), ("ETH-PERP", "-2.0", False, "3006.00"),
                                               ("SOL-PERP", "3.0", True, "")):
        p = item.positions.add(instrument=instrument, isolated=isolated)
        p.size.value, p.im_relief_usd.value = size, relief
    view = codec.margin_view(item)
    assert (view.revision, view.risk_version, view.cross_mm_usd) == (5, 2, D("4503.00"))
    assert codec.recheck_reliefs(item, view) == (D("6000.00"), D("3006.00"))   # cross positions, in order
    item.positions[1].im_relief_usd.value = "lots"
    with pytest.raises(Rejected, match="im_relief_usd of ETH-PERP"):
        codec.recheck_reliefs(item, view)
    assert codec.equity_from_proto(m) == ("a", D("2500.00"))
    m.equity_usd.value = "NaN"
    with pytest.raises(Rejected):
        codec.equity_from_proto(m)
    with pytest.raises(Rejected, match="account_id"):
        codec.equity_from_proto(margin_pb2.MarginState())
