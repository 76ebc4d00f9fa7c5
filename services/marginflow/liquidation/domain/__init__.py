"""Pure liquidation domain (no Kafka, gRPC, Redis or environment): prices, fees and the insurance fund,
the round plan, episodes and order ids, auto-deleveraging, guards.

Modules: :mod:`.prices` (bankruptcy and fillable price), :mod:`.fund` (fee, settlement, insurance fund),
:mod:`.plan` (smallest paced reduce-only reduction), :mod:`.episode` (state machine, order ids),
:mod:`.adl` (ranking, lights, deleveraging), :mod:`.guards` (stale marks, price bands, withdrawals).
Money that crosses a boundary is ``decimal.Decimal``; risk estimates (margin relief, ADL scores) are floats.
"""

from marginflow.liquidation.domain.adl import (AdlCandidate, AdlFill, BankruptcyResolution, adl_lights, adl_score,
                                               deleverage, effective_leverage, pnl_fraction, rank_for_adl,
                                               resolve_bankruptcy)
from marginflow.liquidation.domain.episode import (Episode, EpisodeState, MarginObservation, allocate_slices,
                                                   begin_round, observe, order_id, parse_order_id, record_attempt,
                                                   restored, start)
from marginflow.liquidation.domain.fund import (Coverage, FillSettlement, FundSettings, InsuranceFund,
                                                liquidation_fee_usd, settle_liquidation_fill)
from marginflow.liquidation.domain.guards import (GuardSettings, GuardVerdict, instrument_guard, mark_is_stale,
                                                  outside_band, time_weighted_average, withdrawal_allowed)
from marginflow.liquidation.domain.plan import (AccountState, CooldownMode, OrderIntent, OrderSide, PlanSettings,
                                                PositionState, ReductionTarget, ReliefFn, RoundPlan, is_reduce_only,
                                                limit_and_bankruptcy, plan_round, required_equity_usd,
                                                slice_cap_contracts)
from marginflow.liquidation.domain.prices import (PositionRisk, adjusted_bankruptcy_rating, bankruptcy_price,
                                                  fillable_price, round_limit_to_tick, unclamped_fillable_price)

__all__ = [
    "AccountState", "AdlCandidate", "AdlFill", "BankruptcyResolution", "CooldownMode", "Coverage", "Episode",
    "EpisodeState", "FillSettlement", "FundSettings", "GuardSettings", "GuardVerdict", "InsuranceFund",
    "MarginObservation", "OrderIntent", "OrderSide", "PlanSettings", "PositionRisk", "PositionState",
    "ReductionTarget", "ReliefFn", "RoundPlan", "adjusted_bankruptcy_rating", "adl_lights", "adl_score",
    "allocate_slices", "bankruptcy_price", "begin_round", "deleverage", "effective_leverage", "fillable_price",
    "instrument_guard", "is_reduce_only", "limit_and_bankruptcy", "liquidation_fee_usd", "mark_is_stale",
    "observe", "order_id", "outside_band", "parse_order_id", "plan_round", "pnl_fraction", "rank_for_adl",
    "record_attempt", "required_equity_usd", "resolve_bankruptcy", "restored", "round_limit_to_tick",
    "settle_liquidation_fill", "slice_cap_contracts", "start", "time_weighted_average",
    "unclamped_fillable_price", "withdrawal_allowed",
]
