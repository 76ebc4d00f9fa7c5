"""GetMargin and WhatIf answered through the servicer from kept answers and kept encodings: the same bytes
as encoding the account margined alone, and never stale — moved marks, a trade, a new risk version and a
change of the published state each change the reply at once."""

from __future__ import annotations

import dataclasses

import pytest

from marginflow.api.common.v1 import common_pb2
from marginflow.api.margin.v1 import margin_pb2 as pb
from marginflow.margin.adapters import codec
from marginflow.margin.adapters.grpc_api import EncodedAnswers, MarginServicer, state_fanout
from marginflow.margin.domain.health import Health
from marginflow.margin.domain.trades import TradeDelta

from margin_unit_helpers import T0, book, mark, risk_version

BTC, ETH, CALL = 0, 1, 2
NOW_MS = T0 + 123


class _Context:
    def invocation_metadata(self):
        return ()

    def abort(self, code, details):
        raise AssertionError(f"aborted: {code} {details}")


def _servicer(engine):
    return MarginServicer(engine, state_fanout(), clock_ms=lambda: NOW_MS)


def _get(servicer, account):
    return servicer.GetMargin(pb.GetMarginRequest(account_id=account), _Context())


def _what_if(servicer, account, instrument="ETH-PERP", size="1"):
    trade = pb.TradeDelta(instrument=instrument, size=common_pb2.Decimal(value=size))
    return servicer.WhatIf(pb.WhatIfRequest(account_id=account, trades=[trade]), _Context())


def _alone(engine, account_id, liquidation_prices=True):
    """The account margined alone at the market now, as reported (nothing kept)."""
    q = engine.queries
    b, model = q.require(account_id)
    return q.reported(q.margin_of(q.single(b, model), model, liquidation_prices=liquidation_prices))


def _wire(margin):
    return codec.margin_state(margin, publish_ms=NOW_MS).SerializeToString()


def _accounts(make_engine):
    engine, pub, clock = make_engine()
    engine.apply_snapshots([
        book("a", [(CALL, -1.0, 3000.0, 1, 20000.0), (BTC, 1.0, 60000.0, 1, 20000.0), (ETH, 2.0, 3000.0, 0, 0.0)],
             {"USDC": 10000.0, "BTC": 0.1}),
        book("b", [(BTC, -0.5, 61000.0, 0, 0.0), (CALL, 2.0, 2900.0, 0, 0.0)], {"USDC": 5000.0}),
        book("c", [(BTC, 1.0, 60000.0, 0, 0.0)], {"USDC": 6000.0})])    # MM ≤ equity < IM: a margin call
    engine.apply_risk_params(risk_version())
    return engine, pub, clock


def test_replies_are_the_account_margined_alone_and_a_repeat_is_the_same_bytes(make_engine):
    engine, _, _ = _accounts(make_engine)
    servicer = _servicer(engine)
    for account in ("a", "b"):
        first = _get(servicer, account)
        assert first.SerializeToString() == _wire(_alone(engine, account))
        assert first.meta.publish_time_ms == NOW_MS
        assert _get(servicer, account).SerializeToString() == first.SerializeToString()
        reply = _what_if(servicer, account)
        before, after = engine.what_if(account, [TradeDelta(ETH, 1.0)])
        assert reply.before.SerializeToString() == _wire(_alone(engine, account, liquidation_prices=False))
        assert reply.before.SerializeToString() == _wire(before)
        assert reply.after.SerializeToString() == _wire(after)
        assert _what_if(servicer, account).SerializeToString() == reply.SerializeToString()
    # a reply is a copy: changing it changes neither the kept message nor the next reply
    reply = _get(servicer, "a")
    reply.equity_usd.value = "1.00"
    assert _get(servicer, "a").SerializeToString() == _wire(_alone(engine, "a"))


def test_moved_marks_change_the_replies_after_the_evaluation(make_engine):
    engine, _, clock = _accounts(make_engine)
    servicer = _servicer(engine)
    first, first_what_if = _get(servicer, "a"), _what_if(servicer, "a")
    engine.apply_marks([mark(BTC, 59000.0, T0 + 1000), mark(CALL, 2600.0, T0 + 1000, index=59000.0, iv=0.5),
                        mark(ETH, 2900.0, T0 + 1000)])
    clock.advance(1000)
    engine.evaluate()
    moved = _get(servicer, "a")
    assert moved.equity_usd.value != first.equity_usd.value
    assert moved.isolated[0].liquidation_price_usd.value != first.isolated[0].liquidation_price_usd.value
    assert moved.SerializeToString() == _wire(_alone(engine, "a"))
    moved_what_if = _what_if(servicer, "a")
    assert moved_what_if.before.equity_usd.value != first_what_if.before.equity_usd.value
    assert moved_what_if.before.SerializeToString() == _wire(_alone(engine, "a", liquidation_prices=False))


