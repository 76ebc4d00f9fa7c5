"""Scenario matrices for the margin core from one risk-parameter version.

Rows of the scenario axis (``S = G + T + H``), columns = the universe's underlyings in a fixed order:

* ``G`` grid rows: for each price shock ``p`` (outer) and vol shock ``v`` (inner), ``(p, v)`` of each
  underlying's own grid — row g is "grid point g of every underlying" (the core margins each
  underlying separately on these rows, so they need not be joint moves);
* ``T`` extended (tail) moves with their weights (same count and weights for every underlying);
* ``H`` filtered historical scenarios, joint across underlyings, vol unchanged.

Vol shocks are relative (``σ' = σ·(1 + v)``), as riskparams publishes them: the grid's vol states per
underlying; each grid's surface parameters (:mod:`marginflow.shared.volsurface`) turn them into one
shock per option (tenor and skew) when the risk arrays are built. The horizon is the grid's
(seconds → ACT/365 years). A version that does not fit (an underlying without a grid, different grid
shapes or tail weights, a historical column missing, a non-finite or ≤ −100 % move) is rejected whole.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from marginflow.shared.errors import Rejected
from marginflow.shared.units import SECONDS_PER_YEAR
from marginflow.shared.volsurface import VolSurfaceShock


@dataclasses.dataclass(frozen=True)
class GridSpec:
    underlying: str
    price_shocks: tuple[float, ...]
    vol_shocks: tuple[float, ...]
    tail_price_shocks: tuple[float, ...]
    tail_vol_shocks: tuple[float, ...]
    tail_weights: tuple[float, ...]
    horizon_seconds: float
    surface: VolSurfaceShock = VolSurfaceShock()   # all zero: every option gets the grid's vol states


@dataclasses.dataclass(frozen=True)
class RiskVersion:
    version: int
    event_time_ms: int
    publish_time_ms: int
    sigma_margin: dict[str, float]          # annualised σ_m per underlying
    index_price: dict[str, float]
    grids: dict[str, GridSpec]
    hist_underlyings: tuple[str, ...]
    hist_returns: np.ndarray                # [H, len(hist_underlyings)] relative moves
    es_confidence: float


@dataclasses.dataclass(frozen=True)
class ScenarioSet:
    price_shock: np.ndarray     # [S, U]
    vol_shock: np.ndarray       # [S, U], relative: the grid's vol states (0 on tail and historical rows)
    n_grid: int
    tail_weights: np.ndarray    # [T]
    n_hist: int
    horizon_years: float
    es_level: float
    surface: tuple[VolSurfaceShock, ...] = ()   # per underlying, in the column order


def build_scenarios(v: RiskVersion, underlyings: list[str]) -> ScenarioSet:
    if not (0.0 < v.es_confidence < 1.0):
        raise Rejected("bad_risk_params", f"es_confidence {v.es_confidence!r} is not in (0, 1)")
    missing = [u for u in underlyings if u not in v.grids]
    if missing:
        raise Rejected("bad_risk_params", f"no scenario grid for {', '.join(missing)}")
    first = v.grids[underlyings[0]]
    shape = (len(first.price_shocks), len(first.vol_shocks), len(first.tail_price_shocks))
    if shape[0] == 0 or shape[1] == 0:
        raise Rejected("bad_risk_params", f"grid of {first.underlying} is empty")
    for u in underlyings:
        g = v.grids[u]
        if (len(g.price_shocks), len(g.vol_shocks), len(g.tail_price_shocks)) != shape:
            raise Rejected("bad_risk_params", f"grid of {u} has a different shape than {first.underlying}'s")
        if len(g.tail_vol_shocks) != shape[2] or len(g.tail_weights) != shape[2]:
            raise Rejected("bad_risk_params", f"tail moves of {u}: price, vol and weight counts differ")
        if tuple(g.tail_weights) != tuple(first.tail_weights):
            raise Rejected("bad_risk_params", f"tail weights of {u} differ from {first.underlying}'s")
    if not (math.isfinite(first.horizon_seconds) and first.horizon_seconds >= 0):
        raise Rejected("bad_risk_params", f"horizon_seconds {first.horizon_seconds!r} is invalid")
    cols = {name: i for i, name in enumerate(v.hist_underlyings)}
    missing = [u for u in underlyings if u not in cols]
    if missing:
        raise Rejected("bad_risk_params", f"historical scenarios lack {', '.join(missing)}")
    hist = np.asarray(v.hist_returns, dtype=np.float64)
    if hist.ndim != 2 or hist.shape[0] < 1 or hist.shape[1] != len(v.hist_underlyings):
        raise Rejected("bad_risk_params", f"historical returns have shape {hist.shape}")
    n_p, n_v, n_t = shape
    U = len(underlyings)
    G = n_p * n_v
    grid_p = np.empty((G + n_t, U))
    grid_v = np.empty((G + n_t, U))
    for j, u in enumerate(underlyings):
        g = v.grids[u]
        grid_p[:G, j] = np.repeat(np.asarray(g.price_shocks, dtype=np.float64), n_v)
        grid_v[:G, j] = np.tile(np.asarray(g.vol_shocks, dtype=np.float64), n_p)
        grid_p[G:, j] = g.tail_price_shocks
        grid_v[G:, j] = g.tail_vol_shocks
    hp = hist[:, [cols[u] for u in underlyings]]
    price = np.vstack([grid_p, hp])
    vol = np.vstack([grid_v, np.zeros_like(hp)])
    if not np.all(np.isfinite(price) & (price > -1.0)):
        raise Rejected("bad_risk_params", "a price shock is not finite or is a move of -100 % or worse")
    if not np.all(np.isfinite(vol) & (vol > -1.0)):
        raise Rejected("bad_risk_params", "a vol shock is not finite or is -100 % or worse")
    weights = np.asarray(first.tail_weights, dtype=np.float64)
    if not np.all(np.isfinite(weights) & (weights >= 0)):
        raise Rejected("bad_risk_params", "tail weights must be finite and >= 0")
    return ScenarioSet(price, vol, G, weights, hp.shape[0], first.horizon_seconds / SECONDS_PER_YEAR,
                       float(v.es_confidence), tuple(v.grids[u].surface for u in underlyings))
