r"""The liquidation plan of one round: the smallest reduction that restores the account, riskiest first, in slices.

Target (Drift protocol-v2 ``math/liquidation.rs``: liquidate until the margin requirement *plus a
liquidation buffer* is met, ``liquidation_margin_buffer_ratio``)::

    equity_after ≥ IM_after · (1 + buffer)            buffer = 2 % by default

Order of reduction: futures and perpetuals before options (Deribit liquidates futures first), then the
most margin relief per USD of notional first, ``relief_i(|q_i|) / notional_i``.

Reducing ``x`` contracts of position ``i`` at its limit price ``L_i`` (the fillable price,
:func:`marginflow.liquidation.domain.prices.fillable_price`) changes, to first order::

    equity:  −x·cs_i·(|mark_i − L_i| + min(fee_rate·L_i, |L_i − b_i|))   (spread and the largest fee, which
                                                                          is capped at the surplus over b_i)
    IM:      −relief_i(x)                              (the margin service's what-if, per position)

The target reduction of each position, in priority order, is the smallest whole number of lots that
closes the remaining gap (found by bisection over lots, ``relief_i`` increasing); a position whose reduction
does not help (relief smaller than its cost) is skipped. When reducing every helpful position is not enough,
the plan is a close-out: the skipped positions are closed too (``restores`` then says whether even that
reaches the target under the linear model).

Pacing (per position and round)::

    cap_usd = max(min(1,000 USD, notional), 10 % · notional)       dYdX PositionBlockLimits
                                                                     (MinPositionNotionalLiquidated,
                                                                      MaxPositionPortionLiquidatedPpm)
    notional > 100,000 USD:  cap_usd = 20 % · notional, then a 30 s cooldown   (Hyperliquid docs,
                                                                     "Liquidations": partial liquidations)
    during the cooldown: no slice of that position (PAUSE, default) or the whole remaining target
    (FULL, Hyperliquid's rule); see :class:`CooldownMode`.

A slice is ``min(target remaining, cap)`` in contracts, rounded DOWN to the lot (at least one lot, never more
than the target or the position): reduce-only, it never flips or increases a position.

Money crossing the boundary (sizes, prices) is Decimal; the relief function is a float risk estimate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from enum import Enum

from marginflow.liquidation.domain.fund import DEFAULT_MAX_FEE_RATE
from marginflow.liquidation.domain.prices import (DEFAULT_BANKRUPTCY_ADJUSTMENT, DEFAULT_SPREAD_TO_MM_RATIO,
                                                  PositionRisk, bankruptcy_price, fillable_price,
                                                  round_limit_to_tick)
from marginflow.shared.universe import Kind

ZERO = Decimal(0)
ONE = Decimal(1)
RESTORE_TOLERANCE_USD = 0.005   # half a cent: float noise of the linear estimate, not a margin decision


class OrderSide(str, Enum):
    BUY = "buy"
    SELL = "sell"


class CooldownMode(str, Enum):
    """What a large position gets while its cooldown runs.

    PAUSE — no slice until the cooldown ends (paced; the default). FULL — Hyperliquid's rule: during the
    cooldown "all market liquidation orders for that user will be for the entire position" (here: the whole
    remaining target, still never more than needed).
    """

    PAUSE = "pause"
    FULL = "full"


@dataclass(frozen=True)
class PlanSettings:
    """Liquidation pacing and pricing (frozen; defaults with their sources).

    Attributes
    ----------
    margin_buffer_fraction : Decimal
        Restore ``equity ≥ IM·(1 + buffer)``; 0.02 (Drift ``liquidation_margin_buffer_ratio``, a fraction).
    slice_min_notional_usd : Decimal
        1,000 USD (dYdX ``PositionBlockLimits.MinPositionNotionalLiquidated``).
    slice_max_portion : Decimal
        0.10 of the position's notional per round (dYdX ``MaxPositionPortionLiquidatedPpm``).
    large_position_notional_usd : Decimal
        Positions above 100,000 USD notional are paced as large (Hyperliquid).
    large_position_portion : Decimal
        0.20 of a large position per round (Hyperliquid).
    large_position_cooldown_ms : int
        30,000 ms after a partial slice of a large position (Hyperliquid: 30 s).
    large_position_cooldown_mode : CooldownMode
        PAUSE (default): nothing more of that position during the cooldown; FULL: Hyperliquid's behaviour.
    spread_to_mm_ratio, bankruptcy_adjustment : Decimal
        dYdX fillable-price parameters (SMMR 1.5, BA 1).
    fee_rate : Decimal
        Largest liquidation fee, fraction of fill notional (0.015, dYdX ``MaxLiquidationFeePpm``).
    """

    margin_buffer_fraction: Decimal = Decimal("0.02")
    slice_min_notional_usd: Decimal = Decimal("1000")
    slice_max_portion: Decimal = Decimal("0.10")
    large_position_notional_usd: Decimal = Decimal("100000")
    large_position_portion: Decimal = Decimal("0.20")
    large_position_cooldown_ms: int = 30_000
    large_position_cooldown_mode: CooldownMode = CooldownMode.PAUSE
    spread_to_mm_ratio: Decimal = DEFAULT_SPREAD_TO_MM_RATIO
    bankruptcy_adjustment: Decimal = DEFAULT_BANKRUPTCY_ADJUSTMENT
    fee_rate: Decimal = DEFAULT_MAX_FEE_RATE

    def __post_init__(self) -> None:
        for name in ("margin_buffer_fraction", "slice_min_notional_usd", "slice_max_portion",
                     "large_position_notional_usd", "large_position_portion", "spread_to_mm_ratio",
                     "bankruptcy_adjustment", "fee_rate"):
            value = getattr(self, name)
            if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
                raise ValueError(f"{name} must be a finite Decimal ≥ 0, got {value!r}")
        if not (ZERO < self.slice_max_portion <= ONE and ZERO < self.large_position_portion <= ONE):
            raise ValueError("slice portions must be in (0, 1]")
        if self.large_position_cooldown_ms < 0:
            raise ValueError("large_position_cooldown_ms must be ≥ 0")
        if self.bankruptcy_adjustment < ONE:
            raise ValueError("bankruptcy_adjustment must be ≥ 1 (dYdX)")


@dataclass(frozen=True)
class PositionState:
    """One position of an account being liquidated (exact values as on the wire).

    ``mm_usd`` is this position's share of the account's MM (the margin service's explain: its contribution
    × mm_factor); the shares sum to the account's MM.
    """

    instrument: str
    kind: Kind
    size_contracts: Decimal
    contract_size: Decimal
    mark_price_usd: Decimal
    mm_usd: Decimal
    lot_size_contracts: Decimal
    tick_size_usd: Decimal

    def __post_init__(self) -> None:
        if self.contract_size <= 0 or self.mark_price_usd <= 0 or self.lot_size_contracts <= 0 \
                or self.tick_size_usd <= 0 or self.mm_usd < 0:
            raise ValueError(f"{self.instrument}: contract size, mark, lot, tick must be > 0 and mm ≥ 0")

    @property
    def notional_usd(self) -> Decimal:
        """``|q|·cs·mark`` (USD)."""
        return abs(self.size_contracts) * self.contract_size * self.mark_price_usd

    @property
    def side(self) -> int:
        return 1 if self.size_contracts > 0 else -1 if self.size_contracts < 0 else 0


@dataclass(frozen=True)
class AccountState:
    """An account's margin state at the newest mark: equity (TNC), IM and MM in USD, and its positions."""

    account_id: str
    equity_usd: Decimal
    im_usd: Decimal
    mm_usd: Decimal
    positions: tuple[PositionState, ...]


