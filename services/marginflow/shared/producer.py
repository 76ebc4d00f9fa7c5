"""The platform's Kafka producer: librdkafka (confluent-kafka) behind the small surface the services use.

kafka-python builds, checksums and sends every record in Python: ~30 µs a record on the loop's thread and
as much again on its sender thread, both under the GIL. librdkafka does that work in C threads of its own;
queuing a record costs ~1 µs. Measured on the 2-core development VM, 2,000 records of 300 bytes with
acks=all: kafka-python 150 ms from the first send to the last acknowledgement, librdkafka 5–8 ms.

:class:`Producer` keeps the calls the services were written against (``send(topic, key=, value=,
partition=)`` returning a future with ``get(timeout)``, ``is_done``, ``failed()``, ``add_errback``;
``flush(timeout)``, ``partitions_for``, ``close``) and kafka-python's error classes: a broker's refusal is
the ``kafka.errors`` class of its code (``TopicAuthorizationFailedError`` …), a wait that runs out is
``KafkaTimeoutError``. Keys go to the partition Kafka's Java client and kafka-python pick
(``murmur2_random``: murmur2 of the key; a record without a key anywhere).

Settings: acks=all and idempotence (librdkafka retries a failed request without duplicating or reordering
a record); a record not acknowledged within ``delivery_timeout_ms`` (120 s, kafka-python's default) fails
its future. librdkafka's own log lines go to the ``librdkafka`` logger.

Delivery reports are handed over by ``poll``/``flush`` on the calling thread: every send serves those due,
and a wait on a future polls until that future is settled.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import confluent_kafka
from kafka import errors as kafka_errors

_LOG = logging.getLogger("librdkafka")

# kafka-python keyword arguments the services pass → librdkafka properties.
_PROPERTIES = {
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanisms",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
    "ssl_password": "ssl.key.password",
    "max_request_size": "message.max.bytes",
    "request_timeout_ms": "request.timeout.ms",
    "delivery_timeout_ms": "message.timeout.ms",
    "batch_size": "batch.size",
    "linger_ms": "linger.ms",
    "fetch_max_wait_ms": "fetch.wait.max.ms",
}
DELIVERY_TIMEOUT_MS = 120_000
# How long a send waits for room in librdkafka's queue, and partitions_for for metadata (kafka-python's
# max_block_ms default).
MAX_BLOCK_MS = 60_000
# A wait on a future polls in steps this long (s): a report is served within it.
_POLL_STEP_S = 0.05


def kafka_error(err: confluent_kafka.KafkaError) -> kafka_errors.KafkaError:
    """librdkafka's error as kafka-python's class: a broker error code maps to its class, a local timeout to
    KafkaTimeoutError, any other local error to KafkaError with librdkafka's text."""
    code = err.code()
    if code > 0:
        cls = kafka_errors.for_code(code)
        return cls(err.str())
    if code in (confluent_kafka.KafkaError._MSG_TIMED_OUT, confluent_kafka.KafkaError._TIMED_OUT):
        return kafka_errors.KafkaTimeoutError(err.str())
    return kafka_errors.KafkaError(f"{err.name()}: {err.str()}")


class Delivery:
    """The future of one record: settled by its delivery report."""

    __slots__ = ("_producer", "_settled", "_error", "_errbacks", "topic", "partition", "offset")

    def __init__(self, producer: "Producer") -> None:
        self._producer = producer
        self._settled = False
        self._error: Exception | None = None
        self._errbacks: list[Callable[[Exception], None]] | None = None
        self.topic = ""
        self.partition = -1
        self.offset = -1

    def _report(self, err, msg) -> None:
        self._settled = True
        if err is not None:
            self._error = kafka_error(err)
            for fn in self._errbacks or ():
                fn(self._error)
        else:
            self.topic, self.partition, self.offset = msg.topic(), msg.partition(), msg.offset()
        self._errbacks = None

    @property
    def is_done(self) -> bool:
        return self._settled

    def failed(self) -> bool:
        return self._settled and self._error is not None

    def get(self, timeout: float | None = None) -> "Delivery":
        """Wait for the acknowledgement (at most ``timeout`` s); raise the record's error. Returns self
        (``topic``, ``partition``, ``offset`` of the record as written)."""
        if not self._settled:
            self._producer._await(self, timeout)
        if self._error is not None:
            raise self._error
        return self

    def add_errback(self, fn: Callable[[Exception], None]) -> "Delivery":
        """``fn(error)`` once the record has failed (at once if it has)."""
        if self._settled:
            if self._error is not None:
                fn(self._error)
        else:
            self._errbacks = [*(self._errbacks or ()), fn]
        return self


