"""Every ``marginflow`` command against the running platform (real processes, real gRPC), with its errors."""

from __future__ import annotations

import decimal
import json
import os
import shutil
import subprocess
import sys
import time

import grpc
import pytest

from marginflow.api.margin.v1 import margin_pb2, margin_pb2_grpc

from cli_it_helpers import DEMO_ACCOUNTS, free_port


def wait_until(what: str, probe, timeout_s: float = 90.0):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"{what} not seen within {timeout_s}s (last: {last!r})")


@pytest.fixture(scope="session")
def book(platform):
    """(account with positions, its instrument) once the margin service has margined the demo book."""
    from marginflow.api.account.v1 import account_pb2, account_pb2_grpc

    env = platform.env
    with grpc.insecure_channel(f"127.0.0.1:{env['MF_PORTFOLIO_GRPC_PORT']}") as ch:
        stub = account_pb2_grpc.AccountServiceStub(ch)
        accounts = wait_until("the demo book in portfolio", lambda: (
            lambda r: list(r.accounts) if len(r.accounts) == DEMO_ACCOUNTS else None)(
                stub.ListAccounts(account_pb2.ListAccountsRequest(page_size=1000), timeout=5)))
    with_perp = [a for a in accounts if any(p.instrument.endswith("-PERP") for p in a.positions)]
    account = with_perp[0]
    instrument = next(p.instrument for p in account.positions if p.instrument.endswith("-PERP"))
    with grpc.insecure_channel(f"127.0.0.1:{env['MF_MARGIN_GRPC_PORT']}") as ch:
        stub = margin_pb2_grpc.MarginServiceStub(ch)

        def margined():
            try:
                m = stub.GetMargin(margin_pb2.GetMarginRequest(account_id=account.account_id), timeout=2)
            except grpc.RpcError:
                return None
            return m if m.risk_params_version > 0 and m.im_usd.value not in ("", "0") else None

        wait_until("the account margined", margined, timeout_s=120)
    return account, instrument


def grpc_margin(platform, account_id: str) -> margin_pb2.MarginState:
    with grpc.insecure_channel(f"127.0.0.1:{platform.env['MF_MARGIN_GRPC_PORT']}") as ch:
        return margin_pb2_grpc.MarginServiceStub(ch).GetMargin(margin_pb2.GetMarginRequest(account_id=account_id),
                                                               timeout=5)


# ---- readiness -----------------------------------------------------------------------------------------

def test_supervisor_reports_each_service_ready_by_its_grpc_health(platform):
    for name in ("marketdata", "riskparams", "portfolio", "margin"):
        port = platform.env[f"MF_{name.upper()}_GRPC_PORT"]
        assert f"{name} ready: gRPC 127.0.0.1:{port} serving after" in platform.output
    assert "all 4 services ready" in platform.output or "all 5 services ready" in platform.output


# ---- margin ----------------------------------------------------------------------------------------------

def test_margin_get_shows_the_exact_wire_decimals(run_cli, platform, book):
    account, _ = book
    res = run_cli("margin", "get", account.account_id, "--json")
    assert res.code == 0, res
    data = res.json()
    direct = grpc_margin(platform, account.account_id)
    assert data["account_id"] == account.account_id
    assert data["state"] in ("healthy", "margin_call", "liquidation", "bankrupt")
    assert data["risk_params_version"] == direct.risk_params_version >= 1
    # Money is the decimal string of the wire (the margin may have moved on marks in between: same format).
    for field in ("equity_usd", "im_usd", "mm_usd"):
        assert isinstance(data[field], str) and decimal.Decimal(data[field]).is_finite()
    table = run_cli("margin", "get", account.account_id)
    assert table.code == 0, table
    assert f"margin of {account.account_id}" in table.out and "im_usd" in table.out and "equity_usd" in table.out


