"""MarginAt over gRPC on the real Kafka: an account margined at given prices (marks and index prices),
what a call is judged at after the market moved on; bad prices and keys refused with INVALID_ARGUMENT."""

from __future__ import annotations

import math
from decimal import Decimal

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marginflow.api.common.v1 import common_pb2
from marginflow.api.margin.v1 import margin_pb2 as pb
from marginflow.api.margin.v1 import margin_pb2_grpc
from marginflow.shared.units import SECONDS_PER_YEAR

from grpc_fuzz import DECIMALS, DOCUMENTED, call
from margin_it_helpers import mark, risk_params, snapshot, wait_for


@pytest.fixture
def served(mg_settings, publish, start_margin):
    topics = mg_settings.common.topics
    publish(topics.risk_params, "current", risk_params())
    publish(topics.marks, "BTC-PERP", mark("BTC-PERP", "BTC", 60000.0))
    publish(topics.marks, "ETH-PERP", mark("ETH-PERP", "ETH", 3000.0))
    publish(topics.positions, "a", snapshot("a", [("BTC-PERP", "1", "60000")], "10000"))
    b = snapshot("b", [("ETH-PERP", "-1", "3000")], "0")
    b.balances.add(asset="BTC").amount.value = "1"
    publish(topics.positions, "b", b)
    app = start_margin(grpc=True)
    wait_for(lambda: {"a", "b"} <= set(app.engine.row_of) and app.engine.version == 1)
    channel = grpc.insecure_channel(f"127.0.0.1:{app.grpc_port}")
    yield app, margin_pb2_grpc.MarginServiceStub(channel), channel
    channel.close()


def _at(account: str, **marks: str) -> pb.MarginAtRequest:
    req = pb.MarginAtRequest(account_id=account)
    for key, price in marks.items():
        req.marks[key.replace("_", "-").replace("index-", "index:")].value = price
    return req


def _prices(res: pb.MarginAtResponse) -> list[tuple[str, str, bool, bool]]:
    return [(p.key, p.price_usd.value, p.given, p.fresh) for p in res.prices]


def test_margin_at_given_marks_then_a_call_judged_at_its_marks_after_the_market_moved(served, publish, mg_settings):
    _app, stub, _ = served
    live = stub.GetMargin(pb.GetMarginRequest(account_id="a"), timeout=5)
    assert (live.equity_usd.value, live.im_usd.value, live.state) == ("10000.00", "9006.00", pb.HEALTH_STATE_HEALTHY)
    # At the market now (nothing given): the same numbers as GetMargin, computed afresh.
    now = stub.MarginAt(_at("a"), timeout=5)
    for field in ("equity_usd", "im_usd", "mm_usd", "cross_im_usd", "collateral_value_usd"):
        assert getattr(now.margin, field).value == getattr(live, field).value
    assert _prices(now) == [("BTC-PERP", "60000.0", False, True)]
    # BTC-PERP at 54,000: equity 10,000 − 6,000 = 4,000 < MM 4,503 (the requirement is the risk arrays',
    # unchanged): LIQUIDATION, the raw state of those numbers; the live margin is left as it was.
    low = stub.MarginAt(_at("a", BTC_PERP="54000"), timeout=5)
    assert (low.margin.equity_usd.value, low.margin.im_usd.value, low.margin.mm_usd.value) == \
        ("4000.00", "9006.00", "4503.00")
    assert low.margin.state == pb.HEALTH_STATE_LIQUIDATION and low.margin.marks_fresh
    assert (low.margin.account_revision, low.margin.risk_params_version) == (1, 1)
    assert _prices(low) == [("BTC-PERP", "54000.0", True, True)]
    assert low.prices[0].event_time_ms == low.margin.meta.event_time_ms == live.meta.event_time_ms
    assert stub.GetMargin(pb.GetMarginRequest(account_id="a"), timeout=5).equity_usd.value == "10000.00"

    # The market moves to 54,000 for real: the account is called; at the marks before the move the
    # margin is still the healthy one — a later check can tell the call from the drift.
    publish(mg_settings.common.topics.marks, "BTC-PERP", mark("BTC-PERP", "BTC", 54000.0))
    moved = wait_for(lambda: (m := stub.GetMargin(pb.GetMarginRequest(account_id="a"), timeout=5))
                     .equity_usd.value == "4000.00" and m.state == pb.HEALTH_STATE_LIQUIDATION and m,
                     what="the mark move margined and the account called")
    before = stub.MarginAt(_at("a", BTC_PERP="60000", index_BTC="60000"), timeout=5)
    assert before.margin.equity_usd.value == "10000.00" and before.margin.state == pb.HEALTH_STATE_HEALTHY
    assert before.margin.episode == moved.episode > 0     # the account's episode, not a new one


