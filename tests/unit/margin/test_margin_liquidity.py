"""The liquidity add-on through the depth curve: the vectorised table against a per-position
reading of the formula, its edge cases, the market keeping curves, and bad curves refused at decode."""

from __future__ import annotations

import math

import numpy as np
import pytest

from marginflow.api.marketdata.v1 import marketdata_pb2
from marginflow.margin.adapters.codec import mark_from_proto
from marginflow.margin.domain.liquidity import DepthTable, LiquidityRules
from marginflow.margin.domain.market import MarketState, MarkUpdate
from marginflow.shared.depthcurve import DepthCurve
from marginflow.shared.errors import Rejected

from margin_unit_helpers import T0


def one(distance, sizes, a, half_bps=1.0, penalty=4.0):
    """The formula read literally for one position (a > 0 long into ``sizes``), in bps."""
    pts = [(0.0, 0.0)] + list(zip(sizes, distance))
    last_c, last_d = sizes[-1], distance[-1]
    if a > last_c:
        d = last_d * (1 + penalty * (1 - last_c / a))
    else:
        i = next(i for i in range(1, len(pts)) if pts[i][0] >= a)
        (c0, d0), (c1, d1) = pts[i - 1], pts[i]
        d = d0 + (d1 - d0) * (a - c0) / (c1 - c0)
    return max(half_bps, d)


def test_many_positions_at_once_match_the_formula_per_position():
    rng = np.random.default_rng(3)
    curves = []
    for _ in range(6):
        dist = tuple(np.cumsum(rng.uniform(1, 50, 5)).tolist())
        bid = tuple(np.cumsum(rng.uniform(0.5, 20, 5)).tolist())
        ask = tuple(np.cumsum(rng.uniform(0.5, 20, 5)).tolist())
        curves.append(DepthCurve(dist, bid, ask))
    curves.append(None)
    half = np.full(7, 2e-4)
    mv = rng.uniform(10, 100, 7)
    table = DepthTable(curves, half, mv, LiquidityRules(3.0))
    k = rng.integers(0, 7, 400)
    q = rng.uniform(-150, 150, 400)
    got = table.positions(k, q)
    for j in range(400):
        c = curves[k[j]]
        if c is None:
            assert got.addon[j] == 0.0 and not got.from_curve[j]
            continue
        sizes = c.bid_contracts if q[j] > 0 else c.ask_contracts
        bps = one(c.distance_bps, sizes, abs(q[j]), 2.0, 3.0)
        assert got.distance_bps[j] == pytest.approx(bps, rel=1e-9)
        assert got.addon[j] == pytest.approx(bps * 1e-4 * abs(q[j]) * mv[k[j]], rel=1e-9)
        assert got.covered_share[j] == pytest.approx(min(1.0, sizes[-1] / abs(q[j])), rel=1e-12)


def test_empty_book_flat_buckets_and_zero_sizes():
    curves = [DepthCurve((5.0, 10.0, 25.0), (0.0, 0.0, 0.0), (0.0, 4.0, 4.0)),
              DepthCurve((5.0, 10.0), (2.0, 6.0), (1.0, 1.0))]
    table = DepthTable(curves, np.zeros(2), np.array([1.0, 1.0]), LiquidityRules(4.0))
    got = table.positions(np.array([0, 0, 0, 0, 1, 1]), np.array([3.0, -2.0, -4.0, 0.0, -1.0, -2.0]))
    # an empty bid side: (1 + 4) × 25 bp; asks: nothing within 5 bp, 4 within 10: 2 at 5 + 5·2/4 = 7.5 bp
    assert got.distance_bps[:3].tolist() == pytest.approx([125.0, 7.5, 10.0])
    assert got.covered_share[0] == 0.0
    assert got.addon[3] == 0.0 and got.distance_bps[3] == 0.0 and got.covered_share[3] == 1.0
    # asks flat at 1 from 5 to 10 bp: 1 contract at 5 bp; 2 beyond the curve: 10 · (1 + 4 · 0.5) = 30 bp
    assert got.distance_bps[4:].tolist() == pytest.approx([5.0, 30.0])
    assert not DepthTable([None, None], np.zeros(2), np.ones(2)).active
    with pytest.raises(ValueError, match="uncovered_penalty"):
        LiquidityRules(-1.0)
    with pytest.raises(ValueError, match="uncovered_penalty"):
        LiquidityRules(math.inf)


