"""Orderly shutdown and the supervisor's process handling."""

from __future__ import annotations

import os
import time

from marginflow.shared.lifecycle import Lifecycle
from marginflow.supervisor import Program, Supervisor


def test_stop_steps_run_once_in_order_even_when_one_fails():
    order = []
    life = Lifecycle()
    life.on_stop("consume", lambda: order.append("consume"))
    life.on_stop("grpc", lambda: 1 / 0)
    life.on_stop("flush", lambda: order.append("flush"))
    life.shutdown()
    life.shutdown()
    assert order == ["consume", "flush"]
    assert life.stopping.is_set()


def test_supervisor_restarts_crashes_finishes_one_shots_and_stops_everything(tmp_path):
    programs = [
        Program("sleeper", "timeit", ("-n1", "-r1", "import time; time.sleep(60)")),
        Program("crasher", "timeit", ("-n1", "-r1", "import sys; sys.exit('boom')")),
        Program("job", "timeit", ("-n1", "-r1", "pass"), one_shot=True),
    ]
    sup = Supervisor(programs, tmp_path, tmp_path / "logs", dict(os.environ), grace_s=5)
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        sup.poll()
        crasher = sup.children[1]
        if crasher.restarts >= 1 and sup.children[2].done:
            break
        time.sleep(0.05)
    sleeper = sup.children[0]
    assert sleeper.proc is not None and sleeper.proc.poll() is None
    assert sup.children[1].restarts >= 1
    assert sup.children[2].done
    pid = sleeper.proc.pid
    assert (tmp_path / "services" / "sleeper.pid").read_text() == str(pid)
    sup.stop()
    assert sleeper.proc.poll() is not None
    assert not (tmp_path / "services" / "sleeper.pid").exists()
    assert (tmp_path / "logs" / "crasher.log").read_text()   # its error went to its log
