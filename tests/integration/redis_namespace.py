"""A test's Redis namespace removed (the "flush" of one test: other tests' keys stay)."""

from __future__ import annotations

import redis


def clear_namespace(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.unlink(*keys)
    finally:
        client.close()
