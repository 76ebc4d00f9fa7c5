"""Settings of the exchange simulator (``MF_EXCHANGE_SIM_*``), parsed once at start. Demo and tests only."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

from marginflow.liquidation.settings import decimal_non_negative, fee_rate
from marginflow.shared.config import CommonSettings, env, non_negative_float, parse_port, positive_int


@dataclasses.dataclass(frozen=True)
class ExchangeSimSettings:
    common: CommonSettings = dataclasses.field(default_factory=CommonSettings)
    metrics_port: int = env("MF_EXCHANGE_SIM_METRICS_PORT", parse_port, 9106, "Prometheus /metrics port (0 = any)")
    consumer_group: str = env("MF_EXCHANGE_SIM_GROUP", str, "marginflow-exchange-sim",
                              "consumer group of liquidation.orders (MF_TOPIC_PREFIX put in front)")
    house_account: str = env("MF_EXCHANGE_SIM_HOUSE_ACCOUNT", str, "house",
                             "counterparty account of every simulated fill (the book stays balanced)")
    fee_rate: Decimal = env("MF_EXCHANGE_SIM_LIQUIDATION_FEE_RATE", fee_rate, Decimal("0.015"),
                            "liquidation fee, fraction of fill notional, capped at the surplus over bankruptcy")
    book_levels: int = env("MF_EXCHANGE_SIM_BOOK_LEVELS", positive_int, 5, "levels per side of the simulated book")
    default_half_spread: Decimal = env("MF_EXCHANGE_SIM_DEFAULT_HALF_SPREAD", decimal_non_negative, Decimal("0.0005"),
                                       "half-spread (fraction of the mark) when a mark carries none")
    default_depth_contracts: Decimal = env("MF_EXCHANGE_SIM_DEFAULT_DEPTH", decimal_non_negative, Decimal("100"),
                                           "contracts per level when a mark carries no depth")
    depth_multiplier: float = env("MF_EXCHANGE_SIM_DEPTH_MULTIPLIER", non_negative_float, 1.0,
                                  "scales the marks' depth (per level = depth / levels × multiplier)")
    marks_tail_records: int = env("MF_EXCHANGE_SIM_MARKS_TAIL_RECORDS", positive_int, 5000,
                                  "md.marks records per partition read back at start")
    poll_timeout_ms: int = env("MF_EXCHANGE_SIM_POLL_TIMEOUT_MS", positive_int, 20, "consumer poll timeout, ms")
    house_collateral_usd: Decimal = env("MF_EXCHANGE_SIM_HOUSE_COLLATERAL_USD", decimal_non_negative,
                                        Decimal("100000000"),
                                        "USDC deposited to the house account on the first start (0 = none): the "
                                        "house takes the other side of every simulated fill and is margined too")
    settlement_asset: str = env("MF_EXCHANGE_SIM_SETTLEMENT_ASSET", str, "USDC", "asset of the house's collateral")
