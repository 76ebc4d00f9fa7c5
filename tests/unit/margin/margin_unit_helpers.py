"""Helpers of the margin unit tests: a small worked market: BTC and ETH, a perpetual each, a BTC call.

Scenarios (chosen so the numbers can be checked by hand): grid price shocks ±10 % and 0, vol
unchanged; tail moves ±20 % at weight 0.5; 100 historical moves evenly from −15 % to +15 %;
ES at 99 % over 100 scenarios averages m = 1 scenario, i.e. the worst one.
"""

from __future__ import annotations

import numpy as np

from marginflow.margin.domain.market import MarkUpdate
from marginflow.margin.domain.book import AccountBook
from marginflow.margin.domain.scenarios import GridSpec, RiskVersion

T0 = 1_767_225_600_000          # 2026-01-01T00:00Z, event time of the first marks
UNIVERSE = """
[[underlying]]
symbol = "BTC"
index_price_usd = 60000.0
annual_vol = 0.5
[[underlying]]
symbol = "ETH"
index_price_usd = 3000.0
annual_vol = 0.7
[[instrument]]
symbol = "BTC-PERP"
kind = "perpetual"
underlying = "BTC"
contract_size = 1.0
tick_size_usd = 0.5
lot_size = 0.001
[[instrument]]
symbol = "ETH-PERP"
kind = "perpetual"
underlying = "ETH"
contract_size = 1.0
tick_size_usd = 0.05
lot_size = 0.01
[[instrument]]
symbol = "BTC-C-60000"
kind = "call"
underlying = "BTC"
contract_size = 1.0
tick_size_usd = 0.5
lot_size = 0.01
strike_usd = 60000.0
expiry = "2026-04-01T08:00:00Z"
"""
ASSETS = ("USDC", "USDT", "BTC", "ETH")


class FakePublisher:
    def __init__(self) -> None:
        self.states = []
        self.calls = []

    def publish(self, states, calls) -> None:
        self.states.extend(states)
        self.calls.extend(calls)

    def last(self, account_id: str):
        return [s for s in self.states if s.account_id == account_id][-1]


def risk_version(version: int = 1, sigma: float = 0.5, count: int = 100) -> RiskVersion:
    grid = lambda u: GridSpec(u, (-0.1, 0.0, 0.1), (0.0,), (-0.2, 0.2), (0.0, 0.0), (0.5, 0.5), 86400.0)  # noqa: E731
    hist = np.linspace(-0.15, 0.15, count)
    return RiskVersion(version, T0, T0, {"BTC": sigma, "ETH": sigma}, {"BTC": 60000.0, "ETH": 3000.0},
                       {"BTC": grid("BTC"), "ETH": grid("ETH")}, ("BTC", "ETH"),
                       np.stack([hist, hist[::-1]], axis=1), 0.99)


def book(account: str, positions=(), balances=None, revision: int = 1) -> AccountBook:
    """positions: (instrument index, size, entry, isolated, isolated collateral)."""
    bal = np.zeros(len(ASSETS))
    for asset, amount in (balances or {}).items():
        bal[ASSETS.index(asset)] = amount
    p = list(positions)
    return AccountBook(account, revision, np.array([x[0] for x in p], np.int32), np.array([x[1] for x in p], float),
                       np.array([x[2] for x in p], float), np.array([x[3] for x in p], np.uint8),
                       np.array([x[4] for x in p], float), bal)


def mark(k, price, t=T0, und=None, index=None, iv=0.0, half_spread=0.0001, depth=1000.0) -> MarkUpdate:
    u = {0: 0, 1: 1, 2: 0}[k] if und is None else und
    return MarkUpdate(k, u, index if index is not None else price, price, iv, half_spread, depth, t)