ReliefFn = Callable[[int, Decimal], float]
"""``relief(i, x)``: IM decrease (USD, float estimate) of reducing position ``i`` by ``x ≥ 0`` contracts."""


@dataclass(frozen=True)
class OrderIntent:
    """A reduce-only IOC liquidation order: ``size_contracts`` on ``side`` at ``limit_price_usd``."""

    instrument: str
    position_index: int
    side: OrderSide
    size_contracts: Decimal
    limit_price_usd: Decimal
    bankruptcy_price_usd: Decimal
    reduce_only: bool = True


@dataclass(frozen=True)
class ReductionTarget:
    """Total reduction of one position planned by the round (this and later rounds' slices)."""

    instrument: str
    position_index: int
    reduce_contracts: Decimal


@dataclass(frozen=True)
class RoundPlan:
    """What one round sends, and why.

    ``restores`` — the targets bring the account to ``IM·(1+buffer)`` (under the linear model); False means
    a full close-out is planned. ``bankrupt`` — equity < 0: no market orders, the deficit goes to the fund/ADL.
    ``cooldown_until_ms`` — large positions sliced this round, with the end of their cooldown.
    """

    account_id: str
    intents: tuple[OrderIntent, ...] = ()
    targets: tuple[ReductionTarget, ...] = ()
    required_equity_usd: Decimal = ZERO
    restores: bool = True
    bankrupt: bool = False
    healthy: bool = False
    cooldown_until_ms: dict[str, int] = field(default_factory=dict)


