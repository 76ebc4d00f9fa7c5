"""The backtest use cases: replay a history through the estimators and the margin core, score it,
sweep the settings that matter.

Ports (passed in): ``core`` (``marginflow.core`` — the C core or its numpy twin), ``garch_fitter``
(riskparams' ``fit_garch11`` by default; a sweep reuses the fitted GARCH path, which depends on the
returns only), ``progress`` (a callable ``progress(label, total) -> advance(n)``). Nothing here reads
files, the clock or the environment.

Rules scored on the same data:

* ``platform``: σ_m with anti-procyclicality (buffer, floor, step bound) → scenario sets → the core;
* ``apc_off``: the same with σ_m = σ_base (no buffer, no floor, no step bound);
* ``fixed_10``: IM = 10 % of gross notional, MM = mm_factor × IM;
* ``fixed_calibrated``: a fixed % per portfolio chosen *with hindsight* so that its MM is exceeded
  at exactly the first coverage level over the scored history (the best a fixed rule can do).

Losses are over the margin horizon (``h`` observations); overlapping ``h``-observation windows are
not independent, so Kupiec, Christoffersen and the traffic light use every ``h``-th window (the
counts per day are reported too).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import numpy as np

from marginflow.backtest.domain.book import Book, build_book
from marginflow.backtest.domain.estimates import (EstimatorPath, EstimatorSettings, GarchFitter, GarchPath,
                                                  estimator_path, floor_path, garch_path, historical_moves,
                                                  plain_fitter, risk_version)
from marginflow.backtest.domain.history import History
from marginflow.backtest.domain.liquidations import LiquidationCount, count_liquidations
from marginflow.backtest.domain.portfolios import PortfolioSpec, SmileProxy
from marginflow.backtest.domain.procyclicality import Procyclicality, procyclicality
from marginflow.backtest.domain.statistics import (Christoffersen, Kupiec, christoffersen, kupiec_pof,
                                                   traffic_light_blocks)
from marginflow.margin.application.models import ChargedModel, instrument_risk_arrays
from marginflow.margin.domain.contingency import ContingencyRates, ContingencyTable
from marginflow.margin.domain.scenarios import build_scenarios
from marginflow.shared.units import MS_PER_YEAR

RULES = ("platform", "apc_off", "fixed_10", "fixed_calibrated")
Progress = Callable[[str, int], Callable[[int], None]]


def no_progress(_label: str, _total: int) -> Callable[[int], None]:
    return lambda _n: None


@dataclasses.dataclass(frozen=True)
class BacktestConfig:
    """What the replay runs: the services' own settings (riskparams' estimators and scenario sets, and
    margin's MM factor, tiered minimum and contingency rates, taken from the services' configuration by the
    wiring) and the backtest's own choices."""

    estimator: EstimatorSettings
    mm_factor: float
    bracket_floors_usd: tuple[float, ...]
    bracket_rates: tuple[float, ...]
    contingency: ContingencyRates
    coverage_levels: tuple[float, ...] = (0.99, 0.995)
    significance: float = 0.05
    warmup_returns: int = 250                 # returns before scoring starts (FHS and GARCH need 250)
    fixed_rate: float = 0.10
    future_carry_per_year: float = 0.05       # the simulator's carry
    smile: SmileProxy = SmileProxy()
    option_half_spread_frac: float = 0.01     # the simulator quotes options at least 1 % wide
    procyclicality_steps: int = 5
    worst_days: int = 10
    n_threads: int = 1

    def horizon_steps(self, interval_ms: int) -> int:
        return max(1, int(round(self.estimator.grid.horizon_seconds * 1000.0 / interval_ms)))


@dataclasses.dataclass(frozen=True)
class CoverageTest:
    measure: str                  # "MM" or "IM"
    coverage: float
    exceptions_daily: int         # over every scored day (overlapping windows)
    observations_daily: int
    kupiec: Kupiec                # on non-overlapping windows
    christoffersen: Christoffersen
    zones: list[tuple[int, int, str]]

    def passes(self, significance: float) -> bool:
        return self.kupiec.passes(significance) and self.christoffersen.passes(significance)


