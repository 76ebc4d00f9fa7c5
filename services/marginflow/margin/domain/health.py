"""Health states of an account (or of one isolated position), dYdX ``risk.go`` style.

States (values = ``marginflow.margin.v1.HealthState``):

* HEALTHY      equity ≥ IM
* MARGIN_CALL  MM ≤ equity < IM
* LIQUIDATION  equity < MM            (only on fresh marks: stale marks cap the state at MARGIN_CALL)
* BANKRUPT     equity < 0             (same cap)

Comparisons are made on the amounts as they go on the wire, i.e. on cents rounded in the venue's
favour (equity down, requirements up), so the state never contradicts the published numbers.
Ratios (equity / MM ≥ x) are compared by cross-multiplication, never by division.
"""

from __future__ import annotations

import dataclasses
import math
from enum import IntEnum
from fractions import Fraction

import numpy as np

CENTS_PER_USD = 100.0


class Health(IntEnum):
    """Same numbering as ``marginflow.margin.v1.HealthState``; a larger value is a worse state."""

    UNSPECIFIED = 0
    HEALTHY = 1
    MARGIN_CALL = 2
    LIQUIDATION = 3
    BANKRUPT = 4


def cents_down(usd: float) -> float:
    """USD rounded down to the cent (equity: the venue never credits what it may not have)."""
    return math.floor(usd * CENTS_PER_USD + 1e-9) / CENTS_PER_USD


def cents_up(usd: float) -> float:
    """USD rounded up to the cent (requirements: the venue never asks for less than the risk)."""
    return math.ceil(usd * CENTS_PER_USD - 1e-9) / CENTS_PER_USD


@dataclasses.dataclass(frozen=True, slots=True)
class MarginResult:
    """Equity against IM and MM of one account (or one isolated position), USD."""

    equity_usd: float
    im_usd: float
    mm_usd: float
    marks_fresh: bool = True

    @property
    def state(self) -> Health:
        return classify(self.equity_usd, self.im_usd, self.mm_usd, self.marks_fresh)

    def is_liquidatable(self) -> bool:
        """equity < MM on fresh marks (stale marks never liquidate)."""
        return self.marks_fresh and cents_down(self.equity_usd) < cents_up(self.mm_usd)

    def margin_ratio_at_least(self, numerator: int, denominator: int) -> bool:
        """equity / MM ≥ numerator / denominator, by cross-multiplying exact fractions (MM = 0: True)."""
        if denominator <= 0:
            raise ValueError("denominator must be > 0")
        equity = Fraction(cents_down(self.equity_usd)).limit_denominator(100)
        mm = Fraction(cents_up(self.mm_usd)).limit_denominator(100)
        return equity * denominator >= mm * numerator

    def shortfall_usd(self) -> float:
        """IM − equity when positive (what restores HEALTHY), else 0."""
        return max(0.0, cents_up(self.im_usd) - cents_down(self.equity_usd))


def classify(equity_usd: float, im_usd: float, mm_usd: float, marks_fresh: bool = True) -> Health:
    equity, im, mm = cents_down(equity_usd), cents_up(im_usd), cents_up(mm_usd)
    if equity >= im:
        return Health.HEALTHY
    if equity >= mm or not marks_fresh:
        return Health.MARGIN_CALL
    if equity < 0:
        return Health.BANKRUPT
    return Health.LIQUIDATION


def classify_many(equity_usd: np.ndarray, im_usd: np.ndarray, mm_usd: np.ndarray,
                  marks_fresh: np.ndarray) -> np.ndarray:
    """:func:`classify` over arrays (int8 states), the same rule element by element."""
    equity = np.floor(equity_usd * CENTS_PER_USD + 1e-9)
    im = np.ceil(im_usd * CENTS_PER_USD - 1e-9)
    mm = np.ceil(mm_usd * CENTS_PER_USD - 1e-9)
    state = np.full(equity.shape, Health.HEALTHY, dtype=np.int8)
    below_im = equity < im
    state[below_im] = Health.MARGIN_CALL
    liq = below_im & (equity < mm) & marks_fresh
    state[liq] = Health.LIQUIDATION
    state[liq & (equity < 0)] = Health.BANKRUPT
    return state
