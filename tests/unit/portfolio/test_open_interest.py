"""Open interest per input partition (fakes around the real Applier): exact Decimal sums, only what changed
published and only once ready, a partition given by a rebalance summed afresh and republished whole, a
revoked one left alone, a sum that disagrees with the states summed again, retired instruments tombstoned."""

from decimal import Decimal as D

import pytest

from marginflow.portfolio.adapters.codec import SnapshotEncoder, decode_account
from marginflow.portfolio.application import Applier, InputRecord, OpenInterestPublisher
from marginflow.portfolio.domain.model import Account, Deposit, Fill, InputPosition, Position, Side
from marginflow.portfolio.domain.open_interest import (
    Contribution, OpenInterestLedger, PartitionSums, position_sides, sum_sides)
from marginflow.shared.clock import ManualClock

INSTRUMENTS = ("BTC-C", "BTC-PERP", "ETH-PERP", "SOL-PERP")
PARTITION = {"a0": 0, "b0": 0, "a1": 1, "b1": 1}   # account → its input partition


class Store:
    def __init__(self):
        self.data: dict[str, bytes] = {}

    def load_payloads(self, ids):
        return {i: self.data[i] for i in ids if i in self.data}

    def save(self, changes):
        for c in changes:
            self.data[c.account.account_id] = c.payload


class Scan:
    """PartitionScan over the fake store: every account of the partition decoded and summed."""

    def __init__(self, store):
        self.store = store
        self.scanned: list[list[int]] = []
        self.broken: set[int] = set()     # partitions whose cache is not whole

    def open_interest_sums(self, partitions, partition_count, instruments):
        self.scanned.append(list(partitions))
        out = {}
        for p in partitions:
            if p in self.broken:
                continue
            out[p] = sum_sides(position_sides(decode_account(v), instruments)
                               for a, v in self.store.data.items() if PARTITION[a] == p)
        return out


class Sink:
    def __init__(self):
        self.batches: list[tuple[list[Contribution], list[tuple[str, int]]]] = []

    def publish(self, contributions, retired):
        self.batches.append((list(contributions), list(retired)))

    def last(self):
        return {(c.instrument, c.partition): (c.long_contracts, c.short_contracts, c.fills_offset)
                for c in self.batches[-1][0]}


class Nothing:
    def publish(self, changes): ...
    def reject(self, record, reason): raise AssertionError(reason)


@pytest.fixture
def world(rules):
    store, sink = Store(), Sink()
    scan = Scan(store)
    publisher = OpenInterestPublisher(OpenInterestLedger(rules.instruments), scan, sink, 2,
                                      retired={1: {"OLD-PERP"}})
    applier = Applier(rules, store, Nothing(), Nothing(), SnapshotEncoder(), ManualClock(1), on_applied=publisher)
    offsets = {0: 0, 1: 0}
    n = [0]

    def apply(*fills):
        records = []
        for account, instrument, side, size in fills:
            p = PARTITION[account]
            n[0] += 1
            records.append(InputRecord(InputPosition(f"trades.fills:{p}", offsets[p]), account,
                                       Fill(f"f{n[0]}", account, instrument, side, D(size), D("100"), D(0), n[0])))
            offsets[p] += 1
        applier.apply_batch(records)

    def turn(owned=(0, 1), ready=True):
        return publisher.turn(frozenset(owned), ready, lambda parts: {p: offsets[p] for p in parts})

    return publisher, applier, store, scan, sink, apply, turn, offsets


B, S = Side.BUY, Side.SELL


