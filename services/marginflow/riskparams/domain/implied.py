"""At-the-money implied volatility of an underlying from its option marks.

Per expiry ``T`` (at least ``min_expiry_ms`` away): the implied vol at each strike (mean of the
call and the put where both are marked), then the ATM vol by linear interpolation in strike at
the index price ``S`` (flat beyond the quoted strikes). Across expiries the ATM *total variance*
``w(T) = σ²_ATM(T)·T`` is interpolated linearly in ``T`` to the target tenor (flat vol beyond the
first and last expiry):

.. math:: \\sigma_{ATM}(\\tau) = \\sqrt{\\frac{w(T_1) + (w(T_2)-w(T_1))\\frac{\\tau-T_1}{T_2-T_1}}{\\tau}}

Source: the constant-maturity interpolation of CBOE, *VIX White Paper* (2019), step 2;
J. Gatheral, *The Volatility Surface* (2006), ch. 1 (total variance).
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict

from marginflow.shared.units import DAYS_PER_YEAR, MS_PER_YEAR



@dataclasses.dataclass(frozen=True)
class OptionQuote:
    strike_usd: float
    expiry_ms: int
    implied_vol: float      # annualised
    event_time_ms: int
    is_call: bool


def _interp(x: float, xs: list[float], ys: list[float]) -> float:
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    for i in range(1, len(xs)):
        if x <= xs[i]:
            t = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
            return ys[i - 1] + t * (ys[i] - ys[i - 1])
    return ys[-1]  # pragma: no cover


def usable_smiles(quotes: list[OptionQuote], as_of_ms: int, min_expiry_ms: int,
                  max_age_ms: int) -> list[tuple[int, list[float], list[float]]]:
    """Per expiry at least ``min_expiry_ms`` away, in expiry order: (expiry, strikes ascending, implied vol
    at each: the mean of the call and the put where both are marked), from quotes at most ``max_age_ms``
    old with a finite positive vol."""
    by_expiry: dict[int, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for q in quotes:
        if q.expiry_ms - as_of_ms < min_expiry_ms or as_of_ms - q.event_time_ms > max_age_ms:
            continue
        if not (q.implied_vol > 0 and math.isfinite(q.implied_vol)):
            continue
        by_expiry[q.expiry_ms][q.strike_usd].append(q.implied_vol)
    out = []
    for expiry, strikes in sorted(by_expiry.items()):
        ks = sorted(strikes)
        out.append((expiry, ks, [sum(strikes[k]) / len(strikes[k]) for k in ks]))
    return out


def vol_at_tenor(points: list[tuple[float, float]], tenor_days: float) -> float:
    """The vol at ``tenor_days`` from (T years, vol) points in T order: total variance σ²T interpolated
    linearly in T, flat vol beyond the first and last; 0.0 without points."""
    if not points:
        return 0.0
    tau = tenor_days / DAYS_PER_YEAR
    if tau <= points[0][0]:
        return points[0][1]
    if tau >= points[-1][0]:
        return points[-1][1]
    w = _interp(tau, [t for t, _ in points], [v * v * t for t, v in points])
    return math.sqrt(max(w, 0.0) / tau)


def atm_implied_vol(quotes: list[OptionQuote], index_price_usd: float, as_of_ms: int, tenor_days: float,
                    min_expiry_ms: int, max_age_ms: int) -> float:
    """ATM implied vol (annualised) at ``tenor_days``; 0.0 when no usable quote exists."""
    if not (index_price_usd > 0 and math.isfinite(index_price_usd)):
        return 0.0
    points = [((expiry - as_of_ms) / MS_PER_YEAR, _interp(index_price_usd, ks, vols))
              for expiry, ks, vols in usable_smiles(quotes, as_of_ms, min_expiry_ms, max_age_ms)]
    return vol_at_tenor(points, tenor_days)
