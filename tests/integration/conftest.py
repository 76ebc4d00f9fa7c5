"""Helpers for integration tests against the real Kafka and Redis."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition


def consume_all(bootstrap: str, topic: str, expect_at_least: int = 0, timeout_s: float = 20.0) -> list:
    """Every record of ``topic`` from the beginning (waits until ``expect_at_least`` arrived)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        deadline = time.monotonic() + timeout_s
        parts = None
        while time.monotonic() < deadline and not parts:
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                time.sleep(0.2)
        if not parts:
            return []
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list = []
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=300).values():
                out.extend(records)
            end = consumer.end_offsets(tps)
            if len(out) >= expect_at_least and all(consumer.position(tp) >= end[tp] for tp in tps):
                break
        return out
    finally:
        consumer.close()


@pytest.fixture(name="consume_all")
def consume_all_fixture():
    return consume_all


@pytest.fixture
def run_module(test_env):
    """Run ``python -m <module> args`` with the test's environment; returns CompletedProcess."""

    def run(module: str, *args: str, extra_env: dict[str, str] | None = None, timeout: float = 120.0):
        env = {**os.environ, **test_env, **(extra_env or {})}
        return subprocess.run([sys.executable, "-m", module, *args], env=env, capture_output=True, text=True,
                              timeout=timeout)

    return run


def produce_compressed(bootstrap: str, topic: str, key: bytes | None, value: bytes) -> None:
    """Publish one record gzip-compressed, so a payload over the broker's 1 MiB batch limit (the
    limit applies to the compressed batch) reaches the consumers, as a bad producer's could."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, compression_type="gzip", max_request_size=8 * 1024 * 1024,
                             acks="all")
    try:
        producer.send(topic, key=key, value=value).get(timeout=30)
    finally:
        producer.close()


@pytest.fixture(name="produce_compressed")
def produce_compressed_fixture():
    return produce_compressed
