"""The margin model of one risk-parameter version: risk arrays and the core's MarginModel, built at
the market's current forwards, implied vols and liquidity."""

from __future__ import annotations

import dataclasses

import numpy as np

from marginflow.margin.application.ports import EngineConfig
from marginflow.margin.domain.book import InstrumentTable
from marginflow.margin.domain.market import MarketState
from marginflow.margin.domain.scenarios import RiskVersion, ScenarioSet, build_scenarios


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

    @property
    def sigma_margin(self) -> dict[str, float]:
        return self.version.sigma_margin


def build_model(instruments: InstrumentTable, market: MarketState, config: EngineConfig, core, version: RiskVersion,
                wall_ms: int, build_id: int = 0) -> Model:
    """Risk arrays by full repricing (options by Black-76) over the version's scenarios, then the
    core model with the tiered minimum and the liquidity add-on. ValueError if the core refuses a value."""
    t, cfg = instruments, config
    scen = build_scenarios(version, list(t.underlyings))
    now = market.now_ms(wall_ms)
    forward = market.forwards()
    years = t.expiry_years(now)
    iv = market.implied_vol.copy()
    risk = core.risk_arrays(t.kind, t.underlying, forward, t.strike, years, iv, t.contract_size,
                            scen.price_shock, scen.vol_shock, horizon_years=scen.horizon_years,
                            vol_shock_relative=True, n_threads=cfg.n_threads)
    U = len(t.underlyings)
    floors = np.tile(np.asarray(cfg.bracket_floors_usd, dtype=np.float64), (U, 1))
    rates = np.tile(np.asarray(cfg.bracket_rates, dtype=np.float64), (U, 1))
    mark_value = np.maximum(market.mark_price, 0.0) * t.contract_size
    core_model = core.MarginModel(
        risk, t.underlying, scen.n_grid, scen.tail_weights, scen.es_level, forward * t.contract_size,
        mark_value, np.maximum(market.half_spread, 0.0), market.depth.copy(), floors, rates, cfg.mm_factor)
    return Model(core_model, version, scen, forward, iv, years, wall_ms, build_id)
