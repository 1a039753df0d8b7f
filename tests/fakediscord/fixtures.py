"""Pytest fixtures: the fake Discord, and the project's bot connected to it with a real Redis and worker.

Registered from tests/conftest.py (`pytest_plugins`).  `discord_harness` is the server with its default
world (one guild, #general and #random, alice/bob/carol, another bot); `discord_bot` is a `BotRunner`:
`await discord_bot.start(**settings_overrides)` builds a `Runtime` (ENGINE=test, embedded worker, the
test Redis) and `bot.client.InternLMBot` logged in to the fake; `stop()`/`start()` again is a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import discord
import pytest
import yarl

from .harness import Harness
from .state import Channel, Interaction, Message, User

STOP_PREFIX = "ilm:stop:"  # the bot's Stop button; it stays on a reply while the answer streams
REGEN_PREFIX = "ilm:regen:"


def streaming(messages: list[Message]) -> bool:
    return any(cid.startswith(STOP_PREFIX) for m in messages for cid in m.custom_ids)


def reply_finished(messages: list[Message]) -> bool:
    """The bot's reply is final: it exists and no message of it still carries the Stop button."""
    return bool(messages) and not streaming(messages) and not any(m.flags & (1 << 7) for m in messages)


def interaction_messages(interaction: Interaction) -> list[Message]:
    out = [interaction.original] if interaction.original is not None else []
    return [m for m in out + interaction.followups if not m.deleted]


def interaction_finished(interaction: Interaction) -> bool:
    msgs = interaction_messages(interaction)
    return interaction.original_edited and reply_finished(msgs)


@contextlib.contextmanager
def pointed_at(harness: Harness) -> Iterator[None]:
    """Point discord.py's REST routes and gateway at the fake (and put them back afterwards)."""
    old_base = discord.http.Route.BASE
    old_gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = harness.server.api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(harness.server.gateway_url)
    try:
        yield
    finally:
        discord.http.Route.BASE = old_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_gateway


class BotRunner:
    """Starts and stops the project's bot (and its Runtime) against the fake, in the test's event loop."""

    def __init__(self, harness: Harness, redis_url: str, data_dir: Path) -> None:
        self.harness = harness
        self.redis_url = redis_url
        self.data_dir = data_dir
        self.bot: Any = None
        self.runtime: Any = None
        self.settings: Any = None
        self._task: asyncio.Task[None] | None = None

    def make_settings(self, **overrides: Any) -> Any:
        from models.settings import Settings

        values: dict[str, Any] = {
            "redis_url": self.redis_url,
            "engine": "test",
            "data_dir": self.data_dir,
            "job_visibility_timeout": 2.0,
            "worker_concurrency": 8,
            "embedded_worker": True,
            "discord_token": self.harness.token,
            "discord_api_base": self.harness.server.api_base,
            "user_rate_limit": "100/60",
            "test_engine_token_delay": 0.0,
            "log_level": "WARNING",
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)

    async def start(self, **overrides: Any) -> Any:
        """Start Runtime + bot with these settings; returns once the bot has its GUILD_CREATEs."""
        from bot.client import build_bot
        from bot.runtime import Runtime

        assert self.bot is None, "stop() the running bot first"
        self.settings = self.make_settings(**overrides)
        self.runtime = await Runtime.start(self.settings)
        self.bot = build_bot(self.runtime)
        self.harness.server.guild_creates_sent.clear()
        self._task = asyncio.create_task(self.bot.start(self.harness.token), name="discord-bot")
        waiter = asyncio.ensure_future(self.harness.wait_connected(timeout=20))
        done, _ = await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if self._task in done:
            waiter.cancel()
            self._task.result()  # raises the bot's startup error
            raise RuntimeError("the bot stopped during startup")
        waiter.result()
        return self.bot

    async def stop(self) -> None:
        if self.bot is not None:
            await self.bot.close()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 10)
        if self.runtime is not None:
            await self.runtime.close()
        self.bot = self.runtime = self._task = None

    async def reply(
        self, message: Message, timeout: float = 20.0, until: Callable[[list[Message]], Any] | None = None
    ) -> list[Message]:
        """The bot's complete reply to a user's message (all its messages, once the Stop button is gone).

        While a long answer's final parts are written one by one, there is a moment with no Stop button
        and later parts still missing, so pass `until` (e.g. on the text) when the answer spans several
        messages."""

        def done(msgs: list[Message]) -> bool:
            return reply_finished(msgs) and (until is None or bool(until(msgs)))

        return await self.harness.reply_to(message, until=done, quiet=0.3, timeout=timeout)

    async def answer(
        self, interaction: Interaction, timeout: float = 20.0, until: Callable[[list[Message]], Any] | None = None
    ) -> list[Message]:
        """The bot's complete answer to an interaction: the original response and its follow-ups."""

        def done(i: Interaction) -> bool:
            return interaction_finished(i) and (until is None or bool(until(interaction_messages(i))))

        await self.harness.response(interaction, until=done, quiet=0.3, timeout=timeout)
        return interaction_messages(interaction)

    async def history(self, channel: Channel, user: User | None = None) -> list[Any]:
        """The conversation's turns in Redis (a DM's conversation is the user's)."""
        from handlers.history import conversation_id

        if channel.guild_id is None:
            assert user is not None
            conv = conversation_id(dm_user=user.id)
        else:
            conv = conversation_id(guild=channel.guild_id, channel=channel.id)
        return await self.runtime.history.recent(conv)

    async def restart(self, **overrides: Any) -> Any:
        await self.stop()
        return await self.start(**overrides)


@pytest.fixture
async def discord_harness() -> AsyncIterator[Harness]:
    harness = await Harness().start()
    with pointed_at(harness):
        yield harness
    await harness.stop()


@pytest.fixture
async def discord_bot(discord_harness: Harness, redis_url: str, tmp_path: Path) -> AsyncIterator[BotRunner]:
    runner = BotRunner(discord_harness, redis_url, tmp_path / "data")
    yield runner
    await runner.stop()
