"""gRPC ``marginflow.margin.v1.MarginService`` over the engine (reads only; never blocks the service loop)."""

from __future__ import annotations

import time
from decimal import Decimal, InvalidOperation

import grpc

from marginflow.api.margin.v1 import margin_pb2 as pb
from marginflow.api.margin.v1 import margin_pb2_grpc
from marginflow.margin.adapters import codec
from marginflow.margin.application import MarginEngine, NotReady, OtherVersion, UnknownAccount
from marginflow.margin.domain.trades import TradeDelta
from marginflow.margin.adapters.owners import FORWARDED_HEADER, Forwarder
from marginflow.shared.fanout import Fanout
from marginflow.shared.kafka import key_partition
from marginflow.shared.grpcserver import invalid_argument
from marginflow.shared import security
from marginflow.shared.errors import Rejected
from marginflow.shared.memo import IdentityMemo
from marginflow.shared.universe import INDEX_KEY_PREFIX, MAX_IMPLIED_VOL, MAX_PRICE_USD

# Codes of the owning instance passed on as they are; anything else means it could not be reached.
_FORWARDED_CODES = frozenset({grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT,
                              grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION})
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["MarginService"].full_name
MAX_TRADES = 100
MAX_STREAM_ACCOUNTS = 10_000
MAX_RECHECK_ACCOUNTS = 1_000
STREAM_QUEUE = 10_000
# Largest plausible what-if amounts (beyond them a unit or encoding error): collateral in asset units,
# trade sizes in contracts, trade prices in USD.
_MAX_COLLATERAL = Decimal("1e15")
_MAX_TRADE_SIZE = Decimal("1e12")
_MAX_TRADE_PRICE = Decimal("1e12")
_MAX_MARK_PRICE = Decimal(repr(MAX_PRICE_USD))
_MAX_VOL = Decimal(repr(MAX_IMPLIED_VOL))
# Encoded answers kept (GetMargin, what-if's "before"); past this many the oldest are forgotten.
ENCODED_MAX = 16_384


class EncodedAnswers:
    """MarginState messages of the engine's answers, each encoded once.

    Kept by the answer object itself, never by account (:class:`IdentityMemo`): an answer is immutable,
    and the engine returns the same object only while the account's book, the model and the evaluation it
    comes from stand (a recomputed account has a new answer object), so a kept message cannot be stale.
    Kept without a publish time; each reply is a copy with its own."""

    def __init__(self, max_entries: int = ENCODED_MAX) -> None:
        self._kept: IdentityMemo[pb.MarginState] = IdentityMemo(max_entries)

    def into(self, msg: pb.MarginState, margin, publish_ms: int) -> pb.MarginState:
        encoded = self._kept.get(margin)
        if encoded is None:
            encoded = self._kept.put(margin, codec.margin_state(margin))
        msg.CopyFrom(encoded)
        msg.meta.publish_time_ms = publish_ms
        return msg


def state_fanout() -> Fanout[pb.MarginState]:
    """Fan-out of published MarginStates to StreamMargin subscribers, keyed by account."""
    return Fanout(key=lambda s: s.account_id, max_queue=STREAM_QUEUE)


