"""What moved an account between two published states, with the size of each part.

Given the account as it was when its state was last published (book, marks, collateral value,
risk version and its σ_m, model build) and as it is now, the change of the margin surplus
(equity − IM) is split into:

* **position change**: the book's positions differ (a fill): the IM change, and the equity
  change that the new positions' P&L does not explain by marks;
* **collateral change**: the balances differ (deposit, withdrawal, transfer): the collateral value
  change at today's prices;
* **mark moves**, per instrument: ``size × contract size × (mark_now − mark_then)`` for positions
  held over the interval, and per crypto collateral asset the value change at unchanged balances
  (index moves and haircut changes);
* **a new risk version**: the IM change when the version moved (per underlying of the account, the
  σ_m move, with the IM change given to the first underlying and the others at 0), or **a model
  refresh** (same version, risk arrays rebuilt at today's marks).

When several changed at once the IM change goes to the first of position change, new version,
model refresh, in that order (one recomputation cannot apportion it further); equity changes are
exact. Pure: numbers in, contributions out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from marginflow.margin.domain.book import AccountBook
from marginflow.margin.domain.results import ChangeCause, Contribution

# Mark moves named per instrument at most (the largest by |effect|; the rest summed as "other").
MAX_MARK_CONTRIBUTIONS = 5


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """An account as it was margined at one publication."""

    book: AccountBook
    marks: np.ndarray                 # float64[K] USD, marks at that evaluation
    collateral_usd: float             # collateral value after haircut
    equity_usd: float
    im_usd: float
    version: int
    sigma_margin: Mapping[str, float]
    model_id: int


def contributions(then: Snapshot | None, now: Snapshot, contract_size: np.ndarray, symbols: Sequence[str],
                  underlying_of: Sequence[str]) -> tuple[Contribution, ...]:
    """The parts of the change from ``then`` to ``now`` (``then`` None: a first evaluation)."""
    if then is None:
        return (Contribution(ChangeCause.FIRST_EVALUATION, "", 0.0, now.equity_usd, now.im_usd),)
    out: list[Contribution] = []
    d_equity = now.equity_usd - then.equity_usd
    d_im = now.im_usd - then.im_usd
    same_positions = _same_positions(then.book, now.book)
    # books are immutable: the same object (an account untouched since its last change of state, the
    # common case of a mark move) has the same balances without comparing arrays
    same_balances = then.book is now.book or bool(np.array_equal(then.book.balances, now.book.balances))
    # mark moves over the positions held throughout
    marks_part = 0.0
    if same_positions:
        b = now.book
        k = b.instrument.astype(np.int64)
        effect = b.size * contract_size[k] * (now.marks[k] - then.marks[k])
        order = np.argsort(-np.abs(effect))
        named = 0
        other = 0.0
        for j in order.tolist():
            if effect[j] == 0.0:
                continue
            kj = int(k[j])
            if named < MAX_MARK_CONTRIBUTIONS:
                move = now.marks[kj] / then.marks[kj] - 1.0 if then.marks[kj] else 0.0
                out.append(Contribution(ChangeCause.MARK_MOVE, symbols[kj], float(move), float(effect[j]), 0.0))
                named += 1
            else:
                other += float(effect[j])
        if other:
            out.append(Contribution(ChangeCause.MARK_MOVE, "other", 0.0, other, 0.0))
        marks_part = float(effect.sum())
    # collateral: value change at unchanged balances is a price move, otherwise a collateral change
    d_collateral = now.collateral_usd - then.collateral_usd
    if d_collateral:
        cause = ChangeCause.MARK_MOVE if same_balances else ChangeCause.COLLATERAL_CHANGE
        out.append(Contribution(cause, "collateral", 0.0, d_collateral, 0.0))
    residual_equity = d_equity - marks_part - d_collateral
    # requirements
    im_cause = None
    if not same_positions:
        im_cause = ChangeCause.POSITION_CHANGE
        out.append(Contribution(ChangeCause.POSITION_CHANGE, "", 0.0, residual_equity, d_im))
        residual_equity = 0.0
    elif now.version != then.version:
        im_cause = ChangeCause.RISK_PARAMS
    elif now.model_id != then.model_id:
        im_cause = ChangeCause.MODEL_REFRESH
        out.append(Contribution(ChangeCause.MODEL_REFRESH, "", 0.0, 0.0, d_im))
    if now.version != then.version:
        names = sorted({underlying_of[int(k)] for k in now.book.instrument.tolist()})
        first = True
        for u in names:
            before, after = then.sigma_margin.get(u), now.sigma_margin.get(u)
            move = after / before - 1.0 if before and after else 0.0
            im_part = d_im if first and im_cause == ChangeCause.RISK_PARAMS else 0.0
            out.append(Contribution(ChangeCause.RISK_PARAMS, u, float(move), 0.0, im_part))
            first = False
        if not names and im_cause == ChangeCause.RISK_PARAMS:
            out.append(Contribution(ChangeCause.RISK_PARAMS, "", 0.0, 0.0, d_im))
    elif im_cause is None and d_im:
        # same book, version and model: the requirement moved with the marks (add-ons and minimum
        # scale with the mark value) — a mark move
        out.append(Contribution(ChangeCause.MARK_MOVE, "requirement", 0.0, 0.0, d_im))
    if abs(residual_equity) > 1e-6:
        # equity not explained above: isolated collateral, a mark move of a position opened or
        # closed in between — counted with the marks
        out.append(Contribution(ChangeCause.MARK_MOVE, "other", 0.0, residual_equity, 0.0))
    return tuple(out)


def _same_positions(a: AccountBook, b: AccountBook) -> bool:
    if a is b:   # books are never modified: one object, the same positions (six array comparisons saved)
        return True
    return (a.n == b.n and bool(np.array_equal(a.instrument, b.instrument)) and bool(np.array_equal(a.size, b.size))
            and bool(np.array_equal(a.entry, b.entry)) and bool(np.array_equal(a.isolated, b.isolated))
            and bool(np.array_equal(a.isolated_collateral, b.isolated_collateral)))
