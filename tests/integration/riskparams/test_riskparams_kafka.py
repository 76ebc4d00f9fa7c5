"""riskparams on the real Kafka: replay a CSV → parameters on risk.params and over gRPC; a restart
keeps them (faust table changelog) and continues exactly where it stopped; bad ticks dead-letter."""

from __future__ import annotations

import csv
import math
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import grpc
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from marginflow.api.common.v1 import common_pb2
from marginflow.api.marketdata.v1 import marketdata_pb2
from marginflow.api.risk.v1 import risk_pb2, risk_pb2_grpc
from marginflow.riskparams.application import Market, RiskEngine, engine_config
from marginflow.riskparams.settings import RiskParamsSettings
from marginflow.shared.config import load
from marginflow.shared.kafka import ensure_topics, platform_topics, read_compacted
from marginflow.shared.universe import load_universe

CSV = pathlib.Path(__file__).parent / "data" / "daily_perps.csv"
DAY_MS = 86_400_000
# The option chain is listed as of the day the first part of the replay ends (expiries +7d/+30d/+90d).
AS_OF_MS = (int(list(csv.reader(CSV.open()))[-16][0]) // DAY_MS) * DAY_MS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_topic(bootstrap: str, topic: str) -> list:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        out: list = []
        deadline = time.monotonic() + 15
        while any(consumer.position(tp) < end[tp] for tp in tps) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=300).values():
                out.extend(records)
        return out
    finally:
        consumer.close()


def csv_ticks(path: pathlib.Path) -> list[tuple[str, float, int]]:
    with path.open() as f:
        return [(r["instrument"], float(r["price"]), int(r["ts"])) for r in csv.DictReader(f)]


def produce_ticks(producer: KafkaProducer, topic: str, ticks) -> None:
    for sym, price, ts in ticks:
        t = marketdata_pb2.Tick(instrument=sym, price=price, bid=price, ask=price)
        t.meta.event_time_ms = ts
        producer.send(topic, key=sym.encode(), value=t.SerializeToString())
    producer.flush()


class Service:
    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "marginflow.riskparams"], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        return self.proc.returncode, out


def wait_params(stub, predicate, timeout_s: float = 45.0, proc=None) -> risk_pb2.RiskParams:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"service exited: {proc.stdout.read()}")
        try:
            last = stub.GetRiskParams(risk_pb2.GetRiskParamsRequest(), timeout=2)
            if predicate(last):
                return last
        except grpc.RpcError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"parameters not as expected in time; last: {last}")


@pytest.fixture
def env(test_env) -> dict[str, str]:
    return {**os.environ, **test_env, "MF_RISKPARAMS_GRPC_PORT": str(free_port()),
            "MF_RISKPARAMS_METRICS_PORT": str(free_port()), "MF_UNIVERSE_AS_OF": time.strftime("%Y-%m-%d", time.gmtime(AS_OF_MS / 1000)),
            "MF_RISKPARAMS_GARCH_MIN_RETURNS": "100", "MF_RISKPARAMS_FHS_MIN_HISTORY": "100",
            "MF_RISKPARAMS_FHS_COUNT": "250", "MF_RISKPARAMS_PUBLISH_INTERVAL_SECONDS": "0.3",
            "MF_RISKPARAMS_COMMIT_INTERVAL_SECONDS": "0.3", "MF_RISKPARAMS_IMPLIED_MAX_AGE_SECONDS": "864000"}


