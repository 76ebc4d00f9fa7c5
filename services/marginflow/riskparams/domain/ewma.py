"""EWMA variance, the RiskMetrics recursion.

.. math:: \\sigma^2_t = \\lambda\\,\\sigma^2_{t-1} + (1-\\lambda)\\,r^2_{t-1}

with zero mean, ``r`` the log return of the previous interval and ``σ²_t`` the variance forecast
for interval ``t``. The recursion starts from a prior variance ``σ²_0`` (the universe's typical
volatility of the underlying, de-annualised), so it is exact from the first return.
A half-life ``h`` (in intervals) gives ``λ = 0.5^{1/h}``.

Source: J.P. Morgan/Reuters, *RiskMetrics — Technical Document*, 4th ed. (1996), §5.2.1,
eq. (5.3); λ = 0.94 for daily data (Table 5.9); 0.97 is the monthly-horizon decay.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

Float64Array = NDArray[np.float64]


def lambda_from_half_life(half_life_intervals: float) -> float:
    """λ whose weights halve every ``half_life_intervals`` intervals: ``λ = 0.5^(1/h)``."""
    if not (half_life_intervals > 0 and math.isfinite(half_life_intervals)):
        raise ValueError(f"half-life must be a finite number > 0, got {half_life_intervals!r}")
    return 0.5 ** (1.0 / half_life_intervals)


def half_life_from_lambda(lam: float) -> float:
    """Half-life in intervals of decay ``λ``: ``h = ln 0.5 / ln λ``."""
    _check_lambda(lam)
    return math.log(0.5) / math.log(lam)


def _check_lambda(lam: float) -> None:
    if not (0.0 < lam < 1.0):
        raise ValueError(f"lambda must lie strictly between 0 and 1, got {lam!r}")


def ewma_update(variance: float, log_return: float, lam: float) -> float:
    """One step of the RiskMetrics recursion: ``λ·variance + (1−λ)·r²``."""
    return lam * variance + (1.0 - lam) * log_return * log_return


def ewma_variance_path(log_returns: Float64Array, lam: float, initial_variance: float) -> Float64Array:
    """Variance forecasts ``σ²_1 … σ²_n`` after each of ``n`` returns, starting from ``σ²_0``.

    ``out[i]`` is the forecast for the interval after return ``i``.
    """
    _check_lambda(lam)
    r = np.asarray(log_returns, dtype=np.float64)
    if not np.all(np.isfinite(r)):
        raise ValueError("log_returns must be finite")
    out = np.empty_like(r)
    var = float(initial_variance)
    for i, x in enumerate(r):
        var = lam * var + (1.0 - lam) * x * x
        out[i] = var
    return out
