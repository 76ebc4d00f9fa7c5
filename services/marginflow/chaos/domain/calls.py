"""When a margin call or a liquidation order is contradicted.

Marks move all the time, so "recompute and compare" needs care. A ``margin.calls`` record C (account
a, ``previous`` P → ``state`` S, equity e, IM, MM, account revision r, risk version v, event time t) is
**contradicted** when one of these holds:

1. **History** — calls of one account come in key order on one partition, and each one names the
   state published before it; a call is published only on entering a worse state (an improvement is
   published on ``margin.state`` alone). So C.previous must be the state of a's previous call, or a
   better state that is not HEALTHY (the account improved in between without a call; same episode),
   or HEALTHY (a's state went back to HEALTHY in between) — with a higher episode than that call's
   when the service numbers episodes (episode > 0). ``UNSPECIFIED`` (first evaluation) is allowed only for a's first call ever. A
   restarted margin service that forgot what it had published (and re-announces a transition, or
   announces one from a state the account was not in) breaks this rule.
2. **Own numbers** — for an account with no isolated position (its state is then the state of its
   totals), a call entering a worse state (S > P) must be the raw state of its own numbers: BANKRUPT iff
   e < 0, LIQUIDATION iff 0 ≤ e < MM, MARGIN_CALL iff MM ≤ e < IM — on fresh marks; on stale marks
   (``marks_fresh`` false) anything below IM is MARGIN_CALL, as stale marks never liquidate. A call
   leaving a worse state (S < P, hysteresis) must not be better than its raw state.
3. **Recomputation** — C recomputed **at the marks it names**: C's event time t is the event time of
   the newest mark the market it was computed at had; the harness keeps every ``md.marks`` record and
   asks ``MarginAt`` for a's margin at the marks in force at t (per instrument the latest mark at or
   before t, per underlying the latest index price: :mod:`marks`), the same computation as a live
   margin, at those prices — on the book of C's revision (the harness keeps each account's recent
   ``portfolio.positions`` snapshots; else the account's current book) and at C's risk version (margin
   keeps the versions before the one in force; else none is asked). Compared only when its account
   revision and its risk-parameter version are C's (the account's positions and collateral and the
   scenarios are the ones C was computed on — a new version may lower IM without bound, only a step up
   is bounded, so a release of margin says nothing about the call; a call without a revision counts as
   computed on the account's current revision when no input of the account was published after it): C
   says LIQUIDATION or BANKRUPT (e < MM) but the recomputation at its marks is HEALTHY with equity ≥ IM.
   The market's drift between the call and the check is gone from the comparison; what is left is
   small: the version's risk arrays and add-ons rebuilt since at later marks, spreads and depth (a
   model refresh: IM moves with the prices; an older version's model is rebuilt at the market now), and
   a mark another partition had not yet delivered to the computation at t. Between MM and IM lies
   (1 − mm_factor)·IM — half the IM by default — which neither moves an account across; a call on a
   state the inputs do not support does. (A call stamped 0 — no mark seen — is recomputed at the
   marks now.)

A ``liquidation.orders`` record is contradicted when its order id was seen before (a retry doubled it). An
**episode** (a STARTED step on ``liquidation.events``) is contradicted when a recomputation **at its own
inputs** shows its account HEALTHY with equity ≥ IM. An episode starts only on a re-check at the moment of
acting that finds the account — its cross part or an isolated position — below MM on fresh marks, and the
STARTED step names that re-check's risk version, account revision and marks time. The harness keeps the
account's ``portfolio.positions`` snapshots of recent revisions and asks ``MarginAt`` for the snapshot of the
start's revision (the book: positions, entry prices, collateral) at the start's risk version (one margin no
longer keeps: not judged) and the marks in force at its marks time: the same computation on the same book,
the same parameters and the same prices, whatever the account and the market did since. What is left is
what rule 3 leaves: the version's risk arrays rebuilt since at later marks, and a mark another partition had
not yet delivered to the re-check — small beside the band between MM and IM, which is why only a HEALTHY
recomputation contradicts. (For an account whose isolated position started the episode the totals may be
above MM.) Orders are the episode's consequences and are not judged one by one: its first round may be held
by a guard (a price band) and sent rounds later, on a later re-check, and an episode goes on, by design,
from MM up to IM·(1 + buffer) — an order at equity just above IM is the episode at work, not a wrong start.
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal

UNSPECIFIED, HEALTHY, MARGIN_CALL, LIQUIDATION, BANKRUPT = 0, 1, 2, 3, 4
NAMES = {0: "UNSPECIFIED", 1: "HEALTHY", 2: "MARGIN_CALL", 3: "LIQUIDATION", 4: "BANKRUPT"}


@dataclasses.dataclass(frozen=True)
class Parts:
    """The parts of a cross IM, USD: max(grid, ES, minimum) + liquidity add-on (+ charges not named here)."""

    cross_im_usd: Decimal
    grid_usd: Decimal
    es_usd: Decimal
    minimum_usd: Decimal
    liquidity_usd: Decimal

    def __str__(self) -> str:
        return (f"cross IM {self.cross_im_usd} = grid {self.grid_usd} | ES {self.es_usd} | minimum {self.minimum_usd} "
                f"+ liquidity {self.liquidity_usd}")


def _parts_text(call_parts: Parts | None, fresh_parts: Parts | None) -> str:
    """Where the IMs of a call and of its recomputation differ, for the report."""
    if call_parts is None or fresh_parts is None:
        return ""
    return f"; the call's {call_parts}; the recomputation's {fresh_parts}"


@dataclasses.dataclass(frozen=True)
class Call:
    account_id: str
    offset: str                # "partition:offset", for the report
    state: int
    previous: int
    episode: int
    equity_usd: Decimal
    im_usd: Decimal
    mm_usd: Decimal
    account_revision: int
    risk_version: int
    marks_fresh: bool = True
    event_time_ms: int = 0     # the newest mark's event time in the market it was computed at (0: none)
    parts: Parts | None = dataclasses.field(default=None, compare=False)   # its IM made of (None: not said)


@dataclasses.dataclass(frozen=True)
class Fresh:
    """A fresh computation of the account's margin (MarginAt: at given marks, or at the marks now)."""

    state: int
    equity_usd: Decimal
    im_usd: Decimal
    mm_usd: Decimal
    account_revision: int
    risk_version: int
    has_isolated: bool
    parts: Parts | None = dataclasses.field(default=None, compare=False)   # diagnostics, not compared


