"""The signals' pure computation: 25-delta strikes on a smile, tenor interpolation, the book depth index,
and the engine's signals from option marks and depth curves."""

from __future__ import annotations

import math

import pytest
from scipy.special import ndtr, ndtri

import rp_helpers as h
from marginflow.riskparams.adapters.codec import decode_marks, signals_to_proto
from marginflow.riskparams.domain.implied import OptionQuote, atm_implied_vol
from marginflow.riskparams.domain.signals import (ExpirySmile, depth_within, ewma_event_time, expiry_smiles,
                                                  strike_for_delta, tenor_signals)
from marginflow.api.marketdata.v1 import marketdata_pb2
from marginflow.shared.depthcurve import DepthCurve
from marginflow.shared.units import MS_PER_YEAR


def d1(f, k, t, sigma):
    return (math.log(f / k) + 0.5 * sigma * sigma * t) / (sigma * math.sqrt(t))


def test_flat_smile_25_delta_strikes_have_the_closed_form():
    # σ = 0.6, T = 30/365, F = 60,000: K = F·exp(½σ²T − σ√T·N⁻¹(p)); call p = 0.25, put p = 0.75.
    f, t, sigma = 60000.0, 30 / 365, 0.6
    kc, vc = strike_for_delta(f, t, [40000.0, 80000.0], [sigma, sigma], 0.25)
    kp, vp = strike_for_delta(f, t, [40000.0, 80000.0], [sigma, sigma], 0.75)
    root = sigma * math.sqrt(t)
    assert kc == pytest.approx(f * math.exp(0.5 * root * root - root * ndtri(0.25)), rel=1e-10)
    assert kp == pytest.approx(f * math.exp(0.5 * root * root - root * ndtri(0.75)), rel=1e-10)
    assert vc == vp == sigma
    # N⁻¹(0.25) = −0.674490: the call strike lies 0.6745 σ√T above the forward (plus ½σ²T)
    assert kc == pytest.approx(f * math.exp(0.5 * root * root + 0.674490 * root), rel=1e-6)


def test_on_a_skewed_smile_the_solved_strike_has_its_delta_and_puts_are_dearer():
    f, t = 60000.0, 30 / 365
    ks = [42000.0, 48000.0, 54000.0, 60000.0, 66000.0, 72000.0, 84000.0]
    vs = [0.95, 0.80, 0.68, 0.60, 0.57, 0.56, 0.58]         # put skew, a little call wing
    kc, vc = strike_for_delta(f, t, ks, vs, 0.25)
    kp, vp = strike_for_delta(f, t, ks, vs, 0.75)
    assert float(ndtr(d1(f, kc, t, vc))) == pytest.approx(0.25, abs=1e-10)           # call delta 0.25
    assert float(ndtr(d1(f, kp, t, vp))) - 1.0 == pytest.approx(-0.25, abs=1e-10)    # put delta −0.25
    assert kp < f < kc and vp > vc
    for bad in [(0.0, t, ks, vs, 0.25), (f, 0.0, ks, vs, 0.25), (f, t, ks, vs, 1.0), (f, t, ks, vs[:-1], 0.25),
                (f, t, ks, [0.0] * len(ks), 0.25)]:
        with pytest.raises(ValueError):
            strike_for_delta(*bad)


def test_tenor_vols_interpolate_in_total_variance():
    # 7 d at 0.8, 30 d at 0.6: at 14 d w = 0.8²·7/365 + (0.6²·30 − 0.8²·7)/365 · (14 − 7)/(30 − 7)
    a = ExpirySmile(0, 7 / 365, 0.8, 0.0, 0.9, 0.0, 0.7)
    b = ExpirySmile(0, 30 / 365, 0.6, 0.0, 0.7, 0.0, 0.55)
    (before, mid, after) = tenor_signals([a, b], (3.0, 14.0, 90.0))
    w7, w30 = 0.64 * 7 / 365, 0.36 * 30 / 365
    w14 = w7 + (w30 - w7) * 7 / 23
    assert mid.atm_vol == pytest.approx(math.sqrt(w14 / (14 / 365)), rel=1e-12)
    assert (before.atm_vol, after.atm_vol) == (0.8, 0.6)               # flat vol beyond
    assert before.skew_25d == pytest.approx(0.2) and after.skew_25d == pytest.approx(0.15)
    assert tenor_signals([], (30.0,))[0].atm_vol == 0.0


def test_expiry_smiles_agree_with_the_atm_vol_sigma_m_uses():
    t0 = h.AS_OF_MS
    exp = t0 + 30 * 86_400_000
    quotes = [OptionQuote(k, exp, v, t0, True) for k, v in [(50000.0, 0.8), (60000.0, 0.6), (70000.0, 0.55)]]
    quotes.append(OptionQuote(60000.0, exp, 0.62, t0, False))         # call and put averaged: 0.61
    (s,) = expiry_smiles(quotes, 61000.0, t0, 86_400_000, 3_600_000)
    assert s.atm_vol == pytest.approx(0.61 + (0.55 - 0.61) * 0.1, rel=1e-12)
    assert s.atm_vol == pytest.approx(atm_implied_vol(quotes, 61000.0, t0, 30.0, 86_400_000, 3_600_000), rel=1e-12)
    assert s.years == pytest.approx(30 * 86_400_000 / MS_PER_YEAR)
    assert s.skew_25d > 0
    assert expiry_smiles(quotes, 0.0, t0, 86_400_000, 3_600_000) == []


