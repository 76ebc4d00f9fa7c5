r"""Bankruptcy resolution: the insurance fund first, then auto-deleveraging (ADL) of opposite positions.

Ranking (BitMEX "Auto-Deleveraging", also Binance's "What Is Auto-Deleveraging (ADL)": the more profitable
and the more leveraged, the earlier)::

    PnL%      = unrealised PnL / |entry value|   = s·(mark − entry) / entry       s = ±1
    leverage  = |position notional| / account equity = |q|·cs·mark / E            (E ≤ 0: +∞)
    score     = PnL% · leverage   if PnL% > 0
              = PnL% / leverage   otherwise

(Binance ranks by ``LeveragePnL = PnL% × margin ratio`` with PnL% over wallet balance; BitMEX's form above
is the one used here.) Positions on the side opposite the bankrupt position are taken in descending score
(ties: account id) and reduced, each by at most its size, at the bankrupt position's **bankruptcy price**
until the bankrupt position is closed: the bankrupt account ends at exactly zero, and the counterparties
give up the part of their profit beyond the bankruptcy price (BitMEX: "The price at which a trader's position
is closed out is the Bankruptcy Price of the initial liquidated order"). dYdX v4
``x/clob/keeper/deleveraging.go`` (``OffsetSubaccountPerpetualPosition``) likewise offsets a position the
insurance fund cannot cover against opposite positions at the bankruptcy price, but walks the subaccounts
from a pseudo-random start instead of ranking them.

Effective leverage: BitMEX defines it per position as ``|mark value| / (mark value − bankrupt value)``; the
denominator is the equity that backs the position, which for a cross account is the account's equity
(the form used here).

ADL indicator: the quantile of an account's score among positions on its side, shown as 1–5 lights
(5 = first in the queue): ``light = ceil(5·(N − rank)/N)``, ``rank = 0`` for the highest score.

Who pays what (:func:`resolve_bankruptcy`): the fund takes over as much of the bankrupt position as it can
pay the loss of at the mark (``loss per contract = cs·|mark − b|``), in whole lots; ADL closes the rest at
``b``. The fund never goes negative and never pays beyond the per-account cap.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal

from marginflow.liquidation.domain.fund import Coverage, FundSettings, InsuranceFund

ZERO = Decimal(0)
ADL_LIGHTS = 5       # indicator levels shown by exchanges (count)


@dataclass(frozen=True)
class AdlCandidate:
    """An open position that may be deleveraged (exact values; ``size_contracts`` signed)."""

    account_id: str
    size_contracts: Decimal
    entry_price_usd: Decimal
    mark_price_usd: Decimal
    contract_size: Decimal
    account_equity_usd: Decimal

    @property
    def side(self) -> int:
        return 1 if self.size_contracts > 0 else -1 if self.size_contracts < 0 else 0


@dataclass(frozen=True)
class AdlFill:
    """One counterparty reduced by ADL: ``size_contracts`` (> 0) closed at ``price_usd``."""

    account_id: str
    size_contracts: Decimal
    price_usd: Decimal
    realized_pnl_usd: Decimal     # the counterparty's, s·n·cs·(price − entry)


def pnl_fraction(c: AdlCandidate) -> float:
    """``s·(mark − entry)/entry``: unrealised PnL over |entry value| (dimensionless)."""
    if c.entry_price_usd <= 0:
        return 0.0
    return float(c.side * (c.mark_price_usd - c.entry_price_usd) / c.entry_price_usd)


def effective_leverage(c: AdlCandidate) -> float:
    """``|q|·cs·mark / equity``; +∞ when equity ≤ 0."""
    if c.account_equity_usd <= 0:
        return math.inf
    return float(abs(c.size_contracts) * c.contract_size * c.mark_price_usd / c.account_equity_usd)


def adl_score(c: AdlCandidate) -> float:
    """PnL%·leverage when profitable, PnL%/leverage otherwise (higher: deleveraged first)."""
    pnl = pnl_fraction(c)
    lev = effective_leverage(c)
    if pnl > 0:
        return math.inf if math.isinf(lev) else pnl * lev
    if lev == 0:
        return -math.inf if pnl < 0 else 0.0
    return pnl / lev


def rank_for_adl(candidates: Iterable[AdlCandidate], bankrupt_side: int) -> list[AdlCandidate]:
    """Positions opposite ``bankrupt_side`` (+1 long), highest score first, ties by account id."""
    opposite = [c for c in candidates if c.side == -bankrupt_side and c.size_contracts != 0]
    return sorted(opposite, key=lambda c: (-adl_score(c), c.account_id))


def adl_lights(candidates: Sequence[AdlCandidate]) -> dict[str, int]:
    """Per account, 1–5 lights from its rank among positions on its side (5 = deleveraged first)."""
    out: dict[str, int] = {}
    for side in (1, -1):
        same = sorted((c for c in candidates if c.side == side), key=lambda c: (-adl_score(c), c.account_id))
        n = len(same)
        for rank, c in enumerate(same):
            out[c.account_id] = max(1, math.ceil(ADL_LIGHTS * (n - rank) / n))
    return out


def deleverage(bankrupt_size_contracts: Decimal, bankruptcy_price_usd: Decimal,
               candidates: Iterable[AdlCandidate]) -> tuple[tuple[AdlFill, ...], Decimal]:
    """Close ``bankrupt_size_contracts`` (signed) against ranked opposite positions at the bankruptcy price.

    Returns the fills in rank order and the size left unmatched (0 unless the opposite side is too small).
    Each counterparty is reduced by ``min(remaining, |its size|)``: reduce-only for it too.
    """
    side = 1 if bankrupt_size_contracts > 0 else -1
    remaining = abs(bankrupt_size_contracts)
    fills: list[AdlFill] = []
    for c in rank_for_adl(candidates, side):
        if remaining <= 0:
            break
        n = min(remaining, abs(c.size_contracts))
        pnl = c.side * n * c.contract_size * (bankruptcy_price_usd - c.entry_price_usd)
        fills.append(AdlFill(c.account_id, n, bankruptcy_price_usd, pnl))
        remaining -= n
    return tuple(fills), remaining


@dataclass(frozen=True)
class BankruptcyResolution:
    """How a bankrupt position is closed: part taken over by the fund, the rest by ADL."""

    coverage: Coverage
    fund_takeover_contracts: Decimal
    adl_contracts: Decimal
    adl_fills: tuple[AdlFill, ...]
    unmatched_contracts: Decimal


def resolve_bankruptcy(position_size_contracts: Decimal, contract_size: Decimal, mark_price_usd: Decimal,
                       bankruptcy_price_usd: Decimal, lot_size_contracts: Decimal, fund: InsuranceFund,
                       candidates: Iterable[AdlCandidate], settings: FundSettings = FundSettings(),
                       already_paid_for_account_usd: Decimal = ZERO) -> BankruptcyResolution:
    """Fund first (whole lots whose loss at the mark it can pay), ADL at the bankruptcy price for the rest.

    ``loss/contract = cs·|mark − b|``; ``fund lots = floor(min(balance, cap room)/(loss/contract·lot))``,
    ``paid = fund contracts · loss/contract``; the remaining ``|q| − fund contracts`` go to :func:`deleverage`.
    """
    size = abs(position_size_contracts)
    side = 1 if position_size_contracts > 0 else -1
    loss_per_contract = contract_size * max(side * (bankruptcy_price_usd - mark_price_usd), ZERO)
    if loss_per_contract == 0:
        takeover = size
        coverage = fund.cover(ZERO, settings, already_paid_for_account_usd)
    else:
        room = fund.cover(loss_per_contract * size, settings, already_paid_for_account_usd).paid_usd
        lots = (room / (loss_per_contract * lot_size_contracts)).to_integral_value(rounding=ROUND_FLOOR)
        takeover = min(lots * lot_size_contracts, size)
        coverage = fund.cover(takeover * loss_per_contract, settings, already_paid_for_account_usd)
    rest = size - takeover
    fills, unmatched = deleverage(side * rest, bankruptcy_price_usd, candidates) if rest > 0 else ((), ZERO)
    return BankruptcyResolution(coverage, takeover, rest, fills, unmatched)
