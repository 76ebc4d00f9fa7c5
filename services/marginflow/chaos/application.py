"""The chaos scenario: start everything, then one fault at a time, each followed by recovery
measurement and the checks; stop everything at the end, on failure or on Ctrl-C.

Consistency cut: after a fault, once every service is SERVING and answering, the fill generator is
**paused** and every fill it sent is acknowledged by Kafka; the fold of ``trades.fills`` and
``account.events`` (minus dead letters) up to that point is the expected state, and the service must
reach it — on ``portfolio.positions`` (read to its end, latest record per account) and over gRPC
(``ListAccounts`` over every account, ``GetAccount`` for a sample) — within a deadline. The generator
resumes after the checks. So no comparison races with fills in flight, and "to correct" is the time
from the end of the fault until the service has caught up with everything sent before the cut.

Times: a fault is "over" when the kill is sent (the supervisor restarts the service), when Kafka or
Redis has been started again, or when SIGCONT is sent. "To SERVING" is from then until every service's
gRPC health is SERVING and GetAccount/GetMargin answer, held for three polls in a row.
"""

from __future__ import annotations

import collections
import dataclasses
import signal
import time
from typing import Callable, Protocol

from marginflow.chaos.domain import calls as callcheck
from marginflow.chaos.domain.fold import Fold, Mismatch, Observed, compare
from marginflow.chaos.domain.marks import MarkHistory
from marginflow.chaos.domain.report import FaultResult

SIGSTOP_SERVICES = ("margin", "portfolio")
# portfolio.positions snapshots kept per account, newest last: an order is recomputed on the book of the
# revision it names, published at most a check's worth of fills before the order is read
SNAPSHOT_REVISIONS = 16


@dataclasses.dataclass(frozen=True)
class Fault:
    kind: str          # "kill", "kafka_restart", "redis_flush", "redis_restart", "sigstop"
    service: str = ""

    @property
    def label(self) -> str:
        return {"kill": f"kill -9 {self.service}", "kafka_restart": "restart Kafka", "redis_flush": "FLUSHALL Redis",
                "redis_restart": "restart Redis (empty)", "sigstop": f"SIGSTOP {self.service}"}[self.kind]


def full_faults(services: list[str]) -> list[Fault]:
    faults = [Fault("kill", s) for s in services]
    faults += [Fault("kafka_restart"), Fault("redis_flush"), Fault("redis_restart")]
    faults += [Fault("sigstop", s) for s in SIGSTOP_SERVICES if s in services]
    return faults


def small_faults(services: list[str]) -> list[Fault]:
    return [Fault("kill", s) for s in services] + [Fault("redis_flush")]


KINDS = ("kill", "kafka_restart", "redis_flush", "redis_restart", "sigstop")


def parse_faults(text: str, services: list[str]) -> list[Fault]:
    """Faults named on the command line, in order: ``kill:<service>``, ``sigstop:<service>``, ``kafka_restart``,
    ``redis_flush``, ``redis_restart``, comma-separated. ValueError naming the first one that is not."""
    out = []
    for item in (t.strip() for t in text.split(",")):
        kind, _, service = item.partition(":")
        if kind not in KINDS:
            raise ValueError(f"unknown fault {item!r}; one of {', '.join(KINDS)} (kill and sigstop with :<service>)")
        if (kind in ("kill", "sigstop")) != bool(service):
            raise ValueError(f"fault {item!r}: kill and sigstop name a service (kill:margin), the others none")
        if service and service not in services:
            raise ValueError(f"fault {item!r}: no service {service!r} in this platform ({', '.join(services)})")
        if kind == "sigstop" and service not in SIGSTOP_SERVICES:
            raise ValueError(f"fault {item!r}: SIGSTOP is for {', '.join(SIGSTOP_SERVICES)}")
        out.append(Fault(kind, service))
    return out


@dataclasses.dataclass(frozen=True)
class Options:
    accounts: int = 100_000
    rate: float = 1000.0                 # fills/s
    budget_seconds: float = 3600.0       # the whole run
    steady_seconds: float = 10.0         # generator running between faults
    sigstop_seconds: float = 30.0
    serving_timeout_seconds: float = 240.0
    verify_timeout_seconds: float = 240.0
    recompute_max_calls: int = 2000      # fresh GetMargin per window, at most
    seed: int = 7


