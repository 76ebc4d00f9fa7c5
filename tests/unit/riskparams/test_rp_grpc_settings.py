"""gRPC RiskService on a real server (port 0), and the settings' validation."""

import threading

import grpc
import pytest

from marginflow.api.risk.v1 import risk_pb2, risk_pb2_grpc
from marginflow.riskparams.adapters.codec import to_proto
from marginflow.riskparams.adapters.grpc_api import ParamsHub, RiskServicer, registration
from marginflow.riskparams.settings import RiskParamsSettings
from marginflow.shared import grpcserver
from marginflow.shared.config import ConfigError, load

import rp_helpers as h


@pytest.fixture
def server():
    engine = h.engine()
    engine.ingest_ticks(h.daily_ticks(h.daily_paths(40)))
    hub = ParamsHub()
    servicer = RiskServicer(hub, engine.sigma_history, h.UNDERLYINGS, poll_s=0.05)
    srv, port, health = grpcserver.build_server("riskparams-test", 0, [registration(servicer)])
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield engine, hub, risk_pb2_grpc.RiskServiceStub(channel)
    channel.close()
    hub.close()
    grpcserver.stop(srv, health, 0.5)


def test_get_before_any_version_is_unavailable(server):
    _, _, stub = server
    with pytest.raises(grpc.RpcError) as err:
        stub.GetRiskParams(risk_pb2.GetRiskParamsRequest())
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_get_all_one_and_bad_underlying(server):
    engine, hub, stub = server
    hub.set(to_proto(engine.build_version(1)))
    full = stub.GetRiskParams(risk_pb2.GetRiskParamsRequest())
    assert [u.underlying for u in full.underlyings] == ["BTC", "ETH", "SOL"] and full.version == 1
    sol = stub.GetRiskParams(risk_pb2.GetRiskParamsRequest(underlyings=["SOL"]))
    assert [u.underlying for u in sol.underlyings] == ["SOL"] and [g.underlying for g in sol.grids] == ["SOL"]
    with pytest.raises(grpc.RpcError) as err:
        stub.GetRiskParams(risk_pb2.GetRiskParamsRequest(underlyings=["DOGE"]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "DOGE" in err.value.details()


def test_stream_delivers_new_versions(server):
    engine, hub, stub = server
    hub.set(to_proto(engine.build_version(1)))
    stream = stub.StreamRiskParams(risk_pb2.StreamRiskParamsRequest(), timeout=5)
    first = next(stream)
    engine.ingest_ticks([("BTC-PERP", 70000.0, h.AS_OF_MS + 50 * h.DAY_MS)])
    threading.Timer(0.1, lambda: hub.set(to_proto(engine.build_version(2)))).start()
    second = next(stream)
    stream.cancel()
    assert (first.version, second.version) == (1, 2)


def test_sigma_history_limits_and_filters(server):
    engine, _, stub = server
    resp = stub.GetSigmaHistory(risk_pb2.GetSigmaHistoryRequest(underlying="ETH", limit=5))
    assert len(resp.changes) == 5 and {c.underlying for c in resp.changes} == {"ETH"}
    assert resp.changes[0].sigma_after == pytest.approx(engine.units["ETH"].margin.sigma_margin)
    assert resp.changes[0].cause
    assert len(stub.GetSigmaHistory(risk_pb2.GetSigmaHistoryRequest()).changes) == 100
    for bad in (risk_pb2.GetSigmaHistoryRequest(limit=-1), risk_pb2.GetSigmaHistoryRequest(underlying="X")):
        with pytest.raises(grpc.RpcError) as err:
            stub.GetSigmaHistory(bad)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_settings_defaults_and_errors_name_the_variable():
    s = load(RiskParamsSettings, {})
    assert (s.grpc_port, s.metrics_port, s.lambda_fast, s.lambda_slow, s.apc_buffer) == (50052, 9102, 0.94, 0.97, 0.25)
    with pytest.raises(ConfigError, match="MF_RISKPARAMS_APC_BUFFER"):
        load(RiskParamsSettings, {"MF_RISKPARAMS_APC_BUFFER": "0.1"})
    with pytest.raises(ConfigError, match="MF_RISKPARAMS_TAIL_WEIGHTS"):
        load(RiskParamsSettings, {"MF_RISKPARAMS_TAIL_WEIGHTS": "0.5"})
    with pytest.raises(ConfigError, match="MF_RISKPARAMS_LAMBDA_FAST"):
        load(RiskParamsSettings, {"MF_RISKPARAMS_LAMBDA_FAST": "1.5"})


def test_half_lives_override_lambdas():
    from marginflow.riskparams.application import engine_config
    s = load(RiskParamsSettings, {"MF_RISKPARAMS_SAMPLE_INTERVAL_MS": "60000",
                                  "MF_RISKPARAMS_HALF_LIFE_FAST_SECONDS": "600"})
    cfg = engine_config(s, h.UNDERLYINGS)
    assert cfg.lambda_fast == pytest.approx(0.5 ** (1 / 10))     # 10 one-minute intervals
    assert cfg.lambda_slow == 0.97
