"""The one place the margin service is wired: settings → adapters → engine.

``python -m marginflow.margin`` runs :func:`main` under :func:`marginflow.shared.service.run_service`.
Tests and the benchmark build a :class:`MarginApp` directly and run its loop in a thread.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time

import numpy as np

import marginflow.core as core
from marginflow.api.account.v1 import account_pb2
from marginflow.api.margin.v1 import margin_pb2_grpc
from marginflow.api.risk.v1 import risk_pb2
from marginflow.margin.adapters import codec
from marginflow.margin.adapters.grpc_api import SERVICE_NAME, MarginServicer, StateBroadcaster
from marginflow.margin.adapters.kafka_io import KafkaPublisher, PositionsRebalance, assign_market, market_types
from marginflow.margin.adapters.metrics import MarginMetrics, margin_metrics
from marginflow.margin.application import EngineConfig, MarginEngine
from marginflow.margin.domain.book import InstrumentTable
from marginflow.margin.domain.equity import HaircutPolicy
from marginflow.margin.settings import MarginSettings
from marginflow.shared import grpcserver
from marginflow.shared.clock import Clock, SystemClock
from marginflow.shared.errors import Rejected
from marginflow.shared.kafka import (
    DeadLetterSink, ProtoConsumer, ProtoProducer, TopicSpec, ensure_topics, new_consumer, new_producer,
    platform_topics, read_compacted)
from marginflow.shared.lifecycle import Lifecycle, loop_in_thread, run_steps, tune_gc
from marginflow.shared.logs import get_logger
from marginflow.shared.metrics import serve_metrics
from marginflow.shared.universe import Kind, Universe, platform_universe

SERVICE = "margin"
# Handlers are short and hold the GIL most of the time: more threads than cores only queue on the GIL.
GRPC_WORKERS = 4
DLQ_BASE = "margin.dlq"
WEEK_MS = 7 * 24 * 3600 * 1000
log = get_logger(__name__)

_CORE_KIND = {Kind.PERPETUAL: 0, Kind.FUTURE: 1, Kind.CALL: 2, Kind.PUT: 3}


def instrument_table(universe: Universe) -> InstrumentTable:
    underlyings = tuple(universe.underlyings)
    uidx = {u: i for i, u in enumerate(underlyings)}
    insts = list(universe.instruments.values())
    return InstrumentTable(
        symbols=tuple(i.symbol for i in insts),
        kind=np.array([_CORE_KIND[i.kind] for i in insts], dtype=np.int8),
        underlying=np.array([uidx[i.underlying] for i in insts], dtype=np.int32),
        underlyings=underlyings,
        contract_size=np.array([i.contract_size for i in insts], dtype=np.float64),
        strike=np.array([i.strike_usd for i in insts], dtype=np.float64),
        expiry_ms=np.array([i.expiry_ms for i in insts], dtype=np.int64))


def engine_config(s: MarginSettings, universe: Universe) -> EngineConfig:
    und = list(universe.underlyings)
    return EngineConfig(
        assets=s.collateral_assets(und), stablecoins=frozenset(s.stablecoins), settlement_asset=s.settlement_asset,
        mm_factor=s.mm_factor, bracket_floors_usd=s.bracket_floors_usd, bracket_rates=s.bracket_rates,
        haircut=HaircutPolicy(s.haircut_z, s.haircut_cap, s.haircut_horizon_seconds),
        mark_max_age_ms=s.mark_max_age_ms, publish_change_fraction=s.publish_change_fraction,
        publish_change_min_usd=s.publish_change_min_usd, publish_max_interval_ms=s.publish_max_interval_ms,
        evaluate_interval_ms=s.evaluate_interval_ms, model_refresh_ms=s.model_refresh_ms,
        incremental_max_accounts=s.incremental_max_accounts, n_threads=s.threads,
        default_depth_contracts=100.0,
        fallback_vol={u: x.annual_vol for u, x in universe.underlyings.items()},
        fallback_price={u: x.index_price_usd for u, x in universe.underlyings.items()})


def margin_topics(settings: MarginSettings) -> list[TopicSpec]:
    topics = settings.common.topics
    mine = {topics.marks, topics.risk_params, topics.positions, topics.margin_state, topics.margin_calls}
    specs = [s for s in platform_topics(topics, settings.common.topic_partitions) if s.name in mine]
    return specs + [TopicSpec(topics.name(DLQ_BASE), 1, retention_ms=WEEK_MS)]


class MarginApp:
    """The wired service. ``start()`` loads risk params and marks and starts serving; ``run(stop)`` consumes."""

    def __init__(self, settings: MarginSettings, clock: Clock | None = None, metrics: MarginMetrics | None = None,
                 core_impl=core) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.metrics = metrics or margin_metrics()
        self.core = core_impl
        self.grpc_port = 0
        self.metrics_port = 0
        self._server = None
        self._health = None
        self._closed = False
        self.partition_of: dict[str, int] = {}
        self.broadcaster = StateBroadcaster()

    # ---- start
    def start(self, serve_grpc: bool = True, serve_http_metrics: bool = True, consume: bool = True) -> "MarginApp":
        s, common = self.settings, self.settings.common
        topics = common.topics
        self.universe = platform_universe(common, self.clock.now_ms())
        self.table = instrument_table(self.universe)
        self.config = engine_config(s, self.universe)
        self.producer = None
        if consume:
            ensure_topics(common.bootstrap, margin_topics(s), timeout_s=s.startup_timeout_seconds)
            self.producer = ProtoProducer(new_producer(common.bootstrap, f"{SERVICE}-state"), SERVICE)
            publisher = KafkaPublisher(self.producer, topics.margin_state, topics.margin_calls, self.clock.now_ms,
                                       self.broadcaster)
        else:
            publisher = _BroadcastOnly(self.broadcaster, self.clock.now_ms)
        self.engine = MarginEngine(self.table, self.config, publisher, self.clock, self.core, self.metrics)
        if consume:
            self.dlq = DeadLetterSink(self.producer, topics.name(DLQ_BASE), SERVICE, self.clock.now_ms)
            market = new_consumer(common.bootstrap, None, f"{SERVICE}-market")
            self.market = ProtoConsumer(market, market_types(topics), self.dlq, SERVICE, common.max_message_bytes)
            assign_market(self.market, topics.marks, topics.risk_params, s.marks_tail_records,
                          s.startup_timeout_seconds)
            self.rebalance = PositionsRebalance()
            positions = new_consumer(common.bootstrap, f"{common.topic_prefix}{s.consumer_group}", SERVICE)
            self.rebalance.consumer = positions
            positions.subscribe([topics.positions], listener=self.rebalance)
            self.positions = ProtoConsumer(positions, {topics.positions: account_pb2.AccountSnapshot}, self.dlq,
                                           SERVICE, common.max_message_bytes)
            self._bootstrap_marks()
            self._load_risk_params()
        if serve_grpc:
            servicer = MarginServicer(self.engine, self.broadcaster, self.metrics.what_if_seconds, self.clock.now_ms)
            self._server, self.grpc_port, self._health = grpcserver.build_server(
                SERVICE, s.grpc_port, [(margin_pb2_grpc.add_MarginServiceServicer_to_server, servicer, SERVICE_NAME)],
                host=common.bind_host, max_workers=GRPC_WORKERS)
        if serve_http_metrics:
            self.metrics_port = serve_metrics(s.metrics_port, common.bind_host)
        log.info("margin started", extra={"grpc_port": self.grpc_port, "metrics_port": self.metrics_port,
                                          "instruments": self.table.n, "core": getattr(self.core, "IMPLEMENTATION", "?")})
        return self

    def _bootstrap_marks(self) -> None:
        """Read the tail of md.marks up to its current end before the first model is built, so that
        its forwards and liquidity add-ons come from marks, not from the universe's reference prices."""
        topics = self.settings.common.topics
        raw = self.market.raw
        tps = [tp for tp in raw.assignment() if tp.topic == topics.marks]
        end = raw.end_offsets(tps)
        deadline = time.monotonic() + self.settings.startup_timeout_seconds
        self._pending_params = []
        while any(raw.position(tp) < end[tp] for tp in tps) and time.monotonic() < deadline:
            marks = []
            for rec in self.market.poll(timeout_ms=200):
                if rec.topic == topics.marks:
                    try:
                        marks.append(codec.mark_from_proto(rec.value, self.table, rec.key))
                    except Rejected as exc:
                        self._reject(self.market, rec, exc)
                else:
                    self._pending_params.append(rec)
            self.engine.apply_marks(marks)
        self.engine.first_marks = False

    def _load_risk_params(self) -> None:
        common = self.settings.common
        latest = read_compacted(common.bootstrap, common.topics.risk_params, risk_pb2.RiskParams,
                                f"{SERVICE}-params", timeout_s=self.settings.startup_timeout_seconds)
        versions = sorted(latest.values(), key=lambda p: p.version)
        if versions:
            self._apply_params(versions[-1], None)
        for rec in self._pending_params:
            if rec.value.version > self.engine.version:
                self._apply_params(rec.value, rec)

    def _reject(self, consumer: ProtoConsumer, record, exc: Rejected) -> None:
        self.metrics.rejected.labels(exc.code).inc()
        if record is not None:
            consumer.reject(record, exc)
        else:
            self.dlq.publish(exc.code, exc.detail, source_topic=self.settings.common.topics.risk_params)

    def _apply_params(self, msg: risk_pb2.RiskParams, record) -> None:
        try:
            version = codec.risk_params_from_proto(msg)
            if self.engine.apply_risk_params(version):
                log.info("risk parameters applied", extra={"version": version.version})
        except Rejected as exc:
            self._reject(self.market, record, exc)

    # ---- run
    def step(self) -> int:
        """One turn of the loop: marks and params, then position snapshots, then periodic work."""
        topics = self.settings.common.topics
        timeout = self.settings.poll_timeout_ms
        handled = 0
        marks, params = [], []
        for rec in self.market.poll(timeout_ms=timeout):
            handled += 1
            if rec.topic == topics.marks:
                try:
                    marks.append(codec.mark_from_proto(rec.value, self.table, rec.key))
                except Rejected as exc:
                    self._reject(self.market, rec, exc)
            else:
                params.append(rec)
        self.engine.apply_marks(marks)
        for rec in sorted(params, key=lambda r: r.value.version):
            if rec.value.version > self.engine.version:
                self._apply_params(rec.value, rec)
        books = []
        for rec in self.positions.poll(timeout_ms=timeout):
            handled += 1
            try:
                book = codec.book_from_proto(rec.value, self.table, self.engine.asset_index, rec.key)
            except Rejected as exc:
                self._reject(self.positions, rec, exc)
                continue
            self.partition_of[book.account_id] = rec.partition
            books.append(book)
        if self.rebalance.revoked:
            gone = [a for a, p in self.partition_of.items() if p in self.rebalance.revoked]
            self.engine.remove_accounts(gone)
            for a in gone:
                self.partition_of.pop(a, None)
            self.rebalance.revoked.clear()
        if books:
            self.engine.apply_snapshots(books)
        self.engine.tick()
        return handled

    def run(self, stopping: threading.Event) -> None:
        lower_loop_priority()
        last_flush = time.monotonic()
        frozen = False
        while not stopping.is_set():
            handled = self.step()
            if not frozen and not handled and self.engine.version and self.engine.row_of:
                gc.collect()   # caught up after the rebuild: the account records leave the collector's scans
                gc.freeze()
                frozen = True
            if time.monotonic() - last_flush > 1.0:
                self.producer.flush()   # dead letters
                last_flush = time.monotonic()

    def run_in_thread(self) -> tuple[threading.Thread, threading.Event]:
        return loop_in_thread(self.run, "margin-loop")

    # ---- stop
    def stop_grpc(self) -> None:
        if self._server is not None:
            grpcserver.stop(self._server, self._health, self.settings.common.shutdown_grace_seconds)
            self._server = None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.stop_grpc()
        steps = []
        if getattr(self, "market", None) is not None:
            steps += [self.market.close, self.positions.close]
        if self.producer is not None:
            steps += [self.producer.flush, self.producer.close]
        run_steps(steps)