def test_sums_of_decimal_sizes_are_exact():
    a = Account("a", positions={"BTC-PERP": Position("BTC-PERP", D("0.1")),
                                "ETH-PERP": Position("ETH-PERP", D("-0.7"))})
    b = Account("b", positions={"BTC-PERP": Position("BTC-PERP", D("0.2")), "ETH-PERP": Position("ETH-PERP", D("0"))})
    # 0.1 + 0.2 contracts: 0.3 exactly (a float sum is 0.30000000000000004); a flat position counts nothing
    assert sum_sides([position_sides(a), position_sides(b)]) == {"BTC-PERP": (D("0.3"), D(0)),
                                                                  "ETH-PERP": (D(0), D("0.7"))}
    sums = PartitionSums(frozenset({"BTC-PERP", "ETH-PERP"}),
                         {"BTC-PERP": (D("0.3"), D(0)), "ETH-PERP": (D(0), D("0.7"))})
    # a reduces its long to 0.15 and closes its short: 0.3 − 0.1 + 0.15 = 0.35 and 0.7 − 0.7 = 0
    assert sums.apply(position_sides(a), {"BTC-PERP": (D("0.15"), D(0))})
    assert (sums.long["BTC-PERP"], sums.short["ETH-PERP"]) == (D("0.35"), D(0))
    # a state the sums never counted (b's 0.2 short of ETH-PERP closing): nothing changes, the caller resums
    assert not sums.apply({"ETH-PERP": (D(0), D("0.2"))}, {})
    assert (sums.long["BTC-PERP"], sums.short["ETH-PERP"]) == (D("0.35"), D(0))


def test_nothing_is_published_before_ready_then_every_instrument_of_every_partition(world, rules):
    publisher, applier, store, scan, sink, apply, turn, offsets = world
    apply(("a0", "BTC-PERP", B, "0.5"), ("b0", "BTC-PERP", S, "0.2"), ("a1", "BTC-PERP", S, "0.3"),
          ("b1", "ETH-PERP", B, "1.25"))
    assert turn(ready=False) == 0 and sink.batches == []        # catching up: the previous records stand
    assert sorted(sum(scan.scanned, [])) == [0, 1]             # summed from the store meanwhile
    assert turn() == 2 * len(INSTRUMENTS) + 1                  # summed afresh: everything, zeros included
    published = sink.last()
    assert published[("BTC-PERP", 0)] == (D("0.5"), D("0.2"), 2)
    assert published[("BTC-PERP", 1)] == (D(0), D("0.3"), 2)
    assert published[("ETH-PERP", 1)] == (D("1.25"), D(0), 2)
    assert published[("SOL-PERP", 0)] == (D(0), D(0), 2)
    assert sink.batches[-1][1] == [("OLD-PERP", 1)]            # a key of an instrument that left the universe
    assert turn() == 0 and len(sink.batches) == 1              # nothing changed since


def test_after_a_batch_only_the_changed_keys_go_out_and_a_closed_position_goes_to_zero(world):
    publisher, applier, store, scan, sink, apply, turn, offsets = world
    apply(("a0", "BTC-PERP", B, "0.5"), ("a1", "ETH-PERP", S, "2"))
    turn()
    apply(("b0", "BTC-PERP", B, "0.25"), ("b0", "SOL-PERP", S, "0.1"))
    assert turn() == 2
    assert sink.last() == {("BTC-PERP", 0): (D("0.75"), D(0), 3), ("SOL-PERP", 0): (D(0), D("0.1"), 3)}
    applier.apply_batch([InputRecord(InputPosition("account.events:0", 0), "a0",
                                     Deposit("d1", "a0", "USDC", D(100), 1))])
    assert turn() == 0                                         # a deposit moves no position
    apply(("a0", "BTC-PERP", S, "0.5"), ("a1", "ETH-PERP", B, "2"))   # both closed
    assert turn() == 2
    assert sink.last() == {("BTC-PERP", 0): (D("0.25"), D(0), 4), ("ETH-PERP", 1): (D(0), D(0), 2)}
    assert publisher.published_totals()["BTC-PERP"] == (D("0.25"), D(0))


