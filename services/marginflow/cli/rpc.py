"""gRPC calls of the CLI: one channel per service, gRPC status codes turned into one-line errors.

Exit codes (documented in the README): 0 ok · 1 the service refused or does not know the thing
asked for · 2 bad argument (ours or the service's INVALID_ARGUMENT) · 3 the service is not reachable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from marginflow.cli.endpoints import Endpoint

EXIT_ERROR = 1
EXIT_BAD_ARGUMENT = 2
EXIT_UNREACHABLE = 3


class CliError(Exception):
    """A failure with its one-line message and the exit code it maps to."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _stubs() -> dict[str, Callable[[grpc.Channel], Any]]:
    # Imported late: the generated modules are built by `make protos`, and `--help` should work without them.
    from marginflow.api.account.v1 import account_pb2_grpc
    from marginflow.api.liquidation.v1 import liquidation_pb2_grpc
    from marginflow.api.margin.v1 import margin_pb2_grpc
    from marginflow.api.marketdata.v1 import marketdata_pb2_grpc
    from marginflow.api.risk.v1 import risk_pb2_grpc

    return {
        "marketdata": marketdata_pb2_grpc.MarketDataServiceStub,
        "riskparams": risk_pb2_grpc.RiskServiceStub,
        "portfolio": account_pb2_grpc.AccountServiceStub,
        "margin": margin_pb2_grpc.MarginServiceStub,
        "liquidation": liquidation_pb2_grpc.LiquidationServiceStub,
    }


class Client:
    """Calls one service: ``Client(endpoint, timeout_s).call("GetMargin", request)``."""

    def __init__(self, endpoint: Endpoint, timeout_s: float = 5.0, token: str = "") -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.token = token
        self._channel: grpc.Channel | None = None
        self._stub: Any = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    @property
    def stub(self) -> Any:
        if self._stub is None:
            from marginflow.shared.security import client_channel, client_settings

            self._channel = client_channel(self.endpoint.grpc, client_settings(), token=self.token or None)
            self._stub = _stubs()[self.endpoint.service](self._channel)
        return self._stub

    def call(self, method: str, request: Any, admin: bool = False) -> Any:
        # The token (the admin's, or MF_AUTH_TOKEN) rides on every call of the channel.
        metadata = None
        try:
            return getattr(self.stub, method)(request, timeout=self.timeout_s, metadata=metadata)
        except grpc.RpcError as exc:
            raise self.error(exc) from None

    def error(self, exc: grpc.RpcError) -> CliError:
        code = exc.code() if hasattr(exc, "code") else None
        details = (exc.details() if hasattr(exc, "details") else "") or ""
        where = f"{self.endpoint.service} service"
        if code == grpc.StatusCode.UNAVAILABLE:
            return CliError(f"{where} not reachable at {self.endpoint.grpc}", EXIT_UNREACHABLE)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return CliError(f"{where} at {self.endpoint.grpc} did not answer within {self.timeout_s:g} s",
                            EXIT_UNREACHABLE)
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return CliError(f"{where} at {self.endpoint.grpc} does not implement this call", EXIT_UNREACHABLE)
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return CliError(f"{where}: invalid argument: {details}", EXIT_BAD_ARGUMENT)
        name = code.name if code is not None else "error"
        return CliError(f"{where}: {name.lower().replace('_', ' ')}: {details}", EXIT_ERROR)


def health(endpoint: Endpoint, timeout_s: float = 1.0) -> str:
    """The gRPC health status of the whole server ("SERVING", "NOT_SERVING", ...) or "DOWN"."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from marginflow.shared.security import client_channel, client_settings

    with client_channel(endpoint.grpc, client_settings(), token="") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""),
                                                              timeout=timeout_s)
        except grpc.RpcError:
            return "DOWN"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
