"""Processes the harness starts and hurts: its own Kafka and Redis (through the project's
deploy/local scripts, on its own ports and data directory), the supervisor, and signals to services.

Only what this harness started is touched: the stack scripts act on pid files under the harness's own
``MF_RUN_DIR``, services are signalled by the pid files its supervisor wrote there, and the default
ports of the shared stack are refused outright.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[4]
SCRIPTS = ROOT / "deploy" / "local"
SHARED_PORTS = {19092, 19093, 16379}      # the shared stack's: never ours


_taken: set[int] = set()


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range (32768+ on Linux), so that no outgoing
    connection of another process takes it between now and the moment our server binds it; never
    one handed out before in this run, never one of the shared stack's."""
    import random

    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(20000, 32000)
        if port in _taken or port in SHARED_PORTS:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _taken.add(port)
        return port
    raise RuntimeError("no free port in 20000-32000")


class Stack:
    """Kafka and Redis of this run (deploy/local/kafka.sh and redis.sh with our settings)."""

    def __init__(self, run_dir: pathlib.Path, kafka_port: int, controller_port: int, redis_port: int,
                 log) -> None:
        if {kafka_port, controller_port, redis_port} & SHARED_PORTS:
            raise ValueError("the chaos harness never runs on the shared stack's ports")
        self.run_dir = run_dir
        self.kafka_port, self.redis_port = kafka_port, redis_port
        self.env = {**os.environ, "MF_RUN_DIR": str(run_dir), "MF_LOG_DIR": str(run_dir / "logs"),
                    "KAFKA_PORT": str(kafka_port), "KAFKA_CONTROLLER_PORT": str(controller_port),
                    "KAFKA_DATA_DIR": str(run_dir / "kafka-data"), "REDIS_PORT": str(redis_port),
                    "KAFKA_HEAP_MB": os.environ.get("KAFKA_HEAP_MB", "512")}
        for var in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL"):
            self.env.pop(var, None)
        self.log = log

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def _script(self, name: str, action: str, timeout_s: float) -> None:
        out = subprocess.run([str(SCRIPTS / name), action], env=self.env, capture_output=True, text=True,
                             timeout=timeout_s)
        if out.returncode != 0:
            raise RuntimeError(f"{name} {action} failed ({out.returncode}): {out.stderr[-2000:]}")

    def kafka(self, action: str) -> None:
        self._script("kafka.sh", action, 180)

    def redis(self, action: str) -> None:
        self._script("redis.sh", action, 60)

    def up(self) -> None:
        self.kafka("start")
        self.redis("start")

    def down(self) -> None:
        for name, action in (("redis.sh", "stop"), ("kafka.sh", "stop")):
            try:
                self._script(name, action, 60)
            except Exception as exc:  # noqa: BLE001 - best effort at the end; reported
                self.log(f"{name} stop: {exc}")


class SupervisedPlatform:
    """The supervisor (``python -m marginflow.supervisor --only …``) and signals to its services."""

    def __init__(self, run_dir: pathlib.Path, env: dict[str, str], services: list[str]) -> None:
        self.run_dir = run_dir
        self.env = env
        self.services = services
        self.proc: subprocess.Popen | None = None
        self.stopped: set[int] = set()       # pids we SIGSTOPped and not yet continued

    def start(self) -> None:
        log = open(self.run_dir / "logs" / "supervisor.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "marginflow.supervisor", "--only", ",".join(self.services)],
                                     env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pid(self, service: str) -> int | None:
        try:
            return int((self.run_dir / "services" / f"{service}.pid").read_text())
        except (OSError, ValueError):
            return None

    def signal(self, service: str, sig: int) -> int:
        pid = self.pid(service)
        if pid is None:
            raise RuntimeError(f"{service} has no pid file: not running")
        os.kill(pid, sig)
        if sig == signal.SIGSTOP:
            self.stopped.add(pid)
        elif sig in (signal.SIGCONT, signal.SIGKILL):
            self.stopped.discard(pid)
        return pid

    def stop(self, grace_s: float = 40.0) -> None:
        for pid in list(self.stopped):        # a stopped process cannot act on SIGTERM
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.stopped.clear()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # whatever a dead supervisor left behind, by the pid files it wrote in our run directory
        for f in (self.run_dir / "services").glob("*.pid"):
            try:
                pid = int(f.read_text())
                os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError):
                pass
            f.unlink(missing_ok=True)
