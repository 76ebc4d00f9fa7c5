"""The supervisor reports each service as it becomes ready (gRPC health), and names a service that
fails to start together with its log."""

from __future__ import annotations

import os
import pathlib
import socket
import sys
import time

from marginflow.supervisor import Program, Supervisor, banner

HERE = pathlib.Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def supervise_until(sup: Supervisor, capsys, text: str, timeout_s: float = 30.0) -> str:
    seen = ""
    deadline = time.monotonic() + timeout_s
    while text not in seen:
        assert time.monotonic() < deadline, f"{text!r} not printed; got:\n{seen}"
        sup.poll()
        seen += capsys.readouterr().out
        time.sleep(0.05)
    return seen


def test_ready_services_are_reported_by_their_grpc_health(tmp_path, capsys):
    port = free_port()
    env = {**os.environ, "FAKE_GRPC_PORT": str(port), "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    sup = Supervisor([Program("fake", "cli_fake_service", grpc_port_var="FAKE_GRPC_PORT", grpc_port=1,
                              metrics_port_var="FAKE_METRICS_PORT", metrics_port=2)],
                     tmp_path, tmp_path / "logs", env, grace_s=5)
    try:
        out = supervise_until(sup, capsys, "all 1 services ready")
    finally:
        sup.stop()
    assert "started fake" in out and "waiting for it to be ready" in out
    assert f"fake ready: gRPC 127.0.0.1:{port} serving after" in out
    assert "status" in out.split("all 1 services ready")[1]


def test_a_service_that_fails_to_start_is_named_with_its_log(tmp_path, capsys):
    env = {**os.environ, "BROKEN_GRPC_PORT": str(free_port())}
    sup = Supervisor([Program("broken", "timeit", ("-n1", "-r1", "import sys; print('cannot bind'); sys.exit(1)"),
                              grpc_port_var="BROKEN_GRPC_PORT", grpc_port=1,
                              metrics_port_var="BROKEN_METRICS_PORT", metrics_port=2)],
                     tmp_path, tmp_path / "logs", env, grace_s=5)
    try:
        out = supervise_until(sup, capsys, "restart 1 in")
    finally:
        sup.stop()
    log = tmp_path / "logs" / "broken.log"
    assert f"broken failed to start (exit code 1); its log: {log}" in out
    assert "|" in out and "cannot bind" in out


def test_a_configuration_error_is_reported_and_not_restarted(tmp_path, capsys):
    env = {**os.environ, "BAD_GRPC_PORT": str(free_port()), "FAKE_EXIT": "2", "FAKE_MESSAGE": "MF_X is required",
           "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    sup = Supervisor([Program("bad", "cli_fake_service", grpc_port_var="BAD_GRPC_PORT", grpc_port=1, metrics_port_var="BAD_M", metrics_port=2)],
                     tmp_path, tmp_path / "logs", env, grace_s=5)
    try:
        out = supervise_until(sup, capsys, "configuration error")
    finally:
        sup.stop()
    assert "bad failed to start (exit code 2)" in out and "MF_X is required" in out
    assert sup.children[0].done


def test_the_banner_points_at_the_cli_and_the_monitoring_urls():
    text = banner([Program("margin", "m", grpc_port_var="MF_MARGIN_GRPC_PORT", grpc_port=50054,
                           metrics_port_var="MF_MARGIN_METRICS_PORT", metrics_port=9104)],
                  {"MF_PROMETHEUS_URL": "http://127.0.0.1:9090", "MF_ALERTMANAGER_URL": "http://127.0.0.1:9093",
                   "MF_MARGIN_GRPC_PORT": "6000"}, pathlib.Path("/tmp/logs"))
    assert "margin       gRPC 127.0.0.1:6000   metrics http://127.0.0.1:9104/metrics" in text
    assert "prometheus   http://127.0.0.1:9090" in text and "alertmanager http://127.0.0.1:9093" in text
    assert "marginflow status" in text and "grpcurl" not in text
