"""Summary of margin.calls over a run: entries per account and episode, and what caused them.

``python tools/calls_report.py [--prefix P] [--bootstrap HOST:PORT] [--trace ACCOUNT ...]`` reads the whole
topic and prints how often accounts entered MARGIN_CALL / LIQUIDATION (all calls, and per episode), the
largest counts, how many accounts entered a state more than 3 times, HEALTHY → LIQUIDATION jumps and whether
each carries a cause, and the calls by cause. ``--trace`` also reads ``margin.state`` and prints, for each
account named (``top`` = the 3 with the most calls), its calls and published state changes over time with
equity/IM, the risk version and revision — how an account came to re-enter a state.
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
    parser.add_argument("--trace", nargs="*", default=[], help="account ids to trace (top = the 3 with most calls)")
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
              f"accounts with ≥ 5: {sum(1 for n in accounts.values() if n >= 5)}; "
              f"accounts with > 3: {sum(1 for n in accounts.values() if n > 3)}")
    print(f"HEALTHY → LIQUIDATION: {len(jumps)}, with a cause: {sum(1 for c in jumps if c.cause)}")
    for (state, cause), n in sorted(by_cause.items()):
        print(f"  {state:<26} {cause:<32} {n}")
    if args.trace:
        totals = collections.Counter(c.account_id for c in calls)
        wanted = [a for a, _ in totals.most_common(3)] if args.trace == ["top"] else args.trace
        trace(args.bootstrap, args.prefix, calls, wanted)
    return 0


def trace(bootstrap: str, prefix: str, calls, accounts) -> None:
    """Calls and published state changes of ``accounts``, in publication order, seconds from the first call."""
    states = [pb.MarginState.FromString(v) for v in read_all_records(bootstrap, f"{prefix}margin.state", 600)]
    t0 = min((c.meta.publish_time_ms for c in calls), default=0)
    name = lambda s: pb.HealthState.Name(s).removeprefix("HEALTH_STATE_")  # noqa: E731
    for account in accounts:
        rows, last = [], None
        for s in states:
            if s.account_id == account and s.state != last:
                last = s.state
                rows.append((s.meta.publish_time_ms, f"state {name(s.state):<12} equity {s.equity_usd.value:>12} "
                             f"IM {s.im_usd.value:>12} MM {s.mm_usd.value:>12} risk v{s.risk_params_version} "
                             f"rev {s.account_revision} episode {s.episode}"))
        for c in calls:
            if c.account_id == account:
                parts = "; ".join(f"{pb.ChangeCause.Name(x.cause).removeprefix('CHANGE_CAUSE_')} {x.subject} "
                                  f"{x.relative_move:+.4f} ΔE {x.equity_change_usd.value} ΔIM {x.im_change_usd.value}"
                                  for x in c.causes[:4])
                rows.append((c.meta.publish_time_ms, f"CALL {name(c.previous_state)} → {name(c.state)} episode "
                             f"{c.episode}{' repeat' if c.repeat else ''}: {parts}"))
        print(f"== {account}")
        for t, text in sorted(rows):
            print(f"{(t - t0) / 1000:9.1f} s  {text}")


if __name__ == "__main__":
    raise SystemExit(main())