@dataclasses.dataclass(frozen=True)
class Contradiction:
    account_id: str
    offset: str
    rule: str            # "history", "numbers", "recomputation", "duplicate_order", "episode_unfounded"
    detail: str

    def __str__(self) -> str:
        return f"{self.account_id} @{self.offset}: {self.rule}: {self.detail}"


def raw_state(equity: Decimal, im: Decimal, mm: Decimal, marks_fresh: bool = True) -> int:
    """The state of an account's numbers; stale marks never liquidate (they cap it at MARGIN_CALL)."""
    if equity >= im:
        return HEALTHY
    if equity >= mm or not marks_fresh:
        return MARGIN_CALL
    if equity < 0:
        return BANKRUPT
    return LIQUIDATION


class CallHistory:
    """The last call of every account, for rule 1 (fed every call in topic order, from the start)."""

    def __init__(self) -> None:
        self.last: dict[str, Call] = {}

    def check(self, call: Call) -> Contradiction | None:
        before = self.last.get(call.account_id)
        self.last[call.account_id] = call
        if call.state < MARGIN_CALL or call.state == call.previous:
            return Contradiction(call.account_id, call.offset, "history",
                                 f"a call for {NAMES.get(call.state)} from {NAMES.get(call.previous)}")
        if before is None:
            return None
        if call.previous == UNSPECIFIED:
            return Contradiction(call.account_id, call.offset, "history",
                                 f"first-evaluation call after an earlier call ({NAMES[before.state]}, "
                                 f"episode {before.episode})")
        episodes = call.episode > 0 and before.episode > 0   # a service that numbers its episodes
        # A better state is published on margin.state only (no call): between two calls of one
        # episode the account may have improved (BANKRUPT → LIQUIDATION once solvent again, or a cap
        # of stale marks), so a call may come from any non-healthy state no worse than the last call's.
        # One from a worse state would mean a worse state entered without its call.
        if call.previous == before.state or HEALTHY < call.previous < before.state:
            if episodes and call.episode != before.episode:
                return Contradiction(call.account_id, call.offset, "history",
                                     f"episode {call.episode} continues {NAMES[before.state]} of episode "
                                     f"{before.episode}")
            return None
        if call.previous == HEALTHY and (not episodes or call.episode > before.episode):
            return None
        return Contradiction(call.account_id, call.offset, "history",
                             f"from {NAMES.get(call.previous)} (episode {call.episode}) but the last call was "
                             f"{NAMES[before.state]} (episode {before.episode})")


