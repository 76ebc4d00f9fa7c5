"""Margin restart benchmark: ``python -m bench.bench_margin_restart [--accounts N] [--positions-per-account P]``.

On the real Kafka (KAFKA_BOOTSTRAP_SERVERS), topics of its own: N accounts with P positions each over
the universe's perpetuals, futures and options (100,000 × 10 = 1,000,000 by default), most healthy, on
``portfolio.positions``; a risk-parameter version and a mark for every instrument. The margin service
runs in its own process (``python -m marginflow.margin``, as deployed). Measured:

* cold start: process start → gRPC health SERVING, → every account's first ``margin.state`` published;
* the restart snapshot (``margin.snapshot``) the service writes every ``MF_MARGIN_SNAPSHOT_INTERVAL_SECONDS``:
  the kill waits for one written after every first state was published (the steady state of a service that
  has run for a while), so the restart reads the snapshot and the tails after its offsets;
  ``--no-snapshot`` runs with snapshots off (every start reads both topics from the beginning);
* ``kill -9`` of the serving process, then a restart: kill → SERVING, kill → GetMargin answering for a
  sample of accounts (the figure the platform's target of 10 s is about);
* false calls: ``margin.calls`` records published by the restarted process that put an account into
  LIQUIDATION or BANKRUPT although its state before the kill was HEALTHY or MARGIN_CALL and nothing
  changed (target 0); every call the restarted process published is counted by state;
* RSS of the restarted process once serving.

The baseline of the same run is the cold start: a restart that reads back what Kafka holds should not
take longer than a start from nothing.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid

import grpc
import numpy as np
from kafka import KafkaConsumer, TopicPartition

from bench.bench_liquidation import free_port, risk_params, wait_serving
from marginflow.api.account.v1 import account_pb2
from marginflow.api.margin.v1 import margin_pb2, margin_pb2_grpc, snapshot_pb2
from marginflow.api.marketdata.v1 import marketdata_pb2
from marginflow.margin.service import margin_topics
from marginflow.margin.settings import MarginSettings
from marginflow.pricing import black76
from marginflow.shared.config import load
from marginflow.shared.kafka import ProtoProducer, delete_topics, ensure_topics, new_producer, read_compacted
from marginflow.shared.universe import MS_PER_YEAR, Kind, load_universe, platform_universe

IMPLIED_VOL = 0.6
BAD = {margin_pb2.HEALTH_STATE_LIQUIDATION, margin_pb2.HEALTH_STATE_BANKRUPT}


def instruments_and_marks(now_ms: int, common=None) -> tuple[list[str], dict[str, float], list[marketdata_pb2.Mark]]:
    """The universe's instruments that trade at ``now_ms`` and a mark of each (options by Black-76): the
    universe the service loads (``platform_universe``: MF_UNIVERSE_FILE, MF_UNIVERSE_AS_OF) when ``common``
    is given."""
    universe = platform_universe(common, now_ms) if common is not None else load_universe(None, now_ms)
    names, prices, marks = [], {}, []
    for sym, ins in universe.instruments.items():
        if ins.expiry_ms and ins.expiry_ms <= now_ms + 86_400_000:
            continue
        index = universe.underlyings[ins.underlying].index_price_usd
        m = marketdata_pb2.Mark(instrument=sym, underlying=ins.underlying, index_price=index,
                                half_spread_frac=0.0005, depth_contracts=1000.0)
        if ins.kind in (Kind.CALL, Kind.PUT):
            years = (ins.expiry_ms - now_ms) / MS_PER_YEAR
            m.mark_price = black76(index, ins.strike_usd, years, IMPLIED_VOL, ins.kind == Kind.CALL)
            m.implied_vol = IMPLIED_VOL
            if m.mark_price < 1.0:
                continue            # a worthless far wing: not a position anyone margins
        else:
            m.mark_price = index
        m.meta.event_time_ms = now_ms
        names.append(sym)
        prices[sym] = m.mark_price
        marks.append(m)
    return names, prices, marks


def snapshots(n: int, per_account: int, names: list[str], prices: dict[str, float], seed: int = 11):
    """``(key, AccountSnapshot bytes)`` of ``n`` healthy accounts: ``per_account`` distinct instruments each,
    small signed sizes, USDC collateral of 1.5 × the gross notional (most are healthy)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        acct = f"rs-{i:06d}"
        s = account_pb2.AccountSnapshot(account_id=acct, revision=1)
        gross = 0.0
        for j in rng.choice(len(names), size=min(per_account, len(names)), replace=False):
            sym = names[int(j)]
            price = prices[sym]
            size = float(rng.choice([-1, 1])) * round(float(rng.uniform(0.1, 2.0)) * 1000.0 / price, 4) or 0.0001
            p = s.positions.add(instrument=sym, mode=account_pb2.MARGIN_MODE_CROSS)
            p.size.value, p.entry_price.value = f"{size:.4f}", f"{price:.2f}"
            gross += abs(size) * price
        s.balances.add(asset="USDC").amount.value = f"{max(1000.0, 1.5 * gross):.2f}"
        out.append((acct.encode(), s.SerializeToString()))
    return out


