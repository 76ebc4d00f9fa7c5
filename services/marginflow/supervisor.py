"""One supervisor for the platform's services: ``python -m marginflow.supervisor``.

Starts every service as its own process (logs in ``$MF_LOG_DIR/<service>.log``, pid files in
``$MF_RUN_DIR/services/``), reports each one as it becomes ready (its gRPC health check answers
SERVING) or names it and its log when it fails to start, restarts a service that dies with a
growing back-off, runs one-shot jobs (the demo book) once, and on SIGTERM/SIGINT stops them all:
SIGTERM, a grace period, then SIGKILL. ``make stop`` stops it by its pid file; nothing it started
is left behind.

``PROGRAMS`` is the one table of the platform's ports: docker-compose.yml, both Prometheus
configs, the README and the ``marginflow`` CLI agree with it (tests/unit/shared/test_shared_deploy.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import pathlib
import signal
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent


@dataclasses.dataclass(frozen=True)
class Program:
    name: str
    module: str
    args: tuple[str, ...] = ()
    one_shot: bool = False
    grpc_port_var: str = ""
    grpc_port: int = 0
    metrics_port_var: str = ""
    metrics_port: int = 0
    start_delay_s: float = 0.0


# Start order = data flow order. A program whose module is not part of this build is skipped.
PROGRAMS = (
    Program("marketdata", "marginflow.marketdata", grpc_port_var="MF_MARKETDATA_GRPC_PORT", grpc_port=50051,
            metrics_port_var="MF_MARKETDATA_METRICS_PORT", metrics_port=9101),
    Program("riskparams", "marginflow.riskparams", grpc_port_var="MF_RISKPARAMS_GRPC_PORT", grpc_port=50052,
            metrics_port_var="MF_RISKPARAMS_METRICS_PORT", metrics_port=9102),
    Program("portfolio", "marginflow.portfolio", grpc_port_var="MF_PORTFOLIO_GRPC_PORT", grpc_port=50053,
            metrics_port_var="MF_PORTFOLIO_METRICS_PORT", metrics_port=9103),
    Program("margin", "marginflow.margin", grpc_port_var="MF_MARGIN_GRPC_PORT", grpc_port=50054,
            metrics_port_var="MF_MARGIN_METRICS_PORT", metrics_port=9104),
    Program("liquidation", "marginflow.liquidation", grpc_port_var="MF_LIQUIDATION_GRPC_PORT", grpc_port=50055,
            metrics_port_var="MF_LIQUIDATION_METRICS_PORT", metrics_port=9105),
    Program("exchange-sim", "marginflow.exchange_sim"),
    Program("demo-book", "marginflow.portfolio.demo_book", one_shot=True, start_delay_s=3.0),
)


# A live simulator run has minutes, not years, of history: sample returns every minute and keep
# the RiskMetrics decays (0.94 / 0.97 per day) as half-lives. Values the user set win.
LIVE_DEFAULTS = {
    "MF_RISKPARAMS_SAMPLE_INTERVAL_MS": "60000",
    "MF_RISKPARAMS_HALF_LIFE_FAST_SECONDS": "967879",    # ln 0.5 / ln 0.94 days
    "MF_RISKPARAMS_HALF_LIFE_SLOW_SECONDS": "1968066",   # ln 0.5 / ln 0.97 days
}


# Services that call another over gRPC, and the setting that holds its address.
PEERS = {"MF_LIQUIDATION_MARGIN_ADDRESS": "margin", "MF_LIQUIDATION_PORTFOLIO_ADDRESS": "portfolio",
         "MF_PORTFOLIO_MARGIN_ADDRESS": "margin"}


def peer_addresses(env: dict[str, str]) -> dict[str, str]:
    """The peers' addresses from the program table (and the ports the user moved), unless set."""
    ports = {p.name: env.get(p.grpc_port_var, str(p.grpc_port)) for p in PROGRAMS if p.grpc_port_var}
    host = env.get("MF_BIND_HOST", "127.0.0.1")
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return {var: f"{host}:{ports[name]}" for var, name in PEERS.items() if not env.get(var) and name in ports}


def available(program: Program) -> bool:
    """A program runs when its module exists and, for a package, it has a ``__main__`` (a service whose
    pure domain is there but not yet its wiring is not started)."""
    try:
        spec = importlib.util.find_spec(program.module)
        if spec is None:
            return False
        if spec.submodule_search_locations is not None:
            return importlib.util.find_spec(program.module + ".__main__") is not None
        return True
    except ModuleNotFoundError:
        return False


@dataclasses.dataclass
class Child:
    program: Program
    proc: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0
    done: bool = False
    started_at: float = 0.0
    ready: bool = False
    next_check: float = 0.0
    warned_slow: bool = False


