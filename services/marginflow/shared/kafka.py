"""Kafka helpers: topics, protobuf producer (librdkafka), consumers (kafka-python; librdkafka for assigned
partitions) with dead-lettering.

Every payload is a protobuf message from ``marginflow.api``. A record that does not decode, or
that the handler rejects with :class:`~marginflow.shared.errors.Rejected`, is published to the
dead-letter topic with its reason (:class:`DeadLetterSink`) and counted; consumption goes on.
Offsets are committed only after a batch has been handled and its outputs flushed, so a crash
between the two redelivers rather than loses (handlers are idempotent where that matters).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Generic, TypeVar

from google.protobuf.message import DecodeError, Message
import kafka.record.default_records as _kafka_records
from kafka import ConsumerRebalanceListener, KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.partitioner.default import murmur2

from marginflow.api.common.v1 import common_pb2
from marginflow.shared.config import DEFAULT_MAX_MESSAGE_BYTES, Topics
from marginflow.shared.errors import Rejected
from marginflow.shared.logs import get_logger
from marginflow.shared.metrics import shared_metrics
from marginflow.shared.consumer import AssignedConsumer
from marginflow.shared.producer import Producer
from marginflow.shared.units import MS_PER_DAY

log = get_logger(__name__)

M = TypeVar("M", bound=Message)


def check_size(value: bytes | None, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
    """Raise :class:`Rejected` (``empty_payload`` / ``oversized``) for a value no decoder takes.

    An empty value is the all-default message, which no topic of the platform ever carries."""
    if not value:
        raise Rejected("empty_payload", "record has no value")
    if len(value) > max_bytes:
        raise Rejected("oversized", f"payload of {len(value)} bytes exceeds the limit of {max_bytes}")


def _use_compiled_crc32c() -> None:
    """kafka-python checksums every record batch (CRC-32C) in pure Python unless the ``crc32c``
    package is installed, which caps a consumer checking the batches it reads. aiokafka (installed with
    faust-streaming) ships a compiled CRC-32C: use it when present, after checking it agrees."""
    try:
        from aiokafka.record._crecords.cutil import crc32c_cython
    except ImportError:
        return
    probe = memoryview(bytes(range(256)) * 4)
    if crc32c_cython(probe) == _kafka_records.calc_crc32c(probe):
        _kafka_records.calc_crc32c = crc32c_cython


_use_compiled_crc32c()


@dataclasses.dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    compacted: bool = False
    retention_ms: int | None = None
    segment_bytes: int | None = None     # a compacted topic whose records are large rolls by size too

    def configs(self) -> dict[str, str]:
        cfg: dict[str, str] = {}
        if self.compacted:
            # Latest state per key survives; segments roll quickly so compaction keeps up.
            cfg.update({"cleanup.policy": "compact", "segment.ms": "600000", "min.cleanable.dirty.ratio": "0.1"})
        if self.segment_bytes is not None:
            cfg["segment.bytes"] = str(self.segment_bytes)
        if self.retention_ms is not None:
            cfg["retention.ms"] = str(self.retention_ms)
        return cfg


def platform_topics(topics: Topics, partitions: int) -> list[TopicSpec]:
    """Every topic of the platform: keyed by instrument or account, state topics compacted."""
    week = 7 * MS_PER_DAY
    return [
        TopicSpec(topics.ticks, partitions, retention_ms=MS_PER_DAY),
        TopicSpec(topics.ticks_dlq, 1, retention_ms=week),
        TopicSpec(topics.riskparams_dlq, 1, retention_ms=week),
        TopicSpec(topics.marks, partitions, retention_ms=MS_PER_DAY),
        TopicSpec(topics.risk_params, 1, compacted=True),
        TopicSpec(topics.fills, partitions),
        TopicSpec(topics.account_events, partitions),
        TopicSpec(topics.portfolio_dlq, 1, retention_ms=week),
        TopicSpec(topics.margin_dlq, 1, retention_ms=week),
        TopicSpec(topics.positions, partitions, compacted=True),
        # Keyed by (instrument, fills partition): a few hundred keys, one partition keeps them in one log.
        TopicSpec(topics.open_interest, 1, compacted=True),
        TopicSpec(topics.margin_state, partitions, compacted=True),
        TopicSpec(topics.margin_calls, partitions),
        # Tens of MB per snapshot at 100k accounts, rewritten every MF_MARGIN_SNAPSHOT_INTERVAL_SECONDS:
        # 16 MiB segments leave the cleaner little more than the last few snapshots to read past.
        TopicSpec(topics.margin_snapshot, 1, compacted=True, segment_bytes=16 * 1024 * 1024),
        TopicSpec(topics.liquidation_orders, partitions),
        TopicSpec(topics.liquidation_events, partitions),
        TopicSpec(topics.liquidation_fund, 1, compacted=True),
        TopicSpec(topics.liquidation_dlq, 1, retention_ms=week),
        # Kept forever: compaction (keys are unique event ids) and no time limit.
        TopicSpec(topics.audit, 1, compacted=True, retention_ms=-1),
    ]


# How this process's Kafka clients authenticate (TLS, SASL): set once at start from
# CommonSettings.kafka_security by ``run_service`` (``use_security``), merged into every client below.
_SECURITY: dict = {}


def use_security(options: dict) -> None:
    """Every Kafka client made from now on uses ``options`` (KafkaSecurity.client_options())."""
    _SECURITY.clear()
    _SECURITY.update(options)


def security_options(**extra) -> dict:
    """The process's Kafka security options, with ``extra`` taking precedence."""
    return {**_SECURITY, **extra}