def published_until(bootstrap: str, topic: str, message_type, done, timeout_s: float = 600):
    """The newest record per key of ``topic``, read from the beginning until ``done(dict)`` holds (the
    service is still publishing: there is no end offset to read to)."""
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        out: dict[str, object] = {}
        deadline = time.monotonic() + timeout_s
        while not done(out):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: {len(out):,} keys read in {timeout_s:.0f} s")
            for records in c.poll(timeout_ms=200, max_records=50000).values():
                for r in records:
                    out[r.key.decode()] = message_type.FromString(r.value)
        return out
    finally:
        c.close()


def wait_answering(port: int, accounts: list[str], timeout_s: float) -> None:
    """Until GetMargin answers OK for every account of ``accounts``."""
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = margin_pb2_grpc.MarginServiceStub(channel)
    deadline = time.monotonic() + timeout_s
    pending = list(accounts)
    try:
        while pending:
            try:
                stub.GetMargin(margin_pb2.GetMarginRequest(account_id=pending[-1]), timeout=2)
                pending.pop()
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"GetMargin not answering for {len(pending)} accounts") from None
                time.sleep(0.05)
    finally:
        channel.close()


def wait_snapshot(bootstrap: str, topic: str, since_ms: int, timeout_s: float) -> None:
    """Until a published-state part written at or after ``since_ms`` is on the snapshot topic (the
    positions parts of the same capture went out before it)."""
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                      max_partition_fetch_bytes=32 * 1024 * 1024)
    try:
        tps = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for records in c.poll(timeout_ms=500).values():
                for r in records:
                    if r.value and r.key and r.key.startswith(b"published/"):
                        if snapshot_pb2.SnapshotChunk.FromString(r.value).written_ms >= since_ms:
                            return
        raise TimeoutError(f"no snapshot on {topic} within {timeout_s:.0f} s")
    finally:
        c.close()


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def start_margin(env: dict, port: int, log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "marginflow.margin"], env={**env, "MF_MARGIN_GRPC_PORT": str(port)},
                            stdout=log, stderr=log)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--accounts", type=int, default=int(os.environ.get("MF_BENCH_RESTART_ACCOUNTS", "100000")))
    ap.add_argument("--positions-per-account", type=int, default=10)
    ap.add_argument("--no-snapshot", action="store_true", help="MF_MARGIN_SNAPSHOT_INTERVAL_SECONDS=0")
    ap.add_argument("--sample", type=int, default=200, help="accounts asked over GetMargin after the restart")
    ap.add_argument("--margin-log", type=argparse.FileType("ab"), default=subprocess.DEVNULL,
                    help="append the margin processes' logs (level INFO) here")
    args = ap.parse_args()
    prefix = f"br{uuid.uuid4().hex[:8]}."
    env = {**os.environ, "MF_TOPIC_PREFIX": prefix, "MF_LOG_JSON": "false", "MF_LOG_LEVEL": "WARNING" if args.margin_log is subprocess.DEVNULL else "INFO",
           "MF_MARGIN_METRICS_PORT": "0", "MF_MARGIN_REDIS_PREFIX": f"{prefix}mg:"}
    if args.no_snapshot:
        env["MF_MARGIN_SNAPSHOT_INTERVAL_SECONDS"] = "0"
    ms = load(MarginSettings, env)
    topics = ms.common.topics
    specs = margin_topics(ms)
    ensure_topics(ms.common.bootstrap, specs)
    producer = ProtoProducer(new_producer(ms.common.bootstrap, "bench-restart"), "bench")
    margin = None
    try:
        now = int(time.time() * 1000)
        names, prices, marks = instruments_and_marks(now, ms.common)
        producer.send(topics.risk_params, "current", risk_params())
        for m in marks:
            producer.send(topics.marks, m.instrument, m)
        t = time.perf_counter()
        records = snapshots(args.accounts, args.positions_per_account, names, prices)
        n_positions = sum(len(account_pb2.AccountSnapshot.FromString(v).positions) for _k, v in records[:1000])
        for k in range(0, len(records), 20000):
            producer.send_many(topics.positions, records[k:k + 20000])
            producer.flush(300)
        print(f"{args.accounts:,} accounts (~{n_positions / min(1000, len(records)):.1f} positions each, "
              f"{len(names)} instruments) on {topics.positions} in {time.perf_counter() - t:.1f} s", flush=True)
        load_before = os.getloadavg()[0]

        port = free_port()
        t = time.perf_counter()
        margin = start_margin(env, port, args.margin_log)
        wait_serving(port, 900)
        cold_serving = time.perf_counter() - t
        before = published_until(ms.common.bootstrap, topics.margin_state, margin_pb2.MarginState,
                                 lambda d: len(d) >= args.accounts, timeout_s=900)
        cold_states = time.perf_counter() - t
        counts = {s: sum(1 for x in before.values() if x.state == s) for s in (1, 2, 3, 4)}
        print(f"cold start: SERVING after {cold_serving:.1f} s, every account's state published after "
              f"{cold_states:.1f} s; states healthy {counts[1]:,} / margin call {counts[2]:,} / "
              f"liquidation {counts[3]:,} / bankrupt {counts[4]:,}; RSS {rss_mib(margin.pid):.0f} MiB", flush=True)

        time.sleep(2.0)                       # let the first publication's tail settle before the kill
        if not args.no_snapshot:
            t_snap = time.perf_counter()
            wait_snapshot(ms.common.bootstrap, topics.margin_snapshot, int(time.time() * 1000), timeout_s=600)
            print(f"a snapshot written after the first publication: waited {time.perf_counter() - t_snap:.1f} s",
                  flush=True)
        kill_ms = int(time.time() * 1000)
        t = time.perf_counter()
        margin.send_signal(signal.SIGKILL)
        margin.wait(30)
        margin = start_margin(env, port, args.margin_log)
        wait_serving(port, 900)
        restart_serving = time.perf_counter() - t
        rng = np.random.default_rng(3)
        sample = [f"rs-{int(i):06d}" for i in rng.integers(args.accounts, size=args.sample)]
        wait_answering(port, sample, 600)
        restart_answering = time.perf_counter() - t
        rss = rss_mib(margin.pid)
        time.sleep(15.0)                      # the window in which a restart used to publish false calls
        calls = {a: c for a, c in read_compacted(ms.common.bootstrap, topics.margin_calls, margin_pb2.MarginCall,
                                                 "bench-restart", timeout_s=120).items()
                 if c.meta.publish_time_ms >= kill_ms}
        by_state = {s: sum(1 for c in calls.values() if c.state == s) for s in (1, 2, 3, 4)}
        false = sum(1 for a, c in calls.items() if c.state in BAD and a in before and before[a].state not in BAD)
        print(f"load average at start {load_before:.2f}, now {os.getloadavg()[0]:.2f} "
              f"({'snapshots off' if args.no_snapshot else 'restart from the snapshot'})")
        print(f"kill -9 → SERVING {restart_serving:.1f} s; kill -9 → GetMargin answering for {len(sample)} accounts "
              f"{restart_answering:.1f} s (target ≤ 10 s: {'met' if restart_answering <= 10 else 'NOT met'}); "
              f"RATIO restart / cold start to SERVING {restart_serving / cold_serving:.2f}×")
        print(f"margin.calls published by the restarted process in its first ~15 s: {len(calls):,} (healthy "
              f"{by_state[1]:,}, margin call {by_state[2]:,}, liquidation {by_state[3]:,}, bankrupt {by_state[4]:,}); "
              f"false LIQUIDATION/BANKRUPT calls: {false} (target 0)")
        print(f"RSS of the restarted process serving: {rss:.0f} MiB (target ≤ 1024 MiB)")
        return 0 if false == 0 else 1
    finally:
        if margin is not None:
            margin.terminate()
            try:
                margin.wait(120)
            except subprocess.TimeoutExpired:
                margin.kill()
                margin.wait(30)
        producer.close()
        delete_topics(ms.common.bootstrap, [s.name for s in specs])


if __name__ == "__main__":
    sys.exit(main())