class MarginServicer(margin_pb2_grpc.MarginServiceServicer):
    AUTH_POLICY = {"GetMargin": security.account_read(), "WhatIf": security.costly_read(),
                   "Explain": security.costly_read(), "Recheck": security.costly_read("account_ids"),
                   "StreamMargin": security.account_read("account_ids"), "MarginAt": security.costly_read()}

    def __init__(self, engine: MarginEngine, fanout: Fanout[pb.MarginState], what_if_metric=None,
                 clock_ms=lambda: int(time.time() * 1000), forwarder: Forwarder | None = None) -> None:
        self._engine = engine
        self._fanout = fanout
        self._what_if_metric = what_if_metric
        self._clock_ms = clock_ms
        self._forwarder = forwarder
        self._encoded = EncodedAnswers()

    def use_forwarder(self, forwarder: Forwarder | None) -> None:
        self._forwarder = forwarder

    def _account(self, account_id: str, context: grpc.ServicerContext) -> str:
        if not account_id or len(account_id) > 128:
            invalid_argument(context, "account_id must be 1..128 characters")
        return account_id

    def _fail(self, exc: Exception, context: grpc.ServicerContext, account_id: str, method: str = "",
              request=None):
        """An account another instance owns is answered by that instance (one hop); otherwise the
        documented codes: NOT_FOUND for an account no instance holds, UNAVAILABLE while not ready."""
        if isinstance(exc, UnknownAccount):
            forwarded = self._forward(context, account_id, method, request)
            if forwarded is not None:
                return forwarded
            context.abort(grpc.StatusCode.NOT_FOUND, f"account {account_id!r} is not known to the margin service")
        if isinstance(exc, NotReady):
            context.abort(grpc.StatusCode.UNAVAILABLE, f"margin is not ready: {exc}")
        raise exc

    def _forward(self, context: grpc.ServicerContext, account_id: str, method: str, request):
        if self._forwarder is None or not method:
            return None
        if any(key == FORWARDED_HEADER for key, _value in context.invocation_metadata()):
            return None   # already forwarded once: the owner said it does not hold the account
        stub = self._forwarder.stub_for(key_partition(account_id.encode(), self._forwarder.partitions))
        if stub is None:
            return None
        try:
            return getattr(stub, method)(request, timeout=self._forwarder.timeout_s,
                                         metadata=((FORWARDED_HEADER, "1"),))
        except grpc.RpcError as err:
            code = err.code() if err.code() in _FORWARDED_CODES else grpc.StatusCode.UNAVAILABLE
            context.abort(code, f"from the owning instance: {err.details()}")

    def GetMargin(self, request: pb.GetMarginRequest, context: grpc.ServicerContext) -> pb.MarginState:
        with self._engine.queries.readers:   # the engine's background evaluation steps aside meanwhile
            return self._get_margin(request, context)

    def _get_margin(self, request: pb.GetMarginRequest, context: grpc.ServicerContext) -> pb.MarginState:
        account = self._account(request.account_id, context)
        try:
            margin = self._engine.get_margin(account)
        except (UnknownAccount, NotReady) as exc:
            return self._fail(exc, context, account, "GetMargin", request)
        return self._encoded.into(pb.MarginState(), margin, self._clock_ms())

    def _collateral(self, request: pb.WhatIfRequest, context: grpc.ServicerContext) -> list[tuple[int, float]]:
        if len(request.collateral) > MAX_TRADES:
            invalid_argument(context, f"at most {MAX_TRADES} collateral changes")
        out = []
        for i, c in enumerate(request.collateral):
            column = self._engine.asset_index.get(c.asset)
            if column is None:
                invalid_argument(context, f"collateral[{i}].asset {c.asset!r} is not a collateral asset")
            try:
                amount = Decimal(c.amount.value)
            except (InvalidOperation, ValueError):
                invalid_argument(context, f"collateral[{i}].amount {c.amount.value!r} is not a decimal number")
            if not amount.is_finite() or amount == 0 or abs(amount) > _MAX_COLLATERAL:
                invalid_argument(context, f"collateral[{i}].amount must be finite, non-zero and plausible, "
                                          f"got {c.amount.value!r}")
            out.append((column, float(amount)))
        return out

    def _trades(self, request: pb.WhatIfRequest, context: grpc.ServicerContext) -> list[TradeDelta]:
        if not request.trades and not request.collateral:
            invalid_argument(context, "trades and collateral must not both be empty")
        if len(request.trades) > MAX_TRADES:
            invalid_argument(context, f"at most {MAX_TRADES} trades")
        table = self._engine.instruments
        out = []
        for i, t in enumerate(request.trades):
            k = table.index.get(t.instrument)
            if k is None:
                invalid_argument(context, f"trades[{i}].instrument {t.instrument!r} is not a listed instrument")
            try:
                size = Decimal(t.size.value)
            except (InvalidOperation, ValueError):
                invalid_argument(context, f"trades[{i}].size {t.size.value!r} is not a decimal number")
            if not size.is_finite() or size == 0 or abs(size) > _MAX_TRADE_SIZE:
                invalid_argument(context, f"trades[{i}].size must be finite, non-zero and plausible, got {t.size.value!r}")
            price = None
            if t.price.value:
                try:
                    p = Decimal(t.price.value)
                except (InvalidOperation, ValueError):
                    invalid_argument(context, f"trades[{i}].price {t.price.value!r} is not a decimal number")
                if not p.is_finite() or p <= 0 or p > _MAX_TRADE_PRICE:
                    invalid_argument(context, f"trades[{i}].price must be finite and > 0, got {t.price.value!r}")
                price = float(p)
            out.append(TradeDelta(k, float(size), price))
        return out

    def WhatIf(self, request: pb.WhatIfRequest, context: grpc.ServicerContext) -> pb.WhatIfResponse:
        with self._engine.queries.readers:
            return self._what_if(request, context)

    def _what_if(self, request: pb.WhatIfRequest, context: grpc.ServicerContext) -> pb.WhatIfResponse:
        account = self._account(request.account_id, context)
        trades = self._trades(request, context)
        collateral = self._collateral(request, context)
        started = time.perf_counter()
        try:
            before, after = self._engine.what_if(account, trades, collateral)
        except (UnknownAccount, NotReady) as exc:
            return self._fail(exc, context, account, "WhatIf", request)
        except ValueError as exc:   # the core refused the hypothetical book (overflow)
            invalid_argument(context, f"what-if cannot be margined: {exc}")
        if self._what_if_metric is not None:
            self._what_if_metric.observe(time.perf_counter() - started)
        now = self._clock_ms()
        out = pb.WhatIfResponse()
        self._encoded.into(out.before, before, now)    # the account's kept answer: encoded once
        codec.margin_state_into(out.after, after, publish_ms=now)
        return out

    def Explain(self, request: pb.ExplainRequest, context: grpc.ServicerContext) -> pb.ExplainResponse:
        account = self._account(request.account_id, context)
        try:
            explanation = self._engine.explain(account)
        except (UnknownAccount, NotReady) as exc:
            return self._fail(exc, context, account, "Explain", request)
        return codec.explain_response(explanation, self._clock_ms())

    def Recheck(self, request: pb.RecheckRequest, context: grpc.ServicerContext) -> pb.RecheckResponse:
        ids = list(request.account_ids)
        if not ids or len(ids) > MAX_RECHECK_ACCOUNTS:
            invalid_argument(context, f"account_ids must hold 1..{MAX_RECHECK_ACCOUNTS} ids, got {len(ids)}")
        for i, account in enumerate(ids):
            if not account or len(account) > 128:
                invalid_argument(context, f"account_ids[{i}] must be 1..128 characters")
        if len(set(ids)) != len(ids):
            invalid_argument(context, "account_ids must be distinct")
        try:
            rechecked, unknown = self._engine.recheck(ids, request.reliefs)
        except NotReady as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"margin is not ready: {exc}")
        return codec.recheck_response(rechecked, unknown, self._engine.instruments.symbols, self._clock_ms())

    def _given_prices(self, request: pb.MarginAtRequest,
                      context: grpc.ServicerContext) -> tuple[dict[int, float], dict[int, float]]:
        """``marks`` as (instrument index → mark, underlying index → index price), validated."""
        table = self._engine.instruments
        marks: dict[int, float] = {}
        index: dict[int, float] = {}
        for key in sorted(request.marks):
            text = request.marks[key].value
            if key.startswith(INDEX_KEY_PREFIX):
                where, slot = index, table.underlying_index.get(key[len(INDEX_KEY_PREFIX):])
            else:
                where, slot = marks, table.index.get(key)
            if slot is None:
                invalid_argument(context, f"marks key {key[:64]!r} is neither a listed instrument nor "
                                          f"{INDEX_KEY_PREFIX}<underlying> of one")
            try:
                price = Decimal(text)
            except (InvalidOperation, ValueError):
                invalid_argument(context, f"marks[{key!r}] {text[:64]!r} is not a decimal number")
            if not price.is_finite() or price <= 0 or price > _MAX_MARK_PRICE:
                invalid_argument(context, f"marks[{key!r}] must be finite, > 0 and at most {MAX_PRICE_USD:.0e} USD, "
                                          f"got {text[:64]!r}")
            value = float(price)
            if not value > 0:      # below the smallest double: it would reach the core as 0
                invalid_argument(context, f"marks[{key!r}] {text[:64]!r} is too small to be a price")
            where[slot] = value
        return marks, index

    def _given_vols(self, request: pb.MarginAtRequest, context: grpc.ServicerContext) -> dict[int, float]:
        """``implied_vols`` as instrument index → vol, validated: listed options, finite, > 0, plausible."""
        table = self._engine.instruments
        vols: dict[int, float] = {}
        for key in sorted(request.implied_vols):
            k = table.index.get(key)
            if k is None or not table.is_option(k):
                invalid_argument(context, f"implied_vols key {key[:64]!r} is not a listed option")
            text = request.implied_vols[key].value
            try:
                vol = Decimal(text)
            except (InvalidOperation, ValueError):
                invalid_argument(context, f"implied_vols[{key!r}] {text[:64]!r} is not a decimal number")
            if not vol.is_finite() or vol <= 0 or vol > _MAX_VOL:
                invalid_argument(context, f"implied_vols[{key!r}] must be finite, > 0 and at most {MAX_IMPLIED_VOL}, "
                                          f"got {text[:64]!r}")
            if not float(vol) > 0:
                invalid_argument(context, f"implied_vols[{key!r}] {text[:64]!r} is too small to be a vol")
            vols[k] = float(vol)
        return vols

    def _given_book(self, request: pb.MarginAtRequest, context: grpc.ServicerContext):
        """``book``, when given, as the margin service reads it from portfolio.positions."""
        if not request.HasField("book"):
            return None
        if request.book.account_id != request.account_id:
            invalid_argument(context, f"book.account_id {request.book.account_id[:128]!r} is not account_id")
        try:
            return codec.book_from_proto(request.book, self._engine.instruments, self._engine.asset_index)
        except Rejected as exc:
            invalid_argument(context, f"book cannot be margined: {exc}")

    def MarginAt(self, request: pb.MarginAtRequest, context: grpc.ServicerContext) -> pb.MarginAtResponse:
        account = self._account(request.account_id, context)
        marks, index = self._given_prices(request, context)
        book = self._given_book(request, context)
        vols = self._given_vols(request, context)
        try:
            margin, prices = self._engine.margin_at(account, marks, index, book, int(request.risk_params_version),
                                                    vols)
        except (UnknownAccount, NotReady) as exc:
            return self._fail(exc, context, account, "MarginAt", request)
        except OtherVersion as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return codec.margin_at_response(margin, prices, self._clock_ms())

    def StreamMargin(self, request: pb.StreamMarginRequest, context: grpc.ServicerContext):
        if len(request.account_ids) > MAX_STREAM_ACCOUNTS:
            invalid_argument(context, f"at most {MAX_STREAM_ACCOUNTS} account ids")
        accounts = frozenset(request.account_ids)
        sub = self._fanout.subscribe(accounts)   # before the current margins: no change falls between
        try:
            for account in sorted(accounts):   # the current margin first, then every published change
                try:
                    yield codec.margin_state(self._engine.get_margin(account), publish_ms=self._clock_ms())
                except (UnknownAccount, NotReady):
                    continue
            while context.is_active() and not sub.closed:
                yield from sub.get(0.5)
        finally:
            self._fanout.unsubscribe(sub)
