"""Liquidation benchmark: ``python -m bench.bench_liquidation [--accounts N] [--liquidating F] [--in-process]``.

On the real Kafka (KAFKA_BOOTSTRAP_SERVERS): the margin service and the liquidation service each in its own
process (``python -m marginflow.margin``, ``python -m marginflow.liquidation``, as deployed; ``--in-process``
runs the liquidation in this one, beside the collecting consumers). N accounts, each long 1 BTC-PERP at
60,000; a fraction F of them with 12,000 USDC (below MM after the move), the rest with 30,000 USDC (healthy
throughout). One mark move 60,000 → 51,000 is published with its event time; measured:

* margin: mark event time → the account's ``margin.calls`` record published (the margin evaluation, the
  baseline of the same run);
* liquidation: mark event time → the account's first ``liquidation.orders`` record published (includes the
  margin evaluation, the consumer hop, the re-check (one Recheck over gRPC for many accounts) and the
  publication);
* orders/s sustained: first orders from the move to the last of them, and the ratio of the liquidation's p99 to
  margin's mark → call p99 in the same run; the load average before the move and after the burst.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import uuid

import grpc
import numpy as np
from kafka import KafkaConsumer, TopicPartition

from marginflow.api.account.v1 import account_pb2
from marginflow.api.liquidation.v1 import liquidation_pb2
from marginflow.api.margin.v1 import margin_pb2
from marginflow.api.marketdata.v1 import marketdata_pb2
from marginflow.api.risk.v1 import risk_pb2
from marginflow.liquidation.service import LiquidationApp, liquidation_topics
from marginflow.liquidation.settings import LiquidationSettings
from marginflow.margin.service import margin_topics
from marginflow.margin.settings import MarginSettings
from marginflow.shared.config import load
from marginflow.shared.kafka import ProtoProducer, delete_topics, ensure_topics, new_producer

UNDERLYINGS = ("BTC", "ETH", "SOL")


def risk_params() -> risk_pb2.RiskParams:
    hist = np.linspace(-0.15, 0.15, 100)
    now = int(time.time() * 1000)
    p = risk_pb2.RiskParams(version=1, es_confidence=0.99)
    p.meta.event_time_ms = now
    for u in UNDERLYINGS:
        p.underlyings.add(underlying=u, sigma_margin=0.5, index_price=1.0)
        p.grids.add(underlying=u, price_shocks=[-0.1, 0.0, 0.1], vol_shocks=[-0.25, 0.0, 0.25],
                    tail_price_shocks=[-0.2, 0.2], tail_vol_shocks=[0.0, 0.0], tail_weights=[0.5, 0.5],
                    horizon_seconds=86400.0, range_fraction=0.1)
    p.historical.underlyings.extend(UNDERLYINGS)
    p.historical.count = hist.size
    p.historical.returns.extend(np.repeat(hist, len(UNDERLYINGS)).tolist())
    p.historical.horizon_seconds = 86400.0
    return p


def mark(price: float, t_ms: int) -> marketdata_pb2.Mark:
    m = marketdata_pb2.Mark(instrument="BTC-PERP", underlying="BTC", index_price=price, mark_price=price,
                            half_spread_frac=0.0001, depth_contracts=1000.0)
    m.meta.event_time_ms = t_ms
    return m


def snapshot(account: str, usdc: str) -> bytes:
    s = account_pb2.AccountSnapshot(account_id=account, revision=1)
    s.balances.add(asset="USDC").amount.value = usdc
    p = s.positions.add(instrument="BTC-PERP", mode=account_pb2.MARGIN_MODE_CROSS)
    p.size.value, p.entry_price.value = "1", "60000"
    return s.SerializeToString()


def collect(bootstrap: str, topic: str, message_type, want: int, timeout_s: float) -> dict[str, object]:
    """First record per key (account) of ``topic``, until ``want`` keys or the timeout."""
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        out, deadline = {}, time.monotonic() + timeout_s
        while len(out) < want and time.monotonic() < deadline:
            for records in c.poll(timeout_ms=200, max_records=50000).values():
                for r in records:
                    key = r.key.decode()
                    if key not in out:
                        out[key] = message_type.FromString(r.value)
        return out
    finally:
        c.close()


def wait_settled(bootstrap: str, topic: str, most: int, window_s: float, timeout_s: float) -> bool:
    """Until at most ``most`` records reach ``topic`` within ``window_s`` (the start-up publication of every
    account done; heartbeats go on): the move then meets a platform at rest. At most ``timeout_s``."""
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic)]
        deadline = time.monotonic() + timeout_s
        before = sum(c.end_offsets(tps).values())
        while time.monotonic() < deadline:
            time.sleep(window_s)
            after = sum(c.end_offsets(tps).values())
            if after - before <= most:
                return True
            before = after
        return False
    finally:
        c.close()


def pct(values_ms: list[float]) -> str:
    if not values_ms:
        return "n/a"
    a = np.asarray(values_ms)
    return f"min {a.min():.0f} ms, p50 {np.percentile(a, 50):.0f} ms, p99 {np.percentile(a, 99):.0f} ms, max {a.max():.0f} ms"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_serving(port: int, timeout_s: float) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                        health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.5)
        raise TimeoutError("margin did not become ready")
    finally:
        channel.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--accounts", type=int, default=int(os.environ.get("MF_BENCH_LIQ_ACCOUNTS", "100000")))
    ap.add_argument("--liquidating", type=float, default=0.01)
    ap.add_argument("--in-process", action="store_true",
                    help="run the liquidation service in this process (beside the collecting consumers)")
    args = ap.parse_args()
    prefix = f"bl{uuid.uuid4().hex[:8]}."
    env = {**os.environ, "MF_TOPIC_PREFIX": prefix, "MF_LOG_JSON": "false", "MF_LOG_LEVEL": "WARNING",
           "MF_MARGIN_GRPC_PORT": "0", "MF_MARGIN_METRICS_PORT": "0", "MF_MARGIN_MODEL_REFRESH_MS": "0",
           "MF_MARGIN_EVALUATE_INTERVAL_MS": "50", "MF_LIQUIDATION_GRPC_PORT": "0",
           "MF_LIQUIDATION_METRICS_PORT": "0", "MF_LIQUIDATION_REDIS_PREFIX": f"{prefix}liq:"}
    ms = load(MarginSettings, env)
    topics = ms.common.topics
    specs = margin_topics(ms)
    ensure_topics(ms.common.bootstrap, specs)
    producer = ProtoProducer(new_producer(ms.common.bootstrap, "bench-liq"), "bench")
    margin = liq = liquidation = None
    try:
        producer.send(topics.risk_params, "current", risk_params())
        producer.send(topics.marks, "BTC-PERP", mark(60000.0, int(time.time() * 1000)))
        n_liq = max(1, int(args.accounts * args.liquidating))
        records = [(f"acct-{i:06d}".encode(), snapshot(f"acct-{i:06d}", "12000" if i < n_liq else "30000"))
                   for i in range(args.accounts)]
        for k in range(0, len(records), 20000):
            producer.send_many(topics.positions, records[k:k + 20000])
            producer.flush(120)
        t = time.perf_counter()
        # The margin service in its own process, as deployed (one GIL each): the liquidation in this one.
        port = free_port()
        margin = subprocess.Popen([sys.executable, "-m", "marginflow.margin"],
                                  env={**env, "MF_MARGIN_GRPC_PORT": str(port)}, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        wait_serving(port, 600)
        print(f"margin ready with {args.accounts:,} accounts in {time.perf_counter() - t:.1f} s", flush=True)
        liq_env = {**env, "MF_LIQUIDATION_MARGIN_ADDRESS": f"127.0.0.1:{port}",
                   "MF_LIQUIDATION_PORTFOLIO_ADDRESS": "127.0.0.1:1"}
        if args.in_process:
            liq = LiquidationApp(load(LiquidationSettings, liq_env)).start(serve_http_metrics=False)
            lthread, lstop = liq.run_in_thread()
        else:   # in its own process, as deployed: this one's collecting consumers take none of its GIL
            liq_port = free_port()
            liquidation = subprocess.Popen([sys.executable, "-m", "marginflow.liquidation"],
                                           env={**liq_env, "MF_LIQUIDATION_GRPC_PORT": str(liq_port)},
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_serving(liq_port, 300)
        settled = wait_settled(ms.common.bootstrap, topics.margin_state, args.accounts // 50, 2.0, 120)
        print(f"margin.state settled (≤ 2 % of the accounts in 2 s): {settled}; moving the mark "
              f"(load average {os.getloadavg()[0]:.1f})", flush=True)
        move_ms = int(time.time() * 1000)
        producer.send(topics.marks, "BTC-PERP", mark(51000.0, move_ms))
        producer.flush()
        orders = collect(ms.common.bootstrap, topics.liquidation_orders, liquidation_pb2.LiquidationOrder, n_liq, 120)
        calls = collect(ms.common.bootstrap, topics.margin_calls, margin_pb2.MarginCall, n_liq, 30)
        order_ms = [o.meta.publish_time_ms - move_ms for o in orders.values()]
        call_ms = [c.meta.publish_time_ms - move_ms for c in calls.values()]
        publish = sorted(o.meta.publish_time_ms for o in orders.values())
        print(f"accounts {args.accounts:,}, pushed below MM by the move: {n_liq:,}")
        print(f"margin:      mark event → margin.calls published: {pct(call_ms)} ({len(calls):,} calls)")
        print(f"liquidation: mark event → first order published:  {pct(order_ms)} ({len(orders):,} accounts)")
        if publish:
            # from the move to the last first order: the whole hop, margin's evaluation included
            span_s = max((publish[-1] - move_ms) / 1000.0, 1e-3)
            print(f"orders/s sustained: {len(publish) / span_s:,.0f} ({len(publish):,} first orders in {span_s:.2f} s "
                  f"from the move); target p99 ≤ 500 ms")
        if order_ms and call_ms:
            print(f"RATIO liquidation p99 / margin's mark → call p99 in the same run: "
                  f"{np.percentile(order_ms, 99) / max(np.percentile(call_ms, 99), 1.0):.2f}×")
        print(f"load average after the burst: {os.getloadavg()[0]:.1f}")
        started = collect(ms.common.bootstrap, topics.liquidation_events, liquidation_pb2.LiquidationEvent, n_liq, 10)
        print(f"liquidation: mark event → first event (episode started): "
              f"{pct([e.meta.publish_time_ms - move_ms for e in started.values()])}")
        if liq is not None:
            lstop.set()
            lthread.join(30)
            liq.close()
        return 0
    finally:
        for process in (liquidation, margin):
            if process is not None:
                process.terminate()
                process.wait(30)
        producer.close()
        delete_topics(ms.common.bootstrap, [s.name for s in specs + liquidation_topics(load(LiquidationSettings, env))])


if __name__ == "__main__":
    sys.exit(main())
