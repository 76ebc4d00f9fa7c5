"""Shared builders for the backtest tests (imported as a plain module)."""

from __future__ import annotations

import dataclasses

import numpy as np

from marginflow.backtest.adapters.history_io import SIM_START_MS, simulate_closes
from marginflow.backtest.application import BacktestConfig
from marginflow.backtest.domain.estimates import EstimatorSettings
from marginflow.backtest.service import service_config
from marginflow.backtest.domain.history import History, build_history, validation_for
from marginflow.marketdata.domain.ticks import RawTick
from marginflow.shared.universe import DEFAULT_UNIVERSE_FILE, load_universe

UNDERLYINGS = ("BTC", "ETH", "SOL")
DAY_MS = 86_400_000
PORTFOLIOS_FILE = DEFAULT_UNIVERSE_FILE.parent / "backtest_portfolios.toml"


def universe():
    return load_universe(None, SIM_START_MS)


def ticks_of(times_ms: np.ndarray, closes: np.ndarray, underlyings=UNDERLYINGS, symbol=lambda u: u) -> list[RawTick]:
    return [RawTick(int(t), symbol(u), float(p)) for t, row in zip(times_ms, closes) for u, p in zip(underlyings, row)]


def simulated_history(days: int, seed: int = 7) -> tuple[History, np.ndarray]:
    closes, times, stress = simulate_closes(universe(), days, seed)
    hist, _rep = build_history(ticks_of(times, closes), 0, universe(), None, validation_for(DAY_MS))
    return hist, stress


def default_config(**overrides) -> BacktestConfig:
    """The services' embedded defaults (no environment), as the command line runs them."""
    return service_config(universe(), {}, **overrides)


def small_settings(**overrides) -> EstimatorSettings:
    """Shorter windows so a history of a few hundred days exercises GARCH, floor and FHS."""
    base = dict(garch_min_returns=100, garch_window=300, garch_refit_every=20, floor_lookback=400, fhs_count=200,
                fhs_min_history=100)
    base.update(overrides)
    return dataclasses.replace(default_config().estimator, **base)


def small_config(**overrides) -> BacktestConfig:
    return default_config(estimator=small_settings(), warmup_returns=100, **overrides)
