"""The shared Kafka helpers against the real broker: topics, dead-lettering, compacted state, Redis."""

from __future__ import annotations

import time

from kafka import KafkaAdminClient, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType

from marginflow.api.common.v1 import common_pb2
from marginflow.api.marketdata.v1 import marketdata_pb2
from marginflow.shared.config import Topics
from marginflow.shared.kafka import (DeadLetterSink, ProtoConsumer, ProtoProducer, TopicSpec, ensure_topics, new_consumer,
                                     new_producer, platform_topics, read_compacted, seek_to_tail)
from marginflow.shared.redisstore import connect


def test_platform_topics_created_with_compaction_for_state(kafka_bootstrap, topic_prefix):
    topics = Topics(topic_prefix)
    ensure_topics(kafka_bootstrap, platform_topics(topics, 2))
    ensure_topics(kafka_bootstrap, platform_topics(topics, 2))   # idempotent
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        names = set(admin.list_topics())
        assert {topics.ticks, topics.marks, topics.risk_params, topics.positions, topics.margin_state} <= names
        result = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topics.positions),
                                         ConfigResource(ConfigResourceType.TOPIC, topics.ticks)])
        # kafka-python 3: {"topic": {name: {config: {"value": ...}}}}
        # (only the topic's own settings are listed; the broker default policy is "delete").
        configs = {name: {k: v["value"] for k, v in cfgs.items()} for name, cfgs in result["topic"].items()}
        assert configs[topics.positions]["cleanup.policy"] == "compact"
        assert configs[topics.ticks].get("cleanup.policy", "delete") == "delete"
        assert configs[topics.ticks]["retention.ms"] == str(24 * 3600 * 1000)
    finally:
        admin.close()


def test_malformed_payload_goes_to_dead_letters_and_consumption_goes_on(kafka_bootstrap, topic_prefix, consume_all):
    topic, dlq_topic = topic_prefix + "in", topic_prefix + "in.dlq"
    producer = ProtoProducer(new_producer(kafka_bootstrap, "t"), "test")
    good = marketdata_pb2.Tick(instrument="BTC-PERP", price=1.0)
    producer.send(topic, "BTC-PERP", good)
    producer.send_raw(topic, b"BTC-PERP", b"\xff\xff\xff not protobuf")
    producer.send(topic, "BTC-PERP", marketdata_pb2.Tick(instrument="BTC-PERP", price=2.0))
    producer.flush()
    consumer = ProtoConsumer(new_consumer(kafka_bootstrap, topic_prefix + "g", "t", [topic]),
                             {topic: marketdata_pb2.Tick}, DeadLetterSink(producer, dlq_topic, "test"), "test")
    got = []
    deadline = time.monotonic() + 20
    while len(got) < 2 and time.monotonic() < deadline:
        got += consumer.poll(timeout_ms=300)
    consumer.commit()
    producer.flush()
    consumer.close()
    assert [d.value.price for d in got] == [1.0, 2.0]
    letters = [common_pb2.DeadLetter.FromString(r.value) for r in consume_all(kafka_bootstrap, dlq_topic, 1)]
    assert len(letters) == 1
    assert letters[0].reason_code == "malformed" and "marginflow.marketdata.v1.Tick" in letters[0].reason
    assert letters[0].source_topic == topic and letters[0].source_offset == 1
    assert letters[0].payload.startswith(b"\xff\xff\xff")


def test_committed_offsets_resume_after_restart(kafka_bootstrap, topic_prefix):
    topic = topic_prefix + "resume"
    producer = ProtoProducer(new_producer(kafka_bootstrap, "t"), "test")
    for i in range(10):
        producer.send(topic, "k", marketdata_pb2.Tick(instrument="X", sequence=i))
    producer.flush()
    sink = DeadLetterSink(producer, topic_prefix + "dlq", "test")

    def take(n):
        c = ProtoConsumer(new_consumer(kafka_bootstrap, topic_prefix + "grp", "t", [topic]), {topic: marketdata_pb2.Tick},
                          sink, "test")
        out = []
        deadline = time.monotonic() + 20
        while len(out) < n and time.monotonic() < deadline:
            out += c.poll(timeout_ms=300, max_records=n - len(out))
        c.commit()
        c.close()
        return [d.value.sequence for d in out]

    assert take(4) == [0, 1, 2, 3]
    assert take(6) == [4, 5, 6, 7, 8, 9]


def test_read_compacted_returns_latest_value_per_key(kafka_bootstrap, topic_prefix):
    topic = topic_prefix + "state"
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, 2, compacted=True)])
    producer = ProtoProducer(new_producer(kafka_bootstrap, "t"), "test")
    for i in range(30):
        producer.send(topic, f"acct-{i % 7}", marketdata_pb2.Tick(instrument=f"acct-{i % 7}", sequence=i))
    producer.send_raw(topic, b"acct-0", None)   # tombstone: acct-0 deleted
    producer.flush()
    state = read_compacted(kafka_bootstrap, topic, marketdata_pb2.Tick, "t")
    assert set(state) == {f"acct-{i}" for i in range(1, 7)}
    assert state["acct-3"].sequence == 24


def test_redis_connect_and_round_trip(redis_url, topic_prefix):
    client = connect(redis_url)
    key = f"{{{topic_prefix}}}probe"
    client.set(key, "1.50", ex=30)
    assert client.get(key) == b"1.50"
    client.delete(key)


def test_seek_to_tail_reads_the_last_records_of_each_partition_or_all_of_a_short_one(kafka_bootstrap, topic_prefix):
    topic = topic_prefix + "tail"
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, 2)])
    producer = new_producer(kafka_bootstrap, "t")
    for i in range(10):
        producer.send(topic, key=b"k", value=str(i).encode(), partition=0)
    for i in range(2):
        producer.send(topic, key=b"k", value=f"p1-{i}".encode(), partition=1)
    producer.flush()
    consumer = new_consumer(kafka_bootstrap, None, "t")
    tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    consumer.assign(tps)
    end = seek_to_tail(consumer, tps, 3)
    assert end == {tps[0]: 10, tps[1]: 2}
    got: list[bytes] = []
    deadline = time.monotonic() + 20
    while len(got) < 5 and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=300).values():
            got += [r.value for r in records]
    consumer.close()
    producer.close()
    # the last 3 of partition 0; partition 1 holds fewer: all of it
    assert sorted(got) == sorted([b"7", b"8", b"9", b"p1-0", b"p1-1"])
