"""The application with an in-memory sink: batches flow, rejects are dead-lettered, restore resumes."""

from __future__ import annotations

import math

from marginflow.marketdata.application import MarketDataApp, paced
from marginflow.marketdata.domain.marks import MarkConfig, MarkEngine
from marginflow.marketdata.domain.ticks import RawTick
from marginflow.marketdata.domain.validation import TickValidator
from marginflow.shared.clock import ManualClock

T0 = 1_764_000_000_000


class ListSink:
    def __init__(self):
        self.ticks, self.marks, self.rejects, self.rows, self.flushes = [], [], [], [], 0

    def publish(self, ticks, marks, now_ms):
        self.ticks += ticks
        self.marks += marks

    def reject(self, tick, code, detail):
        self.rejects.append((tick.instrument, code))

    def reject_row(self, line, text, reason):
        self.rows.append(line)

    def flush(self):
        self.flushes += 1


def make_app(universe):
    sink = ListSink()
    app = MarketDataApp(TickValidator(universe), MarkEngine(universe, MarkConfig(interval_ms=0)), sink, ManualClock(T0))
    return app, sink


def test_batch_with_good_and_bad_ticks(universe):
    app, sink = make_app(universe)
    app.process([RawTick(T0, "BTC", 60000.0), RawTick(T0, "BTC-PERP", math.nan), RawTick(T0, "XRP-PERP", 1.0),
                 RawTick(T0 + 1, "BTC-PERP", 60010.0)])
    assert [a.tick.instrument for a in sink.ticks] == ["BTC", "BTC-PERP"]
    assert sorted(sink.rejects) == [("BTC-PERP", "non_finite_price"), ("XRP-PERP", "unknown_instrument")]
    assert {m.instrument for m in sink.marks} == {"index:BTC", "BTC-PERP"}
    assert app.totals.accepted == 2 and app.totals.rejected == 2


def test_restore_skips_ticks_already_published(universe):
    app, sink = make_app(universe)
    app.process([RawTick(T0 + i, "BTC-PERP", 60000.0 + i) for i in range(5)])
    last = dict(app.marks.latest)
    again, sink2 = make_app(universe)
    again.restore(last)
    again.process([RawTick(T0 + i, "BTC-PERP", 60000.0 + i) for i in range(8)])
    assert [a.tick.event_time_ms - T0 for a in sink2.ticks] == [5, 6, 7]
    assert [a.sequence for a in sink2.ticks] == [6, 7, 8]
    assert again.totals.skipped == 5 and sink2.rejects == []


def test_broadcast_delivers_only_wanted_marks(universe):
    app, _sink = make_app(universe)
    sub = app.broadcast.subscribe({"index:ETH"})
    app.process([RawTick(T0, "BTC", 60000.0), RawTick(T0, "ETH", 3000.0)])
    assert [m.instrument for m in sub.get(0.0)] == ["index:ETH"]


def test_paced_release_follows_event_time_at_speed():
    now = [100.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    batches = [[RawTick(T0, "BTC", 1.0)], [RawTick(T0 + 4000, "BTC", 1.0)], [RawTick(T0 + 10000, "BTC", 1.0)]]
    released = []
    for b in paced(batches, 2.0, lambda: now[0], sleep, lambda: False):
        released.append(now[0])
    assert released == [100.0, 102.0, 105.0]          # event time / 2
    fast = list(paced(batches, None, lambda: now[0], sleep, lambda: False))
    assert len(fast) == 3 and released == [100.0, 102.0, 105.0]
