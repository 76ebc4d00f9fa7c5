"""Index and mark prices."""

from __future__ import annotations

import math

import pytest

from marginflow.marketdata.domain.marks import MarkConfig, MarkEngine
from marginflow.marketdata.domain.ticks import AcceptedTick, RawTick
from marginflow.pricing import black76
from marginflow.shared.universe import Kind

T0 = 1_764_000_000_000


def acc(t: int, sym: str, price: float, seq: int = 1, **kw) -> AcceptedTick:
    return AcceptedTick(RawTick(T0 + t, sym, price, **kw), seq)


@pytest.mark.parametrize("bound_frac, expected_basis", [(0.01, 315.0), (0.005, 300.0)])
def test_perp_mark_is_index_plus_bounded_smoothed_basis(universe, bound_frac, expected_basis):
    eng = MarkEngine(universe, MarkConfig(basis_half_life_ms=1000, interval_ms=0, max_perp_basis_frac=bound_frac))
    eng.update([acc(0, "BTC", 60000.0), acc(0, "BTC-PERP", 60030.0)])
    assert eng.latest["BTC-PERP"].mark_price == pytest.approx(60030.0)      # first basis taken as is
    # One half-life later the raw basis jumps to +600 (1 %): the smoothed basis goes halfway,
    # 30 + (600 - 30) / 2 = 315, and the mark is capped at index ± bound.
    marks = eng.update([acc(1000, "BTC-PERP", 60600.0, seq=2)])
    assert marks[0].basis == pytest.approx(expected_basis)
    assert marks[0].mark_price == pytest.approx(60000.0 + expected_basis)


def test_mark_uses_mid_when_book_present(universe):
    eng = MarkEngine(universe, MarkConfig(interval_ms=0))
    eng.update([acc(0, "ETH", 3000.0), acc(0, "ETH-PERP", 3005.0, bid=3000.0, ask=3002.0, bid_size=5, ask_size=6)])
    m = eng.latest["ETH-PERP"]
    assert m.mark_price == pytest.approx(3001.0)
    assert m.half_spread_frac == pytest.approx(2.0 / 6002.0)


def test_index_falls_back_to_perp_mid_without_index_ticks(universe):
    eng = MarkEngine(universe, MarkConfig(interval_ms=0))
    eng.update([acc(0, "SOL-PERP", 150.0)])
    m = eng.latest["SOL-PERP"]
    assert m.index_price == 150.0 and m.basis == 0.0


def test_marks_are_throttled_per_instrument_in_event_time(universe):
    eng = MarkEngine(universe, MarkConfig(interval_ms=1000))
    emitted = [len(eng.update([acc(t, "BTC", 60000.0 + t, seq=t + 1)])) for t in (0, 200, 900, 1000, 1500, 2100)]
    assert emitted == [1, 0, 0, 1, 0, 1]


def test_option_mark_is_black76_on_the_forward_at_smoothed_iv(universe):
    opt = next(i for i in universe.instruments.values() if i.kind == Kind.CALL and i.underlying == "BTC")
    eng = MarkEngine(universe, MarkConfig(interval_ms=0, iv_half_life_ms=1000))
    eng.update([acc(0, "BTC", 60000.0)])
    eng.update([acc(0, opt.symbol, 1234.0, implied_vol=0.5)])
    eng.update([acc(1000, opt.symbol, 1300.0, seq=2, implied_vol=0.7)])
    m = eng.latest[opt.symbol]
    assert m.implied_vol == pytest.approx(0.6)          # halfway after one half-life
    years = opt.years_to_expiry(T0 + 1000)
    assert m.mark_price == pytest.approx(black76(60000.0, opt.strike_usd, years, 0.6, True))


def test_option_without_iv_in_tick_uses_iv_implied_by_its_price(universe):
    opt = next(i for i in universe.instruments.values() if i.kind == Kind.PUT and i.underlying == "ETH")
    years = opt.years_to_expiry(T0)
    price = black76(3000.0, opt.strike_usd, years, 0.8, False)
    eng = MarkEngine(universe, MarkConfig(interval_ms=0))
    eng.update([acc(0, "ETH", 3000.0)])
    eng.update([acc(0, opt.symbol, price)])
    assert eng.latest[opt.symbol].implied_vol == pytest.approx(0.8, rel=1e-6)


def test_restore_resumes_smoothing_from_last_mark(universe):
    eng = MarkEngine(universe, MarkConfig(interval_ms=0, basis_half_life_ms=1000))
    eng.update([acc(0, "BTC", 60000.0), acc(0, "BTC-PERP", 60100.0)])
    saved = dict(eng.latest)
    fresh = MarkEngine(universe, MarkConfig(interval_ms=0, basis_half_life_ms=1000))
    for m in saved.values():
        fresh.restore(m)
    a = eng.update([acc(1000, "BTC-PERP", 60000.0, seq=2)])[0]
    b = fresh.update([acc(1000, "BTC-PERP", 60000.0, seq=2)])[0]
    assert a.mark_price == pytest.approx(b.mark_price) and math.isclose(a.basis, 50.0)
