"""The ``marginflow`` command: the platform's gRPC services for people (tables) and scripts (``--json``)."""

from __future__ import annotations

import dataclasses
import decimal
import os
import sys
import time
import uuid
from typing import Any, Optional

import typer

from marginflow.cli import output as out
from marginflow.cli.endpoints import Endpoint, endpoints
from marginflow.cli.rpc import EXIT_BAD_ARGUMENT, CliError, Client
from marginflow.shared.config import ConfigError

HELP = """Operator tools of marginflow: margin, accounts, risk parameters, marks, the insurance fund,
liquidations, admin calls and a live status view, over the services' gRPC.

Addresses: the ports of `make run` (MF_<SERVICE>_GRPC_PORT / _METRICS_PORT override them, as for
the services), on MF_BIND_HOST or --host. Exit codes: 0 ok, 1 refused/not found, 2 bad argument,
3 service not reachable."""

app = typer.Typer(help=HELP, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None)
margin_app = typer.Typer(help="Margin of an account: current, after hypothetical trades, explained.",
                         no_args_is_help=True)
account_app = typer.Typer(help="Accounts as the portfolio service holds them.", no_args_is_help=True)
admin_app = typer.Typer(help="Admin calls of the AccountService (a risk-admin token: MF_ADMIN_TOKEN or MF_AUTH_TOKEN[_FILE]).",
                        no_args_is_help=True)
# Negative numbers ("-50" out of an isolated position) are arguments, not options.
NUMBERS = {"ignore_unknown_options": True}
app.add_typer(margin_app, name="margin")
app.add_typer(account_app, name="account")
app.add_typer(admin_app, name="admin")

JsonOption = typer.Option(False, "--json", help="machine-readable JSON instead of tables")


@dataclasses.dataclass
class State:
    host: Optional[str] = None
    timeout_s: float = 5.0

    def endpoint(self, service: str) -> Endpoint:
        try:
            return endpoints(host=self.host)[service]
        except ConfigError as exc:
            raise CliError(str(exc), EXIT_BAD_ARGUMENT) from None

    def client(self, service: str, token: str = "") -> Client:
        return Client(self.endpoint(service), self.timeout_s, token)


@app.callback()
def _options(host: Optional[str] = typer.Option(None, "--host", help="host of the services (default MF_BIND_HOST or 127.0.0.1)"),
             timeout: float = typer.Option(5.0, "--timeout", help="seconds to wait for an answer", min=0.1)) -> None:
    global _STATE
    _STATE = State(host, timeout)


_STATE = State()


def _state() -> State:
    return _STATE


def _pb(module: str):
    import importlib

    return importlib.import_module(f"marginflow.api.{module}")


def _show(*renderables: Any) -> None:
    console = out.console()
    for i, r in enumerate(renderables):
        if i:
            console.print()
        console.print(r)


def _account_id(account: str) -> str:
    account = account.strip()
    if not account:
        raise CliError("ACCOUNT must not be empty", EXIT_BAD_ARGUMENT)
    return account


def _decimal(text: str, what: str, positive: bool = False, nonzero: bool = False) -> str:
    try:
        value = decimal.Decimal(text)
    except decimal.InvalidOperation:
        raise CliError(f"{what} must be a decimal number, got {text!r}", EXIT_BAD_ARGUMENT) from None
    if not value.is_finite():
        raise CliError(f"{what} must be finite, got {text!r}", EXIT_BAD_ARGUMENT)
    if positive and value <= 0:
        raise CliError(f"{what} must be > 0, got {text!r}", EXIT_BAD_ARGUMENT)
    if nonzero and value == 0:
        raise CliError(f"{what} must not be 0", EXIT_BAD_ARGUMENT)
    return text.strip()


# ---- margin -----------------------------------------------------------------------------------

def _state_name(message: Any, field: str = "state") -> str:
    return out.enum_name(message.DESCRIPTOR.fields_by_name[field].enum_type, getattr(message, field))


