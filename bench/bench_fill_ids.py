"""What the republish index of fill ids costs the portfolio's apply loop: ``python -m bench.bench_fill_ids``.

The same fills (a demo book's, as ``trades.fills`` records of one partition) applied in batches by the
application's ``Applier`` over in-memory ports twice in this process — without the index
(``MF_PORTFOLIO_DEDUPE_SECONDS=0``) and with it — and the ratio of the two rates. No Kafka or Redis: the
adapters' costs are the same in both and are measured by ``bench.bench_portfolio``.
"""

from __future__ import annotations

import argparse
import time

from marginflow.portfolio.adapters.codec import SnapshotEncoder
from marginflow.portfolio.application import Applier, InputRecord
from marginflow.portfolio.demo_book import generate_book
from marginflow.portfolio.domain.model import InputPosition
from marginflow.portfolio.service import configure_gc, ledger_rules
from marginflow.portfolio.settings import PortfolioSettings
from marginflow.shared.clock import ManualClock, SystemClock
from marginflow.shared.config import load
from marginflow.shared.universe import platform_universe

TOPIC = "trades.fills"


class _Store:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def load_payloads(self, account_partitions):
        return {a: self.data[a] for a in account_partitions if a in self.data}

    def save(self, changes) -> None:
        for c in changes:
            self.data[c.account.account_id] = c.payload


class _Sink:
    def publish(self, changes) -> None:
        pass


class _Source:
    def reject(self, record, reason) -> None:
        raise AssertionError(f"rejected: {reason}")


class _NoHistory:
    def read(self, partition, start_offset, end_offset, since_ms):
        return []


def _rate(records: list[InputRecord], rules, indexed: bool, batch: int) -> tuple[float, int]:
    applier = Applier(rules, _Store(), _Sink(), _Source(), SnapshotEncoder(), ManualClock(records[-1].time_ms), None,
                      fill_history=_NoHistory() if indexed else None, fills_topic=TOPIC,
                      fill_ids_horizon_ms=3_600_000)
    started = time.perf_counter()
    applied = 0
    for i in range(0, len(records), batch):
        applied += applier.apply_batch(records[i:i + batch]).fills_applied
    return len(records) / (time.perf_counter() - started), applied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_fill_ids")
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=5000, help="records per batch (MF_PORTFOLIO_BATCH_MAX_RECORDS)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    settings = load(PortfolioSettings, {})
    universe = platform_universe(settings.common, SystemClock().now_ms())
    rules = ledger_rules(settings, universe)
    fills = generate_book(universe, args.accounts, seed=7, start_ms=SystemClock().now_ms()).fills
    records = [InputRecord(InputPosition(f"{TOPIC}:0", n), f.account_id, f, None, f.event_time_ms)
               for n, f in enumerate(fills)]
    configure_gc()
    without, with_index = [], []
    for _ in range(args.repeat):       # interleaved: a load change on the machine hits both
        r0, a0 = _rate(records, rules, False, args.batch)
        r1, a1 = _rate(records, rules, True, args.batch)
        assert a0 == a1 == len(records)
        without.append(r0)
        with_index.append(r1)
    best0, best1 = max(without), max(with_index)
    print(f"{len(records):,} fills of {args.accounts:,} accounts, batches of {args.batch:,}: "
          f"{best0:,.0f} fills/s without the index, {best1:,.0f} with it: {best1 / best0:.2f}×")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
