"""Validation of raw ticks: every rule a tick must pass before anything downstream sees it.

Rules, each with the reason code that goes to ``md.ticks.dlq`` and to the rejection metric:

- ``unknown_instrument``  the symbol is neither in the universe nor an underlying's index
- ``non_finite_price``    price, bid, ask, a size or the implied vol is NaN or ±inf
- ``non_positive_price``  price ≤ 0 (bid/ask may be 0 = absent, never negative)
- ``implausible``         price, bid or ask above ``MAX_PRICE_USD``, implied vol above ``MAX_IMPLIED_VOL``
- ``negative_size``       a size < 0
- ``crossed_book``        bid > ask with both present
- ``time_backwards``      event time earlier than the instrument's last accepted tick
- ``jump_contradicted``   a suspect jump undone by a tick back at the old level within its hold window

A **jump** is a move of the price from the instrument's reference (last accepted price) with
|ln(p / ref)| > ``jump_threshold``. It is held as *suspect*, not dropped: when the next
``confirm_ticks`` ticks stay within ``confirm_band`` (log distance) of the suspect price, the jump
is real and the suspect and the held ticks are accepted in order (a 40–50 % crash in crypto does
happen and must pass); when a following tick lies back within ``confirm_band`` of the reference,
the suspect is contradicted and dead-lettered, and the tick that contradicted it goes on normally.
A suspect is confirmed by ``confirm_ticks`` ticks *or* by ``hold_max_ms`` of event time passing
without a contradiction, whichever comes first, and can be contradicted only within that hold
window: a tick after the window first releases the suspect, then is checked against the new level
(so at daily spacing a close that the next day moves away from is kept, and at sub-second spacing
a one-print spike that returns is still dropped). A quiet instrument's suspect is released once
event time on any instrument has passed its hold window. Options are exempt from the jump rule: their relative moves are large
by nature (they are repriced from the underlying instead).
"""

from __future__ import annotations

import dataclasses
import math

from marginflow.marketdata.domain.ticks import AcceptedTick, RawTick
from marginflow.shared.universe import MAX_IMPLIED_VOL, MAX_PRICE_USD, Universe


@dataclasses.dataclass(frozen=True)
class ValidationConfig:
    jump_threshold: float = 0.10     # log move vs reference that makes a tick suspect (≈ 10 %)
    confirm_ticks: int = 3           # following ticks needed to confirm a jump
    confirm_band: float = 0.03       # log distance counted as "at the suspect / at the reference"
    hold_max_ms: int = 60_000        # event-time limit on holding a suspect

    def __post_init__(self) -> None:
        if not (0 < self.jump_threshold < 5):
            raise ValueError(f"jump_threshold must be in (0, 5), got {self.jump_threshold}")
        if self.confirm_ticks < 1:
            raise ValueError(f"confirm_ticks must be >= 1, got {self.confirm_ticks}")
        if not (0 < self.confirm_band < self.jump_threshold):
            raise ValueError("confirm_band must be > 0 and below jump_threshold")
        if self.hold_max_ms <= 0:
            raise ValueError(f"hold_max_ms must be > 0, got {self.hold_max_ms}")


@dataclasses.dataclass(frozen=True, slots=True)
class Rejection:
    tick: RawTick
    code: str
    detail: str


@dataclasses.dataclass
class _InstrumentState:
    last_time_ms: int = -(2**62)
    reference: float = 0.0           # last accepted price
    sequence: int = 0
    suspect: RawTick | None = None
    held: list[RawTick] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Outcome:
    accepted: list[AcceptedTick] = dataclasses.field(default_factory=list)
    rejected: list[Rejection] = dataclasses.field(default_factory=list)
    suspects: int = 0                # jumps newly held by this batch
    confirmed: int = 0               # jumps confirmed by this batch


def static_check(tick: RawTick, universe: Universe) -> tuple[str, str] | None:
    """The rules that need no history: (code, detail) of the first one broken, or None."""
    if tick.instrument not in universe.instruments and tick.instrument not in universe.underlyings:
        return "unknown_instrument", f"{tick.instrument!r} is not in the instrument universe"
    for name in ("price", "bid", "ask", "bid_size", "ask_size", "implied_vol"):
        value = getattr(tick, name)
        if not math.isfinite(value):
            return "non_finite_price", f"{name} is {value!r}"
    for side in (tick.bids, tick.asks):
        if not side:
            continue
        # whole sides at once (a deep book has a dozen levels a side): a finite sum and positive minima
        # pass; anything else is looked at level by level for its reason
        prices = [p for p, _ in side]
        sizes = [q for _, q in side]
        if math.isfinite(sum(prices) + sum(sizes)) and min(prices) > 0 and min(sizes) >= 0:
            continue
        for level_price, level_size in side:
            if not (math.isfinite(level_price) and math.isfinite(level_size)):
                return "non_finite_price", "a depth level is not finite"
            if level_price <= 0 or level_size < 0:
                return "negative_size", "a depth level has a non-positive price or negative size"
    if tick.price <= 0:
        return "non_positive_price", f"price {tick.price!r} <= 0"
    if tick.bid < 0 or tick.ask < 0:
        return "non_positive_price", f"bid {tick.bid!r} / ask {tick.ask!r} negative"
    if tick.bid_size < 0 or tick.ask_size < 0:
        return "negative_size", f"bid_size {tick.bid_size!r} / ask_size {tick.ask_size!r} negative"
    if tick.implied_vol < 0:
        return "non_finite_price", f"implied_vol {tick.implied_vol!r} negative"
    if max(tick.price, tick.bid, tick.ask) > MAX_PRICE_USD or tick.implied_vol > MAX_IMPLIED_VOL:
        return "implausible", f"price {tick.price!r} / bid {tick.bid!r} / ask {tick.ask!r} / iv {tick.implied_vol!r}"
    if tick.bid > 0 and tick.ask > 0 and tick.bid > tick.ask:
        return "crossed_book", f"bid {tick.bid!r} > ask {tick.ask!r}"
    return None


