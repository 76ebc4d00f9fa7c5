"""Portfolio benchmark: ``python -m bench.bench_portfolio`` (needs the local Kafka and Redis).

1. fills applied per second end to end: a demo book is published to Kafka first, then the
   portfolio service (in this process, no gRPC) consumes it: decode → apply → snapshot to the
   compacted topic (acks=all) → Redis pipeline → offset commit. Compared with the in-process
   baseline, the pure domain apply loop over the same fills, timed in the same run.
2. time to rebuild 100,000 accounts from Kafka: 100k account snapshots on portfolio.positions,
   read back and written to an empty Redis namespace (what a restart with a flushed Redis does).

Everything lives under a fresh topic prefix and Redis prefix, deleted at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import time
import uuid

from marginflow.portfolio.adapters.codec import encode_account
from marginflow.portfolio.demo_book import generate_book, publish_book
from marginflow.portfolio.domain.ledger import apply_command
from marginflow.portfolio.domain.model import Account
from marginflow.portfolio.service import PortfolioApp, configure_gc, ledger_rules, portfolio_topics
from marginflow.portfolio.settings import PortfolioSettings
from marginflow.shared.clock import SystemClock
from marginflow.shared.config import load
from marginflow.shared.kafka import ProtoProducer, delete_topics, ensure_topics, new_producer
from marginflow.shared.universe import platform_universe


def settings_for(prefix: str, partitions: int) -> PortfolioSettings:
    env = dict(os.environ)
    env.update({"MF_TOPIC_PREFIX": prefix, "MF_TOPIC_PARTITIONS": str(partitions),
                "MF_PORTFOLIO_REDIS_PREFIX": f"{prefix}pf:", "MF_PORTFOLIO_GRPC_PORT": "0",
                "MF_PORTFOLIO_METRICS_PORT": "0", "MF_LOG_JSON": "false"})
    return load(PortfolioSettings, env)


def apply_all(commands, rules) -> tuple[dict[str, Account], float]:
    accounts: dict[str, Account] = {}
    started = time.perf_counter()
    for c in commands:
        acct = accounts.get(c.account_id) or Account(c.account_id)
        accounts[c.account_id], _ = apply_command(acct, c, None, rules)
    return accounts, time.perf_counter() - started


def cleanup(settings: PortfolioSettings, app: PortfolioApp | None) -> None:
    if app is not None:
        app.store.delete_namespace()
    delete_topics(settings.common.bootstrap, [s.name for s in portfolio_topics(settings)])


def _run_until(app: PortfolioApp, done, timeout_s: float = 600.0) -> float:
    """Consume in a thread until ``done()``; seconds from the start of consumption."""
    thread, stopping = app.run_in_thread()
    started = time.perf_counter()
    try:
        while not done():
            if time.perf_counter() - started > timeout_s:
                raise TimeoutError(f"only {app.totals} applied after {timeout_s}s")
            time.sleep(0.002)
        return time.perf_counter() - started
    finally:
        stopping.set()
        thread.join(30)


def _instance(settings: PortfolioSettings, applied, ready, go, done) -> None:
    """One more service instance in its own process (same consumer group): scale-out by partitions."""
    app = PortfolioApp(settings, SystemClock()).start(serve_grpc=False, serve_http_metrics=False)
    configure_gc()   # as the service's main does
    ready.set()
    go.wait()
    thread, stopping = app.run_in_thread()
    while not done.is_set():
        applied.value = app.totals.fills_applied
        time.sleep(0.002)
    applied.value = app.totals.fills_applied
    stopping.set()
    thread.join(30)
    app.close()


def bench_end_to_end(accounts: int, seed: int, partitions: int, instances: int = 1) -> dict[str, float]:
    """Deposits first (untimed), then a backlog of fills consumed by fresh instances, timed."""
    settings = settings_for(f"bench{uuid.uuid4().hex[:8]}.", partitions)
    now_ms = int(time.time() * 1000)
    universe = platform_universe(settings.common, now_ms)
    rules = ledger_rules(settings, universe)
    book = generate_book(universe, accounts, seed, settings.common.universe_as_of_ms(now_ms))
    # In-process baseline: the pure domain apply loop over the same fills (after the same deposits).
    states, _ = apply_all(book.deposits, rules)
    started = time.perf_counter()
    for c in book.fills:
        states[c.account_id], _ = apply_command(states[c.account_id], c, None, rules)
    baseline_fills_s = len(book.fills) / (time.perf_counter() - started)
    ensure_topics(settings.common.bootstrap, portfolio_topics(settings))
    app = None
    helpers = []
    ctx = multiprocessing.get_context("spawn")
    done = ctx.Event()
    try:
        publish_book(dataclasses.replace(book, fills=[]), settings.common)
        app = PortfolioApp(settings, SystemClock()).start(serve_grpc=False, serve_http_metrics=False)
        _run_until(app, lambda: app.totals.events_applied + app.totals.rejected >= len(book.deposits))
        app.close()
        publish_book(dataclasses.replace(book, deposits=[]), settings.common)
        go = ctx.Event()
        for _ in range(instances - 1):
            applied, ready = ctx.Value("q", 0), ctx.Event()
            proc = ctx.Process(target=_instance, args=(settings, applied, ready, go, done), daemon=True)
            proc.start()
            ready.wait(120)
            helpers.append((proc, applied))
        app = PortfolioApp(settings, SystemClock()).start(serve_grpc=False, serve_http_metrics=False)
        configure_gc()   # as the service's main does
        go.set()
        cpu0 = time.process_time()
        elapsed = _run_until(app, lambda: app.totals.fills_applied + app.totals.rejected
                             + sum(a.value for _, a in helpers) >= len(book.fills))
        cpu = time.process_time() - cpu0
        done.set()
        for proc, _ in helpers:
            proc.join(60)
        e2e = len(book.fills) / elapsed
        applied_total = app.totals.fills_applied + sum(a.value for _, a in helpers)
        return {"accounts": accounts, "fills": len(book.fills), "events": len(book.deposits), "instances": instances,
                "rejected": app.totals.rejected, "applied": applied_total, "seconds": elapsed, "e2e_fills_s": e2e,
                "cpu_seconds": cpu, "baseline_fills_s": baseline_fills_s, "ratio": e2e / baseline_fills_s,
                "snapshots": app.totals.accounts_changed}
    finally:
        done.set()
        for proc, _ in helpers:
            if proc.is_alive():
                proc.terminate()
        if app is not None:
            app.close()
        cleanup(settings, app)


def bench_rebuild(accounts: int, seed: int, partitions: int) -> dict[str, float]:
    settings = settings_for(f"bench{uuid.uuid4().hex[:8]}.", partitions)
    now_ms = int(time.time() * 1000)
    universe = platform_universe(settings.common, now_ms)
    rules = ledger_rules(settings, universe)
    book = generate_book(universe, accounts, seed, settings.common.universe_as_of_ms(now_ms))
    states, _ = apply_all(list(book.deposits) + list(book.fills), rules)
    ensure_topics(settings.common.bootstrap, portfolio_topics(settings))
    producer = ProtoProducer(new_producer(settings.common.bootstrap, "bench-portfolio", linger_ms=20), "bench")
    for account_id, account in states.items():
        producer.send_raw(settings.common.topics.positions, account_id.encode(), encode_account(account, now_ms))
    producer.flush()
    producer.close()
    app = None
    try:
        app = PortfolioApp(settings, SystemClock())
        # start() rebuilds because this Redis namespace is empty; time the rebuild alone.
        app.start(serve_grpc=False, serve_http_metrics=False)
        positions = sum(len(a.open_instruments()) for a in states.values())
        assert app.rebuilt_accounts == len(states), (app.rebuilt_accounts, len(states))
        return {"accounts": app.rebuilt_accounts, "positions": positions, "seconds": app.rebuild_seconds or 0.0}
    finally:
        if app is not None:
            app.close()
        cleanup(settings, app)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_portfolio")
    parser.add_argument("--accounts", type=int, default=20_000, help="accounts of the end-to-end book")
    parser.add_argument("--rebuild-accounts", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--instances", type=int, default=2, help="also run this many instances (1 = skip)")
    args = parser.parse_args(argv)
    e2e = bench_end_to_end(args.accounts, args.seed, args.partitions)
    scaled = bench_end_to_end(args.accounts, args.seed, args.partitions, instances=2) if args.instances > 1 else None
    rebuild = bench_rebuild(args.rebuild_accounts, args.seed + 1, args.partitions)
    rows = [
        ("end to end Kafka → Redis, 1 instance (fills/s)", f"{e2e['e2e_fills_s']:,.0f}", "≥ 10,000",
         f"{e2e['fills']:,} fills, {e2e['accounts']:,} accounts, {e2e['seconds']:.2f} s wall, "
         f"{e2e['cpu_seconds']:.2f} s CPU, {e2e['snapshots']:,} snapshots"),
        ("in-process domain apply (fills/s)", f"{e2e['baseline_fills_s']:,.0f}", "baseline", "same fills, same run"),
        ("ratio end to end / in-process", f"{e2e['ratio']:.2f}", "", "decode, snapshot to Kafka, Redis, commit"),
    ]
    if scaled is not None:
        rows.append(("end to end, 2 instances (fills/s)", f"{scaled['e2e_fills_s']:,.0f}", "≥ 10,000",
                     f"two processes, one consumer group, {args.partitions} partitions; "
                     f"{scaled['applied']:,} of {scaled['fills']:,} applied exactly once"))
    rows += [
        ("rebuild from Kafka (s)", f"{rebuild['seconds']:.2f}", "",
         f"{rebuild['accounts']:,} accounts, {rebuild['positions']:,} open positions"),
        ("rebuild rate (accounts/s)", f"{rebuild['accounts'] / max(1e-9, rebuild['seconds']):,.0f}", "", ""),
    ]
    widths = [max(len(r[i]) for r in rows + [("what", "value", "target", "notes")]) for i in range(4)]
    header = ("what", "value", "target", "notes")
    print("portfolio benchmark")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    if e2e["rejected"]:
        print(f"warning: {e2e['rejected']} records were rejected")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
