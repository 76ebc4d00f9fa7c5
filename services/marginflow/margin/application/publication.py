"""The publish decision: which accounts' margin goes out, in which state, and when.

* **State.** Each evaluation's raw states pass the transition rules (``domain.transitions``):
  hysteresis on the way out of a worse state, confirmation over evaluations on the way in (at once
  beyond a band, when bankrupt, or when the account's own inputs changed).
* **When.** An account's margin is published when its (published) state changes, when its equity
  or IM moved by more than ``max(publish_change_min_usd, publish_change_fraction × max(|equity|,
  IM))`` since the last publication, or at its heartbeat: every ``publish_max_interval_ms`` at a
  phase of its own, so that accounts first published together (a new version, a restart) do not all
  come due in the same evaluation a whole interval later. Only those accounts' results are built
  (the others cost a vectorised comparison).
* **Calls.** A margin call goes out on every move into a worse state, with the account's episode,
  whether the episode had reached that state already (a repeat), and what moved the account since
  its state last changed (``domain.causes``), each part with its size.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from marginflow.margin.application.ports import EngineConfig, EngineMetrics, Publisher
from marginflow.margin.domain.causes import Snapshot, contributions
from marginflow.margin.domain.health import Health
from marginflow.margin.domain.results import AccountMargin, Contribution, MarginCallEvent
from marginflow.margin.domain.transitions import Episodes, Pending, next_states, no_way_back, sticky_state
from marginflow.margin.domain.valuation import Valuation


@dataclasses.dataclass(frozen=True)
class Instruments:
    """What cause attribution needs of the instrument table."""

    contract_size: np.ndarray
    symbols: Sequence[str]
    underlying_of: Sequence[str]     # per instrument


class Publication:
    """What was last published per account row, and the port it goes out through."""

    def __init__(self, config: EngineConfig, publisher: Publisher, metrics: EngineMetrics,
                 instruments: Instruments) -> None:
        self.config = config
        self.rules = config.transitions
        self.publisher = publisher
        self.metrics = metrics
        self.instruments = instruments
        self.state = np.zeros(0, dtype=np.int8)
        self.equity = np.zeros(0)
        self.im = np.zeros(0)
        self.ms = np.zeros(0, dtype=np.int64)
        self.pending = Pending.empty(0)
        self.episodes = Episodes.empty(0)
        self.snapshots: list[Snapshot | None] = []
        self.phase_ms = heartbeat_phases(0, config.publish_max_interval_ms)
        self.beat_ms = np.zeros(0, dtype=np.int64)   # per row: its next heartbeat after its last publication
        self.last_change: dict[int, tuple[Contribution, ...]] = {}

    def grow(self, capacity: int) -> None:
        self.phase_ms = heartbeat_phases(capacity, self.config.publish_max_interval_ms)
        for owner, name in ((self, "state"), (self, "equity"), (self, "im"), (self, "ms"),
                            (self.pending, "state"), (self.pending, "since_ms"), (self.pending, "count"),
                            (self.pending, "entered_ms"),
                            (self.episodes, "number"), (self.episodes, "worst")):
            a = getattr(owner, name)
            out = np.zeros(capacity, dtype=a.dtype)
            out[:a.shape[0]] = a
            setattr(owner, name, out)
        self.snapshots.extend([None] * (capacity - len(self.snapshots)))
        self.beat_ms = next_beats(self.phase_ms, self.ms, self.config.publish_max_interval_ms)

    # ---- states
    def next_states(self, val: Valuation, lo: int, hi: int, now_ms: int,
                    immediate: np.ndarray | None = None) -> np.ndarray:
        """Published states of rows lo..hi−1 after this valuation (entries 0..hi−lo−1 of ``val``)."""
        pending = self.pending.take(slice(lo, hi))   # views: updated in place
        return next_states(self.state[lo:hi], val.state, val.equity, val.im, val.mm, pending, now_ms, self.rules,
                           immediate)

    def query_state(self, row: int | None, raw: int, equity_usd: float, im_usd: float, mm_usd: float,
                    published: int | None = None) -> int:
        """The state a query reports: the raw one, but a worse published state is left only with the
        exit buffer (a query never shows an account better than the publication would). ``published``:
        the row's published state as the caller read it (default: read here)."""
        if row is None or row >= self.state.shape[0]:
            return raw
        if published is None:
            published = int(self.state[row])
        if published == Health.UNSPECIFIED or raw >= published:
            return raw
        sticky = int(sticky_state(np.array([published], np.int8), np.array([equity_usd]), np.array([im_usd]),
                                  np.array([mm_usd]), self.rules)[0])
        return int(no_way_back(np.array([published], np.int8), np.array([max(raw, sticky)], np.int8))[0])

    def changed(self, published: np.ndarray, val: Valuation, n: int, now_ms: int) -> np.ndarray:
        """Rows 0..n−1 whose state or numbers differ materially from what was published (or due a heartbeat)."""
        cfg = self.config
        st, eq, im = self.state[:n], self.equity[:n], self.im[:n]
        thr = np.maximum(cfg.publish_change_min_usd, cfg.publish_change_fraction * np.maximum(np.abs(eq), im))
        changed = (published != st) | (np.abs(val.equity - eq) > thr) | (np.abs(val.im - im) > thr)
        changed |= self.heartbeat_due(n, now_ms)
        return changed

    def heartbeat_due(self, n: int, now_ms: int) -> np.ndarray:
        """Rows 0..n−1 whose heartbeat came since their last publication: row r's heartbeats fall at
        ``phase_r + k·interval``, so each row gets one at most an interval after its last publication,
        and an evaluation covering Δt ms of them republishes about ``n·Δt/interval`` rows. (The next beat
        of each row is kept from its last publication: one comparison per row here.)"""
        return self.beat_ms[:n] <= now_ms

    def _published_at(self, row: int, ms: int) -> None:
        self.ms[row] = ms
        self.beat_ms[row] = next_beats(self.phase_ms[row], ms, self.config.publish_max_interval_ms)

    # ---- one publication
    def episode(self, row: int, state: int) -> tuple[int, bool]:
        """The episode ``row`` is in once published in ``state`` (advanced on a state change), and
        whether that episode had reached ``state`` already."""
        prev = int(self.state[row])
        if state != prev:
            return self.episodes.advance(row, prev, state)
        return int(self.episodes.number[row]), False

    def record(self, row: int, margin: AccountMargin, repeat: bool, now_ms: int, outputs: list[AccountMargin],
               calls: list[MarginCallEvent], snapshot: Snapshot | Callable[[], Snapshot]) -> None:
        """``margin`` (in its published state and episode, see :meth:`episode`) goes out for ``row``;
        a call with it when it enters a worse state. ``snapshot`` (or what makes it: it is kept only
        on a change of state, so a heartbeat need not build one) is the account as margined now."""
        prev = int(self.state[row])
        state = int(margin.state)
        if (state != prev or self.snapshots[row] is None) and callable(snapshot):
            snapshot = snapshot()
        episode = margin.episode
        causes: tuple[Contribution, ...] = ()
        if state != prev:
            inst = self.instruments
            causes = contributions(self.snapshots[row], snapshot, inst.contract_size, inst.symbols,
                                   inst.underlying_of)
            self.last_change[row] = causes
        outputs.append(margin)
        if state > prev and state >= Health.MARGIN_CALL:
            calls.append(MarginCallEvent(margin, prev, episode, repeat, causes))
        self.state[row] = state
        self.equity[row] = margin.equity_usd
        self.im[row] = margin.im_usd
        self._published_at(row, now_ms)
        if state != prev or self.snapshots[row] is None:
            self.snapshots[row] = snapshot   # causes are told from the last change of state

    def seed(self, row: int, state: int, equity_usd: float, im_usd: float, publish_ms: int, episode: int) -> None:
        """What was published for ``row`` before a restart (read back from margin.state)."""
        self.state[row] = state
        self.equity[row] = equity_usd
        self.im[row] = im_usd
        self._published_at(row, publish_ms)
        self.episodes.number[row] = episode
        self.episodes.worst[row] = state if state > Health.HEALTHY else 0

    def forget(self, rows: Sequence[int]) -> None:
        for row in rows:
            self.state[row] = 0
            self.equity[row] = 0.0
            self.im[row] = 0.0
            self._published_at(row, 0)
            self.pending.state[row] = 0
            self.pending.count[row] = 0
            self.episodes.number[row] = 0
            self.episodes.worst[row] = 0
            self.snapshots[row] = None
            self.last_change.pop(row, None)

    def emit(self, outputs: Sequence[AccountMargin], calls: Sequence[MarginCallEvent]) -> None:
        if outputs or calls:
            self.publisher.publish(outputs, calls)
            self.metrics.published(len(outputs), len(calls))
            # one increment per (state, cause, repeat): a first publication has ~100k calls
            for (state, cause, repeat), count in Counter(
                    (int(c.margin.state), int(c.cause), c.repeat) for c in calls).items():
                self.metrics.call(state, cause, repeat, count)


