"""MarketDataService over gRPC: instrument specs, latest marks, a server stream of marks."""

from __future__ import annotations

import grpc

from marginflow.api.common.v1 import common_pb2
from marginflow.api.marketdata.v1 import marketdata_pb2, marketdata_pb2_grpc
from marginflow.marketdata.adapters.kafka_io import mark_to_proto
from marginflow.marketdata.application import MarketDataApp
from marginflow.shared.grpcserver import invalid_argument
from marginflow.shared.universe import Instrument, Universe
from marginflow.shared import security


def instrument_to_proto(i: Instrument) -> common_pb2.Instrument:
    return common_pb2.Instrument(symbol=i.symbol, kind=int(i.kind), underlying=i.underlying, strike_usd=i.strike_usd,
                                 expiry_ms=i.expiry_ms, contract_size=i.contract_size,
                                 tick_size_usd=i.tick_size_usd, lot_size=i.lot_size)


class MarketDataServicer(marketdata_pb2_grpc.MarketDataServiceServicer):
    AUTH_POLICY = {"ListInstruments": security.public(), "GetMarks": security.public(),
                   "StreamMarks": security.public()}

    def __init__(self, universe: Universe, app: MarketDataApp, stream_poll_s: float = 0.5) -> None:
        self.universe = universe
        self.app = app
        self.stream_poll_s = stream_poll_s

    def _check_symbols(self, symbols, context: grpc.ServicerContext) -> set[str]:
        unknown = [s for s in symbols if s not in self.universe.instruments
                   and not (s.startswith("index:") and s[6:] in self.universe.underlyings)]
        if unknown:
            invalid_argument(context, f"unknown instruments: {', '.join(sorted(unknown)[:10])}")
        return set(symbols)

    def ListInstruments(self, request, context):
        if request.underlying and request.underlying not in self.universe.underlyings:
            invalid_argument(context, f"unknown underlying {request.underlying!r}")
        if request.kind and request.kind not in common_pb2.InstrumentKind.values():
            invalid_argument(context, f"unknown instrument kind {request.kind}")
        out = [instrument_to_proto(i) for i in self.universe.instruments.values()
               if (not request.underlying or i.underlying == request.underlying)
               and (not request.kind or int(i.kind) == request.kind)]
        return marketdata_pb2.ListInstrumentsResponse(instruments=out)

    def GetMarks(self, request, context):
        wanted = self._check_symbols(request.instruments, context)
        latest = dict(self.app.marks.latest)
        marks = [mark_to_proto(m, m.event_time_ms, "marketdata") for s, m in sorted(latest.items())
                 if not wanted or s in wanted]
        return marketdata_pb2.GetMarksResponse(marks=marks)

    def StreamMarks(self, request, context):
        wanted = self._check_symbols(request.instruments, context)
        sub = self.app.broadcast.subscribe(wanted)
        try:
            while context.is_active() and not sub.closed:
                for m in sub.get(self.stream_poll_s):
                    yield mark_to_proto(m, m.event_time_ms, "marketdata")
        finally:
            self.app.broadcast.unsubscribe(sub)
