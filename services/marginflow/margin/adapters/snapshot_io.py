"""The margin service's restart snapshots on Kafka: reading them at a start or an assignment, the
``margin.state`` read-back, and writing them in the background.

* **Read.** :meth:`RestartSnapshots.positions_parts` gives, per assigned ``portfolio.positions``
  partition, the books and the offset to continue from, or nothing (the partition is read from its
  beginning; a log line and ``marginflow_margin_snapshot_parts_total{result}`` say why).
  :meth:`RestartSnapshots.published` is the ``margin.state`` read-back (the last state published per
  key): at the first call from the parts, then only the records after the offsets held.
* **Write.** :meth:`RestartSnapshots.offer` takes the books of the owned partitions with the positions
  offsets they reflect, captured by the service loop between two turns; a thread of its own reads
  ``margin.state`` up to its end, encodes the parts and sends them (the loop never waits on it). A part
  whose offset has not moved since it was last written is not written again.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Mapping, Sequence

from kafka import TopicPartition

from marginflow.margin.adapters.snapshots import (
    POSITIONS, PUBLISHED, Published, PublishedReadBack, SnapshotRefused, SnapshotSet, books_of_columns,
    check_offset, part_records, positions_columns, read_snapshot_topic)
from marginflow.margin.domain.book import AccountBook
from marginflow.shared.kafka import new_consumer, new_producer
from marginflow.shared.logs import get_logger

log = get_logger(__name__)

# A snapshot is read in a few large fetches (one partition, records of up to a chunk each), bytes.
SNAPSHOT_FETCH_BYTES = 32 * 1024 * 1024
ACK_TIMEOUT_SECONDS = 120.0
_KIND = {POSITIONS: "positions", PUBLISHED: "published"}


@dataclasses.dataclass(frozen=True)
class Capture:
    """The owned partitions' books and the ``portfolio.positions`` offsets they reflect (between turns)."""

    offsets: Mapping[int, int]
    books: Mapping[int, Sequence[AccountBook]]


