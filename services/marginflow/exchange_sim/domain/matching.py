r"""IOC matching against a depth book: depth-aware slippage, partial fills, never beyond the limit.

A buy walks the asks from the best (lowest) price up, a sell the bids from the best (highest) down; each
level fills ``min(remaining, level size)`` at the level's price while the level's price is within the limit
(buy: ``ask ≤ limit``; sell: ``bid ≥ limit``). What is left when the limit or the book is reached is
cancelled (immediate-or-cancel). Slippage comes from the depth: the average price
``Σ price_i·size_i / Σ size_i`` worsens as the order eats deeper levels.

Fill ids are ``{order_id}-f{n}`` (``n`` = 0, 1, … per level filled), so the same order on the same book gives
the same fills: a replayed order is recognised by its ids.

All sizes (contracts) and prices (USD per unit of the underlying) are Decimal.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from enum import Enum

ZERO = Decimal(0)


class Side(str, Enum):
    BUY = "buy"
    SELL = "sell"


@dataclass(frozen=True)
class Level:
    """A price level: ``size_contracts`` available at ``price_usd``."""

    price_usd: Decimal
    size_contracts: Decimal


@dataclass(frozen=True)
class Book:
    """Bids best (highest) first, asks best (lowest) first."""

    instrument: str
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]

    def __post_init__(self) -> None:
        for side, levels, better in (("bids", self.bids, lambda a, b: a > b), ("asks", self.asks, lambda a, b: a < b)):
            for lv in levels:
                if lv.price_usd <= 0 or lv.size_contracts < 0:
                    raise ValueError(f"{self.instrument} {side}: prices > 0 and sizes ≥ 0")
            for a, b in zip(levels, levels[1:]):
                if not better(a.price_usd, b.price_usd):
                    raise ValueError(f"{self.instrument} {side} are not sorted best first")
        if self.bids and self.asks and self.bids[0].price_usd >= self.asks[0].price_usd:
            raise ValueError(f"{self.instrument}: crossed book")

    def cumulative(self, side: Side) -> tuple[tuple[Decimal, Decimal], ...]:
        """(price, cumulative size up to and including that price) on the side an order of ``side`` takes."""
        levels = self.asks if side is Side.BUY else self.bids
        out, total = [], ZERO
        for lv in levels:
            total += lv.size_contracts
            out.append((lv.price_usd, total))
        return tuple(out)


@dataclass(frozen=True)
class IocOrder:
    order_id: str
    instrument: str
    side: Side
    size_contracts: Decimal
    limit_price_usd: Decimal

    def __post_init__(self) -> None:
        if not self.order_id:
            raise ValueError("order_id is required")
        if self.size_contracts <= 0 or self.limit_price_usd <= 0:
            raise ValueError(f"order {self.order_id}: size and limit price must be > 0")


@dataclass(frozen=True)
class Fill:
    fill_id: str
    order_id: str
    instrument: str
    side: Side
    price_usd: Decimal
    size_contracts: Decimal


@dataclass(frozen=True)
class MatchResult:
    """Fills, what was filled and cancelled, the average price (None if nothing filled) and the book after."""

    fills: tuple[Fill, ...]
    filled_contracts: Decimal
    cancelled_contracts: Decimal
    average_price_usd: Decimal | None
    book_after: Book


def match_ioc(book: Book, order: IocOrder) -> MatchResult:
    """Fill ``order`` against ``book`` as an immediate-or-cancel limit order (see the module doc)."""
    if order.instrument != book.instrument:
        raise ValueError(f"order {order.order_id} is for {order.instrument}, the book is {book.instrument}")
    levels = list(book.asks if order.side is Side.BUY else book.bids)
    remaining = order.size_contracts
    fills: list[Fill] = []
    notional = ZERO
    k = 0
    while remaining > 0 and k < len(levels):
        lv = levels[k]
        limit = order.limit_price_usd
        within = lv.price_usd <= limit if order.side is Side.BUY else lv.price_usd >= limit
        if not within:
            break
        n = min(remaining, lv.size_contracts)
        if n > 0:
            fills.append(Fill(f"{order.order_id}-f{len(fills)}", order.order_id, order.instrument, order.side,
                              lv.price_usd, n))
            notional += n * lv.price_usd
            remaining -= n
            levels[k] = Level(lv.price_usd, lv.size_contracts - n)
        if levels[k].size_contracts == 0:
            k += 1
    rest = tuple(lv for lv in levels if lv.size_contracts > 0)
    after = Book(book.instrument, book.bids, rest) if order.side is Side.BUY else Book(book.instrument, rest, book.asks)
    filled = order.size_contracts - remaining
    return MatchResult(tuple(fills), filled, remaining, notional / filled if filled > 0 else None, after)


def book_around(instrument: str, mid_usd: Decimal, half_spread_fraction: Decimal, depth_contracts: Decimal,
                levels: int, tick_size_usd: Decimal, level_step_fraction: Decimal | None = None) -> Book:
    """A symmetric demo book from a mark's top of book and depth (as marketdata publishes them).

    Level ``i`` (0-based) sits at ``mid·(1 ∓ (h + i·step))`` (bids rounded down, asks up to the tick), with
    ``depth_contracts`` at each level; ``step`` defaults to ``h`` (the half-spread as a fraction of the mid).
    """
    if levels < 1 or mid_usd <= 0 or tick_size_usd <= 0 or half_spread_fraction < 0 or depth_contracts < 0:
        raise ValueError("levels ≥ 1, mid and tick > 0, spread and depth ≥ 0")
    step = half_spread_fraction if level_step_fraction is None else level_step_fraction
    bids, asks = [], []
    for i in range(levels):
        off = half_spread_fraction + i * step
        bid = (mid_usd * (1 - off) / tick_size_usd).to_integral_value(rounding=ROUND_FLOOR) * tick_size_usd
        ask = (mid_usd * (1 + off) / tick_size_usd).to_integral_value(rounding=ROUND_CEILING) * tick_size_usd
        if bid == ask:
            bid -= tick_size_usd
        if bid > 0 and (not bids or bid < bids[-1].price_usd):
            bids.append(Level(bid, depth_contracts))
        if not asks or ask > asks[-1].price_usd:
            asks.append(Level(ask, depth_contracts))
    return Book(instrument, tuple(bids), tuple(asks))
