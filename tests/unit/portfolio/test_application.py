"""Application layer with fakes: batch application, exactly-once across crashes, admin requests."""

from decimal import Decimal as D

import pytest

from marginflow.portfolio.adapters.codec import SnapshotEncoder
from marginflow.portfolio.application import AdminError, AdminService, Applier, ApplyTurn, InputRecord
from marginflow.shared.host import Every, ServiceLoop
from marginflow.portfolio.domain.model import Account, Deposit, Fill, InputPosition, MarginMode, Side, Withdrawal
from marginflow.shared.clock import ManualClock
from marginflow.shared.errors import Rejected

A = "acct-1"


class FakeStore:
    def __init__(self, journal):
        self.data: dict[str, bytes] = {}
        self.journal = journal
        self.fail_save = False

    def load_payloads(self, ids):
        return {i: self.data[i] for i in ids if i in self.data}

    def save(self, changes):
        if self.fail_save:
            raise ConnectionError("redis down")
        self.journal.append(("save", [c.account.account_id for c in changes]))
        for c in changes:
            self.data[c.account.account_id] = c.payload


class FakeSink:
    def __init__(self, journal):
        self.journal = journal
        self.published: dict[str, bytes] = {}

    def publish(self, changes):
        self.journal.append(("publish", [c.account.account_id for c in changes]))
        for c in changes:
            self.published[c.account.account_id] = c.payload


class FakeSource:
    def __init__(self, batches=()):
        self.batches = list(batches)
        self.rejected: list[tuple[InputRecord, Rejected]] = []
        self.commits = 0
        self.rewound = []

    def poll(self):
        return self.batches.pop(0) if self.batches else []

    def reject(self, record, reason):
        self.rejected.append((record, reason))

    def commit(self):
        self.commits += 1

    def rewind(self, records):
        self.rewound.append(records)
        self.batches.insert(0, records)


def rec(offset, command, key=A, topic="trades.fills:0"):
    return InputRecord(InputPosition(topic, offset), key, command)


def fill(n, side=Side.BUY, size="0.5", price="60000", fee="15"):
    return Fill(f"f{n}", A, "BTC-PERP", side, D(size), D(price), D(fee), 1000 + n)


@pytest.fixture
def world(rules):
    journal = []
    store, sink, source = FakeStore(journal), FakeSink(journal), FakeSource()
    applier = Applier(rules, store, sink, source, SnapshotEncoder(), ManualClock(1), None)
    return applier, store, sink, source, journal


def state(store, account_id=A):
    from marginflow.portfolio.adapters.codec import decode_account
    return decode_account(store.data[account_id])


def test_batch_publishes_the_snapshot_before_writing_the_store(world):
    applier, store, sink, source, journal = world
    result = applier.apply_batch([rec(0, Deposit("d1", A, "USDC", D(1000), 1), topic="account.events:0"),
                                  rec(0, fill(1)), rec(1, fill(2, Side.SELL, "0.2", "61000", "6.1"))])
    assert (result.fills_applied, result.events_applied, result.accounts_changed) == (2, 1, 1)
    assert journal == [("publish", [A]), ("save", [A])]
    acct = state(store)
    # 1,000 − 15 + 0.2 × 1,000 − 6.1 = 1,178.9 USDC; +0.3 BTC left
    assert acct.balance("USDC") == D("1178.9") and acct.positions["BTC-PERP"].size == D("0.3")
    assert acct.applied_offsets == {"account.events:0": 0, "trades.fills:0": 1}
    assert sink.published[A] == store.data[A]


def test_crash_after_apply_before_commit_redelivers_and_nothing_doubles(world):
    applier, store, sink, source, journal = world
    batch = [rec(0, fill(1)), rec(1, fill(2))]
    applier.apply_batch(batch)          # applied, but the process dies before the offset commit
    before = store.data[A]
    again = applier.apply_batch(batch)  # the new consumer gets the same records
    assert (again.fills_applied, again.duplicates, again.accounts_changed) == (0, 2, 0)
    assert store.data[A] == before and state(store).positions["BTC-PERP"].size == D(1)


