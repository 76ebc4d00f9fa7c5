"""What the margin service tells the world about one account (encoded to protobuf by the adapters)."""

from __future__ import annotations

import dataclasses


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


@dataclasses.dataclass(frozen=True, slots=True)
class MarginCallEvent:
    margin: AccountMargin
    previous_state: int


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
