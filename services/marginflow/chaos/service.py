"""Wiring of the chaos harness: its own stack and platform, the adapters, the runner, the report."""

from __future__ import annotations

import datetime as dt
import os
import pathlib
import shutil
import signal
import sys
import tempfile
import time
import types
from decimal import Decimal

from marginflow.chaos.adapters import grpc_io, redis_io
from marginflow.chaos.adapters.kafka_io import FillGenerator, TopicTail, first_record_after
from marginflow.chaos.adapters.processes import Stack, SupervisedPlatform, free_port
from marginflow.chaos.application import Fault, Options, Ports, Runner, full_faults, small_faults
from marginflow.chaos.domain.fills import FillPlan, tradables_of
from marginflow.chaos.domain.report import FaultResult, markdown

TOPIC_PREFIX = "chaos."


def log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S', time.gmtime())}] {msg}", file=sys.stderr, flush=True)


def decoders():
    from marginflow.api.account.v1 import account_pb2
    from marginflow.api.common.v1 import common_pb2
    from marginflow.api.liquidation.v1 import liquidation_pb2
    from marginflow.api.margin.v1 import margin_pb2
    from marginflow.api.marketdata.v1 import marketdata_pb2

    return types.SimpleNamespace(
        fill=account_pb2.Fill.FromString, event=account_pb2.AccountEvent.FromString,
        snapshot=account_pb2.AccountSnapshot.FromString, dead_letter=common_pb2.DeadLetter.FromString,
        call=margin_pb2.MarginCall.FromString, order=liquidation_pb2.LiquidationOrder.FromString,
        step=liquidation_pb2.LiquidationEvent.FromString,
        started=lambda e: e.kind == liquidation_pb2.LIQUIDATION_EVENT_KIND_STARTED,
        mark=marketdata_pb2.Mark.FromString,
        dec=lambda d: Decimal(d.value or "0"), observed=grpc_io.observed, has_isolated=grpc_io.has_isolated,
        parts=grpc_io.parts, book_digest=grpc_io.book_digest)


def fill_encoder():
    from marginflow.api.account.v1 import account_pb2
    from marginflow.api.common.v1 import common_pb2

    def encode(f) -> bytes:
        now = int(time.time() * 1000)
        return account_pb2.Fill(meta=common_pb2.EventMeta(event_time_ms=now, publish_time_ms=now, source="chaos"),
                                fill_id=f.fill_id, account_id=f.account_id, instrument=f.instrument, side=f.side,
                                size=common_pb2.Decimal(value=str(f.size)),
                                price=common_pb2.Decimal(value=str(f.price_usd)),
                                fee_usd=common_pb2.Decimal(value="0")).SerializeToString()
    return encode


def platform_services() -> list[str]:
    """The services of this build that the supervisor serves over gRPC, plus exchange-sim when present."""
    from marginflow.supervisor import PROGRAMS, available

    return [p.name for p in PROGRAMS if not p.one_shot and available(p)]


