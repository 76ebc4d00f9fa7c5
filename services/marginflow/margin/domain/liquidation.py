r"""Liquidation price of a position: the price at which equity = MM, everything else fixed.

Perpetuals and futures (equity linear in the instrument's mark ``m``)::

    E(m) = E0 + q·cs·(m − m0) = MM   ⇒   m* = m0 + (MM − E0) / (q·cs)

None when q = 0 or ``m* ≤ 0`` (a long whose equity stays above MM even at a zero price).
Options: expressed on the underlying's forward ``F`` — the option is revalued by Black-76 at
its implied vol and time to expiry, ``E(F) = E0 + q·cs·(V(F) − V(F0))``, monotonic in ``F``; the
root is found by bisection in ``[F0/10⁴, F0·10⁴]``; None when equity does not cross MM there.
Requirements (MM) are held at their current value: the price at which the *current* requirement
is breached, which is how exchanges quote it.
"""

from __future__ import annotations

import math

from marginflow.pricing import black76


def linear_liquidation_price(equity_usd: float, mm_usd: float, size: float, contract_size: float,
                             mark: float) -> float | None:
    exposure = size * contract_size
    if exposure == 0 or not all(math.isfinite(v) for v in (equity_usd, mm_usd, exposure, mark)):
        return None
    price = mark + (mm_usd - equity_usd) / exposure
    return price if price > 0 and math.isfinite(price) else None


def option_liquidation_forward(equity_usd: float, mm_usd: float, size: float, contract_size: float,
                               is_call: bool, forward: float, strike: float, expiry_years: float,
                               vol: float, iterations: int = 200) -> float | None:
    if size == 0 or forward <= 0 or strike <= 0:
        return None
    v0 = black76(forward, strike, expiry_years, vol, is_call)

    def gap(f: float) -> float:
        return equity_usd + size * contract_size * (black76(f, strike, expiry_years, vol, is_call) - v0) - mm_usd

    lo, hi = forward * 1e-4, forward * 1e4
    g_lo, g_hi = gap(lo), gap(hi)
    if g_lo == 0:
        return lo
    if g_hi == 0:
        return hi
    if (g_lo > 0) == (g_hi > 0):
        return None
    for _ in range(iterations):
        mid = math.sqrt(lo * hi) if hi / lo > 4 else 0.5 * (lo + hi)
        g_mid = gap(mid)
        if (g_mid > 0) == (g_lo > 0):
            lo, g_lo = mid, g_mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return 0.5 * (lo + hi)
