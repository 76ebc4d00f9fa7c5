"""Wiring of the exchange simulator (demo and tests): ``python -m marginflow.exchange_sim``.

Marks: every partition of ``md.marks`` from a short tail (no group). Orders: every partition of
``liquidation.orders`` assigned directly, offsets committed (under the group id) after the fills are acknowledged.
"""

from __future__ import annotations

import threading
from decimal import Decimal

from kafka import TopicPartition

from marginflow.api.liquidation.v1 import liquidation_pb2
from marginflow.api.marketdata.v1 import marketdata_pb2
from marginflow.exchange_sim.adapters.kafka_io import (INDEX_MARK_PREFIX, KafkaFillSink, house_deposit,
                                                       mark_from_proto, order_from_proto)
from marginflow.exchange_sim.adapters.metrics import exchange_sim_metrics
from marginflow.exchange_sim.application import SimConfig, Simulator, Spec
from marginflow.exchange_sim.settings import ExchangeSimSettings
from marginflow.shared.clock import Clock, SystemClock
from marginflow.shared.errors import Rejected
from marginflow.shared.host import ServiceHost, ServiceLoop
from marginflow.shared.kafka import (
    DeadLetterSink, ProtoConsumer, ProtoProducer, TopicSpec, ensure_topics, new_consumer, new_producer,
    assign_every_partition, platform_topics, seek_to_tail, topic_partitions)
from marginflow.shared.lifecycle import Lifecycle
from marginflow.shared.logs import get_logger
from marginflow.shared.universe import platform_universe

SERVICE = "exchange-sim"
log = get_logger(__name__)


def sim_topics(settings: ExchangeSimSettings) -> list[TopicSpec]:
    t = settings.common.topics
    mine = {t.marks, t.liquidation_orders, t.fills, t.liquidation_dlq, t.account_events}
    return [s for s in platform_topics(t, settings.common.topic_partitions) if s.name in mine]


class ExchangeSimApp:
    def __init__(self, settings: ExchangeSimSettings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.host = ServiceHost(SERVICE, settings.common)
        self.loop: ServiceLoop | None = None

    def start(self, serve_http_metrics: bool = True) -> "ExchangeSimApp":
        s, common = self.settings, self.settings.common
        topics = common.topics
        universe = platform_universe(common, self.clock.now_ms())
        specs = {sym: Spec(Decimal(repr(i.contract_size)), Decimal(repr(i.tick_size_usd)))
                 for sym, i in universe.instruments.items()}
        ensure_topics(common.bootstrap, sim_topics(s))
        self.producer = ProtoProducer(new_producer(common.bootstrap, f"{SERVICE}-fills", linger_ms=0), SERVICE)
        self.sim = Simulator(SimConfig(s.house_account, s.fee_rate, s.book_levels, s.default_half_spread,
                                       s.default_depth_contracts, s.depth_multiplier), specs,
                             KafkaFillSink(self.producer, topics.fills, self.clock.now_ms), self.clock.now_ms,
                             exchange_sim_metrics())
        dlq = DeadLetterSink(self.producer, topics.liquidation_dlq, SERVICE, self.clock.now_ms)
        marks = new_consumer(common.bootstrap, None, f"{SERVICE}-marks")
        self.marks = ProtoConsumer(marks, {topics.marks: marketdata_pb2.Mark}, dlq, SERVICE)
        tps = [TopicPartition(topics.marks, p) for p in sorted(topic_partitions(marks, topics.marks, 30.0))]
        marks.assign(tps)
        seek_to_tail(marks, tps, s.marks_tail_records)
        # Every partition assigned directly (one simulator; no group membership to lose under load); the
        # group id only keeps the committed offsets; a first start begins at the end (no replay of old orders).
        orders = new_consumer(common.bootstrap, f"{common.topic_prefix}{s.consumer_group}", SERVICE,
                              auto_offset_reset="latest")
        # the start resolved now (committed, else the end), before any order arrives
        order_tps = assign_every_partition(orders, [topics.liquidation_orders], 60.0)
        first_start = all(orders.committed(tp) is None for tp in order_tps)
        if first_start and s.house_collateral_usd > 0:
            # The house takes the other side of every fill; without collateral the margin service would put
            # it in liquidation (and bankrupt) on the first adverse move, an account nobody can liquidate.
            msg = house_deposit(s.house_account, s.house_collateral_usd, s.settlement_asset, self.clock.now_ms())
            self.producer.send(topics.account_events, s.house_account, msg).get(timeout=30)
            log.info("house collateral deposited", extra={"house": s.house_account,
                                                          "amount_usd": str(s.house_collateral_usd)})
        self.orders = ProtoConsumer(orders, {topics.liquidation_orders: liquidation_pb2.LiquidationOrder}, dlq,
                                    SERVICE)
        self._universe = universe
        if serve_http_metrics:
            self.host.serve_metrics(s.metrics_port)
        self.loop = ServiceLoop(SERVICE, self.turn)
        for name, step in (("marks consumer", self.marks.close), ("orders consumer", self.orders.close),
                           ("flush producer", self.producer.flush), ("close producer", self.producer.close)):
            self.host.on_close(name, step)
        self.host.set_ready(True, "started")
        log.info("exchange-sim started", extra={"house": s.house_account, "fee_rate": str(s.fee_rate)})
        return self

    def turn(self) -> int:
        marks = []
        recs = self.marks.poll(timeout_ms=0, max_records=20000)
        for r in recs:
            if r.value.instrument.startswith(INDEX_MARK_PREFIX):
                continue   # an underlying's index (marketdata's "index:BTC"): no book to fill against
            try:
                marks.append(mark_from_proto(r.value, self._universe.instruments))
            except Rejected as exc:
                self.marks.reject(r, exc)
        self.sim.on_marks(marks)
        orders = []
        records = self.orders.poll(timeout_ms=self.settings.poll_timeout_ms, max_records=2000)
        for r in records:
            try:
                orders.append(order_from_proto(r.value))
            except Rejected as exc:
                self.orders.reject(r, exc)
        if orders:
            fills = self.sim.on_orders(orders)
            log.info("orders matched", extra={"orders": len(orders), "fills": len(fills) // 2,
                                              "marks": len(self.sim.marks)})
        if records:
            self.orders.commit()
        return len(recs) + len(records)

    def run(self, stopping: threading.Event) -> None:
        self.loop.run(stopping)

    def run_in_thread(self):
        return self.loop.run_in_thread()

    def close(self) -> None:
        self.host.close()


def main(settings: ExchangeSimSettings, lifecycle: Lifecycle) -> None:
    app = ExchangeSimApp(settings, SystemClock()).start()
    lifecycle.on_stop("close", app.close)
    app.run(lifecycle.stopping)


def run() -> None:
    from marginflow.shared.service import run_service

    run_service(SERVICE, ExchangeSimSettings, main)
