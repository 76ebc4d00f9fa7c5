"""Exchange simulator use case: fill liquidation orders against a book built around the latest mark.

For each order (IOC, reduce-only): the book is ``book_around`` the instrument's latest mark (its half-spread
and depth as marketdata publishes them; settings when absent), the order is matched with ``match_ioc``
(partial fills, never beyond the limit), and each fill is emitted twice on ``trades.fills``: the account's
(``liquidation=true``, fee = ``min(rate·notional, surplus over the bankruptcy price)``, the liquidation
domain's rule) and the house counterparty's (the opposite side, no fee), so the simulated book stays balanced.
Fill ids come from the order id (``{order_id}-f{n}`` and ``…-h``): a redelivered order gives the same ids,
which the portfolio and the insurance fund ignore. Orders already seen are skipped.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Protocol

from marginflow.exchange_sim.domain import IocOrder, Side, book_around, match_ioc
from marginflow.liquidation.domain import liquidation_fee_usd
from marginflow.shared.fills import FillRecord

SEEN_ORDERS = 100_000


@dataclasses.dataclass(frozen=True)
class SimMark:
    instrument: str
    mark_usd: Decimal
    half_spread_fraction: Decimal
    depth_contracts: Decimal
    event_time_ms: int


@dataclasses.dataclass(frozen=True)
class SimOrder:
    order_id: str
    account_id: str
    instrument: str
    side: int            # +1 buy, −1 sell
    size: Decimal
    limit_price_usd: Decimal
    bankruptcy_price_usd: Decimal | None


@dataclasses.dataclass(frozen=True)
class Spec:
    contract_size: Decimal
    tick_size_usd: Decimal


class FillSink(Protocol):
    def publish(self, fills: Sequence[FillRecord]) -> None:
        """Publish to trades.fills and wait for the acknowledgements."""


@dataclasses.dataclass(frozen=True)
class SimConfig:
    house_account: str
    fee_rate: Decimal
    levels: int
    default_half_spread: Decimal
    default_depth_contracts: Decimal
    depth_multiplier: float = 1.0


class Simulator:
    def __init__(self, config: SimConfig, specs: dict[str, Spec], sink: FillSink, clock_ms: Callable[[], int],
                 metrics=None) -> None:
        self.config = config
        self.specs = specs
        self.sink = sink
        self.clock_ms = clock_ms
        self.metrics = metrics
        self.marks: dict[str, SimMark] = {}
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.unfilled: list[str] = []

    def on_marks(self, marks: Sequence[SimMark]) -> None:
        for m in marks:
            prev = self.marks.get(m.instrument)
            if prev is None or m.event_time_ms >= prev.event_time_ms:
                self.marks[m.instrument] = m

    def book_for(self, instrument: str):
        m, spec, c = self.marks.get(instrument), self.specs[instrument], self.config
        if m is None:
            return None
        half = m.half_spread_fraction if m.half_spread_fraction > 0 else c.default_half_spread
        depth = m.depth_contracts / c.levels if m.depth_contracts > 0 else c.default_depth_contracts
        depth = Decimal(repr(float(depth) * c.depth_multiplier))
        return book_around(instrument, m.mark_usd, half, depth, c.levels, spec.tick_size_usd)

    def on_orders(self, orders: Sequence[SimOrder]) -> list[FillRecord]:
        out: list[FillRecord] = []
        now = self.clock_ms()
        for o in orders:
            if o.order_id in self._seen or o.instrument not in self.specs or o.account_id == self.config.house_account:
                continue
            self._seen[o.order_id] = None
            while len(self._seen) > SEEN_ORDERS:
                self._seen.popitem(last=False)
            book = self.book_for(o.instrument)
            if book is None or o.size <= 0 or o.limit_price_usd <= 0:
                self.unfilled.append(o.order_id)
                continue
            side = Side.BUY if o.side > 0 else Side.SELL
            result = match_ioc(book, IocOrder(o.order_id, o.instrument, side, o.size, o.limit_price_usd))
            cs = self.specs[o.instrument].contract_size
            position_side = -o.side     # the order closes a position on the other side
            for f in result.fills:
                if o.bankruptcy_price_usd is not None:
                    fee = liquidation_fee_usd(position_side, f.size_contracts, cs, f.price_usd,
                                              o.bankruptcy_price_usd, self.config.fee_rate)
                else:
                    fee = Decimal(0)
                out.append(FillRecord(f.fill_id, o.account_id, o.instrument, o.side, f.size_contracts, f.price_usd, fee,
                                   True, o.order_id, now))
                out.append(FillRecord(f"{f.fill_id}-h", self.config.house_account, o.instrument, -o.side,
                                   f.size_contracts, f.price_usd, Decimal(0), False, o.order_id, now))
            if not result.fills:
                self.unfilled.append(o.order_id)
            if self.metrics is not None:
                self.metrics.order(bool(result.fills), len(result.fills))
        if out:
            self.sink.publish(out)
        return out
