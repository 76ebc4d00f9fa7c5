"""Application layer of riskparams: the estimation engine and the service around it.

:class:`RiskEngine` holds the state of every underlying and turns validated ticks and marks into
returns (event-time sampling), estimates and margin volatility, and builds versioned parameter
sets on demand. It is deterministic in the ticks' event time: the same ticks give the same
estimates whatever the replay speed. It does no I/O; its state goes out as key/value changes
(:meth:`RiskEngine.checkpoint`) and comes back with :meth:`RiskEngine.restore`.

:class:`RiskParamsService` puts the engine behind its ports — tick/mark decoding, a state store,
a publisher, dead letters, metrics and a clock — all passed in by the entry point.

Per-tick cost is a dict lookup, two comparisons and two stores; everything heavier (a return's
estimator updates, GARCH refits every N returns, correlation repair, scenario sets, publishing)
happens per sampling interval or per published version.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from marginflow.riskparams.domain.apc import ApcConfig, MarginVol, floor_volatility, margin_volatility
from marginflow.riskparams.domain.correlation import EwmaCovariance, repaired_correlation
from marginflow.riskparams.domain.ewma import ewma_update, lambda_from_half_life
from marginflow.riskparams.domain.garch import GarchFit, fit_garch11, garch_update
from marginflow.riskparams.domain.implied import OptionQuote, atm_implied_vol
from marginflow.riskparams.domain.sampling import Sampler, samples_per_year
from marginflow.riskparams.domain.scenarios import (Grid, GridConfig, bootstrap_scenarios,
                                                    filtered_historical_scenarios, scenario_grid)
from marginflow.riskparams.domain.series import ReturnSeries
from marginflow.riskparams.domain.signals import (ExpirySmile, TenorSignal, depth_within, ewma_event_time,
                                                  expiry_smiles, tenor_signals)
from marginflow.shared.depthcurve import DepthCurve
from marginflow.shared.errors import Rejected
from marginflow.shared.metrics import NullMetrics
from marginflow.shared.units import MS_PER_DAY, MS_PER_HOUR
from marginflow.shared.volsurface import VolSurfaceShock
from marginflow.shared.universe import MAX_IMPLIED_VOL, MAX_PRICE_USD, Kind, Universe

STATE_FORMAT = 1


# ---- configuration and market description ----------------------------------------------------

@dataclasses.dataclass(frozen=True)
class EngineConfig:
    underlyings: tuple[str, ...]
    interval_ms: int = MS_PER_DAY
    max_fill: int = 10
    lambda_fast: float = 0.94
    lambda_slow: float = 0.97
    lambda_correlation: float = 0.94
    garch_window: int = 1000
    garch_min_returns: int = 250
    garch_refit_every: int = 20
    floor_lookback: int = 3650
    floor_stress_window: int = 30
    floor_stress_weight: float = 0.25
    floor_min_returns: int = 30
    apc: ApcConfig = ApcConfig()
    grid: GridConfig = GridConfig()
    fhs_count: int = 1000
    fhs_min_history: int = 250
    es_confidence: float = 0.99
    implied_tenor_days: float = 30.0
    implied_min_expiry_ms: int = MS_PER_DAY
    implied_max_age_ms: int = MS_PER_HOUR
    sigma_history_len: int = 500
    max_pending_rows: int = 1000
    # A version is published only when it differs materially from the last one published: σ_m of an
    # underlying by more than this fraction, a correlation by more than this much, a new window of
    # historical scenarios — or when the last one is this old (ms of wall time).
    publish_min_sigma_change: float = 0.005
    publish_min_correlation_change: float = 0.02
    publish_max_interval_ms: int = 300_000
    # Signals: the tenors the smile is summarised at (days), the book depth index's distance from the mid
    # (bps) and the event-time half-life of its baseline (ms).
    signal_tenors_days: tuple[float, ...] = (7.0, 30.0, 90.0)
    depth_reference_bps: float = 50.0
    depth_half_life_ms: int = MS_PER_DAY

    @property
    def samples_per_year(self) -> float:
        return samples_per_year(self.interval_ms)

    @property
    def series_capacity(self) -> int:
        return max(self.garch_window, self.floor_lookback, self.fhs_count + 64)

    def fingerprint(self) -> dict:
        """What stored state depends on: a change of these discards it at restore."""
        return {"underlyings": list(self.underlyings), "interval_ms": self.interval_ms, "format": STATE_FORMAT}


def engine_config(settings: Any, underlyings: Sequence[str]) -> EngineConfig:
    """EngineConfig from :class:`~marginflow.riskparams.settings.RiskParamsSettings`."""
    s = settings
    interval_s = s.sample_interval_ms / 1000.0
    lam_fast = (lambda_from_half_life(s.half_life_fast_seconds / interval_s)
                if s.half_life_fast_seconds > 0 else s.lambda_fast)
    lam_slow = (lambda_from_half_life(s.half_life_slow_seconds / interval_s)
                if s.half_life_slow_seconds > 0 else s.lambda_slow)
    return EngineConfig(
        underlyings=tuple(underlyings), interval_ms=s.sample_interval_ms, max_fill=s.max_fill_buckets,
        lambda_fast=lam_fast, lambda_slow=lam_slow, lambda_correlation=s.lambda_correlation,
        garch_window=s.garch_window_returns, garch_min_returns=s.garch_min_returns,
        garch_refit_every=s.garch_refit_every, floor_lookback=s.floor_lookback_returns,
        floor_stress_window=s.floor_stress_window_returns, floor_stress_weight=s.floor_stress_weight,
        floor_min_returns=s.floor_min_returns,
        apc=ApcConfig(s.apc_buffer, s.stress_ratio, s.max_step_up, s.implied_weight),
        grid=GridConfig(s.grid_z, s.grid_horizon_seconds, s.grid_buckets, s.grid_vol_shocks,
                        s.tail_multiples, s.tail_weights,
                        VolSurfaceShock(s.vol_tenor_reference_days, s.vol_short_tenor_power, s.vol_long_tenor_power,
                                        s.vol_tenor_min_days, s.vol_min_shock_up, s.vol_skew_shock,
                                        s.vol_skew_put_wing, s.vol_skew_moneyness_cap)),
        fhs_count=s.fhs_count, fhs_min_history=s.fhs_min_history, es_confidence=s.es_confidence,
        implied_tenor_days=s.implied_tenor_days, implied_min_expiry_ms=int(s.implied_min_expiry_hours * MS_PER_HOUR),
        implied_max_age_ms=int(s.implied_max_age_seconds * 1000), sigma_history_len=s.sigma_history_len,
        publish_min_sigma_change=s.publish_min_sigma_change,
        publish_min_correlation_change=s.publish_min_correlation_change,
        publish_max_interval_ms=int(s.publish_max_interval_seconds * 1000),
        signal_tenors_days=s.signal_tenors_days, depth_reference_bps=s.depth_reference_bps,
        depth_half_life_ms=int(s.depth_half_life_seconds * 1000))


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    underlying: str
    strike_usd: float
    expiry_ms: int
    is_call: bool


@dataclasses.dataclass(frozen=True)
class Market:
    """What the engine needs of the universe: the reference instrument of each underlying (its
    price is the one sampled), the option specs, the prior volatility, and every known symbol.

    ``index_ticks`` are the underlyings' symbols: marketdata publishes an underlying's index ticks
    on md.ticks under the bare symbol (``BTC``). They are known and ignored by design: returns are
    sampled from the reference instrument, and the index price comes from the ``index:<u>`` marks.
    """

    reference: dict[str, str]           # instrument symbol -> underlying
    options: dict[str, OptionSpec]
    prior_annual_vol: dict[str, float]
    known: frozenset[str]               # instruments and index:<underlying> marks
    index_ticks: frozenset[str] = frozenset()
    underlying_of: dict[str, str] = dataclasses.field(default_factory=dict)   # known symbol -> underlying
    contract_size: dict[str, float] = dataclasses.field(default_factory=dict)  # symbol -> underlying units

    @classmethod
    def from_universe(cls, universe: Universe, underlyings: Sequence[str]) -> "Market":
        reference: dict[str, str] = {}
        for und in underlyings:
            if und not in universe.underlyings:
                raise ValueError(f"underlying {und!r} is not in the universe")
            insts = universe.by_underlying(und)
            perps = [i for i in insts if i.kind == Kind.PERPETUAL]
            futs = sorted((i for i in insts if i.kind == Kind.FUTURE), key=lambda i: i.expiry_ms)
            ref = (perps or futs or [None])[0]
            if ref is None:
                raise ValueError(f"underlying {und!r} has no perpetual or future to sample")
            reference[ref.symbol] = und
        options = {i.symbol: OptionSpec(i.underlying, i.strike_usd, i.expiry_ms, i.kind == Kind.CALL)
                   for i in universe.instruments.values() if i.is_option and i.underlying in underlyings}
        prior = {u: universe.underlyings[u].annual_vol for u in underlyings}
        known = frozenset(universe.instruments) | {f"index:{u}" for u in universe.underlyings}
        underlying_of = {s: i.underlying for s, i in universe.instruments.items()}
        underlying_of.update({f"index:{u}": u for u in universe.underlyings})
        sizes = {s: i.contract_size for s, i in universe.instruments.items()}
        return cls(reference, options, prior, known, frozenset(universe.underlyings), underlying_of, sizes)


# ---- outputs -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SigmaChange:
    underlying: str
    event_time_ms: int
    version: int
    sigma_before: float
    sigma_after: float
    cause: str
    seq: int = 0


@dataclasses.dataclass(frozen=True)
class UnderlyingEstimate:
    underlying: str
    index_price: float
    sigma_ewma_fast: float
    sigma_ewma_slow: float
    sigma_garch: float
    sigma_implied: float
    sigma_floor: float
    sigma_margin: float
    apc_buffer: float
    stress: bool
    garch_ok: bool
    garch_reason: str
    returns_observed: int
    sample_interval_ms: int
    last_event_time_ms: int
    sigma_base: float


@dataclasses.dataclass(frozen=True)
class UnderlyingSignals:
    """The forward-looking inputs of one underlying as of ``as_of_ms`` (event time): its smile per
    listed expiry and per configured tenor, realised against implied vol, and its book depth."""

    underlying: str
    as_of_ms: int
    index_price: float
    expiries: tuple[ExpirySmile, ...]
    tenors: tuple[TenorSignal, ...]
    sigma_realised: float          # EWMA fast, annualised
    sigma_implied: float           # the ATM implied vol σ_m uses (implied tenor), 0 when no options
    realised_implied_ratio: float  # σ_realised / σ_implied, 0 without an implied vol
    sigma_margin: float
    depth_instrument: str          # the reference instrument whose curve is read ("" when none)
    depth_reference_bps: float
    depth_contracts: float         # thinner side within depth_reference_bps, contracts (0 before any curve)
    depth_usd: float               # ... valued at the index, USD
    depth_index: float             # depth_usd / its EWMA; 0 before any curve
    depth_time_ms: int             # event time of the curve read


@dataclasses.dataclass(frozen=True)
class HistoricalSet:
    underlyings: tuple[str, ...]
    returns: np.ndarray              # (count, n) relative moves, already rescaled
    bootstrap: bool
    first_event_time_ms: int
    last_event_time_ms: int


@dataclasses.dataclass(frozen=True)
class RiskParamsVersion:
    version: int
    event_time_ms: int
    publish_time_ms: int
    underlyings: tuple[UnderlyingEstimate, ...]
    correlation_underlyings: tuple[str, ...]
    correlation: np.ndarray          # (n, n)
    correlation_repaired: bool
    grids: tuple[tuple[str, Grid], ...]
    historical: HistoricalSet
    es_confidence: float


@dataclasses.dataclass
class IngestReport:
    accepted: int = 0
    ignored: int = 0          # known instruments that are not sampled (futures, options, index ticks)
    late: int = 0             # event time older than the last seen: dropped
    returns: int = 0          # sampling intervals closed
    rejected: list[tuple[int, Rejected]] = dataclasses.field(default_factory=list)
    garch_failures: list[tuple[str, str]] = dataclasses.field(default_factory=list)


# ---- per-underlying state ----------------------------------------------------------------------

class _Underlying:
    def __init__(self, name: str, index: int, cfg: EngineConfig, prior_annual_vol: float) -> None:
        self.name = name
        self.index = index
        self.sampler = Sampler(cfg.interval_ms, cfg.max_fill)
        self.prior_var = prior_annual_vol ** 2 / cfg.samples_per_year
        self.var_fast = self.prior_var
        self.var_slow = self.prior_var
        self.garch: GarchFit = GarchFit(False, "too_few_returns")
        self.garch_var = 0.0
        self.since_fit = 0
        self.series = ReturnSeries(cfg.series_capacity)
        self.sigma_floor = 0.0
        self.sigma_implied = 0.0
        self.margin: MarginVol | None = None
        self.history: collections.deque[SigmaChange] = collections.deque(maxlen=cfg.sigma_history_len)
        self.history_seq = 0
        self.index_price = 0.0
        self.last_event_ms = 0       # last sampled bucket end (event time)
        self.quotes: dict[str, OptionQuote] = {}
        self.quotes_dirty = False
        self.depth_contracts = 0.0
        self.depth_usd = 0.0
        self.depth_baseline_usd: float | None = None
        self.depth_time_ms = 0

    def hot_state(self) -> dict:
        g = self.garch
        return {"sampler": self.sampler.to_state(), "var_fast": self.var_fast, "var_slow": self.var_slow,
                "garch": [g.ok, g.reason, g.omega, g.alpha, g.beta, g.forecast_variance, g.n_obs],
                "garch_var": self.garch_var, "since_fit": self.since_fit, "total": self.series.total,
                "sigma_floor": self.sigma_floor, "sigma_implied": self.sigma_implied,
                "margin": None if self.margin is None else dataclasses.asdict(self.margin),
                "history_seq": self.history_seq, "index_price": self.index_price,
                "last_event_ms": self.last_event_ms,
                "depth": [self.depth_contracts, self.depth_usd, self.depth_baseline_usd, self.depth_time_ms]}

    def load_hot_state(self, st: dict) -> None:
        self.sampler.load_state(st["sampler"])
        self.var_fast, self.var_slow = float(st["var_fast"]), float(st["var_slow"])
        ok, reason, omega, alpha, beta, fv, n = st["garch"]
        self.garch = GarchFit(bool(ok), str(reason), float(omega), float(alpha), float(beta), float(fv), int(n))
        self.garch_var = float(st["garch_var"])
        self.since_fit = int(st["since_fit"])
        self.sigma_floor = float(st["sigma_floor"])
        self.sigma_implied = float(st["sigma_implied"])
        self.margin = None if st["margin"] is None else MarginVol(**st["margin"])
        self.history_seq = int(st["history_seq"])
        self.index_price = float(st["index_price"])
        self.last_event_ms = int(st["last_event_ms"])
        depth = st.get("depth")       # state written before the depth index had none
        if depth:
            self.depth_contracts, self.depth_usd = float(depth[0]), float(depth[1])
            self.depth_baseline_usd = None if depth[2] is None else float(depth[2])
            self.depth_time_ms = int(depth[3])


# ---- the engine --------------------------------------------------------------------------------

class RiskEngine:
    """Estimation state of every underlying; see the module docstring."""

    def __init__(self, config: EngineConfig, market: Market) -> None:
        if not config.underlyings:
            raise ValueError("no underlyings to estimate")
        self.config = config
        self.market = market
        self._spy = config.samples_per_year
        self.units = {u: _Underlying(u, i, config, market.prior_annual_vol.get(u, 0.5))
                      for i, u in enumerate(config.underlyings)}
        self._by_reference = {sym: self.units[u] for sym, u in market.reference.items() if u in self.units}
        self._known = market.known
        self._known_ticks = market.known | market.index_ticks
        self.covariance = EwmaCovariance(len(self.units), config.lambda_correlation,
                                         np.array([u.prior_var for u in self.units.values()]))
        self._pending: dict[int, list] = {}       # bucket -> [returns, present]
        self._emitted = {u: -1 for u in self.units}
        self.version = 0
        self.last_event_ms = 0
        self._changed = True                       # something new since the last version
        self._last_published: tuple | None = None  # what the last published version was built from
        self._dirty: set[str] = {"meta", "cov", *(f"u:{u}" for u in self.units)}
        self._deleted: set[str] = set()
        self._history_lock = threading.Lock()      # gRPC threads read the σ_m history

    # ---- input ---------------------------------------------------------------------------
    def ingest_ticks(self, ticks: Iterable[tuple[str, float, int]]) -> IngestReport:
        """Take validated-decoded ticks ``(instrument, price_usd, event_time_ms)`` in arrival order.

        A tick with a non-finite or non-positive price, a non-positive event time, or an
        instrument outside the universe is rejected (``report.rejected`` holds its position and
        reason) and never reaches an estimator.
        """
        rep = IngestReport()
        by_ref = self._by_reference
        known = self._known_ticks
        touched: set[_Underlying] = set()
        for k, (sym, price, t) in enumerate(ticks):
            if not (0.0 < price <= MAX_PRICE_USD):          # NaN fails too
                code = ("non_finite_price" if not math.isfinite(price) else
                        "non_positive_price" if price <= 0 else "implausible")
                rep.rejected.append((k, Rejected(code, f"{sym}: price {price!r}")))
                continue
            u = by_ref.get(sym)
            if u is None:
                if sym in known:
                    rep.ignored += 1
                elif not sym:
                    rep.rejected.append((k, Rejected("missing_field", "tick without an instrument")))
                else:
                    rep.rejected.append((k, Rejected("unknown_instrument", f"{sym!r} is not in the universe")))
                continue
            if t <= 0:
                rep.rejected.append((k, Rejected("bad_event_time", f"{sym}: event_time_ms {t}")))
                continue
            s = u.sampler
            rep.accepted += 1
            touched.add(u)
            if t < s.last_time_ms:
                rep.late += 1
            elif t < s.bucket_end_ms:                      # the common case: same interval
                s.last_price = price
                s.last_time_ms = t
            else:
                for bucket, r in s.observe(t, price) or ():
                    self._on_return(u, bucket, r, rep)
                    rep.returns += 1
        for u in touched:
            self._dirty.add(f"u:{u.name}")
            if u.sampler.last_time_ms > self.last_event_ms:
                self.last_event_ms = u.sampler.last_time_ms
        self._finalize_rows()
        return rep

    def ingest_marks(self, marks: Iterable[tuple]) -> IngestReport:
        """Take marks ``(instrument, underlying, index_price_usd, implied_vol, event_time_ms[, depth_curve])``.

        Option marks with an implied vol feed the ATM implied vol; every mark updates the index
        price of its underlying; the reference instrument's depth curve (validated at decode) feeds
        the book depth index. Unknown instruments and non-finite numbers are rejected.
        """
        rep = IngestReport()
        for k, rec in enumerate(marks):
            sym, und, index_price, iv, t = rec[:5]
            curve: DepthCurve | None = rec[5] if len(rec) > 5 else None
            if not (math.isfinite(index_price) and math.isfinite(iv)) or index_price < 0 or iv < 0:
                rep.rejected.append((k, Rejected("non_finite_mark", f"{sym}: index {index_price!r} iv {iv!r}")))
                continue
            if index_price > MAX_PRICE_USD or iv > MAX_IMPLIED_VOL:
                rep.rejected.append((k, Rejected("implausible", f"{sym}: index {index_price!r} iv {iv!r}")))
                continue
            if sym not in self._known:
                rep.rejected.append((k, Rejected("unknown_instrument", f"{sym!r} is not in the universe")
                                     if sym else Rejected("missing_field", "mark without an instrument")))
                continue
            expected = self.market.underlying_of.get(sym)
            if expected is not None and und != expected:
                # A mark that names another underlying (or none: another message type read as a
                # Mark) would move the wrong index price.
                rep.rejected.append((k, Rejected("underlying_mismatch",
                                                 f"{sym}: underlying {und!r}, the universe says {expected!r}")))
                continue
            if t <= 0:
                rep.rejected.append((k, Rejected("bad_event_time", f"{sym}: event_time_ms {t}")))
                continue
            spec = self.market.options.get(sym)
            und = spec.underlying if spec else (sym[6:] if sym.startswith("index:") else und)
            u = self.units.get(und)
            if u is None:
                rep.ignored += 1
                continue
            rep.accepted += 1
            if index_price > 0:
                u.index_price = index_price
            if spec is not None and iv > 0:
                u.quotes[sym] = OptionQuote(spec.strike_usd, spec.expiry_ms, iv, t, spec.is_call)
                u.quotes_dirty = True
                self._dirty.add(f"iv:{u.name}")
            if curve is not None and t >= u.depth_time_ms and self.market.reference.get(sym) == u.name:
                self._depth(u, sym, curve, t)
            if t > self.last_event_ms:
                self.last_event_ms = t
        for u in self.units.values():
            if u.quotes_dirty:
                u.quotes_dirty = False
                u.sigma_implied = self._implied(u)
                self._changed = True
        return rep

    def _depth(self, u: _Underlying, sym: str, curve: DepthCurve, t: int) -> None:
        cfg = self.config
        u.depth_contracts = depth_within(curve, cfg.depth_reference_bps)
        index = u.index_price or u.sampler.last_price
        u.depth_usd = u.depth_contracts * self.market.contract_size.get(sym, 1.0) * index
        u.depth_baseline_usd = ewma_event_time(u.depth_baseline_usd, u.depth_usd,
                                               t - u.depth_time_ms if u.depth_time_ms else 0, cfg.depth_half_life_ms)
        u.depth_time_ms = t
        self._dirty.add(f"u:{u.name}")

    def signals(self) -> list[UnderlyingSignals]:
        """The signals of every underlying now (event time): call from the thread that ingests."""
        cfg = self.config
        depth_of = {u: s for s, u in self.market.reference.items()}
        out = []
        for est, u in zip(self.estimates(), self.units.values()):
            as_of = max(self.last_event_ms, u.sampler.last_time_ms)
            index = u.index_price or u.sampler.last_price
            smiles = expiry_smiles(list(u.quotes.values()), index, as_of, cfg.implied_min_expiry_ms,
                                   cfg.implied_max_age_ms)
            implied = est.sigma_implied
            base = u.depth_baseline_usd
            out.append(UnderlyingSignals(
                u.name, as_of, index, tuple(smiles), tuple(tenor_signals(smiles, cfg.signal_tenors_days)),
                est.sigma_ewma_fast, implied, est.sigma_ewma_fast / implied if implied > 0 else 0.0,
                est.sigma_margin, depth_of.get(u.name, ""), cfg.depth_reference_bps, u.depth_contracts,
                u.depth_usd, u.depth_usd / base if base else 0.0, u.depth_time_ms))
        return out

    def _implied(self, u: _Underlying) -> float:
        if not u.quotes:
            return 0.0
        cfg = self.config
        as_of = max(self.last_event_ms, u.sampler.last_time_ms)
        index = u.index_price or u.sampler.last_price
        return atm_implied_vol(list(u.quotes.values()), index, as_of, cfg.implied_tenor_days,
                               cfg.implied_min_expiry_ms, cfg.implied_max_age_ms)

    # ---- one return ----------------------------------------------------------------------
    def _annual(self, var: float) -> float:
        return math.sqrt(max(var, 0.0) * self._spy)

    def _on_return(self, u: _Underlying, bucket: int, r: float, rep: IngestReport) -> None:
        cfg = self.config
        sigma_then = math.sqrt(u.var_fast)
        u.var_fast = ewma_update(u.var_fast, r, cfg.lambda_fast)
        u.var_slow = ewma_update(u.var_slow, r, cfg.lambda_slow)
        if u.garch.ok:
            u.garch_var = garch_update(u.garch_var, r, u.garch.omega, u.garch.alpha, u.garch.beta)
        u.series.append(bucket, r, sigma_then)
        u.since_fit += 1
        n = u.series.total
        if n >= cfg.garch_min_returns and (u.garch.reason == "too_few_returns" or u.since_fit >= cfg.garch_refit_every):
            u.garch = fit_garch11(u.series.returns(cfg.garch_window), cfg.garch_min_returns)
            u.since_fit = 0
            if u.garch.ok:
                u.garch_var = u.garch.forecast_variance
            else:
                rep.garch_failures.append((u.name, u.garch.reason))
        if n >= cfg.floor_min_returns:
            u.sigma_floor = floor_volatility(u.series.returns(cfg.floor_lookback), cfg.floor_stress_window,
                                             cfg.floor_stress_weight, self._spy)
        event_ms = (bucket + 1) * cfg.interval_ms
        u.last_event_ms = event_ms
        if u.quotes:
            u.sigma_implied = self._implied(u)
        sigma_fast = self._annual(u.var_fast)
        sigma_garch = self._annual(u.garch_var) if u.garch.ok else sigma_fast
        before = u.margin
        u.margin = margin_volatility(before, sigma_fast=sigma_fast, sigma_slow=self._annual(u.var_slow),
                                     sigma_garch=sigma_garch, sigma_implied=u.sigma_implied,
                                     sigma_floor=u.sigma_floor, config=cfg.apc)
        sigma_before = 0.0 if before is None else before.sigma_margin
        if u.margin.sigma_margin != sigma_before:
            self._record(SigmaChange(u.name, event_ms, self.version + 1, sigma_before, u.margin.sigma_margin,
                                     u.margin.cause, u.history_seq))
        # Joint row for the covariance.
        row = self._pending.get(bucket)
        if row is None:
            row = self._pending[bucket] = [np.zeros(len(self.units)), np.zeros(len(self.units), dtype=bool)]
        row[0][u.index] = r
        row[1][u.index] = True
        self._emitted[u.name] = bucket
        # Series chunk and its obsolete predecessor.
        self._dirty.add(f"h:{u.name}:{u.series.chunk_of(n - 1)}")
        old = u.series.obsolete_chunk()
        if old >= 0:
            self._deleted.add(f"h:{u.name}:{old}")
        self._changed = True
        self._dirty.add("cov")

    def _record(self, change: SigmaChange) -> None:
        u = self.units[change.underlying]
        with self._history_lock:
            u.history.append(change)
        self._dirty.add(f"sig:{u.name}:{change.seq % self.config.sigma_history_len}")
        u.history_seq += 1

    def _finalize_rows(self) -> None:
        """Fold joint rows into the covariance once every underlying has passed their bucket."""
        if not self._pending:
            return
        done_upto = min(self._emitted.values())
        buckets = sorted(self._pending)
        overflow = len(buckets) - self.config.max_pending_rows
        for i, b in enumerate(buckets):
            if b > done_upto and i >= overflow:
                break
            r, present = self._pending.pop(b)
            self.covariance.update(r, present)

    # ---- versions ------------------------------------------------------------------------
    @property
    def changed(self) -> bool:
        return self._changed

    def estimates(self) -> list[UnderlyingEstimate]:
        out = []
        for u in self.units.values():
            sigma_fast = self._annual(u.var_fast)
            m = u.margin
            if m is None:  # no return yet: the rules on the prior
                m = margin_volatility(None, sigma_fast=sigma_fast, sigma_slow=self._annual(u.var_slow),
                                      sigma_garch=sigma_fast, sigma_implied=u.sigma_implied, sigma_floor=0.0,
                                      config=self.config.apc)
            out.append(UnderlyingEstimate(
                u.name, u.index_price or u.sampler.last_price, sigma_fast, self._annual(u.var_slow),
                self._annual(u.garch_var) if u.garch.ok else sigma_fast, u.sigma_implied, u.sigma_floor,
                m.sigma_margin, m.buffer, m.stress, u.garch.ok, u.garch.reason, u.series.total,
                self.config.interval_ms, u.last_event_ms, m.sigma_base))
        return out

    def historical_set(self, sigma_margin: np.ndarray, correlation: np.ndarray) -> HistoricalSet:
        """FHS over the last ``fhs_count`` intervals every underlying has a return for, or the
        bootstrap set when fewer than ``fhs_min_history`` exist."""
        cfg = self.config
        names = tuple(self.units)
        units = list(self.units.values())
        common = units[0].series.buckets()
        for u in units[1:]:
            common = np.intersect1d(common, u.series.buckets(), assume_unique=True)
        rows, sig = [], []
        if common.size:
            common = common[-cfg.fhs_count:]
            for u in units:
                b = u.series.buckets()
                idx = np.searchsorted(b, common)
                rows.append(u.series.returns()[idx])
                sig.append(u.series.sigma_then()[idx])
        if common.size >= cfg.fhs_min_history:
            r, s = np.column_stack(rows), np.column_stack(sig)
            moves = filtered_historical_scenarios(r, s, sigma_margin, cfg.samples_per_year, cfg.grid.horizon_years)
            return HistoricalSet(names, moves, False, int(common[0] + 1) * cfg.interval_ms,
                                 int(common[-1] + 1) * cfg.interval_ms)
        moves = bootstrap_scenarios(sigma_margin, correlation, cfg.fhs_count, cfg.grid.horizon_years)
        return HistoricalSet(names, moves, True, 0, 0)

    def build_version(self, publish_time_ms: int, force: bool = False) -> RiskParamsVersion | None:
        """The next version when anything changed since the last one (None otherwise)."""
        if not (self._changed or force):
            return None
        estimates = self.estimates()
        corr, repaired = repaired_correlation(self.covariance.cov)
        sigma_m = np.array([e.sigma_margin for e in estimates])
        grids = tuple((e.underlying, scenario_grid(e.sigma_margin, self.config.grid)) for e in estimates)
        historical = self.historical_set(sigma_m, corr)
        # which underlyings have an implied vol: its arrival (options begin to trade, or their marks
        # are read after the ticks at start) or its loss is news to every reader even when σ_m stands
        implied = np.array([e.sigma_implied > 0 for e in estimates], dtype=bool)
        if not force and not self._material(sigma_m, corr, historical, publish_time_ms, implied):
            return None   # immaterial: the version in force stands; _changed stays set for the next look
        self._last_published = (sigma_m.copy(), corr.copy(), historical.last_event_time_ms, historical.bootstrap,
                                publish_time_ms, implied)
        self.version += 1
        self._changed = False
        self._dirty.add("meta")
        return RiskParamsVersion(self.version, self.last_event_ms, publish_time_ms, tuple(estimates),
                                 tuple(self.units), corr, repaired, grids, historical, self.config.es_confidence)

    def _material(self, sigma_m: np.ndarray, corr: np.ndarray, historical: "HistoricalSet", now_ms: int,
                  implied: np.ndarray) -> bool:
        """Whether a version built now differs materially from the last one published (see EngineConfig)."""
        last = self._last_published
        if last is None:
            return True
        cfg = self.config
        sigma0, corr0, hist_end0, bootstrap0, published_ms, implied0 = last
        if now_ms - published_ms >= cfg.publish_max_interval_ms:
            return True
        if implied0.shape != implied.shape or bool(np.any(implied0 != implied)):
            return True
        if historical.last_event_time_ms != hist_end0 or historical.bootstrap != bootstrap0:
            return True
        if sigma0.shape != sigma_m.shape or corr0.shape != corr.shape:
            return True
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(sigma0 > 0, np.abs(sigma_m / sigma0 - 1.0), np.where(sigma_m > 0, np.inf, 0.0))
        if rel.size and float(rel.max()) > cfg.publish_min_sigma_change:
            return True
        return bool(corr.size) and float(np.abs(corr - corr0).max()) > cfg.publish_min_correlation_change

    def sigma_history(self, underlying: str = "", limit: int = 100) -> list[SigmaChange]:
        """Most recent first; all underlyings when ``underlying`` is empty."""
        with self._history_lock:
            if underlying:
                items = list(self.units[underlying].history)
            else:
                items = [c for u in self.units.values() for c in u.history]
        items.sort(key=lambda c: (c.event_time_ms, c.underlying), reverse=True)
        return items[:limit]

    # ---- state -----------------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        """Key/value changes since the last call (``None`` = delete the key)."""
        out: dict[str, Any] = {k: None for k in self._deleted}
        self._deleted.clear()
        for key in self._dirty:
            kind, _, rest = key.partition(":")
            if kind == "meta":
                out[key] = {"version": self.version, "last_event_ms": self.last_event_ms,
                            "fingerprint": self.config.fingerprint()}
            elif kind == "cov":
                out[key] = {**self.covariance.to_state(), "emitted": self._emitted,
                            "pending": {str(b): [r.tolist(), p.tolist()] for b, (r, p) in self._pending.items()}}
            elif kind == "u":
                out[key] = self.units[rest].hot_state()
            elif kind == "h":
                name, _, cid = rest.rpartition(":")
                out[key] = self.units[name].series.chunk(int(cid))
            elif kind == "iv":
                out[key] = {sym: [q.implied_vol, q.event_time_ms] for sym, q in self.units[rest].quotes.items()}
            elif kind == "sig":
                name, _, slot = rest.rpartition(":")
                u = self.units[name]
                with self._history_lock:
                    found = [c for c in u.history if c.seq % self.config.sigma_history_len == int(slot)]
                if found:
                    out[key] = dataclasses.asdict(found[-1])
        self._dirty.clear()
        return out

    def restore(self, items: Mapping[str, Any]) -> bool:
        """Rebuild from stored key/values; False (state left fresh) when there is none or it was
        written under a different underlying set or sampling interval."""
        meta = items.get("meta")
        if not meta or meta.get("fingerprint") != self.config.fingerprint():
            return False
        self.version = int(meta["version"])
        self.last_event_ms = int(meta["last_event_ms"])
        chunks: dict[str, list[dict]] = collections.defaultdict(list)
        changes: dict[str, list[SigmaChange]] = collections.defaultdict(list)
        for key, value in items.items():
            if value is None:
                continue
            kind, _, rest = key.partition(":")
            if kind == "h":
                chunks[rest.rpartition(":")[0]].append(value)
            elif kind == "sig":
                changes[rest.rpartition(":")[0]].append(SigmaChange(**value))
        for name, u in self.units.items():
            hot = items.get(f"u:{name}")
            if hot:
                u.load_hot_state(hot)
                u.series.load_chunks(chunks.get(name, []), int(hot["total"]))
            for sym, (iv, t) in (items.get(f"iv:{name}") or {}).items():
                spec = self.market.options.get(sym)
                if spec is not None:
                    u.quotes[sym] = OptionQuote(spec.strike_usd, spec.expiry_ms, float(iv), int(t), spec.is_call)
            keep = sorted((c for c in changes.get(name, []) if c.seq >= u.history_seq - self.config.sigma_history_len),
                          key=lambda c: c.seq)
            with self._history_lock:
                u.history.clear()
                u.history.extend(keep)
        cov = items.get("cov")
        if cov:
            self.covariance.load_state(cov)
            self._emitted = {u: int(cov["emitted"].get(u, -1)) for u in self.units}
            self._pending = {int(b): [np.asarray(r, float), np.asarray(p, bool)] for b, (r, p) in cov["pending"].items()}
        self._dirty.clear()
        self._deleted.clear()
        self._changed = False
        return True


# ---- the service around the engine ---------------------------------------------------------

class StateStore(Protocol):
    def write(self, changes: Mapping[str, Any]) -> None: ...
    def items(self) -> Mapping[str, Any]: ...


class Publisher(Protocol):
    def publish(self, version: RiskParamsVersion) -> None: ...


class DeadLetters(Protocol):
    def reject(self, source_topic: str, key: bytes | None, payload: bytes, error: Rejected) -> None: ...


class Metrics(Protocol):
    def ticks(self, report: IngestReport, source: str) -> None: ...
    def garch_failure(self, underlying: str, reason: str) -> None: ...
    def lag(self, lag_seconds: float) -> None: ...
    def version(self, version: RiskParamsVersion, now_ms: int) -> None: ...
    def signals(self, signals: Sequence[UnderlyingSignals]) -> None: ...


# (values, keys) -> (decoded tuples, [(position, Rejected)]); keys may be None (no key check).
Decoder = Callable[[Sequence[bytes], Sequence[bytes | None] | None], tuple[list, list[tuple[int, Rejected]]]]


class RiskParamsService:
    """The use cases: ingest a batch of raw ticks or marks, publish a version, checkpoint, restore.

    Ports (all passed in): ``decode_ticks``/``decode_marks`` (raw Kafka values → tuples + decode
    errors), ``store``, ``publisher``, ``dead_letters``, ``metrics``, ``clock_ms``.
    """

    def __init__(self, engine: RiskEngine, *, decode_ticks: Decoder, decode_marks: Decoder, store: StateStore,
                 publisher: Publisher, dead_letters: DeadLetters, metrics: Metrics, clock_ms: Callable[[], int],
                 ticks_topic: str = "md.ticks", marks_topic: str = "md.marks") -> None:
        self.engine = engine
        self._decode_ticks = decode_ticks
        self._decode_marks = decode_marks
        self._store = store
        self._publisher = publisher
        self._dlq = dead_letters
        self._metrics = metrics
        self._clock_ms = clock_ms
        self._ticks_topic = ticks_topic
        self._marks_topic = marks_topic
        self.latest: RiskParamsVersion | None = None
        self.signals: tuple[UnderlyingSignals, ...] = ()   # replaced as a whole: gRPC threads read it
        self.restored = False

    def _ingest(self, values: Sequence[bytes], keys: Sequence[bytes | None] | None, decode: Decoder,
                ingest: Callable, topic: str, source: str, record_time_ms: int | None) -> IngestReport:
        decoded, errors = decode(values, keys)
        rep: IngestReport = ingest(decoded)
        # positions in `decoded` -> positions in `values`
        if rep.rejected and errors:
            bad = {e[0] for e in errors}
            kept = [i for i in range(len(values)) if i not in bad]
            rep.rejected = [(kept[k], exc) for k, exc in rep.rejected]
        rep.rejected = sorted(errors + rep.rejected, key=lambda e: e[0])
        for pos, exc in rep.rejected:
            self._dlq.reject(topic, keys[pos] if keys else None, values[pos], exc)
        for name, reason in rep.garch_failures:
            self._metrics.garch_failure(name, reason)
        self._metrics.ticks(rep, source)
        if record_time_ms:
            self._metrics.lag(max(0.0, (self._clock_ms() - record_time_ms) / 1000.0))
        return rep

    def on_ticks(self, values: Sequence[bytes], keys: Sequence[bytes | None] | None = None,
                 record_time_ms: int | None = None) -> IngestReport:
        """A batch of raw md.ticks values (and keys, for dead letters)."""
        return self._ingest(values, keys, self._decode_ticks, self.engine.ingest_ticks, self._ticks_topic,
                            "ticks", record_time_ms)

    def on_marks(self, values: Sequence[bytes], keys: Sequence[bytes | None] | None = None,
                 record_time_ms: int | None = None) -> IngestReport:
        return self._ingest(values, keys, self._decode_marks, self.engine.ingest_marks, self._marks_topic,
                            "marks", record_time_ms)

    def checkpoint(self) -> int:
        """Write the state changes to the store; returns how many keys were written."""
        changes = self.engine.checkpoint()
        if changes:
            self._store.write(changes)
        return len(changes)

    def restore(self) -> bool:
        self.restored = self.engine.restore(self._store.items())
        return self.restored

    def refresh_signals(self) -> tuple[UnderlyingSignals, ...]:
        """Compute the signals now (on the ingesting thread), keep them for readers, export them."""
        self.signals = tuple(self.engine.signals())
        self._metrics.signals(self.signals)
        return self.signals

    def publish_if_changed(self, force: bool = False) -> RiskParamsVersion | None:
        """Build, publish and checkpoint the next version when anything changed."""
        version = self.engine.build_version(self._clock_ms(), force=force)
        if version is None:
            return None
        self._publisher.publish(version)
        self.latest = version
        self._metrics.version(version, self._clock_ms())
        self.checkpoint()
        return version