class Infra(Protocol):
    def kafka(self, action: str) -> None: ...
    def redis(self, action: str) -> None: ...


class Processes(Protocol):
    def signal(self, service: str, sig: int) -> int: ...
    def alive(self) -> bool: ...


class Tail(Protocol):
    def catch_up(self, timeout_s: float) -> list: ...


@dataclasses.dataclass
class Ports:
    infra: Infra
    processes: Processes
    platform: object                       # adapters.grpc_io.Platform
    flush_redis: Callable[[], None]
    generator: object                      # adapters.kafka_io.FillGenerator
    fills: Tail
    events: Tail
    dead_letters: Tail
    positions: Tail
    calls: Tail
    orders: Tail | None
    steps: Tail | None                     # liquidation.events: each episode's start is recomputed at its inputs
    marks: Tail | None                     # md.marks: calls are recomputed at the marks they name (None: now)
    decode: object                         # namespace of protobuf decoders (see __main__)
    log: Callable[[str], None]
    sleep: Callable[[float], None] = time.sleep
    now: Callable[[], float] = time.monotonic
    # service → the Kafka timestamp (ms) of its first output record at or after a wall-clock ms
    first_output: Callable[[str, int], int | None] | None = None
    wall_ms: Callable[[], int] = lambda: int(time.time() * 1000)


class Budget(Exception):
    """The run's time budget is spent."""


