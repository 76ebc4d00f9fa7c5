"""The generator's fills, as a pure function of their sequence number.

Fill ``seq`` goes to account ``(seq · stride) mod N`` (``stride`` coprime with N, so consecutive fills
land on accounts far apart and every account is visited once per N fills), trades a linear instrument
(perpetuals and dated futures: their price is the index plus a basis, no option premium to model) for
1–3 lots, on the side a hash of ``seq`` picks, at the instrument's reference price rounded to its tick.
Sizes are whole lots, so the portfolio service's lot-size rule accepts every one. Fees are zero: what
is checked is positions, not cash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from decimal import Decimal

BUY, SELL = 1, 2          # account.v1.Side values
FUTURE_BASIS = 0.08       # annualised basis of futures over the index (as the demo book prices them)


@dataclasses.dataclass(frozen=True)
class Tradable:
    symbol: str
    lot: Decimal             # contracts per lot
    price_usd: Decimal       # reference price, on the tick


@dataclasses.dataclass(frozen=True)
class PlannedFill:
    fill_id: str
    account_id: str
    instrument: str
    side: int                # BUY or SELL
    size: Decimal            # contracts, > 0, whole lots
    price_usd: Decimal


def coprime_stride(accounts: int) -> int:
    """A stride near 0.618·N coprime with N (golden-ratio spacing)."""
    if accounts <= 1:
        return 1
    stride = max(1, int(accounts * 0.6180339887))
    while math.gcd(stride, accounts) != 1:
        stride += 1
    return stride


def on_tick(price: float, tick: float) -> Decimal:
    t = Decimal(repr(tick))
    return max(1, round(price / tick)) * t


class FillPlan:
    """``fill(seq)`` for seq = 0, 1, 2, …: the same arguments always give the same fills."""

    def __init__(self, run_id: str, account_ids: list[str], tradables: list[Tradable]) -> None:
        if not account_ids or not tradables:
            raise ValueError("a fill plan needs accounts and instruments")
        self.run_id = run_id
        self.accounts = account_ids
        self.tradables = tradables
        self.stride = coprime_stride(len(account_ids))

    def fill(self, seq: int) -> PlannedFill:
        n = len(self.accounts)
        account = self.accounts[(seq * self.stride) % n]
        h = hashlib.blake2b(f"{self.run_id}:{seq}".encode(), digest_size=8).digest()
        inst = self.tradables[h[0] % len(self.tradables)]
        lots = 1 + h[1] % 3
        side = BUY if h[2] & 1 else SELL
        return PlannedFill(f"{self.run_id}-f{seq}", account, inst.symbol, side, inst.lot * lots, inst.price_usd)


def tradables_of(universe, as_of_ms: int) -> list[Tradable]:
    """Perpetuals and futures of ``universe`` (a ``shared.universe.Universe``) with reference prices
    (futures: the index carried at the basis to their expiry, seen from ``as_of_ms``)."""
    out = []
    for inst in sorted(universe.instruments.values(), key=lambda i: i.symbol):
        kind = inst.kind.name
        if kind not in ("PERPETUAL", "FUTURE"):
            continue
        index = universe.underlyings[inst.underlying].index_price_usd
        price = index if kind == "PERPETUAL" else index * (1 + FUTURE_BASIS * max(0.0, inst.years_to_expiry(as_of_ms)))
        out.append(Tradable(inst.symbol, Decimal(repr(inst.lot_size)), on_tick(price, inst.tick_size_usd)))
    return out