def _margin_pairs(m: Any) -> list[tuple[str, Any]]:
    return [
        ("account", m.account_id),
        ("state", _state_name(m)),
        ("equity_usd", m.equity_usd.value),
        ("im_usd", m.im_usd.value),
        ("mm_usd", m.mm_usd.value),
        ("grid_margin_usd", m.grid_margin_usd.value),
        ("es_usd", m.es_usd.value),
        ("min_margin_usd", m.min_margin_usd.value),
        ("liquidity_addon_usd", m.liquidity_addon_usd.value),
        ("collateral_value_usd", m.collateral_value_usd.value),
        ("unrealized_pnl_usd", m.unrealized_pnl_usd.value),
        ("cross (equity / IM / MM)", f"{m.cross_equity_usd.value} / {m.cross_im_usd.value} / {m.cross_mm_usd.value}"
                                     f"  {_state_name(m, 'cross_state')}"),
        ("risk_params_version", m.risk_params_version),
        ("account_revision", m.account_revision),
        ("marks", f"{'fresh' if m.marks_fresh else 'STALE'} (oldest {out.ms_time(m.marks_time_ms)})"),
    ]


def _isolated_table(m: Any):
    if not m.isolated:
        return None
    return out.table("isolated positions", ["instrument", "size", "equity_usd", "im_usd", "mm_usd", "state",
                                            "liquidation_price_usd"],
                     [(i.instrument, i.size.value, i.equity_usd.value, i.im_usd.value, i.mm_usd.value,
                       _state_name(i), i.liquidation_price_usd.value or "none") for i in m.isolated],
                     right=["size", "equity_usd", "im_usd", "mm_usd", "liquidation_price_usd"])


@margin_app.command("get")
def margin_get(account: str = typer.Argument(..., help="account id"), as_json: bool = JsonOption) -> None:
    """Current margin of ACCOUNT: equity, IM, MM and their parts, health state."""
    pb = _pb("margin.v1.margin_pb2")
    with _state().client("margin") as client:
        m = client.call("GetMargin", pb.GetMarginRequest(account_id=_account_id(account)))
    if as_json:
        return out.print_json(out.plain(m))
    _show(*[r for r in (out.kv(f"margin of {m.account_id}", _margin_pairs(m)), _isolated_table(m)) if r is not None])


def _trade(text: str, pb: Any) -> Any:
    """``INSTRUMENT=SIZE[@PRICE]``: signed contracts added, at PRICE (default: the mark)."""
    instrument, sep, rest = text.partition("=")
    if not sep or not instrument.strip() or not rest.strip():
        raise CliError(f"a trade is INSTRUMENT=SIZE[@PRICE] (e.g. BTC-PERP=-0.5@60000), got {text!r}",
                       EXIT_BAD_ARGUMENT)
    size, at, price = rest.partition("@")
    delta = pb.TradeDelta(instrument=instrument.strip())
    delta.size.value = _decimal(size, f"size of {instrument.strip()}", nonzero=True)
    if at:
        delta.price.value = _decimal(price, f"price of {instrument.strip()}", positive=True)
    return delta


@margin_app.command("what-if", context_settings=NUMBERS)
def margin_what_if(account: str = typer.Argument(..., help="account id"),
                   trades: list[str] = typer.Argument(..., help="INSTRUMENT=SIZE[@PRICE], signed contracts added"),
                   as_json: bool = JsonOption) -> None:
    """Margin of ACCOUNT before and after hypothetical trades (nothing is traded)."""
    pb = _pb("margin.v1.margin_pb2")
    request = pb.WhatIfRequest(account_id=_account_id(account), trades=[_trade(t, pb) for t in trades])
    with _state().client("margin") as client:
        reply = client.call("WhatIf", request)
    if as_json:
        return out.print_json(out.plain(reply))
    before, after = reply.before, reply.after
    fields = ["state", "equity_usd", "im_usd", "mm_usd", "grid_margin_usd", "es_usd", "min_margin_usd",
              "liquidity_addon_usd"]

    def cell(m: Any, f: str) -> str:
        return _state_name(m) if f == "state" else getattr(m, f).value

    rows = [(f, cell(before, f), cell(after, f)) for f in fields]
    trades_text = ", ".join(f"{t.instrument} {t.size.value}" + (f" @ {t.price.value}" if t.price.value else "")
                            for t in request.trades)
    _show(out.table(f"what-if for {before.account_id}: {trades_text}", ["", "before", "after"], rows,
                    right=["before", "after"]),
          *[r for r in (_isolated_table(after),) if r is not None])


