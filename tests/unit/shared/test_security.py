"""Callers, roles and the deployment check of shared.security: pure code, no sockets."""

from __future__ import annotations

import dataclasses

import grpc
import pytest

from marginflow.api.account.v1 import account_pb2 as apb
from marginflow.api.margin.v1 import margin_pb2 as mpb
from marginflow.shared import security
from marginflow.shared.config import CommonSettings, ConfigError, load
from marginflow.shared.security import (ANONYMOUS_PRINCIPAL, Authenticator, Principal, TokenTable, _Refused, authorize,
                                        hash_token, parse_tokens)

H1, H2 = hash_token("tok-reader"), hash_token("tok-trader")


def test_token_hash_is_the_sha256_of_the_token_as_sha256sum_gives_it():
    assert hash_token("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert hash_token("abc\n") == hash_token("abc")   # a token file line's newline is not part of it


def test_token_file_lines_give_principals():
    table = parse_tokens(f"# comment\n\nsha256:{H1} reader\n{H2.upper()} trader-self acct-7  # Alice\n")
    assert table[H1] == Principal(H1[:12], "reader", "", "token")
    assert table[H2] == Principal(H2[:12], "trader-self", "acct-7", "token")


@pytest.mark.parametrize("line, message", [
    ("sha256:abc reader", "hex SHA-256"),
    (f"sha256:{H1} root", "unknown role 'root'"),
    (f"sha256:{H1} trader-self", "needs its account id"),
    (f"sha256:{H1} reader acct-1", "only trader-self tokens name an account"),
    (f"sha256:{H1}", "expected"),
])
def test_bad_token_file_lines_name_the_line(line, message):
    with pytest.raises(ValueError, match=message) as err:
        parse_tokens(f"# first\n{line}\n", "tokens")
    assert "tokens line 2" in str(err.value)


def test_duplicate_hashes_are_refused():
    with pytest.raises(ValueError, match="twice"):
        parse_tokens(f"sha256:{H1} reader\nsha256:{H1} service\n")


def test_lookup_finds_by_hash_and_refuses_unknown_tokens():
    table = TokenTable(parse_tokens(f"sha256:{H1} reader\nsha256:{H2} trader-self acct-7\n"))
    assert table.lookup("tok-reader").role == "reader"
    assert table.lookup(" tok-trader ").account == "acct-7"
    assert table.lookup("tok-readeR") is None and table.lookup("") is None


def test_common_name_of_a_client_certificate_gives_role_and_account():
    assert security.principal_from_common_name("service/margin") == Principal("service/margin", "service", "",
                                                                              "certificate")
    assert security.principal_from_common_name("trader-self/acct-1").account == "acct-1"
    assert security.principal_from_common_name("marginflow") is None
    assert security.principal_from_common_name("root/x") is None


def _auth(required=True, tokens=f"sha256:{H1} reader\nsha256:{H2} trader-self acct-7\n"):
    return Authenticator(TokenTable(parse_tokens(tokens)), required)


def _code(fn):
    with pytest.raises(_Refused) as err:
        fn()
    return err.value.code, err.value.message


def test_credentials_missing_wrong_or_malformed_are_unauthenticated():
    auth = _auth()
    assert _code(lambda: auth.principal([], None, False))[0] == grpc.StatusCode.UNAUTHENTICATED
    assert _code(lambda: auth.principal([("authorization", "Bearer nope")], None, False)) == (
        grpc.StatusCode.UNAUTHENTICATED, "the token is not valid (unknown or revoked)")
    assert _code(lambda: auth.principal([("authorization", "tok-reader")], None, False))[0] == \
        grpc.StatusCode.UNAUTHENTICATED
    assert auth.principal([("Authorization", "bearer tok-reader")], None, False).role == "reader"


def test_open_mode_lets_anonymous_read_but_admin_calls_need_a_token():
    auth = _auth(required=False)
    assert auth.principal([], None, False) is ANONYMOUS_PRINCIPAL
    authorize(ANONYMOUS_PRINCIPAL, security.account_read(), apb.GetAccountRequest(account_id="x"), "GetAccount")
    code, message = _code(lambda: authorize(ANONYMOUS_PRINCIPAL, security.admin(), apb.AdminDepositRequest(), "Deposit"))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "risk-admin" in message
    disabled = _auth(required=False, tokens="")
    code, message = _code(lambda: disabled.principal([], None, True))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "admin calls are disabled" in message


ROLE_CASES = [
    # (role, account, rule, request, allowed)
    ("reader", "", security.admin(), apb.AdminDepositRequest(account_id="a"), False),
    ("service", "", security.admin(), apb.AdminDepositRequest(account_id="a"), False),
    ("risk-admin", "", security.admin(), apb.AdminDepositRequest(account_id="a"), True),
    ("reader", "", security.account_read(), mpb.GetMarginRequest(account_id="a"), True),
    ("trader-self", "a", security.account_read(), mpb.GetMarginRequest(account_id="a"), True),
    ("trader-self", "a", security.account_read(), mpb.GetMarginRequest(account_id="b"), False),
    ("trader-self", "a", security.account_read(), mpb.GetMarginRequest(account_id=""), False),
    ("trader-self", "a", security.account_read("account_ids"), mpb.StreamMarginRequest(account_ids=["a"]), True),
    ("trader-self", "a", security.account_read("account_ids"), mpb.StreamMarginRequest(account_ids=["a", "b"]), False),
    ("trader-self", "a", security.account_read("account_ids"), mpb.StreamMarginRequest(), False),
    ("trader-self", "a", security.any_account_read(), apb.ListAccountsRequest(), False),
    ("trader-self", "a", security.public(), apb.ListAccountsRequest(), True),
    ("service", "", security.any_account_read(), apb.ListAccountsRequest(), True),
]


@pytest.mark.parametrize("role, account, rule, request_, allowed", ROLE_CASES)
def test_roles_table(role, account, rule, request_, allowed):
    who = Principal("id", role, account)
    if allowed:
        authorize(who, rule, request_, "M")
    else:
        assert _code(lambda: authorize(who, rule, request_, "M"))[0] == grpc.StatusCode.PERMISSION_DENIED


def test_every_servicer_declares_a_rule_for_every_method():
    from marginflow.api.account.v1 import account_pb2
    from marginflow.api.margin.v1 import margin_pb2
    from marginflow.api.marketdata.v1 import marketdata_pb2
    from marginflow.api.risk.v1 import risk_pb2
    from marginflow.margin.adapters.grpc_api import MarginServicer
    from marginflow.marketdata.adapters.grpc_api import MarketDataServicer
    from marginflow.portfolio.adapters.grpc_api import AccountServicer
    from marginflow.riskparams.adapters.grpc_api import RiskServicer

    for servicer, module, name in ((AccountServicer, account_pb2, "AccountService"),
                                   (MarginServicer, margin_pb2, "MarginService"),
                                   (MarketDataServicer, marketdata_pb2, "MarketDataService"),
                                   (RiskServicer, risk_pb2, "RiskService")):
        methods = {m.name for m in module.DESCRIPTOR.services_by_name[name].methods}
        assert set(servicer.AUTH_POLICY) == methods, name
    admin_methods = {m for m, r in AccountServicer.AUTH_POLICY.items() if r.audit}
    assert admin_methods == {"Deposit", "Withdraw", "SetMarginMode", "TransferIsolated"}


def test_unknown_roles_in_a_rule_are_a_programming_error():
    with pytest.raises(ValueError, match="unknown roles"):
        security.Rule(frozenset({"admin"}))


# ---- settings, secrets, the deployment check

def test_secrets_come_from_files_and_never_show_in_repr(tmp_path):
    (tmp_path / "pw").write_text("s3cret\n")
    common = load(CommonSettings, {"MF_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "MF_KAFKA_SASL_USERNAME": "margin",
                                   "MF_KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "pw"),
                                   "MF_REDIS_PASSWORD": "r3dis", "MF_AUTH_TOKEN": "tok"})
    assert common.kafka_security.sasl_password == "s3cret"
    assert common.kafka_security.client_options() == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "margin",
        "sasl_plain_password": "s3cret"}
    assert common.redis_auth.password == "r3dis" and common.security.auth_token == "tok"
    text = repr(common)
    assert "s3cret" not in text and "r3dis" not in text and "tok'" not in text


