"""Kafka side of the portfolio service: the input source, the snapshot sink, the admin event publisher."""

from __future__ import annotations

from collections.abc import Sequence

from kafka import TopicPartition
from kafka.errors import CommitFailedError, KafkaError

from marginflow.api.account.v1 import account_pb2 as pb
from marginflow.portfolio.adapters.codec import event_from_proto, event_to_proto, fill_from_proto
from marginflow.portfolio.application import InputRecord, StateChange
from marginflow.portfolio.domain.model import AccountEvent, InputPosition
from marginflow.shared.config import Topics
from marginflow.shared.errors import Rejected
from marginflow.shared.kafka import Decoded, ProtoConsumer, ProtoProducer
from marginflow.shared.logs import get_logger

log = get_logger(__name__)

ACK_TIMEOUT_SECONDS = 30.0


def input_types(topics: Topics) -> dict[str, type]:
    return {topics.fills: pb.Fill, topics.account_events: pb.AccountEvent}


class KafkaRecordSource:
    """RecordSource port over trades.fills + account.events (one consumer group)."""

    def __init__(self, consumer: ProtoConsumer, dlq_producer: ProtoProducer, topics: Topics,
                 poll_timeout_ms: int = 100, max_records: int = 5000) -> None:
        self._consumer = consumer
        self._dlq_producer = dlq_producer
        self._fills = topics.fills
        self._poll_timeout_ms = poll_timeout_ms
        self._max_records = max_records
        self._streams: dict[tuple[str, int], str] = {}

    def poll(self) -> list[InputRecord]:
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
            out.append(InputRecord(InputPosition(stream, rec.offset), rec.key, command, rec))
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
        first: dict[TopicPartition, int] = {}
        for r in records:
            handle = r.handle
            assert isinstance(handle, Decoded)
            tp = TopicPartition(handle.topic, handle.partition)
            first[tp] = min(first.get(tp, handle.offset), handle.offset)
        for tp, offset in first.items():
            try:
                self._consumer.raw.seek(tp, offset)
            except (KafkaError, AssertionError, ValueError) as exc:  # partition revoked meanwhile
                log.warning("cannot rewind", extra={"partition": str(tp), "error": str(exc)})

    def assigned_partitions(self) -> set[int]:
        """Partition numbers this instance owns now (fills and events are co-partitioned)."""
        return {tp.partition for tp in self._consumer.raw.assignment()}

    def close(self) -> None:
        self._consumer.close()


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
