"""Recovery of the liquidation engine: a bankruptcy resolution is decided once and published as decided —
a publication that failed (the broker's acknowledgement too late: the records may have landed) is retried with
the same records before anything else, never computed again; an isolated part resolved in a live episode is
rebuilt from liquidation.events and not resolved again after a restart."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from marginflow.liquidation.application import (
    BANKRUPT, LIQUIDATION, Call, EngineSettings, Event, FundLedger, LiquidationEngine, MarginView, MarkSeen,
    OpenPosition, PositionView, StateSeen, instrument_infos)
from marginflow.liquidation.domain import FundSettings, GuardSettings, PlanSettings
from marginflow.shared.metrics import NullMetrics
from test_liq_application import NOW, UNIVERSE, FakeCache, FakeMargin, FakePositions, FakePublisher, kinds, step
from test_liq_isolated import mixed


class FlakyPublisher(FakePublisher):
    """Takes the effects, then fails ``failures`` times as if the acknowledgement came too late."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.attempts: list[tuple] = []

    def publish_effects(self, fills, deposits, fund):
        self.attempts.append((tuple(fills), tuple(deposits)))
        super().publish_effects(fills, deposits, fund)
        if self.failures > 0:
            self.failures -= 1
            raise TimeoutError("Timeout waiting for future")


def engine_with(pub, margin, positions, ledger=None):
    settings = EngineSettings(PlanSettings(), GuardSettings(), FundSettings(), round_interval_ms=0)
    engine = LiquidationEngine(settings, instrument_infos(UNIVERSE), margin, positions, pub,
                               ledger or FundLedger(D("5000"), 100, 100), FakeCache(), lambda: NOW, NullMetrics())
    engine.on_marks([MarkSeen("BTC-PERP", 51000.0, 51000.0, NOW, 0.0001, 1000.0),
                     MarkSeen("ETH-PERP", 3000.0, 3000.0, NOW, 0.0001, 1000.0)])
    return engine


def bankrupt_view(equity="-1000"):
    return MarginView("b", BANKRUPT, D(equity), D("9000"), D("4500"), True, 1, 3, NOW,
                      (PositionView("BTC-PERP", D("1"), False),))


def test_a_failed_publication_of_a_takeover_is_retried_as_decided_not_computed_again():
    margin, positions, pub = FakeMargin(), FakePositions(), FlakyPublisher(failures=2)
    engine = engine_with(pub, margin, positions)
    margin.views["b"] = bankrupt_view()
    engine.on_calls([Call("b", BANKRUPT, True, 1, 3, NOW)])
    with pytest.raises(TimeoutError):
        step(engine)
    assert not engine.accounts["b"].live                 # decided: the episode is over, whatever the broker said
    # the margin moves on (another mark, the account deeper below zero); the next turns only retry
    margin.views["b"] = bankrupt_view("-1500")
    engine.on_marks([MarkSeen("BTC-PERP", 50500.0, 50500.0, NOW + 1, 0.0001, 1000.0)])
    with pytest.raises(TimeoutError):
        engine.begin_batch()
    engine.begin_batch()
    engine.end_batch()
    step(engine)
    assert len(set(pub.attempts)) == 1 and len(pub.attempts) == 3      # the same records, three times
    assert kinds(pub).count("BANKRUPT") == 1 and kinds(pub).count("FUND_TAKEOVER") == 1
    assert kinds(pub).count("DEFICIT_COVERED") == 1
    assert engine.ledger.balance == D("4000.00")                       # the deficit paid once
    engine.begin_batch()                                               # nothing left to send
    assert len(pub.attempts) == 3


def test_a_restart_rebuilds_the_isolated_parts_resolved_and_resolves_none_again():
    margin, positions, pub = FakeMargin(), FakePositions(), FakePublisher()
    engine = engine_with(pub, margin, positions)
    margin.views["m"] = mixed(iso_equity="-30")
    positions.by_instrument["ETH-PERP"] = [OpenPosition("c", "ETH-PERP", D("-1"), D("2500"))]
    engine.on_states([StateSeen("c", 1, D("50000"), D("9000"), D("4500"), True, NOW)])
    engine.on_calls([Call("m", LIQUIDATION, True, 1, 3, NOW)])
    step(engine)
    step(engine)
    assert kinds(pub).count("FUND_TAKEOVER") == 1 and engine.accounts["m"].live
    # a new process: the ledger as last published, the events as acknowledged; margin still shows the
    # isolated part below zero (portfolio has not applied the take-over yet)
    ledger = FundLedger(D("5000"), 100, 100)
    ledger.restore(pub.funds[-1])
    again = FakePublisher()
    restarted = engine_with(again, margin, positions, ledger)
    restarted.on_states([StateSeen("c", 1, D("50000"), D("9000"), D("4500"), True, NOW)])
    restarted.rebuild(list(pub.events))
    assert "ETH-PERP" in restarted.accounts["m"].resolved_ms and restarted.accounts["m"].live
    step(restarted)
    step(restarted)
    assert "FUND_TAKEOVER" not in kinds(again) and again.fills == [] and again.deposits == []


def test_a_new_episode_forgets_the_parts_resolved_in_the_previous_one():
    events = [Event("STARTED", "m", 1, NOW), Event("FUND_TAKEOVER", "m", 1, NOW, instrument="ETH-PERP"),
              Event("RESTORED", "m", 1, NOW), Event("STARTED", "m", 2, NOW + 1)]
    engine = engine_with(FakePublisher(), FakeMargin(), FakePositions())
    engine.rebuild(events)
    t = engine.accounts["m"]
    assert t.live and t.episode.number == 2 and t.resolved_ms == {}


def test_the_started_event_of_a_turn_goes_before_the_resolution_that_ends_its_episode():
    """An account below zero at its first assessment: STARTED and the resolution in one turn. STARTED is
    published first, so a restart rebuilds the episode as ended (it would start it again, and resolve the
    bankruptcy a second time, were BANKRUPT first)."""
    margin, positions, pub = FakeMargin(), FakePositions(), FakePublisher()
    engine = engine_with(pub, margin, positions)
    margin.views["b"] = bankrupt_view()
    engine.on_calls([Call("b", BANKRUPT, True, 1, 3, NOW)])
    engine.begin_batch()
    step(engine)
    engine.end_batch()
    assert kinds(pub)[:2] == ["STARTED", "BANKRUPT"]
    restarted = engine_with(FakePublisher(), margin, positions)
    restarted.rebuild(list(pub.events))
    assert not restarted.accounts["b"].live and restarted.accounts["b"].last_number == 1


def test_a_log_with_the_resolution_before_started_still_rebuilds_the_episode_as_ended():
    events = [Event("STARTED", "b", 3, NOW), Event("BANKRUPT", "b", 3, NOW),
              Event("BANKRUPT", "b", 4, NOW + 1), Event("FUND_TAKEOVER", "b", 4, NOW + 1, instrument="BTC-PERP"),
              Event("STARTED", "b", 4, NOW + 1)]
    engine = engine_with(FakePublisher(), FakeMargin(), FakePositions())
    engine.rebuild(events)
    t = engine.accounts["b"]
    assert not t.live and t.episode.number == 4 and t.last_number == 4
