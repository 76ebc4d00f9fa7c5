"""Restart snapshots on ``margin.snapshot``: what the margin service derived from its inputs, columnar.

A restarted instance (or one that takes over partitions in a rebalance) needs, per assigned
``portfolio.positions`` partition, every account's newest book, and per ``margin.state`` partition the
last state published for each key (so that it calls only on real transitions). Read from the
beginning, both cost a protobuf decode per record and a decimal parse per amount. A *part* holds the
result of that read for one source partition up to an offset (``source_offset``: the next record not
in it), so a reader takes the part and reads only the records after that offset: the same reduction
(newest revision per account, last decodable record per key) over the same records, in the same
order, gives the same result as the read from the beginning.

A part is trusted only when it is whole (every chunk of one generation is the newest record of its
key, the payload's CRC-32 and length match), of this format, derived under the same fingerprint
(instrument table, collateral assets, partition counts of both source topics, the codec's limits),
and its offset lies inside the source partition as it is now. Anything else is refused with a reason
(``missing``, ``corrupt``, ``mismatch``, ``stale``) and that partition is read from its beginning.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
import uuid
import zlib
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from google.protobuf.message import DecodeError
from kafka import TopicPartition

from marginflow.api.margin.v1 import margin_pb2
from marginflow.api.margin.v1 import snapshot_pb2 as pb
from marginflow.margin.adapters import codec
from marginflow.margin.domain.book import AccountBook, InstrumentTable
from marginflow.shared.errors import Rejected
from marginflow.shared.logs import get_logger

log = get_logger(__name__)

# Layout of the columns below; a part of another format is refused (``mismatch``).
SNAPSHOT_FORMAT = 1
POSITIONS = pb.SNAPSHOT_KIND_POSITIONS
PUBLISHED = pb.SNAPSHOT_KIND_PUBLISHED_STATES
_KIND_NAME = {POSITIONS: "positions", PUBLISHED: "published"}
_NAME_KIND = {v: k for k, v in _KIND_NAME.items()}

# Why a part was not used (the metric's label and the log line's reason).
MISSING, CORRUPT, MISMATCH, STALE = "missing", "corrupt", "mismatch", "stale"


class SnapshotRefused(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def fingerprint(table: InstrumentTable, assets: Sequence[str], positions_partitions: int,
                state_partitions: int) -> bytes:
    """What a part's content depends on besides its records: instrument indices and kinds (the books'
    columns are indices into the table), the collateral assets (balance columns), the partition counts
    (which accounts a partition holds) and the codec's plausibility limits (which records are refused)."""
    h = hashlib.sha256()
    h.update(f"format={SNAPSHOT_FORMAT}\n".encode())
    h.update("\n".join(table.symbols).encode())
    for a in (table.kind, table.underlying, table.contract_size, table.strike, table.expiry_ms):
        h.update(np.ascontiguousarray(a).tobytes())
    h.update(("\n".join(table.underlyings) + "|" + "\n".join(assets)).encode())
    h.update(f"|{positions_partitions}|{state_partitions}|{codec.MAX_ABS_SIZE!r}|{codec.MAX_PRICE!r}|"
             f"{codec.MAX_ABS_AMOUNT!r}".encode())
    return h.digest()


# ------------------------------------------------------------------ columns

def encode_columns(columns: Mapping[str, np.ndarray]) -> bytes:
    out = pb.SnapshotColumns()
    for name, a in columns.items():
        a = np.ascontiguousarray(a)
        dtype = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
        out.columns.add(name=name, dtype=dtype.str, shape=list(a.shape), data=a.astype(dtype, copy=False).tobytes())
    return out.SerializeToString()


def decode_columns(payload: bytes) -> dict[str, np.ndarray]:
    try:
        msg = pb.SnapshotColumns.FromString(payload)
    except DecodeError as exc:
        raise SnapshotRefused(CORRUPT, f"columns do not decode: {exc}") from None
    out = {}
    for c in msg.columns:
        try:
            dtype = np.dtype(c.dtype)
            a = np.frombuffer(c.data, dtype=dtype).reshape(tuple(c.shape))
        except (TypeError, ValueError) as exc:
            raise SnapshotRefused(CORRUPT, f"column {c.name!r}: {exc}") from None
        out[c.name] = a
    return out


