"""Published health states that mean something: hysteresis on the way out of a worse state,
confirmation on the way in, and episodes.

The raw state of an account (``health.classify_many``) follows every tick of its equity. The
published state follows it under two rules, vectorised over every account:

* **Hysteresis (leaving a worse state).** A state is left only when equity clears a threshold by a
  buffer: MARGIN_CALL only once equity ≥ IM·(1 + b_mc); LIQUIDATION only once the account is
  *restored*, equity ≥ IM·(1 + b_mc) — the point at which a partial liquidation stops (an account
  that went below maintenance stays in liquidation, not back in margin call, until restored, so an
  episode enters each state once); BANKRUPT is left for LIQUIDATION once equity ≥ b·MM (the buffer
  Drift puts on maintenance margin). Trade-off: a larger buffer means fewer flip-flops around a
  threshold and fewer repeated notifications, but an account stays flagged a little longer after it
  has recovered.
* **Confirmation of recoveries.** A better state is published only once it has held over the same
  window as a worse one (below), unless the account's own inputs changed (a deposit, a liquidation
  fill): a requirement that dips for one evaluation does not end an episode.
* **Confirmation (entering a worse state).** A worse raw state is published once it has held for
  ``confirm_evaluations`` evaluations *and* ``confirm_ms`` (the service evaluates on every batch of
  marks and at least once a second, so a one-tick excursion that the next marks undo is never
  published, and a quiet market never holds a real call back); at once when the shortfall is beyond a band (equity < MM·(1 − band)
  for LIQUIDATION, < IM·(1 − band) for MARGIN_CALL), when the account is bankrupt, or when the
  account's own inputs changed (a trade, a withdrawal: no market noise to filter). Trade-off: a
  longer window filters more one-tick noise but delays a real call by that much; the band bounds
  the delay to moves that are small against the requirement, so the venue is never left waiting
  while it is at risk.

Amounts are compared in whole cents as published (``shared.money``), by cross-multiplying the
buffer as an exact ratio of integers (basis points), never by dividing.

* **No way back to margin call.** LIQUIDATION (or BANKRUPT) is left only for HEALTHY, never for
  MARGIN_CALL: the account state is the worst of the cross part and each isolated position while the
  buffer is tested on the account's totals, so an isolated position in liquidation next to a healthy
  cross part would otherwise go LIQUIDATION → MARGIN_CALL → LIQUIDATION and enter liquidation twice in
  one episode.
* **Minimum dwell (leaving a worse state).** A published MARGIN_CALL or LIQUIDATION stands for at least
  ``min_dwell_ms`` (the clock the evaluation passes in) before a *market* recovery may end it; the account's own inputs
  (a deposit, a trade, a liquidation fill: ``immediate``) end it as soon as the buffer is met. Measured on
  the simulator: accounts with options or high leverage swing their equity by ±5–10 % of IM within a
  minute, so a recovery through the 5 % buffer ended a call after a median of ~35 s and the next swing
  re-entered it ~30 s later (up to 9 calls an account in 10 minutes). With a dwell D, an account enters a
  state at most ⌈T/D⌉ times in T on market moves alone (300 s: at most 2 in 10 minutes). Trade-off: a
  call on a market that recovers stays up to D longer (a venue that notifies on calls sends the
  all-clear later), never shorter; entering a worse state is never delayed by it.

**Episodes.** An episode starts when an account leaves HEALTHY and ends when it is published
HEALTHY again; every call carries the account's episode number, and a call for a state the episode
has already reached is marked a repeat.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from marginflow.margin.domain.health import Health
from marginflow.shared.money import cents_down_array, cents_up_array

BPS = 10_000


@dataclasses.dataclass(frozen=True)
class TransitionRules:
    exit_buffer_bps: int = 200            # b = 2 %: bankrupt is left for liquidation at b·MM
    margin_call_exit_buffer_bps: int = 500   # b_mc = 5 %: margin call and liquidation end at IM·(1 + b_mc)
    confirm_evaluations: int = 2          # a worse raw state held this many evaluations ...
    confirm_ms: int = 1_000               # ... and this long before it is published
    immediate_band_bps: int = 1_000       # 10 %: a shortfall beyond this publishes at once
    min_dwell_ms: int = 0                 # a worse state stands this long before a market recovery ends it

    def __post_init__(self) -> None:
        if not 0 <= self.exit_buffer_bps < BPS or not 0 <= self.margin_call_exit_buffer_bps < BPS:
            raise ValueError("exit buffers must be in [0, 10000) bp")
        if not 0 <= self.immediate_band_bps <= BPS:
            raise ValueError("immediate_band_bps must be in [0, 10000]")
        if self.confirm_evaluations < 1 or self.confirm_ms < 0:
            raise ValueError("confirm_evaluations must be ≥ 1 and confirm_ms ≥ 0")
        if self.min_dwell_ms < 0:
            raise ValueError("min_dwell_ms must be ≥ 0")


@dataclasses.dataclass
class Pending:
    """Per account: the raw state waiting for confirmation, since when, seen how often; and when the
    published state was entered (the dwell; 0 = unknown, e.g. after a restart: no dwell left)."""

    state: np.ndarray        # int8, 0 = none
    since_ms: np.ndarray     # int64, when it was first seen
    count: np.ndarray        # int32
    entered_ms: np.ndarray   # int64, when the published state was entered

    @classmethod
    def empty(cls, n: int) -> "Pending":
        return cls(np.zeros(n, np.int8), np.zeros(n, np.int64), np.zeros(n, np.int32), np.zeros(n, np.int64))

    def take(self, rows) -> "Pending":
        """The entries of ``rows`` (a slice: views of these arrays; an index array: copies, see :meth:`put`)."""
        return Pending(self.state[rows], self.since_ms[rows], self.count[rows], self.entered_ms[rows])

    def put(self, rows, part: "Pending") -> None:
        """``part`` (taken at ``rows``) written back."""
        self.state[rows], self.since_ms[rows] = part.state, part.since_ms
        self.count[rows], self.entered_ms[rows] = part.count, part.entered_ms


def sticky_state(published: np.ndarray, equity_usd: np.ndarray, im_usd: np.ndarray, mm_usd: np.ndarray,
                 rules: "TransitionRules") -> np.ndarray:
    """The best state an account may move to from its published (worse) state: HEALTHY once equity
    ≥ IM·(1 + b_mc); from BANKRUPT, LIQUIDATION once equity ≥ b·MM; otherwise it stays.

    ``equity·10⁴ ≥ threshold·(10⁴ + b)`` in whole cents, so no division and no rounding."""
    e = cents_down_array(equity_usd)
    im = cents_up_array(im_usd)
    mm = cents_up_array(mm_usd)
    restored = e * BPS >= im * (BPS + rules.margin_call_exit_buffer_bps)
    solvent = e * BPS >= mm * rules.exit_buffer_bps
    published = np.asarray(published, dtype=np.int8)
    stay = np.where((published == Health.BANKRUPT) & solvent, Health.LIQUIDATION, published)
    return np.where(restored, Health.HEALTHY, stay).astype(np.int8)


def no_way_back(published: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``target`` with LIQUIDATION kept where a published LIQUIDATION/BANKRUPT would go to MARGIN_CALL."""
    published = np.asarray(published, dtype=np.int8)
    target = np.asarray(target, dtype=np.int8)
    back = (published >= Health.LIQUIDATION) & (target == Health.MARGIN_CALL)
    return np.where(back, np.int8(Health.LIQUIDATION), target).astype(np.int8)


