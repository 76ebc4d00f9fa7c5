"""``kill -9`` of the liquidation service mid-episode doubles nothing: the service as its own process
(``python -m marginflow.liquidation``), killed with SIGKILL after its first orders, started again; the episode
goes on from the slices its acknowledged events recorded, every order id is sent once and contiguous, and each
fill's fee reaches the fund once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from decimal import Decimal

from marginflow.api.account.v1 import account_pb2
from marginflow.api.liquidation.v1 import liquidation_pb2 as lpb

from liq_it_helpers import Publisher, Topic, deposit, margin_of, margin_stub, trade, wait_for
from margin_it_helpers import mark, risk_params

BTC = "BTC-PERP"


def kinds(events, account):
    return [lpb.LiquidationEventKind.Name(e.kind).removeprefix("LIQUIDATION_EVENT_KIND_")
            for e in events if e.account_id == account]


def test_kill_9_mid_episode_sends_no_order_twice_and_credits_no_fee_twice(
        mg_settings, liq_env, start_margin, start_portfolio, start_exchange_sim, kafka_bootstrap, tmp_path):
    topics = mg_settings.common.topics
    pub = Publisher(kafka_bootstrap)
    pub.send(topics.risk_params, "current", risk_params())
    pub.send(topics.marks, BTC, mark(BTC, "BTC", 60000.0))
    margin = start_margin(grpc=True)
    portfolio = start_portfolio(margin.grpc_port)
    pub.send(topics.account_events, "bob", deposit("bob", "11500", "dep-bob"))
    pub.send(topics.account_events, "house", deposit("house", "10000000", "dep-house"))
    trade(pub, topics.fills, "t1", "bob", "house", BTC, "1", "60000")
    channel, stub = margin_stub(margin.grpc_port)
    wait_for(lambda: (lambda m: m and m.equity_usd.value == "11500.00" and Decimal(m.im_usd.value) > 0)(
        margin_of(stub, "bob")), what="bob margined")
    start_exchange_sim()
    env = {**os.environ, **liq_env, "MF_LIQUIDATION_MARGIN_ADDRESS": f"127.0.0.1:{margin.grpc_port}",
           "MF_LIQUIDATION_PORTFOLIO_ADDRESS": f"127.0.0.1:{portfolio.grpc_port}"}

    def spawn(name: str) -> subprocess.Popen:
        log = open(tmp_path / f"{name}.log", "wb")
        return subprocess.Popen([sys.executable, "-m", "marginflow.liquidation"], env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    first = spawn("first")
    second = None
    readers = []
    try:
        started = lambda name: b"liquidation started" in (tmp_path / f"{name}.log").read_bytes()  # noqa: E731
        wait_for(lambda: started("first"), timeout_s=90, what="the first instance started")
        assert first.poll() is None
        # the service created its topics at start
        orders = Topic(kafka_bootstrap, topics.liquidation_orders, lpb.LiquidationOrder)
        events = Topic(kafka_bootstrap, topics.liquidation_events, lpb.LiquidationEvent)
        fills = Topic(kafka_bootstrap, topics.fills, account_pb2.Fill)
        fund = Topic(kafka_bootstrap, topics.liquidation_fund, lpb.InsuranceFundState)
        readers = [orders, events, fills, fund]
        # 51,000: equity 11,500 − 9,000 = 2,500 < MM → LIQUIDATION; paced slices of 0.1 BTC a round.
        pub.send(topics.marks, BTC, mark(BTC, "BTC", 51000.0))
        wait_for(lambda: len(orders.records()) >= 1, timeout_s=60, what="first liquidation order")
        first.send_signal(signal.SIGKILL)         # kill -9: no flush, no commit, no goodbye
        assert first.wait(timeout=10) == -signal.SIGKILL
        before = [o.order_id for o in orders.records_to_end()]
        second = spawn("second")
        wait_for(lambda: "RESTORED" in kinds(events.records(), "bob"), timeout_s=90,
                 what=f"episode restored after the kill (log: {tmp_path / 'second.log'})")
        sent = [o.order_id for o in orders.records_to_end()]
        assert len(sent) > len(before) >= 1
        assert len(set(sent)) == len(sent), f"an order id was sent twice: {sent}"
        assert sent == [f"liq-bob-1-{k}" for k in range(len(sent))]     # contiguous: no slice reused or skipped
        assert kinds(events.records_to_end(), "bob").count("STARTED") == 1      # the episode went on, not restarted
        # each fill's fee once: the fund's last state = the sum of the fees of bob's liquidation fills
        # (both topics are read by background readers: the sums are taken again until they agree; fees are
        # credited once the restarted instance holds the fills partitions, after the killed member's session)
        def fees_of_fills() -> Decimal:
            liq = {f.fill_id: f for f in fills.records() if f.liquidation and f.account_id == "bob"}
            return sum((Decimal(f.fee_usd.value) for f in liq.values()), Decimal(0))

        def fund_balance() -> Decimal | None:
            records = fund.records()
            return Decimal(records[-1].balance_usd.value) if records else None

        try:
            wait_for(lambda: fees_of_fills() > 0 and fund_balance() == fees_of_fills(), timeout_s=90,
                     what="fund = the fees of the liquidation fills")
        except AssertionError:
            raise AssertionError(f"fund {fund_balance()} against fees {fees_of_fills()}; events {kinds(events.records(), 'bob')}; credits "
                                 f"{[(e.reference, e.amount_usd.value) for e in events.records() if e.kind == lpb.LIQUIDATION_EVENT_KIND_FEE_TO_FUND]}"
                                 f"; the restarted instance's log ends:\n"
                                 f"{(tmp_path / 'second.log').read_bytes()[-6000:].decode(errors='replace')}") from None
        credits = [e.reference for e in events.records() if e.kind == lpb.LIQUIDATION_EVENT_KIND_FEE_TO_FUND]
        assert len(credits) == len(set(credits))
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
        channel.close()
        for t in readers:
            t.close()
        pub.close()
