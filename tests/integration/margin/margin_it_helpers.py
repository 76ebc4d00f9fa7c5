"""Helpers of the margin integration tests: risk params, marks and snapshots to publish; waiting."""

from __future__ import annotations

import time

import numpy as np

from marginflow.api.account.v1 import account_pb2
from marginflow.api.marketdata.v1 import marketdata_pb2
from marginflow.api.risk.v1 import risk_pb2

UNDERLYINGS = ("BTC", "ETH", "SOL")
HIST = np.linspace(-0.15, 0.15, 100)     # joint: every underlying moves the same way


def risk_params(version: int = 1) -> risk_pb2.RiskParams:
    now = int(time.time() * 1000)
    p = risk_pb2.RiskParams(version=version, es_confidence=0.99)
    p.meta.event_time_ms = now
    p.meta.publish_time_ms = now
    for u in UNDERLYINGS:
        p.underlyings.add(underlying=u, sigma_margin=0.5, index_price=1.0)
        p.grids.add(underlying=u, price_shocks=[-0.1, 0.0, 0.1], vol_shocks=[-0.25, 0.0, 0.25],
                    tail_price_shocks=[-0.2, 0.2], tail_vol_shocks=[0.0, 0.0], tail_weights=[0.5, 0.5],
                    horizon_seconds=86400.0, range_fraction=0.1)
    p.historical.underlyings.extend(UNDERLYINGS)
    p.historical.count = HIST.size
    p.historical.returns.extend(np.repeat(HIST, len(UNDERLYINGS)).tolist())
    p.historical.horizon_seconds = 86400.0
    return p


def mark(instrument: str, underlying: str, price: float, t_ms: int | None = None) -> marketdata_pb2.Mark:
    m = marketdata_pb2.Mark(instrument=instrument, underlying=underlying, index_price=price, mark_price=price,
                            half_spread_frac=0.0001, depth_contracts=1000.0)
    m.meta.event_time_ms = t_ms or int(time.time() * 1000)
    return m


def snapshot(account: str, positions, usdc: str, revision: int = 1) -> account_pb2.AccountSnapshot:
    s = account_pb2.AccountSnapshot(account_id=account, revision=revision)
    s.balances.add(asset="USDC").amount.value = usdc
    for instrument, size, entry in positions:
        p = s.positions.add(instrument=instrument, mode=account_pb2.MARGIN_MODE_CROSS)
        p.size.value = size
        p.entry_price.value = entry
    return s


def contribution(instrument: str, partition: int, long: str, short: str, fills_offset: int
                 ) -> account_pb2.OpenInterestContribution:
    """One input partition's share of an instrument's open interest, as portfolio publishes it."""
    c = account_pb2.OpenInterestContribution(instrument=instrument, source_partition=partition,
                                             fills_offset=fills_offset)
    c.long_contracts.value = long
    c.short_contracts.value = short
    return c


def wait_for(predicate, timeout_s: float = 15.0, interval_s: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"{what} not met in {timeout_s:g} s")


def first_matching(stream, predicate):
    """The first message of a gRPC server stream that satisfies ``predicate``: states published in
    between (a republish, an evaluation of an older mark) are skipped. The call's own deadline
    bounds the wait (DEADLINE_EXCEEDED fails the test)."""
    for message in stream:
        if predicate(message):
            return message
    raise AssertionError("the stream ended before the expected message")
