"""``marginflow status``: one view of the running platform, refreshed every second.

Each frame is a :class:`Snapshot`: per service its gRPC health and its ``/metrics`` samples, the
risk parameters in force (RiskService), the insurance fund (LiquidationService) and the portfolio
consumer group's lag (Kafka). Rates (ticks/s, recalculation time) are differences between two
snapshots. A service that is not running is shown as down; everything else still renders.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Group
from rich.table import Table
from rich.text import Text

from marginflow.cli import output as out
from marginflow.cli.endpoints import Endpoint
from marginflow.cli.rpc import health

Samples = dict[str, list[tuple[dict[str, str], float]]]


@dataclasses.dataclass
class ServiceSample:
    endpoint: Endpoint
    health: str                  # SERVING, NOT_SERVING, DOWN, ...
    metrics: Samples | None      # None: /metrics not reachable

    @property
    def up(self) -> bool:
        return self.health == "SERVING"

    def value(self, name: str, **labels: str) -> float | None:
        """Sum of the samples of ``name`` whose labels include ``labels`` (None when absent)."""
        if self.metrics is None or name not in self.metrics:
            return None
        values = [v for lab, v in self.metrics[name] if all(lab.get(k) == x for k, x in labels.items())]
        return sum(values) if values else None

    def maximum(self, name: str) -> float | None:
        if self.metrics is None or not self.metrics.get(name):
            return None
        return max(v for _lab, v in self.metrics[name])

    def series(self, name: str) -> list[tuple[dict[str, str], float]]:
        return [] if self.metrics is None else self.metrics.get(name, [])


@dataclasses.dataclass
class Snapshot:
    monotonic_s: float
    wall_ms: int
    services: dict[str, ServiceSample]
    risk_params: Any = None
    risk_error: str = ""
    fund: Any = None
    fund_error: str = ""
    kafka_lag: dict[str, int | None] = dataclasses.field(default_factory=dict)
    kafka_error: str = ""
    previous: Snapshot | None = None

    def rate(self, service: str, name: str, **labels: str) -> float | None:
        """Per-second increase of a counter since the previous snapshot."""
        prev = self.previous
        if prev is None or service not in prev.services:
            return None
        now_v = self.services[service].value(name, **labels)
        then_v = prev.services[service].value(name, **labels)
        dt = self.monotonic_s - prev.monotonic_s
        if now_v is None or then_v is None or dt <= 0:
            return None
        return max(0.0, now_v - then_v) / dt


def scrape(url: str, timeout_s: float) -> Samples | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:
            text = reply.read().decode()
    except (OSError, urllib.error.URLError, ValueError):
        return None
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return samples


class KafkaLag:
    """Lag of the portfolio service's consumer group (records behind the end of its input topics)."""

    def __init__(self, environ: Mapping[str, str], timeout_s: float) -> None:
        from marginflow.portfolio.settings import PortfolioSettings
        from marginflow.shared.config import load

        settings = load(PortfolioSettings, environ)
        self.bootstrap = settings.common.bootstrap
        topics = settings.common.topics
        self.groups = {"portfolio": (f"{settings.common.topic_prefix}{settings.consumer_group}",
                                     (topics.fills, topics.account_events))}
        self.timeout_ms = int(timeout_s * 1000)
        self._admin = None
        self._consumer = None

    def measure(self) -> dict[str, int | None]:
        from kafka import KafkaAdminClient, KafkaConsumer

        if self._admin is None:
            self._admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=self.timeout_ms,
                                           client_id="marginflow-cli")
            self._consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
                                           request_timeout_ms=max(self.timeout_ms, 1000), client_id="marginflow-cli")
        lags: dict[str, int | None] = {}
        for service, (group, topics) in self.groups.items():
            committed = self._admin.list_group_offsets({group: None}).get(group, {})
            mine = {tp: meta.offset for tp, meta in committed.items() if tp.topic in topics and meta.offset >= 0}
            if not mine:
                lags[service] = None
                continue
            ends = self._consumer.end_offsets(list(mine))
            lags[service] = sum(max(0, ends[tp] - offset) for tp, offset in mine.items())
        return lags

    def close(self) -> None:
        for client in (self._admin, self._consumer):
            if client is not None:
                try:
                    client.close()
                except Exception:   # closing a client of an unreachable broker may raise; nothing to keep
                    pass
        self._admin = self._consumer = None


