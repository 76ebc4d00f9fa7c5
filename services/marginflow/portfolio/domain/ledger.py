"""The account ledger: validates a fill or account event and applies it to an account, exactly once.

``apply_command(account, command, at, rules)`` returns the new account and what happened:

* ``DUPLICATE_OFFSET`` — the record's offset is at or below the last offset of this account
  applied from the same stream (a redelivery after a crash or rebalance): nothing changes;
* ``DUPLICATE_ID`` — the fill or event id is among the account's recent ids (the same fill
  published twice): nothing changes;
* ``APPLIED`` — the new state, with ``revision`` + 1, the offset and the id recorded.

Anything that cannot be accepted raises :class:`~marginflow.shared.errors.Rejected` *before*
anything changes; the code becomes the dead-letter reason and a metric label.

Settlement: realised P&L and fees of a cross position settle into the settlement asset's balance
(USD stablecoin, e.g. USDC); those of an isolated position into its isolated collateral, which
returns to the cross balance when the position is flat again.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from decimal import Decimal, localcontext
from enum import Enum

from marginflow.portfolio.domain.model import (
    ZERO, Account, Command, Deposit, Fill, InputPosition, InstrumentSpec, IsolatedTransfer, MarginMode,
    ModeChange, Position, Side, Withdrawal)
from marginflow.portfolio.domain.position_math import DECIMAL_CONTEXT, apply_trade_in_context
from marginflow.shared.errors import Rejected

MAX_DECIMAL_PLACES = 18            # finer than any asset's smallest unit (ETH: 1e-18)
MAX_MAGNITUDE = Decimal("1e15")    # no size, price, fee or amount on the venue comes near this
MAX_ID_LENGTH = 128
ACCOUNT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,63}$")  # no braces: ids go in Redis hash tags


class Outcome(Enum):
    APPLIED = "applied"
    DUPLICATE_OFFSET = "duplicate_offset"
    DUPLICATE_ID = "duplicate_id"


@dataclasses.dataclass(frozen=True)
class LedgerRules:
    instruments: Mapping[str, InstrumentSpec]
    assets: frozenset[str]               # collateral assets accepted for deposits/withdrawals
    settlement_asset: str = "USDC"       # where USD P&L, fees and isolated collateral come from
    dedupe_window: int = 64              # recent ids kept per account
    enforce_lot_size: bool = True

    def __post_init__(self) -> None:
        if self.settlement_asset not in self.assets:
            raise ValueError(f"settlement asset {self.settlement_asset!r} is not among the assets {sorted(self.assets)}")
        if self.dedupe_window < 1:
            raise ValueError("dedupe_window must be >= 1")


# ---- validation (stateless) -----------------------------------------------------------------

def check_decimal(value: Decimal, what: str) -> None:
    """Finite, at most MAX_DECIMAL_PLACES places, magnitude below MAX_MAGNITUDE."""
    if not value.is_finite():
        raise Rejected("non_finite", f"{what} is not finite: {value}")
    if value.as_tuple().exponent < -MAX_DECIMAL_PLACES:  # type: ignore[operator]
        raise Rejected("too_precise", f"{what} has more than {MAX_DECIMAL_PLACES} decimal places: {value}")
    if abs(value) >= MAX_MAGNITUDE:
        raise Rejected("implausible", f"{what} is implausibly large: {value}")


def check_id(value: str, what: str) -> None:
    if not value:
        raise Rejected("missing_id", f"{what} is empty")
    if len(value) > MAX_ID_LENGTH:
        raise Rejected("bad_id", f"{what} is longer than {MAX_ID_LENGTH} characters")


def check_account_id(account_id: str) -> None:
    if not ACCOUNT_ID.match(account_id or ""):
        raise Rejected("bad_account_id",
                       f"account id {account_id!r} must be 1-64 of A-Z a-z 0-9 _ . : @ - (starting alphanumeric)")


def _instrument(rules: LedgerRules, symbol: str) -> InstrumentSpec:
    spec = rules.instruments.get(symbol)
    if spec is None:
        raise Rejected("unknown_instrument", f"instrument {symbol!r} is not in the universe")
    return spec


def _asset(rules: LedgerRules, asset: str) -> None:
    if asset not in rules.assets:
        raise Rejected("unknown_asset", f"asset {asset!r} is not a collateral asset ({', '.join(sorted(rules.assets))})")


def _positive(value: Decimal, what: str, code: str) -> None:
    check_decimal(value, what)
    if value <= 0:
        raise Rejected(code, f"{what} must be > 0, got {value}")


def validate(command: Command, rules: LedgerRules) -> None:
    """Stateless checks of a command; raises Rejected with a reason code."""
    check_account_id(command.account_id)
    if command.event_time_ms < 0:
        raise Rejected("bad_time", f"event time {command.event_time_ms} is negative")
    if isinstance(command, Fill):
        check_id(command.fill_id, "fill id")
        spec = _instrument(rules, command.instrument)
        if command.side not in (Side.BUY, Side.SELL):
            raise Rejected("bad_side", f"side must be buy or sell, got {command.side!r}")
        _positive(command.size, "size", "non_positive_size")
        if rules.enforce_lot_size and command.size % spec.lot_size != 0:
            raise Rejected("bad_lot", f"size {command.size} is not a multiple of the lot size {spec.lot_size} "
                                      f"of {spec.symbol}")
        _positive(command.price_usd, "price", "non_positive_price")
        check_decimal(command.fee_usd, "fee")
        return
    check_id(command.event_id, "event id")
    if isinstance(command, (Deposit, Withdrawal)):
        _asset(rules, command.asset)
        _positive(command.amount, "amount", "non_positive_amount")
    elif isinstance(command, IsolatedTransfer):
        _instrument(rules, command.instrument)
        check_decimal(command.amount_usd, "amount")
        if command.amount_usd == 0:
            raise Rejected("zero_amount", "an isolated transfer of zero moves nothing")
    elif isinstance(command, ModeChange):
        _instrument(rules, command.instrument)
        if command.mode not in (MarginMode.CROSS, MarginMode.ISOLATED):
            raise Rejected("bad_mode", f"mode must be cross or isolated, got {command.mode!r}")
    else:  # pragma: no cover - the codec only builds the types above
        raise Rejected("empty_event", f"unsupported command {type(command).__name__}")


# ---- applying -------------------------------------------------------------------------------

def apply_command(account: Account, command: Command, at: InputPosition | None,
                  rules: LedgerRules) -> tuple[Account, Outcome]:
    """Apply ``command`` (read from ``at``) to ``account``; see the module docstring."""
    if command.account_id != account.account_id:
        raise ValueError(f"command for {command.account_id!r} applied to account {account.account_id!r}")
    if at is not None and at.offset <= account.applied_offsets.get(at.stream, -1):
        return account, Outcome.DUPLICATE_OFFSET
    dedupe_id = command.dedupe_id
    if dedupe_id in account.recent_ids:
        return account, Outcome.DUPLICATE_ID
    validate(command, rules)
    with localcontext(DECIMAL_CONTEXT):
        if isinstance(command, Fill):
            balances, positions, fee, pnl = _fill(account, command, rules)
        else:
            balances, positions = _event(account, command, rules)
            fee = pnl = ZERO
    offsets = account.applied_offsets
    if at is not None:
        offsets = dict(offsets)
        offsets[at.stream] = at.offset
    recent = account.recent_ids + (dedupe_id,)
    if len(recent) > rules.dedupe_window:
        recent = recent[-rules.dedupe_window:]
    return Account(
        account_id=account.account_id, balances=balances, positions=positions,
        fees_paid_usd=account.fees_paid_usd + fee, realized_pnl_usd=account.realized_pnl_usd + pnl,
        revision=account.revision + 1, applied_offsets=offsets, recent_ids=recent,
        updated_ms=max(account.updated_ms, command.event_time_ms)), Outcome.APPLIED


def _fill(account: Account, fill: Fill, rules: LedgerRules
          ) -> tuple[dict[str, Decimal], dict[str, Position], Decimal, Decimal]:
    spec = rules.instruments[fill.instrument]
    pos = account.positions.get(fill.instrument)
    if pos is None:
        pos = Position(fill.instrument, mode=fill.mode or MarginMode.CROSS)
    elif pos.size == 0 and pos.isolated_collateral_usd == 0 and fill.mode is not None:
        pos = dataclasses.replace(pos, mode=fill.mode)  # a flat position takes the mode of the fill reopening it
    trade = apply_trade_in_context(pos.size, pos.entry_price_usd, fill.signed_size, fill.price_usd,
                                   spec.contract_size)
    settle_usd = trade.realized_pnl_usd - fill.fee_usd
    balances = dict(account.balances)
    isolated = pos.isolated_collateral_usd
    if pos.mode == MarginMode.ISOLATED:
        isolated += settle_usd
        if trade.size == 0 and isolated != 0:
            # Flat: what is left of the isolated collateral returns to the cross balance.
            balances[rules.settlement_asset] = balances.get(rules.settlement_asset, ZERO) + isolated
            isolated = ZERO
    else:
        balances[rules.settlement_asset] = balances.get(rules.settlement_asset, ZERO) + settle_usd
    positions = dict(account.positions)
    positions[fill.instrument] = Position(
        fill.instrument, trade.size, trade.entry_price_usd, pos.realized_pnl_usd + trade.realized_pnl_usd,
        pos.fees_usd + fill.fee_usd, pos.mode, isolated, fill.event_time_ms)
    return balances, positions, fill.fee_usd, trade.realized_pnl_usd


def _event(account: Account, event: Command, rules: LedgerRules
           ) -> tuple[Mapping[str, Decimal], Mapping[str, Position]]:
    balances = dict(account.balances)
    positions: Mapping[str, Position] = account.positions
    settle = rules.settlement_asset
    if isinstance(event, Deposit):
        balances[event.asset] = balances.get(event.asset, ZERO) + event.amount
    elif isinstance(event, Withdrawal):
        free = balances.get(event.asset, ZERO)
        if event.amount > free:
            raise Rejected("insufficient_balance",
                           f"withdrawal of {event.amount} {event.asset} exceeds the free balance {free}")
        balances[event.asset] = free - event.amount
    elif isinstance(event, IsolatedTransfer):
        pos = account.positions.get(event.instrument)
        if pos is None or pos.mode != MarginMode.ISOLATED:
            raise Rejected("not_isolated", f"{event.instrument} is not an isolated position of {account.account_id}")
        if event.amount_usd > 0:
            free = balances.get(settle, ZERO)
            if event.amount_usd > free:
                raise Rejected("insufficient_balance",
                               f"transfer of {event.amount_usd} USD exceeds the free {settle} balance {free}")
        elif -event.amount_usd > pos.isolated_collateral_usd:
            raise Rejected("insufficient_isolated_collateral",
                           f"transfer of {-event.amount_usd} USD out exceeds the isolated collateral "
                           f"{pos.isolated_collateral_usd} of {event.instrument}")
        balances[settle] = balances.get(settle, ZERO) - event.amount_usd
        positions = dict(positions)
        positions[event.instrument] = dataclasses.replace(
            pos, isolated_collateral_usd=pos.isolated_collateral_usd + event.amount_usd, updated_ms=event.event_time_ms)
    elif isinstance(event, ModeChange):
        pos = account.positions.get(event.instrument) or Position(event.instrument)
        if pos.size != 0 and pos.mode != event.mode:
            raise Rejected("position_open",
                           f"cannot change the margin mode of {event.instrument} while a position of {pos.size} is open")
        isolated = pos.isolated_collateral_usd
        if event.mode == MarginMode.CROSS and isolated != 0:
            balances[settle] = balances.get(settle, ZERO) + isolated
            isolated = ZERO
        positions = dict(positions)
        positions[event.instrument] = dataclasses.replace(
            pos, mode=event.mode, isolated_collateral_usd=isolated, updated_ms=event.event_time_ms)
    return balances, positions
