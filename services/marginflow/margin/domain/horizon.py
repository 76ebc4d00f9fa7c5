"""Liquidation horizon and concentration: a position larger than the venue can absorb in the grid's
horizon takes longer to close, and a position that is a large share of open interest has nobody to
close against.

Per position of ``a = |q|`` contracts on instrument k, with the venue's average daily volume ``ADV_k``
(contracts/day, the thinner of the last 24 h and the 7-day daily average: a quiet day after a busy
week, or a burst after a quiet week, both count the lower) and its open interest ``OI_k`` (contracts,
one side)::

    t       = a / (participation · ADV_k)                  days to close at the participation rate
    h_eff   = min(max(h, t), max_horizon_multiple · h)     h = the grid's horizon, days
    scale   = √(h_eff / h)                                 on the position's grid, tail and ES losses
    share   = a / OI_k
    add-on  = concentration_rate · max(0, share − concentration_threshold) · a · mark value

The square root is the usual time scaling of a random-walk loss (LCH / Eurex liquidity add-ons,
CME SPAN 2's liquidity horizon: a holding period lengthened for large positions). The horizon is
capped so a position on an instrument that stops trading is margined hard, not infinitely. An
instrument whose volume is not known yet keeps ``h`` (scale 1); one whose open interest is not known has
no concentration add-on. The add-on is USD, added like the liquidity add-on (to the cross IM, or to
an isolated position's own IM).
"""

from __future__ import annotations

import dataclasses
import math
from decimal import Decimal

import numpy as np

from marginflow.shared.units import MS_PER_HOUR, SECONDS_PER_DAY


@dataclasses.dataclass(frozen=True)
class HorizonRules:
    participation: float = 0.0              # fraction of ADV a close-out may trade; 0 = no horizon scaling
    max_horizon_multiple: float = 10.0      # h_eff ≤ this × h
    concentration_threshold: float = 0.05   # OI share from which the add-on applies
    concentration_rate: float = 0.0         # fraction of the notional per unit of OI share beyond it; 0 = none

    def __post_init__(self) -> None:
        if not (math.isfinite(self.participation) and 0.0 <= self.participation <= 1.0):
            raise ValueError(f"participation must be in [0, 1], got {self.participation!r}")
        if not (math.isfinite(self.max_horizon_multiple) and self.max_horizon_multiple >= 1.0):
            raise ValueError(f"max_horizon_multiple must be finite and >= 1, got {self.max_horizon_multiple!r}")
        if not (math.isfinite(self.concentration_threshold) and 0.0 <= self.concentration_threshold < 1.0):
            raise ValueError(f"concentration_threshold must be in [0, 1), got {self.concentration_threshold!r}")
        if not (math.isfinite(self.concentration_rate) and self.concentration_rate >= 0.0):
            raise ValueError(f"concentration_rate must be finite and >= 0, got {self.concentration_rate!r}")

    @property
    def active(self) -> bool:
        return self.participation > 0.0 or self.concentration_rate > 0.0


@dataclasses.dataclass(frozen=True)
class VenueActivity:
    """What the venue trades and holds per instrument (contracts); NaN = not known yet."""

    volume_24h: np.ndarray      # [K] contracts traded in the last 24 h
    volume_7d: np.ndarray       # [K] contracts traded in the last 7 days
    open_interest: np.ndarray   # [K] contracts open (one side: Σ of the long positions)

    @classmethod
    def unknown(cls, n: int) -> "VenueActivity":
        nan = np.full(n, np.nan)
        return cls(nan, nan.copy(), nan.copy())

    def adv(self) -> np.ndarray:
        """Average daily volume, contracts/day: the thinner of 24 h and 7 d / 7 (NaN when either is unknown)."""
        return np.minimum(self.volume_24h, self.volume_7d / 7.0)