def aiokafka_options() -> dict:
    """The same security for aiokafka clients (which take an SSL context instead of a CA file)."""
    opts = dict(_SECURITY)
    cafile = opts.pop("ssl_cafile", None)
    if opts.get("security_protocol", "PLAINTEXT").endswith("SSL"):
        from aiokafka.helpers import create_ssl_context

        opts["ssl_context"] = create_ssl_context(cafile=cafile)
    return opts


def faust_credentials():
    """faust's broker_credentials for the process's Kafka security (None: PLAINTEXT)."""
    opts = aiokafka_options()
    protocol = opts.get("security_protocol", "PLAINTEXT")
    if protocol == "PLAINTEXT":
        return None
    import faust

    if protocol.startswith("SASL"):
        return faust.SASLCredentials(username=opts["sasl_plain_username"], password=opts["sasl_plain_password"],
                                     mechanism=opts["sasl_mechanism"], ssl_context=opts.get("ssl_context"))
    return faust.SSLCredentials(opts["ssl_context"])


def ensure_topics(bootstrap: str, specs: Iterable[TopicSpec], timeout_s: float = 30.0, **client_options) -> None:
    """Create the topics that do not exist yet (existing ones are left as they are)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="marginflow-admin",
                                     request_timeout_ms=int(timeout_s * 1000), **security_options(**client_options))
            break
        except Exception as exc:  # noqa: BLE001 - broker still starting: retry until the deadline
            if time.monotonic() > deadline:
                raise RuntimeError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
            time.sleep(0.5)
    try:
        existing = set(admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        for spec in missing:
            try:
                admin.create_topics([NewTopic(spec.name, spec.partitions, 1, topic_configs=spec.configs())])
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()


def delete_topics(bootstrap: str, names: Iterable[str]) -> None:
    """Delete topics, best effort (tests and benchmarks clean up after themselves with it)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="marginflow-admin", **security_options())
    try:
        admin.delete_topics(list(names))
    except Exception:  # noqa: BLE001 - cleanup only: a topic already gone is fine
        pass
    finally:
        admin.close()


def new_producer(bootstrap: str, client_id: str, linger_ms: int = 5, **extra) -> Producer:
    """A producer that waits for the broker's acknowledgement of every record (acks=all, idempotent):
    librdkafka behind kafka-python's calls (:mod:`marginflow.shared.producer`)."""
    return Producer(bootstrap, client_id, linger_ms=linger_ms, batch_size=256 * 1024, **security_options(**extra))


