"""Orderly shutdown: SIGTERM/SIGINT set one event; the service then runs its stop steps in order.

The order the platform follows (dYdX-style): stop consuming → commit offsets → stop serving gRPC
with grace → flush producers → close clients. A service registers steps in that order with
:meth:`Lifecycle.on_stop`; :meth:`Lifecycle.shutdown` runs each once, logging and continuing past
a failing step so that the later ones (flush, close) still run.
"""

from __future__ import annotations

import gc
import signal
import threading
from collections.abc import Callable

from marginflow.shared.logs import get_logger

log = get_logger(__name__)


class Lifecycle:
    def __init__(self) -> None:
        self.stopping = threading.Event()
        self._steps: list[tuple[str, Callable[[], object]]] = []
        self._done = False
        self._lock = threading.Lock()

    def install_signal_handlers(self) -> None:
        """Route SIGTERM and SIGINT to :attr:`stopping` (call from the main thread)."""
        def handler(signum: int, _frame: object) -> None:
            log.info("signal received, stopping", extra={"signal": signal.Signals(signum).name})
            self.stopping.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def on_stop(self, name: str, step: Callable[[], object]) -> None:
        self._steps.append((name, step))

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a stop is requested (or ``timeout``); True when stopping."""
        return self.stopping.wait(timeout)

    def shutdown(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        self.stopping.set()
        for name, step in self._steps:
            try:
                step()
                log.info("stopped", extra={"step": name})
            except Exception:  # noqa: BLE001 - a failing step must not skip flush/close
                log.exception("stop step failed", extra={"step": name})


def run_steps(steps: list[Callable[[], object]], what: str = "close step") -> None:
    """Run every step; a failing one is logged and the later ones (flush, close) still run."""
    for step in steps:
        try:
            step()
        except Exception:  # noqa: BLE001 - later steps still run
            log.warning(f"{what} failed", exc_info=True)


def loop_in_thread(run: Callable[[threading.Event], object], name: str) -> tuple[threading.Thread, threading.Event]:
    """Start ``run(stopping)`` in a daemon thread; set the returned event to end it."""
    stopping = threading.Event()
    thread = threading.Thread(target=run, args=(stopping,), name=name, daemon=True)
    thread.start()
    return thread, stopping


def tune_gc(gen0_threshold: int) -> None:
    """For a long-running service once its start-up state is built: collect, move what exists to
    the permanent generation (never scanned again), and collect the young generation less often.
    Python's default (700) made young collections a fifth of the portfolio's apply loop."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, gen1, gen2)
