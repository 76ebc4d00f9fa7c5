"""Kafka side of riskparams besides faust: the publisher of versions and the dead-letter port."""

from __future__ import annotations

from marginflow.riskparams.adapters.codec import to_proto
from marginflow.riskparams.adapters.grpc_api import ParamsHub
from marginflow.riskparams.application import RiskParamsVersion
from marginflow.shared.errors import Rejected
from marginflow.shared.kafka import DeadLetterSink, ProtoProducer

# Key of the one record of the compacted risk.params topic: the current version.
PARAMS_KEY = "current"


class KafkaParamsPublisher:
    """Publisher port: each version to risk.params (compacted, key "current") and to the hub."""

    def __init__(self, producer: ProtoProducer, topic: str, hub: ParamsHub, source: str = "riskparams") -> None:
        self._producer = producer
        self._topic = topic
        self._hub = hub
        self._source = source

    def publish(self, version: RiskParamsVersion) -> None:
        msg = to_proto(version, source=self._source)
        self._producer.send(self._topic, PARAMS_KEY, msg)
        self._hub.set(msg)


class DeadLetterPort:
    """Dead-letter port of the application: a refused raw record with its reason."""

    def __init__(self, sink: DeadLetterSink) -> None:
        self._sink = sink

    def reject(self, source_topic: str, key: bytes | None, payload: bytes, error: Rejected) -> None:
        self._sink.publish(error.code, error.detail, payload=payload or b"", key=key, source_topic=source_topic)
