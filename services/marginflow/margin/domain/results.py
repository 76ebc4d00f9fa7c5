"""What the margin service tells the world about one account (encoded to protobuf by the adapters)."""

from __future__ import annotations

import dataclasses
from enum import IntEnum


class ChangeCause(IntEnum):
    """Same numbering as ``marginflow.margin.v1.ChangeCause``."""

    UNSPECIFIED = 0
    MARK_MOVE = 1
    RISK_PARAMS = 2
    MODEL_REFRESH = 3
    POSITION_CHANGE = 4
    COLLATERAL_CHANGE = 5
    FIRST_EVALUATION = 6


@dataclasses.dataclass(frozen=True, slots=True)
class Contribution:
    """One part of what moved an account: equity and IM changes in USD (signed)."""

    cause: ChangeCause
    subject: str = ""              # instrument / collateral asset / underlying
    relative_move: float = 0.0     # mark after/before − 1, or σ_m after/before − 1
    equity_change_usd: float = 0.0
    im_change_usd: float = 0.0

    @property
    def effect_usd(self) -> float:
        """What it did to the margin surplus (equity − IM): negative when it worsened the account."""
        return self.equity_change_usd - self.im_change_usd


@dataclasses.dataclass(frozen=True, slots=True)
class IsolatedResult:
    instrument: str
    size: float
    equity_usd: float
    im_usd: float
    mm_usd: float
    state: int
    liquidation_price_usd: float | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class AccountMargin:
    account_id: str
    revision: int
    risk_params_version: int
    event_time_ms: int
    equity_usd: float
    im_usd: float
    mm_usd: float
    cross_equity_usd: float
    cross_im_usd: float
    cross_mm_usd: float
    cross_state: int
    grid_usd: float
    es_usd: float
    minimum_usd: float
    liquidity_usd: float
    state: int
    marks_fresh: bool
    marks_time_ms: int
    collateral_usd: float
    cross_pnl_usd: float
    isolated: tuple[IsolatedResult, ...] = ()
    episode: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class MarginCallEvent:
    margin: AccountMargin
    previous_state: int
    episode: int = 0
    repeat: bool = False
    causes: tuple[Contribution, ...] = ()

    @property
    def cause(self) -> ChangeCause:
        """The contribution that worsened the account most (first evaluation: nothing to compare)."""
        if not self.causes:
            return ChangeCause.UNSPECIFIED
        return min(self.causes, key=lambda c: c.effect_usd).cause


@dataclasses.dataclass(frozen=True, slots=True)
class PositionExplain:
    instrument: str
    underlying: str
    size: float
    isolated: bool
    grid_loss_usd: float
    es_contribution_usd: float
    minimum_usd: float
    liquidity_usd: float
    liquidation_price_usd: float | None
    liquidation_price_basis: str      # "mark" or "underlying"
    # Surface-aware vol shock of an option (linear instruments: factor 1, the rest 0), relative moves.
    vol_tenor_factor: float = 1.0
    vol_moneyness: float = 0.0
    vol_shock_up: float = 0.0         # vol-up state at an unchanged price
    vol_shock_down: float = 0.0       # vol-down state at an unchanged price
    vol_shock_in_worst_grid: float = 0.0   # in its underlying's binding grid row
    option_contingency_usd: float = 0.0
    basis_contingency_usd: float = 0.0
    liquidation_horizon_days: float = 0.0   # h_eff
    loss_scale: float = 1.0                 # √(h_eff / h) on its scenario losses
    open_interest_share: float = 0.0
    concentration_usd: float = 0.0
    depth_curve_used: bool = False          # liquidity_usd is the add-on through the depth curve
    liquidity_distance_bps: float = 0.0     # distance its size walks the book to, bps of the mid
    depth_covered_share: float = 1.0        # share of the size within the curve
    half_spread_bps: float = 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class UnderlyingExplain:
    underlying: str
    grid_margin_usd: float
    es_contribution_usd: float
    worst_price_shock: float
    worst_vol_shock: float


@dataclasses.dataclass(frozen=True, slots=True)
class Explanation:
    margin: AccountMargin
    worst_historical_scenario: int
    positions: tuple[PositionExplain, ...]
    underlyings: tuple[UnderlyingExplain, ...]
    binding_component: str           # "grid", "es", "min_margin" ("none" without cross positions)
    last_change: tuple[Contribution, ...] = ()   # what moved the account at its last state change
