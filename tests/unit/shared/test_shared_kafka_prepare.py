"""ProtoProducer.prepare: a topic's partitions looked up once, before its first record; send_many leaves the
partition to the producer's partitioner (murmur2 of the key, checked against the broker in the integration
tests)."""

from __future__ import annotations

import pytest
from kafka.errors import KafkaConfigurationError

from marginflow.shared.kafka import ProtoProducer
from marginflow.shared.producer import Producer, producer_config


class FakeProducer:
    def __init__(self) -> None:
        self.lookups: list[str] = []
        self.sent: list[tuple[str, bytes, bytes, int | None]] = []

    def partitions_for(self, topic):
        self.lookups.append(topic)
        return set(range(6 if topic == "orders" else 3))

    def send(self, topic, value=None, key=None, partition=None):
        self.sent.append((topic, key, value, partition))
        return None


def test_prepared_topics_are_looked_up_once_and_not_again_at_their_first_records():
    raw = FakeProducer()
    producer = ProtoProducer(raw, "test")
    producer.prepare(["orders", "events", "orders"])
    assert raw.lookups == ["orders", "events"]
    producer.send_many("orders", [(b"acct-1", b"v1"), (b"acct-2", b"v2")])
    producer.send_many("events", [(b"acct-1", b"e1")])
    assert raw.lookups == ["orders", "events"]                     # nothing looked up while sending
    assert raw.sent == [("orders", b"acct-1", b"v1", None), ("orders", b"acct-2", b"v2", None),
                        ("events", b"acct-1", b"e1", None)]


def test_an_unknown_producer_option_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown producer option 'max_in_flight'"):
        Producer("127.0.0.1:1", "t", max_in_flight=1)


def test_kafka_python_option_names_become_librdkafka_properties_and_no_secret_is_kept():
    config = producer_config("b:9092", "t", linger_ms=7, security_protocol="sasl_ssl", sasl_mechanism="scram-sha-512",
                             sasl_plain_username="u", sasl_plain_password="secret", ssl_cafile="/ca.pem",
                             max_request_size=20_000)
    assert config["bootstrap.servers"] == "b:9092" and config["client.id"] == "t"
    assert config["linger.ms"] == 7
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.mechanisms"] == "SCRAM-SHA-512"
    assert config["sasl.username"] == "u" and config["sasl.password"] == "secret"
    assert config["ssl.ca.location"] == "/ca.pem"
    assert config["message.max.bytes"] == 20_000 and config["batch.size"] == 20_000
    assert config["acks"] == "all" and config["enable.idempotence"] is True
    assert config["partitioner"] == "murmur2_random"
    p = Producer("127.0.0.1:1", "t", security_protocol="sasl_plaintext", sasl_mechanism="plain",
                 sasl_plain_username="u", sasl_plain_password="secret")
    try:
        assert p.config["sasl.username"] == "u" and "sasl.password" not in p.config   # no secret kept
    finally:
        p.close(0)


def test_a_ca_file_librdkafka_cannot_read_is_a_configuration_error_naming_the_client():
    with pytest.raises(KafkaConfigurationError, match="'t-ca'.*ssl.ca.location"):
        Producer("127.0.0.1:1", "t-ca", security_protocol="ssl", ssl_cafile="/nonexistent/ca.pem")
