"""Shared builders for the riskparams unit tests (imported as a plain module)."""

from __future__ import annotations

import dataclasses

import numpy as np

from marginflow.api.marketdata.v1 import marketdata_pb2
from marginflow.riskparams.application import EngineConfig, Market, RiskEngine
from marginflow.shared.universe import load_universe

AS_OF_MS = 1_704_067_200_000          # 2024-01-01T00:00Z
DAY_MS = 86_400_000
UNDERLYINGS = ("BTC", "ETH", "SOL")
PERPS = ("BTC-PERP", "ETH-PERP", "SOL-PERP")


def universe():
    return load_universe(None, AS_OF_MS)


def market(underlyings=UNDERLYINGS) -> Market:
    return Market.from_universe(universe(), underlyings)


def config(**overrides) -> EngineConfig:
    base = dict(underlyings=UNDERLYINGS, garch_min_returns=100, garch_window=500, floor_lookback=500,
                fhs_count=200, fhs_min_history=100)
    base.update(overrides)
    return EngineConfig(**base)


def engine(**overrides) -> RiskEngine:
    cfg = config(**overrides)
    return RiskEngine(cfg, market(cfg.underlyings))


def daily_paths(n: int, seed: int = 7, vols=(0.55, 0.70, 0.90)) -> np.ndarray:
    """(n, 3) correlated GBM prices, one per day."""
    rng = np.random.default_rng(seed)
    corr = np.array([[1, .8, .7], [.8, 1, .75], [.7, .75, 1]])
    z = rng.standard_normal((n, 3)) @ np.linalg.cholesky(corr).T
    r = z * np.asarray(vols) / np.sqrt(365)
    return np.array([60000.0, 3000.0, 150.0]) * np.exp(np.cumsum(r, axis=0))


def daily_ticks(prices: np.ndarray, start_ms: int = AS_OF_MS, offset_ms: int = 3_600_000) -> list:
    """One tick per perpetual per day, at ``offset_ms`` into the day."""
    return [(PERPS[j], float(prices[i, j]), start_ms + i * DAY_MS + offset_ms * (j + 1))
            for i in range(prices.shape[0]) for j in range(prices.shape[1])]


def tick_bytes(instrument: str, price: float, event_time_ms: int) -> bytes:
    t = marketdata_pb2.Tick(instrument=instrument, price=price)
    t.meta.event_time_ms = event_time_ms
    return t.SerializeToString()


def mark_bytes(instrument: str, underlying: str, index_price: float, implied_vol: float, event_time_ms: int) -> bytes:
    m = marketdata_pb2.Mark(instrument=instrument, underlying=underlying, index_price=index_price,
                            mark_price=index_price, implied_vol=implied_vol)
    m.meta.event_time_ms = event_time_ms
    return m.SerializeToString()


@dataclasses.dataclass
class FakeStore:
    data: dict = dataclasses.field(default_factory=dict)
    writes: int = 0

    def write(self, changes):
        self.writes += 1
        for k, v in changes.items():
            if v is None:
                self.data.pop(k, None)
            else:
                self.data[k] = v

    def items(self):
        return dict(self.data)


@dataclasses.dataclass
class FakePublisher:
    versions: list = dataclasses.field(default_factory=list)

    def publish(self, version):
        self.versions.append(version)


@dataclasses.dataclass
class FakeDeadLetters:
    letters: list = dataclasses.field(default_factory=list)

    def reject(self, source_topic, key, payload, error):
        self.letters.append((source_topic, key, payload, error.code))
