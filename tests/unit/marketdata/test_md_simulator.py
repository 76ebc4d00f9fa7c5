"""The simulator's statistics are close to what it was configured for, and it is deterministic."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from marginflow.marketdata.domain.simulator import MarketSimulator, SimConfig
from marginflow.shared.units import MS_PER_DAY, MS_PER_YEAR

CALM = SimConfig(seed=11, step_ms=60_000, garch_alpha=0.0, garch_beta=0.0, p_calm_to_stress_per_day=0.0,
                 jumps_per_day_calm=0.0)


def log_returns(sim: MarketSimulator, steps: int) -> np.ndarray:
    returns, _vol, _stress = sim._step_returns(steps)
    return returns


def test_same_seed_same_ticks_and_other_seed_differs(universe):
    a = MarketSimulator(universe, SimConfig(seed=3), 0).next_block(50)
    b = MarketSimulator(universe, SimConfig(seed=3), 0).next_block(50)
    c = MarketSimulator(universe, SimConfig(seed=4), 0).next_block(50)
    assert a == b
    assert [t.price for t in a[:50]] != [t.price for t in c[:50]]


def test_calm_volatility_matches_configuration(universe):
    sim = MarketSimulator(universe, CALM, 0)
    r = log_returns(sim, 200_000)                       # ~139 days of one-minute steps
    annualised = r.std(axis=0) * np.sqrt(MS_PER_YEAR / CALM.step_ms)
    configured = np.array([universe.underlyings[u].annual_vol for u in sim.underlyings])
    np.testing.assert_allclose(annualised, configured, rtol=0.02)


def test_calm_correlation_matches_configuration(universe):
    sim = MarketSimulator(universe, CALM, 0)
    r = log_returns(sim, 200_000)
    corr = np.corrcoef(r.T)
    pos = {u: i for i, u in enumerate(sim.underlyings)}
    for a, b, rho in CALM.correlation:
        assert corr[pos[a], pos[b]] == pytest.approx(rho, abs=0.01)


def squared_autocorr(r: np.ndarray, lag: int) -> float:
    x = r[:, 0] ** 2
    x = x - x.mean()
    return float((x[:-lag] * x[lag:]).sum() / (x * x).sum())


def test_volatility_clusters_with_garch_and_not_without(universe):
    clustered = dataclasses.replace(CALM, garch_alpha=0.05, garch_beta=0.94)
    r_on = log_returns(MarketSimulator(universe, clustered, 0), 100_000)
    r_off = log_returns(MarketSimulator(universe, CALM, 0), 100_000)
    on = [squared_autocorr(r_on, lag) for lag in (1, 2, 5)]
    off = [squared_autocorr(r_off, lag) for lag in (1, 2, 5)]
    # 2/sqrt(n) ≈ 0.006 is the noise band of an autocorrelation estimate with n = 1e5.
    assert min(on) > 0.05
    assert max(abs(x) for x in off) < 0.02


def test_stress_regime_raises_volatility_and_jumps_fall(universe):
    cfg = SimConfig(seed=5, step_ms=60_000, garch_alpha=0.0, garch_beta=0.0, p_calm_to_stress_per_day=0.5,
                    p_stress_to_calm_per_day=0.5, jumps_per_day_calm=0.0, jumps_per_day_stress=0.0)
    sim = MarketSimulator(universe, cfg, 0)
    returns, _vol, stress = sim._step_returns(200_000)
    assert 0.2 < stress.mean() < 0.8
    ratio = returns[stress, 0].std() / returns[~stress, 0].std()
    assert ratio == pytest.approx(cfg.stress_vol_multiplier, rel=0.05)


def test_jumps_arrive_at_the_configured_rate(universe):
    cfg = dataclasses.replace(CALM, jumps_per_day_calm=20.0, jump_mean=-0.05, jump_sd=0.001)
    sim = MarketSimulator(universe, cfg, 0)
    r = log_returns(sim, 100_000)
    days = 100_000 * cfg.step_ms / MS_PER_DAY
    jumps = (r[:, 0] < -0.03).sum()         # a 5 % drop is > 20 calm one-minute sigmas
    assert jumps / days == pytest.approx(20.0, rel=0.15)


def test_option_smile_has_put_skew_and_books_are_not_crossed(universe):
    sim = MarketSimulator(universe, SimConfig(seed=2, tick_prob_option=1.0), 0)
    ticks = sim.next_block(5)
    assert all(t.bid <= t.ask for t in ticks)
    vols = {}
    for t in ticks:
        inst = universe.instruments.get(t.instrument)
        if inst is not None and inst.is_option and inst.underlying == "BTC":
            vols[(inst.expiry_ms, inst.strike_usd, int(inst.kind))] = t.implied_vol
    expiry = min(e for e, _k, _c in vols)
    strikes = sorted(k for e, k, _c in vols if e == expiry)
    low, atm = strikes[0], min(strikes, key=lambda k: abs(k - 60000))
    assert vols[(expiry, low, 4)] > vols[(expiry, atm, 4)]     # OTM puts richer than ATM


def test_bad_simulator_config_is_refused():
    with pytest.raises(ValueError):
        SimConfig(garch_alpha=0.5, garch_beta=0.6)
    with pytest.raises(ValueError):
        SimConfig(step_ms=0)


def test_depth_thins_out_and_spreads_widen_in_stress(universe):
    # The same seed draws the same numbers whatever the regime, so tick i of the calm run and tick i of
    # the stressed run quote the same random size: the stressed one is stress_depth_multiplier of it.
    calm_cfg = SimConfig(seed=9, p_calm_to_stress_per_day=0.0, p_stress_to_calm_per_day=0.0)
    calm = MarketSimulator(universe, calm_cfg, 0)
    stressed = MarketSimulator(universe, calm_cfg, 0)
    stressed.stress = True
    a, b = calm.next_block(20), stressed.next_block(20)
    assert len(a) == len(b) and [t.instrument for t in a] == [t.instrument for t in b]
    quoted = [(x, y) for x, y in zip(a, b) if x.bids]
    assert quoted
    for x, y in quoted:
        assert y.bid_size == pytest.approx(0.3 * x.bid_size, rel=1e-12)
        assert sum(s for _, s in y.bids) == pytest.approx(0.3 * sum(s for _, s in x.bids), rel=1e-12)
    perp = [(x, y) for x, y in quoted if x.instrument == "BTC-PERP"]
    assert perp and all((y.ask - y.bid) / y.price > (x.ask - x.bid) / x.price for x, y in perp)
    with pytest.raises(ValueError, match="stress_depth_multiplier"):
        SimConfig(stress_depth_multiplier=0.0)
    with pytest.raises(ValueError, match="stress_spread_multiplier"):
        SimConfig(stress_spread_multiplier=0.5)
