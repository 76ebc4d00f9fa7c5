"""Reference portfolios: parsed from TOML, opened at each observation, valued along the history.

A portfolio is a set of legs, each a constant-notional position opened afresh at every observation
(a "vintage") and held over the margin horizon:

* ``perpetual``: ``notional_usd / S`` contracts of the underlying's perpetual (contract size 1);
* ``future``: the constant-maturity future ``tenor_days`` ahead, priced ``S·e^{carry·T}``;
* ``call`` / ``put``: the European option ``tenor_days`` ahead struck at ``moneyness·S`` (the
  simulator's chain is struck on moneyness of the index too), ``notional_usd / S`` contracts on the
  underlying's notional, priced by Black-76 on the index (zero rate, as the margin service does);
* ``delta_hedge``: a perpetual sized at opening to cancel the option legs' Black-76 delta.

Sign of ``notional_usd``: long > 0, short < 0. ``leverage`` (optional) sets the trader's collateral
at ``|gross notional| / leverage`` (never below the rule's IM at opening: a rule that asks more caps
the leverage); without it the collateral is the rule's IM at opening.

Option implied vols: a history of prices carries no option quotes, so options are valued on a
proxy smile built like the simulator's — ATM = ``iv_premium`` × the EWMA (λ = 0.94) volatility of the
underlying at that observation, ``iv = atm·(1 + skew·x + curvature·x²)``, ``x = ln(K/F)/√T``,
floored at 5 % — the same proxy when a position is opened, margined and revalued.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib

import numpy as np
from scipy.special import ndtr

KINDS = ("perpetual", "future", "call", "put", "delta_hedge")
MIN_IV = 0.05                 # the simulator's smile floor


class PortfolioError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Leg:
    underlying: str
    kind: str
    notional_usd: float = 0.0      # signed; ignored for delta_hedge
    tenor_days: float = 0.0        # futures and options
    moneyness: float = 1.0         # options: strike / index at opening

    @property
    def is_option(self) -> bool:
        return self.kind in ("call", "put")


@dataclasses.dataclass(frozen=True)
class PortfolioSpec:
    name: str
    legs: tuple[Leg, ...]
    leverage: float | None = None
    description: str = ""


def parse_portfolios(text: str, underlyings: tuple[str, ...] | None = None) -> list[PortfolioSpec]:
    """Portfolios from TOML text (``[[portfolio]]`` with ``[[portfolio.leg]]``); PortfolioError names the entry."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PortfolioError(f"portfolio file is not valid TOML: {exc}") from None
    out: list[PortfolioSpec] = []
    names: set[str] = set()
    for i, p in enumerate(doc.get("portfolio", [])):
        where = f"portfolio[{i}]"
        name = p.get("name")
        if not isinstance(name, str) or not name:
            raise PortfolioError(f"{where}: name missing")
        if name in names:
            raise PortfolioError(f"{where}: duplicate name {name!r}")
        names.add(name)
        lev = p.get("leverage")
        if lev is not None and not (isinstance(lev, (int, float)) and math.isfinite(lev) and lev > 0):
            raise PortfolioError(f"{where} ({name}): leverage must be a number > 0, got {lev!r}")
        legs = []
        for j, leg in enumerate(p.get("leg", [])):
            lw = f"{where} ({name}) leg[{j}]"
            kind = leg.get("kind")
            if kind not in KINDS:
                raise PortfolioError(f"{lw}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
            und = leg.get("underlying")
            if not isinstance(und, str) or not und:
                raise PortfolioError(f"{lw}: underlying missing")
            notional = float(leg.get("notional_usd", 0.0))
            if kind != "delta_hedge" and not (math.isfinite(notional) and notional != 0.0):
                raise PortfolioError(f"{lw}: notional_usd must be a finite non-zero number")
            tenor = float(leg.get("tenor_days", 0.0))
            if kind in ("future", "call", "put") and not tenor > 0:
                raise PortfolioError(f"{lw}: {kind} needs tenor_days > 0")
            money = float(leg.get("moneyness", 1.0))
            if not (math.isfinite(money) and money > 0):
                raise PortfolioError(f"{lw}: moneyness must be > 0")
            legs.append(Leg(und, kind, notional, tenor, money))
        if not legs:
            raise PortfolioError(f"{where} ({name}): no legs")
        if any(leg.kind == "delta_hedge" for leg in legs) and not any(leg.is_option for leg in legs):
            raise PortfolioError(f"{where} ({name}): delta_hedge without an option leg to hedge")
        out.append(PortfolioSpec(name, tuple(legs), None if lev is None else float(lev), str(p.get("description", ""))))
    if not out:
        raise PortfolioError("no [[portfolio]] in the file")
    if underlyings is not None:
        for p in out:
            for leg in p.legs:
                if leg.underlying not in underlyings:
                    raise PortfolioError(f"portfolio {p.name}: underlying {leg.underlying} is not in the history "
                                         f"(has {', '.join(underlyings)})")
    return out


def select_portfolios(specs: list[PortfolioSpec], underlyings: tuple[str, ...]) -> tuple[list[PortfolioSpec], list[str]]:
    """The portfolios whose every underlying is in the history, and the names of those skipped."""
    keep = [p for p in specs if all(leg.underlying in underlyings for leg in p.legs)]
    skipped = [p.name for p in specs if p not in keep]
    return keep, skipped


# ---- valuation -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SmileProxy:
    """The simulator's smile around ``iv_premium`` × realised volatility (see module docstring)."""

    iv_premium: float = 1.1
    skew: float = -0.15
    curvature: float = 0.6

    def vol(self, atm_realised: np.ndarray, strike: np.ndarray, forward: np.ndarray, years: np.ndarray) -> np.ndarray:
        atm = self.iv_premium * atm_realised
        safe_years = np.maximum(years, 1.0 / 365.0)
        x = np.log(np.maximum(strike, 1e-12) / forward) / np.sqrt(safe_years)
        return np.maximum(atm * (1.0 + self.skew * x + self.curvature * x * x), MIN_IV)


def black76_delta(forward: np.ndarray, strike: np.ndarray, years: np.ndarray, vol: np.ndarray,
                  is_call: np.ndarray) -> np.ndarray:
    """Black-76 forward delta: ``N(d1)`` for a call, ``N(d1) − 1`` for a put (Black 1976); intrinsic at expiry."""
    sd = vol * np.sqrt(np.maximum(years, 0.0))
    live = sd > 0
    safe = np.where(live, sd, 1.0)
    d1 = (np.log(forward / strike) + 0.5 * safe * safe) / safe
    nd1 = np.where(live, ndtr(d1), (forward > strike).astype(np.float64))
    return np.where(is_call, nd1, nd1 - 1.0)
