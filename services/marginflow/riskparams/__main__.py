"""Entry point: ``python -m marginflow.riskparams`` (``--help`` lists the settings).

Wires settings → universe → engine → service (ports: faust table, Kafka publisher, dead letters,
Prometheus, system clock) → faust app, gRPC server and /metrics; stops in order on SIGTERM:
stop consuming → flush state and publish → stop gRPC with grace → flush and close producers.
"""

from __future__ import annotations

import asyncio
import functools
import sys

from marginflow.api.risk.v1 import risk_pb2
from marginflow.riskparams.adapters.codec import decode_marks, decode_ticks, to_proto
from marginflow.riskparams.adapters.faust_app import FaustConfig, FaustTableStore, RiskParamsFaust, create_app
from marginflow.riskparams.adapters.grpc_api import ParamsHub, RiskServicer, registration
from marginflow.riskparams.adapters.metrics import PrometheusMetrics
from marginflow.riskparams.application import (Market, RiskEngine, RiskParamsService, RiskParamsVersion,
                                               engine_config)
from marginflow.riskparams.settings import RiskParamsSettings
from marginflow.shared import grpcserver
from marginflow.shared.clock import SystemClock
from marginflow.shared.config import describe
from marginflow.shared.errors import Rejected
from marginflow.shared.kafka import (DeadLetterSink, ProtoProducer, ensure_topics, new_producer, platform_topics,
                                     read_compacted)
from marginflow.shared.lifecycle import Lifecycle
from marginflow.shared.logs import get_logger
from marginflow.shared.metrics import serve_metrics
from marginflow.shared.service import run_service
from marginflow.shared.universe import platform_universe

SERVICE = "riskparams"
PARAMS_KEY = "current"
log = get_logger("marginflow.riskparams")


class KafkaParamsPublisher:
    """Publisher port: each version to risk.params (compacted, key "current") and to the hub."""

    def __init__(self, producer: ProtoProducer, topic: str, hub: ParamsHub) -> None:
        self._producer = producer
        self._topic = topic
        self._hub = hub

    def publish(self, version: RiskParamsVersion) -> None:
        msg = to_proto(version, source=SERVICE)
        self._producer.send(self._topic, PARAMS_KEY, msg)
        self._hub.set(msg)


class DeadLetterPort:
    def __init__(self, sink: DeadLetterSink) -> None:
        self._sink = sink

    def reject(self, source_topic: str, key: bytes | None, payload: bytes, error: Rejected) -> None:
        self._sink.publish(error.code, error.detail, payload=payload or b"", key=key, source_topic=source_topic)


def main(settings: RiskParamsSettings, lifecycle: Lifecycle) -> None:
    common = settings.common
    topics = common.topics
    clock = SystemClock()
    universe = platform_universe(common, clock.now_ms())
    underlyings = settings.underlyings or tuple(universe.underlyings)
    market = Market.from_universe(universe, underlyings)
    engine = RiskEngine(engine_config(settings, underlyings), market)

    ensure_topics(common.bootstrap, platform_topics(topics, common.topic_partitions))
    producer = ProtoProducer(new_producer(common.bootstrap, f"{SERVICE}-producer"), SERVICE)

    hub = ParamsHub()
    latest = read_compacted(common.bootstrap, topics.risk_params, risk_pb2.RiskParams, f"{SERVICE}-boot",
                            timeout_s=30.0).get(PARAMS_KEY)
    if latest is not None:
        hub.set(latest)   # served at once after a restart, before the first new version
    metrics = PrometheusMetrics()
    metrics_port = serve_metrics(settings.metrics_port, settings.common.bind_host)

    app_id = f"{common.topic_prefix}{settings.app_id}"
    fcfg = FaustConfig(app_id=app_id, bootstrap_servers=common.kafka_bootstrap_servers,
                       ticks_topic=topics.ticks, marks_topic=topics.marks, partitions=common.topic_partitions,
                       web_port=settings.faust_web_port, tick_consumer=settings.tick_consumer,
                       publish_interval_s=settings.publish_interval_seconds,
                       commit_interval_s=settings.commit_interval_seconds)
    app, table = create_app(fcfg)
    service = RiskParamsService(
        engine, decode_ticks=functools.partial(decode_ticks, max_bytes=common.max_message_bytes),
        decode_marks=functools.partial(decode_marks, max_bytes=common.max_message_bytes), store=FaustTableStore(table),
        publisher=KafkaParamsPublisher(producer, topics.risk_params, hub),
        dead_letters=DeadLetterPort(DeadLetterSink(producer, topics.riskparams_dlq, SERVICE, clock.now_ms)),
        metrics=metrics, clock_ms=clock.now_ms, ticks_topic=topics.ticks, marks_topic=topics.marks)
    runner = RiskParamsFaust(app, table, service, fcfg, on_consumer_lag=metrics.records_behind)

    servicer = RiskServicer(hub, engine.sigma_history, tuple(underlyings))
    server, grpc_port, health = grpcserver.build_server(SERVICE, settings.grpc_port, [registration(servicer)],
                                                        host=settings.common.bind_host)
    # Stop order: consuming and state first (runner.run returns), then gRPC with grace, then producers.
    lifecycle.on_stop("stop gRPC", lambda: (hub.close(),
                                            grpcserver.stop(server, health, common.shutdown_grace_seconds)))
    lifecycle.on_stop("flush producer", lambda: producer.flush(10.0))
    lifecycle.on_stop("close producer", lambda: producer.close(5.0))
    log.info("serving", extra={"grpc_port": grpc_port, "metrics_port": metrics_port, "app_id": app_id,
                               "underlyings": list(underlyings), "tick_consumer": settings.tick_consumer,
                               "restored_version": latest.version if latest else 0})
    asyncio.run(runner.run(lifecycle.stopping.is_set,
                           started=lambda: log.info("faust app started", extra={"app_id": app_id})))


def _help() -> str:
    rows = describe(RiskParamsSettings)
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {default!s:<22} {doc}" for name, default, doc in rows)


if __name__ == "__main__":
    if "--help" in sys.argv[1:] or "-h" in sys.argv[1:]:
        print("python -m marginflow.riskparams — settings (environment variables):\n" + _help())
        raise SystemExit(0)
    run_service(SERVICE, RiskParamsSettings, main)
