"""gRPC clients of the services the liquidation reads: MarginService (margin) and AccountService (portfolio)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal

import grpc

from marginflow.api.account.v1 import account_pb2, account_pb2_grpc
from marginflow.api.margin.v1 import margin_pb2, margin_pb2_grpc
from marginflow.liquidation.adapters.codec import dec, margin_view, recheck_reliefs
from marginflow.liquidation.application import MarginView, OpenPosition, Rechecked, recheck_alone

PAGE_SIZE = 1000
# Accounts per Recheck call (the margin service accepts up to 1,000).
RECHECK_BATCH = 100


class MarginClient:
    """``explain`` = a fresh margin computation with the positions; ``im_after`` = IM after hypothetical trades."""

    def __init__(self, address: str, timeout_s: float,
                 channel: Callable[[str], grpc.Channel] = grpc.insecure_channel) -> None:
        # ``channel``: security.client_channel in the service (TLS and this service's token when configured);
        # a plaintext channel to a TLS server fails every call with UNAVAILABLE "Socket closed".
        self._channel = channel(address)
        self._stub = margin_pb2_grpc.MarginServiceStub(self._channel)
        self._timeout = timeout_s

    def explain(self, account_id: str) -> MarginView:
        return margin_view(self._stub.Explain(margin_pb2.ExplainRequest(account_id=account_id), timeout=self._timeout))

    def recheck(self, account_ids: Sequence[str]) -> dict[str, Rechecked]:
        """Every account margined afresh with its cross positions' reliefs, ``RECHECK_BATCH`` per call; an
        account this margin instance does not hold is read with Explain and WhatIf (which forward to its owner)."""
        out: dict[str, Rechecked] = {}
        unknown: list[str] = []
        for lo in range(0, len(account_ids), RECHECK_BATCH):
            resp = self._stub.Recheck(margin_pb2.RecheckRequest(account_ids=account_ids[lo:lo + RECHECK_BATCH],
                                                                reliefs=True), timeout=self._timeout)
            for item in resp.accounts:
                view = margin_view(item)
                out[view.account_id] = Rechecked(view, recheck_reliefs(item, view))
            unknown += resp.unknown_account_ids
        for account_id in unknown:
            out[account_id] = recheck_alone(self, account_id)
        return out

    def im_after(self, account_id: str, trades) -> Decimal:
        req = margin_pb2.WhatIfRequest(account_id=account_id)
        for instrument, size in trades:
            req.trades.add(instrument=instrument).size.value = str(size)
        resp = self._stub.WhatIf(req, timeout=self._timeout)
        return dec(resp.after.im_usd.value, "im_usd")

    def close(self) -> None:
        self._channel.close()


class AccountClient:
    """Open positions by instrument (paged) and of one account, from the portfolio service."""

    def __init__(self, address: str, timeout_s: float,
                 channel: Callable[[str], grpc.Channel] = grpc.insecure_channel) -> None:
        self._channel = channel(address)
        self._stub = account_pb2_grpc.AccountServiceStub(self._channel)
        self._timeout = timeout_s

    def positions_by_instrument(self, instrument: str) -> list[OpenPosition]:
        out, token = [], ""
        while True:
            resp = self._stub.PositionsByInstrument(account_pb2.PositionsByInstrumentRequest(
                instrument=instrument, page_size=PAGE_SIZE, page_token=token), timeout=self._timeout)
            for ap in resp.positions:
                out.append(OpenPosition(ap.account_id, instrument, dec(ap.position.size.value, "size"),
                                        dec(ap.position.entry_price.value, "entry_price", Decimal(0))))
            token = resp.next_page_token
            if not token:
                return out

    def positions_of(self, account_id: str) -> list[OpenPosition]:
        try:
            snap = self._stub.GetAccount(account_pb2.GetAccountRequest(account_id=account_id), timeout=self._timeout)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return []
            raise
        return [OpenPosition(account_id, p.instrument, dec(p.size.value, "size"),
                             dec(p.entry_price.value, "entry_price", Decimal(0))) for p in snap.positions]

    def close(self) -> None:
        self._channel.close()
