"""Kafka side of the liquidation service: the publisher port, and reading ``liquidation.events`` back."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from kafka import KafkaConsumer, TopicPartition

from marginflow.api.liquidation.v1 import liquidation_pb2 as pb
from marginflow.liquidation.adapters import codec
from marginflow.liquidation.application import DepositOut, Event, FundSnapshot, Order
from marginflow.shared.fills import FillRecord, fill_to_proto
from marginflow.shared.config import Topics
from marginflow.shared.kafka import ProtoProducer, topic_partitions

FUND_KEY = "fund"
ACK_TIMEOUT_S = 30.0


class KafkaPublisher:
    """Each call publishes its records and waits for every acknowledgement (a failed one raises)."""

    def __init__(self, producer: ProtoProducer, topics: Topics, clock_ms: Callable[[], int]) -> None:
        self._producer = producer
        self._topics = topics
        self._clock_ms = clock_ms

    def _wait(self, futures) -> None:
        self._producer.flush(ACK_TIMEOUT_S)
        for f in futures:
            f.get(timeout=ACK_TIMEOUT_S)

    # Events and orders of a burst go out through send_many: each key's partition computed once (the same
    # partition as a plain send), the metric counted once per call.
    def publish_events(self, events: Sequence[Event]) -> None:
        now = self._clock_ms()
        self._wait(self._producer.send_many(self._topics.liquidation_events, [
            ((e.account_id or e.instrument or "venue").encode(), codec.event_to_proto(e, now).SerializeToString())
            for e in events]))

    def publish_orders(self, orders: Sequence[Order]) -> None:
        now = self._clock_ms()
        self._wait(self._producer.send_many(self._topics.liquidation_orders, [
            (o.account_id.encode(), codec.order_to_proto(o, now).SerializeToString()) for o in orders]))

    def publish_effects(self, fills: Sequence[FillRecord], deposits: Sequence[DepositOut],
                        fund: FundSnapshot | None) -> None:
        now = self._clock_ms()
        futures = [self._producer.send(self._topics.fills, f.account_id, fill_to_proto(f, now, codec.SOURCE))
                   for f in fills]
        futures += [self._producer.send(self._topics.account_events, d.account_id, codec.deposit_to_proto(d, now))
                    for d in deposits]
        if fund is not None:
            futures.append(self._producer.send(self._topics.liquidation_fund, FUND_KEY, codec.fund_to_proto(fund, now)))
        self._wait(futures)


def read_events(bootstrap: str, topic: str, client_id: str, timeout_s: float) -> list[Event]:
    """Every liquidation event from the beginning to the end offsets at the call, in time order."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id=client_id, group_id=None,
                             enable_auto_commit=False, max_poll_records=10000, fetch_max_bytes=64 * 1024 * 1024)
    try:
        deadline = time.monotonic() + timeout_s
        parts = topic_partitions(consumer, topic, timeout_s)
        if not parts:
            return []
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        out: list[tuple[int, int, int, Event]] = []
        remaining = {tp for tp in tps if end[tp] > 0}
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} did not reach its end within {timeout_s}s")
            for tp, records in consumer.poll(timeout_ms=500).items():
                for rec in records:
                    if rec.offset >= end[tp] or rec.value is None:
                        continue
                    try:
                        e = codec.event_from_proto(pb.LiquidationEvent.FromString(rec.value))
                    except Exception:  # noqa: BLE001 - an undecodable record in our own topic is skipped
                        continue
                    out.append((e.time_ms, tp.partition, rec.offset, e))
            remaining = {tp for tp in remaining if consumer.position(tp) < end[tp]}
        out.sort(key=lambda x: (x[0], x[1], x[2]))
        return [e for *_k, e in out]
    finally:
        consumer.close(autocommit=False)
