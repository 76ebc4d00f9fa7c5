"""portfolio.open_interest on the real Kafka and Redis: the partitions' shares summed equal the fold of
every account's newest snapshot on portfolio.positions (and of the fills themselves), exactly; two instances
in one group, a rebalance and a restart (with the cache kept or emptied) leave the same totals."""

from __future__ import annotations

import random
import time
from decimal import Decimal as D

from marginflow.api.account.v1 import account_pb2 as pb
from marginflow.portfolio.domain.model import Fill, Side
from marginflow.shared.kafka import key_partition, read_compacted
from marginflow.shared.open_interest import contribution_key

from portfolio_it_helpers import wait_for

INSTRUMENTS = ("BTC-PERP", "ETH-PERP", "SOL-PERP")
LOTS = {"BTC-PERP": D("0.001"), "ETH-PERP": D("0.01"), "SOL-PERP": D("0.1")}
ACCOUNTS = [f"oi-{i:02d}" for i in range(24)]
ZERO = D(0)


class Book:
    """The fills published, folded in the test: signed contracts per account and instrument."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.size: dict[tuple[str, str], D] = {}
        self.n = 0

    def fills(self, count: int, accounts=ACCOUNTS) -> list[Fill]:
        out = []
        for _ in range(count):
            self.n += 1
            account = self.rng.choice(accounts)
            inst = self.rng.choice(INSTRUMENTS)
            held = self.size.get((account, inst), ZERO)
            if held != 0 and self.rng.random() < 0.25:   # a close: the position goes flat
                side, lots = (Side.SELL if held > 0 else Side.BUY), abs(held) / LOTS[inst]
            else:
                side, lots = self.rng.choice((Side.BUY, Side.SELL)), D(self.rng.randint(1, 400))
            size = lots * LOTS[inst]
            self.size[(account, inst)] = held + (size if side == Side.BUY else -size)
            out.append(Fill(f"oi-f{self.n}", account, inst, side, size, D("100"), ZERO, 1_700_000_000_000 + self.n))
        return out

    def totals(self, partition: int | None = None, partitions: int = 2) -> dict[str, tuple[D, D]]:
        longs = {s: ZERO for s in INSTRUMENTS}
        shorts = {s: ZERO for s in INSTRUMENTS}
        for (account, inst), q in self.size.items():
            if partition is not None and key_partition(account.encode(), partitions) != partition:
                continue
            longs[inst] += max(q, ZERO)
            shorts[inst] += max(-q, ZERO)
        return {s: (longs[s], shorts[s]) for s in INSTRUMENTS}


def shares(consume_all, settings) -> dict[str, pb.OpenInterestContribution]:
    """The topic as a reader keeps it: per key the record of the highest fills offset; tombstones retire."""
    held: dict[str, pb.OpenInterestContribution] = {}
    for rec in consume_all(settings.common.bootstrap, settings.common.topics.open_interest, timeout_s=5.0):
        key = rec.key.decode()
        if rec.value is None:
            held.pop(key, None)
            continue
        msg = pb.OpenInterestContribution.FromString(rec.value)
        if key not in held or msg.fills_offset >= held[key].fills_offset:
            held[key] = msg
    return held


def summed(held: dict[str, pb.OpenInterestContribution], partition: int | None = None) -> dict[str, tuple[D, D]]:
    out = {s: (ZERO, ZERO) for s in INSTRUMENTS}
    for msg in held.values():
        if msg.instrument in out and (partition is None or msg.source_partition == partition):
            lo, sh = out[msg.instrument]
            out[msg.instrument] = (lo + D(msg.long_contracts.value), sh + D(msg.short_contracts.value))
    return out


def positions_fold(settings) -> dict[str, tuple[D, D]]:
    """Σ long and Σ |short| over every account's newest snapshot on portfolio.positions."""
    out = {s: (ZERO, ZERO) for s in INSTRUMENTS}
    for snap in read_compacted(settings.common.bootstrap, settings.common.topics.positions, pb.AccountSnapshot,
                               "test-fold", timeout_s=30).values():
        for p in snap.positions:
            q = D(p.size.value or 0)
            lo, sh = out[p.instrument]
            out[p.instrument] = (lo + max(q, ZERO), sh + max(-q, ZERO))
    return out


def settled(consume_all, settings, book: Book) -> dict[str, pb.OpenInterestContribution]:
    """Wait until the topic's totals are the fold of the fills; returns the records as a reader keeps them."""
    expected = book.totals()
    return wait_for(lambda: (lambda held: held if summed(held) == expected else None)(shares(consume_all, settings)),
                    timeout_s=90, what="open interest on the topic equal to the fold of the fills")


