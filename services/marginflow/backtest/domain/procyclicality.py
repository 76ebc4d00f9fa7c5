"""Procyclicality of a margin series, the measures ESMA and CPMI-IOSCO name.

For a margin series ``M_t`` (USD, one per observation, positions of constant notional):

* peak-to-trough ratio ``max_t M_t / min_t M_t`` over the period (ESMA Guidelines on EMIR
  anti-procyclicality margin measures, ESMA70-151-1293 (2018) §4.2; CPMI-IOSCO (2017),
  "Resilience of central counterparties: further guidance on the PFMI", 3.2.4);
* the largest increase over 1 and over ``n`` (5) observations, relative ``M_{t+n}/M_t − 1``
  (the "largest n-day margin change" of the same texts);
* the margin jump on the worst days: the relative change of margin from the day before to the
  day after each of the ``k`` largest absolute price moves (what a crash does to margin calls).

Pure numpy; the caller passes the margin in force per observation and the price moves.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from numpy.typing import ArrayLike


@dataclasses.dataclass(frozen=True)
class Procyclicality:
    peak_to_trough: float       # max / min
    max_increase_1: float       # largest relative rise over one observation
    max_increase_n: float       # ... over n observations
    n: int
    worst_day_jump_mean: float  # mean relative margin change around the k worst price moves
    worst_day_jump_max: float


def _as_margin(margin: ArrayLike) -> np.ndarray:
    m = np.asarray(margin, dtype=np.float64)
    if m.ndim != 1 or m.size < 2:
        raise ValueError("margin must be a 1-d series of at least 2 observations")
    if not np.all(np.isfinite(m)) or np.any(m <= 0):
        raise ValueError("margin must be finite and > 0")
    return m


def peak_to_trough(margin: ArrayLike) -> float:
    m = _as_margin(margin)
    return float(m.max() / m.min())


def max_increase(margin: ArrayLike, n: int = 1) -> float:
    """Largest ``M_{t+n}/M_t − 1`` (0 when the series never rises over ``n`` observations)."""
    m = _as_margin(margin)
    if n < 1:
        raise ValueError("n must be >= 1")
    if m.size <= n:
        return 0.0
    return float(max(0.0, np.max(m[n:] / m[:-n] - 1.0)))


def worst_day_jumps(margin: ArrayLike, price_move: ArrayLike, k: int = 10) -> np.ndarray:
    """Relative margin change ``M_{t+1}/M_{t−1} − 1`` around the ``k`` largest ``|price_move_t|``.

    ``price_move[t]`` is the move into observation ``t`` (e.g. its log return); days at the ends,
    which have no margin on both sides, are skipped.
    """
    m = _as_margin(margin)
    r = np.asarray(price_move, dtype=np.float64)
    if r.shape != m.shape:
        raise ValueError(f"price_move {r.shape} and margin {m.shape} differ in shape")
    inner = np.arange(1, m.size - 1)
    if inner.size == 0 or k < 1:
        return np.zeros(0)
    worst = inner[np.argsort(-np.abs(r[inner]), kind="stable")[:k]]
    return m[worst + 1] / m[worst - 1] - 1.0


def procyclicality(margin: ArrayLike, price_move: ArrayLike, n: int = 5, k: int = 10) -> Procyclicality:
    jumps = worst_day_jumps(margin, price_move, k)
    return Procyclicality(peak_to_trough(margin), max_increase(margin, 1), max_increase(margin, n), n,
                          float(jumps.mean()) if jumps.size else 0.0, float(jumps.max()) if jumps.size else 0.0)
