"""EWMA (RiskMetrics) recursion with known answers, and event-time sampling."""

import math

import numpy as np
import pytest

from marginflow.riskparams.domain.ewma import (ewma_update, ewma_variance_path, half_life_from_lambda,
                                               lambda_from_half_life)
from marginflow.riskparams.domain.sampling import Sampler, samples_per_year

import rp_helpers as h


def test_ewma_recursion_known_answer():
    # σ²_t = λσ²_{t−1} + (1−λ)r²_{t−1}, λ = 0.94, σ²_0 = 1e-4, by hand:
    # σ²_1 = 0.94e-4 + 0.06·1e-4 = 1.0e-4; σ²_2 = 0.94e-4 + 0.06·4e-4 = 1.18e-4;
    # σ²_3 = 0.94·1.18e-4 + 0.06·9e-4 = 1.6492e-4
    path = ewma_variance_path(np.array([0.01, -0.02, 0.03]), 0.94, 1e-4)
    assert path == pytest.approx([1.0e-4, 1.18e-4, 1.6492e-4], rel=1e-12)
    assert ewma_update(1.18e-4, 0.03, 0.94) == pytest.approx(1.6492e-4, rel=1e-12)


def test_half_life_round_trip_and_riskmetrics_daily_half_life():
    assert half_life_from_lambda(0.94) == pytest.approx(11.2023, abs=1e-4)   # ln .5 / ln .94
    assert lambda_from_half_life(half_life_from_lambda(0.97)) == pytest.approx(0.97, rel=1e-14)
    with pytest.raises(ValueError, match="lambda"):
        ewma_variance_path(np.array([0.01]), 1.0, 1e-4)


def test_engine_ewma_matches_recursion_exactly():
    prices = h.daily_paths(60)
    e = h.engine()
    e.ingest_ticks(h.daily_ticks(prices))
    u = e.units["BTC"]
    returns = np.log(prices[1:, 0] / prices[:-1, 0])[:-1]   # the last day's bucket is still open
    assert u.series.total == returns.size
    np.testing.assert_allclose(u.series.returns(), returns, rtol=0, atol=1e-15)
    returns = u.series.returns()                          # the recursion on exactly these
    expected_fast = ewma_variance_path(returns, 0.94, u.prior_var)[-1]
    expected_slow = ewma_variance_path(returns, 0.97, u.prior_var)[-1]
    assert u.var_fast == pytest.approx(expected_fast, rel=1e-13)
    assert u.var_slow == pytest.approx(expected_slow, rel=1e-13)
    published = e.estimates()[0]
    assert published.sigma_ewma_fast == pytest.approx(math.sqrt(expected_fast * 365), rel=1e-13)


def test_sampler_closes_buckets_on_event_time_only():
    s = Sampler(interval_ms=1000)
    assert s.observe(500, 100.0) == []
    assert s.observe(900, 101.0) == []
    assert s.observe(1200, 102.0) == []                    # bucket 0 closed at 101: base only
    out = s.observe(2100, 103.0)                            # bucket 1 closed at 102
    assert out == [(1, pytest.approx(math.log(102 / 101)))]
    assert s.observe(2000, 99.0) is None                    # late: ignored
    out = s.observe(5500, 104.0)                            # bucket 2 closes, 3 and 4 empty
    assert [b for b, _ in out] == [2, 3, 4]
    assert out[0][1] == pytest.approx(math.log(103 / 102)) and out[1][1] == 0.0 and out[2][1] == 0.0


def test_sampler_long_gap_rebases_instead_of_filling():
    s = Sampler(interval_ms=1000, max_fill=2)
    s.observe(100, 100.0)
    s.observe(1100, 110.0)
    assert [b for b, _ in s.observe(9100, 120.0)] == [1]   # 7 empty buckets > 2: no zeros
    assert s.observe(10100, 130.0) == []                   # bucket 9 is the new base
    assert s.observe(11100, 140.0) == [(10, pytest.approx(math.log(130 / 120)))]


def test_replay_speed_and_batching_do_not_change_estimates():
    ticks = h.daily_ticks(h.daily_paths(150))
    # Intraday noise ticks between the daily closes (same event-time order per instrument).
    one = h.engine()
    one.ingest_ticks(ticks)
    other = h.engine()
    for k in range(0, len(ticks), 7):                      # different batching
        other.ingest_ticks(ticks[k:k + 7])
    a, b = one.estimates(), other.estimates()
    assert a == b
    assert one.units["ETH"].series.total == 148


def test_samples_per_year():
    assert samples_per_year(86_400_000) == 365.0
    assert samples_per_year(3_600_000) == 365.0 * 24
