"""The republish index of a trades.fills partition, and the applier with it: a fill republished under its id
is applied once however many fills of its account lie between the copies (beyond any per-account id window),
also after the index is rebuilt from the log (a restart, a rebalance)."""

from decimal import Decimal as D

import pytest

from marginflow.portfolio.adapters.codec import SnapshotEncoder, decode_account
from marginflow.portfolio.application import Applier, InputRecord
from marginflow.portfolio.domain.fill_ids import PartitionFillIds
from marginflow.portfolio.domain.model import Fill, InputPosition, Side
from marginflow.shared.clock import ManualClock
from marginflow.shared.errors import Rejected

from test_application import FakeSink, FakeSource, FakeStore

HOUSE = "house"
TOPIC = "trades.fills"


def test_index_knows_the_first_offset_of_each_fill_id():
    ix = PartitionFillIds(horizon_ms=1000)
    ix.add(("a", "f1"), 5, 100)
    assert ix.earlier(("a", "f1"), 9)            # a later copy is a republish
    assert not ix.earlier(("a", "f1"), 5)        # the record itself (a redelivery) is not
    assert not ix.earlier(("b", "f1"), 9)        # ids are per account
    ix.add(("a", "f1"), 9, 120)                  # the republish keeps the first offset
    assert ix.earlier(("a", "f1"), 7) and len(ix) == 1


def test_index_forgets_ids_older_than_its_horizon_of_log_time():
    ix = PartitionFillIds(horizon_ms=1000)
    ix.add(("a", "old"), 1, 100)
    ix.add(("a", "new"), 2, 1000)
    assert ix.earlier(("a", "old"), 3)
    ix.add(("a", "newer"), 3, 1101)              # 1,101 − 1,000 > 100: "old" is beyond the horizon
    assert not ix.earlier(("a", "old"), 4) and ix.earlier(("a", "new"), 4)


def test_index_rejects_a_non_positive_horizon():
    with pytest.raises(ValueError, match="horizon_ms"):
        PartitionFillIds(0)


class LogHistory:
    """The partition's log as a list; records what the applier asked for."""

    def __init__(self, log):
        self.log = log
        self.reads = []
        self.fetched = []

    def ids(self, partition, start_offset, end_offset, since_ms):
        self.reads.append((partition, start_offset, end_offset))
        return [(r.key, r.command.fill_id, r.at.offset, r.time_ms) for r in self.log
                if start_offset <= r.at.offset < end_offset and r.time_ms >= since_ms and isinstance(r.command, Fill)]

    def read(self, partition, offsets):
        self.fetched.append(list(offsets))
        return [r for r in self.log if r.at.offset in offsets]


def fill_rec(offset, fill_id, account=HOUSE, size="0.001", partition=0):
    f = Fill(fill_id, account, "BTC-PERP", Side.BUY, D(size), D("60000"), D(0), 1000 + offset)
    return InputRecord(InputPosition(f"{TOPIC}:{partition}", offset), account, f, None, 10_000 + offset)


def busy_log(n=300):
    """The house takes ``n`` fills, then its fill 3 is republished (a redone step): far beyond 64 ids."""
    log = [fill_rec(i, f"h{i}") for i in range(n)]
    return log + [fill_rec(n, "h3")]


def applier_with(rules, history, window=64):
    import dataclasses
    journal = []
    store = FakeStore(journal)
    rules = dataclasses.replace(rules, dedupe_window=window)
    applier = Applier(rules, store, FakeSink(journal), FakeSource(), SnapshotEncoder(), ManualClock(20_000), None,
                      fill_history=history, fills_topic=TOPIC, fill_ids_horizon_ms=600_000)
    return applier, store


def test_a_republished_fill_beyond_the_id_window_is_applied_once(rules):
    log = busy_log()
    applier, store = applier_with(rules, LogHistory(log))
    applier.apply_batch(log[:-1])
    result = applier.apply_batch(log[-1:])
    assert (result.fills_applied, result.duplicates) == (0, 1)
    acct = decode_account(store.data[HOUSE])
    assert acct.positions["BTC-PERP"].size == D("0.300") and acct.revision == 300


def test_without_the_index_the_window_alone_applies_it_twice(rules):
    log = busy_log()
    applier, store = applier_with(rules, None)
    applier.apply_batch(log[:-1])
    assert applier.apply_batch(log[-1:]).fills_applied == 1      # what the index is for


