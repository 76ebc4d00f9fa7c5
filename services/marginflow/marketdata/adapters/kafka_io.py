"""Kafka side of marketdata: domain values to protobuf on md.ticks / md.marks, dead letters to
md.ticks.dlq, and the restore of the last published state at start."""

from __future__ import annotations

import time

from kafka import KafkaConsumer, TopicPartition

from marginflow.api.common.v1 import common_pb2
from marginflow.api.marketdata.v1 import marketdata_pb2
from marginflow.marketdata.domain.marks import TOP_LEVELS
from marginflow.marketdata.domain.ticks import AcceptedTick, MarkValue, RawTick
from marginflow.shared.depthcurve import curve_of_mark
from marginflow.shared.kafka import DeadLetterSink, ProtoProducer, seek_to_tail


def tick_to_proto(acc: AcceptedTick, publish_ms: int) -> marketdata_pb2.Tick:
    t = acc.tick
    msg = marketdata_pb2.Tick(
        meta=common_pb2.EventMeta(event_time_ms=t.event_time_ms, publish_time_ms=publish_ms, source=t.source),
        instrument=t.instrument, price=t.price, bid=t.bid, ask=t.ask, bid_size=t.bid_size,
        ask_size=t.ask_size, sequence=acc.sequence, implied_vol=t.implied_vol)
    # md.ticks carries the top levels of the book; the whole book is summarised by the marks' depth curve
    if t.bids:
        top = t.bids[:TOP_LEVELS]
        msg.bid_prices.extend([p for p, _ in top])
        msg.bid_sizes.extend([s for _, s in top])
    if t.asks:
        top = t.asks[:TOP_LEVELS]
        msg.ask_prices.extend([p for p, _ in top])
        msg.ask_sizes.extend([s for _, s in top])
    return msg


def mark_to_proto(m: MarkValue, publish_ms: int, source: str) -> marketdata_pb2.Mark:
    msg = marketdata_pb2.Mark(
        meta=common_pb2.EventMeta(event_time_ms=m.event_time_ms, publish_time_ms=publish_ms, source=source),
        instrument=m.instrument, underlying=m.underlying, index_price=m.index_price, mark_price=m.mark_price,
        basis=m.basis, implied_vol=m.implied_vol, half_spread_frac=m.half_spread_frac,
        depth_contracts=m.depth_contracts, sequence=m.sequence)
    c = m.depth_curve
    if c is not None:
        msg.depth_curve.distance_bps.extend(c.distance_bps)
        msg.depth_curve.bid_contracts.extend(c.bid_contracts)
        msg.depth_curve.ask_contracts.extend(c.ask_contracts)
    return msg


def mark_from_proto(p: marketdata_pb2.Mark) -> MarkValue:
    return MarkValue(p.meta.event_time_ms, p.instrument, p.underlying, p.index_price, p.mark_price, p.basis,
                     p.implied_vol, p.half_spread_frac, p.depth_contracts, p.sequence, curve_of_mark(p))


def raw_tick_payload(t: RawTick) -> bytes:
    """The rejected tick as it arrived, for the dead-letter record (CSV-shaped, human-readable)."""
    return f"{t.event_time_ms},{t.instrument},{t.price!r},{t.bid!r},{t.ask!r},{t.bid_size!r},{t.ask_size!r}".encode()


class KafkaMarketSink:
    """The publishing port of the application, on Kafka."""

    def __init__(self, producer: ProtoProducer, dead_letters: DeadLetterSink, ticks_topic: str, marks_topic: str,
                 source_topic_label: str = "md.source") -> None:
        self.producer = producer
        self.dead_letters = dead_letters
        self.ticks_topic = ticks_topic
        self.marks_topic = marks_topic
        self.source_label = source_topic_label

    def publish(self, ticks: list[AcceptedTick], marks: list[MarkValue], now_ms: int) -> None:
        self.producer.send_many(self.ticks_topic, [
            (acc.tick.instrument.encode(), tick_to_proto(acc, now_ms).SerializeToString()) for acc in ticks])
        self.producer.send_many(self.marks_topic, [
            (m.instrument.encode(), mark_to_proto(m, now_ms, "marketdata").SerializeToString()) for m in marks])

    def reject(self, tick: RawTick, code: str, detail: str) -> None:
        where = f" (line {tick.line})" if tick.line else ""
        self.dead_letters.publish(code, detail + where, payload=raw_tick_payload(tick),
                                  key=tick.instrument.encode(), source_topic=self.source_label)

    def reject_row(self, line: int, text: str, reason: str) -> None:
        self.dead_letters.publish("malformed_row", f"line {line}: {reason}", payload=text.encode(),
                                  source_topic=self.source_label)

    def flush(self) -> None:
        self.producer.flush()


def last_marks(bootstrap: str, marks_topic: str, tail_per_partition: int = 20_000,
               timeout_s: float = 30.0) -> dict[str, MarkValue]:
    """The last published mark per instrument, read from the tail of md.marks (restart resume)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             client_id="marketdata-restore", max_poll_records=20_000)
    try:
        parts = consumer.partitions_for_topic(marks_topic)
        if not parts:
            return {}
        tps = [TopicPartition(marks_topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        begin = consumer.beginning_offsets(tps)
        end = seek_to_tail(consumer, tps, tail_per_partition)
        out: dict[str, MarkValue] = {}
        deadline = time.monotonic() + timeout_s
        remaining = {tp for tp in tps if end[tp] > begin[tp]}
        while remaining and time.monotonic() < deadline:
            for _tp, records in consumer.poll(timeout_ms=300).items():
                for rec in records:
                    try:
                        mark = mark_from_proto(marketdata_pb2.Mark.FromString(rec.value))
                    except Exception:  # noqa: BLE001 - an undecodable record (or a broken curve) is not a mark
                        continue
                    prev = out.get(mark.instrument)
                    if prev is None or mark.event_time_ms >= prev.event_time_ms:
                        out[mark.instrument] = mark
            remaining = {tp for tp in remaining if consumer.position(tp) < end[tp]}
        return out
    finally:
        consumer.close(autocommit=False)
