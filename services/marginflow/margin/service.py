"""The one place the margin service is wired: settings → adapters → application, on the service host.

``python -m marginflow.margin`` runs :func:`main` under :func:`marginflow.shared.service.run_service`.
Tests and the benchmark build a :class:`MarginApp` directly and run its loop in a thread.

Readiness: the instance serves (gRPC health SERVING, queries answered) and publishes only once its
inputs are complete — the marks read to the end offsets taken at start, the newest risk-parameter
version loaded, every assigned ``portfolio.positions`` partition read to the end offset taken at
assignment, a mark for every instrument with an open position (or ``MF_MARGIN_MARK_WAIT_SECONDS``
passed, after which those marks count as stale), and the states it published before read back from
``margin.state`` so that a margin call goes out only on a real transition. A rebalance that assigns
partitions makes it not ready again until they are read.
"""

from __future__ import annotations

import gc
import os
import socket
import sys
import threading
import time

import marginflow.core as core
from kafka import TopicPartition
from marginflow.api.account.v1 import account_pb2
from marginflow.api.margin.v1 import margin_pb2, margin_pb2_grpc
from marginflow.api.risk.v1 import risk_pb2
from marginflow.margin.adapters import codec
from marginflow.margin.adapters.grpc_api import SERVICE_NAME, MarginServicer, state_fanout
from marginflow.margin.adapters.kafka_io import KafkaPublisher, PositionsRebalance, assign_market, market_types
from marginflow.margin.adapters.open_interest import OpenInterestReader
from marginflow.margin.adapters.metrics import MarginMetrics, margin_metrics
from marginflow.margin.adapters.owners import Forwarder, OwnerRegistry
from marginflow.margin.adapters.snapshot_io import Capture, RestartSnapshots
from marginflow.margin.adapters.snapshots import fingerprint
from marginflow.margin.application import EngineConfig, MarginEngine
from marginflow.margin.application.routing import Router
from marginflow.margin.domain.book import InstrumentTable
from marginflow.margin.domain.contingency import ContingencyRates
from marginflow.margin.domain.horizon import WINDOW_MS, HorizonRules
from marginflow.margin.domain.liquidity import LiquidityRules
from marginflow.margin.domain.market import RecenterRules
from marginflow.margin.domain.equity import HaircutPolicy
from marginflow.margin.domain.transitions import TransitionRules
from marginflow.margin.settings import MarginSettings
from marginflow.shared.clock import Clock, SystemClock
from marginflow.shared.errors import Rejected
from marginflow.shared.host import Every, ServiceHost, ServiceLoop
from marginflow.shared.kafka import (
    DeadLetterSink, ProtoConsumer, ProtoProducer, TopicSpec, ensure_topics, new_consumer, new_producer,
    platform_topics, read_compacted, topic_partitions)
from marginflow.shared.lifecycle import Lifecycle, tune_gc
from marginflow.shared.logs import get_logger
from marginflow.shared.redisstore import connect
from marginflow.shared.universe import Universe, platform_universe
from marginflow.shared.security import client_channel

SERVICE = "margin"
# Handlers are short and hold the GIL most of the time: more threads than cores only queue on the GIL.
GRPC_WORKERS = 4
log = get_logger(__name__)


def instrument_table(universe: Universe) -> InstrumentTable:
    return InstrumentTable.from_universe(universe)


def engine_config(s: MarginSettings, universe: Universe) -> EngineConfig:
    und = list(universe.underlyings)
    return EngineConfig(
        assets=s.collateral_assets(und), stablecoins=frozenset(s.stablecoins), settlement_asset=s.settlement_asset,
        mm_factor=s.mm_factor, bracket_floors_usd=s.bracket_floors_usd, bracket_rates=s.bracket_rates,
        haircut=HaircutPolicy(s.haircut_z, s.haircut_cap, s.haircut_horizon_seconds),
        mark_max_age_ms=s.mark_max_age_ms, publish_change_fraction=s.publish_change_fraction,
        publish_change_min_usd=s.publish_change_min_usd, publish_max_interval_ms=s.publish_max_interval_ms,
        evaluate_interval_ms=s.evaluate_interval_ms, model_refresh_ms=s.model_refresh_ms,
        recenter=RecenterRules(s.recenter_price_change, s.recenter_vol_change, s.recenter_min_interval_ms),
        incremental_max_accounts=s.incremental_max_accounts, n_threads=s.threads,
        default_depth_contracts=100.0,
        transitions=TransitionRules(exit_buffer_bps=s.exit_buffer_bps,
                                    margin_call_exit_buffer_bps=s.margin_call_exit_buffer_bps,
                                    confirm_evaluations=s.confirm_evaluations, confirm_ms=s.confirm_ms,
                                    immediate_band_bps=s.immediate_band_bps, min_dwell_ms=s.min_dwell_ms),
        fallback_vol={u: x.annual_vol for u, x in universe.underlyings.items()},
        fallback_price={u: x.index_price_usd for u, x in universe.underlyings.items()},
        contingency=ContingencyRates(s.option_contingency_rate, s.basis_contingency_rate),
        horizon=HorizonRules(s.liquidation_participation, s.max_horizon_multiple, s.concentration_threshold,
                             s.concentration_rate),
        liquidity=LiquidityRules(s.depth_uncovered_penalty))


