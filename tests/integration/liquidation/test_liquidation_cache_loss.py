"""A bankruptcy takeover is done once, whatever happens to Redis or to the acknowledgement of its records.

The liquidation service has a redis-server of this test alone. Bob goes bankrupt;
the first publication of the take-over's records reaches the broker but its acknowledgement is lost (a broker
slow after a restart answers after the producer's timeout). Then Redis is emptied (FLUSHALL) in the middle of
the episode and the liquidation service is restarted from Kafka, and bob's BANKRUPT call arrives again.

What must hold: the take-over was decided once — one BANKRUPT, one FUND_TAKEOVER and one DEFICIT_COVERED
event for bob's episode, every copy of a take-over fill on ``trades.fills`` identical (the retry sent the same
records, it did not compute them again), the fund's deposit once; portfolio applied it once (bob flat at
exactly 0 USDC, the house long the 1 BTC it took over); the fund's copy in Redis is written back after the
flush and equals the ledger rebuilt from ``liquidation.fund``.
"""

from __future__ import annotations

from decimal import Decimal

import grpc
import redis
from kafka.errors import KafkaTimeoutError

from marginflow.api.account.v1 import account_pb2, account_pb2_grpc
from marginflow.api.liquidation.v1 import liquidation_pb2 as lpb
from marginflow.api.margin.v1 import margin_pb2

from liq_it_helpers import Publisher, Topic, deposit, margin_of, margin_stub, trade, wait_for
from margin_it_helpers import mark, risk_params

BTC = "BTC-PERP"


def kinds(events, account):
    return [lpb.LiquidationEventKind.Name(e.kind).removeprefix("LIQUIDATION_EVENT_KIND_")
            for e in events if e.account_id == account]


def _lose_first_ack(app) -> list[int]:
    """The first publication of effects is sent, then fails as an acknowledgement that came too late."""
    publisher = app.engine.publisher
    real = publisher.publish_effects
    calls = [0]

    def publish_effects(fills, deposits, fund):
        calls[0] += 1
        real(fills, deposits, fund)
        if calls[0] == 1 and fills:
            raise KafkaTimeoutError("Timeout waiting for future")

    publisher.publish_effects = publish_effects
    return calls


