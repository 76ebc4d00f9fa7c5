"""gRPC ``marginflow.liquidation.v1.LiquidationService``: fund, events, queue, ADL ranks, admin pause/resume.

UNAVAILABLE until the service is ready; INVALID_ARGUMENT for bad arguments. Pause/Resume need metadata
``authorization: Bearer <MF_ADMIN_TOKEN>`` (UNAUTHENTICATED without it, PERMISSION_DENIED with a wrong one
or none configured), compared in constant time.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import grpc

from marginflow.api.liquidation.v1 import liquidation_pb2 as pb
from marginflow.api.liquidation.v1 import liquidation_pb2_grpc
from marginflow.liquidation.adapters import codec
from marginflow.liquidation.application import LiquidationEngine
from marginflow.shared.grpcserver import invalid_argument
from marginflow.shared import security

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["LiquidationService"].full_name
MAX_HISTORY = 1000
MAX_EVENTS = 10_000
MAX_QUEUE = 10_000
MAX_RANKS = 1000


class LiquidationServicer(liquidation_pb2_grpc.LiquidationServiceServicer):
    # Who may call what (enforced, and admin calls audited, by the shared auth interceptor): the
    # fund and the queue are venue-wide, ADL lights are an account's own, pause/resume are admin.
    AUTH_POLICY = {"GetInsuranceFund": security.any_account_read(), "ListLiquidations": security.any_account_read(),
                   "GetQueue": security.any_account_read(), "GetAdlRanks": security.any_account_read(),
                   "Pause": security.admin(), "Resume": security.admin()}

    def __init__(self, engine: LiquidationEngine, admin_token: str, ready: Callable[[], bool],
                 fund_reader: Callable[[], dict[str, str]] | None = None, run_admin=None) -> None:
        self._engine = engine
        self._token = admin_token
        self._ready = ready
        self._fund_reader = fund_reader
        # Admin changes run in the service loop's thread (the engine is single-writer): run_admin(fn) → result.
        self._run_admin = run_admin or (lambda fn: fn())

    def _require_ready(self, context) -> None:
        if not self._ready():
            context.abort(grpc.StatusCode.UNAVAILABLE, "liquidation is not ready (rebuilding its state)")

    def _limit(self, value: int, default: int, most: int, what: str, context) -> int:
        if value < 0 or value > most:
            invalid_argument(context, f"{what} must be 0..{most} (0 = {default}), got {value}")
        return value or default

    def GetInsuranceFund(self, request, context):
        self._require_ready(context)
        if request.history_limit < 0 or request.history_limit > MAX_HISTORY:
            invalid_argument(context, f"history_limit must be 0..{MAX_HISTORY}, got {request.history_limit}")
        ledger = self._engine.ledger
        balance, high, updated = ledger.balance, ledger.high_water, ledger.updated_ms
        if self._fund_reader is not None:
            try:
                cached = self._fund_reader()
                if cached.get("balance_usd"):
                    balance = Decimal(cached["balance_usd"])
                    high = Decimal(cached.get("high_water_usd") or balance)
                    updated = int(cached.get("updated_ms") or 0)
            except Exception:  # noqa: BLE001 - Redis is a cache: the ledger in memory answers
                pass
        out = pb.InsuranceFund(updated_ms=updated)
        out.balance_usd.value = str(balance)
        out.high_water_usd.value = str(high)
        out.drawdown_usd.value = str(high - balance)
        for ch in list(reversed(ledger.history))[:request.history_limit]:
            h = out.history.add(time_ms=ch.time_ms, kind=pb.LiquidationEventKind.Value(
                f"LIQUIDATION_EVENT_KIND_{ch.kind}"), account_id=ch.account_id, reference=ch.reference)
            h.delta_usd.value = str(ch.delta_usd)
            h.balance_usd.value = str(ch.balance_usd)
        return out

    def ListLiquidations(self, request, context):
        self._require_ready(context)
        if len(request.account_id) > 128:
            invalid_argument(context, "account_id must be at most 128 characters")
        limit = self._limit(request.limit, 100, MAX_EVENTS, "limit", context)
        now = self._engine.clock_ms()
        events = self._engine.recent_events(request.account_id, limit)
        return pb.ListLiquidationsResponse(events=[codec.event_to_proto(e, now) for e in events])

    def GetQueue(self, request, context):
        self._require_ready(context)
        limit = self._limit(request.limit, 100, MAX_QUEUE, "limit", context)
        out = pb.GetQueueResponse()
        for t in self._engine.queue(limit):
            e = out.entries.add(account_id=t.account_id, episode=t.episode.number, since_ms=t.episode.started_ms,
                                round=t.episode.round_number, slices_sent=t.slices_sent, state=t.episode.state.value)
            e.equity_usd.value = str(t.last_equity_usd)
            e.mm_usd.value = str(t.last_mm_usd)
        return out

    def GetAdlRanks(self, request, context):
        self._require_ready(context)
        if bool(request.account_id) == bool(request.instrument):
            invalid_argument(context, "give exactly one of account_id and instrument")
        if request.instrument and request.instrument not in self._engine.instruments:
            invalid_argument(context, f"instrument {request.instrument!r} is not in the universe")
        limit = self._limit(request.limit, 10, MAX_RANKS, "limit", context)
        out = pb.GetAdlRanksResponse()
        try:
            if request.account_id:
                for instrument, size, score, light, rank in self._engine.adl_ranks_of_account(request.account_id):
                    r = out.ranks.add(account_id=request.account_id, instrument=instrument, score=score, light=light,
                                      rank=rank)
                    r.size.value = str(size)
            else:
                for c, score, light, rank in self._engine.adl_ranks_of_instrument(request.instrument, limit):
                    r = out.ranks.add(account_id=c.account_id, instrument=request.instrument, score=score,
                                      light=light, rank=rank)
                    r.size.value = str(c.size_contracts)
        except grpc.RpcError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"portfolio service unreachable: {exc.code().name}")
        return out

    # ---- admin
    def _pause(self, request, context, paused: bool):
        self._require_ready(context)
        if request.instrument and request.instrument not in self._engine.instruments:
            invalid_argument(context, f"instrument {request.instrument!r} is not in the universe")
        if len(request.reason) > 500:
            invalid_argument(context, "reason must be at most 500 characters")
        venue, instruments = self._run_admin(lambda: self._engine.pause(request.instrument, paused, request.reason))
        return pb.PauseResponse(venue_paused=venue, paused_instruments=instruments)

    def Pause(self, request, context):
        return self._pause(request, context, True)

    def Resume(self, request, context):
        return self._pause(request, context, False)
