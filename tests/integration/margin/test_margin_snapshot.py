"""Restart snapshots over the real Kafka: a restart from ``margin.snapshot`` plus the records after its
offsets gives the same books and the same margin.state read-back as a read from the beginning, and a
snapshot that is garbage, truncated, stale, of other settings or absent is refused (metric and log) and
the partition read from its beginning, with the same result."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from marginflow.api.account.v1 import account_pb2
from marginflow.api.margin.v1 import margin_pb2 as pb
from marginflow.api.margin.v1 import snapshot_pb2
from marginflow.margin.adapters import codec
from marginflow.margin.adapters.metrics import MarginMetrics
from marginflow.margin.adapters.snapshots import fingerprint
from marginflow.margin.domain.accounts import AccountTable
from marginflow.margin.service import MarginApp, engine_config, instrument_table
from marginflow.shared.kafka import ProtoProducer, key_partition, new_producer, read_compacted
from marginflow.shared.universe import platform_universe

from margin_it_helpers import mark, risk_params, snapshot, wait_for

ACCOUNTS = 60


def _run(settings, registry_metrics):
    app = MarginApp(settings, metrics=registry_metrics).start(serve_grpc=False, serve_http_metrics=False)
    thread, stopping = app.run_in_thread()
    assert app.host.wait_ready(60), "margin did not become ready"
    return app, thread, stopping


def _stop(app, thread, stopping) -> None:
    stopping.set()
    thread.join(30)
    assert not thread.is_alive()


def _book(i: int, revision: int, usdc: str):
    return snapshot(f"s{i:03d}", [("BTC-PERP", str(1 + i % 3), "60000")], usdc, revision=revision)


def _from_scratch_books(settings) -> dict[str, tuple]:
    """Every account's book by a read of portfolio.positions from its beginning, as the service reduces it."""
    common = settings.common
    table = instrument_table(platform_universe(common, 0))
    assets = engine_config(settings, platform_universe(common, 0)).assets
    index = {a: i for i, a in enumerate(assets)}
    records = read_compacted(common.bootstrap, common.topics.positions, account_pb2.AccountSnapshot, "t-scratch")
    accounts = AccountTable(len(assets))
    accounts.upsert([codec.book_from_proto(m, table, index, k) for k, m in records.items()])
    return {a: _fields(accounts.book(a)) for a in accounts.row_of}


def _fields(b) -> tuple:
    return (b.revision, b.instrument.tolist(), b.size.tolist(), b.entry.tolist(), b.isolated.tolist(),
            b.isolated_collateral.tolist(), b.balances.tolist())


def _from_scratch_published(settings) -> dict:
    common = settings.common
    out = {}
    for key, msg in read_compacted(common.bootstrap, common.topics.margin_state, pb.MarginState, "t-seed").items():
        account, state, equity, im, ms, episode = codec.published_from_proto(msg)
        if account == key:
            out[key] = (state, equity, im, ms, episode)
    return out


def _parts(metrics: MarginMetrics, kind: str, result: str) -> float:
    return metrics.snapshot_parts.labels(kind, result)._value.get()


@pytest.fixture
def snap_settings(mg_settings):
    return dataclasses.replace(mg_settings, snapshot_interval_seconds=0.3)


@pytest.fixture
def written(snap_settings, publish):
    """A first instance ran, wrote a snapshot covering what it read and published, and stopped; then
    more records arrived (a tail after the snapshot's offsets)."""
    topics = snap_settings.common.topics
    publish(topics.risk_params, "current", risk_params())
    publish(topics.marks, "BTC-PERP", mark("BTC-PERP", "BTC", 60000.0))
    for i in range(ACCOUNTS):
        publish(topics.positions, f"s{i:03d}", _book(i, 1, "0"))            # bankrupt first revision
        publish(topics.positions, f"s{i:03d}", _book(i, 2, "20000" if i % 4 else "8000"))
    metrics = MarginMetrics(CollectorRegistry())
    app, thread, stopping = _run(snap_settings, metrics)
    try:
        wait_for(lambda: metrics.snapshot_writes.labels("ok")._value.get() >= 1 and app.snapshots._written.get(
            (snapshot_pb2.SNAPSHOT_KIND_PUBLISHED_STATES, 0)) is not None and not app.engine.publishing
                 and app.snapshots._written.get((snapshot_pb2.SNAPSHOT_KIND_POSITIONS, 0)) is not None,
                 timeout_s=60)
    finally:
        _stop(app, thread, stopping)
        app.close()
    for i in range(0, ACCOUNTS, 5):                                         # the tail: changed and new accounts
        publish(topics.positions, f"s{i:03d}", _book(i, 3, "7000"))
    for i in range(ACCOUNTS, ACCOUNTS + 8):
        publish(topics.positions, f"s{i:03d}", _book(i, 1, "15000"))
    return snap_settings


