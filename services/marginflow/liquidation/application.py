"""Liquidation use cases, with their ports passed in (no Kafka, gRPC or Redis here).

What happens, in the service loop's thread unless said otherwise:

* ``margin.calls`` (an account entered LIQUIDATION/BANKRUPT on fresh marks) → the account is *pending*.
  A call on stale marks is recorded (SKIPPED_STALE_MARK) and nothing else happens.
* ``margin.state`` → the equity of every account (ADL leverage); decoded whole only for a trigger (an account
  published in LIQUIDATION/BANKRUPT) or an account tracked here (the queue, restart triggers).
* ``md.marks`` → marks, indexes and a short mark history per instrument (the guards).
* Due accounts are **assessed** together by a worker thread (reads only): the margin service's ``Recheck`` (a
  fresh computation of each account: equity, IM, MM, positions, and the IM relief of closing each cross
  position), one call for many accounts; for a bankrupt account the opposite positions from the portfolio service.
* The loop thread **acts** on an assessment (:meth:`LiquidationEngine.act`): re-checks that the account is
  below MM on fresh marks with a risk version and revision not older than the call's, starts or advances
  the episode (domain ``episode``), plans the round (domain ``plan_round``), and publishes: first the
  ORDER_SENT events (acknowledged), then the orders. Episodes are rebuilt from ``liquidation.events`` at
  start, so an order id on the wire always has its event, and a restarted service never reuses a slice.
* ``trades.fills`` of our orders → the fee to the insurance fund, once per fill id (the fund ledger
  remembers the applied offsets and recent ids, and is published to ``liquidation.fund`` before the
  offsets are committed).
* A bankrupt account (equity < 0 on fresh marks): per position, domain ``resolve_bankruptcy``: the fund
  pays the loss of the part it can take over (an ``account.events`` Deposit of the amount, then that part
  closed at the mark against the house), the rest is auto-deleveraged at the bankruptcy price against the
  ranked opposite positions (fills for both accounts); every step an event.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import heapq
import time
from collections.abc import Callable, Iterable, Sequence
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Protocol

from marginflow.liquidation.domain import (
    AccountState, AdlCandidate, CooldownMode, Episode, EpisodeState, FundSettings, GuardSettings, GuardVerdict,
    InsuranceFund, MarginObservation, OrderSide, PlanSettings, PositionRisk, PositionState, adl_lights,
    adl_score, allocate_slices, bankruptcy_price, begin_round, instrument_guard, observe, parse_order_id,
    plan_round, rank_for_adl, record_attempt, resolve_bankruptcy, round_limit_to_tick, start,
    time_weighted_average)
from marginflow.shared.logs import get_logger
from marginflow.shared.money import cents_toward_ceiling, cents_toward_floor
from marginflow.shared.universe import Kind, Universe
from marginflow.shared.fills import FillRecord

log = get_logger(__name__)
ZERO = Decimal(0)

# Health states, numbered as marginflow.margin.v1.HealthState.
HEALTHY, MARGIN_CALL, LIQUIDATION, BANKRUPT = 1, 2, 3, 4
# A call whose margin (GetMargin) still looks older than the call is re-read this soon, at most this often.
RECHECK_DELAY_MS = 100
RECHECK_TRIES = 20
# An assessment that failed (margin unreachable, a timeout) is retried after this long.
FAILURE_BACKOFF_MS = 1000
# An episode whose orders found no fill in max_rounds rounds gets one round this often (and its assessment).
STUCK_RETRY_MS = 30_000
# After a bankruptcy resolution the account is not acted on again until a margin view holds its fills and
# deposit (the account revision the resolution settled on): a view read before portfolio and margin applied
# them shows the closed positions still open, and acting on it would close them twice. Bounded: a redo after
# a crash may count effects already applied, so the wait ends after this long at the latest.
SETTLE_TIMEOUT_MS = 60_000
# The same after a round whose orders filled: the next round is planned only on a view holding those fills
# (the revision the round was planned on plus one per fill of its episode read since). Planned on a view
# without them — portfolio down or behind, margin not yet republished — it would sell again what was sold:
# under a kill -9 of portfolio with some 1,600 live episodes, 208,569 orders went out in one fault window.
# While it waits, the account is re-read this often (a re-check each time).
SETTLE_POLL_MS = 250
LINEAR_KINDS = (Kind.PERPETUAL, Kind.FUTURE)
# Events naming the instrument of a bankrupt part the episode resolved (a restart never resolves it again).
RESOLUTION_KINDS = frozenset({"FUND_TAKEOVER", "ADL", "UNCOVERED", "DEFICIT_COVERED"})
# After a re-check found an account above MM, republished margin.state records of it do not trigger another
# re-check for this long (each would be one Explain and a RECHECK_HEALTHY event); margin.calls always do.
STATE_TRIGGER_QUIET_MS = 10_000


# ---- what comes in ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Call:
    account_id: str
    state: int
    marks_fresh: bool
    risk_version: int
    revision: int
    event_time_ms: int


@dataclasses.dataclass(frozen=True)
class StateSeen:
    account_id: str
    state: int
    equity_usd: Decimal
    im_usd: Decimal
    mm_usd: Decimal
    marks_fresh: bool
    event_time_ms: int
    below_mm: bool = False    # the cross part or an isolated position below its MM (as published)


@dataclasses.dataclass(frozen=True)
class MarkSeen:
    instrument: str
    mark_usd: float
    index_usd: float
    event_time_ms: int
    half_spread_fraction: float = 0.0
    depth_contracts: float = 0.0


@dataclasses.dataclass(frozen=True)
class FillSeen:
    topic: str
    partition: int
    offset: int
    fill_id: str
    account_id: str
    instrument: str
    side: int                 # +1 buy, −1 sell
    size: Decimal
    price_usd: Decimal
    fee_usd: Decimal
    liquidation: bool
    order_id: str
    event_time_ms: int


@dataclasses.dataclass(frozen=True)
class PositionView:
    instrument: str
    size: Decimal
    isolated: bool


@dataclasses.dataclass(frozen=True)
class IsolatedView:
    """One isolated position margined alone against its allocated collateral (equity = collateral + P&L)."""

    instrument: str
    size: Decimal
    equity_usd: Decimal
    im_usd: Decimal
    mm_usd: Decimal


@dataclasses.dataclass(frozen=True)
class MarginView:
    """A fresh margin computation of one account (the margin service's Explain).

    ``equity_usd``/``im_usd``/``mm_usd`` are the account's totals (cross + Σ isolated); ``cross_*`` the cross
    part alone (None: the totals, an account without isolated positions); ``isolated`` each isolated position."""

    account_id: str
    state: int
    equity_usd: Decimal
    im_usd: Decimal
    mm_usd: Decimal
    marks_fresh: bool
    risk_version: int
    revision: int
    event_time_ms: int
    positions: tuple[PositionView, ...]
    cross_equity_usd: Decimal | None = None
    cross_im_usd: Decimal | None = None
    cross_mm_usd: Decimal | None = None
    isolated: tuple[IsolatedView, ...] = ()

    @functools.cached_property
    def components(self) -> tuple["Component", ...]:
        """:func:`components` of this view, built once (a view is immutable; acting on one account reads them
        several times)."""
        return tuple(_components(self))


@dataclasses.dataclass(frozen=True)
class Component:
    """What is liquidated as one: the cross part (``instrument`` empty) or one isolated position."""

    instrument: str
    equity_usd: Decimal
    im_usd: Decimal
    mm_usd: Decimal
    positions: tuple[PositionView, ...]

    @property
    def isolated(self) -> bool:
        return bool(self.instrument)

    @property
    def below_mm(self) -> bool:
        return bool(self.positions) and self.mm_usd > 0 and self.equity_usd < self.mm_usd


def components(view: MarginView) -> tuple[Component, ...]:
    """The cross part, then each isolated position with a size: isolated positions are margined alone, so
    each is liquidated against its own equity and requirement (a healthy cross part does not rescue it,
    and it never draws on the cross collateral). Built once per view (:attr:`MarginView.components`)."""
    return view.components


def _components(view: MarginView) -> list[Component]:
    cross_pos = tuple(p for p in view.positions if not p.isolated and p.size != 0)
    iso_margin = {i.instrument: i for i in view.isolated}
    if view.cross_equity_usd is None:
        out = [Component("", view.equity_usd, view.im_usd, view.mm_usd, cross_pos)]
    else:
        out = [Component("", view.cross_equity_usd, view.cross_im_usd or ZERO, view.cross_mm_usd or ZERO, cross_pos)]
    for p in view.positions:
        if p.isolated and p.size != 0 and p.instrument in iso_margin:
            m = iso_margin[p.instrument]
            out.append(Component(p.instrument, m.equity_usd, m.im_usd, m.mm_usd, (p,)))
    return out


def worst_component(parts: Sequence[Component]) -> Component | None:
    """The component furthest from its requirement, by ``equity/IM`` compared by cross-multiplication
    (MM = mm_factor·IM for every component, so this is also the worst against MM); None without positions."""
    worst = None
    for c in parts:
        if not c.positions or c.im_usd <= 0:
            continue
        if worst is None or c.equity_usd * worst.im_usd < worst.equity_usd * c.im_usd:
            worst = c
    return worst


def observation(view: MarginView) -> MarginObservation:
    """What the episode rules see: the worst component — a cross part below zero first (the account's own
    deficit, which ends the episode BANKRUPT), else the furthest from its requirement. An episode starts
    when any component is below its MM and ends RESTORED once every one is at IM·(1 + buffer) or flat."""
    parts = components(view)
    has_positions = any(c.positions for c in parts)
    cross = parts[0]
    c = cross if cross.positions and cross.equity_usd < 0 else worst_component(parts)
    if c is None:
        return MarginObservation(view.equity_usd, view.im_usd, view.mm_usd, view.marks_fresh, view.event_time_ms,
                                 has_positions=has_positions)
    return MarginObservation(c.equity_usd, c.im_usd, c.mm_usd, view.marks_fresh, view.event_time_ms,
                             has_positions=has_positions)


@dataclasses.dataclass(frozen=True)
class OpenPosition:
    account_id: str
    instrument: str
    size: Decimal
    entry_price_usd: Decimal


# ---- what goes out ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Event:
    """One step of a liquidation (``kind``: the suffix of ``LIQUIDATION_EVENT_KIND_*``)."""

    kind: str
    account_id: str
    episode: int
    time_ms: int
    order_id: str = ""
    counterparty: str = ""
    instrument: str = ""
    size: Decimal | None = None
    amount_usd: Decimal | None = None
    fund_balance_usd: Decimal | None = None
    detail: str = ""
    round: int = 0
    slice: int = 0
    price_usd: Decimal | None = None
    side: int = 0            # +1 buy, −1 sell
    reference: str = ""
    settled_revision: int = 0   # a bankruptcy resolution's: the account revision its effects bring the book to
    # STARTED: the margin it was decided on (risk version, account revision, newest mark's event time)
    risk_version: int = 0
    account_revision: int = 0
    marks_time_ms: int = 0


@dataclasses.dataclass(frozen=True)
class Order:
    order_id: str
    account_id: str
    instrument: str
    side: int                # +1 buy, −1 sell
    size: Decimal
    limit_price_usd: Decimal
    bankruptcy_price_usd: Decimal
    episode: int
    slice: int
    reason: str
    time_ms: int
    mark_time_ms: int        # event time of the newest mark when planned (latency metric)
    risk_version: int = 0    # the margin it was planned on: risk-parameter version and account revision,
    account_revision: int = 0
    margin_marks_ms: int = 0  # and the event time of the newest mark of the market it was computed at


@dataclasses.dataclass(frozen=True)
class DepositOut:
    event_id: str
    account_id: str
    asset: str
    amount: Decimal
    time_ms: int


@dataclasses.dataclass(frozen=True)
class FundSnapshot:
    balance_usd: Decimal
    high_water_usd: Decimal
    updated_ms: int
    revision: int
    applied_offsets: dict[str, int]
    recent_ids: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class FundChange:
    time_ms: int
    kind: str
    account_id: str
    delta_usd: Decimal
    balance_usd: Decimal
    reference: str


# ---- ports --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Rechecked:
    """A fresh margin of one account and the IM relief (≥ 0) of closing each of its cross positions alone,
    in the order of the view's cross positions with a size."""

    view: MarginView
    relief_usd: tuple[Decimal, ...]


class MarginPort(Protocol):
    def explain(self, account_id: str) -> MarginView: ...
    def im_after(self, account_id: str, trades: Sequence[tuple[str, Decimal]]) -> Decimal: ...

    def recheck(self, account_ids: Sequence[str]) -> dict[str, Rechecked]:
        """Many accounts at once (the margin service's Recheck); optional: a port without it is read
        account by account with :func:`recheck_alone`."""


def cross_positions(view: MarginView) -> list[PositionView]:
    return [p for p in view.positions if not p.isolated and p.size != 0]


def recheck_alone(margin: MarginPort, account_id: str) -> Rechecked:
    """One account: ``explain`` and a what-if per cross position closing it (the only cross position's
    relief is the cross IM: closing it leaves no cross requirement, no round trip needed)."""
    view = margin.explain(account_id)
    cross = cross_positions(view)
    if len(cross) == 1:
        return Rechecked(view, (view.cross_im_usd if view.cross_im_usd is not None else view.im_usd,))
    return Rechecked(view, tuple(max(view.im_usd - margin.im_after(account_id, [(p.instrument, -p.size)]), ZERO)
                                 for p in cross))


class PositionsPort(Protocol):
    def positions_by_instrument(self, instrument: str) -> list[OpenPosition]: ...
    def positions_of(self, account_id: str) -> list[OpenPosition]: ...


class Publisher(Protocol):
    def publish_events(self, events: Sequence[Event]) -> None:
        """Publish and wait for the broker's acknowledgement."""

    def publish_orders(self, orders: Sequence[Order]) -> None: ...

    def publish_effects(self, fills: Sequence[FillRecord], deposits: Sequence[DepositOut],
                        fund: FundSnapshot | None) -> None:
        """Fills (trades.fills), deposits (account.events) and the fund state (liquidation.fund), acknowledged."""


class FundCache(Protocol):
    def write(self, fund: FundSnapshot) -> None: ...


# ---- instruments --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class InstrumentInfo:
    symbol: str
    kind: Kind
    contract_size: Decimal
    lot_size: Decimal
    tick_size_usd: Decimal


def instrument_infos(universe: Universe) -> dict[str, InstrumentInfo]:
    # repr() of the TOML floats is their shortest decimal form: 0.001 → Decimal("0.001") exactly.
    return {s: InstrumentInfo(s, i.kind, Decimal(repr(i.contract_size)), Decimal(repr(i.lot_size)),
                              Decimal(repr(i.tick_size_usd)))
            for s, i in universe.instruments.items()}


def on_tick(price: float | Decimal, tick: Decimal) -> Decimal:
    """A float price as an exact Decimal on the tick grid (half-even)."""
    value = Decimal(repr(float(price))) if not isinstance(price, Decimal) else price
    return (value / tick).to_integral_value(rounding=ROUND_HALF_EVEN) * tick


# ---- marks and guards ---------------------------------------------------------------------------

class Marks:
    """Latest mark, index and a mark history (for the TWAP) per instrument; admin pauses."""

    def __init__(self, guards: GuardSettings) -> None:
        self.guards = guards
        self.latest: dict[str, MarkSeen] = {}
        self.history: dict[str, collections.deque] = {}
        self.newest_ms = 0
        self.venue_paused = False
        self.paused: set[str] = set()
        # The guard verdict (admin pauses aside) per (instrument, linear), computed once for every account
        # holding the instrument: it depends on the instrument's marks and on the newest mark time alone, so a
        # new mark of the instrument forgets its verdicts, and a newer mark of any instrument forgets them all
        # (staleness and the TWAP's window end are measured to it).
        self._verdicts: dict[tuple[str, bool], GuardVerdict] = {}

    def update(self, marks: Iterable[MarkSeen]) -> None:
        verdicts = self._verdicts
        for m in marks:
            prev = self.latest.get(m.instrument)
            if prev is not None and m.event_time_ms < prev.event_time_ms:
                continue
            self.latest[m.instrument] = m
            hist = self.history.setdefault(m.instrument, collections.deque())
            hist.append((m.event_time_ms, m.mark_usd))
            start = m.event_time_ms - self.guards.twap_window_ms
            while len(hist) > 1 and hist[1][0] <= start:   # keep the price in force at the window's start
                hist.popleft()
            if m.event_time_ms > self.newest_ms:
                self.newest_ms = m.event_time_ms
                verdicts.clear()
            else:
                verdicts.pop((m.instrument, True), None)
                verdicts.pop((m.instrument, False), None)

    def twap(self, instrument: str) -> float | None:
        hist = self.history.get(instrument)
        if not hist:
            return None
        return time_weighted_average([t for t, _ in hist], [p for _, p in hist], self.newest_ms,
                                     self.guards.twap_window_ms)

    def verdict(self, instrument: str, linear: bool = True) -> GuardVerdict:
        """``linear`` false (an option): no mark-vs-index band — an option's mark is its premium and the index
        its underlying's price (ETH puts at 50 against an index of 3,000 were paused for ever); the TWAP band
        of its own mark, staleness and the admin pause still apply."""
        if self.venue_paused or instrument in self.paused:
            return GuardVerdict.PAUSED_ADMIN     # the first guard, with or without a mark
        key = (instrument, linear)
        verdict = self._verdicts.get(key)
        if verdict is None:
            m = self.latest.get(instrument)
            if m is None:
                return GuardVerdict.NO_PRICE
            index = m.index_usd if m.index_usd > 0 and linear else None
            verdict = self._verdicts[key] = instrument_guard(m.mark_usd, m.event_time_ms, index, self.twap(instrument),
                                                             self.newest_ms, self.guards)
        return verdict


# ---- episodes -----------------------------------------------------------------------------------

@dataclasses.dataclass
class Tracked:
    """What the service knows of one account it may act on."""

    account_id: str
    episode: Episode | None = None       # the latest episode (final or live)
    last_number: int = 0
    pending: Call | None = None          # a call not yet acted on
    due_ms: int = 0                      # wall time of the next assessment
    in_flight: bool = False
    rechecks: int = 0
    cooldowns: dict[str, int] = dataclasses.field(default_factory=dict)
    slices_sent: int = 0
    stuck: bool = False                   # max_rounds rounds without a fill: retried slowly, in the queue
    rounds_since_fill: int = 0
    # isolated bankruptcies of this episode resolved, when: each once (its effects carry fixed ids)
    resolved_ms: dict[str, int] = dataclasses.field(default_factory=dict)
    last_equity_usd: Decimal = ZERO
    last_mm_usd: Decimal = ZERO
    quiet_until_ms: int = 0               # a state trigger found nothing to do: not again before this
    # the last bankruptcy resolution, or the last round's fills: no action on a view older than this account
    # revision, until then
    settled_revision: int = 0
    settle_until_ms: int = 0
    planned_revision: int = 0             # the account revision the episode's last round was planned on
    fills_since_plan: int = 0             # fills of the episode's orders read since that round

    @property
    def live(self) -> bool:
        return self.episode is not None and self.episode.state is EpisodeState.LIQUIDATING

    def settle(self, revision: int, time_ms: int) -> None:
        """A bankruptcy resolution (or fills) seen at ``time_ms`` bring the book to ``revision``."""
        if revision > self.settled_revision:
            self.settled_revision, self.settle_until_ms = revision, time_ms + SETTLE_TIMEOUT_MS

    def filled(self, episode: int, time_ms: int) -> None:
        """A fill of an order of ``episode``: the next round waits for a view that holds it (portfolio counts
        one revision per applied fill; other inputs of the account only raise the revision further)."""
        if self.live and self.episode.number == episode and self.planned_revision:
            self.fills_since_plan += 1
            self.settle(self.planned_revision + self.fills_since_plan, time_ms)


FINAL_KINDS = {"RESTORED": EpisodeState.RESTORED, "CLOSED_OUT": EpisodeState.CLOSED_OUT,
               "BANKRUPT": EpisodeState.BANKRUPT}


# ---- the insurance fund ledger ------------------------------------------------------------------

class FundLedger:
    """The fund balance with its exactly-once bookkeeping (applied offsets, recent ids) and a history."""

    def __init__(self, initial_usd: Decimal, recent_max: int, history_max: int) -> None:
        self.fund = InsuranceFund(initial_usd)
        self.high_water = initial_usd
        self.revision = 0
        self.updated_ms = 0
        self.applied: dict[str, int] = {}
        self.recent: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.recent_max = recent_max
        self.history: collections.deque[FundChange] = collections.deque(maxlen=history_max)

    def restore(self, snap: FundSnapshot) -> None:
        self.fund = InsuranceFund(snap.balance_usd)
        self.high_water = max(snap.high_water_usd, snap.balance_usd)
        self.revision = snap.revision
        self.updated_ms = snap.updated_ms
        self.applied = dict(snap.applied_offsets)
        self.recent = collections.OrderedDict((i, None) for i in snap.recent_ids)

    @property
    def balance(self) -> Decimal:
        return self.fund.balance_usd

    @property
    def drawdown(self) -> Decimal:
        return self.high_water - self.fund.balance_usd

    def seen(self, key: str) -> bool:
        return key in self.recent

    def already_applied(self, topic: str, partition: int, offset: int) -> bool:
        return offset <= self.applied.get(f"{topic}:{partition}", -1)

    def mark_offset(self, topic: str, partition: int, offset: int) -> None:
        key = f"{topic}:{partition}"
        self.applied[key] = max(self.applied.get(key, -1), offset)

    def _remember(self, key: str) -> None:
        self.recent[key] = None
        while len(self.recent) > self.recent_max:
            self.recent.popitem(last=False)

    def credit(self, key: str, amount: Decimal, now_ms: int, kind: str, account: str, reference: str) -> None:
        self.fund = self.fund.apply_fee(amount)
        self.high_water = max(self.high_water, self.fund.balance_usd)
        self._changed(key, amount, now_ms, kind, account, reference)

    def debit(self, key: str, amount: Decimal, now_ms: int, kind: str, account: str, reference: str) -> None:
        """Pay ``amount`` (≤ balance: the caller sized it with ``InsuranceFund.cover``)."""
        coverage = self.fund.cover(amount)
        if coverage.uncovered_usd != 0:
            raise ValueError(f"the fund cannot pay {amount} (balance {self.fund.balance_usd})")
        self.fund = coverage.fund
        self._changed(key, -amount, now_ms, kind, account, reference)

    def _changed(self, key: str, delta: Decimal, now_ms: int, kind: str, account: str, reference: str) -> None:
        self._remember(key)
        self.revision += 1
        self.updated_ms = now_ms
        self.history.append(FundChange(now_ms, kind, account, delta, self.fund.balance_usd, reference))

    def snapshot(self) -> FundSnapshot:
        return FundSnapshot(self.fund.balance_usd, self.high_water, self.updated_ms, self.revision,
                            dict(self.applied), tuple(self.recent))


# ---- the engine ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class EngineSettings:
    plan: PlanSettings
    guards: GuardSettings
    fund: FundSettings
    max_attempts_per_round: int = 3
    round_interval_ms: int = 1000
    max_rounds: int = 100
    house_account: str = "house"
    settlement_asset: str = "USDC"
    history: int = 10_000
    min_slippage_fraction: Decimal = Decimal("0.001")


@dataclasses.dataclass(frozen=True)
class Assessment:
    """What a worker read for one account: a fresh margin, relief per cross position, ADL candidates."""

    account_id: str
    view: MarginView | None = None
    relief_usd: tuple[Decimal, ...] = ()            # IM relief of closing each cross position (≥ 0)
    candidates: dict[str, list[AdlCandidate]] = dataclasses.field(default_factory=dict)
    error: str = ""


class LiquidationEngine:
    def __init__(self, settings: EngineSettings, instruments: dict[str, InstrumentInfo], margin: MarginPort,
                 positions: PositionsPort, publisher: Publisher, fund: FundLedger, fund_cache: FundCache,
                 clock_ms: Callable[[], int], metrics) -> None:
        self.s = settings
        self.instruments = instruments
        self.margin = margin
        self.positions = positions
        self.publisher = publisher
        self.ledger = fund
        self.fund_cache = fund_cache
        self.clock_ms = clock_ms
        self.metrics = metrics
        self.marks = Marks(settings.guards)
        self.accounts: dict[str, Tracked] = {}
        self.states: dict[str, StateSeen] = {}
        # The rest of margin.state: the equity of each account not decoded whole (see ``needs_state``), for ADL.
        self.equities: dict[str, Decimal] = {}
        self.events: collections.deque[Event] = collections.deque(maxlen=settings.history)
        self._batch: tuple[list[Event], list[Order]] | None = None
        # bankruptcy resolutions decided, not yet acknowledged: (fills, deposits, fund snapshot, events)
        self._unsent: list[tuple[list[FillRecord], list[DepositOut], FundSnapshot | None, list[Event]]] = []

    # ---- restart
    def rebuild(self, events: Iterable[Event]) -> None:
        """Episodes, slices, pauses and history from ``liquidation.events`` (read from the beginning)."""
        for e in events:
            self._remember_event(e)
            if e.settled_revision and e.account_id:
                self._tracked(e.account_id).settle(e.settled_revision, e.time_ms)
            if e.kind == "ADMIN_PAUSED":
                self._pause(e.instrument, True)
                continue
            if e.kind == "ADMIN_RESUMED":
                self._pause(e.instrument, False)
                continue
            if not e.account_id or e.episode <= 0:
                continue
            t = self._tracked(e.account_id)
            ep = t.episode
            if e.kind == "STARTED" and (ep is None or e.episode > ep.number):
                t.episode = Episode(e.account_id, e.episode, EpisodeState.LIQUIDATING, e.time_ms)
                t.last_number = max(t.last_number, e.episode)
                t.slices_sent = 0
                t.resolved_ms = {}
                continue
            if (e.kind in FINAL_KINDS or e.kind in RESOLUTION_KINDS) and (ep is None or e.episode > ep.number):
                # a resolution's events can precede the episode's STARTED on the topic (logs written before they
                # were ordered): the episode is known from them
                ep = t.episode = Episode(e.account_id, e.episode, EpisodeState.LIQUIDATING, e.time_ms)
                t.last_number = max(t.last_number, e.episode)
                t.slices_sent = 0
                t.resolved_ms = {}
            if ep is None or ep.number != e.episode:
                continue
            if e.kind == "ORDER_SENT":
                t.episode = ep.evolve(next_slice=max(ep.next_slice, e.slice + 1),
                                      round_number=max(ep.round_number, e.round))
                t.slices_sent += 1
            elif e.kind in RESOLUTION_KINDS and e.instrument and ep.state is EpisodeState.LIQUIDATING:
                # in a live episode these are an isolated part's (a cross bankruptcy ends the episode first)
                t.resolved_ms.setdefault(e.instrument, e.time_ms)
            elif e.kind in FINAL_KINDS:
                t.episode = ep.evolve(state=FINAL_KINDS[e.kind], ended_ms=e.time_ms,
                                      deficit_usd=e.amount_usd or ZERO if e.kind == "BANKRUPT" else ZERO)
        for t in self.accounts.values():
            if t.live:
                t.due_ms = 0   # a live episode goes on at once
        self.refresh_gauges()

    def seed_pending_from_states(self) -> int:
        """After a restart: accounts whose latest margin.state is LIQUIDATION/BANKRUPT on fresh marks are
        pending (a call committed before the crash but not yet acted on is not lost)."""
        n = 0
        for s in self.states.values():
            if s.state in (LIQUIDATION, BANKRUPT) and s.marks_fresh:
                t = self._tracked(s.account_id)
                if not t.live and t.pending is None:
                    t.pending = Call(s.account_id, s.state, True, 0, 0, s.event_time_ms)
                    n += 1
        return n

    def _tracked(self, account_id: str) -> Tracked:
        t = self.accounts.get(account_id)
        if t is None:
            t = self.accounts[account_id] = Tracked(account_id)
        return t

    # ---- inputs
    def on_marks(self, marks: Sequence[MarkSeen]) -> None:
        self.marks.update(marks)

    def needs_state(self, account_id: str, state: int) -> bool:
        """Whether a published margin.state of ``account_id`` in ``state`` is of use decoded whole: a
        trigger (LIQUIDATION/BANKRUPT) or an account this service tracks. The others (after a mark move, all
        but a few of every account's republished states) need only their equity (:meth:`on_equities`)."""
        return state in (LIQUIDATION, BANKRUPT) or account_id in self.accounts

    def on_equities(self, equities: Iterable[tuple[str, Decimal]]) -> None:
        """The equity alone of accounts whose margin.state is of no other use (see :meth:`needs_state`)."""
        states = self.states
        for account_id, equity in equities:
            self.equities[account_id] = equity
            if account_id in states:
                del states[account_id]

    def equity_of(self, account_id: str) -> Decimal | None:
        """The account's equity as last published (margin.state), None when none was seen."""
        s = self.states.get(account_id)
        return s.equity_usd if s is not None else self.equities.get(account_id)

    def on_states(self, states: Sequence[StateSeen]) -> None:
        """The last margin of every account; and a trigger besides ``margin.calls``: a published
        LIQUIDATION/BANKRUPT below MM on fresh marks with no episode running makes the account pending.
        The margin service leaves LIQUIDATION only at IM·(1 + its exit buffer) and after its dwell, while an
        episode ends RESTORED at IM·(1 + this service's buffer): an account that falls below MM again before
        its published state changed gets no new call, and would otherwise never be liquidated again."""
        now = self.clock_ms()
        for s in states:
            self.states[s.account_id] = s
            self.equities.pop(s.account_id, None)
            t = self.accounts.get(s.account_id)
            if t is not None and t.live:
                t.last_equity_usd, t.last_mm_usd = s.equity_usd, s.mm_usd
                continue
            if (s.below_mm and s.marks_fresh and s.state in (LIQUIDATION, BANKRUPT)
                    and s.account_id != self.s.house_account):
                t = self._tracked(s.account_id)
                if t.pending is None and not t.in_flight and not t.stuck and now >= t.quiet_until_ms:
                    t.pending = Call(s.account_id, s.state, True, 0, 0, s.event_time_ms)
                    t.rechecks = 0
                    t.due_ms = now

    def on_calls(self, calls: Sequence[Call]) -> None:
        now = self.clock_ms()
        out: list[Event] = []
        for c in calls:
            if c.account_id == self.s.house_account or c.state not in (LIQUIDATION, BANKRUPT):
                continue
            t = self._tracked(c.account_id)
            if not c.marks_fresh:
                out.append(Event("SKIPPED_STALE_MARK", c.account_id, t.episode.number if t.live else 0, now,
                                 detail="margin call on stale marks: no action"))
                continue
            if t.live:
                t.due_ms = min(t.due_ms, now) if t.due_ms else now
                continue
            t.pending = c
            t.rechecks = 0
            t.due_ms = now
            t.stuck = False
        self._emit(out)

    def on_fills(self, fills: Sequence[FillSeen]) -> int:
        """Fees of our liquidation fills to the fund, once per fill id; returns how many were credited."""
        now = self.clock_ms()
        events: list[Event] = []
        credited = 0
        touched = False
        for f in fills:
            if self.ledger.already_applied(f.topic, f.partition, f.offset):
                continue
            self.ledger.mark_offset(f.topic, f.partition, f.offset)
            touched = True
            if not f.liquidation or not f.order_id.startswith("liq-"):
                continue
            try:
                account, episode, slice_number = parse_order_id(f.order_id)
            except ValueError:
                continue
            if account != f.account_id:
                continue   # the house side of the fill
            key = f"f:{f.fill_id}"
            if self.ledger.seen(key):
                continue
            self.metrics.fill()
            info = self.instruments.get(f.instrument)
            cap = self.s.plan.fee_rate * f.size * (info.contract_size if info else Decimal(1)) * f.price_usd
            fee = cents_toward_floor(min(max(f.fee_usd, ZERO), cap))
            events.append(Event("ORDER_FILLED", account, episode, now, order_id=f.order_id, instrument=f.instrument,
                                size=f.size, price_usd=f.price_usd, side=f.side, slice=slice_number,
                                reference=f.fill_id))
            if fee > 0:
                self.ledger.credit(key, fee, now, "FEE_TO_FUND", account, f.fill_id)
                credited += 1
                events.append(Event("FEE_TO_FUND", account, episode, now, order_id=f.order_id,
                                    instrument=f.instrument, amount_usd=fee, fund_balance_usd=self.ledger.balance,
                                    reference=f.fill_id))
            else:
                self.ledger._remember(key)
            t = self.accounts.get(account)
            if t is not None and t.live:
                t.rounds_since_fill, t.stuck = 0, False   # progress: the bound counts rounds without a fill
                t.filled(episode, now)
                # The fill moves the account: look again soon, once portfolio and margin have it.
                t.due_ms = min(t.due_ms, now + self.s.round_interval_ms // 2) if t.due_ms else now
        if touched:
            snap = self.ledger.snapshot()
            self.publisher.publish_effects((), (), snap)
            self.fund_cache.write(snap)
        self._emit(events)
        self._fund_gauges()
        return credited

    # ---- which accounts to look at now
    def due(self, now_ms: int, limit: int) -> list[str]:
        """At most ``limit`` accounts to assess now (marked in flight): first the calls not acted on yet
        (an account below MM that no episode covers yet is the venue's largest open risk), then the live
        episodes' next rounds, each group longest-due first — so that when thousands of accounts are in
        liquidation at once, the rounds of the first episodes never starve the accounts called after them."""
        ready = [(0 if t.pending is not None and not t.live else 1, t.due_ms, t.account_id)
                 for t in self.accounts.values()
                 if not t.in_flight and (t.live or t.pending is not None) and t.due_ms <= now_ms]
        out = [account_id for _first, _due, account_id in heapq.nsmallest(limit, ready)]
        for account_id in out:
            self.accounts[account_id].in_flight = True
        return out

    # ---- worker thread: reads only
    def assess(self, account_id: str) -> Assessment:
        return self.assess_many([account_id])[0]

    def assess_many(self, account_ids: Sequence[str]) -> list[Assessment]:
        """The accounts' fresh margins and reliefs in one read of the margin service (its Recheck), then
        what a bankrupt one needs for ADL; one assessment per account, in order."""
        batch = getattr(self.margin, "recheck", None)
        if batch is None:
            read: dict[str, Rechecked | str] = {}
            for account_id in account_ids:
                try:
                    read[account_id] = recheck_alone(self.margin, account_id)
                except Exception as exc:  # noqa: BLE001 - one account's failure never stalls the others
                    read[account_id] = f"margin re-check failed: {exc}"
        else:
            try:
                read = dict(batch(list(account_ids)))
            except Exception as exc:  # noqa: BLE001 - retried after the back-off
                return [Assessment(a, error=f"margin re-check failed: {exc}") for a in account_ids]
        out = []
        for account_id in account_ids:
            r = read.get(account_id)
            if r is None or isinstance(r, str):
                out.append(Assessment(account_id, error=r or "margin re-check: account not returned"))
            else:
                out.append(self._assessed(account_id, r))
        return out

    def _assessed(self, account_id: str, r: Rechecked) -> Assessment:
        view = r.view
        t = self.accounts.get(account_id)
        live = t is not None and t.live
        parts = components(view)
        worst = worst_component(parts)
        # Not acted on: above MM before an episode, restored during one, or stale marks (no action at all).
        if not view.marks_fresh or worst is None or (not worst.below_mm and not live) \
                or worst.equity_usd >= worst.im_usd * (1 + self.s.plan.margin_buffer_fraction):
            return Assessment(account_id, view)
        if len(r.relief_usd) != len(cross_positions(view)):
            return Assessment(account_id, view, error="margin re-check: reliefs do not match the cross positions")
        bankrupt = [c for c in parts if c.positions and c.equity_usd < 0]
        if bankrupt:
            candidates: dict[str, list[AdlCandidate]] = {}
            try:
                for c in bankrupt:
                    for p in c.positions:
                        candidates[p.instrument] = self.adl_candidates(p.instrument, exclude=account_id)
            except Exception as exc:  # noqa: BLE001
                return Assessment(account_id, view, error=f"positions for ADL failed: {exc}")
            return Assessment(account_id, view, r.relief_usd, candidates)
        return Assessment(account_id, view, r.relief_usd)

    def adl_candidates(self, instrument: str, exclude: str = "") -> list[AdlCandidate]:
        """Open positions of ``instrument`` (portfolio) with their account's equity (margin.state)."""
        info = self.instruments[instrument]
        mark = self.marks.latest.get(instrument)
        if mark is None:
            return []
        mark_usd = on_tick(mark.mark_usd, info.tick_size_usd)
        out = []
        for p in self.positions.positions_by_instrument(instrument):
            if p.account_id in (exclude, self.s.house_account) or p.size == 0:
                continue
            equity = self.equity_of(p.account_id)
            if equity is None:
                continue
            out.append(AdlCandidate(p.account_id, p.size, p.entry_price_usd, mark_usd, info.contract_size, equity))
        return out

    # ---- loop thread: decisions and effects
    def act_many(self, assessments: Sequence[Assessment]) -> int:
        """Act on the assessments in order and publish what they decided as one batch (all the events,
        acknowledged, then all the orders): the re-checks answered by the same turn cost two
        acknowledgements, not two each. Should acting fail, the accounts not reached yet are assessed
        again (not left in flight). Returns how many were acted on."""
        done = 0
        self.begin_batch()
        try:
            for a in assessments:
                self.act(a)
                done += 1
        finally:
            for a in assessments[done:]:
                t = self.accounts.get(a.account_id)
                if t is not None:
                    t.in_flight = False
            self.end_batch()
        return done

    def act(self, a: Assessment) -> None:
        t = self._tracked(a.account_id)
        t.in_flight = False
        now = self.clock_ms()
        if a.error or a.view is None:
            self.metrics.error("assess")
            log.warning("liquidation assessment failed", extra={"account": a.account_id, "error": a.error})
            t.due_ms = now + FAILURE_BACKOFF_MS
            return
        v = a.view
        t.last_equity_usd, t.last_mm_usd = v.equity_usd, v.mm_usd
        if v.revision < t.settled_revision and now < t.settle_until_ms:
            # the view does not hold the last resolution's or round's fills yet: read again once portfolio and
            # margin do
            t.due_ms = now + SETTLE_POLL_MS
            return
        if not t.live:
            self._maybe_start(t, a, now)
            if not t.live:
                return
        self._advance(t, a, now)

    def _maybe_start(self, t: Tracked, a: Assessment, now: int) -> None:
        v, call = a.view, t.pending
        if call is None:
            return
        if not v.marks_fresh:
            self._emit([Event("SKIPPED_STALE_MARK", t.account_id, 0, now, detail="margin on stale marks at recheck")])
            t.pending = None
            return
        older = v.risk_version < call.risk_version or v.revision < call.revision
        if older and t.rechecks < RECHECK_TRIES:
            if t.rechecks == 0:
                log.info("margin read older than the call; reading again", extra={
                    "account": t.account_id, "risk_version": v.risk_version, "call_risk_version": call.risk_version,
                    "revision": v.revision, "call_revision": call.revision})
            t.rechecks += 1
            t.due_ms = now + RECHECK_DELAY_MS
            return
        obs = observation(v)
        episode = start(t.account_id, obs, t.last_number)
        t.pending = None
        if episode is None:
            t.quiet_until_ms = now + STATE_TRIGGER_QUIET_MS
            self._emit([Event("RECHECK_HEALTHY", t.account_id, 0, now, amount_usd=obs.equity_usd,
                              detail=f"equity {obs.equity_usd} ≥ MM {obs.mm_usd} at the moment of acting")])
            return
        t.episode, t.last_number = episode, episode.number
        t.cooldowns, t.slices_sent, t.stuck, t.rounds_since_fill, t.resolved_ms = {}, 0, False, 0, {}
        self.metrics.episode("started")
        worst = worst_component(components(v))
        where = f"isolated {worst.instrument}" if worst is not None and worst.isolated else "cross"
        self._emit([Event("STARTED", t.account_id, episode.number, now, amount_usd=obs.equity_usd,
                          instrument=worst.instrument if worst is not None else "",
                          detail=f"{where}: equity {obs.equity_usd} < MM {obs.mm_usd} (IM {obs.im_usd}), "
                                 f"risk v{v.risk_version}",
                          risk_version=v.risk_version, account_revision=v.revision, marks_time_ms=v.event_time_ms)])

    def _advance(self, t: Tracked, a: Assessment, now: int) -> None:
        v, ep = a.view, t.episode
        t.due_ms = now + self.s.round_interval_ms
        if not v.marks_fresh:
            self._emit([Event("SKIPPED_STALE_MARK", t.account_id, ep.number, now, detail="margin on stale marks")])
            return
        parts = components(v)
        cross = parts[0]
        negative = [c for c in parts[1:] if c.equity_usd < 0]
        if negative and cross.equity_usd >= 0:
            # an isolated position below zero: its deficit to the fund (then ADL); the episode goes on
            iso_bankrupt = [c for c in negative if c.instrument not in t.resolved_ms]
            if not iso_bankrupt:
                return   # resolved already: the next round, once portfolio and margin have its fills
            if not all(p.instrument in a.candidates for c in iso_bankrupt for p in c.positions):
                t.due_ms = now   # assessed without the bankruptcy inputs (a race): read again
                return
            t.resolved_ms.update((c.instrument, now) for c in iso_bankrupt)   # decided: never again, even if
            self._resolve_bankruptcy(t, a, ep, now, iso_bankrupt)             # publishing it has to be retried
            return
        obs = observation(v)
        new = observe(t.account_id, ep, obs, t.last_number, self.s.plan.margin_buffer_fraction)
        if new is not ep and new.state is EpisodeState.BANKRUPT:
            if not a.relief_usd and cross.positions:
                t.due_ms = now   # an assessment without the bankruptcy inputs (a race): read again
                return
            self._resolve_bankruptcy(t, a, new, now, [c for c in parts if c.equity_usd < 0 and c.positions])
            return
        if new is not ep:
            t.episode = new
            kind = "RESTORED" if new.state is EpisodeState.RESTORED else "CLOSED_OUT"
            self.metrics.episode(kind.lower())
            self._emit([Event(kind, t.account_id, new.number, now, amount_usd=v.equity_usd,
                              detail=f"equity {v.equity_usd}, IM {v.im_usd}; every part at IM·(1 + buffer) "
                                     f"or closed")])
            return
        if t.rounds_since_fill >= self.s.max_rounds:
            # No fill in max_rounds rounds: left to the operator (the queue, the age alert), but never dropped —
            # one round every STUCK_RETRY_MS (a market that moved may fill it), and the assessment above still
            # ends the episode when the account is restored or resolves it when it goes below zero.
            t.due_ms = now + STUCK_RETRY_MS
            if not t.stuck:
                t.stuck = True
                self._emit([Event("ROUND_EXHAUSTED", t.account_id, ep.number, now, round=ep.round_number,
                                  detail=f"{self.s.max_rounds} rounds without a fill: left to the operator, "
                                         f"retried every {STUCK_RETRY_MS // 1000} s")])
                return
        self._round(t, a, now)

    def _position_states(self, t: Tracked, a: Assessment, part: Component, now: int
                         ) -> tuple[list[PositionState], list[Decimal], list[Event]]:
        """The positions of ``part`` the guards let us act on (with their MM shares and full-close IM reliefs)
        and the guard events. Cross positions share the cross MM in proportion to their relief (the WhatIf
        of closing each); an isolated position carries its own MM and its whole IM as relief."""
        if part.isolated:
            reliefs = [part.im_usd]
        else:
            reliefs = list(a.relief_usd)
        total = sum(reliefs, ZERO)
        states, relief_full, events = [], [], []
        for i, p in enumerate(part.positions):
            info = self.instruments.get(p.instrument)
            verdict = self.marks.verdict(p.instrument, linear=info is None or info.kind in LINEAR_KINDS)
            if info is None or verdict is not GuardVerdict.ACT:
                self.metrics.guard_pause(verdict.value if info else "unknown_instrument")
                events.append(Event("GUARD_PAUSED", t.account_id, t.episode.number, now, instrument=p.instrument,
                                    detail=verdict.value))
                continue
            share = reliefs[i] / total if total > 0 else Decimal(1) / len(part.positions)
            mark = self.marks.latest[p.instrument]
            states.append(PositionState(p.instrument, info.kind, p.size, info.contract_size,
                                        on_tick(mark.mark_usd, info.tick_size_usd), part.mm_usd * share,
                                        info.lot_size, info.tick_size_usd))
            relief_full.append(reliefs[i])
        return states, relief_full, events

    def _round(self, t: Tracked, a: Assessment, now: int) -> None:
        v = a.view
        parts = components(v)
        if len(a.relief_usd) != len(parts[0].positions):
            t.due_ms = now   # assessed before the episode started (no reliefs read): assess again
            return
        ep = begin_round(t.episode)
        events: list[Event] = []
        intents, restores = [], True
        buffer = 1 + self.s.plan.margin_buffer_fraction
        for part in parts:
            if not part.positions or part.equity_usd >= part.im_usd * buffer:
                continue   # this part is restored (or flat): nothing of it is sold
            states, relief_full, guard_events = self._position_states(t, a, part, now)
            events += guard_events
            if not states:
                continue
            account = AccountState(t.account_id, part.equity_usd, part.im_usd, part.mm_usd, tuple(states))

            def relief(i: int, x: Decimal, states=states, relief_full=relief_full) -> float:
                size = abs(states[i].size_contracts)
                return float(relief_full[i] * x / size) if size > 0 else 0.0

            plan = plan_round(account, relief, self.marks.newest_ms or now, self.s.plan, t.cooldowns)
            t.cooldowns = {**t.cooldowns, **plan.cooldown_until_ms}
            restores = restores and plan.restores
            intents += [self._crossing(states[i.position_index], i) for i in plan.intents]
        sent = []
        for k, intent in enumerate(intents):
            ep, ok = record_attempt(ep, self.s.max_attempts_per_round)
            if not ok:
                events.append(Event("ROUND_EXHAUSTED", t.account_id, ep.number, now, round=ep.round_number,
                                    detail=f"{len(intents) - k} slices left to the next round"))
                break
            sent.append(intent)
        ep, ids = allocate_slices(ep, len(sent))
        t.episode = ep
        t.rounds_since_fill += 1 if sent else 0
        if sent:
            t.planned_revision, t.fills_since_plan = v.revision, 0
        orders = []
        for intent, oid in zip(sent, ids):
            _acct, _ep, slice_number = parse_order_id(oid)
            side = 1 if intent.side is OrderSide.BUY else -1
            orders.append(Order(oid, t.account_id, intent.instrument, side, intent.size_contracts,
                                intent.limit_price_usd, intent.bankruptcy_price_usd, ep.number, slice_number,
                                "restore" if restores else "close_out", now, self.marks.newest_ms,
                                v.risk_version, v.revision, v.event_time_ms))
            events.append(Event("ORDER_SENT", t.account_id, ep.number, now, order_id=oid, instrument=intent.instrument,
                                size=intent.size_contracts, price_usd=intent.limit_price_usd, side=side,
                                round=ep.round_number, slice=slice_number,
                                detail=f"IOC reduce-only, bankruptcy {intent.bankruptcy_price_usd}"))
        # Events first (acknowledged), then the orders: every order id on the wire has its ORDER_SENT event,
        # which is what a restarted service rebuilds its slice numbers from.
        self._emit(events)
        if orders:
            self._send(orders)
            t.slices_sent += len(orders)

    def _crossing(self, p: PositionState, intent):
        """The intent with a limit that crosses the book: at least ``half_spread + min_slippage`` from the mark.

        Above MM (an episode continues to IM·(1+buffer)) the dYdX fillable price is the mark itself. The mark
        sits mid-book, so the best opposite level is half a spread away: a fixed ``min_slippage`` smaller than
        the instrument's half-spread (options quote far wider than 0.1 %) gives an IOC that never fills and an
        episode that never ends. The limit is widened to ``mark·(1 ∓ (h + min_slippage))`` on the tick grid
        (h = the mark's half-spread fraction), never beyond the bankruptcy price, and never narrower than the
        fillable price.
        """
        s = self.s.min_slippage_fraction
        seen = self.marks.latest.get(p.instrument)
        h = Decimal(repr(seen.half_spread_fraction)) if seen is not None and seen.half_spread_fraction > 0 else ZERO
        s += h
        if s <= 0:
            return intent
        if intent.side is OrderSide.SELL:
            wide = round_limit_to_tick(p.mark_price_usd * (1 - s), p.tick_size_usd, -1)   # down: sells lower
            limit = max(min(intent.limit_price_usd, wide), intent.bankruptcy_price_usd)
        else:
            wide = round_limit_to_tick(p.mark_price_usd * (1 + s), p.tick_size_usd, 1)    # up: buys higher
            limit = min(max(intent.limit_price_usd, wide), intent.bankruptcy_price_usd)
        return dataclasses.replace(intent, limit_price_usd=limit)

    def _resolve_bankruptcy(self, t: Tracked, a: Assessment, new: Episode, now: int,
                            parts: Sequence[Component]) -> None:
        """Fund first (a Deposit of the loss of the part it takes over, closed at the mark against the house),
        then ADL at the bankruptcy price against the ranked opposite positions; each part ends at ≥ 0.

        ``parts``: the components below zero — the cross part (the episode ends BANKRUPT) and/or isolated
        positions (each alone: its bankruptcy price from its own equity and MM; the episode goes on)."""
        v = a.view
        acct, n = t.account_id, new.number
        fund = self.ledger.fund
        fills: list[FillRecord] = []
        events: list[Event] = []
        deposits: list[DepositOut] = []
        snap = None
        for part in parts:
            paid = self._resolve_part(acct, n, part, a, fund, fills, events, now)
            fund = self.ledger.fund
            # one deposit per episode and part: the id says which, so a redo pays nothing twice
            suffix = f"-{part.instrument}" if part.isolated else ""
            key = f"d:{acct}:{n}{suffix}"
            if not self.ledger.seen(key):
                amount = min(cents_toward_ceiling(paid), self.ledger.balance)
                if amount > 0:
                    eid = f"liq-fund-{acct}-{n}{suffix}"
                    deposits.append(DepositOut(eid, acct, self.s.settlement_asset, amount, now))
                    self.ledger.debit(key, amount, now, "DEFICIT_COVERED", acct, eid)
                    events.append(Event("DEFICIT_COVERED", acct, n, now, amount_usd=amount, instrument=part.instrument,
                                        fund_balance_usd=self.ledger.balance, reference=eid,
                                        detail=f"deficit {-part.equity_usd}: the fund paid {amount}"))
                else:
                    self.ledger._remember(key)
                snap = self.ledger.snapshot()
            fund = self.ledger.fund
        if new.state is EpisodeState.BANKRUPT:
            t.episode = new   # decided before anything is published: a failed publish is retried, never redone
            self.metrics.episode("bankrupt")
        # portfolio applies each of the account's own fills and its deposit once: the revision a view must reach
        settled = v.revision + sum(f.account_id == acct for f in fills) + sum(d.account_id == acct for d in deposits)
        t.settle(settled, now)
        events = [dataclasses.replace(e, settled_revision=settled) if e.account_id == acct else e for e in events]
        self._unsent.append((fills, deposits, snap, events))
        self.flush_resolutions()
        self._fund_gauges()

    def flush_resolutions(self) -> None:
        """Publish the bankruptcy resolutions decided but not yet acknowledged, oldest first, the same records
        each time (a broker timeout raises here, and the next turn tries again before anything else is done).
        Effects first (idempotent by their ids), then the events: a crash in between redoes the same effects."""
        if self._unsent and self._batch is not None and self._batch[0]:
            # the events of the turn so far (an episode's STARTED) go before the resolution's: a restart
            # rebuilds episodes in the topic's order
            self.publisher.publish_events(self._batch[0])
            self._batch[0].clear()
        while self._unsent:
            fills, deposits, snap, events = self._unsent[0]
            self.publisher.publish_effects(fills, deposits, snap)
            if snap is not None:
                self.fund_cache.write(snap)
            if events:
                self.publisher.publish_events(events)
            self._unsent.pop(0)
            for e in events:
                self.events.append(e)

    def _resolve_part(self, acct: str, n: int, part: Component, a: Assessment, fund: InsuranceFund,
                      fills: list[FillRecord], events: list[Event], now: int) -> Decimal:
        """Fills and events closing one bankrupt part; returns what the fund is to pay (USD, unrounded)."""
        if part.isolated:
            reliefs = [part.im_usd]
            tag_of = lambda i: f"{acct}-{n}-{part.instrument}"  # noqa: E731 - one position per isolated part
        else:
            reliefs = list(a.relief_usd)
            tag_of = lambda i: f"{acct}-{n}-{i}"  # noqa: E731 - the index among the cross positions
        total = sum(reliefs, ZERO)
        if not part.isolated:
            # BANKRUPT ends the episode (a restart rebuilds it as final); an isolated position's bankruptcy is
            # told by its FUND_TAKEOVER / ADL / DEFICIT_COVERED events, which name the instrument
            events.append(Event("BANKRUPT", acct, n, now, amount_usd=-part.equity_usd,
                                detail=f"equity {part.equity_usd} < 0: deficit to the fund, then ADL"))
        paid_total = ZERO
        for i, p in enumerate(part.positions):
            info = self.instruments.get(p.instrument)
            mark_seen = self.marks.latest.get(p.instrument)
            if info is None or mark_seen is None:
                events.append(Event("UNCOVERED", acct, n, now, instrument=p.instrument, size=p.size,
                                    detail="no mark for the instrument: left open"))
                continue
            mark = on_tick(mark_seen.mark_usd, info.tick_size_usd)
            share = reliefs[i] / total if total > 0 else Decimal(1) / len(part.positions)
            # TNC and TMMR of the part (dYdX's bankruptcy price): an isolated position against its own
            risk = PositionRisk(p.size, info.contract_size, mark, part.mm_usd * share, part.equity_usd, part.mm_usd)
            side = 1 if p.size > 0 else -1
            b = round_limit_to_tick(bankruptcy_price(risk), info.tick_size_usd, side)
            res = resolve_bankruptcy(p.size, info.contract_size, mark, b, info.lot_size, fund,
                                     a.candidates.get(p.instrument, ()), self.s.fund, paid_total)
            fund = res.coverage.fund
            paid_total += res.coverage.paid_usd
            close = -side   # the closing trade's side
            tag = tag_of(i)
            if res.fund_takeover_contracts > 0:
                fills += [FillRecord(f"liqbk-{tag}-t", acct, p.instrument, close, res.fund_takeover_contracts, mark,
                                  ZERO, True, f"liqbk-{tag}", now),
                          FillRecord(f"liqbk-{tag}-t-h", self.s.house_account, p.instrument, -close,
                                  res.fund_takeover_contracts, mark, ZERO, True, f"liqbk-{tag}", now)]
                events.append(Event("FUND_TAKEOVER", acct, n, now, instrument=p.instrument,
                                    size=res.fund_takeover_contracts, price_usd=mark, side=close,
                                    amount_usd=res.coverage.paid_usd, reference=f"liqbk-{tag}-t",
                                    detail=f"closed at the mark {mark} (bankruptcy {b}); loss paid by the fund"))
            for k, f in enumerate(res.adl_fills):
                fills += [FillRecord(f"adl-{tag}-{k}", acct, p.instrument, close, f.size_contracts, f.price_usd, ZERO,
                                  True, f"adl-{tag}", now),
                          FillRecord(f"adl-{tag}-{k}-c", f.account_id, p.instrument, side, f.size_contracts,
                                  f.price_usd, ZERO, True, f"adl-{tag}", now)]
                events.append(Event("ADL", acct, n, now, counterparty=f.account_id, instrument=p.instrument,
                                    size=f.size_contracts, price_usd=f.price_usd, side=close,
                                    amount_usd=f.size_contracts * info.contract_size * f.price_usd,
                                    reference=f"adl-{tag}-{k}",
                                    detail=f"deleveraged at the bankruptcy price; counterparty PnL {f.realized_pnl_usd}"))
                self.metrics.adl()
            if res.unmatched_contracts > 0:
                loss = res.unmatched_contracts * info.contract_size * abs(mark - b)
                fills += [FillRecord(f"liqbk-{tag}-u", acct, p.instrument, close, res.unmatched_contracts, mark, ZERO,
                                  True, f"liqbk-{tag}", now),
                          FillRecord(f"liqbk-{tag}-u-h", self.s.house_account, p.instrument, -close,
                                  res.unmatched_contracts, mark, ZERO, True, f"liqbk-{tag}", now)]
                events.append(Event("UNCOVERED", acct, n, now, instrument=p.instrument, size=res.unmatched_contracts,
                                    amount_usd=loss, detail="no opposite position left for ADL: closed at the mark"))
        return paid_total

    # ---- admin
    def _pause(self, instrument: str, paused: bool) -> None:
        if not instrument:
            self.marks.venue_paused = paused
        elif paused:
            self.marks.paused.add(instrument)
        else:
            self.marks.paused.discard(instrument)

    def pause(self, instrument: str, paused: bool, reason: str) -> tuple[bool, list[str]]:
        if instrument and instrument not in self.instruments:
            raise ValueError(f"instrument {instrument!r} is not in the universe")
        self._pause(instrument, paused)
        self._emit([Event("ADMIN_PAUSED" if paused else "ADMIN_RESUMED", "", 0, self.clock_ms(),
                          instrument=instrument, detail=reason or ("paused" if paused else "resumed"))])
        self.metrics.paused(self.marks.venue_paused, len(self.marks.paused))
        return self.marks.venue_paused, sorted(self.marks.paused)

    # ---- queries (any thread: copies of small structures)
    def queue(self, limit: int) -> list[Tracked]:
        live = [t for t in list(self.accounts.values()) if t.live]
        live.sort(key=lambda t: (t.episode.started_ms, t.account_id))
        return live[:limit]

    def recent_events(self, account_id: str, limit: int) -> list[Event]:
        out = []
        for e in reversed(list(self.events)):
            if not account_id or e.account_id == account_id or e.counterparty == account_id:
                out.append(e)
                if len(out) >= limit:
                    break
        return out

    def adl_ranks_of_account(self, account_id: str) -> list[tuple[str, Decimal, float, int, int]]:
        """(instrument, size, score, light, rank) of each open position of the account."""
        out = []
        for p in self.positions.positions_of(account_id):
            if p.size == 0 or p.instrument not in self.instruments:
                continue
            cands = self.adl_candidates(p.instrument)
            lights = adl_lights(cands)
            mine = next((c for c in cands if c.account_id == account_id), None)
            if mine is None:
                continue
            same = rank_for_adl(cands, -mine.side)
            rank = next(i for i, c in enumerate(same) if c.account_id == account_id)
            out.append((p.instrument, p.size, adl_score(mine), lights[account_id], rank))
        return out

    def adl_ranks_of_instrument(self, instrument: str, limit: int) -> list[tuple[AdlCandidate, float, int, int]]:
        cands = self.adl_candidates(instrument)
        lights = adl_lights(cands)
        out = []
        for side in (1, -1):
            for rank, c in enumerate(rank_for_adl(cands, -side)[:limit]):
                out.append((c, adl_score(c), lights[c.account_id], rank))
        return out

    # ---- bookkeeping
    def _remember_event(self, e: Event) -> None:
        self.events.append(e)
        if e.kind in ("FEE_TO_FUND", "DEFICIT_COVERED") and e.amount_usd is not None:
            delta = e.amount_usd if e.kind == "FEE_TO_FUND" else -e.amount_usd
            self.ledger.history.append(FundChange(e.time_ms, e.kind, e.account_id, delta,
                                                  e.fund_balance_usd or ZERO, e.reference))

    def _emit(self, events: Sequence[Event]) -> None:
        if not events:
            return
        if self._batch is not None:
            self._batch[0].extend(events)
        else:
            self.publisher.publish_events(events)
        for e in events:
            self.events.append(e)

    def _send(self, orders: Sequence[Order]) -> None:
        if self._batch is not None:
            self._batch[1].extend(orders)
        else:
            self.publisher.publish_orders(orders)
            self.metrics.orders_sent(orders, self.clock_ms())

    def begin_batch(self) -> None:
        """Collect the events and orders of several decisions; :meth:`end_batch` publishes them with one
        acknowledgement each: all the events first, then all the orders (the order of durability holds)."""
        self.flush_resolutions()
        if self._batch is None:
            self._batch = ([], [])

    def end_batch(self) -> int:
        batch, self._batch = self._batch, None
        if batch is None:
            return 0
        events, orders = batch
        if events:
            self.publisher.publish_events(events)
        if orders:
            self.publisher.publish_orders(orders)
            self.metrics.orders_sent(orders, self.clock_ms())
        return len(orders)

    def _fund_gauges(self) -> None:
        self.metrics.fund(self.ledger.balance, self.ledger.drawdown)

    def refresh_gauges(self) -> None:
        now = self.clock_ms()
        ages = [max(0, now - t.episode.started_ms) / 1000.0 for t in self.accounts.values() if t.live]
        self.metrics.episodes(ages)
        self.metrics.paused(self.marks.venue_paused, len(self.marks.paused))
        self._fund_gauges()


def cooldown_mode(name: str) -> CooldownMode:
    return CooldownMode(name)


def monotonic_ms() -> int:
    return int(time.monotonic() * 1000)
