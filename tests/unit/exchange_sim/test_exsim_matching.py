"""IOC matching: walks the depth, partial fills, never beyond the limit, deterministic fill ids."""

from __future__ import annotations

from decimal import Decimal as D

import pytest
from hypothesis import given, strategies as st

from marginflow.exchange_sim.domain.matching import Book, IocOrder, Level, Side, book_around, match_ioc


def book():
    return Book("BTC-PERP",
                bids=(Level(D("49990"), D("0.5")), Level(D("49980"), D("1")), Level(D("49950"), D("2"))),
                asks=(Level(D("50010"), D("0.5")), Level(D("50020"), D("1")), Level(D("50050"), D("2"))))


def test_sell_walks_the_bids_down_to_the_limit_and_cancels_the_rest():
    r = match_ioc(book(), IocOrder("liq-a-1-0", "BTC-PERP", Side.SELL, D("2"), D("49980")))
    # 0.5 @ 49,990 + 1 @ 49,980 = 1.5 filled; 49,950 is below the limit: 0.5 cancelled
    assert [(f.price_usd, f.size_contracts) for f in r.fills] == [(D("49990"), D("0.5")), (D("49980"), D("1"))]
    assert r.filled_contracts == D("1.5") and r.cancelled_contracts == D("0.5")
    # average (0.5·49,990 + 1·49,980)/1.5 = 49,983.33…: depth-aware slippage from the best bid
    assert r.average_price_usd == (D("24995") + D("49980")) / D("1.5")
    assert r.book_after.bids == (Level(D("49950"), D("2")),) and r.book_after.asks == book().asks


def test_buy_partially_takes_a_level():
    r = match_ioc(book(), IocOrder("o", "BTC-PERP", Side.BUY, D("0.8"), D("60000")))
    assert [(f.fill_id, f.price_usd, f.size_contracts) for f in r.fills] == [
        ("o-f0", D("50010"), D("0.5")), ("o-f1", D("50020"), D("0.3"))]
    assert r.book_after.asks[0] == Level(D("50020"), D("0.7"))


def test_nothing_within_the_limit():
    r = match_ioc(book(), IocOrder("o", "BTC-PERP", Side.BUY, D("1"), D("50000")))
    assert r.fills == () and r.cancelled_contracts == D("1") and r.average_price_usd is None


def test_bad_books_and_orders():
    with pytest.raises(ValueError):
        Book("X", bids=(Level(D("10"), D("1")), Level(D("11"), D("1"))), asks=())     # unsorted
    with pytest.raises(ValueError):
        Book("X", bids=(Level(D("10"), D("1")),), asks=(Level(D("10"), D("1")),))    # crossed
    with pytest.raises(ValueError):
        IocOrder("o", "X", Side.BUY, D("0"), D("10"))
    with pytest.raises(ValueError):
        match_ioc(book(), IocOrder("o", "ETH-PERP", Side.BUY, D("1"), D("10")))


@given(side=st.sampled_from([Side.BUY, Side.SELL]),
       size=st.decimals(min_value=D("0.01"), max_value=D("10"), places=2),
       limit=st.decimals(min_value=D("49000"), max_value=D("51000"), places=1))
def test_never_beyond_the_limit_and_deterministic(side, size, limit):
    b = book()
    o = IocOrder("liq-x-2-5", "BTC-PERP", side, size, limit)
    r = match_ioc(b, o)
    assert r == match_ioc(b, o)                                   # same order, same book: same fills and ids
    assert r.filled_contracts + r.cancelled_contracts == size
    assert len({f.fill_id for f in r.fills}) == len(r.fills)
    for f in r.fills:
        assert f.price_usd <= limit if side is Side.BUY else f.price_usd >= limit
    prices = [f.price_usd for f in r.fills]
    assert prices == sorted(prices, reverse=side is Side.SELL)    # each level worse than the one before


def test_book_around_a_mark():
    b = book_around("BTC-PERP", D("50000"), D("0.0001"), D("2"), 3, D("0.5"))
    # level i at 50,000·(1 ∓ 0.0001·(1+i)): bids 49,995 / 49,990 / 49,985, asks 50,005 / 50,010 / 50,015
    assert [lv.price_usd for lv in b.bids] == [D("49995.0"), D("49990.0"), D("49985.0")]
    assert [lv.price_usd for lv in b.asks] == [D("50005.0"), D("50010.0"), D("50015.0")]
    assert b.cumulative(Side.BUY)[-1] == (D("50015.0"), D("6"))
