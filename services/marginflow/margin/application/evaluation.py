"""Evaluation: the model per risk version, full recalculation, incremental recalculation of changed
accounts, and equity at current marks for every account (vectorised), with the publish decision.

One thread (the service loop) calls these; they hold the engine's lock while they mutate.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from marginflow.core import KIND_CALL
from marginflow.margin.application.models import Model, build_model
from marginflow.margin.application.ports import EngineConfig, EngineMetrics
from marginflow.margin.application.publication import Publication
from marginflow.margin.application.queries import Evaluated, Queries
from marginflow.margin.application.results import account_margins
from marginflow.margin.domain.accounts import AccountTable
from marginflow.margin.domain.book import AccountBook, InstrumentTable
from marginflow.margin.domain.causes import Snapshot
from marginflow.margin.domain.market import MarketState
from marginflow.margin.domain.results import AccountMargin, MarginCallEvent
from marginflow.margin.domain.scenarios import RiskVersion
from marginflow.margin.domain.valuation import MarketView, valuate_chunked
from marginflow.shared.errors import Rejected

# Accounts per slice of a republication without state changes (~15 ms of building, encoding and sending on
# the quiet dev VM): queries (the liquidation's re-check) and the next evaluation wait at most about one slice.
PUBLISH_SLICE_ACCOUNTS = 500
# Accounts per slice of the state changes and their calls (~0.3 ms each with the causes): the first calls of a
# move that puts a thousand accounts in liquidation go out after a slice, not after all of them.
TRANSITION_SLICE_ACCOUNTS = 250
# Most time one turn of the loop spends on a republication's backlog before it reads marks again: a mark
# that arrives meanwhile waits at most about this long (plus a slice) for its evaluation.
PUBLISH_TURN_SECONDS = 0.025
# Earlier risk versions, for MarginAt to recompute an answer of one of them on its own parameters: the models
# of the newest (the one in force among them) kept as built — a model is the core's risk arrays over the
# universe's instruments and scenarios, not the book: ~1.4 MiB for the 105 instruments and 1,000 historical
# scenarios of the demo — and the parameters of many more, whose models are rebuilt at the market now when
# asked (~7 ms there; as a model refresh rebuilds the version in force), the last few rebuilt kept.
RECENT_VERSIONS = 8
KEPT_VERSIONS = 512
REBUILT_MODELS = 4


@dataclasses.dataclass(eq=False)
class _Backlog:
    """Rows of an evaluation whose results are still to be published (``rows``: what is left), with it."""

    rows: np.ndarray
    stamps: np.ndarray
    val: object
    flat: object
    model: Model
    at: object
    parts: tuple


class Evaluation:
    def __init__(self, instruments: InstrumentTable, config: EngineConfig, core, market: MarketState,
                 accounts: AccountTable, publication: Publication, queries: Queries, metrics: EngineMetrics,
                 wall_ms: Callable[[], int], market_view: Callable[[], MarketView], lock: threading.RLock) -> None:
        self.instruments = instruments
        self.config = config
        self.core = core
        self.market = market
        self.accounts = accounts
        self.publication = publication
        self.queries = queries
        self.metrics = metrics
        self._wall_ms = wall_ms
        self._market_view = market_view
        self._netting = None   # (flat book, its generation, contingency table, Netting) of the last full pass
        self._lock = lock
        self.model: Model | None = None
        # replaced whole, never changed in place: readers on other threads never lock
        self._recent: dict[int, Model] = {}          # risk version → its latest build, the RECENT_VERSIONS newest
        self._versions: dict[int, RiskVersion] = {}  # the KEPT_VERSIONS newest versions' parameters
        self._rebuilt: dict[int, Model] = {}         # older versions rebuilt for a query, the newest last
        self._rebuild_lock = threading.Lock()
        self._builds = 0
        self.active = True      # False while the inputs are incomplete: books are stored, nothing is published
        self.marks_dirty = False
        self.last_eval_ms = 0
        self.last_counts: dict[int, int] = {}
        self.backlog: _Backlog | None = None

    # ---- model
    def apply_risk_params(self, version: RiskVersion) -> bool:
        """A new version: new risk arrays and model, full recalculation. False if not newer."""
        with self._lock:
            if self.model is not None and version.version <= self.model.version.version:
                return False
            try:
                model = self._build(version)
            except ValueError as exc:   # the core refused a value: the version is unusable
                raise Rejected("bad_risk_params", str(exc)) from None
            self._install(model)
            self.metrics.model_built("version")
            self.metrics.risk_params(version.version, max(0.0, (self._wall_ms() - version.publish_time_ms) / 1e3))
            self.full_recalculation()
            return True

    def refresh_model(self, publish_all: bool = True, reason: str = "refresh") -> None:
        """Same version, risk arrays and add-ons at today's marks (forwards and implied vols drift between
        versions); ``publish_all`` as in :meth:`full_recalculation`; ``reason`` for the metric."""
        with self._lock:
            if self.model is None:
                return
            self._install(self._build(self.model.version))
            self.metrics.model_built(reason)
            self.full_recalculation(publish_all)

    def rebuild_if_due(self) -> bool:
        """Rebuild the model in force when it is due (:meth:`_rebuild_reason`), with a full recalculation
        whose transitions go out now and the rest over the next turns; True if it was. Called before anything
        is computed on the model: marks read in this turn may have moved the market beyond its bands."""
        model = self.model
        if model is None or not self.active:
            return False
        reason = self._rebuild_reason(model, self._wall_ms())
        if not reason:
            return False
        self.market.first_marks = False
        self.refresh_model(publish_all=False, reason=reason)
        return True

    def _rebuild_reason(self, model: Model, now: int) -> str:
        """Why the model in force is due to be rebuilt now (``""``: it is not): its age, an instrument's first
        mark since (it was priced from a fallback), or a forward or an option's implied vol out of the
        re-centring band since the build (see :class:`RecenterRules`)."""
        cfg = self.config
        age = now - model.built_ms
        if cfg.model_refresh_ms and age >= cfg.model_refresh_ms:
            return "refresh"
        if self.market.first_marks and age >= cfg.evaluate_interval_ms:
            return "first_marks"
        rules = cfg.recenter
        if rules.active and age >= rules.min_interval_ms:
            return rules.moved(model.forward, model.implied_vol, self.market.forwards(), self.market.implied_vol,
                               self.instruments.kind >= KIND_CALL)
        return ""

    def _install(self, model: Model) -> None:
        self.model = model
        v = model.version.version
        self._recent = dict(sorted({**self._recent, v: model}.items())[-RECENT_VERSIONS:])
        self._versions = dict(sorted({**self._versions, v: model.version}.items())[-KEPT_VERSIONS:])
        self._rebuilt = {k: m for k, m in self._rebuilt.items() if k in self._versions}

    def model_of(self, version: int) -> Model | None:
        """A model of ``version``, for a query recomputing an answer of that version (any thread): its latest
        build when it is among the RECENT_VERSIONS newest, else built afresh from its parameters at the market
        now when they are among the KEPT_VERSIONS newest, else None."""
        model = self._recent.get(version) or self._rebuilt.get(version)
        if model is not None:
            return model
        params = self._versions.get(version)
        if params is None:
            return None
        with self._rebuild_lock:
            model = self._rebuilt.get(version)
            if model is None:
                model = build_model(self.instruments, self.market, self.config, self.core, params, self._wall_ms())
                rebuilt = {k: m for k, m in self._rebuilt.items() if k != version}
                self._rebuilt = dict(list(rebuilt.items())[-(REBUILT_MODELS - 1):] + [(version, model)])
            return model

    def model_at(self, version: int, marks: Mapping[int, float], index: Mapping[int, float],
                 vols: Mapping[int, float]) -> Model | None:
        """A model of ``version`` (among the KEPT_VERSIONS newest, else None) built afresh at the market now with
        the given marks, index prices and implied vols in its place: risk arrays centred on that market, as a
        computation from scratch there would build them (any thread; not kept)."""
        params = self._versions.get(version)
        if params is None:
            return None
        return build_model(self.instruments, self.market.priced(marks, index, vols), self.config, self.core, params,
                           self._wall_ms())

    def _build(self, version: RiskVersion) -> Model:
        self._builds += 1
        return build_model(self.instruments, self.market, self.config, self.core, version, self._wall_ms(),
                           self._builds)

    def _snapshot(self, book, marks: np.ndarray, collateral_usd: float, margin: AccountMargin) -> Snapshot:
        model = self.model
        return Snapshot(book, marks, collateral_usd, margin.equity_usd, margin.im_usd, model.version.version,
                        model.sigma_margin, model.build_id)

    # ---- accounts
    def apply_snapshots(self, books: Sequence[AccountBook]) -> None:
        """Changed accounts: incremental recomputation of those rows (or one full pass for a large batch)."""
        with self._lock:
            rows = self.accounts.upsert(books)
            if self.model is None or not rows or not self.active:
                return
            if self.rebuild_if_due():
                return      # every row recomputed on the new model, the changed ones among them
            if len(rows) > self.config.incremental_max_accounts:
                self.full_recalculation()
                return
            outputs: list[AccountMargin] = []
            calls: list[MarginCallEvent] = []
            at = self.queries.market_at()
            now = self._wall_ms()
            model = self.model
            marks = at.view.mark
            for row in rows:
                started = time.perf_counter()
                book = self.accounts.rows[row]
                single = self.queries.single(book, model, at)
                self.accounts.store_single(row, single.core)
                self.queries.publish_incremental(row, model, single)
                self.metrics.incremental(time.perf_counter() - started)
                # the account's own inputs changed: a transition needs no confirmation
                state = int(self.publication.next_states(single.valuation, row, row + 1, now,
                                                         immediate=np.ones(1, dtype=bool))[0])
                episode, repeat = self.publication.episode(row, state)
                margin = dataclasses.replace(self.queries.margin_of(single, model), state=state, episode=episode)
                self.publication.record(row, margin, repeat, now, outputs, calls,
                                        self._snapshot(book, marks, float(single.valuation.collateral[0]), margin))
            self.publication.emit(outputs, calls)

    def remove_accounts(self, account_ids: Iterable[str]) -> int:
        """Accounts no longer owned (partitions revoked): forgotten, nothing published."""
        with self._lock:
            rows = self.accounts.remove(account_ids)
            self.publication.forget(rows)
            return len(rows)

    # ---- full recalculation
    def full_recalculation(self, publish_all: bool = True) -> None:
        """Every account through the core, then an evaluation. ``publish_all``: the whole republication
        goes out now (a new version); else only the transitions, the rest by the next turns' drain."""
        with self._lock:
            model = self.model
            if model is None or not self.active:
                return
            started = time.perf_counter()
            f = self.accounts.ensure_flat()
            netting = self._book_netting(model.core, f)
            if netting is None:
                out = model.core.compute(f.indptr, f.instrument, f.size, f.isolated, n_threads=self.config.n_threads)
            else:
                out = model.core.compute(f.indptr, f.instrument, f.size, f.isolated, n_threads=self.config.n_threads,
                                         netting=netting)
            self.accounts.store_full(out)
            self.metrics.full_recalc(time.perf_counter() - started, f.n_accounts)
            self.evaluate(force=publish_all)

    def _book_netting(self, charged, f):
        """The contingency netting of the flat book ``f``, kept while ``f`` stands unchanged (same
        object, same generation) and the model's instruments and rates are the same: a new risk
        version re-prices it instead of netting a million positions again."""
        table = getattr(charged, "table", None)
        if table is None or not table.rates.active:
            return None
        kept = self._netting
        if kept is not None and kept[0] is f and kept[1] == f.generation and kept[2].same_structure(table):
            return kept[3]
        netting = charged.netting(f.indptr, f.instrument, f.size, f.isolated)
        self._netting = (f, f.generation, table, netting)
        return netting

    # ---- marks → equity → states
    def tick(self) -> None:
        """Periodic work of the service loop: re-evaluate after marks, refresh the model, heartbeats."""
        now = self._wall_ms()
        model = self.model
        if model is None:
            return
        cfg = self.config
        if self.rebuild_if_due():
            return      # before the evaluation: no state goes out on risk arrays centred on a market moved on
        due = now - self.last_eval_ms >= cfg.evaluate_interval_ms
        heartbeat = now - self.last_eval_ms >= 1000
        if due and (self.marks_dirty or self.accounts.flat_dirty or heartbeat):
            self.evaluate()   # before the backlog: a move's transitions go out first
        if self.backlog is not None:
            self.drain(budget_s=PUBLISH_TURN_SECONDS)

    def evaluate(self, force: bool = False) -> int:
        """Equity of every account at current marks (vectorised), states, publication. Returns states published.

        Only the rows whose published numbers change (state, or a material move, or a heartbeat) get
        a result built; the rest cost the vectorised comparison alone."""
        with self._lock:
            model = self.model
            self.last_eval_ms = self._wall_ms()
            self.marks_dirty = False
            if model is None or not self.active:
                return 0
            acc = self.accounts
            f = acc.ensure_flat()
            n = f.n_accounts
            at = self.queries.market_at()
            stamps = acc.stamp[:n].copy()    # which book each row is evaluated with (queries compare stamps)
            # In slices, stepping aside between them: gRPC threads wait ~1 slice, not the whole pass.
            val = valuate_chunked(f.instrument, f.size, f.entry, f.isolated, f.isolated_collateral,
                                  acc.iso_im_flat, acc.balances[:n], acc.cross_im[:n], self.config.mm_factor,
                                  at.view, indptr=f.indptr,
                                  pause=self.queries.readers.pauser(), core=self.core,
                                  n_threads=self.config.n_threads)
            parts = (acc.grid[:n].copy(), acc.es[:n].copy(), acc.minimum[:n].copy(), acc.liquidity[:n].copy())
            self.queries.publish_evaluation(Evaluated(model, stamps, f, val, parts, at))
            now = self._wall_ms()
            live = acc.computed[:n]   # False for removed rows
            published = self.publication.next_states(val, 0, n, now)
            changed = live & self.publication.changed(published, val, n, now)
            rows = np.flatnonzero(changed)
            states = published[rows]
            # The transitions first: the rows whose published state changes (every margin call among them)
            # are built and published, acknowledged, before the bulk of the republication (after a mark move,
            # every account's numbers moved: 100k states to build and send); those then go out in slices,
            # stepping aside for queries between them.
            moved = states != self.publication.state[rows]
            moved_rows, moved_states = rows[moved], states[moved]
            published_n = 0
            for lo in range(0, moved_rows.shape[0], TRANSITION_SLICE_ACCOUNTS):   # the first calls out early
                hi = lo + TRANSITION_SLICE_ACCOUNTS
                published_n += self._publish_rows(moved_rows[lo:hi], moved_states[lo:hi], val, f, model, at, parts,
                                                  now)
            # The rest: what still differs from the published now (a backlog left by the last evaluation
            # included) — published here when small or forced (a new version, the first publication), else
            # by the next turns (:meth:`drain`), so that the loop keeps reading marks and evaluating
            # meanwhile and the next transitions never wait behind a republication.
            rest = rows[~moved]
            self.backlog = _Backlog(rest, stamps, val, f, model, at, parts) if rest.shape[0] else None
            if force or rest.shape[0] <= PUBLISH_SLICE_ACCOUNTS:
                published_n += self.drain()
            counts = np.bincount(published[live], minlength=5)
            self.last_counts = {s: int(counts[s]) for s in range(1, 5)}
            self.metrics.accounts_by_state(self.last_counts)
            self.metrics.marks(self.market.oldest_mark_age_seconds(), self.market.newest_event_ms)
            self.metrics.risk_params(model.version.version, max(0.0, (now - model.version.publish_time_ms) / 1e3))
            return published_n

    def drain(self, max_rows: int | None = None, budget_s: float | None = None) -> int:
        """Publish the backlog of the last evaluation in slices (stepping aside for queries between them):
        at most ``max_rows`` rows (None: all of it), and no new slice after ``budget_s`` seconds. A row whose
        book was replaced since (its own recomputation published it) or that was removed is skipped; the
        others go out in their state as published now. Returns the states published."""
        with self._lock:
            b = self.backlog
            if b is None:
                return 0
            started = time.perf_counter()
            done = published = 0
            total = b.rows.shape[0] if max_rows is None else min(max_rows, b.rows.shape[0])
            while done < total:
                if done:
                    if budget_s is not None and time.perf_counter() - started >= budget_s:
                        break
                    self.queries.readers.yield_to_queries()
                rows = b.rows[done:min(done + PUBLISH_SLICE_ACCOUNTS, total)]
                done += rows.shape[0]
                rows = self.accounts.current(rows, b.stamps)
                if rows.shape[0]:
                    published += self._publish_rows(rows, self.publication.state[rows], b.val, b.flat, b.model, b.at,
                                                    b.parts, self._wall_ms())
            b.rows = b.rows[done:]
            if not b.rows.shape[0]:
                self.backlog = None
            return published

    @property
    def publishing(self) -> bool:
        """A republication is still going out (:meth:`drain` on the next turns)."""
        return self.backlog is not None

    def _publish_rows(self, rows: np.ndarray, states: np.ndarray, val, f, model: Model, at, parts, now: int) -> int:
        """The results of ``rows`` (in their published ``states``) recorded and published, with their calls;
        every row's book is the one it was evaluated with (same stamp)."""
        if rows.shape[0] == 0:
            return 0
        outputs: list[AccountMargin] = []
        calls: list[MarginCallEvent] = []
        marks = at.view.mark
        # episodes first (they read the previous published state, which record() then replaces)
        episodes = [self.publication.episode(row, state) for row, state in zip(rows.tolist(), states.tolist())]
        books = self.accounts.rows
        margins = account_margins(self.instruments, self.config.mm_factor, books, val, rows, f, model, at.event_ms,
                                  parts, states, [e for e, _repeat in episodes])
        collateral = val.collateral[rows].tolist()
        record, snapshot = self.publication.record, self._snapshot
        for row, margin, (_episode, repeat), coll in zip(rows.tolist(), margins, episodes, collateral):
            record(row, margin, repeat, now, outputs, calls,
                   lambda b=books[row], c=coll, m=margin: snapshot(b, marks, c, m))
        self.publication.emit(outputs, calls)
        return len(outputs)
