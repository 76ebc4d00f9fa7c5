"""Prometheus metrics of riskparams (``marginflow_riskparams_*``), the Metrics port's adapter."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from collections.abc import Sequence

from marginflow.riskparams.application import IngestReport, RiskParamsVersion, UnderlyingSignals

ESTIMATORS = ("ewma_fast", "ewma_slow", "garch", "implied", "floor", "base", "margin")


class PrometheusMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY,
                 wall_s: Callable[[], float] = time.time) -> None:
        self._wall_s = wall_s
        p = "marginflow_riskparams_"
        self.records = Counter(p + "records_total", "Input records by source topic and outcome",
                               ["source", "outcome"], registry=registry)
        self.returns = Counter(p + "returns_total", "Sampling intervals closed (returns folded in)",
                               registry=registry)
        self.garch_failures = Counter(p + "garch_fit_failures_total",
                                      "GARCH(1,1) fits that failed or were degenerate (EWMA used instead)",
                                      ["underlying", "reason"], registry=registry)
        self.garch_fallback = Gauge(p + "garch_fallback", "1 while σ_garch falls back to EWMA",
                                    ["underlying"], registry=registry)
        self.sigma = Gauge(p + "sigma_annual", "Volatility estimates, annualised", ["underlying", "estimator"],
                           registry=registry)
        self.sigma_margin = Gauge(p + "sigma_margin_annual", "Margin volatility σ_m, annualised", ["underlying"],
                                  registry=registry)
        self.buffer = Gauge(p + "apc_buffer_ratio", "Anti-procyclicality buffer in force (0 = released)",
                            ["underlying"], registry=registry)
        self.stress = Gauge(p + "stress", "1 while the underlying is in stress (buffer released)",
                            ["underlying"], registry=registry)
        self.age = Gauge(p + "params_age_seconds", "Wall seconds since the underlying's estimates last changed",
                         ["underlying"], registry=registry)
        self.version_gauge = Gauge(p + "version", "Latest published parameter version", registry=registry)
        self.bootstrap = Gauge(p + "fhs_bootstrap", "1 while the bootstrap scenario set is published",
                               registry=registry)
        self.repairs = Counter(p + "correlation_repairs_total", "Versions whose correlation needed PSD repair",
                               registry=registry)
        self.lag_seconds = Gauge(p + "processing_lag_seconds",
                                 "Wall time minus the Kafka timestamp of the last record processed",
                                 registry=registry)
        self.consumer_lag = Gauge(p + "consumer_lag_records", "md.ticks records not yet consumed",
                                  registry=registry)
        tenor = ["underlying", "tenor_days"]
        self.signal_atm = Gauge(p + "signal_atm_vol", "ATM implied vol at a tenor, annualised (0 = no options)",
                                tenor, registry=registry)
        self.signal_skew = Gauge(p + "signal_skew_25d", "25-delta skew at a tenor: put vol − call vol, annualised",
                                 tenor, registry=registry)
        self.signal_ratio = Gauge(p + "signal_realised_implied_ratio",
                                  "EWMA-fast realised vol / ATM implied vol (0 without options)", ["underlying"],
                                  registry=registry)
        self.signal_depth_usd = Gauge(p + "signal_depth_usd",
                                      "Book depth within the reference distance, thinner side, USD", ["underlying"],
                                      registry=registry)
        self.signal_depth_index = Gauge(p + "signal_depth_index",
                                        "Book depth / its event-time EWMA (1 = usual; 0 before any depth curve)",
                                        ["underlying"], registry=registry)
        self._updated: dict[str, float] = {}
        self._last_sample: dict[str, int] = {}

    def ticks(self, report: IngestReport, source: str) -> None:
        r = self.records
        r.labels(source, "accepted").inc(report.accepted)
        if report.ignored:
            r.labels(source, "ignored").inc(report.ignored)
        if report.late:
            r.labels(source, "late").inc(report.late)
        if report.rejected:
            r.labels(source, "rejected").inc(len(report.rejected))
        if report.returns:
            self.returns.inc(report.returns)

    def garch_failure(self, underlying: str, reason: str) -> None:
        self.garch_failures.labels(underlying, reason).inc()

    def lag(self, lag_seconds: float) -> None:
        self.lag_seconds.set(lag_seconds)

    def records_behind(self, n: int) -> None:
        self.consumer_lag.set(n)

    def signals(self, signals: Sequence[UnderlyingSignals]) -> None:
        for s in signals:
            u = s.underlying
            for t in s.tenors:
                label = f"{t.tenor_days:g}"
                self.signal_atm.labels(u, label).set(t.atm_vol)
                self.signal_skew.labels(u, label).set(t.skew_25d)
            self.signal_ratio.labels(u).set(s.realised_implied_ratio)
            self.signal_depth_usd.labels(u).set(s.depth_usd)
            self.signal_depth_index.labels(u).set(s.depth_index)

    def version(self, version: RiskParamsVersion, now_ms: int) -> None:
        now_s = self._wall_s()
        for e in version.underlyings:
            u = e.underlying
            for name, value in zip(ESTIMATORS, (e.sigma_ewma_fast, e.sigma_ewma_slow, e.sigma_garch, e.sigma_implied,
                                                e.sigma_floor, e.sigma_base, e.sigma_margin)):
                self.sigma.labels(u, name).set(value)
            self.sigma_margin.labels(u).set(e.sigma_margin)
            self.buffer.labels(u).set(e.apc_buffer)
            self.stress.labels(u).set(1.0 if e.stress else 0.0)
            self.garch_fallback.labels(u).set(0.0 if e.garch_ok else 1.0)
            if self._last_sample.get(u) != e.last_event_time_ms or u not in self._updated:
                self._last_sample[u] = e.last_event_time_ms
                self._updated[u] = now_s
                self.age.labels(u).set_function(lambda u=u: self._wall_s() - self._updated[u])
        self.version_gauge.set(version.version)
        self.bootstrap.set(1.0 if version.historical.bootstrap else 0.0)
        if version.correlation_repaired:
            self.repairs.inc()
