"""gRPC towards the platform: health of every service, accounts and fresh margins (now, or at given marks)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from decimal import Decimal

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from marginflow.api.account.v1 import account_pb2, account_pb2_grpc
from marginflow.api.margin.v1 import margin_pb2, margin_pb2_grpc
from marginflow.chaos.domain.calls import Fresh, Parts
from marginflow.chaos.domain.fold import Observed


def observed(snapshot) -> Observed:
    """An AccountSnapshot (gRPC or portfolio.positions) as the fold compares it."""
    return Observed(int(snapshot.revision),
                    {p.instrument: Decimal(p.size.value) for p in snapshot.positions
                     if p.size.value and Decimal(p.size.value) != 0})


def book_digest(raw: bytes) -> tuple[int, bytes]:
    """(revision, digest of the balances and positions) of a portfolio.positions snapshot: two records of one
    revision must hold the same book (their metadata, offsets and recent ids may differ)."""
    snap = account_pb2.AccountSnapshot.FromString(raw)
    book = account_pb2.AccountSnapshot(balances=snap.balances, positions=snap.positions)
    return int(snap.revision), hashlib.blake2b(book.SerializeToString(deterministic=True), digest_size=16).digest()


def has_isolated(snapshot) -> bool:
    return any(p.mode == account_pb2.MARGIN_MODE_ISOLATED for p in snapshot.positions)


def parts(m) -> Parts:
    """The IM parts of a MarginState or a MarginCall (the same field names)."""
    d = lambda x: Decimal(x.value or "0")  # noqa: E731
    return Parts(d(m.cross_im_usd), d(m.grid_margin_usd), d(m.es_usd), d(m.min_margin_usd), d(m.liquidity_addon_usd))


def fresh(m) -> Fresh:
    """A MarginState (GetMargin's, MarginAt's) as the call checks compare it."""
    return Fresh(int(m.state), Decimal(m.equity_usd.value or "0"), Decimal(m.im_usd.value or "0"),
                 Decimal(m.mm_usd.value or "0"), int(m.account_revision), int(m.risk_params_version),
                 bool(m.isolated), parts(m))


class Platform:
    def __init__(self, host: str, grpc_ports: dict[str, int]) -> None:
        self.ports = grpc_ports
        self.channels = {name: grpc.insecure_channel(f"{host}:{port}") for name, port in grpc_ports.items()}
        self.accounts = account_pb2_grpc.AccountServiceStub(self.channels["portfolio"])
        self.margin = margin_pb2_grpc.MarginServiceStub(self.channels["margin"])

    def health(self, service: str, timeout_s: float = 0.5) -> str:
        try:
            reply = health_pb2_grpc.HealthStub(self.channels[service]).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
        except grpc.RpcError:
            return "DOWN"
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def all_serving(self) -> list[str]:
        """The services not SERVING now (empty: all are)."""
        return [s for s in self.ports if self.health(s) != "SERVING"]

    def answers(self, account_id: str) -> bool:
        """GetAccount and GetMargin both answer for ``account_id``."""
        try:
            self.accounts.GetAccount(account_pb2.GetAccountRequest(account_id=account_id), timeout=2)
            self.margin.GetMargin(margin_pb2.GetMarginRequest(account_id=account_id), timeout=2)
            return True
        except grpc.RpcError:
            return False

    def list_accounts(self, timeout_s: float = 10) -> dict[str, Observed]:
        out, token = {}, ""
        while True:
            page = self.accounts.ListAccounts(account_pb2.ListAccountsRequest(page_size=1000, page_token=token),
                                              timeout=timeout_s)
            for snap in page.accounts:
                out[snap.account_id] = observed(snap)
            token = page.next_page_token
            if not token:
                return out

    def get_account(self, account_id: str) -> Observed | None:
        try:
            return observed(self.accounts.GetAccount(account_pb2.GetAccountRequest(account_id=account_id), timeout=5))
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    def fresh_margin(self, account_id: str) -> Fresh | None:
        try:
            return fresh(self.margin.GetMargin(margin_pb2.GetMarginRequest(account_id=account_id), timeout=5))
        except grpc.RpcError:
            return None

    def margin_at(self, account_id: str, marks: Mapping[str, float], book: bytes | None = None,
                  risk_version: int = 0, vols: Mapping[str, float] | None = None) -> Fresh | None:
        """The account's margin at ``marks`` (md.marks key → price USD; the others the market's now)
        by MarginAt — of its current book, or of ``book`` (a portfolio.positions snapshot as published), at
        ``risk_version`` (0: the one in force); None when the service cannot answer now, or holds another
        version; ``vols`` (option → implied vol): the model rebuilt at those marks and vols. A refused request is
        the harness's error and raises."""
        req = margin_pb2.MarginAtRequest(account_id=account_id, risk_params_version=risk_version)
        for key, price in marks.items():
            req.marks[key].value = repr(price)     # the shortest decimal that reads back as the same double
        for key, vol in (vols or {}).items():
            req.implied_vols[key].value = repr(vol)
        if book is not None:
            req.book.ParseFromString(book)
        try:
            return fresh(self.margin.MarginAt(req, timeout=5).margin)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise
            return None

    def close(self) -> None:
        for ch in self.channels.values():
            ch.close()
