"""gRPC security on the real portfolio service: TLS, tokens, roles, the audit trail, mutual TLS.

The service runs with the certificates and token file `make run` would make (deploy/local/pki.sh)
plus a trader-self token for one account; every refusal is checked for its status code.
"""

from __future__ import annotations

import dataclasses
import time
from decimal import Decimal as D

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from marginflow.api.account.v1 import account_pb2 as pb
from marginflow.api.account.v1 import account_pb2_grpc
from marginflow.api.common.v1 import common_pb2
from marginflow.portfolio.service import PortfolioApp, portfolio_topics
from marginflow.portfolio.settings import PortfolioSettings
from marginflow.shared.audit import read_audit
from marginflow.shared.clock import SystemClock
from marginflow.shared.config import load
from marginflow.shared.kafka import delete_topics, ensure_topics
from marginflow.shared.security import SecuritySettings, client_channel, hash_token

from conftest import token

ALICE, BOB = "acct-alice", "acct-bob"
TRADER_TOKEN = "trader-alice-token"


def _start(test_env, topic_prefix, pki, tmp_path, **extra):
    tokens = tmp_path / "tokens"
    tokens.write_text((pki / "tokens").read_text() + f"sha256:{hash_token(TRADER_TOKEN)} trader-self {ALICE}\n")
    env = dict(test_env, MF_PORTFOLIO_REDIS_PREFIX=f"{topic_prefix}pf:", MF_PORTFOLIO_GRPC_PORT="0",
               MF_PORTFOLIO_METRICS_PORT="0", MF_PORTFOLIO_POLL_TIMEOUT_MS="50",
               MF_GRPC_TLS_CERT_FILE=str(pki / "server.crt"), MF_GRPC_TLS_KEY_FILE=str(pki / "server.key"),
               MF_GRPC_TLS_CA_FILE=str(pki / "ca.crt"), MF_AUTH_TOKENS_FILE=str(tokens), **extra)
    settings = load(PortfolioSettings, env)
    ensure_topics(settings.common.bootstrap, portfolio_topics(settings))
    app = PortfolioApp(settings, SystemClock()).start(serve_http_metrics=False)
    thread, stopping = app.run_in_thread()
    assert app.wait_ready(60), "portfolio not ready within 60 s"
    return settings, app, thread, stopping


@pytest.fixture
def service(test_env, topic_prefix, pki, tmp_path):
    settings, app, thread, stopping = _start(test_env, topic_prefix, pki, tmp_path)
    yield settings, app
    stopping.set()
    thread.join(15)
    app.close()
    delete_topics(settings.common.bootstrap, [s.name for s in portfolio_topics(settings)])


def _client(app, pki, role_token: str | None, **tls):
    sec = SecuritySettings(grpc_tls_ca_file=str(pki / "ca.crt"), **tls)
    channel = client_channel(f"127.0.0.1:{app.grpc_port}", sec, token=role_token or "")
    return account_pb2_grpc.AccountServiceStub(channel), channel


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


def _deposit(account: str, request_id: str) -> pb.AdminDepositRequest:
    return pb.AdminDepositRequest(account_id=account, asset="USDC", amount=common_pb2.Decimal(value="100"),
                                  request_id=request_id)


def test_calls_are_refused_without_valid_credentials_or_the_right_role(service, pki):
    settings, app = service
    anonymous, ch0 = _client(app, pki, None)
    wrong, ch1 = _client(app, pki, "not-a-token")
    reader, ch2 = _client(app, pki, token(pki, "reader"))
    trader, ch3 = _client(app, pki, TRADER_TOKEN)
    admin, ch4 = _client(app, pki, token(pki, "risk-admin"))
    try:
        code, message = _code(lambda: anonymous.GetAccount(pb.GetAccountRequest(account_id=ALICE), timeout=5))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "credentials required" in message
        code, message = _code(lambda: wrong.GetAccount(pb.GetAccountRequest(account_id=ALICE), timeout=5))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "not valid" in message
        code, message = _code(lambda: reader.Deposit(_deposit(ALICE, "r-reader"), timeout=5))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "role reader may not call Deposit" in message
        code, message = _code(lambda: trader.GetAccount(pb.GetAccountRequest(account_id=BOB), timeout=5))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "only its own account" in message
        code, _ = _code(lambda: trader.ListAccounts(pb.ListAccountsRequest(), timeout=5))
        assert code == grpc.StatusCode.PERMISSION_DENIED

        # The right role passes: the admin deposits, the trader then reads its own account.
        assert admin.Deposit(_deposit(ALICE, "r-admin"), timeout=5).accepted
        deadline = time.monotonic() + 20
        while True:
            try:
                snap = trader.GetAccount(pb.GetAccountRequest(account_id=ALICE), timeout=5)
                break
            except grpc.RpcError as exc:
                assert exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE)
                assert time.monotonic() < deadline, "deposit not applied"
                time.sleep(0.2)
        assert D(snap.balances[0].amount.value) == D(100)
        reader.ListAccounts(pb.ListAccountsRequest(), timeout=5)

        # Every admin call is on the audit topic, the refused one too; no credential in it.
        def trail():
            return [e for e in read_audit(settings.common.bootstrap, settings.common.topics.audit, timeout_s=10)
                    if e.method.endswith("/Deposit")]
        deadline = time.monotonic() + 20
        while len(events := trail()) < 2 and time.monotonic() < deadline:
            time.sleep(0.3)
        by_result = {e.result_code: e for e in events}
        assert set(by_result) == {"OK", "PERMISSION_DENIED"}
        ok = by_result["OK"]
        assert ok.role == "risk-admin" and ok.principal_id == hash_token(token(pki, "risk-admin"))[:12]
        assert ok.service == "portfolio" and ok.method == "/marginflow.account.v1.AccountService/Deposit"
        assert 'request_id: "r-admin"' in ok.request_summary and ok.time_ms > 0
        assert by_result["PERMISSION_DENIED"].role == "reader"
        for e in events:
            assert token(pki, "risk-admin") not in str(e) and token(pki, "reader") not in str(e)
    finally:
        for ch in (ch0, ch1, ch2, ch3, ch4):
            ch.close()


