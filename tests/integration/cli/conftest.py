"""The platform under its supervisor, for the CLI's tests: real processes, real gRPC, real Kafka/Redis.

One platform per test session, started by the first test that needs it: marketdata on the simulator, riskparams,
portfolio, margin (and liquidation once it is part of the build) on free ports, a small demo book,
its own topic prefix, Redis namespace, run directory and consumer groups. ``run_cli`` runs the
``marginflow`` command in-process against it.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from cli_it_helpers import ADMIN_TOKEN, Platform, Result, platform_env
from redis_namespace import clear_namespace


@pytest.fixture(scope="session")
def platform(kafka_bootstrap, redis_url, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("platform")
    env = platform_env(kafka_bootstrap, redis_url, run_dir)
    proc = subprocess.Popen([sys.executable, "-m", "marginflow.supervisor",
                             "--only", "marketdata,riskparams,portfolio,margin,liquidation,demo-book"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    running = Platform(env, run_dir, proc)
    try:
        running.wait_output("services ready", timeout_s=180)
        yield running
    finally:
        running.stop()
        from marginflow.shared.kafka import delete_topics
        from marginflow.shared.config import CommonSettings, load

        common = load(CommonSettings, env)
        try:
            from kafka import KafkaAdminClient

            admin = KafkaAdminClient(bootstrap_servers=common.bootstrap)
            mine = [t for t in admin.list_topics() if t.startswith(common.topic_prefix)]
            admin.close()
            delete_topics(common.bootstrap, mine)
        except Exception:   # cleanup only; a broker hiccup must not fail the tests
            pass
        clear_namespace(redis_url, env["MF_PORTFOLIO_REDIS_PREFIX"])


@pytest.fixture
def run_cli(platform, monkeypatch, capsys):
    """``run_cli("margin", "get", "a1", env={...})`` → Result(exit code, stdout, stderr)."""
    from marginflow.cli import main

    def run(*argv: str, env: dict[str, str] | None = None) -> Result:
        with monkeypatch.context() as m:
            for key, value in {**platform.port_env(), "MF_ADMIN_TOKEN": ADMIN_TOKEN, "MF_BIND_HOST": "127.0.0.1",
                               "KAFKA_BOOTSTRAP_SERVERS": platform.env["KAFKA_BOOTSTRAP_SERVERS"],
                               "MF_TOPIC_PREFIX": platform.env["MF_TOPIC_PREFIX"], **(env or {})}.items():
                if value is None:
                    m.delenv(key, raising=False)
                else:
                    m.setenv(key, value)
            capsys.readouterr()
            try:
                main(list(argv))
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run
