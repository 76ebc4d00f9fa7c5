"""One acting liquidation instance: the lease in the real Redis — taken, renewed, released, expired, taken from a
holder of this host that died; a second service instance waits as a standby and takes over when the first
stops; a holder that finds another holder at a renewal stops acting."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import redis
from prometheus_client import CollectorRegistry

from marginflow.liquidation.adapters.lease import RedisLease, holder_gone
from marginflow.liquidation.adapters.metrics import LiquidationMetrics
from marginflow.liquidation.service import LiquidationApp, StoppedAsStandby
from marginflow.liquidation.settings import LiquidationSettings
from marginflow.shared.config import load

from liq_it_helpers import wait_for


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_lease_is_one_holder_s_until_released_or_expired(redis_url, topic_prefix):
    client = redis.Redis.from_url(redis_url)
    try:
        first = RedisLease(client, topic_prefix, "a:1:x", 400)
        second = RedisLease(client, topic_prefix, "b:2:y", 400)
        assert first.take() is True and second.take() is False
        assert first.take() is True and second.current() == "a:1:x"    # renewed by its holder only
        first.release()
        assert second.take() is True and first.take() is False
        second.release()
        first.release()                                                 # not its own: nothing happens
        assert first.take() is True
        time.sleep(0.6)                                                 # not renewed: expired
        assert second.take() is True and second.current() == "b:2:y"
        second.release()
        assert second.current() is None
    finally:
        client.delete(f"{topic_prefix}active")
        client.close()


def test_a_holder_of_this_host_whose_process_is_gone_is_not_waited_for(redis_url, topic_prefix):
    host = socket.gethostname()
    dead = f"{host}:{_dead_pid()}:00000000"
    assert holder_gone(dead) and not holder_gone(f"{host}:1:00000000")   # pid 1 runs
    assert not holder_gone(f"elsewhere:{_dead_pid()}:0") and not holder_gone("no pid here")
    client = redis.Redis.from_url(redis_url)
    try:
        client.set(f"{topic_prefix}active", dead, px=60_000)
        lease = RedisLease(client, topic_prefix, f"{host}:99:abc", 60_000)
        assert lease.take() is True and lease.current() == f"{host}:99:abc"
        client.set(f"{topic_prefix}active", f"elsewhere:{_dead_pid()}:0", px=60_000)   # another host: its expiry
        assert lease.take() is False
    finally:
        client.delete(f"{topic_prefix}active")
        client.close()


def test_redis_unreachable_is_not_known_either_way():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.2, socket_timeout=0.2)
    lease = RedisLease(client, "x:", "a:1:x", 1000)
    assert lease.take() is None and lease.current() is None
    lease.release()    # no error


def test_a_second_instance_waits_as_a_standby_takes_over_and_a_holder_that_lost_the_lease_stops(
        liq_env, start_liquidation, redis_url):
    env = dict(liq_env, MF_LIQUIDATION_LEASE_MS="2000", MF_LIQUIDATION_MARGIN_ADDRESS="127.0.0.1:1",
               MF_LIQUIDATION_PORTFOLIO_ADDRESS="127.0.0.1:1")
    first = start_liquidation(MF_LIQUIDATION_LEASE_MS="2000")
    assert first.metrics.active._value.get() == 1
    second = LiquidationApp(load(LiquidationSettings, env), metrics=LiquidationMetrics(CollectorRegistry()))
    stopping = threading.Event()
    outcome: list = []

    def start_second() -> None:
        try:
            outcome.append(second.start(serve_http_metrics=False, stopping=stopping))
        except StoppedAsStandby as exc:
            outcome.append(exc)

    thread = threading.Thread(target=start_second, daemon=True)
    thread.start()
    wait_for(lambda: second.lease is not None and second.lease.current() == first.lease.holder,
             what="the standby reading the lease")
    time.sleep(1.5)                       # three renewals of the first: the standby still waits
    assert not outcome and second.metrics.active._value.get() == 0
    start_liquidation.stop(first)         # an orderly stop releases the lease: the standby acts at once
    thread.join(30)
    assert outcome == [second] and second.lease.current() == second.lease.holder
    assert second.metrics.active._value.get() == 1 and second.host.ready
    loop, loop_stopping = second.run_in_thread()
    try:
        # paused past its lease, the holder finds another holder at its renewal: it stops acting
        client = redis.Redis.from_url(redis_url)
        client.set(second.lease.key, "elsewhere:7:feed", px=60_000)
        client.close()
        loop.join(10)
        assert not loop.is_alive() and second.lost_lease and not second.host.ready
        assert second.metrics.active._value.get() == 0
    finally:
        loop_stopping.set()
        second.close()
    # a standby asked to stop while it waits starts nothing
    third = LiquidationApp(load(LiquidationSettings, env), metrics=LiquidationMetrics(CollectorRegistry()))
    stopped = threading.Event()
    stopped.set()
    try:
        third.start(serve_http_metrics=False, stopping=stopped)
        raise AssertionError("a standby started while another instance holds the lease")
    except StoppedAsStandby:
        pass
    assert third.lease.current() == "elsewhere:7:feed"
