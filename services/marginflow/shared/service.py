"""One way every service starts: settings parsed once, logs, signals, then the service's own wiring.

A bad setting stops the process with exit code 2 and a message naming the variable.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from marginflow.shared.config import ConfigError, load
from marginflow.shared.lifecycle import Lifecycle
from marginflow.shared.kafka import use_security
from marginflow.shared.logs import get_logger, setup_logging
from marginflow.shared.redisstore import use_redis_auth
from marginflow.shared.security import check_deployment

S = TypeVar("S")


def run_service(name: str, settings_cls: type[S], main: Callable[[S, Lifecycle], None]) -> None:
    try:
        settings = load(settings_cls)
        common = getattr(settings, "common", None)
        if common is not None:
            check_deployment(common)
            common.security.tokens()   # a bad token file stops the start, not the first call
            use_security(common.kafka_security.client_options())
            use_redis_auth(common.redis_auth.client_options())
    except ConfigError as exc:
        print(f"{name}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    common = getattr(settings, "common", None)
    setup_logging(name, getattr(common, "log_level", "INFO"), getattr(common, "log_json", True))
    lifecycle = Lifecycle()
    lifecycle.install_signal_handlers()
    log = get_logger(name)
    log.info("starting")
    try:
        main(settings, lifecycle)
    except Exception:
        log.exception("service failed")
        raise SystemExit(1) from None
    finally:
        lifecycle.shutdown()
        log.info("stopped")
