"""The demo book through Kafka into the service, and the real entry point as a process."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from marginflow.api.account.v1 import account_pb2 as pb
from marginflow.api.account.v1 import account_pb2_grpc
from marginflow.portfolio import demo_book
from portfolio_it_helpers import wait_for


def test_demo_book_is_applied_without_a_rejection_and_counted(start_service, pf_settings, monkeypatch):
    env = {"KAFKA_BOOTSTRAP_SERVERS": pf_settings.common.bootstrap, "REDIS_URL": pf_settings.common.redis_url,
           "MF_TOPIC_PREFIX": pf_settings.common.topic_prefix, "MF_TOPIC_PARTITIONS": "2"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    fills_before = REGISTRY.get_sample_value("marginflow_portfolio_fills_applied_total") or 0.0
    assert demo_book.main(["--accounts", "120", "--seed", "3"]) == 0
    assert demo_book.main(["--accounts", "120", "--seed", "3"]) == 0   # published twice: ids seen, no change
    service = start_service()
    book = demo_book.generate_book(service.app.universe, 120, 3,
                                   pf_settings.common.universe_as_of_ms(int(time.time() * 1000)))
    total = len(book.fills) + len(book.deposits)
    wait_for(lambda: service.app.totals.fills_applied + service.app.totals.events_applied == total
             and service.app.totals.duplicates == total, timeout_s=30, what="demo book applied once")
    assert service.app.totals.rejected == 0
    service.app.refresh_gauges()
    assert REGISTRY.get_sample_value("marginflow_portfolio_accounts") == 120
    assert REGISTRY.get_sample_value("marginflow_portfolio_positions") > 120
    fills_after = REGISTRY.get_sample_value("marginflow_portfolio_fills_applied_total")
    assert fills_after - fills_before == len(book.fills)
    assert REGISTRY.get_sample_value("marginflow_portfolio_duplicates_ignored_total", {"by": "id"}) >= total


def test_entry_point_serves_health_and_stops_cleanly_on_sigterm(pf_settings, test_env):
    env = {**os.environ, **test_env, "MF_PORTFOLIO_REDIS_PREFIX": pf_settings.redis_prefix,
           "MF_PORTFOLIO_GRPC_PORT": "0", "MF_PORTFOLIO_METRICS_PORT": "0", "MF_LOG_JSON": "true"}
    # Port 0 in a child: find the bound port from its start log line.
    proc = subprocess.Popen([sys.executable, "-m", "marginflow.portfolio"], env=env, stderr=subprocess.PIPE,
                            text=True)
    try:
        # Lines are read in a thread, so the deadline holds even if the child prints nothing.
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
        port, seen = None, []
        deadline = time.monotonic() + 30
        while port is None and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            seen.append(line)
            if '"portfolio started"' in line:
                port = json.loads(line)["grpc_port"]
        assert port, "".join(seen)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            # SERVING once the group has assigned the input partitions and they are read to their end
            wait_for(lambda: health.Check(health_pb2.HealthCheckRequest(service="")).status
                     == health_pb2.HealthCheckResponse.SERVING, timeout_s=60, what="SERVING")
            reply = account_pb2_grpc.AccountServiceStub(channel).ListAccounts(pb.ListAccountsRequest())
            assert list(reply.accounts) == []
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_configuration_stops_with_a_message_naming_the_variable(test_env):
    env = {**os.environ, **test_env, "MF_PORTFOLIO_DEDUPE_IDS": "zero"}
    done = subprocess.run([sys.executable, "-m", "marginflow.portfolio"], env=env, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 2 and "MF_PORTFOLIO_DEDUPE_IDS" in done.stderr
