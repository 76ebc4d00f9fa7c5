"""A bounded, chronological series of (bucket, log return, σ then) with chunked snapshots.

The chunks let the state live in a key-value changelog (faust table) without rewriting the whole
series on every return: entry ``j`` (0-based over the series' life) belongs to chunk
``j // CHUNK``; only the newest chunk changes while returns arrive.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

CHUNK = 64


class ReturnSeries:
    """The last ``capacity`` returns of one underlying, oldest first."""

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be > 0")
        self.capacity = capacity
        self._buckets = np.zeros(2 * capacity, dtype=np.int64)
        self._returns = np.zeros(2 * capacity)
        self._sigma_then = np.zeros(2 * capacity)
        self._m = 0          # entries held in the arrays
        self.total = 0       # entries ever appended

    def append(self, bucket: int, log_return: float, sigma_then: float) -> None:
        if self._m == self._buckets.size:   # keep the newest `capacity`, amortised O(1)
            keep = self.capacity
            for arr in (self._buckets, self._returns, self._sigma_then):
                arr[:keep] = arr[self._m - keep:self._m]
            self._m = keep
        self._buckets[self._m] = bucket
        self._returns[self._m] = log_return
        self._sigma_then[self._m] = sigma_then
        self._m += 1
        self.total += 1

    def __len__(self) -> int:
        return min(self._m, self.capacity)

    def _view(self, arr: NDArray, last: int | None) -> NDArray:
        n = len(self) if last is None else min(last, len(self))
        return arr[self._m - n:self._m]

    def buckets(self, last: int | None = None) -> NDArray[np.int64]:
        return self._view(self._buckets, last)

    def returns(self, last: int | None = None) -> NDArray[np.float64]:
        return self._view(self._returns, last)

    def sigma_then(self, last: int | None = None) -> NDArray[np.float64]:
        return self._view(self._sigma_then, last)

    # ---- chunked snapshots ----------------------------------------------------------------
    def chunk_of(self, index: int) -> int:
        return index // CHUNK

    def chunk(self, cid: int) -> dict | None:
        """The entries of chunk ``cid`` still held, as plain lists; None if none are."""
        first_held = self.total - len(self)
        lo, hi = max(cid * CHUNK, first_held), min((cid + 1) * CHUNK, self.total)
        if lo >= hi:
            return None
        base = self._m - len(self)
        a, b = base + lo - first_held, base + hi - first_held
        return {"start": lo, "b": self._buckets[a:b].tolist(), "r": self._returns[a:b].tolist(),
                "s": self._sigma_then[a:b].tolist()}

    def obsolete_chunk(self) -> int:
        """A chunk id that no longer holds anything (to delete), or -1."""
        return (self.total - self.capacity) // CHUNK - 1

    def load_chunks(self, chunks: list[dict], total: int) -> None:
        """Rebuild from chunk snapshots and the total count recorded with them."""
        entries: dict[int, tuple[int, float, float]] = {}
        for c in chunks:
            for k, (b, r, s) in enumerate(zip(c["b"], c["r"], c["s"])):
                entries[int(c["start"]) + k] = (int(b), float(r), float(s))
        lo = max(0, total - self.capacity)
        start = total                   # the contiguous newest run (a lost chunk cuts it)
        while start - 1 >= lo and (start - 1) in entries:
            start -= 1
        self._m = 0
        self.total = 0
        for j in range(start, total):
            self.append(*entries[j])
        self.total = total
