"""Re-centring: the model is rebuilt as soon as a forward or an option's implied vol has left its band since
the build, so that no requirement is computed on risk arrays centred on a market that has moved on."""

from __future__ import annotations

import numpy as np
import pytest

from marginflow.margin.domain.market import RecenterRules
from marginflow.pricing import black76

from margin_unit_helpers import T0, book, mark, risk_version

CALL = 2                          # BTC-C-60000, expiring 2026-04-01
YEARS = (1_775_030_400_000 - (T0 + 1000)) / (365.0 * 86_400_000)
ON = RecenterRules(price_change=0.01, vol_change=0.05, min_interval_ms=1000)


def call_mark(iv: float, t_ms: int, index: float = 60000.0):
    return mark(CALL, black76(index, 60000.0, YEARS, iv, True), t_ms, index=index, iv=iv)


def long_call_engine(make_engine, iv: float, recenter: RecenterRules, t_ms: int = T0 + 1000):
    engine, pub, clock = make_engine(recenter=recenter)
    engine.apply_marks([call_mark(iv, t_ms)])
    engine.apply_snapshots([book("a", [(CALL, 1.0, 12000.0, 0, 0.0)], {"USDC": 20000.0})])
    engine.apply_risk_params(risk_version())
    engine.market.first_marks = False     # as after the service's start: only the bands rebuild in tick()
    return engine, pub, clock


def test_the_bands_say_which_input_moved():
    forward = np.array([60000.0, 3000.0, 60000.0])
    vol = np.array([0.5, 0.7, 1.0])
    option = np.array([False, False, True])
    assert ON.moved(forward, vol, forward * [1.0, 1.009, 1.0], vol, option) == ""
    assert ON.moved(forward, vol, forward * [1.0, 0.98, 1.0], vol, option) == "price"
    assert ON.moved(forward, vol, forward, vol * [1.0, 1.0, 0.94], option) == "vol"
    # a linear instrument's vol is not an input of its risk array
    assert ON.moved(forward, vol, forward, vol * [0.5, 1.0, 1.0], option) == ""
    off = RecenterRules(0.0, 0.0)
    assert not off.active and off.moved(forward, vol, forward * 2, vol * 2, option) == ""
    for bad in ({"price_change": -0.1}, {"vol_change": float("nan")}, {"min_interval_ms": -1}):
        with pytest.raises(ValueError):
            RecenterRules(**bad)


def test_a_fall_of_implied_vol_rebuilds_the_model_and_the_requirement_is_the_one_a_fresh_start_computes(make_engine):
    # A long call bought at 100 % vol; the vol falls to 60 %: the call is worth ~4,700 USD less.
    engine, _pub, clock = long_call_engine(make_engine, 1.0, ON)
    stale_im = engine.get_margin("a").im_usd
    clock.advance(2000)
    engine.apply_marks([call_mark(0.6, T0 + 2000)])
    engine.tick()
    assert engine.model.implied_vol[CALL] == pytest.approx(0.6)
    fresh, _p, _c = long_call_engine(make_engine, 0.6, ON, T0 + 2000)
    assert engine.get_margin("a").im_usd == pytest.approx(fresh.get_margin("a").im_usd, rel=1e-9)
    # the requirement moved with the vol: the risk arrays at 100 % priced losses the call can no longer make
    assert engine.get_margin("a").im_usd < 0.9 * stale_im
    # without the bands the model keeps the old centre until its periodic refresh
    kept, _p, kept_clock = long_call_engine(make_engine, 1.0, RecenterRules(0.0, 0.0))
    kept_clock.advance(2000)
    kept.apply_marks([call_mark(0.6, T0 + 2000)])
    kept.tick()
    assert kept.model.implied_vol[CALL] == pytest.approx(1.0)
    assert kept.get_margin("a").im_usd == pytest.approx(stale_im, rel=1e-9)


def test_a_move_inside_the_bands_keeps_the_model_and_a_move_beyond_waits_for_the_interval(make_engine):
    engine, _pub, clock = long_call_engine(make_engine, 1.0, ON)
    built = engine.model
    clock.advance(2000)
    engine.apply_marks([call_mark(0.97, T0 + 2000, index=60300.0)])    # vol −3 %, forward +0.5 %
    engine.tick()
    assert engine.model is built
    engine.apply_marks([call_mark(0.9, T0 + 3000)])                    # −10 %: beyond the band
    engine.tick()
    assert engine.model is not built and engine.model.implied_vol[CALL] == pytest.approx(0.9)
    rebuilt = engine.model
    clock.advance(500)                                                 # within the interval of that build
    engine.apply_marks([call_mark(0.7, T0 + 3500)])
    engine.tick()
    assert engine.model is rebuilt
    clock.advance(600)
    engine.tick()
    assert engine.model is not rebuilt and engine.model.implied_vol[CALL] == pytest.approx(0.7)


def test_a_snapshot_after_the_vol_moved_is_margined_on_the_rebuilt_model_not_the_old_centre(make_engine):
    # Marks and a fill arrive in one turn: the account's new revision must not be computed (and called) on the
    # risk arrays of the old vol before the turn's tick would have rebuilt the model.
    engine, pub, clock = long_call_engine(make_engine, 1.0, ON)
    clock.advance(2000)
    engine.apply_marks([call_mark(0.6, T0 + 2000)])
    engine.apply_snapshots([book("a", [(CALL, 1.0, 12000.0, 0, 0.0)], {"USDC": 20001.0}, revision=2)])
    assert engine.model.implied_vol[CALL] == pytest.approx(0.6)
    fresh, _p, _c = long_call_engine(make_engine, 0.6, ON, T0 + 2000)
    fresh.apply_snapshots([book("a", [(CALL, 1.0, 12000.0, 0, 0.0)], {"USDC": 20001.0}, revision=2)])
    assert engine.get_margin("a").im_usd == pytest.approx(fresh.get_margin("a").im_usd, rel=1e-9)
    assert engine.get_margin("a").revision == 2
