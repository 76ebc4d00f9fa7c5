"""Redis with the ACL users pki.sh makes, started by redis.sh on a free port: each service's user
is held to its key prefix and refused FLUSHALL; the real portfolio service runs under its user."""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest
import redis

from marginflow.shared.redisstore import connect

from conftest import ROOT, free_port


@pytest.fixture(scope="module")
def acl_redis(pki, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("redis-acl")
    port = free_port()
    env = {**os.environ, "MF_RUN_DIR": str(run_dir), "REDIS_PORT": str(port),
           "REDIS_ACL_FILE": str(pki / "redis.acl"), "REDIS_ADMIN_PASSWORD_FILE": str(pki / "redis-pass.admin")}
    subprocess.run([str(ROOT / "deploy/local/redis.sh"), "start"], check=True, env=env, capture_output=True)
    yield f"redis://127.0.0.1:{port}/0"
    subprocess.run([str(ROOT / "deploy/local/redis.sh"), "stop"], check=True, env=env, capture_output=True)


def _password(pki, user: str) -> str:
    return (pki / f"redis-pass.{user}").read_text().strip()


def test_no_password_no_access(acl_redis):
    client = redis.Redis.from_url(acl_redis)
    with pytest.raises((redis.AuthenticationError, redis.ResponseError)):
        client.set("mf:pf:x", "1")
    with pytest.raises(redis.AuthenticationError):
        connect(acl_redis, timeout_s=2, username="portfolio", password="wrong")


def test_a_service_user_is_held_to_its_prefix_and_refused_flushall(acl_redis, pki):
    client = connect(acl_redis, username="portfolio", password=_password(pki, "portfolio"))
    try:
        assert client.set("mf:pf:probe", "1") and client.get("mf:pf:probe") == b"1"
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.set("mf:mg:owner", "stolen")              # the margin service's keys
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.flushall()
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.keys("*")
        assert client.get("mf:pf:probe") == b"1"
    finally:
        client.close()
    admin = connect(acl_redis, username="admin", password=_password(pki, "admin"))
    admin.flushall()   # the operator's user may
    admin.close()


def test_the_portfolio_service_runs_under_its_acl_user(acl_redis, pki, test_env, topic_prefix):
    from decimal import Decimal as D

    from marginflow.portfolio.domain.model import Deposit
    from marginflow.portfolio.service import PortfolioApp, portfolio_topics
    from marginflow.portfolio.settings import PortfolioSettings
    from marginflow.shared.clock import SystemClock
    from marginflow.shared.config import load
    from marginflow.shared.kafka import ProtoProducer, delete_topics, ensure_topics, new_producer
    from marginflow.shared.redisstore import use_redis_auth
    from marginflow.portfolio.adapters.codec import event_to_proto
    import time

    env = dict(test_env, REDIS_URL=acl_redis, MF_PORTFOLIO_REDIS_PREFIX=f"mf:pf:{uuid.uuid4().hex[:8]}:",
               MF_PORTFOLIO_GRPC_PORT="0", MF_PORTFOLIO_METRICS_PORT="0", MF_PORTFOLIO_POLL_TIMEOUT_MS="50",
               MF_REDIS_USERNAME="portfolio", MF_REDIS_PASSWORD_FILE=str(pki / "redis-pass.portfolio"))
    settings = load(PortfolioSettings, env)
    ensure_topics(settings.common.bootstrap, portfolio_topics(settings))
    use_redis_auth(settings.common.redis_auth.client_options())   # as run_service does
    try:
        app = PortfolioApp(settings, SystemClock()).start(serve_grpc=False, serve_http_metrics=False)
        thread, stopping = app.run_in_thread()
        producer = ProtoProducer(new_producer(settings.common.bootstrap, "acl-test", linger_ms=0), "test")
        producer.send(settings.common.topics.account_events, "acct-acl",
                      event_to_proto(Deposit("d-acl", "acct-acl", "USDC", D(5), 1), "test"))
        producer.flush()
        producer.close()
        deadline = time.monotonic() + 30
        while app.totals.events_applied < 1:
            assert time.monotonic() < deadline, "deposit not applied under the ACL user"
            time.sleep(0.1)
        stopping.set()
        thread.join(15)
        app.close()
    finally:
        use_redis_auth({})
        delete_topics(settings.common.bootstrap, [s.name for s in portfolio_topics(settings)])
