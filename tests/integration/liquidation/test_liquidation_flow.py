"""The loop closed on the real Kafka and Redis: a mark move pushes an account below MM → liquidation orders
with deterministic ids → exchange-sim fills → portfolio → margin → restored; a restart mid-episode doubles no
order id; fees reach the fund exactly once; the withdrawal gate asks margin."""

from __future__ import annotations

from decimal import Decimal

import grpc
import pytest

from marginflow.api.account.v1 import account_pb2, account_pb2_grpc
from marginflow.api.common.v1 import common_pb2
from marginflow.api.liquidation.v1 import liquidation_pb2 as lpb
from marginflow.api.liquidation.v1 import liquidation_pb2_grpc
from marginflow.api.margin.v1 import margin_pb2

from liq_it_helpers import Publisher, Topic, deposit, margin_of, margin_stub, trade, wait_for
from margin_it_helpers import mark, risk_params
from portfolio_it_helpers import ADMIN_TOKEN as PF_TOKEN

BTC = "BTC-PERP"


def kinds(events, account):
    return [lpb.LiquidationEventKind.Name(e.kind).removeprefix("LIQUIDATION_EVENT_KIND_")
            for e in events if e.account_id == account]


def test_mark_move_liquidates_in_slices_restart_doubles_nothing_and_fees_reach_the_fund_once(
        mg_settings, start_margin, start_portfolio, start_liquidation, start_exchange_sim, kafka_bootstrap):
    topics = mg_settings.common.topics
    pub = Publisher(kafka_bootstrap)
    pub.send(topics.risk_params, "current", risk_params())
    pub.send(topics.marks, BTC, mark(BTC, "BTC", 60000.0))
    margin = start_margin(grpc=True)
    portfolio = start_portfolio(margin.grpc_port)
    pub.send(topics.account_events, "alice", deposit("alice", "12000", "dep-alice"))
    pub.send(topics.account_events, "house", deposit("house", "10000000", "dep-house"))
    trade(pub, topics.fills, "t1", "alice", "house", BTC, "1", "60000")
    channel, stub = margin_stub(margin.grpc_port)
    wait_for(lambda: (lambda m: m and m.equity_usd.value == "12000.00" and Decimal(m.im_usd.value) > 0)(
        margin_of(stub, "alice")), what="alice margined")

    # The withdrawal gate: equity 12,000 − 4,000 < IM 9,006 → refused; 500 leaves 11,500 ≥ IM → accepted.
    pf_channel = grpc.insecure_channel(f"127.0.0.1:{portfolio.grpc_port}")
    accounts = account_pb2_grpc.AccountServiceStub(pf_channel)
    auth = (("authorization", f"Bearer {PF_TOKEN}"),)
    with pytest.raises(grpc.RpcError) as refused:
        accounts.Withdraw(account_pb2.AdminWithdrawRequest(account_id="alice", asset="USDC", request_id="w-big",
                                                           amount=common_pb2.Decimal(value="4000")), metadata=auth)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "below the initial margin" in refused.value.details()
    ok = accounts.Withdraw(account_pb2.AdminWithdrawRequest(account_id="alice", asset="USDC", request_id="w-ok",
                                                            amount=common_pb2.Decimal(value="500")), metadata=auth)
    assert ok.accepted
    wait_for(lambda: (lambda m: m and m.equity_usd.value == "11500.00")(margin_of(stub, "alice")),
             what="withdrawal applied")

    sim = start_exchange_sim()
    liq = start_liquidation(margin.grpc_port, portfolio.grpc_port)
    orders = Topic(kafka_bootstrap, topics.liquidation_orders, lpb.LiquidationOrder)
    events = Topic(kafka_bootstrap, topics.liquidation_events, lpb.LiquidationEvent)
    fills = Topic(kafka_bootstrap, topics.fills, account_pb2.Fill)

    # 51,000: equity 11,500 − 9,000 = 2,500 < MM ≈ 3,830 → LIQUIDATION (not bankrupt).
    pub.send(topics.marks, BTC, mark(BTC, "BTC", 51000.0))
    wait_for(lambda: len(orders.records()) >= 1, what="first liquidation order")
    # A restart mid-episode: the new instance rebuilds the episode and its slices from liquidation.events.
    start_liquidation.stop(liq)
    sent_before = len(orders.records_to_end())
    liq = start_liquidation(margin.grpc_port, portfolio.grpc_port)
    try:
        wait_for(lambda: "RESTORED" in kinds(events.records(), "alice"), timeout_s=40, what="episode restored")
    except AssertionError:
        raise AssertionError(f"not restored: events {kinds(events.records(), 'alice')}, orders "
                             f"{[(o.order_id, o.size.value, o.limit_price.value) for o in orders.records()]}, "
                             f"fills {[(f.fill_id, f.size.value, f.price.value) for f in fills.records()]}, "
                             f"unfilled {sim.sim.unfilled[:5]} marks {sim.sim.marks}, margin {margin_of(stub, 'alice')}") from None

    sent = orders.records_to_end()
    assert len(sent) > sent_before >= 1
    ids = [o.order_id for o in sent]
    assert len(set(ids)) == len(ids), f"an order id was sent twice: {ids}"
    assert ids == [f"liq-alice-1-{k}" for k in range(len(ids))]
    for o in sent:
        assert o.side == account_pb2.SIDE_SELL and o.reduce_only and o.episode == 1
        assert Decimal(o.bankruptcy_price.value) <= Decimal(o.limit_price.value) <= Decimal("51000")
        assert Decimal(o.size.value) <= Decimal("0.1")          # paced: 10 % of the notional per round
    assert sum(Decimal(o.size.value) for o in sent) <= 1
    ev = events.records_to_end()
    assert kinds(ev, "alice")[0] == "STARTED" and kinds(ev, "alice").count("STARTED") == 1
    # Margin agrees: restored to IM·(1 + 2 %).
    m = margin_of(stub, "alice")
    assert Decimal(m.equity_usd.value) >= Decimal(m.im_usd.value) * Decimal("1.02")
    # Fees: each liquidation fill's fee to the fund exactly once (the restart re-credited nothing).
    liq_fills = {f.fill_id: f for f in fills.records_to_end() if f.liquidation and f.account_id == "alice"}
    assert liq_fills and all(f.order_id in ids for f in liq_fills.values())
    fees = sum(Decimal(f.fee_usd.value) for f in liq_fills.values())
    assert fees > 0
    lchannel = grpc.insecure_channel(f"127.0.0.1:{liq.grpc_port}")
    lstub = liquidation_pb2_grpc.LiquidationServiceStub(lchannel)
    seen = {}

    def fund_holds_the_fees():
        # a slice resting in the simulator may still fill after RESTORED: the fees of the fills so far
        seen["fills"] = {f.fill_id: f for f in fills.records() if f.liquidation and f.account_id == "alice"}
        seen["fund"] = lstub.GetInsuranceFund(lpb.GetInsuranceFundRequest(history_limit=100))
        total = sum((Decimal(f.fee_usd.value) for f in seen["fills"].values()), Decimal(0))
        return Decimal(seen["fund"].balance_usd.value) == total

    try:
        # the restarted instance reads trades.fills from the offsets its predecessor committed (assigned
        # directly: no group join to wait for) and credits each fill's fee once, by its offset
        wait_for(fund_holds_the_fees, timeout_s=30, what="fees in the fund")
    except AssertionError:
        raise AssertionError(f"fund {seen['fund'].balance_usd.value}, history "
                             f"{[(h.reference, h.delta_usd.value) for h in seen['fund'].history]}; fills "
                             f"{[(f.fill_id, f.fee_usd.value) for f in seen['fills'].values()]}") from None
    assert len(seen["fund"].history) == len(seen["fills"])
    assert not lstub.GetQueue(lpb.GetQueueRequest()).entries
    listed = lstub.ListLiquidations(lpb.ListLiquidationsRequest(account_id="alice", limit=1000)).events
    assert any(e.kind == lpb.LIQUIDATION_EVENT_KIND_RESTORED for e in listed)
    for c in (channel, pf_channel, lchannel):
        c.close()
    for t in (orders, events, fills):
        t.close()
    pub.close()