@dataclasses.dataclass(frozen=True)
class PositionHorizon:
    horizon_days: np.ndarray    # [nnz] h_eff
    scale: np.ndarray           # [nnz] √(h_eff / h)
    oi_share: np.ndarray        # [nnz] |q| / OI (0 when OI is not known)
    concentration: np.ndarray   # [nnz] add-on, USD


class HorizonTable:
    """Per-instrument constants of one model: the close-out rate and the open interest."""

    def __init__(self, rules: HorizonRules, activity: VenueActivity, mark_value: np.ndarray,
                 horizon_seconds: float) -> None:
        self.rules = rules
        self.h_days = horizon_seconds / SECONDS_PER_DAY
        adv = activity.adv()
        # contracts a close-out trades per day; NaN: unknown (scale 1), 0: nothing trades (the cap)
        self.rate_per_day = np.where(np.isfinite(adv), rules.participation * np.maximum(adv, 0.0), np.nan)
        oi = np.asarray(activity.open_interest, dtype=np.float64)
        self.open_interest = np.where(np.isfinite(oi) & (oi > 0.0), oi, np.nan)
        self.mark_value = np.asarray(mark_value, dtype=np.float64)    # USD per contract

    def positions(self, instrument: np.ndarray, size: np.ndarray) -> PositionHorizon:
        k = np.asarray(instrument, dtype=np.int64)
        a = np.abs(np.asarray(size, dtype=np.float64))
        r = self.rules
        h = self.h_days
        if r.participation > 0.0 and h > 0.0:
            rate = self.rate_per_day[k]
            # a rate of a few subnormal contracts a day overflows to inf days: the cap takes it
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                t = np.where(rate > 0.0, a / np.where(rate > 0.0, rate, 1.0), np.where(a > 0.0, np.inf, 0.0))
            t = np.where(np.isfinite(rate), t, 0.0)                  # volume unknown: h
            h_eff = np.minimum(np.maximum(h, t), r.max_horizon_multiple * h)
            scale = np.sqrt(h_eff / h)
        else:
            h_eff = np.full(a.shape, h)
            scale = np.ones(a.shape)
        oi = self.open_interest[k]
        share = np.where(np.isfinite(oi), a / np.where(np.isfinite(oi), oi, 1.0), 0.0)
        excess = np.maximum(share - r.concentration_threshold, 0.0)
        addon = r.concentration_rate * excess * a * self.mark_value[k]
        return PositionHorizon(h_eff, scale, share, addon)


HOUR_MS = MS_PER_HOUR
WINDOW_HOURS = 7 * 24          # the longest window: 7 days of hourly buckets
WINDOW_MS = WINDOW_HOURS * HOUR_MS


