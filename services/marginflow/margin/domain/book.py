"""Accounts as arrays: instrument table, one account's positions, and every owned account in CSR form.

The margin core takes positions in CSR form (``indptr[N+1]``, one slot of rows per account). The
flat book keeps each account's slot; an account whose new positions fit its slot is rewritten in
place (padded with zero-size cross positions, which add nothing to any loss, minimum, add-on or
P&L), otherwise the flat arrays are rebuilt from the per-account records at the next use.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Margin-core instrument kinds.
CORE_PERP, CORE_FUTURE, CORE_CALL, CORE_PUT = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class InstrumentTable:
    symbols: tuple[str, ...]
    kind: np.ndarray            # int8, core kinds
    underlying: np.ndarray      # int32 index into ``underlyings``
    underlyings: tuple[str, ...]
    contract_size: np.ndarray   # float64, underlying units per contract
    strike: np.ndarray          # float64 USD (options)
    expiry_ms: np.ndarray       # int64 (0 for perpetuals)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", {s: i for i, s in enumerate(self.symbols)})
        object.__setattr__(self, "underlying_index", {u: i for i, u in enumerate(self.underlyings)})

    @property
    def n(self) -> int:
        return len(self.symbols)

    def expiry_years(self, now_ms: int) -> np.ndarray:
        years = (self.expiry_ms - now_ms) / (365.0 * 24 * 3600 * 1000)
        return np.where(self.kind == CORE_PERP, 0.0, np.maximum(years, 0.0))


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class AccountBook:
    """One account's positions (instrument indices) and collateral balances (per asset, asset units)."""

    account_id: str
    revision: int
    instrument: np.ndarray          # int32[n]
    size: np.ndarray                # float64[n], signed contracts
    entry: np.ndarray               # float64[n], USD
    isolated: np.ndarray            # uint8[n]
    isolated_collateral: np.ndarray  # float64[n], USD (0 for cross)
    balances: np.ndarray            # float64[A]
    updated_ms: int = 0

    @property
    def n(self) -> int:
        return int(self.instrument.shape[0])


def empty_book(account_id: str, n_assets: int) -> AccountBook:
    return AccountBook(account_id, 0, np.zeros(0, np.int32), np.zeros(0), np.zeros(0), np.zeros(0, np.uint8),
                       np.zeros(0), np.zeros(n_assets))


@dataclasses.dataclass
class FlatBook:
    """Positions of every account row, CSR; ``owner[j]`` = the row of position j."""

    indptr: np.ndarray
    instrument: np.ndarray
    size: np.ndarray
    entry: np.ndarray
    isolated: np.ndarray
    isolated_collateral: np.ndarray
    owner: np.ndarray

    @classmethod
    def build(cls, books: list[AccountBook | None]) -> "FlatBook":
        lengths = np.fromiter((b.n if b is not None else 0 for b in books), dtype=np.int64, count=len(books))
        indptr = np.zeros(len(books) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        live = [b for b in books if b is not None and b.n]

        def cat(attr: str, dtype) -> np.ndarray:
            if not live:
                return np.zeros(0, dtype=dtype)
            return np.concatenate([getattr(b, attr) for b in live]).astype(dtype, copy=False)

        owner = np.repeat(np.arange(len(books), dtype=np.int64), lengths)
        return cls(indptr, cat("instrument", np.int32), cat("size", np.float64), cat("entry", np.float64),
                   cat("isolated", np.uint8), cat("isolated_collateral", np.float64), owner)

    def try_update(self, row: int, book: AccountBook) -> bool:
        """Rewrite ``row`` in place when its new positions fit its slot; False when a rebuild is needed."""
        if row + 1 >= self.indptr.shape[0]:
            return False
        lo, hi = int(self.indptr[row]), int(self.indptr[row + 1])
        n = book.n
        if n > hi - lo:
            return False
        end = lo + n
        self.instrument[lo:end] = book.instrument
        self.size[lo:end] = book.size
        self.entry[lo:end] = book.entry
        self.isolated[lo:end] = book.isolated
        self.isolated_collateral[lo:end] = book.isolated_collateral
        if end < hi:   # padding: zero-size cross positions on the first instrument of the slot
            self.instrument[end:hi] = self.instrument[lo] if n else 0
            self.size[end:hi] = 0.0
            self.entry[end:hi] = 0.0
            self.isolated[end:hi] = 0
            self.isolated_collateral[end:hi] = 0.0
        return True

    @property
    def n_accounts(self) -> int:
        return int(self.indptr.shape[0] - 1)