def key_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2, as every client computes it) gives ``key``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class ProtoProducer:
    """Publishes protobuf messages; keys are strings (instrument or account id).

    :meth:`send_many` is the fast path for hot topics: one metric increment per call. Records of a key go
    to the partition Kafka's default partitioner picks (murmur2 of the key, computed by librdkafka), so
    they land where any other Kafka client would put them (:func:`key_partition`).
    """

    def __init__(self, producer: Producer, service: str) -> None:
        self._producer = producer
        self._service = service
        self._produced = shared_metrics().kafka_produced
        self._prepared: set[str] = set()

    def prepare(self, topics: Iterable[str]) -> None:
        """Look up each topic's partitions now (bounded by the producer's max_block_ms), not at its first
        record: a producer fetches a topic's metadata when first asked, and the first record to a topic
        would wait for it (the first liquidation orders after a start, the first margin calls)."""
        for topic in topics:
            if topic not in self._prepared:
                self._producer.partitions_for(topic)
                self._prepared.add(topic)

    def send_many(self, topic: str, records: Sequence[tuple[bytes, bytes]]) -> list:
        """Queue ``(key, value)`` records; returns their futures, in order (after :meth:`flush`,
        a failed one tells which record the broker did not take)."""
        send = self._producer.send
        futures = [send(topic, value, key) for key, value in records]
        if records:
            self._produced.labels(self._service, topic).inc(len(records))
        return futures

    def send(self, topic: str, key: str, message: Message):
        """Queue ``message``; returns the record's future (``.get(timeout)`` waits for the ack)."""
        future = self._producer.send(topic, key=key.encode(), value=message.SerializeToString())
        self._produced.labels(self._service, topic).inc()
        return future

    def send_raw(self, topic: str, key: bytes | None, value: bytes, partition: int | None = None):
        future = self._producer.send(topic, key=key, value=value, partition=partition)
        self._produced.labels(self._service, topic).inc()
        return future

    def flush(self, timeout: float | None = 30.0) -> None:
        self._producer.flush(timeout=timeout)

    def close(self, timeout: float = 10.0) -> None:
        self._producer.close(timeout=timeout)


# Most of a rejected payload a dead letter carries, bytes. The whole of a payload near the size
# limit, wrapped in a DeadLetter, would exceed the producer's request size and the broker's
# message size: the dead letter would fail, and with it the service. The first 64 KiB tell what
# the record was; the reason says how long it was.
MAX_DEAD_LETTER_PAYLOAD = 64 * 1024


class DeadLetterSink:
    """Publishes a rejected record to a dead-letter topic with its reason, and counts it."""

    def __init__(self, producer: ProtoProducer, dlq_topic: str, service: str,
                 clock_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> None:
        self._producer = producer
        self._topic = dlq_topic
        self._service = service
        self._clock_ms = clock_ms
        self._counter = shared_metrics().dead_letters

    @property
    def topic(self) -> str:
        return self._topic

    def publish(self, reason_code: str, reason: str, *, payload: bytes = b"", key: bytes | None = None,
                source_topic: str = "", partition: int = -1, offset: int = -1) -> None:
        if len(payload) > MAX_DEAD_LETTER_PAYLOAD:
            reason = f"{reason} (payload of {len(payload)} bytes, first {MAX_DEAD_LETTER_PAYLOAD} kept)"
            payload = payload[:MAX_DEAD_LETTER_PAYLOAD]
        if key is not None and len(key) > MAX_DEAD_LETTER_PAYLOAD:
            key = key[:MAX_DEAD_LETTER_PAYLOAD]
        letter = common_pb2.DeadLetter(
            source_topic=source_topic, source_partition=partition, source_offset=offset,
            key=key or b"", payload=payload, reason_code=reason_code, reason=reason,
            service=self._service, time_ms=self._clock_ms())
        self._producer.send_raw(self._topic, key, letter.SerializeToString())
        self._counter.labels(self._service, self._topic, reason_code).inc()
        log.warning("dead letter", extra={"topic": source_topic, "reason_code": reason_code, "reason": reason})


@dataclasses.dataclass(frozen=True)
class Decoded(Generic[M]):
    topic: str
    partition: int
    offset: int
    key: str
    value: M
    timestamp_ms: int


def new_consumer(bootstrap: str, group_id: str | None, client_id: str, topics: Sequence[str] = (),
                 auto_offset_reset: str = "earliest", listener: ConsumerRebalanceListener | None = None,
                 **extra) -> KafkaConsumer:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group_id, client_id=client_id,
        enable_auto_commit=False, auto_offset_reset=auto_offset_reset,
        max_poll_records=5000, fetch_max_bytes=64 * 1024 * 1024, **security_options(**extra))
    if topics:
        wait_for_metadata(consumer, topics)
        consumer.subscribe(list(topics), listener=listener or LoggedRebalance(client_id))
    return consumer


