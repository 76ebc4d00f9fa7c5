"""The account ledger: fees, settlement, collateral, isolated positions, modes, exactly-once, validation.

USD amounts in US dollars, sizes in contracts, prices in USD per underlying unit.
"""

from decimal import Decimal as D

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marginflow.portfolio.domain.ledger import Outcome, apply_command
from marginflow.portfolio.domain.model import (
    Account, Deposit, Fill, InputPosition, IsolatedTransfer, MarginMode, ModeChange, Side, Withdrawal)
from marginflow.shared.errors import Rejected

A = "acct-1"


def fill(n, instrument, side, size, price, fee="0", mode=None, t=1000):
    return Fill(f"f{n}", A, instrument, side, D(size), D(price), D(fee), t, mode)


def run(rules, *commands, account=None):
    account = account or Account(A)
    for c in commands:
        account, outcome = apply_command(account, c, None, rules)
        assert outcome is Outcome.APPLIED
    return account


def test_deposit_then_fee_on_open_is_charged_to_usdc(rules):
    # deposit 10,000 USDC; buy 0.5 BTC @ 60,000 paying 15 USD fee (5 bp of 30,000) → 9,985 USDC
    acct = run(rules, Deposit("d1", A, "USDC", D(10000), 1), fill(1, "BTC-PERP", Side.BUY, "0.5", 60000, "15"))
    assert acct.balance("USDC") == D(9985)
    pos = acct.positions["BTC-PERP"]
    assert (pos.size, pos.entry_price_usd, pos.fees_usd, pos.mode) == (D("0.5"), D(60000), D(15), MarginMode.CROSS)
    assert acct.fees_paid_usd == D(15) and acct.revision == 2


def test_cross_close_settles_realised_pnl_net_of_fees_into_usdc(rules):
    # +0.5 @ 60,000 (fee 15); sell 0.2 @ 62,000 (fee 6.2) → realised 0.2 × 2,000 = 400;
    # USDC 10,000 − 15 + 400 − 6.2 = 10,378.8
    acct = run(rules, Deposit("d1", A, "USDC", D(10000), 1), fill(1, "BTC-PERP", Side.BUY, "0.5", 60000, "15"),
               fill(2, "BTC-PERP", Side.SELL, "0.2", 62000, "6.2"))
    assert acct.balance("USDC") == D("10378.8")
    pos = acct.positions["BTC-PERP"]
    assert (pos.size, pos.realized_pnl_usd, pos.fees_usd) == (D("0.3"), D(400), D("21.2"))
    assert acct.realized_pnl_usd == D(400) and acct.fees_paid_usd == D("21.2")


def test_maker_rebate_is_a_negative_fee_credited(rules):
    # sell 1 ETH @ 3,000 with a −0.3 USD rebate → USDC +0.3
    acct = run(rules, fill(1, "ETH-PERP", Side.SELL, "1", 3000, "-0.3"))
    assert acct.balance("USDC") == D("0.3") and acct.positions["ETH-PERP"].size == D(-1)


def test_losses_may_take_usdc_negative_margin_decides_what_that_means(rules):
    # buy 10 SOL contracts (×10) @ 150, sell @ 140 → −10 × 10 × 10 = −1,000 USD on 0 collateral
    acct = run(rules, fill(1, "SOL-PERP", Side.BUY, "10", 150), fill(2, "SOL-PERP", Side.SELL, "10", 140))
    assert acct.balance("USDC") == D(-1000)
    assert not acct.open_instruments()