def test_a_restarted_applier_reads_the_partition_back_before_applying(rules):
    """A new process (kill -9, or the partition moved here) has an empty index: it reads the log up to the
    batch's first offset, so the republish is recognised although this process never applied the original."""
    log = busy_log()
    first, _ = applier_with(rules, LogHistory(log))
    first.apply_batch(log[:-1])
    history = LogHistory(log)
    second, store = applier_with(rules, history)
    store.data = dict(first._store.data)             # the state the first instance left (Redis or the topic)
    result = second.apply_batch(log[-1:])
    assert history.reads == [(0, 0, 300)]
    assert history.fetched == [[3]]                  # the copy read back is validated when it matters
    assert (result.fills_applied, result.duplicates) == (0, 1)
    # a later batch continues from what is indexed: nothing read again
    second.apply_batch([fill_rec(301, "h301")])
    assert history.reads == [(0, 0, 300)]


def test_a_gap_in_the_partition_is_read_before_the_records_after_it(rules):
    log = busy_log()
    history = LogHistory(log)
    applier, store = applier_with(rules, history)
    applier.apply_batch(log[:100])
    # the partition went to another instance (which applied 100..299) and came back
    applier.forget_cache()
    other, _ = applier_with(rules, LogHistory(log))
    other._store.data = dict(store.data)
    other.apply_batch(log[100:300])
    store.data = dict(other._store.data)
    result = applier.apply_batch(log[300:])
    assert history.reads[-1] == (0, 100, 300)
    assert result.duplicates == 1


def test_a_dead_lettered_fill_does_not_hide_its_corrected_republish(rules):
    """The index holds fills the ledger accepts: a fill refused (here: not a whole number of lots) and sent
    again corrected under the same id is applied."""
    bad = fill_rec(0, "h0", size="0.0015")
    good = fill_rec(1, "h0", size="0.002")
    applier, store = applier_with(rules, LogHistory([bad, good]))
    applier.apply_batch([bad])
    result = applier.apply_batch([good])
    assert result.fills_applied == 1
    assert decode_account(store.data[HOUSE]).positions["BTC-PERP"].size == D("0.002")


def test_a_redelivered_batch_stays_a_duplicate_by_offset(rules):
    log = busy_log(10)
    applier, store = applier_with(rules, LogHistory(log))
    applier.apply_batch(log[:10])
    again = applier.apply_batch(log[:10])
    assert (again.fills_applied, again.duplicates) == (0, 10)
    assert decode_account(store.data[HOUSE]).revision == 10


def test_a_copy_read_back_that_the_ledger_refuses_does_not_hide_a_valid_one(rules):
    """After a restart the index holds read-back ids unverified: the refused first copy is checked when its
    corrected republish comes, and the republish is applied."""
    bad = fill_rec(0, "h0", size="0.0015")
    good = fill_rec(1, "h0", size="0.002")
    first, _ = applier_with(rules, LogHistory([bad]))
    first.apply_batch([bad])
    history = LogHistory([bad, good])
    restarted, store = applier_with(rules, history)
    assert restarted.apply_batch([good]).fills_applied == 1
    assert history.fetched == [[0]]
    again = restarted.apply_batch([fill_rec(2, "h0", size="0.002")])   # and now its copies are duplicates
    assert (again.fills_applied, again.duplicates) == (0, 1)


def test_index_settles_an_unverified_id():
    ix = PartitionFillIds(horizon_ms=1000)
    ix.add_unverified(("a", "f"), 3, 100)
    ix.add_unverified(("a", "f"), 5, 100)
    assert ix.earlier(("a", "f"), 9) and ix.unverified(("a", "f")) == [3, 5]
    ix.settle(("a", "f"), [5])                    # the copy at 3 was refused
    assert ix.unverified(("a", "f")) == [] and ix.earlier(("a", "f"), 9) and not ix.earlier(("a", "f"), 5)
    ix.add_unverified(("a", "g"), 4, 100)
    ix.settle(("a", "g"), [])
    assert not ix.earlier(("a", "g"), 9)
    ix.add(("a", "h"), 6, 100)                    # validated first: a copy read back later adds nothing
    ix.add_unverified(("a", "h"), 7, 100)
    assert ix.unverified(("a", "h")) == []


def test_undecodable_records_in_the_history_are_not_indexed(rules):
    broken = InputRecord(InputPosition(f"{TOPIC}:0", 0), HOUSE, Rejected("malformed", "x"), None, 10_000)
    applier, store = applier_with(rules, LogHistory([broken, fill_rec(1, "h1")]))
    assert applier.apply_batch([fill_rec(1, "h1")]).fills_applied == 1
