"""Settings of the liquidation service (``MF_LIQUIDATION_*``), parsed once at start."""

from __future__ import annotations

import dataclasses
from decimal import Decimal, InvalidOperation

from marginflow.shared.config import (
    CommonSettings, choice, env, non_negative_int, parse_port, positive_float, positive_int)


def decimal_non_negative(text: str) -> Decimal:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"not a decimal number: {text!r}") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"must be a finite decimal ≥ 0, got {text!r}")
    return value


def optional_decimal(text: str) -> Decimal | None:
    return None if text.strip().lower() in ("", "none") else decimal_non_negative(text)


def fee_rate(text: str) -> Decimal:
    value = decimal_non_negative(text)
    if value > 1:
        raise ValueError(f"must be in [0, 1], got {text!r}")
    return value


def address(text: str) -> str:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not host:port")
    parse_port(port)
    return text.strip()


def redis_prefix(text: str) -> str:
    if "{" in text or "}" in text or "*" in text or " " in text:
        raise ValueError(f"must not contain braces, '*' or spaces, got {text!r}")
    return text


@dataclasses.dataclass(frozen=True)
class LiquidationSettings:
    common: CommonSettings = dataclasses.field(default_factory=CommonSettings)
    grpc_port: int = env("MF_LIQUIDATION_GRPC_PORT", parse_port, 50055, "LiquidationService gRPC port (0 = any)")
    metrics_port: int = env("MF_LIQUIDATION_METRICS_PORT", parse_port, 9105, "Prometheus /metrics port (0 = any)")
    admin_token: str = env("MF_ADMIN_TOKEN", str, "", "bearer token of Pause/Resume; empty = refused")
    consumer_group: str = env("MF_LIQUIDATION_GROUP", str, "marginflow-liquidation",
                              "group id under which the offsets of margin.calls and trades.fills are committed "
                              "(MF_TOPIC_PREFIX put in front; no group membership: one instance runs)")
    margin_address: str = env("MF_LIQUIDATION_MARGIN_ADDRESS", address, "127.0.0.1:50054",
                              "MarginService host:port (Recheck at the moment of acting)")
    portfolio_address: str = env("MF_LIQUIDATION_PORTFOLIO_ADDRESS", address, "127.0.0.1:50053",
                                 "AccountService host:port (opposite positions for ADL)")
    grpc_timeout_ms: int = env("MF_LIQUIDATION_GRPC_TIMEOUT_MS", positive_int, 2000,
                               "deadline of each call to margin/portfolio, ms")
    redis_prefix: str = env("MF_LIQUIDATION_REDIS_PREFIX", redis_prefix, "mf:liq:", "prefix of every Redis key")
    lease_ms: int = env("MF_LIQUIDATION_LEASE_MS", positive_int, 10_000,
                        "the acting instance's lease in Redis, ms: renewed every quarter of it; a standby takes "
                        "over at most this long after the holder died (at once after an orderly stop)")
    mark_max_age_ms: int = env("MF_LIQUIDATION_MARK_MAX_AGE_MS", positive_int, 30_000,
                               "a mark older than this (behind the newest mark, event time) is stale: no action")
    index_band: float = env("MF_LIQUIDATION_INDEX_BAND", positive_float, 0.10,
                            "pause an instrument while abs(mark − index) > band·index")
    twap_band: float = env("MF_LIQUIDATION_TWAP_BAND", positive_float, 0.50,
                           "pause an instrument while abs(mark − TWAP) > band·TWAP")
    twap_window_ms: int = env("MF_LIQUIDATION_TWAP_WINDOW_MS", positive_int, 300_000, "TWAP window of the mark, ms")
    margin_buffer: Decimal = env("MF_LIQUIDATION_MARGIN_BUFFER", decimal_non_negative, Decimal("0.02"),
                                 "an episode ends at equity ≥ IM·(1 + buffer)")
    fee_rate: Decimal = env("MF_LIQUIDATION_FEE_RATE", fee_rate, Decimal("0.015"),
                            "largest liquidation fee, fraction of fill notional (capped at the surplus over bankruptcy)")
    min_slippage: Decimal = env("MF_LIQUIDATION_MIN_SLIPPAGE", fee_rate, Decimal("0.001"),
                                "the limit is at least this fraction of the mark away from it (an IOC crosses the "
                                "spread), never beyond the bankruptcy price")
    cooldown_mode: str = env("MF_LIQUIDATION_COOLDOWN_MODE", choice("pause", "full"), "pause",
                             "large positions during their cooldown: pause, or the whole remaining target (full)")
    max_attempts_per_round: int = env("MF_LIQUIDATION_MAX_ATTEMPTS", positive_int, 3,
                                      "order sends per account and round")
    round_interval_ms: int = env("MF_LIQUIDATION_ROUND_INTERVAL_MS", positive_int, 1000,
                                 "pause between two rounds of one account, ms (fills and margin catch up)")
    max_rounds: int = env("MF_LIQUIDATION_MAX_ROUNDS", positive_int, 100,
                          "rounds of an episode before it is left to the operator (stays in the queue)")
    workers: int = env("MF_LIQUIDATION_WORKERS", positive_int, 8,
                       "re-check calls to margin in flight (each for up to 100 due accounts)")
    fund_initial_usd: Decimal = env("MF_LIQUIDATION_FUND_INITIAL_USD", decimal_non_negative, Decimal("0"),
                                    "insurance fund balance when liquidation.fund is empty")
    fund_max_loss_per_account_usd: Decimal | None = env(
        "MF_LIQUIDATION_FUND_MAX_LOSS_PER_ACCOUNT_USD", optional_decimal, None,
        "most the fund pays for one account's episode (empty = no cap); the rest goes to ADL")
    house_account: str = env("MF_LIQUIDATION_HOUSE_ACCOUNT", str, "house",
                             "the venue's counterparty account (exchange-sim's); never deleveraged")
    recent_ids: int = env("MF_LIQUIDATION_RECENT_IDS", positive_int, 10_000,
                          "fill/deficit ids remembered by the fund ledger against republished inputs")
    history: int = env("MF_LIQUIDATION_HISTORY", positive_int, 10_000,
                       "liquidation events and fund changes kept in memory for the gRPC queries")
    poll_timeout_ms: int = env("MF_LIQUIDATION_POLL_TIMEOUT_MS", positive_int, 20, "consumer poll timeout, ms")
    marks_tail_records: int = env("MF_LIQUIDATION_MARKS_TAIL_RECORDS", non_negative_int, 5000,
                                  "md.marks records per partition read back at start")
    startup_timeout_seconds: float = env("MF_LIQUIDATION_STARTUP_TIMEOUT_SECONDS", positive_float, 120.0,
                                         "longest the start (state topics) may take")
