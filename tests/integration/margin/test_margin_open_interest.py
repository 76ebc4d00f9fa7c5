"""Margin's open interest from portfolio.open_interest on the real Kafka: the concentration add-on of Explain
follows the shares the portfolio service publishes from its fills, and a bad record on the topic is
dead-lettered with its reason while the service goes on."""

from __future__ import annotations

from decimal import Decimal as D

import pytest
from prometheus_client import REGISTRY

from marginflow.api.common.v1 import common_pb2
from marginflow.margin.settings import MarginSettings
from marginflow.margin.service import margin_topics
from marginflow.portfolio.adapters.codec import fill_to_proto
from marginflow.portfolio.domain.model import Fill, Side
from marginflow.portfolio.service import PortfolioApp, portfolio_topics
from marginflow.portfolio.settings import PortfolioSettings
from marginflow.shared.clock import SystemClock
from marginflow.shared.config import load
from marginflow.shared.kafka import delete_topics, ensure_topics, read_compacted

from margin_it_helpers import contribution, mark, risk_params, snapshot, wait_for
from redis_namespace import clear_namespace

CONCENTRATION_RATE = 0.1
THRESHOLD = 0.05


@pytest.fixture
def mg_settings(test_env):
    env = dict(test_env, MF_MARGIN_GRPC_PORT="0", MF_MARGIN_METRICS_PORT="0", MF_MARGIN_MODEL_REFRESH_MS="0",
               MF_MARGIN_RECENTER_PRICE_CHANGE="0", MF_MARGIN_RECENTER_VOL_CHANGE="0",
               MF_MARGIN_EVALUATE_INTERVAL_MS="50", MF_MARGIN_STARTUP_TIMEOUT_SECONDS="30",
               MF_MARGIN_CONCENTRATION_RATE=str(CONCENTRATION_RATE), MF_MARGIN_CONCENTRATION_THRESHOLD=str(THRESHOLD))
    settings = load(MarginSettings, env)
    assert settings.common.topics.open_interest in {t.name for t in margin_topics(settings)}
    ensure_topics(settings.common.bootstrap, margin_topics(settings))
    yield settings
    delete_topics(settings.common.bootstrap, [s.name for s in margin_topics(settings)])


@pytest.fixture
def portfolio(test_env, topic_prefix):
    settings = load(PortfolioSettings, dict(test_env, MF_PORTFOLIO_REDIS_PREFIX=f"{topic_prefix}pf:",
                                            MF_PORTFOLIO_GRPC_PORT="0", MF_PORTFOLIO_METRICS_PORT="0",
                                            MF_PORTFOLIO_POLL_TIMEOUT_MS="50", MF_PORTFOLIO_MARGIN_ADDRESS="none"))
    ensure_topics(settings.common.bootstrap, portfolio_topics(settings))
    app = PortfolioApp(settings, SystemClock()).start(serve_grpc=False, serve_http_metrics=False)
    thread, stopping = app.run_in_thread()
    try:
        assert app.wait_ready(60), "portfolio not ready"
        yield app
    finally:
        stopping.set()
        thread.join(15)
        app.close()
        clear_namespace(settings.common.redis_url, settings.redis_prefix)
        delete_topics(settings.common.bootstrap, [s.name for s in portfolio_topics(settings)])


def _fill(n: int, account: str, side: Side, size: str) -> Fill:
    return Fill(f"c-{n}", account, "SOL-PERP", side, D(size), D("150"), D(0), 1_700_000_000_000 + n)


def _fold(settings) -> tuple[D, D]:
    """Σ long and Σ |short| of SOL-PERP over every account's newest snapshot on portfolio.positions."""
    lo = sh = D(0)
    for snap in read_compacted(settings.common.bootstrap, settings.common.topics.positions,
                               type(snapshot("x", [], "0")), "test-fold", timeout_s=30).values():
        for p in snap.positions:
            if p.instrument == "SOL-PERP":
                q = D(p.size.value or 0)
                lo, sh = lo + max(q, D(0)), sh + max(-q, D(0))
    return lo, sh


