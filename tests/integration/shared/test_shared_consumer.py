"""The assigned consumer on librdkafka against the real broker: positions, seeks, commits under a group id."""

from __future__ import annotations

import time

import pytest
from kafka import TopicPartition

from marginflow.shared.consumer import AssignedConsumer
from marginflow.shared.kafka import TopicSpec, ensure_topics, new_producer

pytestmark = pytest.mark.integration


def _produce(bootstrap, topic, per_partition):
    p = new_producer(bootstrap, "t-fill", linger_ms=0)
    for part, n in enumerate(per_partition):
        for i in range(n):
            p.send(topic, f"{part}-{i}".encode(), b"k", partition=part)
    p.flush(30)
    p.close()


def _drain(consumer, want, timeout_s=30):
    got = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=200).values():
            got += records
    return got


def test_positions_seeks_and_offsets_committed_under_the_group_are_where_a_restart_resumes(kafka_bootstrap,
                                                                                         topic_prefix):
    topic = topic_prefix + "assigned"
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, 2)])
    _produce(kafka_bootstrap, topic, [5, 3])
    tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    group = topic_prefix + "g"
    c = AssignedConsumer(kafka_bootstrap, group, "t1")
    c.assign(tps)
    assert c.assignment() == set(tps)
    assert [c.position(tp) for tp in tps] == [0, 0]               # nothing committed: the earliest
    assert c.end_offsets(tps) == {tps[0]: 5, tps[1]: 3}
    got = _drain(c, 8)
    assert sorted(r.value for r in got) == sorted([f"0-{i}".encode() for i in range(5)] +
                                                  [f"1-{i}".encode() for i in range(3)])
    assert all(r.key == b"k" and r.timestamp > 0 for r in got)
    assert [c.position(tp) for tp in tps] == [5, 3]
    c.seek(tps[0], 2)                                              # read again from offset 2 (a failed turn)
    again = _drain(c, 3)
    assert [(r.partition, r.offset) for r in again] == [(0, 2), (0, 3), (0, 4)]
    c.commit()
    c.commit()                                                     # nothing new handed out: no error
    c.close()
    _produce(kafka_bootstrap, topic, [1, 0])                        # offset 5 of partition 0
    d = AssignedConsumer(kafka_bootstrap, group, "t2")
    d.assign(tps)
    assert [d.position(tp) for tp in tps] == [5, 3]                # resumes at the committed offsets
    assert [(r.partition, r.offset, r.value) for r in _drain(d, 1)] == [(0, 5, b"0-0")]
    d.seek_to_beginning(tps[1])
    assert [r.offset for r in _drain(d, 3)] == [0, 1, 2]
    assert d.beginning_offsets(tps) == {tps[0]: 0, tps[1]: 0}
    d.close()


def test_without_a_group_id_the_consumer_reads_from_the_reset_and_unknown_partitions_are_refused(kafka_bootstrap,
                                                                                                 topic_prefix):
    topic = topic_prefix + "nogroup"
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, 1)])
    _produce(kafka_bootstrap, topic, [4])
    tp = TopicPartition(topic, 0)
    latest = AssignedConsumer(kafka_bootstrap, None, "t3", auto_offset_reset="latest")
    assert latest.partitions_for_topic(topic) == {0}
    assert latest.partitions_for_topic(topic_prefix + "no-such-topic") is None
    latest.assign([tp])
    assert latest.position(tp) == 4
    with pytest.raises(ValueError, match="not assigned"):
        latest.seek(TopicPartition(topic, 7), 0)
    latest.close()


def test_a_poll_hands_over_what_is_fetched_without_waiting_out_its_timeout_and_keeps_max_records(kafka_bootstrap,
                                                                                               topic_prefix):
    # A batch consume of librdkafka waits for max_records or the timeout: 12 records asked for 1,000 with a
    # 20 s timeout would come back only after 20 s. The poll returns once the first record is here.
    topic = topic_prefix + "prompt"
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, 1)])
    _produce(kafka_bootstrap, topic, [12])
    c = AssignedConsumer(kafka_bootstrap, None, "t-prompt")
    c.assign([TopicPartition(topic, 0)])
    got: list = []
    polls = 0
    start = time.monotonic()
    while len(got) < 12 and polls < 50:
        polls += 1
        for records in c.poll(timeout_ms=20_000, max_records=1000).values():
            got += records
    elapsed = time.monotonic() - start
    assert [r.offset for r in got] == list(range(12))
    assert elapsed < 10.0, f"12 records took {elapsed:.1f} s in {polls} polls with a 20 s timeout"
    c.seek(TopicPartition(topic, 0), 0)
    first = []
    while not first:
        first = c.poll(timeout_ms=5_000, max_records=5).get(TopicPartition(topic, 0), [])
    assert [r.offset for r in first] == list(range(len(first))) and 1 <= len(first) <= 5
    rest = list(first)
    while len(rest) < 12 and polls < 100:
        polls += 1
        for records in c.poll(timeout_ms=5_000, max_records=5).values():
            assert len(records) <= 5
            rest += records
    assert [r.offset for r in rest] == list(range(12))
    c.close()