class TickValidator:
    """Applies every rule, keeping per-instrument state (last time, reference price, suspects)."""

    def __init__(self, universe: Universe, config: ValidationConfig = ValidationConfig()) -> None:
        self.universe = universe
        self.config = config
        self._state: dict[str, _InstrumentState] = {}
        self._jump_exempt = {s for s, i in universe.instruments.items() if i.is_option}

    def restore(self, instrument: str, last_time_ms: int, reference: float, sequence: int) -> None:
        """Resume after a restart from what was last published for ``instrument``."""
        st = self._state.setdefault(instrument, _InstrumentState())
        st.last_time_ms, st.reference, st.sequence = last_time_ms, reference, sequence

    def last_time_ms(self, instrument: str) -> int | None:
        st = self._state.get(instrument)
        return None if st is None or st.sequence == 0 else st.last_time_ms

    def held_count(self) -> int:
        return sum(len(st.held) + (st.suspect is not None) for st in self._state.values())

    def process(self, ticks: list[RawTick]) -> Outcome:
        """Validate a batch; suspects of quiet instruments older than ``hold_max_ms`` (by the
        batch's latest event time) are released at the end."""
        out = Outcome()
        newest = -(2**62)
        for tick in ticks:
            self._one(tick, out)
            if tick.event_time_ms > newest:
                newest = tick.event_time_ms
        if ticks and self._has_suspects():
            released = self.expire(newest)
            out.accepted.extend(released.accepted)
            out.confirmed += released.confirmed
        return out

    def _has_suspects(self) -> bool:
        return any(st.suspect is not None for st in self._state.values())

    def _accept(self, st: _InstrumentState, tick: RawTick, out: Outcome) -> None:
        st.sequence += 1
        st.last_time_ms = tick.event_time_ms
        st.reference = tick.price
        out.accepted.append(AcceptedTick(tick, st.sequence))

    def _release(self, st: _InstrumentState, out: Outcome) -> None:
        assert st.suspect is not None
        self._accept(st, st.suspect, out)
        held, st.suspect, st.held = st.held, None, []
        out.confirmed += 1
        for tick in held:
            self._accept(st, tick, out)

    def _one(self, tick: RawTick, out: Outcome) -> None:
        problem = static_check(tick, self.universe)
        if problem is not None:
            out.rejected.append(Rejection(tick, *problem))
            return
        st = self._state.setdefault(tick.instrument, _InstrumentState())
        newest = st.held[-1].event_time_ms if st.held else (
            st.suspect.event_time_ms if st.suspect else st.last_time_ms)
        if tick.event_time_ms < newest:
            out.rejected.append(Rejection(
                tick, "time_backwards", f"event time {tick.event_time_ms} < last {newest} for {tick.instrument}"))
            return
        cfg = self.config
        if st.suspect is not None and tick.event_time_ms - st.suspect.event_time_ms > cfg.hold_max_ms:
            # The hold time is checked first: a suspect that stood unchallenged for the whole hold
            # window is confirmed by then, so a tick after the window (the next daily close, a
            # market waking up) is judged against the new level, never as a contradiction.
            self._release(st, out)
        if st.suspect is not None:
            to_suspect = abs(math.log(tick.price / st.suspect.price))
            to_reference = abs(math.log(tick.price / st.reference))
            if to_reference <= cfg.confirm_band and to_reference < to_suspect:
                out.rejected.append(Rejection(
                    st.suspect, "jump_contradicted",
                    f"jump to {st.suspect.price!r} from {st.reference!r} not confirmed: next tick {tick.price!r}"))
                held, st.suspect, st.held = st.held, None, []
                for h in held:   # ticks that were waiting behind the suspect get a normal review
                    self._one(h, out)
                self._one(tick, out)
                return
            if to_suspect <= cfg.confirm_band:
                st.held.append(tick)
                if len(st.held) >= cfg.confirm_ticks:
                    self._release(st, out)
                return
            # Neither at the suspect nor back at the reference: keep waiting with it.
            st.held.append(tick)
            if len(st.held) >= 4 * cfg.confirm_ticks:
                self._release(st, out)   # a persistent new regime: the jump was real
            return
        if (st.sequence > 0 and tick.instrument not in self._jump_exempt
                and abs(math.log(tick.price / st.reference)) > cfg.jump_threshold):
            st.suspect = tick
            out.suspects += 1
            return
        self._accept(st, tick, out)

    def expire(self, now_event_ms: int) -> Outcome:
        """Release suspects older than hold_max_ms of event time (called on quiet instruments)."""
        out = Outcome()
        for st in self._state.values():
            if st.suspect is not None and now_event_ms - st.suspect.event_time_ms > self.config.hold_max_ms:
                self._release(st, out)
        return out
