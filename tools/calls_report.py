"""Summary of margin.calls over a run: entries per account and episode, and what caused them.

``python tools/calls_report.py [--prefix P] [--bootstrap HOST:PORT]`` reads the whole topic and prints
how often accounts entered MARGIN_CALL / LIQUIDATION (all calls, and per episode), the largest counts,
HEALTHY → LIQUIDATION jumps and whether each carries a cause, and the calls by cause.
"""

from __future__ import annotations

import argparse
import collections
import os

import time

from kafka import KafkaConsumer, TopicPartition

from marginflow.api.margin.v1 import margin_pb2 as pb


def read_all_records(bootstrap: str, topic: str, timeout_s: float = 60.0) -> list[bytes]:
    """Every record value of ``topic`` from the beginning to its end now."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        out: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in tps) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                out.extend(r.value for r in records if r.value is not None)
        return out
    finally:
        consumer.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", default=os.environ.get("MF_TOPIC_PREFIX", ""))
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092"))
    args = parser.parse_args()
    calls = [pb.MarginCall.FromString(v) for v in read_all_records(args.bootstrap, f"{args.prefix}margin.calls")]
    per_state = collections.defaultdict(collections.Counter)             # state → account → entries
    per_episode = collections.defaultdict(collections.Counter)           # state → (account, episode) → entries
    jumps = [c for c in calls if c.previous_state == pb.HEALTH_STATE_HEALTHY and c.state == pb.HEALTH_STATE_LIQUIDATION]
    by_cause = collections.Counter((pb.HealthState.Name(c.state), pb.ChangeCause.Name(c.cause)) for c in calls)
    for c in calls:
        per_state[c.state][c.account_id] += 1
        per_episode[c.state][(c.account_id, c.episode)] += 1
    print(f"margin.calls records: {len(calls)}")
    for state in (pb.HEALTH_STATE_MARGIN_CALL, pb.HEALTH_STATE_LIQUIDATION, pb.HEALTH_STATE_BANKRUPT):
        accounts, episodes = per_state[state], per_episode[state]
        name = pb.HealthState.Name(state)
        print(f"{name}: {sum(accounts.values())} entries by {len(accounts)} accounts; "
              f"most by one account {max(accounts.values(), default=0)}; "
              f"most in one episode {max(episodes.values(), default=0)}; "
              f"accounts with ≥ 5: {sum(1 for n in accounts.values() if n >= 5)}")
    print(f"HEALTHY → LIQUIDATION: {len(jumps)}, with a cause: {sum(1 for c in jumps if c.cause)}")
    for (state, cause), n in sorted(by_cause.items()):
        print(f"  {state:<26} {cause:<32} {n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