@dataclasses.dataclass(frozen=True)
class PortfolioResult:
    portfolio: str
    rule: str
    tests: tuple[CoverageTest, ...]
    im_per_notional_mean: float
    im_per_notional_median: float
    procyclicality: Procyclicality
    liquidations: LiquidationCount
    im_usd_mean: float

    def test(self, measure: str, coverage: float) -> CoverageTest:
        for t in self.tests:
            if t.measure == measure and abs(t.coverage - coverage) < 1e-12:
                return t
        raise KeyError((measure, coverage))


@dataclasses.dataclass(frozen=True)
class Margins:
    """IM and MM (USD) of every account (lag, portfolio) at every observation; NaN where not computed."""

    im: np.ndarray        # [T, A]
    mm: np.ndarray


@dataclasses.dataclass(frozen=True)
class BacktestResult:
    config: BacktestConfig
    history: History
    portfolios: tuple[PortfolioSpec, ...]
    horizon_steps: int
    scored: np.ndarray                    # observation indices of the scored vintages
    path: EstimatorPath
    garch: GarchPath
    loss: np.ndarray                      # [V, P] USD loss over the horizon of each scored vintage
    gross: np.ndarray                     # [T, A] gross notional USD
    margins: dict[str, Margins]           # per rule
    results: dict[str, list[PortfolioResult]]   # per rule, per portfolio
    seconds: dict[str, float]

    def book_capital(self, rule: str) -> float:
        """Σ IM / Σ gross notional over every portfolio and scored day (the book's margin per USD)."""
        P = len(self.portfolios)
        im = self.margins[rule].im[self.scored, :P]
        return float(np.sum(im) / np.sum(self.gross[self.scored, :P]))

    def noise_liquidations(self, rule: str) -> int:
        return sum(r.liquidations.on_noise for r in self.results[rule])


# ---- the model pass ---------------------------------------------------------------------------------

def margin_pass(book: Book, path: EstimatorPath, sigma: np.ndarray, settings: EstimatorSettings, config: BacktestConfig,
                core, start: int, advance: Callable[[int], None]) -> Margins:
    """IM and MM of every account from observation ``start`` on, with margin volatility ``sigma`` [T, U]."""
    h = book.history
    T = h.n
    A = book.indptr.size - 1
    im = np.full((T, A), np.nan)
    mm = np.full((T, A), np.nan)
    unds = h.underlyings
    U = len(unds)
    floors = np.tile(np.asarray(config.bracket_floors_usd, dtype=np.float64), (U, 1))
    rates = np.tile(np.asarray(config.bracket_rates, dtype=np.float64), (U, 1))
    isolated = np.zeros(book.flat_instrument.size, dtype=np.uint8)
    ones = None
    for t in range(start, T):
        st = book.steps[t]
        if ones is None:
            ones = np.ones(st.kind.size)
        hist, _bootstrap = historical_moves(h.returns, path, t, sigma[t], settings)
        version = risk_version(unds, t, int(h.time_ms[t]), h.close[t], sigma[t], hist, settings)
        scen = build_scenarios(version, list(unds))
        risk, _shocks = instrument_risk_arrays(core, st.kind, st.underlying, st.forward, st.strike, st.years, st.iv,
                                               ones, scen, config.n_threads)
        core_model = core.MarginModel(risk, st.underlying, scen.n_grid, scen.tail_weights, scen.es_level, st.forward,
                                      np.maximum(st.value, 0.0), st.half_spread, st.depth, floors, rates,
                                      config.mm_factor)
        # expiry of each dated instrument at this observation (ms): its strike group for the contingency
        expiry_ms = np.rint(h.time_ms[t] + st.years * MS_PER_YEAR).astype(np.int64)
        table = ContingencyTable(st.kind, st.underlying, st.strike, expiry_ms, ones, h.close[t], config.contingency)
        model = ChargedModel(core_model, table, config.mm_factor)
        res = model.compute(book.indptr, book.flat_instrument, book.sizes_at(t), isolated, n_threads=config.n_threads)
        im[t] = res["im"]
        mm[t] = res["mm"]
        advance(1)
    return Margins(im, mm)


