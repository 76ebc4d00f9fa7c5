"""MarginService over gRPC on port 0: GetMargin, WhatIf, Explain, StreamMargin; NOT_FOUND and INVALID_ARGUMENT."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from decimal import Decimal

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from grpc_health.v1 import health_pb2, health_pb2_grpc

from marginflow.api.common.v1 import common_pb2
from marginflow.api.margin.v1 import margin_pb2 as pb
from marginflow.api.margin.v1 import margin_pb2_grpc

from grpc_fuzz import DOCUMENTED, call, fuzz_every_rpc
from margin_it_helpers import first_matching, mark, risk_params, snapshot, wait_for


@pytest.fixture
def served(mg_settings, publish, start_margin):
    topics = mg_settings.common.topics
    publish(topics.risk_params, "current", risk_params())
    publish(topics.marks, "BTC-PERP", mark("BTC-PERP", "BTC", 60000.0))
    publish(topics.marks, "ETH-PERP", mark("ETH-PERP", "ETH", 3000.0))
    publish(topics.positions, "a", snapshot("a", [("BTC-PERP", "1", "60000")], "10000"))
    app = start_margin(grpc=True)
    wait_for(lambda: "a" in app.engine.row_of and app.engine.version == 1)
    channel = grpc.insecure_channel(f"127.0.0.1:{app.grpc_port}")
    yield app, margin_pb2_grpc.MarginServiceStub(channel), channel
    channel.close()


def test_get_margin_what_if_explain(served):
    app, stub, channel = served
    state = stub.GetMargin(pb.GetMarginRequest(account_id="a"), timeout=5)
    assert state.im_usd.value == "9006.00" and state.mm_usd.value == "4503.00"
    assert state.equity_usd.value == "10000.00" and state.state == pb.HEALTH_STATE_HEALTHY

    trade = pb.TradeDelta(instrument="BTC-PERP", size=common_pb2.Decimal(value="1"))
    res = stub.WhatIf(pb.WhatIfRequest(account_id="a", trades=[trade]), timeout=5)
    assert res.before.im_usd.value == "9006.00"
    assert res.after.im_usd.value == "18012.00"          # 2 × (9,000 + 6)
    assert res.after.state == pb.HEALTH_STATE_MARGIN_CALL

    ex = stub.Explain(pb.ExplainRequest(account_id="a"), timeout=5)
    assert ex.binding_component == "es"
    assert ex.positions[0].instrument == "BTC-PERP"
    # MM moves with the price (0.07505 × p): (10,000 − 60,000)/(4,503/60,000 − 1) = 50,000/0.92495 = 54,056.9761
    assert Decimal(ex.positions[0].liquidation_price_usd.value) == Decimal("54056.9761")
    assert ex.underlyings[0].underlying == "BTC" and ex.underlyings[0].grid_margin_usd.value == "6000.00"
    assert 0 <= ex.worst_historical_scenario < 100

    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_errors_not_found_and_invalid_argument(served):
    _, stub, _ = served
    with pytest.raises(grpc.RpcError) as err:
        stub.GetMargin(pb.GetMarginRequest(account_id="nobody"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        stub.Explain(pb.ExplainRequest(account_id=""), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for instrument, size, needle in (("DOGE-PERP", "1", "instrument"), ("BTC-PERP", "abc", "size"),
                                     ("BTC-PERP", "0", "size"), ("BTC-PERP", "NaN", "size")):
        trade = pb.TradeDelta(instrument=instrument, size=common_pb2.Decimal(value=size))
        with pytest.raises(grpc.RpcError) as err:
            stub.WhatIf(pb.WhatIfRequest(account_id="a", trades=[trade]), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert needle in err.value.details()


def test_stream_margin_sends_current_then_changes(served, publish, mg_settings):
    app, stub, _ = served
    stream = stub.StreamMargin(pb.StreamMarginRequest(account_ids=["a"]), timeout=20)
    first = next(stream)          # the current state comes first, by contract
    assert first.account_id == "a" and first.state == pb.HEALTH_STATE_HEALTHY
    # 0.07 % short of IM is inside the immediate band: published once it has held for the window
    publish(mg_settings.common.topics.marks, "BTC-PERP", mark("BTC-PERP", "BTC", 59000.0))
    # Then every published change; the one the mark causes (equity 9,000 < IM 9,006) comes within
    # the call's deadline, whatever was republished before it.
    changed = first_matching(stream, lambda s: s.state != pb.HEALTH_STATE_HEALTHY)
    assert changed.account_id == "a"
    assert changed.state == pb.HEALTH_STATE_MARGIN_CALL and changed.equity_usd.value == "9000.00"
    stream.cancel()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_process_bad_config_exits_2_not_serving_until_ready_and_sigterm_stops_it(run_module, test_env, mg_settings,
                                                                                 publish):
    bad = run_module("marginflow.margin", extra_env={"MF_MARGIN_MM_FACTOR": "2"}, timeout=60)
    assert bad.returncode == 2 and "MF_MARGIN_MM_FACTOR" in bad.stderr
    port = _free_port()
    env = {**os.environ, **test_env, "MF_MARGIN_GRPC_PORT": str(port), "MF_MARGIN_METRICS_PORT": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "marginflow.margin"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=30)
        health = health_pb2_grpc.HealthStub(channel)
        # No risk parameters on the topic: nothing can be margined, so the instance is not ready.
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
            health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as refused:
            margin_pb2_grpc.MarginServiceStub(channel).GetMargin(pb.GetMarginRequest(account_id="a"), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        publish(mg_settings.common.topics.risk_params, "current", risk_params())
        wait_for(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=5).status ==
                 health_pb2.HealthCheckResponse.SERVING, timeout_s=30)
        channel.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_fuzz_every_rpc_answers_only_documented_codes(served, data):
    _app, _stub, channel = served
    fuzz_every_rpc(data, channel, pb.DESCRIPTOR.services_by_name["MarginService"],
                   known={"account_id": ["a", "nobody"], "account_ids": ["a", "nobody"],
                          "instrument": ["BTC-PERP", "ETH-PERP"],
                          "marks": ["BTC-PERP", "ETH-PERP", "index:BTC", "index:ETH"]})


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(sizes=st.lists(st.one_of(st.decimals(allow_nan=True), st.sampled_from(["1e11", "-1e11", "1e-300", "0.001"])),
                      min_size=1, max_size=5),
       prices=st.lists(st.one_of(st.none(), st.decimals(allow_nan=True), st.sampled_from(["1e12", "1e-300", "0.01"])),
                       min_size=5, max_size=5))
def test_fuzz_what_if_of_a_known_account_answers_only_documented_codes(served, sizes, prices):
    # The generic fuzz rarely builds a whole valid trade list; here every trade names a listed
    # instrument of the known account, so sizes and prices reach the engine and the core.
    _app, _stub, channel = served
    trades = [pb.TradeDelta(instrument=("BTC-PERP", "ETH-PERP")[i % 2], size=common_pb2.Decimal(value=str(s)),
                            price=common_pb2.Decimal(value="" if p is None else str(p)))
              for i, (s, p) in enumerate(zip(sizes, prices))]
    method = pb.DESCRIPTOR.services_by_name["MarginService"].methods_by_name["WhatIf"]
    code = call(channel, method, pb.WhatIfRequest(account_id="a", trades=trades))
    assert code in DOCUMENTED, f"WhatIf answered {code.name} to {trades}"


def test_recheck_margins_many_accounts_at_once_and_refuses_bad_arguments(served):
    _, stub, _ = served
    res = stub.Recheck(pb.RecheckRequest(account_ids=["a", "nobody"], reliefs=True), timeout=5)
    (item,) = res.accounts
    assert list(res.unknown_account_ids) == ["nobody"]
    state = stub.GetMargin(pb.GetMarginRequest(account_id="a"), timeout=5)
    for field in ("equity_usd", "im_usd", "mm_usd", "cross_im_usd"):
        assert getattr(item.margin, field).value == getattr(state, field).value
    assert (item.margin.state, item.margin.account_revision, item.margin.risk_params_version) == \
        (state.state, state.account_revision, state.risk_params_version)
    (pos,) = item.positions
    assert (pos.instrument, pos.size.value, pos.isolated) == ("BTC-PERP", "1.0", False)
    assert pos.im_relief_usd.value == "9006.00"      # the only cross position: closing it frees the whole IM
    plain = stub.Recheck(pb.RecheckRequest(account_ids=["a"]), timeout=5)
    assert plain.accounts[0].positions[0].im_relief_usd.value == ""
    for ids, needle in (([], "1..1000"), (["a", "a"], "distinct"), (["a", ""], "account_ids[1]"),
                        (["x" * 129], "account_ids[0]"), ([f"x{i}" for i in range(1001)], "1..1000")):
        with pytest.raises(grpc.RpcError) as err:
            stub.Recheck(pb.RecheckRequest(account_ids=ids), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert needle in err.value.details()
