"""Monitoring with the real tools: the services' /metrics pass `promtool check metrics`, every metric the
alert rules and the Grafana dashboard query is one the running services expose, a crashed service fires
its alert in a real Prometheus, and deploy/local/monitoring.sh starts and stops Prometheus + Alertmanager."""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import yaml

from cli_it_helpers import free_port

ROOT = pathlib.Path(__file__).resolve().parents[3]
SERVED = ("marketdata", "riskparams", "portfolio", "margin", "liquidation")


def http_get(url: str, timeout_s: float = 2.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as reply:
        return reply.read().decode()


def poll(what: str, probe, timeout_s: float = 60.0, interval_s: float = 0.25):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except (OSError, urllib.error.URLError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval_s)
    raise AssertionError(f"{what} not seen within {timeout_s}s (last: {last!r})")


def metrics_text(platform, service: str) -> str:
    return http_get(f"http://127.0.0.1:{platform.env[f'MF_{service.upper()}_METRICS_PORT']}/metrics")


@pytest.mark.parametrize("service", SERVED)
def test_promtool_check_metrics_over_each_services_metrics(platform, service):
    text = metrics_text(platform, service)
    assert "marginflow_" in text
    res = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"{service}: {res.stdout}{res.stderr}"


def queried_metric_names() -> set[str]:
    rules = (ROOT / "deploy" / "prometheus" / "rules" / "marginflow.yml").read_text()
    dashboard = (ROOT / "deploy" / "grafana" / "dashboards" / "marginflow.json").read_text()
    exprs = [t["expr"] for p in json.loads(dashboard)["panels"] for t in p.get("targets", [])]
    return set(re.findall(r"\b(marginflow_[a-z_]+)\b", rules + "\n".join(exprs)))


def test_every_metric_the_alerts_and_the_dashboard_query_is_exposed_by_the_running_services(platform):
    exposed: set[str] = set()
    for service in SERVED:
        exposed.update(re.findall(r"^(marginflow_[a-z_]+)", metrics_text(platform, service), re.M))
        exposed.update(re.findall(r"^# TYPE (marginflow_[a-z_]+)", metrics_text(platform, service), re.M))
    used = queried_metric_names()
    assert len(used) >= 20
    missing = sorted(n for n in used if n not in exposed)
    assert not missing, f"queried but not exposed by any running service: {missing}"


# ---- a crash fires its alert in a real Prometheus ------------------------------------------------------

def service_down_rule(for_: str) -> dict:
    """The real MarginflowServiceDown rule (same expression, labels, annotations) with a shorter ``for``."""
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules" / "marginflow.yml").read_text())
    rule = next(r for g in rules["groups"] for r in g["rules"] if r.get("alert") == "MarginflowServiceDown")
    return {**rule, "for": for_}


class Prometheus:
    def __init__(self, tmp: pathlib.Path, targets: dict[str, int], rules: list[dict]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (tmp / "rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "test", "interval": "1s", "rules": rules}]}))
        (tmp / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "scrape_timeout": "500ms", "evaluation_interval": "1s"},
            "rule_files": [str(tmp / "rules.yml")],
            "scrape_configs": [{"job_name": "marginflow", "static_configs": [
                {"targets": [f"127.0.0.1:{port}"], "labels": {"service": name}} for name, port in targets.items()]}],
        }))
        check = subprocess.run(["promtool", "check", "config", str(tmp / "prometheus.yml")], capture_output=True,
                               text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
        self.log = open(tmp / "prometheus.log", "wb")
        self.proc = subprocess.Popen(["prometheus", f"--config.file={tmp / 'prometheus.yml'}",
                                      f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        poll("prometheus ready", lambda: self.proc.poll() is None and "Ready" in http_get(f"{self.url}/-/ready"))

    def api(self, path: str) -> dict:
        reply = json.loads(http_get(f"{self.url}/api/v1/{path}"))
        assert reply["status"] == "success", reply
        return reply["data"]

    def alerts(self, name: str) -> list[dict]:
        return [a for a in self.api("alerts")["alerts"] if a["labels"].get("alertname") == name]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def test_a_crashed_service_fires_its_alert_in_a_real_prometheus(tmp_path, test_env, topic_prefix):
    grpc_port, metrics_port = free_port(), free_port()
    env = {**os.environ, **test_env, "MF_PORTFOLIO_GRPC_PORT": str(grpc_port),
           "MF_PORTFOLIO_METRICS_PORT": str(metrics_port), "MF_PORTFOLIO_REDIS_PREFIX": f"{topic_prefix}pf:"}
    log = open(tmp_path / "portfolio.log", "wb")
    service = subprocess.Popen([sys.executable, "-m", "marginflow.portfolio"], env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    prometheus = None
    try:
        poll("portfolio /metrics", lambda: service.poll() is None
             and "marginflow_portfolio_" in http_get(f"http://127.0.0.1:{metrics_port}/metrics"))
        prometheus = Prometheus(tmp_path, {"portfolio": metrics_port}, [service_down_rule("3s")])
        poll("the target scraped and up", lambda: [t for t in prometheus.api("targets")["activeTargets"]
                                                   if t["labels"]["service"] == "portfolio" and t["health"] == "up"])
        assert prometheus.alerts("MarginflowServiceDown") == []

        service.send_signal(signal.SIGKILL)     # the crash
        service.wait(10)
        pending = poll("the alert pending", lambda: prometheus.alerts("MarginflowServiceDown"), timeout_s=30)
        assert pending[0]["state"] in ("pending", "firing")
        firing = poll("the alert firing", lambda: [a for a in prometheus.alerts("MarginflowServiceDown")
                                                   if a["state"] == "firing"], timeout_s=60)
        alert = firing[0]
        assert alert["labels"]["service"] == "portfolio" and alert["labels"]["severity"] == "page"
        assert alert["annotations"]["summary"] == "portfolio is not answering /metrics"
        assert alert["labels"]["instance"] == f"127.0.0.1:{metrics_port}"
    finally:
        if prometheus is not None:
            prometheus.stop()
        if service.poll() is None:
            service.kill()
            service.wait()
        log.close()
        from marginflow.shared.kafka import delete_topics
        from marginflow.shared.config import CommonSettings, load
        from marginflow.portfolio.settings import PortfolioSettings
        from marginflow.portfolio.service import portfolio_topics

        delete_topics(load(CommonSettings, env).bootstrap,
                      [s.name for s in portfolio_topics(load(PortfolioSettings, env))])


# ---- deploy/local/monitoring.sh (what `make run` starts and `make stop` stops) ----------------------------

def test_monitoring_script_starts_prometheus_and_alertmanager_with_the_projects_configs_and_stops_them(tmp_path):
    prom_port, am_port = free_port(), free_port()
    env = {**os.environ, "MF_RUN_DIR": str(tmp_path / "run"), "PROMETHEUS_PORT": str(prom_port),
           "ALERTMANAGER_PORT": str(am_port)}
    script = str(ROOT / "deploy" / "local" / "monitoring.sh")
    started = subprocess.run([script, "start"], env=env, capture_output=True, text=True, timeout=120)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"Prometheus   http://127.0.0.1:{prom_port}" in started.stdout
        assert f"Alertmanager http://127.0.0.1:{am_port}" in started.stdout
        prom = f"http://127.0.0.1:{prom_port}"
        assert http_get(f"{prom}/-/ready").startswith("Prometheus Server is Ready")   # ready when start returns
        rules = json.loads(http_get(f"{prom}/api/v1/rules"))["data"]["groups"]
        alerts = {r["name"] for g in rules for r in g["rules"]}
        assert {"MarginflowServiceDown", "MarketDataMarksStale", "MarginAccountsInLiquidation"} <= alerts
        targets = poll("the scrape targets", lambda: json.loads(http_get(f"{prom}/api/v1/targets"))["data"]["activeTargets"])
        from marginflow.supervisor import PROGRAMS

        assert {t["labels"]["instance"] for t in targets} == {f"127.0.0.1:{p.metrics_port}" for p in PROGRAMS
                                                             if p.metrics_port_var}
        poll("prometheus sending to the alertmanager", lambda: [
            a for a in json.loads(http_get(f"{prom}/api/v1/alertmanagers"))["data"]["activeAlertmanagers"]
            if f":{am_port}/" in a["url"]])
        assert http_get(f"http://127.0.0.1:{am_port}/-/ready").strip().upper().startswith("OK")
        status = subprocess.run([script, "status"], env=env, capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and "prometheus running" in status.stdout and "alertmanager running" in status.stdout
        again = subprocess.run([script, "start"], env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and "already running" in again.stderr, again.stderr
    finally:
        stopped = subprocess.run([script, "stop"], env=env, capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert not list((tmp_path / "run").glob("*.pid"))
    with pytest.raises(OSError):
        http_get(f"http://127.0.0.1:{prom_port}/-/ready", timeout_s=1)
