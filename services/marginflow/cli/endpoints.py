"""Where the services listen, for the CLI: the supervisor's program table and the services' own settings.

The ports are the ones ``PROGRAMS`` in :mod:`marginflow.supervisor` lists (the one table of ports),
overridden by the same ``MF_<SERVICE>_GRPC_PORT`` / ``MF_<SERVICE>_METRICS_PORT`` variables the
services read, so a shell that started a service with a port also finds it with the CLI. The host
is ``MF_BIND_HOST`` (loopback when that is a wildcard address).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from marginflow.shared.config import ConfigError, parse_port
from marginflow.supervisor import PROGRAMS, Program

WILDCARDS = ("", "0.0.0.0", "::", "[::]")


@dataclasses.dataclass(frozen=True)
class Endpoint:
    service: str
    host: str
    grpc_port: int
    metrics_port: int

    @property
    def grpc(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"


def served_programs() -> tuple[Program, ...]:
    """The programs that serve gRPC and /metrics (the ones the CLI talks to), in data-flow order."""
    return tuple(p for p in PROGRAMS if p.grpc_port_var)


def _port(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "")
    if raw == "":
        return default
    try:
        return parse_port(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is invalid: {exc}") from None


def endpoints(environ: Mapping[str, str] | None = None, host: str | None = None) -> dict[str, Endpoint]:
    """Every served program's address, by service name."""
    environ = os.environ if environ is None else environ
    if host is None:
        host = environ.get("MF_BIND_HOST", "127.0.0.1")
        if host in WILDCARDS:
            host = "127.0.0.1"
    return {p.name: Endpoint(p.name, host, _port(environ, p.grpc_port_var, p.grpc_port),
                             _port(environ, p.metrics_port_var, p.metrics_port))
            for p in served_programs()}
