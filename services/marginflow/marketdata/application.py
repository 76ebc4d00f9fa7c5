"""The marketdata application: source → validation → index/mark → publish, with its ports passed in.

``sink`` publishes (Kafka in production, a list in tests); ``metrics`` counts; ``clock`` gives
wall time for publish stamps and pacing. Event time always comes from the ticks themselves.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from marginflow.marketdata.domain.marks import MarkEngine
from marginflow.marketdata.domain.ticks import AcceptedTick, MarkValue, RawTick
from marginflow.marketdata.domain.validation import TickValidator
from marginflow.shared.clock import Clock
from marginflow.shared.fanout import Fanout
from marginflow.shared.metrics import NullMetrics


class Sink(Protocol):
    def publish(self, ticks: list[AcceptedTick], marks: list[MarkValue], now_ms: int) -> None: ...
    def reject(self, tick: RawTick, code: str, detail: str) -> None: ...
    def reject_row(self, line: int, text: str, reason: str) -> None: ...
    def flush(self) -> None: ...


class Metrics(Protocol):
    def ticks_in(self, n: int) -> None: ...
    def published(self, ticks: int, marks: int) -> None: ...
    def rejected(self, code: str) -> None: ...
    def publish_latency(self, seconds: float) -> None: ...
    def skipped(self, n: int) -> None: ...


@dataclasses.dataclass
class Totals:
    ticks_in: int = 0
    accepted: int = 0
    rejected: int = 0
    marks: int = 0
    skipped: int = 0


def mark_broadcast() -> Fanout[MarkValue]:
    """Fan-out of new marks to gRPC stream subscribers (keyed by instrument symbol)."""
    return Fanout(key=lambda m: m.instrument)


class MarketDataApp:
    def __init__(self, validator: TickValidator, marks: MarkEngine, sink: Sink, clock: Clock,
                 metrics: Metrics | None = None, broadcast: Fanout[MarkValue] | None = None) -> None:
        self.validator = validator
        self.marks = marks
        self.sink = sink
        self.clock = clock
        self.metrics = metrics or NullMetrics()
        self.broadcast = broadcast or mark_broadcast()
        self.totals = Totals()
        self._resume_after: dict[str, int] = {}

    def restore(self, last: dict[str, MarkValue]) -> None:
        """Resume from the last published marks: sequences, times and smoothing continue, and
        ticks at or before an instrument's last published time are skipped (replay resume)."""
        for symbol, mark in last.items():
            self.marks.restore(mark)
            instrument = mark.underlying if symbol.startswith("index:") else symbol
            self.validator.restore(instrument, mark.event_time_ms,
                                   mark.index_price if symbol.startswith("index:") else mark.mark_price,
                                   mark.sequence)
            self._resume_after[instrument] = mark.event_time_ms

    def process(self, ticks: list[RawTick]) -> None:
        """Validate, mark and publish one batch of ticks."""
        if self._resume_after:
            kept = [t for t in ticks if t.event_time_ms > self._resume_after.get(t.instrument, -(2**62))]
            if len(kept) != len(ticks):
                self.totals.skipped += len(ticks) - len(kept)
                self.metrics.skipped(len(ticks) - len(kept))
            ticks = kept
        self.totals.ticks_in += len(ticks)
        self.metrics.ticks_in(len(ticks))
        outcome = self.validator.process(ticks)
        for r in outcome.rejected:
            self.sink.reject(r.tick, r.code, r.detail)
            self.metrics.rejected(r.code)
        new_marks = self.marks.update(outcome.accepted)
        start = self.clock.now_ms()
        self.sink.publish(outcome.accepted, new_marks, start)
        self.totals.accepted += len(outcome.accepted)
        self.totals.rejected += len(outcome.rejected)
        self.totals.marks += len(new_marks)
        self.metrics.published(len(outcome.accepted), len(new_marks))
        if new_marks:
            self.broadcast.publish(new_marks)

    def bad_row(self, line: int, text: str, reason: str) -> None:
        self.totals.rejected += 1
        self.sink.reject_row(line, text, reason)
        self.metrics.rejected("malformed_row")

    def flush(self) -> None:
        start = self.clock.now_ms()
        self.sink.flush()
        self.metrics.publish_latency((self.clock.now_ms() - start) / 1000.0)


def paced(batches: Iterable[list[RawTick]], speed: float | None, now_s: Callable[[], float],
          sleep: Callable[[float], None], stopping: Callable[[], bool]) -> Iterator[list[RawTick]]:
    """Release batches at ``speed`` × event time (None = as fast as possible).

    The first tick's event time is pinned to the wall time at start; a batch is released once
    the wall clock has reached its first tick's pinned time.
    """
    origin: tuple[float, int] | None = None
    for batch in batches:
        if stopping():
            return
        if not batch:
            continue
        if speed is not None:
            first = batch[0].event_time_ms
            if origin is None:
                origin = (now_s(), first)
            due = origin[0] + (first - origin[1]) / 1000.0 / speed
            while not stopping():
                wait = due - now_s()
                if wait <= 0:
                    break
                sleep(min(wait, 0.2))
        yield batch