def _column(columns: Mapping[str, np.ndarray], name: str, dtype: str, ndim: int = 1) -> np.ndarray:
    a = columns.get(name)
    if a is None or a.dtype != np.dtype(dtype) or a.ndim != ndim:
        raise SnapshotRefused(CORRUPT, f"column {name!r} missing or not {dtype}[{ndim}d]")
    return a


def _ids(columns: Mapping[str, np.ndarray], n: int) -> list[str]:
    lengths = _column(columns, "id_lengths", "<i4")
    text = _column(columns, "ids", "|u1")
    if lengths.shape[0] != n or (lengths < 0).any() or int(lengths.sum()) != text.shape[0]:
        raise SnapshotRefused(CORRUPT, "account ids do not add up")
    try:
        joined = text.tobytes().decode("utf-8")
    except UnicodeDecodeError:
        raise SnapshotRefused(CORRUPT, "account ids are not UTF-8") from None
    ends = np.cumsum(lengths)
    if len(joined) != text.shape[0]:   # multi-byte characters: split the bytes, not the text
        raw = text.tobytes()
        return [raw[e - k:e].decode("utf-8") for e, k in zip(ends.tolist(), lengths.tolist())]
    return [joined[e - k:e] for e, k in zip(ends.tolist(), lengths.tolist())]


def _id_columns(ids: Sequence[str]) -> dict[str, np.ndarray]:
    encoded = [a.encode("utf-8") for a in ids]
    return {"ids": np.frombuffer(b"".join(encoded), dtype=np.uint8),
            "id_lengths": np.fromiter((len(e) for e in encoded), dtype="<i4", count=len(encoded))}


# ------------------------------------------------------------------ positions parts

def positions_columns(books: Sequence[AccountBook], n_assets: int) -> dict[str, np.ndarray]:
    """The books of one partition as columns (CSR: ``indptr`` per account into the position columns)."""
    n = len(books)
    lengths = np.fromiter((b.n for b in books), dtype=np.int64, count=n)
    indptr = np.zeros(n + 1, dtype="<i8")
    np.cumsum(lengths, out=indptr[1:])

    def cat(attr: str, dtype: str) -> np.ndarray:
        parts = [getattr(b, attr) for b in books if b.n]
        return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype=dtype)

    balances = np.stack([b.balances for b in books]) if n else np.zeros((0, n_assets))
    return {**_id_columns([b.account_id for b in books]),
            "revision": np.fromiter((b.revision for b in books), dtype="<i8", count=n),
            "updated_ms": np.fromiter((b.updated_ms for b in books), dtype="<i8", count=n),
            "indptr": indptr, "instrument": cat("instrument", "<i4"), "size": cat("size", "<f8"),
            "entry": cat("entry", "<f8"), "isolated": cat("isolated", "|u1"),
            "isolated_collateral": cat("isolated_collateral", "<f8"),
            "balances": balances.astype("<f8", copy=False).reshape(n, n_assets)}


def books_of_columns(columns: Mapping[str, np.ndarray], n_assets: int, n_instruments: int) -> list[AccountBook]:
    """The books back (arrays are read-only views of the payload: books are never modified)."""
    revision = _column(columns, "revision", "<i8")
    n = revision.shape[0]
    updated = _column(columns, "updated_ms", "<i8")
    indptr = _column(columns, "indptr", "<i8")
    instrument = _column(columns, "instrument", "<i4")
    size = _column(columns, "size", "<f8")
    entry = _column(columns, "entry", "<f8")
    isolated = _column(columns, "isolated", "|u1")
    coll = _column(columns, "isolated_collateral", "<f8")
    balances = _column(columns, "balances", "<f8", ndim=2)
    m = instrument.shape[0]
    if (updated.shape[0] != n or indptr.shape[0] != n + 1 or balances.shape != (n, n_assets)
            or any(a.shape[0] != m for a in (size, entry, isolated, coll))
            or indptr[0] != 0 or indptr[-1] != m or (np.diff(indptr) < 0).any()):
        raise SnapshotRefused(CORRUPT, "position columns do not agree in length")
    if m and (instrument.min() < 0 or instrument.max() >= n_instruments):
        raise SnapshotRefused(CORRUPT, "instrument index out of range")
    if not (np.isfinite(size).all() and np.isfinite(entry).all() and np.isfinite(coll).all()
            and np.isfinite(balances).all()):
        raise SnapshotRefused(CORRUPT, "non-finite amount")
    ids = _ids(columns, n)
    bounds = indptr.tolist()
    return [AccountBook(a, r, instrument[lo:hi], size[lo:hi], entry[lo:hi], isolated[lo:hi], coll[lo:hi],
                        balances[i], u)
            for i, (a, r, u, lo, hi) in enumerate(zip(ids, revision.tolist(), updated.tolist(), bounds,
                                                        bounds[1:]))]


