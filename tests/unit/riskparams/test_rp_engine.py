"""The engine and service: bad input never reaches an estimator, restore, versions, history."""

import json
import math

import numpy as np
import pytest

from marginflow.riskparams.adapters.codec import decode_marks, decode_ticks, select, to_proto
from marginflow.riskparams.application import NullMetrics, RiskParamsService
from marginflow.riskparams.domain.correlation import is_correlation_matrix

import rp_helpers as h


def make_service(engine=None, store=None):
    pub, dlq = h.FakePublisher(), h.FakeDeadLetters()
    svc = RiskParamsService(engine or h.engine(), decode_ticks=decode_ticks, decode_marks=decode_marks,
                            store=store or h.FakeStore(), publisher=pub, dead_letters=dlq, metrics=NullMetrics(),
                            clock_ms=lambda: h.AS_OF_MS)
    return svc, pub, dlq


@pytest.mark.parametrize("price", [math.nan, math.inf, -math.inf, 0.0, -5.0])
def test_bad_prices_never_reach_an_estimator(price):
    e = h.engine()
    e.ingest_ticks([("BTC-PERP", 100.0, h.AS_OF_MS + 1)])
    before = e.units["BTC"].sampler.to_state()
    rep = e.ingest_ticks([("BTC-PERP", price, h.AS_OF_MS + 2 * h.DAY_MS)])
    assert rep.accepted == 0 and len(rep.rejected) == 1
    assert rep.rejected[0][1].code in ("non_finite_price", "non_positive_price")
    assert e.units["BTC"].sampler.to_state() == before          # not even the last price moved
    assert e.units["BTC"].series.total == 0


def test_unknown_instruments_are_rejected_and_known_others_ignored():
    e = h.engine()
    rep = e.ingest_ticks([("DOGE-PERP", 1.0, h.AS_OF_MS), ("BTC-PERP", 1.0, -1), ("ETH-PERP", 3000.0, h.AS_OF_MS)])
    assert [r.code for _, r in rep.rejected] == ["unknown_instrument", "bad_event_time"]
    assert rep.accepted == 1
    fut = next(s for s, i in h.universe().instruments.items() if i.kind == 2 and i.underlying == "BTC")
    assert e.ingest_ticks([(fut, 60000.0, h.AS_OF_MS)]).ignored == 1


def test_index_ticks_of_every_underlying_are_ignored_not_dead_lettered():
    # marketdata publishes each underlying's index ticks on md.ticks under the bare symbol.
    svc, _, dlq = make_service()
    before = svc.engine.units["BTC"].sampler.to_state()
    values = [h.tick_bytes(u, 100.0, h.AS_OF_MS + i) for i, u in enumerate(h.universe().underlyings)]
    rep = svc.on_ticks(values, [u.encode() for u in h.universe().underlyings])
    assert dlq.letters == [] and rep.rejected == []
    assert rep.ignored == len(values) and rep.accepted == 0
    assert svc.engine.units["BTC"].sampler.to_state() == before      # never sampled as a price


def test_service_dead_letters_undecodable_and_bad_ticks_and_keeps_going():
    svc, _, dlq = make_service()
    good = h.tick_bytes("BTC-PERP", 60000.0, h.AS_OF_MS + 5)
    values = [b"\xff\xff\xff", h.tick_bytes("BTC-PERP", math.nan, h.AS_OF_MS + 6), good,
              h.tick_bytes("NOPE", 1.0, h.AS_OF_MS + 7)]
    # Keys as marketdata sets them (the instrument); a key that contradicts its payload is a
    # dead letter of its own (tests/unit/riskparams/test_rp_bad_input.py).
    rep = svc.on_ticks(values, [b"k0", b"BTC-PERP", b"BTC-PERP", b"NOPE"])
    assert [(l[1], l[3]) for l in dlq.letters] == [(b"k0", "malformed"), (b"BTC-PERP", "non_finite_price"),
                                                   (b"NOPE", "unknown_instrument")]
    assert dlq.letters[1][2] == values[1]                          # the payload travels with it
    assert rep.accepted == 1
    assert svc.engine.units["BTC"].sampler.last_price == 60000.0