def required_equity_usd(im_usd: Decimal, settings: PlanSettings = PlanSettings()) -> Decimal:
    """``IM·(1 + buffer)``: the equity that ends an episode."""
    return im_usd * (ONE + settings.margin_buffer_fraction)


def slice_cap_contracts(position: PositionState, settings: PlanSettings = PlanSettings()) -> Decimal:
    """Most contracts of ``position`` one round may reduce (see the module's pacing rule), in whole lots ≥ 1 lot."""
    notional = position.notional_usd
    if notional > settings.large_position_notional_usd:
        cap_usd = settings.large_position_portion * notional
    else:
        cap_usd = max(min(settings.slice_min_notional_usd, notional), settings.slice_max_portion * notional)
    size = abs(position.size_contracts)
    if cap_usd >= notional:
        return size
    contracts = cap_usd / (position.contract_size * position.mark_price_usd)
    return min(max(_lots_down(contracts, position.lot_size_contracts), position.lot_size_contracts), size)


def _lots_down(contracts: Decimal, lot: Decimal) -> Decimal:
    return (contracts / lot).to_integral_value(rounding=ROUND_FLOOR) * lot


def _relief_fn(relief: ReliefFn | Sequence[float]) -> ReliefFn:
    if callable(relief):
        return relief
    per_contract = [float(r) for r in relief]
    return lambda i, x: per_contract[i] * float(x)


def _position_risk(account: AccountState, p: PositionState) -> PositionRisk:
    return PositionRisk(p.size_contracts, p.contract_size, p.mark_price_usd, min(p.mm_usd, account.mm_usd),
                        account.equity_usd, account.mm_usd)


def limit_and_bankruptcy(account: AccountState, index: int,
                         settings: PlanSettings = PlanSettings()) -> tuple[Decimal, Decimal]:
    """(limit price on the tick grid, bankruptcy price) of a liquidation order for position ``index``."""
    p = account.positions[index]
    r = _position_risk(account, p)
    b = bankruptcy_price(r)
    limit = round_limit_to_tick(fillable_price(r, settings.spread_to_mm_ratio, settings.bankruptcy_adjustment),
                                p.tick_size_usd, p.side)
    return limit, b


def _priority(account: AccountState, relief: ReliefFn) -> list[int]:
    def key(i: int) -> tuple[int, float, int]:
        p = account.positions[i]
        size = abs(p.size_contracts)
        per_notional = relief(i, size) / float(p.notional_usd) if p.notional_usd > 0 else 0.0
        return (1 if p.kind in (Kind.CALL, Kind.PUT) else 0, -per_notional, i)

    return sorted((i for i, p in enumerate(account.positions) if p.size_contracts != 0), key=key)


