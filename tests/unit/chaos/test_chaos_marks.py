"""Rule 3 at the marks a call names: the marks in force at an event time, from md.marks records, and the
runner's recomputation of each call at its own marks (a fake platform margins a one-position account)."""

from __future__ import annotations

import collections
from decimal import Decimal

from marginflow.api.common.v1 import common_pb2
from marginflow.api.margin.v1 import margin_pb2
from marginflow.api.marketdata.v1 import marketdata_pb2
from marginflow.chaos.application import Options, Ports, Runner
from marginflow.chaos.domain import calls as cc
from marginflow.chaos.domain.marks import MarkHistory
from marginflow.chaos.domain.report import FaultResult
from marginflow.chaos.service import decoders

Record = collections.namedtuple("Record", "key value partition offset timestamp")


def test_marks_in_force_are_the_latest_at_or_before_the_time_per_instrument_and_index():
    h = MarkHistory()
    h.add("BTC-PERP", "BTC", 1000, 60000.0, 59990.0)
    h.add("index:ETH", "ETH", 1000, 0.0, 3000.0)
    h.add("BTC-PERP", "BTC", 2000, 54000.0, 53990.0)
    h.add("index:BTC", "BTC", 2500, 0.0, 54100.0)     # an index record moves BTC's index alone
    h.add("BTC-C-60000", "BTC", 2600, 0.0, 54200.0)   # an option's model price of 0: no mark, but its index
    h.add("BTC-PERP", "BTC", 3000, 60500.0, 60490.0)
    h.add("BTC-PERP", "BTC", 1500, 1.0, 1.0)          # read late, stamped early: in time order
    assert h.at(999) == {}
    assert h.at(1000) == {"BTC-PERP": 60000.0, "index:BTC": 59990.0, "index:ETH": 3000.0}
    assert h.at(1700) == {"BTC-PERP": 1.0, "index:BTC": 1.0, "index:ETH": 3000.0}
    assert h.at(2000) == {"BTC-PERP": 54000.0, "index:BTC": 53990.0, "index:ETH": 3000.0}
    assert h.at(2599) == {"BTC-PERP": 54000.0, "index:BTC": 54100.0, "index:ETH": 3000.0}
    assert h.at(2999) == {"BTC-PERP": 54000.0, "index:BTC": 54200.0, "index:ETH": 3000.0}
    assert h.at(10**13) == {"BTC-PERP": 60500.0, "index:BTC": 60490.0, "index:ETH": 3000.0}
    assert h.records == 7


def test_same_event_time_the_later_record_wins_as_in_the_margin_market():
    h = MarkHistory()
    h.add("BTC-PERP", "BTC", 1000, 60000.0, 60000.0)
    h.add("BTC-PERP", "BTC", 1000, 60100.0, 0.0)       # no index: BTC's stays
    h.add("BTC-PERP", "BTC", 900, 1.0, 1.0)            # older: never in force after 900
    assert h.at(1000) == {"BTC-PERP": 60100.0, "index:BTC": 60000.0}


class _Tail:
    def __init__(self, records) -> None:
        self.records = list(records)

    def catch_up(self, timeout_s: float) -> list:
        out, self.records = self.records, []
        return out


