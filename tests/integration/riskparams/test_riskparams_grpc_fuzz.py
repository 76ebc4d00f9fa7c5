"""RiskService on a real gRPC server (port 0) under fuzzed requests: only documented status codes,
before the first version (UNAVAILABLE) and with a version built from a month of daily ticks."""

from __future__ import annotations

import math

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grpc_fuzz import fuzz_every_rpc
from marginflow.api.risk.v1 import risk_pb2
from marginflow.riskparams.adapters.codec import to_proto
from marginflow.riskparams.adapters.grpc_api import ParamsHub, RiskServicer, registration
from marginflow.riskparams.application import EngineConfig, Market, RiskEngine
from marginflow.shared import grpcserver
from marginflow.shared.universe import load_universe

T0 = 1_704_067_200_000
DAY_MS = 86_400_000
UNDERLYINGS = ("BTC", "ETH", "SOL")
SERVICE = risk_pb2.DESCRIPTOR.services_by_name["RiskService"]


@pytest.fixture(scope="module")
def engine() -> RiskEngine:
    e = RiskEngine(EngineConfig(underlyings=UNDERLYINGS), Market.from_universe(load_universe(None, T0), UNDERLYINGS))
    start = {"BTC-PERP": 60000.0, "ETH-PERP": 3000.0, "SOL-PERP": 150.0}
    e.ingest_ticks([(sym, p * math.exp(0.02 * math.sin(d + i)), T0 + d * DAY_MS + i)
                    for d in range(30) for i, (sym, p) in enumerate(start.items())])
    return e


@pytest.fixture(params=["no version yet", "a version"])
def served(request, engine):
    hub = ParamsHub()
    if request.param == "a version":
        hub.set(to_proto(engine.build_version(T0 + 31 * DAY_MS, force=True)))
    server, port, health = grpcserver.build_server(
        "riskparams-test", 0, [registration(RiskServicer(hub, engine.sigma_history, UNDERLYINGS, poll_s=0.05))])
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield channel
    channel.close()
    hub.close()
    grpcserver.stop(server, health, 0.5)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_fuzz_every_rpc_answers_only_documented_codes(served, data):
    fuzz_every_rpc(data, served, SERVICE, known={"underlyings": [*UNDERLYINGS, "DOGE"],
                                                 "underlying": [*UNDERLYINGS, "DOGE"]})