def rdkafka_properties(options: dict[str, Any], what: str = "producer") -> dict[str, Any]:
    """``options`` by their kafka-python names (:data:`_PROPERTIES`) as librdkafka properties; any other
    name is refused."""
    config: dict[str, Any] = {}
    for name, value in options.items():
        prop = _PROPERTIES.get(name)
        if prop is None:
            raise ValueError(f"unknown {what} option {name!r} (known: {', '.join(sorted(_PROPERTIES))})")
        if name in ("security_protocol", "sasl_mechanism"):
            value = str(value).upper()
        config[prop] = value
    return config


def producer_config(bootstrap: str, client_id: str, **options: Any) -> dict[str, Any]:
    """librdkafka properties of a producer: the platform's settings, then ``options`` by their kafka-python
    names (:func:`rdkafka_properties`)."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap, "client.id": client_id, "acks": "all", "enable.idempotence": True,
        "partitioner": "murmur2_random", "compression.type": "none",
        "message.timeout.ms": DELIVERY_TIMEOUT_MS, "logger": _LOG,
    }
    config.update(rdkafka_properties(options))
    if "message.max.bytes" in config:
        config["message.max.bytes"] = int(config["message.max.bytes"])
        config["batch.size"] = min(int(config.get("batch.size", 1_000_000)), config["message.max.bytes"])
    return config


class Producer:
    """A librdkafka producer with kafka-python's calls (see the module's docstring)."""

    def __init__(self, bootstrap: str, client_id: str, *, max_block_ms: int = MAX_BLOCK_MS,
                 **options: Any) -> None:
        config = producer_config(bootstrap, client_id, **options)
        self.max_block_s = max_block_ms / 1000.0
        try:
            self._p = confluent_kafka.Producer(config)
        except confluent_kafka.KafkaException as exc:   # a property librdkafka refuses (a CA file it cannot read)
            raise kafka_errors.KafkaConfigurationError(f"Kafka producer {client_id!r}: {exc.args[0].str()}") from None
        self.config = {k: v for k, v in config.items() if k not in ("sasl.password", "ssl.key.password", "logger")}
        self._closed = False

    # ---- sending
    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
             partition: int | None = None) -> Delivery:
        """Queue one record; its future settles on the broker's acknowledgement (or the error)."""
        if self._closed:
            raise kafka_errors.KafkaError("producer is closed")
        delivery = Delivery(self)
        produce, report = self._p.produce, delivery._report
        deadline = None
        while True:
            try:
                if partition is None:
                    produce(topic, value, key, on_delivery=report)
                else:
                    produce(topic, value, key, partition, on_delivery=report)
                break
            except BufferError:   # librdkafka's queue is full: wait for room as kafka-python blocks
                now = time.monotonic()
                deadline = deadline or now + self.max_block_s
                if now >= deadline:
                    raise kafka_errors.KafkaTimeoutError(
                        f"no room in the producer's queue after {self.max_block_s:.0f} s") from None
                self._p.poll(_POLL_STEP_S)
            except confluent_kafka.KafkaException as exc:
                raise kafka_error(exc.args[0]) from None
        self._p.poll(0)
        return delivery

    def _await(self, delivery: Delivery, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not delivery._settled:
            step = _POLL_STEP_S
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise kafka_errors.KafkaTimeoutError(f"record not acknowledged within {timeout} s")
                step = min(step, left)
            self._p.poll(step)

    def flush(self, timeout: float | None = None) -> None:
        """Send everything queued and wait for the acknowledgements (their futures settle); KafkaTimeoutError
        if some are still outstanding after ``timeout`` s."""
        left = self._p.flush(-1 if timeout is None else timeout)
        if left:
            raise kafka_errors.KafkaTimeoutError(f"{left} records not acknowledged within {timeout} s")

    # ---- metadata
    def partitions_for(self, topic: str) -> set[int]:
        """The topic's partition numbers (its metadata, waited for at most max_block_ms)."""
        try:
            md = self._p.list_topics(topic, timeout=self.max_block_s)
        except confluent_kafka.KafkaException as exc:
            raise kafka_error(exc.args[0]) from None
        meta = md.topics.get(topic)
        if meta is None:
            raise kafka_errors.UnknownTopicOrPartitionError(topic)
        if meta.error is not None:
            raise kafka_error(meta.error)
        return set(meta.partitions)

    def close(self, timeout: float | None = 10.0) -> None:
        """Send what is queued (at most ``timeout`` s; what is left is dropped, its futures fail); no sends
        after."""
        if self._closed:
            return
        self._closed = True
        self._p.flush(-1 if timeout is None else timeout)
        left = len(self._p)
        if left:
            self._p.purge()
            self._p.poll(0)
            _LOG.warning("producer closed with records not acknowledged", extra={"records": left})