def test_margin_what_if_before_and_after(run_cli, book):
    account, instrument = book
    res = run_cli("margin", "what-if", account.account_id, f"{instrument}=5", "--json")
    assert res.code == 0, res
    data = res.json()
    assert data["before"]["account_id"] == data["after"]["account_id"] == account.account_id
    assert decimal.Decimal(data["after"]["im_usd"]) != decimal.Decimal(data["before"]["im_usd"])
    table = run_cli("margin", "what-if", account.account_id, f"{instrument}=-1@1000")
    assert table.code == 0, table
    assert f"what-if for {account.account_id}: {instrument} -1 @ 1000" in table.out
    assert "before" in table.out and "after" in table.out


def test_margin_explain_names_the_binding_component(run_cli, book):
    account, instrument = book
    res = run_cli("margin", "explain", account.account_id, "--json")
    assert res.code == 0, res
    data = res.json()
    assert data["binding_component"] in ("grid", "es", "min_margin")
    assert instrument in {p["instrument"] for p in data["positions"]}
    table = run_cli("margin", "explain", account.account_id)
    assert table.code == 0 and "binding component" in table.out and "per underlying" in table.out, table


def test_margin_at_given_marks_and_the_prices_it_read(run_cli, platform, book):
    account, instrument = book
    res = run_cli("margin", "at", account.account_id, f"{instrument}=1000.5", "--json")
    assert res.code == 0, res
    data = res.json()
    assert data["margin"]["account_id"] == account.account_id
    assert {"key": instrument, "price_usd": "1000.5", "given": True} in [
        {k: p.get(k, False) for k in ("key", "price_usd", "given")} for p in data["prices"]]
    assert data["margin"]["risk_params_version"] == grpc_margin(platform, account.account_id).risk_params_version
    table = run_cli("margin", "at", account.account_id, f"{instrument}=1000.5")
    assert table.code == 0, table
    assert f"margin of {account.account_id} at given marks" in table.out and "prices read" in table.out
    bad = run_cli("margin", "at", account.account_id, instrument)
    assert bad.code == 2 and "KEY=PRICE" in bad.err, bad
    negative = run_cli("margin", "at", account.account_id, f"{instrument}=-1")
    assert negative.code == 2 and "must be > 0" in negative.err, negative
    unknown = run_cli("margin", "at", account.account_id, "index:NOPE=1")
    assert unknown.code == 2 and "invalid argument" in unknown.err and "index:NOPE" in unknown.err, unknown
    # at a version margin keeps (the one in force), and at one it never held: refused, not margined on another
    version = data["margin"]["risk_params_version"]
    kept = run_cli("margin", "at", account.account_id, f"{instrument}=1000.5", "--risk-version", str(version), "--json")
    assert kept.code == 0 and kept.json()["margin"]["risk_params_version"] == version, kept
    never = run_cli("margin", "at", account.account_id, "--risk-version", str(version + 10_000))
    assert never.code == 1 and "failed precondition" in never.err and str(version + 10_000) in never.err, never
    # --vol reaches margin's validation: a vol of a linear instrument is refused there, a malformed one here
    linear = run_cli("margin", "at", account.account_id, "--vol", f"{instrument}=0.5")
    assert linear.code == 2 and "not a listed option" in linear.err, linear
    shape = run_cli("margin", "at", account.account_id, "--vol", "0.5")
    assert shape.code == 2 and "OPTION=IV" in shape.err, shape


def test_margin_errors_exit_non_zero_with_one_line(run_cli, book):
    account, instrument = book
    unknown = run_cli("margin", "get", "no-such-account")
    assert unknown.code == 1 and unknown.err.count("\n") == 1, unknown
    assert unknown.err.startswith("marginflow: margin service: not found:"), unknown
    bad_trade = run_cli("margin", "what-if", account.account_id, f"{instrument}")
    assert bad_trade.code == 2 and "INSTRUMENT=SIZE[@PRICE]" in bad_trade.err, bad_trade
    zero = run_cli("margin", "what-if", account.account_id, f"{instrument}=0")
    assert zero.code == 2 and "must not be 0" in zero.err, zero
    unknown_instrument = run_cli("margin", "what-if", account.account_id, "NOPE-PERP=1")
    assert unknown_instrument.code == 2 and "invalid argument" in unknown_instrument.err, unknown_instrument
    missing = run_cli("margin", "get")
    assert missing.code == 2 and "Missing argument" in missing.err and missing.err.count("\n") == 1, missing


