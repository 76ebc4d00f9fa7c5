"""Application layer: applies batches of inputs exactly once in effect, and serves admin requests.

Everything it touches comes in as a port (a Protocol below); the entry point passes the Kafka,
Redis and Prometheus adapters, the unit tests pass fakes.

Exactly once in effect, per batch (see the README for the full argument):

1. load the current state of every account in the batch (one read);
2. apply the records in order; a record whose offset the account has already applied, whose id is
   among its recent ids, or a fill whose id its partition carried at an earlier offset (the index of
   :mod:`marginflow.portfolio.domain.fill_ids`), changes nothing; a rejected one goes to the
   dead-letter port;
3. publish the new snapshot of every changed account to the compacted topic and wait for the
   acknowledgement (Kafka is the truth, so it is written first);
4. write the same snapshots to Redis (one pipeline; a single SET per account is atomic and
   carries the applied offsets and recent ids with the state);
5. only then commit the consumer offsets (:class:`ApplyTurn`).

A crash anywhere before 5 redelivers the batch: records already in the state are skipped by
offset; the others are applied again to the same state and give the same result.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Protocol

from marginflow.portfolio.domain.fill_ids import PartitionFillIds
from marginflow.portfolio.domain.ledger import LedgerRules, Outcome, apply_command, check_account_id, check_id, validate
from marginflow.portfolio.domain.open_interest import Contribution, OpenInterestLedger, Sides, sum_sides
from marginflow.portfolio.domain.model import (
    Account, AccountEvent, Command, Deposit, Fill, InputPosition, IsolatedTransfer, MarginMode, ModeChange, Withdrawal)
from marginflow.shared.clock import Clock
from marginflow.shared.errors import Rejected
from marginflow.shared.logs import get_logger
from marginflow.shared.money import parse_decimal
from marginflow.shared.metrics import NullMetrics

log = get_logger(__name__)


# ---- ports ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class InputRecord:
    """One consumed record: where it came from, its key, and the command (or why none)."""

    at: InputPosition
    key: str
    command: Command | Rejected     # Rejected: the payload did not translate into a command
    handle: object = None           # the source's own record, for dead-lettering
    time_ms: int = 0                # the record's log time (Kafka timestamp)


@dataclasses.dataclass(frozen=True, slots=True)
class StateChange:
    """A changed account, its encoded snapshot, and how its set of open instruments changed."""

    account: Account
    payload: bytes
    opened: frozenset[str]
    closed: frozenset[str]
    created: bool
    before: Account | None = None   # the state the batch started from (None: a new account)
    partition: int = -1             # the input partition whose records changed it


class RecordSource(Protocol):
    def poll(self) -> list[InputRecord]: ...
    def reject(self, record: InputRecord, reason: Rejected) -> None: ...
    def commit(self) -> None: ...
    def rewind(self, records: Sequence[InputRecord]) -> None: ...


class FillHistory(Protocol):
    def ids(self, partition: int, start_offset: int, end_offset: int, since_ms: int
            ) -> Sequence[tuple[str, str, int, int]]:
        """(record key, fill id, offset, log time ms) of the records of ``trades.fills`` partition ``partition``
        at offsets from ``start_offset`` (or the first at or after log time ``since_ms``, whichever is later)
        up to ``end_offset`` (excluded); records that are no Fill are left out."""
    def read(self, partition: int, offsets: Sequence[int]) -> Sequence[InputRecord]:
        """The records at these offsets of the partition, decoded."""


class CacheLost(Exception):
    """The cache no longer holds (or may not hold) every account of these partitions (Redis emptied,
    restarted, failed over): nothing may be applied to them until they are rebuilt from Kafka."""

    def __init__(self, partitions: Iterable[int]) -> None:
        self.partitions = frozenset(partitions)
        super().__init__(f"account cache lost for partitions {sorted(self.partitions)}")


class StateStore(Protocol):
    def load_payloads(self, account_partitions: Mapping[str, int]) -> dict[str, bytes]:
        """Payloads of the accounts present (account → its partition); raises :class:`CacheLost` when
        the cache of any of those partitions is not intact (an absent account is then unknown, not new)."""
    def save(self, changes: Sequence[StateChange]) -> None: ...


class SnapshotSink(Protocol):
    def publish(self, changes: Sequence[StateChange]) -> None:
        """Publish every snapshot and return once the broker has acknowledged them."""


class SnapshotCodec(Protocol):
    def encode(self, account: Account, publish_time_ms: int) -> bytes: ...
    def decode(self, payload: bytes) -> Account: ...


class AppliedChanges(Protocol):
    def applied(self, changes: Sequence[StateChange]) -> None:
        """The batch's changes are in the store (called after the save, before the offsets are committed)."""


