"""Prometheus metrics: the endpoint, and the metrics every service shares.

Each service process serves ``/metrics`` on its own port (``MF_METRICS_PORT`` of the service).
Metric names are ``marginflow_<area>_<what>_<unit>``.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server

# Latency buckets for in-process work (seconds): 50 µs .. 5 s.
LATENCY_BUCKETS = (5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def serve_metrics(port: int, host: str = "127.0.0.1", registry: CollectorRegistry = REGISTRY) -> int:
    """Start the /metrics HTTP endpoint in a daemon thread; return the bound port (0 = any)."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_port)


class NullMetrics:
    """Metrics port that records nothing (tests, benchmarks, in-process use): any method, any arguments."""

    def __getattr__(self, _name: str):
        return _ignore


def _ignore(*_args, **_kwargs) -> None:
    return None


class SharedMetrics:
    """Metrics with the same meaning in every service, labelled by service."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.dead_letters = Counter(
            "marginflow_dead_letters_total", "Records sent to a dead-letter topic",
            ["service", "topic", "reason"], registry=registry)
        self.grpc_latency = Histogram(
            "marginflow_grpc_server_latency_seconds", "gRPC server handling time",
            ["service", "method", "code"], buckets=LATENCY_BUCKETS, registry=registry)
        self.kafka_consumed = Counter(
            "marginflow_kafka_consumed_total", "Records consumed", ["service", "topic"], registry=registry)
        self.kafka_produced = Counter(
            "marginflow_kafka_produced_total", "Records produced", ["service", "topic"], registry=registry)


_shared: SharedMetrics | None = None


def shared_metrics() -> SharedMetrics:
    """The process-wide shared metrics (created once, on first use)."""
    global _shared
    if _shared is None:
        _shared = SharedMetrics()
    return _shared
