"""The margin model of one risk-parameter version: risk arrays and the core's MarginModel, built at
the market's current forwards, implied vols and liquidity, plus the contingency charges.

Risk arrays carry one column of shocks per instrument: the price move of its underlying's grid row
and the vol move of that row turned into the option's own shock by its tenor and moneyness
(:mod:`marginflow.shared.volsurface`). The grid stays a grid (the same rows for every instrument of an
underlying); only the vol applied to each option in a row differs.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from marginflow.core import KIND_CALL

from marginflow.margin.application.ports import EngineConfig
from marginflow.margin.domain.book import InstrumentTable
from marginflow.margin.domain.contingency import ContingencyTable, Netting
from marginflow.margin.domain.horizon import HorizonTable, PositionHorizon
from marginflow.margin.domain.liquidity import DepthTable, PositionLiquidity
from marginflow.margin.domain.market import MarketState
from marginflow.margin.domain.scenarios import RiskVersion, ScenarioSet, build_scenarios
from marginflow.shared.units import SECONDS_PER_YEAR
from marginflow.shared.volsurface import instrument_vol_shocks


class ChargedModel:
    """The core's MarginModel with the liquidation horizon, the concentration add-on, the contingency
    charges and the liquidity add-on through the depth curve.

    Same calls and result keys as the core model (``compute``, ``what_if``, ``explain``; other
    attributes pass through). Each position's scenario losses are scaled by ``√(h_eff/h)`` (the core's
    ``scale``); cross IM += option + basis contingency + concentration add-on of the cross positions,
    each isolated IM += its own option contingency and concentration add-on; IM and MM follow. Extra
    keys (per account, USD): ``contingency``, ``basis``, ``concentration`` (cross); ``explain`` adds per
    position ``position_contingency``, ``position_basis``, ``position_concentration``,
    ``position_horizon_days``, ``position_scale`` and ``position_oi_share``.

    Positions on instruments whose marks carry a depth curve pay the add-on through the book
    (:mod:`marginflow.margin.domain.liquidity`) instead of the core's spread-and-depth one (the core is
    built with a zero half-spread for them): it is added to ``liquidity`` and to the IM like the core's
    (cross IM, or the isolated position's own), and ``explain`` adds per position
    ``position_liquidity_distance_bps``, ``position_depth_covered`` and ``position_depth_curve``.
    """

    def __init__(self, core_model, table: ContingencyTable, mm_factor: float,
                 horizon: HorizonTable | None = None, depth: DepthTable | None = None) -> None:
        self.core = core_model
        self.table = table
        self.mm_factor = mm_factor
        self.horizon = horizon if horizon is not None and horizon.rules.active else None
        self.depth = depth if depth is not None and depth.active else None
        self.half_spread_bps = depth.half_spread_bps if depth is not None else None   # [K], for explain

    def __getattr__(self, name: str):
        return getattr(self.core, name)

    def _horizon(self, instrument, size) -> tuple[PositionHorizon | None, np.ndarray | None]:
        if self.horizon is None:
            return None, None
        ph = self.horizon.positions(instrument, size)
        return ph, (ph.scale if np.any(ph.scale != 1.0) else None)

    def netting(self, indptr, instrument, size, isolated) -> Netting | None:
        """The price-free part of the contingency charges of a book (None when they are off), for
        :meth:`compute` on this model or a later one of the same instruments."""
        return self.table.netting(indptr, instrument, size, isolated) if self.table.rates.active else None

    def compute(self, indptr, instrument, size, isolated, n_threads: int = 2, netting: Netting | None = None) -> dict:
        ph, scale = self._horizon(instrument, size)
        if scale is None:
            out = self.core.compute(indptr, instrument, size, isolated, n_threads=n_threads)
        else:
            out = self.core.compute(indptr, instrument, size, isolated, n_threads=n_threads, scale=scale)
        n = np.asarray(out["im"]).shape[0]
        zeros = np.zeros(n)
        out["contingency"], out["basis"], out["concentration"] = zeros, zeros, zeros
        if not self.table.rates.active and ph is None and self.depth is None:
            return out
        indptr = np.asarray(indptr, dtype=np.int64)
        extra_cross = np.zeros(n)
        extra_iso = np.zeros(np.asarray(instrument).shape[0])
        iso_extra_acc = np.zeros(n)      # Σ per account of extra_iso
        if self.table.rates.active:
            if netting is None and n == 1:   # one account (a query): the same charges without the batch's arrays
                c = self.table.charges_one(instrument, size, isolated)
            else:
                if netting is None:
                    netting = self.table.netting(indptr, instrument, size, isolated)
                c = self.table.charges_of(netting)
            extra_cross += c.cross
            extra_iso += c.isolated
            iso_extra_acc += c.isolated_per_account
            out["contingency"], out["basis"] = c.cross_option, c.cross_basis
        if ph is not None or self.depth is not None:
            iso = np.asarray(isolated).astype(bool)
            owner = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
            if ph is not None:
                conc = np.bincount(owner[~iso], weights=ph.concentration[~iso], minlength=n)
                extra_cross += conc
                extra_iso += np.where(iso, ph.concentration, 0.0)
                out["concentration"] = conc
            if self.depth is not None:
                addon = self.depth.addon(instrument, size)
                liq = np.bincount(owner[~iso], weights=addon[~iso], minlength=n)
                extra_cross += liq
                extra_iso += np.where(iso, addon, 0.0)
                out["liquidity"] = np.asarray(out["liquidity"], dtype=np.float64) + liq
            iso_extra_acc = np.bincount(owner, weights=extra_iso, minlength=n)
        out["cross_im"] = out["cross_im"] + extra_cross
        out["isolated_im"] = np.asarray(out["isolated_im"], dtype=np.float64) + extra_iso
        out["im"] = out["im"] + extra_cross + iso_extra_acc
        out["mm"] = self.mm_factor * out["im"]
        return out

    def what_if(self, instrument, size, isolated, delta_instrument, delta_size) -> dict:
        """The account after the trades, merged as the core merges them (each delta onto the first
        cross position of its instrument, else appended as a cross position), margined by compute."""
        k_list = [int(x) for x in np.asarray(instrument).tolist()]
        q_list = [float(x) for x in np.asarray(size).tolist()]
        iso_list = [bool(x) for x in np.asarray(isolated).tolist()]
        for k, dq in zip(np.asarray(delta_instrument).tolist(), np.asarray(delta_size).tolist()):
            for j, kj in enumerate(k_list):
                if not iso_list[j] and kj == k:
                    q_list[j] += dq
                    break
            else:
                k_list.append(int(k))
                q_list.append(float(dq))
                iso_list.append(False)
        out = self.compute(np.array([0, len(k_list)], dtype=np.int64), np.array(k_list, dtype=np.int32),
                           np.array(q_list, dtype=np.float64), np.array(iso_list, dtype=np.uint8), n_threads=1)
        return {key: (float(np.sum(v)) if key == "isolated_im" else
                      int(v[0]) if key == "worst" else float(v[0])) for key, v in out.items()}

    def explain(self, instrument, size, isolated) -> dict:
        ph, scale = self._horizon(instrument, size)
        out = (self.core.explain(instrument, size, isolated) if scale is None else
               self.core.explain(instrument, size, isolated, scale=scale))
        n = len(instrument)
        c = self.table.charges(np.array([0, n], dtype=np.int64), instrument, size, isolated)
        iso = np.asarray(isolated).astype(bool)
        conc = ph.concentration if ph is not None else np.zeros(n)
        depth = (self.depth.positions(instrument, size) if self.depth is not None else
                 PositionLiquidity(np.zeros(n), np.zeros(n), np.ones(n), np.zeros(n, dtype=bool)))
        cross = float(c.cross[0]) + float(np.sum(conc[~iso])) + float(np.sum(depth.addon[~iso]))
        iso_extra = c.isolated + np.where(iso, conc + depth.addon, 0.0)
        out["cross_im"] = float(out["cross_im"]) + cross
        out["isolated_im"] = float(out["isolated_im"]) + float(np.sum(iso_extra))
        out["im"] = float(out["im"]) + cross + float(np.sum(iso_extra))
        out["mm"] = self.mm_factor * out["im"]
        out["contingency"] = float(c.cross_option[0])
        out["basis"] = float(c.cross_basis[0])
        out["concentration"] = float(np.sum(conc[~iso]))
        out["liquidity"] = float(out["liquidity"]) + float(np.sum(depth.addon[~iso]))
        out["position_liquidity"] = np.asarray(out["position_liquidity"], dtype=np.float64) + depth.addon
        out["position_liquidity_distance_bps"] = depth.distance_bps
        out["position_depth_covered"] = depth.covered_share
        out["position_depth_curve"] = depth.from_curve
        k = np.asarray(instrument, dtype=np.int64)
        out["position_half_spread_bps"] = self.half_spread_bps[k] if self.half_spread_bps is not None else np.zeros(n)
        out["position_contingency"] = c.position_option
        out["position_basis"] = c.position_basis
        out["position_concentration"] = conc
        h_days = self.horizon.h_days if self.horizon is not None else 0.0
        out["position_horizon_days"] = ph.horizon_days if ph is not None else np.full(n, h_days)
        out["position_scale"] = ph.scale if ph is not None else np.ones(n)
        out["position_oi_share"] = ph.oi_share if ph is not None else np.zeros(n)
        out["position_isolated_im"] = np.asarray(out["position_isolated_im"], dtype=np.float64) + iso_extra
        return out


@dataclasses.dataclass(frozen=True)
class Model:
    """One built model: the core model plus what it was built from."""

    core: object
    version: RiskVersion
    scenarios: ScenarioSet
    forward: np.ndarray
    implied_vol: np.ndarray
    expiry_years: np.ndarray
    built_ms: int
    build_id: int = 0              # one per build (a refresh of the same version is a new build)
    # Per instrument: relative vol shock in each grid/tail row [G+T, K] (0 for linear instruments),
    # the tenor factor f and the put-side moneyness m of the surface shock.
    vol_shock: np.ndarray | None = None
    tenor_factor: np.ndarray | None = None
    moneyness: np.ndarray | None = None
    underlying: np.ndarray | None = None       # [K] underlying index of each instrument

    @property
    def sigma_margin(self) -> dict[str, float]:
        return self.version.sigma_margin

    def surface_of(self, k: int, binding_row: int) -> tuple[float, float, float, float, float]:
        """Instrument ``k``'s (tenor factor, moneyness, vol shock up, vol shock down, vol shock in
        ``binding_row``): the shocks are its relative vol moves in the grid's highest and lowest vol
        states at an unchanged price, and in the row given (0 when the row is none: −1)."""
        if self.vol_shock is None or self.tenor_factor is None or self.moneyness is None:
            return 1.0, 0.0, 0.0, 0.0, 0.0
        scen = self.scenarios
        u = self._underlying_of(k)
        grid_p = scen.price_shock[:scen.n_grid, u]
        grid_v = scen.vol_shock[:scen.n_grid, u]
        flat = np.flatnonzero(grid_p == 0.0)
        up = down = 0.0
        if flat.size:
            hi = flat[np.argmax(grid_v[flat])]
            lo = flat[np.argmin(grid_v[flat])]
            up = float(self.vol_shock[hi, k]) if grid_v[hi] > 0.0 else 0.0
            down = float(self.vol_shock[lo, k]) if grid_v[lo] < 0.0 else 0.0
        in_row = float(self.vol_shock[binding_row, k]) if 0 <= binding_row < self.vol_shock.shape[0] else 0.0
        return float(self.tenor_factor[k]), float(self.moneyness[k]), up, down, in_row

    def _underlying_of(self, k: int) -> int:
        return int(self.underlying[k]) if self.underlying is not None else 0


def instrument_risk_arrays(core, kind: np.ndarray, underlying: np.ndarray, forward: np.ndarray, strike: np.ndarray,
                           years: np.ndarray, iv: np.ndarray, contract_size: np.ndarray, scen: ScenarioSet,
                           n_threads: int = 2):
    """Risk arrays ``[S, K]`` of instruments over a scenario set (one definition for the margin service and
    the backtest), each option at its own surface-aware vol shock, and those shocks.

    One shock column per instrument ("underlying" k of the core's call = instrument k): exact, the core
    reads column u_k of each row and here u_k = k."""
    K = kind.shape[0]
    shocks = instrument_vol_shocks(scen.price_shock, scen.vol_shock, kind >= KIND_CALL, underlying,
                                   scen.surface or (), forward, strike, years, iv)
    risk = core.risk_arrays(kind, np.arange(K, dtype=np.int32), forward, strike, years, iv, contract_size,
                            np.ascontiguousarray(scen.price_shock[:, underlying]), shocks.vol_shock,
                            horizon_years=scen.horizon_years, vol_shock_relative=True, n_threads=n_threads)
    return risk, shocks


def build_model(instruments: InstrumentTable, market: MarketState, config: EngineConfig, core, version: RiskVersion,
                wall_ms: int, build_id: int = 0) -> Model:
    """Risk arrays by full repricing (options by Black-76) over the version's scenarios, each option at
    its own surface-aware vol shock, then the core model with the tiered minimum and the liquidity
    add-on, and the contingency charges around it. ValueError if the core refuses a value."""
    t, cfg = instruments, config
    scen = build_scenarios(version, list(t.underlyings))
    now = market.now_ms(wall_ms)
    forward = market.forwards()
    years = t.expiry_years(now)
    iv = market.implied_vol.copy()
    risk, shocks = instrument_risk_arrays(core, t.kind, t.underlying, forward, t.strike, years, iv, t.contract_size,
                                          scen, cfg.n_threads)
    U = len(t.underlyings)
    floors = np.tile(np.asarray(cfg.bracket_floors_usd, dtype=np.float64), (U, 1))
    rates = np.tile(np.asarray(cfg.bracket_rates, dtype=np.float64), (U, 1))
    mark_value = np.maximum(market.mark_price, 0.0) * t.contract_size
    half_spread = np.maximum(market.half_spread, 0.0)
    depth = DepthTable(list(market.depth_curve), half_spread, mark_value, cfg.liquidity, core.depth_distance)
    # an instrument with a depth curve pays the add-on through the book instead of the core's
    core_model = core.MarginModel(
        risk, t.underlying, scen.n_grid, scen.tail_weights, scen.es_level, forward * t.contract_size,
        mark_value, np.where(depth.has_curve, 0.0, half_spread), market.depth.copy(), floors, rates, cfg.mm_factor)
    table = ContingencyTable(t.kind, t.underlying, t.strike, t.expiry_ms, t.contract_size, market.index_price.copy(),
                             cfg.contingency)
    horizon = HorizonTable(cfg.horizon, market.venue_activity(wall_ms), mark_value,
                           scen.horizon_years * SECONDS_PER_YEAR)
    n_rows = scen.n_grid + scen.tail_weights.shape[0]
    return Model(ChargedModel(core_model, table, cfg.mm_factor, horizon, depth), version, scen, forward, iv, years, wall_ms,
                 build_id,
                 shocks.vol_shock[:n_rows].copy(), shocks.tenor_factor, shocks.moneyness, t.underlying.copy())
