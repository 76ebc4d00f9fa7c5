"""MarketDataService over a real gRPC server on port 0, with health and reflection."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from grpc_fuzz import fuzz_every_rpc
from marginflow.api.common.v1 import common_pb2
from marginflow.api.marketdata.v1 import marketdata_pb2, marketdata_pb2_grpc
from marginflow.marketdata.adapters.grpc_api import MarketDataServicer
from marginflow.marketdata.application import MarketDataApp
from marginflow.marketdata.domain.marks import MarkConfig, MarkEngine
from marginflow.marketdata.domain.ticks import RawTick
from marginflow.marketdata.domain.validation import TickValidator
from marginflow.shared import grpcserver
from marginflow.shared.clock import ManualClock
from marginflow.shared.universe import load_universe

T0 = 1_764_000_000_000


class NullSink:
    def publish(self, ticks, marks, now_ms): ...
    def reject(self, tick, code, detail): ...
    def reject_row(self, line, text, reason): ...
    def flush(self): ...


@pytest.fixture
def served():
    universe = load_universe(None, T0)
    app = MarketDataApp(TickValidator(universe), MarkEngine(universe, MarkConfig(interval_ms=0)), NullSink(), ManualClock(T0))
    server, port, health = grpcserver.build_server(
        "marketdata-test", 0, [(marketdata_pb2_grpc.add_MarketDataServiceServicer_to_server,
                                MarketDataServicer(universe, app, stream_poll_s=0.05),
                                "marginflow.marketdata.v1.MarketDataService")])
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield universe, app, channel
    channel.close()
    grpcserver.stop(server, health, 0.5)


def test_list_instruments_with_filters(served):
    universe, _app, channel = served
    stub = marketdata_pb2_grpc.MarketDataServiceStub(channel)
    everything = stub.ListInstruments(marketdata_pb2.ListInstrumentsRequest())
    assert len(everything.instruments) == len(universe.instruments)
    calls = stub.ListInstruments(marketdata_pb2.ListInstrumentsRequest(
        underlying="ETH", kind=common_pb2.INSTRUMENT_KIND_CALL)).instruments
    assert calls and all(i.underlying == "ETH" and i.kind == common_pb2.INSTRUMENT_KIND_CALL and i.strike_usd > 0
                         and i.expiry_ms > T0 for i in calls)


def test_bad_arguments_get_invalid_argument(served):
    _u, _app, channel = served
    stub = marketdata_pb2_grpc.MarketDataServiceStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.ListInstruments(marketdata_pb2.ListInstrumentsRequest(underlying="DOGE"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "DOGE" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.GetMarks(marketdata_pb2.GetMarksRequest(instruments=["NOPE"]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_latest_marks_and_stream(served):
    _u, app, channel = served
    stub = marketdata_pb2_grpc.MarketDataServiceStub(channel)
    stream = stub.StreamMarks(marketdata_pb2.StreamMarksRequest(instruments=["BTC-PERP"]), timeout=10)
    got: list = []

    def reader():
        for mark in stream:
            got.append(mark)
            if len(got) == 3:
                break

    t = threading.Thread(target=reader)
    t.start()
    # Wait for the subscription (with a deadline), then publish.
    deadline = time.monotonic() + 10
    while not app.broadcast.subscribers:
        assert time.monotonic() < deadline, "the stream never subscribed"
        threading.Event().wait(0.02)
    app.process([RawTick(T0, "BTC", 60000.0)])
    for i in range(3):   # one mark per instrument per batch at most
        app.process([RawTick(T0 + i, "BTC-PERP", 60000.0 + i)])
    t.join(10)
    stream.cancel()
    assert [m.mark_price > 0 and m.instrument == "BTC-PERP" for m in got] == [True, True, True]
    latest = stub.GetMarks(marketdata_pb2.GetMarksRequest()).marks
    assert {m.instrument for m in latest} == {"index:BTC", "BTC-PERP"}


def test_health_and_reflection(served):
    _u, _app, channel = served
    health = health_pb2_grpc.HealthStub(channel)
    resp = health.Check(health_pb2.HealthCheckRequest(service="marginflow.marketdata.v1.MarketDataService"))
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in answers[0].list_services_response.service}
    assert "marginflow.marketdata.v1.MarketDataService" in names


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_fuzz_every_rpc_answers_only_documented_codes(served, data):
    universe, app, channel = served
    if not app.marks.latest:
        app.process([RawTick(T0, "BTC", 60000.0), RawTick(T0, "BTC-PERP", 60010.0)])
    symbols = ["BTC-PERP", "ETH-PERP", "index:BTC", "NOPE", *list(universe.instruments)[-2:]]
    fuzz_every_rpc(data, channel, marketdata_pb2.DESCRIPTOR.services_by_name["MarketDataService"],
                   known={"instruments": symbols, "underlying": ["BTC", "ETH", "DOGE"]})
