"""Protobuf ↔ the liquidation application's records. Decimals travel as strings (exact)."""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation

from marginflow.api.account.v1 import account_pb2
from marginflow.api.common.v1 import common_pb2
from marginflow.api.liquidation.v1 import liquidation_pb2 as pb
from marginflow.api.margin.v1 import margin_pb2
from marginflow.api.marketdata.v1 import marketdata_pb2
from marginflow.liquidation.application import (
    Call, DepositOut, Event, FillSeen, FundSnapshot, IsolatedView, MarginView, MarkSeen, Order, PositionView,
    StateSeen)
from marginflow.shared.errors import Rejected

SOURCE = "liquidation"


def dec(text: str, what: str, default: Decimal | None = None) -> Decimal:
    if not text:
        if default is not None:
            return default
        raise Rejected("missing_field", f"{what} is missing")
    try:
        value = Decimal(text)
    except (InvalidOperation, ValueError):
        raise Rejected("bad_decimal", f"{what} {text!r} is not a decimal number") from None
    if not value.is_finite():
        raise Rejected("non_finite", f"{what} is not finite: {text!r}")
    return value


def wire(value: Decimal | None) -> common_pb2.Decimal:
    return common_pb2.Decimal(value="" if value is None else str(value))


def side_to_proto(side: int) -> int:
    return account_pb2.SIDE_BUY if side > 0 else account_pb2.SIDE_SELL if side < 0 else account_pb2.SIDE_UNSPECIFIED


def side_from_proto(side: int) -> int:
    return 1 if side == account_pb2.SIDE_BUY else -1 if side == account_pb2.SIDE_SELL else 0


# ---- inputs
def call_from_proto(msg: margin_pb2.MarginCall, key: str) -> Call:
    if not msg.account_id:
        raise Rejected("missing_field", "account_id is missing")
    if key and key != msg.account_id:
        raise Rejected("key_mismatch", f"key {key!r} is not the account {msg.account_id!r}")
    return Call(msg.account_id, int(msg.state), bool(msg.marks_fresh), int(msg.risk_params_version),
                int(msg.account_revision), int(msg.meta.event_time_ms))


def state_from_proto(msg: margin_pb2.MarginState) -> StateSeen:
    if not msg.account_id:
        raise Rejected("missing_field", "account_id is missing")
    equity, mm = dec(msg.equity_usd.value, "equity_usd"), dec(msg.mm_usd.value, "mm_usd")
    if msg.cross_mm_usd.value:
        # the cross part and each isolated position against its own MM (isolated positions are margined alone)
        below = dec(msg.cross_equity_usd.value, "cross_equity_usd") < dec(msg.cross_mm_usd.value, "cross_mm_usd")
        below = below or any(dec(i.equity_usd.value, "equity_usd") < dec(i.mm_usd.value, "mm_usd")
                             for i in msg.isolated if i.mm_usd.value)
    else:
        below = equity < mm
    return StateSeen(msg.account_id, int(msg.state), equity, dec(msg.im_usd.value, "im_usd"), mm,
                     bool(msg.marks_fresh), int(msg.meta.event_time_ms), below)


def equity_from_proto(msg: margin_pb2.MarginState) -> tuple[str, Decimal]:
    """(account, equity) of a margin.state record: all ADL needs of an account not tracked here."""
    if not msg.account_id:
        raise Rejected("missing_field", "account_id is missing")
    return msg.account_id, dec(msg.equity_usd.value, "equity_usd")


# marketdata publishes each underlying's index on md.marks as instrument "index:<underlying>": not an
# instrument of the universe, skipped by the consumer rather than dead-lettered.
INDEX_MARK_PREFIX = "index:"


def mark_from_proto(msg: marketdata_pb2.Mark, instruments) -> MarkSeen:
    if msg.instrument not in instruments:
        raise Rejected("unknown_instrument", f"instrument {msg.instrument!r} is not in the universe")
    for what, value in (("mark_price", msg.mark_price), ("index_price", msg.index_price)):
        if not math.isfinite(value):
            raise Rejected("non_finite", f"{what} is not finite")
    if msg.mark_price <= 0:
        raise Rejected("non_positive_price", f"mark_price {msg.mark_price} ≤ 0")
    return MarkSeen(msg.instrument, float(msg.mark_price), float(msg.index_price), int(msg.meta.event_time_ms),
                    float(msg.half_spread_frac) if math.isfinite(msg.half_spread_frac) else 0.0,
                    float(msg.depth_contracts) if math.isfinite(msg.depth_contracts) else 0.0)


def fill_from_proto(msg: account_pb2.Fill, topic: str, partition: int, offset: int) -> FillSeen:
    return FillSeen(topic, partition, offset, msg.fill_id, msg.account_id, msg.instrument,
                    side_from_proto(msg.side), dec(msg.size.value, "size"), dec(msg.price.value, "price"),
                    dec(msg.fee_usd.value, "fee_usd", Decimal(0)), bool(msg.liquidation), msg.order_id,
                    int(msg.meta.event_time_ms))


