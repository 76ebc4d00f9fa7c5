"""Kafka side of the exchange simulator: orders and marks in, fills out (protobuf)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation

from marginflow.api.account.v1 import account_pb2
from marginflow.api.liquidation.v1 import liquidation_pb2
from marginflow.api.marketdata.v1 import marketdata_pb2
from marginflow.exchange_sim.application import SimMark, SimOrder
from marginflow.shared.fills import FillRecord, fill_to_proto
from marginflow.shared.errors import Rejected
from marginflow.shared.kafka import ProtoProducer

ACK_TIMEOUT_S = 30.0


def _dec(text: str, what: str) -> Decimal:
    try:
        value = Decimal(text)
    except (InvalidOperation, ValueError):
        raise Rejected("bad_decimal", f"{what} {text!r} is not a decimal number") from None
    if not value.is_finite():
        raise Rejected("non_finite", f"{what} is not finite")
    return value


def order_from_proto(msg: liquidation_pb2.LiquidationOrder) -> SimOrder:
    if not msg.order_id or not msg.account_id or not msg.instrument:
        raise Rejected("missing_field", "order_id, account_id and instrument are required")
    if msg.side not in (account_pb2.SIDE_BUY, account_pb2.SIDE_SELL):
        raise Rejected("bad_side", f"side {msg.side} is not BUY or SELL")
    size, limit = _dec(msg.size.value, "size"), _dec(msg.limit_price.value, "limit_price")
    if size <= 0 or limit <= 0:
        raise Rejected("non_positive_size", "size and limit price must be > 0")
    b = _dec(msg.bankruptcy_price.value, "bankruptcy_price") if msg.bankruptcy_price.value else None
    return SimOrder(msg.order_id, msg.account_id, msg.instrument, 1 if msg.side == account_pb2.SIDE_BUY else -1,
                    size, limit, b)


# md.marks also carries each underlying's index as instrument "index:<underlying>" (marketdata); those
# are not instruments, so they are skipped rather than dead-lettered (one dead letter per index tick).
INDEX_MARK_PREFIX = "index:"


def mark_from_proto(msg: marketdata_pb2.Mark, instruments) -> SimMark:
    if msg.instrument not in instruments:
        raise Rejected("unknown_instrument", f"{msg.instrument!r} is not in the universe")
    if not math.isfinite(msg.mark_price) or msg.mark_price <= 0:
        raise Rejected("non_positive_price", "mark_price must be finite and > 0")
    half = msg.half_spread_frac if math.isfinite(msg.half_spread_frac) and msg.half_spread_frac > 0 else 0.0
    depth = msg.depth_contracts if math.isfinite(msg.depth_contracts) and msg.depth_contracts > 0 else 0.0
    return SimMark(msg.instrument, Decimal(repr(float(msg.mark_price))), Decimal(repr(half)), Decimal(repr(depth)),
                   int(msg.meta.event_time_ms))


class KafkaFillSink:
    def __init__(self, producer: ProtoProducer, topic: str, clock_ms: Callable[[], int]) -> None:
        self._producer, self._topic, self._clock_ms = producer, topic, clock_ms

    def publish(self, fills: Sequence[FillRecord]) -> None:
        now = self._clock_ms()
        futures = [self._producer.send(self._topic, f.account_id, fill_to_proto(f, now, "exchange-sim")) for f in fills]
        self._producer.flush(ACK_TIMEOUT_S)
        for fut in futures:
            fut.get(timeout=ACK_TIMEOUT_S)


def house_deposit(house_account: str, amount_usd: Decimal, asset: str, now_ms: int) -> account_pb2.AccountEvent:
    """The house's collateral, as a deposit with a fixed id (``exsim-house-collateral-<house>``): the
    portfolio applies an event id once, so a repeated first start changes nothing."""
    msg = account_pb2.AccountEvent(event_id=f"exsim-house-collateral-{house_account}", account_id=house_account)
    msg.deposit.asset = asset
    msg.deposit.amount.value = str(amount_usd)
    msg.meta.event_time_ms = now_ms
    msg.meta.publish_time_ms = now_ms
    msg.meta.source = "exchange-sim"
    return msg
