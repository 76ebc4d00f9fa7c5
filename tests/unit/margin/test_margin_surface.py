"""Surface-aware vol shocks and contingency charges: riskparams settings → the wire → the margin model,
validation, C core vs twin agreement on whole models, and Explain per position."""

from __future__ import annotations

import dataclasses
import pathlib
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from marginflow.api.risk.v1 import risk_pb2
from marginflow.core import ccore, reference
from marginflow.margin.adapters import codec
from marginflow.margin.application import EngineConfig
from marginflow.margin.application.models import build_model
from marginflow.margin.domain.contingency import ContingencyRates
from marginflow.margin.domain.market import MarketState
from marginflow.margin.domain.scenarios import build_scenarios
from marginflow.margin.service import engine_config as margin_engine_config, instrument_table
from marginflow.margin.settings import MarginSettings
from marginflow.riskparams.adapters.codec import to_proto
from marginflow.riskparams.application import engine_config as rp_engine_config
from marginflow.riskparams.settings import RiskParamsSettings
from marginflow.shared.config import ConfigError, load
from marginflow.shared.errors import Rejected
from marginflow.shared.universe import parse_universe
from marginflow.shared.volsurface import DERIBIT, VolSurfaceShock, instrument_vol_shocks

from margin_unit_helpers import ASSETS, T0, UNIVERSE, book, risk_version

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "riskparams"))
import rp_helpers as rph  # noqa: E402

BTC, ETH, CALL = 0, 1, 2


def _grid_proto(**surface) -> risk_pb2.RiskParams:
    p = risk_pb2.RiskParams(version=3, es_confidence=0.99)
    p.underlyings.add(underlying="BTC", sigma_margin=0.5, index_price=60000)
    g = p.grids.add(underlying="BTC", price_shocks=[-0.1, 0, 0.1], vol_shocks=[-0.25, 0.0, 0.5],
                    horizon_seconds=86400)
    if surface:
        g.surface.CopyFrom(risk_pb2.VolSurfaceShock(**surface))
    p.historical.underlyings.extend(["BTC"])
    p.historical.count = 2
    p.historical.returns.extend([0.1, -0.1])
    return p


def test_riskparams_settings_publish_the_surface_with_every_grid():
    s = load(RiskParamsSettings, {"MF_RISKPARAMS_VOL_SHORT_TENOR_POWER": "0.35",
                                  "MF_RISKPARAMS_VOL_MIN_SHOCK_UP": "0.6"})
    sf = rp_engine_config(s, rph.UNDERLYINGS).grid.surface
    assert (sf.reference_days, sf.short_power, sf.long_power, sf.min_vol_shock_up) == (30.0, 0.35, 0.13, 0.6)
    assert (sf.skew_shock, sf.put_wing, sf.moneyness_cap, sf.min_days) == (1.0, 0.5, 3.0, 1.0)
    engine = rph.engine(grid=dataclasses.replace(rph.config().grid, surface=sf))
    engine.ingest_ticks(rph.daily_ticks(rph.daily_paths(30)))
    msg = to_proto(engine.build_version(rph.AS_OF_MS))
    assert all(g.HasField("surface") and g.surface.short_power == 0.35 for g in msg.grids)
    decoded = codec.risk_params_from_proto(msg)
    assert all(g.surface == sf for g in decoded.grids.values())
    for env, name in (({"MF_RISKPARAMS_VOL_SHORT_TENOR_POWER": "-0.1"}, "MF_RISKPARAMS_VOL_SHORT_TENOR_POWER"),
                      ({"MF_RISKPARAMS_VOL_TENOR_MIN_DAYS": "0"}, "MF_RISKPARAMS_VOL_TENOR_MIN_DAYS"),
                      ({"MF_RISKPARAMS_VOL_SKEW_SHOCK": "x"}, "MF_RISKPARAMS_VOL_SKEW_SHOCK")):
        with pytest.raises(ConfigError, match=name):
            load(RiskParamsSettings, env)


