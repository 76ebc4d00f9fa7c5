"""Prometheus metrics of the exchange simulator (``marginflow_exchange_sim_*``)."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter


class ExchangeSimMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.orders = Counter("marginflow_exchange_sim_orders_total", "Liquidation orders matched", ["outcome"],
                              registry=registry)
        self.fills = Counter("marginflow_exchange_sim_fills_total", "Fills emitted (account side)", registry=registry)

    def order(self, filled: bool, fills: int) -> None:
        self.orders.labels("filled" if filled else "unfilled").inc()
        self.fills.inc(fills)


_metrics: ExchangeSimMetrics | None = None


def exchange_sim_metrics() -> ExchangeSimMetrics:
    global _metrics
    if _metrics is None:
        _metrics = ExchangeSimMetrics()
    return _metrics