def urgent(raw: np.ndarray, equity_usd: np.ndarray, im_usd: np.ndarray, mm_usd: np.ndarray, band_bps: int) -> np.ndarray:
    """Worse states published without confirmation: bankrupt, or a shortfall beyond the band."""
    e = cents_down_array(equity_usd)
    im = cents_up_array(im_usd)
    mm = cents_up_array(mm_usd)
    down = BPS - band_bps
    deep_liq = (raw == Health.LIQUIDATION) & (e * BPS < mm * down)
    deep_mc = (raw == Health.MARGIN_CALL) & (e * BPS < im * down)
    return (raw == Health.BANKRUPT) | deep_liq | deep_mc


def next_states(published: np.ndarray, raw: np.ndarray, equity_usd: np.ndarray, im_usd: np.ndarray,
                mm_usd: np.ndarray, pending: Pending, now_ms: int, rules: TransitionRules,
                immediate: np.ndarray | None = None) -> np.ndarray:
    """The states to publish now (int8), given the published ones and this evaluation's raw ones.

    ``pending`` is updated in place. ``published == 0`` (never published) takes the raw state as
    it is: a from-scratch computation has nothing to confirm against. ``immediate`` marks accounts
    whose own inputs changed (they skip confirmation)."""
    published = np.asarray(published, dtype=np.int8)
    raw = np.asarray(raw, dtype=np.int8)
    # Only the rows where something can happen: a raw state that differs from the published one, a
    # pending state to confirm or forget, or nothing published yet. Every other row keeps its published
    # state and an empty pending state, as the rules below would leave it — and after a mark move that
    # is nearly every row, so the rules run over a few hundred rows, not every account.
    rows = np.flatnonzero((raw != published) | (pending.state != 0) | (published == Health.UNSPECIFIED))
    out = published.copy()
    if rows.shape[0] == 0:
        return out
    if rows.shape[0] == published.shape[0]:
        return _next_states_dense(published, raw, equity_usd, im_usd, mm_usd, pending, now_ms, rules, immediate)
    sub = pending.take(rows)
    out[rows] = _next_states_dense(published[rows], raw[rows], np.asarray(equity_usd)[rows], np.asarray(im_usd)[rows],
                                   np.asarray(mm_usd)[rows], sub, now_ms, rules,
                                   None if immediate is None else np.asarray(immediate, dtype=bool)[rows])
    pending.put(rows, sub)
    return out


