"""gRPC RiskService: current parameters, a stream of new versions, σ_m change history.

The servicer reads only the :class:`ParamsHub` (latest published RiskParams proto, replaced as a
whole) and the engine's history (copied under its lock), so gRPC threads never touch state that
the faust event loop is mutating.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import grpc

from marginflow.api.risk.v1 import risk_pb2, risk_pb2_grpc
from marginflow.riskparams.adapters.codec import select, sigma_change_to_proto
from marginflow.riskparams.application import SigmaChange
from marginflow.shared.grpcserver import invalid_argument

MAX_HISTORY_LIMIT = 10_000
SERVICE_NAME = risk_pb2.DESCRIPTOR.services_by_name["RiskService"].full_name


class ParamsHub:
    """The latest RiskParams, and a condition streams wait on for the next version."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._latest: risk_pb2.RiskParams | None = None
        self._closed = False

    def set(self, params: risk_pb2.RiskParams) -> None:
        with self._cond:
            self._latest = params
            self._cond.notify_all()

    @property
    def latest(self) -> risk_pb2.RiskParams | None:
        return self._latest

    def wait_newer(self, version: int, timeout_s: float) -> risk_pb2.RiskParams | None:
        """The latest params if newer than ``version`` (waits up to ``timeout_s``)."""
        with self._cond:
            self._cond.wait_for(lambda: self._closed or (self._latest is not None and self._latest.version > version),
                                timeout=timeout_s)
            latest = self._latest
        return latest if latest is not None and latest.version > version else None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


class RiskServicer(risk_pb2_grpc.RiskServiceServicer):
    def __init__(self, hub: ParamsHub, history: Callable[[str, int], list[SigmaChange]],
                 underlyings: tuple[str, ...], poll_s: float = 0.5) -> None:
        self._hub = hub
        self._history = history
        self._underlyings = underlyings
        self._poll_s = poll_s

    def _check_underlyings(self, names, context) -> list[str]:
        unknown = [u for u in names if u not in self._underlyings]
        if unknown:
            invalid_argument(context, f"unknown underlying(s) {unknown}; known: {list(self._underlyings)}")
        if len(set(names)) != len(names):
            invalid_argument(context, "underlyings must not repeat")
        return list(names)

    def GetRiskParams(self, request: risk_pb2.GetRiskParamsRequest, context: grpc.ServicerContext):
        names = self._check_underlyings(list(request.underlyings), context)
        latest = self._hub.latest
        if latest is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "no risk parameters published yet")
        return select(latest, names) if names else latest

    def StreamRiskParams(self, request: risk_pb2.StreamRiskParamsRequest,
                         context: grpc.ServicerContext) -> Iterator[risk_pb2.RiskParams]:
        version = -1
        while context.is_active() and not self._hub.closed:
            params = self._hub.wait_newer(version, self._poll_s)
            if params is not None:
                version = params.version
                yield params

    def GetSigmaHistory(self, request: risk_pb2.GetSigmaHistoryRequest, context: grpc.ServicerContext):
        if request.underlying:
            self._check_underlyings([request.underlying], context)
        if request.limit < 0 or request.limit > MAX_HISTORY_LIMIT:
            invalid_argument(context, f"limit must lie in 0..{MAX_HISTORY_LIMIT} (0 = 100), got {request.limit}")
        limit = request.limit or 100
        changes = self._history(request.underlying, limit)
        return risk_pb2.GetSigmaHistoryResponse(changes=[sigma_change_to_proto(c) for c in changes])


def registration(servicer: RiskServicer):
    return (risk_pb2_grpc.add_RiskServiceServicer_to_server, servicer, SERVICE_NAME)