# ------------------------------------------------------------------ published states (margin.state read back)

@dataclasses.dataclass(frozen=True, slots=True)
class Published:
    """What a margin.state record says of its account, as the read-back seeds it."""

    state: int
    equity_usd: float
    im_usd: float
    publish_ms: int
    episode: int


def published_of_record(key: str, value: bytes | None) -> Published | None:
    """The read-back of one decodable margin.state record: ``None`` when it seeds nothing (amounts that
    do not parse, or an account id other than the key), as the read from the beginning treats it.
    Raises DecodeError for a record that does not decode (the previous record of the key stands)."""
    msg = margin_pb2.MarginState.FromString(value)
    try:
        account, state, equity, im, publish_ms, episode = codec.published_from_proto(msg)
    except Rejected:
        return None
    if account != key:
        return None
    return Published(state, equity, im, publish_ms, episode)


class PublishedReadBack:
    """The last record per key of every ``margin.state`` partition, read up to ``offsets`` (the next
    record to read), kept across the instance's life so that each read-back reads only what is new."""

    def __init__(self) -> None:
        self.by_partition: dict[int, dict[str, Published | None]] = {}
        self.offsets: dict[int, int] = {}

    def restore(self, partition: int, columns: Mapping[str, np.ndarray], offset: int) -> None:
        state = _column(columns, "state", "|i1")
        n = state.shape[0]
        usable = _column(columns, "usable", "|u1")
        equity = _column(columns, "equity_usd", "<f8")
        im = _column(columns, "im_usd", "<f8")
        ms = _column(columns, "publish_ms", "<i8")
        episode = _column(columns, "episode", "<i8")
        if any(a.shape[0] != n for a in (usable, equity, im, ms, episode)):
            raise SnapshotRefused(CORRUPT, "published-state columns do not agree in length")
        ids = _ids(columns, n)
        self.by_partition[partition] = {
            k: (Published(s, e, i, t, ep) if u else None)
            for k, u, s, e, i, t, ep in zip(ids, usable.tolist(), state.tolist(), equity.tolist(), im.tolist(),
                                            ms.tolist(), episode.tolist())}
        self.offsets[partition] = offset

    def columns(self, partition: int) -> dict[str, np.ndarray]:
        entries = self.by_partition.get(partition, {})
        n = len(entries)
        values = list(entries.values())
        zero = Published(0, 0.0, 0.0, 0, 0)
        rows = [v or zero for v in values]
        return {**_id_columns(list(entries)),
                "usable": np.fromiter((v is not None for v in values), dtype="|u1", count=n),
                "state": np.fromiter((r.state for r in rows), dtype="|i1", count=n),
                "equity_usd": np.fromiter((r.equity_usd for r in rows), dtype="<f8", count=n),
                "im_usd": np.fromiter((r.im_usd for r in rows), dtype="<f8", count=n),
                "publish_ms": np.fromiter((r.publish_ms for r in rows), dtype="<i8", count=n),
                "episode": np.fromiter((r.episode for r in rows), dtype="<i8", count=n)}

    def apply(self, partition: int, key: str, value: bytes | None) -> None:
        entries = self.by_partition.setdefault(partition, {})
        if value is None:
            entries.pop(key, None)      # tombstone
            return
        try:
            entries[key] = published_of_record(key, value)
        except DecodeError:
            log.warning("undecodable record in state topic", extra={"partition": partition, "key": key})

    def read(self, consumer, topic: str, timeout_s: float) -> int:
        """Read every partition of ``topic`` from the held offset (0 for a partition not held) to its end
        offset taken now; returns the records read. ``consumer``: no group, assigned here."""
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return 0
        consumer.assign(tps)
        end = consumer.end_offsets(tps)
        begin = consumer.beginning_offsets(tps)
        for tp in tps:
            held = self.offsets.get(tp.partition, 0)
            if held > end[tp] or held < begin[tp]:
                # the topic was recreated or its head deleted: what is held no longer describes it
                self.by_partition.pop(tp.partition, None)
                held = begin[tp]
            consumer.seek(tp, held)
            self.offsets[tp.partition] = held
        consumer.resume(*tps)
        remaining = {tp for tp in tps if consumer.position(tp) < end[tp]}
        deadline = time.monotonic() + timeout_s
        n = 0
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} did not reach its end within {timeout_s}s")
            for tp, records in consumer.poll(timeout_ms=500, max_records=20000).items():
                if tp not in end:
                    continue
                for rec in records:
                    if rec.offset >= end[tp]:
                        continue
                    self.apply(tp.partition, rec.key.decode() if rec.key else "", rec.value)
                    n += 1
            for tp in list(remaining):
                pos = consumer.position(tp)
                self.offsets[tp.partition] = min(pos, end[tp])
                if pos >= end[tp]:
                    remaining.discard(tp)
        for tp in tps:
            self.offsets[tp.partition] = end[tp]
        consumer.pause(*tps)   # read again only on the next read-back (seeked then)
        return n

    def latest(self) -> dict[str, Published | None]:
        """Every key's entry over every partition (a key on two partitions: the higher partition's)."""
        out: dict[str, Published | None] = {}
        for p in sorted(self.by_partition):
            out.update(self.by_partition[p])
        return out