class Collector:
    def __init__(self, endpoints: Mapping[str, Endpoint], timeout_s: float = 1.0,
                 environ: Mapping[str, str] | None = None) -> None:
        self.endpoints = dict(endpoints)
        self.timeout_s = timeout_s
        environ = os.environ if environ is None else environ
        try:
            self.kafka: KafkaLag | None = KafkaLag(environ, timeout_s)
            self.kafka_setup_error = ""
        except Exception as exc:    # a bad KAFKA_BOOTSTRAP_SERVERS etc.: show it, keep the rest of the view
            self.kafka = None
            self.kafka_setup_error = str(exc)
        self.previous: Snapshot | None = None

    def sample(self) -> Snapshot:
        from marginflow.cli.rpc import Client, CliError

        services = {name: ServiceSample(ep, health(ep, self.timeout_s), scrape(ep.metrics_url, self.timeout_s))
                    for name, ep in self.endpoints.items()}
        snap = Snapshot(time.monotonic(), int(time.time() * 1000), services, previous=self.previous)
        if self.previous is not None:
            self.previous.previous = None      # keep one frame of history, not all of them
        if "riskparams" in services and services["riskparams"].up:
            from marginflow.api.risk.v1 import risk_pb2
            try:
                with Client(self.endpoints["riskparams"], self.timeout_s) as client:
                    snap.risk_params = client.call("GetRiskParams", risk_pb2.GetRiskParamsRequest())
            except CliError as exc:
                snap.risk_error = str(exc)
        if "liquidation" in services and services["liquidation"].up:
            from marginflow.api.liquidation.v1 import liquidation_pb2
            try:
                with Client(self.endpoints["liquidation"], self.timeout_s) as client:
                    snap.fund = client.call("GetInsuranceFund", liquidation_pb2.GetInsuranceFundRequest())
            except CliError as exc:
                snap.fund_error = str(exc)
        if self.kafka is None:
            snap.kafka_error = self.kafka_setup_error
        else:
            try:
                snap.kafka_lag = self.kafka.measure()
            except Exception as exc:   # Kafka down or slow: the lag column says so
                snap.kafka_error = f"kafka: {type(exc).__name__}"
                self.kafka.close()
        self.previous = snap
        return snap

    def sample_pair(self, interval_s: float) -> Snapshot:
        """Two samples ``interval_s`` apart, so a single frame has rates."""
        first = self.sample()
        time.sleep(max(0.0, interval_s - (time.monotonic() - first.monotonic_s)))
        return self.sample()

    def close(self) -> None:
        if self.kafka is not None:
            self.kafka.close()


# ---- rendering -----------------------------------------------------------------------------------------

STATES = ("healthy", "margin_call", "liquidation", "bankrupt")


def _num(x: float | None, fmt: str = "{:,.0f}") -> str:
    return "—" if x is None or not math.isfinite(x) else fmt.format(x)


def _table(title: str, columns: list[str], right: tuple[str, ...] = ()) -> Table:
    t = Table(title=title, title_justify="left", title_style="bold", show_edge=False, pad_edge=False,
              header_style="bold")
    for c in columns:
        t.add_column(c, justify="right" if c in right else "left", no_wrap=True)
    return t


def _recalc_seconds(snap: Snapshot) -> tuple[float | None, float | None]:
    """(mean over the last interval, mean since start) of the margin full recalculation."""
    m = snap.services.get("margin")
    if m is None:
        return None, None
    total_s, count = m.value("marginflow_margin_full_recalc_seconds_sum"), m.value("marginflow_margin_full_recalc_seconds_count")
    overall = total_s / count if total_s is not None and count else None
    recent = None
    prev = snap.previous.services.get("margin") if snap.previous else None
    if prev is not None and count is not None:
        then_s, then_n = prev.value("marginflow_margin_full_recalc_seconds_sum"), prev.value("marginflow_margin_full_recalc_seconds_count")
        if then_n is not None and count > then_n:
            recent = (total_s - then_s) / (count - then_n)
    return recent, overall


