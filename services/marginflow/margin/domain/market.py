"""Market state of the margin service: the newest index, mark, implied vol, spread and depth per
instrument (event time), and the market view equity is computed at.

Before an instrument's first mark it is priced from the universe's reference price of its underlying
(options by Black-76 at the underlying's reference vol): the model can be built at once, and the
account's marks count as not fresh (``mark_time_ms == 0``), so nothing liquidates on such a price.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from marginflow.core import KIND_CALL
from marginflow.margin.domain.book import InstrumentTable
from marginflow.margin.domain.equity import HaircutPolicy, asset_values
from marginflow.margin.domain.horizon import OpenInterestBook, VenueActivity, VolumeWindow
from marginflow.margin.domain.valuation import NEVER_MS, MarketView
from marginflow.pricing import black76
from marginflow.shared.depthcurve import DepthCurve
from marginflow.shared.universe import INDEX_KEY_PREFIX


@dataclasses.dataclass(frozen=True)
class RecenterRules:
    """When the market has moved too far from the one a model's risk arrays were built at.

    The risk arrays are each instrument's P&L per unit in every scenario around the forward and implied
    vol of the build (options by full repricing): between builds an option's array still prices the
    moves from the build's forward and vol, not from today's. When the implied vol falls from 107 % to
    73 % within a minute, a long put worth 52 USD today keeps losing up to its value at 107 % (112 USD
    per unit) in the grid — more than it can lose. So the model is rebuilt (re-centred) once any forward
    has moved by more than ``price_change`` or any option's implied vol by more than ``vol_change``
    (relative, since the build), at most once per ``min_interval_ms``. The error left is bounded by the
    bands: roughly an option's vega × ``vol_change`` and delta × ``price_change`` of its value, well
    inside the band between MM and IM. 0 switches a band off.
    """

    price_change: float = 0.01       # relative move of a forward (futures, perpetuals: the mark; options: index)
    vol_change: float = 0.05         # relative move of an option's implied vol
    min_interval_ms: int = 1000      # at most one re-centring per this (each is a full recalculation)

    def __post_init__(self) -> None:
        for name in ("price_change", "vol_change"):
            v = getattr(self, name)
            if not (np.isfinite(v) and 0.0 <= v <= 1.0):
                raise ValueError(f"{name} must be in [0, 1], got {v!r}")
        if self.min_interval_ms < 0:
            raise ValueError(f"min_interval_ms must be >= 0, got {self.min_interval_ms!r}")

    @property
    def active(self) -> bool:
        return self.price_change > 0.0 or self.vol_change > 0.0

    def moved(self, forward_then: np.ndarray, vol_then: np.ndarray, forward_now: np.ndarray, vol_now: np.ndarray,
              is_option: np.ndarray) -> str:
        """Which band the market has left since the build (``"price"``, ``"vol"``), or ``""``."""
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.price_change > 0.0:
                move = np.abs(forward_now / forward_then - 1.0)
                if bool(np.any((forward_then > 0.0) & (move > self.price_change))):
                    return "price"
            if self.vol_change > 0.0:
                move = np.abs(vol_now / vol_then - 1.0)
                if bool(np.any(is_option & (vol_then > 0.0) & (move > self.vol_change))):
                    return "vol"
        return ""


@dataclasses.dataclass(frozen=True)
class MarkUpdate:
    """A validated mark (``instrument`` is None for an ``index:<underlying>`` record)."""

    instrument: int | None
    underlying: int
    index_price: float
    mark_price: float
    implied_vol: float
    half_spread: float
    depth: float
    event_time_ms: int
    depth_curve: DepthCurve | None = None    # validated cumulative depth by distance (None: not sent)


@dataclasses.dataclass(frozen=True, eq=False)
class MarketAt:
    """The market as one computation used it, copied: answers built later from that computation
    (a query's liquidation prices, a what-if's trades at the mark) use the same prices, whatever
    marks arrived since."""

    view: MarketView
    index_price: np.ndarray      # float64[U] USD
    implied_vol: np.ndarray      # float64[K]
    now_ms: int                  # the market's event time (or the wall clock before any mark): option expiries
    event_ms: int                # newest mark's event time (0 before any): the results' event time
    index_time_ms: np.ndarray | None = None   # int64[U], event time of each index price (0: none yet)


class MarketState:
    """The newest market data per instrument and underlying; one writer (the service loop).

    Readers (gRPC threads) read the arrays as they are: floats updated in place, so a reader may see
    a batch half applied, never a torn number.
    """

    def __init__(self, instruments: InstrumentTable, fallback_price: dict[str, float],
                 fallback_vol: dict[str, float], default_depth_contracts: float, now_ms: int) -> None:
        self.instruments = instruments
        t = instruments
        K, U = t.n, len(t.underlyings)
        self.index_price = np.array([fallback_price.get(u, 1.0) for u in t.underlyings])
        self.index_time_ms = np.zeros(U, dtype=np.int64)
        self.mark_price = np.zeros(K)
        self.implied_vol = np.array([fallback_vol.get(t.underlyings[u], 0.5) for u in t.underlying])
        self.half_spread = np.zeros(K)
        self.depth = np.full(K, default_depth_contracts)
        self.mark_time_ms = np.zeros(K, dtype=np.int64)
        # The newest depth curve per instrument (None until one arrives; a mark without one keeps it,
        # as a mark without a depth keeps the depth): the liquidity add-on through the book.
        self.depth_curve: list[DepthCurve | None] = [None] * K
        self.newest_event_ms = 0
        self.first_marks = False   # an instrument got its first mark: the model priced it from a fallback
        # Volume (trades.fills) and open interest (portfolio.positions, every account) per instrument,
        # for the liquidation horizon and the concentration add-on.
        self.volume = VolumeWindow(K)
        self.open_interest = OpenInterestBook(K)
        for k in range(K):
            self.mark_price[k] = self.model_mark(k, self.index_price[t.underlying[k]], now_ms)

    def now_ms(self, wall_ms: int) -> int:
        """Event time of the market (the newest mark), or the wall clock before any mark."""
        return self.newest_event_ms or wall_ms

    def model_mark(self, k: int, forward: float, now_ms: int) -> float:
        """The instrument's price at ``forward``: the forward itself for linear ones, Black-76 for options."""
        t = self.instruments
        if t.is_option(k):
            years = float(t.expiry_years(now_ms)[k])
            return black76(forward, float(t.strike[k]), years, float(self.implied_vol[k]), t.kind[k] == KIND_CALL)
        return forward

    def apply(self, marks: Iterable[MarkUpdate]) -> int:
        """Newer marks replace older ones per instrument (partitions interleave); returns how many were read."""
        n = 0
        for m in marks:
            n += 1
            if m.event_time_ms > self.newest_event_ms:
                self.newest_event_ms = m.event_time_ms
            u = m.underlying
            if m.event_time_ms >= self.index_time_ms[u] and m.index_price > 0:
                self.index_price[u] = m.index_price
                self.index_time_ms[u] = m.event_time_ms
            k = m.instrument
            if k is None or m.event_time_ms < self.mark_time_ms[k]:
                continue
            if self.mark_time_ms[k] == 0:
                self.first_marks = True
            self.mark_price[k] = m.mark_price
            self.mark_time_ms[k] = m.event_time_ms
            if m.implied_vol > 0:
                self.implied_vol[k] = m.implied_vol
            self.half_spread[k] = m.half_spread
            if m.depth > 0:
                self.depth[k] = m.depth
            if m.depth_curve is not None:
                self.depth_curve[k] = m.depth_curve
        return n

    def priced(self, marks: Mapping[int, float], index: Mapping[int, float],
               vols: Mapping[int, float]) -> "MarketState":
        """This market with the given marks (instrument → USD), index prices (underlying → USD) and implied
        vols (instrument → fraction) in place of its own, the rest as it is: what a model is built from at
        another market. A copy: the arrays changed here are its own (a given mark counts as a mark seen)."""
        out = copy.copy(self)
        out.mark_price, out.mark_time_ms = self.mark_price.copy(), self.mark_time_ms.copy()
        out.index_price, out.implied_vol = self.index_price.copy(), self.implied_vol.copy()
        for k, price in marks.items():
            out.mark_price[k] = price
            out.mark_time_ms[k] = max(int(out.mark_time_ms[k]), 1)
        for u, price in index.items():
            out.index_price[u] = price
        for k, vol in vols.items():
            out.implied_vol[k] = vol
        return out

    def record_fills(self, fills: Iterable[tuple[int, float, int]]) -> int:
        """(instrument, contracts, event time ms) of fills into the volume window; returns how many counted."""
        return sum(self.volume.add(k, q, t) for k, q, t in fills)

    def venue_activity(self, wall_ms: int) -> VenueActivity:
        """Volume over the last 24 h / 7 d and open interest, as of the market's time."""
        return self.volume.activity(max(self.now_ms(wall_ms), self.volume.newest_ms),
                                    self.open_interest.open_interest())

    def forwards(self) -> np.ndarray:
        """Forward per instrument: its mark for perpetuals/futures, the underlying index for options."""
        t = self.instruments
        idx = self.index_price[t.underlying]
        is_opt = t.kind >= KIND_CALL
        return np.where(is_opt, idx, np.where(self.mark_time_ms > 0, self.mark_price, idx))

    def index_prices(self, with_time_only: bool = True) -> dict[str, float]:
        und = self.instruments.underlyings
        return {u: float(self.index_price[i]) for i, u in enumerate(und)
                if not with_time_only or self.index_time_ms[i] > 0}

    def view(self, assets: Sequence[str], stablecoins: frozenset[str], sigma_margin: dict[str, float],
             haircut: HaircutPolicy, max_age_ms: int) -> MarketView:
        """Marks, freshness and collateral unit values (after haircut) as one snapshot for a valuation."""
        now = self.newest_event_ms
        fresh = (self.mark_time_ms > 0) & (self.mark_time_ms >= now - max_age_ms)
        unit_value, _haircut = asset_values(list(assets), stablecoins, self.index_prices(), sigma_margin, haircut)
        asset_fresh = np.ones(len(assets), dtype=bool)
        asset_time = np.full(len(assets), NEVER_MS, dtype=np.int64)
        uidx = self.instruments.underlying_index
        for i, a in enumerate(assets):
            if a in stablecoins:
                continue
            u = uidx.get(a)
            t = int(self.index_time_ms[u]) if u is not None else 0
            asset_time[i] = t
            asset_fresh[i] = t > 0 and t >= now - max_age_ms
        return MarketView(self.mark_price, self.instruments.contract_size, self.mark_time_ms, fresh, unit_value,
                          asset_fresh, asset_time)

    def at(self, assets: Sequence[str], stablecoins: frozenset[str], sigma_margin: dict[str, float],
           haircut: HaircutPolicy, max_age_ms: int, wall_ms: int) -> MarketAt:
        """:meth:`view` with the arrays the writer updates in place copied (K floats each: cheap)."""
        v = self.view(assets, stablecoins, sigma_margin, haircut, max_age_ms)
        view = dataclasses.replace(v, mark=v.mark.copy(), mark_time_ms=v.mark_time_ms.copy())
        return MarketAt(view, self.index_price.copy(), self.implied_vol.copy(), self.now_ms(wall_ms),
                        self.newest_event_ms, self.index_time_ms.copy())

    def haircuts(self, assets: Sequence[str], stablecoins: frozenset[str], sigma_margin: dict[str, float],
                 haircut: HaircutPolicy) -> dict[str, float]:
        _v, h = asset_values(list(assets), stablecoins, self.index_prices(with_time_only=False), sigma_margin,
                             haircut)
        return dict(zip(assets, h.tolist()))

    def oldest_mark_age_seconds(self) -> float:
        held = self.mark_time_ms > 0
        return (self.newest_event_ms - int(self.mark_time_ms[held].min())) / 1e3 if held.any() else 0.0

    def missing_marks(self, instruments: np.ndarray) -> np.ndarray:
        """Those of ``instruments`` (indices) that have had no mark yet."""
        instruments = np.unique(np.asarray(instruments, dtype=np.int64))
        return instruments[self.mark_time_ms[instruments] == 0]