class ApplyMetrics(Protocol):
    def applied(self, kind: str, count: int) -> None: ...
    def duplicate(self, by: str) -> None: ...
    def rejected(self, reason: str) -> None: ...
    def batch_seconds(self, seconds: float) -> None: ...


@dataclasses.dataclass
class BatchResult:
    fills_applied: int = 0
    events_applied: int = 0
    duplicates: int = 0
    rejected: int = 0
    accounts_changed: int = 0

    def add(self, other: "BatchResult") -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


# ---- applying batches -----------------------------------------------------------------------

class Applier:
    """Applies batches of records to account states held by ``store``; see the module docstring.

    Decoded states are cached by their exact stored bytes: an account is decoded again only
    when the bytes in the store differ from those this applier wrote (another writer, a rebuild).

    With ``fill_history`` (and ``fills_topic``), a fill whose id its ``trades.fills`` partition carried
    at an earlier offset within ``fill_ids_horizon_ms`` is a duplicate, whatever the account's fill rate
    (:mod:`marginflow.portfolio.domain.fill_ids`); the part of a partition not yet indexed (at start, after
    a rebalance) is read from Kafka before the batch is applied.
    """

    def __init__(self, rules: LedgerRules, store: StateStore, snapshots: SnapshotSink, source: RecordSource,
                 codec: SnapshotCodec, clock: Clock, metrics: ApplyMetrics | None = None,
                 cache_accounts: int = 200_000, fill_history: FillHistory | None = None, fills_topic: str = "",
                 fill_ids_horizon_ms: int = 600_000, on_applied: AppliedChanges | None = None) -> None:
        self._rules = rules
        self._store = store
        self._snapshots = snapshots
        self._source = source
        self._codec = codec
        self._clock = clock
        self._metrics = metrics or NullMetrics()
        self._cache: OrderedDict[str, tuple[bytes, Account]] = OrderedDict()
        self._cache_max = cache_accounts
        self._history = fill_history
        self._fills_prefix = f"{fills_topic}:"
        self._horizon_ms = fill_ids_horizon_ms
        self._fill_ids: dict[int, PartitionFillIds] = {}
        self._on_applied = on_applied

    def fill_ids_indexed(self) -> int:
        """Fill ids held by the republish index (every partition)."""
        return sum(len(ix) for ix in self._fill_ids.values())

    def _fill_indexes(self, records: Sequence[InputRecord]) -> dict[int, PartitionFillIds]:
        """The index of every fills partition of the batch, first completed from Kafka up to the batch."""
        if self._history is None:
            return {}
        first: dict[int, int] = {}
        prefix = self._fills_prefix
        for r in records:
            if r.at.stream.startswith(prefix):
                p = r.at.partition
                if r.at.offset < first.get(p, 1 << 62):
                    first[p] = r.at.offset
        out: dict[int, PartitionFillIds] = {}
        for p, offset in first.items():
            ix = self._fill_ids.get(p)
            if ix is None:
                ix = self._fill_ids[p] = PartitionFillIds(self._horizon_ms)
            if ix.covered_to < offset - 1:
                started = time.perf_counter()
                since = self._clock.now_ms() - self._horizon_ms
                history = self._history.ids(p, ix.covered_to + 1, offset, since)
                for key, fill_id, at, time_ms in history:
                    ix.add_unverified((key, fill_id), at, time_ms)
                ix.advance(offset - 1)
                log.info("fill ids of a partition read back from Kafka", extra={
                    "partition": p, "records": len(history), "ids": len(ix),
                    "seconds": round(time.perf_counter() - started, 3)})
            out[p] = ix
        return out

    def forget_cache(self) -> None:
        self._cache.clear()

    def _load(self, account_partitions: Mapping[str, int]) -> dict[str, Account]:
        payloads = self._store.load_payloads(account_partitions)
        out: dict[str, Account] = {}
        for account_id, payload in payloads.items():
            cached = self._cache.get(account_id)
            if cached is not None and cached[0] == payload:
                out[account_id] = cached[1]
            else:
                out[account_id] = self._codec.decode(payload)
        return out

    def apply_batch(self, records: Sequence[InputRecord]) -> BatchResult:
        started = time.perf_counter()
        result = BatchResult()
        wanted = {r.command.account_id: r.at.partition for r in records if not isinstance(r.command, Rejected)}
        indexes = self._fill_indexes(records)
        before = self._load(wanted)
        current: dict[str, Account] = dict(before)
        rules = self._rules
        events_by_kind: dict[str, int] = {}   # counted once per batch, not per record
        for record in records:
            ix = indexes.get(record.at.partition) if indexes and record.at.stream.startswith(self._fills_prefix) \
                else None
            if ix is not None:
                ix.advance(record.at.offset)
            command = record.command
            if isinstance(command, Rejected):
                self._reject(record, command, result)
                continue
            account_id = command.account_id
            if record.key != account_id:
                self._reject(record, Rejected(
                    "key_mismatch", f"record key {record.key!r} is not the account id {account_id!r}"), result)
                continue
            if ix is not None and type(command) is Fill:
                fill_key = (account_id, command.fill_id)
                if ix.earlier(fill_key, record.at.offset) and ix.unverified(fill_key):
                    copies = self._history.read(record.at.partition, ix.unverified(fill_key))  # type: ignore[union-attr]
                    ix.settle(fill_key, [r.at.offset for r in copies if _valid_fill(r, rules)])
                if ix.earlier(fill_key, record.at.offset):
                    result.duplicates += 1
                    self._metrics.duplicate("id")
                    continue
            account = current.get(account_id)
            if account is None:
                try:
                    check_account_id(account_id)
                except Rejected as exc:
                    self._reject(record, exc, result)
                    continue
                account = Account(account_id)
            try:
                new, outcome = apply_command(account, command, record.at, rules)
            except Rejected as exc:
                self._reject(record, exc, result)
                continue
            if ix is not None and type(command) is Fill and (outcome is not Outcome.DUPLICATE_OFFSET
                                                            or _valid_fill(record, rules)):
                ix.add(fill_key, record.at.offset, record.time_ms)
            if outcome is Outcome.APPLIED:
                current[account_id] = new
                if type(command) is Fill:
                    result.fills_applied += 1
                else:
                    result.events_applied += 1
                    kind = _EVENT_KINDS.get(type(command), "other")
                    events_by_kind[kind] = events_by_kind.get(kind, 0) + 1
            else:
                result.duplicates += 1
                self._metrics.duplicate("offset" if outcome is Outcome.DUPLICATE_OFFSET else "id")
        changes = self._changes(before, current, wanted)
        if changes:
            self._snapshots.publish(changes)   # the truth first ...
            self._store.save(changes)          # ... then the cache of it
            for change in changes:
                self._remember(change.account.account_id, change.payload, change.account)
            if self._on_applied is not None:
                self._on_applied.applied(changes)
        result.accounts_changed = len(changes)
        if result.fills_applied:
            self._metrics.applied("fill", result.fills_applied)
        for kind, count in events_by_kind.items():
            self._metrics.applied(kind, count)
        self._metrics.batch_seconds(time.perf_counter() - started)
        return result

    def _changes(self, before: Mapping[str, Account], current: Mapping[str, Account],
                 partitions: Mapping[str, int]) -> list[StateChange]:
        now_ms = self._clock.now_ms()
        changes: list[StateChange] = []
        for account_id, account in current.items():
            old = before.get(account_id)
            if account is old:
                continue
            old_open = old.open_instruments() if old is not None else frozenset()
            new_open = account.open_instruments()
            changes.append(StateChange(account, self._codec.encode(account, now_ms), new_open - old_open,
                                       old_open - new_open, old is None, old, partitions.get(account_id, -1)))
        return changes

    def _remember(self, account_id: str, payload: bytes, account: Account) -> None:
        self._cache[account_id] = (payload, account)
        self._cache.move_to_end(account_id)
        while len(self._cache) > self._cache_max:
            self._cache.popitem(last=False)

    def _reject(self, record: InputRecord, exc: Rejected, result: BatchResult) -> None:
        result.rejected += 1
        self._metrics.rejected(exc.code)
        self._source.reject(record, exc)


