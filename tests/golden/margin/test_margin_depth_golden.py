"""Worked examples of the liquidity add-on through the depth curve, with their arithmetic.

Market: BTC-PERP marked at 60,000 USD, contracts of 0.001 BTC (mark value v = 60 USD per contract),
half-spread 1 bp. The book's depth curve (contracts within each distance of the mid):

    distance bps    5    10    25    50   100   200   500
    bids           10    30    70   150   300   500   800     (a long sells into these)
    asks            8    20    60   100   200   400   600     (a short buys these)

add-on = max(h, D(a)) · 10⁻⁴ · a · v, D(a) interpolated through the curve, beyond its end
D = 500 · (1 + penalty · s), s = 1 − C_last / a, penalty 4. Model-level examples run on both cores.
"""

from __future__ import annotations

import numpy as np
import pytest

from marginflow.core import ccore, reference
from marginflow.margin.application import EngineConfig
from marginflow.margin.application.models import build_model
from marginflow.margin.domain.liquidity import DepthTable, LiquidityRules
from marginflow.margin.domain.market import MarketState, MarkUpdate
from marginflow.margin.domain.scenarios import GridSpec, RiskVersion
from marginflow.margin.service import instrument_table
from marginflow.shared.depthcurve import DepthCurve
from marginflow.shared.universe import parse_universe

T0 = 1_767_225_600_000     # 2026-01-01T00:00Z
UNIVERSE = """
[[underlying]]
symbol = "BTC"
index_price_usd = 60000.0
annual_vol = 0.8

[[instrument]]
symbol = "BTC-PERP"
kind = "perpetual"
underlying = "BTC"
contract_size = 0.001
tick_size_usd = 0.5
lot_size = 1.0
"""
CURVE = DepthCurve((5.0, 10.0, 25.0, 50.0, 100.0, 200.0, 500.0),
                   (10.0, 30.0, 70.0, 150.0, 300.0, 500.0, 800.0),
                   (8.0, 20.0, 60.0, 100.0, 200.0, 400.0, 600.0))
MARK_VALUE = 60.0          # USD per contract: 60,000 × 0.001
HALF_SPREAD = 0.0001       # 1 bp


def addon(size: float) -> tuple[float, float, float]:
    t = DepthTable([CURVE], np.array([HALF_SPREAD]), np.array([MARK_VALUE]), LiquidityRules(4.0))
    p = t.positions(np.array([0]), np.array([size]))
    return float(p.addon[0]), float(p.distance_bps[0]), float(p.covered_share[0])


def test_a_long_of_50_eats_through_three_buckets():
    # 50 contracts sold into the bids: the 5 bp bucket holds 10, the 10 bp one 30 (cumulative), the 25 bp
    # one 70 ≥ 50: the third bucket covers it. D = 10 + (25 − 10) · (50 − 30) / (70 − 30) = 10 + 15 · 0.5
    # = 17.5 bp (≥ the 1 bp half-spread). Notional 50 · 60 = 3,000 USD; add-on = 17.5 · 10⁻⁴ · 3,000 = 5.25 USD.
    usd, bps, covered = addon(50.0)
    assert bps == pytest.approx(17.5, rel=1e-12)
    assert usd == pytest.approx(5.25, rel=1e-12)
    assert covered == 1.0


def test_a_short_of_50_walks_the_thinner_asks():
    # bought from the asks: 20 within 10 bp, 60 within 25 bp. D = 10 + 15 · (50 − 20) / (60 − 20) = 10 + 11.25
    # = 21.25 bp; add-on = 21.25 · 10⁻⁴ · 3,000 = 6.375 USD.
    usd, bps, _ = addon(-50.0)
    assert bps == pytest.approx(21.25, rel=1e-12)
    assert usd == pytest.approx(6.375, rel=1e-12)


def test_a_size_at_a_bucket_edge_is_covered_at_that_distance():
    # 70 = C(25 bp) exactly: D = 25 bp; add-on = 25 · 10⁻⁴ · 70 · 60 = 10.5 USD.
    usd, bps, _ = addon(70.0)
    assert bps == pytest.approx(25.0, rel=1e-12) and usd == pytest.approx(10.5, rel=1e-12)


def test_a_small_size_pays_half_the_spread():
    # 1 contract: D = 5 · 1 / 10 = 0.5 bp < h = 1 bp, so 1 bp; add-on = 10⁻⁴ · 60 = 0.006 USD.
    usd, bps, _ = addon(1.0)
    assert bps == pytest.approx(1.0, rel=1e-12) and usd == pytest.approx(0.006, rel=1e-12)


