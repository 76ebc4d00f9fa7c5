"""The margin engine: risk arrays and a margin model per risk-parameter version, every owned account
margined in CSR form, equity moved by marks, state and calls published through ports.

Ports (passed in): ``publisher`` (:class:`Publisher`: margin states and calls), ``metrics``
(:class:`EngineMetrics`), ``clock`` (wall clock, for publication intervals and ages). The margin
core (``marginflow.core`` or its numpy twin) is passed in too.

Threading: one thread (the service loop) mutates; gRPC threads only read. Readers take immutable
references (the model, an account's :class:`AccountBook`) and the mark arrays (floats updated in
place: a reader may see a batch half applied, never a torn number).
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np

from marginflow.margin.domain.book import (
    CORE_CALL, CORE_PERP, CORE_PUT, AccountBook, FlatBook, InstrumentTable)
from marginflow.margin.domain.equity import HaircutPolicy, asset_values
from marginflow.margin.domain.health import Health, cents_down, cents_up
from marginflow.pricing import black76
from marginflow.margin.domain.liquidation import linear_liquidation_price, option_liquidation_forward
from marginflow.margin.domain.results import (
    AccountMargin, Explanation, IsolatedResult, MarginCallEvent, PositionExplain, UnderlyingExplain)
from marginflow.margin.domain.scenarios import RiskVersion, ScenarioSet, build_scenarios
from marginflow.margin.domain.valuation import NEVER_MS, MarketView, Valuation, valuate, valuate_chunked
from marginflow.shared.clock import Clock
from marginflow.shared.errors import Rejected


# Positions per slice of the vectorised evaluation (~0.5 ms of numpy each on the dev VM, ~10 % overhead).
EVALUATE_CHUNK_POSITIONS = 8_192


# Between slices the evaluation steps aside while queries are running, at most this long per slice.
EVALUATE_YIELD_MAX_S = 0.005


class _Readers:
    """Queries in flight (any thread): the vectorised evaluation yields to them between its slices."""

    __slots__ = ("count", "_lock")

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        with self._lock:
            self.count += 1

    def __exit__(self, *exc) -> None:
        with self._lock:
            self.count -= 1

    def yield_to_queries(self) -> None:
        """Release the GIL (and the core): a query waiting for either runs now, not after the whole pass."""
        time.sleep(0)
        if self.count:
            deadline = time.perf_counter() + EVALUATE_YIELD_MAX_S
            while self.count and time.perf_counter() < deadline:
                time.sleep(0.0002)


# ------------------------------------------------------------------------------------------ ports

class Publisher(Protocol):
    def publish(self, states: Sequence[AccountMargin], calls: Sequence[MarginCallEvent]) -> None: ...


class EngineMetrics(Protocol):
    def full_recalc(self, seconds: float, accounts: int) -> None: ...
    def incremental(self, seconds: float) -> None: ...
    def accounts_by_state(self, counts: dict[int, int]) -> None: ...
    def marks(self, oldest_age_seconds: float, newest_event_ms: int) -> None: ...
    def risk_params(self, version: int, age_seconds: float) -> None: ...
    def published(self, states: int, calls: int) -> None: ...


class NullMetrics:
    def __getattr__(self, _name: str):
        return lambda *a, **k: None


class UnknownAccount(KeyError):
    pass


class NotReady(RuntimeError):
    """No risk-parameter version yet: no margin can be computed."""


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    assets: tuple[str, ...]                       # collateral assets, order = balance columns
    stablecoins: frozenset[str] = frozenset({"USDC", "USDT"})
    settlement_asset: str = "USDC"
    mm_factor: float = 0.5
    bracket_floors_usd: tuple[float, ...] = (0.0, 1e6, 5e6, 20e6)
    bracket_rates: tuple[float, ...] = (0.01, 0.02, 0.05, 0.10)
    haircut: HaircutPolicy = HaircutPolicy()
    mark_max_age_ms: int = 30_000
    publish_change_fraction: float = 0.01         # material move of equity or IM, relative
    publish_change_min_usd: float = 1.0           # ... and at least this many USD
    publish_max_interval_ms: int = 60_000
    evaluate_interval_ms: int = 200
    model_refresh_ms: int = 60_000                # rebuild risk arrays at current marks (0 = only per version)
    incremental_max_accounts: int = 2_000         # larger snapshot batches: one full recalculation
    n_threads: int = 2
    default_depth_contracts: float = 100.0
    fallback_vol: dict[str, float] = dataclasses.field(default_factory=dict)     # per underlying
    fallback_price: dict[str, float] = dataclasses.field(default_factory=dict)   # per underlying

    def __post_init__(self) -> None:
        if not 0.0 < self.mm_factor <= 1.0:
            raise ValueError("mm_factor must be in (0, 1]")
        if len(self.bracket_floors_usd) != len(self.bracket_rates) or not self.bracket_floors_usd:
            raise ValueError("bracket floors and rates need the same, non-zero length")
        if self.settlement_asset not in self.assets:
            raise ValueError(f"settlement asset {self.settlement_asset} is not a collateral asset")


@dataclasses.dataclass(frozen=True)
class MarkUpdate:
    """A validated mark (``instrument`` is None for an ``index:<underlying>`` record)."""

    instrument: int | None
    underlying: int
    index_price: float
    mark_price: float
    implied_vol: float
    half_spread: float
    depth: float
    event_time_ms: int


@dataclasses.dataclass(frozen=True)
class TradeDelta:
    instrument: int
    size: float
    price: float | None = None


@dataclasses.dataclass(frozen=True)
class _Model:
    """One built model: the core model plus what it was built from."""

    core: object
    version: RiskVersion
    scenarios: ScenarioSet
    forward: np.ndarray
    implied_vol: np.ndarray
    expiry_years: np.ndarray
    built_ms: int


@dataclasses.dataclass
class _Single:
    """One account margined alone (query and incremental path)."""

    book: AccountBook
    flat: FlatBook
    core: dict
    valuation: Valuation


class MarginEngine:
    def __init__(self, instruments: InstrumentTable, config: EngineConfig, publisher: Publisher, clock: Clock,
                 core, metrics: EngineMetrics | None = None) -> None:
        self.instruments = instruments
        self.config = config
        self.publisher = publisher
        self.clock = clock
        self.core = core
        self.metrics = metrics or NullMetrics()
        K, U, A = instruments.n, len(instruments.underlyings), len(config.assets)
        self.asset_index = {a: i for i, a in enumerate(config.assets)}
        und_names = instruments.underlyings
        fb_price = np.array([config.fallback_price.get(u, 1.0) for u in und_names])
        # market state (event time)
        self.index_price = fb_price.copy()
        self.index_time_ms = np.zeros(U, dtype=np.int64)
        self.mark_price = np.zeros(K)
        self.implied_vol = np.array([config.fallback_vol.get(und_names[u], 0.5) for u in instruments.underlying])
        self.half_spread = np.zeros(K)
        self.depth = np.full(K, config.default_depth_contracts)
        self.mark_time_ms = np.zeros(K, dtype=np.int64)
        self.newest_event_ms = 0
        self.first_marks = False
        self._seed_marks()
        # accounts
        self.rows: list[AccountBook | None] = []
        self.row_of: dict[str, int] = {}
        self.balances = np.zeros((0, A))
        self.cross_im = np.zeros(0)
        self.grid = np.zeros(0)
        self.es = np.zeros(0)
        self.minimum = np.zeros(0)
        self.liquidity = np.zeros(0)
        self.pub_state = np.zeros(0, dtype=np.int8)
        self.pub_equity = np.zeros(0)
        self.pub_im = np.zeros(0)
        self.pub_ms = np.zeros(0, dtype=np.int64)
        self.computed = np.zeros(0, dtype=bool)
        self.iso_im_by_row: dict[int, np.ndarray] = {}
        self.flat = FlatBook.build([])
        self.iso_im_flat = np.zeros(0)
        self.flat_dirty = False
        self.marks_dirty = False
        self.last_eval_ms = 0
        self.model: _Model | None = None
        self.last_counts: dict[int, int] = {}
        self._lock = threading.RLock()   # held by the mutating thread; readers never take it
        self._readers = _Readers()
        self.queries = self._readers   # ``with engine.queries:`` around a whole request (the gRPC handlers)

    # ------------------------------------------------------------------ market
    def _seed_marks(self) -> None:
        """Before any mark: linear instruments at the underlying's reference price, options by Black-76."""
        t = self.instruments
        for k in range(t.n):
            self.mark_price[k] = self._model_mark(k, self.index_price[t.underlying[k]])

    def _model_mark(self, k: int, forward: float) -> float:
        t = self.instruments
        if t.kind[k] in (CORE_CALL, CORE_PUT):
            years = float(t.expiry_years(self.newest_event_ms or self.clock.now_ms())[k])
            return black76(forward, float(t.strike[k]), years, float(self.implied_vol[k]), t.kind[k] == CORE_CALL)
        return forward

    def apply_marks(self, marks: Iterable[MarkUpdate]) -> int:
        n = 0
        with self._lock:
            for m in marks:
                n += 1
                if m.event_time_ms > self.newest_event_ms:
                    self.newest_event_ms = m.event_time_ms
                u = m.underlying
                if m.event_time_ms >= self.index_time_ms[u] and m.index_price > 0:
                    self.index_price[u] = m.index_price
                    self.index_time_ms[u] = m.event_time_ms
                k = m.instrument
                if k is None or m.event_time_ms < self.mark_time_ms[k]:
                    continue   # an older mark than the one held (partitions interleave)
                if self.mark_time_ms[k] == 0:
                    self.first_marks = True   # the model priced k from a fallback: rebuild it
                self.mark_price[k] = m.mark_price
                self.mark_time_ms[k] = m.event_time_ms
                if m.implied_vol > 0:
                    self.implied_vol[k] = m.implied_vol
                self.half_spread[k] = m.half_spread
                if m.depth > 0:
                    self.depth[k] = m.depth
            if n:
                self.marks_dirty = True
        return n

    def market_view(self) -> MarketView:
        cfg = self.config
        now = self.newest_event_ms
        fresh = (self.mark_time_ms > 0) & (self.mark_time_ms >= now - cfg.mark_max_age_ms)
        und = self.instruments.underlyings
        model = self.model
        sigma = model.version.sigma_margin if model is not None else {}
        index = {u: float(self.index_price[i]) for i, u in enumerate(und) if self.index_time_ms[i] > 0}
        unit_value, _haircut = asset_values(list(cfg.assets), cfg.stablecoins, index, sigma, cfg.haircut)
        asset_fresh = np.ones(len(cfg.assets), dtype=bool)
        asset_time = np.full(len(cfg.assets), NEVER_MS, dtype=np.int64)
        uidx = self.instruments.underlying_index
        for i, a in enumerate(cfg.assets):
            if a in cfg.stablecoins:
                continue
            u = uidx.get(a)
            t = int(self.index_time_ms[u]) if u is not None else 0
            asset_time[i] = t
            asset_fresh[i] = t > 0 and t >= now - cfg.mark_max_age_ms
        return MarketView(self.mark_price, self.instruments.contract_size, self.mark_time_ms, fresh, unit_value,
                          asset_fresh, asset_time)

    def haircuts(self) -> dict[str, float]:
        model = self.model
        sigma = model.version.sigma_margin if model is not None else {}
        index = {u: float(self.index_price[i]) for i, u in enumerate(self.instruments.underlyings)}
        _v, h = asset_values(list(self.config.assets), self.config.stablecoins, index, sigma, self.config.haircut)
        return dict(zip(self.config.assets, h.tolist()))

    # ------------------------------------------------------------------ model
    def _forwards(self) -> np.ndarray:
        """Forward per instrument: its mark for perpetuals/futures, the underlying index for options."""
        t = self.instruments
        idx = self.index_price[t.underlying]
        is_opt = t.kind >= CORE_CALL
        return np.where(is_opt, idx, np.where(self.mark_time_ms > 0, self.mark_price, idx))

    def build_model(self, version: RiskVersion) -> _Model:
        t, cfg = self.instruments, self.config
        scen = build_scenarios(version, list(t.underlyings))
        now = self.newest_event_ms or self.clock.now_ms()
        forward = self._forwards()
        years = t.expiry_years(now)
        iv = self.implied_vol.copy()
        risk = self.core.risk_arrays(t.kind, t.underlying, forward, t.strike, years, iv, t.contract_size,
                                     scen.price_shock, scen.vol_shock, horizon_years=scen.horizon_years,
                                     vol_shock_relative=True, n_threads=cfg.n_threads)
        U = len(t.underlyings)
        floors = np.tile(np.asarray(cfg.bracket_floors_usd, dtype=np.float64), (U, 1))
        rates = np.tile(np.asarray(cfg.bracket_rates, dtype=np.float64), (U, 1))
        mark_value = np.maximum(self.mark_price, 0.0) * t.contract_size
        core_model = self.core.MarginModel(
            risk, t.underlying, scen.n_grid, scen.tail_weights, scen.es_level, forward * t.contract_size,
            mark_value, np.maximum(self.half_spread, 0.0), self.depth.copy(), floors, rates, cfg.mm_factor)
        return _Model(core_model, version, scen, forward, iv, years, self.clock.now_ms())

    def apply_risk_params(self, version: RiskVersion) -> bool:
        """A new version: new risk arrays and model, full recalculation. False if not newer."""
        with self._lock:
            if self.model is not None and version.version <= self.model.version.version:
                return False
            try:
                model = self.build_model(version)
            except ValueError as exc:   # the core refused a value: the version is unusable
                raise Rejected("bad_risk_params", str(exc)) from None
            self.model = model
            self.metrics.risk_params(version.version, max(0.0, (self.clock.now_ms() - version.publish_time_ms) / 1e3))
            self.full_recalculation()
            return True

    def refresh_model(self) -> None:
        """Same version, risk arrays and add-ons at today's marks (forwards drift between versions)."""
        with self._lock:
            if self.model is None:
                return
            self.model = self.build_model(self.model.version)
            self.full_recalculation()

    # ------------------------------------------------------------------ accounts
    def _grow(self, n: int) -> None:
        old = self.cross_im.shape[0]
        if n <= old:
            return
        cap = max(n, 2 * old, 64)

        def grow(a: np.ndarray) -> np.ndarray:
            out = np.zeros((cap,) + a.shape[1:], dtype=a.dtype)
            out[:old] = a[:old]
            return out

        for name in ("balances", "cross_im", "grid", "es", "minimum", "liquidity", "pub_state", "pub_equity",
                     "pub_im", "pub_ms", "computed"):
            setattr(self, name, grow(getattr(self, name)))

    def _row(self, account_id: str) -> int:
        row = self.row_of.get(account_id)
        if row is None:
            row = len(self.rows)
            self.rows.append(None)
            self.row_of[account_id] = row
            self._grow(row + 1)
            self.flat_dirty = True
        return row

    def apply_snapshots(self, books: Sequence[AccountBook]) -> None:
        """Changed accounts: incremental recomputation of those rows (or one full pass for a large batch)."""
        with self._lock:
            latest: dict[str, AccountBook] = {}
            for b in books:
                prev = latest.get(b.account_id)
                if prev is None or b.revision >= prev.revision:
                    latest[b.account_id] = b
            rows = []
            for b in latest.values():
                row = self._row(b.account_id)
                old = self.rows[row]
                if old is not None and b.revision < old.revision:
                    continue   # an older snapshot (redelivery): keep the newer state
                self.rows[row] = b
                self.balances[row] = b.balances
                rows.append(row)
                if not self.flat_dirty and not self.flat.try_update(row, b):
                    self.flat_dirty = True
            if self.model is None or not rows:
                return
            if len(rows) > self.config.incremental_max_accounts:
                self.full_recalculation()
                return
            outputs: list[AccountMargin] = []
            calls: list[MarginCallEvent] = []
            market = self.market_view()
            now = self.clock.now_ms()
            for row in rows:
                started = time.perf_counter()
                single = self._single(self.rows[row], self.model, market)
                self._store_single(row, single)
                self.metrics.incremental(time.perf_counter() - started)
                self._decide(row, single.valuation, 0, single.flat, single.book, outputs, calls, now, force=True)
            self._emit(outputs, calls)

    def remove_accounts(self, account_ids: Iterable[str]) -> int:
        """Accounts no longer owned (partitions revoked): forgotten, nothing published."""
        n = 0
        with self._lock:
            for a in account_ids:
                row = self.row_of.pop(a, None)
                if row is None:
                    continue
                self.rows[row] = None
                self.balances[row] = 0.0
                self.cross_im[row] = 0.0
                self.computed[row] = False
                self.iso_im_by_row.pop(row, None)
                self.flat_dirty = True
                n += 1
        return n

    def _store_single(self, row: int, single: _Single) -> None:
        c = single.core
        self.cross_im[row] = float(c["cross_im"][0])
        self.grid[row] = float(c["grid"][0])
        self.es[row] = float(c["es"][0])
        self.minimum[row] = float(c["minimum"][0])
        self.liquidity[row] = float(c["liquidity"][0])
        self.computed[row] = True
        iso = np.asarray(c["isolated_im"], dtype=np.float64)
        if single.book.isolated.any():
            self.iso_im_by_row[row] = iso.copy()
        else:
            self.iso_im_by_row.pop(row, None)
        if not self.flat_dirty:
            lo = int(self.flat.indptr[row])
            hi = int(self.flat.indptr[row + 1])
            self.iso_im_flat[lo:hi] = 0.0
            self.iso_im_flat[lo:lo + iso.shape[0]] = iso

    # ------------------------------------------------------------------ full recalculation
    def _ensure_flat(self) -> None:
        if not self.flat_dirty and self.flat.n_accounts == len(self.rows):
            return
        self.flat = FlatBook.build(self.rows)
        self.iso_im_flat = np.zeros(self.flat.size.shape[0])
        for row, iso in self.iso_im_by_row.items():
            lo = int(self.flat.indptr[row])
            self.iso_im_flat[lo:lo + iso.shape[0]] = iso
        self.flat_dirty = False

    def full_recalculation(self) -> None:
        with self._lock:
            model = self.model
            if model is None:
                return
            started = time.perf_counter()
            self._ensure_flat()
            f = self.flat
            out = model.core.compute(f.indptr, f.instrument, f.size, f.isolated, n_threads=self.config.n_threads)
            n = f.n_accounts
            self.cross_im[:n] = out["cross_im"]
            self.grid[:n] = out["grid"]
            self.es[:n] = out["es"]
            self.minimum[:n] = out["minimum"]
            self.liquidity[:n] = out["liquidity"]
            self.computed[:n] = np.fromiter((b is not None for b in self.rows), dtype=bool, count=n)
            self.iso_im_flat = np.array(out["isolated_im"], dtype=np.float64)
            iso_rows = np.unique(f.owner[f.isolated.astype(bool)])
            self.iso_im_by_row = {}
            for row in iso_rows.tolist():
                lo, hi = int(f.indptr[row]), int(f.indptr[row + 1])
                b = self.rows[row]
                if b is not None:
                    self.iso_im_by_row[row] = self.iso_im_flat[lo:lo + b.n].copy()
            self.metrics.full_recalc(time.perf_counter() - started, n)
            self.evaluate(force=True)

    # ------------------------------------------------------------------ marks → equity → states
    def tick(self) -> None:
        """Periodic work of the service loop: re-evaluate after marks, refresh the model, heartbeats."""
        now = self.clock.now_ms()
        model = self.model
        if model is None:
            return
        cfg = self.config
        if (cfg.model_refresh_ms and now - model.built_ms >= cfg.model_refresh_ms) or (
                self.first_marks and now - model.built_ms >= cfg.evaluate_interval_ms):
            self.first_marks = False
            self.refresh_model()
            return
        due = now - self.last_eval_ms >= cfg.evaluate_interval_ms
        heartbeat = now - self.last_eval_ms >= 1000
        if due and (self.marks_dirty or self.flat_dirty or heartbeat):
            self.evaluate()

    def evaluate(self, force: bool = False) -> int:
        """Equity of every account at current marks (vectorised), states, publication. Returns states published."""
        with self._lock:
            model = self.model
            self.last_eval_ms = self.clock.now_ms()
            self.marks_dirty = False
            if model is None:
                return 0
            self._ensure_flat()
            f = self.flat
            n = f.n_accounts
            market = self.market_view()
            # In chunks, yielding the GIL between them: gRPC threads wait ~1 chunk, not the whole pass.
            val = valuate_chunked(f.owner, f.instrument, f.size, f.entry, f.isolated, f.isolated_collateral,
                                  self.iso_im_flat, self.balances[:n], self.cross_im[:n], self.config.mm_factor,
                                  market, indptr=f.indptr, chunk_positions=EVALUATE_CHUNK_POSITIONS,
                                  pause=self._readers.yield_to_queries)
            outputs: list[AccountMargin] = []
            calls: list[MarginCallEvent] = []
            now = self.clock.now_ms()
            live = self.computed[:n]   # False for removed rows
            changed = live & self._changed(val, n, now, force)
            for row in np.flatnonzero(changed).tolist():
                self._decide(row, val, row, f, self.rows[row], outputs, calls, now, force=True)
            self._emit(outputs, calls)
            counts = np.bincount(val.state[live], minlength=5)
            self.last_counts = {s: int(counts[s]) for s in range(1, 5)}
            self.metrics.accounts_by_state(self.last_counts)
            held = self.mark_time_ms > 0
            oldest = (self.newest_event_ms - int(self.mark_time_ms[held].min())) / 1e3 if held.any() else 0.0
            self.metrics.marks(oldest, self.newest_event_ms)
            self.metrics.risk_params(model.version.version,
                                     max(0.0, (now - model.version.publish_time_ms) / 1e3))
            return len(outputs)

    def _changed(self, val: Valuation, n: int, now: int, force: bool) -> np.ndarray:
        cfg = self.config
        st, eq, im = self.pub_state[:n], self.pub_equity[:n], self.pub_im[:n]
        thr = np.maximum(cfg.publish_change_min_usd,
                         cfg.publish_change_fraction * np.maximum(np.abs(eq), im))
        changed = (val.state != st) | (np.abs(val.equity - eq) > thr) | (np.abs(val.im - im) > thr)
        changed |= (now - self.pub_ms[:n]) >= cfg.publish_max_interval_ms
        return changed

    def _decide(self, row: int, val: Valuation, i: int, flat: FlatBook, book: AccountBook,
                outputs: list, calls: list, now: int, force: bool) -> None:
        """Record row ``row`` (entry ``i`` of ``val``/``flat``) as published, with a call on entering a bad state."""
        margin = self._account_margin(book, val, i, flat, self.model, row=row)
        prev = int(self.pub_state[row])
        if not force and margin.state == prev:
            return
        outputs.append(margin)
        if margin.state >= Health.MARGIN_CALL and margin.state != prev:
            calls.append(MarginCallEvent(margin, prev))
        self.pub_state[row] = margin.state
        self.pub_equity[row] = margin.equity_usd
        self.pub_im[row] = margin.im_usd
        self.pub_ms[row] = now

    def _emit(self, outputs: list[AccountMargin], calls: list[MarginCallEvent]) -> None:
        if outputs or calls:
            self.publisher.publish(outputs, calls)
            self.metrics.published(len(outputs), len(calls))

    # ------------------------------------------------------------------ results
    def _account_margin(self, book: AccountBook, val: Valuation, i: int, flat: FlatBook, model: _Model,
                        row: int | None = None, core: dict | None = None, liquidation_prices: bool = False
                        ) -> AccountMargin:
        lo, hi = int(flat.indptr[i]), int(flat.indptr[i + 1])
        isolated: list[IsolatedResult] = []
        syms = self.instruments.symbols
        for j in range(lo, hi):
            if flat.isolated[j] and flat.size[j] != 0.0:
                im_j = float(val.iso_mm[j] / self.config.mm_factor) if self.config.mm_factor else 0.0
                liq = None
                if liquidation_prices:
                    liq, _basis = self._liquidation_price(int(flat.instrument[j]), float(flat.size[j]),
                                                          float(val.iso_equity[j]), float(val.iso_mm[j]), model)
                isolated.append(IsolatedResult(syms[flat.instrument[j]], float(flat.size[j]), float(val.iso_equity[j]),
                                               im_j, float(val.iso_mm[j]), int(val.iso_state[j]), liq))
        if core is not None:
            grid, es, minimum, liquidity = (float(core[k][0]) for k in ("grid", "es", "minimum", "liquidity"))
        else:
            grid, es, minimum, liquidity = (float(self.grid[row]), float(self.es[row]), float(self.minimum[row]),
                                            float(self.liquidity[row]))
        cross_im = float(val.cross_mm[i] / self.config.mm_factor)
        return AccountMargin(
            account_id=book.account_id, revision=book.revision, risk_params_version=model.version.version,
            event_time_ms=self.newest_event_ms, equity_usd=float(val.equity[i]), im_usd=float(val.im[i]),
            mm_usd=float(val.mm[i]), cross_equity_usd=float(val.cross_equity[i]), cross_im_usd=cross_im,
            cross_mm_usd=float(val.cross_mm[i]), cross_state=int(val.cross_state[i]), grid_usd=grid, es_usd=es,
            minimum_usd=minimum, liquidity_usd=liquidity, state=int(val.state[i]), marks_fresh=bool(val.fresh[i]),
            marks_time_ms=int(val.marks_time_ms[i]), collateral_usd=float(val.collateral[i]),
            cross_pnl_usd=float(val.cross_pnl[i]), isolated=tuple(isolated))

    def _liquidation_price(self, k: int, size: float, equity: float, mm: float,
                           model: _Model | None) -> tuple[float | None, str]:
        t = self.instruments
        cs = float(t.contract_size[k])
        if t.kind[k] in (CORE_CALL, CORE_PUT):
            forward = float(self.index_price[t.underlying[k]])
            years = float(t.expiry_years(self.newest_event_ms or self.clock.now_ms())[k])
            return option_liquidation_forward(equity, mm, size, cs, t.kind[k] == CORE_CALL, forward,
                                              float(t.strike[k]), years, float(self.implied_vol[k])), "underlying"
        return linear_liquidation_price(equity, mm, size, cs, float(self.mark_price[k])), "mark"

    # ------------------------------------------------------------------ queries (any thread)
    def _require(self, account_id: str) -> tuple[AccountBook, _Model]:
        model = self.model
        if model is None:
            raise NotReady("no risk parameters yet")
        row = self.row_of.get(account_id)
        book = self.rows[row] if row is not None and row < len(self.rows) else None
        if book is None:
            raise UnknownAccount(account_id)
        return book, model

    def _single(self, book: AccountBook, model: _Model, market: MarketView | None = None) -> _Single:
        flat = FlatBook.build([book])
        core = model.core.compute(flat.indptr, flat.instrument, flat.size, flat.isolated, n_threads=1)
        market = market or self.market_view()
        val = valuate(flat.owner, flat.instrument, flat.size, flat.entry, flat.isolated, flat.isolated_collateral,
                      np.asarray(core["isolated_im"], dtype=np.float64), book.balances[None, :],
                      np.asarray(core["cross_im"], dtype=np.float64), self.config.mm_factor, market,
                      indptr=flat.indptr)
        return _Single(book, flat, core, val)

    def get_margin(self, account_id: str) -> AccountMargin:
        with self._readers:
            return self._get_margin(account_id)

    def _get_margin(self, account_id: str) -> AccountMargin:
        book, model = self._require(account_id)
        s = self._single(book, model)
        return self._account_margin(book, s.valuation, 0, s.flat, model, core=s.core, liquidation_prices=True)

    def apply_trades(self, book: AccountBook, trades: Sequence[TradeDelta]) -> AccountBook:
        """The book after hypothetical trades: each adds to the first cross position on its instrument (or
        opens one); the entry is re-averaged so that P&L at any mark is that of the old position plus the
        trade at its price (default: the mark); a position closed to zero leaves its P&L as settlement cash."""
        inst = book.instrument.tolist()
        size = book.size.tolist()
        entry = book.entry.tolist()
        iso = book.isolated.tolist()
        coll = book.isolated_collateral.tolist()
        balances = book.balances.copy()
        settle = self.asset_index[self.config.settlement_asset]
        for t in trades:
            price = float(self.mark_price[t.instrument]) if t.price is None else t.price
            cs = float(self.instruments.contract_size[t.instrument])
            j = next((p for p, k in enumerate(inst) if k == t.instrument and not iso[p]), None)
            if j is None:
                inst.append(t.instrument)
                size.append(t.size)
                entry.append(price)
                iso.append(0)
                coll.append(0.0)
                continue
            cost = size[j] * entry[j] + t.size * price
            new = size[j] + t.size
            if abs(new) <= 1e-12 * max(abs(size[j]), abs(t.size)):
                balances[settle] -= cost * cs    # realised: −(q1·e1 + dq·p)·cs with q1 + dq = 0
                size[j], entry[j] = 0.0, 0.0
            else:
                size[j], entry[j] = new, cost / new
        return AccountBook(book.account_id, book.revision, np.asarray(inst, np.int32), np.asarray(size, np.float64),
                           np.asarray(entry, np.float64), np.asarray(iso, np.uint8), np.asarray(coll, np.float64),
                           balances, book.updated_ms)

    def what_if(self, account_id: str, trades: Sequence[TradeDelta]) -> tuple[AccountMargin, AccountMargin]:
        with self._readers:
            return self._what_if(account_id, trades)

    def _what_if(self, account_id: str, trades: Sequence[TradeDelta]) -> tuple[AccountMargin, AccountMargin]:
        book, model = self._require(account_id)
        for t in trades:
            if not (0 <= t.instrument < self.instruments.n) or not math.isfinite(t.size) or t.size == 0:
                raise ValueError(f"bad trade {t}")
        market = self.market_view()
        before = self._single(book, model, market)
        after_book = self.apply_trades(book, trades)
        after = self._single(after_book, model, market)
        return (self._account_margin(book, before.valuation, 0, before.flat, model, core=before.core),
                self._account_margin(after_book, after.valuation, 0, after.flat, model, core=after.core,
                                     liquidation_prices=True))

    def explain(self, account_id: str) -> Explanation:
        with self._readers:
            return self._explain(account_id)

    def _explain(self, account_id: str) -> Explanation:
        book, model = self._require(account_id)
        s = self._single(book, model)
        margin = self._account_margin(book, s.valuation, 0, s.flat, model, core=s.core, liquidation_prices=True)
        ex = model.core.explain(book.instrument, book.size, book.isolated)
        t = self.instruments
        val = s.valuation
        positions = []
        for j in range(book.n):
            k = int(book.instrument[j])
            if book.isolated[j]:
                eq, mm = float(val.iso_equity[j]), float(val.iso_mm[j])
            else:
                eq, mm = float(val.cross_equity[0]), float(val.cross_mm[0])
            liq, basis = self._liquidation_price(k, float(book.size[j]), eq, mm, model)
            positions.append(PositionExplain(
                t.symbols[k], t.underlyings[t.underlying[k]], float(book.size[j]), bool(book.isolated[j]),
                float(ex["position_grid"][j]), float(ex["position_es"][j]), float(ex["position_minimum"][j]),
                float(ex["position_liquidity"][j]), liq, basis))
        scen = model.scenarios
        underlyings = []
        und_grid = np.asarray(ex["underlying_grid"])
        und_row = np.asarray(ex["underlying_grid_scenario"])
        und_es = np.asarray(ex["underlying_es"])
        for u, name in enumerate(t.underlyings):
            if not np.any(t.underlying[book.instrument] == u):
                continue
            g = int(und_row[u])
            ps = float(scen.price_shock[g, u]) if 0 <= g < scen.n_grid + scen.tail_weights.shape[0] else 0.0
            vs = float(scen.vol_shock[g, u]) if 0 <= g < scen.n_grid + scen.tail_weights.shape[0] else 0.0
            underlyings.append(UnderlyingExplain(name, float(und_grid[u]), float(und_es[u]), ps, vs))
        parts = {"grid": float(ex["grid"]), "es": float(ex["es"]), "min_margin": float(ex["minimum"])}
        has_cross = bool(np.any((book.isolated == 0) & (book.size != 0)))
        binding = max(parts, key=lambda name: parts[name]) if has_cross else "none"
        return Explanation(margin, int(ex["worst"]), tuple(positions), tuple(underlyings), binding)

    # ------------------------------------------------------------------ introspection
    @property
    def version(self) -> int:
        return self.model.version.version if self.model is not None else 0

    def account_ids(self) -> list[str]:
        return list(self.row_of)

    def n_positions(self) -> int:
        return sum(b.n for b in self.rows if b is not None)


def cents(margin: AccountMargin) -> dict[str, float]:
    """The wire amounts of a margin (equity down, requirements up), for logs and tests."""
    return {"equity": cents_down(margin.equity_usd), "im": cents_up(margin.im_usd), "mm": cents_up(margin.mm_usd)}
