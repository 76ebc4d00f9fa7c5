"""Crash replay at scale: ``python -m bench.bench_crash_replay [--accounts N] [--liquidatable F]``.

The bounded test (``tests/unit/liquidation/test_liq_crash_replay.py``) at 100k accounts, in one process: the
real liquidation engine and the real exchange simulator against a linear margin (IM 10 %, MM 5 % of notional
at the mark) over a ledger that applies fills and deposits by id. N accounts long 1 BTC-PERP at 60,000; a
fraction F (0.2 %) at 3–12× leverage, the rest at 1.5× (never below MM). BTC falls 40 % over 240 simulated seconds
(a 15 % gap at 200 s), recovers to −20 % over 120 s; one simulated second per step. The engine is killed at
150 s (its last planned batch of orders lost, its acknowledged events and the fund's last snapshot kept) and
rebuilt, every fill delivered again. Screening is vectorised (numpy floats); everything the engine reads or
the ledger books is exact (Decimal).

Prints the invariants (every account below MM got an episode, no order id twice, the fund never negative
and equal to its fees less the deficits paid, nobody below zero at the end) and the engine's wall time per
simulated second (calls, assessments, plans and orders of that second), with the load average.
"""

from __future__ import annotations

import argparse
import os
import time
from decimal import ROUND_FLOOR, Decimal as D

import numpy as np

from marginflow.exchange_sim.application import SimConfig, SimMark, SimOrder, Simulator, Spec
from marginflow.liquidation.application import (
    BANKRUPT, HEALTHY, LIQUIDATION, Call, EngineSettings, FillSeen, FundLedger, LiquidationEngine, MarginView,
    MarkSeen, OpenPosition, PositionView, StateSeen, instrument_infos)
from marginflow.liquidation.domain import FundSettings, GuardSettings, PlanSettings
from marginflow.shared.metrics import NullMetrics
from marginflow.shared.universe import load_universe

INSTR, CS, ENTRY = "BTC-PERP", D("1.0"), D("60000")
IM_RATE, MM_RATE = D("0.10"), D("0.05")
CRASH_S, RECOVER_S, GAP_AT_S, KILL_AT_S, TAIL_S = 240, 120, 200, 150, 60
T0 = 1_800_000_000_000


def price_at(t_s: int) -> D:
    move = D("0.40") * t_s / CRASH_S if t_s <= CRASH_S else \
        D("0.40") - D("0.20") * min(t_s - CRASH_S, RECOVER_S) / RECOVER_S
    gap = D("0.85") if t_s >= GAP_AT_S else D(1)
    return (ENTRY * (1 - move) * gap / D("0.5")).to_integral_value(rounding=ROUND_FLOOR) * D("0.5")


class Publisher:
    def __init__(self) -> None:
        self.events, self.orders, self.fills, self.deposits, self.funds = [], [], [], [], []

    def publish_events(self, events):
        self.events.extend(events)

    def publish_orders(self, orders):
        self.orders.extend(orders)

    def publish_effects(self, fills, deposits, fund):
        self.fills.extend(fills)
        self.deposits.extend(deposits)
        if fund is not None:
            self.funds.append(fund)


class Cache:
    def write(self, fund):
        pass


