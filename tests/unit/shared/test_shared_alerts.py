"""The Prometheus alert rules and the Alertmanager routing, checked by their own tools."""

from __future__ import annotations

import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
PROM = ROOT / "deploy" / "prometheus"


def run(*cmd: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60)


def test_alert_rules_pass_their_promtool_unit_tests():
    res = run("promtool", "test", "rules", "tests/marginflow.test.yml", cwd=PROM)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus.compose.yml"])
def test_prometheus_config_and_rules_are_valid(config):
    res = run("promtool", "check", "config", config, cwd=PROM)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "rules found" in res.stdout


def test_alertmanager_config_is_valid():
    res = run("amtool", "check-config", "alertmanager/alertmanager.yml", cwd=ROOT / "deploy")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 receivers" in res.stdout


def test_every_metric_an_alert_uses_is_exported_by_the_code():
    rules = (PROM / "rules" / "marginflow.yml").read_text()
    code = "\n".join(p.read_text() for p in (ROOT / "services").rglob("*.py"))
    import re

    names = set(re.findall(r"\b(marginflow_[a-z_]+?)(?:_bucket|_total)?\b", rules))
    for name in names:
        base = name.removesuffix("_bucket")
        assert base in code or base.removesuffix("_total") in code, f"{base} is alerted on but never exported"
