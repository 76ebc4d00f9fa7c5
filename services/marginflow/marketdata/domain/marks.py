"""Index and mark prices.

- **Index** of an underlying: its last index tick (symbol = the underlying, e.g. "BTC"); when a
  source has no index ticks, the mid of the underlying's perpetual stands in (basis 0).
- **Mark** of a perpetual or future: index + smoothed basis, bounded:

      basis_raw = mid − index
      basis_t   = basis_{t−1} + α·(basis_raw − basis_{t−1}),  α = 1 − 2^(−Δt / half_life)
      mark      = index + clamp(basis_t, −b·index, +b·index)

  with an event-time half-life so a replay at any speed gives the same marks, and ``b`` the
  maximum basis fraction (perpetuals tighter than futures, which carry to expiry). Smoothing
  keeps one print from moving every account's equity; the bound keeps a thin book from dragging
  the mark away from the index (the usual fair-price marking of perpetual venues).
- **Mark** of an option: Black-76 on the forward (the mark of the underlying's future for that
  expiry when listed, else the index) at the smoothed implied volatility of the option's ticks
  (or the vol implied by its mid when a tick carries none).
- **Depth curve**: cumulative bid and ask size within each of ``depth_buckets_bps`` of the mid, from
  every level of the instrument's last book (:mod:`marginflow.shared.depthcurve`), built when a mark
  is emitted; a simulator in stress quotes thinner and wider books, and the curve shows it.

Marks are emitted at most once per ``interval_ms`` of event time per instrument.
"""

from __future__ import annotations

import dataclasses
import math

from marginflow.marketdata.domain.ticks import AcceptedTick, MarkValue
from marginflow.pricing import black76, implied_vol
from marginflow.shared.depthcurve import DEFAULT_BUCKETS_BPS, DepthCurve, check_buckets, curve_from_levels
from marginflow.shared.universe import Instrument, Kind, Universe


TOP_LEVELS = 5      # levels counted in a mark's depth_contracts


