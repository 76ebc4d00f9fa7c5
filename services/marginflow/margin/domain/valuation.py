"""Equity, requirements and health of many accounts at once (the same code margins one account).

Inputs are the flat book (CSR), the core's requirements (cross IM per account, isolated IM per
position) and a :class:`MarketView` (marks, freshness, collateral unit values). Everything is
vectorised: one pass over positions, ``bincount`` per account.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from marginflow.margin.domain.health import classify_many

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


def _segment_min(values: np.ndarray, indptr: np.ndarray, fill: int) -> np.ndarray:
    """Minimum of each CSR segment (``fill`` for an empty one); reduceat, not ufunc.at (10× faster)."""
    n = indptr.shape[0] - 1
    out = np.full(n, fill, dtype=values.dtype)
    nonempty = indptr[1:] > indptr[:-1]
    if values.size and nonempty.any():
        out[nonempty] = np.minimum.reduceat(values, indptr[:-1][nonempty])
    return out


def valuate(owner: np.ndarray, instrument: np.ndarray, size: np.ndarray, entry: np.ndarray, isolated: np.ndarray,
            isolated_collateral: np.ndarray, isolated_im: np.ndarray, balances: np.ndarray, cross_im: np.ndarray,
            mm_factor: float, market: MarketView, indptr: np.ndarray | None = None) -> Valuation:
    """``owner`` must be non-decreasing (CSR order); ``indptr`` is derived from it when not given."""
    n = balances.shape[0]
    if indptr is None:
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(owner, minlength=n), out=indptr[1:])
    iso = isolated.astype(bool)
    mark = market.mark[instrument]
    pnl = size * market.contract_size[instrument] * (mark - entry)
    held = size != 0.0
    # Not ``balances @ unit_value``: a BLAS call wakes OpenBLAS threads that then spin on the cores
    # the gRPC threads need.
    collateral = (balances * market.unit_value).sum(axis=1) if balances.size else np.zeros(n)
    cross_pnl = np.bincount(owner, weights=np.where(iso, 0.0, pnl), minlength=n)
    cross_equity = collateral + cross_pnl
    # Freshness: every instrument held and every crypto collateral asset with a balance.
    pos_stale = held & ~market.fresh[instrument]
    stale = np.bincount(owner, weights=pos_stale, minlength=n) > 0
    stale |= ((balances != 0) & ~market.asset_fresh).any(axis=1)
    fresh = ~stale
    oldest = _segment_min(np.where(held, market.mark_time_ms[instrument], NEVER_MS), indptr, NEVER_MS)
    if balances.size:
        used = np.where(balances != 0, market.asset_time_ms[None, :], NEVER_MS)
        np.minimum(oldest, used.min(axis=1), out=oldest)
    oldest[oldest == NEVER_MS] = 0
    cross_mm = mm_factor * cross_im
    cross_state = classify_many(cross_equity, cross_im, cross_mm, fresh)
    iso_held = iso & held
    iso_equity = np.where(iso_held, isolated_collateral + pnl, 0.0)
    iso_im = np.where(iso_held, isolated_im, 0.0)
    iso_mm = mm_factor * iso_im
    iso_state = np.zeros(pnl.shape, dtype=np.int8)
    if iso_held.any():
        iso_state[iso_held] = classify_many(iso_equity[iso_held], iso_im[iso_held], iso_mm[iso_held],
                                            fresh[owner[iso_held]])
    state = cross_state.copy()
    if iso_held.any():
        worst_iso = -_segment_min(-iso_state.astype(np.int64), indptr, 0)
        np.maximum(state, worst_iso.astype(np.int8), out=state)
    equity = cross_equity + np.bincount(owner, weights=iso_equity, minlength=n)
    im = cross_im + np.bincount(owner, weights=iso_im, minlength=n)
    return Valuation(collateral, cross_pnl, cross_equity, cross_mm, cross_state, equity, im, mm_factor * im,
                     state, fresh, oldest, pnl, iso_equity, iso_mm, iso_state)


def valuate_chunked(owner: np.ndarray, instrument: np.ndarray, size: np.ndarray, entry: np.ndarray,
                    isolated: np.ndarray, isolated_collateral: np.ndarray, isolated_im: np.ndarray,
                    balances: np.ndarray, cross_im: np.ndarray, mm_factor: float, market: MarketView,
                    indptr: np.ndarray, chunk_positions: int = 32_768, pause=None) -> Valuation:
    """:func:`valuate` over account ranges of about ``chunk_positions`` positions each, the same result.

    Each numpy call then runs for a bounded time (``bincount``/``reduceat``/fancy indexing hold the GIL
    for their whole run: over 1M positions that is tens of ms that a gRPC thread waits); ``pause()`` is
    called between chunks (e.g. ``time.sleep(0)``: the GIL goes to a waiting thread).
    """
    n = balances.shape[0]
    nnz = size.shape[0]
    if nnz <= chunk_positions or n <= 1:
        return valuate(owner, instrument, size, entry, isolated, isolated_collateral, isolated_im, balances,
                       cross_im, mm_factor, market, indptr=indptr)
    # row boundaries: the first row whose positions start at or after each multiple of chunk_positions
    cuts = np.searchsorted(indptr[:n], np.arange(chunk_positions, nnz, chunk_positions), side="left")
    bounds = np.unique(np.concatenate(([0], cuts, [n]))).tolist()
    fields = [f.name for f in dataclasses.fields(Valuation)]
    out: dict[str, np.ndarray] = {}
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b <= a:
            continue
        lo, hi = int(indptr[a]), int(indptr[b])
        sub_indptr = indptr[a:b + 1] - lo
        part = valuate(owner[lo:hi] - a, instrument[lo:hi], size[lo:hi], entry[lo:hi], isolated[lo:hi],
                       isolated_collateral[lo:hi], isolated_im[lo:hi], balances[a:b], cross_im[a:b], mm_factor,
                       market, indptr=sub_indptr)
        # written into whole-book arrays slice by slice (one concatenate at the end holds the GIL for ms)
        for name in fields:
            v = getattr(part, name)
            per_position = name in _PER_POSITION
            dst = out.get(name)
            if dst is None:
                dst = out[name] = np.empty(nnz if per_position else n, dtype=v.dtype)
            if per_position:
                dst[lo:hi] = v
            else:
                dst[a:b] = v
        if pause is not None:
            pause()
    return Valuation(**out)


_PER_POSITION = frozenset({"pnl", "iso_equity", "iso_mm", "iso_state"})