@dataclasses.dataclass(frozen=True, slots=True)
class PriceUsed:
    """A price a computation used: ``key`` as md.marks keys it (instrument symbol or ``index:<underlying>``)."""

    key: str
    price_usd: float
    given: bool            # from the caller, not the market
    event_time_ms: int     # 0: the market has had none yet (a fallback price)
    fresh: bool


def at_prices(at: MarketAt, instruments: InstrumentTable, marks: Mapping[int, float], index: Mapping[int, float],
              assets: Sequence[str], stablecoins: frozenset[str], sigma_margin: dict[str, float],
              haircut: HaircutPolicy) -> MarketAt:
    """``at`` with ``marks`` (instrument → mark, USD) and ``index`` (underlying → index price, USD) in
    place of its own: a collateral asset's unit value is recomputed from its given index price
    (:func:`asset_values`, the haircut of σ_m in force), an option's liquidation forward is the given
    index. Given prices are fresh and stamped at the market's event time (``at.event_ms``; the wall
    clock's ``at.now_ms`` before any mark): they are the premise of the question, never stale."""
    if not marks and not index:
        return at
    v = at.view
    stamp = at.event_ms or at.now_ms
    mark, mark_time, fresh = v.mark.copy(), v.mark_time_ms.copy(), v.fresh.copy()
    for k, price in marks.items():
        mark[k], mark_time[k], fresh[k] = price, stamp, True
    index_price = at.index_price.copy()
    index_time = at.index_time_ms.copy() if at.index_time_ms is not None else np.zeros(len(index_price), np.int64)
    unit_value, asset_fresh, asset_time = v.unit_value, v.asset_fresh, v.asset_time_ms
    if index:
        unit_value, asset_fresh, asset_time = unit_value.copy(), asset_fresh.copy(), asset_time.copy()
        for u, price in index.items():
            index_price[u], index_time[u] = price, stamp
            und = instruments.underlyings[u]
            for a, asset in enumerate(assets):
                if asset == und and asset not in stablecoins:
                    values, _h = asset_values([asset], stablecoins, {asset: price}, sigma_margin, haircut)
                    unit_value[a], asset_fresh[a], asset_time[a] = values[0], True, stamp
    view = dataclasses.replace(v, mark=mark, mark_time_ms=mark_time, fresh=fresh, unit_value=unit_value,
                               asset_fresh=asset_fresh, asset_time_ms=asset_time)
    return MarketAt(view, index_price, at.implied_vol, at.now_ms, at.event_ms, index_time)


