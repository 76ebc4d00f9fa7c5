"""The chaos harness's pure checks: the fill plan, the fold, call and order consistency, the report."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest

from marginflow.chaos.domain import calls as cc
from marginflow.chaos.domain.fills import FillPlan, Tradable, coprime_stride, tradables_of
from marginflow.chaos.domain.fold import Fold, Observed, compare
from marginflow.chaos.domain.report import FaultResult, markdown
from marginflow.shared.universe import load_universe

AS_OF_MS = 1_764_547_200_000   # 2025-12-01T00:00Z


def test_plan_is_deterministic_spread_and_in_whole_lots():
    u = load_universe(None, AS_OF_MS)
    tradables = tradables_of(u, AS_OF_MS)
    assert {t.symbol for t in tradables} >= {"BTC-PERP", "ETH-PERP", "SOL-PERP"}
    lots = {i.symbol: Decimal(repr(i.lot_size)) for i in u.instruments.values()}
    ticks = {i.symbol: Decimal(repr(i.tick_size_usd)) for i in u.instruments.values()}
    accounts = [f"a{i}" for i in range(1000)]
    plan, again = FillPlan("r", accounts, tradables), FillPlan("r", accounts, tradables)
    fills = [plan.fill(s) for s in range(1000)]
    assert fills == [again.fill(s) for s in range(1000)]
    assert len({f.account_id for f in fills}) == 1000          # N consecutive fills: every account once
    assert len({f.fill_id for f in fills}) == 1000
    for f in fills:
        assert f.size > 0 and f.size % lots[f.instrument] == 0
        assert f.price_usd > 0 and f.price_usd % ticks[f.instrument] == 0


def test_stride_is_coprime():
    import math
    for n in (1, 2, 10, 1000, 100_000, 99_991):
        assert math.gcd(coprime_stride(n), n) == 1


def test_fold_counts_each_fill_id_once_and_takes_back_dead_letters():
    fold = Fold()
    fold.add_event("d0", "a")
    fold.add_fill("f1", "a", "BTC-PERP", 1, Decimal("0.003"))
    fold.add_fill("f1", "a", "BTC-PERP", 1, Decimal("0.003"))     # a redelivery: same id
    fold.add_fill("f2", "a", "BTC-PERP", 2, Decimal("0.001"))
    fold.add_fill("f3", "a", "ETH-PERP", 2, Decimal("0.5"))
    assert fold.duplicates == 1 and fold.fills == 3
    assert fold.reject("f:f3")
    fold.unfold_fill("a", "ETH-PERP", 2, Decimal("0.5"))
    acct = fold.accounts["a"]
    assert acct.positions == {"BTC-PERP": Decimal("0.002")} and acct.inputs == 3
    assert compare(fold.accounts, {"a": Observed(3, {"BTC-PERP": Decimal("0.0020")})}) == []


def test_compare_names_a_double_application_even_when_sizes_cancel():
    fold = Fold()
    fold.add_fill("f1", "a", "BTC-PERP", 1, Decimal("1"))
    fold.add_fill("f2", "a", "BTC-PERP", 2, Decimal("1"))
    got = compare(fold.accounts, {"a": Observed(3, {})})
    assert [m.what for m in got] == ["revision"]
    got = compare(fold.accounts, {"a": Observed(2, {"BTC-PERP": Decimal("1")})})
    assert [m.what for m in got] == ["position"]
    assert [m.what for m in compare(fold.accounts, {})] == ["missing"]


def call(state, previous, episode=0, e="50", im="100", mm="50", rev=5, offset="0:1"):
    return cc.Call("a", offset, state, previous, episode, Decimal(e), Decimal(im), Decimal(mm), rev, 1)


def test_history_accepts_a_chain_and_flags_a_forgotten_state():
    h = cc.CallHistory()
    assert h.check(call(cc.MARGIN_CALL, cc.UNSPECIFIED)) is None         # first evaluation
    assert h.check(call(cc.LIQUIDATION, cc.MARGIN_CALL)) is None
    assert h.check(call(cc.MARGIN_CALL, cc.HEALTHY)) is None             # went healthy in between
    bad = h.check(call(cc.LIQUIDATION, cc.UNSPECIFIED))                  # a restart that forgot
    assert bad is not None and bad.rule == "history"
    assert h.check(call(cc.MARGIN_CALL, cc.BANKRUPT)).rule == "history"  # the last call was LIQUIDATION


def test_history_allows_an_improvement_published_without_a_call():
    h = cc.CallHistory()
    assert h.check(call(cc.BANKRUPT, cc.HEALTHY, episode=1)) is None
    # solvent again: BANKRUPT → LIQUIDATION went out on margin.state only, then bankrupt again
    assert h.check(call(cc.BANKRUPT, cc.LIQUIDATION, episode=1)) is None
    assert h.check(call(cc.LIQUIDATION, cc.MARGIN_CALL, episode=1)) is None
    # from a worse state than the last call's: that state was entered without a call
    assert h.check(call(cc.BANKRUPT, cc.LIQUIDATION, episode=1)) is None
    bad = cc.CallHistory()
    bad.check(call(cc.MARGIN_CALL, cc.HEALTHY, episode=2))
    assert bad.check(call(cc.BANKRUPT, cc.LIQUIDATION, episode=2)).rule == "history"
    # an improvement stays in its episode
    assert h.check(call(cc.LIQUIDATION, cc.MARGIN_CALL, episode=2)).rule == "history"


def test_history_with_episodes():
    h = cc.CallHistory()
    assert h.check(call(cc.MARGIN_CALL, cc.HEALTHY, episode=1)) is None
    assert h.check(call(cc.MARGIN_CALL, cc.HEALTHY, episode=1)).rule == "history"   # same episode again
    assert h.check(call(cc.LIQUIDATION, cc.MARGIN_CALL, episode=1)) is None


def test_numbers_rule():
    assert cc.check_numbers(call(cc.LIQUIDATION, cc.HEALTHY, e="49.99"), False) is None
    assert cc.check_numbers(call(cc.LIQUIDATION, cc.HEALTHY, e="50"), False).rule == "numbers"   # e = MM: MC
    assert cc.check_numbers(call(cc.LIQUIDATION, cc.HEALTHY, e="50"), True) is None              # isolated: skip
    assert cc.check_numbers(call(cc.MARGIN_CALL, cc.LIQUIDATION, e="50.5"), False) is None       # hysteresis
    assert cc.check_numbers(call(cc.MARGIN_CALL, cc.LIQUIDATION, e="10"), False).rule == "numbers"


def test_recomputation_rule_only_at_the_same_revision_and_only_across_the_band():
    c = call(cc.LIQUIDATION, cc.HEALTHY, e="40")
    healthy = cc.Fresh(cc.HEALTHY, Decimal("120"), Decimal("100"), Decimal("50"), 5, 1, False)
    assert cc.check_recomputation(c, healthy)[1].rule == "recomputation"
    moved = cc.Fresh(cc.MARGIN_CALL, Decimal("60"), Decimal("100"), Decimal("50"), 5, 1, False)
    assert cc.check_recomputation(c, moved) == (True, None)
    traded = cc.Fresh(cc.HEALTHY, Decimal("120"), Decimal("100"), Decimal("50"), 6, 1, False)
    assert cc.check_recomputation(c, traded) == (False, None)
    # a new risk version may release margin without bound: not the same inputs
    released = cc.Fresh(cc.HEALTHY, Decimal("120"), Decimal("30"), Decimal("15"), 5, 2, False)
    assert cc.check_recomputation(c, released) == (False, None)
    assert cc.same_inputs(c, released, 5, True) is False


def test_a_contradicted_call_names_the_parts_of_both_requirements():
    parts = lambda im, liq: cc.Parts(Decimal(im), Decimal("10"), Decimal(im), Decimal("1"), Decimal(liq))  # noqa: E731
    c = dataclasses.replace(call(cc.LIQUIDATION, cc.HEALTHY, e="40"), parts=parts("100", "0"))
    healthy = cc.Fresh(cc.HEALTHY, Decimal("120"), Decimal("30"), Decimal("15"), 5, 1, False, parts("30", "0"))
    detail = cc.check_recomputation(c, healthy)[1].detail
    assert "the call's cross IM 100 = grid 10 | ES 100" in detail
    assert "the recomputation's cross IM 30 = grid 10 | ES 30" in detail
    # a margin that does not say: the detail without them
    bare = cc.check_recomputation(dataclasses.replace(c, parts=None), healthy)[1].detail
    assert "cross IM" not in bare


def test_an_order_id_seen_twice_is_a_doubled_order():
    seen: set[str] = set()
    assert cc.check_order(cc.Order("a:1:0", "a", "0:1", 1), seen) == []
    assert cc.check_order(cc.Order("a:1:1", "a", "0:2", 1), seen) == []
    assert [c.rule for c in cc.check_order(cc.Order("a:1:0", "a", "0:3", 1), seen)] == ["duplicate_order"]


def test_an_episode_is_judged_only_at_the_version_and_revision_it_names_and_only_across_the_band():
    # Fresh(state, equity, IM, MM, account revision, risk version, has isolated)
    start = cc.Start("a", "0:9", 2, risk_version=7, account_revision=5, marks_time_ms=1000)
    healthy = cc.Fresh(cc.HEALTHY, Decimal("189"), Decimal("27"), Decimal("13"), 5, 7, False)
    assert cc.start_inputs_match(start, healthy)
    assert not cc.start_inputs_match(start, cc.Fresh(cc.HEALTHY, Decimal("189"), Decimal("27"), Decimal("13"), 5, 8, False))
    assert not cc.start_inputs_match(start, cc.Fresh(cc.HEALTHY, Decimal("189"), Decimal("27"), Decimal("13"), 6, 7, False))
    assert not cc.start_inputs_match(start, None)
    assert cc.check_start(start, healthy).rule == "episode_unfounded"
    # between MM and IM (a model rebuilt at later marks, a mark not yet delivered): not a contradiction
    assert cc.check_start(start, cc.Fresh(cc.MARGIN_CALL, Decimal("20"), Decimal("27"), Decimal("13"), 5, 7, False)) is None
    # an isolated part below its MM with the totals above IM: the state says so
    assert cc.check_start(start, cc.Fresh(cc.LIQUIDATION, Decimal("30"), Decimal("27"), Decimal("13"), 5, 7, True)) is None
    assert start.names_inputs and not cc.Start("a", "0:1", 1, 7, 0, 1000).names_inputs


def test_report_markdown():
    ok = FaultResult("kill -9 margin", 3.2, 4.0, 1000, 10)
    bad = FaultResult("restart Kafka", mismatches=2, notes=["a: position expected 1, got 2"])
    text = markdown([ok, bad], "header")
    assert "| kill -9 margin | 3.2 | 4.0 | — | 1,000 | 10 | 0 |" in text and "VIOLATION" in text
    assert "- restart Kafka: a: position" in text and ok.ok and not bad.ok


def test_stale_marks_cap_the_raw_state_at_margin_call():
    stale = cc.Call("a", "0:1", cc.MARGIN_CALL, cc.LIQUIDATION, 0, Decimal("10"), Decimal("100"), Decimal("50"), 5, 1,
                    marks_fresh=False)
    assert cc.check_numbers(stale, False) is None
    fresh = dataclasses.replace(stale, marks_fresh=True)
    assert cc.check_numbers(fresh, False).rule == "numbers"


def test_a_call_without_revision_is_compared_when_no_input_followed_it():
    c = call(cc.LIQUIDATION, cc.HEALTHY, e="40", rev=0)
    healthy = cc.Fresh(cc.HEALTHY, Decimal("120"), Decimal("100"), Decimal("50"), 7, 1, False)
    assert cc.same_inputs(c, healthy, 7, no_input_since_call=True)
    assert not cc.same_inputs(c, healthy, 7, no_input_since_call=False)
    assert not cc.same_inputs(c, healthy, 8, no_input_since_call=True)
    assert cc.check_recomputation(c, healthy, True)[1].rule == "recomputation"


def test_faults_named_on_the_command_line_are_parsed_in_order_and_a_bad_name_is_refused():
    from marginflow.chaos.application import Fault, parse_faults

    services = ["marketdata", "portfolio", "margin"]
    assert parse_faults("redis_restart, kill:portfolio,sigstop:margin", services) == [
        Fault("redis_restart"), Fault("kill", "portfolio"), Fault("sigstop", "margin")]
    for bad, words in (("reboot", "unknown fault"), ("kill", "name a service"), ("redis_flush:margin", "name a service"),
                       ("kill:riskparams", "no service 'riskparams'"), ("sigstop:marketdata", "SIGSTOP is for")):
        with pytest.raises(ValueError, match=words):
            parse_faults(bad, services)
