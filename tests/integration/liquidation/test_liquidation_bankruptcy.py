"""Bankrupt accounts on the real Kafka: the fund pays a deficit (an account.events Deposit, never going
negative); with the fund exhausted, ADL closes the bankrupt position at the bankruptcy price against the
ranked opposite position (fills for both accounts, deterministic ids); every step an event."""

from __future__ import annotations

from decimal import Decimal

import grpc

from marginflow.api.account.v1 import account_pb2, account_pb2_grpc
from marginflow.api.liquidation.v1 import liquidation_pb2 as lpb

from liq_it_helpers import Publisher, Topic, deposit, margin_of, margin_stub, trade, wait_for
from margin_it_helpers import mark, risk_params

BTC, ETH = "BTC-PERP", "ETH-PERP"


def kinds(events, account):
    return [lpb.LiquidationEventKind.Name(e.kind).removeprefix("LIQUIDATION_EVENT_KIND_")
            for e in events if e.account_id == account]


def test_fund_pays_a_deficit_then_exhausted_fund_means_adl_at_the_bankruptcy_price(
        mg_settings, start_margin, start_portfolio, start_liquidation, start_exchange_sim, kafka_bootstrap):
    topics = mg_settings.common.topics
    pub = Publisher(kafka_bootstrap)
    pub.send(topics.risk_params, "current", risk_params())
    pub.send(topics.marks, BTC, mark(BTC, "BTC", 60000.0))
    pub.send(topics.marks, ETH, mark(ETH, "ETH", 3000.0))
    margin = start_margin(grpc=True)
    portfolio = start_portfolio(margin.grpc_port)
    for account, usdc in (("bob", "5000"), ("dave", "2500"), ("carol", "100000"), ("house", "10000000")):
        pub.send(topics.account_events, account, deposit(account, usdc, f"dep-{account}"))
    trade(pub, topics.fills, "t1", "bob", "carol", BTC, "1", "60000")      # bob long 1 BTC, carol short
    trade(pub, topics.fills, "t2", "dave", "carol", ETH, "10", "3000")     # dave long 10 ETH, carol short
    channel, stub = margin_stub(margin.grpc_port)
    for account in ("bob", "dave", "carol"):
        wait_for(lambda a=account: (lambda m: m and Decimal(m.im_usd.value) > 0)(margin_of(stub, a)),
                 what=f"{account} margined")
    start_exchange_sim()
    start_liquidation(margin.grpc_port, portfolio.grpc_port, MF_LIQUIDATION_FUND_INITIAL_USD="1000")
    events = Topic(kafka_bootstrap, topics.liquidation_events, lpb.LiquidationEvent)
    acct_events = Topic(kafka_bootstrap, topics.account_events, account_pb2.AccountEvent)
    fills = Topic(kafka_bootstrap, topics.fills, account_pb2.Fill)
    fund_states = Topic(kafka_bootstrap, topics.liquidation_fund, lpb.InsuranceFundState)

    # BTC 60,000 → 54,000: bob's equity 5,000 − 6,000 = −1,000. The fund (1,000) pays it all.
    pub.send(topics.marks, BTC, mark(BTC, "BTC", 54000.0))
    wait_for(lambda: "DEFICIT_COVERED" in kinds(events.records(), "bob"), timeout_s=60, what="bob's deficit covered")
    dep = wait_for(lambda: [e for e in acct_events.records() if e.event_id == "liq-fund-bob-1"], what="fund deposit")
    assert dep[0].deposit.asset == "USDC" and Decimal(dep[0].deposit.amount.value) == Decimal("1000.00")
    assert kinds(events.records_to_end(), "bob")[:2] == ["STARTED", "BANKRUPT"]
    assert "ADL" not in kinds(events.records_to_end(), "bob")
    pf = account_pb2_grpc.AccountServiceStub(grpc.insecure_channel(f"127.0.0.1:{portfolio.grpc_port}"))
    bob = wait_for(lambda: (lambda s: s if all(Decimal(p.size.value) == 0 for p in s.positions) else None)(
        pf.GetAccount(account_pb2.GetAccountRequest(account_id="bob"))), what="bob closed out")
    usdc = next(Decimal(b.amount.value) for b in bob.balances if b.asset == "USDC")
    assert usdc == Decimal("0")       # 5,000 − 6,000 realised + 1,000 from the fund: exactly zero

    # ETH 3,000 → 2,700: dave's equity 2,500 − 3,000 = −500; the fund is empty → ADL against carol at b.
    pub.send(topics.marks, ETH, mark(ETH, "ETH", 2700.0))
    wait_for(lambda: "ADL" in kinds(events.records(), "dave"), what="ADL of dave")
    adl = wait_for(lambda: (lambda f: f if len(f) == 2 else None)(
        {f.fill_id: f for f in fills.records() if f.fill_id.startswith("adl-dave-1-")}), what="ADL fills")
    mine, theirs = adl["adl-dave-1-0-0"], adl["adl-dave-1-0-0-c"]
    assert mine.account_id == "dave" and mine.side == account_pb2.SIDE_SELL and Decimal(mine.size.value) == 10
    assert theirs.account_id == "carol" and theirs.side == account_pb2.SIDE_BUY and Decimal(theirs.size.value) == 10
    # The bankruptcy price: 2,700 − (−500)/10 = 2,750 — dave ends at zero, carol gives up 500 of her profit.
    assert Decimal(mine.price.value) == Decimal(theirs.price.value) == Decimal("2750")
    dave = wait_for(lambda: (lambda s: s if all(Decimal(p.size.value) == 0 for p in s.positions) else None)(
        pf.GetAccount(account_pb2.GetAccountRequest(account_id="dave"))), what="dave deleveraged")
    assert next(Decimal(b.amount.value) for b in dave.balances if b.asset == "USDC") == Decimal("0")
    adl_events = [e for e in events.records_to_end() if e.kind == lpb.LIQUIDATION_EVENT_KIND_ADL]
    assert [e.counterparty_account_id for e in adl_events] == ["carol"]
    # The fund never went negative, and ended at 0.
    states = fund_states.records_to_end()
    assert states and all(Decimal(s.balance_usd.value) >= 0 for s in states)
    assert Decimal(states[-1].balance_usd.value) == 0
    channel.close()
    for t in (events, acct_events, fills, fund_states):
        t.close()
    pub.close()
