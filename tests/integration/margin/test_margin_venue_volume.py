"""The venue's traded volume (trades.fills) lengthens the liquidation horizon of a large position, and
the portfolio's open interest per input partition (portfolio.open_interest) gives the concentration add-on."""

from __future__ import annotations

import math
import time

import pytest

from marginflow.api.account.v1 import account_pb2
from marginflow.margin.service import MarginApp, margin_topics
from marginflow.margin.settings import MarginSettings
from marginflow.shared.config import load
from marginflow.shared.kafka import delete_topics, ensure_topics

from margin_it_helpers import contribution, mark, risk_params, snapshot, wait_for


@pytest.fixture
def mg_settings(test_env):
    env = dict(test_env, MF_MARGIN_GRPC_PORT="0", MF_MARGIN_METRICS_PORT="0", MF_MARGIN_MODEL_REFRESH_MS="0",
               MF_MARGIN_RECENTER_PRICE_CHANGE="0", MF_MARGIN_RECENTER_VOL_CHANGE="0",
               MF_MARGIN_EVALUATE_INTERVAL_MS="50", MF_MARGIN_STARTUP_TIMEOUT_SECONDS="30",
               MF_MARGIN_LIQUIDATION_PARTICIPATION="0.1", MF_MARGIN_MAX_HORIZON_MULTIPLE="10",
               MF_MARGIN_CONCENTRATION_RATE="0.1", MF_MARGIN_CONCENTRATION_THRESHOLD="0.05")
    settings = load(MarginSettings, env)
    assert {settings.common.topics.fills, settings.common.topics.open_interest} <= {t.name for t in
                                                                                    margin_topics(settings)}
    ensure_topics(settings.common.bootstrap, margin_topics(settings))
    yield settings
    delete_topics(settings.common.bootstrap, [s.name for s in margin_topics(settings)])


def _fill(i: int, size: str) -> account_pb2.Fill:
    f = account_pb2.Fill(fill_id=f"f{i}", account_id=f"t{i}", instrument="SOL-PERP", side=account_pb2.SIDE_BUY)
    f.size.value = size
    f.price.value = "150"
    f.meta.event_time_ms = int(time.time() * 1000)
    return f


def test_fills_on_the_venue_scale_a_large_positions_grid_and_es(mg_settings, publish):
    topics = mg_settings.common.topics
    publish(topics.risk_params, "current", risk_params(1))
    publish(topics.marks, "SOL-PERP", mark("SOL-PERP", "SOL", 150.0))
    for i in range(4):
        publish(topics.fills, f"t{i}", _fill(i, "250"))
    publish(topics.fills, "bad", _fill(9, "-1"))             # dead-lettered, not counted
    publish(topics.positions, "s", snapshot("s", [("SOL-PERP", "-24000", "150")], "50000000"))
    # s's input partition holds its short; l's partition its long, first 30,000 then 50,000 (a later fills
    # offset); a previous owner's late record of l's partition (an earlier offset) and a negative one change nothing
    publish(topics.open_interest, "SOL-PERP/0", contribution("SOL-PERP", 0, "0", "24000", 4))
    publish(topics.open_interest, "SOL-PERP/1", contribution("SOL-PERP", 1, "30000", "0", 3))
    publish(topics.open_interest, "SOL-PERP/1", contribution("SOL-PERP", 1, "50000", "0", 5))
    publish(topics.open_interest, "SOL-PERP/1", contribution("SOL-PERP", 1, "90000", "0", 4))
    publish(topics.open_interest, "SOL-PERP/1", contribution("SOL-PERP", 1, "-5", "0", 6))
    app = MarginApp(mg_settings).start(serve_grpc=False, serve_http_metrics=False)
    thread, stopping = app.run_in_thread()
    try:
        assert app.host.wait_ready(30), "margin did not become ready"
        wait_for(lambda: app.engine.market.volume.buckets.sum() == 1000.0, timeout_s=20)
        wait_for(lambda: app.engine.row_of.get("s") is not None and app.engine.version == 1)
        # ready only once the open interest topic is read to its end offsets at the start
        assert app.engine.market.open_interest.open_interest()[app.table.index["SOL-PERP"]] == 50000.0
        publish(topics.risk_params, "current", risk_params(2))    # the model is rebuilt with the volume
        wait_for(lambda: app.engine.version == 2)
        p = app.engine.explain("s").positions[0]
        # 1,000 contracts traded within the first hourly bucket: 24,000/day over 24 h and over 7 d (a young
        # venue is read at its rate); a close-out trades 0.1 · 24,000 = 2,400/day, so 24,000 contracts take
        # 10 days (or, one bucket later, 20 days, capped at 10 × the 1-day grid horizon): scale √10.
        assert p.liquidation_horizon_days == pytest.approx(10.0)
        assert p.loss_scale == pytest.approx(math.sqrt(10.0))
        m = app.engine.get_margin("s")
        # ES at h: the worst historical move, +15 %, on 24,000 short at 150 = 540,000 USD; × √10. Grid at h:
        # max(10 % · 3.6 M, 0.5 · 20 % · 3.6 M) = 360,000 USD; × √10.
        assert m.es_usd == pytest.approx(math.sqrt(10.0) * 0.15 * 24000 * 150, rel=1e-9)
        assert m.grid_usd == pytest.approx(math.sqrt(10.0) * 0.10 * 24000 * 150, rel=1e-9)
        # open interest max(long 50,000 (l's newest), short 24,000) = 50,000; s holds 0.48 of it, 0.43 beyond
        # the 5 % threshold: add-on 0.1 · 0.43 · 24,000 · 150 = 154,800 USD
        assert p.open_interest_share == pytest.approx(0.48)
        assert p.concentration_usd == pytest.approx(154800.0)
        assert m.cross_im_usd == pytest.approx(max(m.grid_usd, m.es_usd, m.minimum_usd) + m.liquidity_usd + 154800.0,
                                               rel=1e-9)
        assert app.metrics.rejected.labels("negative_value")._value.get() >= 1
    finally:
        stopping.set()
        thread.join(10)
        app.close()
