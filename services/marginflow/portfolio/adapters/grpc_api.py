"""gRPC AccountService: reads from Redis, admin calls through :class:`AdminService`.

Who may call what is ``AUTH_POLICY``, enforced (and admin calls audited) by the shared auth
interceptor: admin calls need a risk-admin token. Page tokens are the last account id of the
previous page, base64url-encoded.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable

import grpc

from marginflow.api.account.v1 import account_pb2 as pb
from marginflow.api.account.v1 import account_pb2_grpc
from marginflow.portfolio.adapters.codec import position_to_proto
from marginflow.portfolio.adapters.redis_store import RedisStateStore
from marginflow.portfolio.application import AdminError, AdminResult, AdminService
from marginflow.portfolio.domain.ledger import ACCOUNT_ID
from marginflow.shared import grpcserver
from marginflow.shared.grpcserver import invalid_argument
from marginflow.shared.kafka import key_partition
from marginflow.shared import security

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AccountService"].full_name
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def encode_page_token(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode()


def decode_page_token(token: str) -> str:
    if not token:
        return ""
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError(f"page_token {token!r} is not a token this service returned") from None


class AccountServicer(account_pb2_grpc.AccountServiceServicer):
    # Admin calls: risk-admin only, each one an audit event (the shared auth interceptor enforces it).
    AUTH_POLICY = {"GetAccount": security.account_read(), "ListAccounts": security.any_account_read(),
                   "PositionsByInstrument": security.any_account_read(),
                   "Deposit": security.admin(), "Withdraw": security.admin(),
                   "SetMarginMode": security.admin(), "TransferIsolated": security.admin()}

    def __init__(self, store: RedisStateStore, admin: AdminService,
                 instruments: frozenset[str], partitions: int,
                 catching_up: Callable[[], frozenset[int] | None] = lambda: frozenset()) -> None:
        self._store = store
        self._partitions = partitions
        self._admin = admin
        self._instruments = instruments
        self._catching_up = catching_up

    def _current_or_unavailable(self, context: grpc.ServicerContext, account_id: str | None = None) -> None:
        """Reads answer only from a cache that holds every input published before this instance took
        its partitions: before it has joined its group, or (for ``account_id``'s partition, or any
        partition when None) while it reads a newly assigned partition up to its end offset at
        assignment, Redis still holds what the previous owner left — answered UNAVAILABLE."""
        behind = self._catching_up()
        if behind is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "not yet assigned its input partitions; retry shortly")
        if behind and (account_id is None or key_partition(account_id.encode(), self._partitions) in behind):
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          "reading newly assigned input partitions up to their end; retry shortly")

    # ---- helpers
    def _page(self, page_size: int, page_token: str, context: grpc.ServicerContext) -> tuple[int, str]:
        if page_size < 0 or page_size > MAX_PAGE_SIZE:
            invalid_argument(context, f"page_size must be 1..{MAX_PAGE_SIZE} (0 = {DEFAULT_PAGE_SIZE}), got {page_size}")
        try:
            after = decode_page_token(page_token)
        except ValueError as exc:
            invalid_argument(context, str(exc))
        return page_size or DEFAULT_PAGE_SIZE, after

    def _admin_call(self, context: grpc.ServicerContext, call) -> pb.AdminResponse:
        try:
            result: AdminResult = call()
        except AdminError as exc:
            code = (grpc.StatusCode.FAILED_PRECONDITION if exc.status == "failed_precondition"
                    else grpc.StatusCode.INVALID_ARGUMENT)
            grpcserver.abort(context, code, exc.message)
        return pb.AdminResponse(event_id=result.event_id, accepted=result.accepted)

    # ---- reads
    def GetAccount(self, request: pb.GetAccountRequest, context: grpc.ServicerContext) -> pb.AccountSnapshot:
        if not ACCOUNT_ID.match(request.account_id):
            invalid_argument(context, f"account_id {request.account_id!r} is not a valid account id")
        self._current_or_unavailable(context, request.account_id)
        payload = self._store.get_payload(request.account_id)
        if payload is None:
            if not self._store.is_built(key_partition(request.account_id.encode(), self._partitions)):
                context.abort(grpc.StatusCode.UNAVAILABLE,
                              "the account cache is being rebuilt from Kafka; retry shortly")
            grpcserver.abort(context, grpc.StatusCode.NOT_FOUND, f"account {request.account_id!r} not found")
        return pb.AccountSnapshot.FromString(payload)

    def ListAccounts(self, request: pb.ListAccountsRequest, context: grpc.ServicerContext) -> pb.ListAccountsResponse:
        size, after = self._page(request.page_size, request.page_token, context)
        self._current_or_unavailable(context)
        snaps = [pb.AccountSnapshot.FromString(p) for p in self._store.list_accounts(after, size)]
        token = encode_page_token(snaps[-1].account_id) if len(snaps) == size else ""
        return pb.ListAccountsResponse(accounts=snaps, next_page_token=token)

    def PositionsByInstrument(self, request: pb.PositionsByInstrumentRequest,
                              context: grpc.ServicerContext) -> pb.PositionsByInstrumentResponse:
        if request.instrument not in self._instruments:
            invalid_argument(context, f"instrument {request.instrument!r} is not in the universe")
        size, after = self._page(request.page_size, request.page_token, context)
        self._current_or_unavailable(context)
        found = self._store.positions_by_instrument(request.instrument, after, size)
        token = encode_page_token(found[-1][0]) if len(found) == size else ""
        return pb.PositionsByInstrumentResponse(
            positions=[pb.AccountPosition(account_id=a, position=position_to_proto(p)) for a, p in found],
            next_page_token=token)

    # ---- admin
    def Deposit(self, request: pb.AdminDepositRequest, context: grpc.ServicerContext) -> pb.AdminResponse:
        return self._admin_call(context, lambda: self._admin.deposit(
            request.account_id, request.asset, request.amount.value, request.request_id))

    def Withdraw(self, request: pb.AdminWithdrawRequest, context: grpc.ServicerContext) -> pb.AdminResponse:
        return self._admin_call(context, lambda: self._admin.withdraw(
            request.account_id, request.asset, request.amount.value, request.request_id))

    def SetMarginMode(self, request: pb.AdminSetModeRequest, context: grpc.ServicerContext) -> pb.AdminResponse:
        return self._admin_call(context, lambda: self._admin.set_mode(
            request.account_id, request.instrument, request.mode, request.request_id))

    def TransferIsolated(self, request: pb.AdminTransferIsolatedRequest,
                         context: grpc.ServicerContext) -> pb.AdminResponse:
        return self._admin_call(context, lambda: self._admin.transfer_isolated(
            request.account_id, request.instrument, request.amount_usd.value, request.request_id))