def test_an_unreadable_secret_file_names_the_variable(tmp_path):
    with pytest.raises(ConfigError, match="MF_REDIS_PASSWORD_FILE=.*cannot be read"):
        load(CommonSettings, {"MF_REDIS_PASSWORD_FILE": str(tmp_path / "missing")})


def test_sasl_without_credentials_is_refused():
    with pytest.raises(ConfigError, match="MF_KAFKA_SASL_USERNAME"):
        load(CommonSettings, {"MF_KAFKA_SECURITY_PROTOCOL": "sasl_plaintext"})


def test_tls_settings_go_together():
    with pytest.raises(ConfigError, match="go together"):
        load(CommonSettings, {"MF_GRPC_TLS_CERT_FILE": "/x.crt"})
    with pytest.raises(ConfigError, match="CLIENT_AUTH=require needs"):
        load(CommonSettings, {"MF_GRPC_TLS_CLIENT_AUTH": "require"})


def test_a_bad_token_file_stops_the_start(tmp_path):
    (tmp_path / "tokens").write_text("sha256:zz reader\n")
    sec = load(CommonSettings, {"MF_AUTH_TOKENS_FILE": str(tmp_path / "tokens")}).security
    with pytest.raises(ConfigError, match="MF_AUTH_TOKENS_FILE: .* line 1"):
        sec.tokens()


