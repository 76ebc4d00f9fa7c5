"""Anti-procyclicality rules on constructed paths; scenario grid, FHS and bootstrap values."""

import math

import numpy as np
import pytest

from marginflow.riskparams.domain.apc import ApcConfig, floor_volatility, margin_volatility
from marginflow.riskparams.domain.implied import OptionQuote, atm_implied_vol
from marginflow.riskparams.domain.scenarios import (BOOTSTRAP_SEED, GridConfig, bootstrap_scenarios,
                                                    filtered_historical_scenarios, grid_range, scenario_grid)

CFG = ApcConfig(buffer=0.25, stress_ratio=1.25, max_step_up=0.5)


def run_path(fast, slow, floor=None, garch=None, implied=None, cfg=CFG):
    prev, out = None, []
    for i, (f, s) in enumerate(zip(fast, slow)):
        prev = margin_volatility(prev, sigma_fast=f, sigma_slow=s, sigma_garch=(garch or fast)[i] if garch else 0.0,
                                 sigma_implied=(implied or [0.0] * len(fast))[i],
                                 sigma_floor=(floor or [0.0] * len(fast))[i], config=cfg)
        out.append(prev)
    return out


def test_calm_market_carries_the_buffer():
    out = run_path([0.5, 0.5], [0.5, 0.5])
    assert out[-1].sigma_margin == pytest.approx(0.625)        # (1 + 25 %) · 0.5
    assert out[-1].buffer == 0.25 and not out[-1].stress and out[-1].cause == "ewma_fast"


def test_buffer_is_released_in_stress_and_restored_after():
    # fast vol jumps 0.5 → 0.7 while slow stays 0.5: 0.7 ≥ 1.25·0.5 → stress.
    out = run_path([0.5, 0.7, 0.7, 0.5], [0.5, 0.5, 0.52, 0.55])
    assert out[1].stress and out[1].buffer == 0.0
    assert out[1].sigma_margin == pytest.approx(0.7)           # not 0.875: the buffer absorbs the rise
    assert out[1].cause.startswith("buffer_released")
    assert not out[3].stress and out[3].cause.startswith("buffer_restored")
    assert out[3].sigma_margin == pytest.approx(0.625)
    # Margin rose by 12 % while the estimate rose by 40 %: less procyclical.
    assert out[1].sigma_margin / out[0].sigma_margin < 0.7 / 0.5


def test_floor_holds_in_a_calm_market():
    out = run_path([0.2, 0.1, 0.05], [0.2, 0.15, 0.1], floor=[0.4, 0.4, 0.4])
    assert [m.sigma_margin for m in out] == [0.4, 0.4, 0.4]
    assert all(m.cause == "floor" for m in out)


def test_single_step_up_is_bounded_then_catches_up():
    cfg = ApcConfig(max_step_up=0.5)
    out = run_path([0.4, 2.0, 2.0, 2.0, 2.0], [0.4, 0.4, 0.6, 0.8, 0.9], cfg=cfg)
    sig = [m.sigma_margin for m in out]
    assert sig[:4] == pytest.approx([0.5, 0.75, 1.125, 1.6875])   # ×1.5 per interval at most
    assert all("step_cap" in m.cause for m in out[1:4])
    assert sig[4] == pytest.approx(2.0)                          # caught up: stress, no buffer
    assert "step_cap" not in out[4].cause


def test_implied_and_garch_drive_when_larger():
    out = run_path([0.5], [0.5], garch=[0.6], implied=[0.7])
    assert out[0].cause == "implied" and out[0].sigma_base == pytest.approx(0.7)


def test_buffer_below_25_percent_is_refused():
    with pytest.raises(ValueError, match="0.25"):
        ApcConfig(buffer=0.2)


def test_floor_weights_the_stressed_window():
    r = np.concatenate([np.full(90, 0.01), np.full(10, 0.05)])
    long_var = np.mean(r ** 2)
    stress_var = 0.05 ** 2
    expected = math.sqrt((0.75 * long_var + 0.25 * stress_var) * 365)
    assert floor_volatility(r, 10, 0.25, 365) == pytest.approx(expected, rel=1e-12)


