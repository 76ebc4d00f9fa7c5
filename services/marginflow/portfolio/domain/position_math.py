"""Position arithmetic for linear, USD-settled instruments (perpetuals, futures, options).

Pure functions on :class:`~decimal.Decimal`. Conventions:

* size ``s`` is signed contracts (long > 0), a trade is signed ``q`` (buy > 0) at price ``p``
  (USD per underlying unit), ``cs`` is the contract size (underlying units per contract).
* Adding to a position (or opening one) moves the average entry to the size-weighted mean
  ``e' = (|s|·e + |q|·p) / |s + q|``, rounded half-even to :data:`PRICE_QUANTUM`.
* Reducing realises ``closed · (p − e) · cs · sign(s)`` with ``closed = min(|s|, |q|)``,
  rounded *down* to :data:`USD_QUANTUM` (the venue never credits a fraction of a cent it does not
  have: a gain is rounded down, a loss made larger). The entry price of what remains is unchanged.
* A trade larger than the position flips it: the old side closes entirely (realising P&L as
  above) and the remainder opens on the other side at ``p``.
* Options are margined futures-style (the premium settles through P&L like a future's price
  move), so the same arithmetic applies with ``p`` the premium per underlying unit.
"""

from __future__ import annotations

import dataclasses
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Context, Decimal, localcontext

from marginflow.portfolio.domain.model import ZERO

PRICE_QUANTUM = Decimal("1e-10")  # USD per underlying unit: resolution of an average entry price
USD_QUANTUM = Decimal("1e-8")     # USD: resolution of realised P&L (USDC itself has 6 decimals)

# 60 significant digits: sizes and prices are bounded (see ledger limits) so every product and
# sum below is exact; only the two explicit quantize() calls round.
DECIMAL_CONTEXT = Context(prec=60, rounding=ROUND_HALF_EVEN)


@dataclasses.dataclass(frozen=True, slots=True)
class TradeResult:
    size: Decimal               # signed contracts after the trade
    entry_price_usd: Decimal    # average entry after the trade (0 when flat)
    realized_pnl_usd: Decimal   # realised by this trade, before fees
    closed_size: Decimal        # contracts of the old position closed (>= 0)


def realized_pnl_usd(closed_size: Decimal, entry_price_usd: Decimal, exit_price_usd: Decimal,
                     contract_size: Decimal, position_sign: int) -> Decimal:
    """P&L of closing ``closed_size`` contracts (>= 0) of a position of sign ``position_sign``,
    rounded down to :data:`USD_QUANTUM`."""
    with localcontext(DECIMAL_CONTEXT):
        return _realized_pnl_usd(closed_size, entry_price_usd, exit_price_usd, contract_size, position_sign)


def average_entry_usd(size: Decimal, entry_price_usd: Decimal, add_size: Decimal, price_usd: Decimal) -> Decimal:
    """Size-weighted mean entry after adding ``add_size`` (same sign as ``size``, or ``size`` = 0)."""
    with localcontext(DECIMAL_CONTEXT):
        return _average_entry_usd(size, entry_price_usd, add_size, price_usd)


def apply_trade(size: Decimal, entry_price_usd: Decimal, trade_size: Decimal, price_usd: Decimal,
                contract_size: Decimal) -> TradeResult:
    """The position after trading signed ``trade_size`` contracts at ``price_usd``."""
    with localcontext(DECIMAL_CONTEXT):
        return apply_trade_in_context(size, entry_price_usd, trade_size, price_usd, contract_size)


# The functions below assume DECIMAL_CONTEXT is the current context: the ledger enters it once per
# command rather than once per operation (entering a context costs more than the arithmetic).

def _realized_pnl_usd(closed_size: Decimal, entry_price_usd: Decimal, exit_price_usd: Decimal,
                      contract_size: Decimal, position_sign: int) -> Decimal:
    pnl = closed_size * (exit_price_usd - entry_price_usd) * contract_size * position_sign
    return pnl.quantize(USD_QUANTUM, rounding=ROUND_FLOOR).normalize()


def _average_entry_usd(size: Decimal, entry_price_usd: Decimal, add_size: Decimal, price_usd: Decimal) -> Decimal:
    if not size:
        # Opening: the mean of one price is the price (the same quantize as below).
        mean = price_usd
    else:
        size_abs, add_abs = abs(size), abs(add_size)
        mean = (size_abs * entry_price_usd + add_abs * price_usd) / (size_abs + add_abs)
    # normalize(): canonical digits (60000, not 60000.0000000000), the same value.
    return mean.quantize(PRICE_QUANTUM, rounding=ROUND_HALF_EVEN).normalize()


def apply_trade_in_context(size: Decimal, entry_price_usd: Decimal, trade_size: Decimal, price_usd: Decimal,
                           contract_size: Decimal) -> TradeResult:
    """:func:`apply_trade` for a caller that has already made DECIMAL_CONTEXT current."""
    if not trade_size:
        raise ValueError("trade size must not be zero")
    new_size = size + trade_size
    if not size or (size > 0) == (trade_size > 0):
        return TradeResult(new_size, _average_entry_usd(size, entry_price_usd, trade_size, price_usd), ZERO, ZERO)
    old_sign = 1 if size > 0 else -1
    size_abs, trade_abs = abs(size), abs(trade_size)
    closed = trade_abs if trade_abs < size_abs else size_abs   # min(), which keeps the first of equals
    pnl = _realized_pnl_usd(closed, entry_price_usd, price_usd, contract_size, old_sign)
    if not new_size:
        return TradeResult(ZERO, ZERO, pnl, closed)
    if (new_size > 0) == (old_sign > 0):
        return TradeResult(new_size, entry_price_usd, pnl, closed)
    # Flip: the remainder is a fresh position on the other side, entered at this price.
    return TradeResult(new_size, _as_entry(price_usd), pnl, closed)


def _as_entry(price_usd: Decimal) -> Decimal:
    if price_usd.as_tuple().exponent >= -10:  # type: ignore[operator]
        return price_usd
    return price_usd.quantize(PRICE_QUANTUM, rounding=ROUND_HALF_EVEN).normalize()
