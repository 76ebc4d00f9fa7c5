"""A price history from validated ticks: one close per sampling interval and underlying.

Input rows are marketdata ticks (the replay CSV: ``instrument`` is an underlying, ``BTC``, for its
index price, or its perpetual, ``BTC-PERP``). Bad prints are dropped by marketdata's own
:class:`~marginflow.marketdata.domain.validation.TickValidator` (static checks, time order, jump
confirmation) and counted by reason. The surviving prices of each underlying go through riskparams'
:class:`~marginflow.riskparams.domain.sampling.Sampler` (previous-tick sampling on the event-time
clock, empty intervals as zero returns, long gaps re-based), so the returns are the ones the
riskparams service would compute from the same ticks. Observations are the intervals where every
underlying has a return; observation ``t`` is timed at its interval's end.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable

import numpy as np

from marginflow.marketdata.domain.ticks import RawTick
from marginflow.marketdata.domain.validation import TickValidator, ValidationConfig
from marginflow.riskparams.domain.sampling import Sampler, samples_per_year
from marginflow.shared.universe import Instrument, Kind, Underlying, Universe

DEFAULT_PRIOR_VOL = 0.8      # annualised prior of an underlying the universe does not know (crypto-typical)
COARSE_JUMP_THRESHOLD = 0.5  # log move held as a suspect in hourly or coarser closes (≈ −40 % / +65 %)
COARSE_CONFIRM_BAND = 0.15   # log distance of the next closes that settles a suspect there


def validation_for(interval_ms: int | None, jump_threshold: float = 0.0) -> ValidationConfig:
    """marketdata's validation rules with settings for a history sampled every ``interval_ms``.

    Below one hour, marketdata's own settings (a 10 % move is a suspect jump, settled within 3 % by
    the next ticks). Hourly or daily closes move more than 10 % often in crypto and the next close
    is rarely within 3 % of anything, so there: a suspect is a log move beyond 0.5 (≈ −40 % / +65 %:
    a slipped decimal point, a fat-fingered close), the next closes settle it within 0.15 of the old
    or the new level, and it is held for up to 4 intervals (marketdata releases a suspect after
    60 s of event time — at daily sampling that is the very next close). ``interval_ms`` None: daily.
    ``jump_threshold`` overrides the threshold.
    """
    if interval_ms is not None and interval_ms < 3_600_000:
        base = ValidationConfig()
    else:
        base = ValidationConfig(jump_threshold=COARSE_JUMP_THRESHOLD, confirm_band=COARSE_CONFIRM_BAND,
                                hold_max_ms=4 * (interval_ms or 86_400_000))
    return dataclasses.replace(base, jump_threshold=jump_threshold) if jump_threshold else base


@dataclasses.dataclass(frozen=True)
class History:
    underlyings: tuple[str, ...]
    interval_ms: int
    time_ms: np.ndarray        # int64[T], end of each observation's interval
    close: np.ndarray          # [T, U] USD
    returns: np.ndarray        # [T, U] log return into each observation
    prior_annual_vol: np.ndarray   # [U]
    half_spread_frac: np.ndarray   # [U]
    depth_usd: np.ndarray          # [U] book depth in USD (the universe's depth in contracts at its price)

    @property
    def n(self) -> int:
        return int(self.time_ms.shape[0])

    @property
    def samples_per_year(self) -> float:
        return samples_per_year(self.interval_ms)


@dataclasses.dataclass
class DataReport:
    rows: int = 0
    bad_rows: int = 0                 # could not be parsed
    ignored: int = 0                  # valid instruments that are not sampled (futures, options, a perp beside its index)
    accepted: int = 0
    rejected: dict[str, int] = dataclasses.field(default_factory=dict)   # validator reason -> count
    observations: int = 0
    unaligned_intervals: int = 0      # intervals dropped because an underlying had no return there

    @property
    def dropped(self) -> int:
        return self.bad_rows + sum(self.rejected.values())


def history_universe(known: Universe, symbols: Iterable[str], first_price: dict[str, float]) -> Universe:
    """The known universe plus an underlying and a perpetual for every underlying symbol it lacks."""
    unds = dict(known.underlyings)
    insts = dict(known.instruments)
    for sym in symbols:
        if sym not in unds:
            unds[sym] = Underlying(sym, first_price.get(sym, 1.0), DEFAULT_PRIOR_VOL, 2.0, 100.0)
            perp = f"{sym}-PERP"
            insts.setdefault(perp, Instrument(perp, Kind.PERPETUAL, sym, 1.0, 1e-8, 1e-8))
    return Universe(unds, insts)


def underlying_of(symbol: str, universe: Universe) -> tuple[str | None, bool]:
    """``(underlying, is_index)`` of a sampled row's symbol: the index itself or its perpetual."""
    if symbol in universe.underlyings:
        return symbol, True
    inst = universe.instruments.get(symbol)
    if inst is not None and inst.kind == Kind.PERPETUAL:
        return inst.underlying, False
    return None, False