def _next_states_dense(published: np.ndarray, raw: np.ndarray, equity_usd: np.ndarray, im_usd: np.ndarray,
                       mm_usd: np.ndarray, pending: Pending, now_ms: int, rules: TransitionRules,
                       immediate: np.ndarray | None) -> np.ndarray:
    """:func:`next_states` over every row given (int8 arrays)."""
    out = published.copy()
    fresh_start = published == Health.UNSPECIFIED
    out[fresh_start] = raw[fresh_start]
    known = ~fresh_start
    # better: hysteresis gives the target, then it must hold like a worse state
    target = raw.copy()
    better = known & (raw < published)
    if better.any():
        sticky = sticky_state(published, equity_usd, im_usd, mm_usd, rules)
        target[better] = np.maximum(raw[better], sticky[better])
        target = no_way_back(published, target)
        if rules.min_dwell_ms > 0:
            # a market recovery waits out the dwell; the account's own change does not
            young = better & (now_ms - pending.entered_ms < rules.min_dwell_ms) & (published >= Health.MARGIN_CALL)
            if immediate is not None:
                young &= ~np.asarray(immediate, dtype=bool)
            target[young] = published[young]
    better = known & (target < published)
    pending.entered_ms[fresh_start] = now_ms
    return _confirm(out, known, published, target, better, equity_usd, im_usd, mm_usd, pending, now_ms, rules,
                    immediate)


def _confirm(out, known, published, target, better, equity_usd, im_usd, mm_usd, pending: Pending, now_ms: int,
             rules: "TransitionRules", immediate) -> np.ndarray:
    raw = target
    worse = known & (raw > published)
    moving = worse | better
    same_pending = moving & (pending.state == raw)
    restart = moving & ~same_pending
    pending.state[restart] = raw[restart]
    pending.since_ms[restart] = now_ms
    pending.count[restart] = 1
    pending.count[same_pending] += 1
    confirmed = moving & (pending.count >= rules.confirm_evaluations) & (now_ms - pending.since_ms >= rules.confirm_ms)
    go = confirmed | (worse & urgent(raw, equity_usd, im_usd, mm_usd, rules.immediate_band_bps))
    if immediate is not None:
        go |= moving & immediate
    out[go] = raw[go]
    pending.entered_ms[go] = now_ms
    # whatever is not waiting any more forgets its pending state
    done = ~moving | go
    pending.state[done] = 0
    pending.count[done] = 0
    return out


@dataclasses.dataclass
class Episodes:
    """Per account: the current episode number (0 = none yet) and the worst state it reached."""

    number: np.ndarray       # int64
    worst: np.ndarray        # int8

    @classmethod
    def empty(cls, n: int) -> "Episodes":
        return cls(np.zeros(n, np.int64), np.zeros(n, np.int8))

    def advance(self, row: int, previous: int, state: int) -> tuple[int, bool]:
        """Record the published transition ``previous → state`` of ``row``; returns (episode, repeat):
        the episode the state belongs to, and whether that episode already reached this state."""
        if state <= Health.HEALTHY:
            self.worst[row] = 0
            return int(self.number[row]), False
        if previous <= Health.HEALTHY:
            self.number[row] += 1
            self.worst[row] = 0
        repeat = state <= int(self.worst[row])
        self.worst[row] = max(int(self.worst[row]), state)
        return int(self.number[row]), repeat