def test_the_market_keeps_the_newest_curve(table):
    market = MarketState(table, {"BTC": 60000.0}, {"BTC": 0.8}, 100.0, T0)
    curve = DepthCurve((5.0,), (1.0,), (2.0,))
    market.apply([MarkUpdate(0, 0, 60000.0, 60000.0, 0.0, 1e-4, 10.0, T0, curve)])
    market.apply([MarkUpdate(0, 0, 60000.0, 60010.0, 0.0, 1e-4, 10.0, T0 + 1)])     # none sent: kept
    assert market.depth_curve[0] == curve
    newer = DepthCurve((5.0,), (3.0,), (4.0,))
    market.apply([MarkUpdate(0, 0, 60000.0, 60010.0, 0.0, 1e-4, 10.0, T0 + 2, newer)])
    assert market.depth_curve[0] == newer


@pytest.mark.parametrize("bid, code", [((1.0, math.nan), "depth_curve_non_finite"),
                                       ((1.0, -2.0), "depth_curve_negative"),
                                       ((3.0, 2.0), "depth_curve_non_monotone"),
                                       ((3.0,), "depth_curve_shape")])
def test_a_mark_with_a_bad_curve_is_rejected_with_its_reason(table, bid, code):
    sym = table.symbols[0]
    m = marketdata_pb2.Mark(instrument=sym, underlying=table.underlyings[table.underlying[0]],
                            index_price=60000.0, mark_price=60000.0, half_spread_frac=1e-4, depth_contracts=10.0)
    m.meta.event_time_ms = T0
    m.depth_curve.distance_bps.extend([5.0, 10.0])
    m.depth_curve.ask_contracts.extend([1.0, 2.0])
    m.depth_curve.bid_contracts.extend([1.0, 2.0])
    good = mark_from_proto(m, table, sym)
    assert good.depth_curve == DepthCurve((5.0, 10.0), (1.0, 2.0), (1.0, 2.0))
    del m.depth_curve.bid_contracts[:]
    m.depth_curve.bid_contracts.extend(bid)
    with pytest.raises(Rejected) as err:
        mark_from_proto(m, table, sym)
    assert err.value.code == code


def test_a_stressed_simulated_book_raises_the_add_on_from_marketdata_to_margin():
    # The simulator's books → marketdata's marks (curve on the wire) → margin's decode → the add-on of the
    # same BTC-PERP position: in stress the book is thinner (×0.3) and wider (×3), the add-on higher.
    from marginflow.marketdata.adapters.kafka_io import mark_to_proto
    from marginflow.marketdata.domain.marks import MarkConfig, MarkEngine
    from marginflow.marketdata.domain.simulator import MarketSimulator, SimConfig
    from marginflow.marketdata.domain.ticks import AcceptedTick
    from marginflow.margin.service import instrument_table
    from marginflow.shared.universe import load_universe

    universe = load_universe(None, T0)
    table = instrument_table(universe)
    k = table.index["BTC-PERP"]
    cfg = SimConfig(seed=4, p_calm_to_stress_per_day=0.0, p_stress_to_calm_per_day=0.0)
    addons = {}
    for stressed in (False, True):
        sim = MarketSimulator(universe, cfg, T0)
        sim.stress = stressed
        marks = MarkEngine(universe, MarkConfig(interval_ms=0))
        ticks = sim.next_block(3)
        out = marks.update([AcceptedTick(t, i + 1) for i, t in enumerate(ticks)])
        (mark,) = [m for m in out if m.instrument == "BTC-PERP"][-1:]
        update = mark_from_proto(mark_to_proto(mark, T0, "marketdata"), table, "BTC-PERP")
        assert update.depth_curve is not None and update.depth_curve == mark.depth_curve
        market = MarketState(table, {"BTC": mark.index_price}, {"BTC": 0.5}, 100.0, T0)
        market.apply([update])
        depth = DepthTable(market.depth_curve, market.half_spread, market.mark_price * table.contract_size)
        size = 0.5 * update.depth_curve.bid_contracts[-1]         # half of what the calm book holds in 500 bp
        if stressed:
            size = addons[False][1]
        addons[stressed] = (float(depth.positions(np.array([k]), np.array([size])).addon[0]), size)
    assert addons[True][0] > 2.0 * addons[False][0] > 0.0