def test_a_grid_without_surface_parameters_keeps_the_vol_states_and_a_bad_one_is_rejected():
    assert codec.risk_params_from_proto(_grid_proto()).grids["BTC"].surface == VolSurfaceShock()
    v = codec.risk_params_from_proto(_grid_proto(reference_days=30, short_power=0.3, long_power=0.13, min_days=1,
                                                 min_vol_shock_up=0.5, moneyness_cap=3))
    assert v.grids["BTC"].surface == DERIBIT
    for bad in ({"reference_days": 30, "short_power": float("nan"), "min_days": 1, "moneyness_cap": 3},
                {"reference_days": 30, "short_power": -0.3, "min_days": 1, "moneyness_cap": 3},
                {"reference_days": 30, "min_days": 0, "moneyness_cap": 3}):
        with pytest.raises(Rejected) as err:
            codec.risk_params_from_proto(_grid_proto(**bad))
        assert err.value.code == "bad_risk_params" and "vol surface shock of BTC" in str(err.value)


def test_volsurface_parameters_are_validated_with_the_name():
    with pytest.raises(ValueError, match="put_wing must be finite and >= 0"):
        VolSurfaceShock(put_wing=-1.0)
    with pytest.raises(ValueError, match="moneyness_cap must be finite and > 0"):
        VolSurfaceShock(moneyness_cap=0.0)
    with pytest.raises(ValueError, match="option_rate must be in"):
        ContingencyRates(option_rate=1.5)


def test_margin_settings_give_deribit_contingency_rates_and_name_a_bad_value():
    s = load(MarginSettings, {})
    cfg = margin_engine_config(s, parse_universe(UNIVERSE, T0))
    assert cfg.contingency == ContingencyRates(0.01, 0.01)
    with pytest.raises(ConfigError, match="MF_MARGIN_BASIS_CONTINGENCY_RATE"):
        load(MarginSettings, {"MF_MARGIN_BASIS_CONTINGENCY_RATE": "2"})


@settings(max_examples=60, deadline=None)
@given(p=st.floats(-0.6, 0.6), v=st.floats(-0.5, 1.0), days=st.floats(0.01, 400.0), iv=st.floats(0.05, 3.0),
       k=st.floats(0.3, 2.0), skew=st.floats(0.0, 3.0), wing=st.floats(0.0, 2.0))
def test_vol_shocks_fall_with_the_price_never_below_zero_vol_and_floor_the_shock_up(p, v, days, iv, k, skew, wing):
    surf = VolSurfaceShock(30.0, 0.3, 0.13, 1.0, 0.5, skew, wing, 3.0)
    shocks = np.array([[p], [0.0], [min(p, 0.0) - 0.1]])
    s = instrument_vol_shocks(shocks, np.full((3, 1), v), np.array([True]), np.array([0]), [surf],
                              np.array([100.0]), np.array([100.0 * k]), np.array([days / 365]), np.array([iv]))
    out = s.vol_shock[:, 0]
    assert np.all(out >= -1.0)
    assert out[2] >= out[1] - 1e-15 and out[2] >= out[0] - 1e-15   # a deeper fall never lowers the vol
    if v > 0:
        assert np.all(iv * (1.0 + out) >= 0.5 - 1e-12)


MODEL_CASE = st.tuples(
    st.lists(st.tuples(st.integers(0, 2), st.floats(-5, 5).filter(lambda x: abs(x) > 1e-3), st.booleans()),
             min_size=1, max_size=6),
    st.floats(0.2, 1.5), st.floats(0.0, 2.0), st.floats(0.0, 0.05), st.floats(0.0, 0.5))


