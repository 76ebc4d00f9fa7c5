"""The one place the liquidation service is wired: settings → adapters → application, on the service host.

``python -m marginflow.liquidation`` runs :func:`main` under :func:`marginflow.shared.service.run_service`.
Tests and the benchmark build a :class:`LiquidationApp` directly and run its loop in a thread.

Start: the lease in Redis first (:mod:`.adapters.lease`: one instance acts; another waits as a standby, with no
gRPC and ``marginflow_liquidation_active`` 0, and takes over once the lease is free), then the fund from
``liquidation.fund`` (compacted; the initial balance when empty), the episodes, slice
numbers, admin pauses and history from ``liquidation.events``, the last margin of every account from
``margin.state`` (to its end offsets) and the tail of ``md.marks``; then ready. ``margin.calls`` and
``trades.fills``: every partition, assigned directly (one instance acts for every account), from the offsets
committed under the group id; committed after each batch has been handled and its outputs acknowledged.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from kafka import TopicPartition

from marginflow.api.account.v1 import account_pb2
from marginflow.api.liquidation.v1 import liquidation_pb2, liquidation_pb2_grpc
from marginflow.api.margin.v1 import margin_pb2
from marginflow.api.marketdata.v1 import marketdata_pb2
from marginflow.liquidation.adapters import codec
from marginflow.liquidation.adapters.clients import AccountClient, MarginClient
from marginflow.liquidation.adapters.grpc_api import SERVICE_NAME, LiquidationServicer
from marginflow.liquidation.adapters.kafka_io import KafkaPublisher, read_events
from marginflow.liquidation.adapters.lease import RedisLease, holder_id
from marginflow.liquidation.adapters.metrics import LiquidationMetrics, liquidation_metrics
from marginflow.liquidation.adapters.redis_cache import RedisFundCache
from marginflow.liquidation.application import (
    EngineSettings, FundLedger, LiquidationEngine, instrument_infos)
from marginflow.liquidation.domain import CooldownMode, FundSettings, GuardSettings, PlanSettings
from marginflow.liquidation.settings import LiquidationSettings
from marginflow.shared.clock import Clock, SystemClock
from marginflow.shared.errors import Rejected
from marginflow.shared.host import Every, ServiceHost, ServiceLoop
from marginflow.shared.kafka import (
    DeadLetterSink, ProtoConsumer, ProtoProducer, TopicSpec, ensure_topics, new_assigned_consumer, new_producer,
    assign_every_partition, platform_topics, read_compacted, rewind, seek_to_tail, topic_partitions)
from marginflow.shared.lifecycle import Lifecycle, tune_gc
from marginflow.shared.logs import get_logger
from marginflow.shared.redisstore import connect
from marginflow.shared.security import client_channel
from marginflow.shared.universe import platform_universe

SERVICE = "liquidation"
FETCH_WAIT_MS = 20
MARKET_RECORDS_PER_TURN = 2000
# ... and while re-checks are in flight: their answers are acted on between smaller bites.
MARKET_RECORDS_BUSY = 200
# Accounts re-checked in one call to the margin service (its Recheck takes up to 1,000; a call of 100 takes
# ~10 ms of its time, far inside the deadline even under load and beside its evaluations).
ASSESS_BATCH = 100
log = get_logger(__name__)


# The output producer's linger, ms. Every publication of events, orders and effects ends with a flush, which
# sends what is buffered at once, so the linger adds no latency there; it only keeps the records of one
# publication in few batches (with 0 the sender thread took each record as its own batch and request while
# the loop was still appending, and both contended for the GIL record by record). A dead letter, sent
# without a flush, goes out within it.
OUTPUT_LINGER_MS = 20
# How long a turn waits for calls and fills when no re-check is in flight, ms (with re-checks in flight: not at all).
INPUT_POLL_MS = 5


# The last margin of every account is held (100k after a start): a full collection scanned all of it, 25–65 ms
# of the loop each time, several in a burst of liquidations. The start's objects are frozen out of the scans
# and gen-0 collections made rarer (as in the margin service).
GC_GEN0_THRESHOLD = 10_000


class LeaseLost(RuntimeError):
    """Another instance holds the lease: this one stops acting (and exits, to wait again as a standby)."""


class StoppedAsStandby(RuntimeError):
    """Asked to stop while waiting for the lease: nothing was started."""


def liquidation_topics(settings: LiquidationSettings) -> list[TopicSpec]:
    t = settings.common.topics
    mine = {t.marks, t.margin_state, t.margin_calls, t.fills, t.account_events, t.liquidation_orders,
            t.liquidation_events, t.liquidation_fund, t.liquidation_dlq}
    return [s for s in platform_topics(t, settings.common.topic_partitions) if s.name in mine]


def engine_settings(s: LiquidationSettings) -> EngineSettings:
    plan = PlanSettings(margin_buffer_fraction=s.margin_buffer, fee_rate=s.fee_rate,
                        large_position_cooldown_mode=CooldownMode(s.cooldown_mode))
    guards = GuardSettings(s.mark_max_age_ms, s.index_band, s.twap_band, s.twap_window_ms)
    return EngineSettings(plan, guards, FundSettings(s.fund_max_loss_per_account_usd), s.max_attempts_per_round,
                          s.round_interval_ms, s.max_rounds, s.house_account, history=s.history,
                          min_slippage_fraction=s.min_slippage)


class LiquidationApp:
    def __init__(self, settings: LiquidationSettings, clock: Clock | None = None,
                 metrics: LiquidationMetrics | None = None, margin=None, positions=None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.metrics = metrics or liquidation_metrics()
        self.host = ServiceHost(SERVICE, settings.common)
        self._margin = margin
        self._positions = positions
        self._inflight: list[Future] = []   # assessments of a batch of accounts each
        self._admin: queue.Queue = queue.Queue()
        self._polled: list = []            # the input records of the turn under way
        self.loop: ServiceLoop | None = None
        self.lease: RedisLease | None = None
        self._lease_due = 0.0              # monotonic time of the next renewal
        self.lost_lease = False

    @property
    def grpc_port(self) -> int:
        return self.host.grpc_port

    # ---- start
    def start(self, serve_grpc: bool = True, serve_http_metrics: bool = True,
              stopping: threading.Event | None = None) -> "LiquidationApp":
        """Take the lease (a standby waits here until it is free; ``stopping`` ends the wait with
        :class:`StoppedAsStandby`), then read the state and start."""
        s, common = self.settings, self.settings.common
        topics = common.topics
        timeout = s.startup_timeout_seconds
        universe = platform_universe(common, self.clock.now_ms())
        self.instruments = instrument_infos(universe)
        ensure_topics(common.bootstrap, liquidation_topics(s), timeout_s=timeout)
        self.producer = ProtoProducer(new_producer(common.bootstrap, f"{SERVICE}-out", linger_ms=OUTPUT_LINGER_MS), SERVICE)
        # the outputs' partitions known before the first burst, not fetched while its orders wait
        self.producer.prepare([topics.liquidation_events, topics.liquidation_orders, topics.fills,
                               topics.account_events, topics.liquidation_fund, topics.liquidation_dlq])
        self.redis = connect(common.redis_url)
        if serve_http_metrics:
            self.host.serve_metrics(s.metrics_port)
        # Acting needs the lease, and the state is read only once it is held: a standby's would be stale.
        self.lease = RedisLease(self.redis, s.redis_prefix, holder_id(), s.lease_ms)
        self._take_lease(stopping)
        self.fund_cache = RedisFundCache(self.redis, s.redis_prefix)
        grpc_timeout = s.grpc_timeout_ms / 1000.0
        dial = lambda address: client_channel(address, common.security)  # noqa: E731 - TLS and token as configured
        self.margin_client = self._margin or MarginClient(s.margin_address, grpc_timeout, dial)
        self.account_client = self._positions or AccountClient(s.portfolio_address, grpc_timeout, dial)
        ledger = FundLedger(s.fund_initial_usd, s.recent_ids, s.history)
        fund_state = read_compacted(common.bootstrap, topics.liquidation_fund, liquidation_pb2.InsuranceFundState,
                                    f"{SERVICE}-fund", timeout_s=timeout).get("fund")
        if fund_state is not None:
            ledger.restore(codec.fund_from_proto(fund_state))
        self.engine = LiquidationEngine(engine_settings(s), self.instruments, self.margin_client, self.account_client,
                                        KafkaPublisher(self.producer, topics, self.clock.now_ms), ledger,
                                        self.fund_cache, self.clock.now_ms, self.metrics)
        if fund_state is None:   # the initial balance becomes the truth at once (a restart keeps it)
            self.engine.publisher.publish_effects((), (), ledger.snapshot())
        self.fund_cache.write(ledger.snapshot())
        events = read_events(common.bootstrap, topics.liquidation_events, f"{SERVICE}-events", timeout)
        self.engine.rebuild(events)
        self.dlq = DeadLetterSink(self.producer, topics.liquidation_dlq, SERVICE, self.clock.now_ms)
        if serve_grpc:
            servicer = LiquidationServicer(self.engine, s.admin_token, lambda: self.host.ready, self.fund_cache.read,
                                           self.run_admin)
            self.host.serve_grpc(s.grpc_port, [(liquidation_pb2_grpc.add_LiquidationServiceServicer_to_server,
                                                servicer, SERVICE_NAME)])
        # A short fetch wait: a margin call or a mark is acted on within tens of ms, not half a second.
        market = new_assigned_consumer(common.bootstrap, None, f"{SERVICE}-market", fetch_max_wait_ms=FETCH_WAIT_MS)
        self.market = ProtoConsumer(market, {topics.marks: marketdata_pb2.Mark,
                                             topics.margin_state: margin_pb2.MarginState}, self.dlq, SERVICE)
        self._assign_market()
        # margin.calls and trades.fills: every partition assigned directly, no group membership. One instance
        # acts for every account (it reads every account's margin.state and keeps the one fund), so a group
        # would only add joins — and with kafka-python a restarted member's join was seen to stall at its
        # SyncGroup for over a minute, its fills' fees uncredited meanwhile. The group id keeps the offsets.
        inputs = new_assigned_consumer(common.bootstrap, f"{common.topic_prefix}{s.consumer_group}", SERVICE,
                                       fetch_max_wait_ms=FETCH_WAIT_MS)
        assign_every_partition(inputs, [topics.margin_calls, topics.fills], s.startup_timeout_seconds)
        self.inputs = ProtoConsumer(inputs, {topics.margin_calls: margin_pb2.MarginCall,
                                             topics.fills: account_pb2.Fill}, self.dlq, SERVICE)
        self.pool = ThreadPoolExecutor(max_workers=s.workers, thread_name_prefix=f"{SERVICE}-assess")
        self._catch_up_states(timeout)
        seeded = self.engine.seed_pending_from_states()
        self.loop = ServiceLoop(SERVICE, self._turn_holding_lease, every=[Every(1.0, self.engine.refresh_gauges),
                                                           Every(1.0, self.check_fund_cache)],
                                recover=self.recover)
        for name, step in (("market consumer", self.market.close), ("inputs consumer", self.inputs.close),
                           ("assessments", lambda: self.pool.shutdown(wait=True, cancel_futures=True)),
                           ("flush producer", self.producer.flush), ("close producer", self.producer.close),
                           ("release lease", self.lease.release), ("close redis", self.redis.close)):
            self.host.on_close(name, step)
        self.host.set_ready(True, "state rebuilt")
        log.info("liquidation started", extra={"grpc_port": self.grpc_port, "events": len(events),
                                               "fund_usd": str(ledger.balance), "pending": seeded,
                                               "live": sum(1 for t in self.engine.accounts.values() if t.live)})
        return self

    def _assign_market(self) -> None:
        topics, raw = self.settings.common.topics, self.market.raw
        deadline = time.monotonic() + self.settings.startup_timeout_seconds
        tps = []
        for topic in (topics.marks, topics.margin_state):
            parts = topic_partitions(raw, topic, max(0.0, deadline - time.monotonic()))
            tps += [TopicPartition(topic, p) for p in sorted(parts)]
        raw.assign(tps)
        marks = [tp for tp in tps if tp.topic == topics.marks]
        states = [tp for tp in tps if tp.topic == topics.margin_state]
        raw.seek_to_beginning(*states)
        seek_to_tail(raw, marks, self.settings.marks_tail_records)
        self._market_end = raw.end_offsets(tps)

    def _catch_up_states(self, timeout_s: float) -> None:
        raw = self.market.raw
        deadline = time.monotonic() + timeout_s
        while any(raw.position(tp) < end for tp, end in self._market_end.items()):
            if time.monotonic() > deadline:
                raise TimeoutError("margin.state / md.marks not read to their end in time")
            self._route_market(self.market.poll(timeout_ms=200, max_records=20000))

    # ---- the loop
    def _route_market(self, records) -> int:
        topics = self.settings.common.topics
        marks, states, equities = [], [], []
        latest = {}   # the newest margin.state per account of these records (a key's records are in order)
        for r in records:
            if r.topic == topics.marks:
                if r.value.instrument.startswith(codec.INDEX_MARK_PREFIX):
                    continue   # an underlying's index record: every instrument's mark carries its index already
                try:
                    marks.append(codec.mark_from_proto(r.value, self.instruments))
                except Rejected as exc:
                    self.market.reject(r, exc)
            else:
                latest[r.value.account_id] = r
        needs_state = self.engine.needs_state
        for r in latest.values():
            try:
                if needs_state(r.value.account_id, r.value.state):
                    states.append(codec.state_from_proto(r.value))
                else:   # a mark move republishes every account: most need their equity alone (ADL)
                    equities.append(codec.equity_from_proto(r.value))
            except Rejected as exc:
                self.market.reject(r, exc)
        self.engine.on_marks(marks)
        self.engine.on_equities(equities)
        self.engine.on_states(states)
        return len(records)

    def _route_inputs(self, records) -> int:
        topics = self.settings.common.topics
        calls, fills = [], []
        for r in records:
            try:
                if r.topic == topics.margin_calls:
                    calls.append(codec.call_from_proto(r.value, r.key))
                else:
                    fills.append(codec.fill_from_proto(r.value, r.topic, r.partition, r.offset))
            except Rejected as exc:
                self.inputs.reject(r, exc)
        self.engine.on_calls(calls)
        if fills:
            self.engine.on_fills(fills)
        return len(records)

    def turn(self) -> int:
        # Calls and fills first, then the next re-checks out and the answers in, and only then the market:
        # margin.state carries every account (100k after a move, behind the calls of the same move), and a
        # bite of it read first delayed every call's re-check by the bite's decoding. It is read in bites so
        # that calls, assessments done and orders go out between them rather than after the whole backlog.
        busy = bool(self._inflight)
        records = self.inputs.poll(timeout_ms=0 if busy else INPUT_POLL_MS, max_records=5000)
        self._polled = records
        handled = 0
        self.engine.begin_batch()
        try:
            if records:
                handled += self._route_inputs(records)
            self._run_admin_requests()
        finally:
            self.engine.end_batch()   # events, then orders, each acknowledged: before the offsets are committed
        # The re-checks answered by now are taken out, the next ones sent, and only then are the answers acted
        # on: the margin service computes the next batches (on its own core) while this one plans and publishes.
        done = [f for f in self._inflight if f.done()]
        for future in done:
            self._inflight.remove(future)
        self._submit_due()
        # The answers are acted on together and their events and orders published together (one
        # acknowledgement each): under load every flush waits for the broker, so one per re-check of a burst
        # delayed the later re-checks' orders by far more than planning them did. The answers still in flight
        # are acted on in a later turn.
        if done:
            handled += self.engine.act_many([a for future in done for a in future.result()])
        if records:
            self.inputs.commit()
        self._polled = []
        self._submit_due()   # the accounts acting made due (a round's next look) or that came due meanwhile
        busy = bool(self._inflight)
        handled += self._route_market(self.market.poll(timeout_ms=0 if busy else self.settings.poll_timeout_ms,
                                                       max_records=MARKET_RECORDS_BUSY if busy
                                                       else MARKET_RECORDS_PER_TURN))
        if self._inflight and not handled:
            time.sleep(0.001)
        return handled

    def _submit_due(self) -> None:
        """Due accounts are re-checked together: one Recheck call for up to ASSESS_BATCH accounts, at most
        MF_LIQUIDATION_WORKERS calls in flight (the accounts that come due meanwhile go in the next one)."""
        now = self.clock.now_ms()
        while len(self._inflight) < self.settings.workers:
            due = self.engine.due(now, ASSESS_BATCH)
            if not due:
                break
            self._inflight.append(self.pool.submit(self.engine.assess_many, due))

    # ---- the lease: one acting instance
    def _renew_every_s(self) -> float:
        return self.lease.lease_ms / 4000.0

    def _take_lease(self, stopping: threading.Event | None) -> None:
        stopping = stopping or threading.Event()
        waited = False
        while not (got := self.lease.take()):
            if not waited:
                waited = True
                log.warning("standby: another liquidation instance holds the lease; acting once it is free",
                            extra={"holder": self.lease.current() if got is False else "unknown (Redis unreachable)",
                                   "lease_ms": self.lease.lease_ms})
            self.metrics.active.set(0)
            if stopping.wait(self._renew_every_s()):
                raise StoppedAsStandby("stopped while waiting for the lease")
        if waited:
            log.info("lease taken: this instance acts now", extra={"holder": self.lease.holder})
        self.metrics.active.set(1)
        self._lease_due = time.monotonic() + self._renew_every_s()

    def _keep_lease(self) -> bool:
        """Renewed every quarter of the lease, checked before each turn acts: a holder that was paused longer
        than the lease and finds another holder stops before it acts again (False). Redis unreachable: the
        holder goes on (nobody else can take the lease) and tries again within a second."""
        now = time.monotonic()
        if now < self._lease_due:
            return True
        got = self.lease.take()
        if got is False:
            self.lost_lease = True
            self.metrics.active.set(0)
            self.host.set_ready(False, "lease lost to another instance")
            log.error("the liquidation lease is held by another instance; this one stops acting",
                      extra={"holder": self.lease.current()})
            return False
        self._lease_due = now + (self._renew_every_s() if got else min(1.0, self._renew_every_s()))
        return True

    def _turn_holding_lease(self) -> int | None:
        """A turn while the lease is held; None (the loop ends) once it is lost."""
        return self.turn() if self._keep_lease() else None

    # ---- recovery
    def recover(self, exc: BaseException) -> None:
        """A failed turn (a broker timeout while publishing): its input records are read again, not skipped —
        the fills' fees are credited once by their offsets, a call is pending again."""
        records, self._polled = self._polled, []
        rewind(self.inputs.raw, ((r.topic, r.partition, r.offset) for r in records))

    def check_fund_cache(self) -> None:
        """Redis emptied or restarted: the fund's copy is written again from the ledger (rebuilt from Kafka)."""
        if self.fund_cache.missing():
            log.warning("insurance fund missing from Redis; writing it again from the ledger")
            self.fund_cache.write(self.engine.ledger.snapshot())

    # ---- admin calls from gRPC threads run in the loop's thread
    def run_admin(self, fn):
        if self.loop is None or threading.current_thread().name.endswith("-loop"):
            return fn()
        future: Future = Future()
        self._admin.put((fn, future))
        return future.result(timeout=10)

    def _run_admin_requests(self) -> None:
        while True:
            try:
                fn, future = self._admin.get_nowait()
            except queue.Empty:
                return
            try:
                future.set_result(fn())
            except Exception as exc:  # noqa: BLE001 - handed back to the gRPC thread
                future.set_exception(exc)

    def run(self, stopping: threading.Event) -> None:
        self.loop.run(stopping)

    def run_in_thread(self):
        return self.loop.run_in_thread()

    def close(self) -> None:
        self.host.close()
        for client in (self.margin_client, self.account_client):
            close = getattr(client, "close", None)
            if close is not None and client not in (self._margin, self._positions):
                close()


def main(settings: LiquidationSettings, lifecycle: Lifecycle) -> None:
    app = LiquidationApp(settings, SystemClock())
    try:
        app.start(stopping=lifecycle.stopping)
    except StoppedAsStandby:
        app.host.close()
        return
    lifecycle.on_stop("close", app.close)
    tune_gc(GC_GEN0_THRESHOLD)
    app.run(lifecycle.stopping)
    if app.lost_lease:   # exits non-zero: restarted, it waits as a standby
        raise LeaseLost("another liquidation instance holds the lease")


def run() -> None:
    from marginflow.shared.service import run_service

    run_service(SERVICE, LiquidationSettings, main)
