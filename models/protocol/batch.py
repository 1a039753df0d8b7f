"""The write batcher: every write queued while a pipeline is in flight shares the next round trip.

Alone, a write goes out at once (one loop tick later); with many jobs streaming, everything written meanwhile
(events, jobs, attempt starts) shares one pipeline, which is what keeps 64 concurrent answers nearly as fast
as one.  Order is kept: one queue, one pipeline at a time, commands in the order they were queued.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

# `add(pipe)` queues commands on the pipeline and returns how many it queued.
Adder = Callable[[Any], int]


class WriteBatcher:
    """Shares one Redis pipeline between every write queued meanwhile."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._batch: list[tuple[Adder, asyncio.Future[list[Any]]]] = []
        self._task: asyncio.Task[None] | None = None

    async def run(self, add: Adder) -> list[Any]:
        """Queue `add`'s commands; returns their replies (errors as exception objects)."""
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._batch.append((add, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush(), name="bus-batch")
        return await future

    async def script(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run a registered Lua script in the shared pipeline (EVALSHA); alone when Redis lost the script
        (restarted or flushed), which loads it again."""

        def add(pipe: Any) -> int:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
            return 1

        [result] = await self.run(add)
        if isinstance(result, NoScriptError):
            return await script(keys=keys, args=args)
        if isinstance(result, Exception):
            raise result
        return result

    async def _flush(self) -> None:
        while self._batch:
            batch, self._batch = self._batch, []
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    counts = [add(pipe) for add, _future in batch]
                    results = await pipe.execute(raise_on_error=False)
            except Exception as exc:  # Redis unreachable even after the client's retries
                for _add, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for (_add, future), count in zip(batch, counts, strict=True):
                if not future.done():  # else its caller was cancelled meanwhile
                    future.set_result(results[start : start + count])
                start += count