def test_replay_publish_serve_restart(env, kafka_bootstrap, common_settings, produce_compressed):
    topics = common_settings.topics
    ensure_topics(kafka_bootstrap, platform_topics(topics, 2))
    ticks = csv_ticks(CSV)
    first, rest = ticks[:-15], ticks[-15:]                       # 5 more days after the restart
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
    produce_ticks(producer, topics.ticks, first)
    last_ts = first[-1][2]
    # Two bad ticks (dead letters) and an index tick under the bare underlying, as marketdata
    # publishes them (known, ignored: never a dead letter).
    produce_ticks(producer, topics.ticks, [("BTC-PERP", math.nan, last_ts + 1), ("DOGE-PERP", 1.0, last_ts + 2),
                                           ("BTC", 60000.0, last_ts + 3)])
    # A tick under another instrument's key, and one over the 1 MiB limit (compressed on the wire).
    contradicting = marketdata_pb2.Tick(instrument="BTC-PERP", price=1.0)
    contradicting.meta.event_time_ms = last_ts + 4
    producer.send(topics.ticks, key=b"ETH-PERP", value=contradicting.SerializeToString())
    huge = marketdata_pb2.Tick(instrument="BTC-PERP", price=1.0, implied_vol=0.0)
    huge.meta.source = "x" * (1024 * 1024)
    produce_compressed(kafka_bootstrap, topics.ticks, b"BTC-PERP", huge.SerializeToString())
    # Option marks for BTC: a flat 65 % smile → σ_implied = 0.65.
    universe = load_universe(None, AS_OF_MS)
    for inst in universe.instruments.values():
        if inst.is_option and inst.underlying == "BTC":
            m = marketdata_pb2.Mark(instrument=inst.symbol, underlying="BTC", index_price=60000.0, implied_vol=0.65)
            m.meta.event_time_ms = last_ts
            producer.send(topics.marks, key=inst.symbol.encode(), value=m.SerializeToString())
    producer.flush()

    channel = grpc.insecure_channel(f"127.0.0.1:{env['MF_RISKPARAMS_GRPC_PORT']}")
    stub = risk_pb2_grpc.RiskServiceStub(channel)
    n_days = len(first) // 3
    svc = Service(env)
    try:
        params = wait_params(stub, lambda p: all(u.returns_observed == n_days - 2 for u in p.underlyings)
                             and p.underlyings[0].sigma_implied > 0, proc=svc.proc)
        btc = params.underlyings[0]
        assert btc.underlying == "BTC" and btc.garch_ok and btc.sigma_implied == pytest.approx(0.65, rel=1e-9)
        assert btc.sigma_margin >= btc.sigma_floor > 0 and btc.sigma_margin > 0
        assert len(params.correlation) == 9 and not params.historical.bootstrap
        assert params.historical.count == 250 and len(params.historical.returns) == 750
        history = stub.GetSigmaHistory(risk_pb2.GetSigmaHistoryRequest(underlying="BTC", limit=10))
        assert len(history.changes) == 10 and history.changes[0].sigma_after == pytest.approx(btc.sigma_margin)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{env['MF_RISKPARAMS_METRICS_PORT']}/metrics").read().decode()
        assert 'marginflow_riskparams_sigma_margin_annual{underlying="BTC"}' in metrics
    finally:
        rc, out = svc.stop()
    assert rc == 0, out
    on_topic = read_compacted(kafka_bootstrap, topics.risk_params, risk_pb2.RiskParams, "rp-it")["current"]
    assert on_topic.version >= params.version
    assert on_topic.underlyings[0].returns_observed == n_days - 2
    letters = [common_pb2.DeadLetter.FromString(r.value) for r in read_topic(kafka_bootstrap, topics.riskparams_dlq)]
    assert sorted(l.reason_code for l in letters) == ["key_mismatch", "non_finite_price", "oversized",
                                                      "unknown_instrument"]
    assert {l.service for l in letters} == {"riskparams"}
    assert read_topic(kafka_bootstrap, topics.ticks_dlq) == []       # marketdata's own topic stays untouched

    # Restart: the last version is served at once, state comes back from the changelog.
    svc = Service(env)
    try:
        again = wait_params(stub, lambda p: True, timeout_s=30, proc=svc.proc)
        assert again.version == on_topic.version
        produce_ticks(producer, topics.ticks, rest)
        after = wait_params(stub, lambda p: all(u.returns_observed == n_days + 5 - 2 for u in p.underlyings),
                            proc=svc.proc)
    finally:
        rc, out = svc.stop()
        channel.close()
        producer.close()
    assert rc == 0, out
    assert after.version > on_topic.version
    # Same numbers as one engine that saw every tick once: nothing lost, nothing counted twice.
    settings = load(RiskParamsSettings, env)
    cfg = engine_config(settings, ("BTC", "ETH", "SOL"))
    reference = RiskEngine(cfg, Market.from_universe(universe, cfg.underlyings))
    reference.ingest_ticks(ticks)
    for got, want in zip(after.underlyings, reference.estimates()):
        assert got.returns_observed == want.returns_observed
        assert got.sigma_ewma_fast == want.sigma_ewma_fast
        assert got.sigma_ewma_slow == want.sigma_ewma_slow
        assert got.sigma_garch == pytest.approx(want.sigma_garch, rel=1e-9)
        assert got.sigma_floor == want.sigma_floor