def test_marks_feed_implied_vol_and_reject_non_finite():
    svc, _, dlq = make_service()
    uni = h.universe()
    opts = [i for i in uni.instruments.values() if i.is_option and i.underlying == "BTC"]
    now = h.AS_OF_MS + 3_600_000
    values = [h.mark_bytes(o.symbol, "BTC", 60000.0, 0.6, now) for o in opts]
    values.append(h.mark_bytes(opts[0].symbol, "BTC", 60000.0, math.nan, now))
    rep = svc.on_marks(values)
    assert rep.accepted == len(opts) and [l[3] for l in dlq.letters] == ["non_finite_mark"]
    assert svc.engine.units["BTC"].sigma_implied == pytest.approx(0.6)
    assert svc.engine.units["ETH"].sigma_implied == 0.0


def test_versions_only_when_something_changed_and_state_round_trips():
    store = h.FakeStore()
    svc, pub, _ = make_service(store=store)
    svc.on_ticks([h.tick_bytes(s, p, t) for s, p, t in h.daily_ticks(h.daily_paths(160))])
    v1 = svc.publish_if_changed()
    assert v1 is not None and v1.version == 1
    assert svc.publish_if_changed() is None                        # nothing new
    svc.checkpoint()
    json.dumps(store.data)                                         # the table holds plain JSON
    # A restarted engine from the stored state publishes the same numbers under the next version.
    svc2, pub2, _ = make_service(engine=h.engine(), store=h.FakeStore(dict(store.data)))
    assert svc2.restore()
    v2 = svc2.publish_if_changed(force=True)
    assert v2.version == 2
    assert v2.underlyings == v1.underlyings
    np.testing.assert_array_equal(v2.correlation, v1.correlation)
    np.testing.assert_array_equal(v2.historical.returns, v1.historical.returns)
    assert svc2.engine.sigma_history("BTC", 5) == svc.engine.sigma_history("BTC", 5)
    # ... and continues exactly like the engine that never stopped.
    more = h.daily_ticks(h.daily_paths(20, seed=9), start_ms=h.AS_OF_MS + 160 * h.DAY_MS)
    svc.engine.ingest_ticks(more)
    svc2.engine.ingest_ticks(more)
    assert svc.engine.estimates() == svc2.engine.estimates()


def test_restore_ignores_state_of_another_interval():
    svc, _, _ = make_service()
    svc.on_ticks([h.tick_bytes("BTC-PERP", 100.0, h.AS_OF_MS)])
    state = svc.engine.checkpoint()
    other = h.engine(interval_ms=3_600_000)
    assert not other.restore(state)


def test_fhs_after_enough_history_bootstrap_before():
    e = h.engine()
    e.ingest_ticks(h.daily_ticks(h.daily_paths(50)))
    v = e.build_version(0)
    assert v.historical.bootstrap and v.historical.returns.shape == (200, 3)
    e.ingest_ticks(h.daily_ticks(h.daily_paths(200, seed=3), start_ms=h.AS_OF_MS + 50 * h.DAY_MS))
    v = e.build_version(0)
    assert not v.historical.bootstrap
    assert v.historical.returns.shape == (200, 3)
    assert v.historical.last_event_time_ms > v.historical.first_event_time_ms
    assert is_correlation_matrix(v.correlation)
    assert v.correlation[0, 1] == pytest.approx(0.8, abs=0.2)


def test_sigma_changes_are_recorded_with_causes_and_versions():
    e = h.engine()
    e.ingest_ticks(h.daily_ticks(h.daily_paths(40)))
    changes = e.sigma_history("BTC", 1000)
    assert len(changes) == e.units["BTC"].series.total             # σ_m moved every interval
    assert all(c.version == 1 and c.cause for c in changes)
    assert changes[0].event_time_ms > changes[-1].event_time_ms   # most recent first
    assert changes[0].sigma_after == e.units["BTC"].margin.sigma_margin
    assert changes[-1].sigma_before == 0.0


