"""Contingency charges added to the scenario margin (Deribit portfolio margin's contingency components).

The grid revalues each position at the same scenario, so two things it treats as perfect look riskier
in a real close-out:

* **Net short options per strike.** Per account (cross positions), underlying, expiry and strike, the
  options are netted in underlying units (calls and puts together, Deribit: "call +10 and put −20 at
  strike X: net short 10"); a net short amount ``n`` costs ``option_rate · n · index`` USD (Deribit:
  0.01 BTC per net short option on 1 BTC, i.e. 1 % of the underlying's value). It covers what the grid
  cannot see between its points (gamma, a jump in the smile at that strike).
* **Basis of offsetting futures/perpetuals.** Per account (cross) and underlying, the linear positions
  netted per instrument; ``L`` = long units, ``S`` = short units; the offset ``min(L, S)`` is long one
  expiry and short another (a calendar spread or perpetual vs future), exposed to the basis between
  them, which the grid's single price move per underlying cannot show: ``basis_rate · min(L, S) ·
  index`` USD (Deribit: 1 % of the underlying value of offsetting futures).

Each isolated position is margined alone: a short option pays ``option_rate · |q| · cs · index``, a
linear one has nothing to offset. Amounts are USD, rounded (up, as every requirement) only at the wire.

Per position (Explain): the strike's charge is shared by its short positions in proportion to their
short units, the basis charge by the underlying's linear positions in proportion to their units; the
shares add up to the account's charges.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from marginflow.core import KIND_CALL, KIND_FUTURE, KIND_PERP, KIND_PUT


@dataclasses.dataclass(frozen=True)
class ContingencyRates:
    option_rate: float = 0.0    # fraction of the underlying's value per net short option unit, per strike
    basis_rate: float = 0.0     # fraction of the underlying's value of offsetting linear positions

    def __post_init__(self) -> None:
        for name in ("option_rate", "basis_rate"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")

    @property
    def active(self) -> bool:
        return self.option_rate > 0.0 or self.basis_rate > 0.0


@dataclasses.dataclass(frozen=True)
class ContingencyCharges:
    cross: np.ndarray              # [N] option + basis charges of the cross positions, USD
    cross_option: np.ndarray       # [N] net short options per strike, USD
    cross_basis: np.ndarray        # [N] offsetting linear positions, USD
    isolated: np.ndarray           # [nnz] each isolated position's own charge (0 for cross positions), USD
    isolated_per_account: np.ndarray  # [N] Σ of ``isolated`` per account, USD
    position_option: np.ndarray    # [nnz] share of the option charge (cross) or own charge (isolated), USD
    position_basis: np.ndarray     # [nnz] share of the basis charge, USD


@dataclasses.dataclass(frozen=True)
class Netting:
    """What a book's charges are made of, before any price: the net short units per (account, strike)
    of cross options, the offsetting units per (account, underlying) of cross linear positions, and
    the short units of each isolated option. Entries with nothing to charge are left out. A full
    recalculation on a new risk version (new index prices) reuses it while the positions stand."""

    n_accounts: int
    n_positions: int
    option_account: np.ndarray    # [g] account of each net short strike
    option_instrument: np.ndarray  # [g] one instrument of that strike (its USD per unit)
    option_units: np.ndarray      # [g] net short underlying units, > 0
    basis_account: np.ndarray     # [b] account of each offset
    basis_underlying: np.ndarray  # [b] its underlying
    basis_units: np.ndarray       # [b] min(long, short) underlying units, > 0
    iso_position: np.ndarray      # [i] isolated short options (position index)
    iso_account: np.ndarray       # [i]
    iso_instrument: np.ndarray    # [i]
    iso_units: np.ndarray         # [i] short underlying units, > 0


def _segments(key: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Group equal keys: (segment of each element, index of each segment's first element), or
    (None, None) when the keys are strictly increasing (each element its own segment). Keys come
    in account order (CSR) with only an account's few positions out of order, so a stable sort
    (timsort: runs) is close to linear; without repeats no sort is needed at all."""
    if key.size < 2 or bool(np.all(key[1:] > key[:-1])):
        return None, None         # every key once and in order: each element is its own segment
    order = np.argsort(key, kind="stable")
    ks = key[order]
    start = np.empty(ks.size, dtype=bool)
    start[0] = True
    np.not_equal(ks[1:], ks[:-1], out=start[1:])
    seg_sorted = np.cumsum(start) - 1
    seg = np.empty(key.size, dtype=np.int64)
    seg[order] = seg_sorted
    return seg, order[start]


