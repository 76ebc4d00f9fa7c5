"""Helpers of the portfolio integration tests (a module name of its own: test dirs have no packages)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable

import redis

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """A redis-server of this test alone (no persistence: a restart comes back empty)."""

    def __init__(self, tmp_path) -> None:
        self.port = _free_port()
        self.dir = tmp_path
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen([shutil.which("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no", "--dir", str(self.dir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        wait_for(lambda: _pings(client), timeout_s=10, what="private redis up")
        client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
