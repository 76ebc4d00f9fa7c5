"""Wire codec: protobuf <-> domain, exact decimals, snapshot encoding."""

from decimal import Decimal as D

import pytest

from marginflow.api.account.v1 import account_pb2 as pb
from marginflow.api.common.v1 import common_pb2
from marginflow.portfolio.adapters.codec import (
    SnapshotEncoder, account_from_proto, account_to_proto, decode_account, event_from_proto, event_to_proto,
    fill_from_proto, fill_to_proto)
from marginflow.portfolio.domain.model import (
    Account, Deposit, Fill, IsolatedTransfer, MarginMode, ModeChange, Position, Side, Withdrawal)
from marginflow.shared.errors import Rejected


def sample_account() -> Account:
    return Account(
        "acct-7", {"USDC": D("12345.678901"), "BTC": D("0.5")},
        {"BTC-PERP": Position("BTC-PERP", D("-0.25"), D("60123.4567890123"), D("-12.5"), D("3.75"),
                              MarginMode.ISOLATED, D("1500.25"), 1700),
         "ETH-PERP": Position("ETH-PERP", D("2"), D("3000"), D("0"), D("-0.6"), MarginMode.CROSS, D("0"), 1600)},
        D("3.15"), D("-12.5"), 17, {"trades.fills:1": 99, "account.events:1": 4}, ("f:a", "e:b"), 1700)


def test_account_round_trips_exactly_through_the_snapshot():
    acct = sample_account()
    assert account_from_proto(account_to_proto(acct)) == acct
    assert decode_account(SnapshotEncoder().encode(acct)) == acct


def test_incremental_encoder_gives_the_same_message_as_the_plain_one():
    enc = SnapshotEncoder()
    acct = sample_account()
    first = enc.encode(acct, 5)
    assert pb.AccountSnapshot.FromString(first) == account_to_proto(acct, 5)
    # change one position: the cached other one is reused, the message still matches
    moved = Account(acct.account_id, acct.balances,
                    {**acct.positions, "ETH-PERP": Position("ETH-PERP", D("3"), D("3100"))}, revision=18)
    assert pb.AccountSnapshot.FromString(enc.encode(moved, 6)) == account_to_proto(moved, 6)


def test_decimals_on_the_wire_never_use_exponent_notation():
    snap = account_to_proto(Account("a", {"USDC": D("1E-8")}, {}, D("1E+3")))
    assert snap.balances[0].amount.value == "0.00000001"
    assert snap.fees_paid_usd.value == "1000"


def test_fill_round_trip():
    f = Fill("f1", "a", "BTC-PERP", Side.SELL, D("0.002"), D("60000.5"), D("-0.01"), 123, MarginMode.ISOLATED, True)
    assert fill_from_proto(fill_to_proto(f)) == f


@pytest.mark.parametrize("event", [
    Deposit("e1", "a", "USDC", D("10.5"), 1), Withdrawal("e2", "a", "BTC", D("0.1"), 2),
    IsolatedTransfer("e3", "a", "BTC-PERP", D("-5"), 3), ModeChange("e4", "a", "ETH-PERP", MarginMode.CROSS, 4),
])
def test_event_round_trip(event):
    assert event_from_proto(event_to_proto(event)) == event


@pytest.mark.parametrize("mutate, code", [
    (lambda m: m.size.CopyFrom(common_pb2.Decimal(value="NaN")), "non_finite"),
    (lambda m: m.size.CopyFrom(common_pb2.Decimal(value="abc")), "bad_decimal"),
    (lambda m: m.ClearField("size"), "missing_field"),
    (lambda m: m.ClearField("price"), "missing_field"),
    (lambda m: setattr(m, "side", 0), "bad_side"),
    (lambda m: setattr(m, "mode", 7), "bad_mode"),
])
def test_malformed_fill_fields_are_rejected_with_a_reason(mutate, code):
    msg = fill_to_proto(Fill("f1", "a", "BTC-PERP", Side.BUY, D(1), D(1), D(0), 1))
    mutate(msg)
    with pytest.raises(Rejected) as err:
        fill_from_proto(msg)
    assert err.value.code == code


def test_event_without_body_is_rejected():
    with pytest.raises(Rejected) as err:
        event_from_proto(pb.AccountEvent(event_id="e", account_id="a"))
    assert err.value.code == "empty_event"