class _Platform:
    """An account long 1 BTC-PERP from 60,000 with 10,000 USDC: IM 9,006, MM 4,503 at revision 5,
    version 1; the market now is 60,500."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, dict]] = []

    def margin_at(self, account_id: str, marks: dict) -> cc.Fresh:
        self.asked.append((account_id, dict(marks)))
        equity = Decimal("10000") + Decimal(repr(marks.get("BTC-PERP", 60500.0))) - Decimal("60000")
        im, mm = Decimal("9006"), Decimal("4503")
        return cc.Fresh(cc.raw_state(equity, im, mm), equity, im, mm, 5, 1, False)


def _mark(symbol: str, t_ms: int, price: float) -> Record:
    m = marketdata_pb2.Mark(instrument=symbol, underlying="BTC", index_price=price, mark_price=price)
    m.meta.event_time_ms = t_ms
    return Record(symbol.encode(), m.SerializeToString(), 0, t_ms, t_ms)


def _call(account: str, offset: int, t_ms: int, state: int, equity: str, previous: int = cc.HEALTHY) -> Record:
    m = margin_pb2.MarginCall(account_id=account, state=state, previous_state=previous, risk_params_version=1,
                              marks_fresh=True, episode=1, account_revision=5,
                              equity_usd=common_pb2.Decimal(value=equity), im_usd=common_pb2.Decimal(value="9006.00"),
                              mm_usd=common_pb2.Decimal(value="4503.00"))
    m.meta.event_time_ms = t_ms
    return Record(account.encode(), m.SerializeToString(), 0, offset, t_ms + 5)


def _runner(calls, marks) -> tuple[Runner, _Platform]:
    platform = _Platform()
    ports = Ports(infra=None, processes=None, platform=platform, flush_redis=lambda: None, generator=None,
                  fills=_Tail([]), events=_Tail([]), dead_letters=_Tail([]), positions=_Tail([]), calls=_Tail(calls),
                  orders=None, marks=_Tail(marks), decode=decoders(), log=lambda _msg: None)
    return Runner(ports, Options(), ["margin"], "a"), platform


MARKS = [_mark("BTC-PERP", 1000, 60000.0), _mark("BTC-PERP", 2000, 54000.0), _mark("BTC-PERP", 3000, 60500.0)]


def test_a_call_is_judged_at_its_own_marks_not_at_the_market_now():
    # Called at 54,000 (equity 4,000 < MM 4,503); the market is back at 60,500 since (10,500 ≥ IM):
    # at the marks now the call would look wrong, at its own marks it is LIQUIDATION again.
    runner, platform = _runner([_call("a", 0, 2000, cc.LIQUIDATION, "4000.00")], MARKS)
    result = FaultResult("test")
    runner._check_calls(result)
    assert platform.asked == [("a", {"BTC-PERP": 54000.0, "index:BTC": 54000.0})]
    assert (result.calls_checked, result.calls_recomputed, result.contradicting_calls) == (1, 1, 0)
    assert "1 of 1 calls recomputed at their marks are in the call's state again" in result.notes


def test_a_call_its_own_marks_do_not_support_is_contradicted():
    # Stamped 3,000 (the market at 60,500: equity 10,500 ≥ IM) yet a LIQUIDATION: a wrong call.
    runner, platform = _runner([_call("b", 0, 3000, cc.LIQUIDATION, "4000.00")], MARKS)
    result = FaultResult("test")
    runner._check_calls(result)
    assert platform.asked == [("b", {"BTC-PERP": 60500.0, "index:BTC": 60500.0})]
    assert result.contradicting_calls == 1
    assert any("recomputation" in n and "marks of 3000 ms" in n and "HEALTHY" in n for n in result.notes)


def test_marks_read_after_the_calls_and_a_call_before_any_mark_is_recomputed_now():
    runner, platform = _runner([_call("a", 0, 0, cc.MARGIN_CALL, "5000.00")], [])
    runner._check_calls(FaultResult("test"))
    assert platform.asked == [("a", {})]                      # no mark at or before 0: the marks now
    runner.p.calls.records = [_call("a", 1, 2000, cc.LIQUIDATION, "4000.00", previous=cc.MARGIN_CALL)]
    runner.p.marks.records = list(MARKS)                      # arrived with the calls since
    result = FaultResult("test")
    runner._check_calls(result)
    assert platform.asked[-1] == ("a", {"BTC-PERP": 54000.0, "index:BTC": 54000.0})
    assert result.contradicting_calls == 0


def test_a_margin_state_read_as_the_checks_compare_it():
    from marginflow.chaos.adapters.grpc_io import fresh

    m = margin_pb2.MarginState(account_id="a", state=cc.LIQUIDATION, account_revision=5, risk_params_version=2,
                               equity_usd=common_pb2.Decimal(value="4000.01"),
                               im_usd=common_pb2.Decimal(value="9006.00"), mm_usd=common_pb2.Decimal(value="4503.00"))
    assert fresh(m) == cc.Fresh(cc.LIQUIDATION, Decimal("4000.01"), Decimal("9006.00"), Decimal("4503.00"), 5, 2, False)
    m.isolated.add(instrument="BTC-PERP")
    assert fresh(m).has_isolated and fresh(margin_pb2.MarginState()).equity_usd == 0
