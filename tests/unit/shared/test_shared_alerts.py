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


def exported_metric_names() -> set[str]:
    """Every metric family the services register, read from fresh registries."""
    from prometheus_client import CollectorRegistry

    from marginflow.liquidation.adapters.metrics import LiquidationMetrics
    from marginflow.margin.adapters.metrics import MarginMetrics
    from marginflow.marketdata.adapters.metrics import MarketDataMetrics
    from marginflow.portfolio.adapters.metrics import PortfolioMetrics
    from marginflow.riskparams.adapters.metrics import PrometheusMetrics
    from marginflow.shared.metrics import SharedMetrics

    names: set[str] = set()
    for make in (MarginMetrics, LiquidationMetrics, PortfolioMetrics, PrometheusMetrics, SharedMetrics,
                 lambda registry: MarketDataMetrics(dict, registry=registry)):
        registry = CollectorRegistry()
        make(registry=registry)
        for family in registry.collect():
            names.add(family.name)
            names.update(sample.name for sample in family.samples)
    return names


def dashboard_exprs() -> list[str]:
    import json

    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "marginflow.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def unexported(text: str) -> tuple[set[str], set[str]]:
    import re

    used = set(re.findall(r"\b(marginflow_[a-z_]+)\b", text))
    exported = exported_metric_names()
    # Counters are exported as <name>_total, histograms as <name>_bucket etc.; families without suffix.
    missing = {n for n in used if n not in exported and n.removesuffix("_total") not in exported
               and n.removesuffix("_bucket") not in exported}
    return used, missing


def test_every_metric_an_alert_uses_is_exported_by_the_code():
    used, missing = unexported((PROM / "rules" / "marginflow.yml").read_text())
    assert not missing, f"alerted on but never exported: {sorted(missing)}"
    assert len(used) >= 8


def test_every_metric_the_grafana_dashboard_queries_is_exported_by_the_code():
    used, missing = unexported("\n".join(dashboard_exprs()))
    assert not missing, f"on the dashboard but never exported: {sorted(missing)}"
    assert len(used) >= 30


def test_every_dashboard_query_is_valid_promql():
    # promtool parses PromQL in rule files: the dashboard's queries as recording rules of a throwaway file.
    import tempfile

    import yaml

    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:query_{i}", "expr": e}
                                                        for i, e in enumerate(dashboard_exprs())]}]}
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
        yaml.safe_dump(rules, f)
        f.flush()
        res = run("promtool", "check", "rules", f.name, cwd=PROM)
    assert res.returncode == 0, res.stdout + res.stderr
