"""Which margin instance owns which ``portfolio.positions`` partition, and forwarding to it.

Every instance announces, once a second, the partitions it owns (and is ready for) with the gRPC
address clients can reach it at; an entry lives ``ttl`` seconds unless renewed. A query for an
account that this instance does not own is forwarded to the owner of the account's partition
(one hop: a forwarded call carries ``x-marginflow-forwarded`` and is never forwarded again), so
a client may ask any instance about any account.

Layout (Redis, small mutable state): ``<prefix>owner:<group>:<partition>`` → ``<address>`` with a TTL.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

import grpc
import redis

from marginflow.api.margin.v1 import margin_pb2_grpc
from marginflow.shared.logs import get_logger

log = get_logger(__name__)

FORWARDED_HEADER = "x-marginflow-forwarded"


class OwnerRegistry:
    def __init__(self, client: redis.Redis, prefix: str, group: str, ttl_seconds: float) -> None:
        self._r = client
        self._prefix = f"{prefix}owner:{group}:"
        self._ttl_ms = max(1, int(ttl_seconds * 1000))

    def announce(self, partitions: Iterable[int], address: str) -> None:
        pipe = self._r.pipeline(transaction=False)
        for p in partitions:
            pipe.set(f"{self._prefix}{p}", address, px=self._ttl_ms)
        pipe.execute()

    def withdraw(self, partitions: Iterable[int], address: str) -> None:
        """Forget this instance's entries (orderly stop, revoked partitions) unless another took them."""
        for p in partitions:
            key = f"{self._prefix}{p}"
            value = self._r.get(key)
            if value is not None and value.decode() == address:
                self._r.delete(key)

    def owner(self, partition: int) -> str | None:
        value = self._r.get(f"{self._prefix}{partition}")
        return value.decode() if value is not None else None


class Forwarder:
    """gRPC stubs to the other instances, one channel per address (kept)."""

    def __init__(self, registry: OwnerRegistry, self_address: str, partitions: int,
                 timeout_s: float = 5.0, channel: Callable[[str], grpc.Channel] = grpc.insecure_channel) -> None:
        self.registry = registry
        self.self_address = self_address
        self.partitions = partitions
        self.timeout_s = timeout_s
        self._stubs: dict[str, margin_pb2_grpc.MarginServiceStub] = {}
        self._channels: list[grpc.Channel] = []
        self._lock = threading.Lock()
        self._channel = channel   # security.client_channel: TLS and this service's token

    def stub_for(self, partition: int) -> margin_pb2_grpc.MarginServiceStub | None:
        """The owner's stub, or None when the owner is unknown or this instance."""
        try:
            address = self.registry.owner(partition)
        except redis.RedisError as exc:
            log.warning("owner registry unreachable", extra={"error": str(exc)})
            return None
        if address is None or address == self.self_address:
            return None
        with self._lock:
            stub = self._stubs.get(address)
            if stub is None:
                channel = self._channel(address)
                self._channels.append(channel)
                stub = self._stubs[address] = margin_pb2_grpc.MarginServiceStub(channel)
        return stub

    def close(self) -> None:
        with self._lock:
            for channel in self._channels:
                channel.close()
            self._channels.clear()
            self._stubs.clear()