def _given_price(text: str) -> tuple[str, str]:
    """``KEY=PRICE``: an instrument's mark or ``index:UNDERLYING``'s index price, USD."""
    key, sep, price = text.partition("=")
    if not sep or not key.strip() or not price.strip():
        raise CliError(f"a price is KEY=PRICE, KEY an instrument or index:UNDERLYING (e.g. BTC-PERP=55000), "
                       f"got {text!r}", EXIT_BAD_ARGUMENT)
    return key.strip(), _decimal(price, f"price of {key.strip()}", positive=True)


@margin_app.command("at", context_settings=NUMBERS)
def margin_at(account: str = typer.Argument(..., help="account id"),
              prices: Optional[list[str]] = typer.Argument(None, help="KEY=PRICE: INSTRUMENT=mark or "
                                                                       "index:UNDERLYING=index price, USD"),
              risk_version: int = typer.Option(0, "--risk-version", min=0,
                                               help="margin at this risk-parameter version (one margin still "
                                                    "keeps; default: the one in force)"),
              vols: Optional[list[str]] = typer.Option(None, "--vol", help="OPTION=IV: an option's implied vol "
                                                       "(a fraction, e.g. 0.65); the model is then rebuilt at "
                                                       "the given marks and vols. Repeatable"),
              as_json: bool = JsonOption) -> None:
    """Margin of ACCOUNT at given marks (the others the market's now): its current book, the risk
    parameters in force (or --risk-version's), nothing published; and every price it read."""
    pb = _pb("margin.v1.margin_pb2")
    request = pb.MarginAtRequest(account_id=_account_id(account), risk_params_version=risk_version)
    for text in prices or []:
        key, price = _given_price(text)
        request.marks[key].value = price
    for text in vols or []:
        key, sep, vol = text.partition("=")
        if not sep or not key.strip() or not vol.strip():
            raise CliError(f"a vol is OPTION=IV (e.g. BTC-11DEC26-48000-C=0.65), got {text!r}", EXIT_BAD_ARGUMENT)
        request.implied_vols[key.strip()].value = _decimal(vol, f"implied vol of {key.strip()}", positive=True)
    with _state().client("margin") as client:
        reply = client.call("MarginAt", request)
    if as_json:
        return out.print_json(out.plain(reply))
    m = reply.margin
    used = out.table("prices read", ["key", "price_usd", "given", "fresh", "event time"],
                     [(p.key, p.price_usd.value, "given" if p.given else "market", "yes" if p.fresh else "STALE",
                       out.ms_time(p.event_time_ms)) for p in reply.prices], right=["price_usd"])
    _show(*[r for r in (out.kv(f"margin of {m.account_id} at given marks", _margin_pairs(m)), used,
                        _isolated_table(m)) if r is not None])


@margin_app.command("explain")
def margin_explain(account: str = typer.Argument(..., help="account id"), as_json: bool = JsonOption) -> None:
    """Why ACCOUNT's margin is what it is: binding component, worst scenario, contributions."""
    pb = _pb("margin.v1.margin_pb2")
    with _state().client("margin") as client:
        reply = client.call("Explain", pb.ExplainRequest(account_id=_account_id(account)))
    if as_json:
        return out.print_json(out.plain(reply))
    m = reply.margin
    summary = out.kv(f"margin of {m.account_id}", [
        ("state", _state_name(m)), ("equity_usd", m.equity_usd.value), ("im_usd", m.im_usd.value),
        ("mm_usd", m.mm_usd.value), ("binding component", reply.binding_component),
        ("worst historical scenario", reply.worst_historical_scenario),
        ("risk_params_version", m.risk_params_version)])
    positions = out.table("per position", ["instrument", "underlying", "size", "isolated", "loss_in_worst_grid_usd",
                                           "es_contribution_usd", "minimum_usd", "liquidity_usd",
                                           "book distance", "liquidation_price_usd"],
                          [(p.instrument, p.underlying, p.size.value, "yes" if p.isolated else "",
                            p.loss_in_worst_grid_usd.value, p.es_contribution_usd.value, p.minimum_usd.value,
                            p.liquidity_usd.value,
                            (f"{p.liquidity_distance_bps:.1f} bp" + ("" if p.depth_covered_share >= 1 else
                                                                     f" ({p.depth_covered_share:.0%} in book)"))
                            if p.depth_curve_used else "—",
                            (f"{p.liquidation_price_usd.value} ({p.liquidation_price_basis})"
                             if p.liquidation_price_usd.value else "none")) for p in reply.positions],
                          right=["size", "loss_in_worst_grid_usd", "es_contribution_usd", "minimum_usd",
                                 "liquidity_usd", "book distance", "liquidation_price_usd"])
    underlyings = out.table("per underlying", ["underlying", "grid_margin_usd", "worst price shock",
                                               "worst vol shock", "es_contribution_usd"],
                            [(u.underlying, u.grid_margin_usd.value, f"{u.worst_price_shock:+.2%}",
                              f"{u.worst_vol_shock:+.2%}", u.es_contribution_usd.value) for u in reply.underlyings],
                            right=["grid_margin_usd", "worst price shock", "worst vol shock", "es_contribution_usd"])
    _show(summary, positions, underlyings)


