"""Helpers of the CLI's integration tests (a module name of its own: test dirs have no packages)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import uuid

from marginflow.supervisor import PROGRAMS

ADMIN_TOKEN = "cli-test-admin-token"
DEMO_ACCOUNTS = 24


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Platform:
    def __init__(self, env: dict[str, str], run_dir, proc: subprocess.Popen) -> None:
        self.env = env
        self.run_dir = run_dir
        self.proc = proc
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def port_env(self) -> dict[str, str]:
        """The port variables of every served program (as a shell that started the platform has them)."""
        return {k: v for k, v in self.env.items() if k.endswith(("_GRPC_PORT", "_METRICS_PORT"))}

    def wait_output(self, text: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.output:
            if self.proc.poll() is not None:
                raise AssertionError(f"supervisor exited ({self.proc.returncode}):\n{self.output[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not printed within {timeout_s}s:\n{self.output[-4000:]}")
            time.sleep(0.1)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(10)
        return self.output


def platform_env(kafka_bootstrap: str, redis_url: str, run_dir) -> dict[str, str]:
    prefix = f"t{uuid.uuid4().hex[:10]}."
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "REDIS_URL": redis_url,
           "MF_TOPIC_PREFIX": prefix, "MF_TOPIC_PARTITIONS": "2", "MF_LOG_JSON": "true",
           "MF_SHUTDOWN_GRACE_SECONDS": "1", "MF_RUN_DIR": str(run_dir), "MF_LOG_DIR": str(run_dir / "logs"),
           "MF_PORTFOLIO_REDIS_PREFIX": f"{prefix}pf:", "MF_RISKPARAMS_APP_ID": f"{prefix}rp",
           "MF_ADMIN_TOKEN": ADMIN_TOKEN, "MF_DEMO_ACCOUNTS": str(DEMO_ACCOUNTS),
           "MF_BIND_HOST": "127.0.0.1"}
    for program in PROGRAMS:
        if program.grpc_port_var:
            env[program.grpc_port_var] = str(free_port())
            env[program.metrics_port_var] = str(free_port())
    return env


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def json(self):
        import json

        return json.loads(self.out)

    def __repr__(self) -> str:
        return f"Result(code={self.code}, out={self.out[-2000:]!r}, err={self.err!r})"
