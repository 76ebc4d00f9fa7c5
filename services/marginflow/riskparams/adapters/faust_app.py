"""The faust-streaming application of riskparams: agents, the state table, timers, the tick path.

* State lives in one faust table, ``riskparams-state`` (memory store, changelog topic
  ``<app id>-riskparams-state-changelog`` on Kafka, compacted). At start faust replays the
  changelog into the table; the ``on_recover`` callback then rebuilds the engine from it, so a
  restart resumes the estimates where they stopped. The table uses the partitioner (keys are
  underlying-level, not co-partitioned with the ticks), which also lets the timer and the bulk
  tick task write to it outside a stream.
* md.marks: a faust agent over raw bytes, batched with ``take_events`` (marks are few).
* md.ticks: by default (``MF_RISKPARAMS_TICK_CONSUMER=bulk``) a task of the faust app that reads
  raw batches with aiokafka ``getmany`` and decodes them in bulk. faust's per-record consumer
  path (two asyncio tasks per record in ``Consumer._drain_messages``) measured 9–11k records/s
  on the 2-core dev machine, under the 20k ticks/s target; the bulk path keeps faust for state,
  recovery and timers and does the per-tick work in plain loops. Offsets of the tick group are
  committed every ``MF_RISKPARAMS_COMMIT_INTERVAL_SECONDS`` only after the state changes were
  handed to the changelog producer and flushed (at-least-once; re-delivered ticks are older
  than the sampler's last event time and are dropped as late, so replays do not double-count).
  ``agent`` mode runs a plain faust agent instead (same service calls).
* Publishing: a faust timer builds a version when something changed and publishes it.

Only one instance runs per app id: the correlation needs every underlying in one process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer

from marginflow.riskparams.application import RiskParamsService
from marginflow.shared.logs import get_logger
from marginflow.shared.kafka import aiokafka_options, faust_credentials

log = get_logger(__name__)

TABLE_NAME = "riskparams-state"


@dataclasses.dataclass(frozen=True)
class FaustConfig:
    app_id: str                         # already prefixed
    bootstrap_servers: tuple[str, ...]
    ticks_topic: str
    marks_topic: str
    partitions: int
    web_port: int = 0                   # 0 = faust web server disabled
    tick_consumer: str = "bulk"         # "bulk" | "agent"
    publish_interval_s: float = 1.0
    commit_interval_s: float = 1.0
    tick_batch: int = 5000
    mark_batch: int = 1000
    session_timeout_s: float = 10.0
    instance_id: str | None = None      # static group membership (None: dynamic)


class FaustTableStore:
    """StateStore port on a faust table (values are JSON; ``None`` deletes the key)."""

    def __init__(self, table: Any) -> None:
        self._table = table

    def write(self, changes: Mapping[str, Any]) -> None:
        table = self._table
        for key, value in changes.items():
            if value is None:
                if key in table:
                    del table[key]
            else:
                table[key] = value

    def items(self) -> dict[str, Any]:
        return dict(self._table.items())


def create_app(cfg: FaustConfig) -> tuple[faust.App, Any]:
    """The faust App and its state table (nothing wired yet)."""
    app = faust.App(
        cfg.app_id,
        broker=[f"kafka://{s}" for s in cfg.bootstrap_servers],
        store="memory://",
        datadir=tempfile.mkdtemp(prefix="marginflow-riskparams-faust-"),
        web_enabled=cfg.web_port > 0,
        web_port=cfg.web_port or 6066,
        web_bind="127.0.0.1",
        topic_partitions=cfg.partitions,
        topic_replication_factor=1,
        table_standby_replicas=0,
        consumer_auto_offset_reset="earliest",
        autodiscover=False,
        producer_acks=-1,
        key_serializer="json",          # table keys and values (our topics say "raw" explicitly)
        value_serializer="json",
        broker_credentials=faust_credentials(),
        # A restarted process rejoins its group as the same static member: the coordinator hands it
        # the partitions at once instead of holding the rebalance until the killed member's session
        # expires (faust's default session is 60 s). The shorter session bounds the wait when the
        # instance id is not static; heartbeats at a third of it, as Kafka recommends.
        broker_session_timeout=cfg.session_timeout_s,
        broker_heartbeat_interval=max(1.0, cfg.session_timeout_s / 3),
        consumer_group_instance_id=cfg.instance_id,
    )
    table = app.Table(TABLE_NAME, default=None, partitions=1, use_partitioner=True)
    return app, table


class RiskParamsFaust:
    """Wires a :class:`RiskParamsService` into a faust app; :meth:`run` until ``stopping``."""

    def __init__(self, app: faust.App, table: Any, service: RiskParamsService, cfg: FaustConfig,
                 on_consumer_lag: Callable[[int], None] = lambda n: None) -> None:
        self.app = app
        self.table = table
        self.service = service
        self.cfg = cfg
        self.recovered = asyncio.Event()
        self._on_consumer_lag = on_consumer_lag
        self._stop = asyncio.Event()
        self.tick_loop_done = asyncio.Event()
        ticks = app.topic(cfg.ticks_topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                          value_serializer="raw")
        marks = app.topic(cfg.marks_topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                          value_serializer="raw")

        @table.on_recover
        async def _recovered() -> None:
            if self.recovered.is_set():
                return
            restored = service.restore()
            log.info("state recovered", extra={"restored": restored, "version": service.engine.version,
                                               "keys": len(table)})
            self.recovered.set()

        async def marks_agent(stream: Any) -> None:
            async for events in stream.take_events(cfg.mark_batch, within=0.2):
                self._marks(events)
        self.marks_agent = app.agent(marks, name=f"{cfg.app_id}.marks")(marks_agent)

        if cfg.tick_consumer == "agent":
            async def ticks_agent(stream: Any) -> None:
                async for events in stream.take_events(cfg.tick_batch, within=0.05):
                    self._ticks(events)
            self.ticks_agent = app.agent(ticks, name=f"{cfg.app_id}.ticks")(ticks_agent)
        else:
            self.ticks_agent = None
            app.task(self._bulk_ticks)

        app.timer(cfg.publish_interval_s)(self._publish_tick)

    # ---- agents ----------------------------------------------------------------------------
    def _marks(self, events: list) -> None:
        ts = events[-1].message.timestamp
        self.service.on_marks([e.value for e in events], [e.key for e in events],
                              int(ts * 1000) if ts else None)
        self.service.checkpoint()

    def _ticks(self, events: list) -> None:
        ts = events[-1].message.timestamp
        self.service.on_ticks([e.value for e in events], [e.key for e in events],
                              int(ts * 1000) if ts else None)
        self.service.checkpoint()

    async def _publish_tick(self) -> None:
        if not self.recovered.is_set():
            return
        try:
            self.service.publish_if_changed()
        except Exception:  # noqa: BLE001 - a bad version must not stop the timer
            log.exception("building or publishing a version failed")
        try:
            self.service.refresh_signals()
        except Exception:  # noqa: BLE001 - nor a signal that cannot be computed
            log.exception("computing the signals failed")

    # ---- bulk tick path --------------------------------------------------------------------
    async def _bulk_ticks(self) -> None:
        await self.recovered.wait()
        cfg = self.cfg
        consumer = AIOKafkaConsumer(
            cfg.ticks_topic, bootstrap_servers=list(cfg.bootstrap_servers), group_id=f"{cfg.app_id}-ticks",
            client_id=f"{cfg.app_id}-ticks", enable_auto_commit=False, auto_offset_reset="earliest",
            max_poll_records=cfg.tick_batch, fetch_max_bytes=64 * 1024 * 1024,
            max_partition_fetch_bytes=8 * 1024 * 1024, session_timeout_ms=int(cfg.session_timeout_s * 1000),
            heartbeat_interval_ms=int(max(1.0, cfg.session_timeout_s / 3) * 1000),
            group_instance_id=f"{cfg.instance_id}-ticks" if cfg.instance_id else None, **aiokafka_options())
        await consumer.start()
        log.info("bulk tick consumer started", extra={"topic": cfg.ticks_topic})
        next_commit = time.monotonic() + cfg.commit_interval_s
        try:
            while not self._stop.is_set():
                batches = await consumer.getmany(timeout_ms=100, max_records=cfg.tick_batch)
                for tp, records in batches.items():
                    self.service.on_ticks([r.value for r in records], [r.key for r in records],
                                          records[-1].timestamp)
                    hw = consumer.highwater(tp)
                    if hw is not None:
                        self._on_consumer_lag(max(0, hw - records[-1].offset - 1))
                if time.monotonic() >= next_commit:
                    await self._commit(consumer)
                    next_commit = time.monotonic() + cfg.commit_interval_s
                await asyncio.sleep(0)      # let timers and agents run between batches
        finally:
            try:
                await self._commit(consumer)
            finally:
                await consumer.stop()
                self.tick_loop_done.set()

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        self.service.checkpoint()
        await self.app.producer.flush()     # changelog records are on Kafka before the offsets move
        if consumer.assignment():
            await consumer.commit()

    # ---- run -------------------------------------------------------------------------------
    async def run(self, stopping: Callable[[], bool], started: Callable[[], None] = lambda: None,
                  every_100ms: Callable[[], None] = lambda: None) -> None:
        """Start the app, wait for ``stopping()`` (calling ``every_100ms`` meanwhile), then stop in
        order: consuming, state, app."""
        await self.app.start()
        started()
        try:
            while not stopping():
                every_100ms()
                await asyncio.sleep(0.1)
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        self._stop.set()
        if self.ticks_agent is None and self.recovered.is_set():
            try:
                await asyncio.wait_for(self.tick_loop_done.wait(), 10.0)
            except asyncio.TimeoutError:
                log.warning("bulk tick consumer did not stop within 10 s")
        try:
            if self.recovered.is_set():
                self.service.publish_if_changed()
                self.service.checkpoint()
                await self.app.producer.flush()
        except Exception:  # noqa: BLE001 - stopping goes on
            log.exception("final publish/checkpoint failed")
        await self.app.stop()
        shutil.rmtree(str(self.app.conf.datadir), ignore_errors=True)   # memory store: nothing to keep