def test_a_service_that_is_down_is_named_with_its_address(run_cli, book):
    account, _ = book
    port = str(free_port())
    res = run_cli("margin", "get", account.account_id, env={"MF_MARGIN_GRPC_PORT": port})
    assert res.code == 3, res
    assert res.err == f"marginflow: margin service not reachable at 127.0.0.1:{port}\n"
    bad_port = run_cli("margin", "get", account.account_id, env={"MF_MARGIN_GRPC_PORT": "seventy"})
    assert bad_port.code == 2 and "MF_MARGIN_GRPC_PORT" in bad_port.err, bad_port


# ---- accounts ------------------------------------------------------------------------------------------------

def test_account_get_and_list(run_cli, book):
    account, instrument = book
    res = run_cli("account", "get", account.account_id, "--json")
    assert res.code == 0, res
    data = res.json()
    assert data["account_id"] == account.account_id
    assert {p["instrument"] for p in data["positions"]} == {p.instrument for p in account.positions}
    assert {b["asset"]: b["amount"] for b in data["balances"]}.keys() == {b.asset for b in account.balances}
    table = run_cli("account", "get", account.account_id)
    assert table.code == 0 and instrument in table.out and "balances" in table.out, table

    page = run_cli("account", "list", "--page-size", "10", "--json")
    assert page.code == 0, page
    first = page.json()
    assert len(first["accounts"]) == 10 and first["next_page_token"]
    everything = run_cli("account", "list", "--page-size", "10", "--all", "--json").json()
    assert len(everything["accounts"]) == DEMO_ACCOUNTS and not everything["next_page_token"]
    assert [a["account_id"] for a in everything["accounts"][:10]] == [a["account_id"] for a in first["accounts"]]
    listed = run_cli("account", "list")
    assert listed.code == 0 and f"{DEMO_ACCOUNTS} accounts" in listed.out, listed

    assert run_cli("account", "get", "no-such-account").code == 1
    bad = run_cli("account", "list", "--page-size", "0")
    assert bad.code == 2 and "--page-size" in bad.err, bad


# ---- risk parameters, marks ---------------------------------------------------------------------------------

def test_params_show_every_sigma_and_why_sigma_m_last_changed(run_cli, platform, book):
    from marginflow.api.risk.v1 import risk_pb2, risk_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{platform.env['MF_RISKPARAMS_GRPC_PORT']}") as ch:
        history = risk_pb2_grpc.RiskServiceStub(ch).GetSigmaHistory(
            risk_pb2.GetSigmaHistoryRequest(underlying="BTC", limit=1), timeout=5).changes
    res = run_cli("params", "--json")
    assert res.code == 0, res
    data = res.json()
    assert data["version"] >= 1
    btc = next(u for u in data["underlyings"] if u["underlying"] == "BTC")
    for key in ("sigma_ewma_fast", "sigma_ewma_slow", "sigma_garch", "sigma_implied", "sigma_margin"):
        assert key in btc
    assert btc["sigma_margin"] > 0
    if history:     # the newest logged change, with its cause (none logged yet on a fresh start)
        assert btc["last_change"]["cause"] and btc["last_change"]["version"] >= history[0].version
    else:
        assert btc["last_change"] is None or btc["last_change"]["cause"]
    one = run_cli("params", "BTC")
    assert one.code == 0, one
    assert "σ_m last changed" in one.out and "BTC" in one.out and "ETH" not in one.out
    bad = run_cli("params", "DOGE")
    assert bad.code == 2 and "DOGE" in bad.err, bad


def test_marks(run_cli, book):
    res = run_cli("marks", "BTC-PERP", "ETH-PERP", "--json")
    assert res.code == 0, res
    marks = {m["instrument"]: m for m in res.json()["marks"]}
    assert set(marks) == {"BTC-PERP", "ETH-PERP"} and marks["BTC-PERP"]["mark_price"] > 0
    table = run_cli("marks", "--underlying", "SOL")
    assert table.code == 0 and "SOL-PERP" in table.out and "BTC-PERP" not in table.out, table
    bad = run_cli("marks", "NOPE")
    assert bad.code == 2 and "invalid argument" in bad.err, bad


