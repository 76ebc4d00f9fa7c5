"""Event-time sampling of prices into returns.

Time is split into buckets of ``interval_ms`` of *event* time: bucket ``b`` covers
``[b·interval, (b+1)·interval)``. The close of a bucket is the last price observed in it
(previous-tick sampling); an empty bucket's close is the previous close, i.e. a zero return.
The log return of bucket ``b`` is

.. math:: r_b = \\ln(C_b / C_{b-1})

and is known at the first tick whose event time is at or after the bucket's end. Only event
time is used, so a replay at any speed yields the same returns; a daily series with a one-day
interval yields daily close-to-close returns. A tick older than the last one seen is late and is
ignored (it also makes re-delivered records after a restart harmless). More than ``max_fill``
empty buckets in a row re-base the series: no return spans such a gap.

Source: previous-tick sampling as in Zhang, Mykland & Aït-Sahalia (2005), "A Tale of Two
Time Scales", JASA 100(472) §1.
"""

from __future__ import annotations

import dataclasses
import math

from marginflow.shared.units import MS_PER_YEAR


@dataclasses.dataclass(slots=True)
class Sampler:
    """Sampling state of one underlying (mutable; the engine owns one per underlying)."""

    interval_ms: int
    max_fill: int = 10
    bucket: int = -1                 # bucket of the last price seen; -1 before the first tick
    bucket_end_ms: int = 0           # (bucket + 1) · interval_ms
    last_price: float = 0.0
    last_time_ms: int = 0
    prev_close: float = 0.0          # close of the previous finished bucket; 0 = none (series start / gap)

    def observe(self, time_ms: int, price: float) -> list[tuple[int, float]] | None:
        """Take one price; return the (bucket, log return) pairs it completes, or None if late.

        ``price`` must be finite and > 0 (checked at the input boundary).
        """
        if time_ms < self.last_time_ms:
            return None
        if time_ms < self.bucket_end_ms:
            self.last_price = price
            self.last_time_ms = time_ms
            return []
        new_bucket = time_ms // self.interval_ms
        out: list[tuple[int, float]] = []
        if self.bucket >= 0:
            close = self.last_price
            if self.prev_close > 0.0:
                out.append((self.bucket, math.log(close / self.prev_close)))
            empty = new_bucket - self.bucket - 1
            if empty <= self.max_fill:
                out.extend((self.bucket + 1 + k, 0.0) for k in range(empty))
                self.prev_close = close
            else:
                self.prev_close = 0.0    # gap: next return starts from the next close
        self.bucket = new_bucket
        self.bucket_end_ms = (new_bucket + 1) * self.interval_ms
        self.last_price = price
        self.last_time_ms = time_ms
        return out

    def to_state(self) -> dict:
        return {"bucket": self.bucket, "last_price": self.last_price, "last_time_ms": self.last_time_ms,
                "prev_close": self.prev_close}

    def load_state(self, state: dict) -> None:
        self.bucket = int(state["bucket"])
        self.bucket_end_ms = (self.bucket + 1) * self.interval_ms if self.bucket >= 0 else 0
        self.last_price = float(state["last_price"])
        self.last_time_ms = int(state["last_time_ms"])
        self.prev_close = float(state["prev_close"])


def samples_per_year(interval_ms: int) -> float:
    """Sampling intervals in a 365-day year (crypto trades every day)."""
    return MS_PER_YEAR / interval_ms