# ------------------------------------------------------------------ chunks

def chunk_key(kind: int, partition: int, index: int) -> bytes:
    return f"{_KIND_NAME[kind]}/{partition}/{index}".encode()


def parse_key(key: bytes | None) -> tuple[int, int, int] | None:
    try:
        kind, partition, index = (key or b"").decode().split("/")
        return _NAME_KIND[kind], int(partition), int(index)
    except (UnicodeDecodeError, ValueError, KeyError):
        return None


def chunks(kind: int, partition: int, fp: bytes, source_offset: int, written_ms: int, payload: bytes,
           chunk_bytes: int) -> list[tuple[bytes, bytes]]:
    """``(key, value)`` records of one part, each below ``chunk_bytes`` of data."""
    generation = uuid.uuid4().hex
    count = max(1, math.ceil(len(payload) / chunk_bytes))
    crc = zlib.crc32(payload)
    out = []
    for i in range(count):
        msg = pb.SnapshotChunk(format=SNAPSHOT_FORMAT, kind=kind, partition=partition, generation=generation,
                               index=i, count=count, fingerprint=fp, source_offset=source_offset,
                               written_ms=written_ms, payload_crc32=crc, payload_bytes=len(payload),
                               data=payload[i * chunk_bytes:(i + 1) * chunk_bytes])
        out.append((chunk_key(kind, partition, i), msg.SerializeToString()))
    return out


@dataclasses.dataclass(frozen=True)
class Part:
    kind: int
    partition: int
    source_offset: int
    written_ms: int
    payload: bytes

    def columns(self) -> dict[str, np.ndarray]:
        return decode_columns(self.payload)