# ---- accounts -----------------------------------------------------------------------------------

def _mode(p: Any) -> str:
    return _state_name(p, "mode").replace("unspecified", "cross")


@account_app.command("get")
def account_get(account: str = typer.Argument(..., help="account id"), as_json: bool = JsonOption) -> None:
    """Balances and positions of ACCOUNT."""
    pb = _pb("account.v1.account_pb2")
    with _state().client("portfolio") as client:
        s = client.call("GetAccount", pb.GetAccountRequest(account_id=_account_id(account)))
    if as_json:
        data = out.plain(s)
        data.pop("applied_offsets", None)   # consumer bookkeeping, not account data
        data.pop("recent_ids", None)
        return out.print_json(data)
    summary = out.kv(f"account {s.account_id}", [
        ("revision", s.revision), ("updated", out.ms_time(s.updated_ms)),
        ("realized_pnl_usd", s.realized_pnl_usd.value), ("fees_paid_usd", s.fees_paid_usd.value)])
    balances = out.table("balances", ["asset", "amount"], [(b.asset, b.amount.value) for b in s.balances],
                         right=["amount"])
    positions = out.table("positions", ["instrument", "size", "entry_price", "mode", "isolated_collateral_usd",
                                        "realized_pnl_usd", "fees_usd", "updated"],
                          [(p.instrument, p.size.value, p.entry_price.value, _mode(p),
                            p.isolated_collateral_usd.value, p.realized_pnl_usd.value, p.fees_usd.value,
                            out.ms_time(p.updated_ms)) for p in s.positions],
                          right=["size", "entry_price", "isolated_collateral_usd", "realized_pnl_usd", "fees_usd"])
    _show(summary, balances, positions)


@account_app.command("list")
def account_list(page_size: int = typer.Option(100, "--page-size", min=1, max=1000, help="accounts per page"),
                 page_token: str = typer.Option("", "--page-token", help="continue after a previous page"),
                 all_pages: bool = typer.Option(False, "--all", help="follow every page"),
                 as_json: bool = JsonOption) -> None:
    """Accounts, one page at a time (ordered by account id)."""
    pb = _pb("account.v1.account_pb2")
    accounts: list[Any] = []
    token = page_token
    with _state().client("portfolio") as client:
        while True:
            reply = client.call("ListAccounts", pb.ListAccountsRequest(page_size=page_size, page_token=token))
            accounts.extend(reply.accounts)
            token = reply.next_page_token
            if not all_pages or not token:
                break
    if as_json:
        return out.print_json({"accounts": [{"account_id": a.account_id, "revision": a.revision,
                                             "balances": {b.asset: b.amount.value for b in a.balances},
                                             "positions": len(a.positions), "updated_ms": a.updated_ms}
                                            for a in accounts], "next_page_token": token})
    rows = [(a.account_id, a.revision, len(a.positions), " ".join(f"{b.asset} {b.amount.value}" for b in a.balances),
             out.ms_time(a.updated_ms)) for a in accounts]
    title = f"{len(accounts)} accounts" + (f" (next page: --page-token {token})" if token else "")
    _show(out.table(title, ["account", "revision", "positions", "balances", "updated"], rows,
                    right=["revision", "positions"]))


# ---- risk parameters, marks -----------------------------------------------------------------------

