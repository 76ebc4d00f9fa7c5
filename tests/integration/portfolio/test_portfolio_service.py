"""The portfolio service on the real Kafka and Redis."""

from __future__ import annotations

from decimal import Decimal as D

import grpc
import pytest
import redis

from marginflow.api.account.v1 import account_pb2 as pb
from marginflow.api.account.v1 import account_pb2_grpc
from marginflow.api.common.v1 import common_pb2
from marginflow.portfolio.adapters.codec import account_from_proto, fill_to_proto
from marginflow.portfolio.adapters.redis_store import RedisStateStore
from marginflow.portfolio.domain.ledger import apply_command
from marginflow.portfolio.domain.model import (
    Account, Deposit, Fill, IsolatedTransfer, MarginMode, ModeChange, Side, Withdrawal)

from portfolio_it_helpers import ADMIN_TOKEN, dec, read_topic, wait_for

A = "acct-a"
B = "acct-b"


def fill(n, account, instrument, side, size, price, fee="0"):
    return Fill(f"fill-{account}-{n}", account, instrument, side, D(size), D(price), D(fee), 1_700_000_000_000 + n)


def state(service, account_id) -> Account | None:
    return service.app.store.get(account_id)


def stub(service):
    channel = grpc.insecure_channel(f"127.0.0.1:{service.app.grpc_port}")
    return account_pb2_grpc.AccountServiceStub(channel), channel


def auth(token=ADMIN_TOKEN):
    return (("authorization", f"Bearer {token}"),)


