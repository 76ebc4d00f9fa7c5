"""Forward-looking signals of an underlying: its implied smile summarised per tenor, and its book depth.

Per listed expiry ``T`` (the usable quotes of :func:`~marginflow.riskparams.domain.implied.usable_smiles`:
vols per strike, linear in strike between quotes and flat beyond), on the forward ``F`` (the index, zero
rates, as the ATM vol):

* ATM vol ``σ_ATM = σ(F)``;
* the **25-delta strikes**: Black-76 forward delta of a call ``Δ_c = N(d₁)``, of a put ``Δ_p = N(d₁) − 1``,
  ``d₁ = (ln(F/K) + ½σ(K)²T) / (σ(K)√T)``; the call's 25-delta strike solves ``N(d₁(K)) = 0.25``, the
  put's ``N(d₁(K)) = 0.75``, each by bisection in ``ln(K/F)`` (``N(d₁)`` falls as ``K`` rises unless the
  smile is steeper than arbitrage allows); with a flat smile
  ``K = F·exp(½σ²T − σ√T·N⁻¹(p))``;
* ``skew_25d = σ(K_25Δput) − σ(K_25Δcall)`` (vol points; > 0 when puts are dearer, as in a sell-off: the
  negative of the 25-delta risk reversal).

Per configured tenor: ATM and each wing's vol interpolated in total variance ``σ²T`` linearly in ``T``
(flat vol beyond the first and last expiry), the skew as put minus call at that tenor.

Source: the delta-based smile quotes of FX and crypto options desks (25-delta risk reversal and
butterfly; Deribit's DVOL methodology takes its surface from the same quotes): Clark, *Foreign Exchange
Option Pricing* (2011) §3.4; Reiswich & Wystup, *FX volatility smile construction* (2010), forward delta.

Book depth: the contracts resting within ``distance_bps`` of the mid on the thinner side of the
reference instrument's depth curve (linear in distance between the curve's points, ``C = 0`` at the mid,
the last point's size beyond it), valued at the index; its **depth index** is that value over its own
event-time EWMA (half-life ``h``): 1 in a normal book, 0.3 when market makers pulled 70 % of their size.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from scipy.special import ndtr

from marginflow.riskparams.domain.implied import OptionQuote, _interp, usable_smiles, vol_at_tenor
from marginflow.shared.depthcurve import DepthCurve
from marginflow.shared.units import MS_PER_YEAR

DELTA_25 = 0.25
_BISECTIONS = 100


@dataclasses.dataclass(frozen=True)
class ExpirySmile:
    expiry_ms: int
    years: float
    atm_vol: float
    put_25d_strike_usd: float
    put_25d_vol: float
    call_25d_strike_usd: float
    call_25d_vol: float

    @property
    def skew_25d(self) -> float:
        return self.put_25d_vol - self.call_25d_vol


@dataclasses.dataclass(frozen=True)
class TenorSignal:
    tenor_days: float
    atm_vol: float          # 0 when no usable quote
    put_25d_vol: float
    call_25d_vol: float

    @property
    def skew_25d(self) -> float:
        return self.put_25d_vol - self.call_25d_vol


def strike_for_delta(forward: float, years: float, strikes: Sequence[float], vols: Sequence[float],
                     n_d1: float) -> tuple[float, float]:
    """(K, σ(K)) with ``N(d₁(K)) = n_d1`` on the smile (``strikes`` ascending, ``vols`` at each; linear,
    flat beyond): 0.25 for the 25-delta call, 0.75 for the 25-delta put. ValueError for bad arguments."""
    if not (forward > 0 and math.isfinite(forward) and years > 0 and math.isfinite(years)):
        raise ValueError(f"forward and years must be finite and > 0, got {forward!r}, {years!r}")
    if not 0.0 < n_d1 < 1.0:
        raise ValueError(f"N(d1) target must lie in (0, 1), got {n_d1!r}")
    if not strikes or len(strikes) != len(vols) or not all(v > 0 and math.isfinite(v) for v in vols):
        raise ValueError("a smile needs as many strikes as vols, all vols finite and > 0")
    ks, vs = list(strikes), list(vols)
    root_t = math.sqrt(years)

    def excess(x: float) -> tuple[float, float]:
        k = forward * math.exp(x)
        sigma = _interp(k, ks, vs)
        d1 = (-x + 0.5 * sigma * sigma * years) / (sigma * root_t)
        return float(ndtr(d1)) - n_d1, sigma

    width = 10.0 * max(vs) * root_t + 1.0        # N(d₁) is ~0 / ~1 at the ends for any quoted vol
    lo, hi = -width, width
    for _ in range(_BISECTIONS):
        mid = 0.5 * (lo + hi)
        if excess(mid)[0] > 0.0:                 # N(d₁) still above the target: the strike is higher
            lo = mid
        else:
            hi = mid
    x = 0.5 * (lo + hi)
    return forward * math.exp(x), excess(x)[1]


def expiry_smiles(quotes: list[OptionQuote], index_price_usd: float, as_of_ms: int, min_expiry_ms: int,
                  max_age_ms: int) -> list[ExpirySmile]:
    """ATM vol and the 25-delta wings of every usable expiry, in expiry order (none without an index)."""
    if not (index_price_usd > 0 and math.isfinite(index_price_usd)):
        return []
    out = []
    for expiry, ks, vols in usable_smiles(quotes, as_of_ms, min_expiry_ms, max_age_ms):
        years = (expiry - as_of_ms) / MS_PER_YEAR
        kp, vp = strike_for_delta(index_price_usd, years, ks, vols, 1.0 - DELTA_25)
        kc, vc = strike_for_delta(index_price_usd, years, ks, vols, DELTA_25)
        out.append(ExpirySmile(expiry, years, _interp(index_price_usd, ks, vols), kp, vp, kc, vc))
    return out


def tenor_signals(smiles: Sequence[ExpirySmile], tenors_days: Sequence[float]) -> list[TenorSignal]:
    """Each tenor's ATM and wing vols, interpolated in total variance across the expiries (zeros without any)."""
    atm = [(s.years, s.atm_vol) for s in smiles]
    put = [(s.years, s.put_25d_vol) for s in smiles]
    call = [(s.years, s.call_25d_vol) for s in smiles]
    return [TenorSignal(float(d), vol_at_tenor(atm, d), vol_at_tenor(put, d), vol_at_tenor(call, d))
            for d in tenors_days]


def depth_within(curve: DepthCurve, distance_bps: float) -> float:
    """Contracts within ``distance_bps`` of the mid on the thinner side of the curve."""
    if not curve.distance_bps:
        return 0.0
    xs = [0.0, *curve.distance_bps]
    return min(_interp(distance_bps, xs, [0.0, *curve.bid_contracts]),
               _interp(distance_bps, xs, [0.0, *curve.ask_contracts]))


def ewma_event_time(previous: float | None, value: float, dt_ms: int, half_life_ms: int) -> float:
    """``b ← b + (1 − 2^(−Δt/h))·(x − b)`` in event time (the first value starts it)."""
    if previous is None:
        return value
    if dt_ms <= 0:
        return previous
    return previous + (1.0 - math.pow(2.0, -dt_ms / half_life_ms)) * (value - previous)
