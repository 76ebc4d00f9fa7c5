"""The marks in force at a moment, from every ``md.marks`` record read so far.

The margin service's market keeps, per instrument, the mark with the latest event time it has read,
and per underlying the latest index price — from an ``index:<underlying>`` record or from any of its
instruments' marks, which carry the index too (ties in event time: the later record). The same rule
applied to the records stamped at or before ``t`` gives the prices a computation stamped ``t`` (the
event time of the newest mark its market had) read. Partitions interleave, so a mark of another
instrument stamped just before ``t`` may not have reached that computation yet: the prices here are
the market at ``t``, the computation's to within that lag. Options' implied vols (a mark's
``implied_vol`` when positive, as margin keeps it) are kept the same way: a call is recomputed on risk
arrays centred on the market of its time, vols included.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right

from marginflow.shared.universe import INDEX_KEY_PREFIX


class MarkHistory:
    """Prices by event time per md.marks key (instrument symbol, or ``index:<underlying>``)."""

    def __init__(self) -> None:
        self._series: dict[str, tuple[array, array]] = {}   # key → (event times ms, prices USD), by time
        self._vols: dict[str, tuple[array, array]] = {}     # option symbol → (event times ms, implied vols)
        self.records = 0

    def add(self, key: str, underlying: str, event_time_ms: int, mark_price: float, index_price: float,
            implied_vol: float = 0.0) -> None:
        """One md.marks record. Prices that are not positive are none (an option's model price of 0, an
        index record without one): the margin service keeps its earlier price then; so for a vol."""
        self.records += 1
        if key.startswith(INDEX_KEY_PREFIX):
            underlying = key[len(INDEX_KEY_PREFIX):]
            index_price = index_price or mark_price
        else:
            if mark_price > 0:
                self._put(key, event_time_ms, mark_price)
            if implied_vol > 0:
                self._put(key, event_time_ms, implied_vol, self._vols)
        if underlying and index_price > 0:
            self._put(INDEX_KEY_PREFIX + underlying, event_time_ms, index_price)

    def _put(self, key: str, t_ms: int, price: float, into: dict | None = None) -> None:
        into = self._series if into is None else into
        series = into.get(key)
        if series is None:
            series = into[key] = (array("q"), array("d"))
        times, prices = series
        if not times or t_ms >= times[-1]:
            times.append(t_ms)
            prices.append(price)
        else:   # an older event time read later (another producer, a replay): in time order, after its equals
            i = bisect_right(times, t_ms)
            times.insert(i, t_ms)
            prices.insert(i, price)

    def at(self, t_ms: int) -> dict[str, float]:
        """Key → the price in force at ``t_ms`` (keys with no record at or before it are left out)."""
        return self._in_force(self._series, t_ms)

    def vols_at(self, t_ms: int) -> dict[str, float]:
        """Option symbol → the implied vol in force at ``t_ms`` (those with none at or before it left out)."""
        return self._in_force(self._vols, t_ms)

    @staticmethod
    def _in_force(series_of: dict[str, tuple[array, array]], t_ms: int) -> dict[str, float]:
        out = {}
        for key, (times, prices) in series_of.items():
            i = bisect_right(times, t_ms)
            if i:
                out[key] = prices[i - 1]
        return out
