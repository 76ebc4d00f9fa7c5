r"""Bankruptcy price and fillable (limit) price of a position being liquidated — exact, in Decimal.

Units: sizes in contracts (signed: long > 0), ``contract_size`` in units of the underlying per contract,
prices in USD per unit of the underlying, amounts in USD. ``Q = size·contract_size``.

Bankruptcy price (dYdX v4 ``x/clob/keeper/liquidations.go`` ``GetBankruptcyPriceInQuoteQuantums``)
-----------------------------------------------------------------------------------------------
Closing ``Δ`` of a position (``Δ`` opposite in sign to the position) at the bankruptcy price leaves the
account's total net collateral ``TNC`` reduced by exactly the share of it that the closed part carried,
allocated by maintenance requirement::

    quote received at bankruptcy = −DNNV − TNC·|DMMR| / TMMR

with ``DNNV`` the change of the position's net notional (``Δ·cs·p``), ``DMMR`` the change of its MM
(``−PMMR·|Δ|/|q|`` for MM proportional to size) and ``TMMR`` the account's total MM. Per unit::

    b = p − TNC·(PMMR/TMMR) / Q

For a single-position account (``PMMR = TMMR``) this is the price at which the account's equity is
exactly 0 when the position is closed there: ``TNC + Q·(b − p) = 0``. With ``TNC ≥ 0`` a long's ``b`` is
at or below the oracle, a short's at or above; with ``TNC < 0`` it is beyond the oracle (the account is
bankrupt: closing at the oracle already loses money for the insurance fund).

Fillable price (dYdX v4 ``GetFillablePrice``; docs "Liquidations": "Fillable Price")
----------------------------------------------------------------------------------
::

    ABR      = clamp(BA·(1 − TNC/TMMR), 0, 1)          adjusted bankruptcy rating
    fillable = (PNNV − ABR·SMMR·PMMR) / PS  =  p − ABR·SMMR·PMMR / Q

``PNNV = Q·p`` (position net notional), ``SMMR`` the spread-to-maintenance-margin ratio, ``BA`` the
bankruptcy adjustment. At ``TNC = TMMR`` (just liquidatable) the fillable price is the oracle; as health
falls it moves away from the oracle by up to ``SMMR·PMMR/|Q|``. Here it is in addition clamped so it is
never beyond the bankruptcy price (a long's limit ≥ b, a short's ≤ b): a liquidation fill never needs
the insurance fund while the account's equity is non-negative.

Worked example (the golden test): long 1 BTC at an oracle of 50,000, MM fraction 3 % (PMMR = TMMR =
1,500), TNC = 1,200, SMMR = 1.5, BA = 1: ABR = 1 − 1,200/1,500 = 0.2; spread = 0.2·1.5·1,500 = 450;
fillable = 49,550; bankruptcy = 50,000 − 1,200 = 48,800.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

ZERO = Decimal(0)
ONE = Decimal(1)

# dYdX v4 defaults (FillablePriceConfig, genesis parameters in parts per million):
DEFAULT_SPREAD_TO_MM_RATIO = Decimal("1.5")     # SpreadToMaintenanceMarginRatioPpm = 1,500,000 (dimensionless)
DEFAULT_BANKRUPTCY_ADJUSTMENT = Decimal("1")    # BankruptcyAdjustmentPpm = 1,000,000 (dimensionless, ≥ 1)


@dataclass(frozen=True)
class PositionRisk:
    """What the price formulas need of one position and its account (exact values).

    Attributes
    ----------
    size_contracts : Decimal
        Signed position size (long > 0).
    contract_size : Decimal
        Units of the underlying per contract.
    oracle_price_usd : Decimal
        Mark/oracle price, USD per unit of the underlying.
    position_mm_usd : Decimal
        This position's maintenance requirement PMMR (USD, ≥ 0): its share of the account's MM.
    account_equity_usd : Decimal
        The account's total net collateral TNC (USD; may be negative).
    account_mm_usd : Decimal
        The account's total maintenance requirement TMMR (USD, > 0).
    """

    size_contracts: Decimal
    contract_size: Decimal
    oracle_price_usd: Decimal
    position_mm_usd: Decimal
    account_equity_usd: Decimal
    account_mm_usd: Decimal

    def __post_init__(self) -> None:
        for name in ("size_contracts", "contract_size", "oracle_price_usd", "position_mm_usd",
                     "account_equity_usd", "account_mm_usd"):
            value = getattr(self, name)
            if not isinstance(value, Decimal) or not value.is_finite():
                raise ValueError(f"{name} must be a finite Decimal, got {value!r}")
        if self.size_contracts == 0:
            raise ValueError("size_contracts must be non-zero")
        if self.contract_size <= 0 or self.oracle_price_usd <= 0:
            raise ValueError("contract_size and oracle_price_usd must be > 0")
        if self.position_mm_usd < 0 or self.account_mm_usd <= 0 or self.position_mm_usd > self.account_mm_usd:
            raise ValueError("need 0 ≤ position_mm_usd ≤ account_mm_usd and account_mm_usd > 0")

    @property
    def exposure(self) -> Decimal:
        """``Q = size·contract_size`` (signed units of the underlying)."""
        return self.size_contracts * self.contract_size

    @property
    def side(self) -> int:
        """+1 long, −1 short."""
        return 1 if self.size_contracts > 0 else -1

    @property
    def notional_usd(self) -> Decimal:
        return abs(self.exposure) * self.oracle_price_usd


def bankruptcy_price(r: PositionRisk) -> Decimal:
    """``b = p − TNC·(PMMR/TMMR)/Q`` (USD per unit of the underlying), dYdX ``GetBankruptcyPriceInQuoteQuantums``.

    May be ≤ 0 for a long whose share of equity exceeds its notional (closing at any price leaves equity ≥ 0).
    """
    return r.oracle_price_usd - r.account_equity_usd * r.position_mm_usd / (r.account_mm_usd * r.exposure)


def adjusted_bankruptcy_rating(account_equity_usd: Decimal, account_mm_usd: Decimal,
                               bankruptcy_adjustment: Decimal = DEFAULT_BANKRUPTCY_ADJUSTMENT) -> Decimal:
    """``ABR = clamp(BA·(1 − TNC/TMMR), 0, 1)``: 0 at ``TNC ≥ TMMR``, 1 at ``TNC ≤ 0`` (BA = 1)."""
    if account_mm_usd <= 0:
        raise ValueError("account_mm_usd must be > 0")
    abr = bankruptcy_adjustment * (ONE - account_equity_usd / account_mm_usd)
    return min(max(abr, ZERO), ONE)


def unclamped_fillable_price(r: PositionRisk, spread_to_mm_ratio: Decimal = DEFAULT_SPREAD_TO_MM_RATIO,
                             bankruptcy_adjustment: Decimal = DEFAULT_BANKRUPTCY_ADJUSTMENT) -> Decimal:
    """dYdX's fillable price ``p − ABR·SMMR·PMMR/Q`` as published (may be beyond the bankruptcy price)."""
    abr = adjusted_bankruptcy_rating(r.account_equity_usd, r.account_mm_usd, bankruptcy_adjustment)
    return r.oracle_price_usd - abr * spread_to_mm_ratio * r.position_mm_usd / r.exposure