class Venue:
    """Positions and cash of record, exact per account; float copies for the vectorised screen."""

    def __init__(self, n: int, liquidatable: float, clock) -> None:
        self.ids = [f"acct-{i:06d}" for i in range(n)]
        self.index = {a: i for i, a in enumerate(self.ids)}
        k = max(1, int(n * liquidatable))
        lev = [D(3) + D(9) * i / max(k - 1, 1) for i in range(k)] + [D("1.5")] * (n - k)
        self.cash = [(ENTRY / x).quantize(D("0.01")) for x in lev]
        self.size = [D(1)] * n
        self.entry = [ENTRY] * n
        self.cash_f = np.array([float(c) for c in self.cash])
        self.size_f = np.ones(n)
        self.entry_f = np.full(n, float(ENTRY))
        self.applied: set[str] = set()
        self.mark = ENTRY
        self.clock = clock

    def _sync(self, i: int) -> None:
        self.cash_f[i], self.size_f[i], self.entry_f[i] = float(self.cash[i]), float(self.size[i]), float(self.entry[i])

    def apply_fill(self, f) -> None:
        if f.fill_id in self.applied or f.account_id not in self.index:
            return                                # the house: its book is not margined here
        self.applied.add(f.fill_id)
        i = self.index[f.account_id]
        signed = f.side * f.size
        if self.size[i] * signed < 0:             # reduce-only: the closed part's P&L at the fill price
            closed = min(abs(signed), abs(self.size[i]))
            self.cash[i] += closed * CS * (f.price_usd - self.entry[i]) * (1 if self.size[i] > 0 else -1)
            self.size[i] += signed
        self.cash[i] -= f.fee_usd
        self._sync(i)

    def deposit(self, d) -> None:
        if d.event_id in self.applied:
            return
        self.applied.add(d.event_id)
        i = self.index[d.account_id]
        self.cash[i] += d.amount
        self._sync(i)

    def screen(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m = float(self.mark)
        equity = self.cash_f + self.size_f * float(CS) * (m - self.entry_f)
        notional = np.abs(self.size_f) * float(CS) * m
        return equity, float(IM_RATE) * notional, float(MM_RATE) * notional

    def exact(self, i: int) -> tuple[D, D, D]:
        notional = abs(self.size[i]) * CS * self.mark
        return self.cash[i] + self.size[i] * CS * (self.mark - self.entry[i]), IM_RATE * notional, MM_RATE * notional

    # ports of the engine
    def explain(self, account: str) -> MarginView:
        i = self.index[account]
        e, im, mm = self.exact(i)
        state = BANKRUPT if e < 0 else LIQUIDATION if e < mm else HEALTHY
        pos = (PositionView(INSTR, self.size[i], False),) if self.size[i] else ()
        return MarginView(account, state, e, im, mm, True, 1, 1, self.clock(), pos)

    def im_after(self, account: str, trades) -> D:
        i = self.index[account]
        return IM_RATE * abs(self.size[i] + sum(s for _, s in trades)) * CS * self.mark

    def positions_by_instrument(self, instrument):
        return []     # everyone is long: nobody to deleverage against (what the fund cannot take is closed at the mark)

    def positions_of(self, account_id):
        return []


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--accounts", type=int, default=100_000)
    ap.add_argument("--liquidatable", type=float, default=0.002)   # 200 of 100k: ~1.5 min on the dev VM
    ap.add_argument("--fund", default="100000")
    args = ap.parse_args()
    clock = [T0]
    venue = Venue(args.accounts, args.liquidatable, lambda: clock[0])
    infos = instrument_infos(load_universe(None, T0))

    def new_engine(pub):
        settings = EngineSettings(PlanSettings(), GuardSettings(), FundSettings(), round_interval_ms=1000)
        return LiquidationEngine(settings, infos, venue, venue, pub, FundLedger(D(args.fund), 100_000, 100_000),
                                 Cache(), lambda: clock[0], NullMetrics())

    sim = Simulator(SimConfig("house", D("0.015"), 5, D("0.0005"), D("100")), {INSTR: Spec(CS, D("0.5"))},
                    type("Sink", (), {"publish": lambda self, fills: None})(), lambda: clock[0])
    pub = Publisher()
    engine = new_engine(pub)
    published = np.full(args.accounts, HEALTHY, dtype=np.int8)
    below_seen = np.zeros(args.accounts, dtype=bool)
    fills_log: list[FillSeen] = []
    sent: list[str] = []
    step_ms: list[float] = []
    fund_min = D(args.fund)
    lost = 0
    started_wall = time.perf_counter()
    for t_s in range(CRASH_S + RECOVER_S + TAIL_S):
        clock[0] = T0 + t_s * 1000
        venue.mark = price_at(t_s)
        t = time.perf_counter()
        mark = MarkSeen(INSTR, float(venue.mark), float(venue.mark), clock[0], 0.0005, 500.0)
        engine.on_marks([mark])
        sim.on_marks([SimMark(INSTR, venue.mark, D("0.0005"), D("500"), clock[0])])
        equity, im, mm = venue.screen()
        has = venue.size_f != 0
        below = has & (equity < mm)
        below_seen |= below
        state = np.where(has & (equity < 0), BANKRUPT, np.where(below, LIQUIDATION, HEALTHY)).astype(np.int8)
        restored = equity >= im * 1.05
        new_pub = np.where(state >= LIQUIDATION, state, np.where(restored, HEALTHY, published)).astype(np.int8)
        entering = np.flatnonzero((new_pub >= LIQUIDATION) & (published < LIQUIDATION))
        changed = np.flatnonzero((new_pub != published) | below)
        published = new_pub
        states = []
        for i in changed.tolist():
            e, r_im, r_mm = venue.exact(i)
            states.append(StateSeen(venue.ids[i], int(published[i]), e, r_im, r_mm, True, clock[0], e < r_mm))
        engine.on_states(states)
        engine.on_calls([Call(venue.ids[i], int(published[i]), True, 1, 1, clock[0]) for i in entering.tolist()])
        for acct in engine.due(clock[0], 1_000_000):
            engine.act(engine.assess(acct))
        new_orders = pub.orders[len(sent):]
        if t_s == KILL_AT_S:
            lost = len(new_orders)
            del pub.orders[len(sent):]
            snapshot = pub.funds[-1] if pub.funds else None
            engine = new_engine(pub)
            if snapshot is not None:
                engine.ledger.restore(snapshot)
            engine.rebuild(list(pub.events))
            engine.on_marks([mark])
            engine.on_states(states)
            redelivered_credits = engine.on_fills(fills_log)
            assert redelivered_credits == 0, "a redelivered fill was credited again"
            step_ms.append((time.perf_counter() - t) * 1000)
            continue
        sent += [o.order_id for o in new_orders]
        sim_fills = sim.on_orders([SimOrder(o.order_id, o.account_id, o.instrument, o.side, o.size,
                                            o.limit_price_usd, o.bankruptcy_price_usd) for o in new_orders])
        effects, pub.fills[:] = pub.fills[:], []
        for d in pub.deposits:
            venue.deposit(d)
        pub.deposits.clear()
        batch = []
        for f in [*effects, *sim_fills]:
            venue.apply_fill(f)
            seen = FillSeen("trades.fills", 0, len(fills_log), f.fill_id, f.account_id, f.instrument, f.side, f.size,
                            f.price_usd, f.fee_usd, f.liquidation, f.order_id, clock[0])
            fills_log.append(seen)
            batch.append(seen)
        engine.on_fills(batch)
        fund_min = min(fund_min, engine.ledger.balance)
        step_ms.append((time.perf_counter() - t) * 1000)
    wall = time.perf_counter() - started_wall
    kinds: dict[str, int] = {}
    for e in pub.events:
        kinds[e.kind] = kinds.get(e.kind, 0) + 1
    started = {e.account_id for e in pub.events if e.kind == "STARTED"}
    below_ids = {venue.ids[i] for i in np.flatnonzero(below_seen).tolist()}
    fees = sum((e.amount_usd for e in pub.events if e.kind == "FEE_TO_FUND"), D(0))
    paid = sum((e.amount_usd for e in pub.events if e.kind == "DEFICIT_COVERED"), D(0))
    negative = [a for a in venue.ids if venue.exact(venue.index[a])[0] < 0]
    a = np.asarray(step_ms)
    print(f"accounts {args.accounts:,}, liquidatable {args.liquidatable:.1%}; {CRASH_S + RECOVER_S + TAIL_S} simulated "
          f"seconds in {wall:.1f} s wall; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"below MM on a fresh mark: {len(below_ids):,} accounts; with an episode: {len(below_ids & started):,} "
          f"(missing {len(below_ids - started)})")
    print(f"events: {dict(sorted(kinds.items()))}")
    print(f"orders sent {len(sent):,}, unique {len(set(sent)):,}; lost at the kill {lost}; fills {len(fills_log):,}")
    print(f"fund: start {args.fund}, min {fund_min}, end {engine.ledger.balance} = start + fees {fees} − paid {paid}: "
          f"{engine.ledger.balance == D(args.fund) + fees - paid}")
    print(f"accounts below zero at the end: {len(negative)}")
    print(f"engine + simulator wall time per simulated second: p50 {np.percentile(a, 50):.0f} ms, "
          f"p99 {np.percentile(a, 99):.0f} ms, max {a.max():.0f} ms")
    ok = (below_ids <= started and len(sent) == len(set(sent)) and fund_min >= 0 and not negative
          and engine.ledger.balance == D(args.fund) + fees - paid)
    print("invariants hold" if ok else "INVARIANTS VIOLATED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
