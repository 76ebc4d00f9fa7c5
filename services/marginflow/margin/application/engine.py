"""The margin application assembled: market state, account table, evaluation, publication and queries.

:class:`MarginEngine` is what the wiring and the router talk to. Ports (passed in): ``publisher``
(margin states and calls), ``metrics``, ``clock`` (wall clock: publication intervals and ages); the
margin core (``marginflow.core`` or its numpy twin) is passed in too.

Threading: one thread (the service loop) mutates; gRPC threads only read (see ``queries``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

from marginflow.margin.application.evaluation import Evaluation
from marginflow.margin.application.models import Model
from marginflow.margin.application.ports import EngineConfig, EngineMetrics, Publisher
from marginflow.margin.application.publication import Instruments, Publication
from marginflow.margin.application.queries import Queries
from marginflow.margin.domain.accounts import AccountTable
from marginflow.margin.domain.book import AccountBook, InstrumentTable
from marginflow.margin.domain.market import MarketAt, MarketState, MarkUpdate
from marginflow.margin.domain.results import AccountMargin, Explanation
from marginflow.margin.domain.scenarios import RiskVersion
from marginflow.margin.domain.trades import TradeDelta
from marginflow.margin.domain.valuation import MarketView
from marginflow.shared.clock import Clock
from marginflow.shared.metrics import NullMetrics


class MarginEngine:
    def __init__(self, instruments: InstrumentTable, config: EngineConfig, publisher: Publisher, clock: Clock,
                 core, metrics: EngineMetrics | None = None) -> None:
        self.instruments = instruments
        self.config = config
        self.clock = clock
        self.metrics = metrics or NullMetrics()
        self.asset_index = {a: i for i, a in enumerate(config.assets)}
        self.market = MarketState(instruments, config.fallback_price, config.fallback_vol,
                                  config.default_depth_contracts, clock.now_ms())
        self.accounts = AccountTable(len(config.assets))
        self.publication = Publication(config, publisher, self.metrics, Instruments(
            instruments.contract_size, instruments.symbols,
            [instruments.underlyings[u] for u in instruments.underlying.tolist()]))
        self.accounts.on_grow(self.publication.grow)
        self._lock = threading.RLock()   # held by the mutating thread; readers never take it
        self.queries = Queries(instruments, config, self.market, self.accounts, lambda: self.evaluation.model,
                               self.market_view, clock.now_ms, lambda: self.ready, self.publication, core,
                               self.market_at, lambda version: self.evaluation.model_of(version),
                               lambda *at: self.evaluation.model_at(*at))
        self.evaluation = Evaluation(instruments, config, core, self.market, self.accounts, self.publication,
                                     self.queries, self.metrics, clock.now_ms, self.market_view, self._lock)

    @property
    def ready(self) -> bool:
        """False while the inputs are incomplete (the wiring says so): queries are refused as not ready,
        snapshots are stored but nothing is evaluated or published."""
        return self.evaluation.active

    @ready.setter
    def ready(self, value: bool) -> None:
        self.evaluation.active = bool(value)

    # ---- inputs (the service loop)
    def apply_marks(self, marks: Iterable[MarkUpdate]) -> int:
        with self._lock:
            n = self.market.apply(marks)
            if n:
                self.evaluation.marks_dirty = True
        return n

    def apply_risk_params(self, version: RiskVersion) -> bool:
        return self.evaluation.apply_risk_params(version)

    def apply_snapshots(self, books: Sequence[AccountBook]) -> None:
        self.evaluation.apply_snapshots(books)

    def remove_accounts(self, account_ids: Iterable[str]) -> int:
        return self.evaluation.remove_accounts(account_ids)

    def tick(self) -> None:
        self.evaluation.tick()

    def evaluate(self, force: bool = False) -> int:
        return self.evaluation.evaluate(force)

    @property
    def publishing(self) -> bool:
        """A republication's backlog is still going out (a slice each turn)."""
        return self.evaluation.publishing

    def full_recalculation(self, publish_all: bool = True) -> None:
        self.evaluation.full_recalculation(publish_all)

    def refresh_model(self, publish_all: bool = True, reason: str = "refresh") -> None:
        self.evaluation.refresh_model(publish_all, reason)

    # ---- queries (any thread)
    def get_margin(self, account_id: str) -> AccountMargin:
        return self.queries.get_margin(account_id)

    def what_if(self, account_id: str, trades: Sequence[TradeDelta],
                collateral: Sequence[tuple[int, float]] = ()) -> tuple[AccountMargin, AccountMargin]:
        return self.queries.what_if(account_id, trades, collateral)

    def explain(self, account_id: str) -> Explanation:
        return self.queries.explain(account_id)

    def margin_at(self, account_id: str, marks: dict[int, float], index: dict[int, float],
                  book: AccountBook | None = None, risk_version: int = 0, vols: dict[int, float] | None = None):
        return self.queries.margin_at(account_id, marks, index, book, risk_version, vols)

    def recheck(self, account_ids: Sequence[str], reliefs: bool = True):
        return self.queries.recheck(account_ids, reliefs)

    def market_view(self) -> MarketView:
        model = self.evaluation.model
        sigma = model.sigma_margin if model is not None else {}
        cfg = self.config
        return self.market.view(cfg.assets, cfg.stablecoins, sigma, cfg.haircut, cfg.mark_max_age_ms)

    def market_at(self) -> MarketAt:
        """:meth:`market_view` and the prices liquidation prices use, copied (one computation's market)."""
        model = self.evaluation.model
        sigma = model.sigma_margin if model is not None else {}
        cfg = self.config
        return self.market.at(cfg.assets, cfg.stablecoins, sigma, cfg.haircut, cfg.mark_max_age_ms,
                              self.clock.now_ms())

    def haircuts(self) -> dict[str, float]:
        model = self.evaluation.model
        sigma = model.sigma_margin if model is not None else {}
        return self.market.haircuts(self.config.assets, self.config.stablecoins, sigma, self.config.haircut)

    # ---- introspection
    @property
    def model(self) -> Model | None:
        return self.evaluation.model

    @property
    def version(self) -> int:
        model = self.evaluation.model
        return model.version.version if model is not None else 0

    @property
    def last_counts(self) -> dict[int, int]:
        return self.evaluation.last_counts

    @property
    def row_of(self) -> dict[str, int]:
        return self.accounts.row_of

    @property
    def cross_im(self):
        return self.accounts.cross_im

    @property
    def flat(self):
        return self.accounts.ensure_flat()

    @property
    def mark_price(self):
        return self.market.mark_price

    @property
    def newest_event_ms(self) -> int:
        return self.market.newest_event_ms

    def account_ids(self) -> list[str]:
        return self.accounts.account_ids()

    def n_positions(self) -> int:
        return self.accounts.n_positions()