class VolumeWindow:
    """Contracts traded per instrument in hourly event-time buckets over the last 7 days
    (``trades.fills``: each fill's |size|). A bucket older than 7 days behind the newest fill is
    dropped; a fill older than that is ignored. Volume is known for an instrument once it has traded
    in the window, and the daily rates are taken over the span observed (a venue younger than 7 days
    is not read as one that traded a seventh of its week)."""

    def __init__(self, n_instruments: int) -> None:
        self.buckets = np.zeros((WINDOW_HOURS, n_instruments))
        self.bucket_hour = np.full(WINDOW_HOURS, -1, dtype=np.int64)   # absolute hour held by each slot
        self.first_ms = 0          # event time of the first fill seen
        self.newest_ms = 0

    def add(self, instrument: int, contracts: float, event_time_ms: int) -> bool:
        """Counts a fill; False when it is older than the window (ignored)."""
        hour = event_time_ms // HOUR_MS
        if self.newest_ms and hour <= self.newest_ms // HOUR_MS - WINDOW_HOURS:
            return False
        slot = int(hour % WINDOW_HOURS)
        if self.bucket_hour[slot] != hour:
            if self.bucket_hour[slot] > hour:
                return False
            self.buckets[slot] = 0.0
            self.bucket_hour[slot] = hour
        self.buckets[slot, instrument] += abs(contracts)
        if not self.first_ms or event_time_ms < self.first_ms:
            self.first_ms = event_time_ms
        self.newest_ms = max(self.newest_ms, event_time_ms)
        return True

    def activity(self, now_ms: int, open_interest: np.ndarray | None = None) -> VenueActivity:
        """24 h and 7 d volume as daily rates × window length (NaN where nothing traded), at ``now_ms``."""
        n = self.buckets.shape[1]
        oi = np.full(n, np.nan) if open_interest is None else np.asarray(open_interest, dtype=np.float64)
        if not self.first_ms:
            return VenueActivity(np.full(n, np.nan), np.full(n, np.nan), oi)
        now_hour = now_ms // HOUR_MS
        age = now_hour - self.bucket_hour                     # 0 = the current hour
        valid = (self.bucket_hour >= 0) & (age >= 0)
        v24 = self.buckets[valid & (age < 24)].sum(axis=0)
        v7 = self.buckets[valid & (age < WINDOW_HOURS)].sum(axis=0)
        # Hourly buckets observed so far, the current one included; over a span shorter than a window
        # the window's volume is scaled up to it (a rate).
        span_hours = float(max(1, now_hour - self.first_ms // HOUR_MS + 1))
        v24 = v24 * 24.0 / min(24.0, span_hours)
        v7 = v7 * WINDOW_HOURS / min(float(WINDOW_HOURS), span_hours)
        traded = v7 > 0.0
        return VenueActivity(np.where(traded, v24, np.nan), np.where(traded, v7, np.nan), oi)


class OpenInterestBook:
    """Open interest per instrument from each input partition's share of it (``portfolio.open_interest``,
    compacted, one record per instrument and ``trades.fills`` partition, written by the partition's owner).

    OI = max(Σ long, Σ short) contracts over the partitions: on a venue where every trade has both sides
    among the accounts the two sums are equal (the open interest); where a market maker outside the
    platform takes one side, the heavier side is what is open. Sums are exact (``Decimal``, as published)
    and become floats only as the model's input. Of two records of one (instrument, partition) the one
    reflecting the higher fills offset is kept: a previous owner's late record after a rebalance is
    older than the new owner's, and is ignored (equal offsets are the same state: the later replaces).
    """

    def __init__(self, n_instruments: int) -> None:
        self._held: dict[tuple[int, int], tuple[int, Decimal, Decimal]] = {}   # (k, partition) → (offset, long, short)
        self._by_instrument: list[set[int]] = [set() for _ in range(n_instruments)]
        self._oi = np.full(n_instruments, np.nan)
        self._dirty: set[int] = set()

    def apply(self, instrument: int, partition: int, fills_offset: int, long_contracts: Decimal,
              short_contracts: Decimal) -> bool:
        """A partition's share; False (ignored) when an already held one reflects a later offset."""
        key = (instrument, partition)
        held = self._held.get(key)
        if held is not None and fills_offset < held[0]:
            return False
        self._held[key] = (int(fills_offset), long_contracts, short_contracts)
        self._by_instrument[instrument].add(partition)
        self._dirty.add(instrument)
        return True

    def remove(self, instrument: int, partition: int) -> bool:
        """The partition's share retired (a tombstone); False when none was held."""
        if self._held.pop((instrument, partition), None) is None:
            return False
        self._by_instrument[instrument].discard(partition)
        self._dirty.add(instrument)
        return True

    def sides(self, instrument: int) -> tuple[Decimal, Decimal]:
        """(Σ long, Σ short) contracts of an instrument over the partitions, exact."""
        lo = sh = Decimal(0)
        for p in self._by_instrument[instrument]:
            _offset, pl, ps = self._held[(instrument, p)]
            lo += pl
            sh += ps
        return lo, sh

    def open_interest(self) -> np.ndarray:
        """Contracts open per instrument; NaN where nothing is (no share can be taken of it)."""
        for k in self._dirty:
            oi = max(self.sides(k))
            self._oi[k] = float(oi) if oi > 0 else np.nan
        self._dirty.clear()
        return self._oi.copy()
