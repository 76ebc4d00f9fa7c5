"""AccountService on a real gRPC server (the running portfolio service) under fuzzed requests and
metadata: only documented status codes, for reads and for admin calls with and without the token."""

from __future__ import annotations

from decimal import Decimal as D

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grpc_fuzz import DECIMALS, DOCUMENTED, call, fuzz_every_rpc
from marginflow.api.account.v1 import account_pb2 as pb
from marginflow.portfolio.domain.model import Deposit, Fill, Side
from portfolio_it_helpers import ADMIN_TOKEN, dec, wait_for

SERVICE = pb.DESCRIPTOR.services_by_name["AccountService"]
METADATA = st.sampled_from([
    (), (("authorization", f"Bearer {ADMIN_TOKEN}"),), (("authorization", "Bearer wrong"),),
    (("authorization", "garbage"),), (("authorization", "Bearer " + "x" * 4000),), (("x-other", "1"),),
])


@pytest.fixture
def channel(start_service, publish):
    """The running service with one funded account holding a position."""
    service = start_service()
    publish(Deposit("d-f", "acct-f", "USDC", D(1000), 1),
            Fill("f-f", "acct-f", "BTC-PERP", Side.BUY, D("0.01"), D("60000"), D("0"), 2))
    wait_for(lambda: service.app.totals.events_applied + service.app.totals.fills_applied == 2, what="setup")
    ch = grpc.insecure_channel(f"127.0.0.1:{service.app.grpc_port}")
    yield ch
    ch.close()


# The function-scoped fixture runs once for all examples: they share one running service.
@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_fuzz_every_rpc_answers_only_documented_codes(channel, data):
    fuzz_every_rpc(data, channel, SERVICE, metadata=METADATA, known={
        "account_id": ["acct-f", "nobody"], "asset": ["USDC", "BTC", "DOGE"],
        "instrument": ["BTC-PERP", "ETH-PERP", "DOGE-PERP"], "request_id": ["r-1", "r-2"],
        "page_token": ["", "acct-f"]})


AMOUNTS = st.one_of(st.decimals(allow_nan=True).map(str), st.sampled_from(DECIMALS))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["Deposit", "Withdraw", "SetMarginMode", "TransferIsolated"]), amount=AMOUNTS,
       asset=st.sampled_from(["USDC", "BTC", "DOGE", ""]), instrument=st.sampled_from(["BTC-PERP", "ETH-PERP", ""]),
       mode=st.integers(-1, 3), request_id=st.text(max_size=80))
def test_fuzz_admin_calls_with_the_token_answer_only_documented_codes(channel, method, amount, asset, instrument,
                                                                      mode, request_id):
    # The generic fuzz rarely pairs the right token with a real account: here every call does, so
    # amounts, modes and request ids reach the admin service's checks against the account.
    requests = {
        "Deposit": pb.AdminDepositRequest(account_id="acct-f", asset=asset, amount=dec(amount), request_id=request_id),
        "Withdraw": pb.AdminWithdrawRequest(account_id="acct-f", asset=asset, amount=dec(amount),
                                            request_id=request_id),
        "SetMarginMode": pb.AdminSetModeRequest(account_id="acct-f", instrument=instrument, mode=mode,
                                                request_id=request_id),
        "TransferIsolated": pb.AdminTransferIsolatedRequest(account_id="acct-f", instrument=instrument,
                                                            amount_usd=dec(amount), request_id=request_id),
    }
    code = call(channel, SERVICE.methods_by_name[method], requests[method],
                metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),))
    assert code in DOCUMENTED, f"{method} answered {code.name} to {requests[method]}"
