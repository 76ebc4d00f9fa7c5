r"""Liquidation fee, fill settlement against the bankruptcy price, and the insurance-fund ledger (exact money).

Fee and deficit of one liquidation fill (dYdX v4 ``liquidations.go`` ``GetLiquidationInsuranceFundDelta``)
-------------------------------------------------------------------------------------------------------
A fill of ``n`` contracts (``n > 0``) of a position on side ``s`` (+1 long: the order sells; −1 short:
it buys) at price ``f``, with bankruptcy price ``b``::

    surplus  = s·n·cs·(f − b)                  USD the fill leaves above bankruptcy
    fee      = min(rate·n·cs·f, max(surplus, 0))   to the insurance fund (rounded down to the cent)
    deficit  = max(−surplus, 0)                 paid by the insurance fund (rounded up to the cent)

so a fee never pushes the account below zero, and a fill below bankruptcy is covered, not charged.
Default rate 1.5 % (dYdX ``MaxLiquidationFeePpm`` = 15,000; docs: "Maximum Liquidation Penalty of 1.5 %").

Insurance fund
--------------
A value type: ``InsuranceFund(balance_usd)``; ``apply_fee`` adds, ``cover`` pays a deficit up to the
balance and a per-account cap (dYdX ``SubaccountBlockLimits.MaxQuantumsInsuranceLost`` bounds the fund's
loss per subaccount per block), returning what it could not cover — the amount auto-deleveraging must
absorb. The balance never goes negative.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal

from marginflow.shared.money import cents_toward_ceiling, cents_toward_floor

ZERO = Decimal(0)
DEFAULT_MAX_FEE_RATE = Decimal("0.015")   # dimensionless fraction of fill notional (dYdX 15,000 ppm)


@dataclass(frozen=True)
class FillSettlement:
    """Money of one liquidation fill: ``fee_usd`` to the fund, or ``deficit_usd`` from it (never both)."""

    notional_usd: Decimal
    surplus_usd: Decimal      # signed: what the fill leaves above bankruptcy
    fee_usd: Decimal
    deficit_usd: Decimal


def settle_liquidation_fill(position_side: int, fill_size_contracts: Decimal, contract_size: Decimal,
                            fill_price_usd: Decimal, bankruptcy_price_usd: Decimal,
                            fee_rate: Decimal = DEFAULT_MAX_FEE_RATE) -> FillSettlement:
    """Fee (capped at the surplus above bankruptcy) or deficit of a liquidation fill; see the module formulas.

    Parameters
    ----------
    position_side : {+1, −1}
        Side of the position being reduced (+1 long: the fill sells).
    fill_size_contracts : Decimal
        Contracts filled (> 0).
    contract_size, fill_price_usd, bankruptcy_price_usd : Decimal
        Underlying units per contract; USD per unit of the underlying.
    fee_rate : Decimal
        Liquidation fee as a fraction of fill notional (0 ≤ rate ≤ 1).
    """
    if position_side not in (1, -1):
        raise ValueError("position_side must be +1 or -1")
    if fill_size_contracts <= 0 or contract_size <= 0 or fill_price_usd <= 0:
        raise ValueError("fill size, contract size and fill price must be > 0")
    if not ZERO <= fee_rate <= 1:
        raise ValueError("fee_rate must be in [0, 1]")
    units = fill_size_contracts * contract_size
    notional = units * fill_price_usd
    surplus = position_side * units * (fill_price_usd - bankruptcy_price_usd)
    if surplus < 0:
        return FillSettlement(notional, surplus, ZERO, cents_toward_ceiling(-surplus))
    fee = cents_toward_floor(min(fee_rate * notional, surplus))
    return FillSettlement(notional, surplus, fee, ZERO)


def liquidation_fee_usd(position_side: int, fill_size_contracts: Decimal, contract_size: Decimal,
                        fill_price_usd: Decimal, bankruptcy_price_usd: Decimal,
                        fee_rate: Decimal = DEFAULT_MAX_FEE_RATE) -> Decimal:
    """``min(rate·notional, max(surplus, 0))`` to the cent (down): the fee of one liquidation fill."""
    return settle_liquidation_fill(position_side, fill_size_contracts, contract_size, fill_price_usd,
                                   bankruptcy_price_usd, fee_rate).fee_usd


@dataclass(frozen=True)
class FundSettings:
    """``max_loss_per_account_usd``: most the fund pays for one account's episode (None: no cap)."""

    max_loss_per_account_usd: Decimal | None = None

    def __post_init__(self) -> None:
        if self.max_loss_per_account_usd is not None and self.max_loss_per_account_usd < 0:
            raise ValueError("max_loss_per_account_usd must be ≥ 0")


@dataclass(frozen=True)
class Coverage:
    """Result of covering a deficit: the fund after, what it paid, what is left for ADL."""

    fund: "InsuranceFund"
    paid_usd: Decimal
    uncovered_usd: Decimal


@dataclass(frozen=True)
class InsuranceFund:
    """The insurance fund's balance (USD, exact, ≥ 0). Immutable: every operation returns a new value."""

    balance_usd: Decimal = ZERO

    def __post_init__(self) -> None:
        if not isinstance(self.balance_usd, Decimal) or not self.balance_usd.is_finite() or self.balance_usd < 0:
            raise ValueError(f"balance_usd must be a finite Decimal ≥ 0, got {self.balance_usd!r}")

    def apply_fee(self, fee_usd: Decimal) -> "InsuranceFund":
        """The fund after receiving a liquidation fee (≥ 0)."""
        if fee_usd < 0:
            raise ValueError("a fee is ≥ 0")
        return replace(self, balance_usd=self.balance_usd + fee_usd)

    def cover(self, deficit_usd: Decimal, settings: FundSettings = FundSettings(),
              already_paid_for_account_usd: Decimal = ZERO) -> Coverage:
        """Pay ``deficit_usd`` up to the balance and the per-account cap; the rest is uncovered (→ ADL).

        ``paid = min(deficit, balance, cap − already_paid)``; ``uncovered = deficit − paid``.
        """
        if deficit_usd < 0 or already_paid_for_account_usd < 0:
            raise ValueError("deficit and already-paid amounts are ≥ 0")
        room = self.balance_usd
        cap = settings.max_loss_per_account_usd
        if cap is not None:
            room = min(room, max(cap - already_paid_for_account_usd, ZERO))
        paid = min(deficit_usd, room)
        return Coverage(replace(self, balance_usd=self.balance_usd - paid), paid, deficit_usd - paid)
