"""Prometheus metrics of the margin service (``marginflow_margin_*``); implements ``EngineMetrics``."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from marginflow.margin.domain.health import Health
from marginflow.margin.domain.results import ChangeCause
from marginflow.shared.metrics import LATENCY_BUCKETS

RECALC_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class MarginMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.full_recalc_seconds = Histogram(
            "marginflow_margin_full_recalc_seconds", "Full recalculation (core compute + valuation + publication)",
            buckets=RECALC_BUCKETS, registry=registry)
        self.full_recalc_accounts = Gauge(
            "marginflow_margin_full_recalc_accounts", "Accounts in the last full recalculation", registry=registry)
        self.incremental_seconds = Histogram(
            "marginflow_margin_incremental_latency_seconds", "One account recomputed after a position/collateral change",
            buckets=LATENCY_BUCKETS, registry=registry)
        self.what_if_seconds = Histogram(
            "marginflow_margin_what_if_latency_seconds", "WhatIf computation (before and after), in-process",
            buckets=LATENCY_BUCKETS, registry=registry)
        self.accounts = Gauge("marginflow_margin_accounts", "Owned accounts by health state", ["state"],
                              registry=registry)
        self.mark_age_seconds = Gauge(
            "marginflow_margin_mark_age_seconds", "Event-time age of the oldest mark held, behind the newest",
            registry=registry)
        self.marks_event_time = Gauge(
            "marginflow_margin_marks_event_time_seconds", "Event time of the newest mark", registry=registry)
        self.risk_params_version = Gauge(
            "marginflow_margin_risk_params_version", "Risk-parameter version in force", registry=registry)
        self.risk_params_age_seconds = Gauge(
            "marginflow_margin_risk_params_age_seconds", "Wall-clock age of the version in force since it was published",
            registry=registry)
        self.states_published = Counter(
            "marginflow_margin_states_published_total", "MarginState records published", registry=registry)
        self.calls_published = Counter(
            "marginflow_margin_calls_published_total", "MarginCall records published", registry=registry)
        self.calls = Counter(
            "marginflow_margin_calls_total", "Margin calls by state entered and by the cause that moved the account "
            "most (repeat: the episode had reached that state already)", ["state", "cause", "repeat"],
            registry=registry)
        self.rejected = Counter(
            "marginflow_margin_rejected_total", "Inputs dead-lettered, by reason", ["reason"], registry=registry)
        self.snapshot_parts = Counter(
            "marginflow_margin_snapshot_parts_total", "Restart-snapshot parts at a start or an assignment, by kind "
            "(positions, published) and result (used; missing, corrupt, mismatch, stale: that partition read "
            "from its beginning)", ["kind", "result"], registry=registry)
        self.snapshot_writes = Counter(
            "marginflow_margin_snapshot_writes_total", "Restart snapshots written, by result (ok, failed)",
            ["result"], registry=registry)
        self.snapshot_write_seconds = Histogram(
            "marginflow_margin_snapshot_write_seconds", "Writing one restart snapshot (read-back, encoding, "
            "acknowledged)", buckets=RECALC_BUCKETS + (30.0, 60.0), registry=registry)
        self.snapshot_bytes = Gauge(
            "marginflow_margin_snapshot_bytes", "Payload of the last restart snapshot written", registry=registry)
        self.restore_seconds = Gauge(
            "marginflow_margin_restore_seconds", "Last start or assignment: snapshot parts read and applied",
            registry=registry)
        self.model_builds = Counter(
            "marginflow_margin_model_builds_total", "Models built (risk arrays and add-ons over the universe, then a "
            "full recalculation), by reason: version (a new risk-parameter version), refresh (the periodic rebuild "
            "at current marks), price or vol (re-centred: a forward or an option's implied vol left its band since "
            "the last build), first_marks, ready", ["reason"], registry=registry)
        self._call_children: dict = {}
        self._state_children = {s: self.accounts.labels(s.name.lower()) for s in Health if s != Health.UNSPECIFIED}

    # EngineMetrics port
    def model_built(self, reason: str) -> None:
        self.model_builds.labels(reason).inc()

    def full_recalc(self, seconds: float, accounts: int) -> None:
        self.full_recalc_seconds.observe(seconds)
        self.full_recalc_accounts.set(accounts)

    def incremental(self, seconds: float) -> None:
        self.incremental_seconds.observe(seconds)

    def accounts_by_state(self, counts: dict[int, int]) -> None:
        for state, child in self._state_children.items():
            child.set(counts.get(int(state), 0))

    def marks(self, oldest_age_seconds: float, newest_event_ms: int) -> None:
        self.mark_age_seconds.set(oldest_age_seconds)
        self.marks_event_time.set(newest_event_ms / 1e3)

    def risk_params(self, version: int, age_seconds: float) -> None:
        self.risk_params_version.set(version)
        self.risk_params_age_seconds.set(age_seconds)

    def published(self, states: int, calls: int) -> None:
        self.states_published.inc(states)
        self.calls_published.inc(calls)

    def call(self, state: int, cause: int, repeat: bool, count: int = 1) -> None:
        key = (state, cause, repeat)
        child = self._call_children.get(key)
        if child is None:
            child = self._call_children[key] = self.calls.labels(
                Health(state).name.lower(), ChangeCause(cause).name.lower(), "true" if repeat else "false")
        child.inc(count)


_metrics: MarginMetrics | None = None


def margin_metrics() -> MarginMetrics:
    """The process-wide instance (several service instances in one test process share it)."""
    global _metrics
    if _metrics is None:
        _metrics = MarginMetrics()
    return _metrics