def test_margin_at_an_index_price_values_crypto_collateral_with_its_haircut(served):
    _app, stub, _ = served
    res = stub.MarginAt(_at("b", index_BTC="50000.5"), timeout=5)
    # 1 BTC at 50,000.5 less the haircut min(0.5, z·σ_m·√(horizon/year)), z 2.33, σ_m 0.5, 3 days;
    # rounded down to the cent (collateral is credited)
    haircut = min(0.5, 2.33 * 0.5 * math.sqrt(259200 / SECONDS_PER_YEAR))
    cents = math.floor(50000.5 * (1 - haircut) * 100)
    assert Decimal(res.margin.collateral_value_usd.value) == Decimal(cents) / 100
    assert _prices(res) == [("ETH-PERP", "3000.0", False, True), ("index:BTC", "50000.5", True, True)]


@pytest.mark.parametrize("marks, needle", [
    ({"DOGE-PERP": "1"}, "DOGE-PERP"), ({"index:DOGE": "1"}, "index:DOGE"), ({"index:": "1"}, "index:"),
    ({"": "1"}, "neither a listed instrument"), ({"BTC-PERP": "abc"}, "not a decimal"),
    ({"BTC-PERP": ""}, "not a decimal"), ({"BTC-PERP": "NaN"}, "finite"), ({"BTC-PERP": "-inf"}, "finite"),
    ({"BTC-PERP": "0"}, "> 0"), ({"BTC-PERP": "-1"}, "> 0"), ({"index:BTC": "1e13"}, "at most"),
    ({"BTC-PERP": "1e-400"}, "too small"), ({"ETH-PERP": "3000", "BTC-PERP": "x" * 100_000}, "not a decimal"),
])
def test_margin_at_refuses_unknown_keys_and_bad_prices(served, marks, needle):
    _app, stub, _ = served
    req = pb.MarginAtRequest(account_id="a")
    for key, price in marks.items():
        req.marks[key].value = price
    with pytest.raises(grpc.RpcError) as err:
        stub.MarginAt(req, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in err.value.details()


def test_margin_at_unknown_or_missing_account(served):
    _app, stub, _ = served
    with pytest.raises(grpc.RpcError) as err:
        stub.MarginAt(_at("nobody", BTC_PERP="60000"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        stub.MarginAt(_at("", BTC_PERP="60000"), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(prices=st.dictionaries(st.sampled_from(["BTC-PERP", "ETH-PERP", "index:BTC", "index:ETH", "index:SOL"]),
                              st.one_of(st.decimals(allow_nan=True).map(str), st.sampled_from(DECIMALS),
                                        st.floats(1e-3, 1e12).map(repr)), max_size=5))
def test_fuzz_margin_at_of_a_known_account_answers_only_documented_codes(served, prices):
    # Every key is a real one, so the prices get past the keys and reach the core and the valuation.
    _app, _stub, channel = served
    req = pb.MarginAtRequest(account_id="a")
    for key, price in prices.items():
        req.marks[key].CopyFrom(common_pb2.Decimal(value=price))
    method = pb.DESCRIPTOR.services_by_name["MarginService"].methods_by_name["MarginAt"]
    code = call(channel, method, req)
    assert code in DOCUMENTED, f"MarginAt answered {code.name} to {prices}"


def test_margin_at_a_given_book_margins_the_account_as_it_was_at_another_revision(served, publish, mg_settings):
    _app, stub, _ = served
    then = snapshot("a", [("BTC-PERP", "1", "60000")], "10000", revision=1)
    # the account trades on: revision 2 is flat with 9,000 USDC
    publish(mg_settings.common.topics.positions, "a", snapshot("a", [], "9000", revision=2))
    wait_for(lambda: stub.GetMargin(pb.GetMarginRequest(account_id="a"), timeout=5).account_revision == 2,
             what="revision 2 margined")
    # revision 1 at 54,000: 10,000 − 6,000 = 4,000 < MM 4,503 — as the account was, whatever it holds now
    req = _at("a", BTC_PERP="54000")
    req.book.CopyFrom(then)
    res = stub.MarginAt(req, timeout=5)
    assert (res.margin.equity_usd.value, res.margin.im_usd.value, res.margin.mm_usd.value) == \
        ("4000.00", "9006.00", "4503.00")
    assert (res.margin.state, res.margin.account_revision) == (pb.HEALTH_STATE_LIQUIDATION, 1)
    assert _prices(res) == [("BTC-PERP", "54000.0", True, True)]
    now = stub.MarginAt(_at("a", BTC_PERP="54000"), timeout=5)       # the current book: flat, 9,000
    assert (now.margin.equity_usd.value, now.margin.account_revision) == ("9000.00", 2)
    # at the version in force it is the same answer; at one never held it is refused, never computed on another
    req.risk_params_version = 1
    assert stub.MarginAt(req, timeout=5).margin.equity_usd.value == "4000.00"
    req.risk_params_version = 2
    with pytest.raises(grpc.RpcError) as err:
        stub.MarginAt(req, timeout=5)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "version 2" in err.value.details()
    # version 2 doubles the price shocks: the IM in force moves; version 1 is still kept and margins as before
    wider = risk_params(version=2)
    for g in wider.grids:
        g.price_shocks[:] = [-0.2, 0.0, 0.2]
    publish(mg_settings.common.topics.risk_params, "current", wider)
    wait_for(lambda: stub.GetMargin(pb.GetMarginRequest(account_id="a"), timeout=5).risk_params_version == 2,
             what="version 2 in force")
    req.risk_params_version = 0
    in_force = stub.MarginAt(req, timeout=5).margin
    assert in_force.risk_params_version == 2 and Decimal(in_force.im_usd.value) > Decimal("9006.00")
    req.risk_params_version = 1
    kept = stub.MarginAt(req, timeout=5).margin
    assert (kept.risk_params_version, kept.im_usd.value, kept.equity_usd.value) == (1, "9006.00", "4000.00")
    req.risk_params_version = 99
    with pytest.raises(grpc.RpcError) as err:
        stub.MarginAt(req, timeout=5)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # a book of an account this instance does not hold is margined too (no episode of its own)
    other = pb.MarginAtRequest(account_id="nobody")
    other.book.CopyFrom(snapshot("nobody", [("ETH-PERP", "-2", "3000")], "100000", revision=7))
    res = stub.MarginAt(other, timeout=5)
    assert (res.margin.account_revision, res.margin.episode, res.margin.state) == (7, 0, pb.HEALTH_STATE_HEALTHY)
    assert res.margin.equity_usd.value == "100000.00"


@pytest.mark.parametrize("book, needle", [
    (snapshot("b", [("BTC-PERP", "1", "60000")], "10000"), "book.account_id"),
    (snapshot("a", [("DOGE-PERP", "1", "1")], "10000"), "unknown instrument"),
    (snapshot("a", [("BTC-PERP", "NaN", "60000")], "10000"), "not finite"),
    (snapshot("a", [("BTC-PERP", "1", "60000")], "1e400"), "implausible"),
])
def test_margin_at_refuses_a_book_that_cannot_be_margined(served, book, needle):
    _app, stub, _ = served
    req = _at("a")
    req.book.CopyFrom(book)
    with pytest.raises(grpc.RpcError) as err:
        stub.MarginAt(req, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in err.value.details()


def _option(app) -> str:
    t = app.engine.instruments
    return next(t.symbols[k] for k in range(t.n) if t.is_option(k))


def test_margin_at_given_vols_rebuilds_the_model_at_that_market_and_refuses_bad_vols(served):
    app, stub, _ = served
    option = _option(app)
    held = app.engine.model
    plain = stub.MarginAt(_at("a", BTC_PERP="54000"), timeout=5)
    req = _at("a", BTC_PERP="54000")
    req.implied_vols[option].value = "0.9"
    rebuilt = stub.MarginAt(req, timeout=5)
    # account a holds no option: the same numbers on a model rebuilt at 54,000 (the perpetual's risk array
    # scales with its forward), and the live model untouched
    assert Decimal(rebuilt.margin.im_usd.value) < Decimal(plain.margin.im_usd.value)
    assert rebuilt.margin.equity_usd.value == plain.margin.equity_usd.value == "4000.00"
    assert app.engine.model is held
    for vols, needle in (({"BTC-PERP": "0.5"}, "not a listed option"), ({"NOPE-1": "0.5"}, "not a listed option"),
                         ({option: "abc"}, "not a decimal"), ({option: "0"}, "> 0"), ({option: "-0.2"}, "> 0"),
                         ({option: "NaN"}, "finite"), ({option: "21"}, "at most"), ({option: "1e-400"}, "too small")):
        bad = _at("a")
        for key, vol in vols.items():
            bad.implied_vols[key].value = vol
        with pytest.raises(grpc.RpcError) as err:
            stub.MarginAt(bad, timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in err.value.details()
