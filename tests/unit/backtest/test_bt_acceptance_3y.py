"""Acceptance: a 3-year simulated daily history of BTC/ETH/SOL with a stress regime (seed 7, the
command line's default), the configured model against the fixed 10 % rule.

Measured on this history (MM = 0.5 × IM, 3-day horizon, 99 %): see the README's backtest section.
What does not hold is asserted as it is and marked ``xfail(strict=True)`` with the reason, so the
suite records it and fails loudly the day it starts to hold.
"""

from __future__ import annotations

import numpy as np
import pytest

from bt_helpers import PORTFOLIOS_FILE, default_config, simulated_history
from marginflow.backtest.application import run_backtest
from marginflow.backtest.domain.portfolios import parse_portfolios
import marginflow.core as core

SIGNIFICANCE = 0.05
OUTRIGHT = ("long_perp_1x", "long_perp_3x", "long_perp_10x", "short_perp_1x", "short_perp_3x", "short_perp_10x",
            "short_strangle", "covered_call")
HEDGED = ("cross_book", "calendar_spread", "delta_hedged_straddle")


@pytest.fixture(scope="module")
def run3y():
    hist, stress = simulated_history(3 * 365, seed=7)
    assert 0.05 < stress.mean() < 0.5           # the history has stress episodes
    res = run_backtest(hist, parse_portfolios(PORTFOLIOS_FILE.read_text()), default_config(), core)
    return res, {r.portfolio: r for r in res.results["platform"]}, {r.portfolio: r for r in res.results["fixed_10"]}


def test_configured_mm_at_99_passes_kupiec_and_christoffersen_on_the_outright_books(run3y):
    _res, platform, _fixed = run3y
    for name in OUTRIGHT:
        t = platform[name].test("MM", 0.99)
        assert t.kupiec.exceptions >= 1, name
        assert t.kupiec.p_value >= SIGNIFICANCE, (name, t.kupiec)
        assert t.christoffersen.p_ind >= SIGNIFICANCE and t.christoffersen.p_cc >= SIGNIFICANCE, (name, t.christoffersen)


@pytest.mark.xfail(strict=True, reason="over-covered: the hedged books never lose more than their MM (0 exceptions in "
                                       "281 windows), and two-sided Kupiec rejects 0 of 281 at 1 % (LR 5.65, p 0.017)")
def test_configured_mm_at_99_passes_kupiec_on_the_hedged_books(run3y):
    _res, platform, _fixed = run3y
    for name in HEDGED:
        assert platform[name].test("MM", 0.99).passes(SIGNIFICANCE), name


def test_the_hedged_books_fail_only_by_over_coverage(run3y):
    _res, platform, _fixed = run3y
    for name in HEDGED:
        t = platform[name].test("MM", 0.99)
        assert t.exceptions_daily == 0 and t.christoffersen.p_ind >= SIGNIFICANCE


def test_fewer_liquidations_on_noise_than_the_fixed_10_percent_rule(run3y):
    res, platform, fixed = run3y
    assert res.noise_liquidations("platform") < res.noise_liquidations("fixed_10")
    for name in ("long_perp_10x", "short_perp_10x"):
        assert platform[name].liquidations.on_noise < fixed[name].liquidations.on_noise, name


def test_the_fixed_10_percent_rule_does_not_cover_outright_books(run3y):
    _res, _platform, fixed = run3y
    for name in ("long_perp_1x", "short_perp_1x", "cross_book"):
        assert not fixed[name].test("MM", 0.99).kupiec.passes(SIGNIFICANCE)


@pytest.mark.xfail(strict=True, reason="covering 99 % of 3-day losses of a BTC perpetual here needs MM ≈ 16-19 % of "
                                       "notional, so IM = MM / 0.5 ≈ 32-38 %: more than 10 % on every outright book; "
                                       "only the calendar spread and the delta-hedged straddle margin below 10 %")
def test_less_average_margin_than_the_fixed_10_percent_rule(run3y):
    res, platform, fixed = run3y
    assert res.book_capital("platform") < res.book_capital("fixed_10")
    assert np.mean([r.im_per_notional_mean for r in platform.values()]) < 0.10


def test_hedged_books_margin_below_the_fixed_rule(run3y):
    _res, platform, _fixed = run3y
    for name in ("calendar_spread", "delta_hedged_straddle"):
        assert platform[name].im_per_notional_mean < 0.10
