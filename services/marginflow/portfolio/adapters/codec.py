"""Wire codec: protobuf messages of ``marginflow.account.v1`` <-> domain values.

Decimals travel as plain strings (``format(d, "f")``, never exponent notation); a malformed or
non-finite one is :class:`~marginflow.shared.errors.Rejected` with the field named.
"""

from __future__ import annotations

from decimal import Decimal

from marginflow.api.account.v1 import account_pb2 as pb
from marginflow.api.common.v1 import common_pb2
from marginflow.portfolio.domain.model import (
    ZERO, Account, AccountEvent, Deposit, Fill, IsolatedTransfer, MarginMode, ModeChange, Position, Side, Withdrawal)
from marginflow.portfolio.domain.open_interest import Contribution
from marginflow.shared.errors import Rejected
from marginflow.shared.money import parse_decimal


def wire_dec(value: Decimal) -> common_pb2.Decimal:
    return common_pb2.Decimal(value=format(value, "f"))


def _required(msg: common_pb2.Decimal, what: str) -> Decimal:
    if not msg.value:
        raise Rejected("missing_field", f"{what} is missing")
    return parse_decimal(msg.value, what)


def _optional(msg: common_pb2.Decimal, what: str) -> Decimal:
    return parse_decimal(msg.value, what) if msg.value else ZERO


_MODES = {pb.MARGIN_MODE_CROSS: MarginMode.CROSS, pb.MARGIN_MODE_ISOLATED: MarginMode.ISOLATED}
_SIDES = {pb.SIDE_BUY: Side.BUY, pb.SIDE_SELL: Side.SELL}


def _mode(value: int) -> MarginMode | None:
    if value == pb.MARGIN_MODE_UNSPECIFIED:
        return None
    mode = _MODES.get(value)
    if mode is None:
        raise Rejected("bad_mode", f"unknown margin mode {value}")
    return mode


# ---- inputs ---------------------------------------------------------------------------------

def fill_from_proto(msg: pb.Fill) -> Fill:
    side = _SIDES.get(msg.side)
    if side is None:
        raise Rejected("bad_side", f"side must be SIDE_BUY or SIDE_SELL, got {msg.side}")
    return Fill(
        fill_id=msg.fill_id, account_id=msg.account_id, instrument=msg.instrument, side=side,
        size=_required(msg.size, "size"), price_usd=_required(msg.price, "price"),
        fee_usd=_optional(msg.fee_usd, "fee"), event_time_ms=msg.meta.event_time_ms,
        mode=_mode(msg.mode), liquidation=msg.liquidation)


def event_from_proto(msg: pb.AccountEvent) -> AccountEvent:
    body = msg.WhichOneof("body")
    t = msg.meta.event_time_ms
    if body == "deposit":
        return Deposit(msg.event_id, msg.account_id, msg.deposit.asset, _required(msg.deposit.amount, "amount"), t)
    if body == "withdrawal":
        return Withdrawal(msg.event_id, msg.account_id, msg.withdrawal.asset,
                          _required(msg.withdrawal.amount, "amount"), t)
    if body == "isolated_transfer":
        return IsolatedTransfer(msg.event_id, msg.account_id, msg.isolated_transfer.instrument,
                                _required(msg.isolated_transfer.amount_usd, "amount"), t)
    if body == "mode_change":
        mode = _mode(msg.mode_change.mode)
        if mode is None:
            raise Rejected("bad_mode", "mode change without a mode")
        return ModeChange(msg.event_id, msg.account_id, msg.mode_change.instrument, mode, t)
    raise Rejected("empty_event", "account event has no body")


def fill_to_proto(fill: Fill, source: str = "", publish_time_ms: int = 0) -> pb.Fill:
    return pb.Fill(
        meta=common_pb2.EventMeta(event_time_ms=fill.event_time_ms, publish_time_ms=publish_time_ms, source=source),
        fill_id=fill.fill_id, account_id=fill.account_id, instrument=fill.instrument, side=int(fill.side),
        size=wire_dec(fill.size), price=wire_dec(fill.price_usd), fee_usd=wire_dec(fill.fee_usd),
        liquidation=fill.liquidation, mode=int(fill.mode) if fill.mode else 0)


def event_to_proto(event: AccountEvent, source: str = "", publish_time_ms: int = 0) -> pb.AccountEvent:
    msg = pb.AccountEvent(
        meta=common_pb2.EventMeta(event_time_ms=event.event_time_ms, publish_time_ms=publish_time_ms, source=source),
        event_id=event.event_id, account_id=event.account_id)
    if isinstance(event, Deposit):
        msg.deposit.CopyFrom(pb.Deposit(asset=event.asset, amount=wire_dec(event.amount)))
    elif isinstance(event, Withdrawal):
        msg.withdrawal.CopyFrom(pb.Withdrawal(asset=event.asset, amount=wire_dec(event.amount)))
    elif isinstance(event, IsolatedTransfer):
        msg.isolated_transfer.CopyFrom(pb.IsolatedTransfer(instrument=event.instrument,
                                                           amount_usd=wire_dec(event.amount_usd)))
    elif isinstance(event, ModeChange):
        msg.mode_change.CopyFrom(pb.ModeChange(instrument=event.instrument, mode=int(event.mode)))
    return msg


# ---- state ----------------------------------------------------------------------------------

def position_to_proto(pos: Position) -> pb.Position:
    return pb.Position(
        instrument=pos.instrument, size=wire_dec(pos.size), entry_price=wire_dec(pos.entry_price_usd),
        realized_pnl_usd=wire_dec(pos.realized_pnl_usd), mode=int(pos.mode),
        isolated_collateral_usd=wire_dec(pos.isolated_collateral_usd), updated_ms=pos.updated_ms,
        fees_usd=wire_dec(pos.fees_usd))


