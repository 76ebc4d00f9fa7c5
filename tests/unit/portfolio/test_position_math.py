"""Position arithmetic with worked numbers (sizes in contracts, prices in USD per underlying unit).

Each test is a scenario; the comments carry the units and the arithmetic.
"""

from decimal import Decimal as D

import pytest

from marginflow.portfolio.domain.position_math import apply_trade, average_entry_usd, realized_pnl_usd

CS_1 = D("1")        # BTC-PERP: 1 BTC per contract
CS_10 = D("10")      # a 10-unit contract (SOL-style)


def test_open_long_from_flat_takes_the_fill_price_as_entry():
    # flat, buy 2 @ 60,000 USD → +2 contracts, entry 60,000, nothing realised
    r = apply_trade(D(0), D(0), D(2), D(60000), CS_1)
    assert (r.size, r.entry_price_usd, r.realized_pnl_usd) == (D(2), D(60000), D(0))


def test_add_to_long_moves_entry_to_size_weighted_mean():
    # +2 @ 60,000, buy 1 @ 63,000 → (2·60,000 + 1·63,000) / 3 = 61,000 USD
    r = apply_trade(D(2), D(60000), D(1), D(63000), CS_1)
    assert (r.size, r.entry_price_usd, r.realized_pnl_usd) == (D(3), D(61000), D(0))


def test_add_with_repeating_mean_rounds_entry_half_even_to_1e_10():
    # +1 @ 100, buy 2 @ 101 → 302 / 3 = 100.6666…; kept as 100.6666666667 USD
    r = apply_trade(D(1), D(100), D(2), D(101), CS_1)
    assert r.entry_price_usd == D("100.6666666667")


def test_partial_close_of_long_realises_on_closed_part_only():
    # +3 @ 61,000, sell 1 @ 64,000 → realised 1 × (64,000 − 61,000) × 1 = 3,000 USD;
    # +2 left, entry unchanged at 61,000
    r = apply_trade(D(3), D(61000), D(-1), D(64000), CS_1)
    assert (r.size, r.entry_price_usd, r.realized_pnl_usd, r.closed_size) == (D(2), D(61000), D(3000), D(1))


def test_full_close_of_short_at_a_loss_goes_flat_with_zero_entry():
    # −5 @ 150 (SOL, 10 per contract), buy 5 @ 160 → 5 × (160 − 150) × 10 × (−1) = −500 USD
    r = apply_trade(D(-5), D(150), D(5), D(160), CS_10)
    assert (r.size, r.entry_price_usd, r.realized_pnl_usd) == (D(0), D(0), D(-500))


def test_flip_long_to_short_closes_old_side_and_opens_rest_at_fill_price():
    # +3 @ 61,000, sell 5 @ 62,000 → closes 3: 3 × 1,000 = +3,000 USD; −2 opened @ 62,000
    r = apply_trade(D(3), D(61000), D(-5), D(62000), CS_1)
    assert (r.size, r.entry_price_usd, r.realized_pnl_usd, r.closed_size) == (D(-2), D(62000), D(3000), D(3))


def test_flip_short_to_long_realises_loss_on_the_short():
    # −0.5 @ 3,000 (ETH), buy 1.25 @ 3,100 → 0.5 × 100 × (−1) = −50 USD; +0.75 @ 3,100
    r = apply_trade(D("-0.5"), D(3000), D("1.25"), D(3100), CS_1)
    assert (r.size, r.entry_price_usd, r.realized_pnl_usd) == (D("0.75"), D(3100), D(-50))


def test_realised_gain_with_sub_cent_remainder_is_rounded_down():
    # +0.001 BTC @ 60,000.123456789, sell 0.001 @ 60,001 → 0.000876543211 USD → 0.00087654 (down)
    assert realized_pnl_usd(D("0.001"), D("60000.123456789"), D(60001), CS_1, 1) == D("0.00087654")


def test_realised_loss_with_sub_cent_remainder_is_rounded_away_from_the_trader():
    # −0.001 BTC @ 60,000.123456789 bought back @ 60,001 → −0.000876543211 → −0.00087655 USD
    assert realized_pnl_usd(D("0.001"), D("60000.123456789"), D(60001), CS_1, -1) == D("-0.00087655")


def test_option_premium_follows_the_same_arithmetic_futures_style():
    # sold 2 calls @ 1,025 USD premium, bought back @ 900 → 2 × (900 − 1,025) × 1 × (−1) = +250 USD
    r = apply_trade(D(-2), D(1025), D(2), D(900), CS_1)
    assert (r.size, r.realized_pnl_usd) == (D(0), D(250))


def test_average_entry_ignores_sign_of_sizes():
    # −2 @ 100 and −2 @ 110 → short 4 @ 105
    assert average_entry_usd(D(-2), D(100), D(-2), D(110)) == D(105)


def test_zero_trade_is_a_programming_error():
    with pytest.raises(ValueError, match="must not be zero"):
        apply_trade(D(1), D(1), D(0), D(1), CS_1)
