"""The publish decision: which accounts' margin goes out, and when.

An account's state is published when its health state changes, when its equity or IM moved by
more than ``max(publish_change_min_usd, publish_change_fraction × max(|equity|, IM))`` since the
last publication, or when ``publish_max_interval_ms`` passed (a heartbeat per account). A margin
call is published on every entry into a worse-than-healthy state. Only those accounts' results are
built (the others cost a vectorised comparison).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from marginflow.margin.application.ports import EngineConfig, EngineMetrics, Publisher
from marginflow.margin.domain.health import Health
from marginflow.margin.domain.results import AccountMargin, MarginCallEvent
from marginflow.margin.domain.valuation import Valuation


class Publication:
    """What was last published per account row, and the port it goes out through."""

    def __init__(self, config: EngineConfig, publisher: Publisher, metrics: EngineMetrics) -> None:
        self.config = config
        self.publisher = publisher
        self.metrics = metrics
        self.state = np.zeros(0, dtype=np.int8)
        self.equity = np.zeros(0)
        self.im = np.zeros(0)
        self.ms = np.zeros(0, dtype=np.int64)

    def grow(self, capacity: int) -> None:
        for name in ("state", "equity", "im", "ms"):
            a = getattr(self, name)
            out = np.zeros(capacity, dtype=a.dtype)
            out[:a.shape[0]] = a
            setattr(self, name, out)

    def changed(self, val: Valuation, n: int, now_ms: int) -> np.ndarray:
        """Rows 0..n−1 whose valuation differs materially from what was published (or is due a heartbeat)."""
        cfg = self.config
        st, eq, im = self.state[:n], self.equity[:n], self.im[:n]
        thr = np.maximum(cfg.publish_change_min_usd, cfg.publish_change_fraction * np.maximum(np.abs(eq), im))
        changed = (val.state != st) | (np.abs(val.equity - eq) > thr) | (np.abs(val.im - im) > thr)
        changed |= (now_ms - self.ms[:n]) >= cfg.publish_max_interval_ms
        return changed

    def record(self, row: int, margin: AccountMargin, now_ms: int, outputs: list[AccountMargin],
               calls: list[MarginCallEvent]) -> None:
        """``margin`` goes out for ``row``; a call with it when it enters a worse-than-healthy state."""
        prev = int(self.state[row])
        outputs.append(margin)
        if margin.state >= Health.MARGIN_CALL and margin.state != prev:
            calls.append(MarginCallEvent(margin, prev))
        self.state[row] = margin.state
        self.equity[row] = margin.equity_usd
        self.im[row] = margin.im_usd
        self.ms[row] = now_ms

    def seed(self, row: int, state: int, equity_usd: float, im_usd: float, publish_ms: int) -> None:
        """What was published for ``row`` before a restart (read back from margin.state)."""
        self.state[row] = state
        self.equity[row] = equity_usd
        self.im[row] = im_usd
        self.ms[row] = publish_ms

    def forget(self, rows: Sequence[int]) -> None:
        for row in rows:
            self.state[row] = 0
            self.equity[row] = 0.0
            self.im[row] = 0.0
            self.ms[row] = 0

    def emit(self, outputs: Sequence[AccountMargin], calls: Sequence[MarginCallEvent]) -> None:
        if outputs or calls:
            self.publisher.publish(outputs, calls)
            self.metrics.published(len(outputs), len(calls))
