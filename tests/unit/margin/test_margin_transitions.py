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
