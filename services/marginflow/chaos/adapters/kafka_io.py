"""Kafka for the harness: incremental readers of whole topics, and the fill generator."""

from __future__ import annotations

import threading
import time

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaTimeoutError

from marginflow.chaos.domain.fills import FillPlan
from marginflow.shared.kafka import ProtoProducer, key_partition, new_producer, topic_partitions


class TopicTail:
    """Every record of one topic, read from the beginning, a catch-up at a time (no consumer group)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                      client_id=f"chaos-{topic}", max_poll_records=20000,
                                      fetch_max_bytes=64 * 1024 * 1024, request_timeout_ms=20000)
        self.tps: list[TopicPartition] = []

    def _assign(self, deadline: float) -> bool:
        if self.tps:
            return True
        parts = topic_partitions(self.consumer, self.topic, max(0.0, deadline - time.monotonic()))
        if not parts:
            return False
        self.tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        self.consumer.assign(self.tps)
        self.consumer.seek_to_beginning(*self.tps)
        return True

    def catch_up(self, timeout_s: float) -> list:
        """The records written since the last call, up to the topic's end as of now."""
        deadline = time.monotonic() + timeout_s
        if not self._assign(deadline):
            return []
        end = self._end_offsets(deadline)
        out = []
        remaining = {tp for tp in self.tps if self.consumer.position(tp) < end[tp]}
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {self.topic} did not reach its end within {timeout_s:.0f}s")
            for records in self.consumer.poll(timeout_ms=500).values():
                out.extend(records)
            remaining = {tp for tp in remaining if self.consumer.position(tp) < end[tp]}
        return out

    def _end_offsets(self, deadline: float) -> dict:
        """The end offsets, asked again while the broker does not answer in time (just after Kafka was
        started again its first answers can take longer than the request timeout)."""
        while True:
            try:
                return self.consumer.end_offsets(self.tps)
            except KafkaTimeoutError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    def close(self) -> None:
        self.consumer.close(autocommit=False)


class FillGenerator:
    """A thread sending ``plan.fill(seq)`` for seq = 0, 1, … at ``rate`` fills/s to trades.fills.

    Every send's future is kept until acknowledged; one the broker did not take (Kafka down past the
    producer's retries) is sent again under the same fill id, as an exchange re-sends: the portfolio
    service applies a fill id once. :meth:`pause` stops sending and returns once every fill sent so
    far is acknowledged (a consistent cut); :meth:`resume` goes on with the next sequence number.
    """

    def __init__(self, bootstrap: str, topic: str, partitions: int, plan: FillPlan, rate: float,
                 encode, log) -> None:
        self.topic, self.partitions, self.plan, self.rate = topic, partitions, plan, rate
        self.encode = encode          # PlannedFill -> bytes
        self.log = log
        self.producer = ProtoProducer(new_producer(bootstrap, "chaos-fills", linger_ms=20,
                                                   request_timeout_ms=15000, max_block_ms=120000), "chaos")
        self.next_seq = 0
        self.acked = 0
        self.resent = 0
        self._pending: list[tuple[object, int]] = []     # (future, seq)
        self._run = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._loop, name="chaos-fills", daemon=True)
        self.thread.start()
        self.sent_since = (time.monotonic(), 0)

    def _record(self, seq: int) -> tuple[bytes, bytes]:
        fill = self.plan.fill(seq)
        return fill.account_id.encode(), self.encode(fill)

    def _send(self, seqs: list[int]) -> None:
        records = [self._record(s) for s in seqs]
        send = self.producer._producer.send
        for (key, value), seq in zip(records, seqs):
            fut = send(self.topic, key=key, value=value, partition=key_partition(key, self.partitions))
            self._pending.append((fut, seq))

    def _settle(self, block: bool) -> int:
        """Count acknowledged futures, re-send failed ones; returns how many are still in flight."""
        if block:
            self.producer.flush(timeout=60)
        still, retry = [], []
        for fut, seq in self._pending:
            if not fut.is_done:
                still.append((fut, seq))
            elif fut.failed():
                retry.append(seq)
            else:
                self.acked += 1
        self._pending = still
        if retry:
            self.resent += len(retry)
            self._send(retry)
        return len(self._pending)

    def _loop(self) -> None:
        tick_s = 0.01
        while not self._stop.is_set():
            if not self._run.is_set():
                self._idle.set()
                self._run.wait(0.2)
                continue
            self._idle.clear()
            started = time.monotonic()
            t0, n0 = self.sent_since
            due = int((started - t0) * self.rate) - (self.next_seq - n0)
            if due > 0:
                batch = list(range(self.next_seq, self.next_seq + min(due, int(self.rate) + 1)))
                with self._lock:
                    self._send(batch)
                    self.next_seq += len(batch)
                    if len(self._pending) > 20000:
                        self._settle(block=False)
            time.sleep(max(0.0, tick_s - (time.monotonic() - started)))
        self._idle.set()

    def resume(self) -> None:
        self.sent_since = (time.monotonic(), self.next_seq)
        self._run.set()

    def pause(self, timeout_s: float) -> None:
        self._run.clear()
        if not self._idle.wait(timeout_s):
            raise TimeoutError("the fill generator did not pause")
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._settle(block=True):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(self._pending)} fills not acknowledged within {timeout_s:.0f}s")

    def close(self) -> None:
        self._stop.set()
        self._run.set()
        self.thread.join(10)
        try:
            self.producer.close(timeout=5)
        except Exception:  # noqa: BLE001 - closing at the end, Kafka may be gone
            pass


def first_record_after(bootstrap: str, topic: str, since_ms: int, timeout_s: float = 20.0) -> int | None:
    """The Kafka timestamp (ms) of the earliest record of ``topic`` stamped at or after ``since_ms``
    (any partition), or None when there is none yet. The producers stamp records with their own
    clock (CreateTime), the same machine's as the harness's."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             client_id=f"chaos-first-{topic}", request_timeout_ms=20000)
    try:
        deadline = time.monotonic() + timeout_s
        parts = topic_partitions(consumer, topic, timeout_s)
        if not parts:
            return None
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        found = {tp: o for tp, o in consumer.offsets_for_times({tp: since_ms for tp in tps}).items() if o is not None}
        if not found:
            return None
        consumer.assign(list(found))
        for tp, o in found.items():
            consumer.seek(tp, o.offset)
        first: dict[TopicPartition, int] = {}
        while len(first) < len(found) and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500).items():
                stamp = min((r.timestamp for r in records if r.timestamp >= since_ms), default=None)
                if stamp is not None and tp not in first:
                    first[tp] = stamp
                    consumer.pause(tp)
        return min(first.values()) if first else None
    finally:
        consumer.close(autocommit=False)
