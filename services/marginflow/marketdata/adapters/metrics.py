"""Prometheus metrics of marketdata."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from marginflow.marketdata.domain.ticks import MarkValue
from marginflow.shared.metrics import LATENCY_BUCKETS


class MarketDataMetrics:
    def __init__(self, latest_marks: Callable[[], dict[str, MarkValue]], registry: CollectorRegistry = REGISTRY,
                 wall_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> None:
        self._in = Counter("marginflow_md_ticks_in_total", "Ticks received from the source", registry=registry)
        self._pub = Counter("marginflow_md_ticks_published_total", "Validated ticks published to md.ticks",
                            registry=registry)
        self._marks = Counter("marginflow_md_marks_published_total", "Marks published to md.marks", registry=registry)
        self._rej = Counter("marginflow_md_ticks_rejected_total", "Ticks dead-lettered, by reason", ["reason"],
                            registry=registry)
        self._skip = Counter("marginflow_md_ticks_skipped_total",
                             "Replayed ticks skipped as already published before a restart", registry=registry)
        self._lat = Histogram("marginflow_md_publish_latency_seconds", "Time to flush a batch to Kafka",
                              buckets=LATENCY_BUCKETS, registry=registry)
        latest, wall = latest_marks, wall_ms

        class _MarkAge:
            def collect(self):
                g = GaugeMetricFamily("marginflow_md_mark_age_seconds",
                                      "Wall time since the event time of the latest mark", labels=["instrument"])
                now = wall()
                for sym, m in list(latest().items()):
                    if sym.startswith("index:") or "-" in sym and sym.endswith("PERP"):
                        g.add_metric([sym], max(0.0, (now - m.event_time_ms) / 1000.0))
                yield g

        registry.register(_MarkAge())

    def ticks_in(self, n: int) -> None:
        self._in.inc(n)

    def published(self, ticks: int, marks: int) -> None:
        self._pub.inc(ticks)
        self._marks.inc(marks)

    def rejected(self, code: str) -> None:
        self._rej.labels(code).inc()

    def publish_latency(self, seconds: float) -> None:
        self._lat.observe(seconds)

    def skipped(self, n: int) -> None:
        self._skip.inc(n)
