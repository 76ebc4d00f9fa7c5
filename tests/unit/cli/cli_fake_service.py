"""A stand-in service for the supervisor's readiness tests: gRPC health on $FAKE_GRPC_PORT, until SIGTERM.
With $FAKE_EXIT set it prints $FAKE_MESSAGE and exits with that code instead."""

from __future__ import annotations

import os
import signal
import sys
import threading

if os.environ.get("FAKE_EXIT"):
    print(os.environ.get("FAKE_MESSAGE", ""), flush=True)
    sys.exit(int(os.environ["FAKE_EXIT"]))

from marginflow.shared import grpcserver

stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
server, _port, health = grpcserver.build_server("fake", int(os.environ["FAKE_GRPC_PORT"]), [])
print("fake service serving", flush=True)
stop.wait()
grpcserver.stop(server, health, 0.5)
