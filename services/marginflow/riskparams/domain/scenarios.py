"""Scenario sets: the price × vol grid with extended moves, and filtered historical scenarios.

Grid (Deribit/SPAN style) of one underlying, relative price moves:

.. math:: R = z\\,\\sigma_m\\sqrt{h},\\qquad \\text{price shocks} = \\{ iR/n : i = -n..n \\}

with ``h`` the horizon in years; vol shocks are relative moves of implied vol (down/same/up), the
states of the grid; the grid carries the surface parameters that turn a state into each option's own
shock by tenor and strike (:mod:`marginflow.shared.volsurface`: Deribit's ``(30/days)^power`` vol
range, a skew shock that raises low strikes' vol in down moves).
The defaults ``z = 3``, ``h = 3 days``, ``n = 4`` give a ±16 %, 9-point grid at
``σ_m = 0.16 / (3·√(3/365)) ≈ 0.588`` — BTC's typical volatility (≈ 0.47) plus the 25 % buffer.
Extended (tail) moves are ``±m·R`` for each multiple ``m`` with weight ``w`` (the fraction of the
loss counted, SPAN's "extreme move" covered at 35 %), vol unchanged. No price shock goes below
``-MAX_DOWN_MOVE`` (a price cannot fall below zero).

Filtered historical simulation (Barone-Adesi, Giannopoulos & Vosper 1999, "VaR without
correlations for portfolios of derivative securities", J. Futures Markets 19(5)): each past
joint log return is devolatilised by the volatility forecast in force then and rescaled to the
margin volatility now and the horizon, then turned into a relative move:

.. math:: x_{t,i} = \\exp\\Big(\\frac{r_{t,i}}{\\sigma_{t,i}}\\,\\sigma_{m,i}\\sqrt{h}\\Big) - 1

Bootstrap set (too little history): ``T`` fixed draws of a standardised multivariate Student-t
(ν = 4, unit variance) with the current correlation, seeded with :data:`BOOTSTRAP_SEED` so every
instance publishes the same set, then scaled and exponentiated as above. The parameters carry
``bootstrap = true`` while it is in use.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from numpy.typing import NDArray

from marginflow.shared.units import SECONDS_PER_DAY, SECONDS_PER_YEAR
from marginflow.shared.volsurface import VolSurfaceShock

Float64Array = NDArray[np.float64]

MAX_DOWN_MOVE = 0.99            # relative price shocks are clipped at −99 %
BOOTSTRAP_SEED = 20_130_219     # date of RTS 153/2013; any fixed seed does, this one is documented
BOOTSTRAP_DOF = 4.0             # Student-t degrees of freedom of the bootstrap set (fat tails)


@dataclasses.dataclass(frozen=True)
class GridConfig:
    z: float = 3.0
    horizon_seconds: float = 3 * SECONDS_PER_DAY
    buckets_each_side: int = 4
    vol_shocks: tuple[float, ...] = (-0.25, 0.0, 0.25)
    tail_multiples: tuple[float, ...] = (2.0, 3.0)
    tail_weights: tuple[float, ...] = (0.5, 0.35)
    # How each option's vol shock follows its tenor and strike; applied by the margin service per
    # instrument (all zero: every option gets the vol states as they are).
    surface: VolSurfaceShock = VolSurfaceShock()

    def __post_init__(self) -> None:
        if len(self.tail_multiples) != len(self.tail_weights):
            raise ValueError("tail_multiples and tail_weights need the same length")
        if self.z <= 0 or self.horizon_seconds <= 0 or self.buckets_each_side <= 0:
            raise ValueError("z, horizon_seconds and buckets_each_side must be > 0")

    @property
    def horizon_years(self) -> float:
        return self.horizon_seconds / SECONDS_PER_YEAR


@dataclasses.dataclass(frozen=True)
class Grid:
    price_shocks: tuple[float, ...]
    vol_shocks: tuple[float, ...]
    tail_price_shocks: tuple[float, ...]
    tail_vol_shocks: tuple[float, ...]
    tail_weights: tuple[float, ...]
    horizon_seconds: float
    range_fraction: float       # R
    surface: VolSurfaceShock = VolSurfaceShock()


def grid_range(sigma_margin: float, config: GridConfig) -> float:
    """``R = z·σ_m·√h`` (relative price move)."""
    return config.z * sigma_margin * math.sqrt(config.horizon_years)


def scenario_grid(sigma_margin: float, config: GridConfig) -> Grid:
    """The grid and the extended moves of one underlying at margin volatility ``sigma_margin``."""
    if not (math.isfinite(sigma_margin) and sigma_margin >= 0):
        raise ValueError(f"sigma_margin must be finite and >= 0, got {sigma_margin!r}")
    r = grid_range(sigma_margin, config)
    n = config.buckets_each_side
    price = tuple(max(-MAX_DOWN_MOVE, r * i / n) for i in range(-n, n + 1))
    tail_p: list[float] = []
    tail_v: list[float] = []
    tail_w: list[float] = []
    for m, w in zip(config.tail_multiples, config.tail_weights):
        for sign in (-1.0, 1.0):
            tail_p.append(max(-MAX_DOWN_MOVE, sign * m * r))
            tail_v.append(0.0)
            tail_w.append(w)
    return Grid(price, tuple(config.vol_shocks), tuple(tail_p), tuple(tail_v), tuple(tail_w),
                config.horizon_seconds, r, config.surface)


def filtered_historical_scenarios(log_returns: Float64Array, sigma_then: Float64Array,
                                  sigma_margin_annual: Float64Array, samples_per_year: float,
                                  horizon_years: float) -> Float64Array:
    """Relative moves ``(T, n)`` from past joint log returns ``(T, n)`` (see module docstring).

    ``sigma_then`` ``(T, n)`` is the per-interval volatility forecast in force before each return
    (must be > 0); ``sigma_margin_annual`` ``(n,)`` the annualised margin volatility now.
    """
    r = np.asarray(log_returns, dtype=np.float64)
    s = np.asarray(sigma_then, dtype=np.float64)
    if r.shape != s.shape or r.ndim != 2:
        raise ValueError(f"log_returns {r.shape} and sigma_then {s.shape} must be equal 2-d shapes")
    if not np.all(s > 0):
        raise ValueError("sigma_then must be > 0")
    sigma_now_per_interval = np.asarray(sigma_margin_annual, dtype=np.float64) / math.sqrt(samples_per_year)
    # Devolatilise, rescale to σ now (per interval), then stretch √(horizon / interval).
    scale = math.sqrt(horizon_years * samples_per_year)
    return np.maximum(np.expm1(r / s * sigma_now_per_interval * scale), -MAX_DOWN_MOVE)


def bootstrap_scenarios(sigma_margin_annual: Float64Array, correlation: Float64Array, count: int,
                        horizon_years: float) -> Float64Array:
    """The documented bootstrap set ``(count, n)``: seeded standardised Student-t(ν=4) draws."""
    sig = np.asarray(sigma_margin_annual, dtype=np.float64)
    n = sig.size
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    g = rng.standard_normal((count, n))
    chi = rng.chisquare(BOOTSTRAP_DOF, size=(count, 1))
    w, v = np.linalg.eigh(np.asarray(correlation, dtype=np.float64))
    root = v * np.sqrt(np.clip(w, 0.0, None))          # C = root · rootᵀ, also for a singular C
    z = (g @ root.T) / np.sqrt(chi / BOOTSTRAP_DOF) * math.sqrt((BOOTSTRAP_DOF - 2.0) / BOOTSTRAP_DOF)
    return np.maximum(np.expm1(z * sig * math.sqrt(horizon_years)), -MAX_DOWN_MOVE)