def test_a_rebalance_sums_the_partition_afresh_and_republishes_it_whole(world):
    publisher, applier, store, scan, sink, apply, turn, offsets = world
    apply(("a0", "BTC-PERP", B, "0.5"), ("a1", "BTC-PERP", S, "0.5"))
    turn()
    # partition 1 is revoked: its accounts move on at another owner, this instance publishes nothing of them
    assert turn(owned=(0,)) == 0
    assert publisher.published_totals() == {s: (D(0), D(0)) for s in INSTRUMENTS if s != "BTC-PERP"} | {
        "BTC-PERP": (D("0.5"), D(0))}
    store.data["a1"] = SnapshotEncoder().encode(Account("a1", positions={
        "BTC-PERP": Position("BTC-PERP", D("-0.8"))}), 1)       # what the other owner left in the store
    offsets[1] = 7
    publisher.assigned({0, 1})                                  # the group gives both partitions again
    scanned = len(scan.scanned)
    assert turn(ready=False) == 0 and sorted(scan.scanned[scanned]) == [0, 1]
    assert turn() == 2 * len(INSTRUMENTS)
    assert sink.last()[("BTC-PERP", 1)] == (D(0), D("0.8"), 7)  # from the state as the new owner found it
    assert sink.last()[("BTC-PERP", 0)] == (D("0.5"), D(0), 1)


def test_a_partition_whose_cache_is_not_whole_is_summed_once_it_is(world):
    publisher, applier, store, scan, sink, apply, turn, offsets = world
    apply(("a0", "BTC-PERP", B, "0.5"), ("a1", "BTC-PERP", S, "0.5"))
    scan.broken = {1}
    turn()
    assert {p for c in sink.batches[-1][0] for p in [c.partition]} == {0}
    apply(("a1", "BTC-PERP", S, "0.5"))                         # no sums for partition 1: not a delta
    scan.broken = set()
    publisher.rebuilt({1})
    turn()
    assert sink.last()[("BTC-PERP", 1)] == (D(0), D("1.0"), 2)


def test_sums_that_disagree_with_the_states_are_summed_again(world):
    publisher, applier, store, scan, sink, apply, turn, offsets = world
    apply(("a0", "BTC-PERP", B, "0.5"))
    turn()
    # another writer's state under this instance (the sums never saw a0 at 2 contracts): closing it would
    # take the partition's long below zero, so the partition is summed again from the store
    store.data["a0"] = SnapshotEncoder().encode(Account("a0", positions={
        "BTC-PERP": Position("BTC-PERP", D("2"))}, applied_offsets={"trades.fills:0": 0}), 1)
    applier.forget_cache()
    apply(("a0", "BTC-PERP", S, "2"))
    assert turn() == len(INSTRUMENTS)
    assert sink.last()[("BTC-PERP", 0)] == (D(0), D(0), 2)


def test_a_contribution_goes_out_as_exact_decimal_strings_under_its_key():
    from marginflow.portfolio.adapters.codec import contribution_to_proto
    from marginflow.shared.open_interest import contribution_key, parse_contribution_key

    msg = contribution_to_proto(Contribution("BTC-PERP", 3, D("1E+3"), D("0.30"), 41), 7)
    # never exponent notation, never a float: the reader parses the same Decimal
    assert (msg.long_contracts.value, msg.short_contracts.value) == ("1000", "0.30")
    assert (msg.instrument, msg.source_partition, msg.fills_offset, msg.meta.publish_time_ms) == ("BTC-PERP", 3, 41, 7)
    assert contribution_key("BTC-PERP", 3) == "BTC-PERP/3" and parse_contribution_key("BTC-PERP/3") == ("BTC-PERP", 3)
    assert parse_contribution_key("A/B/12") == ("A/B", 12)
    assert [parse_contribution_key(k) for k in ("BTC-PERP", "/3", "BTC-PERP/-1", "BTC-PERP/x")] == [None] * 4


def test_keys_of_instruments_no_longer_in_the_universe_are_retired_by_partition():
    from marginflow.portfolio.adapters.kafka_io import retired_contributions

    on_topic = {"BTC-PERP/0": object(), "OLD-PERP/1": object(), "OLD-PERP/0": object(), "GONE-C/1": object(),
                "not a key": object()}
    assert retired_contributions(on_topic, frozenset({"BTC-PERP"})) == {0: {"OLD-PERP"}, 1: {"OLD-PERP", "GONE-C"}}