def _restart_and_compare(settings, expect_used: bool, refused: str | None = None) -> MarginMetrics:
    metrics = MarginMetrics(CollectorRegistry())
    app, thread, stopping = _run(dataclasses.replace(settings, snapshot_interval_seconds=3600.0), metrics)
    try:
        books = {a: _fields(app.engine.accounts.book(a)) for a in app.engine.accounts.row_of}
        wait_for(lambda: not app.engine.publishing, timeout_s=60)
    finally:
        _stop(app, thread, stopping)
    try:
        assert len(books) == ACCOUNTS + 8
        assert books == _from_scratch_books(settings)
        read_back = {k: (p.state, p.equity_usd, p.im_usd, p.publish_ms, p.episode)
                     for k, p in app.snapshots.published().items() if p is not None}
        assert read_back == _from_scratch_published(settings)
        assert (_parts(metrics, "positions", "used") > 0) == expect_used
        if refused is not None:
            assert _parts(metrics, "positions", refused) + _parts(metrics, "published", refused) > 0
    finally:
        app.close()
    return metrics


def test_restart_from_snapshot_and_tail_equals_a_read_from_the_beginning(written):
    metrics = _restart_and_compare(written, expect_used=True)
    assert _parts(metrics, "published", "used") > 0


def _rewrite_chunks(settings, change) -> None:
    """Every chunk on the snapshot topic replaced by ``change(key, SnapshotChunk) -> bytes | None``."""
    common = settings.common
    topic = common.topics.margin_snapshot
    chunks = read_compacted(common.bootstrap, topic, snapshot_pb2.SnapshotChunk, "t-snap")
    assert chunks, "no snapshot was written"
    producer = ProtoProducer(new_producer(common.bootstrap, "t-snap-writer", linger_ms=0), "test")
    try:
        for key, chunk in chunks.items():
            value = change(key, chunk)
            producer.send_raw(topic, key.encode(), value, partition=0)
        producer.flush()
    finally:
        producer.close()


def test_garbage_snapshot_is_refused_and_the_partitions_read_from_the_beginning(written):
    _rewrite_chunks(written, lambda _k, _c: b"\xff\x00 not a chunk \x17" * 11)
    _restart_and_compare(written, expect_used=False, refused="corrupt")


def test_truncated_snapshot_is_refused(written):
    def truncate(_key, chunk):
        chunk.count += 1        # a chunk that never arrived
        return chunk.SerializeToString()
    _rewrite_chunks(written, truncate)
    _restart_and_compare(written, expect_used=False, refused="corrupt")


