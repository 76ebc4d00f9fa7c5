"""marketdata against the real Kafka: replay → md.ticks / md.marks / md.ticks.dlq; restart resumes."""

from __future__ import annotations

from marginflow.api.common.v1 import common_pb2
from marginflow.api.marketdata.v1 import marketdata_pb2

T0 = 1_764_000_000_000

GOOD = [f"{T0 + i * 1000},BTC,{60000 + i}," + ",,," for i in range(20)] + \
       [f"{T0 + i * 1000},BTC-PERP,{60010 + i},{60009 + i},{60011 + i},2,3" for i in range(20)]
BAD = [
    f"{T0 + 30_000},BTC-PERP,nan,,,,",            # non-finite
    f"{T0 + 30_000},DOGE-PERP,1,,,,",             # unknown instrument
    f"{T0 + 30_000},BTC-PERP,60040,60050,60030,1,1",   # crossed
    "garbage line without enough columns",
    f"{T0 + 1_000},BTC-PERP,60011,,,,",           # time going backwards
]


def write(path, rows, tail: bytes = b""):
    path.write_bytes(("ts,instrument,price,bid,ask,bid_size,ask_size\n" + "\n".join(rows) + "\n").encode() + tail)


def test_replay_publishes_ticks_and_marks_and_dead_letters_bad_rows(tmp_path, run_module, kafka_bootstrap, topic_prefix, consume_all):
    csv = tmp_path / "ticks.csv"
    # Bytes that are not UTF-8, and a 1 MiB row: dead-lettered, the replay goes on to the end.
    write(csv, sorted(GOOD, key=lambda r: r.split(",")[0]) + BAD,
          tail=b"\xff\xfe\x00 binary junk\n" + f"{T0 + 40_000},BTC-PERP,".encode() + b"6" * (1024 * 1024) + b"\n")
    res = run_module("marginflow.marketdata", "--replay", str(csv), "--speed", "max", "--exit-at-end",
                     extra_env={"MF_MARKETDATA_GRPC_PORT": "0", "MF_MARKETDATA_METRICS_PORT": "0"})
    assert res.returncode == 0, res.stderr[-3000:]

    ticks = [marketdata_pb2.Tick.FromString(r.value) for r in consume_all(kafka_bootstrap, topic_prefix + "md.ticks", 40)]
    assert len(ticks) == 40
    perp = [t for t in ticks if t.instrument == "BTC-PERP"]
    assert [t.sequence for t in perp] == list(range(1, 21))
    assert all(t.meta.event_time_ms >= T0 and t.meta.publish_time_ms > 0 for t in ticks)

    marks = [marketdata_pb2.Mark.FromString(r.value) for r in consume_all(kafka_bootstrap, topic_prefix + "md.marks", 2)]
    keys = {m.instrument for m in marks}
    assert {"index:BTC", "BTC-PERP"} <= keys
    last_perp = max((m for m in marks if m.instrument == "BTC-PERP"), key=lambda m: m.meta.event_time_ms)
    assert abs(last_perp.mark_price - last_perp.index_price) <= 0.005 * last_perp.index_price

    dlq = [common_pb2.DeadLetter.FromString(r.value) for r in consume_all(kafka_bootstrap, topic_prefix + "md.ticks.dlq", 7)]
    reasons = sorted(d.reason_code for d in dlq)
    assert reasons == sorted(["non_finite_price", "unknown_instrument", "crossed_book", "malformed_row", "time_backwards",
                              "malformed_row", "malformed_row"])
    assert all(d.service == "marketdata" and d.reason for d in dlq)


def test_restart_resumes_without_duplicates(tmp_path, run_module, kafka_bootstrap, topic_prefix, consume_all):
    first = tmp_path / "part1.csv"
    write(first, GOOD[:10] + GOOD[20:30])
    env = {"MF_MARKETDATA_GRPC_PORT": "0", "MF_MARKETDATA_METRICS_PORT": "0", "MF_MD_MARK_INTERVAL_MS": "0"}
    assert run_module("marginflow.marketdata", "--replay", str(first), "--speed", "max", "--exit-at-end",
                      extra_env=env).returncode == 0
    # The second run replays the whole file: what was published is skipped, the rest continues.
    whole = tmp_path / "whole.csv"
    write(whole, sorted(GOOD, key=lambda r: int(r.split(",")[0])))
    res = run_module("marginflow.marketdata", "--replay", str(whole), "--speed", "max", "--exit-at-end", extra_env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    ticks = [marketdata_pb2.Tick.FromString(r.value) for r in consume_all(kafka_bootstrap, topic_prefix + "md.ticks", 40)]
    perp = [(t.meta.event_time_ms, t.sequence) for t in ticks if t.instrument == "BTC-PERP"]
    assert len(ticks) == 40
    assert perp == [(T0 + i * 1000, i + 1) for i in range(20)]
    assert consume_all(kafka_bootstrap, topic_prefix + "md.ticks.dlq", 0, timeout_s=3) == []


def test_bad_configuration_exits_with_the_variable_named(run_module):
    res = run_module("marginflow.marketdata", extra_env={"MF_MD_SPEED": "warp"})
    assert res.returncode == 2
    assert "MF_MD_SPEED" in res.stderr