def margin_topics(settings: MarginSettings) -> list[TopicSpec]:
    topics = settings.common.topics
    mine = {topics.marks, topics.risk_params, topics.positions, topics.margin_state, topics.margin_calls,
            topics.margin_snapshot, topics.margin_dlq}
    if settings.liquidation_participation > 0:
        mine.add(topics.fills)      # the venue's volume, for the liquidation horizon
    if settings.concentration_rate > 0:
        # each input partition's share, for the concentration add-on (checked against the fills' partitions)
        mine |= {topics.open_interest, topics.fills}
    return [s for s in platform_topics(topics, settings.common.topic_partitions) if s.name in mine]


def advertise_address(s: MarginSettings, grpc_port: int) -> str:
    """Where other instances reach this one's gRPC server."""
    if s.advertise_address:
        return s.advertise_address
    host = s.common.bind_host
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return f"{host}:{grpc_port}"


def instance_id(s: MarginSettings) -> str | None:
    """The static group membership id: set, or host:port of a fixed gRPC port, or None (dynamic)."""
    if s.instance_id:
        return s.instance_id
    if s.grpc_port:
        return f"{SERVICE}-{socket.gethostname()}-{s.grpc_port}"
    return None


class MarginApp:
    """The wired service. ``start()`` loads risk params and marks and starts serving; ``run(stop)`` consumes."""

    def __init__(self, settings: MarginSettings, clock: Clock | None = None, metrics: MarginMetrics | None = None,
                 core_impl=core) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.metrics = metrics or margin_metrics()
        self.core = core_impl
        self.host = ServiceHost(SERVICE, settings.common)
        self.fanout = state_fanout()
        self.producer: ProtoProducer | None = None
        self.loop: ServiceLoop | None = None
        self._catching_up: dict = {}      # positions partition → end offset at assignment
        self._turn_complete = False       # the last turn applied every record it polled
        self.snapshots: RestartSnapshots | None = None
        self._mark_wait_until = 0.0

    @property
    def grpc_port(self) -> int:
        return self.host.grpc_port

    @property
    def metrics_port(self) -> int:
        return self.host.metrics_port

    # ---- start
    def start(self, serve_grpc: bool = True, serve_http_metrics: bool = True, consume: bool = True) -> "MarginApp":
        s, common = self.settings, self.settings.common
        topics = common.topics
        self.universe = platform_universe(common, self.clock.now_ms())
        self.table = instrument_table(self.universe)
        self.config = engine_config(s, self.universe)
        if consume:
            ensure_topics(common.bootstrap, margin_topics(s), timeout_s=s.startup_timeout_seconds)
            self.producer = ProtoProducer(new_producer(common.bootstrap, f"{SERVICE}-state"), SERVICE)
            # the outputs' partitions now: the first margin call after a start waited ~100 ms for its metadata
            self.producer.prepare([topics.margin_state, topics.margin_calls])
            publisher = KafkaPublisher(self.producer, topics.margin_state, topics.margin_calls, self.clock.now_ms,
                                       self.fanout)
        else:
            publisher = KafkaPublisher(None, "", "", self.clock.now_ms, self.fanout)
        self.engine = MarginEngine(self.table, self.config, publisher, self.clock, self.core, self.metrics)
        self.router = Router(self.engine, marks_topic=topics.marks, params_topic=topics.risk_params,
                             decode_mark=lambda m, key: codec.mark_from_proto(m, self.table, key),
                             decode_params=codec.risk_params_from_proto,
                             decode_book=lambda m, key: codec.book_from_proto(m, self.table, self.engine.asset_index,
                                                                              key),
                             reject=self._reject,
                             fills_topic=topics.fills if s.liquidation_participation > 0 else "",
                             decode_fill=lambda m: codec.fill_volume_from_proto(m, self.table))
        self.servicer = None
        if serve_grpc:
            servicer = self.servicer = MarginServicer(self.engine, self.fanout, self.metrics.what_if_seconds,
                                                      self.clock.now_ms)
            self.host.serve_grpc(s.grpc_port, [(margin_pb2_grpc.add_MarginServiceServicer_to_server, servicer,
                                                SERVICE_NAME)], max_workers=GRPC_WORKERS)
        if serve_http_metrics:
            self.host.serve_metrics(s.metrics_port)
        if consume:
            self._set_ready(False, "starting")
            self.dlq = DeadLetterSink(self.producer, topics.margin_dlq, SERVICE, self.clock.now_ms)
            market = new_consumer(common.bootstrap, None, f"{SERVICE}-market")
            self.market = ProtoConsumer(market, market_types(topics), self.dlq, SERVICE, common.max_message_bytes)
            # Fills only when the liquidation horizon is on: 7 days of them back from now (event time
            # of the broker's timestamps) fill the volume window.
            assign_market(self.market, topics.marks, topics.risk_params, s.marks_tail_records,
                          s.startup_timeout_seconds,
                          fills_topic=topics.fills if s.liquidation_participation > 0 else "",
                          fills_since_ms=self.clock.now_ms() - WINDOW_MS)
            self.rebalance = PositionsRebalance()
            positions = new_consumer(common.bootstrap, f"{common.topic_prefix}{s.consumer_group}", SERVICE,
                                     session_timeout_ms=s.session_timeout_ms,
                                     heartbeat_interval_ms=max(1000, s.session_timeout_ms // 3),
                                     group_instance_id=instance_id(s))
            self.rebalance.consumer = positions
            self.snapshots = self._restart_snapshots(positions)
            positions.subscribe([topics.positions], listener=self.rebalance)
            self.positions = ProtoConsumer(positions, {topics.positions: account_pb2.AccountSnapshot}, self.dlq,
                                           SERVICE, common.max_message_bytes)
            self._bootstrap_marks()
            self._load_risk_params()
            self._mark_wait_until = time.monotonic() + s.mark_wait_seconds
            every = [Every(1.0, self.producer.flush)]
            if self.snapshots.enabled:
                self.snapshots.start_writer()
                every.append(Every(s.snapshot_interval_seconds, self._capture_snapshot))
            if self.servicer is not None:
                self._start_forwarding(positions)
                every.append(Every(1.0, self._announce))
            self.loop = ServiceLoop(SERVICE, self.turn, every=every)
            self.host.on_close("market consumer", self.market.close)
            self.open_interest = None
            if s.concentration_rate > 0:
                # the portfolio's open interest per instrument and input partition, for the concentration add-on
                oi_consumer = new_consumer(common.bootstrap, None, f"{SERVICE}-open-interest")
                topic_partitions(oi_consumer, topics.fills, s.startup_timeout_seconds, required=True)
                self.open_interest = OpenInterestReader(
                    oi_consumer, topics.open_interest, self.table, self.engine.market.open_interest, self.dlq,
                    s.startup_timeout_seconds, common.max_message_bytes,
                    rejected=lambda code: self.metrics.rejected.labels(code).inc(),
                    source_partitions=lambda: len(oi_consumer.partitions_for_topic(topics.fills) or ()))
                self.host.on_close("open interest consumer", self.open_interest.close)
            self.host.on_close("positions consumer", self.positions.close)
            self.host.on_close("snapshots", self.snapshots.close)
            self.host.on_close("flush producer", self.producer.flush)
            self.host.on_close("close producer", self.producer.close)
        else:
            self._set_ready(True, "in-process")
        log.info("margin started", extra={"grpc_port": self.grpc_port, "metrics_port": self.metrics_port,
                                          "instruments": self.table.n, "core": getattr(self.core, "IMPLEMENTATION", "?")})
        return self

    def _restart_snapshots(self, positions) -> RestartSnapshots:
        s, common = self.settings, self.settings.common
        topics = common.topics
        n_positions = len(topic_partitions(positions, topics.positions, s.startup_timeout_seconds, required=True))
        n_states = len(topic_partitions(positions, topics.margin_state, s.startup_timeout_seconds, required=True))
        fp = fingerprint(self.table, self.config.assets, n_positions, n_states)
        return RestartSnapshots(common.bootstrap, topics.margin_snapshot, topics.margin_state, fp,
                                n_assets=len(self.config.assets), n_instruments=self.table.n,
                                enabled=s.snapshot_interval_seconds > 0, max_age_seconds=s.snapshot_max_age_seconds,
                                chunk_bytes=s.snapshot_chunk_bytes, timeout_s=s.startup_timeout_seconds,
                                metrics=self.metrics, clock_ms=self.clock.now_ms, client_id=SERVICE)

    def _capture_snapshot(self) -> None:
        """The owned partitions' books and offsets, between two turns, for the snapshot writer (it encodes
        and sends them on its own thread). Only while every owned partition is read and applied."""
        if (not self.engine.ready or self._catching_up or not self._turn_complete or self.rebalance.newly_assigned
                or self.rebalance.revoked or self.snapshots.busy):
            return
        topic = self.settings.common.topics.positions
        raw = self.positions.raw
        owned = sorted(self.rebalance.assigned)
        books: dict[int, list] = {p: [] for p in owned}
        book_of = self.engine.accounts.book
        for account, p in self.router.partition_of.items():
            if p in books:
                book = book_of(account)
                if book is not None:
                    books[p].append(book)
        offsets = {p: raw.position(TopicPartition(topic, p)) for p in owned}
        self.snapshots.offer(Capture(offsets, books))

    # ---- ownership: any instance answers for any account
    def _start_forwarding(self, positions) -> None:
        s, common = self.settings, self.settings.common
        parts = topic_partitions(positions, common.topics.positions, s.startup_timeout_seconds)
        self.redis = connect(common.redis_url)
        self.owners = OwnerRegistry(self.redis, s.redis_prefix, f"{common.topic_prefix}{s.consumer_group}",
                                    s.owner_ttl_seconds)
        self.address = advertise_address(s, self.grpc_port)
        self.forwarder = Forwarder(self.owners, self.address, len(parts),
                                   channel=lambda address: client_channel(address, common.security))
        self.servicer.use_forwarder(self.forwarder)
        self.host.on_close("withdraw ownership", lambda: self.owners.withdraw(self.rebalance.assigned, self.address))
        self.host.on_close("close peers", self.forwarder.close)
        self.host.on_close("close redis", self.redis.close)

    def _announce(self) -> None:
        """Renew the claim on the partitions this instance owns and serves (only while ready)."""
        if self.engine.ready and self.rebalance.assigned:
            self.owners.announce(self.rebalance.assigned, self.address)

    def _set_ready(self, ready: bool, why: str) -> None:
        self.engine.ready = ready
        self.host.set_ready(ready, why)

    def _bootstrap_marks(self) -> None:
        """Read md.marks up to its end offsets before the first model is built, so that forwards and
        liquidity add-ons come from marks, not from the universe's reference prices."""
        topics = self.settings.common.topics
        raw = self.market.raw
        tps = [tp for tp in raw.assignment() if tp.topic == topics.marks]
        end = raw.end_offsets(tps)
        deadline = time.monotonic() + self.settings.startup_timeout_seconds
        while any(raw.position(tp) < end[tp] for tp in tps) and time.monotonic() < deadline:
            marks, params = self.router.marks_and_params(self.market.poll(timeout_ms=200))
            self.engine.apply_marks(marks)
            self.router.pending_params.extend(params)
        self.engine.market.first_marks = False

    def _load_risk_params(self) -> None:
        common = self.settings.common
        latest = read_compacted(common.bootstrap, common.topics.risk_params, risk_pb2.RiskParams,
                                f"{SERVICE}-params", timeout_s=self.settings.startup_timeout_seconds)
        versions = sorted(latest.values(), key=lambda p: p.version)
        if versions:
            self.router.apply_params(versions[-1], None)
        self.router.risk_params(self.router.pending_params)
        self.router.pending_params = []

    def _reject(self, record, exc: Rejected) -> None:
        self.metrics.rejected.labels(exc.code).inc()
        if record is None:
            self.dlq.publish(exc.code, exc.detail, source_topic=self.settings.common.topics.risk_params)
        elif record.topic == self.settings.common.topics.positions:
            self.positions.reject(record, exc)
        else:
            self.market.reject(record, exc)

    # ---- run
    def turn(self) -> int:
        """One turn of the loop: marks and params, then position snapshots, then readiness and periodic work."""
        self._turn_complete = False
        # while a republication goes out, the polls do not wait: its slices follow each other
        timeout = 0 if self.engine.publishing else self.settings.poll_timeout_ms
        handled = self.router.market(self.market.poll(timeout_ms=timeout))
        # marks in hand: the evaluation below is not kept waiting for positions that may not come
        handled += self.router.positions(self.positions.poll(timeout_ms=0 if handled else timeout))
        if getattr(self, "open_interest", None) is not None:
            handled += self.open_interest.poll()
        if self.rebalance.revoked:
            revoked = set(self.rebalance.revoked)
            self.router.revoke(revoked)
            self.rebalance.revoked.clear()
            if getattr(self, "owners", None) is not None:
                self.owners.withdraw(revoked, self.address)
        if self.rebalance.newly_assigned:
            self._catch_up_on(self.rebalance.take_assigned())
        if self._catching_up or not self.engine.ready:
            self._check_ready()
        else:
            self.engine.tick()
        self._turn_complete = True
        return handled

    def _catch_up_on(self, partitions) -> None:
        """Newly assigned partitions (paused by the assignment): from their snapshot part's offset with its
        books applied, or from the beginning; then read to the end offsets taken now."""
        if self.engine.ready:
            self._set_ready(False, "reading newly assigned positions partitions")
        raw = self.positions.raw
        parts = list(partitions)
        end = raw.end_offsets(parts)
        started = time.perf_counter()
        restored = self.snapshots.positions_parts(parts, raw.beginning_offsets(parts), end) if parts else {}
        for tp, (_offset, books) in restored.items():
            for b in books:
                self.router.partition_of[b.account_id] = tp.partition
            self.engine.apply_snapshots(books)
        for tp in parts:
            if tp in restored:
                raw.seek(tp, restored[tp][0])
            else:
                raw.seek_to_beginning(tp)
        raw.resume(*parts)
        if restored:
            self.metrics.restore_seconds.set(time.perf_counter() - started)
        self._catching_up.update({tp: off for tp, off in end.items()})

    def _check_ready(self) -> None:
        raw = self.positions.raw
        if not self.rebalance.joined:
            return   # not yet in the group
        try:
            self._catching_up = {tp: end for tp, end in self._catching_up.items() if raw.position(tp) < end}
        except Exception:  # noqa: BLE001 - a partition revoked meanwhile: the next rebalance says so
            return
        if self._catching_up:
            return
        if self.engine.model is None:
            return   # no risk parameters yet
        if getattr(self, "open_interest", None) is not None and not self.open_interest.complete():
            return   # the open interest published before the start not read yet
        missing = self.engine.market.missing_marks(self.engine.accounts.ensure_flat().instrument[
            self.engine.accounts.flat.size != 0])
        if missing.size and time.monotonic() < self._mark_wait_until:
            return
        if missing.size:
            log.warning("instruments with open positions have no mark yet; their accounts count as stale",
                        extra={"instruments": [self.table.symbols[k] for k in missing.tolist()]})
        self._seed_published()
        self.engine.ready = True
        # Transitions out now; the republication of what else moved (heartbeats due after a restart) by
        # the next turns, serving meanwhile. With the concentration add-on, the model is built again first
        # with the open interest just read.
        if getattr(self, "open_interest", None) is not None:
            self.engine.refresh_model(publish_all=False, reason="ready")
        else:
            self.engine.full_recalculation(publish_all=False)
        self._set_ready(True, "inputs complete")
        gc.collect()   # the rebuilt account records leave the collector's scans
        gc.freeze()
        log.info("margin ready", extra={"accounts": len(self.engine.accounts), "version": self.engine.version})

    def _seed_published(self) -> None:
        """What this service published before for the accounts it owns (margin.state, compacted): a
        restarted instance then publishes only what changed and calls only on real transitions."""
        seeded = 0
        row_of = self.engine.accounts.row_of
        seed = self.engine.publication.seed
        for key, p in self.snapshots.published().items():
            row = row_of.get(key)
            if p is None or row is None:
                continue    # nothing to seed from (amounts that do not parse, another account's id)
            seed(row, p.state, p.equity_usd, p.im_usd, p.publish_ms, p.episode)
            seeded += 1
        log.info("published states read back", extra={"accounts": seeded})

    def run(self, stopping: threading.Event) -> None:
        lower_loop_priority()
        self.loop.run(stopping)

    def run_in_thread(self) -> tuple[threading.Thread, threading.Event]:
        return self.loop.run_in_thread()

    # ---- stop
    def stop_grpc(self) -> None:
        self.fanout.close()
        self.host.stop_grpc()

    def close(self) -> None:
        self.fanout.close()
        self.host.close()


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
    lifecycle.on_stop("close", app.close)
    app.run(lifecycle.stopping)
    log.info("margin loop stopped", extra={"accounts": len(app.engine.accounts), "version": app.engine.version})


def run() -> None:
    from marginflow.shared.service import run_service

    run_service(SERVICE, MarginSettings, main)
