"""Hysteresis and confirmation of published states, at their boundaries (amounts in USD; the rules
compare whole cents, buffers in basis points, by cross-multiplying)."""

from __future__ import annotations

import numpy as np
import pytest

from marginflow.margin.domain.health import Health, classify_many
from marginflow.margin.domain.transitions import Episodes, Pending, TransitionRules, next_states, sticky_state

H, MC, LIQ, BK = Health.HEALTHY, Health.MARGIN_CALL, Health.LIQUIDATION, Health.BANKRUPT
RULES = TransitionRules(exit_buffer_bps=200, margin_call_exit_buffer_bps=500, confirm_evaluations=2, confirm_ms=1000,
                        immediate_band_bps=1000)
IM, MM = 10_000.0, 5_000.0


def step(published, equity, pending, event_ms, rules=RULES, immediate=None):
    e = np.array([equity], dtype=float)
    im, mm = np.array([IM]), np.array([MM])
    raw = classify_many(e, im, mm, np.array([True]))
    imm = None if immediate is None else np.array([immediate])
    return int(next_states(np.array([published], np.int8), raw, e, im, mm, pending, event_ms, rules, imm)[0])


def settled(published, equity, rules=RULES):
    """The state after the confirmation window (three evaluations over 2 s at the same equity)."""
    p = Pending.empty(1)
    state = published
    for t in (0, 1000, 2000):
        state = step(state, equity, p, t, rules)
    return state


@pytest.mark.parametrize("equity, expected", [
    # leaving MARGIN_CALL needs equity ≥ IM × 1.05 = 10,500.00
    (10_500.00, H),      # at the threshold: left
    (10_499.99, MC),     # a cent below: stays, although equity ≥ IM (raw HEALTHY)
    (10_000.00, MC),     # at IM exactly (raw HEALTHY): stays
])
def test_margin_call_is_left_only_above_im_plus_the_buffer(equity, expected):
    assert settled(MC, equity) == expected


@pytest.mark.parametrize("equity, expected", [
    # an account below maintenance stays in liquidation until restored: equity ≥ IM × 1.05 = 10,500.00
    (10_500.00, H),
    (10_499.99, LIQ),
    (9_000.00, LIQ),     # above MM, below IM (raw MARGIN_CALL): not back to margin call
    (5_000.00, LIQ),     # at MM
])
def test_liquidation_ends_only_when_the_account_is_restored(equity, expected):
    assert settled(LIQ, equity) == expected


def test_without_a_buffer_the_thresholds_themselves_apply():
    rules = TransitionRules(exit_buffer_bps=0, margin_call_exit_buffer_bps=0, confirm_evaluations=1, confirm_ms=0,
                            immediate_band_bps=0)
    assert step(MC, 10_000.00, Pending.empty(1), 0, rules) == H       # equity = IM: healthy
    assert step(MC, 9_999.99, Pending.empty(1), 0, rules) == MC
    assert step(LIQ, 10_000.00, Pending.empty(1), 0, rules) == H      # restored at IM
    assert step(LIQ, 9_999.99, Pending.empty(1), 0, rules) == LIQ


def test_bankrupt_is_left_for_liquidation_at_the_buffer_times_mm_above_zero():
    # 2 % of MM 5,000 = 100.00
    assert settled(BK, 99.99) == BK
    assert settled(BK, 100.00) == LIQ


def test_a_recovery_must_hold_like_a_loss():
    p = Pending.empty(1)
    assert step(MC, 10_600.0, p, 0) == MC          # above IM × 1.05 once: not yet
    assert step(MC, 10_600.0, p, 1000) == H        # held two evaluations over 1 s: healthy
    p = Pending.empty(1)
    assert step(MC, 10_600.0, p, 0) == MC
    assert step(MC, 10_100.0, p, 500) == MC        # fell back under the exit threshold: the window restarts
    assert step(MC, 10_600.0, p, 1000) == MC
    assert step(MC, 10_600.0, p, 2000) == H


