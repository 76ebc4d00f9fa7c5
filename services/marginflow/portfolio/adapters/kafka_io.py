"""Kafka side of the portfolio service: the input source, the snapshot sink, the admin event publisher."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from google.protobuf.message import DecodeError

from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.errors import CommitFailedError, KafkaError

from marginflow.api.account.v1 import account_pb2 as pb
from marginflow.portfolio.adapters.codec import contribution_to_proto, event_from_proto, event_to_proto, fill_from_proto
from marginflow.portfolio.application import InputRecord, StateChange
from marginflow.portfolio.domain.model import AccountEvent, InputPosition
from marginflow.portfolio.domain.open_interest import Contribution
from marginflow.shared.config import Topics
from marginflow.shared.errors import Rejected
from marginflow.shared.kafka import Decoded, ProtoConsumer, ProtoProducer, rewind
from marginflow.shared.logs import get_logger
from marginflow.shared.open_interest import contribution_key, parse_contribution_key

log = get_logger(__name__)

ACK_TIMEOUT_SECONDS = 30.0


def input_types(topics: Topics) -> dict[str, type]:
    return {topics.fills: pb.Fill, topics.account_events: pb.AccountEvent}


class InputsRebalance(ConsumerRebalanceListener):
    """What the group gave this instance: whether it has joined, and the partitions assigned since the
    last :meth:`take_assigned` (called inside ``poll``, on the consuming thread)."""

    def __init__(self) -> None:
        self.joined = False
        self._newly: list[TopicPartition] = []

    def on_partitions_revoked(self, revoked) -> None:
        pass

    def on_partitions_assigned(self, assigned) -> None:
        self.joined = True
        self._newly.extend(assigned)
        log.info("input partitions assigned", extra={"partitions": sorted({tp.partition for tp in assigned})})

    def take_assigned(self) -> list[TopicPartition]:
        parts, self._newly = self._newly, []
        return parts

    def requeue(self, parts: list[TopicPartition]) -> None:
        self._newly = parts + self._newly


class KafkaRecordSource:
    """RecordSource port over trades.fills + account.events (one consumer group).

    Catching up: a partition assigned to this instance (at start, or moved here by a rebalance) is
    *catching up* until the consumer's position reaches the partition's end offset taken when it was
    assigned — until then Redis holds that partition's accounts as the previous owner (or this
    process before it was killed) left them, without the inputs published since. :meth:`catching_up`
    says which partition numbers those are (None: not yet in the group, nothing is known), for the
    readiness gate. Subscribe through :meth:`subscribe` so the source sees the assignments.
    """

    def __init__(self, consumer: ProtoConsumer, dlq_producer: ProtoProducer, topics: Topics,
                 poll_timeout_ms: int = 100, max_records: int = 5000) -> None:
        self._consumer = consumer
        self._dlq_producer = dlq_producer
        self._fills = topics.fills
        self._poll_timeout_ms = poll_timeout_ms
        self._max_records = max_records
        self._streams: dict[tuple[str, int], str] = {}
        self.rebalance = InputsRebalance()
        self._ends: dict[TopicPartition, int] = {}          # partition → end offset at its assignment
        self._catching_up: frozenset[int] | None = None
        self.on_assigned: list[Callable[[frozenset[int]], object]] = []   # told the partition numbers assigned

    def subscribe(self, topics: Sequence[str]) -> None:
        self._consumer.raw.subscribe(list(topics), listener=self.rebalance)

    def catching_up(self) -> frozenset[int] | None:
        """Partition numbers not yet read to their end offset at assignment (None before joining)."""
        return self._catching_up

    def _refresh_catch_up(self) -> None:
        """Between batches (everything polled before has been applied, or rewound by the recovery)."""
        raw = self._consumer.raw
        if not self.rebalance.joined:
            return
        owned = raw.assignment()
        ends = {tp: end for tp, end in self._ends.items() if tp in owned}
        try:
            ends = {tp: end for tp, end in ends.items() if raw.position(tp) < end}
        except (KafkaError, AssertionError, ValueError):   # revoked meanwhile: the next rebalance tells
            return
        self._ends = ends
        self._catching_up = frozenset(tp.partition for tp in ends)

    def _take_assigned(self) -> None:
        parts = self.rebalance.take_assigned()
        if not parts:
            return
        numbers = frozenset(tp.partition for tp in parts)
        for listener in self.on_assigned:   # before any record of the poll is applied
            listener(numbers)
        try:
            self._ends.update(self._consumer.raw.end_offsets(parts))
        except KafkaError as exc:
            # Never raised out of poll(): the records it returns would be lost with the exception.
            # The partitions count as behind (a huge end) and their end is asked again next poll.
            log.warning("end offsets of assigned partitions unknown; asking again", extra={"error": str(exc)})
            self._ends.update({tp: 1 << 62 for tp in parts})
            self.rebalance.requeue(parts)
        self._catching_up = frozenset(tp.partition for tp in self._ends)

    def poll(self) -> list[InputRecord]:
        self._refresh_catch_up()
        out = self._poll()
        self._take_assigned()
        return out

    def _poll(self) -> list[InputRecord]:
        out: list[InputRecord] = []
        fills = self._fills
        streams = self._streams
        for rec in self._consumer.poll(self._poll_timeout_ms, self._max_records):
            try:
                command = fill_from_proto(rec.value) if rec.topic == fills else event_from_proto(rec.value)
            except Rejected as exc:
                command = exc
            stream = streams.get((rec.topic, rec.partition))
            if stream is None:
                stream = streams[(rec.topic, rec.partition)] = f"{rec.topic}:{rec.partition}"
            out.append(InputRecord(InputPosition(stream, rec.offset), rec.key, command, rec, rec.timestamp_ms))
        return out

    def reject(self, record: InputRecord, reason: Rejected) -> None:
        handle = record.handle
        assert isinstance(handle, Decoded)
        self._consumer.reject(handle, reason)

    def commit(self) -> None:
        self._dlq_producer.flush()   # dead letters of the batch are durable before its offsets
        try:
            self._consumer.commit()
        except CommitFailedError as exc:
            # A rebalance took the partitions: the new owner gets the records again and skips them.
            log.warning("offset commit failed; records will be redelivered and skipped", extra={"error": str(exc)})

    def rewind(self, records: Sequence[InputRecord]) -> None:
        handles = [r.handle for r in records]
        assert all(isinstance(h, Decoded) for h in handles)
        rewind(self._consumer.raw, ((h.topic, h.partition, h.offset) for h in handles))

    def assigned_partitions(self) -> set[int]:
        """Partition numbers this instance owns now (fills and events are co-partitioned)."""
        return {tp.partition for tp in self._consumer.raw.assignment()}

    def fills_offsets(self, partitions) -> dict[int, int]:
        """The next offset of each owned ``trades.fills`` partition (every record before it polled and, between
        turns, applied); partitions revoked meanwhile are left out."""
        raw = self._consumer.raw
        out = {}
        for p in partitions:
            tp = TopicPartition(self._fills, p)
            try:
                out[p] = raw.position(tp)
            except (KafkaError, AssertionError, ValueError):   # no longer assigned: the next rebalance tells
                continue
        return out

    def close(self) -> None:
        self._consumer.close()


class KafkaFillHistory:
    """FillHistory port: ranges and single records of one ``trades.fills`` partition, read by a consumer of its
    own (no group). The ids of a range (what the republish index of a partition lacks at start and after a
    rebalance) are read without decoding the fills' numbers; whole records only when a copy must be validated."""

    def __init__(self, consumer, topic: str, timeout_s: float = 120.0) -> None:
        self._consumer = consumer
        self._topic = topic
        self._timeout_s = timeout_s

    def _records(self, partition: int, start_offset: int, end_offset: int, since_ms: int | None):
        consumer = self._consumer
        tp = TopicPartition(self._topic, partition)
        consumer.assign([tp])
        start = max(start_offset, consumer.beginning_offsets([tp])[tp])
        if since_ms is not None:
            by_time = consumer.offsets_for_times({tp: max(0, since_ms)}).get(tp)
            start = max(start, by_time.offset if by_time is not None else end_offset)
        if start >= end_offset:
            return
        consumer.seek(tp, start)
        deadline = time.monotonic() + self._timeout_s
        while consumer.position(tp) < end_offset:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self._topic}:{partition} not read from {start} to {end_offset} "
                                   f"within {self._timeout_s} s")
            for rec in consumer.poll(timeout_ms=200, max_records=20_000).get(tp, ()):
                if rec.offset >= end_offset:
                    return
                yield rec

    def ids(self, partition: int, start_offset: int, end_offset: int, since_ms: int) -> list[tuple[str, str, int, int]]:
        out = []
        for rec in self._records(partition, start_offset, end_offset, since_ms):
            try:
                fill_id = pb.Fill.FromString(rec.value).fill_id if rec.value else ""
            except DecodeError:
                continue
            if fill_id:
                out.append((rec.key.decode(errors="replace") if rec.key else "", fill_id, rec.offset, rec.timestamp))
        return out

    def read(self, partition: int, offsets: Sequence[int]) -> list[InputRecord]:
        stream = f"{self._topic}:{partition}"
        out = []
        for offset in offsets:
            for rec in self._records(partition, offset, offset + 1, None):
                try:
                    command = fill_from_proto(pb.Fill.FromString(rec.value))
                except Rejected as exc:
                    command = exc
                except DecodeError as exc:
                    command = Rejected("malformed", str(exc))
                key = rec.key.decode(errors="replace") if rec.key else ""
                out.append(InputRecord(InputPosition(stream, rec.offset), key, command, None, rec.timestamp))
        return out

    def close(self) -> None:
        self._consumer.close(autocommit=False)