def test_plaintext_clients_cannot_talk_to_a_tls_server_but_health_answers_over_tls(service, pki):
    _settings, app = service
    with grpc.insecure_channel(f"127.0.0.1:{app.grpc_port}") as plain:
        with pytest.raises(grpc.RpcError) as err:
            account_pb2_grpc.AccountServiceStub(plain).ListAccounts(pb.ListAccountsRequest(), timeout=3)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    sec = SecuritySettings(grpc_tls_ca_file=str(pki / "ca.crt"))
    with client_channel(f"127.0.0.1:{app.grpc_port}", sec, token="") as channel:   # no credentials
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status in (health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING)


def test_mutual_tls_admits_a_client_certificate_as_its_role(test_env, topic_prefix, pki, tmp_path):
    settings, app, thread, stopping = _start(test_env, topic_prefix, pki, tmp_path, MF_GRPC_TLS_CLIENT_AUTH="require")
    try:
        stub, ch = _client(app, pki, None, grpc_tls_client_cert_file=str(pki / "client-service.crt"),
                           grpc_tls_client_key_file=str(pki / "client-service.key"))
        stub.ListAccounts(pb.ListAccountsRequest(), timeout=5)           # CN service/local → role service
        code, _ = _code(lambda: stub.Deposit(_deposit(ALICE, "r-svc"), timeout=5))
        assert code == grpc.StatusCode.PERMISSION_DENIED                  # a service is not a risk-admin
        ch.close()
        stub, ch = _client(app, pki, token(pki, "reader"))                # no client certificate at all
        code, _ = _code(lambda: stub.ListAccounts(pb.ListAccountsRequest(), timeout=3))
        assert code == grpc.StatusCode.UNAVAILABLE                        # the handshake is refused
        ch.close()
    finally:
        stopping.set()
        thread.join(15)
        app.close()
        delete_topics(settings.common.bootstrap, [s.name for s in portfolio_topics(settings)])


def test_marginflow_audit_lists_the_admin_calls(service, pki, monkeypatch, capsys):
    import json

    from marginflow.cli import main

    settings, app = service
    admin, ch = _client(app, pki, token(pki, "risk-admin"))
    try:
        admin.Deposit(_deposit(ALICE, "r-cli-audit"), timeout=5)
    finally:
        ch.close()
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", settings.common.bootstrap)
    monkeypatch.setenv("MF_TOPIC_PREFIX", settings.common.topic_prefix)
    deadline = time.monotonic() + 20
    while True:
        capsys.readouterr()
        try:
            main(["audit", "--json", "--method", "Deposit"])
        except SystemExit as exc:
            assert not exc.code, capsys.readouterr().err
        events = json.loads(capsys.readouterr().out)["events"]
        if events or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert [e["result_code"] for e in events] == ["OK"]
    assert events[0]["role"] == "risk-admin" and "r-cli-audit" in events[0]["request_summary"]


class _Echo(account_pb2_grpc.AccountServiceServicer):
    """A servicer whose GetAccount counts as costly, to see the per-caller limit on a real server."""

    from marginflow.shared import security as _security

    AUTH_POLICY = {"GetAccount": _security.costly_read()}

    def GetAccount(self, request, context):
        return pb.AccountSnapshot(account_id=request.account_id)


def test_costly_calls_are_rate_limited_per_caller_over_tls(pki):
    from marginflow.shared import grpcserver

    sec = SecuritySettings(grpc_tls_cert_file=str(pki / "server.crt"), grpc_tls_key_file=str(pki / "server.key"),
                           grpc_tls_ca_file=str(pki / "ca.crt"), auth_tokens_file=str(pki / "tokens"),
                           grpc_rate_per_caller=3)
    server, port, health = grpcserver.build_server(
        "echo", 0, [(account_pb2_grpc.add_AccountServiceServicer_to_server, _Echo(), "marginflow.account.v1.AccountService")],
        security=sec)
    try:
        reader, ch1 = _client(type("A", (), {"grpc_port": port}), pki, token(pki, "reader"))
        svc, ch2 = _client(type("A", (), {"grpc_port": port}), pki, token(pki, "service"))
        for _ in range(3):
            reader.GetAccount(pb.GetAccountRequest(account_id="a"), timeout=5)
        code, message = _code(lambda: reader.GetAccount(pb.GetAccountRequest(account_id="a"), timeout=5))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "per caller" in message
        for _ in range(5):   # services forward calls another server already counted
            svc.GetAccount(pb.GetAccountRequest(account_id="a"), timeout=5)
        ch1.close()
        ch2.close()
    finally:
        grpcserver.stop(server, health, 1)