class ContingencyTable:
    """Per-instrument constants of one model: strike groups and USD per underlying unit at the index."""

    def __init__(self, kind: np.ndarray, underlying: np.ndarray, strike: np.ndarray, expiry_ms: np.ndarray,
                 contract_size: np.ndarray, index_price: np.ndarray, rates: ContingencyRates) -> None:
        kind = np.asarray(kind)
        self.rates = rates
        self.n_underlyings = int(index_price.shape[0])
        self.underlying = np.asarray(underlying, dtype=np.int64)
        self.units = np.asarray(contract_size, dtype=np.float64)          # underlying units per contract
        value = np.asarray(index_price, dtype=np.float64)[self.underlying]  # USD per underlying unit
        self.is_option = (kind == KIND_CALL) | (kind == KIND_PUT)
        self.is_linear = (kind == KIND_PERP) | (kind == KIND_FUTURE)
        self.option_usd_per_unit = np.where(self.is_option, rates.option_rate * value, 0.0)
        self.basis_usd_per_unit = np.where(self.is_linear, rates.basis_rate * value, 0.0)
        self.basis_usd_per_underlying = rates.basis_rate * np.asarray(index_price, dtype=np.float64)
        # One group per (underlying, expiry, strike): calls and puts of a strike net together.
        groups: dict[tuple[int, int, float], int] = {}
        group = np.full(kind.shape[0], -1, dtype=np.int64)
        for k in np.flatnonzero(self.is_option):
            key = (int(self.underlying[k]), int(expiry_ms[k]), float(strike[k]))
            group[k] = groups.setdefault(key, len(groups))
        self.group = group
        self.n_groups = len(groups)

    def _structure(self) -> tuple:
        return (self.underlying, self.units, self.group, self.is_option, self.is_linear)

    def same_structure(self, other: "ContingencyTable") -> bool:
        """The same instruments, strike groups, kinds and rates: a netting of one serves the other."""
        return self.rates == other.rates and all(np.array_equal(a, b) for a, b in zip(self._structure(), other._structure()))

    def netting(self, indptr: np.ndarray, instrument: np.ndarray, size: np.ndarray,
                isolated: np.ndarray) -> Netting:
        """The price-free part of the charges of every account (CSR)."""
        indptr = np.asarray(indptr, dtype=np.int64)
        instrument = np.asarray(instrument)
        size = np.asarray(size, dtype=np.float64)
        iso = np.asarray(isolated)
        iso = iso if iso.dtype == bool else iso != 0
        n, nnz = indptr.shape[0] - 1, instrument.shape[0]
        none_i, none_f = np.zeros(0, dtype=np.int64), np.zeros(0)
        option = (none_i, none_i, none_f)
        basis = (none_i, none_i, none_f)
        iso_part = (none_i, none_i, none_i, none_f)
        if nnz:
            owner = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
            units = size * self.units[instrument]                 # signed underlying units
            opt = self.is_option[instrument]
            cross = (units != 0.0) & ~iso
            sel = np.flatnonzero(iso & opt & (units < 0.0))
            iso_part = (sel, owner[sel], instrument[sel].astype(np.int64), -units[sel])
            if self.rates.option_rate > 0.0:
                sel = np.flatnonzero(cross & opt)
                if sel.size:
                    k_sel, q_sel, acc = instrument[sel], units[sel], owner[sel]
                    seg, first = _segments(acc * max(self.n_groups, 1) + self.group[k_sel])
                    if seg is None:
                        net, acc_first, k_first = q_sel, acc, k_sel
                    else:
                        net = np.bincount(seg, weights=q_sel, minlength=first.size)
                        acc_first, k_first = acc[first], k_sel[first]
                    keep = np.flatnonzero(net < 0.0)
                    option = (acc_first[keep], k_first[keep].astype(np.int64), -net[keep])
            if self.rates.basis_rate > 0.0:
                sel = np.flatnonzero(cross & self.is_linear[instrument])
                if sel.size:
                    U = max(self.n_underlyings, 1)
                    k_sel, q_sel, acc = instrument[sel], units[sel], owner[sel]
                    # Netted per instrument first: two rows of one instrument are one expiry, no basis.
                    iseg, ifirst = _segments(acc * self.units.shape[0] + k_sel)
                    if iseg is None:
                        iseg = ifirst = np.arange(sel.size)
                    inet = np.bincount(iseg, weights=q_sel, minlength=ifirst.size)
                    # per (account, underlying): a key space of N·U, summed without a sort
                    ukey = acc[ifirst] * U + self.underlying[k_sel[ifirst]]
                    long_u = np.bincount(ukey, weights=np.maximum(inet, 0.0), minlength=n * U)
                    short_u = np.bincount(ukey, weights=np.maximum(-inet, 0.0), minlength=n * U)
                    offset = np.minimum(long_u, short_u)
                    keep = np.flatnonzero(offset > 0.0)
                    basis = (keep // U, keep % U, offset[keep])
        return Netting(n, nnz, *option, *basis, *iso_part)

    def charges_of(self, net: Netting) -> ContingencyCharges:
        """The accounts' charges at this model's index prices (per-position shares left at 0)."""
        n, nnz = net.n_accounts, net.n_positions
        zeros_n, zeros_p = np.zeros(n), np.zeros(nnz)
        cross_option = (np.bincount(net.option_account, weights=net.option_units
                                    * self.option_usd_per_unit[net.option_instrument], minlength=n)
                        if net.option_account.size else zeros_n)
        cross_basis = (np.bincount(net.basis_account, weights=net.basis_units
                                   * self.basis_usd_per_underlying[net.basis_underlying], minlength=n)
                       if net.basis_account.size else zeros_n)
        iso_charge = np.zeros(nnz)
        iso_per_account = zeros_n
        if net.iso_position.size:
            amounts = net.iso_units * self.option_usd_per_unit[net.iso_instrument]
            iso_charge[net.iso_position] = amounts
            iso_per_account = np.bincount(net.iso_account, weights=amounts, minlength=n)
        return ContingencyCharges(cross_option + cross_basis, cross_option, cross_basis, iso_charge,
                                  iso_per_account, zeros_p, zeros_p)

    def charges_one(self, instrument: np.ndarray, size: np.ndarray, isolated: np.ndarray) -> ContingencyCharges:
        """:meth:`charges_of` the :meth:`netting` of one account (``indptr = [0, n]``), bit for bit, without
        the batch's arrays: a query margins one account of a few positions, where the batch's numpy calls
        on arrays of a few elements cost far more than the arithmetic. Every sum is taken in the order the
        batch's ``bincount`` takes it (element order, from 0.0), the strikes and underlyings in ascending
        key order as the batch's segments come; per-position shares left at 0, as in :meth:`charges_of`."""
        ks = np.asarray(instrument).tolist()
        nnz = len(ks)
        q = np.asarray(size, dtype=np.float64).tolist()
        iso = [bool(x) for x in np.asarray(isolated).tolist()]
        rates = self.rates
        units_per = self.units
        is_option, is_linear = self.is_option, self.is_linear
        option_usd = self.option_usd_per_unit
        iso_charge = np.zeros(nnz)
        iso_total = 0.0
        strikes: dict[int, list] = {}     # strike group → [net units from 0.0, first instrument]
        linear: dict[int, float] = {}     # instrument → net units from 0.0
        for j in range(nnz):
            k = ks[j]
            units = q[j] * float(units_per[k])
            if is_option[k]:
                if iso[j]:
                    if units < 0.0:
                        amount = -units * float(option_usd[k])
                        iso_charge[j] = amount
                        iso_total += amount
                elif units != 0.0 and rates.option_rate > 0.0:
                    g = int(self.group[k])
                    kept = strikes.get(g)
                    if kept is None:
                        strikes[g] = [0.0 + units, k]
                    else:
                        kept[0] += units
            elif is_linear[k] and not iso[j] and units != 0.0 and rates.basis_rate > 0.0:
                linear[k] = linear.get(k, 0.0) + units
        cross_option = 0.0
        for g in sorted(strikes):
            net, k = strikes[g]
            if net < 0.0:
                cross_option += -net * float(option_usd[k])
        cross_basis = 0.0
        if linear:
            long_u: dict[int, float] = {}
            short_u: dict[int, float] = {}
            for k in sorted(linear):
                u = int(self.underlying[k])
                net = linear[k]
                long_u[u] = long_u.get(u, 0.0) + max(net, 0.0)
                short_u[u] = short_u.get(u, 0.0) + max(-net, 0.0)
            per_underlying = self.basis_usd_per_underlying
            for u in sorted(long_u):
                offset = min(long_u[u], short_u[u])
                if offset > 0.0:
                    cross_basis += offset * float(per_underlying[u])
        zeros_p = np.zeros(nnz)
        return ContingencyCharges(np.array([cross_option + cross_basis]), np.array([cross_option]),
                                  np.array([cross_basis]), iso_charge, np.array([iso_total]), zeros_p, zeros_p)

    def charges(self, indptr: np.ndarray, instrument: np.ndarray, size: np.ndarray,
                isolated: np.ndarray, shares: bool = True) -> ContingencyCharges:
        """The charges of every account (CSR); ``shares=False`` leaves the per-position shares at 0
        (a full recalculation needs the accounts' totals only)."""
        indptr = np.asarray(indptr, dtype=np.int64)
        instrument = np.asarray(instrument)
        size = np.asarray(size, dtype=np.float64)
        iso = np.asarray(isolated)
        iso = iso if iso.dtype == bool else iso != 0
        n = indptr.shape[0] - 1
        nnz = instrument.shape[0]
        zeros_n, zeros_p = np.zeros(n), np.zeros(nnz)
        if not self.rates.active or nnz == 0:
            return ContingencyCharges(zeros_n, zeros_n, zeros_n, zeros_p, zeros_n, zeros_p, zeros_p)
        if not shares:   # totals only: the price-free netting, priced
            return self.charges_of(self.netting(indptr, instrument, size, iso))
        owner = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
        units = size * self.units[instrument]                 # signed underlying units
        live = units != 0.0
        opt = self.is_option[instrument]

        pos_option = np.zeros(nnz)
        pos_basis = np.zeros(nnz)
        cross_option = zeros_n
        cross_basis = zeros_n
        # Isolated short options, alone.
        iso_sel = np.flatnonzero(iso & opt & (units < 0.0))
        iso_charge = np.zeros(nnz)
        iso_charge[iso_sel] = -units[iso_sel] * self.option_usd_per_unit[instrument[iso_sel]]
        pos_option[iso_sel] = iso_charge[iso_sel]
        cross = live & ~iso

        if self.rates.option_rate > 0.0:
            sel = np.flatnonzero(cross & opt)
            if sel.size:
                k_sel, q_sel, acc = instrument[sel], units[sel], owner[sel]
                seg, first = _segments(acc * max(self.n_groups, 1) + self.group[k_sel])
                net = np.bincount(seg, weights=q_sel, minlength=first.size) if seg is not None else q_sel
                charge = np.maximum(-net, 0.0) * self.option_usd_per_unit[k_sel[first] if seg is not None else k_sel]
                cross_option = np.bincount(acc[first] if seg is not None else acc, weights=charge, minlength=n)
                short_units = np.maximum(-q_sel, 0.0)
                if seg is None:
                    pos_option[sel] = charge
                else:
                    short = np.bincount(seg, weights=short_units, minlength=first.size)[seg]
                    with np.errstate(divide="ignore", invalid="ignore"):
                        share = np.where(short > 0.0, short_units / short, 0.0)
                    pos_option[sel] = charge[seg] * share

        if self.rates.basis_rate > 0.0:
            sel = np.flatnonzero(cross & self.is_linear[instrument])
            if sel.size:
                U = max(self.n_underlyings, 1)
                k_sel, q_sel, acc = instrument[sel], units[sel], owner[sel]
                # Netted per instrument first: two rows of one instrument are one expiry, no basis.
                iseg, ifirst = _segments(acc * self.units.shape[0] + k_sel)
                if iseg is None:
                    iseg = ifirst = np.arange(sel.size)
                inet = np.bincount(iseg, weights=q_sel, minlength=ifirst.size)
                k_first = k_sel[ifirst]
                # per (account, underlying): a key space of N·U, summed without a sort
                ukey = acc[ifirst] * U + self.underlying[k_first]
                long_u = np.bincount(ukey, weights=np.maximum(inet, 0.0), minlength=n * U)
                short_u = np.bincount(ukey, weights=np.maximum(-inet, 0.0), minlength=n * U)
                usd = np.zeros(n * U)
                usd[ukey] = self.basis_usd_per_unit[k_first]
                charge = np.minimum(long_u, short_u) * usd
                cross_basis = charge.reshape(n, U).sum(axis=1)
                row_key = ukey[iseg]
                gross = (long_u + short_u)[row_key]
                # A row's share: its instrument's net units over the underlying's, split between
                # the instrument's rows by their units.
                rows_abs = np.bincount(iseg, weights=np.abs(q_sel), minlength=ifirst.size)[iseg]
                with np.errstate(divide="ignore", invalid="ignore"):
                    share = np.where((gross > 0.0) & (rows_abs > 0.0),
                                     np.abs(inet[iseg]) / gross * np.abs(q_sel) / rows_abs, 0.0)
                pos_basis[sel] = charge[row_key] * share

        iso_per_account = (np.bincount(owner[iso_sel], weights=iso_charge[iso_sel], minlength=n)
                           if iso_sel.size else zeros_n)
        return ContingencyCharges(cross_option + cross_basis, cross_option, cross_basis, iso_charge,
                                  iso_per_account, pos_option, pos_basis)