class KafkaSnapshotSink:
    """SnapshotSink port: every changed account's snapshot to the compacted portfolio.positions.

    Sent with :meth:`ProtoProducer.send_many`: the partition is the default partitioner's
    (murmur2 of the account id), computed once per account and remembered, the same partition any
    other producer would pick; one flush waits for every acknowledgement, then each record's
    future is checked, so a record the broker refused fails the batch before Redis is written."""

    def __init__(self, producer: ProtoProducer, topic: str) -> None:
        self._producer = producer
        self._topic = topic

    def publish(self, changes: Sequence[StateChange]) -> None:
        futures = self._producer.send_many(self._topic, [(c.account.account_id.encode(), c.payload)
                                                         for c in changes])
        self._producer.flush(timeout=ACK_TIMEOUT_SECONDS)
        for future in futures:
            if not future.is_done or future.failed():
                future.get(timeout=ACK_TIMEOUT_SECONDS)   # waits, and raises if the broker did not take it


class KafkaOpenInterestSink:
    """ContributionSink port: each partition's share of an instrument's open interest to the compacted
    portfolio.open_interest, key ``"<instrument>/<partition>"``; acknowledged before the sums count as published."""

    def __init__(self, producer: ProtoProducer, topic: str, clock_ms) -> None:
        self._producer = producer
        self._topic = topic
        self._clock_ms = clock_ms

    def publish(self, contributions: Sequence[Contribution], retired: Sequence[tuple[str, int]]) -> None:
        now = self._clock_ms()
        records = [(contribution_key(c.instrument, c.partition).encode(),
                    contribution_to_proto(c, now).SerializeToString()) for c in contributions]
        records += [(contribution_key(symbol, p).encode(), None) for symbol, p in retired]   # tombstones
        futures = self._producer.send_many(self._topic, records)
        self._producer.flush(timeout=ACK_TIMEOUT_SECONDS)
        for future in futures:
            if not future.is_done or future.failed():
                future.get(timeout=ACK_TIMEOUT_SECONDS)


def retired_contributions(records: dict[str, object], instruments: frozenset[str]) -> dict[int, set[str]]:
    """Per partition, the instruments of the keys on portfolio.open_interest (latest value per key, from
    ``read_compacted``) that are no longer in the universe: their partition's owner retires them."""
    out: dict[int, set[str]] = {}
    for key in records:
        parsed = parse_contribution_key(key)
        if parsed is not None and parsed[0] not in instruments:
            out.setdefault(parsed[1], set()).add(parsed[0])
    return out


class KafkaEventPublisher:
    """EventPublisher port: admin requests become AccountEvents on account.events."""

    def __init__(self, producer: ProtoProducer, topic: str, clock_ms, source: str = "portfolio-admin") -> None:
        self._producer = producer
        self._topic = topic
        self._clock_ms = clock_ms
        self._source = source

    def publish_event(self, event: AccountEvent) -> None:
        msg = event_to_proto(event, self._source, self._clock_ms())
        self._producer.send(self._topic, event.account_id, msg).get(timeout=ACK_TIMEOUT_SECONDS)
