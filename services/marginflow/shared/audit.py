"""The audit trail: admin calls as AuditEvents on the compacted, never-expiring ``audit.events`` topic.

The auth interceptor (``shared.security``) hands every audited call to a sink; :class:`KafkaAuditSink`
publishes it (key = event id, so compaction keeps every event). The producer is made on the first
event, so a service that never sees an admin call never connects for it. :func:`read_audit` reads
the trail back for ``marginflow audit``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from marginflow.api.audit.v1 import audit_pb2
from marginflow.shared.logs import get_logger
from marginflow.shared.security import AuditRecord

log = get_logger(__name__)


def to_proto(event: AuditRecord) -> audit_pb2.AuditEvent:
    p = event.principal
    return audit_pb2.AuditEvent(
        event_id=event.event_id, time_ms=event.time_ms, service=event.service, method=event.method,
        principal_id=p.id, role=p.role, account_id=p.account, via=p.via, peer=event.peer,
        request_summary=event.request_summary, result_code=event.result_code, result_detail=event.result_detail)


class KafkaAuditSink:
    """AuditSink onto Kafka; ``make_producer()`` gives a kafka-python KafkaProducer."""

    def __init__(self, topic: str, make_producer: Callable[[], object]) -> None:
        self.topic = topic
        self._make = make_producer
        self._producer = None
        self._lock = threading.Lock()

    def record(self, event: AuditRecord) -> None:
        with self._lock:
            if self._producer is None:
                self._producer = self._make()
            producer = self._producer
        message = to_proto(event)
        future = producer.send(self.topic, key=event.event_id.encode(), value=message.SerializeToString())
        future.add_errback(lambda exc: log.error("audit event not written", extra={
            "event_id": event.event_id, "method": event.method, "error": str(exc)}))
        log.info("audit", extra={"event_id": event.event_id, "method": event.method, "principal": event.principal.id,
                                 "role": event.principal.role, "result": event.result_code})

    def flush(self, timeout_s: float = 10.0) -> None:
        with self._lock:
            producer = self._producer
        if producer is not None:
            producer.flush(timeout_s)

    def close(self) -> None:
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            producer.flush(10.0)
            producer.close(10.0)


def read_audit(bootstrap: str, topic: str, timeout_s: float = 30.0, **client_options) -> list[audit_pb2.AuditEvent]:
    """Every event on the audit topic, oldest first."""
    from marginflow.shared.kafka import read_compacted

    events = read_compacted(bootstrap, topic, audit_pb2.AuditEvent, "marginflow-audit-reader",
                            timeout_s=timeout_s, **client_options)
    return sorted(events.values(), key=lambda e: (e.time_ms, e.event_id))