@app.command("params")
def params(underlying: Optional[str] = typer.Argument(None, help="underlying (default: all)"),
           as_json: bool = JsonOption) -> None:
    """Risk parameters: σ fast/slow/GARCH/implied, σ_m, the APC buffer and why σ_m last changed."""
    pb = _pb("risk.v1.risk_pb2")
    wanted = [underlying.strip().upper()] if underlying else []
    with _state().client("riskparams") as client:
        p = client.call("GetRiskParams", pb.GetRiskParamsRequest(underlyings=wanted))
        last: dict[str, Any] = {}
        for u in p.underlyings:
            history = client.call("GetSigmaHistory", pb.GetSigmaHistoryRequest(underlying=u.underlying, limit=1))
            if history.changes:
                last[u.underlying] = history.changes[0]
    if as_json:
        return out.print_json({
            "version": p.version, "published_ms": p.meta.publish_time_ms, "event_time_ms": p.meta.event_time_ms,
            "es_confidence": p.es_confidence, "fhs_bootstrap": p.historical.bootstrap,
            "underlyings": [dict(out.plain(u), last_change=out.plain(last[u.underlying]) if u.underlying in last
                                 else None) for u in p.underlyings]})
    rows = []
    for u in p.underlyings:
        change = last.get(u.underlying)
        why = (f"{change.sigma_before:.2%} → {change.sigma_after:.2%} {change.cause} (v{change.version}, "
               f"{out.ms_time(change.event_time_ms)})" if change else "no change logged yet")
        rows.append((u.underlying, f"{u.index_price:,.2f}", out.pct(u.sigma_ewma_fast), out.pct(u.sigma_ewma_slow),
                     out.pct(u.sigma_garch) + ("" if u.garch_ok else f" ({u.garch_status})"),
                     out.pct(u.sigma_implied) if u.sigma_implied else "—", out.pct(u.sigma_floor),
                     out.pct(u.sigma_margin), out.pct(u.apc_buffer), "yes" if u.stress else "", u.returns_observed,
                     why))
    title = (f"risk parameters v{p.version}, published {out.ms_time(p.meta.publish_time_ms)}, "
             f"ES {p.es_confidence:.1%}, {'bootstrap' if p.historical.bootstrap else 'FHS'} scenarios "
             f"({p.historical.count})")
    _show(out.table(title, ["underlying", "index", "σ fast", "σ slow", "σ GARCH", "σ implied", "σ floor", "σ_m",
                            "buffer", "stress", "returns", "σ_m last changed"], rows,
                    right=["index", "σ fast", "σ slow", "σ GARCH", "σ implied", "σ floor", "σ_m", "buffer",
                           "returns"]))


@app.command("signals")
def signals(underlying: Optional[str] = typer.Argument(None, help="underlying (default: all)"),
            history: int = typer.Option(5, "--history", min=1, max=1000, help="σ_m changes shown per underlying"),
            as_json: bool = JsonOption) -> None:
    """Forward-looking inputs of riskparams: ATM vol and 25-delta skew per tenor and expiry, realised /
    implied vol, the book depth index, σ_m's recent changes."""
    pb = _pb("risk.v1.risk_pb2")
    wanted = [underlying.strip().upper()] if underlying else []
    with _state().client("riskparams") as client:
        reply = client.call("GetSignals", pb.GetSignalsRequest(underlyings=wanted, history_limit=history))
    if as_json:
        return out.print_json(out.plain(reply))

    def vol(x: float) -> str:
        return out.pct(x) if x else "—"

    us = list(reply.underlyings)
    overview = out.table(
        "signals", ["underlying", "as of", "index", "σ realised", "σ implied", "realised / implied", "σ_m",
                    "depth (thinner side)", "depth index", "depth as of"],
        [(u.underlying, out.ms_time(u.as_of_ms), f"{u.index_price:,.2f}", out.pct(u.sigma_realised),
          vol(u.sigma_implied), f"{u.realised_implied_ratio:.2f}" if u.realised_implied_ratio else "—",
          out.pct(u.sigma_margin),
          f"{u.depth_usd:,.0f} USD within {u.depth_reference_bps:g} bp of {u.depth_instrument}" if u.depth_time_ms
          else "no depth curve yet", f"{u.depth_index:.2f}" if u.depth_time_ms else "—",
          out.ms_time(u.depth_time_ms) if u.depth_time_ms else "—") for u in us],
        right=["index", "σ realised", "σ implied", "realised / implied", "σ_m", "depth index"])
    tenors = out.table("smile per tenor (total variance across expiries)",
                       ["underlying", "tenor", "ATM", "25Δ put", "25Δ call", "skew (put − call)"],
                       [(u.underlying, f"{t.tenor_days:g} d", vol(t.atm_vol), vol(t.put_25d_vol), vol(t.call_25d_vol),
                         f"{t.skew_25d * 100:+.2f} pts" if t.atm_vol else "—") for u in us for t in u.tenors],
                       right=["ATM", "25Δ put", "25Δ call", "skew (put − call)"])
    expiries = out.table("smile per listed expiry",
                         ["underlying", "expiry", "days", "ATM", "25Δ put strike", "25Δ put", "25Δ call strike",
                          "25Δ call", "skew"],
                         [(u.underlying, out.ms_time(e.expiry_ms), f"{e.days:.1f}", vol(e.atm_vol),
                           f"{e.put_25d_strike_usd:,.0f}", vol(e.put_25d_vol), f"{e.call_25d_strike_usd:,.0f}",
                           vol(e.call_25d_vol), f"{e.skew_25d * 100:+.2f} pts") for u in us for e in u.expiries],
                         right=["days", "ATM", "25Δ put strike", "25Δ put", "25Δ call strike", "25Δ call", "skew"])
    changes = out.table("σ_m recent changes (newest first)", ["underlying", "event time", "σ_m", "cause", "version"],
                        [(u.underlying, out.ms_time(c.event_time_ms), f"{c.sigma_before:.2%} → {c.sigma_after:.2%}",
                          c.cause, c.version) for u in us for c in u.sigma_history], right=["version"])
    _show(overview, tenors, *([expiries] if any(u.expiries for u in us) else []), changes)