def test_a_liquidation_fill_or_a_deposit_ends_the_state_at_once():
    assert step(LIQ, 10_600.0, Pending.empty(1), 0, immediate=True) == H


def test_margin_call_is_entered_after_two_evaluations_a_second_apart():
    p = Pending.empty(1)
    # 9,999.99 < IM 10,000: 0.0001 % short, well inside the 10 % band → needs confirming
    assert step(H, 9_999.99, p, 0) == H
    assert step(H, 9_999.99, p, 999) == H          # second evaluation, but only 999 ms of event time
    assert step(H, 9_999.99, p, 1_000) == MC       # held 1,000 ms over 3 evaluations: published


def test_a_recovery_before_confirmation_resets_the_window():
    p = Pending.empty(1)
    assert step(H, 9_999.99, p, 0) == H
    assert step(H, 10_000.00, p, 500) == H           # back at IM: nothing pending any more
    assert step(H, 9_999.99, p, 1_000) == H          # a new window starts here
    assert step(H, 9_999.99, p, 2_000) == MC


def test_the_window_counts_evaluations_too():
    rules = TransitionRules(exit_buffer_bps=200, confirm_evaluations=3, confirm_ms=0, immediate_band_bps=1000)
    p = Pending.empty(1)
    assert [step(H, 9_999.99, p, t, rules) for t in (0, 10, 20)] == [H, H, MC]


@pytest.mark.parametrize("equity, expected", [
    # beyond the band: below IM × 0.9 = 9,000.00 enters margin call at once
    (8_999.99, MC),
    (9_000.00, H),      # at the band's edge: waits for confirmation
    # below MM × 0.9 = 4,500.00 enters liquidation at once (through margin call)
    (4_499.99, LIQ),
    (4_500.00, H),      # raw LIQUIDATION but not beyond the band: waits
    (-0.01, BK),        # bankrupt: always at once
])
def test_a_shortfall_beyond_the_band_is_published_at_once(equity, expected):
    assert step(H, equity, Pending.empty(1), 0) == expected


def test_an_account_whose_own_inputs_changed_needs_no_confirmation():
    assert step(H, 9_999.99, Pending.empty(1), 0, immediate=True) == MC


def test_a_first_evaluation_publishes_the_raw_state():
    assert step(Health.UNSPECIFIED, 4_900.0, Pending.empty(1), 0) == LIQ


def test_sticky_state_is_computed_in_whole_cents():
    e = np.array([10_500.004, 10_499.996])   # rounded down: 10,500.00 and 10,499.99
    s = sticky_state(np.full(2, MC, np.int8), e, np.full(2, IM), np.full(2, MM), RULES)
    assert s.tolist() == [H, MC]


def test_episodes_number_calls_and_mark_repeats():
    ep = Episodes.empty(1)
    assert ep.advance(0, H, MC) == (1, False)        # leaves HEALTHY: episode 1
    assert ep.advance(0, MC, LIQ) == (1, False)
    assert ep.advance(0, LIQ, BK) == (1, False)
    assert ep.advance(0, BK, LIQ) == (1, True)       # back from bankrupt: the episode had been there
    assert ep.advance(0, LIQ, H) == (1, False)       # restored: the episode ends
    assert ep.advance(0, H, MC) == (2, False)        # a new one


# ---- minimum dwell: a call on a market that recovers stands at least D (here 300 s = 300,000 ms) -----------

DWELL = TransitionRules(exit_buffer_bps=200, margin_call_exit_buffer_bps=500, confirm_evaluations=2,
                        confirm_ms=1000, immediate_band_bps=1000, min_dwell_ms=300_000)


def entered(state_equity, t_ms, pending, published=H, rules=DWELL):
    """Publish the state of ``state_equity`` at ``t_ms`` at once (as on the account's own change)."""
    return step(published, state_equity, pending, t_ms, rules, immediate=True)