# ---- liquidation ------------------------------------------------------------------------------------------------

def liquidation_running(platform) -> bool:
    return "liquidation ready" in platform.output


def test_fund_and_liquidations_name_the_liquidation_service_when_it_is_down(run_cli, platform):
    port = platform.env["MF_LIQUIDATION_GRPC_PORT"] if not liquidation_running(platform) else str(free_port())
    env = {"MF_LIQUIDATION_GRPC_PORT": port}
    for argv in (("fund",), ("fund", "--json"), ("liquidations",), ("liquidations", "--account", "a1", "--json")):
        res = run_cli(*argv, env=env)
        assert res.code == 3, (argv, res)
        assert res.err == f"marginflow: liquidation service not reachable at 127.0.0.1:{port}\n", res
    assert run_cli("liquidations", "--limit", "0", env=env).code == 2


def test_fund_and_liquidations_when_the_liquidation_service_runs(run_cli, platform):
    if not liquidation_running(platform):
        pytest.skip("the liquidation service is not part of this build")
    fund = run_cli("fund", "--json")
    assert fund.code == 0 and decimal.Decimal(fund.json()["balance_usd"]) >= 0, fund
    events = run_cli("liquidations", "--json")
    assert events.code == 0 and isinstance(events.json()["events"], list), events


# ---- admin ---------------------------------------------------------------------------------------------------------

def balance(run_cli, account_id: str, asset: str) -> decimal.Decimal:
    data = run_cli("account", "get", account_id, "--json").json()
    return sum((decimal.Decimal(b["amount"]) for b in data["balances"] if b["asset"] == asset), decimal.Decimal(0))


@pytest.fixture(scope="session")
def isolated(platform, book):
    """(account, instrument) of an isolated position of the demo book."""
    from marginflow.api.account.v1 import account_pb2, account_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{platform.env['MF_PORTFOLIO_GRPC_PORT']}") as ch:
        accounts = account_pb2_grpc.AccountServiceStub(ch).ListAccounts(
            account_pb2.ListAccountsRequest(page_size=1000), timeout=5).accounts
    for a in accounts:
        for p in a.positions:
            if p.mode == account_pb2.MARGIN_MODE_ISOLATED and p.size.value not in ("", "0"):
                return a.account_id, p.instrument
    pytest.fail("the demo book has no isolated position; raise DEMO_ACCOUNTS")


def test_admin_calls_with_the_token_from_the_environment(run_cli, book, isolated):
    account, instrument = book
    before = balance(run_cli, account.account_id, "USDC")
    res = run_cli("admin", "deposit", account.account_id, "USDC", "1234.5", "--request-id", "cli-test-dep-1", "--json")
    assert res.code == 0 and res.json()["accepted"], res
    wait_until("the deposit applied", lambda: balance(run_cli, account.account_id, "USDC") == before + decimal.Decimal("1234.5"))
    again = run_cli("admin", "deposit", account.account_id, "USDC", "1234.5", "--request-id", "cli-test-dep-1")
    assert again.code == 0 and "accepted" in again.out, again
    res = run_cli("admin", "withdraw", account.account_id, "USDC", "0.5", "--json")
    assert res.code == 0 and res.json()["accepted"], res
    wait_until("the withdrawal applied", lambda: balance(run_cli, account.account_id, "USDC") == before + decimal.Decimal("1234"))
    held = {p.instrument for p in account.positions}
    unheld = next(i for i in ("SOL-PERP", "ETH-PERP", "BTC-PERP") if i not in held)
    res = run_cli("admin", "set-mode", account.account_id, unheld, "isolated", "--json")
    assert res.code == 0 and res.json()["accepted"] and res.json()["event_id"], res
    # An open position's mode cannot change: the service's reason, one line, exit 1.
    refused = run_cli("admin", "set-mode", account.account_id, instrument, "isolated")
    assert refused.code == 1 and refused.err.startswith("marginflow: portfolio service: failed precondition:"), refused
    iso_account, iso_instrument = isolated
    res = run_cli("admin", "transfer-isolated", iso_account, iso_instrument, "100")
    assert res.code == 0 and "event_id" in res.out, res
    res = run_cli("admin", "transfer-isolated", iso_account, iso_instrument, "-50", "--json")
    assert res.code == 0 and res.json()["accepted"], res


