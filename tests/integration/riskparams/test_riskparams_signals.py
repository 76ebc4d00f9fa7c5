"""GetSignals over gRPC from the riskparams service on the real Kafka: ATM vol and 25-delta skew from
option marks, realised/implied, the book depth index from the perpetual's depth curves, σ_m's history,
the Prometheus gauges; bad arguments answered INVALID_ARGUMENT, a mark with a broken curve dead-lettered."""

from __future__ import annotations

import os
import time
import urllib.request

import grpc
import pytest
from kafka import KafkaProducer

from marginflow.api.common.v1 import common_pb2
from marginflow.api.marketdata.v1 import marketdata_pb2
from marginflow.api.risk.v1 import risk_pb2, risk_pb2_grpc
from marginflow.shared.kafka import ensure_topics, platform_topics
from marginflow.shared.universe import load_universe

from .test_riskparams_kafka import AS_OF_MS, CSV, Service, csv_ticks, free_port, produce_ticks, read_topic


def curve_mark(symbol: str, und: str, index: float, t_ms: int, bids, asks) -> marketdata_pb2.Mark:
    m = marketdata_pb2.Mark(instrument=symbol, underlying=und, index_price=index, mark_price=index)
    m.meta.event_time_ms = t_ms
    m.depth_curve.distance_bps.extend([10.0, 50.0, 100.0])
    m.depth_curve.bid_contracts.extend(bids)
    m.depth_curve.ask_contracts.extend(asks)
    return m


def wait_signals(stub, predicate, proc, timeout_s: float = 60.0) -> risk_pb2.GetSignalsResponse:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"service exited: {proc.stdout.read()}")
        try:
            last = stub.GetSignals(risk_pb2.GetSignalsRequest(history_limit=5), timeout=2)
            if predicate(last):
                return last
        except grpc.RpcError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"signals not as expected in time; last: {last}")