def test_fills_and_events_become_account_state_readable_over_grpc(start_service, publish, pf_settings):
    service = start_service()
    publish(Deposit("d-a", A, "USDC", D(10000), 1), Deposit("d-b", B, "USDC", D(5000), 1),
            ModeChange("m-b", B, "ETH-PERP", MarginMode.ISOLATED, 2), IsolatedTransfer("t-b", B, "ETH-PERP", D(1000), 3))
    wait_for(lambda: service.app.totals.events_applied == 4, what="events applied")   # two topics: no order between them
    publish(fill(1, A, "BTC-PERP", Side.BUY, "0.5", "60000", "15"),
            fill(2, A, "BTC-PERP", Side.SELL, "0.2", "62000", "6.2"),
            fill(1, B, "ETH-PERP", Side.SELL, "2", "3000", "3"),
            fill(2, B, "BTC-PERP", Side.SELL, "0.1", "60000"))
    wait_for(lambda: service.app.totals.fills_applied + service.app.totals.events_applied == 8, what="8 applied")
    a = state(service, A)
    # 10,000 − 15 + 0.2 × 2,000 − 6.2 = 10,378.8 USDC, +0.3 BTC @ 60,000
    assert a.balance("USDC") == D("10378.8") and a.positions["BTC-PERP"].size == D("0.3")
    b = state(service, B)
    assert b.balance("USDC") == D(4000)
    assert b.positions["ETH-PERP"].isolated_collateral_usd == D(997)   # 1,000 − 3 fee

    client, channel = stub(service)
    try:
        snap = client.GetAccount(pb.GetAccountRequest(account_id=A))
        assert {x.asset: x.amount.value for x in snap.balances} == {"USDC": "10378.8"}
        assert snap.positions[0].size.value == "0.3" and snap.revision == 3
        with pytest.raises(grpc.RpcError) as err:
            client.GetAccount(pb.GetAccountRequest(account_id="nobody"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as err:
            client.GetAccount(pb.GetAccountRequest(account_id="bad id {x}"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        page1 = client.ListAccounts(pb.ListAccountsRequest(page_size=1))
        page2 = client.ListAccounts(pb.ListAccountsRequest(page_size=1, page_token=page1.next_page_token))
        assert [s.account_id for s in (*page1.accounts, *page2.accounts)] == [A, B]
        with pytest.raises(grpc.RpcError) as err:
            client.ListAccounts(pb.ListAccountsRequest(page_size=5000))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        btc = client.PositionsByInstrument(pb.PositionsByInstrumentRequest(instrument="BTC-PERP"))
        assert [(p.account_id, p.position.size.value) for p in btc.positions] == [(A, "0.3"), (B, "-0.1")]
        eth = client.PositionsByInstrument(pb.PositionsByInstrumentRequest(instrument="ETH-PERP"))
        assert [(p.account_id, p.position.mode) for p in eth.positions] == [(B, pb.MARGIN_MODE_ISOLATED)]
        with pytest.raises(grpc.RpcError) as err:
            client.PositionsByInstrument(pb.PositionsByInstrumentRequest(instrument="DOGE-PERP"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        channel.close()

    # closing B's BTC position drops it from the instrument index
    publish(fill(3, B, "BTC-PERP", Side.BUY, "0.1", "59000"))
    wait_for(lambda: state(service, B).positions["BTC-PERP"].size == 0, what="B flat in BTC")
    assert [a for a, _ in service.app.store.positions_by_instrument("BTC-PERP", "", 10)] == [A]
    # the compacted topic carries the latest snapshot of each account, with its applied offsets
    snaps = read_topic(pf_settings.common.bootstrap, pf_settings.common.topics.positions, pb.AccountSnapshot)
    latest = {s.account_id: s for s in snaps}
    assert account_from_proto(latest[A]) == state(service, A)
    assert latest[A].applied_offsets


def test_redelivered_and_republished_fills_change_nothing(start_service, publish, pf_settings):
    fills = [fill(n, A, "BTC-PERP", Side.BUY, "0.01", str(60000 + n), "0.3") for n in range(20)]
    publish(Deposit("d-a", A, "USDC", D(10000), 1), *fills)
    # 1) a consumer that applies a batch and dies before committing its offsets
    first = start_service(consume=False)
    applied = 0

    def poll_and_apply() -> bool:
        nonlocal applied
        records = first.app.source.poll()
        if records:
            applied += first.app.applier.apply_batch(records).fills_applied
        return applied == 20

    wait_for(poll_and_apply, what="20 fills applied by the first consumer")
    after_first = first.app.store.get_payload(A)
    first.stop()   # closes without committing
    # 2) the next consumer of the group gets every record again and skips each one by offset
    second = start_service()
    wait_for(lambda: second.app.totals.duplicates == 21, what="21 redelivered records skipped")
    assert second.app.totals.fills_applied == 0 and second.app.totals.events_applied == 0
    assert second.app.store.get_payload(A) == after_first
    # 3) the same fills published again (new offsets, same ids) are recognised by id
    publish(*fills[:5])
    wait_for(lambda: second.app.totals.duplicates == 26, what="5 republished fills skipped")
    acct = state(second, A)
    assert acct.positions["BTC-PERP"].size == D("0.2") and acct.revision == 21
    # 20 × 0.3 USD fees
    assert acct.balance("USDC") == D(10000) - D(6)


def test_restart_with_redis_flushed_rebuilds_identical_state(start_service, publish, pf_settings):
    commands = [Deposit("d-a", A, "USDC", D(20000), 1), Deposit("d-b", B, "BTC", D("1.5"), 1),
                ModeChange("m-a", A, "SOL-PERP", MarginMode.ISOLATED, 2), IsolatedTransfer("t-a", A, "SOL-PERP", D(500), 3)]
    commands += [fill(n, A if n % 2 else B, ("BTC-PERP", "ETH-PERP", "SOL-PERP")[n % 3],
                      Side.BUY if n % 4 < 2 else Side.SELL, "0.1", str(100 + n), "0.05") for n in range(60)]
    first = start_service()
    # Fills and events travel on two topics, whose relative order is not defined: the mode change
    # must be in before the first SOL fill of A, as the exchange would guarantee.
    publish(*commands[:4])
    wait_for(lambda: first.app.totals.events_applied == 4, what="4 events applied")
    publish(*commands[4:34])
    wait_for(lambda: first.app.totals.fills_applied == 30, what="30 fills applied")
    assert first.app.totals.rejected == 0
    before = {a: state(first, a) for a in (A, B)}
    first.stop()
    flusher = RedisStateStore(redis.Redis.from_url(pf_settings.common.redis_url), pf_settings.redis_prefix)
    deleted = flusher.delete_namespace()   # Redis keeps nothing on disk: a restart finds it empty
    assert deleted >= 3   # two accounts, the indexes, the meta key
    publish(*commands[34:])   # arrives while the service is down
    second = start_service(consume=False)
    assert second.app.rebuilt_accounts == 2
    assert {a: state(second, a) for a in (A, B)} == before   # identical, offsets and recent ids included
    thread, stopping = second.app.run_in_thread()
    second.thread, second.stopping = thread, stopping
    wait_for(lambda: second.app.totals.fills_applied == 30, what="the other 30 fills")
    assert second.app.totals.duplicates == 0
    # the same result as applying every command once, in order, in process
    expected: dict[str, Account] = {}
    for c in commands:
        acct = expected.get(c.account_id) or Account(c.account_id)
        expected[c.account_id], _ = apply_command(acct, c, None, second.app.rules)
    for account_id in (A, B):
        got, want = state(second, account_id), expected[account_id]
        assert (got.balances, got.positions, got.revision, got.recent_ids) == \
               (want.balances, want.positions, want.revision, want.recent_ids)


def test_admin_calls_need_the_token_and_respect_the_free_balance(start_service, publish):
    service = start_service()
    client, channel = stub(service)
    try:
        deposit = pb.AdminDepositRequest(account_id=A, asset="USDC", amount=dec("1000"), request_id="r-1")
        with pytest.raises(grpc.RpcError) as err:
            client.Deposit(deposit)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:
            client.Deposit(deposit, metadata=auth("wrong"))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert service.app.totals.events_applied == 0

        reply = client.Deposit(deposit, metadata=auth())
        assert reply.accepted and reply.event_id == "adm-r-1"
        wait_for(lambda: state(service, A) and state(service, A).balance("USDC") == 1000, what="deposit applied")
        assert client.Deposit(deposit, metadata=auth()).event_id == "adm-r-1"   # same request: once only

        with pytest.raises(grpc.RpcError) as err:
            client.Withdraw(pb.AdminWithdrawRequest(account_id=A, asset="USDC", amount=dec("1000.01"),
                                                    request_id="r-2"), metadata=auth())
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as err:
            client.Withdraw(pb.AdminWithdrawRequest(account_id=A, asset="USDC", amount=dec("-1"),
                                                    request_id="r-3"), metadata=auth())
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        client.Withdraw(pb.AdminWithdrawRequest(account_id=A, asset="USDC", amount=dec("400"), request_id="r-4"),
                        metadata=auth())
        client.SetMarginMode(pb.AdminSetModeRequest(account_id=A, instrument="ETH-PERP",
                                                    mode=pb.MARGIN_MODE_ISOLATED, request_id="r-5"), metadata=auth())
        wait_for(lambda: state(service, A).revision == 3, what="withdrawal and mode change applied")
        client.TransferIsolated(pb.AdminTransferIsolatedRequest(account_id=A, instrument="ETH-PERP",
                                                                amount_usd=dec("250"), request_id="r-6"),
                                metadata=auth())
        wait_for(lambda: state(service, A).revision == 4, what="transfer applied")
        acct = state(service, A)
        assert acct.balance("USDC") == D(350)
        assert acct.positions["ETH-PERP"].isolated_collateral_usd == D(250)
        with pytest.raises(grpc.RpcError) as err:
            client.SetMarginMode(pb.AdminSetModeRequest(account_id=A, instrument="ETH-PERP",
                                                        mode=pb.MARGIN_MODE_ISOLATED, request_id="r-7"),
                                 metadata=auth("Bearer-less"))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        channel.close()


def test_malformed_or_impossible_inputs_are_dead_lettered_and_change_nothing(start_service, publish, pf_settings):
    topics = pf_settings.common.topics
    service = start_service()
    publish(Deposit("d-a", A, "USDC", D(100), 1))
    wait_for(lambda: service.app.totals.events_applied == 1, what="deposit")
    before = service.app.store.get_payload(A)
    nan_size = fill_to_proto(fill(2, A, "BTC-PERP", Side.BUY, "1", "60000"))
    nan_size.size.value = "NaN"
    publish(fill(1, A, "XRP-PERP", Side.BUY, "1", "0.5"),             # unknown instrument
            fill(3, A, "BTC-PERP", Side.BUY, "0", "60000"),           # zero size
            Deposit("d-neg", A, "USDC", D(-50), 2),                   # negative deposit
            Withdrawal("w-big", A, "USDC", D(500), 3),                # more than the balance
            raw=[(topics.fills, A.encode(), nan_size.SerializeToString()),   # non-finite size
                 (topics.fills, A.encode(), b"\xff\xff not protobuf")])      # malformed payload
    letters = read_topic(pf_settings.common.bootstrap, topics.portfolio_dlq, common_pb2.DeadLetter, 6)
    reasons = sorted(letter.reason_code for letter in letters)
    assert reasons == sorted(["unknown_instrument", "non_positive_size", "non_positive_amount",
                              "insufficient_balance", "non_finite", "malformed"])
    assert all(letter.service == "portfolio" and letter.reason and letter.source_offset >= 0 for letter in letters)
    assert service.app.store.get_payload(A) == before
    # the service keeps going: a good fill afterwards is applied
    publish(fill(9, A, "BTC-PERP", Side.BUY, "0.001", "60000"))
    wait_for(lambda: state(service, A).positions.get("BTC-PERP"), what="good fill applied")
    assert state(service, A).balance("USDC") == D(100)


def test_garbage_payloads_and_contradicting_keys_are_dead_lettered(start_service, publish, pf_settings,
                                                                   produce_compressed):
    topics = pf_settings.common.topics
    service = start_service()
    huge = fill_to_proto(fill(5, A, "BTC-PERP", Side.BUY, "1", "60000"))
    huge.order_id = "x" * (1024 * 1024)
    produce_compressed(pf_settings.common.bootstrap, topics.fills, A.encode(), huge.SerializeToString())
    publish(raw=[(topics.fills, A.encode(), b""),                                          # empty payload
                 (topics.account_events, A.encode(), fill_to_proto(fill(6, A, "BTC-PERP", Side.BUY, "1", "1"))
                  .SerializeToString()),                                                  # a Fill on account.events
                 (topics.fills, B.encode(), fill_to_proto(fill(7, A, "BTC-PERP", Side.BUY, "1", "1"))
                  .SerializeToString())])                                                 # key ≠ account
    letters = read_topic(pf_settings.common.bootstrap, topics.portfolio_dlq, common_pb2.DeadLetter, 4)
    assert sorted(letter.reason_code for letter in letters) == sorted(
        ["oversized", "empty_payload", "empty_event", "key_mismatch"])
    assert all(letter.service == "portfolio" and letter.reason for letter in letters)
    assert service.app.totals.fills_applied == 0 and state(service, A) is None
    publish(fill(9, A, "BTC-PERP", Side.BUY, "0.001", "60000"))          # the service goes on
    wait_for(lambda: state(service, A) and state(service, A).positions.get("BTC-PERP"), what="good fill applied")
