"""LiquidationService over gRPC on port 0: admin token checks, pause/resume (events, survives a restart),
INVALID_ARGUMENT for bad arguments, the fund and the queue."""

from __future__ import annotations

from decimal import Decimal

import grpc
import pytest

from marginflow.api.liquidation.v1 import liquidation_pb2 as lpb
from marginflow.api.liquidation.v1 import liquidation_pb2_grpc

from liq_it_helpers import ADMIN_TOKEN


def stub_of(app):
    channel = grpc.insecure_channel(f"127.0.0.1:{app.grpc_port}")
    return channel, liquidation_pb2_grpc.LiquidationServiceStub(channel)


def code_of(call, *args, **kwargs):
    with pytest.raises(grpc.RpcError) as err:
        call(*args, **kwargs)
    return err.value.code()


def test_pause_resume_need_the_admin_token_and_survive_a_restart(start_liquidation):
    app = start_liquidation(MF_LIQUIDATION_FUND_INITIAL_USD="2500.50")
    channel, stub = stub_of(app)
    req = lpb.PauseRequest(instrument="BTC-PERP", reason="incident 7")
    assert code_of(stub.Pause, req) == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(stub.Pause, req, metadata=(("authorization", "Bearer wrong"),)) == grpc.StatusCode.UNAUTHENTICATED   # an unknown token authenticates nobody
    auth = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
    assert code_of(stub.Pause, lpb.PauseRequest(instrument="DOGE-PERP"), metadata=auth) == \
        grpc.StatusCode.INVALID_ARGUMENT
    paused = stub.Pause(req, metadata=auth)
    assert paused.paused_instruments == ["BTC-PERP"] and not paused.venue_paused
    venue = stub.Pause(lpb.PauseRequest(), metadata=auth)
    assert venue.venue_paused
    resumed = stub.Resume(lpb.PauseRequest(), metadata=auth)
    assert not resumed.venue_paused and resumed.paused_instruments == ["BTC-PERP"]
    assert app.engine.marks.verdict("BTC-PERP").value == "paused_admin"

    fund = stub.GetInsuranceFund(lpb.GetInsuranceFundRequest())
    assert fund.balance_usd.value == "2500.50" and Decimal(fund.drawdown_usd.value) == 0
    assert code_of(stub.GetInsuranceFund, lpb.GetInsuranceFundRequest(history_limit=-1)) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(stub.GetQueue, lpb.GetQueueRequest(limit=10**6)) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(stub.GetAdlRanks, lpb.GetAdlRanksRequest()) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(stub.GetAdlRanks, lpb.GetAdlRanksRequest(instrument="NOPE")) == grpc.StatusCode.INVALID_ARGUMENT
    assert not stub.GetQueue(lpb.GetQueueRequest()).entries
    listed = stub.ListLiquidations(lpb.ListLiquidationsRequest(limit=10)).events
    assert [e.kind for e in listed][:3] == [lpb.LIQUIDATION_EVENT_KIND_ADMIN_RESUMED,
                                           lpb.LIQUIDATION_EVENT_KIND_ADMIN_PAUSED,
                                           lpb.LIQUIDATION_EVENT_KIND_ADMIN_PAUSED]
    channel.close()

    # A restart rebuilds the pauses from liquidation.events and the fund from liquidation.fund.
    start_liquidation.stop(app)
    again = start_liquidation(MF_LIQUIDATION_FUND_INITIAL_USD="1")
    assert again.engine.marks.paused == {"BTC-PERP"} and not again.engine.marks.venue_paused
    channel, stub = stub_of(again)
    assert stub.GetInsuranceFund(lpb.GetInsuranceFundRequest()).balance_usd.value == "2500.50"
    channel.close()
