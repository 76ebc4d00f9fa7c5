"""Kafka side of the margin service: inputs (risk.params, md.marks, portfolio.positions) and outputs.

* ``risk.params`` and ``md.marks``: one consumer without a group, every partition assigned (every
  instance needs every mark and every version). Risk params from the beginning (compacted: the last
  versions only; versions not newer than the one in force are skipped), marks from the last
  ``MF_MARGIN_MARKS_TAIL_RECORDS`` of each partition (the latest mark per instrument).
* ``portfolio.positions``: a consumer group (accounts shard by partition). Each partition assigned is
  read from its beginning — the compacted topic holds the latest snapshot per account, so this is
  the rebuild of the owned accounts — or from the offset of its restart-snapshot part, whose books
  are applied first (``adapters.snapshots``); a revoked partition's accounts are forgotten. Offsets
  are never committed: the state is always rebuilt from the topics.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from kafka import ConsumerRebalanceListener, TopicPartition

from marginflow.api.account.v1 import account_pb2
from marginflow.api.marketdata.v1 import marketdata_pb2
from marginflow.api.risk.v1 import risk_pb2
from marginflow.margin.adapters import codec
from marginflow.shared.fanout import Fanout
from marginflow.margin.domain.results import AccountMargin, MarginCallEvent
from marginflow.shared.kafka import ProtoConsumer, ProtoProducer, seek_to_tail, topic_partitions
from marginflow.shared.logs import get_logger

log = get_logger(__name__)

ACK_TIMEOUT_SECONDS = 30.0


class KafkaPublisher:
    """Publisher port: margin.state (compacted, key account) and margin.calls; StreamMargin fan-out."""

    def __init__(self, producer: ProtoProducer | None, state_topic: str, calls_topic: str, clock_ms,
                 fanout: Fanout | None = None, source: str = "margin") -> None:
        self._producer = producer
        self._state_topic = state_topic
        self._calls_topic = calls_topic
        self._clock_ms = clock_ms
        self._fanout = fanout
        self._source = source

    def publish(self, states: Sequence[AccountMargin], calls: Sequence[MarginCallEvent]) -> None:
        now = self._clock_ms()
        msgs = codec.margin_states(states, self._source, now)
        if self._producer is None:   # in-process (benchmark): the streams only
            if self._fanout is not None:
                self._fanout.publish(msgs)
            return
        futures = self._producer.send_many(self._state_topic,
                                           [(m.account_id.encode(), msg.SerializeToString())
                                            for m, msg in zip(states, msgs)])
        futures += self._producer.send_many(self._calls_topic,
                                            [(c.margin.account_id.encode(),
                                              codec.margin_call(c, self._source, now).SerializeToString())
                                             for c in calls])
        self._producer.flush(timeout=ACK_TIMEOUT_SECONDS)
        for future in futures:
            if not future.is_done or future.failed():
                future.get(timeout=ACK_TIMEOUT_SECONDS)
        if self._fanout is not None:
            self._fanout.publish(msgs)


def market_types(topics) -> dict[str, type]:
    return {topics.marks: marketdata_pb2.Mark, topics.risk_params: risk_pb2.RiskParams,
            topics.fills: account_pb2.Fill}


def assign_market(consumer: ProtoConsumer, marks_topic: str, params_topic: str, tail_records: int,
                  timeout_s: float, fills_topic: str = "", fills_since_ms: int = 0) -> None:
    """Every partition of marks (the last ``tail_records``), risk params (from the beginning) and, when
    named, fills (from ``fills_since_ms``: the volume window)."""
    raw = consumer.raw
    deadline = time.monotonic() + timeout_s
    tps: dict[str, list[TopicPartition]] = {}
    for topic in (marks_topic, params_topic) + ((fills_topic,) if fills_topic else ()):
        parts = topic_partitions(raw, topic, max(0.0, deadline - time.monotonic()), required=True)
        tps[topic] = [TopicPartition(topic, p) for p in sorted(parts)]
    raw.assign(tps[marks_topic] + tps[params_topic] + (tps[fills_topic] if fills_topic else []))
    raw.seek_to_beginning(*tps[params_topic])
    if fills_topic:
        since = raw.offsets_for_times({tp: fills_since_ms for tp in tps[fills_topic]})
        ends = raw.end_offsets(tps[fills_topic])
        for tp in tps[fills_topic]:
            found = since.get(tp)
            raw.seek(tp, found.offset if found is not None else ends[tp])
    seek_to_tail(raw, tps[marks_topic], tail_records)


class PositionsRebalance(ConsumerRebalanceListener):
    """Assigned partitions are paused until the service seeks them (rebuild from a snapshot's offset or
    the beginning); revoked ones' accounts are dropped."""

    def __init__(self) -> None:
        self.consumer = None
        self.revoked: set[int] = set()
        self.assigned: set[int] = set()
        self.newly_assigned: list[TopicPartition] = []
        self.joined = False   # a first assignment (possibly empty) has been received

    def on_partitions_revoked(self, revoked) -> None:
        self.revoked |= {tp.partition for tp in revoked}
        self.assigned -= {tp.partition for tp in revoked}

    def take_assigned(self) -> list[TopicPartition]:
        parts, self.newly_assigned = self.newly_assigned, []
        return parts

    def on_partitions_assigned(self, assigned) -> None:
        parts = list(assigned)
        self.joined = True
        self.newly_assigned.extend(parts)
        self.assigned |= {tp.partition for tp in parts}
        self.revoked -= {tp.partition for tp in parts}
        if parts and self.consumer is not None:
            # nothing is fetched until the service decides where each starts (a snapshot's offset, or
            # the beginning) and resumes it
            self.consumer.pause(*parts)
        log.info("positions partitions assigned", extra={"partitions": sorted(tp.partition for tp in parts)})
