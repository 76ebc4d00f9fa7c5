"""Which fill ids a ``trades.fills`` partition has carried: exact republish detection at any fill rate.

A fill republished under its id (a producer's retry, a liquidation step redone) arrives at a new offset, so
the offsets an account's snapshot records do not recognise it, and the account's last
``MF_PORTFOLIO_DEDUPE_IDS`` ids do not either when the account is busier than that in between (the venue's
house account takes a large share of every fill). :class:`PartitionFillIds` holds, for one input
partition, the first offset of every valid fill id it carried within a horizon of record time: a fill
whose ``(account, id)`` first appeared at an *earlier* offset of the same partition is a duplicate, however
many fills of the account lie between. All fills of an account share a partition (the key is the
account), so per-partition indexes see every copy.

The index is a function of the log alone (every valid fill of the partition, whatever became of it), so
it is rebuilt exactly by reading the partition again: ``covered_to`` says up to which offset it holds
every record, and a gap (a restart, partitions moved by a rebalance) is read from Kafka before the
records after it are applied. What is read back is indexed *unverified* (its id only, not decoded into a
fill and validated: that would cost more than the reading); only when a later copy of such an id comes do
its earlier copies have to be validated (:meth:`PartitionFillIds.unverified`, :meth:`PartitionFillIds.settle`).
"""

from __future__ import annotations

import collections

FillKey = tuple[str, str]     # (account id, fill id)


class PartitionFillIds:
    """First offset of each ``(account, fill id)`` of one partition seen within ``horizon_ms`` of record time."""

    __slots__ = ("horizon_ms", "covered_to", "_first", "_order", "_newest_ms", "_unverified")

    def __init__(self, horizon_ms: int) -> None:
        if horizon_ms <= 0:
            raise ValueError(f"horizon_ms must be > 0, got {horizon_ms}")
        self.horizon_ms = horizon_ms
        self.covered_to = -1                 # every valid fill at an offset ≤ this is indexed (within the horizon)
        self._first: dict[FillKey, int] = {}
        self._order: collections.deque[tuple[int, FillKey, int]] = collections.deque()  # (time ms, key, offset)
        self._newest_ms = 0
        self._unverified: dict[FillKey, list[int]] = {}    # read back, not validated: the offsets of its copies

    def __len__(self) -> int:
        return len(self._first)

    def earlier(self, key: FillKey, offset: int) -> bool:
        """True when the fill first appeared at an offset before ``offset`` (this record is a republish)."""
        first = self._first.get(key)
        return first is not None and first < offset

    def add(self, key: FillKey, offset: int, time_ms: int) -> None:
        """Record a valid fill read at ``offset`` (a redelivered record keeps its first offset)."""
        first = self._first.get(key)
        if first is None or offset < first:
            self._first[key] = offset
            self._order.append((time_ms, key, offset))
        if time_ms > self._newest_ms:
            self._newest_ms = time_ms
        self._trim()

    def add_unverified(self, key: FillKey, offset: int, time_ms: int) -> None:
        """Record a fill id read back from the log, its validity not known yet."""
        if key in self._first and key not in self._unverified:
            return                                   # a validated copy came first
        self._unverified.setdefault(key, []).append(offset)
        self.add(key, offset, time_ms)

    def unverified(self, key: FillKey) -> list[int]:
        """Offsets of copies of ``key`` read back and not validated (empty: nothing to check)."""
        return self._unverified.get(key, [])

    def settle(self, key: FillKey, valid_offsets: list[int]) -> None:
        """The copies read back of ``key`` that the ledger accepts: the first of them is its first offset; none:
        the id is not known (a later copy is the first valid one)."""
        del self._unverified[key]
        if valid_offsets:
            self._first[key] = min(valid_offsets)
        else:
            self._first.pop(key, None)

    def advance(self, offset: int) -> None:
        """Every record up to ``offset`` has been read (added when valid)."""
        if offset > self.covered_to:
            self.covered_to = offset

    def _trim(self) -> None:
        cutoff = self._newest_ms - self.horizon_ms
        order, first = self._order, self._first
        while order and order[0][0] < cutoff:
            _t, key, offset = order.popleft()
            if first.get(key) == offset:
                del first[key]
                self._unverified.pop(key, None)