def fillable_price(r: PositionRisk, spread_to_mm_ratio: Decimal = DEFAULT_SPREAD_TO_MM_RATIO,
                   bankruptcy_adjustment: Decimal = DEFAULT_BANKRUPTCY_ADJUSTMENT) -> Decimal:
    """Limit price of a liquidation order: dYdX's fillable price, never beyond the bankruptcy price.

    Long (the order sells): ``max(fillable, b)``; short (the order buys): ``min(fillable, b)``. Always between
    the oracle and the bankruptcy price when ``TNC ≥ 0``; for a bankrupt account (``TNC < 0``) it is the
    bankruptcy price itself, beyond the oracle, so no fill can make the deficit larger.
    """
    f = unclamped_fillable_price(r, spread_to_mm_ratio, bankruptcy_adjustment)
    b = bankruptcy_price(r)
    return max(f, b) if r.side > 0 else min(f, b)


def round_limit_to_tick(price_usd: Decimal, tick_size_usd: Decimal, position_side: int) -> Decimal:
    """A limit price on the tick grid, rounded away from the bankruptcy price (in the account's favour).

    Closing a long sells: rounded up; closing a short buys: rounded down (as dYdX
    ``ConvertFillablePriceToSubticks``). The result is at least one tick.
    """
    if tick_size_usd <= 0:
        raise ValueError("tick_size_usd must be > 0")
    ticks = (price_usd / tick_size_usd).to_integral_value(rounding=ROUND_CEILING if position_side > 0 else ROUND_FLOOR)
    return max(ticks, ONE) * tick_size_usd
