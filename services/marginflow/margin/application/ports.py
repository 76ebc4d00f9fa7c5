"""Ports of the margin application (passed in by the wiring) and its configuration and errors."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

from marginflow.margin.domain.contingency import ContingencyRates
from marginflow.margin.domain.equity import HaircutPolicy
from marginflow.margin.domain.horizon import HorizonRules
from marginflow.margin.domain.liquidity import LiquidityRules
from marginflow.margin.domain.market import RecenterRules
from marginflow.margin.domain.transitions import TransitionRules
from marginflow.margin.domain.results import AccountMargin, MarginCallEvent


class Publisher(Protocol):
    """Where margin states and margin calls go (margin.state / margin.calls, and the gRPC streams)."""

    def publish(self, states: Sequence[AccountMargin], calls: Sequence[MarginCallEvent]) -> None: ...


class EngineMetrics(Protocol):
    def full_recalc(self, seconds: float, accounts: int) -> None: ...
    def incremental(self, seconds: float) -> None: ...
    def accounts_by_state(self, counts: dict[int, int]) -> None: ...
    def marks(self, oldest_age_seconds: float, newest_event_ms: int) -> None: ...
    def risk_params(self, version: int, age_seconds: float) -> None: ...
    def published(self, states: int, calls: int) -> None: ...
    def call(self, state: int, cause: int, repeat: bool, count: int = 1) -> None: ...
    def model_built(self, reason: str) -> None: ...


class UnknownAccount(KeyError):
    """The account is not owned by this margin instance."""


class NotReady(RuntimeError):
    """No risk-parameter version yet (or the instance's inputs are incomplete): no margin can be computed."""


class OtherVersion(RuntimeError):
    """A margin asked at a risk-parameter version other than the one in force (the only one held)."""


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    assets: tuple[str, ...]                       # collateral assets, order = balance columns
    stablecoins: frozenset[str] = frozenset({"USDC", "USDT"})
    settlement_asset: str = "USDC"
    mm_factor: float = 0.5
    bracket_floors_usd: tuple[float, ...] = (0.0, 1e6, 5e6, 20e6)
    bracket_rates: tuple[float, ...] = (0.01, 0.02, 0.05, 0.10)
    haircut: HaircutPolicy = HaircutPolicy()
    mark_max_age_ms: int = 30_000
    publish_change_fraction: float = 0.01         # material move of equity or IM, relative
    publish_change_min_usd: float = 1.0           # ... and at least this many USD
    publish_max_interval_ms: int = 60_000
    evaluate_interval_ms: int = 200
    model_refresh_ms: int = 60_000                # rebuild risk arrays at current marks (0 = only per version)
    recenter: RecenterRules = RecenterRules()     # ... and as soon as forwards or implied vols moved beyond a band
    incremental_max_accounts: int = 2_000         # larger snapshot batches: one full recalculation
    n_threads: int = 2
    default_depth_contracts: float = 100.0
    transitions: TransitionRules = TransitionRules()
    fallback_vol: dict[str, float] = dataclasses.field(default_factory=dict)     # per underlying
    fallback_price: dict[str, float] = dataclasses.field(default_factory=dict)   # per underlying
    contingency: ContingencyRates = ContingencyRates()   # all zero: no contingency charges
    horizon: HorizonRules = HorizonRules()               # participation and rate 0: no horizon scaling, no add-on
    liquidity: LiquidityRules = LiquidityRules()         # the add-on through the depth curve (where marks carry one)

    def __post_init__(self) -> None:
        if not 0.0 < self.mm_factor <= 1.0:
            raise ValueError("mm_factor must be in (0, 1]")
        if len(self.bracket_floors_usd) != len(self.bracket_rates) or not self.bracket_floors_usd:
            raise ValueError("bracket floors and rates need the same, non-zero length")
        if self.settlement_asset not in self.assets:
            raise ValueError(f"settlement asset {self.settlement_asset} is not a collateral asset")