def margin_view(msg: margin_pb2.ExplainResponse | margin_pb2.AccountRecheck) -> MarginView:
    """The margin and positions of an Explain answer, or of one account of a Recheck answer."""
    m = msg.margin
    positions = tuple(PositionView(p.instrument, dec(p.size.value, "size"), bool(p.isolated)) for p in msg.positions)
    cross = None
    if m.cross_mm_usd.value:
        cross = (dec(m.cross_equity_usd.value, "cross_equity_usd"), dec(m.cross_im_usd.value, "cross_im_usd"),
                 dec(m.cross_mm_usd.value, "cross_mm_usd"))
    isolated = tuple(IsolatedView(i.instrument, dec(i.size.value, "size", Decimal(0)), dec(i.equity_usd.value, "equity_usd"),
                                  dec(i.im_usd.value, "im_usd"), dec(i.mm_usd.value, "mm_usd"))
                     for i in m.isolated)
    return MarginView(m.account_id, int(m.state), dec(m.equity_usd.value, "equity_usd"), dec(m.im_usd.value, "im_usd"),
                      dec(m.mm_usd.value, "mm_usd"), bool(m.marks_fresh), int(m.risk_params_version),
                      int(m.account_revision), int(m.meta.event_time_ms), positions,
                      *(cross if cross is not None else (None, None, None)), isolated)


def recheck_reliefs(msg: margin_pb2.AccountRecheck, view: MarginView) -> tuple[Decimal, ...]:
    """The IM relief of each cross position (non-zero size) of a Recheck answer, in the view's order."""
    if not msg.margin.account_id:
        raise Rejected("missing_field", "recheck answer without an account")
    return tuple(dec(p.im_relief_usd.value, f"im_relief_usd of {p.instrument}") for p in msg.positions
                 if not p.isolated and dec(p.size.value, "size") != 0)


# ---- outputs
def event_to_proto(e: Event, publish_ms: int) -> pb.LiquidationEvent:
    msg = pb.LiquidationEvent(kind=pb.LiquidationEventKind.Value(f"LIQUIDATION_EVENT_KIND_{e.kind}"),
                              account_id=e.account_id, episode=e.episode, order_id=e.order_id,
                              counterparty_account_id=e.counterparty, instrument=e.instrument, detail=e.detail,
                              round=e.round, slice=e.slice, side=side_to_proto(e.side), reference=e.reference,
                              settled_revision=e.settled_revision, risk_version=e.risk_version,
                              account_revision=e.account_revision, marks_time_ms=e.marks_time_ms)
    msg.meta.event_time_ms = e.time_ms
    msg.meta.publish_time_ms = publish_ms
    msg.meta.source = SOURCE
    for field, value in (("size", e.size), ("amount_usd", e.amount_usd), ("fund_balance_usd", e.fund_balance_usd),
                         ("price_usd", e.price_usd)):
        if value is not None:
            getattr(msg, field).value = str(value)
    return msg


def _opt(msg: common_pb2.Decimal) -> Decimal | None:
    if not msg.value:
        return None
    try:
        return Decimal(msg.value)
    except (InvalidOperation, ValueError):
        return None


def event_from_proto(msg: pb.LiquidationEvent) -> Event:
    name = pb.LiquidationEventKind.Name(msg.kind).removeprefix("LIQUIDATION_EVENT_KIND_")
    return Event(name, msg.account_id, int(msg.episode), int(msg.meta.event_time_ms), msg.order_id,
                 msg.counterparty_account_id, msg.instrument, _opt(msg.size), _opt(msg.amount_usd),
                 _opt(msg.fund_balance_usd), msg.detail, int(msg.round), int(msg.slice), _opt(msg.price_usd),
                 side_from_proto(msg.side), msg.reference, int(msg.settled_revision), int(msg.risk_version),
                 int(msg.account_revision), int(msg.marks_time_ms))


def order_to_proto(o: Order, publish_ms: int) -> pb.LiquidationOrder:
    msg = pb.LiquidationOrder(order_id=o.order_id, account_id=o.account_id, instrument=o.instrument,
                              side=side_to_proto(o.side), episode=o.episode, slice=o.slice, reason=o.reason,
                              reduce_only=True, risk_version=o.risk_version, account_revision=o.account_revision,
                              marks_time_ms=o.margin_marks_ms)
    msg.size.value = str(o.size)
    msg.limit_price.value = str(o.limit_price_usd)
    msg.bankruptcy_price.value = str(o.bankruptcy_price_usd)
    msg.meta.event_time_ms = o.mark_time_ms or o.time_ms
    msg.meta.publish_time_ms = publish_ms
    msg.meta.source = SOURCE
    return msg


def deposit_to_proto(d: DepositOut, publish_ms: int) -> account_pb2.AccountEvent:
    msg = account_pb2.AccountEvent(event_id=d.event_id, account_id=d.account_id)
    msg.deposit.asset = d.asset
    msg.deposit.amount.value = str(d.amount)
    msg.meta.event_time_ms = d.time_ms
    msg.meta.publish_time_ms = publish_ms
    msg.meta.source = SOURCE
    return msg


def fund_to_proto(f: FundSnapshot, publish_ms: int) -> pb.InsuranceFundState:
    msg = pb.InsuranceFundState(updated_ms=f.updated_ms, revision=f.revision, recent_ids=list(f.recent_ids))
    msg.balance_usd.value = str(f.balance_usd)
    msg.high_water_usd.value = str(f.high_water_usd)
    msg.applied_offsets.update(f.applied_offsets)
    return msg


def fund_from_proto(msg: pb.InsuranceFundState) -> FundSnapshot:
    balance = dec(msg.balance_usd.value, "balance_usd")
    if balance < 0:
        raise Rejected("negative_value", f"fund balance {balance} < 0")
    return FundSnapshot(balance, dec(msg.high_water_usd.value, "high_water_usd", balance), int(msg.updated_ms),
                        int(msg.revision), dict(msg.applied_offsets), tuple(msg.recent_ids))
