"""Fixtures of the margin unit tests (the worked market is in margin_unit_helpers)."""

from __future__ import annotations

import pytest

import marginflow.core as core
from marginflow.margin.application import EngineConfig, MarginEngine
from marginflow.margin.domain.equity import HaircutPolicy
from marginflow.margin.domain.market import RecenterRules
from marginflow.margin.service import instrument_table
from marginflow.shared.clock import ManualClock
from marginflow.shared.universe import parse_universe

from margin_unit_helpers import ASSETS, T0, UNIVERSE, FakePublisher, mark


@pytest.fixture
def table():
    return instrument_table(parse_universe(UNIVERSE, T0))


@pytest.fixture
def make_engine(table):
    def make(core_impl=core, **overrides) -> tuple[MarginEngine, FakePublisher, ManualClock]:
        cfg = dict(assets=ASSETS, mm_factor=0.5, bracket_floors_usd=(0.0,), bracket_rates=(0.01,),
                   haircut=HaircutPolicy(z=2.0, cap=0.5, horizon_seconds=86400.0), mark_max_age_ms=30_000,
                   model_refresh_ms=0, recenter=RecenterRules(0.0, 0.0), evaluate_interval_ms=0, n_threads=1,
                   fallback_vol={"BTC": 0.5, "ETH": 0.7}, fallback_price={"BTC": 60000.0, "ETH": 3000.0})
        cfg.update(overrides)
        pub, clock = FakePublisher(), ManualClock(T0)
        engine = MarginEngine(table, EngineConfig(**cfg), pub, clock, core_impl)
        engine.apply_marks([mark(0, 60000.0), mark(1, 3000.0), mark(2, 3000.0, index=60000.0, iv=0.5)])
        return engine, pub, clock

    return make
