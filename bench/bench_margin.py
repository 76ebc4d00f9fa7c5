"""Margin service benchmark: ``python -m bench.bench_margin`` (no Kafka needed: the model is served in-process).

1. Loads 100,000 accounts / 1,000,000 positions (10 distinct instruments each over the platform universe,
   10 % isolated, USDC + BTC collateral) into the margin engine, with a risk-parameter version of
   27 grid + 4 tail + 1,000 historical scenarios; times the full recalculation and reports the process RSS
   (target ≤ 1 GiB), against the RSS before loading.
2. Serves MarginService over gRPC from this process and drives WhatIf and GetMargin from a client
   process, open loop at 500 requests/s (a request is sent at its scheduled time whatever the previous
   one did), random accounts; p50/p99 per method (target p99 ≤ 5 ms). Baselines: the same engine calls
   in-process, without gRPC; and an echo MarginService (canned answers) in this process, driven by the
   same client. Three phases — the echo, the idle service, and the service while it re-evaluates every
   account on marks every 250 ms (what a live venue does) — run in alternating blocks (``--rounds``, the
   order rotated each round), so that the host's other work falls on all of them alike; each phase pools
   its blocks. Each phase also reports this process's CPU time per request served (every thread: gRPC,
   handlers, and while re-evaluating the evaluations), and its ratio to the echo's: on a host shared with
   other work it moves far less than the latencies do.
3. Explain (a costlier read: the core's explain and every position's liquidation price), in-process and
   over gRPC at a fifth of the rate, against the echo server answering Explain with a canned response.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import queue
import os
import resource
import threading
import time

import numpy as np

import marginflow.core as core
from marginflow.margin.domain.trades import TradeDelta
from marginflow.margin.domain.book import AccountBook
from marginflow.margin.domain.scenarios import GridSpec, RiskVersion
from marginflow.margin.service import GRPC_WORKERS, MarginApp, configure_runtime, lower_loop_priority
from marginflow.margin.settings import MarginSettings
from marginflow.shared import grpcserver
from marginflow.shared.config import load


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def risk_version(underlyings: list[str], n_hist: int = 1000) -> RiskVersion:
    rng = np.random.default_rng(11)
    grids = {u: GridSpec(u, tuple(np.linspace(-0.15, 0.15, 9)), (-0.25, 0.0, 0.25), (-0.3, 0.3, -0.45, 0.45),
                         (0.0, 0.0, 0.0, 0.0), (0.5, 0.5, 0.35, 0.35), 3 * 86400.0) for u in underlyings}
    z = rng.standard_t(4, (n_hist, 1)) * 0.7 + rng.standard_t(4, (n_hist, len(underlyings))) * 0.7
    hist = np.clip(z * 0.6 * np.sqrt(3 / 365), -0.9, 3.0)
    now = int(time.time() * 1000)
    return RiskVersion(1, now, now, {u: 0.6 for u in underlyings}, {}, grids, tuple(underlyings), hist, 0.99)


def make_books(engine, n_accounts: int, per_account: int, seed: int = 5) -> list[AccountBook]:
    rng = np.random.default_rng(seed)
    K = engine.instruments.n
    inst = np.argsort(rng.random((n_accounts, K)), axis=1)[:, :per_account].astype(np.int32)
    size = rng.choice([-1.0, 1.0], (n_accounts, per_account)) * np.round(rng.lognormal(0, 1, (n_accounts, per_account)), 2)
    size[size == 0] = 0.01
    entry = engine.mark_price[inst] * (1 + rng.normal(0, 0.02, (n_accounts, per_account)))
    iso = (rng.random((n_accounts, per_account)) < 0.1).astype(np.uint8)
    notional = np.abs(size) * engine.mark_price[inst] * engine.instruments.contract_size[inst]
    coll = np.where(iso == 1, notional * 0.3, 0.0)
    A = len(engine.config.assets)
    btc = engine.asset_index.get("BTC")
    books = []
    for i in range(n_accounts):
        bal = np.zeros(A)
        bal[0] = float(notional[i].sum() * 0.4)
        if btc is not None and i % 3 == 0:
            bal[btc] = 0.5
        books.append(AccountBook(f"acct{i:06d}", 1, inst[i].copy(), size[i].copy(), entry[i].copy(), iso[i].copy(),
                                 coll[i].copy(), bal))
    return books


def cpu_s() -> float:
    """CPU seconds of this whole process (every thread): less sensitive to a loaded host than wall time."""
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def percentiles(latencies_s: list[float]) -> tuple[float, float, float]:
    a = np.asarray(latencies_s) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99)), float(a.max())


def _load(stub, pb, common_pb2, accounts, instruments, rate, seconds, methods, rng) -> dict:
    """Open-loop load on one server: requests at their scheduled times (futures), the ``methods`` in turn."""
    n = int(rate * seconds)
    results: dict[str, list[float]] = {m: [] for m in methods}
    errors = [0]
    lock = threading.Lock()
    pending = []
    # The client's own collector off during the block: its pending futures and callbacks grow to thousands
    # of tracked objects, and a collection over them (tens of ms) would be charged to the server.
    gc.collect()
    gc.disable()
    start = time.perf_counter() + 0.05
    for i in range(n):
        when = start + i / rate
        delay = when - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        account = accounts[int(rng.integers(len(accounts)))]
        sent = time.perf_counter()
        method = methods[i % len(methods)]
        if method == "WhatIf":
            trade = pb.TradeDelta(instrument=instruments[int(rng.integers(len(instruments)))],
                                  size=common_pb2.Decimal(value=str(float(rng.choice([-1, 1])) * 0.5)))
            fut = stub.WhatIf.future(pb.WhatIfRequest(account_id=account, trades=[trade]), timeout=5)
        elif method == "GetMargin":
            fut = stub.GetMargin.future(pb.GetMarginRequest(account_id=account), timeout=5)
        else:
            fut = stub.Explain.future(pb.ExplainRequest(account_id=account), timeout=5)

        def done(f, method=method, sent=sent):
            elapsed = time.perf_counter() - sent
            with lock:
                if f.exception() is None:
                    results[method].append(elapsed)
                else:
                    errors[0] += 1

        fut.add_done_callback(done)
        pending.append(fut)
    for f in pending:
        try:
            f.result(timeout=10)
        except Exception:  # noqa: BLE001 - counted in the callback
            pass
    achieved = n / (time.perf_counter() - start)
    gc.enable()
    return {"results": results, "errors": errors[0], "achieved_rps": achieved}


def client(accounts: list[str], instruments: list[str], commands, out) -> None:
    """The load client (its own process): one channel per server port, kept open across blocks; each
    command ``(port, rate, seconds, methods)`` is one block of open-loop load, answered on ``out``."""
    import grpc

    from marginflow.api.common.v1 import common_pb2
    from marginflow.api.margin.v1 import margin_pb2 as pb
    from marginflow.api.margin.v1 import margin_pb2_grpc

    channels: dict[int, tuple] = {}
    rng = np.random.default_rng(1)
    while True:
        command = commands.get()
        if command is None:
            break
        port, rate, seconds, methods = command
        if port not in channels:
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            grpc.channel_ready_future(channel).result(timeout=30)
            stub = margin_pb2_grpc.MarginServiceStub(channel)
            for _ in range(50):   # warm-up
                stub.GetMargin(pb.GetMarginRequest(account_id=accounts[0]), timeout=5)
            channels[port] = (channel, stub)
        stub = channels[port][1]
        for _ in range(20):   # each block starts on a warm channel and server (no idle gap in its latencies)
            stub.GetMargin(pb.GetMarginRequest(account_id=accounts[0]), timeout=5)
        out.put(_load(stub, pb, common_pb2, accounts, instruments, rate, seconds, methods,
                      rng))
    for channel, _stub in channels.values():
        channel.close()


class LoadClient:
    """The client process and its command queue: :meth:`run` is one block of load on one server."""

    def __init__(self, accounts: list[str], instruments: list[str]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._commands = ctx.Queue()
        self._out = ctx.Queue()
        self._proc = ctx.Process(target=client, args=(accounts, instruments, self._commands, self._out), daemon=True)
        self._proc.start()

    def run(self, port: int, rate: float, seconds: float, methods=("WhatIf", "GetMargin")) -> dict:
        self._commands.put((port, rate, seconds, tuple(methods)))
        deadline = time.monotonic() + seconds + 120
        while True:
            try:
                return self._out.get(timeout=1.0)
            except queue.Empty:
                if not self._proc.is_alive():
                    raise RuntimeError(f"load client exited with code {self._proc.exitcode}") from None
                if time.monotonic() > deadline:
                    self._proc.kill()
                    raise RuntimeError("load client did not report in time") from None

    def close(self) -> None:
        self._commands.put(None)
        self._proc.join(30)
        if self._proc.is_alive():
            self._proc.kill()


def echo_service(engine, account: str):
    """A MarginService that answers every call with canned responses (no engine work)."""
    from marginflow.api.margin.v1 import margin_pb2 as pb
    from marginflow.api.margin.v1 import margin_pb2_grpc

    from marginflow.margin.adapters import codec
    from marginflow.margin.adapters.grpc_api import SERVICE_NAME, MarginServicer

    state = codec.margin_state(engine.get_margin(account))
    before, after = engine.what_if(account, [TradeDelta(0, 0.5)])
    what_if = pb.WhatIfResponse(before=codec.margin_state(before), after=codec.margin_state(after))
    explain = codec.explain_response(engine.explain(account))

    class Echo(margin_pb2_grpc.MarginServiceServicer):
        AUTH_POLICY = MarginServicer.AUTH_POLICY   # the same access checks as the real service

        def GetMargin(self, request, context):
            return state

        def WhatIf(self, request, context):
            return what_if

        def Explain(self, request, context):
            return explain

    return grpcserver.build_server("bench-echo", 0, [(margin_pb2_grpc.add_MarginServiceServicer_to_server, Echo(),
                                                      SERVICE_NAME)], max_workers=GRPC_WORKERS)


METHODS = ("GetMargin", "WhatIf")


class Pooled:
    """One phase's blocks pooled: latencies per method, errors, rate achieved, server CPU per request."""

    def __init__(self) -> None:
        self.results: dict[str, list[float]] = {}
        self.errors = 0
        self.requests = 0
        self.cpu_s = 0.0
        self._rps: list[float] = []

    def add(self, res: dict, cpu_s: float) -> None:
        for method, lat in res["results"].items():
            self.results.setdefault(method, []).extend(lat)
        self.errors += res["errors"]
        self.requests += sum(len(v) for v in res["results"].values())
        self.cpu_s += cpu_s
        self._rps.append(res["achieved_rps"])

    @property
    def rps(self) -> float:
        return float(np.mean(self._rps)) if self._rps else 0.0

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / max(1, self.requests) * 1e6


