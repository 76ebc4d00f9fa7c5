"""Liquidations, and liquidations on noise, of accounts that hold a position over the horizon.

An account opens its positions at observation ``t`` with collateral ``C`` (USD) and holds them for
``h`` observations. At each later observation ``k = 1..h``: equity ``E_k = C + PnL_k`` against the
maintenance margin ``MM_k`` the rule asks at that observation for the same positions. It is
*liquidated* when ``E_k < MM_k`` for some ``k``; the liquidation is *on noise* when the move
reversed within the horizon — at ``k = h`` the account would be back at or above maintenance
(``E_h ≥ MM_h``): a liquidation the trader would not have suffered had the venue waited.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from numpy.typing import ArrayLike


@dataclasses.dataclass(frozen=True)
class LiquidationCount:
    accounts: int          # accounts (observations) scored
    liquidated: int        # crossed MM within the horizon
    on_noise: int          # ... and were back above MM at the horizon

    @property
    def noise_rate(self) -> float:
        return self.on_noise / self.accounts if self.accounts else 0.0


def liquidation_flags(equity: ArrayLike, maintenance: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """``(liquidated[N], on_noise[N])`` from ``equity`` and ``maintenance`` of shape ``[N, h]``.

    Column ``k − 1`` holds observation ``k`` after opening; the last column is the horizon.
    """
    e = np.asarray(equity, dtype=np.float64)
    m = np.asarray(maintenance, dtype=np.float64)
    if e.shape != m.shape or e.ndim != 2 or e.shape[1] < 1:
        raise ValueError(f"equity {e.shape} and maintenance {m.shape} must be equal [N, h] shapes, h >= 1")
    below = e < m
    liquidated = below.any(axis=1)
    on_noise = liquidated & ~below[:, -1]
    return liquidated, on_noise


def count_liquidations(equity: ArrayLike, maintenance: ArrayLike) -> LiquidationCount:
    liquidated, on_noise = liquidation_flags(equity, maintenance)
    return LiquidationCount(int(liquidated.size), int(liquidated.sum()), int(on_noise.sum()))
