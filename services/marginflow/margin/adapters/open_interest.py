"""``portfolio.open_interest`` into the margin's open interest: each input partition's share of every
instrument's open interest, as the portfolio instance owning the partition publishes it.

Every partition of the topic is read from its beginning (no group: every margin instance needs every
instrument's total); the open interest is complete once the topic is read to the end offsets taken at
assignment (:meth:`OpenInterestReader.complete`, part of the instance's readiness). A record that cannot
be accepted goes to ``margin.dlq`` with its reason and counts in ``marginflow_dead_letters_total``:
``empty_payload``, ``oversized``, ``malformed`` (not an ``OpenInterestContribution``), ``missing_field``,
``bad_decimal``, ``non_finite``, ``negative_value``, ``implausible``, ``unknown_instrument``,
``key_mismatch`` (the key is not ``"<instrument>/<source_partition>"`` of the payload),
``partition_out_of_range`` (a source partition that ``trades.fills`` does not have: no portfolio
instance owns it, and its share would be counted on top of the real ones). A tombstone (no
value) retires its key's share; one whose key names no instrument of this universe changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

from google.protobuf.message import DecodeError
from kafka import TopicPartition
from kafka.errors import KafkaError

from marginflow.api.account.v1 import account_pb2
from marginflow.margin.domain.book import InstrumentTable
from marginflow.margin.domain.horizon import OpenInterestBook
from marginflow.shared.errors import Rejected
from marginflow.shared.kafka import DeadLetterSink, check_size, topic_partitions
from marginflow.shared.logs import get_logger
from marginflow.shared.metrics import shared_metrics
from marginflow.shared.money import parse_decimal
from marginflow.shared.open_interest import contribution_key, parse_contribution_key

log = get_logger(__name__)

# Largest plausible open interest of one instrument, contracts: beyond it a value is a unit or encoding
# error (the same bound as a position's size, margin's MAX_ABS_SIZE).
MAX_CONTRACTS = Decimal("1e12")


def _contracts(msg, what: str) -> Decimal:
    if not msg.value:
        raise Rejected("missing_field", f"{what} is missing")
    value = parse_decimal(msg.value, what)
    if value < 0:
        raise Rejected("negative_value", f"{what} must be >= 0, got {msg.value!r}")
    if value > MAX_CONTRACTS:
        raise Rejected("implausible", f"{what} {msg.value!r} contracts")
    return value


def contribution_from_proto(m: account_pb2.OpenInterestContribution, table: InstrumentTable, key: str | None = None,
                            source_partitions: int = 0) -> tuple[int, int, int, Decimal, Decimal]:
    """(instrument index, source partition, fills offset, long contracts, short contracts), validated;
    ``source_partitions``: the partition count of ``trades.fills`` (0: not checked)."""
    if not m.instrument:
        raise Rejected("missing_field", "contribution without an instrument")
    if m.source_partition < 0 or m.fills_offset < 0:
        raise Rejected("negative_value", f"contribution of {m.instrument!r}: partition {m.source_partition}, "
                                         f"fills offset {m.fills_offset}")
    if source_partitions and m.source_partition >= source_partitions:
        raise Rejected("partition_out_of_range", f"contribution of {m.instrument!r} from partition "
                                                 f"{m.source_partition}; trades.fills has {source_partitions}")
    if key is not None and key != contribution_key(m.instrument, m.source_partition):
        raise Rejected("key_mismatch", f"record key {key!r} != "
                                       f"{contribution_key(m.instrument, m.source_partition)!r} of the payload")
    k = table.index.get(m.instrument)
    if k is None:
        raise Rejected("unknown_instrument", f"open interest of unknown instrument {m.instrument!r}")
    long_contracts = _contracts(m.long_contracts, f"long_contracts of {m.instrument}")
    short_contracts = _contracts(m.short_contracts, f"short_contracts of {m.instrument}")
    return k, int(m.source_partition), int(m.fills_offset), long_contracts, short_contracts


class OpenInterestReader:
    """Every partition of ``portfolio.open_interest`` from the beginning into ``book``.

    ``consumer`` is a kafka-python consumer without a group; ``dead_letters`` the margin's sink;
    ``rejected(code)`` counts a refusal in the service's own metric; ``source_partitions()`` gives the
    partition count of ``trades.fills`` (0: not checked), asked again when a record names a partition
    beyond the count known (partitions added to the topic since)."""

    def __init__(self, consumer, topic: str, table: InstrumentTable, book: OpenInterestBook,
                 dead_letters: DeadLetterSink, timeout_s: float, max_message_bytes: int,
                 rejected: Callable[[str], None] = lambda code: None, service: str = "margin",
                 source_partitions: Callable[[], int] = lambda: 0) -> None:
        self.raw = consumer
        self._topic = topic
        self._table = table
        self._book = book
        self._dlq = dead_letters
        self._max_bytes = max_message_bytes
        self._rejected = rejected
        self._partition_count = source_partitions
        self._source_partitions = source_partitions()
        self._consumed = shared_metrics().kafka_consumed.labels(service, topic)
        tps = [TopicPartition(topic, p) for p in sorted(topic_partitions(consumer, topic, timeout_s, required=True))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        # complete once read up to here: every share published before this instance started
        self._ends = {tp: end for tp, end in consumer.end_offsets(tps).items() if end > 0}

    def complete(self) -> bool:
        """Every partition read up to its end offset at assignment."""
        if self._ends:
            try:
                self._ends = {tp: end for tp, end in self._ends.items() if self.raw.position(tp) < end}
            except (KafkaError, AssertionError, ValueError):
                return False
        return not self._ends

    def poll(self, max_records: int = 5000) -> int:
        """Apply what arrived; returns how many records were read."""
        n = 0
        for tp, records in self.raw.poll(timeout_ms=0, max_records=max_records).items():
            n += len(records)
            self._consumed.inc(len(records))
            for rec in records:
                key = rec.key.decode("utf-8", "replace") if rec.key is not None else ""
                try:
                    self._apply(key, rec.value)
                except Rejected as exc:
                    self._rejected(exc.code)
                    self._dlq.publish(exc.code, exc.detail, payload=rec.value or b"", key=rec.key,
                                      source_topic=tp.topic, partition=tp.partition, offset=rec.offset)
        return n

    def _apply(self, key: str, value: bytes | None) -> None:
        if value is None:   # a tombstone: the key's share retired
            parsed = parse_contribution_key(key)
            k = self._table.index.get(parsed[0]) if parsed is not None else None
            if k is not None:
                self._book.remove(k, parsed[1])
            return
        check_size(value, self._max_bytes)
        try:
            msg = account_pb2.OpenInterestContribution.FromString(value)
        except DecodeError as exc:
            raise Rejected("malformed", f"not a {account_pb2.OpenInterestContribution.DESCRIPTOR.full_name}: "
                                        f"{exc}") from None
        try:
            k, partition, offset, long_contracts, short_contracts = contribution_from_proto(
                msg, self._table, key, self._source_partitions)
        except Rejected as exc:
            if exc.code != "partition_out_of_range":
                raise
            now = self._partition_count()
            if now <= self._source_partitions:
                raise
            self._source_partitions = now       # the fills topic grew since: check again
            k, partition, offset, long_contracts, short_contracts = contribution_from_proto(
                msg, self._table, key, self._source_partitions)
        if not self._book.apply(k, partition, offset, long_contracts, short_contracts):
            log.info("an older open interest record ignored", extra={"key": key, "fills_offset": offset})

    def close(self) -> None:
        self.raw.close(autocommit=False)