def test_crash_after_publish_before_store_write_reapplies_to_the_same_result(world):
    applier, store, sink, source, journal = world
    applier.apply_batch([rec(0, fill(1))])
    store.fail_save = True
    with pytest.raises(ConnectionError):
        applier.apply_batch([rec(1, fill(2))])      # snapshot published, Redis write lost
    store.fail_save = False
    applier.forget_cache()
    result = applier.apply_batch([rec(1, fill(2))])   # redelivered: the store still has the old state
    assert result.fills_applied == 1
    assert state(store).positions["BTC-PERP"].size == D(1)
    assert sink.published[A] == store.data[A]


def test_loop_rewinds_a_failed_batch_and_commits_only_after_success(world):
    applier, store, sink, source, journal = world
    import threading
    stopping = threading.Event()
    store.fail_save = True
    source.batches = [[rec(0, fill(1))]]

    def tick():
        if source.rewound:
            store.fail_save = False
        if source.commits:
            stopping.set()
    turn = ApplyTurn(source, applier)
    ServiceLoop("portfolio", turn, every=[Every(0.0, tick)], recover=turn.recover, retry_seconds=0.0).run(stopping)
    totals = turn.totals
    assert len(source.rewound) == 1 and source.commits == 1 and totals.fills_applied == 1
    assert state(store).positions["BTC-PERP"].size == D("0.5")


def test_rejected_and_malformed_records_are_dead_lettered_and_change_nothing(world):
    applier, store, sink, source, journal = world
    applier.apply_batch([rec(0, Deposit("d1", A, "USDC", D(100), 1), topic="account.events:0")])
    before = store.data[A]
    result = applier.apply_batch([
        rec(1, Withdrawal("w1", A, "USDC", D(500), 2), topic="account.events:0"),      # more than the balance
        rec(2, Deposit("d2", A, "USDC", D(-1), 3), topic="account.events:0"),          # negative deposit
        rec(0, Rejected("non_finite", "size is not finite: 'NaN'")),                   # did not decode
        rec(1, Fill("fx", "acct-2", "BTC-PERP", Side.BUY, D(1), D(1), D(0), 1)),       # key is acct-1
    ])
    assert result.rejected == 4 and result.accounts_changed == 0
    assert [r.code for _, r in source.rejected] == ["insufficient_balance", "non_positive_amount", "non_finite",
                                                   "key_mismatch"]
    assert store.data[A] == before


def test_accounts_are_independent_within_a_batch(world):
    applier, store, sink, source, journal = world
    other = Fill("g1", "acct-2", "ETH-PERP", Side.SELL, D(1), D(3000), D(0), 5)
    result = applier.apply_batch([rec(0, fill(1)), rec(0, other, key="acct-2", topic="trades.fills:1")])
    assert result.accounts_changed == 2
    assert state(store, "acct-2").positions["ETH-PERP"].size == D(-1)


# ---- admin ----------------------------------------------------------------------------------

class FakeReader:
    def __init__(self):
        self.accounts: dict[str, Account] = {}

    def get(self, account_id):
        return self.accounts.get(account_id)


class FakeEvents:
    def __init__(self):
        self.events = []

    def publish_event(self, event):
        self.events.append(event)


class FakeRequests:
    def __init__(self):
        self.seen_ids = {}

    def seen(self, account_id, request_id):
        return self.seen_ids.get((account_id, request_id))

    def remember(self, account_id, request_id, event_id):
        self.seen_ids[(account_id, request_id)] = event_id


@pytest.fixture
def admin(rules):
    reader, events, requests = FakeReader(), FakeEvents(), FakeRequests()
    reader.accounts[A] = Account(A, {"USDC": D(100)})
    return AdminService(rules, reader, events, requests, ManualClock(42)), reader, events


def test_admin_withdrawal_within_free_balance_is_published_once_per_request_id(admin):
    service, reader, events = admin
    first = service.withdraw(A, "USDC", "60", "req-1")
    assert first.event_id == "adm-req-1" and first.accepted
    again = service.withdraw(A, "USDC", "60", "req-1")
    assert again.duplicate and len(events.events) == 1
    assert events.events[0] == Withdrawal("adm-req-1", A, "USDC", D(60), 42)


