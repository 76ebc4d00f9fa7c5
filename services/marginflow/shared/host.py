"""The service host: what every marginflow process does the same way, written once.

* **gRPC** with health checking and reflection; the health status is NOT_SERVING until the
  application says it is ready (:meth:`ServiceHost.set_ready`), and again NOT_SERVING while it is
  not (a rebuild after a rebalance, a restart still reading its state topics).
* **/metrics** on the service's port.
* **The service loop** (:class:`ServiceLoop`): repeat one *turn* (poll → decode → route to the
  application → commit) until told to stop, with periodic jobs between turns; an infrastructure
  failure inside a turn is logged, the turn's ``recover`` runs, and the loop retries after a pause.
  :func:`consume_turn` is the turn of a plain Kafka consumer.
* **Orderly stop** (dYdX indexer style): the loop stops consuming, then gRPC drains with grace,
  then the close steps run in the order they were registered (flush producers, close clients);
  a failing step is logged and the later ones still run.

A service's ``service.py`` builds its adapters and application, registers them with a host, and
runs its loop; ``run_service`` (``shared.service``) gives it settings, logs and signals.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence

from grpc_health.v1 import health_pb2

from marginflow.shared import grpcserver
from marginflow.shared.config import CommonSettings
from marginflow.shared.kafka import Decoded, ProtoConsumer
from marginflow.shared.lifecycle import loop_in_thread, run_steps
from marginflow.shared.logs import get_logger
from marginflow.shared.metrics import serve_metrics

log = get_logger(__name__)


class ServiceHost:
    """gRPC, metrics, readiness and the close steps of one service process."""

    def __init__(self, name: str, common: CommonSettings) -> None:
        self.name = name
        self.common = common
        self.grpc_port = 0
        self.metrics_port = 0
        self._server = None
        self._health = None
        self._service_names: list[str] = []
        self._ready = threading.Event()
        self._closers: list[tuple[str, Callable[[], object]]] = []
        self._closed = False
        self._lock = threading.Lock()

    # ---- serving
    def serve_grpc(self, port: int, registrations: Sequence[grpcserver.Registration], max_workers: int = 16) -> int:
        """Start the gRPC server; health reports NOT_SERVING until :meth:`set_ready`."""
        self._server, self.grpc_port, self._health = grpcserver.build_server(
            self.name, port, registrations, host=self.common.bind_host, max_workers=max_workers, serving=False,
            security=self.common.security, audit=self._audit_sink())
        self._service_names = ["", *(full_name for _add, _servicer, full_name in registrations)]
        self._publish_health()
        return self.grpc_port

    def _audit_sink(self):
        """Admin calls go to the audit topic; the producer connects on the first one."""
        from marginflow.shared.audit import KafkaAuditSink
        from marginflow.shared.kafka import new_producer

        sink = KafkaAuditSink(self.common.topics.audit,
                              lambda: new_producer(self.common.bootstrap, f"{self.name}-audit", linger_ms=0))
        self.on_close("close audit producer", sink.close)
        return sink

    def serve_metrics(self, port: int) -> int:
        self.metrics_port = serve_metrics(port, self.common.bind_host)
        return self.metrics_port

    # ---- readiness
    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def set_ready(self, ready: bool, why: str = "") -> None:
        """The application's word on whether what it serves is complete; health follows it."""
        if ready == self._ready.is_set():
            return
        if ready:
            self._ready.set()
        else:
            self._ready.clear()
        log.info("ready" if ready else "not ready", extra={"service": self.name, "why": why})
        self._publish_health()

    def wait_ready(self, timeout_s: float) -> bool:
        return self._ready.wait(timeout_s)

    def _publish_health(self) -> None:
        if self._health is None or self._closed:
            return
        status = health_pb2.HealthCheckResponse.SERVING if self.ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in self._service_names:
            self._health.set(name, status)

    # ---- stopping
    def on_close(self, name: str, step: Callable[[], object]) -> None:
        """A close step (flush, close a client), run after gRPC has drained, in registration order."""
        self._closers.append((name, step))

    def stop_grpc(self) -> None:
        """NOT_SERVING, then stop with grace (in-flight calls finish)."""
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            grpcserver.stop(server, self._health, self.common.shutdown_grace_seconds)

    def close(self) -> None:
        """gRPC drained, then every close step once (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.stop_grpc()
        run_steps([step for _name, step in self._closers], what=f"{self.name} close step")


@dataclasses.dataclass(frozen=True)
class Every:
    """A periodic job of the service loop: ``job()`` at most every ``seconds`` (monotonic time)."""

    seconds: float
    job: Callable[[], object]


class ServiceLoop:
    """The one loop of a service: ``turn()`` until stopping, periodic jobs between turns.

    ``turn`` returns how many records it handled (None: its source is exhausted, the loop ends). If it raises, the failure is logged, ``recover``
    (if any) runs, and the loop waits ``retry_seconds`` before the next turn: a dependency that is
    down (Kafka, Redis) stalls the service instead of killing it, and nothing is committed that
    was not handled. Periodic jobs run after every turn, failed or not. ``on_idle`` runs once after
    the first turn that handled nothing (caught up).
    """

    def __init__(self, name: str, turn: Callable[[], int | None], every: Sequence[Every] = (),
                 recover: Callable[[BaseException], None] | None = None, retry_seconds: float = 1.0,
                 on_idle: Callable[[], None] | None = None, before: Callable[[], None] | None = None) -> None:
        self.name = name
        self._turn = turn
        self._every = list(every)
        self._recover = recover
        self._retry_seconds = retry_seconds
        self._on_idle = on_idle
        self._before = before
        self.turns = 0
        self.handled = 0

    def run(self, stopping: threading.Event) -> None:
        if self._before is not None:
            self._before()
        last = [time.monotonic()] * len(self._every)
        idle_done = self._on_idle is None
        while not stopping.is_set():
            try:
                n = self._turn()
                if n is None:
                    return   # the turn's source is exhausted (a replay that ended)
            except Exception as exc:  # noqa: BLE001 - the service keeps running; the turn is retried
                log.exception("service loop turn failed; retrying", extra={"loop": self.name})
                if self._recover is not None:
                    try:
                        self._recover(exc)
                    except Exception:  # noqa: BLE001 - recovery is best effort; the retry follows
                        log.exception("recovery after a failed turn failed", extra={"loop": self.name})
                stopping.wait(self._retry_seconds)
                n = -1
            if n >= 0:
                self.turns += 1
                self.handled += n
                if not idle_done and n == 0:
                    idle_done = True
                    self._on_idle()
            now = time.monotonic()
            for i, every in enumerate(self._every):
                if now - last[i] >= every.seconds:
                    last[i] = now
                    try:
                        every.job()
                    except Exception:  # noqa: BLE001 - a periodic job must not stop the loop
                        log.warning("periodic job failed", extra={"loop": self.name}, exc_info=True)

    def run_in_thread(self) -> tuple[threading.Thread, threading.Event]:
        return loop_in_thread(self.run, f"{self.name}-loop")


def consume_turn(consumer: ProtoConsumer, route: Callable[[list[Decoded]], object], *, commit: bool = True,
                 timeout_ms: int = 200, max_records: int = 5000) -> Callable[[], int]:
    """The turn of a plain Kafka consumer: poll, decode (undecodable → dead letter), route the
    batch to the application, then commit (after the application handled it, never before)."""

    def turn() -> int:
        records = consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        if records:
            route(records)
            if commit:
                consumer.commit()
        return len(records)

    return turn
