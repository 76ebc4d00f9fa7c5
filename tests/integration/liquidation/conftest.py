"""Liquidation + exchange-sim with margin and portfolio, in-process on the real Kafka and Redis.

The margin and portfolio fixtures are those of their own integration tests (loaded from their conftests,
not copied); this conftest adds the liquidation service and the exchange simulator on the same topic prefix.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
import sys

import pytest

from marginflow.exchange_sim.service import ExchangeSimApp, sim_topics
from marginflow.exchange_sim.settings import ExchangeSimSettings
from marginflow.liquidation.service import LiquidationApp, liquidation_topics
from marginflow.liquidation.settings import LiquidationSettings
from marginflow.portfolio.service import PortfolioApp
from marginflow.shared.clock import SystemClock
from marginflow.shared.config import load
from marginflow.shared.kafka import delete_topics

HERE = pathlib.Path(__file__).resolve().parent
for _dir in ("margin", "portfolio"):
    sys.path.insert(0, str(HERE.parent / _dir))


def _load(name: str, path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_margin = _load("margin_fixtures", HERE.parent / "margin" / "conftest.py")
_portfolio = _load("portfolio_fixtures", HERE.parent / "portfolio" / "conftest.py")
mg_settings = _margin.mg_settings
start_margin = _margin.start_margin
pf_settings = _portfolio.pf_settings
private_redis = _portfolio.private_redis

from liq_it_helpers import ADMIN_TOKEN  # noqa: E402
from redis_namespace import clear_namespace  # noqa: E402


@pytest.fixture
def liq_env(test_env, topic_prefix):
    return dict(test_env, MF_LIQUIDATION_GRPC_PORT="0", MF_LIQUIDATION_METRICS_PORT="0", MF_ADMIN_TOKEN=ADMIN_TOKEN,
                MF_LIQUIDATION_REDIS_PREFIX=f"{topic_prefix}liq:", MF_LIQUIDATION_ROUND_INTERVAL_MS="300",
                MF_LIQUIDATION_STARTUP_TIMEOUT_SECONDS="30", MF_LIQUIDATION_GRPC_TIMEOUT_MS="3000")


@pytest.fixture
def start_liquidation(liq_env, topic_prefix):
    started = []

    def start(margin_port: int = 1, portfolio_port: int = 1, **extra) -> LiquidationApp:
        env = dict(liq_env, MF_LIQUIDATION_MARGIN_ADDRESS=f"127.0.0.1:{margin_port}",
                   MF_LIQUIDATION_PORTFOLIO_ADDRESS=f"127.0.0.1:{portfolio_port}", **extra)
        app = LiquidationApp(load(LiquidationSettings, env)).start(serve_http_metrics=False)
        thread, stopping = app.run_in_thread()
        started.append((app, thread, stopping))
        return app

    def stop(app: LiquidationApp) -> None:
        for entry in [e for e in started if e[0] is app]:
            started.remove(entry)
            _, thread, stopping = entry
            stopping.set()
            thread.join(10)
            assert not thread.is_alive(), "liquidation loop did not stop"
            app.close()

    start.stop = stop
    yield start
    for app, _t, _s in list(started):
        stop(app)
    settings = load(LiquidationSettings, liq_env)
    clear_namespace(settings.common.redis_url, settings.redis_prefix)
    delete_topics(settings.common.bootstrap, [s.name for s in liquidation_topics(settings)])


@pytest.fixture
def start_exchange_sim(test_env):
    started = []

    def start() -> ExchangeSimApp:
        settings = load(ExchangeSimSettings, dict(test_env, MF_EXCHANGE_SIM_METRICS_PORT="0"))
        app = ExchangeSimApp(settings).start(serve_http_metrics=False)
        thread, stopping = app.run_in_thread()
        started.append((app, thread, stopping))
        return app

    yield start
    for app, thread, stopping in started:
        stopping.set()
        thread.join(10)
        app.close()


@pytest.fixture
def start_portfolio(pf_settings):
    """The portfolio service with its withdrawal gate pointed at a running margin instance."""
    started = []

    def start(margin_port: int) -> PortfolioApp:
        settings = dataclasses.replace(pf_settings, margin_address=f"127.0.0.1:{margin_port}")
        app = PortfolioApp(settings, SystemClock()).start(serve_http_metrics=False)
        thread, stopping = app.run_in_thread()
        started.append((app, thread, stopping))
        assert app.wait_ready(60), "portfolio not ready within 60 s"
        return app

    yield start
    for app, thread, stopping in started:
        stopping.set()
        thread.join(15)
        app.close()
