"""gRPC RiskService: current parameters, a stream of new versions, σ_m change history, the signals.

The servicer reads only the :class:`ParamsHub` (latest published RiskParams proto, replaced as a
whole) and the engine's history (copied under its lock), so gRPC threads never touch state that
the faust event loop is mutating; the signals are a snapshot the event loop replaces as a whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc

from marginflow.api.risk.v1 import risk_pb2, risk_pb2_grpc
from marginflow.riskparams.adapters.codec import select, sigma_change_to_proto, signals_to_proto
from marginflow.riskparams.application import SigmaChange, UnderlyingSignals
from marginflow.shared.grpcserver import invalid_argument
from marginflow.shared.fanout import Fanout, Subscription
from marginflow.shared import security

MAX_HISTORY_LIMIT = 10_000
MAX_SIGNAL_HISTORY_LIMIT = 1_000
DEFAULT_SIGNAL_HISTORY = 20
SERVICE_NAME = risk_pb2.DESCRIPTOR.services_by_name["RiskService"].full_name


class ParamsHub:
    """The latest RiskParams, and each new version fanned out to the streams (conflating: a slow
    stream skips to the newest version, the only one that matters)."""

    def __init__(self) -> None:
        self._latest: risk_pb2.RiskParams | None = None
        self._fanout: Fanout[risk_pb2.RiskParams] = Fanout(max_queue=1)

    def set(self, params: risk_pb2.RiskParams) -> None:
        self._latest = params
        self._fanout.publish([params])

    @property
    def latest(self) -> risk_pb2.RiskParams | None:
        return self._latest

    def subscribe(self) -> Subscription[risk_pb2.RiskParams]:
        return self._fanout.subscribe()

    def unsubscribe(self, sub: Subscription[risk_pb2.RiskParams]) -> None:
        self._fanout.unsubscribe(sub)

    def close(self) -> None:
        self._fanout.close()

    @property
    def closed(self) -> bool:
        return self._fanout.closed


class RiskServicer(risk_pb2_grpc.RiskServiceServicer):
    AUTH_POLICY = {"GetRiskParams": security.public(), "StreamRiskParams": security.public(),
                   "GetSigmaHistory": security.public(), "GetSignals": security.public()}

    def __init__(self, hub: ParamsHub, history: Callable[[str, int], list[SigmaChange]],
                 underlyings: tuple[str, ...], poll_s: float = 0.5,
                 signals: Callable[[], tuple[UnderlyingSignals, ...]] = tuple) -> None:
        self._hub = hub
        self._history = history
        self._underlyings = underlyings
        self._poll_s = poll_s
        self._signals = signals

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
        sub = self._hub.subscribe()   # before reading the latest: no version can fall between the two
        try:
            version = -1
            latest = self._hub.latest
            while context.is_active() and not sub.closed:
                if latest is not None and latest.version > version:
                    version = latest.version
                    yield latest
                newest = sub.get(self._poll_s)
                latest = newest[-1] if newest else None
        finally:
            self._hub.unsubscribe(sub)

    def GetSigmaHistory(self, request: risk_pb2.GetSigmaHistoryRequest, context: grpc.ServicerContext):
        if request.underlying:
            self._check_underlyings([request.underlying], context)
        if request.limit < 0 or request.limit > MAX_HISTORY_LIMIT:
            invalid_argument(context, f"limit must lie in 0..{MAX_HISTORY_LIMIT} (0 = 100), got {request.limit}")
        limit = request.limit or 100
        changes = self._history(request.underlying, limit)
        return risk_pb2.GetSigmaHistoryResponse(changes=[sigma_change_to_proto(c) for c in changes])


    def GetSignals(self, request: risk_pb2.GetSignalsRequest, context: grpc.ServicerContext):
        names = self._check_underlyings(list(request.underlyings), context)
        if request.history_limit < 0 or request.history_limit > MAX_SIGNAL_HISTORY_LIMIT:
            invalid_argument(context, f"history_limit must lie in 0..{MAX_SIGNAL_HISTORY_LIMIT} "
                                      f"(0 = {DEFAULT_SIGNAL_HISTORY}), got {request.history_limit}")
        limit = request.history_limit or DEFAULT_SIGNAL_HISTORY
        wanted = set(names or self._underlyings)
        return risk_pb2.GetSignalsResponse(underlyings=[
            signals_to_proto(s, self._history(s.underlying, limit)) for s in self._signals() if s.underlying in wanted])


def registration(servicer: RiskServicer):
    return (risk_pb2_grpc.add_RiskServiceServicer_to_server, servicer, SERVICE_NAME)