def plan_round(account: AccountState, relief: ReliefFn | Sequence[float], now_ms: int,
               settings: PlanSettings = PlanSettings(),
               cooldown_until_ms: dict[str, int] | None = None) -> RoundPlan:
    """The orders of one liquidation round for ``account`` (call it only while its episode is LIQUIDATING).

    Parameters
    ----------
    account : AccountState
        Equity, IM, MM and positions at the newest (fresh) mark.
    relief : callable or sequence of float
        ``relief(i, x)`` → IM decrease (USD) of reducing position ``i`` by ``x`` contracts, or per-contract IM
        relief (USD per contract) per position.
    now_ms : int
        As-of time (epoch ms), for the large-position cooldown.
    settings : PlanSettings
    cooldown_until_ms : dict, optional
        Per instrument, the end of a large position's cooldown from earlier rounds.

    Returns
    -------
    RoundPlan
        ``healthy`` when no reduction is needed; ``bankrupt`` when equity < 0 (no orders);
        else the targets and this round's reduce-only slices.
    """
    cooldowns = dict(cooldown_until_ms or {})
    required = required_equity_usd(account.im_usd, settings)
    if account.equity_usd < 0:
        return RoundPlan(account.account_id, required_equity_usd=required, restores=False, bankrupt=True)
    if account.equity_usd >= required:
        return RoundPlan(account.account_id, required_equity_usd=required, healthy=True)
    fn = _relief_fn(relief)
    buffer = 1.0 + float(settings.margin_buffer_fraction)
    equity = float(account.equity_usd)
    im = float(account.im_usd)
    targets: list[ReductionTarget] = []
    priced: dict[int, tuple[Decimal, Decimal]] = {}
    restores = False
    skipped: list[tuple[int, float]] = []
    for i in _priority(account, fn):
        p = account.positions[i]
        limit, b = limit_and_bankruptcy(account, i, settings)
        priced[i] = (limit, b)
        # spread to the limit + the fee, which is capped at what the fill leaves above bankruptcy
        fee_per_unit = min(settings.fee_rate * limit, max(p.side * (limit - b), ZERO))
        cost_per_contract = float(p.contract_size * (abs(p.mark_price_usd - limit) + fee_per_unit))
        size = abs(p.size_contracts)
        lot = p.lot_size_contracts

        def gap(x: Decimal) -> float:
            return equity - cost_per_contract * float(x) - buffer * (im - fn(i, x))

        full = gap(size)
        if full <= gap(ZERO):
            skipped.append((i, cost_per_contract))   # reducing it alone does not help
            continue
        if full < 0:
            targets.append(ReductionTarget(p.instrument, i, size))
            equity -= cost_per_contract * float(size)
            im -= fn(i, size)
            continue
        n_lots = int((size / lot).to_integral_value(rounding=ROUND_CEILING))
        lo, hi = 0, n_lots                 # gap(lo·lot) < 0 ≤ gap(min(hi·lot, size))
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if gap(min(mid * lot, size)) >= 0:
                hi = mid
            else:
                lo = mid
        x = min(hi * lot, size)
        targets.append(ReductionTarget(p.instrument, i, x))
        restores = True
        break
    if not restores:
        # Nothing short of a close-out restores the account: close the positions skipped above too.
        for i, cost_per_contract in skipped:
            size = abs(account.positions[i].size_contracts)
            targets.append(ReductionTarget(account.positions[i].instrument, i, size))
            equity -= cost_per_contract * float(size)
            im -= fn(i, size)
        restores = equity >= buffer * im - RESTORE_TOLERANCE_USD   # a full close-out lands on 0 ± float noise
    intents: list[OrderIntent] = []
    for t in targets:
        p = account.positions[t.position_index]
        large = p.notional_usd > settings.large_position_notional_usd
        cooling = large and cooldowns.get(p.instrument, 0) > now_ms
        if cooling and settings.large_position_cooldown_mode is CooldownMode.PAUSE:
            continue
        cap = abs(p.size_contracts) if cooling else slice_cap_contracts(p, settings)
        size = min(t.reduce_contracts, cap, abs(p.size_contracts))
        if size <= 0:
            continue
        limit, b = priced[t.position_index]
        side = OrderSide.SELL if p.side > 0 else OrderSide.BUY
        intents.append(OrderIntent(p.instrument, t.position_index, side, size, limit, b))
        if large and not cooling and size < t.reduce_contracts:
            cooldowns[p.instrument] = now_ms + settings.large_position_cooldown_ms
    return RoundPlan(account.account_id, tuple(intents), tuple(targets), required, restores, False, False,
                     cooldowns)


def is_reduce_only(position_size_contracts: Decimal, side: OrderSide, size_contracts: Decimal) -> bool:
    """True when filling ``size`` on ``side`` moves the position toward zero without crossing it."""
    if size_contracts <= 0 or position_size_contracts == 0:
        return False
    closing = OrderSide.SELL if position_size_contracts > 0 else OrderSide.BUY
    return side == closing and size_contracts <= abs(position_size_contracts)

