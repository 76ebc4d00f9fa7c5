"""Fixtures shared by every test.

Integration tests (``tests/integration``, ``tests/e2e``) talk to the real Kafka and Redis that
``make test`` starts (deploy/local/stack.sh); their addresses come from KAFKA_BOOTSTRAP_SERVERS and
REDIS_URL. Each test gets its own topic prefix and Redis key prefix, so tests never see each
other's data and can run against a long-lived stack.
"""

from __future__ import annotations

import os
import pathlib
import uuid

import pytest
from hypothesis import settings

from marginflow.shared.config import CommonSettings, load

# CI runs every property test on a fixed sequence of examples (a submission's result must not
# depend on luck); development runs keep exploring new ones. `CI=true` is set by the CI runner.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

ROOT = pathlib.Path(__file__).resolve().parent.parent

# The tests dial plaintext loopback servers: never the client settings a `make run` left in .run/pki.
os.environ.setdefault("MF_CLIENT_ENV_FILE", "")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = pathlib.Path(str(item.fspath)).relative_to(ROOT).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
        if "e2e" in parts:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    return os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")


@pytest.fixture(scope="session")
def redis_url() -> str:
    return os.environ.get("REDIS_URL", "redis://127.0.0.1:16379/0")


@pytest.fixture
def topic_prefix() -> str:
    """A fresh prefix for every Kafka topic a test touches."""
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
def test_env(kafka_bootstrap: str, redis_url: str, topic_prefix: str) -> dict[str, str]:
    """Environment for a service under test: the real stack, this test's topic prefix, free ports."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "REDIS_URL": redis_url,
        "MF_TOPIC_PREFIX": topic_prefix,
        "MF_TOPIC_PARTITIONS": "2",
        "MF_LOG_JSON": "false",
        "MF_SHUTDOWN_GRACE_SECONDS": "1",
    }


@pytest.fixture
def common_settings(test_env: dict[str, str]) -> CommonSettings:
    return load(CommonSettings, test_env)
