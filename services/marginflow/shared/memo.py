"""A bounded memo keyed by an object's identity, for values derived from immutable objects.

The key object is held with its value, so its ``id`` is not reused while the entry stands; a lookup
with another object of the same id (after the entry was forgotten) finds nothing. Past ``max_entries``
the oldest entry is forgotten. Safe to share between threads for this use: a lost entry is only work
done again."""

from __future__ import annotations

from typing import Generic, TypeVar

V = TypeVar("V")


class IdentityMemo(Generic[V]):
    def __init__(self, max_entries: int) -> None:
        self._kept: dict[int, tuple[object, V]] = {}
        self._max = max_entries

    def get(self, key: object) -> V | None:
        kept = self._kept.get(id(key))
        return kept[1] if kept is not None and kept[0] is key else None

    def put(self, key: object, value: V) -> V:
        kept = self._kept
        if len(kept) >= self._max:
            try:
                del kept[next(iter(kept))]
            except (KeyError, RuntimeError, StopIteration):   # another thread changed it meanwhile
                pass
        kept[id(key)] = (key, value)
        return value

    def __len__(self) -> int:
        return len(self._kept)
