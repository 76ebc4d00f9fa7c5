"""Fills a service emits to ``trades.fills`` (the exchange simulator, liquidation's bankruptcy and
ADL steps): one value type and one encoder. Money as Decimal; ``side`` +1 buy, −1 sell."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

from marginflow.api.account.v1 import account_pb2


@dataclasses.dataclass(frozen=True)
class FillRecord:
    fill_id: str
    account_id: str
    instrument: str
    side: int
    size: Decimal
    price_usd: Decimal
    fee_usd: Decimal
    liquidation: bool
    order_id: str
    time_ms: int


def fill_to_proto(f: FillRecord, publish_ms: int, source: str) -> account_pb2.Fill:
    side = account_pb2.SIDE_BUY if f.side > 0 else account_pb2.SIDE_SELL if f.side < 0 else account_pb2.SIDE_UNSPECIFIED
    msg = account_pb2.Fill(fill_id=f.fill_id, account_id=f.account_id, instrument=f.instrument, side=side,
                           liquidation=f.liquidation, order_id=f.order_id)
    msg.size.value = str(f.size)
    msg.price.value = str(f.price_usd)
    msg.fee_usd.value = str(f.fee_usd)
    msg.meta.event_time_ms = f.time_ms
    msg.meta.publish_time_ms = publish_ms
    msg.meta.source = source
    return msg