def test_depth_within_reads_the_thinner_side_and_the_index_follows_its_baseline():
    c = DepthCurve((10.0, 50.0, 100.0), (4.0, 20.0, 30.0), (6.0, 10.0, 40.0))
    assert depth_within(c, 50.0) == 10.0                  # asks thinner within 50 bp
    assert depth_within(c, 30.0) == pytest.approx(8.0)    # asks: 6 + 4 · 20/40; bids 4 + 16 · 0.5 = 12
    assert depth_within(c, 5.0) == pytest.approx(2.0)     # from 0 at the mid: bids 2, asks 3
    assert depth_within(c, 500.0) == 30.0
    # one half-life later the baseline moved half way
    assert ewma_event_time(None, 10.0, 0, 1000) == 10.0
    assert ewma_event_time(10.0, 2.0, 1000, 1000) == pytest.approx(6.0)
    assert ewma_event_time(10.0, 2.0, 0, 1000) == 10.0


def test_engine_signals_from_option_marks_and_the_perp_curve():
    e = h.engine(depth_reference_bps=50.0, depth_half_life_ms=h.DAY_MS, signal_tenors_days=(30.0,))
    e.ingest_ticks(h.daily_ticks(h.daily_paths(40)))
    t = e.last_event_ms
    u = h.universe()
    calls = [i for i in u.instruments.values() if i.is_option and i.underlying == "BTC"]
    full = DepthCurve((10.0, 50.0), (4.0, 10.0), (5.0, 12.0))
    thin = DepthCurve((10.0, 50.0), (1.0, 3.0), (2.0, 4.0))
    e.ingest_marks([("BTC-PERP", "BTC", 60000.0, 0.0, t, full)])
    e.ingest_marks([("BTC-PERP", "BTC", 60000.0, 0.0, t + h.DAY_MS, thin),
                    ("ETH-PERP", "ETH", 3000.0, 0.0, t + h.DAY_MS, None)])
    # a put skew: vol 0.5 at and above the money, + 0.2 per unit of moneyness below it
    rep = e.ingest_marks([(i.symbol, "BTC", 60000.0, 0.5 + 0.2 * max(0.0, 1 - i.strike_usd / 60000.0),
                           t + h.DAY_MS) for i in calls])
    assert rep.accepted == len(calls)
    btc = {s.underlying: s for s in e.signals()}["BTC"]
    contract = u.instruments["BTC-PERP"].contract_size
    # depth 3 contracts within 50 bp now, against a baseline 10 → 10 + ½ (3 − 10) = 6.5 one day later
    assert btc.depth_contracts == 3.0 and btc.depth_instrument == "BTC-PERP"
    assert btc.depth_usd == pytest.approx(3.0 * contract * 60000.0)
    assert btc.depth_index == pytest.approx(3.0 / 6.5, rel=1e-12)
    assert btc.sigma_implied > 0 and btc.realised_implied_ratio == pytest.approx(btc.sigma_realised / btc.sigma_implied)
    (tenor,) = btc.tenors
    assert tenor.atm_vol == pytest.approx(btc.sigma_implied, rel=1e-9)  # the same 30-day ATM vol σ_m uses
    # 40 days in, the +90d expiry is the one left of the chain
    assert tenor.skew_25d > 0 and len(btc.expiries) == 1
    eth = {s.underlying: s for s in e.signals()}["ETH"]
    assert eth.depth_index == 0.0 and eth.sigma_implied == 0.0 and eth.realised_implied_ratio == 0.0
    assert eth.tenors[0].atm_vol == 0.0
    msg = signals_to_proto(btc, e.sigma_history("BTC", 3))
    assert msg.tenors[0].skew_25d == pytest.approx(tenor.skew_25d) and len(msg.sigma_history) == 3
    # the depth state survives a restore
    again = h.engine(depth_reference_bps=50.0, depth_half_life_ms=h.DAY_MS, signal_tenors_days=(30.0,))
    assert again.restore(e.checkpoint())
    assert {s.underlying: s for s in again.signals()}["BTC"].depth_index == pytest.approx(btc.depth_index)


def test_a_mark_with_a_bad_curve_is_a_decode_error_with_its_reason():
    m = marketdata_pb2.Mark(instrument="BTC-PERP", underlying="BTC", index_price=60000.0)
    m.meta.event_time_ms = h.AS_OF_MS
    m.depth_curve.distance_bps.extend([10.0, 50.0])
    m.depth_curve.bid_contracts.extend([4.0, 1.0])
    m.depth_curve.ask_contracts.extend([1.0, 2.0])
    good = marketdata_pb2.Mark(instrument="BTC-PERP", underlying="BTC", index_price=60000.0)
    good.meta.event_time_ms = h.AS_OF_MS
    out, errors = decode_marks([good.SerializeToString(), m.SerializeToString()])
    assert out == [("BTC-PERP", "BTC", 60000.0, 0.0, h.AS_OF_MS, None)]
    assert [(i, e.code) for i, e in errors] == [(1, "depth_curve_non_monotone")]
