"""Redis copy of the insurance fund for reads (the truth is the compacted ``liquidation.fund`` topic)."""

from __future__ import annotations

import redis

from marginflow.liquidation.application import FundSnapshot


class RedisFundCache:
    """Hash ``<prefix>fund``: ``balance_usd`` (decimal string), ``high_water_usd``, ``updated_ms``, ``revision``."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._client = client
        self.key = f"{prefix}fund"

    def write(self, fund: FundSnapshot) -> None:
        self._client.hset(self.key, mapping={"balance_usd": str(fund.balance_usd),
                                             "high_water_usd": str(fund.high_water_usd),
                                             "updated_ms": fund.updated_ms, "revision": fund.revision})

    def missing(self) -> bool:
        """True when Redis holds no copy (emptied, restarted, failed over)."""
        return not self._client.exists(self.key)

    def read(self) -> dict[str, str]:
        raw = self._client.hgetall(self.key)
        return {k.decode(): v.decode() for k, v in raw.items()}