def fixed_margins(gross: np.ndarray, rate: np.ndarray, mm_factor: float) -> Margins:
    """IM = rate × gross notional (rate per account, [A]), MM = mm_factor × IM."""
    im = gross * rate[None, :]
    return Margins(im, mm_factor * im)


# ---- scoring -----------------------------------------------------------------------------------------

def _coverage_tests(loss: np.ndarray, margin: np.ndarray, measure: str, levels: Sequence[float],
                    h: int) -> tuple[CoverageTest, ...]:
    hits = loss > margin
    sub = hits[::h]
    out = []
    for c in levels:
        p = 1.0 - c
        out.append(CoverageTest(measure, c, int(hits.sum()), int(hits.size), kupiec_pof(sub, p), christoffersen(sub, p),
                                traffic_light_blocks(sub, p)))
    return tuple(out)


def score_rule(book: Book, rule: str, margins: Margins, pnl: np.ndarray, gross: np.ndarray, scored: np.ndarray,
               config: BacktestConfig) -> list[PortfolioResult]:
    """Coverage, capital, procyclicality and liquidations of every portfolio under one rule."""
    h = book.horizon_steps
    P = book.n_portfolios
    hist = book.history
    out = []
    for p, spec in enumerate(book.portfolios):
        acc0 = p                                         # lag 0
        im0 = margins.im[scored, acc0]
        mm0 = margins.mm[scored, acc0]
        loss = -pnl[scored + h, h * P + p]
        tests = (_coverage_tests(loss, mm0, "MM", config.coverage_levels, h)
                 + _coverage_tests(loss, im0, "IM", config.coverage_levels, h))
        notional0 = gross[scored, acc0]
        per_notional = im0 / notional0
        first_und = hist.underlyings.index(spec.legs[0].underlying)
        # margin in force every day from the first scored one (not only those with a full horizon after)
        series = margins.im[scored[0]:, acc0]
        moves = hist.returns[scored[0]:, first_und]
        pro = procyclicality(series, moves, config.procyclicality_steps, config.worst_days)
        collateral = im0.copy()
        if spec.leverage is not None:
            collateral = np.maximum(notional0 / spec.leverage, im0)
        equity = np.column_stack([collateral + pnl[scored + k, k * P + p] for k in range(1, h + 1)])
        maint = np.column_stack([margins.mm[scored + k, k * P + p] for k in range(1, h + 1)])
        liq = count_liquidations(equity, maint)
        out.append(PortfolioResult(spec.name, rule, tests, float(per_notional.mean()), float(np.median(per_notional)),
                                   pro, liq, float(im0.mean())))
    return out


def calibrated_rates(loss: np.ndarray, notional: np.ndarray, coverage: float, mm_factor: float) -> np.ndarray:
    """Per portfolio the IM rate whose MM (mm_factor × rate × notional) is exceeded at ``1 − coverage``."""
    q = np.quantile(loss / notional, coverage, axis=0, method="higher")
    return np.maximum(q, 1e-6) / mm_factor


# ---- the replay --------------------------------------------------------------------------------------

def prepare(history: History, portfolios: Sequence[PortfolioSpec], config: BacktestConfig, *,
            horizon_steps: int | None = None) -> Book:
    h = horizon_steps or config.horizon_steps(history.interval_ms)
    return build_book(history, list(portfolios), h, config.smile, config.future_carry_per_year,
                      config.option_half_spread_frac)


def scored_vintages(history: History, config: BacktestConfig, h: int) -> np.ndarray:
    start = max(config.warmup_returns - 1, h)
    stop = history.n - h
    if stop - start < 2 * h + 2:
        raise ValueError(f"history too short: {history.n} observations, need more than warm-up "
                         f"{config.warmup_returns} + 2 × horizon {h}")
    return np.arange(start, stop)