def test_a_margin_call_on_a_market_that_recovers_stands_for_the_dwell():
    p = Pending.empty(1)
    assert entered(9_999.99, 0, p) == MC                   # entered at t = 0
    # restored: 10,600 ≥ IM·1.05 = 10,500, evaluated every second; 299,000 − 0 < 300,000: stays
    state = MC
    for t in range(1_000, 300_000, 1_000):
        state = step(state, 10_600.0, p, t, DWELL)
        assert state == MC
    # 300,000 − 0 = 300,000 ≥ D: the recovery starts confirming (first evaluation, count 1) ...
    assert step(state, 10_600.0, p, 300_000, DWELL) == MC
    # ... and holds for two evaluations 1,000 ms apart: left
    assert step(MC, 10_600.0, p, 301_000, DWELL) == H


def test_after_the_dwell_the_exit_buffer_still_applies():
    p = Pending.empty(1)
    assert entered(9_999.99, 0, p) == MC
    # 10,499.99 < 10,500 (IM·1.05): raw HEALTHY, but the buffer is not met, long after the dwell
    for t in (400_000, 401_000, 402_000):
        assert step(MC, 10_499.99, p, t, DWELL) == MC


def test_the_accounts_own_change_ends_a_call_within_the_dwell():
    p = Pending.empty(1)
    assert entered(9_999.99, 0, p) == MC
    # a deposit at t = 1,000 ms brings equity to 10,600 ≥ 10,500: left at once, 299 s before the dwell ends
    assert step(MC, 10_600.0, p, 1_000, DWELL, immediate=True) == H
    p = Pending.empty(1)
    assert entered(9_999.99, 0, p) == MC
    # the own change must still clear the buffer: 10,499.99 < 10,500 stays
    assert step(MC, 10_499.99, p, 1_000, DWELL, immediate=True) == MC


def test_the_dwell_never_delays_a_worse_state():
    p = Pending.empty(1)
    assert entered(9_999.99, 0, p) == MC
    # 4,999.99 < MM 5,000 but ≥ 0.9·MM = 4,500 (inside the band): confirmed over two evaluations 1 s apart
    assert step(MC, 4_999.99, p, 500, DWELL) == MC
    assert step(MC, 4_999.99, p, 1_500, DWELL) == LIQ


def test_the_dwell_restarts_when_a_worse_state_is_entered():
    p = Pending.empty(1)
    assert entered(9_999.99, 0, p) == MC
    assert step(MC, 4_499.99, p, 60_000, DWELL) == LIQ      # < 0.9·MM = 4,500: at once, at t = 60 s
    # 300 s after the margin call but 240 s after liquidation began: stays
    assert step(LIQ, 10_600.0, p, 300_000, DWELL) == LIQ
    assert step(LIQ, 10_600.0, p, 301_000, DWELL) == LIQ
    # 360,000 − 60,000 = 300,000 ≥ D: confirming, then left
    assert step(LIQ, 10_600.0, p, 360_000, DWELL) == LIQ
    assert step(LIQ, 10_600.0, p, 361_000, DWELL) == H


def test_a_restart_leaves_no_dwell_to_wait_out():
    # published states read back after a restart have entered_ms = 0: the dwell counts from the epoch
    p = Pending.empty(1)
    t0 = 1_796_000_000_000
    assert step(MC, 10_600.0, p, t0, DWELL) == MC
    assert step(MC, 10_600.0, p, t0 + 1_000, DWELL) == H


