"""Episode state machine and deterministic order ids."""

from __future__ import annotations

from decimal import Decimal as D

import pytest
from hypothesis import given, strategies as st

from marginflow.liquidation.domain.episode import (EpisodeState, MarginObservation, allocate_slices, begin_round,
                                                   observe, order_id, parse_order_id, record_attempt)

T = 1_767_225_600_000


def obs(equity, im="1000", mm="500", fresh=True, t=T, positions=True):
    return MarginObservation(D(equity), D(im), D(mm), fresh, t, positions)


def test_episode_starts_only_below_mm_on_a_fresh_mark():
    assert observe("a", None, obs("499", fresh=False)) is None          # stale: never starts
    assert observe("a", None, obs("500")) is None                       # equity = MM: margin call, not liquidation
    e = observe("a", None, obs("499"))
    assert e.state == EpisodeState.LIQUIDATING and e.number == 1 and e.started_ms == T


def test_restored_needs_the_buffer():
    e = observe("a", None, obs("400"))
    assert observe("a", e, obs("1010", t=T + 1)) is e                   # ≥ IM but < IM·1.02 = 1,020: still liquidating
    r = observe("a", e, obs("1020", t=T + 2))
    assert r.state == EpisodeState.RESTORED and r.ended_ms == T + 2
    assert observe("a", e, obs("2000", fresh=False)) is e               # a stale mark moves nothing


def test_closed_out_and_bankrupt():
    e = observe("a", None, obs("400"))
    assert observe("a", e, obs("100", positions=False)).state == EpisodeState.CLOSED_OUT
    b = observe("a", e, obs("-250"))
    assert b.state == EpisodeState.BANKRUPT and b.deficit_usd == D(250)


def test_next_episode_gets_the_next_number():
    e = observe("a", None, obs("400"), last_number=6)
    assert e.number == 7
    r = observe("a", e, obs("5000"))
    again = observe("a", r, obs("100", t=T + 99))
    assert again.number == 8 and again.state == EpisodeState.LIQUIDATING


def test_slices_and_bounded_attempts():
    e = begin_round(observe("acct-7", None, obs("400")))
    e, ids = allocate_slices(e, 3)
    assert ids == ("liq-acct-7-1-0", "liq-acct-7-1-1", "liq-acct-7-1-2") and e.next_slice == 3
    e, more = allocate_slices(e, 1)
    assert more == ("liq-acct-7-1-3",)
    sent = 0
    for _ in range(5):
        e, ok = record_attempt(e, max_attempts_per_round=3)
        sent += ok
    assert sent == 3
    e = begin_round(e)
    assert e.attempts_this_round == 0 and e.round_number == 2
    with pytest.raises(ValueError):
        allocate_slices(observe("acct-7", e, obs("5000")), 1)          # a final episode sends nothing


accounts = st.text(alphabet=st.characters(whitelist_categories=("Ll", "Lu", "Nd"), whitelist_characters="-_:."),
                   min_size=1, max_size=20)


@given(a=accounts, e=st.integers(1, 10**6), s=st.integers(0, 10**6))
def test_order_ids_are_deterministic_and_invertible(a, e, s):
    oid = order_id(a, e, s)
    assert oid == order_id(a, e, s)
    assert parse_order_id(oid) == (a, e, s)


@given(x=st.tuples(accounts, st.integers(1, 99), st.integers(0, 99)),
       y=st.tuples(accounts, st.integers(1, 99), st.integers(0, 99)))
def test_order_ids_unique_per_account_episode_slice(x, y):
    assert (order_id(*x) == order_id(*y)) == (x == y)


def test_bad_order_ids():
    for bad in ("", "liq", "liq-a-1", "x-a-1-2", "liq-a-b-2"):
        with pytest.raises(ValueError):
            parse_order_id(bad)
    with pytest.raises(ValueError):
        order_id("a b", 1, 0)
    with pytest.raises(ValueError):
        order_id("a", 0, 0)