@dataclasses.dataclass(frozen=True)
class MarkConfig:
    basis_half_life_ms: int = 30_000
    max_perp_basis_frac: float = 0.005     # ±0.5 % of index
    max_future_basis_frac: float = 0.10    # ±10 % of index (carry to expiry)
    iv_half_life_ms: int = 10_000
    interval_ms: int = 250                 # event-time spacing of marks per instrument
    depth_buckets_bps: tuple[float, ...] = DEFAULT_BUCKETS_BPS   # distances of the depth curve

    def __post_init__(self) -> None:
        check_buckets(self.depth_buckets_bps)
        for name in ("basis_half_life_ms", "iv_half_life_ms"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.interval_ms < 0:
            raise ValueError("interval_ms must be >= 0")
        if not (0 < self.max_perp_basis_frac < 1 and 0 < self.max_future_basis_frac < 1):
            raise ValueError("basis bounds must lie in (0, 1)")


def _alpha(dt_ms: int, half_life_ms: int) -> float:
    if dt_ms <= 0:
        return 0.0
    return 1.0 - math.pow(2.0, -dt_ms / half_life_ms)


@dataclasses.dataclass
class _State:
    time_ms: int = 0
    mid: float = 0.0
    basis: float | None = None
    iv: float | None = None
    half_spread_frac: float = 0.0
    depth: float = 0.0
    sequence: int = 0
    last_emit_ms: int = -(2**62)
    bids: tuple[tuple[float, float], ...] = ()    # the last book's levels
    asks: tuple[tuple[float, float], ...] = ()
    curve: DepthCurve | None = None               # restored from the last mark until a book arrives


class MarkEngine:
    def __init__(self, universe: Universe, config: MarkConfig = MarkConfig()) -> None:
        self.universe = universe
        self.config = config
        self._index: dict[str, tuple[int, float]] = {}      # underlying -> (time, price)
        self._state: dict[str, _State] = {}
        self._perp_of = {i.underlying: s for s, i in universe.instruments.items() if i.kind == Kind.PERPETUAL}
        self._future_by_expiry = {(i.underlying, i.expiry_ms): s for s, i in universe.instruments.items()
                                  if i.kind == Kind.FUTURE}
        self.latest: dict[str, MarkValue] = {}

    def index_price(self, underlying: str) -> float | None:
        if underlying in self._index:
            return self._index[underlying][1]
        perp = self._perp_of.get(underlying)
        st = self._state.get(perp) if perp else None
        return st.mid if st and st.mid > 0 else None

    def restore(self, mark: MarkValue) -> None:
        """Resume smoothing state from the last published mark of an instrument."""
        self.latest[mark.instrument] = mark
        if mark.instrument.startswith("index:"):
            self._index[mark.underlying] = (mark.event_time_ms, mark.index_price)
            return
        st = self._state.setdefault(mark.instrument, _State())
        st.time_ms, st.mid, st.sequence = mark.event_time_ms, mark.mark_price, mark.sequence
        st.basis = mark.basis
        st.iv = mark.implied_vol or None
        st.half_spread_frac, st.depth = mark.half_spread_frac, mark.depth_contracts
        st.curve = mark.depth_curve
        st.last_emit_ms = mark.event_time_ms

    def update(self, accepted: list[AcceptedTick]) -> list[MarkValue]:
        """Fold accepted ticks in; return the marks due (one per instrument at most per interval)."""
        touched: dict[str, int] = {}
        for acc in accepted:
            tick = acc.tick
            if tick.instrument in self.universe.underlyings:
                self._index[tick.instrument] = (tick.event_time_ms, tick.price)
                touched["index:" + tick.instrument] = tick.event_time_ms
                st = self._state.setdefault("index:" + tick.instrument, _State())
                st.sequence = acc.sequence
                continue
            inst = self.universe.instruments[tick.instrument]
            st = self._state.setdefault(tick.instrument, _State())
            mid = 0.5 * (tick.bid + tick.ask) if tick.bid > 0 and tick.ask > 0 else tick.price
            dt = tick.event_time_ms - st.time_ms if st.time_ms else 0
            st.time_ms, st.mid, st.sequence = tick.event_time_ms, mid, acc.sequence
            st.half_spread_frac = (tick.ask - tick.bid) / (tick.ask + tick.bid) if tick.bid > 0 and tick.ask > 0 else st.half_spread_frac
            # depth_contracts stays the size of the top five levels (what the spread-and-depth add-on and
            # exchange-sim's book were calibrated on); the deeper book is in the curve
            depth = sum(s for _, s in tick.bids[:TOP_LEVELS]) + sum(s for _, s in tick.asks[:TOP_LEVELS])
            st.depth = depth if depth > 0 else max(st.depth, min(tick.bid_size, tick.ask_size))
            if tick.bids or tick.asks:
                st.bids, st.asks, st.curve = tick.bids, tick.asks, None
            if inst.is_option:
                self._update_iv(inst, st, tick.implied_vol, mid, dt)
            else:
                index = self.index_price(inst.underlying)
                if index is not None:
                    raw = mid - index
                    st.basis = raw if st.basis is None else st.basis + _alpha(dt, self.config.basis_half_life_ms) * (raw - st.basis)
            touched[tick.instrument] = tick.event_time_ms
        marks: list[MarkValue] = []
        for symbol, time_ms in touched.items():
            st = self._state[symbol]
            if time_ms - st.last_emit_ms < self.config.interval_ms:
                continue
            mark = self._mark(symbol, time_ms, st)
            if mark is not None:
                st.last_emit_ms = time_ms
                self.latest[symbol] = mark
                marks.append(mark)
        return marks

    def _forward(self, inst: Instrument) -> float | None:
        future = self._future_by_expiry.get((inst.underlying, inst.expiry_ms))
        if future is not None and future in self.latest:
            return self.latest[future].mark_price
        return self.index_price(inst.underlying)

    def _update_iv(self, inst: Instrument, st: _State, tick_iv: float, mid: float, dt: int) -> None:
        iv = tick_iv if tick_iv > 0 else None
        if iv is None:
            forward = self._forward(inst)
            if forward is not None:
                iv = implied_vol(mid, forward, inst.strike_usd, inst.years_to_expiry(st.time_ms), inst.kind == Kind.CALL)
        if iv is None:
            return
        st.iv = iv if st.iv is None else st.iv + _alpha(dt, self.config.iv_half_life_ms) * (iv - st.iv)

    def _curve(self, st: _State) -> DepthCurve | None:
        if st.curve is None and (st.bids or st.asks):
            st.curve = curve_from_levels(st.mid, st.bids, st.asks, self.config.depth_buckets_bps)
        return st.curve

    def _mark(self, symbol: str, time_ms: int, st: _State) -> MarkValue | None:
        if symbol.startswith("index:"):
            und = symbol[6:]
            price = self._index[und][1]
            return MarkValue(time_ms, symbol, und, price, price, 0.0, 0.0, 0.0, 0.0, st.sequence)
        inst = self.universe.instruments[symbol]
        index = self.index_price(inst.underlying)
        if index is None:
            return None
        if inst.is_option:
            forward = self._forward(inst)
            if forward is None or st.iv is None:
                return None
            price = black76(forward, inst.strike_usd, inst.years_to_expiry(time_ms), st.iv, inst.kind == Kind.CALL)
            return MarkValue(time_ms, symbol, inst.underlying, index, price, forward - index, st.iv,
                             st.half_spread_frac, st.depth, st.sequence, self._curve(st))
        bound = (self.config.max_perp_basis_frac if inst.kind == Kind.PERPETUAL
                 else self.config.max_future_basis_frac) * index
        basis = min(max(st.basis or 0.0, -bound), bound)
        return MarkValue(time_ms, symbol, inst.underlying, index, index + basis, basis, 0.0,
                         st.half_spread_frac, st.depth, st.sequence, self._curve(st))