def new_assigned_consumer(bootstrap: str, group_id: str | None, client_id: str, auto_offset_reset: str = "earliest",
                          **extra) -> AssignedConsumer:
    """A consumer of partitions assigned directly, on librdkafka (:mod:`marginflow.shared.consumer`): it
    fetches in the background, so a record that reached the broker while the loop was busy is handed out by
    the next poll. ``group_id`` only names the committed offsets (no group is joined)."""
    return AssignedConsumer(bootstrap, group_id, client_id, auto_offset_reset=auto_offset_reset,
                            **security_options(**extra))


class LoggedRebalance(ConsumerRebalanceListener):
    """Logs each partition a group member is given or loses: when a group is slow to settle, the log
    says which member held what."""

    def __init__(self, member: str) -> None:
        self.member = member

    def on_partitions_revoked(self, revoked) -> None:
        if revoked:
            log.info("group partitions revoked", extra={"member": self.member,
                                                        "partitions": sorted(f"{tp.topic}/{tp.partition}" for tp in revoked)})

    def on_partitions_assigned(self, assigned) -> None:
        log.info("group partitions assigned", extra={"member": self.member,
                                                     "partitions": sorted(f"{tp.topic}/{tp.partition}" for tp in assigned)})


TOPIC_METADATA_WAIT_S = 15.0


def topic_partitions(consumer: KafkaConsumer, topic: str, timeout_s: float, required: bool = False) -> set[int]:
    """The partitions of ``topic`` in the consumer's metadata, waiting (bounded) for a topic just created to
    appear; empty when it has not, or RuntimeError when ``required``."""
    deadline = time.monotonic() + timeout_s
    parts = consumer.partitions_for_topic(topic)
    while not parts and time.monotonic() < deadline:
        time.sleep(0.1)
        parts = consumer.partitions_for_topic(topic)
    if not parts and required:
        raise RuntimeError(f"topic {topic} has no partitions")
    return set(parts or ())


