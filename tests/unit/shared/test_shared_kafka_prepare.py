"""ProtoProducer.prepare: a topic's partitions looked up once, before its first record."""

from __future__ import annotations

from marginflow.shared.kafka import ProtoProducer, key_partition


class FakeKafkaProducer:
    def __init__(self) -> None:
        self.lookups: list[str] = []
        self.sent: list[tuple[str, bytes, bytes, int]] = []

    def partitions_for(self, topic):
        self.lookups.append(topic)
        return set(range(6 if topic == "orders" else 3))

    def send(self, topic, key=None, value=None, partition=None):
        self.sent.append((topic, key, value, partition))
        return None


def test_prepared_topics_are_looked_up_once_and_not_again_at_their_first_records():
    raw = FakeKafkaProducer()
    producer = ProtoProducer(raw, "test")
    producer.prepare(["orders", "events", "orders"])
    assert raw.lookups == ["orders", "events"]
    producer.send_many("orders", [(b"acct-1", b"v1"), (b"acct-2", b"v2")])
    producer.send_many("events", [(b"acct-1", b"e1")])
    assert raw.lookups == ["orders", "events"]                     # nothing looked up while sending
    assert [(t, p) for t, _k, _v, p in raw.sent] == [
        ("orders", key_partition(b"acct-1", 6)), ("orders", key_partition(b"acct-2", 6)),
        ("events", key_partition(b"acct-1", 3))]


def test_a_topic_not_prepared_is_looked_up_at_its_first_record():
    raw = FakeKafkaProducer()
    producer = ProtoProducer(raw, "test")
    producer.send_many("events", [(b"a", b"v")])
    producer.send_many("events", [(b"b", b"v")])
    assert raw.lookups == ["events"]
