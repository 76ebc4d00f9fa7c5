"""Liquidity add-on from the book's depth curve: what it costs to unwind a position through the book.

Per position of ``a = |q|`` contracts on instrument k, with mark value ``v_k`` (USD per contract),
half-spread ``h_k`` (bps of the mark) and the depth curve of the side it trades into (a long sells into
the bids, a short buys the asks): cumulative sizes ``C_0 ≤ … ≤ C_{B−1}`` (contracts) within distances
``d_0 < … < d_{B−1}`` (bps) of the mid, with ``C_{−1} = 0`` at ``d_{−1} = 0``::

    D(a) = d_{i−1} + (d_i − d_{i−1}) · (a − C_{i−1}) / (C_i − C_{i−1})   C_{i−1} < a ≤ C_i   (the first i)
    D(a) = d_{B−1} · (1 + penalty · s),  s = 1 − C_{B−1} / a              a > C_{B−1}
    distance = max(h_k, D(a))                                             bps
    add-on   = distance · 10⁻⁴ · a · v_k                                  USD

``D(a)`` is the distance from the mid at which the book's cumulative depth covers the size, linearly
interpolated between the curve's points (so a distance with no new size, ``C_i = C_{i−1}``, is passed
over: the next contract lies beyond ``d_i``); past the last point the uncovered share ``s`` of the size
(0 at the edge, → 1 for a size far beyond the visible book, 1 for an empty book) adds a penalty up to
``penalty`` times the last distance; a size the touch absorbs pays half the spread. The whole size is
charged at the distance of its last contract (the price the close-out walks the book to), not the
average: the charge is the price concession of a close-out in one go.

Source: the market-impact form of the liquidity add-on of CCP initial margin models — Eurex Prisma's
liquidity adjustment (bid/ask cost for positions the market absorbs, a market-impact cost growing with
the position's size relative to the market's depth beyond it) and LCH's liquidity risk multiplier; CME
SPAN 2 likewise charges a liquidity component from bid/ask and depth on top of the market-risk margin.
The interpolated distance-through-the-book and the linear penalty in the uncovered share are this
platform's parametrisation of that cost (``penalty`` is a setting, ``MF_MARGIN_DEPTH_UNCOVERED_PENALTY``).

Instruments without a curve keep the core's spread-and-depth add-on (half-spread on every contract plus a
quadratic impact beyond the top-of-book depth); an instrument with a curve gets this add-on instead.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

from marginflow.core import depth_distance as core_depth_distance
from marginflow.shared.depthcurve import DepthCurve


@dataclasses.dataclass(frozen=True)
class LiquidityRules:
    uncovered_penalty: float = 4.0     # beyond the curve: up to (1 + penalty) × its last distance

    def __post_init__(self) -> None:
        if not (math.isfinite(self.uncovered_penalty) and self.uncovered_penalty >= 0.0):
            raise ValueError(f"uncovered_penalty must be finite and >= 0, got {self.uncovered_penalty!r}")


@dataclasses.dataclass(frozen=True)
class PositionLiquidity:
    addon: np.ndarray           # [n] USD (0 where the instrument has no curve)
    distance_bps: np.ndarray    # [n] max(h, D(a)), bps (0 where no curve or a = 0)
    covered_share: np.ndarray   # [n] min(1, C_{B−1} / a): the share of the size the curve holds (1 for a = 0)
    from_curve: np.ndarray      # [n] bool: the instrument has a curve


class DepthTable:
    """The depth curves of one model's instruments as the tables of the core's ``depth_distance``.

    Row ``r = 2k + side`` (side 0: bids, for longs; 1: asks, for shorts) holds ``W`` points (a power of
    two ≥ B + 1: the mid, the curve's points, its last point repeated) of its sizes normalised by the last
    one and their distances; the core finds each position's segment by a branchless binary search within
    its own row (``log2 W`` steps) in one pass over the positions — in numpy the same search took ~45 passes
    over 1M positions, ~0.4× the core's whole margin computation (C twin: ``marginflow.core.reference``)."""

    def __init__(self, curves: Sequence[DepthCurve | None], half_spread_frac: np.ndarray, mark_value: np.ndarray,
                 rules: LiquidityRules = LiquidityRules(), kernel: Callable[..., np.ndarray] | None = None) -> None:
        n = len(curves)
        self.rules = rules
        self.kernel = kernel if kernel is not None else core_depth_distance
        self.has_curve = np.array([c is not None for c in curves], dtype=bool)
        self.half_spread_bps = np.asarray(half_spread_frac, dtype=np.float64) * 1e4
        self.mark_value = np.asarray(mark_value, dtype=np.float64)
        points = 1 + max((len(c.distance_bps) for c in curves if c is not None), default=1)
        width = max(2, 1 << (points - 1).bit_length())   # W: a power of two ≥ B + 1
        dist = np.zeros((2 * n, width))
        cum = np.zeros((2 * n, width))
        for k, c in enumerate(curves):
            if c is None:
                continue
            b = len(c.distance_bps)
            for side, sizes in ((0, c.bid_contracts), (1, c.ask_contracts)):
                r = 2 * k + side
                dist[r, 1:b + 1] = c.distance_bps
                cum[r, 1:b + 1] = sizes
                dist[r, b + 1:] = c.distance_bps[-1]     # a shorter curve repeats its last point
                cum[r, b + 1:] = sizes[-1]
        self.last_contracts = cum[:, -1].copy()          # [2K] C_{B−1}; 0 without a curve (or an empty side)
        self.last_bps = dist[:, -1].copy()               # [2K] d_{B−1}; 0 without a curve
        with np.errstate(invalid="ignore", divide="ignore"):
            self.points_share = np.where(self.last_contracts[:, None] > 0, cum / self.last_contracts[:, None], 0.0)
        self.points_bps = dist
        # per instrument: the half-spread floor (0 without a curve: the add-on is 0 there) and USD per bp
        self.floor_bps = np.where(self.has_curve, self.half_spread_bps, 0.0)
        self._usd_per_bp = self.mark_value * 1e-4

    @property
    def active(self) -> bool:
        return bool(self.has_curve.any())

    def _distance(self, k: np.ndarray, q: np.ndarray) -> np.ndarray:
        """max(h, D(a)) in bps per position; 0 where the instrument has no curve."""
        return self.kernel(np.asarray(k, dtype=np.int32), q, self.points_share, self.points_bps, self.last_contracts,
                           self.last_bps, self.floor_bps, self.rules.uncovered_penalty)

    def addon(self, instrument, size) -> np.ndarray:
        """The add-on per position, USD (0 where the instrument has no curve): the full recalculation's path."""
        k = np.asarray(instrument)
        q = np.asarray(size, dtype=np.float64)
        distance = self._distance(k, q)
        distance *= np.abs(q)
        distance *= self._usd_per_bp[k]
        return distance

    def positions(self, instrument, size) -> PositionLiquidity:
        k = np.asarray(instrument)
        q = np.asarray(size, dtype=np.float64)
        a = np.abs(q)
        curve = self.has_curve[k]
        live = curve & (a > 0)
        distance = np.where(live, self._distance(k, q), 0.0)
        addon = distance * a * self._usd_per_bp[k]
        r = 2 * k.astype(np.int64) + (q < 0)
        last = self.last_contracts[r]
        covered = np.where(live, np.minimum(1.0, np.divide(last, a, out=np.zeros(a.shape), where=a > 0)), 1.0)
        return PositionLiquidity(addon, distance, covered, curve)