def check_numbers(call: Call, has_isolated: bool) -> Contradiction | None:
    """Rule 2 (skipped for accounts with isolated positions)."""
    if has_isolated:
        return None
    raw = raw_state(call.equity_usd, call.im_usd, call.mm_usd, call.marks_fresh)
    entering = call.state > call.previous
    if (entering and raw != call.state) or (not entering and call.state < raw):
        return Contradiction(call.account_id, call.offset, "numbers",
                             f"{NAMES[call.state]} from {NAMES.get(call.previous)} with equity {call.equity_usd}, "
                             f"IM {call.im_usd}, MM {call.mm_usd}, marks {'fresh' if call.marks_fresh else 'stale'} "
                             f"(raw state {NAMES[raw]})")
    return None


def same_inputs(call: Call, fresh: Fresh | None, revision_now: int, no_input_since_call: bool) -> bool:
    """Whether ``fresh`` was computed on the positions and collateral ``call`` was: the same account
    revision; for a call that carries no revision (0), the account's revision now (``revision_now``,
    from the fold) when no input of the account was published after the call."""
    if fresh is None:
        return False
    if call.risk_version and fresh.risk_version != call.risk_version:
        return False
    if call.account_revision:
        return fresh.account_revision == call.account_revision
    return no_input_since_call and fresh.account_revision == revision_now


def check_recomputation(call: Call, fresh: Fresh | None, same: bool | None = None) -> tuple[bool, Contradiction | None]:
    """Rule 3: ``fresh`` is the account's margin at the marks in force at ``call.event_time_ms``.
    Returns (compared at the same inputs?, contradiction). ``same`` overrides the revision comparison
    (see :func:`same_inputs`)."""
    if same is None:
        same = (fresh is not None and fresh.account_revision == call.account_revision
                and fresh.risk_version == call.risk_version)
    if fresh is None or not same:
        return False, None
    if call.state >= LIQUIDATION and fresh.state == HEALTHY and fresh.equity_usd >= fresh.im_usd:
        return True, Contradiction(call.account_id, call.offset, "recomputation",
                                   f"call {NAMES[call.state]} (equity {call.equity_usd} < MM {call.mm_usd}) but at "
                                   f"revision {call.account_revision} (version {call.risk_version} → {fresh.risk_version}) "
                                   f"and the marks of {call.event_time_ms} ms a fresh computation is HEALTHY "
                                   f"(equity {fresh.equity_usd} ≥ IM {fresh.im_usd})"
                                   + _parts_text(call.parts, fresh.parts))
    return True, None


@dataclasses.dataclass(frozen=True)
class Order:
    order_id: str
    account_id: str
    offset: str
    episode: int = 0


def check_order(order: Order, seen_ids: set[str]) -> list[Contradiction]:
    """An order id seen before: a retry or a restart doubled the order."""
    out = []
    if order.order_id in seen_ids:
        out.append(Contradiction(order.account_id, order.offset, "duplicate_order", f"order id {order.order_id} again"))
    seen_ids.add(order.order_id)
    return out


@dataclasses.dataclass(frozen=True)
class Start:
    """A STARTED step: the margin its episode was started on."""

    account_id: str
    offset: str
    episode: int
    risk_version: int
    account_revision: int
    marks_time_ms: int     # the newest mark's event time in the market that margin was computed at

    @property
    def names_inputs(self) -> bool:
        return self.risk_version > 0 and self.account_revision > 0 and self.marks_time_ms > 0


def start_inputs_match(start: Start, fresh: Fresh | None) -> bool:
    """Whether ``fresh`` was computed on the risk version and account revision the start names."""
    return (fresh is not None and fresh.risk_version == start.risk_version
            and fresh.account_revision == start.account_revision)


def check_start(start: Start, fresh: Fresh) -> Contradiction | None:
    """``fresh``: the account's margin at the start's own inputs (see the module's docstring)."""
    if fresh.state == HEALTHY and fresh.equity_usd >= fresh.im_usd:
        return Contradiction(start.account_id, start.offset, "episode_unfounded",
                             f"episode {start.episode} started, but at its revision {start.account_revision}, "
                             f"version {start.risk_version} and the marks of {start.marks_time_ms} ms a fresh "
                             f"computation is HEALTHY (equity {fresh.equity_usd} ≥ IM {fresh.im_usd})"
                             + (f"; its {fresh.parts}" if fresh.parts is not None else ""))
    return None
