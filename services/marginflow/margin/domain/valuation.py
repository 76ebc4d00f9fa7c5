"""Equity, requirements and health of many accounts at once (the same code margins one account).

Inputs are the flat book (CSR), the core's requirements (cross IM per account, isolated IM per
position) and a :class:`MarketView` (marks, freshness, collateral unit values). The arithmetic
is the core's ``valuate`` (``marginflow.core``: the C kernel, threaded with the GIL released, or
its numpy twin, ``marginflow.core.reference.valuate``, where the formulas are written out).
"""

from __future__ import annotations

import dataclasses

from types import ModuleType

import numpy as np

import marginflow.core

NEVER_MS = np.iinfo(np.int64).max


@dataclasses.dataclass(frozen=True)
class MarketView:
    mark: np.ndarray             # float64[K] USD; 0 where no mark was seen
    contract_size: np.ndarray    # float64[K]
    mark_time_ms: np.ndarray     # int64[K]; 0 = never
    fresh: np.ndarray            # bool[K]: a mark within the allowed age
    unit_value: np.ndarray       # float64[A], USD per asset unit after haircut
    asset_fresh: np.ndarray      # bool[A] (stablecoins: always)
    asset_time_ms: np.ndarray    # int64[A] (stablecoins: NEVER_MS, i.e. never the oldest)


@dataclasses.dataclass(frozen=True)
class Valuation:
    collateral: np.ndarray       # [N] USD after haircuts
    cross_pnl: np.ndarray        # [N]
    cross_equity: np.ndarray     # [N]
    cross_mm: np.ndarray         # [N]
    cross_state: np.ndarray      # int8[N]
    equity: np.ndarray           # [N] cross + Σ isolated equity
    im: np.ndarray               # [N] cross IM + Σ isolated IM
    mm: np.ndarray               # [N]
    state: np.ndarray            # int8[N], worst of cross and isolated states
    fresh: np.ndarray            # bool[N]
    marks_time_ms: np.ndarray    # int64[N], oldest mark used (0 = none used)
    pnl: np.ndarray              # [nnz] per position
    iso_equity: np.ndarray       # [nnz] (0 for cross positions)
    iso_mm: np.ndarray           # [nnz]
    iso_state: np.ndarray        # int8[nnz] (0 for cross positions)


def _core_valuate(core: ModuleType | None, owner: np.ndarray | None, instrument: np.ndarray, size: np.ndarray,
                  entry: np.ndarray, isolated: np.ndarray, isolated_collateral: np.ndarray, isolated_im: np.ndarray,
                  balances: np.ndarray, cross_im: np.ndarray, mm_factor: float, market: MarketView,
                  indptr: np.ndarray | None, n_threads: int) -> Valuation:
    impl = marginflow.core if core is None else core
    n = balances.shape[0]
    if indptr is None:
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(owner, minlength=n), out=indptr[1:])
    out = impl.valuate(indptr, instrument, size, entry, isolated, isolated_collateral, isolated_im, balances,
                       cross_im, mm_factor, market.mark, market.contract_size, market.mark_time_ms, market.fresh,
                       market.unit_value, market.asset_fresh, market.asset_time_ms, n_threads=n_threads)
    return Valuation(**out)


def valuate(owner: np.ndarray, instrument: np.ndarray, size: np.ndarray, entry: np.ndarray, isolated: np.ndarray,
            isolated_collateral: np.ndarray, isolated_im: np.ndarray, balances: np.ndarray, cross_im: np.ndarray,
            mm_factor: float, market: MarketView, indptr: np.ndarray | None = None, *,
            core: ModuleType | None = None, n_threads: int = 1) -> Valuation:
    """``owner`` must be non-decreasing (CSR order); ``indptr`` is derived from it when not given.

    ``core`` is the implementation of ``valuate`` (default: ``marginflow.core``, the C core when built)."""
    return _core_valuate(core, owner, instrument, size, entry, isolated, isolated_collateral, isolated_im, balances,
                         cross_im, mm_factor, market, indptr, n_threads)


def _is_c(core: ModuleType | None) -> bool:
    impl = marginflow.core if core is None else core
    return impl is marginflow.core.ccore or (impl is marginflow.core and marginflow.core.IMPLEMENTATION == "c")


# Positions per slice of a sliced valuation. The numpy twin holds the GIL inside each numpy call
# (~0.5 ms per 8k positions on the dev VM). The C kernel releases it, but its threads take every core of
# a small host for the whole pass (1M positions: ~7 ms on 2 cores): a gRPC call arriving meanwhile waits
# for a core, so it too runs in slices (~0.25 ms each), queries in flight finishing between them. Measured
# with 100k accounts re-evaluated every 250 ms under 500 GetMargin + WhatIf/s (``bench_margin``): p99 7.0 /
# 7.8 ms in one call, 5.0 / 5.9 ms in slices of 128k positions, 3.6 / 4.4 ms in slices of 32k (the echo
# server's 2.0–2.4 ms); 16k gained nothing more and stretched the pass further.
# Each slice is written by the kernel into one set of whole-book arrays (``rows``/``out``): the copies
# back that the loop made under the GIL (6.5 ms a pass of 1M positions) are gone.
CHUNK_POSITIONS_TWIN = 8_192
CHUNK_POSITIONS_C = 32_768


def valuate_chunked(instrument: np.ndarray, size: np.ndarray, entry: np.ndarray, isolated: np.ndarray,
                    isolated_collateral: np.ndarray, isolated_im: np.ndarray, balances: np.ndarray, cross_im: np.ndarray, mm_factor: float, market: MarketView,
                    indptr: np.ndarray, chunk_positions: int | None = None, pause=None, *,
                    core: ModuleType | None = None, n_threads: int = 1) -> Valuation:
    """:func:`valuate` (the owners given by ``indptr``) over account ranges of about ``chunk_positions``
    positions each (default: per implementation, see above), ``pause()`` called between them (e.g. to let
    waiting queries run); the same result as one pass."""
    n = balances.shape[0]
    nnz = size.shape[0]
    if chunk_positions is None:
        chunk_positions = CHUNK_POSITIONS_C if _is_c(core) else CHUNK_POSITIONS_TWIN
    if nnz <= chunk_positions or n <= 1:
        return _core_valuate(core, None, instrument, size, entry, isolated, isolated_collateral, isolated_im,
                             balances, cross_im, mm_factor, market, indptr, n_threads)
    # row boundaries: the first row whose positions start at or after each multiple of chunk_positions
    cuts = np.searchsorted(indptr[:n], np.arange(chunk_positions, nnz, chunk_positions), side="left")
    bounds = np.unique(np.concatenate(([0], cuts, [n]))).tolist()
    impl = marginflow.core if core is None else core
    out = marginflow.core.reference.valuate_out(n, nnz)
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b <= a:
            continue
        impl.valuate(indptr, instrument, size, entry, isolated, isolated_collateral, isolated_im, balances, cross_im,
                     mm_factor, market.mark, market.contract_size, market.mark_time_ms, market.fresh,
                     market.unit_value, market.asset_fresh, market.asset_time_ms, n_threads=n_threads, rows=(a, b),
                     out=out)
        if pause is not None:
            pause()
    return Valuation(**out)


