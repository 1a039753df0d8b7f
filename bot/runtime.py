"""Everything a front end needs, wired once: Redis, the job bus, history, settings, the handlers, and —
when `EMBEDDED_WORKER` is on — a worker running in this same process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from handlers.chat import ChatHandler
from handlers.history import HistoryStore
from handlers.overrides import ConfStore
from models.protocol import Bus
from models.redis_server import wait_ready
from models.settings import Settings
from models.worker import Worker, make_bus

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    bus: Bus
    history: HistoryStore
    overrides: ConfStore  # admin overrides (/settings), handlers/overrides.py
    chat: ChatHandler
    worker: Worker | None = None
    worker_task: asyncio.Task[None] | None = field(default=None, repr=False)

    @classmethod
    async def start(cls, settings: Settings, *, redis_url: str | None = None) -> Runtime:
        bus = make_bus(settings, redis_url)
        await wait_ready(bus.redis, timeout=30)
        history = HistoryStore(bus.redis, max_turns=settings.history_max_turns, ttl=settings.history_ttl)
        overrides = ConfStore(bus.redis, settings, bus=bus)  # reads share the bus's pipeline
        runtime = cls(settings, bus, history, overrides, ChatHandler(bus, history, overrides, settings))
        if settings.embedded_worker:
            await runtime.start_worker()
        return runtime

    async def start_worker(self) -> None:
        from models.worker import build_worker

        self.worker = build_worker(self.settings, self.bus)  # one engine per chat model it serves
        self.worker_task = asyncio.create_task(self.worker.run(), name="embedded-worker")

    async def close(self) -> None:
        if self.worker and self.worker_task:
            self.worker.stop()
            with contextlib.suppress(Exception):
                await self.worker_task
        await self.chat.drain()  # answers still being written into history
        await self.bus.close()
        await self.bus.redis.aclose()
