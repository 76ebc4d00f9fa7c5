"""Prometheus metrics of the portfolio service (``marginflow_portfolio_*``)."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from marginflow.shared.metrics import LATENCY_BUCKETS


class PortfolioMetrics:
    """Implements the application's ApplyMetrics port, plus state gauges."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.fills_applied = Counter(
            "marginflow_portfolio_fills_applied_total", "Fills applied to account state", registry=registry)
        self.events_applied = Counter(
            "marginflow_portfolio_events_applied_total", "Account events applied", ["kind"], registry=registry)
        self.duplicates = Counter(
            "marginflow_portfolio_duplicates_ignored_total",
            "Redelivered or republished inputs that changed nothing, by how they were recognised (offset|id)",
            ["by"], registry=registry)
        self.rejected_total = Counter(
            "marginflow_portfolio_rejected_total", "Inputs dead-lettered, by reason", ["reason"], registry=registry)
        self.apply_latency = Histogram(
            "marginflow_portfolio_apply_latency_seconds",
            "Time to apply one consumed batch: load, apply, publish snapshots, write Redis",
            buckets=LATENCY_BUCKETS, registry=registry)
        self.accounts = Gauge("marginflow_portfolio_accounts", "Accounts in the state", registry=registry)
        self.positions = Gauge("marginflow_portfolio_positions", "Open positions (non-zero size)", registry=registry)
        self.rebuild_seconds = Gauge(
            "marginflow_portfolio_rebuild_seconds", "Duration of the last rebuild of Redis from portfolio.positions",
            registry=registry)
        self.rebuilds = Counter(
            "marginflow_portfolio_rebuilds_total", "Rebuilds of the Redis cache from portfolio.positions (start, "
            "or a cache found emptied)", registry=registry)
        self.rebuild_accounts = Gauge(
            "marginflow_portfolio_rebuild_accounts", "Accounts restored by the last rebuild", registry=registry)
        self.fill_ids_indexed = Gauge(
            "marginflow_portfolio_fill_ids_indexed",
            "Fill ids of the consumed trades.fills partitions held to recognise a republished fill", registry=registry)
        self.open_interest_contracts = Gauge(
            "marginflow_portfolio_open_interest_contracts",
            "Open interest of the input partitions this instance owns, as last published to portfolio.open_interest: "
            "contracts per instrument and side (long|short); sum over instances for the venue's",
            ["instrument", "side"], registry=registry)
        self.open_interest_published = Counter(
            "marginflow_portfolio_open_interest_records_total",
            "Records published to portfolio.open_interest (contributions and tombstones)", registry=registry)
        # Children bound once per label value: labels() costs as much as the increment itself.
        self._events_by_kind: dict[str, Counter] = {}
        self._duplicates_by: dict[str, Counter] = {}
        self._rejected_by: dict[str, Counter] = {}

    # ApplyMetrics port
    def applied(self, kind: str, count: int) -> None:
        if kind == "fill":
            self.fills_applied.inc(count)
        else:
            child = self._events_by_kind.get(kind)
            if child is None:
                child = self._events_by_kind[kind] = self.events_applied.labels(kind)
            child.inc(count)

    def duplicate(self, by: str) -> None:
        child = self._duplicates_by.get(by)
        if child is None:
            child = self._duplicates_by[by] = self.duplicates.labels(by)
        child.inc()

    def rejected(self, reason: str) -> None:
        child = self._rejected_by.get(reason)
        if child is None:
            child = self._rejected_by[reason] = self.rejected_total.labels(reason)
        child.inc()

    def batch_seconds(self, seconds: float) -> None:
        self.apply_latency.observe(seconds)

    def open_interest(self, totals, instruments) -> None:
        """This instance's published share per instrument: every instrument set (0 where it holds none)."""
        zero = (0, 0)
        for symbol in instruments:
            lo, sh = totals.get(symbol, zero)
            self.open_interest_contracts.labels(symbol, "long").set(float(lo))
            self.open_interest_contracts.labels(symbol, "short").set(float(sh))


_metrics: PortfolioMetrics | None = None


def portfolio_metrics() -> PortfolioMetrics:
    """The process-wide instance (several service instances in one test process share it)."""
    global _metrics
    if _metrics is None:
        _metrics = PortfolioMetrics()
    return _metrics