def test_proto_round_trip_and_selection():
    e = h.engine()
    e.ingest_ticks(h.daily_ticks(h.daily_paths(30)))
    msg = to_proto(e.build_version(h.AS_OF_MS))
    assert msg.version == 1 and len(msg.underlyings) == 3 and len(msg.correlation) == 9
    assert msg.historical.count * 3 == len(msg.historical.returns) and msg.historical.bootstrap
    assert len(msg.grids[0].price_shocks) == 9 and msg.grids[0].horizon_seconds == 3 * 86400
    eth = select(msg, ["ETH"])
    assert [u.underlying for u in eth.underlyings] == ["ETH"] and list(eth.correlation) == [1.0]
    assert len(eth.historical.returns) == msg.historical.count
    np.testing.assert_allclose(list(eth.historical.returns),
                               np.asarray(msg.historical.returns).reshape(-1, 3)[:, 1])


def test_versions_only_on_material_change_or_at_the_longest_interval():
    e = h.engine(publish_min_sigma_change=0.005, publish_max_interval_ms=300_000)
    e.ingest_ticks(h.daily_ticks(h.daily_paths(60)))
    first = e.build_version(1_000)
    assert first is not None and first.version == 1
    # an option mark with a low implied vol: the implied estimate changes, σ_m (the max of the
    # estimators, implied 0.05 far below the realised ones) does not
    opt = next(i for i in h.universe().instruments.values()
               if i.is_option and i.underlying == "BTC" and i.expiry_ms > h.AS_OF_MS + 70 * h.DAY_MS)
    e.ingest_marks([(opt.symbol, "BTC", 60000.0, 0.05, h.AS_OF_MS + 59 * h.DAY_MS)])
    assert e.changed
    assert e.build_version(2_000) is None                 # immaterial: version 1 stands
    assert e.version == 1 and e.changed                   # ... and the change is looked at again later
    assert e.build_version(301_000).version == 2          # the longest interval passed
    # a new day of returns: a new window of historical scenarios is material at once
    e.ingest_ticks(h.daily_ticks(h.daily_paths(3, seed=9), start_ms=h.AS_OF_MS + 60 * h.DAY_MS))
    assert e.build_version(302_000).version == 3
    assert e.build_version(303_000, force=True).version == 4


def test_an_implied_vol_appearing_is_material_though_sigma_m_stands():
    """Options begin to trade (or their marks are read after the ticks at a start): the version says
    so at once, even when the implied vol is too low to move σ_m."""
    e = h.engine(publish_min_sigma_change=0.005, publish_max_interval_ms=300_000)
    e.ingest_ticks(h.daily_ticks(h.daily_paths(60)))
    first = e.build_version(1_000)
    assert [u.sigma_implied for u in first.underlyings] == [0.0, 0.0, 0.0]
    spot = e.units["BTC"].sampler.last_price
    e.ingest_marks([(i.symbol, "BTC", spot, 0.05, e.last_event_ms) for i in h.universe().instruments.values()
                    if i.is_option and i.underlying == "BTC"])     # a flat 5 % smile, as of the last tick
    second = e.build_version(2_000)
    assert second is not None and second.version == 2
    btc = {u.underlying: u for u in second.underlyings}["BTC"]
    assert btc.sigma_implied == pytest.approx(0.05) and btc.sigma_margin == first.underlyings[0].sigma_margin


def test_an_immaterial_version_never_moves_a_portfolios_margin():
    """σ_m moved by less than the threshold: no version, so the IM of an unchanged portfolio stands."""
    e = h.engine(publish_min_sigma_change=0.5)
    e.ingest_ticks(h.daily_ticks(h.daily_paths(60)))
    v1 = e.build_version(1_000)
    e.ingest_ticks(h.daily_ticks(h.daily_paths(2, seed=5), start_ms=h.AS_OF_MS + 60 * h.DAY_MS))
    v2 = e.build_version(2_000)   # a new historical window: published
    assert v2 is not None
    sig1 = {x.underlying: x.sigma_margin for x in v1.underlyings}
    sig2 = {x.underlying: x.sigma_margin for x in v2.underlyings}
    assert all(abs(sig2[u] / sig1[u] - 1) <= 0.5 for u in sig1)
