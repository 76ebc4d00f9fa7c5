"""The one place riskparams is wired: settings → universe → engine → service (ports: faust table,
Kafka publisher, dead letters, Prometheus, system clock) → faust app, on the service host.

Stops in order on SIGTERM: stop consuming → flush state and publish → stop gRPC with grace → flush
and close producers. Ready (gRPC health SERVING) once the faust table is recovered and a version is
served (the one restored from risk.params, or the first new one).
"""

from __future__ import annotations

import asyncio
import functools
import socket

from marginflow.api.risk.v1 import risk_pb2
from marginflow.riskparams.adapters.codec import decode_marks, decode_ticks
from marginflow.riskparams.adapters.faust_app import FaustConfig, FaustTableStore, RiskParamsFaust, create_app
from marginflow.riskparams.adapters.grpc_api import ParamsHub, RiskServicer, registration
from marginflow.riskparams.adapters.kafka_io import PARAMS_KEY, DeadLetterPort, KafkaParamsPublisher
from marginflow.riskparams.adapters.metrics import PrometheusMetrics
from marginflow.riskparams.application import Market, RiskEngine, RiskParamsService, engine_config
from marginflow.riskparams.settings import RiskParamsSettings
from marginflow.shared.clock import SystemClock
from marginflow.shared.host import ServiceHost
from marginflow.shared.kafka import DeadLetterSink, ProtoProducer, ensure_topics, new_producer, platform_topics, read_compacted
from marginflow.shared.lifecycle import Lifecycle
from marginflow.shared.logs import get_logger
from marginflow.shared.service import run_service
from marginflow.shared.universe import platform_universe

SERVICE = "riskparams"
log = get_logger("marginflow.riskparams")


def instance_id(settings: RiskParamsSettings) -> str | None:
    """The static group membership id: set, ``none`` for dynamic membership, else one per host (only
    one instance runs per app id: the correlation needs every underlying in one process)."""
    if settings.instance_id.lower() == "none":
        return None
    return settings.instance_id or f"{SERVICE}-{socket.gethostname()}"


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
    host = ServiceHost(SERVICE, common)
    host.serve_metrics(settings.metrics_port)

    app_id = f"{common.topic_prefix}{settings.app_id}"
    fcfg = FaustConfig(app_id=app_id, bootstrap_servers=common.kafka_bootstrap_servers,
                       ticks_topic=topics.ticks, marks_topic=topics.marks, partitions=common.topic_partitions,
                       web_port=settings.faust_web_port, tick_consumer=settings.tick_consumer,
                       publish_interval_s=settings.publish_interval_seconds,
                       commit_interval_s=settings.commit_interval_seconds,
                       session_timeout_s=settings.session_timeout_seconds, instance_id=instance_id(settings))
    app, table = create_app(fcfg)
    service = RiskParamsService(
        engine, decode_ticks=functools.partial(decode_ticks, max_bytes=common.max_message_bytes),
        decode_marks=functools.partial(decode_marks, max_bytes=common.max_message_bytes), store=FaustTableStore(table),
        publisher=KafkaParamsPublisher(producer, topics.risk_params, hub, SERVICE),
        dead_letters=DeadLetterPort(DeadLetterSink(producer, topics.riskparams_dlq, SERVICE, clock.now_ms)),
        metrics=metrics, clock_ms=clock.now_ms, ticks_topic=topics.ticks, marks_topic=topics.marks)
    runner = RiskParamsFaust(app, table, service, fcfg, on_consumer_lag=metrics.records_behind)

    servicer = RiskServicer(hub, engine.sigma_history, tuple(underlyings), signals=lambda: service.signals)
    host.serve_grpc(settings.grpc_port, [registration(servicer)])
    # Stop order: consuming and state first (runner.run returns), then gRPC with grace, then producers.
    host.on_close("flush producer", lambda: producer.flush(10.0))
    host.on_close("close producer", lambda: producer.close(5.0))
    lifecycle.on_stop("close", lambda: (hub.close(), host.close()))

    def readiness() -> None:
        if not host.ready and runner.recovered.is_set() and hub.latest is not None:
            host.set_ready(True, "state recovered, a version served")

    log.info("serving", extra={"grpc_port": host.grpc_port, "metrics_port": host.metrics_port, "app_id": app_id,
                               "underlyings": list(underlyings), "tick_consumer": settings.tick_consumer,
                               "restored_version": latest.version if latest else 0})
    asyncio.run(runner.run(lifecycle.stopping.is_set,
                           started=lambda: log.info("faust app started", extra={"app_id": app_id}),
                           every_100ms=readiness))


def run() -> None:
    run_service(SERVICE, RiskParamsSettings, main)