def detect_interval_ms(times_by_underlying: dict[str, list[int]]) -> int:
    """The history's own sampling interval: the median spacing of distinct event times."""
    gaps = []
    for ts in times_by_underlying.values():
        u = np.unique(np.asarray(ts, dtype=np.int64))
        if u.size > 1:
            gaps.append(np.diff(u))
    if not gaps:
        raise ValueError("the history needs at least two prices of one underlying")
    return int(max(1, np.median(np.concatenate(gaps))))


def build_history(ticks: list[RawTick], bad_rows: int, known: Universe, interval_ms: int | None = None,
                  validation: ValidationConfig = ValidationConfig(), max_fill: int = 10) -> tuple[History, DataReport]:
    """Validate, sample and align ``ticks`` (any order within an instrument's time order)."""
    rep = DataReport(rows=len(ticks) + bad_rows, bad_rows=bad_rows)
    firsts: dict[str, float] = {}
    for t in ticks:
        if "-" not in t.instrument and t.instrument not in firsts and t.price > 0:
            firsts[t.instrument] = t.price
    universe = history_universe(known, sorted(firsts), firsts)
    outcome = TickValidator(universe, validation).process(sorted(ticks, key=lambda t: t.event_time_ms))
    for rej in outcome.rejected:
        rep.rejected[rej.code] = rep.rejected.get(rej.code, 0) + 1
    has_index = {t.tick.instrument for t in outcome.accepted if t.tick.instrument in universe.underlyings}
    series: dict[str, list[tuple[int, float]]] = collections.defaultdict(list)
    for acc in outcome.accepted:
        und, is_index = underlying_of(acc.tick.instrument, universe)
        if und is None or (not is_index and und in has_index):
            rep.ignored += 1
            continue
        series[und].append((acc.tick.event_time_ms, acc.tick.price))
    rep.accepted = sum(len(v) for v in series.values())
    if not series:
        raise ValueError("no valid prices of an underlying or perpetual in the history")
    for v in series.values():
        v.sort(key=lambda x: x[0])
    if interval_ms is None:
        interval_ms = detect_interval_ms({u: [x[0] for x in v] for u, v in series.items()})
    order = list(known.underlyings)
    unds = tuple([u for u in order if u in series] + sorted(u for u in series if u not in order))
    per_und: list[dict[int, tuple[float, float]]] = []     # bucket -> (return, close)
    for und in unds:
        sampler = Sampler(interval_ms, max_fill)
        out: dict[int, tuple[float, float]] = {}
        for time_ms, price in series[und]:
            close = sampler.last_price       # the close of every interval this price completes
            for b, r in sampler.observe(time_ms, price) or ():
                out[b] = (r, close)
        per_und.append(out)
    common = sorted(set.intersection(*(set(d) for d in per_und)))
    rep.unaligned_intervals = len(set.union(*(set(d) for d in per_und))) - len(common)
    if len(common) < 2:
        raise ValueError("the underlyings of the history share fewer than 2 sampling intervals")
    rets = np.array([[d[b][0] for d in per_und] for b in common])
    close = np.array([[d[b][1] for d in per_und] for b in common])
    time_ms = (np.asarray(common, dtype=np.int64) + 1) * interval_ms
    rep.observations = len(common)
    prior = np.array([universe.underlyings[u].annual_vol for u in unds])
    half_spread = np.array([universe.underlyings[u].spread_bps * 1e-4 for u in unds])
    # depth in USD: a book's depth follows the price far less than its contract count does
    depth = np.array([universe.underlyings[u].depth_contracts * universe.underlyings[u].index_price_usd for u in unds])
    return History(unds, interval_ms, time_ms, close, rets, prior, half_spread, depth), rep
