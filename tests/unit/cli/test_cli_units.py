"""The CLI's pure parts: addresses from PROGRAMS and the services' variables, protobuf → JSON values,
argument checks before any call, one-line errors, and the status view rendered from a snapshot."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from marginflow.api.account.v1 import account_pb2
from marginflow.api.margin.v1 import margin_pb2
from marginflow.cli import main
from marginflow.cli import output as out
from marginflow.cli import status as status_view
from marginflow.cli.endpoints import Endpoint, endpoints
from marginflow.shared.config import ConfigError
from marginflow.supervisor import PROGRAMS


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---- addresses -------------------------------------------------------------------------------------------

def test_default_addresses_are_the_supervisors_ports():
    eps = endpoints({})
    served = [p for p in PROGRAMS if p.grpc_port_var]
    assert list(eps) == [p.name for p in served]
    for p in served:
        assert eps[p.name] == Endpoint(p.name, "127.0.0.1", p.grpc_port, p.metrics_port)


def test_the_services_port_variables_and_bind_host_move_the_addresses():
    eps = endpoints({"MF_MARGIN_GRPC_PORT": "6001", "MF_MARGIN_METRICS_PORT": "6002", "MF_BIND_HOST": "10.0.0.5"})
    assert eps["margin"].grpc == "10.0.0.5:6001" and eps["margin"].metrics_url == "http://10.0.0.5:6002/metrics"
    assert endpoints({"MF_BIND_HOST": "0.0.0.0"})["margin"].host == "127.0.0.1"
    assert endpoints({"MF_BIND_HOST": "0.0.0.0"}, host="h")["margin"].host == "h"
    with pytest.raises(ConfigError, match="MF_MARGIN_GRPC_PORT"):
        endpoints({"MF_MARGIN_GRPC_PORT": "70000"})


# ---- JSON values -----------------------------------------------------------------------------------------

def test_plain_keeps_money_as_the_wire_string_and_names_enums_briefly():
    m = margin_pb2.MarginState(account_id="a1", state=margin_pb2.HEALTH_STATE_MARGIN_CALL, risk_params_version=7)
    m.equity_usd.value = "1234.500000"
    m.isolated.add(instrument="BTC-PERP", state=margin_pb2.HEALTH_STATE_HEALTHY).im_usd.value = "10.01"
    data = out.plain(m)
    assert data["equity_usd"] == "1234.500000" and data["im_usd"] is None   # unset = absent, not zero
    assert data["state"] == "margin_call" and data["cross_state"] == "unspecified"
    assert data["risk_params_version"] == 7 and data["meta"] is None
    assert data["isolated"][0]["im_usd"] == "10.01" and data["isolated"][0]["state"] == "healthy"
    snap = account_pb2.AccountSnapshot(account_id="a1")
    snap.applied_offsets["fills-0"] = 12
    snap.positions.add(instrument="X", mode=account_pb2.MARGIN_MODE_ISOLATED)
    data = out.plain(snap)
    assert data["applied_offsets"] == {"fills-0": 12} and data["positions"][0]["mode"] == "isolated"
    json.dumps(data)


def test_ages_read_naturally():
    assert out.age(None) == "—" and out.age(0.0) == "0 s" and out.age(0.0000042) == "4 µs" and out.age(0.0123) == "12.3 ms"
    assert out.age(0.5) == "500 ms" and out.age(3.21) == "3.2 s" and out.age(600) == "10.0 min"
    assert out.ms_time(0) == "" and out.ms_time(1_764_000_000_000) == "2025-11-24 16:00:00.000Z"


# ---- arguments and errors, before any call -----------------------------------------------------------------

@pytest.mark.parametrize("argv,message", [
    (("margin", "what-if", "a1", "BTC-PERP"), "a trade is INSTRUMENT=SIZE[@PRICE]"),
    (("margin", "what-if", "a1", "BTC-PERP=x"), "size of BTC-PERP must be a decimal number"),
    (("margin", "what-if", "a1", "BTC-PERP=1@-3"), "price of BTC-PERP must be > 0"),
    (("margin", "what-if", "a1", "BTC-PERP=inf"), "size of BTC-PERP must be finite"),
    (("margin", "at", "a1", "BTC-PERP"), "a price is KEY=PRICE"),
    (("margin", "at", "a1", "=5"), "a price is KEY=PRICE"),
    (("margin", "at", "a1", "index:BTC=x"), "price of index:BTC must be a decimal number"),
    (("margin", "at", "a1", "BTC-PERP=0"), "price of BTC-PERP must be > 0"),
    (("margin", "at", "a1", "BTC-PERP=NaN"), "price of BTC-PERP must be finite"),
    (("margin", "get", " "), "ACCOUNT must not be empty"),
    (("margin", "get"), "Missing argument 'account'"),
    (("account", "list", "--page-size", "5000"), "--page-size"),
    (("nope",), "No such command 'nope'"),
    (("--timeout", "0", "fund"), "--timeout"),
])
def test_bad_arguments_exit_2_with_one_line(capsys, argv, message):
    code, stdout, err = run(capsys, *argv)
    assert code == 2 and message in err and err.startswith("marginflow: ") and err.count("\n") == 1, err
    assert stdout == ""


def test_admin_calls_need_the_token_from_the_environment(capsys, monkeypatch):
    monkeypatch.delenv("MF_ADMIN_TOKEN", raising=False)
    code, _out, err = run(capsys, "admin", "deposit", "a1", "USDC", "10")
    assert code == 2 and err == "marginflow: MF_ADMIN_TOKEN is not set: admin calls need the platform's admin token\n"


def test_a_bad_port_variable_is_named(capsys, monkeypatch):
    monkeypatch.setenv("MF_RISKPARAMS_GRPC_PORT", "x")
    code, _out, err = run(capsys, "params")
    assert code == 2 and "MF_RISKPARAMS_GRPC_PORT" in err


def test_a_bare_group_prints_its_help_and_exits_2(capsys):
    code, _stdout, err = run(capsys, "margin")
    assert code == 2 and err.startswith("Usage: marginflow margin") and "what-if" in err


def test_help_lists_every_command(capsys):
    code, stdout, _err = run(capsys, "--help")
    assert code == 0
    for command in ("margin", "account", "params", "signals", "marks", "fund", "liquidations", "admin", "status"):
        assert command in stdout
    code, stdout, _err = run(capsys, "admin", "--help")
    assert code == 0 and all(c in stdout for c in ("deposit", "withdraw", "set-mode", "transfer-isolated"))


# ---- the status view ---------------------------------------------------------------------------------------------

def sample(name: str, port: int, up: bool, metrics: dict | None) -> status_view.ServiceSample:
    return status_view.ServiceSample(Endpoint(name, "127.0.0.1", port, port + 1), "SERVING" if up else "DOWN", metrics)


def render_text(snap: status_view.Snapshot) -> str:
    console = Console(width=160, record=True, file=open("/dev/null", "w"))
    console.print(status_view.render(snap))
    return console.export_text()


def test_status_of_a_platform_that_is_not_running_shows_everything_down():
    services = {n: sample(n, 5000 + i, False, None) for i, n in enumerate(("marketdata", "riskparams", "portfolio",
                                                                         "margin", "liquidation"))}
    text = render_text(status_view.Snapshot(10.0, 1_764_000_000_000, services, kafka_error="kafka: NoBrokersAvailable"))
    services_table = text.split("market data")[0]
    for name in services:
        assert any(line.startswith(name) and "down" in line for line in services_table.splitlines()), name
    assert "liquidation service down" in text and "kafka: NoBrokersAvailable" in text


def test_status_rates_come_from_two_snapshots():
    def md(ticks: float) -> dict:
        return {"marginflow_md_ticks_in_total": [({}, ticks)], "marginflow_md_ticks_published_total": [({}, ticks)],
                "marginflow_md_marks_published_total": [({}, ticks / 10)],
                "marginflow_md_mark_age_seconds": [({"instrument": "BTC-PERP"}, 0.4), ({"instrument": "ETH-PERP"}, 1.5)]}

    def mg(count: float, total_s: float) -> dict:
        return {"marginflow_margin_accounts": [({"state": "healthy"}, 9.0), ({"state": "liquidation"}, 1.0)],
                "marginflow_margin_full_recalc_seconds_sum": [({}, total_s)],
                "marginflow_margin_full_recalc_seconds_count": [({}, count)],
                "marginflow_dead_letters_total": [({"service": "margin", "topic": "margin.dlq", "reason": "bad"}, 3.0)]}

    first = status_view.Snapshot(100.0, 0, {"marketdata": sample("marketdata", 1, True, md(1000)),
                                            "margin": sample("margin", 3, True, mg(2, 0.2))})
    second = status_view.Snapshot(102.0, 2000, {"marketdata": sample("marketdata", 1, True, md(5000)),
                                                "margin": sample("margin", 3, True, mg(4, 0.26))}, previous=first)
    assert second.rate("marketdata", "marginflow_md_ticks_in_total") == 2000.0
    recent, overall = status_view._recalc_seconds(second)
    assert recent == pytest.approx(0.03) and overall == pytest.approx(0.065)
    text = render_text(second)
    assert "2,000" in text and "1.5 s" in text and "30.0 ms / 65.0 ms" in text
    assert "margin.dlq" in text and "bad" in text
    data = status_view.as_json(second)
    assert data["ticks_per_second"] == 2000.0 and data["accounts_by_state"]["liquidation"] == 1.0
    assert data["dead_letters"] == 3.0 and data["oldest_mark_seconds"] == 1.5
