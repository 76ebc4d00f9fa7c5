"""Pure parts of the backtest: procyclicality, liquidations on noise, portfolios, history building."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bt_helpers import DAY_MS, PORTFOLIOS_FILE, UNDERLYINGS, ticks_of, universe
from marginflow.backtest.domain.book import build_book
from marginflow.backtest.domain.history import build_history, detect_interval_ms, validation_for
from marginflow.backtest.domain.liquidations import count_liquidations, liquidation_flags
from marginflow.backtest.domain.portfolios import (PortfolioError, SmileProxy, black76_delta, parse_portfolios,
                                                   select_portfolios)
from marginflow.backtest.domain.procyclicality import max_increase, peak_to_trough, procyclicality, worst_day_jumps
from marginflow.marketdata.domain.simulator import black76_vec
from marginflow.marketdata.domain.ticks import RawTick

T0 = 1_700_000_000_000 - 1_700_000_000_000 % DAY_MS


# ---- procyclicality ---------------------------------------------------------------------------------

def test_procyclicality_of_a_hand_made_margin_series():
    m = [100.0, 110.0, 121.0, 60.5, 90.75, 100.0]
    # peak 121 / trough 60.5 = 2; 1-step rises: 10 %, 10 %, −50 %, +50 %, +10.2 % → 50 %
    assert peak_to_trough(m) == pytest.approx(2.0)
    assert max_increase(m, 1) == pytest.approx(0.5)
    # 2-step: 121/100 − 1 = 21 %, 60.5/110 − 1, 90.75/121 − 1, 100/60.5 − 1 = 65.3 %
    assert max_increase(m, 2) == pytest.approx(100.0 / 60.5 - 1.0)
    assert max_increase([3.0, 2.0, 1.0], 1) == 0.0
    # worst day by |move| among inner days 1..4 is day 3 (−0.7): margin 121 → 90.75 around it
    moves = [0.0, 0.01, 0.02, -0.7, 0.3, 0.0]
    assert worst_day_jumps(m, moves, k=1) == pytest.approx([90.75 / 121.0 - 1.0])
    p = procyclicality(m, moves, n=2, k=2)
    assert p.worst_day_jump_max == pytest.approx(100.0 / 60.5 - 1.0)       # day 4 (+0.3): 60.5 → 100


def test_procyclicality_rejects_non_positive_margin():
    with pytest.raises(ValueError):
        peak_to_trough([1.0, 0.0])


# ---- liquidations ----------------------------------------------------------------------------------

def test_liquidation_on_noise_is_a_crossing_that_reversed_by_the_horizon():
    # three accounts, horizon of 3 observations; MM 50 throughout
    equity = [[60, 40, 70],    # crossed at k = 2, back above at the horizon: on noise
              [60, 40, 45],    # crossed and still below at the horizon: a liquidation, not noise
              [60, 55, 51]]    # never crossed
    mm = np.full((3, 3), 50.0)
    liq, noise = liquidation_flags(equity, mm)
    assert liq.tolist() == [True, True, False]
    assert noise.tolist() == [True, False, False]
    c = count_liquidations(equity, mm)
    assert (c.accounts, c.liquidated, c.on_noise) == (3, 2, 1)
    assert c.noise_rate == pytest.approx(1 / 3)
    # equity exactly at MM is not a liquidation (E < MM is)
    assert count_liquidations([[50.0]], [[50.0]]).liquidated == 0


# ---- portfolios ------------------------------------------------------------------------------------

def test_the_packaged_reference_portfolios_parse():
    specs = parse_portfolios(PORTFOLIOS_FILE.read_text())
    names = [p.name for p in specs]
    for want in ("long_perp_1x", "long_perp_3x", "long_perp_10x", "short_perp_1x", "short_perp_3x", "short_perp_10x",
                 "cross_book", "calendar_spread", "short_strangle", "covered_call", "delta_hedged_straddle"):
        assert want in names
    assert {leg.underlying for p in specs for leg in p.legs} == set(UNDERLYINGS)
    kept, skipped = select_portfolios(specs, ("BTC",))
    assert skipped == ["cross_book"] and len(kept) == len(specs) - 1


@pytest.mark.parametrize("text, message", [
    ("", r"no \[\[portfolio\]\]"),
    ('[[portfolio]]\nname = "a"\n', "no legs"),
    ('[[portfolio]]\nname = "a"\nleg = [{underlying = "BTC", kind = "swap", notional_usd = 1.0}]', "kind must be"),
    ('[[portfolio]]\nname = "a"\nleg = [{underlying = "BTC", kind = "call", notional_usd = 1.0}]', "tenor_days"),
    ('[[portfolio]]\nname = "a"\nleg = [{underlying = "BTC", kind = "perpetual"}]', "notional_usd"),
    ('[[portfolio]]\nname = "a"\nleverage = 0\nleg = [{underlying = "BTC", kind = "perpetual", notional_usd = 1.0}]',
     "leverage"),
    ('[[portfolio]]\nname = "a"\nleg = [{underlying = "BTC", kind = "delta_hedge"}]', "delta_hedge without"),
    ("[[portfolio\n", "not valid TOML"),
])
def test_bad_portfolio_files_name_the_entry(text, message):
    with pytest.raises(PortfolioError, match=message):
        parse_portfolios(text)


def test_black76_delta_is_the_derivative_of_the_value():
    f = np.array([100.0, 100.0, 80.0])
    k = np.array([100.0, 110.0, 90.0])
    t = np.array([0.1, 0.25, 0.5])
    v = np.array([0.6, 0.8, 0.5])
    for is_call in (True, False):
        c = np.full(3, is_call)
        eps = 1e-4
        fd = (black76_vec(f + eps, k, t, v, c) - black76_vec(f - eps, k, t, v, c)) / (2 * eps)
        np.testing.assert_allclose(black76_delta(f, k, t, v, c), fd, rtol=1e-6)


def test_smile_proxy_is_the_simulators_shape():
    s = SmileProxy()
    atm = s.vol(np.array([0.5]), np.array([100.0]), np.array([100.0]), np.array([30 / 365]))
    assert atm == pytest.approx([0.55])             # iv_premium 1.1 × 0.5 at the money
    wing = s.vol(np.array([0.5]), np.array([130.0]), np.array([100.0]), np.array([30 / 365]))
    assert wing[0] > atm[0]                          # curvature wins far out of the money


# ---- history ---------------------------------------------------------------------------------------

def _series(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    closes = np.array([60_000.0, 3_000.0, 150.0]) * np.exp(np.cumsum(rng.normal(0, 0.02, (n, 3)), axis=0))
    times = T0 + DAY_MS * np.arange(1, n + 1) - 1
    return closes, times


def test_history_is_the_samplers_returns_of_the_validated_closes():
    closes, times = _series()
    hist, rep = build_history(ticks_of(times, closes), 0, universe(), None, validation_for(DAY_MS))
    assert hist.interval_ms == DAY_MS and hist.underlyings == UNDERLYINGS
    # the first close only anchors the first return; the last one has no later tick to close its interval
    assert hist.n == 38 and rep.observations == 38
    np.testing.assert_allclose(hist.close, closes[1:-1])
    np.testing.assert_allclose(hist.returns, np.log(closes[1:-1] / closes[:-2]), rtol=1e-12)
    assert (hist.time_ms == times[1:-1] + 1).all()              # interval ends
    assert rep.dropped == 0 and rep.accepted == 120


def test_bad_prints_are_dropped_by_marketdatas_validation_and_counted():
    closes, times = _series()
    ticks = ticks_of(times, closes)
    bad = [
        RawTick(int(times[5]) + 1000, "BTC", float("nan")),                   # non_finite_price
        RawTick(int(times[6]) + 1000, "ETH", -3.0),                          # non_positive_price
        RawTick(int(times[7]) + 1000, "DOGE-PERP", 1.0),                     # unknown_instrument
        RawTick(int(times[9]) + 1000, "BTC", float(closes[9, 0]) * 10.0),    # slipped decimal, contradicted next day
    ]
    hist, rep = build_history(ticks + bad, 2, universe(), None, validation_for(DAY_MS))
    assert rep.rejected == {"non_finite_price": 1, "non_positive_price": 1, "unknown_instrument": 1,
                            "jump_contradicted": 1}
    assert rep.bad_rows == 2 and rep.dropped == 6
    clean, _ = build_history(ticks, 0, universe(), None, validation_for(DAY_MS))
    np.testing.assert_array_equal(hist.close, clean.close)       # nothing of the bad prints got through


def test_a_perpetual_beside_its_index_is_ignored_and_a_perpetual_alone_is_sampled():
    closes, times = _series()
    ticks = ticks_of(times, closes) + ticks_of(times, closes * 1.001, symbol=lambda u: f"{u}-PERP")
    hist, rep = build_history(ticks, 0, universe(), None, validation_for(DAY_MS))
    assert rep.ignored == 120
    np.testing.assert_allclose(hist.close, closes[1:-1])
    perp_only, _ = build_history(ticks_of(times, closes, symbol=lambda u: f"{u}-PERP"), 0, universe(), None,
                                 validation_for(DAY_MS))
    np.testing.assert_allclose(perp_only.close, closes[1:-1])


def test_intraday_interval_is_detected_and_gets_marketdatas_jump_threshold():
    assert detect_interval_ms({"BTC": [0, 3_600_000, 7_200_000, 10_800_000]}) == 3_600_000
    assert validation_for(60_000).jump_threshold == 0.10
    assert validation_for(DAY_MS).jump_threshold == 0.5 and validation_for(DAY_MS).hold_max_ms == 4 * DAY_MS
    assert validation_for(DAY_MS, 0.2).jump_threshold == 0.2


def test_an_underlying_the_universe_lacks_gets_a_prior():
    closes, times = _series()
    ticks = [RawTick(int(t), "DOGE", float(p)) for t, p in zip(times, closes[:, 2] / 1000)]
    hist, _ = build_history(ticks, 0, universe(), None, validation_for(DAY_MS))
    assert hist.underlyings == ("DOGE",) and hist.prior_annual_vol[0] == pytest.approx(0.8)


# ---- book ------------------------------------------------------------------------------------------

def test_book_sizes_values_and_delta_hedge():
    closes, times = _series(12)
    hist, _ = build_history(ticks_of(times, closes), 0, universe(), None, validation_for(DAY_MS))
    specs = parse_portfolios(PORTFOLIOS_FILE.read_text())
    book = build_book(hist, specs, 3, SmileProxy(), 0.05, 0.01)
    P = len(specs)
    names = [s.name for s in specs]
    t = 6
    pnl, gross = book.pnl_gross_at(t)
    # long BTC perp of 1M USD opened at t − 2 (lag 2): P&L = 1e6 · (S_t / S_{t−2} − 1)
    p = names.index("long_perp_1x")
    assert pnl[2 * P + p] == pytest.approx(1e6 * (hist.close[t, 0] / hist.close[t - 2, 0] - 1.0), rel=1e-12)
    assert gross[p] == pytest.approx(1e6)                                     # lag 0: notional at opening
    assert pnl[p] == pytest.approx(0.0, abs=1e-9)
    # calendar spread: 90-day minus 30-day future of the same notional, F = S·e^{0.05·T}
    c = names.index("calendar_spread")
    assert gross[c] == pytest.approx(2e6)
    # the delta-hedged straddle has (almost) no delta at opening: a small move changes little
    d = names.index("delta_hedged_straddle")
    hedge = [k for k in range(book.size.shape[1]) if book.pos_portfolio[k] == d and book.pos_is_perp[k]]
    assert len(hedge) == 1 and abs(book.size[t, hedge[0]]) < 0.2 * 1e6 / hist.close[t, 0]
    assert math.isfinite(book.steps[t].value.sum())