def run(options: Options, small: bool, report: pathlib.Path | None, run_dir: pathlib.Path | None,
        keep_run_dir: bool, chosen: list[Fault] | None = None) -> int:
    """``chosen``: the faults to inject, in order (None: the small or the full set)."""
    from marginflow.portfolio.demo_book import account_id, generate_book, publish_book
    from marginflow.shared.config import CommonSettings, load
    from marginflow.shared.kafka import ensure_topics, platform_topics
    from marginflow.shared.universe import load_universe
    from marginflow.supervisor import PROGRAMS

    services = platform_services()
    own_dir = run_dir is None
    run_dir = pathlib.Path(tempfile.mkdtemp(prefix="marginflow-chaos-")) if own_dir else run_dir
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    log(f"run directory {run_dir} (logs in {run_dir / 'logs'})")
    served = [s for s in services if any(p.name == s and p.grpc_port_var for p in PROGRAMS)]
    stack = Stack(run_dir, free_port(), free_port(), free_port(), log)
    ports = {}
    for p in PROGRAMS:
        if p.grpc_port_var:
            ports[p.grpc_port_var] = free_port()
            ports[p.metrics_port_var] = free_port()
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    env = {**os.environ, **{k: str(v) for k, v in ports.items()},
           "KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap, "REDIS_URL": stack.redis_url, "MF_TOPIC_PREFIX": TOPIC_PREFIX,
           "MF_RUN_DIR": str(run_dir), "MF_LOG_DIR": str(run_dir / "logs"), "MF_LOG_JSON": "true",
           "MF_UNIVERSE_AS_OF": today, "MF_BIND_HOST": "127.0.0.1", "MF_SHUTDOWN_GRACE_SECONDS": "2",
           "MF_DEMO_ACCOUNTS": str(options.accounts), "MF_DEMO_SEED": str(options.seed)}
    supervised = SupervisedPlatform(run_dir, env, services)
    grpc_ports = {p.name: ports[p.grpc_port_var] for p in PROGRAMS if p.grpc_port_var and p.name in served}
    platform = None
    generator = None
    tails: list[TopicTail] = []
    interrupted = {"sig": None}

    def on_signal(signum, _frame):
        interrupted["sig"] = signum
        raise KeyboardInterrupt

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    results: list[FaultResult] = []
    runner = None
    failure = ""
    try:
        log(f"starting Kafka on {stack.bootstrap} and Redis on {stack.redis_url}")
        stack.up()
        common = load(CommonSettings, env)
        ensure_topics(common.bootstrap, platform_topics(common.topics, common.topic_partitions))
        started = time.monotonic()
        log(f"starting the platform under the supervisor: {', '.join(services)}")
        supervised.start()
        platform = grpc_io.Platform("127.0.0.1", grpc_ports)
        now_ms = int(time.time() * 1000)
        as_of_ms = common.universe_as_of_ms(now_ms)
        universe = load_universe(None, as_of_ms)
        book = generate_book(universe, options.accounts, options.seed, as_of_ms)
        log(f"demo book: {options.accounts} accounts, {len(book.fills)} fills; publishing")
        publish_book(book, common)
        topics = common.topics
        plan = FillPlan(f"chaos-s{options.seed}", [account_id(i) for i in range(options.accounts)],
                        tradables_of(universe, as_of_ms))
        generator = FillGenerator(common.bootstrap, topics.fills, common.topic_partitions, plan, options.rate,
                                  fill_encoder(), log)
        # What each service publishes and nothing else does: its first record after a kill -9 is the
        # restarted process's (exchange-sim shares trades.fills with the generator: not measured).
        output_topics = {"marketdata": topics.marks, "riskparams": topics.risk_params,
                         "portfolio": topics.positions, "margin": topics.margin_state,
                         "liquidation": topics.liquidation_events}
        tail = lambda name: tails.append(TopicTail(common.bootstrap, name)) or tails[-1]  # noqa: E731
        ports_ = Ports(
            infra=stack, processes=supervised, platform=platform,
            flush_redis=lambda: redis_io.flushall(stack.redis_port), generator=generator,
            fills=tail(topics.fills), events=tail(topics.account_events), dead_letters=tail(topics.portfolio_dlq),
            positions=tail(topics.positions), calls=tail(topics.margin_calls),
            orders=tail(topics.liquidation_orders) if "liquidation" in services else None,
            steps=tail(topics.liquidation_events) if "liquidation" in services else None,
            marks=tail(topics.marks), decode=decoders(), log=log,
            first_output=lambda service, since_ms: (
                first_record_after(common.bootstrap, output_topics[service], since_ms)
                if service in output_topics else None))
        faults = chosen if chosen is not None else (small_faults if small else full_faults)(services)
        runner = Runner(ports_, options, served, account_id(0))
        results = runner.run(faults, started)
    except KeyboardInterrupt:
        failure = f"interrupted by signal {interrupted['sig'] or signal.SIGINT}"
    except Exception as exc:  # noqa: BLE001 - reported, then everything is stopped
        failure = f"{type(exc).__name__}: {exc}"
        import traceback
        traceback.print_exc()
    finally:
        if runner is not None and not results:
            results = runner.results
        for s, h in old.items():
            signal.signal(s, h)
        log("stopping everything this run started")
        if generator is not None:
            generator.close()
        for t in tails:
            try:
                t.close()
            except Exception:  # noqa: BLE001
                pass
        if platform is not None:
            platform.close()
        supervised.stop()
        stack.down()
    header = (f"chaos run: {options.accounts:,} accounts, {options.rate:,.0f} fills/s target, "
              f"{'chosen' if chosen is not None else 'small' if small else 'full'} fault set, services: {', '.join(services)}")
    if generator is not None:
        header += f"; generator sent {generator.next_seq:,} fills ({generator.resent:,} re-sent after a failed send)"
    text = markdown(results, header)
    if failure:
        text += f"\nRUN FAILED: {failure}\n"
    print_table(results, header)
    if failure:
        print(f"RUN FAILED: {failure}", file=sys.stderr)
    if report is not None:
        report.write_text(text)
        log(f"report written to {report}")
    if own_dir and not keep_run_dir and not failure and all(r.ok for r in results):
        shutil.rmtree(run_dir, ignore_errors=True)
    ok = bool(results) and not failure and all(r.ok for r in results)
    return 0 if ok else 1


def print_table(results: list[FaultResult], header: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from marginflow.chaos.domain.report import COLUMNS

    table = Table(title=header, title_justify="left")
    for i, col in enumerate(COLUMNS):
        table.add_column(col, justify="left" if i == 0 or col == "result" else "right")
    for r in results:
        table.add_row(*r.cells(), style=None if r.ok else "bold red")
    console = Console(width=200)
    console.print(table)
    for r in results:
        for n in r.notes:
            console.print(f"  {r.fault}: {n}", highlight=False, markup=False)
