"""Two margin instances in one consumer group: either answers for any account (the other owns half
of them: the call is forwarded), and when one is killed the other takes every partition and serves
every account."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import grpc
import pytest

from marginflow.api.margin.v1 import margin_pb2 as pb
from marginflow.api.margin.v1 import margin_pb2_grpc
from marginflow.shared.kafka import key_partition

from margin_it_helpers import mark, risk_params, snapshot, wait_for

ACCOUNTS = [f"two-{i:03d}" for i in range(60)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _all_answer(stub) -> bool:
    for account in ACCOUNTS:
        try:
            state = stub.GetMargin(pb.GetMarginRequest(account_id=account), timeout=5)
        except grpc.RpcError:
            return False
        if state.account_id != account:
            return False
    return True


def test_any_instance_answers_for_any_account_and_one_survives_the_other(mg_settings, publish, test_env,
                                                                          start_margin):
    topics = mg_settings.common.topics
    publish(topics.risk_params, "current", risk_params())
    publish(topics.marks, "BTC-PERP", mark("BTC-PERP", "BTC", 60000.0))
    for account in ACCOUNTS:
        publish(topics.positions, account, snapshot(account, [("BTC-PERP", "1", "60000")], "20000"))
    assert {key_partition(a.encode(), 2) for a in ACCOUNTS} == {0, 1}   # both partitions hold accounts
    a = start_margin(grpc=True)
    port_b = _free_port()
    env = {**os.environ, **test_env, "MF_MARGIN_GRPC_PORT": str(port_b), "MF_MARGIN_METRICS_PORT": "0",
           "MF_MARGIN_MODEL_REFRESH_MS": "0", "MF_MARGIN_RECENTER_PRICE_CHANGE": "0",
           "MF_MARGIN_RECENTER_VOL_CHANGE": "0"}
    b = subprocess.Popen([sys.executable, "-m", "marginflow.margin"], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        # The group splits the two partitions: each instance owns one and holds only its accounts.
        def split() -> bool:
            owned = set(a.rebalance.assigned)
            held = set(a.engine.row_of)
            return (len(owned) == 1 and a.engine.ready and bool(held)
                    and all(key_partition(x.encode(), 2) in owned for x in held))

        wait_for(split, timeout_s=60)
        owned_by_a = {x for x in ACCOUNTS if x in a.engine.row_of}
        assert 0 < len(owned_by_a) < len(ACCOUNTS)
        with grpc.insecure_channel(f"127.0.0.1:{a.grpc_port}") as ca, \
                grpc.insecure_channel(f"127.0.0.1:{port_b}") as cb:
            stub_a, stub_b = margin_pb2_grpc.MarginServiceStub(ca), margin_pb2_grpc.MarginServiceStub(cb)
            wait_for(lambda: _all_answer(stub_a) and _all_answer(stub_b), timeout_s=30)
            ex = stub_b.Explain(pb.ExplainRequest(account_id=sorted(owned_by_a)[0]), timeout=5)   # forwarded
            assert ex.margin.account_id == sorted(owned_by_a)[0]
            with pytest.raises(grpc.RpcError) as unknown:   # no instance holds it: asked once, then NOT_FOUND
                stub_a.GetMargin(pb.GetMarginRequest(account_id="nobody"), timeout=5)
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
            b.send_signal(signal.SIGKILL)
            b.wait(10)
            # The survivor takes both partitions and serves every account by itself.
            wait_for(lambda: len(a.rebalance.assigned) == 2 and a.engine.ready and _all_answer(stub_a),
                     timeout_s=30)
            assert set(ACCOUNTS) <= set(a.engine.row_of)
    finally:
        if b.poll() is None:
            b.kill()
            b.wait()
