"""docker-compose.yml stays in step with the native runner (no Docker engine here to run it), and the
supervisor's PROGRAMS is the one table of ports: compose, both Prometheus configs, the services' own
settings and the README's "where to look" table agree with it."""

from __future__ import annotations

import pathlib

import pytest
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
        if name in ("kafka", "redis", "prometheus", "alertmanager", "grafana", "pki"):
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


# ---- PROGRAMS is the one table of ports -----------------------------------------------------------------

SERVED = [p for p in PROGRAMS if p.grpc_port_var]


def test_programs_have_distinct_ports():
    ports = [p.grpc_port for p in SERVED] + [p.metrics_port for p in SERVED]
    assert len(ports) == len(set(ports))
    assert all(p.grpc_port and p.metrics_port and p.metrics_port_var for p in SERVED)


def test_the_services_own_settings_default_to_the_programs_ports():
    import dataclasses
    import importlib

    from marginflow.shared.config import describe

    for program in SERVED:
        if not available(program):
            continue
        module = importlib.import_module(f"{program.module}.settings")
        defaults: dict[str, str] = {}
        for value in vars(module).values():
            if isinstance(value, type) and dataclasses.is_dataclass(value) and value.__module__ == module.__name__:
                defaults.update({var: default for var, default, _doc in describe(value)})
        assert defaults.get(program.grpc_port_var) == str(program.grpc_port), program.name
        assert defaults.get(program.metrics_port_var) == str(program.metrics_port), program.name


def scrape_targets(config_file: str) -> dict[str, str]:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / config_file).read_text())
    return {st["labels"]["service"]: t for sc in config["scrape_configs"] for st in sc["static_configs"]
            for t in st["targets"]}


@pytest.mark.parametrize("config_file,host", [("prometheus.yml", None), ("prometheus.compose.yml", "")])
def test_both_prometheus_configs_scrape_every_program_at_its_metrics_port(config_file, host):
    targets = scrape_targets(config_file)
    expected = {p.name: f"{'127.0.0.1' if host is None else p.name}:{p.metrics_port}" for p in SERVED}
    assert targets == expected


def test_compose_ports_are_the_programs_ports():
    services = compose()["services"]
    for program in SERVED:
        if program.name not in services:
            assert not available(program), f"{program.name} missing from docker-compose.yml"
            continue
        svc = services[program.name]
        assert svc["ports"] == [f"{program.grpc_port}:{program.grpc_port}",
                                f"{program.metrics_port}:{program.metrics_port}"]


def readme_where_to_look() -> dict[str, str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### What `make run` shows, and where", 1)[1].split("\n\n", 2)[2]
    rows = {}
    for line in section.splitlines():
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1]
    return rows


def test_the_readme_where_to_look_table_has_the_programs_ports():
    rows = readme_where_to_look()
    for program in SERVED:
        if program.name not in rows:
            assert not available(program), f"{program.name} missing from the README's 'where to look' table"
            continue
        assert rows[program.name] == (f"gRPC `127.0.0.1:{program.grpc_port}`, metrics "
                                      f"`http://127.0.0.1:{program.metrics_port}/metrics`"), program.name
    assert "Prometheus" in rows and "Alertmanager" in rows


def test_docker_compose_itself_accepts_the_file():
    import subprocess

    res = subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


# ---- Grafana ------------------------------------------------------------------------------------------------

GRAFANA = ROOT / "deploy" / "grafana"


def dashboard() -> dict:
    import json

    return json.loads((GRAFANA / "dashboards" / "marginflow.json").read_text())


def test_grafana_in_compose_with_the_provisioned_datasource_and_dashboard():
    grafana = compose()["services"]["grafana"]
    assert grafana["image"].startswith("grafana/grafana:")
    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"]}
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert mounts["./deploy/grafana/dashboards"] == "/var/lib/grafana/dashboards"
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "marginflow.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    assert compose()["services"]["prometheus"]["ports"] == ["9090:9090"]
    uids = {t["datasource"]["uid"] for p in dashboard()["panels"] for t in p.get("targets", [])}
    assert uids == {datasource["uid"]}


def test_the_dashboard_covers_every_area():
    rows = [p["title"] for p in dashboard()["panels"] if p["type"] == "row"]
    assert rows == ["Platform", "Market data", "Risk parameters", "Margin", "Portfolio", "Liquidation", "Kafka"]
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids))
    assert all(p.get("targets") for p in dashboard()["panels"] if p["type"] != "row")