class SnapshotSet:
    """The newest record of every key of ``margin.snapshot``, read once; parts assembled on request."""

    def __init__(self, latest: Mapping[bytes, bytes | None]) -> None:
        self._by_part: dict[tuple[int, int], dict[int, bytes | None]] = {}
        for key, value in latest.items():
            parsed = parse_key(key)
            if parsed is None:
                continue
            kind, partition, index = parsed
            if value is None:
                continue    # tombstone of a chunk a smaller generation no longer has
            self._by_part.setdefault((kind, partition), {})[index] = value

    def __len__(self) -> int:
        return len(self._by_part)

    def part(self, kind: int, partition: int, fp: bytes) -> Part:
        """The whole part of ``(kind, partition)`` derived under ``fp``, or :class:`SnapshotRefused`."""
        raw = self._by_part.get((kind, partition))
        if not raw:
            raise SnapshotRefused(MISSING, f"no {_KIND_NAME[kind]} part of partition {partition}")
        try:
            msgs = {i: pb.SnapshotChunk.FromString(v) for i, v in raw.items()}
        except DecodeError as exc:
            raise SnapshotRefused(CORRUPT, f"a chunk does not decode: {exc}") from None
        first = msgs.get(0)
        if first is None:
            raise SnapshotRefused(CORRUPT, "first chunk missing")
        if first.format != SNAPSHOT_FORMAT:
            raise SnapshotRefused(MISMATCH, f"format {first.format}, this service reads {SNAPSHOT_FORMAT}")
        if first.fingerprint != fp:
            raise SnapshotRefused(MISMATCH, "derived under other instruments, assets, partition counts or limits")
        count = first.count
        if count < 1:
            raise SnapshotRefused(CORRUPT, "chunk count 0")
        data = []
        for i in range(count):
            m = msgs.get(i)
            if m is None or m.generation != first.generation or m.count != count or m.kind != kind \
                    or m.partition != partition:
                raise SnapshotRefused(CORRUPT, f"chunk {i} of {count} missing or of another generation")
            data.append(m.data)
        payload = b"".join(data)
        if len(payload) != first.payload_bytes or zlib.crc32(payload) != first.payload_crc32:
            raise SnapshotRefused(CORRUPT, "payload length or CRC-32 does not match")
        return Part(kind, partition, int(first.source_offset), int(first.written_ms), payload)

    def held_counts(self) -> list[tuple[int, int, int]]:
        """(kind, partition, 1 + highest chunk index held) of every part: the chunks a writer deletes
        when its next generation of the part is shorter."""
        return [(kind, partition, max(chunks) + 1) for (kind, partition), chunks in self._by_part.items()]


def read_snapshot_topic(consumer, topic: str, timeout_s: float) -> SnapshotSet:
    """The newest record per key of the snapshot topic (every partition, beginning to end offsets now)."""
    parts = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    latest: dict[bytes, bytes | None] = {}
    if not tps:
        return SnapshotSet(latest)
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    end = consumer.end_offsets(tps)
    remaining = {tp for tp in tps if consumer.position(tp) < end[tp]}
    deadline = time.monotonic() + timeout_s
    while remaining:
        if time.monotonic() > deadline:
            raise TimeoutError(f"reading {topic} did not reach its end within {timeout_s}s")
        for tp, records in consumer.poll(timeout_ms=500).items():
            for rec in records:
                if rec.offset < end.get(tp, 0):
                    latest[rec.key or b""] = rec.value
        remaining = {tp for tp in remaining if consumer.position(tp) < end[tp]}
    consumer.pause(*tps)
    return SnapshotSet(latest)


def check_offset(part: Part, begin: int, end: int, max_age_ms: int, now_ms: int) -> None:
    """A part is usable for a source partition whose records now span [begin, end)."""
    if part.source_offset > end:
        raise SnapshotRefused(STALE, f"offset {part.source_offset} beyond the partition's end {end} "
                                     "(the topic was recreated)")
    if part.source_offset < begin:
        raise SnapshotRefused(STALE, f"offset {part.source_offset} before the partition's beginning {begin}")
    if max_age_ms and now_ms - part.written_ms > max_age_ms:
        raise SnapshotRefused(STALE, f"written {(now_ms - part.written_ms) / 1e3:.0f} s ago")


def part_records(kind: int, partition: int, fp: bytes, source_offset: int, columns: Mapping[str, np.ndarray],
                 chunk_bytes: int, now_ms: int, held: Iterable[int] = ()) -> list[tuple[bytes, bytes | None]]:
    """The records of a part, then tombstones for chunk indices of an older, larger generation."""
    records: list[tuple[bytes, bytes | None]] = list(
        chunks(kind, partition, fp, source_offset, now_ms, encode_columns(columns), chunk_bytes))
    count = len(records)
    records += [(chunk_key(kind, partition, i), None) for i in held if i >= count]
    return records
