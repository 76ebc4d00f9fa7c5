"""The instrument universe: every tradable instrument's spec and its underlying, from a TOML file.

Pure: the file's text and the as-of time are passed in (relative expiries resolve against it).
A bad file raises :class:`UniverseError` naming the entry at fault.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import pathlib
import re
import tomllib
from enum import IntEnum

from marginflow.shared.units import MS_PER_DAY, MS_PER_YEAR

DEFAULT_UNIVERSE_FILE = pathlib.Path(__file__).resolve().parent.parent / "config" / "universe.toml"

# Time units of the whole platform: an ACT/365 year for time to expiry and annualised vols.

# Plausibility bounds every consumer applies to market data: beyond them a value is a unit or
# encoding error, not a market (no crypto asset trades near 10^12 USD; 2000 % vol is no smile).
MAX_PRICE_USD = 1e12
MAX_IMPLIED_VOL = 20.0
# md.marks keys: an instrument's symbol, or this prefix and an underlying for its index price.
INDEX_KEY_PREFIX = "index:"


class UniverseError(ValueError):
    pass


class Kind(IntEnum):
    """Same numbering as ``marginflow.common.v1.InstrumentKind``."""

    PERPETUAL = 1
    FUTURE = 2
    CALL = 3
    PUT = 4


_KIND_NAMES = {"perpetual": Kind.PERPETUAL, "future": Kind.FUTURE, "call": Kind.CALL, "put": Kind.PUT}


@dataclasses.dataclass(frozen=True)
class Underlying:
    symbol: str
    index_price_usd: float
    annual_vol: float
    spread_bps: float
    depth_contracts: float


@dataclasses.dataclass(frozen=True)
class Instrument:
    symbol: str
    kind: Kind
    underlying: str
    contract_size: float
    tick_size_usd: float
    lot_size: float
    strike_usd: float = 0.0
    expiry_ms: int = 0   # 0 for perpetuals

    @property
    def is_option(self) -> bool:
        return self.kind in (Kind.CALL, Kind.PUT)

    def years_to_expiry(self, now_ms: int) -> float:
        if self.kind == Kind.PERPETUAL:
            return 0.0
        return max(0.0, (self.expiry_ms - now_ms) / MS_PER_YEAR)


@dataclasses.dataclass(frozen=True)
class Universe:
    underlyings: dict[str, Underlying]
    instruments: dict[str, Instrument]

    def by_underlying(self, underlying: str) -> list[Instrument]:
        return [i for i in self.instruments.values() if i.underlying == underlying]

    def __contains__(self, symbol: str) -> bool:
        return symbol in self.instruments

    def get(self, symbol: str) -> Instrument | None:
        return self.instruments.get(symbol)

    @property
    def symbols(self) -> list[str]:
        return list(self.instruments)


_REL = re.compile(r"^\+(\d+)d$")


def resolve_expiry(text: str, as_of_ms: int) -> int:
    """Absolute ISO-8601 time, or ``+Nd``: the first Friday 08:00 UTC at least N days after as_of."""
    match = _REL.match(text.strip())
    if match:
        base = dt.datetime.fromtimestamp(as_of_ms / 1000, tz=dt.timezone.utc) + dt.timedelta(days=int(match.group(1)))
        day = base.replace(hour=8, minute=0, second=0, microsecond=0)
        if day < base:
            day += dt.timedelta(days=1)
        day += dt.timedelta(days=(4 - day.weekday()) % 7)  # Friday = 4
        return int(day.timestamp() * 1000)
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UniverseError(f"expiry {text!r} is neither ISO-8601 nor +Nd") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return int(when.timestamp() * 1000)


def _expiry_code(expiry_ms: int) -> str:
    return dt.datetime.fromtimestamp(expiry_ms / 1000, tz=dt.timezone.utc).strftime("%d%b%y").upper()


def _positive(entry: dict, key: str, where: str) -> float:
    value = entry.get(key)
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise UniverseError(f"{where}: {key} must be a finite number > 0, got {value!r}")
    return float(value)


def parse_universe(text: str, as_of_ms: int) -> Universe:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UniverseError(f"universe file is not valid TOML: {exc}") from None
    underlyings: dict[str, Underlying] = {}
    for i, u in enumerate(doc.get("underlying", [])):
        where = f"underlying[{i}]"
        sym = u.get("symbol")
        if not isinstance(sym, str) or not sym:
            raise UniverseError(f"{where}: symbol missing")
        underlyings[sym] = Underlying(
            sym, _positive(u, "index_price_usd", where), _positive(u, "annual_vol", where),
            float(u.get("spread_bps", 2.0)), float(u.get("depth_contracts", 100.0)))
    if not underlyings:
        raise UniverseError("universe has no [[underlying]]")
    instruments: dict[str, Instrument] = {}

    def add(inst: Instrument, where: str) -> None:
        if inst.underlying not in underlyings:
            raise UniverseError(f"{where}: unknown underlying {inst.underlying!r}")
        if inst.symbol in instruments:
            raise UniverseError(f"{where}: duplicate instrument {inst.symbol!r}")
        instruments[inst.symbol] = inst

    def common(entry: dict, where: str) -> tuple[float, float, float]:
        return (_positive(entry, "contract_size", where), _positive(entry, "tick_size_usd", where),
                _positive(entry, "lot_size", where))

    for i, e in enumerate(doc.get("instrument", [])):
        where = f"instrument[{i}]"
        kind = _KIND_NAMES.get(str(e.get("kind", "")).lower())
        if kind is None:
            raise UniverseError(f"{where}: kind must be one of {sorted(_KIND_NAMES)}, got {e.get('kind')!r}")
        cs, ts, ls = common(e, where)
        expiry = resolve_expiry(e["expiry"], as_of_ms) if "expiry" in e else 0
        if kind != Kind.PERPETUAL and not expiry:
            raise UniverseError(f"{where}: {kind.name.lower()} needs an expiry")
        strike = _positive(e, "strike_usd", where) if kind in (Kind.CALL, Kind.PUT) else 0.0
        add(Instrument(str(e.get("symbol", "")), kind, str(e.get("underlying", "")), cs, ts, ls, strike, expiry), where)
    for i, e in enumerate(doc.get("future_series", [])):
        where = f"future_series[{i}]"
        cs, ts, ls = common(e, where)
        und = str(e.get("underlying", ""))
        for code in e.get("expiries", []):
            expiry = resolve_expiry(code, as_of_ms)
            add(Instrument(f"{und}-{_expiry_code(expiry)}", Kind.FUTURE, und, cs, ts, ls, 0.0, expiry), where)
    for i, e in enumerate(doc.get("option_chain", [])):
        where = f"option_chain[{i}]"
        cs, ts, ls = common(e, where)
        und = str(e.get("underlying", ""))
        if und not in underlyings:
            raise UniverseError(f"{where}: unknown underlying {und!r}")
        step = _positive(e, "strike_step_usd", where)
        spot = underlyings[und].index_price_usd
        strikes = sorted({max(step, round(spot * float(m) / step) * step) for m in e.get("moneyness", [])})
        if not strikes:
            raise UniverseError(f"{where}: no moneyness given")
        for code in e.get("expiries", []):
            expiry = resolve_expiry(code, as_of_ms)
            for k in strikes:
                for kind, letter in ((Kind.CALL, "C"), (Kind.PUT, "P")):
                    add(Instrument(f"{und}-{_expiry_code(expiry)}-{k:g}-{letter}", kind, und, cs, ts, ls,
                                   float(k), expiry), where)
    for sym, inst in instruments.items():
        if not sym:
            raise UniverseError("an instrument has no symbol")
    return Universe(underlyings, instruments)


def load_universe(path: str | pathlib.Path | None, as_of_ms: int) -> Universe:
    path = pathlib.Path(path) if path else DEFAULT_UNIVERSE_FILE
    try:
        text = path.read_text()
    except OSError as exc:
        raise UniverseError(f"cannot read universe file {path}: {exc}") from None
    return parse_universe(text, as_of_ms)


def platform_universe(common: "object", now_ms: int) -> Universe:
    """The universe every service uses: MF_UNIVERSE_FILE (or the packaged one) as of MF_UNIVERSE_AS_OF."""
    return load_universe(getattr(common, "universe_file", "") or None,
                         common.universe_as_of_ms(now_ms))  # type: ignore[attr-defined]