def run_backtest(history: History, portfolios: Sequence[PortfolioSpec], config: BacktestConfig, core, *,
                 garch_fitter: GarchFitter = plain_fitter, progress: Progress = no_progress,
                 garch: GarchPath | None = None) -> BacktestResult:
    """The whole backtest: estimators, margins of every rule, scores."""
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    s = config.estimator
    book = prepare(history, portfolios, config)
    h = book.horizon_steps
    scored = scored_vintages(history, config, h)
    seconds["book"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    if garch is None:
        advance = progress("GARCH fits", expected_fits(history.n, s) * len(history.underlyings))
        garch = garch_path(history.returns, history.underlyings, s, _counting(garch_fitter, advance))
    seconds["garch"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    path = estimator_path(history.returns, history.prior_annual_vol, s, history.samples_per_year, garch,
                          floor_path(history.returns, s, history.samples_per_year))
    seconds["estimators"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    start = int(scored[0])
    steps = history.n - start
    margins: dict[str, Margins] = {}
    margins["platform"] = margin_pass(book, path, path.sigma_margin, s, config, core, start,
                                      progress("margin: platform", steps))
    margins["apc_off"] = margin_pass(book, path, path.sigma_base, s, config, core, start,
                                     progress("margin: APC off", steps))
    seconds["margin"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    pnl, gross = _pnl_gross(book)
    P = book.n_portfolios
    loss = -pnl[scored + h][:, h * P:(h + 1) * P]
    margins["fixed_10"] = fixed_margins(gross, np.full(gross.shape[1], config.fixed_rate), config.mm_factor)
    rate = calibrated_rates(loss, gross[scored, :P], config.coverage_levels[0], config.mm_factor)
    margins["fixed_calibrated"] = fixed_margins(gross, np.tile(rate, h + 1), config.mm_factor)
    results = {rule: score_rule(book, rule, margins[rule], pnl, gross, scored, config) for rule in RULES}
    seconds["scores"] = time.perf_counter() - t1
    seconds["total"] = time.perf_counter() - t0
    return BacktestResult(config, history, book.portfolios, h, scored, path, garch, loss, gross, margins, results,
                          seconds)


def _pnl_gross(book: Book) -> tuple[np.ndarray, np.ndarray]:
    """P&L since opening and gross notional of every account ``[T, A]`` (market only: shared by every rule)."""
    T, A = book.history.n, book.indptr.size - 1
    pnl = np.zeros((T, A))
    gross = np.zeros((T, A))
    for t in range(T):
        pnl[t], gross[t] = book.pnl_gross_at(t)
    return pnl, gross


def expected_fits(n: int, s: EstimatorSettings) -> int:
    """GARCH fits per underlying over ``n`` returns: at ``garch_min_returns``, then every ``garch_refit_every``."""
    return 0 if n < s.garch_min_returns else 1 + (n - s.garch_min_returns) // s.garch_refit_every


def _counting(fitter: GarchFitter, advance: Callable[[int], None]) -> GarchFitter:
    def fit(und: str, t: int, returns: np.ndarray, min_returns: int):
        out = fitter(und, t, returns, min_returns)
        advance(1)
        return out
    return fit


# ---- the sweep ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SweepPoint:
    label: str
    setting: str                  # which setting differs from the configured point ("" = the configured point)
    value: str
    mm_exception_rate: float      # pooled over portfolios, every scored day, MM at the first coverage level
    kupiec_failures: int          # portfolios whose MM fails Kupiec or Christoffersen at the significance
    capital: float                # Σ IM / Σ gross notional
    peak_to_trough: float         # median over portfolios
    max_increase_n: float         # median over portfolios, n-observation increase
    noise_liquidations: int
    configured: bool
    efficient: bool = False       # on the trade-off front (no other point at least as good in all four)


def sweep_variants(config: BacktestConfig) -> list[tuple[str, str, BacktestConfig]]:
    """One setting at a time around the configured point: EWMA decay, APC buffer, floor weight, z,
    horizon, and the grid range beyond the price grid (extended-move multiples)."""
    s = config.estimator
    out: list[tuple[str, str, BacktestConfig]] = [("", "configured", config)]

    def est(**kw) -> BacktestConfig:
        return dataclasses.replace(config, estimator=dataclasses.replace(s, **kw))

    for lam in (0.90, 0.97):
        out.append(("lambda_fast", f"{lam:g}", est(lambda_fast=lam)))
    for b in (0.40, 0.60):
        out.append(("apc_buffer", f"{b:g}", est(apc=dataclasses.replace(s.apc, buffer=b))))
    for w in (0.0, 0.50):
        out.append(("floor_weight", f"{w:g}", est(floor_stress_weight=w)))
    for z in (2.5, 3.5):
        out.append(("z", f"{z:g}", est(grid=dataclasses.replace(s.grid, z=z))))
    for days in (1, 5):
        out.append(("horizon", f"{days}d", est(grid=dataclasses.replace(s.grid, horizon_seconds=days * 86400.0))))
    for mult in ((1.5, 2.0), (3.0, 4.0)):
        out.append(("grid_range", "×".join(f"{m:g}" for m in mult),
                    est(grid=dataclasses.replace(s.grid, tail_multiples=mult))))
    return out


def run_sweep(history: History, portfolios: Sequence[PortfolioSpec], config: BacktestConfig, core, garch: GarchPath,
              progress: Progress = no_progress,
              variants: list[tuple[str, str, BacktestConfig]] | None = None) -> list[SweepPoint]:
    """The platform rule at each variant (the GARCH path is the same for all: it depends on returns only)."""
    variants = variants if variants is not None else sweep_variants(config)
    books: dict[int, tuple[Book, np.ndarray, np.ndarray]] = {}   # horizon -> book, P&L, gross notional
    floors: dict[tuple, np.ndarray] = {}
    advance = progress("sweep", len(variants))
    points = []
    for setting, value, cfg in variants:
        s = cfg.estimator
        h = cfg.horizon_steps(history.interval_ms)
        if h not in books:
            book = prepare(history, portfolios, cfg, horizon_steps=h)
            pnl, gross = _pnl_gross(book)
            books[h] = (book, pnl, gross)
        book, pnl, gross = books[h]
        key = (s.floor_lookback, s.floor_stress_window, s.floor_stress_weight, s.floor_min_returns)
        if key not in floors:
            floors[key] = floor_path(history.returns, s, history.samples_per_year)
        path = estimator_path(history.returns, history.prior_annual_vol, s, history.samples_per_year, garch, floors[key])
        scored = scored_vintages(history, cfg, h)
        margins = margin_pass(book, path, path.sigma_margin, s, cfg, core, int(scored[0]), lambda _n: None)
        res = score_rule(book, "platform", margins, pnl, gross, scored, cfg)
        P = book.n_portfolios
        loss = -pnl[scored + h][:, h * P:(h + 1) * P]
        mm0 = margins.mm[scored, :P]
        c0 = cfg.coverage_levels[0]
        points.append(SweepPoint(
            f"{setting}={value}" if setting else "configured", setting, value, float(np.mean(loss > mm0)),
            sum(not r.test("MM", c0).passes(cfg.significance) for r in res),
            float(np.sum(margins.im[scored, :P]) / np.sum(gross[scored, :P])),
            float(np.median([r.procyclicality.peak_to_trough for r in res])),
            float(np.median([r.procyclicality.max_increase_n for r in res])),
            sum(r.liquidations.on_noise for r in res), not setting))
        advance(1)
    return mark_front(points, 1.0 - config.coverage_levels[0])


def mark_front(points: list[SweepPoint], target_rate: float) -> list[SweepPoint]:
    """Mark the points no other point dominates on (coverage error, capital, procyclicality, noise)."""
    def costs(p: SweepPoint) -> tuple[float, ...]:
        # coverage: only exceptions beyond the target count against a point (over-coverage costs capital,
        # which the capital axis already charges)
        return (max(0.0, p.mm_exception_rate - target_rate), p.capital, p.peak_to_trough, float(p.noise_liquidations))

    out = []
    for p in points:
        cp = costs(p)
        dominated = any(all(a <= b for a, b in zip(costs(q), cp)) and any(a < b for a, b in zip(costs(q), cp))
                        for q in points if q is not p)
        out.append(dataclasses.replace(p, efficient=not dominated))
    return out