def test_isolated_position_settles_into_its_own_collateral_and_releases_it_when_flat(rules):
    # 5,000 USDC; isolate BTC-PERP and move 2,000 in → cross 3,000, isolated 2,000
    acct = run(rules, Deposit("d1", A, "USDC", D(5000), 1), ModeChange("m1", A, "BTC-PERP", MarginMode.ISOLATED, 2),
               IsolatedTransfer("t1", A, "BTC-PERP", D(2000), 3))
    assert acct.balance("USDC") == D(3000)
    assert acct.positions["BTC-PERP"].isolated_collateral_usd == D(2000)
    # long 0.1 @ 60,000 fee 3 → isolated 1,997; cross untouched
    acct = run(rules, fill(1, "BTC-PERP", Side.BUY, "0.1", 60000, "3"), account=acct)
    assert acct.balance("USDC") == D(3000)
    assert acct.positions["BTC-PERP"].isolated_collateral_usd == D(1997)
    # sell 0.05 @ 58,000 fee 1.45 → realised 0.05 × −2,000 = −100 → isolated 1,997 − 100 − 1.45 = 1,895.55
    acct = run(rules, fill(2, "BTC-PERP", Side.SELL, "0.05", 58000, "1.45"), account=acct)
    assert acct.positions["BTC-PERP"].isolated_collateral_usd == D("1895.55")
    # take 500 back out → isolated 1,395.55, cross 3,500
    acct = run(rules, IsolatedTransfer("t2", A, "BTC-PERP", D(-500), 4), account=acct)
    assert acct.positions["BTC-PERP"].isolated_collateral_usd == D("1395.55")
    assert acct.balance("USDC") == D(3500)
    # close the rest @ 59,000 fee 1.475: realised 0.05 × −1,000 = −50 → 1,344.075 released to cross
    acct = run(rules, fill(3, "BTC-PERP", Side.SELL, "0.05", 59000, "1.475"), account=acct)
    pos = acct.positions["BTC-PERP"]
    assert (pos.size, pos.isolated_collateral_usd, pos.mode) == (D(0), D(0), MarginMode.ISOLATED)
    assert acct.balance("USDC") == D("4844.075")
    # conservation: 5,000 deposited − 150 realised − 5.925 fees = 4,844.075
    assert acct.balance("USDC") == D(5000) + acct.realized_pnl_usd - acct.fees_paid_usd


def test_fill_mode_opens_a_new_position_isolated(rules):
    acct = run(rules, fill(1, "ETH-PERP", Side.BUY, "1", 3000, "1.5", mode=MarginMode.ISOLATED))
    assert acct.positions["ETH-PERP"].mode == MarginMode.ISOLATED
    assert acct.positions["ETH-PERP"].isolated_collateral_usd == D("-1.5")


def test_isolated_to_cross_on_flat_position_returns_collateral(rules):
    acct = run(rules, Deposit("d1", A, "USDC", D(100), 1), ModeChange("m1", A, "ETH-PERP", MarginMode.ISOLATED, 2),
               IsolatedTransfer("t1", A, "ETH-PERP", D(60), 3), ModeChange("m2", A, "ETH-PERP", MarginMode.CROSS, 4))
    assert acct.balance("USDC") == D(100)
    assert acct.positions["ETH-PERP"].mode == MarginMode.CROSS


@pytest.mark.parametrize("command, code", [
    (Withdrawal("w1", A, "USDC", D("100.01"), 5), "insufficient_balance"),
    (IsolatedTransfer("t1", A, "BTC-PERP", D(10), 5), "not_isolated"),
    (ModeChange("m1", A, "ETH-PERP", MarginMode.ISOLATED, 5), "position_open"),
    (Deposit("d2", A, "DOGE", D(1), 5), "unknown_asset"),
    (Deposit("d2", A, "USDC", D(-5), 5), "non_positive_amount"),
    (Deposit("d2", A, "USDC", D("NaN"), 5), "non_finite"),
    (Withdrawal("w1", A, "USDC", D(0), 5), "non_positive_amount"),
    (fill(9, "XRP-PERP", Side.BUY, "1", 1), "unknown_instrument"),
    (fill(9, "BTC-PERP", Side.BUY, "0", 60000), "non_positive_size"),
    (fill(9, "BTC-PERP", Side.BUY, "Infinity", 60000), "non_finite"),
    (fill(9, "BTC-PERP", Side.BUY, "0.0005", 60000), "bad_lot"),
    (fill(9, "BTC-PERP", Side.BUY, "0.001", 0), "non_positive_price"),
    (fill(9, "BTC-PERP", Side.BUY, "1e20", 1), "implausible"),
    (fill(9, "BTC-PERP", Side.BUY, "0.001", "1e-30"), "too_precise"),
    (Fill("", A, "BTC-PERP", Side.BUY, D(1), D(1), D(0), 1), "missing_id"),
])
def test_impossible_commands_are_rejected_and_change_nothing(rules, command, code):
    # 100 USDC and an open ETH position (cross)
    before = run(rules, Deposit("d1", A, "USDC", D(100), 1), fill(1, "ETH-PERP", Side.BUY, "1", 3000))
    with pytest.raises(Rejected) as err:
        apply_command(before, command, InputPosition("t:0", 99), rules)
    assert err.value.code == code
    assert before.balance("USDC") == D(100) and before.revision == 2 and before.applied_offsets == {}


