"""Application commands are synced only when their definition changed (hash in Redis) or on
`python -m bot sync` — against the fake Discord, with the real discord.py client."""

from __future__ import annotations

import asyncio
import sys

import discord
import pytest

from models.protocol import KEYS
from tests.conftest import ROOT, subprocess_env
from tests.fakediscord import Harness
from tests.fakediscord.fixtures import BotRunner

pytestmark = pytest.mark.timeout(90)

PUT = "/applications/{application_id}/commands"


def _syncs(h: Harness) -> int:
    return len([c for c in h.calls if c.method == "PUT" and c.route == PUT])


async def test_sync_only_when_the_commands_change(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    bot = await discord_bot.start()
    assert bot.synced is True and _syncs(h) == 1
    names = {c.name for c in h.server.commands_for(None)}
    assert {"chat", "reset", "help", "settings"} <= names
    chat = h.command("chat").payload()
    assert chat["name_localizations"].get("zh-CN") == "聊天"  # localised through the translator
    digest = await bot.runtime.bus.redis.get(KEYS.command_hash)
    assert digest == await bot.command_hash()

    bot = await discord_bot.restart()
    assert bot.synced is False and _syncs(h) == 1  # same definition: no sync on restart

    @discord.app_commands.command(name="extra", description="a new command")
    async def extra(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("hi")

    bot.tree.add_command(extra)
    assert await bot.sync_commands() is True and _syncs(h) == 2  # changed: synced
    assert await bot.sync_commands() is False and _syncs(h) == 2
    assert "extra" in {c.name for c in h.server.commands_for(None)}


async def test_python_m_bot_sync(discord_harness: Harness, discord_bot: BotRunner, redis_url: str) -> None:
    h = discord_harness
    settings = discord_bot.make_settings()
    env = subprocess_env(
        settings,
        DISCORD_TOKEN=h.token,
        DISCORD_API_BASE=h.server.api_base,
        DISCORD_GATEWAY_URL=h.server.gateway_url,
        EMBEDDED_WORKER="false",
        LOG_LEVEL="INFO",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "sync",
        cwd=str(ROOT),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b"Synced" in out and _syncs(h) == 1
    assert h.token.encode() not in out + err  # the token never reaches the logs
    bot = await discord_bot.start()
    assert bot.synced is False and _syncs(h) == 1  # the bot sees the stored hash
