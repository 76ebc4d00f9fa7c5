"""``marginflow signals``: the riskparams signals as tables and JSON, from a RiskService on a real
gRPC server (port 0) serving an engine's signals."""

from __future__ import annotations

import json
import math

import pytest

from marginflow.cli import main
from marginflow.riskparams.adapters.codec import to_proto
from marginflow.riskparams.adapters.grpc_api import ParamsHub, RiskServicer, registration
from marginflow.riskparams.application import EngineConfig, Market, RiskEngine
from marginflow.shared import grpcserver
from marginflow.shared.depthcurve import DepthCurve
from marginflow.shared.universe import load_universe

T0 = 1_704_067_200_000
DAY_MS = 86_400_000
UNDERLYINGS = ("BTC", "ETH", "SOL")


@pytest.fixture(scope="module")
def port():
    universe = load_universe(None, T0)
    e = RiskEngine(EngineConfig(underlyings=UNDERLYINGS, signal_tenors_days=(7.0, 30.0)),
                   Market.from_universe(universe, UNDERLYINGS))
    start = {"BTC-PERP": 60000.0, "ETH-PERP": 3000.0, "SOL-PERP": 150.0}
    e.ingest_ticks([(sym, p * math.exp(0.02 * math.sin(d + i)), T0 + d * DAY_MS + i)
                    for d in range(5) for i, (sym, p) in enumerate(start.items())])
    t = e.last_event_ms
    e.ingest_marks([("BTC-PERP", "BTC", 60000.0, 0.0, t, DepthCurve((10.0, 50.0), (4.0, 10.0), (5.0, 12.0)))])
    e.ingest_marks([(i.symbol, "BTC", 60000.0, 0.6 + 0.3 * max(0.0, 1 - i.strike_usd / 60000.0), t)
                    for i in universe.instruments.values() if i.is_option and i.underlying == "BTC"])
    hub = ParamsHub()
    hub.set(to_proto(e.build_version(t + DAY_MS, force=True)))
    snapshot = tuple(e.signals())
    server, port, health = grpcserver.build_server(
        "riskparams-cli-test", 0, [registration(RiskServicer(hub, e.sigma_history, UNDERLYINGS, signals=lambda: snapshot))])
    yield port
    hub.close()
    grpcserver.stop(server, health, 0.5)


def run(capsys, monkeypatch, port, *argv: str) -> tuple[int, str, str]:
    monkeypatch.setenv("MF_RISKPARAMS_GRPC_PORT", str(port))
    monkeypatch.setenv("COLUMNS", "250")
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_signals_json_carries_every_underlying_with_tenors_depth_and_history(capsys, monkeypatch, port):
    code, stdout, err = run(capsys, monkeypatch, port, "signals", "--json", "--history", "2")
    assert code == 0, err
    data = json.loads(stdout)
    by = {u["underlying"]: u for u in data["underlyings"]}
    assert set(by) == set(UNDERLYINGS)
    btc = by["BTC"]
    assert [t["tenor_days"] for t in btc["tenors"]] == [7.0, 30.0]
    assert btc["tenors"][1]["atm_vol"] == pytest.approx(0.6) and btc["tenors"][1]["skew_25d"] > 0
    assert btc["depth_contracts"] == 10.0 and btc["depth_index"] == 1.0
    assert 1 <= len(btc["sigma_history"]) <= 2


def test_signals_table_shows_the_smile_and_depth(capsys, monkeypatch, port):
    code, stdout, err = run(capsys, monkeypatch, port, "signals", "btc")
    assert code == 0, err
    for text in ("signals", "smile per tenor", "smile per listed expiry", "σ_m recent changes", "BTC-PERP",
                 "30 d", "60.00 %", "skew"):
        assert text in stdout, text
    assert "ETH" not in stdout


def test_an_unknown_underlying_exits_2_with_the_services_reason(capsys, monkeypatch, port):
    code, stdout, err = run(capsys, monkeypatch, port, "signals", "DOGE")
    assert code == 2 and "invalid argument" in err and "DOGE" in err and stdout == ""
