r"""Liquidation price of a position: the price at which equity equals the requirement *recomputed at that price*.

Exchanges quote the price at which the account would be liquidated, and the maintenance requirement
moves with the price: a linear position's MM is a fraction of its notional, so it grows as a short
loses and shrinks as a long loses. Holding MM at today's value (as an earlier version of this module
did) puts a short's liquidation price too far away and a long's too close.

Linear positions (perpetuals, dated futures), MM proportional to notional
--------------------------------------------------------------------------
With ``Q = q·cs`` (signed exposure in units of the underlying), mark ``p0``, equity ``E0`` at ``p0``,
this position's MM ``M = m·|Q|·p0`` (``m`` = its MM fraction) and the rest of the account's MM
``M_o`` (held fixed, other instruments' prices do not move)::

    E(p) = E0 + Q·(p − p0)                       equity at price p
    R(p) = M_o + m·|Q|·p = M_o + M·p/p0          requirement recomputed at p
    E(p*) = R(p*)   ⇒   p* = (E0 − Q·p0 − M_o) / (m·|Q| − Q)

This is dYdX's published formula (v4 docs, "Liquidations": isolated ``p' = (e − s·p)/(|s|·MMF − s)``,
cross ``p' = (e − s·p − MMR_o)/(|s|·MMF − s)``): short 3 ETH at 3,000, equity 1,000, MMF 5 % gives
10,000 / 3.15 = 3,174.60 (MM held fixed would give 3,183.33). None when ``Q = 0``, when the
denominator is 0, or when ``p* ≤ 0`` (a long whose equity stays above its requirement down to 0).

General case (scenario margin, options): a bracketed root
---------------------------------------------------------
``scenario_liquidation_price(equity_at, requirement_at, price0, direction)`` finds the first price,
moving away from ``price0`` toward the adverse side, at which ``g(p) = equity_at(p) − requirement_at(p)``
changes sign (the margin service passes its model evaluated at shifted marks): geometric brackets
``p0·(1 ± d)``, ``d = 0.5 %·2^k``, out to ``p0·max_factor`` and down to ``p0/max_factor``, then Brent's
method (``scipy.optimize.brentq``) in the first bracket that changes sign. None when no crossing exists
in (0, ∞) within those bounds (e.g. a fully collateralised long).

Options (``option_liquidation_forward``) are expressed on the underlying's forward ``F``: the option is
revalued by Black-76 at its implied vol and time to expiry, ``E(F) = E0 + q·cs·(V(F) − V(F0))``, and the
requirement is ``requirement_at(F)`` when the caller gives it (the margin model at shifted marks: the true
liquidation forward), else held at ``mm_usd`` (today's requirement: the approximation a caller without a
model gets, documented as such).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from scipy.optimize import brentq

from marginflow.pricing import black76

# Bracketing of the general root finder (dimensionless multiples of the starting price).
FIRST_STEP_FRACTION = 0.005      # first bracket 0.5 % away from the starting price
MAX_PRICE_FACTOR = 1e4           # search out to p0·10⁴ upward and down to p0/10⁴
ROOT_RELATIVE_TOLERANCE = 1e-12  # brentq rtol (relative to the root)


def linear_liquidation_price(equity_usd: float, mm_usd: float, size: float, contract_size: float,
                             mark: float, *, mm_other_usd: float = 0.0) -> float | None:
    r"""Liquidation price of a linear position with MM proportional to its notional.

    ``p* = (E0 − Q·p0 − M_o) / (M/p0 − Q)`` with ``Q = size·contract_size`` and ``M = mm_usd − mm_other_usd``
    this position's MM at ``p0`` (so its MM fraction is ``m = M/(|Q|·p0)``).

    Parameters
    ----------
    equity_usd : float
        Equity (USD) of the margin scope (the isolated position's own, or the cross account's) at ``mark``.
    mm_usd : float
        Maintenance requirement (USD) of that scope at ``mark``.
    size, contract_size : float
        Signed position size in contracts; underlying units per contract.
    mark : float
        Mark price (USD per unit of the underlying) at which ``equity_usd`` and ``mm_usd`` hold.
    mm_other_usd : float, keyword-only
        The part of ``mm_usd`` that does not move with this instrument's price (dYdX ``MMR_o``: the other
        positions of a cross account). Default 0: the whole requirement is this position's (isolated or
        single-position account).

    Returns
    -------
    float or None
        The price, or None when none exists in (0, ∞) or an input is not finite.
    """
    exposure = size * contract_size
    if exposure == 0 or not all(math.isfinite(v) for v in (equity_usd, mm_usd, mm_other_usd, exposure, mark)):
        return None
    if mark <= 0:
        return None
    own_mm_per_price = max(mm_usd - mm_other_usd, 0.0) / mark   # m·|Q|, USD per USD of price
    denominator = own_mm_per_price - exposure
    if denominator == 0:
        return None
    price = (equity_usd - exposure * mark - mm_other_usd) / denominator
    return price if price > 0 and math.isfinite(price) else None


def scenario_liquidation_price(equity_at: Callable[[float], float], requirement_at: Callable[[float], float],
                               price0: float, *, direction: int | None = None,
                               max_factor: float = MAX_PRICE_FACTOR) -> float | None:
    r"""First price from ``price0`` toward the adverse side at which equity meets the recomputed requirement.

    Solves ``g(p) = equity_at(p) − requirement_at(p) = 0`` by bracketing then ``scipy.optimize.brentq``.

    Parameters
    ----------
    equity_at, requirement_at : callable
        USD equity and USD requirement (MM) of the margin scope with the underlying at price ``p``.
    price0 : float
        Today's price of the underlying (> 0).
    direction : {+1, −1, None}
        +1 searches upward only (a short's adverse side), −1 downward only (a long's); None searches both and
        returns the crossing nearest to ``price0`` in log distance.
    max_factor : float
        Search bounds ``[price0/max_factor, price0·max_factor]``.

    Returns
    -------
    float or None
        The price, or None when ``g`` keeps its sign over the whole search range (no liquidation price).
    """
    if not (math.isfinite(price0) and price0 > 0) or direction not in (None, 1, -1) or max_factor <= 1:
        return None

    def gap(p: float) -> float:
        value = float(equity_at(p)) - float(requirement_at(p))
        return value if math.isfinite(value) else math.nan

    g0 = gap(price0)
    if math.isnan(g0):
        return None
    if g0 == 0.0:
        return price0
    found: list[float] = []
    for sign in ((1, -1) if direction is None else (direction,)):
        root = _first_crossing(gap, price0, g0, sign, max_factor)
        if root is not None:
            found.append(root)
    if not found:
        return None
    return min(found, key=lambda p: abs(math.log(p / price0)))


def _bracket_points(price0: float, sign: int, max_factor: float):
    d = FIRST_STEP_FRACTION
    if sign > 0:
        while True:
            p = price0 * (1.0 + d)
            if p >= price0 * max_factor:
                yield price0 * max_factor
                return
            yield p
            d *= 2.0
    else:
        while d < 0.5:
            yield price0 * (1.0 - d)
            d *= 2.0
        p = price0 * 0.5
        while p > price0 / max_factor:
            yield p
            p *= 0.5
        yield price0 / max_factor


def _first_crossing(gap: Callable[[float], float], price0: float, g0: float, sign: int,
                    max_factor: float) -> float | None:
    lo, g_lo = price0, g0
    for p in _bracket_points(price0, sign, max_factor):
        g = gap(p)
        if math.isnan(g):
            return None
        if g == 0.0:
            return p
        if (g > 0) != (g_lo > 0):
            a, b = (lo, p) if lo < p else (p, lo)
            return float(brentq(gap, a, b, rtol=ROOT_RELATIVE_TOLERANCE, xtol=1e-12 * max(a, 1e-300),
                                maxiter=500))
        lo, g_lo = p, g
    return None


def option_liquidation_forward(equity_usd: float, mm_usd: float, size: float, contract_size: float,
                               is_call: bool, forward: float, strike: float, expiry_years: float,
                               vol: float, iterations: int = 200, *,
                               requirement_at: Callable[[float], float] | None = None) -> float | None:
    r"""Forward of the underlying at which an option position's scope has equity = requirement.

    ``E(F) = E0 + q·cs·(V(F) − V(F0))`` with ``V`` = Black-76 at ``vol`` and ``expiry_years``; the requirement
    is ``requirement_at(F)`` (USD) when given — the margin model recomputed at ``F``, the true liquidation
    forward — else today's ``mm_usd`` held fixed (the approximation available without a model).

    The search runs toward the adverse side of the position (down for long calls and short puts, up for
    short calls and long puts), then the other side; ``iterations`` is kept for the caller's signature
    (Brent's method needs far fewer). None when no crossing exists in ``[F0/10⁴, F0·10⁴]``.
    """
    del iterations
    if size == 0 or not (forward > 0) or not (strike > 0) or not all(
            math.isfinite(v) for v in (equity_usd, mm_usd, size, contract_size, forward, strike, expiry_years, vol)):
        return None
    exposure = size * contract_size
    if requirement_at is None:
        return _fixed_requirement_forward(equity_usd - mm_usd, exposure, is_call, forward, strike, expiry_years, vol)
    v0 = black76(forward, strike, expiry_years, vol, is_call)

    def equity_at(f: float) -> float:
        return equity_usd + exposure * (black76(f, strike, expiry_years, vol, is_call) - v0)

    req = requirement_at if requirement_at is not None else (lambda _f: mm_usd)
    delta_sign = 1 if is_call else -1
    adverse = -1 if exposure * delta_sign > 0 else 1
    price = scenario_liquidation_price(equity_at, req, forward, direction=adverse)
    if price is None:
        price = scenario_liquidation_price(equity_at, req, forward, direction=-adverse)
    return price



def _value_delta(forward: float, strike: float, years: float, vol: float, is_call: bool) -> tuple[float, float]:
    """Black-76 value on the forward (as :func:`marginflow.pricing.black76`) and its delta dV/dF:
    N(d1) for a call, N(d1) − 1 for a put (undiscounted); intrinsic value and its slope at T = 0 or σ = 0."""
    if years <= 0.0 or vol <= 0.0 or forward <= 0.0:
        if is_call:
            return max(forward - strike, 0.0), 1.0 if forward > strike else 0.0
        return max(strike - forward, 0.0), -1.0 if forward < strike else 0.0
    sd = vol * math.sqrt(years)
    d1 = (math.log(forward / strike) + 0.5 * sd * sd) / sd
    d2 = d1 - sd
    if is_call:
        n1 = 0.5 * math.erfc(-d1 / _SQRT2)
        return forward * n1 - strike * (0.5 * math.erfc(-d2 / _SQRT2)), n1
    value = strike * (0.5 * math.erfc(d2 / _SQRT2)) - forward * (0.5 * math.erfc(d1 / _SQRT2))
    return value, 0.5 * math.erfc(-d1 / _SQRT2) - 1.0


_SQRT2 = math.sqrt(2.0)


def _fixed_requirement_forward(surplus_usd: float, exposure: float, is_call: bool, forward: float, strike: float,
                               years: float, vol: float) -> float | None:
    r"""The forward with ``g(F) = surplus + exposure·(V(F) − V(F0)) = 0`` (requirement held at today's MM).

    ``V`` is monotone in ``F`` (a call rises with it, a put falls), so ``g`` is monotone and has at most
    one root: toward the adverse side when the scope is above its requirement (``g(F0) > 0``), toward
    the other side when it is below — where the two-sided search of :func:`scenario_liquidation_price`
    finds it too. The root is bracketed on the same points (``F0·(1 ± 0.5 %·2^k)`` out to ``F0·10⁴`` /
    down to ``F0/10⁴``), then found by Newton steps on the option's delta, safeguarded by bisection
    inside the bracket, to the same relative tolerance as Brent's method there (a few evaluations
    instead of some thirty).
    """
    if surplus_usd == 0.0:
        return forward
    v0 = black76(forward, strike, years, vol, is_call)
    rises = (exposure > 0) == is_call          # g increases with F
    above = surplus_usd > 0
    sign = (-1 if rises else 1) if above else (1 if rises else -1)

    def gap(f: float) -> float:
        value = surplus_usd + exposure * (black76(f, strike, years, vol, is_call) - v0)
        return value if math.isfinite(value) else math.nan

    lo, g_lo = forward, surplus_usd
    for p in _bracket_points(forward, sign, MAX_PRICE_FACTOR):
        g = gap(p)
        if math.isnan(g):
            return None
        if g == 0.0:
            return p
        if (g > 0) != above:
            hi, g_hi = p, g
            break
        lo, g_lo = p, g
    else:
        return None
    x = hi - g_hi * (hi - lo) / (g_hi - g_lo)      # secant start inside the bracket
    if lo > hi:
        lo, g_lo, hi, g_hi = hi, g_hi, lo, g_lo
    for _ in range(100):
        value, delta = _value_delta(x, strike, years, vol, is_call)
        g = surplus_usd + exposure * (value - v0)
        if g == 0.0 or not math.isfinite(g):
            return x if g == 0.0 else None
        if (g > 0) == (g_lo > 0):
            lo, g_lo = x, g
        else:
            hi, g_hi = x, g
        slope = exposure * delta
        step = x - g / slope if slope != 0.0 else math.nan
        nxt = step if lo < step < hi else 0.5 * (lo + hi)
        if abs(nxt - x) <= ROOT_RELATIVE_TOLERANCE * abs(x):
            return nxt
        x = nxt
    return x
