"""Margin volatility with anti-procyclicality, modelled on EMIR RTS 153/2013 Art. 28.

.. math::
   \\sigma_{base} = \\max(\\sigma_{ewma,fast},\\ \\sigma_{garch},\\ k\\,\\sigma_{implied})

   \\sigma_m = \\min\\Big(\\max\\big(\\sigma_{floor},\\ (1+b)\\,\\sigma_{base}\\big),\\ (1+s)\\,\\sigma_{m,prev}\\Big)

* buffer ``b`` (Art. 28(1)(a), at least 25 %) is in force in calm markets and *released*
  (``b = 0``) in stress, defined as ``σ_base ≥ stress_ratio · σ_ewma,slow`` — margin rising
  significantly above its slow baseline;
* floor ``σ_floor`` (Art. 28(1)(b)/(c)): the long look-back volatility with at least 25 % weight
  on the stressed period,
  ``σ²_floor = (1−w)·mean(r²) + w·max_window mean(r²)`` over the look-back
  (:func:`floor_volatility`);
* step bound: ``σ_m`` rises by at most ``s`` (relative) per sampling interval; falls are not
  bounded (the floor and the buffer already slow them).

Every change gets a cause: the binding term (``ewma_fast``, ``garch``, ``implied``, ``floor``),
``step_cap`` when the bound held it back, and ``buffer_released`` / ``buffer_restored`` when the
stress state flipped — joined with ``+``.

Source: Commission Delegated Regulation (EU) No 153/2013, Art. 28 (procyclicality);
ESMA Guidelines on EMIR anti-procyclicality margin measures (ESMA70-151-1293, 2018).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from numpy.typing import NDArray


@dataclasses.dataclass(frozen=True)
class ApcConfig:
    buffer: float = 0.25            # (1 + buffer) in calm markets, >= 0.25
    stress_ratio: float = 1.25      # stress when σ_base >= ratio · σ_slow
    max_step_up: float = 0.5        # relative rise allowed per interval
    implied_weight: float = 1.0     # k

    def __post_init__(self) -> None:
        if not self.buffer >= 0.25:
            raise ValueError(f"buffer must be >= 0.25 (EMIR Art. 28(1)(a)), got {self.buffer}")
        if not self.stress_ratio > 0 or not self.max_step_up > 0 or not self.implied_weight >= 0:
            raise ValueError("stress_ratio and max_step_up must be > 0, implied_weight >= 0")


@dataclasses.dataclass(frozen=True)
class MarginVol:
    sigma_margin: float     # annualised
    buffer: float           # buffer in force
    stress: bool
    cause: str
    sigma_base: float
    sigma_floor: float


def margin_volatility(previous: MarginVol | None, *, sigma_fast: float, sigma_slow: float, sigma_garch: float,
                      sigma_implied: float, sigma_floor: float, config: ApcConfig) -> MarginVol:
    """Apply the rules above to one interval's estimates (all annualised)."""
    values = (sigma_fast, sigma_slow, sigma_garch, sigma_implied, sigma_floor)
    if not all(math.isfinite(v) and v >= 0.0 for v in values):
        raise ValueError(f"volatilities must be finite and >= 0, got {values}")
    candidates = (("ewma_fast", sigma_fast), ("garch", sigma_garch),
                  ("implied", config.implied_weight * sigma_implied))
    driver, sigma_base = max(candidates, key=lambda kv: kv[1])
    stress = sigma_slow > 0.0 and sigma_base >= config.stress_ratio * sigma_slow
    buffer = 0.0 if stress else config.buffer
    target = (1.0 + buffer) * sigma_base
    causes = []
    if previous is not None and previous.stress != stress:
        causes.append("buffer_released" if stress else "buffer_restored")
    if sigma_floor > target:
        target = sigma_floor
        causes.append("floor")
    else:
        causes.append(driver)
    if previous is not None and previous.sigma_margin > 0.0:
        cap = previous.sigma_margin * (1.0 + config.max_step_up)
        if target > cap:
            target = cap
            causes.append("step_cap")
    return MarginVol(target, buffer, stress, "+".join(causes), sigma_base, sigma_floor)


def floor_volatility(log_returns: NDArray[np.float64], stress_window: int, stress_weight: float,
                     samples_per_year: float) -> float:
    """Annualised floor: ``√(((1−w)·mean(r²) + w·max over windows of mean(r²)) · samples_per_year)``.

    ``log_returns`` is the look-back (oldest first); the stressed period is the contiguous window
    of ``stress_window`` returns with the highest mean square (the whole look-back if shorter).
    """
    r = np.asarray(log_returns, dtype=np.float64)
    if r.size == 0:
        return 0.0
    sq = r * r
    long_var = float(sq.mean())
    w = min(stress_window, r.size)
    csum = np.concatenate(([0.0], np.cumsum(sq)))
    stress_var = float(np.max(csum[w:] - csum[:-w]) / w)
    return math.sqrt(max(((1.0 - stress_weight) * long_var + stress_weight * stress_var) * samples_per_year, 0.0))