def test_admin_errors(run_cli, book):
    account, instrument = book
    no_token = run_cli("admin", "deposit", account.account_id, "USDC", "1", env={"MF_ADMIN_TOKEN": None})
    assert no_token.code == 2 and "MF_ADMIN_TOKEN is not set" in no_token.err, no_token
    wrong = run_cli("admin", "deposit", account.account_id, "USDC", "1", env={"MF_ADMIN_TOKEN": "wrong"})
    assert wrong.code == 1 and wrong.err.startswith("marginflow: portfolio service: "), wrong
    for argv, text in ((("deposit", account.account_id, "USDC", "-1"), "AMOUNT must be > 0"),
                       (("withdraw", account.account_id, "USDC", "lots"), "AMOUNT must be a decimal number"),
                       (("set-mode", account.account_id, instrument, "portfolio"), "MODE must be cross or isolated"),
                       (("transfer-isolated", account.account_id, instrument, "0"), "AMOUNT_USD must not be 0"),
                       (("deposit", account.account_id, "USDC", "NaN"), "AMOUNT must be finite")):
        res = run_cli("admin", *argv)
        assert res.code == 2 and text in res.err and res.err.count("\n") == 1, (argv, res)


# ---- status ------------------------------------------------------------------------------------------------------

def test_status_rendered_once_to_text_shows_every_service(run_cli, platform, book):
    res = run_cli("status", "--once", "--interval", "1")
    assert res.code == 0, res
    text = res.out
    print(text)
    for name in ("marketdata", "riskparams", "portfolio", "margin"):
        port = platform.env[f"MF_{name.upper()}_GRPC_PORT"]
        assert f"{name}" in text and f"127.0.0.1:{port}" in text
    services_table = text.split("market data")[0]
    lines = {line.split("│")[0].strip(): line for line in services_table.splitlines() if "│" in line}
    for name in ("marketdata", "riskparams", "portfolio", "margin"):
        assert " up " in lines[name], lines[name]
    if not liquidation_running(platform):
        assert "down" in lines["liquidation"] and "liquidation service down" in text
    for section in ("market data", "risk parameters  v", "margin", "consumer lag", "dead letters", "insurance fund"):
        assert section in text
    risk_table = text.split("risk parameters")[1].split("margin")[0]
    for u in ("BTC", "ETH", "SOL"):
        assert f"\n{u} " in risk_table, text

    data = run_cli("status", "--json", "--interval", "1").json()
    assert data["services"]["margin"]["health"] == "SERVING"
    assert data["ticks_per_second"] is not None and data["ticks_per_second"] > 0
    assert data["risk_params"]["version"] >= 1 and set(data["risk_params"]["sigma_margin"]) >= {"BTC", "ETH", "SOL"}
    assert sum(v or 0 for v in data["accounts_by_state"].values()) == DEMO_ACCOUNTS
    assert data["consumer_lag"]["portfolio"] is not None


# ---- the console script ------------------------------------------------------------------------------------------

def test_the_console_script_and_python_m(platform, book):
    account, _ = book
    env = {**os.environ, **platform.port_env(), "MF_BIND_HOST": "127.0.0.1"}
    script = shutil.which("marginflow", path=os.path.dirname(sys.executable))
    assert script, "the package's console script is not installed next to the interpreter"
    res = subprocess.run([script, "margin", "get", account.account_id, "--json"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0 and json.loads(res.stdout)["account_id"] == account.account_id, res
    down = subprocess.run([sys.executable, "-m", "marginflow.cli", "fund"], capture_output=True, text=True, timeout=60,
                          env={**env, "MF_LIQUIDATION_GRPC_PORT": str(free_port())})
    assert down.returncode == 3 and "liquidation service not reachable at 127.0.0.1:" in down.stderr, down
