"""Heartbeats spread over the interval: accounts first published in the same millisecond come due one
share at a time, each still within the interval."""

from __future__ import annotations

import numpy as np

from marginflow.margin.application.publication import heartbeat_phases

from margin_unit_helpers import book, risk_version

BTC = 0
INTERVAL_MS = 10_000
STEP_MS = 250            # one evaluation per step, marks unchanged: every republication is a heartbeat


def test_heartbeats_of_accounts_published_together_are_spread_and_each_within_the_interval(make_engine):
    n = 2_000
    engine, pub, clock = make_engine(publish_max_interval_ms=INTERVAL_MS)
    engine.apply_snapshots([book(f"a{i}", [(BTC, 1.0, 60000.0, 0, 0.0)], {"USDC": 20000.0 + i})
                            for i in range(n)])
    engine.apply_risk_params(risk_version())          # every account published at the same ms
    t0 = clock.now_ms()
    assert len(pub.states) == n
    last = {s.account_id: t0 for s in pub.states}
    per_evaluation = []
    largest_gap = 0
    for _ in range(2 * INTERVAL_MS // STEP_MS):
        clock.advance(STEP_MS)
        seen = len(pub.states)
        engine.evaluate()
        fresh = pub.states[seen:]
        per_evaluation.append(len(fresh))
        for s in fresh:
            largest_gap = max(largest_gap, clock.now_ms() - last[s.account_id])
            last[s.account_id] = clock.now_ms()
    share = n * STEP_MS / INTERVAL_MS                  # 50 per evaluation
    assert max(per_evaluation) <= 1.1 * share + 5, per_evaluation
    assert sum(per_evaluation) == 2 * n                # each account twice in two intervals
    assert largest_gap <= INTERVAL_MS                  # and never more than an interval apart
    assert all(clock.now_ms() - t <= INTERVAL_MS for t in last.values())


def test_heartbeat_phases_are_deterministic_and_within_the_interval():
    a = heartbeat_phases(5_000, INTERVAL_MS)
    assert np.array_equal(a, heartbeat_phases(5_000, INTERVAL_MS))
    assert np.array_equal(a[:100], heartbeat_phases(100, INTERVAL_MS))    # a row keeps its phase as rows grow
    assert a.min() >= 0 and a.max() < INTERVAL_MS
    counts = np.bincount(a * 40 // INTERVAL_MS, minlength=40)              # 40 stretches of 250 ms
    assert counts.max() - counts.min() <= 4


def test_the_kept_next_beat_says_what_the_phase_formula_says():
    """A row is due at ``now`` when a beat ``phase + k·interval`` fell in (published, now]: the next beat
    kept from the publication gives the same verdict for every publication time and now (negative
    offsets and exact beats included)."""
    from marginflow.margin.application.publication import next_beats

    rng = np.random.default_rng(3)
    interval = 60_000
    phase = heartbeat_phases(20_000, interval)
    published = rng.integers(0, 10 * interval, phase.shape[0])
    published[:100] = 0                                   # never published
    published[100:200] = phase[100:200] + 3 * interval    # published on a beat exactly
    beats = next_beats(phase, published, interval)
    for now in (0, 1, interval - 1, 5 * interval, 5 * interval + 17, 11 * interval):
        now_arr = np.full(phase.shape[0], now)
        expected = (now_arr - phase) // interval > (published - phase) // interval
        np.testing.assert_array_equal(beats <= now, expected)
    assert (beats > published).all() and (beats - published <= interval).all()
