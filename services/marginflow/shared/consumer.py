"""A consumer of assigned partitions on librdkafka (confluent-kafka), behind kafka-python's calls.

For a service that reads every partition itself with no group membership (the liquidation service: margin
calls, fills, margin states and marks). kafka-python keeps one fetch in flight per broker and parses every
record in Python, and a fetch's answer is taken in only by the next ``poll``: a margin call that reached the
broker while the loop was acting waited a whole turn for the fetch after it. librdkafka fetches continuously
in threads of its own and parses in C; ``poll`` hands over what is already here.

:class:`AssignedConsumer` keeps the calls the services use (``assign``, ``assignment``, ``poll`` returning
``{TopicPartition: [record]}``, ``position``, ``seek``, ``seek_to_beginning``, ``beginning_offsets``,
``end_offsets``, ``partitions_for_topic``, ``commit``, ``close``) with kafka-python's ``TopicPartition``.
Offsets are committed only when asked (``commit()``: the positions handed out so far, under the group id);
an assigned partition starts at its committed offset, else at the earliest.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import confluent_kafka
from kafka import TopicPartition
from kafka import errors as kafka_errors

from marginflow.shared.producer import kafka_error, rdkafka_properties

_LOG = logging.getLogger("librdkafka")
_METADATA_TIMEOUT_S = 10.0


@dataclasses.dataclass(frozen=True, slots=True)
class Record:
    """One record as kafka-python's ConsumerRecord names its fields."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int


