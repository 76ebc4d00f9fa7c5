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

A ``liquidation.orders`` record is contradicted when its order id was seen before (a retry doubled
it), or — for the first order of an episode — when a recomputation **at the order's own inputs** shows
its account HEALTHY with equity ≥ IM. An episode starts only on a re-check at the moment of acting that
finds the account below MM on fresh marks, and its first round (slice 0 and the slices sent with it) is
planned on that re-check, whose risk version, account revision and marks time every order names. The
harness keeps the account's ``portfolio.positions`` snapshots of recent revisions and asks ``MarginAt``
for the snapshot of the order's revision (the book: positions, entry prices, collateral) at the order's
risk version (another version in force: not judged) and the marks in force at its marks time: the same
computation on the same book, the same parameters and the same prices, whatever the account did since.
What is left is what rule 3 leaves: the same version's risk arrays rebuilt since at later marks, and a
mark another partition had not yet delivered to the re-check — small beside the band between MM and IM,
which is why only a HEALTHY recomputation contradicts. (An episode starts when any part of the account
— the cross part or an isolated position — is below its MM; the totals may be above MM then.)
Orders of later rounds are not judged: an episode goes on, by design, from MM up to IM·(1 + buffer), its
fills and the marks moving the account.
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal

UNSPECIFIED, HEALTHY, MARGIN_CALL, LIQUIDATION, BANKRUPT = 0, 1, 2, 3, 4
NAMES = {0: "UNSPECIFIED", 1: "HEALTHY", 2: "MARGIN_CALL", 3: "LIQUIDATION", 4: "BANKRUPT"}


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


@dataclasses.dataclass(frozen=True)
class Contradiction:
    account_id: str
    offset: str
    rule: str            # "history", "numbers", "recomputation", "duplicate_order", "order_above_mm"
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
                                   f"(equity {fresh.equity_usd} ≥ IM {fresh.im_usd})")
    return True, None


@dataclasses.dataclass(frozen=True)
class Order:
    order_id: str
    account_id: str
    offset: str
    episode: int = 0
    risk_version: int = 0        # the margin the order was planned on (0: not named)
    account_revision: int = 0
    slice: int = 0
    marks_time_ms: int = 0       # the newest mark's event time in the market that margin was computed at


def starts_episode(order: Order) -> bool:
    """The first order of its episode, planned on the re-check that started it, and naming the inputs it was
    planned on: the one a recomputation at its own inputs judges."""
    return order.slice == 0 and order.account_revision > 0 and order.marks_time_ms > 0


def order_inputs_match(order: Order, fresh: Fresh | None) -> bool:
    """Whether ``fresh`` was computed on the risk parameters and the account revision ``order`` was planned
    on (what the order does not name is not compared)."""
    if fresh is None:
        return False
    if order.risk_version and fresh.risk_version != order.risk_version:
        return False
    return not order.account_revision or fresh.account_revision == order.account_revision


def check_order(order: Order, seen_ids: set[str], fresh: Fresh | None, same_inputs: bool) -> list[Contradiction]:
    """``same_inputs``: ``fresh`` is the account's margin at the inputs the order's episode started on (see
    the module's docstring); only then is it compared."""
    out = []
    if order.order_id in seen_ids:
        out.append(Contradiction(order.account_id, order.offset, "duplicate_order", f"order id {order.order_id} again"))
    seen_ids.add(order.order_id)
    if same_inputs and fresh is not None and fresh.state == HEALTHY and fresh.equity_usd >= fresh.im_usd:
        out.append(Contradiction(order.account_id, order.offset, "order_unfounded",
                                 f"order {order.order_id} (episode {order.episode}) starts an episode, but at its "
                                 f"revision {order.account_revision}, version {order.risk_version} and the marks of "
                                 f"{order.marks_time_ms} ms a fresh computation is HEALTHY (equity "
                                 f"{fresh.equity_usd} ≥ IM {fresh.im_usd})"))
    return out
