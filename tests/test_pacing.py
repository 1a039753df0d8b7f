"""bot.pacing.TokenBucket: the per-channel write budget the streamer shares between replies."""

from __future__ import annotations

import asyncio
import time

import pytest

from bot.pacing import BucketRegistry, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_reserve_is_kept_for_priority_writes() -> None:
    clock = Clock()
    bucket = TokenBucket(5, 5.0, reserve=1, clock=clock)
    assert [bucket.try_acquire() for _ in range(4)] == [0.0] * 4
    wait = bucket.try_acquire()  # one token left, but it is the reserve
    assert wait == pytest.approx(5.0)
    assert bucket.try_acquire(priority=True) == 0.0  # the final write gets it at once
    assert bucket.try_acquire(priority=True) == pytest.approx(5.0)
    clock.now += 5.0
    assert bucket.try_acquire(priority=True) == 0.0


def test_never_more_than_capacity_in_any_window() -> None:
    clock = Clock()
    bucket = TokenBucket(5, 5.0, reserve=0, clock=clock)
    stamps: list[float] = []
    for _ in range(400):  # writers asking every 0.1 s for 40 s
        if bucket.try_acquire() == 0.0:
            stamps.append(clock.now)
        clock.now += 0.1
    assert len(stamps) == pytest.approx(5 * 40 / 5, abs=5)  # the sustained rate is capacity / per
    for i in range(len(stamps) - 5):
        assert stamps[i + 5] - stamps[i] >= 5.0 - 1e-9


def test_wait_is_until_the_needed_token_returns() -> None:
    clock = Clock()
    bucket = TokenBucket(5, 5.0, reserve=1, clock=clock)
    for offset in range(5):
        clock.now = 100.0 + offset
        assert bucket.try_acquire(priority=True) == 0.0
    clock.now = 104.5
    assert bucket.try_acquire(priority=True) == pytest.approx(0.5)  # token spent at 100 returns at 105
    assert bucket.try_acquire() == pytest.approx(1.5)  # a normal write also needs the reserve: 106


def test_penalize_backs_off() -> None:
    clock = Clock()
    bucket = TokenBucket(5, 5.0, reserve=0, clock=clock)
    bucket.penalize(2.0)
    assert bucket.try_acquire(priority=True) == pytest.approx(2.0)
    clock.now += 2.0
    assert bucket.tokens == 5


async def test_concurrent_writers_share_the_budget() -> None:
    bucket = TokenBucket(5, 0.5, reserve=1)  # a short period, so the test stays fast
    stamps: list[float] = []

    async def writer() -> None:
        for _ in range(3):
            await bucket.acquire()
            stamps.append(time.monotonic())

    began = time.monotonic()
    await asyncio.gather(*(writer() for _ in range(6)))  # 18 writes, 4 of them from the burst
    elapsed = time.monotonic() - began
    assert len(stamps) == 18
    assert elapsed >= 0.5 * 3  # 4 writes per 0.5 s window (one token is the reserve)
    assert elapsed < 6  # and not stuck
    stamps.sort()
    for i in range(len(stamps) - 4):  # no 0.5 s window holds more than capacity - reserve
        assert stamps[i + 4] - stamps[i] >= 0.5 - 0.01


async def test_priority_overtakes_queued_writes() -> None:
    bucket = TokenBucket(5, 5.0, reserve=1)
    for _ in range(4):
        await bucket.acquire()
    queued = [asyncio.create_task(bucket.acquire()) for _ in range(3)]
    await asyncio.sleep(0.05)
    began = time.monotonic()
    waited = await bucket.acquire(priority=True)  # the reserve token: no wait
    assert waited < 0.2 and time.monotonic() - began < 0.2
    assert not any(t.done() for t in queued)
    for task in queued:
        task.cancel()
    await asyncio.gather(*queued, return_exceptions=True)


async def test_cancelled_waiter_releases_the_queue() -> None:
    bucket = TokenBucket(2, 0.2, reserve=0)
    await bucket.acquire()
    await bucket.acquire()
    first = asyncio.create_task(bucket.acquire())
    await asyncio.sleep(0.01)
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    assert await asyncio.wait_for(bucket.acquire(), 2) < 2


def test_registry_gives_one_bucket_per_channel() -> None:
    registry = BucketRegistry()
    assert registry.get(1) is registry.get(1)
    assert registry.get(1) is not registry.get(2)
    assert len(registry) == 2


def test_invalid_bucket() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0, 1.0)