def position_from_proto(msg: pb.Position) -> Position:
    return Position(
        instrument=msg.instrument, size=Decimal(msg.size.value or 0), entry_price_usd=Decimal(msg.entry_price.value or 0),
        realized_pnl_usd=Decimal(msg.realized_pnl_usd.value or 0), fees_usd=Decimal(msg.fees_usd.value or 0),
        mode=_mode(msg.mode) or MarginMode.CROSS,
        isolated_collateral_usd=Decimal(msg.isolated_collateral_usd.value or 0), updated_ms=msg.updated_ms)


def account_to_proto(account: Account, publish_time_ms: int = 0, source: str = "portfolio") -> pb.AccountSnapshot:
    """The snapshot published to portfolio.positions and stored in Redis.

    Balances and positions are sorted by name, so equal states encode to equal bytes (apart from
    ``meta.publish_time_ms``)."""
    return pb.AccountSnapshot(
        meta=common_pb2.EventMeta(event_time_ms=account.updated_ms, publish_time_ms=publish_time_ms, source=source),
        account_id=account.account_id,
        balances=[pb.Balance(asset=a, amount=wire_dec(account.balances[a])) for a in sorted(account.balances)],
        positions=[position_to_proto(account.positions[s]) for s in sorted(account.positions)],
        fees_paid_usd=wire_dec(account.fees_paid_usd), revision=account.revision,
        applied_offsets=dict(account.applied_offsets), recent_ids=list(account.recent_ids),
        realized_pnl_usd=wire_dec(account.realized_pnl_usd), updated_ms=account.updated_ms)


def account_from_proto(msg: pb.AccountSnapshot) -> Account:
    return Account(
        account_id=msg.account_id,
        balances={b.asset: Decimal(b.amount.value or 0) for b in msg.balances},
        positions={p.instrument: position_from_proto(p) for p in msg.positions},
        fees_paid_usd=Decimal(msg.fees_paid_usd.value or 0), realized_pnl_usd=Decimal(msg.realized_pnl_usd.value or 0),
        revision=msg.revision, applied_offsets=dict(msg.applied_offsets), recent_ids=tuple(msg.recent_ids),
        updated_ms=msg.updated_ms)


_POSITION_TAG = bytes([(4 << 3) | 2])   # AccountSnapshot.positions: field 4, length-delimited


def contribution_to_proto(c: Contribution, publish_time_ms: int = 0, source: str = "portfolio"
                          ) -> pb.OpenInterestContribution:
    """A partition's share of an instrument's open interest; contracts as exact decimal strings."""
    msg = pb.OpenInterestContribution(instrument=c.instrument, source_partition=c.partition,
                                      long_contracts=wire_dec(c.long_contracts),
                                      short_contracts=wire_dec(c.short_contracts), fills_offset=c.fills_offset)
    msg.meta.event_time_ms = publish_time_ms
    msg.meta.publish_time_ms = publish_time_ms
    msg.meta.source = source
    return msg


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class SnapshotEncoder:
    """Encodes account snapshots, re-encoding only the positions that changed.

    Position values are immutable and the ledger keeps the same object for an untouched position,
    so the encoded bytes of a position are cached by identity (keyed by account and instrument).
    A protobuf message may be written as the concatenation of its fields: the snapshot is the
    account-level fields followed by one length-delimited entry per position, sorted by instrument,
    which parses to exactly the message :func:`account_to_proto` builds.
    """

    def __init__(self, max_cached: int = 500_000) -> None:
        self._positions: dict[tuple[str, str], tuple[Position, bytes]] = {}
        self._max = max_cached

    def encode(self, account: Account, publish_time_ms: int = 0) -> bytes:
        base = pb.AccountSnapshot(
            meta=common_pb2.EventMeta(event_time_ms=account.updated_ms, publish_time_ms=publish_time_ms,
                                      source="portfolio"),
            account_id=account.account_id,
            balances=[pb.Balance(asset=a, amount=wire_dec(account.balances[a])) for a in sorted(account.balances)],
            fees_paid_usd=wire_dec(account.fees_paid_usd), revision=account.revision,
            applied_offsets=dict(account.applied_offsets), recent_ids=list(account.recent_ids),
            realized_pnl_usd=wire_dec(account.realized_pnl_usd), updated_ms=account.updated_ms)
        parts = [base.SerializeToString(deterministic=True)]
        cache = self._positions
        if len(cache) > self._max:
            cache.clear()
        for symbol in sorted(account.positions):
            pos = account.positions[symbol]
            key = (account.account_id, symbol)
            hit = cache.get(key)
            if hit is not None and hit[0] is pos:
                data = hit[1]
            else:
                data = position_to_proto(pos).SerializeToString(deterministic=True)
                cache[key] = (pos, data)
            parts.append(_POSITION_TAG)
            parts.append(_varint(len(data)))
            parts.append(data)
        return b"".join(parts)

    def decode(self, payload: bytes) -> Account:
        return decode_account(payload)


def encode_account(account: Account, publish_time_ms: int = 0) -> bytes:
    # deterministic=True orders map entries (applied_offsets), so equal states give equal bytes.
    return account_to_proto(account, publish_time_ms).SerializeToString(deterministic=True)


def decode_account(payload: bytes) -> Account:
    return account_from_proto(pb.AccountSnapshot.FromString(payload))
