"""Redis of this run: FLUSHALL (never on the shared stack's port)."""

from __future__ import annotations

import redis

from marginflow.chaos.adapters.processes import SHARED_PORTS


def flushall(port: int) -> None:
    if port in SHARED_PORTS:
        raise ValueError("refusing to flush the shared Redis")
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=10)
    try:
        client.flushall()
    finally:
        client.close()
