"""The one place the portfolio service is wired: settings → adapters → application.

``python -m marginflow.portfolio`` runs :func:`main` under :func:`marginflow.shared.service.run_service`.
Tests and the benchmark build a :class:`PortfolioApp` directly and run it in a thread.
"""

from __future__ import annotations

import socket
import threading
import time
from decimal import Decimal

from marginflow.api.account.v1 import account_pb2 as pb
from marginflow.api.account.v1 import account_pb2_grpc
from marginflow.portfolio.adapters import codec
from marginflow.portfolio.adapters.grpc_api import SERVICE_NAME, AccountServicer
from marginflow.portfolio.adapters.kafka_io import (
    KafkaEventPublisher, KafkaFillHistory, KafkaOpenInterestSink, KafkaRecordSource, KafkaSnapshotSink, input_types,
    retired_contributions)
from marginflow.portfolio.adapters.margin_gate import MarginWithdrawalGate
from marginflow.portfolio.adapters.metrics import PortfolioMetrics, portfolio_metrics
from marginflow.portfolio.adapters.redis_store import RedisStateStore
from marginflow.portfolio.application import AdminService, Applier, ApplyTurn, BatchResult, OpenInterestPublisher
from marginflow.portfolio.domain.ledger import LedgerRules
from marginflow.portfolio.domain.model import InstrumentSpec
from marginflow.portfolio.domain.open_interest import OpenInterestLedger
from marginflow.portfolio.settings import PortfolioSettings
from marginflow.shared.clock import Clock, SystemClock
from marginflow.shared.kafka import (
    DeadLetterSink, ProtoConsumer, ProtoProducer, TopicSpec, ensure_topics, new_consumer, new_producer,
    platform_topics, read_compacted, topic_partitions)
from marginflow.shared.host import Every, ServiceHost, ServiceLoop
from marginflow.shared.lifecycle import Lifecycle, tune_gc
from marginflow.shared.logs import get_logger
from marginflow.shared.redisstore import connect
from marginflow.shared.security import client_channel
from marginflow.shared.universe import Universe, platform_universe

SERVICE = "portfolio"
log = get_logger(__name__)


def instrument_specs(universe: Universe) -> dict[str, InstrumentSpec]:
    # repr() of the TOML floats gives their shortest decimal form: 0.001 → Decimal("0.001") exactly.
    return {sym: InstrumentSpec(sym, inst.underlying, Decimal(repr(inst.contract_size)), Decimal(repr(inst.lot_size)),
                                inst.is_option)
            for sym, inst in universe.instruments.items()}


def ledger_rules(settings: PortfolioSettings, universe: Universe) -> LedgerRules:
    return LedgerRules(
        instruments=instrument_specs(universe),
        assets=settings.collateral_assets(sorted(universe.underlyings)),
        settlement_asset=settings.settlement_asset, dedupe_window=settings.dedupe_ids,
        enforce_lot_size=settings.enforce_lot_size)


def portfolio_topics(settings: PortfolioSettings) -> list[TopicSpec]:
    topics = settings.common.topics
    mine = {topics.fills, topics.account_events, topics.portfolio_dlq, topics.positions, topics.open_interest,
            topics.audit}
    return [s for s in platform_topics(topics, settings.common.topic_partitions) if s.name in mine]


def instance_id(s: PortfolioSettings) -> str | None:
    """The static group membership id: set, or host and port of a fixed gRPC port, or None (dynamic)."""
    if s.instance_id:
        return s.instance_id
    if s.grpc_port:
        return f"{SERVICE}-{socket.gethostname()}-{s.grpc_port}"
    return None


# Young-generation collections every 700 allocations cost ~15% of the apply loop: each batch
# allocates hundreds of thousands of short-lived, acyclic objects (decoded records, account and
# position values, snapshot bytes) and little garbage with cycles. 10,000 keeps collections rare
# but bounded; the objects of the start (universe, rebuild) are frozen out of the scans.
GC_GEN0_THRESHOLD = 10_000


def configure_gc() -> None:
    """Collector settings for the consuming process (the service's main, and the benchmark)."""
    tune_gc(GC_GEN0_THRESHOLD)