def test_signals_over_grpc_from_marks_on_kafka(test_env, kafka_bootstrap, common_settings):
    env = {**os.environ, **test_env, "MF_RISKPARAMS_GRPC_PORT": str(free_port()),
           "MF_RISKPARAMS_METRICS_PORT": str(free_port()),
           "MF_UNIVERSE_AS_OF": time.strftime("%Y-%m-%d", time.gmtime(AS_OF_MS / 1000)),
           "MF_RISKPARAMS_GARCH_MIN_RETURNS": "100", "MF_RISKPARAMS_FHS_MIN_HISTORY": "100",
           "MF_RISKPARAMS_FHS_COUNT": "250", "MF_RISKPARAMS_PUBLISH_INTERVAL_SECONDS": "0.3",
           "MF_RISKPARAMS_COMMIT_INTERVAL_SECONDS": "0.3", "MF_RISKPARAMS_IMPLIED_MAX_AGE_SECONDS": "864000",
           "MF_RISKPARAMS_SIGNAL_TENORS_DAYS": "7,30", "MF_RISKPARAMS_DEPTH_REFERENCE_BPS": "50",
           "MF_RISKPARAMS_DEPTH_HALF_LIFE_SECONDS": "86400"}
    topics = common_settings.topics
    ensure_topics(kafka_bootstrap, platform_topics(topics, 2))
    ticks = csv_ticks(CSV)[:-15]
    last_ts = ticks[-1][2]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
    produce_ticks(producer, topics.ticks, ticks)
    # BTC options: 60 % at and above the money, +30 vol points per unit of moneyness below (a put skew).
    universe = load_universe(None, AS_OF_MS)
    for inst in universe.instruments.values():
        if inst.is_option and inst.underlying == "BTC":
            iv = 0.6 + 0.3 * max(0.0, 1.0 - inst.strike_usd / 60000.0)
            m = marketdata_pb2.Mark(instrument=inst.symbol, underlying="BTC", index_price=60000.0, implied_vol=iv)
            m.meta.event_time_ms = last_ts
            producer.send(topics.marks, key=inst.symbol.encode(), value=m.SerializeToString())
    # The perpetual's book: 20 contracts on the thinner side within 50 bp, then 8 a day later (the
    # baseline moves half way in one half-life: 20 + ½ (8 − 20) = 14, index 8/14).
    for t, bids, asks in ((last_ts - 86_400_000, (10.0, 20.0, 40.0), (12.0, 25.0, 50.0)),
                          (last_ts, (4.0, 8.0, 16.0), (5.0, 9.0, 30.0))):
        m = curve_mark("BTC-PERP", "BTC", 60000.0, t, bids, asks)
        producer.send(topics.marks, key=b"BTC-PERP", value=m.SerializeToString())
    producer.flush()   # in order on the one key before the broken one
    bad = curve_mark("BTC-PERP", "BTC", 60000.0, last_ts + 1, (4.0, float("nan"), 16.0), (5.0, 9.0, 30.0))
    producer.send(topics.marks, key=b"BTC-PERP", value=bad.SerializeToString())
    producer.flush()

    channel = grpc.insecure_channel(f"127.0.0.1:{env['MF_RISKPARAMS_GRPC_PORT']}")
    stub = risk_pb2_grpc.RiskServiceStub(channel)
    svc = Service(env)
    try:
        got = wait_signals(stub, lambda r: any(u.underlying == "BTC" and u.depth_time_ms == last_ts
                                               and u.tenors and u.tenors[-1].atm_vol > 0 and u.sigma_history
                                               for u in r.underlyings), svc.proc)
        btc = {u.underlying: u for u in got.underlyings}["BTC"]
        assert [t.tenor_days for t in btc.tenors] == [7.0, 30.0]
        assert btc.tenors[1].atm_vol == pytest.approx(0.6, rel=1e-9)      # flat at and above the money
        assert btc.tenors[1].skew_25d > 0                                   # puts dearer
        assert btc.sigma_implied == pytest.approx(0.6, rel=1e-9)
        assert btc.realised_implied_ratio == pytest.approx(btc.sigma_realised / 0.6, rel=1e-9)
        assert btc.depth_instrument == "BTC-PERP" and btc.depth_contracts == 8.0
        assert btc.depth_index == pytest.approx(8.0 / 14.0, rel=1e-9)
        assert 0 < len(btc.sigma_history) <= 5
        assert all(a.event_time_ms >= b.event_time_ms for a, b in zip(btc.sigma_history, btc.sigma_history[1:]))
        assert all(e.put_25d_strike_usd < 60000.0 < e.call_25d_strike_usd for e in btc.expiries)
        eth = {u.underlying: u for u in got.underlyings}["ETH"]
        assert eth.depth_index == 0.0 and eth.tenors[0].atm_vol == 0.0
        only = stub.GetSignals(risk_pb2.GetSignalsRequest(underlyings=["ETH"]), timeout=5)
        assert [u.underlying for u in only.underlyings] == ["ETH"] and len(only.underlyings[0].sigma_history) <= 20
        for request in (risk_pb2.GetSignalsRequest(underlyings=["DOGE"]),
                        risk_pb2.GetSignalsRequest(underlyings=["BTC", "BTC"]),
                        risk_pb2.GetSignalsRequest(history_limit=-1),
                        risk_pb2.GetSignalsRequest(history_limit=1001)):
            with pytest.raises(grpc.RpcError) as err:
                stub.GetSignals(request, timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{env['MF_RISKPARAMS_METRICS_PORT']}/metrics").read().decode()
        assert 'marginflow_riskparams_signal_atm_vol{tenor_days="30",underlying="BTC"} 0.6' in metrics
        assert 'marginflow_riskparams_signal_depth_index{underlying="BTC"}' in metrics
        assert 'marginflow_riskparams_signal_skew_25d{tenor_days="30",underlying="BTC"}' in metrics
    finally:
        rc, out = svc.stop()
        channel.close()
        producer.close()
    assert rc == 0, out
    letters = [common_pb2.DeadLetter.FromString(r.value) for r in read_topic(kafka_bootstrap, topics.riskparams_dlq)]
    assert [l.reason_code for l in letters] == ["depth_curve_non_finite"]