class Runner:
    def __init__(self, ports: Ports, options: Options, services: list[str], sample_account: str) -> None:
        self.p = ports
        self.o = options
        self.services = services
        self.sample_account = sample_account
        self.fold = Fold()
        self.snapshots: dict[str, object] = {}    # decoded AccountSnapshot per account
        self.dirty: set[str] = set()
        self.unsettled: set[str] = set()          # accounts that mismatched last time
        self.history = callcheck.CallHistory()
        # portfolio.positions: the snapshots of each account's recent revisions, newest last (the latest value
        # per account; a call or a start is recomputed on the book of the revision it names)
        self.snap_history: dict[str, collections.deque[tuple[int, bytes, bytes]]] = {}   # (revision, digest, raw)
        # one revision published twice with different books: a rebuilt state that is not the one published
        self.revisions_reused: list[str] = []
        self.order_ids: set[str] = set()
        self.chaos_rejected = 0
        self.last_input_ms: dict[str, int] = {}   # Kafka timestamp of each account's latest input
        self.marks = MarkHistory()                # every md.marks record read so far
        self.deadline = ports.now() + options.budget_seconds
        self._next_progress = ports.now() + 30
        self.results: list[FaultResult] = []

    # ---- time
    def _until(self, seconds: float) -> float:
        return min(self.p.now() + seconds, self.deadline)

    def _left(self) -> float:
        return self.deadline - self.p.now()

    # ---- reading the topics
    def _fold_inputs(self) -> None:
        d = self.p.decode
        for rec in self.p.fills.catch_up(min(120, max(5, self._left()))):
            f = d.fill(rec.value)
            self.fold.add_fill(f.fill_id, f.account_id, f.instrument, int(f.side), d.dec(f.size))
            self.last_input_ms[f.account_id] = max(rec.timestamp, self.last_input_ms.get(f.account_id, 0))
        for rec in self.p.events.catch_up(min(120, max(5, self._left()))):
            e = d.event(rec.value)
            self.fold.add_event(e.event_id, e.account_id)
            self.last_input_ms[e.account_id] = max(rec.timestamp, self.last_input_ms.get(e.account_id, 0))
        for rec in self.p.dead_letters.catch_up(min(60, max(5, self._left()))):
            dl = d.dead_letter(rec.value)
            if dl.source_topic.endswith("trades.fills"):
                try:
                    f = d.fill(dl.payload)
                except Exception:  # noqa: BLE001 - a payload that is no Fill was never folded
                    continue
                if f.fill_id.startswith(self.p.generator.plan.run_id):
                    self.chaos_rejected += 1
                if self.fold.reject("f:" + f.fill_id):
                    self.fold.unfold_fill(f.account_id, f.instrument, int(f.side), d.dec(f.size))
            elif dl.source_topic.endswith("account.events"):
                try:
                    e = d.event(dl.payload)
                except Exception:  # noqa: BLE001
                    continue
                if self.fold.reject("e:" + e.event_id):
                    self.fold.unfold_event(e.account_id)

    def _read_marks(self) -> None:
        if self.p.marks is None:
            return
        d = self.p.decode
        for rec in self.p.marks.catch_up(min(120, max(5, self._left()))):
            m = d.mark(rec.value)
            self.marks.add(m.instrument, m.underlying, int(m.meta.event_time_ms), m.mark_price, m.index_price,
                           m.implied_vol)

    def _read_positions(self) -> None:
        for rec in self.p.positions.catch_up(min(120, max(5, self._left()))):
            key = rec.key.decode() if rec.key else ""
            if rec.value is None:
                self.snapshots.pop(key, None)
                self.snap_history.pop(key, None)
            else:
                history = self.snap_history.get(key)
                if history is None:
                    history = self.snap_history[key] = collections.deque(maxlen=SNAPSHOT_REVISIONS)
                revision, digest = self.p.decode.book_digest(rec.value)
                for rev, dig, _raw in history:
                    if rev == revision and dig != digest:
                        self.revisions_reused.append(f"{key} revision {revision} published again with other "
                                                     f"positions or balances (@{rec.partition}:{rec.offset})")
                        break
                history.append((revision, digest, rec.value))
            self.dirty.add(key)

    def _snapshot_at(self, account_id: str, revision: int) -> bytes | None:
        """The account's portfolio.positions snapshot of ``revision`` (None: not among those kept)."""
        for rev, _digest, raw in reversed(self.snap_history.get(account_id, ())):
            if rev == revision:
                return raw
        return None

    def _topic_observed(self, accounts: set[str]) -> dict[str, Observed]:
        d = self.p.decode
        for key in self.dirty:
            history = self.snap_history.get(key)
            if history:
                self.snapshots[key] = d.snapshot(history[-1][2])
        self.dirty.clear()
        return {a: d.observed(self.snapshots[a]) for a in accounts if a in self.snapshots}

    # ---- the checks
    def _progress(self, where: str, mismatches: list[Mismatch]) -> None:
        """Every 30 s of a comparison that does not converge: how far off, for the log."""
        now = self.p.now()
        if now >= self._next_progress:
            self._next_progress = now + 30
            self.p.log(f"{where}: {len(mismatches)} differences from the fold, e.g. {mismatches[0]}")

    def verify(self, result: FaultResult, over: float, first: bool) -> None:
        """Positions (topic and gRPC) against the fold. The generator is paused, but the liquidation
        service and the exchange simulator go on publishing fills (and the fund its deposits): each pass
        reads the service's output first and the inputs after it, so the fold holds at least every input
        the output can reflect; an account still different is re-checked in the next pass, alone."""
        self._fold_inputs()
        expected = self.fold.accounts
        check = set(expected) if first else (self.fold.take_touched() | self.unsettled)
        if first:
            self.fold.take_touched()
        deadline = self._until(self.o.verify_timeout_seconds)
        mismatches: list[Mismatch] = []
        topic_ok_at = None
        while True:
            self._read_positions()
            self._fold_inputs()
            check |= set(self.dirty) | self.fold.take_touched()
            mismatches = compare(expected, self._topic_observed(check), check)
            if not mismatches:
                topic_ok_at = self.p.now()
                break
            check = {m.account_id for m in mismatches}
            if self.p.now() > deadline:
                break
            self._progress("portfolio.positions", mismatches)
            self.p.sleep(1.0)
        grpc_mismatches: list[Mismatch] = []
        grpc_ok_at = None
        pending: set[str] | None = None     # None: every account (ListAccounts), else these (GetAccount)
        sample = sorted(check)[:: max(1, len(check) // 200)][:200]
        while True:
            try:
                if pending is None:
                    got = self.p.platform.list_accounts()
                    sampled = {a: o for a in sample if (o := self.p.platform.get_account(a)) is not None}
                    self._fold_inputs()
                    grpc_mismatches = compare(expected, got) + compare(expected, sampled, sample)
                else:
                    got = {a: o for a in pending if (o := self.p.platform.get_account(a)) is not None}
                    self._fold_inputs()
                    grpc_mismatches = compare(expected, got, pending)
            except Exception as exc:  # noqa: BLE001 - a query that fails is "not yet correct"
                grpc_mismatches = [Mismatch("*", "grpc", "an answer", f"{type(exc).__name__}: {str(exc)[:200]}")]
            if not grpc_mismatches:
                grpc_ok_at = self.p.now()
                break
            wrong = {m.account_id for m in grpc_mismatches}
            pending = None if "*" in wrong or len(wrong) > 1000 else wrong
            if self.p.now() > deadline:
                break
            self._progress("gRPC", grpc_mismatches)
            self.p.sleep(1.0)
        self.unsettled = {m.account_id for m in mismatches}
        result.fills_checked = self.fold.fills
        result.accounts_checked = sum(1 for a in expected.values() if a.inputs)
        reused, self.revisions_reused = self.revisions_reused, []
        result.mismatches = len(mismatches) + len(grpc_mismatches) + self.chaos_rejected + len(reused)
        result.notes += [f"portfolio.positions {r}" for r in reused[:5]]
        if self.chaos_rejected:
            result.notes.append(f"{self.chaos_rejected} generator fills dead-lettered by portfolio")
        for m in (mismatches[:5] + grpc_mismatches[:5]):
            result.notes.append(("portfolio.positions " if m in mismatches else "gRPC ") + str(m))
        if topic_ok_at is not None and grpc_ok_at is not None:
            result.to_correct_s = max(topic_ok_at, grpc_ok_at) - over
        else:
            result.timed_out = True
            result.notes.append("positions did not equal the fold within the deadline")
        self._check_calls(result)
        if self.p.orders is not None:
            self._check_orders(result)

    def _check_calls(self, result: FaultResult) -> None:
        d = self.p.decode
        records = self.p.calls.catch_up(min(120, max(5, self._left())))
        found: list[callcheck.Contradiction] = []
        calls = []
        stamps: dict[str, int] = {}
        for rec in records:
            m = d.call(rec.value)
            call = callcheck.Call(m.account_id, f"{rec.partition}:{rec.offset}", int(m.state), int(m.previous_state),
                                  int(m.episode), d.dec(m.equity_usd), d.dec(m.im_usd), d.dec(m.mm_usd),
                                  int(m.account_revision), int(m.risk_params_version), bool(m.marks_fresh),
                                  int(m.meta.event_time_ms), d.parts(m) if m.HasField("cross_im_usd") else None)
            calls.append(call)
            stamps[call.offset] = rec.timestamp
            if (c := self.history.check(call)) is not None:
                found.append(c)
            snap = self.snapshots.get(call.account_id)
            if (c := callcheck.check_numbers(call, snap is None or d.has_isolated(snap))) is not None:
                found.append(c)
        # the last call per account is recomputed at the marks it names, on the book of its revision and at
        # its risk version: read after the calls, the marks and snapshots cover every call's
        self._read_marks()
        self._read_positions()
        last = {c.account_id: c for c in calls}
        recomputed = reproduced = 0
        # in version order: margin rebuilds an older version's model once for all the calls of that version
        for call in sorted(list(last.values())[: self.o.recompute_max_calls], key=lambda c: c.risk_version):
            if self._left() <= 0:
                result.notes.append("recomputation cut short: the time budget is spent")
                break
            book = self._snapshot_at(call.account_id, call.account_revision) if call.account_revision else None
            fresh = self.p.platform.margin_at(call.account_id, self.marks.at(call.event_time_ms), book=book,
                                              risk_version=call.risk_version,
                                              vols=self.marks.vols_at(call.event_time_ms))
            acct = self.fold.accounts.get(call.account_id)
            same = callcheck.same_inputs(call, fresh, acct.inputs if acct else 0,
                                         self.last_input_ms.get(call.account_id, 0) < stamps[call.offset])
            same, c = callcheck.check_recomputation(call, fresh, same)
            recomputed += same
            reproduced += same and fresh is not None and fresh.state == call.state
            if c is not None:
                found.append(c)
        if recomputed:
            result.notes.append(f"{reproduced} of {recomputed} calls recomputed at their marks are in the call's "
                                f"state again")
        if len(last) > self.o.recompute_max_calls:
            result.notes.append(f"recomputed the first {self.o.recompute_max_calls} of {len(last)} accounts with calls")
        stale = [c for c in calls if not c.marks_fresh]
        if stale:
            better = sum(1 for c in stale if c.state < c.previous)
            result.notes.append(f"{len(stale)} calls computed on stale marks ({better} of them a LIQUIDATION/BANKRUPT "
                                f"left for MARGIN_CALL only because stale marks cap the state, not because equity "
                                f"recovered)")
        result.calls_checked = len(calls)
        result.calls_recomputed = recomputed
        result.contradicting_calls = len(found)
        result.notes += [str(c) for c in found[:5]]

    def _check_orders(self, result: FaultResult) -> None:
        """Every order read since the last check: its id new; and every episode started since (a STARTED step on
        liquidation.events) recomputed at its own inputs (see :mod:`calls`): ``MarginAt`` on the book of the
        revision it names, at its risk version and the marks in force at its marks time."""
        d = self.p.decode
        records = self.p.orders.catch_up(min(60, max(5, self._left())))
        found: list[callcheck.Contradiction] = []
        for rec in records:
            o = d.order(rec.value)
            found += callcheck.check_order(callcheck.Order(o.order_id, o.account_id, f"{rec.partition}:{rec.offset}",
                                                           int(o.episode)), self.order_ids)
        starts = []
        for rec in (self.p.steps.catch_up(min(60, max(5, self._left()))) if self.p.steps is not None else ()):
            e = d.step(rec.value)
            if d.started(e):
                starts.append(callcheck.Start(e.account_id, f"{rec.partition}:{rec.offset}", int(e.episode),
                                              int(e.risk_version), int(e.account_revision), int(e.marks_time_ms)))
        # the snapshots and marks a start names were published before it: read after the starts
        self._read_positions()
        self._read_marks()
        judged = again = unnamed = no_book = unanswered = 0
        # in version order, as the calls: margin rebuilds an older version's model once
        for st in sorted(starts, key=lambda x: x.risk_version)[: self.o.recompute_max_calls]:
            if self._left() <= 0:
                result.notes.append("episode checks cut short: the time budget is spent")
                break
            if not st.names_inputs:
                unnamed += 1
                continue
            book = self._snapshot_at(st.account_id, st.account_revision)
            if book is None:
                no_book += 1
                continue
            fresh = self.p.platform.margin_at(st.account_id, self.marks.at(st.marks_time_ms), book=book,
                                              risk_version=st.risk_version, vols=self.marks.vols_at(st.marks_time_ms))
            same = callcheck.start_inputs_match(st, fresh)
            unanswered += fresh is None
            judged += same
            again += same and fresh is not None and fresh.state >= callcheck.LIQUIDATION
            if same and (c := callcheck.check_start(st, fresh)) is not None:
                found.append(c)
        result.orders_checked = len(records)
        result.episodes_started = len(starts)
        result.episodes_judged = judged
        result.bad_orders = len(found)
        if starts:
            result.notes.append(
                f"{len(starts)} episodes started; {judged} recomputed at their own revision, version and marks, "
                f"{again} of them in LIQUIDATION or BANKRUPT again (a part of the account below its MM), "
                f"{judged - again} not"
                + (f"; {no_book} without the snapshot of their revision (older than the {SNAPSHOT_REVISIONS} "
                   f"kept)" if no_book else "")
                + (f"; {unanswered} not answered (a risk version margin no longer keeps, or margin not serving)"
                   if unanswered else "")
                + (f"; {unnamed} naming no inputs" if unnamed else "")
                + (f"; the first {self.o.recompute_max_calls} recomputed" if len(starts) > self.o.recompute_max_calls
                   else ""))
        result.notes += [str(c) for c in found[:5]]

    # ---- recovery
    def wait_serving(self, over: float, result: FaultResult) -> None:
        deadline = self._until(self.o.serving_timeout_seconds)
        streak_since = None
        streak = 0
        down: list[str] = []
        while self.p.now() < deadline:
            down = self.p.platform.all_serving()
            ok = not down and self.p.platform.answers(self.sample_account)
            if ok:
                if streak == 0:
                    streak_since = self.p.now()
                streak += 1
                if streak >= 3:
                    result.to_serving_s = streak_since - over
                    return
            else:
                streak = 0
            if not self.p.processes.alive():
                raise RuntimeError("the supervisor exited")
            self.p.sleep(0.5)
        result.timed_out = True
        result.notes.append(f"not SERVING within the deadline: {', '.join(down) or 'queries not answering'}")

    def inject(self, fault: Fault) -> float:
        """Applies ``fault``; returns the time it is over."""
        if fault.kind == "kill":
            pid = self.p.processes.signal(fault.service, signal.SIGKILL)
            self.p.log(f"kill -9 {fault.service} (pid {pid})")
        elif fault.kind == "kafka_restart":
            self.p.log("stopping Kafka")
            self.p.infra.kafka("stop")
            self.p.log("starting Kafka (same data directory)")
            self.p.infra.kafka("start")
        elif fault.kind == "redis_flush":
            self.p.flush_redis()
            self.p.log("FLUSHALL on Redis")
        elif fault.kind == "redis_restart":
            self.p.infra.redis("stop")
            self.p.infra.redis("start")
            self.p.log("Redis restarted (empty)")
        elif fault.kind == "sigstop":
            pid = self.p.processes.signal(fault.service, signal.SIGSTOP)
            self.p.log(f"SIGSTOP {fault.service} (pid {pid}) for {self.o.sigstop_seconds:.0f} s")
            self.p.sleep(self.o.sigstop_seconds)
            self.p.processes.signal(fault.service, signal.SIGCONT)
            self.p.log(f"SIGCONT {fault.service}")
        else:
            raise ValueError(f"unknown fault {fault.kind}")
        return self.p.now()

    def one(self, fault: Fault) -> FaultResult:
        result = FaultResult(fault.label)
        killed_ms = self.p.wall_ms()
        over = self.inject(fault)
        self.p.sleep(1.0)      # let the fault be noticed (a flushed cache, a dead port) before polling
        self.wait_serving(over, result)
        self.p.generator.pause(150)
        self.verify(result, over, first=False)
        if fault.kind == "kill" and self.p.first_output is not None:
            # Measured after the checks: by then a restarted service has had time to publish.
            stamp = self.p.first_output(fault.service, killed_ms)
            if stamp is not None:
                result.to_output_s = (stamp - killed_ms) / 1000
        self.p.log(f"{fault.label}: serving after {result.to_serving_s}, correct after {result.to_correct_s}, "
                   f"{result.mismatches} mismatches, {result.contradicting_calls} contradicting calls")
        return result

    def run(self, faults: list[Fault], started: float) -> list[FaultResult]:
        results = self.results     # kept on the runner: an interrupted run still reports what it measured
        start = FaultResult("start (demo book loaded)")
        self.wait_serving(started, start)
        self.verify(start, started, first=True)
        results.append(start)
        self.p.log(f"start: {start.accounts_checked} accounts, {start.fills_checked} fills, "
                   f"{start.mismatches} mismatches")
        for fault in faults:
            if self._left() < self.o.steady_seconds + 60:
                r = FaultResult(fault.label, timed_out=True)
                r.notes.append("not run: the time budget is spent")
                results.append(r)
                continue
            self.p.generator.resume()
            self.p.sleep(self.o.steady_seconds)
            results.append(self.one(fault))
        return results
