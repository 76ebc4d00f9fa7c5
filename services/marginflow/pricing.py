"""Black-76 on the forward, for marks and for the demo book (the margin core has its own, in C).

Black (1976), "The pricing of commodity contracts", J. Financial Economics 3: for a forward F,
strike K, time T (years), volatility σ and zero rate (crypto venues settle in USD stablecoins and
quote on the forward, so discounting is left out):

    d1 = (ln(F/K) + σ²T/2) / (σ√T),  d2 = d1 − σ√T
    call = F·N(d1) − K·N(d2),        put = K·N(−d2) − F·N(−d1)

At T = 0 or σ = 0 the value is the intrinsic value.
"""

from __future__ import annotations

import math


def _norm_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def black76(forward: float, strike: float, years: float, vol: float, is_call: bool) -> float:
    if years <= 0.0 or vol <= 0.0 or forward <= 0.0:
        return max(forward - strike, 0.0) if is_call else max(strike - forward, 0.0)
    sd = vol * math.sqrt(years)
    d1 = (math.log(forward / strike) + 0.5 * sd * sd) / sd
    d2 = d1 - sd
    if is_call:
        return forward * _norm_cdf(d1) - strike * _norm_cdf(d2)
    return strike * _norm_cdf(-d2) - forward * _norm_cdf(-d1)


def black76_vega(forward: float, strike: float, years: float, vol: float) -> float:
    if years <= 0.0 or vol <= 0.0:
        return 0.0
    sd = vol * math.sqrt(years)
    d1 = (math.log(forward / strike) + 0.5 * sd * sd) / sd
    return forward * math.exp(-0.5 * d1 * d1) / math.sqrt(2.0 * math.pi) * math.sqrt(years)


def implied_vol(price: float, forward: float, strike: float, years: float, is_call: bool,
                lo: float = 1e-4, hi: float = 10.0, tol: float = 1e-10) -> float | None:
    """σ with black76(σ) = price, by safeguarded Newton inside a bisection bracket; None when the
    price lies outside the no-arbitrage bounds (below intrinsic or above the forward/strike)."""
    if years <= 0.0 or price <= 0.0:
        return None
    intrinsic = max(forward - strike, 0.0) if is_call else max(strike - forward, 0.0)
    upper = forward if is_call else strike
    if not (intrinsic < price < upper):
        return None
    vol = 0.6
    for _ in range(100):
        value = black76(forward, strike, years, vol, is_call) - price
        if abs(value) < tol * max(1.0, price):
            return vol
        if value > 0:
            hi = vol
        else:
            lo = vol
        vega = black76_vega(forward, strike, years, vol)
        step = vol - value / vega if vega > 1e-12 else -1.0
        vol = step if lo < step < hi else 0.5 * (lo + hi)
    return vol
