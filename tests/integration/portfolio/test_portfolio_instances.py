"""Portfolio instances in their consumer group: a restarted instance never answers from the cache as
it was before the kill (UNAVAILABLE and NOT_SERVING until its partitions are read to their end
offsets at assignment), and of two instances the survivor of a kill -9 owns every partition and
serves every account with every fill applied."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from decimal import Decimal as D

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from marginflow.api.account.v1 import account_pb2 as pb
from marginflow.api.account.v1 import account_pb2_grpc
from marginflow.portfolio.domain.model import Deposit, Fill, Side
from marginflow.shared.kafka import key_partition

from portfolio_it_helpers import wait_for

ACCOUNTS = [f"inst-{i:03d}" for i in range(40)]
LOT = "0.001"            # BTC-PERP contracts per lot
BUSY_FILLS = 150         # more than the 64 ids an account remembers by default


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fill(account: str, n: int) -> Fill:
    return Fill(f"{account}-f{n}", account, "BTC-PERP", Side.BUY, D(LOT), D("60000"), D("0"), 1_700_000_000_000 + n)


def _spawn(env: dict[str, str], port: int) -> subprocess.Popen:
    # A fixed gRPC port: the instance's static group membership id is derived from it, as in `make run`.
    return subprocess.Popen([sys.executable, "-m", "marginflow.portfolio"],
                            env={**env, "MF_PORTFOLIO_GRPC_PORT": str(port), "MF_PORTFOLIO_METRICS_PORT": "0"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _env(test_env, pf_settings) -> dict[str, str]:
    return {**os.environ, **test_env, "MF_PORTFOLIO_REDIS_PREFIX": pf_settings.redis_prefix,
            "MF_PORTFOLIO_POLL_TIMEOUT_MS": "50", "MF_PORTFOLIO_MARGIN_ADDRESS": "none"}


def _revision(stub, account: str) -> int | None:
    """The account's revision as served, or None when the call is refused (UNAVAILABLE, not up)."""
    try:
        return int(stub.GetAccount(pb.GetAccountRequest(account_id=account), timeout=5).revision)
    except grpc.RpcError as exc:
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return None
        raise


def _serving(channel) -> bool:
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
    except grpc.RpcError:
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def test_a_restarted_instance_never_serves_the_cache_it_left_behind(pf_settings, publish, test_env):
    env = _env(test_env, pf_settings)
    port = _free_port()
    account = ACCOUNTS[0]
    publish(Deposit(f"{account}-d", account, "USDC", D(100000), 1))
    proc = _spawn(env, port)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = account_pb2_grpc.AccountServiceStub(channel)
    try:
        wait_for(lambda: _revision(stub, account) == 1, timeout_s=60, what="the deposit served")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # While it is down: many fills, so that reading them takes the restarted instance a while.
        fills = [_fill(account, n) for n in range(3000)]
        publish(*fills)
        expected = 1 + len(fills)
        proc = _spawn(env, port)
        answers: list[int] = []
        stale_while_serving: list[int] = []

        def caught_up() -> bool:
            serving = _serving(channel)
            revision = _revision(stub, account)
            if revision is not None:
                answers.append(revision)
            if serving and revision is not None and revision != expected:
                stale_while_serving.append(revision)
            return serving and revision == expected

        wait_for(caught_up, timeout_s=90, what="the restarted instance serving every fill")
        # Every answer it gave had every fill published before it took its partitions.
        assert [r for r in answers if r != expected] == []
        assert stale_while_serving == []
    finally:
        channel.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_survivor_of_two_instances_owns_every_partition_and_serves_every_account(
        pf_settings, publish, test_env, start_service):
    env = _env(test_env, pf_settings)
    assert {key_partition(a.encode(), 2) for a in ACCOUNTS} == {0, 1}   # both partitions hold accounts
    publish(*[Deposit(f"{a}-d", a, "USDC", D(100000), 1) for a in ACCOUNTS])
    a = start_service()
    port_b = _free_port()
    b = _spawn(env, port_b)
    channel = grpc.insecure_channel(f"127.0.0.1:{a.app.grpc_port}")
    stub = account_pb2_grpc.AccountServiceStub(channel)
    try:
        # The group splits the two partitions between the instances.
        wait_for(lambda: len(a.app.source.assigned_partitions()) == 1 and a.app.host.ready, timeout_s=60,
                 what="the two partitions split between the instances")
        mine = a.app.source.assigned_partitions()
        theirs = [x for x in ACCOUNTS if key_partition(x.encode(), 2) not in mine]
        # A fill for every account, applied by whichever instance owns it; A answers for all of them.
        publish(*[_fill(x, 0) for x in ACCOUNTS])
        wait_for(lambda: all(_revision(stub, x) == 2 for x in ACCOUNTS), timeout_s=60,
                 what="every account served by A after its first fill")
        # One of B's accounts is busy: more fills than the ids an account remembers (MF_PORTFOLIO_DEDUPE_IDS).
        busy = theirs[0]
        extra = [_fill(busy, n) for n in range(2, 2 + BUSY_FILLS)]
        publish(*extra)
        wait_for(lambda: _revision(stub, busy) == 2 + BUSY_FILLS, timeout_s=60, what="B applying the busy account")
        b.send_signal(signal.SIGKILL)
        b.wait(10)
        # Fills for B's accounts after its death: only A can apply them, once it owns B's partition; and the
        # busy account's oldest fills republished under their ids (a producer's retry), beyond that window:
        # A never consumed them, it finds them in the partition it takes over.
        publish(*[_fill(x, 1) for x in theirs], *extra[:10])
        expected = {x: (3 if x in theirs else 2) + (BUSY_FILLS if x == busy else 0) for x in ACCOUNTS}
        wait_for(lambda: a.app.source.assigned_partitions() == {0, 1} and a.app.host.ready
                 and all(_revision(stub, x) == expected[x] for x in ACCOUNTS),
                 timeout_s=60, what="A owning both partitions and serving every account")
        # a sentinel after the republished copies: once it is applied, they have been read
        publish(_fill(busy, 10_000))
        wait_for(lambda: _revision(stub, busy) != expected[busy], timeout_s=60, what="the sentinel applied")
        assert _revision(stub, busy) == expected[busy] + 1          # each fill id once
        snap = stub.GetAccount(pb.GetAccountRequest(account_id=busy), timeout=5)
        assert {p.instrument: D(p.size.value) for p in snap.positions} == {"BTC-PERP": D(LOT) * (BUSY_FILLS + 3)}   # fills 0, 1, the sentinel and the extra
        snap = stub.GetAccount(pb.GetAccountRequest(account_id=theirs[1]), timeout=5)
        assert {p.instrument: D(p.size.value) for p in snap.positions} == {"BTC-PERP": D(LOT) * 2}
    finally:
        channel.close()
        if b.poll() is None:
            b.kill()
            b.wait()