def test_a_size_beyond_the_curve_pays_the_uncovered_share_penalty():
    # 1,200 contracts against 800 within 500 bp: s = 1 − 800/1200 = 1/3; D = 500 · (1 + 4/3) = 1,166.67 bp;
    # add-on = 0.116667 · 1,200 · 60 = 8,400 USD; the curve covers 2/3 of the size.
    usd, bps, covered = addon(1200.0)
    assert bps == pytest.approx(500.0 * (1 + 4.0 / 3.0), rel=1e-12)
    assert usd == pytest.approx(8400.0, rel=1e-12)
    assert covered == pytest.approx(2.0 / 3.0, rel=1e-12)


@pytest.fixture(params=["c", "python"], ids=lambda n: f"impl={n}")
def impl(request):
    module = {"c": ccore, "python": reference}[request.param]
    if module is None:
        pytest.fail("the C core is not built: run `make core-build`")
    return module


def model(core, curve: DepthCurve | None):
    table = instrument_table(parse_universe(UNIVERSE, T0))
    market = MarketState(table, {"BTC": 60000.0}, {"BTC": 0.8}, 100.0, T0)
    market.apply([MarkUpdate(0, 0, 60000.0, 60000.0, 0.0, HALF_SPREAD, 1000.0, T0, curve)])
    grid = GridSpec("BTC", (-0.1, 0.0, 0.1), (0.0,), (), (), (), 86_400.0)
    hist = np.linspace(-0.08, 0.08, 40)[:, None]
    version = RiskVersion(1, T0, T0, {"BTC": 0.8}, {"BTC": 60000.0}, {"BTC": grid}, ("BTC",), hist, 0.99)
    cfg = EngineConfig(assets=("USDC",), settlement_asset="USDC", bracket_floors_usd=(0.0,), bracket_rates=(0.0,),
                       n_threads=1)
    return build_model(table, market, cfg, core, version, T0).core


def test_the_curve_add_on_replaces_the_spread_and_depth_one_in_the_im(impl):
    # Without a curve the core charges v · h · (a + max(0, a − D)² / D) = 60 · 10⁻⁴ · 50 = 0.30 USD (depth
    # D = 1,000 covers it); with the curve 5.25 USD instead: the IM rises by 5.25 − 0.30 = 4.95 USD.
    k, q = np.array([0], dtype=np.int32), np.array([50.0])
    cross, iso = np.array([0], dtype=np.uint8), np.array([1], dtype=np.uint8)
    plain, deep = model(impl, None), model(impl, CURVE)
    ex_plain, ex_deep = plain.explain(k, q, cross), deep.explain(k, q, cross)
    assert ex_plain["liquidity"] == pytest.approx(0.30, rel=1e-9)
    assert ex_deep["liquidity"] == pytest.approx(5.25, rel=1e-9)
    assert ex_deep["im"] - ex_plain["im"] == pytest.approx(4.95, rel=1e-9)
    assert ex_deep["position_liquidity"][0] == pytest.approx(5.25, rel=1e-9)
    assert ex_deep["position_liquidity_distance_bps"][0] == pytest.approx(17.5, rel=1e-12)
    assert bool(ex_deep["position_depth_curve"][0]) and not bool(ex_plain["position_depth_curve"][0])
    assert ex_deep["position_half_spread_bps"][0] == pytest.approx(1.0, rel=1e-12)
    # compute (the full recalculation) agrees with explain, cross and isolated
    indptr = np.array([0, 1], dtype=np.int64)
    full = deep.compute(indptr, k, q, cross, n_threads=1)
    assert full["im"][0] == pytest.approx(ex_deep["im"], rel=1e-12)
    assert full["liquidity"][0] == pytest.approx(5.25, rel=1e-9)
    alone = deep.compute(indptr, k, q, iso, n_threads=1)
    alone_plain = plain.compute(indptr, k, q, iso, n_threads=1)
    assert alone["im"][0] - alone_plain["im"][0] == pytest.approx(4.95, rel=1e-9)
    assert deep.explain(k, q, iso)["im"] == pytest.approx(alone["im"][0], rel=1e-12)
    assert deep.what_if(k, q, cross, np.array([0], dtype=np.int32), np.array([0.0]))["im"] == pytest.approx(
        ex_deep["im"], rel=1e-12)
