"""handlers.user_quota: the per-user request limit, on the real Redis fixture."""

from __future__ import annotations

import asyncio

from handlers.user_quota import UserQuota
from models.protocol import KEYS, Bus
from models.settings import Settings


async def test_allows_limit_then_refuses_with_retry_time(bus: Bus) -> None:
    limiter = UserQuota(bus.redis, 3, 60)
    now = 1_000_000.0
    decisions = [await limiter.hit(42, now=now + i) for i in range(3)]
    assert all(d.allowed for d in decisions)
    refused = await limiter.hit(42, now=now + 10)
    assert not refused.allowed
    assert refused.retry_after == 50.0  # the first request leaves the window at now + 60
    assert refused.retry_seconds == 50
    assert (await limiter.hit(7, now=now + 10)).allowed  # other people are not affected
    assert (await limiter.hit(42, now=now + 60.5)).allowed  # the window slid past the first one
    again = await limiter.hit(42, now=now + 60.6)
    assert not again.allowed and abs(again.retry_after - 0.4) < 0.01 and again.retry_seconds == 1


async def test_refused_requests_do_not_count(bus: Bus) -> None:
    limiter = UserQuota(bus.redis, 1, 10)
    assert (await limiter.hit("u", now=100.0)).allowed
    for t in range(101, 110):
        assert not (await limiter.hit("u", now=float(t))).allowed
    assert (await limiter.hit("u", now=110.5)).allowed


async def test_concurrent_hits_cannot_exceed_the_limit(bus: Bus) -> None:
    limiter = UserQuota(bus.redis, 5, 60)
    results = await asyncio.gather(*(limiter.hit(9) for _ in range(40)))
    assert sum(d.allowed for d in results) == 5


async def test_state_lives_in_redis_under_the_protocol_key(bus: Bus, settings: Settings) -> None:
    limiter = UserQuota.from_settings(bus.redis, settings)
    assert (limiter.limit, limiter.window) == settings.rate_limit
    await limiter.hit(5)
    assert await bus.redis.exists(KEYS.user_quota("5"))
    ttl = await bus.redis.pttl(KEYS.user_quota("5"))
    assert 0 < ttl <= settings.rate_limit[1] * 1000
    again = UserQuota(bus.redis, limiter.limit, limiter.window)  # a restarted bot sees the same count
    for _ in range(limiter.limit - 1):
        assert (await again.hit(5)).allowed
    assert not (await again.hit(5)).allowed
    await again.reset(5)
    assert (await again.hit(5)).allowed


async def test_zero_disables(bus: Bus) -> None:
    limiter = UserQuota(bus.redis, 0, 60)
    assert all([(await limiter.hit(1)).allowed for _ in range(50)])
    assert not await bus.redis.exists(KEYS.user_quota("1"))
