"""What the agent's end-to-end tests share: the handler they ask through and a worker serving a fake OpenAI server.

The replay, tool-calling and file tests each built both the same way (the worker's start/stop dance included);
they differ only in the protocol the handler is set to and in the worker's name."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from handlers.agent import AgentHandler
from handlers.chat import ChatHandler
from handlers.history import HistoryStore
from handlers.overrides import ConfStore
from models.engines.openai import OpenAIEngine
from models.protocol import Bus
from models.settings import Settings
from models.worker import Worker


def agent_handler(settings: Settings, bus: Bus, protocol: str | None = None) -> AgentHandler:
    """The /agent handler with arXiv off (no network) and room for slow sandbox runs on a busy machine;
    `protocol` pins AGENT_PROTOCOL where a recording is of one protocol (`auto` picks tools on ENGINE=openai)."""
    settings.agent_arxiv = False
    settings.agent_timeout = 90
    if protocol is not None:
        settings.agent_protocol = protocol
    return AgentHandler(ChatHandler(bus, HistoryStore(bus.redis), ConfStore(bus.redis, settings), settings))


@contextlib.asynccontextmanager
async def openai_worker(settings: Settings, bus: Bus, base_url: str, model: str, name: str) -> AsyncIterator[Worker]:
    """A real worker whose engine talks to the OpenAI-compatible server at `base_url`, stopped cleanly after."""
    engine = OpenAIEngine(base_url=base_url, chat_model=model)
    worker = Worker(settings, bus, engine, worker_id=name)
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)
        await engine.close()
