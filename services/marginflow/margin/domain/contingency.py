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
        # One group per (underlying, expiry, strike): calls and puts of a strike net together.
        groups: dict[tuple[int, int, float], int] = {}
        group = np.full(kind.shape[0], -1, dtype=np.int64)
        for k in np.flatnonzero(self.is_option):
            key = (int(self.underlying[k]), int(expiry_ms[k]), float(strike[k]))
            group[k] = groups.setdefault(key, len(groups))
        self.group = group
        self.n_groups = len(groups)

    def charges(self, indptr: np.ndarray, instrument: np.ndarray, size: np.ndarray,
                isolated: np.ndarray) -> ContingencyCharges:
        indptr = np.asarray(indptr, dtype=np.int64)
        instrument = np.asarray(instrument, dtype=np.int64)
        size = np.asarray(size, dtype=np.float64)
        iso = np.asarray(isolated).astype(bool)
        n = indptr.shape[0] - 1
        nnz = instrument.shape[0]
        zeros_n, zeros_p = np.zeros(n), np.zeros(nnz)
        if not self.rates.active or nnz == 0:
            return ContingencyCharges(zeros_n, zeros_n, zeros_n, zeros_p, zeros_n, zeros_p, zeros_p)
        owner = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
        units = size * self.units[instrument]                 # signed underlying units
        cross = ~iso & (units != 0.0)
        opt = self.is_option[instrument]
        lin = self.is_linear[instrument]

        pos_option = np.zeros(nnz)
        pos_basis = np.zeros(nnz)
        cross_option = np.zeros(n)
        cross_basis = np.zeros(n)
        # Isolated short options, alone.
        iso_charge = np.where(iso & opt & (units < 0.0), -units * self.option_usd_per_unit[instrument], 0.0)
        pos_option += iso_charge

        if self.rates.option_rate > 0.0:
            sel = np.flatnonzero(cross & opt)
            if sel.size:
                key = owner[sel] * max(self.n_groups, 1) + self.group[instrument[sel]]
                uniq, inv = np.unique(key, return_inverse=True)
                net = np.bincount(inv, weights=units[sel], minlength=uniq.size)
                short = np.bincount(inv, weights=np.maximum(-units[sel], 0.0), minlength=uniq.size)
                usd = np.empty(uniq.size)
                usd[inv] = self.option_usd_per_unit[instrument[sel]]
                charge = np.maximum(-net, 0.0) * usd
                cross_option = np.bincount(uniq // max(self.n_groups, 1), weights=charge, minlength=n)
                with np.errstate(divide="ignore", invalid="ignore"):
                    share = np.where(short[inv] > 0.0, np.maximum(-units[sel], 0.0) / short[inv], 0.0)
                pos_option[sel] = charge[inv] * share

        if self.rates.basis_rate > 0.0:
            sel = np.flatnonzero(cross & lin)
            if sel.size:
                U = max(self.n_underlyings, 1)
                # Netted per instrument first: two rows of one instrument are one expiry, no basis.
                ikey = owner[sel] * self.units.shape[0] + instrument[sel]
                iuniq, iinv = np.unique(ikey, return_inverse=True)
                inet = np.bincount(iinv, weights=units[sel], minlength=iuniq.size)
                iinstr = iuniq % self.units.shape[0]
                ukey = (iuniq // self.units.shape[0]) * U + self.underlying[iinstr]
                uuniq, uinv = np.unique(ukey, return_inverse=True)
                long_u = np.bincount(uinv, weights=np.maximum(inet, 0.0), minlength=uuniq.size)
                short_u = np.bincount(uinv, weights=np.maximum(-inet, 0.0), minlength=uuniq.size)
                usd = np.empty(uuniq.size)
                usd[uinv] = self.basis_usd_per_unit[iinstr]
                charge = np.minimum(long_u, short_u) * usd
                cross_basis = np.bincount(uuniq // U, weights=charge, minlength=n)
                gross = (long_u + short_u)[uinv[iinv]]
                # A row's share: its instrument's net units over the underlying's, split between the
                # instrument's rows by their units.
                rows_abs = np.bincount(iinv, weights=np.abs(units[sel]), minlength=iuniq.size)[iinv]
                with np.errstate(divide="ignore", invalid="ignore"):
                    share = np.where((gross > 0.0) & (rows_abs > 0.0),
                                     np.abs(inet[iinv]) / gross * np.abs(units[sel]) / rows_abs, 0.0)
                pos_basis[sel] = charge[uinv[iinv]] * share

        iso_per_account = np.bincount(owner, weights=iso_charge, minlength=n)
        return ContingencyCharges(cross_option + cross_basis, cross_option, cross_basis, iso_charge,
                                  iso_per_account, pos_option, pos_basis)