def test_admin_token_joins_the_table_as_risk_admin(tmp_path):
    (tmp_path / "tokens").write_text(f"sha256:{H1} reader\n")
    sec = load(CommonSettings, {"MF_AUTH_TOKENS_FILE": str(tmp_path / "tokens"), "MF_ADMIN_TOKEN": "adm"}).security
    assert sec.auth_required and sec.tokens().lookup("adm").role == "risk-admin"


def test_loopback_without_tls_is_fine():
    security.check_deployment(load(CommonSettings, {}))


def test_a_network_facing_deployment_without_tls_and_auth_is_refused(tmp_path):
    common = load(CommonSettings, {"MF_BIND_HOST": "0.0.0.0", "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
                                   "REDIS_URL": "redis://redis:6379/0"})
    with pytest.raises(ConfigError) as err:
        security.check_deployment(common)
    message = str(err.value)
    for fragment in ("without TLS", "without authentication", "Kafka is not on loopback", "not rediss://",
                     "no password", "MF_ALLOW_INSECURE=true"):
        assert fragment in message
    security.check_deployment(load(CommonSettings, {"MF_BIND_HOST": "0.0.0.0", "MF_ALLOW_INSECURE": "true",
                                                    "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092"}))
    some = load(CommonSettings, {"KAFKA_BOOTSTRAP_SERVERS": "kafka:9092", "MF_ALLOW_INSECURE": "kafka,redis",
                                 "REDIS_URL": "redis://redis:6379/0", "MF_BIND_HOST": "0.0.0.0"})
    with pytest.raises(ConfigError, match="gRPC listens") as err:
        security.check_deployment(some)
    assert "Kafka" not in str(err.value)
    with pytest.raises(ConfigError, match="MF_ALLOW_INSECURE"):
        load(CommonSettings, {"MF_ALLOW_INSECURE": "everything"})


def test_a_network_facing_deployment_with_tls_and_auth_starts(tmp_path):
    for name in ("c.crt", "c.key", "tokens"):
        (tmp_path / name).write_text("")
    common = load(CommonSettings, {"MF_BIND_HOST": "0.0.0.0", "MF_GRPC_TLS_CERT_FILE": str(tmp_path / "c.crt"),
                                   "MF_GRPC_TLS_KEY_FILE": str(tmp_path / "c.key"),
                                   "MF_AUTH_TOKENS_FILE": str(tmp_path / "tokens")})
    assert security.deployment_problems(common) == []


def test_client_settings_fall_back_to_the_client_env_file(tmp_path):
    (tmp_path / "client.env").write_text("MF_GRPC_TLS_CA_FILE=/ca.crt\nMF_AUTH_TOKEN_FILE=/dev/null\n")
    got = security.client_settings({"MF_CLIENT_ENV_FILE": str(tmp_path / "client.env")})
    assert got.grpc_tls_ca_file == "/ca.crt" and got.client_tls
    mine = security.client_settings({"MF_CLIENT_ENV_FILE": str(tmp_path / "client.env"), "MF_AUTH_TOKEN": "t"})
    assert mine.grpc_tls_ca_file == "" and mine.auth_token == "t"   # the environment wins as a whole
    assert security.client_settings({"MF_CLIENT_ENV_FILE": ""}).grpc_tls_ca_file == ""


# ---- input hardening: per-caller limits

def test_costly_calls_are_limited_per_caller_with_a_one_second_burst():
    now = [0.0]
    limits = security.CallerLimits(rate_per_s=3, max_streams=2, clock=lambda: now[0])
    assert [limits.take("a") for _ in range(4)] == [True, True, True, False]
    assert limits.take("b")                       # another caller has its own bucket
    now[0] = 0.34
    assert limits.take("a") and not limits.take("a")   # one token back after a third of a second
    assert security.CallerLimits(0, 0).take("a")  # 0 = no limit


def test_open_streams_are_bounded_per_caller():
    limits = security.CallerLimits(0, max_streams=2)
    assert limits.open_stream("a") and limits.open_stream("a") and not limits.open_stream("a")
    assert limits.open_stream("b")
    limits.close_stream("a")
    assert limits.open_stream("a")


def test_the_margin_service_rate_limits_what_if_explain_recheck_and_margin_at_only():
    from marginflow.margin.adapters.grpc_api import MarginServicer

    limited = {m for m, r in MarginServicer.AUTH_POLICY.items() if r.rate_limited}
    assert limited == {"WhatIf", "Explain", "Recheck", "MarginAt"}
    assert MarginServicer.AUTH_POLICY["Recheck"].account_field == "account_ids"   # a trader: own account only
    assert MarginServicer.AUTH_POLICY["MarginAt"].account_field == "account_id"
