"""Margin at given prices (``Queries.margin_at``): the same numbers as the live computation once the
market has those prices, the live state untouched, and the prices it read reported."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import marginflow.core as core
import marginflow.core.reference as reference
from marginflow.margin.adapters import codec

from margin_unit_helpers import T0, book, mark, risk_version

BTC_PERP, ETH_PERP, CALL = 0, 1, 2
U_BTC, U_ETH = 0, 1


def _books():
    return [book("cross", [(BTC_PERP, 1.0, 60000.0, 0, 0.0), (CALL, -2.0, 3000.0, 0, 0.0)],
                 {"USDC": 9000.0, "BTC": 0.1}),
            book("mixed", [(ETH_PERP, -5.0, 3000.0, 0, 0.0), (BTC_PERP, 0.5, 61000.0, 1, 4000.0)],
                 {"USDC": 2500.0, "ETH": 1.0})]


def _engine(make_engine, core_impl):
    engine, _pub, clock = make_engine(core_impl)
    engine.apply_snapshots(_books())
    engine.apply_risk_params(risk_version())
    engine.apply_marks([mark(BTC_PERP, 60000.0, T0 + 1000), mark(ETH_PERP, 3000.0, T0 + 1000),
                        mark(CALL, 3000.0, T0 + 1000, index=60000.0, iv=0.5)])
    clock.advance(1000)
    engine.evaluate()
    return engine


def _raw_alone(engine, account_id):
    q = engine.queries
    b, model = q.require(account_id)
    return q.margin_of(q.single(b, model), model, liquidation_prices=True)


def _wire(margin) -> bytes:
    return codec.margin_state(dataclasses.replace(margin, episode=0), publish_ms=1).SerializeToString()


@pytest.mark.parametrize("core_impl", [core, reference], ids=["c", "numpy"])
@pytest.mark.parametrize("account_id", ["cross", "mixed"])
def test_margin_at_given_prices_is_the_live_margin_once_the_market_has_them(make_engine, core_impl, account_id):
    asked = _engine(make_engine, core_impl)
    moved = _engine(make_engine, core_impl)
    # the market moved 8 % down: marks and index prices (a BTC mark carries BTC's index)
    moved.apply_marks([mark(BTC_PERP, 55200.0, T0 + 1000), mark(ETH_PERP, 2760.0, T0 + 1000),
                       mark(CALL, 1200.0, T0 + 1000, index=55200.0, iv=0.5)])
    margin, prices = asked.margin_at(account_id, {BTC_PERP: 55200.0, ETH_PERP: 2760.0, CALL: 1200.0},
                                     {U_BTC: 55200.0, U_ETH: 2760.0})
    assert _wire(margin) == _wire(_raw_alone(moved, account_id))
    # ... and it is not the live margin now (the prices mattered), which is left as it was
    live = _raw_alone(asked, account_id)
    assert margin.equity_usd != live.equity_usd
    assert asked.mark_price[BTC_PERP] == 60000.0 and asked.market.index_price[U_BTC] == 60000.0
    assert all(p.given and p.fresh and p.event_time_ms == T0 + 1000 for p in prices)


def test_margin_at_no_prices_is_the_account_margined_afresh_now(make_engine):
    engine = _engine(make_engine, core)
    margin, prices = engine.margin_at("cross", {}, {})
    assert _wire(margin) == _wire(_raw_alone(engine, "cross"))
    # the marks of BTC-PERP and the call, then BTC's index (collateral and the call's forward)
    assert [(p.key, p.price_usd, p.given, p.event_time_ms) for p in prices] == [
        ("BTC-PERP", 60000.0, False, T0 + 1000), ("BTC-C-60000", 3000.0, False, T0 + 1000),
        ("index:BTC", 60000.0, False, T0 + 1000)]


def test_margin_at_reports_the_raw_state_of_its_numbers_and_the_current_episode(make_engine):
    engine = _engine(make_engine, core)
    live = engine.get_margin("cross")
    # BTC-PERP long 1 from 60,000 and 2 calls short at 3,000: at 42,000 (calls at 100) the equity is below MM
    margin, _ = engine.margin_at("cross", {BTC_PERP: 42000.0, CALL: 100.0}, {U_BTC: 42000.0})
    assert 0 <= margin.equity_usd < margin.mm_usd and margin.state == 3     # LIQUIDATION, on fresh (given) marks
    assert margin.marks_fresh and margin.episode == live.episode
    assert (margin.revision, margin.risk_params_version) == (live.revision, live.risk_params_version)
    # collateral: 0.1 BTC at the given index, less the haircut z·σ_m·√(horizon/year) = 2·0.5·√(1/365)
    haircut = 2.0 * 0.5 * np.sqrt(1 / 365)
    assert margin.collateral_usd == pytest.approx(9000.0 + 0.1 * 42000.0 * (1 - haircut), rel=1e-12)
    assert engine.get_margin("cross") is live                            # nothing published, nothing changed


def test_margin_at_a_given_book_and_a_kept_risk_version_is_that_book_margined_on_that_version(make_engine,
                                                                                            monkeypatch):
    from marginflow.margin.application import OtherVersion
    from marginflow.margin.application import evaluation

    monkeypatch.setattr(evaluation, "KEPT_VERSIONS", evaluation.RECENT_VERSIONS + 2)
    engine = _engine(make_engine, core)
    then = _books()[0]                                   # the "cross" account as it was at revision 1
    v1, _ = engine.margin_at("cross", {}, {})

    def widened(version: int, shock: float):
        rv = risk_version(version)
        return dataclasses.replace(rv, grids={u: dataclasses.replace(g, price_shocks=(-shock, 0.0, shock))
                                              for u, g in rv.grids.items()})

    last = evaluation.RECENT_VERSIONS + 1
    for version in range(2, last + 1):                  # wider price shocks with each version: IM rises
        engine.apply_risk_params(widened(version, 0.1 + 0.08 * (version - 1)))
    engine.apply_snapshots([book("cross", [], {"USDC": 100.0}, revision=2)])     # closed since
    at_v2, _ = engine.margin_at("cross", {}, {}, then, 2)
    now, _ = engine.margin_at("cross", {}, {}, then)
    assert at_v2.risk_params_version == 2 and now.risk_params_version == last
    assert now.im_usd > at_v2.im_usd and at_v2.revision == now.revision == 1
    # version 1 is older than the models kept as built: rebuilt from its parameters (at the market now, the
    # same here), it margins the old book as version 1 did — the short call a few microseconds nearer expiry
    at_v1, _ = engine.margin_at("cross", {}, {}, then, 1)
    assert at_v1.risk_params_version == 1 and at_v1.equity_usd == v1.equity_usd
    assert (at_v1.im_usd, at_v1.mm_usd) == pytest.approx((v1.im_usd, v1.mm_usd), rel=1e-6)
    assert at_v1.im_usd < at_v2.im_usd
    assert engine.evaluation.model_of(1) is engine.evaluation.model_of(1)      # rebuilt once, then kept
    # a version never held, or one older than the parameters kept: refused, never margined on another
    with pytest.raises(OtherVersion):
        engine.margin_at("cross", {}, {}, then, last + 1)
    engine.apply_risk_params(risk_version(last + 1))
    engine.apply_risk_params(risk_version(last + 2))
    with pytest.raises(OtherVersion):
        engine.margin_at("cross", {}, {}, then, 1)
    assert engine.margin_at("cross", {}, {}, then, 3)[0].risk_params_version == 3
    current, _ = engine.margin_at("cross", {}, {})       # the current book: flat, 100 USDC
    assert current.revision == 2 and current.im_usd == 0.0


def test_margin_at_given_vols_is_the_computation_from_scratch_at_that_market_not_the_model_s_centre(make_engine):
    # The model was built at the call's vol of 50 %; asked at 80 % (and the call's price there), the answer is
    # what an engine started at that market computes: risk arrays rebuilt around it, not valued at the old centre.
    from marginflow.margin.domain.market import RecenterRules
    from marginflow.pricing import black76

    years = (1_775_030_400_000 - (T0 + 1000)) / (365.0 * 86_400_000)
    price = black76(60000.0, 60000.0, years, 0.8, True)
    engine = _engine(make_engine, core)
    at_centre, _used = engine.margin_at("cross", {CALL: price}, {}, None, 0)
    rebuilt, used = engine.margin_at("cross", {CALL: price}, {}, None, 0, {CALL: 0.8})
    assert engine.model.implied_vol[CALL] == pytest.approx(0.5)       # the live model is left as it is
    fresh, _pub, clock = make_engine(core, recenter=RecenterRules(0.0, 0.0))
    fresh.apply_snapshots(_books())
    fresh.apply_marks([mark(BTC_PERP, 60000.0, T0 + 1000), mark(ETH_PERP, 3000.0, T0 + 1000),
                       mark(CALL, price, T0 + 1000, index=60000.0, iv=0.8)])
    fresh.apply_risk_params(risk_version())
    clock.advance(1000)
    fresh.evaluate()
    assert _wire(rebuilt) == _wire(_raw_alone(fresh, "cross"))
    assert abs(rebuilt.im_usd - at_centre.im_usd) > 0.05 * at_centre.im_usd   # the centre matters
    assert [(p.key, p.given) for p in used][:2] == [("BTC-PERP", False), ("BTC-C-60000", True)]