class MarksLoop:
    """What a live venue does to the service: marks move and every account is re-evaluated every 250 ms,
    from a thread at the service loop's priority; started and stopped around each block of load."""

    def __init__(self, engine, interval_s: float = 0.25) -> None:
        self.engine = engine
        self.interval_s = interval_s
        self.count = 0
        self.times_s: list[float] = []
        self._k = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        lower_loop_priority()   # as the service loop
        engine = self.engine
        while not self._stop.is_set():
            self._k += 1
            engine.market.mark_price *= 1.0 + 0.0001 * (1 if self._k % 2 else -1)
            engine.evaluation.marks_dirty = True
            t = time.perf_counter()
            engine.evaluate()
            self.times_s.append(time.perf_counter() - t)
            self.count += 1
            self._stop.wait(self.interval_s)

    def median_ms(self) -> float:
        return float(np.median(self.times_s)) * 1e3 if self.times_s else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--positions-per-account", type=int, default=10)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of load per phase, all blocks")
    parser.add_argument("--rounds", type=int, default=5, help="blocks per phase (interleaved with the others)")
    args = parser.parse_args()

    env = dict(os.environ, MF_MARGIN_GRPC_PORT="0", MF_MARGIN_METRICS_PORT="0", MF_LOG_JSON="false",
               MF_MARGIN_MODEL_REFRESH_MS="0", MF_LOG_LEVEL="WARNING",
               # heartbeats (a steady background rate, N per interval) kept out of the steady-state pass
               MF_MARGIN_PUBLISH_MAX_INTERVAL_MS="3600000")
    settings = load(MarginSettings, env)
    gc.collect()
    rss0 = rss_mib()
    app = MarginApp(settings).start(serve_grpc=True, serve_http_metrics=False, consume=False)
    engine = app.engine
    rss_app = rss_mib()
    t = time.perf_counter()
    books = make_books(engine, args.accounts, args.positions_per_account)
    gen_s = time.perf_counter() - t
    gc.collect()
    t = time.perf_counter()
    engine.apply_snapshots(books)
    load_s = time.perf_counter() - t
    version = risk_version(list(engine.instruments.underlyings))
    load_before = os.getloadavg()
    t, c = time.perf_counter(), cpu_s()
    engine.apply_risk_params(version)          # model build + full recalculation + first publication of all
    first_s, first_cpu = time.perf_counter() - t, cpu_s() - c
    # Steady state (nothing changed, nothing published) against the C core's compute alone (without the
    # charges the service adds around it), interleaved five times, medians: one pair is at the mercy of
    # whatever else takes a CPU at that moment.
    f = engine.flat
    raw_core = getattr(engine.model.core, "core", engine.model.core)
    full_runs, core_runs = [], []
    for _ in range(5):
        t = time.perf_counter()
        engine.full_recalculation()
        full_runs.append(time.perf_counter() - t)
        t = time.perf_counter()
        raw_core.compute(f.indptr, f.instrument, f.size, f.isolated, n_threads=2)
        core_runs.append(time.perf_counter() - t)
    full_s, core_s = float(np.median(full_runs)), float(np.median(core_runs))
    t = time.perf_counter()
    engine.evaluate()
    eval_s = time.perf_counter() - t
    del books
    configure_runtime()     # as the service's main does after its start
    rss_loaded = rss_mib()
    positions = engine.n_positions()
    counts = engine.last_counts
    print(f"core: {core.IMPLEMENTATION}; accounts {len(engine.row_of):,}, positions {positions:,}, "
          f"instruments {engine.instruments.n}, scenarios {engine.model.scenarios.price_shock.shape[0]}")
    print(f"states: healthy {counts.get(1, 0):,}, margin call {counts.get(2, 0):,}, liquidation {counts.get(3, 0):,}, "
          f"bankrupt {counts.get(4, 0):,}")
    print(f"generate books {gen_s:.2f} s, load into engine {load_s:.2f} s")
    print(f"load average at start {' '.join(f'{x:.2f}' for x in load_before)}")
    print(f"new version: model build + full recalculation + {len(engine.row_of):,} states built {first_s * 1e3:.0f} ms "
          f"(process CPU {first_cpu * 1e3:.0f} ms)")
    print(f"full recalculation, steady state: {full_s * 1e3:.0f} ms (core compute alone {core_s * 1e3:.0f} ms); "
          f"equity/state evaluation on marks {eval_s * 1e3:.0f} ms")
    print(f"RATIO service full recalculation / core compute: {full_s / core_s:.2f}× (target ≤ 1.5×)")
    print(f"RSS: {rss0:.0f} MiB before the service, {rss_app:.0f} MiB service started empty, "
          f"{rss_loaded:.0f} MiB loaded ({rss_loaded - rss_app:.0f} MiB for the accounts, "
          f"{(rss_loaded - rss_app) * 2**20 / positions:.0f} B/position); target ≤ 1024 MiB: "
          f"{'met' if rss_loaded <= 1024 else 'NOT met'}")

    # in-process baseline
    rng = np.random.default_rng(2)
    ids = engine.account_ids()
    sample = [ids[int(i)] for i in rng.integers(len(ids), size=2000)]
    lat_get, lat_wi, lat_ex = [], [], []
    for i, a in enumerate(sample):
        t = time.perf_counter()
        engine.get_margin(a)
        lat_get.append(time.perf_counter() - t)
        t = time.perf_counter()
        engine.what_if(a, [TradeDelta(int(rng.integers(engine.instruments.n)), 0.5)])
        lat_wi.append(time.perf_counter() - t)
        t = time.perf_counter()
        engine.explain(a)
        lat_ex.append(time.perf_counter() - t)
    base_get, base_wi, base_ex = percentiles(lat_get), percentiles(lat_wi), percentiles(lat_ex)
    print(f"in-process baseline: GetMargin p50 {base_get[0]:.3f} ms p99 {base_get[1]:.3f} ms; "
          f"WhatIf p50 {base_wi[0]:.3f} ms p99 {base_wi[1]:.3f} ms; Explain p50 {base_ex[0]:.3f} ms "
          f"p99 {base_ex[1]:.3f} ms")

    instruments = list(engine.instruments.symbols)
    # Client baseline: the same client against an echo MarginService in this process (same server
    # factory and worker count, canned responses of the real size): what gRPC + the client cost alone.
    # The echo, the idle service and the service re-evaluating on marks are measured in alternating
    # blocks (the order rotated each round), so that whatever else the host runs meanwhile falls on all
    # three alike; each phase's figures pool its blocks.
    echo_server, echo_port, echo_health = echo_service(engine, sample[0])
    loader = LoadClient(sample, instruments)
    marks = MarksLoop(engine)
    phases = (("echo", echo_port), ("idle", app.grpc_port), ("marks", app.grpc_port))
    pooled = {name: Pooled() for name, _port in phases}
    block_s = args.seconds / args.rounds
    for r in range(args.rounds):
        for name, port in phases[r % 3:] + phases[:r % 3]:
            if name == "marks":
                marks.start()
            c = cpu_s()
            res = loader.run(port, args.rate, block_s)
            cpu = cpu_s() - c
            if name == "marks":
                marks.stop()
            pooled[name].add(res, cpu)
    # Explain (a costlier read), echo and idle service alternating, at a fifth of the rate
    explain_rate = args.rate / 5
    pooled_ex = {"echo": Pooled(), "idle": Pooled()}
    for r in range(args.rounds):
        for name, port in ((("echo", echo_port), ("idle", app.grpc_port)) if r % 2 == 0 else
                           (("idle", app.grpc_port), ("echo", echo_port))):
            c = cpu_s()
            res = loader.run(port, explain_rate, block_s / 2, ("Explain",))
            pooled_ex[name].add(res, cpu_s() - c)
    loader.close()
    grpcserver.stop(echo_server, echo_health, 1.0)

    blocks = f"{args.rounds} blocks of {block_s:.1f} s, interleaved"
    e = pooled["echo"]
    echo = {m: percentiles(e.results[m]) for m in METHODS}
    print(f"echo server (client + gRPC alone) at {args.rate:.0f} req/s, {blocks}: achieved {e.rps:.0f} req/s, "
          f"errors {e.errors}; server process CPU {e.cpu_us:.0f} µs/request")
    for method in METHODS:
        p50, p99, mx = echo[method]
        print(f"  {method}: p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {mx:.1f} ms")
    for phase in ("idle", "marks"):
        got = pooled[phase]
        if phase == "idle":
            label, what = "idle service", ""
        else:
            label = (f"while re-evaluating all {len(engine.row_of):,} accounts on marks every 250 ms: "
                     f"{marks.count} evaluations, median {marks.median_ms():.0f} ms")
            what = ", the evaluations included"
        print(f"gRPC at {args.rate:.0f} req/s, {blocks} ({label}): achieved {got.rps:.0f} req/s, "
              f"errors {got.errors}; server process CPU {got.cpu_us:.0f} µs/request{what} "
              f"(echo {e.cpu_us:.0f}); load average {os.getloadavg()[0]:.2f}")
        print(f"  RATIO server CPU per request / echo's ({phase}): {got.cpu_us / e.cpu_us:.2f}×")
        for method, base in (("GetMargin", base_get), ("WhatIf", base_wi)):
            p50, p99, mx = percentiles(got.results[method])
            print(f"  {method}: n={len(got.results[method])}, p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {mx:.1f} ms; "
                  f"p99 {p99 / base[1]:.1f}× in-process, RATIO {p99 / echo[method][1]:.2f}× echo (target ≤ 1.5×); "
                  f"target p99 ≤ 5 ms: {'met' if p99 <= 5 else 'NOT met'}")
    ex, echo_ex_p = pooled_ex["idle"], pooled_ex["echo"]
    echo_ex = percentiles(echo_ex_p.results["Explain"])
    p50, p99, mx = percentiles(ex.results["Explain"])
    print(f"gRPC Explain at {explain_rate:.0f} req/s, {args.rounds} blocks of {block_s / 2:.1f} s (idle service): "
          f"achieved {ex.rps:.0f} req/s, errors {ex.errors} (echo {echo_ex_p.errors}); server process CPU "
          f"{ex.cpu_us:.0f} µs/request (echo {echo_ex_p.cpu_us:.0f}, RATIO {ex.cpu_us / echo_ex_p.cpu_us:.2f}×); "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"  Explain: n={len(ex.results['Explain'])}, p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {mx:.1f} ms "
          f"(echo p50 {echo_ex[0]:.2f} ms, p99 {echo_ex[1]:.2f} ms); p99 {p99 / base_ex[1]:.1f}× in-process, "
          f"RATIO {p99 / echo_ex[1]:.2f}× echo")
    print(f"RSS after load: {rss_mib():.0f} MiB; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    app.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
