"""Redis connection from settings, with a readiness wait (Redis is the fast cache, never the only copy)."""

from __future__ import annotations

import time

import redis


def connect(url: str, timeout_s: float = 30.0) -> redis.Redis:
    client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.ping()
            return client
        except redis.ConnectionError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"cannot reach Redis at {url}: {exc}") from exc
            time.sleep(0.2)