def assign_every_partition(consumer: KafkaConsumer, topics: Sequence[str], timeout_s: float) -> list[TopicPartition]:
    """Assign every partition of ``topics`` to ``consumer`` directly, with no group membership, and resolve
    each start position now: the offset committed under the consumer's group id, else its
    ``auto_offset_reset``. For a service of which one instance runs (it reads every account): no join to
    wait for or lose, and offsets still committed under the group id. RuntimeError when a topic has no
    partitions within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    tps = [TopicPartition(topic, p) for topic in topics
           for p in sorted(topic_partitions(consumer, topic, max(0.0, deadline - time.monotonic()), required=True))]
    consumer.assign(tps)
    for tp in tps:
        consumer.position(tp)
    return tps


def seek_to_tail(consumer: KafkaConsumer, tps: Sequence[TopicPartition], records: int) -> dict[TopicPartition, int]:
    """Seek each of the assigned ``tps`` to its last ``records`` records (its beginning when it holds fewer):
    the recent past of a stream that is not compacted (marks), read again on a start. Returns the end offsets
    taken."""
    end, begin = consumer.end_offsets(list(tps)), consumer.beginning_offsets(list(tps))
    for tp in tps:
        consumer.seek(tp, max(begin[tp], end[tp] - records))
    return end


def wait_for_metadata(consumer: KafkaConsumer, topics: Sequence[str], timeout_s: float = TOPIC_METADATA_WAIT_S) -> None:
    """Block until the consumer's metadata lists every topic (bounded). A group member that joins while
    a topic it subscribes to is missing from its metadata (just created, the broker's metadata not yet
    propagated) is assigned none of its partitions until the next metadata refresh, minutes later;
    topics still missing after the wait are left to that refresh, with a warning."""
    deadline = time.monotonic() + timeout_s
    missing = list(topics)
    while missing:
        missing = [t for t in missing if not consumer.partitions_for_topic(t)]
        if not missing or time.monotonic() >= deadline:
            break
        time.sleep(0.1)   # a metadata round trip per topic per try: bounded and brief
    if missing:
        log.warning("topics not in the consumer's metadata yet; they are picked up at the next refresh",
                    extra={"topics": missing})


class ProtoConsumer:
    """Polls batches of protobuf records; records that do not decode go to the dead-letter sink."""

    def __init__(self, consumer: KafkaConsumer, types: dict[str, type[Message]], dead_letters: DeadLetterSink,
                 service: str, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self._consumer = consumer
        self._types = types
        self._dlq = dead_letters
        self._service = service
        self._max_bytes = max_message_bytes
        self._consumed = shared_metrics().kafka_consumed

    @property
    def raw(self) -> KafkaConsumer:
        return self._consumer

    def poll(self, timeout_ms: int = 200, max_records: int = 5000) -> list[Decoded]:
        batches = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        out: list[Decoded] = []
        max_bytes = self._max_bytes
        for tp, records in batches.items():
            message_type = self._types[tp.topic]
            self._consumed.labels(self._service, tp.topic).inc(len(records))
            for rec in records:
                try:
                    check_size(rec.value, max_bytes)
                    msg = message_type.FromString(rec.value)
                except DecodeError as exc:
                    self._dlq.publish("malformed", f"not a {message_type.DESCRIPTOR.full_name}: {exc}",
                                      payload=rec.value or b"", key=rec.key, source_topic=tp.topic,
                                      partition=tp.partition, offset=rec.offset)
                    continue
                except Rejected as exc:
                    self._dlq.publish(exc.code, exc.detail, payload=b"", key=rec.key, source_topic=tp.topic,
                                      partition=tp.partition, offset=rec.offset)
                    continue
                key = rec.key.decode("utf-8", "replace") if rec.key else ""
                out.append(Decoded(tp.topic, tp.partition, rec.offset, key, msg, rec.timestamp))
        return out

    def reject(self, record: Decoded, exc: Rejected) -> None:
        """Dead-letter a decoded record that the application refused."""
        self._dlq.publish(exc.code, exc.detail, payload=record.value.SerializeToString(),
                          key=record.key.encode(), source_topic=record.topic,
                          partition=record.partition, offset=record.offset)

    def commit(self) -> None:
        self._consumer.commit()

    def close(self) -> None:
        self._consumer.close(autocommit=False)


def rewind(consumer: KafkaConsumer, offsets: Iterable[tuple[str, int, int]]) -> None:
    """Seek each partition back to the first of the given ``(topic, partition, offset)``: the records of a
    failed turn are read again, not skipped. A partition revoked meanwhile is left alone (its new owner
    reads it from the committed offset)."""
    first: dict[TopicPartition, int] = {}
    for topic, partition, offset in offsets:
        tp = TopicPartition(topic, partition)
        first[tp] = min(first.get(tp, offset), offset)
    for tp, offset in first.items():
        try:
            consumer.seek(tp, offset)
        except (KafkaError, AssertionError, ValueError) as exc:
            log.warning("cannot rewind", extra={"partition": str(tp), "error": str(exc)})


def read_compacted(bootstrap: str, topic: str, message_type: type[M], client_id: str,
                   timeout_s: float = 60.0, partitions: Iterable[int] | None = None, **extra) -> dict[str, M]:
    """Read a compacted state topic from the beginning to its current end: latest value per key.

    Used to rebuild state (no consumer group: every partition, or only ``partitions``).
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id=client_id, group_id=None,
                             enable_auto_commit=False, max_poll_records=10000,
                             fetch_max_bytes=64 * 1024 * 1024, **security_options(**extra))
    wanted = set(partitions) if partitions is not None else None
    try:
        deadline = time.monotonic() + timeout_s
        partitions = topic_partitions(consumer, topic, timeout_s)
        if not partitions:
            return {}
        if wanted is not None:
            partitions = set(partitions) & wanted
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return {}
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        state: dict[str, M] = {}
        remaining = {tp for tp in tps if end[tp] > 0}
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} did not reach its end within {timeout_s}s")
            for tp, records in consumer.poll(timeout_ms=500).items():
                for rec in records:
                    key = rec.key.decode() if rec.key else ""
                    if rec.value is None:
                        state.pop(key, None)  # tombstone
                    else:
                        try:
                            state[key] = message_type.FromString(rec.value)
                        except DecodeError:
                            log.warning("undecodable record in state topic", extra={"topic": topic, "offset": rec.offset})
            remaining = {tp for tp in remaining if consumer.position(tp) < end[tp]}
        return state
    finally:
        consumer.close(autocommit=False)
