"""The platform's producer (librdkafka behind kafka-python's calls) against the real broker."""

from __future__ import annotations

import time

import pytest
from kafka import TopicPartition
from kafka.errors import KafkaError, KafkaTimeoutError

from marginflow.shared.kafka import ProtoProducer, TopicSpec, ensure_topics, key_partition, new_consumer, new_producer
from marginflow.shared.producer import Producer

pytestmark = pytest.mark.integration


def _read(bootstrap, topic, partitions, want, timeout_s=30):
    consumer = new_consumer(bootstrap, None, "t-read")
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    got = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < want and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=300).values():
                got += records
    finally:
        consumer.close()
    return got


def test_keys_land_on_kafkas_default_partition_and_futures_carry_where_each_record_went(kafka_bootstrap, topic_prefix):
    topic = topic_prefix + "murmur"
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, 6)])
    producer = ProtoProducer(new_producer(kafka_bootstrap, "t"), "test")
    producer.prepare([topic])
    keys = [f"acct-{i:05d}".encode() for i in range(300)]
    futures = producer.send_many(topic, [(k, b"v" + k) for k in keys])
    producer.flush(30)
    assert all(f.is_done and not f.failed() for f in futures)
    for k, f in zip(keys, futures):
        assert f.get(1).partition == key_partition(k, 6)
    got = _read(kafka_bootstrap, topic, 6, len(keys))
    assert sorted((r.key, r.partition) for r in got) == sorted((k, key_partition(k, 6)) for k in keys)
    # a key's records keep their order, and offsets are those the futures reported
    by_key = {(r.partition, r.offset): r.key for r in got}
    assert all(by_key[(f.partition, f.offset)] == k for k, f in zip(keys, futures))
    producer.close()


def test_a_record_over_the_size_limit_fails_at_once_and_an_unreachable_broker_times_out():
    p = Producer("127.0.0.1:1", "t-none", linger_ms=0, max_request_size=10_000, max_block_ms=1000)
    with pytest.raises(KafkaError):
        p.send("anything", b"x" * 20_000, b"k")
    future = p.send("anything", b"small", b"k")
    with pytest.raises(KafkaTimeoutError):
        future.get(timeout=0.5)
    with pytest.raises(KafkaTimeoutError):
        p.flush(0.5)
    failures = []
    future.add_errback(failures.append)
    p.close(0.2)    # what is left is dropped: its futures fail, errbacks called
    assert future.failed() and len(failures) == 1 and isinstance(failures[0], KafkaError)
    with pytest.raises(KafkaError):
        future.get(0)
    with pytest.raises(KafkaError, match="closed"):
        p.send("anything", b"late", b"k")
