"""Queries (any gRPC thread): margin, what-if and explain of one account, margined alone.

Readers never take the service loop's lock: they take immutable references (the model, an account's
:class:`AccountBook`) and read the market arrays as they are. While a query runs, the loop's
vectorised evaluation steps aside between its slices (:class:`Readers`).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from marginflow.core import KIND_CALL
from marginflow.margin.application.models import Model
from marginflow.margin.application.ports import EngineConfig, NotReady, OtherVersion, UnknownAccount
from marginflow.margin.application.results import account_margin, account_margins, core_parts
from marginflow.margin.domain.accounts import AccountTable
from marginflow.margin.domain.book import AccountBook, FlatBook, InstrumentTable
from marginflow.margin.domain.liquidation import linear_liquidation_price, option_liquidation_forward
from marginflow.margin.domain.market import MarketAt, MarketState, PriceUsed, at_prices, prices_used
from marginflow.margin.domain.results import AccountMargin, Explanation, PositionExplain, UnderlyingExplain
from marginflow.margin.domain.trades import TradeDelta, apply_trades, check_trades
from marginflow.margin.domain.valuation import MarketView, Valuation, valuate
from marginflow.shared.memo import IdentityMemo

if TYPE_CHECKING:
    from marginflow.margin.application.publication import Publication

# Between slices the evaluation steps aside while queries are running, at most this long per slice ...
EVALUATE_YIELD_MAX_S = 0.005
# ... and this long per pass in all: under any query load a pass of new marks (and the calls it makes)
# is late by at most this much.
EVALUATE_YIELD_BUDGET_S = 0.02


class Readers:
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

    def yield_to_queries(self, most_s: float = EVALUATE_YIELD_MAX_S) -> float:
        """Release the GIL (and the core): a query waiting for either runs now, not after the whole pass;
        while queries are in flight, wait for them (at most ``most_s``). Returns the seconds waited."""
        time.sleep(0)
        if not self.count:
            return 0.0
        started = time.perf_counter()
        deadline = started + most_s
        while self.count and time.perf_counter() < deadline:
            time.sleep(0.0002)
        return time.perf_counter() - started

    def pauser(self, budget_s: float = EVALUATE_YIELD_BUDGET_S):
        """A ``pause()`` for one pass: between its slices, while queries are in flight, wait for them
        (:meth:`yield_to_queries`), ``budget_s`` in all at most; otherwise go straight on. (The GIL is
        released inside every slice of the kernel anyway; a voluntary release by the loop, at its lower
        priority, cost the calls of a 100k-account mark move ~40 ms a slice on a busy host.)"""
        left = budget_s

        def pause() -> None:
            nonlocal left
            if self.count and left > 0:
                left -= self.yield_to_queries(min(EVALUATE_YIELD_MAX_S, left))

        return pause


@dataclasses.dataclass
class Single:
    """One account margined alone (at ``market``, when it is kept for later answers)."""

    book: AccountBook
    flat: FlatBook
    core: dict
    valuation: Valuation
    market: MarketAt | None = None


@dataclasses.dataclass(eq=False)
class Evaluated:
    """The last evaluation of every account, as queries answer from it (never modified once published).

    ``stamps[row]`` is the stamp of the book that row was evaluated with (``AccountTable.stamp``): a
    query answers from these arrays only for an account whose current book still carries that stamp
    and is the book the query holds, and only while ``model`` is the model in force — otherwise the account is margined alone, as before. ``answers`` holds the results already
    built from this evaluation (with liquidation prices), one per row, and ``plain`` those without
    (what-if's "before"): they die with it."""

    model: Model
    stamps: np.ndarray
    flat: FlatBook
    valuation: Valuation
    parts: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]   # grid, ES, minimum, liquidity per row, USD
    market: MarketAt
    answers: dict = dataclasses.field(default_factory=dict)
    plain: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, eq=False)
class Rechecked:
    """One account of :meth:`Queries.recheck`: its margin as reported, the book it was margined with, and the
    IM relief (USD) of closing each of its positions alone (None: isolated, flat, or not asked)."""

    margin: AccountMargin
    book: AccountBook
    relief_usd: tuple[float | None, ...]


