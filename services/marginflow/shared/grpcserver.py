"""gRPC server factory: health checking, reflection, a latency-metric interceptor, graceful stop.

``server, port = build_server(service_name, port, [(add_fn, servicer, full_service_name), ...])``
binds on loopback by default (``0`` = any free port, as the tests use), sets every service's
health status, and returns the bound port. ``stop(server, grace)`` marks them
NOT_SERVING first so load balancers drain, then stops with grace.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from marginflow.shared.metrics import shared_metrics
from marginflow.shared.security import (AuditSink, Authenticator, AuthInterceptor, CallerLimits, SecuritySettings,
                                        policies_of, server_credentials)


class LatencyInterceptor(grpc.ServerInterceptor):
    """Observes handling time per method and status code (unary and streaming)."""

    def __init__(self, service: str) -> None:
        self._service = service
        self._hist = shared_metrics().grpc_latency

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails):
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        inner = handler.unary_unary
        hist = self._hist
        service = self._service

        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            start = time.perf_counter()
            code = "OK"
            try:
                return inner(request, context)
            except Exception:
                code = "UNKNOWN"
                raise
            finally:
                state_code = context.code() if hasattr(context, "code") else None
                if state_code is not None and state_code != grpc.StatusCode.OK:
                    code = state_code.name
                hist.labels(service, method, code).observe(time.perf_counter() - start)

        return grpc.unary_unary_rpc_method_handler(
            wrapped, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)


Registration = tuple[Callable[[Any, grpc.Server], None], Any, str]


def build_server(service: str, port: int, registrations: Sequence[Registration], host: str = "127.0.0.1",
                 max_workers: int = 16, serving: bool = True, security: SecuritySettings | None = None,
                 audit: AuditSink | None = None) -> tuple[grpc.Server, int, health.HealthServicer]:
    """Start a server with health and reflection; ``serving=False`` leaves health NOT_SERVING (the
    service host turns it on when the application is ready).

    ``security`` (default: open loopback mode, plaintext) gives TLS from its certificate files and
    the callers' tokens; every call passes the one :class:`~marginflow.shared.security.AuthInterceptor`,
    which enforces each servicer's ``AUTH_POLICY`` and writes admin calls to ``audit``."""
    security = security if security is not None else SecuritySettings()
    authenticator = Authenticator(security.tokens(), security.auth_required)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=f"{service}-grpc"),
        interceptors=[LatencyInterceptor(service),
                      AuthInterceptor(service, policies_of(registrations), authenticator, audit,
                                      limits=CallerLimits(security.grpc_rate_per_caller,
                                                          security.grpc_max_streams_per_caller))],
        options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", security.grpc_max_message_bytes)])
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [health.SERVICE_NAME, reflection.SERVICE_NAME]
    for add, servicer, full_name in registrations:
        add(servicer, server)
        names.append(full_name)
    if security.grpc_reflection:
        reflection.enable_server_reflection(names, server)
    credentials = server_credentials(security)
    address = f"{host}:{port}"
    bound = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if bound == 0:
        raise RuntimeError(f"cannot bind gRPC server on {host}:{port}")
    server.start()
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    health_servicer.set("", status)
    for _add, _servicer, full_name in registrations:
        health_servicer.set(full_name, status)
    return server, bound, health_servicer


def stop(server: grpc.Server, health_servicer: health.HealthServicer, grace_seconds: float) -> None:
    """Drain: NOT_SERVING first, then stop with grace and wait for in-flight calls."""
    health_servicer.enter_graceful_shutdown()
    server.stop(grace_seconds).wait(grace_seconds + 1.0)


# Status details travel in a trailer, and peers refuse metadata over 8 KiB by default: a message
# that echoes a huge argument would turn into RESOURCE_EXHAUSTED on the client.
MAX_DETAIL_CHARS = 1000


def abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> None:
    """Abort the call with ``code`` and ``message``, cut to MAX_DETAIL_CHARS (raises)."""
    if len(message) > MAX_DETAIL_CHARS:
        message = message[:MAX_DETAIL_CHARS - 3] + "..."
    context.abort(code, message)


def invalid_argument(context: grpc.ServicerContext, message: str) -> None:
    """Abort the call with INVALID_ARGUMENT and a clear message (raises)."""
    abort(context, grpc.StatusCode.INVALID_ARGUMENT, message)
