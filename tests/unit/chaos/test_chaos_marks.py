"""Rule 3 at the marks a call names: the marks in force at an event time, from md.marks records, and the
runner's recomputation of each call at its own marks (a fake platform margins a one-position account)."""

from __future__ import annotations

import collections
from decimal import Decimal

from marginflow.api.account.v1 import account_pb2
from marginflow.api.common.v1 import common_pb2
from marginflow.api.liquidation.v1 import liquidation_pb2
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
        self.vols: list[dict] = []
        self.current = (Decimal("10000"), Decimal(1), Decimal("60000"), 5)   # cash, size, entry, revision now

    def margin_at(self, account_id: str, marks: dict, book: bytes | None = None, risk_version: int = 0,
                  vols: dict | None = None) -> cc.Fresh | None:
        self.asked.append((account_id, dict(marks)))
        self.vols.append(dict(vols or {}))
        if risk_version not in (0, 1):
            return None                                  # the service holds version 1 alone
        cash, size, entry, revision = self.current
        if book is not None:                             # the book given: a portfolio.positions snapshot
            snap = account_pb2.AccountSnapshot.FromString(book)
            cash = sum((Decimal(b.amount.value) for b in snap.balances), Decimal(0))
            size = sum((Decimal(p.size.value) for p in snap.positions), Decimal(0))
            entry = Decimal(snap.positions[0].entry_price.value) if snap.positions else Decimal(0)
            revision = int(snap.revision)
        equity = cash + size * (Decimal(repr(marks.get("BTC-PERP", 60500.0))) - entry)
        im, mm = Decimal("9006") * abs(size), Decimal("4503") * abs(size)
        return cc.Fresh(cc.raw_state(equity, im, mm), equity, im, mm, revision, 1, False)


def _mark(symbol: str, t_ms: int, price: float, iv: float = 0.0) -> Record:
    m = marketdata_pb2.Mark(instrument=symbol, underlying="BTC", index_price=price, mark_price=price, implied_vol=iv)
    m.meta.event_time_ms = t_ms
    return Record(symbol.encode(), m.SerializeToString(), 0, t_ms, t_ms)


def _call(account: str, offset: int, t_ms: int, state: int, equity: str, previous: int = cc.HEALTHY) -> Record:
    m = margin_pb2.MarginCall(account_id=account, state=state, previous_state=previous, risk_params_version=1,
                              marks_fresh=True, episode=1, account_revision=5,
                              equity_usd=common_pb2.Decimal(value=equity), im_usd=common_pb2.Decimal(value="9006.00"),
                              mm_usd=common_pb2.Decimal(value="4503.00"))
    m.meta.event_time_ms = t_ms
    return Record(account.encode(), m.SerializeToString(), 0, offset, t_ms + 5)


def _runner(calls, marks, positions=(), orders=None, steps=()) -> tuple[Runner, _Platform]:
    platform = _Platform()
    ports = Ports(infra=None, processes=None, platform=platform, flush_redis=lambda: None, generator=None,
                  fills=_Tail([]), events=_Tail([]), dead_letters=_Tail([]), positions=_Tail(positions),
                  calls=_Tail(calls), orders=_Tail(orders or []), steps=_Tail(steps), marks=_Tail(marks),
                  decode=decoders(), log=lambda _msg: None)
    return Runner(ports, Options(), ["margin"], "a"), platform


def _snapshot(account: str, revision: int, size: str, usdc: str = "10000", offset: int = 0) -> Record:
    s = account_pb2.AccountSnapshot(account_id=account, revision=revision)
    s.balances.add(asset="USDC").amount.value = usdc
    if size != "0":
        p = s.positions.add(instrument="BTC-PERP")
        p.size.value, p.entry_price.value = size, "60000"
    return Record(account.encode(), s.SerializeToString(), 0, offset, 0)


def _order(account: str, episode: int, slice_: int, offset: int = 0) -> Record:
    o = liquidation_pb2.LiquidationOrder(order_id=f"{account}:{episode}:{slice_}", account_id=account, episode=episode,
                                         slice=slice_)
    return Record(account.encode(), o.SerializeToString(), 0, offset, 0)


def _step(account: str, episode: int, revision: int, marks_ms: int, version: int = 1, offset: int = 0,
          kind: int = liquidation_pb2.LIQUIDATION_EVENT_KIND_STARTED) -> Record:
    e = liquidation_pb2.LiquidationEvent(kind=kind, account_id=account, episode=episode, risk_version=version,
                                         account_revision=revision, marks_time_ms=marks_ms)
    return Record(account.encode(), e.SerializeToString(), 0, offset, marks_ms + 50)


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


def test_an_episode_is_judged_on_the_book_and_marks_its_start_names_not_the_account_now():
    # Revision 5: long 1 from 60,000 with 10,000 USDC; at 54,000 equity 4,000 < MM 4,503 — the episode started
    # on revision 5 at the marks of 2,000 ms. Since, the account was closed out (revision 7: flat, 3,990 USDC)
    # and the market is back at 60,500: today's account says nothing about the start.
    positions = [_snapshot("a", 5, "1", offset=0), _snapshot("a", 6, "0.5", "7000", 1), _snapshot("a", 7, "0", "3990", 2)]
    steps = [_step("a", 1, 5, 2000), _step("a", 1, 6, 2500, offset=1, kind=liquidation_pb2.LIQUIDATION_EVENT_KIND_ORDER_SENT)]
    runner, platform = _runner([], MARKS, positions, [_order("a", 1, 0), _order("a", 1, 1, 1)], steps)
    result = FaultResult("test")
    runner._check_orders(result)
    # one recomputation: the start at its own marks; other steps and the orders are not recomputed
    assert platform.asked == [("a", {"BTC-PERP": 54000.0, "index:BTC": 54000.0})]
    assert (result.orders_checked, result.episodes_started, result.episodes_judged, result.bad_orders) == (2, 1, 1, 0)
    assert any("1 episodes started; 1 recomputed" in n and "1 of them in LIQUIDATION or BANKRUPT again" in n
               for n in result.notes)


