"""Market data values: a raw tick as it arrives from a source, and what marketdata publishes."""

from __future__ import annotations

import dataclasses

from marginflow.shared.depthcurve import DepthCurve


@dataclasses.dataclass(frozen=True, slots=True)
class RawTick:
    """One observation from a source. Prices in USD; sizes in contracts; 0 = absent (bid/ask/sizes).

    ``instrument`` is a symbol of the universe, or an underlying's own symbol ("BTC") for its
    index/spot price. ``depth`` holds (bid levels, ask levels) as ((price, size), ...), best first.
    """

    event_time_ms: int
    instrument: str
    price: float
    bid: float = 0.0
    ask: float = 0.0
    bid_size: float = 0.0
    ask_size: float = 0.0
    implied_vol: float = 0.0
    bids: tuple[tuple[float, float], ...] = ()
    asks: tuple[tuple[float, float], ...] = ()
    source: str = ""
    line: int = 0          # replay: the file's line number, for dead-letter reasons


@dataclasses.dataclass(frozen=True, slots=True)
class AcceptedTick:
    """A validated tick with its per-instrument sequence number."""

    tick: RawTick
    sequence: int


@dataclasses.dataclass(frozen=True, slots=True)
class MarkValue:
    """Index and mark of an instrument (or of an underlying's index, instrument = "index:BTC")."""

    event_time_ms: int
    instrument: str
    underlying: str
    index_price: float
    mark_price: float
    basis: float
    implied_vol: float
    half_spread_frac: float
    depth_contracts: float
    sequence: int
    depth_curve: DepthCurve | None = None   # cumulative size by distance from the mid (None: not known)
