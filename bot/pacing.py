"""A token bucket that paces message writes per Discord channel.

Discord lets a bot write about 5 messages per 5 seconds per channel (sends and edits alike).  Every
reply streaming in a channel draws from that channel's bucket, so ten replies in one channel share the
budget instead of each tripping 429s.  Intermediate edits leave `reserve` tokens untouched, so a final
write (the complete answer, which must land promptly) normally finds a token at once; priority callers
also skip the queue of waiting intermediate edits.  A waiter sleeps exactly until the token it needs
comes back, never a fixed interval.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable


class TokenBucket:
    """`capacity` tokens; each spent token comes back exactly `per` seconds after it was spent.

    That is the strict form of a token bucket: at most `capacity` writes in *any* window of `per`
    seconds, so the pacing is safe whether Discord counts its window from the first write or not
    (a bucket that refills continuously would allow a burst plus the refill, 2 × capacity, in one
    window).
    """

    def __init__(
        self, capacity: int = 5, per: float = 5.0, *, reserve: int = 1, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if capacity <= 0 or per <= 0:
            raise ValueError("capacity and per must be positive")
        self.capacity = int(capacity)
        self.per = float(per)
        self.reserve = max(0, min(int(reserve), self.capacity - 1))
        self.clock = clock
        self._spent: deque[float] = deque()  # when each token in use was spent (oldest first)
        self._queue = asyncio.Lock()  # FIFO among normal (intermediate) writers

    @property
    def tokens(self) -> int:
        """Tokens available now."""
        self._expire(self.clock())
        return self.capacity - len(self._spent)

    def _expire(self, now: float) -> None:
        while self._spent and self._spent[0] + self.per <= now:
            self._spent.popleft()

    def try_acquire(self, *, priority: bool = False) -> float:
        """Take a token if one is available; otherwise return the seconds to wait (0.0 = taken)."""
        now = self.clock()
        self._expire(now)
        needed = 1 if priority else 1 + self.reserve
        excess = len(self._spent) - (self.capacity - needed)  # tokens that must come back first
        if excess <= 0:
            self._spent.append(now)
            return 0.0
        return max(1e-3, self._spent[excess - 1] + self.per - now)

    async def acquire(self, *, priority: bool = False) -> float:
        """Wait for a token; returns how long the caller waited."""
        began = self.clock()
        if priority:
            await self._take(priority=True)
        else:
            async with self._queue:
                await self._take(priority=False)
        return self.clock() - began

    async def _take(self, *, priority: bool) -> None:
        while True:
            wait = self.try_acquire(priority=priority)
            if wait <= 0:
                return
            await asyncio.sleep(wait)  # exactly until enough tokens have come back

    def penalize(self, seconds: float) -> None:
        """Discord said 429: spend the whole budget for `seconds` so our own pacing backs off too."""
        now = self.clock()
        self._spent = deque([now + seconds - self.per] * self.capacity)

    @property
    def idle(self) -> bool:
        return self.tokens == self.capacity and not self._queue.locked()


class BucketRegistry:
    """One bucket per channel id, created on demand; idle full buckets are dropped now and then."""

    def __init__(
        self, capacity: int = 5, per: float = 5.0, *, reserve: int = 1, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.capacity, self.per, self.reserve, self.clock = capacity, per, reserve, clock
        self._buckets: dict[int, TokenBucket] = {}

    def get(self, key: int) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) > 1000:
                self._prune()
            bucket = self._buckets[key] = TokenBucket(self.capacity, self.per, reserve=self.reserve, clock=self.clock)
        return bucket

    def _prune(self) -> None:
        for key, bucket in list(self._buckets.items()):
            if bucket.idle:
                del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)