def test_a_bankruptcy_takeover_is_done_once_across_a_lost_ack_flushall_and_a_restart(
        mg_settings, start_margin, start_portfolio, start_liquidation, start_exchange_sim, kafka_bootstrap,
        private_redis):
    topics = mg_settings.common.topics
    pub = Publisher(kafka_bootstrap)
    pub.send(topics.risk_params, "current", risk_params())
    pub.send(topics.marks, BTC, mark(BTC, "BTC", 60000.0))
    margin = start_margin(grpc=True)
    portfolio = start_portfolio(margin.grpc_port)
    for account, usdc in (("bob", "5000"), ("carol", "100000"), ("house", "10000000")):
        pub.send(topics.account_events, account, deposit(account, usdc, f"dep-{account}"))
    trade(pub, topics.fills, "t1", "bob", "carol", BTC, "1", "60000")      # bob long 1 BTC, carol short
    channel, stub = margin_stub(margin.grpc_port)
    wait_for(lambda: (lambda m: m and Decimal(m.im_usd.value) > 0)(margin_of(stub, "bob")), what="bob margined")
    start_exchange_sim()
    redis_env = {"REDIS_URL": private_redis.url, "MF_LIQUIDATION_FUND_INITIAL_USD": "5000"}
    liq = start_liquidation(margin.grpc_port, portfolio.grpc_port, **redis_env)
    calls = _lose_first_ack(liq)
    events = Topic(kafka_bootstrap, topics.liquidation_events, lpb.LiquidationEvent)
    acct_events = Topic(kafka_bootstrap, topics.account_events, account_pb2.AccountEvent)
    fills = Topic(kafka_bootstrap, topics.fills, account_pb2.Fill)
    fund_states = Topic(kafka_bootstrap, topics.liquidation_fund, lpb.InsuranceFundState)
    calls_topic = Topic(kafka_bootstrap, topics.margin_calls, margin_pb2.MarginCall)
    pf = account_pb2_grpc.AccountServiceStub(grpc.insecure_channel(f"127.0.0.1:{portfolio.grpc_port}"))
    client = redis.Redis.from_url(private_redis.url)
    try:
        # BTC 60,000 → 54,000: bob's equity 5,000 − 6,000 = −1,000; the fund (5,000) takes the position over.
        pub.send(topics.marks, BTC, mark(BTC, "BTC", 54000.0))
        wait_for(lambda: "DEFICIT_COVERED" in kinds(events.records(), "bob"), timeout_s=60,
                 what="bob's deficit covered")
        assert calls[0] >= 2                       # the lost acknowledgement was retried
        client.flushall()                           # Redis emptied in the middle of the episode
        wait_for(lambda: client.exists(liq.fund_cache.key), timeout_s=20, what="the fund written back to Redis")
        assert Decimal(client.hget(liq.fund_cache.key, "balance_usd").decode()) == liq.engine.ledger.balance
        # a restart: everything it knows comes from Kafka (the fund topic, its events)
        start_liquidation.stop(liq)
        liq = start_liquidation(margin.grpc_port, portfolio.grpc_port, **redis_env)
        # bob's BANKRUPT call again (a margin restart announcing it once more)
        bankrupt = [c for c in calls_topic.records_to_end() if c.account_id == "bob" and c.state == 4]
        if bankrupt:
            pub.send(topics.margin_calls, "bob", bankrupt[-1])
        bob = wait_for(lambda: (lambda s: s if all(Decimal(p.size.value) == 0 for p in s.positions) else None)(
            pf.GetAccount(account_pb2.GetAccountRequest(account_id="bob"))), timeout_s=60, what="bob closed out")
        # the second instance has read the call (its group offsets passed it) before the checks
        wait_for(lambda: liq.inputs.raw.assignment() and all(
            liq.inputs.raw.position(tp) >= end for tp, end in liq.inputs.raw.end_offsets(
                list(liq.inputs.raw.assignment())).items()), timeout_s=60, what="the restarted service caught up")
        mine = kinds(events.records_to_end(), "bob")
        assert mine.count("BANKRUPT") == 1 and mine.count("FUND_TAKEOVER") == 1 and mine.count("DEFICIT_COVERED") == 1
        copies: dict[str, set] = {}
        for f in fills.records_to_end():
            if f.fill_id.startswith("liqbk-bob-"):
                copies.setdefault(f.fill_id, set()).add((f.account_id, f.side, f.size.value, f.price.value))
        assert set(copies) == {"liqbk-bob-1-0-t", "liqbk-bob-1-0-t-h"}
        assert all(len(v) == 1 for v in copies.values()), copies          # retried as they were
        assert [e.event_id for e in acct_events.records_to_end() if e.event_id.startswith("liq-fund-bob")] \
            in (["liq-fund-bob-1"], ["liq-fund-bob-1", "liq-fund-bob-1"])
        usdc = next(Decimal(b.amount.value) for b in bob.balances if b.asset == "USDC")
        assert usdc == Decimal("0")      # 5,000 − 6,000 realised + 1,000 from the fund, once
        house = pf.GetAccount(account_pb2.GetAccountRequest(account_id="house"))
        assert {p.instrument: Decimal(p.size.value) for p in house.positions if Decimal(p.size.value)} == {BTC: 1}
        # the restarted service's fund is the last one on Kafka, and so is its copy in Redis
        wait_for(lambda: (lambda r: r and Decimal(r[-1].balance_usd.value) == Decimal("4000.00"))(
            fund_states.records()), timeout_s=20, what="the fund's last state on Kafka")
        assert liq.engine.ledger.balance == Decimal("4000.00")
        wait_for(lambda: client.exists(liq.fund_cache.key), timeout_s=20, what="the fund in Redis")
        assert Decimal(client.hget(liq.fund_cache.key, "balance_usd").decode()) == Decimal("4000.00")
    finally:
        client.close()
        channel.close()
        for t in (events, acct_events, fills, fund_states, calls_topic):
            t.close()
        pub.close()
