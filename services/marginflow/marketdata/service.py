"""Wiring of the marketdata service: settings → universe → adapters → application → run loop."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

from marginflow.api.marketdata.v1 import marketdata_pb2_grpc
from marginflow.marketdata.adapters.grpc_api import MarketDataServicer
from marginflow.marketdata.adapters.kafka_io import KafkaMarketSink, last_marks
from marginflow.marketdata.adapters.metrics import MarketDataMetrics
from marginflow.marketdata.adapters.replay import BadRow, read_ticks
from marginflow.marketdata.application import MarketDataApp, paced
from marginflow.marketdata.domain.marks import MarkConfig, MarkEngine
from marginflow.marketdata.domain.simulator import MarketSimulator, SimConfig
from marginflow.marketdata.domain.ticks import RawTick
from marginflow.marketdata.domain.validation import TickValidator, ValidationConfig
from marginflow.marketdata.settings import MarketDataSettings
from marginflow.shared.clock import SystemClock
from marginflow.shared.config import ConfigError
from marginflow.shared.kafka import DeadLetterSink, ProtoProducer, ensure_topics, new_producer, platform_topics
from marginflow.shared.host import Every, ServiceHost, ServiceLoop
from marginflow.shared.lifecycle import Lifecycle
from marginflow.shared.logs import get_logger
from marginflow.shared.service import run_service
from marginflow.shared.universe import UniverseError, platform_universe

log = get_logger("marketdata")

REPLAY_BATCH = 2000
# Producer flush interval of the source loop: bounds how long a tick waits in the client's buffer.
FLUSH_INTERVAL_S = 0.05


def replay_batches(app: MarketDataApp, path: str) -> Iterator[list[RawTick]]:
    """Batches of parsed rows; malformed rows are dead-lettered as they are met."""
    rows = read_ticks(path)
    while True:
        chunk = list(itertools.islice(rows, REPLAY_BATCH))
        if not chunk:
            return
        batch: list[RawTick] = []
        for row in chunk:
            if isinstance(row, BadRow):
                app.bad_row(row.line, row.text, row.reason)
            else:
                batch.append(row)
        # Pacing works per batch: split where event time jumps by more than a second.
        start = 0
        for i in range(1, len(batch)):
            if batch[i].event_time_ms - batch[start].event_time_ms > 1000:
                yield batch[start:i]
                start = i
        if batch[start:]:
            yield batch[start:]


def sim_batches(sim: MarketSimulator, block_steps: int) -> Iterator[list[RawTick]]:
    while True:
        yield sim.next_block(block_steps)


def main(settings: MarketDataSettings, lifecycle: Lifecycle) -> None:
    clock = SystemClock()
    common = settings.common
    try:
        universe = platform_universe(common, clock.now_ms())
    except UniverseError as exc:
        raise ConfigError(f"MF_UNIVERSE_FILE: {exc}") from None
    topics = common.topics
    ensure_topics(common.bootstrap, platform_topics(topics, common.topic_partitions))
    producer = ProtoProducer(new_producer(common.bootstrap, "marketdata", linger_ms=10), "marketdata")
    dlq = DeadLetterSink(producer, topics.ticks_dlq, "marketdata")
    sink = KafkaMarketSink(producer, dlq, topics.ticks, topics.marks,
                           source_topic_label=f"replay:{settings.replay_file}" if settings.source == "replay" else "simulator")
    validator = TickValidator(universe, ValidationConfig(jump_threshold=settings.jump_threshold,
                                                         confirm_ticks=settings.confirm_ticks,
                                                         hold_max_ms=settings.jump_hold_ms))
    marks = MarkEngine(universe, MarkConfig(basis_half_life_ms=settings.basis_half_life_ms,
                                            interval_ms=settings.mark_interval_ms,
                                            depth_buckets_bps=settings.depth_buckets_bps))
    app = MarketDataApp(validator, marks, sink, clock)
    app.metrics = MarketDataMetrics(lambda: app.marks.latest)
    previous = last_marks(common.bootstrap, topics.marks)
    app.restore(previous)
    log.info("restored", extra={"instruments": len(previous)})

    host = ServiceHost("marketdata", common)
    host.serve_metrics(settings.metrics_port)
    host.serve_grpc(settings.grpc_port, [(marketdata_pb2_grpc.add_MarketDataServiceServicer_to_server,
                                          MarketDataServicer(universe, app), "marginflow.marketdata.v1.MarketDataService")])
    host.on_close("flush", app.flush)
    host.on_close("close producer", producer.close)
    lifecycle.on_stop("close", host.close)
    host.set_ready(True, "marks restored")
    log.info("serving", extra={"grpc_port": host.grpc_port, "metrics_port": host.metrics_port,
                               "source": settings.source, "instruments": len(universe.instruments)})

    if settings.source == "replay":
        if not settings.replay_file:
            raise ConfigError("MF_MD_REPLAY_FILE is required when MF_MD_SOURCE=replay")
        batches: Iterator[list[RawTick]] = replay_batches(app, settings.replay_file)
    else:
        last_time = max((m.event_time_ms for m in previous.values()), default=0)
        start = max(clock.now_ms(), last_time + settings.sim_step_ms)
        start_prices = {m.underlying: m.index_price for s, m in previous.items() if s.startswith("index:")}
        sim = MarketSimulator(universe, SimConfig(seed=settings.sim_seed, step_ms=settings.sim_step_ms,
                                                       book_levels=settings.sim_book_levels), start,
                              start_prices)
        batches = sim_batches(sim, settings.sim_block_steps)

    released = paced(batches, settings.speed, time.monotonic, time.sleep, lifecycle.stopping.is_set)

    def turn() -> int | None:
        batch = next(released, None)
        if batch is None:
            return None   # the replay is exhausted (or a stop was requested while pacing)
        app.process(batch)
        return len(batch)

    ServiceLoop("marketdata", turn, every=[Every(FLUSH_INTERVAL_S, app.flush)]).run(lifecycle.stopping)
    app.flush()
    log.info("source ended", extra={"ticks_in": app.totals.ticks_in, "accepted": app.totals.accepted,
                                    "rejected": app.totals.rejected, "marks": app.totals.marks})
    if not lifecycle.stopping.is_set() and not settings.exit_at_end:
        lifecycle.wait()   # keep serving gRPC (latest marks) until told to stop


def run() -> None:
    run_service("marketdata", MarketDataSettings, main)
