"""Health states of an account (or of one isolated position), dYdX ``risk.go`` style.

States (values = ``marginflow.margin.v1.HealthState``):

* HEALTHY      equity ≥ IM
* MARGIN_CALL  MM ≤ equity < IM
* LIQUIDATION  equity < MM            (only on fresh marks: stale marks cap the state at MARGIN_CALL)
* BANKRUPT     equity < 0             (same cap)

Comparisons are made on the amounts as they go on the wire, i.e. on whole cents rounded in the
venue's favour (equity down, requirements up, ``shared.money``: the one rounding the wire uses too),
so the state never contradicts the published numbers. Ratios (equity / MM ≥ x) are compared by
cross-multiplying whole cents, never by division.
"""

from __future__ import annotations

import dataclasses
from enum import IntEnum

import numpy as np

from marginflow.shared.money import cents_down, cents_down_array, cents_up, cents_up_array

class Health(IntEnum):
    """Same numbering as ``marginflow.margin.v1.HealthState``; a larger value is a worse state."""

    UNSPECIFIED = 0
    HEALTHY = 1
    MARGIN_CALL = 2
    LIQUIDATION = 3
    BANKRUPT = 4


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
        return cents_down(self.equity_usd) * denominator >= cents_up(self.mm_usd) * numerator

    def shortfall_usd(self) -> float:
        """IM − equity when positive (what restores HEALTHY), else 0."""
        return max(0, cents_up(self.im_usd) - cents_down(self.equity_usd)) / 100.0


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
    equity = cents_down_array(equity_usd)
    im = cents_up_array(im_usd)
    mm = cents_up_array(mm_usd)
    state = np.full(equity.shape, Health.HEALTHY, dtype=np.int8)
    below_im = equity < im
    state[below_im] = Health.MARGIN_CALL
    liq = below_im & (equity < mm) & marks_fresh
    state[liq] = Health.LIQUIDATION
    state[liq & (equity < 0)] = Health.BANKRUPT
    return state
