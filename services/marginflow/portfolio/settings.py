"""Settings of the portfolio service (``MF_PORTFOLIO_*``), parsed once at start."""

from __future__ import annotations

import dataclasses

from marginflow.shared.config import (
    CommonSettings, asset_list, asset_symbol, choice, env, non_negative_float, parse_bool, parse_port, positive_float,
    positive_int)

def margin_address(text: str) -> str:
    """``host:port`` of the MarginService, or ``none`` (no withdrawal gate: tests of the portfolio alone)."""
    value = text.strip()
    if value.lower() == "none":
        return ""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"must be host:port or none, got {text!r}")
    return value


def redis_prefix(text: str) -> str:
    if "{" in text or "}" in text or "*" in text or " " in text:
        raise ValueError(f"must not contain braces, '*' or spaces, got {text!r}")
    return text


@dataclasses.dataclass(frozen=True)
class PortfolioSettings:
    common: CommonSettings = dataclasses.field(default_factory=CommonSettings)
    grpc_port: int = env("MF_PORTFOLIO_GRPC_PORT", parse_port, 50053, "AccountService gRPC port (0 = any free port)")
    metrics_port: int = env("MF_PORTFOLIO_METRICS_PORT", parse_port, 9103, "Prometheus /metrics port (0 = any)")
    redis_prefix: str = env("MF_PORTFOLIO_REDIS_PREFIX", redis_prefix, "mf:pf:", "prefix of every Redis key")
    consumer_group: str = env("MF_PORTFOLIO_GROUP", str, "marginflow-portfolio",
                              "Kafka consumer group (MF_TOPIC_PREFIX is put in front)")
    session_timeout_ms: int = env("MF_PORTFOLIO_SESSION_TIMEOUT_MS", positive_int, 6_000,
                                  "consumer-group session timeout: how soon a dead instance's partitions move, ms")
    instance_id: str = env("MF_PORTFOLIO_INSTANCE_ID", str, "",
                           "static consumer-group membership id, unique per instance and stable across its "
                           "restarts (a restarted instance gets its partitions back at once, without waiting "
                           "for the dead member's session to expire); default: portfolio-<host>-<gRPC port> "
                           "when the port is fixed, else dynamic membership")
    settlement_asset: str = env("MF_PORTFOLIO_SETTLEMENT_ASSET", asset_symbol, "USDC",
                                "USD stablecoin P&L, fees and isolated collateral settle in")
    assets: tuple[str, ...] = env("MF_PORTFOLIO_ASSETS", asset_list, (),
                                  "collateral assets accepted (default: settlement asset, USDT, every underlying)")
    dedupe_ids: int = env("MF_PORTFOLIO_DEDUPE_IDS", positive_int, 64,
                          "fill/event ids remembered per account to ignore a republished one")
    dedupe_seconds: float = env("MF_PORTFOLIO_DEDUPE_SECONDS", non_negative_float, 600.0,
                                "a fill republished under its id within this much log time of its first copy is "
                                "ignored whatever the account's fill rate (the trades.fills ids of that span are "
                                "indexed in memory, read back from Kafka at start and after a rebalance); 0 = off, s")
    batch_max_records: int = env("MF_PORTFOLIO_BATCH_MAX_RECORDS", positive_int, 5000, "records per consumed batch")
    poll_timeout_ms: int = env("MF_PORTFOLIO_POLL_TIMEOUT_MS", positive_int, 100, "consumer poll timeout")
    enforce_lot_size: bool = env("MF_PORTFOLIO_ENFORCE_LOT_SIZE", parse_bool, True,
                                 "dead-letter fills whose size is not a whole number of lots")
    rebuild: str = env("MF_PORTFOLIO_REBUILD", choice("auto", "always"), "auto",
                       "auto: rebuild Redis from portfolio.positions when Redis is empty; always: at every start")
    cache_check_seconds: float = env("MF_PORTFOLIO_CACHE_CHECK_SECONDS", positive_float, 1.0,
                                     "how often the owned partitions' Redis cache is checked to be whole, s")
    rebuild_timeout_seconds: float = env("MF_PORTFOLIO_REBUILD_TIMEOUT_SECONDS", positive_float, 600.0,
                                         "longest a rebuild may take before the start fails")
    margin_address: str = env("MF_PORTFOLIO_MARGIN_ADDRESS", margin_address, "127.0.0.1:50054",
                              "MarginService host:port asked before a withdrawal (refused when unreachable); "
                              "none = no margin check")
    margin_timeout_ms: int = env("MF_PORTFOLIO_MARGIN_TIMEOUT_MS", positive_int, 1000,
                                 "deadline of the margin check of a withdrawal, ms")
    cache_accounts: int = env("MF_PORTFOLIO_CACHE_ACCOUNTS", positive_int, 200_000,
                              "decoded account states kept in memory (checked against Redis bytes)")

    def collateral_assets(self, underlyings: list[str]) -> frozenset[str]:
        if self.assets:
            return frozenset(self.assets) | {self.settlement_asset}
        return frozenset({self.settlement_asset, "USDT", *underlyings})
