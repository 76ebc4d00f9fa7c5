"""The book's depth curve: cumulative size by distance from the mid, at fixed distances (bps).

Marketdata builds it from the levels of an instrument's book and publishes it on its marks
(``marginflow.marketdata.v1.DepthCurve``); the margin service's liquidity add-on and riskparams'
book depth index read it. One definition of a valid curve for all of them::

    d_0 < d_1 < … < d_{B−1},  d_i > 0 (bps)         distances, strictly increasing
    0 ≤ C_0 ≤ C_1 ≤ … ≤ C_{B−1}  (contracts)        per side, cumulative, non-decreasing

``C_i`` counts the size of every level within ``d_i`` of the mid: bids priced at or above
``mid·(1 − d_i/10⁴)``, asks at or below ``mid·(1 + d_i/10⁴)``.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import math
from collections.abc import Sequence

from marginflow.shared.errors import Rejected

# Distances from the mid, bps: crypto books quote their first size within a few bps of the mid on
# the majors (BTC/ETH perpetuals 1–2 bps spreads) and tens of bps on alts and options, and a
# liquidation that walks a book a few % deep is an extreme one; 500 bps = 5 %.
DEFAULT_BUCKETS_BPS: tuple[float, ...] = (5.0, 10.0, 25.0, 50.0, 100.0, 200.0, 500.0)
MAX_BUCKETS = 64
_EDGE_BPS = 1e-9           # a level this close beyond a distance still counts in it


@dataclasses.dataclass(frozen=True, slots=True)
class DepthCurve:
    distance_bps: tuple[float, ...]
    bid_contracts: tuple[float, ...]
    ask_contracts: tuple[float, ...]

    def total(self) -> float:
        """Contracts within the last distance, both sides."""
        return (self.bid_contracts[-1] + self.ask_contracts[-1]) if self.distance_bps else 0.0


def check_buckets(buckets: Sequence[float]) -> tuple[float, ...]:
    """The distances as a tuple; ValueError unless 1..64 finite values > 0, strictly increasing."""
    out = tuple(float(b) for b in buckets)
    if not 1 <= len(out) <= MAX_BUCKETS:
        raise ValueError(f"a depth curve needs 1..{MAX_BUCKETS} distances, got {len(out)}")
    if not all(math.isfinite(b) and b > 0 for b in out):
        raise ValueError(f"depth curve distances must be finite and > 0 bps, got {out}")
    if any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"depth curve distances must be strictly increasing, got {out}")
    return out


def curve_problem(distance_bps: Sequence[float], bid: Sequence[float], ask: Sequence[float]) -> tuple[str, str] | None:
    """(reason code, detail) of the first rule a curve breaks, or None when it is valid.

    Codes: ``depth_curve_shape`` (lengths differ, none or too many points), ``depth_curve_non_finite``,
    ``depth_curve_negative`` (a distance <= 0 or a size < 0), ``depth_curve_non_monotone`` (distances not
    strictly increasing or a cumulative size falling)."""
    n = len(distance_bps)
    if n == 0 or n > MAX_BUCKETS or len(bid) != n or len(ask) != n:
        return "depth_curve_shape", (f"depth curve has {n} distances, {len(bid)} bid and {len(ask)} ask points "
                                     f"(1..{MAX_BUCKETS}, equal)")
    for name, values in (("distance_bps", distance_bps), ("bid_contracts", bid), ("ask_contracts", ask)):
        if not all(math.isfinite(v) for v in values):
            return "depth_curve_non_finite", f"depth curve {name} is not finite: {list(values)}"
    if any(d <= 0 for d in distance_bps):
        return "depth_curve_negative", f"depth curve distance_bps must be > 0: {list(distance_bps)}"
    for name, values in (("bid_contracts", bid), ("ask_contracts", ask)):
        if any(v < 0 for v in values):
            return "depth_curve_negative", f"depth curve {name} negative: {list(values)}"
    if any(b <= a for a, b in zip(distance_bps, distance_bps[1:])):
        return "depth_curve_non_monotone", f"depth curve distances not increasing: {list(distance_bps)}"
    for name, values in (("bid_contracts", bid), ("ask_contracts", ask)):
        if any(b < a for a, b in zip(values, values[1:])):
            return "depth_curve_non_monotone", f"depth curve {name} falls with distance: {list(values)}"
    return None


def curve_of_mark(mark) -> DepthCurve | None:
    """The ``depth_curve`` of a ``marginflow.marketdata.v1.Mark`` (None when absent); :class:`Rejected`
    with the :func:`curve_problem` code when it is invalid."""
    if not mark.HasField("depth_curve"):
        return None
    c = mark.depth_curve
    problem = curve_problem(c.distance_bps, c.bid_contracts, c.ask_contracts)
    if problem is not None:
        raise Rejected(problem[0], f"mark of {mark.instrument!r}: {problem[1]}")
    return DepthCurve(tuple(c.distance_bps), tuple(c.bid_contracts), tuple(c.ask_contracts))


def curve_from_levels(mid: float, bids: Sequence[tuple[float, float]], asks: Sequence[tuple[float, float]],
                      buckets_bps: Sequence[float]) -> DepthCurve | None:
    """The curve of a book ((price, size) levels, any order) around ``mid``; None without a mid or levels.

    A level exactly at a distance counts in it (to 10⁻⁹ bps, so a level placed at a bucket edge by float
    arithmetic, ``mid·(1 − 25/10⁴)``, counts in that bucket); a level on the wrong side of the mid (a bid
    above it, an ask below it: a book that moved between the levels' snapshot and the mid) counts from the
    first distance on."""
    if not (mid > 0 and math.isfinite(mid)) or not (bids or asks):
        return None
    buckets = tuple(buckets_bps)
    edges = [b + _EDGE_BPS for b in buckets]
    scale = 1e4 / mid

    def side(levels: Sequence[tuple[float, float]], sign: float) -> tuple[float, ...]:
        if not levels:
            return (0.0,) * len(buckets)
        pts = sorted((sign * (price - mid) * scale, size) for price, size in levels)
        dist = [d for d, _ in pts]
        cum = list(itertools.accumulate(q for _, q in pts))
        return tuple(cum[j - 1] if j else 0.0 for j in (bisect.bisect_right(dist, e) for e in edges))

    return DepthCurve(buckets, side(bids, -1.0), side(asks, 1.0))