def render(snap: Snapshot) -> Group:
    s = snap.services
    header = Text(f"marginflow status  {out.ms_time(snap.wall_ms)}", style="bold")

    svc = _table("services", ["service", "gRPC", "health", "metrics"])
    for name, sample in s.items():
        style = "green" if sample.up else "red"
        svc.add_row(name, sample.endpoint.grpc, Text("up" if sample.up else sample.health.lower(), style=style),
                    sample.endpoint.metrics_url if sample.metrics is not None else Text("down", style="red"))

    md = s.get("marketdata")
    # Mark ages as marketdata exports them (index and perpetual marks, wall time since their event time).
    market = _table("market data", ["ticks in/s", "published/s", "marks/s", "index+perp marks", "oldest mark",
                                    "rejected"],
                    right=("ticks in/s", "published/s", "marks/s", "index+perp marks", "oldest mark", "rejected"))
    if md is not None and md.metrics is not None:
        ages = md.series("marginflow_md_mark_age_seconds")
        market.add_row(_num(snap.rate("marketdata", "marginflow_md_ticks_in_total")),
                       _num(snap.rate("marketdata", "marginflow_md_ticks_published_total")),
                       _num(snap.rate("marketdata", "marginflow_md_marks_published_total")),
                       str(len(ages)), out.age(max((v for _l, v in ages), default=None)),
                       _num(md.value("marginflow_md_ticks_rejected_total")))
    else:
        market.add_row(*(["down"] + [""] * 5))

    rp = snap.risk_params
    risk_title = "risk parameters"
    if rp is not None:
        risk_title += f"  v{rp.version}, published {out.age(max(0.0, (snap.wall_ms - rp.meta.publish_time_ms) / 1000))} ago"
    risk = _table(risk_title, ["underlying", "index", "σ fast", "σ GARCH", "σ implied", "σ_m", "buffer", "stress"],
                  right=("index", "σ fast", "σ GARCH", "σ implied", "σ_m", "buffer"))
    if rp is not None:
        for u in rp.underlyings:
            risk.add_row(u.underlying, f"{u.index_price:,.2f}", out.pct(u.sigma_ewma_fast), out.pct(u.sigma_garch),
                         out.pct(u.sigma_implied) if u.sigma_implied else "—", out.pct(u.sigma_margin),
                         out.pct(u.apc_buffer), "STRESS" if u.stress else "")
    else:
        risk.add_row(snap.risk_error or ("down" if not s.get("riskparams") or not s["riskparams"].up
                                         else "no version yet"), *[""] * 7)

    mg = s.get("margin")
    pf = s.get("portfolio")
    recent, overall = _recalc_seconds(snap)
    margin_cols = ["accounts", *STATES, "risk v", "mark age", "recalc last / mean"]
    margin = _table("margin  (accounts: portfolio; states, version, recalculation: margin)", margin_cols,
                    right=tuple(margin_cols))
    if mg is not None and mg.metrics is not None:
        margin.add_row(_num(pf.value("marginflow_portfolio_accounts") if pf is not None else None),
                       *[_num(mg.value("marginflow_margin_accounts", state=st)) for st in STATES],
                       _num(mg.value("marginflow_margin_risk_params_version")),
                       out.age(mg.value("marginflow_margin_mark_age_seconds")),
                       f"{out.age(recent)} / {out.age(overall)}")
    else:
        margin.add_row(_num(pf.value("marginflow_portfolio_accounts") if pf is not None else None),
                       "down", *[""] * 6)

    lag = _table("consumer lag", ["service", "behind", "how measured"], right=("behind",))
    rps = s.get("riskparams")
    lag.add_row("riskparams", _num(rps.value("marginflow_riskparams_consumer_lag_records") if rps else None)
                + " records", "md.ticks, its own metric")
    if snap.kafka_error:
        lag.add_row("portfolio", "?", snap.kafka_error)
    else:
        lag.add_row("portfolio", _num(snap.kafka_lag.get("portfolio")) + " records",
                    "trades.fills + account.events, committed offsets")
    lag.add_row("margin", out.age(mg.value("marginflow_margin_mark_age_seconds") if mg else None),
                "oldest mark held (no committed offsets: rebuilds from the topics)")

    dead = _table("dead letters", ["service", "topic", "reason", "total"], right=("total",))
    rows = []
    for name, sample in s.items():
        for labels, value in sample.series("marginflow_dead_letters_total"):
            if value > 0:
                rows.append((labels.get("service", name), labels.get("topic", ""), labels.get("reason", ""), value))
    for row in sorted(rows):
        dead.add_row(row[0], row[1], row[2], _num(row[3]))
    if not rows:
        dead.add_row("none", "", "", "0")

    if snap.fund is not None:
        fund = Text(f"insurance fund  {snap.fund.balance_usd.value} USD (updated {out.ms_time(snap.fund.updated_ms)})")
    else:
        fund = Text(f"insurance fund  {snap.fund_error or 'liquidation service down'}", style="yellow")
    return Group(header, Text(""), svc, Text(""), market, Text(""), risk, Text(""), margin, Text(""), lag, Text(""),
                 dead, Text(""), fund)


def as_json(snap: Snapshot) -> dict[str, Any]:
    recent, overall = _recalc_seconds(snap)
    s = snap.services
    md, mg = s.get("marketdata"), s.get("margin")
    return {
        "time_ms": snap.wall_ms,
        "services": {n: {"grpc": x.endpoint.grpc, "health": x.health, "metrics": x.metrics is not None}
                     for n, x in s.items()},
        "ticks_per_second": snap.rate("marketdata", "marginflow_md_ticks_in_total"),
        "oldest_mark_seconds": md.maximum("marginflow_md_mark_age_seconds") if md else None,
        "risk_params": None if snap.risk_params is None else {
            "version": snap.risk_params.version,
            "sigma_margin": {u.underlying: u.sigma_margin for u in snap.risk_params.underlyings}},
        "accounts_by_state": {st: mg.value("marginflow_margin_accounts", state=st) for st in STATES} if mg else None,
        "full_recalc_seconds": {"last": recent, "mean": overall},
        "consumer_lag": {"riskparams": s["riskparams"].value("marginflow_riskparams_consumer_lag_records")
                         if "riskparams" in s else None, **snap.kafka_lag},
        "dead_letters": sum(x.value("marginflow_dead_letters_total") or 0 for x in s.values()),
        "insurance_fund_usd": snap.fund.balance_usd.value if snap.fund is not None else None,
    }


def live(collector: Collector, interval_s: float) -> None:
    from rich.live import Live

    console = out.console(width=None)
    with Live(render(collector.sample()), console=console, screen=False, auto_refresh=False) as view:
        while True:
            started = time.monotonic()
            view.update(render(collector.sample()), refresh=True)
            time.sleep(max(0.0, interval_s - (time.monotonic() - started)))
