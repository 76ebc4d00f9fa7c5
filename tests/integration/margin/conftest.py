"""Margin service on the real Kafka: one topic prefix per test, the service loop in a thread."""

from __future__ import annotations

import pytest

from marginflow.margin.service import MarginApp, margin_topics
from marginflow.margin.settings import MarginSettings
from marginflow.shared.config import load
from marginflow.shared.kafka import ProtoProducer, delete_topics, ensure_topics, new_producer


@pytest.fixture
def mg_settings(test_env):
    env = dict(test_env, MF_MARGIN_GRPC_PORT="0", MF_MARGIN_METRICS_PORT="0", MF_MARGIN_MODEL_REFRESH_MS="0",
               MF_MARGIN_RECENTER_PRICE_CHANGE="0", MF_MARGIN_RECENTER_VOL_CHANGE="0",
               MF_MARGIN_EVALUATE_INTERVAL_MS="50", MF_MARGIN_STARTUP_TIMEOUT_SECONDS="30")
    settings = load(MarginSettings, env)
    ensure_topics(settings.common.bootstrap, margin_topics(settings))
    yield settings
    delete_topics(settings.common.bootstrap, [s.name for s in margin_topics(settings)])


@pytest.fixture
def publish(mg_settings):
    producer = ProtoProducer(new_producer(mg_settings.common.bootstrap, "test-publisher", linger_ms=0), "test")

    def send(topic: str, key: str, message=None, raw: bytes | None = None) -> None:
        if raw is not None:
            producer.send_raw(topic, key.encode(), raw)
        else:
            producer.send(topic, key, message)
        producer.flush()

    yield send
    producer.close()


@pytest.fixture
def start_margin(mg_settings):
    started = []

    def start(grpc: bool = False, ready: bool = True) -> MarginApp:
        """A margin instance with its loop in a thread; by default once it says it is ready."""
        app = MarginApp(mg_settings).start(serve_grpc=grpc, serve_http_metrics=False)
        thread, stopping = app.run_in_thread()
        started.append((app, thread, stopping))
        if ready:
            assert app.host.wait_ready(30), "margin did not become ready"
        return app

    def stop(app: MarginApp) -> None:
        for entry in [e for e in started if e[0] is app]:
            started.remove(entry)
            _, thread, stopping = entry
            stopping.set()
            thread.join(10)
            assert not thread.is_alive(), "margin loop did not stop"
            app.close()

    start.stop = stop
    yield start
    for app, _thread, _stopping in list(started):
        stop(app)