@app.command("marks")
def marks(instruments: Optional[list[str]] = typer.Argument(None, help="instruments (default: all)"),
          underlying: Optional[str] = typer.Option(None, "--underlying", help="only this underlying's instruments"),
          as_json: bool = JsonOption) -> None:
    """Latest index and mark prices with their event-time age."""
    pb = _pb("marketdata.v1.marketdata_pb2")
    with _state().client("marketdata") as client:
        reply = client.call("GetMarks", pb.GetMarksRequest(instruments=instruments or []))
    selected = [m for m in reply.marks if not underlying or m.underlying == underlying.strip().upper()]
    if as_json:
        return out.print_json({"marks": [out.plain(m) for m in selected]})
    now_ms = time.time() * 1000
    rows = [(m.instrument, m.underlying, f"{m.mark_price:,.4f}", f"{m.index_price:,.4f}", f"{m.basis:+,.4f}",
             out.pct(m.implied_vol) if m.implied_vol else "", out.ms_time(m.meta.event_time_ms),
             out.age(max(0.0, (now_ms - m.meta.event_time_ms) / 1000))) for m in selected]
    _show(out.table(f"{len(rows)} marks", ["instrument", "underlying", "mark", "index", "basis", "IV", "event time",
                                           "age"], rows, right=["mark", "index", "basis", "IV", "age"]))


# ---- liquidation ------------------------------------------------------------------------------------

@app.command("fund")
def fund(as_json: bool = JsonOption) -> None:
    """The insurance fund's balance."""
    pb = _pb("liquidation.v1.liquidation_pb2")
    with _state().client("liquidation") as client:
        f = client.call("GetInsuranceFund", pb.GetInsuranceFundRequest())
    if as_json:
        return out.print_json(out.plain(f))
    _show(out.kv("insurance fund", [("balance_usd", f.balance_usd.value), ("updated", out.ms_time(f.updated_ms))]))


@app.command("liquidations")
def liquidations(account: str = typer.Option("", "--account", help="only this account"),
                 limit: int = typer.Option(50, "--limit", min=1, max=10000, help="most recent events"),
                 as_json: bool = JsonOption) -> None:
    """Recent liquidation events (orders, fills, fees, deficits, ADL)."""
    pb = _pb("liquidation.v1.liquidation_pb2")
    with _state().client("liquidation") as client:
        reply = client.call("ListLiquidations", pb.ListLiquidationsRequest(account_id=account.strip(), limit=limit))
    if as_json:
        return out.print_json({"events": [out.plain(e) for e in reply.events]})
    rows = [(out.ms_time(e.meta.event_time_ms), _state_name(e, "kind"), e.account_id, e.episode, e.instrument,
             e.size.value, e.amount_usd.value, e.fund_balance_usd.value, e.order_id or e.counterparty_account_id,
             e.detail) for e in reply.events]
    _show(out.table(f"{len(rows)} liquidation events", ["time", "kind", "account", "episode", "instrument", "size",
                                                        "amount_usd", "fund_balance_usd", "order / counterparty",
                                                        "detail"], rows,
                    right=["episode", "size", "amount_usd", "fund_balance_usd"]))