def test_an_episode_started_on_inputs_that_are_healthy_is_unfounded_and_a_repeated_order_id_a_double():
    # The start names revision 5 at the marks of 3,000 ms (60,500): equity 10,500 ≥ IM 9,006.
    runner, _platform = _runner([], MARKS, [_snapshot("b", 5, "1")], [_order("b", 2, 0), _order("b", 2, 0, 1)],
                                [_step("b", 2, 5, 3000)])
    result = FaultResult("test")
    runner._check_orders(result)
    assert (result.bad_orders, result.episodes_judged) == (2, 1)      # the start unfounded, the order doubled
    assert any("episode_unfounded" in n and "revision 5, version 1 and the marks of 3000 ms" in n and "HEALTHY" in n
               for n in result.notes)
    assert any("order id b:2:0 again" in n for n in result.notes)


def test_an_episode_is_not_judged_without_the_snapshot_of_its_revision_at_another_version_or_naming_nothing():
    positions = [_snapshot("c", 9, "1"), _snapshot("d", 5, "1", offset=1), _snapshot("e", 5, "1", offset=2)]
    steps = [_step("c", 1, 8, 3000), _step("d", 1, 5, 3000, version=2, offset=1), _step("e", 1, 0, 0, offset=2)]
    runner, platform = _runner([], MARKS, positions, [], steps)
    result = FaultResult("test")
    runner._check_orders(result)
    assert [a for a, _m in platform.asked] == ["d"]     # c's revision 8 was not kept, e names no inputs
    assert (result.episodes_started, result.episodes_judged, result.bad_orders) == (3, 0, 0)
    note = next(n for n in result.notes if "episodes started" in n)
    assert "1 without the snapshot of their revision" in note and "1 not answered (a risk version margin" in note
    assert "1 naming no inputs" in note


def test_the_snapshots_of_an_account_s_recent_revisions_are_kept_and_a_tombstone_forgets_them():
    from marginflow.chaos.application import SNAPSHOT_REVISIONS

    records = [_snapshot("e", r, "1", offset=r) for r in range(1, SNAPSHOT_REVISIONS + 3)]
    runner, _platform = _runner([], [], records)
    runner._read_positions()
    assert runner._snapshot_at("e", 1) is None and runner._snapshot_at("e", 2) is None     # the oldest dropped
    kept = runner._snapshot_at("e", 3)
    assert kept is not None and account_pb2.AccountSnapshot.FromString(kept).revision == 3
    runner.p.positions.records = [Record(b"e", None, 0, 99, 0)]
    runner._read_positions()
    assert runner._snapshot_at("e", SNAPSHOT_REVISIONS + 2) is None


def test_a_call_is_recomputed_on_the_book_of_its_revision_when_the_account_has_traded_since():
    # The call: revision 5 (long 1 from 60,000, 10,000 USDC) at 54,000 — LIQUIDATION. The account was closed
    # since (revision 7): on its current book nothing could be compared; on revision 5's it is the call again.
    positions = [_snapshot("a", 5, "1"), _snapshot("a", 7, "0", "3990", 1)]
    runner, platform = _runner([_call("a", 0, 2000, cc.LIQUIDATION, "4000.00")], MARKS, positions)
    platform.current = (Decimal("3990"), Decimal(0), Decimal(0), 7)
    result = FaultResult("test")
    runner._check_calls(result)
    assert platform.asked == [("a", {"BTC-PERP": 54000.0, "index:BTC": 54000.0})]
    assert (result.calls_recomputed, result.contradicting_calls) == (1, 0)
    assert "1 of 1 calls recomputed at their marks are in the call's state again" in result.notes


def test_one_revision_published_again_with_another_book_is_a_mismatch_and_a_republished_same_book_is_not():
    same = _snapshot("f", 4, "1", offset=1)
    again = account_pb2.AccountSnapshot.FromString(same.value)
    again.meta.publish_time_ms = 777        # republished after a restart: the same book, other metadata
    other = _snapshot("f", 4, "2", offset=3)  # the same revision with another position: a state never published
    records = [same, Record(b"f", again.SerializeToString(), 0, 2, 0), other]
    runner, _platform = _runner([], [], records)
    runner._read_positions()
    assert len(runner.revisions_reused) == 1 and "f revision 4 published again" in runner.revisions_reused[0]
    assert "@0:3" in runner.revisions_reused[0]


def test_a_call_is_recomputed_at_the_options_vols_of_its_time_too():
    # An option's vol falls from 1.07 to 0.73 after the call: the recomputation is asked at 1.07 (the market of the
    # call), not at the vol of the check; a linear instrument has no vol to give.
    marks = MARKS + [_mark("BTC-C-60000", 1500, 3000.0, iv=1.07), _mark("BTC-C-60000", 2500, 2000.0, iv=0.73)]
    runner, platform = _runner([_call("a", 0, 2000, cc.LIQUIDATION, "4000.00")], marks)
    runner._check_calls(FaultResult("test"))
    assert platform.vols == [{"BTC-C-60000": 1.07}]
    assert platform.asked[0][1]["BTC-C-60000"] == 3000.0
