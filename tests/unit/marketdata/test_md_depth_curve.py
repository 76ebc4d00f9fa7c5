"""The depth curve: built from a book's levels, validated, published on the marks, and thinner and
wider in the simulator's stress regime."""

from __future__ import annotations

import math

import pytest

from marginflow.api.marketdata.v1 import marketdata_pb2
from marginflow.marketdata.adapters.kafka_io import mark_from_proto, mark_to_proto
from marginflow.marketdata.domain.marks import MarkConfig, MarkEngine
from marginflow.marketdata.domain.simulator import MarketSimulator, SimConfig
from marginflow.marketdata.domain.ticks import AcceptedTick, RawTick
from marginflow.marketdata.settings import depth_buckets
from marginflow.shared.depthcurve import (DEFAULT_BUCKETS_BPS, check_buckets, curve_from_levels, curve_of_mark,
                                          curve_problem)
from marginflow.shared.errors import Rejected


def test_curve_counts_each_level_within_each_distance():
    # mid 100: a bid at 99.95 is 5 bps away, 99.9 10 bps, 99.0 100 bps; asks at 100.05 (5), 100.2 (20),
    # 103 (300 bps, beyond 200).
    curve = curve_from_levels(100.0, [(99.95, 1.0), (99.0, 4.0), (99.9, 2.0)], [(100.05, 3.0), (100.2, 5.0), (103.0, 7.0)],
                              (5.0, 10.0, 25.0, 200.0))
    assert curve.distance_bps == (5.0, 10.0, 25.0, 200.0)
    assert curve.bid_contracts == (1.0, 3.0, 3.0, 7.0)
    assert curve.ask_contracts == (3.0, 3.0, 8.0, 8.0)
    assert curve.total() == 15.0
    assert curve_from_levels(0.0, [(1.0, 1.0)], [], DEFAULT_BUCKETS_BPS) is None
    assert curve_from_levels(100.0, [], [], DEFAULT_BUCKETS_BPS) is None


@pytest.mark.parametrize("distance, bid, ask, code", [
    ((5.0, 10.0), (1.0, 2.0), (1.0,), "depth_curve_shape"),
    ((), (), (), "depth_curve_shape"),
    ((5.0, 10.0), (1.0, math.nan), (1.0, 2.0), "depth_curve_non_finite"),
    ((5.0, math.inf), (1.0, 2.0), (1.0, 2.0), "depth_curve_non_finite"),
    ((5.0, 10.0), (1.0, 2.0), (-1.0, 2.0), "depth_curve_negative"),
    ((0.0, 10.0), (1.0, 2.0), (1.0, 2.0), "depth_curve_negative"),
    ((10.0, 5.0), (1.0, 2.0), (1.0, 2.0), "depth_curve_non_monotone"),
    ((5.0, 10.0), (3.0, 2.0), (1.0, 2.0), "depth_curve_non_monotone"),
])
def test_broken_curves_are_named(distance, bid, ask, code):
    problem = curve_problem(distance, bid, ask)
    assert problem is not None and problem[0] == code
    assert curve_problem((5.0, 10.0), (1.0, 1.0), (0.0, 2.0)) is None


def test_bucket_setting_is_validated():
    assert depth_buckets("5, 10,25") == (5.0, 10.0, 25.0)
    for bad in ("10,5", "0,5", "5,5", "", "5,nan"):
        with pytest.raises(ValueError):
            depth_buckets(bad)
    with pytest.raises(ValueError):
        check_buckets([1.0] * 65)
    with pytest.raises(ValueError):
        MarkConfig(depth_buckets_bps=(10.0, 5.0))


def test_marks_carry_the_curve_through_the_proto(universe):
    eng = MarkEngine(universe, MarkConfig(interval_ms=0, depth_buckets_bps=(5.0, 50.0)))
    eng.update([AcceptedTick(RawTick(1000, "BTC", 100.0), 1)])
    tick = RawTick(1000, "BTC-PERP", 100.0, 99.99, 100.01, 1.0, 1.0,
                   bids=((99.99, 1.0), (99.6, 2.0)), asks=((100.01, 1.5), (100.4, 4.0), (101.0, 9.0)))
    (mark,) = [m for m in eng.update([AcceptedTick(tick, 1)]) if m.instrument == "BTC-PERP"]
    assert mark.depth_curve.bid_contracts == (1.0, 3.0) and mark.depth_curve.ask_contracts == (1.5, 5.5)
    msg = mark_to_proto(mark, 2000, "marketdata")
    assert list(msg.depth_curve.distance_bps) == [5.0, 50.0]
    assert mark_from_proto(marketdata_pb2.Mark.FromString(msg.SerializeToString())) == mark
    # An index mark has no book: no curve on the wire.
    index = eng.latest["index:BTC"]
    assert index.depth_curve is None and not mark_to_proto(index, 2000, "marketdata").HasField("depth_curve")
    # A mark restored after a restart keeps its curve until the next book replaces it.
    again = MarkEngine(universe, MarkConfig(interval_ms=0, depth_buckets_bps=(5.0, 50.0)))
    again.restore(mark)
    assert again._curve(again._state["BTC-PERP"]) == mark.depth_curve
    msg.depth_curve.bid_contracts[1] = 0.5
    with pytest.raises(Rejected) as err:
        curve_of_mark(msg)
    assert err.value.code == "depth_curve_non_monotone"


def test_deep_book_reaches_the_far_buckets_and_thins_and_widens_in_stress(universe):
    # The same seed draws the same sizes whatever the regime: the stressed book quotes 0.3 of each size
    # at 3× the distance. BTC quotes a 1 bp half-spread, so calm levels lie 1..5 bps then 10..640 bps away.
    cfg = SimConfig(seed=9, p_calm_to_stress_per_day=0.0, p_stress_to_calm_per_day=0.0)
    calm, stressed = MarketSimulator(universe, cfg, 0), MarketSimulator(universe, cfg, 0)
    stressed.stress = True
    a, b = calm.next_block(5), stressed.next_block(5)
    pairs = [(x, y) for x, y in zip(a, b) if x.instrument == "BTC-PERP"]
    assert pairs
    for x, y in pairs:
        assert len(x.bids) == len(x.asks) == 12
        cx = curve_from_levels(x.price, x.bids, x.asks, DEFAULT_BUCKETS_BPS)
        cy = curve_from_levels(y.price, y.bids, y.asks, DEFAULT_BUCKETS_BPS)
        size = x.bids[0][1]
        # calm bids within 5 bps: the five near levels, s·(1 + 1.3 + 1.6 + 1.9 + 2.2) = 8 s
        assert cx.bid_contracts[0] == pytest.approx(8.0 * size, rel=1e-9)
        # within 500 bps: the five near ones and those at 10, 20, 40, 80, 160, 320 bps (levels 5..10)
        assert cx.bid_contracts[-1] == pytest.approx(size * sum(1 + 0.3 * i for i in range(11)), rel=1e-9)
        # stressed: 3 bps half-spread, levels at 3, 6, 9, 12, 15 bps: one within 5 bps, of 0.3 × the size
        assert cy.bid_contracts[0] == pytest.approx(0.3 * size, rel=1e-9)
        assert all(s < c for s, c in zip(cy.bid_contracts, cx.bid_contracts))
        assert all(s < c for s, c in zip(cy.ask_contracts, cx.ask_contracts))
    with pytest.raises(ValueError, match="book_levels"):
        SimConfig(book_levels=0)
