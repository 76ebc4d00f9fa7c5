"""Trade arithmetic of hypothetical trades (what-if): the book after trades, P&L preserved."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from marginflow.margin.domain.book import AccountBook


@dataclasses.dataclass(frozen=True)
class TradeDelta:
    """A hypothetical trade: ``size`` contracts (signed) of instrument index ``instrument`` at ``price``
    USD (None: at the mark)."""

    instrument: int
    size: float
    price: float | None = None


def check_trades(trades: Sequence[TradeDelta], n_instruments: int) -> None:
    for t in trades:
        if not (0 <= t.instrument < n_instruments) or not math.isfinite(t.size) or t.size == 0:
            raise ValueError(f"bad trade {t}")


def apply_trades(book: AccountBook, trades: Sequence[TradeDelta], mark_price: np.ndarray,
                 contract_size: np.ndarray, settlement_column: int) -> AccountBook:
    """The book after hypothetical trades.

    Each trade adds to the first cross position on its instrument (or opens one); the entry is
    re-averaged so that P&L at any mark is that of the old position plus the trade at its price
    (default: the mark): ``e' = (q₁·e₁ + Δq·p) / (q₁ + Δq)``. A position closed to zero leaves its
    P&L as settlement cash: ``−(q₁·e₁ + Δq·p)·cs`` with ``q₁ + Δq = 0``.
    """
    inst = book.instrument.tolist()
    size = book.size.tolist()
    entry = book.entry.tolist()
    iso = book.isolated.tolist()
    coll = book.isolated_collateral.tolist()
    balances = book.balances.copy()
    for t in trades:
        price = float(mark_price[t.instrument]) if t.price is None else t.price
        cs = float(contract_size[t.instrument])
        j = next((p for p, k in enumerate(inst) if k == t.instrument and not iso[p]), None)
        if j is None:
            inst.append(t.instrument)
            size.append(t.size)
            entry.append(price)
            iso.append(0)
            coll.append(0.0)
            continue
        cost = size[j] * entry[j] + t.size * price
        new = size[j] + t.size
        if abs(new) <= 1e-12 * max(abs(size[j]), abs(t.size)):
            balances[settlement_column] -= cost * cs
            size[j], entry[j] = 0.0, 0.0
        else:
            size[j], entry[j] = new, cost / new
    return AccountBook(book.account_id, book.revision, np.asarray(inst, np.int32), np.asarray(size, np.float64),
                       np.asarray(entry, np.float64), np.asarray(iso, np.uint8), np.asarray(coll, np.float64),
                       balances, book.updated_ms)
