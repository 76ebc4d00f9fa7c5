"""Prometheus metrics of the liquidation service (``marginflow_liquidation_*``)."""

from __future__ import annotations

from decimal import Decimal

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

# Ages of accounts in liquidation, seconds: the buckets of the by-age gauge (upper bounds; the last is open).
AGE_BUCKETS = ((60.0, "lt_1m"), (300.0, "1m_5m"), (900.0, "5m_15m"), (float("inf"), "ge_15m"))
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class LiquidationMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.episodes_active = Gauge("marginflow_liquidation_episodes_active", "Live liquidation episodes",
                                     registry=registry)
        self.active = Gauge("marginflow_liquidation_active",
                            "1 while this instance holds the lease and acts, 0 while it waits as a standby",
                            registry=registry)
        self.episodes_total = Counter("marginflow_liquidation_episodes_total", "Episode transitions", ["outcome"],
                                      registry=registry)
        self.orders_sent_total = Counter("marginflow_liquidation_orders_sent_total", "Liquidation orders published",
                                         registry=registry)
        self.order_latency = Histogram(
            "marginflow_liquidation_order_latency_seconds",
            "Newest mark event time to the order's publication (wall clock)", buckets=LATENCY_BUCKETS,
            registry=registry)
        self.fills_total = Counter("marginflow_liquidation_fills_total", "Fills of liquidation orders seen",
                                   registry=registry)
        self.fund_balance = Gauge("marginflow_liquidation_fund_balance_usd", "Insurance fund balance, USD",
                                  registry=registry)
        self.fund_drawdown = Gauge("marginflow_liquidation_fund_drawdown_usd",
                                   "Insurance fund high-water mark minus balance, USD", registry=registry)
        self.adl_total = Counter("marginflow_liquidation_adl_events_total", "Auto-deleveraging fills (counterparties)",
                                 registry=registry)
        self.by_age = Gauge("marginflow_liquidation_accounts_in_liquidation", "Accounts in liquidation by episode age",
                            ["age"], registry=registry)
        self.oldest_age = Gauge("marginflow_liquidation_oldest_episode_age_seconds",
                                "Age of the oldest live episode (0 when none)", registry=registry)
        self.guard_pauses = Counter("marginflow_liquidation_guard_pauses_total",
                                    "Actions held by a guard (stale mark, price band, admin pause)", ["reason"],
                                    registry=registry)
        self.venue_paused = Gauge("marginflow_liquidation_venue_paused", "1 while an admin paused the venue",
                                  registry=registry)
        self.instruments_paused = Gauge("marginflow_liquidation_instruments_paused",
                                        "Instruments paused by an admin", registry=registry)
        self.errors = Counter("marginflow_liquidation_errors_total", "Failed assessments (margin/portfolio calls)",
                              ["what"], registry=registry)

    # ---- the application's metrics port
    def episode(self, outcome: str) -> None:
        self.episodes_total.labels(outcome).inc()

    def orders_sent(self, orders, now_ms: int) -> None:
        self.orders_sent_total.inc(len(orders))
        for o in orders:
            if o.mark_time_ms:
                self.order_latency.observe(max(0.0, (now_ms - o.mark_time_ms) / 1000.0))

    def fill(self) -> None:
        self.fills_total.inc()

    def fund(self, balance: Decimal, drawdown: Decimal) -> None:
        self.fund_balance.set(float(balance))
        self.fund_drawdown.set(float(drawdown))

    def adl(self) -> None:
        self.adl_total.inc()

    def episodes(self, ages_seconds: list[float]) -> None:
        self.episodes_active.set(len(ages_seconds))
        counts = {label: 0 for _, label in AGE_BUCKETS}
        for age in ages_seconds:
            counts[next(label for bound, label in AGE_BUCKETS if age < bound)] += 1
        for label, n in counts.items():
            self.by_age.labels(label).set(n)
        self.oldest_age.set(max(ages_seconds, default=0.0))

    def guard_pause(self, reason: str) -> None:
        self.guard_pauses.labels(reason).inc()

    def paused(self, venue: bool, instruments: int) -> None:
        self.venue_paused.set(1 if venue else 0)
        self.instruments_paused.set(instruments)

    def error(self, what: str) -> None:
        self.errors.labels(what).inc()


_metrics: LiquidationMetrics | None = None


def liquidation_metrics() -> LiquidationMetrics:
    """The process-wide liquidation metrics (created once)."""
    global _metrics
    if _metrics is None:
        _metrics = LiquidationMetrics()
    return _metrics