@settings(max_examples=40, deadline=None)
@given(case=MODEL_CASE)
def test_c_core_and_twin_agree_on_a_model_with_surface_shocks_and_contingency(case):
    if ccore is None:
        pytest.fail("the C core is not built: run `make core-build`")
    positions, iv, skew, rate, participation = case
    from marginflow.margin.domain.horizon import HorizonRules, VenueActivity
    surf = VolSurfaceShock(30.0, 0.3, 0.13, 1.0, 0.5, skew, 0.5, 3.0)
    v = risk_version()
    v = dataclasses.replace(v, grids={u: dataclasses.replace(g, vol_shocks=(-0.25, 0.0, 0.5), surface=surf)
                                      for u, g in v.grids.items()})
    cfg = EngineConfig(assets=ASSETS, bracket_floors_usd=(0.0,), bracket_rates=(0.01,), n_threads=1,
                       contingency=ContingencyRates(rate, rate), horizon=HorizonRules(participation, 10.0, 0.05, rate))
    table = instrument_table(parse_universe(UNIVERSE, T0))
    market = MarketState(table, {"BTC": 60000.0, "ETH": 3000.0}, {"BTC": iv, "ETH": iv}, 100.0, T0)
    # a thin venue: 2 to 20 contracts a day, open interest 5 to 50: the horizon and the add-on both bite
    activity = VenueActivity(np.array([2.0, 10.0, 20.0]), np.array([14.0, 70.0, 140.0]), np.array([5.0, 20.0, 50.0]))
    market.venue_activity = lambda _wall_ms: activity
    models = [build_model(table, market, cfg, impl, v, T0) for impl in (ccore, reference)]
    k = np.array([x[0] for x in positions], np.int32)
    q = np.array([x[1] for x in positions])
    iso = np.array([x[2] for x in positions], np.uint8)
    outs = [m.core.compute(np.array([0, len(k)], np.int64), k, q, iso, n_threads=1) for m in models]
    for key in ("im", "mm", "cross_im", "grid", "es", "contingency", "basis", "concentration"):
        np.testing.assert_allclose(outs[0][key], outs[1][key], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(outs[0]["isolated_im"], outs[1]["isolated_im"], rtol=1e-9, atol=1e-9)
    exs = [m.core.explain(k, q, iso) for m in models]
    for key in ("position_contingency", "position_basis", "position_grid", "position_es", "position_scale",
                "position_concentration"):
        np.testing.assert_allclose(exs[0][key], exs[1][key], rtol=1e-9, atol=1e-9)
    assert exs[0]["im"] == pytest.approx(outs[0]["im"][0], rel=1e-12)
    assert float(np.sum(exs[0]["position_contingency"][iso == 0]) + np.sum(exs[0]["position_basis"])) == \
        pytest.approx(outs[0]["contingency"][0] + outs[0]["basis"][0], rel=1e-12, abs=1e-9)


def test_explain_lists_the_vol_shock_and_contingency_of_each_position(make_engine):
    engine, _, _ = make_engine(contingency=ContingencyRates(0.01, 0.01))
    engine.apply_snapshots([book("a", [(BTC, 1.0, 60000.0, 0, 0.0), (CALL, -2.0, 3000.0, 0, 0.0)],
                                 {"USDC": 50000.0})])
    v = risk_version()
    v = dataclasses.replace(v, grids={u: dataclasses.replace(g, vol_shocks=(-0.25, 0.0, 0.5), surface=DERIBIT)
                                      for u, g in v.grids.items()})
    engine.apply_risk_params(v)
    ex = engine.explain("a")
    call = [p for p in ex.positions if p.instrument == "BTC-C-60000"][0]
    perp = [p for p in ex.positions if p.instrument == "BTC-PERP"][0]
    # the call expires 2026-04-01T08:00Z: 90 days 8 hours from T0 → f = (30/90.333)^0.13
    f = (30.0 / (90 + 8 / 24)) ** 0.13
    assert call.vol_tenor_factor == pytest.approx(f, rel=1e-9)
    assert call.vol_shock_up == pytest.approx(0.5 * f, rel=1e-9)
    assert call.vol_shock_down == pytest.approx(-0.25 * f, rel=1e-9)
    # short 2 calls on 1 BTC at index 60,000: 2 · 0.01 · 60,000 = 1,200 USD
    assert call.option_contingency_usd == pytest.approx(1200.0)
    assert (perp.vol_tenor_factor, perp.vol_shock_up, perp.option_contingency_usd) == (1.0, 0.0, 0.0)
    m = ex.margin
    assert m.cross_im_usd == pytest.approx(max(m.grid_usd, m.es_usd, m.minimum_usd) + m.liquidity_usd + 1200.0)
    msg = codec.explain_response(ex)
    item = [p for p in msg.positions if p.instrument == "BTC-C-60000"][0]
    assert item.option_contingency_usd.value == "1200.00"
    assert item.vol_shock_up == pytest.approx(0.5 * f, rel=1e-9)
    assert item.basis_contingency_usd.value == "0.00"


def test_scenarios_carry_each_underlyings_surface_in_column_order():
    v = risk_version()
    v = dataclasses.replace(v, grids={"BTC": dataclasses.replace(v.grids["BTC"], surface=DERIBIT),
                                      "ETH": v.grids["ETH"]})
    assert build_scenarios(v, ["ETH", "BTC"]).surface == (VolSurfaceShock(), DERIBIT)



def test_explain_lists_the_liquidation_horizon_and_concentration_of_each_position(make_engine):
    from marginflow.margin.domain.horizon import HorizonRules, VenueActivity

    engine, _, _ = make_engine(horizon=HorizonRules(0.1, 10.0, 0.05, 0.1))
    K = engine.instruments.n
    # BTC-PERP: ADV min(200, 1,400/7) = 200/day, OI 400; the grid's horizon is 1 day
    activity = VenueActivity(np.full(K, 200.0), np.full(K, 1400.0), np.full(K, 400.0))
    engine.market.venue_activity = lambda _wall_ms: activity
    engine.apply_snapshots([book("a", [(BTC, 100.0, 60000.0, 0, 0.0)], {"USDC": 5e6})])
    engine.apply_risk_params(risk_version())
    p = engine.explain("a").positions[0]
    # t = 100 / (0.1 · 200) = 5 days → scale √5; share 100/400 = 0.25 → 0.1 · 0.20 · 100 · 60,000 = 120,000 USD
    assert p.liquidation_horizon_days == pytest.approx(5.0)
    assert p.loss_scale == pytest.approx(5 ** 0.5)
    assert p.open_interest_share == pytest.approx(0.25)
    assert p.concentration_usd == pytest.approx(120000.0)
    item = codec.explain_response(engine.explain("a")).positions[0]
    # rounded up to the cent on the wire (the float's last bit may carry it over 120,000.00)
    assert item.concentration_usd.value in ("120000.00", "120000.01") and item.loss_scale == pytest.approx(5 ** 0.5)


def test_horizon_rules_and_settings_are_validated_with_the_name():
    from marginflow.margin.domain.horizon import HorizonRules

    with pytest.raises(ValueError, match="participation must be in"):
        HorizonRules(participation=1.5)
    with pytest.raises(ValueError, match="max_horizon_multiple"):
        HorizonRules(max_horizon_multiple=0.5)
    with pytest.raises(ConfigError, match="MF_MARGIN_MAX_HORIZON_MULTIPLE"):
        load(MarginSettings, {"MF_MARGIN_MAX_HORIZON_MULTIPLE": "0.5"})
    with pytest.raises(ConfigError, match="MF_MARGIN_LIQUIDATION_PARTICIPATION"):
        load(MarginSettings, {"MF_MARGIN_LIQUIDATION_PARTICIPATION": "2"})
    cfg = margin_engine_config(load(MarginSettings, {}), parse_universe(UNIVERSE, T0))
    assert cfg.horizon == HorizonRules(0.0, 10.0, 0.05, 0.0)


HOUR = 3_600_000


def test_the_volume_window_counts_24_hours_and_7_days_as_daily_rates():
    from marginflow.margin.domain.horizon import VolumeWindow

    w = VolumeWindow(2)
    t0 = T0
    # instrument 0: 70 contracts a day for 7 days, then 10 in the last day; instrument 1 never trades
    for day in range(7):
        assert w.add(0, 70.0 if day < 6 else 10.0, t0 + day * 24 * HOUR + 12 * HOUR)
    now = t0 + 7 * 24 * HOUR + 11 * HOUR + HOUR // 2     # 168 hourly buckets since the first fill's
    a = w.activity(now)
    assert a.volume_24h[0] == pytest.approx(10.0)           # only the last day's fill is within 24 h
    assert a.volume_7d[0] == pytest.approx(6 * 70.0 + 10.0)
    assert a.adv()[0] == pytest.approx(min(10.0, 430.0 / 7))  # the thinner window: 10/day
    assert np.isnan(a.volume_24h[1]) and np.isnan(a.adv()[1])  # never traded: not known, scale 1
    # a fill older than 7 days behind the newest is ignored; a sell counts by its size
    assert not w.add(0, 1000.0, now - 8 * 24 * HOUR)
    assert w.add(0, -5.0, now - HOUR // 2)
    assert w.activity(now).volume_24h[0] == pytest.approx(15.0)


def test_a_young_venue_is_read_at_its_rate_not_as_a_slow_week():
    from marginflow.margin.domain.horizon import VolumeWindow

    w = VolumeWindow(1)
    # 12 hourly buckets of history, 60 contracts: 120/day over 24 h, 7 d at the same rate: 840
    w.add(0, 60.0, T0)
    a = w.activity(T0 + 11 * HOUR + HOUR // 2)
    assert a.volume_24h[0] == pytest.approx(120.0)
    assert a.volume_7d[0] == pytest.approx(840.0)
    assert a.adv()[0] == pytest.approx(120.0)


def test_fills_are_decoded_for_the_volume_and_bad_ones_rejected(table):
    from marginflow.api.account.v1 import account_pb2

    f = account_pb2.Fill(fill_id="f1", account_id="a", instrument="BTC-PERP", side=account_pb2.SIDE_SELL)
    f.size.value = "2.5"
    f.meta.event_time_ms = T0
    assert codec.fill_volume_from_proto(f, table) == (0, 2.5, T0)
    for change, reason in ((lambda m: setattr(m, "instrument", "DOGE-PERP"), "unknown_instrument"),
                           (lambda m: setattr(m.size, "value", "-1"), "negative_value"),
                           (lambda m: setattr(m.size, "value", "x"), "bad_decimal"),
                           (lambda m: m.meta.ClearField("event_time_ms"), "missing_field")):
        bad = account_pb2.Fill()
        bad.CopyFrom(f)
        change(bad)
        with pytest.raises(Rejected) as err:
            codec.fill_volume_from_proto(bad, table)
        assert err.value.code == reason


def test_the_router_feeds_fills_to_the_volume_window_and_dead_letters_bad_ones(make_engine, table):
    from marginflow.api.account.v1 import account_pb2
    from marginflow.margin.application.routing import Router

    engine, _, _ = make_engine()
    rejected = []
    router = Router(engine, marks_topic="m", params_topic="p", decode_mark=None, decode_params=None,
                    decode_book=None, reject=lambda rec, exc: rejected.append(exc.code), fills_topic="f",
                    decode_fill=lambda m: codec.fill_volume_from_proto(m, table))

    class Rec:
        def __init__(self, value):
            self.topic, self.partition, self.key, self.value = "f", 0, "a", value

    good = account_pb2.Fill(fill_id="f1", account_id="a", instrument="BTC-PERP")
    good.size.value = "3"
    good.meta.event_time_ms = T0
    bad = account_pb2.Fill(fill_id="f2", account_id="a", instrument="NOPE")
    bad.size.value = "1"
    bad.meta.event_time_ms = T0
    marks, params = router.marks_and_params([Rec(good), Rec(bad)])
    assert (marks, params, rejected) == ([], [], ["unknown_instrument"])
    assert engine.market.volume.buckets.sum(axis=0).tolist() == [3.0, 0.0, 0.0]


def test_open_interest_follows_each_partitions_newest_contribution():
    from decimal import Decimal as D

    from marginflow.margin.domain.horizon import OpenInterestBook

    oi = OpenInterestBook(3)
    # partition 0 holds long 10 of instrument 0 and short 4 of instrument 1; partition 1 short 6 of instrument 0
    assert oi.apply(0, 0, 5, D("10"), D("0")) and oi.apply(1, 0, 5, D("0"), D("4"))
    assert oi.apply(0, 1, 3, D("0"), D("6"))
    # instrument 0: long 10, short 6 → 10; instrument 1: short 4 → 4; instrument 2: nothing held
    assert oi.open_interest()[:2].tolist() == [10.0, 4.0] and np.isnan(oi.open_interest()[2])
    assert oi.apply(0, 0, 9, D("3"), D("0"))                   # replaces partition 0's share at offset 5
    assert oi.apply(1, 0, 9, D("0"), D("0"))                   # every short of instrument 1 closed
    assert oi.open_interest()[0] == 6.0 and np.isnan(oi.open_interest()[1])
    assert not oi.apply(0, 0, 8, D("100"), D("0"))             # an older offset (a previous owner's) is ignored
    assert oi.open_interest()[0] == 6.0
    assert oi.sides(0) == (D("3"), D("6"))
    assert oi.remove(0, 1) and not oi.remove(0, 1)              # a tombstone retires partition 1's share
    assert oi.open_interest()[0] == 3.0


def test_open_interest_sums_stay_exact_in_decimal():
    from decimal import Decimal as D

    from marginflow.margin.domain.horizon import OpenInterestBook

    oi = OpenInterestBook(1)
    # 0.1 + 0.2 is 0.30000000000000004 in floats; as published (decimal strings) the sum is exact
    assert oi.apply(0, 0, 1, D("0.1"), D("0")) and oi.apply(0, 1, 1, D("0.2"), D("0"))
    assert oi.sides(0) == (D("0.3"), D("0")) and oi.open_interest()[0] == 0.3
    assert oi.apply(0, 0, 1, D("0.1"), D("0.3"))               # the same offset again: the later record replaces
    assert oi.sides(0) == (D("0.3"), D("0.3"))


def _naive_charges(table, books, option_rate, basis_rate, index):
    """Per account, in plain Python: the contingency formulas as written in domain/contingency.py."""
    out = []
    for k, q, iso in books:
        strikes, lin = {}, {}
        iso_total = 0.0
        for kk, qq, ii in zip(k, q, iso):
            units = qq * table.contract_size[kk]
            if table.is_option(kk):
                if ii:
                    iso_total += option_rate * max(-units, 0.0) * index
                else:
                    key = (int(table.expiry_ms[kk]), float(table.strike[kk]))
                    strikes[key] = strikes.get(key, 0.0) + units
            elif not ii:
                lin[int(kk)] = lin.get(int(kk), 0.0) + units
        opt = sum(option_rate * max(-net, 0.0) * index for net in strikes.values())
        long_u = sum(max(v, 0.0) for v in lin.values())
        short_u = sum(max(-v, 0.0) for v in lin.values())
        out.append((opt, basis_rate * min(long_u, short_u) * index, iso_total))
    return out


CHAIN = parse_universe("""
[[underlying]]
symbol = "BTC"
index_price_usd = 60000.0
annual_vol = 0.8
[[instrument]]
symbol = "BTC-PERP"
kind = "perpetual"
underlying = "BTC"
contract_size = 1.0
tick_size_usd = 0.5
lot_size = 0.001
[[future_series]]
underlying = "BTC"
expiries = ["2026-02-27T08:00:00Z", "2026-03-27T08:00:00Z"]
contract_size = 1.0
tick_size_usd = 0.5
lot_size = 0.001
[[option_chain]]
underlying = "BTC"
expiries = ["2026-02-27T08:00:00Z", "2026-03-27T08:00:00Z"]
moneyness = [0.9, 1.0]
strike_step_usd = 1000.0
contract_size = 0.1
tick_size_usd = 0.5
lot_size = 0.01
""", T0)


@settings(max_examples=60, deadline=None)
@given(books=st.lists(st.lists(st.tuples(st.integers(0, 10), st.sampled_from([-3.0, -1.0, -0.5, 0.0, 0.5, 2.0]),
                                         st.booleans()), max_size=8), min_size=1, max_size=6),
       rates=st.sampled_from([(0.01, 0.01), (0.02, 0.0), (0.0, 0.005)]))
def test_vectorised_contingency_equals_the_formulas_account_by_account(books, rates):
    from marginflow.margin.domain.contingency import ContingencyTable

    table = instrument_table(CHAIN)
    books = [[(k % table.n, q, i) for k, q, i in b] for b in books]
    ct = ContingencyTable(table.kind, table.underlying, table.strike, table.expiry_ms, table.contract_size,
                          np.array([60000.0]), ContingencyRates(*rates))
    indptr = np.cumsum([0] + [len(b) for b in books]).astype(np.int64)
    flat = [p for b in books for p in b]
    k = np.array([p[0] for p in flat], np.int32)
    q = np.array([p[1] for p in flat], np.float64)
    iso = np.array([p[2] for p in flat], np.uint8)
    # the price-free netting, priced by this table and by a later model's (another index price)
    ct2 = ContingencyTable(table.kind, table.underlying, table.strike, table.expiry_ms, table.contract_size,
                           np.array([45000.0]), ContingencyRates(*rates))
    assert ct2.same_structure(ct)
    netting = ct.netting(indptr, k, q, iso)
    for table_, index in ((ct, 60000.0), (ct2, 45000.0)):
        c = table_.charges_of(netting)
        want = _naive_charges(table, [(k[a:b], q[a:b], iso[a:b]) for a, b in zip(indptr[:-1], indptr[1:])],
                              rates[0], rates[1], index)
        np.testing.assert_allclose(c.cross_option, [w[0] for w in want], rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(c.cross_basis, [w[1] for w in want], rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(c.isolated_per_account, [w[2] for w in want], rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(c.isolated, table_.charges(indptr, k, q, iso, shares=False).isolated,
                                   rtol=1e-12, atol=1e-9)
    for shares in (True, False):
        c = ct.charges(indptr, k, q, iso, shares=shares)
        want = _naive_charges(table, [(k[a:b], q[a:b], iso[a:b]) for a, b in zip(indptr[:-1], indptr[1:])],
                              rates[0], rates[1], 60000.0)
        np.testing.assert_allclose(c.cross_option, [w[0] for w in want], rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(c.cross_basis, [w[1] for w in want], rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(c.isolated_per_account, [w[2] for w in want], rtol=1e-12, atol=1e-9)
        if shares:
            owner = np.repeat(np.arange(len(books)), np.diff(indptr))
            got_option = np.bincount(owner, weights=c.position_option, minlength=len(books))
            np.testing.assert_allclose(got_option, c.cross_option + c.isolated_per_account, rtol=1e-12, atol=1e-9)
            np.testing.assert_allclose(np.bincount(owner, weights=c.position_basis, minlength=len(books)),
                                       c.cross_basis, rtol=1e-12, atol=1e-9)


def test_a_netting_serves_only_tables_of_the_same_instruments_and_rates():
    from marginflow.margin.domain.contingency import ContingencyTable

    table = instrument_table(CHAIN)
    make = lambda rates, index=60000.0: ContingencyTable(  # noqa: E731
        table.kind, table.underlying, table.strike, table.expiry_ms, table.contract_size, np.array([index]),
        ContingencyRates(*rates))
    assert make((0.01, 0.01)).same_structure(make((0.01, 0.01), 50000.0))
    assert not make((0.01, 0.01)).same_structure(make((0.01, 0.0)))
    resized = ContingencyTable(table.kind, table.underlying, table.strike, table.expiry_ms,
                               table.contract_size * 2.0, np.array([60000.0]), ContingencyRates(0.01, 0.01))
    assert not make((0.01, 0.01)).same_structure(resized)     # units per contract enter the netting


def test_the_full_pass_nets_a_book_again_only_after_it_changed():
    """The evaluation keeps the netting of its flat book while the book object and its generation stand;
    an in-place rewrite (FlatBook.try_update) or a rebuilt book nets again."""
    from marginflow.margin.application.evaluation import Evaluation
    from marginflow.margin.domain.book import AccountBook, FlatBook
    from marginflow.margin.domain.contingency import ContingencyTable

    table = instrument_table(CHAIN)
    ct = ContingencyTable(table.kind, table.underlying, table.strike, table.expiry_ms, table.contract_size,
                          np.array([60000.0]), ContingencyRates(0.01, 0.01))

    class Charged:
        def __init__(self):
            self.table, self.calls = ct, 0

        def netting(self, *arrays):
            self.calls += 1
            return ct.netting(*arrays)

    def acct(name, q):
        return AccountBook(name, 1, np.array([0, 1], np.int32), np.array([q, -q]), np.array([60000.0, 60000.0]),
                           np.zeros(2, np.uint8), np.zeros(2), np.zeros(len(ASSETS)))

    ev = Evaluation.__new__(Evaluation)
    ev._netting = None
    charged = Charged()
    flat = FlatBook.build([acct("a", 1.0), acct("b", 2.0)])
    first = ev._book_netting(charged, flat)
    assert ev._book_netting(charged, flat) is first and charged.calls == 1
    assert flat.try_update(0, acct("a", 3.0))
    again = ev._book_netting(charged, flat)
    assert charged.calls == 2 and again is not first
    np.testing.assert_allclose(ct.charges_of(again).cross, ct.charges(flat.indptr, flat.instrument, flat.size,
                                                                       flat.isolated, shares=False).cross)
    rebuilt = FlatBook.build([acct("a", 3.0), acct("b", 2.0)])
    ev._book_netting(charged, rebuilt)
    assert charged.calls == 3
