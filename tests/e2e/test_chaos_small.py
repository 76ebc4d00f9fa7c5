"""The small chaos run: its own Kafka and Redis (started by the harness through deploy/local, on free
ports and a temporary data directory), the platform under the supervisor — the liquidation service and
the exchange simulator included when they are part of the build — 1,000 demo accounts and a fill
generator; one kill -9 per service and one Redis flush; zero violations."""

from __future__ import annotations

import os
import subprocess
import sys

from marginflow.supervisor import PROGRAMS, available

SMALL_ACCOUNTS = 1000
SMALL_RATE = 200          # fills/s: the full run's 1,000 is `make chaos`
# The harness's own budget: every wait inside it has a deadline, and a spent budget fails the run. Generous,
# because the machine running `make test` may be shared: the run takes ~3 min on a quiet 2-core machine.
BUDGET_S = 600


def test_chaos_small_has_no_violations(tmp_path):
    report = tmp_path / "chaos.md"
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL")}
    proc = subprocess.run(
        [sys.executable, "-m", "marginflow.chaos", "--small", "--accounts", str(SMALL_ACCOUNTS), "--rate",
         str(SMALL_RATE), "--seconds", str(BUDGET_S), "--steady-seconds", "3", "--report", str(report),
         "--run-dir", str(tmp_path / "run")],
        env=env, capture_output=True, text=True, timeout=BUDGET_S + 120)
    text = report.read_text() if report.exists() else ""
    assert proc.returncode == 0, f"{text}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| fault")]
    faults = [r.split("|")[1].strip() for r in rows]
    assert faults[0].startswith("start")
    killed = {f"kill -9 {p.name}" for p in PROGRAMS if not p.one_shot and available(p)}
    assert {"kill -9 marketdata", "kill -9 riskparams", "kill -9 portfolio", "kill -9 margin"} <= killed
    assert killed | {"FLUSHALL Redis"} <= set(faults)
    assert all(r.rstrip(" |").endswith("ok") for r in rows), text
    if "kill -9 liquidation" in faults:
        # the demo book starts a few liquidation episodes: the rule judged their starts at their own inputs (a
        # rule that silently judges nothing would pass every row); "episodes started (judged)" is "N (M)"
        judged = [int(r.split("|")[11].split("(")[1].rstrip(") ").replace(",", "")) for r in rows]
        assert sum(judged) > 0, text
    # the table went to the terminal too
    assert "fault" in proc.stdout and "RUN FAILED" not in proc.stderr
    # nothing the harness started is left: no pid file of a service, Kafka or Redis in its run directory
    run = tmp_path / "run"
    assert not list((run / "services").glob("*.pid")) if (run / "services").exists() else True
    assert not (run / "kafka.pid").exists() and not (run / "redis.pid").exists()
