"""Fan-out of published items to gRPC stream subscribers, the one implementation every service uses.

Each subscription has a bounded queue: a slow subscriber loses its *oldest* items, never blocks the
publisher (the service loop). A subscription may filter by key (account id, instrument symbol).
``max_queue=1`` makes a subscription conflating: it always holds only the newest item (risk
parameter versions, where only the latest one matters).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")

DEFAULT_MAX_QUEUE = 10_000


class Subscription(Generic[T]):
    """One subscriber's queue; :meth:`get` waits for items and returns all that are queued."""

    __slots__ = ("keys", "_items", "_cond", "_closed")

    def __init__(self, keys: frozenset[str], max_queue: int) -> None:
        self.keys = keys
        self._items: collections.deque[T] = collections.deque(maxlen=max_queue)
        self._cond = threading.Condition()
        self._closed = False

    def _offer(self, items: list[T]) -> None:
        with self._cond:
            self._items.extend(items)   # a full deque drops from the left: the oldest go first
            self._cond.notify_all()

    def _close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def get(self, timeout_s: float) -> list[T]:
        """Every queued item, oldest first; waits up to ``timeout_s`` when none is queued ([] then)."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout_s)
            out = list(self._items)
            self._items.clear()
        return out

    def __len__(self) -> int:
        return len(self._items)


class Fanout(Generic[T]):
    """Publish to every subscription whose keys admit the item (no keys: everything)."""

    def __init__(self, key: Callable[[T], str] | None = None, max_queue: int = DEFAULT_MAX_QUEUE) -> None:
        self._key = key
        self._max_queue = max_queue
        self._subs: list[Subscription[T]] = []
        self._lock = threading.Lock()
        self._closed = False

    def subscribe(self, keys: Iterable[str] = (), max_queue: int | None = None) -> Subscription[T]:
        sub: Subscription[T] = Subscription(frozenset(keys), max_queue or self._max_queue)
        with self._lock:
            if self._closed:
                sub._close()
            self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription[T]) -> None:
        with self._lock:
            self._subs = [s for s in self._subs if s is not sub]

    def publish(self, items: Iterable[T]) -> None:
        items = list(items)
        if not items:
            return
        with self._lock:
            subs = list(self._subs)
        key = self._key
        for sub in subs:
            if sub.keys and key is not None:
                wanted = [i for i in items if key(i) in sub.keys]
                if wanted:
                    sub._offer(wanted)
            else:
                sub._offer(items)

    def close(self) -> None:
        """Wake every subscriber for the last time (server shutdown)."""
        with self._lock:
            self._closed = True
            subs = list(self._subs)
        for sub in subs:
            sub._close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subs)