def test_admin_withdrawal_above_free_balance_is_a_failed_precondition(admin):
    service, reader, events = admin
    with pytest.raises(AdminError) as err:
        service.withdraw(A, "USDC", "100.01", "req-2")
    assert err.value.status == "failed_precondition" and "free balance 100" in err.value.message
    assert events.events == []


@pytest.mark.parametrize("call", [
    lambda s: s.deposit(A, "USDC", "-5", "r"), lambda s: s.deposit(A, "USDC", "NaN", "r"),
    lambda s: s.deposit(A, "USDC", "", "r"), lambda s: s.deposit(A, "USDC", "5", ""),
    lambda s: s.deposit("bad id!", "USDC", "5", "r"), lambda s: s.set_mode(A, "BTC-PERP", 0, "r"),
    lambda s: s.set_mode(A, "NOPE", 1, "r"), lambda s: s.deposit(A, "DOGE", "5", "r"),
])
def test_admin_bad_arguments_are_invalid_argument(admin, call):
    service, reader, events = admin
    with pytest.raises(AdminError) as err:
        call(service)
    assert err.value.status == "invalid_argument" and events.events == []


def test_admin_mode_change_with_open_position_is_a_failed_precondition(admin):
    service, reader, events = admin
    from marginflow.portfolio.domain.model import Position
    reader.accounts[A] = Account(A, {"USDC": D(100)}, {"BTC-PERP": Position("BTC-PERP", D(1), D(60000))})
    with pytest.raises(AdminError) as err:
        service.set_mode(A, "BTC-PERP", int(MarginMode.ISOLATED), "r9")
    assert err.value.status == "failed_precondition"


def test_admin_request_already_applied_is_accepted_without_republishing(admin):
    service, reader, events = admin
    reader.accounts[A] = Account(A, {"USDC": D(0)}, recent_ids=("e:adm-req-5",))
    result = service.withdraw(A, "USDC", "60", "req-5")   # applied earlier: balance now 0, still accepted
    assert result.duplicate and events.events == []


class RefusingGate:
    def __init__(self, answer):
        self.answer, self.asked = answer, []

    def check(self, account, asset, amount):
        self.asked.append((account.account_id, asset, amount))
        return self.answer


@pytest.mark.parametrize("answer", ["withdrawal refused: it would leave equity below the initial margin", None])
def test_admin_withdrawal_asks_the_margin_gate_and_a_refusal_is_a_failed_precondition(rules, answer):
    reader, events, requests = FakeReader(), FakeEvents(), FakeRequests()
    reader.accounts[A] = Account(A, {"USDC": D(100)})
    gate = RefusingGate(answer)
    service = AdminService(rules, reader, events, requests, ManualClock(42), gate)
    if answer is None:
        assert service.withdraw(A, "USDC", "60", "req-g").accepted
        assert len(events.events) == 1
    else:
        with pytest.raises(AdminError) as err:
            service.withdraw(A, "USDC", "60", "req-g")
        assert err.value.status == "failed_precondition" and "initial margin" in err.value.message
        assert not events.events
    assert gate.asked == [(A, "USDC", D(60))]
    service.deposit(A, "USDC", "5", "req-d")          # deposits never ask
    assert len(gate.asked) == 1


def test_the_margin_gate_refuses_when_margin_is_unreachable():
    from marginflow.portfolio.adapters.margin_gate import MarginWithdrawalGate
    from marginflow.portfolio.domain.model import Position

    gate = MarginWithdrawalGate("127.0.0.1:1", timeout_s=0.5)
    try:
        account = Account(A, {"USDC": D(100)}, {"BTC-PERP": Position("BTC-PERP", D(1), D(60000))})
        refusal = gate.check(account, "USDC", D(10))
        assert refusal is not None and "cannot confirm" in refusal
    finally:
        gate.close()
