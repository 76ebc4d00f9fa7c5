"""The backtest's replay of the estimators gives the riskparams engine's numbers on the same ticks.

The backtest composes riskparams' domain functions itself (so a sweep can reuse the GARCH path);
this is the check that it composes them as the service's ``RiskEngine`` does — σ per estimator,
σ_m with anti-procyclicality, the correlation and the historical scenario set, interval by interval.
(The one import of riskparams' application module in the backtest.)
"""

from __future__ import annotations

import numpy as np
import pytest

from bt_helpers import DAY_MS, UNDERLYINGS, simulated_history, small_settings, universe
from marginflow.backtest.domain.estimates import estimator_path, floor_path, garch_path, historical_moves
from marginflow.riskparams.application import EngineConfig, Market, RiskEngine


@pytest.fixture(scope="module")
def replay():
    hist, _ = simulated_history(260, seed=11)
    s = small_settings()
    garch = garch_path(hist.returns, hist.underlyings, s)
    path = estimator_path(hist.returns, hist.prior_annual_vol, s, hist.samples_per_year, garch,
                          floor_path(hist.returns, s, hist.samples_per_year))
    return hist, s, garch, path


def engine_for(s) -> RiskEngine:
    cfg = EngineConfig(underlyings=UNDERLYINGS, interval_ms=DAY_MS, lambda_fast=s.lambda_fast, lambda_slow=s.lambda_slow,
                       lambda_correlation=s.lambda_correlation, garch_window=s.garch_window,
                       garch_min_returns=s.garch_min_returns, garch_refit_every=s.garch_refit_every,
                       floor_lookback=s.floor_lookback, floor_stress_window=s.floor_stress_window,
                       floor_stress_weight=s.floor_stress_weight, floor_min_returns=s.floor_min_returns, apc=s.apc,
                       grid=s.grid, fhs_count=s.fhs_count, fhs_min_history=s.fhs_min_history,
                       es_confidence=s.es_confidence)
    return RiskEngine(cfg, Market.from_universe(universe(), UNDERLYINGS))


def test_replay_matches_the_riskparams_engine_interval_by_interval(replay):
    hist, s, garch, path = replay
    eng = engine_for(s)
    perps = [f"{u}-PERP" for u in UNDERLYINGS]
    # the engine learns the return of interval t from the first tick of interval t + 1
    first_close = hist.close[0] / np.exp(hist.returns[0])
    eng.ingest_ticks([(p, float(c), int(hist.time_ms[0] - DAY_MS)) for p, c in zip(perps, first_close)])
    checked = 0
    for t in range(hist.n - 1):
        eng.ingest_ticks([(p, float(c), int(hist.time_ms[t])) for p, c in zip(perps, hist.close[t])])
        if t < 1:
            continue
        tt = t - 1   # the intervals completed so far end with observation tt
        est = {e.underlying: e for e in eng.estimates()}
        for j, u in enumerate(UNDERLYINGS):
            e = est[u]
            assert e.returns_observed == tt + 1
            assert e.sigma_ewma_fast == pytest.approx(path.sigma_fast[tt, j], rel=1e-12)
            assert e.sigma_ewma_slow == pytest.approx(path.sigma_slow[tt, j], rel=1e-12)
            assert e.garch_ok == bool(garch.ok[tt, j])
            assert e.sigma_garch == pytest.approx(path.sigma_garch[tt, j], rel=1e-12)
            assert e.sigma_floor == pytest.approx(path.sigma_floor[tt, j], rel=1e-12, abs=1e-15)
            assert e.sigma_margin == pytest.approx(path.sigma_margin[tt, j], rel=1e-12)
            assert e.stress == bool(path.stress[tt, j])
        if tt % 25 == 0 or tt == hist.n - 3:
            version = eng.build_version(0, force=True)
            np.testing.assert_allclose(version.correlation, path.correlation[tt], rtol=1e-10, atol=1e-12)
            moves, bootstrap = historical_moves(hist.returns, path, tt, path.sigma_margin[tt], s)
            assert version.historical.bootstrap == bootstrap
            np.testing.assert_allclose(version.historical.returns, moves, rtol=1e-10, atol=1e-14)
            checked += 1
    assert garch.fits > 0 and path.sigma_floor.max() > 0   # the path went through every estimator
    assert checked >= 8
