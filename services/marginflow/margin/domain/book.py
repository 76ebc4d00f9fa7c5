"""Accounts as arrays: instrument table, one account's positions, and every owned account in CSR form.

The margin core takes positions in CSR form (``indptr[N+1]``, one slot of rows per account). The
flat book keeps each account's slot; an account whose new positions fit its slot is rewritten in
place (padded with zero-size cross positions, which add nothing to any loss, minimum, add-on or
P&L), otherwise the flat arrays are rebuilt from the per-account records at the next use.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from marginflow.core import KIND_CALL, KIND_FUTURE, KIND_PERP, KIND_PUT
from marginflow.shared.universe import Kind, Universe
from marginflow.shared.units import MS_PER_YEAR

# The universe's instrument kinds (the wire's numbering) in the margin core's numbering.
CORE_KIND = {Kind.PERPETUAL: KIND_PERP, Kind.FUTURE: KIND_FUTURE, Kind.CALL: KIND_CALL, Kind.PUT: KIND_PUT}


@dataclasses.dataclass(frozen=True)
class InstrumentTable:
    """The instruments as arrays, in the order the risk arrays use."""

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

    @classmethod
    def from_universe(cls, universe: Universe) -> "InstrumentTable":
        underlyings = tuple(universe.underlyings)
        uidx = {u: i for i, u in enumerate(underlyings)}
        insts = list(universe.instruments.values())
        return cls(
            symbols=tuple(i.symbol for i in insts),
            kind=np.array([CORE_KIND[i.kind] for i in insts], dtype=np.int8),
            underlying=np.array([uidx[i.underlying] for i in insts], dtype=np.int32),
            underlyings=underlyings,
            contract_size=np.array([i.contract_size for i in insts], dtype=np.float64),
            strike=np.array([i.strike_usd for i in insts], dtype=np.float64),
            expiry_ms=np.array([i.expiry_ms for i in insts], dtype=np.int64))

    def is_option(self, k: int) -> bool:
        return int(self.kind[k]) in (KIND_CALL, KIND_PUT)

    def is_linear(self, k: int) -> bool:
        return int(self.kind[k]) in (KIND_PERP, KIND_FUTURE)

    def expiry_years_of(self, k: int, now_ms: int) -> float:
        """:meth:`expiry_years` of instrument ``k`` alone (the same arithmetic, without the whole array)."""
        if int(self.kind[k]) == KIND_PERP:
            return 0.0
        return max(float((self.expiry_ms[k] - now_ms) / MS_PER_YEAR), 0.0)

    def expiry_years(self, now_ms: int) -> np.ndarray:
        """ACT/365 years to expiry (0 for perpetuals and expired instruments)."""
        years = (self.expiry_ms - now_ms) / MS_PER_YEAR
        return np.where(self.kind == KIND_PERP, 0.0, np.maximum(years, 0.0))


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
    generation: int = 0    # advanced by every rewrite in place (what is derived from the arrays knows)

    @classmethod
    def of(cls, book: AccountBook) -> "FlatBook":
        """One account alone: its own arrays (no copies; books are never modified)."""
        n = book.n
        return cls(np.array([0, n], dtype=np.int64), _as(book.instrument, np.int32), _as(book.size, np.float64),
                   _as(book.entry, np.float64), _as(book.isolated, np.uint8),
                   _as(book.isolated_collateral, np.float64), np.zeros(n, dtype=np.int64))

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
        self.generation += 1
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


def _as(a: np.ndarray, dtype) -> np.ndarray:
    return a if a.dtype == dtype and a.flags.c_contiguous else np.ascontiguousarray(a, dtype=dtype)
