"""Settings of the riskparams service, from ``MF_RISKPARAMS_*`` environment variables (parsed once).

Every field names its unit. ``python -m marginflow.riskparams --help`` prints the table
(:func:`marginflow.shared.config.describe`); the README's table is generated the same way.
"""

from __future__ import annotations

import dataclasses
import math

from marginflow.shared.config import (CommonSettings, choice, csv_list, env, float_list, non_negative_float, non_negative_int,
                                      parse_port, positive_float, positive_int, unit_interval)
from marginflow.shared.units import MS_PER_DAY, SECONDS_PER_DAY



def _buffer(text: str) -> float:
    value = float(text)
    # EMIR RTS 153/2013 Art. 28(1)(a): a buffer of at least 25 % of the calculated margin.
    if not math.isfinite(value) or value < 0.25:
        raise ValueError(f"must be >= 0.25 (EMIR Art. 28(1)(a) asks for at least 25 %), got {text!r}")
    return value


@dataclasses.dataclass(frozen=True)
class RiskParamsSettings:
    common: CommonSettings = dataclasses.field(default_factory=CommonSettings)

    grpc_port: int = env("MF_RISKPARAMS_GRPC_PORT", parse_port, 50052, "gRPC port (0 = any free port)")
    metrics_port: int = env("MF_RISKPARAMS_METRICS_PORT", parse_port, 9102, "Prometheus /metrics port")
    faust_web_port: int = env("MF_RISKPARAMS_FAUST_WEB_PORT", parse_port, 0,
                              "faust's own web server port; 0 = disabled")
    app_id: str = env("MF_RISKPARAMS_APP_ID", str, "marginflow-riskparams",
                      "faust application id (consumer group, changelog topic names); the topic prefix is prepended")
    tick_consumer: str = env("MF_RISKPARAMS_TICK_CONSUMER", choice("bulk", "agent"), "bulk",
                             "md.ticks path: 'bulk' (batched consumer task inside the faust app) or 'agent' "
                             "(a plain faust agent, ~10k ticks/s)")
    session_timeout_seconds: float = env("MF_RISKPARAMS_SESSION_TIMEOUT_SECONDS", positive_float, 10.0,
                                         "consumer-group session timeout of the faust app and its tick consumer: how "
                                         "long the group waits for a member that stopped heartbeating, s")
    instance_id: str = env("MF_RISKPARAMS_INSTANCE_ID", str, "",
                           "static consumer-group membership id (stable across restarts: a restarted process "
                           "takes its partitions back without waiting for the dead member's session); default "
                           "riskparams-<host> (one instance runs per app id); 'none' = dynamic membership")
    underlyings: tuple[str, ...] = env("MF_RISKPARAMS_UNDERLYINGS", csv_list, (),
                                       "underlyings to estimate (default: every underlying of the universe)")

    # Sampling (event time)
    sample_interval_ms: int = env("MF_RISKPARAMS_SAMPLE_INTERVAL_MS", positive_int, MS_PER_DAY,
                                  "return sampling interval, in the ticks' event time, milliseconds")
    max_fill_buckets: int = env("MF_RISKPARAMS_MAX_FILL_INTERVALS", non_negative_int, 10,
                                "empty intervals filled with a zero return; a longer gap re-bases the series")

    # EWMA
    lambda_fast: float = env("MF_RISKPARAMS_LAMBDA_FAST", unit_interval, 0.94,
                             "RiskMetrics decay of the fast EWMA, per sampling interval")
    lambda_slow: float = env("MF_RISKPARAMS_LAMBDA_SLOW", unit_interval, 0.97,
                             "RiskMetrics decay of the slow EWMA, per sampling interval")
    half_life_fast_seconds: float = env("MF_RISKPARAMS_HALF_LIFE_FAST_SECONDS", non_negative_float, 0.0,
                                        "if > 0: fast EWMA half-life in seconds (overrides LAMBDA_FAST)")
    half_life_slow_seconds: float = env("MF_RISKPARAMS_HALF_LIFE_SLOW_SECONDS", non_negative_float, 0.0,
                                        "if > 0: slow EWMA half-life in seconds (overrides LAMBDA_SLOW)")
    lambda_correlation: float = env("MF_RISKPARAMS_LAMBDA_CORRELATION", unit_interval, 0.94,
                                    "decay of the EWMA covariance behind the correlation matrix")

    # GARCH(1,1)
    garch_window_returns: int = env("MF_RISKPARAMS_GARCH_WINDOW_RETURNS", positive_int, 1000,
                                    "rolling window of the GARCH(1,1) maximum-likelihood fit, returns")
    garch_min_returns: int = env("MF_RISKPARAMS_GARCH_MIN_RETURNS", positive_int, 250,
                                 "returns needed before the first GARCH fit")
    garch_refit_every: int = env("MF_RISKPARAMS_GARCH_REFIT_EVERY", positive_int, 20,
                                 "refit GARCH every N new returns (between fits the variance recursion runs)")

    # Anti-procyclicality
    apc_buffer: float = env("MF_RISKPARAMS_APC_BUFFER", _buffer, 0.25,
                            "margin buffer in calm markets (>= 0.25), released in stress")
    stress_ratio: float = env("MF_RISKPARAMS_STRESS_RATIO", positive_float, 1.25,
                              "stress when σ_base >= ratio × σ_ewma_slow")
    max_step_up: float = env("MF_RISKPARAMS_MAX_STEP_UP", positive_float, 0.5,
                             "largest relative rise of σ_m per sampling interval (0.5 = +50 %)")
    implied_weight: float = env("MF_RISKPARAMS_IMPLIED_WEIGHT", non_negative_float, 1.0,
                                "k in k·σ_implied")
    floor_lookback_returns: int = env("MF_RISKPARAMS_FLOOR_LOOKBACK_RETURNS", positive_int, 3650,
                                      "long look-back of the floor, returns (3650 daily = 10 years)")
    floor_stress_window_returns: int = env("MF_RISKPARAMS_FLOOR_STRESS_WINDOW_RETURNS", positive_int, 30,
                                           "length of the stressed sub-period searched in the look-back")
    floor_stress_weight: float = env("MF_RISKPARAMS_FLOOR_STRESS_WEIGHT", unit_interval, 0.25,
                                     "weight of the stressed period in the floor variance (Art. 28(1)(b))")
    floor_min_returns: int = env("MF_RISKPARAMS_FLOOR_MIN_RETURNS", positive_int, 30,
                                 "returns needed before the floor applies")

    # Implied volatility
    implied_tenor_days: float = env("MF_RISKPARAMS_IMPLIED_TENOR_DAYS", positive_float, 30.0,
                                    "tenor the ATM implied vol is interpolated to, days")
    implied_min_expiry_hours: float = env("MF_RISKPARAMS_IMPLIED_MIN_EXPIRY_HOURS", non_negative_float, 24.0,
                                          "expiries closer than this are ignored, hours")
    implied_max_age_seconds: float = env("MF_RISKPARAMS_IMPLIED_MAX_AGE_SECONDS", positive_float, 3600.0,
                                         "option marks older than this (event time) are ignored, seconds")

    # Scenarios
    grid_z: float = env("MF_RISKPARAMS_GRID_Z", positive_float, 3.0, "z of the grid range z·σ_m·√horizon")
    grid_horizon_seconds: float = env("MF_RISKPARAMS_GRID_HORIZON_SECONDS", positive_float, 3.0 * SECONDS_PER_DAY,
                                      "close-out horizon of the grid and the FHS set, seconds")
    grid_buckets: int = env("MF_RISKPARAMS_GRID_BUCKETS", positive_int, 4, "price buckets on each side of 0")
    grid_vol_shocks: tuple[float, ...] = env("MF_RISKPARAMS_GRID_VOL_SHOCKS", float_list, (-0.25, 0.0, 0.25),
                                             "relative vol moves of the grid (down, same, up)")
    tail_multiples: tuple[float, ...] = env("MF_RISKPARAMS_TAIL_MULTIPLES", float_list, (2.0, 3.0),
                                            "extended moves as multiples of the grid range (each ±)")
    tail_weights: tuple[float, ...] = env("MF_RISKPARAMS_TAIL_WEIGHTS", float_list, (0.5, 0.35),
                                          "fraction of each extended move's loss counted")
    # Surface-aware vol shocks per option (marginflow.shared.volsurface), published with each grid
    vol_tenor_reference_days: float = env("MF_RISKPARAMS_VOL_TENOR_REFERENCE_DAYS", non_negative_float, 30.0,
                                          "tenor at which an option gets the grid's vol shock unscaled, days "
                                          "(0 = no tenor scaling); others × (reference/days)^power (Deribit)")
    vol_short_tenor_power: float = env("MF_RISKPARAMS_VOL_SHORT_TENOR_POWER", non_negative_float, 0.30,
                                       "power of the tenor scaling below the reference tenor (Deribit 0.30)")
    vol_long_tenor_power: float = env("MF_RISKPARAMS_VOL_LONG_TENOR_POWER", non_negative_float, 0.13,
                                      "power of the tenor scaling from the reference tenor on (Deribit 0.13)")
    vol_tenor_min_days: float = env("MF_RISKPARAMS_VOL_TENOR_MIN_DAYS", positive_float, 1.0,
                                    "days to expiry are floored here in the tenor scaling, days")
    vol_min_shock_up: float = env("MF_RISKPARAMS_VOL_MIN_SHOCK_UP", non_negative_float, 0.5,
                                  "an option's vol in the grid's vol-up states is at least this, annualised "
                                  "(Deribit's minimum vol for the shock up)")
    vol_skew_shock: float = env("MF_RISKPARAMS_VOL_SKEW_SHOCK", non_negative_float, 1.0,
                                "relative vol added per unit of log down move of the price (vol up as the "
                                "price falls), before the tenor factor")
    vol_skew_put_wing: float = env("MF_RISKPARAMS_VOL_SKEW_PUT_WING", non_negative_float, 0.5,
                                   "extra skew shock per unit of put-side moneyness ln(F/K)/(σ√T)")
    vol_skew_moneyness_cap: float = env("MF_RISKPARAMS_VOL_SKEW_MONEYNESS_CAP", positive_float, 3.0,
                                        "put-side moneyness is capped here in the skew shock, in σ√T")
    fhs_count: int = env("MF_RISKPARAMS_FHS_COUNT", positive_int, 1000, "filtered historical scenarios, T")
    fhs_min_history: int = env("MF_RISKPARAMS_FHS_MIN_HISTORY", positive_int, 250,
                               "joint returns needed before FHS replaces the bootstrap set")
    es_confidence: float = env("MF_RISKPARAMS_ES_CONFIDENCE", unit_interval, 0.99,
                               "expected-shortfall confidence published with the scenarios")

    # Publishing / history
    publish_min_sigma_change: float = env("MF_RISKPARAMS_PUBLISH_MIN_SIGMA_CHANGE", non_negative_float, 0.005,
                                          "publish a version only when some σ_m moved by more than this fraction "
                                          "(or a correlation, or the historical window, or the longest interval)")
    publish_min_correlation_change: float = env("MF_RISKPARAMS_PUBLISH_MIN_CORRELATION_CHANGE", non_negative_float,
                                                0.02, "... or some correlation moved by more than this")
    publish_max_interval_seconds: float = env("MF_RISKPARAMS_PUBLISH_MAX_INTERVAL_SECONDS", positive_float, 300.0,
                                              "... or the last version is this old, seconds")
    publish_interval_seconds: float = env("MF_RISKPARAMS_PUBLISH_INTERVAL_SECONDS", positive_float, 1.0,
                                          "wall-clock period of the publisher (a version only when something changed)")
    sigma_history_len: int = env("MF_RISKPARAMS_SIGMA_HISTORY", positive_int, 500,
                                 "σ_m changes kept per underlying for GetSigmaHistory")
    commit_interval_seconds: float = env("MF_RISKPARAMS_COMMIT_INTERVAL_SECONDS", positive_float, 1.0,
                                         "bulk tick consumer: state flush + offset commit period, seconds")

    # Signals (GetSignals, marginflow_riskparams_signal_*)
    signal_tenors_days: tuple[float, ...] = env("MF_RISKPARAMS_SIGNAL_TENORS_DAYS", float_list, (7.0, 30.0, 90.0),
                                                "tenors the smile is summarised at (ATM vol, 25-delta skew), days")
    depth_reference_bps: float = env("MF_RISKPARAMS_DEPTH_REFERENCE_BPS", positive_float, 50.0,
                                     "book depth index: size within this distance of the mid, bps")
    depth_half_life_seconds: float = env("MF_RISKPARAMS_DEPTH_HALF_LIFE_SECONDS", positive_float, 86400.0,
                                         "book depth index: event-time half-life of its baseline, seconds")

    def __post_init__(self) -> None:
        if len(self.tail_multiples) != len(self.tail_weights):
            raise ValueError("MF_RISKPARAMS_TAIL_MULTIPLES and MF_RISKPARAMS_TAIL_WEIGHTS need the same length")
        if any(not 0.0 <= w <= 1.0 for w in self.tail_weights):
            raise ValueError("MF_RISKPARAMS_TAIL_WEIGHTS must lie in [0, 1]")
        if self.garch_min_returns > self.garch_window_returns:
            raise ValueError("MF_RISKPARAMS_GARCH_MIN_RETURNS must not exceed MF_RISKPARAMS_GARCH_WINDOW_RETURNS")
        if self.garch_min_returns < 20:
            raise ValueError("MF_RISKPARAMS_GARCH_MIN_RETURNS must be >= 20 (a GARCH fit needs data)")
        if self.floor_stress_window_returns > self.floor_lookback_returns:
            raise ValueError("MF_RISKPARAMS_FLOOR_STRESS_WINDOW_RETURNS must not exceed the look-back")
        if any(v <= -1.0 for v in self.grid_vol_shocks):
            raise ValueError("MF_RISKPARAMS_GRID_VOL_SHOCKS must be > -1")
        tenors = self.signal_tenors_days
        if not tenors or len(tenors) > 16 or any(not d > 0 for d in tenors) or any(b <= a for a, b in zip(tenors, tenors[1:])):
            raise ValueError("MF_RISKPARAMS_SIGNAL_TENORS_DAYS must be 1..16 tenors > 0 days, increasing")


def print_help() -> int:
    """The settings (environment variables) with defaults and meaning; exit code 0."""
    from marginflow.shared.config import describe

    rows = describe(RiskParamsSettings)
    width = max(len(r[0]) for r in rows)
    print("python -m marginflow.riskparams — settings (environment variables):")
    print("\n".join(f"{name:<{width}}  {default!s:<22} {doc}" for name, default, doc in rows))
    return 0
