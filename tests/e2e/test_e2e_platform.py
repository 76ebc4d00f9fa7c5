"""The whole platform under its supervisor, on a replay: ticks → marks → risk parameters, the demo
book → accounts, every service answering over gRPC; then SIGTERM stops every process it started."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import grpc
import pytest

from marginflow.api.account.v1 import account_pb2, account_pb2_grpc
from marginflow.api.marketdata.v1 import marketdata_pb2, marketdata_pb2_grpc
from marginflow.api.risk.v1 import risk_pb2, risk_pb2_grpc
from marginflow.marketdata.domain.simulator import MarketSimulator, SimConfig
from marginflow.shared.universe import load_universe

START_MS = 1_764_000_000_000
HOUR_MS = 3_600_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_replay(path: pathlib.Path) -> int:
    """Two days of one-minute index and perpetual ticks from the simulator."""
    universe = load_universe(None, START_MS)
    sim = MarketSimulator(universe, SimConfig(seed=21, step_ms=60_000, tick_prob_future=0.0, tick_prob_option=0.0),
                          START_MS)
    rows = ["ts,instrument,price,bid,ask,bid_size,ask_size"]
    for tick in sim.next_block(2 * 24 * 60):
        rows.append(f"{tick.event_time_ms},{tick.instrument},{tick.price:.6f},{tick.bid:.6f},{tick.ask:.6f},"
                    f"{tick.bid_size:.4f},{tick.ask_size:.4f}")
    path.write_text("\n".join(rows) + "\n")
    return len(rows) - 1


def wait_for(what: str, probe, timeout_s: float = 120.0):
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = probe()
            if result:
                return result
        except grpc.RpcError as exc:
            last_error = exc
        time.sleep(0.5)
    pytest.fail(f"{what} not seen within {timeout_s}s (last error: {last_error})")


def test_platform_replay_end_to_end(tmp_path, test_env):
    replay = tmp_path / "two_days.csv"
    n_ticks = write_replay(replay)
    ports = {name: free_port() for name in ("md", "md_m", "rp", "rp_m", "pf", "pf_m")}
    run_dir = tmp_path / "run"
    env = {**os.environ, **test_env,
           "MF_RUN_DIR": str(run_dir), "MF_LOG_JSON": "true",
           "MF_MARKETDATA_GRPC_PORT": str(ports["md"]), "MF_MARKETDATA_METRICS_PORT": str(ports["md_m"]),
           "MF_RISKPARAMS_GRPC_PORT": str(ports["rp"]), "MF_RISKPARAMS_METRICS_PORT": str(ports["rp_m"]),
           "MF_PORTFOLIO_GRPC_PORT": str(ports["pf"]), "MF_PORTFOLIO_METRICS_PORT": str(ports["pf_m"]),
           "MF_RISKPARAMS_SAMPLE_INTERVAL_MS": str(HOUR_MS), "MF_RISKPARAMS_APP_ID": test_env["MF_TOPIC_PREFIX"] + "rp",
           "MF_PORTFOLIO_REDIS_PREFIX": test_env["MF_TOPIC_PREFIX"], "MF_PORTFOLIO_GROUP": "pf",
           "MF_DEMO_ACCOUNTS": "300", "MF_UNIVERSE_AS_OF": "2025-11-24"}
    sup = subprocess.Popen([sys.executable, "-m", "marginflow.supervisor", "--replay", str(replay), "--speed", "max",
                            "--only", "marketdata,riskparams,portfolio,demo-book"],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    channels = []
    try:
        def channel(port: int) -> grpc.Channel:
            ch = grpc.insecure_channel(f"127.0.0.1:{port}")
            channels.append(ch)
            return ch

        md = marketdata_pb2_grpc.MarketDataServiceStub(channel(ports["md"]))
        rp = risk_pb2_grpc.RiskServiceStub(channel(ports["rp"]))
        pf = account_pb2_grpc.AccountServiceStub(channel(ports["pf"]))

        marks = wait_for("marks of every perpetual", lambda: (
            lambda r: r if {"BTC-PERP", "ETH-PERP", "SOL-PERP"} <= {m.instrument for m in r.marks} else None)(
                md.GetMarks(marketdata_pb2.GetMarksRequest(), timeout=2)))
        assert all(m.meta.event_time_ms > START_MS for m in marks.marks)

        def params_after_two_days():
            p = rp.GetRiskParams(risk_pb2.GetRiskParamsRequest(), timeout=2)
            ready = {u.underlying for u in p.underlyings if u.returns_observed >= 40}
            return p if ready == {"BTC", "ETH", "SOL"} else None

        params = wait_for("risk parameters from the replay", params_after_two_days)
        assert params.version >= 1
        for u in params.underlyings:
            assert 0.05 < u.sigma_margin < 5.0 and u.sigma_margin >= u.sigma_floor
        assert len(params.correlation) == 9 and len(params.grids) == 3

        accounts = wait_for("the demo book's 300 accounts", lambda: (
            lambda r: r if len(r.accounts) == 300 else None)(
                pf.ListAccounts(account_pb2.ListAccountsRequest(page_size=1000), timeout=5)))
        assert sum(len(a.positions) for a in accounts.accounts) > 300
        pids = {p.stem: int(p.read_text()) for p in (run_dir / "services").glob("*.pid")}
        assert {"marketdata", "riskparams", "portfolio"} <= set(pids)
    finally:
        for ch in channels:
            ch.close()
        sup.send_signal(signal.SIGTERM)
        out, _ = sup.communicate(timeout=60)
    assert sup.returncode == 0, out[-3000:]
    assert "all services stopped" in out
    for name, pid in pids.items():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not list((run_dir / "services").glob("*.pid"))
    assert n_ticks > 10_000