def _valid_fill(record: InputRecord, rules: LedgerRules) -> bool:
    """A fill the ledger would accept (the index holds those alone: a corrected fill republished under the
    id of a dead-lettered one is applied)."""
    command = record.command
    if type(command) is not Fill or record.key != command.account_id:
        return False
    try:
        check_account_id(command.account_id)
        validate(command, rules)
    except Rejected:
        return False
    return True


_EVENT_KINDS: dict[type, str] = {Deposit: "deposit", Withdrawal: "withdrawal", IsolatedTransfer: "isolated_transfer",
                                 ModeChange: "mode_change"}


class ApplyTurn:
    """One turn of the portfolio's service loop: poll → apply → commit.

    An infrastructure failure (Redis or Kafka unreachable) propagates to the service loop, whose
    recovery (:meth:`recover`) rewinds the consumer to the start of the failed batch: the loop
    retries it after a pause, nothing is committed that was not applied, and the retry changes
    nothing that was. A lost cache (:class:`CacheLost`, raised before anything of the batch is
    published) is rebuilt from Kafka first, through the ``rebuild`` port.
    """

    def __init__(self, source: RecordSource, applier: Applier, totals: BatchResult | None = None,
                 rebuild: Callable[[frozenset[int]], object] | None = None) -> None:
        self.source = source
        self.applier = applier
        self.totals = totals if totals is not None else BatchResult()
        self._rebuild = rebuild
        self._pending: list[InputRecord] | None = None

    def __call__(self) -> int:
        records = self.source.poll()
        if not records:
            return 0
        self._pending = records
        self.totals.add(self.applier.apply_batch(records))
        self._pending = None
        self.source.commit()
        return len(records)

    def recover(self, exc: BaseException) -> None:
        self.applier.forget_cache()
        if isinstance(exc, CacheLost) and self._rebuild is not None:
            log.warning("account cache lost; rebuilding from Kafka", extra={"partitions": sorted(exc.partitions)})
            self._rebuild(exc.partitions)
        if self._pending:
            log.warning("rewinding a failed batch to retry it", extra={"records": len(self._pending)})
            self.source.rewind(self._pending)
            self._pending = None


