"""Per-user request limits held in Redis, so they hold across bot restarts and several bot processes.

A sliding window log: each accepted request is a member of a sorted set scored by its time; a request
is refused while `limit` requests already lie inside the last `window` seconds, and the caller learns
how long until the oldest of them leaves the window.  The check-and-add is one Lua script, so two
messages arriving at once cannot both take the last slot.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass

import redis.asyncio as aioredis

from models.protocol import KEYS
from models.settings import Settings

# KEYS[1] = the user's set; ARGV = now, window, limit, member.  Returns {allowed, retry_after_ms}.
_CHECK = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000))
  return {1, 0}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local retry = tonumber(oldest[2]) + window - now
return {0, math.ceil(retry * 1000)}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: float = 0.0  # seconds until a request would be accepted

    @property
    def retry_seconds(self) -> int:
        """Whole seconds to tell a person (never 0 when refused)."""
        return max(1, math.ceil(self.retry_after)) if not self.allowed else 0


class UserQuota:
    """`limit` requests per `window` seconds per user; `limit <= 0` disables it."""

    def __init__(self, redis: aioredis.Redis, limit: int, window: float) -> None:
        self.redis = redis
        self.limit = limit
        self.window = window
        self._script = redis.register_script(_CHECK)

    @classmethod
    def from_settings(cls, redis: aioredis.Redis, settings: Settings) -> UserQuota:
        limit, window = settings.rate_limit
        return cls(redis, limit, window)

    async def hit(self, user: str | int, *, now: float | None = None) -> Decision:
        """Count one request by `user` if allowed."""
        if self.limit <= 0:
            return Decision(True)
        now = time.time() if now is None else now
        allowed, retry_ms = await self._script(
            keys=[KEYS.user_quota(str(user))],
            args=[repr(now), repr(float(self.window)), self.limit, f"{now!r}:{uuid.uuid4().hex[:8]}"],
        )
        return Decision(bool(int(allowed)), int(retry_ms) / 1000.0)

    async def reset(self, user: str | int) -> None:
        await self.redis.delete(KEYS.user_quota(str(user)))
