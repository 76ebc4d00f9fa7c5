"""Benchmark: ticks/s through riskparams on the real Kafka, lag over time, ratios to an in-process baseline.

``python -m bench.bench_riskparams [--ticks N] [--rate R] [--seconds S]`` (Kafka from
KAFKA_BOOTSTRAP_SERVERS, default 127.0.0.1:19092). All phases run in this process, one after the
other, on fresh topics:

1. baseline — the same raw Tick bytes decoded and fed to the engine in batches of 5,000, no Kafka:
   the ceiling of the Python per-tick path.
2. drain (bulk) — N ticks pre-produced to md.ticks (2 partitions), then the faust app of riskparams
   (bulk tick consumer, state table, publisher timer) consumes them: sustained ticks/s.
3. drain (agent) — the same through a plain faust agent (``MF_RISKPARAMS_TICK_CONSUMER=agent``).
4. paced — a producer process writes R ticks/s for S seconds while riskparams (bulk) consumes;
   consumer lag sampled every second must not grow.

Ticks are 1 ms apart in event time over BTC/ETH/SOL perpetuals; a 1 s sampling interval makes
about 330 returns per underlying per million ticks, so GARCH refits and versions happen on the way.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import time
import uuid

from kafka import KafkaProducer

from marginflow.api.marketdata.v1 import marketdata_pb2
from marginflow.riskparams.adapters.codec import decode_marks, decode_ticks
from marginflow.riskparams.adapters.faust_app import FaustConfig, FaustTableStore, RiskParamsFaust, create_app
from marginflow.riskparams.application import Market, NullMetrics, RiskEngine, RiskParamsService, engine_config
from marginflow.riskparams.settings import RiskParamsSettings
from marginflow.shared.config import Topics, load
from marginflow.shared.kafka import ensure_topics, platform_topics
from marginflow.shared.universe import load_universe

PERPS = (("BTC-PERP", 60000.0), ("ETH-PERP", 3000.0), ("SOL-PERP", 150.0))
T0_MS = 1_704_067_200_000
ENV = {"MF_RISKPARAMS_SAMPLE_INTERVAL_MS": "1000", "MF_RISKPARAMS_GARCH_MIN_RETURNS": "100",
       "MF_RISKPARAMS_GARCH_WINDOW_RETURNS": "500", "MF_RISKPARAMS_FHS_MIN_HISTORY": "100",
       "MF_UNIVERSE_AS_OF": "2024-01-01"}


def tick_values(n: int, start: int = 0, seed: int = 1) -> list[tuple[bytes, bytes]]:
    import random
    rnd = random.Random(seed + start)
    out = []
    prices = [p for _, p in PERPS]
    for i in range(start, start + n):
        j = i % 3
        prices[j] *= 1.0 + rnd.gauss(0.0, 2e-4)
        t = marketdata_pb2.Tick(instrument=PERPS[j][0], price=prices[j], bid=prices[j], ask=prices[j], sequence=i)
        t.meta.event_time_ms = T0_MS + i
        out.append((PERPS[j][0].encode(), t.SerializeToString()))
    return out


class Counting(NullMetrics):
    def __init__(self) -> None:
        self.ticks_seen = 0
        self.lag_s = 0.0

    def ticks(self, report, source) -> None:
        if source == "ticks":
            self.ticks_seen += report.accepted + report.ignored + len(report.rejected)

    def lag(self, lag_seconds: float) -> None:
        self.lag_s = lag_seconds


def build(bootstrap: str, prefix: str, mode: str):
    settings = load(RiskParamsSettings, {**ENV, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "MF_TOPIC_PREFIX": prefix})
    universe = load_universe(None, T0_MS)
    unds = ("BTC", "ETH", "SOL")
    engine = RiskEngine(engine_config(settings, unds), Market.from_universe(universe, unds))
    topics = Topics(prefix)
    cfg = FaustConfig(app_id=f"{prefix}riskparams-bench", bootstrap_servers=(bootstrap,), ticks_topic=topics.ticks,
                      marks_topic=topics.marks, partitions=2, tick_consumer=mode, publish_interval_s=1.0,
                      commit_interval_s=1.0)
    app, table = create_app(cfg)
    metrics = Counting()
    versions: list = []

    class Pub:
        def publish(self, v):
            versions.append(v.version)

    class Dlq:
        def reject(self, *a):
            pass

    service = RiskParamsService(engine, decode_ticks=decode_ticks, decode_marks=decode_marks,
                                store=FaustTableStore(table), publisher=Pub(), dead_letters=Dlq(), metrics=metrics,
                                clock_ms=lambda: int(time.time() * 1000), ticks_topic=topics.ticks)
    lag = {"records": 0}
    runner = RiskParamsFaust(app, table, service, cfg, on_consumer_lag=lambda n: lag.__setitem__("records", n))
    return runner, metrics, versions, lag


def produce(bootstrap: str, topic: str, values: list[tuple[bytes, bytes]]) -> None:
    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=512 * 1024)
    for k, v in values:
        p.send(topic, key=k, value=v)
    p.flush()
    p.close()


def paced_producer(bootstrap: str, topic: str, rate: int, seconds: float, start: int) -> None:
    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=512 * 1024)
    step = rate // 10
    values = tick_values(int(rate * seconds), start=start)
    t_start = time.monotonic()
    for k in range(0, len(values), step):
        for key, val in values[k:k + step]:
            p.send(topic, key=key, value=val)
        target = t_start + (k + step) / rate
        delay = target - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    p.flush()
    p.close()


async def drain(bootstrap: str, n: int, mode: str) -> dict:
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    ensure_topics(bootstrap, platform_topics(Topics(prefix), 2))
    produce(bootstrap, Topics(prefix).ticks, tick_values(n))
    runner, metrics, versions, _ = build(bootstrap, prefix, mode)
    stop = False
    task = asyncio.create_task(runner.run(lambda: stop))
    t_first = None
    deadline = time.monotonic() + 300
    while metrics.ticks_seen < n and time.monotonic() < deadline:
        if t_first is None and metrics.ticks_seen > 0:
            t_first, seen_first = time.perf_counter(), metrics.ticks_seen
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - t_first
    stop = True
    await task
    return {"ticks": metrics.ticks_seen - seen_first, "seconds": elapsed, "versions": len(versions)}


async def paced(bootstrap: str, rate: int, seconds: float) -> dict:
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    ensure_topics(bootstrap, platform_topics(Topics(prefix), 2))
    runner, metrics, versions, lag = build(bootstrap, prefix, "bulk")
    stop = False
    task = asyncio.create_task(runner.run(lambda: stop))
    await runner.recovered.wait()
    await asyncio.sleep(2.0)
    proc = multiprocessing.get_context("spawn").Process(
        target=paced_producer, args=(bootstrap, Topics(prefix).ticks, rate, seconds, 0))
    proc.start()
    samples = []
    t0 = time.monotonic()
    while proc.is_alive() or metrics.ticks_seen < int(rate * seconds):
        await asyncio.sleep(1.0)
        samples.append((time.monotonic() - t0, metrics.ticks_seen, lag["records"], metrics.lag_s))
        if time.monotonic() - t0 > seconds + 60:
            break
    proc.join()
    stop = True
    await task
    return {"samples": samples, "ticks": metrics.ticks_seen, "versions": len(versions),
            "wall": samples[-1][0] if samples else 0.0}


def baseline(n: int) -> dict:
    settings = load(RiskParamsSettings, ENV)
    universe = load_universe(None, T0_MS)
    unds = ("BTC", "ETH", "SOL")
    engine = RiskEngine(engine_config(settings, unds), Market.from_universe(universe, unds))

    class Nop:
        def write(self, c): pass
        def items(self): return {}
        def publish(self, v): pass
        def reject(self, *a): pass

    svc = RiskParamsService(engine, decode_ticks=decode_ticks, decode_marks=decode_marks, store=Nop(), publisher=Nop(),
                            dead_letters=Nop(), metrics=NullMetrics(), clock_ms=lambda: 0)
    values = [v for _, v in tick_values(n)]
    t = time.perf_counter()
    for k in range(0, n, 5000):
        svc.on_ticks(values[k:k + 5000])
        if k % 50_000 == 0:
            svc.checkpoint()
            svc.publish_if_changed()
    return {"ticks": n, "seconds": time.perf_counter() - t}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ticks", type=int, default=400_000)
    ap.add_argument("--agent-ticks", type=int, default=100_000)
    ap.add_argument("--rate", type=int, default=20_000)
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092").split(",")[0]
    import logging
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.ERROR)

    baseline(args.ticks // 2)          # warm-up: lazy imports (arch, scipy), first numpy calls
    base = baseline(args.ticks)
    bulk = asyncio.run(drain(bootstrap, args.ticks, "bulk"))
    agent = asyncio.run(drain(bootstrap, args.agent_ticks, "agent"))
    pace = asyncio.run(paced(bootstrap, args.rate, args.seconds))

    rate = lambda d: d["ticks"] / d["seconds"]  # noqa: E731
    b = rate(base)
    print(f"\nriskparams tick throughput ({os.cpu_count()} cores; ticks 1 ms apart, 1 s sampling interval)\n")
    print(f"{'phase':<44}{'ticks':>10}{'seconds':>9}{'ticks/s':>11}{'vs baseline':>13}")
    for name, d in (("baseline: decode + engine, in process", base),
                    ("riskparams via Kafka, bulk consumer (drain)", bulk),
                    ("riskparams via Kafka, faust agent (drain)", agent)):
        print(f"{name:<44}{d['ticks']:>10,}{d['seconds']:>9.2f}{rate(d):>11,.0f}{rate(d) / b:>12.2f}x")
    print(f"\npaced at {args.rate:,} ticks/s for {args.seconds:.0f} s (bulk consumer): consumer lag per second")
    print(f"{'t (s)':>6}{'processed':>12}{'lag (records)':>15}{'lag (s, broker ts)':>20}")
    for t, seen, lag_records, lag_s in pace["samples"]:
        print(f"{t:>6.1f}{seen:>12,}{lag_records:>15,}{lag_s:>20.3f}")
    s = pace["samples"]
    during = [x for x in s if x[0] <= args.seconds]
    if len(during) >= 4:
        half = len(during) // 2
        first = sum(x[2] for x in during[:half]) / half
        second = sum(x[2] for x in during[half:]) / (len(during) - half)
        print(f"\nmean lag first half {first:,.0f} records, second half {second:,.0f} records "
              f"({'not growing' if second <= max(first * 1.5, args.rate * 0.5) else 'GROWING'})")
    verdict = "meets" if rate(bulk) >= 20_000 else "MISSES"
    print(f"target ≥ 20,000 ticks/s sustained: {rate(bulk):,.0f} ticks/s drained — {verdict} the target; "
          f"bulk / faust-agent = {rate(bulk) / rate(agent):.1f}x")


if __name__ == "__main__":
    main()
