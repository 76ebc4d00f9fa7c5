"""Causes of a change of state: an unchanged book passed as the same object gives exactly what an equal copy
gives (the identity shortcut saves the array comparisons, never changes the content)."""

from __future__ import annotations

import numpy as np

from marginflow.margin.domain.book import AccountBook
from marginflow.margin.domain.causes import Snapshot, contributions
from marginflow.margin.domain.results import ChangeCause

K = 4
CONTRACT_SIZE = np.array([1.0, 0.1, 1.0, 10.0])
SYMBOLS = ("BTC-PERP", "ETH-PERP", "SOL-PERP", "DOGE-PERP")
UNDERLYING_OF = ("BTC", "ETH", "SOL", "DOGE")


def book(size=(1.0, -3.0), balances=(12_000.0, 0.0)) -> AccountBook:
    return AccountBook("acct-1", 1, np.array([0, 1], np.int32), np.array(size), np.array([60_000.0, 3_000.0]),
                       np.zeros(2, np.uint8), np.zeros(2), np.array(balances))


def copy_of(b: AccountBook) -> AccountBook:
    return AccountBook(b.account_id, b.revision, b.instrument.copy(), b.size.copy(), b.entry.copy(),
                       b.isolated.copy(), b.isolated_collateral.copy(), b.balances.copy())


def snapshots(then_book: AccountBook, now_book: AccountBook, version_now: int = 1):
    marks_then = np.array([60_000.0, 3_000.0, 150.0, 0.1])
    marks_now = np.array([51_000.0, 3_150.0, 150.0, 0.1])   # BTC −15 %, ETH +5 % (the short loses)
    then = Snapshot(then_book, marks_then, 12_000.0, 12_000.0, 6_500.0, 1, {"BTC": 0.5, "ETH": 0.6}, 1)
    now = Snapshot(now_book, marks_now, 12_000.0, 12_000.0 - 9_000.0 - 45.0, 6_000.0, version_now,
                   {"BTC": 0.55, "ETH": 0.6}, 1)
    return then, now


def test_the_same_book_object_gives_exactly_the_contributions_of_an_equal_copy():
    b = book()
    for version_now in (1, 2):
        same = contributions(*snapshots(b, b, version_now), CONTRACT_SIZE, SYMBOLS, UNDERLYING_OF)
        copied = contributions(*snapshots(b, copy_of(b), version_now), CONTRACT_SIZE, SYMBOLS, UNDERLYING_OF)
        assert same == copied
    marks = [c for c in same if c.cause is ChangeCause.MARK_MOVE and c.subject in SYMBOLS]
    # the largest effect first: 1 BTC × (51,000 − 60,000) = −9,000 USD; −3 × 0.1 ETH × 150 = −45 USD
    assert [c.subject for c in marks] == ["BTC-PERP", "ETH-PERP"]
    assert np.allclose([c.equity_change_usd for c in marks], [-9_000.0, -45.0], rtol=0, atol=1e-9)


def test_a_changed_book_is_still_told_as_a_position_or_collateral_change():
    then_book = book()
    traded = contributions(*snapshots(then_book, book(size=(0.5, -3.0))), CONTRACT_SIZE, SYMBOLS, UNDERLYING_OF)
    assert ChangeCause.POSITION_CHANGE in {c.cause for c in traded}
    then, now = snapshots(then_book, book(balances=(10_000.0, 0.0)))
    now = Snapshot(now.book, now.marks, 10_000.0, now.equity_usd - 2_000.0, now.im_usd, 1, now.sigma_margin, 1)
    withdrawn = contributions(then, now, CONTRACT_SIZE, SYMBOLS, UNDERLYING_OF)
    assert [c.equity_change_usd for c in withdrawn if c.cause is ChangeCause.COLLATERAL_CHANGE] == [-2_000.0]
