"""Open interest per instrument, held as each input partition's share of it.

The accounts of one ``trades.fills`` partition are applied by one portfolio instance at a time (the
partition's owner in the consumer group). For each partition it owns, the owner holds per instrument

    long_k  = Σ max(q, 0)     over the partition's accounts' positions in k, contracts
    short_k = Σ max(−q, 0)

exactly (``Decimal``, the sizes as the ledger holds them), and publishes a record per (instrument,
partition). The open interest of k is ``max(Σ_p long_k,p, Σ_p short_k,p)``: on a venue whose every
trade is between its own accounts the two sums are equal. Summing per partition, not per instance,
means a rebalance never leaves a share counted twice or lost: the partition's new owner starts again
from the partition's accounts as they are and overwrites the same records.

Sums are kept by deltas: an applied account replaces its old sides by its new ones. A sum that would
go negative means the sums and the states they came from disagree; the partition is then summed
afresh from its accounts (:meth:`OpenInterestLedger.apply` reports it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from decimal import Decimal

from marginflow.portfolio.domain.model import ZERO, Account

Sides = tuple[Decimal, Decimal]   # (long contracts, short contracts), both >= 0


def position_sides(account: Account | None, instruments: frozenset[str] | None = None) -> dict[str, Sides]:
    """(long, short) contracts per instrument the account holds open (only ``instruments`` when given)."""
    if account is None:
        return {}
    out: dict[str, Sides] = {}
    for symbol, pos in account.positions.items():
        q = pos.size
        if q == 0 or (instruments is not None and symbol not in instruments):
            continue
        out[symbol] = (q, ZERO) if q > 0 else (ZERO, -q)
    return out


def sum_sides(accounts: Iterable[Mapping[str, Sides]]) -> dict[str, Sides]:
    """Σ of the sides of many accounts, per instrument."""
    longs: dict[str, Decimal] = {}
    shorts: dict[str, Decimal] = {}
    for sides in accounts:
        for symbol, (lo, sh) in sides.items():
            longs[symbol] = longs.get(symbol, ZERO) + lo
            shorts[symbol] = shorts.get(symbol, ZERO) + sh
    return {s: (longs[s], shorts[s]) for s in longs}


@dataclasses.dataclass(frozen=True, slots=True)
class Contribution:
    """One partition's share of one instrument's open interest, as of ``fills_offset`` (every record of the
    partition before it applied)."""

    instrument: str
    partition: int
    long_contracts: Decimal
    short_contracts: Decimal
    fills_offset: int


class PartitionSums:
    """One partition's (long, short) per instrument, and the instruments changed since last published."""

    def __init__(self, instruments: frozenset[str], sums: Mapping[str, Sides]) -> None:
        self.long = {s: ZERO for s in instruments}
        self.short = {s: ZERO for s in instruments}
        for symbol, (lo, sh) in sums.items():
            if symbol in self.long:
                self.long[symbol], self.short[symbol] = lo, sh
        # A partition summed afresh publishes every instrument: the records of a previous owner, or of this
        # instance before a restart, are overwritten whatever they said (zero included).
        self.dirty: set[str] = set(instruments)

    def apply(self, old: Mapping[str, Sides], new: Mapping[str, Sides]) -> bool:
        """Replace an account's old sides by its new ones; False (nothing changed) when a sum would go negative."""
        deltas = []
        for symbol in old.keys() | new.keys():
            if symbol not in self.long:
                continue
            o_lo, o_sh = old.get(symbol, (ZERO, ZERO))
            n_lo, n_sh = new.get(symbol, (ZERO, ZERO))
            if o_lo == n_lo and o_sh == n_sh:
                continue
            lo = self.long[symbol] - o_lo + n_lo
            sh = self.short[symbol] - o_sh + n_sh
            if lo < 0 or sh < 0:
                return False
            deltas.append((symbol, lo, sh))
        for symbol, lo, sh in deltas:
            if lo != self.long[symbol] or sh != self.short[symbol]:
                self.long[symbol], self.short[symbol] = lo, sh
                self.dirty.add(symbol)
        return True


class OpenInterestLedger:
    """The sums of the partitions this instance owns. A partition without sums (just assigned, its cache just
    rebuilt, or found inconsistent) is summed afresh from its accounts before anything of it is published."""

    def __init__(self, instruments: Iterable[str]) -> None:
        self.instruments = frozenset(instruments)
        self._partitions: dict[int, PartitionSums] = {}

    def partitions(self) -> frozenset[int]:
        return frozenset(self._partitions)

    def reset(self, partition: int, sums: Mapping[str, Sides]) -> None:
        """The partition summed afresh from its accounts (every instrument to be published)."""
        self._partitions[partition] = PartitionSums(self.instruments, sums)

    def forget(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self._partitions.pop(p, None)

    def missing(self, owned: Iterable[int]) -> set[int]:
        return {p for p in owned if p not in self._partitions}

    def apply(self, partition: int, before: Account | None, after: Account) -> bool:
        """An applied account of ``partition``. A partition without sums ignores it (summing it afresh later
        reads the account as it is now); False when the sums disagree with ``before``: the partition is
        forgotten, to be summed afresh."""
        sums = self._partitions.get(partition)
        if sums is None:
            return True
        if sums.apply(position_sides(before, self.instruments), position_sides(after, self.instruments)):
            return True
        del self._partitions[partition]
        return False

    def dirty(self) -> set[int]:
        """Partitions with something not yet published."""
        return {p for p, sums in self._partitions.items() if sums.dirty}

    def sums(self, partition: int) -> dict[str, Sides]:
        p = self._partitions[partition]
        return {s: (p.long[s], p.short[s]) for s in p.long}

    def pending(self, offsets: Mapping[int, int]) -> list[Contribution]:
        """What changed since last published, for the partitions with a known ``fills_offset``."""
        out = []
        for partition, offset in offsets.items():
            p = self._partitions.get(partition)
            if p is None:
                continue
            out.extend(Contribution(s, partition, p.long[s], p.short[s], offset) for s in sorted(p.dirty))
        return out

    def published(self, contributions: Iterable[Contribution]) -> None:
        """These went out (acknowledged): clean unless the sums moved on since."""
        for c in contributions:
            p = self._partitions.get(c.partition)
            if p is not None and p.long[c.instrument] == c.long_contracts and p.short[c.instrument] == c.short_contracts:
                p.dirty.discard(c.instrument)

    def totals(self) -> dict[str, Sides]:
        """Σ over the owned partitions, per instrument (this instance's share, for its gauge)."""
        return sum_sides(self.sums(p) for p in self._partitions)
