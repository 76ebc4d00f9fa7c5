"""One acting liquidation instance: a lease in Redis.

The liquidation service acts for every account and keeps the one insurance fund, so two instances acting at
once would plan every episode twice and credit every fee twice. An instance acts only while it holds the
lease — the key ``<prefix>active``, its value the holder's id, with an expiry — and renews it well inside the
expiry; another instance waits as a standby and takes the lease once it is free (the holder stopped and
released it, or died and it expired). A holder that finds another holder at a renewal (it was stopped longer
than the lease, SIGSTOP or a long pause, and a standby took over) stops acting at once.

A holder that died on this host (its process is gone: ``kill -9``, a crash) is not waited for: a new process
on the same host takes its lease at once, as a restarted service would; elsewhere the lease's expiry decides.

Redis holds no state of the platform here: a flushed or restarted Redis loses the key, and the holder writes
it again at its next renewal. While Redis cannot be reached, nobody can take the lease, so the holder goes on
acting (liquidations do not stop with the cache) and a standby goes on waiting.
"""

from __future__ import annotations

import os
import socket
import uuid

import redis

# Take the lease if it is free or ours, and (re)set its expiry; 1 if ours afterwards, 0 if another holds it.
_TAKE = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
# Delete the lease if it is (still) held by ARGV[1].
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def holder_id() -> str:
    """This process: host, pid and a random part (a restarted process with the same pid is another holder)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def holder_gone(holder: str) -> bool:
    """Whether ``holder`` was a process of this host that no longer runs (elsewhere: not known, False)."""
    try:
        host, pid_text, _ = holder.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return False
    if host != socket.gethostname() or pid <= 0 or pid == os.getpid():
        return False           # this process may hold two instances (tests); a restarted container waits the expiry
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:    # alive, another user's
        return False
    return False


class RedisLease:
    def __init__(self, client: redis.Redis, prefix: str, holder: str, lease_ms: int) -> None:
        self._client = client
        self.key = f"{prefix}active"
        self.holder = holder
        self.lease_ms = int(lease_ms)
        self._take = client.register_script(_TAKE)
        self._release = client.register_script(_RELEASE)

    def take(self) -> bool | None:
        """Take or renew the lease: True when this holder has it now, False when another (live, or not known
        to be gone) does, None when Redis cannot be reached (nothing known)."""
        try:
            if self._take(keys=[self.key], args=[self.holder, self.lease_ms]):
                return True
            other = self._client.get(self.key)
            if other is not None and holder_gone(other.decode()):
                self._release(keys=[self.key], args=[other.decode()])
                return bool(self._take(keys=[self.key], args=[self.holder, self.lease_ms]))
            return False
        except redis.RedisError:
            return None

    def current(self) -> str | None:
        """The holder now (None: free, or Redis unreachable)."""
        try:
            value = self._client.get(self.key)
        except redis.RedisError:
            return None
        return value.decode() if value is not None else None

    def release(self) -> None:
        """Give the lease up (an orderly stop: a standby takes over at once, not after the expiry)."""
        try:
            self._release(keys=[self.key], args=[self.holder])
        except redis.RedisError:
            pass