# Weyl sequence with the golden-ratio increment (2⁶⁴/φ): row r's phase is frac(r/φ) of the interval. Its
# discrepancy is O(log n / n): any stretch of the interval holds its share of the first n rows, ± O(log n).
_GOLDEN_64 = np.uint64(0x9E3779B97F4A7C15)


def heartbeat_phases(capacity: int, interval_ms: int) -> np.ndarray:
    """Heartbeat phase (ms, in [0, interval)) per row: deterministic, evenly spread over the interval."""
    weyl = np.arange(capacity, dtype=np.uint64) * _GOLDEN_64          # wraps mod 2⁶⁴ by design
    return ((weyl >> np.uint64(11)).astype(np.float64) * (interval_ms / 2.0 ** 53)).astype(np.int64)


def next_beats(phase_ms: np.ndarray, published_ms: np.ndarray, interval_ms: int) -> np.ndarray:
    """Per row, the first heartbeat (``phase + k·interval``) after its publication at ``published_ms``:
    ``(now − phase) // interval > (published − phase) // interval`` exactly when ``now ≥`` it."""
    return phase_ms + ((published_ms - phase_ms) // interval_ms + 1) * interval_ms


def snapshot_of(book, marks: np.ndarray, collateral_usd: float, margin: AccountMargin, version: int,
                sigma_margin: Mapping[str, float], model_id: int) -> Snapshot:
    return Snapshot(book, marks, collateral_usd, margin.equity_usd, margin.im_usd, version, sigma_margin, model_id)
