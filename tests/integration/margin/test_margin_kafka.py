"""Margin service end to end on the real Kafka: risk params + marks + snapshots in, margin.state and
margin.calls out, bad payloads to margin.dlq while the service goes on."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
from prometheus_client import REGISTRY

import marginflow.core as core
from marginflow.api.common.v1 import common_pb2
from marginflow.api.margin.v1 import margin_pb2

from margin_it_helpers import HIST, UNDERLYINGS, mark, risk_params, snapshot, wait_for


def direct_im(positions, marks, params) -> float:
    """IM of one cross account straight from marginflow.core, built here from the published inputs."""
    names = [p[0] for p in positions]
    und = np.array([UNDERLYINGS.index(n.split("-")[0]) for n in names], dtype=np.int32)
    forward = np.array([marks[n] for n in names])
    g = params.grids[0]
    G = [(p, v) for p in g.price_shocks for v in g.vol_shocks]
    rows_p = [[p] * 3 for p, _ in G] + [[t] * 3 for t in g.tail_price_shocks] + [[h] * 3 for h in HIST]
    rows_v = [[v] * 3 for _, v in G] + [[0.0] * 3 for _ in g.tail_price_shocks] + [[0.0] * 3 for _ in HIST]
    k = len(names)
    risk = core.risk_arrays(np.zeros(k, np.int8), und, forward, np.zeros(k), np.zeros(k), np.zeros(k), np.ones(k),
                            np.array(rows_p), np.array(rows_v), horizon_years=1 / 365, vol_shock_relative=True)
    model = core.MarginModel(risk, und, len(G), np.array(list(g.tail_weights)), 0.99, forward, forward,
                             np.full(k, 0.0001), np.full(k, 1000.0), np.tile([0.0, 1e6, 5e6, 20e6], (3, 1)),
                             np.tile([0.01, 0.02, 0.05, 0.10], (3, 1)), 0.5)
    out = model.compute(np.array([0, k], np.int64), np.arange(k, dtype=np.int32),
                        np.array([float(p[1]) for p in positions]), np.zeros(k, np.uint8))
    return float(out["im"][0])


def states_of(consume_all, bootstrap, topic, n=0):
    out = {}
    for rec in consume_all(bootstrap, topic, expect_at_least=n, timeout_s=2.0):
        msg = margin_pb2.MarginState.FromString(rec.value)
        out.setdefault(msg.account_id, []).append(msg)
    return out


def test_state_matches_core_mark_move_calls_and_bad_input_is_dead_lettered(mg_settings, publish, start_margin,
                                                                          consume_all, kafka_bootstrap):
    topics = mg_settings.common.topics
    params = risk_params()
    publish(topics.risk_params, "current", params)
    marks = {"BTC-PERP": 60000.0, "ETH-PERP": 3000.0}
    for sym, price in marks.items():
        publish(topics.marks, sym, mark(sym, sym.split("-")[0], price))
    book_a = [("BTC-PERP", "1", "60000")]
    book_b = [("BTC-PERP", "-0.5", "60000"), ("ETH-PERP", "4", "3000")]
    publish(topics.positions, "a", snapshot("a", book_a, "10000"))
    publish(topics.positions, "b", snapshot("b", book_b, "50000"))
    app = start_margin()

    got = wait_for(lambda: (lambda s: s if {"a", "b"} <= set(s) else None)(
        states_of(consume_all, kafka_bootstrap, topics.margin_state)))
    for account, positions in (("a", book_a), ("b", book_b)):
        state = got[account][-1]
        expected = direct_im(positions, marks, params)
        assert Decimal(state.im_usd.value) == Decimal(repr(expected)).quantize(Decimal("0.01"), rounding="ROUND_CEILING")
        assert state.risk_params_version == 1 and state.marks_fresh
    a = got["a"][-1]
    assert a.state == margin_pb2.HEALTH_STATE_HEALTHY and a.equity_usd.value == "10000.00"
    assert Decimal(a.im_usd.value) == Decimal("9006.00")      # worst historical 15 % of 60,000 + 6 spread

    # Malformed payloads: a mark that is not a Mark, an implausible mark, a snapshot with an unknown instrument.
    publish(topics.marks, "BTC-PERP", raw=b"\xff\xff\xff garbage")
    publish(topics.marks, "BTC-PERP", mark("BTC-PERP", "BTC", float("nan")))
    publish(topics.positions, "c", snapshot("c", [("DOGE-PERP", "1", "1")], "10"))
    # The service goes on: the mark move (equity 9,000 < IM 9,006.00) makes a margin call once it
    # has held for the confirmation window (the shortfall is inside the immediate band).
    publish(topics.marks, "BTC-PERP", mark("BTC-PERP", "BTC", 59000.0))
    def calls_of_a():
        records = consume_all(kafka_bootstrap, topics.margin_calls, expect_at_least=1, timeout_s=1.0)
        return [margin_pb2.MarginCall.FromString(r.value) for r in records if r.key == b"a"]

    call = wait_for(calls_of_a)[0]           # a's first margin call: the one the mark move caused
    assert call.account_id == "a"
    assert call.state == margin_pb2.HEALTH_STATE_MARGIN_CALL
    assert call.previous_state == margin_pb2.HEALTH_STATE_HEALTHY
    assert call.equity_usd.value == "9000.00" and call.shortfall_usd.value == "6.00"
    after = wait_for(lambda: [s for s in states_of(consume_all, kafka_bootstrap, topics.margin_state).get("a", [])
                              if s.state == margin_pb2.HEALTH_STATE_MARGIN_CALL])
    assert after[-1].equity_usd.value == "9000.00"

    letters = wait_for(lambda: (lambda r: r if len(r) >= 3 else None)(
        consume_all(kafka_bootstrap, topics.margin_dlq, expect_at_least=3, timeout_s=1.0)))
    reasons = sorted(common_pb2.DeadLetter.FromString(r.value).reason_code for r in letters)
    assert reasons == ["malformed", "non_finite", "unknown_instrument"]
    assert app.engine.version == 1 and "c" not in app.engine.row_of


def test_new_risk_params_version_recalculates_and_restart_rebuilds(mg_settings, publish, start_margin,
                                                                   consume_all, kafka_bootstrap):
    topics = mg_settings.common.topics
    publish(topics.risk_params, "current", risk_params(1))
    publish(topics.marks, "SOL-PERP", mark("SOL-PERP", "SOL", 150.0))
    publish(topics.positions, "s", snapshot("s", [("SOL-PERP", "-100", "150")], "5000"))
    app = start_margin()
    wait_for(lambda: app.engine.row_of.get("s") is not None and app.engine.version == 1)
    first = app.engine.get_margin("s")
    bigger = risk_params(2)
    del bigger.historical.returns[:]
    bigger.historical.returns.extend(np.repeat(2 * HIST, 3).tolist())    # ±30 %: ES doubles
    publish(topics.risk_params, "current", bigger)
    wait_for(lambda: app.engine.version == 2)
    second = app.engine.get_margin("s")
    assert second.es_usd == first.es_usd * 2
    # A second instance (same group, after the first stops) rebuilds the account from the compacted topic.
    start_margin.stop(app)
    app2 = start_margin()
    wait_for(lambda: app2.engine.row_of.get("s") is not None and app2.engine.version == 2, timeout_s=20)
    assert app2.engine.get_margin("s").im_usd == second.im_usd


def test_bad_records_on_every_input_topic_are_dead_lettered_and_the_service_goes_on(
        mg_settings, publish, start_margin, consume_all, kafka_bootstrap, produce_compressed):
    topics = mg_settings.common.topics
    publish(topics.risk_params, "current", risk_params())
    publish(topics.marks, "BTC-PERP", mark("BTC-PERP", "BTC", 60000.0))
    publish(topics.positions, "a", snapshot("a", [("BTC-PERP", "1", "60000")], "10000"))
    app = start_margin()
    wait_for(lambda: "a" in app.engine.row_of and app.engine.version == 1)
    dlq = topics.margin_dlq
    before = {r: REGISTRY.get_sample_value("marginflow_dead_letters_total",
                                           {"service": "margin", "topic": dlq, "reason": r}) or 0.0
              for r in ("oversized", "key_mismatch", "empty_payload", "implausible", "underlying_mismatch")}

    huge = mark("BTC-PERP", "BTC", 61000.0)
    huge.meta.source = "x" * (1024 * 1024)
    produce_compressed(kafka_bootstrap, topics.marks, b"BTC-PERP", huge.SerializeToString())    # oversized
    publish(topics.marks, "ETH-PERP", mark("BTC-PERP", "BTC", 1.0))                             # key ≠ instrument
    publish(topics.marks, "BTC-PERP", mark("BTC-PERP", "ETH", 1.0))                             # wrong underlying
    publish(topics.positions, "a", raw=b"")                                                     # empty payload
    publish(topics.positions, "z", snapshot("a", [("BTC-PERP", "5", "60000")], "1"))            # key ≠ account
    publish(topics.positions, "a", snapshot("a", [("BTC-PERP", "1", "60000")], "1e400"))        # beyond a float
    # Valid records after the garbage are still applied.
    publish(topics.marks, "BTC-PERP", mark("BTC-PERP", "BTC", 59000.0))
    publish(topics.positions, "b", snapshot("b", [("BTC-PERP", "-1", "60000")], "20000"))

    letters = wait_for(lambda: (lambda r: r if len(r) >= 6 else None)(
        consume_all(kafka_bootstrap, dlq, expect_at_least=6, timeout_s=1.0)), timeout_s=30)
    decoded = [common_pb2.DeadLetter.FromString(r.value) for r in letters]
    assert sorted(d.reason_code for d in decoded) == sorted(
        ["oversized", "key_mismatch", "underlying_mismatch", "empty_payload", "key_mismatch", "implausible"])
    assert all(d.service == "margin" and d.reason for d in decoded)
    wait_for(lambda: "b" in app.engine.row_of and app.engine.get_margin("a").equity_usd == 9000.0)
    assert app.engine.get_margin("b").equity_usd == 21000.0          # 20,000 + 1 × (60,000 − 59,000)
    for reason, n in (("oversized", 1), ("key_mismatch", 2), ("empty_payload", 1), ("implausible", 1),
                      ("underlying_mismatch", 1)):
        assert REGISTRY.get_sample_value("marginflow_dead_letters_total",
                                         {"service": "margin", "topic": dlq, "reason": reason}) == before[reason] + n
