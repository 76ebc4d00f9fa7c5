"""The faust agents, driven through faust's own test context (no Kafka)."""

import asyncio
import math
import shutil
import uuid

import pytest

from marginflow.riskparams.adapters.codec import decode_marks, decode_ticks
from marginflow.riskparams.adapters.faust_app import FaustConfig, RiskParamsFaust, create_app
from marginflow.riskparams.application import NullMetrics, RiskParamsService

import rp_helpers as h


cleanup: list[str] = []


@pytest.fixture(autouse=True)
def _remove_datadirs():
    yield
    while cleanup:
        shutil.rmtree(cleanup.pop(), ignore_errors=True)


def build(tick_consumer: str):
    cfg = FaustConfig(app_id=f"rp-test-{uuid.uuid4().hex[:8]}", bootstrap_servers=("127.0.0.1:1",),
                      ticks_topic="t.md.ticks", marks_topic="t.md.marks", partitions=1, tick_consumer=tick_consumer)
    app, table = create_app(cfg)
    cleanup.append(str(app.conf.datadir))
    app.finalize()
    app.flow_control.resume()
    store, pub, dlq = h.FakeStore(), h.FakePublisher(), h.FakeDeadLetters()
    svc = RiskParamsService(h.engine(), decode_ticks=decode_ticks, decode_marks=decode_marks, store=store,
                            publisher=pub, dead_letters=dlq, metrics=NullMetrics(), clock_ms=lambda: h.AS_OF_MS)
    return RiskParamsFaust(app, table, svc, cfg), svc, store, dlq


async def wait_for(cond, timeout=5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_ticks_agent_samples_checkpoints_and_dead_letters():
    runner, svc, store, dlq = build("agent")
    ticks = h.daily_ticks(h.daily_paths(12))
    async with runner.ticks_agent.test_context() as agent:
        for sym, price, t in ticks:
            await agent.put(h.tick_bytes(sym, price, t), key=sym.encode())
        await agent.put(h.tick_bytes("BTC-PERP", math.inf, ticks[-1][2] + 1), key=b"BTC-PERP")
        await agent.put(b"\x01garbage", key=b"?")
        await wait_for(lambda: len(dlq.letters) == 2)
    assert svc.engine.units["BTC"].series.total == 10            # 12 daily closes → 10 closed returns
    assert sorted(l[3] for l in dlq.letters) == ["malformed", "non_finite_price"]
    assert store.data["u:BTC"]["total"] == 10                      # state reached the store port
    assert svc.engine.units["BTC"].sampler.last_price == ticks[-3][1]


async def test_marks_agent_feeds_implied_vol():
    runner, svc, store, dlq = build("bulk")
    assert runner.ticks_agent is None                               # bulk mode: no faust tick agent
    opts = [i for i in h.universe().instruments.values() if i.is_option and i.underlying == "ETH"]
    async with runner.marks_agent.test_context() as agent:
        for o in opts:
            await agent.put(h.mark_bytes(o.symbol, "ETH", 3000.0, 0.8, h.AS_OF_MS + 1000), key=o.symbol.encode())
        await agent.put(h.mark_bytes("ZZZ-1", "ETH", 3000.0, 0.8, h.AS_OF_MS + 1000), key=b"ZZZ-1")
        await wait_for(lambda: svc.engine.units["ETH"].sigma_implied > 0 and dlq.letters)
    assert svc.engine.units["ETH"].sigma_implied == pytest.approx(0.8)
    assert dlq.letters[0][3] == "unknown_instrument"
    assert "iv:ETH" in store.data