def test_bad_account_id_is_rejected(rules):
    with pytest.raises(Rejected) as err:
        apply_command(Account("a{b}"), Deposit("d1", "a{b}", "USDC", D(1), 1), None, rules)
    assert err.value.code == "bad_account_id"


def test_redelivered_record_at_an_applied_offset_changes_nothing(rules):
    at = InputPosition("trades.fills:3", 41)
    once, outcome = apply_command(Account(A), fill(1, "BTC-PERP", Side.BUY, "1", 60000, "30"), at, rules)
    assert outcome is Outcome.APPLIED and once.applied_offsets == {"trades.fills:3": 41}
    # same offset again (consumer crashed before committing): nothing changes
    again, outcome = apply_command(once, fill(1, "BTC-PERP", Side.BUY, "1", 60000, "30"), at, rules)
    assert outcome is Outcome.DUPLICATE_OFFSET and again is once
    # an older offset of the same stream: also already applied
    _, outcome = apply_command(once, fill(7, "BTC-PERP", Side.BUY, "1", 1), InputPosition("trades.fills:3", 40), rules)
    assert outcome is Outcome.DUPLICATE_OFFSET


def test_same_fill_id_republished_at_a_new_offset_changes_nothing(rules):
    once, _ = apply_command(Account(A), fill(1, "BTC-PERP", Side.BUY, "1", 60000), InputPosition("f:0", 1), rules)
    again, outcome = apply_command(once, fill(1, "BTC-PERP", Side.BUY, "1", 60000), InputPosition("f:0", 2), rules)
    assert outcome is Outcome.DUPLICATE_ID and again is once
    assert again.positions["BTC-PERP"].size == D(1)


def test_fill_and_event_ids_live_in_separate_namespaces(rules):
    acct = run(rules, Deposit("x", A, "USDC", D(1), 1), Fill("x", A, "BTC-PERP", Side.BUY, D(1), D(1), D(0), 2))
    assert acct.recent_ids == ("e:x", "f:x") and acct.revision == 2


def test_recent_ids_are_bounded_to_the_dedupe_window(rules):
    # window 4 (conftest): after 6 fills only the last 4 ids are kept, oldest first
    acct = run(rules, *(fill(n, "BTC-PERP", Side.BUY, "0.001", 60000) for n in range(6)))
    assert acct.recent_ids == ("f:f2", "f:f3", "f:f4", "f:f5")


def test_updated_ms_never_goes_back(rules):
    acct = run(rules, fill(1, "BTC-PERP", Side.BUY, "1", 1, t=5000), fill(2, "BTC-PERP", Side.BUY, "1", 1, t=4000))
    assert acct.updated_ms == 5000 and acct.positions["BTC-PERP"].updated_ms == 4000


def test_command_for_another_account_is_a_programming_error(rules):
    with pytest.raises(ValueError):
        apply_command(Account("other"), fill(1, "BTC-PERP", Side.BUY, "1", 1), None, rules)


trades = st.lists(st.tuples(st.sampled_from([Side.BUY, Side.SELL]), st.integers(1, 5000),
                            st.integers(9_000_000, 11_000_000)), min_size=1, max_size=25)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # rules: immutable
@given(trades)
def test_round_trip_realised_pnl_equals_cash_flows_within_rounding(rules, sequence):
    """Trade at random, close flat: Σ realised P&L equals −Σ signed size × price × contract size,
    up to the rounding of entry prices (1e-10) and realised P&L (floored to 1e-8)."""
    # sizes in lots of 0.001 BTC, prices 90,000.00 .. 110,000.00 in cents
    acct = Account(A)
    cash_usd = D(0)
    for n, (side, lots, cents) in enumerate(sequence):
        size, price = D(lots) * D("0.001"), D(cents) / 100
        acct, _ = apply_command(acct, fill(n, "BTC-PERP", side, size, price), None, rules)
        cash_usd += (-size if side == Side.BUY else size) * price
    left = acct.positions["BTC-PERP"].size
    if left:
        close = Side.SELL if left > 0 else Side.BUY
        acct, _ = apply_command(acct, fill(len(sequence), "BTC-PERP", close, abs(left), D(100000)), None, rules)
        cash_usd += left * D(100000)
    assert acct.positions["BTC-PERP"].size == 0
    assert abs(acct.realized_pnl_usd - cash_usd) <= D("1e-6") * (len(sequence) + 1)
    assert acct.balance("USDC") == acct.realized_pnl_usd   # no fees: all of it settled in USDC
