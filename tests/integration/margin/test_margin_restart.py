"""A restarted margin service says what a from-scratch computation says: ``kill -9`` with accounts
whose compacted history holds older, under-collateralised revisions; after the restart no margin
call is published for an account whose inputs did not change, and the service serves again."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from marginflow.api.margin.v1 import margin_pb2 as pb
from marginflow.api.margin.v1 import margin_pb2_grpc

from margin_it_helpers import mark, risk_params, snapshot, wait_for

ACCOUNTS = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(test_env, port: int, extra: dict[str, str]) -> subprocess.Popen:
    env = {**os.environ, **test_env, "MF_MARGIN_GRPC_PORT": str(port), "MF_MARGIN_METRICS_PORT": "0",
           "MF_MARGIN_MODEL_REFRESH_MS": "0", "MF_MARGIN_RECENTER_PRICE_CHANGE": "0",
           "MF_MARGIN_RECENTER_VOL_CHANGE": "0", "MF_MARGIN_EVALUATE_INTERVAL_MS": "50", **extra}
    return subprocess.Popen([sys.executable, "-m", "marginflow.margin"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2).status
        except grpc.RpcError:
            return False
    return status == health_pb2.HealthCheckResponse.SERVING


def _calls(consume_all, bootstrap: str, topic: str) -> list[pb.MarginCall]:
    return [pb.MarginCall.FromString(r.value) for r in consume_all(bootstrap, topic, timeout_s=10)]


# With the concentration add-on on, the restarted instance also reads portfolio.open_interest (empty here:
# no account holds a share above the threshold) and builds its model again before it serves.
@pytest.mark.parametrize("extra", [{}, {"MF_MARGIN_CONCENTRATION_RATE": "0.1"}], ids=["plain", "concentration"])
def test_kill_9_and_restart_publishes_no_call_for_unchanged_accounts(mg_settings, publish, test_env, consume_all,
                                                                       extra):
    topics = mg_settings.common.topics
    bootstrap = mg_settings.common.bootstrap
    publish(topics.risk_params, "current", risk_params())
    publish(topics.marks, "BTC-PERP", mark("BTC-PERP", "BTC", 60000.0))
    for i in range(ACCOUNTS):
        account = f"r{i:03d}"
        # The compacted topic still holds the first revision: the position before the collateral
        # arrived (bankrupt at any mark). Only the newest revision is the account's state.
        publish(topics.positions, account, snapshot(account, [("BTC-PERP", "1", "60000")], "0", revision=1))
        usdc = "20000" if i % 3 else "7000"     # every third account in margin call (MM 4,503 ≤ 7,000 < IM 9,006)
        publish(topics.positions, account, snapshot(account, [("BTC-PERP", "1", "60000")], usdc, revision=2))
    port = _free_port()
    first = _start(test_env, port, extra)
    try:
        wait_for(lambda: _serving(port), timeout_s=60)
        calls = _calls(consume_all, bootstrap, topics.margin_calls)
        # From scratch: the margin-call accounts are called once each, nobody is below maintenance.
        assert sorted(c.account_id for c in calls) == sorted(f"r{i:03d}" for i in range(0, ACCOUNTS, 3))
        assert {c.state for c in calls} == {pb.HEALTH_STATE_MARGIN_CALL}
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed_at = time.monotonic()
        second = _start(test_env, port, extra)
        try:
            wait_for(lambda: _serving(port), timeout_s=60)
            restart_seconds = time.monotonic() - killed_at
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = margin_pb2_grpc.MarginServiceStub(channel)
                state = stub.GetMargin(pb.GetMarginRequest(account_id="r001"), timeout=5)
                assert state.state == pb.HEALTH_STATE_HEALTHY and state.account_revision == 2
                # A fresh mark at the same price: the restarted instance has evaluated every account on it.
                publish(topics.marks, "BTC-PERP", mark("BTC-PERP", "BTC", 60000.0))
                newest = int(time.time() * 1000) - 1000
                wait_for(lambda: stub.GetMargin(pb.GetMarginRequest(account_id="r002"), timeout=5).marks_time_ms
                         >= newest, timeout_s=20)
            after = _calls(consume_all, bootstrap, topics.margin_calls)
            assert len(after) == len(calls), [(c.account_id, c.state) for c in after[len(calls):]]
            print(f"margin restart after kill -9: serving again in {restart_seconds:.1f} s")
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(20) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
