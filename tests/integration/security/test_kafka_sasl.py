"""Kafka with SASL/SCRAM and the platform's ACLs, started by kafka.sh (KAFKA_SASL=1) on free ports:
a service writing a topic it does not own is refused by the broker, with kafka-python and aiokafka."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time

import pytest
from kafka import TopicPartition
from kafka.errors import KafkaError, TopicAuthorizationFailedError

from marginflow.shared.config import Topics
from marginflow.shared.kafka import ensure_topics, new_consumer, new_producer, platform_topics
from marginflow.shared.security import KafkaSecurity

from conftest import ROOT, free_port


@pytest.fixture(scope="module")
def sasl_kafka(pki, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("kafka-sasl")
    port, controller = free_port(), free_port()
    env = {**os.environ, "MF_RUN_DIR": str(run_dir), "KAFKA_PORT": str(port), "KAFKA_CONTROLLER_PORT": str(controller),
           "KAFKA_DATA_DIR": str(run_dir / "data"), "KAFKA_HEAP_MB": "384", "KAFKA_SASL": "1", "PKI_DIR": str(pki)}
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "MF_TOPIC_PREFIX"):
        env.pop(name, None)
    started = subprocess.run([str(ROOT / "deploy/local/kafka.sh"), "start"], env=env, capture_output=True, text=True)
    try:
        assert started.returncode == 0, started.stderr + (run_dir / "logs" / "kafka.log").read_text()[-3000:]
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(ROOT / "deploy/local/kafka.sh"), "stop"], env=env, capture_output=True)


def _options(pki, user: str, password: str | None = None) -> dict:
    password = password or (pki / f"kafka-pass.{user}").read_text().strip()
    return KafkaSecurity("sasl_plaintext", "scram-sha-512", user, password).client_options()


@pytest.fixture(scope="module")
def topics(sasl_kafka, pki):
    topics = Topics("")
    ensure_topics(sasl_kafka, [s for s in platform_topics(topics, 1)
                               if s.name in (topics.ticks, topics.fills, topics.risk_params, topics.open_interest)],
                  timeout_s=60, **_options(pki, "admin"))
    return topics


def test_a_service_writes_its_own_topic_and_is_refused_another(sasl_kafka, pki, topics):
    producer = new_producer(sasl_kafka, "sasl-test-marketdata", linger_ms=0, max_block_ms=10000,
                            **_options(pki, "marketdata"))
    try:
        producer.send(topics.ticks, key=b"BTC-PERP", value=b"tick").get(timeout=20)
        with pytest.raises(TopicAuthorizationFailedError):
            producer.send(topics.fills, key=b"acct-1", value=b"forged fill").get(timeout=20)
    finally:
        producer.close(5)


def test_portfolio_writes_the_open_interest_and_margin_only_reads_it(sasl_kafka, pki, topics):
    portfolio = new_producer(sasl_kafka, "sasl-test-portfolio", linger_ms=0, max_block_ms=10000,
                             **_options(pki, "portfolio"))
    margin = new_producer(sasl_kafka, "sasl-test-margin", linger_ms=0, max_block_ms=10000, **_options(pki, "margin"))
    try:
        portfolio.send(topics.open_interest, key=b"BTC-PERP/0", value=b"share").get(timeout=20)
        with pytest.raises(TopicAuthorizationFailedError):
            margin.send(topics.open_interest, key=b"BTC-PERP/0", value=b"forged share").get(timeout=20)
    finally:
        portfolio.close(5)
        margin.close(5)
    reader = new_consumer(sasl_kafka, None, "sasl-test-margin-reader", **_options(pki, "margin"))
    try:
        tp = TopicPartition(topics.open_interest, 0)
        reader.assign([tp])
        reader.seek_to_beginning(tp)
        seen: list[bytes] = []
        deadline = time.monotonic() + 30
        while b"share" not in seen and time.monotonic() < deadline:
            seen += [r.value for r in reader.poll(timeout_ms=500).get(tp, [])]
        assert seen == [b"share"]
    finally:
        reader.close()


def test_wrong_password_or_no_credentials_get_nothing(sasl_kafka, pki, topics):
    with pytest.raises(KafkaError):
        p = new_producer(sasl_kafka, "sasl-test-wrong", linger_ms=0, max_block_ms=5000,
                         **_options(pki, "marketdata", password="wrong"))
        try:
            p.send(topics.ticks, b"x").get(timeout=10)
        finally:
            p.close(1)
    with pytest.raises(Exception):   # noqa: B017 - no broker answers a PLAINTEXT client: which error depends on when
        p = new_producer(sasl_kafka, "sasl-test-plain", linger_ms=0, max_block_ms=5000)
        try:
            p.send(topics.ticks, b"x").get(timeout=10)
        finally:
            p.close(1)


def test_aiokafka_clients_take_the_same_settings(sasl_kafka, pki, topics):
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import TopicAuthorizationFailedError as AioTopicAuthorizationFailed

    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=sasl_kafka, **_options(pki, "riskparams"))
        await producer.start()
        try:
            await producer.send_and_wait(topics.risk_params, b"params", key=b"v1")
            with pytest.raises(AioTopicAuthorizationFailed):
                await producer.send_and_wait(topics.fills, b"forged", key=b"acct-1")
        finally:
            await producer.stop()

    asyncio.run(asyncio.wait_for(run(), 60))
