"""The batch encoder of margin states gives the same bytes as encoding one by one, and its cent
strings are those of ``shared.money`` (rounded in the venue's favour) at every magnitude."""

from __future__ import annotations

import numpy as np
import pytest

from marginflow.margin.adapters import codec
from marginflow.margin.domain.results import AccountMargin, IsolatedResult
from marginflow.shared.money import cents_text, usd_down_text, usd_up_text


def _margins(n, largest_exponent, seed):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        v = (rng.normal(0, 1, 16) * 10.0 ** rng.integers(-3, largest_exponent)).tolist()
        if i % 5 == 0:
            v[0] = round(v[0], 2)          # on a cent boundary (within float error)
            v[4] = 1.1                     # 110.00000000000001 cents: 1.10, not 1.11
        iso = (IsolatedResult("BTC-PERP", v[12], v[13], v[14], v[15], 2, None if i % 2 else 60000.5),) if i % 3 == 0 else ()
        out.append(AccountMargin(f"a{i}", i, 1, 5, *v[:6], 1, *v[6:10], 2, bool(i % 2), 7, v[10], v[11], iso, i % 4))
    return out


@pytest.mark.parametrize("largest_exponent", [9, 14], ids=["below 10^13 USD", "beyond"])
def test_batch_encoding_equals_one_by_one(largest_exponent):
    margins = _margins(500, largest_exponent, largest_exponent)
    batch = codec.margin_states(margins, "margin", 1234)
    assert len(batch) == len(margins)
    for m, msg in zip(margins, batch):
        assert msg.SerializeToString() == codec.margin_state(m, "margin", 1234).SerializeToString()
        assert msg.equity_usd.value == usd_down_text(m.equity_usd)
        assert msg.im_usd.value == usd_up_text(m.im_usd)
        assert msg.unrealized_pnl_usd.value == usd_down_text(m.cross_pnl_usd)


def test_cent_strings_equal_the_shared_rounding():
    rng = np.random.default_rng(5)
    cents = [0, 1, -1, 99, -99, 100, -100, 10**15 - 1, -(10**15 - 1), 10**15, 10**17 + 3]
    cents += rng.integers(-10**15, 10**15, 20_000).tolist() + rng.integers(-10**6, 10**6, 20_000).tolist()
    assert [codec._text(c) for c in cents] == [cents_text(c) for c in cents]
    usd = rng.normal(0, 1, 20_000) * 10.0 ** rng.integers(-3, 12, 20_000)
    assert [codec._up(x) for x in usd.tolist()] == [usd_up_text(x) for x in usd.tolist()]
    assert [codec._down(x) for x in usd.tolist()] == [usd_down_text(x) for x in usd.tolist()]


def test_a_non_finite_amount_in_a_batch_raises_as_one_by_one():
    margins = _margins(100, 6, 1)
    margins[50] = AccountMargin("bad", 1, 1, 5, float("nan"), *[1.0] * 5, 1, *[1.0] * 4, 1, True, 7, 1.0, 1.0)
    with pytest.raises(ValueError):
        codec.margin_states(margins)
