"""One blocking XREAD shared by every reply stream a process follows (`ReplyReader`)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .envelopes import Event, new_id
from .errors import reraise_if_cancelling
from .keys import KEYS


def stream_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms or 0), int(seq or 0)


@dataclass
class Subscription:
    key: str
    last: str
    queue: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)


class ReplyReader:
    """One blocking XREAD for every reply stream this process follows, instead of one per reply.

    With 64 answers streaming, per-reply reads cost a round trip (and a parse) per token each; one shared
    read returns whatever arrived on all of them.  A new subscription writes to the reader's wake stream,
    so a read already blocking restarts at once with the new stream included.  Redis errors are retried
    (the position of every subscription is kept), so a Redis restart only pauses the replies."""

    BLOCK_MS = 5000

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self.subs: list[Subscription] = []
        self.wake_key = KEYS.reader_wake(new_id())
        self.wake_last = "0-0"
        self.task: asyncio.Task[None] | None = None
        self.blocking = False
        self.woken = False  # a wake is written and the blocking read has not restarted yet

    async def subscribe(self, key: str, after: str) -> Subscription:
        sub = Subscription(key, after)
        self.subs.append(sub)
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run(), name="bus-reply-reader")
        elif self.blocking and not self.woken:  # one wake for a burst of new replies
            self.woken = True
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.xadd(self.wake_key, {"w": "1"}, maxlen=10, approximate=False)
                    pipe.expire(self.wake_key, 3600)
                    await pipe.execute()
            except (RedisConnectionError, RedisTimeoutError, OSError):
                reraise_if_cancelling()  # the reader is retrying anyway and will include the new stream
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with contextlib.suppress(ValueError):
            self.subs.remove(sub)

    async def _run(self) -> None:
        while self.subs:
            self.woken = False
            streams: dict[str, str] = {self.wake_key: self.wake_last}
            for sub in self.subs:
                if sub.key not in streams or stream_id(sub.last) < stream_id(streams[sub.key]):
                    streams[sub.key] = sub.last
            self.blocking = True
            try:
                result = await self.redis.xread(streams, count=256, block=self.BLOCK_MS)
            except (RedisConnectionError, RedisTimeoutError, OSError):
                reraise_if_cancelling()
                await asyncio.sleep(0.25)
                continue
            finally:
                self.blocking = False
            for stream, entries in result or []:
                if stream == self.wake_key:
                    self.wake_last = entries[-1][0]
                    continue
                for sub in [s for s in self.subs if s.key == stream]:
                    for entry_id, fields in entries:
                        if stream_id(entry_id) > stream_id(sub.last):
                            sub.last = entry_id
                            sub.queue.put_nowait(Event.decode(entry_id, fields))

    async def close(self) -> None:
        self.subs.clear()
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        # Best effort, and bounded: with Redis down the client's reconnect retries would hold shutdown for a
        # minute or more over one key that expires anyway.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await self.redis.delete(self.wake_key)