def prices_used(at: MarketAt, instruments: InstrumentTable, held: Iterable[int], collateral: Iterable[str],
                given_marks: Iterable[int], given_index: Iterable[int], max_age_ms: int) -> list[PriceUsed]:
    """The prices a valuation of an account at ``at`` reads: the mark of each instrument ``held``, then
    the index of each crypto ``collateral`` asset (one with a balance) and of each held option's
    underlying (its liquidation forward). Fresh as :meth:`MarketState.view` has it: given, or seen
    within ``max_age_ms`` of the market's event time."""
    gm, gi = set(given_marks), set(given_index)
    held = sorted(set(held))
    v = at.view
    out = [PriceUsed(instruments.symbols[k], float(v.mark[k]), k in gm, int(v.mark_time_ms[k]), bool(v.fresh[k]))
           for k in held]
    unds = {int(instruments.underlying[k]) for k in held if instruments.is_option(k)}
    unds |= {instruments.underlying_index[a] for a in collateral if a in instruments.underlying_index}
    for u in sorted(unds):
        t = int(at.index_time_ms[u]) if at.index_time_ms is not None else 0
        fresh = u in gi or (t > 0 and t >= at.event_ms - max_age_ms)
        out.append(PriceUsed(INDEX_KEY_PREFIX + instruments.underlyings[u], float(at.index_price[u]), u in gi, t,
                             fresh))
    return out