def test_a_trade_or_a_new_risk_version_changes_the_replies_at_once(make_engine):
    engine, _, _ = _accounts(make_engine)
    servicer = _servicer(engine)
    first, first_what_if = _get(servicer, "b"), _what_if(servicer, "b")
    engine.apply_snapshots([book("b", [(BTC, -1.5, 61000.0, 0, 0.0), (CALL, 2.0, 2900.0, 0, 0.0)],
                                 {"USDC": 5000.0}, revision=2)])   # no evaluation in between
    traded = _get(servicer, "b")
    assert traded.account_revision == 2 and traded.im_usd.value != first.im_usd.value
    assert traded.SerializeToString() == _wire(_alone(engine, "b"))
    traded_what_if = _what_if(servicer, "b")
    assert traded_what_if.before.im_usd.value != first_what_if.before.im_usd.value
    assert traded_what_if.before.SerializeToString() == _wire(_alone(engine, "b", liquidation_prices=False))
    wider = dataclasses.replace(risk_version(2), hist_returns=risk_version(2).hist_returns * 2)
    engine.apply_risk_params(wider)
    versioned = _get(servicer, "b")
    assert versioned.risk_params_version == 2 and versioned.es_usd.value != traded.es_usd.value
    assert versioned.SerializeToString() == _wire(_alone(engine, "b"))
    assert _what_if(servicer, "b").before.risk_params_version == 2


def test_a_change_of_the_published_state_or_episode_changes_the_reported_answer(make_engine):
    engine, _, _ = _accounts(make_engine)
    servicer = _servicer(engine)
    row = engine.row_of["c"]
    pub = engine.publication
    first = _get(servicer, "c")
    assert first.state == pub.state[row] == Health.MARGIN_CALL
    first_before = _what_if(servicer, "c").before
    # as if the publication had put the account in liquidation: a query never shows it better (left only
    # above IM with the exit buffer), and the episode it reports is the publication's
    pub.state[row] = Health.LIQUIDATION
    pub.episodes.number[row] += 7
    changed = _get(servicer, "c")
    assert changed.state == Health.LIQUIDATION and changed.episode == first.episode + 7
    assert changed.SerializeToString() == _wire(_alone(engine, "c"))
    changed_before = _what_if(servicer, "c").before
    assert changed_before.state == Health.LIQUIDATION and changed_before.episode == first_before.episode + 7
    assert changed_before.SerializeToString() == _wire(_alone(engine, "c", liquidation_prices=False))
    pub.state[row] = Health.MARGIN_CALL
    assert _get(servicer, "c").state == Health.MARGIN_CALL     # the episode alone still differs
    pub.episodes.number[row] -= 7
    assert _get(servicer, "c").SerializeToString() == first.SerializeToString()


def test_encoded_answers_follow_the_answer_object_and_stay_bounded():
    from marginflow.margin.domain.results import AccountMargin

    def margin(equity):
        return AccountMargin("x", 1, 1, T0, equity, 10.0, 5.0, equity, 10.0, 5.0, 1, 10.0, 0.0, 0.0, 0.0, 1, True,
                             T0, equity, 0.0)

    kept = EncodedAnswers(max_entries=4)
    one = margin(100.0)
    assert kept.into(pb.MarginState(), one, 5).SerializeToString() == codec.margin_state(one, publish_ms=5).SerializeToString()
    # an equal-looking but different answer object is encoded anew, never served from another's entry
    other = margin(200.0)
    assert kept.into(pb.MarginState(), other, 6).equity_usd.value == "200.00"
    answers = [margin(float(i)) for i in range(20)]
    for m in answers:
        assert kept.into(pb.MarginState(), m, 7).SerializeToString() == \
            codec.margin_state(m, publish_ms=7).SerializeToString()
    assert len(kept._kept) <= 4
    assert kept.into(pb.MarginState(), one, 8).SerializeToString() == codec.margin_state(one, publish_ms=8).SerializeToString()


def test_the_reported_memo_never_outlives_its_inputs(make_engine):
    engine, _, _ = _accounts(make_engine)
    q = engine.queries
    b, model = q.require("a")
    raw, _at = q._answer("a", b, model, liquidation_prices=True)
    assert q.reported(raw, remember=True) is q.reported(raw, remember=True)
    fresh = q.margin_of(q.single(b, model), model, liquidation_prices=True)
    assert q.reported(fresh, remember=True) == q.reported(raw, remember=True)
    assert len(q._reported) >= 1
    with pytest.raises(AttributeError):
        raw.state = 0   # answers are immutable: an answer object stands for one content
