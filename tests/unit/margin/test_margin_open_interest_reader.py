"""portfolio.open_interest through margin's reader (a fake kafka-python consumer under the real reader): the
newest record of a key by fills offset wins, tombstones retire a share, the topic is complete once read to
the end offsets taken at assignment."""

from decimal import Decimal as D

from kafka import TopicPartition

from marginflow.api.account.v1 import account_pb2
from marginflow.api.common.v1 import common_pb2
from marginflow.margin.adapters.open_interest import OpenInterestReader
from marginflow.margin.domain.horizon import OpenInterestBook
from marginflow.margin.service import instrument_table
from marginflow.shared.kafka import DeadLetterSink
from marginflow.shared.universe import load_universe

T0 = 1_764_000_000_000
TOPIC = "u.portfolio.open_interest"


class Rec:
    def __init__(self, key, value, offset):
        self.key, self.value, self.offset, self.timestamp = key, value, offset, T0


class Consumer:
    """One partition handed out two records a poll; its position is what was handed out."""

    def __init__(self, records: list[tuple[bytes | None, bytes | None]], ends: int) -> None:
        self.records = [Rec(k, v, i) for i, (k, v) in enumerate(records)]
        self.ends = ends
        self.handed = 0

    def partitions_for_topic(self, topic):
        return {0}

    def assign(self, tps): ...
    def seek_to_beginning(self, *tps): ...

    def end_offsets(self, tps):
        return {tp: self.ends for tp in tps}

    def position(self, tp):
        return self.handed

    def poll(self, timeout_ms=0, max_records=0):
        batch = self.records[self.handed:self.handed + 2]
        self.handed += len(batch)
        return {TopicPartition(TOPIC, 0): batch} if batch else {}


class Letters:
    def __init__(self):
        self.letters = []

    def send_raw(self, topic, key, value, partition=None):
        self.letters.append(common_pb2.DeadLetter.FromString(value).reason_code)


def contribution(instrument, partition, long, short, offset) -> bytes:
    return account_pb2.OpenInterestContribution(
        instrument=instrument, source_partition=partition, long_contracts=common_pb2.Decimal(value=long),
        short_contracts=common_pb2.Decimal(value=short), fills_offset=offset).SerializeToString()


def test_the_newest_share_of_a_key_wins_tombstones_retire_and_completeness_follows_the_end_offsets():
    table = instrument_table(load_universe(None, T0))
    book = OpenInterestBook(table.n)
    btc = table.index["BTC-PERP"]
    records = [
        (b"BTC-PERP/0", contribution("BTC-PERP", 0, "4.5", "1", 10)),
        (b"BTC-PERP/1", contribution("BTC-PERP", 1, "0.5", "4", 7)),
        (b"BTC-PERP/0", contribution("BTC-PERP", 0, "99", "99", 9)),   # a previous owner's late record: older
        (b"BTC-PERP/1", None),                                            # partition 1's share retired
        (b"OLD-PERP/0", None),                                            # a key of no instrument here: nothing
        (b"BTC-PERP/0", contribution("BTC-PERP", 0, "6", "6", 12)),      # after the end offset at assignment
    ]
    letters = Letters()
    reader = OpenInterestReader(Consumer(records, ends=5), TOPIC, table, book, DeadLetterSink(letters, "dlq", "margin"),
                                1.0, 1 << 20)
    assert not reader.complete()
    reader.poll()
    assert book.sides(btc) == (D("5.0"), D("5"))        # 4.5 + 0.5 long, 1 + 4 short: exact
    assert book.open_interest()[btc] == 5.0 and not reader.complete()
    reader.poll()
    assert book.sides(btc) == (D("4.5"), D("1"))        # the older record ignored, partition 1 retired
    reader.poll()
    assert reader.complete()                            # read past the end offset taken at assignment
    assert book.sides(btc) == (D("6"), D("6")) and letters.letters == []


def test_a_share_from_a_partition_the_fills_topic_does_not_have_is_dead_lettered():
    table = instrument_table(load_universe(None, T0))
    book = OpenInterestBook(table.n)
    btc = table.index["BTC-PERP"]
    records = [
        (b"BTC-PERP/1", contribution("BTC-PERP", 1, "2", "2", 3)),
        (b"BTC-PERP/4", contribution("BTC-PERP", 4, "500", "500", 3)),   # trades.fills has partitions 0..3
    ]
    partitions = 4
    letters = Letters()
    reader = OpenInterestReader(Consumer(records, ends=2), TOPIC, table, book, DeadLetterSink(letters, "dlq", "margin"),
                                1.0, 1 << 20, source_partitions=lambda: partitions)
    reader.poll()
    assert reader.complete()
    assert book.sides(btc) == (D("2"), D("2"))
    assert letters.letters == ["partition_out_of_range"]


def test_partitions_added_to_the_fills_topic_are_accepted_once_its_metadata_shows_them():
    table = instrument_table(load_universe(None, T0))
    book = OpenInterestBook(table.n)
    btc = table.index["BTC-PERP"]
    counts = iter([4, 6])      # at start, then when a share of partition 4 arrives
    letters = Letters()
    reader = OpenInterestReader(Consumer([(b"BTC-PERP/4", contribution("BTC-PERP", 4, "3", "1", 0))], ends=1), TOPIC,
                                table, book, DeadLetterSink(letters, "dlq", "margin"), 1.0, 1 << 20,
                                source_partitions=lambda: next(counts))
    reader.poll()
    assert book.sides(btc) == (D("3"), D("1")) and letters.letters == []