@dataclasses.dataclass(eq=False)
class Incremental:
    """An account recomputed alone after its own inputs changed (since the last evaluation)."""

    model: Model
    single: Single
    answer: AccountMargin | None = None   # with liquidation prices
    plain: AccountMargin | None = None    # without


# Reported answers remembered (raw answer → the published state and episode it was reported under, and
# the answer reported): past this many the oldest are forgotten.
REPORTED_MEMO_MAX = 16_384


class Queries:
    def __init__(self, instruments: InstrumentTable, config: EngineConfig, market: MarketState,
                 accounts: AccountTable, model: Callable[[], Model | None], market_view: Callable[[], MarketView],
                 wall_ms: Callable[[], int], ready: Callable[[], bool] = lambda: True,
                 publication: "Publication | None" = None, core=None,
                 market_at: Callable[[], MarketAt] | None = None,
                 model_of: Callable[[int], Model | None] = lambda _version: None,
                 model_at: Callable[..., Model | None] = lambda *_at: None) -> None:
        self.instruments = instruments
        self.config = config
        self.market = market
        self.accounts = accounts
        self._model = model
        self._model_of = model_of
        self._model_at = model_at
        self._market_view = market_view
        self._market_at = market_at
        self._wall_ms = wall_ms
        self._ready = ready
        self._publication = publication
        self._core = core
        self.readers = Readers()
        self._settle = list(config.assets).index(config.settlement_asset)
        self.evaluated: Evaluated | None = None        # replaced whole by each evaluation
        self.incremental: dict[int, Incremental] = {}  # rows recomputed alone since; replaced with it
        # raw answer → (published state, episode, reported answer)
        self._reported: IdentityMemo[tuple[int, int, AccountMargin]] = IdentityMemo(REPORTED_MEMO_MAX)

    # ---- what the evaluation leaves for queries (the service loop)
    def publish_evaluation(self, evaluated: Evaluated) -> None:
        self.evaluated = evaluated
        self.incremental = {}

    def publish_incremental(self, row: int, model: Model, single: Single) -> None:
        self.incremental[row] = Incremental(model, single)

    def market_at(self) -> MarketAt:
        if self._market_at is not None:
            return self._market_at()
        view = self._market_view()
        m = self.market
        view = dataclasses.replace(view, mark=view.mark.copy(), mark_time_ms=view.mark_time_ms.copy())
        return MarketAt(view, m.index_price.copy(), m.implied_vol.copy(), m.now_ms(self._wall_ms()),
                        m.newest_event_ms)

    # ---- one account alone
    def _require_model(self) -> Model:
        model = self._model()
        if model is None:
            raise NotReady("no risk parameters yet")
        if not self._ready():
            raise NotReady("margin state is still being rebuilt")
        return model

    def require(self, account_id: str) -> tuple[AccountBook, Model]:
        model = self._require_model()
        book = self.accounts.book(account_id)
        if book is None:
            raise UnknownAccount(account_id)
        return book, model

    def single(self, book: AccountBook, model: Model, market: MarketView | MarketAt | None = None) -> Single:
        """``book`` margined alone at ``market`` (default: the market now, kept with the result)."""
        at = None
        if market is None:
            at = self.market_at()
            market = at.view
        elif isinstance(market, MarketAt):
            at, market = market, market.view
        flat = FlatBook.of(book)
        core, val = self.computed(model, flat, book.balances[None, :], market)
        return Single(book, flat, core, val, at)

    def computed(self, model: Model, flat: FlatBook, balances: np.ndarray, market: MarketView) -> tuple[dict, Valuation]:
        """The core's computation of ``flat``'s accounts (one thread: a query) and their valuation at ``market``
        (``balances``: one row per account)."""
        core = model.core.compute(flat.indptr, flat.instrument, flat.size, flat.isolated, n_threads=1)
        val = valuate(flat.owner, flat.instrument, flat.size, flat.entry, flat.isolated, flat.isolated_collateral,
                      np.asarray(core["isolated_im"], dtype=np.float64), balances,
                      np.asarray(core["cross_im"], dtype=np.float64), self.config.mm_factor, market,
                      indptr=flat.indptr, core=self._core)
        return core, val

    def margin_of(self, s: Single, model: Model, liquidation_prices: bool = False) -> AccountMargin:
        """The account alone, in its raw state (results' event time and liquidation prices from the
        market it was valued at, when kept)."""
        at = s.market
        event_ms = at.event_ms if at is not None else self.market.newest_event_ms
        return account_margin(self.instruments, self.config.mm_factor, s.book, s.valuation, 0, s.flat, model,
                              event_ms, core_parts(s.core), self._pricer(at) if liquidation_prices else None)

    def reported(self, margin: AccountMargin, remember: bool = False) -> AccountMargin:
        """A query's answer: the published state's hysteresis applied, and the account's episode.
        ``remember``: ``margin`` is a kept answer that will be asked about again (the result is then
        remembered and the same object returned while the row's published state and episode stand)."""
        pub = self._publication
        if pub is None:
            return margin
        row = self.accounts.row_of.get(margin.account_id)
        # What the answer depends on besides the (immutable) raw answer: the row's published state and episode.
        published = int(pub.state[row]) if row is not None and row < pub.state.shape[0] else -1
        episode = int(pub.episodes.number[row]) if row is not None and row < pub.episodes.number.shape[0] else 0
        kept = self._reported.get(margin) if remember else None
        if kept is not None and kept[0] == published and kept[1] == episode:
            return kept[2]
        state = pub.query_state(row, int(margin.state), margin.equity_usd, margin.im_usd, margin.mm_usd,
                                published if published >= 0 else None)
        out = margin if state == margin.state and episode == margin.episode else \
            dataclasses.replace(margin, state=state, episode=episode)
        if remember:
            self._reported.put(margin, (published, episode, out))
        return out

    def liquidation_price(self, k: int, size: float, equity: float, mm: float,
                          model: Model | None, at: MarketAt | None = None) -> tuple[float | None, str]:
        """Liquidation price of a position (requirement held at ``mm``), at the market ``at`` (default: now)."""
        t = self.instruments
        cs = float(t.contract_size[k])
        if at is None:
            m = self.market
            index, vol, mark, now = m.index_price, m.implied_vol, m.mark_price, m.now_ms(self._wall_ms())
        else:
            index, vol, mark, now = at.index_price, at.implied_vol, at.view.mark, at.now_ms
        if t.is_option(k):
            forward = float(index[t.underlying[k]])
            years = t.expiry_years_of(k, now)
            return option_liquidation_forward(equity, mm, size, cs, t.kind[k] == KIND_CALL, forward,
                                              float(t.strike[k]), years, float(vol[k])), "underlying"
        return linear_liquidation_price(equity, mm, size, cs, float(mark[k])), "mark"

    def _pricer(self, at: MarketAt | None):
        def price(k: int, size: float, equity: float, mm: float, model: Model | None):
            return self.liquidation_price(k, size, equity, mm, model, at)
        return price

    # ---- answers: the last computation of the account, margined again only when there is none
    def _latest(self, row: int | None, book: AccountBook, model: Model) -> Evaluated | Incremental | None:
        if row is None:
            return None
        inc = self.incremental.get(row)
        if inc is not None and inc.single.book is book and inc.model is model:
            return inc
        ev = self.evaluated
        if ev is not None and ev.model is model and row < ev.stamps.shape[0]:
            acc = self.accounts
            # this order (the book, then its stamp): see AccountTable
            if row < len(acc.rows) and acc.rows[row] is book and acc.stamp[row] == ev.stamps[row]:
                return ev
        return None

    def _from_evaluation(self, ev: Evaluated, row: int, book: AccountBook, liquidation_prices: bool) -> AccountMargin:
        grid, es, minimum, liquidity = ev.parts
        parts = (float(grid[row]), float(es[row]), float(minimum[row]), float(liquidity[row]))
        return account_margin(self.instruments, self.config.mm_factor, book, ev.valuation, row, ev.flat, ev.model,
                              ev.market.event_ms, parts, self._pricer(ev.market) if liquidation_prices else None)

    def _answer(self, account_id: str, book: AccountBook, model: Model,
                liquidation_prices: bool) -> tuple[AccountMargin, MarketAt | None]:
        """The account's raw margin from the last computation that covered its current book under the
        model in force (the evaluation, or its own recomputation since), and the market it was valued at."""
        row = self.accounts.row_of.get(account_id)
        src = self._latest(row, book, model)
        if isinstance(src, Incremental):
            if not liquidation_prices:
                if src.plain is None:
                    src.plain = self.margin_of(src.single, model)
                return src.plain, src.single.market
            if src.answer is None:
                src.answer = self.margin_of(src.single, model, liquidation_prices=True)
            return src.answer, src.single.market
        if isinstance(src, Evaluated):
            kept = src.answers if liquidation_prices else src.plain
            margin = kept.get(row)
            if margin is None:
                margin = self._from_evaluation(src, row, book, liquidation_prices)
                # The flat arrays are rewritten in place for a row whose book is replaced (after the
                # book itself): the row's book unchanged after the read means the read was whole.
                if self.accounts.rows[row] is not book:
                    return self._alone(book, model, liquidation_prices)
                kept[row] = margin
            return margin, src.market
        return self._alone(book, model, liquidation_prices)

    def _alone(self, book: AccountBook, model: Model, liquidation_prices: bool) -> tuple[AccountMargin, MarketAt]:
        s = self.single(book, model)
        return self.margin_of(s, model, liquidation_prices), s.market

    # ---- the queries
    def get_margin(self, account_id: str) -> AccountMargin:
        with self.readers:
            book, model = self.require(account_id)
            margin, _at = self._answer(account_id, book, model, liquidation_prices=True)
            return self.reported(margin, remember=True)

    def what_if(self, account_id: str, trades: Sequence[TradeDelta],
                collateral: Sequence[tuple[int, float]] = ()) -> tuple[AccountMargin, AccountMargin]:
        """Margin before and after hypothetical trades and collateral changes ``(asset column, signed
        amount in asset units)`` (a withdrawal is a negative amount); both at the market the account
        was last valued at, trades without a price at its marks."""
        with self.readers:
            book, model = self.require(account_id)
            check_trades(trades, self.instruments.n)
            before, at = self._answer(account_id, book, model, liquidation_prices=False)
            if at is None:
                at = self.market_at()
            after_book = apply_trades(book, trades, at.view.mark, self.instruments.contract_size, self._settle)
            if collateral:
                balances = after_book.balances.copy()
                for column, amount in collateral:
                    balances[column] += amount
                after_book = dataclasses.replace(after_book, balances=balances)
            after = self.single(after_book, model, at)
            return self.reported(before, remember=True), self.margin_of(after, model, liquidation_prices=True)

    def margin_at(self, account_id: str, marks: Mapping[int, float], index: Mapping[int, float],
                  given: AccountBook | None = None, risk_version: int = 0,
                  vols: Mapping[int, float] | None = None) -> tuple[AccountMargin, list[PriceUsed]]:
        """The account margined alone at the market now with ``marks`` (instrument → mark, USD) and
        ``index`` (underlying → index price, USD) in its place (:func:`at_prices`): its current book (or
        ``given``, the account's book at another revision — margined here whoever owns the account), the
        model in force (or, ``risk_version`` not 0, a model of that version if it is one of those kept —
        ``Evaluation.model_of`` — else :class:`OtherVersion`), the core's computation and valuation as every
        live margin (:meth:`single`), liquidation prices at those prices. The state is the raw state of those
        numbers (no hysteresis: no transition of the account is being judged), with the account's current
        episode when this instance holds the account (else 0); and the prices the valuation read, given or the
        market's. ``vols`` (instrument → implied vol): the model is built afresh at the given prices and vols
        (``Evaluation.model_at``: risk arrays centred on that market) instead of the version's model as built —
        the computation from scratch at another market, not the live one's at its own centre."""
        with self.readers:
            if given is None:
                book, model = self.require(account_id)
            else:
                model = self._require_model()
                book = given
            if risk_version and model.version.version != risk_version:
                kept = self._model_of(risk_version)
                if kept is None:
                    raise OtherVersion(f"risk-parameter version {risk_version} is neither the one in force "
                                       f"({model.version.version}) nor one of the versions before it kept")
                model = kept
            if vols:
                built = self._model_at(model.version.version, marks, index, vols)
                if built is None:
                    raise OtherVersion(f"risk-parameter version {model.version.version} is no longer kept")
                model = built
            cfg = self.config
            at = at_prices(self.market_at(), self.instruments, marks, index, cfg.assets, cfg.stablecoins,
                           model.sigma_margin, cfg.haircut)
            margin = self.margin_of(self.single(book, model, at), model, liquidation_prices=True)
            margin = dataclasses.replace(margin, episode=self._published_episodes([account_id])[0])
            collateral = [a for a, b in zip(cfg.assets, book.balances.tolist()) if b != 0 and a not in cfg.stablecoins]
            used = prices_used(at, self.instruments, book.instrument.tolist(), collateral, marks, index,
                               cfg.mark_max_age_ms)
            return margin, used

    def recheck(self, account_ids: Sequence[str], reliefs: bool) -> tuple[list[Rechecked], list[str]]:
        """Many accounts margined afresh at the market now, in one pass of the core (each as :meth:`explain`
        margins it alone: the same computation, the accounts side by side in CSR form), and, when asked,
        the IM relief of closing each cross position (``None`` for isolated ones): the cross IM with that
        position's size set to zero (a zero-size position adds nothing to any loss, minimum or add-on), the
        only cross position's being the whole cross IM. Accounts not held here are returned apart."""
        with self.readers:
            model = self._require_model()
            books, unknown = [], []
            for account_id in account_ids:
                book = self.accounts.book(account_id)
                (unknown.append(account_id) if book is None else books.append(book))
            if not books:
                return [], unknown
            at = self.market_at()
            flat = FlatBook.build(books)
            core, val = self.computed(model, flat, np.stack([b.balances for b in books]), at.view)
            relief = self._reliefs(model, flat, np.asarray(core["cross_im"], dtype=np.float64)) if reliefs else None
            # Every account's result gathered at once (account_margins: the numbers account_margin reads one
            # by one), in its raw state and with its episode as published, which reported() then finds
            # unchanged (a copy per account with the episode cost as much as building the result).
            n = len(books)
            parts = tuple(np.asarray(core[k], dtype=np.float64) for k in ("grid", "es", "minimum", "liquidity"))
            margins = account_margins(self.instruments, self.config.mm_factor, books, val, np.arange(n), flat,
                                      model, at.event_ms, parts, np.asarray(val.state)[:n],  # type: ignore[arg-type]
                                      self._published_episodes([b.account_id for b in books]))
            bounds = flat.indptr.tolist()
            out = []
            for i, (book, margin) in enumerate(zip(books, margins)):
                lo, hi = bounds[i], bounds[i + 1]
                out.append(Rechecked(self.reported(margin), book,
                                     tuple(relief[lo:hi]) if relief is not None else (None,) * (hi - lo)))
            return out, unknown

    def _published_episodes(self, account_ids: Sequence[str]) -> list[int]:
        """Each account's episode as published (what :meth:`reported` gives its answer), 0 when none."""
        pub = self._publication
        if pub is None:
            return [0] * len(account_ids)
        number, row_of = pub.episodes.number, self.accounts.row_of
        rows = [row_of.get(a) for a in account_ids]
        return [int(number[r]) if r is not None and r < number.shape[0] else 0 for r in rows]

    def _reliefs(self, model: Model, flat: FlatBook, cross_im: np.ndarray) -> list[float | None]:
        """Per position of ``flat``: the cross IM relief of closing it alone (None for isolated or flat ones)."""
        cross = (flat.isolated == 0) & (flat.size != 0.0)
        out: list[float | None] = [None] * flat.size.shape[0]
        counts = np.bincount(flat.owner[cross], minlength=flat.n_accounts)
        # each position of an account with several cross positions: a copy of that account without it
        variants = []
        for i in np.flatnonzero(counts > 1).tolist():
            lo, hi = int(flat.indptr[i]), int(flat.indptr[i + 1])
            for j in range(lo, hi):
                if cross[j]:
                    variants.append((i, j, lo, hi))
        # the only cross position of an account: its relief is the whole cross IM
        only = np.flatnonzero(cross & (counts[flat.owner] == 1))
        for j, im in zip(only.tolist(), cross_im[flat.owner[only]].tolist()):
            out[j] = im
        if variants:
            lengths = np.array([hi - lo for _i, _j, lo, hi in variants], dtype=np.int64)
            indptr = np.zeros(len(variants) + 1, dtype=np.int64)
            np.cumsum(lengths, out=indptr[1:])
            take = np.concatenate([np.arange(lo, hi) for _i, _j, lo, hi in variants])
            size = flat.size[take].copy()
            size[indptr[:-1] + np.array([j - lo for _i, j, lo, _hi in variants])] = 0.0
            after = model.core.compute(indptr, flat.instrument[take], size, flat.isolated[take], n_threads=1)
            after_im = np.asarray(after["cross_im"], dtype=np.float64)
            for k, (i, j, _lo, _hi) in enumerate(variants):
                out[j] = max(float(cross_im[i] - after_im[k]), 0.0)
        return out

    def explain(self, account_id: str) -> Explanation:
        with self.readers:
            return self._explain(account_id)

    def _explain(self, account_id: str) -> Explanation:
        book, model = self.require(account_id)
        s = self.single(book, model)
        margin = self.reported(self.margin_of(s, model, liquidation_prices=True))
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
            liq, basis = self.liquidation_price(k, float(book.size[j]), eq, mm, model, s.market)
            positions.append(PositionExplain(
                t.symbols[k], t.underlyings[t.underlying[k]], float(book.size[j]), bool(book.isolated[j]),
                float(ex["position_grid"][j]), float(ex["position_es"][j]), float(ex["position_minimum"][j]),
                float(ex["position_liquidity"][j]), liq, basis,
                *model.surface_of(k, int(ex["underlying_grid_scenario"][t.underlying[k]])),
                float(ex["position_contingency"][j]), float(ex["position_basis"][j]),
                float(ex["position_horizon_days"][j]), float(ex["position_scale"][j]),
                float(ex["position_oi_share"][j]), float(ex["position_concentration"][j]),
                bool(ex["position_depth_curve"][j]), float(ex["position_liquidity_distance_bps"][j]),
                float(ex["position_depth_covered"][j]), float(ex["position_half_spread_bps"][j])))
        scen = model.scenarios
        underlyings = []
        und_grid = np.asarray(ex["underlying_grid"])
        und_row = np.asarray(ex["underlying_grid_scenario"])
        und_es = np.asarray(ex["underlying_es"])
        n_rows = scen.n_grid + scen.tail_weights.shape[0]
        for u, name in enumerate(t.underlyings):
            if not np.any(t.underlying[book.instrument] == u):
                continue
            g = int(und_row[u])
            ps = float(scen.price_shock[g, u]) if 0 <= g < n_rows else 0.0
            vs = float(scen.vol_shock[g, u]) if 0 <= g < n_rows else 0.0
            underlyings.append(UnderlyingExplain(name, float(und_grid[u]), float(und_es[u]), ps, vs))
        parts = {"grid": float(ex["grid"]), "es": float(ex["es"]), "min_margin": float(ex["minimum"])}
        has_cross = bool(np.any((book.isolated == 0) & (book.size != 0)))
        binding = max(parts, key=lambda name: parts[name]) if has_cross else "none"
        last_change: tuple = ()
        if self._publication is not None:
            row = self.accounts.row_of.get(account_id)
            last_change = self._publication.last_change.get(row, ()) if row is not None else ()
        return Explanation(margin, int(ex["worst"]), tuple(positions), tuple(underlyings), binding, last_change)
