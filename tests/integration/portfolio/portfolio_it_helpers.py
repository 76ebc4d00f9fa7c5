"""Helpers of the portfolio integration tests (a module name of its own: test dirs have no packages)."""

from __future__ import annotations

import time
from collections.abc import Callable

from kafka import KafkaConsumer, TopicPartition

from marginflow.api.common.v1 import common_pb2

ADMIN_TOKEN = "test-admin-token"


def wait_for(predicate: Callable[[], object], timeout_s: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def read_topic(bootstrap: str, topic: str, message_type, count: int | None = None, timeout_s: float = 20.0) -> list:
    """Records of ``topic`` (all partitions), decoded: the first ``count``, or (None) all up to its end now."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        parts = wait_for(lambda: consumer.partitions_for_topic(topic), what=f"partitions of {topic}")
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        out: list = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if count is not None and len(out) >= count:
                break
            if count is None and all(consumer.position(tp) >= end[tp] for tp in tps):
                break
            for records in consumer.poll(timeout_ms=200).values():
                out.extend(message_type.FromString(r.value) for r in records)
        return out
    finally:
        consumer.close()


def dec(text: str) -> common_pb2.Decimal:
    return common_pb2.Decimal(value=text)
