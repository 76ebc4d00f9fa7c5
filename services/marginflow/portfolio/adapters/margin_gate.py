"""The withdrawal gate: a withdrawal that would leave equity below IM is refused, asking the margin service.

``MarginService.WhatIf`` with the withdrawal as a collateral change gives the equity before and the equity and
IM after; the rule is the liquidation domain's ``withdrawal_allowed`` (``equity − withdrawal ≥ IM_after``,
the withdrawal valued as margin values that asset, haircut included). Fail safe: margin unreachable, not
ready or slow → refused. An account margin does not know (never had a position) and without open positions
needs no margin: allowed.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import grpc

from marginflow.api.margin.v1 import margin_pb2, margin_pb2_grpc
from marginflow.liquidation.domain import withdrawal_allowed
from marginflow.portfolio.domain.model import Account


class MarginWithdrawalGate:
    def __init__(self, address: str, timeout_s: float,
                 channel: Callable[[str], grpc.Channel] = grpc.insecure_channel) -> None:
        self._channel = channel(address)
        self._stub = margin_pb2_grpc.MarginServiceStub(self._channel)
        self._timeout = timeout_s
        self.address = address

    def check(self, account: Account, asset: str, amount: Decimal) -> str | None:
        req = margin_pb2.WhatIfRequest(account_id=account.account_id)
        delta = req.collateral.add(asset=asset)
        delta.amount.value = str(-amount)
        try:
            resp = self._stub.WhatIf(req, timeout=self._timeout)
        except grpc.RpcError as exc:
            open_positions = any(p.size != 0 for p in account.positions.values())
            if exc.code() == grpc.StatusCode.NOT_FOUND and not open_positions:
                return None
            return (f"withdrawal refused: the margin service cannot confirm it leaves equity ≥ IM "
                    f"({exc.code().name}); try again")
        equity = Decimal(resp.before.equity_usd.value or "0")
        equity_after = Decimal(resp.after.equity_usd.value or "0")
        im_after = Decimal(resp.after.im_usd.value or "0")
        value_usd = equity - equity_after
        if value_usd <= 0 or withdrawal_allowed(equity, value_usd, im_after):
            return None
        return (f"withdrawal refused: it would leave equity {equity_after} USD below the initial margin "
                f"{im_after} USD (equity now {equity} USD)")

    def close(self) -> None:
        self._channel.close()
