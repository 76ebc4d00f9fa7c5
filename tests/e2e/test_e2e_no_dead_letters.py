"""A healthy run dead-letters nothing: the whole platform on the simulator at live pace for 60 s,
then every service's dead-letter topic is empty and no service counted a dead letter."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import grpc
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from marginflow.api.account.v1 import account_pb2, account_pb2_grpc
from marginflow.api.margin.v1 import margin_pb2, margin_pb2_grpc
from marginflow.api.marketdata.v1 import marketdata_pb2, marketdata_pb2_grpc
from marginflow.api.risk.v1 import risk_pb2, risk_pb2_grpc
from marginflow.portfolio.demo_book import account_id
from marginflow.shared.config import Topics

RUN_SECONDS = 60.0
SERVICES = ("marketdata", "riskparams", "portfolio", "margin")
DEAD_LETTERS = re.compile(r'^marginflow_dead_letters_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$', re.M)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, probe, timeout_s: float, sup: subprocess.Popen):
    """``probe()`` until it returns something truthy; fails at the deadline or if the supervisor exits."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if sup.poll() is not None:
            pytest.fail(f"the supervisor exited while waiting for {what}")
        try:
            result = probe()
            if result:
                return result
        except grpc.RpcError as exc:
            last_error = exc
        time.sleep(0.5)
    pytest.fail(f"{what} not seen within {timeout_s}s (last error: {last_error})")


def dead_letters_counted(metrics_port: int) -> dict[str, float]:
    """``{labels: value}`` of every marginflow_dead_letters_total sample the service exposes."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return {m["labels"]: float(m["value"]) for m in DEAD_LETTERS.finditer(text)}


def topic_sizes(bootstrap: str, names: list[str]) -> dict[str, int]:
    """Records ever written to each topic (end offset − beginning offset, over its partitions)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        sizes = {}
        for name in names:
            tps = [TopicPartition(name, p) for p in consumer.partitions_for_topic(name) or ()]
            begin, end = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
            sizes[name] = sum(end[tp] - begin[tp] for tp in tps)
        return sizes
    finally:
        consumer.close()


def test_healthy_simulator_run_dead_letters_nothing(tmp_path, test_env, kafka_bootstrap):
    prefix = test_env["MF_TOPIC_PREFIX"]
    ports = {f"{s}_{k}": free_port() for s in SERVICES for k in ("grpc", "metrics")}
    run_dir = tmp_path / "run"
    env = {**os.environ, **test_env, "MF_RUN_DIR": str(run_dir), "MF_LOG_JSON": "true",
           "MF_RISKPARAMS_APP_ID": prefix + "rp", "MF_PORTFOLIO_REDIS_PREFIX": prefix,
           "MF_PORTFOLIO_GROUP": "pf", "MF_MARGIN_GROUP": "mg", "MF_DEMO_ACCOUNTS": "300",
           # the concentration add-on on: margin reads the open interest portfolio publishes
           "MF_MARGIN_CONCENTRATION_RATE": "0.1"}
    for service in SERVICES:
        env[f"MF_{service.upper()}_GRPC_PORT"] = str(ports[f"{service}_grpc"])
        env[f"MF_{service.upper()}_METRICS_PORT"] = str(ports[f"{service}_metrics"])
    sup = subprocess.Popen([sys.executable, "-m", "marginflow.supervisor",
                            "--only", ",".join((*SERVICES, "demo-book"))],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    channels: list[grpc.Channel] = []
    try:
        def stub(cls, service: str):
            ch = grpc.insecure_channel(f"127.0.0.1:{ports[f'{service}_grpc']}")
            channels.append(ch)
            return cls(ch)

        md = stub(marketdata_pb2_grpc.MarketDataServiceStub, "marketdata")
        rp = stub(risk_pb2_grpc.RiskServiceStub, "riskparams")
        pf = stub(account_pb2_grpc.AccountServiceStub, "portfolio")
        mg = stub(margin_pb2_grpc.MarginServiceStub, "margin")

        # Every service up and doing its work: marks of every instrument, a risk version, the
        # demo book in portfolio, and margin margining an account of it.
        listed = wait_for("marketdata serving", lambda: md.ListInstruments(
            marketdata_pb2.ListInstrumentsRequest(), timeout=2), 120, sup)
        n_instruments = len(listed.instruments)
        wait_for("marks of every instrument", lambda: len(
            md.GetMarks(marketdata_pb2.GetMarksRequest(), timeout=2).marks) >= n_instruments, 120, sup)
        wait_for("a risk-parameter version", lambda: rp.GetRiskParams(
            risk_pb2.GetRiskParamsRequest(), timeout=2).version >= 1, 120, sup)
        wait_for("the demo book's 300 accounts", lambda: len(pf.ListAccounts(
            account_pb2.ListAccountsRequest(page_size=1000), timeout=5).accounts) == 300, 120, sup)
        margined = wait_for("margin of a demo account", lambda: mg.GetMargin(
            margin_pb2.GetMarginRequest(account_id=account_id(0)), timeout=2), 120, sup)
        assert margined.risk_params_version >= 1

        # The observation window: a dead letter counted anywhere fails at once.
        window_end = time.monotonic() + RUN_SECONDS
        while time.monotonic() < window_end:
            assert sup.poll() is None, "the supervisor exited during the run"
            for service in SERVICES:
                counted = {k: v for k, v in dead_letters_counted(ports[f"{service}_metrics"]).items() if v}
                assert counted == {}, f"{service} dead-lettered: {counted}"
            time.sleep(2.0)     # scrape period of the window, not a wait for a condition
        topics = Topics(prefix)
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        try:
            dlq_topics = sorted({t for t in admin.list_topics() if t.startswith(prefix) and t.endswith(".dlq")}
                                | {t for t in topics.dead_letter_topics})
        finally:
            admin.close()
        existing = topic_sizes(kafka_bootstrap, dlq_topics)
        assert {topics.ticks_dlq, topics.riskparams_dlq, topics.portfolio_dlq, topics.margin_dlq} <= set(existing)
        assert {t: n for t, n in existing.items() if n} == {}
        assert topic_sizes(kafka_bootstrap, [topics.open_interest])[topics.open_interest] > 0
        # The run did flow: marks kept coming during the window.
        marks = md.GetMarks(marketdata_pb2.GetMarksRequest(), timeout=2).marks
        assert max(m.meta.event_time_ms for m in marks) > int(time.time() * 1000) - 10_000
    finally:
        for ch in channels:
            ch.close()
        sup.send_signal(signal.SIGTERM)
        out, _ = sup.communicate(timeout=90)
    assert sup.returncode == 0, out[-3000:]
