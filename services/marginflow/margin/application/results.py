"""Turning a valuation and the core's results into the margin result of one account."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from marginflow.margin.application.models import Model
from marginflow.margin.domain.book import AccountBook, FlatBook, InstrumentTable
from marginflow.margin.domain.results import AccountMargin, IsolatedResult
from marginflow.margin.domain.valuation import Valuation

# (instrument index, size, equity USD, MM USD, model) → (liquidation price, its basis)
LiquidationPrice = Callable[[int, float, float, float, Model], tuple[float | None, str]]


def account_margin(instruments: InstrumentTable, mm_factor: float, book: AccountBook, val: Valuation, i: int,
                   flat: FlatBook, model: Model, event_time_ms: int, parts: tuple[float, float, float, float],
                   liquidation_price: LiquidationPrice | None = None, state: int | None = None,
                   episode: int = 0) -> AccountMargin:
    """Entry ``i`` of ``val``/``flat`` as an :class:`AccountMargin`; ``parts`` = (grid, ES, minimum,
    liquidity add-on) of the cross IM; liquidation prices of isolated positions when asked; ``state``
    (default: the raw one) and ``episode`` as published."""
    lo, hi = int(flat.indptr[i]), int(flat.indptr[i + 1])
    isolated: list[IsolatedResult] = []
    syms = instruments.symbols
    # the account's slice read once as Python numbers (the same values as reading each element)
    for j, (iso, size) in enumerate(zip(flat.isolated[lo:hi].tolist(), flat.size[lo:hi].tolist()), lo):
        if iso and size != 0.0:
            im_j = float(val.iso_mm[j] / mm_factor) if mm_factor else 0.0
            liq = None
            if liquidation_price is not None:
                liq, _basis = liquidation_price(int(flat.instrument[j]), size,
                                                float(val.iso_equity[j]), float(val.iso_mm[j]), model)
            isolated.append(IsolatedResult(syms[flat.instrument[j]], size, float(val.iso_equity[j]),
                                           im_j, float(val.iso_mm[j]), int(val.iso_state[j]), liq))
    grid, es, minimum, liquidity = parts
    cross_im = float(val.cross_mm[i] / mm_factor)
    return AccountMargin(
        account_id=book.account_id, revision=book.revision, risk_params_version=model.version.version,
        event_time_ms=event_time_ms, equity_usd=float(val.equity[i]), im_usd=float(val.im[i]),
        mm_usd=float(val.mm[i]), cross_equity_usd=float(val.cross_equity[i]), cross_im_usd=cross_im,
        cross_mm_usd=float(val.cross_mm[i]), cross_state=int(val.cross_state[i]), grid_usd=grid, es_usd=es,
        minimum_usd=minimum, liquidity_usd=liquidity, state=int(val.state[i]) if state is None else int(state),
        marks_fresh=bool(val.fresh[i]), marks_time_ms=int(val.marks_time_ms[i]),
        collateral_usd=float(val.collateral[i]), cross_pnl_usd=float(val.cross_pnl[i]), isolated=tuple(isolated),
        episode=episode)


def core_parts(core: Mapping) -> tuple[float, float, float, float]:
    """(grid, ES, minimum, liquidity) of the first account of a core result."""
    return tuple(float(core[k][0]) for k in ("grid", "es", "minimum", "liquidity"))  # type: ignore[return-value]


def account_margins(instruments: InstrumentTable, mm_factor: float, books: Sequence[AccountBook], val: Valuation,
                    rows: np.ndarray, flat: FlatBook, model: Model, event_time_ms: int,
                    parts: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], states: np.ndarray,
                    episodes: Sequence[int]) -> list[AccountMargin]:
    """:func:`account_margin` of many entries of ``val``/``flat`` at once (``rows``; ``parts`` per row,
    ``states[i]``/``episodes[i]`` as published for ``rows[i]``), without liquidation prices: the same
    numbers, gathered with one fancy index per array instead of a scalar read per field."""
    rows = np.asarray(rows, dtype=np.int64)
    g = lambda a: a[rows].tolist()   # noqa: E731
    equity, im, mm = g(val.equity), g(val.im), g(val.mm)
    cross_equity, cross_mm, cross_state = g(val.cross_equity), g(val.cross_mm), g(val.cross_state)
    cross_im = (val.cross_mm[rows] / mm_factor).tolist()
    fresh, marks_ms, collateral, cross_pnl = g(val.fresh), g(val.marks_time_ms), g(val.collateral), g(val.cross_pnl)
    grid, es, minimum, liquidity = (g(p) for p in parts)
    # isolated positions (non-zero size) of the rows, in CSR order
    lo, hi = flat.indptr[rows], flat.indptr[rows + 1]
    counts = hi - lo
    pos = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(int(counts.sum()))
    keep = (flat.isolated[pos] != 0) & (flat.size[pos] != 0.0)
    iso_pos = pos[keep]
    iso_owner = np.repeat(np.arange(rows.shape[0]), counts)[keep]
    bounds = np.searchsorted(iso_owner, np.arange(rows.shape[0] + 1)).tolist()
    syms = instruments.symbols
    iso_sym = [syms[k] for k in flat.instrument[iso_pos].tolist()]
    iso_size, iso_eq = flat.size[iso_pos].tolist(), val.iso_equity[iso_pos].tolist()
    iso_mm = val.iso_mm[iso_pos].tolist()
    iso_im = (val.iso_mm[iso_pos] / mm_factor).tolist() if mm_factor else [0.0] * len(iso_mm)
    iso_state = val.iso_state[iso_pos].tolist()
    version = model.version.version
    out = []
    for i, row in enumerate(rows.tolist()):
        a, b = bounds[i], bounds[i + 1]
        isolated = tuple(IsolatedResult(iso_sym[j], iso_size[j], iso_eq[j], iso_im[j], iso_mm[j], iso_state[j], None)
                         for j in range(a, b)) if b > a else ()
        book = books[row]
        out.append(AccountMargin(book.account_id, book.revision, version, event_time_ms, equity[i], im[i], mm[i],
                                 cross_equity[i], cross_im[i], cross_mm[i], cross_state[i], grid[i], es[i],
                                 minimum[i], liquidity[i], int(states[i]), fresh[i], marks_ms[i], collateral[i],
                                 cross_pnl[i], isolated, int(episodes[i])))
    return out