def test_the_dwell_bounds_entries_on_market_moves_alone():
    """Equity swings every 30 s between 9,900 (raw MARGIN_CALL) and 10,600 (restored) for 10 minutes:
    without the dwell every swing is a call (≈ 10); with D = 300 s the call is entered at t = 0, left at
    t = 301 s at the earliest and entered again on the next dip: 2 entries in 600 s (⌈600/300⌉)."""
    def entries(rules):
        p, state, n = Pending.empty(1), H, 0
        for t in range(0, 600_000, 1_000):
            equity = 9_900.0 if (t // 30_000) % 2 == 0 else 10_600.0
            new = step(state, equity, p, t, rules)
            n += new == MC and state != MC
            state = new
        return n
    assert entries(RULES) == 10
    assert entries(DWELL) == 2


# ---- no way back from liquidation to margin call ------------------------------------------------------------

def test_liquidation_is_never_left_for_margin_call():
    """An isolated position in liquidation beside a healthy cross part: the account's totals are restored
    (10,600 ≥ IM·1.05 = 10,500) while the worst component is only back in margin call (raw MC). Leaving
    for MARGIN_CALL would let the next dip enter LIQUIDATION twice in one episode: it stays."""
    e, im, mm = np.array([10_600.0]), np.array([IM]), np.array([MM])
    for published in (LIQ, BK):
        p, state = Pending.empty(1), published
        for t in (0, 1_000, 2_000):
            state = int(next_states(np.array([state], np.int8), np.array([MC], np.int8), e, im, mm, p, t, RULES)[0])
            assert state != MC
        assert state == LIQ      # BANKRUPT is left for LIQUIDATION once confirmed (10,600 ≥ 2 %·MM)
    # with every component restored (raw HEALTHY) it ends as usual
    p = Pending.empty(1)
    state = LIQ
    for t in (0, 1_000):
        state = int(next_states(np.array([state], np.int8), np.array([H], np.int8), e, im, mm, p, t, RULES)[0])
    assert state == H


def test_negative_dwell_is_refused():
    with pytest.raises(ValueError):
        TransitionRules(min_dwell_ms=-1)


def test_the_rules_over_the_rows_that_can_move_equal_the_rules_over_every_row():
    """:func:`next_states` runs the rules only where a raw state differs from the published one, a pending
    state is held, or nothing was published: over many random evaluations (equity wandering across every
    threshold, some accounts' own inputs changing) its states and pending arrays stay those of the rules
    applied to every row."""
    from marginflow.margin.domain.transitions import _next_states_dense

    rng = np.random.default_rng(7)
    n = 400
    rules = TransitionRules(exit_buffer_bps=200, margin_call_exit_buffer_bps=500, confirm_evaluations=2,
                            confirm_ms=1000, immediate_band_bps=1000, min_dwell_ms=3000)
    im = rng.uniform(1_000, 20_000, n)
    mm = im * 0.5
    equity = im * rng.uniform(-0.2, 2.0, n)
    published = {"sparse": np.zeros(n, np.int8), "dense": np.zeros(n, np.int8)}
    pending = {"sparse": Pending.empty(n), "dense": Pending.empty(n)}
    moved = 0
    for k in range(200):
        # most accounts drift a little (no state change), a few jump across thresholds
        equity = equity * (1 + rng.normal(0, 0.01, n))
        jump = rng.random(n) < 0.03
        equity[jump] = im[jump] * rng.uniform(-0.2, 2.0, int(jump.sum()))
        raw = classify_many(equity, im, mm, np.ones(n, dtype=bool))
        immediate = rng.random(n) < 0.01 if k % 3 == 0 else None
        now = k * 400
        sparse = next_states(published["sparse"], raw, equity, im, mm, pending["sparse"], now, rules, immediate)
        dense = _next_states_dense(published["dense"], raw, equity, im, mm, pending["dense"], now, rules, immediate)
        np.testing.assert_array_equal(sparse, dense)
        for name in ("state", "since_ms", "count", "entered_ms"):
            np.testing.assert_array_equal(getattr(pending["sparse"], name), getattr(pending["dense"], name), name)
        moved += int((sparse != published["sparse"]).sum())
        published = {"sparse": sparse, "dense": dense}
    assert moved > 200   # the walk did cross thresholds: the comparison covered transitions, not only stays
