"""Pure liquidation domain (no Kafka, gRPC, Redis or environment): prices, fees and the insurance fund,
the round plan, episodes and order ids, auto-deleveraging, guards.

Modules: :mod:`.prices` (bankruptcy and fillable price), :mod:`.fund` (fee, settlement, insurance fund),
:mod:`.plan` (smallest paced reduce-only reduction), :mod:`.episode` (state machine, order ids),
:mod:`.adl` (ranking, lights, deleveraging), :mod:`.guards` (stale marks, price bands, withdrawals).
"""
