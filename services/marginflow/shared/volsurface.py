"""Surface-aware implied-vol shocks of options: one definition for riskparams (which publishes the
parameters with each scenario grid), the margin service (which applies them per instrument when it
builds the risk arrays) and the backtest.

Per option ``k`` on underlying ``u`` and scenario row ``s`` (relative price move ``p``, grid vol
state ``v``: relative, e.g. −0.25 / 0 / +0.25; tails and historical rows have ``v = 0``)::

    days_k  = max(T_k · 365, min_days)
    f_k     = (reference_days / days_k) ^ (short_power if days_k < reference_days else long_power)
    d_s     = max(0, −ln(1 + p))                                   size of the down move (log)
    m_k     = min(cap, max(0, ln(F_k / K_k) / (σ_k √T_k)))         strikes below the forward, in σ√T
    v_ks    = f_k · (v + skew_shock · d_s · (1 + put_wing · m_k))
    σ'_ks   = max(σ_k (1 + v_ks), min_vol_shock_up)   in the grid's vol-up states (v > 0)
    σ'_ks   = max(σ_k (1 + v_ks), 0)                  otherwise

The tenor factor is Deribit's portfolio-margin vol range scaling (``vol range × (30 / days to
expiry)^power``, power 0.30 below 30 days, 0.13 above, with a minimum vol for the shock up): short-
dated implied vol moves more than long-dated. The skew term makes the vol states coherent with the
price move: vol rises as the price falls (never on a rally), more for low strikes (OTM puts), as the
surface steepens in a crash; it scales with the tenor factor like the vol range does. ``min_days``
bounds the factor of options about to expire (``(30/0)^0.3`` is infinite); ``cap`` bounds the wing.

Parameters that are all zero (the default) switch the whole thing off: every option gets the grid's
vol state unchanged (``f = 1``, no skew, no minimum), which is what a version without the parameters
on the wire means.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from marginflow.shared.units import DAYS_PER_YEAR


@dataclasses.dataclass(frozen=True)
class VolSurfaceShock:
    reference_days: float = 0.0       # tenor at which the factor is 1, days (0: no tenor scaling)
    short_power: float = 0.0          # power below reference_days (Deribit 0.30)
    long_power: float = 0.0           # power from reference_days on (Deribit 0.13)
    min_days: float = 1.0             # days to expiry are floored here for the factor, days
    min_vol_shock_up: float = 0.0     # shocked vol in the vol-up states is at least this, annualised
    skew_shock: float = 0.0           # relative vol added per unit of log down move (ATM)
    put_wing: float = 0.0             # extra skew per unit of put-side moneyness m
    moneyness_cap: float = 3.0        # m is capped here (in σ√T)

    def __post_init__(self) -> None:
        for name in ("reference_days", "short_power", "long_power", "min_vol_shock_up", "skew_shock", "put_wing"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
        for name in ("min_days", "moneyness_cap"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0.0):
                raise ValueError(f"{name} must be finite and > 0, got {value!r}")

    @property
    def active(self) -> bool:
        return bool(self.reference_days or self.min_vol_shock_up or self.skew_shock)


# Deribit portfolio margin's published parameters (vol range scaled by (30/days)^0.30 short-dated,
# ^0.13 long-dated, minimum vol 50 % for the shock up).
DERIBIT = VolSurfaceShock(reference_days=30.0, short_power=0.30, long_power=0.13, min_vol_shock_up=0.5)


def tenor_factor(expiry_years: np.ndarray, p: VolSurfaceShock) -> np.ndarray:
    """``f = (reference_days / max(days, min_days)) ^ power`` per option; 1 without tenor scaling."""
    years = np.asarray(expiry_years, dtype=np.float64)
    if p.reference_days <= 0.0:
        return np.ones_like(years)
    days = np.maximum(years * DAYS_PER_YEAR, p.min_days)
    power = np.where(days < p.reference_days, p.short_power, p.long_power)
    return (p.reference_days / days) ** power


def put_moneyness(forward: np.ndarray, strike: np.ndarray, expiry_years: np.ndarray, implied_vol: np.ndarray,
                  p: VolSurfaceShock) -> np.ndarray:
    """``m = min(cap, max(0, ln(F/K) / (σ√T)))``: 0 at and above the forward, 0 when σ√T = 0."""
    f = np.asarray(forward, dtype=np.float64)
    k = np.asarray(strike, dtype=np.float64)
    width = np.asarray(implied_vol, dtype=np.float64) * np.sqrt(np.maximum(expiry_years, 0.0))
    ok = (width > 0.0) & (f > 0.0) & (k > 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        m = np.where(ok, np.log(np.where(ok, f / np.where(k > 0, k, 1.0), 1.0)) / np.where(ok, width, 1.0), 0.0)
    return np.clip(m, 0.0, p.moneyness_cap)


@dataclasses.dataclass(frozen=True)
class InstrumentShocks:
    vol_shock: np.ndarray       # [S, K] relative vol move per scenario row and instrument (0 for linear)
    tenor_factor: np.ndarray    # [K] (1 for linear instruments)
    moneyness: np.ndarray       # [K] m of the formula (0 for linear instruments)


def instrument_vol_shocks(price_shock: np.ndarray, vol_state: np.ndarray, is_option: np.ndarray,
                          underlying: np.ndarray, params: Sequence[VolSurfaceShock], forward: np.ndarray,
                          strike: np.ndarray, expiry_years: np.ndarray, implied_vol: np.ndarray) -> InstrumentShocks:
    """Relative vol shocks ``v_ks`` (module docstring) per scenario row and instrument.

    ``price_shock`` and ``vol_state`` are ``[S, U]`` (per underlying, the published scenarios);
    ``params[u]`` the surface parameters of underlying ``u``. Linear instruments get 0 (their
    risk arrays do not see vol).
    """
    price_shock = np.asarray(price_shock, dtype=np.float64)
    vol_state = np.asarray(vol_state, dtype=np.float64)
    und = np.asarray(underlying, dtype=np.int64)
    opt = np.asarray(is_option, dtype=bool)
    K = und.shape[0]
    S = price_shock.shape[0]
    factor = np.ones(K)
    money = np.zeros(K)
    skew = np.zeros(K)
    wing = np.zeros(K)
    min_up = np.zeros(K)
    years = np.asarray(expiry_years, dtype=np.float64)
    iv = np.asarray(implied_vol, dtype=np.float64)
    for u, p in enumerate(params):
        sel = opt & (und == u)
        if not sel.any() or not p.active:
            continue
        factor[sel] = tenor_factor(years[sel], p)
        money[sel] = put_moneyness(np.asarray(forward)[sel], np.asarray(strike)[sel], years[sel], iv[sel], p)
        skew[sel] = p.skew_shock
        wing[sel] = p.put_wing
        min_up[sel] = p.min_vol_shock_up
    p_k = price_shock[:, und]                       # [S, K]
    v_k = vol_state[:, und]
    down = np.maximum(0.0, -np.log1p(p_k))
    shock = factor * (v_k + skew * down * (1.0 + wing * money))
    # The minimum vol for the shock up, as a relative move: σ(1+v) ≥ min ⇔ v ≥ min/σ − 1.
    with np.errstate(divide="ignore"):
        floor_up = np.where(iv > 0.0, min_up / np.where(iv > 0.0, iv, 1.0) - 1.0, 0.0)
    shock = np.where((v_k > 0.0) & (min_up > 0.0), np.maximum(shock, floor_up), shock)
    shock = np.maximum(shock, -1.0)                 # σ' ≥ 0
    shock = np.where(opt, shock, 0.0) if S else shock
    return InstrumentShocks(shock, np.where(opt, factor, 1.0), np.where(opt, money, 0.0))