class Supervisor:
    def __init__(self, programs: list[Program], run_dir: pathlib.Path, log_dir: pathlib.Path,
                 env: dict[str, str], grace_s: float = 15.0) -> None:
        self.children = [Child(p, next_start=time.monotonic() + p.start_delay_s) for p in programs]
        self.run_dir = run_dir
        self.pid_dir = run_dir / "services"
        self.log_dir = log_dir
        self.env = env
        self.grace_s = grace_s
        self.stopping = False
        self.host = connect_host(env)
        self.ready_timeout_s = float(env.get("MF_SUPERVISOR_READY_TIMEOUT_SECONDS", "120"))
        self.announced_all_ready = False

    def log_path(self, program: Program) -> pathlib.Path:
        return self.log_dir / f"{program.name}.log"

    def grpc_port(self, program: Program) -> int:
        return int(self.env.get(program.grpc_port_var) or program.grpc_port)

    def _start(self, child: Child) -> None:
        p = child.program
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path(p), "ab")
        # Own process group: a Ctrl-C on `make run` reaches the supervisor, which stops children in order.
        child.proc = subprocess.Popen([sys.executable, "-m", p.module, *p.args], stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=credentials_env(self.env, p.name),
                                      start_new_session=True)
        log.close()
        (self.pid_dir / f"{p.name}.pid").write_text(str(child.proc.pid))
        child.started_at = time.monotonic()
        child.ready = False
        child.next_check = child.started_at + 0.2
        child.warned_slow = False
        waiting = ", waiting for it to be ready" if p.grpc_port_var else ""
        print(f"[supervisor] started {p.name} (pid {child.proc.pid}){waiting}", flush=True)

    def _check_ready(self, child: Child, now: float) -> None:
        """Ask the child's gRPC health service; report it once it answers SERVING."""
        p = child.program
        if not p.grpc_port_var or child.ready or now < child.next_check:
            return
        child.next_check = now + 0.5
        port = self.grpc_port(p)
        if health_status(self.host, port, timeout_s=0.3, environ=self.env) == "SERVING":
            child.ready = True
            print(f"[supervisor] {p.name} ready: gRPC {self.host}:{port} serving after {now - child.started_at:.1f} s",
                  flush=True)
            return
        if not child.warned_slow and now - child.started_at > self.ready_timeout_s:
            child.warned_slow = True
            print(f"[supervisor] {p.name} is not ready after {self.ready_timeout_s:.0f} s (gRPC {self.host}:{port}); "
                  f"see {self.log_path(p)}", flush=True)

    def _announce_all_ready(self) -> None:
        served = [c for c in self.children if c.program.grpc_port_var and not c.done]
        if self.announced_all_ready or not served or not all(c.ready for c in served):
            return
        self.announced_all_ready = True
        print(f"[supervisor] all {len(served)} services ready ({', '.join(c.program.name for c in served)}); "
              f"watch them with: {cli_command()} status", flush=True)

    def _report_failure(self, child: Child, rc: int) -> None:
        """A child died before it was ready: name it, its exit code, its log and the log's last lines."""
        log = self.log_path(child.program)
        print(f"[supervisor] {child.program.name} failed to start (exit code {rc}); its log: {log}", flush=True)
        for line in tail(log, 5):
            print(f"[supervisor]   | {line}", flush=True)

    def poll(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.done:
                continue
            if child.proc is None:
                if now >= child.next_start:
                    self._start(child)
                continue
            rc = child.proc.poll()
            if rc is None:
                self._check_ready(child, now)
                continue
            (self.pid_dir / f"{child.program.name}.pid").unlink(missing_ok=True)
            child.proc = None
            was_ready = child.ready
            child.ready = False
            if child.program.grpc_port_var and not was_ready:
                self._report_failure(child, rc)
            if child.program.one_shot and rc == 0:
                child.done = True
                print(f"[supervisor] {child.program.name} finished", flush=True)
                continue
            if rc == 2:
                # Exit code 2 = bad configuration: restarting would fail the same way.
                child.done = True
                print(f"[supervisor] {child.program.name} exited with a configuration error; see its log", flush=True)
                continue
            child.restarts += 1
            delay = min(30.0, 2.0 ** min(child.restarts, 5))
            child.next_start = now + delay
            print(f"[supervisor] {child.program.name} exited with {rc}; restart {child.restarts} in {delay:.0f}s",
                  flush=True)
        self._announce_all_ready()

    def stop(self) -> None:
        running = [c for c in self.children if c.proc is not None and c.proc.poll() is None]
        for child in reversed(running):   # the reverse of the data flow: consumers first
            child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        for child in running:
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"[supervisor] {child.program.name} ignored SIGTERM; killing", flush=True)
                child.proc.kill()
                child.proc.wait()
            (self.pid_dir / f"{child.program.name}.pid").unlink(missing_ok=True)
        print("[supervisor] all services stopped", flush=True)

    def run(self) -> None:
        def on_signal(signum: int, _frame: object) -> None:
            self.stopping = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        try:
            while not self.stopping:
                self.poll()
                time.sleep(0.2)
        finally:
            self.stop()