class AssignedConsumer:
    """Partitions assigned directly (no group membership); see the module's docstring."""

    def __init__(self, bootstrap: str, group_id: str | None, client_id: str, *,
                 auto_offset_reset: str = "earliest", **options: Any) -> None:
        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap, "client.id": client_id,
            # the group id only names the committed offsets (assign, never subscribe: no group is joined)
            "group.id": group_id or f"{client_id}-unmanaged", "enable.auto.commit": False,
            "enable.auto.offset.store": True, "auto.offset.reset": auto_offset_reset,
            "fetch.max.bytes": 64 * 1024 * 1024, "enable.partition.eof": False, "logger": _LOG,
        }
        config.update(rdkafka_properties(options, "consumer"))
        self.group_id = group_id
        try:
            self._c = confluent_kafka.Consumer(config)
        except confluent_kafka.KafkaException as exc:
            raise kafka_errors.KafkaConfigurationError(f"Kafka consumer {client_id!r}: {exc.args[0].str()}") from None
        self._assigned: list[TopicPartition] = []
        self._next: dict[TopicPartition, int] = {}   # per partition: the offset of the next record handed out
        self._reset_earliest = auto_offset_reset == "earliest"

    @staticmethod
    def _ctp(tp: TopicPartition, offset: int = confluent_kafka.OFFSET_INVALID) -> confluent_kafka.TopicPartition:
        return confluent_kafka.TopicPartition(tp.topic, tp.partition, offset)

    # ---- metadata and assignment
    def partitions_for_topic(self, topic: str) -> set[int] | None:
        try:
            meta = self._c.list_topics(topic, timeout=_METADATA_TIMEOUT_S).topics.get(topic)
        except confluent_kafka.KafkaException as exc:
            raise kafka_error(exc.args[0]) from None
        if meta is None or meta.error is not None or not meta.partitions:
            return None
        return set(meta.partitions)

    def assign(self, tps: Sequence[TopicPartition]) -> None:
        """Read ``tps`` from their committed offsets (else ``auto_offset_reset``); without a group id, from
        ``auto_offset_reset``."""
        self._assigned = list(tps)
        self._next = {}
        start = (confluent_kafka.OFFSET_STORED if self.group_id else
                 confluent_kafka.OFFSET_BEGINNING if self._reset_earliest else confluent_kafka.OFFSET_END)
        self._c.assign([self._ctp(tp, start) for tp in self._assigned])

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    # ---- positions
    def committed(self, tp: TopicPartition) -> int | None:
        """The offset committed for ``tp`` under the group id (None: none, or no group id)."""
        if not self.group_id:
            return None
        try:
            got = self._c.committed([self._ctp(tp)], timeout=_METADATA_TIMEOUT_S)[0]
        except confluent_kafka.KafkaException as exc:
            raise kafka_error(exc.args[0]) from None
        return got.offset if got.offset >= 0 else None

    def position(self, tp: TopicPartition) -> int:
        """The offset of the next record ``poll`` hands out of ``tp``: known from the records handed out and
        the seeks, else resolved now (and kept) as the start: the committed offset, else the reset."""
        pos = self._next.get(tp)
        if pos is None:
            if tp not in self._assigned:
                raise ValueError(f"{tp} is not assigned")
            pos = self.committed(tp)
            if pos is None:
                low, high = self._watermarks(tp)
                pos = low if self._reset_earliest else high
            self._next[tp] = pos
        return pos

    def _watermarks(self, tp: TopicPartition) -> tuple[int, int]:
        try:
            return self._c.get_watermark_offsets(self._ctp(tp), timeout=_METADATA_TIMEOUT_S)
        except confluent_kafka.KafkaException as exc:
            raise kafka_error(exc.args[0]) from None

    def beginning_offsets(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self._watermarks(tp)[0] for tp in tps}

    def end_offsets(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self._watermarks(tp)[1] for tp in tps}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """The next record of ``tp`` handed out is the one at ``offset`` (what was fetched past it is dropped)."""
        if tp not in self._assigned:
            raise ValueError(f"{tp} is not assigned")
        self._seek(self._ctp(tp, offset))
        self._next[tp] = offset

    def _seek(self, ctp: confluent_kafka.TopicPartition) -> None:
        # A seek right after assign can find the partition not started yet (erroneous state): retried briefly.
        deadline = time.monotonic() + _METADATA_TIMEOUT_S
        while True:
            try:
                self._c.seek(ctp)
                return
            except confluent_kafka.KafkaException as exc:
                if time.monotonic() >= deadline:
                    raise kafka_error(exc.args[0]) from None
                time.sleep(0.01)

    def seek_to_beginning(self, *tps: TopicPartition) -> None:
        for tp in tps or self._assigned:
            self.seek(tp, self._watermarks(tp)[0])

    # ---- records
    def poll(self, timeout_ms: int = 0, max_records: int = 5000) -> dict[TopicPartition, list[Record]]:
        """The records already fetched (waiting at most ``timeout_ms`` for a first one), at most
        ``max_records``, by partition and in offset order."""
        # librdkafka's batch consume blocks until it has ``num_messages`` or the timeout has passed: asked for
        # 2,000 with 500 fetched, it waited the whole timeout. So what is queued is taken without a wait, and
        # only an empty queue waits, for one record, after which the rest already queued comes along.
        consume = self._c.consume
        messages = consume(num_messages=max_records, timeout=0)
        if not messages and timeout_ms > 0:
            messages = consume(num_messages=1, timeout=timeout_ms / 1000.0)
            if messages and max_records > 1:
                messages += consume(num_messages=max_records - 1, timeout=0)
        out: dict[TopicPartition, list[Record]] = {}
        nxt = self._next
        for m in messages:
            err = m.error()
            if err is not None:
                if err.code() != confluent_kafka.KafkaError._PARTITION_EOF:
                    _LOG.warning("consumer error", extra={"error": err.str(), "topic": m.topic()})
                continue
            topic, partition = m.topic(), m.partition()
            tp = TopicPartition(topic, partition)
            batch = out.get(tp)
            if batch is None:
                batch = out[tp] = []
            offset = m.offset()
            batch.append(Record(topic, partition, offset, m.key(), m.value(), m.timestamp()[1]))
            nxt[tp] = offset + 1
        return out

    def commit(self) -> None:
        """Commit, under the group id, the positions of every record handed out so far."""
        try:
            self._c.commit(asynchronous=False)
        except confluent_kafka.KafkaException as exc:
            if exc.args[0].code() == confluent_kafka.KafkaError._NO_OFFSET:
                return    # nothing handed out since the last commit
            raise kafka_error(exc.args[0]) from None

    def close(self, autocommit: bool = False) -> None:
        if autocommit:
            self.commit()
        self._c.close()