class RestartSnapshots:
    def __init__(self, bootstrap: str, snapshot_topic: str, state_topic: str, fingerprint: bytes, *,
                 n_assets: int, n_instruments: int, enabled: bool, max_age_seconds: float, chunk_bytes: int,
                 timeout_s: float, metrics, clock_ms, client_id: str = "margin") -> None:
        self.snapshot_topic = snapshot_topic
        self.state_topic = state_topic
        self.fingerprint = fingerprint
        self.enabled = enabled
        self._n_assets = n_assets
        self._n_instruments = n_instruments
        self._max_age_ms = int(max_age_seconds * 1000)
        self._chunk_bytes = chunk_bytes
        self._timeout_s = timeout_s
        self._metrics = metrics
        self._clock_ms = clock_ms
        self.readback = PublishedReadBack()
        self._state_consumer = new_consumer(bootstrap, None, f"{client_id}-state-readback",
                                            max_partition_fetch_bytes=8 * 1024 * 1024)
        self._lock = threading.Lock()          # the read-back: the loop (seeding) and the writer
        self._first_readback = True
        self._bootstrap = bootstrap
        self._client_id = client_id
        self._producer = None
        self._held: dict[tuple[int, int], int] = {}          # (kind, partition) → chunks last seen/written
        self._written: dict[tuple[int, int], int] = {}       # (kind, partition) → offset last written
        self._pending: SnapshotSet | None = None
        self._queue: queue.Queue[Capture | None] = queue.Queue(maxsize=1)
        self._thread: threading.Thread | None = None

    # ---- reading
    def read_set(self) -> SnapshotSet:
        consumer = new_consumer(self._bootstrap, None, f"{self._client_id}-snapshot-reader",
                                max_partition_fetch_bytes=SNAPSHOT_FETCH_BYTES)
        try:
            snap = read_snapshot_topic(consumer, self.snapshot_topic, self._timeout_s)
        finally:
            consumer.close(autocommit=False)
        for kind, partition, count in snap.held_counts():
            self._held[(kind, partition)] = max(self._held.get((kind, partition), 0), count)
        return snap

    def _refused(self, kind: int, partition: int, exc: SnapshotRefused) -> None:
        self._metrics.snapshot_parts.labels(_KIND[kind], exc.reason).inc()
        log.warning("snapshot part not used; the partition is read from its beginning",
                    extra={"kind": _KIND[kind], "partition": partition, "reason": exc.reason, "detail": exc.detail})

    def positions_parts(self, tps: Sequence[TopicPartition], begin: Mapping, end: Mapping
                        ) -> dict[TopicPartition, tuple[int, list[AccountBook]]]:
        """Per partition of ``tps`` with a usable part: (offset to continue from, the books)."""
        if not self.enabled or not tps:
            return {}
        started = time.perf_counter()
        snap = self.read_set()
        if self._first_readback:
            self._pending = snap     # its published parts seed the first read-back
        out = {}
        now = self._clock_ms()
        for tp in tps:
            try:
                part = snap.part(POSITIONS, tp.partition, self.fingerprint)
                check_offset(part, begin[tp], end[tp], self._max_age_ms, now)
                books = books_of_columns(part.columns(), self._n_assets, self._n_instruments)
            except SnapshotRefused as exc:
                self._refused(POSITIONS, tp.partition, exc)
                continue
            self._metrics.snapshot_parts.labels("positions", "used").inc()
            out[tp] = (part.source_offset, books)
        log.info("positions snapshot parts read", extra={"partitions": sorted(tp.partition for tp in out),
                                                        "accounts": sum(len(b) for _o, b in out.values()),
                                                        "seconds": round(time.perf_counter() - started, 3)})
        return out

    def published(self) -> dict[str, Published | None]:
        """The ``margin.state`` read-back now: every key's last record, as a read from the beginning gives it."""
        with self._lock:
            if self._first_readback:
                self._first_readback = False
                if self.enabled:
                    self._restore_published(self._pending if self._pending is not None else self.read_set())
                self._pending = None
            self.readback.read(self._state_consumer, self.state_topic, self._timeout_s)
            return self.readback.latest()

    def _restore_published(self, snap: SnapshotSet) -> None:
        consumer = self._state_consumer
        n = len(consumer.partitions_for_topic(self.state_topic) or ())
        tps = [TopicPartition(self.state_topic, q) for q in range(n)]
        begin, end = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
        now = self._clock_ms()
        for tp in tps:
            try:
                part = snap.part(PUBLISHED, tp.partition, self.fingerprint)
                check_offset(part, begin[tp], end[tp], self._max_age_ms, now)
                self.readback.restore(tp.partition, part.columns(), part.source_offset)
            except SnapshotRefused as exc:
                self._refused(PUBLISHED, tp.partition, exc)
                continue
            self._metrics.snapshot_parts.labels("published", "used").inc()

    # ---- writing
    def start_writer(self, producer=None) -> None:
        self._producer = producer or new_producer(self._bootstrap, f"{self._client_id}-snapshot",
                                                  max_request_size=self._chunk_bytes + 64 * 1024)
        self._thread = threading.Thread(target=self._run, name="margin-snapshot-writer", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        return self._queue.full()

    def offer(self, capture: Capture) -> bool:
        """Hand a capture to the writer; False when it is still writing the last one (this one is dropped)."""
        try:
            self._queue.put_nowait(capture)
            return True
        except queue.Full:
            return False

    def _run(self) -> None:
        while True:
            capture = self._queue.get()
            if capture is None:
                return
            started = time.perf_counter()
            try:
                written = self.write(capture)
            except Exception:  # noqa: BLE001 - the next interval writes again; a restart reads from the beginning
                self._metrics.snapshot_writes.labels("failed").inc()
                log.warning("restart snapshot not written", exc_info=True)
            else:
                self._metrics.snapshot_writes.labels("ok").inc()
                self._metrics.snapshot_write_seconds.observe(time.perf_counter() - started)
                self._metrics.snapshot_bytes.set(written)
            finally:
                self._queue.task_done()

    def write(self, capture: Capture) -> int:
        """Encode and send the parts that changed; returns the payload bytes sent."""
        now = self._clock_ms()
        parts: list[tuple[tuple[int, int], int, list]] = []
        for p, offset in sorted(capture.offsets.items()):
            if self._written.get((POSITIONS, p)) == offset:
                continue
            cols = positions_columns(list(capture.books.get(p, ())), self._n_assets)
            parts.append(((POSITIONS, p), offset, self._records(POSITIONS, p, offset, cols, now)))
        with self._lock:
            if self._first_readback:
                return 0     # nothing read back yet: the seeding's read comes first
            self.readback.read(self._state_consumer, self.state_topic, self._timeout_s)
            for q, offset in sorted(self.readback.offsets.items()):
                if self._written.get((PUBLISHED, q)) == offset:
                    continue
                parts.append(((PUBLISHED, q), offset,
                              self._records(PUBLISHED, q, offset, self.readback.columns(q), now)))
        futures = []
        sent = 0
        for _part, _offset, records in parts:
            for key, value in records:
                futures.append(self._producer.send(self.snapshot_topic, key=key, value=value, partition=0))
                sent += len(value or b"")
        self._producer.flush(timeout=ACK_TIMEOUT_SECONDS)
        for f in futures:
            f.get(timeout=ACK_TIMEOUT_SECONDS)
        for part, offset, records in parts:
            self._held[part] = sum(1 for _k, v in records if v is not None)
            self._written[part] = offset
        if parts:
            log.info("restart snapshot written", extra={"parts": len(parts), "bytes": sent})
        return sent

    def _records(self, kind: int, partition: int, offset: int, columns, now: int) -> list:
        return part_records(kind, partition, self.fingerprint, offset, columns, self._chunk_bytes, now,
                            held=range(self._held.get((kind, partition), 0)))

    def close(self) -> None:
        if self._thread is not None:
            try:
                self._queue.put(None, timeout=ACK_TIMEOUT_SECONDS)
            except queue.Full:
                pass
            self._thread.join(ACK_TIMEOUT_SECONDS)
        if self._producer is not None:
            self._producer.close(timeout=10)
        self._state_consumer.close(autocommit=False)
