"""History in and out: the replay CSV (marketdata's format and reader), and simulated histories.

The CSV is marketdata's replay format, ``ts,instrument,price,bid,ask,bid_size,ask_size`` (``ts``
epoch milliseconds or ISO-8601, naive = UTC; ``instrument`` an underlying such as ``BTC`` for its
index, or its perpetual ``BTC-PERP``); rows are read by marketdata's own replay reader.
"""

from __future__ import annotations

import csv
import pathlib

import numpy as np

from marginflow.backtest.domain.history import DataReport, History, build_history
from marginflow.marketdata.adapters.replay import BadRow, read_ticks
from marginflow.marketdata.domain.simulator import MarketSimulator, SimConfig
from marginflow.marketdata.domain.ticks import RawTick
from marginflow.marketdata.domain.validation import ValidationConfig
from marginflow.shared.universe import MS_PER_DAY, Universe

SIM_START_MS = 1_577_836_800_000         # 2020-01-01T00:00Z, any fixed start does
SIM_STEP_MS = 6 * 3_600_000               # simulator step: 4 steps a day (jumps, regime switches intraday)


def daily_sim_config(seed: int) -> SimConfig:
    """The simulator tuned for multi-year daily histories: calm/stress regimes in episodes of weeks
    (one every ~100 days, ~20 days long), jumps of ±6 % a few times a month in stress, rarely in calm.
    Its live defaults (a stress switch a day at 10 %, −1 % jumps 0.5–4 times a day) are for minutes
    of trading: over years their drift takes every price to zero."""
    return SimConfig(seed=seed, step_ms=SIM_STEP_MS, p_calm_to_stress_per_day=0.01, p_stress_to_calm_per_day=0.05,
                     jumps_per_day_calm=0.02, jumps_per_day_stress=0.25, jump_mean=0.0, jump_sd=0.06)


def load_history(path: str | pathlib.Path, universe: Universe, interval_ms: int | None = None,
                 validation: ValidationConfig = ValidationConfig()) -> tuple[History, DataReport]:
    ticks: list[RawTick] = []
    bad = 0
    for row in read_ticks(path):
        if isinstance(row, BadRow):
            bad += 1
        else:
            ticks.append(row)
    return build_history(ticks, bad, universe, interval_ms, validation)


def simulate_closes(universe: Universe, days: int, seed: int, underlyings: tuple[str, ...] = ("BTC", "ETH", "SOL"),
                    config: SimConfig | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Daily closes ``[days, U]`` of the marketdata simulator's index paths (calm/stress regimes,
    jumps, volatility clustering), their times (ms) and the stress flag of each day's last step."""
    sub = Universe({u: universe.underlyings[u] for u in underlyings},
                   {s: i for s, i in universe.instruments.items() if i.underlying in underlyings})
    cfg = config or daily_sim_config(seed)
    sim = MarketSimulator(sub, cfg, SIM_START_MS)
    per_day = MS_PER_DAY // cfg.step_ms
    prices, _vol, stress = sim.index_paths(days * per_day)
    closes = prices[per_day - 1::per_day]
    times = SIM_START_MS + MS_PER_DAY * np.arange(1, days + 1, dtype=np.int64) - 1
    return closes, times, stress[per_day - 1::per_day]


def write_history_csv(path: str | pathlib.Path, underlyings: tuple[str, ...], times_ms: np.ndarray,
                      closes: np.ndarray) -> pathlib.Path:
    """Write closes as the replay CSV (one index row per underlying and time)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["ts", "instrument", "price", "bid", "ask", "bid_size", "ask_size"])
        for t, row in zip(times_ms.tolist(), closes.tolist()):
            for und, px in zip(underlyings, row):
                w.writerow([t, und, repr(float(px)), "", "", "", ""])
    return path