def test_default_grid_is_plus_minus_16_percent_9_points_3_vol_states():
    cfg = GridConfig()
    sigma_m = 0.16 / (3 * math.sqrt(3 / 365))        # ≈ 0.588: typical BTC vol ≈ 0.47 plus 25 %
    g = scenario_grid(sigma_m, cfg)
    np.testing.assert_allclose(g.price_shocks, [-0.16, -0.12, -0.08, -0.04, 0, 0.04, 0.08, 0.12, 0.16], atol=1e-12)
    assert g.vol_shocks == (-0.25, 0.0, 0.25)
    np.testing.assert_allclose(g.tail_price_shocks, [-0.32, 0.32, -0.48, 0.48], atol=1e-12)
    assert g.tail_weights == (0.5, 0.5, 0.35, 0.35)
    assert g.horizon_seconds == 3 * 86400


def test_grid_range_formula_and_clipping():
    cfg = GridConfig(z=2.0, horizon_seconds=365 * 86400.0, buckets_each_side=2)
    assert grid_range(0.3, cfg) == pytest.approx(0.6)
    g = scenario_grid(0.3, cfg)
    assert g.price_shocks == pytest.approx((-0.6, -0.3, 0.0, 0.3, 0.6))
    assert min(g.tail_price_shocks) == -0.99                   # −1.8 clipped: prices stay > 0


def test_fhs_rescales_by_sigma_now_over_sigma_then():
    r = np.array([[0.02, -0.01], [-0.04, 0.03]])
    s = np.array([[0.01, 0.01], [0.02, 0.03]])
    sig_m = np.array([0.365, 0.73]) * math.sqrt(1 / 365) * math.sqrt(365)   # annual
    out = filtered_historical_scenarios(r, s, sig_m, samples_per_year=365, horizon_years=1 / 365)
    per_day = sig_m / math.sqrt(365)
    expected = np.expm1(r / s * per_day)
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    assert out[0, 0] == pytest.approx(math.expm1(2 * 0.365 / math.sqrt(365)))


def test_bootstrap_set_is_deterministic_and_correlated():
    corr = np.array([[1.0, 0.8], [0.8, 1.0]])
    a = bootstrap_scenarios(np.array([0.6, 0.9]), corr, 4000, 3 / 365)
    b = bootstrap_scenarios(np.array([0.6, 0.9]), corr, 4000, 3 / 365)
    np.testing.assert_array_equal(a, b)
    assert BOOTSTRAP_SEED == 20_130_219
    x = np.log1p(a)
    assert np.corrcoef(x.T)[0, 1] == pytest.approx(0.8, abs=0.05)
    assert x[:, 1].std() == pytest.approx(0.9 * math.sqrt(3 / 365), rel=0.08)


def test_atm_implied_vol_interpolates_strike_then_total_variance():
    day = 86_400_000
    q = [OptionQuote(90, 10 * day, 0.60, 0, True), OptionQuote(110, 10 * day, 0.50, 0, False),
         OptionQuote(100, 50 * day, 0.40, 0, True), OptionQuote(100, 50 * day, 0.44, 0, False)]
    # 10 d ATM at S=100: 0.55; 50 d ATM: mean(0.40, 0.44) = 0.42; 30 d by total variance.
    t1, t2, tau = 10 / 365, 50 / 365, 30 / 365
    w = 0.55 ** 2 * t1 + (0.42 ** 2 * t2 - 0.55 ** 2 * t1) * (tau - t1) / (t2 - t1)
    got = atm_implied_vol(q, 100.0, 0, 30.0, min_expiry_ms=day, max_age_ms=day)
    assert got == pytest.approx(math.sqrt(w / tau), rel=1e-12)
    assert atm_implied_vol(q, 100.0, 0, 5.0, day, day) == pytest.approx(0.55)
    assert atm_implied_vol(q, 100.0, 2 * day, 30.0, day, day) == 0.0          # all stale