def test_explain_concentration_follows_the_open_interest_the_portfolio_publishes(
        mg_settings, portfolio, publish, start_margin):
    topics = mg_settings.common.topics
    publish(topics.risk_params, "current", risk_params(1))
    publish(topics.marks, "SOL-PERP", mark("SOL-PERP", "SOL", 150.0))
    # the whale buys 300 contracts from two sellers: open interest 300 a side, the whale all of it
    for i, (account, side, size) in enumerate((("whale", Side.BUY, "300"), ("s1", Side.SELL, "100.5"),
                                               ("s2", Side.SELL, "199.5"))):
        publish(topics.fills, account, fill_to_proto(_fill(i, account, side, size), "test"))
    settings = portfolio.settings
    wait_for(lambda: _fold(settings) == (D(300), D(300)), timeout_s=60)
    wait_for(lambda: portfolio.open_interest.published_totals().get("SOL-PERP") == (D(300), D(300)), timeout_s=60)
    app = start_margin()      # ready once the topic is read to its end: the first model has the open interest
    k = app.table.index["SOL-PERP"]
    assert app.engine.market.open_interest.sides(k) == (D(300), D(300))
    wait_for(lambda: app.engine.row_of.get("whale") is not None, timeout_s=30)
    p = app.engine.explain("whale").positions[0]
    # share 300/300 = 1, 0.95 beyond the 5 % threshold: 0.1 · 0.95 · 300 · 150 = 4,275 USD
    assert p.open_interest_share == pytest.approx(1.0)
    assert p.concentration_usd == pytest.approx(CONCENTRATION_RATE * (1.0 - THRESHOLD) * 300 * 150.0)
    # another 300 change hands between two new accounts: open interest 600, the whale half of it
    publish(topics.fills, "b3", fill_to_proto(_fill(10, "b3", Side.BUY, "300"), "test"))
    publish(topics.fills, "s3", fill_to_proto(_fill(11, "s3", Side.SELL, "300"), "test"))
    wait_for(lambda: app.engine.market.open_interest.sides(k) == (D(600), D(600)), timeout_s=60)
    assert _fold(settings) == (D(600), D(600))
    publish(topics.risk_params, "current", risk_params(2))    # the next model build takes it
    wait_for(lambda: app.engine.version == 2, timeout_s=30)
    p = app.engine.explain("whale").positions[0]
    assert p.open_interest_share == pytest.approx(0.5)
    assert p.concentration_usd == pytest.approx(CONCENTRATION_RATE * (0.5 - THRESHOLD) * 300 * 150.0)


def test_bad_open_interest_records_are_dead_lettered_and_the_service_goes_on(
        mg_settings, publish, start_margin, consume_all, kafka_bootstrap, produce_compressed):
    topics = mg_settings.common.topics
    publish(topics.risk_params, "current", risk_params(1))
    publish(topics.marks, "SOL-PERP", mark("SOL-PERP", "SOL", 150.0))
    publish(topics.positions, "a", snapshot("a", [("SOL-PERP", "10", "150")], "100000"))
    app = start_margin()
    k = app.table.index["SOL-PERP"]
    before = {r: REGISTRY.get_sample_value("marginflow_margin_rejected_total", {"reason": r}) or 0.0
              for r in ("malformed", "missing_field", "non_finite", "negative_value", "unknown_instrument",
                        "key_mismatch", "oversized", "empty_payload")}
    publish(topics.open_interest, "SOL-PERP/0", raw=b"\xff\xff\xff garbage")                       # malformed
    publish(topics.open_interest, "SOL-PERP/0", mark("SOL-PERP", "SOL", 150.0))                    # another type
    publish(topics.open_interest, "SOL-PERP/0", contribution("SOL-PERP", 0, "NaN", "0", 1))
    publish(topics.open_interest, "SOL-PERP/0", contribution("SOL-PERP", 0, "-4", "0", 1))
    publish(topics.open_interest, "DOGE-PERP/0", contribution("DOGE-PERP", 0, "4", "4", 1))
    publish(topics.open_interest, "SOL-PERP/1", contribution("SOL-PERP", 0, "4", "4", 1))         # key ≠ payload
    publish(topics.open_interest, "SOL-PERP/0", raw=b"")                                           # empty
    huge = contribution("SOL-PERP", 0, "4", "4", 1)
    huge.meta.source = "x" * (1024 * 1024)
    produce_compressed(kafka_bootstrap, topics.open_interest, b"SOL-PERP/0", huge.SerializeToString())
    publish(topics.open_interest, "SOL-PERP/0", contribution("SOL-PERP", 0, "40", "40", 2))       # valid
    wait_for(lambda: app.engine.market.open_interest.sides(k) == (D(40), D(40)), timeout_s=30)
    letters = wait_for(lambda: (lambda r: r if len(r) >= 8 else None)(
        [common_pb2.DeadLetter.FromString(x.value) for x in consume_all(kafka_bootstrap, topics.margin_dlq,
                                                                         expect_at_least=8, timeout_s=1.0)]))
    assert {x.source_topic for x in letters} == {topics.open_interest}
    # a Mark read as a contribution: its instrument is read, its numbers clash in wire type (unknown fields),
    # so the contribution has no long_contracts: missing_field
    assert sorted(x.reason_code for x in letters) == sorted(
        ["malformed", "missing_field", "non_finite", "negative_value", "unknown_instrument", "key_mismatch",
         "empty_payload", "oversized"])
    after = {r: REGISTRY.get_sample_value("marginflow_margin_rejected_total", {"reason": r}) or 0.0 for r in before}
    assert {r: after[r] - before[r] for r in before} == {r: 1.0 for r in before}
    assert app.host.ready and app.engine.get_margin("a") is not None