class PortfolioApp:
    """The wired service. ``start()`` rebuilds if needed and starts serving; ``run(stop)`` consumes."""

    def __init__(self, settings: PortfolioSettings, clock: Clock, metrics: PortfolioMetrics | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self.metrics = metrics or portfolio_metrics()
        self.totals = BatchResult()
        self.host = ServiceHost(SERVICE, settings.common)
        self.rebuilt_accounts: int | None = None
        self.rebuild_seconds: float | None = None
        self.open_interest: OpenInterestPublisher | None = None

    @property
    def grpc_port(self) -> int:
        return self.host.grpc_port

    @property
    def metrics_port(self) -> int:
        return self.host.metrics_port

    # ---- start
    def start(self, serve_grpc: bool = True, serve_http_metrics: bool = True) -> "PortfolioApp":
        s, common = self.settings, self.settings.common
        topics = common.topics
        self.universe = platform_universe(common, self.clock.now_ms())
        self.rules = ledger_rules(s, self.universe)
        ensure_topics(common.bootstrap, portfolio_topics(s))
        self.redis = connect(common.redis_url)
        self.store = RedisStateStore(self.redis, s.redis_prefix)
        self.producer = ProtoProducer(new_producer(common.bootstrap, f"{SERVICE}-state"), SERVICE)
        self.admin_producer = ProtoProducer(new_producer(common.bootstrap, f"{SERVICE}-admin", linger_ms=0), SERVICE)
        consumer = new_consumer(common.bootstrap, f"{common.topic_prefix}{s.consumer_group}", SERVICE,
                                session_timeout_ms=s.session_timeout_ms,
                                heartbeat_interval_ms=max(1000, s.session_timeout_ms // 3),
                                group_instance_id=instance_id(s))
        self.partitions = self._check_copartitioned(consumer)
        every = frozenset(range(self.partitions))
        self.rebuild(every if s.rebuild == "always" else frozenset(self.store.missing_partitions(every)))
        dlq = DeadLetterSink(self.producer, topics.portfolio_dlq, SERVICE, self.clock.now_ms)
        self.source = KafkaRecordSource(ProtoConsumer(consumer, input_types(topics), dlq, SERVICE,
                                                      common.max_message_bytes), self.producer,
                                        topics, s.poll_timeout_ms, s.batch_max_records)
        # Each owned partition's share of the open interest; keys of instruments that left the universe
        # (read back once: a few hundred records) are retired by their partition's owner.
        instruments = frozenset(self.rules.instruments)
        on_topic = read_compacted(common.bootstrap, topics.open_interest, pb.OpenInterestContribution,
                                  f"{SERVICE}-open-interest", timeout_s=s.rebuild_timeout_seconds)
        self.open_interest = OpenInterestPublisher(
            OpenInterestLedger(instruments), self.store,
            KafkaOpenInterestSink(self.producer, topics.open_interest, self.clock.now_ms), self.partitions,
            retired=retired_contributions(on_topic, instruments))
        self.source.on_assigned.append(self.open_interest.assigned)
        self.source.subscribe([topics.fills, topics.account_events])
        self.fill_history = (KafkaFillHistory(new_consumer(common.bootstrap, None, f"{SERVICE}-fill-ids"), topics.fills,
                                              s.rebuild_timeout_seconds) if s.dedupe_seconds > 0 else None)
        self.applier = Applier(self.rules, self.store,
                               KafkaSnapshotSink(self.producer, topics.positions), self.source,
                               codec.SnapshotEncoder(), self.clock, self.metrics, s.cache_accounts,
                               fill_history=self.fill_history, fills_topic=topics.fills,
                               fill_ids_horizon_ms=int(s.dedupe_seconds * 1000), on_applied=self.open_interest)
        # TLS and token as configured (margin serves TLS under make run)
        self.gate = (MarginWithdrawalGate(s.margin_address, s.margin_timeout_ms / 1000,
                                          lambda address: client_channel(address, common.security))
                     if s.margin_address else None)
        self.admin = AdminService(self.rules, self.store,
                                  KafkaEventPublisher(self.admin_producer, topics.account_events, self.clock.now_ms),
                                  self.store, self.clock, self.gate)
        self.turn = ApplyTurn(self.source, self.applier, self.totals, rebuild=self.rebuild)
        self.loop = ServiceLoop(SERVICE, self._turn, every=[Every(1.0, self.refresh_gauges),
                                                           Every(s.cache_check_seconds, self.check_cache)],
                                recover=self.turn.recover)
        if serve_grpc:
            servicer = AccountServicer(self.store, self.admin, frozenset(self.rules.instruments),
                                       self.partitions, self.source.catching_up)
            self.host.serve_grpc(s.grpc_port, [(account_pb2_grpc.add_AccountServiceServicer_to_server, servicer,
                                                SERVICE_NAME)])
        if serve_http_metrics:
            self.host.serve_metrics(s.metrics_port)
        for name, step in (("consumer", self.source.close),
                           ("fill-id reader", self.fill_history.close if self.fill_history else (lambda: None)),
                           ("flush producer", self.producer.flush),
                           ("close producer", self.producer.close), ("close admin producer", self.admin_producer.close),
                           ("close redis", self.redis.close),
                           ("close margin channel", self.gate.close if self.gate else (lambda: None))):
            self.host.on_close(name, step)
        self.refresh_gauges()
        # Not ready yet: SERVING once the group has assigned this instance its partitions and they are
        # read to the end offsets of that moment (see _turn).
        log.info("portfolio started", extra={"grpc_port": self.grpc_port, "metrics_port": self.metrics_port,
                                             "instruments": len(self.rules.instruments)})
        return self

    def _check_copartitioned(self, consumer) -> int:
        """Fills and events of one account must land on the same partition number of both topics, so that
        one consumer owns the account (range assignment), and its snapshot on the same partition of
        portfolio.positions (a lost cache is rebuilt per partition): the three need the same partition
        count, which is returned."""
        topics = self.settings.common.topics
        counts = {}
        deadline = time.monotonic() + 30
        for topic in (topics.fills, topics.account_events, topics.positions):
            counts[topic] = len(topic_partitions(consumer, topic, max(0.0, deadline - time.monotonic())))
        if len(set(counts.values())) != 1:
            raise RuntimeError(f"{topics.fills}, {topics.account_events} and {topics.positions} must have the same "
                               f"number of partitions (account ordering and ownership depend on it): {counts}")
        return counts[topics.fills]

    def rebuild(self, partitions: frozenset[int]) -> int:
        """Restore the accounts of ``partitions`` in Redis from the compacted portfolio.positions topic
        (the truth), then mark those partitions' cache whole."""
        if not partitions:
            return 0
        common = self.settings.common
        started = time.perf_counter()
        snapshots = read_compacted(common.bootstrap, common.topics.positions, pb.AccountSnapshot,
                                   f"{SERVICE}-rebuild", timeout_s=self.settings.rebuild_timeout_seconds,
                                   partitions=partitions)
        count = self.store.restore(snapshots)
        seconds = time.perf_counter() - started
        self.store.mark_built(partitions, self.clock.now_ms(), count, seconds)
        if self.open_interest is not None:   # the states the next batch starts from are those rebuilt
            self.open_interest.rebuilt(partitions)
        self.metrics.rebuild_seconds.set(seconds)
        self.metrics.rebuild_accounts.set(count)
        self.metrics.rebuilds.inc()
        self.rebuilt_accounts, self.rebuild_seconds = count, seconds
        log.info("state rebuilt from Kafka", extra={"accounts": count, "seconds": round(seconds, 3),
                                                    "partitions": sorted(partitions)})
        return count

    def check_cache(self) -> None:
        """Between batches: a partition this instance owns whose cache is no longer whole is rebuilt
        now, not at its next record (reads of its accounts answer UNAVAILABLE meanwhile)."""
        owned = self.source.assigned_partitions()
        missing = self.store.missing_partitions(owned) if owned else set()
        if missing:
            log.warning("account cache lost; rebuilding from Kafka", extra={"partitions": sorted(missing)})
            self.rebuild(frozenset(missing))

    # ---- run
    def _turn(self) -> int:
        n = self.turn()
        self._update_ready()
        # Only once ready: every owned partition read to its end offset at assignment.
        behind = self.source.catching_up()
        self.metrics.open_interest_published.inc(self.open_interest.turn(
            frozenset(self.source.assigned_partitions()), behind is not None and not behind,
            self.source.fills_offsets))
        return n

    def _update_ready(self) -> None:
        """Ready while in the group with every owned partition caught up (the source's view after the
        turn's records were applied); a rebalance that brings partitions makes it not ready again."""
        behind = self.source.catching_up()
        if behind is None:
            return
        if behind:
            self.host.set_ready(False, f"reading newly assigned input partitions {sorted(behind)}")
        else:
            self.host.set_ready(True, "inputs read to their end offsets at assignment")

    def wait_ready(self, timeout_s: float) -> bool:
        """Tests and tools: wait until SERVING (the consuming loop must be running)."""
        return self.host.wait_ready(timeout_s)

    def refresh_gauges(self) -> None:
        accounts, positions = self.store.counts(self.rules.instruments)
        self.metrics.accounts.set(accounts)
        self.metrics.positions.set(positions)
        self.metrics.fill_ids_indexed.set(self.applier.fill_ids_indexed())
        self.metrics.open_interest(self.open_interest.published_totals(), self.rules.instruments)

    def run(self, stopping: threading.Event) -> BatchResult:
        self.loop.run(stopping)
        return self.totals

    def run_in_thread(self) -> tuple[threading.Thread, threading.Event]:
        return self.loop.run_in_thread()

    # ---- stop
    def stop_grpc(self) -> None:
        self.host.stop_grpc()

    def close(self) -> None:
        self.host.close()


def main(settings: PortfolioSettings, lifecycle: Lifecycle) -> None:
    app = PortfolioApp(settings, SystemClock())
    app.start()
    configure_gc()
    # Stop order: consuming ends when run() returns (offsets committed after each batch), then
    # gRPC drains with grace, then producers flush and clients close.
    lifecycle.on_stop("close", app.close)
    totals = app.run(lifecycle.stopping)
    log.info("consumer stopped", extra={"fills_applied": totals.fills_applied, "events_applied": totals.events_applied,
                                        "duplicates": totals.duplicates, "rejected": totals.rejected})


def run() -> None:
    from marginflow.shared.service import run_service

    run_service(SERVICE, PortfolioSettings, main)