@app.command("audit")
def audit(limit: int = typer.Option(50, "--limit", min=1, max=100000, help="most recent events"),
          method: str = typer.Option("", "--method", help="only methods containing this (Deposit, Pause, ...)"),
          principal: str = typer.Option("", "--who", help="only this token id, certificate name or role"),
          as_json: bool = JsonOption) -> None:
    """The audit trail: every admin call (who, what, when, result), from the audit.events topic."""
    from marginflow.shared.audit import read_audit
    from marginflow.shared.config import CommonSettings, load
    from marginflow.shared.kafka import use_security

    try:
        common = load(CommonSettings)
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_BAD_ARGUMENT) from None
    use_security(common.kafka_security.client_options())
    try:
        events = read_audit(common.bootstrap, common.topics.audit, timeout_s=max(_state().timeout_s, 5.0))
    except Exception as exc:  # noqa: BLE001 - Kafka down or the topic unreadable: one line, exit 3
        raise CliError(f"audit trail not readable from Kafka at {common.bootstrap}: {exc}", 3) from None
    events = [e for e in events if method in e.method
              and (not principal or principal in (e.principal_id, e.role))][-limit:]
    if as_json:
        return out.print_json({"events": [out.plain(e) for e in events]})
    rows = [(out.ms_time(e.time_ms), e.service, e.method.rsplit("/", 1)[-1], f"{e.role} {e.principal_id}",
             e.result_code, e.request_summary[:80], e.result_detail[:60]) for e in events]
    _show(out.table(f"{len(rows)} audit events", ["time", "service", "call", "who", "result", "request", "detail"],
                    rows))


# ---- admin ---------------------------------------------------------------------------------------------

def _admin_client() -> Client:
    token = os.environ.get("MF_ADMIN_TOKEN", "")
    if not token:
        from marginflow.shared.security import client_settings

        try:
            token = client_settings().auth_token
        except ConfigError as exc:
            raise CliError(str(exc), EXIT_BAD_ARGUMENT) from None
    if not token:
        raise CliError("MF_ADMIN_TOKEN is not set: admin calls need the platform's admin token", EXIT_BAD_ARGUMENT)
    return _state().client("portfolio", token)


def _admin_reply(reply: Any, what: str, as_json: bool) -> None:
    if as_json:
        return out.print_json(out.plain(reply))
    _show(out.kv(what, [("accepted", "yes" if reply.accepted else "no"), ("event_id", reply.event_id)]))
    if not reply.accepted:
        raise typer.Exit(1)


RequestId = typer.Option("", "--request-id", help="idempotency key (default: a new random one)")


def _request_id(given: str) -> str:
    return given.strip() or f"cli-{uuid.uuid4().hex}"


@admin_app.command("deposit", context_settings=NUMBERS)
def admin_deposit(account: str = typer.Argument(...), asset: str = typer.Argument(..., help="USDC, BTC, ..."),
                  amount: str = typer.Argument(..., help="asset units, > 0"), request_id: str = RequestId,
                  as_json: bool = JsonOption) -> None:
    """Credit AMOUNT of ASSET to ACCOUNT."""
    pb = _pb("account.v1.account_pb2")
    request = pb.AdminDepositRequest(account_id=_account_id(account), asset=asset.strip().upper(),
                                     request_id=_request_id(request_id))
    request.amount.value = _decimal(amount, "AMOUNT", positive=True)
    with _admin_client() as client:
        reply = client.call("Deposit", request, admin=True)
    _admin_reply(reply, f"deposit {request.amount.value} {request.asset} to {request.account_id}", as_json)


@admin_app.command("withdraw", context_settings=NUMBERS)
def admin_withdraw(account: str = typer.Argument(...), asset: str = typer.Argument(..., help="USDC, BTC, ..."),
                   amount: str = typer.Argument(..., help="asset units, > 0"), request_id: str = RequestId,
                   as_json: bool = JsonOption) -> None:
    """Debit AMOUNT of ASSET from ACCOUNT."""
    pb = _pb("account.v1.account_pb2")
    request = pb.AdminWithdrawRequest(account_id=_account_id(account), asset=asset.strip().upper(),
                                      request_id=_request_id(request_id))
    request.amount.value = _decimal(amount, "AMOUNT", positive=True)
    with _admin_client() as client:
        reply = client.call("Withdraw", request, admin=True)
    _admin_reply(reply, f"withdraw {request.amount.value} {request.asset} from {request.account_id}", as_json)