# ---- open interest ---------------------------------------------------------------------------

class PartitionScan(Protocol):
    def open_interest_sums(self, partitions: Iterable[int], partition_count: int, instruments: frozenset[str]
                           ) -> dict[int, dict[str, Sides]]:
        """(long, short) per instrument of the accounts of each partition, for the partitions whose cache was
        whole throughout the reading (the others are left out: summed later, once rebuilt)."""


class ContributionSink(Protocol):
    def publish(self, contributions: Sequence[Contribution], retired: Sequence[tuple[str, int]]) -> None:
        """Publish the contributions, and tombstones for the (instrument, partition) keys retired; return once
        the broker has acknowledged them."""


class OpenInterestPublisher:
    """Each owned input partition's share of every instrument's open interest, to ``portfolio.open_interest``.

    The sums follow every applied batch (the Applier's ``on_applied`` port, after the store is written).
    A partition assigned to this instance, or whose cache was rebuilt, is summed afresh from its accounts
    in the store — the same states the next batch starts from, so later deltas stay exact. What changed
    goes out after each turn, and only once the instance is ready (every owned partition read to its
    end offset at assignment): until then the partition's previous record stands, which is at least as
    right as a partial catch-up. A partition summed afresh publishes every instrument, so a new owner
    overwrites whatever the previous one left. Each record carries the fills offset it reflects; a
    reader keeps, per key, the record with the highest (a late record of a previous owner is older).
    Keys of instruments no longer in the universe (``retired``: read back at start) get a tombstone
    from their partition's owner.
    """

    def __init__(self, ledger: OpenInterestLedger, scan: PartitionScan, sink: ContributionSink, partition_count: int,
                 retired: Mapping[int, Iterable[str]] | None = None) -> None:
        self.ledger = ledger
        self._scan = scan
        self._sink = sink
        self._partition_count = partition_count
        self._retired = {p: set(symbols) for p, symbols in (retired or {}).items()}
        self._published: dict[int, dict[str, Sides]] = {}

    # AppliedChanges port
    def applied(self, changes: Sequence[StateChange]) -> None:
        for change in changes:
            if not self.ledger.apply(change.partition, change.before, change.account):
                log.warning("open interest sums disagree with the account states; summing the partition afresh",
                            extra={"partition": change.partition, "account": change.account.account_id})

    def assigned(self, partitions: Iterable[int]) -> None:
        """A rebalance gave these partitions (again): their accounts may have moved on meanwhile elsewhere."""
        self.ledger.forget(partitions)

    def rebuilt(self, partitions: Iterable[int]) -> None:
        """The cache of these partitions was rebuilt from Kafka: the states the next batch starts from changed."""
        self.ledger.forget(partitions)

    def turn(self, owned: frozenset[int], ready: bool, offsets: Callable[[Iterable[int]], Mapping[int, int]]) -> int:
        """Sum what is missing; once ``ready``, publish what changed. ``offsets`` gives the next fills offset of
        each partition (everything before it applied). Returns the records published."""
        gone = (self.ledger.partitions() | self._published.keys()) - owned
        if gone:
            self.ledger.forget(gone)
            for p in gone:
                self._published.pop(p, None)
        missing = self.ledger.missing(owned)
        if missing:
            for p, sums in self._scan.open_interest_sums(sorted(missing), self._partition_count,
                                                         self.ledger.instruments).items():
                self.ledger.reset(p, sums)
        if not ready:
            return 0
        waiting = self.ledger.dirty() | {p for p, symbols in self._retired.items() if symbols and p in owned}
        if not waiting:
            return 0
        at = offsets(sorted(waiting & self.ledger.partitions()))
        pending = self.ledger.pending(at)
        retired = [(symbol, p) for p in sorted(at) for symbol in sorted(self._retired.get(p, ()))]
        if not pending and not retired:
            return 0
        self._sink.publish(pending, retired)
        self.ledger.published(pending)
        for c in pending:
            self._published.setdefault(c.partition, {})[c.instrument] = (c.long_contracts, c.short_contracts)
        for symbol, p in retired:
            self._retired[p].discard(symbol)
        if retired:
            log.info("open interest of instruments no longer in the universe retired",
                     extra={"keys": [f"{s}/{p}" for s, p in retired]})
        return len(pending) + len(retired)

    def published_totals(self) -> dict[str, Sides]:
        """Σ over the owned partitions of what was last published, per instrument."""
        return sum_sides(self._published.values())