def test_corrupt_payload_is_refused(written):
    def flip(_key, chunk):
        data = bytearray(chunk.data)
        data[len(data) // 2] ^= 0x5A
        chunk.data = bytes(data)
        return chunk.SerializeToString()
    _rewrite_chunks(written, flip)
    _restart_and_compare(written, expect_used=False, refused="corrupt")


def test_snapshot_beyond_the_partition_end_is_stale(written):
    def beyond(_key, chunk):
        chunk.source_offset += 1_000_000      # of a topic since recreated
        return chunk.SerializeToString()
    _rewrite_chunks(written, beyond)
    _restart_and_compare(written, expect_used=False, refused="stale")


def test_snapshot_of_other_settings_is_refused(written):
    other = dataclasses.replace(written, assets=("USDC", "USDT"))
    _restart_and_compare(other, expect_used=False, refused="mismatch")


def test_no_snapshot_reads_from_the_beginning(snap_settings, publish):
    topics = snap_settings.common.topics
    publish(topics.risk_params, "current", risk_params())
    publish(topics.marks, "BTC-PERP", mark("BTC-PERP", "BTC", 60000.0))
    for i in range(ACCOUNTS + 8):
        publish(topics.positions, f"s{i:03d}", _book(i, 1, "20000"))
    _restart_and_compare(snap_settings, expect_used=False, refused="missing")


def test_fingerprint_changes_with_partition_counts_instruments_and_assets(mg_settings):
    universe = platform_universe(mg_settings.common, 0)
    table = instrument_table(universe)
    assets = ("USDC", "BTC")
    base = fingerprint(table, assets, 4, 4)
    assert base == fingerprint(table, assets, 4, 4)
    assert base != fingerprint(table, assets, 5, 4)
    assert base != fingerprint(table, assets, 4, 8)
    assert base != fingerprint(table, ("USDC", "ETH"), 4, 4)
    fewer = dataclasses.replace(table, symbols=table.symbols[:-1], kind=table.kind[:-1],
                                underlying=table.underlying[:-1], contract_size=table.contract_size[:-1],
                                strike=table.strike[:-1], expiry_ms=table.expiry_ms[:-1])
    assert base != fingerprint(fewer, assets, 4, 4)
    assert np.array_equal(table.kind, instrument_table(universe).kind)


def _owned_books(app) -> dict[str, tuple]:
    return {a: _fields(app.engine.accounts.book(a)) for a in app.engine.accounts.row_of}


def _holds_exactly(app, scratch: dict[str, tuple], partitions: int) -> bool:
    """The instance is ready, and holds exactly the from-scratch books of the partitions it owns."""
    owned = set(app.rebalance.assigned)
    if not owned or not app.engine.ready or app.rebalance.newly_assigned or app.rebalance.revoked:
        return False
    want = {a: b for a, b in scratch.items() if key_partition(a.encode(), partitions) in owned}
    return _owned_books(app) == want


def test_partitions_handed_between_two_instances_start_from_the_snapshots_each_wrote(snap_settings, publish):
    """A rebalance hands a partition to a second instance, which starts it from the snapshot the first
    wrote plus the tail; when the second leaves, the first takes the partition back from the snapshot the
    second wrote. At every step each instance holds exactly the books a read from the beginning gives."""
    topics = snap_settings.common.topics
    partitions = 2
    publish(topics.risk_params, "current", risk_params())
    publish(topics.marks, "BTC-PERP", mark("BTC-PERP", "BTC", 60000.0))
    for i in range(ACCOUNTS):
        publish(topics.positions, f"s{i:03d}", _book(i, 1, "20000"))
    assert {key_partition(f"s{i:03d}".encode(), partitions) for i in range(ACCOUNTS)} == {0, 1}

    def wrote_all(app) -> bool:
        return all(app.snapshots._written.get((kind, p)) is not None for p in range(partitions)
                   for kind in (snapshot_pb2.SNAPSHOT_KIND_POSITIONS, snapshot_pb2.SNAPSHOT_KIND_PUBLISHED_STATES))

    metrics_a, metrics_b = MarginMetrics(CollectorRegistry()), MarginMetrics(CollectorRegistry())
    a = _run(snap_settings, metrics_a)
    b = None
    try:
        first = a[0]
        wait_for(lambda: len(first.rebalance.assigned) == partitions and wrote_all(first)
                 and not first.engine.publishing, timeout_s=60, what="the first instance wrote both partitions")
        for i in range(0, ACCOUNTS, 3):                                     # a tail after its snapshots
            publish(topics.positions, f"s{i:03d}", _book(i, 2, "9000"))
        b = _run(snap_settings, metrics_b)
        second = b[0]
        wait_for(lambda: len(first.rebalance.assigned) == 1 and len(second.rebalance.assigned) == 1,
                 timeout_s=60, what="the group split the partitions")
        scratch = _from_scratch_books(snap_settings)
        wait_for(lambda: _holds_exactly(first, scratch, partitions) and _holds_exactly(second, scratch, partitions),
                 timeout_s=60, what="each instance holds its partition's books")
        assert _parts(metrics_b, "positions", "used") >= 1       # the handed partition came from a snapshot
        assert _parts(metrics_b, "published", "used") >= 1
        assert _parts(metrics_b, "positions", "missing") == 0
        handed = set(second.rebalance.assigned)
        # the second instance writes its partition's snapshot, then more records arrive, then it leaves
        wait_for(lambda: all(second.snapshots._written.get((snapshot_pb2.SNAPSHOT_KIND_POSITIONS, p)) is not None
                             for p in handed), timeout_s=60, what="the second instance wrote its snapshot")
        for i in range(1, ACCOUNTS, 4):
            publish(topics.positions, f"s{i:03d}", _book(i, 3, "11000"))
        used_before = _parts(metrics_a, "positions", "used")
        _stop(*b)
        b[0].close()
        b = None
        wait_for(lambda: len(first.rebalance.assigned) == partitions, timeout_s=60,
                 what="the first instance took the partition back")
        scratch = _from_scratch_books(snap_settings)
        wait_for(lambda: _holds_exactly(first, scratch, partitions), timeout_s=60,
                 what="the first instance holds every book again")
        assert len(_owned_books(first)) == ACCOUNTS
        assert _parts(metrics_a, "positions", "used") > used_before   # taken back from a snapshot, not a full read
    finally:
        for run in (b, a):
            if run is not None:
                _stop(*run)
                run[0].close()