class _BroadcastOnly:
    """Publisher without Kafka (benchmark, in-process use): StreamMargin still sees every state."""

    def __init__(self, broadcaster: StateBroadcaster, clock_ms) -> None:
        self._broadcaster = broadcaster
        self._clock_ms = clock_ms

    def publish(self, states, calls) -> None:
        return None


# Young-generation collections scan every tracked object made since the last one; with 100k account
# records a full collection costs tens of ms, which lands in some gRPC call's latency. Objects of the
# start are frozen out of the scans and gen-0 collections made rarer.
GC_GEN0_THRESHOLD = 10_000


# A thread waiting for the GIL asks the holder to drop it only after the switch interval (5 ms by
# default): a gRPC call hands the GIL over several times (poller → handler → serialiser), each time
# waiting up to that long behind the service loop's evaluation. 0.5 ms bounds the wait per handover.
SWITCH_INTERVAL_S = 0.0005


# The service loop (consuming, the vectorised evaluations) runs at a lower CPU priority than the gRPC
# threads: on a busy host a query then waits for a core less often. Only this thread is reniced
# (Linux: a nice value per thread); lowering needs no privilege.
LOOP_NICE = 5


def lower_loop_priority() -> None:
    """Renice the calling thread (the service loop) by ``LOOP_NICE``; silently nothing where unsupported."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + LOOP_NICE))
    except (AttributeError, OSError):
        pass


def configure_runtime() -> None:
    """Collector and GIL settings of the serving process (the service's main, and the benchmark)."""
    tune_gc(GC_GEN0_THRESHOLD)
    sys.setswitchinterval(SWITCH_INTERVAL_S)


def main(settings: MarginSettings, lifecycle: Lifecycle) -> None:
    app = MarginApp(settings, SystemClock())
    app.start()
    configure_runtime()
    # Stop order: the loop ends (no more consuming), gRPC drains with grace, producers flush, clients close.
    lifecycle.on_stop("grpc", app.stop_grpc)
    lifecycle.on_stop("close", app.close)
    app.run(lifecycle.stopping)
    log.info("margin loop stopped", extra={"accounts": len(app.engine.row_of), "version": app.engine.version})


def run() -> None:
    from marginflow.shared.service import run_service

    run_service(SERVICE, MarginSettings, main)
