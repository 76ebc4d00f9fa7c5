"""Values of the portfolio domain: instruments as the ledger sees them, positions, accounts, commands.

Money is :class:`~decimal.Decimal` everywhere (never float). Units are in the names: sizes are
signed contracts, prices USD per underlying unit, ``*_usd`` amounts US dollars, balances in the
asset's own units. Values are frozen; the ledger returns new ones instead of mutating.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from decimal import Decimal
from enum import IntEnum

ZERO = Decimal(0)


class Side(IntEnum):
    """Same numbering as ``marginflow.account.v1.Side``."""

    BUY = 1
    SELL = 2


class MarginMode(IntEnum):
    """Same numbering as ``marginflow.account.v1.MarginMode`` (0 = unspecified = cross)."""

    CROSS = 1
    ISOLATED = 2


@dataclasses.dataclass(frozen=True, slots=True)
class InstrumentSpec:
    """What the ledger needs of an instrument (from the platform universe)."""

    symbol: str
    underlying: str
    contract_size: Decimal   # underlying units per contract
    lot_size: Decimal        # contracts; every fill size is a whole number of lots
    is_option: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Position:
    instrument: str
    size: Decimal = ZERO                      # signed contracts: > 0 long, < 0 short
    entry_price_usd: Decimal = ZERO           # average entry, USD per underlying unit (0 when flat)
    realized_pnl_usd: Decimal = ZERO          # realised on reductions and flips, before fees
    fees_usd: Decimal = ZERO                  # fees paid on this instrument (negative = rebates)
    mode: MarginMode = MarginMode.CROSS
    isolated_collateral_usd: Decimal = ZERO   # collateral allocated to an isolated position
    updated_ms: int = 0                       # event time of the last fill or event


@dataclasses.dataclass(frozen=True, slots=True)
class Account:
    """The state of one account after every input applied so far.

    ``applied_offsets`` maps an input stream (``"<topic>:<partition>"``) to the offset of the
    last record of this account applied from it; ``recent_ids`` holds the ids of the latest
    applied inputs (bounded), so a redelivered record or a fill published twice changes nothing.
    """

    account_id: str
    balances: Mapping[str, Decimal] = dataclasses.field(default_factory=dict)   # asset -> asset units
    positions: Mapping[str, Position] = dataclasses.field(default_factory=dict)  # instrument -> position
    fees_paid_usd: Decimal = ZERO
    realized_pnl_usd: Decimal = ZERO
    revision: int = 0                     # +1 per applied fill or event
    applied_offsets: Mapping[str, int] = dataclasses.field(default_factory=dict)
    recent_ids: tuple[str, ...] = ()
    updated_ms: int = 0

    def balance(self, asset: str) -> Decimal:
        return self.balances.get(asset, ZERO)

    def open_instruments(self) -> frozenset[str]:
        return frozenset(sym for sym, pos in self.positions.items() if pos.size != 0)


# ---- commands: what arrives on trades.fills and account.events -------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class Fill:
    fill_id: str
    account_id: str
    instrument: str
    side: Side
    size: Decimal              # contracts, > 0
    price_usd: Decimal         # USD per underlying unit (option premium for options)
    fee_usd: Decimal           # charged to the account; negative = rebate
    event_time_ms: int
    mode: MarginMode | None = None   # mode for a newly opened position (None = cross)
    liquidation: bool = False

    @property
    def dedupe_id(self) -> str:
        return "f:" + self.fill_id

    @property
    def signed_size(self) -> Decimal:
        return self.size if self.side == Side.BUY else -self.size


class _AccountEventInput:
    """An ``account.events`` input: remembered by its event id (``e:<event_id>``)."""

    __slots__ = ()
    event_id: str

    @property
    def dedupe_id(self) -> str:
        return "e:" + self.event_id


@dataclasses.dataclass(frozen=True, slots=True)
class _AssetMovement(_AccountEventInput):
    event_id: str
    account_id: str
    asset: str
    amount: Decimal            # asset units, > 0
    event_time_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class Deposit(_AssetMovement):
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class Withdrawal(_AssetMovement):
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class IsolatedTransfer(_AccountEventInput):
    """USD collateral from the cross balance into an isolated position (> 0) or back (< 0)."""

    event_id: str
    account_id: str
    instrument: str
    amount_usd: Decimal        # != 0
    event_time_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class ModeChange:
    event_id: str
    account_id: str
    instrument: str
    mode: MarginMode
    event_time_ms: int

    @property
    def dedupe_id(self) -> str:
        return "e:" + self.event_id


AccountEvent = Deposit | Withdrawal | IsolatedTransfer | ModeChange
Command = Fill | AccountEvent


@dataclasses.dataclass(frozen=True, slots=True)
class InputPosition:
    """Where a command came from: stream ``"<topic>:<partition>"`` and offset in it."""

    stream: str
    offset: int

    @property
    def partition(self) -> int:
        """The partition number of the stream (-1 when the stream has none)."""
        _topic, sep, part = self.stream.rpartition(":")
        return int(part) if sep and part.isdigit() else -1
