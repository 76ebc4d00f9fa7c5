"""The account table: rows, CSR layout and isolated IM carried across layout rebuilds."""

from __future__ import annotations

import numpy as np

from marginflow.margin.domain.accounts import AccountTable, _carry_over
from marginflow.margin.domain.book import AccountBook


def book(account: str, n: int, revision: int = 1, isolated: bool = True) -> AccountBook:
    return AccountBook(account, revision, np.arange(n, dtype=np.int32), np.ones(n), np.full(n, 100.0),
                       np.full(n, 1 if isolated else 0, np.uint8), np.full(n, 10.0), np.zeros(2))


def core_out(values_per_row: list[list[float]]) -> dict:
    n = len(values_per_row)
    return {"cross_im": np.zeros(n), "grid": np.zeros(n), "es": np.zeros(n), "minimum": np.zeros(n),
            "liquidity": np.zeros(n), "isolated_im": np.array([v for row in values_per_row for v in row])}


def test_isolated_im_survives_a_rebuild_where_one_account_outgrew_its_slot():
    t = AccountTable(2)
    t.upsert([book("a", 2), book("b", 3), book("c", 1)])
    t.ensure_flat()
    t.store_full(core_out([[1, 2], [3, 4, 5], [6]]))
    # b grows to 4 positions: its slot is too small, the layout goes stale
    rows = t.upsert([book("b", 4, revision=2)])
    assert rows == [1] and t.flat_dirty
    t.store_single(1, {"cross_im": [0.0], "grid": [0.0], "es": [0.0], "minimum": [0.0], "liquidity": [0.0],
                       "isolated_im": np.array([7.0, 8.0, 9.0, 10.0])})
    flat = t.ensure_flat()
    assert flat.indptr.tolist() == [0, 2, 6, 7]
    assert t.iso_im_flat.tolist() == [1, 2, 7, 8, 9, 10, 6]


def test_a_removed_account_leaves_no_isolated_im_behind():
    t = AccountTable(2)
    t.upsert([book("a", 2), book("b", 1)])
    t.ensure_flat()
    t.store_full(core_out([[1, 2], [3]]))
    t.remove(["a"])
    t.ensure_flat()
    assert t.flat.indptr.tolist() == [0, 0, 1] and t.iso_im_flat.tolist() == [3.0]
    assert not t.computed[0] and t.book("a") is None


def test_carry_over_moves_equal_length_rows_and_zeros_the_others():
    old_indptr = np.array([0, 2, 3, 6])
    new_indptr = np.array([0, 2, 4, 7, 8])   # row 1 grew, row 3 is new
    out = _carry_over(old_indptr, np.array([1.0, 2, 3, 4, 5, 6]), new_indptr)
    assert out.tolist() == [1, 2, 0, 0, 4, 5, 6, 0]


def test_a_stamp_tells_whether_a_rows_book_changed_since():
    t = AccountTable(2)
    t.upsert([book("a", 2), book("b", 3), book("c", 1)])
    t.ensure_flat()
    t.store_full(core_out([[1, 2], [3, 4, 5], [6]]))
    seen = t.stamp[:3].copy()
    assert len(set(seen.tolist())) == 3 and (seen > 0).all()    # unique per change
    rows = np.arange(3)
    np.testing.assert_array_equal(t.current(rows, seen), rows)
    t.upsert([book("b", 3, revision=1)])       # a redelivery: the same revision replaces the book
    t.upsert([book("c", 1, revision=0)])       # an older revision: ignored, the row is unchanged
    t.remove(["a"])
    np.testing.assert_array_equal(t.current(rows, seen), [2])   # a removed, b replaced, c unchanged
    assert t.stamp[1] != seen[1] and t.stamp[0] != seen[0]
