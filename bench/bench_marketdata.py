"""marketdata throughput: simulated ticks validated, marked and published to the real Kafka.

Baseline, in the same run: kafka-python publishing the same already-serialised Tick payloads
(the ceiling the client allows on this machine). Reported: ticks/s of each stage and the ratio
of the whole pipeline to the baseline. Target: ≥ 20,000 validated ticks/s published.
"""

from __future__ import annotations

import os
import time
import uuid

from marginflow.marketdata.adapters.kafka_io import KafkaMarketSink, tick_to_proto
from marginflow.marketdata.application import MarketDataApp
from marginflow.marketdata.domain.marks import MarkEngine
from marginflow.marketdata.domain.simulator import MarketSimulator, SimConfig
from marginflow.marketdata.domain.validation import TickValidator
from marginflow.shared.clock import SystemClock
from marginflow.shared.config import Topics
from marginflow.shared.kafka import DeadLetterSink, ProtoProducer, ensure_topics, new_producer, platform_topics
from marginflow.shared.universe import load_universe

N_TICKS = int(os.environ.get("BENCH_MD_TICKS", "200000"))
BATCH = 2000


def main() -> None:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")
    start_ms = 1_764_000_000_000
    universe = load_universe(None, start_ms)
    sim = MarketSimulator(universe, SimConfig(seed=1), start_ms)
    t = time.perf_counter()
    ticks = []
    while len(ticks) < N_TICKS:
        ticks += sim.next_block(256)
    ticks = ticks[:N_TICKS]
    sim_rate = N_TICKS / (time.perf_counter() - t)
    batches = [ticks[i:i + BATCH] for i in range(0, N_TICKS, BATCH)]

    # Stage 1: validation + marks, no I/O.
    class Null:
        def publish(self, *a): ...
        def reject(self, *a): ...
        def reject_row(self, *a): ...
        def flush(self): ...

    app = MarketDataApp(TickValidator(universe), MarkEngine(universe), Null(), SystemClock())
    t = time.perf_counter()
    for b in batches:
        app.process(b)
    domain_rate = N_TICKS / (time.perf_counter() - t)

    topics = Topics(f"bench{uuid.uuid4().hex[:6]}.")
    ensure_topics(bootstrap, platform_topics(topics, 4))

    # Baseline: the client alone, pre-serialised payloads.
    validator = TickValidator(universe)
    payloads = [(a.tick.instrument.encode(), tick_to_proto(a, 0).SerializeToString())
                for b in batches for a in validator.process(b).accepted]
    raw = new_producer(bootstrap, "bench-raw", linger_ms=10)
    t = time.perf_counter()
    for key, value in payloads:
        raw.send(topics.name("raw.ticks"), key=key, value=value)
    raw.flush()
    raw_rate = len(payloads) / (time.perf_counter() - t)
    raw.close()

    # The pipeline as the service runs it.
    producer = ProtoProducer(new_producer(bootstrap, "bench-md", linger_ms=10), "bench")
    sink = KafkaMarketSink(producer, DeadLetterSink(producer, topics.ticks_dlq, "bench"), topics.ticks, topics.marks)
    app = MarketDataApp(TickValidator(universe), MarkEngine(universe), sink, SystemClock())
    t = time.perf_counter()
    for b in batches:
        app.process(b)
    app.flush()
    pipe_s = time.perf_counter() - t
    pipe_rate = app.totals.accepted / pipe_s
    producer.close()

    print(f"ticks: {N_TICKS:,} simulated ({len(universe.instruments)} instruments), {app.totals.accepted:,} accepted, "
          f"{app.totals.marks:,} marks")
    print(f"{'stage':<44}{'ticks/s':>12}{'vs baseline':>13}")
    print(f"{'simulator generation':<44}{sim_rate:>12,.0f}{sim_rate / raw_rate:>12.2f}x")
    print(f"{'validation + marks (no I/O)':<44}{domain_rate:>12,.0f}{domain_rate / raw_rate:>12.2f}x")
    print(f"{'baseline: kafka-python send, pre-serialised':<44}{raw_rate:>12,.0f}{1.0:>12.2f}x")
    print(f"{'pipeline: validate + mark + serialise + send':<44}{pipe_rate:>12,.0f}{pipe_rate / raw_rate:>12.2f}x")
    print(f"target >= 20,000 validated ticks/s published: {'met' if pipe_rate >= 20_000 else 'NOT met'}")


if __name__ == "__main__":
    main()