# ---- admin requests -------------------------------------------------------------------------

class AdminError(Exception):
    """An admin request refused: ``status`` is ``invalid_argument`` or ``failed_precondition``."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class AccountReader(Protocol):
    def get(self, account_id: str) -> Account | None: ...


class EventPublisher(Protocol):
    def publish_event(self, event: AccountEvent) -> None:
        """Publish to account.events and return once the broker has acknowledged it."""


class RequestLog(Protocol):
    def seen(self, account_id: str, request_id: str) -> str | None: ...
    def remember(self, account_id: str, request_id: str, event_id: str) -> None: ...


class WithdrawalGate(Protocol):
    def check(self, account: Account, asset: str, amount: Decimal) -> str | None:
        """None when the margin allows the withdrawal, else why not (margin unreachable: refused)."""


@dataclasses.dataclass(frozen=True)
class AdminResult:
    event_id: str
    accepted: bool
    duplicate: bool = False


# Refusals that depend on the account's state, not on the request itself.
_PRECONDITIONS = frozenset({"insufficient_balance", "insufficient_isolated_collateral", "position_open",
                            "not_isolated"})


class AdminService:
    """Deposits, withdrawals, mode changes and isolated transfers requested over gRPC.

    Each request becomes an :class:`AccountEvent` published to account.events with the event id
    ``adm-<request_id>``, so a repeated request is applied at most once; the consumer applies it
    like any other event. Before publishing, the request is tried on the account's current state:
    a withdrawal larger than the free balance (or another state-dependent refusal) is reported
    as ``failed_precondition`` and nothing is published.
    """

    def __init__(self, rules: LedgerRules, reader: AccountReader, events: EventPublisher, requests: RequestLog,
                 clock: Clock, gate: WithdrawalGate | None = None) -> None:
        self._rules = rules
        self._reader = reader
        self._events = events
        self._requests = requests
        self._clock = clock
        self._gate = gate

    def deposit(self, account_id: str, asset: str, amount: str, request_id: str) -> AdminResult:
        return self._submit(account_id, request_id, lambda eid, t: Deposit(
            eid, account_id, asset, _amount(amount, "amount"), t))

    def withdraw(self, account_id: str, asset: str, amount: str, request_id: str) -> AdminResult:
        return self._submit(account_id, request_id, lambda eid, t: Withdrawal(
            eid, account_id, asset, _amount(amount, "amount"), t))

    def set_mode(self, account_id: str, instrument: str, mode: int, request_id: str) -> AdminResult:
        def build(eid: str, t: int) -> ModeChange:
            if mode not in (MarginMode.CROSS, MarginMode.ISOLATED):
                raise Rejected("bad_mode", f"mode must be MARGIN_MODE_CROSS or MARGIN_MODE_ISOLATED, got {mode}")
            return ModeChange(eid, account_id, instrument, MarginMode(mode), t)
        return self._submit(account_id, request_id, build)

    def transfer_isolated(self, account_id: str, instrument: str, amount_usd: str, request_id: str) -> AdminResult:
        return self._submit(account_id, request_id, lambda eid, t: IsolatedTransfer(
            eid, account_id, instrument, _amount(amount_usd, "amount_usd"), t))

    def _submit(self, account_id: str, request_id: str, build: Callable[[str, int], AccountEvent]) -> AdminResult:
        try:
            check_account_id(account_id)
            check_id(request_id, "request_id")
            event = build(f"adm-{request_id}", self._clock.now_ms())
            validate(event, self._rules)
        except Rejected as exc:
            raise AdminError("invalid_argument", exc.detail) from None
        previous = self._requests.seen(account_id, request_id)
        if previous is not None:
            return AdminResult(previous, True, duplicate=True)
        state = self._reader.get(account_id) or Account(account_id)
        if event.dedupe_id in state.recent_ids:
            return AdminResult(event.event_id, True, duplicate=True)
        try:
            apply_command(state, event, None, self._rules)   # dry run on the current state
        except Rejected as exc:
            status = "failed_precondition" if exc.code in _PRECONDITIONS else "invalid_argument"
            raise AdminError(status, exc.detail) from None
        if isinstance(event, Withdrawal) and self._gate is not None:
            refusal = self._gate.check(state, event.asset, event.amount)
            if refusal is not None:
                raise AdminError("failed_precondition", refusal)
        self._events.publish_event(event)
        self._requests.remember(account_id, request_id, event.event_id)
        return AdminResult(event.event_id, True)


def _amount(text: str, what: str) -> Decimal:
    if not text:
        raise Rejected("missing_field", f"{what} is missing")
    return parse_decimal(text, what)