@admin_app.command("set-mode", context_settings=NUMBERS)
def admin_set_mode(account: str = typer.Argument(...), instrument: str = typer.Argument(...),
                   mode: str = typer.Argument(..., help="cross or isolated"), request_id: str = RequestId,
                   as_json: bool = JsonOption) -> None:
    """Set the margin mode of ACCOUNT's position in INSTRUMENT."""
    pb = _pb("account.v1.account_pb2")
    modes = {"cross": pb.MARGIN_MODE_CROSS, "isolated": pb.MARGIN_MODE_ISOLATED}
    if mode.strip().lower() not in modes:
        raise CliError(f"MODE must be cross or isolated, got {mode!r}", EXIT_BAD_ARGUMENT)
    request = pb.AdminSetModeRequest(account_id=_account_id(account), instrument=instrument.strip(),
                                     mode=modes[mode.strip().lower()], request_id=_request_id(request_id))
    with _admin_client() as client:
        reply = client.call("SetMarginMode", request, admin=True)
    _admin_reply(reply, f"{request.instrument} of {request.account_id} → {mode.strip().lower()}", as_json)


@admin_app.command("transfer-isolated", context_settings=NUMBERS)
def admin_transfer_isolated(account: str = typer.Argument(...), instrument: str = typer.Argument(...),
                            amount_usd: str = typer.Argument(..., help="USD, > 0 into the position, < 0 out of it"),
                            request_id: str = RequestId, as_json: bool = JsonOption) -> None:
    """Move collateral into (or out of) ACCOUNT's isolated position in INSTRUMENT."""
    pb = _pb("account.v1.account_pb2")
    request = pb.AdminTransferIsolatedRequest(account_id=_account_id(account), instrument=instrument.strip(),
                                              request_id=_request_id(request_id))
    request.amount_usd.value = _decimal(amount_usd, "AMOUNT_USD", nonzero=True)
    with _admin_client() as client:
        reply = client.call("TransferIsolated", request, admin=True)
    _admin_reply(reply, f"transfer {request.amount_usd.value} USD to {request.instrument} of {request.account_id}",
                 as_json)


# ---- status -----------------------------------------------------------------------------------------------

@app.command("status")
def status(once: bool = typer.Option(False, "--once", help="render one frame as text and exit"),
           interval: float = typer.Option(1.0, "--interval", min=0.2, help="seconds between refreshes"),
           as_json: bool = JsonOption) -> None:
    """Live view of the platform: what is up, rates, ages, versions, states, lag, dead letters, the fund."""
    from marginflow.cli import status as status_view

    state = _state()
    try:
        eps = endpoints(host=state.host)
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_BAD_ARGUMENT) from None
    collector = status_view.Collector(eps, timeout_s=min(state.timeout_s, 1.0))
    try:
        if once or as_json:
            snapshot = collector.sample_pair(interval)
            if as_json:
                return out.print_json(status_view.as_json(snapshot))
            out.console().print(status_view.render(snapshot))
            return
        status_view.live(collector, interval)
    finally:
        collector.close()


# ---- entry point ----------------------------------------------------------------------------------------

def _fail(message: str, code: int) -> None:
    sys.stderr.write(f"marginflow: {message}\n")
    sys.stderr.flush()
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Console script ``marginflow``: every failure is one line on stderr and a non-zero exit code."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="marginflow", standalone_mode=False)
    except CliError as exc:
        _fail(str(exc), exc.exit_code)
    except typer.Abort:
        _fail("aborted", 130)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    except Exception as exc:
        # typer carries its own click; its usage errors are recognised by their interface, not imported.
        if not (hasattr(exc, "format_message") and hasattr(exc, "exit_code")):
            raise
        if type(exc).__name__ == "NoArgsIsHelpError":    # a bare group: its help, as click shows it
            sys.stderr.write(exc.format_message() + "\n")
            sys.exit(EXIT_BAD_ARGUMENT)
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None and exc.exit_code == 2 else ""
        _fail(f"{exc.format_message()}{hint}", exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
