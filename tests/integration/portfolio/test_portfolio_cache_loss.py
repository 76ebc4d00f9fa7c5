"""Redis is a cache, never the truth: fills under load while the cache is emptied (FLUSHALL) and
while Redis restarts empty; afterwards every position on portfolio.positions and over gRPC equals
the fold of trades.fills, and no account ever answers NOT_FOUND.

The test runs its own redis-server on a free loopback port, so that FLUSHALL and the restart touch
nothing but this test.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from decimal import Decimal as D

import grpc
import redis

from marginflow.api.account.v1 import account_pb2 as pb
from marginflow.api.account.v1 import account_pb2_grpc
from marginflow.portfolio.adapters.codec import fill_to_proto
from marginflow.portfolio.domain.model import Fill, Side
from marginflow.portfolio.service import PortfolioApp
from marginflow.shared.clock import SystemClock
from marginflow.shared.kafka import ProtoProducer, new_producer, read_compacted

from portfolio_it_helpers import wait_for

ACCOUNTS = [f"cache-{i:03d}" for i in range(200)]
INSTRUMENTS = ("BTC-PERP", "ETH-PERP", "SOL-PERP")
FILLS = 3000
RATE_PER_S = 1000.0


def _fills() -> list[Fill]:
    out = []
    for n in range(FILLS):
        account = ACCOUNTS[(n * 7) % len(ACCOUNTS)]
        side = Side.BUY if (n // len(ACCOUNTS)) % 3 != 2 else Side.SELL
        out.append(Fill(f"cl-{n}", account, INSTRUMENTS[n % 3], side, D("0.1") * (1 + n % 5), D(100 + n % 50),
                        D("0.01"), 1_700_000_000_000 + n))
    return out


def _fold(fills: list[Fill]) -> dict[tuple[str, str], D]:
    out: dict[tuple[str, str], D] = {}
    for f in fills:
        signed = f.size if f.side == Side.BUY else -f.size
        out[(f.account_id, f.instrument)] = out.get((f.account_id, f.instrument), D(0)) + signed
    return {k: v for k, v in out.items() if v != 0}


def _positions(snapshots) -> dict[tuple[str, str], D]:
    out = {}
    for snap in snapshots:
        for p in snap.positions:
            if D(p.size.value or 0) != 0:
                out[(snap.account_id, p.instrument)] = D(p.size.value)
    return out


def test_fills_survive_flushall_and_a_redis_restart_under_load(pf_settings, private_redis):
    settings = dataclasses.replace(pf_settings, common=dataclasses.replace(pf_settings.common,
                                                                           redis_url=private_redis.url),
                                   cache_check_seconds=3600.0)   # only the check at each load can catch the loss
    topics = settings.common.topics
    app = PortfolioApp(settings, SystemClock()).start(serve_http_metrics=False)
    rebuilds_at_start = app.metrics.rebuilds._value.get()
    thread, stopping = app.run_in_thread()
    fills = _fills()
    producer = ProtoProducer(new_producer(settings.common.bootstrap, "test-cache-loss"), "test")
    sent = [0]

    def send_all() -> None:
        start = time.perf_counter()
        for i, f in enumerate(fills):
            delay = start + i / RATE_PER_S - time.perf_counter()
            if delay > 0:
                time.sleep(delay)   # paced producer, not a wait for a result
            producer.send(topics.fills, f.account_id, fill_to_proto(f, "test"))
            sent[0] = i + 1
        producer.flush()

    sender = threading.Thread(target=send_all)
    channel = grpc.insecure_channel(f"127.0.0.1:{app.grpc_port}")
    stub = account_pb2_grpc.AccountServiceStub(channel)
    not_found = []
    try:
        sender.start()
        wait_for(lambda: app.totals.fills_applied >= FILLS // 4, timeout_s=30, what="a quarter applied")
        client = redis.Redis.from_url(private_redis.url)
        client.flushall()                                  # the cache emptied under load
        client.close()
        wait_for(lambda: sent[0] >= FILLS // 2, timeout_s=30, what="half sent")
        private_redis.stop()                               # Redis dies ...
        private_redis.start()                              # ... and comes back empty
        sender.join(60)
        assert not sender.is_alive()
        expected = _fold(fills)

        def converged() -> bool:
            got = _positions(read_compacted(settings.common.bootstrap, topics.positions, pb.AccountSnapshot,
                                            "test-cache-check", timeout_s=30).values())
            return got == expected

        wait_for(converged, timeout_s=60, what="portfolio.positions equal to the fold of trades.fills")
        # Over gRPC too, and no account unknown: every one of them had fills.
        for account in ACCOUNTS:
            try:
                snap = stub.GetAccount(pb.GetAccountRequest(account_id=account), timeout=5)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    not_found.append(account)
                    continue
                raise
            got = {(account, p.instrument): D(p.size.value) for p in snap.positions if D(p.size.value or 0) != 0}
            assert got == {k: v for k, v in expected.items() if k[0] == account}, account
        assert not_found == []
        assert app.totals.rejected == 0
        # the loss was found (the flush and the restart count once when no batch ran between them)
        assert app.metrics.rebuilds._value.get() >= rebuilds_at_start + 1
    finally:
        channel.close()
        stopping.set()
        thread.join(15)
        app.close()
        producer.close()


BUSY = "house-busy"
BUSY_FILLS = 600


def _busy_fills() -> list[Fill]:
    return [Fill(f"hb-{n}", BUSY, "BTC-PERP", Side.SELL if n % 3 == 2 else Side.BUY, D("0.001") * (1 + n % 4),
                 D(60000 + n % 7), D(0), 1_700_000_000_000 + n) for n in range(BUSY_FILLS)]


def _snapshot_of(settings, account: str):
    return read_compacted(settings.common.bootstrap, settings.common.topics.positions, pb.AccountSnapshot,
                          "test-busy-check", timeout_s=30).get(account)


def test_a_busy_account_applies_each_fill_id_once_across_flushall_redis_restart_and_a_restart(
        pf_settings, private_redis):
    """An account far busier than the ids an account remembers (16 here) — as the venue's house account is —
    gets its oldest fills republished under their ids (a producer's retry, a liquidation step redone) after a
    FLUSHALL, after a Redis restart and after the service restarted (its index of fill ids gone with the
    process, read back from trades.fills): every copy is ignored, and the account equals the fold of
    trades.fills with each fill id once."""
    settings = dataclasses.replace(pf_settings, common=dataclasses.replace(pf_settings.common,
                                                                           redis_url=private_redis.url),
                                   dedupe_ids=16)
    topics = settings.common.topics
    fills = _busy_fills()
    producer = ProtoProducer(new_producer(settings.common.bootstrap, "test-busy", linger_ms=0), "test")

    def send(batch) -> None:
        for f in batch:
            producer.send(topics.fills, f.account_id, fill_to_proto(f, "test"))
        producer.flush()

    def revision() -> int:
        snap = _snapshot_of(settings, BUSY)
        return int(snap.revision) if snap is not None else 0

    app = PortfolioApp(settings, SystemClock()).start(serve_http_metrics=False)
    thread, stopping = app.run_in_thread()
    try:
        send(fills[:200])
        wait_for(lambda: revision() == 200, timeout_s=60, what="the first 200 fills applied")
        client = redis.Redis.from_url(private_redis.url)
        client.flushall()
        client.close()
        send(fills[0:100:10] + fills[200:300])          # ten copies, 100+ fills of the account old
        wait_for(lambda: revision() >= 300, timeout_s=60, what="fills after the flush applied")
        private_redis.stop()
        private_redis.start()
        send(fills[5:150:10] + fills[300:400])
        wait_for(lambda: revision() >= 400, timeout_s=60, what="fills after the Redis restart applied")
    finally:
        stopping.set()
        thread.join(15)
        app.close()
    app = PortfolioApp(settings, SystemClock()).start(serve_http_metrics=False)   # a new process, no index
    thread, stopping = app.run_in_thread()
    channel = grpc.insecure_channel(f"127.0.0.1:{app.grpc_port}")
    stub = account_pb2_grpc.AccountServiceStub(channel)
    try:
        assert app.wait_ready(60)
        send(fills[1:400:7] + fills[400:])
        sentinel = Fill("hb-end", BUSY, "BTC-PERP", Side.BUY, D("0.001"), D(60000), D(0), 1_800_000_000_000)
        send([sentinel])                                 # once it is applied, every copy before it was read
        wait_for(lambda: "f:hb-end" in (_snapshot_of(settings, BUSY) or pb.AccountSnapshot()).recent_ids,
                 timeout_s=60, what="the sentinel applied")
        snap = _snapshot_of(settings, BUSY)
        assert snap.revision == BUSY_FILLS + 1                          # each fill id once
        expected = _fold(fills + [sentinel])
        assert _positions([snap]) == expected
        served = stub.GetAccount(pb.GetAccountRequest(account_id=BUSY), timeout=5)
        assert served.revision == BUSY_FILLS + 1 and _positions([served]) == expected
        assert app.applier.fill_ids_indexed() >= BUSY_FILLS            # read back from the partition
    finally:
        channel.close()
        stopping.set()
        thread.join(15)
        app.close()
        producer.close()