def test_the_partitions_shares_sum_to_the_fold_of_the_positions_exactly(start_service, publish, pf_settings,
                                                                        consume_all):
    assert {key_partition(a.encode(), 2) for a in ACCOUNTS} == {0, 1}
    service = start_service()
    book = Book(11)
    publish(*book.fills(300))
    held = settled(consume_all, pf_settings, book)
    assert wait_for(lambda: positions_fold(pf_settings) == book.totals(), timeout_s=60, what="positions folded")
    # per partition: the share of the accounts the default partitioner puts there, from that partition's owner
    for p in (0, 1):
        assert summed(held, p) == book.totals(p)
    for key, msg in held.items():
        assert key == contribution_key(msg.instrument, msg.source_partition)
        assert "e" not in msg.long_contracts.value.lower() and "e" not in msg.short_contracts.value.lower()
    # each record reflects an offset of its partition no later than the end; the newest, the end itself (every
    # fill moves a sum of its instrument, so the last batch of a partition published something)
    ends = service.app.source.fills_offsets([0, 1])
    for p in (0, 1):
        offsets = [m.fills_offset for m in held.values() if m.source_partition == p]
        assert max(offsets) == ends[p] and all(o <= ends[p] for o in offsets)
    # the gauge: this (only) instance's published share
    service.app.refresh_gauges()
    gauge = service.app.metrics.open_interest_contracts
    for inst, (lo, sh) in book.totals().items():
        assert gauge.labels(inst, "long")._value.get() == float(lo)
        assert gauge.labels(inst, "short")._value.get() == float(sh)
    # every position closed: each share goes to zero, the keys stay (compacted) with zeros
    closes = []
    for (account, inst), q in list(book.size.items()):
        if q != 0:
            book.n += 1
            closes.append(Fill(f"oi-close-{book.n}", account, inst, Side.SELL if q > 0 else Side.BUY, abs(q), D("100"),
                               ZERO, 1_700_000_000_000 + book.n))
            book.size[(account, inst)] = ZERO
    publish(*closes)
    held = settled(consume_all, pf_settings, book)
    assert all(D(m.long_contracts.value) == 0 == D(m.short_contracts.value) for m in held.values())


def test_two_instances_in_one_group_and_a_rebalance_give_the_same_total(start_service, publish, pf_settings,
                                                                        consume_all):
    a = start_service()
    book = Book(12)
    publish(*book.fills(150))              # a owns both partitions: every account has a position somewhere
    settled(consume_all, pf_settings, book)
    split_ms = int(time.time() * 1000)
    b = start_service()
    wait_for(lambda: len(a.app.source.assigned_partitions()) == 1 == len(b.app.source.assigned_partitions())
             and a.app.host.ready and b.app.host.ready, timeout_s=90, what="the partitions split between the two")
    (mine,) = b.app.source.assigned_partitions()
    # b summed its partition afresh from the states a left in the cache, and republished every instrument of it
    held = wait_for(lambda: (lambda h: h if all(h[contribution_key(s, mine)].meta.publish_time_ms >= split_ms
                                                for s in INSTRUMENTS) else None)(shares(consume_all, pf_settings)),
                    timeout_s=60, what="the new owner's republication")
    assert summed(held) == book.totals()
    publish(*book.fills(150))
    held = settled(consume_all, pf_settings, book)
    for p in (0, 1):
        assert summed(held, p) == book.totals(p)
    assert a.app.open_interest.ledger.partitions() == frozenset(a.app.source.assigned_partitions())
    assert b.app.open_interest.ledger.partitions() == frozenset({mine})
    # b leaves: a takes its partition back, sums it from the states b left, and applies what follows
    b.stop()
    wait_for(lambda: len(a.app.source.assigned_partitions()) == 2 and a.app.host.ready, timeout_s=90,
             what="the survivor owning both partitions")
    publish(*book.fills(100))
    held = settled(consume_all, pf_settings, book)
    for p in (0, 1):
        assert summed(held, p) == book.totals(p)
    assert a.app.open_interest.ledger.partitions() == frozenset({0, 1})
    assert positions_fold(pf_settings) == book.totals()


def test_a_restart_with_the_cache_kept_or_emptied_gives_the_same_total(start_service, publish, pf_settings,
                                                                       consume_all):
    first = start_service()
    book = Book(13)
    publish(*book.fills(150))
    before = settled(consume_all, pf_settings, book)
    first.stop()
    second = start_service()                     # the cache in Redis as the first left it
    # the restarted instance republishes every instrument of its partitions, at offsets no older than before
    after = wait_for(lambda: (lambda held: held if all(
        held[k].meta.publish_time_ms > before[k].meta.publish_time_ms for k in before) else None)(
        shares(consume_all, pf_settings)), timeout_s=60, what="the partitions republished after the restart")
    assert summed(after) == book.totals()
    assert all(after[k].fills_offset >= before[k].fills_offset for k in before)
    publish(*book.fills(50))
    settled(consume_all, pf_settings, book)
    second.stop()
    second.app.store.delete_namespace()          # Redis emptied: the next start rebuilds from portfolio.positions
    third = start_service()
    assert third.app.rebuilt_accounts and third.app.rebuilt_accounts > 0
    publish(*book.fills(50))
    held = settled(consume_all, pf_settings, book)
    assert summed(held) == positions_fold(pf_settings) == book.totals()
