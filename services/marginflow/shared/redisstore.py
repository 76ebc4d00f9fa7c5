"""Redis connection from settings, with a readiness wait (Redis is the fast cache, never the only copy).

The ACL user and password (``MF_REDIS_USERNAME``, ``MF_REDIS_PASSWORD[_FILE]``) and the TLS CA are set
once at start by ``run_service`` (:func:`use_redis_auth`) and used by every :func:`connect`, so the
password never sits in ``REDIS_URL`` (which is logged).
"""

from __future__ import annotations

import time

import redis

_AUTH: dict = {}


def use_redis_auth(options: dict) -> None:
    """Every connection made from now on uses ``options`` (RedisAuth.client_options())."""
    _AUTH.clear()
    _AUTH.update(options)


def connect(url: str, timeout_s: float = 30.0, **auth) -> redis.Redis:
    options = {**_AUTH, **auth}
    if not url.startswith("rediss://"):
        options.pop("ssl_ca_certs", None)   # only a TLS connection takes a CA
    client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30,
                                  **options)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.ping()
            return client
        except redis.AuthenticationError:
            raise   # a wrong user or password does not get better by waiting
        except redis.ConnectionError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"cannot reach Redis at {url}: {exc}") from exc
            time.sleep(0.2)
