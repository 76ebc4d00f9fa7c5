"""Settings of the margin service (``MF_MARGIN_*``), parsed once at start."""

from __future__ import annotations

import dataclasses

from marginflow.shared.config import (
    CommonSettings, asset_list, asset_symbol, env, float_list, non_negative_float, non_negative_int, parse_port, positive_float,
    positive_int)


# Room for a snapshot chunk's own fields and the record's framing, bytes.
SNAPSHOT_CHUNK_OVERHEAD_BYTES = 4096


def mm_factor(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"must be in (0, 1], got {text!r}")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"must be in [0, 1], got {text!r}")
    return value


@dataclasses.dataclass(frozen=True)
class MarginSettings:
    common: CommonSettings = dataclasses.field(default_factory=CommonSettings)
    grpc_port: int = env("MF_MARGIN_GRPC_PORT", parse_port, 50054, "MarginService gRPC port (0 = any free port)")
    metrics_port: int = env("MF_MARGIN_METRICS_PORT", parse_port, 9104, "Prometheus /metrics port (0 = any)")
    consumer_group: str = env("MF_MARGIN_GROUP", str, "marginflow-margin",
                              "consumer group of portfolio.positions (MF_TOPIC_PREFIX is put in front)")
    mm_factor: float = env("MF_MARGIN_MM_FACTOR", mm_factor, 0.5, "MM = factor × IM, in (0, 1]")
    bracket_floors_usd: tuple[float, ...] = env(
        "MF_MARGIN_BRACKET_FLOORS_USD", float_list, (0.0, 1e6, 5e6, 20e6),
        "notional floors (USD) of the tiered minimum's brackets, first 0, increasing")
    bracket_rates: tuple[float, ...] = env(
        "MF_MARGIN_BRACKET_RATES", float_list, (0.01, 0.02, 0.05, 0.10),
        "margin rate of each bracket, non-decreasing, in [0, 1]")
    option_contingency_rate: float = env(
        "MF_MARGIN_OPTION_CONTINGENCY_RATE", fraction, 0.01,
        "contingency per net short option per strike (calls and puts netted), fraction of the underlying's "
        "value per unit (Deribit: 0.01 BTC per option)")
    basis_contingency_rate: float = env(
        "MF_MARGIN_BASIS_CONTINGENCY_RATE", fraction, 0.01,
        "contingency of offsetting perpetuals/futures of different expiries, fraction of the underlying value "
        "of the offset min(long, short) (Deribit: 1 %)")
    liquidation_participation: float = env(
        "MF_MARGIN_LIQUIDATION_PARTICIPATION", fraction, 0.0,
        "share of an instrument's average daily volume (trades.fills) a close-out may trade; a larger "
        "position's horizon h_eff = |q| / (participation · ADV) scales its grid and ES by √(h_eff / h); "
        "0 = off (and trades.fills is not read). E.g. 0.1 on a venue whose fills are its real volume")
    max_horizon_multiple: float = env(
        "MF_MARGIN_MAX_HORIZON_MULTIPLE", positive_float, 10.0,
        "the liquidation horizon is at most this multiple of the grid's, >= 1")
    depth_uncovered_penalty: float = env(
        "MF_MARGIN_DEPTH_UNCOVERED_PENALTY", non_negative_float, 4.0,
        "liquidity add-on through the depth curve: a size beyond the curve's last distance d pays "
        "d·(1 + penalty·s), s = the uncovered share of the size (an empty book: (1 + penalty)·d)")
    concentration_threshold: float = env(
        "MF_MARGIN_CONCENTRATION_THRESHOLD", fraction, 0.05,
        "share of an instrument's open interest from which a position pays the concentration add-on")
    concentration_rate: float = env(
        "MF_MARGIN_CONCENTRATION_RATE", non_negative_float, 0.0,
        "concentration add-on: this × (OI share − threshold) × notional; 0 = off (and every account's "
        "positions are not read for the open interest). E.g. 0.1 on a venue whose accounts are its market")
    haircut_z: float = env("MF_MARGIN_HAIRCUT_Z", positive_float, 2.33,
                           "z of the collateral haircut min(cap, z·σ_m·√horizon)")
    haircut_cap: float = env("MF_MARGIN_HAIRCUT_CAP", fraction, 0.5, "largest haircut of crypto collateral")
    haircut_horizon_seconds: float = env("MF_MARGIN_HAIRCUT_HORIZON_SECONDS", positive_float, 259200.0,
                                         "horizon of the collateral haircut, seconds")
    stablecoins: tuple[str, ...] = env("MF_MARGIN_STABLECOINS", asset_list, ("USDC", "USDT"),
                                       "USD stablecoins: price 1, haircut 0")
    settlement_asset: str = env("MF_MARGIN_SETTLEMENT_ASSET", asset_symbol, "USDC", "USD stablecoin P&L settles in")
    assets: tuple[str, ...] = env("MF_MARGIN_ASSETS", asset_list, (),
                                  "collateral assets (default: the stablecoins and every underlying)")
    mark_max_age_ms: int = env("MF_MARGIN_MARK_MAX_AGE_MS", positive_int, 30_000,
                               "a mark older than this (event time, behind the newest) is stale: never liquidate on it")
    publish_change_fraction: float = env("MF_MARGIN_PUBLISH_CHANGE", fraction, 0.01,
                                         "republish when equity or IM moved by this fraction (of max(|equity|, IM))")
    publish_change_min_usd: float = env("MF_MARGIN_PUBLISH_MIN_USD", positive_float, 1.0,
                                        "... and by at least this many USD")
    publish_max_interval_ms: int = env("MF_MARGIN_PUBLISH_MAX_INTERVAL_MS", positive_int, 60_000,
                                       "republish every account at least this often, ms")
    evaluate_interval_ms: int = env("MF_MARGIN_EVALUATE_INTERVAL_MS", positive_int, 200,
                                    "shortest interval between two re-evaluations on marks, ms")
    model_refresh_ms: int = env("MF_MARGIN_MODEL_REFRESH_MS", non_negative_int, 60_000,
                                "rebuild risk arrays at current marks this often (0 = only per version), ms")
    recenter_price_change: float = env(
        "MF_MARGIN_RECENTER_PRICE_CHANGE", fraction, 0.01,
        "rebuild the risk arrays as soon as a forward has moved by more than this since the last build, "
        "relative (0 = not on price moves)")
    recenter_vol_change: float = env(
        "MF_MARGIN_RECENTER_VOL_CHANGE", fraction, 0.05,
        "... or an option's implied vol, relative (0 = not on vol moves)")
    recenter_min_interval_ms: int = env("MF_MARGIN_RECENTER_MIN_INTERVAL_MS", non_negative_int, 1000,
                                        "at most one such rebuild (a full recalculation) per this many ms")
    incremental_max_accounts: int = env("MF_MARGIN_INCREMENTAL_MAX_ACCOUNTS", positive_int, 2000,
                                        "a snapshot batch with more accounts is one full recalculation")
    threads: int = env("MF_MARGIN_THREADS", positive_int, 2, "margin-core threads")
    marks_tail_records: int = env("MF_MARGIN_MARKS_TAIL_RECORDS", positive_int, 20_000,
                                  "records per md.marks partition read back at start")
    poll_timeout_ms: int = env("MF_MARGIN_POLL_TIMEOUT_MS", positive_int, 50, "consumer poll timeout, ms")
    session_timeout_ms: int = env("MF_MARGIN_SESSION_TIMEOUT_MS", positive_int, 6_000,
                                  "consumer-group session timeout: how soon a dead instance's partitions move, ms")
    instance_id: str = env("MF_MARGIN_INSTANCE_ID", str, "",
                           "static consumer-group membership id, unique per instance and stable across its "
                           "restarts (a restarted instance gets its partitions back at once); default: "
                           "<host>:<gRPC port> when the port is fixed, else dynamic membership")
    advertise_address: str = env("MF_MARGIN_ADVERTISE_ADDRESS", str, "",
                                 "host:port other instances forward queries to (default: the bind host, or this "
                                 "host's name when binding every address, and the gRPC port)")
    owner_ttl_seconds: float = env("MF_MARGIN_OWNER_TTL_SECONDS", positive_float, 5.0,
                                   "how long an instance's claim on its partitions lives unless renewed (every "
                                   "second), seconds")
    redis_prefix: str = env("MF_MARGIN_REDIS_PREFIX", str, "mf:mg:", "prefix of the margin service's Redis keys")
    exit_buffer_bps: int = env("MF_MARGIN_EXIT_BUFFER_BPS", non_negative_int, 200,
                               "bankrupt is left (for liquidation) once equity ≥ this × MM, bp")
    margin_call_exit_buffer_bps: int = env("MF_MARGIN_MARGIN_CALL_EXIT_BUFFER_BPS", non_negative_int, 500,
                                           "margin call and liquidation end once equity ≥ IM × (1 + this), bp "
                                           "(500: restored at IM·1.05)")
    confirm_evaluations: int = env("MF_MARGIN_CONFIRM_EVALUATIONS", positive_int, 2,
                                   "a worse state is published once seen in this many evaluations ...")
    confirm_ms: int = env("MF_MARGIN_CONFIRM_MS", non_negative_int, 1_000,
                          "... and for this long in the marks' event time, ms")
    immediate_band_bps: int = env("MF_MARGIN_IMMEDIATE_BAND_BPS", non_negative_int, 1_000,
                                  "a shortfall beyond this below the threshold is published at once, bp "
                                  "(1000: equity < 0.9·MM enters liquidation without waiting)")
    min_dwell_ms: int = env("MF_MARGIN_MIN_DWELL_MS", non_negative_int, 300_000,
                            "a margin call or liquidation stands at least this long (service clock, ms) "
                            "before a market recovery may end it; the account's own deposit, trade or "
                            "liquidation fill ends it at once (0 = off)")
    mark_wait_seconds: float = env("MF_MARGIN_MARK_WAIT_SECONDS", non_negative_float, 10.0,
                                   "at start, how long to wait for a mark of every instrument with an open "
                                   "position before its accounts count as stale, seconds")
    startup_timeout_seconds: float = env("MF_MARGIN_STARTUP_TIMEOUT_SECONDS", positive_float, 120.0,
                                         "longest the start (topics, risk params) may take")
    snapshot_interval_seconds: float = env(
        "MF_MARGIN_SNAPSHOT_INTERVAL_SECONDS", non_negative_float, 15.0,
        "write the restart snapshot (margin.snapshot: the owned partitions' books and the margin.state "
        "read-back, with the offsets they reflect) this often, seconds; a restart then reads only the records "
        "after those offsets (0 = never write, and never read one: every start reads from the beginning)")
    snapshot_max_age_seconds: float = env(
        "MF_MARGIN_SNAPSHOT_MAX_AGE_SECONDS", non_negative_float, 86_400.0,
        "a snapshot part written longer ago than this is not used (that partition is read from the "
        "beginning), seconds; 0 = any age")
    snapshot_chunk_bytes: int = env(
        "MF_MARGIN_SNAPSHOT_CHUNK_BYTES", positive_int, 512 * 1024,
        "largest payload of one margin.snapshot record, bytes; below MF_MAX_MESSAGE_BYTES and the broker's "
        "message.max.bytes")

    def __post_init__(self) -> None:
        floors, rates = self.bracket_floors_usd, self.bracket_rates
        if not floors or floors[0] != 0.0 or any(b <= a for a, b in zip(floors, floors[1:])):
            raise ValueError(f"MF_MARGIN_BRACKET_FLOORS_USD={floors!r} is invalid: first must be 0, then increasing")
        if len(rates) != len(floors):
            raise ValueError(f"MF_MARGIN_BRACKET_RATES={rates!r} is invalid: needs {len(floors)} rates, one per floor")
        if any(not 0.0 <= r <= 1.0 for r in rates) or any(b < a for a, b in zip(rates, rates[1:])):
            raise ValueError(f"MF_MARGIN_BRACKET_RATES={rates!r} is invalid: in [0, 1] and non-decreasing")
        if self.settlement_asset not in self.stablecoins:
            raise ValueError(f"MF_MARGIN_SETTLEMENT_ASSET={self.settlement_asset!r} is invalid: "
                             "must be one of MF_MARGIN_STABLECOINS")
        if self.max_horizon_multiple < 1.0:
            raise ValueError(f"MF_MARGIN_MAX_HORIZON_MULTIPLE={self.max_horizon_multiple!r} is invalid: must be >= 1")
        if self.concentration_threshold >= 1.0:
            raise ValueError(f"MF_MARGIN_CONCENTRATION_THRESHOLD={self.concentration_threshold!r} is invalid: "
                             "must be < 1")
        if self.assets and self.settlement_asset not in self.assets:
            raise ValueError(f"MF_MARGIN_ASSETS={','.join(self.assets)!r} is invalid: must include "
                             f"the settlement asset {self.settlement_asset}")

        if self.snapshot_chunk_bytes + SNAPSHOT_CHUNK_OVERHEAD_BYTES > self.common.max_message_bytes:
            raise ValueError(f"MF_MARGIN_SNAPSHOT_CHUNK_BYTES={self.snapshot_chunk_bytes} is invalid: with "
                             f"{SNAPSHOT_CHUNK_OVERHEAD_BYTES} bytes of framing it must fit MF_MAX_MESSAGE_BYTES="
                             f"{self.common.max_message_bytes}")

    def collateral_assets(self, underlyings: list[str]) -> tuple[str, ...]:
        if self.assets:
            return self.assets
        out = [self.settlement_asset] + [s for s in self.stablecoins if s != self.settlement_asset]
        return tuple(out + [u for u in underlyings if u not in out])
