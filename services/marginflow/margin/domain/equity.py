r"""Equity: collateral at index price less a volatility-dependent haircut, plus unrealised P&L at mark.

Units: USD, contracts, asset units; prices USD per unit of underlying; σ annualised.

.. math::

    \text{equity} = \sum_a \text{balance}_a \cdot \text{price}_a \cdot (1 - h_a)
                    + \sum_j q_j \cdot \text{cs}_j \cdot (\text{mark}_j - \text{entry}_j)

* Stablecoins (``USDC``, ``USDT``): price 1, haircut 0.
* A crypto asset ``u``: price = index of ``u`` (from md.marks), haircut
  :math:`h_u = \min(\text{cap}, z \cdot \sigma_{m,u} \sqrt{\text{horizon}})` — the move at
  ``z`` standard deviations of the margin volatility over the close-out horizon, so collateral
  is worth less the more volatile it is (before any risk parameters: the cap).
* An asset that is neither is worth 0 (conservative: the venue cannot price it).
* Options are margined futures-style: the premium settles through P&L, so an option position
  contributes ``q · cs · (mark − entry)`` like a future.
* Isolated positions are margined alone with their own collateral:
  ``equity_j = isolated_collateral_j + q_j cs_j (mark_j − entry_j)``; they are not part of the cross equity.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from marginflow.shared.units import SECONDS_PER_DAY, SECONDS_PER_YEAR



@dataclasses.dataclass(frozen=True)
class HaircutPolicy:
    z: float = 2.33                  # one-sided 99 % normal quantile
    cap: float = 0.5                 # largest haircut: a coin is never valued below (1 - cap) × index
    horizon_seconds: float = 3 * SECONDS_PER_DAY

    def __post_init__(self) -> None:
        if not (self.z > 0 and 0 <= self.cap <= 1 and self.horizon_seconds > 0):
            raise ValueError("haircut needs z > 0, cap in [0, 1], horizon_seconds > 0")

    def haircut(self, sigma_margin_annual: float | None) -> float:
        """``min(cap, z·σ_m·√(horizon/year))``; the cap when σ_m is unknown or not finite."""
        if sigma_margin_annual is None or not math.isfinite(sigma_margin_annual) or sigma_margin_annual < 0:
            return self.cap
        return min(self.cap, self.z * sigma_margin_annual * math.sqrt(self.horizon_seconds / SECONDS_PER_YEAR))


def asset_values(assets: list[str], stablecoins: frozenset[str], index_price: dict[str, float],
                 sigma_margin: dict[str, float], policy: HaircutPolicy) -> tuple[np.ndarray, np.ndarray]:
    """Per asset: (USD value of one unit after haircut, haircut). Unknown price → value 0."""
    value = np.zeros(len(assets))
    haircut = np.zeros(len(assets))
    for i, asset in enumerate(assets):
        if asset in stablecoins:
            value[i], haircut[i] = 1.0, 0.0
            continue
        h = policy.haircut(sigma_margin.get(asset))
        price = index_price.get(asset, 0.0)
        haircut[i] = h
        value[i] = price * (1.0 - h) if math.isfinite(price) and price > 0 else 0.0
    return value, haircut


def unrealized_pnl(size: np.ndarray, contract_size: np.ndarray, mark: np.ndarray, entry: np.ndarray) -> np.ndarray:
    """Per position ``q · cs · (mark − entry)`` USD (options futures-style)."""
    return size * contract_size * (mark - entry)


def account_equity(balances: np.ndarray, unit_values: np.ndarray, size: np.ndarray, contract_size: np.ndarray,
                   mark: np.ndarray, entry: np.ndarray, isolated: np.ndarray) -> float:
    """Cross equity of one account: collateral after haircuts + P&L of its cross positions."""
    pnl = unrealized_pnl(size, contract_size, mark, entry)
    return float(balances @ unit_values) + float(pnl[~isolated.astype(bool)].sum())
