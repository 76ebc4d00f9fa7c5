"""Account state in Redis: one key per account holding its snapshot, plus paging indexes.

Key layout (``P`` = ``MF_PORTFOLIO_REDIS_PREFIX``, default ``mf:pf:``); the ``{...}`` hash tags
keep every key of one account in one Redis Cluster slot:

====================================  =========  ==============================================
key                                   type       holds
====================================  =========  ==============================================
``P acct:{<account>}``                string     the AccountSnapshot protobuf: balances,
                                                 positions, modes, revision, applied offsets,
                                                 recent ids — one SET, so atomic together
``P req:{<account>}:<request_id>``    string     event id of an admin request (TTL 7 days)
``P accounts``                        zset       every account id (score 0, paged by lex)
``P inst:{<instrument>}``             zset       accounts with an open position in it
``P built:<partition>``               hash       ``generation``, ``built_ms``, ``accounts``: the
                                                 cache of that partition's accounts is whole
====================================  =========  ==============================================

Redis is a cache, never the truth. The accounts of a ``trades.fills`` partition are trusted only
while that partition's ``built`` marker exists with the same generation before and after they
are read: an emptied or restarted Redis (or a failover to an empty replica) loses the markers
with the data, and the service rebuilds those partitions from ``portfolio.positions`` before it
applies anything to them (:class:`~marginflow.portfolio.application.CacheLost`). A rebuild never
overwrites a key that exists (``SET NX``): what a live writer put there is at least as new as
the snapshot the rebuild read. Redis must not evict keys (``maxmemory-policy noeviction``, its
default): an evicted account under an intact marker would read as a new account.

The indexes are written around the state (additions before, removals after, in one pipeline),
so a reader that filters index hits by the state itself never misses an open position.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal

import redis

from marginflow.api.account.v1 import account_pb2 as pb
from marginflow.portfolio.adapters.codec import decode_account
from marginflow.portfolio.application import CacheLost, StateChange
from marginflow.portfolio.domain.model import ZERO, Account, Position
from marginflow.portfolio.domain.open_interest import sum_sides
from marginflow.shared.kafka import key_partition
from marginflow.shared.units import SECONDS_PER_DAY

REQUEST_TTL_SECONDS = 7 * SECONDS_PER_DAY
_CHUNK = 2000   # keys per MGET / commands per pipeline flush


class RedisStateStore:
    """StateStore, AccountReader and RequestLog ports on one Redis client."""

    def __init__(self, client: redis.Redis, prefix: str = "mf:pf:") -> None:
        self._r = client
        self.prefix = prefix
        self._accounts_key = f"{prefix}accounts"
        self._cluster = isinstance(client, redis.RedisCluster)

    # ---- keys
    def account_key(self, account_id: str) -> str:
        return f"{self.prefix}acct:{{{account_id}}}"

    def instrument_key(self, instrument: str) -> str:
        return f"{self.prefix}inst:{{{instrument}}}"

    def built_key(self, partition: int) -> str:
        return f"{self.prefix}built:{partition}"

    def request_key(self, account_id: str, request_id: str) -> str:
        return f"{self.prefix}req:{{{account_id}}}:{request_id}"

    def _mget(self, keys: list[str]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for i in range(0, len(keys), _CHUNK):
            chunk = keys[i:i + _CHUNK]
            if self._cluster:   # keys of many slots
                out.extend(self._r.mget_nonatomic(chunk))  # type: ignore[attr-defined]
            else:
                out.extend(self._r.mget(chunk))
        return out

    # ---- StateStore
    def load_payloads(self, account_partitions: Mapping[str, int]) -> dict[str, bytes]:
        ids = list(account_partitions)
        if not ids:
            return {}
        partitions = sorted(set(account_partitions.values()))
        before = self.generations(partitions)
        lost = [p for p, g in before.items() if g is None]
        if lost:
            raise CacheLost(lost)
        values = self._mget([self.account_key(a) for a in ids])
        after = self.generations(partitions)
        changed = [p for p in partitions if after[p] != before[p]]
        if changed:   # emptied (and maybe rebuilt) while being read: what was read may be partial
            raise CacheLost(changed)
        return {a: v for a, v in zip(ids, values) if v is not None}

    def save(self, changes: Sequence[StateChange]) -> None:
        pipe = self._r.pipeline(transaction=False)
        opened: dict[str, list[str]] = {}
        closed: dict[str, list[str]] = {}
        created: list[str] = []
        for change in changes:
            account_id = change.account.account_id
            for inst in change.opened:
                opened.setdefault(inst, []).append(account_id)
            for inst in change.closed:
                closed.setdefault(inst, []).append(account_id)
            if change.created:
                created.append(account_id)
        for inst, ids in opened.items():
            pipe.zadd(self.instrument_key(inst), dict.fromkeys(ids, 0))
        if created:
            pipe.zadd(self._accounts_key, dict.fromkeys(created, 0))
        if self._cluster:   # the cluster pipeline routes each SET to its slot's node
            for change in changes:
                pipe.set(self.account_key(change.account.account_id), change.payload)
        else:               # one command; each key's value is still replaced atomically
            pipe.mset({self.account_key(c.account.account_id): c.payload for c in changes})
        for inst, ids in closed.items():
            pipe.zrem(self.instrument_key(inst), *ids)
        pipe.execute()

    # ---- reads
    def get_payload(self, account_id: str) -> bytes | None:
        return self._r.get(self.account_key(account_id))

    def get(self, account_id: str) -> Account | None:
        payload = self.get_payload(account_id)
        return decode_account(payload) if payload is not None else None

    def list_accounts(self, after: str, limit: int) -> list[bytes]:
        """Snapshots of up to ``limit`` accounts with ids after ``after`` (lexicographic)."""
        ids = self._r.zrange(self._accounts_key, f"({after}" if after else "-", "+", bylex=True,
                             offset=0, num=limit)
        ids = [i.decode() for i in ids]
        return [v for v in self._mget([self.account_key(a) for a in ids]) if v is not None]

    def positions_by_instrument(self, instrument: str, after: str, limit: int) -> list[tuple[str, Position]]:
        """Open positions in ``instrument`` of accounts after ``after``, up to ``limit``, by account id."""
        from marginflow.portfolio.adapters.codec import position_from_proto

        found: list[tuple[str, Position]] = []
        key = self.instrument_key(instrument)
        cursor = after
        while len(found) < limit:
            ids = [i.decode() for i in self._r.zrange(key, f"({cursor}" if cursor else "-", "+", bylex=True,
                                                       offset=0, num=limit - len(found))]
            if not ids:
                break
            for account_id, payload in zip(ids, self._mget([self.account_key(a) for a in ids])):
                if payload is None:
                    continue
                snap = pb.AccountSnapshot.FromString(payload)
                for p in snap.positions:
                    if p.instrument == instrument and Decimal(p.size.value or 0) != 0:
                        found.append((account_id, position_from_proto(p)))
            cursor = ids[-1]
        return found

    def open_interest_sums(self, partitions: Iterable[int], partition_count: int, instruments: frozenset[str]
                           ) -> dict[int, dict[str, tuple[Decimal, Decimal]]]:
        """PartitionScan port: (long, short) contracts per instrument of the accounts of each partition, read
        from their snapshots; only partitions whose ``built`` marker is the same before and after the reading
        (a cache emptied meanwhile would read as fewer positions). An account's partition is the one Kafka's
        default partitioner gives its id, as for every input and snapshot of the platform."""
        wanted = sorted(set(partitions))
        if not wanted:
            return {}
        before = self.generations(wanted)
        whole = [p for p in wanted if before[p] is not None]
        if not whole:
            return {}
        keep = set(whole)
        ids = [a.decode() for a in self._r.zrange(self._accounts_key, 0, -1)]
        mine = [(a, p) for a in ids if (p := key_partition(a.encode(), partition_count)) in keep]
        sides: dict[int, list[dict[str, tuple[Decimal, Decimal]]]] = {p: [] for p in whole}
        payloads = self._mget([self.account_key(a) for a, _ in mine])
        for (_account, p), payload in zip(mine, payloads):
            if payload is None:
                continue
            held: dict[str, tuple[Decimal, Decimal]] = {}
            for pos in pb.AccountSnapshot.FromString(payload).positions:
                q = Decimal(pos.size.value or 0)
                if q != 0 and pos.instrument in instruments:
                    lo, sh = held.get(pos.instrument, (ZERO, ZERO))
                    held[pos.instrument] = (lo + q, sh) if q > 0 else (lo, sh - q)
            sides[p].append(held)
        after = self.generations(whole)
        return {p: sum_sides(sides[p]) for p in whole if after[p] == before[p]}

    def counts(self, instruments: Iterable[str]) -> tuple[int, int]:
        """(accounts, open positions) from the indexes."""
        pipe = self._r.pipeline(transaction=False)
        pipe.zcard(self._accounts_key)
        for inst in instruments:
            pipe.zcard(self.instrument_key(inst))
        values = pipe.execute()
        return int(values[0]), int(sum(values[1:]))

    # ---- RequestLog
    def seen(self, account_id: str, request_id: str) -> str | None:
        value = self._r.get(self.request_key(account_id, request_id))
        return value.decode() if value is not None else None

    def remember(self, account_id: str, request_id: str, event_id: str) -> None:
        self._r.set(self.request_key(account_id, request_id), event_id, ex=REQUEST_TTL_SECONDS)

    # ---- rebuild
    def generations(self, partitions: Iterable[int]) -> dict[int, str | None]:
        """The ``built`` marker's generation per partition (None: not built, the cache is not whole)."""
        parts = list(partitions)
        pipe = self._r.pipeline(transaction=False)
        for p in parts:
            pipe.hget(self.built_key(p), "generation")
        return {p: (g.decode() if g is not None else None) for p, g in zip(parts, pipe.execute())}

    def missing_partitions(self, partitions: Iterable[int]) -> set[int]:
        return {p for p, g in self.generations(partitions).items() if g is None}

    def is_built(self, partition: int) -> bool:
        return self.generations([partition])[partition] is not None

    def restore(self, snapshots: Mapping[str, pb.AccountSnapshot]) -> int:
        """Write every snapshot that Redis does not hold, and the indexes (from the compacted topic);
        returns the count read."""
        items = list(snapshots.items())
        for i in range(0, len(items), _CHUNK):
            pipe = self._r.pipeline(transaction=False)
            by_inst: dict[str, list[str]] = {}
            for account_id, snap in items[i:i + _CHUNK]:
                pipe.set(self.account_key(account_id), snap.SerializeToString(deterministic=True), nx=True)
                for p in snap.positions:
                    if Decimal(p.size.value or 0) != 0:
                        by_inst.setdefault(p.instrument, []).append(account_id)
            pipe.zadd(self._accounts_key, dict.fromkeys((a for a, _ in items[i:i + _CHUNK]), 0))
            for inst, ids in by_inst.items():
                pipe.zadd(self.instrument_key(inst), dict.fromkeys(ids, 0))
            pipe.execute()
        return len(items)

    def mark_built(self, partitions: Iterable[int], now_ms: int, accounts: int, seconds: float) -> None:
        """The cache of these partitions is whole again (a new generation each time)."""
        pipe = self._r.pipeline(transaction=False)
        for p in partitions:
            pipe.hset(self.built_key(p), mapping={"generation": uuid.uuid4().hex, "built_ms": now_ms,
                                                  "accounts": accounts, "rebuild_seconds": f"{seconds:.3f}"})
        pipe.execute()

    def delete_namespace(self) -> int:
        """Delete every key under the prefix (tests, benchmarks: 'Redis flushed' for this service only)."""
        deleted = 0
        batch: list[bytes] = []
        for key in self._r.scan_iter(match=f"{self.prefix}*", count=5000):
            batch.append(key)
            if len(batch) >= 5000:
                deleted += self._r.unlink(*batch)
                batch.clear()
        if batch:
            deleted += self._r.unlink(*batch)
        return deleted
