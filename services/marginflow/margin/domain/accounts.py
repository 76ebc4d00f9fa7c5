"""The account table of one margin instance: a row per owned account, its book, and the margin
core's last results for it (cross IM and its parts, isolated IM per position), with every book also
kept in CSR form for the full recalculation.

Rows are never reused while the instance runs: a removed account's row is emptied (``rows[r] is
None``, ``computed[r] = False``) and the next CSR rebuild gives it no positions.

Every change of a row's book gives the row a new **stamp** (``stamp[r]``, unique over the table's
life): what was computed from a row can be told current by comparing stamps — one vectorised
comparison, where holding on to every row's book object would copy and later free 100k references
per evaluation. The stamp is set before the book is replaced, so a reader that finds the book it
holds in ``rows[r]`` and the stamp it remembers in ``stamp[r]`` (in that order) knows the row did not
change in between.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from marginflow.margin.domain.book import AccountBook, FlatBook

# Per-row arrays of core results (USD) and their dtypes.
_RESULT_ARRAYS = (("cross_im", np.float64), ("grid", np.float64), ("es", np.float64), ("minimum", np.float64),
                  ("liquidity", np.float64), ("computed", np.bool_), ("present", np.bool_),
                  ("stamp", np.int64))   # stamp: per row, see the module docstring


class AccountTable:
    def __init__(self, n_assets: int) -> None:
        self.rows: list[AccountBook | None] = []
        self.row_of: dict[str, int] = {}
        self.balances = np.zeros((0, n_assets))
        for name, dtype in _RESULT_ARRAYS:
            setattr(self, name, np.zeros(0, dtype=dtype))
        self.iso_im_by_row: dict[int, np.ndarray] = {}
        self.flat = FlatBook.build([])
        self.iso_im_flat = np.zeros(0)
        self.flat_dirty = False
        self._stamps = 0
        self._grow_hooks: list = []

    # ---- rows
    def on_grow(self, hook) -> None:
        """``hook(capacity)`` whenever the row capacity grows (per-row arrays kept elsewhere follow)."""
        self._grow_hooks.append(hook)

    @property
    def capacity(self) -> int:
        return int(self.cross_im.shape[0])

    def _grow(self, n: int) -> None:
        old = self.capacity
        if n <= old:
            return
        cap = max(n, 2 * old, 64)
        self.balances = _grown(self.balances, old, cap)
        for name, _dtype in _RESULT_ARRAYS:
            setattr(self, name, _grown(getattr(self, name), old, cap))
        for hook in self._grow_hooks:
            hook(cap)

    def row(self, account_id: str) -> int:
        """The account's row, a new one if it has none."""
        row = self.row_of.get(account_id)
        if row is None:
            row = len(self.rows)
            self.rows.append(None)
            self.row_of[account_id] = row
            self._grow(row + 1)
            self.flat_dirty = True
        return row

    def book(self, account_id: str) -> AccountBook | None:
        row = self.row_of.get(account_id)
        return self.rows[row] if row is not None and row < len(self.rows) else None

    def upsert(self, books: Sequence[AccountBook]) -> list[int]:
        """Store the newest revision of each account among ``books``; returns the rows that changed.
        An older revision than the one held (a redelivery) changes nothing."""
        latest: dict[str, AccountBook] = {}
        for b in books:
            prev = latest.get(b.account_id)
            if prev is None or b.revision >= prev.revision:
                latest[b.account_id] = b
        rows = []
        for b in latest.values():
            row = self.row(b.account_id)
            old = self.rows[row]
            if old is not None and b.revision < old.revision:
                continue
            self._restamp(row)
            self.rows[row] = b
            self.present[row] = True      # rows[row] is not None, as an array (full passes read it whole)
            self.balances[row] = b.balances
            rows.append(row)
            if not self.flat_dirty and not self.flat.try_update(row, b):
                self.flat_dirty = True
        return rows

    def _restamp(self, row: int) -> None:
        self._stamps += 1
        self.stamp[row] = self._stamps

    def current(self, rows: np.ndarray, stamps: np.ndarray) -> np.ndarray:
        """Those of ``rows`` whose book is still the one stamped ``stamps[rows]`` and computed."""
        return rows[(self.stamp[rows] == stamps[rows]) & self.computed[rows]]

    def remove(self, account_ids: Iterable[str]) -> list[int]:
        """Forget accounts (no longer owned); returns their rows."""
        removed = []
        for a in account_ids:
            row = self.row_of.pop(a, None)
            if row is None:
                continue
            self._restamp(row)
            self.rows[row] = None
            self.present[row] = False
            self.balances[row] = 0.0
            self.cross_im[row] = 0.0
            self.computed[row] = False
            self.iso_im_by_row.pop(row, None)
            self.flat_dirty = True
            removed.append(row)
        return removed

    # ---- core results
    def store_single(self, row: int, core: Mapping[str, np.ndarray]) -> None:
        """The core's results for one account margined alone."""
        self.cross_im[row] = float(core["cross_im"][0])
        self.grid[row] = float(core["grid"][0])
        self.es[row] = float(core["es"][0])
        self.minimum[row] = float(core["minimum"][0])
        self.liquidity[row] = float(core["liquidity"][0])
        self.computed[row] = True
        iso = np.asarray(core["isolated_im"], dtype=np.float64)
        if self.flat_dirty:   # the layout is stale: kept aside until the next rebuild
            self.iso_im_by_row[row] = iso.copy()
        else:
            lo = int(self.flat.indptr[row])
            hi = int(self.flat.indptr[row + 1])
            self.iso_im_flat[lo:hi] = 0.0
            self.iso_im_flat[lo:lo + iso.shape[0]] = iso

    def store_full(self, out: Mapping[str, np.ndarray]) -> None:
        """The core's results for every row of the current CSR book."""
        f = self.flat
        n = f.n_accounts
        self.cross_im[:n] = out["cross_im"]
        self.grid[:n] = out["grid"]
        self.es[:n] = out["es"]
        self.minimum[:n] = out["minimum"]
        self.liquidity[:n] = out["liquidity"]
        self.computed[:n] = self.present[:n]
        self.iso_im_flat = np.array(out["isolated_im"], dtype=np.float64)
        self.iso_im_by_row = {}

    def ensure_flat(self) -> FlatBook:
        """The CSR book of every row, rebuilt when a book outgrew its slot or rows were added/removed.

        Isolated IM per position carries over to the new layout: for every row whose number of
        positions is unchanged it is moved with one vectorised gather; rows recomputed alone since
        the layout went stale (``iso_im_by_row``) take their own values."""
        if self.flat_dirty or self.flat.n_accounts != len(self.rows):
            old, old_iso = self.flat, self.iso_im_flat
            self.flat = FlatBook.build(self.rows)
            self.iso_im_flat = _carry_over(old.indptr, old_iso, self.flat.indptr)
            for row, iso in self.iso_im_by_row.items():
                lo = int(self.flat.indptr[row])
                hi = int(self.flat.indptr[row + 1])
                self.iso_im_flat[lo:hi] = 0.0
                self.iso_im_flat[lo:lo + min(iso.shape[0], hi - lo)] = iso[:hi - lo]
            self.iso_im_by_row = {}
            self.flat_dirty = False
        return self.flat

    # ---- introspection
    def __len__(self) -> int:
        return len(self.row_of)

    def account_ids(self) -> list[str]:
        return list(self.row_of)

    def n_positions(self) -> int:
        return sum(b.n for b in self.rows if b is not None)


def _carry_over(old_indptr: np.ndarray, old_values: np.ndarray, new_indptr: np.ndarray) -> np.ndarray:
    """Per-position values of the old CSR layout moved to the new one, for every row whose length
    is the same in both (other rows: zeros)."""
    out = np.zeros(int(new_indptr[-1]))
    m = min(old_indptr.shape[0], new_indptr.shape[0]) - 1
    if m <= 0 or old_values.size == 0:
        return out
    old_len = np.diff(old_indptr[:m + 1])
    new_len = np.diff(new_indptr[:m + 1])
    rows = np.flatnonzero((old_len == new_len) & (new_len > 0))
    if rows.size == 0:
        return out
    lengths = new_len[rows]
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    offset = np.arange(int(lengths.sum())) - starts
    out[np.repeat(new_indptr[rows], lengths) + offset] = old_values[np.repeat(old_indptr[rows], lengths) + offset]
    return out


def _grown(a: np.ndarray, old: int, cap: int) -> np.ndarray:
    out = np.zeros((cap,) + a.shape[1:], dtype=a.dtype)
    out[:old] = a[:old]
    return out
