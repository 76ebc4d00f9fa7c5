"""docker-compose.yml stays in step with the native runner (no Docker engine here to run it)."""

from __future__ import annotations

import pathlib

import yaml

from marginflow.supervisor import PROGRAMS, available

ROOT = pathlib.Path(__file__).resolve().parents[3]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_runs_every_service_the_supervisor_runs_with_the_same_ports():
    services = compose()["services"]
    assert {"kafka", "redis"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    for program in PROGRAMS:
        if not available(program):
            continue
        assert program.name in services, f"{program.name} missing from docker-compose.yml"
        svc = services[program.name]
        assert svc["command"] == ["python", "-m", program.module]
        env = svc["environment"]
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092" and env["REDIS_URL"].startswith("redis://redis:")
        if program.grpc_port_var:
            assert env[program.grpc_port_var] == str(program.grpc_port)
            assert env[program.metrics_port_var] == str(program.metrics_port)
            assert f"{program.grpc_port}:{program.grpc_port}" in svc["ports"]
            assert env["MF_BIND_HOST"] == "0.0.0.0"


def test_compose_services_exist_in_the_package():
    for name, svc in compose()["services"].items():
        if name in ("kafka", "redis", "prometheus", "alertmanager"):
            continue
        module = svc["command"][-1]
        assert any(p.module == module and available(p) for p in PROGRAMS), f"{name}: {module} is not a known program"


def test_compose_prometheus_scrapes_every_service_by_name():
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.compose.yml").read_text())
    targets = {t for sc in config["scrape_configs"] for st in sc["static_configs"] for t in st["targets"]}
    for program in PROGRAMS:
        if program.metrics_port_var:
            assert f"{program.name}:{program.metrics_port}" in targets


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