def connect_host(env: dict[str, str]) -> str:
    """Where a local client reaches the services: MF_BIND_HOST, loopback for a wildcard address."""
    host = env.get("MF_BIND_HOST", "127.0.0.1")
    return "127.0.0.1" if host in ("", "0.0.0.0", "::", "[::]") else host


def credentials_env(env: dict[str, str], name: str) -> dict[str, str]:
    """The program's own Kafka and Redis users when the stack runs with them (pki.sh's password files
    in MF_KAFKA_SASL_USERS_DIR / MF_REDIS_USERS_DIR): each service logs in as itself."""
    env = dict(env)
    kafka_dir = env.get("MF_KAFKA_SASL_USERS_DIR", "")
    if kafka_dir and (pathlib.Path(kafka_dir) / f"kafka-pass.{name}").is_file():
        env.update(MF_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT", MF_KAFKA_SASL_USERNAME=name,
                   MF_KAFKA_SASL_PASSWORD_FILE=str(pathlib.Path(kafka_dir) / f"kafka-pass.{name}"))
    redis_dir = env.get("MF_REDIS_USERS_DIR", "")
    redis_user = "portfolio" if name == "demo-book" else name
    if redis_dir and (pathlib.Path(redis_dir) / f"redis-pass.{redis_user}").is_file():
        env.update(MF_REDIS_USERNAME=redis_user,
                   MF_REDIS_PASSWORD_FILE=str(pathlib.Path(redis_dir) / f"redis-pass.{redis_user}"))
    return env


def health_status(host: str, port: int, timeout_s: float, environ: dict[str, str] | None = None) -> str:
    """The gRPC health status of the server at host:port ("SERVING", ...), "DOWN" when it does not answer."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from marginflow.shared.security import client_settings, client_channel

    with client_channel(f"{host}:{port}", client_settings(environ), token="") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""),
                                                              timeout=timeout_s)
        except grpc.RpcError:
            return "DOWN"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def cli_command() -> str:
    """How to run the ``marginflow`` CLI of this environment (the venv's console script)."""
    script = pathlib.Path(sys.executable).parent / "marginflow"
    try:
        return str(script.relative_to(pathlib.Path.cwd()))
    except ValueError:
        return str(script)


def tail(path: pathlib.Path, lines: int) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


def banner(programs: list[Program], env: dict[str, str], log_dir: pathlib.Path) -> str:
    lines = ["", "marginflow is starting. Where to look:",
             f"  Kafka        {env.get('KAFKA_BOOTSTRAP_SERVERS', '127.0.0.1:19092')}   "
             f"(topics: md.ticks md.marks risk.params trades.fills portfolio.positions margin.state ...)",
             f"  Redis        {env.get('REDIS_URL', 'redis://127.0.0.1:16379/0')}"]
    host = connect_host(env)
    for p in programs:
        if p.grpc_port_var:
            grpc_port = env.get(p.grpc_port_var, str(p.grpc_port))
            metrics_port = env.get(p.metrics_port_var, str(p.metrics_port))
            lines.append(f"  {p.name:<12} gRPC {host}:{grpc_port}   metrics http://{host}:{metrics_port}/metrics")
    if env.get("MF_PROMETHEUS_URL"):
        lines.append(f"  prometheus   {env['MF_PROMETHEUS_URL']}   (alerts: {env['MF_PROMETHEUS_URL']}/alerts)")
    if env.get("MF_ALERTMANAGER_URL"):
        lines.append(f"  alertmanager {env['MF_ALERTMANAGER_URL']}")
    lines += [f"  logs         {log_dir}/<service>.log   (tail -f {log_dir}/marketdata.log)",
              f"  try          {cli_command()} status   (also: params, marks, account list, margin get ACCOUNT)",
              "  stop         Ctrl-C here, or 'make stop' from another terminal", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from marginflow.marketdata.settings import add_source_options, source_env

    parser = argparse.ArgumentParser(prog="marginflow.supervisor", description=__doc__)
    add_source_options(parser)
    parser.add_argument("--only", help="comma-separated services to run (default: all available)")
    args = parser.parse_args(argv)
    env = {**os.environ, **source_env(args)}
    if not args.replay:
        for key, value in LIVE_DEFAULTS.items():
            env.setdefault(key, value)
    env.update(peer_addresses(env))
    run_dir = pathlib.Path(env.get("MF_RUN_DIR", ROOT / ".run"))
    log_dir = pathlib.Path(env.get("MF_LOG_DIR", run_dir / "logs"))
    wanted = set(args.only.split(",")) if args.only else None
    programs = [p for p in PROGRAMS if available(p) and (wanted is None or p.name in wanted)]
    if wanted:
        unknown = wanted - {p.name for p in PROGRAMS}
        if unknown:
            parser.error(f"unknown services: {', '.join(sorted(unknown))}")
    run_dir.mkdir(parents=True, exist_ok=True)
    pid_file = run_dir / "supervisor.pid"
    pid_file.write_text(str(os.getpid()))
    print(banner(programs, env, log_dir), flush=True)
    try:
        Supervisor(programs, run_dir, log_dir, env).run()
    finally:
        pid_file.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
