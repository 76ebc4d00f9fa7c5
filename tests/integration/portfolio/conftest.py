"""Portfolio service on the real Kafka and Redis: one topic prefix and one Redis namespace per test."""

from __future__ import annotations

import shutil

import pytest

from marginflow.portfolio.adapters.codec import event_to_proto, fill_to_proto
from marginflow.portfolio.service import PortfolioApp, portfolio_topics
from marginflow.portfolio.settings import PortfolioSettings
from marginflow.shared.clock import SystemClock
from marginflow.shared.config import load
from marginflow.shared.kafka import ProtoProducer, delete_topics, ensure_topics, new_producer

from portfolio_it_helpers import ADMIN_TOKEN, PrivateRedis
from redis_namespace import clear_namespace


@pytest.fixture
def pf_settings(test_env, topic_prefix):
    env = dict(test_env, MF_PORTFOLIO_REDIS_PREFIX=f"{topic_prefix}pf:", MF_PORTFOLIO_GRPC_PORT="0",
               MF_PORTFOLIO_METRICS_PORT="0", MF_ADMIN_TOKEN=ADMIN_TOKEN, MF_PORTFOLIO_POLL_TIMEOUT_MS="50",
               MF_PORTFOLIO_MARGIN_ADDRESS="none")   # the portfolio alone; the margin gate: tests/integration/liquidation
    settings = load(PortfolioSettings, env)
    ensure_topics(settings.common.bootstrap, portfolio_topics(settings))
    yield settings
    clear_namespace(settings.common.redis_url, settings.redis_prefix)
    delete_topics(settings.common.bootstrap, [s.name for s in portfolio_topics(settings)])


class Running:
    def __init__(self, app: PortfolioApp, thread, stopping) -> None:
        self.app, self.thread, self.stopping = app, thread, stopping

    def stop(self) -> None:
        if self.thread is not None:
            self.stopping.set()
            self.thread.join(15)
            assert not self.thread.is_alive(), "apply loop did not stop"
            self.thread = None
        self.app.close()


@pytest.fixture
def start_service(pf_settings):
    started: list[Running] = []

    def start(consume: bool = True) -> Running:
        app = PortfolioApp(pf_settings, SystemClock()).start(serve_http_metrics=False)
        thread, stopping = app.run_in_thread() if consume else (None, None)
        running = Running(app, thread, stopping)
        started.append(running)
        if consume:   # reads answer once the group has assigned the partitions and they are read to their end
            assert app.wait_ready(60), "portfolio not ready within 60 s"
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def publish(pf_settings):
    producer = ProtoProducer(new_producer(pf_settings.common.bootstrap, "test-publisher", linger_ms=0), "test")
    topics = pf_settings.common.topics

    def send(*commands, raw: list[tuple[str, bytes, bytes]] = ()) -> None:
        from marginflow.portfolio.domain.model import Fill
        for c in commands:
            if isinstance(c, Fill):
                producer.send(topics.fills, c.account_id, fill_to_proto(c, "test"))
            else:
                producer.send(topics.account_events, c.account_id, event_to_proto(c, "test"))
        for topic, key, value in raw:
            producer.send_raw(topic, key, value)
        producer.flush()

    yield send
    producer.close()


@pytest.fixture
def private_redis(tmp_path):
    """A redis-server of this test alone, on a free loopback port: FLUSHALL and restarts touch nothing else."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (deploy/local/tools.sh installs it)")
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()
